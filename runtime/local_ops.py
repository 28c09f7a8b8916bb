"""The ``df`` operators on one partition (one rank's rows), with the exact output schemas of
``dialects/dataframe.py``'s ``infer_*`` functions: every result is conformed to the schema
recorded in plan.json (column order, names, element types).

What runs where:

* Arrow C++ (via ``pyarrow``) does the heavy lifting wherever it has the kernel: filters,
  ``take``, ``Table.join`` (hash join, on row indices only - see ``join``), ``group_by``
  aggregation (sum/mean/min/max/count/stddev/variance/count_distinct), ``sort_indices``
  (stable), scalar aggregates, casts.
* Own code, and why:
  - join output assembly: Arrow's ``Table.join`` names, orders and coalesces columns its own
    way; we join key columns + row indices and ``take`` the payload, which gives pandas'
    column layout, coalesced ``on=`` keys and suffixes exactly, and works for any payload
    type;
  - ``median``: Arrow only has an approximate (t-digest) grouped median; ours is exact
    (numpy: sort by (group, value), pick the middle), averaging the two middle values like
    pandas/DuckDB;
  - ``intersect``/``difference``: Arrow joins never match null keys, but set operations
    compare nulls as equal (SQL's IS NOT DISTINCT FROM), so they are a ``group_by`` over all
    columns of both inputs with a side tag (groups treat nulls as equal);
  - ``drop_duplicates(subset)`` keeps the first occurrence: ``group_by(subset)`` with the
    minimum row index, then ``take`` in row order;
  - rolling windows, diff, shift: C++ kernels (``kernels/windowing``: van Herk blocks, O(1)
    per row for any window size, reading the halo rows in place); Arrow has no rolling kernels;
  - filters of fixed-width and dictionary columns: a fused C++ kernel (``kernels/filtering``:
    selection and gather of all such columns in one multithreaded pass per row block, no
    index array); Arrow's filter is single-threaded per column and went through a selection
    vector. Strings and nested columns still use Arrow's filter.

Semantics: README "Semantics" (SQL nulls, pandas names). Notable details: aggregates skip
nulls and an all-null (or empty) group gives null except count/size/nunique (0); std/var
use ddof=1 (null for fewer than two values); sort is stable with nulls last in both
directions (NaN sorts after numbers, before nulls, as in Arrow and pandas); rolling windows
use min_periods = k, so a window holding a null gives null (NaN is a value: sums propagate
it, min/max order it above every number, as DuckDB does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from opgraph.runtime.expr_eval import arrow_type, broadcast, eval_region
from opgraph.runtime.kernels import filtering as F
from opgraph.runtime.kernels import grouping as GK
from opgraph.runtime.kernels import opkernels as K

__all__ = [
    "DECOMPOSABLE",
    "aggregate",
    "arrow_schema",
    "concat",
    "concat_tables",
    "conform",
    "difference",
    "distinct",
    "drop",
    "filter_by_mask",
    "filter_table",
    "groupby_agg",
    "head",
    "intersect",
    "join",
    "join_key_types",
    "map_table",
    "project",
    "rename",
    "set_membership",
    "sort",
    "sort_indices",
    "union",
    "window",
    "window_column",
]


# ------------------------------------------------------------------------- schemas


def _col(c: Any, key: str) -> Any:
    return c[key] if isinstance(c, dict) else getattr(c, key)


def arrow_schema(columns: Sequence[Any], nullable: bool = False) -> pa.Schema:
    """The Arrow schema of a plan.json schema (list of {name, type, nullable}). Internal
    tables mark every field nullable (``nullable=False``, the default here, ignores the
    plan's flags): parts on different ranks then always share one schema."""
    return pa.schema(
        [
            pa.field(_col(c, "name"), arrow_type(_col(c, "type")), bool(_col(c, "nullable")) or not nullable)
            for c in columns
        ]
    )


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table``'s columns named by ``schema``, in its order, cast to its types."""
    names = schema.names
    if table.column_names != names:
        table = table.select(names)
    if table.schema.equals(schema, check_metadata=False):
        return table.replace_schema_metadata(None) if table.schema.metadata else table
    arrays = []
    for i, field in enumerate(schema):
        col = table.column(i)
        if col.type != field.type:
            col = _cast_column(col, field.type)
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=schema)


def _cast_column(col: pa.ChunkedArray | pa.Array, to: pa.DataType) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    if col.type == to:
        return col
    return pc.cast(col, to, safe=False)


