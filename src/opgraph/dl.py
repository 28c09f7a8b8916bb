"""``og.dl``: deep learning on pipeline tables, recorded as ``dl`` dialect ops.

    X = og.dl.to_tensor(t, ["a", "b", "c"])          # tensor<?x3xf32>
    y = og.dl.to_tensor(t, ["target"])               # tensor<?x1xf32>  (a name, not a list: tensor<?xf32>)
    params, losses = og.dl.train(mlp, init, X, y, loss="mse", optimizer="adam", epochs=20)
    pred = og.dl.predict(mlp, params, X)
    og.write_parquet(og.dl.to_table(pred, ["pred"]), "out/pred")

Like the table API, nothing is computed while tracing: each call appends ops to the current
trace. ``model_fn(params, x)`` is a pure JAX function; it is lowered (``jax.export``) to
StableHLO once per (function, parameter shapes, feature shape) and kept in a top-level
``dl.model`` op. The batch dimension is lowered **symbolically** (``jax.export`` shape
polymorphism, a dimension variable ``b``), so one lowering serves training minibatches, the
last partial batch and prediction on any number of rows; the model must therefore work for
any batch size (no Python arithmetic on ``x.shape[0]``).

Parameters are a JAX pytree. Initial values (numpy/JAX arrays, Python scalars) become one
``dl.params`` op holding them (converted like ``jnp.asarray`` would: float64 becomes float32
unless ``jax_enable_x64``). In the IR a parameter set is one value of type
``tuple<leaf tensors...>`` (leaves in ``jax.tree_util`` order). ``train`` and ``load`` return
:class:`Params` (that value plus the pytree structure), usable wherever parameters are expected.
"""

from __future__ import annotations

import base64
import difflib
import functools
import inspect
import itertools
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax import export as jax_export
from xdsl.dialects.builtin import (
    DYNAMIC_INDEX,
    ArrayAttr,
    BoolAttr,
    DenseIntOrFPElementsAttr,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    TensorType,
    f64,
    i64,
)
from xdsl.ir import Attribute, Operation, SSAValue

from opgraph.dialects import dataframe as df
from opgraph.dialects import dl as dlops
from opgraph.table import Table
from opgraph.tracing import (
    SourceLoc,
    TraceState,
    current_trace,
    display_path,
    trace_error,
    user_location,
)

__all__ = [
    "Params",
    "Tensor",
    "load",
    "optimizer_names",
    "predict",
    "save",
    "sweep",
    "to_table",
    "to_tensor",
    "train",
]

# ---------------------------------------------------------------------- traced values


class Tensor:
    """A tensor value in a pipeline being traced (a builtin ``tensor<...>`` SSA value)."""

    def __init__(self, value: SSAValue):
        assert isinstance(value.type, TensorType)
        self._value = value

    @property
    def ir_value(self) -> SSAValue:
        return self._value

    @property
    def type(self) -> TensorType:
        return self._value.type  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int | None, ...]:
        """Static sizes, ``None`` for the dynamic (row) dimension."""
        return tuple(None if d == DYNAMIC_INDEX else d for d in self.type.get_shape())

    @property
    def ndim(self) -> int:
        return self.type.get_num_dims()

    @property
    def dtype(self) -> str:
        """numpy dtype name (``float32``...)."""
        return dlops.dtype_name(self.type.element_type)

    def __repr__(self) -> str:
        return f"<opgraph.dl.Tensor traced {dlops.tensor_str(self.type)}>"

    def __bool__(self) -> bool:
        raise trace_error("a traced tensor has no truth value")

    def __len__(self) -> int:
        raise trace_error("the row count of a traced tensor is unknown while tracing")

    def __iter__(self):
        raise trace_error("a traced tensor cannot be iterated while tracing")

    def __array__(self, *args: Any, **kwargs: Any):
        raise trace_error("a traced tensor has no values while tracing (use og.dl ops on it)")


KeyPath = tuple[tuple[str, "str | int"], ...]


class Params:
    """Traced model parameters: one IR value of type ``tuple<leaf tensors...>`` plus the pytree
    structure (``treedef``) that regroups the leaves into what ``model_fn`` receives.

    ``names`` label the leaves (``W1``, ``layers/0/w``) as in ``save`` files; ``shapes`` is the
    pytree of ``jax.ShapeDtypeStruct`` (``params.shapes["W1"].shape``)."""

    def __init__(self, value: SSAValue, treedef: Any, paths: Sequence[KeyPath]):
        self._value = value
        self.treedef = treedef
        self.paths = [tuple(p) for p in paths]
        self.names = leaf_names(self.paths)
        assert treedef.num_leaves == len(self.paths) == len(self.leaf_types)

    @property
    def ir_value(self) -> SSAValue:
        return self._value

    @property
    def leaf_types(self) -> list[TensorType]:
        return dlops.leaf_types(self._value)

    @property
    def shapes(self) -> Any:
        return jax.tree_util.tree_unflatten(
            self.treedef,
            [jax.ShapeDtypeStruct(tuple(t.get_shape()), np.dtype(dlops.dtype_name(t.element_type))) for t in self.leaf_types],
        )

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}: {dlops.tensor_str(t)}" for n, t in zip(self.names, self.leaf_types))
        return f"<opgraph.dl.Params traced {{{inner}}}>"

    def __bool__(self) -> bool:
        raise trace_error("traced parameters have no truth value")


