"""``lower-to-islands``: every top-level dataflow op of a function becomes its own island.

Before (``df`` ops on tables, each with the user's location)::

    %0 = "df.read_parquet"() {path = "e.parquet"} : () -> !df.table<...>
    %1 = "df.filter"(%0) ({ ... }) : (!df.table<...>) -> !df.table<...>
    "df.write_parquet"(%1) {path = "out"} : (!df.table<...>) -> ()
    "func.return"(%1) : (!df.table<...>) -> ()

After (``async.execute`` islands linked by ``!async.value``/``!async.token``)::

    %0, %1 = "async.execute"() <{operandSegmentSizes = array<i32: 0, 0>}> ({
      %2 = "df.read_parquet"() {path = "e.parquet"} : () -> !df.table<...>
      "async.yield"(%2) : (!df.table<...>) -> ()
    }) {taskgraph.island = "i0_read_parquet", taskgraph.ranks = 1 : i64,
        taskgraph.device = "cpu", taskgraph.pattern = "partitioned_io"}
       : () -> (!async.token, !async.value<!df.table<...>>)
    %3, %4 = "async.execute"(%1) <{operandSegmentSizes = array<i32: 0, 1>}> ({
    ^bb0(%5 : !df.table<...>):
      %6 = "df.filter"(%5) ({ ... }) : ...
      "async.yield"(%6) : (!df.table<...>) -> ()
    }) {taskgraph.island = "i1_filter", ...} : (!async.value<...>) -> (!async.token, !async.value<...>)
    %7 = "async.execute"(%4) ... {taskgraph.island = "i2_write_parquet", ...}   // sink: token only
    %8 = "async.await"(%4) : (!async.value<...>) -> !df.table<...>
    "async.await"(%7) : (!async.token) -> ()
    "func.return"(%8) : (!df.table<...>) -> ()

Rules:

* a *dataflow op* is a top-level op of a function body (not the terminator, not ``async``)
  that belongs to ``df``/``dl``/``comm``/``taskgraph`` or has a table/tensor operand or
  result. Expression ops nested in its regions move with it. Each op keeps its location; the
  island, its ``async.yield`` take the op's location.
* values produced by earlier islands are passed as ``!async.value<T>`` body operands (block
  arguments of type ``T``); other captured values stay captured, except side-effect-free
  scalar helper ops (e.g. a top-level ``arith.constant``) which are cloned into the island.
* side effects are ordered with token dependencies: an island whose ops may write (unknown
  effects count as writes) waits for every earlier island with effects, a read-only island
  for every earlier writing island (only those not already reached through its data
  inputs). Side-effect-free islands get no token dependencies.
* uses outside islands (the function's return) get ``async.await`` of the value; islands
  nobody consumes or awaits (sinks) are awaited by token before the terminator.

* islands take ``taskgraph.ranks``/``taskgraph.device`` from the op's annotations
  (CONVENTIONS #3) when present, else the pass options; ``taskgraph.pattern`` from the op's
  annotation (hyphens become underscores) or ``patterns.pattern_of``; an annotated
  ``taskgraph.algorithm``, ``taskgraph.cost`` and ``taskgraph.bytes_moved`` are summarised on
  the island.

The same machinery groups chains of ops into one island (``lower_function(group=True)``,
used by ``form-islands``: see ``group_ops``); ``lower-to-islands`` keeps one op per island.

``islands_of(module)`` describes the islands for ``plan.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from opgraph.dialects.taskgraph import (
    DEVICE_ATTR,
    DEVICES,
    ISLAND_ATTR,
    PATTERN_ATTR,
    RANKS_ATTR,
    PlanOp,
    is_island,
    island_attributes,
    island_info,
    where,
)
from opgraph.dialects.upstream.async_dialect import AwaitOp, ExecuteOp, YieldOp, unwrap
from opgraph.dialects.walk import walk_ops
from opgraph.passes.patterns import pattern_of
from opgraph.passes.verify import op_location
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    FloatAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    TensorType,
    f64,
    i64,
)
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue
from xdsl.passes import ModulePass
from xdsl.traits import IsTerminator, MemoryEffectKind, get_effects, is_side_effect_free

from opgraph.errors import PassError

ALGORITHM_ATTR = "taskgraph.algorithm"
COST_ATTR = "taskgraph.cost"
BYTES_MOVED_ATTR = "taskgraph.bytes_moved"

DATAFLOW_DIALECTS = frozenset({"df", "dl", "comm", "taskgraph"})


def is_data_type(t: Attribute) -> bool:
    """Tables (``!df.table``), tensors (builtin ``tensor<..>``) and other dataflow types."""
    if isinstance(t, TensorType):
        return True
    name = getattr(t, "name", "")
    return isinstance(name, str) and name.split(".", 1)[0] in DATAFLOW_DIALECTS


def is_dataflow_op(op: Operation) -> bool:
    known = _DATAFLOW_BY_TYPE.get(type(op), _UNKNOWN)
    if known is _UNKNOWN:
        known = _DATAFLOW_BY_TYPE[type(op)] = _dataflow_class(op)
    if known is not None:
        return known  # type: ignore[return-value]
    return _is_dataflow(op)


def _is_dataflow(op: Operation) -> bool:
    if op.has_trait(IsTerminator, value_if_unregistered=False):
        return False
    if op.dialect_name() == "async" or isinstance(op, PlanOp):
        return False
    if op.dialect_name() in DATAFLOW_DIALECTS:
        return True
    return any(is_data_type(v.type) for v in (*op.operands, *op.results))


_UNKNOWN = object()
# op class -> whether its ops are dataflow ops, or None when that depends on their types
_DATAFLOW_BY_TYPE: dict[type, bool | None] = {}


def _dataflow_class(op: Operation) -> bool | None:
    """``_is_dataflow``'s answer for every op of this class, or None when it depends on the
    op's types (it reads the class's traits, name and dialect; unregistered ops, whose name
    is their own, are never classed)."""
    from xdsl.dialects.builtin import UnregisteredOp

    if isinstance(op, UnregisteredOp):
        return None
    if op.has_trait(IsTerminator, value_if_unregistered=False):
        return False
    if op.dialect_name() == "async" or isinstance(op, PlanOp):
        return False
    if op.dialect_name() in DATAFLOW_DIALECTS:
        return True
    return None


def effect_class(op: Operation) -> str:
    """``"pure"`` (no effects), ``"read"`` (only reads) or ``"write"`` (writes or unknown).
    ``comm`` collectives move rows between the ranks of their island and touch no memory
    outside their operands: pure."""
    if op.dialect_name() == "comm":
        return "pure"
    if not op.regions:
        kind = _EFFECTS_BY_TYPE.get(type(op))
        if kind is None:
            kind = _EFFECTS_BY_TYPE[type(op)] = _effect_class(op)
        return kind
    # ops with regions: the effects of the nested ops count too; cache by the op type and
    # the set of nested op types (expression regions repeat the same few ops)
    key = (type(op), frozenset(type(o) for o in walk_ops(op)))
    kind = _EFFECTS_BY_NESTED.get(key)
    if kind is None:
        kind = _EFFECTS_BY_NESTED[key] = _effect_class(op)
    return kind


# Effects are a property of op types (xDSL traits), so they are cached per type.
_EFFECTS_BY_TYPE: dict[type, str] = {}
_EFFECTS_BY_NESTED: dict[tuple[type, frozenset[type]], str] = {}


def _effect_class(op: Operation) -> str:
    effects = get_effects(op)
    if effects is None:
        return "write"
    if not effects:
        return "pure"
    if all(e.kind in (MemoryEffectKind.READ, MemoryEffectKind.ALLOC) for e in effects):
        return "read"
    return "write"


def _short_name(op: Operation) -> str:
    return op.name.split(".", 1)[-1].replace(".", "_")


def _inside(op: Operation, ancestor: Operation) -> bool:
    return ancestor.is_ancestor(op)


def _top_level_in(block: Block, op: Operation) -> Operation | None:
    cur: Operation | None = op
    while cur is not None and cur.parent is not block:
        cur = cur.parent_op()
    return cur


# ------------------------------------------------------------------- grouping

_PATTERN_WEIGHT = {"transfer": 0, "opaque": 1, "embarrassingly_parallel": 1, "partitioned_io": 1}


def _op_ranks(op: Operation, default: int) -> int:
    a = op.attributes.get(RANKS_ATTR)
    if type(a) is IntegerAttr and a.value.data >= 1:
        return a.value.data
    return default


def _op_device(op: Operation, default: str) -> str:
    a = op.attributes.get(DEVICE_ATTR)
    return a.data if type(a) is StringAttr and a.data in DEVICES else default


def _op_pattern(op: Operation) -> str:
    """The island vocabulary (underscores) of the op's annotated or default pattern."""
    a = op.attributes.get(PATTERN_ATTR)
    if type(a) is StringAttr and a.data:
        return a.data.replace("-", "_")
    return pattern_of(op)


