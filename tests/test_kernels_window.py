"""Window kernels (runtime/kernels/windowing: halo plan + packing, rolling/diff/shift over
[halo ; partition ; halo] in place): hypothesis against pandas' rolling(k) (min_periods = k)
/shift/diff and DuckDB window functions, on explicit partitions of 0..k+2 rows across 1-4
local ranks and through the public API (og.pipeline + run(engine="local", ranks=r))."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opgraph.runtime import parallel_ops as P
from opgraph.runtime.kernels import windowing as W
from opgraph.runtime.local_comm import run_ranks
from support import needs_mpi

import opgraph as og

FUNCS = ("rolling_sum", "rolling_mean", "rolling_min", "rolling_max", "shift", "diff")
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def result_type(func: str, t: pa.DataType) -> pa.DataType:
    if func == "rolling_mean":
        return pa.float64()
    if func == "rolling_sum":
        return pa.float64() if pa.types.is_floating(t) else pa.int64()
    if func == "diff":
        return t if pa.types.is_floating(t) else pa.float64()
    return t


def pandas_expected(values: list, t: pa.DataType, func: str, param: int) -> list:
    """pandas' answer with nulls as missing (rolling: min_periods = k)."""
    s = pd.Series([np.nan if v is None else v for v in values], dtype="float64")
    if func.startswith("rolling_"):
        r = getattr(s.rolling(param, min_periods=param), func.split("_")[1])()
    elif func == "shift":
        r = s.shift(param)
    else:
        r = s.diff(param)
    out = [None if math.isnan(v) else v for v in r.tolist()]
    if (
        func in ("shift", "rolling_min", "rolling_max")
        and not pa.types.is_floating(t)
        or (func == "rolling_sum" and not pa.types.is_floating(t))
    ):
        out = [None if v is None else int(v) for v in out]
    return out


def same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        if a is None or b is None:
            assert a is None and b is None, (i, got, want)
        else:
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (i, got, want)


values_st = st.one_of(
    st.tuples(
        st.just(pa.int64()),
        st.lists(st.one_of(st.none(), st.integers(-1000, 1000)), max_size=30),
    ),
    st.tuples(
        st.just(pa.int32()),
        st.lists(st.one_of(st.none(), st.integers(-1000, 1000)), max_size=30),
    ),
    st.tuples(
        st.just(pa.float64()),
        st.lists(
            st.one_of(st.none(), st.integers(-400, 400).map(lambda x: x / 4)),
            max_size=30,
        ),
    ),
)


def split(n: int, sizes: list[int]) -> list[tuple[int, int]]:
    """Row ranges of consecutive partitions: the given sizes, the last takes the rest."""
    out, pos = [], 0
    for s in sizes[:-1]:
        s = min(s, n - pos)
        out.append((pos, s))
        pos += s
    out.append((pos, n - pos))
    return out


@SETTINGS
@given(
    data=values_st,
    func=st.sampled_from(FUNCS),
    k=st.integers(1, 5),
    sign=st.sampled_from([1, -1]),
    ranks=st.integers(1, 4),
    sizes=st.lists(st.integers(0, 7), min_size=4, max_size=4),
)
def test_parallel_window_matches_pandas(data, func, k, sign, ranks, sizes):
    """P.window on explicit partitions of 0..k+2 rows (halos spanning several ranks)."""
    t, values = data
    param = k if func.startswith("rolling_") else sign * k
    table = pa.table({"x": pa.array(values, t)})
    rt = result_type(func, t)
    schema = pa.schema([("x", t), ("y", rt)])
    ranges = split(len(values), [min(s, k + 2) for s in sizes[:ranks]])

    def body(comm):
        lo, n = ranges[comm.rank]
        d = P.Dist(table.slice(lo, n), P.ANY)
        return P.window(comm, d, func, "x", param, "y", schema).table

    parts = run_ranks(ranks, body)
    got = pa.concat_tables(parts).column("y").to_pylist()
    same(got, pandas_expected(values, t, func, param))
    for p in parts:
        assert p.schema == schema


