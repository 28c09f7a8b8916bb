# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# distutils: language = c++
"""Compiled hash kernels for hash shuffles (C++ in hash_kernels.hpp, bound with Cython).

``hash_columns`` computes a platform-independent 64-bit hash per row over one or more key
columns, reading Arrow buffers directly (``pyarrow.Array.buffers()`` through the buffer
protocol; no per-row Python objects) with the GIL released in the loops. The algorithm is
specified in hash_kernels.hpp ("opgraph-hash-v1"): fixed seeds, explicit little-endian
reads, so every process on every machine computes the same values.

``partition_ids`` maps hashes to partitions; ``group_by_partition`` is a stable counting
sort that returns the row order grouped by partition plus the part boundaries;
``partition_positions`` returns each row's destination instead, and ``scatter_column``
moves a column's buffers into that order (one sequential read of the source).

The MPI shuffle moves rows by part id instead (no part-order copy): ``hash_part_ids`` gives
each row's part and the rows per part (``part_counts`` counts given ids), and
``scatter_rows`` moves the rows of every fixed-width column to per-part buffers in one pass.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memset
from libcpp.vector cimport vector

import numpy as np
import pyarrow as pa

cdef extern from "hash_kernels.hpp" namespace "opgraph::hashk" nogil:
    const char* kHashVersion
    const uint64_t kRowSeed
    const uint64_t kNullWord
    const uint64_t kStringSeed
    const uint64_t kCombineConst
    const uint64_t kCanonicalNaN
    enum Kind:
        KIND_INT8
        KIND_INT16
        KIND_INT32
        KIND_INT64
        KIND_UINT8
        KIND_UINT16
        KIND_UINT32
        KIND_UINT64
        KIND_FLOAT32
        KIND_FLOAT64
        KIND_BOOL
    int combine_fixed(int kind, const uint8_t* values, int64_t offset, int64_t n,
                      const uint8_t* validity, uint64_t* out)
    void combine_string32(const uint8_t* offsets, const uint8_t* data, int64_t offset,
                          int64_t n, const uint8_t* validity, uint64_t* out)
    void combine_string64(const uint8_t* offsets, const uint8_t* data, int64_t offset,
                          int64_t n, const uint8_t* validity, uint64_t* out)
    void combine_constant(uint64_t word, int64_t n, uint64_t* out)
    void fill(uint64_t value, int64_t n, uint64_t* out)
    void c_partition_ids "opgraph::hashk::partition_ids"(
        const uint64_t* hashes, int64_t n, uint32_t nparts, int32_t* out)
    int group_by_partition_i32(const int32_t* pids, int64_t n, int32_t nparts,
                               int64_t* offsets, int32_t* perm)
    int group_by_partition_i64(const int32_t* pids, int64_t n, int32_t nparts,
                               int64_t* offsets, int64_t* perm)
    int partition_positions_any(const int32_t* pids, int64_t n, int32_t nparts,
                                int64_t* offsets, void* dest, int index_bytes)
    void hash_positions_inplace_any(void* buf, int64_t n, uint32_t nparts, int64_t* offsets,
                                    int index_bytes)
    int count_part_ids(const int32_t* ids, int64_t n, int32_t nparts, int64_t* counts)
    int c_scatter_rows "opgraph::hashk::scatter_rows"(
        const int32_t* ids, int64_t n, int32_t nparts, const int64_t* rows, int ncols,
        const int64_t* widths, const uint8_t* const* srcs, uint8_t* const* dests)
    int hash_part_ids_fixed_any(int kind, const uint8_t* values, int64_t offset, int64_t n,
                                const uint8_t* validity, uint32_t nparts, void* d, int index_bytes,
                                int64_t* counts)
    void positions_from_part_ids_any(void* d, int64_t n, uint32_t nparts, int64_t* counts,
                                     int64_t* offsets, int index_bytes)
    void invert_permutation_any(const void* dest, int64_t n, void* perm, int index_bytes)
    void scatter_fixed_any(int64_t width, const uint8_t* src, int64_t src_offset, int64_t n,
                           const void* dest, int index_bytes, uint8_t* out)
    void scatter_bits_any(const uint8_t* src_bits, int64_t src_offset, int64_t n,
                          const void* dest, int index_bytes, uint8_t* out_bits)
    void scatter_var_lengths_any(int offset_bytes, const uint8_t* offsets_buf,
                                 int64_t src_offset, int64_t n, const void* dest,
                                 int index_bytes, uint8_t* out_offsets_buf)
    void prefix_offsets_any(int offset_bytes, int64_t n, uint8_t* out_offsets_buf)
    void scatter_var_data_any(int offset_bytes, const uint8_t* offsets_buf,
                              const uint8_t* data, int64_t src_offset, int64_t n,
                              const void* dest, int index_bytes,
                              const uint8_t* out_offsets_buf, uint8_t* out_data)

HASH_VERSION = kHashVersion.decode("ascii")
ROW_SEED = kRowSeed
NULL_WORD = kNullWord
STRING_SEED = kStringSeed
COMBINE_CONST = kCombineConst
CANONICAL_NAN = kCanonicalNaN
MAX_PARTS = 2**31 - 1

_FIXED_KINDS = {
    pa.int8(): KIND_INT8,
    pa.int16(): KIND_INT16,
    pa.int32(): KIND_INT32,
    pa.int64(): KIND_INT64,
    pa.uint8(): KIND_UINT8,
    pa.uint16(): KIND_UINT16,
    pa.uint32(): KIND_UINT32,
    pa.uint64(): KIND_UINT64,
    pa.float32(): KIND_FLOAT32,
    pa.float64(): KIND_FLOAT64,
}
_KIND_WIDTH = {
    KIND_INT8: 1, KIND_INT16: 2, KIND_INT32: 4, KIND_INT64: 8,
    KIND_UINT8: 1, KIND_UINT16: 2, KIND_UINT32: 4, KIND_UINT64: 8,
    KIND_FLOAT32: 4, KIND_FLOAT64: 8,
}


def _is(name, t):
    f = getattr(pa.types, name, None)
    return f is not None and f(t)


cdef const uint8_t* _buf_ptr(object buf, int64_t need, str what) except? NULL:
    """Pointer to an Arrow buffer's bytes (buffer protocol), checking it holds `need` bytes.

    The pointer stays valid while the pyarrow.Buffer (held by the caller) is alive.
    """
    cdef const uint8_t[::1] mv
    if buf is None:
        if need > 0:
            raise ValueError(f"opgraph kernels: Arrow array has no {what} buffer")
        return NULL
    mv = memoryview(buf).cast("B")
    if <int64_t>mv.shape[0] < need:
        raise ValueError(
            f"opgraph kernels: Arrow {what} buffer holds {mv.shape[0]} bytes, needs {need}")
    if mv.shape[0] == 0:
        return NULL
    return &mv[0]


cdef object _normalise(object arr):
    """Map an Arrow array onto a layout the kernels read (storage/decoded/cast)."""
    t = arr.type
    if isinstance(t, pa.ExtensionType):
        arr = arr.storage
        t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if _is("is_string_view", t) or _is("is_binary_view", t) or _is("is_fixed_size_binary", t):
        arr = arr.cast(pa.large_binary())
    return arr


cdef int _temporal_kind(object t):
    if (pa.types.is_date(t) or pa.types.is_time(t) or pa.types.is_timestamp(t)
            or pa.types.is_duration(t)):
        if t.bit_width == 32:
            return KIND_INT32
        if t.bit_width == 64:
            return KIND_INT64
    return 0


cdef _combine_chunk(object arr, uint64_t* out):
    """out[i] = combine(out[i], value_word(arr[i])) for every row of one Arrow array."""
    cdef int64_t n = len(arr)
    cdef int64_t off
    cdef int64_t end_off
    cdef int kind
    cdef int rc
    cdef const uint8_t* validity = NULL
    cdef const uint8_t* values = NULL
    cdef const uint8_t* offsets = NULL
    cdef const uint8_t* data = NULL
    if n == 0:
        return
    arr = _normalise(arr)
    t = arr.type
    if pa.types.is_null(t) or arr.null_count == n:
        with nogil:
            combine_constant(kNullWord, n, out)
        return
    off = arr.offset
    bufs = arr.buffers()  # keeps the buffers alive while the raw pointers are used
    if arr.null_count > 0:
        validity = _buf_ptr(bufs[0], (off + n + 7) // 8, "validity")

    kind = _FIXED_KINDS.get(t, 0)
    if kind == 0:
        kind = _temporal_kind(t)
    if kind != 0:
        values = _buf_ptr(bufs[1], (off + n) * _KIND_WIDTH[kind], "values")
        with nogil:
            rc = combine_fixed(kind, values, off, n, validity, out)
        if rc != 0:
            raise AssertionError(f"hash kernel: bad kind {kind}")
        return
    if pa.types.is_boolean(t):
        values = _buf_ptr(bufs[1], (off + n + 7) // 8, "values")
        with nogil:
            rc = combine_fixed(KIND_BOOL, values, off, n, validity, out)
        return
    if pa.types.is_string(t) or pa.types.is_binary(t):
        offsets = _buf_ptr(bufs[1], (off + n + 1) * 4, "offsets")
        end_off = (<const int32_t*>offsets)[off + n]
        data = _buf_ptr(bufs[2], end_off, "data")
        with nogil:
            combine_string32(offsets, data, off, n, validity, out)
        return
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        offsets = _buf_ptr(bufs[1], (off + n + 1) * 8, "offsets")
        end_off = (<const int64_t*>offsets)[off + n]
        data = _buf_ptr(bufs[2], end_off, "data")
        with nogil:
            combine_string64(offsets, data, off, n, validity, out)
        return
    raise TypeError(
        f"hash_columns: unsupported key type {t}; supported: integers, float32/float64, bool, "
        "string/binary (incl. large and view), date/time/timestamp/duration, dictionary, null")


def _key_columns(data, keys):
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        if keys is None:
            keys = list(range(data.num_columns))
        elif isinstance(keys, (str, int)):
            keys = [keys]
        cols = []
        names = data.column_names
        for k in keys:
            if isinstance(k, str):
                if names.count(k) != 1:
                    raise KeyError(
                        f"hash_columns: key column {k!r} "
                        f"{'is ambiguous' if names.count(k) else 'not found'}; "
                        f"columns: {names}")
                cols.append(data.column(names.index(k)))
            else:
                cols.append(data.column(k))
        return cols
    if isinstance(data, (pa.Array, pa.ChunkedArray, np.ndarray)):
        if keys is not None:
            raise TypeError("hash_columns: keys must be None when hashing a single array")
        data = [data]
    cols = []
    for c in data:
        if isinstance(c, np.ndarray):
            c = pa.array(c)
        if not isinstance(c, (pa.Array, pa.ChunkedArray)):
            raise TypeError(
                f"hash_columns: expected pyarrow Array/ChunkedArray columns, got {type(c).__name__}")
        cols.append(c)
    if keys is not None:
        if isinstance(keys, int):
            keys = [keys]
        cols = [cols[k] for k in keys]
    return cols


def hash_columns(data, keys=None):
    """64-bit hash per row over the key columns -> numpy.ndarray[uint64].

    data: a pyarrow Table or RecordBatch (keys: column names or indices; None = all
    columns), or a sequence of pyarrow Arrays/ChunkedArrays (keys: indices or None), or a
    single Array/ChunkedArray. Equal key tuples hash equal regardless of chunking, slicing,
    integer width, float width or string offset width; nulls hash to a fixed word.
    """
    return _hash_into(data, keys, None)


cdef object _hash_into(data, keys, object out):
    """hash_columns into ``out`` (a writable uint64 array of the row count) or a new array."""
    cols = _key_columns(data, keys)
    if not cols:
        raise ValueError("hash_columns: at least one key column is required")
    cdef int64_t n = len(cols[0])
    for c in cols:
        if len(c) != n:
            raise ValueError(
                f"hash_columns: key columns differ in length ({len(c)} vs {n})")
    if out is None:
        out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    cdef uint64_t[::1] ov = out
    cdef uint64_t* op = &ov[0]
    cdef int64_t pos
    with nogil:
        fill(kRowSeed, n, op)
    for c in cols:
        chunks = c.chunks if isinstance(c, pa.ChunkedArray) else (c,)
        pos = 0
        for ch in chunks:
            _combine_chunk(ch, op + pos)
            pos += len(ch)
    return out


cdef int32_t _check_nparts(object nparts) except -1:
    if isinstance(nparts, bool) or not isinstance(nparts, (int, np.integer)):
        raise TypeError(f"nparts must be an int, got {type(nparts).__name__}")
    if not 1 <= nparts <= MAX_PARTS:
        raise ValueError(f"nparts must be in [1, {MAX_PARTS}], got {nparts}")
    return <int32_t>nparts


def partition_ids(hashes, nparts):
    """Partition id in [0, nparts) per hash: floor(h * nparts / 2^64) -> numpy int32."""
    cdef int32_t np_ = _check_nparts(nparts)
    h = np.asarray(hashes)
    if h.dtype != np.uint64 or h.ndim != 1:
        raise TypeError(f"partition_ids: hashes must be a 1-D uint64 array, got {h.dtype}[{h.ndim}-D]")
    h = np.ascontiguousarray(h)
    cdef int64_t n = h.shape[0]
    out = np.empty(n, dtype=np.int32)
    if n == 0:
        return out
    cdef const uint64_t[::1] hv = h
    cdef int32_t[::1] ov = out
    with nogil:
        c_partition_ids(&hv[0], n, <uint32_t>np_, &ov[0])
    return out


def group_by_partition(part_ids, nparts, index_dtype=np.int64):
    """Stable counting sort of row ids by partition id.

    Returns (indices, offsets): part p consists of rows indices[offsets[p]:offsets[p+1]]
    (ascending). indices has dtype index_dtype (int32 or int64), offsets is int64[nparts+1].
    """
    cdef int32_t np_ = _check_nparts(nparts)
    p = np.asarray(part_ids)
    if p.dtype != np.int32 or p.ndim != 1:
        raise TypeError(f"group_by_partition: part_ids must be a 1-D int32 array, got {p.dtype}")
    p = np.ascontiguousarray(p)
    cdef int64_t n = p.shape[0]
    idt = np.dtype(index_dtype)
    if idt == np.int32:
        if n > 2**31 - 1:
            raise ValueError("group_by_partition: int32 indices cannot address more than 2^31-1 rows")
    elif idt != np.int64:
        raise TypeError("group_by_partition: index_dtype must be int32 or int64")
    offsets = np.zeros(np_ + 1, dtype=np.int64)
    indices = np.empty(n, dtype=idt)
    if n == 0:
        return indices, offsets
    cdef const int32_t[::1] pv = p
    cdef int64_t[::1] ofv = offsets
    cdef int32_t[::1] i32v
    cdef int64_t[::1] i64v
    cdef int rc
    if idt == np.int32:
        i32v = indices
        with nogil:
            rc = group_by_partition_i32(&pv[0], n, np_, &ofv[0], &i32v[0])
    else:
        i64v = indices
        with nogil:
            rc = group_by_partition_i64(&pv[0], n, np_, &ofv[0], &i64v[0])
    if rc != 0:
        raise ValueError(f"group_by_partition: a partition id lies outside [0, {np_})")
    return indices, offsets


def hash_positions(data, keys, nparts, index_dtype=np.int64):
    """``partition_positions(partition_ids(hash_columns(data, keys), nparts), nparts,
    index_dtype)`` fused: (dest, offsets). The hashes are computed into a buffer from
    Arrow's memory pool (its pages are reused from call to call instead of being faulted
    in afresh) and turned into part ids and then destinations in place; ``dest`` is a view
    of that buffer."""
    cdef int32_t np_ = _check_nparts(nparts)
    idt = np.dtype(index_dtype)
    if idt not in (np.int32, np.int64):
        raise TypeError("hash_positions: index_dtype must be int32 or int64")
    n = data.num_rows if isinstance(data, (pa.Table, pa.RecordBatch)) else None
    if n is None:
        n = len(_key_columns(data, keys)[0])
    if idt == np.int32 and n > 2**31 - 1:
        raise ValueError("hash_positions: int32 positions cannot address more than 2^31-1 rows")
    cols = _key_columns(data, keys)
    if len(cols) == 1 and _fixed_kind(cols[0].type):
        return _fixed_key_positions(cols[0], n, np_, idt)
    buf = pa.allocate_buffer(max(n, 1) * 8)
    hashes = np.frombuffer(buf, dtype=np.uint64, count=n)
    _hash_into(cols, None, hashes)
    offsets = np.zeros(np_ + 1, dtype=np.int64)
    cdef int64_t nn = n
    cdef int64_t[::1] ofv = offsets
    cdef uint8_t* p = _mut_ptr(buf)
    cdef int ib = idt.itemsize
    if nn:
        with nogil:
            hash_positions_inplace_any(<void*>p, nn, <uint32_t>np_, &ofv[0], ib)
    dest = np.frombuffer(buf, dtype=idt, count=n)
    return dest, offsets


cdef int _fixed_kind(object t):
    """The hash kind of a fixed-width numeric/temporal key type (not bool); 0 otherwise."""
    if isinstance(t, pa.ExtensionType) or pa.types.is_dictionary(t):
        return 0
    kind = _FIXED_KINDS.get(t, 0)
    return kind if kind else _temporal_kind(t)


cdef _fixed_key_part_ids(object col, int32_t nparts, uint8_t* d, int ib, int64_t* counts):
    """Part id of every row of one fixed-width key column into d (ib bytes each: int32 or
    int64) and rows per part added to counts: hash, part id and count in one pass per
    chunk (hash_part_ids_fixed), without the rows' 64-bit hashes in memory."""
    cdef int kind = _fixed_kind(col.type)
    cdef int64_t pos = 0
    cdef int64_t m
    cdef int64_t off
    cdef const uint8_t* values
    cdef const uint8_t* validity
    for ch in (col.chunks if isinstance(col, pa.ChunkedArray) else (col,)):
        m = len(ch)
        if m == 0:
            continue
        off = ch.offset
        bufs = ch.buffers()  # alive while the raw pointers are used
        validity = _buf_ptr(bufs[0], (off + m + 7) // 8, "validity") if ch.null_count > 0 else NULL
        values = _buf_ptr(bufs[1], (off + m) * _KIND_WIDTH[kind], "values")
        with nogil:
            hash_part_ids_fixed_any(kind, values, off, m, validity, <uint32_t>nparts, <void*>(d + pos * ib), ib, counts)
        pos += m


cdef object _fixed_key_positions(object col, int64_t n, int32_t nparts, object idt):
    """hash_positions for one fixed-width key column: part ids and counts
    (``_fixed_key_part_ids``), then destinations in place; the same result as the general
    path (test_hash_positions_fixed_key_fast_path)."""
    buf = pa.allocate_buffer(max(n, 1) * idt.itemsize)
    offsets = np.zeros(nparts + 1, dtype=np.int64)
    counts = np.zeros(nparts, dtype=np.int64)
    cdef int64_t[::1] cv = counts
    cdef int64_t[::1] ofv = offsets
    cdef uint8_t* d = _mut_ptr(buf)
    cdef int ib = idt.itemsize
    _fixed_key_part_ids(col, nparts, d, ib, &cv[0])
    if n:
        with nogil:
            positions_from_part_ids_any(<void*>d, n, <uint32_t>nparts, &cv[0], &ofv[0], ib)
    return np.frombuffer(buf, dtype=idt, count=n), offsets


def _index_array(obj, name):
    a = np.asarray(obj)
    if a.ndim != 1 or a.dtype not in (np.int32, np.int64):
        raise TypeError(f"{name} must be a 1-D int32 or int64 array, got {a.dtype}[{a.ndim}-D]")
    return np.ascontiguousarray(a)


def partition_positions(part_ids, nparts, index_dtype=np.int64):
    """Destination of every row in partition order (stable): (dest, offsets).

    Row i goes to position dest[i]; part p occupies positions offsets[p]:offsets[p+1].
    ``dest`` is the inverse permutation of ``group_by_partition``'s indices.
    """
    cdef int32_t np_ = _check_nparts(nparts)
    p = np.asarray(part_ids)
    if p.dtype != np.int32 or p.ndim != 1:
        raise TypeError(f"partition_positions: part_ids must be a 1-D int32 array, got {p.dtype}")
    p = np.ascontiguousarray(p)
    cdef int64_t n = p.shape[0]
    idt = np.dtype(index_dtype)
    if idt == np.int32:
        if n > 2**31 - 1:
            raise ValueError("partition_positions: int32 positions cannot address more than 2^31-1 rows")
    elif idt != np.int64:
        raise TypeError("partition_positions: index_dtype must be int32 or int64")
    offsets = np.zeros(np_ + 1, dtype=np.int64)
    dest = np.empty(n, dtype=idt)
    if n == 0:
        return dest, offsets
    cdef const int32_t[::1] pv = p
    cdef int64_t[::1] ofv = offsets
    cdef uint8_t[::1] dv = dest.view(np.uint8)
    cdef int ib = idt.itemsize
    cdef int rc
    with nogil:
        rc = partition_positions_any(&pv[0], n, np_, &ofv[0], <void*>&dv[0], ib)
    if rc != 0:
        raise ValueError(f"partition_positions: a partition id lies outside [0, {np_})")
    return dest, offsets


def invert_permutation(dest):
    """perm with perm[dest[i]] = i (dest must be a permutation of 0..n-1)."""
    d = _index_array(dest, "invert_permutation: dest")
    cdef int64_t n = d.shape[0]
    perm = np.empty(n, dtype=d.dtype)
    if n == 0:
        return perm
    cdef const uint8_t[::1] dv = d.view(np.uint8)
    cdef uint8_t[::1] pv = perm.view(np.uint8)
    cdef int ib = d.dtype.itemsize
    with nogil:
        invert_permutation_any(<const void*>&dv[0], n, <void*>&pv[0], ib)
    return perm


cdef uint8_t* _mut_ptr(object buf):
    cdef uint8_t[::1] mv = memoryview(buf).cast("B")
    if mv.shape[0] == 0:
        return NULL
    return &mv[0]


cdef object _alloc(int64_t nbytes, bint zero):
    buf = pa.allocate_buffer(nbytes)
    cdef uint8_t* p
    if zero and nbytes > 0:
        p = _mut_ptr(buf)
        with nogil:
            memset(p, 0, <size_t>nbytes)
    return buf


def _fixed_width_bytes(t):
    """Byte width of a primitive fixed-width type laid out as [validity, values], else 0."""
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_date(t)
            or pa.types.is_time(t) or pa.types.is_timestamp(t) or pa.types.is_duration(t)
            or pa.types.is_decimal(t) or pa.types.is_fixed_size_binary(t)):
        return 0
    if t.num_buffers != 2 or t.bit_width % 8 != 0:
        return 0
    return t.bit_width // 8


