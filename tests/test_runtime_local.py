"""The local engine: every operator and aggregate of DESIGN §3 run on 1-4 ranks (threads)
and checked against DuckDB (row order ignored unless the last op is a sort), the local
communicator, partitioned I/O with atomic sinks, failures, and the examples."""

from __future__ import annotations

import importlib.util
import math
import threading
import time
from decimal import Decimal
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from opgraph.runtime import executor as ex
from opgraph.runtime.communicator import Communicator
from opgraph.runtime.executor import ExecutionError, run_local
from opgraph.runtime.local_comm import CommAborted, run_ranks
from pyarrow import ipc
from support import collectives_and_point_to_point

import opgraph as og
from opgraph.errors import OpgraphError

REPO = Path(__file__).resolve().parent.parent
RANKS = (1, 2, 3, 4)
THIS = Path(__file__).name

# ---------------------------------------------------------------------------- helpers


def duck(sql: str, **tables: pa.Table) -> pa.Table:
    con = duckdb.connect()
    for name, table in tables.items():
        con.register(name, table)
    result = con.sql(sql)
    return result.to_arrow_table() if hasattr(result, "to_arrow_table") else result.arrow()


def _norm(v):
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return v
    return v


def _sort_key(row):
    out = []
    for v in row:
        if v is None:
            out.append((2, 0, ""))
        elif isinstance(v, str):
            out.append((1, 0, v))
        elif isinstance(v, bool):
            out.append((0, float(v), ""))
        else:
            out.append((0, float(f"{v:.6g}"), ""))
    return out


def rows(table: pa.Table, ordered: bool) -> list[tuple]:
    data = [tuple(_norm(v) for v in r.values()) for r in table.to_pylist()]
    return data if ordered else sorted(data, key=_sort_key)


def assert_same(ours: pa.Table, expected: pa.Table, ordered: bool = False, names: bool = True) -> None:
    if names:
        assert ours.column_names == expected.column_names
    a, b = rows(ours, ordered), rows(expected, ordered)
    assert len(a) == len(b), f"{len(a)} rows vs {len(b)} expected"
    for ra, rb in zip(a, b):
        assert len(ra) == len(rb)
        for x, y in zip(ra, rb):
            if isinstance(x, float) and isinstance(y, int | float) and not isinstance(y, bool) or isinstance(y, float) and isinstance(x, int) and not isinstance(x, bool):
                assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9), (ra, rb)
            else:
                assert x == y, (ra, rb)


def run_all(pipe, *args, ranks=RANKS) -> list[list[pa.Table]]:
    plan = pipe.compile(*args)
    return [run_local(plan.doc, plan.inputs, r) for r in ranks]


def check(pipe, args, sql, ordered=False, ranks=RANKS, **tables):
    """Runs ``pipe(*args)`` on every rank count and compares its one output with DuckDB."""
    expected = duck(sql, **tables)
    for r, outs in zip(ranks, run_all(pipe, *args, ranks=ranks)):
        try:
            assert_same(outs[0], expected, ordered)
        except AssertionError as e:
            raise AssertionError(f"ranks={r}: {e}") from e
    return expected


