"""Partitioned I/O: sources split their work across the ranks, sinks write one part file per
rank into a staging directory that is committed atomically when the whole run succeeded.

Sources (every rank calls, collectively):

* Parquet: the (file, row group) pieces of every matching file, in path order, are split
  into contiguous runs of about equal row counts, one per rank; a rank reads only its row
  groups and only the plan's columns (projection pushed into the reader).
* Arrow IPC files: the same with record batches (memory-mapped, zero-copy).
* CSV: whole files, contiguous runs by size (a CSV file cannot be split safely without
  parsing it: quoted fields may hold newlines); types are the plan's (inferred at trace
  time), and an empty field is null (as pandas reads it).
* When there are fewer pieces than ranks, the rows read are spread evenly over the ranks
  afterwards (contiguous slices, so the global row order stays the file order).

Paths are a file, a directory (every ``.parquet``/``.csv``/``.arrow`` file below it, hidden
``.``/``_`` names skipped) or a glob; files are taken in natural order (``part-2`` before
``part-10``), which reads back a directory written by a sink in rank order.

Sinks: ``<path>/part-<rank>.<ext>`` (every rank writes one, possibly empty, so the directory
always carries the schema), staged in a hidden sibling ``.<name>.tmp-<id>`` and moved over
``<path>`` by ``commit`` - an atomic exchange (``renameat2(RENAME_EXCHANGE)`` on Linux,
else two renames) after which the old output is deleted. A failed run deletes its staging
directories and leaves any existing output untouched.
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
import secrets
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from opgraph.runtime import local_ops as L
from opgraph.runtime.communicator import Communicator
from opgraph.runtime.kernels import kernel_threads, kernel_threads_capped
from opgraph.runtime.parallel_ops import rebalance
from pyarrow import ipc

__all__ = [
    "SINK_FORMATS",
    "SourceError",
    "commit_directory",
    "discard_directory",
    "expand_paths",
    "read_source",
    "stage_directory",
    "write_part",
]

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
IPC_SUFFIXES = (".arrow", ".ipc", ".feather")
SINK_FORMATS = {"df.write_parquet": "parquet", "df.write_csv": "csv", "df.write_ipc": "arrow"}
SOURCE_OPS = ("df.read_parquet", "df.read_csv", "df.read_ipc")

#: a row-wise op run on each piece of a source as it is read (see read_source)
PieceFn = Callable[[pa.Table], pa.Table]


class SourceError(Exception):
    """A source or sink failed (missing files, unreadable data, types not as traced)."""


def _natural_key(path: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def expand_paths(path: str, suffixes: Sequence[str]) -> list[str]:
    """The files a source path names (the frontend's rules, natural order)."""
    if any(ch in path for ch in "*?["):
        files = glob.glob(path)
    elif os.path.isdir(path):
        files = [
            os.path.join(root, f)
            for root, dirs, names in os.walk(path)
            for f in names
            if f.endswith(tuple(suffixes)) and not f.startswith((".", "_"))
        ]
        files = [f for f in files if not any(part.startswith(".") for part in Path(os.path.relpath(f, path)).parts[:-1])]
    elif os.path.exists(path):
        files = [path]
    else:
        raise SourceError(f"no such file or directory: '{path}'")
    if not files:
        raise SourceError(f"no {'/'.join(suffixes)} files match '{path}'")
    return sorted(files, key=_natural_key)


def _split(weights: Sequence[int], n: int, rank: int) -> range:
    """The contiguous run of pieces rank ``rank`` of ``n`` reads (pieces go to the rank whose
    share of the total holds the piece's middle)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0:
        return range(0)
    total = w.sum()
    if total <= 0:
        owner = (np.arange(len(w)) * n) // len(w)
    else:
        mid = np.cumsum(w) - w / 2
        owner = np.minimum((mid * n / total).astype(np.int64), n - 1)
    idx = np.nonzero(owner == rank)[0]
    return range(int(idx[0]), int(idx[-1]) + 1) if len(idx) else range(0)


def _with_columns(table: pa.Table, schema: pa.Schema, path: str) -> pa.Table:
    """The schema's columns of ``table`` (missing ones all null), cast to the plan's types."""
    arrays = []
    fields = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if pa.types.is_dictionary(col.type) and col.type.value_type == f.type:
                # kept encoded (read_dictionary); the executor decodes it where needed
                arrays.append(col)
                fields.append(f.with_type(col.type))
                continue
            if col.type != f.type:
                try:
                    col = L._cast_column(col, f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise SourceError(f"column '{f.name}' of '{path}' does not convert to {f.type} as traced: {e}") from None
            arrays.append(col)
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
        fields.append(f)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


#: read Parquet files through a memory map: the decoders read the (page-cached) file in
#: place instead of copying it into read buffers first - ~10-25% less CPU for the 10M-row
#: ETL events file here (benchmarks/bench_ops.py etl). Inputs are read-only to us: our
#: sinks never rewrite a file in place (staging directory + atomic rename).
PARQUET_MEMORY_MAP = os.environ.get("OPGRAPH_PARQUET_MMAP", "1").strip().lower() not in ("0", "false", "no", "off")


def _by_file(pieces: Sequence[tuple[str, int, int]]) -> list[tuple[str, list[int]]]:
    """``(file, row group, rows)`` pieces as ``(file, [row groups])`` runs, in order."""
    out: list[tuple[str, list[int]]] = []
    for f, g, _ in pieces:
        if out and out[-1][0] == f:
            out[-1][1].append(g)
        else:
            out.append((f, [g]))
    return out


#: a row-wise op fused into a read (``read_source``'s ``each_piece``) sees pieces of about
#: this many rows: small enough to stay in cache between the decoder and the op
_PIECE_ROWS = 1 << 20


def _row_group_pieces(mine: Sequence[tuple[str, int, int]]) -> list[tuple[str, list[int]]]:
    """Runs of consecutive row groups of one file, each of about ``_PIECE_ROWS`` rows."""
    out: list[tuple[str, list[int]]] = []
    rows = 0
    for f, g, n in mine:
        if out and out[-1][0] == f and rows < _PIECE_ROWS:
            out[-1][1].append(g)
            rows += n
        else:
            out.append((f, [g]))
            rows = n
    return out


def _read_parquet(files: list[str], schema: pa.Schema, comm: Communicator, each_piece: PieceFn | None = None) -> tuple[pa.Table, int]:
    pieces: list[tuple[str, int, int]] = []
    metas = {}
    for f in files:
        try:
            meta = pq.read_metadata(f)
        except (pa.ArrowInvalid, OSError) as e:
            raise SourceError(f"cannot read Parquet footer of '{f}': {e}") from None
        metas[f] = meta
        for g in range(meta.num_row_groups):
            pieces.append((f, g, meta.row_group(g).num_rows))
    mine = [pieces[i] for i in _split([p[2] for p in pieces], comm.size, comm.rank)]
    # this rank's row groups in contiguous runs, one per kernel thread, each decoded on its
    # own thread: Arrow's use_threads splits by column only, so one expensive column (an
    # int64 key that fell back from dictionary to plain pages) kept the other core idle
    budget = kernel_threads()
    threads = min(budget, len(mine))
    if each_piece is None:
        runs = [[mine[i] for i in _split([p[2] for p in mine], threads, t)] for t in range(threads)]
        tasks = [(f, groups, threads == 1) for run in runs for f, groups in _by_file(run)]
    else:  # pieces of ~_PIECE_ROWS rows, taken by whichever thread is free
        tasks = [(f, groups, threads == 1) for f, groups in _row_group_pieces(mine)]

    def read(task: tuple[str, list[int], bool]) -> pa.Table:
        f, groups, use_threads = task
        file_schema = metas[f].schema.to_arrow_schema()
        present = set(file_schema.names)
        cols = [c for c in schema.names if c in present]
        # string columns stay dictionary-encoded (decoding Parquet's dictionary pages into
        # plain strings was most of the read time); the executor decodes them lazily
        dict_cols = [
            c for c in cols
            if pa.types.is_string(schema.field(c).type) and pa.types.is_string(file_schema.field(c).type)
        ]
        try:
            pf = pq.ParquetFile(f, metadata=metas[f], read_dictionary=dict_cols or None, memory_map=PARQUET_MEMORY_MAP)
            t = pf.read_row_groups(groups, columns=cols, use_threads=use_threads)
        except (pa.ArrowInvalid, OSError) as e:
            raise SourceError(f"cannot read '{f}': {e}") from None
        t = _with_columns(t, schema, f)
        if each_piece is not None:
            with kernel_threads_capped(budget // threads):  # the threads share the cores
                t = each_piece(t)
        return t

    if len(tasks) > 1 and threads > 1:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="opgraph-read") as pool:
            tables = list(pool.map(read, tasks))
    else:
        tables = [read(task) for task in tasks]
    return _concat_pieces(tables, schema, each_piece), len(pieces)


def _concat_pieces(tables: list[pa.Table], schema: pa.Schema, each_piece: PieceFn | None) -> pa.Table:
    """The pieces a reader read (``each_piece`` applied to each) as one table."""
    if not tables:
        empty = schema.empty_table()
        return empty if each_piece is None else each_piece(empty)
    if len(tables) == 1:
        return tables[0]
    if len({t.schema for t in tables}) > 1:  # dictionary-encoded in some pieces only
        tables = [L.decode_dictionaries(t) for t in tables]
        return L.concat_tables(tables, tables[0].schema)
    return pa.concat_tables(tables)


def _read_ipc(files: list[str], schema: pa.Schema, comm: Communicator, each_piece: PieceFn | None = None) -> tuple[pa.Table, int]:
    readers = []
    pieces: list[tuple[int, int, int]] = []
    for fi, f in enumerate(files):
        try:
            source = pa.memory_map(f, "r")
            try:
                reader = ipc.open_file(source)
                batches = None
            except pa.ArrowInvalid:  # the stream format: no random access to batches
                source.seek(0)
                batches = list(ipc.open_stream(source))
                reader = None
        except (pa.ArrowInvalid, OSError) as e:
            raise SourceError(f"cannot read Arrow IPC file '{f}': {e}") from None
        readers.append((reader, batches))
        count = reader.num_record_batches if reader is not None else len(batches)  # type: ignore[arg-type]
        for b in range(count):
            rows = reader.get_batch(b).num_rows if reader is not None else batches[b].num_rows  # type: ignore[index]
            pieces.append((fi, b, rows))
    mine = _split([p[2] for p in pieces], comm.size, comm.rank)
    tables = []
    for i in mine:
        fi, b, _ = pieces[i]
        reader, batches = readers[fi]
        batch = reader.get_batch(b) if reader is not None else batches[b]
        t = pa.Table.from_batches([batch])
        cols = [c for c in schema.names if c in t.column_names]
        t = _with_columns(t.select(cols), schema, files[fi])
        tables.append(t if each_piece is None else each_piece(t))
    if each_piece is not None:
        return _concat_pieces(tables, schema, each_piece), len(pieces)
    return L.concat_tables(tables, schema), len(pieces)


def _read_csv(files: list[str], schema: pa.Schema, comm: Communicator, each_piece: PieceFn | None = None) -> tuple[pa.Table, int]:
    sizes = [max(os.path.getsize(f), 1) for f in files]
    mine = _split(sizes, comm.size, comm.rank)
    tables = []
    for i in mine:
        f = files[i]
        convert = pacsv.ConvertOptions(
            column_types={fld.name: fld.type for fld in schema},
            include_columns=list(schema.names),
            include_missing_columns=True,
            strings_can_be_null=True,
        )
        try:
            t = pacsv.read_csv(f, convert_options=convert)
        except (pa.ArrowInvalid, OSError) as e:
            raise SourceError(f"cannot read CSV '{f}' with the traced column types: {e}") from None
        t = _with_columns(t, schema, f)
        tables.append(t if each_piece is None else each_piece(t))
    if each_piece is not None:
        return _concat_pieces(tables, schema, each_piece), len(files)
    return L.concat_tables(tables, schema), len(files)


_READERS = {
    "df.read_parquet": (PARQUET_SUFFIXES, _read_parquet),
    "df.read_ipc": (IPC_SUFFIXES, _read_ipc),
    "df.read_csv": (CSV_SUFFIXES, _read_csv),
}


def read_source(op_name: str, path: str, schema: pa.Schema, comm: Communicator, each_piece: PieceFn | None = None) -> pa.Table:
    """This rank's part of a source (collective). ``each_piece``: a row-wise op applied to
    every piece (row groups, record batch, file) as soon as it is read, in the thread that
    read it - a fused filter: the whole source is never in memory at once, and the op sees
    each piece while it is still in cache."""
    suffixes, reader = _READERS[op_name]
    files = expand_paths(path, suffixes)
    table, pieces = reader(files, schema, comm, each_piece)
    if comm.size > 1 and pieces < comm.size:
        table = L.decode_dictionaries(table)
        table = rebalance(comm, table, comm.size)
    return table


# ---------------------------------------------------------------------------- sinks


def stage_directory(comm: Communicator, path: str) -> str:
    """A fresh hidden staging directory beside ``path``, made by rank 0 (collective)."""
    name = None
    if comm.rank == 0:
        target = Path(path)
        parent = target.resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        staging = parent / f".{target.name}.tmp-{secrets.token_hex(6)}"
        staging.mkdir()
        name = str(staging)
    if comm.size == 1:
        return name  # type: ignore[return-value]
    table = comm.bcast(pa.table({"p": [name]}) if comm.rank == 0 else None, 0)
    return table.column("p")[0].as_py()


def write_part(table: pa.Table, staging: str, rank: int, fmt: str) -> str:
    out = os.path.join(staging, f"part-{rank}.{fmt}")
    if fmt == "parquet":
        pq.write_table(table, out)
    elif fmt == "csv":
        pacsv.write_csv(table, out)
    elif fmt == "arrow":
        with pa.OSFile(out, "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    else:  # pragma: no cover - guarded by SINK_FORMATS
        raise ValueError(f"unknown sink format {fmt}")
    return out


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps two paths (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def commit_directory(staging: str, path: str) -> None:
    """Moves the staged directory to ``path``, replacing what was there atomically."""
    target = Path(path).resolve()
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    if _exchange(staging, str(target)):
        _remove(staging)  # now holds the previous output
        return
    old = target.parent / f".{target.name}.old-{secrets.token_hex(6)}"
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    _remove(str(old))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass


def discard_directory(staging: str) -> None:
    shutil.rmtree(staging, ignore_errors=True)
