"""Helpers shared by the logical optimisation passes (mostly for expression regions).

An expression region (the predicate of ``df.filter``, the assignments of ``df.map``) is one
block without arguments holding scalar ops (``df.col`` reads, ``arith``/``math``/``df``
scalar ops) and ending in ``vector.yield``. These helpers slice, clone, conjoin and clean
such regions; they never touch table ops.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from xdsl.dialects import arith, func
from xdsl.dialects.builtin import IntegerAttr, IntegerType, ModuleOp
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue
from xdsl.pattern_rewriter import (
    PatternRewriter,
    PatternRewriterListener,
    RewritePattern,
)
from xdsl.rewriter import InsertPoint
from xdsl.traits import is_side_effect_free

from opgraph.dialects import dataframe as df
from opgraph.dialects.upstream.vector_yield import YieldOp


class ReusedRewriter(PatternRewriter):
    """One ``PatternRewriter`` pointed at op after op: ``at(op)`` gives the state
    ``PatternRewriter(op)`` starts in (matched op, insertion point before it, no action
    done). Drivers that offer every op of a large pipeline to a pattern used to build a
    rewriter and its listener lists per op - a few percent of compile time, though nearly
    every pattern declines the op without touching the rewriter."""

    def __init__(self) -> None:
        PatternRewriterListener.__init__(self)
        self._current_operation = None
        self.insertion_point = None  # type: ignore[assignment]  (set by at())
        self._name_hint = None

    def at(self, op: Operation) -> ReusedRewriter:
        self._current_operation = op
        self.insertion_point = InsertPoint.before(op)
        self._name_hint = None
        self.has_done_action = False
        return self


def body(region: Region) -> Block | None:
    """The single block of an expression region ending in ``vector.yield`` (None otherwise)."""
    # (the linked blocks read directly: region.blocks builds a view, and its len() walks it)
    block = region.first_block
    if block is None or block.next_block is not None:
        return None  # not exactly one block
    if block.args or type(block.last_op) is not YieldOp:  # (YieldOp has no subclasses)
        return None
    return block


def value_columns(block: Block) -> dict[SSAValue, frozenset[str]] | None:
    """For every value of the block, the columns it depends on; None when an op of the block
    uses a value defined outside it (a captured value) or has regions of its own, in which
    case the region is left alone (it cannot be moved or cloned freely)."""
    deps: dict[SSAValue, frozenset[str]] = {}
    empty: frozenset[str] = frozenset()
    for op in block.ops:
        if op.regions:
            return None
        if isinstance(op, df.ColumnOp):
            deps[op.result] = frozenset((op.column.data,))
            continue
        acc = empty
        for v in op.operands:
            d = deps.get(v)
            if d is None:
                return None
            if d:
                acc = acc | d if acc else d
        for r in op.results:
            deps[r] = acc
    return deps


def is_closed(block: Block) -> bool:
    """Whether every operand of the block's ops is defined inside the block (no captures), so
    the region can be moved or cloned anywhere: ``value_columns(block) is not None``, without
    building the column sets (no op with regions, every operand a result of an earlier op)."""
    defined: set[int] = set()  # ids: SSA values hash by identity through a Python __hash__
    for op in block.ops:
        if op.regions:
            return False
        for v in op._operands:  # the operand tuple (.operands wraps it)
            if id(v) not in defined:
                return False
        for r in op.results:
            defined.add(id(r))
    return True


def yielded(block: Block) -> list[SSAValue]:
    last = block.last_op
    assert isinstance(last, YieldOp)
    return list(last._operands)  # = last.values (its one variadic operand group)


def slice_ops(block: Block, roots: Iterable[SSAValue]) -> list[Operation]:
    """The ops of ``block`` that ``roots`` depend on, in block order."""
    needed: set[Operation] = set()
    stack = [v.owner for v in roots]
    while stack:
        op = stack.pop()
        if not isinstance(op, Operation) or op in needed or op.parent_block() is not block:
            continue
        needed.add(op)
        stack.extend(v.owner for v in op.operands)
    return [op for op in block.ops if op in needed]


def clone_into(
    ops: Sequence[Operation],
    dest: Block,
    value_map: dict[SSAValue, SSAValue],
    rename: Mapping[str, str] | None = None,
) -> None:
    """Clones ``ops`` (in order) at the end of ``dest``, recording old -> new values in
    ``value_map``; column reads are renamed with ``rename``, and reads of the same column and
    type share one ``df.col``. Every clone keeps its op's location."""
    columns: dict[tuple[str, Attribute], SSAValue] = {}
    for op in ops:
        if isinstance(op, df.ColumnOp):
            name = op.column.data
            name = rename.get(name, name) if rename else name
            key = (name, op.result.type)
            if key in columns:
                value_map[op.result] = columns[key]
                continue
            new = df.ColumnOp(name, op.result.type)
            new.location = op.location
            dest.add_op(new)
            value_map[op.result] = columns[key] = new.result
            continue
        new = op.clone(value_mapper=value_map)
        new.location = op.location
        dest.add_op(new)
        for old, fresh in zip(op.results, new.results):
            value_map[old] = fresh


