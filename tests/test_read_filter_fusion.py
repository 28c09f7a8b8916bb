"""A filter that is the only reader of a source runs on each piece as it is read
(executor._Executor.read, io.read_source's ``each_piece``): results equal DuckDB's on
Parquet (many row groups, pieces filtered empty), CSV and IPC sources, on 1-3 ranks; a
failing predicate names the filter's line; a source with two readers is not fused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opgraph.runtime import executor as ex
from opgraph.runtime import io as IO
from opgraph.runtime.executor import ExecutionError, run_local
from pyarrow import feather
from test_runtime_local import EV, assert_same, duck

import opgraph as og

RANKS = (1, 2, 3)
THIS = Path(__file__).name


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch):
    monkeypatch.setattr(IO, "_PIECE_ROWS", 50)  # several pieces per rank from the small tables


def _fused_runs(pipe, *args, ranks=RANKS):
    plan = pipe.compile(*args)
    for r in ranks:
        before = ex.STATS["filters_fused_into_reads"]
        out = run_local(plan.doc, plan.inputs, r)[0]
        yield r, out, ex.STATS["filters_fused_into_reads"] - before


def check_fused(pipe, args, expected, ranks=RANKS) -> None:
    """Every rank read through the filter, and the result is DuckDB's."""
    for r, out, fused in _fused_runs(pipe, *args, ranks=ranks):
        assert fused == r, f"ranks={r}: {fused} reads fused"
        assert_same(out, expected)


@og.pipeline
def filter_project_pipe(path):
    t = og.read_parquet(path)
    t = t[(t["v"] > 0) | t["s"].isin(["a", "é"])]
    return t[["id", "s", "v"]]


def test_parquet_filter_project_equals_duckdb(tmp_path):
    p = tmp_path / "ev.parquet"
    pq.write_table(EV, p, row_group_size=23)  # pieces of 2-3 row groups, each with its dictionary
    expected = duck(f"SELECT id, s, v FROM read_parquet('{p}') WHERE v > 0 OR s IN ('a', 'é')")
    for r, out, fused in _fused_runs(filter_project_pipe, str(p)):
        assert fused == r, r  # every rank read through the filter
        assert out.column_names == ["id", "s", "v"] and out.schema.field("s").type == pa.string()
        assert_same(out, expected)


@og.pipeline
def filter_join_pipe(path, users):
    t = og.read_parquet(path)
    t = t[t["id"] >= 200]  # only the last row groups keep rows
    u = og.read_parquet(users)
    return t.merge(u, on="k", how="inner")


def test_pieces_filtered_empty_and_a_join_after(tmp_path):
    p, u = tmp_path / "ev.parquet", tmp_path / "u.parquet"
    pq.write_table(EV, p, row_group_size=10)
    pq.write_table(pa.table({"k": [0, 1, 2, 99], "w": [1.5, 2.5, 3.5, 4.5]}), u)
    expected = duck(f"SELECT * FROM read_parquet('{p}') e JOIN read_parquet('{u}') w USING (k) WHERE id >= 200")
    check_fused(filter_join_pipe, (str(p), str(u)), expected)


@og.pipeline
def nothing_left_pipe(path):
    t = og.read_parquet(path)
    t = t[t["i"] > 1000]
    return t[["s", "i"]]


def test_everything_filtered_keeps_the_projected_schema(tmp_path):
    p = tmp_path / "ev.parquet"
    pq.write_table(EV, p, row_group_size=40)
    for r, out, fused in _fused_runs(nothing_left_pipe, str(p)):
        assert fused == r and out.num_rows == 0
        assert out.schema.names == ["s", "i"] and out.schema.field("s").type == pa.string()


@og.pipeline
def csv_pipe(path):
    t = og.read_csv(path)
    return t[(t["i"] > 3) | t["i"].isnull()]


@og.pipeline
def ipc_pipe(path):
    t = og.read_ipc(path)
    return t[t["s"].str.len() > 1]


