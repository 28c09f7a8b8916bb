"""Executors that tests/test_ray.py runs on Ray rank actors (``run_ray(..., execute=)``).
A module of its own with light imports: the actors import it by name."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pyarrow as pa
from support import collectives_and_point_to_point


def primitives(doc, inputs, comm):
    rank = collectives_and_point_to_point(comm)
    return [pa.table({"rank": [rank]})] if comm.rank == 0 else []


def big_alltoall(doc, inputs, comm):
    n = 2_000_000  # 16 MB per part: through the object store, not inline
    parts = [pa.table({"src": np.full(n, comm.rank), "dst": np.full(n, q)}) for q in range(comm.size)]
    got = comm.alltoallv(parts)
    assert all(t.num_rows == n and t.column("dst")[0].as_py() == comm.rank for t in got)
    return [pa.table({"src": [t.column("src")[0].as_py() for t in got]})] if comm.rank == 0 else []


def killed(doc, inputs, comm):
    if comm.rank == 1:
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    comm.barrier()  # rank 0 would wait here for ever
    return []


def hang(doc, inputs, comm):
    time.sleep(600)
