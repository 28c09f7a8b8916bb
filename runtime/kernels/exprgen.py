"""C++ code generation for fused expression regions (plan.json ``regions``).

``plan_kernel(region)`` splits one expression region (a list of ops ending in
``vector.yield``, see ``opgraph.plan.OpDoc``) into

* the **kernel part**: every op of the fixed-width numeric/bool subset (bool, int8-64,
  float32/64: ``arith`` add/sub/mul/div/floordiv/rem/and/or/xor/cmpi/cmpf/select/casts/
  constants, ``math`` abs/floor/ceil/trunc/round/log*/exp/sqrt/sin/cos/tan/atan/pow/ipowi/
  fpowi, ``df.is_null``/``fill_null``/numeric ``isin``) whose value a yielded result needs;
  it becomes generated C++ (``Kernel.source``) compiled and run by
  ``runtime/kernels/exprjit.py``;
* the **Arrow part** (``Kernel.arrow_ops``): ops outside the subset (strings, ``df.cast``,
  min/max, ...) and whatever they need, evaluated by ``runtime/expr_eval.py`` with
  ``pyarrow.compute``; their results enter the kernel as extra input columns. Each such op
  is listed with its reason in ``Kernel.fallbacks`` - nothing falls back silently;
* pass-through results: a yielded ``df.col`` is the column itself; a yielded value that
  the Arrow path returns as a scalar (a constant) stays Arrow's, exactly as before.

Generated code: each value is a (value, validity) pair of C++ locals; rows go in blocks of
64 through ``og_block<g>`` functions (restrict pointers, fixed trip count, so GCC
vectorises them at -O2; bitmaps are unpacked to bytes before and packed with SSE2 after);
inputs without nulls get a variant that never reads validity (two variants per kernel:
"no input has nulls" and "read every validity"); outputs that cannot be null get no
validity buffer; wide regions are split into several block functions of
``OUTPUTS_PER_PASS`` outputs (compile time grows faster than linearly with one loop's
size); ``og_expr_kernel`` splits the rows over threads (pthreads, 64-row aligned).

When nothing is left for a kernel (no row-wise fixed-width computation is yielded) the
result is a ``Fallback`` - falsy, with ``reason`` - and the caller uses the Arrow path.

Security: **no name or string from the plan reaches the C++ source.** Columns and values
are numbered (input ``k`` is ``in[k]``); numeric literals are re-emitted from validated
Python ``int``/``float`` values (integers as two's-complement hex, floats as
``float.hex()``), op names select fixed templates and unknown names are rejected. The
source is a pure function of the op structure and types, so its hash is a cache key.

Semantics are those of the Arrow evaluator (``runtime/expr_eval.py`` docstring), bit for bit
where Arrow defines them: wrapping integer arithmetic, null for integer division/remainder
by zero and for negative integer powers, Kleene ``and``/``or`` on booleans, ``select``
taking the false branch on a null condition, Arrow's special cases of ``ln``/``sqrt``,
``isin`` comparing floats by bit pattern with NaN matching NaN, ``fptosi`` failing on
non-finite/out-of-range values (the kernel flags the block and the caller re-runs the Arrow
path to raise the documented error).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

__all__ = ["CTYPE", "Fallback", "Kernel", "Output", "plan_kernel"]

#: IR element type -> (C++ type, bit width, kind) ; kind: b(ool) i(nt) f(loat)
CTYPE: dict[str, tuple[str, int, str]] = {
    "i1": ("bool", 1, "b"),
    "i8": ("int8_t", 8, "i"),
    "i16": ("int16_t", 16, "i"),
    "i32": ("int32_t", 32, "i"),
    "i64": ("int64_t", 64, "i"),
    "f32": ("float", 32, "f"),
    "f64": ("double", 64, "f"),
}
ARROW: dict[str, pa.DataType] = {
    "i1": pa.bool_(),
    "i8": pa.int8(),
    "i16": pa.int16(),
    "i32": pa.int32(),
    "i64": pa.int64(),
    "f32": pa.float32(),
    "f64": pa.float64(),
}
_UNSIGNED = {8: "uint8_t", 16: "uint16_t", 32: "uint32_t", 64: "uint64_t"}

_CMPI = {"eq": 0, "ne": 1, "slt": 2, "sle": 3, "sgt": 4, "sge": 5, "ult": 6, "ule": 7, "ugt": 8, "uge": 9}
_CMPF = {"false": 0, "oeq": 1, "ogt": 2, "oge": 3, "olt": 4, "ole": 5, "one": 6, "ord": 7, "ueq": 8,
         "ugt": 9, "uge": 10, "ult": 11, "ule": 12, "une": 13, "uno": 14, "true": 15}
_CMP_OPS = {0: "==", 1: "!=", 2: "<", 3: "<=", 4: ">", 5: ">="}
_CMPF_BASE = {1: "==", 2: ">", 3: ">=", 4: "<", 5: "<=", 6: "!=", 8: "==", 9: ">", 10: ">=", 11: "<", 12: "<=",
              13: "!="}

_INT_BIN = {"arith.addi": "+", "arith.subi": "-", "arith.muli": "*"}
_FLOAT_BIN = {"arith.addf": "+", "arith.subf": "-", "arith.mulf": "*", "arith.divf": "/"}
_FLOAT_UNARY = {
    "math.absf": "std::fabs({a})",
    "math.floor": "std::floor({a})",
    "math.ceil": "std::ceil({a})",
    "math.trunc": "std::trunc({a})",
    "math.round": "std::nearbyint({a})",  # Arrow's default: half to even
    "math.log": "og_ln({a})",
    "math.log10": "og_log10({a})",
    "math.log2": "og_log2({a})",
    "math.log1p": "og_log1p({a})",
    "math.exp": "std::exp({a})",
    "math.sqrt": "og_sqrt({a})",
    "math.sin": "std::sin({a})",
    "math.cos": "std::cos({a})",
    "math.tan": "std::tan({a})",
    "math.atan": "std::atan({a})",
    "arith.negf": "(-{a})",
}
_CASTS = ("arith.extsi", "arith.trunci", "arith.sitofp", "arith.extf", "arith.truncf", "arith.uitofp",
          "arith.extui", "arith.fptosi")

# Helpers shared by every kernel (fixed text: no plan data).
PRELUDE = r"""// generated by opgraph runtime/kernels/exprgen.py - do not edit
// (C headers and pthreads only: <thread>/<vector> triple the compile time)
#include <cstdint>
#include <cstring>
#include <cmath>
#include <pthread.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

