"""The IRDL twins (dialects/*.irdl.mlir) match the xDSL dialects and work in upstream MLIR.

The twin files on disk are the objects under test: they are read back (with xDSL's ``irdl``
dialect) and loaded into upstream MLIR, never regenerated here (except by ``--check``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from opgraph.dialects import irdl_gen
from opgraph.dialects.upstream_verify import (
    order_twins,
    twin_sources,
    verify_files,
    verify_text,
)
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects import irdl as xirdl
from xdsl.dialects.builtin import (
    Builtin,
    FileLineColLoc,
    IntAttr,
    ModuleOp,
    StringAttr,
    i64,
)
from xdsl.ir import Block, Dialect, Region
from xdsl.irdl import IRDLOperation, OptionalDef, VariadicDef
from xdsl.irdl.operations import OptAttributeDef
from xdsl.parser import Parser

DIALECTS = Path(irdl_gen.__file__).resolve().parent

FOUND, IMPORT_ERRORS = irdl_gen.discover()


def _variadicity(d: object) -> str:
    if isinstance(d, OptionalDef):
        return "optional"
    if isinstance(d, VariadicDef):
        return "variadic"
    return "single"


def _read_twin(path: Path) -> dict[str, xirdl.DialectOp]:
    ctx = Context()
    ctx.load_dialect(Builtin)
    ctx.load_dialect(xirdl.IRDL)
    module = Parser(ctx, path.read_text(), str(path)).parse_module()
    return {op.sym_name.data: op for op in module.walk() if isinstance(op, xirdl.DialectOp)}


def _twin_op_shape(op: xirdl.OperationOp) -> dict[str, object]:
    shape: dict[str, object] = {"operands": [], "results": [], "regions": 0, "attributes": set()}
    for inner in op.body.walk():
        if isinstance(inner, xirdl.OperandsOp):
            shape["operands"] = [str(v.data) for v in inner.variadicity.value]
        elif isinstance(inner, xirdl.ResultsOp):
            shape["results"] = [str(v.data) for v in inner.variadicity.value]
        elif isinstance(inner, xirdl.RegionsOp):
            shape["regions"] = len(inner.args)
        elif isinstance(inner, xirdl.AttributesOp):
            shape["attributes"] = {n.data for n in inner.attribute_value_names}
    return shape


def _py_op_shape(op: type[IRDLOperation]) -> dict[str, object]:
    op_def = op.get_irdl_definition()
    return {
        "operands": [_variadicity(d) for _, d in op_def.operands],
        "results": [_variadicity(d) for _, d in op_def.results],
        "regions": len(op_def.regions),
        "attributes": {
            n for n, d in op_def.attributes.items() if not isinstance(d, OptAttributeDef) and d.default_value is None
        },
    }


def test_dialect_modules_import():
    assert not IMPORT_ERRORS, IMPORT_ERRORS
    assert {"dataframe", "comm", "taskgraph"} <= set(FOUND)


@pytest.mark.parametrize("module_name", sorted(FOUND))
def test_twin_matches_python_dialect(module_name: str):
    path = DIALECTS / f"{module_name}.irdl.mlir"
    assert path.exists(), f"{path.name} missing: run python -m opgraph.dialects.irdl_gen"
    twins = _read_twin(path)
    dialects: list[Dialect] = FOUND[module_name]
    assert set(twins) == {d.name for d in dialects}
    for dialect in dialects:
        twin = twins[dialect.name]
        twin_ops = {op.sym_name.data: op for op in twin.body.walk() if isinstance(op, xirdl.OperationOp)}
        twin_types = {
            op.sym_name.data for op in twin.body.walk() if isinstance(op, xirdl.TypeOp | xirdl.AttributeOp)
        }
        py_ops = {Dialect.split_name(op.name)[1]: op for op in dialect.operations}
        assert set(twin_ops) == set(py_ops), f"{dialect.name}: op names differ"
        assert twin_types == {Dialect.split_name(a.name)[1] for a in dialect.attributes}
        for short, op in py_ops.items():
            assert _twin_op_shape(twin_ops[short]) == _py_op_shape(op), f"{op.name}: twin differs"


def test_twins_are_up_to_date():
    proc = subprocess.run(
        [sys.executable, "-m", "opgraph.dialects.irdl_gen", "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_check_detects_a_stale_twin(monkeypatch, tmp_path):
    # a copy of the dialects directory where one twin is edited
    for p in DIALECTS.glob("*.irdl.mlir"):
        (tmp_path / p.name).write_text(p.read_text())
    (tmp_path / "dataframe.irdl.mlir").write_text("// edited\n")
    monkeypatch.setattr(irdl_gen, "DIALECTS_DIR", tmp_path)
    assert any("dataframe.irdl.mlir is stale" in r for r in irdl_gen.stale_twins())
    assert irdl_gen.main(["--check"]) == 1


def test_twins_express_every_op():
    """Upstream IRDL has no variadic/optional regions, properties or successors: an op using
    them produces IR that upstream MLIR rejects."""
    errors = [str(p) for p in irdl_gen.twin_problems() if p.severity == "error"]
    assert not errors, "\n".join(errors)


def test_all_twins_load_upstream_together():
    names = [n for n, _ in twin_sources()]
    assert {f"{m}.irdl.mlir" for m in FOUND} == set(names)
    assert names.index("dataframe.irdl.mlir") < names.index("comm.irdl.mlir")
    assert verify_text("module {\n}\n") is None


def test_twin_load_order_follows_references():
    a = ("a.irdl.mlir", 'irdl.dialect @a {\n  irdl.operation @o {\n    %0 = irdl.base "!z.t"\n  }\n}\n')
    z = ("z.irdl.mlir", "irdl.dialect @z {\n  irdl.type @t {\n    irdl.parameters()\n  }\n}\n")
    assert [n for n, _ in order_twins([a, z])] == ["z.irdl.mlir", "a.irdl.mlir"]


# ----------------------------------------------------------------- upstream checks IR

TABLE = '!df.table<["a", "s"], [i64, !df.string], [false, true]>'


def _module(body: str, arg_type: str = TABLE) -> str:
    return f""""builtin.module"() ({{
  "func.func"() <{{function_type = ({arg_type}) -> (), sym_name = "f"}}> ({{
  ^bb0(%t: {arg_type}):
{body}
    "func.return"() : () -> ()
  }}) : () -> ()
}}) : () -> ()
"""


GOOD = _module(
    f"""    %0 = "df.filter"(%t) ({{
      %c = "df.col"() {{column = "a"}} : () -> i64 loc("etl.py":3:4)
      %z = "arith.constant"() <{{value = 0 : i64}}> : () -> i64
      %p = "arith.cmpi"(%c, %z) <{{predicate = 4 : i64}}> : (i64, i64) -> i1
      "llvm.return"(%p) : (i1) -> ()
    }}) : ({TABLE}) -> {TABLE} loc("etl.py":3:4)
    %1 = "df.project"(%0) {{columns = ["a"]}} : ({TABLE}) -> !df.table<["a"], [i64], [false]> loc("etl.py":4:4)
    %2 = "df.sort"(%1) {{by = ["a"], ascending = [true]}} : (!df.table<["a"], [i64], [false]>) -> !df.table<["a"], [i64], [false]>
    "df.write_parquet"(%2) {{path = "out"}} : (!df.table<["a"], [i64], [false]>) -> ()"""
)

BAD = {
    "unknown op": (
        GOOD.replace('"df.project"', '"df.nope"'),
        "unregistered operation 'df.nope'",
    ),
    "wrong operand type": (
        _module(f'    %0 = "df.project"(%t) {{columns = ["a"]}} : (i64) -> {TABLE}', "i64"),
        "df.table",
    ),
    "missing attribute": (
        GOOD.replace('{columns = ["a"]} ', ""),
        'attribute "columns" is expected',
    ),
    "wrong attribute kind": (
        GOOD.replace('{path = "out"}', "{path = 3 : i64}"),
        "builtin.string",
    ),
    "bad table parameter": (
        _module("", '!df.table<"a", [i64], [false]>'),
        "builtin.array",
    ),
    "region count": (
        GOOD.replace(
            f'    }}) : ({TABLE}) -> {TABLE} loc("etl.py":3:4)',
            f'    }}, {{\n    }}) : ({TABLE}) -> {TABLE} loc("etl.py":3:4)',
        ),
        "unexpected number of regions",
    ),
    "unregistered dialect": (
        GOOD.replace('"df.project"', '"nosuch.project"'),
        "unregistered dialect",
    ),
}


def test_upstream_accepts_and_rejects(tmp_path):
    paths = [tmp_path / "good.mlir"]
    paths[0].write_text(GOOD)
    for i, (name, (text, _)) in enumerate(BAD.items()):
        assert text != GOOD, name
        p = tmp_path / f"bad{i}.mlir"
        p.write_text(text)
        paths.append(p)
    failures = dict(verify_files(paths))
    assert str(paths[0]) not in failures, failures.get(str(paths[0]))
    for p, (name, (_, expected)) in zip(paths[1:], BAD.items()):
        assert str(p) in failures, f"upstream accepted IR with {name}"
        assert expected in failures[str(p)], (name, failures[str(p)])


def test_upstream_error_names_user_location():
    error = verify_text(BAD["unknown op"][0].replace('loc("etl.py":4:4)', 'loc("etl.py":4:9)'))
    assert error is not None and '"etl.py":4:9' in error


def test_xdsl_built_df_ir_verifies_upstream():
    """IR built and printed by xDSL (generic form with locations) verifies upstream."""
    from opgraph.dialects import dataframe as df
    from opgraph.dialects.context import parse_module, print_module

    table = df.TableType([("a", i64, False), ("s", df.StringType(), True)])
    block = Block(arg_types=[table])
    loc = FileLineColLoc(StringAttr("etl.py"), IntAttr(5), IntAttr(2))
    ops = [
        df.ProjectOp(block.args[0], ["s"]),
    ]
    ops.append(df.DistinctOp(ops[-1].results[0]))
    ops.append(df.HeadOp(ops[-1].results[0], 3))
    ops.append(df.ConcatOp(ops[-1].results[0], ops[-1].results[0]))
    for op in ops:
        op.location = loc
    block.add_ops([*ops, func.ReturnOp()])
    f = func.FuncOp("f", ((table,), ()), Region(block))
    module = ModuleOp([f])
    module.verify()
    text = print_module(module)
    assert 'loc("etl.py":5:2)' in text
    parse_module(text)  # round trip in xDSL
    assert verify_text(text) is None


# ------------------------------------------------------ documented upstream IRDL limits

LIMITS_TWIN = """irdl.dialect @lim {
  irdl.operation @var {
    %0 = irdl.any
    irdl.operands(xs: variadic %0)
  }
  irdl.operation @attrs {
    %0 = irdl.base "#builtin.string"
    irdl.attributes {"req" = %0}
  }
  irdl.operation @reg {
    %r = irdl.region
    irdl.regions(body: %r)
  }
}
"""


def _lim(body: str, args: str = "i64, i32") -> str:
    return (
        '"builtin.module"() ({\n  "func.func"() <{function_type = (' + args + ') -> (), sym_name = "f"}> ({\n'
        "  ^bb0(%a: i64, %b: i32):\n" + body + '\n    "func.return"() : () -> ()\n  }) : () -> ()\n}) : () -> ()\n'
    )


def test_upstream_irdl_limits(tmp_path):
    """What upstream IRDL can and cannot say (the reasons behind irdl_gen's choices)."""
    twin = tmp_path / "lim.irdl.mlir"
    twin.write_text(LIMITS_TWIN)
    cases = {
        # every element of a variadic group binds the same constraint variable
        "homogeneous variadic": ('    "lim.var"(%a, %a) : (i64, i64) -> ()', True),
        "heterogeneous variadic": ('    "lim.var"(%a, %b) : (i64, i32) -> ()', False),
        # listed attributes are required; attributes not listed are accepted (optional ones)
        "listed attribute": ('    "lim.attrs"() {req = "x"} : () -> ()', True),
        "extra attribute": ('    "lim.attrs"() {req = "x", opt = 1 : i64} : () -> ()', True),
        "missing attribute": ('    "lim.attrs"() : () -> ()', False),
        # the region count is exact: no variadic or optional regions
        "one region": ('    "lim.reg"() ({\n    }) : () -> ()', True),
        "two regions": ('    "lim.reg"() ({\n    }, {\n    }) : () -> ()', False),
        "no region": ('    "lim.reg"() : () -> ()', False),
    }
    paths = {}
    for i, (name, (body, _)) in enumerate(cases.items()):
        p = tmp_path / f"case{i}.mlir"
        p.write_text(_lim(body))
        paths[name] = str(p)
    failures = dict(verify_files(paths.values(), twins=[twin]))
    for name, (_, ok) in cases.items():
        assert (paths[name] not in failures) == ok, (name, failures.get(paths[name]))


def test_broken_twin_is_an_error_for_every_file(tmp_path):
    twin = tmp_path / "broken.irdl.mlir"
    twin.write_text('irdl.dialect @b {\n  irdl.operation @o {\n    %0 = irdl.base "#builtin.nonexistent"\n  }\n}\n')
    p = tmp_path / "x.mlir"
    p.write_text("module {\n}\n")
    failures = verify_files([p], twins=[twin])
    assert len(failures) == 1 and "broken.irdl.mlir" in failures[0][1]


def test_crash_of_upstream_is_an_error(monkeypatch, tmp_path):
    """A child killed by a signal fails the file it was verifying; the others still run."""
    from opgraph.dialects import upstream_verify

    real = upstream_verify._child_command

    def crashing(paths, twins):
        if Path(paths[0]).name.startswith("crash"):
            script = (
                "import json, os, signal, sys\n"
                "print(json.dumps({'path': sys.argv[1], 'started': True}), flush=True)\n"
                "os.kill(os.getpid(), signal.SIGSEGV)\n"
            )
            return [sys.executable, "-c", script, *paths]
        return real(paths, twins)

    monkeypatch.setattr(upstream_verify, "_child_command", crashing)
    good = tmp_path / "good.mlir"
    good.write_text(GOOD)
    crash = tmp_path / "crash.mlir"
    crash.write_text(GOOD)
    failures = dict(verify_files([crash, good]))
    assert str(good) not in failures
    assert "crashed (SIGSEGV)" in failures[str(crash)]
    assert verify_text(GOOD, name="crash.mlir") is not None


def test_df_concat_of_differently_nullable_tables_verifies_upstream():
    from opgraph.dialects import dataframe as df
    from opgraph.dialects.context import print_module

    a = df.TableType([("a", i64, False)])
    b = df.TableType([("a", i64, True)])
    block = Block(arg_types=[a, b])
    block.add_ops([df.ConcatOp(block.args[0], block.args[1]), func.ReturnOp()])
    module = ModuleOp([func.FuncOp("f", ((a, b), ()), Region(block))])
    module.verify()
    assert verify_text(print_module(module)) is None
