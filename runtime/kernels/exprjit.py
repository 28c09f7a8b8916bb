"""Compiles, caches, loads and runs the fused expression kernels of ``exprgen``.

* **Compiler**: ``$CXX`` when set (a name on ``PATH`` or a path), else the first of
  ``c++``, ``g++``, ``clang++`` on ``PATH``. Flags (``FLAGS``): ``-O2 -std=c++17 -shared
  -fPIC -pthread -ffp-contract=off -fno-math-errno -fno-trapping-math``: portable (no
  ``-march=native``, so a cache on a shared filesystem serves every node; the hot loops are
  multiversioned AVX2/baseline on x86-64 Linux with GCC, see ``exprgen.PRELUDE``) and
  IEEE-exact like Arrow's kernels (no fast-math, no FMA contraction; the two ``-fno-*``
  flags change no result). Without a usable compiler every region runs on the
  Arrow-compute path and ``compiler()`` / ``JitUnavailable`` say why.
* **Cache**: ``$OPGRAPH_CACHE_DIR/kernels/`` if that variable is set, else
  ``~/.cache/opgraph/kernels/``; one ``<sha256>.so`` (and its ``.cpp``, for reading) per
  source x compiler x flags. A kernel is compiled once: later calls in this process reuse the
  loaded library, later processes the file. Writes go to a unique temporary name in the same
  directory and are renamed into place (atomic), so concurrent ranks or processes compiling
  the same kernel never see a partial file; a per-key lock avoids duplicate work within a
  process.
* **Running**: inputs are Arrow arrays passed zero-copy (buffer addresses from
  ``pa.Array.buffers()`` plus the array offset); outputs are Arrow buffers allocated here and
  filled by the kernel, which splits the rows over threads (``std::thread``; ctypes releases
  the GIL for the call). Columns with different chunk layouts are cut at the union of their
  chunk boundaries (slices, no copy).
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from opgraph.runtime.kernels.exprgen import ARROW, CTYPE, Kernel

__all__ = ["FLAGS", "STATS", "JitUnavailable", "KernelError", "cache_dir", "compiler", "load", "run"]

FLAGS = ["-O2", "-std=c++17", "-shared", "-fPIC", "-pthread", "-ffp-contract=off", "-fno-math-errno",
         "-fno-trapping-math"]

#: counters, for tests and ``explain``: compiler invocations, disk-cache hits, in-process hits, runs
STATS = {"compiles": 0, "disk_hits": 0, "memory_hits": 0, "runs": 0}


class JitUnavailable(Exception):
    """No compiled kernel can be used (no compiler, compilation failed, unexpected input
    types); ``reason`` is for the user/log; the caller takes the Arrow path."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class KernelError(Exception):
    """The kernel met a value it must reject (``fptosi`` of NaN/inf/out of range) at ``row``;
    the caller re-runs the Arrow path, which raises the documented error."""

    def __init__(self, row: int):
        super().__init__(f"kernel rejected row {row}")
        self.row = row


_log = logging.getLogger("opgraph.runtime.kernels")
_lock = threading.Lock()
_key_locks: dict[str, threading.Lock] = {}
_loaded: dict[str, Any] = {}
_by_source: dict[tuple[str, str], Any] = {}
_failed: dict[str, str] = {}
_compiler_cache: dict[tuple[str | None, str | None], tuple[str | None, str]] = {}


def compiler() -> tuple[str | None, str]:
    """(absolute path of the C++ compiler or None, a description / the reason there is none)."""
    env = os.environ.get("CXX")
    path_var = os.environ.get("PATH")
    hit = _compiler_cache.get((env, path_var))
    if hit is not None:
        return hit
    if env:
        found = shutil.which(env)
        result = (found, f"CXX={found}") if found else (None, f"CXX={env!r} is not an executable compiler")
    else:
        result = (None, "no C++ compiler (c++, g++ or clang++) on PATH; set CXX to use one")
        for cand in ("c++", "g++", "clang++"):
            found = shutil.which(cand)
            if found:
                result = (found, found)
                break
    _compiler_cache[(env, path_var)] = result
    return result


