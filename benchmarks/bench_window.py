"""Rolling mean (k = 10) over 10M float64 rows (1% nulls): opgraph's window kernel vs
pandas, Polars and DuckDB in the same run.

Prints the best and median of each and the ratio to opgraph's best time; informational,
no assertions. Timed: pandas ``Series.rolling(k).mean()`` on a float64 Series (nulls as
NaN), Polars ``Series.rolling_mean(k)``, DuckDB ``avg(v) OVER (ROWS k-1 PRECEDING)`` on
a registered Arrow table (result fetched as Arrow), opgraph ``local_ops.window`` (the
local operator: Arrow in, Arrow table out) and the 2-rank local engine path
(``parallel_ops.window``: halo exchange + kernel on each rank's half).

    python benchmarks/bench_window.py [--rows 10000000] [--k 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
from opgraph.runtime import local_ops as L
from opgraph.runtime import parallel_ops as P
from opgraph.runtime.local_comm import run_ranks


def timings(fn, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n, k = args.rows, args.k
    rng = np.random.default_rng(0)
    v = rng.random(n)
    mask = rng.random(n) < 0.01
    table = pa.table({"id": pa.array(np.arange(n)), "v": pa.array(v, mask=mask)})
    schema = pa.schema([("id", pa.int64()), ("v", pa.float64()), ("r", pa.float64())])
    series = pd.Series(np.where(mask, np.nan, v))
    pseries = pl.from_arrow(table.column("v"))
    con = duckdb.connect()
    con.register("t", table)
    sql = f"SELECT avg(v) OVER (ORDER BY id ROWS BETWEEN {k - 1} PRECEDING AND CURRENT ROW) AS r FROM t"

    def duck():
        r = con.sql(sql)
        return r.to_arrow_table() if hasattr(r, "to_arrow_table") else r.arrow()

    halves = [table.slice(0, n // 2), table.slice(n // 2)]

    def two_ranks():
        return run_ranks(
            2,
            lambda c: (
                P.window(
                    c,
                    P.Dist(halves[c.rank], P.ANY),
                    "rolling_mean",
                    "v",
                    k,
                    "r",
                    schema,
                ).table
            ),
        )

    # correctness of what is timed
    ours = (
        L.window(table, "rolling_mean", "v", k, "r", schema)
        .column("r")
        .to_numpy(zero_copy_only=False)
    )
    ref = series.rolling(k).mean().to_numpy()
    assert np.allclose(ours, ref, equal_nan=True)

    runs = {
        "opgraph local_ops.window": lambda: L.window(
            table, "rolling_mean", "v", k, "r", schema
        ),
        "opgraph 2 ranks (halo)": two_ranks,
        "pandas rolling.mean": lambda: series.rolling(k).mean(),
        "polars rolling_mean": lambda: pseries.rolling_mean(k),
        "duckdb window avg": duck,
    }
    res = {name: timings(fn, args.repeat) for name, fn in runs.items()}
    base = res["opgraph local_ops.window"][0]
    print(
        f"rolling mean k={k} over {n:,} float64 rows (1% nulls), best of {args.repeat}:"
    )
    for name, (best, med) in res.items():
        print(
            f"  {name:26s} best {best:7.3f} s  median {med:7.3f} s  ratio to opgraph {best / base:6.2f}x"
        )


if __name__ == "__main__":
    main()
