# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# distutils: language = c++
"""Compiled operator kernels (C++ in op_kernels.hpp, bound with Cython; GIL released).

* ``sort_indices(columns, descending)``: stable sort order of numeric key columns (radix
  sort; nulls last, NaN after numbers) -> numpy int32/int64 indices.
* ``radix_keys(column, descending)``: the order-preserving uint64 key of every row (and a
  null mask), for range partitioning by splitters.
* ``hash_join_i64(left_keys, right_keys, how)``: (left indices, right indices) int64 numpy
  arrays of the matching row pairs (-1 = no row on that side); null keys never match.
* ``shared_dense_store`` / ``count_filled_slots`` / ``shared_dense_build`` /
  ``shared_dense_probe``: the join of ranks that share a node's memory: one direct-addressed
  table in a shared segment, built by every rank with its own right rows (optimistically
  for unique keys, else by slot ranges), probed by every rank with its own left rows
  (parallel_ops.join).
* ``sort_key_range`` / ``bucket_hist`` / ``bucket_scatter`` / ``sort_buckets``: the sort
  of ranks that share a node's memory: (radix key, row) pairs bucketed by their top bits
  into one shared array, buckets sorted by whichever rank takes them (parallel_ops.sort);
  ``unbase_keys`` gives the key values back from the sorted keys.
* ``sort_carry(key, descending, column)``: a 64-bit key and one narrow column sorted
  together as pairs (local_ops.sort), nothing gathered afterwards.
* ``take(array, indices)``: gather of a fixed-width/bool Arrow array by int32/int64 indices
  (negative -> null), multithreaded; None for types it does not cover.
* ``mask_to_indices(mask)``: positions of the true, valid rows of a boolean Arrow array.
* ``cached_empty(n, dtype)``: a numpy array in the buffer cache that the kernels' big
  temporaries also come from (kernel_common.hpp); ``buffer_cache_stats()``.
* ``range_partition(keys, nulls, splitter_keys, splitter_nulls)``: part per row.

Threads: ``OPGRAPH_KERNEL_THREADS`` (default: the machine's cores).
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libcpp.vector cimport vector
from kernel_buffers cimport buf_ptr as _ptr, buf_wptr as _wptr, opg_delete, single_array as _single

import os

import numpy as np
import pyarrow as pa

cdef extern from "kernel_common.hpp" namespace "opgraph" nogil:
    void* cached_alloc(size_t n) except +
    void cached_free(void* p, size_t n)
    void cached_stats(size_t* idle, size_t* budget)


def buffer_cache_stats():
    """(idle bytes, budget in bytes) of this module's buffer cache (cached_empty)."""
    cdef size_t idle = 0
    cdef size_t budget = 0
    cached_stats(&idle, &budget)
    return int(idle), int(budget)


cdef class _CachedBlock:
    """A block of the kernels' buffer cache (kernel_common.hpp: cached_alloc) as a writable
    Python buffer; it goes back to the cache when the last array over it is gone."""
    cdef void* ptr
    cdef size_t nbytes
    cdef Py_ssize_t shape0
    cdef Py_ssize_t stride0

    def __cinit__(self, size_t nbytes):
        self.nbytes = nbytes if nbytes else 1
        self.ptr = cached_alloc(self.nbytes)
        self.shape0 = <Py_ssize_t>self.nbytes
        self.stride0 = 1

    def __getbuffer__(self, Py_buffer* view, int flags):
        view.buf = self.ptr
        view.obj = self
        view.len = <Py_ssize_t>self.nbytes
        view.readonly = 0
        view.itemsize = 1
        view.format = b"B"
        view.ndim = 1
        view.shape = &self.shape0
        view.strides = &self.stride0
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __dealloc__(self):
        if self.ptr != NULL:
            cached_free(self.ptr, self.nbytes)
            self.ptr = NULL


def cached_empty(int64_t n, dtype):
    """An uninitialised numpy array of ``n`` ``dtype`` values in the kernels' buffer cache
    (big ones are kept for the next call instead of being unmapped)."""
    dt = np.dtype(dtype)
    return np.frombuffer(_CachedBlock(<size_t>(n * dt.itemsize)), dtype=dt, count=n)