def concat_tables(tables: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    """Concatenation of tables with the same column names (types conformed to ``schema``)."""
    parts = [conform(t, schema) for t in tables]
    nonempty = [t for t in parts if t.num_rows]
    if nonempty:
        parts = nonempty
    elif parts:
        parts = parts[:1]
    if not parts:
        return schema.empty_table()
    if len(parts) == 1:
        return parts[0]
    return pa.concat_tables(parts)


def empty_like(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


# ---------------------------------------------------------------- row-wise operators


def has_dictionaries(table: pa.Table) -> bool:
    return any(pa.types.is_dictionary(t) for t in table.schema.types)


def decode_dictionaries(table: pa.Table) -> pa.Table:
    """``table`` with every dictionary-encoded column decoded to its value type (sources keep
    string columns dictionary-encoded through row-wise ops; other ops see plain columns)."""
    if not has_dictionaries(table):
        return table
    fields, arrays = [], []
    for f, col in zip(table.schema, table.columns):
        if pa.types.is_dictionary(f.type):
            col = pc.cast(col, f.type.value_type)
            f = f.with_type(f.type.value_type)
        fields.append(f)
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=table.schema.metadata))


def take_column(col: Any, idx_np: np.ndarray, idx: Any = None) -> Any:
    """``col`` gathered by numpy indices (-1 = null): our multithreaded gather for
    fixed-width columns and for a dictionary column's indices (chunks' dictionaries
    unified first); Arrow's take otherwise (``idx``: the same indices as an Arrow array)."""
    t = col.type
    if K.can_take(t):
        out = K.take(col, idx_np)
        if out is not None:
            return out
    elif pa.types.is_dictionary(t) and K.can_take(t.index_type):
        c = col
        if isinstance(c, pa.ChunkedArray):
            if c.num_chunks > 1:
                c = c.unify_dictionaries()
            dictionary = c.chunk(0).dictionary if c.num_chunks else pa.array([], t.value_type)
            indices = pa.chunked_array([ch.indices for ch in c.chunks], type=t.index_type)
        else:
            dictionary, indices = c.dictionary, c.indices
        out = K.take(indices, idx_np)
        if out is not None:
            return pa.DictionaryArray.from_arrays(out, dictionary)
    if idx is None:
        idx = pa.array(idx_np, mask=idx_np < 0) if len(idx_np) and idx_np.min() < 0 else pa.array(idx_np)
    return col.take(idx)


def take_columns(cols: Sequence[Any], idx_np: np.ndarray, idx: Any = None) -> list[Any]:
    """Columns of one length gathered by the same numpy indices (-1 = null): the
    fixed-width and dictionary ones together in one multithreaded pass
    (``kernels/filtering.take_columns``: one bounds check, the indices read once), the
    others (variable-width, nested) with ``take_column`` (Arrow's take)."""
    out: list[Any] = [None] * len(cols)
    native = [i for i, c in enumerate(cols) if F.supported(c.type)]
    if native:
        for i, a in zip(native, F.take_columns([cols[i] for i in native], idx_np)):
            out[i] = a
    for i, c in enumerate(cols):
        if out[i] is None:
            out[i] = take_column(c, idx_np, idx)
    return out


def take_table(table: pa.Table, idx_np: np.ndarray) -> pa.Table:
    """``table``'s rows at numpy indices (no nulls among them), with ``take_columns``; the
    table's types are kept."""
    idx_np = np.ascontiguousarray(idx_np)
    arrays = take_columns(table.columns, idx_np)
    if any(a.type != f.type for a, f in zip(arrays, table.schema)):
        return pa.Table.from_arrays(arrays, names=table.column_names)
    return pa.Table.from_arrays(arrays, schema=table.schema)


#: fewer rows than this: Arrow's filter (the native kernel's fixed cost would dominate)
FILTER_NATIVE_MIN_ROWS = 4096


def filter_table(table: pa.Table, region: Sequence[Any], keep: Sequence[str] | None = None) -> pa.Table:
    """Rows whose predicate is true; null counts as false. ``keep``: only these columns are
    needed downstream (the predicate still sees every column)."""
    (mask,) = eval_region(region, table)
    if keep is not None and list(keep) != table.column_names:
        table = table.select(list(keep))
    if isinstance(mask, pa.Scalar):
        return table if (mask.is_valid and mask.as_py()) else table.slice(0, 0)
    return filter_by_mask(table, mask)


