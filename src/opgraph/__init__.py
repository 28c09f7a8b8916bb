"""opgraph: trace pandas-style pipelines into MLIR, choose parallelism, run them.

    import opgraph as og

    @og.pipeline
    def etl(path: str):
        t = og.read_parquet(path)
        return t[t["x"] > 0].groupby("k").agg(total=("x", "sum"))

``import opgraph`` is cheap: the tracing API (and with it xDSL, about a second to import)
is loaded on first use of one of its names, so runtime processes (MPI workers), which only
need ``opgraph.runtime`` and ``opgraph.plan_schema``, start without it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

from opgraph.errors import OpgraphError, TraceError

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_LAZY: dict[str, str] = {
    "Expr": "opgraph.expr",
    "exp": "opgraph.expr",
    "log": "opgraph.expr",
    "sqrt": "opgraph.expr",
    "where": "opgraph.expr",
    "Pipeline": "opgraph.pipeline",
    "clear_plan_cache": "opgraph.driver",
    "pipeline": "opgraph.pipeline",
    "Table": "opgraph.table",
    "concat": "opgraph.table",
    "from_arrow": "opgraph.table",
    "from_pandas": "opgraph.table",
    "read_csv": "opgraph.table",
    "read_ipc": "opgraph.table",
    "read_parquet": "opgraph.table",
    "write_csv": "opgraph.table",
    "write_ipc": "opgraph.table",
    "write_parquet": "opgraph.table",
}

__all__ = [
    "Expr",
    "OpgraphError",
    "Pipeline",
    "Table",
    "TraceError",
    "clear_plan_cache",
    "concat",
    "exp",
    "from_arrow",
    "from_pandas",
    "log",
    "pipeline",
    "read_csv",
    "read_ipc",
    "read_parquet",
    "sqrt",
    "where",
    "write_csv",
    "write_ipc",
    "write_parquet",
]
assert sorted(__all__) == sorted(["OpgraphError", "TraceError", *_LAZY])

if TYPE_CHECKING:  # for type checkers and IDEs: the names as if imported eagerly
    from opgraph.driver import clear_plan_cache
    from opgraph.expr import Expr, exp, log, sqrt, where
    from opgraph.pipeline import Pipeline, pipeline
    from opgraph.table import (
        Table,
        concat,
        from_arrow,
        from_pandas,
        read_csv,
        read_ipc,
        read_parquet,
        write_csv,
        write_ipc,
        write_parquet,
    )


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        if name != "pipeline":  # kept off the module dict: see _Package
            globals()[name] = value
        return value
    # og.dl pulls in JAX: import it only when used
    if name == "dl":
        return importlib.import_module("opgraph.dl")
    raise AttributeError(f"module 'opgraph' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "dl"})


class _Package(types.ModuleType):
    """``opgraph.pipeline`` is both the decorator and the submodule defining it. Importing
    the submodule binds the package attribute ``pipeline`` to the module; this property
    keeps ``og.pipeline`` the decorator whatever was imported first (as the eager
    ``from opgraph.pipeline import pipeline`` used to)."""

    @property
    def pipeline(self):
        return importlib.import_module("opgraph.pipeline").pipeline

    @pipeline.setter
    def pipeline(self, value) -> None:
        pass  # the import system binding the submodule


sys.modules[__name__].__class__ = _Package
