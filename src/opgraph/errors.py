"""User-facing errors. Every error a user can cause is an OpgraphError; the CLI prints
it as one line ``error: <place>: <message>`` and exits with code 2."""

from __future__ import annotations


class OpgraphError(Exception):
    """An error caused by user input (pipeline code, spec file, CLI arguments, IR file)."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    @property
    def place(self) -> str | None:
        if self.file is None:
            return None
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def __str__(self) -> str:
        return f"{self.place}: {self.message}" if self.place else self.message

    def cli_line(self) -> str:
        return f"error: {self}"


class TraceError(OpgraphError):
    """A mistake in the user's pipeline found while tracing (unknown column, bad types)."""


class SpecError(OpgraphError):
    """An invalid hardware spec: ``file`` is the spec path, the message names the field."""


class PassError(OpgraphError):
    """Unknown pass, bad pass option, or a pass that rejected the IR."""


class IRError(OpgraphError):
    """IR that does not parse or verify (e.g. the input of ``opgraph opt``)."""


class UsageError(OpgraphError):
    """Bad command-line usage: missing files, bad ``--arg`` values, unknown entry."""
