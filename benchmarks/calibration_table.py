"""Predicted vs measured: the cost model's time for the runtime benchmark ops against the
local engine's measured time, on a spec written by ``opgraph calibrate`` (issue 3, last
"Done when" bullet: within ±30%).

    opgraph calibrate -o benchmarks/results/calibrated.yaml
    python benchmarks/calibration_table.py --hw benchmarks/results/calibrated.yaml
    python benchmarks/calibration_table.py --rows 1000000 --runs 3     # smaller, faster
    python benchmarks/calibration_table.py                              # calibrates first

Ops (the runtime issue's benchmarks, same data shapes as benchmarks/bench_ops.py): join
N⋈N int64 keys with a float payload each, groupby N rows / 1,000 keys sum+mean, sort N by
int64, filter+project N (4 float columns, ``a > 0.5``, keep 2). Default N = 10M.

For each op the pipeline is traced with the tables as inputs and compiled against the spec;
the **predicted** time comes from the compiled plan, in this order of preference:

1. the plan's predicted makespan (``taskgraph.makespan``, or any module/func attribute
   whose name contains ``makespan``), else the sum of the ``taskgraph.cost`` attributes
   (CONVENTIONS #3) of its ops - from the default pipeline or, when that does not annotate
   yet, a pipeline that adds the registered ``annotate-statistics``, ``classify-patterns``,
   ``choose-parallelism`` passes before ``lower-to-islands``;
2. else ``predict(module)`` of the cost model module (``opgraph.passes.cost_model``,
   ``opgraph.cost_model`` or ``opgraph.passes.choose_parallelism``) on the traced module;
3. otherwise the cost model's kernel formula (``CostModel.compute``) per op over the actual
   input sizes and documented selectivities, labelled ``formula`` in the table.

The **measured** time is the median wall time of ``--runs`` executions of the compiled plan
by the local engine (``run_local``) with the plan's rank count (tracing and compiling
excluded); the verdict (±30%) is on it. The table also shows the CPU seconds of the run
divided by its ranks and the load average while it ran: on a machine shared with other
work, wall time grows with the load while CPU seconds do not, so ``cpu/ranks`` is a
load-independent lower bound of the time the run takes on an idle machine.
"(+passes)" in the table marks predictions from a pipeline with the annotating passes added.
The table and a JSON copy (``benchmarks/results/calibration_table-<rows>.json``) are written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TOLERANCE = 0.30
ANNOTATING_PASSES = ("annotate-statistics", "classify-patterns", "choose-parallelism")

from workloads import filter_data, groupby_data, join_data, sort_data
from workloads import og_filter as cal_filter_project
from workloads import og_groupby as cal_groupby
from workloads import og_join as cal_join
from workloads import og_sort as cal_sort


def workloads(n: int) -> list[tuple[str, Any, list[pa.Table]]]:
    return [
        (f"join {_short(n)}⋈{_short(n)}", cal_join, list(join_data(n))),
        (f"groupby {_short(n)}/1k keys", cal_groupby, [groupby_data(n)]),
        (f"sort {_short(n)}", cal_sort, [sort_data(n)]),
        (f"filter+project {_short(n)}", cal_filter_project, [filter_data(n)]),
    ]


def _short(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


# ------------------------------------------------------------------------ prediction


def _cost_module():
    import importlib

    found = None
    for name in ("opgraph.passes.cost_model", "opgraph.cost_model", "opgraph.passes.choose_parallelism"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if callable(getattr(module, "predict", None)):
            return module
        found = found or module
    return found


def _float_attr(value: Any) -> float | None:
    data = getattr(value, "value", None)
    data = getattr(data, "data", data)
    try:
        return float(data)
    except (TypeError, ValueError):
        return None


def _annotated_prediction(plan) -> tuple[float | None, str]:
    """(seconds, source) from the compiled plan's annotations, or (None, why not)."""
    module = plan.module
    for op in [module, *module.walk()]:
        for name, value in op.attributes.items():
            if "makespan" in name:
                seconds = _float_attr(value)
                if seconds is not None:
                    return seconds, name
    costs = [
        c for op in module.walk() if "taskgraph.cost" in op.attributes
        if (c := _float_attr(op.attributes["taskgraph.cost"])) is not None
    ]
    if not costs:  # the lowered plan.json may carry them instead
        for island in plan.doc.islands:
            for op in island.ops:
                c = op.attributes.get("taskgraph.cost")
                if isinstance(c, int | float):
                    costs.append(float(c))
    if costs:
        return sum(costs), "sum taskgraph.cost"
    return None, "no taskgraph.cost in the plan"


