"""Strong scaling of the MPI engine: join and sort at a fixed size on 1, 2, 4, ... ranks.

    python benchmarks/bench_mpi_scaling.py                       # 10M rows, ranks 1,2,4,.. up to the cores
    python benchmarks/bench_mpi_scaling.py --ranks 1,2,4,8,16 --threads-per-rank 1 --runs 5

The workloads are bench_ops' join (10M⋈10M int64 keys, two float payloads) and sort (10M
rows by an int64 key), run through the public API (``pipeline.run(..., engine="mpi",
ranks=N)``) with the worker pool warm: the timed calls include moving inputs and outputs
through /dev/shm, not the ``mpiexec`` start. ``--threads-per-rank 1`` (default) gives every
rank one kernel thread (``OPGRAPH_KERNEL_THREADS=1``), the classic strong scaling; ``auto``
lets each rank use cores ÷ ranks threads. Prints the median seconds per rank count, the
speed-up over 1 rank and the parallel efficiency (speed-up ÷ ranks), plus the local engine
and, where installed, DuckDB/Polars on all cores as a reference.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ops import _duck_arrow, _with_env, measure_round_robin
from workloads import join_data, og_join, og_sort, sort_data


def _references(workload: str, tables) -> dict:
    """All-core single-node engines that are installed (DuckDB, Polars): a yardstick only."""
    refs = {}
    try:
        import duckdb

        con = duckdb.connect()
        for i, t in enumerate(tables):
            con.register(f"t{i}", t)
        sql = "SELECT * FROM t0 JOIN t1 USING (k)" if workload == "join" else "SELECT * FROM t0 ORDER BY k"
        refs["duckdb"] = lambda: _duck_arrow(con.sql(sql))
    except ImportError:
        pass
    try:
        import polars as pl

        frames = [pl.from_arrow(t) for t in tables]
        if workload == "join":
            refs["polars"] = lambda: frames[0].join(frames[1], on="k")
        else:
            refs["polars"] = lambda: frames[0].sort("k", maintain_order=True)
    except ImportError:
        pass
    return refs


def _scale(w: str, pipe, tables: tuple, ranks: list[int], threads: str, runs: int) -> tuple[dict, dict]:
    """Median and all times of ``pipe`` on each rank count (``threads`` kernel threads per
    rank, or cores / ranks for "auto"), then the all-core references. The rank counts are
    timed round-robin (bench_ops' ``measure_round_robin``: their pools stay up side by side,
    idle ranks use no CPU), so that a slow spell of a shared machine hits every rank count
    alike and the speed-ups compare like with like."""
    from opgraph.runtime.mpi_engine import shutdown_pools

    thread_env = {} if threads == "auto" else {"OPGRAPH_KERNEL_THREADS": threads, "OMP_NUM_THREADS": threads}
    # the ranks inherit the variables (a pool is kept per environment and rank count)
    cases = {f"mpi r{n}": _with_env(lambda n=n: pipe.run(*tables, engine="mpi", ranks=n), **thread_env) for n in ranks}
    alls = measure_round_robin(cases, runs)
    shutdown_pools()  # the idle ranks hold memory
    refs = {"og local r1 (all cores)": lambda: pipe.run(*tables, engine="local", ranks=1)}
    refs.update(_references(w, tables))
    alls.update(measure_round_robin(refs, runs))
    secs = {name: statistics.median(t) for name, t in alls.items()}
    for name, t in alls.items():
        print(f"  {w:5s} {name:24s} {secs[name]:8.3f} s  (min {min(t):.3f})", file=sys.stderr, flush=True)
    return secs, alls


def main() -> None:
    cores = os.cpu_count() or 1
    default_ranks = [r for r in (1, 2, 4, 8, 16, 32) if r <= cores]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default="join,sort", help="comma-separated: join,sort")
    ap.add_argument("--ranks", default=",".join(map(str, default_ranks)), help="comma-separated rank counts")
    ap.add_argument("--threads-per-rank", default="1", help="kernel threads per rank: a number or 'auto'")
    ap.add_argument("--out", default=None, help="JSON results path")
    args = ap.parse_args()
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    if not ranks or min(ranks) < 1:
        ap.error("--ranks: positive integers")
    threads = args.threads_per_rank.strip()
    if threads != "auto" and not threads.isdigit():
        ap.error("--threads-per-rank: a number or 'auto'")
    workloads = [w.strip() for w in args.only.split(",") if w.strip()]
    data = {"join": (og_join, lambda: join_data(args.rows)), "sort": (og_sort, lambda: (sort_data(args.rows),))}
    if any(w not in data for w in workloads):
        ap.error("--only: join and/or sort")

    results: dict = {
        "rows": args.rows,
        "runs": args.runs,
        "threads_per_rank": threads,
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {cores} cores",
        "python": platform.python_version(),
        "seconds": {},
        "all_times": {},
    }
    for w in workloads:
        pipe, make = data[w]
        secs, alls = _scale(w, pipe, make(), ranks, threads, args.runs)
        results["seconds"][w], results["all_times"][w] = secs, alls
        gc.collect()

    print(f"\nMPI strong scaling: {args.rows:,} rows, median of {args.runs} runs, "
          f"{threads} kernel thread(s) per rank, {results['machine']}")
    for w, row in results["seconds"].items():
        base = row.get("mpi r1")
        print(f"{w}:")
        for n in ranks:
            s = row[f"mpi r{n}"]
            speedup = base / s if base else float("nan")
            print(f"  {n:3d} ranks {s:8.3f} s  speed-up {speedup:5.2f}x  efficiency {speedup / n:5.0%}")
        for name, s in row.items():
            if not name.startswith("mpi r"):
                print(f"  {name:24s} {s:8.3f} s")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"bench_mpi_scaling-{args.rows}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