def leaf_names(paths: Sequence[KeyPath]) -> list[str]:
    """One unique name per leaf: its key path joined with '/' (``param`` for a bare array)."""
    names: list[str] = []
    for path in paths:
        base = "/".join(str(k) for _, k in path) or "param"
        if base.startswith("__"):
            base = "p" + base
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


def _key_path(path: Sequence[Any]) -> KeyPath:
    out = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            key = k.key if isinstance(k.key, str | int) and not isinstance(k.key, bool) else str(k.key)
            out.append(("d", key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            out.append(("s", k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            out.append(("a", k.name))
        else:  # FlattenedIndexKey and custom keys
            out.append(("s", int(getattr(k, "key", 0))))
    return tuple(out)


# --------------------------------------------------------------------- trace helpers


def _state_slot(state: TraceState, name: str, factory: Callable[[], Any]) -> Any:
    """Per-trace storage kept on the TraceState (``module_ops``, caches)."""
    if not hasattr(state, name):
        setattr(state, name, factory())
    return getattr(state, name)


def module_ops(state: TraceState) -> list[Operation]:
    """Ops for the module's top level (``dl.model``/``dl.loss``), placed before the func.func
    by ``Pipeline.trace_full``."""
    return _state_slot(state, "module_ops", list)


def _mlir_dtype(name: str) -> Attribute | None:
    return dlops.TENSOR_DTYPES.get(name)


def _parse_dtype(dtype: Any, loc: SourceLoc) -> Attribute:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    t = _mlir_dtype(name)
    if t is None:
        raise trace_error(
            f"unsupported tensor dtype {dtype!r} (expected one of {', '.join(dlops.TENSOR_DTYPES)})", loc
        )
    return t


def _require_tensor(value: Any, what: str, loc: SourceLoc) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, Table):
        raise trace_error(f"{what} must be a tensor, got a table: convert it with og.dl.to_tensor(t, columns)", loc)
    raise trace_error(f"{what} must be a tensor from og.dl.to_tensor, got {type(value).__name__}", loc)


def _check_int(value: Any, what: str, loc: SourceLoc, minimum: int | None = None) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise trace_error(f"{what} must be an integer, got {value!r}", loc)
    if minimum is not None and value < minimum:
        raise trace_error(f"{what} must be >= {minimum}, got {value}", loc)
    return int(value)


def _x64() -> bool:
    return bool(jax.config.read("jax_enable_x64"))


def _check_jax_dtype(t: Tensor, what: str, loc: SourceLoc) -> None:
    if t.dtype in ("float64", "int64") and not _x64():
        small = "float32" if t.dtype == "float64" else "int32"
        raise trace_error(
            f"{what} is {dlops.tensor_str(t.type)} but JAX runs without 64-bit types: use dtype='{small}' "
            "in to_tensor or enable jax_enable_x64",
            loc,
        )


# ------------------------------------------------------------------- tables <-> tensors


def to_tensor(t: Table, cols: Sequence[str] | str, dtype: Any = "float32") -> Tensor:
    """Columns of ``t`` as a ``rows x len(cols)`` tensor (``tensor<?xNxT>``); a single column
    name (a string, not a list) gives a vector ``tensor<?xT>`` (pandas: ``t["c"]`` vs
    ``t[["c"]]``). Columns must be numeric and non-nullable (fill or filter nulls first)."""
    loc = user_location()
    if not isinstance(t, Table):
        raise trace_error(f"to_tensor needs a traced table, got {type(t).__name__}", loc)
    vector = isinstance(cols, str)
    columns = [cols] if vector else list(cols) if isinstance(cols, list | tuple) else None
    if columns is None or not all(isinstance(c, str) for c in columns):
        raise trace_error(f"to_tensor takes a column name or a list of column names, got {cols!r}", loc)
    et = _parse_dtype(dtype, loc)
    try:
        op = dlops.ToTensorOp(t.ir_value, columns, et, vector)
    except df.SchemaError as e:
        raise trace_error(str(e), loc) from None
    current_trace().append(op, loc)
    return Tensor(op.result)


def to_table(tensor: Tensor, names: Sequence[str] | str) -> Table:
    """A 1-D tensor as a one-column table, a 2-D ``rows x N`` tensor as N columns ``names``."""
    loc = user_location()
    x = _require_tensor(tensor, "to_table's input", loc)
    cols = [names] if isinstance(names, str) else list(names) if isinstance(names, list | tuple) else None
    if cols is None or not all(isinstance(n, str) for n in cols):
        raise trace_error(f"to_table takes a list of column names, got {names!r}", loc)
    try:
        op = dlops.ToTableOp(x.ir_value, cols)
    except df.SchemaError as e:
        raise trace_error(str(e), loc) from None
    current_trace().append(op, loc)
    return Table(op.result)


# ------------------------------------------------------------------------ parameters


def _as_array(leaf: Any, name: str, loc: SourceLoc) -> np.ndarray:
    try:
        arr = np.asarray(leaf)
    except Exception as e:  # jax tracers, objects without __array__
        raise trace_error(f"parameter '{name}' is not an array: {type(leaf).__name__} ({e})", loc) from None
    if arr.dtype.kind not in "fiu":
        raise trace_error(
            f"parameter '{name}' has unsupported dtype {arr.dtype} (expected {', '.join(dlops.TENSOR_DTYPES)})", loc
        )
    canon = np.dtype(jax.dtypes.canonicalize_dtype(arr.dtype))  # what jnp.asarray would give
    if canon.name not in dlops.TENSOR_DTYPES:
        raise trace_error(
            f"parameter '{name}' has unsupported dtype {arr.dtype} (expected {', '.join(dlops.TENSOR_DTYPES)})", loc
        )
    return np.array(arr, dtype=canon, copy=True)  # a copy: the cache compares it later


def _dense(arr: np.ndarray) -> DenseIntOrFPElementsAttr:
    t = TensorType(dlops.TENSOR_DTYPES[arr.dtype.name], list(arr.shape))
    return DenseIntOrFPElementsAttr.from_list(t, arr.ravel().tolist())


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def as_params(value: Any, loc: SourceLoc, what: str = "params") -> Params:
    """``value`` as traced parameters: a :class:`Params` as is; a pytree of arrays by recording
    it in a ``dl.params`` op. The same initial values passed twice in one pipeline (e.g. to
    ``train`` and ``sweep``) reuse the first ``dl.params``."""
    if isinstance(value, Params):
        return value
    flat, treedef = jax.tree_util.tree_flatten_with_path(value)
    if not flat:
        raise trace_error(f"{what} holds no arrays", loc)
    paths = [_key_path(p) for p, _ in flat]
    names = leaf_names(paths)
    for name, (_, leaf) in zip(names, flat):
        if isinstance(leaf, Tensor | Table | Params):
            raise trace_error(
                f"parameter '{name}' is a traced {type(leaf).__name__.lower()}: params must be arrays "
                "(initial values) or the result of og.dl.train / og.dl.load",
                loc,
            )
    arrays = [_as_array(leaf, name, loc) for name, (_, leaf) in zip(names, flat)]
    state = current_trace()
    cache: list[tuple[str, list[np.ndarray], Params]] = _state_slot(state, "dl_params_cache", list)
    key = str(treedef)
    for cached_key, cached_arrays, params in cache:
        if cached_key == key and all(_same_array(a, b) for a, b in zip(cached_arrays, arrays)):
            return params
    op = dlops.ParamsOp([_dense(a) for a in arrays], names)
    state.append(op, loc)
    params = Params(op.result, treedef, paths)
    cache.append((key, arrays, params))
    return params


# ------------------------------------------------------------------- model lowering


def _fn_name(fn: Any) -> str:
    target = fn.func if isinstance(fn, functools.partial) else fn
    return getattr(target, "__name__", type(target).__name__)


def _definition(fn: Any, fallback: SourceLoc) -> SourceLoc:
    target = inspect.unwrap(fn.func if isinstance(fn, functools.partial) else fn)
    code = getattr(target, "__code__", None)
    if code is None:
        return fallback
    return SourceLoc(display_path(code.co_filename), code.co_firstlineno, 1)


def _symbol(state: TraceState, base: str) -> str:
    base = re.sub(r"\W", "_", base).strip("_") or "fn"
    if base[0].isdigit():
        base = "fn_" + base
    used = {state.pipeline_name}
    used |= {op.attributes["sym_name"].data for op in module_ops(state) if "sym_name" in op.attributes}  # type: ignore[union-attr]
    name, n = base, 1
    while name in used:
        n += 1
        name = f"{base}_{n}"
    return name


def _dims(shape: Sequence[Any]) -> list[int]:
    """JAX shape (ints and symbolic dimensions) as MLIR dims (symbolic -> dynamic)."""
    return [int(d) if isinstance(d, int | np.integer) else DYNAMIC_INDEX for d in shape]


def _aval_type(aval: Any) -> TensorType | None:
    et = _mlir_dtype(np.dtype(aval.dtype).name)
    return None if et is None else TensorType(et, _dims(aval.shape))


def _spec(t: TensorType, batch: Any) -> jax.ShapeDtypeStruct:
    """A JAX argument spec: dimension 0 (rows) is the symbolic batch size ``batch``."""
    dims = list(t.get_shape())
    return jax.ShapeDtypeStruct((batch, *dims[1:]), np.dtype(dlops.dtype_name(t.element_type)))


def _batched(t: TensorType) -> TensorType:
    """``t`` with a dynamic row dimension (what a lowered function takes)."""
    return dlops.batched_tensor(t.element_type, t.get_shape()[1:])


def _static_features(t: Tensor, what: str, loc: SourceLoc) -> None:
    if t.ndim < 1:
        raise trace_error(f"{what} needs a row dimension (rank >= 1), got {dlops.tensor_str(t.type)}", loc)
    if None in t.shape[1:]:
        raise trace_error(f"only the row dimension of {what} may be dynamic, got {dlops.tensor_str(t.type)}", loc)


def _param_specs(params: Params) -> Any:
    return jax.tree_util.tree_unflatten(
        params.treedef,
        [jax.ShapeDtypeStruct(tuple(t.get_shape()), np.dtype(dlops.dtype_name(t.element_type))) for t in params.leaf_types],
    )


CARRIED_PLATFORMS = ("cpu", "cuda")
"""Platforms the model a plan carries is lowered for, so one plan runs on the CPU and on an
NVIDIA GPU whichever machine traced it (the runtime picks among them: dl_exec.select_device).
The op's StableHLO text in the IR is the CPU lowering alone, the same on every machine."""


def _export(fn: Callable, *specs: Any, platforms: tuple[str, ...] = ("cpu",)) -> Any:
    return jax_export.export(jax.jit(fn), platforms=platforms)(*specs)


def _carried(fn: Callable, specs: tuple, cpu_export: Any, loc: SourceLoc) -> tuple[str, bool]:
    """The serialized export a plan carries, and whether it runs on a GPU: lowered for every
    CARRIED_PLATFORMS when JAX can lower ``fn`` for all of them here (a custom call without a
    CUDA lowering on a machine without jaxlib's CUDA plugin cannot be), else for the CPU
    only; the ops that run it are then marked ``dl.cpu_only`` (the compiler keeps them off
    the GPU) and the runtime's select_device reads the export's platforms too."""
    try:
        return _serialized(_export(fn, *specs, platforms=CARRIED_PLATFORMS), loc), True
    except Exception:  # noqa: BLE001 - lowering errors of any kind: the CPU export is valid
        return _serialized(cpu_export, loc), False


def _stablehlo_text(exported: Any) -> str:
    """StableHLO of an export, without debug locations (they name the user's files)."""
    flag = "jax_include_debug_info_in_dumps"
    old = jax.config.read(flag)
    jax.config.update(flag, False)
    try:
        return exported.mlir_module()
    finally:
        jax.config.update(flag, old)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _accepts(fn: Callable, pspec: Any, shape: tuple[int, ...], dtype: Any) -> bool:
    try:
        jax.eval_shape(fn, pspec, jax.ShapeDtypeStruct(shape, dtype))
        return True
    except Exception:
        return False


def _model_failure(fn: Callable, params: Params, x: Tensor, err: Exception, loc: SourceLoc) -> Exception:
    """The trace error for a model that does not lower on ``x``: names the feature count the
    model expects when probing the parameters' dimensions finds exactly one that works."""
    pspec = _param_specs(params)
    dtype = np.dtype(x.dtype)
    rows = 2
    if x.ndim >= 1 and None not in x.shape[1:]:
        features = tuple(x.shape[1:])
        if _accepts(fn, pspec, (rows, *features), dtype):
            return trace_error(
                "model_fn cannot be lowered for a variable number of rows (it must work for any batch "
                f"size, without Python arithmetic on x.shape[0]): {_first_line(err)}",
                loc,
            )
        if x.ndim >= 2:
            n = features[-1]
            candidates = sorted({int(d) for t in params.leaf_types for d in t.get_shape() if d and d != n})
            ok = [k for k in candidates if _accepts(fn, pspec, (rows, *features[:-1], k), dtype)]
            if len(ok) == 1:
                source = "to_tensor gave" if isinstance(x.ir_value.owner, dlops.ToTensorOp) else "X has"
                return trace_error(f"model expects {ok[0]} input features, {source} {n}", loc)
    return trace_error(f"model_fn(params, X) fails for X of type {dlops.tensor_str(x.type)}: {_first_line(err)}", loc)


def _model(fn: Any, params: Params, x: Tensor, loc: SourceLoc) -> dlops.ModelOp:
    """The ``dl.model`` for ``fn`` on these parameter and feature shapes (created once)."""
    if not callable(fn):
        raise trace_error(f"model_fn must be a function model_fn(params, x), got {type(fn).__name__}", loc)
    _check_jax_dtype(x, "X", loc)
    _static_features(x, "X", loc)
    x_type = _batched(x.type)
    state = current_trace()
    # keyed by id (user callables need not be hashable); the entry keeps fn alive
    cache: dict[tuple, tuple[Any, dlops.ModelOp]] = _state_slot(state, "dl_models", dict)
    key = (id(fn), str(params.treedef), params.ir_value.type, x_type)
    if key in cache:
        return cache[key][1]
    batch = jax_export.symbolic_shape("b")[0]
    specs = (_param_specs(params), _spec(x_type, batch))
    try:
        exported = _export(fn, *specs)
    except Exception as e:  # anything the user's model raises while tracing
        raise _model_failure(fn, params, x, e, loc) from None
    if exported.out_tree.num_leaves != 1:
        raise trace_error(f"model_fn must return one array, it returns {exported.out_tree}", loc)
    out = exported.out_avals[0]
    out_type = _aval_type(out)
    if out_type is None:
        raise trace_error(f"model_fn returns unsupported dtype {out.dtype}", loc)
    if not out.shape or str(out.shape[0]) != str(batch):
        raise trace_error(
            f"model_fn must return one row per row of X (shape (rows, ...)), it returns shape {tuple(out.shape)}", loc
        )
    op = dlops.ModelOp(
        _symbol(state, _fn_name(fn)),
        _stablehlo_text(exported),
        [*params.leaf_types, x_type],
        [out_type],
        str(params.treedef),
    )
    op.location = _definition(fn, loc).attr()
    forward = _cost(fn, _param_specs(params), x_type)
    # a training step: forward + backward, about three forward passes (lowering the gradient
    # only for its cost analysis would double the tracing time of every DL pipeline)
    train_cost = (TRAIN_COST_FACTOR * forward[0], TRAIN_COST_FACTOR * forward[1])
    op.attributes[dlops.FLOPS_ATTR] = FloatAttr(forward[0], f64)
    op.attributes[dlops.BYTES_ATTR] = FloatAttr(forward[1], f64)
    blobs = _state_slot(state, "dl_blobs", dict)
    blobs[op.sym_name.data] = (*_carried(fn, specs, exported, loc), forward, train_cost)
    module_ops(state).append(op)
    cache[key] = (fn, op)
    return op


COST_ROWS = 256
"""Rows of the concrete batch that JAX's cost analysis is run on (figures are per row)."""

TRAIN_COST_FACTOR = 3.0
"""Cost of a training step (forward + backward) in forward passes."""


def _cost(fn: Callable, pspec: Any, x_type: TensorType) -> tuple[float, float]:
    """(FLOPs, bytes accessed) per row of x, from XLA's cost analysis of ``fn`` lowered for a
    batch of ``COST_ROWS`` rows (no compilation). (0, 0) when the backend gives none."""
    try:
        # lowered for the CPU on every machine: a GPU lowering's cost analysis is None
        # (jax-ml/jax#22713); the FLOPs and bytes are the function's, not the device's
        jitted, args = jax.jit(fn), (pspec, _spec(x_type, COST_ROWS))
        try:
            lowered = jitted.trace(*args).lower(lowering_platforms=("cpu",))
        except (AttributeError, TypeError):  # an older JAX: no Traced.lower(lowering_platforms=)
            lowered = jitted.lower(*args)
        cost = lowered.cost_analysis()
    except Exception:  # cost analysis is advice for the cost model, never fatal
        return 0.0, 0.0
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    cost = cost or {}
    return float(cost.get("flops", 0.0)) / COST_ROWS, float(cost.get("bytes accessed", 0.0)) / COST_ROWS


def _serialized(exported: Any, loc: SourceLoc) -> str:
    """``jax.export`` serialization (with the VJP, so the runtime can differentiate through
    it), base64: how a plan carries a function for the runtime to call (data, no pickle)."""
    try:
        blob = exported.serialize(vjp_order=1)
    except ImportError as e:  # jax needs 'flatbuffers' to serialize
        raise trace_error(f"og.dl cannot carry the model in the plan: {e}", loc) from None
    return base64.b64encode(bytes(blob)).decode("ascii")


def _attach_functions(op: Operation, model: dlops.ModelOp, loss: str | None, train: bool) -> None:
    """What the runtime needs of the model (and custom loss) on the op that runs it: the
    serialized exports, and per-row cost figures for the cost model."""
    state = current_trace()
    blobs = _state_slot(state, "dl_blobs", dict)
    blob, on_gpu, forward, train_cost = blobs[model.sym_name.data]
    op.attributes[dlops.MODEL_EXPORT_ATTR] = StringAttr(blob)
    if loss is not None and loss.startswith(dlops.CUSTOM_LOSS_PREFIX):
        loss_blob, loss_on_gpu = _state_slot(state, "dl_loss_blobs", dict)[loss[len(dlops.CUSTOM_LOSS_PREFIX):]]
        op.attributes[dlops.LOSS_EXPORT_ATTR] = StringAttr(loss_blob)
        on_gpu = on_gpu and loss_on_gpu
    if not on_gpu:
        op.attributes[dlops.CPU_ONLY_ATTR] = BoolAttr.from_bool(True)
    flops, nbytes = train_cost if train else forward
    op.attributes[dlops.FLOPS_ATTR] = FloatAttr(flops, f64)
    op.attributes[dlops.BYTES_ATTR] = FloatAttr(nbytes, f64)


def _custom_loss(fn: Callable, pred: TensorType, y: Tensor, loc: SourceLoc) -> str:
    """Lowers ``loss(pred, y) -> scalar`` to a ``dl.loss``; returns ``custom:<name>``."""
    state = current_trace()
    _check_jax_dtype(y, "y", loc)
    _static_features(y, "y", loc)
    y_type = _batched(y.type)
    cache: dict[tuple, tuple[Any, dlops.LossOp]] = _state_slot(state, "dl_losses", dict)
    key = (id(fn), pred, y_type)
    if key not in cache:
        scope = jax_export.SymbolicScope()
        batch = jax_export.symbolic_shape("b", scope=scope)[0]
        specs = (_spec(pred, batch), _spec(y_type, batch))
        try:
            exported = _export(fn, *specs)
        except Exception as e:
            raise trace_error(
                f"loss(pred, y) fails for pred {dlops.tensor_str(pred)} and y {dlops.tensor_str(y.type)}: {_first_line(e)}",
                loc,
            ) from None
        outs = exported.out_avals
        out_type = _aval_type(outs[0]) if len(outs) == 1 else None
        if out_type is None or out_type.get_num_dims() != 0 or dlops.dtype_name(out_type.element_type) not in ("float32", "float64"):
            shapes = ", ".join(f"{a.dtype}{list(a.shape)}" for a in outs)
            raise trace_error(f"a custom loss must return one float scalar, got {shapes}", loc)
        op = dlops.LossOp(_symbol(state, _fn_name(fn)), _stablehlo_text(exported), [pred, y_type], out_type)
        op.location = _definition(fn, loc).attr()
        _state_slot(state, "dl_loss_blobs", dict)[op.sym_name.data] = _carried(fn, specs, exported, loc)
        module_ops(state).append(op)
        cache[key] = (fn, op)
    return dlops.CUSTOM_LOSS_PREFIX + cache[key][1].sym_name.data


def _loss_kind(loss: Any, loc: SourceLoc) -> None:
    """Rejects an unknown loss before anything is lowered."""
    if callable(loss):
        return
    if not isinstance(loss, str) or loss not in dlops.BUILTIN_LOSSES:
        raise trace_error(
            f"unknown loss {loss!r} (expected {', '.join(repr(x) for x in dlops.BUILTIN_LOSSES)} "
            "or a function loss(pred, y) returning a scalar)",
            loc,
        )


def _loss_attr(loss: Any, model: dlops.ModelOp, y: Tensor, loc: SourceLoc) -> str:
    pred = model.output_type
    if callable(loss):
        name = _custom_loss(loss, pred, y, loc)
        return name
    try:
        dlops.check_loss_target(loss, pred, y.type)
    except df.SchemaError as e:
        raise trace_error(str(e), loc) from None
    return loss


# ------------------------------------------------------------------------- optimizers

_NOT_OPTIMIZERS = ("lbfgs",)  # needs the loss function in its update: not a plain gradient step


@functools.cache
def optimizer_names() -> tuple[str, ...]:
    """optax optimizers usable by name: the optax functions taking a ``learning_rate``."""
    import optax

    names = []
    for name in dir(optax):
        f = getattr(optax, name)
        if name.startswith(("_", "scale_by")) or name in _NOT_OPTIMIZERS or inspect.isclass(f) or not callable(f):
            continue
        try:
            params = inspect.signature(f).parameters
        except (TypeError, ValueError):
            continue
        if "learning_rate" in params:
            names.append(name)
    return tuple(sorted(names))


def _optimizer_params(name: str) -> list[str]:
    import optax

    return [p for p in inspect.signature(getattr(optax, name)).parameters if p != "learning_rate"] + ["learning_rate"]


def _check_optimizer(name: Any, loc: SourceLoc) -> str:
    names = optimizer_names()
    if isinstance(name, str) and name in names:
        return name
    close = difflib.get_close_matches(str(name), names, n=1) if isinstance(name, str) else []
    hint = f", did you mean '{close[0]}'?" if close else ""
    raise trace_error(f"unknown optimizer {name!r}{hint} (optax optimizers: {', '.join(names)})", loc)


def _option_attr(key: str, value: Any, loc: SourceLoc) -> Attribute:
    if isinstance(value, bool | np.bool_):
        return BoolAttr.from_bool(bool(value))
    if isinstance(value, int | np.integer):
        return IntegerAttr(int(value), i64)
    if isinstance(value, float | np.floating):
        return FloatAttr(float(value), f64)
    if isinstance(value, str):
        return StringAttr(value)
    raise trace_error(f"option '{key}' must be a number, boolean or string, got {type(value).__name__}", loc)


def _optimizer_options(optimizer: str, options: dict[str, Any], loc: SourceLoc) -> dict[str, Attribute]:
    allowed = _optimizer_params(optimizer)
    out = {}
    for key, value in options.items():
        if key not in allowed:
            raise trace_error(
                f"optimizer '{optimizer}' has no option '{key}' (options: {', '.join(sorted(allowed))})", loc
            )
        out[key] = _option_attr(key, value, loc)
    return out


# ----------------------------------------------------------------------- train & co


def _check_xy(X: Any, y: Any, loc: SourceLoc) -> tuple[Tensor, Tensor]:
    x = _require_tensor(X, "X", loc)
    yt = _require_tensor(y, "y", loc)
    if x.ndim < 1 or yt.ndim < 1:
        raise trace_error("X and y need a row dimension (rank >= 1)", loc)
    if not dlops.rows_consistent(x.type, yt.type):
        raise trace_error(
            f"X ({dlops.tensor_str(x.type)}) and y ({dlops.tensor_str(yt.type)}) have different row counts", loc
        )
    xo, yo = x.ir_value.owner, yt.ir_value.owner
    if isinstance(xo, dlops.ToTensorOp) and isinstance(yo, dlops.ToTensorOp) and xo.input is not yo.input:
        raise trace_error(
            "X and y come from different tables, so their rows are not aligned: take both from one table", loc
        )
    return x, yt


def _run_settings(epochs: Any, batch_size: Any, shuffle: Any, seed: Any, loc: SourceLoc) -> tuple[int, int, bool, int]:
    if not isinstance(shuffle, bool | np.bool_):
        raise trace_error(f"shuffle must be True or False, got {shuffle!r}", loc)
    return (
        _check_int(epochs, "epochs", loc, 1),
        _check_int(batch_size, "batch_size", loc, 1),
        bool(shuffle),
        _check_int(seed, "seed", loc),
    )


def train(
    model_fn: Callable,
    params: Any,
    X: Tensor,
    y: Tensor,
    loss: str | Callable = "mse",
    optimizer: str = "adam",
    epochs: int = 10,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int = 0,
    learning_rate: float = 1e-3,
    optimizer_options: dict[str, Any] | None = None,
) -> tuple[Params, Tensor]:
    """Trains ``model_fn(params, x)`` on (X, y) with an optax optimizer; minibatches of
    ``batch_size`` rows (the last one smaller), reshuffled each epoch when ``shuffle`` (from
    ``seed``). ``loss`` is ``"mse"``, ``"cross_entropy"`` (softmax; integer labels or class
    probabilities) or a function ``loss(pred, y)`` returning the batch's scalar loss.

    Returns ``(trained, losses)``: the trained parameters (same pytree structure, usable by
    ``predict``/``save``/``train``) and the mean training loss of each epoch,
    ``tensor<EPOCHSxf32>`` (``to_table(losses, ["loss"])`` makes it a table)."""
    loc = user_location()
    settings = _run_settings(epochs, batch_size, shuffle, seed, loc)
    _loss_kind(loss, loc)
    optimizer = _check_optimizer(optimizer, loc)
    options = _optimizer_options(optimizer, {"learning_rate": learning_rate, **(optimizer_options or {})}, loc)
    x, yt = _check_xy(X, y, loc)
    p = as_params(params, loc)
    model = _model(model_fn, p, x, loc)
    loss_attr = _loss_attr(loss, model, yt, loc)
    op = dlops.TrainOp(x.ir_value, yt.ir_value, p.ir_value, model.sym_name.data, loss_attr, optimizer, options, *settings)
    _attach_functions(op, model, loss_attr, train=True)
    current_trace().append(op, loc)
    return Params(op.trained, p.treedef, p.paths), Tensor(op.losses)


def predict(model_fn: Callable, params: Any, X: Tensor) -> Tensor:
    """``model_fn(params, X)`` over all rows of X (computed in batches, row order kept)."""
    loc = user_location()
    x = _require_tensor(X, "X", loc)
    if x.ndim < 1:
        raise trace_error("X needs a row dimension (rank >= 1)", loc)
    p = as_params(params, loc)
    model = _model(model_fn, p, x, loc)
    out = model.output_type
    result = TensorType(out.element_type, [x.type.get_shape()[0], *out.get_shape()[1:]])
    op = dlops.PredictOp(x.ir_value, p.ir_value, model.sym_name.data, result)
    _attach_functions(op, model, None, train=False)
    current_trace().append(op, loc)
    return Tensor(op.result)


# --------------------------------------------------------------------- save and load

PATHS_MEMBER = "__opgraph_paths__"
"""npz member holding the key paths of the leaves (JSON, 0-d unicode array)."""


def save(params: Any, path: str | os.PathLike) -> None:
    """Writes the parameters to ``path`` (``.npz``: one member per leaf, named as
    ``Params.names``, plus the pytree key paths); ``load`` reads them back."""
    loc = user_location()
    p = as_params(params, loc)
    target = str(path)
    if not target.endswith(".npz"):
        raise trace_error(f"save writes an .npz file: the path must end with '.npz', got '{target}'", loc)
    op = dlops.SaveOp(p.ir_value, target, p.names, dlops.param_paths_json(p.paths))
    current_trace().append(op, loc)
    _state_slot(current_trace(), "dl_saved", dict)[os.path.normpath(target)] = p


def _read_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version} in member '{member}'")
    return tuple(shape), np.dtype(dtype)


def _rebuild(entries: list[tuple[KeyPath, int]]) -> Any:
    """A pytree (dicts and lists) holding leaf indices, from (key path, index) pairs."""
    if len(entries) == 1 and not entries[0][0]:
        return entries[0][1]
    groups: dict[tuple[str, str | int], list[tuple[KeyPath, int]]] = {}
    for path, index in entries:
        if not path:
            raise ValueError("a leaf's key path is a prefix of another leaf's")
        groups.setdefault(path[0], []).append((path[1:], index))
    if all(kind == "s" for kind, _ in groups):
        keys = sorted(groups, key=lambda k: k[1])
        if [k[1] for k in keys] != list(range(len(keys))):
            raise ValueError("list indices in the key paths are not 0..n-1")
        return [_rebuild(groups[k]) for k in keys]
    return {k: _rebuild(v) for (_, k), v in groups.items()}


def load(path: str | os.PathLike) -> Params:
    """Parameters from an ``.npz`` file written by ``save`` (or ``numpy.savez``: a flat dict
    of its members). Shapes and dtypes come from the array headers now; values are read when
    the pipeline runs. Loading never unpickles (``allow_pickle=False``)."""
    loc = user_location()
    target = str(path)
    state = current_trace()
    saved = _state_slot(state, "dl_saved", dict).get(os.path.normpath(target))
    if saved is not None:  # saved earlier in this pipeline: the same values, no file needed yet
        return saved
    if not os.path.isfile(target):
        raise trace_error(f"no such file: '{target}'", loc)
    try:
        npz = np.load(target, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive (write it with og.dl.save or numpy.savez)")
        with npz:
            members = {(m.removesuffix(".npy")): m for m in npz.zip.namelist()}
            headers = {k: _read_header(npz.zip, m) for k, m in members.items() if k != PATHS_MEMBER}
            paths_text = str(npz[PATHS_MEMBER][()]) if PATHS_MEMBER in members else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise trace_error(f"cannot read parameters from '{target}': {e}", loc) from None
    if not headers:
        raise trace_error(f"'{target}' holds no arrays", loc)
    if paths_text is not None:
        try:
            paths = [tuple(p) for p in dlops.parse_param_paths(paths_text)]
        except df.SchemaError as e:
            raise trace_error(f"'{target}': {e}", loc) from None
        names = leaf_names(paths)
        missing = [n for n in names if n not in headers]
        if missing or len(names) != len(headers):
            raise trace_error(f"'{target}' does not match its key paths (missing member '{(missing or ['?'])[0]}')", loc)
    else:
        names = list(headers)
        paths = [(("d", n),) for n in names]
    try:
        tree = _rebuild([(p, i) for i, p in enumerate(paths)])
    except ValueError as e:
        raise trace_error(f"'{target}': {e}", loc) from None
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    order = [index for _, index in flat]
    types = []
    for i in order:
        shape, dtype = headers[names[i]]
        if dtype.kind not in "fiu":
            raise trace_error(f"'{target}' member '{names[i]}' has unsupported dtype {dtype}", loc)
        canon = np.dtype(jax.dtypes.canonicalize_dtype(dtype))
        if canon.name not in dlops.TENSOR_DTYPES:
            raise trace_error(f"'{target}' member '{names[i]}' has unsupported dtype {dtype}", loc)
        types.append(TensorType(dlops.TENSOR_DTYPES[canon.name], list(shape)))
    new_paths = [_key_path(p) for p, _ in flat]
    op = dlops.LoadOp(target, leaf_names(new_paths), dlops.param_paths_json(new_paths), types)
    state.append(op, loc)
    return Params(op.result, treedef, new_paths)


# --------------------------------------------------------------------------- sweep


def _grid_values(key: str, values: Any, loc: SourceLoc) -> ArrayAttr:
    if not isinstance(values, list | tuple) or not values:
        raise trace_error(f"grid '{key}' must be a non-empty list of values, got {values!r}", loc)
    if key == "optimizer":
        return ArrayAttr([StringAttr(_check_optimizer(v, loc)) for v in values])
    if key in ("epochs", "batch_size"):
        return ArrayAttr([IntegerAttr(_check_int(v, f"grid '{key}' value", loc, 1), i64) for v in values])
    if key == "seed":
        return ArrayAttr([IntegerAttr(_check_int(v, "grid 'seed' value", loc), i64) for v in values])
    numbers = [v for v in values if isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_)]
    if len(numbers) == len(values) and any(isinstance(v, float | np.floating) for v in values):
        return ArrayAttr([FloatAttr(float(v), f64) for v in values])  # ints among floats: floats
    attrs = ArrayAttr([_option_attr(key, v, loc) for v in values])
    try:
        dlops.grid_column_type(key, attrs)
    except df.SchemaError as e:
        raise trace_error(str(e), loc) from None
    return attrs


def sweep(
    model_fn: Callable,
    params: Any,
    X: Tensor,
    y: Tensor,
    grid: dict[str, Sequence[Any]],
    loss: str | Callable = "mse",
    optimizer: str = "adam",
    epochs: int = 10,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int = 0,
    learning_rate: float = 1e-3,
    optimizer_options: dict[str, Any] | None = None,
) -> Table:
    """One training per point of ``grid`` (cartesian product; keys are optimizer options such
    as ``learning_rate``, or ``optimizer``, ``epochs``, ``batch_size``, ``seed``), run as
    independent concurrent islands (the compiler's ``expand-sweeps`` makes one ``dl.train``
    island per point, all fed by ``X``/``y``/``params``, and a ``dl.sweep_result``). Returns a
    table with one row per run: the grid values (keys in sorted order) and ``final_loss``,
    the mean training loss of the last epoch."""
    loc = user_location()
    settings = _run_settings(epochs, batch_size, shuffle, seed, loc)
    _loss_kind(loss, loc)
    optimizer = _check_optimizer(optimizer, loc)
    options = _optimizer_options(optimizer, {"learning_rate": learning_rate, **(optimizer_options or {})}, loc)
    if not isinstance(grid, dict) or not grid or not all(isinstance(k, str) for k in grid):
        raise trace_error("sweep needs grid={name: [values, ...]} with at least one entry", loc)
    if dlops.SWEEP_LOSS_COLUMN in grid:
        raise trace_error(f"'{dlops.SWEEP_LOSS_COLUMN}' is the result column, not a grid key", loc)
    grid_attrs = {k: _grid_values(k, v, loc) for k, v in grid.items()}
    optimizers = [a.data for a in grid_attrs["optimizer"]] if "optimizer" in grid_attrs else [optimizer]  # type: ignore[union-attr]
    for key in grid_attrs:
        if key in dlops.SWEEP_RUN_OPTIONS:
            continue
        for opt in optimizers:
            if key not in _optimizer_params(opt):
                raise trace_error(
                    f"grid key '{key}' is neither a run setting ({', '.join(dlops.SWEEP_RUN_OPTIONS)}) "
                    f"nor an option of optimizer '{opt}' (options: {', '.join(sorted(_optimizer_params(opt)))})",
                    loc,
                )
    x, yt = _check_xy(X, y, loc)
    p = as_params(params, loc)
    model = _model(model_fn, p, x, loc)
    loss_attr = _loss_attr(loss, model, yt, loc)
    op = dlops.SweepOp(
        x.ir_value, yt.ir_value, p.ir_value, model.sym_name.data, loss_attr, optimizer, options, grid_attrs, *settings
    )
    _attach_functions(op, model, loss_attr, train=True)
    current_trace().append(op, loc)
    return Table(op.result)


def grid_points(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The runs of a sweep, in result-row order (keys sorted, last key varying fastest)."""
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
