"""plan.json's schema: the pydantic models of the compiled plan, data only.

The runtime (local executor, MPI workers) reads plans through these models; this module
imports neither xDSL nor the compiler, so a worker process starts quickly.
``opgraph.plan`` re-exports everything here and builds a ``PlanDoc`` from lowered IR.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PLAN_VERSION = 1

# DESIGN §2: the parallel pattern of each dataframe/DL op (the compiler's vocabulary)
PATTERNS: dict[str, str] = {
    "df.filter": "embarrassingly-parallel",
    "df.project": "embarrassingly-parallel",
    "df.map": "embarrassingly-parallel",
    "df.rename": "embarrassingly-parallel",
    "df.drop": "embarrassingly-parallel",
    "df.join": "shuffle-compute",
    "df.concat": "embarrassingly-parallel",
    "df.union": "shuffle-compute",
    "df.intersect": "shuffle-compute",
    "df.difference": "shuffle-compute",
    "df.distinct": "combine-shuffle-reduce",
    "df.groupby_agg": "combine-shuffle-reduce",
    "df.sort": "sample-shuffle-compute",
    "df.head": "globally-reduce",
    "df.aggregate": "globally-reduce",
    "df.window": "halo-exchange",
    "df.read_parquet": "partitioned-io",
    "df.read_csv": "partitioned-io",
    "df.read_ipc": "partitioned-io",
    "df.write_parquet": "partitioned-io",
    "df.write_csv": "partitioned-io",
    "df.write_ipc": "partitioned-io",
    "df.input": "partitioned-io",
}


class Column(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    type: str
    nullable: bool


class OpDoc(BaseModel):
    """One op: its name, attributes as JSON, operand/result value ids, result schema and, for
    expression ops, nested regions (each a list of ops; the last is ``vector.yield``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    op: str
    loc: str | None = None
    operands: list[str] = []
    results: list[str] = []
    result_types: list[str] = []
    schema_: list[Column] | None = Field(None, alias="schema")
    attributes: dict[str, Any] = {}
    regions: list[list[OpDoc]] = []


class TransferDoc(BaseModel):
    """One asynchronous edge into an island: value ``value`` produced by island ``from_island``
    on ``from_ranks`` ranks, consumed here on ``to_ranks`` ranks; ``partitioning`` is how the
    producer left it (``hash(k)``, ``range(k)``, ``replicated``, ``single``, ``any``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    value: str
    from_island: str
    from_ranks: int = 1
    to_ranks: int = 1
    bytes: int = 0
    partitioning: str = "any"


class IslandDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    ranks: int
    device: str
    pattern: str | None = None
    depends_on: list[str] = []
    inputs: list[str] = []  # value ids produced by other islands
    outputs: list[str] = []  # value ids this island yields
    ops: list[OpDoc]
    # compiler predictions and choices (absent when the passes that make them did not run)
    algorithm: str | None = None  # the main op's parallel algorithm
    kernels: list[str] = []  # named kernel per op (``og_kernel_<op>``), ops order
    partitionings: dict[str, str] = {}  # output value id -> partitioning
    transfers: list[TransferDoc] = []
    nodes: list[int] = []  # nodes the island is placed on (schedule-islands)
    start: float | None = None  # predicted seconds from the start of the run
    end: float | None = None
    cost: float | None = None  # predicted seconds of its ops
    bytes_moved: int | None = None


class TableInput(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    index: int
    name: str
    schema_: list[Column] = Field(alias="schema")


class PlanDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    version: Literal[1] = PLAN_VERSION
    pipeline: str
    hardware: str
    islands: list[IslandDoc]
    inputs: list[TableInput] = []
    outputs: list[str] = []  # value ids returned by the pipeline, in order
    # schedule-islands' predictions (absent without it)
    makespan: float | None = None
    nodes_used: int | None = None
    peak_memory: int | None = None  # bytes, the largest over nodes
    node_peak_memory: list[int] = []


def plan_json_text(doc: PlanDoc) -> str:
    return json.dumps(doc.model_dump(mode="json", by_alias=True), indent=2) + "\n"
