"""The upstream ``async`` subset and the ``taskgraph`` dialect (islands, transfer, plan).

Upstream checks run torch_mlir's real MLIR in a subprocess with unregistered dialects
disallowed, loading the IRDL twins (``dialects/<name>.irdl.mlir`` when present, otherwise a
minimal twin derived here from the Python definitions).
"""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from opgraph.dialects import taskgraph as tg
from opgraph.dialects.context import make_context, parse_module, print_module
from opgraph.dialects.upstream.async_dialect import (
    AwaitOp,
    ExecuteOp,
    TokenType,
    ValueType,
    YieldOp,
)
from xdsl.dialects import arith, func
from xdsl.dialects.builtin import (
    DenseIntOrFPElementsAttr,
    FileLineColLoc,
    IntAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    TensorType,
    f64,
    i64,
)
from xdsl.ir import Block, Dialect, Operation, Region, TypeAttribute
from xdsl.irdl import OptionalDef, VariadicDef
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

REPO = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ upstream helpers


def minimal_irdl(dialect: Dialect) -> str:
    """An IRDL twin with ``irdl.any`` constraints (structure only: operand/result/region
    counts and variadicity, type parameters), for when ``dialects/<name>.irdl.mlir`` is
    not generated yet."""
    lines = [f"irdl.dialect @{dialect.name} {{"]
    for attr in dialect.attributes:
        kind = "type" if issubclass(attr, TypeAttribute) else "attribute"
        params = attr.get_irdl_definition().parameters
        lines.append(f"  irdl.{kind} @{attr.name.split('.', 1)[1]} {{")
        for i, _ in enumerate(params):
            lines.append(f"    %p{i} = irdl.any")
        lines.append("    irdl.parameters(" + ", ".join(f"{n}: %p{i}" for i, (n, _) in enumerate(params)) + ")")
        lines.append("  }")
    for op in dialect.operations:
        od = op.get_irdl_definition()
        lines.append(f"  irdl.operation @{od.name.split('.', 1)[1]} {{")
        for kind, defs in (("operands", od.operands), ("results", od.results)):
            if not defs:
                continue
            items = []
            for i, (n, d) in enumerate(defs):
                lines.append(f"    %{kind}{i} = irdl.any")
                v = "optional " if isinstance(d, OptionalDef) else "variadic " if isinstance(d, VariadicDef) else ""
                items.append(f"{n.rstrip('_')}: {v}%{kind}{i}")
            lines.append(f"    irdl.{kind}(" + ", ".join(items) + ")")
        if od.regions:
            for i, _ in enumerate(od.regions):
                lines.append(f"    %r{i} = irdl.region")
            lines.append("    irdl.regions(" + ", ".join(f"{n}: %r{i}" for i, (n, _) in enumerate(od.regions)) + ")")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def irdl_twin(name: str, dialect: Dialect | None = None) -> str:
    """The IRDL twin of dialect ``name``: the generated ``dialects/*.irdl.mlir`` file that
    defines it, else a minimal twin derived from the Python definition."""
    for path in sorted((REPO / "dialects").glob("*.irdl.mlir")):
        text = path.read_text()
        if f"irdl.dialect @{name} {{" in text:
            return text
    if dialect is None:
        dialect = make_context().get_dialect(name)
    return minimal_irdl(dialect)


_UPSTREAM_SCRIPT = r"""
import os
import sys
from torch_mlir import ir
from torch_mlir.dialects import irdl
ctx = ir.Context()
ctx.allow_unregistered_dialects = False
for path in sys.argv[2:]:
    with open(path) as f:
        irdl.load_dialects(ir.Module.parse(f.read(), ctx))
with open(sys.argv[1]) as f:
    text = f.read()
try:
    module = ir.Module.parse(text, ctx)
    module.operation.verify()
except Exception as e:
    print(str(e))
    sys.exit(1)
if os.environ.get("OG_UPSTREAM_PRINT") == "custom":
    print(str(module))
else:
    print(module.operation.get_asm(print_generic_op_form=True))
"""


