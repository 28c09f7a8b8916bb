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
    return SourceLoc(display_path(code.co_filename), frame.f_lineno, _column(code, frame.f_lasti))


# code object id -> (code object, its instruction positions); the entry keeps the code object
# alive, so its id cannot be reused while cached
_positions: dict[int, tuple[CodeType, list]] = {}


def _column(code: CodeType, lasti: int) -> int:
    """1-based column of the instruction at ``lasti`` (1 when unknown)."""
    entry = _positions.get(id(code))
    if entry is None or entry[0] is not code:
        if len(_positions) >= 1024:
            _positions.clear()
        entry = (code, list(code.co_positions()))
        _positions[id(code)] = entry
    try:
        pos = entry[1][lasti // 2]
    except (IndexError, ValueError):
        return 1
    return pos[2] + 1 if pos[2] is not None else 1


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector while building or transforming IR.

    IR is a large graph of small objects with reference cycles (ops <-> values <-> uses),
    and each automatic full collection rescans all of it: for big pipelines the collector
    took about a third of tracing + compiling time. Reference counting still frees
    everything acyclic; cyclic garbage is collected as usual once the collector resumes.
    Nested uses are fine: only the outermost one resumes it.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


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

    def append(self, op: Operation, loc: SourceLoc | None = None) -> Operation:
        op.location = (loc or user_location()).attr()
        self.block.add_op(op)
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
