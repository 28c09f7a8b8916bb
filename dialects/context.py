"""One place that knows every dialect opgraph IR may contain, and how IR is printed/parsed.

Printing is generic MLIR syntax with locations (``loc("etl.py":7:10)``) so that every file
parses in upstream MLIR with our IRDL dialects loaded; parsing reads the same text back.
"""

from __future__ import annotations

import importlib
import re
from io import StringIO

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Dialect, Operation
from xdsl.parser import Parser
from xdsl.utils.exceptions import ParseError
from xdsl.printer import Printer

from opgraph.errors import IRError

# (dialect name, module, attribute holding the xDSL Dialect)
_DIALECTS: tuple[tuple[str, str, str], ...] = (
    ("builtin", "xdsl.dialects.builtin", "Builtin"),
    ("func", "xdsl.dialects.func", "Func"),
    ("arith", "xdsl.dialects.arith", "Arith"),
    ("math", "xdsl.dialects.math", "Math"),
    ("llvm", "xdsl.dialects.llvm", "LLVM"),
    ("dlti", "xdsl.dialects.dlti", "DLTI"),
    ("mpi", "opgraph.dialects.upstream.mpi_dialect", "MPI"),  # upstream mpi subset
    ("async", "opgraph.dialects.upstream.async_dialect", "Async"),
    ("vector", "opgraph.dialects.upstream.vector_yield", "Vector"),
    ("df", "opgraph.dialects.dataframe", "DataFrame"),
    ("dl", "opgraph.dialects.dl", "DL"),
    ("comm", "opgraph.dialects.comm", "Comm"),
    ("machine", "opgraph.dialects.machine", "Machine"),
    ("taskgraph", "opgraph.dialects.taskgraph", "TaskGraph"),
)


def _loader(module: str, attr: str):
    def load() -> Dialect:
        return getattr(importlib.import_module(module), attr)

    return load


def make_context() -> Context:
    """An xDSL context with every dialect opgraph IR may use (loaded lazily)."""
    ctx = Context()
    for name, module, attr in _DIALECTS:
        ctx.register_dialect(name, _loader(module, attr))
    return ctx


def print_module(op: Operation) -> str:
    """Generic-form MLIR text with source locations; ends with a newline."""
    out = StringIO()
    Printer(stream=out, print_generic_format=True, print_debuginfo=True).print_op(op)
    text = out.getvalue()
    return text if text.endswith("\n") else text + "\n"


def parse_module(text: str, file_name: str = "<input>", ctx: Context | None = None) -> ModuleOp:
    """Parses MLIR text (generic or custom syntax) into a module; errors become IRError
    located at the offending line."""
    try:
        return Parser(ctx or make_context(), text, file_name).parse_module()
    except ParseError as e:
        raise _located_error(str(e), file_name) from None


def _located_error(text: str, file_name: str) -> IRError:
    # xDSL parse errors read "file:line:col", the source line, a caret line, then the message
    lines = [line for line in text.splitlines() if line.strip()]
    match = re.match(r"^(.*):(\d+):(\d+)$", lines[0].strip()) if lines else None
    message = lines[-1].strip() if len(lines) > 1 else "cannot parse IR"
    if match:
        return IRError(message, file=match.group(1), line=int(match.group(2)))
    return IRError(message, file=file_name)