def _op_cost(op: Operation) -> float | None:
    a = op.attributes.get(COST_ATTR)
    if type(a) in (FloatAttr, IntegerAttr):
        return float(a.value.data)
    return None


def main_op(ops: Sequence[Operation]) -> Operation:
    """The op an island is named after: the most expensive (annotated ``taskgraph.cost``),
    then the one with the most interesting pattern (not data movement, I/O or a row-wise
    op), then the first."""
    best, key = ops[0], (-1.0, -1)
    for o in ops:
        k = (_op_cost(o) or 0.0, 0 if o.dialect_name() == "comm" else _PATTERN_WEIGHT.get(_op_pattern(o), 2))
        if k > key:
            best, key = o, k
    return best


def group_attributes(name: str, ops: Sequence[Operation], main: Operation, ranks: int, device: str) -> dict[str, Attribute]:
    """Island attributes: name, ranks, device, pattern of the main op; when the ops are
    annotated also the main op's algorithm, the summed predicted cost and bytes moved."""
    attrs = island_attributes(name, _op_ranks(main, ranks), _op_device(main, device), _op_pattern(main))
    algo = main.attributes.get(ALGORITHM_ATTR)
    if type(algo) is StringAttr:
        attrs[ALGORITHM_ATTR] = algo
    costs = [c for o in ops if (c := _op_cost(o)) is not None]
    if costs:
        attrs[COST_ATTR] = FloatAttr(sum(costs), f64)
    moved = [o.attributes[BYTES_MOVED_ATTR] for o in ops if type(o.attributes.get(BYTES_MOVED_ATTR)) is IntegerAttr]
    if moved:
        attrs[BYTES_MOVED_ATTR] = IntegerAttr(sum(m.value.data for m in moved), i64)  # type: ignore[attr-defined]
    return attrs


