"""opgraph's local and MPI engines against pandas, Polars, DuckDB and plain pyarrow.

One command runs everything and prints a table (median seconds of N runs, and the ratio of
each time to the best of DuckDB/Polars in the same run):

    python benchmarks/bench_ops.py            # 10M rows, 5 runs (about 10 minutes on 2 cores)
    python benchmarks/bench_ops.py --quick    # 1M rows, 3 runs
    python benchmarks/bench_ops.py --only join,sort --runs 3 --no-mpi
    python benchmarks/bench_ops.py --only join,sort --ray   # + the Ray engine, 1 and 2 ranks

Workloads (DESIGN §9): join 10M⋈10M int64 keys with two float payloads (left: k, x; right:
k, y; right keys unique, so ~10M result rows), groupby 10M rows / 1,000 keys sum+mean, sort
10M rows by an int64 key (with a float payload), filter+project 10M (4 float columns,
``a > 0.5``, keep 2 columns) and ``examples/etl.py`` end to end at 10M rows (Parquet in,
Parquet out; the others do the same steps on the same files). opgraph runs through the
public API (``pipeline.run(..., engine="local"|"mpi", ranks=N)``: trace + compile + run).
MPI engine (join and sort): the ranks of its worker pool start in the warm-up call, so the
timed calls include moving inputs and outputs through /dev/shm but not the spawn
(``OPGRAPH_MPI_POOL=0`` times one ``mpiexec`` job per call). ``--mpi-threads-per-rank``
(default ``auto,1``) picks the kernel-thread policies measured: ``auto`` = the default
(cores ÷ ranks per rank: on 2 cores 1 rank uses 2 threads, 2 ranks 1 each, so equal total
cores) and ``n`` = ``OPGRAPH_KERNEL_THREADS=n`` and ``OMP_NUM_THREADS=n`` in every rank
(``1``: one core per rank, the classic strong scaling; engines ``og mpi r1 t1``/``r2 t1``).
Also: hash-partition 10M rows x 3 cols into 8 parts vs pyarrow ``sort_indices``+``take``,
and the peak RSS of the opgraph 10M join, measured in a child process (``ru_maxrss``).

Results also go to ``benchmarks/results/bench_ops-<rows>.json`` (for the calibration table:
predicted vs measured).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

ENGINES = ["pandas", "polars", "duckdb", "pyarrow", "og local r1", "og local r2", "og mpi r1", "og mpi r2"]
#: MPI kernel-thread policies (--mpi-threads-per-rank): "auto" and/or a number per rank
MPI_THREADS = ["auto", "1"]


from workloads import (
    filter_data,
    groupby_data,
    join_data,
    og_filter,
    og_groupby,
    og_join,
    og_sort,
    sort_data,
)


def _og(pipe, *tables, engine="local", ranks=1, **kw):
    return lambda: pipe.run(*tables, engine=engine, ranks=ranks, **kw)


def _with_env(fn, **env):
    """``fn`` with ``env`` set in this process while it runs (the MPI ranks inherit it)."""

    def call():
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return fn()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    return call


def _mpi_cases(pipe, *tables) -> dict:
    """``og mpi r1``/``r2`` per thread policy of MPI_THREADS (``auto``: no suffix)."""
    c = {}
    for threads in MPI_THREADS:
        for ranks in (1, 2):
            fn = _og(pipe, *tables, engine="mpi", ranks=ranks)
            if threads == "auto":
                c[f"og mpi r{ranks}"] = fn
            else:
                c[f"og mpi r{ranks} t{threads}"] = _with_env(fn, OPGRAPH_KERNEL_THREADS=threads, OMP_NUM_THREADS=threads)
    return c


#: --ray: also the Ray engine (join and sort; its local cluster starts in the warm-up call)
RAY = False


def _ray_cases(pipe, *tables) -> dict:
    return {f"og ray r{ranks}": _og(pipe, *tables, engine="ray", ranks=ranks) for ranks in (1, 2)} if RAY else {}


def _duck():
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads TO {os.cpu_count()}")
    return con


def _duck_arrow(rel):
    for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):
        if hasattr(rel, name):
            return getattr(rel, name)()
    raise AttributeError("duckdb result has no Arrow fetch")


def cases_join(n: int, mpi: bool) -> dict:
    import pandas as pd
    import polars as pl

    left, right = join_data(n)
    lp, rp = left.to_pandas(), right.to_pandas()
    ll, rl = pl.from_arrow(left), pl.from_arrow(right)
    con = _duck()
    con.register("l", left)
    con.register("r", right)
    c = {
        "pandas": lambda: pd.merge(lp, rp, on="k", how="inner"),
        "polars": lambda: ll.join(rl, on="k", how="inner"),
        "duckdb": lambda: _duck_arrow(con.sql("SELECT l.k, l.x, r.y FROM l JOIN r ON l.k = r.k")),
        "pyarrow": lambda: left.join(right, keys="k", join_type="inner"),
        "og local r1": _og(og_join, left, right),
        "og local r2": _og(og_join, left, right, ranks=2),
    }
    if mpi:
        c.update(_mpi_cases(og_join, left, right))
    c.update(_ray_cases(og_join, left, right))
    return c


def cases_groupby(n: int, mpi: bool) -> dict:
    import polars as pl

    t = groupby_data(n)
    tp, tl = t.to_pandas(), pl.from_arrow(t)
    con = _duck()
    con.register("t", t)
    return {
        "pandas": lambda: tp.groupby("g").agg(s=("v", "sum"), m=("v", "mean")),
        "polars": lambda: tl.group_by("g").agg(pl.col("v").sum().alias("s"), pl.col("v").mean().alias("m")),
        "duckdb": lambda: _duck_arrow(con.sql("SELECT g, sum(v) s, avg(v) m FROM t GROUP BY g")),
        "pyarrow": lambda: t.group_by("g").aggregate([("v", "sum"), ("v", "mean")]),
        "og local r1": _og(og_groupby, t),
        "og local r2": _og(og_groupby, t, ranks=2),
    }


def cases_sort(n: int, mpi: bool) -> dict:
    import polars as pl

    t = sort_data(n)
    tp, tl = t.to_pandas(), pl.from_arrow(t)
    con = _duck()
    con.register("t", t)
    c = {
        "pandas": lambda: tp.sort_values("k", kind="stable"),
        "polars": lambda: tl.sort("k", maintain_order=True),
        "duckdb": lambda: _duck_arrow(con.sql("SELECT * FROM t ORDER BY k")),
        "pyarrow": lambda: t.take(pc.sort_indices(t, [("k", "ascending")])),
        "og local r1": _og(og_sort, t),
        "og local r2": _og(og_sort, t, ranks=2),
    }
    if mpi:
        c.update(_mpi_cases(og_sort, t))
    c.update(_ray_cases(og_sort, t))
    return c


def cases_filter(n: int, mpi: bool) -> dict:
    import polars as pl

    t = filter_data(n)
    tp, tl = t.to_pandas(), pl.from_arrow(t)
    con = _duck()
    con.register("t", t)
    return {
        "pandas": lambda: tp.loc[tp["a"] > 0.5, ["b", "c"]],
        "polars": lambda: tl.filter(pl.col("a") > 0.5).select("b", "c"),
        "duckdb": lambda: _duck_arrow(con.sql("SELECT b, c FROM t WHERE a > 0.5")),
        "pyarrow": lambda: t.filter(pc.greater(t["a"], 0.5)).select(["b", "c"]),
        "og local r1": _og(og_filter, t),
        "og local r2": _og(og_filter, t, ranks=2),
    }


def cases_etl(n: int, mpi: bool) -> dict:
    import pandas as pd
    import polars as pl
    import pyarrow.parquet as pq

    os.environ["OPGRAPH_EXAMPLE_ROWS"] = str(n)
    sys.path.insert(0, str(ROOT / "examples"))
    import etl as etl_mod  # generates the Parquet inputs on first use

    events, users = etl_mod.EVENTS, etl_mod.USERS
    out = tempfile.mkdtemp(prefix="bench_etl_")

    def pandas_etl():
        ev = pd.read_parquet(events)
        us = pd.read_parquet(users)
        ev = ev[(ev["value"] > 0.5) & ev["country"].isin(["US", "DE"])]
        ev = ev.assign(score=ev["value"] * 2 + 1)
        j = ev.merge(us, on="user_id", how="inner")
        g = j.groupby("country", as_index=False).agg(total=("score", "sum"), n=("score", "count"), mean_age=("age", "mean"))
        g.to_parquet(f"{out}/pandas.parquet")
        return g.sort_values("total", ascending=False)

    def polars_etl():
        ev = pl.scan_parquet(events)
        us = pl.scan_parquet(users)
        ev = ev.filter((pl.col("value") > 0.5) & pl.col("country").is_in(["US", "DE"]))
        ev = ev.with_columns(score=pl.col("value") * 2 + 1)
        g = (
            ev.join(us, on="user_id", how="inner")
            .group_by("country")
            .agg(total=pl.col("score").sum(), n=pl.col("score").count(), mean_age=pl.col("age").mean())
            .collect()
        )
        g.write_parquet(f"{out}/polars.parquet")
        return g.sort("total", descending=True)

    con = _duck()

    def duckdb_etl():
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE g AS
            SELECT country, sum(value * 2 + 1) total, count(value * 2 + 1) n, avg(age) mean_age
            FROM read_parquet('{events}') e JOIN read_parquet('{users}') u USING (user_id)
            WHERE value > 0.5 AND country IN ('US', 'DE') GROUP BY country"""
        )
        con.execute(f"COPY g TO '{out}/duckdb.parquet' (FORMAT parquet)")
        return _duck_arrow(con.sql("SELECT * FROM g ORDER BY total DESC"))

    def pyarrow_etl():
        ev = pq.read_table(events)
        us = pq.read_table(users)
        ev = ev.filter(pc.and_(pc.greater(ev["value"], 0.5), pc.is_in(ev["country"], pa.array(["US", "DE"]))))
        ev = ev.append_column("score", pc.add(pc.multiply(ev["value"], 2), 1))
        j = ev.join(us, keys="user_id", join_type="inner")
        g = j.group_by("country").aggregate([("score", "sum"), ("score", "count"), ("age", "mean")])
        pq.write_table(g, f"{out}/pyarrow.parquet")
        return g.sort_by([("score_sum", "descending")])

    etl = etl_mod.etl
    c = {
        "pandas": pandas_etl,
        "polars": polars_etl,
        "duckdb": duckdb_etl,
        "pyarrow": pyarrow_etl,
        "og local r1": lambda: etl.run(events, users, out=f"{out}/og1", engine="local", ranks=1),
        "og local r2": lambda: etl.run(events, users, out=f"{out}/og2", engine="local", ranks=2),
    }
    if mpi:
        c["og mpi r2"] = lambda: etl.run(events, users, out=f"{out}/ogm2", engine="mpi", ranks=2)
    return c


