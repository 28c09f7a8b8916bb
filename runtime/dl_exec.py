"""Runs the ``dl`` ops of a plan (DESIGN §3 ``og.dl``; issue #5) for the plan executor.

How a plan carries a model: the tracer lowers ``model_fn(params, x)`` with ``jax.export``
(symbolic batch dimension). The StableHLO text sits in the IR's ``dl.model`` op; the ops that
run the model (``dl.train``, ``dl.predict``, ``dl.sweep``) carry the same export serialized
with its VJP (``Exported.serialize(vjp_order=1)``, base64) in ``dl.model_export`` (and a
custom loss in ``dl.loss_export``). Here it is ``jax.export.deserialize``d and called with
``Exported.call``, inside ``jax.jit`` and under ``jax.grad``. Nothing is pickled and no user
Python runs: the runtime imports neither the frontend nor xDSL. The optimizer is an optax
name plus its hyperparameters (op attributes).

Values: a tensor is a :class:`TensorValue` (this rank's rows, or the whole tensor when
``replicated``); a parameter set is a :class:`ParamsValue` (numpy leaves in
``jax.tree_util`` order, replicated on every rank).

* ``dl.to_tensor``: Arrow -> numpy -> JAX. A single fixed-width, null-free column already of
  the tensor's dtype in one chunk is used **without a copy** (the numpy array views the Arrow
  buffer; ``jax.device_put`` on the CPU aliases an aligned numpy buffer). Several columns are
  stacked row-major into one new array: a copy cannot be avoided (Arrow is columnar). Nulls
  and non-numeric columns raise an error naming the user's line.
* ``dl.train``: data parallel over the communicator's ranks. Every rank holds the whole
  (gathered) training set; one permutation per epoch from ``seed`` (numpy PCG64) defines the
  global minibatches, and rank r computes the summed loss and gradients over the r-th
  contiguous share of each global batch. Gradients and loss sums are added with
  ``comm.allreduce`` and divided by the global batch size, so every rank applies the same
  update: the result equals one-rank training with the same seed and batch size up to float
  summation order. The loss of an epoch is the mean per-row loss over the epoch. Builtin
  losses are sums of per-row terms; a custom ``loss(pred, y)`` is taken to be a mean over the
  rows (each share's value is weighted by its row count).
* Sweeps: the default pipeline's ``expand-sweeps`` turns a ``dl.sweep`` into one ``dl.train``
  island per grid point and a ``dl.sweep_result`` (the table from the runs' last losses);
  the executor runs those islands concurrently (:func:`run_concurrent_islands`).
* ``dl.sweep`` (a plan compiled without ``expand-sweeps``): each grid point is an
  independent training ("run"). Run k goes to rank
  ``k % size``; a rank's runs train concurrently in threads (XLA releases the GIL), each on
  one rank's data, without communication; final losses are then exchanged. Every run's
  start/end time, rank and device go to :data:`TIMELINE`.
* Compilation: one jitted trainer per (model, loss, optimizer kind), shared by threads;
  minibatches are padded to one size (weight-0 rows) so one compiled step serves them all;
  on one rank a whole epoch is one ``lax.scan``; numeric optimizer hyperparameters live in
  the optimizer state (``optax.inject_hyperparams``), so sweep runs share the compiled code.
  XLA's persistent compilation cache is switched on (see ``_jax``).
* Device: a DL op runs on a GPU when the plan asks for one (the op's ``taskgraph.device`` or
  its island's ``device``) and JAX sees one; otherwise on the CPU (:func:`select_device`).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from opgraph.errors import OpgraphError

__all__ = [
    "TIMELINE",
    "DLError",
    "ParamsValue",
    "TensorValue",
    "comm_on_dl_value",
    "is_dl_value",
    "run_concurrent_islands",
    "run_dl_op",
    "select_device",
    "table_to_array",
    "to_jax",
    "train",
]

MODEL_EXPORT_ATTR = (
    "dl.model_export"  # names shared with dialects/dl.py (no import: layering)
)
LOSS_EXPORT_ATTR = "dl.loss_export"
CUSTOM_LOSS_PREFIX = "custom:"
SWEEP_LOSS_COLUMN = "final_loss"
SWEEP_RUN_OPTIONS = ("batch_size", "epochs", "optimizer", "seed")

#: At most this many sweep runs train at once on one rank (threads).
MAX_CONCURRENT_RUNS = 16

#: Executed DL work: one dict per training (``dl.train`` or one ``dl.sweep`` run) with
#: ``op``, ``run``, ``rank``, ``start``/``end`` (``time.perf_counter``), ``device``. With
#: ``OPGRAPH_DL_TIMELINE=FILE`` every process (MPI ranks too) also appends them to FILE.
TIMELINE: list[dict[str, Any]] = []
_TIMELINE_LOCK = threading.Lock()


class DLError(OpgraphError):
    """A ``dl`` op cannot run on this data (the executor adds the user's file:line)."""


@dataclass
class TensorValue:
    """This rank's rows of a tensor (all rows when ``replicated``)."""

    data: np.ndarray
    replicated: bool = False


@dataclass
class ParamsValue:
    """Parameter leaves (``jax.tree_util`` order), the same on every rank."""

    leaves: list[np.ndarray]


# ------------------------------------------------------------------------------ JAX


_CACHE_SET = False


def _jax():
    """jax, with XLA's persistent compilation cache switched on (once) unless the user set
    one: compiling a training step takes seconds on a small CPU and the same model recurs
    across runs, ranks (MPI processes) and sweeps. ``OPGRAPH_JAX_CACHE`` names the directory
    (default ``~/.cache/opgraph/jax``); ``OPGRAPH_JAX_CACHE=0`` leaves JAX as configured."""
    global _CACHE_SET
    import jax

    if not _CACHE_SET:
        _CACHE_SET = True
        _share_gpus_with_other_ranks()
        where = os.environ.get("OPGRAPH_JAX_CACHE")
        if where != "0" and not getattr(jax.config, "jax_compilation_cache_dir", None):
            base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
                os.path.expanduser("~"), ".cache"
            )
            try:
                jax.config.update(
                    "jax_compilation_cache_dir",
                    where or os.path.join(base, "opgraph", "jax"),
                )
                jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
            except (
                AttributeError,
                ValueError,
            ):  # an older JAX without these options: no cache
                _CACHE_SET = True
    return jax