def group_ops(
    block: Block,
    ops: Sequence[Operation],
    ranks: int = 1,
    device: str = "cpu",
    kinds: dict[Operation, str] | None = None,
) -> dict[Operation, list[Operation]]:
    """Groups the dataflow ``ops`` of ``block`` (program order) into islands: an op joins
    the island of the producer of one of its operands when that producer is the island's
    last op, has one result with this one use, and both have the same ranks and device (a
    chain with no dataflow break). Side effects keep their program order: an island holding
    an effectful op grows only while no conflicting effect (a write, or any effect when the
    island writes) happened outside it since its first effectful op. O(ops).

    Returns op -> its group (a list shared by the group's ops, in program order)."""
    group: dict[Operation, list[Operation]] = {}
    info: dict[int, list[int]] = {}  # id(group) -> [first effect index, effects, writes, has write]
    n_eff = 0
    writes_before: list[int] = [0]  # writes among the first i effects
    for op in ops:
        kind = kinds[op] if kinds is not None else effect_class(op)
        r, d = _op_ranks(op, ranks), _op_device(op, device)
        chosen: list[Operation] | None = None
        for v in op.operands:
            owner = v.owner
            if not isinstance(owner, Operation) or owner.parent is not block:
                continue
            g = group.get(owner)
            if g is None or g[-1] is not owner or len(owner.results) != 1:
                continue
            first_use = owner.results[0].first_use
            if first_use is None or first_use.operation is not op or owner.results[0].has_more_than_one_use():
                continue
            if _op_ranks(owner, ranks) != r or _op_device(owner, device) != d:
                continue
            meta = info[id(g)]
            if meta[1]:
                outside = n_eff - meta[0] - meta[1]
                outside_writes = writes_before[n_eff] - writes_before[meta[0]] - meta[2]
                if outside and (meta[3] or outside_writes or kind == "write"):
                    continue
            chosen = g
            break
        if chosen is None:
            chosen = []
            info[id(chosen)] = [0, 0, 0, 0]
        chosen.append(op)
        group[op] = chosen
        if kind != "pure":
            meta = info[id(chosen)]
            if not meta[1]:
                meta[0] = n_eff
            meta[1] += 1
            if kind == "write":
                meta[2] += 1
                meta[3] = 1
            n_eff += 1
            writes_before.append(writes_before[-1] + (kind == "write"))
    return group


