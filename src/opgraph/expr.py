"""Column expressions (Polars-style objects): ``t["a"] * 2 + 1``, ``t["s"].str.len()``.

An ``Expr`` is a small typed tree built eagerly, so type errors surface at the user's line;
it becomes IR (a region of ``arith``/``math``/``df`` ops) only when a table op uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from xdsl.dialects import arith, math
from xdsl.dialects.builtin import (
    ArrayAttr,
    BoolAttr,
    Float32Type,
    Float64Type,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    StringAttr,
    UnknownLoc,
    f64,
    i1,
    i64,
)
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue

from opgraph.dialects import dataframe as df
from opgraph.ir_construct import append_op, new_op
from opgraph.dialects.upstream.vector_yield import YieldOp
from opgraph.tracing import SourceLoc, trace_error, user_location


@dataclass(eq=False)
class Expr:
    """A typed column expression node.

    ``kind`` names the operation, ``args`` are child expressions, ``params`` literal data.
    """

    kind: str
    args: tuple[Expr, ...]
    params: tuple[Any, ...]
    dtype: Attribute
    nullable: bool
    loc: SourceLoc

    def __post_init__(self) -> None:
        # whether a window function occurs in the tree: known from the children, so table
        # ops need not walk every expression they are given to look for one
        has_window = self.kind == "window"
        for a in self.args:
            has_window = has_window or a.has_window
        self.has_window = has_window

    # -- construction helpers --------------------------------------------------------
    def _binary(self, other: Any, op: str, reverse: bool = False) -> Expr:
        loc = user_location()
        rhs = as_expr(other, loc, like=self)
        a, b = (rhs, self) if reverse else (self, rhs)
        return binary(op, a, b, loc)

    def __add__(self, o: Any) -> Expr: return self._binary(o, "add")
    def __radd__(self, o: Any) -> Expr: return self._binary(o, "add", True)
    def __sub__(self, o: Any) -> Expr: return self._binary(o, "sub")
    def __rsub__(self, o: Any) -> Expr: return self._binary(o, "sub", True)
    def __mul__(self, o: Any) -> Expr: return self._binary(o, "mul")
    def __rmul__(self, o: Any) -> Expr: return self._binary(o, "mul", True)
    def __truediv__(self, o: Any) -> Expr: return self._binary(o, "truediv")
    def __rtruediv__(self, o: Any) -> Expr: return self._binary(o, "truediv", True)
    def __floordiv__(self, o: Any) -> Expr: return self._binary(o, "floordiv")
    def __rfloordiv__(self, o: Any) -> Expr: return self._binary(o, "floordiv", True)
    def __mod__(self, o: Any) -> Expr: return self._binary(o, "mod")
    def __rmod__(self, o: Any) -> Expr: return self._binary(o, "mod", True)
    def __pow__(self, o: Any) -> Expr: return self._binary(o, "pow")
    def __rpow__(self, o: Any) -> Expr: return self._binary(o, "pow", True)
    def __eq__(self, o: Any) -> Expr: return self._binary(o, "eq")  # type: ignore[override]
    def __ne__(self, o: Any) -> Expr: return self._binary(o, "ne")  # type: ignore[override]
    def __lt__(self, o: Any) -> Expr: return self._binary(o, "lt")
    def __le__(self, o: Any) -> Expr: return self._binary(o, "le")
    def __gt__(self, o: Any) -> Expr: return self._binary(o, "gt")
    def __ge__(self, o: Any) -> Expr: return self._binary(o, "ge")
    def __and__(self, o: Any) -> Expr: return self._binary(o, "and")
    def __rand__(self, o: Any) -> Expr: return self._binary(o, "and", True)
    def __or__(self, o: Any) -> Expr: return self._binary(o, "or")
    def __ror__(self, o: Any) -> Expr: return self._binary(o, "or", True)

    def __invert__(self) -> Expr:
        loc = user_location()
        if not df.is_bool(self.dtype):
            raise trace_error(f"'~' needs a boolean expression, got {df.type_str(self.dtype)}", loc)
        return Expr("not", (self,), (), i1, self.nullable, loc)

    def __neg__(self) -> Expr:
        loc = user_location()
        _require_numeric(self, "unary '-'", loc)
        return Expr("neg", (self,), (), self.dtype, self.nullable, loc)

    def __bool__(self) -> bool:
        raise trace_error(
            "an opgraph expression has no truth value while tracing: use '&', '|', '~' instead of "
            "'and', 'or', 'not', and og.where instead of 'if'"
        )

    __hash__ = object.__hash__

    # -- methods -----------------------------------------------------------------------
    def isin(self, values: Sequence[Any]) -> Expr:
        loc = user_location()
        literals = [as_expr(v, loc, like=self) for v in values]
        for lit in literals:
            if lit.kind != "lit" or not df.same_key_kind(lit.dtype, self.dtype):
                raise trace_error(
                    f"isin values must be {df.type_str(self.dtype)} literals, got {lit.params[0]!r}", loc
                )
        return Expr("isin", (self,), tuple(lit.params[0] for lit in literals), i1, False, loc)

    def isnull(self) -> Expr:
        return Expr("isnull", (self,), (), i1, False, user_location())

    isna = isnull

    def notnull(self) -> Expr:
        loc = user_location()
        return Expr("not", (Expr("isnull", (self,), (), i1, False, loc),), (), i1, False, loc)

    notna = notnull

    def fillna(self, value: Any) -> Expr:
        loc = user_location()
        fill = as_expr(value, loc, like=self)
        if not _compatible(self.dtype, fill.dtype):
            raise trace_error(
                f"fillna value of type {df.type_str(fill.dtype)} does not fit a {df.type_str(self.dtype)} column", loc
            )
        target = df.promote(self.dtype, fill.dtype) if df.is_numeric(self.dtype) else self.dtype
        return Expr("fillna", (cast(self, target, loc), cast(fill, target, loc)), (), target, fill.nullable, loc)

    def abs(self) -> Expr:
        loc = user_location()
        _require_numeric(self, "abs", loc)
        return Expr("abs", (self,), (), self.dtype, self.nullable, loc)

    def astype(self, dtype: Any) -> Expr:
        loc = user_location()
        return cast(self, parse_dtype(dtype, loc), loc)

    @property
    def str(self) -> StringMethods:
        loc = user_location()
        if not isinstance(self.dtype, df.StringType):
            raise trace_error(f".str needs a string column, got {df.type_str(self.dtype)}", loc)
        return StringMethods(self)

    # window expressions: evaluated over the table's current row order
    def rolling(self, window: int) -> Rolling:
        loc = user_location()
        _require_numeric(self, "rolling", loc)
        if not isinstance(window, int) or window < 1:
            raise trace_error(f"rolling window must be a positive integer, got {window!r}", loc)
        return Rolling(self, window)

    def shift(self, periods: int = 1) -> Expr:
        return window_expr(self, "shift", periods, user_location())

    def diff(self, periods: int = 1) -> Expr:
        loc = user_location()
        _require_numeric(self, "diff", loc)
        return window_expr(self, "diff", periods, loc)

    def __repr__(self) -> str:
        if self.kind == "col":
            return f"col({self.params[0]!r})"
        if self.kind == "lit":
            return repr(self.params[0])
        return f"{self.kind}({', '.join(map(repr, self.args))})"


class StringMethods:
    """``expr.str``: literal (non-regex) string functions."""

    def __init__(self, expr: Expr):
        self._e = expr

    def len(self) -> Expr:
        return Expr("str_len", (self._e,), (), i64, self._e.nullable, user_location())

    def lower(self) -> Expr:
        return Expr("str_lower", (self._e,), (), df.StringType(), self._e.nullable, user_location())

    def upper(self) -> Expr:
        return Expr("str_upper", (self._e,), (), df.StringType(), self._e.nullable, user_location())

    def startswith(self, prefix: str) -> Expr:
        loc = user_location()
        if not isinstance(prefix, str):
            raise trace_error(f"str.startswith needs a string, got {prefix!r}", loc)
        return Expr("str_startswith", (self._e,), (prefix,), i1, self._e.nullable, loc)

    def contains(self, pattern: str, regex: bool = False) -> Expr:
        loc = user_location()
        if regex:
            raise trace_error("str.contains supports literal patterns only (pass regex=False)", loc)
        if not isinstance(pattern, str):
            raise trace_error(f"str.contains needs a string, got {pattern!r}", loc)
        return Expr("str_contains", (self._e,), (pattern,), i1, self._e.nullable, loc)


class Rolling:
    def __init__(self, expr: Expr, window: int):
        self._e, self._k = expr, window

    def mean(self) -> Expr: return window_expr(self._e, "rolling_mean", self._k, user_location())
    def sum(self) -> Expr: return window_expr(self._e, "rolling_sum", self._k, user_location())
    def min(self) -> Expr: return window_expr(self._e, "rolling_min", self._k, user_location())
    def max(self) -> Expr: return window_expr(self._e, "rolling_max", self._k, user_location())


def window_expr(arg: Expr, func: str, param: int, loc: SourceLoc) -> Expr:
    if not isinstance(param, int):
        raise trace_error(f"{func} needs an integer, got {param!r}", loc)
    schema = df.table_of([("x", arg.dtype, True)])
    try:
        result = df.infer_window(schema, func, "x", param, "y")
    except df.SchemaError as e:
        raise trace_error(str(e), loc) from None
    return Expr("window", (arg,), (func, param), result.column("y")[0], True, loc)  # type: ignore[index]


# ---------------------------------------------------------------------- typing


def _require_numeric(e: Expr, what: str, loc: SourceLoc) -> None:
    if not df.is_numeric(e.dtype) or df.is_bool(e.dtype):
        raise trace_error(f"cannot apply {what} to a {df.type_str(e.dtype)} expression ({e!r})", loc)


def _compatible(a: Attribute, b: Attribute) -> bool:
    return df.same_key_kind(a, b) or (df.is_numeric(a) and df.is_numeric(b))


def literal(value: Any, loc: SourceLoc, like: Expr | None = None) -> Expr:
    if value is None:
        raise trace_error("None is not supported as a value in expressions (use isnull/fillna)", loc)
    if isinstance(value, bool):
        return Expr("lit", (), (value,), i1, False, loc)
    if isinstance(value, int):
        if like is not None and df.is_integer(like.dtype) and -(2 ** (like.dtype.width.data - 1)) <= value < 2 ** (like.dtype.width.data - 1):
            return Expr("lit", (), (value,), like.dtype, False, loc)  # keep int32 columns int32
        return Expr("lit", (), (value,), i64, False, loc)
    if isinstance(value, float):
        t = like.dtype if like is not None and isinstance(like.dtype, Float32Type) else f64
        return Expr("lit", (), (value,), t, False, loc)
    if isinstance(value, str):
        return Expr("lit", (), (value,), df.StringType(), False, loc)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return literal(value.item(), loc, like)
    raise trace_error(f"unsupported literal {value!r} of type {type(value).__name__}", loc)


_PLAIN_LITERALS = frozenset({bool, int, float, str})


def as_expr(value: Any, loc: SourceLoc, like: Expr | None = None) -> Expr:
    if isinstance(value, Expr):
        return value
    if type(value) in _PLAIN_LITERALS:  # the usual case, without the import below
        return literal(value, loc, like)
    from opgraph.table import Table

    if isinstance(value, Table):
        raise trace_error("a table cannot be used as a column expression", loc)
    return literal(value, loc, like)


_ARITH = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow")
_COMPARE = ("eq", "ne", "lt", "le", "gt", "ge")
_SYMBOL = {
    "add": "+", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//", "mod": "%", "pow": "**",
    "eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "and": "&", "or": "|",
}


def binary(op: str, a: Expr, b: Expr, loc: SourceLoc) -> Expr:
    nullable = a.nullable or b.nullable
    sym = _SYMBOL[op]
    if op in ("and", "or"):
        if not (df.is_bool(a.dtype) and df.is_bool(b.dtype)):
            raise trace_error(
                f"'{sym}' needs boolean operands, got {df.type_str(a.dtype)} and {df.type_str(b.dtype)}"
                " (did you forget parentheses around a comparison?)",
                loc,
            )
        return Expr(op, (a, b), (), i1, nullable, loc)
    if op in _COMPARE:
        if isinstance(a.dtype, df.StringType) or isinstance(b.dtype, df.StringType):
            if not (isinstance(a.dtype, df.StringType) and isinstance(b.dtype, df.StringType)):
                raise trace_error(
                    f"cannot compare {df.type_str(a.dtype)} with {df.type_str(b.dtype)} ({a!r} {sym} {b!r})", loc
                )
            return Expr(op, (a, b), (), i1, nullable, loc)
        t = df.promote(a.dtype, b.dtype)
        return Expr(op, (cast(a, t, loc), cast(b, t, loc)), (), i1, nullable, loc)
    # arithmetic
    for e in (a, b):
        if not df.is_numeric(e.dtype):
            raise trace_error(
                f"unsupported operand types for {sym}: {df.type_str(a.dtype)} and {df.type_str(b.dtype)}"
                f" ({a!r} {sym} {b!r})",
                loc,
            )
    t = df.promote(a.dtype, b.dtype)
    if df.is_bool(t):
        t = i64  # pandas: bool arithmetic gives integers
    if op == "truediv" or (op == "pow" and df.is_float(t)):
        t = t if df.is_float(t) else f64
    return Expr(op, (cast(a, t, loc), cast(b, t, loc)), (), t, nullable, loc)


def cast(e: Expr, to: Attribute, loc: SourceLoc) -> Expr:
    if e.dtype == to:
        return e
    if e.kind == "lit" and not isinstance(to, df.StringType) and not isinstance(e.dtype, df.StringType):
        value = e.params[0]
        converted = bool(value) if df.is_bool(to) else float(value) if df.is_float(to) else int(value)
        return Expr("lit", (), (converted,), to, False, e.loc)
    return Expr("cast", (e,), (), to, e.nullable, loc)


_DTYPES: dict[str, Attribute] = {
    "bool": i1, "int8": IntegerType(8), "int16": IntegerType(16), "int32": IntegerType(32),
    "int64": i64, "int": i64, "float32": Float32Type(), "float64": f64, "float": f64,
    "str": df.StringType(), "string": df.StringType(), "object": df.StringType(),
}


def parse_dtype(dtype: Any, loc: SourceLoc) -> Attribute:
    name = dtype if isinstance(dtype, str) else getattr(dtype, "__name__", None) or str(dtype)
    name = {"int_": "int64", "float_": "float64", "bool_": "bool", "str_": "str"}.get(name, name)
    try:
        return _DTYPES[name]
    except KeyError:
        raise trace_error(
            f"unsupported dtype {dtype!r} (expected one of {', '.join(sorted(_DTYPES))})", loc
        ) from None


# --------------------------------------------------------------- public functions


def where(cond: Any, a: Any, b: Any) -> Expr:
    """``og.where(cond, a, b)``: ``a`` where ``cond`` is true else ``b`` (null cond gives ``b``)."""
    loc = user_location()
    c = as_expr(cond, loc)
    if not df.is_bool(c.dtype):
        raise trace_error(f"og.where condition must be boolean, got {df.type_str(c.dtype)}", loc)
    like = a if isinstance(a, Expr) else b if isinstance(b, Expr) else None
    ea, eb = as_expr(a, loc, like), as_expr(b, loc, like)
    if not _compatible(ea.dtype, eb.dtype):
        raise trace_error(
            f"og.where branches have incompatible types {df.type_str(ea.dtype)} and {df.type_str(eb.dtype)}", loc
        )
    t = df.promote(ea.dtype, eb.dtype) if df.is_numeric(ea.dtype) else ea.dtype
    return Expr("where", (c, cast(ea, t, loc), cast(eb, t, loc)), (), t, ea.nullable or eb.nullable, loc)


def _unary_math(kind: str, x: Any) -> Expr:
    loc = user_location()
    e = as_expr(x, loc)
    if not df.is_numeric(e.dtype):
        raise trace_error(f"og.{kind} needs a numeric expression, got {df.type_str(e.dtype)}", loc)
    t = e.dtype if df.is_float(e.dtype) else f64
    return Expr(kind, (cast(e, t, loc),), (), t, e.nullable, loc)


def log(x: Any) -> Expr:
    return _unary_math("log", x)


def exp(x: Any) -> Expr:
    return _unary_math("exp", x)


def sqrt(x: Any) -> Expr:
    return _unary_math("sqrt", x)


def column(name: str, schema: df.TableType, loc: SourceLoc) -> Expr:
    found = schema.column(name)
    if found is None:
        raise trace_error(f"unknown column '{name}' (columns: {', '.join(schema.column_names)})", loc)
    return Expr("col", (), (name,), found[0], found[1], loc)


def walk(e: Expr):
    """Every distinct node of the expression, once (subexpressions may be shared: walking
    each path would take time exponential in the depth of ``x = x + x`` chains)."""
    seen: set[int] = set()
    stack = [e]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(reversed(node.args))


# ------------------------------------------------------------------- IR emission


# Op "shapes": what an arith/math op builder makes of its arguments (result types,
# properties, attributes) depends only on the builder, the operand types and the other
# arguments. The first op of each shape is built by its IRDL builder; the next ones copy its
# shape with the plain ``Operation`` constructor, without the builder's per-op argument
# processing (the ops are identical; a traced pipeline builds thousands of them).
_SHAPES: dict[tuple, tuple[tuple[Attribute, ...], dict[str, Attribute], dict[str, Attribute]]] = {}
_PLACEHOLDER_LOC = UnknownLoc()  # replaced by RegionBuilder.add


def _mk(cls: type[Operation], *args: Any) -> Operation:
    """``cls(*args)``; ``args`` are the operands (SSA values) followed by hashable others."""
    key = (cls, *[a.type if isinstance(a, SSAValue) else a for a in args])
    shape = _SHAPES.get(key)
    if shape is None:
        op = cls(*args)
        if not op.regions and not op.successors:
            _SHAPES[key] = (tuple(op.result_types), dict(op.properties), dict(op.attributes))
        return op
    result_types, properties, attributes = shape
    return new_op(  # = cls.create(...)
        cls,
        operands=[a for a in args if isinstance(a, SSAValue)],
        result_types=result_types,
        properties=properties,
        attributes=attributes,
        location=_PLACEHOLDER_LOC,
    )


def _const(value: Any, t: Attribute) -> Operation:
    if isinstance(t, df.StringType):
        return df.StringConstantOp(value)
    attr = _const_attr(type(value), value.hex() if isinstance(value, float) else value, t)
    # = arith.ConstantOp(attr) (not through _mk: 0.0 and -0.0 attributes compare equal)
    return new_op(
        arith.ConstantOp, result_types=[attr.get_type()], properties={"value": attr}, location=_PLACEHOLDER_LOC
    )


@lru_cache(maxsize=4096)
def _const_attr(kind: type, value: Any, t: Attribute) -> Attribute:
    """The (immutable, shared) attribute of a constant; floats come as ``float.hex`` so
    that 0.0 and -0.0 (equal as keys) stay distinct."""
    if kind is float:
        value = float.fromhex(value)
    if df.is_bool(t):
        return BoolAttr.from_bool(bool(value))
    if df.is_float(t):
        return FloatAttr(float(value), t)
    return IntegerAttr(int(value), t)


_CMPI = {"eq": "eq", "ne": "ne", "lt": "slt", "le": "sle", "gt": "sgt", "ge": "sge"}
_CMPF = {"eq": "oeq", "ne": "une", "lt": "olt", "le": "ole", "gt": "ogt", "ge": "oge"}


class RegionBuilder:
    """Emits an expression tree as ops of one block; identical subtrees are emitted once."""

    def __init__(self, schema: df.TableType):
        self.schema = schema
        self.block = Block()
        self._memo: dict[int, SSAValue] = {}

    def add(self, op: Operation, loc: SourceLoc) -> SSAValue:
        op.location = loc.attr()
        append_op(self.block, op)  # = self.block.add_op(op)
        return op.results[0]

    def emit(self, e: Expr) -> SSAValue:
        key = id(e)
        if key not in self._memo:
            self._memo[key] = self._emit(e)
        return self._memo[key]

    def finish(self, exprs: list[Expr]) -> Region:
        """The region computing ``exprs`` and yielding their values, in order."""
        values = [self.emit(e) for e in exprs]
        # = YieldOp(values) (one variadic operand group, nothing else), without the generic
        # IRDL builder's per-op overhead: every filter/assign region ends in one
        ret = new_op(YieldOp, operands=values, location=exprs[-1].loc.attr())
        append_op(self.block, ret)
        return Region(self.block)

    def _emit(self, e: Expr) -> SSAValue:
        k, loc, t = e.kind, e.loc, e.dtype
        if k == "col":
            found = self.schema.column(e.params[0])
            if found is None:
                raise trace_error(
                    f"unknown column '{e.params[0]}' (columns: {', '.join(self.schema.column_names)})", loc
                )
            if found[0] != t:
                raise trace_error(
                    f"column '{e.params[0]}' is {df.type_str(found[0])} here but the expression was built for {df.type_str(t)}",
                    loc,
                )
            return self.add(df.ColumnOp(e.params[0], t), loc)
        if k == "lit":
            return self.add(_const(e.params[0], t), loc)
        if k == "window":
            raise AssertionError("window expressions are lowered to df.window before emission")
        args = [self.emit(a) for a in e.args]
        if k in _ARITH:
            return self._arith(k, args[0], args[1], t, loc)
        if k in _COMPARE:
            at = e.args[0].dtype
            if isinstance(at, df.StringType):
                return self.add(df.StringCompareOp(k, args[0], args[1]), loc)
            if df.is_float(at):
                return self.add(_mk(arith.CmpfOp, args[0], args[1], _CMPF[k]), loc)
            return self.add(_mk(arith.CmpiOp, args[0], args[1], _CMPI[k]), loc)
        if k == "and":
            return self.add(_mk(arith.AndIOp, args[0], args[1]), loc)
        if k == "or":
            return self.add(_mk(arith.OrIOp, args[0], args[1]), loc)
        if k == "not":
            true = self.add(_const(True, i1), loc)
            return self.add(_mk(arith.XOrIOp, args[0], true), loc)
        if k == "neg":
            if df.is_float(t):
                return self.add(_mk(arith.NegfOp, args[0]), loc)
            zero = self.add(_const(0, t), loc)
            return self.add(_mk(arith.SubiOp, zero, args[0]), loc)
        if k == "abs":
            return self.add(_mk(math.AbsFOp, args[0]) if df.is_float(t) else _mk(math.AbsIOp, args[0]), loc)
        if k in ("log", "exp", "sqrt"):
            op = _mk({"log": math.LogOp, "exp": math.ExpOp, "sqrt": math.SqrtOp}[k], args[0])
            return self.add(op, loc)
        if k == "where":
            return self.add(_mk(arith.SelectOp, args[0], args[1], args[2]), loc)
        if k == "isnull":
            return self.add(df.IsNullOp(args[0]), loc)
        if k == "fillna":
            return self.add(df.FillNullOp(args[0], args[1]), loc)
        if k == "isin":
            values = ArrayAttr([_literal_attr(v, e.args[0].dtype) for v in e.params])
            return self.add(df.IsInOp(args[0], values), loc)
        if k == "cast":
            return self._cast(args[0], e.args[0].dtype, t, loc)
        if k == "str_len":
            return self.add(df.StringLengthOp(args[0]), loc)
        if k == "str_lower":
            return self.add(df.StringLowerOp(args[0]), loc)
        if k == "str_upper":
            return self.add(df.StringUpperOp(args[0]), loc)
        if k == "str_startswith":
            return self.add(df.StringStartsWithOp(args[0], e.params[0]), loc)
        if k == "str_contains":
            return self.add(df.StringContainsOp(args[0], e.params[0]), loc)
        raise AssertionError(f"unknown expression kind {k}")

    def _arith(self, k: str, a: SSAValue, b: SSAValue, t: Attribute, loc: SourceLoc) -> SSAValue:
        fl = df.is_float(t)
        if k == "add":
            return self.add(_mk(arith.AddfOp, a, b) if fl else _mk(arith.AddiOp, a, b), loc)
        if k == "sub":
            return self.add(_mk(arith.SubfOp, a, b) if fl else _mk(arith.SubiOp, a, b), loc)
        if k == "mul":
            return self.add(_mk(arith.MulfOp, a, b) if fl else _mk(arith.MuliOp, a, b), loc)
        if k == "truediv":
            return self.add(_mk(arith.DivfOp, a, b), loc)
        if k == "floordiv":
            if fl:
                q = self.add(_mk(arith.DivfOp, a, b), loc)
                return self.add(_mk(math.FloorOp, q), loc)
            return self.add(_mk(arith.FloorDivSIOp, a, b), loc)
        if k == "pow":
            return self.add(_mk(math.PowFOp, a, b) if fl else _mk(math.IPowIOp, a, b), loc)
        # mod: Python/pandas semantics, the result takes the divisor's sign
        if fl:  # a - floor(a / b) * b (xDSL's arith has no remf)
            q = self.add(_mk(math.FloorOp, self.add(_mk(arith.DivfOp, a, b), loc)), loc)
            return self.add(_mk(arith.SubfOp, a, self.add(_mk(arith.MulfOp, q, b), loc)), loc)
        r = self.add(_mk(arith.RemSIOp, a, b), loc)
        zero = self.add(_const(0, t), loc)
        r_nonzero = self.add(_mk(arith.CmpiOp, r, zero, "ne"), loc)
        r_neg = self.add(_mk(arith.CmpiOp, r, zero, "slt"), loc)
        b_neg = self.add(_mk(arith.CmpiOp, b, zero, "slt"), loc)
        signs_differ = self.add(_mk(arith.XOrIOp, r_neg, b_neg), loc)
        fix = self.add(_mk(arith.AndIOp, r_nonzero, signs_differ), loc)
        adjusted = self.add(_mk(arith.AddiOp, r, b), loc)
        return self.add(_mk(arith.SelectOp, fix, adjusted, r), loc)

    def _cast(self, v: SSAValue, src: Attribute, dst: Attribute, loc: SourceLoc) -> SSAValue:
        if isinstance(src, df.StringType) or isinstance(dst, df.StringType):
            return self.add(df.CastOp(v, dst), loc)
        if df.is_bool(dst):
            zero = self.add(_const(0, src), loc)
            cmp = _mk(arith.CmpfOp, v, zero, "une") if df.is_float(src) else _mk(arith.CmpiOp, v, zero, "ne")
            return self.add(cmp, loc)
        if df.is_bool(src):
            if df.is_float(dst):
                return self.add(_mk(arith.UIToFPOp, v, dst), loc)
            return self.add(_mk(arith.ExtUIOp, v, dst), loc)
        if df.is_float(src) and df.is_float(dst):
            wider = isinstance(dst, Float64Type)
            return self.add(_mk(arith.ExtFOp, v, dst) if wider else _mk(arith.TruncFOp, v, dst), loc)
        if df.is_float(dst):
            return self.add(_mk(arith.SIToFPOp, v, dst), loc)
        if df.is_float(src):
            return self.add(_mk(arith.FPToSIOp, v, dst), loc)
        if dst.width.data > src.width.data:
            return self.add(_mk(arith.ExtSIOp, v, dst), loc)
        return self.add(_mk(arith.TruncIOp, v, dst), loc)


def _literal_attr(value: Any, t: Attribute) -> Attribute:
    if isinstance(t, df.StringType):
        return StringAttr(value)
    if df.is_bool(t):
        return BoolAttr.from_bool(bool(value))
    if df.is_float(t):
        return FloatAttr(float(value), t)
    return IntegerAttr(int(value), t if isinstance(t, IntegerType) else i64)
