"""``fold-constants``: constant folding and algebraic identities in expression regions.

Inside the regions of ``df.filter`` and ``df.map``:

* ``arith`` integer and float arithmetic, bitwise ops, min/max, comparisons (``cmpi``/``cmpf``,
  every predicate, NaN-aware), casts (``extsi``/``extui``/``trunci``/``sitofp``/``uitofp``/
  ``fptosi``/``extf``/``truncf``), ``select`` with a constant condition, ``math`` unary
  functions and powers, and the ``df`` scalar ops (``is_null``/``fill_null``/``isin`` of a
  constant, string length/compare/startswith/contains and ASCII lower/upper) on constants
  are replaced by constants. Integer results wrap to their width (two's complement, like
  the engines); divisions by zero, ``INT_MIN / -1``, negative integer powers and float
  results that are not finite are left to run time;
* identities: ``x + 0``, ``x - 0``, ``x * 1``, ``x / 1``, ``x & true`` (all ones), ``x | false``,
  ``x ^ false``, ``x & x``, ``x | x``, ``~~x``, ``select(c, x, x)``, float ``x * 1.0``,
  ``x / 1.0``, ``x - 0.0`` and ``x + -0.0`` become ``x`` (float ``x + 0.0`` is kept: it maps
  ``-0.0`` to ``0.0``); ``x & false`` -> ``false`` and ``x | true`` -> ``true`` only when ``x``
  cannot be null (a null would make the result null, not the constant);
* ops left unused are removed, and a filter whose predicate becomes the constant ``true`` is
  removed (a constant ``false`` filter stays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from xdsl.context import Context
from xdsl.dialects import arith
from xdsl.dialects.builtin import (
    BoolAttr,
    Float32Type,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
)
from xdsl.ir import Attribute, Block, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern

from opgraph.dialects import dataframe as df
from opgraph.ir_construct import replace_all_uses
from opgraph.dialects.upstream.vector_yield import YieldOp
from opgraph.passes._expr_regions import ReusedRewriter, function_blocks, remove_dead_ops

# ----------------------------------------------------------------------- constants


# op class -> 1 for arith.constant (and subclasses), 2 for df.string_constant, else 0:
# isinstance against xDSL's ABCs, answered once per class (every operand is asked)
_CONSTANT_KIND: dict[type, int] = {}


def _constant_kind(kind: type) -> int:
    k = _CONSTANT_KIND.get(kind)
    if k is None:
        k = _CONSTANT_KIND[kind] = (
            1 if issubclass(kind, arith.ConstantOp) else 2 if issubclass(kind, df.StringConstantOp) else 0
        )
    return k


def constant_of(value: SSAValue) -> Any:
    """The Python value of a constant (int, float, bool for i1, str), or None."""
    owner = value.owner
    k = _CONSTANT_KIND.get(type(owner))
    if k is None:
        k = _constant_kind(type(owner))
    if k == 1:
        attr = owner.value  # type: ignore[union-attr]
        # attribute classes are final: exact type tests are the isinstance tests
        t = value._type
        if type(attr) is IntegerAttr and type(t) is IntegerType:
            v = attr.value.data
            return v != 0 if t.width.data == 1 else v
        if type(attr) is FloatAttr:
            return float(attr.value.data)
        return None
    if k == 2:
        return owner.value.data  # type: ignore[union-attr]
    return None


def _wrap(v: int, width: int) -> int:
    """Two's complement wrap of ``v`` to a signed ``width``-bit integer."""
    v &= (1 << width) - 1
    return v - (1 << width) if v >> (width - 1) else v


def _unsigned(v: int, width: int) -> int:
    return v & ((1 << width) - 1)


def make_constant(value: Any, t: Attribute) -> Operation | None:
    """A constant op of type ``t`` holding ``value`` (None when it cannot be represented)."""
    if isinstance(t, df.StringType):
        return df.StringConstantOp(value) if isinstance(value, str) else None
    if isinstance(t, IntegerType):
        if t.width.data == 1:  # an integer becomes its lowest bit (trunci semantics)
            bit = value if isinstance(value, bool) else isinstance(value, int) and value & 1 == 1
            return arith.ConstantOp(BoolAttr.from_bool(bool(bit)))
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return arith.ConstantOp(IntegerAttr(_wrap(value, t.width.data), t))
    if df.is_float(t):
        if not isinstance(value, float | int) or isinstance(value, bool) or not math.isfinite(value):
            return None
        return arith.ConstantOp(FloatAttr(float(value), t))
    return None