KIND_OF = {
    "df.join": "join", "df.groupby_agg": "groupby", "df.sort": "sort", "df.filter": "filter",
    "df.project": "project", "df.map": "map", "df.distinct": "distinct", "df.window": "window",
    "df.aggregate": "aggregate", "df.concat": "concat", "df.head": "head", "df.union": "set_op",
    "df.intersect": "set_op", "df.difference": "set_op",
}
SELECTIVITY = {"filter": 0.5}  # the benchmark's filter keeps half (a > 0.5 on uniform [0, 1))


def _formula_prediction(plan, inputs: list[pa.Table], spec) -> float:
    """The cost model's kernel formula per op, one rank, over actual input sizes."""
    from opgraph.passes.cost_model import CostModel

    model = CostModel(spec)
    rows: dict[str, float] = {}
    width: dict[str, float] = {}
    total = 0.0
    for island in plan.doc.islands:
        for op in island.ops:
            if op.op == "df.input":
                t = inputs[int(op.attributes["index"])]
                out_rows, out_width = float(t.num_rows), t.nbytes / max(t.num_rows, 1)
            else:
                in_rows = [rows.get(v, 0.0) for v in op.operands]
                in_width = [width.get(v, 8.0) for v in op.operands]
                kind = KIND_OF.get(op.op)
                n_in = sum(in_rows)
                nbytes = sum(r * w for r, w in zip(in_rows, in_width))
                if kind is not None:
                    total += float(model.compute(kind, n_in, nbytes, 1))
                out_width = 8.0 * len(op.schema_ or []) or (in_width[0] if in_width else 8.0)
                if kind == "join":
                    out_rows = max(in_rows)
                elif kind == "groupby":
                    out_rows = min(n_in, 1000.0)
                elif kind == "aggregate":
                    out_rows = 1.0
                else:
                    out_rows = n_in * SELECTIVITY.get(kind or "", 1.0)
            for v in op.results:
                rows[v], width[v] = out_rows, out_width
    return total


def _plan_ranks(plan) -> int:
    return max([1, *(isl.ranks for isl in plan.doc.islands)])


def compile_and_predict(pipeline, inputs: list[pa.Table], spec) -> tuple[Any, float, str]:
    from opgraph.passes.pipeline import DEFAULT_PIPELINE
    from opgraph.passes.registry import pass_names

    from opgraph.driver import compile_traced

    traced = pipeline.trace_full(*inputs)
    plan = compile_traced(traced, hw=spec, keep_dumps=False)
    seconds, source = _annotated_prediction(plan)
    if seconds is not None:
        return plan, seconds, source
    names = set(pass_names())
    missing = [p for p in ANNOTATING_PASSES if p in names and p not in DEFAULT_PIPELINE]
    if missing:
        inner = DEFAULT_PIPELINE[len("builtin.module("):-1].split(",")
        at = inner.index("lower-to-islands") if "lower-to-islands" in inner else len(inner)
        text = "builtin.module(" + ",".join([*inner[:at], *missing, *inner[at:]]) + ")"
        try:
            annotated = compile_traced(pipeline.trace_full(*inputs), hw=spec, pass_pipeline=text, keep_dumps=False)
            seconds, source = _annotated_prediction(annotated)
            if seconds is not None:
                return annotated, seconds, source + " (+passes)"
        except Exception as e:  # noqa: BLE001 - an in-progress pass: fall back, say why
            print(f"note: pipeline {text} failed: {type(e).__name__}: {e}", file=sys.stderr)
    cost = _cost_module()
    predict = getattr(cost, "predict", None) if cost is not None else None
    if callable(predict):  # a predict(module) over the traced (unlowered) module
        try:
            result = predict(pipeline.trace_full(*inputs).module)
            return plan, float(getattr(result, "makespan", result)), "cost_model.predict"
        except Exception as e:  # noqa: BLE001
            print(f"note: predict(module) failed: {type(e).__name__}: {e}", file=sys.stderr)
    try:
        return plan, _formula_prediction(plan, inputs, spec), "formula"
    except ImportError:
        return plan, float("nan"), "no cost model"


