"""Compiler driver: traced module + hardware spec -> passes -> Plan (IR text + plan.json)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xdsl.dialects.builtin import ModuleOp

from opgraph.dialects.context import make_context, print_module
from opgraph.dialects.machine import attach_machine
from opgraph.pipeline import Traced
from opgraph.plan import PATTERNS, PlanDoc, build_plan_doc, plan_json_text
from opgraph.tracing import gc_paused


@dataclass
class Plan:
    """A compiled pipeline. ``mlir`` is the final lowered IR; ``doc`` is plan.json's content."""

    name: str
    hardware: str
    module: ModuleOp
    doc: PlanDoc
    ir_dumps: list[tuple[str, str]] = field(default_factory=list)  # (file name, text), 00 = traced
    inputs: list = field(default_factory=list)  # data bound to df.input, by index

    @property
    def mlir(self) -> str:
        return print_module(self.module)

    @property
    def json(self) -> str:
        return plan_json_text(self.doc)

    def explain(self) -> str:
        """Per op: island, pattern, algorithm, ranks, device, predicted time, bytes moved and
        source location; then per island its ranks, device, nodes and predicted start/end;
        then the predicted makespan and peak memory (plain aligned text, via rich)."""
        from rich.console import Console
        from rich.table import Table as RichTable

        def fmt_s(v: Any) -> str:
            if not isinstance(v, int | float):
                return "-"
            v = float(v)
            if v == 0:
                return "0 s"
            if v < 1e-3:
                return f"{v * 1e6:.1f} us"
            if v < 1:
                return f"{v * 1e3:.2f} ms"
            return f"{v:.3f} s"

        def fmt_b(v: Any) -> str:
            if not isinstance(v, int | float):
                return "-"
            v = float(v)
            for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
                if v >= size:
                    return f"{v / size:.2f} {unit}"
            return f"{int(v)} B"

        doc = self.doc
        ops = RichTable(title=f"plan for {self.name} on {self.hardware}")
        for col in ("op", "island", "pattern", "algorithm", "ranks", "device", "predicted time", "bytes moved", "location"):
            ops.add_column(col, justify="right" if col in ("ranks", "predicted time", "bytes moved") else "left")
        for island in doc.islands:
            for op in island.ops:
                a = op.attributes
                ops.add_row(
                    op.op,
                    island.name,
                    str(a.get("taskgraph.pattern") or PATTERNS.get(op.op) or island.pattern or "-"),
                    str(a.get("taskgraph.algorithm") or island.algorithm or "-"),
                    str(a.get("taskgraph.ranks", island.ranks)),
                    str(a.get("taskgraph.device", island.device)),
                    fmt_s(a.get("taskgraph.cost")),
                    fmt_b(a.get("taskgraph.bytes_moved")),
                    op.loc or "-",
                )
        isl = RichTable(title="islands (predicted timeline)")
        for col in ("island", "ops", "ranks", "device", "nodes", "start", "end", "inputs from"):
            isl.add_column(col, justify="right" if col in ("ops", "ranks", "start", "end") else "left")
        for island in doc.islands:
            nodes = island.nodes
            node_text = "-" if not nodes else (
                ",".join(map(str, nodes)) if len(nodes) <= 4 else f"{nodes[0]}..{nodes[-1]} ({len(nodes)})"
            )
            isl.add_row(
                island.name,
                str(len(island.ops)),
                str(island.ranks),
                island.device,
                node_text,
                fmt_s(island.start),
                fmt_s(island.end),
                ", ".join(t.from_island for t in island.transfers) or "-",
            )
        with open(os.devnull, "w") as sink:
            console = Console(width=200, record=True, file=sink)
            console.print(ops)
            console.print(isl)
            if doc.makespan is not None:
                console.print(
                    f"islands: {len(doc.islands)}; predicted makespan: {fmt_s(doc.makespan)}; "
                    f"nodes used: {doc.nodes_used}; peak memory per node: {fmt_b(doc.peak_memory)}"
                )
            else:
                console.print(f"islands: {len(doc.islands)}; predicted makespan: n/a (run schedule-islands)")
            return console.export_text()

    def write(self, out_dir: str | os.PathLike, print_ir_after_all: bool = False, extra: dict[str, str] | None = None) -> None:
        """Writes plan.mlir, plan.json (and ir/NN-*.mlir) atomically: into a temporary sibling
        directory first, then renamed over ``out_dir``, so a failure leaves nothing half-written."""
        files = {"plan.mlir": self.mlir, "plan.json": self.json, **(extra or {})}
        if print_ir_after_all:
            files.update({f"ir/{name}": text for name, text in self.ir_dumps})
        write_directory_atomically(Path(out_dir), files)


def write_directory_atomically(out: Path, files: dict[str, str]) -> None:
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.rename(out, old / out.name)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _dump_name(index: int, pass_name: str) -> str:
    return f"{index:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', pass_name)}.mlir"


def resolve_hw(hw: Any, cwd: Path | None = None):
    from opgraph.hwspec import HardwareSpec, load_spec

    if isinstance(hw, HardwareSpec):
        return hw
    return load_spec(str(hw), cwd=cwd)


def compile_traced(
    traced: Traced,
    hw: Any = "laptop",
    pass_pipeline: str | None = None,
    cwd: Path | None = None,
    keep_dumps: bool = True,
    timings: dict[str, float] | None = None,
) -> Plan:
    """Runs the passes (default pipeline unless ``pass_pipeline``) on the traced module for
    ``hw`` and builds the plan. ``timings``, when given, receives seconds per step (machine
    ops, each pass as ``NN-<pass>``, verification, plan.json doc)."""
    with gc_paused():
        return _compile_traced(traced, hw, pass_pipeline, cwd, keep_dumps, timings)


