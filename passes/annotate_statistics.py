"""``annotate-statistics``: estimated rows, bytes and distinct counts on every dataflow op.

Writes three discardable attributes on every top-level dataflow op of every function (the
annotation contract of CONVENTIONS.md, #3)::

    df.rows = 1000000 : i64                 estimated output rows (sinks: rows written)
    df.bytes = 16000000 : i64               estimated output bytes in memory (Arrow layout)
    df.distinct = {k = 1000 : i64, ...}     estimated distinct values per column (when known)

Sources (metadata only, no data is read):

* ``df.read_parquet``: the footers (``pyarrow.parquet.ParquetFile(path).metadata``): rows =
  ``num_rows``; bytes = fixed-width columns ``rows * width``, variable-width ones their
  uncompressed column-chunk size + 4 bytes of offsets per row; distinct: booleans 2, integer
  columns ``min(rows, max - min + 1)`` from the row-group min/max statistics, any column with
  ``min == max`` 1; min/max of numeric columns are also kept for predicate selectivity.
* ``df.read_ipc``: ``count_rows()`` of the memory-mapped file(s); widths from the schema.
* ``df.read_csv``: rows = file size / bytes per line in the first 64 KiB; widths from the schema.
* ``df.input``: ``df.rows``/``df.bytes`` recorded by the tracer (``og.from_arrow``/``from_pandas``
  and table arguments).
* A source whose file is missing (or an input without sizes) gets ``DEFAULT_ROWS`` rows.

Column widths (bytes per row): ``i1``/``i8`` 1, ``i16`` 2, ``i32``/``f32`` 4, ``i64``/``f64`` 8,
strings ``STRING_WIDTH`` (16 bytes of characters + 4 of offset) unless measured.

Propagation (documented defaults; d(c) = distinct count of column c, unknown d(c) =
``DEFAULT_DISTINCT_FRACTION * rows``):

* filter: ``rows * s`` with the predicate's selectivity s: constant true/false 1/0; ``a & b``
  s(a) s(b); ``a | b`` s(a) + s(b) - s(a) s(b); ``~a`` 1 - s(a); ``col == const`` 1/d(col)
  (``EQ_SELECTIVITY`` when d unknown), ``!=`` its complement; ``col <,<=,>,>= const`` the
  fraction of the [min, max] range when the statistics know it; ``isin(k values)`` k/d(col);
  ``isnull`` ``NULL_SELECTIVITY`` (0 for non-nullable columns); anything else
  ``FILTER_SELECTIVITY`` = 0.5.
* project/drop/rename/map/window/sort/comm ops: rows unchanged; columns as in the schema.
* join (keys K): inner ``L * R / max(d_L(K), d_R(K))`` when both key distinct counts are known
  (d(K) = product over key columns, capped at rows), else the foreign-key estimate
  ``max(L, R)``; left ``max(inner, L)``; right ``max(inner, R)``; outer ``max(inner, L + R -
  inner)``.
* groupby: ``min(rows, prod d(keys))``; distinct(subset): the same over the subset (all
  columns when absent); aggregate: 1; head n: ``min(n, rows)``.
* concat: L + R; union: ``min(L + R, prod d(all columns))``; intersect ``min(L, R) / 2``;
  difference ``L / 2``.
* distinct counts never exceed the op's rows.
* dl ops: tensors carry the rows of their table (``to_tensor``: rows x columns x element size
  bytes); parameters (``dl.params``/``load``/``train``) 1 row, the bytes of their leaves;
  ``dl.sweep`` one row per grid point.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from opgraph.dialects import dataframe as df
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    DictionaryAttr,
    Float32Type,
    Float64Type,
    FloatAttr,
    FloatData,
    IntAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    TensorType,
    TupleType,
    f64,
    i64,
)
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.passes import ModulePass

ROWS_ATTR = "df.rows"
BYTES_ATTR = "df.bytes"
DISTINCT_ATTR = "df.distinct"

DEFAULT_ROWS = 1_000_000
STRING_WIDTH = 20.0
FILTER_SELECTIVITY = 0.5
EQ_SELECTIVITY = 0.1
NULL_SELECTIVITY = 0.1
DEFAULT_DISTINCT_FRACTION = 0.1
_MAX_I64 = (1 << 62)


# ----------------------------------------------------------------------------- helpers


def dataflow_ops(module: ModuleOp) -> list[Operation]:
    """Top-level dataflow ops of every function of ``module``, in program order."""
    from opgraph.passes.lower_to_islands import is_dataflow_op

    out: list[Operation] = []
    for op in module.body.block.ops:
        if isinstance(op, func.FuncOp) and op.body.blocks:
            for inner in op.body.block.ops:
                if is_dataflow_op(inner):
                    out.append(inner)
    return out


def fast_i64(v: int) -> IntegerAttr:
    """``IntegerAttr(v, i64)`` without xDSL's per-construction verification (hot path: one
    per op and attribute), cached by value."""
    a = _I64_CACHE.get(v)
    if a is None:
        d = IntAttr.__new__(IntAttr)
        object.__setattr__(d, "data", v)
        a = IntegerAttr.__new__(IntegerAttr)
        object.__setattr__(a, "value", d)
        object.__setattr__(a, "type", i64)
        if len(_I64_CACHE) < 1 << 16:
            _I64_CACHE[v] = a
    return a


def fast_f64(v: float) -> FloatAttr:
    """``FloatAttr(v, f64)`` without per-construction verification."""
    d = FloatData.__new__(FloatData)
    object.__setattr__(d, "data", float(v))
    a = FloatAttr.__new__(FloatAttr)
    object.__setattr__(a, "value", d)
    object.__setattr__(a, "type", f64)
    return a


_I64_CACHE: dict[int, IntegerAttr] = {}
_DICT_CACHE: dict[tuple, DictionaryAttr] = {}
_SCHEMA_CACHE: dict[df.TableType, tuple[tuple[str, float, bool], ...]] = {}


def schema_info(t: df.TableType) -> tuple[tuple[str, float, bool], ...]:
    """(name, default width, is boolean) per column, cached per (immutable, shared) type."""
    info = _SCHEMA_CACHE.get(t)
    if info is None:
        info = tuple((n, width_of(et), df.is_bool(et)) for n, et, _ in t.columns)
        if len(_SCHEMA_CACHE) < 1 << 14:
            _SCHEMA_CACHE[t] = info
    return info


def width_of(t: Attribute) -> float:
    if isinstance(t, df.StringType):
        return STRING_WIDTH
    if isinstance(t, IntegerType):
        return max(1.0, t.width.data / 8.0)
    if isinstance(t, Float32Type):
        return 4.0
    if isinstance(t, Float64Type):
        return 8.0
    return 8.0


def tensor_bytes(t: Attribute, rows: float) -> float:
    """Bytes of a tensor (dynamic dimensions = ``rows``) or a tuple of tensors."""
    if isinstance(t, TupleType):
        return sum(tensor_bytes(x, rows) for x in t.types.data)
    if isinstance(t, TensorType):
        n = 1.0
        for d in t.get_shape():
            n *= rows if d < 0 else d
        return n * width_of(t.element_type)
    return 8.0


@dataclass
class Stats:
    """Estimated statistics of one value."""

    rows: float
    widths: dict[str, float] = field(default_factory=dict)  # column -> bytes per row
    distinct: dict[str, float] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    nbytes: float | None = None  # overrides rows * sum(widths) (tensors, parameters)

    @property
    def bytes(self) -> float:
        if self.nbytes is not None:
            return self.nbytes
        return self.rows * sum(self.widths.values())

    def d(self, column: str) -> float | None:
        v = self.distinct.get(column)
        return None if v is None else min(v, max(self.rows, 1.0))

    def d_or_default(self, column: str) -> float:
        v = self.d(column)
        return v if v is not None else max(1.0, DEFAULT_DISTINCT_FRACTION * self.rows)


def _table_stats(t: df.TableType, rows: float, measured: dict[str, float] | None = None) -> Stats:
    info = schema_info(t)
    widths = {n: (measured or {}).get(n, w) for n, w, _ in info}
    distinct = {n: 2.0 for n, _, b in info if b}
    return Stats(rows, widths, distinct)


def _carry(src: Stats, t: df.TableType, rows: float, rename: dict[str, str] | None = None) -> Stats:
    """Statistics of a table with schema ``t`` derived column by column from ``src``."""
    back = {new: old for old, new in rename.items()} if rename else None
    out = Stats(rows)
    widths, distinct, ranges = out.widths, out.distinct, out.ranges
    sw, sd, sr = src.widths, src.distinct, src.ranges
    cap = max(rows, 1.0)
    for n, w, is_bool in schema_info(t):
        old = back.get(n, n) if back else n
        widths[n] = sw.get(old, w)
        d = sd.get(old)
        if d is not None:
            distinct[n] = min(cap, d)
        elif is_bool:
            distinct[n] = 2.0
        if sr and old in sr:
            ranges[n] = sr[old]
    return out


# ----------------------------------------------------------------------------- sources

_FOOTER_CACHE: dict[tuple[str, int, int, tuple[str, ...] | None], Stats] = {}


def _files(path: str, suffixes: tuple[str, ...]) -> list[str]:
    import glob

    if any(ch in path for ch in "*?["):
        return sorted(glob.glob(path))
    if os.path.isdir(path):
        return sorted(
            os.path.join(root, f)
            for root, _, names in os.walk(path)
            for f in names
            if f.endswith(suffixes) and not f.startswith((".", "_"))
        )
    return [path] if os.path.exists(path) else []


def _stat_value(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return None


def parquet_stats(path: str, t: df.TableType, columns: list[str] | None) -> Stats | None:
    files = _files(path, (".parquet", ".pq"))
    if not files:
        return None
    import pyarrow.parquet as pq

    key_parts = []
    for f in files:
        st = os.stat(f)
        key_parts.append((f, st.st_mtime_ns, st.st_size))
    key = (path, hash(tuple(key_parts)), len(files), tuple(columns) if columns else None)
    cached = _FOOTER_CACHE.get(key)
    if cached is not None:
        return cached
    wanted = set(t.column_names)
    rows = 0.0
    var_bytes: dict[str, float] = {}
    mins: dict[str, float] = {}
    maxs: dict[str, float] = {}
    no_stats: set[str] = set()
    try:
        for f in files:
            meta = pq.ParquetFile(f).metadata
            rows += meta.num_rows
            index = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
            for name in wanted:
                i = index.get(name)
                if i is None:
                    no_stats.add(name)
                    continue
                for g in range(meta.num_row_groups):
                    chunk = meta.row_group(g).column(i)
                    var_bytes[name] = var_bytes.get(name, 0.0) + chunk.total_uncompressed_size
                    st = chunk.statistics
                    if st is None or not st.has_min_max:
                        no_stats.add(name)
                        continue
                    lo, hi = _stat_value(st.min), _stat_value(st.max)
                    if lo is None or hi is None:
                        if st.min == st.max:
                            mins.setdefault(name, 0.0)
                            maxs.setdefault(name, 0.0)
                        else:
                            no_stats.add(name)
                        continue
                    mins[name] = min(mins.get(name, lo), lo)
                    maxs[name] = max(maxs.get(name, hi), hi)
    except (OSError, ValueError, Exception):  # noqa: BLE001 - unreadable footer: defaults
        return None
    measured = {}
    for n, et, _ in t.columns:
        if isinstance(et, df.StringType) and rows > 0 and n in var_bytes:
            measured[n] = var_bytes[n] / rows + 4.0
    s = _table_stats(t, rows, measured)
    for n, et, _ in t.columns:
        if n in no_stats or n not in mins:
            continue
        lo, hi = mins[n], maxs[n]
        if lo == hi:
            s.distinct[n] = 1.0
        elif df.is_integer(et):
            s.distinct[n] = min(rows, hi - lo + 1)
        if df.is_numeric(et) and not df.is_bool(et):
            s.ranges[n] = (lo, hi)
    _FOOTER_CACHE[key] = s
    return s


def ipc_stats(path: str, t: df.TableType) -> Stats | None:
    files = _files(path, (".arrow", ".ipc", ".feather"))
    if not files:
        return None
    import pyarrow as pa
    from pyarrow import ipc

    rows = 0
    try:
        for f in files:
            with pa.memory_map(f) as source:
                rows += ipc.open_file(source).count_rows()
    except (OSError, pa.ArrowInvalid):
        return None
    return _table_stats(t, float(rows))


def csv_stats(path: str, t: df.TableType) -> Stats | None:
    files = _files(path, (".csv",))
    if not files:
        return None
    rows = 0.0
    try:
        for f in files:
            size = os.path.getsize(f)
            with open(f, "rb") as fh:
                sample = fh.read(1 << 16)
            lines = max(sample.count(b"\n"), 1)
            per_line = len(sample) / lines
            rows += max(size / per_line - 1.0, 0.0)  # minus the header line
    except OSError:
        return None
    return _table_stats(t, rows)


# ----------------------------------------------------------------------------- filters


def _const(value: SSAValue) -> float | None:
    owner = value.owner
    if isinstance(owner, Operation) and owner.name == "arith.constant":
        attr = owner.properties.get("value")
        if attr is None:  # (attributes may be falsy: IntegerAttr(0) is)
            attr = owner.attributes.get("value")
        if isinstance(attr, IntegerAttr | FloatAttr):
            return float(attr.value.data)
    return None


def _column(value: SSAValue) -> str | None:
    owner = value.owner
    if isinstance(owner, df.ColumnOp):
        return owner.column.data
    return None


_CMPI = {0: "eq", 1: "ne", 2: "lt", 3: "le", 4: "gt", 5: "ge", 6: "lt", 7: "le", 8: "gt", 9: "ge"}
_CMPF = {1: "eq", 2: "gt", 3: "ge", 4: "lt", 5: "le", 6: "ne", 8: "eq", 9: "gt", 10: "ge", 11: "lt", 12: "le", 13: "ne"}
_FLIP = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}


def _cmp_selectivity(pred: str, col: str, c: float, s: Stats) -> float:
    if pred in ("eq", "ne"):
        d = s.d(col)
        eq = 1.0 / d if d else EQ_SELECTIVITY
        return eq if pred == "eq" else 1.0 - eq
    rng = s.ranges.get(col)
    if rng is None or rng[1] <= rng[0]:
        return FILTER_SELECTIVITY
    lo, hi = rng
    below = min(max((c - lo) / (hi - lo), 0.0), 1.0)
    return below if pred in ("lt", "le") else 1.0 - below


def selectivity(value: SSAValue, s: Stats, depth: int = 0) -> float:
    """Estimated fraction of rows for which the boolean expression ``value`` is true."""
    if depth > 32:
        return FILTER_SELECTIVITY
    owner = value.owner
    if not isinstance(owner, Operation):
        return FILTER_SELECTIVITY
    name = owner.name
    c = _const(value)
    if c is not None:
        return 1.0 if c else 0.0
    if name == "arith.andi":
        return selectivity(owner.operands[0], s, depth + 1) * selectivity(owner.operands[1], s, depth + 1)
    if name == "arith.ori":
        a, b = selectivity(owner.operands[0], s, depth + 1), selectivity(owner.operands[1], s, depth + 1)
        return a + b - a * b
    if name == "arith.xori":
        for x, y in ((owner.operands[0], owner.operands[1]), (owner.operands[1], owner.operands[0])):
            if _const(y) == 1.0:
                return 1.0 - selectivity(x, s, depth + 1)
        return FILTER_SELECTIVITY
    if name in ("arith.cmpi", "arith.cmpf"):
        pattr = owner.properties.get("predicate")
        if pattr is None:
            pattr = owner.attributes.get("predicate")
        code = pattr.value.data if isinstance(pattr, IntegerAttr) else -1
        pred = (_CMPI if name == "arith.cmpi" else _CMPF).get(code)
        if pred is None:
            return 1.0 if (name == "arith.cmpf" and code == 15) else (0.0 if code == 0 and name == "arith.cmpf" else FILTER_SELECTIVITY)
        a, b = owner.operands[0], owner.operands[1]
        col, cv = _column(a), _const(b)
        if col is None or cv is None:
            col, cv, pred = _column(b), _const(a), _FLIP[pred]
        if col is None:
            return EQ_SELECTIVITY if pred == "eq" else (1 - EQ_SELECTIVITY if pred == "ne" else FILTER_SELECTIVITY)
        if cv is None:
            cv = math.nan
            if pred not in ("eq", "ne"):
                return FILTER_SELECTIVITY
        return _cmp_selectivity(pred, col, cv, s)
    if name == "df.str_cmp":
        pred = owner.predicate.data  # type: ignore[attr-defined]
        col = _column(owner.operands[0]) or _column(owner.operands[1])
        if pred in ("eq", "ne") and col is not None:
            return _cmp_selectivity(pred, col, 0.0, s)
        return FILTER_SELECTIVITY
    if name == "df.isin":
        col = _column(owner.operands[0])
        k = len(owner.values)  # type: ignore[attr-defined]
        d = s.d(col) if col else None
        return min(1.0, k / d) if d else FILTER_SELECTIVITY
    if name == "df.is_null":
        return NULL_SELECTIVITY
    return FILTER_SELECTIVITY


# ----------------------------------------------------------------------------- propagation


def _keyed_distinct(s: Stats, keys: list[str]) -> float:
    prod = 1.0
    for k in keys:
        prod *= s.d_or_default(k)
        if prod >= s.rows:
            break
    return max(1.0, min(prod, s.rows))


def _strs(attr: Any) -> list[str]:
    return [a.data for a in attr] if attr is not None else []


SAMPLE_ROWS = 10_000
"""Rows the tracer samples from an in-memory input to estimate distinct counts."""


def sample_distinct(table: Any, sample_rows: int = SAMPLE_ROWS) -> dict[str, int]:
    """Distinct-count estimates per column of an Arrow table from a seeded random sample of
    ``sample_rows`` rows (no full scan). GEE estimator (Charikar et al. 2000):
    ``sqrt(N/n) * f1 + sum_{j>=2} f_j`` (f_j = values seen j times in the sample), clamped to
    [distinct in the sample, N]; a sample where every value is unique counts as a key (N)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    total = table.num_rows
    if total == 0:
        return {}
    n = min(total, sample_rows)
    # a seeded random sample: evenly spaced rows alias with periodic data (i % k keys)
    rows = np.sort(np.random.default_rng(0).choice(total, n, replace=False)) if n < total else None
    sample = table if rows is None else table.take(rows)
    out: dict[str, int] = {}
    for name, column in zip(sample.column_names, sample.columns):
        try:
            counts = pc.value_counts(column).field("counts").to_numpy()
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError):  # no hash kernel (nested types)
            continue  # distinct count stays unknown
        seen = len(counts)
        once = int((counts == 1).sum())
        if n == total:
            estimate = seen
        elif once == n:
            estimate = total
        else:
            estimate = math.sqrt(total / n) * once + (seen - once)
        out[name] = int(min(max(estimate, seen), total))
    return out


