"""Evaluates expression regions of ``plan.json`` over Arrow tables (the Arrow-compute path).

A region is a list of ops (``df.col``, ``arith.*``, ``math.*``, ``df`` scalar ops) ending in
``vector.yield``; each op is evaluated once over whole columns with ``pyarrow.compute``
(vectorised, no per-row Python). Constants stay Arrow scalars and broadcast.
``eval_region`` is the only entry point the executor uses.

Compiled path (``runtime/kernels/exprgen.py`` + ``exprjit.py``): for a table of at least
``OPGRAPH_EXPR_JIT_MIN_ROWS`` rows (default 65,536, where compilation-free dispatch costs
no longer dominate), the fixed-width numeric/bool part of a region runs as one generated
C++ loop (compiled once by the system C++ compiler, cached by content hash); ops outside
that subset (strings, ``df.cast``, ...) are evaluated here with Arrow and fed to the
kernel. Results are identical to this module's. The Arrow path is used, with the reason
available from ``jit_decision(region, rows)``, when ``OPGRAPH_EXPR_JIT=0``, when no C++
compiler is found (``$CXX``, else ``c++``/``g++``/``clang++`` on ``PATH``), when compilation
fails, or when the region has nothing the kernel supports. A kernel that meets a value it
must reject (``fptosi`` of NaN) hands over to this path, which raises the error below.

Semantics (README "Semantics"; SQL nulls, numpy/pandas arithmetic):

* nulls propagate through every op except ``df.is_null`` / ``df.isin`` (never null),
  ``df.fill_null`` and ``arith.select`` (a null condition picks the false branch);
* ``arith.andi`` / ``arith.ori`` on booleans use SQL's three-valued (Kleene) logic:
  ``false & null = false``, ``true | null = true`` (so the result is null less often than
  plain propagation; the plan's nullability flags stay a safe over-approximation);
* NaN is a float value, not null (``is_null(NaN)`` is false), as in Arrow and SQL;
* integer ops are evaluated faithfully to their MLIR meaning: ``divsi`` truncates,
  ``floordivsi`` floors, ``remsi`` is the truncated remainder (the frontend builds Python's
  ``%`` from it); integer overflow wraps. An integer division or remainder by zero, and an
  integer power with a negative exponent, give **null** (there is no integer result;
  pandas would switch the column to float);
* float division by zero gives ``inf``/``nan`` (IEEE, like numpy/pandas); ``cmpf``
  predicates follow MLIR's ordered/unordered definitions;
* ``arith.fptosi`` of NaN, infinity or an out-of-range value is an error (pandas raises too);
  ``df.cast`` from a string that does not parse is an error; both name the op's location;
* ``df.cast`` to string writes floats like Python/DuckDB (``1.0``, ``1.5``, ``1e+20``) and
  booleans like pandas (``True``/``False``); from string, integers and floats are parsed
  after trimming whitespace and booleans accept ``true/false/1/0`` (any case).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from opgraph.runtime.kernels.exprgen import (  # plan ops as dicts or OpDoc
    op_attrs,
    op_field,
)

__all__ = ["ExprError", "arrow_type", "broadcast", "eval_region", "eval_region_arrow", "jit_decision"]

Value = pa.Array | pa.ChunkedArray | pa.Scalar


class ExprError(Exception):
    """An expression op failed at run time; ``loc`` is the op's ``file:line:col``."""

    def __init__(self, message: str, loc: str | None = None, op: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.op = op


_TYPES: dict[str, pa.DataType] = {
    "i1": pa.bool_(),
    "i8": pa.int8(),
    "i16": pa.int16(),
    "i32": pa.int32(),
    "i64": pa.int64(),
    "f32": pa.float32(),
    "f64": pa.float64(),
    "!df.string": pa.string(),
    # plan.json schema spelling
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
}


def arrow_type(name: str) -> pa.DataType:
    """The Arrow type of an IR element type (``i64``, ``f32``, ``!df.string``) or of a
    plan.json schema type name (``int64``, ``float32``, ``string``, ``bool``)."""
    try:
        return _TYPES[name]
    except KeyError:
        raise ExprError(f"unsupported element type '{name}'") from None


# ------------------------------------------------------------------------- helpers


def broadcast(value: Value, length: int, type_: pa.DataType | None = None) -> pa.ChunkedArray | pa.Array:
    """An array of ``length`` rows (a scalar is repeated), cast to ``type_`` if given."""
    if isinstance(value, pa.Scalar):
        if type_ is not None and value.type != type_:
            value = value.cast(type_)
        return pa.repeat(value, length) if value.is_valid else pa.nulls(length, value.type)
    if type_ is not None and value.type != type_:
        value = pc.cast(value, type_, safe=False)
    return value


def _is_float(t: pa.DataType) -> bool:
    return pa.types.is_floating(t)


def _np_values(value: Value, length: int, fill: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(values with nulls replaced by ``fill``, validity mask or None when no nulls)."""
    if isinstance(value, pa.Scalar):
        if not value.is_valid:
            dtype = value.type.to_pandas_dtype()
            return np.full(length, fill, dtype=dtype), np.zeros(length, dtype=bool)
        return np.full(length, value.as_py(), dtype=value.type.to_pandas_dtype()), None
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks() if value.num_chunks != 1 else value.chunk(0)
    if value.null_count:
        valid = pc.is_valid(value).to_numpy(zero_copy_only=False)
        return pc.fill_null(value, fill).to_numpy(zero_copy_only=False), valid
    return value.to_numpy(zero_copy_only=False), None


def _from_np(values: np.ndarray, valid: np.ndarray | None, type_: pa.DataType) -> pa.Array:
    mask = None if valid is None or valid.all() else ~valid
    return pa.array(values, type=type_, mask=mask, from_pandas=False)


def _length(values: Sequence[Value], default: int) -> int:
    for v in values:
        if not isinstance(v, pa.Scalar):
            return len(v)
    return default


def _and_masks(*masks: np.ndarray | None) -> np.ndarray | None:
    out = None
    for m in masks:
        if m is None:
            continue
        out = m.copy() if out is None else (out & m)
    return out


def _int_division(kind: str, a: Value, b: Value, length: int) -> Value:
    """divsi / floordivsi / remsi with null for a zero divisor (numpy on the raw values)."""
    type_ = a.type
    if isinstance(a, pa.Scalar) and isinstance(b, pa.Scalar):
        length = 1
    av, am = _np_values(a, length, 0)
    bv, bm = _np_values(b, length, 1)
    zero = bv == 0
    safe_b = np.where(zero, 1, bv)
    with np.errstate(all="ignore"):
        if kind == "floordivsi":
            out = np.floor_divide(av, safe_b)
        elif kind == "divsi":
            q = np.floor_divide(av, safe_b)
            # truncate toward zero: floor + 1 where the signs differ and it is inexact
            adjust = ((av % safe_b) != 0) & ((av < 0) != (safe_b < 0))
            out = q + adjust.astype(q.dtype)
        else:  # remsi: truncated remainder, the dividend's sign
            out = np.fmod(av, safe_b)
    valid = _and_masks(am, bm, ~zero if zero.any() else None)
    result = _from_np(out.astype(type_.to_pandas_dtype(), copy=False), valid, type_)
    if isinstance(a, pa.Scalar) and isinstance(b, pa.Scalar):
        return result[0]
    return result


def _ipow(a: Value, b: Value, length: int) -> Value:
    """Integer power; a negative exponent has no integer result: null."""
    type_ = a.type
    both_scalar = isinstance(a, pa.Scalar) and isinstance(b, pa.Scalar)
    n = 1 if both_scalar else length
    av, am = _np_values(a, n, 0)
    bv, bm = _np_values(b, n, 0)
    neg = bv < 0
    with np.errstate(all="ignore"):
        out = np.power(av.astype(np.int64), np.where(neg, 0, bv).astype(np.int64))
    valid = _and_masks(am, bm, ~neg if neg.any() else None)
    result = _from_np(out.astype(type_.to_pandas_dtype()), valid, type_)
    return result[0] if both_scalar else result


def _cast(value: Value, to: pa.DataType) -> Value:
    if value.type == to:
        return value
    return pc.cast(value, to, safe=False)


def _fptosi(value: Value, to: pa.DataType) -> Value:
    if value.type == to:
        return value
    info = np.iinfo(to.to_pandas_dtype())
    finite = pc.is_finite(value)
    in_range = pc.and_(pc.greater(value, float(info.min) - 1.0), pc.less(value, float(info.max) + 1.0))
    ok = pc.and_(finite, in_range)
    bad = pc.invert(ok)
    if isinstance(bad, pa.Scalar):
        if bad.is_valid and bad.as_py():
            raise ExprError(f"cannot convert float {value.as_py()!r} to {to}")
    elif pc.any(bad).as_py():
        first = pc.index(bad, True).as_py()
        raise ExprError(f"cannot convert float {value[first].as_py()!r} (row {first}) to {to}: not a finite value in range")
    return pc.cast(value, to, safe=False)


def _to_string(value: Value) -> Value:
    t = value.type
    if pa.types.is_boolean(t):
        return pc.if_else(value, pa.scalar("True"), pa.scalar("False"))
    out = pc.cast(value, pa.string())
    if _is_float(t):
        # Arrow writes 1.0 as "1"; Python, pandas and DuckDB write "1.0"
        integral = pc.match_substring_regex(out, r"^-?[0-9]+$")
        out = pc.if_else(integral, pc.binary_join_element_wise(out, ".0", ""), out)
    return out


def _from_string(value: Value, to: pa.DataType) -> Value:
    try:
        if pa.types.is_boolean(to):
            lowered = pc.utf8_lower(pc.utf8_trim_whitespace(value))
            return pc.cast(lowered, to)
        return pc.cast(pc.utf8_trim_whitespace(value), to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ExprError(f"cannot cast string to {to}: {e}") from None


_CMPI = {0: "equal", 1: "not_equal", 2: "less", 3: "less_equal", 4: "greater", 5: "greater_equal",
         6: "less", 7: "less_equal", 8: "greater", 9: "greater_equal"}
_CMPI_NAMES = {"eq": 0, "ne": 1, "slt": 2, "sle": 3, "sgt": 4, "sge": 5, "ult": 6, "ule": 7, "ugt": 8, "uge": 9}
_CMPF_NAMES = {"false": 0, "oeq": 1, "ogt": 2, "oge": 3, "olt": 4, "ole": 5, "one": 6, "ord": 7, "ueq": 8,
               "ugt": 9, "uge": 10, "ult": 11, "ule": 12, "une": 13, "uno": 14, "true": 15}
_ORDERED = {1: "equal", 2: "greater", 3: "greater_equal", 4: "less", 5: "less_equal", 6: "not_equal"}
_STR_CMP = {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal", "gt": "greater", "ge": "greater_equal"}


def _predicate(raw: Any, names: dict[str, int]) -> int:
    if isinstance(raw, bool):
        raise ExprError(f"bad comparison predicate {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        text = raw.strip().split(":")[0].strip()
        if text.lstrip("-").isdigit():
            return int(text)
        if text in names:
            return names[text]
    raise ExprError(f"bad comparison predicate {raw!r}")


def _unsigned(value: Value) -> Value:
    """Reinterprets a signed integer value as unsigned (for the u* comparisons)."""
    t = value.type
    if pa.types.is_boolean(t) or pa.types.is_unsigned_integer(t):
        return value
    ut = {8: pa.uint8(), 16: pa.uint16(), 32: pa.uint32(), 64: pa.uint64()}[t.bit_width]
    if isinstance(value, pa.Scalar):
        if not value.is_valid:
            return pa.scalar(None, ut)
        return pa.scalar(int(np.array(value.as_py(), dtype=t.to_pandas_dtype()).view(ut.to_pandas_dtype())), ut)
    values, valid = _np_values(value, len(value), 0)
    return _from_np(values.view(ut.to_pandas_dtype()), valid, ut)


def _cmpi(pred: int, a: Value, b: Value) -> Value:
    if pred not in _CMPI:
        raise ExprError(f"unknown arith.cmpi predicate {pred}")
    if pred >= 6:
        a, b = _unsigned(a), _unsigned(b)
    return getattr(pc, _CMPI[pred])(a, b)


def _cmpf(pred: int, a: Value, b: Value) -> Value:
    if pred in _ORDERED:
        out = getattr(pc, _ORDERED[pred])(a, b)
        if pred == 6:  # one: ordered and not equal (Arrow's not_equal is true for NaN)
            out = pc.and_(out, _ordered(a, b))
        return out
    if pred == 13:  # une: unordered or not equal = Arrow's not_equal
        return pc.not_equal(a, b)
    if pred in (0, 15):
        valid = pc.and_(pc.is_valid(a), pc.is_valid(b))
        const = pa.scalar(pred == 15)
        return pc.if_else(valid, const, pa.scalar(None, pa.bool_()))
    if pred == 7:
        return _ordered(a, b)
    if pred == 14:
        return pc.invert(_ordered(a, b))
    base = {8: "equal", 9: "greater", 10: "greater_equal", 11: "less", 12: "less_equal"}.get(pred)
    if base is None:
        raise ExprError(f"unknown arith.cmpf predicate {pred}")
    return pc.or_(getattr(pc, base)(a, b), pc.invert(_ordered(a, b)))


def _ordered(a: Value, b: Value) -> Value:
    return pc.and_(pc.invert(pc.is_nan(a)), pc.invert(pc.is_nan(b)))


def _logic(kind: str, a: Value, b: Value) -> Value:
    if pa.types.is_boolean(a.type):
        fn = {"andi": pc.and_kleene, "ori": pc.or_kleene, "xori": pc.xor}[kind]
        return fn(a, b)
    fn = {"andi": pc.bit_wise_and, "ori": pc.bit_wise_or, "xori": pc.bit_wise_xor}[kind]
    return fn(a, b)


def _dict_isin(value: pa.Array | pa.ChunkedArray, values: list[Any]) -> Value:
    """isin over a dictionary-encoded column: isin on each (small) dictionary, then the
    codes mapped through that lookup table straight into a bitmap (C++, multithreaded,
    ``kernels/filtering.lut_bits``; null codes -> false). Chunks sharing one dictionary
    (Parquet row groups often do not; equal small dictionaries count as shared) test it
    once."""
    from opgraph.runtime.kernels import filtering as F

    vt = value.type.value_type
    value_set = pa.array(values, type=vt) if values else pa.array([], type=vt)
    chunks = value.chunks if isinstance(value, pa.ChunkedArray) else [value]
    out = []
    prev_dict = None
    lut = None
    for c in chunks:
        d = c.dictionary
        if lut is None or not F.same_dictionary(d, prev_dict):
            hit = pc.is_in(d, value_set=value_set, skip_nulls=True)
            if hit.null_count:
                hit = pc.fill_null(hit, False)
            lut = np.asarray(hit.to_numpy(zero_copy_only=False), dtype=np.uint8)
            prev_dict = d
        out.append(F.lut_bits(c.indices, lut))
    if isinstance(value, pa.ChunkedArray):
        return pa.chunked_array(out, type=pa.bool_())
    return out[0]


def _decode(value: Value) -> Value:
    if not isinstance(value, pa.Scalar) and pa.types.is_dictionary(value.type):
        return pc.cast(value, value.type.value_type)
    return value


def _isin(value: Value, values: list[Any]) -> Value:
    t = value.type
    if isinstance(value, pa.Scalar):
        return pa.scalar(value.is_valid and value.as_py() in values)
    if pa.types.is_dictionary(t):
        return _dict_isin(value, values)
    value_set = pa.array(values, type=t) if values else pa.array([], type=t)
    out = pc.is_in(value, value_set=value_set, skip_nulls=True)
    return pc.fill_null(out, False) if out.null_count else out


def _is_null(value: Value) -> Value:
    if isinstance(value, pa.Scalar):
        return pa.scalar(not value.is_valid)
    return pc.is_null(value)


_MATH_UNARY: dict[str, Callable[[Value], Value]] = {
    "math.absf": pc.abs,
    "math.absi": pc.abs,
    "math.floor": pc.floor,
    "math.ceil": pc.ceil,
    "math.round": pc.round,
    "math.trunc": pc.trunc,
    "math.log": pc.ln,
    "math.log10": pc.log10,
    "math.log2": pc.log2,
    "math.log1p": pc.log1p,
    "math.exp": pc.exp,
    "math.sqrt": pc.sqrt,
    "math.sin": pc.sin,
    "math.cos": pc.cos,
    "math.tan": pc.tan,
    "math.atan": pc.atan,
    "arith.negf": pc.negate,
}

_ARITH_BINARY: dict[str, Callable[[Value, Value], Value]] = {
    "arith.addi": pc.add,
    "arith.subi": pc.subtract,
    "arith.muli": pc.multiply,
    "arith.addf": pc.add,
    "arith.subf": pc.subtract,
    "arith.mulf": pc.multiply,
    "arith.divf": pc.divide,
    "arith.maxsi": pc.max_element_wise,
    "arith.minsi": pc.min_element_wise,
    "arith.maximumf": pc.max_element_wise,
    "arith.minimumf": pc.min_element_wise,
    "arith.maxnumf": pc.max_element_wise,
    "arith.minnumf": pc.min_element_wise,
    "math.powf": pc.power,
}


def _eval_op(name: str, op: Any, args: list[Value], length: int, result_type: pa.DataType | None) -> Value:
    attrs = op_attrs(op)
    if name in _ARITH_BINARY:
        return _ARITH_BINARY[name](args[0], args[1])
    if name in _MATH_UNARY:
        return _MATH_UNARY[name](args[0])
    if name in ("arith.divsi", "arith.floordivsi", "arith.remsi"):
        return _int_division(name[6:], args[0], args[1], length)
    if name == "arith.remf":
        a, b = args
        n = 1 if isinstance(a, pa.Scalar) and isinstance(b, pa.Scalar) else length
        av, am = _np_values(a, n, 0.0)
        bv, bm = _np_values(b, n, 1.0)
        with np.errstate(all="ignore"):
            out = _from_np(np.fmod(av, bv), _and_masks(am, bm), a.type)
        return out[0] if n == 1 and isinstance(a, pa.Scalar) and isinstance(b, pa.Scalar) else out
    if name == "math.ipowi":
        return _ipow(args[0], args[1], length)
    if name == "math.fpowi":
        return pc.power(args[0], _cast(args[1], args[0].type))
    if name == "arith.cmpi":
        return _cmpi(_predicate(attrs.get("predicate"), _CMPI_NAMES), args[0], args[1])
    if name == "arith.cmpf":
        return _cmpf(_predicate(attrs.get("predicate"), _CMPF_NAMES), args[0], args[1])
    if name in ("arith.andi", "arith.ori", "arith.xori"):
        return _logic(name[6:], args[0], args[1])
    if name == "arith.select":
        cond, a, b = args
        if isinstance(cond, pa.Scalar):
            return a if (cond.is_valid and cond.as_py()) else b
        if cond.null_count:
            cond = pc.fill_null(cond, False)
        return pc.if_else(cond, a, b)
    if name in ("arith.extsi", "arith.trunci", "arith.sitofp", "arith.extf", "arith.truncf"):
        assert result_type is not None
        if name == "arith.trunci" and pa.types.is_boolean(result_type):
            return pc.not_equal(pc.bit_wise_and(args[0], pa.scalar(1, args[0].type)), pa.scalar(0, args[0].type))
        return _cast(args[0], result_type)
    if name in ("arith.uitofp", "arith.extui"):
        assert result_type is not None
        v = args[0]
        if not pa.types.is_boolean(v.type):
            v = _unsigned(v)
        return _cast(v, result_type)
    if name == "arith.fptosi":
        assert result_type is not None
        return _fptosi(args[0], result_type)
    if name == "df.is_null":
        return _is_null(args[0])
    if name == "df.fill_null":
        a, b = args
        if isinstance(a, pa.Scalar):
            return a if a.is_valid else b
        return pc.coalesce(a, b) if a.null_count else a
    if name == "df.isin":
        return _isin(args[0], list(attrs.get("values") or []))
    if name == "df.cast":
        assert result_type is not None
        v = args[0]
        if pa.types.is_string(result_type):
            return v if pa.types.is_string(v.type) else _to_string(v)
        return _from_string(v, result_type)
    if name == "df.str_cmp":
        pred = attrs.get("predicate")
        if pred not in _STR_CMP:
            raise ExprError(f"unknown string comparison '{pred}'")
        return getattr(pc, _STR_CMP[pred])(args[0], args[1])
    if name == "df.str_len":
        return pc.cast(pc.utf8_length(args[0]), pa.int64())
    if name == "df.str_lower":
        return pc.utf8_lower(args[0])
    if name == "df.str_upper":
        return pc.utf8_upper(args[0])
    if name == "df.str_startswith":
        return pc.starts_with(args[0], pattern=attrs["pattern"])
    if name == "df.str_contains":
        return pc.match_substring(args[0], pattern=attrs["pattern"])
    raise ExprError(f"the local engine cannot evaluate '{name}' in an expression region")


def _constant(op: Any, type_: pa.DataType) -> pa.Scalar:
    attrs = op_attrs(op)
    if "value" not in attrs:
        raise ExprError(
            "arith.constant without a value in plan.json (the plan writer must serialise op "
            "properties; recompile the pipeline)"
        )
    value = attrs["value"]
    if isinstance(value, str):  # a printed attribute, e.g. "1.5 : f32" or "true"
        text = value.split(":")[0].strip()
        value = text == "true" if pa.types.is_boolean(type_) else float(text) if _is_float(type_) else int(text)
    if pa.types.is_boolean(type_):
        value = bool(value)
    elif _is_float(type_):
        value = float(value)
    else:
        value = int(value)
    return pa.scalar(value, type_)


JIT_MIN_ROWS = 65536
_plans: dict[int, tuple[Any, Any]] = {}
_plans_lock = threading.Lock()
#: the last reason a region large enough for a kernel ran on the Arrow path (diagnostics)
LAST_FALLBACK: dict[str, str | None] = {"reason": None}


def _plan_for(ops: Sequence[Any]) -> Any:
    """The kernel plan of a region, cached per region object (plans are data lists that the
    executor keeps alive and passes again for every partition)."""
    from opgraph.runtime.kernels.exprgen import plan_kernel

    hit = _plans.get(id(ops))
    if hit is not None and hit[0] is ops:
        return hit[1]
    plan = plan_kernel(ops)
    with _plans_lock:
        if len(_plans) > 1024:
            _plans.clear()
        _plans[id(ops)] = (ops, plan)
    return plan


def jit_decision(ops: Sequence[Any], rows: int) -> tuple[bool, str]:
    """(whether ``eval_region`` would try a compiled kernel for ``ops`` over ``rows`` rows,
    and why / why not). Does not compile."""
    from opgraph.runtime.kernels import exprjit

    if os.environ.get("OPGRAPH_EXPR_JIT", "1").strip().lower() in ("0", "false", "no", "off"):
        return False, "disabled by OPGRAPH_EXPR_JIT=0"
    try:
        min_rows = int(os.environ.get("OPGRAPH_EXPR_JIT_MIN_ROWS", JIT_MIN_ROWS))
    except ValueError:
        min_rows = JIT_MIN_ROWS
    if rows < min_rows:
        return False, f"{rows} rows < {min_rows} (OPGRAPH_EXPR_JIT_MIN_ROWS): Arrow compute is cheaper"
    cxx, why = exprjit.compiler()
    if cxx is None:
        return False, why
    plan = _plan_for(ops)
    if not plan:
        return False, plan.reason
    if plan.fallbacks:
        parts = ", ".join(f"{n} ({r})" for n, _, r in plan.fallbacks)
        return True, f"compiled kernel; Arrow compute for: {parts}"
    return True, "compiled kernel"


def _eval_jit(ops: Sequence[Any], table: pa.Table) -> list[Value] | None:
    from opgraph.runtime.kernels import exprjit

    use, reason = jit_decision(ops, table.num_rows)
    if not use:
        LAST_FALLBACK["reason"] = reason
        return None
    plan = _plan_for(ops)
    try:
        arrow_values = eval_region_arrow(plan.arrow_ops, table) if plan.arrow_ops else []
        return exprjit.run(plan, table, arrow_values)
    except exprjit.JitUnavailable as e:
        LAST_FALLBACK["reason"] = e.reason
        return None
    except (exprjit.KernelError, ExprError):
        # the Arrow path raises the documented error for the first failing op
        LAST_FALLBACK["reason"] = "the kernel rejected a value; the Arrow path reports it"
        return None


def eval_region(ops: Sequence[Any], table: pa.Table) -> list[Value]:
    """Evaluates a region over ``table``; returns the yielded values in order (arrays of
    ``table.num_rows`` rows, or Arrow scalars for constant results - see ``broadcast``).
    Raises ``ExprError`` with the failing op's location. Uses a compiled kernel where
    ``jit_decision`` allows (same results), else Arrow compute."""
    if table.num_rows >= JIT_MIN_ROWS or "OPGRAPH_EXPR_JIT_MIN_ROWS" in os.environ:
        out = _eval_jit(ops, table)
        if out is not None:
            return out
    return eval_region_arrow(ops, table)


def eval_region_arrow(ops: Sequence[Any], table: pa.Table) -> list[Value]:
    """``eval_region`` on the Arrow-compute path only."""
    env: dict[str, Value] = {}
    length = table.num_rows
    for op in ops:
        name = op_field(op, "op")
        loc = op_field(op, "loc")
        try:
            operands = [env[o] for o in (op_field(op, "operands") or [])]
            if name != "df.isin":  # dictionary-encoded string columns: decoded where used
                operands = [_decode(v) for v in operands]
            if name == "vector.yield":
                return operands
            types = op_field(op, "result_types") or []
            result_type = arrow_type(types[0]) if types else None
            if name == "df.col":
                column = op_attrs(op)["column"]
                if column not in table.column_names:
                    raise ExprError(f"unknown column '{column}' (columns: {', '.join(table.column_names)})")
                value: Value = table.column(column)
                if pa.types.is_dictionary(value.type) and value.type.value_type == result_type:
                    results = op_field(op, "results") or []
                    if results:
                        env[results[0]] = value
                    continue
            elif name == "arith.constant":
                value = _constant(op, result_type)  # type: ignore[arg-type]
            elif name == "df.str_constant":
                value = pa.scalar(op_attrs(op)["value"], pa.string())
            else:
                value = _eval_op(name, op, operands, _length(operands, length), result_type)
            if result_type is not None and value.type != result_type:
                value = _cast(value, result_type)
        except ExprError as e:
            e.loc = e.loc or loc
            e.op = e.op or name
            raise
        except KeyError as e:
            raise ExprError(f"malformed region: {name} refers to an undefined value or attribute {e}", loc, name) from None
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as e:
            raise ExprError(f"{name} failed: {e}", loc, name) from None
        results = op_field(op, "results") or []
        if results:
            env[results[0]] = value
    raise ExprError("expression region does not end in vector.yield")