cdef extern from "op_kernels.hpp" namespace "opgraph::opk" nogil:
    cdef struct SortKey:
        int kind
        const void* values
        const uint8_t* validity
        int64_t validity_offset
        int desc
    int KEY_INT64
    int KEY_UINT64
    int KEY_FLOAT64
    uint64_t radix_key(int kind, const void* values, int64_t i, bint desc)
    void k_sort_indices[IdxT](const SortKey* ks, int nkeys, int64_t n, IdxT* out, int nthreads, uint64_t* values_out)
    void k_sort_key_range(const SortKey& k, int64_t n, uint64_t* lo, uint64_t* hi, int* any, int nthreads)
    int bucket_threads(int nthreads, int64_t n)
    void k_bucket_hist(const SortKey& k, int64_t n, uint64_t base, int shift, int nb, int nt, int64_t* hist)
    bint k_bucket_scatter[IdxT](const SortKey& k, int64_t n, uint64_t base, int shift, int nb, int nt, int64_t* off,
                                uint64_t* keys, IdxT* rows, int64_t row0, int64_t limit, const IdxT* carry)
    void k_sort_carry[PayT](const SortKey& k, int64_t n, const PayT* payload, uint64_t* keys_out, PayT* pay_out,
                            int nthreads)
    void unradix_keys(const uint64_t* keys, int64_t n, uint64_t base, int kind, bint desc, uint64_t* out, int nthreads)
    void k_sort_buckets[IdxT](uint64_t* keys, IdxT* rows, const int64_t* bstart, int nbuckets, int64_t* next,
                              int nthreads)
    cdef cppclass JoinResult:
        int64_t total
        int ordered
    JoinResult* k_hash_join_i64(const int64_t* lk, const uint8_t* lvalid, int64_t lvoff, int64_t nl,
                              const int64_t* rk, const uint8_t* rvalid, int64_t rvoff, int64_t nr,
                              int how, int nthreads)
    void join_copy_out(JoinResult* res, int64_t* li, int64_t* ri, int nthreads)
    bint k_shared_dense_build(const int64_t* keys, const int64_t* starts, const int64_t* lens, int nregions,
                              int64_t mn, int64_t slot_lo, int64_t slot_hi, int32_t* head, int32_t* chain)
    int64_t dense_store_rows(const int64_t* keys, const uint8_t* valid, int64_t voff, int64_t n, int64_t row0,
                             int64_t mn, int64_t cap, int32_t* head)
    int64_t k_count_filled_slots "opgraph::opk::count_filled_slots"(const int32_t* head, int64_t lo, int64_t hi)
    JoinResult* k_shared_dense_probe(const int64_t* lk, const uint8_t* lvalid, int64_t lvoff, int64_t nl,
                                     int64_t mn, int64_t cap, const int32_t* head, const int32_t* chain,
                                     bint unique, bint keep_left, int nthreads)
    int64_t take_fixed[IdxT](int width, const uint8_t* src, int64_t src_off, const uint8_t* src_valid,
                             int64_t src_voff, const IdxT* idx, int64_t n, uint8_t* out,
                             uint8_t* out_valid, int nthreads)
    int64_t k_mask_to_indices[IdxT](const uint8_t* mask, int64_t moff, const uint8_t* mvalid, int64_t mvoff,
                                  int64_t n, IdxT* out, int nthreads)
    void k_range_partition(const uint64_t* const* keys, const uint8_t* const* nulls, int nkeys, int64_t n,
                         const uint64_t* const* skeys, const uint8_t* const* snulls, int64_t nsplit,
                         int32_t* out, int nthreads)


def _threads():
    from opgraph.runtime.kernels import kernel_threads  # cores / ranks sharing them

    return kernel_threads()


_INT_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16(), pa.uint32())


def _sort_view(arr):
    """(kind, array) with the array's values laid out as int64/uint64/float64, or None."""
    t = arr.type
    if t == pa.int64():
        return KEY_INT64, arr
    if t == pa.uint64():
        return KEY_UINT64, arr
    if t == pa.float64():
        return KEY_FLOAT64, arr
    if t == pa.float32() or t == pa.float16():
        return KEY_FLOAT64, arr.cast(pa.float64())
    if t in _INT_TYPES or pa.types.is_boolean(t):
        return KEY_INT64, arr.cast(pa.int64())
    if (pa.types.is_timestamp(t) or pa.types.is_date64(t) or pa.types.is_duration(t)
            or pa.types.is_time64(t)):
        return KEY_INT64, arr.view(pa.int64())
    if pa.types.is_date32(t) or pa.types.is_time32(t):
        return KEY_INT64, arr.view(pa.int32()).cast(pa.int64())
    return None


