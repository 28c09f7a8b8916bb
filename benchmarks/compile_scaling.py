"""Compile-time scaling: trace + compile a generated N-op pipeline through the default pass
pipeline against a hardware spec, and report seconds per phase.

    python benchmarks/compile_scaling.py            # 1,000 and 10,000 ops on summit
    python benchmarks/compile_scaling.py --ops 1000 --hw frontier --repeat 5
    python benchmarks/compile_scaling.py --ops 1000 --profile       # + seconds per phase
    python benchmarks/compile_scaling.py --ops 1000 --cprofile 30   # + top functions

``--profile`` re-runs trace and compile step by step as ``compile_traced`` does (machine ops,
input verification, each pass, output verification, plan.json) and prints the median
seconds of each step; ``--cprofile N`` prints the N functions with the most own time over
one more trace + compile.
"""

from __future__ import annotations

import argparse
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
    """A pipeline of about ``n_ops`` table ops: chains of assign / filter / project with a
    join and a groupby every 25 ops, so every op kind the passes see appears."""

    @og.pipeline
    def big(path: str):
        base = og.read_parquet(path)
        t = base
        count = 1
        while count < n_ops:
            i = count
            if i % 25 == 0:
                g = t.groupby("k").agg(s=("a", "sum"))
                t = t[["k", "a", "b"]].merge(g, on="k", how="left").drop(columns=["s"])
                count += 4
            elif i % 5 == 0:
                t = t[t["a"] > (i % 7) * 0.01]
                count += 1
            else:
                t = t.assign(**{f"c{i % 8}": t["a"] * i + t["b"]})  # bounded width, like real pipelines
                count += 1
        return t[["k", "a", "b"]]

    return big


def measure(n_ops: int, hw: str, repeat: int, path: str) -> dict[str, float]:
    pipeline = generated_pipeline(n_ops)
    traces, compiles, ops = [], [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        traced = pipeline.trace_full(path)
        t1 = time.perf_counter()
        plan = compile_traced(traced, hw=hw, keep_dumps=False)
        t2 = time.perf_counter()
        traces.append(t1 - t0)
        compiles.append(t2 - t1)
        ops = sum(len(i.ops) for i in plan.doc.islands)
    return {
        "ops": ops,
        "trace_s": statistics.median(traces),
        "compile_s": statistics.median(compiles),
        "total_s": statistics.median([a + b for a, b in zip(traces, compiles)]),
    }


def phase_times(n_ops: int, hw: str, repeat: int, path: str) -> dict[str, float]:
    """Median seconds per compile step, the steps of ``compile_traced`` run one by one."""
    from opgraph.dialects.context import make_context
    from opgraph.dialects.machine import attach_machine
    from opgraph.passes.pipeline import default_pipeline
    from opgraph.passes.verify import find_verification_error

    from opgraph.driver import resolve_hw
    from opgraph.plan import build_plan_doc
    from opgraph.tracing import gc_paused

    pipeline = generated_pipeline(n_ops)
    runs: list[dict[str, float]] = []
    for _ in range(repeat):
        times: dict[str, float] = {}

        def step(name: str, fn, *args, times=times):
            t = time.perf_counter()
            result = fn(*args)
            times[name] = time.perf_counter() - t
            return result

        traced = step("trace", pipeline.trace_full, path)
        with gc_paused():
            spec = resolve_hw(hw)
            module = traced.module
            step("machine ops", attach_machine, module, spec)
            ctx = make_context()
            step("verify input", find_verification_error, module)
            for p in default_pipeline():
                step(p.name, p.apply, ctx, module)
            step("verify output", find_verification_error, module)
            step("plan.json doc", build_plan_doc, module, traced.name, spec.name)
        runs.append(times)
    return {name: statistics.median(r[name] for r in runs) for name in runs[0]}


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
        print(f"{'ops':>8} {'trace s':>10} {'compile s':>10} {'total s':>10}  (median of {args.repeat}, hw={args.hw})")
        for n in args.ops:
            r = measure(n, args.hw, args.repeat, path)
            print(f"{r['ops']:>8} {r['trace_s']:>10.3f} {r['compile_s']:>10.3f} {r['total_s']:>10.3f}")
        for n in args.ops if args.profile else []:
            phases = phase_times(n, args.hw, args.repeat, path)
            print(f"\nsteps for {n} ops (median of {args.repeat}, seconds):")
            for name, seconds in phases.items():
                print(f"  {name:<18} {seconds:8.3f}")
            print(f"  {'total':<18} {sum(phases.values()):8.3f}")
        for n in args.ops if args.cprofile else []:
            print(f"\ncProfile of one trace + compile of {n} ops:")
            cprofile(n, args.hw, path, args.cprofile)


if __name__ == "__main__":
    main()
