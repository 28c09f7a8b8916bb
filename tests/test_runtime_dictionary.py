"""Parquet string columns are read dictionary-encoded and decoded lazily (runtime/io.py,
executor.arg): results and output types must equal the plain path and DuckDB."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from opgraph.runtime.executor import run_local
from opgraph.runtime.expr_eval import _isin
from opgraph.runtime.kernels import kernel_threads, set_ranks_sharing
from test_runtime_local import EV, assert_same, duck

import opgraph as og

RANKS = (1, 2, 3)


@pytest.fixture(scope="module")
def ev_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("dict")
    p = d / "ev.parquet"
    pq.write_table(EV, p, row_group_size=37)  # several row groups: several dictionaries
    u = pa.table({"s": ["a", "b", "ab", "zz", None], "w": [1, 2, 3, 4, 5]})
    pq.write_table(u, d / "u.parquet")
    return str(p), str(d / "u.parquet"), d


def _runs(pipe, *args):
    plan = pipe.compile(*args)
    return [(r, run_local(plan.doc, plan.inputs, r)) for r in RANKS]


def _check(pipe, args, sql, ordered=False):
    expected = duck(sql)
    for r, outs in _runs(pipe, *args):
        out = outs[0]
        for f in out.schema:
            assert not pa.types.is_dictionary(f.type), (r, f)
        try:
            assert_same(out, expected, ordered)
        except AssertionError as e:
            raise AssertionError(f"ranks={r}: {e}") from e


def test_isin_filter_project(ev_path):
    p, _, _ = ev_path

    @og.pipeline
    def pipe(path):
        t = og.read_parquet(path)
        t = t[t["s"].isin(["a", "ab", ""]) & (t["id"] > 10)]
        return t[["s", "id"]]

    _check(pipe, (p,), f"SELECT s, id FROM read_parquet('{p}') WHERE s IN ('a', 'ab', '') AND id > 10")


def test_string_ops_map_and_compare(ev_path):
    p, _, _ = ev_path

    @og.pipeline
    def pipe(path):
        t = og.read_parquet(path)
        t = t[t["s"] != "b"]
        return t.assign(up=t["s"].str.upper(), n=t["s"].str.len(), inn=t["s"].isin(["B", "é"]))

    _check(
        pipe,
        (p,),
        f"""SELECT *, upper(s) AS up, length(s) AS n, coalesce(s IN ('B', 'é'), false) AS inn
            FROM read_parquet('{p}') WHERE s <> 'b'""",
    )


def test_join_groupby_sort_and_sink(ev_path):
    p, u, d = ev_path
    out = str(d / "out")

    @og.pipeline
    def pipe(path, users, out):
        t = og.read_parquet(path)
        us = og.read_parquet(users)
        t = t[t["v"] > 0]
        j = t.merge(us, on="s", how="inner")
        j2 = t.merge(og.read_parquet(users).rename(columns={"s": "s2"}), left_on="i32", right_on="w", how="left")
        g = j.groupby("s").agg(n=("id", "count"), w=("w", "sum"))
        og.write_parquet(g, out)
        return g.sort_values("s"), j2.groupby("s2").agg(n=("id", "count"))

    plan = pipe.compile(p, u, out)
    e1 = duck(f"""SELECT s, count(id) n, sum(w) w FROM read_parquet('{p}') t JOIN read_parquet('{u}') u USING (s)
                  WHERE v > 0 GROUP BY s ORDER BY s""")
    e2 = duck(f"""SELECT u.s AS s2, count(id) n FROM read_parquet('{p}') t LEFT JOIN read_parquet('{u}') u
                  ON t.i32 = u.w WHERE v > 0 GROUP BY u.s""")
    for r in RANKS:
        a, b = run_local(plan.doc, plan.inputs, r)
        assert_same(a, e1, ordered=True)
        assert_same(b, e2)
        assert a.schema.field("s").type == pa.string()
        written = pq.read_table(out)
        assert written.schema.field("s").type == pa.string()
        assert_same(written, e1)


def test_dict_isin_kernel():
    a = pa.chunked_array(
        [pa.array(["x", "y", None, "x"]).dictionary_encode(), pa.array(["y", "z"]).dictionary_encode()]
    )
    assert _isin(a, ["x", "z"]).to_pylist() == [True, False, False, True, False, True]
    assert _isin(a, []).to_pylist() == [False] * 6


def test_kernel_threads_follow_ranks():
    prev = set_ranks_sharing(64)
    try:
        assert kernel_threads() == 1
    finally:
        set_ranks_sharing(prev)
