"""``projection-pushdown``: only the columns something needs are read and computed.

A backward analysis over each function body computes, for every table value, the columns
its consumers need: a sink (``df.write_*``), the function's return, a set operation
(``df.union``/``intersect``/``difference``), ``df.distinct`` without ``subset`` and any op the
pass does not know need every column; ``dl.to_tensor`` needs its ``columns``; the row-wise
and relational ops need what their own consumers need plus what they read (predicate,
keys, aggregated columns, window input, ...), mapped back through renames, join suffixes and
assignments. Then, forwards:

* ``df.read_parquet``/``read_ipc``/``read_csv`` get ``columns = [...]`` (in file order) when
  not every column is needed, and every op below gets its result type recomputed with its
  own schema inference, so all types stay consistent;
* ``df.map`` assignments and ``df.window`` columns nobody reads are not computed (the op
  disappears when nothing is left), and aggregates of ``df.groupby_agg``/``df.aggregate``
  nobody reads are dropped (one is kept so the op still has one);
* ``df.project``/``drop``/``rename`` lose the columns that no longer exist; a projection that
  became the identity, and a drop or rename with nothing left to do, disappear;
* the inputs of ``df.join`` and ``df.concat`` are narrowed with an inserted ``df.project``
  (located at the join/concat) when they carry columns the op does not need, so that join
  suffixes and concat schemas stay exactly what they were; so are the inputs of the other
  ops that move rows between ranks (``df.sort``, ``df.window``, ``df.distinct{subset}``), so
  unneeded columns are not shuffled.

A value never loses a column a consumer needs and never loses all columns (one is kept, so
row counts survive). Column order may change on the way (an assignment whose earlier value is
never read appends its column instead of replacing it in place); it is restored with a
``df.project`` where order matters: the inputs of set operations and ``df.concat``, and the
values consumed by sinks, the return or unknown ops, which keep their exact type, so the
function signature and everything written are unchanged.

Before::

    %0 = "df.read_parquet"() {path = "e.parquet"} : () -> !df.table<["a", "b", "s"], ...>
    %1 = "df.project"(%0) {columns = ["a"]}

After::

    %0 = "df.read_parquet"() {path = "e.parquet", columns = ["a"]} : () -> !df.table<["a"], ...>
    (the identity projection is gone; its uses take %0)
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, Operation, SSAValue
from xdsl.passes import ModulePass

from opgraph.dialects import dataframe as df
from opgraph.ir_construct import replace_all_uses, replace_value_with_new_type
from opgraph.dialects.upstream.vector_yield import YieldOp
from opgraph.dialects.walk import walk_ops
from opgraph.errors import PassError
from opgraph.passes._expr_regions import (
    body,
    function_blocks,
    join_origins,
    remove_dead_ops,
    value_columns,
    yielded,
)

_READS = (df.ReadParquetOp, df.ReadCsvOp, df.ReadIpcOp)


def _names(attr) -> list[str]:
    return [a.data for a in attr]


def _schema(value: SSAValue) -> df.TableType | None:
    t = value.type
    return t if type(t) is df.TableType else None  # (attribute classes are final)


def _region_columns(op: Operation) -> set[str]:
    return {inner.column.data for inner in walk_ops(op) if type(inner) is df.ColumnOp}  # (no subclasses)


def _kept_aggs(aggs: list[tuple[str, str, str]], needed: set[str]) -> list[tuple[str, str, str]]:
    kept = [a for a in aggs if a[0] in needed]
    return kept or aggs[:1]


# The op classes _operand_needs tells apart, in its order; _needs_kind gives the index of
# the first that ``type(op)`` is a subclass of (-1: none) - the isinstance chain's answer,
# found once per op class (isinstance against xDSL's ABCs is slow and every op asks).
_NEEDS_KINDS: tuple[tuple[type, ...], ...] = (
    (df.FilterOp,),
    (df.ProjectOp, df.DropOp, df.HeadOp),
    (df.SortOp,),
    (df.RenameOp,),
    (df.MapOp,),
    (df.WindowOp,),
    (df.DistinctOp,),
    (df.GroupByAggOp, df.AggregateOp),
    (df.JoinOp,),
    (df.ConcatOp,),
)
_needs_kinds: dict[type, int] = {}


def _needs_kind(cls: type) -> int:
    kind = _needs_kinds.get(cls)
    if kind is None:
        kind = _needs_kinds[cls] = next((i for i, group in enumerate(_NEEDS_KINDS) if issubclass(cls, group)), -1)
    return kind


# The op classes rewrite tells apart, in its order; _rewrite_kinds_of gives the indices
# of those ``type(op)`` is a subclass of (its isinstance tests' answers, once per class).
_REWRITE_KINDS: tuple[tuple[type, ...], ...] = (
    _READS,
    (df.ProjectOp,),
    (df.DropOp,),
    (df.RenameOp,),
    (df.MapOp,),
    (df.WindowOp,),
    (df.GroupByAggOp, df.AggregateOp),
    (df.JoinOp,),
    (df.ConcatOp, df.UnionOp, df.IntersectOp, df.DifferenceOp),
    (df.SortOp, df.WindowOp, df.DistinctOp),
    (df.FilterOp, df.HeadOp),
)
_rewrite_kinds: dict[type, frozenset[int]] = {}
# and those of _retype (first match, -1: none)
_RETYPE_KINDS: tuple[tuple[type, ...], ...] = ((df.FilterOp, df.SortOp, df.HeadOp, df.DistinctOp), (df.MapOp,))
_retype_kinds: dict[type, int] = {}


def _rewrite_kinds_of(cls: type) -> frozenset[int]:
    kinds = _rewrite_kinds[cls] = frozenset(i for i, group in enumerate(_REWRITE_KINDS) if issubclass(cls, group))
    return kinds


@dataclass
class _Narrowing:
    block: Block

    def __post_init__(self) -> None:
        self.needs: dict[tuple[Operation, int], set[str]] = {}
        self.required: dict[SSAValue, set[str]] = {}
        self.kept_names: dict[Operation, list[str]] = {}
        self.kept_aggs: dict[Operation, list[tuple[str, str, str]]] = {}
        self.original: dict[tuple[Operation, int], df.TableType] = {}  # operand types before

    # ---------------------------------------------------------------- backward
    def _required_of(self, value: SSAValue, schema: df.TableType) -> set[str]:
        names = schema.column_names
        out: set[str] = set()
        for use in value.uses:
            need = self.needs.get((use.operation, use.index))
            if need is None:
                return set(names)
            out |= need
        if not out and names:
            out = {names[0]}
        return out

    def analyse(self, ops: list[Operation]) -> None:
        for op in reversed(ops):
            for r in op.results:
                schema = _schema(r)
                if schema is not None:
                    self.required[r] = self._required_of(r, schema)
            self._operand_needs(op)

    def _need(self, op: Operation, index: int, names: set[str]) -> None:
        self.needs[(op, index)] = names

    def _operand_needs(self, op: Operation) -> None:
        if op.name == "dl.to_tensor":
            self._need(op, 0, set(_names(op.attributes["columns"])))  # type: ignore[arg-type]
            return
        if not op.name.startswith("df.") or not op.results:
            return  # sinks, return, unknown ops: every column (no entry)
        if type(op.results[0].type) is not df.TableType:  # (attribute classes are final)
            return
        needed = self.required[op.results[0]]
        kind = _needs_kind(type(op))
        if kind == 0:  # df.FilterOp
            self._need(op, 0, needed | _region_columns(op))
        elif kind == 1:  # df.ProjectOp | df.DropOp | df.HeadOp
            self._need(op, 0, set(needed))
        elif kind == 2:  # df.SortOp
            self._need(op, 0, needed | set(_names(op.by)))
        elif kind == 3:  # df.RenameOp
            back = dict(zip(_names(op.new_names), _names(op.old_names)))
            self._need(op, 0, {back.get(c, c) for c in needed})
        elif kind == 4:  # df.MapOp
            names = _names(op.names)
            block = body(op.expr)
            if block is None:
                self.kept_names[op] = names
                return
            kept = [n for n in names if n in needed]
            self.kept_names[op] = kept
            reads: set[str] = set()
            if len(kept) == len(names):
                reads = _region_columns(op)
            elif kept:
                deps = value_columns(block)
                if deps is None:  # captured values: keep every assignment
                    self.kept_names[op] = names
                    reads = _region_columns(op)
                else:
                    values = dict(zip(names, yielded(block)))
                    for n in kept:
                        reads |= deps[values[n]]
            self._need(op, 0, (needed - set(names)) | reads)
        elif kind == 5:  # df.WindowOp
            out = op.output.data
            if out in needed:
                self._need(op, 0, (needed - {out}) | {op.column.data})
            else:
                self._need(op, 0, set(needed))
        elif kind == 6:  # df.DistinctOp
            if op.subset is not None:
                self._need(op, 0, needed | set(_names(op.subset)))
        elif kind == 7:  # df.GroupByAggOp | df.AggregateOp
            kept = _kept_aggs(df.agg_tuples(op.aggs), needed)
            self.kept_aggs[op] = kept
            keys = set(_names(op.keys)) if isinstance(op, df.GroupByAggOp) else set()
            self._need(op, 0, keys | {c for _, c, _ in kept if c})
        elif kind == 8:  # df.JoinOp
            origin, clashes = join_origins(op)
            lneed, rneed = set(_names(op.left_on)), set(_names(op.right_on))
            for c in needed:
                side, src = origin[c]
                if side in ("left", "key"):
                    lneed.add(src)
                if side in ("right", "key"):
                    rneed.add(src)
            for n in clashes:  # keep both or neither, so the suffixes stay the same
                if n in lneed or n in rneed:
                    lneed.add(n)
                    rneed.add(n)
            self._need(op, 0, lneed)
            self._need(op, 1, rneed)
        elif kind == 9:  # df.ConcatOp
            self._need(op, 0, set(needed))
            self._need(op, 1, set(needed))
        # union/intersect/difference, distinct without subset: every column (no entry)

    # ----------------------------------------------------------------- forward
    def _retype(self, op: Operation, before: df.TableType | None = None) -> None:
        """Recomputes the result type from the (narrowed) operands with the op's own schema
        inference. Ops whose result schema is their input's, and maps (an assignment's type
        and nullability depend only on the columns it reads, which are kept), skip the
        region checks of a full ``expected_type``."""
        kind = _retype_kinds.get(type(op))
        if kind is None:
            kind = _retype_kinds[type(op)] = next(
                (i for i, group in enumerate(_RETYPE_KINDS) if issubclass(type(op), group)), -1
            )
        if kind == 0:  # df.FilterOp | df.SortOp | df.HeadOp | df.DistinctOp
            expected = op.operands[0].type
        elif kind == 1:  # df.MapOp
            schema = _schema(op.input)
            assert schema is not None and before is not None
            names = _names(op.names)
            expected = df.infer_assign(schema, names, [before.column(n) for n in names])  # type: ignore[misc]
        else:
            expected = op.expected_type()  # type: ignore[attr-defined]
        if op.results[0].type != expected:
            replace_value_with_new_type(op.results[0], expected)

    def _forward(self, op: Operation, value: SSAValue) -> None:
        """Removes ``op``, its uses taking ``value``."""
        replace_all_uses(op.results[0], value)
        self.block.erase_op(op)

    def _narrow_operand(self, op: Operation, index: int, order: list[str] | None = None) -> None:
        """Projects operand ``index`` of ``op`` on the columns ``op`` needs, in ``order`` (the
        operand's original column order) or else in its current order."""
        value = op.operands[index]
        schema = _schema(value)
        assert schema is not None
        need = self.needs.get((op, index))
        present = set(schema.column_names)
        cols = [c for c in (order or schema.column_names) if (need is None or c in need) and c in present]
        if cols == schema.column_names:
            return
        proj = df.ProjectOp(value, cols)
        proj.location = op.location
        self.block.insert_op_before(proj, op)
        op.operands[index] = proj.result

    def rewrite(self, ops: list[Operation]) -> None:
        for op in ops:
            kinds = _rewrite_kinds.get(type(op))
            if kinds is None:
                kinds = _rewrite_kinds_of(type(op))
            if 0 in kinds:  # a read
                self._rewrite_read(op)
            elif 1 in kinds:  # df.ProjectOp
                schema = _schema(op.input)
                assert schema is not None
                needed = self.required[op.result]
                cols = [c for c in _names(op.columns) if c in needed]
                if cols == schema.column_names:
                    self._forward(op, op.input)
                    continue
                if cols != _names(op.columns):
                    op.attributes["columns"] = df.str_array(cols)
                self._retype(op)
            elif 2 in kinds:  # df.DropOp
                schema = _schema(op.input)
                assert schema is not None
                present = set(schema.column_names)
                cols = [c for c in _names(op.columns) if c in present]
                if not cols:
                    self._forward(op, op.input)
                    continue
                op.attributes["columns"] = df.str_array(cols)
                self._retype(op)
            elif 3 in kinds:  # df.RenameOp
                schema = _schema(op.input)
                assert schema is not None
                present = set(schema.column_names)
                pairs = [(o, n) for o, n in zip(_names(op.old_names), _names(op.new_names)) if o in present]
                if not pairs:
                    self._forward(op, op.input)
                    continue
                op.attributes["old_names"] = df.str_array([o for o, _ in pairs])
                op.attributes["new_names"] = df.str_array([n for _, n in pairs])
                self._retype(op)
            elif 4 in kinds:  # df.MapOp
                before = _schema(op.result)
                if self._rewrite_map(op):
                    self._retype(op, before)
            elif 5 in kinds and op.output.data not in self.required[op.result]:  # df.WindowOp
                self._forward(op, op.input)
            elif 6 in kinds:  # df.GroupByAggOp | df.AggregateOp
                kept = self.kept_aggs.get(op)
                if kept is not None and kept != df.agg_tuples(op.aggs):
                    op.attributes["aggs"] = df.agg_array(kept)
                self._retype(op)
            elif 7 in kinds:  # df.JoinOp
                self._narrow_operand(op, 0)
                self._narrow_operand(op, 1)
                self._retype(op)
            elif 8 in kinds:  # df.ConcatOp | df.UnionOp | df.IntersectOp | df.DifferenceOp
                # both inputs in the same (original) column order
                order = self.original[(op, 0)].column_names
                self._narrow_operand(op, 0, order)
                self._narrow_operand(op, 1, order)
                self._retype(op)
            elif 9 in kinds:  # df.SortOp | df.WindowOp | df.DistinctOp
                # ops that move rows between ranks: carry only what is needed
                if (op, 0) in self.needs:
                    self._narrow_operand(op, 0)
                self._retype(op)
            elif 10 in kinds:  # df.FilterOp | df.HeadOp
                self._retype(op)

    def _rewrite_read(self, op: Operation) -> None:
        result = op.results[0]
        schema = _schema(result)
        assert schema is not None
        needed = self.required[result]
        kept = [c for c in schema.columns if c[0] in needed]
        if len(kept) == len(schema.columns):
            return
        op.attributes["columns"] = df.str_array([c[0] for c in kept])
        replace_value_with_new_type(result, df.table_of(kept))

    def _rewrite_map(self, op: df.MapOp) -> bool:
        """Drops unread assignments; False when the map was removed."""
        names = _names(op.names)
        kept = self.kept_names.get(op, names)
        if kept == names:
            return True
        if not kept:
            self._forward(op, op.input)
            return False
        block = body(op.expr)
        assert block is not None
        old = block.last_op
        assert isinstance(old, YieldOp)
        values = dict(zip(names, yielded(block)))
        new = YieldOp([values[n] for n in kept])
        new.location = old.location
        block.insert_op_before(new, old)
        block.erase_op(old)
        remove_dead_ops(block)
        op.attributes["names"] = df.str_array(kept)
        return True


def _exact(op: Operation) -> bool:
    """Consumers whose table operands must keep their exact type (sinks, the return, ops the
    pass does not know)."""
    if op.name.startswith("df."):
        return isinstance(op, df.SINK_OPS)
    return op.name != "dl.to_tensor"


def narrow_block(block: Block) -> None:
    ops = list(block.ops)
    narrowing = _Narrowing(block)
    exact: list[tuple[Operation, int, df.TableType]] = []
    for op in ops:
        for i, v in enumerate(op.operands):
            if isinstance(v.type, df.TableType):
                narrowing.original[(op, i)] = v.type
                if _exact(op):
                    exact.append((op, i, v.type))
    narrowing.analyse(ops)
    narrowing.rewrite(ops)
    # Every column of these operands is needed, so they have them all, but a column that an
    # unread assignment used to hold in place is now appended by its last assignment:
    # restore the original order.
    for op, index, t in exact:
        if op.operands[index].type != t:
            narrowing.needs.pop((op, index), None)
            narrowing._narrow_operand(op, index, t.column_names)
        if op.operands[index].type != t:  # pragma: no cover - a bug in the rules above
            raise PassError(f"projection-pushdown changed the input type of '{op.name}' (internal error)")


@dataclass(frozen=True)
class ProjectionPushdown(ModulePass):
    """Reads only the needed columns and drops computations nobody reads."""

    name = "projection-pushdown"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for block in function_blocks(op):
            narrow_block(block)
