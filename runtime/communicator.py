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

    # -- conveniences built on the primitives ---------------------------------------
    def alltoallv_grouped(self, table: pa.Table, offsets: np.ndarray) -> pa.Table:
        """The shuffle's exchange: rows ``offsets[d]:offsets[d+1]`` of ``table`` (its rows in
        destination order, e.g. from ``partition.hash_partition_grouped``) go to rank ``d``;
        returns the rows received, senders in rank order, with ``table``'s schema. Here:
        ``alltoallv`` of the slices; ``MPICommunicator`` receives fixed-width columns
        straight into one contiguous buffer each."""
        # imported here: local_ops imports the runtime package, which imports this module
        from opgraph.runtime.local_ops import concat_tables

        parts = [table.slice(int(offsets[d]), int(offsets[d + 1] - offsets[d])) for d in range(self.size)]
        received = concat_tables(self.alltoallv(parts), table.schema)
        return received.replace_schema_metadata(table.schema.metadata)  # not a sender's

    def allgather_array(self, values: np.ndarray) -> list[np.ndarray]:
        """Small numeric arrays (sample splitters, counts) from every rank."""
        table = pa.table({"v": pa.array(np.ascontiguousarray(values).ravel())})
        return [t.column("v").to_numpy() for t in self.allgather(table)]
