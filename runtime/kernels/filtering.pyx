# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# distutils: language = c++
"""Compiled filter kernels (C++ in filter_kernels.hpp, bound with Cython; GIL released).

* ``filter_columns(mask, columns)``: the rows of every column where the boolean ``mask`` is
  true (null = false), in one fused, multithreaded pass per row block - no index array.
  Columns: any fixed-width type (bool, integers, floats, temporal, decimal, fixed-size
  binary) and dictionary columns with integer indices (``supported(type)``); chunked and
  sliced inputs with any chunk layouts. Returns ``(count, arrays)``; when every row is
  selected the input columns themselves come back.
* ``take_columns(columns, indices)``: several fixed-width/dictionary columns gathered by
  one numpy index array (negative -> null) in one multithreaded pass (join and sort
  outputs): one bounds check, the indices read once per block for all columns.
* ``lut_bits(indices, lut)``: a BooleanArray, row i = ``lut[indices[i]]`` (null index ->
  false): ``isin`` over a dictionary column once the dictionary itself was tested.

``STATS`` counts calls (tests check that the native path ran).
Threads: ``kernel_threads()`` (cores / ranks sharing them; ``OPGRAPH_KERNEL_THREADS``).
"""

from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memset
from libcpp.vector cimport vector
from kernel_buffers cimport buf_addr as _addr

import numpy as np
import pyarrow as pa

cdef extern from "filter_kernels.hpp" namespace "opgraph::filt" nogil:
    cdef struct Seg:
        int64_t n
        const uint8_t* mask
        int64_t moff
        const uint8_t* mvalid
        int64_t mvoff
    cdef struct ColIn:
        const uint8_t* data
        int64_t off
        const uint8_t* valid
        int64_t voff
        const int32_t* remap
        int64_t nremap
    cdef struct ColOut:
        int width
        uint8_t* data
        uint8_t* valid
    int64_t num_tasks(const Seg* segs, int nseg, int64_t block)
    void k_filter_count(const Seg* segs, int nseg, int64_t block, int64_t* counts, int nthreads)
    void k_filter_compact(const Seg* segs, int nseg, int64_t block, const int64_t* starts, const ColIn* cin,
                          int ncols, const ColOut* cout, int64_t* nulls, int nthreads)
    void k_take_multi[IdxT](const ColIn* cin, int ncols, const IdxT* idx, int64_t n, const ColOut* cout,
                            int64_t* nulls, int nthreads)
    int64_t k_lut_bits[I](const I* idx, const uint8_t* valid, int64_t voff, int64_t n, const uint8_t* lut,
                          int64_t nlut, uint8_t* out, int nthreads)

#: calls of the native paths (for tests and diagnostics)
STATS = {"filters": 0, "lut_bits": 0, "takes": 0}

#: rows per task (a multiple of 64; tasks are scheduled dynamically over the threads)
BLOCK = 1 << 16


def _threads():
    from opgraph.runtime.kernels import kernel_threads  # cores / ranks sharing them

    return kernel_threads()


cdef int _width(object t):
    """Bytes per value of a fixed-width type (0 = bit-packed bool), -1 if not fixed-width."""
    if pa.types.is_boolean(t):
        return 0
    if isinstance(t, pa.ExtensionType) or pa.types.is_dictionary(t):
        return -1
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_temporal(t)
            or pa.types.is_decimal(t) or pa.types.is_fixed_size_binary(t)):
        return -1
    try:
        w = t.bit_width
    except (ValueError, AttributeError):
        return -1
    if w <= 0 or w % 8:
        return -1
    return w // 8


def supported(t):
    """Whether ``filter_columns`` handles a column of Arrow type ``t``."""
    if pa.types.is_dictionary(t):
        return pa.types.is_integer(t.index_type)
    return _width(t) >= 0


def _chunks(v):
    return list(v.chunks) if isinstance(v, pa.ChunkedArray) else [v]


