"""The ``comm`` dialect: data movement between the ranks of an island (DESIGN.md §2).

Every op is a collective over the ranks of the enclosing island: each rank passes its local
partition and gets its part of the result. Types never change: the result has exactly the
operand's type (a table keeps its schema; only rows move).

==================  ===========================================================================
``comm.shuffle``    all-to-all re-partitioning of a table into ``parts`` partitions by ``keys``:
                    ``kind = "hash"`` (hash of the keys) or ``"range"`` (key ranges from a sample,
                    ``ascending`` flags per key, default all ascending). Nulls: hash to one part /
                    sort last.
``comm.broadcast``  the ``root`` rank's value (table or tensor) to every rank.
``comm.gather``     every rank's rows to the ``root`` rank (others get an empty table).
``comm.allgather``  every rank's rows to every rank.
``comm.scatter``    the ``root`` rank's rows split among the ranks.
``comm.allreduce``  element-wise reduction (``op``: sum/prod/min/max/land/lor) of tensors, or of
                    tables of partial aggregates (the same number of rows on every rank; one
                    reduction per column with ``column_ops``); every rank gets the result.
``comm.halo``       halo exchange for windows over an ordered, row-partitioned table: each rank
                    receives the last ``before`` rows of its predecessor and the first ``after``
                    rows of its successor (``order`` names the sort keys; empty = row order).
==================  ===========================================================================

Example (generic form, as printed)::

    %1 = "comm.shuffle"(%0) {kind = "hash", keys = ["user_id"], parts = 4 : i64}
           : (!df.table<["user_id"], [i64], [false]>) -> !df.table<["user_id"], [i64], [false]>
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from xdsl.dialects.builtin import (
    I64,
    ArrayAttr,
    IntegerAttr,
    StringAttr,
    TensorType,
    i1,
    i64,
)
from xdsl.ir import Attribute, Dialect, SSAValue
from xdsl.irdl import (
    AnyAttr,
    IRDLOperation,
    VarConstraint,
    attr_def,
    base,
    irdl_op_definition,
    operand_def,
    opt_attr_def,
    result_def,
)

from opgraph.dialects.dataframe import TableType, bool_array, fail, str_array

SHUFFLE_KINDS = ("hash", "range")
REDUCTIONS = ("sum", "prod", "min", "max", "land", "lor")

TableOrTensor = base(TableType) | base(TensorType)

# Operand and result share one constraint variable: xDSL checks that they are equal, and the
# IRDL twin uses one SSA constraint value for both, so upstream MLIR checks it too.
_SameTable = VarConstraint("T", base(TableType))
_SameTableOrTensor = VarConstraint("T", TableOrTensor)
_SameAny = VarConstraint("T", AnyAttr())


def _strs(attr: ArrayAttr) -> list[str]:
    return [a.data if isinstance(a, StringAttr) else str(a) for a in attr]


def _check_string_array(op: IRDLOperation, attr: ArrayAttr, what: str) -> list[str]:
    for a in attr:
        if not isinstance(a, StringAttr):
            raise fail(op, f"{what} must be strings, got {a}")
    return _strs(attr)


def _check_bool_array(op: IRDLOperation, attr: ArrayAttr, what: str) -> list[bool]:
    out = []
    for a in attr:
        if not (isinstance(a, IntegerAttr) and a.type == i1):
            raise fail(op, f"{what} must be booleans (i1), got {a}")
        out.append(bool(a.value.data))
    return out


def _check_columns(op: IRDLOperation, table: Attribute, names: Sequence[str], what: str) -> None:
    if not isinstance(table, TableType):
        raise fail(op, f"{what} need a table operand, got {table}")
    cols = table.column_names
    for n in names:
        if n not in cols:
            raise fail(op, f"{what[:-1] if what.endswith('s') else what} '{n}' is not a column of the "
                       f"input table (columns: {', '.join(cols)})")
    if len(set(names)) != len(names):
        raise fail(op, f"{what} name a column twice")


def _check_root(op: IRDLOperation, root: IntegerAttr) -> None:
    if root.value.data < 0:
        raise fail(op, f"root must be a rank >= 0, got {root.value.data}")


@irdl_op_definition
class ShuffleOp(IRDLOperation):
    """All-to-all re-partitioning of a table by ``keys`` into ``parts`` partitions."""

    name = "comm.shuffle"
    T: ClassVar = _SameTable
    input = operand_def(T)
    kind = attr_def(StringAttr)
    keys = attr_def(ArrayAttr)
    parts = attr_def(IntegerAttr[I64])
    ascending = opt_attr_def(ArrayAttr)
    output = result_def(T)

    def __init__(
        self,
        table: SSAValue,
        kind: str,
        keys: Sequence[str],
        parts: int,
        ascending: Sequence[bool] | None = None,
    ):
        attrs: dict[str, Attribute] = {
            "kind": StringAttr(kind),
            "keys": str_array(keys),
            "parts": IntegerAttr(parts, i64),
        }
        if ascending is not None:
            attrs["ascending"] = bool_array(ascending)
        super().__init__(operands=[table], attributes=attrs, result_types=[table.type])

    @property
    def key_names(self) -> list[str]:
        return _strs(self.keys)

    @property
    def ascending_flags(self) -> list[bool]:
        if self.ascending is None:
            return [True] * len(self.keys)
        return [bool(a.value.data) for a in self.ascending]  # type: ignore[union-attr]

    def verify_(self) -> None:
        if self.kind.data not in SHUFFLE_KINDS:
            raise fail(self, f"unknown shuffle kind '{self.kind.data}' (expected \"hash\" or \"range\")")
        keys = _check_string_array(self, self.keys, "shuffle keys")
        if not keys:
            raise fail(self, "a shuffle needs at least one key column")
        _check_columns(self, self.input.type, keys, "shuffle keys")
        if self.parts.value.data < 1:
            raise fail(self, f"parts must be >= 1, got {self.parts.value.data}")
        if self.ascending is not None:
            if self.kind.data != "range":
                raise fail(self, "'ascending' is only allowed on a range shuffle")
            flags = _check_bool_array(self, self.ascending, "ascending flags")
            if len(flags) != len(keys):
                raise fail(self, f"'ascending' needs one flag per key ({len(keys)}), got {len(flags)}")


@irdl_op_definition
class BroadcastOp(IRDLOperation):
    """The ``root`` rank's table or tensor to every rank."""

    name = "comm.broadcast"
    T: ClassVar = _SameTableOrTensor
    input = operand_def(T)
    root = attr_def(IntegerAttr[I64])
    output = result_def(T)

    def __init__(self, value: SSAValue, root: int = 0):
        super().__init__(operands=[value], attributes={"root": IntegerAttr(root, i64)}, result_types=[value.type])

    def verify_(self) -> None:
        _check_root(self, self.root)


