"""``MPICommunicator``: the runtime's communicator interface over an mpi4py communicator.

Tables cross ranks as Arrow IPC *stream* bytes: a table is written with ``pa.ipc`` into one
``pa.BufferOutputStream`` and the resulting buffer is sent with mpi4py's uppercase (buffer)
API as a numpy ``uint8`` view (no copy); the receiver deserialises with
``pa.ipc.open_stream(pa.py_buffer(bytes))``, whose columns point into the receive buffer (no
copy). Sizes travel first (``Alltoall``/``Allgather``/``Gather``/``Bcast`` of int64 counts) so
every receive buffer is allocated exactly. Nothing is pickled: small numeric arrays go through
``Allreduce`` on their own buffers.

The shuffle (``alltoallv_by_part``) moves fixed-width and boolean columns without IPC: one
pass over the rows (``scatter_rows``) moves every column's rows by part id into send buffers
(the own rows straight into the receive buffer), sent as raw values with ``Isend``/``Irecv``.

A rank's own part never goes through MPI: ``alltoallv``/``gather``/``allgather`` hand it back
by reference, as the local communicator does.

``send`` is *buffered*, as in the local communicator: it starts an ``Isend`` and returns at
once, so the common halo pattern "everyone sends to the right neighbour, then receives from the
left" cannot deadlock on MPI's rendezvous protocol. Pending sends are completed by later calls,
by ``barrier`` and by ``finish``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
from mpi4py import MPI
from opgraph.runtime.communicator import REDUCE_OPS, Communicator, check_part_counts
from opgraph.runtime.kernels.hashing import scatter_rows

__all__ = ["MPICommunicator", "abort_world", "buffer_to_table", "serialize_tables", "table_to_buffer"]

_MPI_OPS = {"sum": MPI.SUM, "min": MPI.MIN, "max": MPI.MAX, "prod": MPI.PROD}
assert set(_MPI_OPS) == set(REDUCE_OPS)


def table_to_buffer(table: pa.Table) -> pa.Buffer:
    """One table as Arrow IPC stream bytes (schema, record batches, end-of-stream)."""
    return serialize_tables([table])[0]


def serialize_tables(tables: Sequence[pa.Table | None]) -> tuple[pa.Buffer, np.ndarray]:
    """Several tables as consecutive IPC streams in one buffer, and each stream's size (0 for
    a None entry). The sizes are measured first (``MockOutputStream`` copies nothing), so the
    buffer is allocated once, exactly, from Arrow's pool and written in one pass."""
    sizes = np.zeros(len(tables), dtype=np.int64)
    for i, table in enumerate(tables):
        if table is not None:
            mock = pa.MockOutputStream()
            _write_stream(mock, table)
            sizes[i] = mock.size()
    buf = pa.allocate_buffer(int(sizes.sum()))
    sink = pa.FixedSizeBufferWriter(buf)
    for i, table in enumerate(tables):
        if table is not None:
            start = sink.tell()
            _write_stream(sink, table)
            if sink.tell() - start != sizes[i]:  # pragma: no cover - Arrow invariant
                raise RuntimeError("Arrow IPC stream size changed between measuring and writing")
    return buf, sizes


def _write_stream(sink, table: pa.Table) -> None:
    if not isinstance(table, pa.Table):
        raise TypeError(f"the communicator moves pyarrow.Table objects, not {type(table).__name__}")
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def buffer_to_table(data) -> pa.Table:
    """The table in Arrow IPC stream bytes (``pa.Buffer``, numpy array or bytes); zero-copy:
    the table's columns keep ``data`` alive and point into it."""
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def _as_bytes(buf: pa.Buffer) -> np.ndarray:
    return np.frombuffer(buf, dtype=np.uint8)


def _alloc(n: int) -> tuple[pa.Buffer, np.ndarray]:
    """A receive buffer from Arrow's memory pool (64-byte aligned; the pool keeps freed pages,
    so repeated exchanges do not pay the kernel's first-touch page faults again) and a
    writable numpy view of it for MPI."""
    buf = pa.allocate_buffer(n)
    return buf, np.frombuffer(buf, dtype=np.uint8)


