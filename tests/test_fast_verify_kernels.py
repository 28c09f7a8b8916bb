"""The fast verifier (passes/verify.py) on the default pipeline's output (kernels: func.func
+ func.call, islands): it must agree with xDSL's verifier on valid IR and reject whatever
xDSL rejects (cached symbol lookups, abstract op signatures)."""

from __future__ import annotations

import pytest
from opgraph.passes.verify import fast_verify
from support import write_small_parquet
from xdsl.dialects.builtin import ArrayAttr, IntegerAttr, StringAttr, SymbolRefAttr, i64

import opgraph as og
from opgraph.driver import compile_traced


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_small_parquet(tmp_path_factory.mktemp("fv"))


@og.pipeline
def small(path: str):
    t = og.read_parquet(path)
    t = t.assign(c=t["a"] * 2.0 + t["b"])
    t = t[t["c"] > 0.5]
    g = t.groupby("k").agg(s=("c", "sum"))
    t = t.merge(g, on="k", how="left")
    return t.assign(d=t["s"] * 0.5 + t["c"])


def _compiled(path):
    return compile_traced(small.trace_full(path), hw="summit", keep_dumps=False).module


def _xdsl_ok(module) -> bool:
    try:
        module.verify()
    except Exception:  # noqa: BLE001
        return False
    from opgraph.dialects.taskgraph import verify_islands

    try:
        verify_islands(module)
    except Exception:  # noqa: BLE001
        return False
    return True


def _ops(module, name):
    return [o for o in module.walk() if o.name == name]


def _kernels(module):
    return [o for o in _ops(module, "func.func") if "taskgraph.kernel" in o.attributes]


def _mutations():
    def unknown_callee(m):
        _ops(m, "func.call")[0].properties["callee"] = SymbolRefAttr("og_no_such_kernel")

    def other_callee(m):
        calls = _ops(m, "func.call")
        a = next(c for c in calls if len(c.operands) == 1)
        b = next(c for c in calls if c.properties["callee"] != a.properties["callee"] and c.result_types != a.result_types)
        a.properties["callee"] = b.properties["callee"]

    def nested_callee(m):
        call = _ops(m, "func.call")[0]
        call.properties["callee"] = SymbolRefAttr(call.properties["callee"].root_reference.data, ["x"])

    def callee_not_a_function(m):
        call = _ops(m, "func.call")[0]
        call.properties["callee"] = SymbolRefAttr("summit")  # machine.system's symbol

    def sym_name_kind(m):
        _kernels(m)[0].properties["sym_name"] = IntegerAttr(1, i64)

    def duplicate_symbol(m):
        ks = _kernels(m)
        ks[1].properties["sym_name"] = ks[0].properties["sym_name"]

    def names_element_kind(m):
        op = _ops(m, "df.map")[0]
        op.attributes["names"] = ArrayAttr([IntegerAttr(1, i64) for _ in op.attributes["names"].data])

    def join_how_kind(m):
        _ops(m, "df.join")[0].attributes["how"] = IntegerAttr(1, i64)

    def visibility_kind(m):
        _kernels(m)[0].properties["sym_visibility"] = IntegerAttr(1, i64)

    def bad_function_type(m):
        k = _kernels(m)[0]
        k.properties["function_type"] = StringAttr("x")

    return [
        unknown_callee,
        other_callee,
        nested_callee,
        callee_not_a_function,
        sym_name_kind,
        duplicate_symbol,
        names_element_kind,
        join_how_kind,
        visibility_kind,
        bad_function_type,
    ]


def test_valid_output_verifies(path):
    module = _compiled(path)
    assert _kernels(module) and _ops(module, "func.call")
    assert fast_verify(module) and _xdsl_ok(module)


@pytest.mark.parametrize("mutate", _mutations(), ids=lambda f: f.__name__)
def test_fast_verify_rejects_what_xdsl_rejects(path, mutate):
    module = _compiled(path)
    mutate(module)
    assert not _xdsl_ok(module)  # each mutation breaks the IR
    assert not fast_verify(module)


def _xdsl_text(module) -> str:
    from io import StringIO

    from xdsl.printer import Printer

    out = StringIO()
    Printer(stream=out, print_generic_format=True, print_debuginfo=True).print_op(module)
    text = out.getvalue()
    return text if text.endswith("\n") else text + "\n"


@og.pipeline
def signed_zeros(path: str):
    t = og.read_parquet(path)
    t = t.assign(z=t["a"] * 0.0, n=t["a"] * -0.0, i=t["k"] + 1)
    return t[t["z"] > -0.0]


@pytest.mark.parametrize("pipeline", [small, signed_zeros], ids=["small", "signed_zeros"])
def test_print_module_is_xdsl_printer_text(path, pipeline):
    """print_module's attribute-text cache prints exactly what xDSL's printer prints, for
    traced IR, after every pass, and for the compiled plan."""
    from opgraph.dialects.context import print_module
    from opgraph.passes.pipeline import run_pipeline

    from opgraph.driver import attach_machine, resolve_hw

    module = pipeline.trace_full(path).module
    assert print_module(module) == _xdsl_text(module)
    attach_machine(module, resolve_hw("summit"))
    differing: list[str] = []

    def after_each(index, name, mod):
        if print_module(mod) != _xdsl_text(mod):
            differing.append(name)

    run_pipeline(module, None, after_each=after_each, verify_each=False, verify_input=False)
    assert differing == []
    assert "-0.0" in print_module(pipeline.trace_full(path).module) or pipeline is small
