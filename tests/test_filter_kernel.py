"""The fused filter-and-compact kernel (runtime/kernels/filtering: filter_kernels.hpp) and
the dictionary isin lookup, against DuckDB, pandas and Arrow's filter: nulls in the mask
and in the data, all-false/all-true/empty masks, tables below and above the native
threshold, every column kind the kernel covers (bool, ints, floats, timestamp, decimal,
dictionary) and the ones it hands to Arrow (strings), sliced and chunked inputs (chunk
layouts differing between the mask and the columns), dictionaries differing per chunk,
a hypothesis property test, and checks that the native path ran (so a broken build or a
silent fallback fails here)."""

from __future__ import annotations

import datetime as dt
import itertools

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opgraph.runtime import expr_eval as E
from opgraph.runtime import local_ops as L
from opgraph.runtime.kernels import filtering as F

import opgraph as og

# ----------------------------------------------------------------------------- helpers


def _table(n: int, seed: int = 0, nulls: bool = True) -> pa.Table:
    rng = np.random.default_rng(seed)

    def m(p=0.15):
        return (rng.random(n) < p) if nulls else None

    countries = np.array(["US", "DE", "FR", "JP", "BR"])
    return pa.table(
        {
            "f64": pa.array(rng.random(n), mask=m()),
            "f32": pa.array(rng.random(n).astype(np.float32)),
            "i64": pa.array(rng.integers(-(10**12), 10**12, n), mask=m()),
            "i32": pa.array(rng.integers(-1000, 1000, n).astype(np.int32)),
            "i16": pa.array(rng.integers(-1000, 1000, n).astype(np.int16), mask=m(0.5)),
            "u8": pa.array(rng.integers(0, 255, n).astype(np.uint8)),
            "b": pa.array(rng.random(n) < 0.5, mask=m()),
            "b2": pa.array(rng.random(n) < 0.3),
            "ts": pa.array(rng.integers(0, 10**15, n), mask=m()).cast(pa.timestamp("us")),
            "dec": pa.array(rng.integers(-(10**6), 10**6, n)).cast(pa.decimal128(20, 0)),
            "dict": pa.array(countries[rng.integers(0, 5, n)], mask=m()).dictionary_encode(),
            "s": pa.array(countries[rng.integers(0, 5, n)].astype(object), mask=m()),
        }
    )


def _mask(n: int, seed: int = 1, p_true: float = 0.4, p_null: float = 0.1) -> pa.Array:
    rng = np.random.default_rng(seed)
    return pa.array(rng.random(n) < p_true, mask=rng.random(n) < p_null)


def _chunk(a, sizes):
    """``a`` (Array or ChunkedArray) re-cut into chunks of these sizes (+ the rest)."""
    a = a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
    out, p = [], 0
    for s in sizes:
        out.append(a.slice(p, s))
        p += s
    out.append(a.slice(p))
    return pa.chunked_array(out, type=a.type)


def _plain(col) -> list:
    """Python values of a column (dictionaries decoded)."""
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    return col.to_pylist()


def _assert_same(got: pa.Table, want: pa.Table) -> None:
    assert got.column_names == want.column_names
    assert got.schema.equals(want.schema, check_metadata=False), (got.schema, want.schema)
    assert got.num_rows == want.num_rows
    for name in want.column_names:
        assert _plain(got.column(name)) == _plain(want.column(name)), name
    for col in got.columns:
        for ch in (col.chunks if isinstance(col, pa.ChunkedArray) else [col]):
            ch.validate(full=True)


def _duck_filter(table: pa.Table, mask) -> list[list]:
    """DuckDB's ``SELECT * WHERE m`` (NULL predicate = false), column-wise Python values."""
    t = L.decode_dictionaries(table).append_column("__m", mask)
    con = duckdb.connect()
    con.register("t", t)
    cols = ", ".join(f'"{c}"' for c in table.column_names)
    rows = con.execute(f"SELECT {cols} FROM (SELECT row_number() OVER () AS __r, * FROM t) WHERE __m ORDER BY __r").fetchall()
    return [list(c) for c in zip(*rows)] if rows else [[] for _ in table.column_names]


