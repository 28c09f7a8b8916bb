"""The MPI engine's worker pool (``runtime/mpi_engine.py``): the ranks started by the first
``run_mpi`` serve the later calls, idle without CPU, give the local engine's results for any
rank count, and nothing outlives the driver. Real ``mpiexec`` of the pip-installed ``mpich``.
Faults: tests/test_mpi_pool_faults.py.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
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
from opgraph.runtime.mpi_engine import pool_stats, run_mpi, shutdown_pools
from support import needs_mpi

pytestmark = needs_mpi


# ------------------------------------------------------------------------ reuse


def test_second_call_reuses_the_ranks(worker) -> None:
    t = pa.table(
        {"a": np.arange(1001, dtype=np.int64), "s": [str(i) for i in range(1001)]}
    )
    before = pool_stats()["spawned"]
    out1, pids1 = worker("echo", [t])
    after_first = pool_stats()["spawned"]
    out2, pids2 = worker("echo", [t.slice(3, 500)])
    assert pool_stats()["spawned"] == after_first == before + 1
    assert rank_pids(pids1) == rank_pids(pids2) and len(rank_pids(pids1)) == 2
    assert out1.equals(t) and out2.equals(t.slice(3, 500))
    (info,) = pool_for(2, worker.module)
    assert set(info["rank_pids"].values()) == set(rank_pids(pids1).values())
    assert info["calls"] == 2 and info["alive"]


def test_idle_ranks_use_no_cpu(worker) -> None:
    (pids,) = worker("pids")
    pids = list(rank_pids(pids).values())

    def cpu(pid: int) -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    start = [cpu(p) for p in pids]
    time.sleep(1.0)
    used = [cpu(p) - s for p, s in zip(pids, start)]
    assert max(used) < 0.2, used  # blocked in a socket read, not polling in MPI


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(item.decode().split("=", 1) for item in f.read().split(b"\0") if b"=" in item)


def test_ranks_keep_freed_memory_unless_told_not_to(worker) -> None:
    """Pool ranks keep memory they freed for the next call (no purge in Arrow's mimalloc,
    no mmap'd chunks or trimming in glibc malloc); OPGRAPH_MPI_KEEP_MEMORY=0 turns it off."""
    (pids,) = worker("pids")
    for pid in rank_pids(pids).values():
        env = _environ(pid)
        assert env["MIMALLOC_PURGE_DELAY"] == "-1" and env["MALLOC_MMAP_MAX_"] == "0", env
        assert int(env["MALLOC_TRIM_THRESHOLD_"]) >= 1 << 40
    (pids,) = run_mpi(plan("pids"), [], 2, 60, worker_module=worker.module,
                      env={**worker.env, "OPGRAPH_MPI_KEEP_MEMORY": "0"}, echo=False)
    for pid in rank_pids(pids).values():
        env = _environ(pid)
        assert not {"MIMALLOC_PURGE_DELAY", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"} & set(env), env


def test_rank_output_is_echoed_before_the_call_returns(worker, capsys) -> None:
    for _ in range(2):
        run_mpi(
            plan("print"),
            [],
            2,
            60,
            worker_module=worker.module,
            env=worker.env,
            echo=True,
        )
        err = capsys.readouterr().err
        assert "hello from rank 0" in err and "hello from rank 1" in err, err
        assert "opgraph-mpi-pool" not in err


# ------------------------------------------------------------------- real plans


def _local_and_mpi(pipe, *tables, ranks: int):
    local = pipe.run(*tables, engine="local", ranks=1)
    return local, pipe.run(*tables, engine="mpi", ranks=ranks)


def test_real_pipelines_match_the_local_engine_for_several_rank_counts() -> None:
    import opgraph as og

    @og.pipeline
    def join(left, right):
        return left.merge(right, on="k", how="inner")

    @og.pipeline
    def sort(t):
        return t.sort_values("k")

    @og.pipeline
    def per_key(t):
        return t.groupby("k").agg(s=("v", "sum"), n=("v", "count"))

    rng = np.random.default_rng(7)
    n = 20_000
    left = pa.table({"k": rng.integers(0, n, n), "x": rng.random(n)})
    right = pa.table({"k": rng.permutation(n).astype(np.int64), "y": rng.random(n)})
    st = pa.table({"k": rng.integers(-(1 << 40), 1 << 40, n), "v": rng.random(n)})
    gt = pa.table({"k": rng.integers(0, 50, n), "v": rng.random(n)})
    spawned = pool_stats()["spawned"]
    seen: dict[int, set[int]] = {}
    for ranks in (2, 1, 2, 1):
        local, mpi = _local_and_mpi(join, left, right, ranks=ranks)
        assert mpi.sort_by([("k", "ascending"), ("x", "ascending")]).equals(
            local.sort_by([("k", "ascending"), ("x", "ascending")])
        )
        local, mpi = _local_and_mpi(sort, st, ranks=ranks)
        assert mpi.equals(local)
        local, mpi = _local_and_mpi(per_key, gt, ranks=ranks)
        assert mpi.sort_by("k").column("n").equals(local.sort_by("k").column("n"))
        np.testing.assert_allclose(
            mpi.sort_by("k").column("s").to_numpy(),
            local.sort_by("k").column("s").to_numpy(),
        )
        (pool,) = pool_for(ranks)
        seen.setdefault(ranks, set()).add(pool["launcher_pid"])
    # one pool per rank count, each started once and kept
    assert pool_stats()["spawned"] == spawned + 2
    assert all(len(v) == 1 for v in seen.values()), seen


def test_every_kind_of_output_partitioning_matches_the_local_engine() -> None:
    """Each rank writes its own partitions (no gather): row-partitioned, hash-partitioned,
    range-partitioned and replicated outputs, nulls only in some partitions, strings."""
    import opgraph as og

    @og.pipeline
    def many(t):
        f = t[t["v"] > 0.5]
        total = t.agg(s=("v", "sum"), n=("i", "count"))
        top = t.sort_values("v", ascending=False).head(7)
        g = t.groupby("s").agg(m=("v", "max"))
        w = t.assign(r=t["v"].rolling(3).max())  # exact (a mean differs in the last bit by ranks)
        return f, total, top, g, w

    rng = np.random.default_rng(3)
    n = 5001
    t = pa.table(
        {
            "i": pa.array([None if k > n - 40 else k for k in range(n)], pa.int64()),  # nulls at the end
            "v": rng.random(n),
            "s": pa.array([None if k % 13 == 0 else f"s{k % 17}" for k in range(n)]),
        }
    )
    local = many.run(t, engine="local", ranks=1)
    mpi = many.run(t, engine="mpi", ranks=2)
    assert len(mpi) == len(local) == 5
    for name, a, b in zip(("filter", "aggregate", "head", "groupby", "window"), local, mpi):
        if name == "groupby":
            a, b = a.sort_by("s"), b.sort_by("s")
        assert b.schema.equals(a.schema), (name, a.schema, b.schema)
        assert b.equals(a), name


def test_partitions_concatenate_without_copy_and_with_the_widest_nullability() -> None:
    schema_a = pa.schema([pa.field("x", pa.int64(), nullable=False), pa.field("s", pa.string())])
    schema_b = pa.schema([pa.field("x", pa.int64(), nullable=True), pa.field("s", pa.string())])
    a = pa.table({"x": [1, 2], "s": ["a", None]}, schema=schema_a)
    b = pa.table({"x": [None, 4], "s": ["c", "d"]}, schema=schema_b)
    empty = schema_a.empty_table()
    out = mpi_engine._concat_parts([a, empty, b])
    assert out.schema.field("x").nullable and out.to_pydict() == {"x": [1, 2, None, 4], "s": ["a", None, "c", "d"]}
    assert out.column("x").chunk(0).buffers()[1].address == a.column("x").chunk(0).buffers()[1].address
    assert mpi_engine._concat_parts([empty, a]) is a
    assert mpi_engine._concat_parts([empty, empty]) is empty


def test_an_input_file_is_reused_only_while_the_table_is_unchanged() -> None:
    import opgraph as og

    @og.pipeline
    def sort(t):
        return t.sort_values("k")

    keys = np.arange(2000, dtype=np.int64)[::-1].copy()
    t = pa.table({"k": keys})  # wraps the numpy array's memory (no copy)
    assert sort.run(t, engine="mpi", ranks=2).column("k").to_pylist() == sorted(keys.tolist())
    (pool,) = pool_for(2)
    written, reused = pool["inputs_written"], pool["inputs_reused"]
    assert sort.run(t, engine="mpi", ranks=2).column("k").to_pylist() == sorted(keys.tolist())
    (pool,) = pool_for(2)
    assert (pool["inputs_written"], pool["inputs_reused"]) == (written, reused + 1)
    keys[:10] = -5  # the same table object, other content: written again, new result
    assert sort.run(t, engine="mpi", ranks=2).column("k").to_pylist() == sorted(keys.tolist())
    (pool,) = pool_for(2)
    assert (pool["inputs_written"], pool["inputs_reused"]) == (written + 1, reused + 1)
    inputs = Path(pool["dir"], "inputs")
    assert wait_for(lambda: len(list(inputs.iterdir())) == 1)  # the stale file went
    del t
    gc.collect()
    assert wait_for(lambda: not list(inputs.iterdir()))  # the table is gone: so is its file


def test_result_files_are_overwritten_only_after_their_tables_are_gone() -> None:
    """A rank writes a result into a file of an earlier call (mpi_engine._OutputFiles) only
    once every table that maps it is gone; bigger and smaller results than the file's come
    back exact, and a result still held keeps its values."""
    import opgraph as og

    @og.pipeline
    def sort(t):
        return t.sort_values("k")

    rng = np.random.default_rng(7)

    def table(n: int) -> pa.Table:
        return pa.table({"k": rng.permutation(n).astype(np.int64), "s": [f"v{i}" for i in range(n)]})

    def expected(t: pa.Table) -> dict:
        return t.to_pandas().sort_values("k").reset_index(drop=True).to_dict("list")

    big, small, mid = table(30000), table(500), table(8000)
    out_big = sort.run(big, engine="mpi", ranks=2)
    assert out_big.to_pandas().to_dict("list") == expected(big)
    (pool,) = pool_for(2)
    spare = Path(pool["dir"], "spare")
    gc.collect()
    for f in spare.iterdir():  # earlier tests' results
        f.unlink()
    taken = pool["outputs_recycled"]
    out_small = sort.run(small, engine="mpi", ranks=2)  # out_big is held: new files
    assert pool_for(2)[0]["outputs_recycled"] == taken and not list(spare.iterdir())
    del out_small
    gc.collect()
    assert wait_for(lambda: len(list(spare.iterdir())) == 2)  # one part per rank
    out_mid = sort.run(mid, engine="mpi", ranks=2)  # bigger than the spare files
    assert pool_for(2)[0]["outputs_recycled"] == taken + 2
    assert out_mid.to_pandas().to_dict("list") == expected(mid)
    assert out_big.to_pandas().to_dict("list") == expected(big)  # untouched
    del out_big, out_mid
    gc.collect()
    assert wait_for(lambda: len(list(spare.iterdir())) == 4)
    sizes = sorted(f.stat().st_size for f in spare.iterdir())
    out_small = sort.run(small, engine="mpi", ranks=2)  # into the smallest spares big enough
    assert pool_for(2)[0]["outputs_recycled"] == taken + 4
    assert out_small.to_pandas().to_dict("list") == expected(small)
    assert sorted(f.stat().st_size for f in spare.iterdir()) == sizes[-2:]  # the biggest stay


def test_a_spare_result_file_moves_only_in_the_process_that_mapped_it(tmp_path: Path) -> None:
    held, spare = tmp_path / "out-1.arrow", tmp_path / "spare"
    spare.mkdir()
    held.write_bytes(b"x" * 100)
    mpi_engine._spare_file(held, spare, 1 << 20, os.getpid() + 1)  # a forked child's copy
    assert held.exists() and not list(spare.iterdir())
    mpi_engine._spare_file(held, spare, 50, os.getpid())  # over the budget: removed
    assert not held.exists() and not list(spare.iterdir())
    held.write_bytes(b"x" * 100)
    mpi_engine._spare_file(held, spare, 1 << 20, os.getpid())
    assert [f.name for f in spare.iterdir()] == ["out-1.arrow"]


def wait_for(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_pool_off_runs_one_job_per_call(monkeypatch) -> None:
    import opgraph as og

    @og.pipeline
    def sort(t):
        return t.sort_values("k")

    t = pa.table({"k": [3, 1, 2], "v": [1.0, 2.0, 3.0]})
    monkeypatch.setenv("OPGRAPH_MPI_POOL", "0")
    spawned = pool_stats()["spawned"]
    out = sort.run(t, engine="mpi", ranks=2)
    assert out.column("k").to_pylist() == [1, 2, 3]
    assert pool_stats()["spawned"] == spawned


# --------------------------------------------------------------------- teardown

DRIVER = textwrap.dedent(
    """
    import json, os, sys, time
    import pyarrow as pa
    import opgraph as og

    @og.pipeline
    def sort(t):
        return t.sort_values("k")

    out = sort.run(pa.table({"k": [3, 1, 2]}), engine="mpi", ranks=2)
    assert out.column("k").to_pylist() == [1, 2, 3]
    from opgraph.runtime.mpi_engine import pool_stats
    (pool,) = pool_stats()["pools"]
    print(json.dumps([pool["dir"], pool["launcher_pid"], *pool["rank_pids"].values()]), flush=True)
    if sys.argv[1] == "sigkill":
        os.kill(os.getpid(), 9)
    """
)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_nothing_outlives_the_driver(tmp_path: Path, how: str) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not mpi_engine._DROP_ENV.match(k)}
    start = time.monotonic()
    res = subprocess.run(
        [sys.executable, str(script), how],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert time.monotonic() - start < 45
    assert (res.returncode == 0) if how == "exit" else (res.returncode == -9), (
        res.stdout + res.stderr
    )
    pool_dir, *pids = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(pids) == 3
    # atexit closes the pool; after SIGKILL the ranks see the end of their socket
    assert wait_gone(pids) == [], pids
    assert not Path(pool_dir).exists()  # nor its files in /dev/shm


def test_no_worker_processes_left_after_shutdown(worker) -> None:
    worker("pids")
    pids = [
        pid
        for p in pool_stats()["pools"]
        for pid in [p["launcher_pid"], *p["rank_pids"].values()]
    ]
    shutdown_pools()
    assert pool_stats()["pools"] == []
    assert wait_gone(pids) == []
    ps = subprocess.run(
        ["ps", "-eo", "args"], check=False, capture_output=True, text=True
    ).stdout
    assert worker.module not in ps, ps


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # the child only reads and exits
def test_a_forked_child_does_not_use_or_hold_the_parents_pool(worker) -> None:
    (pids,) = worker("pids")
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            ok = pool_stats()["pools"] == []
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(child, 0)
    (again,) = worker("pids")
    assert rank_pids(again) == rank_pids(pids)
