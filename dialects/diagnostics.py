"""Source locations of ops and located verification errors, shared by every dialect and pass.

Messages name the op and the user's source line: ``'df.filter' at etl.py:7:10: ...``.
"""

from __future__ import annotations

from xdsl.dialects.builtin import CallSiteLoc, FileLineColLoc, FusedLoc, NameLoc
from xdsl.ir import Attribute, Operation
from xdsl.utils.exceptions import VerifyException


def file_line_col(loc: Attribute) -> tuple[str, int, int] | None:
    """The first file:line:col inside a location attribute (through name/callsite/fused)."""
    if isinstance(loc, FileLineColLoc):
        return loc.filename.data, loc.line.data, loc.column.data
    if isinstance(loc, NameLoc):
        return file_line_col(loc.location)
    if isinstance(loc, CallSiteLoc):
        return file_line_col(loc.callee) or file_line_col(loc.caller)
    if isinstance(loc, FusedLoc):
        for inner in loc.locations:
            found = file_line_col(inner)
            if found is not None:
                return found
    return None


def op_location(op: Operation) -> tuple[str, int, int] | None:
    """The op's source location, or the nearest enclosing op's when it has none."""
    cur: Operation | None = op
    while cur is not None:
        found = file_line_col(cur.location)
        if found is not None:
            return found
        cur = cur.parent_op()
    return None


def where(op: Operation) -> str:
    """The op's own source location as ``file:line:col`` (``unknown location`` if none)."""
    loc = op.location
    if isinstance(loc, FileLineColLoc):  # the common case, without the general walk
        return f"{loc.filename.data}:{loc.line.data}:{loc.column.data}"
    found = file_line_col(loc)
    return f"{found[0]}:{found[1]}:{found[2]}" if found else "unknown location"


def describe(op: Operation) -> str:
    """``'df.filter' at etl.py:7:10`` (the enclosing op's location when the op has none)."""
    loc = op_location(op)
    return f"'{op.name}' at " + (f"{loc[0]}:{loc[1]}:{loc[2]}" if loc else "unknown location")


class OpVerifyException(VerifyException):
    """A verification error that knows the op it is about (``.op``)."""

    def __init__(self, op: Operation, message: str):
        super().__init__(message)
        self.op = op


def fail(op: Operation, message: str) -> OpVerifyException:
    """The error to raise from a verifier: ``'<op>' at <file:line:col>: <message>``."""
    return OpVerifyException(op, f"'{op.name}' at {where(op)}: {message}")
