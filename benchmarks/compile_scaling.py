"""Compile-time scaling: trace + compile a generated N-op pipeline through the default pass
pipeline against a hardware spec, and report seconds per phase.

    python benchmarks/compile_scaling.py            # 1,000 and 10,000 ops on summit
    python benchmarks/compile_scaling.py --ops 1000 --hw frontier --repeat 5
    python benchmarks/compile_scaling.py --ops 1000 --profile       # + seconds per phase
    python benchmarks/compile_scaling.py --ops 1000 --cprofile 30   # + top functions

The generated pipeline is all live (every computed column reaches the returned table or a
filter), so DCE and projection pushdown cannot shrink it. ``--profile`` prints the median
CPU seconds of each step: trace, machine ops, each pass of the default pipeline
(``NN-<pass>``), output verification, the plan.json document, and printing plan.mlir /
plan.json (not part of compile: the CLI does it when writing files); ``--cprofile N`` prints the N functions
with the most own time over one more trace + compile.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import opgraph as og
from opgraph.driver import compile_traced


def make_input(directory: Path) -> str:
    path = directory / "wide.parquet"
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"k": rng.integers(0, 100, 10), "a": rng.random(10), "b": rng.random(10)}), path)
    return str(path)


def generated_pipeline(n_ops: int):
    """A pipeline of about ``n_ops`` table ops, all of them live: a chain where each
    ``assign`` computes a column from the one the previous step computed, every fifth op is a
    filter on the latest column, and every 25 ops a groupby whose sums are joined back and
    feed the next column. Every computed column reaches the returned table (or a filter
    mask), so no pass can remove any op as dead code."""
    width = 8  # bounded width, like real pipelines

    @og.pipeline
    def big(path: str):
        t = og.read_parquet(path)
        t = t.assign(**{f"c{j}": t["a"] * (j + 1) for j in range(width)})
        count = 2
        prev = f"c{width - 1}"
        while count < n_ops:
            i = count
            cur = f"c{i % width}"
            if i % 25 == 0:
                g = t.groupby("k").agg(s=(prev, "sum"))
                t = t.merge(g, on="k", how="left")
                t = t.assign(**{cur: t["s"] * 0.5 + t[prev]}).drop(columns=["s"])
                count += 4
            elif i % 5 == 0:
                t = t[t[prev] > (i % 7) * 0.01]
                count += 1
                continue
            else:
                t = t.assign(**{cur: t[prev] * (i % 7 + 1) + t["b"]})
                count += 1
            prev = cur
        return t

    return big


class CpuTimings(dict):
    """Step timings taken with the process's CPU clock (``compile_traced`` and
    ``run_pipeline`` use a timings dict's ``clock``): other processes sharing the two
    cores stretch wall-clock times, hardly this."""

    clock = staticmethod(time.process_time)


def measure(n_ops: int, hw: str, repeat: int, path: str) -> dict[str, float]:
    """Median seconds over ``repeat`` runs: trace, compile and each of its steps, writing
    the results' text (plan.mlir, plan.json); wall clock for the totals, CPU time
    (``... CPU`` and every step) as well."""
    from opgraph.dialects.context import print_module

    from opgraph.plan import plan_json_text

    pipeline = generated_pipeline(n_ops)
    # warm-up (not counted): one-time imports and pass-registry discovery (about 1 s)
    compile_traced(generated_pipeline(10).trace_full(path), hw=hw, keep_dumps=False)
    runs: list[dict[str, float]] = []
    for _ in range(repeat):
        gc.collect()  # each run starts without the previous run's garbage
        steps = CpuTimings()
        c0, t0 = time.process_time(), time.perf_counter()
        traced = pipeline.trace_full(path)
        c1, t1 = time.process_time(), time.perf_counter()
        counts = {"IR ops": sum(1 for _ in traced.module.walk()), "table ops": _table_ops(traced.module)}
        c1b, t1b = time.process_time(), time.perf_counter()
        plan = compile_traced(traced, hw=hw, keep_dumps=False, timings=steps)
        c2, t2 = time.process_time(), time.perf_counter()
        print_module(plan.module)
        c3 = time.process_time()
        plan_json_text(plan.doc)
        c4 = time.process_time()
        runs.append(
            {
                "trace": t1 - t0,
                "compile": t2 - t1b,
                "trace + compile": (t1 - t0) + (t2 - t1b),
                "trace CPU": c1 - c0,
                **steps,
                "compile CPU": c2 - c1b,
                "trace + compile CPU": (c1 - c0) + (c2 - c1b),
                "print plan.mlir CPU": c3 - c2,
                "plan.json text CPU": c4 - c3,
                **counts,
                "islands": len(plan.doc.islands),
            }
        )
    return {name: statistics.median(r[name] for r in runs) for name in runs[0]}


def _table_ops(module) -> int:
    """Ops of the traced function body: the pipeline's table ops (and its return)."""
    from xdsl.dialects import func

    return sum(len(list(op.body.block.ops)) for op in module.body.block.ops if isinstance(op, func.FuncOp))


def cprofile(n_ops: int, hw: str, path: str, top: int) -> None:
    import cProfile
    import pstats

    pipeline = generated_pipeline(n_ops)
    profiler = cProfile.Profile()
    profiler.enable()
    compile_traced(pipeline.trace_full(path), hw=hw, keep_dumps=False)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--hw", default="summit")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also print the seconds of each compile step")
    parser.add_argument("--cprofile", type=int, metavar="N", default=0, help="also print the top N functions (cProfile)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_input(Path(tmp))
        print(
            f"{'table ops':>9} {'IR ops':>7} {'islands':>7} {'trace s':>8} {'compile s':>9} {'total s':>8}"
            f" {'CPU s':>6}  (median of {args.repeat}, hw={args.hw}; total = trace + compile, wall clock;"
            " CPU s = the same in process CPU time)"
        )
        results = {}
        for n in args.ops:
            r = results[n] = measure(n, args.hw, args.repeat, path)
            print(
                f"{int(r['table ops']):>9} {int(r['IR ops']):>7} {int(r['islands']):>7} {r['trace']:>8.3f}"
                f" {r['compile']:>9.3f} {r['trace + compile']:>8.3f} {r['trace + compile CPU']:>6.3f}"
            )
        for n in args.ops if args.profile else []:
            print(f"\nsteps for {n} ops (median of {args.repeat}, CPU seconds):")
            for name, seconds in results[n].items():
                if name in ("IR ops", "table ops", "islands", "trace", "compile", "trace + compile"):
                    continue
                print(f"  {name.removesuffix(' CPU'):<24} {seconds:8.3f}")
        for n in args.ops if args.cprofile else []:
            print(f"\ncProfile of one trace + compile of {n} ops:")
            cprofile(n, args.hw, path, args.cprofile)


if __name__ == "__main__":
    main()
