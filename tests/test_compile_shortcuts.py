"""Compile-time shortcuts (benchmarks/compile_scaling.py) give the slow path's results:
list walks, the CSE driver's effect queries, the cached default pipeline, the island check
folded into the fast verifier, shared attributes, the quick vector.yield builder, and the
garbage collector's promotion of traced/compiled IR."""

from __future__ import annotations

import gc

import pytest
from opgraph.dialects import dataframe as df
from opgraph.dialects import taskgraph as tg
from opgraph.dialects.context import make_context, print_module
from opgraph.dialects.upstream.async_dialect import ExecuteOp
from opgraph.dialects.upstream.async_dialect import YieldOp as AsyncYieldOp
from opgraph.dialects.upstream.vector_yield import YieldOp
from opgraph.dialects.walk import walk_block, walk_ops
from opgraph.passes import pipeline as pp
from opgraph.passes import registry
from opgraph.passes._expr_regions import is_closed, value_columns
from opgraph.passes.verify import find_verification_error
from support import write_small_parquet
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    BoolAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    f64,
)
from xdsl.ir import Block, Region
from xdsl.irdl import IRDLOperation
from xdsl.traits import get_effects
from xdsl.transforms.common_subexpression_elimination import (
    CommonSubexpressionElimination,
)

import opgraph as og
from opgraph.driver import compile_traced
from opgraph.tracing import gc_paused, promote_to_oldest


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_small_parquet(tmp_path_factory.mktemp("shortcuts"))


@og.pipeline
def small(path: str):
    t = og.read_parquet(path)
    t = t.assign(c=t["a"] * 2.0 + t["b"])
    t = t.assign(e=t["c"] - 1.0)
    t = t[t["c"] > 0.5]
    t = t[(t["e"] < 3.0) | t["b"].isnull()]
    g = t.groupby("k").agg(s=("c", "sum"))
    t = t.merge(g, on="k", how="left")
    og.write_parquet(t, path + ".out")
    return t.assign(d=t["s"] * 0.5 + t["c"])


@og.pipeline
def duplicated(path: str):
    # two identical maps and filters over one input: CSE merges them (ops with regions)
    t = og.read_parquet(path)
    x = t.assign(c=t["a"] * 2.0)
    y = t.assign(c=t["a"] * 2.0)
    f1 = t[t["a"] > 0.5]
    f2 = t[t["a"] > 0.5]
    return x.merge(y, on="k"), f1.merge(f2, on="k")


def _modules(path):
    traced = small.trace_full(path).module
    compiled = compile_traced(small.trace_full(path), hw="summit", keep_dumps=False).module
    return traced, compiled


def test_walks_match_xdsl(path):
    for module in _modules(path):
        assert walk_ops(module) == list(module.walk())
        for op in module.walk():
            assert walk_ops(op) == list(op.walk())
            for region in op.regions:
                for block in region.blocks:
                    assert walk_block(block) == list(block.walk())


def test_is_closed_matches_value_columns(path):
    blocks = [b for m in _modules(path) for op in m.walk() for r in op.regions for b in r.blocks]
    # an expression block that reads a value from outside it (a captured value) is not closed
    outer = Block(arg_types=[f64])
    captured = Block()
    captured.add_op(YieldOp([outer.args[0]]))
    blocks.append(captured)
    for block in blocks:
        assert is_closed(block) == (value_columns(block) is not None)
    assert not is_closed(captured)


def test_effects_match_xdsl(path):
    kinds: dict = {}
    ops = [op for m in _modules(path) for op in m.walk()]
    assert any(get_effects(op) for op in ops)  # reads/writes are among them
    for op in ops:
        assert pp._effects(op, kinds) == get_effects(op), op.name


def _cse_both(module):
    ours = module.clone()
    pp._cse(ours)
    theirs = module.clone()
    CommonSubexpressionElimination().apply(make_context(), theirs)
    return print_module(ours), print_module(theirs)


@pytest.mark.parametrize("pipeline", [small, duplicated])
def test_cse_same_as_xdsl(path, pipeline):
    ours, theirs = _cse_both(pipeline.trace_full(path).module)
    assert ours == theirs
    if pipeline is duplicated:
        assert ours.count('"df.map"') == 1 and ours.count('"df.filter"') == 1


def test_default_pipeline_cached_and_fresh():
    a, b = pp.default_pipeline(), pp.default_pipeline()
    assert a == b == pp.parse_pipeline(pp.DEFAULT_PIPELINE)
    assert a is not b  # callers may change their list
    a.clear()
    assert pp.default_pipeline() == b
    assert [p.ranks for p in pp.default_pipeline(ranks=4) if p.name == "form-islands"] == [4]


