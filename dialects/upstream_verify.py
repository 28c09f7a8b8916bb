"""Verifies opgraph IR with **upstream MLIR** (the ``torch_mlir`` bindings), in a subprocess.

Each file is parsed with ``ir.Module.parse`` and verified (``.operation.verify()``) in a
``torch_mlir.ir.Context`` with ``allow_unregistered_dialects = False``, after loading every
packaged IRDL twin (``opgraph.dialects/*.irdl.mlir``) with ``irdl.load_dialects``. Twins that
reference another twin's types (``irdl.base "!df.table"``) are loaded after it.

Upstream code can crash on foreign IR, so the work happens in a child process::

    python -m opgraph.dialects.upstream_verify FILE... [--twin TWIN.irdl.mlir ...]

prints one JSON object per line (``{"path": ..., "ok": ..., "error": ...}``, then
``{"done": true, ...}``) and exits 1 if any file fails. ``verify_files`` runs it and turns a
crash (a signal, or output that stops early) into an error for the file being verified, then
goes on with the remaining files in a fresh child.

API::

    verify_files(paths) -> [(path, error text), ...]     # only the files that fail
    verify_text(text)   -> None | error text
    twin_sources()      -> [(twin name, text), ...]       # load order
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path

PACKAGE = "opgraph.dialects"
TWIN_SUFFIX = ".irdl.mlir"
DEFAULT_TIMEOUT_S = 300.0

_DIALECT_RE = re.compile(r"^\s*irdl\.dialect\s+@([\w$.-]+)", re.M)
_FOREIGN_RE = re.compile(r'irdl\.base\s+"[!#]([\w$-]+)\.')


# ------------------------------------------------------------------------------ twins


def packaged_twins() -> list[tuple[str, str]]:
    """``(file name, text)`` of every packaged ``*.irdl.mlir``, sorted by name."""
    root = resources.files(PACKAGE)
    out = []
    for entry in root.iterdir():
        if entry.name.endswith(TWIN_SUFFIX) and entry.is_file():
            out.append((entry.name, entry.read_text(encoding="utf-8")))
    return sorted(out)


def order_twins(twins: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Dependency order: a twin whose constraints name ``!d.x`` / ``#d.x`` of dialect ``d``
    defined in another twin comes after that twin (ties and cycles: by file name)."""
    defines = {name: set(_DIALECT_RE.findall(text)) for name, text in twins}
    owner = {d: name for name, ds in defines.items() for d in ds}
    deps = {
        name: {owner[d] for d in _FOREIGN_RE.findall(text) if d in owner and owner[d] != name}
        for name, text in twins
    }
    texts = dict(twins)
    done: list[str] = []
    pending = sorted(texts)
    while pending:
        ready = [n for n in pending if deps[n] <= set(done)] or pending[:1]  # cycle: go on
        done.append(ready[0])
        pending.remove(ready[0])
    return [(n, texts[n]) for n in done]


def twin_sources(extra: Iterable[str | os.PathLike[str]] | None = None) -> list[tuple[str, str]]:
    """The twins to load, in load order: the packaged ones, or the files in ``extra``."""
    if extra is None:
        return order_twins(packaged_twins())
    return order_twins([(Path(p).name, Path(p).read_text(encoding="utf-8")) for p in extra])


# ------------------------------------------------------------------ in-process checker
# Only ever called in the child process (upstream code may crash on foreign IR).


def _collect_diagnostics(ctx) -> tuple[list[str], Callable[[], None]]:
    messages: list[str] = []

    def handler(diag) -> bool:
        messages.append(f"{diag.location}: {diag.message}")
        for note in diag.notes:
            messages.append(f"  note: {note.location}: {note.message}")
        return True

    handle = ctx.attach_diagnostic_handler(handler)
    return messages, handle.detach


def make_upstream_context(twins: Sequence[tuple[str, str]]):
    """A ``torch_mlir`` context with the twins loaded; raises RuntimeError naming the twin."""
    from torch_mlir import ir
    from torch_mlir.dialects import irdl

    ctx = ir.Context()
    ctx.allow_unregistered_dialects = False
    for name, text in twins:
        messages, detach = _collect_diagnostics(ctx)
        try:
            with ctx, ir.Location.unknown():
                module = ir.Module.parse(text)
                irdl.load_dialects(module)
        except Exception as e:
            detail = "; ".join(messages) or str(e).strip()
            raise RuntimeError(f"cannot load IRDL twin {name}: {detail}") from None
        finally:
            detach()
    return ctx