def sortable(types):
    """Whether ``sort_indices`` handles key columns of these Arrow types."""
    for t in types:
        if not (t in (pa.int64(), pa.uint64(), pa.float64(), pa.float32(), pa.float16()) or t in _INT_TYPES
                or pa.types.is_boolean(t) or pa.types.is_timestamp(t) or pa.types.is_date(t)
                or pa.types.is_duration(t) or pa.types.is_time(t)):
            return False
    return True


def radix_gives_values(t):
    """Whether the radix keys of a sort key of type ``t`` give back its values when it has
    no nulls (64-bit integer storage, viewed not converted; C++ ``unradix_keys``)."""
    return (t == pa.int64() or t == pa.uint64() or pa.types.is_timestamp(t) or pa.types.is_date64(t)
            or pa.types.is_duration(t) or pa.types.is_time64(t))


def _values_come_back(arr):
    """Whether the radix keys of this one sort key give back its values."""
    return arr.null_count == 0 and radix_gives_values(arr.type)


cdef object _one_sort_key(column, bint descending, SortKey* k, str caller="sort key"):
    """Fills ``k`` for one key column (its values as int64/uint64/float64); returns what must
    stay alive while ``k`` is used."""
    a = _single(column)
    v = _sort_view(a)
    if v is None:
        raise TypeError(f"{caller}: unsupported key type {a.type}")
    a = v[1]
    bufs = a.buffers()
    cdef int64_t off = a.offset
    k.kind = v[0]
    k.values = NULL
    if len(a):
        k.values = <const void*>(_ptr(bufs[1]) + off * 8)
    k.validity = _ptr(bufs[0]) if a.null_count else NULL
    k.validity_offset = off
    k.desc = 1 if descending else 0
    return a, bufs


def sort_indices(columns, descending, bint sorted_key=False):
    """Stable sort order (numpy int32 when fewer than 2^31 rows, else int64) of the rows of
    the key ``columns`` (first most significant), nulls last, NaN after numbers.
    ``sorted_key``: returns (order, the key column in that order or None); it comes out of
    the sort itself for one key of 64-bit integer storage without nulls, else None."""
    cdef int nkeys = len(columns)
    if nkeys == 0:
        raise ValueError("sort_indices: no key columns")
    originals = [_single(c) for c in columns]
    cdef vector[SortKey] ks
    ks.resize(nkeys)
    cdef int i
    keep = []
    for i in range(nkeys):
        keep.append(_one_sort_key(originals[i], descending[i], &ks[i], "sort_indices"))
    cdef int64_t n = len(originals[0])
    idt = np.int32 if n < 2**31 else np.int64
    out = cached_empty(n, idt)
    key_type = None
    if sorted_key and nkeys == 1 and _values_come_back(originals[0]):  # its own type, not the view's
        key_type = originals[0].type
    if n == 0:
        if not sorted_key:
            return out
        return out, (pa.array([], key_type) if key_type is not None else None)
    values = pa.allocate_buffer(n * 8) if key_type is not None else None
    cdef uint64_t* vp = <uint64_t*>_wptr(values) if values is not None else NULL
    cdef int nt = _threads()
    cdef int32_t[::1] o32
    cdef int64_t[::1] o64
    if idt == np.int32:
        o32 = out
        with nogil:
            k_sort_indices[int32_t](ks.data(), nkeys, n, &o32[0], nt, vp)
    else:
        o64 = out
        with nogil:
            k_sort_indices[int64_t](ks.data(), nkeys, n, &o64[0], nt, vp)
    if not sorted_key:
        return out
    return out, (pa.Array.from_buffers(key_type, n, [None, values]) if values is not None else None)


def sort_key_range(column, bint descending):
    """(smallest, largest, any): the extreme radix keys (uint64 as Python ints) of the valid
    rows of ``column``; ``any``: some row is valid."""
    cdef SortKey k
    keep = _one_sort_key(column, descending, &k)
    cdef int64_t n = len(keep[0])
    cdef uint64_t lo = 0
    cdef uint64_t hi = 0
    cdef int got = 0
    cdef int nt = _threads()
    if n:
        with nogil:
            k_sort_key_range(k, n, &lo, &hi, &got, nt)
    return (int(lo), int(hi), True) if got else (0, 0, False)


def _check_buckets(str caller, int shift, int nb):
    if nb < 1 or nb & (nb - 1) or not 0 <= shift < 64:
        raise ValueError(f"{caller}: nb must be a power of two and shift in [0, 64)")


