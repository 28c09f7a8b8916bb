"""opgraph: trace pandas-style pipelines into MLIR, choose parallelism, run them.

    import opgraph as og

    @og.pipeline
    def etl(path: str):
        t = og.read_parquet(path)
        return t[t["x"] > 0].groupby("k").agg(total=("x", "sum"))
"""

from opgraph.errors import OpgraphError, TraceError
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

__version__ = "0.1.0"

__all__ = [
    "Expr",
    "OpgraphError",
    "Pipeline",
    "Table",
    "TraceError",
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


def __getattr__(name: str):
    # og.dl pulls in JAX: import it only when used
    if name == "dl":
        import importlib

        return importlib.import_module("opgraph.dl")
    raise AttributeError(f"module 'opgraph' has no attribute {name!r}")
