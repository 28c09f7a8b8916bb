"""Tracing: the DESIGN §3 API builds verified IR with user locations and does no work."""

from __future__ import annotations

import inspect

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opgraph.dialects import dataframe as df
from opgraph.dialects.context import parse_module, print_module
from xdsl.dialects.builtin import FileLineColLoc, Float64Type, IntegerType

import opgraph as og

THIS_FILE = "tests/test_tracing.py"


def _line() -> int:
    """Line number of the caller (to assert error locations exactly)."""
    return inspect.currentframe().f_back.f_lineno  # type: ignore[union-attr]


def _ops(module) -> list[str]:
    fn = next(op for op in module.ops if op.name == "func.func")
    return [op.name for op in fn.regions[0].ops]


def _result_type(module) -> df.TableType:
    fn = next(op for op in module.ops if op.name == "func.func")
    return fn.function_type.outputs.data[0]


def test_etl_traces_to_the_expected_ops(data_dir):

    @og.pipeline
    def etl(events: str, users: str):
        ev = og.read_parquet(events)
        us = og.read_parquet(users)
        ev = ev[(ev["value"] > 0.5) & ev["country"].isin(["US", "DE"])]
        ev = ev.assign(score=ev["value"] * 2 + 1)
        j = ev.merge(us, on="user_id", how="inner")
        g = j.groupby("country").agg(total=("score", "sum"), n=("score", "count"))
        og.write_parquet(g, "out/summary")
        return g.sort_values("total", ascending=False)

    module = etl.trace(str(data_dir / "events.parquet"), str(data_dir / "users.parquet"))
    module.verify()
    assert _ops(module) == [
        "df.read_parquet", "df.read_parquet", "df.filter", "df.map", "df.join",
        "df.groupby_agg", "df.write_parquet", "df.sort", "func.return",
    ]
    result = _result_type(module)
    assert result.column_names == ["country", "total", "n"]
    assert isinstance(result.column("total")[0], Float64Type)
    assert result.column("n") == (IntegerType(64), False)
    text = print_module(module)
    assert f'loc("{THIS_FILE}":' in text
    # every table op carries this file's location
    fn = next(op for op in module.ops if op.name == "func.func")
    for op in fn.regions[0].ops:
        assert isinstance(op.location, FileLineColLoc)
        assert op.location.filename.data == THIS_FILE


def test_locations_are_the_users_call_lines(data_dir):
    @og.pipeline
    def p(path: str):
        t = og.read_parquet(path)
        line_read = _line() - 1
        t = t[["value", "country"]]
        line_project = _line() - 1
        return t, line_read, line_project

    # the pipeline must return tables only: trace a wrapper that records the lines
    lines = {}

    @og.pipeline
    def q(path: str):
        t = og.read_parquet(path)
        lines["read"] = _line() - 1
        t = t.head(3)
        lines["head"] = _line() - 1
        return t

    module = q.trace(str(data_dir / "events.parquet"))
    fn = next(op for op in module.ops if op.name == "func.func")
    read, head, _ = list(fn.regions[0].ops)
    assert read.location.line.data == lines["read"]
    assert head.location.line.data == lines["head"]
    assert read.location.column.data == 13  # column of `og.read_parquet(...)` (1-based)


def test_whole_api_traces_and_round_trips(data_dir):
    @og.pipeline
    def everything(events: str, users: str, users_csv: str, users_ipc: str, parts: str):
        ev = og.read_parquet(events, columns=["user_id", "value", "country", "small", "maybe", "flag"])
        us = og.read_parquet(users)
        uc = og.read_csv(users_csv)
        ui = og.read_ipc(users_ipc, columns=["user_id"])
        pt = og.read_parquet(parts)
        ev = ev.assign(
            a=ev["value"] + ev["small"],
            b=ev["small"] // 3,
            c=ev["small"] % 4,
            d=ev["value"] ** 2,
            e=-ev["value"] / 2,
            f=og.where(ev["flag"], ev["value"], 0.0),
            g=og.log(ev["value"] + 1) + og.exp(ev["value"]) + og.sqrt(ev["value"]),
            h=ev["maybe"].fillna(0.0),
            i=ev["maybe"].isnull() | ev["maybe"].notnull(),
            j=ev["value"].abs().astype("float32"),
            k=ev["country"].str.len(),
            l=ev["country"].str.lower().str.upper(),
            m=ev["country"].str.startswith("U") & ev["country"].str.contains("S"),
            n=ev["small"].astype("str"),
            o=~(ev["country"] == "US"),
            r=ev["value"].rolling(3).mean(),
            s=ev["value"].rolling(2).sum() + ev["value"].shift(2) - ev["small"].diff(1),
        )
        ev = ev.rename(columns={"a": "a2"}).drop(columns=["b"])
        joined = [ev.merge(us, on="user_id", how=how) for how in ("inner", "left", "right", "outer")]
        lr = ev.merge(uc, left_on="user_id", right_on="user_id", how="left", suffixes=("_l", "_r"))
        g = ev.groupby(["country", "flag"]).agg(
            **{fn: ("value", fn) for fn in ("sum", "mean", "min", "max", "count", "size", "std", "var", "nunique", "median")}
        )
        whole = ev.agg(total=("value", "sum"), names=("country", "nunique"))
        u = ui.union(us[["user_id"]]).intersect(ui).difference(ui.head(2))
        dd = pt.drop_duplicates(subset=["country"]).drop_duplicates()
        cc = og.concat([pt, pt])
        og.write_csv(lr, "out/lr")
        og.write_ipc(whole, "out/whole")
        return g.sort_values(["country", "sum"], ascending=[True, False]), u, dd, cc, joined[3]

    module = everything.trace(
        *(str(data_dir / n) for n in ("events.parquet", "users.parquet", "users.csv", "users.arrow", "parts"))
    )
    module.verify()
    text = print_module(module)
    again = print_module(parse_module(text))
    assert again == text
    names = set(_ops(module))
    for op in ("df.read_csv", "df.read_ipc", "df.window", "df.rename", "df.drop", "df.join", "df.union",
               "df.intersect", "df.difference", "df.distinct", "df.concat", "df.aggregate", "df.head",
               "df.write_csv", "df.write_ipc"):
        assert op in names, op
    for op in ("math.log", "math.exp", "math.sqrt", "arith.floordivsi", "arith.remsi", "math.powf",
               "arith.select", "df.fill_null", "df.is_null", "df.str_len", "df.str_lower", "df.str_upper",
               "df.str_startswith", "df.str_contains", "df.cast", "arith.truncf", "df.str_cmp"):
        assert f'"{op}"' in text, op


