"""``opgraph run``: per-island progress on stderr while the plan runs, then the results.

Progress (rich) shows one line per island - a spinner while it runs, a tick when it is done,
its name, op count and kinds, and its elapsed time - under an overall bar. It is shown only
when stderr is a terminal and ``--quiet`` is not given. The executor reports island starts
(``execute_plan(progress=...)`` calls back with ``"[n/N] name"`` on rank 0); an island ends
when the next one starts or the run returns. Under the ``mpi`` engine rank 0 prints those
lines as ``opgraph: [n/N] name`` on its stderr, which the engine echoes: while the run
lasts, ``sys.stderr`` is a proxy that turns them into progress updates and passes every
other line through above the live display.

After the run the result table(s) go to stdout (row count, columns, the first rows) and
the outputs the plan wrote (its sinks' paths) are listed.
"""

from __future__ import annotations

import io
import re
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
)
from rich.table import Table as RichTable

__all__ = ["IslandProgress", "cli_run", "format_results", "run_with_progress", "written_outputs"]

_LINE = re.compile(r"^\[(\d+)/(\d+)\] (.+)$")
_MPI_LINE = re.compile(r"^opgraph: (\[\d+/\d+\] .+)$")
#: finished islands that stay on screen (long plans would otherwise fill it)
KEEP_DONE = 6
#: result rows printed per table
SHOW_ROWS = 10


class _Elapsed(TextColumn):
    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # type: ignore[override]
        from rich.text import Text

        end = task.fields.get("t1")
        start = task.fields.get("t0")
        if start is None:
            return Text("")
        seconds = (end if end is not None else time.perf_counter()) - start
        return Text(f"{seconds:7.2f} s", style="progress.elapsed")


class IslandProgress:
    """The live display of one run. Call it with the executor's ``"[n/N] name"`` lines;
    ``close()`` marks the last island done and stops the display."""

    def __init__(self, doc: Any, console: Console, engine: str = "local", ranks: int = 1):
        self.islands = {isl.name: isl for isl in doc.islands}
        self.console = console
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[ops]}", style="dim"),
            _Elapsed(),
            console=console,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
            refresh_per_second=8,
        )
        total = max(1, len(doc.islands))
        self.overall = self.progress.add_task(
            f"[bold]{escape(doc.pipeline)}[/] on {engine}, {ranks} rank{'s' if ranks != 1 else ''}",
            total=total, ops=f"{total} island{'s' if total != 1 else ''}", t0=time.perf_counter(), t1=None,
        )
        self.current: TaskID | None = None
        self.done: list[TaskID] = []
        self.started = False

    def start(self) -> None:
        self.progress.start()
        self.started = True

    def __call__(self, line: str) -> None:
        match = _LINE.match(line.strip())
        if not match:
            self.console.print(line, markup=False, highlight=False)
            return
        n, total, name = int(match.group(1)), int(match.group(2)), match.group(3)
        self._finish_current()
        island = self.islands.get(name)
        ops = island.ops if island is not None else []
        kinds = sorted({op.op.split(".", 1)[-1] for op in ops})
        shown = ", ".join(kinds[:3]) + (", ..." if len(kinds) > 3 else "")
        label = f"{len(ops)} op{'s' if len(ops) != 1 else ''}" + (f": {shown}" if shown else "")
        self.current = self.progress.add_task(
            f"[{n}/{total}] {escape(name)}", total=1, ops=escape(label), t0=time.perf_counter(), t1=None
        )
        self.progress.update(self.overall, total=max(total, 1), completed=n - 1)

    def _finish_current(self) -> None:
        if self.current is None:
            return
        self.progress.update(self.current, completed=1, t1=time.perf_counter())
        self.progress.advance(self.overall)
        self.done.append(self.current)
        if len(self.done) > KEEP_DONE:
            self.progress.update(self.done[-KEEP_DONE - 1], visible=False)
        self.current = None

    def close(self, ok: bool = True) -> None:
        if ok:
            self._finish_current()
            task = self.progress.tasks[0]
            self.progress.update(self.overall, completed=task.total, t1=time.perf_counter())
        else:  # the island that was running when the run failed
            if self.current is not None:
                task = next(t for t in self.progress.tasks if t.id == self.current)
                self.progress.update(self.current, description=f"{task.description} [red]failed[/]", t1=time.perf_counter())
                self.progress.stop_task(self.current)
            self.progress.update(self.overall, t1=time.perf_counter())
        if self.started:
            self.progress.stop()
            self.started = False


class _StderrProxy(io.TextIOBase):
    """``sys.stderr`` while a run shows progress: ``opgraph: [n/N] name`` lines (the mpi
    engine's ranks) become progress updates; everything else is printed above the display."""

    def __init__(self, progress: IslandProgress, real: Any):
        self.progress = progress
        self.real = real
        self.buffer_text = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.buffer_text += text
        while "\n" in self.buffer_text:
            line, self.buffer_text = self.buffer_text.split("\n", 1)
            match = _MPI_LINE.match(line)
            if match:
                self.progress(match.group(1))
            else:
                self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        if self.buffer_text:
            line, self.buffer_text = self.buffer_text, ""
            self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def fileno(self) -> int:
        return self.real.fileno()

    def isatty(self) -> bool:
        return False


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