def bucket_hist(column, bint descending, uint64_t base, int shift, int nb):
    """Rows of ``column`` per bucket (((radix key - base) >> shift) & (nb - 1); null keys:
    bucket nb) per thread range: numpy int64 (threads, nb + 1), for ``bucket_scatter``."""
    _check_buckets("bucket_hist", shift, nb)
    cdef SortKey k
    keep = _one_sort_key(column, descending, &k)
    cdef int64_t n = len(keep[0])
    cdef int nt = bucket_threads(_threads(), n)
    out = np.zeros((nt, nb + 1), dtype=np.int64)
    cdef int64_t[:, ::1] hv = out
    if n:
        with nogil:
            k_bucket_hist(k, n, base, shift, nb, nt, &hv[0, 0])
    return out


def bucket_scatter(column, bint descending, uint64_t base, int shift, int nb, offsets, keys, rows, int64_t row0,
                   carry=None):
    """Every row i of ``column`` to position ``offsets[t, bucket]`` (then incremented) of
    ``keys`` (uint64: its radix key - ``base``, 0 for a null) and ``rows`` (int32:
    ``row0 + i``; or, with ``carry``, a numpy array of the rows' values of ``rows``' dtype,
    int32 or uint64: ``carry[i]``); t is the thread range of ``bucket_hist``, whose shape
    ``offsets`` has. ValueError (with the rows up to the first bad one written) when a
    position falls outside the arrays."""
    _check_buckets("bucket_scatter", shift, nb)
    cdef SortKey k
    keep = _one_sort_key(column, descending, &k)
    cdef int64_t n = len(keep[0])
    off = np.ascontiguousarray(offsets, dtype=np.int64).copy()
    cdef int nt = bucket_threads(_threads(), n)
    if off.shape != (nt, nb + 1):
        raise ValueError("bucket_scatter: offsets are not bucket_hist's shape")
    if carry is not None and (carry.dtype != rows.dtype or len(carry) != n):
        raise ValueError("bucket_scatter: carry needs one value per row, of the dtype of rows")
    if carry is None and rows.dtype != np.int32:
        raise ValueError("bucket_scatter: row numbers go to int32 rows")
    cdef uint64_t[::1] kv = keys
    cdef int32_t[::1] r32
    cdef uint64_t[::1] r64
    cdef const int32_t[::1] c32
    cdef const uint64_t[::1] c64
    cdef int64_t limit = min(kv.shape[0], len(rows))
    if carry is None and (row0 < 0 or row0 + n >= (<int64_t>1 << 31)):
        raise ValueError("bucket_scatter: row numbers beyond int32")
    cdef int64_t[:, ::1] ov = off
    cdef bint ok = True
    if n == 0:
        return
    if limit == 0:
        raise ValueError("bucket_scatter: positions outside the arrays")
    if rows.dtype == np.int32:
        r32 = rows
        if carry is not None:
            c32 = carry
        with nogil:
            ok = k_bucket_scatter[int32_t](k, n, base, shift, nb, nt, &ov[0, 0], &kv[0], &r32[0], row0, limit,
                                           &c32[0] if carry is not None else NULL)
    elif rows.dtype == np.uint64:
        r64 = rows
        c64 = carry
        with nogil:
            ok = k_bucket_scatter[uint64_t](k, n, base, shift, nb, nt, &ov[0, 0], &kv[0], &r64[0], row0, limit, &c64[0])
    else:
        raise TypeError("bucket_scatter: rows must be int32 or uint64")
    if not ok:
        raise ValueError("bucket_scatter: positions outside the arrays")


def unbase_keys(keys, uint64_t base, t, bint descending):
    """The values of a ``radix_gives_values`` key of type ``t`` from its radix keys taken
    relative to ``base`` (``bucket_scatter``'s keys, sorted): a new Arrow array of type t."""
    if not radix_gives_values(t):
        raise TypeError(f"unbase_keys: the radix keys of {t} do not give its values")
    cdef const uint64_t[::1] kv = keys
    cdef int64_t n = kv.shape[0]
    out = pa.allocate_buffer(max(n, 1) * 8)
    cdef uint64_t* op = <uint64_t*>_wptr(out)
    cdef int kind = KEY_UINT64 if t == pa.uint64() else KEY_INT64
    cdef int nt = _threads()
    if n:
        with nogil:
            unradix_keys(&kv[0], n, base, kind, descending, op, nt)
    return pa.Array.from_buffers(t, n, [None, out])


