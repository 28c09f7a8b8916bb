"""Reading the compiler annotation contract (CONVENTIONS #3) with its documented defaults,
plus a small α-β (latency-bandwidth) transfer model read from the machine IR.

Annotations are discardable attributes on top-level dataflow ops (written by
``annotate-statistics``, ``classify-patterns`` and ``choose-parallelism``)::

    df.rows, df.bytes : i64              taskgraph.pattern, taskgraph.algorithm : string
    taskgraph.ranks : i64 (default 1)    taskgraph.device : "cpu" | "gpu" (default "cpu")
    taskgraph.partitioning : string      taskgraph.cost : f64 s     taskgraph.bytes_moved : i64

Every reader here returns the default when the attribute is absent or malformed, so the
passes that use them (insert-communication, form-islands, schedule-islands) run on IR that
was never annotated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from xdsl.dialects.builtin import FloatAttr, IntegerAttr, ModuleOp, StringAttr, f64, i64
from xdsl.ir import Attribute, Operation

from opgraph.errors import OpgraphError

ROWS = "df.rows"
BYTES = "df.bytes"
PATTERN = "taskgraph.pattern"
ALGORITHM = "taskgraph.algorithm"
RANKS = "taskgraph.ranks"
DEVICE = "taskgraph.device"
PARTITIONING = "taskgraph.partitioning"
COST = "taskgraph.cost"
BYTES_MOVED = "taskgraph.bytes_moved"
START = "taskgraph.start"
END = "taskgraph.end"
NODES = "taskgraph.nodes"

DEFAULT_COST_S = 1e-4
"""Predicted seconds of an op that carries no ``taskgraph.cost`` (a small fixed overhead)."""


def get_int(op: Operation, name: str, default: int) -> int:
    a = op.attributes.get(name)
    if type(a) is IntegerAttr:
        return int(a.value.data)
    if type(a) is FloatAttr:
        return int(a.value.data)
    return default


def get_float(op: Operation, name: str, default: float) -> float:
    a = op.attributes.get(name)
    if type(a) is FloatAttr or type(a) is IntegerAttr:
        v = float(a.value.data)
        return v if math.isfinite(v) else default
    return default


def get_str(op: Operation, name: str, default: str) -> str:
    a = op.attributes.get(name)
    return a.data if type(a) is StringAttr else default


def ranks_of(op: Operation, default: int = 1) -> int:
    return max(1, get_int(op, RANKS, default))


def device_of(op: Operation, default: str = "cpu") -> str:
    d = get_str(op, DEVICE, default)
    return d if d in ("cpu", "gpu") else default


def cost_of(op: Operation) -> float:
    return max(0.0, get_float(op, COST, DEFAULT_COST_S))


def bytes_of(op: Operation) -> int:
    return max(0, get_int(op, BYTES, 0))


@lru_cache(maxsize=256)
def str_attr(value: str) -> StringAttr:
    return StringAttr(value)


@lru_cache(maxsize=1024)
def i64_attr(value: int) -> IntegerAttr:
    return IntegerAttr(value, i64)


def f64_attr(value: float) -> FloatAttr:
    return FloatAttr(float(value), f64)


# ------------------------------------------------------------------------ machine


@dataclass(frozen=True)
class MachineFigures:
    """What scheduling and transfer costs need of the machine (per node)."""

    name: str = "default"
    nodes: int = 1
    cores_per_node: int = 8
    gpus_per_node: int = 0
    memory_bytes: float = 16e9
    memory_bw: float = 10e9  # bytes/s, one node
    net_latency_s: float = 2e-6
    net_bw: float = 10e9  # bytes/s injection per node
    intra_latency_s: float = 5e-7


def machine_figures(module: Operation) -> MachineFigures:
    """Figures of the machine described in ``module`` (``machine.*`` ops); defaults when
    there is none (IR compiled without a hardware spec). MPI calibration figures
    (``calibration.mpi``) override the network α-β when present."""
    if not isinstance(module, ModuleOp):
        return MachineFigures()
    try:
        from opgraph.dialects.machine import SystemOp, spec_from_machine_ops

        if not any(isinstance(o, SystemOp) for o in module.body.block.ops):
            return MachineFigures()
        spec = spec_from_machine_ops(module)
    except (OpgraphError, ValueError):
        return MachineFigures()
    n = spec.nodes
    gpus = n.gpus.count if n.gpus is not None else 0
    lat = spec.network.latency_us * 1e-6
    bw = spec.network.injection_bandwidth_gb_per_s * 1e9
    mpi = spec.calibration.get("mpi", {})
    intra_lat = float(mpi.get("latency_s", 5e-7))
    if n.count == 1 and "bandwidth_bytes_per_s" in mpi:
        bw = float(mpi["bandwidth_bytes_per_s"])
        lat = intra_lat
    mem_bw = float(spec.calibration.get("memory", {}).get("bandwidth_bytes_per_s", n.memory.bandwidth_gb_per_s * 1e9))
    return MachineFigures(
        name=spec.name,
        nodes=n.count,
        cores_per_node=n.cpu.cores,
        gpus_per_node=gpus,
        memory_bytes=n.memory.capacity_gb * 1e9,
        memory_bw=mem_bw,
        net_latency_s=lat,
        net_bw=bw,
        intra_latency_s=intra_lat,
    )


def nodes_for(ranks: int, device: str, m: MachineFigures) -> int:
    """Whole nodes an island of ``ranks`` ranks occupies at least."""
    per = m.gpus_per_node if device == "gpu" and m.gpus_per_node else m.cores_per_node
    return max(1, math.ceil(ranks / max(per, 1)))


def collective_cost(kind: str, nbytes: float, ranks: int, m: MachineFigures) -> float:
    """α-β cost (seconds) of one collective over ``ranks`` ranks moving a table of
    ``nbytes`` bytes (global size). Ranks of one node use the memory bandwidth and the
    intra-node latency; across nodes, each node injects at the network bandwidth."""
    p = max(1, ranks)
    if p == 1:
        return 0.0
    nodes = min(m.nodes, nodes_for(p, "cpu", m))
    if nodes <= 1:
        alpha, beta_bw = m.intra_latency_s, m.memory_bw
        per_node_bw = beta_bw
    else:
        alpha, per_node_bw = m.net_latency_s, m.net_bw
    steps = math.ceil(math.log2(p))
    if kind == "shuffle":  # all-to-all: every byte but 1/p leaves its rank once
        return (p - 1) * alpha + nbytes * (p - 1) / p / (per_node_bw * nodes)
    if kind in ("allgather", "broadcast"):  # every node receives the whole table
        return steps * alpha + nbytes / per_node_bw
    if kind == "gather":
        return steps * alpha + nbytes / per_node_bw
    if kind == "allreduce":
        return 2 * steps * alpha + 2 * nbytes / per_node_bw
    if kind == "halo":
        return 2 * alpha
    return steps * alpha + nbytes / per_node_bw


def transfer_cost(nbytes: float, same_node: bool, m: MachineFigures) -> float:
    """α-β cost of moving ``nbytes`` between two islands (async edge)."""
    if nbytes <= 0:
        return 0.0
    if same_node:
        return m.intra_latency_s + nbytes / m.memory_bw
    return m.net_latency_s + nbytes / m.net_bw


def attr_value_json(a: Attribute | None):
    if a is None:
        return None
    if type(a) is StringAttr:
        return a.data
    if type(a) in (IntegerAttr, FloatAttr):
        return a.value.data
    return str(a)


def _cost_model(module: Operation):
    """H1's ``opgraph.passes.cost_model.CostModel`` for the module's machine, or None."""
    if not isinstance(module, ModuleOp):
        return None
    try:
        from opgraph.passes.cost_model import CostModel

        return CostModel.of(module)
    except (ImportError, OpgraphError, ValueError):
        return None


def collective_seconds(module: Operation, kind: str, nbytes: float, ranks: int, device: str = "cpu") -> float:
    """Predicted seconds of one collective: the shared cost model's α-β formulas when it is
    available, else ``collective_cost`` on ``machine_figures``."""
    if ranks <= 1:
        return 0.0
    cm = _cost_model(module)
    if cm is not None:
        fn = {
            "shuffle": cm.alltoall,
            "broadcast": cm.broadcast,
            "allgather": cm.allgather,
            "gather": cm.gather,
            "allreduce": cm.allreduce,
            "halo": cm.halo,
        }.get(kind)
        if fn is not None:
            try:
                v = float(fn(float(nbytes), ranks, device))
                if math.isfinite(v):
                    return v
            except (ValueError, TypeError, ArithmeticError):
                v = math.nan  # fall back to the local formula below
    return collective_cost(kind, nbytes, ranks, machine_figures(module))