def filter_by_mask(table: pa.Table, mask: Any) -> pa.Table:
    """``table``'s rows where the boolean ``mask`` (Array or ChunkedArray) is true (null =
    false). Fixed-width and dictionary columns go through our fused kernel
    (``kernels/filtering``: selection from the mask words and gather of every such column
    in one multithreaded pass per row block, no index array); the others (strings, binary,
    nested, null type) through Arrow's filter, whose variable-width copy we do not
    duplicate."""
    if (table.num_columns == 0 or table.num_rows < FILTER_NATIVE_MIN_ROWS or not pa.types.is_boolean(mask.type)
            or len(mask) != table.num_rows):
        return table.filter(mask, null_selection_behavior="drop")
    native = [i for i, t in enumerate(table.schema.types) if F.supported(t)]
    if not native:
        return table.filter(mask, null_selection_behavior="drop")
    count, arrays = F.filter_columns(mask, [table.column(i) for i in native])
    if count == table.num_rows:
        return table
    out: list[Any] = list(table.columns)
    for i, a in zip(native, arrays):
        out[i] = a
    if len(native) < table.num_columns:
        done = set(native)
        for i in range(table.num_columns):
            if i not in done:  # variable-width / nested: Arrow's filter
                out[i] = pc.filter(table.column(i), mask, null_selection_behavior="drop")
    return pa.Table.from_arrays(out, schema=table.schema)


