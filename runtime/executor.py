"""The plan executor: runs a compiled plan (``plan.json`` data, a ``PlanDoc``) on the ranks
of a ``Communicator`` and returns the pipeline's outputs.

    execute_plan(doc, inputs, comm) -> list[pa.Table]      # every rank calls it (collective)
    run_local(doc, inputs, ranks)   -> list[pa.Table]      # the local engine: threads

The runtime reads plan data only; it imports nothing of the tracing frontend or xDSL
(``opgraph.plan`` models and ``opgraph.errors`` are plain data/exception classes).

Execution model:

* Islands run in dependency order (their ``inputs``/``outputs`` value ids and
  ``depends_on``); ops within an island in order. With ``placement="all"`` (the default)
  every island runs on all ranks of the communicator; with ``placement="plan"`` a dataframe
  island runs on ``min(island.ranks, ranks)`` ranks over a sub-communicator, its inputs
  re-split onto those ranks and its results spread again before a wider island (order
  kept: ``parallel_ops.rebalance``). Exception: consecutive ready islands made only of ``dl.train`` (a sweep's trainings, pass
  ``expand-sweeps``) that do not depend on each other run at the same time on disjoint rank
  groups, or in threads of one rank (``dl_exec.run_concurrent_islands``). Every island's
  executed interval goes to ``ISLAND_TIMELINE``.
* Every table is partitioned over the ranks; the global table is the partitions'
  concatenation in rank order. Sources split their work across ranks (``runtime/io.py``),
  operators use the distributed algorithms of ``runtime/parallel_ops.py``, which with one
  rank are the local operators of ``runtime/local_ops.py`` without any communication.
* Outputs are gathered to rank 0 in rank order: ``execute_plan`` returns the full tables
  on rank 0 and ``[]`` on the other ranks. Output columns have the plan's names and types;
  a field is non-nullable where the plan says so and the data has no nulls (only an
  integer division by zero can make a null where the plan promises none).
* Sinks write ``<path>/part-<rank>.<ext>`` into a staging directory; after every island
  has run and every rank has written, rank 0 moves each staged directory over its path
  atomically (``io.commit_directory``). A failed run removes its staging directories and
  leaves existing outputs as they were.

Errors: a failing op raises ``ExecutionError`` (an ``OpgraphError``) naming the op and the
user's ``file:line`` from the op's ``loc`` (for expression errors, the failing expression
op's). ``execute_plan`` raises on the failing rank; with a ``LocalCommunicator`` it first
aborts the group (``comm.fail``: every waiting rank wakes with ``CommAborted`` and
``run_local`` raises the first failing rank's error); with other communicators stopping the
other ranks is the caller's job (the MPI worker calls ``MPI_Abort``) - ``execute_plan``
never calls ``comm.abort``, which would kill an MPI run before it can report the error.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from opgraph.runtime import io as IO
from opgraph.runtime import local_ops as L
from opgraph.runtime import parallel_ops as P
from opgraph.runtime.communicator import Communicator
from opgraph.runtime.expr_eval import ExprError
from opgraph.runtime.local_comm import CommAborted, run_ranks
from opgraph.runtime.parallel_ops import ANY, REPLICATED, Dist, Partitioning

from opgraph.errors import OpgraphError
from opgraph.plan_schema import IslandDoc, OpDoc, PlanDoc

__all__ = ["FAULT_HOOK", "ISLAND_TIMELINE", "STATS", "ExecutionError", "execute_plan", "record_island", "run_local"]

#: Test hook: called as ``FAULT_HOOK(op, rank)`` before every op; raising from it makes the
#: op fail on that rank (used by the tests to inject failures).
FAULT_HOOK: Callable[[OpDoc, int], None] | None = None


class ExecutionError(OpgraphError):
    """An op failed while the plan ran; ``file``/``line`` are the user's source location."""


def _place(loc: str | None) -> tuple[str | None, int | None]:
    if not loc:
        return None, None
    parts = loc.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1])
    if len(parts) >= 2 and parts[-1].isdigit():
        return loc.rsplit(":", 1)[0], int(parts[-1])
    return loc, None


