"""Trace state: the function body being built and the user's source locations.

Like JAX's tracer, the user API only records IR here; nothing is computed.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import CodeType

from xdsl.dialects.builtin import FileLineColLoc, IntAttr, StringAttr
from xdsl.ir import Block, Operation

from opgraph.ir_construct import append_op
from opgraph.errors import TraceError

_OPGRAPH_ROOTS = (
    str(Path(__file__).resolve().parent),  # src/opgraph
    str(Path(__file__).resolve().parent.parent.parent / "dialects"),
    str(Path(__file__).resolve().parent.parent.parent / "passes"),
    str(Path(__file__).resolve().parent.parent.parent / "runtime"),
)


@dataclass(frozen=True)
class SourceLoc:
    file: str
    line: int
    column: int

    def attr(self) -> FileLineColLoc:
        return _loc_attr(self.file, self.line, self.column)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@lru_cache(maxsize=1 << 16)
def _loc_attr(file: str, line: int, column: int) -> FileLineColLoc:
    # attributes are immutable values: every op traced at one place shares one location
    return FileLineColLoc(StringAttr(file), IntAttr(line), IntAttr(column))


def display_path(filename: str) -> str:
    """A path as the user would write it: relative to the working directory when inside it."""
    return _display_path(filename, os.getcwd())


@lru_cache(maxsize=4096)
def _display_path(filename: str, cwd: str) -> str:
    try:
        rel = os.path.relpath(filename, cwd)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel


@lru_cache(maxsize=4096)
def _is_internal(filename: str) -> bool:
    resolved = os.path.realpath(filename)
    return resolved.startswith(_OPGRAPH_ROOTS) or "/xdsl/" in resolved or filename.startswith("<frozen")


def user_location() -> SourceLoc:
    """Location of the innermost stack frame outside opgraph: the user's call."""
    frame = sys._getframe(1)
    while frame is not None and _is_internal(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return SourceLoc("<unknown>", 0, 0)
    code = frame.f_code
    # while tracing, paths are relative to the working directory the trace started in
    # (read once per trace, not once per op)
    cwd = _current[-1].cwd if _current else os.getcwd()
    line, column = _line_column(code, frame.f_lasti)
    if line is None:
        line = frame.f_lineno
    return _source_loc(_display_path(code.co_filename, cwd), line, column)


@lru_cache(maxsize=1 << 16)
def _source_loc(file: str, line: int, column: int) -> SourceLoc:
    # locations are immutable values: every op traced at one place shares one
    return SourceLoc(file, line, column)


# code object id -> (code object, its instruction positions); the entry keeps the code object
# alive, so its id cannot be reused while cached
_positions: dict[int, tuple[CodeType, list]] = {}


def _line_column(code: CodeType, lasti: int) -> tuple[int | None, int]:
    """Line (None when unknown) and 1-based column (1 when unknown) of the instruction at
    ``lasti``. The line is ``frame.f_lineno``'s, read from the same position table that
    gives the column: computing ``f_lineno`` decodes the code's line table on every call."""
    entry = _positions.get(id(code))
    if entry is None or entry[0] is not code:
        if len(_positions) >= 1024:
            _positions.clear()
        entry = (code, list(code.co_positions()))
        _positions[id(code)] = entry
    try:
        pos = entry[1][lasti // 2]
    except (IndexError, ValueError):
        return None, 1
    return pos[0], pos[2] + 1 if pos[2] is not None else 1


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector while building or transforming IR.

    IR is a large graph of small objects with reference cycles (ops <-> values <-> uses),
    and each automatic full collection rescans all of it: for big pipelines the collector
    took about a third of tracing + compiling time. Reference counting still frees
    everything acyclic; cyclic garbage is collected as usual once the collector resumes.
    Nested uses are fine: only the outermost one resumes it.

    On resuming, the objects allocated meanwhile go straight to the collector's oldest
    generation (``promote_to_oldest``) instead of being scanned by a young collection at the
    next allocation (then again when promoted): a traced or compiled module lives on, and
    what became garbage waits for the next full collection (bounded, see there).
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        promote_to_oldest()
        gc.enable()


# Objects moved to the oldest generation by promote_to_oldest since the last full collection
# (and that collection's number, gc.get_stats()[2]["collections"]). Unlike objects promoted
# by young collections, they do not count towards the next automatic full collection, so
# promotion stops past PROMOTE_LIMIT objects: collection then goes on as usual (and the
# count restarts after the next full collection). A 10,000-op trace + compile allocates
# about 1.2 million tracked objects.
PROMOTE_LIMIT = 2_000_000
_promoted = 0
_promoted_since = -1


def promote_to_oldest() -> bool:
    """Moves every object the collector tracks into its oldest generation without scanning
    them (``gc.freeze()`` + ``gc.unfreeze()``, which also resets the young generation's
    allocation count). Not done when something else froze objects (``gc.freeze`` users,
    e.g. before forking), or past ``PROMOTE_LIMIT``; returns whether it was done."""
    global _promoted, _promoted_since
    full = gc.get_stats()[-1]["collections"]
    if full != _promoted_since:
        _promoted, _promoted_since = 0, full
    young = gc.get_count()[0]
    if gc.get_freeze_count() or _promoted + young > PROMOTE_LIMIT:
        return False
    gc.freeze()
    gc.unfreeze()
    _promoted += young
    return True


def trace_error(message: str, loc: SourceLoc | None = None) -> TraceError:
    loc = loc or user_location()
    return TraceError(message, file=loc.file, line=loc.line)


@dataclass
class TraceState:
    """The function body under construction."""

    block: Block = field(default_factory=Block)
    pipeline_name: str = "pipeline"
    temp_counter: int = 0
    inputs: list = field(default_factory=list)  # data bound to df.input ops, by index
    module_ops: list[Operation] = field(default_factory=list)  # top-level ops (dl.model, ...)
    cwd: str = field(default_factory=os.getcwd)  # source paths are shown relative to it

    def append(self, op: Operation, loc: SourceLoc | None = None) -> Operation:
        op.location = (loc or user_location()).attr()
        append_op(self.block, op)  # = self.block.add_op(op)
        return op

    def fresh_name(self, prefix: str) -> str:
        self.temp_counter += 1
        return f"__{prefix}{self.temp_counter}"


_current: list[TraceState] = []


def current_trace() -> TraceState:
    if not _current:
        raise trace_error(
            "opgraph operations must be called inside an @og.pipeline function (while it is traced)"
        )
    return _current[-1]


class tracing:
    """Context manager installing a fresh TraceState."""

    def __init__(self, name: str):
        self.state = TraceState(pipeline_name=name)

    def __enter__(self) -> TraceState:
        if _current:
            raise trace_error("pipelines cannot be nested: call the inner pipeline's body directly")
        _current.append(self.state)
        return self.state

    def __exit__(self, *exc) -> None:
        _current.pop()