@SETTINGS
@given(data=values_st, k=st.integers(1, 6), cut=st.integers(0, 30))
def test_rolling_kernel_segments_equal_whole(data, k, cut):
    """rolling([pre ; mid]) == rolling(whole).slice(len(pre)): the kernel reads the halo in
    place and the result does not depend on where the partition starts."""
    t, values = data
    arr = pa.array(values, t)
    cut = min(cut, len(arr))
    for func in FUNCS[:4]:
        whole = W.rolling(None, arr, func, k).to_pylist()
        seg = W.rolling(arr.slice(0, cut), arr.slice(cut), func, k).to_pylist()
        assert seg == whole[cut:]


def test_nan_is_a_value_ordered_above_numbers():
    """DuckDB semantics: max over a window with NaN is NaN, min skips it; sums propagate."""
    x = pa.array([1.0, float("nan"), 2.0, 3.0, None, 4.0])
    t = pa.table({"id": list(range(6)), "v": x})
    w = "OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)"
    sql = f"""SELECT CASE WHEN count(v) {w} = 2 THEN min(v) {w} END AS mn,
                     CASE WHEN count(v) {w} = 2 THEN max(v) {w} END AS mx,
                     CASE WHEN count(v) {w} = 2 THEN sum(v) {w} END AS s FROM t ORDER BY id"""
    con = duckdb.connect()
    con.register("t", t)
    expect = con.sql(sql).fetchall()
    mn = W.rolling(None, x, "rolling_min", 2).to_pylist()
    mx = W.rolling(None, x, "rolling_max", 2).to_pylist()
    s = W.rolling(None, x, "rolling_sum", 2).to_pylist()

    def norm(v):
        return "nan" if isinstance(v, float) and math.isnan(v) else v

    assert [tuple(map(norm, r)) for r in zip(mn, mx, s)] == [
        tuple(map(norm, r)) for r in expect
    ]


def test_large_window_and_integer_types():
    rng = np.random.default_rng(1)
    v = rng.integers(-(2**40), 2**40, 5000)
    for k in (1, 7, 64, 1000, 4999, 5000, 6000):
        s = pd.Series(v)
        got = W.rolling(None, pa.array(v), "rolling_sum", k).to_pylist()
        want = s.rolling(k).sum().tolist()
        assert [None if math.isnan(w) else int(w) for w in want] == got
        for f in ("min", "max"):
            got = W.rolling(
                None, pa.array(v.astype(np.int32) if k < 100 else v), f"rolling_{f}", k
            ).to_pylist()
            base = pd.Series(v.astype(np.int32) if k < 100 else v)
            want = getattr(base.rolling(k), f)().tolist()
            assert [None if math.isnan(w) else int(w) for w in want] == got
    u = pa.array([3, 1, 2, None, 5], pa.uint8())
    assert W.rolling(None, u, "rolling_max", 2).to_pylist() == [None, 3, 2, None, None]
    assert (
        W.rolling(None, pa.array([1.5, 2.5], pa.float32()), "rolling_min", 2).type
        == pa.float32()
    )


def test_halo_plan_and_pack_rows():
    # ranks of 3, 0, 1, 5 rows; before = 2, after = 1: rank 2 needs global rows 1..2 (on
    # rank 0) and row 4 (rank 3); rank 3 needs rows 2..3 (ranks 0 and 2)
    nb, lo, hi = W.halo_plan([3, 0, 1, 5], 0, 2, 1)
    assert not nb and lo.tolist() == [0, 0, 1, 2] and hi.tolist() == [0, 0, 3, 3]
    nb, lo, hi = W.halo_plan([4, 4, 4], 1, 2, 1)
    assert nb and lo.tolist() == [0, 0, 2] and hi.tolist() == [1, 0, 4]
    t = pa.table(
        {
            "a": pa.array([1, None, 3, 4, 5, None, 7, 8, 9, 10]),
            "s": ["x", None, "yz", "", "w", "long string", None, "é", "q", "r"],
            "b": [True, None, False, True, True, False, None, True, False, True],
            "f": pa.array([1.5, 2, None, 4, 5, 6, 7, 8, 9, None], pa.float32()),
            "ls": pa.array(
                ["a", "b", None, "d", "e", "f", "g", "h", "i", "j"], pa.large_string()
            ),
            "ts": pa.array(list(range(10)), pa.timestamp("us")),
        }
    )
    src = t.slice(1, 9)  # a non-zero offset in every column
    for lo_, hi_ in [(0, 9), (1, 4), (3, 9), (2, 2), (7, 9), (5, 6)]:
        p = W.pack_rows(src, lo_, hi_)
        p.validate(full=True)
        assert p.equals(src.slice(lo_, hi_ - lo_))
        assert all(c.chunk(0).offset == 0 for c in p.columns)
    with pytest.raises(ValueError):
        W.pack_rows(src, 3, 20)