def conjuncts(value: SSAValue) -> list[SSAValue]:
    """The operands of a tree of ``arith.andi`` on ``i1`` (the value itself if it is not one),
    left to right, without duplicates."""
    out: list[SSAValue] = []
    seen: set[SSAValue] = set()

    def visit(v: SSAValue) -> None:
        owner = v.owner
        if isinstance(owner, arith.AndIOp) and df.is_bool(v.type):
            visit(owner.lhs)
            visit(owner.rhs)
        elif v not in seen:
            seen.add(v)
            out.append(v)

    visit(value)
    return out


def conjoin(values: Sequence[SSAValue], dest: Block, location: Attribute) -> SSAValue:
    """``values[0] & values[1] & ...`` built at the end of ``dest`` (left-associated)."""
    acc = values[0]
    for v in values[1:]:
        op = arith.AndIOp(acc, v)
        op.location = location
        dest.add_op(op)
        acc = op.result
    return acc


def predicate_region(
    block: Block,
    roots: Sequence[SSAValue],
    location: Attribute,
    rename: Mapping[str, str] | None = None,
) -> Region:
    """A new predicate region computing the conjunction of ``roots`` (values of ``block``),
    with column reads renamed by ``rename``; the yield takes ``location``."""
    dest = Block()
    value_map: dict[SSAValue, SSAValue] = {}
    clone_into(slice_ops(block, roots), dest, value_map, rename=rename)
    result = conjoin([value_map[r] for r in roots], dest, location)
    ret = YieldOp([result])
    ret.location = location
    dest.add_op(ret)
    return Region(dest)


def remove_dead_ops(block: Block) -> bool:
    """Erases side-effect-free ops whose results are unused (last to first); True if any."""
    changed = False
    for op in reversed(list(block.ops)):
        if op is block.last_op:
            continue
        if op.results and all(not r.uses for r in op.results) and is_side_effect_free(op):
            block.erase_op(op)
            changed = True
    return changed


def erase_if_dead(values: Iterable[SSAValue]) -> None:
    """Erases the side-effect-free ops defining ``values`` that have no uses left, and then
    their operands' ops that become unused (cost proportional to what is removed)."""
    stack = [v.owner for v in values]
    while stack:
        op = stack.pop()
        if not isinstance(op, Operation) or op.parent is None or isinstance(op, YieldOp):
            continue
        if any(r.uses for r in op.results) or not is_side_effect_free(op):
            continue
        operands = [v.owner for v in op.operands]
        op.parent.erase_op(op)
        stack.extend(operands)


