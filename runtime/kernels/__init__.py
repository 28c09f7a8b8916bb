"""Native kernels (C++ with Cython bindings) and the expression JIT.

Thread budget: every kernel that splits rows over threads asks ``kernel_threads()``: the
cores this process may use divided by the ranks that share them (the local engine's rank
threads set their count with ``set_ranks_sharing``; the MPI engine sets
``OPGRAPH_RANKS_PER_NODE`` for its ranks). ``OPGRAPH_KERNEL_THREADS`` overrides; a thread
that runs kernels beside others of its kind caps its share with ``kernel_threads_capped``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


def set_ranks_sharing(ranks: int | None) -> int | None:
    """Declares that ``ranks`` ranks share this machine's cores, for the calling thread
    (None: forget). Returns the previous value (to restore)."""
    prev = getattr(_local, "ranks", None)
    _local.ranks = ranks
    return prev


def ranks_sharing() -> int | None:
    """The calling thread's ``set_ranks_sharing`` value (None: not set)."""
    return getattr(_local, "ranks", None)


@contextmanager
def kernel_threads_capped(limit: int) -> Iterator[None]:
    """Inside the block the calling thread's kernels use at most ``limit`` threads: for a
    caller that already runs several of them side by side (the reader's threads)."""
    prev = getattr(_local, "cap", None)
    _local.cap = max(1, limit) if prev is None else max(1, min(prev, limit))
    try:
        yield
    finally:
        _local.cap = prev


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def kernel_threads() -> int:
    """Threads one kernel call may use on the calling rank."""
    cap = getattr(_local, "cap", None)
    v = os.environ.get("OPGRAPH_KERNEL_THREADS", "").strip()
    if v.isdigit():
        n = max(1, int(v))
    else:
        ranks = ranks_sharing()
        if not ranks:
            env = os.environ.get("OPGRAPH_RANKS_PER_NODE", "").strip()
            ranks = int(env) if env.isdigit() else 1
        n = max(1, _cpus() // max(1, ranks))
    return n if cap is None else min(n, cap)