# ------------------------------------------------------------------------ partition


def cases_partition(n: int, mpi: bool) -> dict:
    from opgraph.runtime.partition import hash_partition

    rng = np.random.default_rng(5)
    t = pa.table({"k": rng.integers(0, 1 << 40, n), "v": rng.random(n), "w": rng.integers(0, 100, n).astype(np.int32)})
    return {
        "pyarrow": lambda: t.take(pc.sort_indices(t, [("k", "ascending")])),
        "og local r1": lambda: hash_partition(t, ["k"], 8),
    }


CASES = {
    "join": cases_join,
    "groupby": cases_groupby,
    "sort": cases_sort,
    "filter+project": cases_filter,
    "etl": cases_etl,
    "hash-partition x8": cases_partition,
}


def measure_round_robin(cases: dict, runs: int) -> dict[str, list[float]]:
    """Times every engine ``runs`` times, interleaved (run 1 of every engine, then run 2,
    ...), after one warm-up call each (imports, compile caches, page faults of the inputs):
    on a shared machine a burst of load then hits all engines alike."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {e: [] for e in cases}
    for _ in range(runs):
        for engine, fn in cases.items():
            gc.collect()
            t0 = time.perf_counter()
            r = fn()
            times[engine].append(time.perf_counter() - t0)
            del r
    return times


_PEAK = (
    "import resource\n"
    "try:\n"
    "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
    "except OSError:\n"
    "    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "print(hwm)\n"
)


def join_peak_rss(n: int) -> float | None:
    """Peak RSS (bytes) of a child process that builds the join inputs and runs the opgraph
    join once (local engine, 1 rank): the child's own high-water mark, ``VmHWM`` of
    /proc/self/status (= ``ru_maxrss`` of a freshly started process). Not the parent's
    RUSAGE_CHILDREN (the maximum over every child it waited for, MPI workers included),
    and not the child's ru_maxrss on Linux, which keeps the parent's RSS at fork across
    exec."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import bench_ops as b; "
        f"l, r = b.join_data({n}); b.og_join.run(l, r, engine='local', ranks=1)\n" + _PEAK
    )
    p = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stderr, file=sys.stderr)
        return None
    return float(p.stdout.split()[-1]) * 1024.0  # KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1M rows, 3 runs")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--only", default="", help="comma-separated workloads: " + ",".join(CASES))
    ap.add_argument("--no-mpi", action="store_true")
    ap.add_argument(
        "--mpi-threads-per-rank",
        default="auto,1",
        help="MPI kernel threads per rank, comma-separated policies: auto (cores / ranks) and/or a number",
    )
    ap.add_argument("--ray", action="store_true", help="also the Ray engine with 1 and 2 ranks (join, sort)")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--out", default=None, help="JSON results path")
    args = ap.parse_args()
    rows = args.rows or (1_000_000 if args.quick else 10_000_000)
    runs = args.runs or (3 if args.quick else 5)
    only = [w.strip() for w in args.only.split(",") if w.strip()] or list(CASES)
    MPI_THREADS[:] = [t.strip() for t in args.mpi_threads_per_rank.split(",") if t.strip()]
    if any(t != "auto" and not t.isdigit() for t in MPI_THREADS):
        ap.error("--mpi-threads-per-rank: 'auto' or numbers")
    for t in MPI_THREADS:
        if t != "auto" and f"og mpi r1 t{t}" not in ENGINES:
            ENGINES.extend([f"og mpi r1 t{t}", f"og mpi r2 t{t}"])
    global RAY
    RAY = args.ray
    if RAY:
        ENGINES.extend(["og ray r1", "og ray r2"])
    results: dict = {
        "rows": rows,
        "runs": runs,
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "mpi_threads_per_rank": MPI_THREADS,
        "mpi_pool": os.environ.get("OPGRAPH_MPI_POOL", "1") not in ("0", "false", "no", "off"),
        "seconds": {},
        "all_times": {},
    }
    for w in only:
        cases = CASES[w](rows, not args.no_mpi)
        results["seconds"][w] = {}
        results["all_times"][w] = {}
        for engine, t in measure_round_robin(cases, runs).items():
            med = statistics.median(t)
            results["seconds"][w][engine] = med
            results["all_times"][w][engine] = t
            print(f"  {w:18s} {engine:12s} {med:8.3f} s  (min {min(t):.3f})", file=sys.stderr, flush=True)
        del cases
        gc.collect()
    if not args.no_rss and "join" in only:
        rss = join_peak_rss(rows)
        results["join_peak_rss_bytes"] = rss
    print_table(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(args.out) if args.out else RESULTS / f"bench_ops-{rows}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"results: {path}")


def print_table(results: dict) -> None:
    secs = results["seconds"]
    print(f"\nopgraph benchmarks: {results['rows']:,} rows, median of {results['runs']} runs, {results['machine']}")
    print("seconds (ratio = time / best of DuckDB, Polars in this run; hash-partition: vs pyarrow sort+take)")
    header = f"{'workload':18s}" + "".join(f"{e:>16s}" for e in ENGINES)
    print(header)
    for w, row in secs.items():
        if w.startswith("hash-partition"):
            base = row.get("pyarrow")
        else:
            base = min([row[e] for e in ("duckdb", "polars") if e in row] or [float("nan")])
        cells = []
        for e in ENGINES:
            if e in row:
                cells.append(f"{row[e]:8.3f} ({row[e] / base:4.2f}x)")
            else:
                cells.append("-")
        print(f"{w:18s}" + "".join(f"{c:>16s}" for c in cells))
    hp = secs.get("hash-partition x8", {})
    if "pyarrow" in hp and "og local r1" in hp:
        print(f"hash-partition 3 cols into 8 parts: {hp['pyarrow'] / hp['og local r1']:.1f}x faster than pyarrow sort_indices+take")
    if "etl" in secs and "pandas" in secs["etl"]:
        e = secs["etl"]
        print(f"etl: opgraph local r1 is {e['pandas'] / e['og local r1']:.2f}x faster than pandas")
    for w in ("join", "sort"):
        row = secs.get(w, {})
        if "og mpi r1" in row and "og mpi r2" in row:
            print(f"{w}: MPI speed-up 2 ranks vs 1: {row['og mpi r1'] / row['og mpi r2']:.2f}x "
                  f"(threads per rank: cores / ranks); "
                  f"local engine: {row['og local r1'] / row['og local r2']:.2f}x")
        if "og ray r1" in row and "og ray r2" in row:
            print(f"{w}: Ray speed-up 2 ranks vs 1: {row['og ray r1'] / row['og ray r2']:.2f}x")
        for e in row:
            if e.startswith("og mpi r1 t") and e.replace("r1", "r2") in row:
                t = e.rsplit("t", 1)[1]
                print(f"{w}: MPI speed-up 2 ranks vs 1 with {t} kernel thread(s) per rank: "
                      f"{row[e] / row[e.replace('r1', 'r2')]:.2f}x")
    if results.get("join_peak_rss_bytes"):
        print(f"peak RSS of the opgraph {results['rows']:,}-row join (child process): "
              f"{results['join_peak_rss_bytes'] / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
