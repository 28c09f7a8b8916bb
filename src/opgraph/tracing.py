"""Trace state: the function body being built and the user's source locations.

Like JAX's tracer, the user API only records IR here; nothing is computed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

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
        return FileLineColLoc(StringAttr(self.file), IntAttr(self.line), IntAttr(self.column))

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def display_path(filename: str) -> str:
    """A path as the user would write it: relative to the working directory when inside it."""
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel


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
    column = 1
    try:
        positions = list(frame.f_code.co_positions())
        pos = positions[frame.f_lasti // 2]
        if pos[2] is not None:
            column = pos[2] + 1
    except (IndexError, ValueError):
        pass
    return SourceLoc(display_path(frame.f_code.co_filename), frame.f_lineno, column)


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