@pytest.fixture
def native_always(monkeypatch):
    """Run the native kernel for any table size (the threshold exists for speed only)."""
    monkeypatch.setattr(L, "FILTER_NATIVE_MIN_ROWS", 0)


def _filters_run() -> int:
    return F.STATS["filters"]


# ------------------------------------------------------------------------------- tests


def test_native_path_runs_for_large_tables():
    t = _table(100_000)
    before = _filters_run()
    got = L.filter_by_mask(t, _mask(100_000))
    assert _filters_run() == before + 1, "the fused filter kernel did not run"
    _assert_same(got, t.filter(_mask(100_000), null_selection_behavior="drop"))


def test_against_duckdb_with_nulls():
    n = 50_000
    t = _table(n, seed=3)
    mask = _mask(n, seed=4)
    got = L.filter_by_mask(t, mask)
    want = _duck_filter(t, mask)
    for name, col in zip(t.column_names, want):
        g = _plain(got.column(name))
        if name == "dec":
            col = [None if v is None else v for v in col]
        assert g == col, name


def test_against_pandas():
    n = 30_000
    t = _table(n, seed=5, nulls=False)
    mask = _mask(n, seed=6, p_null=0.0)
    got = L.filter_by_mask(t.select(["f64", "i64", "b2", "ts"]), mask)
    df = t.select(["f64", "i64", "b2", "ts"]).to_pandas()
    want = df[mask.to_numpy(zero_copy_only=False)].reset_index(drop=True)
    pd.testing.assert_frame_equal(got.to_pandas(), want)


@pytest.mark.parametrize("n", [0, 1, 7, 63, 64, 65, 129, 3000, 70_000])
@pytest.mark.parametrize("kind", ["random", "all_false", "all_true", "all_null", "sparse", "dense"])
def test_sizes_and_mask_kinds(native_always, n, kind):
    t = _table(n, seed=n)
    rng = np.random.default_rng(n + 1)
    if kind == "random":
        mask = _mask(n, seed=n + 2)
    elif kind == "all_false":
        mask = pa.array(np.zeros(n, dtype=bool))
    elif kind == "all_true":
        mask = pa.array(np.ones(n, dtype=bool))
    elif kind == "all_null":
        mask = pa.nulls(n, pa.bool_())
    elif kind == "sparse":
        mask = pa.array(rng.random(n) < 0.01)
    else:
        mask = pa.array(rng.random(n) < 0.99, mask=rng.random(n) < 0.005)
    got = L.filter_by_mask(t, mask)
    _assert_same(got, t.filter(mask, null_selection_behavior="drop"))
    if kind == "all_true":
        assert got is t
    if kind in ("all_false", "all_null"):
        assert got.num_rows == 0


def test_below_threshold_uses_arrow_and_agrees():
    t = _table(100, seed=9)
    mask = _mask(100, seed=10)
    before = _filters_run()
    got = L.filter_by_mask(t, mask)
    assert _filters_run() == before  # tiny: Arrow's filter
    _assert_same(got, t.filter(mask, null_selection_behavior="drop"))


def test_sliced_inputs(native_always):
    t = _table(20_000, seed=11).slice(1234, 15_000)
    mask = _mask(20_000, seed=12).slice(999, 15_000)
    got = L.filter_by_mask(t, mask)
    _assert_same(got, t.filter(mask, null_selection_behavior="drop"))


def test_chunked_inputs_with_different_layouts(native_always):
    n = 200_000
    base = _table(n, seed=13)
    # every column cut differently, the mask differently again (some chunks empty)
    cols = [_chunk(c, [i * 37 + 5, 0, 70_001 + i, 3]) for i, c in enumerate(base.columns)]
    t = pa.Table.from_arrays(cols, schema=base.schema)
    mask = _chunk(_mask(n, seed=14), [100, 65_536, 64, 0, 1])
    before = _filters_run()
    got = L.filter_by_mask(t, mask)
    assert _filters_run() == before + 1
    _assert_same(got, L.filter_by_mask(base, mask.combine_chunks()))
    _assert_same(got, base.filter(mask.combine_chunks(), null_selection_behavior="drop"))