@irdl_op_definition
class GatherOp(IRDLOperation):
    """Every rank's rows to the ``root`` rank (the other ranks get an empty table)."""

    name = "comm.gather"
    T: ClassVar = _SameTable
    input = operand_def(T)
    root = attr_def(IntegerAttr[I64])
    output = result_def(T)

    def __init__(self, table: SSAValue, root: int = 0):
        super().__init__(operands=[table], attributes={"root": IntegerAttr(root, i64)}, result_types=[table.type])

    def verify_(self) -> None:
        _check_root(self, self.root)


@irdl_op_definition
class AllGatherOp(IRDLOperation):
    """Every rank's rows to every rank (the result is replicated)."""

    name = "comm.allgather"
    T: ClassVar = _SameTable
    input = operand_def(T)
    output = result_def(T)

    def __init__(self, table: SSAValue):
        super().__init__(operands=[table], result_types=[table.type])


@irdl_op_definition
class ScatterOp(IRDLOperation):
    """The ``root`` rank's rows split into one contiguous slice per rank."""

    name = "comm.scatter"
    T: ClassVar = _SameTable
    input = operand_def(T)
    root = attr_def(IntegerAttr[I64])
    output = result_def(T)

    def __init__(self, table: SSAValue, root: int = 0):
        super().__init__(operands=[table], attributes={"root": IntegerAttr(root, i64)}, result_types=[table.type])

    def verify_(self) -> None:
        _check_root(self, self.root)


