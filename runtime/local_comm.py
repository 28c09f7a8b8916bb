"""``LocalCommunicator``: the ranks of a run are threads of this process.

Tables pass by reference (zero-copy: Arrow tables are immutable, so sharing them between
threads is safe). Every collective is built on one primitive, a numbered rendezvous: the
n-th collective call of each rank deposits its contribution in slot n, waits until all ranks
of the group have arrived, and reads every rank's contribution. Point-to-point messages go
through per-(source, destination, tag) mailboxes; ``send`` never blocks.

Failure handling (nothing ever hangs):

* ``abort(message)`` (or an exception escaping a rank started by ``run_ranks``) marks the
  whole run as failed: every rank waiting in a collective or a ``recv`` - in this group, a
  parent group or any group split from it - wakes up and raises ``CommAborted`` naming the
  first failing rank and its message. Later calls raise at once.
* a collective that some rank can never join because that rank already returned raises
  ``CommAborted`` as well, and so does a collective whose ranks disagree on the operation
  (a bug in the caller: every rank must make the same collective calls in the same order).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from opgraph.runtime.communicator import REDUCE_OPS, Communicator

__all__ = ["CommAborted", "LocalCommunicator", "local_communicators", "run_ranks"]


class CommAborted(RuntimeError):
    """Raised in every rank of a run once one rank has aborted it."""

    def __init__(self, message: str, rank: int | None = None):
        super().__init__(message)
        self.message = message
        self.rank = rank


class _Run:
    """State shared by every group of one run: the abort flag and the finished ranks."""

    def __init__(self, size: int):
        self.size = size
        self.lock = threading.Lock()
        self.error: CommAborted | None = None
        self.failed_rank: int | None = None
        self.original: BaseException | None = None  # the first failing rank's exception
        self.finished: set[int] = set()  # world ranks that returned from their function
        self.groups: list[_Group] = []

    def abort(self, message: str, world_rank: int | None, original: BaseException | None = None) -> None:
        with self.lock:
            if self.error is None:
                where = f" (rank {world_rank})" if world_rank is not None else ""
                self.error = CommAborted(f"run aborted{where}: {message}", world_rank)
                self.failed_rank = world_rank
                self.original = original
            groups = list(self.groups)
        for g in groups:
            with g.cond:
                g.cond.notify_all()

    def finish(self, world_rank: int) -> None:
        with self.lock:
            self.finished.add(world_rank)
            groups = list(self.groups)
        for g in groups:
            with g.cond:
                g.cond.notify_all()


class _Slot:
    __slots__ = ("arrived", "left", "result", "values", "what")

    def __init__(self, size: int, what: str):
        self.what = what
        self.values: list[Any] = [None] * size
        self.arrived = 0
        self.left = 0
        self.result: Any = None


class _Group:
    """One communicator's shared state: ``members[i]`` is the world rank of group rank i."""

    def __init__(self, run: _Run, members: list[int]):
        self.run = run
        self.members = members
        self.size = len(members)
        self.cond = threading.Condition()
        self.slots: dict[int, _Slot] = {}
        self.mail: dict[tuple[int, int, int], deque[pa.Table]] = {}
        with run.lock:
            run.groups.append(self)

    def check(self) -> None:
        if self.run.error is not None:
            raise self.run.error

    def exchange(self, rank: int, seq: int, what: str, value: Any, post: Callable[[list[Any]], Any] | None = None) -> tuple[list[Any], Any]:
        """Rendezvous number ``seq``: returns (every rank's value, ``post(values)`` computed
        once by the last rank to arrive)."""
        with self.cond:
            self.check()
            slot = self.slots.get(seq)
            if slot is None:
                slot = self.slots[seq] = _Slot(self.size, what)
            elif slot.what != what:
                msg = f"collective mismatch: rank {rank} called {what} while another rank called {slot.what}"
                self.cond.release()
                try:
                    self.run.abort(msg, self.members[rank])
                finally:
                    self.cond.acquire()
                raise self.run.error  # type: ignore[misc]
            slot.values[rank] = value
            slot.arrived += 1
            if slot.arrived == self.size:
                if post is not None:
                    slot.result = post(slot.values)
                self.cond.notify_all()
            while slot.arrived < self.size:
                self.check()
                gone = [
                    self.members[i]
                    for i in range(self.size)
                    if slot.values[i] is None and self.members[i] in self.run.finished
                ]
                if gone:
                    self.cond.release()
                    try:
                        self.run.abort(f"{what}: rank {gone[0]} returned without joining this collective", gone[0])
                    finally:
                        self.cond.acquire()
                    self.check()
                self.cond.wait(0.5)
            values, result = slot.values, slot.result
            slot.left += 1
            if slot.left == self.size:
                del self.slots[seq]
            return values, result


