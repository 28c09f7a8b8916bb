"""The sample sort's range partitioning by splitters (C++ kernels/ranging +
partition.range_partition / parallel_ops.split_by_splitters) against a plain Python
reference: part of a row = the first splitter it sorts at or before in Arrow's order (keys
lexicographic, asc/desc per key, NaN after numbers, nulls last), rows in input order
within a part; and for numeric keys against the previous radix-key implementation."""

from __future__ import annotations

import datetime
import functools
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opgraph.runtime import local_ops as L
from opgraph.runtime import parallel_ops as P
from opgraph.runtime.kernels import opkernels as K
from opgraph.runtime.kernels import ranging as R
from opgraph.runtime.local_comm import run_ranks
from opgraph.runtime.partition import (
    group_by_partition,
    range_partition,
    range_partition_supported,
)

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _class(v):
    if v is None:
        return 2
    if isinstance(v, float) and math.isnan(v):
        return 1
    return 0


def ref_cmp(a: tuple, b: tuple, asc: list[bool]) -> int:
    for va, vb, up in zip(a, b, asc):
        ca, cb = _class(va), _class(vb)
        if ca != cb:
            return -1 if ca < cb else 1
        if ca == 0 and va != vb:
            r = -1 if va < vb else 1
            return r if up else -r
    return 0


def reference(table: pa.Table, by: list[str], asc: list[bool], splitters: pa.Table) -> list[pa.Table]:
    rows = list(zip(*(table.column(b).to_pylist() for b in by))) if table.num_rows else []
    sps = list(zip(*(splitters.column(b).to_pylist() for b in by))) if splitters.num_rows else []
    n = len(sps) + 1
    buckets: list[list[int]] = [[] for _ in range(n)]
    for i, r in enumerate(rows):
        p = next((s for s, sp in enumerate(sps) if ref_cmp(r, sp, asc) <= 0), len(sps))
        buckets[p].append(i)
    return [table.take(pa.array(b, pa.int64())) for b in buckets]


def sorted_splitters(values: pa.Table, by: list[str], asc: list[bool]) -> pa.Table:
    keys = [tuple(r) for r in zip(*(values.column(b).to_pylist() for b in by))] if values.num_rows else []
    order = sorted(range(len(keys)), key=functools.cmp_to_key(lambda i, j: ref_cmp(keys[i], keys[j], asc)))
    return values.take(pa.array(order, pa.int64()))


def _norm(v):
    return "nan" if isinstance(v, float) and math.isnan(v) else v


def same(a: pa.Table, b: pa.Table) -> bool:
    """Equal schemas and values (NaN equal to NaN, unlike ``Table.equals``)."""
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False
    return all([_norm(v) for v in a.column(i).to_pylist()] == [_norm(v) for v in b.column(i).to_pylist()] for i in range(a.num_columns))


def check(table, by, asc, splitters):
    splitters = sorted_splitters(splitters.select(by), by, asc)
    want = reference(table, by, asc, splitters)
    got = range_partition(table, by, asc, splitters)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.schema == table.schema
        assert same(g, w), (g.to_pydict(), w.to_pydict())
    got2 = P.split_by_splitters(table, by, asc, splitters)
    assert all(same(g, w) for g, w in zip(got2, want))
    return got


# --------------------------------------------------------------------------- values

ints = st.one_of(st.none(), st.integers(-4, 4))
floats = st.one_of(st.none(), st.sampled_from([0.0, -0.0, 1.5, -2.0, math.inf, -math.inf, math.nan, 3.0]))
strings = st.one_of(st.none(), st.sampled_from(["", "a", "ab", "b", "é", "ba", "a\x00", "zz"]))
bools = st.one_of(st.none(), st.booleans())

TYPES = {
    "int64": (ints, pa.int64()),
    "int8": (ints, pa.int8()),
    "uint32": (st.one_of(st.none(), st.integers(0, 6)), pa.uint32()),
    "float64": (floats, pa.float64()),
    "float32": (floats, pa.float32()),
    "bool": (bools, pa.bool_()),
    "string": (strings, pa.string()),
    "large_binary": (st.one_of(st.none(), st.binary(max_size=3)), pa.large_binary()),
    "timestamp": (st.one_of(st.none(), st.integers(-3, 3)), pa.timestamp("us")),
    "date32": (st.one_of(st.none(), st.integers(-3, 3)), pa.date32()),
}


def _array(values, t):
    if pa.types.is_timestamp(t):
        return pa.array(values, pa.int64()).cast(t)
    if pa.types.is_date32(t):
        return pa.array(values, pa.int32()).cast(t)
    return pa.array(values, t)