def sort_buckets(keys, rows, bstart, counter):
    """Sorts (stable, by key) every bucket ``bstart[d]:bstart[d + 1]`` of ``keys`` (uint64)
    with ``rows`` (int32 or uint64) in place, taking buckets from ``counter`` (int64 array of
    one, in memory every rank sees; 0 before the first rank starts) until none is left."""
    cdef uint64_t[::1] kv = keys
    cdef int32_t[::1] r32
    cdef uint64_t[::1] r64
    bs = np.ascontiguousarray(bstart, dtype=np.int64)
    cdef const int64_t[::1] bv = bs
    cdef int64_t[::1] cv = counter
    cdef int nbuckets = len(bs) - 1
    if nbuckets < 1 or cv.shape[0] < 1:
        raise ValueError("sort_buckets: no buckets or no counter")
    if bs[0] < 0 or np.any(np.diff(bs) < 0) or bs[nbuckets] > min(kv.shape[0], len(rows)):
        raise ValueError("sort_buckets: bucket bounds outside the arrays")
    cdef int nt = _threads()
    if bs[nbuckets] == 0:
        return
    if rows.dtype == np.int32:
        r32 = rows
        with nogil:
            k_sort_buckets[int32_t](&kv[0], &r32[0], &bv[0], nbuckets, &cv[0], nt)
    elif rows.dtype == np.uint64:
        r64 = rows
        with nogil:
            k_sort_buckets[uint64_t](&kv[0], &r64[0], &bv[0], nbuckets, &cv[0], nt)
    else:
        raise TypeError("sort_buckets: rows must be int32 or uint64")


def sort_carry(key, bint descending, column):
    """(key, column) sorted together by the key (stable), for one key whose radix keys give
    its values (``radix_gives_values``) and one column of 4 or 8 bytes a value, neither with
    nulls: two new Arrow arrays. None when the columns do not qualify (sort_indices then)."""
    k = _single(key)
    c = _single(column)
    if (not radix_gives_values(k.type) or k.null_count or c.null_count or len(k) != len(c)
            or not can_take(c.type) or _width(c.type) not in (4, 8)):
        return None
    cdef SortKey sk
    keep = _one_sort_key(k, descending, &sk)
    cdef int64_t n = len(k)
    cdef int w = _width(c.type)
    keys_out = pa.allocate_buffer(max(n, 1) * 8)
    pay_out = pa.allocate_buffer(max(n, 1) * w)
    cdef uint64_t* kp = <uint64_t*>_wptr(keys_out)
    cdef uint8_t* pp = <uint8_t*>_wptr(pay_out)
    cbufs = c.buffers()
    cdef int64_t coff = c.offset
    cdef const uint8_t* src = NULL
    if n:
        src = _ptr(cbufs[1]) + coff * w
    cdef int nt = _threads()
    if n:
        with nogil:
            if w == 8:
                k_sort_carry[uint64_t](sk, n, <const uint64_t*>src, kp, <uint64_t*>pp, nt)
            else:
                k_sort_carry[int32_t](sk, n, <const int32_t*>src, kp, <int32_t*>pp, nt)
    return (pa.Array.from_buffers(k.type, n, [None, keys_out]), pa.Array.from_buffers(c.type, n, [None, pay_out]))


def radix_keys(column, bint descending=False):
    """(uint64 keys, uint8 null flags or None): keys compare as the sort orders the rows."""
    cdef SortKey k
    a = _one_sort_key(column, descending, &k, "radix_keys")[0]
    cdef int64_t n = len(a)
    out = cached_empty(n, np.uint64)
    if n == 0:
        return out, None
    cdef uint64_t[::1] ov = out
    cdef int64_t i
    with nogil:
        for i in range(n):
            ov[i] = radix_key(k.kind, k.values, i, descending)
    nulls = None
    if a.null_count:
        nulls = np.ascontiguousarray(a.is_null().to_numpy(zero_copy_only=False)).view(np.uint8)
    return out, nulls