def check_text(ctx, text: str, source: str = "<input>") -> str | None:
    """Parses and verifies ``text`` in ``ctx``; the error text, or None if it verifies."""
    from torch_mlir import ir

    try:
        with ctx, ir.Location.unknown():
            module = ir.Module.parse(text)
            module.operation.verify()
    except Exception as e:  # MLIRError carries the diagnostics
        message = str(e).strip() or type(e).__name__
        return message.replace('"-":', f'"{source}":')
    return None


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m opgraph.dialects.upstream_verify")
    parser.add_argument("files", nargs="*", help="MLIR files to parse and verify")
    parser.add_argument("--twin", action="append", help="IRDL file to load instead of the packaged twins")
    args = parser.parse_args(argv)

    def emit(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        ctx = make_upstream_context(twin_sources(args.twin))
    except Exception as e:
        message = str(e)
        for path in args.files:
            emit({"path": path, "ok": False, "error": message})
        emit({"done": True, "ok": False, "error": message})
        return 1
    ok = True
    for path in args.files:
        emit({"path": path, "started": True})
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            error: str | None = f"cannot read {path}: {e}"
        else:
            error = check_text(ctx, text, path)
        ok = ok and error is None
        emit({"path": path, "ok": error is None, "error": error})
    emit({"done": True, "ok": ok})
    return 0 if ok else 1


# ------------------------------------------------------------------------- parent API


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"upstream MLIR crashed ({name})"
    return f"upstream MLIR checker exited with status {returncode} without a result"


def packaged_twin_paths() -> list[Path] | None:
    """File-system paths of the packaged twins (None if the package is not on disk)."""
    root = resources.files(PACKAGE)
    paths = [Path(str(e)) for e in root.iterdir() if e.name.endswith(TWIN_SUFFIX) and e.is_file()]
    return sorted(paths) if all(p.is_file() for p in paths) else None


def _child_command(paths: list[str], twins: Sequence[str] | None) -> list[str]:
    """The child's command line. With the twins given as files it runs this file as a script
    (``-P``: nothing from its directory shadows other modules), which skips importing the
    ``opgraph`` package (about a second); otherwise ``python -m`` finds the packaged twins."""
    if twins is None:
        found = packaged_twin_paths()
        if found is None:
            return [sys.executable, "-m", "opgraph.dialects.upstream_verify", *paths]
        twins = [str(p) for p in found]
    cmd = [sys.executable, "-P", str(Path(__file__).resolve()), *paths]
    for t in twins:
        cmd += ["--twin", str(t)]
    return cmd


def _run_child(
    paths: list[str], twins: Sequence[str] | None, timeout: float
) -> tuple[dict[str, str | None], str | None, str | None]:
    """Runs one child. Returns (results by path, path being verified when it died, why)."""
    cmd = _child_command(paths, twins)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stdout, died = out, f"upstream MLIR did not finish within {timeout:g} s"
        stderr = ""
    else:
        stdout, died, stderr = proc.stdout, None, proc.stderr
        returncode = proc.returncode
    results: dict[str, str | None] = {}
    started: str | None = None
    finished = False
    for line in stdout.splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if obj.get("done"):
            finished = True
        elif obj.get("started"):
            started = obj["path"]
        elif "ok" in obj:
            results[obj["path"]] = None if obj["ok"] else (obj.get("error") or "verification failed")
            started = None
    if died is None and not finished:
        died = _describe_exit(returncode)
        tail = stderr.strip().splitlines()[-5:]
        if tail:
            died += ": " + " | ".join(tail)
    elif died is None and finished and returncode not in (0, 1):
        died = _describe_exit(returncode)
    return results, (started if died else None), died


def verify_files(
    paths: Iterable[str | os.PathLike[str]],
    *,
    twins: Sequence[str | os.PathLike[str]] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[tuple[str, str]]:
    """Parses and verifies each file with upstream MLIR (in a subprocess).

    Returns ``[(path, error text)]`` for the files that fail; an empty list means every file
    verifies. A crash of upstream MLIR is an error of the file it was verifying; the files
    after it are verified in a fresh subprocess. ``twins`` replaces the packaged IRDL twins.
    """
    all_paths = [str(p) for p in paths]
    remaining = list(all_paths)
    twin_args = [str(t) for t in twins] if twins is not None else None
    failures: list[tuple[str, str]] = []
    while remaining:
        results, culprit, died = _run_child(remaining, twin_args, timeout)
        for path in remaining:
            if path in results and results[path] is not None:
                failures.append((path, results[path]))  # type: ignore[arg-type]
        if died is None:
            missing = [p for p in remaining if p not in results]
            failures += [(p, "upstream MLIR checker gave no result for this file") for p in missing]
            break
        done = set(results)
        if culprit is None:  # died before starting any file (e.g. loading the twins)
            failures += [(p, died) for p in remaining if p not in done]
            break
        failures.append((culprit, f"{died} while verifying {culprit}"))
        done.add(culprit)
        remaining = [p for p in remaining if p not in done]
    order = {p: i for i, p in enumerate(all_paths)}
    return sorted(failures, key=lambda f: order.get(f[0], 0))


def verify_text(
    text: str,
    *,
    name: str = "input.mlir",
    twins: Sequence[str | os.PathLike[str]] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> str | None:
    """Verifies MLIR text with upstream MLIR; the error text, or None if it verifies."""
    with tempfile.TemporaryDirectory(prefix="opgraph-upstream-") as tmp:
        path = Path(tmp) / name
        path.write_text(text, encoding="utf-8")
        failures = verify_files([path], twins=twins, timeout=timeout)
    if not failures:
        return None
    return failures[0][1].replace(str(path), name)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
