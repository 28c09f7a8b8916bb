"""The compile-speed shortcuts of session 6 give what the generic xDSL/Python paths give:
fixed IRDL accessors, the reused pattern rewriter, source lines from the position table,
identity-cached table types and the ``has_window`` flag of expressions."""

from __future__ import annotations

import sys

from opgraph.dialects import dataframe as df
from opgraph.dialects.walk import only_block, several_blocks
from opgraph.passes._expr_regions import ReusedRewriter
from xdsl.dialects import arith
from xdsl.dialects.builtin import IntegerAttr, f64, i64
from xdsl.ir import Block, Region
from xdsl.irdl.operations import BeforeVariadicSingleAccessor, get_op_constructs
from xdsl.pattern_rewriter import PatternRewriter

from opgraph.tracing import _line_column


def _generic(cls: type, name: str, op):
    """What xDSL's own accessor (BeforeVariadicSingleAccessor) returns for ``op.<name>``."""
    fast = vars(cls)[name]
    assert isinstance(fast, BeforeVariadicSingleAccessor) and type(fast) is not BeforeVariadicSingleAccessor
    return get_op_constructs(op, fast.construct)[fast.idx]


def test_fixed_accessors_return_the_generic_values():
    # xDSL's own op classes keep xDSL's accessors
    assert type(vars(arith.AddiOp)["lhs"]) is BeforeVariadicSingleAccessor
    schema = df.table_of([("x", f64, False)])
    col = df.ColumnOp("x", f64)
    assert col.result is _generic(df.ColumnOp, "result", col)
    block = Block(arg_types=[schema])
    m = df.MapOp(block.args[0], ["y"], Region(Block()), df.infer_assign(schema, ["y"], [(f64, False)]))
    assert m.input is _generic(df.MapOp, "input", m) is block.args[0]
    assert m.expr is _generic(df.MapOp, "expr", m) is m.regions[0]
    assert m.result is _generic(df.MapOp, "result", m) is m.results[0]


def test_reused_rewriter_starts_like_a_fresh_one():
    ops = [arith.ConstantOp(IntegerAttr(i, i64)) for i in range(3)]
    Block(ops)
    reused = ReusedRewriter()
    for op in ops:
        fresh = PatternRewriter(op)
        reused.at(op)
        assert reused.insertion_point == fresh.insertion_point
        assert reused._current_operation is fresh._current_operation is op
        assert reused.has_done_action is fresh.has_done_action is False
        reused.has_done_action = True  # as after a rewrite: reset by the next at()


def _caller_lines() -> tuple[int | None, int]:
    frame = sys._getframe(1)  # suspended at its call, as user_location sees the user's frame
    return _line_column(frame.f_code, frame.f_lasti)[0], frame.f_lineno


def test_line_from_position_table_is_f_lineno():
    line, expected = _caller_lines()
    assert line == expected
    multi = [
        1,
        _caller_lines(),
    ]
    assert multi[1][0] == multi[1][1]


def test_table_of_is_cached_by_value_and_identity():
    a = df.table_of([("a", i64, False), ("b", f64, True)])
    b = df.table_of([("a", i64, False), ("b", f64, True)])
    c = df.table_of((("a", i64, False), ("b", f64, False)))
    assert a is b and a is not c and a != c


def test_region_shape_helpers():
    empty, one, two = Region(), Region(Block()), Region([Block(), Block()])
    assert only_block(empty) is None and only_block(one) is one.blocks.first and only_block(two) is None
    assert not several_blocks(empty) and not several_blocks(one) and several_blocks(two)


def test_has_window_is_known_from_the_children():
    from opgraph.expr import Expr, walk
    from opgraph.tracing import SourceLoc

    loc = SourceLoc("x.py", 1, 1)
    col = Expr("col", (), ("a",), f64, False, loc)
    win = Expr("window", (col,), ("rolling_mean", 3), f64, True, loc)
    top = Expr("add", (Expr("mul", (col, col), (), f64, False, loc), win), (), f64, True, loc)
    for e in (col, win, top, top.args[0]):
        assert e.has_window == any(n.kind == "window" for n in walk(e))
