"""The ``comm`` (data movement) dialect: construction, verifiers, printing, upstream MLIR."""

from __future__ import annotations

import pytest
from opgraph.dialects import comm
from opgraph.dialects.context import parse_module, print_module
from opgraph.dialects.dataframe import StringType, TableType
from opgraph.dialects.upstream_verify import verify_files, verify_text
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    FileLineColLoc,
    Float32Type,
    IntAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    TensorType,
    f64,
    i64,
)
from xdsl.ir import Block, Operation, Region, SSAValue
from xdsl.utils.exceptions import VerifyException

TABLE = TableType([("user_id", i64, False), ("value", f64, True), ("country", StringType(), True)])
TENSOR = TensorType(Float32Type(), [4, 2])


def loc(line: int, col: int = 5) -> FileLineColLoc:
    return FileLineColLoc(StringAttr("etl.py"), IntAttr(line), IntAttr(col))


def in_module(build) -> tuple[ModuleOp, list[Operation]]:
    """A module with ``func.func @f(table, tensor)`` whose body holds ``build(table, tensor)``."""
    block = Block(arg_types=[TABLE, TENSOR])
    ops = build(block.args[0], block.args[1])
    for i, op in enumerate(ops):
        op.location = loc(10 + i)
    block.add_ops([*ops, func.ReturnOp()])
    f = func.FuncOp("f", ((TABLE, TENSOR), ()), Region(block))
    return ModuleOp([f]), ops


def all_ops(t: SSAValue, x: SSAValue) -> list[Operation]:
    ops: list[Operation] = []

    def add(op: Operation) -> SSAValue:
        ops.append(op)
        return op.results[0]

    s = add(comm.ShuffleOp(t, "hash", ["user_id"], 4))
    add(comm.ShuffleOp(s, "range", ["country", "value"], 3, ascending=[True, False]))
    add(comm.ShuffleOp(s, "range", ["value"], 2))
    add(comm.BroadcastOp(t, root=1))
    add(comm.BroadcastOp(x))
    add(comm.GatherOp(t))
    add(comm.AllGatherOp(t))
    add(comm.ScatterOp(t, root=0))
    add(comm.AllReduceOp(x, "sum"))
    add(comm.AllReduceOp(t, "max"))
    add(comm.AllReduceOp(t, "sum", column_ops=["sum", "min", "max"]))
    add(comm.HaloOp(t, 2, 0, ["user_id"]))
    add(comm.HaloOp(t, 0, 1))
    return ops


def test_every_op_builds_verifies_prints_and_verifies_upstream():
    module, ops = in_module(all_ops)
    assert {op.name for op in ops} == {op.name for op in comm.Comm.operations}
    module.verify()
    for op in ops:
        assert op.results[0].type == op.operands[0].type
    text = print_module(module)
    assert '"comm.shuffle"' in text and 'loc("etl.py":10:5)' in text
    assert 'kind = "range"' in text and "ascending = [true, false]" in text
    back = parse_module(text)
    back.verify()
    assert print_module(back) == text
    assert verify_text(text) is None


def test_accessors():
    _, ops = in_module(all_ops)
    shuffle, rng = ops[0], ops[1]
    assert isinstance(shuffle, comm.ShuffleOp) and isinstance(rng, comm.ShuffleOp)
    assert shuffle.key_names == ["user_id"] and shuffle.ascending_flags == [True]
    assert rng.ascending_flags == [True, False]
    assert ops[9].reductions == ["max", "max", "max"]
    assert ops[10].reductions == ["sum", "min", "max"]
    assert ops[8].reductions == ["sum"]


def _fails(build, *fragments: str) -> str:
    module, _ = in_module(build)
    with pytest.raises(VerifyException) as info:
        module.verify()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_bad_shuffle_key_names_op_column_and_location():
    message = _fails(
        lambda t, x: [comm.ShuffleOp(t, "hash", ["user_id", "nope"], 4)],
        "'comm.shuffle' at etl.py:10:5",
        "'nope'",
        "user_id, value, country",
    )
    assert "not a column" in message


