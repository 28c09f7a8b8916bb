"""``schedule-islands``: HEFT-style list scheduling of the islands onto the machine's nodes
(issue #3 item 8).

Input: islands (``async.execute`` with ``taskgraph.*``; run ``form-islands`` or
``lower-to-islands`` first) with predicted ``taskgraph.cost`` (default 1e-4 s), the bytes of
the values flowing between them (``df.bytes`` of the yielding op, default 0) and the machine
of the module (``machine.*`` ops; defaults without one).

Model:

* the island graph (networkx ``DiGraph``): an edge per consumed value or token, weighted by
  the bytes moved; transfer time α + bytes/β, with the memory bandwidth and intra-node
  latency when both islands share a node and the network latency and per-node injection
  bandwidth otherwise (figures from ``passes/_tg.py``: H1's cost model where present);
* resources: ``nodes`` nodes with ``cores`` core slots (CPU islands, one rank per core) or
  ``gpus`` GPU slots (GPU islands, one rank per GPU) each. An island of r ranks takes r slots
  of one node when r fits a node, else ceil(r / slots) whole nodes;
* HEFT: islands in decreasing *upward rank* (cost + the longest path of mean transfer +
  cost to an exit), each placed where it finishes earliest (EFT) among: the nodes its inputs
  ran on (no transfer), the least loaded used node and a fresh node (all unused nodes are
  alike), so that independent islands run concurrently on disjoint resources. O(islands ·
  inputs) plus O(used nodes) for islands spanning several nodes.

Output, on every island: ``taskgraph.start``/``taskgraph.end`` (f64 seconds from the start
of the run) and ``taskgraph.nodes`` (node ids, compact ``"0-3,7"``); on the ``func.func``
(and on ``taskgraph.plan`` when the module has one): ``taskgraph.makespan`` (f64 s),
``taskgraph.nodes_used`` (i64), ``taskgraph.peak_memory`` (i64 bytes, the largest over
nodes) and ``taskgraph.node_peak_memory`` (i64 per used node, node 0 first). An island's
memory is its inputs' and outputs' bytes spread over its nodes.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import networkx as nx
from opgraph.dialects.taskgraph import PlanOp, is_island
from opgraph.dialects.upstream.async_dialect import ExecuteOp, YieldOp
from opgraph.passes import _tg
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, ModuleOp
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass

MAKESPAN = "taskgraph.makespan"
PEAK_MEMORY = "taskgraph.peak_memory"
NODE_PEAK_MEMORY = "taskgraph.node_peak_memory"
NODES_USED = "taskgraph.nodes_used"


def compact_nodes(nodes: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    out: list[str] = []
    nodes = sorted(set(nodes))
    i = 0
    while i < len(nodes):
        j = i
        while j + 1 < len(nodes) and nodes[j + 1] == nodes[j] + 1:
            j += 1
        out.append(str(nodes[i]) if i == j else f"{nodes[i]}-{nodes[j]}")
        i = j + 1
    return ",".join(out)


def expand_nodes(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if not part:
            continue
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def _value_bytes(island: ExecuteOp, index: int) -> int:
    """Bytes of the ``index``-th value ``island`` yields (``df.bytes`` of its producer)."""
    y = island.body.last_op
    if isinstance(y, YieldOp) and index < len(y.operands):
        owner = y.operands[index].owner
        if isinstance(owner, Operation):
            return _tg.bytes_of(owner)
    return 0


@dataclass
class _Node:
    slots: list[float]  # free time of each slot (sorted ascending)
    mem_events: list[tuple[float, int]] = field(default_factory=list)

    def full_free(self) -> float:
        return self.slots[-1]


@dataclass
class Schedule:
    """The result for one function: island -> (start, end, nodes), makespan, memory."""

    start: dict[ExecuteOp, float]
    end: dict[ExecuteOp, float]
    nodes: dict[ExecuteOp, list[int]]
    makespan: float
    node_peak: list[int]
    graph: nx.DiGraph


def island_graph(fn: func.FuncOp) -> nx.DiGraph:
    """Islands of ``fn`` as a DiGraph: node attributes ``cost``, ``ranks``, ``device``,
    ``index`` (program order), ``mem``; edge attribute ``bytes``."""
    g = nx.DiGraph()
    if not fn.body.blocks:
        return g
    index = 0
    for op in fn.body.block.ops:
        if not (isinstance(op, ExecuteOp) and is_island(op)):
            continue
        out_bytes = sum(_value_bytes(op, i) for i in range(len(op.body_results)))
        g.add_node(op, cost=_tg.cost_of(op), ranks=_tg.ranks_of(op), device=_tg.device_of(op), index=index, mem=out_bytes)
        index += 1
        for v in op.operands:
            owner = v.owner
            if not (isinstance(owner, ExecuteOp) and g.has_node(owner)):
                continue
            nbytes = 0
            if isinstance(v, SSAValue) and v in owner.body_results:
                nbytes = _value_bytes(owner, list(owner.body_results).index(v))
            if g.has_edge(owner, op):
                g.edges[owner, op]["bytes"] += nbytes
            else:
                g.add_edge(owner, op, bytes=nbytes)
            g.nodes[op]["mem"] += nbytes
    return g


def heft(g: nx.DiGraph, m: _tg.MachineFigures) -> Schedule:
    order_index = {n: d["index"] for n, d in g.nodes(data=True)}
    # upward ranks, exits first (reverse topological order)
    rank_u: dict[ExecuteOp, float] = {}
    for n in reversed(list(nx.topological_sort(g))):
        best = 0.0
        for s in g.successors(n):
            c = _tg.transfer_cost(g.edges[n, s]["bytes"], False, m) + rank_u[s]
            best = max(best, c)
        rank_u[n] = g.nodes[n]["cost"] + best
    order = sorted(g.nodes, key=lambda n: (-rank_u[n], order_index[n]))

    cpu_slots, gpu_slots = max(1, m.cores_per_node), max(0, m.gpus_per_node)
    nodes: list[_Node] = []  # used nodes, ids 0..len-1
    heap: list[tuple[float, int]] = []  # (full-free time, node id), lazily updated
    start: dict[ExecuteOp, float] = {}
    end: dict[ExecuteOp, float] = {}
    placed: dict[ExecuteOp, list[int]] = {}

    def slots_of(device: str) -> int:
        return gpu_slots if device == "gpu" and gpu_slots else cpu_slots

    def new_node() -> int:
        nodes.append(_Node([0.0] * max(cpu_slots, gpu_slots or 0)))
        heapq.heappush(heap, (0.0, len(nodes) - 1))
        return len(nodes) - 1

    def ready_on(n: ExecuteOp, node_set: set[int]) -> float:
        t = 0.0
        for p in g.predecessors(n):
            same = bool(node_set & set(placed[p]))
            t = max(t, end[p] + _tg.transfer_cost(g.edges[p, n]["bytes"], same, m))
        return t

    for n in order:
        d = g.nodes[n]
        r, device, cost = d["ranks"], d["device"], d["cost"]
        per = slots_of(device)
        best: tuple[float, float, list[int]] | None = None  # (finish, start, node ids)
        if r <= per:
            cands: list[int | None] = []
            for p in g.predecessors(n):
                for q in placed[p]:
                    if q not in cands:
                        cands.append(q)
            while heap and heap[0][0] != nodes[heap[0][1]].full_free():
                heapq.heappop(heap)  # stale entry
            if heap and heap[0][1] not in cands:
                cands.append(heap[0][1])
            # the node whose r-th slot frees first
            if nodes:
                cands.extend(q for q in (min(range(len(nodes)), key=lambda q: nodes[q].slots[r - 1]),) if q not in cands)
            if len(nodes) < m.nodes:
                cands.append(None)  # a fresh node
            for q in cands:
                slot_t = nodes[q].slots[r - 1] if q is not None else 0.0
                s = max(slot_t, ready_on(n, {q} if q is not None else set()))
                key = (s + cost, s, [q] if q is not None else [])
                if best is None or key[0] < best[0] - 1e-15:
                    best = key
            assert best is not None
            q = best[2][0] if best[2] else new_node()
            s = best[1]
            node = nodes[q]
            node.slots[:r] = [s + cost] * r
            node.slots.sort()
            heapq.heappush(heap, (node.full_free(), q))
            chosen = [q]
        else:
            k = min(m.nodes, math.ceil(r / per))
            options: list[list[int]] = []
            fresh = min(k, m.nodes - len(nodes))
            if len(nodes) + k <= m.nodes:
                options.append([-1] * k)  # all fresh
            if nodes:
                reuse = heapq.nsmallest(k - fresh, range(len(nodes)), key=lambda q: nodes[q].full_free())
                options.append(reuse + [-1] * fresh)
            if not options:
                options.append(list(range(min(k, len(nodes)))))
            for opt in options:
                used = {q for q in opt if q >= 0}
                slot_t = max((nodes[q].full_free() for q in used), default=0.0)
                s = max(slot_t, ready_on(n, used))
                if best is None or s + cost < best[0] - 1e-15:
                    best = (s + cost, s, opt)
            assert best is not None
            s = best[1]
            chosen = [q if q >= 0 else new_node() for q in best[2]]
            for q in chosen:
                nodes[q].slots[:] = [s + cost] * len(nodes[q].slots)
                heapq.heappush(heap, (s + cost, q))
        start[n], end[n], placed[n] = s, s + cost, chosen
        mem = d["mem"] // max(1, len(chosen))
        for q in chosen:
            nodes[q].mem_events.append((s, mem))
            nodes[q].mem_events.append((s + cost, -mem))

    peaks = []
    for node in nodes:
        cur = peak = 0
        for _, delta in sorted(node.mem_events, key=lambda e: (e[0], e[1])):
            cur += delta
            peak = max(peak, cur)
        peaks.append(peak)
    makespan = max(end.values(), default=0.0)
    return Schedule(start, end, placed, makespan, peaks, g)


def schedule_function(fn: func.FuncOp, m: _tg.MachineFigures) -> Schedule:
    sched = heft(island_graph(fn), m)
    for isl, s in sched.start.items():
        isl.attributes[_tg.START] = _tg.f64_attr(s)
        isl.attributes[_tg.END] = _tg.f64_attr(sched.end[isl])
        isl.attributes[_tg.NODES] = _tg.str_attr(compact_nodes(sched.nodes[isl]))
    _annotate(fn, sched)
    return sched


def _annotate(op: Operation, sched: Schedule) -> None:
    op.attributes[MAKESPAN] = _tg.f64_attr(sched.makespan)
    op.attributes[NODES_USED] = _tg.i64_attr(len(sched.node_peak))
    op.attributes[PEAK_MEMORY] = _tg.i64_attr(max(sched.node_peak, default=0))
    op.attributes[NODE_PEAK_MEMORY] = ArrayAttr([_tg.i64_attr(int(p)) for p in sched.node_peak])


@dataclass(frozen=True)
class ScheduleIslands(ModulePass):
    """HEFT list scheduling of islands onto nodes: predicted start/end, makespan, memory."""

    name = "schedule-islands"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        m = _tg.machine_figures(op)
        total: Schedule | None = None
        for fn in [o for o in op.body.block.ops if isinstance(o, func.FuncOp)]:
            sched = schedule_function(fn, m)
            if total is None or sched.makespan > total.makespan:
                total = sched
        if total is not None:
            for plan in (o for o in op.body.block.ops if isinstance(o, PlanOp)):
                _annotate(plan, total)