#: ranks on this node, as the MPI launcher or Slurm tell a process they started
_RANKS_ON_NODE_ENV = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")
#: this process's rank among them
_NODE_RANK_ENV = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")


def _env_count(names: Sequence[str]) -> int | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def _share_gpus_with_other_ranks() -> None:
    """Before JAX makes its first backend in a rank process (opgraph's engines set
    ``OPGRAPH_RANKS_PER_NODE`` in every one: MPI, also under a user's launcher, and Ray; or
    one of several ranks a launcher started): no up-front grab of 75% of each GPU's memory,
    XLA's default, which left the node's other processes (the other ranks, the driver) no
    memory to even create their CUDA context (seen with 2 MPI ranks on one H100:
    "CUDA_ERROR_OUT_OF_MEMORY", "no supported devices found for platform CUDA"). A value the
    user set stays."""
    if "OPGRAPH_RANKS_PER_NODE" in os.environ or (_env_count(_RANKS_ON_NODE_ENV) or 1) > 1:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def node_rank(fallback: int = 0) -> int:
    """This process's rank among the ranks on its node (from the MPI launcher or Slurm), else
    ``fallback`` (the rank of a thread-ranked local engine or a Ray actor)."""
    found = _env_count(_NODE_RANK_ENV)
    return fallback if found is None else found


def select_device(requested: str | None, platforms: Sequence[str] | None = None, rank_on_node: int = 0) -> Any:
    """The JAX device for a DL op: a GPU when ``requested == "gpu"``, JAX sees one and the
    op's functions were lowered for it (``platforms``: the platforms of their exports, None =
    any), else the first CPU device. The ranks of a node spread over its GPUs (GPU number
    ``rank_on_node`` modulo their count)."""
    jax = _jax()
    if requested == "gpu":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:  # no GPU backend in this JAX
            gpus = []
        gpus = [g for g in gpus if platforms is None or _lowering_platform(g) in platforms]
        if gpus:
            return gpus[rank_on_node % len(gpus)]
    return jax.devices("cpu")[0]


def _lowering_platform(device: Any) -> str:
    """The platform JAX lowers for on ``device``: a GPU's ``platform`` reads "gpu", its
    lowering is "cuda" or "rocm" (the client's platform version names which)."""
    if device.platform != "gpu":
        return str(device.platform)
    version = str(getattr(getattr(device, "client", None), "platform_version", "")).lower()
    return "rocm" if "rocm" in version else "cuda"


def carried_platforms(op: Any) -> tuple[str, ...] | None:
    """The platforms every function the op carries was exported for (None: it carries none)."""
    found: set[str] | None = None
    for attr in (MODEL_EXPORT_ATTR, LOSS_EXPORT_ATTR):
        blob = op.attributes.get(attr)
        if isinstance(blob, str) and blob:
            platforms = set(_deserialize(blob).platforms)
            found = platforms if found is None else found & platforms
    return None if found is None else tuple(sorted(found))


def to_jax(array: np.ndarray, device: Any = None) -> Any:
    """A numpy array as a JAX array on ``device`` (CPU by default). On the CPU an aligned,
    C-contiguous array is aliased, not copied (``jax.device_put``)."""
    jax = _jax()
    return jax.device_put(
        array, device if device is not None else jax.devices("cpu")[0]
    )


@lru_cache(maxsize=64)
def _deserialize(blob: str) -> Any:
    _jax()  # this process's JAX set up (GPU sharing, cache) before anything of JAX runs
    from jax import export as jax_export

    try:
        return jax_export.deserialize(bytearray(base64.b64decode(blob)))
    except ImportError as e:
        raise DLError(f"cannot load the model carried in the plan: {e}") from None


def _blob(op: Any, attr: str) -> str:
    """The serialized function an op carries (checked to deserialize)."""
    blob = op.attributes.get(attr)
    if not isinstance(blob, str) or not blob:
        raise DLError(
            f"plan.json: {op.op} has no '{attr}' (compile the pipeline with this opgraph version)"
        )
    _deserialize(blob)
    return blob