def same_dictionary(a, b):
    """Whether two dictionaries are the same (same buffers, or equal values when small)."""
    if a is b:
        return True
    if [x.address if x is not None else 0 for x in a.buffers()] == [x.address if x is not None else 0 for x in b.buffers()] \
            and a.offset == b.offset and len(a) == len(b):
        return True
    # comparing values costs O(dictionary); worth it for small ones (one output array)
    return len(a) == len(b) and len(a) <= 4096 and a.equals(b)


#: dictionaries of at most this many entries in all are unified while filtering
UNIFY_MAX = 1 << 16


def _unify(col):
    """(unified dictionary, per-chunk int32 transpose tables - None for a chunk already
    coded in it) of a chunked dictionary column whose chunks' dictionaries differ; (None,
    None) when they are all the same, or too large to unify here."""
    chs = _chunks(col)
    if len(chs) < 2:
        return None, None
    dicts = [ch.dictionary for ch in chs]
    d0 = dicts[0]
    if all(same_dictionary(d, d0) for d in dicts[1:]):
        return None, None
    if sum(len(d) for d in dicts) > UNIFY_MAX:
        return None, None
    import pyarrow.compute as pc

    uni = pc.unique(pa.concat_arrays([d.slice(0, len(d)) for d in dicts]))
    t = col.type.index_type
    if len(uni) > (1 << (t.bit_width - (1 if pa.types.is_signed_integer(t) else 0))) - 1:
        return None, None
    tables = []
    for d in dicts:
        pos = pc.index_in(d, value_set=uni, skip_nulls=False)
        if pos.null_count:  # cannot happen (every entry is in the union); be safe
            return None, None
        tab = np.ascontiguousarray(pos.to_numpy(zero_copy_only=False), dtype=np.int32)
        if len(tab) <= len(uni) and np.array_equal(tab, np.arange(len(tab), dtype=np.int32)):
            tables.append(None)  # already the unified codes
        else:
            tables.append(tab)
    return uni, tables


