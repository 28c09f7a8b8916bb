"""Island placement (``placement="plan"``): a dataframe island runs on
``min(island.ranks, ranks)`` ranks over a sub-communicator, inputs and results move between
islands of different widths (order kept), and results equal the all-ranks run and DuckDB."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opgraph.runtime import executor
from opgraph.runtime import parallel_ops as P
from opgraph.runtime.executor import ISLAND_TIMELINE, run_local
from opgraph.runtime.local_comm import run_ranks
from test_runtime_local import assert_same, duck
from test_runtime_random import make_tables, pipeline_of, random_pipelines

import opgraph as og


@og.pipeline
def filter_join_group_sort(a, b):
    t = a[a["v"] > 0]
    t = t.assign(w=t["v"] * 2.0)
    j = t.merge(b, left_on="x", right_on="bk", how="inner")
    g = j.groupby("x").agg(total=("w", "sum"), n=("bv", "count"))
    return g.sort_values("total", ascending=False)


SQL = """SELECT x, sum(v * 2.0) AS total, count(bv) AS n FROM a JOIN b ON a.x = b.bk
         WHERE v > 0 GROUP BY x ORDER BY total DESC"""


def _with_widths(doc, widths):
    doc = doc.model_copy(deep=True)
    for island, width in zip(doc.islands, widths):
        island.ranks = width
    return doc


@pytest.mark.parametrize("ranks", [2, 3, 4])
@pytest.mark.parametrize("pattern", ["one", "alternate", "descending"])
def test_islands_run_on_their_width(ranks, pattern):
    a, b = make_tables(7, 400, 40, 0.2)
    plan = filter_join_group_sort.compile(a, b)
    n = len(plan.doc.islands)
    widths = {
        "one": [1] * n,
        "alternate": [1 if i % 2 else ranks for i in range(n)],
        "descending": [max(1, ranks - i) for i in range(n)],
    }[pattern]
    doc = _with_widths(plan.doc, widths)
    ISLAND_TIMELINE.clear()
    (ours,) = run_local(doc, plan.inputs, ranks, placement="plan")
    assert_same(ours, duck(SQL, a=a, b=b), ordered=True)
    ran = {}
    for entry in ISLAND_TIMELINE:
        ran.setdefault(entry["island"], set()).add(len(entry["ranks"]))
    for island, width in zip(doc.islands, widths):
        assert ran[island.name] == {min(width, ranks)}, island.name


def test_default_placement_uses_every_rank(monkeypatch):
    monkeypatch.delenv("OPGRAPH_PLACEMENT", raising=False)
    a, b = make_tables(8, 100, 10, 0.0)
    plan = filter_join_group_sort.compile(a, b)
    doc = _with_widths(plan.doc, [1] * len(plan.doc.islands))
    ISLAND_TIMELINE.clear()
    run_local(doc, plan.inputs, 3)
    assert {len(e["ranks"]) for e in ISLAND_TIMELINE} == {3}
    monkeypatch.setenv("OPGRAPH_PLACEMENT", "plan")
    ISLAND_TIMELINE.clear()
    run_local(doc, plan.inputs, 3)
    assert {len(e["ranks"]) for e in ISLAND_TIMELINE} == {1}
    with pytest.raises(og.OpgraphError, match="unknown placement"):
        run_local(doc, plan.inputs, 2, placement="nodes")


def test_failure_inside_a_subgroup_stops_every_rank(monkeypatch):
    a, b = make_tables(9, 100, 10, 0.0)
    plan = filter_join_group_sort.compile(a, b)
    doc = _with_widths(plan.doc, [2] * len(plan.doc.islands))

    def fail_join_on_rank_1(op, rank):
        if op.op == "df.join" and rank == 1:
            raise ValueError("injected")

    monkeypatch.setattr(executor, "FAULT_HOOK", fail_join_on_rank_1)
    with pytest.raises(executor.ExecutionError, match="injected"):
        run_local(doc, plan.inputs, 4, placement="plan")


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_rebalance_keeps_order_and_evens_out(width):
    table = pa.table({"i": np.arange(23)})
    sizes = [0, 17, 1, 5]  # uneven input partitions

    def body(comm):
        lo = sum(sizes[: comm.rank])
        moved = P.rebalance(comm, table.slice(lo, sizes[comm.rank]), width)
        return moved.column("i").to_pylist()

    parts = run_ranks(4, body)
    assert [i for p in parts for i in p] == list(range(23))
    expected = [23 * (t + 1) // width - 23 * t // width if t < width else 0 for t in range(4)]
    assert [len(p) for p in parts] == expected


@settings(
    max_examples=int(os.environ.get("OPGRAPH_RANDOM_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(random_pipelines(), st.lists(st.integers(1, 4), min_size=12, max_size=12))
def test_random_pipelines_with_random_island_widths_match_duckdb(case, widths):
    seed, rows, brows, null_p, builder, ranks = case
    a, b = make_tables(seed, rows, brows, null_p)
    plan = pipeline_of(builder).compile(a, b)
    doc = _with_widths(plan.doc, widths)
    (ours,) = run_local(doc, plan.inputs, ranks, placement="plan")
    try:
        assert_same(ours, duck(builder.sql, a=a, b=b), ordered=builder.sorted)
    except AssertionError as e:
        pytest.fail(f"ranks={ranks} widths={widths[: len(doc.islands)]}\nSQL: {builder.sql}\n{e}")


def test_pipeline_run_follows_the_compilers_ranks_for_tiny_inputs():
    a, b = make_tables(11, 30, 5, 0.0)
    ISLAND_TIMELINE.clear()
    out = filter_join_group_sort.run(a, b, ranks=3, placement="plan")
    assert_same(out, duck(SQL, a=a, b=b), ordered=True)
    # tiny inputs: the compiler picks one rank for every island, and the run follows it
    assert {len(e["ranks"]) for e in ISLAND_TIMELINE} == {1}
    with pytest.raises(og.OpgraphError, match="placement= is for the local engine"):
        filter_join_group_sort.run(a, b, engine="mpi", ranks=2, placement="plan")
