"""``predicate-pushdown``: moves filters towards the sources so fewer rows flow through the graph.

A filter's predicate is split into its ``&`` conjuncts and each conjunct moves past the op
below it as far as it may; conjuncts that must stay keep the original filter (same source
location; the moved filters carry it too, and every expression op keeps its own location).

Before::

    %m = "df.map"(%r) ({ ... "vector.yield"(%c) }) {names = ["c"]}
    %f = "df.filter"(%m) ({ a > 1 & c < 10 })           loc("etl.py":9:9)

After::

    %f = "df.filter"(%r) ({ a > 1 })                      loc("etl.py":9:9)
    %m = "df.map"(%f) ({ ... }) {names = ["c"]}
    %g = "df.filter"(%m) ({ c < 10 })                     loc("etl.py":9:9)

A conjunct moves below an op ``P`` only when ``P``'s result feeds nothing but the filter (so no
other consumer sees fewer rows), and:

* ``df.project``, ``df.drop``, ``df.sort`` (stable: order of the kept rows is unchanged),
  ``df.distinct`` without ``subset`` (equal rows give equal predicate values): always;
* ``df.rename``: always, column reads renamed back to the input names;
* ``df.map``: when the conjunct reads no column the map assigns;
* ``df.distinct{subset}`` / ``df.groupby_agg``: when it reads only subset / key columns
  (whole groups are kept or dropped, so the surviving representative is the same);
* ``df.join``: into the side that owns every column it reads (reads renamed back through
  the suffixes): inner join either side; left join only the left side; right join only
  the right side; outer join never. A conjunct reading only ``on=`` key columns goes into
  every side allowed whose key column has exactly the output key's type, for float keys only
  into the side whose key values the join outputs (the left one of inner and left joins):
  elsewhere key matching implies equal values only for non-float keys (``-0.0 == 0.0``);
* ``df.concat`` and ``df.union``: into both inputs (a row is in the result iff it is in an
  input); ``df.intersect``: into both inputs; ``df.difference``: into the left input only
  (``filter(a - b) = filter(a) - b``; filtering ``b`` is a pure cost question and skipped);
* other filters are stepped over (filters commute) when the conjunct then gets past a
  non-filter op below them.

Never past ``df.head`` or ``df.window`` (both depend on which rows precede), ``df.aggregate``,
outer joins, sources or unknown ops. A conjunct holding an op that may fail at run time
(integer division by a non-constant, lossy or string casts, ...) is not moved where it would
be evaluated on rows it was not evaluated on before (below other filters, into inner joins,
intersections and differences). Each conjunct is moved once, straight to the lowest place it may
go (a branch per input of joins and set ops); conjuncts of one filter that end at the same
place form one new filter there. ``fuse-expressions`` later merges adjacent filters.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriter,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.rewriter import InsertPoint

from opgraph.dialects import dataframe as df
from opgraph.passes._expr_regions import (
    body,
    conjuncts,
    join_origins,
    may_trap,
    predicate_region,
    rewrite_top_level,
    slice_ops,
    value_columns,
    yielded,
)

Route = tuple[int, dict[str, str]]
"""Where a conjunct may go: the operand index of the op below, and the column renames."""


def _names(attr) -> list[str]:
    return [a.data for a in attr]


def _join_routes(op: df.JoinOp, cols: set[str], traps: bool) -> list[Route]:
    how = op.how.data
    if how == "outer" or (how == "inner" and traps):
        return []
    left, right, result = op.left.type, op.right.type, op.result.type
    assert isinstance(left, df.TableType) and isinstance(right, df.TableType) and isinstance(result, df.TableType)
    origin, _ = join_origins(op)

    allowed = {"inner": ("left", "right"), "left": ("left",), "right": ("right",)}[how]
    # the side whose key values the join outputs: the left one for inner and left joins;
    # right joins output the left value when matched, else the right one (coalesce)
    value_side = None if how == "right" else "left"
    routes: list[Route] = []
    for index, side in enumerate(("left", "right")):
        if side not in allowed:
            continue
        schema = left if side == "left" else right
        rename: dict[str, str] = {}
        ok = True
        for c in cols:
            found = origin.get(c)
            if found is None:
                ok = False
                break
            kind, src = found
            if kind == "key":
                out_t = result.column(c)
                in_t = schema.column(src)
                if out_t is None or in_t is None or out_t[0] != in_t[0]:
                    ok = False
                    break
                if side != value_side and df.is_float(in_t[0]):
                    ok = False
                    break
            elif kind != side:
                ok = False
                break
            if src != c:
                rename[c] = src
        if ok:
            routes.append((index, rename))
    return routes


def routes_past(op: Operation, cols: set[str], traps: bool) -> list[Route]:
    """Where a conjunct reading ``cols`` (``traps``: it may fail at run time) may move when
    it sits right above ``op``; empty if it must stay."""
    if isinstance(op, df.ProjectOp | df.DropOp | df.SortOp):
        return [(0, {})]
    if isinstance(op, df.DistinctOp):
        if op.subset is None or cols <= set(_names(op.subset)):
            return [(0, {})]
        return []
    if isinstance(op, df.GroupByAggOp):
        return [(0, {})] if cols <= set(_names(op.keys)) else []
    if isinstance(op, df.RenameOp):
        back = dict(zip(_names(op.new_names), _names(op.old_names)))
        return [(0, {c: back[c] for c in cols if c in back})]
    if isinstance(op, df.MapOp):
        return [(0, {})] if not cols & set(_names(op.names)) else []
    if isinstance(op, df.JoinOp):
        return _join_routes(op, cols, traps)
    if isinstance(op, df.ConcatOp | df.UnionOp):
        return [(0, {}), (1, {})]
    if isinstance(op, df.IntersectOp):
        return [] if traps else [(0, {}), (1, {})]
    if isinstance(op, df.DifferenceOp):
        return [] if traps else [(0, {})]
    return []


def _sole_use_in_block(value: SSAValue, block: Block | None) -> Operation | None:
    """The producer of ``value`` when it is an op of ``block`` whose result has one use."""
    owner = value.owner
    if block is None or not isinstance(owner, Operation) or owner.parent is not block:
        return None
    return owner if value.has_one_use() else None


Edge = tuple[Operation, int]
"""A place for a filter: operand ``index`` of an op (the filter goes in between)."""


def destinations(start: Edge, names: dict[str, str], traps: bool) -> list[tuple[Edge, dict[str, str]]]:
    """Where a conjunct sitting on ``start`` ends up, with its column renames (original name
    -> name at that place). Filters on the way are stepped over (filters commute) when the
    conjunct cannot fail at run time and gets past a non-filter op below them."""
    user, index = start
    block = user.parent
    value = user.operands[index]
    while True:
        producer = _sole_use_in_block(value, block)
        if producer is None:
            return [(start, names)]
        if not isinstance(producer, df.FilterOp):
            break
        if traps:
            return [(start, names)]
        value = producer.input
    routes = routes_past(producer, set(names.values()), traps)
    if not routes:
        return [(start, names)]
    out: list[tuple[Edge, dict[str, str]]] = []
    for operand, rename in routes:
        renamed = {orig: rename.get(cur, cur) for orig, cur in names.items()} if rename else names
        out.extend(destinations((producer, operand), renamed, traps))
    return out


class PushFilterDown(RewritePattern):
    """Moves each conjunct of a filter to the lowest place it may go (see the module doc)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: df.FilterOp, rewriter: PatternRewriter) -> None:
        block = body(op.predicate)
        if block is None or op.parent is None:
            return
        deps = value_columns(block)
        if deps is None:
            return
        roots = conjuncts(yielded(block)[0])
        risky = may_trap(block.ops)
        # destination edge -> (conjuncts, renames); edges are ordered by first appearance
        placed: dict[Edge, tuple[list[SSAValue], dict[str, str]]] = {}
        remaining: list[SSAValue] = []
        for root in roots:
            cols = deps[root]
            traps = risky and may_trap(slice_ops(block, [root]))
            found = destinations((op, 0), {c: c for c in cols}, traps)
            for edge, names in found:
                if edge == (op, 0):
                    remaining.append(root)
                    continue
                roots_here, renames = placed.setdefault(edge, ([], {}))
                roots_here.append(root)
                renames.update({o: n for o, n in names.items() if o != n})
        if not placed:
            return
        location = block.last_op.location  # type: ignore[union-attr]
        for (user, index), (roots_here, renames) in placed.items():
            new = df.FilterOp(user.operands[index], predicate_region(block, roots_here, location, renames))
            new.location = op.location
            rewriter.insert(new, InsertPoint.before(user))
            user.operands[index] = new.result
            rewriter.handle_operation_modification(user)
        if not remaining:
            rewriter.replace(op, [], [op.input])
            return
        rest = df.FilterOp(op.input, predicate_region(block, remaining, location))
        rest.location = op.location
        rewriter.replace(op, rest)


@dataclass(frozen=True)
class PredicatePushdown(ModulePass):
    """Moves filter conjuncts below maps, projections, renames, sorts, joins and set ops."""

    name = "predicate-pushdown"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        rewrite_top_level(op, PushFilterDown(), kinds=[df.FilterOp])
