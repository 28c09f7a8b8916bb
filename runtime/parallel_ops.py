"""Distributed ``df`` operators over a ``Communicator`` (DESIGN §2's parallel patterns).

Every table is a ``Dist``: this rank's partition plus what is known about how rows are
spread (``Partitioning``). The *global* table is the concatenation of the partitions in
rank order (rank 0 first); its row order is the one ``head`` and windows see, and a sort
leaves rank 0 holding the smallest keys. Every function here is collective: all ranks call
it with their partition, in the same order. With one rank each reduces to the local
operator and makes no communicator call.

Algorithms:

==================  =====================================================================
filter/project/map  local, no communication (partitioning kept unless a key changes)
join                shuffle-hash join: both sides hash-partitioned by their keys (cast to
                    the pair's common type first, so int32 and int64 keys meet) with the
                    C++ kernel ``partition.hash_part_ids`` + ``alltoallv_by_part``; a side
                    already partitioned that way is not moved. Broadcast join (``allgather``
                    of the right side) when asked for and the kind allows (inner/left), or
                    when the right side is already replicated. Node-shared join (ranks of
                    one machine, neither side hash-partitioned yet, inner/left, one integer
                    key whose values span at most 4x the right rows, fixed-width right
                    columns): no shuffle; the right rows' columns are copied into one
                    shared segment (``Communicator.shared_segment``), every rank stores its
                    right rows in one direct-addressed table there (by slot ranges from all
                    right keys when a key came twice), then probes it with its own left rows
                    (C++ ``shared_dense_store``/``shared_dense_build``/``shared_dense_probe``).
groupby_agg         combine-shuffle-reduce: decomposable aggregates (sum, count, size, min,
                    max, mean as sum+count) are pre-aggregated per rank, the partials
                    shuffled by the keys and combined; std/var/median/nunique shuffle the
                    needed raw columns and aggregate once (exact, numerically stable). No
                    shuffle when the input is already hash-partitioned by a subset of keys.
aggregate           partial rows per rank (var/std as count, mean, M2, combined with Chan's
                    formula), gathered to rank 0 and combined; nunique gathers distinct
                    values, median the non-null values. The one-row result lives on rank 0.
distinct, set ops   local distinct (pre-combine), shuffle by the row (or ``subset``), local
                    distinct / membership; receivers concatenate senders in rank order, so
                    "first occurrence" is global.
sort                node-shared sort (ranks of one machine, one numeric/temporal key,
                    fixed-width columns, keys not skewed): no exchange; every rank
                    scatters (radix key, row) pairs of its rows into one shared array
                    bucketed by the key's top bits, the ranks sort the buckets they take
                    from a shared counter, and each gathers its contiguous share (C++
                    ``bucket_hist``/``bucket_scatter``/``sort_buckets``). Otherwise sample
                    sort: a random sample of the keys allgathered, n-1 splitters,
                    each rank gives its rows their part by key range with the C++
                    range-partition kernel (``partition.range_part_ids``; equal keys go to
                    one rank, rows keep their order per sender, which keeps the sort
                    stable), ``alltoallv_by_part``, local stable sort of the received
                    rows. Key types the kernel lacks: local sort first, regular samples,
                    cut of the sorted rows at the splitters. Result ordered across ranks
                    0..n-1 either way.
head                counts allgathered; each rank keeps the prefix of its rows that falls in
                    the first n of the global order (no data moves).
window              halo exchange: each rank gets the rows before/after its range that its
                    windows need - by ``send``/``recv`` with its neighbours when they hold
                    enough rows, otherwise (empty or tiny partitions, halos spanning several
                    ranks) by one ``alltoallv``.
concat              local (no data movement); the global order interleaves the inputs'
                    partitions (row order is unspecified unless the last op is a sort).
==================  =====================================================================
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from opgraph.runtime import local_ops as L
from opgraph.runtime.communicator import Communicator
from opgraph.runtime.kernels import filtering as F
from opgraph.runtime.kernels import opkernels as K
from opgraph.runtime.partition import (
    hash_part_ids,
    range_part_ids,
    range_partition_supported,
)
from opgraph.runtime.partition import range_partition as _range_split

__all__ = [
    "ANY",
    "REPLICATED",
    "Dist",
    "Partitioning",
    "aggregate",
    "concat",
    "distinct",
    "gather_to_root",
    "groupby_agg",
    "head",
    "join",
    "range_partition",
    "scatter_from_root",
    "set_op",
    "shuffle_hash",
    "sort",
    "union",
    "unreplicate",
    "window",
]


@dataclass(frozen=True)
class Partitioning:
    """``any``: rows split in no known way; ``hash``: rows with equal ``keys`` (hashed as
    ``types``) share a rank, the one the kernel's hash picks; ``range``: ordered by ``keys``
    / ``ascending`` across ranks 0..n-1 (a sort's result); ``replicated``: every rank holds
    the whole table."""

    kind: str = "any"
    keys: tuple[str, ...] = ()
    types: tuple[pa.DataType, ...] = ()
    ascending: tuple[bool, ...] = ()

    def hashed_on(self, keys: Sequence[str], types: Sequence[pa.DataType]) -> bool:
        return self.kind == "hash" and self.keys == tuple(keys) and self.types == tuple(types)

    def hashed_within(self, keys: Sequence[str], schema: pa.Schema) -> bool:
        """Rows with equal ``keys`` already share a rank (partitioned by a subset of them)."""
        if self.kind != "hash" or not set(self.keys) <= set(keys):
            return False
        return all(k in schema.names and schema.field(k).type == t for k, t in zip(self.keys, self.types))

    def renamed(self, mapping: dict[str, str]) -> Partitioning:
        if not self.keys:
            return self
        return Partitioning(self.kind, tuple(mapping.get(k, k) for k in self.keys), self.types, self.ascending)

    def survives(self, schema: pa.Schema, changed: Sequence[str] = ()) -> Partitioning:
        """This partitioning for a table with ``schema`` whose columns ``changed`` were
        recomputed: it is lost when a key column is gone, changed or retyped."""
        if self.kind in ("any", "replicated") or not self.keys:
            return self
        for k, t in zip(self.keys, self.types or [None] * len(self.keys)):
            if k in changed or k not in schema.names:
                return ANY
            if t is not None and schema.field(k).type != t:
                return ANY
        return self


ANY = Partitioning()
REPLICATED = Partitioning("replicated")


@dataclass
class Dist:
    """One rank's partition of a table and the table's partitioning."""

    table: pa.Table
    part: Partitioning = field(default=ANY)


# ------------------------------------------------------------------------ timing

#: ``OPGRAPH_MPI_TIMING=1`` (read at import; the MPI ranks inherit it): every rank prints
#: the wall and CPU seconds of the stages below (partition, exchange, local join/sort) on
#: stderr as ``opgraph-mpi-timing: rank R stage NAME wall W cpu C faults F``.
_TIMING = os.environ.get("OPGRAPH_MPI_TIMING") == "1"


@contextmanager
def _stage(comm: Communicator, name: str):
    if not _TIMING:
        yield
        return
    w0, c0, f0 = time.perf_counter(), time.process_time(), _minor_faults()
    try:
        yield
    finally:
        w, c, f = time.perf_counter() - w0, time.process_time() - c0, _minor_faults() - f0
        print(f"opgraph-mpi-timing: rank {comm.rank} stage {name} wall {w:.3f} cpu {c:.3f} faults {f}", file=sys.stderr, flush=True)


def _minor_faults() -> int:
    """Page faults of this process so far: fresh pages are often what a slow stage paid for."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# ------------------------------------------------------------------------ movement


def unreplicate(comm: Communicator, d: Dist) -> Dist:
    """A replicated table as a partitioned one: rank r keeps the r-th contiguous slice (no
    communication, global order kept)."""
    if d.part.kind != "replicated":
        return d
    n, r = comm.size, comm.rank
    rows = d.table.num_rows
    lo, hi = rows * r // n, rows * (r + 1) // n
    return Dist(d.table.slice(lo, hi - lo), ANY)


def _exchange(comm: Communicator, parts: list[pa.Table], schema: pa.Schema) -> pa.Table:
    with _stage(comm, "exchange"):
        received = comm.alltoallv(parts)
        return L.concat_tables(received, schema)


def _exchange_by_part(comm: Communicator, table: pa.Table, part_ids: np.ndarray, counts: np.ndarray) -> pa.Table:
    with _stage(comm, "exchange"):
        return comm.alltoallv_by_part(table, part_ids, counts)


def shuffle_hash(comm: Communicator, table: pa.Table, keys: Sequence[str], types: Sequence[pa.DataType] | None = None) -> pa.Table:
    """Hash-partitions ``table`` by ``keys`` over the ranks (keys cast to ``types`` for
    hashing only; the rows keep their own types). Rows keep their relative order per
    sender, and receivers concatenate senders in rank order."""
    n = comm.size
    if n == 1:
        return table
    keys = list(keys)
    if types is not None and any(table.schema.field(k).type != t for k, t in zip(keys, types)):
        extra = [f"__hk{i}" for i in range(len(keys))]
        work = table
        for name, k, t in zip(extra, keys, types):
            work = work.append_column(name, L._cast_column(table.column(k), t))
        with _stage(comm, "hash-partition"):
            part_ids, counts = hash_part_ids(work, extra, n)
    else:
        with _stage(comm, "hash-partition"):
            part_ids, counts = hash_part_ids(table, keys, n)
    return _exchange_by_part(comm, table, part_ids, counts)


def gather_to_root(comm: Communicator, table: pa.Table, root: int = 0) -> pa.Table:
    """Every rank's rows, in rank order, on ``root``; an empty table elsewhere."""
    if comm.size == 1:
        return table
    parts = comm.gather(table, root)
    if comm.rank == root:
        return L.concat_tables(parts or [], table.schema)
    return table.schema.empty_table()


def scatter_from_root(comm: Communicator, table: pa.Table | None, schema: pa.Schema, root: int = 0) -> pa.Table:
    """The root's rows as contiguous slices, one per rank (global order kept)."""
    n = comm.size
    if n == 1:
        return table if table is not None else schema.empty_table()
    if comm.rank == root:
        assert table is not None
        rows = table.num_rows
        parts = [table.slice(rows * q // n, rows * (q + 1) // n - rows * q // n) for q in range(n)]
    else:
        parts = [schema.empty_table() for _ in range(n)]
    return _exchange(comm, parts, schema)


def counts_of(comm: Communicator, rows: int) -> np.ndarray:
    """Every rank's row count."""
    if comm.size == 1:
        return np.array([rows], dtype=np.int64)
    return np.concatenate(comm.allgather_array(np.array([rows], dtype=np.int64))).astype(np.int64)


def rebalance(comm: Communicator, table: pa.Table, width: int) -> pa.Table:
    """The global table (the ranks' rows in rank order) re-split into even contiguous slices
    on ranks ``0..width-1``; ranks from ``width`` on end up empty. Global order is kept, so a
    range partitioning survives. Moves nothing when the rows already sit that way."""
    n = comm.size
    if n == 1:
        return table
    width = max(1, min(width, n))
    counts = counts_of(comm, table.num_rows)
    total = int(counts.sum())
    bounds = [total * t // width for t in range(width)] + [total] * (n - width + 1)
    if all(int(counts[t]) == bounds[t + 1] - bounds[t] for t in range(n)):
        return table
    start = int(counts[: comm.rank].sum())
    end = start + table.num_rows
    parts = []
    for t in range(n):
        lo, hi = max(bounds[t], start), min(bounds[t + 1], end)
        parts.append(table.slice(lo - start, hi - lo) if hi > lo else table.slice(0, 0))
    return _exchange(comm, parts, table.schema)


# ------------------------------------------------------------------------------ join


def _env_on(name: str) -> bool:
    """An on/off switch from the environment, on unless 0/false/no/off."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


#: ``OPGRAPH_NODE_SHARED_JOIN=0``: ranks that share one machine's memory shuffle both sides
#: of a join as ranks on different machines do (benchmarks compare the two)
_NODE_SHARED_JOIN = _env_on("OPGRAPH_NODE_SHARED_JOIN")

#: node-shared joins run by this process (tests check which path a join took; "rebuilt":
#: a key came twice, the table was built again by slot ranges)
STATS = {"node_shared_join": 0, "node_shared_join_rebuilt": 0, "node_shared_sort": 0}

#: dense right keys: range at most this many times the right rows (op_kernels.hpp kDenseFactor)
_DENSE_FACTOR = 4
#: each rank's right rows start at a multiple of this in the shared columns, so that its
#: validity bits start on a byte boundary
_ROW_ALIGN = 64


def _fixed_width(t: pa.DataType) -> int:
    """Bytes per value of a fixed-width type the shared columns can hold (0: none)."""
    if pa.types.is_boolean(t) or pa.types.is_dictionary(t) or not F.supported(t):
        return 0
    try:
        bits = t.bit_width
    except ValueError:
        return 0
    return bits // 8 if bits % 8 == 0 else 0


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _shared_pieces(comm: Communicator, sizes: Sequence[int]) -> list[np.ndarray] | None:
    """One shared segment (``Communicator.shared_segment``) cut into pieces of these byte
    sizes, each 64-byte aligned; None where the ranks share no memory. Collective."""
    offsets, size = [], 0
    for nbytes in sizes:
        offsets.append(size)
        size += _round_up(nbytes, 64)
    memory = comm.shared_segment(size)
    if memory is None:
        return None
    return [memory[o : o + n] for o, n in zip(offsets, sizes)]


def _node_shared_join(
    comm: Communicator,
    left: pa.Table,
    right: pa.Table,
    how: str,
    left_on: Sequence[str],
    right_on: Sequence[str],
    key_types: Sequence[pa.DataType],
    schema: pa.Schema,
) -> pa.Table | None:
    """The join of ranks that share one machine's memory, without a shuffle: every rank
    copies its right rows' output columns into a shared segment and stores its right rows'
    numbers in one direct-addressed table there (C++ ``shared_dense_store``). That is the
    table when no key came twice (filled slots = stored rows); else each rank copies its
    keys there too and fills its share of the slots from every rank's keys, chaining the
    rows of a key in order (``shared_dense_build``: disjoint slot ranges, plain stores).
    Then each rank probes the table with its own left rows and gathers the matching right
    values (DuckDB's "perfect hash join", built by all ranks at once). For one integer key
    whose values span at most 4x the right rows (ids, dimension keys), inner/left joins and
    fixed-width right columns; otherwise (or when the ranks are on different machines)
    None: the caller shuffles. Collective; every rank decides alike."""
    if not _NODE_SHARED_JOIN or how not in ("inner", "left") or len(key_types) != 1 or key_types[0] not in L._I64_KEYS:
        return None
    merged = {lk for lk, rk in zip(left_on, right_on) if lk == rk}
    rnames = [n for n in right.column_names if n not in merged]
    widths = [_fixed_width(right.schema.field(n).type) for n in rnames]
    if not all(widths):
        return None
    rkeys = L._cast_column(L._cast_column(right.column(right_on[0]), key_types[0]), pa.int64())
    bounds = pc.min_max(rkeys)
    lo_key, hi_key = bounds["min"].as_py(), bounds["max"].as_py()
    mine = [right.num_rows, np.iinfo(np.int64).max if lo_key is None else lo_key, np.iinfo(np.int64).min if hi_key is None else hi_key]
    mine += [right.column(c).null_count > 0 for c in rnames]
    info = np.stack(comm.allgather_array(np.array(mine, dtype=np.int64)))
    rows, lows, highs = info[:, :3].T.tolist()
    nulls = info[:, 3:].astype(bool).any(axis=0)  # per right column: some rank has nulls in it
    key_min, key_max, total = min(lows), max(highs), sum(rows)
    padded = [_round_up(int(r), _ROW_ALIGN) for r in rows]
    if key_min > key_max or key_max - key_min >= _DENSE_FACTOR * total or sum(padded) >= 2**31 - 1:
        return None  # no keys, sparse keys, or row numbers beyond int32
    cap = key_max - key_min + 1
    n_pad = sum(padded)
    starts = np.concatenate([[0], np.cumsum(padded)[:-1]]).astype(np.int64)
    row0 = int(starts[comm.rank])
    # layout: head (int32 per key), chain (int32 per row), keys (int64 per row), per right
    # column its values and (when some rank has nulls in it: the gather then reads them)
    # validity bits
    pieces = _shared_pieces(
        comm, [cap * 4, n_pad * 4, n_pad * 8] + [x for w, null in zip(widths, nulls) for x in (n_pad * w, n_pad // 8 if null else 0)]
    )
    if pieces is None:
        return None
    STATS["node_shared_join"] += 1
    head, chain, keys = pieces[0].view(np.int32), pieces[1].view(np.int32), pieces[2].view(np.int64)
    slot_lo, slot_hi = cap * comm.rank // comm.size, cap * (comm.rank + 1) // comm.size
    with _stage(comm, "node-shared-join:copy-in"):
        shared_columns = []
        for c, name in enumerate(rnames):
            bits = pieces[4 + 2 * c] if nulls[c] else None
            shared_columns.append(_share_column(right.column(name), pieces[3 + 2 * c], bits, row0, n_pad))
        head[slot_lo:slot_hi] = -1
        comm.barrier()  # every slot empty, every rank's columns in place
    with _stage(comm, "node-shared-join:build"):
        # first as if no key came twice (the usual dimension table): every rank stores
        # its own rows; the filled slots then tell whether that held
        stored = K.shared_dense_store(rkeys, row0, key_min, head)
        comm.barrier()
        filled = K.count_filled_slots(head, slot_lo, slot_hi)
        stored_all, filled_all = comm.allreduce(np.array([stored, filled], dtype=np.int64), "sum").tolist()
        any_dup = filled_all != stored_all
        if any_dup:  # every rank fills its own slots from every rank's keys, rows chained in order
            STATS["node_shared_join_rebuilt"] += 1
            outside = key_min - 1 if key_min > np.iinfo(np.int64).min else key_max + 1  # null keys: no slot
            own_keys = rkeys.fill_null(outside) if rkeys.null_count else rkeys
            keys[row0 : row0 + right.num_rows] = own_keys.to_numpy()
            chain[row0 : row0 + right.num_rows] = -1
            comm.barrier()  # every rank's keys are in place, nobody still counts
            K.shared_dense_build(keys, starts, rows, key_min, head, chain, slot_lo, slot_hi)
            comm.barrier()  # the table is complete
    with _stage(comm, "node-shared-join:probe"):
        lkey = L._cast_column(left.column(left_on[0]), key_types[0])
        li, ri = K.shared_dense_probe(L._cast_column(lkey, pa.int64()), key_min, head, chain, not any_dup, how)
    with _stage(comm, "node-shared-join:output"):
        shared_right = pa.Table.from_arrays(shared_columns, names=rnames)
        out = L.join_output(left, shared_right, li, ri, how, left_on, right_on, key_types, schema, [lkey], right_is_borrowed=True)
        comm.barrier()  # every rank has copied what it needs out of the segment
    return out


def _share_column(column: pa.ChunkedArray, values: np.ndarray, bits: np.ndarray | None, row0: int, n_pad: int) -> pa.Array:
    """This rank's rows of a fixed-width column copied into its shared pieces (``values``,
    and ``bits`` where some rank has nulls in the column) from global row ``row0``, a
    multiple of 8; returns the whole shared column (``n_pad`` rows, every rank's) as an
    Arrow array over that memory."""
    t = column.type
    w = _fixed_width(t)
    _copy_fixed_width(column, values[row0 * w :], None if bits is None else bits[row0 // 8 :], w)
    validity = None if bits is None else pa.py_buffer(bits)
    return pa.Array.from_buffers(t, n_pad, [validity, pa.py_buffer(values)], null_count=0 if bits is None else -1)


def _copy_fixed_width(column: pa.ChunkedArray, values: np.ndarray, bits: np.ndarray | None, width: int) -> None:
    """A fixed-width column's values and validity bits into byte arrays (values from byte
    0, bits from bit 0; ``bits`` None: the column has no nulls, none are written)."""
    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(arr)
    if n == 0:
        return
    data = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=n * width, offset=arr.offset * width)
    values[: n * width] = data
    if bits is None:
        return
    if arr.null_count == 0:
        bits[: (n + 7) // 8] = 0xFF
    else:
        valid = np.packbits(arr.is_valid().to_numpy(zero_copy_only=False), bitorder="little")
        bits[: len(valid)] = valid


def join(
    comm: Communicator,
    left: Dist,
    right: Dist,
    how: str,
    left_on: Sequence[str],
    right_on: Sequence[str],
    schema: pa.Schema,
    broadcast: bool = False,
) -> Dist:
    key_types = L.join_key_types(left.table.schema, right.table.schema, left_on, right_on)
    same_names = all(lk == rk for lk, rk in zip(left_on, right_on))
    out_part = Partitioning("hash", tuple(left_on), tuple(key_types)) if same_names else ANY
    if comm.size == 1:
        with _stage(comm, "local-join"):
            return Dist(L.join(left.table, right.table, how, left_on, right_on, schema), out_part)
    # both replicated (e.g. two broadcast inputs): every rank joins the whole tables
    if right.part.kind == "replicated" and left.part.kind == "replicated":
        return Dist(L.join(left.table, right.table, how, left_on, right_on, schema), REPLICATED)
    # a replicated side (the compiler's comm.broadcast before a "broadcast-right" join)
    # joins with the other side's partitions where the kind allows it: no shuffle
    if right.part.kind == "replicated" and left.part.kind != "replicated" and how in ("inner", "left"):
        return Dist(L.join(left.table, right.table, how, left_on, right_on, schema), ANY)
    if left.part.kind == "replicated" and right.part.kind != "replicated" and how in ("inner", "right"):
        out = L.join(left.table, right.table, how, left_on, right_on, schema)
        return Dist(out, ANY)
    left, right = unreplicate(comm, left), unreplicate(comm, right)
    if broadcast and how in ("inner", "left"):
        full_right = L.concat_tables(comm.allgather(right.table), right.table.schema)
        out = L.join(left.table, full_right, how, left_on, right_on, schema)
        return Dist(out, ANY)
    left_hashed, right_hashed = left.part.hashed_on(left_on, key_types), right.part.hashed_on(right_on, key_types)
    if not (left_hashed and right_hashed):
        out = _node_shared_join(comm, left.table, right.table, how, left_on, right_on, key_types, schema)
        if out is not None:
            return Dist(out, ANY)
    lt = left.table if left_hashed else shuffle_hash(comm, left.table, left_on, key_types)
    rt = right.table if right_hashed else shuffle_hash(comm, right.table, right_on, key_types)
    with _stage(comm, "local-join"):
        return Dist(L.join(lt, rt, how, left_on, right_on, schema), out_part)


# ------------------------------------------------------------------------- group by


def _partial_specs(aggs: Sequence[Sequence[str]]) -> list[tuple[str, str, str, str]]:
    """(partial column, input column, local fn, combine fn) per partial of each aggregate."""
    specs = []
    for i, (_, col, fn) in enumerate(aggs):
        if fn == "mean":
            specs.append((f"__p{i}_s", col, "sum_f", "sum"))
            specs.append((f"__p{i}_c", col, "count", "sum"))
        elif fn in ("count", "size"):
            specs.append((f"__p{i}", col, fn, "sum"))
        else:  # sum, min, max
            specs.append((f"__p{i}", col, fn, fn))
    return specs


# partial aggregates: the local kernels' own, plus a float sum (mean's numerator)
_LOCAL_FN = {fn: L.ARROW_AGGREGATES[fn] for fn in ("sum", "min", "max", "count", "size")}
_LOCAL_FN["sum_f"] = L.ARROW_AGGREGATES["sum"]


def _partial_input(col: pa.ChunkedArray, fn: str) -> pa.ChunkedArray:
    if fn == "sum_f":
        return L._cast_column(col, pa.float64())
    if fn == "sum":
        return L._agg_input(col, "sum")
    return col


def _grouped(table: pa.Table, keys: list[str], columns: list[tuple[str, pa.ChunkedArray, str]]) -> pa.Table:
    """group_by(keys) with one Arrow aggregate per (output name, input, fn); returns keys
    then outputs, named as given. Our C++ kernel where it applies (``L.grouped_kernel``)."""
    got = L.grouped_kernel([table.column(k) for k in keys], [(arr, fn) for _, arr, fn in columns])
    if got is not None:
        return pa.Table.from_arrays([*got[0], *got[1]], names=[*keys, *(c[0] for c in columns)])
    key_names = [f"__g{i}" for i in range(len(keys))]
    arrays = [table.column(k) for k in keys]
    names = list(key_names)
    specs = []
    for j, (_, arr, fn) in enumerate(columns):
        arrow_fn, options = _LOCAL_FN[fn]
        arrays.append(arr)
        names.append(f"__x{j}")
        specs.append((f"__x{j}", arrow_fn, options()))
    result = pa.Table.from_arrays(arrays, names=names).group_by(key_names, use_threads=True).aggregate(specs)
    out = [result.column(k) for k in key_names]
    out += [result.column(f"__x{j}_{_LOCAL_FN[fn][0]}") for j, (_, _, fn) in enumerate(columns)]
    return pa.Table.from_arrays(out, names=[*keys, *(c[0] for c in columns)])


def groupby_agg(comm: Communicator, d: Dist, keys: Sequence[str], aggs: Sequence[Sequence[str]], schema: pa.Schema) -> Dist:
    keys = list(keys)
    d = unreplicate(comm, d)
    table = d.table
    out_part = Partitioning("hash", tuple(keys), tuple(table.schema.field(k).type for k in keys))
    if comm.size == 1 or d.part.hashed_within(keys, table.schema):
        part = out_part if comm.size == 1 else d.part
        return Dist(L.groupby_agg(table, keys, aggs, schema), part)
    if all(fn in L.DECOMPOSABLE for _, _, fn in aggs):
        specs = _partial_specs(aggs)
        partial = _grouped(table, keys, [(name, _partial_input(table.column(col), fn), fn) for name, col, fn, _ in specs])
        partial = shuffle_hash(comm, partial, keys)
        combined = _grouped(partial, keys, [(name, partial.column(name), comb) for name, _, _, comb in specs])
        out = [combined.column(k) for k in keys]
        for i, (_, _, fn) in enumerate(aggs):
            if fn == "mean":
                s, c = combined.column(f"__p{i}_s"), combined.column(f"__p{i}_c")
                c = pc.if_else(pc.equal(c, 0), pa.scalar(None, pa.int64()), c)
                out.append(pc.divide(s, pc.cast(c, pa.float64())))
            else:
                out.append(combined.column(f"__p{i}"))
        arrays = [L._cast_column(a, f.type) if a.type != f.type else a for a, f in zip(out, schema)]
        return Dist(pa.Table.from_arrays(arrays, schema=schema), out_part)
    needed = list(dict.fromkeys([*keys, *(col for _, col, _ in aggs)]))
    moved = shuffle_hash(comm, table.select(needed), keys)
    return Dist(L.groupby_agg(moved, keys, aggs, schema), out_part)


# ---------------------------------------------------------------- whole-table aggregate


def aggregate(comm: Communicator, d: Dist, aggs: Sequence[Sequence[str]], schema: pa.Schema) -> Dist:
    """One row, on rank 0 (the other ranks hold an empty table)."""
    d = unreplicate(comm, d)
    table = d.table
    if comm.size == 1:
        return Dist(L.aggregate(table, aggs, schema), ANY)
    root = comm.rank == 0
    # one row of partials per rank: scalars for the decomposable parts
    partial_cols: dict[str, Any] = {}
    for i, (_, col, fn) in enumerate(aggs):
        c = table.column(col)
        if fn in ("sum", "min", "max"):
            partial_cols[f"p{i}"] = pa.array([L.scalar_aggregate(c, fn).as_py()], L._agg_input(c, fn).type)
        elif fn in ("count", "size"):
            partial_cols[f"p{i}"] = pa.array([L.scalar_aggregate(c, fn).as_py()], pa.int64())
        elif fn == "mean":
            x = L._cast_column(c, pa.float64())
            partial_cols[f"p{i}_s"] = pa.array([pc.sum(x, min_count=1).as_py()], pa.float64())
            partial_cols[f"p{i}_c"] = pa.array([len(x) - x.null_count], pa.int64())
        elif fn in ("std", "var"):
            # (count, shift, mean of x - shift, M2): the shift (a value of this rank) keeps
            # the means' offsets exact when the values are large relative to their spread
            x = pc.drop_null(L._cast_column(c, pa.float64()))
            cnt = len(x)
            shift = x[0].as_py() if cnt else 0.0
            dx = pc.subtract(x, shift)
            mean = pc.mean(dx).as_py() if cnt else 0.0
            m2 = (pc.variance(dx, ddof=0).as_py() or 0.0) * cnt if cnt else 0.0
            partial_cols[f"p{i}_n"] = pa.array([cnt], pa.int64())
            partial_cols[f"p{i}_c"] = pa.array([shift], pa.float64())
            partial_cols[f"p{i}_m"] = pa.array([mean], pa.float64())
            partial_cols[f"p{i}_q"] = pa.array([m2], pa.float64())
    partials = pa.table(partial_cols) if partial_cols else pa.table({"_": [0]})
    gathered = comm.gather(partials, 0)
    # nunique / median need values, not partials (same calls on every rank, in order)
    values: dict[int, pa.Table] = {}
    for i, (_, col, fn) in enumerate(aggs):
        if fn == "nunique":
            c = table.column(col)
            uniq = pc.unique(c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c)
            values[i] = gather_to_root(comm, pa.table({"v": pc.drop_null(uniq)}))
        elif fn == "median":
            c = L._cast_column(table.column(col), pa.float64())
            values[i] = gather_to_root(comm, pa.table({"v": pc.drop_null(c)}))
    if not root:
        return Dist(schema.empty_table(), ANY)
    p = pa.concat_tables(gathered)  # type: ignore[arg-type]
    out = []
    for i, (_, col, fn) in enumerate(aggs):
        if fn in ("sum", "min", "max"):
            out.append(L.scalar_aggregate(p.column(f"p{i}"), fn))
        elif fn in ("count", "size"):
            out.append(pa.scalar(pc.sum(p.column(f"p{i}")).as_py() or 0, pa.int64()))
        elif fn == "mean":
            s = pc.sum(p.column(f"p{i}_s"), min_count=1).as_py()
            n = pc.sum(p.column(f"p{i}_c")).as_py() or 0
            out.append(pa.scalar(s / n if n and s is not None else None, pa.float64()))
        elif fn in ("std", "var"):
            out.append(pa.scalar(_chan_var(p, i, fn), pa.float64()))
        elif fn == "nunique":
            out.append(pa.scalar(pc.count_distinct(values[i].column("v")).as_py(), pa.int64()))
        elif fn == "median":
            out.append(L.scalar_aggregate(values[i].column("v"), "median"))
    arrays = [L._cast_column(pa.array([s.as_py()], s.type), f.type) for s, f in zip(out, schema)]
    return Dist(pa.Table.from_arrays(arrays, schema=schema), ANY)


def _chan_var(p: pa.Table, i: int, fn: str) -> float | None:
    """Sample variance (ddof=1) from per-rank (count, shift, mean of x - shift, M2) with Chan
    et al.'s combination, the means taken relative to one rank's shift (exact differences
    of nearby floats), so no sum-of-squares cancellation."""
    ns = p.column(f"p{i}_n").to_numpy().astype(np.float64)
    cs = p.column(f"p{i}_c").to_numpy()
    ms = p.column(f"p{i}_m").to_numpy()
    qs = p.column(f"p{i}_q").to_numpy()
    n = ns.sum()
    if n < 2:
        return None
    pivot = cs[np.argmax(ns > 0)]
    offsets = (cs - pivot) + ms
    mean = float((ns * offsets).sum() / n)
    m2 = float(qs.sum() + (ns * (offsets - mean) ** 2).sum())
    var = max(m2, 0.0) / (n - 1)
    return float(np.sqrt(var)) if fn == "std" else var


# ------------------------------------------------------------------ distinct / set ops


def distinct(comm: Communicator, d: Dist, subset: Sequence[str] | None) -> Dist:
    d = unreplicate(comm, d)
    table = d.table
    keys = list(subset) if subset else table.column_names
    out_part = Partitioning("hash", tuple(keys), tuple(table.schema.field(k).type for k in keys))
    if comm.size == 1:
        return Dist(L.distinct(table, subset), out_part)
    if d.part.hashed_within(keys, table.schema):
        return Dist(L.distinct(table, subset), d.part)
    local = L.distinct(table, subset)  # pre-combine: fewer rows to move
    moved = shuffle_hash(comm, local, keys)
    return Dist(L.distinct(moved, subset), out_part)


def union(comm: Communicator, a: Dist, b: Dist, schema: pa.Schema) -> Dist:
    both = concat(comm, a, b, schema)
    return distinct(comm, both, None)


def set_op(comm: Communicator, a: Dist, b: Dist, schema: pa.Schema, keep: str) -> Dist:
    """INTERSECT (``keep="both"``) / EXCEPT (``"left_only"``) with distinct results."""
    a, b = unreplicate(comm, a), unreplicate(comm, b)
    at, bt = L.conform(a.table, schema), L.conform(b.table, schema)
    keys = schema.names
    out_part = Partitioning("hash", tuple(keys), tuple(f.type for f in schema))
    if comm.size == 1:
        return Dist(L.set_membership(at, bt, schema, keep), out_part)
    at = shuffle_hash(comm, L.distinct(at), keys)
    bt = shuffle_hash(comm, L.distinct(bt), keys)
    return Dist(L.set_membership(at, bt, schema, keep), out_part)


def concat(comm: Communicator, a: Dist, b: Dist, schema: pa.Schema) -> Dist:
    if a.part.kind == "replicated" and b.part.kind == "replicated":
        return Dist(L.concat(a.table, b.table, schema), REPLICATED)
    a, b = unreplicate(comm, a), unreplicate(comm, b)
    part = ANY
    if a.part.kind == "hash" and a.part == b.part:
        part = a.part.survives(schema)
    return Dist(L.concat(a.table, b.table, schema), part)


# ----------------------------------------------------------------------------- sort


def _key_class(v: Any) -> int:
    if v is None:
        return 2
    if isinstance(v, float) and math.isnan(v):
        return 1
    return 0


def _row_cmp(ascending: Sequence[bool]):
    """Compares key tuples as Arrow's sort orders them: per key, values in the key's
    direction, then NaN, then null (NaN and null last in both directions)."""

    def cmp(a: tuple, b: tuple) -> int:
        for va, vb, asc in zip(a, b, ascending):
            ca, cb = _key_class(va), _key_class(vb)
            if ca != cb:
                return -1 if ca < cb else 1
            if ca == 0 and va != vb:
                r = -1 if va < vb else 1
                return r if asc else -r
        return 0

    return cmp


def _row(columns: list[pa.Array], i: int) -> tuple:
    return tuple(c[i].as_py() for c in columns)


def _flat(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 1:
            return col.chunk(0)
        return pa.concat_arrays(col.chunks) if col.num_chunks else pa.array([], col.type)
    return col


def _upper_bound(columns: list[pa.Array], rows: int, key: tuple, cmp) -> int:
    """First row index of the sorted ``columns`` that sorts strictly after ``key``."""
    lo, hi = 0, rows
    while lo < hi:
        mid = (lo + hi) // 2
        if cmp(_row(columns, mid), key) <= 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


OVERSAMPLE = 16

#: Random sample rows per rank for the radix sample sort's splitters. A quantile estimated
#: from S samples is off by ~sqrt(q(1-q)/S), so the largest part exceeds the mean by about
#: sqrt(ranks / S) of it: 8192 per rank keeps that near 1% for any rank count (measured on
#: 10M random int64 keys over 2 ranks: 64 per rank gave a 48.1%/51.9% split and rank 1's
#: local sort took 19% longer than rank 0's; 4096 per rank gave 50.0%). The samples are
#: allgathered and sorted: 8192 x ranks rows, a few ms at 16 ranks.
RADIX_SAMPLES_PER_RANK = 8192


def _range_partition_radix(comm: Communicator, table: pa.Table, by: list[str], ascending: list[bool]) -> pa.Table:
    """Sample-sort exchange for keys the range kernel handles (numeric, bool, temporal,
    string/binary) without a local sort first: a seeded random sample of every rank's keys
    is allgathered and sorted, n-1 splitters picked, and the C++ kernel
    (``partition.range_part_ids``) gives every row its part by binary search among the
    splitters (lexicographic, nulls last; equal keys go to one rank); the rows then move
    by part id (``Communicator.alltoallv_by_part``)."""
    n, rows = comm.size, table.num_rows
    s = min(rows, RADIX_SAMPLES_PER_RANK)
    rng = np.random.default_rng(0x5EED + comm.rank)
    pos = np.sort(rng.choice(rows, size=s, replace=False)) if s else np.zeros(0, dtype=np.int64)
    keys = table.select(by)
    sample = keys.take(pa.array(pos, pa.int64())).append_column("__w", pa.array(np.full(s, rows / s if s else 0.0)))
    samples = L.concat_tables(comm.allgather(sample), sample.schema)
    if samples.num_rows == 0:
        return _exchange(comm, [table] + [table.schema.empty_table()] * (n - 1), table.schema)
    samples = samples.take(L.sort_indices(samples.select(by), by, ascending))
    weights = np.cumsum(samples.column("__w").to_numpy())
    picks = [min(int(np.searchsorted(weights, weights[-1] * j / n, side="left")), samples.num_rows - 1) for j in range(1, n)]
    splitters = samples.take(pa.array(picks, pa.int64()))
    with _stage(comm, "range-partition"):
        part_ids, counts = range_part_ids(table, by, ascending, splitters.select(by))
    return _exchange_by_part(comm, table, part_ids, counts)


def split_by_splitters(table: pa.Table, by: Sequence[str], ascending: Sequence[bool], splitters: pa.Table) -> list[pa.Table]:
    """``table``'s rows in ``splitters.num_rows + 1`` parts by key range (the local step of
    the sample sort): the fused C++ kernel ``partition.range_partition`` (part of every row
    by binary search of its key tuple among the sorted splitters: lexicographic, asc/desc
    per key, nulls last, NaN after numbers; rows equal to splitter s go to part s; then the
    hash shuffle's stable counting sort and scatter kernels). Within a part rows keep their
    order. Key types: integers, floats, bool, temporal, string/binary; other types raise
    TypeError (``range_partition`` below sends them through its sort-first path)."""
    by = list(by)
    if not range_partition_supported([table.schema.field(b).type for b in by]):
        raise TypeError(f"split_by_splitters: unsupported key types {[str(table.schema.field(b).type) for b in by]}")
    return _range_split(table, by, list(ascending), splitters.select(by))


def range_partition(comm: Communicator, table: pa.Table, by: Sequence[str], ascending: Sequence[bool]) -> tuple[pa.Table, bool]:
    """Sample-sort exchange: returns (this rank's rows of the key range it owns, whether the
    rows came back as sorted runs). Numeric/bool/temporal/string keys: the C++
    range-partition kernel on unsorted rows (``_range_partition_radix``; runs not sorted).
    Other keys (decimal, dictionary, nested, ...: orders the kernel does not implement):
    local stable sort, weighted regular samples, cut at the splitters by a Python binary
    search comparing ``as_py`` values (sorted runs)."""
    n = comm.size
    by, ascending = list(by), list(ascending)
    if range_partition_supported([table.schema.field(b).type for b in by]):  # same schema on every rank
        return _range_partition_radix(comm, table, by, ascending), False
    local = L.sort(table, by, ascending)
    rows = local.num_rows
    keys = local.select(by)
    # weighted regular sample: s rows, each standing for rows/s rows of this rank
    s = min(rows, OVERSAMPLE * n)
    pos = ((np.arange(s, dtype=np.int64) * 2 + 1) * rows) // (2 * s) if s else np.zeros(0, dtype=np.int64)
    sample = keys.take(pa.array(pos)).append_column("__w", pa.array(np.full(s, rows / s if s else 0.0)))
    samples = pa.concat_tables(comm.allgather(sample))
    if samples.num_rows:
        samples = samples.take(L.sort_indices(samples.select(by), by, ascending))
        weights = np.cumsum(samples.column("__w").to_numpy())
        total = weights[-1]
        picks = [int(np.searchsorted(weights, total * j / n, side="left")) for j in range(1, n)]
        picks = [min(p, samples.num_rows - 1) for p in picks]
        scols = [_flat(samples.column(b)) for b in by]
        splitters = [_row(scols, p) for p in picks]
    else:
        splitters = []
    cmp = _row_cmp(ascending)
    kcols = [_flat(keys.column(b)) for b in by]
    bounds = [0]
    for sp in splitters:
        bounds.append(max(bounds[-1], _upper_bound(kcols, rows, sp, cmp)))
    while len(bounds) < n:
        bounds.append(rows)
    bounds.append(rows)
    parts = [local.slice(bounds[q], bounds[q + 1] - bounds[q]) for q in range(n)]
    return _exchange(comm, parts, table.schema), True


#: ``OPGRAPH_NODE_SHARED_SORT=0``: ranks that share one machine's memory sort by the sample
#: sort's exchange as ranks on different machines do (benchmarks compare the two)
_NODE_SHARED_SORT = _env_on("OPGRAPH_NODE_SHARED_SORT")

#: rows per bucket the node-shared sort aims at (10M rows: 256 buckets). Fewer, larger
#: buckets than the L2 cache would favour: the scatter into 2^10 buckets took 0.048 s for 5M
#: rows against 0.021 s into 2^8 (write streams beyond the TLB's reach, measured here)
_SORT_BUCKET_ROWS = 65536
#: at most 2^12 buckets
_SORT_MAX_BUCKET_BITS = 12


def _node_shared_sort(comm: Communicator, table: pa.Table, by: Sequence[str], ascending: Sequence[bool]) -> pa.Table | None:
    """The sort of ranks that share one machine's memory, in place of the sample sort's
    exchange: every rank scatters the (radix key, global row) pairs of its rows into one
    shared array, bucketed by the top bits of the key's offset from the smallest key (C++
    ``bucket_hist``/``bucket_scatter``; a bucket holds the ranks' rows in rank order, so
    the sort stays stable), and copies its rows' fixed-width columns into the shared
    segment. Every rank then takes buckets from a shared counter and sorts them in cache
    (``sort_buckets``; a rank the machine slows down takes fewer), and finally gathers its
    contiguous share of the order, cut at bucket boundaries (equal keys stay on one rank,
    rank 0 gets the smallest). One narrow column without nulls beside a 64-bit integer key
    rides along in place of the row number (nothing to gather). One sort key of a
    radix-sortable type, fixed-width columns; otherwise (ranks on different machines, or a
    bucket holding more than half a rank's share: skewed keys) None, and the caller runs
    the sample sort. Collective; every rank decides alike."""
    if not _NODE_SHARED_SORT or len(by) != 1:
        return None
    key, desc = by[0], not ascending[0]
    names = table.column_names
    key_type = table.schema.field(key).type
    if len(set(names)) != len(names) or not K.sortable([key_type]):
        return None
    column = table.column(key)
    lowest, highest, any_valid = K.sort_key_range(column, desc)
    mine = np.array([table.num_rows, lowest, highest, any_valid, *(table.column(c).null_count > 0 for c in names)], dtype=np.uint64)
    info = np.stack(comm.allgather_array(mine.view(np.int64))).view(np.uint64)
    rows, nulls = info[:, 0].astype(np.int64), info[:, 4:].astype(bool).any(axis=0)
    total, ranks, rank = int(rows.sum()), comm.size, comm.rank
    key_from_radix = K.radix_gives_values(key_type) and not nulls[names.index(key)]
    gathered = [c for c in names if c != key or not key_from_radix]
    widths = [_fixed_width(table.schema.field(c).type) for c in gathered]
    padded = [_round_up(int(r), _ROW_ALIGN) for r in rows]
    if not all(widths) or sum(padded) >= 2**31 - 1:
        return None
    if total == 0:
        return table
    # one narrow column without nulls next to the key: sorted along with it
    carried = None
    if key_from_radix and len(gathered) == 1 and widths[0] in (4, 8) and not nulls[names.index(gathered[0])]:
        carried = np.dtype(np.int32 if widths[0] == 4 else np.uint64)
    # buckets: the top `bits` of (radix key - the smallest key) over the keys' range (at least
    # 64 buckets a rank, so the cuts between ranks fall near equal shares)
    valid = info[:, 3].astype(bool)
    base = int(info[valid, 1].min()) if valid.any() else 0
    top = (int(info[valid, 2].max()) - base).bit_length() if valid.any() else 0
    bits = min(top, _SORT_MAX_BUCKET_BITS, math.ceil(math.log2(max(total / _SORT_BUCKET_ROWS, 64.0 * ranks))))
    shift, nb = top - bits, 1 << bits
    hist = K.bucket_hist(column, desc, base, shift, nb)  # (threads, nb + 1): nulls in bucket nb
    counts = np.stack(comm.allgather_array(hist.sum(axis=0))).reshape(ranks, nb + 1)
    sizes = counts.sum(axis=0)
    if top and sizes[:nb].max() > max(total / (2 * ranks), 4 * _SORT_BUCKET_ROWS):
        return None  # skewed keys: one bucket would be one rank's unshared work
    bstart = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    # this rank's first position per thread range and bucket: the bucket's start, the lower
    # ranks' rows in it, this rank's lower threads' rows in it
    offsets = bstart[:-1] + counts[:rank].sum(axis=0) + np.cumsum(hist, axis=0) - hist
    # rank r's output: the order's rows [cuts[r], cuts[r + 1]), cut at the bucket boundary
    # nearest an equal share
    cuts = [0]
    for r in range(1, ranks):
        cuts.append(max(cuts[-1], int(bstart[np.abs(bstart - total * r / ranks).argmin()])))
    cuts.append(total)
    n_pad, row0 = sum(padded), sum(padded[:rank])
    # layout: the counter, keys (uint64 per row), row numbers (int32) or the carried values,
    # per gathered column its values and (when some rank has nulls in it) validity bits
    sizes = [8, total * 8, total * (4 if carried is None else carried.itemsize)]
    if carried is None:
        for c, w in zip(gathered, widths):
            sizes += [n_pad * w, n_pad // 8 if nulls[names.index(c)] else 0]
    pieces = _shared_pieces(comm, sizes)
    if pieces is None:
        return None
    STATS["node_shared_sort"] += 1
    with _stage(comm, "node-shared-sort:scatter"):
        counter, keys = pieces[0].view(np.int64), pieces[1].view(np.uint64)
        order = pieces[2].view(np.int32 if carried is None else carried)
        shared = {}
        if carried is None:
            for i, c in enumerate(gathered):
                bits = pieces[4 + 2 * i] if nulls[names.index(c)] else None
                shared[c] = _share_column(table.column(c), pieces[3 + 2 * i], bits, row0, n_pad)
            K.bucket_scatter(column, desc, base, shift, nb, offsets, keys, order, row0)
        else:
            arr = _flat(table.column(gathered[0]))
            own = np.frombuffer(arr.buffers()[1], dtype=carried, count=len(arr), offset=arr.offset * carried.itemsize)
            K.bucket_scatter(column, desc, base, shift, nb, offsets, keys, order, row0, own)
        if rank == 0:
            counter[0] = 0
        comm.barrier()  # every rank's rows are in place
    with _stage(comm, "node-shared-sort:buckets"):
        K.sort_buckets(keys, order, bstart, counter)
        comm.barrier()  # every bucket is sorted
    with _stage(comm, "node-shared-sort:gather"):
        lo, hi = cuts[rank], cuts[rank + 1]
        arrays = []
        for c in names:
            t = table.schema.field(c).type
            if c == key and key_from_radix:
                arrays.append(K.unbase_keys(keys[lo:hi], base, t, desc))
            elif carried is not None:
                arrays.append(pa.Array.from_buffers(t, hi - lo, [None, _arrow_copy(order[lo:hi])]))
            else:
                arrays.append(K.take(shared[c], order[lo:hi]))
        out = pa.Table.from_arrays(arrays, schema=table.schema)
        comm.barrier()  # every rank has copied its rows out of the segment
    return out


def _arrow_copy(values: np.ndarray) -> pa.Buffer:
    """A copy of ``values`` in Arrow's memory pool, which reuses the pages it freed; a numpy
    copy this big is a fresh mapping each time (the node-shared sort's copy-out stage took
    0.12-0.14 s with it after other engines' runs, 0.014-0.056 s with this)."""
    buf = pa.allocate_buffer(values.nbytes)
    np.frombuffer(buf, dtype=values.dtype, count=len(values))[:] = values
    return buf


def sort(comm: Communicator, d: Dist, by: Sequence[str], ascending: Sequence[bool]) -> Dist:
    d = unreplicate(comm, d)
    part = Partitioning("range", tuple(by), tuple(d.table.schema.field(b).type for b in by), tuple(ascending))
    if comm.size == 1 or (d.part.kind == "range" and d.part.keys == part.keys and d.part.ascending == part.ascending):
        with _stage(comm, "local-sort"):
            return Dist(L.sort(d.table, by, ascending), part)
    with _stage(comm, "node-shared-sort"):
        out = _node_shared_sort(comm, d.table, by, ascending)
    if out is not None:
        return Dist(out, part)
    moved, _ = range_partition(comm, d.table, by, ascending)
    with _stage(comm, "local-sort"):
        return Dist(L.sort(moved, by, ascending), part)


# ----------------------------------------------------------------------------- head


def head(comm: Communicator, d: Dist, n: int) -> Dist:
    """The first n rows of the global order (rank order, then row order)."""
    if d.part.kind == "replicated":
        return Dist(L.head(d.table, n), REPLICATED)
    if comm.size == 1:
        return Dist(L.head(d.table, n), d.part)
    counts = counts_of(comm, d.table.num_rows)
    before = int(counts[: comm.rank].sum())
    keep = int(min(max(n - before, 0), d.table.num_rows))
    return Dist(d.table.slice(0, keep), d.part)


# --------------------------------------------------------------------------- window


def _halo_sizes(func: str, param: int) -> tuple[int, int]:
    if func.startswith("rolling_"):
        return max(param - 1, 0), 0
    if param >= 0:
        return param, 0
    return 0, -param


def window(comm: Communicator, d: Dist, func: str, column: str, param: int, output: str, schema: pa.Schema) -> Dist:
    """A window over the global row order; neighbours' rows come in by halo exchange."""
    if d.part.kind == "replicated":
        return Dist(L.window(d.table, func, column, param, output, schema), REPLICATED)
    table = d.table
    part = d.part.survives(schema, [output])
    if comm.size == 1:
        return Dist(L.window(table, func, column, param, output, schema), part)
    before, after = _halo_sizes(func, param)
    col = table.select([column])
    pre, post = halo_exchange(comm, col, before, after)
    # the kernels read [pre ; partition ; post] in place (no concatenated copy)
    values = L.window_column(col.column(0), func, param, schema.field(output).type, pre=pre.column(0), post=post.column(0))
    return Dist(L._place(table, output, values, schema), part)


def halo_exchange(comm: Communicator, table: pa.Table, before: int, after: int, tag: int = 7) -> tuple[pa.Table, pa.Table]:
    """(the up to ``before`` rows preceding this rank's rows in global order, the up to
    ``after`` rows following them). Neighbour ``send``/``recv`` when the neighbours hold
    enough rows; one ``alltoallv`` otherwise. Every rank decides alike from the counts.
    The plan (which of my rows each rank needs) and the packing of those rows into one
    contiguous buffer per destination are the C++ kernels ``kernels/windowing``."""
    from opgraph.runtime.kernels import windowing as W

    n, r = comm.size, comm.rank
    empty = table.schema.empty_table()
    if before == 0 and after == 0:
        return empty, empty
    counts = counts_of(comm, table.num_rows)
    neighbours, lo, hi = W.halo_plan(counts, r, before, after)
    # what I receive: mirror of the plan on the senders' side
    starts = np.concatenate([[0], np.cumsum(counts)])
    total = int(starts[-1])
    need_before = int(min(before, starts[r])) if counts[r] else 0
    need_after = int(min(after, total - starts[r + 1])) if counts[r] else 0

    def pack(q: int) -> pa.Table:
        return W.pack_rows(table, int(lo[q]), int(hi[q])) if hi[q] > lo[q] else empty

    if neighbours:
        if r + 1 < n and hi[r + 1] > lo[r + 1]:
            comm.send(pack(r + 1), r + 1, tag)
        if r > 0 and hi[r - 1] > lo[r - 1]:
            comm.send(pack(r - 1), r - 1, tag + 1)
        pre = comm.recv(r - 1, tag) if r > 0 and need_before else empty
        post = comm.recv(r + 1, tag + 1) if r + 1 < n and need_after else empty
        return pre, post
    # general case: rank q needs global rows [s_q - b_q, s_q) and [e_q, e_q + a_q), spread
    # over several ranks when partitions are smaller than the halo (or empty)
    parts = [pack(q) for q in range(n)]
    received = comm.alltoallv(parts)
    pre = L.concat_tables(received[:r], table.schema)
    post = L.concat_tables(received[r + 1 :], table.schema)
    return pre, post