def cache_dir() -> Path:
    root = os.environ.get("OPGRAPH_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "opgraph"
    return base / "kernels"


def _identity(cxx: str) -> str:
    try:
        st = os.stat(cxx)
        return f"{os.path.realpath(cxx)}:{st.st_size}:{int(st.st_mtime)}"
    except OSError:
        return cxx


def _key(source: str, cxx: str) -> str:
    h = hashlib.sha256()
    h.update(source.encode())
    h.update(b"\0" + _identity(cxx).encode() + b"\0" + " ".join(FLAGS).encode())
    return h.hexdigest()


def _compile(source: str, key: str, cxx: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_src = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".cpp", dir=out.parent)
    tmp_so = tmp_src[:-4] + ".so"
    try:
        with os.fdopen(fd, "w") as f:
            f.write(source)
        STATS["compiles"] += 1
        proc = subprocess.run([cxx, *FLAGS, "-o", tmp_so, tmp_src], capture_output=True, text=True, timeout=300,
                              check=False)
        if proc.returncode != 0:
            raise JitUnavailable(f"kernel compilation failed ({cxx}): {proc.stderr.strip()[-2000:]}")
        os.replace(tmp_src, out.with_suffix(".cpp"))
        os.replace(tmp_so, out)  # atomic: readers see no file or the whole file
    except (OSError, subprocess.SubprocessError) as e:
        raise JitUnavailable(f"kernel compilation failed ({cxx}): {e}") from None
    finally:
        for p in (tmp_src, tmp_so):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


def load(source: str) -> Any:
    """The ``og_expr_kernel`` function of ``source``, compiling it unless it is cached."""
    cxx, why = compiler()
    if cxx is None:
        raise JitUnavailable(why)
    fn = _by_source.get((cxx, source))  # str hashes are cached: no re-hashing of the source
    if fn is not None:
        STATS["memory_hits"] += 1
        return fn
    key = _key(source, cxx)
    fn = _loaded.get(key)
    if fn is not None:
        STATS["memory_hits"] += 1
        return fn
    if key in _failed:
        raise JitUnavailable(_failed[key])
    with _lock:
        klock = _key_locks.setdefault(key, threading.Lock())
    with klock:
        fn = _loaded.get(key)
        if fn is not None:
            return fn
        path = cache_dir() / f"{key}.so"
        try:
            if path.exists():
                STATS["disk_hits"] += 1
            else:
                _compile(source, key, cxx, path)
            lib = ctypes.CDLL(str(path))
        except JitUnavailable as e:
            _failed[key] = e.reason
            _log.warning("opgraph: expression kernel not compiled, using Arrow compute: %s", e.reason)
            raise
        except OSError as e:
            _failed[key] = f"cannot load compiled kernel {path}: {e}"
            raise JitUnavailable(_failed[key]) from None
        fn = lib.og_expr_kernel
        fn.restype = ctypes.c_int64
        fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32]
        _loaded[key] = fn
        _by_source[(cxx, source)] = fn
        return fn