def scatter_column(column, dest):
    """New array with row i of ``column`` at position dest[i], or None if unsupported.

    column: pyarrow Array or ChunkedArray (any chunking/slicing); dest: a permutation of
    0..len-1 (int32/int64), e.g. from ``partition_positions``. Supported: integers, floats,
    temporal, decimal, fixed_size_binary, bool, string/binary (+ large); other types return
    None (use ``take`` with ``invert_permutation(dest)`` instead).
    """
    d = _index_array(dest, "scatter_column: dest")
    cdef int64_t N = len(column)
    if d.shape[0] != N:
        raise ValueError(f"scatter_column: dest has {d.shape[0]} entries for {N} rows")
    t = column.type
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    cdef int64_t width = 0
    cdef int ob = 0
    if pa.types.is_boolean(t):
        pass
    elif pa.types.is_string(t) or pa.types.is_binary(t):
        ob = 4
    elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        ob = 8
    else:
        width = _fixed_width_bytes(t)
        if width == 0:
            return None
    cdef int64_t null_count = column.null_count
    if N == 0:
        return pa.array([], type=t)

    cdef const uint8_t[::1] dv = d.view(np.uint8)
    cdef const char* dbase = <const char*>&dv[0]
    cdef int ib = d.dtype.itemsize
    cdef int64_t pos, off, n, total
    cdef const uint8_t* src
    cdef const uint8_t* src2
    cdef const uint8_t* out_offs_c
    cdef uint8_t* outp
    cdef uint8_t* outp2
    cdef const void* dchunk

    validity = None
    if null_count > 0:
        validity = _alloc((N + 7) // 8, True)
        outp = _mut_ptr(validity)
        pos = 0
        for ch in chunks:
            n = len(ch)
            if n:
                off = ch.offset
                src = NULL
                if ch.null_count > 0:
                    src = _buf_ptr(ch.buffers()[0], (off + n + 7) // 8, "validity")
                dchunk = <const void*>(dbase + pos * ib)
                with nogil:
                    scatter_bits_any(src, off, n, dchunk, ib, outp)
            pos += n

    if width > 0 or ob == 0:  # fixed width or bool
        if width > 0:
            values = _alloc(N * width, False)
        else:
            values = _alloc((N + 7) // 8, True)
        outp = _mut_ptr(values)
        pos = 0
        for ch in chunks:
            n = len(ch)
            if n:
                off = ch.offset
                dchunk = <const void*>(dbase + pos * ib)
                if width > 0:
                    src = _buf_ptr(ch.buffers()[1], (off + n) * width, "values")
                    with nogil:
                        scatter_fixed_any(width, src, off, n, dchunk, ib, outp)
                else:
                    src = _buf_ptr(ch.buffers()[1], (off + n + 7) // 8, "values")
                    with nogil:
                        scatter_bits_any(src, off, n, dchunk, ib, outp)
            pos += n
        return pa.Array.from_buffers(t, N, [validity, values], null_count=null_count)

    # string / binary (32- or 64-bit offsets)
    total = 0
    for ch in chunks:
        n = len(ch)
        if n:
            off = ch.offset
            src = _buf_ptr(ch.buffers()[1], (off + n + 1) * ob, "offsets")
            if ob == 4:
                total += (<const int32_t*>src)[off + n] - (<const int32_t*>src)[off]
            else:
                total += (<const int64_t*>src)[off + n] - (<const int64_t*>src)[off]
    if ob == 4 and total > 2**31 - 1:
        return None  # does not fit 32-bit offsets in one array
    offsets = _alloc((N + 1) * ob, False)
    outp = _mut_ptr(offsets)
    pos = 0
    for ch in chunks:
        n = len(ch)
        if n:
            off = ch.offset
            src = _buf_ptr(ch.buffers()[1], (off + n + 1) * ob, "offsets")
            dchunk = <const void*>(dbase + pos * ib)
            with nogil:
                scatter_var_lengths_any(ob, src, off, n, dchunk, ib, outp)
        pos += n
    with nogil:
        prefix_offsets_any(ob, N, outp)
    out_offs_c = outp
    data = _alloc(total, False)
    outp2 = _mut_ptr(data)
    pos = 0
    for ch in chunks:
        n = len(ch)
        if n:
            off = ch.offset
            bufs = ch.buffers()
            src = _buf_ptr(bufs[1], (off + n + 1) * ob, "offsets")
            if ob == 4:
                src2 = _buf_ptr(bufs[2], (<const int32_t*>src)[off + n], "data")
            else:
                src2 = _buf_ptr(bufs[2], (<const int64_t*>src)[off + n], "data")
            dchunk = <const void*>(dbase + pos * ib)
            with nogil:
                scatter_var_data_any(ob, src, src2, off, n, dchunk, ib, out_offs_c, outp2)
        pos += n
    return pa.Array.from_buffers(t, N, [validity, offsets, data], null_count=null_count)


def hash_part_ids(data, keys, nparts):
    """(part id of every row as numpy int32, rows per part as int64[nparts]): the same ids
    as ``partition_ids(hash_columns(data, keys), nparts)``, for a shuffle that moves rows by
    part id (``scatter_rows``) instead of through a part-order copy."""
    cdef int32_t np_ = _check_nparts(nparts)
    cols = _key_columns(data, keys)
    n = len(cols[0])
    if len(cols) != 1 or not _fixed_kind(cols[0].type):
        ids = partition_ids(hash_columns(data, keys), np_)
        return ids, part_counts(ids, np_)
    ids = np.empty(max(n, 1), dtype=np.int32)
    counts = np.zeros(np_, dtype=np.int64)
    cdef int64_t[::1] cv = counts
    cdef int32_t[::1] iv = ids
    _fixed_key_part_ids(cols[0], np_, <uint8_t*>&iv[0], 4, &cv[0])
    return ids[:n], counts


def part_counts(ids, nparts):
    """Rows per part (numpy int64[nparts]) of int32 part ids; ValueError at an id outside
    [0, nparts)."""
    cdef int32_t np_ = _check_nparts(nparts)
    cdef const int32_t[::1] iv = np.ascontiguousarray(ids, dtype=np.int32)
    counts = np.zeros(np_, dtype=np.int64)
    cdef int64_t[::1] cv = counts
    cdef int64_t n = iv.shape[0]
    cdef int rc = 0
    if n:
        with nogil:
            rc = count_part_ids(&iv[0], n, np_, &cv[0])
    if rc != 0:
        raise ValueError(f"part_counts: a part id lies outside [0, {np_})")
    return counts


def scatter_rows(ids, rows, sources, dests):
    """Moves every row to its part in one pass for all columns: row i of each source column
    to the next free row of part ``ids[i]`` (int32) in that column's destination for the
    part. ``sources``: (uint8 array of n rows, row width in bytes) per column; ``dests``: per
    column, one writable uint8 array per part holding at least ``rows[p]`` rows. Each part
    keeps the input row order. Raises ValueError at a part id outside the parts, a part
    with more rows than ``rows[p]``, or a buffer of the wrong size."""
    cdef const int32_t[::1] iv = np.ascontiguousarray(ids, dtype=np.int32)
    rw = np.ascontiguousarray(rows, dtype=np.int64)
    cdef int64_t n = iv.shape[0]
    cdef int32_t nparts = <int32_t>rw.shape[0]
    if rw.ndim != 1 or nparts == 0 or nparts > MAX_PARTS:
        raise ValueError("scatter_rows: one row count per part")
    if len(dests) != len(sources) or any(len(d) != nparts for d in dests):
        raise ValueError("scatter_rows: one destination per part for every source column")
    cdef const int64_t[::1] rv = rw
    cdef int ncols = len(sources)
    cdef vector[int64_t] widths
    cdef vector[const uint8_t*] srcs
    cdef vector[uint8_t*] outs
    cdef const uint8_t[::1] sv
    cdef uint8_t[::1] dv
    cdef int64_t w
    cdef int32_t p
    for (src, width), parts in zip(sources, dests):
        w = width
        sv = src
        if w <= 0 or sv.shape[0] != n * w:
            raise ValueError(f"scatter_rows: {sv.shape[0]} bytes for {n} rows of {w}")
        widths.push_back(w)
        srcs.push_back(&sv[0] if n else NULL)
        for p in range(nparts):
            dv = parts[p]
            if dv.shape[0] < rv[p] * w:
                raise ValueError(f"scatter_rows: part {p} holds {dv.shape[0]} bytes, not {rv[p]} rows of {w}")
            outs.push_back(&dv[0] if dv.shape[0] else NULL)
    if n == 0 or ncols == 0:
        return
    cdef int rc
    with nogil:
        rc = c_scatter_rows(&iv[0], n, nparts, &rv[0], ncols, widths.data(), srcs.data(), outs.data())
    if rc != 0:
        raise ValueError("scatter_rows: a part id lies outside the parts or a part has more rows than given")