def range_partition(keys, nulls, skeys, snulls):
    """Part (0..len(splitters)) of every row: the first splitter the row sorts at or before;
    keys/skeys: lists of uint64 arrays (one per key column), nulls/snulls: uint8 arrays or None."""
    cdef int nkeys = len(keys)
    cdef int64_t n = len(keys[0]) if nkeys else 0
    cdef int64_t ns = len(skeys[0]) if nkeys else 0
    out = np.zeros(n, dtype=np.int32)
    if n == 0 or ns == 0:
        return out
    cdef vector[const uint64_t*] kp, skp
    cdef vector[const uint8_t*] np_, snp
    cdef const uint64_t[::1] kv
    cdef const uint8_t[::1] nv
    keep = []
    for c in range(nkeys):
        k = np.ascontiguousarray(keys[c], dtype=np.uint64)
        s = np.ascontiguousarray(skeys[c], dtype=np.uint64)
        keep += [k, s]
        kv = k
        kp.push_back(&kv[0])
        kv = s
        skp.push_back(&kv[0])
        if nulls[c] is not None:
            a = np.ascontiguousarray(nulls[c], dtype=np.uint8)
            keep.append(a)
            nv = a
            np_.push_back(&nv[0])
        else:
            np_.push_back(NULL)
        if snulls[c] is not None:
            a = np.ascontiguousarray(snulls[c], dtype=np.uint8)
            keep.append(a)
            nv = a
            snp.push_back(&nv[0])
        else:
            snp.push_back(NULL)
    cdef int32_t[::1] ov = out
    cdef int nt = _threads()
    with nogil:
        k_range_partition(kp.data(), np_.data(), nkeys, n, skp.data(), snp.data(), ns, &ov[0], nt)
    return out


_HOW = {"inner": 0, "left": 1, "right": 2, "outer": 3}

#: whether the last hash_join_i64 probed the left rows in order (op_kernels.hpp
#: join_sequential_probe: inner/left results in left-row order; tests)
last_join_ordered = False


def hash_join_i64(left_keys, right_keys, how="inner"):
    """Matching row pairs of two int64 key arrays: (left indices, right indices), numpy
    int64, -1 where an outer join has no row on that side. Null keys never match."""
    la = _single(left_keys)
    ra = _single(right_keys)
    if la.type != pa.int64() or ra.type != pa.int64():
        raise TypeError("hash_join_i64: keys must be int64")
    cdef int h = _HOW[how]
    cdef int64_t nl = len(la)
    cdef int64_t nr = len(ra)
    lb = la.buffers()
    rb = ra.buffers()
    cdef int64_t lo = la.offset
    cdef int64_t ro = ra.offset
    cdef const int64_t* lk = NULL
    cdef const int64_t* rk = NULL
    cdef const uint8_t* lv = NULL
    cdef const uint8_t* rv = NULL
    if nl:
        lk = (<const int64_t*>_ptr(lb[1])) + lo
        if la.null_count:
            lv = _ptr(lb[0])
    if nr:
        rk = (<const int64_t*>_ptr(rb[1])) + ro
        if ra.null_count:
            rv = _ptr(rb[0])
    cdef int nt = _threads()
    cdef JoinResult* res
    with nogil:
        res = k_hash_join_i64(lk, lv, lo, nl, rk, rv, ro, nr, h, nt)
    global last_join_ordered
    last_join_ordered = bool(res.ordered)
    return _join_pairs(res, nt)


cdef object _join_pairs(JoinResult* res, int nt):
    """A JoinResult's pairs as two numpy int64 arrays (res is deleted)."""
    cdef int64_t total = res.total
    li = cached_empty(total, np.int64)
    ri = cached_empty(total, np.int64)
    cdef int64_t[::1] liv = li
    cdef int64_t[::1] riv = ri
    cdef int64_t* lp = &liv[0] if total else NULL
    cdef int64_t* rp = &riv[0] if total else NULL
    with nogil:
        join_copy_out(res, lp, rp, nt)
        opg_delete(res)
    return li, ri


cdef const int64_t* _i64_keys(object arr, const uint8_t** valid) except? NULL:
    """Values pointer (at the array's offset) and validity bitmap (NULL: no nulls) of an
    int64 array."""
    if arr.type != pa.int64():
        raise TypeError("shared join: keys must be int64")
    valid[0] = NULL
    if len(arr) == 0:
        return NULL
    b = arr.buffers()
    if arr.null_count:
        valid[0] = _ptr(b[0])
    cdef int64_t off = arr.offset
    return (<const int64_t*>_ptr(b[1])) + off


