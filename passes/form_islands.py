"""``form-islands``: groups operators into gang-scheduled bulk-synchronous islands (issue #3
item 7).

An island is one ``async.execute`` holding a chain of dataflow ops that run on the same
ranks and device with no dataflow break: an op joins the island of its operand's producer
when that producer is the island's last op, has a single result with a single use (this
op), and both carry the same ``taskgraph.ranks``/``taskgraph.device`` (defaults 1 / cpu, or
the pass options). Everything else starts a new island; edges between islands stay
``!async.value`` operands (asynchronous transfers) and side effects stay ordered by
``!async.token`` dependencies exactly as in ``lower-to-islands`` (which builds one island
per op and shares this machinery: see ``passes/lower_to_islands.py``).

Before (annotated by choose-parallelism / insert-communication)::

    %0 = "df.read_parquet"() {taskgraph.ranks = 4 : i64, ...}
    %1 = "df.filter"(%0) ({...}) {taskgraph.ranks = 4 : i64, ...}
    %2 = "df.read_parquet"() {taskgraph.ranks = 1 : i64, ...}
    %3 = "comm.allgather"(%2) {taskgraph.ranks = 4 : i64, ...}
    %4 = "df.join"(%1, %3) {taskgraph.algorithm = "broadcast-right", taskgraph.ranks = 4 : i64}

After: three islands - ``i0_read_parquet`` {read, filter, join} (4 ranks),
``i1_read_parquet`` {read} (1 rank) and ``i2_allgather`` {allgather} (4 ranks), whose value
flows into the first one's join::

    %t0, %v0 = "async.execute"(%v2) ({ read; filter; join; "async.yield"(%join) })
        {taskgraph.island = "i0_read_parquet", taskgraph.ranks = 4 : i64,
         taskgraph.device = "cpu", taskgraph.pattern = "broadcast_compute",
         taskgraph.algorithm = "broadcast-right", taskgraph.cost = 0.31 : f64,
         taskgraph.start = 0.0 : f64, taskgraph.end = 0.31 : f64}

Island attributes: ``taskgraph.island/ranks/device/pattern`` (the main op's: the most
expensive, else the most specific pattern), ``taskgraph.algorithm`` (main op's),
``taskgraph.cost`` (sum of the ops' predicted seconds) and ``taskgraph.bytes_moved`` when
the ops are annotated, and a first predicted ``taskgraph.start``/``taskgraph.end``: the
earliest times with unlimited resources (each island starts when its inputs are done).
``schedule-islands`` replaces them with a resource-constrained timeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from opgraph.dialects.taskgraph import is_island
from opgraph.dialects.upstream.async_dialect import ExecuteOp
from opgraph.passes import _tg
from opgraph.passes.lower_to_islands import LowerToIslands
from xdsl.dialects import func


def island_predecessors(island: ExecuteOp) -> list[ExecuteOp]:
    """Islands whose value or token ``island`` waits for."""
    out: list[ExecuteOp] = []
    for v in island.operands:
        owner = v.owner
        if isinstance(owner, ExecuteOp) and is_island(owner) and owner not in out:
            out.append(owner)
    return out


def asap_times(fn: func.FuncOp) -> float:
    """Sets ``taskgraph.start``/``taskgraph.end`` of every island of ``fn`` to its earliest
    times with unlimited resources; returns the function's critical-path length."""
    end: dict[ExecuteOp, float] = {}
    span = 0.0
    if not fn.body.blocks:
        return 0.0
    for op in fn.body.block.ops:
        if not (isinstance(op, ExecuteOp) and is_island(op)):
            continue
        start = max((end[p] for p in island_predecessors(op) if p in end), default=0.0)
        finish = start + _tg.cost_of(op)
        end[op] = finish
        op.attributes[_tg.START] = _tg.f64_attr(start)
        op.attributes[_tg.END] = _tg.f64_attr(finish)
        span = max(span, finish)
    return span


@dataclass(frozen=True)
class FormIslands(LowerToIslands):
    """Groups chains of ops with equal ranks/device into bulk-synchronous islands (options
    and island naming as lower-to-islands), then gives the islands early start/end times."""

    name = "form-islands"
    group: ClassVar[bool] = True

    def after_function(self, fn: func.FuncOp) -> None:
        asap_times(fn)