# ------------------------------------------------------------------------ measuring


def measure(plan, inputs: list[pa.Table], ranks: int, runs: int) -> tuple[float, float, float]:
    """(median wall s, median CPU s of the process, load average) of ``runs`` runs."""
    import os

    from opgraph.runtime.executor import run_local

    run_local(plan.doc, inputs, ranks)  # warm-up
    walls, cpus = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        run_local(plan.doc, inputs, ranks)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return statistics.median(walls), statistics.median(cpus), load


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hw", help="calibrated spec (default: run `opgraph calibrate` first, without MPI)")
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", help="comma-separated prefixes: join,groupby,sort,filter")
    args = p.parse_args(argv)

    from opgraph.hwspec import load_spec

    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.hw:
        spec = load_spec(args.hw)
        spec_name = args.hw
    else:
        from opgraph.calibrate import calibrate

        print("calibrating this machine (opgraph calibrate, no MPI) ...", file=sys.stderr)
        spec = calibrate(mpi=False, log=lambda line: print(f"  {line}", file=sys.stderr)).spec
        path = RESULTS / "calibrated.yaml"
        path.write_text(spec.to_yaml())
        spec_name = str(path.relative_to(ROOT))
    if not spec.calibration:
        print(f"warning: {spec_name} has no calibration (run `opgraph calibrate`)", file=sys.stderr)

    rows_out = []
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    for label, pipeline, inputs in workloads(args.rows):
        if only and not any(label.startswith(o) for o in only):
            continue
        plan, predicted, source = compile_and_predict(pipeline, inputs, spec)
        ranks = _plan_ranks(plan)
        measured, cpu, load = measure(plan, inputs, ranks, args.runs)
        ratio = predicted / measured if measured > 0 else float("nan")
        ok = abs(ratio - 1.0) <= TOLERANCE
        rows_out.append({
            "op": label, "ranks": ranks, "predicted_s": predicted, "measured_s": measured,
            "ratio": ratio, "within_30pct": bool(ok), "cpu_s": cpu, "cpu_per_rank_s": cpu / ranks,
            "ratio_cpu": predicted / (cpu / ranks) if cpu > 0 else float("nan"), "load": load,
            "prediction": source,
        })
        print(
            f"  {label}: predicted {predicted:.3f} s, measured {measured:.3f} s (cpu {cpu:.3f} s, load {load:.1f})",
            file=sys.stderr,
        )
        del inputs

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"predicted vs measured, local engine, {spec_name} ({args.rows:,} rows, median of {args.runs})")
    cols = ("op", "ranks", "predicted s", "measured s", "pred/meas", "±30%", "cpu-s/ranks", "pred/cpu", "load", "prediction from")
    for col in cols:
        table.add_column(col, justify="left" if col in ("op", "prediction from") else "right")
    for r in rows_out:
        table.add_row(
            r["op"], str(r["ranks"]), f"{r['predicted_s']:.3f}", f"{r['measured_s']:.3f}",
            f"{r['ratio']:.2f}", "yes" if r["within_30pct"] else "NO", f"{r['cpu_per_rank_s']:.3f}",
            f"{r['ratio_cpu']:.2f}", f"{r['load']:.1f}", r["prediction"],
        )
    Console(width=170).print(table)
    within = sum(r["within_30pct"] for r in rows_out)
    print(f"{within}/{len(rows_out)} within ±30%")
    out = RESULTS / f"calibration_table-{args.rows}.json"
    out.write_text(json.dumps({"spec": spec_name, "rows": args.rows, "runs": args.runs, "results": rows_out}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
