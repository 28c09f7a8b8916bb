"""The ETL fast paths (issue #4) against DuckDB:

* group-by on a dictionary-encoded key (a Parquet string column kept encoded by the
  executor) groups on the dictionary's indices (local_ops._dictionary_keys, the kernel's
  array-indexed path) and decodes only the result's keys: nulls form one group, chunks with
  different dictionaries are unified first, a dictionary holding a null or a value twice
  falls back to the decoded column;
* the int64 hash join's sequential probe (op_kernels.hpp join_sequential_probe: dense key
  range or a small build side) emits inner/left results in left-row order (each left row's
  matches in right-row order); every kind, null keys (never match), duplicate keys,
  out-of-range and negative keys, empty and all-null sides; the partitioned path still
  gives the same multiset;
* a one-rank join keeps dictionary payload columns encoded (the executor decodes them
  where a later op needs plain strings), and the pipelines' outputs stay plain strings.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from opgraph.runtime import local_ops as L
from opgraph.runtime.executor import run_local
from opgraph.runtime.kernels import grouping as GK
from opgraph.runtime.kernels import opkernels as K
from test_runtime_local import assert_same, duck

import opgraph as og

KINDS = ("inner", "left", "right", "outer")
_SQL_KIND = {"inner": "INNER", "left": "LEFT", "right": "RIGHT", "outer": "FULL OUTER"}

# ------------------------------------------------------------- dictionary-key group-by


def _dict_chunks(seed: int = 0, n: int = 3000) -> pa.ChunkedArray:
    """Three chunks with different dictionaries (other values, other order) and null keys."""
    rng = np.random.default_rng(seed)
    vocab = [["US", "DE", "FR"], ["JP", "US", "BR", "DE"], ["BR", "XX", "FR"]]
    chunks = []
    for voc in vocab:
        d = pa.array(voc)
        idx = pa.array(rng.integers(0, len(voc), n).astype(np.int32), mask=rng.random(n) < 0.1)
        chunks.append(pa.DictionaryArray.from_arrays(idx, d))
    return pa.chunked_array(chunks)


def _agg_table(key: pa.ChunkedArray, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = len(key)
    return pa.table(
        {
            "k": key,
            "v": pa.array(rng.random(n), mask=rng.random(n) < 0.05),
            "i": pa.array(rng.integers(-50, 50, n)),
        }
    )


AGGS = [("s", "v", "sum"), ("c", "v", "count"), ("m", "v", "mean"), ("lo", "i", "min"), ("hi", "i", "max"), ("n", "v", "size")]
AGG_SCHEMA = pa.schema(
    [("k", pa.string()), ("s", pa.float64()), ("c", pa.int64()), ("m", pa.float64()), ("lo", pa.int64()), ("hi", pa.int64()), ("n", pa.int64())]
)
AGG_SQL = "SELECT k, sum(v) s, count(v) c, avg(v) m, min(i) lo, max(i) hi, count(*) n FROM t GROUP BY k"


def _expected(t: pa.Table) -> pa.Table:
    return duck(AGG_SQL, t=L.decode_dictionaries(t))


def test_dictionary_key_groupby_vs_duckdb_null_keys_and_chunk_dictionaries():
    t = _agg_table(_dict_chunks())
    before = L.dictionary_key_groupbys
    out = L.groupby_agg(t, ["k"], AGGS, AGG_SCHEMA)
    assert L.dictionary_key_groupbys == before + 1  # the index path ran
    assert GK.last_direct  # ... on the kernel's array-indexed groups
    assert out.schema == AGG_SCHEMA
    assert out.column("k").null_count == 1  # nulls: one group
    assert_same(out, _expected(t))


def test_dictionary_key_groupby_same_as_decoded_path():
    t = _agg_table(_dict_chunks(seed=5))
    a = L.groupby_agg(t, ["k"], AGGS, AGG_SCHEMA)
    b = L.groupby_agg(L.decode_dictionaries(t), ["k"], AGGS, AGG_SCHEMA)
    assert_same(a, b)


@pytest.mark.parametrize(
    "dictionary",
    [pa.array(["a", None, "b"]), pa.array(["a", "b", "a"])],  # a null value / a repeated value
    ids=["null-in-dictionary", "repeated-value"],
)
def test_dictionary_key_groupby_falls_back_where_indices_do_not_name_keys(dictionary):
    rng = np.random.default_rng(3)
    n = 500
    idx = pa.array(rng.integers(0, 3, n).astype(np.int32), mask=rng.random(n) < 0.1)
    t = _agg_table(pa.chunked_array([pa.DictionaryArray.from_arrays(idx, dictionary)]))
    before = L.dictionary_key_groupbys
    out = L.groupby_agg(t, ["k"], AGGS, AGG_SCHEMA)
    assert L.dictionary_key_groupbys == before
    assert_same(out, _expected(t))
    assert out.column("k").null_count == 1


def test_dictionary_key_groupby_two_keys_and_empty():
    key = _dict_chunks(seed=7, n=400)
    rng = np.random.default_rng(8)
    t = _agg_table(key).append_column("j", pa.array(rng.integers(0, 3, len(key)), mask=rng.random(len(key)) < 0.2))
    schema = pa.schema([("k", pa.string()), ("j", pa.int64()), ("s", pa.float64()), ("c", pa.int64())])
    out = L.groupby_agg(t, ["k", "j"], [("s", "v", "sum"), ("c", "v", "count")], schema)
    exp = duck("SELECT k, j, sum(v) s, count(v) c FROM t GROUP BY k, j", t=L.decode_dictionaries(t))
    assert_same(out, exp)
    empty = L.groupby_agg(t.slice(0, 0), ["k"], AGGS, AGG_SCHEMA)
    assert empty.num_rows == 0 and empty.schema == AGG_SCHEMA


def test_dictionary_value_aggregate_decodes():
    """A dictionary-encoded column aggregated (not a key): decoded, Acero/kernel as before."""
    t = _agg_table(_dict_chunks(seed=9, n=300)).append_column("d", _dict_chunks(seed=10, n=300))
    schema = pa.schema([("k", pa.string()), ("dmin", pa.string()), ("dn", pa.int64())])
    out = L.groupby_agg(t, ["k"], [("dmin", "d", "min"), ("dn", "d", "count")], schema)
    exp = duck("SELECT k, min(d) dmin, count(d) dn FROM t GROUP BY k", t=L.decode_dictionaries(t))
    assert_same(out, exp)


@pytest.fixture(scope="module")
def parquet_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("etlpaths")
    rng = np.random.default_rng(11)
    n = 20000
    countries = np.array(["US", "DE", "FR", "JP", "BR"], dtype=object)
    ev = pa.table(
        {
            "user_id": pa.array(rng.integers(0, 2000, n), mask=rng.random(n) < 0.02),
            "value": rng.random(n),
            "country": pa.array(countries[rng.integers(0, 5, n)], mask=rng.random(n) < 0.05),
        }
    )
    us = pa.table({"user_id": np.arange(1500), "age": rng.integers(18, 90, 1500)})
    pq.write_table(ev, d / "ev.parquet", row_group_size=3000)  # several dictionaries
    pq.write_table(us, d / "us.parquet")
    return str(d / "ev.parquet"), str(d / "us.parquet"), d


@og.pipeline
def _etl(events: str, users: str):
    ev = og.read_parquet(events)
    us = og.read_parquet(users)
    ev = ev[(ev["value"] > 0.3) & ev["country"].isin(["US", "DE", "JP"])]
    ev = ev.assign(score=ev["value"] * 2 + 1)
    j = ev.merge(us, on="user_id", how="inner")
    return j.groupby("country").agg(total=("score", "sum"), n=("score", "count"), mean_age=("age", "mean"))


@og.pipeline
def _groupby_nulls(events: str):
    ev = og.read_parquet(events)
    return ev.groupby("country").agg(total=("value", "sum"), n=("value", "size"))


def test_pipeline_groups_parquet_strings_on_indices(parquet_inputs):
    evp, usp, _ = parquet_inputs
    expected = duck(
        f"""SELECT country, sum(value * 2 + 1) total, count(value * 2 + 1) n, avg(age) mean_age
        FROM read_parquet('{evp}') e JOIN read_parquet('{usp}') u USING (user_id)
        WHERE value > 0.3 AND country IN ('US', 'DE', 'JP') GROUP BY country"""
    )
    plan = _etl.compile(evp, usp)
    before = L.dictionary_key_groupbys
    out = run_local(plan.doc, plan.inputs, 1)[0]
    assert L.dictionary_key_groupbys == before + 1
    assert out.schema.field("country").type == pa.string()
    assert_same(out, expected)
    for r in (2, 3):  # several ranks: decoded, as before
        assert_same(run_local(plan.doc, plan.inputs, r)[0], expected)


def test_pipeline_groupby_null_string_keys(parquet_inputs):
    evp, _, _ = parquet_inputs
    expected = duck(f"SELECT country, sum(value) total, count(*) n FROM read_parquet('{evp}') GROUP BY country")
    plan = _groupby_nulls.compile(evp)
    before = L.dictionary_key_groupbys
    out = run_local(plan.doc, plan.inputs, 1)[0]
    assert L.dictionary_key_groupbys == before + 1
    assert out.column("country").null_count == 1
    assert_same(out, expected)


# ------------------------------------------------------------------------------ joins


def _pairs_duck(lk: pa.Array, rk: pa.Array, how: str) -> list[tuple]:
    lt = pa.table({"k": lk, "i": np.arange(len(lk), dtype=np.int64)})
    rt = pa.table({"k": rk, "j": np.arange(len(rk), dtype=np.int64)})
    res = duck(f"SELECT l.i, r.j FROM lt l {_SQL_KIND[how]} JOIN rt r ON l.k = r.k", lt=lt, rt=rt)
    return sorted((-1 if a is None else a, -1 if b is None else b) for a, b in zip(res.column("i").to_pylist(), res.column("j").to_pylist()))


def _key_cases():
    rng = np.random.default_rng(21)
    nl = 6000
    # dense right keys (ids), with duplicates, nulls, negatives and left keys out of range
    r_dense = pa.array(np.concatenate([np.arange(-20, 2000), rng.integers(-20, 2000, 300)]), mask=rng.random(2320) < 0.03)
    l_dense = pa.array(rng.integers(-60, 2100, nl), mask=rng.random(nl) < 0.05)
    # small sparse build side (open addressing table)
    r_small = pa.array(rng.integers(-(10**15), 10**15, 300).repeat(2), mask=rng.random(600) < 0.05)
    l_small = pa.array(np.where(rng.random(nl) < 0.5, r_small.fill_null(0).to_numpy()[rng.integers(0, 600, nl)], rng.integers(-(10**15), 10**15, nl)))
    # large sparse build side: the partitioned path
    big = rng.integers(-(10**15), 10**15, 40000)
    r_big = pa.array(big, mask=rng.random(40000) < 0.02)
    l_big = pa.array(np.where(rng.random(nl) < 0.6, big[rng.integers(0, 40000, nl)], 7), mask=rng.random(nl) < 0.02)
    return {
        "dense": (l_dense, r_dense, True),
        "small": (l_small, r_small, True),
        "partitioned": (l_big, r_big, False),
        "unique-dense": (pa.array(rng.integers(0, 1000, nl)), pa.array(rng.permutation(1000)), True),
        "all-null-right": (l_dense, pa.nulls(50, pa.int64()), True),
        "empty-left": (pa.array([], pa.int64()), r_dense, True),
        "empty-right": (l_dense, pa.array([], pa.int64()), False),
    }


KEY_CASES = _key_cases()


@pytest.mark.parametrize("how", KINDS)
@pytest.mark.parametrize("case", list(KEY_CASES))
def test_hash_join_pairs_vs_duckdb_and_left_order(case, how):
    lk, rk, ordered = KEY_CASES[case]
    li, ri = K.hash_join_i64(lk, rk, how)
    got = sorted(zip(li.tolist(), ri.tolist()))
    assert got == _pairs_duck(lk, rk, how)
    if len(rk):
        assert K.last_join_ordered == ordered
    if ordered and how in ("inner", "left"):
        # left-row order; each left row's matches in right-row order
        assert np.all(np.diff(li) >= 0)
        same = np.diff(li) == 0
        assert np.all(np.diff(ri)[same] > 0)
        if how == "left":
            assert np.array_equal(np.unique(li), np.arange(len(lk)))


def _tables(seed: int = 31):
    rng = np.random.default_rng(seed)
    n = 5000
    countries = np.array(["US", "DE", "FR"], dtype=object)
    left = pa.table(
        {
            "user_id": pa.array(rng.integers(-5, 1100, n), mask=rng.random(n) < 0.03),
            "value": rng.random(n),
            "country": pa.chunked_array(
                [
                    pa.array(countries[rng.integers(0, 3, 2500)], mask=rng.random(2500) < 0.1).dictionary_encode(),
                    pa.array(countries[rng.integers(1, 3, 2500)]).dictionary_encode(),
                ]
            ),
        }
    )
    right = pa.table(
        {
            "user_id": pa.array(np.concatenate([np.arange(1000), rng.integers(0, 1000, 100)]), mask=rng.random(1100) < 0.02),
            "age": rng.integers(18, 90, 1100),
        }
    )
    return left, right


JOIN_SCHEMA = pa.schema([("user_id", pa.int64()), ("value", pa.float64()), ("country", pa.string()), ("age", pa.int64())])


@pytest.mark.parametrize("how", KINDS)
def test_local_join_vs_duckdb_every_kind(how):
    left, right = _tables()
    out = L.join(left, right, how, ["user_id"], ["user_id"], JOIN_SCHEMA)
    # dictionary payloads stay encoded through a one-rank join
    assert pa.types.is_dictionary(out.schema.field("country").type)
    plain = L.decode_dictionaries(out)
    assert plain.schema == JOIN_SCHEMA
    key = "coalesce(l.user_id, r.user_id)" if how in ("right", "outer") else "l.user_id"
    exp = duck(
        f"SELECT {key} AS user_id, l.value, l.country, r.age FROM l {_SQL_KIND[how]} JOIN r ON l.user_id = r.user_id",
        l=L.decode_dictionaries(left),
        r=right,
    )
    assert_same(plain, exp)
    if how in ("inner", "left"):  # left-row order: pandas merge's order for these kinds
        rpd = right.to_pandas()
        rpd = rpd[rpd["user_id"].notna()]  # pandas matches null keys with each other; SQL never does
        epd = L.decode_dictionaries(left).to_pandas().merge(rpd, on="user_id", how=how)
        got = plain.to_pandas()
        assert got["value"].tolist() == epd["value"].tolist()
        assert got["age"].fillna(-1).tolist() == epd["age"].fillna(-1).tolist()


@pytest.mark.parametrize("how", ["inner", "left"])
@pytest.mark.parametrize("variant", ["every-row-once", "one-row-twice", "one-row-unmatched"])
def test_join_to_dimension_table_skips_left_gather_only_when_exact(variant, how, monkeypatch):
    """Facts joined to unique dimension keys: when every left row matches once the left
    columns pass through uncopied (``is_identity``); a duplicate right key or a missing
    key must still give DuckDB's answer."""
    rng = np.random.default_rng(5)
    n, m = 70_000, 3_000  # more rows than one is_identity block
    keys = rng.integers(0, m, n)
    right_keys = np.arange(m)
    if variant == "one-row-twice":
        right_keys = np.concatenate([right_keys, [int(keys[n // 2])]])
    if variant == "one-row-unmatched":
        keys[n - 1] = m + 10
    left = pa.table({"user_id": keys, "value": rng.random(n)})
    right = pa.table({"user_id": right_keys, "age": rng.integers(18, 90, len(right_keys))})
    calls = []
    real = L.take_columns
    monkeypatch.setattr(L, "take_columns", lambda cols, *a: calls.append(len(cols[0])) or real(cols, *a))
    schema = pa.schema([("user_id", pa.int64()), ("value", pa.float64()), ("age", pa.int64())])
    out = L.join(left, right, how, ["user_id"], ["user_id"], schema)
    exp = duck(f"SELECT l.user_id, l.value, r.age FROM l {_SQL_KIND[how]} JOIN r USING (user_id)", l=left, r=right)
    assert_same(out, exp)
    exact = variant == "every-row-once" or (variant == "one-row-unmatched" and how == "left")
    assert (n not in calls) == exact  # the left side (n rows) was gathered unless exact
    if exact:
        assert out.column("value").chunks[0].buffers()[1].address == left.column("value").chunks[0].buffers()[1].address