def test_csv_and_ipc_sources(tmp_path):
    d_csv, d_ipc = tmp_path / "csv", tmp_path / "ipc"
    d_csv.mkdir()
    d_ipc.mkdir()
    for n in range(4):
        part = EV.slice(n * 60, 60).select(["id", "i", "s"])
        pacsv.write_csv(part.select(["id", "i"]), d_csv / f"part-{n}.csv")  # (CSV: "" reads as null)
        feather.write_feather(part, d_ipc / f"part-{n}.arrow", chunksize=25)  # 3 record batches
    whole = EV.select(["id", "i", "s"])
    exp_csv = duck("SELECT id, i FROM t WHERE i > 3 OR i IS NULL", t=whole)
    exp_ipc = duck("SELECT * FROM t WHERE length(s) > 1", t=whole)
    check_fused(csv_pipe, (str(d_csv),), exp_csv)
    check_fused(ipc_pipe, (str(d_ipc),), exp_ipc)


@og.pipeline
def two_readers_pipe(path):
    t = og.read_parquet(path)
    hot = t[t["v"] > 5]
    return hot.merge(t[["id", "k"]], on="id", how="inner")


def test_a_source_with_two_readers_is_read_whole(tmp_path):
    p = tmp_path / "ev.parquet"
    pq.write_table(EV, p, row_group_size=50)
    expected = duck(f"SELECT a.*, b.k AS k_y FROM read_parquet('{p}') a JOIN read_parquet('{p}') b USING (id) WHERE a.v > 5")
    plan = two_readers_pipe.compile(str(p))
    for r in RANKS:
        before = ex.STATS["filters_fused_into_reads"]
        out = run_local(plan.doc, plan.inputs, r)[0]
        assert ex.STATS["filters_fused_into_reads"] == before
        assert_same(out.rename_columns(expected.column_names), expected)


@og.pipeline
def bad_predicate_pipe(path):
    t = og.read_parquet(path)
    return t[t["s"].astype("int64") > 3]  # BAD-PREDICATE-LINE


def test_a_failing_predicate_names_the_filters_line(tmp_path):
    p = tmp_path / "s.parquet"
    pq.write_table(pa.table({"s": [str(i) for i in range(300)] + ["x9"]}), p, row_group_size=30)
    line = next(i for i, text in enumerate(Path(__file__).read_text().splitlines(), 1) if "BAD-PREDICATE-LINE" in text and "astype" in text)
    plan = bad_predicate_pipe.compile(str(p))
    for r in RANKS:
        with pytest.raises(ExecutionError) as info:
            run_local(plan.doc, plan.inputs, r)
        assert info.value.file.endswith(THIS) and info.value.line == line, (r, info.value)
        assert "x9" in info.value.message


@og.pipeline
def threshold_pipe(path, lo, hi):
    t = og.read_parquet(path)
    t = t[(t["a"] >= lo) & (t["a"] < hi) | t["b"].isnull()]
    return t[["b", "a"]]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 400),
    group=st.integers(1, 120),
    piece=st.integers(1, 300),
    lo=st.integers(-50, 50),
    width=st.integers(0, 60),
    nulls=st.floats(0, 0.5),
    seed=st.integers(0, 2**16),
)
def test_random_pieces_and_predicates_equal_duckdb(tmp_path, monkeypatch, n, group, piece, lo, width, nulls, seed):
    monkeypatch.setattr(IO, "_PIECE_ROWS", piece)
    rng = np.random.default_rng(seed)
    t = pa.table(
        {
            "a": pa.array(rng.integers(-60, 60, n), pa.int64(), mask=rng.random(n) < nulls),
            "b": pa.array(rng.random(n), pa.float64(), mask=rng.random(n) < nulls),
        }
    )
    p = tmp_path / f"t{seed}-{n}-{group}.parquet"
    pq.write_table(t, p, row_group_size=group)
    expected = duck(f"SELECT b, a FROM t WHERE (a >= {lo} AND a < {lo + width}) OR b IS NULL", t=t)
    check_fused(threshold_pipe, (str(p), lo, lo + width), expected, ranks=(1, 2))