def upstream_check(
    text: str, tmp_path: Path, dialects: dict[str, Dialect | None] | None = None, custom: bool = False
) -> tuple[bool, str]:
    """(ok, upstream's generic print or its error) for ``text``; ``dialects`` name the IRDL
    dialects to load (name -> xDSL Dialect for the minimal twin, or None to use the
    context's)."""
    files = []
    for name, d in (dialects or {}).items():
        p = tmp_path / f"{name}.irdl.mlir"
        p.write_text(irdl_twin(name, d))
        files.append(str(p))
    src = tmp_path / "input.mlir"
    src.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-c", _UPSTREAM_SCRIPT, str(src), *files],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OG_UPSTREAM_PRINT": "custom" if custom else "generic"},
    )
    return proc.returncode == 0, proc.stdout + proc.stderr


def generic(op: Operation) -> str:
    out = StringIO()
    Printer(stream=out, print_generic_format=True, print_debuginfo=True).print_op(op)
    return out.getvalue()


def loc(line: int, col: int = 1) -> FileLineColLoc:
    return FileLineColLoc(StringAttr("t.py"), IntAttr(line), IntAttr(col))


# ------------------------------------------------------------------------ async subset


def _two_islands() -> tuple[ModuleOp, ExecuteOp, ExecuteOp]:
    c = arith.ConstantOp.from_int_and_width(3, 64)
    c.location = loc(2)
    y = YieldOp([c])
    y.location = loc(2)
    e1 = ExecuteOp([], [], [i64], Region(Block([c, y])))
    e1.location = loc(2)
    body = ExecuteOp.body_block_for([e1.body_results[0]])
    add = arith.AddiOp(body.args[0], body.args[0])
    add.location = loc(3)
    body.add_ops([add, YieldOp([add])])
    e2 = ExecuteOp([e1.token], [e1.body_results[0]], [i64], Region(body))
    e2.location = loc(3)
    wait_v = AwaitOp(e2.body_results[0])
    wait_t = AwaitOp(e2.token)
    ret = func.ReturnOp(wait_v)
    fn = func.FuncOp("f", ((), (i64,)), Region(Block([e1, e2, wait_v, wait_t, ret])))
    return ModuleOp([fn]), e1, e2


def test_async_types_print_like_upstream():
    assert str(TokenType()) == "!async.token"
    assert str(ValueType(i64)) == "!async.value<i64>"
    assert str(ValueType(TensorType(f64, [4]))) == "!async.value<tensor<4xf64>>"


def test_execute_generic_form_matches_upstream_spelling():
    module, e1, e2 = _two_islands()
    module.verify()
    text = generic(module)
    # segment sizes are an inherent property, deps first then values
    assert '"async.execute"() <{operandSegmentSizes = array<i32: 0, 0>}> ({' in text
    assert '"async.execute"(%0, %1) <{operandSegmentSizes = array<i32: 1, 1>}> ({' in text
    assert ": (!async.token, !async.value<i64>) -> (!async.token, !async.value<i64>)" in text
    assert '"async.await"(%4) : (!async.value<i64>) -> i64' in text
    assert '"async.await"(%3) : (!async.token) -> ()' in text
    # block argument of the body is the unwrapped type
    assert "^bb0(%5: i64" in text
    assert e2.body.args[0].type == i64


def test_async_ir_verifies_upstream_and_roundtrips(tmp_path):
    module, _, _ = _two_islands()
    text = print_module(module)
    ok, out = upstream_check(text, tmp_path)
    assert ok, out
    # upstream's own generic print parses back in xDSL
    back = parse_module(out)
    back.verify()
    assert [o.name for o in back.walk()].count("async.execute") == 2
    # and xDSL's print -> parse -> print is stable
    assert print_module(parse_module(text)) == text


