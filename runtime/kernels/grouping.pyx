# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# distutils: language = c++
"""Compiled hash group-by aggregation (C++ in group_kernels.hpp, bound with Cython; GIL
released in the kernel).

``groupby(keys, values, aggs)``: ``keys`` a list of Arrow arrays/ChunkedArrays (integer or
bool), ``values`` a list of Arrow arrays (numeric or bool; any type for count/size),
``aggs`` a list of (value index, fn) with fn in ``FNS``. Returns (key arrays, aggregate
arrays), one row per group (null keys form one group; order unspecified), or None when the
kernel does not cover the input (the caller uses Acero then). Result types are those of
``local_ops.groupby_agg``'s Acero path before its final cast: sum of ints -> int64, sum of
floats / sum_f / mean / var / std -> float64, count / size -> int64, min / max -> the
value column's type.

``calls`` counts the inputs the kernel aggregated (tests check the dispatch with it).
Threads: ``kernel_threads()``.
"""

from libc.stdint cimport int64_t, uint8_t
from libcpp.vector cimport vector
from kernel_buffers cimport buf_ptr as _ptr, buf_wptr as _wptr, opg_delete

import pyarrow as pa
import pyarrow.compute as pc

cdef extern from "group_kernels.hpp" namespace "opgraph::grp" nogil:
    cdef struct Chunk:
        const uint8_t* data
        const uint8_t* valid
        int64_t offset
    cdef struct Column:
        int type
        const Chunk* chunks
    cdef struct Spec:
        int64_t n
        int nchunks
        const int64_t* chunk_starts
        int nkeys
        const Column* keys
        int nvals
        const Column* vals
        int naggs
        const int* agg_col
        const int* agg_fn
    cdef cppclass Result:
        int status
        int64_t ngroups
        bint partitioned
        bint direct
    cdef struct OutCol:
        uint8_t* values
        uint8_t* valid
        int64_t nulls
    Result* k_groupby(const Spec& sp, int nthreads, int mode) except +
    void k_finalize(Result* res, const Spec& sp, OutCol* keys, OutCol* aggs, int nthreads) except +

FNS = ("sum", "sum_f", "mean", "min", "max", "count", "size", "var", "std")
_FN_CODE = {fn: i for i, fn in enumerate(FNS)}

# Arrow type -> kernel type code (group_kernels.hpp VType)
_TYPE_CODE = {
    pa.int8(): 0, pa.int16(): 1, pa.int32(): 2, pa.int64(): 3,
    pa.uint8(): 4, pa.uint16(): 5, pa.uint32(): 6, pa.uint64(): 7,
    pa.float32(): 8, pa.float64(): 9,
}
_T_NONE = 10
_WIDTH = {0: 1, 1: 2, 2: 4, 3: 8, 4: 1, 5: 2, 6: 4, 7: 8, 8: 4, 9: 8}

calls = 0          # inputs aggregated by the kernel
last_partitioned = False  # whether the last call took the partitioned path (tests)
last_direct = False  # whether the last call used array-indexed groups (tests)


def _threads():
    from opgraph.runtime.kernels import kernel_threads

    return kernel_threads()


def key_type_ok(t) -> bool:
    return t in _TYPE_CODE and not pa.types.is_floating(t) or pa.types.is_boolean(t)


def value_type_ok(t, fn: str) -> bool:
    if fn in ("count", "size"):
        return True
    return t in _TYPE_CODE or pa.types.is_boolean(t) or pa.types.is_float16(t)


def supported(key_types, aggs) -> bool:
    """Whether ``groupby`` covers keys of these types and these (value type, fn) pairs."""
    if not key_types:
        return False
    if not all(key_type_ok(t) for t in key_types):
        return False
    return all(fn in _FN_CODE and value_type_ok(t, fn) for t, fn in aggs)


def _chunks(arr):
    if isinstance(arr, pa.ChunkedArray):
        return list(arr.chunks)
    return [arr]


def _cast_all(arr, to):
    return pc.cast(arr, to)