// The 64-row block loops are compiled twice on x86-64 Linux (AVX2 and baseline) and the
// loader picks one (GCC function multiversioning): the .so stays portable, unlike -march=native.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define OG_CLONES __attribute__((noinline, target_clones("avx2", "default")))
#else
#define OG_CLONES __attribute__((noinline))
#endif

namespace {
inline bool og_bit(const uint8_t* p, int64_t i) { return (p[i >> 3] >> (i & 7)) & 1; }
template <class T> inline T og_wrap(uint64_t v) { return static_cast<T>(v); }
template <class T> inline uint64_t og_u(T v) { return static_cast<uint64_t>(static_cast<int64_t>(v)); }
// integer division family: null (ok = false) for a zero divisor; INT_MIN / -1 wraps
template <class T> inline T og_divsi(T a, T b, bool& ok) {
  if (b == 0) { ok = false; return 0; }
  if (b == -1) return og_wrap<T>(0 - og_u(a));
  return static_cast<T>(a / b);
}
template <class T> inline T og_floordivsi(T a, T b, bool& ok) {
  if (b == 0) { ok = false; return 0; }
  if (b == -1) return og_wrap<T>(0 - og_u(a));
  T q = static_cast<T>(a / b);
  if ((a % b != 0) && ((a < 0) != (b < 0))) q = static_cast<T>(q - 1);
  return q;
}
template <class T> inline T og_remsi(T a, T b, bool& ok) {
  if (b == 0) { ok = false; return 0; }
  if (b == -1) return 0;
  return static_cast<T>(a % b);
}
template <class T> inline T og_ipow(T a, T b, bool& ok) {
  if (b < 0) { ok = false; return 0; }
  uint64_t base = og_u(a), r = 1, e = static_cast<uint64_t>(static_cast<int64_t>(b));
  while (e) { if (e & 1) r *= base; base *= base; e >>= 1; }
  return og_wrap<T>(r);
}
template <class T> inline T og_absi(T a) { return a < 0 ? og_wrap<T>(0 - og_u(a)) : a; }
// Arrow's unchecked ln/log10/log2/log1p/sqrt special cases
template <class T> inline T og_ln(T a) {
  if (a == 0) return static_cast<T>(-__builtin_inf());
  if (a < 0) return static_cast<T>(__builtin_nan(""));
  return std::log(a);
}
template <class T> inline T og_log10(T a) {
  if (a == 0) return static_cast<T>(-__builtin_inf());
  if (a < 0) return static_cast<T>(__builtin_nan(""));
  return std::log10(a);
}
template <class T> inline T og_log2(T a) {
  if (a == 0) return static_cast<T>(-__builtin_inf());
  if (a < 0) return static_cast<T>(__builtin_nan(""));
  return std::log2(a);
}
template <class T> inline T og_log1p(T a) {
  if (a == -1) return static_cast<T>(-__builtin_inf());
  if (a < -1) return static_cast<T>(__builtin_nan(""));
  return std::log1p(a);
}
template <class T> inline T og_sqrt(T a) {
  if (a < 0) return static_cast<T>(__builtin_nan(""));
  return std::sqrt(a);
}
inline uint64_t og_bits(double v) { uint64_t b; std::memcpy(&b, &v, 8); return b; }
inline uint32_t og_bits(float v) { uint32_t b; std::memcpy(&b, &v, 4); return b; }
inline void og_store_bits(uint8_t* p, int64_t base, uint64_t w, int64_t m) {
  std::memcpy(p + (base >> 3), &w, static_cast<size_t>((m + 7) >> 3));
}
// bits [bitpos, bitpos + cnt) of a bitmap (cnt <= 64) -> one byte (0/1) per row
inline void og_unpack(uint8_t* dst, const uint8_t* p, int64_t bitpos, int64_t cnt) {
  const uint8_t* q = p + (bitpos >> 3);
  const int sh = static_cast<int>(bitpos & 7);
  uint8_t tmp[16] = {0};
  std::memcpy(tmp, q, static_cast<size_t>((sh + cnt + 7) >> 3));
  uint64_t lo;
  std::memcpy(&lo, tmp, 8);
  const uint64_t w = sh ? (lo >> sh) | (static_cast<uint64_t>(tmp[8]) << (64 - sh)) : lo;
  for (int k = 0; k < 64; ++k) dst[k] = static_cast<uint8_t>((w >> k) & 1);
}
// bytes (0/1) of cnt rows -> bitmap word
inline uint64_t og_pack(const uint8_t* b, int64_t cnt) {
  uint64_t w = 0;
#if defined(__SSE2__)
  for (int q = 0; q < 4; ++q) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 * q));
    v = _mm_slli_epi16(v, 7);
    w |= static_cast<uint64_t>(static_cast<uint32_t>(_mm_movemask_epi8(v))) << (16 * q);
  }
#else
  for (int k = 0; k < 64; ++k) w |= static_cast<uint64_t>(b[k] & 1) << k;