@dataclass
class _FunctionLowering:
    block: Block
    ranks: int
    device: str
    used_names: set[str]
    counter: list[int]

    def __post_init__(self) -> None:
        self.async_of: dict[SSAValue, SSAValue] = {}  # original result -> !async.value result
        self.producer: dict[SSAValue, ExecuteOp] = {}  # !async.value -> its island
        # island -> the islands with side effects among it and its ancestors (through data
        # and token dependencies). Only effectful islands are ever looked up, so only they are
        # kept; sets are shared along chains, which keeps long pipelines linear.
        self.effectful_reach: dict[ExecuteOp, frozenset[ExecuteOp]] = {}
        self.effectful: list[tuple[ExecuteOp, str]] = []
        self.islands: list[tuple[ExecuteOp, list[SSAValue]]] = []
        self.cloned_from: list[Operation] = []
        self.kinds: dict[Operation, str] = {}  # effect class per op, computed once

    def fresh_name(self, op: Operation) -> str:
        while True:
            name = f"i{self.counter[0]}_{_short_name(op)}"
            self.counter[0] += 1
            if name not in self.used_names:
                self.used_names.add(name)
                return name

    def _clone_helper(self, value: SSAValue, into: Block, before: Operation, mapping: dict[SSAValue, SSAValue]) -> SSAValue | None:
        """Clones the side-effect-free scalar op defining ``value`` (and its helpers) into
        the island; None when ``value`` must stay captured."""
        if value in mapping:
            return mapping[value]
        owner = value.owner
        if (
            not isinstance(owner, Operation)
            or owner.parent is not self.block
            or is_dataflow_op(owner)
            or owner.regions
            or not is_side_effect_free(owner)
        ):
            return None
        for operand in owner.operands:
            if operand not in mapping:
                self._clone_helper(operand, into, before, mapping)
        clone = owner.clone(value_mapper=dict(mapping))
        into.insert_op_before(clone, before)
        for old, new in zip(owner.results, clone.results):
            mapping[old] = new
        self.cloned_from.append(owner)
        return mapping[value]

    def lower_op(self, op: Operation) -> None:
        self.lower_group([op])

    def lower_group(self, ops: list[Operation]) -> None:
        """Puts ``ops`` (top-level ops of the block, in program order) into one island,
        inserted where the last of them stands."""
        members = set(ops)
        block = self.block

        def internal(v: SSAValue) -> bool:
            owner = v.owner
            defining = owner if isinstance(owner, Operation) else owner.parent_op()
            if defining is None:
                return False
            if defining.parent is block:
                return defining in members
            top = _top_level_in(block, defining)
            return top is not None and top in members

        # values used by the ops (or their nested ops) that are defined outside them
        external: list[SSAValue] = []
        is_external: dict[SSAValue, bool] = {}
        external_uses: list[tuple[Operation, int, SSAValue]] = []
        for member in ops:
            # ids of the values defined inside ``member`` so far: in pre-order they come
            # before their uses, and they are internal (no need to ask ``internal``)
            inside: set[int] = set()
            for inner in walk_ops(member):
                for i, v in enumerate(inner._operands):  # the operand tuple (.operands wraps it)
                    if id(v) in inside:
                        continue
                    ext = is_external.get(v)
                    if ext is None:
                        ext = is_external[v] = not internal(v)
                        if ext:
                            external.append(v)
                    if ext:
                        external_uses.append((inner, i, v))
                for r in inner.results:
                    inside.add(id(r))
                for region in inner.regions:
                    for b in region.blocks:
                        for a in b.args:
                            inside.add(id(a))

        # results used outside the group are yielded
        yielded: list[SSAValue] = []
        for member in ops:
            for r in member.results:
                for u in r.uses:
                    top = _top_level_in(block, u.operation)
                    if top is None or top not in members:
                        yielded.append(r)
                        break

        body_operands: list[SSAValue] = [self.async_of[v] for v in external if v in self.async_of]
        body = ExecuteOp.body_block_for(body_operands)
        mapping: dict[SSAValue, SSAValue] = {}
        data_values = [v for v in external if v in self.async_of]
        for v, arg in zip(data_values, body.args):
            mapping[v] = arg
            owner_loc = next((inner.location for inner, _, w in external_uses if w is v), ops[0].location)
            arg.location = owner_loc

        inputs: list[ExecuteOp] = []
        for av in body_operands:
            p = self.producer[av]
            if p not in inputs:
                inputs.append(p)
        # effectful islands this one already comes after through its data inputs
        reach = self.effectful_reach
        ancestors: frozenset[ExecuteOp] = frozenset()
        for p in inputs:
            ancestors = reach[p] if not ancestors else ancestors | reach[p]

        # side-effect ordering through tokens
        kinds = [self.kinds[o] if o in self.kinds else effect_class(o) for o in ops]
        kind = "write" if "write" in kinds else ("read" if "read" in kinds else "pure")
        deps: list[ExecuteOp] = []
        if kind != "pure":
            candidates = [
                isl for isl, k in self.effectful if (kind == "write" or k == "write") and isl not in ancestors
            ]
            # only the latest of each ordered chain of candidates is needed
            deps = [c for c in candidates if not any(d is not c and c in reach[d] for d in candidates)]
            for d in deps:
                ancestors = ancestors | reach[d]

        main = main_op(ops)
        last = ops[-1]
        island = ExecuteOp(
            [d.token for d in deps],
            body_operands,
            [v.type for v in yielded],
            Region(body),
            group_attributes(self.fresh_name(main), ops, main, self.ranks, self.device),
        )
        island.location = main.location
        block.insert_op_before(island, last)

        for member in ops:
            member.detach()
        yield_op = YieldOp(yielded)
        yield_op.location = last.location
        body.add_ops([*ops, yield_op])

        # clone side-effect-free scalar helpers, then rewire captured values
        first = ops[0]
        for v in external:
            if v not in mapping:
                self._clone_helper(v, body, first, mapping)
        for inner, i, v in external_uses:
            if v in mapping:
                inner.operands[i] = mapping[v]

        for r, av in zip(yielded, island.body_results):
            self.async_of[r] = av
            self.producer[av] = island
        if kind != "pure":
            ancestors = ancestors | {island}
            self.effectful.append((island, kind))
        reach[island] = ancestors
        self.islands.append((island, yielded))

    def finish(self) -> None:
        terminator = self.block.last_op
        awaited: set[ExecuteOp] = set()
        # uses of island results outside their island: await the async value
        for island, yielded in self.islands:
            for r, av in zip(yielded, island.body_results):
                outside = [u for u in list(r.uses) if not _inside(u.operation, island)]
                if not outside:
                    continue
                users = [_top_level_in(self.block, u.operation) for u in outside]
                first = min(
                    (u for u in users if u is not None),
                    key=lambda o: self.block.get_operation_index(o),
                )
                wait = AwaitOp(av)
                wait.location = first.location
                self.block.insert_op_before(wait, first)
                for u in outside:
                    u.operation.operands[u.index] = wait.results[0]
                awaited.add(island)
        # sinks and other unconsumed islands: await their token before the terminator
        for island, _ in self.islands:
            consumed = island.token.first_use is not None or any(
                r.first_use is not None for r in island.body_results
            )
            if consumed or island in awaited:
                continue
            wait = AwaitOp(island.token)
            wait.location = island.body.last_op.location if island.body.last_op else island.location
            if terminator is not None and terminator.has_trait(IsTerminator):
                self.block.insert_op_before(wait, terminator)
            else:
                self.block.add_op(wait)
        # scalar helpers now cloned into every island that used them
        for helper in reversed(self.cloned_from):
            if helper.parent is not None and all(r.first_use is None for r in helper.results):
                helper.detach()
                helper.erase()


