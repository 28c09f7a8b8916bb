"""The one communicator interface of the runtime (DESIGN §8).

Ranks exchange Arrow tables and small numeric arrays. Implementations: ``LocalCommunicator``
(ranks are threads of this process; tables pass by reference, zero-copy) in
``runtime/local_comm.py`` and ``MPICommunicator`` (mpi4py; tables cross as Arrow IPC
buffers, never as Python objects) in ``runtime/mpi_comm.py``. Every call is collective
over the communicator unless it says otherwise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

REDUCE_OPS = ("sum", "min", "max", "prod")


class Communicator(ABC):
    """A group of ``size`` ranks; this object is rank ``rank`` of it."""

    @property
    @abstractmethod
    def rank(self) -> int: ...

    @property
    @abstractmethod
    def size(self) -> int: ...

    @abstractmethod
    def alltoallv(self, parts: Sequence[pa.Table]) -> list[pa.Table]:
        """``parts[i]`` goes to rank ``i``; returns the tables received, indexed by sender.
        All parts share one schema (possibly with zero rows)."""

    @abstractmethod
    def bcast(self, table: pa.Table | None, root: int = 0) -> pa.Table:
        """The root's table on every rank (others pass None)."""

    @abstractmethod
    def gather(self, table: pa.Table, root: int = 0) -> list[pa.Table] | None:
        """Every rank's table, by rank, at the root; None elsewhere."""

    @abstractmethod
    def allgather(self, table: pa.Table) -> list[pa.Table]:
        """Every rank's table, by rank, on every rank."""

    @abstractmethod
    def allreduce(self, values: np.ndarray, op: str = "sum") -> np.ndarray:
        """Elementwise reduction of a numeric array of the same shape on every rank."""

    @abstractmethod
    def send(self, table: pa.Table, dest: int, tag: int = 0) -> None:
        """Point to point (not collective)."""

    @abstractmethod
    def recv(self, source: int, tag: int = 0) -> pa.Table:
        """Point to point (not collective)."""

    @abstractmethod
    def barrier(self) -> None: ...

    @abstractmethod
    def split(self, color: int, key: int = 0) -> Communicator:
        """Sub-communicator of the ranks passing the same ``color`` (islands run on these)."""

    @abstractmethod
    def abort(self, message: str) -> None:
        """Stops every rank of the run (not collective): used when one rank fails."""

    def shared_segment(self, nbytes: int) -> np.ndarray | None:
        """``nbytes`` of memory (uint8) that every rank reads and writes: the same bytes on
        every rank, or None where the ranks do not share one machine's memory. Collective,
        the same ``nbytes`` on every rank; contents undefined. Ranks order their accesses
        with collectives, and the memory may be handed out again by the next call of the same
        ranks: each rank copies out what it keeps and passes a collective (e.g. ``barrier``)
        before that call. The default: None."""
        return None

    # -- conveniences built on the primitives ---------------------------------------
    def alltoallv_by_part(self, table: pa.Table, part_ids: np.ndarray, counts: np.ndarray) -> pa.Table:
        """The shuffle's exchange: row i of ``table`` goes to rank ``part_ids[i]`` (numpy
        int32; ``counts[d]`` rows go to rank d); returns the rows received, senders in rank
        order and each sender's rows in its order, with ``table``'s schema. Here: the rows
        are scattered into part order and the parts go through ``alltoallv``;
        ``MPICommunicator`` moves fixed-width columns straight into their receive buffers."""
        # imported here: local_ops imports the runtime package, which imports this module
        from opgraph.runtime.kernels import hashing
        from opgraph.runtime.local_ops import concat_tables
        from opgraph.runtime.partition import scatter_parts

        counts = check_part_counts(table, part_ids, counts, self.size)
        dest, offsets = hashing.partition_positions(part_ids, self.size, np.int32 if table.num_rows < 2**31 else np.int64)
        if not np.array_equal(np.diff(offsets), counts):
            raise ValueError("alltoallv_by_part: counts do not match the part ids")
        parts = scatter_parts(table, dest, offsets)
        received = concat_tables(self.alltoallv(parts), table.schema)
        return received.replace_schema_metadata(table.schema.metadata)  # not a sender's

    def allgather_array(self, values: np.ndarray) -> list[np.ndarray]:
        """Small numeric arrays (sample splitters, counts) from every rank."""
        table = pa.table({"v": pa.array(np.ascontiguousarray(values).ravel())})
        return [t.column("v").to_numpy() for t in self.allgather(table)]


def check_part_counts(table: pa.Table, part_ids: np.ndarray, counts: np.ndarray, size: int) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (size,) or int(counts.sum()) != table.num_rows or len(part_ids) != table.num_rows:
        raise ValueError(
            f"alltoallv_by_part: {len(part_ids)} part ids and counts {counts.tolist()} for "
            f"{table.num_rows} rows over {size} ranks"
        )
    return counts