# Ops that can fail at run time for some inputs (division by zero, INT_MIN / -1, negative
# integer powers, lossy or unparsable casts). Moving or fusing a predicate so that it is
# evaluated on rows it was not evaluated on before could turn a working pipeline into a
# failing one, so predicates holding these ops are not moved where that would happen.
_DIVISIONS = (arith.DivSIOp, arith.DivUIOp, arith.FloorDivSIOp, arith.CeilDivSIOp, arith.CeilDivUIOp, arith.RemSIOp, arith.RemUIOp)


def constant_int(value: SSAValue) -> int | None:
    owner = value.owner
    attr = owner.value if isinstance(owner, arith.ConstantOp) else None
    if isinstance(attr, IntegerAttr) and isinstance(attr.type, IntegerType):
        return attr.value.data
    return None


def may_trap(ops: Iterable[Operation]) -> bool:
    for op in ops:
        if isinstance(op, _DIVISIONS):
            divisor = constant_int(op.operands[1])
            if divisor is None or divisor in (0, -1):
                return True
        elif op.name == "math.ipowi":
            exponent = constant_int(op.operands[1])
            if exponent is None or exponent < 0:
                return True
        elif isinstance(op, arith.FPToSIOp | arith.FPToUIOp | arith.TruncIOp | df.CastOp):
            return True
    return False


def join_origins(op: df.JoinOp) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Where each output column of a join comes from: output name -> (``left``/``right``/
    ``key``, input column), ``key`` being an ``on=`` key (same name on both sides, output
    once); and the names present on both sides that the suffixes tell apart."""
    left, right = op.left.type, op.right.type
    assert isinstance(left, df.TableType) and isinstance(right, df.TableType)
    lk, rk = _names(op.left_on), _names(op.right_on)
    sfx = _names(op.suffixes)
    merged = {a for a, b in zip(lk, rk) if a == b}
    right_cols = [n for n in right.column_names if n not in merged]
    right_names, left_names = set(right_cols), set(left.column_names)
    origin: dict[str, tuple[str, str]] = {}
    clashes = []
    for n in left.column_names:
        if n in merged:
            origin[n] = ("key", n)
        elif n in right_names:
            origin[n + sfx[0]] = ("left", n)
            clashes.append(n)
        else:
            origin[n] = ("left", n)
    for n in right_cols:
        origin[n + sfx[1] if n in left_names else n] = ("right", n)
    return origin, clashes


def _names(attr) -> list[str]:
    return [a.data for a in attr]


# ------------------------------------------------------------------------- driving


def function_blocks(module: ModuleOp) -> list[Block]:
    """The body blocks of the module's functions (where the dataflow ops live)."""
    out: list[Block] = []
    for op in module.ops:
        if isinstance(op, func.FuncOp):
            out.extend(op.body.blocks)
    return out


def rewrite_top_level(module: ModuleOp, pattern: RewritePattern, kinds: Iterable[type[Operation]] | None = None) -> None:
    """Applies ``pattern`` to the top-level ops of every function body (only to ops of exactly
    the types in ``kinds`` when given), in block order; ops a rewrite inserts into that block
    are visited right after it.

    A light driver for xDSL patterns: ``PatternRewriteWalker`` visits every nested op too
    (each expression op of every filter/map) and dominated compile time on large pipelines.
    """
    for block in function_blocks(module):
        inserted: list[Operation] = []
        listener = PatternRewriterListener()
        listener.operation_insertion_handler.append(inserted.append)
        worklist = list(block.ops)
        worklist.reverse()
        wanted = frozenset(kinds) if kinds is not None else None
        rewriter = ReusedRewriter()
        rewriter.extend_from_listener(listener)
        while worklist:
            op = worklist.pop()
            if op.parent is not block:
                continue  # erased (or moved) by an earlier rewrite
            if wanted is not None and type(op) not in wanted:
                continue
            pattern.match_and_rewrite(op, rewriter.at(op))
            if inserted:
                worklist.extend(reversed(inserted))
                inserted.clear()
