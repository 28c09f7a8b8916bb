"""Helpers shared by several test files (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

#: the launcher of the pip-installed MPI (the ``mpich`` wheel puts it beside python)
VENV_MPIEXEC = Path(sys.executable).parent / "mpiexec"
HAVE_MPI = VENV_MPIEXEC.exists() and importlib.util.find_spec("mpi4py") is not None

#: MPI tests skip on a machine without the MPI wheel, but never in CI (``CI`` set): there a
#: missing launcher must fail the run instead of hiding the MPI tests.
needs_mpi = pytest.mark.skipif(
    not HAVE_MPI and not os.environ.get("CI"), reason="no mpiexec next to the Python executable (pip install mpich)"
)


def orphaned_mpich_segments(before: set[str]) -> set[str]:
    """MPICH shared-memory segments created since ``before`` that no live process uses: a
    failed MPI run must not leave them in /dev/shm (its ranks skipped MPI_Finalize)."""
    from opgraph.runtime import mpi_engine

    return (mpi_engine._mpich_segments() - before) - mpi_engine._shm_in_use()


def write_small_parquet(directory: Path) -> str:
    """A seeded 10-row Parquet file with columns k (int64, 5 keys), a and b (float64)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = directory / "in.parquet"
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"k": rng.integers(0, 5, 10), "a": rng.random(10), "b": rng.random(10)}), path)
    return str(path)


def collectives_and_point_to_point(comm) -> int:
    """Every primitive of the communicator interface on 4 ranks (the local and the
    Ray engine's communicators; a light module, so that Ray actors import it quickly)."""
    import numpy as np
    import pyarrow as pa

    r, n = comm.rank, comm.size
    t = pa.table({"r": [r] * (r + 1)})
    got = comm.alltoallv([pa.table({"src": [r], "dst": [q]}) for q in range(n)])
    assert [g.column("src")[0].as_py() for g in got] == list(range(n))
    assert all(g.column("dst")[0].as_py() == r for g in got)
    b = comm.bcast(t if r == 2 else None, root=2)
    assert b.num_rows == 3
    g = comm.gather(t, root=1)
    assert (g is None) == (r != 1) and (g is None or [x.num_rows for x in g] == [1, 2, 3, 4])
    assert [x.num_rows for x in comm.allgather(t)] == [1, 2, 3, 4]
    assert comm.allreduce(np.array([r, 1.0]), "sum").tolist() == [6.0, 4.0]
    assert comm.allreduce(np.array([r]), "max").tolist() == [3]
    comm.barrier()
    comm.send(t, (r + 1) % n, tag=5)
    assert comm.recv((r - 1) % n, tag=5).num_rows == (r - 1) % n + 1
    sub = comm.split(r % 2, key=-r)
    assert sub.size == 2 and sub.rank == (0 if r >= 2 else 1)
    assert sorted(x.column("r")[0].as_py() for x in sub.allgather(t)) == [r % 2, r % 2 + 2]
    assert [a.tolist() for a in comm.allgather_array(np.array([r, r]))] == [[q, q] for q in range(n)]
    return r


#: an MPI worker module whose executor fails on rank 1 at the first groupby (the MPI tests
#: write it next to their plans and run it as the worker)
FAULTY_EXECUTOR_WORKER = """
import sys
from opgraph.runtime import executor, mpi_worker

def fault(op, rank):
    if rank == 1 and op.op == "df.groupby_agg":
        raise ValueError("injected failure")

executor.FAULT_HOOK = fault
sys.exit(mpi_worker.main())
"""