def _error(op: OpDoc, exc: BaseException) -> ExecutionError:
    if isinstance(exc, ExprError):
        file, line = _place(exc.loc or op.loc)
        what = exc.op or op.op
        return ExecutionError(f"{what} (in {op.op}) failed at run time: {exc.message}", file, line)
    file, line = _place(op.loc)
    if isinstance(exc, OpgraphError):
        return ExecutionError(f"{op.op} failed at run time: {exc.message}", file or exc.file, line or exc.line)
    message = str(exc) or type(exc).__name__
    if not isinstance(exc, IO.SourceError | pa.ArrowException | ValueError | OSError):
        message = f"{type(exc).__name__}: {message}"
    return ExecutionError(f"{op.op} failed at run time: {message}", file, line)


def _island_order(islands: Sequence[IslandDoc]) -> list[IslandDoc]:
    """Islands in dependency order (stable: listed order among the ready ones)."""
    producer: dict[str, int] = {}
    for i, isl in enumerate(islands):
        for v in isl.outputs:
            producer[v] = i
        for op in isl.ops:
            for v in op.results:
                producer.setdefault(v, i)
    by_name = {isl.name: i for i, isl in enumerate(islands)}
    deps: list[set[int]] = []
    for i, isl in enumerate(islands):
        d = {producer[v] for v in isl.inputs if v in producer}
        d |= {producer[v] for op in isl.ops for v in op.operands if v in producer}
        d |= {by_name[n] for n in isl.depends_on if n in by_name}
        d.discard(i)
        deps.append(d)
    done: set[int] = set()
    order: list[IslandDoc] = []
    while len(order) < len(islands):
        ready = [i for i in range(len(islands)) if i not in done and deps[i] <= done]
        if not ready:
            raise OpgraphError("plan.json: the islands' dependencies form a cycle")
        for i in ready:
            done.add(i)
            order.append(islands[i])
    return order


#: Executed islands: one dict per island and rank (``island``, ``rank``, ``start``/``end`` from
#: ``time.perf_counter``, ``ranks``: the world ranks that ran it, ``concurrent``: run next to
#: other islands). Appended by every run; tests clear it.
ISLAND_TIMELINE: list[dict[str, Any]] = []
_TIMELINE_LOCK = threading.Lock()

#: Islands made only of these ops run concurrently with their independent neighbours
#: (``runtime/dl_exec.run_concurrent_islands``): the trainings of an expanded sweep.
CONCURRENT_OPS = frozenset({"dl.train"})


def record_island(name: str, rank: int, start: float, end: float, ranks: Sequence[int], concurrent: bool = False) -> None:
    entry = {"island": name, "rank": rank, "start": start, "end": end, "ranks": list(ranks), "concurrent": concurrent}
    with _TIMELINE_LOCK:
        ISLAND_TIMELINE.append(entry)


def _concurrent_batch(islands: Sequence[IslandDoc], n: int) -> list[IslandDoc]:
    """The islands from ``n`` on (in ``_island_order``) that may run at the same time: each
    made only of ``CONCURRENT_OPS`` and none reading another's values or naming it in
    ``depends_on``. One island (or none) means: run ``islands[n]`` on its own."""
    batch: list[IslandDoc] = []
    produced: set[str] = set()
    names: set[str] = set()
    for island in islands[n:]:
        if not island.ops or any(op.op not in CONCURRENT_OPS for op in island.ops):
            break
        reads = set(island.inputs) | {v for op in island.ops for v in op.operands}
        if reads & produced or names & set(island.depends_on):
            break
        batch.append(island)
        names.add(island.name)
        produced |= set(island.outputs) | {v for op in island.ops for v in op.results}
    return batch


#: runs of the executor's fusions (tests check that a fusion happened)
STATS = {"filters_fused_into_reads": 0}

#: ops that accept dictionary-encoded columns (row-wise; the result keeps them encoded)
_DICT_OK = frozenset({"df.filter", "df.project", "df.map", "df.rename", "df.drop", "df.join"})


