# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# distutils: language = c++
"""Compiled window kernels (C++ in window_kernels.hpp, bound with Cython; GIL released).

* ``halo_plan(counts, rank, before, after)``: which of this rank's rows every other rank
  needs for its halo (local row ranges), and whether neighbours alone can serve them.
* ``pack_rows(table, lo, hi)``: rows [lo, hi) of a table copied into ONE contiguous
  buffer (every column's validity/offsets/values in 64-byte aligned sections), re-based to
  offset 0: the halo piece sent to another rank, independent of the sender's partition.
* ``rolling(pre, mid, func, k)``: rolling_sum/mean/min/max over the global order
  [pre ; mid] for the rows of ``mid`` (pre = the halo rows before it), no concatenation.
* ``diff(pre, mid, post, n)``: ``x - shift(x, n)`` over [pre ; mid ; post].
* ``shift(pre, mid, post, n)``: any Arrow type; the output is assembled from slices.

Semantics: see window_kernels.hpp (min_periods = k, nulls null the window, NaN is a value
ordered above all numbers for min/max, integer sums in int64).
"""

from libc.stdint cimport int64_t, uint8_t
from libcpp.vector cimport vector
from kernel_buffers cimport buf_ptr as _ptr

import numpy as np
import pyarrow as pa

cdef extern from "window_kernels.hpp" namespace "opgraph::wink" nogil:
    cdef struct Seg:
        const void* values
        const uint8_t* validity
        int64_t voff
        int64_t n
    int KIND_INT8, KIND_INT16, KIND_INT32, KIND_INT64
    int KIND_UINT8, KIND_UINT16, KIND_UINT32, KIND_UINT64
    int KIND_FLOAT32, KIND_FLOAT64
    int OP_SUM, OP_MEAN, OP_MIN, OP_MAX
    int64_t k_rolling "opgraph::wink::rolling"(int kind, int op, Seg pre, Seg mid, int64_t k, void* out,
                                               uint8_t* out_valid)
    int64_t k_diff "opgraph::wink::diff"(int kind, Seg pre, Seg mid, Seg post, int64_t n, void* out,
                                         uint8_t* out_valid)
    int k_halo_plan "opgraph::wink::halo_plan"(const int64_t* counts, int n, int me, int64_t before,
                                               int64_t after, int64_t* lo, int64_t* hi)
    void copy_bits(const uint8_t* src, int64_t src_off, int64_t n, uint8_t* dst)
    void pack_fixed(int width, const uint8_t* values, int64_t row0, int64_t n, uint8_t* dst)
    int64_t pack_var(int ow, const uint8_t* offsets, const uint8_t* data, int64_t row0, int64_t n,
                     uint8_t* dst_off, uint8_t* dst_data)

_KINDS = {
    pa.int8(): (KIND_INT8, 1), pa.int16(): (KIND_INT16, 2), pa.int32(): (KIND_INT32, 4),
    pa.int64(): (KIND_INT64, 8), pa.uint8(): (KIND_UINT8, 1), pa.uint16(): (KIND_UINT16, 2),
    pa.uint32(): (KIND_UINT32, 4), pa.uint64(): (KIND_UINT64, 8),
    pa.float32(): (KIND_FLOAT32, 4), pa.float64(): (KIND_FLOAT64, 8),
}
_OPS = {"rolling_sum": OP_SUM, "rolling_mean": OP_MEAN, "rolling_min": OP_MIN, "rolling_max": OP_MAX}


def single(arr, typ=None):
    """One contiguous Arrow array (a ChunkedArray's chunks concatenated; tiny halos only
    ever get here with several chunks, a partition normally has one)."""
    if isinstance(arr, pa.ChunkedArray):
        if arr.num_chunks == 1:
            return arr.chunk(0)
        if arr.num_chunks == 0:
            return pa.array([], typ if typ is not None else arr.type)
        return pa.concat_arrays(arr.chunks)
    return arr


def supported(t):
    """Whether ``rolling``/``diff`` take arrays of Arrow type ``t`` directly (bool is cast
    to uint8 by the caller)."""
    return t in _KINDS


cdef Seg _seg(object arr, int width, list keep) except *:
    """A Seg over an Arrow fixed-width array (``keep`` holds its buffers alive)."""
    cdef Seg s
    s.n = len(arr)
    s.values = NULL
    s.validity = NULL
    s.voff = 0
    if s.n == 0:
        return s
    cdef int64_t off = arr.offset
    bufs = arr.buffers()
    keep.append(bufs)
    s.values = _ptr(bufs[1]) + off * width
    if arr.null_count and bufs[0] is not None:
        s.validity = _ptr(bufs[0])
        s.voff = off
    return s


def _check_type(arr, want):
    if arr.type != want:
        raise TypeError(f"window kernel: halo type {arr.type} differs from the column's {want}")


