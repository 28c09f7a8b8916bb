"""Faults in the MPI engine's worker pool: a rank raising, a rank killed (during or between
calls), a timeout: each is a clear error, the pool's processes are gone, and the next call
starts a new pool. Real ``mpiexec -n 2`` of the pip-installed ``mpich``.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

pytest.importorskip("mpi4py")

from mpi_pool_support import (  # noqa: F401
    _no_pools_before_or_after,
    _pip_installed_mpi,
    alive,
    plan,
    pool_for,
    rank_pids,
    wait_gone,
    worker_fixture,
)
from opgraph.runtime import mpi_engine
from opgraph.runtime.mpi_engine import pool_stats, run_mpi
from support import FAULTY_EXECUTOR_WORKER, needs_mpi, orphaned_mpich_segments

from opgraph.errors import OpgraphError, TraceError

pytestmark = needs_mpi


# ------------------------------------------------------------------------ faults


def test_raising_rank_is_an_error_and_the_next_call_gets_a_new_pool(worker) -> None:
    (pids,) = worker("pids")
    old = rank_pids(pids)
    start = time.monotonic()
    with pytest.raises(OpgraphError) as info:
        worker("raise")
    assert time.monotonic() - start < 30
    assert "ValueError: boom from rank 1" in str(info.value)
    assert "rank 1 of 2" in str(info.value)
    assert "ValueError" in info.value.remote_traceback
    assert wait_gone(old.values()) == []
    spawned = pool_stats()["spawned"]
    (pids,) = worker("pids")
    assert pool_stats()["spawned"] == spawned + 1
    assert set(rank_pids(pids).values()).isdisjoint(old.values())


def test_user_error_on_a_rank_keeps_its_class_and_place(worker) -> None:
    with pytest.raises(TraceError) as info:
        worker("usererror")
    e = info.value
    assert (e.file, e.line) == ("etl.py", 7)
    assert e.cli_line() == "error: etl.py:7: column 'x' is not numeric (on rank 1 of 2)"


def test_killed_rank_is_an_error_and_the_pool_recovers(worker) -> None:
    segments = mpi_engine._mpich_segments()
    (pids,) = worker("pids")
    old = rank_pids(pids)
    start = time.monotonic()
    with pytest.raises(OpgraphError) as info:
        worker("kill")
    assert time.monotonic() - start < 30
    assert "rank 1 of 2 was killed by SIGKILL" in str(info.value), str(info.value)
    assert wait_gone(old.values()) == []
    assert orphaned_mpich_segments(segments) == set()  # the dead pool's MPICH segments
    t = pa.table({"a": [1, 2, 3]})
    out, pids = worker("echo", [t])
    assert out.equals(t)
    assert set(rank_pids(pids).values()).isdisjoint(old.values())


def test_timeout_stops_the_pool_and_the_next_call_works(worker) -> None:
    (pids,) = worker("pids")
    old = rank_pids(pids)
    start = time.monotonic()
    with pytest.raises(OpgraphError, match="did not finish within 2 s"):
        worker("hang", timeout=2)
    assert time.monotonic() - start < 20
    assert wait_gone(old.values()) == []
    (pids,) = worker("pids")
    assert set(rank_pids(pids).values()).isdisjoint(old.values())


def test_ranks_killed_between_calls_are_replaced(worker) -> None:
    (pids,) = worker("pids")
    old = rank_pids(pids)
    os.kill(old[1], 9)
    assert wait_gone(old.values()) == []  # hydra stops the others
    (pids,) = worker("pids")
    assert set(rank_pids(pids).values()).isdisjoint(old.values())


def test_executor_error_names_the_users_line_and_the_pool_recovers(
    tmp_path: Path,
) -> None:
    from opgraph.runtime.executor import ExecutionError

    import opgraph as og

    module = f"opgraph_pool_faulty_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(FAULTY_EXECUTOR_WORKER)
    env = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    }

    @og.pipeline
    def per_key(t):
        return t.groupby("k").agg(s=("v", "sum"))

    @og.pipeline
    def sort(t):
        return t.sort_values("k")

    groupby_line = per_key.fn.__code__.co_firstlineno + 2
    t = pa.table({"k": [1, 2, 1, 3], "v": [1.0, 2.0, 3.0, 4.0]})
    gplan, splan = per_key.compile(t, hw="laptop"), sort.compile(t, hw="laptop")
    (out,) = run_mpi(
        splan.doc, splan.inputs, 2, 60, worker_module=module, env=env, echo=False
    )
    assert out.column("k").to_pylist() == [1, 1, 2, 3]
    with pytest.raises(ExecutionError) as info:
        run_mpi(
            gplan.doc, gplan.inputs, 2, 60, worker_module=module, env=env, echo=False
        )
    e = info.value
    assert (
        e.file is not None
        and Path(e.file).name == Path(__file__).name
        and e.line == groupby_line
    ), (e.file, e.line)
    assert "injected failure" in e.message and "(on rank 1 of 2)" in e.message, (
        e.message
    )
    (out,) = run_mpi(
        splan.doc, splan.inputs, 2, 60, worker_module=module, env=env, echo=False
    )
    assert out.column("k").to_pylist() == [1, 1, 2, 3]


def test_launcher_that_does_not_match_libmpi_is_reported(tmp_path: Path) -> None:
    """A 'launcher' that starts N independent processes (like a foreign MPI's mpiexec):
    each rank sees a singleton world. The pool must report it, not wait for ever."""
    fake = tmp_path / "fake_mpiexec"
    fake.write_text('#!/bin/sh\nshift 2\n"$@" & "$@"; wait\n')
    fake.chmod(0o755)
    start = time.monotonic()
    with pytest.raises(OpgraphError, match="MPI sees a world of 1"):
        run_mpi(plan("pids"), [], 2, 60, mpiexec=[str(fake)], echo=False)
    assert time.monotonic() - start < 30