def _model_call(exported: Any) -> Callable[[list[Any], Any], Any]:
    """``f(leaves, x)`` calling the exported ``model_fn(params, x)``."""
    jax = _jax()

    def call(leaves: list[Any], x: Any) -> Any:
        args, kwargs = jax.tree_util.tree_unflatten(exported.in_tree, [*leaves, x])
        return exported.call(*args, **kwargs)

    return call


# -------------------------------------------------------------------- tables -> tensors


def _numeric_dtype(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def table_to_array(
    table: pa.Table, columns: Sequence[str], dtype: str, vector: bool
) -> np.ndarray:
    """Columns of ``table`` as a numpy array (``rows`` or ``rows x len(columns)``).

    Zero-copy when there is one column, of exactly ``dtype``, in at most one chunk, without
    nulls: the result views the Arrow buffer. Otherwise one new array is filled (several
    columns must be interleaved row-major: Arrow stores them apart)."""
    target = np.dtype(dtype)
    chunked = []
    for name in columns:
        if name not in table.column_names:
            raise DLError(
                f"to_tensor: no column '{name}' at run time (columns: {', '.join(table.column_names)})"
            )
        col = table.column(name)
        if not _numeric_dtype(col.type):
            raise DLError(
                f"to_tensor: column '{name}' has type {col.type}: to_tensor needs numeric columns"
            )
        if col.null_count:
            raise DLError(
                f"to_tensor: column '{name}' holds {col.null_count} null(s): fill (fillna) or filter them before to_tensor"
            )
        chunked.append(col)
    rows = table.num_rows
    if len(chunked) == 1:
        col = chunked[0]
        if (
            col.num_chunks <= 1
            and np.dtype(col.type.to_pandas_dtype()) == target
            and not pa.types.is_boolean(col.type)
        ):
            if col.num_chunks == 0:
                flat = np.empty(0, target)
            else:
                flat = col.chunk(0).to_numpy(zero_copy_only=True)
            return flat if vector else flat.reshape(rows, 1)
    out = np.empty((rows, len(chunked)), dtype=target)
    for j, col in enumerate(chunked):
        start = 0
        for chunk in col.chunks:
            n = len(chunk)
            out[start : start + n, j] = chunk.to_numpy(zero_copy_only=False)
            start += n
    return out[:, 0] if vector else out


def _tensor_to_table(data: np.ndarray, names: Sequence[str]) -> pa.Table:
    if data.ndim == 1:
        return pa.table({names[0]: pa.array(data)})
    return pa.table(
        {n: pa.array(np.ascontiguousarray(data[:, j])) for j, n in enumerate(names)}
    )


# ------------------------------------------------------------------------ parameters

_DENSE = re.compile(r"^dense<(.*)>\s*:\s*tensor<([^>]*)>$", re.DOTALL)
_TOKEN = re.compile(
    r"0x[0-9A-Fa-f]+|[-+]?(?:nan|inf|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|true|false"
)
_ELT = {
    "f32": "float32",
    "f64": "float64",
    "i32": "int32",
    "i64": "int64",
    "f16": "float16",
    "i1": "bool",
}


def _tensor_type(text: str) -> tuple[tuple[int, ...], np.dtype]:
    """``4x5xf32`` (inside ``tensor<...>``) -> ((4, 5), float32)."""
    parts = text.strip().split("x")
    elt = parts[-1]
    if elt not in _ELT:
        raise DLError(f"plan.json: unsupported tensor element type '{elt}'")
    return tuple(-1 if d == "?" else int(d) for d in parts[:-1]), np.dtype(_ELT[elt])


def parse_dense(text: str) -> np.ndarray:
    """A printed ``dense<...> : tensor<...>`` attribute (as in plan.json) as a numpy array."""
    m = _DENSE.match(text.strip())
    if m is None:
        raise DLError(f"plan.json: not a dense elements attribute: {text[:60]}")
    shape, dtype = _tensor_type(m.group(2))
    body = m.group(1).strip()
    if body.startswith('"0x'):  # hex blob: raw little-endian bytes
        return (
            np.frombuffer(bytes.fromhex(body.strip('"')[2:]), dtype=dtype)
            .reshape(shape)
            .copy()
        )
    tokens = _TOKEN.findall(body)
    values = []
    for tok in tokens:
        if tok.startswith("0x"):  # a float bit pattern (nan/inf payloads)
            bits = int(tok, 16)
            values.append(
                np.array(
                    [bits], dtype=np.uint32 if dtype.itemsize == 4 else np.uint64
                ).view(dtype)[0]
            )
        elif tok in ("true", "false"):
            values.append(tok == "true")
        else:
            values.append(float(tok) if dtype.kind == "f" else int(tok))
    arr = np.array(values, dtype=dtype)
    size = int(np.prod(shape)) if shape else 1
    if arr.size == 1 and size != 1:
        return np.full(shape, arr[0], dtype=dtype)
    if arr.size != size:
        raise DLError(
            f"plan.json: dense attribute has {arr.size} values for shape {shape}"
        )
    return arr.reshape(shape)


def _leaf_types(type_text: str) -> list[tuple[tuple[int, ...], np.dtype]]:
    """``tuple<tensor<4xf32>, ...>`` -> [(shape, dtype), ...]."""
    return [_tensor_type(t) for t in re.findall(r"tensor<([^>]*)>", type_text)]


# -------------------------------------------------------------------------- losses


def _per_row_loss(kind: str) -> Callable[[Any, Any], Any]:
    """Builtin losses as ``f(pred, y)`` -> the loss of each row (a vector)."""
    jax = _jax()
    jnp = jax.numpy

    if kind == "mse":

        def mse(pred: Any, y: Any) -> Any:
            err = (pred - y.astype(pred.dtype)) ** 2
            return jnp.mean(err.reshape(err.shape[0], -1), axis=1)

        return mse
    if kind == "cross_entropy":

        def cross_entropy(pred: Any, y: Any) -> Any:
            logp = jax.nn.log_softmax(pred, axis=-1)
            if jnp.issubdtype(y.dtype, jnp.integer):
                return -jnp.take_along_axis(
                    logp, y[:, None].astype(jnp.int32), axis=-1
                )[:, 0]
            return -jnp.sum(y.astype(pred.dtype) * logp, axis=-1)

        return cross_entropy
    raise DLError(
        f"unknown loss '{kind}' (expected 'mse', 'cross_entropy' or a custom loss)"
    )


def _optimizer(
    name: str, options: dict[str, Any]
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The optax factory, its static options (strings, booleans) and its numeric ones (which
    ``optax.inject_hyperparams`` keeps in the optimizer state, so that one compiled training
    step serves every learning rate of a sweep)."""
    import optax

    factory = getattr(optax, name, None)
    if factory is None or not callable(factory) or name.startswith("_"):
        raise DLError(f"unknown optax optimizer '{name}'")
    static = {
        k: v for k, v in options.items() if isinstance(v, bool | str) or v is None
    }
    numeric = {k: float(v) for k, v in options.items() if k not in static}
    return factory, static, numeric


@dataclass
class TrainSettings:
    loss: str
    optimizer: str
    options: dict[str, Any]
    epochs: int
    batch_size: int
    shuffle: bool
    seed: int


class _Trainer:
    """The jitted pieces of training one model with one loss and optimizer kind (cached:
    runs of a sweep and repeated runs reuse the compiled code)."""

    def __init__(
        self,
        model_blob: str,
        loss: str,
        loss_blob: str | None,
        optimizer: str,
        static: tuple,
        numeric: tuple,
    ):
        import optax

        jax = _jax()
        jnp = jax.numpy
        self.call = call = _model_call(_deserialize(model_blob))
        factory = getattr(optax, optimizer)
        static_opts = dict(static)
        self.padded = not loss.startswith(CUSTOM_LOSS_PREFIX)
        if self.padded:
            per_row = _per_row_loss(loss)

            def loss_sum(p: Any, X: Any, Y: Any, idx: Any, w: Any) -> Any:
                pred = call(p, jnp.take(X, idx, axis=0))
                return jnp.sum(w * per_row(pred, jnp.take(Y, idx, axis=0)))

        else:
            custom = _deserialize(loss_blob)  # type: ignore[arg-type]

            def loss_sum(
                p: Any, X: Any, Y: Any, idx: Any, w: Any
            ) -> Any:  # a batch mean, no padding
                pred = call(p, jnp.take(X, idx, axis=0))
                return custom.call(pred, jnp.take(Y, idx, axis=0)) * idx.shape[0]

        def transform(hyper: dict[str, Any]) -> Any:
            return optax.inject_hyperparams(factory, static_args=tuple(static_opts))(
                **static_opts, **hyper
            )

        hyper0 = {k: 0.0 for k in numeric}
        update = transform(hyper0).update  # reads the hyperparameters from the state

        def init(p: Any, hyper: dict[str, Any]) -> Any:
            return transform(hyper).init(p)

        def apply(p: Any, state: Any, grads: Any, count: Any) -> tuple[Any, Any]:
            grads = [g / count for g in grads]
            updates, state = update(grads, state, p)
            return optax.apply_updates(p, updates), state

        def step(
            p: Any, state: Any, X: Any, Y: Any, idx: Any, w: Any, count: Any
        ) -> tuple[Any, Any, Any]:
            total, grads = jax.value_and_grad(loss_sum)(p, X, Y, idx, w)
            p, state = apply(p, state, grads, count)
            return p, state, total

        def epoch(
            p: Any, state: Any, X: Any, Y: Any, idx: Any, w: Any, counts: Any
        ) -> tuple[Any, Any, Any]:
            """Every minibatch of one epoch (rows of ``idx``/``w``) in one compiled loop."""

            def body(carry: Any, batch: Any) -> tuple[Any, Any]:
                p, state = carry
                p, state, total = step(p, state, X, Y, *batch)
                return (p, state), total

            (p, state), totals = jax.lax.scan(body, (p, state), (idx, w, counts))
            return p, state, jnp.sum(totals)

        self.epoch = jax.jit(epoch)
        self._lock = threading.Lock()
        self._warm: set[Any] = set()
        self.init = jax.jit(init)
        self.grad = jax.jit(jax.value_and_grad(loss_sum))
        self.apply = jax.jit(apply)
        self.step = jax.jit(step)
        self.forward = jax.jit(call)

    @contextlib.contextmanager
    def first_call(self, key: Any):
        """Serializes the first call for a shape (its compilation): concurrent sweep runs
        wait for one compilation instead of each compiling the same step."""
        if key in self._warm:
            yield
            return
        with self._lock:
            yield
            self._warm.add(key)


_TRAINERS: dict[tuple, _Trainer] = {}
_TRAINERS_LOCK = threading.Lock()


def _trainer(
    model_blob: str,
    loss: str,
    loss_blob: str | None,
    optimizer: str,
    static: tuple,
    numeric: tuple,
) -> _Trainer:
    """One ``_Trainer`` per (model, loss, optimizer kind), shared by threads (sweep runs)."""
    key = (model_blob, loss, loss_blob, optimizer, static, numeric)
    with _TRAINERS_LOCK:
        t = _TRAINERS.get(key)
        if t is None:
            if len(_TRAINERS) >= 32:
                _TRAINERS.pop(next(iter(_TRAINERS)))
            t = _TRAINERS[key] = _Trainer(
                model_blob, loss, loss_blob, optimizer, static, numeric
            )
        return t


def _padded(idx: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``idx`` padded to ``size`` entries (row 0) and the row weights (0 for padding)."""
    w = np.zeros(size, dtype=np.float32)
    w[: len(idx)] = 1.0
    out = np.zeros(size, dtype=np.int32)
    out[: len(idx)] = idx
    return out, w


def train(
    model_blob: str,
    loss_blob: str | None,
    leaves: list[np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    s: TrainSettings,
    comm: Any = None,
    device: Any = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Trains on the whole (X, y), data parallel over ``comm``'s ranks (None: this rank only).
    Returns the trained leaves and the per-epoch mean loss (float32).

    Minibatches are padded to one size (weight-0 rows), so that one compiled step serves
    every batch; a custom loss (a batch mean) is evaluated on the real rows only."""
    jax = _jax()
    size = comm.size if comm is not None else 1
    rank = comm.rank if comm is not None else 0
    n = int(X.shape[0])
    if n == 0:
        raise DLError("train: no rows to train on (the training table is empty)")
    if y.shape[0] != n:
        raise DLError(f"train: X has {n} rows but y has {y.shape[0]}")
    _, static, numeric = _optimizer(s.optimizer, s.options)
    t = _trainer(
        model_blob,
        s.loss,
        loss_blob,
        s.optimizer,
        tuple(sorted(static.items())),
        tuple(sorted(numeric)),
    )
    device = device if device is not None else jax.devices("cpu")[0]
    put = functools.partial(
        jax.device_put, device=device
    )  # committed: one compiled step
    Xd, yd = (
        to_jax(np.ascontiguousarray(X), device),
        to_jax(np.ascontiguousarray(y), device),
    )
    params = [put(np.asarray(leaf)) for leaf in leaves]
    hyper = {k: np.float32(v) for k, v in numeric.items()}
    try:
        state = put(
            t.init(params, hyper)
        )  # committed like every later state: one compiled step
    except (TypeError, ValueError) as e:
        raise DLError(
            f"optax.{s.optimizer}({', '.join(f'{k}={v!r}' for k, v in s.options.items())}): {e}"
        ) from None
    batch = min(s.batch_size, n)
    share = -(-batch // size)  # rows of a global batch per rank (padded)
    rng = np.random.default_rng(s.seed)
    history = np.zeros(s.epochs, dtype=np.float32)
    shapes = [np.shape(leaf) for leaf in leaves]
    for epoch in range(s.epochs):
        order = (rng.permutation(n) if s.shuffle else np.arange(n)).astype(np.int32)
        epoch_loss = 0.0
        if size == 1 and t.padded:  # the whole epoch in one compiled loop
            steps = -(-n // batch)
            idx = np.zeros(steps * batch, dtype=np.int32)
            idx[:n] = order
            w = np.zeros(steps * batch, dtype=np.float32)
            w[:n] = 1.0
            counts = np.full(steps, batch, dtype=np.float32)
            counts[-1] = n - (steps - 1) * batch
            args = (
                Xd,
                yd,
                put(idx.reshape(steps, batch)),
                put(w.reshape(steps, batch)),
                put(counts),
            )
            with t.first_call(("epoch", steps, batch)):
                params, state, total = t.epoch(params, state, *args)
            history[epoch] = float(total) / n
            continue
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            count = np.float32(len(idx))
            if size == 1:
                pidx, w = (
                    _padded(idx, batch)
                    if t.padded
                    else (idx, np.ones(len(idx), np.float32))
                )
                params, state, total = t.step(
                    params, state, Xd, yd, put(pidx), put(w), count
                )
                epoch_loss += float(total)
                continue
            mine = idx[len(idx) * rank // size : len(idx) * (rank + 1) // size]
            if t.padded:
                pidx, w = _padded(mine, share)
            else:
                pidx, w = mine, np.ones(len(mine), np.float32)
            if len(pidx):
                total, grads = t.grad(params, Xd, yd, put(pidx), put(w))
                local = np.concatenate(
                    [
                        [float(total)],
                        *[np.asarray(g, dtype=np.float64).ravel() for g in grads],
                    ]
                )
            else:
                local = np.zeros(1 + sum(int(np.prod(sh)) for sh in shapes))
            summed = comm.allreduce(local, "sum")
            epoch_loss += float(summed[0])
            grads, offset = [], 1
            for leaf, sh in zip(leaves, shapes):
                k = int(np.prod(sh))
                grads.append(
                    put(summed[offset : offset + k].reshape(sh).astype(leaf.dtype))
                )
                offset += k
            params, state = t.apply(params, state, grads, count)
        history[epoch] = epoch_loss / n
    return [np.asarray(p) for p in params], history


def predict(
    model_blob: str, leaves: list[np.ndarray], X: np.ndarray, device: Any = None
) -> np.ndarray:
    jax = _jax()
    if X.shape[0] == 0:  # the lowering's batch dimension is >= 1
        aval = _deserialize(model_blob).out_avals[0]
        return np.empty((0, *[int(d) for d in aval.shape[1:]]), dtype=aval.dtype)
    forward = _trainer(model_blob, "mse", None, "sgd", (), ("learning_rate",)).forward
    params = [jax.device_put(np.asarray(leaf), device) for leaf in leaves]
    return np.asarray(forward(params, to_jax(np.ascontiguousarray(X), device)))


# ---------------------------------------------------------------------------- ops


def _settings(a: dict[str, Any]) -> TrainSettings:
    return TrainSettings(
        loss=str(a["loss"]),
        optimizer=str(a["optimizer"]),
        options=dict(a.get("optimizer_options") or {}),
        epochs=int(a["epochs"]),
        batch_size=int(a["batch_size"]),
        shuffle=bool(a["shuffle"]),
        seed=int(a["seed"]),
    )


def _gather_rows(comm: Any, value: TensorValue) -> np.ndarray:
    """The whole tensor on every rank (rank order)."""
    data = value.data
    if value.replicated or comm.size == 1:
        return data
    rows = np.concatenate(
        comm.allgather_array(np.array([data.shape[0]], dtype=np.int64))
    )
    parts = comm.allgather_array(np.ascontiguousarray(data).ravel())
    tail = data.shape[1:]
    out = [
        p.astype(data.dtype, copy=False).reshape((int(r), *tail))
        for p, r in zip(parts, rows)
    ]
    return np.concatenate(out) if out else data


def _canonical(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (of X and y together) in value order: the order a table arrives in depends on the
    rank count (joins and shuffles move rows), so training with ``shuffle=True`` first puts
    rows into this order, making the result independent of how many ranks ran the
    data engineering before it (with ``shuffle=False`` the table's order is kept)."""
    n = X.shape[0]
    keys = [c for c in np.asarray(X).reshape(n, -1).T] + [
        c for c in np.asarray(y).reshape(n, -1).T
    ]
    order = np.lexsort(keys[::-1])
    return X[order], y[order]


def _requested_device(ex: Any, op: Any) -> str | None:
    wanted = op.attributes.get("taskgraph.device")
    if wanted is None and getattr(ex, "island", None) is not None:
        wanted = ex.island.device
    return wanted


def _record(
    op: str, run: int, rank: int, start: float, end: float, device: Any
) -> None:
    entry = {
        "op": op,
        "run": run,
        "rank": rank,
        "start": start,
        "end": end,
        "device": str(device.platform),
    }
    with _TIMELINE_LOCK:
        TIMELINE.append(entry)
        path = os.environ.get("OPGRAPH_DL_TIMELINE")  # JSON lines, also from MPI ranks
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")


def _grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = sorted(grid)
    return [
        dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))
    ]


def _sweep(
    ex: Any,
    op: Any,
    X: np.ndarray,
    y: np.ndarray,
    leaves: list[np.ndarray],
    device: Any,
) -> pa.Table:
    comm = ex.comm
    a = op.attributes
    base = _settings(a)
    points = _grid_points(a["grid"])
    model_blob = _blob(op, MODEL_EXPORT_ATTR)
    loss_blob = (
        _blob(op, LOSS_EXPORT_ATTR)
        if base.loss.startswith(CUSTOM_LOSS_PREFIX)
        else None
    )
    mine = [k for k in range(len(points)) if k % comm.size == comm.rank]

    def run(k: int) -> float:
        point = points[k]
        s = TrainSettings(**{**base.__dict__, "options": dict(base.options)})
        for key, value in point.items():
            if key in SWEEP_RUN_OPTIONS:
                setattr(s, key, value)
            else:
                s.options[key] = value
        start = time.perf_counter()
        _, history = train(model_blob, loss_blob, leaves, X, y, s, None, device)
        _record(op.op, k, comm.rank, start, time.perf_counter(), device)
        return float(history[-1])

    finals = np.full(len(points), np.nan)
    if mine:
        workers = min(len(mine), MAX_CONCURRENT_RUNS)  # every run of this rank at once
        with ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="opgraph-sweep"
        ) as pool:
            for k, value in zip(mine, pool.map(run, mine)):
                finals[k] = value
    if comm.size > 1:
        gathered = comm.allgather_array(finals)
        for k in range(len(points)):
            finals[k] = gathered[k % comm.size][k]
    cols: dict[str, Any] = {key: [p[key] for p in points] for key in sorted(a["grid"])}
    cols[SWEEP_LOSS_COLUMN] = pa.array(finals.astype(np.float32))
    return pa.table(cols)


# ------------------------------------------------------------- concurrent islands


def _value_table(value: Any) -> pa.Table:
    """A DL value as a table of its leaves (raw bytes, dtype, shape) for ``comm.bcast``."""
    if isinstance(value, ParamsValue):
        leaves, kind, replicated = value.leaves, "params", True
    elif isinstance(value, TensorValue):
        leaves, kind, replicated = [value.data], "tensor", value.replicated
    else:
        raise OpgraphError(f"concurrent islands: cannot send a {type(value).__name__}")
    arrays = [np.ascontiguousarray(leaf) for leaf in leaves]
    table = pa.table(
        {
            "data": pa.array([a.tobytes() for a in arrays], pa.binary()),
            "dtype": pa.array([a.dtype.str for a in arrays], pa.string()),
            "shape": pa.array([json.dumps(list(a.shape)) for a in arrays], pa.string()),
        }
    )
    return table.replace_schema_metadata({"kind": kind, "replicated": "1" if replicated else "0"})


def _table_value(table: pa.Table) -> Any:
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    leaves = [
        np.frombuffer(d, dtype=np.dtype(t)).reshape(json.loads(sh)).copy()
        for d, t, sh in zip(
            table.column("data").to_pylist(), table.column("dtype").to_pylist(), table.column("shape").to_pylist()
        )
    ]
    if meta.get("kind") == "params":
        return ParamsValue(leaves)
    return TensorValue(leaves[0], meta.get("replicated") == "1")


def run_concurrent_islands(ex: Any, batch: Sequence[Any]) -> None:
    """Runs independent DL islands (their ops ``dl.train``; no island of ``batch`` reads
    another's values) at the same time on disjoint resources (issue #5 item 4, sweeps):

    * the tensors they read are gathered whole onto every rank first (one collective each);
    * the ranks are split into ``g = min(len(batch), size)`` disjoint groups (rank r in group
      ``r % g``; ``comm.split``); island k runs on group ``k % g``: data parallel over the
      group's ranks when it has several, else in a thread of its own next to the group's
      other islands (XLA releases the GIL, so one rank's trainings overlap);
    * each island's results are then broadcast from its group's first rank (rank ``k % g``).

    Each island's executed interval goes to the executor's island timeline."""
    import copy

    from opgraph.runtime.executor import record_island

    comm = ex.comm
    for island in batch:  # the same order on every rank: collective gathers
        for op in island.ops:
            for v in op.operands:
                value = ex.env.get(v)
                if isinstance(value, TensorValue) and not value.replicated:
                    ex.env[v] = TensorValue(_gather_rows(comm, value), replicated=True)
    groups = max(1, min(len(batch), comm.size))
    color = comm.rank % groups
    sub = comm.split(color, comm.rank) if comm.size > 1 else comm
    members = [r for r in range(comm.size) if r % groups == color]
    mine = [island for k, island in enumerate(batch) if k % groups == color]

    def run_island(island: Any) -> None:
        view = copy.copy(ex)  # shares env/schemas; its own island and communicator
        view.island, view.comm, view.world_rank = island, sub, comm.rank
        start = time.perf_counter()
        for op in island.ops:
            view.run_op(op)
        record_island(island.name, comm.rank, start, time.perf_counter(), members, concurrent=True)

    try:
        if len(mine) == 1 or sub.size > 1:
            for island in mine:
                run_island(island)
        elif mine:
            workers = min(len(mine), MAX_CONCURRENT_RUNS)
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="opgraph-island") as pool:
                for f in [pool.submit(run_island, island) for island in mine]:
                    f.result()
    finally:
        if sub is not comm and hasattr(sub, "free"):
            sub.free()
    if comm.size == 1:
        return
    for k, island in enumerate(batch):  # results to every rank
        root = k % groups
        for op in island.ops:
            for v in op.results:
                table = comm.bcast(_value_table(ex.env[v]) if comm.rank == root else None, root)
                if comm.rank != root:
                    ex.env[v] = _table_value(table)
                    ex.schemas[v] = op.schema_ or []