def lower_function(
    fn: func.FuncOp,
    ranks: int = 1,
    device: str = "cpu",
    used_names: set[str] | None = None,
    counter: list[int] | None = None,
    group: bool = False,
) -> None:
    if fn.body.blocks and len(fn.body.blocks) != 1:
        raise PassError(
            f"lower-to-islands: function '@{fn.sym_name.data}' at {where(fn)} has "
            f"{len(fn.body.blocks)} blocks; only single-block pipeline bodies are supported"
        )
    if not fn.body.blocks:
        return
    lowering = _FunctionLowering(
        fn.body.block, ranks, device, used_names if used_names is not None else set(), counter or [0]
    )
    ops = [op for op in fn.body.block.ops if is_dataflow_op(op)]
    lowering.kinds = {op: effect_class(op) for op in ops}
    if group:
        groups = group_ops(fn.body.block, ops, ranks, device, lowering.kinds)
        for op in ops:
            g = groups[op]
            if g[-1] is op:
                lowering.lower_group(g)
    else:
        for op in ops:
            lowering.lower_group([op])
    lowering.finish()


@dataclass(frozen=True)
class LowerToIslands(ModulePass):
    """Puts every top-level dataflow op of each function into its own island
    (``async.execute`` with ``taskgraph.*`` attributes)."""

    name = "lower-to-islands"

    ranks: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.ranks, bool) or not isinstance(self.ranks, int) or self.ranks < 1:
            raise ValueError(f"ranks must be an integer >= 1, got {self.ranks!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        used: set[str] = set()
        functions: list[func.FuncOp] = []
        for o in walk_ops(op):  # one walk: island names already taken, and the functions
            if isinstance(o, func.FuncOp):
                functions.append(o)
            elif is_island(o):
                used.add(o.attributes[ISLAND_ATTR].data)  # type: ignore[union-attr]
        counter = [0]
        for fn in functions:
            lower_function(fn, self.ranks, self.device, used, counter, group=self.group)
            self.after_function(fn)

    #: one island per op here; form-islands (a subclass) merges chains into one island
    group: ClassVar[bool] = False

    def after_function(self, fn: func.FuncOp) -> None:
        """Hook run on each function once its islands are built."""


# ------------------------------------------------------------------------------- plan


def _loc_str(op: Operation) -> str | None:
    loc = op_location(op)
    return f"{loc[0]}:{loc[1]}:{loc[2]}" if loc else None


def islands_of(module: Operation) -> list[dict[str, Any]]:
    """One dict per island, in program order::

        {"name": "i1_filter", "function": "etl", "ranks": 1, "device": "cpu",
         "pattern": "embarrassingly_parallel", "ops": ["df.filter"],
         "inputs": ["i0_read_parquet"],      # islands whose values it consumes (in order)
         "after": [],                        # islands it waits for by token only
         "output_types": ["!df.table<...>"], # yielded (unwrapped) types
         "awaited": false,                   # a value is awaited in its function (returned)
         "loc": "etl.py:7:10"}
    """
    result: list[dict[str, Any]] = []
    for op in module.walk():
        if not is_island(op):
            continue
        assert isinstance(op, ExecuteOp)
        info = island_info(op)
        fn = op.parent_op()
        while fn is not None and not isinstance(fn, func.FuncOp):
            fn = fn.parent_op()

        def owner_name(v: SSAValue) -> str | None:
            owner = v.owner
            if isinstance(owner, ExecuteOp) and is_island(owner):
                return island_info(owner).name
            return None

        inputs: list[str] = []
        for v in op.body_operands:
            n = owner_name(v)
            if n is not None and n not in inputs:
                inputs.append(n)
        after = [n for v in op.dependencies if (n := owner_name(v)) is not None and n not in inputs]
        awaited = any(isinstance(u.operation, AwaitOp) for r in op.body_results for u in r.uses)
        result.append(
            {
                "name": info.name,
                "function": fn.sym_name.data if isinstance(fn, func.FuncOp) else None,
                "ranks": info.ranks,
                "device": info.device,
                "pattern": info.pattern,
                "ops": [o.name for o in op.body.ops if not isinstance(o, YieldOp)],
                "inputs": inputs,
                "after": after,
                "output_types": [str(unwrap(r.type)) for r in op.body_results],
                "awaited": awaited,
                "loc": _loc_str(op),
            }
        )
    return result
