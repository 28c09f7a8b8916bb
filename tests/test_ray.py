"""The Ray engine: ``RayCommunicator`` on real Ray actors, ``run_ray``, ``engine="ray"`` and
``opgraph run --engine ray``, against DuckDB.

One local Ray cluster serves the whole module (its start takes seconds); the rank actors
of each rank count are kept between runs, as in use.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

import ray_executors as X
import test_runtime_local as T
from opgraph.runtime import ray_engine
from opgraph.runtime.executor import ExecutionError
from opgraph.runtime.ray_engine import run_ray
from test_runtime_local import EV, assert_same, duck

import opgraph as og
from opgraph.errors import OpgraphError
from opgraph.plan_schema import PlanDoc

RANKS = 2
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _ray_cluster():
    # the actors import this module's executors by name: the cluster this process starts
    # passes its environment on to them
    tests = str(Path(__file__).resolve().parent)
    path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join([tests, path]) if path else tests
    ray_engine.shutdown()  # a cluster started before without it
    yield
    ray_engine.shutdown()
    os.environ["PYTHONPATH"] = path


def _on_ray(pipe, *args, ranks: int = RANKS) -> list[pa.Table]:
    plan = pipe.compile(*args)
    return run_ray(plan.doc, plan.inputs, ranks)


def _check(pipe, args, sql, ordered=False, **tables) -> None:
    (out,) = _on_ray(pipe, *args)
    assert_same(out, duck(sql, **tables), ordered)


def _empty_plan() -> PlanDoc:
    return PlanDoc(pipeline="t", hardware="laptop", islands=[])


# ------------------------------------------------------------------ the communicator


def test_every_communicator_primitive_across_four_actors():
    (out,) = run_ray(_empty_plan(), [], 4, execute=X.primitives)
    assert out.column("rank").to_pylist() == [0]
    # a clean run leaves no message behind
    assert ray.get(ray_engine._POOLS[4].mailbox.pending.remote()) == []


def test_actors_are_kept_per_rank_count():
    """Alternating rank counts reuse each count's actors (up to MAX_POOLS sets are kept)."""
    run_ray(_empty_plan(), [], 2)
    two = [a._actor_id for a in ray_engine._POOLS[2].actors]
    run_ray(_empty_plan(), [], 1)
    run_ray(_empty_plan(), [], 2)
    assert [a._actor_id for a in ray_engine._POOLS[2].actors] == two
    assert list(ray_engine._POOLS) == [1, 2] and len(ray_engine._POOLS) <= ray_engine.MAX_POOLS


def test_large_tables_cross_between_actors():
    (out,) = run_ray(_empty_plan(), [], RANKS, execute=X.big_alltoall)
    assert out.column("src").to_pylist() == [0, 1]


# ----------------------------------------------------------------- pipelines vs DuckDB


@pytest.mark.parametrize("how", ["inner", "left", "right", "outer"])
def test_join_matches_duckdb(how):
    @og.pipeline
    def j(a, b):
        return a.merge(b, on="k", how=how)

    key = "l.k" if how in ("inner", "left") else "coalesce(l.k, r.k)"
    sql = f"""SELECT l.id, {key}::BIGINT AS k, l.s AS s_x, l.v, r.s AS s_y, r.w
              FROM l {T._JOIN_SQL[how]} r ON l.k = r.k"""
    _check(j, (T.LEFT, T.RIGHT), sql, l=T.LEFT, r=T.RIGHT)


def test_groupby_sort_window_and_set_ops_match_duckdb():
    _check(T.groupby_pipe, (EV,), f"SELECT k, {T.ALL_AGGS_SQL} FROM t GROUP BY k", t=EV)
    sql = "SELECT * FROM t ORDER BY s ASC NULLS LAST, v DESC NULLS LAST, k ASC NULLS LAST, id"
    _check(T.sort_pipe, (EV,), sql, ordered=True, t=EV)
    sql = f"""SELECT *, {T._win('avg', 'v', 3)} AS rm, {T._win('sum', 'v', 4)} AS rs, {T._win('sum', 'i32', 5)} AS rsi,
              {T._win('min', 'i', 3)} AS rmin, {T._win('max', 'v', 6)} AS rmax,
              lag(v, 1) OVER (ORDER BY id DESC) AS p, lead(s, 2) OVER (ORDER BY id DESC) AS nx,
              i - lag(i, 2) OVER (ORDER BY id DESC) AS d, v - lead(v, 1) OVER (ORDER BY id DESC) AS dn,
              v - {T._win('avg', 'v', 2)} AS combo
              FROM t ORDER BY id DESC"""
    _check(T.window_pipe, (EV,), sql, ordered=True, t=EV)
    _check(T.select_pipe, (EV,), "SELECT id, s, v * 2 AS value, i + 1 AS extra FROM t WHERE v > -2.0 AND s IS NOT NULL", t=EV)

    @og.pipeline
    def intersect(a, b):
        return a.intersect(b)

    _check(intersect, (T.SA, T.SB), "SELECT * FROM a INTERSECT SELECT * FROM b", a=T.SA, b=T.SB)