class _Executor:
    def __init__(
        self,
        doc: PlanDoc,
        inputs: Sequence[pa.Table | None],
        comm: Communicator,
        progress: Callable[[str], None] | None,
        placement: str = "all",
        gather_outputs: bool = True,  # False: each rank returns its partition of the outputs
    ):
        self.doc = doc
        self.inputs = list(inputs)
        self.comm = comm
        self.progress = progress
        self.env: dict[str, Dist] = {}
        self.schemas: dict[str, list[Any]] = {}
        self.staged: list[tuple[str, str]] = []  # (staging directory, final path)
        self.island: IslandDoc | None = None
        # value id -> the ops that read it (over every island), and the plan's outputs
        self.consumers: dict[str, list[OpDoc]] = {}
        for isl in doc.islands:
            for op in isl.ops:
                for v in op.operands:
                    self.consumers.setdefault(v, []).append(op)
        self.output_ids = set(doc.outputs)
        self.placement = placement
        self.gather_outputs = gather_outputs
        self.narrowed: set[str] = set()  # values an island left on fewer ranks than the world
        self.read_filtered: dict[int, Dist] = {}  # id(df.filter op) -> its result, made by its source
        self.has_sinks = any(op.op in IO.SINK_FORMATS for isl in doc.islands for op in isl.ops)

    # -- driver ---------------------------------------------------------------------
    def run(self) -> list[pa.Table]:
        comm = self.comm
        try:
            islands = _island_order(self.doc.islands)
            n = 0
            while n < len(islands):
                batch = _concurrent_batch(islands, n)
                if len(batch) > 1:  # independent trainings (a sweep): at the same time
                    from opgraph.runtime.dl_exec import run_concurrent_islands

                    if self.progress is not None and comm.rank == 0:
                        self.progress(f"[{n + 1}-{n + len(batch)}/{len(islands)}] {', '.join(i.name for i in batch)}")
                    for island in batch:
                        self.spread_inputs(island)
                    run_concurrent_islands(self, batch)
                    n += len(batch)
                    continue
                island = islands[n]
                n += 1
                self.island = island
                if self.progress is not None and comm.rank == 0:
                    self.progress(f"[{n}/{len(islands)}] {island.name}")
                start = time.perf_counter()
                width = self.island_width(island)
                if width < comm.size:
                    self.run_on_subgroup(island, width)
                    record_island(island.name, comm.rank, start, time.perf_counter(), range(width))
                    continue
                self.spread_inputs(island)
                for op in island.ops:
                    self.run_op(op)
                record_island(island.name, comm.rank, start, time.perf_counter(), range(comm.size))
            outputs = [self.output(v) for v in self.doc.outputs]
            # every rank joins the barriers when the plan writes anything (ranks outside a
            # sink's sub-group staged nothing themselves)
            if self.staged or self.has_sinks:
                if comm.size > 1:
                    comm.barrier()  # every rank has written its parts
                if comm.rank == 0:
                    for staging, path in self.staged:
                        IO.commit_directory(staging, path)
                    self.staged = []
                if comm.size > 1:
                    comm.barrier()  # committed before anyone returns
            return outputs if comm.rank == 0 or not self.gather_outputs else []
        except BaseException as e:
            # the local engine stops the other ranks first (so that none of them reports a
            # consequence of the cleanup below as the failure); the MPI worker aborts itself
            fail = getattr(comm, "fail", None)
            if fail is not None:
                fail(e)
            for staging, _ in self.staged:
                IO.discard_directory(staging)
            raise

    # -- placement: islands on sub-communicators -----------------------------------------
    def island_width(self, island: IslandDoc) -> int:
        """Ranks the island runs on: the plan's ``island.ranks`` capped by the run's ranks
        with ``placement="plan"``; every rank with ``placement="all"`` and for islands of
        other than dataframe/communication ops (DL islands place themselves)."""
        size = self.comm.size
        if self.placement != "plan" or size == 1:
            return size
        if any(not op.op.startswith(("df.", "comm.")) for op in island.ops):
            return size
        return max(1, min(int(island.ranks or 1), size))

    def _external_values(self, island: IslandDoc) -> list[str]:
        produced = {v for op in island.ops for v in op.results}
        seen: dict[str, None] = {}
        for op in island.ops:
            for v in op.operands:
                if v not in produced and v in self.env:
                    seen[v] = None
        return list(seen)

    def _resplit_inputs(self, island: IslandDoc, width: int, only: set[str] | None = None) -> None:
        """The island's partitioned inputs (those in ``only``, if given) re-split evenly onto
        ranks ``0..width-1``, order kept: the transfer from an island on other ranks. A hash
        placement over other ranks is none here; a range order survives."""
        for v in self._external_values(island):
            d = self.env[v]
            if (only is None or v in only) and isinstance(d, Dist) and d.part.kind != "replicated":
                self.env[v] = Dist(P.rebalance(self.comm, d.table, width), d.part if d.part.kind == "range" else ANY)

    def spread_inputs(self, island: IslandDoc) -> None:
        """Before an island on every rank: inputs an earlier narrower island left on fewer
        ranks (the plan's transfer, ``from_ranks < to_ranks``) are spread evenly."""
        if self.comm.size > 1 and self.narrowed:
            self._resplit_inputs(island, self.comm.size, self.narrowed)
            self.narrowed.difference_update(self._external_values(island))

    def run_on_subgroup(self, island: IslandDoc, width: int) -> None:
        """Runs ``island`` on world ranks ``0..width-1`` over a sub-communicator; the other
        ranks skip its ops and hold empty partitions of its results (with rank 0's schema)."""
        from opgraph.runtime import kernels as K

        world = self.comm
        self._resplit_inputs(island, width)
        active = world.rank < width
        sub = world.split(0 if active else 1, world.rank)
        if active:
            sharing = K.ranks_sharing()
            if sharing == world.size:  # local engine: the idle ranks' cores go to the active ones
                K.set_ranks_sharing(width)
            self.comm = sub
            try:
                for op in island.ops:
                    self.run_op(op)
            finally:
                self.comm = world
                if sharing == world.size:
                    K.set_ranks_sharing(sharing)
        # the results read later, as partitions of the world (rank order = global order): a
        # replica stays on rank 0 only; a hash placement over ``width`` ranks is none here
        inside = {id(op) for op in island.ops}
        for op in island.ops:
            for v in op.results:
                if v not in self.output_ids and all(id(u) in inside for u in self.consumers.get(v, ())):
                    continue
                d = self.env.get(v) if active else None
                if active and not isinstance(d, Dist):
                    raise OpgraphError(f"plan.json: {op.op} on a sub-group of ranks must yield a table")
                empty = world.bcast(d.table.slice(0, 0) if world.rank == 0 else None)
                self.narrowed.add(v)  # on every rank: spreading it again is collective
                if not active:
                    self.env[v] = Dist(empty, ANY)
                    self.schemas[v] = op.schema_ or []
                elif d.part.kind == "replicated":
                    self.env[v] = Dist(d.table if world.rank == 0 else empty, ANY)
                else:  # the idle ranks cannot know it: no partitioning on any rank
                    self.env[v] = Dist(d.table, ANY)

    def output(self, value: str) -> pa.Table:
        d = self.env.get(value)
        if d is None:
            raise OpgraphError(f"plan.json: output {value} is not produced by any island")
        columns = self.schemas[value]
        if isinstance(d, Dist) and L.has_dictionaries(d.table):
            d = Dist(L.decode_dictionaries(d.table), d.part)
        if d.part.kind == "replicated":
            table = d.table if self.gather_outputs or self.comm.rank == 0 else d.table.slice(0, 0)
        elif self.gather_outputs:
            table = P.gather_to_root(self.comm, d.table)
        else:  # execute_plan(gather_outputs=False): this rank's partition
            table = d.table
        if self.comm.rank != 0 and self.gather_outputs:
            return table
        table = L.conform(table, L.arrow_schema(columns))
        return _final_schema(table, columns)

    # -- ops --------------------------------------------------------------------------
    def run_op(self, op: OpDoc) -> None:
        try:
            if FAULT_HOOK is not None:
                FAULT_HOOK(op, self.comm.rank)
            result = self.dispatch(op)
        except CommAborted:
            raise
        except ExecutionError:
            raise
        except Exception as e:
            raise _error(op, e) from e
        if isinstance(result, list):  # several results (dl.train: trained params, losses)
            for value, r in zip(op.results, result):
                self.env[value] = r
                self.schemas[value] = op.schema_ or []
        elif result is not None and op.results:
            self.env[op.results[0]] = result
            self.schemas[op.results[0]] = op.schema_ or []

    def arg(self, op: OpDoc, i: int = 0) -> Dist:
        try:
            d = self.env[op.operands[i]]
        except (KeyError, IndexError):
            raise OpgraphError(f"plan.json: {op.op} uses value {op.operands[i:i + 1]} before it is computed") from None
        # sources keep string columns dictionary-encoded through row-wise ops (cheap reads,
        # filters and isin on the dictionary); every other op sees the plan's plain types
        passthrough = self.comm.size == 1 and op.op.startswith("comm.")  # moves nothing
        # one rank: the group-by keys on a dictionary's indices (local_ops._dictionary_keys)
        passthrough = passthrough or (self.comm.size == 1 and op.op == "df.groupby_agg")
        if op.op not in _DICT_OK and not passthrough and isinstance(d, Dist) and L.has_dictionaries(d.table):
            d = Dist(L.decode_dictionaries(d.table), d.part)
            self.env[op.operands[i]] = d
        return d

    def needed_columns(self, op: OpDoc) -> list[str] | None:
        """The columns of ``op``'s result that its readers use, when every reader is a
        ``df.project`` (None: all of them)."""
        if not op.results or op.results[0] in self.output_ids:
            return None
        users = self.consumers.get(op.results[0]) or []
        if not users or any(u.op != "df.project" for u in users):
            return None
        keep: dict[str, None] = {}
        for u in users:
            for c in u.attributes.get("columns") or []:
                keep[str(c)] = None
        return list(keep)

    def dispatch(self, op: OpDoc) -> Dist | None:
        name = op.op
        a = op.attributes
        comm = self.comm
        schema = L.arrow_schema(op.schema_) if op.schema_ is not None else None
        if name == "df.input":
            return Dist(self.input_table(int(a["index"]), schema), ANY)  # type: ignore[arg-type]
        if name in IO.SOURCE_OPS:
            return self.read(op, schema)  # type: ignore[arg-type]
        if name.startswith("dl."):  # deep learning ops: runtime/dl_exec.py
            from opgraph.runtime.dl_exec import run_dl_op

            return run_dl_op(self, op)
        if name.startswith("comm.") and op.operands and type(self.env.get(op.operands[0])).__module__.endswith("dl_exec"):
            from opgraph.runtime.dl_exec import comm_on_dl_value

            return comm_on_dl_value(comm, op, self.env[op.operands[0]])
        if name in IO.SINK_FORMATS:
            d = P.unreplicate(comm, self.arg(op)) if self.arg(op).part.kind == "replicated" else self.arg(op)
            staging = IO.stage_directory(comm, str(a["path"]))
            self.staged.append((staging, str(a["path"])))
            IO.write_part(d.table, staging, comm.rank, IO.SINK_FORMATS[name])
            return None
        assert schema is not None, f"{name} has no result schema in plan.json"
        if name == "df.filter" and id(op) in self.read_filtered:  # done by its source
            return self.read_filtered.pop(id(op))
        if name == "df.filter":
            d = self.arg(op)
            keep = self.needed_columns(op)
            if keep is not None and not all(c in d.table.column_names for c in keep):
                keep = None
            return Dist(L.filter_table(d.table, op.regions[0], keep), d.part)
        if name == "df.project":
            d = self.arg(op)
            return Dist(L.project(d.table, a["columns"]), d.part.survives(schema))
        if name == "df.map":
            d = self.arg(op)
            names = list(a["names"])
            return Dist(L.map_table(d.table, names, op.regions[0], schema), d.part.survives(schema, names))
        if name == "df.rename":
            d = self.arg(op)
            mapping = dict(zip(a["old_names"], a["new_names"]))
            return Dist(L.rename(d.table, a["old_names"], a["new_names"]), d.part.renamed(mapping))
        if name == "df.drop":
            d = self.arg(op)
            return Dist(L.drop(d.table, a["columns"]), d.part.survives(schema))
        if name == "df.join":
            left, right = self.arg(op, 0), self.arg(op, 1)
            if comm.size > 1 or any(pa.types.is_dictionary(left.table.schema.field(k).type) for k in a["left_on"]) or any(
                pa.types.is_dictionary(right.table.schema.field(k).type) for k in a["right_on"]
            ):  # dictionary payloads only through a one-rank join (its output decodes them)
                left = Dist(L.decode_dictionaries(left.table), left.part)
                right = Dist(L.decode_dictionaries(right.table), right.part)
            return P.join(comm, left, right, a["how"], list(a["left_on"]), list(a["right_on"]), schema, self.broadcast_join(op))
        if name == "df.concat":
            return P.concat(comm, self.arg(op, 0), self.arg(op, 1), schema)
        if name == "df.union":
            return P.union(comm, self.arg(op, 0), self.arg(op, 1), schema)
        if name == "df.intersect":
            return P.set_op(comm, self.arg(op, 0), self.arg(op, 1), schema, "both")
        if name == "df.difference":
            return P.set_op(comm, self.arg(op, 0), self.arg(op, 1), schema, "left_only")
        if name == "df.distinct":
            subset = a.get("subset")
            return P.distinct(comm, self.arg(op), list(subset) if subset is not None else None)
        if name == "df.sort":
            return P.sort(comm, self.arg(op), list(a["by"]), [bool(x) for x in a["ascending"]])
        if name == "df.head":
            return P.head(comm, self.arg(op), int(a["n"]))
        if name == "df.groupby_agg":
            return P.groupby_agg(comm, self.arg(op), list(a["keys"]), [tuple(x) for x in a["aggs"]], schema)
        if name == "df.aggregate":
            return P.aggregate(comm, self.arg(op), [tuple(x) for x in a["aggs"]], schema)
        if name == "df.window":
            return P.window(comm, self.arg(op), a["func"], a["column"], int(a["param"]), a["output"], schema)
        if name.startswith("comm."):
            return self.comm_op(op, schema)
        raise OpgraphError(f"the local engine cannot run '{name}' yet")

    def read(self, op: OpDoc, schema: pa.Schema) -> Dist | None:
        """A source op. When its only reader is a ``df.filter`` of this island, the filter
        runs on each piece as it is read (``IO.read_source``'s ``each_piece``): its result
        is kept for the filter op, the source's own value is never made (None)."""
        path = str(op.attributes["path"])
        filt = self._filter_of_source(op)
        if filt is None:
            return Dist(IO.read_source(op.op, path, schema, self.comm), ANY)
        keep = self.needed_columns(filt)
        if keep is not None and not all(c in schema.names for c in keep):
            keep = None
        region = filt.regions[0]

        def filter_piece(piece: pa.Table) -> pa.Table:
            try:
                return L.filter_table(piece, region, keep)
            except (CommAborted, ExecutionError):
                raise
            except Exception as e:  # the filter's error, at the filter's source line
                raise _error(filt, e) from e

        self.read_filtered[id(filt)] = Dist(IO.read_source(op.op, path, schema, self.comm, filter_piece), ANY)
        STATS["filters_fused_into_reads"] += 1
        return None

    def _filter_of_source(self, op: OpDoc) -> OpDoc | None:
        """The df.filter that is the only reader of source ``op``'s table, in this island."""
        if not op.results or op.results[0] in self.output_ids or self.island is None:
            return None
        users = self.consumers.get(op.results[0]) or []
        if len(users) != 1 or users[0].op != "df.filter" or not users[0].regions:
            return None
        if list(users[0].operands) != [op.results[0]] or not any(u is users[0] for u in self.island.ops):
            return None
        return users[0]

    def broadcast_join(self, op: OpDoc) -> bool:
        algo = str(op.attributes.get("algorithm", op.attributes.get("taskgraph.algorithm", ""))).replace("-", "_")
        pattern = str((self.island.pattern if self.island else "") or "").replace("-", "_")
        return algo in ("broadcast", "broadcast_join", "broadcast_right") or pattern == "broadcast_compute"

    def comm_op(self, op: OpDoc, schema: pa.Schema) -> Dist:
        """Explicit data movement inserted by the compiler (``comm`` dialect)."""
        comm = self.comm
        a = op.attributes
        d = self.arg(op)
        name = op.op
        if name == "comm.shuffle":
            d = P.unreplicate(comm, d)
            keys = list(a["keys"])
            types = tuple(d.table.schema.field(k).type for k in keys)
            if a.get("kind", "hash") == "range":
                asc = [bool(x) for x in a.get("ascending") or [True] * len(keys)]
                # one rank holds every key range already (range_partition would allgather)
                moved = d.table if comm.size == 1 else P.range_partition(comm, d.table, keys, asc)[0]
                return Dist(moved, Partitioning("range", tuple(keys), types, tuple(asc)))
            return Dist(P.shuffle_hash(comm, d.table, keys), Partitioning("hash", tuple(keys), types))
        if name == "comm.broadcast":
            root = int(a.get("root", 0))
            if comm.size == 1:
                return Dist(d.table, REPLICATED)
            return Dist(comm.bcast(d.table if comm.rank == root else None, root), REPLICATED)
        if name == "comm.gather":
            d = P.unreplicate(comm, d)
            return Dist(P.gather_to_root(comm, d.table, int(a.get("root", 0))), ANY)
        if name == "comm.allgather":
            if d.part.kind == "replicated":
                return d
            return Dist(L.concat_tables(comm.allgather(d.table) if comm.size > 1 else [d.table], d.table.schema), REPLICATED)
        if name == "comm.scatter":
            root = int(a.get("root", 0))
            d = P.unreplicate(comm, d)
            return Dist(P.scatter_from_root(comm, d.table if comm.rank == root else None, d.table.schema, root), ANY)
        if name == "comm.allreduce":
            return Dist(self.allreduce_table(d.table, a), REPLICATED)
        raise OpgraphError(f"the local engine cannot run '{name}' as a separate op (df.window does its own halo exchange)")

    def allreduce_table(self, table: pa.Table, a: dict[str, Any]) -> pa.Table:
        ops = list(a.get("column_ops") or [a.get("op", "sum")] * table.num_columns)
        if self.comm.size == 1:
            return table
        parts = self.comm.allgather(table)
        cols = []
        for i, fn in enumerate(ops):
            stack = np.stack([p.column(i).to_numpy(zero_copy_only=False) for p in parts])
            red = {"sum": np.sum, "prod": np.prod, "min": np.min, "max": np.max, "land": np.all, "lor": np.any}[fn]
            cols.append(pa.array(red(stack, axis=0)).cast(table.schema.field(i).type))
        return pa.Table.from_arrays(cols, schema=table.schema)

    def input_table(self, index: int, schema: pa.Schema) -> pa.Table:
        """This rank's contiguous slice of input ``index``. Every rank may hold the table, or
        rank 0 alone (the others pass None or a shorter list): then rank 0 scatters it."""
        comm = self.comm
        data = self.inputs[index] if index < len(self.inputs) else None
        if data is not None and not isinstance(data, pa.Table):
            data = _as_arrow(data)
        if comm.size == 1:
            if data is None:
                raise OpgraphError(f"no data bound to pipeline input {index}")
            return L.conform(data, schema)
        have = np.concatenate(comm.allgather_array(np.array([data is not None], dtype=np.int64)))
        if have.all():
            rows = data.num_rows  # type: ignore[union-attr]
            n, r = comm.size, comm.rank
            lo, hi = rows * r // n, rows * (r + 1) // n
            return L.conform(data.slice(lo, hi - lo), schema)  # type: ignore[union-attr]
        if not have[0]:
            raise OpgraphError(f"no data bound to pipeline input {index} on rank 0")
        table = L.conform(data, schema) if comm.rank == 0 else None  # type: ignore[arg-type]
        return P.scatter_from_root(comm, table, schema)