#endif
  return cnt >= 64 ? w : (w & ((UINT64_C(1) << cnt) - 1));
}
}  // namespace
"""


@dataclass(frozen=True)
class Fallback:
    """The region (or a value) cannot use a compiled kernel; ``reason`` says why. Falsy."""

    reason: str

    def __bool__(self) -> bool:
        return False


@dataclass(frozen=True)
class Output:
    """Where yielded value ``i`` comes from: ``kind`` is ``"kernel"`` (kernel output
    ``index``), ``"column"`` (the table column ``column``) or ``"arrow"`` (result ``index``
    of the Arrow part)."""

    kind: str
    index: int = -1
    column: str | None = None
    type: str | None = None  # IR type of a "column" output


@dataclass
class _Val:
    type: str
    const: bool  # depends on no column / Arrow input
    op: Any
    supported: bool


@dataclass
class Kernel:
    """A planned kernel for one region; ``source(nullable)`` is its C++ text for a given
    null-presence of the inputs (the compiled variants are cached per source hash)."""

    inputs: list[tuple[str, str, str]]  # (kind "column"/"arrow", column name or arrow index, IR type)
    input_types: list[str]
    outputs: list[Output]
    output_types: list[str]  # IR types of kernel outputs
    arrow_ops: list[Any] | None  # a region (ops + vector.yield dict) for the Arrow part, or None
    arrow_count: int
    fallbacks: list[tuple[str, str | None, str]] = field(default_factory=list)  # (op, loc, reason)
    _body: list[Any] = field(default_factory=list, repr=False)  # [(op, result vid, operand vids)]
    _input_vids: list[str] = field(default_factory=list, repr=False)
    _output_vids: list[str] = field(default_factory=list, repr=False)
    _types: dict[str, str] = field(default_factory=dict, repr=False)
    _cache: dict[tuple[bool, ...], tuple[str, str, list[bool]]] = field(default_factory=dict, repr=False)

    def __bool__(self) -> bool:
        return True

    @property
    def column_names(self) -> list[str]:
        return [name for kind, name, _ in self.inputs if kind == "column"]

    def source(self, nullable: Sequence[bool]) -> str:
        return self._generate(tuple(bool(x) for x in nullable))[0]

    def key(self, nullable: Sequence[bool]) -> str:
        return self._generate(tuple(bool(x) for x in nullable))[1]

    def output_nullable(self, nullable: Sequence[bool]) -> list[bool]:
        """Whether each kernel output can hold nulls given the inputs' null presence (an
        output that cannot gets no validity buffer)."""
        return self._generate(tuple(bool(x) for x in nullable))[2]

    def _generate(self, nullable: tuple[bool, ...]) -> tuple[str, str, list[bool]]:
        hit = self._cache.get(nullable)
        if hit is None:
            src, out_nullable = _emit(self, nullable)
            hit = (src, hashlib.sha256(src.encode()).hexdigest(), out_nullable)
            self._cache[nullable] = hit
        return hit


# ------------------------------------------------------------------------------ helpers


def op_field(op: Any, name: str, default: Any = None) -> Any:
    """A field of a plan op given as plain data (dict) or as a pydantic ``OpDoc``."""
    if isinstance(op, dict):
        return op.get(name, default)
    return getattr(op, name, default)


def op_attrs(op: Any) -> dict[str, Any]:
    return op_field(op, "attributes", None) or {}


def _predicate(raw: Any, names: dict[str, int]) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        text = raw.strip().split(":")[0].strip()
        if text.lstrip("-").isdigit():
            return int(text)
        return names.get(text)
    return None


def _int_literal(value: int, ir: str) -> str:
    ctype, width, _ = CTYPE[ir]
    if type(value) is not int:
        raise ValueError(f"not an integer literal: {value!r}")
    if width == 1:
        return "true" if value & 1 else "false"
    bits = value & ((1 << width) - 1)
    return f"static_cast<{ctype}>(static_cast<{_UNSIGNED[width]}>(UINT64_C({hex(bits)})))"


def _float_literal(value: float, ir: str) -> str:
    ctype = CTYPE[ir][0]
    if type(value) is not float:
        raise ValueError(f"not a float literal: {value!r}")
    if math.isnan(value):
        return f"static_cast<{ctype}>(__builtin_nan(\"\"))"
    if math.isinf(value):
        return f"static_cast<{ctype}>({'-' if value < 0 else ''}__builtin_inf())"
    text = value.hex()  # exact; only [-0-9a-fx.p+]
    assert all(c in "-+0123456789abcdefxp." for c in text)
    return f"static_cast<{ctype}>({text})"


def _literal(value: Any, ir: str) -> str:
    kind = CTYPE[ir][2]
    if kind == "f":
        return _float_literal(float(value), ir)
    if kind == "b":
        return "true" if value else "false"
    return _int_literal(int(value), ir)


def _constant_value(op: Any, ir: str) -> Any:
    """The constant as the Arrow evaluator reads it (``expr_eval._constant``)."""
    attrs = op_attrs(op)
    if "value" not in attrs:
        raise ValueError("arith.constant without a value")
    value = attrs["value"]
    kind = CTYPE[ir][2]
    if isinstance(value, str):
        text = value.split(":")[0].strip()
        value = text == "true" if kind == "b" else float(text) if kind == "f" else int(text)
    if isinstance(value, (list, dict)) or value is None:
        raise ValueError(f"unsupported constant {value!r}")
    if kind == "b":
        return bool(value)
    if kind == "f":
        value = float(value)
        if ir == "f32":  # Arrow stores the scalar as float32 (overflow -> inf)
            try:
                value = struct.unpack("f", struct.pack("f", value))[0]
            except OverflowError:
                raise ValueError("float32 constant out of range") from None
        return value
    value = int(value)
    width = CTYPE[ir][1]
    if not -(1 << (width - 1)) <= value < (1 << (width - 1)):
        raise ValueError(f"integer constant {value} out of range for {ir}")  # Arrow raises
    return value


# -------------------------------------------------------------------------- support check


def _check(op: Any, name: str, arg_types: list[str], rtype: str | None) -> str | None:
    """None if the kernel supports the op with these types, else the reason."""
    if rtype not in CTYPE:
        return f"result type {rtype} is not fixed-width numeric/bool"
    for t in arg_types:
        if t not in CTYPE:
            return f"operand type {t} is not fixed-width numeric/bool"
    kinds = [CTYPE[t][2] for t in arg_types]
    rkind = CTYPE[rtype][2]
    same = all(t == rtype for t in arg_types)
    if name == "arith.constant":
        try:
            _constant_value(op, rtype)
        except (ValueError, TypeError, OverflowError) as e:
            return f"constant not representable: {e}"
        return None
    if name in _INT_BIN or name in ("arith.divsi", "arith.floordivsi", "arith.remsi", "math.ipowi", "math.absi"):
        return None if same and rkind == "i" else "integer op on non-integer operands"
    if name in _FLOAT_BIN or name in ("arith.remf", "math.powf") or name in _FLOAT_UNARY:
        return None if same and rkind == "f" else "float op on non-float operands"
    if name == "math.fpowi":
        return None if rkind == "f" and arg_types[0] == rtype and kinds[1] == "i" else "fpowi operand types"
    if name == "arith.cmpi":
        pred = _predicate(op_attrs(op).get("predicate"), _CMPI)
        if pred is None or not 0 <= pred <= 9:
            return "unknown cmpi predicate"
        return None if rkind == "b" and arg_types[0] == arg_types[1] and kinds[0] in "ib" else "cmpi operand types"
    if name == "arith.cmpf":
        pred = _predicate(op_attrs(op).get("predicate"), _CMPF)
        if pred is None or not 0 <= pred <= 15:
            return "unknown cmpf predicate"
        return None if rkind == "b" and arg_types[0] == arg_types[1] and kinds[0] == "f" else "cmpf operand types"
    if name in ("arith.andi", "arith.ori", "arith.xori"):
        return None if same and rkind in "ib" else "logic op operand types"
    if name == "arith.select":
        return None if kinds[0] == "b" and arg_types[1] == arg_types[2] == rtype else "select operand types"
    if name in _CASTS:
        src, dst = kinds[0], rkind
        ok = {
            "arith.extsi": src in "ib" and dst == "i",
            "arith.extui": src in "ib" and dst == "i",
            "arith.trunci": src == "i" and dst in "ib",
            "arith.sitofp": src in "ib" and dst == "f",
            "arith.uitofp": src in "ib" and dst == "f",
            "arith.extf": src == "f" and dst == "f",
            "arith.truncf": src == "f" and dst == "f",
            "arith.fptosi": src == "f" and dst == "i",
        }[name]
        return None if ok else f"{name} from {arg_types[0]} to {rtype}"
    if name == "df.is_null":
        return None if rkind == "b" else "is_null result type"
    if name == "df.fill_null":
        return None if same else "fill_null operand types"
    if name == "df.isin":
        values = op_attrs(op).get("values")
        if not isinstance(values, list):
            return "isin without a value list"
        t = arg_types[0]
        kind = CTYPE[t][2]
        for v in values:
            if kind == "b" and type(v) is not bool:
                return "isin value is not a bool"
            if kind == "i":
                w = CTYPE[t][1]
                if type(v) is not int or not -(1 << (w - 1)) <= v < (1 << (w - 1)):
                    return "isin value is not an integer of the column's type"
            if kind == "f" and type(v) not in (int, float):
                return "isin value is not a number"
        return None if rkind == "b" else "isin result type"
    return f"op {name} is not in the compiled subset"


# ---------------------------------------------------------------------------- planning

#: larger regions stay on the Arrow path (compilation would take longer than it saves)
MAX_BODY_OPS = 2000


def plan_kernel(region: Sequence[Any]) -> Kernel | Fallback:
    """Plans a compiled kernel for ``region`` (see the module docstring). Never raises on a
    well-formed region; malformed ones give a ``Fallback`` (the Arrow path reports them)."""
    try:
        return _plan(region)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        return Fallback(f"malformed region ({type(e).__name__}: {e})")


def _plan(region: Sequence[Any]) -> Kernel | Fallback:
    if not region or op_field(region[-1], "op") != "vector.yield":
        return Fallback("region does not end in vector.yield")
    vals: dict[str, _Val] = {}
    defs: dict[str, Any] = {}
    fallbacks: list[tuple[str, str | None, str]] = []
    for op in region[:-1]:
        name = op_field(op, "op")
        results = op_field(op, "results") or []
        types = op_field(op, "result_types") or []
        if len(results) != 1 or len(types) != 1:
            return Fallback(f"op {name} with {len(results)} results")
        operands = list(op_field(op, "operands") or [])
        for o in operands:
            if o not in vals:
                return Fallback(f"{name} uses undefined value {o}")
        rid, rtype = results[0], types[0]
        arg_types = [vals[o].type for o in operands]
        const = all(vals[o].const for o in operands)
        if name == "df.col":
            reason = None if rtype in CTYPE else f"column of type {rtype}"
            const = False
        elif op_field(op, "regions"):
            reason = "op with a nested region"
        else:
            reason = _check(op, name, arg_types, rtype)
        if reason is not None and name != "df.col":
            fallbacks.append((name, op_field(op, "loc"), reason))
        supported = reason is None
        vals[rid] = _Val(rtype, const, op, supported)
        defs[rid] = op
    yielded = list(op_field(region[-1], "operands") or [])
    for y in yielded:
        if y not in vals:
            return Fallback(f"vector.yield uses undefined value {y}")

    # which yields the Arrow path returns as scalars (they stay Arrow's, so results keep
    # their exact form): found by running the region on an empty table
    scalar = _scalar_yields(region, vals)
    if isinstance(scalar, Fallback):
        return scalar

    # classify yielded values
    kernel_vids: list[str] = []  # kernel outputs (unique)
    arrow_vids: list[str] = []  # values the Arrow part yields (outputs and kernel inputs)
    outputs: list[Output] = []
    for y, is_scalar in zip(yielded, scalar):
        v = vals[y]
        if op_field(v.op, "op") == "df.col":
            outputs.append(Output("column", column=op_attrs(v.op).get("column"), type=v.type))
        elif v.supported and not v.const and not is_scalar:
            if y not in kernel_vids:
                kernel_vids.append(y)
            outputs.append(Output("kernel", kernel_vids.index(y)))
        else:
            if y not in arrow_vids:
                arrow_vids.append(y)
            outputs.append(Output("arrow", arrow_vids.index(y)))
    if not kernel_vids:
        why = "; ".join(f"{n}: {r}" for n, _, r in fallbacks) or "no row-wise computation"
        return Fallback(f"no yielded value can be computed by a kernel ({why})")

    # the kernel body: supported ops needed by kernel outputs; inputs are df.col values and
    # values of unsupported ops (computed by Arrow)
    needed: set[str] = set()
    inputs_vids: list[str] = []
    stack = list(kernel_vids)
    while stack:
        vid = stack.pop()
        if vid in needed:
            continue
        needed.add(vid)
        v = vals[vid]
        if op_field(v.op, "op") == "df.col" or not v.supported:
            continue
        stack.extend(op_field(v.op, "operands") or [])
    body = []
    inputs: list[tuple[str, str, str]] = []
    for op in region[:-1]:
        rid = (op_field(op, "results") or [None])[0]
        if rid not in needed:
            continue
        v = vals[rid]
        if op_field(op, "op") == "df.col":
            inputs_vids.append(rid)
            inputs.append(("column", op_attrs(op)["column"], v.type))
        elif not v.supported:
            if rid not in arrow_vids:
                arrow_vids.append(rid)
            inputs_vids.append(rid)
            inputs.append(("arrow", str(arrow_vids.index(rid)), v.type))
        else:
            body.append((op, rid, list(op_field(op, "operands") or [])))
    if len(body) > MAX_BODY_OPS:
        return Fallback(f"region too large for one kernel ({len(body)} ops > {MAX_BODY_OPS})")
    for kind, _, t in inputs:
        if t not in CTYPE:  # an unsupported op feeding the kernel a non-fixed-width value
            return Fallback(f"kernel input of type {t}")

    arrow_ops = None
    if arrow_vids:
        # the Arrow part: every op the Arrow-evaluated values need, in region order
        need_a: set[str] = set()
        stack = list(arrow_vids)
        while stack:
            vid = stack.pop()
            if vid in need_a:
                continue
            need_a.add(vid)
            stack.extend(op_field(vals[vid].op, "operands") or [])
        arrow_ops = [op for op in region[:-1] if (op_field(op, "results") or [None])[0] in need_a]
        arrow_ops.append({"op": "vector.yield", "loc": op_field(region[-1], "loc"), "operands": list(arrow_vids),
                          "results": [], "result_types": [], "attributes": {}})
    types = {vid: vals[vid].type for vid in vals}
    return Kernel(
        inputs=inputs,
        input_types=[t for _, _, t in inputs],
        outputs=outputs,
        output_types=[vals[v].type for v in kernel_vids],
        arrow_ops=arrow_ops,
        arrow_count=len(arrow_vids),
        fallbacks=fallbacks,
        _body=body,
        _input_vids=inputs_vids,
        _output_vids=kernel_vids,
        _types=types,
    )


def _scalar_yields(region: Sequence[Any], vals: dict[str, _Val]) -> list[bool] | Fallback:
    """For each yielded value, whether ``expr_eval``'s Arrow path returns an Arrow scalar
    (a constant; ``fill_null``/``select`` with a constant first operand return one of their
    operands as is). Decided by evaluating the region over an empty table of the columns'
    types: scalar-ness does not depend on the rows."""
    from opgraph.runtime import expr_eval

    fields: dict[str, pa.DataType] = {}
    for v in vals.values():
        if op_field(v.op, "op") == "df.col":
            name = op_attrs(v.op).get("column")
            try:
                fields.setdefault(name, expr_eval.arrow_type(v.type))
            except expr_eval.ExprError:
                return Fallback(f"column of unknown type {v.type}")
    empty = pa.schema([pa.field(str(n), t) for n, t in fields.items()]).empty_table()
    try:
        values = expr_eval.eval_region_arrow(region, empty)
    except expr_eval.ExprError as e:
        return Fallback(f"the Arrow path fails on this region's constants: {e.message}")
    except Exception as e:  # noqa: BLE001 - anything odd: the Arrow path will report it
        return Fallback(f"the region cannot be evaluated ({type(e).__name__}: {e})")
    return [isinstance(v, pa.Scalar) for v in values]


# ---------------------------------------------------------------------------- emission


def _op_code(op: Any, name: str, r: str, a: list[str], types: dict[str, str], rtype: str,
             arg_types: list[str], may_null: dict[str, bool]) -> tuple[list[str], bool]:
    """C++ statements defining ``v<r>``/``m<r>`` (value, validity) and whether the result
    may be null. ``a`` are the operands' C identifiers (``v``/``m`` prefixed by caller)."""
    ctype = CTYPE[rtype][0]
    V = [f"v{x}" for x in a]
    M = [f"m{x}" for x in a]
    any_null = any(may_null[x] for x in a)
    prop = " & ".join(m for m, x in zip(M, a) if may_null[x]) or "true"
    lines: list[str] = []

    def simple(expr: str) -> tuple[list[str], bool]:
        return [f"const {ctype} v{r} = {expr};", f"const bool m{r} = {prop};"], any_null

    if name == "arith.constant":
        return [f"const {ctype} v{r} = {_literal(_constant_value(op, rtype), rtype)};",
                f"const bool m{r} = true;"], False
    if name in _INT_BIN:
        return simple(f"og_wrap<{ctype}>(og_u({V[0]}) {_INT_BIN[name]} og_u({V[1]}))")
    if name in _FLOAT_BIN:
        return simple(f"({V[0]} {_FLOAT_BIN[name]} {V[1]})")
    if name == "arith.remf":
        return simple(f"std::fmod({V[0]}, {V[1]})")
    if name == "math.powf":
        return simple(f"std::pow({V[0]}, {V[1]})")
    if name == "math.fpowi":
        return simple(f"std::pow({V[0]}, static_cast<{ctype}>({V[1]}))")
    if name in _FLOAT_UNARY:
        return simple(_FLOAT_UNARY[name].format(a=V[0]))
    if name == "math.absi":
        return simple(f"og_absi<{ctype}>({V[0]})")
    if name in ("arith.divsi", "arith.floordivsi", "arith.remsi", "math.ipowi"):
        fn = {"arith.divsi": "og_divsi", "arith.floordivsi": "og_floordivsi", "arith.remsi": "og_remsi",
              "math.ipowi": "og_ipow"}[name]
        return [f"bool m{r} = {prop};",
                f"const {ctype} v{r} = m{r} ? {fn}<{ctype}>({V[0]}, {V[1]}, m{r}) : {ctype}(0);"], True
    if name == "arith.cmpi":
        pred = _predicate(op_attrs(op).get("predicate"), _CMPI)
        assert pred is not None
        x, y = V
        if pred >= 6 and CTYPE[arg_types[0]][2] == "i":
            u = _UNSIGNED[CTYPE[arg_types[0]][1]]
            x, y = f"static_cast<{u}>({x})", f"static_cast<{u}>({y})"
        return simple(f"({x} {_CMP_OPS[pred % 6 if pred < 6 else pred - 4]} {y})")
    if name == "arith.cmpf":
        pred = _predicate(op_attrs(op).get("predicate"), _CMPF)
        assert pred is not None
        x, y = V
        ordered = f"(!std::isnan({x}) & !std::isnan({y}))"
        if pred == 0:
            expr = "false"
        elif pred == 15:
            expr = "true"
        elif pred == 7:
            expr = ordered
        elif pred == 14:
            expr = f"!{ordered}"
        elif pred == 6:
            expr = f"({x} != {y} & {ordered})"
        elif pred in (1, 2, 3, 4, 5, 13):
            expr = f"({x} {_CMPF_BASE[pred]} {y})"
        else:  # unordered or <base>
            expr = f"(({x} {_CMPF_BASE[pred]} {y}) | !{ordered})"
        return simple(expr)
    if name in ("arith.andi", "arith.ori", "arith.xori"):
        if CTYPE[rtype][2] == "b" and name != "arith.xori":
            if not any_null:
                return simple(f"({V[0]} {'&' if name == 'arith.andi' else '|'} {V[1]})")
            # Kleene logic
            ma, mb = M
            if name == "arith.andi":
                lines = [f"const bool f{r} = ({ma} & !{V[0]}) | ({mb} & !{V[1]});",
                         f"const bool m{r} = f{r} | ({ma} & {mb});",
                         f"const bool v{r} = !f{r};"]
            else:
                lines = [f"const bool t{r} = ({ma} & {V[0]}) | ({mb} & {V[1]});",
                         f"const bool m{r} = t{r} | ({ma} & {mb});",
                         f"const bool v{r} = t{r};"]
            return lines, True
        if CTYPE[rtype][2] == "b":
            return simple(f"({V[0]} != {V[1]})")
        sym = {"arith.andi": "&", "arith.ori": "|", "arith.xori": "^"}[name]
        return simple(f"static_cast<{ctype}>({V[0]} {sym} {V[1]})")
    if name == "arith.select":
        c, x, y = a
        take = f"(m{c} & v{c})" if may_null[c] else f"v{c}"
        mx = f"m{x}" if may_null[x] else "true"
        my = f"m{y}" if may_null[y] else "true"
        lines = [f"const bool s{r} = {take};", f"const {ctype} v{r} = s{r} ? v{x} : v{y};",
                 f"const bool m{r} = s{r} ? {mx} : {my};"]
        return lines, may_null[x] or may_null[y]
    if name in _CASTS:
        src = arg_types[0]
        skind, swidth = CTYPE[src][2], CTYPE[src][1]
        if name == "arith.trunci" and CTYPE[rtype][2] == "b":
            return simple(f"(({V[0]} & 1) != 0)")
        if name in ("arith.extui", "arith.uitofp") and skind == "i":
            return simple(f"static_cast<{ctype}>(static_cast<{_UNSIGNED[swidth]}>({V[0]}))")
        if name == "arith.fptosi":
            info_min, info_max = -(1 << (CTYPE[rtype][1] - 1)), (1 << (CTYPE[rtype][1] - 1)) - 1
            lo = _float_literal(float(info_min) - 1.0, "f64")
            hi = _float_literal(float(info_max) + 1.0, "f64")
            lines = [f"const bool m{r} = {prop};",
                     f"const double d{r} = static_cast<double>({V[0]});",
                     f"const bool ok{r} = !m{r} | (std::isfinite(d{r}) & d{r} > {lo} & d{r} < {hi});",
                     f"og_bad |= static_cast<uint8_t>(!ok{r});",
                     f"const {ctype} v{r} = ok{r} & m{r} ? static_cast<{ctype}>({V[0]}) : {ctype}(0);"]
            return lines, any_null
        if name == "arith.trunci":
            return simple(f"og_wrap<{ctype}>(og_u({V[0]}))")
        return simple(f"static_cast<{ctype}>({V[0]})")
    if name == "df.is_null":
        x = a[0]
        return [f"const bool v{r} = {'!m' + x if may_null[x] else 'false'};", f"const bool m{r} = true;"], False
    if name == "df.fill_null":
        x, y = a
        if not may_null[x]:
            return [f"const {ctype} v{r} = v{x};", f"const bool m{r} = true;"], False
        my = f"m{y}" if may_null[y] else "true"
        return [f"const {ctype} v{r} = m{x} ? v{x} : v{y};", f"const bool m{r} = m{x} | {my};"], may_null[y]
    if name == "df.isin":
        x = a[0]
        t = arg_types[0]
        kind = CTYPE[t][2]
        values = op_attrs(op)["values"]
        terms: list[str] = []
        if kind == "f":  # Arrow's hash set: bit patterns, every NaN matches NaN
            fl = sorted({struct.unpack("<Q" if t == "f64" else "<I",
                                       struct.pack("<d" if t == "f64" else "<f", float(v)))[0]
                         for v in values if not math.isnan(float(v))})
            has_nan = any(math.isnan(float(v)) for v in values)
            u = "uint64_t" if t == "f64" else "uint32_t"
            bits = f"og_bits(v{x})"
            terms = [f"({bits} == static_cast<{u}>(UINT64_C({hex(b)})))" for b in fl]
            if has_nan:
                terms.append(f"std::isnan(v{x})")
            else:
                terms = [f"(!std::isnan(v{x}) & ({' | '.join(terms) or 'false'}))"]
        else:
            terms = [f"(v{x} == {_literal(v, t)})" for v in dict.fromkeys(values)]
        expr = " | ".join(terms) or "false"
        valid = f"m{x} & " if may_null[x] else ""
        return [f"const bool v{r} = {valid}({expr});", f"const bool m{r} = true;"], False
    raise AssertionError(f"no emitter for {name}")