def events(n: int = 240, seed: int = 0) -> pa.Table:
    """Nulls everywhere, strings (with unicode and the empty string), duplicates, a skewed
    key (half the rows have k = 0) and a group whose values are all null (k = 99)."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 8, n)
    k[rng.random(n) < 0.5] = 0
    k[-6:] = 99
    k_null = rng.random(n) < 0.1
    v = rng.integers(-40, 41, n) / 4.0
    v_null = (rng.random(n) < 0.1) | (k == 99)
    i = rng.integers(-20, 21, n)
    i_null = rng.random(n) < 0.1
    words = np.array(["a", "b", "B", "ab", "", "é", "ba", "abc"], dtype=object)
    s = words[rng.integers(0, len(words), n)]
    s_null = rng.random(n) < 0.1
    flag = rng.random(n) > 0.5
    return pa.table(
        {
            "id": pa.array(np.arange(n), pa.int64()),
            "k": pa.array(k, pa.int64(), mask=k_null),
            "v": pa.array(v, pa.float64(), mask=v_null),
            "i": pa.array(i, pa.int64(), mask=i_null),
            "i32": pa.array(rng.integers(0, 50, n), pa.int32()),
            "s": pa.array(list(s), pa.string(), mask=s_null),
            "flag": pa.array(flag, pa.bool_(), mask=rng.random(n) < 0.1),
        }
    )


EV = events()

# ------------------------------------------------------------------------ expressions


@og.pipeline
def arith_pipe(t):
    return t.assign(
        add=t["i"] + t["i32"],
        sub=t["i"] - 3,
        mul=t["v"] * t["i"],
        tdiv=t["i"] / 4,
        fdiv=t["i"] // 3,
        fdivn=t["i"] // -4,
        mod=t["i"] % 3,
        modn=t["i"] % -4,
        fmod=t["v"] % 1.5,
        ffdiv=t["v"] // 2.0,
        neg=-t["i"],
        pw=t["i32"] ** 2,
        fpw=t["v"] ** 2,
        ab=t["i"].abs(),
        fab=t["v"].abs(),
        lg=og.log(t["i32"] + 1),
        ex=og.exp(t["v"] / 10),
        sq=og.sqrt(t["i32"]),
        mix=t["i32"] * 0.5 + t["i"],
    )


def test_arithmetic_matches_duckdb():
    sql = """
        SELECT *, i + i32 AS add, i - 3 AS sub, v * i AS mul, i / 4 AS tdiv,
               CAST(floor(i / 3) AS BIGINT) AS fdiv, CAST(floor(i / -4) AS BIGINT) AS fdivn,
               ((i % 3) + 3) % 3 AS mod, ((i % -4) + -4) % -4 AS modn,
               v - 1.5 * floor(v / 1.5) AS fmod, floor(v / 2.0) AS ffdiv, -i AS neg,
               i32 * i32 AS pw, pow(v, 2) AS fpw, abs(i) AS ab, abs(v) AS fab,
               ln(i32 + 1) AS lg, exp(v / 10) AS ex, sqrt(i32) AS sq, i32 * 0.5 + i AS mix
        FROM t"""
    check(arith_pipe, (EV,), sql, t=EV)


@og.pipeline
def logic_pipe(t):
    return t.assign(
        cmp=t["v"] > 0.5,
        le=t["i"] <= t["i32"],
        eq=t["s"] == "a",
        ne=t["s"] != "a",
        scmp=t["s"] < "b",
        land=(t["v"] > 0) & (t["i"] > 0),
        lor=(t["v"] > 0) | (t["i"] > 0),
        lnot=~(t["v"] > 0),
        isn=t["v"].isnull(),
        nn=t["s"].notnull(),
        fill=t["v"].fillna(-1.0),
        filli=t["i"].fillna(0),
        fills=t["s"].fillna("?"),
        isin=t["s"].isin(["a", "b"]),
        isin_i=t["i"].isin([1, 2, 3]),
        w=og.where(t["v"] > 0, t["v"], 0.0),
        wi=og.where(t["flag"], t["i"], t["i32"]),
    )


def test_logic_nulls_and_conditionals_match_duckdb():
    sql = """
        SELECT *, v > 0.5 AS cmp, i <= i32 AS le, s = 'a' AS eq, s <> 'a' AS ne, s < 'b' AS scmp,
               (v > 0) AND (i > 0) AS land, (v > 0) OR (i > 0) AS lor, NOT (v > 0) AS lnot,
               v IS NULL AS isn, s IS NOT NULL AS nn, coalesce(v, -1.0) AS fill,
               coalesce(i, 0) AS filli, coalesce(s, '?') AS fills,
               coalesce(s IN ('a', 'b'), false) AS isin, coalesce(i IN (1, 2, 3), false) AS isin_i,
               CASE WHEN v > 0 THEN v ELSE 0.0 END AS w, CASE WHEN flag THEN i ELSE i32 END AS wi
        FROM t"""
    check(logic_pipe, (EV,), sql, t=EV)


@og.pipeline
def string_cast_pipe(t):
    return t.assign(
        slen=t["s"].str.len(),
        slow=t["s"].str.lower(),
        sup=t["s"].str.upper(),
        sst=t["s"].str.startswith("a"),
        sct=t["s"].str.contains("b"),
        c_f=t["i"].astype("float64"),
        c_i=t["v"].fillna(0.0).astype("int64"),
        c_s=t["i"].astype("str"),
        c_fs=t["v"].astype("str"),
        c_b=t["i32"].astype("bool"),
        c_i32=t["i"].astype("int32"),
        c_f32=t["v"].astype("float32"),
    )


def test_strings_and_casts_match_duckdb():
    sql = """
        SELECT *, length(s) AS slen, lower(s) AS slow, upper(s) AS sup, starts_with(s, 'a') AS sst,
               contains(s, 'b') AS sct, CAST(i AS DOUBLE) AS c_f,
               CAST(trunc(coalesce(v, 0.0)) AS BIGINT) AS c_i, CAST(i AS VARCHAR) AS c_s,
               CAST(v AS VARCHAR) AS c_fs, i32 <> 0 AS c_b, CAST(i AS INTEGER) AS c_i32,
               CAST(v AS FLOAT) AS c_f32
        FROM t"""
    check(string_cast_pipe, (EV,), sql, t=EV)
    out = run_all(string_cast_pipe, EV, ranks=(1,))[0][0]
    assert out.schema.field("c_i32").type == pa.int32() and out.schema.field("c_f32").type == pa.float32()
    assert out.schema.field("slen").type == pa.int64()


@og.pipeline
def zero_div_pipe(t):
    return t.assign(q=t["a"] // t["b"], r=t["a"] % t["b"], f=t["x"] / t["y"], p=t["a"] ** t["b"])


def test_integer_division_by_zero_is_null_float_is_ieee():
    t = pa.table({"a": [7, -7, 5, 0], "b": [0, 2, -1, 0], "x": [1.0, -1.0, 0.0, 2.0], "y": [0.0, 0.0, 0.0, 4.0]})
    for (out,) in run_all(zero_div_pipe, t):
        d = out.to_pydict()
        assert d["q"] == [None, -4, -5, None]
        assert d["r"] == [None, 1, 0, None]
        assert d["f"][:2] == [math.inf, -math.inf] and math.isnan(d["f"][2]) and d["f"][3] == 0.5
        assert d["p"] == [1, 49, None, 1]  # negative exponent: no integer result
        assert out.schema.field("q").nullable  # the plan said non-nullable; nulls appeared


@og.pipeline
def bad_cast_pipe(t):
    t = t.assign(n=t["s"].astype("int64"))  # BAD-CAST-LINE
    return t


def test_bad_cast_names_the_users_line():
    t = pa.table({"s": ["1", " 2", "3", "4", "5", "6", "7", "x8"]})
    line = next(i for i, text in enumerate(Path(__file__).read_text().splitlines(), 1) if "BAD-CAST-LINE" in text and "astype" in text)
    plan = bad_cast_pipe.compile(t)
    for r in RANKS:
        with pytest.raises(ExecutionError) as info:
            run_local(plan.doc, plan.inputs, r)
        assert info.value.file.endswith(THIS) and info.value.line == line
        assert "x8" in info.value.message and "df.cast" in info.value.message
    ok = pa.table({"s": ["1", " 2", None]})
    assert run_all(bad_cast_pipe, ok, ranks=(2,))[0][0].column("n").to_pylist() == [1, 2, None]


# ------------------------------------------------------------ row-wise table operators


@og.pipeline
def select_pipe(t):
    t = t[(t["v"] > -2.0) & t["s"].notnull()]
    t = t[["id", "s", "v", "i"]].rename(columns={"v": "value"})
    t = t.assign(value=t["value"] * 2, extra=t["i"] + 1).drop(columns=["i"])
    return t


def test_filter_project_rename_assign_drop():
    sql = "SELECT id, s, v * 2 AS value, i + 1 AS extra FROM t WHERE v > -2.0 AND s IS NOT NULL"
    check(select_pipe, (EV,), sql, t=EV)


@og.pipeline
def nothing_pipe(t):
    return t[t["v"] > 1000.0]


def test_filter_to_empty_keeps_schema():
    for (out,) in run_all(nothing_pipe, EV):
        assert out.num_rows == 0 and out.schema.names == EV.schema.names
        assert [f.type for f in out.schema] == [f.type for f in EV.schema]


# -------------------------------------------------------------------------------- joins

LEFT = pa.table(
    {
        "id": pa.array(range(12), pa.int64()),
        "k": pa.array([1, 2, 2, 3, None, 5, 1, 7, None, 2, 9, 1], pa.int64()),
        "s": ["a", "b", None, "c", "d", "e", "a", "f", "g", "b", "h", "a"],
        "v": [float(x) for x in range(12)],
    }
)
RIGHT = pa.table(
    {
        "k": pa.array([1, 2, 2, None, 4, 5, 5, 11], pa.int32()),
        "s": ["a", "b", "x", "n", "y", "e", None, "z"],
        "w": pa.array([10, 20, 21, 30, 40, 50, 51, 60], pa.int64()),
    }
)
_JOIN_SQL = {"inner": "JOIN", "left": "LEFT JOIN", "right": "RIGHT JOIN", "outer": "FULL OUTER JOIN"}


@pytest.mark.parametrize("how", ["inner", "left", "right", "outer"])
def test_join_on_key_matches_duckdb(how):
    @og.pipeline
    def j(a, b):
        return a.merge(b, on="k", how=how)

    key = "l.k" if how in ("inner", "left") else "coalesce(l.k, r.k)"
    sql = f"""SELECT l.id, {key}::BIGINT AS k, l.s AS s_x, l.v, r.s AS s_y, r.w
              FROM l {_JOIN_SQL[how]} r ON l.k = r.k"""
    check(j, (LEFT, RIGHT), sql, l=LEFT, r=RIGHT)


@pytest.mark.parametrize("how", ["inner", "left", "right", "outer"])
def test_join_left_on_right_on_and_multi_key(how):
    @og.pipeline
    def j(a, b):
        b = b.rename(columns={"k": "rk", "s": "rs"})
        return a.merge(b, left_on=["k", "s"], right_on=["rk", "rs"], how=how, suffixes=("_l", "_r"))

    sql = f"""SELECT l.id, l.k, l.s, l.v, r.k AS rk, r.s AS rs, r.w
              FROM l {_JOIN_SQL[how]} r ON l.k = r.k AND l.s = r.s"""
    check(j, (LEFT, RIGHT), sql, l=LEFT, r=RIGHT)


@og.pipeline
def self_join_pipe(a):
    b = a[["k", "s", "v"]]
    return a.merge(b, on=["k", "s"], how="inner")


def test_join_duplicate_keys_and_suffixes():
    sql = "SELECT a.id, a.k, a.s, a.v AS v_x, b.v AS v_y FROM a JOIN a b ON a.k = b.k AND a.s = b.s"
    check(self_join_pipe, (LEFT,), sql, a=LEFT)


@og.pipeline
def empty_join_pipe(a, b):
    return a[a["v"] > 100.0].merge(b, on="k", how="outer")


def test_join_with_an_empty_side():
    sql = "SELECT r.k::BIGINT AS k, NULL::BIGINT AS id, NULL::VARCHAR AS s_x, NULL::DOUBLE AS v, r.s AS s_y, r.w FROM r"
    expected = duck(sql, r=RIGHT).select(["id", "k", "s_x", "v", "s_y", "w"])
    for (out,) in run_all(empty_join_pipe, LEFT, RIGHT):
        assert_same(out, expected)


def test_skewed_join_and_groupby():
    n = 3000
    rng = np.random.default_rng(5)
    a = pa.table({"k": np.where(rng.random(n) < 0.9, 7, rng.integers(0, 50, n)), "x": rng.integers(0, 10, n)})
    b = pa.table({"k": np.arange(50), "y": np.arange(50) * 2})

    @og.pipeline
    def skew(a, b):
        j = a.merge(b, on="k")
        return j.groupby("k").agg(n=("x", "size"), sx=("x", "sum"), my=("y", "max"))

    sql = "SELECT a.k, count(*) AS n, sum(x) AS sx, max(y) AS my FROM a JOIN b USING (k) GROUP BY a.k"
    check(skew, (a, b), sql, a=a, b=b)


# --------------------------------------------------------------------- set operations

SA = pa.table({"x": pa.array([1, 1, 2, None, None, 3, 4, 4], pa.int64()), "y": ["a", "a", None, "n", "n", "c", "d", "e"]})
SB = pa.table({"x": pa.array([1, None, 3, 3, 5, 4], pa.int64()), "y": ["a", "n", "z", "z", "e", "d"]})


@pytest.mark.parametrize(
    "method,sql",
    [
        ("union", "SELECT * FROM a UNION SELECT * FROM b"),
        ("intersect", "SELECT * FROM a INTERSECT SELECT * FROM b"),
        ("difference", "SELECT * FROM a EXCEPT SELECT * FROM b"),
        ("concat", "SELECT * FROM a UNION ALL SELECT * FROM b"),
    ],
)
def test_set_operations_match_duckdb(method, sql):
    @og.pipeline
    def s(a, b):
        return og.concat([a, b]) if method == "concat" else getattr(a, method)(b)

    check(s, (SA, SB), sql, a=SA, b=SB)


@og.pipeline
def distinct_pipe(t):
    return t.drop_duplicates()


@og.pipeline
def distinct_subset_pipe(t):
    return t.drop_duplicates(subset=["k", "s"])


def test_distinct_all_columns_and_subset_keeps_first_occurrence():
    t = EV.select(["k", "s", "flag"])
    check(distinct_pipe, (t,), "SELECT DISTINCT * FROM t", t=t)
    first = duck(
        "SELECT * EXCLUDE (rn) FROM (SELECT *, row_number() OVER (PARTITION BY k, s ORDER BY id) AS rn FROM t) WHERE rn = 1",
        t=EV,
    )
    check(distinct_subset_pipe, (EV,), "SELECT * FROM f", f=first)


# ------------------------------------------------------------------------ sort / head


@og.pipeline
def sort_pipe(t):
    return t.sort_values(["s", "v", "k"], ascending=[True, False, True])


@og.pipeline
def sort_head_pipe(t):
    return t.sort_values("v", ascending=False).head(17)


@og.pipeline
def head_pipe(t):
    return t.head(50)


def test_sort_is_stable_with_nulls_last_in_both_directions():
    sql = "SELECT * FROM t ORDER BY s ASC NULLS LAST, v DESC NULLS LAST, k ASC NULLS LAST, id"
    check(sort_pipe, (EV,), sql, ordered=True, t=EV)
    check(sort_head_pipe, (EV,), "SELECT * FROM t ORDER BY v DESC NULLS LAST, id LIMIT 17", ordered=True, t=EV)


def test_head_takes_the_first_rows_in_order():
    check(head_pipe, (EV,), "SELECT * FROM t ORDER BY id LIMIT 50", ordered=True, t=EV)


@og.pipeline
def sort_k_pipe(t):
    return t.sort_values("k")


@og.pipeline
def sort_desc_head_pipe(t):
    return t.sort_values("k", ascending=False).head(3)


def test_sort_all_equal_keys_and_tiny_inputs():
    t = pa.table({"k": [5] * 40, "id": list(range(40))})
    for (out,) in run_all(sort_k_pipe, t):
        assert out.column("id").to_pylist() == list(range(40))
    one = pa.table({"k": [3], "id": [0]})
    for (out,) in run_all(sort_desc_head_pipe, one):
        assert out.to_pylist() == [{"k": 3, "id": 0}]


# ---------------------------------------------------------------------- aggregation

ALL_AGGS = {
    "s": ("v", "sum"),
    "m": ("v", "mean"),
    "lo": ("v", "min"),
    "hi": ("v", "max"),
    "c": ("v", "count"),
    "n": ("v", "size"),
    "sd": ("v", "std"),
    "va": ("v", "var"),
    "u": ("v", "nunique"),
    "med": ("v", "median"),
    "si": ("i", "sum"),
    "smin": ("s", "min"),
    "smax": ("s", "max"),
    "sc": ("s", "count"),
    "su": ("s", "nunique"),
}
ALL_AGGS_SQL = """sum(v) AS s, avg(v) AS m, min(v) AS lo, max(v) AS hi, count(v) AS c, count(*) AS n,
    stddev_samp(v) AS sd, var_samp(v) AS va, count(DISTINCT v) AS u, median(v) AS med, sum(i) AS si,
    min(s) AS smin, max(s) AS smax, count(s) AS sc, count(DISTINCT s) AS su"""


@og.pipeline
def groupby_pipe(t):
    return t.groupby("k").agg(**ALL_AGGS)


@og.pipeline
def groupby_two_keys_pipe(t):
    return t.groupby(["s", "flag"]).agg(s_=("v", "sum"), c=("i", "count"), mx=("i32", "max"), md=("i", "median"))


@og.pipeline
def groupby_decomposable_pipe(t):
    return t.groupby("k").agg(s=("v", "sum"), m=("v", "mean"), lo=("i", "min"), hi=("s", "max"), c=("v", "count"), n=("v", "size"))


def test_groupby_every_aggregate_null_keys_and_all_null_groups():
    check(groupby_pipe, (EV,), f"SELECT k, {ALL_AGGS_SQL} FROM t GROUP BY k", t=EV)


def test_groupby_two_keys_and_decomposable_combine():
    sql = "SELECT s, flag, sum(v) AS s_, count(i) AS c, max(i32) AS mx, median(i) AS md FROM t GROUP BY s, flag"
    check(groupby_two_keys_pipe, (EV,), sql, t=EV)
    sql = "SELECT k, sum(v) AS s, avg(v) AS m, min(i) AS lo, max(s) AS hi, count(v) AS c, count(*) AS n FROM t GROUP BY k"
    check(groupby_decomposable_pipe, (EV,), sql, t=EV)


@og.pipeline
def aggregate_pipe(t):
    return t.agg(**ALL_AGGS)


@og.pipeline
def aggregate_empty_pipe(t):
    return t[t["v"] > 1000.0].agg(**ALL_AGGS)


def test_whole_table_aggregate_and_empty_table():
    check(aggregate_pipe, (EV,), f"SELECT {ALL_AGGS_SQL} FROM t", t=EV)
    expected = check(aggregate_empty_pipe, (EV,), f"SELECT {ALL_AGGS_SQL} FROM t WHERE v > 1000", t=EV)
    assert expected.column("s")[0].as_py() is None and expected.column("c")[0].as_py() == 0


def test_groupby_and_aggregate_of_an_empty_table():
    empty = EV.slice(0, 0)
    for (out,) in run_all(groupby_pipe, empty):
        assert out.num_rows == 0 and out.column_names == ["k", *ALL_AGGS]
    for (out,) in run_all(aggregate_pipe, empty):
        d = out.to_pylist()[0]
        assert d["s"] is None and d["c"] == 0 and d["n"] == 0 and d["u"] == 0 and d["med"] is None


@og.pipeline
def var_pipe(t):
    return t.agg(v=("x", "var"), s=("x", "std"))


def test_variance_is_numerically_stable_across_ranks():
    # large offset, tiny spread: sum-of-squares formulas lose everything here (DuckDB's
    # var_samp is off in the 6th digit); compare with numpy's two-pass result
    x = 1e9 + np.arange(1000) % 7 * 1e-3
    t = pa.table({"x": x})
    var = float(np.var(x, ddof=1))
    for (out,) in run_all(var_pipe, t):
        got = out.to_pylist()[0]
        assert math.isclose(got["v"], var, rel_tol=1e-7) and math.isclose(got["s"], math.sqrt(var), rel_tol=1e-7)


# ---------------------------------------------------------------------------- windows


@og.pipeline
def window_pipe(t):
    t = t.sort_values("id", ascending=False)
    return t.assign(
        rm=t["v"].rolling(3).mean(),
        rs=t["v"].rolling(4).sum(),
        rsi=t["i32"].rolling(5).sum(),
        rmin=t["i"].rolling(3).min(),
        rmax=t["v"].rolling(6).max(),
        p=t["v"].shift(1),
        nx=t["s"].shift(-2),
        d=t["i"].diff(2),
        dn=t["v"].diff(-1),
        combo=t["v"] - t["v"].rolling(2).mean(),
    )


def _win(fn: str, col: str, k: int) -> str:
    w = f"OVER (ORDER BY id DESC ROWS BETWEEN {k - 1} PRECEDING AND CURRENT ROW)"
    return f"CASE WHEN count({col}) {w} = {k} THEN {fn}({col}) {w} END"


def test_windows_match_duckdb():
    sql = f"""SELECT *, {_win('avg', 'v', 3)} AS rm, {_win('sum', 'v', 4)} AS rs, {_win('sum', 'i32', 5)} AS rsi,
              {_win('min', 'i', 3)} AS rmin, {_win('max', 'v', 6)} AS rmax,
              lag(v, 1) OVER (ORDER BY id DESC) AS p, lead(s, 2) OVER (ORDER BY id DESC) AS nx,
              i - lag(i, 2) OVER (ORDER BY id DESC) AS d, v - lead(v, 1) OVER (ORDER BY id DESC) AS dn,
              v - {_win('avg', 'v', 2)} AS combo
              FROM t ORDER BY id DESC"""
    check(window_pipe, (EV,), sql, ordered=True, t=EV)


@og.pipeline
def sparse_window_pipe(t):
    t = t.sort_values("id")
    t = t[(t["id"] % 13 == 0) | (t["id"] > 230)]
    return t.assign(r=t["i32"].rolling(4).sum(), sh=t["i32"].shift(3), ahead=t["i32"].shift(-3))


def test_windows_with_empty_partitions_and_multi_rank_halos():
    sql = f"""SELECT *, {_win('sum', 'i32', 4).replace('id DESC', 'id')} AS r,
              lag(i32, 3) OVER (ORDER BY id) AS sh, lead(i32, 3) OVER (ORDER BY id) AS ahead
              FROM t WHERE id % 13 = 0 OR id > 230 ORDER BY id"""
    check(sparse_window_pipe, (EV,), sql, ordered=True, ranks=(1, 2, 3, 4, 7), t=EV)


# -------------------------------------------------------------------- sources and sinks


@pytest.mark.parametrize("threads", ["1", "3"])
def test_read_parquet_directory_splits_row_groups_and_projects(tmp_path, threads, monkeypatch):
    monkeypatch.setenv("OPGRAPH_KERNEL_THREADS", threads)  # a rank's row groups over its threads
    d = tmp_path / "parts"
    d.mkdir()
    for n in range(3):
        pq.write_table(EV.slice(n * 80, 80), d / f"part-{n}.parquet", row_group_size=17)
    (d / ".hidden.parquet").write_bytes(b"junk")
    path = str(d)

    @og.pipeline
    def rd():
        return og.read_parquet(path, columns=["s", "id", "v"])

    for (out,) in run_all(rd):
        assert_same(out, EV.select(["s", "id", "v"]), ordered=True)
        assert not out.schema.field("id").nullable  # the footers' statistics show no nulls


def test_read_csv_and_ipc(tmp_path):
    t = EV.select(["id", "k", "v", "s"]).filter(pa.compute.not_equal(pa.compute.fill_null(EV.column("s"), "-"), ""))
    pacsv.write_csv(t.slice(0, 100), tmp_path / "a.csv")
    pacsv.write_csv(t.slice(100), tmp_path / "b.csv")
    with ipc.new_file(tmp_path / "t.arrow", t.schema) as w:
        for b in t.to_batches(max_chunksize=25):
            w.write_batch(b)
    csv_glob, arrow_path = str(tmp_path / "*.csv"), str(tmp_path / "t.arrow")

    @og.pipeline
    def rd():
        return og.read_csv(csv_glob), og.read_ipc(arrow_path, columns=["v", "id"])

    for c, a in run_all(rd):
        assert c.column_names == t.column_names and c.num_rows == t.num_rows
        assert_same(c, t, ordered=True)
        assert_same(a, t.select(["v", "id"]), ordered=True)


@og.pipeline
def sinks_pipe(t, out):
    g = t.groupby("k").agg(n=("v", "size"))
    og.write_parquet(g, out + "/g")
    og.write_csv(t[["id", "s"]], out + "/c")
    og.write_ipc(t[["id", "v"]], out + "/i")


def test_sinks_write_part_files_and_replace_existing_output(tmp_path):
    out = str(tmp_path / "out")
    (tmp_path / "out" / "g").mkdir(parents=True)
    (tmp_path / "out" / "g" / "stale.txt").write_text("old")
    plan = sinks_pipe.compile(EV, out)
    for r in RANKS:
        assert run_local(plan.doc, plan.inputs, r) == []
        g = tmp_path / "out" / "g"
        assert sorted(p.name for p in g.iterdir()) == [f"part-{q}.parquet" for q in range(r)]
        assert_same(pq.read_table(g), duck("SELECT k, count(*) AS n FROM t GROUP BY k", t=EV))
        c = pa.concat_tables([pacsv.read_csv(tmp_path / "out" / "c" / f"part-{q}.csv", convert_options=pacsv.ConvertOptions(column_types={"s": pa.string()}, strings_can_be_null=True)) for q in range(r)])
        assert sorted(c.column("id").to_pylist()) == list(range(EV.num_rows))
        i = pa.concat_tables([ipc.open_file(tmp_path / "out" / "i" / f"part-{q}.arrow").read_all() for q in range(r)])
        assert_same(i, EV.select(["id", "v"]), ordered=True)
        assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


@og.pipeline
def failing_sink_pipe(t, out):
    og.write_parquet(t, out)
    bad = t.assign(n=t["s"].astype("int64"))  # FAILING-SINK-LINE
    return bad


def test_failed_run_leaves_no_partial_output_and_keeps_old_output(tmp_path):
    out = tmp_path / "result"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    t = pa.table({"s": ["1", "2", "3", "4", "5", "6", "7", "oops"]})
    plan = failing_sink_pipe.compile(t, str(out))
    line = next(i for i, text in enumerate(Path(__file__).read_text().splitlines(), 1) if "FAILING-SINK-LINE" in text and "astype" in text)
    for r in RANKS:
        with pytest.raises(ExecutionError) as info:
            run_local(plan.doc, plan.inputs, r)
        assert f"{THIS}:{line}" in str(info.value)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@og.pipeline
def hooked_pipe(t):
    return t.sort_values("v").groupby("k").agg(n=("v", "size"))


def test_a_failing_rank_aborts_the_others_without_hanging(monkeypatch):
    plan = hooked_pipe.compile(EV)
    sort_line = int(next(o for i in plan.doc.islands for o in i.ops if o.op == "df.sort").loc.split(":")[-2])

    def hook(op, rank):
        if op.op == "df.sort" and rank == 2:
            raise RuntimeError("injected failure")

    monkeypatch.setattr(ex, "FAULT_HOOK", hook)
    start = time.monotonic()
    with pytest.raises(ExecutionError) as info:
        run_local(plan.doc, plan.inputs, 4)
    assert time.monotonic() - start < 10
    assert "injected failure" in info.value.message and info.value.line == sort_line
    assert not [t for t in threading.enumerate() if t.name.startswith("opgraph-rank")]


# ------------------------------------------------------------------ the communicator


def test_local_communicator_collectives_and_point_to_point():
    assert run_ranks(4, collectives_and_point_to_point) == [0, 1, 2, 3]


def test_abort_unblocks_every_waiting_rank():
    seen = []

    def body(comm):
        sub = comm.split(comm.rank % 2)  # {0, 2} and {1, 3}
        if comm.rank == 1:
            time.sleep(0.05)
            comm.abort("stop now", ValueError("rank 1 gave up"))
            return
        try:
            if comm.rank == 2:
                comm.recv(3)  # never sent
            elif comm.rank == 3:
                sub.barrier()  # its partner, rank 1, never arrives
            else:
                comm.barrier()
        except CommAborted as e:
            seen.append((comm.rank, e.message))
            raise

    start = time.monotonic()
    with pytest.raises(ValueError, match="rank 1 gave up"):
        run_ranks(4, body)
    assert time.monotonic() - start < 5
    assert sorted(r for r, _ in seen) == [0, 2, 3] and all("stop now" in m for _, m in seen)
    with pytest.raises(CommAborted):  # later calls fail at once
        run_ranks(1, lambda comm: (comm.abort("x"), comm.barrier()))


def test_exception_or_early_return_never_hangs():
    def fail(comm):
        if comm.rank == 0:
            raise KeyError("boom")
        comm.barrier()

    with pytest.raises(KeyError):
        run_ranks(3, fail)

    def leave(comm):
        if comm.rank == 2:
            return "done early"
        comm.barrier()

    start = time.monotonic()
    with pytest.raises(CommAborted, match="returned without joining"):
        run_ranks(3, leave)
    assert time.monotonic() - start < 5

    def mismatch(comm):
        comm.barrier() if comm.rank == 0 else comm.allgather(pa.table({"x": [1]}))

    with pytest.raises(CommAborted, match="collective mismatch"):
        run_ranks(2, mismatch)


# ----------------------------------------------------------------------- the API


@og.pipeline
def two_outputs(t, out):
    og.write_parquet(t[["id"]], out)
    return t.head(3), t.agg(n=("id", "size"))


@og.pipeline
def sink_only(t, out):
    og.write_parquet(t, out)


@og.pipeline
def double_pipe(t):
    return t.assign(d=t["a"] * 2)


def test_run_api_returns_table_tuple_or_none(tmp_path):
    out = str(tmp_path / "o")
    a, b = two_outputs.run(EV, out, ranks=2)
    assert a.num_rows == 3 and b.to_pylist() == [{"n": EV.num_rows}]
    assert isinstance(head_pipe(EV), pa.Table)
    assert sink_only(EV, out) is None
    assert pq.read_table(out).num_rows == EV.num_rows
    with pytest.raises(OpgraphError, match="unknown engine"):
        head_pipe.run(EV, engine="spark")
    with pytest.raises(OpgraphError, match="ranks"):
        head_pipe.run(EV, ranks=0)


def test_pandas_input_and_schema_types():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", None, "z"], "c": [0.5, None, 1.5]})
    out = double_pipe(frame)
    assert out.to_pydict() == {"a": [1, 2, 3], "b": ["x", None, "z"], "c": [0.5, None, 1.5], "d": [2, 4, 6]}
    assert out.schema.field("d").type == pa.int64()
    # the plan's nullability reaches the result: a non-nullable input gives a non-nullable d
    strict = pa.table({"a": pa.array([1, 2], pa.int32())}, schema=pa.schema([pa.field("a", pa.int32(), False)]))
    out = double_pipe.run(strict, ranks=2)
    assert out.schema == pa.schema([pa.field("a", pa.int32(), False), pa.field("d", pa.int32(), False)])


# ------------------------------------------------------------------------ the examples


def _load_example(name: str, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OPGRAPH_EXAMPLE_ROWS", "2000")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    spec = importlib.util.spec_from_file_location(f"_example_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_example_etl_matches_duckdb(tmp_path, monkeypatch):
    m = _load_example("etl", tmp_path, monkeypatch)
    sql = f"""
        WITH ev AS (SELECT *, value * 2 + 1 AS score FROM read_parquet('{m.EVENTS}')
                    WHERE value > 0.5 AND country IN ('US', 'DE')),
             j AS (SELECT ev.*, us.age FROM ev JOIN read_parquet('{m.USERS}') us USING (user_id))
        SELECT country, sum(score) AS total, count(score) AS n, avg(age) AS mean_age
        FROM j GROUP BY country ORDER BY total DESC"""
    expected = duck(sql)
    for r in RANKS:
        out = str(tmp_path / f"summary{r}")
        result = m.etl.run(out=out, ranks=r)
        assert_same(result, expected, ordered=True)
        assert_same(pq.read_table(out), expected)


def test_example_timeseries_matches_duckdb(tmp_path, monkeypatch):
    m = _load_example("timeseries", tmp_path, monkeypatch)
    w = "OVER (ORDER BY t ROWS BETWEEN 9 PRECEDING AND CURRENT ROW)"
    base = f"""
        WITH s AS (SELECT *, CASE WHEN count(temp) {w} = 10 THEN avg(temp) {w} END AS temp_avg,
                          CASE WHEN count(temp) {w} = 10 THEN max(temp) {w} END AS temp_max,
                          lag(temp) OVER (ORDER BY t) AS prev, temp - lag(temp) OVER (ORDER BY t) AS delta
                   FROM read_parquet('{m.SENSOR}')),
             a AS (SELECT *, abs(temp - temp_avg) > 2.0 AS anomaly FROM s)"""
    expected = duck(base + " SELECT count(*) AS n, avg(delta) AS mean_delta, max(temp_max) AS max_temp FROM a")
    alerts = duck(base + " SELECT t, sensor, temp, temp_avg FROM a WHERE anomaly")
    for r in RANKS:
        assert_same(m.timeseries.run(ranks=r), expected)
        assert_same(pq.read_table(tmp_path / "out" / "alerts"), alerts)


def test_example_sets_matches_duckdb(tmp_path, monkeypatch):
    m = _load_example("sets", tmp_path, monkeypatch)
    mon, tue = (ipc.open_file(p).read_all() for p in (m.MONDAY, m.TUESDAY))
    sql = """
        SELECT count(*) AS n, 'both' AS kind FROM (SELECT * FROM mon INTERSECT SELECT * FROM tue)
        UNION ALL SELECT count(*), 'either' FROM (SELECT * FROM mon UNION SELECT * FROM tue)
        UNION ALL SELECT count(*), 'only_monday' FROM (SELECT * FROM mon EXCEPT SELECT * FROM tue)
        UNION ALL SELECT count(DISTINCT visitor), 'distinct_visitors' FROM (SELECT * FROM mon UNION ALL SELECT * FROM tue)
        ORDER BY kind"""
    expected = duck(sql, mon=mon, tue=tue)
    only = duck("SELECT * FROM mon EXCEPT SELECT * FROM tue", mon=mon, tue=tue)
    for r in RANKS:
        assert_same(m.sets.run(ranks=r), expected, ordered=True)
        parts = sorted((tmp_path / "out" / "only_monday").iterdir())
        assert len(parts) == r
        assert_same(pa.concat_tables([pacsv.read_csv(p) for p in parts]), only)


# ------------------------------------------------ plans with explicit data movement


def _insert_before(plan, target_op: str, new_op: dict) -> None:
    """Inserts ``new_op`` (one input, one output) in front of the first ``target_op`` and
    rewires that op's first operand to it."""
    from opgraph.plan import OpDoc

    for island in plan.doc.islands:
        for i, op in enumerate(island.ops):
            if op.op == target_op:
                source = op.operands[0]
                producer = next(o for isl in plan.doc.islands for o in isl.ops if source in o.results)
                doc = OpDoc.model_validate(
                    {"op": new_op["op"], "loc": op.loc, "operands": [source], "results": ["v_inserted"],
                     "result_types": ["table"], "schema": [c.model_dump(by_alias=True) for c in producer.schema_],
                     "attributes": new_op.get("attributes", {})}
                )
                island.ops.insert(i, doc)
                op.operands[0] = "v_inserted"
                return
    raise AssertionError(f"no {target_op} in the plan")


