"""Fused expression kernels (runtime/kernels/exprgen.py + exprjit.py) against Arrow compute,
Polars and DuckDB on filter+project.

    python benchmarks/bench_expr.py               # 10M rows, 5 runs
    python benchmarks/bench_expr.py --rows 1000000 --runs 3

Data: ``a`` float64 in [0, 1) and ``b`` int64 in [0, 200) (10 % nulls in each with
``--nulls``), plus a float64 payload ``c``. Work: keep the rows where
``(a > 0.5) & (b < 100)`` and compute ``a * 2 + b`` on them (1) as opgraph expression
regions evaluated by ``expr_eval`` with the compiled kernel ("og jit") and with Arrow compute
("og arrow"), (2) as the whole opgraph pipeline on the local engine (1 rank) with and without
the JIT, (3) in Polars, DuckDB and hand-written pyarrow. Prints median seconds and the ratio
to the best of Polars/DuckDB. The first (compiling) call is excluded and reported apart.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from opgraph.runtime import expr_eval as E
from opgraph.runtime.executor import run_local
from opgraph.runtime.kernels import exprjit

import opgraph as og


def data(n: int, nulls: bool) -> pa.Table:
    rng = np.random.default_rng(7)
    ma = rng.random(n) < 0.1 if nulls else None
    mb = rng.random(n) < 0.1 if nulls else None
    return pa.table({
        "a": pa.array(rng.random(n), pa.float64(), mask=ma),
        "b": pa.array(rng.integers(0, 200, n), pa.int64(), mask=mb),
        "c": rng.random(n),
    })


@og.pipeline
def filter_project(t):
    t = t[(t["a"] > 0.5) & (t["b"] < 100)]
    t = t.assign(d=t["a"] * 2 + t["b"])
    return t[["d", "c"]]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timeit(fn, runs: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of the process, all threads): on a shared,
    loaded machine the CPU figure is the steadier one."""
    walls, cpus = [], []
    for _ in range(runs):
        c0, t0 = _cpu(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--nulls", action="store_true", help="10%% nulls in a and b")
    args = ap.parse_args(argv)
    n = args.rows
    t = data(n, args.nulls)
    _, why = exprjit.compiler()
    print(f"filter+project {n:,} rows, nulls={args.nulls}, compiler: {why}, cores: {os.cpu_count()}")

    plan = filter_project.compile(t)
    regions = [op.regions[0] for isl in plan.doc.islands for op in isl.ops if op.regions]
    pred, proj = regions[0], regions[1]
    filtered = t.filter(E.eval_region_arrow(pred, t)[0])

    # first calls (compile or load from the cache)
    t0 = time.perf_counter()
    E.eval_region(pred, t)
    E.eval_region(proj, filtered)
    first = time.perf_counter() - t0
    for r in (pred, proj):
        print("  ", E.jit_decision(r, n)[1])

    def og_jit() -> None:
        (mask,) = E.eval_region(pred, t)
        f = t.filter(mask)
        E.eval_region(proj, f)

    def og_arrow() -> None:
        (mask,) = E.eval_region_arrow(pred, t)
        f = t.filter(mask)
        E.eval_region_arrow(proj, f)

    def pyarrow_hand() -> None:
        f = t.filter(pc.and_kleene(pc.greater(t["a"], 0.5), pc.less(t["b"], 100)))
        pc.add(pc.multiply(f["a"], 2.0), pc.cast(f["b"], pa.float64()))

    cases: dict[str, object] = {
        "expr only: og jit": lambda: E.eval_region(pred, t) and E.eval_region(proj, filtered),
        "expr only: og arrow": lambda: E.eval_region_arrow(pred, t) and E.eval_region_arrow(proj, filtered),
        "filter+project: og jit (expr_eval)": og_jit,
        "filter+project: og arrow (expr_eval)": og_arrow,
        "filter+project: pyarrow by hand": pyarrow_hand,
    }

    def engine(jit: bool):
        def go() -> None:
            old = os.environ.get("OPGRAPH_EXPR_JIT")
            os.environ["OPGRAPH_EXPR_JIT"] = "1" if jit else "0"
            try:
                run_local(plan.doc, plan.inputs, 1)
            finally:
                if old is None:
                    del os.environ["OPGRAPH_EXPR_JIT"]
                else:
                    os.environ["OPGRAPH_EXPR_JIT"] = old
        return go

    cases["filter+project: og local engine, jit"] = engine(True)
    cases["filter+project: og local engine, arrow"] = engine(False)
    try:
        import polars as pl

        tl = pl.from_arrow(t)
        cases["filter+project: polars"] = lambda: tl.filter((pl.col("a") > 0.5) & (pl.col("b") < 100)).select(
            d=pl.col("a") * 2 + pl.col("b"), c=pl.col("c"))
    except ImportError:  # pragma: no cover
        pass
    try:
        import duckdb

        con = duckdb.connect()
        con.register("t", t)
        def duck() -> pa.Table:
            res = con.sql("SELECT a * 2 + b AS d, c FROM t WHERE a > 0.5 AND b < 100")
            return res.to_arrow_table() if hasattr(res, "to_arrow_table") else res.arrow()

        cases["filter+project: duckdb"] = duck
    except ImportError:  # pragma: no cover
        pass

    results = {name: timeit(fn, args.runs) for name, fn in cases.items()}
    refs = [v for k, v in results.items() if k.endswith(("polars", "duckdb"))]
    best_wall = min(w for w, _ in refs) if refs else None
    best_cpu = min(c for _, c in refs) if refs else None
    print(f"load average {os.getloadavg()[0]:.1f}; ratios are to the best of Polars/DuckDB in this run")
    print(f"{'case':44s} {'wall s':>8s} {'ratio':>6s} {'cpu s':>8s} {'ratio':>6s}")
    for name, (wall, cpu) in results.items():
        rw = f"{wall / best_wall:.2f}" if best_wall else "-"
        rc = f"{cpu / best_cpu:.2f}" if best_cpu else "-"
        print(f"{name:44s} {wall:8.4f} {rw:>6s} {cpu:8.4f} {rc:>6s}")
    (ej, cj), (ea, ca) = results["expr only: og jit"], results["expr only: og arrow"]
    print(f"expression regions: jit {ea / ej:.2f}x faster than Arrow compute (cpu {ca / cj:.2f}x); "
          f"first call (compile or cache load): {first:.2f} s; stats {exprjit.STATS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