#: kernel outputs per generated loop function: compile time grows faster than linearly with
#: the size of one loop body (register allocation), so wide ``assign``s are split into
#: several loops over the same tile of rows (inputs stay in cache; shared subexpressions are
#: recomputed per loop)
OUTPUTS_PER_PASS = 8
TILE_ROWS = 4096


def _emit(k: Kernel, nullable: tuple[bool, ...]) -> tuple[str, list[bool]]:
    if len(nullable) != len(k.inputs):
        raise ValueError("nullable flags must match the kernel inputs")
    may_null: dict[str, bool] = {}
    load: dict[str, list[str]] = {}  # input vid -> load statements
    for idx, (vid, (_, _, t), nl) in enumerate(zip(k._input_vids, k.inputs, nullable)):
        ctype, _, kind = CTYPE[t]
        code = [f"// input {idx}: {t}"]
        if kind == "b":
            code.append(f"const bool v{idx}_ = bin{idx}[jj];")
        else:
            code.append(f"const {ctype} v{idx}_ = in{idx}[i];")
        code.append(f"const bool m{idx}_ = {f'vin{idx}[jj]' if nl else 'true'};")
        load[vid] = code
        may_null[vid] = nl
    # C identifiers for values: inputs are "<idx>_", body values "_<n>"
    cid: dict[str, str] = {vid: f"{idx}_" for idx, vid in enumerate(k._input_vids)}
    input_index = {vid: idx for idx, vid in enumerate(k._input_vids)}
    code_of: dict[str, list[str]] = {}
    deps: dict[str, list[str]] = {}
    order: list[str] = []
    for n, (op, rid, operands) in enumerate(k._body):
        name = op_field(op, "op")
        r = f"_{n}"
        cid[rid] = r
        may_null_c = {cid[o]: may_null[o] for o in operands}
        code, mn = _op_code(op, name, r, [cid[o] for o in operands], k._types, k._types[rid],
                            [k._types[o] for o in operands], may_null_c)
        may_null[rid] = mn
        code_of[rid] = [f"// op {n}", *code]  # no plan text in the source, not even op names
        deps[rid] = operands
        order.append(rid)
    out_nullable = [may_null[v] for v in k._output_vids]

    L: list[str] = [PRELUDE]
    outs = list(enumerate(k._output_vids))
    passes = [outs[a:a + OUTPUTS_PER_PASS] for a in range(0, len(outs), OUTPUTS_PER_PASS)]
    for g, group in enumerate(passes):
        need: set[str] = set()
        stack = [v for _, v in group]
        while stack:
            v = stack.pop()
            if v not in need:
                need.add(v)
                stack.extend(deps.get(v, ()))
        used_inputs = sorted(input_index[v] for v in need if v in input_index)
        # the block function: exactly 64 rows from restrict pointers (vectorisable at -O2)
        params: list[str] = []
        for idx in used_inputs:
            ctype, _, kind = CTYPE[k.inputs[idx][2]]
            params.append(f"const uint8_t* __restrict__ bin{idx}" if kind == "b"
                          else f"const {ctype}* __restrict__ in{idx}")
            if nullable[idx]:
                params.append(f"const uint8_t* __restrict__ vin{idx}")
        for j, _ in group:
            ctype, _, kind = CTYPE[k.output_types[j]]
            params.append(f"uint8_t* __restrict__ bo{j}" if kind == "b" else f"{ctype}* __restrict__ out{j}")
            if out_nullable[j]:
                params.append(f"uint8_t* __restrict__ vo{j}")
        L.append(f"OG_CLONES static uint8_t og_block{g}({', '.join(params)}) {{")
        L.append("  uint8_t og_bad = 0;")
        L.append("  for (int64_t jj = 0; jj < 64; ++jj) {")
        L.append("    const int64_t i = jj; (void)i;")
        for idx in used_inputs:
            L.extend("    " + x for x in load[k._input_vids[idx]])
        for rid in order:
            if rid in need:
                L.extend("    " + x for x in code_of[rid])
        for j, vid in group:
            c = cid[vid]
            if CTYPE[k.output_types[j]][2] == "b":
                L.append(f"    bo{j}[jj] = v{c};")
            else:
                L.append(f"    out{j}[jj] = v{c};")
            if out_nullable[j]:
                L.append(f"    vo{j}[jj] = m{c};")
        L.append("  }")
        L.append("  return og_bad;")
        L.append("}")
        # the pass: blocks of 64 rows; a last partial block goes through zeroed local buffers
        L.append(f"static void og_pass{g}(int64_t start, int64_t end, "
                 "const void* const* in_data, const uint8_t* const* in_valid, const int64_t* in_off, "
                 "void* const* out_data, uint8_t* const* out_valid, int64_t* nulls, int64_t* err) {")
        L.append("  (void)in_valid; (void)out_valid; (void)nulls;")
        args: list[str] = []
        pre: list[str] = []
        tail_in: list[str] = []
        post_tail: list[str] = []
        for idx in used_inputs:
            ctype, width, kind = CTYPE[k.inputs[idx][2]]
            L.append(f"  const int64_t off{idx} = in_off[{idx}];")
            if kind == "b":
                L.append(f"  const uint8_t* in{idx} = static_cast<const uint8_t*>(in_data[{idx}]);")
                L.append(f"  alignas(64) uint8_t bin{idx}[64];")
                pre.append(f"og_unpack(bin{idx}, in{idx}, off{idx} + base, cnt);")
                args.append(f"bin{idx}")
            else:
                L.append(f"  const {ctype}* in{idx} = static_cast<const {ctype}*>(in_data[{idx}]) + off{idx};")
                L.append(f"  alignas(64) {ctype} tin{idx}[64];")
                pre.append(f"const {ctype}* p{idx} = in{idx} + base;")
                tail_in.append(f"std::memset(tin{idx}, 0, sizeof(tin{idx})); "
                               f"std::memcpy(tin{idx}, p{idx}, static_cast<size_t>(cnt) * {width // 8}); "
                               f"p{idx} = tin{idx};")
                args.append(f"p{idx}")
            if nullable[idx]:
                L.append(f"  const uint8_t* nv{idx} = in_valid[{idx}];")
                L.append(f"  alignas(64) uint8_t vin{idx}[64];")
                pre.append(f"og_unpack(vin{idx}, nv{idx}, off{idx} + base, cnt);")
                args.append(f"vin{idx}")
        post: list[str] = []
        for j, _ in group:
            ctype, width, kind = CTYPE[k.output_types[j]]
            if kind == "b":
                L.append(f"  uint8_t* out{j} = static_cast<uint8_t*>(out_data[{j}]);")
                L.append(f"  alignas(64) uint8_t bo{j}[64];")
                args.append(f"bo{j}")
                post.append(f"og_store_bits(out{j}, base, og_pack(bo{j}, cnt), cnt);")
            else:
                L.append(f"  {ctype}* out{j} = static_cast<{ctype}*>(out_data[{j}]);")
                L.append(f"  alignas(64) {ctype} tout{j}[64];")
                pre.append(f"{ctype}* q{j} = out{j} + base;")
                tail_in.append(f"q{j} = tout{j};")
                post_tail.append(f"std::memcpy(out{j} + base, tout{j}, static_cast<size_t>(cnt) * {width // 8});")
                args.append(f"q{j}")
            if out_nullable[j]:
                L.append(f"  uint8_t* ov{j} = out_valid[{j}];")
                L.append(f"  alignas(64) uint8_t vo{j}[64];")
                args.append(f"vo{j}")
                post.append(f"{{ const uint64_t w = og_pack(vo{j}, cnt); og_store_bits(ov{j}, base, w, cnt); "
                            f"nulls[{j}] += cnt - __builtin_popcountll(w); }}")
        L.append("  for (int64_t base = start; base < end; base += 64) {")
        L.append("    const int64_t cnt = end - base < 64 ? end - base : 64;")
        L.extend("    " + x for x in pre)
        if tail_in:
            L.append("    if (cnt < 64) {")
            L.extend("      " + x for x in tail_in)
            L.append("    }")
        L.append(f"    if (og_block{g}({', '.join(args)}) && *err < 0) *err = base;")
        if post_tail:
            L.append("    if (cnt < 64) {")
            L.extend("      " + x for x in post_tail)
            L.append("    }")
        L.extend("    " + x for x in post)
        L.append("  }")
        L.append("}")
    L.append("static void og_range(int64_t start, int64_t end, const void* const* in_data, "
             "const uint8_t* const* in_valid, const int64_t* in_off, void* const* out_data, "
             "uint8_t* const* out_valid, int64_t* nulls, int64_t* err) {")
    L.append("  *err = -1;")
    if len(passes) == 1:
        L.append("  og_pass0(start, end, in_data, in_valid, in_off, out_data, out_valid, nulls, err);")
    else:
        L.append(f"  for (int64_t t0 = start; t0 < end; t0 += {TILE_ROWS}) {{")
        L.append(f"    const int64_t t1 = end - t0 < {TILE_ROWS} ? end : t0 + {TILE_ROWS};")
        for g in range(len(passes)):
            L.append(f"    og_pass{g}(t0, t1, in_data, in_valid, in_off, out_data, out_valid, nulls, err);")
        L.append("  }")
    L.append("}")
    nout = len(k.output_types)
    L.append(f"""
namespace {{
struct OgTask {{
  int64_t start, end;
  const void* const* in_data; const uint8_t* const* in_valid; const int64_t* in_off;
  void* const* out_data; uint8_t* const* out_valid;
  int64_t nulls[{max(1, nout)}]; int64_t err;
}};
void* og_task(void* p) {{
  OgTask* t = static_cast<OgTask*>(p);
  og_range(t->start, t->end, t->in_data, t->in_valid, t->in_off, t->out_data, t->out_valid, t->nulls, &t->err);
  return nullptr;
}}
}}  // namespace

extern "C" int64_t og_expr_kernel(int64_t n, const void* const* in_data, const uint8_t* const* in_valid,
                                  const int64_t* in_off, void* const* out_data, uint8_t* const* out_valid,
                                  int64_t* out_nulls, int32_t nthreads) {{
  enum {{ NOUT = {nout}, MAXT = 64 }};
  if (nthreads < 1) nthreads = 1;
  if (nthreads > MAXT) nthreads = MAXT;
  int64_t chunk = (n + nthreads - 1) / nthreads;
  chunk = (chunk + 63) / 64 * 64;
  if (chunk < 64) chunk = 64;
  int64_t parts = (n + chunk - 1) / chunk;
  if (parts < 1) parts = 1;
  OgTask tasks[MAXT];
  pthread_t tids[MAXT];
  bool started[MAXT];
  for (int64_t p = 0; p < parts; ++p) {{
    OgTask& t = tasks[p];
    t.start = p * chunk; t.end = t.start + chunk < n ? t.start + chunk : n;
    t.in_data = in_data; t.in_valid = in_valid; t.in_off = in_off; t.out_data = out_data; t.out_valid = out_valid;
    for (int j = 0; j < {max(1, nout)}; ++j) t.nulls[j] = 0;
    t.err = -1;
    started[p] = false;
  }}
  for (int64_t p = 1; p < parts; ++p) started[p] = pthread_create(&tids[p], nullptr, og_task, &tasks[p]) == 0;
  og_task(&tasks[0]);
  for (int64_t p = 1; p < parts; ++p) {{
    if (started[p]) pthread_join(tids[p], nullptr);
    else og_task(&tasks[p]);  // could not start a thread: run it here
  }}
  for (int j = 0; j < NOUT; ++j) {{
    int64_t s = 0;
    for (int64_t p = 0; p < parts; ++p) s += tasks[p].nulls[j];
    out_nulls[j] = s;
  }}
  for (int64_t p = 0; p < parts; ++p) if (tasks[p].err >= 0) return tasks[p].err;
  return -1;
}}
""")
    return "\n".join(L), out_nullable
