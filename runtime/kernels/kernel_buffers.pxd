# Small helpers shared by the kernels' Cython layers (opkernels, windowing, grouping,
# filtering): raw pointers into Arrow / numpy buffers, and deleting a C++ object from
# Cython. Inline only (no runtime module): cimported, e.g.
# ``from kernel_buffers cimport buf_ptr`` (found through cythonize(include_path=...) in setup.py).

from libc.stdint cimport uint8_t, uintptr_t


cdef inline const uint8_t* buf_ptr(object buf) except? NULL:
    """Read pointer to the first byte of a buffer-protocol object (None / empty: NULL)."""
    cdef const uint8_t[::1] mv
    if buf is None:
        return NULL
    mv = memoryview(buf).cast("B")
    if mv.shape[0] == 0:
        return NULL
    return &mv[0]


cdef inline uint8_t* buf_wptr(object buf) except? NULL:
    """Write pointer to the first byte of a writable buffer (None / empty: NULL)."""
    cdef uint8_t[::1] mv
    if buf is None:
        return NULL
    mv = memoryview(buf).cast("B")
    if mv.shape[0] == 0:
        return NULL
    return &mv[0]


cdef inline const uint8_t* buf_addr(object buf):
    """A pyarrow Buffer's address (None: NULL), without the buffer protocol."""
    if buf is None:
        return NULL
    return <const uint8_t*><uintptr_t>buf.address


cdef inline object single_array(object arr):
    """One contiguous Arrow array (a ChunkedArray's chunks concatenated)."""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        if arr.num_chunks == 1:
            return arr.chunk(0)
        if arr.num_chunks == 0:
            return pa.array([], arr.type)
        return pa.concat_arrays(arr.chunks)
    return arr


cdef extern from *:
    """
    template <class T> void opg_delete(T* p) { delete p; }
    """
    void opg_delete[T](T* p) nogil
