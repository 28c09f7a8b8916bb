"""The Ray engine (``engine="ray"``, ``opgraph run --engine ray``): the plan's ranks are Ray
actors on a Ray cluster, talking through ``RayCommunicator`` (``runtime/ray_comm.py``).

    run_ray(doc, inputs, ranks) -> list[pa.Table]

Cluster: ``ray.init()``'s own rules - ``RAY_ADDRESS`` (or ``address=``) joins a running
cluster (``ray start --head`` / a Ray job); otherwise a local one is started in this
process once and kept for later calls (its start takes seconds; like the MPI engine's pool,
the rank actors are kept too, one set per rank count). Each rank actor asks for
``min(1, cluster CPUs / ranks)`` CPUs, spread over the cluster's nodes; it runs the plan in
the driver's working directory (paths in plans are the user's, as under MPI: a multi-node
cluster needs them on a shared filesystem) with ``OPGRAPH_RANKS_PER_NODE`` set to the
ranks on its node, so each rank's kernels take their share of the node's cores.

Inputs are put in the object store once and every rank maps them (each takes its slice);
rank 0 returns the gathered outputs the same way. Failures: a rank's exception is sent back
as a report (message, the user's file:line, traceback); the other ranks wake from the
mailbox with ``CommAborted`` and the driver raises the failing rank's error as an
``OpgraphError`` subclass ("... (on rank r of n)"). A rank actor that dies (killed by a
signal, out of memory) ends the run with an error naming the rank; the actors of a failed
run are replaced before the next one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from opgraph.errors import OpgraphError

try:
    import ray
except ImportError as e:  # pragma: no cover - ray is in the [ray] and [dev] extras
    raise ImportError(f"{e} (install opgraph[ray])") from None

from opgraph.runtime.local_comm import CommAborted
from opgraph.runtime.mpi_worker import describe_exception
from opgraph.runtime.ray_comm import Mailbox, RayCommunicator

__all__ = ["run_ray", "shutdown"]

_LOCK = threading.Lock()
#: the rank actors of recent runs, one set per rank count (least recently used first)
_POOLS: OrderedDict[int, _Pool] = OrderedDict()
#: rank counts whose actors are kept at once (the oldest set goes first)
MAX_POOLS = 2
_RUN_IDS = itertools.count()
#: seconds the rank actors of a new pool may take to start
START_TIMEOUT_S = 120.0
#: seconds between the driver's polls of the ranks (and of rank 0's progress lines)
_POLL_S = 0.1


class _RankActor:
    """One rank: runs ``execute_plan`` on a ``RayCommunicator``."""

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def run(
        self,
        plan_text: str,
        input_refs: list[Any],
        mailbox: Any,
        members: list[int],
        rank: int,
        ranks_on_node: int,
        cwd: str,
        progress: bool,
        run_id: int,
        execute: Callable[..., list[pa.Table]] | None = None,
    ) -> tuple[str, Any]:
        """("ok", outputs) | ("aborted", message) | ("error", report)."""
        from opgraph.runtime.executor import execute_plan

        from opgraph.plan_schema import PlanDoc

        try:
            if os.path.isdir(cwd):
                os.chdir(cwd)
            os.environ["OPGRAPH_RANKS_PER_NODE"] = str(ranks_on_node)
            doc = PlanDoc.model_validate_json(plan_text)
            inputs = ray.get(input_refs) if input_refs else []
            comm = RayCommunicator(mailbox, members, rank, ("run", run_id))
            if execute is not None:
                return "ok", execute(doc, inputs, comm)
            report = (lambda line: mailbox.progress.remote(line)) if progress and rank == 0 else None
            return "ok", execute_plan(doc, inputs, comm, progress=report)
        except CommAborted as e:
            return "aborted", e.message
        except BaseException as e:  # noqa: BLE001 - reported to the driver
            report = describe_exception(e)
            mailbox.abort.remote(f"run aborted (rank {rank}): {report['message']}")
            return "error", report


class _Pool:
    """The rank actors (and their mailbox) of one rank count."""

    def __init__(self, ranks: int):
        # no CPU reservation (ranks may outnumber the cluster's CPUs, as MPI ranks may
        # oversubscribe cores); SPREAD places them round the nodes
        actor = ray.remote(_RankActor).options(num_cpus=0, scheduling_strategy="SPREAD")
        self.ranks = ranks
        self.actors = [actor.remote() for _ in range(ranks)]
        self.mailbox = ray.remote(Mailbox).options(num_cpus=0, max_concurrency=4 * ranks + 8).remote()
        try:
            nodes = ray.get([a.node.remote() for a in self.actors], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            self.kill()
            raise OpgraphError(f"the ray cluster did not start {ranks} rank actors within {START_TIMEOUT_S:g} s") from None
        self.ranks_on_node = [nodes.count(n) for n in nodes]

    def kill(self) -> None:
        for a in [*self.actors, self.mailbox]:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(a)


def _ensure_ray(address: str | None) -> None:
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, logging_level="ERROR", configure_logging=False)
    except Exception as e:  # noqa: BLE001 - Ray's own errors, as one line
        where = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
        raise OpgraphError(f"the ray engine cannot start or join {where}: {type(e).__name__}: {e}") from None


def shutdown() -> None:
    """Drops the rank actors and disconnects from Ray (stops the local cluster it started)."""
    with _LOCK:
        while _POOLS:
            _POOLS.popitem()[1].kill()
        if ray.is_initialized():
            ray.shutdown()


def run_ray(
    doc: Any,
    inputs: Sequence[pa.Table],
    ranks: int,
    *,
    progress: Callable[[str], None] | None = None,
    address: str | None = None,
    timeout: float | None = None,
    execute: Callable[..., list[pa.Table]] | None = None,
) -> list[pa.Table]:
    """Runs the plan ``doc`` (a ``PlanDoc``, its dict or JSON text) on ``ranks`` Ray actors
    with ``inputs`` bound to its ``df.input`` ops; returns the outputs. ``progress`` is
    called with rank 0's line per island; ``timeout`` (seconds) bounds the run;
    ``execute(doc, inputs, comm)`` replaces ``execute_plan`` on the ranks (custom
    executors, tests; pickled like any Ray task argument: a function of a module the actors
    can import travels by name)."""
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
        raise OpgraphError(f"the ray engine needs a positive number of ranks, got {ranks!r}")
    # shared with the MPI engine
    from opgraph.runtime.mpi_engine import _as_table, _plan_text

    tables = [_as_table(t, i) for i, t in enumerate(inputs)]
    plan_text = _plan_text(doc)
    with _LOCK:  # one run at a time per process: the pools' actors are not shared
        _ensure_ray(address)
        pool = _POOLS.get(ranks)
        if pool is None:
            while len(_POOLS) >= MAX_POOLS:
                _POOLS.popitem(last=False)[1].kill()
            pool = _POOLS[ranks] = _Pool(ranks)
        _POOLS.move_to_end(ranks)
        ok = False
        try:
            outputs = _run(pool, plan_text, tables, ranks, progress, timeout, execute)
            ok = True
            return outputs
        finally:
            if not ok:  # fresh actors and mailbox next time: no message of this run survives
                pool.kill()
                del _POOLS[ranks]


def _run(pool: _Pool, plan_text: str, tables: list[pa.Table], ranks: int, progress, timeout, execute) -> list[pa.Table]:
    ray.get(pool.mailbox.reset.remote())
    input_refs = [ray.put(t) for t in tables]
    run_id = next(_RUN_IDS)
    members = list(range(ranks))
    futures = [
        a.run.remote(
            plan_text, input_refs, pool.mailbox, members, r, pool.ranks_on_node[r], os.getcwd(), progress is not None, run_id, execute
        )
        for r, a in enumerate(pool.actors)
    ]
    rank_of = {f: r for r, f in enumerate(futures)}
    results: dict[int, tuple[str, Any]] = {}
    pending = list(futures)
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=_POLL_S)
        for f in done:
            r = rank_of[f]
            try:
                results[r] = ray.get(f)
            except ray.exceptions.RayActorError as e:
                results[r] = ("died", _death(e))
                pool.mailbox.abort.remote(f"run aborted: rank {r} died")
        if progress is not None:
            for line in ray.get(pool.mailbox.drain.remote()):
                progress(line)
        if deadline is not None and pending and time.monotonic() > deadline:
            waiting = sorted(rank_of[f] for f in pending)
            failed = {r: v for r, v in results.items() if v[0] != "ok"}
            raise OpgraphError(
                f"the ray run did not finish within {timeout:g} s (ranks {waiting} still running"
                + (f"; failed: {failed}" if failed else "") + "); its rank actors were stopped"
            )
    return _outcome(results, ranks)


def _death(e: Exception) -> str:
    text = str(e).strip().splitlines()
    why = next((line.strip() for line in text if "killed" in line.lower() or "signal" in line.lower() or "memory" in line.lower()), "")
    return why or (text[0].strip() if text else type(e).__name__)


def _outcome(results: dict[int, tuple[str, Any]], ranks: int) -> list[pa.Table]:
    from opgraph.runtime.mpi_engine import _error_class

    for r in range(ranks):  # a rank's own error first (the others only saw the abort)
        kind, value = results[r]
        if kind == "error":
            cls = _error_class(value.get("type")) if value.get("opgraph_error") else OpgraphError
            err = cls(f"{value['message']} (on rank {r} of {ranks})", value.get("file"), value.get("line"))
            err.remote_traceback = value.get("traceback") or None  # type: ignore[attr-defined]
            raise err
    for r in range(ranks):
        kind, value = results[r]
        if kind == "died":
            raise OpgraphError(f"rank {r} of {ranks} (a Ray actor) died: {value}; the other ranks were stopped")
    for r in range(ranks):
        kind, value = results[r]
        if kind == "aborted":
            raise OpgraphError(f"the ray run was aborted: {value}")
    kind, outputs = results[0]
    return list(outputs)