def shared_dense_build(keys, starts, lengths, int64_t mn, head, chain, int64_t slot_lo, int64_t slot_hi):
    """Fills slots ``slot_lo:slot_hi`` of the node-shared direct-addressed table ``head``
    (int32, one slot per key from ``mn``; -1 = empty) from every rank's right keys
    (``keys``: int64, rank r's rows at ``starts[r]:starts[r] + lengths[r]``, null rows holding
    a key outside the table), linking rows of one key through ``chain`` (int32, one per
    row, -1 in every entry before any rank starts). Ranks fill disjoint slot ranges at once. True when some key came twice."""
    cdef const int64_t[::1] kv = keys
    cdef int32_t[::1] hv = head
    cdef int32_t[::1] cv = chain
    st = np.ascontiguousarray(starts, dtype=np.int64)
    ln = np.ascontiguousarray(lengths, dtype=np.int64)
    cdef const int64_t[::1] sv = st
    cdef const int64_t[::1] lv = ln
    cdef int nregions = len(st)
    if len(ln) != nregions or nregions == 0:
        raise ValueError("shared_dense_build: one start and one length per rank")
    if cv.shape[0] != kv.shape[0] or cv.shape[0] >= (<int64_t>1 << 31):
        raise ValueError("shared_dense_build: one chain entry per key (int32 row numbers)")
    if np.any(st < 0) or np.any(ln < 0) or np.any(st + ln > kv.shape[0]):
        raise ValueError("shared_dense_build: rows outside the key array")
    if not (0 <= slot_lo <= slot_hi <= hv.shape[0]):
        raise ValueError("shared_dense_build: slots outside the table")
    cdef const int64_t* kp = &kv[0] if kv.shape[0] else NULL
    cdef int32_t* hp = &hv[0] if hv.shape[0] else NULL
    cdef int32_t* cp = &cv[0] if cv.shape[0] else NULL
    cdef bint dup
    with nogil:
        dup = k_shared_dense_build(kp, &sv[0], &lv[0], nregions, mn, slot_lo, slot_hi, hp, cp)
    return bool(dup)


def shared_dense_store(keys, int64_t row0, int64_t mn, head):
    """The optimistic node-shared build: stores this rank's right rows (``keys``: an int64
    Arrow array, nulls skipped; global row numbers from ``row0``) at their slots of ``head``
    (int32, one slot per key from ``mn``; -1 in every slot before any rank starts; every
    valid key in the table), at once with the other ranks. Returns the rows stored. The
    table is right when the filled slots (``count_filled_slots`` over all ranks) number the
    stored rows of all ranks: no key came twice. Otherwise ``shared_dense_build`` builds it.
    ValueError for a key outside the table (the table's content is then unspecified)."""
    ka = _single(keys)
    cdef const uint8_t* kvalid = NULL
    cdef const int64_t* kp = _i64_keys(ka, &kvalid)
    cdef int64_t n = len(ka)
    cdef int64_t voff = ka.offset
    cdef int32_t[::1] hv = head
    cdef int64_t cap = hv.shape[0]
    if n and (row0 < 0 or row0 + n >= (<int64_t>1 << 31)):
        raise ValueError("shared_dense_store: row numbers beyond int32")
    cdef int32_t* hp = &hv[0] if cap else NULL
    cdef int64_t stored
    with nogil:
        stored = dense_store_rows(kp, kvalid, voff, n, row0, mn, cap, hp)
    if stored < 0:
        raise ValueError("shared_dense_store: a key outside the table")
    return stored


def count_filled_slots(head, int64_t lo, int64_t hi):
    """Slots ``lo:hi`` of a direct-addressed ``head`` (int32) that hold a row (>= 0)."""
    cdef const int32_t[::1] hv = head
    if not (0 <= lo <= hi <= hv.shape[0]):
        raise ValueError("count_filled_slots: slots outside the table")
    cdef const int32_t* hp = &hv[0] if hv.shape[0] else NULL
    cdef int64_t filled
    with nogil:
        filled = k_count_filled_slots(hp, lo, hi)
    return filled


def shared_dense_probe(left_keys, int64_t mn, head, chain, bint unique, how="inner"):
    """This rank's left rows against the node-shared table of ``shared_dense_build`` (every
    rank's inserts done): (left indices, global right indices) in left-row order, numpy
    int64; -1 for the right side of an unmatched left row (``how="left"``)."""
    if how not in ("inner", "left"):
        raise ValueError(f"shared_dense_probe: join kind '{how}' (inner or left)")
    la = _single(left_keys)
    cdef const uint8_t* lv = NULL
    cdef const int64_t* lk = _i64_keys(la, &lv)
    cdef int64_t nl = len(la)
    cdef int64_t lo = la.offset
    cdef const int32_t[::1] hv = head
    cdef const int32_t[::1] cv = chain
    cdef int64_t cap = hv.shape[0]
    cdef const int32_t* hp = &hv[0] if cap else NULL
    cdef const int32_t* cp = &cv[0] if cv.shape[0] else NULL
    cdef bint keep_left = how == "left"
    cdef int nt = _threads()
    cdef JoinResult* res
    with nogil:
        res = k_shared_dense_probe(lk, lv, lo, nl, mn, cap, hp, cp, unique, keep_left, nt)
    return _join_pairs(res, nt)


