# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# distutils: language = c++
"""Range partitioning by splitters (the sample sort's local step), C++ in range_kernels.hpp.

``range_positions(columns, descending, splitter_columns)`` gives every row the part of
the key range it falls in (binary search of its key tuple among the splitter rows;
multi-column, ascending/descending per key, nulls last, NaN after numbers) and returns
``(dest, offsets)`` as ``hashing.partition_positions`` does: row i moves to position
dest[i] of the part order (stable), part p occupies offsets[p]:offsets[p+1]. The columns
are then moved with the hash shuffle's scatter kernels (``hashing.scatter_column``; see
``partition.range_partition``). The GIL is released in the kernel.

Key types: integers, float16/32/64, bool, date/time/timestamp/duration (their integer
storage), string/binary (and large_/view variants, bytewise order). ``supported(types)``
says whether all key types qualify; for other key types (decimal, dictionary, nested,
null) the callers keep the generic path (parallel_ops: local sort and Python binary
search of the splitters), since their order is Arrow's, not a byte or number order.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t
from libcpp.vector cimport vector
from kernel_buffers cimport buf_ptr as _ptr, single_array as _single

import numpy as np
import pyarrow as pa

cdef extern from "range_kernels.hpp" namespace "opgraph::rangek" nogil:
    cdef struct RangeCol:
        int kind
        int desc
        const uint8_t* values
        const uint8_t* data
        const uint8_t* validity
        int64_t offset
    int RK_INT8, RK_INT16, RK_INT32, RK_INT64, RK_UINT8, RK_UINT16, RK_UINT32, RK_UINT64
    int RK_FLOAT32, RK_FLOAT64, RK_BOOL, RK_STRING32, RK_STRING64
    void range_part_ids(const RangeCol* cols, int nkeys, int64_t n, const RangeCol* scols,
                        int64_t nsplit, int32_t* out, int nthreads) except +
    int range_positions_c "opgraph::rangek::range_positions"(
        const RangeCol* cols, int nkeys, int64_t n, const RangeCol* scols, int64_t nsplit,
        int64_t* offsets, void* dest, int index_bytes, int nthreads) except +


def _threads():
    from opgraph.runtime.kernels import kernel_threads  # cores / ranks sharing them

    return kernel_threads()


_KINDS = {
    pa.int8(): RK_INT8, pa.int16(): RK_INT16, pa.int32(): RK_INT32, pa.int64(): RK_INT64,
    pa.uint8(): RK_UINT8, pa.uint16(): RK_UINT16, pa.uint32(): RK_UINT32, pa.uint64(): RK_UINT64,
    pa.float32(): RK_FLOAT32, pa.float64(): RK_FLOAT64, pa.bool_(): RK_BOOL,
    pa.string(): RK_STRING32, pa.binary(): RK_STRING32,
    pa.large_string(): RK_STRING64, pa.large_binary(): RK_STRING64,
}


def _is(name, t):
    f = getattr(pa.types, name, None)
    return f is not None and f(t)


def _storage_type(t):
    """The type whose buffers the kernel reads for key type t, or None (unsupported)."""
    if t in _KINDS:
        return t
    if pa.types.is_float16(t):
        return pa.float32()  # cast (exact)
    if pa.types.is_timestamp(t) or pa.types.is_date64(t) or pa.types.is_duration(t) or pa.types.is_time64(t):
        return pa.int64()
    if pa.types.is_date32(t) or pa.types.is_time32(t):
        return pa.int32()
    if _is("is_string_view", t):
        return pa.large_string()
    if _is("is_binary_view", t):
        return pa.large_binary()
    return None


def supported(types):
    """Whether ``range_positions`` handles key columns of these Arrow types."""
    return all(_storage_type(t) is not None for t in types)


def _prepare(arr):
    a = _single(arr)
    st = _storage_type(a.type)
    if st is None:
        raise TypeError(f"range_positions: unsupported key type {a.type}")
    if st != a.type:
        if pa.types.is_floating(a.type) or _is("is_string_view", a.type) or _is("is_binary_view", a.type):
            a = a.cast(st)
        else:  # temporal: its integer storage, no copy
            a = a.view(st)
    return a


cdef void _fill(RangeCol* c, object a, bint desc, list keep) except *:
    t = a.type
    bufs = a.buffers()
    keep.append(bufs)
    c.kind = _KINDS[t]
    c.desc = 1 if desc else 0
    c.offset = a.offset
    c.validity = _ptr(bufs[0]) if a.null_count else NULL
    c.values = _ptr(bufs[1]) if len(a) else NULL
    c.data = NULL
    if c.kind == RK_STRING32 or c.kind == RK_STRING64:
        c.data = _ptr(bufs[2])
        if c.data == NULL:  # only empty strings: any readable address (never dereferenced)
            c.data = <const uint8_t*>"\0"


cdef _columns(list arrays, list descending, vector[RangeCol]& out, list keep):
    out.resize(len(arrays))
    for i, a in enumerate(arrays):
        _fill(&out[i], a, descending[i], keep)


def part_ids(columns, descending, splitter_columns):
    """Part (0..number of splitters) of every row -> numpy int32 (a row goes to the first
    splitter's part it sorts at or before)."""
    arrays = [_prepare(c) for c in columns]
    splits = [_prepare(c) for c in splitter_columns]
    _check(arrays, splits, descending)
    cdef int64_t n = len(arrays[0])
    cdef int64_t ns = len(splits[0])
    out = np.zeros(n, dtype=np.int32)
    if n == 0 or ns == 0:
        return out
    keep = []
    cdef vector[RangeCol] cols, scols
    _columns(arrays, list(descending), cols, keep)
    _columns(splits, list(descending), scols, keep)
    cdef int32_t[::1] ov = out
    cdef int nk = len(arrays)
    cdef int nt = _threads()
    with nogil:
        range_part_ids(cols.data(), nk, n, scols.data(), ns, &ov[0], nt)
    return out


def _check(arrays, splits, descending):
    if not arrays:
        raise ValueError("range_positions: no key columns")
    if len(splits) != len(arrays) or len(descending) != len(arrays):
        raise ValueError("range_positions: one splitter column and one direction per key column")
    for a, s in zip(arrays, splits):
        if a.type != s.type:
            raise TypeError(f"range_positions: key type {a.type} but splitter type {s.type}")
        if len(a) != len(arrays[0]) or len(s) != len(splits[0]):
            raise ValueError("range_positions: key columns differ in length")


def range_positions(columns, descending, splitter_columns, index_dtype=None):
    """(dest, offsets): row i goes to position dest[i] of the part order (stable within a
    part); part p (0..number of splitters) occupies offsets[p]:offsets[p+1]. dest is int32
    for fewer than 2^31 rows (or ``index_dtype``), else int64."""
    arrays = [_prepare(c) for c in columns]
    splits = [_prepare(c) for c in splitter_columns]
    _check(arrays, splits, descending)
    cdef int64_t n = len(arrays[0])
    cdef int64_t ns = len(splits[0])
    idt = np.dtype(index_dtype if index_dtype is not None else (np.int32 if n < 2**31 else np.int64))
    if idt not in (np.int32, np.int64) or (idt == np.int32 and n >= 2**31):
        raise ValueError(f"range_positions: index dtype {idt} for {n} rows")
    offsets = np.zeros(ns + 2, dtype=np.int64)
    # from Arrow's memory pool: its pages are reused from call to call (numpy's big
    # allocations are fresh mappings, faulted in again every time)
    dest = np.frombuffer(pa.allocate_buffer(max(n, 1) * idt.itemsize), dtype=idt, count=n)
    if n == 0:
        return dest, offsets
    keep = []
    cdef vector[RangeCol] cols, scols
    _columns(arrays, list(descending), cols, keep)
    if ns:
        _columns(splits, list(descending), scols, keep)
    else:
        scols.resize(len(arrays))
    cdef int64_t[::1] ofv = offsets
    cdef uint8_t[::1] dv = dest.view(np.uint8)
    cdef int ib = idt.itemsize
    cdef int nk = len(arrays)
    cdef int nt = _threads()
    cdef int rc
    with nogil:
        rc = range_positions_c(cols.data(), nk, n, scols.data(), ns, &ofv[0], <void*>&dv[0], ib, nt)
    if rc != 0:  # pragma: no cover - part ids always lie in range
        raise AssertionError("range_positions: part id out of range")
    return dest, offsets
