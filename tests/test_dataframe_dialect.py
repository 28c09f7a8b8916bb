"""df dialect verifiers: bad IR is rejected with a message naming the op and its location."""

from __future__ import annotations

import pytest
from opgraph.dialects import dataframe as df
from opgraph.dialects.context import parse_module, print_module
from opgraph.dialects.upstream.vector_yield import YieldOp
from opgraph.dialects.upstream_verify import verify_text
from xdsl.dialects import arith, func
from xdsl.dialects.builtin import (
    FileLineColLoc,
    FloatAttr,
    IntAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    f64,
    i1,
    i64,
)
from xdsl.ir import Block, Region
from xdsl.utils.exceptions import VerifyException

EVENTS = df.table_of([("id", i64, False), ("value", f64, True), ("country", df.StringType(), False)])
LOC = FileLineColLoc(StringAttr("etl.py"), IntAttr(7), IntAttr(10))


def _module(*ops) -> ModuleOp:
    return ModuleOp([func.FuncOp("f", ((), ()), Region(Block([*ops, func.ReturnOp()])))])


def _read(schema=EVENTS) -> df.ReadParquetOp:
    op = df.ReadParquetOp("events.parquet", schema)
    op.location = LOC
    return op


def _region(*ops) -> Region:
    return Region(Block(list(ops)))


def _verify_error(*ops) -> str:
    with pytest.raises(VerifyException) as info:
        _module(*ops).verify()
    return str(info.value)


def test_good_module_verifies_in_xdsl_and_upstream():
    read = _read()
    col = df.ColumnOp("value", f64)
    k = arith.ConstantOp(FloatAttr(0.5, f64))
    cmp = arith.CmpfOp(col, k, "ogt")
    filt = df.FilterOp(read.result, _region(col, k, cmp, YieldOp([cmp.result])))
    country = df.ColumnOp("country", df.StringType())
    up = df.StringUpperOp(country.result)
    m = df.MapOp(filt.result, ["shout"], _region(country, up, YieldOp([up.result])),
                 df.infer_assign(EVENTS, ["shout"], [(df.StringType(), False)]))
    sink = df.WriteParquetOp(m.result, "out")
    module = _module(read, filt, m, sink)
    module.verify()
    text = print_module(module)
    assert verify_text(text) is None
    assert print_module(parse_module(text)) == text


def test_non_boolean_predicate():
    read = _read()
    col = df.ColumnOp("value", f64)
    filt = df.FilterOp(read.result, _region(col, YieldOp([col.result])))
    filt.location = LOC
    assert "'df.filter' at etl.py:7:10: predicate must be boolean (i1), got float64" in _verify_error(read, filt)


def test_unknown_column_in_expression():
    read = _read()
    col = df.ColumnOp("nope", i1)
    col.location = LOC
    filt = df.FilterOp(read.result, _region(col, YieldOp([col.result])))
    assert "'df.col' at etl.py:7:10: unknown column 'nope' (columns: id, value, country)" in _verify_error(read, filt)


def test_column_read_with_wrong_type():
    read = _read()
    col = df.ColumnOp("value", i64)
    col.location = LOC
    cmp = arith.CmpiOp(col, col, "eq")
    filt = df.FilterOp(read.result, _region(col, cmp, YieldOp([cmp.result])))
    assert "column 'value' has type float64, read as int64" in _verify_error(read, filt)


def test_wrong_result_schema():
    read = _read()
    # declared result type disagrees with the projection
    proj = df.ProjectOp.create(operands=[read.result], attributes={"columns": df.str_array(["id"])}, result_types=[EVENTS])
    proj.location = LOC
    assert "'df.project' at etl.py:7:10: result type" in _verify_error(read, proj)


def test_unknown_column_in_table_op():
    read = _read()
    sort = df.SortOp(read.result, ["id"], [True])
    sort.attributes["by"] = df.str_array(["zzz"])
    sort.location = LOC
    assert "'df.sort' at etl.py:7:10: unknown column 'zzz' in sort keys" in _verify_error(read, sort)


def test_join_key_type_mismatch():
    left, right = _read(), _read(df.table_of([("id", df.StringType(), False)]))
    join = df.JoinOp(left.result, left.result, "inner", ["id"], ["id"])
    join.operands[1] = right.result
    join.location = LOC
    assert "join keys 'id' (int64) and 'id' (string) have different types" in _verify_error(left, right, join)


def test_aggregate_string_mean():
    read = _read()
    g = df.GroupByAggOp(read.result, ["id"], [("n", "id", "count")])
    g.attributes["aggs"] = df.agg_array([("m", "country", "mean")])
    g.location = LOC
    assert "cannot aggregate string column 'country' with 'mean'" in _verify_error(read, g)


def test_map_yield_count_must_match_names():
    read = _read()
    c = arith.ConstantOp(IntegerAttr(1, i64))
    m = df.MapOp(read.result, ["a", "b"], _region(c, YieldOp([c.result])), df.infer_assign(EVENTS, ["a"], [(i64, False)]))
    m.location = LOC
    assert "'df.map' at etl.py:7:10: expression region must end with 'vector.yield' of 2 values" in _verify_error(read, m)


def test_table_type_rejects_duplicate_columns():
    with pytest.raises(VerifyException, match="duplicate column name 'a'"):
        df.TableType([("a", i64, False), ("a", f64, False)])
