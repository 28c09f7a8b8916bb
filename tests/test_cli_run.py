"""`opgraph run`: per-island progress on stderr (only on a terminal, not with --quiet), the
result table on stdout, the outputs written listed."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
from rich.console import Console
from support import VENV_MPIEXEC, needs_mpi

import opgraph as og
from opgraph.cli import build_parser
from opgraph.errors import OpgraphError
from opgraph.run_progress import (
    IslandProgress,
    cli_run,
    format_results,
    run_with_progress,
    written_outputs,
)

REPO = Path(__file__).resolve().parent.parent

PIPELINE = textwrap.dedent(
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import opgraph as og
    from pathlib import Path

    HERE = Path(__file__).resolve().parent
    SRC = HERE / "in.parquet"
    if not SRC.exists():
        rng = np.random.default_rng(0)
        pq.write_table(pa.table({"k": rng.integers(0, 5, 200), "v": rng.random(200)}), SRC)

    @og.pipeline
    def summary(src: str = str(SRC), out: str = "out/sums"):
        t = og.read_parquet(src)
        t = t[t["v"] > 0.1]
        g = t.groupby("k").agg(total=("v", "sum"), n=("v", "count"))
        og.write_parquet(g, out)
        return g.sort_values("k")
    """
)


@pytest.fixture
def pipeline_file(tmp_path: Path) -> Path:
    path = tmp_path / "summary.py"
    path.write_text(PIPELINE)
    return path


def _terminal(width: int = 140) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=width, color_system=None), buf


def _args(*argv: str):
    return build_parser().parse_args(["run", *argv])


def _plan(rows: int = 1000):
    @og.pipeline
    def small(t):
        t = t[t["v"] > 0.5]
        return t.groupby("k").agg(s=("v", "sum"))

    table = pa.table({"k": [i % 3 for i in range(rows)], "v": [i / rows for i in range(rows)]})
    return small.compile(table), [table]


# ------------------------------------------------------------------ progress


def test_progress_renders_each_island_on_a_terminal():
    plan, inputs = _plan()
    console, buf = _terminal()
    out = run_with_progress(plan.doc, inputs, "local", 1, console=console)
    assert out[0].num_rows == 3
    text = buf.getvalue()
    for island in plan.doc.islands:
        assert island.name in text
    assert "✓" in text
    for island in plan.doc.islands:  # each island's op count and kinds
        kinds = ", ".join(sorted({op.op.split(".", 1)[1] for op in island.ops}))
        count = len(island.ops)
        assert f"{count} op{'s' if count != 1 else ''}: {kinds}" in text
    assert f"{len(plan.doc.islands)}/{len(plan.doc.islands)}" in text
    assert " s" in text  # elapsed seconds per island
    assert "small" in text and "local, 1 rank" in text


def test_quiet_prints_no_progress_even_on_a_terminal(pipeline_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    console, buf = _terminal()
    out_console, out_buf = _terminal()
    assert cli_run(_args(str(pipeline_file), "--quiet"), console=console, out=out_console) == 0
    assert buf.getvalue() == ""
    assert "result: 5 rows" in out_buf.getvalue()


def test_no_progress_when_stderr_is_not_a_terminal():
    plan, inputs = _plan()
    buf = io.StringIO()
    console = Console(file=buf)  # a file, not a terminal
    assert not console.is_terminal
    run_with_progress(plan.doc, inputs, "local", 2, console=console)
    assert buf.getvalue() == ""


def test_cli_subprocess_prints_result_and_outputs_but_no_progress(pipeline_file, tmp_path):
    env = {**os.environ, "COLUMNS": "120", "FORCE_COLOR": "1"}  # rich would call a pipe a terminal
    done = subprocess.run(
        [sys.executable, "-m", "opgraph.cli", "run", str(pipeline_file), "-n", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # stderr is a pipe: no progress
    assert "result: 5 rows × 3 columns" in done.stdout
    assert "total" in done.stdout and "double" in done.stdout
    assert "wrote out/sums/ (parquet, 2 part files" in done.stdout
    assert (tmp_path / "out" / "sums").is_dir()


@needs_mpi
def test_cli_in_a_world_the_user_started_reports_once(pipeline_file, tmp_path):
    """``mpiexec -n 2 opgraph run P --engine mpi``: both ranks run the plan together (one
    part file each), rank 0 alone prints the result and what was written."""
    from opgraph.runtime.mpi_engine import _DROP_ENV

    env = {k: v for k, v in os.environ.items() if not _DROP_ENV.match(k) and k != "OPGRAPH_MPIEXEC"}
    env["COLUMNS"] = "120"
    done = subprocess.run(
        [str(VENV_MPIEXEC), "-n", "2", sys.executable, "-m", "opgraph.cli", "run", str(pipeline_file), "--engine", "mpi"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("result: 5 rows × 3 columns") == 1, done.stdout
    assert done.stdout.count("wrote out/sums/ (parquet, 2 part files") == 1, done.stdout
    assert len(list((tmp_path / "out" / "sums").glob("*.parquet"))) == 2


def test_result_table_shows_first_rows_and_count():
    console, buf = _terminal()
    big = pa.table({"a": list(range(25)), "s": [f"x{i}" for i in range(25)]})
    format_results([big, big.slice(0, 1)], console, rows=4)
    text = buf.getvalue()
    assert "result 1/2: 25 rows × 2 columns (first 4)" in text
    assert "result 2/2: 1 row × 2 columns" in text
    assert "x3" in text and "x4" not in text
    assert "int64" in text and "string" in text


def test_written_outputs_lists_sinks(pipeline_file, tmp_path, monkeypatch):
    from opgraph.cli import load_pipeline

    monkeypatch.chdir(tmp_path)
    plan = load_pipeline(str(pipeline_file), None).compile()
    assert written_outputs(plan.doc) == [("out/sums", "parquet")]


def test_other_stderr_lines_pass_through_the_display():
    plan, _ = _plan()
    console, buf = _terminal()
    bar = IslandProgress(plan.doc, console)
    bar.start()
    bar("[1/2] " + plan.doc.islands[0].name)
    bar("a warning from a rank")
    bar.close()
    text = buf.getvalue()
    assert "a warning from a rank" in text and plan.doc.islands[0].name in text


def test_unknown_engine_is_a_user_error():
    plan, inputs = _plan()
    with pytest.raises(OpgraphError, match="unknown engine 'spark' \\(expected one of local, mpi, ray\\)"):
        run_with_progress(plan.doc, inputs, "spark", 1, console=_terminal()[0])




@needs_mpi
def test_mpi_engine_progress_comes_from_rank_0():
    plan, inputs = _plan()
    console, buf = _terminal()
    out = run_with_progress(plan.doc, inputs, "mpi", 2, console=console)
    assert out[0].num_rows == 3
    text = buf.getvalue()
    assert "mpi, 2 ranks" in text
    for island in plan.doc.islands:
        assert island.name in text
    assert "opgraph: [" not in text  # the ranks' progress lines became the display


def test_failed_island_is_marked_and_the_error_propagates(monkeypatch):
    from opgraph.runtime import executor

    plan, inputs = _plan()
    failing = plan.doc.islands[-1].ops[0].op

    def hook(op, rank):
        if op.op == failing:
            raise ValueError("injected failure")

    monkeypatch.setattr(executor, "FAULT_HOOK", hook)
    console, buf = _terminal()
    with pytest.raises(OpgraphError, match="injected failure"):
        run_with_progress(plan.doc, inputs, "local", 1, console=console)
    text = buf.getvalue()
    assert plan.doc.islands[-1].name in text and "failed" in text