def _int_attr(op: Operation, name: str) -> float | None:
    a = op.attributes.get(name)
    return float(a.value.data) if isinstance(a, IntegerAttr) else None


def estimate(op: Operation, ins: list[Stats | None]) -> Stats:
    """Statistics of ``op``'s (first) result — or, for sinks, of what it writes."""
    name = op.name
    res_t = op.results[0].type if op.results else None
    first = next((s for s in ins if s is not None), None)

    if isinstance(op, df.InputOp):
        rows = _int_attr(op, ROWS_ATTR)
        s = _table_stats(res_t, rows if rows is not None else DEFAULT_ROWS)  # type: ignore[arg-type]
        nb = _int_attr(op, BYTES_ATTR)
        if nb is not None and s.rows > 0 and s.widths:
            scale = nb / max(s.bytes, 1.0)
            s.widths = {k: v * scale for k, v in s.widths.items()}
        sampled = op.attributes.get(DISTINCT_ATTR)  # the tracer's sample estimate
        if isinstance(sampled, DictionaryAttr):
            for column, value in sampled.data.items():
                if isinstance(value, IntegerAttr):
                    s.distinct[column] = float(value.value.data)
        return s
    if isinstance(op, df.ReadParquetOp | df.ReadIpcOp | df.ReadCsvOp):
        path = op.path.data
        cols = _strs(op.columns) if op.columns is not None else None
        if isinstance(op, df.ReadParquetOp):
            s = parquet_stats(path, res_t, cols)  # type: ignore[arg-type]
        elif isinstance(op, df.ReadIpcOp):
            s = ipc_stats(path, res_t)  # type: ignore[arg-type]
        else:
            s = csv_stats(path, res_t)  # type: ignore[arg-type]
        return s if s is not None else _table_stats(res_t, DEFAULT_ROWS)  # type: ignore[arg-type]
    if first is None:
        if isinstance(res_t, df.TableType):
            return _table_stats(res_t, 1.0 if name.startswith("dl.") else DEFAULT_ROWS)
        if res_t is not None:
            return Stats(1.0, nbytes=tensor_bytes(res_t, 1.0))
        return Stats(0.0)
    if not op.results:  # sinks: what they write
        return first
    if isinstance(op, df.FilterOp):
        yielded = df.region_results(op.predicate)
        sel = selectivity(yielded[0], first) if yielded else FILTER_SELECTIVITY
        return _carry(first, res_t, first.rows * sel)  # type: ignore[arg-type]
    if isinstance(op, df.RenameOp):
        return _carry(first, res_t, first.rows, dict(zip(_strs(op.old_names), _strs(op.new_names))))  # type: ignore[arg-type]
    if isinstance(op, df.MapOp):
        s = _carry(first, res_t, first.rows)  # type: ignore[arg-type]
        for n in _strs(op.names):  # assigned columns: fresh values
            s.distinct.pop(n, None)
            s.ranges.pop(n, None)
        return s
    if isinstance(op, df.WindowOp):
        s = _carry(first, res_t, first.rows)  # type: ignore[arg-type]
        s.distinct.pop(op.output.data, None)
        s.ranges.pop(op.output.data, None)
        return s
    if isinstance(op, df.JoinOp):
        left, right = ins[0] or first, ins[1] or first
        lk, rk = _strs(op.left_on), _strs(op.right_on)
        dl_ = [left.d(k) for k in lk]
        dr_ = [right.d(k) for k in rk]
        if all(v is not None for v in dl_ + dr_):
            dlk = min(math.prod(dl_), max(left.rows, 1.0))  # type: ignore[arg-type]
            drk = min(math.prod(dr_), max(right.rows, 1.0))  # type: ignore[arg-type]
            inner = left.rows * right.rows / max(dlk, drk, 1.0)
        else:
            inner = max(left.rows, right.rows)
        how = op.how.data
        rows = {
            "inner": inner,
            "left": max(inner, left.rows),
            "right": max(inner, right.rows),
            "outer": max(inner, left.rows + right.rows - inner),
        }.get(how, inner)
        merged = Stats(rows, {**right.widths, **left.widths}, {**right.distinct, **left.distinct},
                       {**right.ranges, **left.ranges})
        for a, b in zip(lk, rk):
            da, db = left.d(a), right.d(b)
            if da is not None and db is not None:
                merged.distinct[a] = min(da, db) if how == "inner" else max(da, db)
        sx, sy = _strs(op.suffixes)
        # suffixed columns: look their statistics up under the unsuffixed name
        out = Stats(rows)
        for n, et, _ in res_t.columns:  # type: ignore[union-attr]
            base = n
            for sfx, src in ((sx, left), (sy, right)):
                if sfx and n.endswith(sfx) and n[: -len(sfx)] in src.widths:
                    base = n[: -len(sfx)]
                    out.widths[n] = src.widths[base]
                    if base in src.distinct:
                        out.distinct[n] = min(src.distinct[base], max(rows, 1.0))
                    break
            else:
                out.widths[n] = merged.widths.get(n, width_of(et))
                if n in merged.distinct:
                    out.distinct[n] = min(merged.distinct[n], max(rows, 1.0))
                if n in merged.ranges:
                    out.ranges[n] = merged.ranges[n]
        return out
    if isinstance(op, df.GroupByAggOp):
        keys = _strs(op.keys)
        rows = _keyed_distinct(first, keys)
        s = _carry(first, res_t, rows)  # type: ignore[arg-type]
        for n, _, _ in df.agg_tuples(op.aggs):
            s.distinct.pop(n, None)
            s.ranges.pop(n, None)
        return s
    if isinstance(op, df.DistinctOp):
        keys = _strs(op.subset) if op.subset is not None else res_t.column_names  # type: ignore[union-attr]
        return _carry(first, res_t, _keyed_distinct(first, keys))  # type: ignore[arg-type]
    if isinstance(op, df.AggregateOp):
        return _table_stats(res_t, 1.0)  # type: ignore[arg-type]
    if isinstance(op, df.HeadOp):
        return _carry(first, res_t, min(float(op.n.value.data), first.rows))  # type: ignore[arg-type]
    if isinstance(op, df.ConcatOp | df.UnionOp | df.IntersectOp | df.DifferenceOp):
        left, right = ins[0] or first, ins[1] or first
        if isinstance(op, df.ConcatOp):
            rows = left.rows + right.rows
        elif isinstance(op, df.UnionOp):
            both = Stats(left.rows + right.rows, left.widths, {
                k: left.distinct.get(k, 0) + right.distinct.get(k, 0)
                for k in set(left.distinct) & set(right.distinct)
            })
            rows = _keyed_distinct(both, res_t.column_names)  # type: ignore[union-attr]
        elif isinstance(op, df.IntersectOp):
            rows = min(left.rows, right.rows) / 2
        else:
            rows = left.rows / 2
        s = _carry(left, res_t, rows)  # type: ignore[arg-type]
        if isinstance(op, df.ConcatOp | df.UnionOp):
            for k in list(s.distinct):
                s.distinct[k] = min(left.distinct.get(k, 0) + right.distinct.get(k, 0) or s.distinct[k], max(rows, 1))
        return s
    if name == "dl.to_tensor":
        return Stats(first.rows, nbytes=tensor_bytes(res_t, first.rows))  # type: ignore[arg-type]
    if name == "dl.to_table":
        return _table_stats(res_t, first.rows)  # type: ignore[arg-type]
    if name == "dl.predict":
        return Stats(first.rows, nbytes=tensor_bytes(res_t, first.rows))  # type: ignore[arg-type]
    if name == "dl.train":
        params = ins[2] if len(ins) > 2 and ins[2] is not None else None
        nb = params.bytes if params is not None else tensor_bytes(res_t, 1.0)  # type: ignore[arg-type]
        return Stats(1.0, nbytes=nb)
    if name == "dl.sweep":
        grid = op.attributes.get("grid")
        points = 1
        if isinstance(grid, DictionaryAttr):
            for v in grid.data.values():
                points *= len(v) if isinstance(v, ArrayAttr) else 1
        return _table_stats(res_t, float(points))  # type: ignore[arg-type]
    # project, drop, sort, comm.*, taskgraph.transfer, unknown ops: same rows, own schema
    if isinstance(res_t, df.TableType):
        return _carry(first, res_t, first.rows)
    if res_t is not None:
        return Stats(first.rows, nbytes=tensor_bytes(res_t, first.rows))
    return first


