"""hash_partition (C++ hash + counting-sort scatter) vs pyarrow sort_indices + take.

Prints the best and median time of each and the ratio of the best times; informational,
no assertions. On a shared/busy machine trust the best-of-N numbers.

    python benchmarks/bench_partition.py [--rows 10000000] [--parts 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from opgraph.runtime.partition import hash_partition


def make_table(rows: int, strings: bool) -> pa.Table:
    rng = np.random.default_rng(0)
    cols = {
        "k": pa.array(rng.integers(0, 1 << 40, rows)),
        "v": pa.array(rng.random(rows)),
    }
    if strings:
        cols["s"] = pc.cast(pa.array(rng.integers(0, 1_000_000, rows)), pa.string())
    else:
        cols["w"] = pa.array(rng.integers(0, 100, rows).astype(np.int32))
    return pa.table(cols)


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
    ap.add_argument("--parts", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for strings, label in ((False, "k:int64 v:float64 w:int32"), (True, "k:int64 v:float64 s:string")):
        table = make_table(args.rows, strings)
        part_best, part_med = timings(lambda t=table: hash_partition(t, ["k"], args.parts), args.repeat)
        sort_best, sort_med = timings(
            lambda t=table: t.take(pc.sort_indices(t, [("k", "ascending")])), args.repeat
        )
        print(
            f"{args.rows:,} rows x 3 cols ({label}), key k, {args.parts} parts, {args.repeat} runs:\n"
            f"  hash_partition        best {part_best:7.3f} s   median {part_med:7.3f} s\n"
            f"  sort_indices + take   best {sort_best:7.3f} s   median {sort_med:7.3f} s\n"
            f"  ratio (best times)    sort_indices+take / hash_partition = {sort_best / part_best:.1f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
