"""Fused expression kernels (runtime/kernels/exprgen.py, exprjit.py, expr_eval integration):
results identical to the Arrow-compute path and to DuckDB on random data with nulls and
edge values, random expressions (hypothesis), the kernel cache (one compiler invocation per
kernel, atomic files), escaping of hostile column names and string literals, the explicit
fallbacks (unsupported ops, no compiler, disabled)."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import threading

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from opgraph.runtime import expr_eval as E
from opgraph.runtime.executor import run_local
from opgraph.runtime.kernels import exprgen, exprjit

import opgraph as og

pytestmark = pytest.mark.skipif(exprjit.compiler()[0] is None, reason="no C++ compiler")


@pytest.fixture(autouse=True)
def jit_env(monkeypatch):
    # the user's kernel cache ($OPGRAPH_CACHE_DIR or ~/.cache/opgraph) is used as is, so a
    # second test run compiles nothing; the cache tests below use their own directories
    monkeypatch.setenv("OPGRAPH_EXPR_JIT_MIN_ROWS", "0")  # every table uses the kernel
    monkeypatch.delenv("OPGRAPH_EXPR_JIT", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    yield


# ------------------------------------------------------------------------------ helpers


class Region:
    """Builds plan.json-style regions (lists of op dicts ending in vector.yield)."""

    def __init__(self) -> None:
        self.ops: list[dict] = []
        self.types: dict[str, str] = {}

    def add(self, op: str, operands: list[str], rtype: str, **attrs) -> str:
        vid = f"v{len(self.ops)}"
        self.ops.append({"op": op, "loc": f"x.py:{len(self.ops) + 1}:1", "operands": list(operands),
                         "results": [vid], "result_types": [rtype], "attributes": attrs})
        self.types[vid] = rtype
        return vid

    def col(self, name: str, t: str) -> str:
        return self.add("df.col", [], t, column=name)

    def const(self, value, t: str) -> str:
        return self.add("arith.constant", [], t, value=value)

    def region(self, *yields: str) -> list[dict]:
        return [*self.ops, {"op": "vector.yield", "loc": "x.py:99:1", "operands": list(yields), "results": [],
                            "result_types": [], "attributes": {}}]


def _plain(v):
    if isinstance(v, pa.ChunkedArray):
        return v.combine_chunks() if v.num_chunks else pa.array([], v.type)
    return v


def assert_identical(a, b) -> None:
    """Same type, same validity, same values (floats: same bits, any NaN equals any NaN)."""
    if isinstance(a, pa.Scalar) or isinstance(b, pa.Scalar):
        assert isinstance(a, pa.Scalar) and isinstance(b, pa.Scalar) and a.equals(b) or (
            a.is_valid == b.is_valid and (not a.is_valid or a.as_py() == b.as_py()
                                          or math.isnan(a.as_py()) and math.isnan(b.as_py()))), (a, b)
        return
    a, b = _plain(a), _plain(b)
    assert a.type == b.type, (a.type, b.type)
    assert len(a) == len(b)
    va = a.is_valid().to_numpy(zero_copy_only=False)
    vb = b.is_valid().to_numpy(zero_copy_only=False)
    assert (va == vb).all(), f"validity differs at rows {np.nonzero(va != vb)[0][:10]}"
    xa = a.to_numpy(zero_copy_only=False)[va]
    xb = b.to_numpy(zero_copy_only=False)[vb]
    if pa.types.is_floating(a.type):
        na, nb = np.isnan(xa), np.isnan(xb)
        assert (na == nb).all(), f"NaN differs: {xa[na != nb][:5]} vs {xb[na != nb][:5]}"
        wa, wb = xa[~na].view(f"u{xa.itemsize}"), xb[~nb].view(f"u{xb.itemsize}")
        bad = np.nonzero(wa != wb)[0]
        assert not len(bad), f"values differ: {xa[~na][bad[:5]]} vs {xb[~nb][bad[:5]]}"
    else:
        bad = np.nonzero(xa != xb)[0]
        assert not len(bad), f"values differ: {xa[bad[:5]]} vs {xb[bad[:5]]}"


def eval_both(region, table):
    """(kernel result or the raised ExprError, Arrow result or the raised ExprError)."""
    runs = exprjit.STATS["runs"]
    try:
        jit = E.eval_region(region, table)
    except E.ExprError as e:
        jit = e
    ran = exprjit.STATS["runs"] > runs
    try:
        arrow = E.eval_region_arrow(region, table)
    except E.ExprError as e:
        arrow = e
    return jit, arrow, ran


def check_same(region, table, must_run: bool = True):
    jit, arrow, ran = eval_both(region, table)
    if isinstance(arrow, E.ExprError):
        assert isinstance(jit, E.ExprError), f"Arrow raised {arrow.message}, the kernel path did not"
        assert (jit.message, jit.loc, jit.op) == (arrow.message, arrow.loc, arrow.op)
        return
    assert not isinstance(jit, E.ExprError), jit.message
    if must_run:
        assert ran, f"the kernel did not run: {E.LAST_FALLBACK['reason']}"
    assert len(jit) == len(arrow)
    for i, (x, y) in enumerate(zip(jit, arrow)):
        try:
            assert_identical(x, y)
        except AssertionError as e:
            raise AssertionError(f"yield {i}: {e}") from None


I64 = (-(1 << 63), (1 << 63) - 1)
I32 = (-(1 << 31), (1 << 31) - 1)
EDGE_F = [0.0, -0.0, 1.0, -1.0, 0.5, 1.5, 2.5, -2.5, float("nan"), float("inf"), float("-inf"), 1e300, -1e-300,
          3.0e9, -3.0e9, 9.3e18]
EDGE_I = [0, 1, -1, 2, -2, 3, 7, -7, 100]


def _ints(lo: int, hi: int):
    return st.one_of(st.sampled_from(EDGE_I + [lo, hi]), st.integers(lo, hi), st.integers(-50, 50))


def _column(draw, values, t: pa.DataType, n: int):
    vals = draw(st.lists(st.one_of(st.none(), values), min_size=n, max_size=n))
    return pa.array(vals, t)


def _layout(draw, arr: pa.Array) -> pa.ChunkedArray:
    """The same values as 1-3 chunks, some of them slices with a non-zero offset."""
    n = len(arr)
    pad = draw(st.integers(0, 9))
    if pad:  # a slice of a longer array: offset not a multiple of 8
        arr = pa.concat_arrays([pa.nulls(pad, arr.type), arr]).slice(pad)
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=2)))
    parts, prev = [], 0
    for c in [*cuts, n]:
        parts.append(arr.slice(prev, c - prev))
        prev = c
    return pa.chunked_array(parts, arr.type)


@st.composite
def tables(draw, min_rows=0, max_rows=150):
    n = draw(st.integers(min_rows, max_rows))
    cols = {
        "i": _column(draw, _ints(*I32), pa.int32(), n),
        "j": _column(draw, _ints(*I64), pa.int64(), n),
        "x": _column(draw, st.one_of(st.sampled_from(EDGE_F), st.floats(-1e6, 1e6)), pa.float64(), n),
        "y": _column(draw, st.one_of(st.sampled_from(EDGE_F), st.floats(allow_nan=True)), pa.float64(), n),
        "p": _column(draw, st.booleans(), pa.bool_(), n),
        "q": _column(draw, st.booleans(), pa.bool_(), n),
    }
    if draw(st.booleans()):  # sometimes no nulls at all (the other kernel variant)
        for k in ("i", "x", "p"):
            cols[k] = cols[k].fill_null(pa.scalar(False if k == "p" else 1, cols[k].type))
    return pa.table({k: _layout(draw, v) for k, v in cols.items()})


COLS = {"i": "i32", "j": "i64", "x": "f64", "y": "f64", "p": "i1", "q": "i1"}


def every_op_region() -> list[dict]:
    """One region using every supported op on every type it supports."""
    r = Region()
    c = {k: r.col(k, t) for k, t in COLS.items()}
    out = []
    for a, b, t in (("i", "i", "i32"), ("j", "j", "i64")):
        x, y = c[a], r.add("arith.addi", [c[a], r.const(3, t)], t)
        for op in ("arith.addi", "arith.subi", "arith.muli", "arith.andi", "arith.ori", "arith.xori"):
            out.append(r.add(op, [x, y], t))
        for op in ("arith.divsi", "arith.floordivsi", "arith.remsi"):
            out.append(r.add(op, [x, y], t))
            out.append(r.add(op, [y, x], t))
        out.append(r.add("arith.divsi", [x, r.const(-1, t)], t))
        out.append(r.add("arith.remsi", [x, r.const(0, t)], t))
        out.append(r.add("math.ipowi", [x, r.const(3, t)], t))
        out.append(r.add("math.ipowi", [r.const(-3, t), y], t))
        out.append(r.add("math.absi", [x], t))
        for p in range(2, 10, 2 if t == "i32" else 1):
            out.append(r.add("arith.cmpi", [x, y], "i1", predicate=p))
        out.append(r.add("df.fill_null", [x, r.const(-5, t)], t))
        out.append(r.add("df.is_null", [x], "i1"))
        out.append(r.add("df.isin", [x], "i1", values=[0, 1, -7, 100]))
        out.append(r.add("arith.sitofp", [x], "f64"))
        out.append(r.add("arith.uitofp", [x], "f64"))
        out.append(r.add("arith.trunci", [x], "i1"))
        out.append(r.add("arith.select", [c["p"], x, y], t))
    out.append(r.add("arith.extsi", [c["i"]], "i64"))
    out.append(r.add("arith.extui", [c["i"]], "i64"))
    out.append(r.add("arith.trunci", [c["j"]], "i32"))
    out.append(r.add("arith.trunci", [c["j"]], "i16"))
    x, y = c["x"], c["y"]
    for op in ("arith.addf", "arith.subf", "arith.mulf", "arith.divf", "arith.remf", "math.powf"):
        out.append(r.add(op, [x, y], "f64"))
    for op in ("arith.divf", "arith.remf", "math.powf"):
        out.append(r.add(op, [y, x], "f64"))
    for op in ("arith.negf", "math.absf", "math.floor", "math.ceil", "math.trunc", "math.round", "math.log",
               "math.log10", "math.log2", "math.log1p", "math.exp", "math.sqrt", "math.sin", "math.cos",
               "math.atan"):
        out.append(r.add(op, [y], "f64"))
    out.append(r.add("math.fpowi", [x, c["i"]], "f64"))
    for p in range(16):
        out.append(r.add("arith.cmpf", [x, y], "i1", predicate=p))
    out.append(r.add("df.fill_null", [x, r.const(-1.5, "f64")], "f64"))
    out.append(r.add("df.fill_null", [x, y], "f64"))
    out.append(r.add("df.is_null", [y], "i1"))
    out.append(r.add("df.isin", [x], "i1", values=[0.0, 1.5, -1, float("nan")]))
    out.append(r.add("df.isin", [y], "i1", values=[-0.0, 1.0, float("inf")]))
    f32 = r.add("arith.truncf", [x], "f32")
    out.append(f32)
    out.append(r.add("arith.extf", [r.add("arith.mulf", [f32, r.const(0.1, "f32")], "f32")], "f64"))
    out.append(r.add("arith.select", [c["q"], x, y], "f64"))
    p, q = c["p"], c["q"]
    for op in ("arith.andi", "arith.ori", "arith.xori"):
        out.append(r.add(op, [p, q], "i1"))
        out.append(r.add(op, [r.add("arith.cmpf", [x, r.const(0.0, "f64")], "i1", predicate=2), q], "i1"))
    out.append(r.add("arith.xori", [p, r.const(True, "i1")], "i1"))
    out.append(r.add("arith.cmpi", [p, q], "i1", predicate=0))
    out.append(r.add("arith.select", [p, p, q], "i1"))
    out.append(r.add("df.fill_null", [p, r.const(False, "i1")], "i1"))
    out.append(r.add("df.isin", [p], "i1", values=[True]))
    out.append(r.add("arith.extui", [p], "i64"))
    out.append(r.add("arith.uitofp", [p], "f64"))
    out.append(r.add("arith.addi", [r.const(2, "i64"), r.const(3, "i64")], "i64"))  # constant: Arrow scalar
    out.append(c["x"])  # a column passes through
    return r.region(*out)


EVERY = every_op_region()


def test_every_op_plans_into_one_kernel():
    k = exprgen.plan_kernel(EVERY)
    assert k, k
    assert not k.fallbacks and k.arrow_count == 1  # only the constant result is Arrow's
    assert [o.kind for o in k.outputs][-2:] == ["arrow", "column"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tables())
def test_every_op_identical_to_arrow_on_random_data(table):
    check_same(EVERY, table)


def test_every_op_on_large_table_with_threads(monkeypatch):
    rng = np.random.default_rng(5)
    n = 130_007
    table = pa.table({
        "i": pa.array(rng.integers(-100, 100, n), pa.int32(), mask=rng.random(n) < 0.1),
        "j": pa.array(rng.integers(-(1 << 40), 1 << 40, n), pa.int64(), mask=rng.random(n) < 0.1),
        "x": pa.array(rng.normal(0, 10, n), mask=rng.random(n) < 0.1),
        "y": pa.array(rng.normal(0, 1, n)),
        "p": pa.array(rng.random(n) < 0.5, mask=rng.random(n) < 0.2),
        "q": pa.array(rng.random(n) < 0.5),
    })
    monkeypatch.setenv("OPGRAPH_EXPR_THREADS", "3")
    check_same(EVERY, table)


# ---------------------------------------------------------------- random expressions


INT_BIN = ["arith.addi", "arith.subi", "arith.muli", "arith.divsi", "arith.floordivsi", "arith.remsi",
           "arith.andi", "arith.ori", "arith.xori", "math.ipowi"]
FLOAT_BIN = ["arith.addf", "arith.subf", "arith.mulf", "arith.divf", "arith.remf", "math.powf"]
FLOAT_UN = ["arith.negf", "math.absf", "math.floor", "math.sqrt", "math.log", "math.exp", "math.round"]


@st.composite
def expr(draw, r: Region, t: str, depth: int):
    """A random expression of IR type ``t`` (i32, i64, f64, i1) in ``r``; returns its value id."""
    if depth <= 0 or draw(st.integers(0, 4)) == 0:
        cols = [k for k, ct in COLS.items() if ct == t]
        if cols and draw(st.booleans()):
            return r.col(draw(st.sampled_from(cols)), t)
        if t == "i1":
            return r.const(draw(st.booleans()), t)
        if t == "f64":
            return r.const(draw(st.sampled_from([0.0, 0.5, -1.5, 2.0, float("nan"), 1e10])), t)
        return r.const(draw(st.sampled_from([0, 1, -1, 2, 3, -7, 1 << 20])), t)
    sub = lambda tt: draw(expr(r, tt, depth - 1))
    kind = draw(st.integers(0, 5))
    if kind == 0:  # select / fill_null work on every type
        if draw(st.booleans()):
            return r.add("arith.select", [sub("i1"), sub(t), sub(t)], t)
        return r.add("df.fill_null", [sub(t), sub(t)], t)
    if t in ("i32", "i64"):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            other = "i64" if t == "i32" else "i32"
            return r.add("arith.trunci" if t == "i32" else "arith.extsi", [sub(other)], t)
        if choice == 1:
            return r.add("math.absi", [sub(t)], t)
        return r.add(draw(st.sampled_from(INT_BIN)), [sub(t), sub(t)], t)
    if t == "f64":
        choice = draw(st.integers(0, 3))
        if choice == 0:
            return r.add(draw(st.sampled_from(["arith.sitofp", "arith.uitofp"])),
                         [sub(draw(st.sampled_from(["i32", "i64", "i1"])))], t)
        if choice == 1:
            return r.add(draw(st.sampled_from(FLOAT_UN)), [sub(t)], t)
        return r.add(draw(st.sampled_from(FLOAT_BIN)), [sub(t), sub(t)], t)
    # i1
    choice = draw(st.integers(0, 4))
    if choice == 0:
        it = draw(st.sampled_from(["i32", "i64"]))
        return r.add("arith.cmpi", [sub(it), sub(it)], t, predicate=draw(st.integers(0, 9)))
    if choice == 1:
        return r.add("arith.cmpf", [sub("f64"), sub("f64")], t, predicate=draw(st.integers(0, 15)))
    if choice == 2:
        return r.add("df.is_null", [sub(draw(st.sampled_from(["i32", "f64", "i1"])))], t)
    return r.add(draw(st.sampled_from(["arith.andi", "arith.ori", "arith.xori"])), [sub(t), sub(t)], t)


@st.composite
def regions(draw):
    r = Region()
    outs = [draw(expr(r, draw(st.sampled_from(["i32", "i64", "f64", "i1"])), 4)) for _ in range(6)]
    return r.region(*outs)


# every example compiles a kernel (about a second): few examples, and no shrinking (each
# shrinking step would compile again; a failure prints the unshrunk region)
@settings(max_examples=6, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(regions(), tables(min_rows=1, max_rows=120))
def test_random_expressions_identical_to_arrow(region, table):
    check_same(region, table, must_run=False)


# ----------------------------------------------------------- pipelines against DuckDB


def duck(sql: str, **tables: pa.Table) -> pa.Table:
    con = duckdb.connect()
    for name, t in tables.items():
        con.register(name, t)
    res = con.sql(sql)
    return res.to_arrow_table() if hasattr(res, "to_arrow_table") else res.arrow()


def same_rows(ours: pa.Table, expected: pa.Table) -> None:
    def norm(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else round(v, 9)
        return v

    a = sorted((tuple(norm(v) for v in row.values()) for row in ours.to_pylist()), key=repr)
    b = sorted((tuple(norm(v) for v in row.values()) for row in expected.to_pylist()), key=repr)
    assert a == b


def ev_table(n: int = 3000) -> pa.Table:
    rng = np.random.default_rng(11)
    return pa.table({
        "id": np.arange(n),
        "a": pa.array(rng.random(n), mask=rng.random(n) < 0.1),
        "b": pa.array(rng.integers(-20, 200, n), pa.int64(), mask=rng.random(n) < 0.1),
        "c": pa.array(rng.integers(-5, 5, n), pa.int32()),
        "f": pa.array(rng.random(n) < 0.5, mask=rng.random(n) < 0.1),
        "s": pa.array(rng.choice(["US", "DE", "FR", ""], n), mask=rng.random(n) < 0.1),
    })


@og.pipeline
def fp_pipe(t):
    t = t[((t["a"] > 0.5) & (t["b"] < 100)) | t["s"].isin(["US"])]
    return t.assign(
        d=t["a"] * 2 + t["b"],
        q=t["b"] // t["c"],
        m=t["b"] % 3,
        w=og.where(t["f"], t["c"], 7),
        fill=t["a"].fillna(-1.0),
        lg=og.log(t["a"] + 1),
        k=(t["f"] & (t["a"] > 0.3)) | (t["c"] > 2),
        n=t["b"].isnull(),
        sl=t["s"].str.len() + t["c"],
    )[["id", "d", "q", "m", "w", "fill", "lg", "k", "n", "sl"]]


FP_SQL = """
    SELECT id, a * 2 + b AS d,
           CASE WHEN c = 0 THEN NULL ELSE CAST(floor(b / c) AS BIGINT) END AS q,
           ((b % 3) + 3) % 3 AS m, CASE WHEN f THEN c ELSE 7 END AS w, coalesce(a, -1.0) AS fill,
           ln(a + 1) AS lg, (f AND a > 0.3) OR c > 2 AS k, b IS NULL AS n, length(s) + c AS sl
    FROM t WHERE ((a > 0.5) AND (b < 100)) OR coalesce(s IN ('US'), false)"""


@pytest.mark.parametrize("ranks", [1, 3])
def test_pipeline_with_kernels_matches_duckdb_and_arrow(ranks, monkeypatch):
    t = ev_table()
    plan = fp_pipe.compile(t)
    runs = exprjit.STATS["runs"]
    (ours,) = run_local(plan.doc, plan.inputs, ranks)
    assert exprjit.STATS["runs"] > runs, E.LAST_FALLBACK
    same_rows(ours, duck(FP_SQL, t=t))
    monkeypatch.setenv("OPGRAPH_EXPR_JIT", "0")
    (arrow,) = run_local(plan.doc, plan.inputs, ranks)
    assert ours.equals(arrow) or same_rows(ours, arrow) is None


def test_mixed_region_reports_its_arrow_ops():
    t = ev_table(10)
    plan = fp_pipe.compile(t)
    regions = [op.regions[0] for isl in plan.doc.islands for op in isl.ops if op.regions]
    pred = exprgen.plan_kernel(regions[0])
    assert pred and [n for n, _, _ in pred.fallbacks] == ["df.isin"]
    assert "!df.string" in pred.fallbacks[0][2]
    use, why = E.jit_decision(regions[0], 10)
    assert use and "df.isin" in why
    mp = exprgen.plan_kernel(regions[1])
    assert mp and "df.str_len" in [n for n, _, _ in mp.fallbacks]


def test_string_only_region_falls_back_with_reason():
    r = Region()
    s = r.col("s", "!df.string")
    region = r.region(r.add("df.str_lower", [s], "!df.string"), r.add("df.str_len", [s], "i64"))
    k = exprgen.plan_kernel(region)
    assert not k and "df.str_lower" in k.reason
    t = pa.table({"s": ["Ab", None, "c"]})
    assert E.jit_decision(region, 3)[0] is False
    check_same(region, t, must_run=False)


# -------------------------------------------------------------- errors and semantics


def test_fptosi_error_is_the_arrow_error():
    r = Region()
    region = r.region(r.add("arith.fptosi", [r.col("x", "f64")], "i32"))
    good = pa.table({"x": [1.9, -2.7, None]})
    check_same(region, good)
    assert E.eval_region(region, good)[0].to_pylist() == [1, -2, None]
    bad = pa.table({"x": [1.0, float("nan")]})
    with pytest.raises(E.ExprError, match="row 1"):
        E.eval_region(region, bad)
    check_same(region, bad, must_run=False)


def test_integer_division_by_zero_and_overflow():
    r = Region()
    a, b = r.col("a", "i64"), r.col("b", "i64")
    region = r.region(*(r.add(op, [a, b], "i64") for op in ("arith.divsi", "arith.floordivsi", "arith.remsi")))
    t = pa.table({"a": pa.array([7, -7, I64[0], 5, None], pa.int64()), "b": pa.array([0, 2, -1, -2, 1], pa.int64())})
    check_same(region, t)
    div, fdiv, rem = (v.to_pylist() for v in E.eval_region(region, t))
    assert div == [None, -3, I64[0], -2, None]
    assert fdiv == [None, -4, I64[0], -3, None]
    assert rem == [None, -1, 0, 1, None]


def test_kleene_logic():
    r = Region()
    p, q = r.col("p", "i1"), r.col("q", "i1")
    region = r.region(r.add("arith.andi", [p, q], "i1"), r.add("arith.ori", [p, q], "i1"))
    vals = [True, False, None]
    t = pa.table({"p": [x for x in vals for _ in vals], "q": vals * 3})
    check_same(region, t)
    a, o = (v.to_pylist() for v in E.eval_region(region, t))
    assert a == [True, False, None, False, False, False, None, False, None]
    assert o == [True, True, True, True, False, None, True, None, None]


# ---------------------------------------------------------------------------- cache


def _fresh_region(tag: int) -> list[dict]:
    r = Region()
    x = r.col("x", "f64")
    return r.region(r.add("arith.mulf", [x, r.const(float(tag) + 0.25, "f64")], "f64"))


def _count_compiler_calls(monkeypatch) -> list:
    calls = []
    real = subprocess.run

    def spy(cmd, *a, **kw):
        calls.append(cmd)
        return real(cmd, *a, **kw)

    monkeypatch.setattr(exprjit.subprocess, "run", spy)
    return calls


def test_cache_reuse_invokes_compiler_once(monkeypatch, tmp_path):
    monkeypatch.setenv("OPGRAPH_CACHE_DIR", str(tmp_path))
    calls = _count_compiler_calls(monkeypatch)
    region = _fresh_region(os.getpid())
    t = pa.table({"x": [1.0, 2.0, None]})
    first = E.eval_region(region, t)
    assert len(calls) == 1
    files = sorted(p.name for p in (tmp_path / "kernels").iterdir())
    assert len(files) == 2 and files[0].endswith(".cpp") and files[1].endswith(".so")  # no temp files left
    assert E.eval_region(region, t)[0].equals(first[0])
    assert E.eval_region(region, pa.table({"x": [3.0, 4.0, 5.0]}))  # other nullability: another variant
    assert len(calls) == 2
    E.eval_region(region, t)
    assert len(calls) == 2
    # a new process (simulated: forget the loaded libraries) finds the file on disk
    monkeypatch.setattr(exprjit, "_loaded", {})
    monkeypatch.setattr(exprjit, "_by_source", {})
    hits = exprjit.STATS["disk_hits"]
    assert E.eval_region(region, t)[0].equals(first[0])
    assert len(calls) == 2 and exprjit.STATS["disk_hits"] == hits + 1


def test_concurrent_ranks_compile_once(monkeypatch, tmp_path):
    monkeypatch.setenv("OPGRAPH_CACHE_DIR", str(tmp_path))
    calls = _count_compiler_calls(monkeypatch)
    region = _fresh_region(os.getpid() + 1)
    t = pa.table({"x": np.arange(1000, dtype=np.float64)})
    results, errors = [], []

    def work():
        try:
            results.append(E.eval_region(region, t)[0])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and len(results) == 4 and len(calls) == 1
    assert all(r.equals(results[0]) for r in results)


def test_concurrent_processes_share_the_cache(tmp_path):
    """Two processes compiling the same kernel at once both succeed (atomic rename)."""
    code = (
        "import json, sys, pyarrow as pa\n"
        "from opgraph.runtime import expr_eval as E\n"
        "r = E.eval_region(json.loads(sys.argv[1]), pa.table({'x': [1.0, 2.0]}))\n"
        "assert r[0].to_pylist() == [4242.25, 8484.5], r\n"
    )
    env = {**os.environ, "OPGRAPH_CACHE_DIR": str(tmp_path), "OPGRAPH_EXPR_JIT_MIN_ROWS": "0"}
    region = json.dumps(_fresh_region(4242))
    procs = [subprocess.Popen([sys.executable, "-c", code, region], env=env, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    names = [p.name for p in (tmp_path / "kernels").iterdir()]
    assert len(names) == 2 and not any(n.startswith(".") for n in names)


# ------------------------------------------------------------------------- escaping


HOSTILE_TEMPLATES = [
    'a"); system("touch {pwned}"); //',
    "*/ #include \"{pwned}\"\n int x = system(\"touch {pwned}\");",
    "b\nsystem(\"touch {pwned}\");\n//",
    "c\\",
    "??/ d",
]


def test_hostile_names_and_literals_never_reach_cpp(tmp_path):
    pwned = tmp_path / "pwned"
    names = [h.format(pwned=pwned) for h in HOSTILE_TEMPLATES]
    literal = f'x"); system("touch {pwned}"); //'
    n = 2000
    rng = np.random.default_rng(3)
    t = pa.table({
        names[0]: rng.random(n),
        names[1]: pa.array(rng.integers(0, 10, n), pa.int64()),
        names[2]: pa.array(rng.random(n) < 0.5),
        names[3]: pa.array(rng.choice([literal, "y"], n)),
        names[4]: pa.array(rng.integers(0, 10, n), pa.int32()),
    })

    @og.pipeline
    def hostile(t):
        t = t[(t[names[0]] > 0.25) & (t[names[3]] == literal)]
        return t.assign(**{names[0]: t[names[0]] * 2 + t[names[1]], names[4]: og.where(t[names[2]], t[names[4]], 5),
                           literal: t[names[1]] + 1})

    plan = hostile.compile(t)
    regions = [op.regions[0] for isl in plan.doc.islands for op in isl.ops if op.regions]
    for region in regions:
        k = exprgen.plan_kernel(region)
        assert k, k
        src = k.source([False] * len(k.inputs)) + k.source([True] * len(k.inputs))
        for text in [*names, literal, str(pwned), "system", "touch", "include \""]:
            assert text not in src
    runs = exprjit.STATS["runs"]
    (ours,) = run_local(plan.doc, plan.inputs, 1)
    assert exprjit.STATS["runs"] > runs
    assert not pwned.exists()
    q = lambda s: '"' + s.replace('"', '""') + '"'
    lit = "'" + literal.replace("'", "''") + "'"
    expected = duck(
        f"SELECT {q(names[0])} * 2 + {q(names[1])} AS {q(names[0])}, {q(names[1])}, {q(names[2])}, {q(names[3])}, "
        f"CASE WHEN {q(names[2])} THEN {q(names[4])} ELSE 5 END AS {q(names[4])}, {q(names[1])} + 1 AS {q(literal)} "
        f"FROM t WHERE {q(names[0])} > 0.25 AND {q(names[3])} = {lit}", t=t)
    assert ours.column_names == expected.column_names
    same_rows(ours, expected)


def test_literals_are_validated_numbers():
    r = Region()
    x = r.col("x", "i64")
    region = r.region(r.add("arith.addi", [x, r.const('1); system("x"); (1', "i64")], "i64"))
    k = exprgen.plan_kernel(region)
    assert not k and "malformed" in k.reason or not k  # not a number: no kernel, Arrow reports it
    with pytest.raises(E.ExprError):
        E.eval_region(region, pa.table({"x": [1]}))
    assert exprgen._float_literal(0.1, "f64") == "static_cast<double>(0x1.999999999999ap-4)"
    assert exprgen._int_literal(-1, "i64") == "static_cast<int64_t>(static_cast<uint64_t>(UINT64_C(0xffffffffffffffff)))"
    assert struct.unpack("<d", struct.pack("<d", float.fromhex("0x1.999999999999ap-4")))[0] == 0.1


# ---------------------------------------------------------------- fallbacks documented


def test_no_compiler_falls_back_with_reason(monkeypatch):
    region = _fresh_region(7)
    t = pa.table({"x": [1.0, None, 3.0]})
    expected = E.eval_region_arrow(region, t)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    use, why = E.jit_decision(region, 3)
    assert not use and "CXX='/nonexistent/c++'" in why
    runs = exprjit.STATS["runs"]
    assert E.eval_region(region, t)[0].equals(expected[0])
    assert exprjit.STATS["runs"] == runs and "CXX" in E.LAST_FALLBACK["reason"]
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", "")
    use, why = E.jit_decision(region, 3)
    assert not use and "no C++ compiler" in why
    assert E.eval_region(region, t)[0].equals(expected[0])


def test_disabled_and_small_tables_use_arrow(monkeypatch):
    region = _fresh_region(8)
    monkeypatch.setenv("OPGRAPH_EXPR_JIT", "0")
    assert E.jit_decision(region, 10**8) == (False, "disabled by OPGRAPH_EXPR_JIT=0")
    monkeypatch.delenv("OPGRAPH_EXPR_JIT")
    monkeypatch.delenv("OPGRAPH_EXPR_JIT_MIN_ROWS")
    use, why = E.jit_decision(region, 1000)
    assert not use and "65536" in why
    assert E.jit_decision(region, 100_000)[0]


def test_compile_failure_falls_back(monkeypatch, tmp_path):
    fake = tmp_path / "fakecxx"
    fake.write_text("#!/bin/sh\necho 'broken compiler' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("OPGRAPH_CACHE_DIR", str(tmp_path / "cache"))
    region = _fresh_region(9)
    t = pa.table({"x": [1.0, 2.0]})
    assert E.eval_region(region, t)[0].to_pylist() == [9.25, 18.5]
    assert "broken compiler" in E.LAST_FALLBACK["reason"]
