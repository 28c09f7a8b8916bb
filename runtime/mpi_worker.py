"""The program every rank of an ``mpi`` engine run executes.

    mpiexec -n N python -m opgraph.runtime.mpi_worker PLAN.json INPUTS_DIR RESULT_DIR [--expect-ranks N]

* ``PLAN.json`` is the compiled plan (data only: validated as ``PlanDoc``, no code is run from
  it). Rank 0 reads it and broadcasts the bytes, so only rank 0 needs to see the file.
* ``INPUTS_DIR`` holds ``input_<i>.arrow`` (Arrow IPC files) for the tables bound to
  ``df.input`` ops, by index. When every rank sees the directory (one node, or a shared
  filesystem) each rank memory-maps the files (no copy); otherwise rank 0 broadcasts them.
* ``RESULT_DIR``: rank 0 writes the outputs as ``output_<i>.arrow`` and then ``results.json``
  (the success marker). Each rank leaves ``rank<r>.pid`` there when it can, so the launcher can
  name the rank behind a PID that MPI reports as killed.

Any exception on any rank prints one line ``error: [<file>:<line>: ]<message> (on rank r of
n)`` on stderr, leaves ``error-rank<r>.json`` in ``RESULT_DIR`` (when visible) and calls
``MPI_Abort``, so the whole run stops at once instead of hanging in the next collective.
Set ``OPGRAPH_DEBUG=1`` to also get the Python traceback.

**Pool mode** (the engine's persistent workers, ``runtime/mpi_engine.py``):

    mpiexec -n N python -m opgraph.runtime.mpi_worker --serve SOCKET [--expect-ranks N]

Every rank connects to the driver's Unix socket ``SOCKET``, sends one hello line ``{"rank",
"size", "pid"}`` and then blocks in a read of that socket (no CPU, no MPI polling while
idle). A request is one JSON line that the driver sends to every rank: ``{"cmd": "run",
"call", "plan", "input_files", "results", "progress", "cwd"}`` (the plan and result directory
as above; the inputs are Arrow IPC files in the pool's directory, which every rank maps). Every rank runs the plan; with the plan executor every rank then
writes its own partition of each output as ``output_<i>.part<r>.arrow`` (no gather to rank
0: the driver maps the partitions and concatenates them in rank order, without a copy); with
a custom ``execute`` rank 0 writes ``output_<i>.arrow``. Rank 0 answers ``{"ok": true,
"outputs": k, "parts": bool}``.
After a call each rank prints ``opgraph-mpi-pool: done <call> <rank>`` on stderr (the driver
waits for these so that everything a rank printed during the call is echoed before
``run_mpi`` returns). Errors are handled as in one-shot mode (error line, record in
``results``, ``MPI_Abort``: the pool dies and the driver starts a new one on the next call).
End of file on the socket (the driver exited or closed the pool) or ``{"cmd": "exit"}``:
the rank leaves the loop and finalises MPI. Startup errors (ABI mismatch, unreachable
socket) leave their record in the socket's directory.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

ExecuteFn = Callable[[Any, list[pa.Table], Any], list[pa.Table]]

RESULTS_MANIFEST = "results.json"
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def input_path(directory: str | os.PathLike, index: int) -> Path:
    return Path(directory) / f"input_{index}.arrow"


def output_path(directory: str | os.PathLike, index: int, rank: int | None = None) -> Path:
    """Output ``index`` (rank 0 wrote it whole), or ``rank``'s partition of it (pool mode)."""
    if rank is None:
        return Path(directory) / f"output_{index}.arrow"
    return Path(directory) / f"output_{index}.part{rank}.arrow"


