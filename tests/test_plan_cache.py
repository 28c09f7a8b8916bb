"""The run-plan cache (driver.cached_plan_doc): repeated runs reuse the compiled plan, and any
change the compiler could see (IR, hardware, files read) compiles again; cached plans never
carry input data."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import opgraph as og
from opgraph import driver


@pytest.fixture
def compile_counter(monkeypatch):
    calls = []
    real = driver.plan_for_run

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "plan_for_run", counting)
    og.clear_plan_cache()
    yield calls
    og.clear_plan_cache()


@og.pipeline
def positive_sum(t):
    t = t[t["x"] > 0]
    return t.groupby("k").agg(total=("x", "sum"))


@og.pipeline
def read_and_sum(path):
    t = og.read_parquet(path)
    return t.groupby("k").agg(total=("x", "sum"))


def _expected(t: pa.Table) -> dict:
    df = t.to_pandas()
    df = df[df["x"] > 0]
    return df.groupby("k")["x"].sum().to_dict()


def _as_dict(result: pa.Table, value: str = "total") -> dict:
    return dict(zip(result.column("k").to_pylist(), result.column(value).to_pylist()))


def _table(seed: int, n: int = 200) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"k": rng.integers(0, 7, n), "x": rng.normal(size=n)})


def test_second_run_reuses_the_plan_and_uses_the_new_data(compile_counter):
    a = _table(1)
    # the same schema, size and distinct counts but other values: the same plan
    b = pa.table({"k": pa.array(np.roll(a.column("k").to_numpy(), 3)), "x": pa.array(-a.column("x").to_numpy())})
    first = positive_sum(a)
    second = positive_sum(b)
    assert len(compile_counter) == 1
    assert _as_dict(first) == pytest.approx(_expected(a))
    assert _as_dict(second) == pytest.approx(_expected(b))
    assert _as_dict(first) != _as_dict(second)


def test_hardware_and_engine_are_part_of_the_key_but_not_ranks(compile_counter):
    a = _table(3)
    positive_sum(a)
    positive_sum(a)
    assert len(compile_counter) == 1
    positive_sum.run(a, hw="summit")
    assert len(compile_counter) == 2
    positive_sum.run(a, ranks=2)  # ranks are chosen at run time: same plan
    assert len(compile_counter) == 2
    with pytest.raises(og.OpgraphError, match="unknown engine"):
        positive_sum.run(a, engine="spark")


def test_rewritten_input_file_compiles_again(tmp_path, compile_counter):
    path = tmp_path / "t.parquet"
    small = _table(4, n=50)
    pq.write_table(small, path)
    assert _as_dict(read_and_sum(str(path))) == pytest.approx(_positive_free(small))
    read_and_sum(str(path))
    assert len(compile_counter) == 1
    big = _table(5, n=5000)
    pq.write_table(big, path)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000))
    assert _as_dict(read_and_sum(str(path))) == pytest.approx(_positive_free(big))
    assert len(compile_counter) == 2


def _positive_free(t: pa.Table) -> dict:
    return t.to_pandas().groupby("k")["x"].sum().to_dict()


def test_cache_is_bounded(compile_counter, monkeypatch):
    monkeypatch.setattr(driver, "PLAN_CACHE_SIZE", 2)
    tables = [_table(10 + i, n=20 + i) for i in range(4)]  # different row counts: four plans
    for t in tables:
        positive_sum(t)
    assert len(driver._plan_cache) == 2
    positive_sum(tables[0])  # evicted: compiled again
    assert len(compile_counter) == 5