def project(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    return table.select(list(columns))


def map_table(table: pa.Table, names: Sequence[str], region: Sequence[Any], schema: pa.Schema) -> pa.Table:
    """pandas ``assign``: an existing name is replaced in place, a new one appended."""
    values = eval_region(region, table)
    if len(values) != len(names):
        raise ValueError(f"df.map: region yields {len(values)} values for {len(names)} names")
    cols = dict(zip(table.column_names, table.columns))
    order = list(table.column_names)
    for name, value in zip(names, values):
        if name not in cols:
            order.append(name)
        cols[name] = broadcast(value, table.num_rows, schema.field(name).type)
    arrays = [cols[n] for n in schema.names]
    if any(pa.types.is_dictionary(a.type) for a in arrays):  # kept-encoded source columns
        schema = pa.schema([f.with_type(a.type) for f, a in zip(schema, arrays)], metadata=schema.metadata)
    return pa.Table.from_arrays(arrays, schema=schema)


def rename(table: pa.Table, old: Sequence[str], new: Sequence[str]) -> pa.Table:
    mapping = dict(zip(old, new))
    return table.rename_columns([mapping.get(n, n) for n in table.column_names])


def drop(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    gone = set(columns)
    return table.select([n for n in table.column_names if n not in gone])


# ---------------------------------------------------------------------------- joins


def _promote(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """numpy-style promotion, as ``dataframe.promote`` (bool < int < float, wider wins)."""
    if a == b:
        return a
    if pa.types.is_floating(a) or pa.types.is_floating(b):
        if pa.types.is_float64(a) or pa.types.is_float64(b):
            return pa.float64()
        other = b if pa.types.is_floating(a) else a
        if pa.types.is_integer(other) and other.bit_width > 16:
            return pa.float64()
        return pa.float32()
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return a if a.bit_width >= b.bit_width else b
    return a


def join_key_types(left: pa.Schema, right: pa.Schema, left_on: Sequence[str], right_on: Sequence[str]) -> list[pa.DataType]:
    """The common type of each key pair: both sides are cast to it before hashing/joining,
    so equal values hash alike and compare equal whatever their widths."""
    return [_promote(left.field(lk).type, right.field(rk).type) for lk, rk in zip(left_on, right_on)]


_JOIN_TYPES = {"inner": "inner", "left": "left outer", "right": "right outer", "outer": "full outer"}

_I64_KEYS = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32())


#: rows compared per step of ``is_identity`` (no index-sized temporaries)
_IDENTITY_BLOCK = 1 << 16


def is_identity(idx: np.ndarray, n: int) -> bool:
    """Whether ``idx`` is ``0, 1, ..., n-1``: an inner join whose every left row matched
    once, probed in left-row order (op_kernels.hpp ``join_sequential_probe``), e.g. facts
    joined to a dimension table; the left columns then need no gather."""
    if len(idx) != n or n <= 0 or idx[0] != 0 or idx[-1] != n - 1:
        return False
    ramp = np.arange(min(n, _IDENTITY_BLOCK), dtype=idx.dtype)
    for start in range(0, n, _IDENTITY_BLOCK):
        block = idx[start : start + _IDENTITY_BLOCK]
        if not np.array_equal(block - start, ramp[: len(block)]):
            return False
    return True


def _index_array(idx: np.ndarray, how: str) -> pa.Array:
    """Arrow indices for ``take``: -1 (no row on this side of an outer match) -> null."""
    if how != "inner" and len(idx) and idx.min() < 0:
        return pa.array(idx, mask=idx < 0)
    return pa.array(idx)


def _join_indices(lkeys: list, rkeys: list, key_types: list, how: str, nl: int, nr: int) -> tuple[Any, Any]:
    """(left row indices, right row indices) of the join's result rows (null where an outer
    join has no row on that side). One integer key: our C++ radix-partitioned hash join
    (kernels/op_kernels.hpp; ~1.5-3x faster than Acero's here and less memory). Otherwise
    Acero's hash join (Arrow C++) on the keys + row numbers."""
    if len(key_types) == 1 and key_types[0] in _I64_KEYS:
        lk = _cast_column(lkeys[0], pa.int64())
        rk = _cast_column(rkeys[0], pa.int64())
        return K.hash_join_i64(lk, rk, how)  # numpy; -1 = no row on that side
    lnames = [f"__k{i}" for i in range(len(lkeys))]
    rnames = [f"__rk{i}" for i in range(len(rkeys))]
    lt = pa.Table.from_arrays([*lkeys, pa.array(np.arange(nl, dtype=np.int64))], names=[*lnames, "__l"])
    rt = pa.Table.from_arrays([*rkeys, pa.array(np.arange(nr, dtype=np.int64))], names=[*rnames, "__r"])
    pairs = lt.join(rt, keys=lnames, right_keys=rnames, join_type=_JOIN_TYPES[how], coalesce_keys=False, use_threads=True)
    return pairs.column("__l"), pairs.column("__r")


def join(
    left: pa.Table,
    right: pa.Table,
    how: str,
    left_on: Sequence[str],
    right_on: Sequence[str],
    schema: pa.Schema,
) -> pa.Table:
    """pandas ``merge``: left columns, then right non-key columns; ``on=`` keys (same name on
    both sides) appear once, coalesced for right/outer joins; null keys never match."""
    if how not in _JOIN_TYPES:
        raise ValueError(f"unknown join kind '{how}'")
    key_types = join_key_types(left.schema, right.schema, left_on, right_on)
    lkeys = [_cast_column(left.column(k), t) for k, t in zip(left_on, key_types)]
    rkeys = [_cast_column(right.column(k), t) for k, t in zip(right_on, key_types)]
    li, ri = _join_indices(lkeys, rkeys, key_types, how, left.num_rows, right.num_rows)
    return join_output(left, right, li, ri, how, left_on, right_on, key_types, schema, lkeys, rkeys)


def join_output(
    left: pa.Table,
    right: pa.Table,
    li: Any,
    ri: Any,
    how: str,
    left_on: Sequence[str],
    right_on: Sequence[str],
    key_types: Sequence[pa.DataType],
    schema: pa.Schema,
    left_keys: Sequence[Any] | None = None,
    right_keys: Sequence[Any] | None = None,
    right_is_borrowed: bool = False,
) -> pa.Table:
    """The join's result table from its row pairs (``li``/``ri``: numpy int64 with -1 = no
    row on that side, or Arrow indices with nulls). ``left_keys``/``right_keys``: the key
    columns already cast to ``key_types``, where the caller has them. ``right`` needs only
    the columns the result takes from it (for inner/left joins not the ``on=`` keys).
    ``right_is_borrowed``: its memory may be reused after this call, so its columns are
    always copied."""
    if isinstance(li, np.ndarray):
        # numpy indices (-1 = null): our multithreaded gather for fixed-width columns
        lnp, rnp = li, ri
        li, ri = _index_array(lnp, how), _index_array(rnp, how)
    else:
        lnp = rnp = None

    def gather(cols: list[Any], idx: Any, idx_np: np.ndarray | None, borrowed: bool = False) -> list[Any]:
        if idx_np is not None and not borrowed and is_identity(idx_np, len(cols[0]) if cols else -1):
            return list(cols)  # every row once, in order (a key-ordered probe): no copy
        if idx_np is not None:  # all of one side's columns in one pass
            return take_columns(cols, idx_np, idx)
        return [c.take(idx) for c in cols]

    merged = {lk: i for i, (lk, rk) in enumerate(zip(left_on, right_on)) if lk == rk}
    coalesce = how in ("right", "outer")
    if left_keys is None:
        left_keys = [_cast_column(left.column(k), t) if k in merged else None for k, t in zip(left_on, key_types)]
    lcols = [left_keys[merged[n]] if n in merged else left.column(n) for n in left.column_names]
    rnames = [n for n in right.column_names if n not in merged]
    rcols = [right.column(n) for n in rnames]
    if coalesce:
        if right_keys is None:
            right_keys = [_cast_column(right.column(k), t) for k, t in zip(right_on, key_types)]
        rcols += [right_keys[merged[n]] for n in left.column_names if n in merged]
    lout = gather(lcols, li, lnp)
    rout = gather(rcols, ri, rnp, right_is_borrowed)
    arrays: list[Any] = []
    rk_pos = len(rnames)
    for name, col in zip(left.column_names, lout):
        if name in merged and coalesce:
            col = pc.coalesce(col, rout[rk_pos])
            rk_pos += 1
        arrays.append(col)
    arrays.extend(rout[: len(rnames)])
    if len(arrays) != len(schema):
        raise ValueError(f"df.join: produced {len(arrays)} columns, the plan's schema has {len(schema)}")
    fields = list(schema)
    for i, (a, f) in enumerate(zip(arrays, schema)):
        if a.type == f.type:
            continue
        if pa.types.is_dictionary(a.type) and a.type.value_type == f.type:
            fields[i] = f.with_type(a.type)  # kept encoded (one-rank join): the executor decodes it where needed
        else:
            arrays[i] = _cast_column(a, f.type)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


# -------------------------------------------------------------------- set operators


def concat(a: pa.Table, b: pa.Table, schema: pa.Schema) -> pa.Table:
    """Union all: a's rows then b's."""
    return concat_tables([a, b], schema)


def distinct(table: pa.Table, subset: Sequence[str] | None = None) -> pa.Table:
    """``drop_duplicates``: one row per distinct ``subset`` value (all columns if None), the
    first occurrence, in first-occurrence order; nulls compare equal."""
    if table.num_rows == 0:
        return table
    cols = list(subset) if subset else table.column_names
    idx = pa.array(np.arange(table.num_rows, dtype=np.int64))
    keyed = pa.Table.from_arrays([*(table.column(c) for c in cols), idx], names=[*(f"__c{i}" for i in range(len(cols))), "__i"])
    firsts = keyed.group_by([f"__c{i}" for i in range(len(cols))], use_threads=False).aggregate([("__i", "min")])
    order = np.sort(firsts.column("__i_min").to_numpy())
    if len(order) == table.num_rows:
        return table
    return table.take(pa.array(order))


def union(a: pa.Table, b: pa.Table, schema: pa.Schema) -> pa.Table:
    return distinct(concat_tables([a, b], schema))


def set_membership(a: pa.Table, b: pa.Table, schema: pa.Schema, keep: str) -> pa.Table:
    """Distinct rows of ``a`` that are (``keep="both"``) or are not (``"left_only"``) rows of
    ``b``; nulls compare equal (SQL INTERSECT / EXCEPT)."""
    a = conform(a, schema)
    b = conform(b, schema)
    names = [f"__c{i}" for i in range(len(schema))]
    tag_a = pa.array(np.zeros(a.num_rows, dtype=np.int8))
    tag_b = pa.array(np.ones(b.num_rows, dtype=np.int8))
    both = pa.concat_tables(
        [
            pa.Table.from_arrays([*a.columns, tag_a], names=[*names, "__t"]),
            pa.Table.from_arrays([*b.columns, tag_b], names=[*names, "__t"]),
        ]
    )
    if both.num_rows == 0:
        return schema.empty_table()
    g = both.group_by(names, use_threads=False).aggregate([("__t", "min"), ("__t", "max")])
    lo, hi = g.column("__t_min"), g.column("__t_max")
    if keep == "both":
        mask = pc.and_(pc.equal(lo, 0), pc.equal(hi, 1))
    else:
        mask = pc.equal(hi, 0)
    out = g.filter(mask)
    return pa.Table.from_arrays([out.column(n) for n in names], schema=schema)


def intersect(a: pa.Table, b: pa.Table, schema: pa.Schema) -> pa.Table:
    return set_membership(a, b, schema, "both")


def difference(a: pa.Table, b: pa.Table, schema: pa.Schema) -> pa.Table:
    return set_membership(a, b, schema, "left_only")


# --------------------------------------------------------------------------- sorting


def _sort_keys_supported() -> bool:
    try:
        pc.SortOptions(sort_keys=[("x", "ascending", "at_end")])
        return True
    except (TypeError, ValueError):
        return False


_PER_KEY_NULLS = _sort_keys_supported()


def sort_indices(table: pa.Table, by: Sequence[str], ascending: Sequence[bool]) -> pa.Array:
    """Stable sort order; nulls last for every key in both directions. Numeric/temporal
    keys: our C++ radix sort (kernels/op_kernels.hpp, ~3-5x faster than Arrow's here);
    strings and other types: Arrow's ``sort_indices``."""
    cols = [table.column(b) for b in by]
    if table.num_rows > 1 and K.sortable([c.type for c in cols]):
        return pa.array(K.sort_indices(cols, [not a for a in ascending]))
    if _PER_KEY_NULLS:
        keys = [(b, "ascending" if a else "descending", "at_end") for b, a in zip(by, ascending)]
        return pc.sort_indices(table, sort_keys=keys)
    keys2 = [(b, "ascending" if a else "descending") for b, a in zip(by, ascending)]
    return pc.sort_indices(table, sort_keys=keys2, null_placement="at_end")


def sort(table: pa.Table, by: Sequence[str], ascending: Sequence[bool]) -> pa.Table:
    if table.num_rows <= 1:
        return table
    cols = [table.column(b) for b in by]
    if len(by) == 1 and table.num_columns == 2:
        # a 64-bit key and one narrow column: sorted as pairs, no gather (kernels/op_kernels.hpp)
        key_at = table.column_names.index(by[0])
        pair = K.sort_carry(cols[0], not ascending[0], table.column(1 - key_at))
        if pair is not None:
            return pa.Table.from_arrays([pair[0], pair[1]] if key_at == 0 else [pair[1], pair[0]], schema=table.schema)
    if K.sortable([c.type for c in cols]):
        order, sorted_key = K.sort_indices(cols, [not a for a in ascending], sorted_key=True)
        if sorted_key is None:
            return take_table(table, order)
        # the one key column comes sorted out of the radix sort: gather only the others
        if table.num_columns == 1:
            return pa.Table.from_arrays([sorted_key], schema=table.schema)
        key_at = table.column_names.index(by[0])
        rest = take_table(table.remove_column(key_at), order)
        return rest.add_column(key_at, table.schema.field(key_at), sorted_key)
    return table.take(sort_indices(table.select(list(by)), by, ascending))


def head(table: pa.Table, n: int) -> pa.Table:
    return table.slice(0, max(0, n))


# ----------------------------------------------------------------------- aggregation

DECOMPOSABLE = ("sum", "mean", "min", "max", "count", "size")


def _agg_input(col: pa.ChunkedArray, fn: str) -> pa.ChunkedArray:
    """The column as the aggregate reads it: sums of ints/bools in int64, of floats in
    float64 (the plan's result types); bools as numbers for mean/std/var/median."""
    t = col.type
    if fn == "sum":
        if pa.types.is_floating(t):
            return _cast_column(col, pa.float64())
        if pa.types.is_integer(t) or pa.types.is_boolean(t):
            return _cast_column(col, pa.int64())
    if fn in ("mean", "std", "var", "median") and (pa.types.is_boolean(t) or pa.types.is_integer(t)):
        return _cast_column(col, pa.float64())
    if fn in ("mean", "std", "var", "median") and pa.types.is_float32(t):
        return _cast_column(col, pa.float64())
    return col


# aggregate name -> (Arrow's aggregate kernel, its options): the semantics of DESIGN §3
ARROW_AGGREGATES = {
    "sum": ("sum", lambda: pc.ScalarAggregateOptions(skip_nulls=True, min_count=1)),
    "mean": ("mean", lambda: pc.ScalarAggregateOptions(skip_nulls=True, min_count=1)),
    "min": ("min", lambda: pc.ScalarAggregateOptions(skip_nulls=True, min_count=1)),
    "max": ("max", lambda: pc.ScalarAggregateOptions(skip_nulls=True, min_count=1)),
    "count": ("count", lambda: pc.CountOptions(mode="only_valid")),
    "size": ("count", lambda: pc.CountOptions(mode="all")),
    "std": ("stddev", lambda: pc.VarianceOptions(ddof=1)),
    "var": ("variance", lambda: pc.VarianceOptions(ddof=1)),
    "nunique": ("count_distinct", lambda: pc.CountOptions(mode="only_valid")),
    "median": ("list", None),
}


def _segment_median(values: pa.Array, offsets: np.ndarray) -> pa.Array:
    """Exact median of each list segment ``values[offsets[i]:offsets[i+1]]`` (nulls skipped;
    an empty or all-null segment gives null)."""
    ngroups = len(offsets) - 1
    vals = values.to_numpy(zero_copy_only=False) if values.null_count == 0 else None
    seg = np.repeat(np.arange(ngroups, dtype=np.int64), np.diff(offsets))
    if vals is None:
        valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
        vals = pc.fill_null(values, 0.0).to_numpy(zero_copy_only=False)[valid]
        seg = seg[valid]
    vals = np.asarray(vals, dtype=np.float64)
    order = np.lexsort((vals, seg))
    vals = vals[order]
    counts = np.bincount(seg, minlength=ngroups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if ngroups else np.zeros(0, dtype=np.int64)
    has = counts > 0
    lo = np.where(has, starts + (counts - 1) // 2, 0)
    hi = np.where(has, starts + counts // 2, 0)
    if len(vals):
        med = (vals[lo] + vals[hi]) / 2.0
    else:
        med = np.zeros(ngroups)
    return pa.array(med, type=pa.float64(), mask=~has)


def grouped_kernel(key_columns: Sequence[Any], columns: Sequence[tuple[Any, str]]) -> tuple[list, list] | None:
    """(key arrays, aggregate arrays) of our C++ hash group-by (``kernels/grouping``) over
    (column, fn) pairs, or None where it does not apply: integer/bool keys, numeric values,
    sum/sum_f/mean/min/max/count/size/var/std (strings, float keys, median, nunique: Acero).
    Measured 3-5x faster than Acero's group_by at 10M rows with 1,000 and 5M distinct keys
    on the 2-core reference machine, so it takes every input it covers. Result types: those
    of the Acero path below before the schema cast (the same column object passed twice is
    read once)."""
    values: list[Any] = []
    index: dict[int, int] = {}
    specs = []
    for col, fn in columns:
        i = index.setdefault(id(col), len(values))
        if i == len(values):
            values.append(col)
        specs.append((i, fn))
    return GK.groupby(list(key_columns), values, specs)


#: how many group-bys grouped a dictionary-encoded key on its indices (tests)
dictionary_key_groupbys = 0


def _dictionary_keys(table: pa.Table, keys: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """The key columns the group-by kernel reads, and per key the dictionary that decodes
    its result (None: a plain key). A dictionary-encoded key (a Parquet string column kept
    encoded by the executor) is grouped on its indices (the kernel's array-indexed path
    instead of hashing strings): the chunks' dictionaries are unified first, and only a
    dictionary without nulls or repeated values qualifies (else two indices could name one
    key); a null index is a null key, so nulls still form one group."""
    cols: list[Any] = []
    dicts: list[Any] = []
    for k in keys:
        col = table.column(k)
        t = col.type
        if pa.types.is_dictionary(t) and pa.types.is_integer(t.index_type):
            c = col.unify_dictionaries() if col.num_chunks > 1 else col
            dictionary = c.chunk(0).dictionary if c.num_chunks else pa.array([], t.value_type)
            if dictionary.null_count == 0 and len(pc.unique(dictionary)) == len(dictionary):
                cols.append(pa.chunked_array([ch.indices for ch in c.chunks], type=t.index_type))
                dicts.append(dictionary)
                continue
            col = pc.cast(col, t.value_type)
        cols.append(col)
        dicts.append(None)
    return cols, dicts


def groupby_agg(table: pa.Table, keys: Sequence[str], aggs: Sequence[Sequence[str]], schema: pa.Schema) -> pa.Table:
    """``groupby(keys).agg(name=(column, fn))``: null keys form one group. Our C++ kernel
    where it applies (``grouped_kernel``; dictionary-encoded keys on their indices,
    ``_dictionary_keys``), Acero's hash group-by otherwise."""
    keys = list(keys)
    if all(fn in GK.FNS for _, _, fn in aggs):
        cols: dict[str, Any] = {}
        key_cols, dicts = _dictionary_keys(table, keys)
        got = None
        if not any(pa.types.is_dictionary(table.column(c).type) for _, c, _ in aggs):
            got = grouped_kernel(key_cols, [(cols.setdefault(c, table.column(c)), fn) for _, c, fn in aggs])
        if got is not None:
            global dictionary_key_groupbys
            dictionary_key_groupbys += any(d is not None for d in dicts)
            gkeys = [k if d is None else d.take(k) for k, d in zip(got[0], dicts)]  # decode the result's keys
            out = [*gkeys, *got[1]]
            return pa.Table.from_arrays([_cast_column(a, f.type) if a.type != f.type else a for a, f in zip(out, schema)], schema=schema)
    table = decode_dictionaries(table)
    key_names = [f"__g{i}" for i in range(len(keys))]
    arrays = [table.column(k) for k in keys]
    names = list(key_names)
    specs = []
    for i, (_, col, fn) in enumerate(aggs):
        arrow_fn, options = ARROW_AGGREGATES[fn]
        arrays.append(_agg_input(table.column(col), fn))
        names.append(f"__a{i}")
        specs.append((f"__a{i}", arrow_fn, options() if options else None))
    work = pa.Table.from_arrays(arrays, names=names)
    result = work.group_by(key_names, use_threads=True).aggregate(specs)
    out = [result.column(k) for k in key_names]
    for i, (_, _, fn) in enumerate(aggs):
        arrow_fn = ARROW_AGGREGATES[fn][0]
        col = result.column(f"__a{i}_{arrow_fn}")
        if fn == "median":
            col = _list_median(col)
        out.append(col)
    return pa.Table.from_arrays([_cast_column(a, f.type) if a.type != f.type else a for a, f in zip(out, schema)], schema=schema)


def _list_median(col: pa.ChunkedArray) -> pa.Array:
    lists = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(lists, pa.ChunkedArray):  # pyarrow < 16 returns a ChunkedArray for lists
        lists = pa.concat_arrays(lists.chunks) if lists.num_chunks else pa.array([], lists.type)
    offsets = lists.offsets.to_numpy()
    values = lists.values
    # the offsets of a sliced list array start past zero: rebase them onto ``values``
    return _segment_median(values, offsets - offsets[0]) if len(offsets) else pa.array([], pa.float64())


def aggregate(table: pa.Table, aggs: Sequence[Sequence[str]], schema: pa.Schema) -> pa.Table:
    """Whole-table aggregation: one row (sum/mean/min/max/std/var/median of an empty or
    all-null column are null; count/size/nunique are 0)."""
    out = []
    for _, col, fn in aggs:
        out.append(pa.array([scalar_aggregate(table.column(col), fn)]))
    return pa.Table.from_arrays(
        [_cast_column(a, f.type) if a.type != f.type else a for a, f in zip(out, schema)], schema=schema
    )


def scalar_aggregate(col: pa.ChunkedArray, fn: str) -> pa.Scalar:
    x = _agg_input(col, fn)
    if fn == "size":
        return pa.scalar(len(x), pa.int64())
    if fn == "count":
        return pa.scalar(len(x) - x.null_count, pa.int64())
    if fn == "nunique":
        return pa.scalar(pc.count_distinct(x, mode="only_valid").as_py(), pa.int64())
    if fn == "sum":
        return pc.sum(x, min_count=1)
    if fn == "mean":
        return pc.mean(x, min_count=1)
    if fn == "min":
        return pc.min(x, min_count=1)
    if fn == "max":
        return pc.max(x, min_count=1)
    if fn == "std":
        return pc.stddev(x, ddof=1, min_count=2)
    if fn == "var":
        return pc.variance(x, ddof=1, min_count=2)
    if fn == "median":
        arr = x.combine_chunks() if isinstance(x, pa.ChunkedArray) else x
        if isinstance(arr, pa.ChunkedArray):
            arr = pa.concat_arrays(arr.chunks) if arr.num_chunks else pa.array([], pa.float64())
        return _segment_median(arr, np.array([0, len(arr)], dtype=np.int64))[0]
    raise ValueError(f"unknown aggregate '{fn}'")


# --------------------------------------------------------------------------- windows


def _kernel_view(arr: Any) -> pa.Array:
    """``arr`` as a type the window kernels read (bool -> uint8, float16 -> float32)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = pc.cast(arr, t.value_type)
        t = arr.type
    if pa.types.is_boolean(t):
        return pc.cast(arr, pa.uint8())
    if pa.types.is_float16(t):
        return pc.cast(arr, pa.float32())
    return arr


def window_column(
    arr: pa.Array | pa.ChunkedArray,
    func: str,
    param: int,
    result_type: pa.DataType,
    pre: pa.Array | pa.ChunkedArray | None = None,
    post: pa.Array | pa.ChunkedArray | None = None,
) -> pa.Array:
    """A window function over ``arr`` in its row order, ``pre``/``post`` being the rows just
    before/after it in the global order (the halo; none = the start/end of the table).
    Rows whose window is incomplete or holds a null are null (min_periods = k). The C++
    kernels of ``kernels/windowing`` read the three segments in place (no concatenation)."""
    from opgraph.runtime.kernels import windowing as W

    arr = W.single(arr)
    if func == "shift":
        src_t = arr.type
        return _cast_column(W.shift(None if pre is None else _cast_column(W.single(pre, src_t), src_t), arr,
                                    None if post is None else _cast_column(W.single(post, src_t), src_t), param),
                            result_type)
    x = _kernel_view(arr)
    t = x.type
    if not W.supported(t):
        raise TypeError(f"cannot compute {func} of a column of type {arr.type}")
    halo = [None if h is None else _cast_column(_kernel_view(W.single(h, arr.type)), t) for h in (pre, post)]
    if func == "diff":
        out = W.diff(halo[0], x, halo[1], param)
    elif func in ("rolling_sum", "rolling_mean", "rolling_min", "rolling_max"):
        out = W.rolling(halo[0], x, func, param)
    else:
        raise ValueError(f"unknown window function '{func}'")
    return _cast_column(out, result_type)


def window(table: pa.Table, func: str, column: str, param: int, output: str, schema: pa.Schema) -> pa.Table:
    result_type = schema.field(output).type
    values = window_column(table.column(column), func, param, result_type)
    return _place(table, output, values, schema)


def _place(table: pa.Table, output: str, values: Any, schema: pa.Schema) -> pa.Table:
    cols = dict(zip(table.column_names, table.columns))
    cols[output] = values
    return pa.Table.from_arrays([cols[n] for n in schema.names], schema=schema)