CUSTOM_SRC = """
func.func @f(%a: i64, %n: index) -> i64 {
  %t, %v = async.execute -> !async.value<i64> {
    async.yield %a : i64
  }
  %t2, %v2, %v3 = async.execute [%t] (%v as %x: !async.value<i64>) -> (!async.value<i64>, !async.value<i64>) attributes {taskgraph.island = "i1"} {
    async.yield %x, %x : i64, i64
  }
  %t3 = async.execute [%t, %t2] {
    async.yield
  }
  %t4 = async.execute {
    %c = arith.constant 1 : i64
    async.yield
  }
  %g = async.create_group %n : !async.group
  %r0 = async.add_to_group %t3, %g : !async.token
  async.await_all %g
  %r = async.await %v2 : !async.value<i64>
  async.await %t2 : !async.token
  return %r : i64
}
"""


def test_custom_syntax_matches_upstream(tmp_path):
    # xDSL parses upstream's custom syntax ...
    module = parse_module(CUSTOM_SRC)
    module.verify()
    execs = [o for o in module.walk() if isinstance(o, ExecuteOp)]
    assert [(len(e.dependencies), len(e.body_operands), len(e.body_results)) for e in execs] == [
        (0, 0, 1),
        (1, 1, 2),
        (2, 0, 0),
        (0, 0, 0),
    ]
    assert isinstance(execs[3].body.last_op, YieldOp)
    # ... prints it the way upstream does (upstream accepts it) ...
    out = StringIO()
    Printer(stream=out).print_op(module)
    custom = out.getvalue()
    assert "async.execute [%t] (%v as %x: !async.value<i64>) -> (!async.value<i64>, !async.value<i64>) attributes {" in custom
    assert "%r = async.await %v2 : !async.value<i64>" in custom
    ok, upstream_custom = upstream_check(custom, tmp_path, custom=True)
    assert ok, upstream_custom
    # ... and reads upstream's own custom print back to the same generic IR
    again = parse_module(upstream_custom)
    again.verify()
    assert [o.name for o in again.walk()] == [o.name for o in module.walk()]
    ok, out_generic = upstream_check(CUSTOM_SRC, tmp_path)
    assert ok, out_generic
    assert [o.name for o in parse_module(out_generic).walk()] == [o.name for o in module.walk()]


def test_yield_type_mismatch_is_rejected_like_upstream(tmp_path):
    c = arith.ConstantOp.from_int_and_width(1, 64)
    e = ExecuteOp([], [], [f64], Region(Block([c, YieldOp([c])])))
    e.location = loc(5)
    fn = func.FuncOp("f", ((), ()), Region(Block([e, func.ReturnOp()])))
    module = ModuleOp([fn])
    with pytest.raises(VerifyException, match="async.yield.*operand types do not match"):
        module.verify()
    ok, out = upstream_check(generic(module), tmp_path)
    assert not ok


def test_execute_body_argument_mismatch():
    _, e1, _ = _two_islands()
    body = Block(arg_types=[f64])  # should be i64 (the unwrapped value type)
    body.add_op(YieldOp([]))
    e = ExecuteOp([], [e1.body_results[0]], [], Region(body))
    e.location = loc(9, 4)
    with pytest.raises(VerifyException, match=r"'async.execute' at t.py:9:4: async body region argument types"):
        e.verify()


def test_await_types():
    _, e1, _ = _two_islands()
    assert AwaitOp(e1.body_results[0]).results[0].type == i64
    assert len(AwaitOp(e1.token).results) == 0


def test_async_dialect_has_no_irdl_twin():
    assert not (REPO / "dialects" / "async.irdl.mlir").exists()
    assert not (REPO / "dialects" / "upstream" / "async.irdl.mlir").exists()


# ------------------------------------------------------------------- taskgraph dialect


def test_taskgraph_ops_follow_conventions():
    for op in tg.TaskGraph.operations:
        od = op.get_irdl_definition()
        assert not od.properties, f"{op.name} must use attr_def, not prop_def"
        assert sum(isinstance(d, VariadicDef) for _, d in od.operands) <= 1
        assert sum(isinstance(d, VariadicDef) for _, d in od.results) <= 1
    assert tg.TaskGraph.name == "taskgraph"