def is_dl_value(value: Any) -> bool:
    return isinstance(value, TensorValue | ParamsValue)


def comm_on_dl_value(comm: Any, op: Any, value: Any) -> Any:
    """A ``comm`` op the compiler put on a tensor or parameter value: parameters are the same
    on every rank already; a tensor becomes whole on every rank for ``comm.broadcast`` /
    ``comm.allgather`` and stays as it is otherwise (training gathers its rows itself)."""
    if (
        isinstance(value, TensorValue)
        and op.op in ("comm.broadcast", "comm.allgather")
        and not value.replicated
    ):
        return TensorValue(_gather_rows(comm, value), replicated=True)
    return value


def run_dl_op(ex: Any, op: Any) -> Any:
    """Runs one ``dl.*`` op for the executor ``ex`` (``ex.comm``, ``ex.arg(op, i)``,
    ``ex.island``). Returns the op's value, a list of values for several results, or None."""
    from opgraph.runtime import local_ops as L
    from opgraph.runtime.parallel_ops import ANY, REPLICATED, Dist

    comm = ex.comm
    name = op.op
    a = op.attributes
    if name == "dl.to_tensor":
        d = ex.arg(op)
        shape, dtype = _tensor_type(op.result_types[0][len("tensor<") : -1])
        vector = len(shape) == 1
        return TensorValue(
            table_to_array(d.table, list(a["columns"]), dtype.name, vector),
            d.part.kind == "replicated",
        )
    if name == "dl.to_table":
        t = ex.arg(op)
        table = _tensor_to_table(t.data, list(a["names"]))
        if op.schema_ is not None:
            table = L.conform(table, L.arrow_schema(op.schema_))
        return Dist(table, REPLICATED if t.replicated else ANY)
    if name == "dl.params":
        types = _leaf_types(op.result_types[0])
        leaves = [parse_dense(v) for v in a["values"]]
        return ParamsValue(
            [
                leaf.astype(dt, copy=False).reshape(sh)
                for leaf, (sh, dt) in zip(leaves, types)
            ]
        )
    if name == "dl.load":
        return ParamsValue(
            _load(str(a["path"]), list(a["names"]), _leaf_types(op.result_types[0]))
        )
    if name == "dl.save":
        p = ex.arg(op)
        if comm.rank == 0:
            _save(str(a["path"]), list(a["names"]), str(a["param_paths"]), p.leaves)
        if comm.size > 1:
            comm.barrier()
        return None
    device = select_device(
        _requested_device(ex, op),
        carried_platforms(op),
        node_rank(getattr(ex, "world_rank", comm.rank)),
    )
    if name == "dl.predict":
        x, p = ex.arg(op, 0), ex.arg(op, 1)
        out = predict(_blob(op, MODEL_EXPORT_ATTR), p.leaves, x.data, device)
        return TensorValue(out, x.replicated)
    if name == "dl.train":
        x, y, p = ex.arg(op, 0), ex.arg(op, 1), ex.arg(op, 2)
        X, Y = _gather_rows(comm, x), _gather_rows(comm, y)
        s = _settings(a)
        model_blob = _blob(op, MODEL_EXPORT_ATTR)
        loss_blob = (
            _blob(op, LOSS_EXPORT_ATTR)
            if s.loss.startswith(CUSTOM_LOSS_PREFIX)
            else None
        )
        if s.shuffle:
            X, Y = _canonical(X, Y)
        start = time.perf_counter()
        leaves, history = train(
            model_blob,
            loss_blob,
            p.leaves,
            X,
            Y,
            s,
            comm if comm.size > 1 else None,
            device,
        )
        run = a.get("dl.sweep_run")  # [run index, runs] on a training made from a sweep
        rank = getattr(ex, "world_rank", comm.rank)  # a concurrent island's group: world rank
        _record(name, int(run[0]) if run else 0, rank, start, time.perf_counter(), device)
        return [ParamsValue(leaves), TensorValue(history, replicated=True)]
    if name == "dl.sweep":
        x, y, p = ex.arg(op, 0), ex.arg(op, 1), ex.arg(op, 2)
        X, Y = _gather_rows(comm, x), _gather_rows(comm, y)
        if bool(a["shuffle"]):
            X, Y = _canonical(X, Y)
        table = _sweep(ex, op, X, Y, p.leaves, device)
        if op.schema_ is not None:
            table = L.conform(table, L.arrow_schema(op.schema_))
        return Dist(table, REPLICATED)
    if name == "dl.sweep_result":  # the table of an expanded sweep (pass expand-sweeps)
        points = _grid_points(a["grid"])
        finals = [float(ex.arg(op, i).data[-1]) for i in range(len(op.operands))]
        if len(finals) != len(points):
            raise DLError(f"sweep_result: {len(finals)} runs for a grid of {len(points)} points")
        cols: dict[str, Any] = {key: [p[key] for p in points] for key in sorted(a["grid"])}
        cols[SWEEP_LOSS_COLUMN] = pa.array(np.asarray(finals, dtype=np.float32))
        table = pa.table(cols)
        if op.schema_ is not None:
            table = L.conform(table, L.arrow_schema(op.schema_))
        return Dist(table, REPLICATED)
    raise OpgraphError(f"the runtime cannot run '{name}' yet")


# ---------------------------------------------------------------------- save / load


def _save(
    path: str, names: list[str], paths_json: str, leaves: list[np.ndarray]
) -> None:
    """``.npz`` (no pickle): member per leaf + the key paths; temporary file + rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(
        directory,
        f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp.npz",
    )
    members = {n: np.asarray(leaf) for n, leaf in zip(names, leaves)}
    members["__opgraph_paths__"] = np.array(paths_json)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **members)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load(
    path: str, names: list[str], types: list[tuple[tuple[int, ...], np.dtype]]
) -> list[np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            leaves = []
            for n, (shape, dtype) in zip(names, types):
                if n not in npz.files:
                    raise DLError(f"load: '{path}' has no member '{n}'")
                arr = npz[n]
                if tuple(arr.shape) != tuple(shape):
                    raise DLError(
                        f"load: '{path}' member '{n}' has shape {arr.shape}, the plan expects {shape}"
                    )
                leaves.append(arr.astype(dtype, copy=False))
            return leaves
    except (OSError, ValueError) as e:
        raise DLError(f"load: cannot read parameters from '{path}': {e}") from None