def _threads(n: int) -> int:
    env = os.environ.get("OPGRAPH_EXPR_THREADS")
    if env and env.strip().isdigit():
        return max(1, int(env))
    from opgraph.runtime.kernels import kernel_threads  # cores / ranks sharing them

    return max(1, min(kernel_threads(), n // (1 << 18)))


def _as_array_input(value: Any, n: int, t: pa.DataType) -> pa.ChunkedArray | pa.Array:
    if isinstance(value, pa.Scalar):
        if value.type != t:
            value = value.cast(t)
        return pa.repeat(value, n) if value.is_valid else pa.nulls(n, t)
    if value.type != t:
        raise JitUnavailable(f"kernel input has type {value.type}, the plan says {t}")
    return value


def _chunks(v: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    return list(v.chunks) if isinstance(v, pa.ChunkedArray) else [v]


_ONES: list[pa.Buffer] = [pa.py_buffer(b"")]


def _ones(nbits: int) -> pa.Buffer:
    """An all-valid bitmap of at least ``nbits`` bits (for chunks without a validity buffer
    in a kernel variant that reads validity); shared, read-only, grown when needed."""
    size = max(8, (nbits + 63) // 64 * 8)
    buf = _ONES[0]
    if buf.size < size:
        buf = pa.py_buffer(b"\xff" * size)
        _ONES[0] = buf
    return buf


def run(kernel: Kernel, table: pa.Table, arrow_values: Sequence[Any]) -> list[Any]:
    """Runs ``kernel`` over ``table``; ``arrow_values`` are the Arrow part's results. Returns
    the region's yielded values (like ``expr_eval.eval_region``). Raises ``JitUnavailable``
    (use the Arrow path) or ``KernelError``."""
    n = table.num_rows
    for o in kernel.outputs:
        if o.kind == "column":
            want = ARROW.get(o.type or "") or (pa.string() if o.type == "!df.string" else None)
            if o.column not in table.column_names or table.column(o.column).type != want:
                raise JitUnavailable(f"column {o.column!r} is missing or not of the plan's type")
    cols = []
    chunked = False
    for kind, ref, t in kernel.inputs:
        if kind == "column":
            if ref not in table.column_names:
                raise JitUnavailable(f"unknown column {ref!r}")
            v = table.column(ref)
        else:
            v = arrow_values[int(ref)]
        v = _as_array_input(v, n, ARROW[t])
        chunked = chunked or isinstance(v, pa.ChunkedArray)
        if len(v) != n:
            raise JitUnavailable("kernel input length differs from the table's")
        cols.append(v)
    # two variants per kernel, not one per combination of inputs with nulls: every input
    # reads its validity as soon as one has nulls (a missing bitmap reads as all-valid)
    any_nulls = any(v.null_count > 0 for v in cols)
    nullable = [any_nulls] * len(cols)
    fn = load(kernel.source(nullable))
    out_nullable = kernel.output_nullable(nullable)
    STATS["runs"] += 1

    # cut at the union of chunk boundaries
    bounds = {0, n}
    for v in cols:
        pos = 0
        for c in _chunks(v):
            pos += len(c)
            bounds.add(pos)
    cuts = sorted(bounds)
    col_chunks = [_chunks(v) for v in cols]
    cursors = [[0, 0] for _ in cols]  # (chunk index, chunk start row)
    nin, nout = len(cols), len(kernel.output_types)
    pieces: list[list[pa.Array]] = [[] for _ in range(nout)]
    in_data = (ctypes.c_void_p * max(1, nin))()
    in_valid = (ctypes.c_void_p * max(1, nin))()
    in_off = (ctypes.c_int64 * max(1, nin))()
    out_data = (ctypes.c_void_p * max(1, nout))()
    out_valid = (ctypes.c_void_p * max(1, nout))()
    out_nulls = (ctypes.c_int64 * max(1, nout))()
    keep: list[Any] = []
    for s, e in itertools.pairwise(cuts):
        m = e - s
        if m <= 0:
            continue
        for k, (chs, cur) in enumerate(zip(col_chunks, cursors)):
            while cur[1] + len(chs[cur[0]]) <= s:
                cur[1] += len(chs[cur[0]])
                cur[0] += 1
            arr = chs[cur[0]]
            if s - cur[1] or e - cur[1] != len(arr):
                arr = arr.slice(s - cur[1], m)
            bufs = arr.buffers()
            validity, data = bufs[0], bufs[1]
            if data is None:
                raise JitUnavailable("kernel input without a data buffer")
            in_off[k] = arr.offset
            keep.append(arr)
            in_data[k] = data.address
            if nullable[k]:
                if validity is None:
                    validity = _ones(arr.offset + m)
                keep.append(validity)
                in_valid[k] = validity.address
            else:
                in_valid[k] = None
        outs: list[tuple[pa.Buffer, pa.Buffer | None]] = []
        for j, t in enumerate(kernel.output_types):
            width = CTYPE[t][1]
            nbytes = (m + 63) // 64 * 8 if width == 1 else m * (width // 8)
            data_buf = pa.allocate_buffer(max(nbytes, 8))
            valid_buf = pa.allocate_buffer((m + 63) // 64 * 8) if out_nullable[j] else None
            out_data[j] = data_buf.address
            out_valid[j] = valid_buf.address if valid_buf is not None else None
            outs.append((data_buf, valid_buf))
        err = fn(m, in_data, in_valid, in_off, out_data, out_valid, out_nulls, _threads(m))
        if err >= 0:
            raise KernelError(s + err)
        for j, t in enumerate(kernel.output_types):
            data_buf, valid_buf = outs[j]
            nulls = out_nulls[j] if valid_buf is not None else 0
            arr = pa.Array.from_buffers(ARROW[t], m, [valid_buf if nulls else None, data_buf], null_count=nulls)
            pieces[j].append(arr)
        keep.clear()

    results: list[Any] = []
    for j, t in enumerate(kernel.output_types):
        if chunked or len(pieces[j]) != 1:
            results.append(pa.chunked_array(pieces[j], type=ARROW[t]))
        else:
            results.append(pieces[j][0])
    out: list[Any] = []
    for o in kernel.outputs:
        if o.kind == "kernel":
            out.append(results[o.index])
        elif o.kind == "column":
            out.append(table.column(o.column))
        else:
            out.append(arrow_values[o.index])
    return out