def test_join_semantics_in_schema(data_dir):
    @og.pipeline
    def p(events: str, users: str):
        ev = og.read_parquet(events)[["user_id", "value"]]
        us = og.read_parquet(users).assign(value=1.0)
        return (
            ev.merge(us, on="user_id", how="left"),
            ev.merge(us.rename(columns={"user_id": "uid"}), left_on="user_id", right_on="uid", how="outer"),
        )

    fn = next(op for op in p.trace(str(data_dir / "events.parquet"), str(data_dir / "users.parquet")).ops)
    left, outer = fn.function_type.outputs.data
    assert left.column_names == ["user_id", "value_x", "name", "value_y"]
    assert left.column("name")[1] is True  # right side of a left join may be null
    assert outer.column_names == ["user_id", "value_x", "uid", "name", "value_y"]


def test_table_arguments_become_inputs():
    data = pa.table({"k": [1, 2, 2], "v": [1.0, 2.0, 3.0]})
    frame = pd.DataFrame({"k": [1, 2], "w": ["a", "b"]})

    @og.pipeline
    def p(a, b, scale: float = 2.0):
        extra = og.from_arrow(pa.table({"k": [5]}))
        return a.merge(b, on="k").assign(v=a["v"] * scale), og.concat([a[["k"]], extra])

    traced = p.trace_full(data, frame)
    ops = _ops(traced.module)
    assert ops.count("df.input") == 3
    assert [t.num_rows for t in traced.inputs] == [3, 2, 1]