@pytest.mark.parametrize(
    "movement",
    [
        {"op": "comm.shuffle", "attributes": {"kind": "hash", "keys": ["k"], "parts": 4}},
        {"op": "comm.shuffle", "attributes": {"kind": "range", "keys": ["k"], "parts": 4, "ascending": [True]}},
        {"op": "comm.gather", "attributes": {"root": 0}},
        {"op": "comm.allgather"},
        {"op": "comm.broadcast", "attributes": {"root": 0}},
        {"op": "comm.scatter", "attributes": {"root": 0}},
    ],
)
def test_explicit_comm_ops_in_a_plan(movement):
    plan = groupby_decomposable_pipe.compile(EV)
    _insert_before(plan, "df.groupby_agg", movement)
    sql = "SELECT k, sum(v) AS s, avg(v) AS m, min(i) AS lo, max(s) AS hi, count(v) AS c, count(*) AS n FROM t GROUP BY k"
    expected = duck(sql, t=EV)
    for r in RANKS:
        (out,) = run_local(plan.doc, plan.inputs, r)
        if movement["op"] in ("comm.broadcast", "comm.scatter"):
            # the root's partition (replicated / split up): the group by sees rank 0's rows
            part = EV.slice(0, EV.num_rows // r)
            assert_same(out, duck(sql, t=part))
        else:
            assert_same(out, expected)


def test_broadcast_join_when_the_plan_asks_for_it():
    @og.pipeline
    def j(a, b):
        return a.merge(b, on="k", how="left")

    plan = j.compile(LEFT, RIGHT)
    for island in plan.doc.islands:
        if any(op.op == "df.join" for op in island.ops):
            island.pattern = "broadcast_compute"
    sql = "SELECT l.id, l.k::BIGINT AS k, l.s AS s_x, l.v, r.s AS s_y, r.w FROM l LEFT JOIN r ON l.k = r.k"
    expected = duck(sql, l=LEFT, r=RIGHT)
    for r in RANKS:
        assert_same(run_local(plan.doc, plan.inputs, r)[0], expected)


def test_inputs_on_rank_zero_only_are_scattered():
    plan = groupby_pipe.compile(EV)

    def body(comm):
        return ex.execute_plan(plan.doc.model_dump(by_alias=True), plan.inputs if comm.rank == 0 else [], comm)

    results = run_ranks(3, body)
    assert results[1] == [] and results[2] == []
    assert_same(results[0][0], duck(f"SELECT k, {ALL_AGGS_SQL} FROM t GROUP BY k", t=EV))


def test_runtime_modules_do_not_import_the_frontend():
    import ast

    banned = ("opgraph.table", "opgraph.expr", "opgraph.pipeline", "opgraph.tracing", "opgraph.driver", "xdsl")
    for name in ("executor", "expr_eval", "local_ops", "parallel_ops", "io", "local_comm"):
        tree = ast.parse((REPO / "runtime" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for m in mods:
                assert not m.startswith(banned), f"runtime/{name}.py imports {m}"


class _NoCommunication(Communicator):
    """One rank that fails on any communication: a 1-rank run must not need any."""

    rank = 0
    size = 1

    def _no(self, *args, **kwargs):
        raise AssertionError("a 1-rank run communicated")

    alltoallv = bcast = gather = allgather = allreduce = send = recv = barrier = split = abort = _no


@og.pipeline
def everything_pipe(t, b, out):
    j = t.merge(b, on="k", how="outer")
    g = j.groupby("k").agg(n=("v", "size"), m=("w", "median"))
    bk = b[["k"]].assign(k=b["k"].astype("int64"))
    u = t[["k"]].union(bk).intersect(t[["k"]]).difference(bk)
    w = t.sort_values("id").assign(r=t["v"].rolling(3).sum()).head(10)
    og.write_parquet(g, out)
    return g, u.drop_duplicates(), w, t.agg(s=("v", "var"), q=("s", "nunique"))


def test_one_rank_runs_without_any_communication(tmp_path):
    plan = everything_pipe.compile(EV, RIGHT, str(tmp_path / "o"))
    outs = ex.execute_plan(plan.doc, plan.inputs, _NoCommunication())
    assert len(outs) == 4 and outs[2].num_rows == 10
    assert pq.read_table(tmp_path / "o").num_rows == outs[0].num_rows