@contextmanager
def _stderr_to(progress: IslandProgress):
    real = sys.stderr
    proxy = _StderrProxy(progress, real)
    sys.stderr = proxy
    try:
        yield
    finally:
        proxy.flush()
        sys.stderr = real


def run_with_progress(
    doc: Any,
    inputs: Sequence[pa.Table],
    engine: str = "local",
    ranks: int = 1,
    *,
    show: bool = True,
    console: Console | None = None,
) -> list[pa.Table]:
    """Runs the plan ``doc`` on ``engine`` with per-island progress on ``console`` (default:
    stderr) when ``show`` (and the console is a terminal); returns the outputs."""
    from opgraph.runtime.engines import check_engine, run_on_engine

    check_engine(engine)
    if console is None:  # the real stderr: a terminal, whatever FORCE_COLOR etc. say
        console = Console(stderr=True)
        show = show and _isatty(sys.stderr)
    show = show and console.is_terminal

    def run(callback):
        return run_on_engine(engine, doc, inputs, ranks, progress=callback)

    if not show:
        return run(None)
    bar = IslandProgress(doc, console, engine, ranks)
    bar.start()
    ok = False
    try:
        with _stderr_to(bar):
            outputs = run(bar)
        ok = True
        return outputs
    finally:
        bar.close(ok)


# ------------------------------------------------------------------ results


def written_outputs(doc: Any) -> list[tuple[str, str]]:
    """(path, format) of every sink of the plan, in plan order."""
    from opgraph.runtime.io import SINK_FORMATS

    out: list[tuple[str, str]] = []
    for island in doc.islands:
        for op in island.ops:
            if op.op in SINK_FORMATS and "path" in op.attributes:
                out.append((str(op.attributes["path"]), SINK_FORMATS[op.op]))
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def format_results(tables: Sequence[pa.Table], console: Console, rows: int = SHOW_ROWS) -> None:
    """Prints each table: a title with its row/column count, then its first ``rows`` rows."""
    for i, table in enumerate(tables):
        name = "result" if len(tables) == 1 else f"result {i + 1}/{len(tables)}"
        if not isinstance(table, pa.Table):  # not a table (an engine's other result kinds)
            console.print(f"{name}: {type(table).__name__}: {table!r}"[:2000], markup=False, highlight=False)
            continue
        shown = min(rows, table.num_rows)
        title = f"{name}: {table.num_rows:,} row{'s' if table.num_rows != 1 else ''} × {table.num_columns} columns"
        if shown < table.num_rows:
            title += f" (first {shown})"
        console.print(title, markup=False, highlight=False, style="bold", soft_wrap=True)
        grid = RichTable(show_edge=False)
        for field in table.schema:
            grid.add_column(f"{field.name}\n[dim]{field.type}[/]", justify="right" if pa.types.is_integer(field.type) or pa.types.is_floating(field.type) else "left")
        head = table.slice(0, shown).to_pylist()
        for row in head:
            grid.add_row(*(_cell(row[f.name]) for f in table.schema))
        console.print(grid)


def _describe_written(path: str, fmt: str) -> str:
    p = Path(path)
    if p.is_dir():
        parts = sorted(x for x in p.iterdir() if x.is_file())
        size = sum(x.stat().st_size for x in parts)
        return f"{path}/ ({fmt}, {len(parts)} part file{'s' if len(parts) != 1 else ''}, {size:,} bytes)"
    return f"{path} ({fmt})"


def cli_run(args: Any, console: Console | None = None, out: Console | None = None) -> int:
    """``opgraph run``: trace, compile, run with progress, print the results."""
    from opgraph.cli import _trace, load_pipeline, parse_args_kv
    from opgraph.driver import plan_for_run
    from opgraph.runtime.mpi_engine import world_rank

    pipeline = load_pipeline(args.pipeline, args.entry)
    traced = _trace(pipeline, parse_args_kv(pipeline, args.arg), Path(args.pipeline))
    plan = plan_for_run(traced, args.engine, args.hw, cwd=Path.cwd())
    # run by every rank of a world the user started (mpiexec -n N / srun opgraph run ...):
    # rank 0 shows progress and reports, as a spawned run does; the others stay quiet
    rank = world_rank() if args.engine == "mpi" else None
    outputs = run_with_progress(
        plan.doc,
        traced.inputs,
        args.engine,
        args.ranks,
        show=not getattr(args, "quiet", False) and not rank,
        console=console,
    )
    if rank:
        return 0
    out = out or Console(highlight=False)
    if plan.doc.outputs:
        format_results(list(outputs), out)
    for path, fmt in written_outputs(plan.doc):
        out.print(f"wrote {_describe_written(path, fmt)}", markup=False, highlight=False)
    return 0