def test_tracing_reads_no_data(data_dir, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("tracing must not read table data")

    monkeypatch.setattr(pq, "read_table", boom)
    monkeypatch.setattr(pq.ParquetFile, "read", boom)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", boom)

    @og.pipeline
    def p(path: str):
        return og.read_parquet(path).groupby("country").agg(s=("value", "sum"))

    p.trace(str(data_dir / "events.parquet"))


# ------------------------------------------------------------------ trace errors


def _trace_error(fn, *args) -> og.TraceError:
    with pytest.raises(og.TraceError) as info:
        og.pipeline(fn).trace(*args)
    return info.value


def test_error_unknown_column(data_dir):
    def p(path):
        t = og.read_parquet(path)
        return t[t["nope"] > 1]

    line = p.__code__.co_firstlineno + 2
    e = _trace_error(p, str(data_dir / "events.parquet"))
    assert (e.file, e.line) == (THIS_FILE, line)
    assert e.cli_line() == (
        f"error: {THIS_FILE}:{line}: unknown column 'nope' (columns: user_id, value, country, small, maybe, flag)"
    )


def test_error_string_plus_float(data_dir):
    def p(path):
        t = og.read_parquet(path)
        return t.assign(x=t["country"] + 1.5)

    e = _trace_error(p, str(data_dir / "events.parquet"))
    assert e.line == p.__code__.co_firstlineno + 2
    assert e.message == "unsupported operand types for +: string and float64 (col('country') + 1.5)"


def test_error_join_key_types(data_dir):
    def p(events, users):
        ev = og.read_parquet(events)
        us = og.read_parquet(users)
        return ev.merge(us, left_on="user_id", right_on="name")

    e = _trace_error(p, str(data_dir / "events.parquet"), str(data_dir / "users.parquet"))
    assert e.line == p.__code__.co_firstlineno + 3
    assert e.message == "join keys 'user_id' (int64) and 'name' (string) have different types"


def test_error_mean_of_string(data_dir):
    def p(path):
        t = og.read_parquet(path)
        return t.groupby("user_id").agg(m=("country", "mean"))

    e = _trace_error(p, str(data_dir / "events.parquet"))
    assert e.line == p.__code__.co_firstlineno + 2
    assert e.message == "cannot aggregate string column 'country' with 'mean'"


@pytest.mark.parametrize(
    "body, message",
    [
        ("t[t['value']]", "filter mask must be boolean, got float64 (col('value'))"),
        ("t[(t['value'] > 1) and (t['value'] < 2)]", "an opgraph expression has no truth value while tracing"),
        ("t.groupby('user_id').agg(m=('value', 'mode'))", "unknown aggregate 'mode'"),
        ("t.head(-1)", "head(n) needs a non-negative integer, got -1"),
        ("t.merge(t, on='user_id', how='cross')", "unknown join kind 'cross'"),
        ("t[['value', 'zzz']]", "unknown column 'zzz' in projection"),
        ("t.sort_values('zzz')", "unknown column 'zzz' in sort keys"),
        ("t.assign(x=t['country'].rolling(2).mean())", "cannot apply rolling to a string expression"),
        ("t.assign(x=t['value'] & t['flag'])", "'&' needs boolean operands, got float64 and bool"),
        ("og.concat([t, t[['value']]])", "concat inputs have different columns"),
        ("t.assign(x=t['value'].astype('complex'))", "unsupported dtype 'complex'"),
    ],
)
def test_error_messages(data_dir, body, message):
    namespace = {"og": og}
    exec(f"def p(path):\n    t = og.read_parquet(path)\n    return {body}\n", namespace)
    with pytest.raises(og.TraceError) as info:
        og.pipeline(namespace["p"]).trace(str(data_dir / "events.parquet"))
    assert info.value.message.startswith(message)
    assert info.value.line == 3


def test_error_missing_file():
    def p():
        return og.read_parquet("/nonexistent/x.parquet")

    e = _trace_error(p)
    assert e.message == "no such file or directory: '/nonexistent/x.parquet'"


def test_error_bad_return(data_dir):
    def p(path):
        return 42

    with pytest.raises(og.OpgraphError, match="must return a table, a tuple of tables or nothing; got int"):
        og.pipeline(p).trace(str(data_dir / "events.parquet"))


# ------------------------------------------------------------- property test

_NUMERIC = ["user_id", "value", "small", "maybe"]


def _expr_strategy(depth: int = 3):
    leaf = st.one_of(
        st.sampled_from(_NUMERIC).map(lambda c: ("col", c)),
        st.integers(-5, 5).map(lambda v: ("lit", v)),
        st.floats(-3, 3, allow_nan=False).map(lambda v: ("lit", v)),
    )
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.tuples(st.sampled_from(["+", "-", "*", "/", "%", "//"]), inner, inner),
            st.tuples(st.sampled_from(["abs", "neg", "fill"]), inner),
        ),
        max_leaves=6,
    )


def _build(t, node):
    kind = node[0]
    if kind == "col":
        return t[node[1]]
    if kind == "lit":
        return node[1]
    if kind == "abs":
        x = _build(t, node[1])
        return x.abs() if isinstance(x, og.Expr) else abs(x)
    if kind == "neg":
        x = _build(t, node[1])
        return -x if isinstance(x, og.Expr) else -t["value"] + x
    if kind == "fill":
        x = _build(t, node[1])
        return x.fillna(0) if isinstance(x, og.Expr) else x
    a, b = _build(t, node[1]), _build(t, node[2])
    if not isinstance(a, og.Expr) and not isinstance(b, og.Expr):
        a = t["small"] + a  # keep the arithmetic in the IR, not in Python
    return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
            "%": lambda: a % b, "//": lambda: a // b}[kind]()


@settings(max_examples=60, deadline=None)
@given(expr=_expr_strategy(), threshold=st.floats(-2, 2, allow_nan=False))
def test_random_expressions_verify_and_round_trip(tmp_path_factory, expr, threshold):
    path = tmp_path_factory.getbasetemp() / "prop.parquet"
    if not path.exists():
        pq.write_table(
            pa.table({"user_id": [1, 2], "value": [0.5, 1.5], "small": pa.array([1, 2], pa.int32()), "maybe": [None, 1.0]}),
            path,
        )

    @og.pipeline
    def p(path: str):
        t = og.read_parquet(path)
        x = _build(t, expr)
        if not isinstance(x, og.Expr):
            x = t["value"] + x
        t = t.assign(x=x)
        return t[t["x"] > threshold]

    module = p.trace(str(path))
    module.verify()
    text = print_module(module)
    assert print_module(parse_module(text)) == text
    out = _result_type(module)
    assert out.column_names[-1] == "x"