def test_engine_ray_from_the_api_with_parquet_sinks(tmp_path):
    src = tmp_path / "ev.parquet"
    pq.write_table(EV, src, row_group_size=40)  # several row groups: both ranks read
    out = tmp_path / "out"

    @og.pipeline
    def summary(path, dest):
        t = og.read_parquet(path)
        g = t.groupby("k").agg(n=("v", "size"), s=("v", "sum"))
        og.write_parquet(g, dest)
        return g.sort_values("k")

    got = summary.run(str(src), str(out), engine="ray", ranks=RANKS)
    expected = duck("SELECT k, count(*) AS n, sum(v) AS s FROM t GROUP BY k ORDER BY k NULLS LAST", t=EV)
    assert_same(got, expected, ordered=True)
    assert sorted(p.name for p in out.iterdir()) == [f"part-{r}.parquet" for r in range(RANKS)]
    assert_same(pq.read_table(out), expected.select(["k", "n", "s"]))


def test_progress_lines_reach_the_driver():
    lines: list[str] = []
    plan = T.groupby_pipe.compile(EV)
    run_ray(plan.doc, plan.inputs, RANKS, progress=lines.append)
    assert len(lines) >= len(plan.doc.islands) and all(isinstance(x, str) and x for x in lines)


# ------------------------------------------------------------------------- failures


def test_error_on_one_rank_names_the_users_line_and_stops_the_others():
    t = pa.table({"s": ["1", "2", "3", "4", "5", "6", "7", "x8"]})  # only the last rank's half fails
    plan = T.bad_cast_pipe.compile(t)
    line = next(i for i, text in enumerate(Path(T.__file__).read_text().splitlines(), 1) if "BAD-CAST-LINE" in text and "astype" in text)
    start = time.monotonic()
    with pytest.raises(ExecutionError) as info:
        run_ray(plan.doc, plan.inputs, RANKS)
    assert time.monotonic() - start < 30
    assert info.value.file.endswith("test_runtime_local.py") and info.value.line == line
    assert "x8" in info.value.message and "(on rank 1 of 2)" in info.value.message
    # the next run gets fresh actors and works
    ok = pa.table({"s": ["1", " 2", None]})
    plan = T.bad_cast_pipe.compile(ok)
    assert run_ray(plan.doc, plan.inputs, RANKS)[0].column("n").to_pylist() == [1, 2, None]


def test_rank_killed_by_a_signal_is_an_error_not_a_hang():
    start = time.monotonic()
    with pytest.raises(OpgraphError, match="rank 1 of 2 \\(a Ray actor\\) died"):
        run_ray(_empty_plan(), [], RANKS, execute=X.killed)
    assert time.monotonic() - start < 60
    assert run_ray(_empty_plan(), [], RANKS) == []  # the pool was replaced


def test_timeout_stops_the_run():
    start = time.monotonic()
    with pytest.raises(OpgraphError, match="did not finish within 2 s"):
        run_ray(_empty_plan(), [], RANKS, timeout=2, execute=X.hang)
    assert time.monotonic() - start < 30


def test_bad_arguments_are_clear_errors():
    with pytest.raises(OpgraphError, match="positive number of ranks"):
        run_ray(_empty_plan(), [], 0)
    with pytest.raises(OpgraphError, match="input 0 of the plan is a str"):
        run_ray(_empty_plan(), ["not a table"], 1)
    with pytest.raises(OpgraphError, match="placement= is for the local engine"):
        T.head_pipe.run(EV, engine="ray", placement="plan")


# --------------------------------------------------------------------------- the CLI


def test_opgraph_run_engine_ray(tmp_path):
    """``opgraph run examples/etl.py --engine ray -n 2``: a Ray cluster of its own, the same
    answer as the local engine."""
    env = {**os.environ, "OPGRAPH_EXAMPLE_ROWS": "2000"}
    cmd = [sys.executable, "-m", "opgraph.cli", "run", str(ROOT / "examples" / "etl.py"), "--quiet", "--arg", f"out={tmp_path}/o"]
    ray_run = subprocess.run(check=False, args=[*cmd, "--engine", "ray", "-n", "2"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert ray_run.returncode == 0, ray_run.stderr
    local = subprocess.run(args=[*cmd, "-n", "2"], check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert local.returncode == 0, local.stderr
    assert ray_run.stdout == local.stdout and "DE" in local.stdout