def _i64(v: float) -> IntegerAttr:
    if not math.isfinite(v):
        v = _MAX_I64
    return fast_i64(int(min(max(round(v), 0), _MAX_I64)))


def _distinct_attr(distinct: dict[str, float]) -> DictionaryAttr:
    key = tuple(sorted((k, int(min(max(round(v), 0), _MAX_I64))) for k, v in distinct.items()))
    a = _DICT_CACHE.get(key)
    if a is None:
        a = DictionaryAttr({k: fast_i64(v) for k, v in key})
        if len(_DICT_CACHE) < 1 << 14:
            _DICT_CACHE[key] = a
    return a


def annotate(module: ModuleOp) -> dict[SSAValue, Stats]:
    """Computes statistics of every dataflow value and writes the attributes; returns the
    statistics of each op's first result (sinks: keyed by their input value)."""
    stats: dict[SSAValue, Stats] = {}
    for op in dataflow_ops(module):
        ins = [stats.get(v) for v in op.operands]
        s = estimate(op, ins)
        if op.results:
            for r in op.results:
                stats.setdefault(r, s)
        op.attributes[ROWS_ATTR] = _i64(s.rows)
        op.attributes[BYTES_ATTR] = _i64(s.bytes)
        if s.distinct:
            op.attributes[DISTINCT_ATTR] = _distinct_attr(s.distinct)
        else:
            op.attributes.pop(DISTINCT_ATTR, None)
    return stats


class AnnotateStatistics(ModulePass):
    """Writes estimated ``df.rows``/``df.bytes``/``df.distinct`` on every dataflow op from
    Parquet/IPC/CSV metadata and table inputs (see the module docstring for the defaults)."""

    name = "annotate-statistics"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        annotate(op)
