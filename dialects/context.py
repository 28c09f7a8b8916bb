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


class _AttrCachingPrinter(Printer):
    """xDSL's printer that prints each attribute object once and then copies its text.

    Attribute printing is most of the printing time (a table type is printed for every use
    of a table value, thousands of times per module). Attributes are immutable, so the text
    of one attribute object is always the same: the first time it is printed into a buffer
    (with the printer's own code, so the bytes are the printer's) and copied to the output;
    later prints of the same object (or of an equal table/builtin type, see ``_equal_key``)
    copy the text. Text with line breaks is not cached (indentation depends on the place)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._attr_text: dict = {}

    def print_attribute(self, attribute) -> None:  # type: ignore[override]
        cache = self._attr_text
        key = (id(attribute), self.printing_location)
        hit = cache.get(key)
        if hit is not None and hit[0] is attribute:
            text = hit[1]
            self._current_column += len(text)
            self.stream.write(text)  # type: ignore[union-attr]
            return
        equal = _equal_key(attribute)
        if equal is not None:
            text = cache.get((equal, self.printing_location))
            if text is not None:
                cache[key] = (attribute, text)
                self._current_column += len(text)
                self.stream.write(text)  # type: ignore[union-attr]
                return
        stream = self.stream
        buffer = StringIO()
        self.stream = buffer
        try:
            super().print_attribute(attribute)
        finally:
            self.stream = stream
        text = buffer.getvalue()
        stream.write(text)  # type: ignore[union-attr]
        if "\n" not in text:
            cache[key] = (attribute, text)
            if equal is not None:
                cache[(equal, self.printing_location)] = text


def _equal_key(attribute):
    """A key under which equal attributes print alike: table types (names, element types,
    flags) and parameterless-or-integer builtin types; None for others (floats, for one,
    compare equal to values that print differently: 0.0 and -0.0)."""
    from opgraph.dialects.dataframe import TableType

    kind = type(attribute)
    if kind is TableType or kind in _SIMPLE_TYPES:
        try:
            hash(attribute)
        except TypeError:  # pragma: no cover - unhashable parameters
            return None
        return (kind, attribute)
    return None


def _simple_types() -> frozenset:
    from xdsl.dialects.builtin import Float32Type, Float64Type, IndexType, IntegerType

    return frozenset({IntegerType, Float32Type, Float64Type, IndexType})


_SIMPLE_TYPES = _simple_types()


def print_module(op: Operation) -> str:
    """Generic-form MLIR text with source locations; ends with a newline."""
    import gc

    out = StringIO()
    # no cyclic garbage collection meanwhile: collections would rescan the whole IR graph
    # (as in opgraph.tracing.gc_paused), printing allocates only acyclic strings
    paused = gc.isenabled()
    gc.disable()
    try:
        _AttrCachingPrinter(stream=out, print_generic_format=True, print_debuginfo=True).print_op(op)
    finally:
        if paused:
            gc.enable()
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
