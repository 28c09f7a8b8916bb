"""The ``df`` dialect: relational operators on schema-typed tables.

Tables have the type ``!df.table<[names], [element types], [nullable flags]>``. Column
expressions (filter predicates, assigned columns) are regions of upstream ``arith``/``math``
ops plus ``df.col`` (read a column of the current row) and a few ``df`` scalar ops for what
``arith`` lacks (strings, nulls, membership). IRDL cannot declare terminators, so expression
regions end in upstream ``vector.yield`` (see dialects/upstream/vector_yield.py for why).

Each table op computes its result schema with an ``infer_*`` function; the verifier compares
the declared result type against it and the tracer builds result types with the same
function, so there is one source of truth for schemas.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from xdsl.dialects.builtin import (
    UNKNOWN_LOC,
    ArrayAttr,
    BoolAttr,
    Float32Type,
    Float64Type,
    IntAttr,
    IntegerAttr,
    IntegerType,
    StringAttr,
    i1,
    i64,
)
from xdsl.ir import (
    Attribute,
    Block,
    BlockArgument,
    Dialect,
    OpResult,
    Operation,
    ParametrizedAttribute,
    Region,
    SSAValue,
    TypeAttribute,
)
from xdsl.irdl import (
    IRDLOperation,
    attr_def,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    opt_attr_def,
    param_def,
    region_def,
    result_def,
    traits_def,
)
from xdsl.traits import MemoryReadEffect, MemoryWriteEffect, Pure, RecursiveMemoryEffect
from xdsl.utils.exceptions import VerifyException

from opgraph.ir_construct import init_op, use_fixed_accessors
from opgraph.dialects.diagnostics import fail, where  # noqa: F401  (where: re-exported)
from opgraph.dialects.upstream.vector_yield import YieldOp
from opgraph.dialects.walk import only_block, walk_block

# ----------------------------------------------------------------------------- types


@irdl_attr_definition
class StringType(ParametrizedAttribute, TypeAttribute):
    """UTF-8 string element type of a column."""

    name = "df.string"


@irdl_attr_definition
class TableType(ParametrizedAttribute, TypeAttribute):
    """A table: ordered column names, element types and nullability flags."""

    name = "df.table"

    names: ArrayAttr[StringAttr] = param_def()
    types: ArrayAttr[Attribute] = param_def()
    nullable: ArrayAttr[IntegerAttr] = param_def()

    def __init__(self, columns: Sequence[tuple[str, Attribute, bool]]):
        super().__init__(
            ArrayAttr([string_attr(n) for n, _, _ in columns]),
            ArrayAttr([t for _, t, _ in columns]),
            ArrayAttr([_BOOLS[1 if nl else 0] for _, _, nl in columns]),
        )

    def verify(self) -> None:
        if not (len(self.names) == len(self.types) == len(self.nullable)):
            raise VerifyException("df.table: names, types and nullable flags differ in length")
        seen: set[str] = set()
        for n, t in zip(self.names, self.types):
            if n.data in seen:
                raise VerifyException(f"df.table: duplicate column name '{n.data}'")
            seen.add(n.data)
            if not is_element_type(t):
                raise VerifyException(f"df.table: column '{n.data}' has unsupported type {t}")

    @property
    def columns(self) -> tuple[tuple[str, Attribute, bool], ...]:
        return _columns_of(self)

    @property
    def column_names(self) -> list[str]:
        return [c[0] for c in _columns_of(self)]

    def column(self, name: str) -> tuple[Attribute, bool] | None:
        return _column_index(self).get(name)

    def __hash__(self) -> int:
        # The generated dataclass hash rehashes every nested attribute on each call, and
        # schemas are hashed constantly (cache keys); the type is immutable, so hash once.
        cache = self.__dict__
        h = cache.get("_hash")
        if h is None:
            h = cache["_hash"] = hash((self.names, self.types, self.nullable))
        return h


# Schemas are immutable and shared by many ops; their decoded forms are cached on the type
# object itself, and identical types are constructed once, which keeps tracing and
# verification linear in pipeline size.
def _columns_of(t: TableType) -> tuple[tuple[str, Attribute, bool], ...]:
    cache = t.__dict__
    cols = cache.get("_columns")
    if cols is None:
        cols = cache["_columns"] = tuple(
            (n.data, ty, bool(f.value.data)) for n, ty, f in zip(t.names, t.types, t.nullable)
        )
    return cols


def _column_index(t: TableType) -> dict[str, tuple[Attribute, bool]]:
    cache = t.__dict__
    index = cache.get("_index")
    if index is None:
        index = cache["_index"] = {n: (ty, nl) for n, ty, nl in _columns_of(t)}
    return index


@lru_cache(maxsize=1 << 16)
def _table_of(columns: tuple[tuple[str, Attribute, bool], ...]) -> TableType:
    return TableType(columns)


def table_of(columns: Sequence[tuple[str, Attribute, bool]]) -> TableType:
    """A (cached) table type with these columns."""
    # Looked up first by the identity of the element types: hashing them (dataclass hashes
    # of nested parameters) dominated the lookup, and the same type objects recur. The entry
    # keeps the columns it was made from alive, so their ids cannot be reused meanwhile.
    key = tuple([(n, id(t), nl) for n, t, nl in columns])
    entry = _tables_by_identity.get(key)
    if entry is None:
        if len(_tables_by_identity) >= 1 << 16:
            _tables_by_identity.clear()
        cols = tuple(columns)
        entry = _tables_by_identity[key] = (cols, _table_of(cols))
    return entry[1]


_tables_by_identity: dict[tuple, tuple[tuple, TableType]] = {}


# Attribute classes are final (xDSL's irdl_attr_definition forbids subclassing them), so
# exact type tests are the isinstance tests - without the ABC machinery, and these
# predicates run for every column and expression value.
_FLOATS = frozenset({Float32Type, Float64Type})
_NUMERIC = frozenset({IntegerType, Float32Type, Float64Type})
_NON_INT_ELEMENTS = frozenset({Float32Type, Float64Type, StringType})


def is_element_type(t: Attribute) -> bool:
    kind = type(t)
    if kind is IntegerType:
        return t.width.data in (1, 8, 16, 32, 64)  # type: ignore[attr-defined]
    return kind in _NON_INT_ELEMENTS


def is_numeric(t: Attribute) -> bool:
    return type(t) in _NUMERIC


def is_integer(t: Attribute) -> bool:
    return type(t) is IntegerType and t.width.data > 1  # type: ignore[attr-defined]


def is_bool(t: Attribute) -> bool:
    return type(t) is IntegerType and t.width.data == 1  # type: ignore[attr-defined]


def is_float(t: Attribute) -> bool:
    return type(t) in _FLOATS


def type_str(t: Attribute) -> str:
    if isinstance(t, StringType):
        return "string"
    if is_bool(t):
        return "bool"
    if isinstance(t, IntegerType):
        return f"int{t.width.data}"
    if isinstance(t, Float32Type):
        return "float32"
    if isinstance(t, Float64Type):
        return "float64"
    return str(t)


def _strs(attr: ArrayAttr) -> list[str]:
    return [a.data for a in attr]


def _bools(attr: ArrayAttr) -> list[bool]:
    return [bool(a.value.data) for a in attr]


# Attributes are immutable values: equal ones can be shared, and column names and flags recur
# in every schema and name list (building them was a good part of tracing and retyping).
_BOOLS = (BoolAttr.from_bool(False), BoolAttr.from_bool(True))


@lru_cache(maxsize=1 << 16)
def string_attr(value: str) -> StringAttr:
    """``StringAttr(value)``, one shared object per string."""
    return StringAttr(value)


def str_array(values: Sequence[str]) -> ArrayAttr[StringAttr]:
    return _str_array(tuple(values))


@lru_cache(maxsize=1 << 16)
def _str_array(values: tuple[str, ...]) -> ArrayAttr[StringAttr]:
    # one shared (immutable) array per name list: the same lists recur in every map/project
    # of a pipeline, and ArrayAttr re-verifies its elements on construction
    return ArrayAttr([string_attr(v) for v in values])


def bool_array(values: Sequence[bool]) -> ArrayAttr[IntegerAttr]:
    return ArrayAttr([_BOOLS[1 if v else 0] for v in values])


class SchemaError(Exception):
    """Raised by ``infer_*`` functions; verifiers and the tracer turn it into their errors."""


def _require_columns(schema: TableType, names: Sequence[str], what: str) -> None:
    for n in names:
        if schema.column(n) is None:
            raise SchemaError(
                f"unknown column '{n}' in {what} (columns: {', '.join(schema.column_names)})"
            )


# ------------------------------------------------------------------ schema inference


def infer_project(schema: TableType, columns: Sequence[str]) -> TableType:
    _require_columns(schema, columns, "projection")
    if len(set(columns)) != len(columns):
        raise SchemaError("projection lists a column twice")
    cols = dict((n, (t, nl)) for n, t, nl in schema.columns)
    return table_of([(n, *cols[n]) for n in columns])


def infer_drop(schema: TableType, columns: Sequence[str]) -> TableType:
    _require_columns(schema, columns, "drop")
    return table_of([c for c in schema.columns if c[0] not in set(columns)])


def infer_rename(schema: TableType, old: Sequence[str], new: Sequence[str]) -> TableType:
    _require_columns(schema, old, "rename")
    mapping = dict(zip(old, new))
    result = [(mapping.get(n, n), t, nl) for n, t, nl in schema.columns]
    names = [c[0] for c in result]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SchemaError(f"rename produces duplicate column '{sorted(dup)[0]}'")
    return table_of(result)


def infer_assign(schema: TableType, names: Sequence[str], values: Sequence[tuple[Attribute, bool]]) -> TableType:
    """pandas ``assign``: an existing name is replaced in place, a new one is appended."""
    cols = list(schema.columns)
    for name, (t, nl) in zip(names, values):
        idx = next((i for i, c in enumerate(cols) if c[0] == name), None)
        if idx is None:
            cols.append((name, t, nl))
        else:
            cols[idx] = (name, t, nl)
    return table_of(cols)


def same_key_kind(a: Attribute, b: Attribute) -> bool:
    if isinstance(a, StringType) or isinstance(b, StringType):
        return isinstance(a, StringType) and isinstance(b, StringType)
    if is_bool(a) or is_bool(b):
        return is_bool(a) and is_bool(b)
    return is_numeric(a) and is_numeric(b)


# Shared type objects (types are immutable values): promote runs for every binary
# expression traced, and constructing a type re-verifies its parameters each time.
_F64 = Float64Type()
_F32 = Float32Type()


@lru_cache(maxsize=64)
def _int_type(width: int) -> IntegerType:
    return IntegerType(width)


def promote(a: Attribute, b: Attribute) -> Attribute:
    """numpy-style promotion of two numeric types (bool < int < float, wider wins)."""
    if a == b:
        return a
    if is_float(a) or is_float(b):
        if isinstance(a, Float64Type) or isinstance(b, Float64Type):
            return _F64
        # float32 with an integer wider than 16 bits loses precision: numpy gives float64
        other = b if is_float(a) else a
        if isinstance(other, IntegerType) and other.width.data > 16:
            return _F64
        return _F32
    wa = a.width.data if isinstance(a, IntegerType) else 64
    wb = b.width.data if isinstance(b, IntegerType) else 64
    return _int_type(max(wa, wb, 8) if min(wa, wb) == 1 and max(wa, wb) == 1 else max(wa, wb))


JOIN_KINDS = ("inner", "left", "right", "outer")


def infer_join(
    left: TableType,
    right: TableType,
    how: str,
    left_on: Sequence[str],
    right_on: Sequence[str],
    suffixes: tuple[str, str] = ("_x", "_y"),
) -> TableType:
    """pandas ``merge`` output: left columns, then right non-key columns.

    A right key is dropped when it has the same name as its paired left key (``on=``);
    its values are coalesced into the left key for right/outer joins. Other clashing
    names get the suffixes.
    """
    if how not in JOIN_KINDS:
        raise SchemaError(f"unknown join kind '{how}' (expected one of {', '.join(JOIN_KINDS)})")
    if len(left_on) != len(right_on) or not left_on:
        raise SchemaError("join needs the same non-zero number of left and right keys")
    _require_columns(left, left_on, "left join keys")
    _require_columns(right, right_on, "right join keys")
    merged_keys: dict[str, Attribute] = {}
    for lk, rk in zip(left_on, right_on):
        lt, _ = left.column(lk)  # type: ignore[misc]
        rt, _ = right.column(rk)  # type: ignore[misc]
        if not same_key_kind(lt, rt):
            raise SchemaError(
                f"join keys '{lk}' ({type_str(lt)}) and '{rk}' ({type_str(rt)}) have different types"
            )
        if lk == rk:
            merged_keys[lk] = promote(lt, rt) if is_numeric(lt) else lt
    left_nullable = how in ("right", "outer")
    right_nullable = how in ("left", "outer")
    right_cols = [c for c in right.columns if c[0] not in merged_keys]
    right_names = {c[0] for c in right_cols}
    left_names = set(left.column_names)
    out: list[tuple[str, Attribute, bool]] = []
    for n, t, nl in left.columns:
        if n in merged_keys:
            rnl = right.column(n)[1]  # type: ignore[index]
            key_null = nl or rnl if how in ("right", "outer") else (rnl if how == "right" else nl)
            out.append((n, merged_keys[n], key_null))
            continue
        name = n + suffixes[0] if n in right_names else n
        out.append((name, t, nl or left_nullable))
    for n, t, nl in right_cols:
        name = n + suffixes[1] if n in left_names else n
        out.append((name, t, nl or right_nullable))
    names = [c[0] for c in out]
    if len(set(names)) != len(names):
        raise SchemaError("join output has duplicate column names after applying suffixes")
    return table_of(out)


def infer_set_op(what: str, inputs: Sequence[TableType]) -> TableType:
    """concat/union/intersect/difference: same names and element types, nullability ORed
    (intersect/difference keep the left input's nullability but OR is a safe superset)."""
    first = inputs[0]
    for other in inputs[1:]:
        if other.column_names != first.column_names:
            raise SchemaError(
                f"{what} inputs have different columns: {first.column_names} vs {other.column_names}"
            )
        for (n, t1, _), (_, t2, _) in zip(first.columns, other.columns):
            if t1 != t2:
                raise SchemaError(
                    f"{what} inputs disagree on the type of column '{n}': {type_str(t1)} vs {type_str(t2)}"
                )
    return table_of(
        [
            (n, t, any(tab.columns[i][2] for tab in inputs))
            for i, (n, t, _) in enumerate(first.columns)
        ]
    )


AGGREGATES = ("sum", "mean", "min", "max", "count", "size", "std", "var", "nunique", "median")


def infer_aggregate_column(fn: str, t: Attribute | None, nullable: bool, column: str) -> tuple[Attribute, bool]:
    if fn not in AGGREGATES:
        raise SchemaError(f"unknown aggregate '{fn}' (expected one of {', '.join(AGGREGATES)})")
    if fn in ("count", "size", "nunique"):
        return i64, False
    assert t is not None
    if fn in ("min", "max"):
        return t, True
    if not is_numeric(t):
        raise SchemaError(f"cannot aggregate {type_str(t)} column '{column}' with '{fn}'")
    if fn == "sum":
        return (Float64Type() if is_float(t) else i64), True
    return Float64Type(), True  # mean, std, var, median: SQL gives NULL for all-null groups


def infer_groupby(schema: TableType, keys: Sequence[str], aggs: Sequence[tuple[str, str, str]]) -> TableType:
    if not keys:
        raise SchemaError("groupby needs at least one key")
    _require_columns(schema, keys, "groupby keys")
    out = [(k, *schema.column(k)) for k in keys]  # type: ignore[misc]
    out += _agg_columns(schema, aggs)
    names = [c[0] for c in out]
    if len(set(names)) != len(names):
        raise SchemaError("aggregate output names clash with each other or with the keys")
    return table_of(out)


def infer_aggregate(schema: TableType, aggs: Sequence[tuple[str, str, str]]) -> TableType:
    out = _agg_columns(schema, aggs)
    names = [c[0] for c in out]
    if len(set(names)) != len(names):
        raise SchemaError("aggregate output names clash")
    return table_of(out)


def _agg_columns(schema: TableType, aggs: Sequence[tuple[str, str, str]]) -> list[tuple[str, Attribute, bool]]:
    if not aggs:
        raise SchemaError("aggregation needs at least one aggregate")
    out = []
    for name, col, fn in aggs:
        if fn == "size" and col == "":
            out.append((name, i64, False))
            continue
        _require_columns(schema, [col], f"aggregate '{name}'")
        t, nl = schema.column(col)  # type: ignore[misc]
        out.append((name, *infer_aggregate_column(fn, t, nl, col)))
    return out


WINDOW_FUNCS = ("rolling_sum", "rolling_mean", "rolling_min", "rolling_max", "shift", "diff")


def infer_window(schema: TableType, func: str, column: str, param: int, output: str) -> TableType:
    if func not in WINDOW_FUNCS:
        raise SchemaError(f"unknown window function '{func}'")
    _require_columns(schema, [column], f"window {func}")
    t, _ = schema.column(column)  # type: ignore[misc]
    if func.startswith("rolling_") and param < 1:
        raise SchemaError(f"rolling window size must be >= 1, got {param}")
    if func != "shift" and not is_numeric(t):
        raise SchemaError(f"cannot compute {func} of {type_str(t)} column '{column}'")
    if func == "rolling_mean":
        rt: Attribute = Float64Type()
    elif func == "rolling_sum":
        rt = Float64Type() if is_float(t) else i64
    elif func == "diff":
        rt = t if is_float(t) else Float64Type()  # pandas: diff of ints is float64 (NaN first)
    else:
        rt = t
    return infer_assign(schema, [output], [(rt, True)])


def infer_sort(schema: TableType, by: Sequence[str], ascending: Sequence[bool]) -> TableType:
    if not by:
        raise SchemaError("sort needs at least one column")
    if len(ascending) != len(by):
        raise SchemaError("sort: 'ascending' must have one flag per sort column")
    _require_columns(schema, by, "sort keys")
    return schema


# --------------------------------------------------------------- expression regions


def region_results(region: Region) -> list[SSAValue] | None:
    """The values yielded by an expression region (None if it does not end in a yield)."""
    block = region.first_block
    if block is None or type(block.last_op) is not YieldOp:  # (YieldOp has no subclasses)
        return None
    return list(block.last_op._operands)  # (its only operands: the variadic group "values")


def _check_expression_region(op: Operation, region: Region, schema: TableType, what: str, count: int) -> list[Attribute]:
    """Checks the region's column reads against ``schema`` and that it yields ``count``
    values; returns their types."""
    block = only_block(region)
    if block is None:
        raise fail(op, f"{what} must have exactly one block")
    if block.args:
        raise fail(op, f"{what} takes no block arguments (read columns with df.col)")
    for inner in walk_block(block):
        if type(inner) is ColumnOp:  # (no subclasses: an exact test is cheaper)
            found = schema.column(inner.column.data)
            if found is None:
                raise fail(
                    inner,
                    f"unknown column '{inner.column.data}' (columns: {', '.join(schema.column_names)})",
                )
            t = inner.result.type
            if found[0] is not t and found[0] != t:
                raise fail(
                    inner,
                    f"column '{inner.column.data}' has type {type_str(found[0])}, read as {type_str(inner.result.type)}",
                )
    values = region_results(region)
    if values is None or len(values) != count:
        raise fail(op, f"{what} must end with 'vector.yield' of {count} value{'s' if count != 1 else ''}")
    return [v.type for v in values]


def expression_nullable(value: SSAValue, schema: TableType, _memo: dict[SSAValue, bool] | None = None) -> bool:
    """Whether an expression value can be null (SQL semantics): nulls propagate through
    every op except the null test and ``isin`` (never null), ``df.fill_null`` (null only if
    the fill value is) and ``arith.select`` (a null condition picks the false branch).

    Values used several times (shared subexpressions) are decided once, so the cost is
    linear in the region's size, not in the number of paths through it."""
    memo: dict[SSAValue, bool] = {} if _memo is None else _memo
    known = memo.get(value)
    if known is not None:
        return known
    owner = value.owner
    if isinstance(owner, Block):
        result = False
    elif isinstance(owner, ColumnOp):
        found = schema.column(owner.column.data)
        result = bool(found and found[1])
    elif isinstance(owner, IsNullOp | IsInOp):
        result = False
    elif isinstance(owner, FillNullOp):
        result = expression_nullable(owner.fill, schema, memo)
    else:
        operands = owner.operands[1:] if owner.name == "arith.select" else owner.operands
        result = any(expression_nullable(o, schema, memo) for o in operands)
    memo[value] = result
    return result


def _nullable_values(block: Block, schema: TableType) -> dict[SSAValue, bool]:
    """``expression_nullable`` of every value the ops of ``block`` define, in one forward
    pass over the block (the same rules; an operand defined elsewhere is asked of
    ``expression_nullable``). Usable as its memo."""
    memo: dict[SSAValue, bool] = {}
    columns = _column_index(schema)
    for op in block.ops:
        # exact class tests: these op classes have no subclasses (cheaper than isinstance
        # against xDSL's ABCs; regions are walked by every verification)
        cls = type(op)
        if cls is ColumnOp:
            found = columns.get(op.attributes["column"].data)  # type: ignore[attr-defined]
            result = bool(found and found[1])
        elif cls is IsNullOp or cls is IsInOp:
            result = False
        elif cls is FillNullOp:
            fill = op.fill  # type: ignore[attr-defined]
            known = memo.get(fill)
            result = known if known is not None else expression_nullable(fill, schema, memo)
        else:
            operands = op._operands[1:] if op.name == "arith.select" else op._operands
            result = False
            for o in operands:
                known = memo.get(o)
                if known is None:
                    known = expression_nullable(o, schema, memo)
                if known:
                    result = True
                    break
        for r in op.results:
            memo[r] = result
    return memo


# ---------------------------------------------------------------------- table ops


def _init(
    op: IRDLOperation,
    *,
    operands: Sequence[SSAValue | Operation] = (),
    result_types: Sequence[Attribute] = (),
    attributes: dict[str, Attribute] | None = None,
    regions: Sequence[Region] = (),
) -> None:
    """``IRDLOperation.__init__`` for this dialect's ops, which have fixed shapes (no
    variadic groups, no properties): builds the same op as IRDL's generic builder, without
    its per-op argument processing (a traced pipeline builds thousands of these; the op is
    verified as usual when the module is)."""
    init_op(  # = Operation.__init__ (opgraph.ir_construct), quicker
        op,
        # SSAValue.get(o) is o for values (the usual case, told by the exact class)
        operands=[o if type(o) in _VALUE_CLASSES else SSAValue.get(o) for o in operands],
        result_types=result_types,
        attributes={k: v for k, v in attributes.items() if v is not None} if attributes else {},
        regions=regions,
        location=UNKNOWN_LOC,  # what Operation.__init__ uses, without its per-op import
    )


_VALUE_CLASSES = frozenset({OpResult, BlockArgument})


class _TableOp(IRDLOperation):
    """Shared verifier plumbing: subclasses implement ``expected_type``."""

    def expected_type(self) -> TableType:  # pragma: no cover - abstract
        raise NotImplementedError

    def verify_(self) -> None:
        try:
            expected = self.expected_type()
        except SchemaError as e:
            raise fail(self, str(e)) from None
        actual = self.results[0].type
        if actual != expected:
            raise fail(self, f"result type {actual} does not match the inferred schema {expected}")


def _table(value: SSAValue) -> TableType:
    assert isinstance(value.type, TableType)
    return value.type


class _ReadOp(IRDLOperation):
    path = attr_def(StringAttr)
    columns = opt_attr_def(ArrayAttr[StringAttr])
    result = result_def(TableType)
    # reads may be merged (CSE) or dropped when unused (DCE), never reordered past a write
    traits = traits_def(MemoryReadEffect())

    def __init__(self, path: str, schema: TableType, columns: Sequence[str] | None = None):
        attrs: dict[str, Attribute] = {"path": StringAttr(path)}
        if columns is not None:
            attrs["columns"] = str_array(columns)
        _init(self, attributes=attrs, result_types=[schema])

    def verify_(self) -> None:
        if self.columns is not None and _strs(self.columns) != self.result.type.column_names:
            raise fail(self, "the result schema must list exactly the requested columns, in order")


@irdl_op_definition
class ReadParquetOp(_ReadOp):
    """Reads a Parquet file, directory or glob; the schema comes from the footer."""

    name = "df.read_parquet"


@irdl_op_definition
class ReadCsvOp(_ReadOp):
    """Reads CSV; the schema was inferred from a sample at trace time."""

    name = "df.read_csv"


@irdl_op_definition
class ReadIpcOp(_ReadOp):
    """Reads Arrow IPC (Feather v2) files."""

    name = "df.read_ipc"


@irdl_op_definition
class InputOp(IRDLOperation):
    """A table passed as a pipeline argument (pyarrow.Table / pandas.DataFrame)."""

    name = "df.input"
    index = attr_def(IntegerAttr)
    arg_name = attr_def(StringAttr)
    result = result_def(TableType)
    traits = traits_def(MemoryReadEffect())

    def __init__(self, index: int, arg_name: str, schema: TableType):
        _init(
            self,
            attributes={"index": IntegerAttr(index, i64), "arg_name": StringAttr(arg_name)},
            result_types=[schema],
        )


class _WriteOp(IRDLOperation):
    """Sinks: write a directory of part files, committed atomically."""

    input = operand_def(TableType)
    path = attr_def(StringAttr)
    traits = traits_def(MemoryWriteEffect())

    def __init__(self, table: SSAValue, path: str):
        _init(self, operands=[table], attributes={"path": StringAttr(path)})


@irdl_op_definition
class WriteParquetOp(_WriteOp):
    name = "df.write_parquet"


@irdl_op_definition
class WriteCsvOp(_WriteOp):
    name = "df.write_csv"


@irdl_op_definition
class WriteIpcOp(_WriteOp):
    name = "df.write_ipc"


@irdl_op_definition
class FilterOp(_TableOp):
    """Keeps rows whose predicate region returns true (null counts as false)."""

    name = "df.filter"
    input = operand_def(TableType)
    predicate = region_def("single_block")
    result = result_def(TableType)
    traits = traits_def(Pure(), RecursiveMemoryEffect())

    def __init__(self, table: SSAValue, predicate: Region):
        _init(self, operands=[table], regions=[predicate], result_types=[table.type])

    def expected_type(self) -> TableType:
        (t,) = _check_expression_region(self, self.predicate, _table(self.input), "predicate", 1)
        if not is_bool(t):
            raise fail(self, f"predicate must be boolean (i1), got {type_str(t)}")
        return _table(self.input)


@irdl_op_definition
class ProjectOp(_TableOp):
    name = "df.project"
    input = operand_def(TableType)
    columns = attr_def(ArrayAttr[StringAttr])
    result = result_def(TableType)
    traits = traits_def(Pure())

    def __init__(self, table: SSAValue, columns: Sequence[str]):
        _init(
            self,
            operands=[table],
            attributes={"columns": str_array(columns)},
            result_types=[infer_project(_table(table), columns)],
        )

    def expected_type(self) -> TableType:
        return infer_project(_table(self.input), _strs(self.columns))


@irdl_op_definition
class MapOp(_TableOp):
    """pandas ``assign``: one expression region yielding the assigned columns in ``names``
    order (one region, not one per column: upstream IRDL has no variadic regions)."""

    name = "df.map"
    input = operand_def(TableType)
    names = attr_def(ArrayAttr[StringAttr])
    expr = region_def("single_block")
    result = result_def(TableType)
    traits = traits_def(Pure(), RecursiveMemoryEffect())

    def __init__(self, table: SSAValue, names: Sequence[str], expr: Region, result: TableType):
        _init(self, operands=[table], attributes={"names": str_array(names)}, regions=[expr], result_types=[result])

    def expected_type(self) -> TableType:
        names = _strs(self.names)
        if len(set(names)) != len(names):
            raise fail(self, "a column is assigned twice")
        schema = _table(self.input)
        types = _check_expression_region(self, self.expr, schema, "expression region", len(names))
        values = region_results(self.expr) or []
        for name, t in zip(names, types):
            if not is_element_type(t):
                raise fail(self, f"expression for '{name}' has non-column type {t}")
        # shared by the columns: they may share subexpressions
        block = self.expr.first_block
        memo = _nullable_values(block, schema) if block is not None else {}
        return infer_assign(schema, names, [(t, expression_nullable(v, schema, memo)) for t, v in zip(types, values)])


@irdl_op_definition
class RenameOp(_TableOp):
    name = "df.rename"
    input = operand_def(TableType)
    old_names = attr_def(ArrayAttr[StringAttr])
    new_names = attr_def(ArrayAttr[StringAttr])
    result = result_def(TableType)
    traits = traits_def(Pure())

    def __init__(self, table: SSAValue, mapping: dict[str, str]):
        old, new = list(mapping), list(mapping.values())
        _init(
            self,
            operands=[table],
            attributes={"old_names": str_array(old), "new_names": str_array(new)},
            result_types=[infer_rename(_table(table), old, new)],
        )

    def expected_type(self) -> TableType:
        if len(self.old_names) != len(self.new_names):
            raise SchemaError("old_names and new_names differ in length")
        return infer_rename(_table(self.input), _strs(self.old_names), _strs(self.new_names))


@irdl_op_definition
class DropOp(_TableOp):
    name = "df.drop"
    input = operand_def(TableType)
    columns = attr_def(ArrayAttr[StringAttr])
    result = result_def(TableType)
    traits = traits_def(Pure())

    def __init__(self, table: SSAValue, columns: Sequence[str]):
        _init(
            self,
            operands=[table],
            attributes={"columns": str_array(columns)},
            result_types=[infer_drop(_table(table), columns)],
        )

    def expected_type(self) -> TableType:
        return infer_drop(_table(self.input), _strs(self.columns))


@irdl_op_definition
class JoinOp(_TableOp):
    """Equi-join with pandas ``merge`` semantics; null keys never match."""

    name = "df.join"
    left = operand_def(TableType)
    right = operand_def(TableType)
    how = attr_def(StringAttr)
    left_on = attr_def(ArrayAttr[StringAttr])
    right_on = attr_def(ArrayAttr[StringAttr])
    suffixes = attr_def(ArrayAttr[StringAttr])
    result = result_def(TableType)
    traits = traits_def(Pure())

    def __init__(
        self,
        left: SSAValue,
        right: SSAValue,
        how: str,
        left_on: Sequence[str],
        right_on: Sequence[str],
        suffixes: tuple[str, str] = ("_x", "_y"),
    ):
        _init(
            self,
            operands=[left, right],
            attributes={
                "how": StringAttr(how),
                "left_on": str_array(left_on),
                "right_on": str_array(right_on),
                "suffixes": str_array(suffixes),
            },
            result_types=[infer_join(_table(left), _table(right), how, left_on, right_on, suffixes)],
        )

    def expected_type(self) -> TableType:
        sfx = _strs(self.suffixes)
        if len(sfx) != 2:
            raise SchemaError("suffixes must hold two strings")
        return infer_join(
            _table(self.left), _table(self.right), self.how.data, _strs(self.left_on), _strs(self.right_on), (sfx[0], sfx[1])
        )


class _TwoTableOp(_TableOp):
    """Two tables with the same column names and types; nullability is ORed. Binary rather
    than variadic: upstream IRDL forces all operands of a variadic group to one type, and
    inputs may differ in nullability."""

    left = operand_def(TableType)
    right = operand_def(TableType)
    result = result_def(TableType)
    traits = traits_def(Pure())

    def __init__(self, left: SSAValue, right: SSAValue):
        _init(self, operands=[left, right], result_types=[infer_set_op(self.name[3:], [_table(left), _table(right)])])

    def expected_type(self) -> TableType:
        return infer_set_op(self.name[3:], [_table(self.left), _table(self.right)])


@irdl_op_definition
class ConcatOp(_TwoTableOp):
    """Union all: every row of both inputs (``og.concat`` of n tables is a chain)."""

    name = "df.concat"


class _SetOp(_TwoTableOp):
    """Set semantics: the result holds distinct rows."""


@irdl_op_definition
class UnionOp(_SetOp):
    name = "df.union"


@irdl_op_definition
class IntersectOp(_SetOp):
    name = "df.intersect"


@irdl_op_definition
class DifferenceOp(_SetOp):
    name = "df.difference"


@irdl_op_definition
class DistinctOp(_TableOp):
    """``drop_duplicates(subset)``: one row per distinct value of ``subset`` (all columns if absent)."""

    name = "df.distinct"
    input = operand_def(TableType)
    subset = opt_attr_def(ArrayAttr[StringAttr])
    result = result_def(TableType)
    traits = traits_def(Pure())

    def __init__(self, table: SSAValue, subset: Sequence[str] | None = None):
        attrs = {} if subset is None else {"subset": str_array(subset)}
        if subset is not None:
            _require_columns(_table(table), subset, "drop_duplicates subset")
        _init(self, operands=[table], attributes=attrs, result_types=[table.type])

    def expected_type(self) -> TableType:
        if self.subset is not None:
            _require_columns(_table(self.input), _strs(self.subset), "drop_duplicates subset")
        return _table(self.input)


@irdl_op_definition
class SortOp(_TableOp):
    """Stable sort; nulls last in both directions."""

    name = "df.sort"
    input = operand_def(TableType)
    by = attr_def(ArrayAttr[StringAttr])
    ascending = attr_def(ArrayAttr[IntegerAttr])
    result = result_def(TableType)
    traits = traits_def(Pure())

    def __init__(self, table: SSAValue, by: Sequence[str], ascending: Sequence[bool]):
        _init(
            self,
            operands=[table],
            attributes={"by": str_array(by), "ascending": bool_array(ascending)},
            result_types=[infer_sort(_table(table), by, ascending)],
        )

    def expected_type(self) -> TableType:
        return infer_sort(_table(self.input), _strs(self.by), _bools(self.ascending))


@irdl_op_definition
class HeadOp(_TableOp):
    name = "df.head"
    input = operand_def(TableType)
    n = attr_def(IntegerAttr)
    result = result_def(TableType)
    traits = traits_def(Pure())

    def __init__(self, table: SSAValue, n: int):
        _init(self, operands=[table], attributes={"n": IntegerAttr(n, i64)}, result_types=[table.type])

    def expected_type(self) -> TableType:
        if self.n.value.data < 0:
            raise SchemaError(f"head(n) needs n >= 0, got {self.n.value.data}")
        return _table(self.input)


def agg_array(aggs: Sequence[tuple[str, str, str]]) -> ArrayAttr:
    return ArrayAttr([str_array(a) for a in aggs])


def agg_tuples(attr: ArrayAttr) -> list[tuple[str, str, str]]:
    out = []
    for entry in attr:
        items = _strs(entry)
        if len(items) != 3:
            raise SchemaError("each aggregate is [output name, column, function]")
        out.append((items[0], items[1], items[2]))
    return out


@irdl_op_definition
class GroupByAggOp(_TableOp):
    """``groupby(keys).agg(name=(col, fn))``; null keys form one group, aggregates skip nulls."""

    name = "df.groupby_agg"
    input = operand_def(TableType)
    keys = attr_def(ArrayAttr[StringAttr])
    aggs = attr_def(ArrayAttr)
    result = result_def(TableType)
    traits = traits_def(Pure())

    def __init__(self, table: SSAValue, keys: Sequence[str], aggs: Sequence[tuple[str, str, str]]):
        _init(
            self,
            operands=[table],
            attributes={"keys": str_array(keys), "aggs": agg_array(aggs)},
            result_types=[infer_groupby(_table(table), keys, aggs)],
        )

    def expected_type(self) -> TableType:
        return infer_groupby(_table(self.input), _strs(self.keys), agg_tuples(self.aggs))


@irdl_op_definition
class AggregateOp(_TableOp):
    """Whole-table aggregation ``t.agg(...)``: one row."""

    name = "df.aggregate"
    input = operand_def(TableType)
    aggs = attr_def(ArrayAttr)
    result = result_def(TableType)
    traits = traits_def(Pure())

    def __init__(self, table: SSAValue, aggs: Sequence[tuple[str, str, str]]):
        _init(
            self,
            operands=[table],
            attributes={"aggs": agg_array(aggs)},
            result_types=[infer_aggregate(_table(table), aggs)],
        )

    def expected_type(self) -> TableType:
        return infer_aggregate(_table(self.input), agg_tuples(self.aggs))


@irdl_op_definition
class WindowOp(_TableOp):
    """Row-order window function (rolling k / shift n / diff n) over the input's current order,
    appended (or replacing) as column ``output``; leading rows without a full window are null."""

    name = "df.window"
    input = operand_def(TableType)
    func = attr_def(StringAttr)
    column = attr_def(StringAttr)
    param = attr_def(IntegerAttr)
    output = attr_def(StringAttr)
    result = result_def(TableType)
    traits = traits_def(Pure())

    def __init__(self, table: SSAValue, func: str, column: str, param: int, output: str):
        _init(
            self,
            operands=[table],
            attributes={
                "func": StringAttr(func),
                "column": StringAttr(column),
                "param": IntegerAttr(param, i64),
                "output": StringAttr(output),
            },
            result_types=[infer_window(_table(table), func, column, param, output)],
        )

    def expected_type(self) -> TableType:
        return infer_window(
            _table(self.input), self.func.data, self.column.data, self.param.value.data, self.output.data
        )


# --------------------------------------------------------------- expression ops


def _check_in_expression(op: Operation) -> None:
    parent = op.parent_op()
    if not isinstance(parent, FilterOp | MapOp):
        raise fail(op, "must be nested in an expression region of df.filter or df.map")


@irdl_op_definition
class ColumnOp(IRDLOperation):
    """Reads column ``column`` of the current row."""

    name = "df.col"
    column = attr_def(StringAttr)
    result = result_def()
    traits = traits_def(Pure())

    def __init__(self, column: str, element_type: Attribute):
        _init(self, attributes={"column": string_attr(column)}, result_types=[element_type])

    def verify_(self) -> None:
        if not is_element_type(self.result.type):
            raise fail(self, f"column read has non-column type {self.result.type}")
        _check_in_expression(self)


@irdl_op_definition
class StringConstantOp(IRDLOperation):
    """A string literal (``arith.constant`` has no string type)."""

    name = "df.str_constant"
    value = attr_def(StringAttr)
    result = result_def(StringType)
    traits = traits_def(Pure())

    def __init__(self, value: str):
        _init(self, attributes={"value": StringAttr(value)}, result_types=[StringType()])


@irdl_op_definition
class IsNullOp(IRDLOperation):
    name = "df.is_null"
    operand = operand_def()
    result = result_def(IntegerType(1))
    traits = traits_def(Pure())

    def __init__(self, value: SSAValue):
        _init(self, operands=[value], result_types=[i1])


@irdl_op_definition
class FillNullOp(IRDLOperation):
    """``x.fillna(v)``: ``fill`` where ``operand`` is null."""

    name = "df.fill_null"
    operand = operand_def()
    fill = operand_def()
    result = result_def()
    traits = traits_def(Pure())

    def __init__(self, value: SSAValue, fill: SSAValue):
        _init(self, operands=[value, fill], result_types=[value.type])

    def verify_(self) -> None:
        if not (self.operand.type == self.fill.type == self.result.type):
            raise fail(self, "operand, fill value and result must have the same type")


@irdl_op_definition
class IsInOp(IRDLOperation):
    """``x.isin([...])`` against a literal list (null is never in the list)."""

    name = "df.isin"
    operand = operand_def()
    values = attr_def(ArrayAttr)
    result = result_def(IntegerType(1))
    traits = traits_def(Pure())

    def __init__(self, value: SSAValue, values: ArrayAttr):
        _init(self, operands=[value], attributes={"values": values}, result_types=[i1])


@irdl_op_definition
class CastOp(IRDLOperation):
    """Casts that ``arith`` cannot express: to and from strings."""

    name = "df.cast"
    operand = operand_def()
    result = result_def()
    traits = traits_def(Pure())

    def __init__(self, value: SSAValue, to: Attribute):
        _init(self, operands=[value], result_types=[to])

    def verify_(self) -> None:
        if not (isinstance(self.operand.type, StringType) or isinstance(self.result.type, StringType)):
            raise fail(self, "df.cast converts to or from strings; use arith casts for numbers")


STRING_COMPARISONS = ("eq", "ne", "lt", "le", "gt", "ge")


@irdl_op_definition
class StringCompareOp(IRDLOperation):
    """Lexicographic (byte-wise UTF-8) comparison of two strings."""

    name = "df.str_cmp"
    predicate = attr_def(StringAttr)
    lhs = operand_def(StringType)
    rhs = operand_def(StringType)
    result = result_def(IntegerType(1))
    traits = traits_def(Pure())

    def __init__(self, predicate: str, lhs: SSAValue, rhs: SSAValue):
        _init(self, operands=[lhs, rhs], attributes={"predicate": StringAttr(predicate)}, result_types=[i1])

    def verify_(self) -> None:
        if self.predicate.data not in STRING_COMPARISONS:
            raise fail(self, f"unknown string comparison '{self.predicate.data}'")


@irdl_op_definition
class StringLengthOp(IRDLOperation):
    """Length in characters (Unicode code points), like pandas ``str.len``."""

    name = "df.str_len"
    operand = operand_def(StringType)
    result = result_def(IntegerType(64))
    traits = traits_def(Pure())

    def __init__(self, value: SSAValue):
        _init(self, operands=[value], result_types=[i64])


@irdl_op_definition
class StringLowerOp(IRDLOperation):
    name = "df.str_lower"
    operand = operand_def(StringType)
    result = result_def(StringType)
    traits = traits_def(Pure())

    def __init__(self, value: SSAValue):
        _init(self, operands=[value], result_types=[StringType()])


@irdl_op_definition
class StringUpperOp(IRDLOperation):
    name = "df.str_upper"
    operand = operand_def(StringType)
    result = result_def(StringType)
    traits = traits_def(Pure())

    def __init__(self, value: SSAValue):
        _init(self, operands=[value], result_types=[StringType()])


@irdl_op_definition
class StringStartsWithOp(IRDLOperation):
    name = "df.str_startswith"
    operand = operand_def(StringType)
    pattern = attr_def(StringAttr)
    result = result_def(IntegerType(1))
    traits = traits_def(Pure())

    def __init__(self, value: SSAValue, pattern: str):
        _init(self, operands=[value], attributes={"pattern": StringAttr(pattern)}, result_types=[i1])


@irdl_op_definition
class StringContainsOp(IRDLOperation):
    """Literal substring test (no regular expressions)."""

    name = "df.str_contains"
    operand = operand_def(StringType)
    pattern = attr_def(StringAttr)
    result = result_def(IntegerType(1))
    traits = traits_def(Pure())

    def __init__(self, value: SSAValue, pattern: str):
        _init(self, operands=[value], attributes={"pattern": StringAttr(pattern)}, result_types=[i1])


DataFrame = Dialect(
    "df",
    [
        ReadParquetOp,
        ReadCsvOp,
        ReadIpcOp,
        InputOp,
        WriteParquetOp,
        WriteCsvOp,
        WriteIpcOp,
        FilterOp,
        ProjectOp,
        MapOp,
        RenameOp,
        DropOp,
        JoinOp,
        ConcatOp,
        UnionOp,
        IntersectOp,
        DifferenceOp,
        DistinctOp,
        SortOp,
        HeadOp,
        GroupByAggOp,
        AggregateOp,
        WindowOp,
        ColumnOp,
        StringConstantOp,
        IsNullOp,
        FillNullOp,
        IsInOp,
        CastOp,
        StringCompareOp,
        StringLengthOp,
        StringLowerOp,
        StringUpperOp,
        StringStartsWithOp,
        StringContainsOp,
    ],
    [StringType, TableType],
)

use_fixed_accessors(DataFrame)  # quicker op.input / op.result / op.expr (see opgraph/ir_construct.py)

SOURCE_OPS = (ReadParquetOp, ReadCsvOp, ReadIpcOp, InputOp)
SINK_OPS = (WriteParquetOp, WriteCsvOp, WriteIpcOp)
