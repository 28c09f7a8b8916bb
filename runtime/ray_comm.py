"""The communicator of the Ray engine: ranks are Ray actors, tables cross through Ray's
object store.

A sender ``ray.put``s each table it sends (Arrow buffers go to the node's shared-memory
store without a Python-object round trip; a receiver on the same node maps them, zero-copy)
and posts the object's reference to the run's ``Mailbox`` actor under a key naming the
message: (communicator group, collective sequence number, sender, receiver) for
collectives, (group, "p2p", sender, receiver, tag, n-th message on that pair) for
``send``/``recv`` (MPI's non-overtaking order). A receiver takes its keys from the mailbox
(blocking until they are there) and fetches the objects. Every rank of a group calls the
group's collectives in the same order (the executor's contract), so the sequence numbers
agree without any extra round trip. Small values (allreduce arrays, split colours) travel
inline in the mailbox.

``abort``/``fail`` mark the mailbox aborted: every rank waiting in it wakes with
``CommAborted``, and the engine (``runtime/ray_engine.py``) reports the failing rank's own
error.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from opgraph.runtime.communicator import REDUCE_OPS, Communicator
from opgraph.runtime.local_comm import CommAborted

#: seconds a blocked ``take`` sleeps between checks of the abort flag
_POLL_S = 0.5


class Mailbox:
    """Messages of one run by key, and rank 0's progress lines. A threaded Ray actor
    (``max_concurrency`` above the ranks: every rank may block in ``take`` at once)."""

    def __init__(self) -> None:
        self._items: dict[Hashable, Any] = {}
        self._cond = threading.Condition()
        self._aborted: str | None = None
        self._progress: list[str] = []

    def reset(self) -> None:
        """Forgets everything (a new run on the same actors)."""
        with self._cond:
            self._items.clear()
            self._aborted = None
            self._progress.clear()

    def put(self, items: list[tuple[Hashable, Any]]) -> None:
        with self._cond:
            for key, value in items:
                self._items[key] = value
            self._cond.notify_all()

    def take(self, keys: list[Hashable]) -> list[Any] | str:
        """The values of ``keys`` (removed), once all are there; the abort message (a str)
        if the run was aborted first."""
        with self._cond:
            while self._aborted is None and not all(k in self._items for k in keys):
                self._cond.wait(_POLL_S)
            if self._aborted is not None:
                return self._aborted
            return [self._items.pop(k) for k in keys]

    def abort(self, message: str) -> None:
        with self._cond:
            if self._aborted is None:
                self._aborted = message
            self._cond.notify_all()

    def progress(self, line: str) -> None:
        with self._cond:
            self._progress.append(line)

    def drain(self) -> list[str]:
        """Progress lines posted since the last call."""
        with self._cond:
            lines, self._progress = self._progress, []
            return lines

    def pending(self) -> list[Hashable]:
        """Keys of the messages posted and not taken (none after a clean run)."""
        with self._cond:
            return list(self._items)


def _reduce(values: list[np.ndarray], op: str) -> np.ndarray:
    if op not in REDUCE_OPS:
        raise ValueError(f"unknown reduction '{op}' (expected one of {', '.join(REDUCE_OPS)})")
    stacked = np.stack([np.asarray(v) for v in values])
    return {"sum": np.sum, "min": np.min, "max": np.max, "prod": np.prod}[op](stacked, axis=0)


class RayCommunicator(Communicator):
    """Rank ``rank`` of the group of world ranks ``members`` of one Ray run."""

    def __init__(self, mailbox: Any, members: Sequence[int], rank: int, group: tuple = ("world",)):
        self._mailbox = mailbox
        self._members = tuple(members)
        self._rank = rank
        self._group = group
        self._seq = 0
        self._sent: dict[tuple[int, int], int] = {}
        self._received: dict[tuple[int, int], int] = {}

    def __repr__(self) -> str:
        return f"RayCommunicator(rank {self._rank} of {len(self._members)}, world rank {self.world_rank})"

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return len(self._members)

    @property
    def world_rank(self) -> int:
        return self._members[self._rank]

    # -- messages ---------------------------------------------------------------------
    def _post(self, messages: list[tuple[Hashable, Any]]) -> None:
        if messages:
            items = [(k, ("ref", [ray.put(v)]) if isinstance(v, pa.Table) else ("value", v)) for k, v in messages]
            # waited for, so that a failing put raises here instead of vanishing
            ray.get(self._mailbox.put.remote(items))

    def _take(self, keys: list[Hashable]) -> list[Any]:
        if not keys:
            return []
        got = ray.get(self._mailbox.take.remote(keys))
        if isinstance(got, str):
            raise CommAborted(got)
        refs = [v[1][0] for v in got if v[0] == "ref"]
        tables = iter(ray.get(refs)) if refs else iter(())
        return [next(tables) if kind == "ref" else v for kind, v in got]

    def _exchange(self, sends: dict[int, Any], sources: Sequence[int]) -> dict[int, Any]:
        """One collective step: ``sends[dst]`` to each group rank ``dst``, the values from
        each of ``sources`` received (by group rank)."""
        self._seq += 1
        me = self._rank
        self._post([((self._group, self._seq, me, dst), v) for dst, v in sends.items()])
        values = self._take([(self._group, self._seq, src, me) for src in sources])
        return dict(zip(sources, values))

    def _others(self) -> list[int]:
        return [r for r in range(self.size) if r != self._rank]

    def _check_root(self, root: int) -> None:
        if not 0 <= root < self.size:
            raise ValueError(f"root {root} is not a rank of this communicator of {self.size}")

    # -- the interface ----------------------------------------------------------------
    def alltoallv(self, parts: Sequence[pa.Table]) -> list[pa.Table]:
        if len(parts) != self.size:
            raise ValueError(f"alltoallv needs {self.size} parts, got {len(parts)}")
        got = self._exchange({d: parts[d] for d in self._others()}, self._others())
        return [parts[r] if r == self._rank else got[r] for r in range(self.size)]

    def bcast(self, table: pa.Table | None, root: int = 0) -> pa.Table:
        self._check_root(root)
        if self._rank == root:
            self._exchange({d: table for d in self._others()}, [])
            return table
        return self._exchange({}, [root])[root]

    def gather(self, table: pa.Table, root: int = 0) -> list[pa.Table] | None:
        self._check_root(root)
        if self._rank == root:
            got = self._exchange({}, self._others())
            return [table if r == root else got[r] for r in range(self.size)]
        self._exchange({root: table}, [])
        return None

    def allgather(self, table: pa.Table) -> list[pa.Table]:
        got = self._exchange({d: table for d in self._others()}, self._others())
        return [table if r == self._rank else got[r] for r in range(self.size)]

    def allreduce(self, values: np.ndarray, op: str = "sum") -> np.ndarray:
        mine = np.ascontiguousarray(values)
        got = self._exchange({d: mine for d in self._others()}, self._others())
        return _reduce([mine if r == self._rank else got[r] for r in range(self.size)], op)

    def barrier(self) -> None:
        self._exchange({d: None for d in self._others()}, self._others())

    def split(self, color: int, key: int = 0) -> RayCommunicator:
        mine = (int(color), int(key))
        got = self._exchange({d: mine for d in self._others()}, self._others())
        everyone = [mine if r == self._rank else got[r] for r in range(self.size)]
        same = sorted((k, r) for r, (c, k) in enumerate(everyone) if c == mine[0])
        ranks = [r for _, r in same]
        return RayCommunicator(
            self._mailbox, [self._members[r] for r in ranks], ranks.index(self._rank), (*self._group, self._seq, mine[0])
        )

    def send(self, table: pa.Table, dest: int, tag: int = 0) -> None:
        self._check_root(dest)
        n = self._sent.get((dest, tag), 0)
        self._sent[(dest, tag)] = n + 1
        self._post([((self._group, "p2p", self._rank, dest, tag, n), table)])

    def recv(self, source: int, tag: int = 0) -> pa.Table:
        self._check_root(source)
        n = self._received.get((source, tag), 0)
        self._received[(source, tag)] = n + 1
        return self._take([(self._group, "p2p", source, self._rank, tag, n)])[0]

    def abort(self, message: str) -> None:
        self._mailbox.abort.remote(f"run aborted (rank {self.world_rank}): {message}")
        raise CommAborted(message, self.world_rank)

    def fail(self, error: BaseException) -> None:
        """The executor's failure hook: wakes the other ranks (they raise ``CommAborted``);
        this rank's own error goes to the engine."""
        if not isinstance(error, CommAborted):
            self._mailbox.abort.remote(f"run aborted (rank {self.world_rank}): {type(error).__name__}: {error}")
