"""The runtime benchmark workloads (issue #4): the data and the opgraph pipelines that
benchmarks/bench_ops.py times against pandas/Polars/DuckDB and benchmarks/calibration_table.py
compares with the cost model's predictions. Seeded, so both see the same tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

import opgraph as og


def join_data(n: int) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(1)
    left = pa.table({"k": rng.integers(0, n, n), "x": rng.random(n)})
    right = pa.table({"k": rng.permutation(n).astype(np.int64), "y": rng.random(n)})
    return left, right


def groupby_data(n: int) -> pa.Table:
    rng = np.random.default_rng(2)
    return pa.table({"g": rng.integers(0, 1000, n), "v": rng.random(n)})


def sort_data(n: int) -> pa.Table:
    rng = np.random.default_rng(3)
    return pa.table({"k": rng.integers(-(1 << 62), 1 << 62, n), "v": rng.random(n)})


def filter_data(n: int) -> pa.Table:
    rng = np.random.default_rng(4)
    return pa.table({c: rng.random(n) for c in "abcd"})


@og.pipeline
def og_join(left, right):
    return left.merge(right, on="k", how="inner")


@og.pipeline
def og_groupby(t):
    return t.groupby("g").agg(s=("v", "sum"), m=("v", "mean"))


@og.pipeline
def og_sort(t):
    return t.sort_values("k")


@og.pipeline
def og_filter(t):
    t = t[t["a"] > 0.5]
    return t[["b", "c"]]