cdef int _width(object t):
    if pa.types.is_boolean(t):
        return 0
    try:
        w = t.bit_width
    except (ValueError, AttributeError):
        return -1
    if w % 8 or w <= 0:
        return -1
    if pa.types.is_decimal(t) or pa.types.is_fixed_size_binary(t):
        return w // 8
    if (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_temporal(t)):
        return w // 8
    return -1


def can_take(t):
    return _width(t) >= 0 and not pa.types.is_dictionary(t) and not isinstance(t, pa.ExtensionType)


def take(column, indices):
    """``column`` gathered by ``indices`` (numpy int32/int64; negative -> null) as one Arrow
    array, or None when the type is not fixed-width/bool (use Arrow's take then)."""
    t = column.type
    if not can_take(t):
        return None
    a = _single(column)
    idx = np.ascontiguousarray(indices)
    if idx.dtype != np.int32 and idx.dtype != np.int64:
        idx = idx.astype(np.int64)
    cdef int w = _width(t)
    cdef int64_t n = len(idx)
    if len(a) == 0 and n:
        if (idx >= 0).any():
            raise IndexError("take: index out of bounds")
        return pa.nulls(n, t)
    cdef bint any_neg = n > 0 and bool(idx.min() < 0)
    if n and idx.max() >= len(a):
        raise IndexError("take: index out of bounds")
    cdef bint nulls = a.null_count > 0 or any_neg
    bufs = a.buffers()
    cdef const uint8_t* src = _ptr(bufs[1])
    cdef const uint8_t* sv = _ptr(bufs[0]) if a.null_count else NULL
    cdef int64_t off = a.offset
    values = pa.allocate_buffer(max((n + 7) // 8 if w == 0 else n * w, 1))
    validity = pa.allocate_buffer(max((n + 7) // 8, 1)) if nulls else None
    cdef uint8_t[::1] vv = memoryview(values).cast("B")
    cdef uint8_t[::1] qv
    cdef uint8_t* outp = &vv[0]
    cdef uint8_t* outv = NULL
    if validity is not None:
        qv = memoryview(validity).cast("B")
        outv = &qv[0]
    cdef int nt = _threads()
    cdef int64_t nn = 0
    cdef const int32_t[::1] i32
    cdef const int64_t[::1] i64
    if n:
        if idx.dtype == np.int32:
            i32 = idx
            with nogil:
                nn = take_fixed[int32_t](w, src, off, sv, off, &i32[0], n, outp, outv, nt)
        else:
            i64 = idx
            with nogil:
                nn = take_fixed[int64_t](w, src, off, sv, off, &i64[0], n, outp, outv, nt)
    return pa.Array.from_buffers(t, n, [validity if nn else None, values], null_count=nn)


def mask_to_indices(mask):
    """Row positions (numpy int32/int64) where the boolean Arrow ``mask`` is true (null =
    false)."""
    m = _single(mask)
    if not pa.types.is_boolean(m.type):
        raise TypeError("mask_to_indices: mask must be boolean")
    cdef int64_t n = len(m)
    idt = np.int32 if n < 2**31 else np.int64
    out = cached_empty(n, idt)
    if n == 0:
        return out
    bufs = m.buffers()
    cdef const uint8_t* mb = _ptr(bufs[1])
    cdef const uint8_t* mv = _ptr(bufs[0]) if m.null_count else NULL
    cdef int64_t off = m.offset
    cdef int nt = _threads()
    cdef int64_t cnt
    cdef int32_t[::1] o32
    cdef int64_t[::1] o64
    if idt == np.int32:
        o32 = out
        with nogil:
            cnt = k_mask_to_indices[int32_t](mb, off, mv, off, n, &o32[0], nt)
    else:
        o64 = out
        with nogil:
            cnt = k_mask_to_indices[int64_t](mb, off, mv, off, n, &o64[0], nt)
    return out[:cnt]