@irdl_op_definition
class AllReduceOp(IRDLOperation):
    """Element-wise reduction across ranks; every rank gets the result.

    On tensors, ``op`` reduces every element. On tables (partial aggregates, the same rows on
    every rank, e.g. one row of partial sums/counts/minima), ``column_ops`` may give one
    reduction per column (default: ``op`` for every column).
    """

    name = "comm.allreduce"
    T: ClassVar = _SameAny
    input = operand_def(T)
    op = attr_def(StringAttr)
    column_ops = opt_attr_def(ArrayAttr)
    output = result_def(T)

    def __init__(self, value: SSAValue, op: str, column_ops: Sequence[str] | None = None):
        attrs: dict[str, Attribute] = {"op": StringAttr(op)}
        if column_ops is not None:
            attrs["column_ops"] = str_array(column_ops)
        super().__init__(operands=[value], attributes=attrs, result_types=[value.type])

    @property
    def reductions(self) -> list[str]:
        """One reduction per column of a table operand (or ``[op]`` for other operands)."""
        if self.column_ops is not None:
            return _strs(self.column_ops)
        if isinstance(self.input.type, TableType):
            return [self.op.data] * len(self.input.type.column_names)
        return [self.op.data]

    def verify_(self) -> None:
        if self.op.data not in REDUCTIONS:
            raise fail(self, f"unknown reduction '{self.op.data}' (expected one of {', '.join(REDUCTIONS)})")
        if self.column_ops is not None:
            if not isinstance(self.input.type, TableType):
                raise fail(self, f"'column_ops' needs a table operand, got {self.input.type}")
            ops = _check_string_array(self, self.column_ops, "column_ops")
            cols = self.input.type.column_names
            if len(ops) != len(cols):
                raise fail(self, f"'column_ops' needs one reduction per column ({len(cols)}), got {len(ops)}")
            for col, o in zip(cols, ops):
                if o not in REDUCTIONS:
                    raise fail(self, f"unknown reduction '{o}' for column '{col}' "
                               f"(expected one of {', '.join(REDUCTIONS)})")


@irdl_op_definition
class HaloOp(IRDLOperation):
    """Halo exchange on an ordered, row-partitioned table: each rank's partition extended by
    the last ``before`` rows of the previous rank and the first ``after`` rows of the next."""

    name = "comm.halo"
    T: ClassVar = _SameTable
    input = operand_def(T)
    before = attr_def(IntegerAttr[I64])
    after = attr_def(IntegerAttr[I64])
    order = attr_def(ArrayAttr)
    output = result_def(T)

    def __init__(self, table: SSAValue, before: int, after: int, order: Sequence[str] = ()):
        super().__init__(
            operands=[table],
            attributes={
                "before": IntegerAttr(before, i64),
                "after": IntegerAttr(after, i64),
                "order": str_array(order),
            },
            result_types=[table.type],
        )

    def verify_(self) -> None:
        for what, attr in (("before", self.before), ("after", self.after)):
            if attr.value.data < 0:
                raise fail(self, f"'{what}' must be >= 0 rows, got {attr.value.data}")
        keys = _check_string_array(self, self.order, "order keys")
        _check_columns(self, self.input.type, keys, "order keys")


Comm = Dialect(
    "comm",
    [ShuffleOp, BroadcastOp, GatherOp, AllGatherOp, ScatterOp, AllReduceOp, HaloOp],
    [],
)

COLLECTIVE_OPS = (ShuffleOp, BroadcastOp, GatherOp, AllGatherOp, ScatterOp, AllReduceOp, HaloOp)