@st.composite
def tables(draw):
    kinds = draw(st.lists(st.sampled_from(sorted(TYPES)), min_size=1, max_size=3))
    n = draw(st.integers(0, 40))
    cols = {}
    for j, k in enumerate(kinds):
        vals, t = TYPES[k]
        cols[f"c{j}"] = _array(draw(st.lists(vals, min_size=n, max_size=n)), t)
    cols["row"] = pa.array(np.arange(n, dtype=np.int64))
    table = pa.table(cols)
    by = [f"c{j}" for j in range(len(kinds))]
    asc = draw(st.lists(st.booleans(), min_size=len(by), max_size=len(by)))
    # splitters: rows of the table (duplicates of its keys) and fresh values
    ns = draw(st.integers(0, 5))
    picks = draw(st.lists(st.integers(0, max(n - 1, 0)), min_size=ns, max_size=ns)) if n else []
    own = table.take(pa.array(picks, pa.int64())).select(by)
    fresh_n = draw(st.integers(0, 3))
    fresh = pa.table({b: _array(draw(st.lists(TYPES[k][0], min_size=fresh_n, max_size=fresh_n)), TYPES[k][1]) for b, k in zip(by, kinds)})
    splitters = pa.concat_tables([own, fresh.cast(own.schema)])
    return table, by, asc, splitters


@SETTINGS
@given(tables())
def test_matches_reference(case):
    table, by, asc, splitters = case
    check(table, by, asc, splitters)


@SETTINGS
@given(tables(), st.integers(1, 4))
def test_chunked_and_sliced_input(case, cut):
    table, by, asc, splitters = case
    if table.num_rows < 2:
        return
    cut = min(cut, table.num_rows - 1)
    chunked = pa.concat_tables([table.slice(0, cut), table.slice(cut)])
    check(chunked, by, asc, splitters)
    check(table.slice(1), by, asc, splitters)


@SETTINGS
@given(st.lists(st.tuples(st.one_of(st.none(), st.integers(-3, 3)), floats), min_size=0, max_size=60),
       st.lists(st.booleans(), min_size=2, max_size=2), st.integers(1, 4))
def test_matches_radix_implementation(rows, asc, nsplit):
    """The same parts as the previous implementation (opkernels radix keys + binary search
    + counting sort + gather)."""
    t = pa.table({"a": pa.array([r[0] for r in rows], pa.int64()), "b": pa.array([r[1] for r in rows], pa.float64()),
                  "i": pa.array(np.arange(len(rows)))})
    by = ["a", "b"]
    if rows:
        order = np.asarray(L.sort_indices(t, by, asc))
        picks = sorted({int(p) for p in np.linspace(0, len(rows) - 1, nsplit)})
        sp = t.take(pa.array(order[picks])).select(by)
    else:
        sp = t.select(by).slice(0, 0)
    rk, rn, sk, sn = [], [], [], []
    for c, a in zip(by, asc):
        k, nl = K.radix_keys(t.column(c), not a)
        rk.append(k), rn.append(nl)
        k, nl = K.radix_keys(sp.column(c), not a)
        sk.append(k), sn.append(nl)
    pids = K.range_partition(rk, rn, sk, sn)
    idx, offsets = group_by_partition(pids, sp.num_rows + 1, np.int64)
    grouped = t.take(pa.array(idx))
    want = [grouped.slice(int(offsets[q]), int(offsets[q + 1] - offsets[q])) for q in range(sp.num_rows + 1)]
    got = range_partition(t, by, asc, sp)
    assert all(same(g, w) for g, w in zip(got, want))
    assert np.array_equal(R.part_ids([t.column(c) for c in by], [not a for a in asc], [sp.column(c) for c in by]), pids)


def test_many_splitters_binary_search_and_threads(monkeypatch):
    """More than 16 splitters (binary search instead of the linear count), 2 threads."""
    monkeypatch.setenv("OPGRAPH_KERNEL_THREADS", "2")
    rng = np.random.default_rng(7)
    n = 300_000
    t = pa.table({"k": pa.array(rng.integers(0, 1000, n), mask=rng.random(n) < 0.01), "v": rng.random(n)})
    sp = pa.table({"k": pa.array(list(range(0, 1000, 25)) + [None, None], pa.int64())})
    for asc in (True, False):
        spo = sp if asc else pa.table({"k": pa.array(list(range(975, -1, -25)) + [None, None], pa.int64())})
        parts = range_partition(t, ["k"], [asc], spo)
        k = t.column("k").to_numpy(zero_copy_only=False)
        valid = ~t.column("k").is_null().to_numpy(zero_copy_only=False)
        keys = spo.column("k").to_numpy(zero_copy_only=False)[:-2]
        if asc:
            want = np.where(valid, np.searchsorted(keys, np.nan_to_num(k), side="left"), len(keys))
        else:
            want = np.where(valid, np.searchsorted(-keys, -np.nan_to_num(k), side="left"), len(keys))
        counts = np.bincount(want, minlength=spo.num_rows + 1)
        assert [p.num_rows for p in parts] == counts.tolist()
        for q, p in enumerate(parts):  # stable: input order within a part
            assert p.equals(t.filter(pa.array(want == q)))