def _np_float(t: Attribute):
    return np.float32 if isinstance(t, Float32Type) else np.float64


def _float(value: float, t: Attribute) -> float | None:
    """``value`` rounded to ``t``; None when it is not finite."""
    with np.errstate(all="ignore"):
        v = float(_np_float(t)(value))
    return v if math.isfinite(v) else None


# ------------------------------------------------------------------ folding rules

_CMPI = {
    0: lambda a, b, w: a == b,
    1: lambda a, b, w: a != b,
    2: lambda a, b, w: a < b,
    3: lambda a, b, w: a <= b,
    4: lambda a, b, w: a > b,
    5: lambda a, b, w: a >= b,
    6: lambda a, b, w: _unsigned(a, w) < _unsigned(b, w),
    7: lambda a, b, w: _unsigned(a, w) <= _unsigned(b, w),
    8: lambda a, b, w: _unsigned(a, w) > _unsigned(b, w),
    9: lambda a, b, w: _unsigned(a, w) >= _unsigned(b, w),
}


def _cmpf(predicate: int, a: float, b: float) -> bool:
    unordered = math.isnan(a) or math.isnan(b)
    if predicate == 0:
        return False
    if predicate == 15:
        return True
    if predicate == 7:
        return not unordered
    if predicate == 14:
        return unordered
    ordered_result = {1: a == b, 2: a > b, 3: a >= b, 4: a < b, 5: a <= b, 6: a != b}
    if predicate <= 6:
        return not unordered and ordered_result[predicate]
    # 8..13: ueq ugt uge ult ule une
    base = {8: a == b, 9: a > b, 10: a >= b, 11: a < b, 12: a <= b, 13: a != b}[predicate]
    return unordered or base


def _int_binary(name: str, a: int, b: int, w: int) -> int | None:
    lo = -(1 << (w - 1))
    if name == "arith.addi":
        return a + b
    if name == "arith.subi":
        return a - b
    if name == "arith.muli":
        return a * b
    if name == "arith.andi":
        return a & b
    if name == "arith.ori":
        return a | b
    if name == "arith.xori":
        return a ^ b
    if name == "arith.maxsi":
        return max(a, b)
    if name == "arith.minsi":
        return min(a, b)
    if name == "arith.maxui":
        return a if _unsigned(a, w) >= _unsigned(b, w) else b
    if name == "arith.minui":
        return a if _unsigned(a, w) <= _unsigned(b, w) else b
    if name in ("arith.divsi", "arith.floordivsi", "arith.ceildivsi", "arith.remsi"):
        if b == 0 or (a == lo and b == -1):
            return None
        if name == "arith.floordivsi":
            return a // b
        if name == "arith.ceildivsi":
            return -(-a // b)
        q = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)
        return q if name == "arith.divsi" else a - b * q
    if name in ("arith.divui", "arith.remui"):
        ua, ub = _unsigned(a, w), _unsigned(b, w)
        if ub == 0:
            return None
        return ua // ub if name == "arith.divui" else ua % ub
    if name == "math.ipowi":
        if b < 0:
            return None
        return pow(a, b, 1 << w)
    return None


_INT_BINARY = frozenset(
    {
        "arith.addi", "arith.subi", "arith.muli", "arith.andi", "arith.ori", "arith.xori",
        "arith.maxsi", "arith.minsi", "arith.maxui", "arith.minui", "arith.divsi",
        "arith.floordivsi", "arith.ceildivsi", "arith.remsi", "arith.divui", "arith.remui",
        "math.ipowi",
    }
)

