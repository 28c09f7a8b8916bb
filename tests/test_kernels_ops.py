"""The C++ operator kernels (runtime/kernels/op_kernels.hpp via opkernels.pyx) against
pyarrow and DuckDB: radix sort indices, the partitioned hash join, mask_to_indices, take,
range partitioning by splitters; plus the broadcast join of parallel_ops on a replicated
right side (no shuffle)."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opgraph.runtime import local_ops as L
from opgraph.runtime import parallel_ops as P
from opgraph.runtime.kernels import opkernels as K
from opgraph.runtime.local_comm import run_ranks

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ints = st.lists(st.one_of(st.none(), st.integers(-5, 5), st.integers(-(2**63), 2**63 - 1)), max_size=80)
floats = st.lists(
    st.one_of(st.none(), st.sampled_from([0.0, -0.0, 1.5, -1.5, float("nan"), float("inf"), float("-inf")]), st.floats(-1e6, 1e6)),
    max_size=80,
)


def arrow_order(table: pa.Table, by: list[str], asc: list[bool]) -> np.ndarray:
    keys = [(b, "ascending" if a else "descending", "at_end") for b, a in zip(by, asc)]
    return pc.sort_indices(table, sort_keys=keys).to_numpy()


# --------------------------------------------------------------------------- sort


@SETTINGS
@given(ints, st.booleans())
def test_sort_int64_matches_arrow(values, asc):
    t = pa.table({"k": pa.array(values, pa.int64())})
    got = K.sort_indices([t.column("k")], [not asc])
    assert np.array_equal(got, arrow_order(t, ["k"], [asc]))


@SETTINGS
@given(st.data(), st.booleans(), st.integers(0, 70_000))
def test_sort_returns_the_sorted_key_column(data, asc, big):
    """``sorted_key=True``: the one key column in sort order, straight from the radix keys,
    for 64-bit integer storage without nulls (long inputs too: the MSD+LSD path); None
    where the radix keys do not give the values back."""
    kind = data.draw(st.sampled_from(["i64", "u64", "ts", "dur", "d64"]))
    values = data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=60))
    rng = np.random.default_rng(len(values))
    values += rng.integers(-(2**63), 2**63 - 1, size=big if big > 40_000 else 0, dtype=np.int64).tolist()
    typ = {"i64": pa.int64(), "u64": pa.uint64(), "ts": pa.timestamp("us", "UTC"), "dur": pa.duration("ns"), "d64": pa.date64()}[kind]
    arr = pa.array(np.array(values, dtype=np.int64)).view(typ) if kind != "u64" else pa.array(np.array(values, dtype=np.int64).view(np.uint64))
    order, key = K.sort_indices([arr], [not asc], sorted_key=True)
    assert np.array_equal(order, arrow_order(pa.table({"k": arr}), ["k"], [asc]))
    assert key is not None and key.type == typ and key.equals(arr.take(pa.array(order)))
    t = pa.table({"v": pa.array(range(len(arr))), "k": arr}).replace_schema_metadata({"m": "1"})
    got = L.sort(t, ["k"], [asc])
    assert got.schema.equals(t.schema, check_metadata=True) and got.equals(t.take(pa.array(order)))
    alone = pa.table({"k": arr})  # nothing else to gather
    assert L.sort(alone, ["k"], [asc]).equals(alone.take(pa.array(order)))


def test_sort_sorted_key_only_where_values_come_back():
    for arr in (
        pa.array([3, None, 1], pa.int64()),  # nulls
        pa.array([3, 2, 1], pa.int32()),  # widened to int64 for the radix keys
        pa.array([1.5, -0.0, 0.0]),  # -0.0 and 0.0 share a key
    ):
        order, key = K.sort_indices([arr], [False], sorted_key=True)
        assert key is None and np.array_equal(order, arrow_order(pa.table({"k": arr}), ["k"], [True]))
    two = [pa.array([2, 1, 1]), pa.array([0, 1, 0])]
    assert K.sort_indices(two, [False, False], sorted_key=True)[1] is None
    assert K.sort_indices([pa.array([], pa.float64())], [False], sorted_key=True)[1] is None


@SETTINGS
@given(floats, st.booleans())
def test_sort_float64_matches_arrow(values, asc):
    t = pa.table({"k": pa.array(values, pa.float64())})
    got = K.sort_indices([t.column("k")], [not asc])
    exp = arrow_order(t, ["k"], [asc])
    # -0.0 and 0.0 compare equal in both; the orders must agree row for row
    assert np.array_equal(got, exp)


@SETTINGS
@given(st.data(), st.integers(0, 120), st.lists(st.booleans(), min_size=2, max_size=3))
def test_sort_multikey_matches_arrow(data, n, asc):
    cols = {}
    for i, _ in enumerate(asc):
        kind = data.draw(st.sampled_from(["i64", "i32", "f64", "bool", "ts"]))
        vals = data.draw(st.lists(st.one_of(st.none(), st.integers(-3, 3)), min_size=n, max_size=n))
        if kind == "i64":
            cols[f"c{i}"] = pa.array(vals, pa.int64())
        elif kind == "i32":
            cols[f"c{i}"] = pa.array(vals, pa.int32())
        elif kind == "f64":
            cols[f"c{i}"] = pa.array([None if v is None else (float("nan") if v == 3 else v / 2) for v in vals], pa.float64())
        elif kind == "bool":
            cols[f"c{i}"] = pa.array([None if v is None else v > 0 for v in vals], pa.bool_())
        else:
            cols[f"c{i}"] = pa.array(vals, pa.int64()).cast(pa.timestamp("us"))
    t = pa.table(cols)
    by = list(cols)
    got = K.sort_indices([t.column(b) for b in by], [not a for a in asc])
    assert np.array_equal(got, arrow_order(t, by, asc))


def test_sort_large_and_sliced():
    rng = np.random.default_rng(0)
    n = 300_000
    base = pa.array(rng.integers(-(1 << 40), 1 << 40, n + 7), mask=rng.random(n + 7) < 0.05)
    arr = base.slice(7)  # offset into the buffers, validity bitmap not byte aligned
    t = pa.table({"k": arr})
    for asc in (True, False):
        assert np.array_equal(K.sort_indices([arr], [not asc]), arrow_order(t, ["k"], [asc]))
    # narrow range: most bytes constant (skipped passes); chunked input
    small = pa.chunked_array([pa.array(rng.integers(0, 50, 1000)), pa.array(rng.integers(0, 50, 70_000))])
    t2 = pa.table({"k": small})
    assert np.array_equal(K.sort_indices([small], [False]), arrow_order(t2, ["k"], [True]))


def test_local_sort_uses_kernel_and_matches_duckdb():
    rng = np.random.default_rng(1)
    t = pa.table({"a": pa.array(rng.integers(0, 5, 5000), mask=rng.random(5000) < 0.1), "b": rng.random(5000), "s": [str(i % 7) for i in range(5000)]})
    out = L.sort(t, ["a", "b"], [False, True])
    exp = duckdb.sql("SELECT * FROM t ORDER BY a DESC NULLS LAST, b ASC NULLS LAST").to_arrow_table()
    assert out.equals(exp.cast(out.schema))
    out_s = L.sort(t, ["s", "a"], [True, True])  # string key: Arrow's sort
    assert out_s.column("s").to_pylist() == sorted(out_s.column("s").to_pylist())


# ---------------------------------------------------------------------------- join


def _pairs(li, ri):
    return sorted(zip(li.tolist(), ri.tolist()))


def _duck_pairs(lk, rk, how):
    lt = pa.table({"k": pa.array(lk, pa.int64()), "i": pa.array(np.arange(len(lk)), pa.int64())})
    rt = pa.table({"k": pa.array(rk, pa.int64()), "j": pa.array(np.arange(len(rk)), pa.int64())})
    jt = {"inner": "INNER", "left": "LEFT", "right": "RIGHT", "outer": "FULL OUTER"}[how]
    con = duckdb.connect()
    con.register("lt", lt)
    con.register("rt", rt)
    return sorted(con.execute(f"SELECT coalesce(i, -1), coalesce(j, -1) FROM lt {jt} JOIN rt ON lt.k = rt.k").fetchall())


keys = st.lists(st.one_of(st.none(), st.integers(-4, 4), st.integers(-(2**63), 2**63 - 1)), max_size=60)


@SETTINGS
@given(keys, keys, st.sampled_from(["inner", "left", "right", "outer"]))
def test_hash_join_matches_duckdb(lk, rk, how):
    li, ri = K.hash_join_i64(pa.array(lk, pa.int64()), pa.array(rk, pa.int64()), how)
    assert _pairs(li, ri) == _duck_pairs(lk, rk, how)


@pytest.mark.parametrize("how", ["inner", "left", "right", "outer"])
def test_hash_join_large_many_partitions(how):
    rng = np.random.default_rng(2)
    n, m = 60_000, 40_000  # several radix partitions
    lk = pa.array(rng.integers(0, 30_000, n), mask=rng.random(n) < 0.02)
    rk = pa.array(rng.integers(0, 30_000, m), mask=rng.random(m) < 0.02)
    li, ri = K.hash_join_i64(lk, rk, how)
    assert _pairs(li, ri) == _duck_pairs(lk.to_pylist(), rk.to_pylist(), how)


def test_local_join_int_keys_matches_duckdb():
    rng = np.random.default_rng(3)
    lt = pa.table({"k": pa.array(rng.integers(0, 50, 400), pa.int32(), mask=rng.random(400) < 0.1), "x": rng.random(400)})
    rt = pa.table({"k": pa.array(rng.integers(0, 50, 300), pa.int64(), mask=rng.random(300) < 0.1), "y": [f"s{i}" for i in range(300)]})
    for how, jt in (("inner", "INNER"), ("left", "LEFT"), ("right", "RIGHT"), ("outer", "FULL OUTER")):
        schema = pa.schema([("k", pa.int64()), ("x", pa.float64()), ("y", pa.string())])
        out = L.join(lt, rt, how, ["k"], ["k"], schema)
        key = "coalesce(l.k, r.k)" if how in ("right", "outer") else "l.k"
        exp = duckdb.sql(f"SELECT {key}::BIGINT k, x, y FROM lt l {jt} JOIN rt r ON l.k = r.k").to_arrow_table()
        assert sorted(out.to_pylist(), key=repr) == sorted(exp.to_pylist(), key=repr)


# ------------------------------------------------------------------ filter / take


@SETTINGS
@given(st.lists(st.one_of(st.none(), st.booleans()), max_size=300), st.integers(0, 9))
def test_mask_to_indices(mask, off):
    arr = pa.array([True] * off + mask, pa.bool_()).slice(off)
    exp = np.nonzero(np.array([bool(v) for v in mask], dtype=bool))[0]
    assert np.array_equal(K.mask_to_indices(arr), exp)


@pytest.mark.parametrize("typ", [pa.int64(), pa.int32(), pa.int8(), pa.float64(), pa.bool_(), pa.timestamp("ms"), pa.date32()])
def test_take_matches_arrow(typ):
    rng = np.random.default_rng(4)
    n = 5000
    vals = pa.array(rng.integers(0, 100, n + 3), mask=rng.random(n + 3) < 0.1).cast(pa.int64())
    if typ == pa.bool_():
        arr = pc.greater(vals, 50)
    elif typ == pa.float64():
        arr = vals.cast(typ)
    elif pa.types.is_temporal(typ):
        arr = vals.cast(pa.int32() if typ == pa.date32() else pa.int64()).cast(typ)
    else:
        arr = vals.cast(typ)
    arr = arr.slice(3)
    idx = rng.integers(-1, n, 7000)
    got = K.take(arr, idx)
    exp = arr.take(pa.array(idx, mask=idx < 0))
    assert got.equals(exp)
    assert K.take(pa.array(["a"]), np.array([0])) is None  # strings: Arrow's take


def test_filter_table_matches_arrow():
    rng = np.random.default_rng(5)
    n = 50_000
    t = pa.table({"a": rng.random(n), "s": [str(i) for i in range(n)], "n": pa.array(rng.integers(0, 9, n), mask=rng.random(n) < 0.2)})
    mask = pa.array(rng.random(n) < 0.4, mask=rng.random(n) < 0.1)
    got = t.take(pa.array(K.mask_to_indices(mask)))
    assert got.equals(t.filter(mask, null_selection_behavior="drop"))


# ---------------------------------------------------------------- range partition


@SETTINGS
@given(st.lists(st.tuples(st.one_of(st.none(), st.integers(-3, 3)), st.one_of(st.none(), st.integers(-3, 3))), min_size=1, max_size=60),
       st.lists(st.booleans(), min_size=2, max_size=2), st.integers(1, 4))
def test_range_partition_matches_sorted_cut(rows, asc, nsplit):
    t = pa.table({"a": pa.array([r[0] for r in rows], pa.int64()), "b": pa.array([r[1] for r in rows], pa.float64())})
    order = arrow_order(t, ["a", "b"], asc)
    picks = sorted({int(p) for p in np.linspace(0, len(rows) - 1, nsplit)})
    sp = t.take(pa.array(order[picks]))
    rk, rn, sk, sn = [], [], [], []
    for c, a in zip(["a", "b"], asc):
        k, nl = K.radix_keys(t.column(c), not a)
        rk.append(k), rn.append(nl)
        k, nl = K.radix_keys(sp.column(c), not a)
        sk.append(k), sn.append(nl)
    parts = K.range_partition(rk, rn, sk, sn)
    # the part numbers are non-decreasing along the sorted order, rows equal to splitter s
    # go to part s, and equal keys share a part
    along = parts[order]
    assert np.all(np.diff(along) >= 0)
    rank = np.empty(len(rows), dtype=np.int64)
    rank[order] = np.arange(len(rows))
    key = [(repr(r[0]), repr(r[1])) for r in rows]
    for s, p in enumerate(picks):
        assert parts[order[p]] <= s
    by_key = {}
    for i, k in enumerate(key):
        by_key.setdefault(k, set()).add(int(parts[i]))
    assert all(len(v) == 1 for v in by_key.values())


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("node_shared", [True, False])
def test_parallel_sort_radix_range_partition(ranks, node_shared, monkeypatch):
    """Both ways of the distributed sort on thread ranks: the node-shared sort, and (turned
    off) the sample sort's range partition and exchange."""
    monkeypatch.setattr(P, "_NODE_SHARED_SORT", node_shared)
    rng = np.random.default_rng(6)
    n = 3000
    t = pa.table({"k": pa.array(rng.integers(0, 40, n), mask=rng.random(n) < 0.05), "v": np.arange(n)})

    def body(comm):
        lo, hi = n * comm.rank // comm.size, n * (comm.rank + 1) // comm.size
        d = P.sort(comm, P.Dist(t.slice(lo, hi - lo)), ["k"], [False])
        return d.table

    got, shared = _sort_on_ranks(ranks, body)
    assert shared == (ranks if node_shared else 0)
    assert got.equals(L.sort(t, ["k"], [False]))