@pytest.mark.parametrize(
    "text, kind, keys, desc",
    [
        ("hash:k1,k2", "hash", ("k1", "k2"), (False, False)),
        ("range:a,b:desc", "range", ("a", "b"), (False, True)),
        ("range:a:asc", "range", ("a",), (False,)),
        ("replicated", "replicated", (), ()),
        ("single", "single", (), ()),
        ("any", "any", (), ()),
    ],
)
def test_parse_partitioning(text, kind, keys, desc):
    p = tg.parse_partitioning(text)
    assert (p.kind, p.keys, p.descending) == (kind, keys, desc)
    assert tg.parse_partitioning(str(p)) == p


@pytest.mark.parametrize("text", ["hash", "hash:", "hash:a,,b", "round_robin", "single:x", ""])
def test_bad_partitioning(text):
    with pytest.raises(ValueError):
        tg.parse_partitioning(text)


def _transfer_island(from_ranks=4, to_ranks=2, partitioning="hash:k") -> tuple[ModuleOp, tg.TransferOp]:
    t = TensorType(f64, [8])
    src_body = Block()
    cst = arith.ConstantOp(DenseIntOrFPElementsAttr.from_list(t, [0.0] * 8))
    src_body.add_ops([cst, YieldOp([cst])])
    src = ExecuteOp([], [], [t], Region(src_body), tg.island_attributes("i0_src", 4, "cpu", "opaque"))
    body = ExecuteOp.body_block_for([src.body_results[0]])
    tr = tg.TransferOp(body.args[0], from_ranks, to_ranks, partitioning)
    tr.location = loc(12, 3)
    body.add_ops([tr, YieldOp([tr])])
    move = ExecuteOp([], [src.body_results[0]], [t], Region(body), tg.island_attributes("i1_transfer", 4, "cpu", "transfer"))
    wait = AwaitOp(move.body_results[0])
    fn = func.FuncOp("f", ((), (t,)), Region(Block([src, move, wait, func.ReturnOp(wait)])))
    plan = tg.PlanOp("etl", "summit", pass_pipeline="builtin.module(verify)")
    return ModuleOp([plan, fn]), tr


def test_transfer_and_plan_verify_and_print(tmp_path):
    module, tr = _transfer_island()
    module.verify()
    tg.verify_islands(module)
    text = print_module(module)
    assert '"taskgraph.transfer"(%' in text
    assert 'from_ranks = 4 : i64, to_ranks = 2 : i64, partitioning = "hash:k"' in text
    assert '"taskgraph.plan"() {pipeline = "etl", hardware = "summit", version = 1 : i64' in text
    assert 'taskgraph.island = "i1_transfer"' in text
    assert tr.parsed_partitioning.keys == ("k",)
    assert print_module(parse_module(text)) == text
    ok, out = upstream_check(text, tmp_path, {"taskgraph": tg.TaskGraph})
    assert ok, out


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"to_ranks": 0}, r"'taskgraph.transfer' at t.py:12:3: to_ranks must be >= 1"),
        ({"partitioning": "hash"}, r"'taskgraph.transfer' at t.py:12:3: .*needs a comma-separated"),
        ({"partitioning": "single", "to_ranks": 3}, r"partitioning 'single' needs to_ranks = 1"),
    ],
)
def test_transfer_verifier(kwargs, message):
    module, _ = _transfer_island(**kwargs)
    with pytest.raises(VerifyException, match=message):
        module.verify()


def test_transfer_type_mismatch():
    t = TensorType(f64, [8])
    body = Block(arg_types=[t])
    tr = tg.TransferOp.create(
        operands=[body.args[0]],
        result_types=[TensorType(f64, [4])],
        attributes={"from_ranks": IntegerAttr(1, i64), "to_ranks": IntegerAttr(1, i64), "partitioning": StringAttr("any")},
    )
    with pytest.raises(VerifyException, match="must equal the operand type"):
        tr.verify()