def filter_columns(mask, columns):
    """(number of selected rows, the columns' selected rows as Arrays). A dictionary column
    whose chunks have different dictionaries comes out coded in their union (small
    dictionaries, ``UNIFY_MAX``), else as a ChunkedArray with one chunk per input chunk,
    each keeping its dictionary (as Arrow's filter does). Every column must have
    ``supported`` type and ``len(mask)`` rows; ``mask`` is boolean (Array or ChunkedArray)."""
    if not pa.types.is_boolean(mask.type):
        raise TypeError("filter_columns: the mask must be boolean")
    cdef int64_t n = len(mask)
    cdef int ncols = len(columns)
    types = [c.type for c in columns]
    for c, t in zip(columns, types):
        if len(c) != n:
            raise ValueError("filter_columns: a column's length differs from the mask's")
        if not supported(t):
            raise TypeError(f"filter_columns: unsupported column type {t}")
    STATS["filters"] += 1
    is_dict = [pa.types.is_dictionary(t) for t in types]
    widths = [_width(t.index_type) if d else _width(t) for t, d in zip(types, is_dict)]
    # dictionary columns whose chunks have different dictionaries: one unified dictionary
    # and a transpose table per chunk (applied while gathering), when the dictionaries are
    # small; else one output chunk per input chunk, each with its dictionary
    remaps = [None] * ncols
    unified = [None] * ncols
    for kk in range(ncols):
        if is_dict[kk]:
            unified[kk], remaps[kk] = _unify(columns[kk])
    # segments: cut at the union of every input's chunk boundaries (no copies)
    inputs = [_chunks(mask)] + [_chunks(c) for c in columns]
    bounds = {0, n}
    for chs in inputs:
        pos = 0
        for ch in chs:
            pos += len(ch)
            bounds.add(pos)
    cuts = sorted(bounds)
    cdef vector[Seg] segs
    cdef vector[ColIn] cin
    cdef Seg g
    cdef ColIn ci
    keep = []
    has_nulls = [False] * ncols
    seg_chunk = [[] for _ in range(ncols)]  # per column: input chunk index of every segment
    cursors = [[0, 0] for _ in inputs]  # (chunk index, row of the chunk's start)
    cdef int k
    cdef int64_t s, e, local
    cdef const int32_t[::1] rv
    for i in range(len(cuts) - 1):
        s, e = cuts[i], cuts[i + 1]
        if e <= s:
            continue
        views = []
        for k in range(len(inputs)):
            chs = inputs[k]
            cur = cursors[k]
            while cur[1] + len(chs[cur[0]]) <= s:
                cur[1] += len(chs[cur[0]])
                cur[0] += 1
            views.append((chs[cur[0]], s - cur[1], cur[0]))
        m, local, _ = views[0]
        bufs = m.buffers()
        keep.append(bufs)
        if bufs[1] is None:
            raise ValueError("filter_columns: a mask chunk without a data buffer")
        g.n = e - s
        g.mask = _addr(bufs[1])
        g.moff = m.offset + local
        g.mvalid = _addr(bufs[0]) if m.null_count else NULL
        g.mvoff = m.offset + local
        segs.push_back(g)
        for k in range(ncols):
            a, local, chunk_index = views[k + 1]
            seg_chunk[k].append(chunk_index)
            if is_dict[k]:
                a = a.indices
            bufs = a.buffers()
            keep.append(bufs)
            if bufs[1] is None:
                raise ValueError("filter_columns: a column chunk without a data buffer")
            ci.data = _addr(bufs[1])
            ci.off = a.offset + local
            if a.null_count:
                ci.valid = _addr(bufs[0])
                has_nulls[k] = True
            else:
                ci.valid = NULL
            ci.voff = a.offset + local
            ci.remap = NULL
            ci.nremap = 0
            if remaps[k] is not None:
                rm = remaps[k][chunk_index]
                if rm is not None:
                    rv = rm
                    ci.remap = &rv[0]
                    ci.nremap = len(rm)
            cin.push_back(ci)
    cdef int nseg = segs.size()
    cdef int64_t block = BLOCK
    cdef int64_t ntasks = num_tasks(segs.data(), nseg, block) if nseg else 0
    starts = np.zeros(ntasks + 1, dtype=np.int64)
    cdef int64_t[::1] sv = starts
    cdef int nt = _threads()
    if ntasks:
        with nogil:
            k_filter_count(segs.data(), nseg, block, &sv[1], nt)
    np.cumsum(starts, out=starts)
    cdef int64_t total = int(starts[ntasks])
    if total == n:
        return total, list(columns)
    cdef vector[ColOut] cout
    cdef ColOut co
    outs = []
    for k in range(ncols):
        w = widths[k]
        nbytes = (total + 63) // 64 * 8 if w == 0 else total * w
        data = pa.allocate_buffer(max(nbytes, 8))
        valid = pa.allocate_buffer(max((total + 63) // 64 * 8, 8)) if has_nulls[k] else None
        co.width = w
        co.data = <uint8_t*><uintptr_t>data.address
        if w == 0:
            memset(co.data, 0, max(nbytes, 8))
        co.valid = NULL
        if valid is not None:
            co.valid = <uint8_t*><uintptr_t>valid.address
            memset(co.valid, 0, max((total + 63) // 64 * 8, 8))
        cout.push_back(co)
        outs.append((data, valid))
    nulls = np.zeros(max(ncols, 1), dtype=np.int64)
    cdef int64_t[::1] nv = nulls
    if total:
        with nogil:
            k_filter_compact(segs.data(), nseg, block, &sv[0], cin.data(), ncols, cout.data(), &nv[0], nt)
    keep.clear()
    # output row range of every segment (for dictionary columns with per-chunk dictionaries)
    seg_tasks = [(cuts[i + 1] - cuts[i] + block - 1) // block for i in range(len(cuts) - 1) if cuts[i + 1] > cuts[i]]
    seg_start = np.concatenate([[0], np.cumsum(seg_tasks)]).astype(np.int64)
    seg_out = starts[seg_start]
    result = []
    for k in range(ncols):
        data, valid = outs[k]
        nn = int(nulls[k])
        vbuf = valid if nn else None
        t = types[k]
        if not is_dict[k]:
            result.append(pa.Array.from_buffers(t, total, [vbuf, data], null_count=nn))
            continue
        if unified[k] is not None:
            result.append(pa.DictionaryArray.from_buffers(t, total, [vbuf, data], unified[k], null_count=nn))
            continue
        dicts = [ch.dictionary for ch in _chunks(columns[k])]
        if all(same_dictionary(d, dicts[0]) for d in dicts[1:]):
            result.append(pa.DictionaryArray.from_buffers(t, total, [vbuf, data], dicts[0], null_count=nn))
            continue
        pieces = []
        sc = seg_chunk[k]
        first = 0
        while first < len(sc):
            last = first
            while last + 1 < len(sc) and sc[last + 1] == sc[first]:
                last += 1
            lo, hi = int(seg_out[first]), int(seg_out[last + 1])
            if hi > lo:
                pieces.append(pa.DictionaryArray.from_buffers(t, hi - lo, [vbuf, data], dicts[sc[first]], offset=lo))
            first = last + 1
        if not pieces:
            pieces.append(pa.DictionaryArray.from_buffers(t, 0, [None, data], dicts[0], null_count=0))
        result.append(pa.chunked_array(pieces, type=t))
    return total, result


def _take_source(col):
    """(one contiguous Array - a dictionary column's indices -, its dictionary or None)."""
    if isinstance(col, pa.ChunkedArray):
        if pa.types.is_dictionary(col.type) and col.num_chunks > 1:
            col = col.unify_dictionaries()
        if col.num_chunks == 1:
            col = col.chunk(0)
        elif col.num_chunks == 0:
            col = pa.array([], col.type)
        else:
            col = pa.concat_arrays(col.chunks)
    if pa.types.is_dictionary(col.type):
        return col.indices, col.dictionary
    return col, None


def take_columns(columns, indices):
    """The ``columns`` (each of ``supported`` type, all of one length) gathered by numpy
    int32/int64 ``indices`` (negative -> null) in one multithreaded pass: Arrays of the
    columns' types (dictionary columns keep their - unified - dictionary)."""
    idx = np.ascontiguousarray(indices)
    if idx.dtype != np.int32 and idx.dtype != np.int64:
        idx = idx.astype(np.int64)
    cdef int ncols = len(columns)
    cdef int64_t n = len(idx)
    types = [c.type for c in columns]
    for t in types:
        if not supported(t):
            raise TypeError(f"take_columns: unsupported column type {t}")
    STATS["takes"] += 1
    srcs = [_take_source(c) for c in columns]
    length = len(srcs[0][0]) if ncols else 0
    if any(len(a) != length for a, _ in srcs):
        raise ValueError("take_columns: columns of different lengths")
    any_neg = bool(n and idx.min() < 0)
    if n and idx.max() >= length:
        raise IndexError("take: index out of bounds")
    if length == 0 and n:
        if not any_neg or (idx >= 0).any():
            raise IndexError("take: index out of bounds")
    cdef vector[ColIn] cin
    cdef vector[ColOut] cout
    cdef ColIn ci
    cdef ColOut co
    outs = []
    keep = []
    cdef int k
    for k in range(ncols):
        a, d = srcs[k]
        w = _width(a.type)
        bufs = a.buffers()
        keep.append(bufs)
        ci.data = _addr(bufs[1])
        ci.off = a.offset
        ci.valid = _addr(bufs[0]) if a.null_count else NULL
        ci.voff = a.offset
        ci.remap = NULL
        ci.nremap = 0
        if ci.data == NULL and length:
            raise ValueError("take_columns: a column without a data buffer")
        nbytes = (n + 63) // 64 * 8 if w == 0 else n * w
        data = pa.allocate_buffer(max(nbytes, 8))
        valid = pa.allocate_buffer(max((n + 63) // 64 * 8, 8)) if (a.null_count or any_neg) else None
        co.width = w
        co.data = <uint8_t*><uintptr_t>data.address
        co.valid = <uint8_t*><uintptr_t>valid.address if valid is not None else NULL
        cout.push_back(co)
        cin.push_back(ci)
        outs.append((data, valid))
    nulls = np.zeros(max(ncols, 1), dtype=np.int64)
    cdef int64_t[::1] nv = nulls
    cdef int nt = _threads()
    cdef const int32_t[::1] i32
    cdef const int64_t[::1] i64
    if n and ncols and length:
        if idx.dtype == np.int32:
            i32 = idx
            with nogil:
                k_take_multi[int32_t](cin.data(), ncols, &i32[0], n, cout.data(), &nv[0], nt)
        else:
            i64 = idx
            with nogil:
                k_take_multi[int64_t](cin.data(), ncols, &i64[0], n, cout.data(), &nv[0], nt)
    result = []
    for k in range(ncols):
        data, valid = outs[k]
        a, d = srcs[k]
        if not length:  # every index is negative: all null
            result.append(pa.nulls(n, types[k]) if d is None else
                          pa.DictionaryArray.from_arrays(pa.nulls(n, a.type), d))
            continue
        nn = int(nulls[k])
        vb = valid if nn else None
        if d is None:
            result.append(pa.Array.from_buffers(types[k], n, [vb, data], null_count=nn))
        else:
            result.append(pa.DictionaryArray.from_buffers(types[k], n, [vb, data], d, null_count=nn))
    return result


def lut_bits(indices, lut):
    """BooleanArray (no nulls) with row i = ``lut[indices[i]] != 0``; a null index -> false.
    ``indices``: an integer Arrow Array; ``lut``: numpy uint8/bool of the dictionary's size."""
    a = indices
    t = a.type
    if not pa.types.is_integer(t):
        raise TypeError("lut_bits: indices must be integers")
    STATS["lut_bits"] += 1
    cdef int64_t n = len(a)
    lutb = (np.asarray(lut) != 0).view(np.uint8)
    out = pa.allocate_buffer(max((n + 63) // 64 * 8, 8))
    if n == 0:
        return pa.Array.from_buffers(pa.bool_(), 0, [None, out], null_count=0)
    cdef const uint8_t[::1] lv = lutb if len(lutb) else np.zeros(1, dtype=np.uint8)
    cdef int64_t nlut = len(lutb)
    bufs = a.buffers()
    cdef const uint8_t* data = _addr(bufs[1])
    cdef const uint8_t* valid = _addr(bufs[0]) if a.null_count else NULL
    cdef int64_t off = a.offset
    cdef uint8_t* o = <uint8_t*><uintptr_t>out.address
    cdef int nt = _threads()
    cdef int bw = t.bit_width
    cdef bint signed = pa.types.is_signed_integer(t)
    with nogil:
        if bw == 8:
            if signed:
                k_lut_bits[int8_t](<const int8_t*>data + off, valid, off, n, &lv[0], nlut, o, nt)
            else:
                k_lut_bits[uint8_t](<const uint8_t*>data + off, valid, off, n, &lv[0], nlut, o, nt)
        elif bw == 16:
            if signed:
                k_lut_bits[int16_t](<const int16_t*>data + off, valid, off, n, &lv[0], nlut, o, nt)
            else:
                k_lut_bits[uint16_t](<const uint16_t*>data + off, valid, off, n, &lv[0], nlut, o, nt)
        elif bw == 32:
            if signed:
                k_lut_bits[int32_t](<const int32_t*>data + off, valid, off, n, &lv[0], nlut, o, nt)
            else:
                k_lut_bits[uint32_t](<const uint32_t*>data + off, valid, off, n, &lv[0], nlut, o, nt)
        else:
            if signed:
                k_lut_bits[int64_t](<const int64_t*>data + off, valid, off, n, &lv[0], nlut, o, nt)
            else:
                k_lut_bits[uint64_t](<const uint64_t*>data + off, valid, off, n, &lv[0], nlut, o, nt)
    return pa.Array.from_buffers(pa.bool_(), n, [None, out], null_count=0)