def _sort_on_ranks(ranks, body):
    """``body(comm)`` on thread ranks: (their tables concatenated, how many ranks took the
    node-shared sort)."""
    before = P.STATS["node_shared_sort"]
    out = pa.concat_tables(run_ranks(ranks, body))
    return out, P.STATS["node_shared_sort"] - before


def _duckdb_sorted(t: pa.Table, key: str, ascending: bool) -> pa.Table:
    """DuckDB's ORDER BY the key (nulls last), ties in row order (a stable sort)."""
    con = duckdb.connect()
    con.register("numbered", t.append_column("__row", pa.array(np.arange(t.num_rows))))
    direction = "ASC" if ascending else "DESC"
    out = con.sql(f'SELECT * FROM numbered ORDER BY "{key}" {direction} NULLS LAST, __row').to_arrow_table()
    return out.drop_columns(["__row"]).cast(t.schema)


def _sort_slices(t: pa.Table, by, ascending):
    def body(comm):
        lo, hi = t.num_rows * comm.rank // comm.size, t.num_rows * (comm.rank + 1) // comm.size
        return P.sort(comm, P.Dist(t.slice(lo, hi - lo)), by, ascending).table

    return body


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ranks=st.integers(2, 4),
    n=st.integers(0, 3000),
    spread=st.sampled_from([3, 1000, 2**40, 2**62]),
    null_rate=st.sampled_from([0.0, 0.2]),
    shape=st.sampled_from(["carry-f64", "carry-i32", "gathered", "float-key"]),
    ascending=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_node_shared_sort_matches_duckdb(ranks, n, spread, null_rate, shape, ascending, seed):
    """The node-shared sort on thread ranks equals DuckDB's ORDER BY (ties in row order):
    duplicate keys,
    negative and positive keys, nulls last, descending; a narrow column carried along with a
    64-bit key or columns gathered by row number (nulls among them), float keys. Every
    rank takes it (these keys are not skewed), and rank 0 holds the smallest keys."""
    rng = np.random.default_rng(seed)
    mask = rng.random(n) < null_rate
    k = rng.integers(-spread, spread, n)
    if shape == "carry-f64":
        t = pa.table({"k": k, "v": rng.random(n)})
    elif shape == "carry-i32":
        t = pa.table({"v": pa.array(rng.integers(0, 9, n), pa.int32()), "k": k})
    elif shape == "gathered":
        t = pa.table({"k": pa.array(k, mask=mask), "i": np.arange(n), "y": pa.array(rng.random(n), pa.float32(), mask=mask)})
    else:
        t = pa.table({"k": pa.array(1024 + k % 1024 + rng.random(n), mask=mask), "i": pa.array(np.arange(n), pa.int32())})
    got, shared = _sort_on_ranks(ranks, _sort_slices(t, ["k"], [ascending]))
    assert shared == (ranks if n else 0)  # (no rows anywhere: nothing to share)
    assert got.equals(_duckdb_sorted(t, "k", ascending))