_FLOAT_BINARY = {
    "arith.addf": lambda a, b: a + b,
    "arith.subf": lambda a, b: a - b,
    "arith.mulf": lambda a, b: a * b,
    "arith.divf": lambda a, b: a / b,
    "math.powf": lambda a, b: np.power(a, b),
    "arith.maximumf": lambda a, b: a if math.isnan(a) else b if math.isnan(b) else max(a, b),
    "arith.minimumf": lambda a, b: a if math.isnan(a) else b if math.isnan(b) else min(a, b),
    "arith.maxnumf": lambda a, b: b if math.isnan(a) else a if math.isnan(b) else max(a, b),
    "arith.minnumf": lambda a, b: b if math.isnan(a) else a if math.isnan(b) else min(a, b),
}

_FLOAT_UNARY = {
    "arith.negf": lambda a: -a,
    "math.absf": abs,
    "math.floor": np.floor,
    "math.ceil": np.ceil,
    "math.trunc": np.trunc,
    "math.sqrt": np.sqrt,
    "math.log": np.log,
    "math.exp": np.exp,
}


def _fold_float(name: str, args: list[float], t: Attribute) -> float | None:
    ft = _np_float(t)
    with np.errstate(all="ignore"):
        xs = [ft(a) for a in args]
        if name in _FLOAT_BINARY and len(xs) == 2:
            result = _FLOAT_BINARY[name](xs[0], xs[1])
        elif name in _FLOAT_UNARY and len(xs) == 1:
            result = _FLOAT_UNARY[name](xs[0])
        else:
            return None
    return _float(float(ft(result)), t)


def _fold_cast(name: str, a: Any, src: Attribute, dst: Attribute) -> Any:
    sw = src.width.data if isinstance(src, IntegerType) else 0
    if name == "arith.extsi":
        return int(a) if not isinstance(a, bool) else (-1 if a else 0)
    if name == "arith.extui":
        return _unsigned(-1 if a is True else int(a), sw)
    if name == "arith.trunci":
        return int(a)  # make_constant wraps
    if name == "arith.sitofp":
        return _float(float(-1 if a is True else int(a)), dst)
    if name == "arith.uitofp":
        return _float(float(_unsigned(-1 if a is True else int(a), sw)), dst)
    if name == "arith.extf" or name == "arith.truncf":
        return _float(float(a), dst)
    if name == "arith.fptosi":
        if not math.isfinite(a) or not isinstance(dst, IntegerType):
            return None
        v = int(a)  # truncates toward zero
        w = dst.width.data
        return v if -(1 << (w - 1)) <= v < (1 << (w - 1)) else None
    return None


_CASTS = frozenset(
    {"arith.extsi", "arith.extui", "arith.trunci", "arith.sitofp", "arith.uitofp", "arith.fptosi", "arith.extf", "arith.truncf"}
)


def _literal(attr: Attribute) -> Any:
    if isinstance(attr, IntegerAttr):
        return attr.value.data != 0 if df.is_bool(attr.type) else attr.value.data
    if isinstance(attr, FloatAttr):
        return float(attr.value.data)
    return getattr(attr, "data", None)


def fold_constant_operands(op: Operation) -> tuple[bool, Any]:
    """``(True, value)`` when every operand of ``op`` is a constant and ``op`` folds; integer
    values are wrapped to the result's width (``i1``: a bool)."""
    folded, value = _fold_constant_operands(op)
    if not folded:
        return False, None
    t = op.results[0].type
    if isinstance(t, IntegerType) and isinstance(value, int):
        width = t.width.data
        if width == 1:
            return True, value if isinstance(value, bool) else value & 1 == 1
        return True, _wrap(int(value), width)
    return True, value


