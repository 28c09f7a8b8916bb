from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from pyarrow import ipc

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def detected_spec(tmp_path_factory) -> Path:
    """``opgraph hw detect`` of this machine, written by the CLI."""
    from opgraph.cli import main

    path = tmp_path_factory.mktemp("hw") / "this_machine.yaml"
    assert main(["hw", "detect", "-o", str(path)]) == 0
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Small input files of every format, with nulls and strings."""
    rng = np.random.default_rng(0)
    n = 50
    events = pa.table(
        {
            "user_id": pa.array(rng.integers(0, 10, n), pa.int64()),
            "value": pa.array(rng.random(n)),
            "country": pa.array(np.array(["US", "DE", "FR"])[rng.integers(0, 3, n)]),
            "small": pa.array(rng.integers(0, 100, n), pa.int32()),
            "maybe": pa.array([None if i % 7 == 0 else float(i) for i in range(n)], pa.float64()),
            "flag": pa.array(rng.random(n) > 0.5),
        }
    )
    users = pa.table({"user_id": pa.array(np.arange(10), pa.int64()), "name": [f"u{i}" for i in range(10)]})
    pq.write_table(events, tmp_path / "events.parquet")
    pq.write_table(users, tmp_path / "users.parquet")
    pacsv.write_csv(users, tmp_path / "users.csv")
    with ipc.new_file(tmp_path / "users.arrow", users.schema) as w:
        w.write_table(users)
    (tmp_path / "parts").mkdir()
    pq.write_table(events.slice(0, 25), tmp_path / "parts" / "a.parquet")
    pq.write_table(events.slice(25), tmp_path / "parts" / "b.parquet")
    return tmp_path