def _displacements(sizes: np.ndarray) -> np.ndarray:
    displs = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1], out=displs[1:])
    return displs


def _raw_width(t: pa.DataType) -> int:
    """Bytes per value of a type ``alltoallv_by_part`` moves as raw values; -1: boolean
    (bits); 0: not one of those (variable width, nested, dictionary, extension, null)."""
    if pa.types.is_boolean(t):
        return -1
    if pa.types.is_dictionary(t) or pa.types.is_nested(t) or isinstance(t, pa.ExtensionType):
        return 0
    try:
        bits = t.bit_width
    except ValueError:
        return 0
    return bits // 8 if bits > 0 and bits % 8 == 0 else 0


def _one_chunk(col: pa.ChunkedArray) -> pa.Array:
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _raw_values(arr: pa.Array, width: int) -> np.ndarray:
    """The array's values as bytes (a view: no copy)."""
    buf = arr.buffers()[1]
    if buf is None or len(arr) == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.frombuffer(buf, dtype=np.uint8)[arr.offset * width : (arr.offset + len(arr)) * width]


def _bits_as_bytes(bits: pa.Buffer | None, offset: int, length: int, absent: int = 1) -> np.ndarray:
    """One byte (0/1) per row of a bitmap; ``absent`` for every row when there is none."""
    if bits is None or length == 0:
        return np.full(length, absent, dtype=np.uint8)
    return np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=offset + length, bitorder="little")[offset:]


def _pack_bits(row_bytes: pa.Buffer, length: int) -> pa.Buffer:
    return pa.py_buffer(np.packbits(np.frombuffer(row_bytes, dtype=np.uint8)[:length], bitorder="little"))


_ROW_TYPES: dict[int, MPI.Datatype] = {}
#: the tag of the shuffle's messages (one exchange at a time per communicator: the
#: collective order of the calls keeps them apart, as MPI matches in posting order)
_SHUFFLE_TAG = 0x6F70


def _row_datatype(width: int) -> MPI.Datatype:
    """A contiguous MPI type of ``width`` bytes: counts and displacements in rows, so a part
    of up to 2^31-1 rows fits MPI's int counts whatever its byte size."""
    if width == 1:
        return MPI.BYTE
    if width not in _ROW_TYPES:
        _ROW_TYPES[width] = MPI.BYTE.Create_contiguous(width).Commit()
    return _ROW_TYPES[width]


#: shared windows by their ranks (world ranks): (communicator, window, bytes)
_SHARED_WINDOWS: dict[tuple[int, ...], tuple[MPI.Comm, MPI.Win, int]] = {}


