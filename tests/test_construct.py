"""opgraph.ir_construct: the quick builders leave the IR exactly as xDSL's would."""

from __future__ import annotations

from opgraph.dialects import dataframe as df
from opgraph.ir_construct import (
    append_op,
    new_op,
    replace_all_uses,
    replace_value_with_new_type,
)
from opgraph.dialects.context import print_module
from xdsl.dialects import arith, func
from xdsl.dialects.builtin import FloatAttr, FunctionType, StringAttr, f64
from xdsl.ir import Block, Region
from xdsl.rewriter import Rewriter


def _uses(value) -> list[tuple[int, int]]:
    out, use = [], value.first_use
    while use is not None:
        out.append((id(use.operation), use.index))
        use = use._next_use
    return out


def _state(op) -> dict:
    return {
        "class": type(op),
        "operands": op._operands,
        "uses": [(id(u.operation), u.index) for u in op._operand_uses],
        "result_types": [r.type for r in op.results],
        "result_owner": [(r.op is op, r.index) for r in op.results],
        "properties": list(op.properties.items()),
        "attributes": list(op.attributes.items()),
        "location": op.location,
        "successors": (op._successors, op._successor_uses),
        "regions": [r.parent is op for r in op.regions],
        "parent": op.parent,
    }


def test_new_op_matches_create():
    c = arith.ConstantOp(FloatAttr(2.0, f64))
    x = c.result
    fast = new_op(arith.AddfOp, operands=[x, x], result_types=[f64])  # fastmath default filled in
    slow = arith.AddfOp.create(operands=[x, x], result_types=[f64])
    a, b = _state(fast), _state(slow)
    assert a.pop("uses") != b.pop("uses")  # different op objects, same shape
    assert a == b
    assert list(fast.properties) == ["fastmath"]
    # use list: newest use first, as Operation.__init__ leaves it
    assert _uses(x)[:4] == [(id(slow), 1), (id(slow), 0), (id(fast), 1), (id(fast), 0)]


def test_new_op_with_region_and_properties():
    body = Block(arg_types=[f64])
    ret = func.ReturnOp.create(operands=[body.args[0]])
    body.add_op(ret)
    props = {"sym_name": StringAttr("k"), "function_type": FunctionType.from_lists([f64], [f64])}
    fast = new_op(func.FuncOp, properties=props, regions=[Region(body)])
    slow = func.FuncOp.create(properties=props, regions=[Region(Block(arg_types=[f64]))])
    assert list(fast.properties) == list(slow.properties)
    assert fast.regions[0].parent is fast and fast.body.block is body
    fast.verify()


def test_replace_all_uses_matches_xdsl():
    def build():
        c = arith.ConstantOp(FloatAttr(1.0, f64))
        d = arith.ConstantOp(FloatAttr(3.0, f64))
        users = [arith.AddfOp(c.result, c.result), arith.MulfOp(d.result, c.result), arith.SubfOp(c.result, d.result)]
        return c, d, users

    c1, d1, u1 = build()
    c2, d2, u2 = build()
    c1.result.replace_all_uses_with(d1.result)
    replace_all_uses(c2.result, d2.result)
    assert c1.result.first_use is None and c2.result.first_use is None
    index = {id(o): i for i, o in enumerate(u1)} | {id(o): i for i, o in enumerate(u2)}
    assert [(index[o], i) for o, i in _uses(d1.result)] == [(index[o], i) for o, i in _uses(d2.result)]
    for a, b in zip(u1, u2):
        assert [v is d1.result for v in a._operands] == [v is d2.result for v in b._operands]


def test_replace_value_with_new_type_matches_rewriter():
    schema = df.table_of([("a", f64, False)])
    wider = df.table_of([("a", f64, False), ("b", f64, True)])

    def build():
        block = Block(arg_types=[schema])
        proj = df.ProjectOp(block.args[0], ["a"])
        block.add_op(proj)
        user = df.DropOp(proj.result, [])
        block.add_op(user)
        return proj, user

    p1, s1 = build()
    p2, s2 = build()
    n1 = Rewriter.replace_value_with_new_type(p1.result, wider)
    n2 = replace_value_with_new_type(p2.result, wider)
    assert n1.type == n2.type == wider
    assert p2.results[0] is n2 and n2.op is p2 and n2.index == 0
    assert s2.operands[0] is n2 and _uses(n2) == [(id(s2), 0)]
    assert s1.operands[0] is n1


def test_append_op_matches_add_op():
    block1, block2 = Block(), Block()
    ops1 = [arith.ConstantOp(FloatAttr(float(i), f64)) for i in range(3)]
    ops2 = [arith.ConstantOp(FloatAttr(float(i), f64)) for i in range(3)]
    for o in ops1:
        block1.add_op(o)
    for o in ops2:
        append_op(block2, o)
    assert [o.value for o in block1.ops] == [o.value for o in block2.ops]
    assert block2.first_op is ops2[0] and block2.last_op is ops2[2]
    assert ops2[1].prev_op is ops2[0] and ops2[1].next_op is ops2[2] and ops2[0].prev_op is None
    assert all(o.parent is block2 for o in ops2)
    try:
        append_op(block1, ops2[0])
    except ValueError:
        pass
    else:  # pragma: no cover
        raise AssertionError("an attached op was appended")


def test_traced_pipeline_prints_the_same(tmp_path):
    """The tracer builds its ops with new_op/init_op/append_op; the printed IR is what the
    generic constructors give (a round trip through xDSL's parser prints alike)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from opgraph.dialects.context import make_context
    from xdsl.parser import Parser

    import opgraph as og

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"k": [1, 2], "a": [1.0, 2.0]}), path)

    @og.pipeline
    def p(src: str):
        t = og.read_parquet(src)
        t = t.assign(b=t["a"] * 2 + 1, c=(t["k"] % 3) > 0)
        return t[t["b"] > 1.5]

    module = p.trace_full(str(path)).module
    text = print_module(module)
    reparsed = Parser(make_context(), text).parse_module()
    assert print_module(reparsed) == text