class _Missing:
    """Placeholder deposited instead of None so 'has this rank arrived' stays decidable."""


_NONE = _Missing()


class LocalCommunicator(Communicator):
    """Rank ``rank`` of a group of threads. Create a whole group with ``local_communicators``."""

    def __init__(self, group: _Group, rank: int):
        self._group = group
        self._rank = rank
        self._seq = 0

    def __repr__(self) -> str:
        return f"<LocalCommunicator rank {self._rank} of {self._group.size}>"

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._group.size

    @property
    def world_rank(self) -> int:
        return self._group.members[self._rank]

    # -- the primitive ------------------------------------------------------------------
    def _collective(self, what: str, value: Any, post: Callable[[list[Any]], Any] | None = None) -> tuple[list[Any], Any]:
        seq = self._seq
        self._seq += 1
        values, result = self._group.exchange(self._rank, seq, what, _NONE if value is None else value, post)
        return [None if v is _NONE else v for v in values], result

    # -- collectives --------------------------------------------------------------------
    def alltoallv(self, parts: Sequence[pa.Table]) -> list[pa.Table]:
        parts = list(parts)
        if len(parts) != self.size:
            raise ValueError(f"alltoallv: expected {self.size} parts, got {len(parts)}")
        values, _ = self._collective("alltoallv", parts)
        return [values[src][self._rank] for src in range(self.size)]

    def bcast(self, table: pa.Table | None, root: int = 0) -> pa.Table:
        self._check_root(root)
        values, _ = self._collective(f"bcast(root={root})", table if self._rank == root else None)
        return values[root]

    def gather(self, table: pa.Table, root: int = 0) -> list[pa.Table] | None:
        self._check_root(root)
        values, _ = self._collective(f"gather(root={root})", table)
        return list(values) if self._rank == root else None

    def allgather(self, table: pa.Table) -> list[pa.Table]:
        values, _ = self._collective("allgather", table)
        return list(values)

    def allreduce(self, values: np.ndarray, op: str = "sum") -> np.ndarray:
        if op not in REDUCE_OPS:
            raise ValueError(f"allreduce: unknown op '{op}' (expected one of {', '.join(REDUCE_OPS)})")
        arr = np.asarray(values)

        def reduce(all_values: list[Any]) -> np.ndarray:
            stacked = np.stack([np.asarray(v) for v in all_values])
            fn = {"sum": np.sum, "min": np.min, "max": np.max, "prod": np.prod}[op]
            return fn(stacked, axis=0)

        _, result = self._collective(f"allreduce({op})", arr, reduce)
        return np.array(result, copy=True)

    def shared_segment(self, nbytes: int) -> np.ndarray | None:
        def allocate(sizes: list[Any]) -> np.ndarray:  # (the sizes agree: a caller's contract)
            # from the kernels' buffer cache: the memory goes back to it once the last view
            # is gone, and the next call reuses its pages. A fresh segment's pages cost far
            # more here: after other engines had freed a few GB, the node-shared sort's
            # scatter into a new segment took 0.19 s instead of 0.026 s.
            from opgraph.runtime.kernels import opkernels

            return opkernels.cached_empty(max(int(v) for v in sizes), np.uint8)

        _, block = self._collective("shared_segment", int(nbytes), allocate)
        return block  # threads of one process: one numpy array

    def barrier(self) -> None:
        self._collective("barrier", True)

    def split(self, color: int, key: int = 0) -> LocalCommunicator:
        group = self._group

        def make_groups(values: list[Any]) -> dict[int, tuple[_Group, list[int]]]:
            by_color: dict[int, list[tuple[int, int]]] = {}
            for r, (c, k) in enumerate(values):
                by_color.setdefault(c, []).append((k, r))
            out = {}
            for c, members in by_color.items():
                order = [r for _, r in sorted(members)]
                out[c] = (_Group(group.run, [group.members[r] for r in order]), order)
            return out

        _, groups = self._collective("split", (int(color), int(key)), make_groups)
        sub, order = groups[int(color)]
        return LocalCommunicator(sub, order.index(self._rank))

    # -- point to point -----------------------------------------------------------------
    def send(self, table: pa.Table, dest: int, tag: int = 0) -> None:
        self._check_root(dest, "dest")
        g = self._group
        with g.cond:
            g.check()
            g.mail.setdefault((self._rank, dest, tag), deque()).append(table)
            g.cond.notify_all()

    def recv(self, source: int, tag: int = 0) -> pa.Table:
        self._check_root(source, "source")
        g = self._group
        key = (source, self._rank, tag)
        with g.cond:
            while True:
                g.check()
                box = g.mail.get(key)
                if box:
                    table = box.popleft()
                    if not box:
                        del g.mail[key]
                    return table
                if g.members[source] in g.run.finished:
                    g.cond.release()
                    try:
                        g.run.abort(f"recv: rank {source} returned without sending (tag {tag})", g.members[source])
                    finally:
                        g.cond.acquire()
                    g.check()
                g.cond.wait(0.5)

    # -- failure --------------------------------------------------------------------------
    def abort(self, message: str, error: BaseException | None = None) -> None:
        """Stops every rank of the run; ``error`` (optional, local engine only) is the
        exception that ``run_ranks`` re-raises in the caller."""
        self._group.run.abort(message, self.world_rank, error)

    def fail(self, error: BaseException) -> None:
        """Aborts the run because this rank failed with ``error`` (which ``run_ranks`` then
        raises in the caller); a no-op when the run is already aborted."""
        if not isinstance(error, CommAborted):
            self.abort(f"{type(error).__name__}: {error}", error)

    @property
    def aborted(self) -> CommAborted | None:
        return self._group.run.error

    def _check_root(self, root: int, what: str = "root") -> None:
        if not 0 <= root < self.size:
            raise ValueError(f"{what} {root} is not a rank of this communicator (size {self.size})")


