"""Hash and range partitioning of Arrow tables (the local half of a hash shuffle / of the
sample sort's exchange; range: ``range_partition``, C++ ``kernels/ranging``, sharing the
scatter step ``scatter_parts`` below).

Row hashes come from the compiled kernel ``opgraph.runtime.kernels.hashing`` (C++ via
Cython; platform-independent "opgraph-hash-v1", see runtime/kernels/hash_kernels.hpp), so
every process and machine sends a given key to the same partition. A C++ stable counting
sort gives every row its position in partition order; C++ scatter kernels then move each
column's Arrow buffers there in one sequential pass (types they do not cover fall back to
one Arrow ``take``), and the result is cut into zero-copy slices, one per part.
There is deliberately no pure-Python fallback: without the built extension this module
does not import.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

try:
    from opgraph.runtime.kernels import hashing as _hashing
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "opgraph.runtime.partition needs the compiled C++ kernel "
        "'opgraph.runtime.kernels.hashing', which is not built or failed to load "
        f"({exc}). Build it by (re)installing opgraph: `pip install -e .` or "
        "`pip install .` (needs a C++17 compiler; Cython is fetched as a build "
        "dependency). There is no pure-Python fallback."
    ) from exc

__all__ = [
    "HASH_VERSION",
    "group_by_partition",
    "hash_columns",
    "hash_partition",
    "invert_permutation",
    "partition_ids",
    "partition_indices",
    "partition_positions",
    "range_partition",
    "range_partition_supported",
    "scatter_column",
    "scatter_parts",
]

HASH_VERSION: str = _hashing.HASH_VERSION
hash_columns = _hashing.hash_columns
partition_ids = _hashing.partition_ids
group_by_partition = _hashing.group_by_partition
partition_positions = _hashing.partition_positions
invert_permutation = _hashing.invert_permutation
scatter_column = _hashing.scatter_column

_INT32_MAX = 2**31 - 1


def _check_args(table: pa.Table, keys: list[str], nparts: int) -> list[str]:
    if not isinstance(table, pa.Table):
        raise TypeError(f"hash_partition: expected a pyarrow.Table, got {type(table).__name__}")
    if isinstance(keys, str):
        keys = [keys]
    keys = list(keys)
    if not keys:
        raise ValueError("hash_partition: at least one key column is required")
    names = table.column_names
    for k in keys:
        if not isinstance(k, str):
            raise TypeError(f"hash_partition: key names must be str, got {k!r}")
        if k not in names:
            raise KeyError(f"hash_partition: key column {k!r} not in table columns {names}")
    if isinstance(nparts, bool) or not isinstance(nparts, (int, np.integer)):
        raise TypeError(f"hash_partition: nparts must be an int, got {type(nparts).__name__}")
    if not 1 <= nparts <= _hashing.MAX_PARTS:
        raise ValueError(f"hash_partition: nparts must be in [1, {_hashing.MAX_PARTS}], got {nparts}")
    return keys


def partition_indices(table: pa.Table, keys: list[str], nparts: int) -> tuple[np.ndarray, np.ndarray]:
    """Row order grouped by hash partition: (indices, offsets).

    Part p consists of rows ``indices[offsets[p]:offsets[p+1]]`` of ``table`` (ascending).
    indices is int32 when the table has fewer than 2^31 rows, else int64.
    """
    keys = _check_args(table, keys, nparts)
    hashes = _hashing.hash_columns(table, keys)
    pids = _hashing.partition_ids(hashes, nparts)
    del hashes
    idx_dtype = np.int32 if table.num_rows <= _INT32_MAX else np.int64
    return _hashing.group_by_partition(pids, nparts, idx_dtype)


def hash_partition(table: pa.Table, keys: list[str], nparts: int) -> list[pa.Table]:
    """Split ``table`` into ``nparts`` tables by the hash of the ``keys`` columns.

    Every row lands in exactly one part; all rows with equal keys (nulls included: null
    keys hash to one fixed value) land in the same part, on every process and machine.
    Within a part rows keep their input order. Parts share one gathered copy of the data
    (zero-copy slices) and keep the input schema.
    """
    keys = _check_args(table, keys, nparts)
    if nparts == 1:
        return [table]
    idx_dtype = np.int32 if table.num_rows <= _INT32_MAX else np.int64
    # hash -> part id -> destination, fused and in place (one pooled buffer)
    dest, offsets = _hashing.hash_positions(table, keys, nparts, idx_dtype)
    return scatter_parts(table, dest, offsets)


def hash_part_ids(table: pa.Table, keys: list[str], nparts: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row's ``hash_partition`` part (numpy int32) and the rows per part (int64): what
    ``Communicator.alltoallv_by_part`` moves rows by."""
    keys = _check_args(table, keys, nparts)
    return _hashing.hash_part_ids(table, keys, nparts)