def test_dictionary_chunks_with_different_dictionaries(native_always, monkeypatch):
    d1 = pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 2] * 500, pa.int8()), pa.array(["a", "b", "c"]))
    d2 = pa.DictionaryArray.from_arrays(pa.array([1, None, 0] * 700, pa.int8()), pa.array(["c", "a"]))
    d3 = pa.DictionaryArray.from_arrays(pa.array([0, 0, 1] * 300, pa.int8()), pa.array(["z", None]))
    col = pa.chunked_array([d1, d2, d3])
    n = len(col)
    t = pa.table({"d": col, "x": pa.array(np.arange(n))})
    mask = _mask(n, seed=15, p_true=0.6)
    want = t.filter(mask, null_selection_behavior="drop")
    got = L.filter_by_mask(t, mask)
    assert isinstance(got.column("d").combine_chunks(), pa.DictionaryArray)
    assert got.column("d").num_chunks == 1  # unified while filtering
    _assert_same(got, want)
    # large dictionaries are not unified: one output chunk per input chunk
    monkeypatch.setattr(F, "UNIFY_MAX", 0)
    got = L.filter_by_mask(t, mask)
    assert got.column("d").num_chunks > 1
    _assert_same(got, want)


def test_only_strings_and_null_type_fall_back():
    n = 10_000
    t = pa.table({"s": pa.array(["x", None, "yz"] * (n // 3) + ["w"] * (n % 3)), "z": pa.nulls(n)})
    mask = _mask(n, seed=16)
    _assert_same(L.filter_by_mask(t, mask), t.filter(mask, null_selection_behavior="drop"))


def test_lut_bits_isin_on_dictionaries():
    rng = np.random.default_rng(17)
    n = 300_001
    values = np.array(["US", "DE", "FR", None, "JP"], dtype=object)
    plain = pa.array(values[rng.integers(0, 5, n)], mask=rng.random(n) < 0.05)
    for chunked in (False, True):
        col = plain.dictionary_encode()
        if chunked:
            # chunks encoded separately: different dictionaries
            col = pa.chunked_array([plain.slice(0, 1000).dictionary_encode(), plain.slice(1000, 150_000).dictionary_encode(),
                                    plain.slice(151_000).dictionary_encode()])
        before = F.STATS["lut_bits"]
        got = E._dict_isin(col, ["US", "JP"])
        assert F.STATS["lut_bits"] > before
        want = pc.fill_null(pc.is_in(plain, value_set=pa.array(["US", "JP"])), False)
        got_list = (got.combine_chunks() if isinstance(got, pa.ChunkedArray) else got).to_pylist()
        assert got_list == want.to_pylist()
    # the index type of the codes does not matter
    for it in (pa.int8(), pa.int16(), pa.int64(), pa.uint8(), pa.uint32()):
        d = pa.DictionaryArray.from_arrays(pa.array([0, 2, 1, None, 2] * 30, it), pa.array(["a", "b", "c"]))
        assert E._dict_isin(d, ["c"]).to_pylist() == [False, True, False, False, True] * 30


def test_pipeline_filter_project_against_duckdb():
    n = 120_000
    rng = np.random.default_rng(18)
    t = pa.table(
        {
            "a": pa.array(rng.random(n), mask=rng.random(n) < 0.1),
            "b": pa.array(rng.random(n)),
            "c": pa.array(rng.integers(0, 100, n), mask=rng.random(n) < 0.2),
            "d": pa.array(rng.random(n)),
        }
    )

    @og.pipeline
    def fp(t):
        t = t[t["a"] > 0.5]
        return t[["b", "c"]]

    before = _filters_run()
    got = fp.run(t)
    assert _filters_run() > before
    con = duckdb.connect()
    con.register("t", t)
    want = con.execute("SELECT b, c FROM (SELECT row_number() OVER () r, * FROM t) WHERE a > 0.5 ORDER BY r").fetchall()
    assert list(zip(got.column("b").to_pylist(), got.column("c").to_pylist())) == want


def test_timestamp_and_bool_values_exact(native_always):
    n = 1000
    ts = pa.array([dt.datetime(2020, 1, 1) + dt.timedelta(seconds=i) for i in range(n)], pa.timestamp("us"))
    b = pa.array([i % 3 == 0 for i in range(n)], mask=np.array([i % 7 == 0 for i in range(n)]))
    t = pa.table({"ts": ts, "b": b})
    mask = pa.array([i % 2 == 1 for i in range(n)])
    got = L.filter_by_mask(t, mask)
    assert got.column("ts").to_pylist() == [v for i, v in enumerate(ts.to_pylist()) if i % 2 == 1]
    assert got.column("b").to_pylist() == [v for i, v in enumerate(b.to_pylist()) if i % 2 == 1]


_TYPES = [pa.int8(), pa.int32(), pa.int64(), pa.float64(), pa.bool_(), pa.timestamp("ns"), pa.uint16()]


@st.composite
def _cases(draw):
    n = draw(st.integers(0, 700))
    mask = draw(st.lists(st.sampled_from([True, False, None]), min_size=n, max_size=n))
    t = draw(st.sampled_from(_TYPES))
    if pa.types.is_boolean(t):
        vals = draw(st.lists(st.one_of(st.none(), st.booleans()), min_size=n, max_size=n))
    else:
        lo, hi = (0, 60000) if t == pa.uint16() else (-100, 100)
        vals = draw(st.lists(st.one_of(st.none(), st.integers(lo, hi)), min_size=n, max_size=n))
    off = draw(st.integers(0, 9))
    cuts = draw(st.lists(st.integers(0, max(n, 1)), max_size=4))
    mcuts = draw(st.lists(st.integers(0, max(n, 1)), max_size=4))
    return n, mask, t, vals, off, sorted(cuts), sorted(mcuts)


def _cut(a: pa.Array, cuts: list[int]) -> pa.ChunkedArray:
    pts = [0, *[min(c, len(a)) for c in cuts], len(a)]
    return pa.chunked_array([a.slice(p, q - p) for p, q in itertools.pairwise(pts)], type=a.type)


@settings(max_examples=150, deadline=None)
@given(_cases())
def test_property_matches_arrow_filter(case):
    n, mask_vals, t, vals, off, cuts, mcuts = case
    pad = [None] * off
    if pa.types.is_timestamp(t):
        col = pa.array(pad + vals, pa.int64()).cast(t).slice(off)
    else:
        col = pa.array(pad + vals, t).slice(off)
    mask = pa.array(pad + mask_vals, pa.bool_()).slice(off)
    table = pa.table({"x": _cut(col, cuts), "y": col.dictionary_encode() if n else col})
    m = _cut(mask, mcuts)
    old = L.FILTER_NATIVE_MIN_ROWS
    L.FILTER_NATIVE_MIN_ROWS = 0
    try:
        got = L.filter_by_mask(table, m)
    finally:
        L.FILTER_NATIVE_MIN_ROWS = old
    keep = [v for v, k in zip(vals, mask_vals) if k]
    assert got.column("x").to_pylist() == (pa.array(keep, pa.int64()).cast(t).to_pylist() if pa.types.is_timestamp(t) else keep)
    assert _plain(got.column("y")) == got.column("x").to_pylist()


# ------------------------------------------------------------- multi-column take (joins)


@pytest.mark.parametrize("n_idx", [0, 1, 100, 70_000])
def test_take_columns_matches_arrow_take(n_idx):
    n = 5_000
    t = _table(n, seed=19).drop_columns(["s"])
    rng = np.random.default_rng(n_idx)
    idx = rng.integers(-1, n, n_idx)  # -1 = null (outer joins)
    want_idx = pa.array(idx, mask=idx < 0)
    before = F.STATS["takes"]
    got = L.take_columns(t.columns, idx)
    assert F.STATS["takes"] == before + 1
    for name, g in zip(t.column_names, got):
        assert g.type == t.column(name).type
        g.validate(full=True)
        assert _plain(g) == _plain(t.column(name).take(want_idx)), name


def test_take_columns_chunked_sources_and_strings():
    n = 3_000
    base = _table(n, seed=20)
    cols = [_chunk(c, [100, 0, 1500]) for c in base.columns]
    # a dictionary column whose chunks were encoded separately
    d = pa.chunked_array([pa.array(["x", "y"] * 500).dictionary_encode(), pa.array(["z", "x"] * 1000).dictionary_encode()])
    idx = np.random.default_rng(21).integers(0, n, 4_000).astype(np.int32)
    got = L.take_columns([*cols, d], idx)
    for c, g in zip([*cols, d], got):
        assert _plain(g) == _plain(c.take(pa.array(idx)))
    with pytest.raises(IndexError):
        F.take_columns([base.column("i64")], np.array([n]))


def test_take_columns_from_empty_source():
    empty = pa.array([], pa.float64())
    (got,) = F.take_columns([empty], np.array([-1, -1], dtype=np.int64))
    assert got.to_pylist() == [None, None]
    with pytest.raises(IndexError):
        F.take_columns([empty], np.array([0]))


@pytest.mark.parametrize("how", ["inner", "left", "right", "outer"])
def test_join_gathers_natively_and_matches_duckdb(how):
    rng = np.random.default_rng(22)
    n = 20_000
    left = pa.table({"k": pa.array(rng.integers(0, 5_000, n), mask=rng.random(n) < 0.05), "x": rng.random(n),
                     "c": pa.array(np.array(["US", "DE", "FR"])[rng.integers(0, 3, n)]).dictionary_encode()})
    right = pa.table({"k": np.arange(0, 6_000, 2), "y": pa.array(rng.random(3_000), mask=rng.random(3_000) < 0.1)})

    @og.pipeline
    def j(left, right):
        return left.merge(right, on="k", how=how)

    before = F.STATS["takes"]
    got = j.run(left, right)
    assert F.STATS["takes"] > before
    con = duckdb.connect()
    con.register("l", L.decode_dictionaries(left))
    con.register("r", right)
    kind = {"inner": "INNER", "left": "LEFT", "right": "RIGHT", "outer": "FULL"}[how]
    want = con.execute(f"SELECT coalesce(l.k, r.k) AS k, l.x, l.c, r.y FROM l {kind} JOIN r ON l.k = r.k").fetchall()
    rows = list(zip(*(_plain(got.column(c)) for c in ["k", "x", "c", "y"])))

    def key(r):
        return tuple((v is None, v if v is not None else 0) if not isinstance(v, str) else (False, v) for v in r)

    assert sorted(rows, key=key) == sorted(want, key=key)


def test_other_fixed_width_types(native_always):
    rng = np.random.default_rng(23)
    n = 5_000
    mask = pa.array(rng.random(n) < 0.5, mask=rng.random(n) < 0.1)
    ints = pa.array(np.arange(n))
    cols = {
        "fsb": pa.array([bytes([i % 256, 1, 2]) if i % 5 else None for i in range(n)], pa.binary(3)),
        "d256": ints.cast(pa.decimal256(40, 0)),
        "f16": pa.array(rng.random(n).astype(np.float16)),
        "date": ints.cast(pa.int32()).cast(pa.date32()),
        "time": ints.cast(pa.time64("us")),
        "dur": ints.cast(pa.duration("s")),
        "mdn": pa.array([pa.MonthDayNano([1, i, 3]) for i in range(n)], pa.month_day_nano_interval()),
        "tz": ints.cast(pa.timestamp("ms", tz="UTC")),
    }
    t = pa.table(cols)
    assert all(F.supported(c.type) for c in t.columns)
    before = _filters_run()
    got = L.filter_by_mask(t, mask)
    assert _filters_run() == before + 1
    _assert_same(got, t.filter(mask, null_selection_behavior="drop"))