def test_empty_and_no_splitters():
    t = pa.table({"k": pa.array([], pa.int64()), "s": pa.array([], pa.string())})
    parts = range_partition(t, ["k", "s"], [True, False], pa.table({"k": [1, 2], "s": ["a", "b"]}))
    assert [p.num_rows for p in parts] == [0, 0, 0]
    t = pa.table({"k": [3, 1, 2]})
    parts = range_partition(t, ["k"], [True], t.slice(0, 0))
    assert len(parts) == 1 and parts[0].equals(t)


def test_unsupported_types_fall_back_or_raise():
    dec = pa.array([1, 2], pa.decimal128(5, 0))
    assert not range_partition_supported([dec.type])
    assert range_partition_supported([pa.int16(), pa.string(), pa.timestamp("ns"), pa.float16()])
    t = pa.table({"d": dec})
    with pytest.raises(TypeError):
        P.split_by_splitters(t, ["d"], [True], t.slice(0, 1))


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("kind", ["string", "multi"])
def test_parallel_sort_uses_kernel_and_matches_local(ranks, kind):
    rng = np.random.default_rng(8)
    n = 2000
    if kind == "string":
        t = pa.table({"k": pa.array([f"s{v}" for v in rng.integers(0, 50, n)], mask=rng.random(n) < 0.05), "v": np.arange(n)})
        by, asc = ["k"], [False]
    else:
        t = pa.table({"a": pa.array(rng.integers(0, 5, n), mask=rng.random(n) < 0.05),
                      "b": pa.array(rng.choice([0.5, -1.0, np.nan], n)),
                      "c": pa.array(rng.integers(0, 3, n).astype(np.int64)).cast(pa.timestamp("s")),
                      "v": np.arange(n)})
        by, asc = ["a", "b", "c"], [True, False, True]

    def body(comm):
        lo, hi = n * comm.rank // comm.size, n * (comm.rank + 1) // comm.size
        return P.sort(comm, P.Dist(t.slice(lo, hi - lo)), by, asc).table

    got = pa.concat_tables(run_ranks(ranks, body))
    assert same(got, L.sort(t, by, asc))


def test_date_and_bool_keys():
    t = pa.table({"d": pa.array([datetime.date(2020, 1, i % 5 + 1) if i % 7 else None for i in range(30)]),
                  "b": pa.array([bool(i % 3) if i % 4 else None for i in range(30)]), "i": np.arange(30)})
    check(t, ["d", "b"], [False, True], t.slice(3, 4))


# ------------------------------------------- the hash shuffle's fused positions (hashing.pyx)


@SETTINGS
@given(st.lists(st.one_of(st.none(), st.integers(-50, 50)), max_size=200), st.integers(1, 9), st.booleans())
def test_hash_positions_matches_unfused(values, nparts, wide):
    from opgraph.runtime.kernels import hashing as H

    t = pa.table({"k": pa.array(values, pa.int64()), "s": pa.array([str(v) for v in values])})
    idt = np.int64 if wide else np.int32
    dest, offsets = H.hash_positions(t, ["k", "s"], nparts, idt)
    want_dest, want_offsets = H.partition_positions(H.partition_ids(H.hash_columns(t, ["k", "s"]), nparts), nparts, idt)
    assert dest.dtype == idt
    assert np.array_equal(dest, want_dest) and np.array_equal(offsets, want_offsets)


# ------------------------------------------- MPI driver: reuse check of staged input files


def test_staged_input_comparison(tmp_path):
    from opgraph.runtime.mpi_engine import _same_content
    from opgraph.runtime.mpi_worker import write_ipc_file

    values = np.array([1.0, np.nan, -0.0, 2.5])
    t = pa.table({"x": values, "i": np.arange(4)})
    path = tmp_path / "t.arrow"
    write_ipc_file(path, t)
    assert _same_content(t, path)  # fixed width: compared by bytes, so NaN is the same
    assert not _same_content(pa.table({"x": np.array([1.0, np.nan, 0.0, 2.5]), "i": np.arange(4)}), path)
    assert not _same_content(t.slice(1), path)
    assert not _same_content(t.rename_columns(["y", "i"]), path)
    assert _same_content(pa.concat_tables([t.slice(0, 2), t.slice(2)]), path) is False  # value comparison: NaN != NaN
    s = pa.table({"s": ["a", "b", None, "d"], "i": np.arange(4)})  # strings/nulls: value comparison
    write_ipc_file(path, s)
    assert _same_content(s, path)
    assert not _same_content(pa.table({"s": ["a", "b", None, "e"], "i": np.arange(4)}), path)
    backing = np.arange(6, dtype=np.int64)
    u = pa.table({"v": backing})
    write_ipc_file(path, u)
    assert _same_content(u, path)
    backing[3] = 99  # the table wraps this memory: its content changed
    assert not _same_content(u, path)
    empty = pa.table({"v": pa.array([], pa.int64())})
    write_ipc_file(path, empty)
    assert _same_content(empty, path)
