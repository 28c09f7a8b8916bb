"""``fuse-expressions``: merges adjacent row-wise ops into one op with one expression region.

Rules (each fires only when the lower op's result feeds nothing but the upper op, and both
are in the same block):

* ``df.filter`` over ``df.filter`` -> one filter whose predicate is ``p1 & p2`` (not when
  ``p2`` holds an op that may fail at run time: it would then be evaluated on rows ``p1``
  removed);
* ``df.map`` over ``df.map`` -> one map: the second map's reads of columns the first one
  assigns are replaced by the first one's expressions (computed once), assignments
  overwritten by the second map are dropped, the output schema is identical;
* ``df.project`` over ``df.map`` -> the map loses the assignments the projection drops (the
  map disappears when none is left);
* ``df.project`` / ``df.drop`` over ``df.project`` / ``df.drop`` -> one op.

A filter over a map stays (different ops). Fusion happens in place: the lower (first) op
absorbs the upper one's expression ops and keeps its location; every expression op keeps its
own location.

Before::

    %1 = "df.map"(%0) ({ c = a * 2 }) {names = ["c"]}           loc("etl.py":8:9)
    %2 = "df.map"(%1) ({ d = c + 1 }) {names = ["d"]}           loc("etl.py":9:9)

After::

    %1 = "df.map"(%0) ({ c = a * 2; d = (a * 2) + 1 }) {names = ["c", "d"]} loc("etl.py":8:9)
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    RewritePattern,
    op_type_rewrite_pattern,
)

from opgraph.dialects import dataframe as df
from opgraph.ir_construct import append_op, replace_all_uses, replace_value_with_new_type
from opgraph.dialects.upstream.vector_yield import YieldOp
from opgraph.passes._expr_regions import (
    body,
    conjoin,
    erase_if_dead,
    is_closed,
    may_trap,
    rewrite_top_level,
    yielded,
)


def _names(attr) -> list[str]:
    return [a.data for a in attr]


def _single_use_producer(value: SSAValue, user: Operation, kind) -> Operation | None:
    owner = value.owner
    if isinstance(owner, kind) and owner.parent is user.parent and value.has_one_use():
        return owner
    return None


class _Blocks:
    """Per-run caches: expression blocks known to be closed (fusion keeps them closed) and
    the ``df.col`` reads of each block, so fusing a chain of n maps costs O(total size)."""

    def __init__(self) -> None:
        self.closed: set[Block] = set()
        self.columns: dict[Block, dict[tuple[str, Attribute], SSAValue]] = {}

    def closed_body(self, region: Region) -> Block | None:
        block = body(region)
        if block is None:
            return None
        if block not in self.closed:
            if not is_closed(block):
                return None
            self.closed.add(block)
        return block

    def column_reads(self, block: Block) -> dict[tuple[str, Attribute], SSAValue]:
        cols = self.columns.get(block)
        if cols is None:
            cols = self.columns[block] = {
                (op.column.data, op.result.type): op.result for op in block.ops if isinstance(op, df.ColumnOp)
            }
        return cols

    def absorb(self, into: Block, source: Block, substitute: dict[str, SSAValue]) -> dict[SSAValue, SSAValue]:
        """Moves the expression ops of ``source`` (not its yield) to the end of ``into`` (whose
        yield must already be gone). Column reads named in ``substitute`` are replaced by those
        values, reads of a column ``into`` already reads share its ``df.col``. Returns the
        replacements made for values of ``source`` (other values keep their identity)."""
        cols = self.column_reads(into)
        replaced: dict[SSAValue, SSAValue] = {}
        for op in _expression_ops(source):
            if type(op) is df.ColumnOp:  # (no subclasses: the isinstance test, cheaper)
                key = (op.column.data, op.result.type)
                target = substitute.get(key[0])
                if target is None:
                    target = cols.get(key)
                    if target is not None and target.owner.parent is not into:  # type: ignore[union-attr]
                        target = None  # erased since it was cached
                if target is not None:
                    replace_all_uses(op.result, target)
                    replaced[op.result] = target
                    source.erase_op(op)
                    continue
                cols[key] = op.result
            op.detach()
            append_op(into, op)  # = into.add_op(op)
        self.columns.pop(source, None)
        return replaced


def _expression_ops(block: Block) -> list[Operation]:
    return [op for op in block.ops if op is not block.last_op]


def _set_yield(block: Block, values: list[SSAValue], location: Attribute) -> None:
    ret = YieldOp(values)
    ret.location = location
    block.add_op(ret)


def _replace_by(rewriter: PatternRewriter, op: Operation, value: SSAValue) -> None:
    """``rewriter.replace(op, [], [value])`` for a one-result op: its uses relinked by
    ``replace_all_uses`` (the same IR, quicker than the rewriter's generic path), then it
    is erased through the rewriter."""
    replace_all_uses(op.results[0], value)
    rewriter.erase(op)


class FuseFilters(RewritePattern):
    def __init__(self, blocks: _Blocks):
        self.blocks = blocks

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: df.FilterOp, rewriter: PatternRewriter) -> None:
        first = _single_use_producer(op.input, op, df.FilterOp)
        if first is None:
            return
        assert isinstance(first, df.FilterOp)
        b1, b2 = self.blocks.closed_body(first.predicate), self.blocks.closed_body(op.predicate)
        if b1 is None or b2 is None or may_trap(b2.ops):
            return
        p1, p2 = yielded(b1)[0], yielded(b2)[0]
        location = b2.last_op.location  # type: ignore[union-attr]
        b1.erase_op(b1.last_op)  # type: ignore[arg-type]
        p2 = self.blocks.absorb(b1, b2, {}).get(p2, p2)
        result = conjoin([p1, p2], b1, location)
        _set_yield(b1, [result], location)
        rewriter.handle_operation_modification(first)
        _replace_by(rewriter, op, first.result)


class FuseMaps(RewritePattern):
    def __init__(self, blocks: _Blocks):
        self.blocks = blocks

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: df.MapOp, rewriter: PatternRewriter) -> None:
        first = _single_use_producer(op.input, op, df.MapOp)
        if first is None:
            return
        assert isinstance(first, df.MapOp)
        b1, b2 = self.blocks.closed_body(first.expr), self.blocks.closed_body(op.expr)
        if b1 is None or b2 is None:
            return
        names1, names2 = _names(first.names), _names(op.names)
        values: dict[str, SSAValue] = dict(zip(names1, yielded(b1)))
        results2 = yielded(b2)
        location = b2.last_op.location  # type: ignore[union-attr]
        # b1's yield is detached while b2's ops are appended, then put back with the fused
        # values and b2's yield location: the IR (and each value's use order) is what erasing
        # it and building a new yield gives, for less work
        ret = b1.last_op
        assert isinstance(ret, YieldOp)
        b1.detach_op(ret)
        replaced = self.blocks.absorb(b1, b2, dict(values))
        overwritten = [values[n] for n in names2 if n in values]
        values.update({n: replaced.get(v, v) for n, v in zip(names2, results2)})
        names = names1 + [n for n in names2 if n not in names1]
        ret.operands = [values[n] for n in names]
        ret.location = location
        b1.add_op(ret)
        erase_if_dead(overwritten)
        # same output as the second map: existing columns are replaced in place, new ones
        # appended in first-assignment order, nullability computed from the same inputs
        first.attributes["names"] = df.str_array(names)
        replace_value_with_new_type(first.result, op.result.type)
        rewriter.handle_operation_modification(first)
        _replace_by(rewriter, op, first.result)


class PruneMapUnderProject(RewritePattern):
    """``project(map(x))``: assignments the projection drops are not computed."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: df.ProjectOp, rewriter: PatternRewriter) -> None:
        m = _single_use_producer(op.input, op, df.MapOp)
        if m is None:
            return
        assert isinstance(m, df.MapOp)
        keep_cols = set(_names(op.columns))
        names = _names(m.names)
        kept = [n for n in names if n in keep_cols]
        if len(kept) == len(names):
            return
        if not kept:
            rewriter.replace(m, [], [m.input])
            return
        block = body(m.expr)
        if block is None:
            return
        by_name = dict(zip(names, yielded(block)))
        old = block.last_op
        location = old.location  # type: ignore[union-attr]
        block.erase_op(old)  # type: ignore[arg-type]
        _set_yield(block, [by_name[n] for n in kept], location)
        erase_if_dead(by_name[n] for n in names if n not in keep_cols)
        schema, before = m.input.type, m.result.type
        assert isinstance(schema, df.TableType) and isinstance(before, df.TableType)
        # an assignment's type and nullability depend on its expression only: keep them
        result = df.infer_assign(schema, kept, [before.column(n) for n in kept])  # type: ignore[misc]
        m.attributes["names"] = df.str_array(kept)
        replace_value_with_new_type(m.result, result)
        rewriter.handle_operation_modification(m)


class MergeColumnSelections(RewritePattern):
    """``project``/``drop`` over ``project``/``drop`` -> one ``project`` or ``drop``."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: df.ProjectOp | df.DropOp, rewriter: PatternRewriter) -> None:
        lower = _single_use_producer(op.input, op, df.ProjectOp | df.DropOp)
        if lower is None:
            return
        source = lower.operands[0]
        if isinstance(op, df.ProjectOp):
            # project(project(x)) and project(drop(x)): every column named exists in x
            new: Operation = df.ProjectOp(source, _names(op.columns))
        elif isinstance(lower, df.ProjectOp):
            dropped = set(_names(op.columns))
            new = df.ProjectOp(source, [c for c in _names(lower.columns) if c not in dropped])
        else:
            assert isinstance(lower, df.DropOp)
            new = df.DropOp(source, _names(lower.columns) + _names(op.columns))
        if new.results[0].type != op.results[0].type:  # pragma: no cover - cannot happen
            new.erase()  # drop its use of the source
            return
        new.location = lower.location
        rewriter.replace(op, new)
        rewriter.erase(lower)


@dataclass(frozen=True)
class FuseExpressions(ModulePass):
    """Fuses adjacent filters, adjacent maps, and projections/drops into one op."""

    name = "fuse-expressions"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        blocks = _Blocks()
        patterns = GreedyRewritePatternApplier(
            [FuseFilters(blocks), FuseMaps(blocks), PruneMapUnderProject(), MergeColumnSelections()]
        )
        rewrite_top_level(op, patterns, kinds=[df.FilterOp, df.MapOp, df.ProjectOp, df.DropOp])