def _compile_traced(
    traced: Traced,
    hw: Any,
    pass_pipeline: str | None,
    cwd: Path | None,
    keep_dumps: bool,
    timings: dict[str, float] | None = None,
) -> Plan:
    from opgraph.passes.pipeline import run_pipeline

    clock = getattr(timings, "clock", time.perf_counter)
    start = clock()
    spec = resolve_hw(hw, cwd)
    if timings is not None:
        timings["hw spec"] = clock() - start
    module = traced.module
    start = clock()
    attach_machine(module, spec)
    if timings is not None:
        timings["machine ops"] = clock() - start
    dumps: list[tuple[str, str]] = []
    if keep_dumps:
        dumps.append((_dump_name(0, "traced"), print_module(module)))

    def after_each(index: int, pass_name: str, mod: ModuleOp) -> None:
        if keep_dumps:
            dumps.append((_dump_name(index, pass_name), print_module(mod)))

    ctx = make_context()
    # A user's pipeline is verified (xDSL's verifier) on input and after each pass. Our
    # default pipeline runs on traced IR, which the op constructors built with inferred
    # types, and is verified once, on output, with the fast verifier (run_pipeline).
    user = pass_pipeline is not None
    run_pipeline(module, pass_pipeline, ctx, after_each, verify_each=user, verify_input=user, timings=timings)
    start = clock()
    doc = build_plan_doc(module, traced.name, spec.name)
    if timings is not None:
        timings["plan.json doc"] = clock() - start
    return Plan(traced.name, spec.name, module, doc, dumps, traced.inputs)


def _check_engine(engine: str) -> None:
    from opgraph.runtime.engines import check_engine

    check_engine(engine)


def plan_for_run(traced: Traced, engine: str, hw: Any = None, cwd: Path | None = None) -> Plan:
    """The plan a run executes: ``engine`` checked, compiled for ``hw`` (default laptop)
    without IR dumps."""
    _check_engine(engine)
    return compile_traced(traced, hw=hw if hw is not None else "laptop", cwd=cwd, keep_dumps=False)


# Plans of ``pipeline.run``/``etl(...)`` calls, like jax.jit's compile cache: keyed by the
# traced IR's text (which holds the schemas, the Arrow inputs' statistics and every source
# location), the hardware spec, the working directory and the size/mtime of every file the
# pipeline reads (annotate-statistics reads their footers at compile time). The compiler
# reads nothing else, so equal keys give equal plans.
PLAN_CACHE_SIZE = 64
_plan_cache: OrderedDict[tuple[Any, ...], PlanDoc] = OrderedDict()
_plan_cache_lock = threading.Lock()


def clear_plan_cache() -> None:
    """Forgets every cached run plan (``og.clear_plan_cache()``)."""
    with _plan_cache_lock:
        _plan_cache.clear()


def _file_signature(path: str) -> Any:
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        return None
    if not p.is_dir():
        return (st.st_size, st.st_mtime_ns)
    entries = []
    for root, _dirs, files in os.walk(p):
        for name in files:
            try:
                fst = os.stat(os.path.join(root, name))
            except OSError:
                continue
            entries.append((os.path.relpath(os.path.join(root, name), p), fst.st_size, fst.st_mtime_ns))
    return tuple(sorted(entries))


def _plan_cache_key(traced: Traced, engine: str, hw: Any) -> tuple[Any, ...]:
    from opgraph.dialects.dataframe import ReadCsvOp, ReadIpcOp, ReadParquetOp

    spec = resolve_hw(hw if hw is not None else "laptop")
    reads = tuple(
        (op.path.data, _file_signature(op.path.data))
        for op in traced.module.walk()
        if isinstance(op, (ReadParquetOp, ReadCsvOp, ReadIpcOp))
    )
    return (print_module(traced.module), spec.model_dump_json(), engine, os.getcwd(), reads)


def cached_plan_doc(traced: Traced, engine: str, hw: Any = None) -> PlanDoc:
    """``plan_for_run(...).doc``, compiled once per distinct key (see ``_plan_cache``)."""
    _check_engine(engine)  # before the key: a bad engine costs no printing
    key = _plan_cache_key(traced, engine, hw)
    with _plan_cache_lock:
        doc = _plan_cache.get(key)
        if doc is not None:
            _plan_cache.move_to_end(key)
            return doc
    doc = plan_for_run(traced, engine, hw).doc
    with _plan_cache_lock:
        _plan_cache[key] = doc
        while len(_plan_cache) > PLAN_CACHE_SIZE:
            _plan_cache.popitem(last=False)
    return doc


def run_traced(traced: Traced, engine: str = "local", ranks: int = 1, hw: Any = None, placement: str | None = None):
    """Compiles for ``hw`` (default laptop; the plan is cached, see ``cached_plan_doc``) and
    runs on ``engine`` with ``ranks`` ranks; returns one pyarrow.Table, a tuple of them
    (several outputs) or None (sinks only)."""
    from opgraph.runtime.engines import run_on_engine

    doc = cached_plan_doc(traced, engine, hw)
    outputs = run_on_engine(engine, doc, traced.inputs, ranks, placement=placement)
    if not doc.outputs:
        return None
    return outputs[0] if len(outputs) == 1 else tuple(outputs)
