"""The cost model (passes/cost_model.py), statistics (annotate-statistics) and patterns
(classify-patterns): formulas, calibration, memory, the scaling inflection on Summit, and
that annotated IR verifies upstream."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from opgraph.dialects import dataframe as df
from opgraph.dialects.context import print_module
from opgraph.dialects.machine import attach_machine
from opgraph.dialects.upstream_verify import verify_text
from opgraph.passes.annotate_statistics import DEFAULT_ROWS, dataflow_ops
from opgraph.passes.choose_parallelism import scaling
from opgraph.passes.classify_patterns import PATTERN_NAMES
from opgraph.passes.cost_model import DEFAULT_ROWS_PER_S, CostModel, rank_grid
from opgraph.passes.pipeline import run_pipeline
from opgraph.passes.registry import pass_names
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp

import opgraph as og
from opgraph.hwspec import load_spec

ANALYSES = "annotate-statistics,classify-patterns"


def attrs(op) -> dict:
    out = {}
    for k, v in op.attributes.items():
        if hasattr(v, "value") and hasattr(v.value, "data"):
            out[k] = v.value.data
        elif hasattr(v, "data") and isinstance(v.data, str):
            out[k] = v.data
        else:
            out[k] = v
    return out


def body(module: ModuleOp) -> list:
    return dataflow_ops(module)


def set_sizes(module: ModuleOp, sizes: dict[str, tuple[float, float]]) -> None:
    """Sets df.rows / df.bytes (rows, bytes per row) of the df.input ops by argument name."""
    from opgraph.passes.annotate_statistics import fast_i64

    for op in body(module):
        if isinstance(op, df.InputOp) and op.arg_name.data in sizes:
            rows, width = sizes[op.arg_name.data]
            op.attributes["df.rows"] = fast_i64(int(rows))
            op.attributes["df.bytes"] = fast_i64(int(rows * width))
            # simulated sizes: the tracer's distinct-count sample of the tiny data no longer applies
            op.attributes.pop("df.distinct", None)


def kv(n: int = 4) -> pa.Table:
    return pa.table({"k": pa.array(range(n), pa.int64()), "v": pa.array([0.5] * n, pa.float64())})


# ----------------------------------------------------------------------------- registry


def test_passes_registered():
    names = pass_names()
    for n in ("annotate-statistics", "classify-patterns", "choose-parallelism"):
        assert n in names


# ----------------------------------------------------------------------------- collectives


def test_collectives_alpha_beta_shape():
    m = CostModel(load_spec("summit"))
    r = np.array([1.0, 2.0, 42.0, 84.0, 4200.0])
    for fn in (m.alltoall, m.allgather, m.gather, m.broadcast, m.allreduce, m.halo):
        t = fn(1e9, r)
        assert t[0] == 0.0, fn.__name__  # nothing moves on one rank
        assert np.all(t[1:] > 0), fn.__name__
    # ranks within one node use the intra-node figures, beyond it the network
    assert m.alpha(42.0) < m.alpha(84.0)
    assert m.alpha(84.0) == pytest.approx(m.spec.network_latency_s + 2e-6)
    # latency term of a small all-to-all grows linearly with the ranks
    small = m.alltoall(1.0, np.array([1000.0, 10000.0]))
    assert small[1] / small[0] == pytest.approx(10, rel=0.1)
    # broadcast is logarithmic for small messages
    b = m.broadcast(8.0, np.array([64.0 * 42, 4096.0 * 42]))
    assert b[1] < 2 * b[0]
    # allreduce of a large buffer: ring ~ 2 m / bw, independent of r
    ar = m.allreduce(1e9, np.array([84.0 * 42, 168.0 * 42]))
    assert ar[1] == pytest.approx(ar[0], rel=0.1)
    # redistribution
    assert float(m.redistribute(1e9, 8.0, 8.0)) == 0.0
    assert float(m.redistribute(1e9, 1.0, 8.0)) > 0.0


def test_io_uses_filesystem_bandwidth():
    summit = CostModel(load_spec("summit"))
    laptop = CostModel(load_spec("laptop"))
    nbytes = 1e12
    # one Summit node reads at its injection bandwidth, 100 nodes 100x faster
    one = float(summit.read("read_parquet", 1.0, nbytes, 42.0))
    hundred = float(summit.read("read_parquet", 1.0, nbytes, 4200.0))
    assert one == pytest.approx(nbytes / 23e9, rel=0.05)
    assert hundred < one / 50
    # laptop: the local disk bounds it
    assert float(laptop.read("read_parquet", 1.0, nbytes, 8.0)) == pytest.approx(nbytes / 3.5e9, rel=0.05)


def test_memory_capacity_rejects_plans():
    m = CostModel(load_spec("laptop"))  # 16 GB, 8 cores
    r = np.array([1.0, 8.0])
    t = np.array([1.0, 1.0])
    # 10 GB per rank fits on one rank (12.8 GB usable) but not on 8 ranks sharing 16 GB
    assert list(np.isfinite(m.guard(t, 10e9, r))) == [True, False]
    assert np.all(np.isinf(m.guard(t, 20e9, r)))
    # GPUs: laptop has none
    assert np.all(np.isinf(m.dl_time(1e12, 1e6, 1e6, 10, r, "gpu")))


def test_calibration_figures_are_used():
    spec = load_spec("laptop")
    base = CostModel(spec)
    rows = 1e8
    t0 = float(base.compute("join", rows, 0.0, 1.0))
    assert t0 == pytest.approx(1e-4 + rows / (DEFAULT_ROWS_PER_S["join"] * spec.nodes.cpu.clock_ghz / 3.0))
    calibrated = spec.model_copy(
        update={
            "calibration": {
                "join": {"rows_per_s": 1e6, "overhead_s": 0.5},
                "mpi": {"latency_s": 1e-3, "bandwidth_bytes_per_s": 1e9},
                "memory": {"bandwidth_bytes_per_s": 1e10},
            }
        }
    )
    # through the machine IR, as the passes read it
    module = ModuleOp([])
    attach_machine(module, calibrated)
    m = CostModel.of(module)
    assert float(m.compute("join", rows, 0.0, 1.0)) == pytest.approx(0.5 + rows / 1e6)
    assert m.alpha_intra == 1e-3
    assert m.mem_bw == 1e10
    assert float(m.alltoall(1e9, 2.0)) > float(base.alltoall(1e9, 2.0))


def test_calibrated_thread_speedup_scales_a_ranks_rate():
    spec = load_spec("laptop")
    cores = spec.cores_per_node
    assert cores >= 4
    rows = 1e8
    calibrated = spec.model_copy(
        update={"calibration": {"sort": {"rows_per_s": 1e7, "overhead_s": 0.0, "threads": 2.0, "parallel_speedup": 1.5}}}
    )
    module = ModuleOp([])
    attach_machine(module, calibrated)
    m = CostModel.of(module)
    plain = CostModel(spec)
    # 1.5x on 2 threads = +0.5 per extra thread, capped by the thread count
    assert float(m.thread_speedup("sort", 2.0)) == pytest.approx(1.5)
    assert float(m.thread_speedup("sort", 1.0)) == pytest.approx(1.0)
    assert float(m.thread_speedup("sort", 4.0)) == pytest.approx(2.5)
    assert plain.thread_speedup("sort", 4.0) == 1.0  # uncalibrated: one core per rank
    # one rank owns the node's cores; ranks = cores leave one thread each and share the
    # node's all-core speed-up: the same throughput, split
    one_rank = float(m.compute("sort", rows, 0.0, 1.0))
    full = float(m.compute("sort", rows, 0.0, float(cores)))
    node_speedup = float(m.thread_speedup("sort", float(cores)))
    logf = np.log2(rows) / np.log2(1e7)
    assert one_rank == pytest.approx(rows / (1e7 * node_speedup) * logf, rel=1e-6)
    per_rank = rows / cores / (1e7 * node_speedup / cores)
    assert full - float(m.sync(float(cores))) == pytest.approx(per_rank * np.log2(rows / cores) / np.log2(1e7), rel=1e-6)
    assert float(m.rank_speedup("sort", float(cores), 1.0)) == pytest.approx(node_speedup / cores)
    assert plain.rank_speedup("sort", float(cores), 1.0) == 1.0  # uncalibrated: linear in the ranks
    # a second node adds its own cores
    two_nodes = float(m.compute("sort", rows, 0.0, 2.0 * cores))
    assert two_nodes < full


def test_model_without_machine_ops_uses_laptop():
    m = CostModel.of(ModuleOp([]))
    assert m.spec.name == "laptop"


# ----------------------------------------------------------------------------- inflection


def _sized_join(rows: float, hw: str = "summit"):
    @og.pipeline
    def p(a, b):
        og.write_parquet(a.merge(b, on="k"), "out")  # a sink: no gather to the driver

    traced = p.trace_full(kv(), kv())
    set_sizes(traced.module, {"a": (rows / 2, 16), "b": (rows / 2, 16)})
    attach_machine(traced.module, load_spec(hw))
    run_pipeline(traced.module, ANALYSES)
    join = next(op for op in body(traced.module) if isinstance(op, df.JoinOp))
    return traced.module, join


def test_inflection_of_shuffle_join_on_summit():
    """50 billion rows on Summit: the shuffle join stops scaling where the all-to-all's
    per-message latency overtakes the compute it saves (the seed reports ~10k-way)."""
    module, join = _sized_join(50e9)
    m = CostModel.of(module)
    grid = rank_grid(m.total_cores, 2)
    curve = scaling(module, join, grid)["shuffle-hash:cpu"]
    finite = np.isfinite(curve)
    best = int(np.argmin(np.where(finite, curve, np.inf)))
    r_best = grid[best]
    text = "\n".join(f"  {r:>7} ranks: {t:.4g} s" for r, t in zip(grid, curve))
    assert 1e3 < r_best < 1e5, f"inflection at {r_best} ranks:\n{text}"
    # it does stop scaling: beyond the minimum the time rises again
    assert curve[-1] > 1.2 * curve[best], text
    # and at few ranks it does not fit in memory (800 GB over a handful of ranks)
    assert not finite[0], text
    print(f"shuffle join 50e9 rows on summit: minimum at {r_best} ranks\n{text}")


def test_inflection_of_sample_sort_on_summit():
    @og.pipeline
    def p(a):
        og.write_parquet(a.sort_values("v"), "out")

    traced = p.trace_full(kv())
    set_sizes(traced.module, {"a": (50e9, 16)})
    attach_machine(traced.module, load_spec("summit"))
    run_pipeline(traced.module, ANALYSES)
    sort = next(op for op in body(traced.module) if isinstance(op, df.SortOp))
    grid = rank_grid(CostModel.of(traced.module).total_cores, 2)
    curve = scaling(traced.module, sort, grid)["sample-sort:cpu"]
    best = int(np.argmin(curve))
    text = "\n".join(f"  {r:>7} ranks: {t:.4g} s" for r, t in zip(grid, curve))
    assert 1e3 < grid[best] < 1e5, text
    assert curve[-1] > 2 * curve[best], text


# ----------------------------------------------------------------------------- statistics


def test_statistics_from_parquet_footer(tmp_path):
    path = tmp_path / "e.parquet"
    n = 10_000
    rng = np.random.default_rng(0)
    pq.write_table(
        pa.table({"k": rng.integers(0, 100, n), "v": rng.random(n), "s": [f"name{i % 7}" for i in range(n)]}),
        path,
        row_group_size=2_500,
    )

    @og.pipeline
    def p(path):
        t = og.read_parquet(path)
        f = t[t["k"] == 3]
        g = t.groupby("k").agg(total=("v", "sum"))
        return f, g, t.head(5), t.agg(m=("v", "mean"))

    module = p.trace(str(path))
    run_pipeline(module, ANALYSES)
    ops = body(module)
    read = attrs(ops[0])
    assert read["df.rows"] == n
    assert read["df.bytes"] > n * 16  # two 8-byte columns and a string column
    distinct = {k: v.value.data for k, v in ops[0].attributes["df.distinct"].data.items()}
    assert distinct["k"] <= 100
    by = {op.name: attrs(op) for op in ops}
    assert by["df.filter"]["df.rows"] == pytest.approx(n / distinct["k"], rel=0.05)  # 1/d(k)
    assert by["df.groupby_agg"]["df.rows"] == distinct["k"]
    assert by["df.head"]["df.rows"] == 5
    assert by["df.aggregate"]["df.rows"] == 1
    for op in ops:
        assert op.attributes["taskgraph.pattern"].data in PATTERN_NAMES


def test_statistics_defaults_and_inputs():
    @og.pipeline
    def p(a):
        u = a[a["v"] > 0.25]
        return u.merge(a, on="k", how="left")

    module = p.trace(kv(100))
    run_pipeline(module, ANALYSES)
    ops = body(module)
    first = attrs(ops[0])
    assert first["df.rows"] == 100  # from the tracer's df.rows on df.input
    assert first["df.bytes"] > 0
    by = {op.name: attrs(op) for op in ops}
    assert by["df.filter"]["df.rows"] == 50  # default selectivity 0.5
    # the tracer sampled the input's distinct counts (every row is in the sample here)
    assert {k: v.value.data for k, v in ops[0].attributes["df.distinct"].data.items()} == {"k": 100, "v": 1}
    # left join: max(inner, L) with inner = L * R / max(d_L(k), d_R(k)) = 50 * 100 / 100
    assert by["df.join"]["df.rows"] == 50
    assert DEFAULT_ROWS == 1_000_000


def test_missing_file_gets_default_rows(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(kv(3), path)

    @og.pipeline
    def p(path):
        return og.read_parquet(path)

    module = p.trace(str(path))
    path.unlink()
    run_pipeline(module, "annotate-statistics")
    assert attrs(body(module)[0])["df.rows"] == DEFAULT_ROWS


def test_patterns_on_every_op():
    @og.pipeline
    def p(a, b):
        j = a.merge(b, on="k")
        g = j.groupby("k").agg(s=("v_x", "sum"))
        w = g.sort_values("s")
        w = w.assign(r=w["s"].rolling(2).mean())
        return w, og.concat([a, b]).drop_duplicates(), a.agg(t=("v", "sum"))

    module = p.trace(kv(), kv())
    run_pipeline(module, ANALYSES)
    got = {op.name: op.attributes["taskgraph.pattern"].data for op in body(module)}
    assert got["df.join"] == "shuffle-compute"
    assert got["df.groupby_agg"] == "combine-shuffle-reduce"
    assert got["df.sort"] == "sample-shuffle-compute"
    assert got["df.window"] == "halo-exchange"
    assert got["df.aggregate"] == "globally-reduce"
    assert got["df.input"] == "partitioned-io"
    assert got["df.distinct"] == "combine-shuffle-reduce"
    assert set(got.values()) <= set(PATTERN_NAMES)


def test_annotated_ir_verifies_upstream():
    module, _ = _sized_join(1e6)
    run_pipeline(module, "choose-parallelism")
    text = print_module(module)
    for name in ("df.rows", "df.bytes", "taskgraph.pattern", "taskgraph.algorithm", "taskgraph.ranks",
                 "taskgraph.device", "taskgraph.partitioning", "taskgraph.cost", "taskgraph.bytes_moved",
                 "taskgraph.makespan"):
        assert name in text, name
    assert verify_text(text) is None
    assert any(isinstance(op, func.FuncOp) for op in module.body.block.ops)


def test_sampled_distinct_counts_of_in_memory_inputs():
    """``sample_distinct`` reads an evenly spaced sample, not the whole table: keys with few
    values come out close to exact, unique keys as the row count, others within the GEE bounds."""
    from opgraph.passes.annotate_statistics import sample_distinct

    n = 200_000
    t = pa.table(
        {
            "g": pa.array(np.arange(n) % 1000, pa.int64()),
            "u": pa.array(np.arange(n), pa.int64()),
            "h": pa.array(np.random.default_rng(0).integers(0, 50_000, n), pa.int64()),
        }
    )
    d = sample_distinct(t, sample_rows=10_000)
    assert 1000 <= d["g"] <= 1020  # every value sampled ~10 times; GEE adds sqrt(N/n) per singleton
    assert d["u"] == n
    true_h = len(np.unique(t["h"].to_numpy()))
    assert true_h / 4 <= d["h"] <= n  # GEE's guarantee: within sqrt(N/n) of the truth
    assert sample_distinct(pa.table({"x": pa.array([], pa.int64())})) == {}


def test_calibrated_filter_and_groupby_rates_scale_with_the_bytes_they_touch():
    from opgraph.passes.choose_parallelism import _filter_row_bytes, _groupby_row_bytes

    spec = load_spec("laptop").model_copy(
        update={
            "calibration": {
                "filter": {"rows_per_s": 1e8, "overhead_s": 0.0, "row_bytes": 40.0},
                "groupby": {"rows_per_s": 1e8, "overhead_s": 0.0, "row_bytes": 24.0},
            }
        }
    )
    m = CostModel(spec)
    assert m.width_factor("filter", 20.0) == 2.0
    assert m.width_factor("filter", None) == 1.0
    assert m.width_factor("sort", 8.0) == 1.0  # not calibrated with row_bytes
    assert CostModel(load_spec("laptop")).width_factor("filter", 20.0) == 1.0
    rows = 1e7
    assert float(m.compute("filter", rows, 0.0, 1.0, row_bytes=20.0)) == pytest.approx(rows / 2e8)
    # the memory floor counts the bytes the op touches (row_bytes), not the whole input's
    slow_memory = load_spec("laptop").model_copy(
        update={"calibration": {**spec.calibration, "memory": {"bandwidth_bytes_per_s": 1e9}}}
    )
    sm = CostModel(slow_memory)
    wide_input = rows * 400.0  # 50 float64 columns, the filter touches 20 bytes of each row
    assert float(sm.compute("filter", rows, wide_input, 1.0, row_bytes=20.0)) == pytest.approx(2 * rows * 20.0 / 1e9)
    assert float(sm.compute("filter", rows, wide_input, 1.0)) == pytest.approx(2 * wide_input / 1e9)

    t = pa.table({c: np.arange(100, dtype=np.float64) for c in "abcd"}).append_column("k", pa.array(np.arange(100) % 7))

    @og.pipeline
    def keep_two(t):
        t = t[t["a"] > 0.5]
        return t[["b", "c"]]

    @og.pipeline
    def keep_all(t):
        return t[t["a"] > 0.5]

    @og.pipeline
    def group(t):
        return t.groupby("k").agg(s=("a", "sum"), m=("a", "mean"), x=("b", "max"))

    def first(module, cls):
        return next(op for op in module.walk() if isinstance(op, cls))

    # the predicate's column plus the kept ones (the runtime gathers only what readers keep)
    assert _filter_row_bytes(first(keep_two.trace(t), df.FilterOp)) == 8 + 16
    assert _filter_row_bytes(first(keep_all.trace(t), df.FilterOp)) == 8 + 40
    # keys and each aggregated column once
    assert _groupby_row_bytes(first(group.trace(t), df.GroupByAggOp), ["k"]) == 8 + 16