class MPICommunicator(Communicator):
    """``Communicator`` over an ``mpi4py.MPI.Comm`` (``MPI.COMM_WORLD`` by default)."""

    #: Called with the message before ``abort`` stops the run (the MPI worker uses it to leave
    #: a machine-readable error record for the launcher). Shared by sub-communicators.
    abort_hook: Callable[[str], None] | None = None

    def __init__(self, comm: MPI.Comm | None = None):
        self._comm = MPI.COMM_WORLD if comm is None else comm
        self._rank = self._comm.Get_rank()
        self._size = self._comm.Get_size()
        self._pending: list[tuple[MPI.Request, pa.Buffer]] = []
        self._lock = threading.Lock()
        self._on_one_node: bool | None = None

    # ------------------------------------------------------------------ basics
    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    @property
    def mpi_comm(self) -> MPI.Comm:
        return self._comm

    def __repr__(self) -> str:
        return f"<MPICommunicator rank {self._rank} of {self._size}>"

    # ------------------------------------------------------------- collectives
    def alltoallv(self, parts: Sequence[pa.Table]) -> list[pa.Table]:
        if len(parts) != self._size:
            raise ValueError(f"alltoallv needs one part per rank ({self._size}), got {len(parts)}")
        me = self._rank
        # every outgoing part into one contiguous buffer (one copy: the IPC write itself)
        send_buf, send_sizes = serialize_tables([None if dest == me else part for dest, part in enumerate(parts)])
        send_bytes = _as_bytes(send_buf)
        recv_sizes = np.zeros(self._size, dtype=np.int64)
        self._comm.Alltoall(send_sizes, recv_sizes)
        recv_buf, recv_bytes = _alloc(int(recv_sizes.sum()))
        recv_displs = _displacements(recv_sizes)
        self._comm.Alltoallv(
            [send_bytes, (send_sizes, _displacements(send_sizes)), MPI.BYTE],
            [recv_bytes, (recv_sizes, recv_displs), MPI.BYTE],
        )
        out: list[pa.Table] = []
        for src in range(self._size):
            if src == me:
                out.append(parts[me])
            else:
                out.append(buffer_to_table(recv_buf.slice(int(recv_displs[src]), int(recv_sizes[src]))))
        return out

    def alltoallv_by_part(self, table: pa.Table, part_ids: np.ndarray, counts: np.ndarray) -> pa.Table:
        """Fixed-width and boolean columns move as raw values: one pass over the rows
        (``scatter_rows``) moves every column's rows by part id straight into
        per-destination send buffers, and this rank's own rows straight into the column's
        one receive buffer, which the other ranks' rows then reach by Isend/Irecv (all
        columns' messages posted at once). No part-order copy, no IPC serialisation, no copy
        of the own rows, and one contiguous chunk per column on arrival (the local join and
        sort would otherwise concatenate the received chunks). Validity and boolean bits
        travel as one byte per row, packed again on arrival, because every sender's rows
        start at an arbitrary bit of the receive bitmap. A table with another column type
        (strings, nested, dictionary) goes through ``alltoallv``'s IPC streams."""
        widths = [_raw_width(f.type) for f in table.schema]
        n = self._size
        if n == 1 or not widths or not all(widths):  # (no columns: rows only IPC carries)
            return super().alltoallv_by_part(table, part_ids, counts)
        counts = check_part_counts(table, part_ids, counts, n)
        part_ids = np.ascontiguousarray(part_ids, dtype=np.int32)
        columns = [_one_chunk(col) for col in table.columns]
        # per destination: its row count, then whether each of my columns has nulls
        meta = np.empty((n, 1 + len(columns)), dtype=np.int64)
        meta[:, 0] = counts
        meta[:, 1:] = [arr.null_count > 0 for arr in columns]
        recv_meta = np.empty_like(meta)
        self._comm.Alltoall(meta, recv_meta)
        recv_counts = recv_meta[:, 0].copy()
        total = int(recv_counts.sum())
        recv_displs = _displacements(recv_counts)
        me = self._rank
        send_counts = counts.copy()
        send_counts[me] = 0  # the own rows go straight to the receive buffer
        send_displs = _displacements(send_counts)
        # the wire columns: per column its validity as bytes (when any sender has nulls in
        # it: every rank sees every sender's flag, so all agree) and its values
        sources: list[tuple[np.ndarray, int]] = []
        for c, (arr, width) in enumerate(zip(columns, widths)):
            if recv_meta[:, 1 + c].any():
                sources.append((_bits_as_bytes(arr.buffers()[0], arr.offset, len(arr)), 1))
            if width < 0:  # boolean values: bits, moved as bytes like validity
                sources.append((_bits_as_bytes(arr.buffers()[1], arr.offset, len(arr), 0), 1))
            else:
                sources.append((_raw_values(arr, width), width))
        received: list[pa.Buffer] = []
        views, dests, requests = [], [], []
        for _, width in sources:
            buf, view = _alloc(total * width)
            _, send = _alloc(int(send_counts.sum()) * width)
            received.append(buf)
            views.append(view)
            parts = [send[int(send_displs[q]) * width : int(send_displs[q] + send_counts[q]) * width] for q in range(n)]
            parts[me] = view[int(recv_displs[me]) * width : int(recv_displs[me] + counts[me]) * width]
            dests.append(parts)
        # every row of every column to its part in one pass; then all messages at once (MPI
        # keeps the order of messages between two ranks on one tag: column by column)
        scatter_rows(part_ids, counts, sources, dests)
        for (_, width), view in zip(sources, views):
            rows = _row_datatype(width)
            for q in range(n):
                if q != me and recv_counts[q]:
                    at = int(recv_displs[q]) * width
                    requests.append(self._comm.Irecv([view[at : at + int(recv_counts[q]) * width], rows], source=q, tag=_SHUFFLE_TAG))
        for (_, width), parts in zip(sources, dests):
            rows = _row_datatype(width)
            for q in range(n):
                if q != me and send_counts[q]:
                    requests.append(self._comm.Isend([parts[q], rows], dest=q, tag=_SHUFFLE_TAG))
        MPI.Request.Waitall(requests)

        arrays = []
        wire = iter(received)
        for c, (width, field) in enumerate(zip(widths, table.schema)):
            validity = _pack_bits(next(wire), total) if recv_meta[:, 1 + c].any() else None
            values = _pack_bits(next(wire), total) if width < 0 else next(wire)
            arrays.append(pa.Array.from_buffers(field.type, total, [validity, values]))
        return pa.Table.from_arrays(arrays, schema=table.schema)

    def bcast(self, table: pa.Table | None, root: int = 0) -> pa.Table:
        size = np.zeros(1, dtype=np.int64)
        if self._rank == root:
            if table is None:
                raise ValueError("bcast: the root rank must pass a table")
            buf = table_to_buffer(table)
            size[0] = buf.size
            self._comm.Bcast(size, root=root)
            self._comm.Bcast([_as_bytes(buf), MPI.BYTE], root=root)
            return table
        self._comm.Bcast(size, root=root)
        buf, data = _alloc(int(size[0]))
        self._comm.Bcast([data, MPI.BYTE], root=root)
        return buffer_to_table(buf)

    def gather(self, table: pa.Table, root: int = 0) -> list[pa.Table] | None:
        is_root = self._rank == root
        buf = None if is_root else table_to_buffer(table)
        send = _as_bytes(buf) if buf is not None else np.empty(0, dtype=np.uint8)
        my_size = np.array([send.size], dtype=np.int64)
        sizes = np.zeros(self._size, dtype=np.int64) if is_root else None
        self._comm.Gather(my_size, sizes, root=root)
        if not is_root:
            self._comm.Gatherv([send, MPI.BYTE], None, root=root)
            return None
        displs = _displacements(sizes)
        buf, recv = _alloc(int(sizes.sum()))
        self._comm.Gatherv([send, MPI.BYTE], [recv, (sizes, displs), MPI.BYTE], root=root)
        return [
            table if src == root else buffer_to_table(buf.slice(int(displs[src]), int(sizes[src])))
            for src in range(self._size)
        ]

    def allgather(self, table: pa.Table) -> list[pa.Table]:
        send = _as_bytes(table_to_buffer(table))
        sizes = np.zeros(self._size, dtype=np.int64)
        self._comm.Allgather(np.array([send.size], dtype=np.int64), sizes)
        displs = _displacements(sizes)
        buf, recv = _alloc(int(sizes.sum()))
        self._comm.Allgatherv([send, MPI.BYTE], [recv, (sizes, displs), MPI.BYTE])
        return [
            table if src == self._rank else buffer_to_table(buf.slice(int(displs[src]), int(sizes[src])))
            for src in range(self._size)
        ]

    def allreduce(self, values: np.ndarray, op: str = "sum") -> np.ndarray:
        if op not in _MPI_OPS:
            raise ValueError(f"allreduce: unknown op '{op}' (expected one of {', '.join(REDUCE_OPS)})")
        arr = np.asarray(values)
        if arr.dtype == object or arr.dtype.kind not in "biufc":
            raise TypeError(f"allreduce works on numeric arrays, not dtype {arr.dtype}")
        shape = arr.shape
        flat = np.ascontiguousarray(arr).reshape(-1)
        out = np.empty_like(flat)
        self._comm.Allreduce(flat, out, op=_MPI_OPS[op])
        return out.reshape(shape)

    def barrier(self) -> None:
        self._complete_sends(wait=True)
        self._comm.Barrier()

    def shared_segment(self, nbytes: int) -> np.ndarray | None:
        """An MPI-3 shared-memory window (``MPI_Win_allocate_shared``, all of it on rank 0)
        when every rank runs on this node; None otherwise. The window stays allocated for
        the next request of the same ranks that fits (islands run on new sub-communicators
        of the same ranks): its pages stay mapped in every rank, where a new window costs a
        page fault per page and rank. It lives as long as the process."""
        if self._on_one_node is None:
            node = self._comm.Split_type(MPI.COMM_TYPE_SHARED)
            self._on_one_node = node.Get_size() == self._size
            node.Free()
        if not self._on_one_node:
            return None
        self._complete_sends(wait=False)
        nbytes = int(nbytes)
        group, world = self._comm.Get_group(), MPI.COMM_WORLD.Get_group()
        try:
            members = tuple(MPI.Group.Translate_ranks(group, list(range(self._size)), world))
        finally:
            group.Free()
            world.Free()
        cached = _SHARED_WINDOWS.get(members)
        if cached is None or cached[2] < nbytes:  # (every rank asks for the same sizes)
            if cached is not None:
                cached[1].Free()
                cached[0].Free()
            owner = self._comm.Dup()  # the window's own communicator, kept with it
            win = MPI.Win.Allocate_shared(nbytes if self._rank == 0 else 0, 1, comm=owner)
            cached = _SHARED_WINDOWS[members] = (owner, win, nbytes)
        memory, _ = cached[1].Shared_query(0)
        return np.frombuffer(memory, dtype=np.uint8, count=nbytes)

    # ---------------------------------------------------------- point to point
    def send(self, table: pa.Table, dest: int, tag: int = 0) -> None:
        buf = table_to_buffer(table)
        req = self._comm.Isend([_as_bytes(buf), MPI.BYTE], dest=dest, tag=tag)
        with self._lock:
            self._pending.append((req, buf))  # the buffer lives until the send completes
        self._complete_sends(wait=False)

    def recv(self, source: int, tag: int = 0) -> pa.Table:
        status = MPI.Status()
        message = self._comm.Mprobe(source=source, tag=tag, status=status)
        buf, data = _alloc(status.Get_count(MPI.BYTE))
        message.Recv([data, MPI.BYTE])
        self._complete_sends(wait=False)
        return buffer_to_table(buf)

    def _complete_sends(self, wait: bool) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        requests = [req for req, _ in pending]
        if wait:
            MPI.Request.Waitall(requests)
            return
        still = [p for p, done in zip(pending, _test_each(requests)) if not done]
        if still:
            with self._lock:
                self._pending[:0] = still

    def finish(self) -> None:
        """Waits until every buffered ``send`` of this rank has been delivered."""
        self._complete_sends(wait=True)

    # ------------------------------------------------------------------ groups
    def split(self, color: int, key: int = 0) -> MPICommunicator:
        return MPICommunicator(self._comm.Split(color, key))

    def free(self) -> None:
        """Releases a communicator made by ``split`` (never the world)."""
        if self._comm not in (MPI.COMM_WORLD, MPI.COMM_SELF):
            self._comm.Free()

    def abort(self, message: str) -> None:
        text = message if message.startswith("error:") else f"error: {message}"
        hook = type(self).abort_hook
        if hook is not None:
            try:
                hook(message)
            except Exception as exc:  # noqa: BLE001 - aborting anyway
                print(f"opgraph: abort hook failed: {exc}", file=sys.stderr)
        try:
            print(text, file=sys.stderr, flush=True)
        finally:
            abort_world(MPI.COMM_WORLD, 1)


def abort_world(comm: MPI.Comm, code: int) -> None:
    """``MPI_Abort`` after unlinking the MPICH shared-memory segments this process maps: an
    abort skips ``MPI_Finalize``, which would have removed them, and a world the user
    started has no driver to clean up after it (a 2 MB file per aborted job was left in
    /dev/shm). The other ranks keep their mappings: an unlinked file lives while mapped,
    and nobody opens a segment by name after ``MPI_Init``."""
    for path in _own_mpich_segments():
        try:
            os.unlink(path)
        except OSError:
            pass
    comm.Abort(code)


def _own_mpich_segments() -> set[str]:
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if " /dev/shm/mpich_shm_" in line}
    except (OSError, IndexError):
        return set()
    return {p for p in paths if not p.endswith("(deleted)")}


def _test_each(requests: list[MPI.Request]) -> list[bool]:
    return [bool(req.Test()) for req in requests]