def test_skewed_keys_take_the_sample_sort():
    """One far outlier puts nearly every key in one bucket: the ranks fall back to the
    sample sort's exchange, with the same answer."""
    rng = np.random.default_rng(10)
    n = 600_000
    k = rng.integers(0, 100, n)
    k[123] = 2**62
    t = pa.table({"k": k, "v": rng.random(n)})
    got, shared = _sort_on_ranks(2, _sort_slices(t, ["k"], [True]))
    assert shared == 0
    assert got.equals(_duckdb_sorted(t, "k", True))


def test_sorts_the_node_shared_sort_does_not_take():
    """Two keys, a string column, a boolean key: the sample sort, and the right answer."""
    rng = np.random.default_rng(11)
    n = 2000
    t = pa.table({"k": rng.integers(0, 30, n), "s": [f"s{i % 7}" for i in range(n)], "b": rng.random(n) < 0.5})
    for by, asc in ((["k", "b"], [True, False]), (["k"], [True]), (["b"], [False])):
        got, shared = _sort_on_ranks(3, _sort_slices(t, by, asc))
        assert shared == 0, by
        want = pa.Table.from_pandas(t.to_pandas().sort_values(by, ascending=asc, kind="stable"), preserve_index=False)
        want = want.cast(t.schema)
        assert got.equals(want), by


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 5000),
    key_type=st.sampled_from([pa.int64(), pa.uint64(), pa.timestamp("us")]),
    value_type=st.sampled_from([pa.float64(), pa.int32(), pa.float32(), pa.date32()]),
    ascending=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sort_carry_matches_duckdb(n, key_type, value_type, ascending, seed):
    """A 64-bit key and one narrow column sorted as pairs (kernels' sort_carry, the path of
    local_ops.sort for such tables) equal DuckDB's ORDER BY (ties in row order)."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 50, n) if key_type == pa.uint64() else rng.integers(-(2**62), 2**62, n) // rng.choice([1, 2**50], n)
    if pa.types.is_floating(value_type):
        values = pa.array(rng.standard_normal(n)).cast(value_type)
    else:
        values = pa.array(rng.integers(-(2**20), 2**20, n), pa.int32()).view(value_type)
    t = pa.table({"k": pa.array(k).cast(key_type), "v": values})
    pair = K.sort_carry(t.column("k"), not ascending, t.column("v"))
    got = pa.table({"k": pair[0], "v": pair[1]})
    assert got.equals(_duckdb_sorted(t, "k", ascending))
    assert L.sort(t, ["k"], [ascending]).equals(got)


def test_sort_carry_declines_nulls_and_wide_columns():
    t = pa.table({"k": pa.array([3, None, 1]), "v": [1.0, 2.0, 3.0], "d": pa.array([1, 2, 3], pa.decimal128(20))})
    assert K.sort_carry(t.column("k"), False, t.column("v")) is None  # a null key
    assert K.sort_carry(t.column("v"), False, t.column("k")) is None  # a float key: radix keys are not its values
    assert K.sort_carry(pa.chunked_array([[3, 2, 1]]), False, t.column("d")) is None  # 16-byte values


def test_bucket_kernels_refuse_positions_outside_their_arrays():
    col = pa.chunked_array([pa.array([5, 1, 7, 3], pa.int64())])
    base = (1 << 63) + 1  # the radix key of 1 (int64 keys: the value with the sign bit flipped)
    hist = K.bucket_hist(col, False, base, 1, 2)  # bucket: bit 1 of key - 1
    assert hist.tolist() == [[2, 2, 0]]
    keys, rows = np.zeros(4, np.uint64), np.zeros(4, np.int32)
    K.bucket_scatter(col, False, base, 1, 2, np.cumsum(hist, axis=1) - hist, keys, rows, 0)
    assert keys.tolist() == [4, 0, 6, 2] and rows.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="outside"):
        K.bucket_scatter(col, False, base, 1, 2, hist * 0 + 3, keys, rows, 0)  # every row at position 3 onwards
    with pytest.raises(ValueError, match="shape"):
        K.bucket_scatter(col, False, base, 1, 2, np.zeros((1, 2), np.int64), keys, rows, 0)
    with pytest.raises(ValueError, match="outside"):
        K.sort_buckets(keys, rows, np.array([0, 2, 9]), np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="power of two"):
        K.bucket_hist(col, False, 0, 0, 3)
    K.bucket_scatter(col, False, base, 1, 2, np.cumsum(hist, axis=1) - hist, keys, rows, 0)  # (the failed one wrote)
    counter = np.zeros(1, np.int64)
    K.sort_buckets(keys, rows, np.array([0, 2, 4]), counter)
    assert keys.tolist() == [0, 4, 2, 6] and rows.tolist() == [1, 0, 3, 2] and counter[0] >= 2


# ----------------------------------------------------------------- broadcast join


def test_broadcast_join_on_replicated_right_does_not_shuffle():
    rng = np.random.default_rng(7)
    lt = pa.table({"k": rng.integers(0, 20, 500), "x": rng.random(500)})
    rt = pa.table({"k": np.arange(20), "y": rng.random(20)})
    schema = pa.schema([("k", pa.int64()), ("x", pa.float64()), ("y", pa.float64())])
    calls = []

    def body(comm):
        orig = comm.alltoallv
        comm.alltoallv = lambda parts: calls.append(1) or orig(parts)
        lo, hi = 500 * comm.rank // 2, 500 * (comm.rank + 1) // 2
        d = P.join(comm, P.Dist(lt.slice(lo, hi - lo)), P.Dist(rt, P.REPLICATED), "inner", ["k"], ["k"], schema, broadcast=True)
        return d.table

    out = pa.concat_tables(run_ranks(2, body))
    assert not calls
    exp = duckdb.sql("SELECT l.k, x, y FROM lt l JOIN rt r ON l.k = r.k").to_arrow_table()
    assert sorted(out.to_pylist(), key=repr) == sorted(exp.to_pylist(), key=repr)


# ------------------------------------------------------------- node-shared join


small_keys = st.lists(st.one_of(st.none(), st.integers(-6, 6)), max_size=40)


@SETTINGS
@given(small_keys, st.lists(small_keys, min_size=1, max_size=3), st.sampled_from(["inner", "left"]), st.integers(0, 70))
def test_shared_dense_join_kernels_match_duckdb(lk, right_parts, how, gap):
    """Every "rank" (right part) fills its share of the slots from all parts' keys (with
    unused rows between the parts, as the padded shared columns have); the probe of the
    finished table equals DuckDB's join on the concatenated right keys."""
    mn, mx = -6, 6
    cap = mx - mn + 1
    outside = mn - 1
    starts, lens, rows = [], [], []
    keys = []
    for part in right_parts:
        starts.append(len(keys))
        lens.append(len(part))
        rows.extend(range(len(keys), len(keys) + len(part)))
        keys.extend(outside if k is None else k for k in part)
        keys.extend([123456789] * gap)  # garbage rows no part owns
    keys_np = np.array(keys or [0], dtype=np.int64)
    head = np.full(cap, 7, dtype=np.int32)  # any content: each rank clears its own slots
    chain = np.full(len(keys_np), -1, dtype=np.int32)
    n = len(right_parts)
    dup = False
    for r in range(n):  # ranks fill disjoint slot ranges
        dup |= K.shared_dense_build(keys_np, starts, lens, mn, head, chain, cap * r // n, cap * (r + 1) // n)
    li, ri = K.shared_dense_probe(pa.array(lk, pa.int64()), mn, head, chain, not dup, how)
    global_to_concat = {g: i for i, g in enumerate(rows)}
    got = sorted((i, -1 if j < 0 else global_to_concat[j]) for i, j in zip(li.tolist(), ri.tolist()))
    flat = [k for part in right_parts for k in part]
    assert got == _duck_pairs(lk, flat, how)
    assert dup == (len({k for k in flat if k is not None}) < sum(k is not None for k in flat))
    assert list(li) == sorted(li)  # the probe keeps the left rows' order


@SETTINGS
@given(small_keys, st.lists(small_keys, min_size=1, max_size=3), st.sampled_from(["inner", "left"]), st.integers(0, 70))
def test_optimistic_shared_store_detects_repeated_keys(lk, right_parts, how, gap):
    """Every "rank" stores its own right rows (global numbers, parts padded apart) into one
    table: the filled slots number the stored rows exactly when no key came twice, and
    then the probe of that table equals DuckDB's join."""
    mn, mx = -6, 6
    head = np.full(mx - mn + 1, -1, dtype=np.int32)
    rows, stored, row0 = [], 0, 0
    for part in right_parts:
        stored += K.shared_dense_store(pa.array(part, pa.int64()), row0, mn, head)
        rows.extend(range(row0, row0 + len(part)))
        row0 += len(part) + gap
    flat = [k for part in right_parts for k in part]
    assert stored == sum(k is not None for k in flat)
    unique = len({k for k in flat if k is not None}) == stored
    assert (K.count_filled_slots(head, 0, 5) + K.count_filled_slots(head, 5, len(head)) == stored) == unique
    if unique:
        li, ri = K.shared_dense_probe(pa.array(lk, pa.int64()), mn, head, head, True, how)
        global_to_concat = {g: i for i, g in enumerate(rows)}
        got = sorted((i, -1 if j < 0 else global_to_concat[j]) for i, j in zip(li.tolist(), ri.tolist()))
        assert got == _duck_pairs(lk, flat, how)


def test_optimistic_shared_store_refuses_keys_outside_the_table():
    head = np.full(4, -1, dtype=np.int32)
    with pytest.raises(ValueError, match="outside the table"):
        K.shared_dense_store(pa.array([0, 1, 4], pa.int64()), 0, 0, head)
    with pytest.raises(ValueError, match="outside the table"):
        K.shared_dense_store(pa.array([-1], pa.int64()), 0, 0, head)
    with pytest.raises(ValueError, match="beyond int32"):
        K.shared_dense_store(pa.array([0], pa.int64()), 2**31 - 1, 0, head)
    head[:] = -1  # (after an error the table's content is unspecified)
    assert K.shared_dense_store(pa.array([None, 3], pa.int64()), 0, 0, head) == 1  # a null row stores nothing
    assert head.tolist() == [-1, -1, -1, 1]


@pytest.mark.parametrize("repeat", ["none", "across threads", "within a thread"])
@pytest.mark.parametrize("how", ["inner", "left", "right", "outer"])
def test_dense_join_on_threads_stores_own_rows_then_checks(monkeypatch, repeat, how):
    """The one-process direct-addressed join on 4 threads (right side big enough to split:
    every thread stores its own rows first) gives the exact pairs of a reference join:
    unique keys, one key repeated in two threads' rows (their racing stores keep one, the
    slot count sees it and the slot-range build chains both), one repeated in one thread's
    rows; null keys on both sides, a sliced right array."""
    monkeypatch.setenv("OPGRAPH_KERNEL_THREADS", "4")
    rng = np.random.default_rng(len(repeat) + len(how))
    nr = 1_200_000
    rk = rng.permutation(nr + 7).astype(np.int64)[: nr + 5]
    if repeat == "across threads":
        rk[nr] = rk[7]  # after the slice below: right rows 2 and nr - 5
    elif repeat == "within a thread":
        rk[9] = rk[11]
    right = pa.array(rk, mask=rng.random(nr + 5) < 0.01).slice(5)
    lk = rng.integers(-3, nr + 10, 200_000)
    lk[:2] = rk[7], rk[11]  # the repeated keys are looked up
    left = pa.array(lk, mask=np.r_[[False, False], rng.random(len(lk) - 2) < 0.01])
    li, ri = K.hash_join_i64(left, right, how)
    got = pa.table({"l": li, "r": ri})
    con = duckdb.connect()
    con.register("lt", pa.table({"k": left, "l": np.arange(len(left))}))
    con.register("rt", pa.table({"k": right, "r": np.arange(len(right))}))
    kind = "FULL" if how == "outer" else how.upper()
    exp = con.sql(f"SELECT coalesce(l, -1) AS l, coalesce(r, -1) AS r FROM lt {kind} JOIN rt ON lt.k = rt.k").to_arrow_table()

    def pairs(t: pa.Table) -> np.ndarray:
        lcol, rcol = t["l"].to_numpy(), t["r"].to_numpy()
        order = np.lexsort((rcol, lcol))
        return np.stack([lcol[order], rcol[order]])

    assert np.array_equal(pairs(got), pairs(exp))


def _shared_join_case(n_left, n_right, key_range, seed):
    rng = np.random.default_rng(seed)
    lt = pa.table({"k": pa.array(rng.integers(0, key_range, n_left), pa.int32(), mask=rng.random(n_left) < 0.05), "x": rng.random(n_left)})
    rt = pa.table(
        {
            "k": pa.array(rng.integers(0, key_range, n_right), pa.int64(), mask=rng.random(n_right) < 0.05),
            "y": pa.array(rng.integers(-9, 9, n_right), pa.int32(), mask=rng.random(n_right) < 0.2),
            "z": pa.array(rng.random(n_right), pa.float32()),
        }
    )
    return lt, rt


@pytest.mark.parametrize("ranks", [2, 3, 4])
@pytest.mark.parametrize("how", ["inner", "left"])
def test_node_shared_join_of_ranks_matches_duckdb(ranks, how):
    """parallel_ops.join on ranks sharing memory (threads) with dense keys: no shuffle, one
    shared table; int32 against int64 keys, nulls, duplicates, a rank without right rows."""
    lt, rt = _shared_join_case(700, 300, 120, ranks)
    schema = pa.schema([("k", pa.int64()), ("x", pa.float64()), ("y", pa.int32()), ("z", pa.float32())])
    calls = []

    def body(comm):
        orig = comm.alltoallv
        comm.alltoallv = lambda parts: calls.append(1) or orig(parts)
        lo, hi = 700 * comm.rank // ranks, 700 * (comm.rank + 1) // ranks
        rlo, rhi = (0, 0) if comm.rank == 1 else (300 * comm.rank // ranks, 300 * (comm.rank + 1) // ranks)
        if comm.rank == 0:
            rlo, rhi = 0, 300 * 2 // ranks  # rank 1's share too
        d = P.join(comm, P.Dist(lt.slice(lo, hi - lo)), P.Dist(rt.slice(rlo, rhi - rlo)), how, ["k"], ["k"], schema)
        return d.table

    before = P.STATS["node_shared_join"]
    out = pa.concat_tables(run_ranks(ranks, body))
    assert P.STATS["node_shared_join"] - before == ranks
    assert not calls  # nothing shuffled
    jt = "JOIN" if how == "inner" else "LEFT JOIN"
    exp = duckdb.sql(f"SELECT l.k::BIGINT AS k, x, y, z FROM lt l {jt} rt r ON l.k = r.k").to_arrow_table()
    assert out.schema == schema
    assert sorted(out.to_pylist(), key=repr) == sorted(exp.to_pylist(), key=repr)


def _join_on_ranks(ranks, lt, rt, how, left_on, right_on, schema):
    """parallel_ops.join on thread ranks, each with an even slice of both tables: (the
    ranks' results concatenated, how many ranks took the node-shared join)."""

    def body(comm):
        def mine(t):
            lo, hi = t.num_rows * comm.rank // ranks, t.num_rows * (comm.rank + 1) // ranks
            return P.Dist(t.slice(lo, hi - lo))

        return P.join(comm, mine(lt), mine(rt), how, left_on, right_on, schema).table

    before = P.STATS["node_shared_join"]
    out = pa.concat_tables(run_ranks(ranks, body))
    return out, P.STATS["node_shared_join"] - before


@pytest.mark.parametrize("ranks", [2, 3, 4])
@pytest.mark.parametrize("repeat", [False, True])
def test_node_shared_join_unique_and_repeated_keys(ranks, repeat):
    """Unique right keys (with null keys) keep the table the ranks stored optimistically;
    one key repeated across two ranks' rows makes them build it again by slot ranges.
    Both equal DuckDB, left join with nulls and unmatched rows."""
    rng = np.random.default_rng(ranks)
    n = 500
    rkeys = rng.permutation(n).astype(np.int64)
    if repeat:
        rkeys[-1] = rkeys[0]  # first and last rank share a key
    rt = pa.table({"k": pa.array(rkeys, mask=rng.random(n) < 0.05), "y": pa.array(rng.random(n), mask=rng.random(n) < 0.1)})
    lt = pa.table({"k": pa.array(rng.integers(-20, n + 20, 900), mask=rng.random(900) < 0.05), "x": rng.random(900)})
    schema = pa.schema([("k", pa.int64()), ("x", pa.float64()), ("y", pa.float64())])
    rebuilt = P.STATS["node_shared_join_rebuilt"]
    out, shared = _join_on_ranks(ranks, lt, rt, "left", ["k"], ["k"], schema)
    assert shared == ranks
    assert P.STATS["node_shared_join_rebuilt"] - rebuilt == (ranks if repeat else 0)
    exp = duckdb.sql("SELECT l.k, x, y FROM lt l LEFT JOIN rt r ON l.k = r.k").to_arrow_table()
    assert sorted(out.to_pylist(), key=repr) == sorted(exp.to_pylist(), key=repr)


def test_sparse_keys_take_the_shuffle_join():
    """Keys spread far wider than the right rows: no direct-addressed table; the ranks
    shuffle both sides instead, with the same answer."""
    rng = np.random.default_rng(9)
    lt = pa.table({"k": rng.integers(0, 50, 400) * 10**12, "x": rng.random(400)})
    rt = pa.table({"k": np.arange(50) * 10**12, "y": rng.random(50)})
    schema = pa.schema([("k", pa.int64()), ("x", pa.float64()), ("y", pa.float64())])

    out, shared = _join_on_ranks(2, lt, rt, "inner", ["k"], ["k"], schema)
    assert shared == 0
    exp = duckdb.sql("SELECT l.k, x, y FROM lt l JOIN rt r ON l.k = r.k").to_arrow_table()
    assert sorted(out.to_pylist(), key=repr) == sorted(exp.to_pylist(), key=repr)


def test_node_shared_join_with_differently_named_keys():
    """left_on/right_on of other names: the right key column is an output column, carried
    through the shared segment like the other right columns."""
    rng = np.random.default_rng(11)
    lt = pa.table({"a": pa.array(rng.integers(-50, 50, 300), pa.int16()), "x": rng.random(300)})
    rt = pa.table({"b": pa.array(rng.permutation(100) - 50, pa.int64()), "y": pa.array(rng.random(100), pa.float32())})
    schema = pa.schema([("a", pa.int16()), ("x", pa.float64()), ("b", pa.int64()), ("y", pa.float32())])

    out, shared = _join_on_ranks(3, lt, rt, "left", ["a"], ["b"], schema)
    assert shared == 3
    exp = duckdb.sql("SELECT a, x, b, y FROM lt LEFT JOIN rt ON lt.a = rt.b").to_arrow_table()
    assert out.schema == schema
    assert sorted(out.to_pylist(), key=repr) == sorted(exp.to_pylist(), key=repr)