def rolling(pre, mid, str func, int64_t k):
    """Rolling ``func`` over k rows for each row of ``mid``, ``pre`` holding the rows before
    it in global order (up to k-1 are used). Returns an Arrow array: int64 for integer sums,
    float64 for float sums and means, the input type for min/max."""
    mid = single(mid)
    t = mid.type
    pre = single(pre, t) if pre is not None else pa.array([], t)
    _check_type(pre, t)
    if t not in _KINDS:
        raise TypeError(f"rolling: unsupported type {t}")
    if func not in _OPS:
        raise ValueError(f"unknown window function '{func}'")
    if k < 1:
        raise ValueError(f"rolling window size must be >= 1, got {k}")
    cdef int kind = _KINDS[t][0]
    cdef int width = _KINDS[t][1]
    cdef int op = _OPS[func]
    cdef list keep = []
    cdef Seg sp = _seg(pre, width, keep)
    cdef Seg sm = _seg(mid, width, keep)
    cdef int64_t m = sm.n
    if op in (OP_MIN, OP_MAX):
        otype = t
        out = np.empty(m, dtype=t.to_pandas_dtype())
    elif op == OP_MEAN or pa.types.is_floating(t):
        otype = pa.float64()
        out = np.empty(m, dtype=np.float64)
    else:
        otype = pa.int64()
        out = np.empty(m, dtype=np.int64)
    valid = np.empty((m + 7) // 8 if m else 1, dtype=np.uint8)
    cdef uint8_t[::1] vv = valid
    cdef uint8_t[::1] ov = out.view(np.uint8)
    cdef void* po = <void*>&ov[0] if m else NULL
    cdef uint8_t* pv = &vv[0]
    cdef int64_t nulls
    with nogil:
        nulls = k_rolling(kind, op, sp, sm, k, po, pv)
    if nulls < 0:
        raise AssertionError("rolling kernel: bad kind/op")
    return pa.Array.from_buffers(otype, m, [pa.py_buffer(valid) if nulls else None, pa.py_buffer(out)], nulls)


def diff(pre, mid, post, int64_t n):
    """``mid - shift(mid, n)`` over the global order [pre ; mid ; post]; float64 for
    integer input, the float type for floats."""
    mid = single(mid)
    t = mid.type
    pre = single(pre, t) if pre is not None else pa.array([], t)
    post = single(post, t) if post is not None else pa.array([], t)
    _check_type(pre, t)
    _check_type(post, t)
    if t not in _KINDS:
        raise TypeError(f"diff: unsupported type {t}")
    cdef int kind = _KINDS[t][0]
    cdef int width = _KINDS[t][1]
    cdef list keep = []
    cdef Seg sp = _seg(pre, width, keep)
    cdef Seg sm = _seg(mid, width, keep)
    cdef Seg sq = _seg(post, width, keep)
    cdef int64_t m = sm.n
    otype = pa.float32() if t == pa.float32() else pa.float64()
    out = np.empty(m, dtype=np.float32 if t == pa.float32() else np.float64)
    valid = np.empty((m + 7) // 8 if m else 1, dtype=np.uint8)
    cdef uint8_t[::1] vv = valid
    cdef uint8_t[::1] ov = out.view(np.uint8)
    cdef void* po = <void*>&ov[0] if m else NULL
    cdef uint8_t* pv = &vv[0]
    cdef int64_t nulls
    with nogil:
        nulls = k_diff(kind, sp, sm, sq, n, po, pv)
    if nulls < 0:
        raise AssertionError("diff kernel: bad kind")
    return pa.Array.from_buffers(otype, m, [pa.py_buffer(valid) if nulls else None, pa.py_buffer(out)], nulls)


def shift(pre, mid, post, int64_t n):
    """``mid`` shifted by n rows (n > 0: towards later rows) over [pre ; mid ; post]; rows
    with no source are null. Any Arrow type (slices of the inputs, one concatenation)."""
    mid = single(mid)
    t = mid.type
    cdef int64_t m = len(mid)
    if n == 0 or m == 0:
        return mid
    pieces = []
    if n > 0:
        pre = single(pre, t) if pre is not None else pa.array([], t)
        lead = min(n, m)  # rows whose source is before mid
        missing = min(lead, max(0, n - len(pre)))  # sources before pre's first row
        have = lead - missing
        if missing:
            pieces.append(pa.nulls(missing, t))
        if have:
            pieces.append(pre.slice(max(0, len(pre) - n), have))
        if m > n:
            pieces.append(mid.slice(0, m - n))
    else:
        a = -n
        post = single(post, t) if post is not None else pa.array([], t)
        if m > a:
            pieces.append(mid.slice(a))
        tail = min(a, m)
        # rows j >= m - a take post[j + a - m]; the first needed post row is max(0, a - m)
        first = max(0, a - m)
        have = max(0, min(tail, len(post) - first))
        if have:
            pieces.append(post.slice(first, have))
        if tail - have:
            pieces.append(pa.nulls(tail - have, t))
    pieces = [p.cast(t) if p.type != t else p for p in pieces]
    return pieces[0] if len(pieces) == 1 else pa.concat_arrays(pieces)


def halo_plan(counts, int rank, int64_t before, int64_t after):
    """(neighbours_only, lo, hi): rows [lo[q], hi[q]) of this rank go to rank q."""
    c = np.ascontiguousarray(counts, dtype=np.int64)
    cdef int n = len(c)
    lo = np.zeros(n, dtype=np.int64)
    hi = np.zeros(n, dtype=np.int64)
    cdef int64_t[::1] cv = c
    cdef int64_t[::1] lv = lo
    cdef int64_t[::1] hv = hi
    cdef int nb
    if rank < 0 or rank >= n:
        raise ValueError("halo_plan: rank out of range")
    with nogil:
        nb = k_halo_plan(&cv[0], n, rank, before, after, &lv[0], &hv[0])
    return bool(nb), lo, hi


cdef int64_t _al(int64_t x):
    return (x + 63) & ~63


def _fixed_width(t):
    if t in _KINDS:
        return _KINDS[t][1]
    if (pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_duration(t)
            or pa.types.is_time(t) or pa.types.is_decimal(t)):
        return t.bit_width // 8
    return 0


def pack_rows(table, int64_t lo, int64_t hi):
    """Rows [lo, hi) of ``table`` as a table whose columns all live in one new contiguous
    buffer (validity bitmaps and offsets re-based to 0). Fixed-width, bool, string/binary
    (32/64-bit offsets) are packed by the kernel; other types are copied by Arrow."""
    cdef int64_t n = hi - lo
    if n < 0 or lo < 0 or hi > table.num_rows:
        raise ValueError("pack_rows: bad row range")
    arrays = [single(c, c.type).slice(lo, n) for c in table.columns]
    # layout: per column (validity, values/offsets, data) sections, 64-byte aligned
    cdef int64_t size = 0
    layout = []
    for a in arrays:
        t = a.type
        bufs = a.buffers()
        nb = _al((n + 7) // 8) if a.null_count else 0
        w = _fixed_width(t)
        if w:
            layout.append(("fixed", w, size, nb, size + nb, _al(n * w), 0))
            size += nb + _al(n * w)
        elif pa.types.is_boolean(t):
            layout.append(("bool", 0, size, nb, size + nb, _al((n + 7) // 8), 0))
            size += nb + _al((n + 7) // 8)
        elif (pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t)
              or pa.types.is_large_binary(t)):
            ow = 4 if (pa.types.is_string(t) or pa.types.is_binary(t)) else 8
            offs = np.frombuffer(bufs[1], dtype=np.int32 if ow == 4 else np.int64,
                                 count=a.offset + n + 1) if n else None
            dlen = int(offs[a.offset + n] - offs[a.offset]) if n else 0
            layout.append(("var", ow, size, nb, size + nb, _al((n + 1) * ow), _al(dlen)))
            size += nb + _al((n + 1) * ow) + _al(dlen)
        else:
            layout.append(None)
    store = np.zeros(max(size, 1), dtype=np.uint8)
    cdef uint8_t[::1] sv = store
    cdef uint8_t* base = &sv[0]
    cdef const uint8_t* src
    cdef const uint8_t* src2
    cdef int64_t off, voff, vpos, vlen, dpos, w2, aoff
    out_cols = []
    whole = pa.py_buffer(store)
    for a, lay in zip(arrays, layout):
        if lay is None or n == 0:
            out_cols.append(pa.concat_arrays([a]) if n else pa.array([], a.type))
            continue
        kind, w2, voff, nb, vpos, vlen, dlen = lay
        bufs = a.buffers()
        aoff = a.offset
        validity = None
        if nb:
            src = _ptr(bufs[0])
            with nogil:
                copy_bits(src, aoff, n, base + voff)
            validity = whole.slice(voff, (n + 7) // 8)
        if kind == "fixed":
            src = _ptr(bufs[1])
            with nogil:
                pack_fixed(<int>w2, src, aoff, n, base + vpos)
            out_cols.append(pa.Array.from_buffers(a.type, n, [validity, whole.slice(vpos, n * w2)], a.null_count))
        elif kind == "bool":
            src = _ptr(bufs[1])
            with nogil:
                copy_bits(src, aoff, n, base + vpos)
            out_cols.append(pa.Array.from_buffers(a.type, n, [validity, whole.slice(vpos, (n + 7) // 8)], a.null_count))
        else:
            src = _ptr(bufs[1])
            src2 = _ptr(bufs[2])
            dpos = vpos + vlen
            with nogil:
                pack_var(<int>w2, src, src2, aoff, n, base + vpos, base + dpos)
            out_cols.append(pa.Array.from_buffers(
                a.type, n, [validity, whole.slice(vpos, (n + 1) * w2), whole.slice(dpos, dlen)], a.null_count))
    return pa.Table.from_arrays(out_cols, schema=table.schema)