def range_part_ids(table: pa.Table, by: list[str], ascending: list[bool], splitters: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Every row's ``range_partition`` part (numpy int32) and the rows per part (int64)."""
    from opgraph.runtime.kernels import ranging as _ranging

    ids = _ranging.part_ids([table.column(b) for b in by], [not a for a in ascending], [splitters.column(b) for b in by])
    return ids, _hashing.part_counts(ids, splitters.num_rows + 1)


def scatter_parts(table: pa.Table, dest: np.ndarray, offsets: np.ndarray) -> list[pa.Table]:
    """``table``'s rows moved to positions ``dest`` (a permutation: every row's place in
    part order, from ``partition_positions`` or ``range_partition_positions``) by the C++
    scatter kernels, cut into the parts ``offsets[p]:offsets[p+1]`` (zero-copy slices of
    one scattered copy; the input schema kept). Types the scatter kernels do not cover are
    gathered with one Arrow ``take`` instead."""
    perm = None
    columns = []
    for col in table.columns:
        out = _hashing.scatter_column(col, dest)
        if out is None:  # a type the scatter kernels do not cover: gather instead
            if perm is None:
                perm = pa.array(_hashing.invert_permutation(dest))
            out = col.take(perm)
        columns.append(out)
    grouped = pa.Table.from_arrays(columns, schema=table.schema)
    nparts = len(offsets) - 1
    return [
        grouped.slice(int(offsets[p]), int(offsets[p + 1] - offsets[p])) for p in range(nparts)
    ]


def range_partition(table: pa.Table, by: list[str], ascending: list[bool], splitters: pa.Table) -> list[pa.Table]:
    """``table``'s rows in ``splitters.num_rows + 1`` parts by key range (the sample sort's
    local step): a row goes to the first part s whose splitter row it sorts at or before
    (keys ``by`` compared lexicographically, each ascending or descending, nulls last, NaN
    after numbers; equal keys share a part), rows after the last splitter to the last part.
    ``splitters`` (columns ``by``, the types of ``table``'s) must be sorted in that order.
    Part ids and positions: the C++ kernel ``kernels/ranging`` (range_kernels.hpp); the
    move: the hash shuffle's scatter kernels (``scatter_parts``). Within a part rows keep
    their input order. Key types: ``range_partition_supported``; others raise TypeError."""
    from opgraph.runtime.kernels import ranging as _ranging

    dest, offsets = _ranging.range_positions(
        [table.column(b) for b in by],
        [not a for a in ascending],
        [splitters.column(b) for b in by],
        np.int32 if table.num_rows <= _INT32_MAX else np.int64,
    )
    return scatter_parts(table, dest, offsets)


def range_partition_supported(types: list[pa.DataType]) -> bool:
    """Whether ``range_partition`` handles keys of these types (integers, floats, bool,
    temporal, string/binary)."""
    from opgraph.runtime.kernels import ranging as _ranging

    return _ranging.supported(types)