@og.pipeline
def win_pipe(t):
    t = t.sort_values("id")
    t = t[t["keep"]]
    return t.assign(
        rs=t["v"].rolling(3).sum(),
        rm=t["v"].rolling(2).mean(),
        rmin=t["i"].rolling(4).min(),
        rmax=t["v"].rolling(3).max(),
        ris=t["i"].rolling(2).sum(),
        sh=t["i"].shift(2),
        lead=t["v"].shift(-3),
        d=t["v"].diff(1),
        di=t["i"].diff(-2),
    )


def _duck(t: pa.Table) -> list[tuple]:
    def win(fn, col, k):
        w = f"OVER (ORDER BY id ROWS BETWEEN {k - 1} PRECEDING AND CURRENT ROW)"
        return f"CASE WHEN count({col}) {w} = {k} THEN {fn}({col}) {w} END"

    sql = f"""SELECT id, v, i, keep, {win("sum", "v", 3)}, {win("avg", "v", 2)}, {win("min", "i", 4)},
              {win("max", "v", 3)}, {win("sum", "i", 2)}, lag(i, 2) OVER (ORDER BY id),
              lead(v, 3) OVER (ORDER BY id), v - lag(v, 1) OVER (ORDER BY id),
              i - lead(i, 2) OVER (ORDER BY id)
              FROM t WHERE keep ORDER BY id"""
    con = duckdb.connect()
    con.register("t", t)
    return con.sql(sql).fetchall()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-50, 50).map(lambda x: x / 2)),
            st.one_of(st.none(), st.integers(-100, 100)),
            st.booleans(),
        ),
        max_size=24,
    ),
    seed=st.integers(0, 1000),
)
def test_public_api_matches_duckdb(rows, seed):
    """og.pipeline(sort_values + filter + rolling/shift/diff).run(engine="local", ranks=r)
    for r = 1..4 (the filter leaves partitions of 0..k+2 rows) against DuckDB."""
    ids = np.random.default_rng(seed).permutation(len(rows)).tolist()
    t = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "v": pa.array([r[0] for r in rows], pa.float64()),
            "i": pa.array([r[1] for r in rows], pa.int64()),
            "keep": pa.array([r[2] for r in rows], pa.bool_()),
        }
    )
    want = _duck(t)
    for r in (1, 2, 3, 4):
        out = win_pipe.run(t, engine="local", ranks=r)
        got = [tuple(row.values()) for row in out.to_pylist()]
        assert len(got) == len(want), r
        for a, b in zip(got, want):
            assert a[0] == b[0]
            same(list(a[1:]), list(b[1:]))


@needs_mpi
def test_mpi_two_ranks_matches_duckdb():
    """Halo pieces cross MPI as packed Arrow buffers (IPC); tiny and larger partitions."""
    pytest.importorskip("mpi4py")
    rng = np.random.default_rng(3)
    for n in (5, 60):
        t = pa.table(
            {
                "id": pa.array(rng.permutation(n), pa.int64()),
                "v": pa.array(rng.integers(-5, 5, n) / 2.0, mask=rng.random(n) < 0.2),
                "i": pa.array(rng.integers(-5, 5, n), mask=rng.random(n) < 0.2),
                "keep": pa.array(rng.random(n) < 0.6),
            }
        )
        want = _duck(t)
        got = [
            tuple(r.values())
            for r in win_pipe.run(t, engine="mpi", ranks=2).to_pylist()
        ]
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a[0] == b[0]
            same(list(a[1:]), list(b[1:]))