def _fold_constant_operands(op: Operation) -> tuple[bool, Any]:
    args = [constant_of(v) for v in op._operands]
    if not op.results or any(a is None for a in args):
        return False, None
    name, t = op.name, op.results[0].type
    if isinstance(op, arith.CmpiOp):
        width = op.lhs.type.width.data  # type: ignore[attr-defined]
        a, b = (_wrap(-1 if x is True else int(x), width) for x in args)
        return True, _CMPI[op.predicate.value.data](a, b, width)
    if isinstance(op, arith.CmpfOp):
        return True, _cmpf(op.predicate.value.data, args[0], args[1])
    if name in _CASTS:
        value = _fold_cast(name, args[0], op.operands[0].type, t)
        return value is not None, value
    if isinstance(t, IntegerType) and len(args) == 2 and name in _INT_BINARY:
        w = t.width.data
        a, b = (-1 if x is True else 0 if x is False else x for x in args)
        value = _int_binary(name, a, b, w)
        if value is None:
            return False, None
        return True, (_wrap(value, w) != 0) if w == 1 else value
    if name == "math.absi" and isinstance(t, IntegerType) and t.width.data > 1:
        return True, abs(args[0])
    if df.is_float(t) and (name in _FLOAT_BINARY or name in _FLOAT_UNARY):
        value = _fold_float(name, args, t)
        return value is not None, value
    if isinstance(op, df.IsNullOp):
        return True, False
    if isinstance(op, df.FillNullOp):
        return True, args[0]
    if isinstance(op, df.IsInOp):
        x = args[0]
        return True, any(_literal(v) == x for v in op.values)
    if isinstance(op, df.StringLengthOp):
        return True, len(args[0])
    if isinstance(op, df.StringLowerOp | df.StringUpperOp):
        if not args[0].isascii():  # Unicode case mapping may differ from the engines'
            return False, None
        return True, args[0].lower() if isinstance(op, df.StringLowerOp) else args[0].upper()
    if isinstance(op, df.StringStartsWithOp):
        return True, args[0].startswith(op.pattern.data)
    if isinstance(op, df.StringContainsOp):
        return True, op.pattern.data in args[0]
    if isinstance(op, df.StringCompareOp):
        a, b = args[0].encode(), args[1].encode()
        return True, {"eq": a == b, "ne": a != b, "lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[
            op.predicate.data
        ]
    return False, None


def _is_int_const(v: SSAValue, value: int) -> bool:
    c = constant_of(v)
    if c is None or isinstance(c, float | str):
        return False
    if isinstance(c, bool):
        c = -1 if c else 0
    return c == value


def _is_float_const(v: SSAValue, value: float) -> bool:
    c = constant_of(v)
    return isinstance(c, float) and c == value and math.copysign(1.0, c) == math.copysign(1.0, value)


def _nullable(value: SSAValue, op: Operation) -> bool:
    """Whether ``value`` may be null, judged in the table op the expression belongs to."""
    parent = op.parent_op()
    schema = parent.operands[0].type if parent is not None and parent.operands else None
    if not isinstance(schema, df.TableType):
        return True
    return df.expression_nullable(value, schema)


def fold_identity(op: Operation) -> tuple[SSAValue | None, Any]:
    """``(value, None)`` when ``op`` equals one of its operands, ``(None, constant)`` when it
    is a constant whatever its non-constant operand, ``(None, None)`` otherwise."""
    name = op.name
    if isinstance(op, arith.SelectOp):
        c = constant_of(op.cond)
        if c is not None:
            return (op.lhs if c else op.rhs), None
        if op.lhs is op.rhs:
            return op.lhs, None
        return None, None
    operands = op._operands
    if len(operands) != 2 or not op.results:
        return None, None
    a, b = operands
    t = op.results[0].type
    if isinstance(t, IntegerType):
        ones = -1
        if name == "arith.addi" or name == "arith.ori" or name == "arith.xori":
            if _is_int_const(b, 0):
                return a, None
            if _is_int_const(a, 0):
                return b, None
        if name == "arith.subi" and _is_int_const(b, 0):
            return a, None
        if name == "arith.muli":
            if _is_int_const(b, 1) and t.width.data > 1:
                return a, None
            if _is_int_const(a, 1) and t.width.data > 1:
                return b, None
        if name in ("arith.divsi", "arith.floordivsi") and _is_int_const(b, 1) and t.width.data > 1:
            return a, None
        if name == "arith.andi":
            if _is_int_const(b, ones):
                return a, None
            if _is_int_const(a, ones):
                return b, None
            if a is b:
                return a, None
            for x, y in ((a, b), (b, a)):
                if _is_int_const(y, 0) and not _nullable(x, op):
                    return None, (False if t.width.data == 1 else 0)
        if name == "arith.ori":
            if a is b:
                return a, None
            if df.is_bool(t):
                for x, y in ((a, b), (b, a)):
                    if _is_int_const(y, ones) and not _nullable(x, op):
                        return None, True
        if name == "arith.xori":
            # ~~x: xori(xori(x, k1), k2) with k1 ^ k2 == 0
            inner = a.owner
            k2 = constant_of(b)
            if isinstance(inner, arith.XOrIOp) and k2 is not None:
                k1 = constant_of(inner.rhs)
                if k1 is not None and k1 == k2:
                    return inner.lhs, None
        return None, None
    if df.is_float(t):
        if name == "arith.mulf":
            if _is_float_const(b, 1.0):
                return a, None
            if _is_float_const(a, 1.0):
                return b, None
        if name == "arith.divf" and _is_float_const(b, 1.0):
            return a, None
        if name == "arith.subf" and _is_float_const(b, 0.0):
            return a, None
        if name == "arith.addf":
            if _is_float_const(b, -0.0):
                return a, None
            if _is_float_const(a, -0.0):
                return b, None
    return None, None