def write_ipc_file(path: Path, table: pa.Table, spare: Path | None = None) -> None:
    """An Arrow IPC file, written under a temporary name and renamed (never half-written).
    ``spare``: a directory of files the driver has finished with (mpi_engine._OutputFiles);
    one of them, when this rank gets it first, is overwritten in place (its memory pages
    are already there) instead of writing a new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    if spare is not None and _claim_spare(spare, tmp, table.nbytes):
        fd = os.open(tmp, os.O_WRONLY)  # no O_TRUNC: truncating would free the pages
        with open(fd, "wb") as f:
            with pa.ipc.new_file(pa.PythonFile(f, mode="w"), table.schema) as writer:
                writer.write_table(table)
            f.flush()
            os.ftruncate(fd, f.tell())  # a bigger spare's tail goes
    else:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    os.replace(tmp, path)


def _claim_spare(spare: Path, target: Path, need: int) -> bool:
    """Moves a spare file to ``target`` (the smallest one of at least ``need`` bytes, else
    the biggest); False when there is none. Ranks claim at the same time: a rename that
    fails lost the race for that file."""
    try:
        found = [(e.stat().st_size, e.path) for e in os.scandir(spare) if e.is_file()]
    except OSError:
        return False
    found.sort(key=lambda f: (f[0] < need, f[0] if f[0] >= need else -f[0]))
    for _, name in found:
        try:
            os.rename(name, target)
            return True
        except OSError:
            continue
    return False


def read_ipc_file(path: Path) -> pa.Table:
    """Memory-mapped (zero-copy; the mapping outlives an unlink of the file on POSIX)."""
    with pa.memory_map(str(path), "r") as source:
        return pa.ipc.open_file(source).read_all()


# ----------------------------------------------------------------- error reports


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """Message and user source place of an exception. OpgraphError (and any exception carrying
    ``file``/``line`` or a ``loc`` "file:line[:col]" string) keeps its place."""
    file = getattr(exc, "file", None)
    line = getattr(exc, "line", None)
    loc = getattr(exc, "loc", None)
    if file is None and isinstance(loc, str) and ":" in loc:
        parts = loc.split(":")
        if len(parts) >= 3 and parts[-1].isdigit() and parts[-2].isdigit():
            file, line = ":".join(parts[:-2]), int(parts[-2])
        elif parts[-1].isdigit():
            file, line = ":".join(parts[:-1]), int(parts[-1])
    opgraph_error = _is_opgraph_error(exc)
    message = getattr(exc, "message", None) if opgraph_error else None
    if not isinstance(message, str):
        message = str(exc) if opgraph_error else f"{type(exc).__name__}: {exc}"
    return {
        "type": type(exc).__name__,
        "opgraph_error": opgraph_error,
        "message": message,
        "file": file if isinstance(file, str) else None,
        "line": line if isinstance(line, int) else None,
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _is_opgraph_error(exc: BaseException) -> bool:
    try:
        from opgraph.errors import OpgraphError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, OpgraphError)


def error_line(report: dict[str, Any], rank: int, size: int) -> str:
    place = ""
    if report.get("file"):
        place = f"{report['file']}:{report['line']}: " if report.get("line") is not None else f"{report['file']}: "
    return f"error: {place}{report['message']} (on rank {rank} of {size})"


class _Reporter:
    """Prints the error line once and leaves the JSON record for the launcher."""

    def __init__(self, result_dir: Path, rank: int, size: int):
        self.result_dir = result_dir
        self.rank = rank
        self.size = size
        self.reported = False

    def report(self, report: dict[str, Any]) -> None:
        if self.reported:
            return
        self.reported = True
        report = {**report, "rank": self.rank, "size": self.size}
        if os.environ.get("OPGRAPH_DEBUG"):
            sys.stderr.write(report.get("traceback") or "")
        print(error_line(report, self.rank, self.size), file=sys.stderr, flush=True)
        try:
            if self.result_dir.is_dir():
                path = self.result_dir / f"error-rank{self.rank}.json"
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(json.dumps(report))
                os.replace(tmp, path)
        except OSError:
            pass

    def abort_hook(self, message: str) -> None:
        """``MPICommunicator.abort`` called by the executor itself."""
        self.report({"type": "abort", "opgraph_error": False, "message": message, "file": None, "line": None, "traceback": ""})


# ----------------------------------------------------------------------- loading


def _bcast_bytes(comm, data: bytes | None, root: int = 0) -> bytes:
    from mpi4py import MPI

    size = np.array([len(data) if data is not None else 0], dtype=np.int64)
    comm.Bcast(size, root=root)
    buf = np.frombuffer(data, dtype=np.uint8).copy() if comm.Get_rank() == root else np.empty(int(size[0]), np.uint8)
    comm.Bcast([buf, MPI.BYTE], root=root)
    return buf.tobytes()


def load_plan(comm, plan_path: str):
    """Rank 0 reads plan.json; every rank validates the broadcast bytes as a PlanDoc."""
    from opgraph.plan_schema import PlanDoc

    text = Path(plan_path).read_bytes() if comm.Get_rank() == 0 else None
    return PlanDoc.model_validate_json(_bcast_bytes(comm, text))


def load_inputs(comm, inputs_dir: str, count: int) -> list[pa.Table]:
    """Every rank gets every input table: memory-mapped where all ranks see the files,
    broadcast from rank 0 otherwise."""
    from mpi4py import MPI
    from opgraph.runtime.mpi_comm import MPICommunicator

    visible = all(input_path(inputs_dir, i).is_file() for i in range(count))
    flag = np.array([1 if visible else 0], dtype=np.int64)
    all_visible = np.empty_like(flag)
    comm.Allreduce(flag, all_visible, op=MPI.MIN)
    if all_visible[0]:
        return [read_ipc_file(input_path(inputs_dir, i)) for i in range(count)]
    mpi = MPICommunicator(comm)
    tables = []
    for i in range(count):
        table = read_ipc_file(input_path(inputs_dir, i)) if comm.Get_rank() == 0 else None
        tables.append(mpi.bcast(table, root=0))
    return tables


def count_inputs(comm, inputs_dir: str) -> int:
    n = np.zeros(1, dtype=np.int64)
    if comm.Get_rank() == 0:
        while input_path(inputs_dir, int(n[0])).is_file():
            n[0] += 1
    comm.Bcast(n, root=0)
    return int(n[0])


def _progress(line: str) -> None:
    print(f"opgraph: {line}", file=sys.stderr, flush=True)


def default_execute(
    doc, inputs: list[pa.Table], comm, progress: bool | None = None, gather_outputs: bool = True
) -> list[pa.Table]:
    """``execute_plan``; with ``progress`` (default: ``OPGRAPH_MPI_PROGRESS=1``) rank 0 prints
    one line per island. ``gather_outputs=False``: every rank returns its partitions."""
    from opgraph.runtime.executor import execute_plan

    if progress is None:
        progress = os.environ.get("OPGRAPH_MPI_PROGRESS") == "1"
    kw: dict[str, Any] = {} if gather_outputs else {"gather_outputs": False}
    if progress and comm.rank == 0:
        return execute_plan(doc, inputs, comm, progress=_progress, **kw)
    return execute_plan(doc, inputs, comm, **kw)


# ------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m opgraph.runtime.mpi_worker")
    p.add_argument("plan", nargs="?")
    p.add_argument("inputs_dir", nargs="?")
    p.add_argument("result_dir", nargs="?")
    p.add_argument("--expect-ranks", type=int, default=None)
    p.add_argument("--serve", metavar="SOCKET", default=None, help="pool mode: serve requests from this socket")
    args = p.parse_args(argv)
    if args.serve is not None:
        if args.plan is not None:
            p.error("--serve takes no PLAN INPUTS_DIR RESULT_DIR")
        args.result_dir = str(Path(args.serve).parent)  # startup error records
    elif args.result_dir is None:
        p.error("PLAN, INPUTS_DIR and RESULT_DIR are required (or --serve SOCKET)")
    return args


_T0 = __import__("time").perf_counter()


def _abort(world, code: int) -> None:
    from opgraph.runtime.mpi_comm import abort_world

    abort_world(world, code)


def _phase(name: str) -> None:
    """``OPGRAPH_MPI_TIMING=1``: each rank prints its phase times (wall seconds since start,
    and the process's CPU seconds so far)."""
    if os.environ.get("OPGRAPH_MPI_TIMING") == "1":
        import time

        print(
            f"opgraph-mpi-timing: pid {os.getpid()} {name} {time.perf_counter() - _T0:.3f} cpu {time.process_time():.3f}",
            file=sys.stderr,
            flush=True,
        )


def main(argv: list[str] | None = None, execute: ExecuteFn | None = None) -> int:
    """Runs one rank (one plan, or the pool's request loop with ``--serve``). ``execute``
    replaces ``execute_plan`` (tests, custom executors)."""
    _phase("start")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    faulthandler.enable()  # a crash in a native kernel still shows the Python stack
    result_dir = Path(args.result_dir)
    try:
        from opgraph.runtime.mpi_engine import _check_abi_matches_launcher

        _check_abi_matches_launcher()  # before MPI_Init, which would die with a cryptic message
        from mpi4py import MPI
    except Exception as exc:  # noqa: BLE001 - no MPI yet: report and exit, nothing to abort
        env_rank = next((int(os.environ[k]) for k in _RANK_VARS if os.environ.get(k, "").isdigit()), 0)
        _Reporter(result_dir, env_rank, args.expect_ranks or 0).report(
            {**describe_exception(exc), "type": "mismatch", "opgraph_error": True}
        )
        return 3

    from opgraph.runtime.mpi_comm import MPICommunicator

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    reporter = _Reporter(result_dir, rank, size)
    if args.serve is None:
        try:
            (result_dir / f"rank{rank}.pid").write_text(str(os.getpid()))
        except OSError:
            pass  # the result directory is on another node: fine
    if args.expect_ranks is not None and size != args.expect_ranks:
        # the launcher started processes that do not form one MPI world: each is its own
        # singleton. Report it (from each, identically) and stop without collectives.
        reporter.report(
            {
                "type": "mismatch",
                "opgraph_error": True,
                "message": (
                    f"the launcher started {args.expect_ranks} processes but MPI sees a world of {size}: the "
                    f"MPI library that mpi4py loaded ({MPI.Get_library_version().splitlines()[0].strip()}) "
                    "does not belong to this launcher; point MPI4PY_LIBMPI at the launcher's libmpi or "
                    "OPGRAPH_MPIEXEC at the matching mpiexec"
                ),
                "file": None,
                "line": None,
                "traceback": "",
            }
        )
        return 3
    MPICommunicator.abort_hook = reporter.abort_hook
    if not os.environ.get("OPGRAPH_RANKS_PER_NODE", "").strip().isdigit() and size > 1:
        # launched by the user (srun/mpiexec): kernels share the node's cores with the
        # ranks on the same node
        try:
            node = world.Split_type(MPI.COMM_TYPE_SHARED)
            os.environ["OPGRAPH_RANKS_PER_NODE"] = str(node.Get_size())
            node.Free()
        except Exception:  # noqa: BLE001, S110 - no shared-memory split: keep every core
            pass
    if args.serve is not None:
        return _serve(world, args.serve, reporter, execute)
    try:
        _phase("mpi-init")
        doc = load_plan(world, args.plan)
        inputs = load_inputs(world, args.inputs_dir, count_inputs(world, args.inputs_dir))
        _phase("inputs")
        comm = MPICommunicator(world)
        outputs = _execute(execute, doc, inputs, comm, None, rank)
        _phase("executed")
        comm.finish()
        if rank == 0:
            _write_outputs(result_dir, outputs)
            manifest = result_dir / RESULTS_MANIFEST
            tmp = manifest.with_name(f".{manifest.name}.tmp")
            tmp.write_text(json.dumps({"outputs": len(outputs), "ranks": size}))
            os.replace(tmp, manifest)
        _phase("outputs-written")
        world.Barrier()
    except BaseException as exc:  # noqa: BLE001 - any failure must stop every rank
        reporter.report(describe_exception(exc))
        _abort(world, 2 if _is_opgraph_error(exc) else 1)
        return 1  # not reached
    return 0


def _execute(
    execute: ExecuteFn | None,
    doc,
    inputs,
    comm,
    progress: bool | None,
    rank: int,
    call: int | None = None,
    gather_outputs: bool = True,
):
    prof_dir = os.environ.get("OPGRAPH_MPI_PROFILE")  # debugging aid: cProfile per rank
    if execute is not None:
        fn, args = execute, (doc, inputs, comm)
    else:
        fn, args = default_execute, (doc, inputs, comm, progress, gather_outputs)
    if not prof_dir:
        return fn(*args)
    import cProfile

    prof = cProfile.Profile()
    outputs = prof.runcall(fn, *args)
    name = f"rank{rank}.prof" if call is None else f"rank{rank}-call{call}.prof"
    prof.dump_stats(os.path.join(prof_dir, name))
    return outputs


def _write_outputs(result_dir: Path, outputs, rank: int | None = None, spare: Path | None = None) -> list[pa.Table]:
    outputs = list(outputs or [])
    for i, table in enumerate(outputs):
        if not isinstance(table, pa.Table):
            raise TypeError(f"the executor returned {type(table).__name__} as output {i}, not a pyarrow.Table")
        write_ipc_file(output_path(result_dir, i, rank), table, spare)
    return outputs


# -------------------------------------------------------------------- pool mode

POOL_DONE = "opgraph-mpi-pool: done"


def _send_line(sock: socket.socket, obj: dict[str, Any]) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


def _serve(world, sock_path: str, reporter: _Reporter, execute: ExecuteFn | None) -> int:
    """The pool's request loop (see the module docstring)."""
    rank, size = world.Get_rank(), world.Get_size()
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(sock_path)
        _send_line(sock, {"rank": rank, "size": size, "pid": os.getpid()})
    except OSError as exc:
        reporter.report(
            {
                "type": "pool",
                "opgraph_error": True,
                "message": (
                    f"MPI rank {rank} cannot reach the driver's control socket {sock_path} ({exc}); the pooled "
                    "mpi engine needs every rank on the driver's node: set OPGRAPH_MPI_POOL=0 for one-shot runs"
                ),
                "file": None,
                "line": None,
                "traceback": "",
            }
        )
        _abort(world, 3)
        return 3  # not reached
    _phase("pool-ready")
    if execute is None:  # the executor's imports overlap the driver's writing of the inputs
        try:
            import opgraph.runtime.executor  # noqa: F401
        except Exception:  # noqa: BLE001, S110 - the first call reports it
            pass
        _phase("executor-imported")
    reader = sock.makefile("rb")
    while True:
        try:
            line = reader.readline()
        except OSError:
            line = b""
        if not line:
            break  # the driver closed the pool or exited
        request = json.loads(line)
        if request.get("cmd") != "run":
            break
        _serve_call(world, sock, request, execute)
    try:
        sock.close()
    except OSError:
        pass
    pool_dir = Path(sock_path).parent
    if rank == 0 and pool_dir.name.startswith("opgraph-mpi-pool-"):
        # the driver may have died without cleaning up (its files live in /dev/shm)
        import shutil

        shutil.rmtree(pool_dir, ignore_errors=True)
    return 0


def _serve_call(world, sock: socket.socket, request: dict[str, Any], execute: ExecuteFn | None) -> None:
    from opgraph.runtime.mpi_comm import MPICommunicator

    rank, size = world.Get_rank(), world.Get_size()
    call = int(request.get("call", 0))
    result_dir = Path(request["results"])
    reporter = _Reporter(result_dir, rank, size)
    MPICommunicator.abort_hook = reporter.abort_hook
    try:
        _phase(f"call {call} received")
        cwd = request.get("cwd")
        if cwd and cwd != os.getcwd():
            try:
                os.chdir(cwd)
            except OSError:
                pass
        doc = load_plan(world, request["plan"])
        inputs = [read_ipc_file(Path(f)) for f in request["input_files"]]  # mapped: no copy
        _phase(f"call {call} inputs")
        comm = MPICommunicator(world)
        progress = True if request.get("progress") else None  # None: OPGRAPH_MPI_PROGRESS decides
        # the plan's own executor: every rank writes its partitions of the outputs (no
        # gather to rank 0; the driver maps them all); a custom one returns them on rank 0
        parts = execute is None
        outputs = _execute(execute, doc, inputs, comm, progress, rank, call, gather_outputs=not parts)
        _phase(f"call {call} executed")
        comm.finish()
        del inputs, doc  # the input files' mappings end with the call
        if parts:
            spare = Path(request["spare"]) if request.get("spare") else None
            count = len(_write_outputs(result_dir, outputs, rank, spare))
        else:
            count = len(_write_outputs(result_dir, outputs)) if rank == 0 else 0
        del outputs
        _phase(f"call {call} outputs-written")
        world.Barrier()
    except BaseException as exc:  # noqa: BLE001 - any failure must stop every rank
        reporter.report(describe_exception(exc))
        _abort(world, 2 if _is_opgraph_error(exc) else 1)
        return  # not reached
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        # one write(2): the launcher forwards the ranks' output in chunks, and the marker
        # must reach the driver as one line of its own
        os.write(sys.stderr.fileno(), f"{POOL_DONE} {call} {rank}\n".encode())
    except (OSError, ValueError):
        pass
    if rank == 0:
        try:
            _send_line(sock, {"ok": True, "call": call, "outputs": count, "parts": parts})
        except OSError:
            pass  # the driver went away: the next read ends the loop


if __name__ == "__main__":
    sys.exit(main())