def _as_arrow(data: Any) -> pa.Table:
    try:
        import pandas as pd  # optional: only when a DataFrame was passed

        if isinstance(data, pd.DataFrame):
            return pa.Table.from_pandas(data, preserve_index=False)
    except ImportError:  # pragma: no cover
        pass
    raise OpgraphError(f"pipeline inputs must be pyarrow.Table (or pandas.DataFrame), got {type(data).__name__}")


def _final_schema(table: pa.Table, columns: Sequence[Any]) -> pa.Table:
    fields = []
    for f, c in zip(table.schema, columns):
        nullable = bool(c["nullable"] if isinstance(c, dict) else c.nullable)
        if not nullable and table.column(f.name).null_count:
            nullable = True
        fields.append(f.with_nullable(nullable))
    schema = pa.schema(fields)
    if schema.equals(table.schema):
        return table
    return pa.Table.from_arrays(table.columns, schema=schema)


def execute_plan(
    doc: PlanDoc | dict | str | bytes,
    inputs: Sequence[pa.Table | None],
    comm: Communicator,
    *,
    progress: Callable[[str], None] | None = None,
    placement: str | None = None,
    gather_outputs: bool = True,
) -> list[pa.Table]:
    """Runs the plan on every rank of ``comm`` (collective: call it on all ranks).

    ``gather_outputs=False``: every rank returns its own partition of each output instead
    (their concatenation in rank order is the output; a replicated output is rank 0's; the
    MPI worker pool writes them where the driver maps them, without a gather).

    ``placement``: ``"all"`` runs every island on all ranks of ``comm``; ``"plan"`` runs a
    dataframe island on ``min(island.ranks, comm.size)`` ranks (a sub-communicator of ranks
    0..k-1; the others wait) and moves its inputs and results as the transfers between
    islands of different widths require. Default: ``OPGRAPH_PLACEMENT``, else ``"all"``.

    ``doc``: the plan (a ``PlanDoc``, plan.json's parsed dict or its text). ``inputs``: the tables
    bound to ``df.input`` ops, by index - either on every rank (each rank takes its slice,
    zero-copy) or on rank 0 only (other ranks pass ``[]`` or ``None`` entries; rank 0 then
    scatters). Returns the pipeline's outputs (``doc.outputs`` order) as full tables on
    rank 0 and ``[]`` on the other ranks. Sinks are committed before it returns.
    ``progress`` (rank 0 only) is called with one line per island.

    On failure it raises ``ExecutionError`` (an ``OpgraphError`` carrying the user's
    file:line) or ``CommAborted`` (another rank failed) on this rank and removes this run's
    staging directories. A communicator with a ``fail(exc)`` method (``LocalCommunicator``)
    is told first, which aborts the other ranks; otherwise stopping them is the caller's job
    (the MPI worker calls ``MPI_Abort``)."""
    if isinstance(doc, dict):
        doc = PlanDoc.model_validate(doc)
    elif isinstance(doc, str | bytes):
        doc = PlanDoc.model_validate_json(doc)
    return _Executor(doc, list(inputs or []), comm, progress, _placement(placement), gather_outputs).run()


