"""Helpers shared by several test files (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

#: the launcher of the pip-installed MPI (the ``mpich`` wheel puts it beside python)
VENV_MPIEXEC = Path(sys.executable).parent / "mpiexec"
HAVE_MPI = VENV_MPIEXEC.exists() and importlib.util.find_spec("mpi4py") is not None

#: MPI tests skip on a machine without the MPI wheel, but never in CI (``CI`` set): there a
#: missing launcher must fail the run instead of hiding the MPI tests.
needs_mpi = pytest.mark.skipif(
    not HAVE_MPI and not os.environ.get("CI"), reason="no mpiexec next to the Python executable (pip install mpich)"
)


def write_small_parquet(directory: Path) -> str:
    """A seeded 10-row Parquet file with columns k (int64, 5 keys), a and b (float64)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = directory / "in.parquet"
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"k": rng.integers(0, 5, 10), "a": rng.random(10), "b": rng.random(10)}), path)
    return str(path)
