"""The MPI engine: ``MPICommunicator`` across real ranks, the worker, ``run_mpi``.

Everything here runs the real ``mpiexec`` of the pip-installed ``mpich`` (the environment's
``bin/mpiexec``) with 2 ranks, one job per call (``OPGRAPH_MPI_POOL=0``; the pool of
persistent workers is tested in tests/test_mpi_pool*.py). Scripts that run on the ranks are written to ``tmp_path`` and
assert on every rank; a failing assertion exits non-zero (through MPI_Abort) and the test
shows the ranks' output.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("mpi4py")

from opgraph.runtime import mpi_engine
from opgraph.runtime.mpi_engine import find_mpiexec, launcher_flavor, run_mpi
from support import (
    FAULTY_EXECUTOR_WORKER,
    HAVE_MPI,
    VENV_MPIEXEC,
    needs_mpi,
    orphaned_mpich_segments,
)

from opgraph.errors import OpgraphError
from opgraph.plan import PlanDoc

MPIEXEC = [str(VENV_MPIEXEC)] if HAVE_MPI else None
pytestmark = needs_mpi


@pytest.fixture(autouse=True)
def _pip_installed_mpi(monkeypatch) -> None:
    """These tests use the environment's MPI (the mpich wheel), whatever the caller set, and
    one job per call (the worker pool: tests/test_mpi_pool*.py)."""
    for name in ("OPGRAPH_MPIEXEC", "MPI4PY_LIBMPI", "MPI4PY_MPIABI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPGRAPH_MPI_POOL", "0")


HAVE_EXECUTOR = (Path(mpi_engine.__file__).parent / "executor.py").is_file()

# environment for processes started here: no launcher variables from an outer MPI job
CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if not mpi_engine._DROP_ENV.match(k) and k not in ("OPGRAPH_MPIEXEC", "MPI4PY_LIBMPI", "MPI4PY_MPIABI")
}


def mpiexec_script(script: Path, *args: str, ranks: int = 2, timeout: float = 60, env=None) -> subprocess.CompletedProcess:
    cmd = [*MPIEXEC, "-n", str(ranks), sys.executable, str(script), *args]
    return subprocess.run(
        cmd, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env={**CLEAN_ENV, **(env or {})}
    )


def empty_plan() -> PlanDoc:
    return PlanDoc(pipeline="t", hardware="laptop", islands=[])


def sample_table() -> pa.Table:
    """Strings, nulls, nested lists, dictionary, timestamps, decimals, schema metadata."""
    n = 23
    return pa.table(
        {
            "i": pa.array([None if k % 5 == 0 else k for k in range(n)], pa.int64()),
            "f": pa.array([k / 3 if k % 4 else None for k in range(n)], pa.float64()),
            "s": pa.array([None if k % 6 == 0 else "é" * (k % 3) + str(k) for k in range(n)], pa.string()),
            "b": pa.array([k % 2 == 0 for k in range(n)]),
            "l": pa.array([[k, None] if k % 3 else None for k in range(n)], pa.list_(pa.int32())),
            "d": pa.array([["x", "y", None][k % 3] for k in range(n)]).dictionary_encode(),
            "t": pa.array(range(n), pa.timestamp("us", tz="UTC")),
            "dec": pa.array([None] + [k for k in range(1, n)], pa.decimal128(12, 3)),
            "u8": pa.array(range(n), pa.uint8()),
        }
    ).replace_schema_metadata({"origin": "test", "rows": str(n)})


def on_every_rank(body: str) -> str:
    """A script that runs ``body`` on every rank and prints "rank R: ok" after it; a failure
    prints its traceback and aborts the job (exit != 0)."""
    code = textwrap.indent(textwrap.dedent(body), "    ")
    return (
        "import sys, traceback\nfrom mpi4py import MPI\ntry:\n"
        + code
        + "\n    print(f'rank {MPI.COMM_WORLD.rank}: ok', flush=True)\n"
        "except BaseException:\n    traceback.print_exc()\n    sys.stderr.flush()\n    MPI.COMM_WORLD.Abort(1)\n"
    )


def assert_every_rank_ok(tmp_path: Path, script_text: str, ranks: int = 2) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(script_text)
    res = mpiexec_script(script, ranks=ranks)
    assert res.returncode == 0, res.stdout + res.stderr
    assert all(f"rank {r}: ok" in res.stdout for r in range(ranks)), res.stdout + res.stderr


PRIMITIVES = textwrap.dedent(
    """
    import os, sys, traceback
    import numpy as np
    import pyarrow as pa
    from mpi4py import MPI
    from opgraph.runtime.communicator import Communicator
    from opgraph.runtime.mpi_comm import MPICommunicator, table_to_buffer, buffer_to_table

    def sample(rank, n):
        return pa.table({
            "k": pa.array([None if i % 4 == 0 else rank * 100 + i for i in range(n)], pa.int64()),
            "s": pa.array([None if i % 3 == 0 else f"r{rank}-{'é' * i}" for i in range(n)], pa.string()),
            "x": pa.array([i * 0.5 for i in range(n)], pa.float64()),
        }).replace_schema_metadata({"from": str(rank)})

    def same(a, b):
        assert a.schema.equals(b.schema, check_metadata=True), (a.schema, b.schema)
        assert a.equals(b), (a, b)

    def check():
        comm = MPICommunicator(MPI.COMM_WORLD)
        r, n = comm.rank, comm.size
        assert n == 2, n
        # alltoallv: per-destination parts with strings, nulls and an empty part
        parts = [sample(r, 0 if (r + d) % 2 else 5 + r + d).replace_schema_metadata({"from": str(r)}) for d in range(n)]
        got = comm.alltoallv(parts)
        assert len(got) == n
        for src in range(n):
            same(got[src], sample(src, 0 if (src + r) % 2 else 5 + src + r))
        assert got[r] is parts[r]  # own part stays local
        # chunked input survives
        chunked = pa.concat_tables([sample(r, 3), sample(r, 4)])
        got = comm.alltoallv([chunked] * n)
        for src in range(n):
            assert got[src].combine_chunks().equals(pa.concat_tables([sample(src, 3), sample(src, 4)]).combine_chunks())
        # alltoallv_by_part: raw fixed-width columns (nulls, bits, decimals, a sliced input,
        # empty parts, chunks) equal the IPC path's answer and arrive as one chunk per column
        fixed = pa.table({
            "i": pa.array([None if i % 5 == 0 else i * (r + 1) for i in range(23)], pa.int64()),
            "b": pa.array([None if i % 7 == 0 else i % 3 == 0 for i in range(23)], pa.bool_()),
            "f": pa.array([i / 3 for i in range(23)], pa.float32()),
            "d": pa.array([None if i == 4 else i for i in range(23)], pa.decimal128(12, 3)),
            "t": pa.array([i * 10**9 for i in range(23)], pa.timestamp("ns", "UTC")),
            "u": pa.array([i % 256 for i in range(23)], pa.uint8()),
        }).replace_schema_metadata({"kind": "fixed"})
        for table, ids in (
            (fixed, [(i * 7 + r) % 3 % 2 for i in range(23)]),
            (fixed.slice(3, 13), [r] * 13),  # an offset; everything stays: empty parts
            (fixed.slice(0, 0), []),
            (pa.concat_tables([fixed.slice(0, 5), fixed.slice(5)]), [i % 2 for i in range(23)]),  # chunked
            (sample(r, 9), [i % 2 for i in range(9)]),  # strings: the IPC streams
            (fixed.select([]), [i % 2 for i in range(23)]),  # rows without columns
        ):
            ids = np.array(ids, dtype=np.int32)
            counts = np.bincount(ids, minlength=n)
            want = Communicator.alltoallv_by_part(comm, table, ids, counts)
            got = comm.alltoallv_by_part(table, ids, counts)
            assert got.schema.equals(table.schema, check_metadata=True), got.schema
            assert got.equals(want) and got.num_rows == want.num_rows, (got, want)
            if "s" not in table.column_names:
                assert all(c.num_chunks == 1 for c in got.columns), got
        for bad in (np.array([0, 1], np.int64), np.array([22, 1], np.int64)):  # wrong counts
            try:
                comm.alltoallv_by_part(fixed, np.zeros(23, np.int32), bad)
                raise AssertionError("wrong counts accepted")
            except ValueError:
                pass
        # bcast from each root
        for root in range(n):
            t = comm.bcast(sample(root, 7) if r == root else None, root=root)
            same(t, sample(root, 7))
        # gather
        for root in range(n):
            g = comm.gather(sample(r, r + 2), root=root)
            if r == root:
                assert [x.num_rows for x in g] == [2, 3]
                for src in range(n):
                    same(g[src], sample(src, src + 2))
            else:
                assert g is None
        # allgather (one rank empty)
        ag = comm.allgather(sample(r, 0 if r == 0 else 6))
        for src in range(n):
            same(ag[src], sample(src, 0 if src == 0 else 6))
        # allreduce: shapes, dtypes, ops
        a = np.arange(6, dtype=np.int64).reshape(2, 3) * (r + 1)
        s = comm.allreduce(a)
        assert s.shape == (2, 3) and s.dtype == np.int64 and (s == np.arange(6).reshape(2, 3) * 3).all(), s
        assert comm.allreduce(np.array([r + 0.5]), op="max").tolist() == [1.5]
        assert comm.allreduce(np.array([r + 0.5]), op="min").tolist() == [0.5]
        assert comm.allreduce(np.array([r + 2], np.int32), op="prod").tolist() == [6]
        assert comm.allreduce(np.float64(r)).shape == ()
        assert comm.allgather_array(np.array([r, r * 10]))[1].tolist() == [1, 10]
        try:
            comm.allreduce(np.array([1]), op="avg")
            raise AssertionError("unknown op accepted")
        except ValueError:
            pass
        # send/recv: both send first, then receive (buffered send: no deadlock), big enough
        # for MPI's rendezvous protocol
        big = pa.table({"v": np.arange(400_000, dtype=np.int64) + r, "s": pa.array([str(r)] * 400_000)})
        other = 1 - r
        comm.send(big, dest=other, tag=7)
        comm.send(sample(r, 2), dest=other, tag=8)
        small = comm.recv(source=other, tag=8)  # tags match out of order
        same(small, sample(other, 2))
        got_big = comm.recv(source=other, tag=7)
        assert got_big.column("v")[0].as_py() == other and got_big.num_rows == 400_000
        comm.barrier()
        # split: two singleton islands, then one island of both in reverse order
        sub = comm.split(color=r, key=0)
        assert (sub.rank, sub.size) == (0, 1)
        same(sub.alltoallv([sample(r, 3)])[0], sample(r, 3))
        rev = comm.split(color=0, key=-r)
        assert (rev.rank, rev.size) == (n - 1 - r, 2)
        assert rev.allreduce(np.array([rev.rank]))[0] == 1
        same(rev.bcast(sample(9, 4) if rev.rank == 0 else None, root=0), sample(9, 4))
        sub.free(); rev.free()
        # exact round trip of a rich table through the IPC buffer helpers
        t = sample(r, 9)
        same(buffer_to_table(np.frombuffer(table_to_buffer(t), np.uint8)), t)
        comm.barrier()
        print(f"rank {r}: ok", flush=True)

    try:
        check()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
    """
)


def test_communicator_primitives_across_two_ranks(tmp_path: Path) -> None:
    assert_every_rank_ok(tmp_path, PRIMITIVES)


SHUFFLE_BY_PART = on_every_rank(
    """
    import numpy as np
    import pyarrow as pa
    from mpi4py import MPI
    from opgraph.runtime.communicator import Communicator
    from opgraph.runtime.mpi_comm import MPICommunicator
    from opgraph.runtime.partition import hash_part_ids

    comm = MPICommunicator(MPI.COMM_WORLD)
    r, n = comm.rank, comm.size
    rng = np.random.default_rng(r)
    for rows in (0, 1, 7, 1000, 100_003):
        k = rng.integers(0, 50, rows)
        t = pa.table({"k": pa.array(k, mask=(k % 7 == 0)), "b": pa.array(k % 3 == 0), "x": rng.random(rows)})
        ids, counts = hash_part_ids(t, ["k"], n)
        want = Communicator.alltoallv_by_part(comm, t, ids, counts)  # the IPC streams
        got = comm.alltoallv_by_part(t, ids, counts)
        assert got.equals(want), (rows, r)
        assert all(c.num_chunks == 1 for c in got.columns), got
    """
)


def test_shuffle_by_part_on_three_ranks(tmp_path: Path) -> None:
    """The shuffle's raw-column exchange with uneven parts (hash-partitioned, nulls, bools,
    empty tables) over 3 ranks equals the IPC-stream exchange."""
    assert_every_rank_ok(tmp_path, SHUFFLE_BY_PART, ranks=3)


# ---------------------------------------------------------------- run_mpi with a custom worker

WORKERS = textwrap.dedent(
    """
    import os, sys, time
    from opgraph.runtime import mpi_worker

    MODE = os.environ["OPGRAPH_TEST_MODE"]

    def execute(doc, inputs, comm):
        if MODE == "echo":  # every rank sends its half of input 0 to rank 0
            t = inputs[0]
            half = t.slice(comm.rank * (t.num_rows // 2), t.num_rows // 2 + (t.num_rows % 2) * comm.rank)
            parts = comm.gather(half, root=0)
            import pyarrow as pa
            return [pa.concat_tables(parts), inputs[1]] if comm.rank == 0 else []
        if MODE == "raise":
            if comm.rank == 1:
                time.sleep(0.3)
                raise ValueError("boom from rank 1")
            comm.barrier()  # rank 0 would wait here for ever
        if MODE == "usererror":
            from opgraph.errors import TraceError
            if comm.rank == 1:
                raise TraceError("column 'x' is not numeric", "etl.py", 7)
            comm.barrier()
        if MODE == "kill":
            if comm.rank == 1:
                time.sleep(0.3)
                os.kill(os.getpid(), 9)
            comm.barrier()
        if MODE == "hang":
            time.sleep(120)
        return []

    if __name__ == "__main__":
        sys.exit(mpi_worker.main(sys.argv[1:], execute=execute))
    """
)


@pytest.fixture
def worker(tmp_path: Path):
    # a name of its own, so that the process checks below never see another test run's ranks
    module = f"opgraph_test_worker_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(WORKERS)

    def run(mode: str, inputs=(), ranks: int = 2, timeout: float | None = 60, **kw):
        env = {"OPGRAPH_TEST_MODE": mode, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
        return run_mpi(empty_plan(), list(inputs), ranks, timeout, worker_module=module, env=env, echo=False, **kw)

    run.module = module
    return run


def test_tables_round_trip_exactly_through_ranks(worker) -> None:
    t = sample_table()
    other = pa.table({"z": pa.array([], pa.string())})
    out = worker("echo", [t, other])
    assert len(out) == 2
    assert out[0].schema.equals(t.schema, check_metadata=True)
    assert out[0].equals(t)
    assert out[1].schema.equals(other.schema) and out[1].num_rows == 0


def test_exception_in_one_rank_stops_the_run_with_its_message(worker) -> None:
    segments = mpi_engine._mpich_segments()
    start = time.monotonic()
    with pytest.raises(OpgraphError) as info:
        worker("raise")
    elapsed = time.monotonic() - start
    assert elapsed < 30, elapsed
    assert "ValueError: boom from rank 1" in str(info.value)
    assert "rank 1 of 2" in str(info.value)
    assert "ValueError" in info.value.remote_traceback
    assert orphaned_mpich_segments(segments) == set()  # the aborted ranks' MPICH segments


def test_user_error_on_a_rank_keeps_its_class_and_place(worker) -> None:
    from opgraph.errors import TraceError

    with pytest.raises(TraceError) as info:
        worker("usererror")
    e = info.value
    assert (e.file, e.line) == ("etl.py", 7)
    assert e.cli_line() == "error: etl.py:7: column 'x' is not numeric (on rank 1 of 2)"


def test_rank_killed_by_sigkill_is_an_error_not_a_hang(worker) -> None:
    segments = mpi_engine._mpich_segments()
    start = time.monotonic()
    with pytest.raises(OpgraphError) as info:
        worker("kill")
    assert time.monotonic() - start < 30
    msg = str(info.value)
    assert "rank 1 of 2 was killed by SIGKILL" in msg, msg
    assert orphaned_mpich_segments(segments) == set()  # removed after the failed run


def test_timeout_tears_the_ranks_down(worker, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(OpgraphError, match="did not finish within 2 s"):
        worker("hang", timeout=2)
    assert time.monotonic() - start < 15
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "args"], check=False, capture_output=True, text=True).stdout
    assert worker.module not in ps, ps


def test_launcher_that_does_not_match_libmpi_is_reported(tmp_path: Path) -> None:
    """A 'launcher' that starts N independent processes (like a foreign MPI's mpiexec):
    each rank sees a singleton world. That must be an error, not N copies of the job."""
    fake = tmp_path / "fake_mpiexec"
    fake.write_text('#!/bin/sh\nshift 2\n"$@" & "$@"; wait\n')
    fake.chmod(0o755)
    with pytest.raises(OpgraphError, match="MPI sees a world of 1"):
        run_mpi(empty_plan(), [], 2, 60, mpiexec=[str(fake)], echo=False)


def test_mpiexec_discovery_and_flavor() -> None:
    assert find_mpiexec() == MPIEXEC
    assert launcher_flavor(MPIEXEC[0]) == "mpich"
    lib = mpi_engine.launcher_libmpi(MPIEXEC[0], "mpich")
    assert lib is not None and Path(lib).name == "libmpi.so.12"
    with pytest.raises(OpgraphError, match="not found"):
        find_mpiexec("no-such-mpiexec-here")
    with pytest.raises(OpgraphError, match="positive number of ranks"):
        run_mpi(empty_plan(), [], 0)


IN_WORLD = textwrap.dedent(
    """
    import os, sys, subprocess
    import pyarrow as pa
    from opgraph.plan import PlanDoc
    from opgraph.runtime import mpi_engine

    def no_spawn(*a, **k):
        raise AssertionError("run_mpi spawned a new job inside an MPI world")
    subprocess.Popen = no_spawn
    mpi_engine._spawn = no_spawn

    calls = []
    def execute(doc, inputs, comm):
        calls.append(os.getpid())
        assert comm.size == 2
        total = comm.allreduce(__import__("numpy").array([inputs[0].num_rows]))[0]
        return [pa.table({"rows": [int(total)], "rank": [comm.rank]})] if comm.rank == 0 else []

    assert mpi_engine.mpi_world_size() == 2
    out = mpi_engine.run_mpi(PlanDoc(pipeline="t", hardware="laptop", islands=[]),
                             [pa.table({"a": [1, 2, 3]})], 2, execute=execute)
    assert calls == [os.getpid()]
    assert len(out) == 1 and out[0].to_pylist() == [{"rows": 6, "rank": 0}], out
    print("in-world ok", flush=True)
    """
)


def test_in_world_detection_runs_in_process(tmp_path: Path) -> None:
    script = tmp_path / "in_world.py"
    script.write_text(IN_WORLD)
    res = mpiexec_script(script)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("in-world ok") == 2, res.stdout + res.stderr


IN_WORLD_FAILING = textwrap.dedent(
    """
    import pyarrow as pa
    from opgraph.errors import TraceError
    from opgraph.plan import PlanDoc
    from opgraph.runtime import mpi_engine

    def execute(doc, inputs, comm):
        if comm.rank == 1:
            raise TraceError("no column 'y'", "etl.py", 9)
        comm.barrier()  # rank 0 would wait for ever without the abort
        return []

    mpi_engine.run_mpi(PlanDoc(pipeline="t", hardware="laptop", islands=[]), [], 2, execute=execute)
    print("not reached", flush=True)
    """
)


def test_in_world_failure_aborts_the_world(tmp_path: Path) -> None:
    script = tmp_path / "in_world_failing.py"
    script.write_text(IN_WORLD_FAILING)
    segments = set(glob.glob("/dev/shm/mpich_shm_*"))
    start = time.monotonic()
    res = mpiexec_script(script, timeout=30)
    assert time.monotonic() - start < 30
    assert res.returncode != 0
    assert "error: etl.py:9: no column 'y' (on rank 1 of 2)" in res.stderr, res.stderr
    assert "not reached" not in res.stdout
    # the abort skips MPI_Finalize: the aborting rank unlinked MPICH's segment itself
    assert set(glob.glob("/dev/shm/mpich_shm_*")) <= segments


def test_not_in_world_without_launcher(monkeypatch) -> None:
    for k in list(os.environ):
        if mpi_engine._DROP_ENV.match(k) or k.startswith("SLURM_"):
            monkeypatch.delenv(k)
    if "mpi4py.MPI" in sys.modules:
        pytest.skip("MPI already initialised in this process")
    assert mpi_engine.mpi_world_size() is None
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "4")  # a batch script: not a step of 4 tasks
    assert mpi_engine._launcher_world_hint() is None
    monkeypatch.setenv("PMI_SIZE", "4")
    assert mpi_engine._launcher_world_hint() == 4


# ------------------------------------------------------------------------ end to end


@pytest.mark.skipif(not HAVE_EXECUTOR, reason="runtime/executor.py (execute_plan) is not written yet")
def test_pipeline_on_two_ranks_matches_duckdb(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    import opgraph as og

    rng = np.random.default_rng(1)
    n = 5000
    events = pa.table(
        {
            "user_id": pa.array(rng.integers(0, 50, n), pa.int64()),
            "value": pa.array([None if i % 11 == 0 else float(v) for i, v in enumerate(rng.random(n))]),
            "country": pa.array(np.array(["US", "DE", "FR", "JP", "BR"])[rng.integers(0, 5, n)]),
        }
    )
    path = tmp_path / "events.parquet"
    pq.write_table(events, path)

    @og.pipeline
    def summary(p: str):
        ev = og.read_parquet(p)
        ev = ev[ev["value"] > 0.25]
        g = ev.groupby("country").agg(total=("value", "sum"), n=("value", "count"), users=("user_id", "nunique"))
        return g.sort_values("total", ascending=False)

    expected = duckdb.sql(
        f"select country, sum(value) as total, count(value) as n, count(distinct user_id) as users "
        f"from '{path}' where value > 0.25 group by country order by total desc"
    ).to_arrow_table()

    def check(out: pa.Table) -> None:
        assert out.column_names == ["country", "total", "n", "users"]
        for col in ("country", "n", "users"):
            assert out.column(col).to_pylist() == expected.column(col).to_pylist(), col
        np.testing.assert_allclose(out.column("total").to_numpy(), expected.column("total").to_numpy(), rtol=1e-12)

    plan = summary.compile(str(path), hw="laptop")
    (out,) = run_mpi(plan.doc, plan.inputs, 2, timeout=60, echo=False)
    check(out)


NODE_SHARED_JOIN = on_every_rank(
    """
    import numpy as np
    import pyarrow as pa
    from mpi4py import MPI
    from opgraph.runtime import local_ops as L
    from opgraph.runtime import parallel_ops as P
    from opgraph.runtime.mpi_comm import MPICommunicator

    comm = MPICommunicator(MPI.COMM_WORLD)
    r, n = comm.rank, comm.size
    schema = pa.schema([("k", pa.int64()), ("x", pa.float64()), ("y", pa.int32())])
    for rows, how in ((1000, "inner"), (50_000, "left"), (3000, "inner")):  # the window grows, then is reused
        rng = np.random.default_rng(rows)
        lt = pa.table({"k": pa.array(rng.integers(0, rows, 2 * rows), mask=rng.random(2 * rows) < 0.05), "x": rng.random(2 * rows)})
        rt = pa.table({"k": pa.array(rng.integers(0, rows, rows), mask=rng.random(rows) < 0.05),
                       "y": pa.array(rng.integers(0, 99, rows), pa.int32(), mask=rng.random(rows) < 0.1)})
        lo, hi = 2 * rows * r // n, 2 * rows * (r + 1) // n
        rlo, rhi = rows * r // n, rows * (r + 1) // n
        before = P.STATS["node_shared_join"]
        got = P.join(comm, P.Dist(lt.slice(lo, hi - lo)), P.Dist(rt.slice(rlo, rhi - rlo)), how, ["k"], ["k"], schema).table
        assert P.STATS["node_shared_join"] == before + 1, "the join shuffled"
        want = L.join(lt.slice(lo, hi - lo), rt, how, ["k"], ["k"], schema)  # this rank's left rows, all right rows
        key = lambda row: repr(row)
        assert sorted(got.to_pylist(), key=key) == sorted(want.to_pylist(), key=key), (rows, r)
    """
)


def test_node_shared_join_across_two_processes(tmp_path: Path) -> None:
    """Two MPI ranks on this machine join through one MPI shared-memory window (no
    shuffle): each rank's result is its own left rows joined with every rank's right rows
    (nulls, duplicate keys, a left join), with the window grown and then reused."""
    assert_every_rank_ok(tmp_path, NODE_SHARED_JOIN)


def test_dense_key_join_pipeline_on_two_ranks_matches_duckdb() -> None:
    """The compiler picks the node-shared join for an integer-keyed join with fixed-width
    right columns; run on 2 MPI ranks it equals DuckDB, and so does a groupby by the key
    after it (the join's output is not hash-partitioned: a shuffle must come first)."""
    duckdb = pytest.importorskip("duckdb")
    import opgraph as og

    rng = np.random.default_rng(4)
    n = 20_000
    facts = pa.table({"k": pa.array(rng.integers(0, n, n), mask=rng.random(n) < 0.02), "x": rng.random(n)})
    dims = pa.table({"k": pa.array(np.r_[rng.permutation(n), rng.integers(0, n, 100)], pa.int32()),
                     "w": pa.array(rng.integers(0, 5, n + 100), pa.int64(), mask=rng.random(n + 100) < 0.1)})

    @og.pipeline
    def totals(f, d):
        j = f.merge(d, on="k", how="left")
        return j.groupby("k").agg(x=("x", "sum"), w=("w", "sum"), n=("x", "count"))

    plan = totals.compile(facts, dims, hw="laptop")
    algos = [op.attributes.get("taskgraph.algorithm") for isl in plan.doc.islands for op in isl.ops if op.op == "df.join"]
    assert algos == ["node-shared"], algos
    (out,) = run_mpi(plan.doc, plan.inputs, 2, timeout=60, echo=False)
    want = duckdb.sql(
        "SELECT f.k, sum(x) AS x, sum(w) AS w, count(x) AS n FROM facts f LEFT JOIN dims d ON f.k = d.k GROUP BY f.k"
    ).to_arrow_table()
    got = {r["k"]: r for r in out.to_pylist()}
    assert len(got) == want.num_rows
    for row in want.to_pylist():
        mine = got[row["k"]]
        assert mine["n"] == row["n"] and mine["w"] == row["w"], (mine, row)
        assert abs(mine["x"] - row["x"]) <= 1e-9 * max(1.0, abs(row["x"]))


NODE_SHARED_SORT = on_every_rank(
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    from mpi4py import MPI
    from opgraph.runtime import parallel_ops as P
    from opgraph.runtime.mpi_comm import MPICommunicator

    comm = MPICommunicator(MPI.COMM_WORLD)
    r, n = comm.rank, comm.size
    rng = np.random.default_rng(5)
    k = rng.integers(-10**6, 10**6, 60_000)
    tables = [
        pa.table({"k": k, "v": rng.random(60_000)}),  # the narrow column rides along
        pa.table({"k": pa.array(k[:30_000], mask=rng.random(30_000) < 0.1), "i": np.arange(30_000),
                  "y": pa.array(rng.random(30_000), mask=rng.random(30_000) < 0.1)}),  # row numbers, gathered
        pa.table({"k": k[:5000] % 50, "v": rng.random(5000)}),  # the window is reused
    ]
    for t, asc in zip(tables, (True, False, True)):
        lo, hi = t.num_rows * r // n, t.num_rows * (r + 1) // n
        before = P.STATS["node_shared_sort"]
        got = P.sort(comm, P.Dist(t.slice(lo, hi - lo)), ["k"], [asc]).table
        assert P.STATS["node_shared_sort"] == before + 1, "the sort exchanged rows"
        parts = comm.allgather(got)
        want = pa.Table.from_pandas(t.to_pandas().sort_values("k", ascending=asc, kind="stable", na_position="last"),
                                    preserve_index=False)
        assert pa.concat_tables(parts).to_pandas().equals(want.to_pandas()), (t.num_rows, r)
    """
)


def test_node_shared_sort_across_two_processes(tmp_path: Path) -> None:
    """Two MPI ranks on this machine sort through one MPI shared-memory window (no
    exchange): the ranks' parts, concatenated, equal pandas' stable sort (nulls last,
    descending too, a carried column and gathered columns with nulls), with the window
    reused."""
    assert_every_rank_ok(tmp_path, NODE_SHARED_SORT)


def test_sort_pipeline_on_two_ranks_takes_node_shared_sort_and_matches_duckdb() -> None:
    """The compiler picks the node-shared sort for a one-key sort of fixed-width columns; run
    on 2 MPI ranks the sorted output equals DuckDB's ORDER BY (stable by the row order)."""
    duckdb = pytest.importorskip("duckdb")
    import opgraph as og

    rng = np.random.default_rng(6)
    n = 40_000
    t = pa.table({"k": rng.integers(0, 500, n), "v": rng.random(n), "w": pa.array(rng.integers(0, 9, n), mask=rng.random(n) < 0.1)})

    @og.pipeline
    def ordered(t):
        return t[t["v"] > 0.1].sort_values("k", ascending=False)

    plan = ordered.compile(t, hw="laptop")
    algos = [op.attributes.get("taskgraph.algorithm") for isl in plan.doc.islands for op in isl.ops if op.op == "df.sort"]
    shuffles = [op.op for isl in plan.doc.islands for op in isl.ops if op.op == "comm.shuffle"]
    assert algos == ["node-shared"] and not shuffles, (algos, shuffles)
    (out,) = run_mpi(plan.doc, plan.inputs, 2, timeout=60, echo=False)
    con = duckdb.connect()
    con.execute("SET threads = 1")  # the row numbers follow the scan order
    con.register("t", t)
    want = con.sql(
        "SELECT k, v, w FROM (SELECT *, row_number() OVER () AS i FROM t) WHERE v > 0.1 ORDER BY k DESC, i"
    ).to_arrow_table()
    assert out.equals(want)


@pytest.mark.skipif(not HAVE_EXECUTOR, reason="runtime/executor.py (execute_plan) is not written yet")
def test_executor_error_on_one_rank_names_the_users_line(tmp_path: Path) -> None:
    from opgraph.runtime.executor import ExecutionError

    import opgraph as og

    (tmp_path / "faulty_executor_worker.py").write_text(FAULTY_EXECUTOR_WORKER)

    @og.pipeline
    def per_key(t):
        return t.groupby("k").agg(s=("v", "sum"))

    groupby_line = per_key.fn.__code__.co_firstlineno + 2
    plan = per_key.compile(pa.table({"k": [1, 2, 1, 3], "v": [1.0, 2.0, 3.0, 4.0]}), hw="laptop")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    start = time.monotonic()
    with pytest.raises(ExecutionError) as info:
        run_mpi(plan.doc, plan.inputs, 2, 60, worker_module="faulty_executor_worker", env=env, echo=False)
    assert time.monotonic() - start < 30
    e = info.value
    assert e.file is not None and Path(e.file).name == Path(__file__).name and e.line == groupby_line, (e.file, e.line)
    assert "injected failure" in e.message and "(on rank 1 of 2)" in e.message, e.message