def groupby(keys, values, aggs, int mode=0, nthreads=None):
    """Hash group-by (see the module doc). ``mode`` (tests): 0 automatic (group_kernels.hpp
    picks array-indexed, thread-local hash tables or hash partitions), 1 thread-local hash
    tables, 2 hash partitions, 3 array-indexed where the keys' range allows, else 1."""
    global calls, last_partitioned, last_direct
    key_types = [k.type for k in keys]
    if not supported(key_types, [(values[i].type, fn) for i, fn in aggs]):
        return None
    cdef int nkeys = len(keys)
    # views the kernel reads: bool keys/values as uint8, float16 as float32, other-typed
    # columns that are only counted as validity only
    kin = []
    for k in keys:
        kin.append(_cast_all(k, pa.uint8()) if pa.types.is_boolean(k.type) else k)
    vin = []
    vtypes = []
    for i, v in enumerate(values):
        fns = {fn for j, fn in aggs if j == i}
        t = v.type
        if t in _TYPE_CODE:
            vin.append(v)
            vtypes.append(_TYPE_CODE[t])
        elif (pa.types.is_boolean(t) or pa.types.is_float16(t)) and fns - {"count", "size"}:
            to = pa.uint8() if pa.types.is_boolean(t) else pa.float32()
            vin.append(_cast_all(v, to))
            vtypes.append(_TYPE_CODE[to])
        else:
            vin.append(v)
            vtypes.append(_T_NONE)
    cols = kin + vin
    n = len(cols[0])
    if any(len(col) != n for col in cols):
        raise ValueError("groupby: columns of different lengths")
    if any(pa.types.is_null(col.type) for col in cols):
        return None
    # empty: the output arrays of the right types
    out_key_types = [k.type for k in kin]
    out_agg_types = []
    for i, fn in aggs:
        t = vin[i].type
        if fn in ("count", "size"):
            out_agg_types.append(pa.int64())
        elif fn == "sum":
            out_agg_types.append(pa.float64() if pa.types.is_floating(t) else pa.int64())
        elif fn in ("min", "max"):
            out_agg_types.append(t)
        else:
            out_agg_types.append(pa.float64())
    if n == 0:
        calls += 1
        return (_restore([pa.array([], t) for t in out_key_types], key_types),
                _restore_aggs([pa.array([], t) for t in out_agg_types], aggs, values))
    # one common chunk layout (else one chunk per column)
    chunked = [_chunks(col) for col in cols]
    lens = [len(ch) for ch in chunked[0]]
    if any([len(ch) for ch in cc] != lens for cc in chunked[1:]):
        chunked = [[pa.concat_arrays(cc)] if len(cc) != 1 else cc for cc in chunked]
        lens = [n]

    cdef int nchunks = len(lens)
    cdef vector[int64_t] starts
    starts.resize(nchunks + 1)
    s = 0
    cdef int c
    for c in range(nchunks):
        starts[c] = s
        s += lens[c]
    starts[nchunks] = s
    ncols = len(cols)
    cdef vector[Chunk] chunk_store
    chunk_store.resize(ncols * nchunks)
    keep = []
    cdef int j
    cdef int code
    for j in range(ncols):
        code = _TYPE_CODE[cols[j].type] if j < nkeys else vtypes[j - nkeys]
        for c in range(nchunks):
            a = chunked[j][c]
            bufs = a.buffers()
            keep.append(bufs)
            chunk_store[j * nchunks + c].data = _ptr(bufs[1]) if code != _T_NONE and len(bufs) > 1 else NULL
            chunk_store[j * nchunks + c].valid = _ptr(bufs[0]) if a.null_count else NULL
            chunk_store[j * nchunks + c].offset = a.offset
    cdef vector[Column] colv
    colv.resize(ncols)
    for j in range(ncols):
        colv[j].type = _TYPE_CODE[cols[j].type] if j < nkeys else vtypes[j - nkeys]
        colv[j].chunks = &chunk_store[j * nchunks]
    cdef vector[int] agg_col
    cdef vector[int] agg_fn
    for i, fn in aggs:
        agg_col.push_back(i)
        agg_fn.push_back(_FN_CODE[fn])
    cdef Spec sp
    sp.n = n
    sp.nchunks = nchunks
    sp.chunk_starts = starts.data()
    sp.nkeys = nkeys
    sp.keys = colv.data()
    sp.nvals = ncols - nkeys
    sp.vals = colv.data() + nkeys
    sp.naggs = len(aggs)
    sp.agg_col = agg_col.data()
    sp.agg_fn = agg_fn.data()
    cdef int nt = nthreads if nthreads is not None else _threads()
    cdef int md = mode
    cdef Result* res
    cdef vector[OutCol] kout
    cdef vector[OutCol] aout
    with nogil:
        res = k_groupby(sp, nt, md)
    try:
        if res.status != 0:
            return None
        G = res.ngroups
        last_partitioned = bool(res.partitioned)
        last_direct = bool(res.direct)
        nbits = max(1, (G + 7) // 8)
        key_bufs = []
        agg_bufs = []
        kout.resize(nkeys)
        aout.resize(len(aggs))
        for j in range(nkeys):
            vb = pa.allocate_buffer(max(1, G * _WIDTH[_TYPE_CODE[out_key_types[j]]]))
            mb = pa.allocate_buffer(nbits) if cols[j].null_count else None
            key_bufs.append((vb, mb))
            kout[j].values = _wptr(vb)
            kout[j].valid = _wptr(mb)
        for j, (i, fn) in enumerate(aggs):
            t = out_agg_types[j]
            vb = pa.allocate_buffer(max(1, G * (t.bit_width // 8)))
            nullable = fn in ("var", "std") or (fn not in ("count", "size") and vin[i].null_count > 0)
            mb = pa.allocate_buffer(nbits) if nullable else None
            agg_bufs.append((vb, mb))
            aout[j].values = _wptr(vb)
            aout[j].valid = _wptr(mb)
        with nogil:
            k_finalize(res, sp, kout.data(), aout.data(), nt)
        out_keys = []
        for j in range(nkeys):
            vb, mb = key_bufs[j]
            nn = kout[j].nulls
            out_keys.append(pa.Array.from_buffers(out_key_types[j], G, [mb if nn else None, vb], null_count=nn))
        out_aggs = []
        for j in range(len(aggs)):
            vb, mb = agg_bufs[j]
            nn = aout[j].nulls
            out_aggs.append(pa.Array.from_buffers(out_agg_types[j], G, [mb if nn else None, vb], null_count=nn))
    finally:
        with nogil:
            opg_delete(res)
    calls += 1
    return _restore(out_keys, key_types), _restore_aggs(out_aggs, aggs, values)


def _restore(arrays, types):
    return [a if a.type == t else pc.cast(a, t) for a, t in zip(arrays, types)]


def _restore_aggs(arrays, aggs, values):
    """min/max of bool / float16 values back to the value type."""
    out = []
    for a, (i, fn) in zip(arrays, aggs):
        t = values[i].type
        if fn in ("min", "max") and a.type != t:
            a = pc.cast(a, t)
        out.append(a)
    return out