def test_plan_must_be_at_module_top():
    plan = tg.PlanOp("etl", "laptop")
    fn = func.FuncOp("f", ((), ()), Region(Block([plan, func.ReturnOp()])))
    with pytest.raises(VerifyException, match="expects parent op 'builtin.module'"):
        ModuleOp([fn]).verify()


def test_at_most_one_plan():
    module, _ = _transfer_island()
    module.body.block.insert_op_before(tg.PlanOp("x", "y"), module.body.block.first_op)
    with pytest.raises(VerifyException, match="at most one 'taskgraph.plan'"):
        tg.verify_islands(module)


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({tg.RANKS_ATTR: IntegerAttr(0, i64)}, "taskgraph.ranks must be >= 1"),
        ({tg.DEVICE_ATTR: StringAttr("tpu")}, 'taskgraph.device must be "cpu" or "gpu"'),
        ({tg.ISLAND_ATTR: StringAttr("")}, "needs a non-empty string attribute 'taskgraph.island'"),
        ({tg.ISLAND_ATTR: StringAttr("i0_src")}, "duplicate island name 'i0_src'"),
        ({tg.PATTERN_ATTR: StringAttr("")}, "taskgraph.pattern must be a non-empty string"),
    ],
)
def test_island_attribute_checks(attrs, message):
    module, tr = _transfer_island()
    island = tr.parent_op()
    assert isinstance(island, ExecuteOp)
    island.attributes.update(attrs)
    with pytest.raises(VerifyException, match=message):
        tg.verify_islands(module)


def test_island_attributes_only_on_execute():
    module, tr = _transfer_island()
    tr.attributes[tg.ISLAND_ATTR] = StringAttr("x")
    with pytest.raises(VerifyException, match="only allowed on 'async.execute'"):
        tg.verify_islands(module)


def test_annotation_attributes_allowed_on_dataflow_ops():
    # CONVENTIONS #3: taskgraph.ranks/device/algorithm/... annotate dataflow ops
    module, tr = _transfer_island()
    tr.attributes[tg.RANKS_ATTR] = IntegerAttr(2, i64)
    tr.attributes["taskgraph.algorithm"] = StringAttr("shuffle-hash")
    tg.verify_islands(module)
    tr.attributes[tg.RANKS_ATTR] = IntegerAttr(0, i64)
    with pytest.raises(VerifyException, match="must be >= 1"):
        tg.verify_islands(module)


def test_island_info():
    module, tr = _transfer_island()
    island = tr.parent_op()
    assert tg.is_island(island)
    info = tg.island_info(island)
    assert (info.name, info.ranks, info.device, info.pattern) == ("i1_transfer", 4, "cpu", "transfer")


def test_generated_irdl_twin_loads_upstream(tmp_path):
    """The project's IRDL generator expresses the taskgraph dialect without problems, the
    twin on disk is current, and upstream accepts the printed IR with it."""
    gen = pytest.importorskip("opgraph.dialects.irdl_gen")
    twin, problems = gen.dialect_to_irdl(tg.TaskGraph)
    assert [p for p in problems if p.severity in ("error", "warning")] == []
    assert "irdl.dialect @taskgraph {" in twin and "irdl.operation @transfer" in twin
    on_disk = REPO / "dialects" / "taskgraph.irdl.mlir"
    if on_disk.exists():
        assert twin in on_disk.read_text(), "dialects/taskgraph.irdl.mlir is stale: regenerate it"
    (tmp_path / "tg.irdl.mlir").write_text(twin)
    module, _ = _transfer_island()
    src = tmp_path / "input.mlir"
    src.write_text(print_module(module))
    proc = subprocess.run(
        [sys.executable, "-c", _UPSTREAM_SCRIPT, str(src), str(tmp_path / "tg.irdl.mlir")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