# ------------------------------------------------------------------------- patterns

_CONSTANT_TYPES = frozenset({arith.ConstantOp, df.StringConstantOp})
_NEVER = frozenset({arith.ConstantOp, df.StringConstantOp, df.ColumnOp, YieldOp})
_SAME_OPERANDS = frozenset({arith.SelectOp, arith.AndIOp, arith.OrIOp})


def _candidate(op: Operation) -> bool:
    """Cheap test (exact type checks: expression blocks are large): could ``op`` fold at all
    (some operand is a constant, or a pattern that needs none)?"""
    kind = type(op)
    if kind in _NEVER or len(op.results) != 1:
        return False
    operands = op._operands  # (.operands wraps this tuple)
    for v in operands:
        if type(v.owner) in _CONSTANT_TYPES:
            return True
    return kind in _SAME_OPERANDS and operands[-1] is operands[-2]


class FoldExpressionOp(RewritePattern):
    """Replaces an expression op by a constant or by one of its operands."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if not _candidate(op):
            return
        folded, value = fold_constant_operands(op)
        replacement: SSAValue | None = None
        if not folded:
            replacement, value = fold_identity(op)
            folded = value is not None
        if replacement is not None:
            if replacement.type == op.results[0].type:
                rewriter.replace(op, [], [replacement])
            return
        if not folded:
            return
        const = make_constant(value, op.results[0].type)
        if const is None:
            return
        const.location = op.location
        rewriter.replace(op, const)


def fold_block(block: Block) -> bool:
    """Folds the ops of one expression block in order (operands before users, so chains fold
    in one sweep), then removes the ops left unused. True if anything changed."""
    pattern = FoldExpressionOp()
    rewriter = ReusedRewriter()
    changed = False
    op = block.first_op
    while op is not None:
        following = op.next_op
        if _candidate(op):
            pattern.match_and_rewrite(op, rewriter.at(op))
            changed |= rewriter.has_done_action
        op = following
    if changed:
        remove_dead_ops(block)
    return changed


def always_true(op: df.FilterOp) -> bool:
    block = op.predicate.blocks.first
    if block is None or not isinstance(block.last_op, YieldOp) or len(block.last_op.operands) != 1:
        return False
    return constant_of(block.last_op.operands[0]) is True


@dataclass(frozen=True)
class FoldConstants(ModulePass):
    """Folds constants in filter/map expressions and removes filters that are always true."""

    name = "fold-constants"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for block in function_blocks(op):
            for table_op in list(block.ops):
                kind = type(table_op)
                if kind is not df.FilterOp and kind is not df.MapOp:
                    continue
                for region in table_op.regions:
                    for expr_block in region.blocks:
                        fold_block(expr_block)
                if kind is df.FilterOp and always_true(table_op):  # type: ignore[arg-type]
                    replace_all_uses(table_op.results[0], table_op.operands[0])
                    block.erase_op(table_op)
