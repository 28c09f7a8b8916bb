"""Compiler driver: traced module + hardware spec -> passes -> Plan (IR text + plan.json)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xdsl.dialects.builtin import ModuleOp

from opgraph.dialects.context import make_context, print_module
from opgraph.dialects.machine import attach_machine
from opgraph.errors import OpgraphError
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
        """A table: per op its pattern, island, ranks, device and source location."""
        from rich.console import Console
        from rich.table import Table as RichTable

        table = RichTable(title=f"plan for {self.name} on {self.hardware}")
        for col in ("op", "pattern", "island", "ranks", "device", "predicted time", "bytes moved", "location"):
            table.add_column(col)
        for island in self.doc.islands:
            for op in island.ops:
                table.add_row(
                    op.op,
                    PATTERNS.get(op.op, "-"),
                    island.name,
                    str(island.ranks),
                    island.device,
                    "n/a (no cost model yet)",
                    "n/a",
                    op.loc or "-",
                )
        console = Console(width=160, record=True, file=open(os.devnull, "w"))
        console.print(table)
        console.print(f"islands: {len(self.doc.islands)}; predicted makespan: n/a (no cost model yet)")
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
) -> Plan:
    with gc_paused():
        return _compile_traced(traced, hw, pass_pipeline, cwd, keep_dumps)


def _compile_traced(traced: Traced, hw: Any, pass_pipeline: str | None, cwd: Path | None, keep_dumps: bool) -> Plan:
    from opgraph.passes.pipeline import run_pipeline

    spec = resolve_hw(hw, cwd)
    module = traced.module
    attach_machine(module, spec)
    dumps: list[tuple[str, str]] = []
    if keep_dumps:
        dumps.append((_dump_name(0, "traced"), print_module(module)))

    def after_each(index: int, pass_name: str, mod: ModuleOp) -> None:
        if keep_dumps:
            dumps.append((_dump_name(index, pass_name), print_module(mod)))

    ctx = make_context()
    # our default pipeline is verified on input and output; a user's pipeline after each pass
    run_pipeline(module, pass_pipeline, ctx, after_each, verify_each=pass_pipeline is not None)
    doc = build_plan_doc(module, traced.name, spec.name)
    return Plan(traced.name, spec.name, module, doc, dumps, traced.inputs)


def run_traced(traced: Traced, engine: str = "local", ranks: int = 1, hw: Any = None):
    """Compiles for ``hw`` (default laptop) and runs on ``engine`` with ``ranks`` ranks; returns
    one pyarrow.Table, a tuple of them (several outputs) or None (sinks only)."""
    if engine not in ("local", "mpi"):
        raise OpgraphError(f"unknown engine '{engine}' (expected 'local' or 'mpi')")
    if engine == "mpi":
        try:
            from opgraph.runtime.mpi_engine import run_mpi as run
        except ImportError as e:
            raise OpgraphError(f"the mpi engine is not available: {e}") from None
    else:
        from opgraph.runtime.executor import run_local as run
    plan = compile_traced(traced, hw=hw if hw is not None else "laptop", keep_dumps=False)
    outputs = run(plan.doc, traced.inputs, ranks)
    if not plan.doc.outputs:
        return None
    return outputs[0] if len(outputs) == 1 else tuple(outputs)