def test_default_pipeline_follows_registry():
    original = registry.get_pass("dce")

    class OtherDce(original):  # type: ignore[misc, valid-type]
        pass

    registry.register_pass(OtherDce, replace=True)
    try:
        assert any(type(p) is OtherDce for p in pp.default_pipeline())
    finally:
        registry.register_pass(original, replace=True)
    assert not any(type(p) is OtherDce for p in pp.default_pipeline())


def _island_module(names: list[str]) -> ModuleOp:
    """A function holding one empty island per name."""
    block = Block()
    for name in names:
        island = ExecuteOp([], [], [], Region(Block([AsyncYieldOp([])])), tg.island_attributes(name, 1, "cpu", "opaque"))
        block.add_op(island)
    block.add_op(func.ReturnOp())
    return ModuleOp([func.FuncOp("f", ((), ()), Region(block))])


@pytest.mark.parametrize("names", [["a", "b"], ["a", "a"], ["a", "b", "a"]])
def test_island_check_fast_and_slow_agree(names):
    module = _island_module(names)
    fast = find_verification_error(module, fast=True)
    slow = find_verification_error(module, fast=False)
    assert (fast is None) == (slow is None) == (len(set(names)) == len(names))
    if fast is not None:
        assert fast[0] is slow[0] and fast[1] == slow[1]
        assert "duplicate island name" in fast[1]


def test_bad_island_attribute_found_by_fast_path():
    module = _island_module(["a"])
    island = next(op for op in module.walk() if tg.is_island(op))
    island.attributes[tg.RANKS_ATTR] = IntegerAttr(0, 64)
    fast = find_verification_error(module, fast=True)
    slow = find_verification_error(module, fast=False)
    assert fast is not None and slow is not None and fast[1] == slow[1]


def test_yield_builder_same_as_irdl():
    block = Block(arg_types=[f64, f64])
    quick = YieldOp(list(block.args))
    generic = YieldOp.__new__(YieldOp)
    IRDLOperation.__init__(generic, operands=[list(block.args)])
    for op in (quick, generic):
        op.verify()
    assert quick.operands == generic.operands and quick.attributes == generic.attributes
    assert quick.properties == generic.properties and quick.result_types == generic.result_types
    assert len(YieldOp([]).operands) == 0


def test_shared_attributes_equal_fresh_ones():
    assert df.str_array(["a", "b"]) == ArrayAttr([StringAttr("a"), StringAttr("b")])
    assert df.bool_array([True, False, 1, 0]) == ArrayAttr([BoolAttr.from_bool(v) for v in (True, False, True, False)])
    t = df.table_of([("a", f64, True), ("b", f64, False)])
    assert t.nullable == ArrayAttr([BoolAttr.from_bool(True), BoolAttr.from_bool(False)])
    assert df.string_attr("x") is df.string_attr("x")


def test_gc_paused_promotes_and_resumes():
    gc.collect()
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        junk = [[i] for i in range(1000)]
        with gc_paused():  # nested: only the outer one resumes
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_count()[0] < 1000  # the young objects were moved on, not left to a scan
    del junk


def test_promotion_limits(monkeypatch):
    from opgraph import tracing

    gc.collect()
    monkeypatch.setattr(tracing, "PROMOTE_LIMIT", 0)
    junk = [[i] for i in range(100)]
    assert not promote_to_oldest()  # over the limit: the collector works as usual
    monkeypatch.setattr(tracing, "PROMOTE_LIMIT", 10**9)
    gc.freeze()
    try:
        assert not promote_to_oldest()  # someone else froze objects: leave them be
    finally:
        gc.unfreeze()
    assert promote_to_oldest()
    assert gc.get_freeze_count() == 0
    del junk
    # cyclic garbage promoted to the oldest generation is still collected by a full collection
    cycle: list = []
    cycle.append(cycle)
    del cycle
    assert promote_to_oldest()
    assert gc.collect() >= 1


def test_dataflow_class_cache(path):
    from opgraph.passes import lower_to_islands as lti
    from xdsl.dialects.builtin import UnregisteredOp

    ops = [op for m in _modules(path) for op in m.walk()]
    t = next(op for op in ops if isinstance(op, df.ReadParquetOp)).result.type
    ops.append(UnregisteredOp.with_name("df.custom").create(result_types=[t]))
    ops.append(UnregisteredOp.with_name("other.custom").create(result_types=[t]))
    ops.append(UnregisteredOp.with_name("other.scalar").create(result_types=[f64]))
    for op in ops * 2:  # the second time from the per-class cache
        assert lti.is_dataflow_op(op) == lti._is_dataflow(op), op.name
    assert [lti.is_dataflow_op(op) for op in ops[-3:]] == [True, True, False]
