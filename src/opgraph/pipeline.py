"""``@og.pipeline``: turns a Python function over tables into a traced IR module."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Region
from xdsl.utils.exceptions import VerifyException

from opgraph.errors import OpgraphError
from opgraph.table import Table, input_table
from opgraph.tracing import SourceLoc, display_path, gc_paused, trace_error, tracing


def _is_table_data(value: Any) -> bool:
    if isinstance(value, pa.Table):
        return True
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency of the dev extra only
        return False
    return isinstance(value, pd.DataFrame)


@dataclass
class Traced:
    """A traced pipeline: the IR module and the data bound to its ``df.input`` ops."""

    module: ModuleOp
    inputs: list[pa.Table] = field(default_factory=list)
    name: str = "pipeline"


class Pipeline:
    """A pipeline function. ``trace`` records IR; ``compile`` runs the compiler passes."""

    def __init__(self, fn):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = fn.__name__
        code = fn.__code__
        self.definition = SourceLoc(display_path(code.co_filename), code.co_firstlineno, 1)

    def __repr__(self) -> str:
        return f"<opgraph.Pipeline {self.name} at {self.definition}>"

    def trace_full(self, *args: Any, **kwargs: Any) -> Traced:
        """The traced module and its bound inputs.

        Every op is built by its constructor from the ops' schema-inference functions, so
        the module is not verified again here: compiling verifies its input once (and
        ``trace`` verifies what it returns)."""
        with gc_paused():
            return self._trace_full(args, kwargs)

    def _trace_full(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Traced:
        try:
            bound = inspect.signature(self.fn).bind(*args, **kwargs)
        except TypeError as e:
            raise OpgraphError(f"cannot call pipeline '{self.name}': {e}", self.definition.file, self.definition.line) from None
        bound.apply_defaults()
        with tracing(self.name) as state:
            call_args = {}
            for name, value in bound.arguments.items():
                call_args[name] = input_table(name, value, self.definition) if _is_table_data(value) else value
            result = self.fn(**call_args)
            outputs = self._outputs(result)
            block = state.block
            ret = func.ReturnOp(*[t.ir_value for t in outputs])
            ret.location = self.definition.attr()
            block.add_op(ret)
        fn_op = func.FuncOp(self.name, ([], [t.ir_value.type for t in outputs]), Region(block))
        fn_op.location = self.definition.attr()
        module = ModuleOp([*state.module_ops, fn_op])  # dl.model / dl.loss ops first
        return Traced(module, state.inputs, self.name)

    def trace(self, *args: Any, **kwargs: Any) -> ModuleOp:
        """The traced module (``builtin.module`` holding ``func.func @<name>``), verified."""
        module = self.trace_full(*args, **kwargs).module
        try:
            with gc_paused():
                module.verify()
        except VerifyException as e:  # the tracer built invalid IR: an opgraph bug, say so
            raise OpgraphError(f"internal error: traced IR does not verify: {e}", self.definition.file, self.definition.line) from e
        return module

    def _outputs(self, result: Any) -> list[Table]:
        if result is None:
            return []
        items = list(result) if isinstance(result, tuple) else [result]
        for item in items:
            if not isinstance(item, Table):
                raise trace_error(
                    f"pipeline '{self.name}' must return a table, a tuple of tables or nothing; got {type(item).__name__}",
                    self.definition,
                )
        return items

    def compile(self, *args: Any, hw: Any = "laptop", pass_pipeline: str | None = None, **kwargs: Any):
        """Traces and compiles for the hardware ``hw`` (packaged name, YAML path or spec)."""
        from opgraph.driver import compile_traced

        return compile_traced(self.trace_full(*args, **kwargs), hw=hw, pass_pipeline=pass_pipeline)

    def run(self, *args: Any, engine: str = "local", ranks: int = 1, hw: Any = None, placement: str | None = None, **kwargs: Any):
        """Executes the pipeline (returns pyarrow.Table(s)). ``placement="plan"`` runs each
        island on the ranks the compiler chose for it (at most ``ranks``); ``"all"`` (the
        default, or ``OPGRAPH_PLACEMENT``) runs every island on all ``ranks``."""
        from opgraph.driver import run_traced

        return run_traced(self.trace_full(*args, **kwargs), engine=engine, ranks=ranks, hw=hw, placement=placement)

    def __call__(self, *args: Any, **kwargs: Any):
        return self.run(*args, **kwargs)


def pipeline(fn) -> Pipeline:
    """Decorator: ``@og.pipeline def etl(...): ...``."""
    return Pipeline(fn)