PLACEMENTS = ("all", "plan")


def _placement(placement: str | None) -> str:
    value = placement or os.environ.get("OPGRAPH_PLACEMENT", "").strip() or "all"
    if value not in PLACEMENTS:
        raise OpgraphError(f"unknown placement '{value}' (expected 'all' or 'plan')")
    return value


def run_local(
    doc: PlanDoc | dict,
    inputs: Sequence[pa.Table],
    ranks: int = 1,
    *,
    progress: Callable[[str], None] | None = None,
    placement: str | None = None,
) -> list[pa.Table]:
    """The local engine: ``ranks`` threads of this process with ``LocalCommunicator``s
    (tables pass between ranks by reference). Returns rank 0's outputs; if any rank fails,
    the run is aborted and the first failing rank's error is raised here."""
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
        raise OpgraphError(f"ranks must be a positive integer, got {ranks!r}")
    if isinstance(doc, dict):
        doc = PlanDoc.model_validate(doc)
    placement = _placement(placement)
    tables = list(inputs or [])
    from opgraph.runtime.kernels import set_ranks_sharing

    def rank_main(comm: Communicator) -> list[pa.Table]:
        # the ranks are threads of this process: each rank's kernels get cores / ranks threads
        prev = set_ranks_sharing(ranks)
        try:
            return execute_plan(doc, tables, comm, progress=progress, placement=placement)
        finally:
            set_ranks_sharing(prev)

    results = run_ranks(ranks, rank_main)
    return results[0]


def _stderr_progress(line: str) -> None:  # pragma: no cover - used by the CLI when wanted
    print(f"opgraph: {line}", file=sys.stderr, flush=True)


if os.environ.get("OPGRAPH_TRACE_RUNTIME"):  # pragma: no cover - debugging aid
    FAULT_HOOK = lambda op, rank: print(f"rank {rank}: {op.op} {op.loc}", file=sys.stderr)
