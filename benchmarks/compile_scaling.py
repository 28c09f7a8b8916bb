"""Compile-time scaling: trace + compile a generated N-op pipeline through the default pass
pipeline against a hardware spec, and report seconds per phase.

    python benchmarks/compile_scaling.py            # 1,000 and 10,000 ops on summit
    python benchmarks/compile_scaling.py --ops 1000 --hw frontier --repeat 5
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--hw", default="summit")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_input(Path(tmp))
        print(f"{'ops':>8} {'trace s':>10} {'compile s':>10} {'total s':>10}  (median of {args.repeat}, hw={args.hw})")
        for n in args.ops:
            r = measure(n, args.hw, args.repeat, path)
            print(f"{r['ops']:>8} {r['trace_s']:>10.3f} {r['compile_s']:>10.3f} {r['total_s']:>10.3f}")


if __name__ == "__main__":
    main()
