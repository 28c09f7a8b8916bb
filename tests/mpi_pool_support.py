"""Fixtures and helpers of the MPI worker-pool tests (tests/test_mpi_pool*.py).

Test workers read their mode from the plan's ``pipeline`` name, so that one pool serves
several modes."""

from __future__ import annotations

import os
import textwrap
import time
import uuid

import pyarrow as pa
import pytest
from opgraph.runtime import mpi_engine
from opgraph.runtime.mpi_engine import pool_stats, run_mpi, shutdown_pools

from opgraph.plan import PlanDoc


@pytest.fixture(autouse=True)
def _pip_installed_mpi(monkeypatch) -> None:
    """These tests use the environment's MPI (the mpich wheel), with the pool on."""
    for name in (
        "OPGRAPH_MPIEXEC",
        "MPI4PY_LIBMPI",
        "MPI4PY_MPIABI",
        "OPGRAPH_MPI_POOL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module", autouse=True)
def _no_pools_before_or_after():
    shutdown_pools()
    yield
    shutdown_pools()


def plan(mode: str) -> PlanDoc:
    return PlanDoc(pipeline=mode, hardware="laptop", islands=[])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_gone(pids, timeout: float = 15.0) -> list[int]:
    end = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < end:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    return left


def pool_for(ranks: int, module: str = mpi_engine.WORKER_MODULE) -> list[dict]:
    return [
        p
        for p in pool_stats()["pools"]
        if p["ranks"] == ranks and p["worker_module"] == module
    ]


WORKERS = textwrap.dedent(
    """
    import os, sys, time
    import pyarrow as pa
    from opgraph.runtime import mpi_worker

    def execute(doc, inputs, comm):
        mode = doc.pipeline
        pids = comm.allgather(pa.table({"rank": [comm.rank], "pid": [os.getpid()]}))
        if mode == "echo":  # each rank sends its half of input 0 back through rank 0
            t = inputs[0]
            lo = t.num_rows * comm.rank // comm.size
            hi = t.num_rows * (comm.rank + 1) // comm.size
            parts = comm.gather(t.slice(lo, hi - lo), root=0)
            return [pa.concat_tables(parts), pa.concat_tables(pids)] if comm.rank == 0 else []
        if mode == "raise":
            if comm.rank == 1:
                time.sleep(0.2)
                raise ValueError("boom from rank 1")
            comm.barrier()  # rank 0 would wait here for ever
        if mode == "usererror":
            from opgraph.errors import TraceError
            if comm.rank == 1:
                raise TraceError("column 'x' is not numeric", "etl.py", 7)
            comm.barrier()
        if mode == "kill":
            if comm.rank == 1:
                time.sleep(0.2)
                os.kill(os.getpid(), 9)
            comm.barrier()
        if mode == "hang":
            time.sleep(120)
        if mode == "print":
            print(f"hello from rank {comm.rank}", file=sys.stderr, flush=True)
        return [pa.concat_tables(pids)] if comm.rank == 0 else []

    if __name__ == "__main__":
        sys.exit(mpi_worker.main(sys.argv[1:], execute=execute))
    """
)


@pytest.fixture(scope="module", name="worker")
def worker_fixture(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pool_worker")
    module = f"opgraph_pool_worker_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    (tmp / f"{module}.py").write_text(WORKERS)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")])}

    def run(mode: str, inputs=(), ranks: int = 2, timeout: float | None = 60, **kw):
        return run_mpi(
            plan(mode),
            list(inputs),
            ranks,
            timeout,
            worker_module=module,
            env=env,
            echo=False,
            **kw,
        )

    run.module = module
    run.env = env
    return run


def rank_pids(table: pa.Table) -> dict[int, int]:
    return dict(zip(table.column("rank").to_pylist(), table.column("pid").to_pylist()))