@pytest.mark.parametrize(
    "build, fragments",
    [
        (lambda t, x: [comm.ShuffleOp(t, "hash", ["user_id"], 0)], ["'comm.shuffle'", "parts must be >= 1"]),
        (lambda t, x: [comm.ShuffleOp(t, "round_robin", ["user_id"], 2)], ["unknown shuffle kind"]),
        (lambda t, x: [comm.ShuffleOp(t, "hash", [], 2)], ["at least one key"]),
        (lambda t, x: [comm.ShuffleOp(t, "hash", ["value"], 2, ascending=[True])], ["only allowed on a range"]),
        (lambda t, x: [comm.ShuffleOp(t, "range", ["value"], 2, ascending=[True, False])], ["one flag per key"]),
        (lambda t, x: [comm.ShuffleOp(t, "hash", ["value", "value"], 2)], ["twice"]),
        (lambda t, x: [comm.HaloOp(t, 1, 1, ["missing"])], ["'comm.halo' at etl.py:10:5", "'missing'"]),
        (lambda t, x: [comm.HaloOp(t, -1, 1)], ["'before' must be >= 0"]),
        (lambda t, x: [comm.BroadcastOp(t, root=-1)], ["'comm.broadcast'", "root"]),
        (lambda t, x: [comm.GatherOp(t, root=-2)], ["'comm.gather'", "root"]),
        (lambda t, x: [comm.ScatterOp(t, root=-2)], ["'comm.scatter'", "root"]),
        (lambda t, x: [comm.AllReduceOp(x, "avg")], ["'comm.allreduce'", "unknown reduction 'avg'"]),
        (lambda t, x: [comm.AllReduceOp(t, "sum", ["sum"])], ["one reduction per column"]),
        (lambda t, x: [comm.AllReduceOp(t, "sum", ["sum", "xor", "min"])], ["'xor'", "'value'"]),
        (lambda t, x: [comm.AllReduceOp(x, "sum", ["sum"])], ["needs a table operand"]),
    ],
)
def test_verifier_errors(build, fragments):
    _fails(build, *fragments)


def test_operand_type_constraints():
    with pytest.raises(VerifyException):
        in_module(lambda t, x: [comm.ShuffleOp(x, "hash", ["a"], 2)])[0].verify()
    with pytest.raises(VerifyException):
        in_module(lambda t, x: [comm.GatherOp(x)])[0].verify()


def test_result_type_must_equal_operand_type():
    other = TableType([("user_id", i64, True), ("value", f64, True), ("country", StringType(), True)])

    def build(t, x):
        good = comm.GatherOp(t)
        return [comm.GatherOp.create(operands=[t], attributes=dict(good.attributes), result_types=[other])]

    _fails(build, "expected from variable")


def test_upstream_checks_what_the_twin_can(tmp_path):
    """The twin makes upstream check operand/result equality and required attributes."""
    module, _ = in_module(lambda t, x: [comm.ShuffleOp(t, "hash", ["user_id"], 4)])
    text = print_module(module)
    nullable = str(TABLE).replace("[false, true, true]", "[true, true, true]")
    assert nullable != str(TABLE)
    # result type differs from the operand type (only in the result's position)
    head, sep, tail = text.partition(f") -> {TABLE}")
    assert sep
    cases = {
        "ok": text,
        "result type": head + f") -> {nullable}" + tail,
        "missing parts": text.replace(", parts = 4 : i64", ""),
        "parts not an integer": text.replace("parts = 4 : i64", 'parts = "4"'),
        "unknown comm op": text.replace('"comm.shuffle"', '"comm.shufle"'),
    }
    assert all(v != text for k, v in cases.items() if k != "ok")
    paths = []
    for i, body in enumerate(cases.values()):
        p = tmp_path / f"c{i}.mlir"
        p.write_text(body)
        paths.append(str(p))
    failures = dict(verify_files(paths))
    assert paths[0] not in failures, failures.get(paths[0])
    for name, p in zip(list(cases)[1:], paths[1:]):
        assert p in failures, f"upstream accepted: {name}"


def test_ascending_attribute_is_bool_array():
    op = comm.ShuffleOp(SSAValue.get(Block(arg_types=[TABLE]).args[0]), "range", ["value"], 2, [False])
    assert isinstance(op.ascending, ArrayAttr)
    assert op.ascending.data[0] == IntegerAttr.from_bool(False)
