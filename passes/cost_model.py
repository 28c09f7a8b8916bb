"""The cost model: predicted seconds of local kernels, I/O and collectives on a machine
described by the hardware IR (``machine.*`` ops, read through ``spec_from_machine_ops``).

Nothing here reads a YAML file or the frontend: the only input is the module's machine ops
(a module without them is costed on the packaged ``laptop`` spec, see ``CostModel.of``).
Every function takes the rank count ``r`` as a number or a numpy array (vectorised over a
grid of rank counts for ``choose-parallelism``) and returns seconds (``inf`` = infeasible).

Placement (``place``): ranks are packed onto nodes, one rank per core (CPU) or per GPU:
``n = ceil(r / C)`` nodes, ``q = min(r, C)`` ranks per node (C = cores or GPUs per node).

Local kernels (``compute``), per op kind (``KERNEL_KINDS``)::

    t = overhead + max(rows/r / (rate * s),  touch * bytes/r / (mem_bw / q)) * logf + sync(r)
    rate  = calibration[kind].rows_per_s            (measured on this machine), else
            DEFAULT_ROWS_PER_S[kind] * clock_ghz / REF_CLOCK_GHZ
    s     = a rank's share of its node's speed-up: sp(q t) / q, with t = floor(C / q) kernel
            threads per rank (the runtime gives each rank cores / ranks-per-node threads) and
            sp(x) = min(x, 1 + (x - 1)(S - 1)/(T - 1)), S = calibration[kind].parallel_speedup
            measured on T = calibration[kind].threads cores: the node's cores give the same
            throughput however they are split into ranks (measured here: 2 ranks of 1 thread
            sorted 5M rows each in 0.50-0.72 s while one thread alone took 0.44 s); 1 when
            not calibrated (one core per rank, linear in the ranks); times W/w for kinds calibrated
            touching W = calibration[kind].row_bytes bytes per row when the op touches w
            (filter: predicate columns + the columns its readers keep; groupby: keys + the
            aggregated columns)
    bytes = rows * w for kinds given the bytes per row they touch (the columns they read
            and keep), else the input's bytes
    overhead = calibration[kind].overhead_s, else DEFAULT_OVERHEAD_S
    mem_bw = calibration.memory.bandwidth_bytes_per_s, else the spec's node memory bandwidth
    logf  = max(1, log2(rows/r) / log2(REF_SORT_ROWS)) for sorts (n log n), else 1
    sync(r) = ceil(log2 r) * (alpha(r) + STEP_SYNC_S)   (the barrier ending a bulk-synchronous
            step, STEP_SYNC_S = 100 us of runtime coordination per tree level; 0 at r=1)

``DEFAULT_ROWS_PER_S`` are per-core rates derived from DESIGN.md §9 (this 2-core reference
machine: e.g. join 10M x 10M rows in 1.14-1.5 s, groupby 10M rows 0.042 s, sort 10M 0.68 s,
filter+project 10M 0.029 s, Parquet read 10M x 4 f64 0.11 s / write 0.96 s).

Memory (``fits``): a rank may use ``MEMORY_USABLE_FRACTION`` of its node's memory divided by the
ranks on the node (GPU: of its device memory). A choice whose working set exceeds it costs
``inf`` — it is rejected, never silently chosen (no spilling is modelled).

Communication, alpha-beta (Hockney) with two levels:

* alpha: ``alpha_net = network latency + MPI_SOFTWARE_OVERHEAD_S`` between nodes;
  ``alpha_intra = calibration.mpi.latency_s`` or the ``cpu-cpu`` link latency (default 0.5 us)
  within a node (GPU ranks: the ``gpu-gpu`` link latency).
* beta: a node injects ``B`` = network injection bandwidth, shared by its q ranks; within a node
  a copy costs ``2 / mem_bw`` per byte (read + write), capped per pair by
  ``calibration.mpi.bandwidth_bytes_per_s`` (GPU ranks: the ``gpu-gpu`` link bandwidth).

Collectives (D = total bytes over all ranks, m = bytes per rank; all 0 at r = 1):

* alltoall (shuffle): ``(q-1) alpha_intra + (r-q) alpha_net + D (n-1)/n^2 / B
  + (D/r)(q-1)/r / bw_intra_rank`` (every node sends the (n-1)/n off-node part of its D/n).
* broadcast (binomial tree): ``ceil(log2 n)(alpha_net + m/B) + ceil(log2 q)(alpha_intra +
  m/bw_intra)``, or van de Geijn scatter + allgather ``(log2 r + r - 1) alpha + 2 m / bw``,
  whichever is smaller.
* gather to one rank: ``ceil(log2 r) alpha + D (n-1)/n / B + 2 D (r-1)/r / mem_bw``.
* allgather (ring): ``(r-1) alpha + D (n-1)/n / B + 2 q D / mem_bw`` (every rank ends up with D).
* allreduce: min(ring ``2(r-1) alpha + 2 m (r-1)/r / bw_rank``, recursive doubling
  ``ceil(log2 r)(alpha + m / bw_rank)``), ``bw_rank = B/q`` across nodes.
* halo (send-recv with both neighbours): ``2 (alpha + h / bw_rank)``.
* redistribute r1 -> r2 ranks (rebalancing, scatter, gather): with lo/hi = min/max,
  ``ceil(hi/lo) alpha(hi) + (D/lo) / bw_rank(lo ranks sending across hi's nodes)``.

I/O: reading D bytes with r ranks takes ``max(rows/r / rate, D/r / bytes_per_s, D / io_bw(n))``
(``bytes_per_s``: the calibrated in-memory bytes per CPU second of the codec, if measured) with
``io_bw(n) = min(filesystem aggregate, n * per-node filesystem bandwidth)``; the per-node figure
is the spec's per-node cap, else the network injection bandwidth (several nodes), else the
aggregate (one node). Writes use the same bandwidth (local disks: their write bandwidth).

Deep learning (``train``/``predict``): FLOPs from ``dl.flops`` or ``6 * params * rows * epochs``
(training) / ``2 * params * rows`` (inference); time ``flops / (r * peak * efficiency)`` with
peak = fp32 FLOP/s of a core (CPU ranks) or of a GPU (GPU ranks), plus per step an allreduce of
the gradients (data parallel, global batch fixed) and a fixed step overhead, plus the copy of
the data over the cpu-gpu link for GPU ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opgraph.hwspec import HardwareSpec

# ----------------------------------------------------------------------------- constants

REF_CLOCK_GHZ = 3.0
"""Clock of the reference core the default rates were measured on (DESIGN §9)."""

DEFAULT_ROWS_PER_S: dict[str, float] = {
    # per core, on the reference core; input rows per second of the local kernel
    "join": 7.0e6,  # 20M input rows in ~1.4 s on 2 cores (pyarrow/DuckDB hash join)
    "groupby": 1.0e8,  # 10M rows in 0.042 s on 2 cores
    "sort": 7.0e6,  # 10M rows in 0.68 s on 2 cores (at REF_SORT_ROWS rows)
    "filter": 1.5e8,  # filter+project 10M in 0.029 s on 2 cores
    "project": 3.0e8,
    "map": 1.5e8,
    "distinct": 8.0e7,
    "window": 1.0e8,
    "aggregate": 2.0e8,
    "concat": 5.0e8,
    "head": 1.0e9,
    "set_op": 3.0e7,
    "read_parquet": 4.5e7,  # 10M x 4 f64 in 0.11 s on 2 cores
    "write_parquet": 5.0e6,  # 10M x 4 f64 in 0.96 s on 2 cores
    "read_csv": 2.0e6,
    "write_csv": 1.0e6,
    "read_ipc": 5.0e8,
    "write_ipc": 1.0e8,
    "hash_partition": 5.0e7,
    "range_partition": 8.0e7,  # the sample sort's split by splitters (kernels/range_kernels.hpp), 8M rows: 0.1 s/core
}
KERNEL_KINDS = tuple(DEFAULT_ROWS_PER_S)
DEFAULT_OVERHEAD_S = 1e-4
"""Fixed cost of launching a local kernel (per op, per rank, in parallel)."""
REF_SORT_ROWS = 1e7
MEMORY_USABLE_FRACTION = 0.8
MPI_SOFTWARE_OVERHEAD_S = 2e-6
"""Per-message software cost added to the wire latency between nodes (MPI matching, progress)."""
DEFAULT_INTRA_LATENCY_S = 0.5e-6
STEP_SYNC_S = 100e-6
"""Per tree level of the barrier that ends a bulk-synchronous step (runtime coordination)."""
DL_CPU_EFFICIENCY = 0.25
DL_GPU_EFFICIENCY = 0.35
DL_STEP_OVERHEAD_S = {"cpu": 2e-4, "gpu": 5e-5}
"""Fixed per-training-step cost (optimizer update, dispatch), not divided among ranks."""
WORKING_SET_FACTOR = 2.0
"""Working set of a kernel per rank = factor * (input + output bytes per rank)."""

ArrayLike = Any  # float | np.ndarray


def _arr(r: ArrayLike) -> np.ndarray:
    return np.asarray(r, dtype=float)


@dataclass
class CostModel:
    """Derived figures of one machine; the formulas are in the module docstring."""

    spec: HardwareSpec
    nodes: int = field(init=False)
    cores_per_node: int = field(init=False)
    gpus_per_node: int = field(init=False)
    total_cores: int = field(init=False)
    total_gpus: int = field(init=False)

    def __post_init__(self) -> None:
        s = self.spec
        self._memo: dict[tuple, Any] = {}  # per rank-grid arrays (placement, latency, sync)
        cal = s.calibration
        self.cal = cal
        self.nodes = s.node_count
        self.cores_per_node = s.cores_per_node
        self.gpus_per_node = s.gpus_per_node
        self.total_cores = s.total_cores
        self.total_gpus = s.total_gpus
        self.clock_scale = s.nodes.cpu.clock_ghz / REF_CLOCK_GHZ
        self.mem_bw = float(cal.get("memory", {}).get("bandwidth_bytes_per_s", s.memory_bandwidth_bytes_per_s))
        self.mem_per_node = float(s.memory_per_node_bytes)
        self.gpu_mem = float(s.gpu_memory_bytes)
        self.gpu_bw = float(s.gpu_memory_bandwidth_bytes_per_s)
        self.gpu_flops = float(s.nodes.gpus.fp32_tflops * 1e12) if s.nodes.gpus else 0.0
        self.cpu_flops_core = s.nodes.cpu.fp32_gflops_per_core * 1e9
        self.inj_bw = float(s.network_bandwidth_bytes_per_s)
        self.alpha_net = s.network_latency_s + MPI_SOFTWARE_OVERHEAD_S
        mpi = cal.get("mpi", {})
        cc = s.link("cpu-cpu")
        self.alpha_intra = float(mpi.get("latency_s", cc.latency_us * 1e-6 if cc else DEFAULT_INTRA_LATENCY_S))
        self.mpi_pair_bw = float(mpi.get("bandwidth_bytes_per_s", math.inf))
        gg = s.link("gpu-gpu")
        self.gpu_alpha_intra = gg.latency_us * 1e-6 if gg else self.alpha_intra
        self.gpu_link_bw = gg.bandwidth_gb_per_s * 1e9 if gg else self.inj_bw
        cg = s.link("cpu-gpu")
        self.cpu_gpu_bw = cg.bandwidth_gb_per_s * 1e9 if cg else 16e9
        fs = s.filesystem
        self.fs_aggregate = fs.aggregate_bandwidth_gb_per_s * 1e9
        if fs.per_node_bandwidth_gb_per_s:
            self.fs_node = fs.per_node_bandwidth_gb_per_s * 1e9
        elif self.nodes > 1:
            self.fs_node = self.inj_bw
        else:
            self.fs_node = self.fs_aggregate
        local_write = s.local_disk_write_bytes_per_s
        self.fs_write_aggregate = (
            min(self.fs_aggregate, local_write) if fs.kind == "local" and local_write > 0 else self.fs_aggregate
        )

    # ------------------------------------------------------------------ construction

    @staticmethod
    def of(module: Any) -> CostModel:
        """The model of the machine described by ``module``'s machine ops (cached on the
        module object while those ops stay the same); the packaged laptop spec when the module
        has none."""
        from opgraph.dialects.machine import SystemOp, spec_from_machine_ops

        machine = tuple(id(op) for op in module.body.block.ops if op.name.startswith("machine."))
        cached = getattr(module, "_opgraph_cost_model", None)
        if cached is not None and cached[0] == machine:
            return cached[1]
        if any(isinstance(op, SystemOp) for op in module.body.block.ops):
            spec = spec_from_machine_ops(module)
        else:
            from opgraph.hwspec import load_spec

            spec = load_spec("laptop")
        model = CostModel(spec)
        try:
            module._opgraph_cost_model = (machine, model)
        except AttributeError:  # pragma: no cover - slotted classes
            pass
        return model

    # ------------------------------------------------------------------ placement

    def max_ranks(self, device: str = "cpu") -> int:
        return self.total_gpus if device == "gpu" else self.total_cores

    def place(self, r: ArrayLike, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
        """(nodes used, ranks per node) when ``r`` ranks are packed onto nodes."""
        r = _arr(r)
        key = ("place", r.tobytes(), r.shape, device)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        per = max(self.gpus_per_node if device == "gpu" else self.cores_per_node, 1)
        out = (np.ceil(r / per), np.minimum(r, per))
        self._memo[key] = out
        return out

    def alpha(self, r: ArrayLike, device: str = "cpu") -> np.ndarray:
        r = _arr(r)
        key = ("alpha", r.tobytes(), r.shape, device)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        n, _ = self.place(r, device)
        intra = self.gpu_alpha_intra if device == "gpu" else self.alpha_intra
        out = np.where(n > 1, self.alpha_net, intra)
        self._memo[key] = out
        return out

    def intra_bw_rank(self, q: np.ndarray, device: str = "cpu") -> np.ndarray:
        """Bandwidth of one rank copying to another rank on its node."""
        if device == "gpu":
            return np.full_like(q, self.gpu_link_bw, dtype=float)
        return np.minimum(self.mem_bw / (2.0 * np.maximum(q, 1.0)), self.mpi_pair_bw)

    def bw_rank(self, r: ArrayLike, device: str = "cpu") -> np.ndarray:
        """Point-to-point bandwidth a rank gets when all ``r`` ranks communicate."""
        n, q = self.place(r, device)
        return np.where(n > 1, np.minimum(self.inj_bw / q, self.intra_bw_rank(q, device)), self.intra_bw_rank(q, device))

    # ------------------------------------------------------------------ local kernels

    def rate(self, kind: str) -> float:
        figures = self.cal.get(kind)
        if figures and "rows_per_s" in figures:
            return float(figures["rows_per_s"])
        return DEFAULT_ROWS_PER_S[kind] * self.clock_scale

    def overhead(self, kind: str) -> float:
        figures = self.cal.get(kind)
        if figures and "overhead_s" in figures:
            return float(figures["overhead_s"])
        return DEFAULT_OVERHEAD_S

    def sync(self, r: ArrayLike, device: str = "cpu") -> np.ndarray:
        r = _arr(r)
        key = ("sync", r.tobytes(), r.shape, device)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = np.ceil(np.log2(np.maximum(r, 1.0))) * (self.alpha(r, device) + STEP_SYNC_S)
        return hit

    def _grid_arrays(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(1/r, q/(r*mem_bw), sync(r), kernel threads per rank, ranks per node) for a CPU
        rank grid, memoised."""
        key = ("grid", r.tobytes(), r.shape)
        hit = self._memo.get(key)
        if hit is None:
            _, q = self.place(r)
            threads = np.maximum(1.0, np.floor(self.cores_per_node / q))
            hit = self._memo[key] = (1.0 / r, q / (r * self.mem_bw), self.sync(r), threads, q)
        return hit

    def rank_speedup(self, kind: str, ranks_per_node: ArrayLike, threads: ArrayLike) -> np.ndarray | float:
        """A rank's speed relative to one lone core: its share of the node's all-core
        speed-up, ``thread_speedup(q * threads) / q`` (ranks on a node share its memory bus
        as a rank's threads do); 1 when not calibrated (one core per rank)."""
        if not self._calibrated_speedup(kind):
            return 1.0
        q = _arr(ranks_per_node)
        return self.thread_speedup(kind, q * _arr(threads)) / q

    def _calibrated_speedup(self, kind: str) -> bool:
        figures = self.cal.get(kind)
        return bool(figures and "parallel_speedup" in figures and figures.get("threads", 1.0) > 1.0)

    def thread_speedup(self, kind: str, threads: ArrayLike) -> np.ndarray | float:
        """Speedup of one rank's kernel ``kind`` on ``threads`` threads: linear in the threads
        through calibration's ``parallel_speedup`` on ``threads`` cores, never above the
        thread count; 1 (one core per rank) when not calibrated."""
        if not self._calibrated_speedup(kind):
            return 1.0
        figures = self.cal[kind]
        per_thread = (float(figures["parallel_speedup"]) - 1.0) / (float(figures["threads"]) - 1.0)
        t = _arr(threads)
        return np.minimum(t, 1.0 + per_thread * (t - 1.0))

    def width_factor(self, kind: str, row_bytes: float | None) -> float:
        """Rate multiplier for an op touching ``row_bytes`` bytes per row when ``calibrate``
        measured ``kind`` touching ``calibration[kind].row_bytes`` (1 when either is unknown)."""
        figures = self.cal.get(kind)
        if row_bytes is None or row_bytes <= 0 or not figures or "row_bytes" not in figures:
            return 1.0
        return float(figures["row_bytes"]) / row_bytes

    def compute(
        self, kind: str, rows: float, nbytes: float, r: ArrayLike, touch: float = 2.0, row_bytes: float | None = None
    ) -> np.ndarray:
        """Seconds of the local kernel ``kind`` over ``rows`` input rows / ``nbytes`` bytes
        split evenly over ``r`` CPU ranks (see the module docstring); ``row_bytes``: the bytes
        per row the kernel reads and writes, for kinds calibrated with ``row_bytes``."""
        r = _arr(r)
        inv_r, mem_term, sync, threads, q = self._grid_arrays(r)
        rate = self.rate(kind) * self.rank_speedup(kind, q, threads) * self.width_factor(kind, row_bytes)
        # memory floor over the bytes the kernel touches: with row_bytes only the columns it
        # reads and keeps (a filter reading 3 of 4 columns), else the whole input
        touched = rows * row_bytes if row_bytes is not None and row_bytes > 0 else nbytes
        t = np.maximum((rows / rate) * inv_r, (touch * touched) * mem_term)
        if kind == "sort":
            n_local = rows * inv_r
            t = t * np.maximum(1.0, np.log2(np.maximum(n_local, 2.0)) / math.log2(REF_SORT_ROWS))
        return (self.overhead(kind) + t) + sync

    def memory_cap(self, r: ArrayLike, device: str = "cpu") -> np.ndarray:
        """Bytes one rank may use."""
        r = _arr(r)
        key = ("cap", r.tobytes(), r.shape, device)
        hit = self._memo.get(key)
        if hit is None:
            _, q = self.place(r, device)
            if device == "gpu":
                hit = np.full_like(q, self.gpu_mem * MEMORY_USABLE_FRACTION, dtype=float)
            else:
                hit = self.mem_per_node * MEMORY_USABLE_FRACTION / q
            self._memo[key] = hit
        return hit

    def fits(self, per_rank_bytes: ArrayLike, r: ArrayLike, device: str = "cpu") -> np.ndarray:
        return _arr(per_rank_bytes) <= self.memory_cap(r, device)

    def guard(self, t: np.ndarray, per_rank_bytes: ArrayLike, r: ArrayLike, device: str = "cpu") -> np.ndarray:
        """``t`` where the working set fits in a rank's memory, ``inf`` elsewhere; also
        ``inf`` for rank counts above the machine's."""
        r = _arr(r)
        per = _arr(per_rank_bytes)
        cap = self.memory_cap(r, device)
        top = self.max_ranks(device)
        # fast path: everything fits and no rank count is too large
        if (per.ndim == 0 or per.shape == r.shape) and float(np.max(per)) <= float(np.min(cap)) and float(np.max(r)) <= top:
            return t
        ok = (per <= cap) & (r <= top)
        return np.where(ok, t, np.inf)

    def guard_total(self, t: np.ndarray, total_bytes: float, r: ArrayLike, device: str = "cpu", replicated: float = 0.0) -> np.ndarray:
        """``guard`` for a working set of ``total_bytes / r + replicated`` bytes per rank
        (scalar fast path when even one rank's share fits)."""
        r = _arr(r)
        key = ("capmin", r.tobytes(), r.shape, device)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = (float(np.min(self.memory_cap(r, device))), float(np.min(r)), float(np.max(r)))
        cap_min, r_min, r_max = hit
        if total_bytes / r_min + replicated <= cap_min and r_max <= self.max_ranks(device):
            return t
        return self.guard(t, total_bytes / r + replicated, r, device)

    # ------------------------------------------------------------------ I/O

    def io_bw(self, r: ArrayLike, write: bool = False) -> np.ndarray:
        n, _ = self.place(r)
        aggregate = self.fs_write_aggregate if write else self.fs_aggregate
        return np.minimum(aggregate, n * self.fs_node)

    def _codec(self, kind: str, rows: float, nbytes: float, r: np.ndarray) -> np.ndarray:
        """Per-rank encode/decode seconds: rows at ``rows_per_s`` and, when calibrated, bytes
        at ``calibration[kind].bytes_per_s`` (whichever is slower)."""
        t = rows / r / self.rate(kind)
        bps = (self.cal.get(kind) or {}).get("bytes_per_s")
        if bps:
            t = np.maximum(t, nbytes / r / float(bps))
        return t

    def read(self, kind: str, rows: float, nbytes: float, r: ArrayLike) -> np.ndarray:
        r = _arr(r)
        t = np.maximum(self._codec(kind, rows, nbytes, r), nbytes / self.io_bw(r))
        return self.overhead(kind) + t + self.sync(r)

    def write(self, kind: str, rows: float, nbytes: float, r: ArrayLike) -> np.ndarray:
        r = _arr(r)
        t = np.maximum(self._codec(kind, rows, nbytes, r), nbytes / self.io_bw(r, write=True))
        return self.overhead(kind) + t + self.sync(r)

    # ------------------------------------------------------------------ collectives

    def alltoall(self, total_bytes: float, r: ArrayLike, device: str = "cpu") -> np.ndarray:
        r = _arr(r)
        n, q = self.place(r, device)
        intra_a = self.gpu_alpha_intra if device == "gpu" else self.alpha_intra
        lat = (q - 1) * intra_a + (r - q) * self.alpha_net
        t_net = np.where(n > 1, total_bytes * (n - 1) / (n * n) / self.inj_bw, 0.0)
        t_in = (total_bytes / r) * (q - 1) / r / self.intra_bw_rank(q, device)
        return np.where(r > 1, lat + t_net + t_in, 0.0)

    def broadcast(self, nbytes: float, r: ArrayLike, device: str = "cpu") -> np.ndarray:
        r = _arr(r)
        n, q = self.place(r, device)
        intra_a = self.gpu_alpha_intra if device == "gpu" else self.alpha_intra
        in_bw = self.gpu_link_bw if device == "gpu" else min(self.mem_bw / 2.0, self.mpi_pair_bw)
        tree = np.ceil(np.log2(n)) * (self.alpha_net + nbytes / self.inj_bw) + np.ceil(np.log2(q)) * (
            intra_a + nbytes / in_bw
        )
        bw = np.where(n > 1, np.minimum(self.inj_bw, in_bw), in_bw)
        vdg = (np.log2(np.maximum(r, 1.0)) + r - 1) * self.alpha(r, device) + 2 * nbytes / bw
        return np.where(r > 1, np.minimum(tree, vdg), 0.0)

    def gather(self, total_bytes: float, r: ArrayLike, device: str = "cpu") -> np.ndarray:
        r = _arr(r)
        n, _ = self.place(r, device)
        t = (
            np.ceil(np.log2(np.maximum(r, 1.0))) * self.alpha(r, device)
            + np.where(n > 1, total_bytes * (n - 1) / n / self.inj_bw, 0.0)
            + 2 * total_bytes * (r - 1) / r / self.mem_bw
        )
        return np.where(r > 1, t, 0.0)

    def allgather(self, total_bytes: float, r: ArrayLike, device: str = "cpu") -> np.ndarray:
        r = _arr(r)
        n, q = self.place(r, device)
        t = (
            (r - 1) * self.alpha(r, device)
            + np.where(n > 1, total_bytes * (n - 1) / n / self.inj_bw, 0.0)
            + 2 * q * total_bytes * (r - 1) / r / self.mem_bw
        )
        return np.where(r > 1, t, 0.0)

    def allreduce(self, nbytes: float, r: ArrayLike, device: str = "cpu") -> np.ndarray:
        r = _arr(r)
        a, bw = self.alpha(r, device), self.bw_rank(r, device)
        ring = 2 * (r - 1) * a + 2 * nbytes * (r - 1) / r / bw
        rd = np.ceil(np.log2(np.maximum(r, 1.0))) * (a + nbytes / bw)
        return np.where(r > 1, np.minimum(ring, rd), 0.0)

    def halo(self, nbytes: float, r: ArrayLike, device: str = "cpu") -> np.ndarray:
        r = _arr(r)
        return np.where(r > 1, 2 * (self.alpha(r, device) + nbytes / self.bw_rank(r, device)), 0.0)

    def redistribute(self, total_bytes: float, r1: ArrayLike, r2: ArrayLike) -> np.ndarray:
        r1, r2 = np.broadcast_arrays(_arr(r1), _arr(r2))
        lo, hi = np.minimum(r1, r2), np.maximum(r1, r2)
        n_hi, q_hi = self.place(hi)
        _, q_lo = self.place(lo)
        bw = np.where(n_hi > 1, np.minimum(self.inj_bw / q_lo, self.intra_bw_rank(q_hi)), self.intra_bw_rank(q_hi))
        t = np.ceil(hi / lo) * self.alpha(hi) + (total_bytes / lo) / bw
        return np.where(r1 == r2, 0.0, t)

    # ------------------------------------------------------------------ deep learning

    def dl_time(
        self,
        flops: float,
        data_bytes: float,
        param_bytes: float,
        steps: float,
        r: ArrayLike,
        device: str,
    ) -> np.ndarray:
        """Data-parallel training (``steps`` > 0: one gradient allreduce per step) or inference
        (``steps`` = 0) on ``r`` ranks of ``device``; ``inf`` if it does not fit or the machine
        has no such device."""
        r = _arr(r)
        if device == "gpu":
            if self.total_gpus == 0:
                return np.full_like(r, np.inf)
            peak = self.gpu_flops * DL_GPU_EFFICIENCY
            copy = (data_bytes / r) / self.cpu_gpu_bw
        else:
            peak = self.cpu_flops_core * DL_CPU_EFFICIENCY
            copy = 0.0
        t = flops / (r * peak) + copy + steps * (self.allreduce(param_bytes, r, device) + DL_STEP_OVERHEAD_S[device])
        t = t + DEFAULT_OVERHEAD_S + self.sync(r, device)
        per_rank = data_bytes / r + 4 * param_bytes  # data shard + params, grads, 2 optimizer moments
        return self.guard(t, per_rank, r, device)


def rank_grid(max_ranks: int, factor: int = 2) -> list[int]:
    """1, f, f^2, ... below ``max_ranks``, then ``max_ranks`` itself."""
    factor = max(2, int(factor))
    grid, r = [], 1
    while r < max_ranks:
        grid.append(r)
        r *= factor
    grid.append(max(1, max_ranks))
    return grid
