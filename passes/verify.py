"""The ``verify`` pass: checks the module and reports the first failing op with its location.

xDSL's ``Operation.verify()`` raises an exception whose notes hold the whole module; here
each op is verified on its own (nested ops first, like MLIR) so the error is one line naming
the op and the user's source location, and becomes an ``IRError`` with ``file``/``line``.
Island attributes (``taskgraph.*`` on ``async.execute``) are checked too. With
``verify{upstream=true}`` the printed module is also verified by upstream MLIR (in a
subprocess, via ``opgraph.dialects.upstream_verify``).
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import (
    CallSiteLoc,
    FileLineColLoc,
    FusedLoc,
    ModuleOp,
    NameLoc,
)
from xdsl.ir import Attribute, Operation
from xdsl.passes import ModulePass
from xdsl.traits import NoTerminator
from xdsl.utils.exceptions import DiagnosticException, VerifyException

from opgraph.errors import IRError


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


def describe(op: Operation) -> str:
    """``'df.filter' at etl.py:7:10``."""
    loc = op_location(op)
    return f"'{op.name}' at " + (f"{loc[0]}:{loc[1]}:{loc[2]}" if loc else "unknown location")


def _message(op: Operation, err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if text.startswith(f"'{op.name}' at "):
        return text  # already located (opgraph verifiers use this form)
    if text.startswith(f"'{op.name}' "):
        text = text[len(op.name) + 3 :]
    elif text.startswith("Operation does not verify: "):
        text = text[len("Operation does not verify: ") :]
    return f"{describe(op)}: {text}"


def _first_error(op: Operation) -> tuple[Operation, str] | None:
    for region in op.regions:
        for block in region.blocks:
            for child in block.ops:
                found = _first_error(child)
                if found is not None:
                    return found
            if not block.ops and len(region.blocks) == 1 and not op.has_trait(NoTerminator):
                return op, f"{describe(op)}: empty block in a region that expects a terminator"
    try:
        op.verify(verify_nested_ops=False)
    except (VerifyException, DiagnosticException, ValueError) as e:
        return op, _message(op, e)
    return None


def find_verification_error(module: Operation) -> tuple[Operation, str] | None:
    """``(op, one-line message)`` for the first op that does not verify, else None."""
    try:
        module.verify()  # fast path: one recursive verification
        found = None
    except (VerifyException, DiagnosticException, ValueError):
        found = _first_error(module)  # slow path: locate the innermost failing op
    if found is not None:
        return found
    from opgraph.dialects.taskgraph import verify_islands

    try:
        verify_islands(module)
    except VerifyException as e:
        text = str(e).strip().splitlines()[0]
        return getattr(e, "op", module), text
    return None


def verify_module(module: Operation, upstream: bool = False) -> None:
    """Raises ``IRError`` (with file/line of the failing op) if the module does not verify."""
    found = find_verification_error(module)
    if found is not None:
        op, message = found
        loc = op_location(op)
        raise IRError(message, file=loc[0] if loc else None, line=loc[1] if loc else None)
    if upstream:
        verify_upstream(module)


def verify_upstream(module: Operation) -> None:
    """Prints the module and verifies it with upstream MLIR; raises IRError on failure."""
    from opgraph.dialects.context import print_module
    from opgraph.dialects.upstream_verify import verify_text

    error = verify_text(print_module(module))
    if error:
        lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
        first = next((ln for ln in lines if "error:" in ln), lines[0] if lines else "")
        raise IRError(f"upstream MLIR rejects the IR: {first}")


@dataclass(frozen=True)
class VerifyPass(ModulePass):
    """Verifies the module (xDSL verifiers + island attributes; upstream MLIR if asked)."""

    name = "verify"

    upstream: bool = False

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        verify_module(op, upstream=self.upstream)