def local_communicators(size: int) -> list[LocalCommunicator]:
    """One communicator per rank of a new run of ``size`` threads."""
    if size < 1:
        raise ValueError(f"a run needs at least one rank, got {size}")
    group = _Group(_Run(size), list(range(size)))
    return [LocalCommunicator(group, r) for r in range(size)]


def run_ranks(size: int, fn: Callable[[LocalCommunicator], Any], name: str = "opgraph-rank") -> list[Any]:
    """Runs ``fn(comm)`` on ``size`` threads (rank 0 on the calling thread) and returns the
    results by rank. If any rank fails, the run is aborted and the first failing rank's
    exception is raised here (the others' ``CommAborted`` are dropped)."""
    comms = local_communicators(size)
    run = comms[0]._group.run
    results: list[Any] = [None] * size
    errors: list[BaseException | None] = [None] * size

    def body(r: int) -> None:
        try:
            results[r] = fn(comms[r])
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            errors[r] = e
            if not isinstance(e, CommAborted):
                run.abort(f"{type(e).__name__}: {e}", r, e)
        finally:
            run.finish(r)

    threads = [threading.Thread(target=body, args=(r,), name=f"{name}-{r}", daemon=True) for r in range(1, size)]
    for t in threads:
        t.start()
    body(0)
    for t in threads:
        t.join()
    if run.error is not None:
        if run.original is not None:
            raise run.original
        failed = run.failed_rank
        if failed is not None and errors[failed] is not None and not isinstance(errors[failed], CommAborted):
            raise errors[failed]  # type: ignore[misc]
        first = next((e for e in errors if e is not None and not isinstance(e, CommAborted)), None)
        raise first if first is not None else run.error
    for e in errors:
        if e is not None:
            raise e
    return results
