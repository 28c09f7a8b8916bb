"""The engines a plan runs on, by name (DESIGN §1): ``local`` (threads of this process),
``mpi`` (``runtime/mpi_engine.py``) and ``ray`` (``runtime/ray_engine.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from opgraph.errors import OpgraphError

ENGINES = ("local", "mpi", "ray")


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise OpgraphError(f"unknown engine '{engine}' (expected one of {', '.join(ENGINES)})")


def run_on_engine(
    engine: str,
    doc: Any,
    inputs: Sequence[pa.Table],
    ranks: int,
    *,
    progress: Callable[[str], None] | None = None,
    placement: str | None = None,
) -> list[pa.Table]:
    """Runs the plan ``doc`` on ``engine`` with ``ranks`` ranks; ``progress`` gets rank 0's
    line per island (the MPI ranks print theirs on stderr instead). ``placement`` is the
    local engine's (MPI and Ray ranks read ``OPGRAPH_PLACEMENT``)."""
    check_engine(engine)
    if placement is not None and engine != "local":
        raise OpgraphError(f"placement= is for the local engine; {engine} ranks read OPGRAPH_PLACEMENT")
    if engine == "local":
        from opgraph.runtime.executor import run_local

        return run_local(doc, inputs, ranks, progress=progress, placement=placement)
    try:
        if engine == "mpi":
            from opgraph.runtime.mpi_engine import run_mpi
        else:
            from opgraph.runtime.ray_engine import run_ray
    except ImportError as e:
        raise OpgraphError(f"the {engine} engine is not available: {e}") from None
    if engine == "mpi":
        return run_mpi(doc, inputs, ranks, progress=progress is not None)
    return run_ray(doc, inputs, ranks, progress=progress)
