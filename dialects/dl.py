"""The ``dl`` dialect: deep learning on tensors produced from tables.

Tensors are builtin ``tensor<...>`` types; the batch (row) dimension is dynamic (``?``).
A model is a pure JAX function ``model_fn(params, x)``; the tracer lowers it to StableHLO
once per module and keeps it at module top level as ``dl.model @name`` (a custom loss
function likewise becomes ``dl.loss @name``). Ops in the pipeline body refer to it by
symbol::

    "dl.model"() {sym_name = "mlp", stablehlo = "module @jit_mlp ...",
                  input_types = [tensor<5x8xf32>, ..., tensor<?x5xf32>],
                  output_types = [tensor<?x1xf32>], param_tree = "PyTreeDef({...})"} : () -> ()
    %x = "dl.to_tensor"(%t) {columns = ["a", "b"], dtype = f32} : (!df.table<...>) -> tensor<?x2xf32>
    %p = "dl.params"() {values = [dense<...> : tensor<2x1xf32>, ...], ...} : () -> tuple<tensor<2x1xf32>, ...>
    %w, %l = "dl.train"(%x, %y, %p) {model = @mlp, loss = "mse", ...}

Parameters travel as **one** SSA value of builtin type ``tuple<tensor<...>, ...>``: the leaves
of the parameter pytree in ``jax.tree_util`` flattening order. (Not a variadic group of
tensors: upstream IRDL binds every element of a variadic group to one constraint variable, so
leaves of different shapes would not verify upstream.) The model's ``input_types`` are the
leaf types followed by the type of ``x``, as in the StableHLO ``@main`` signature.

As in the ``df`` dialect, every check that both the tracer and a verifier need lives in an
``infer_*``/``check_*`` function raising ``SchemaError``: the tracer turns it into a
``TraceError`` at the user's line, a verifier into a ``VerifyException`` naming the op.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from opgraph.dialects.dataframe import (
    SchemaError,
    StringType,
    TableType,
    fail,
    is_element_type,
    is_numeric,
    type_str,
)
from xdsl.dialects.builtin import (
    DYNAMIC_INDEX,
    ArrayAttr,
    BoolAttr,
    DenseIntOrFPElementsAttr,
    DictionaryAttr,
    Float32Type,
    Float64Type,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    StringAttr,
    SymbolRefAttr,
    TensorType,
    TupleType,
    i64,
)
from xdsl.ir import Attribute, Dialect, Operation, SSAValue
from xdsl.irdl import (
    EqAttrConstraint,
    IRDLOperation,
    attr_def,
    irdl_op_definition,
    operand_def,
    result_def,
    traits_def,
    var_operand_def,
)
from xdsl.traits import HasParent, Pure, SymbolOpInterface

# ----------------------------------------------------------------------------- helpers

TENSOR_DTYPES: dict[str, Attribute] = {
    "float32": Float32Type(),
    "float64": Float64Type(),
    "int32": IntegerType(32),
    "int64": IntegerType(64),
}
"""Element types a ``dl`` tensor may have (numpy dtype name -> MLIR type)."""

BUILTIN_LOSSES = ("mse", "cross_entropy")
CUSTOM_LOSS_PREFIX = "custom:"

LOSS_HISTORY_TYPE = Float32Type()

SWEEP_LOSS_COLUMN = "final_loss"
"""Name of the column of ``dl.sweep``'s result holding each run's final training loss."""

SWEEP_RUN_OPTIONS = ("batch_size", "epochs", "optimizer", "seed")
"""Grid keys of ``dl.sweep`` that are training settings, not optimizer options."""

# Discardable attributes (dialect-prefixed, so upstream MLIR accepts them on any op):
MODEL_EXPORT_ATTR = "dl.model_export"
"""On ``dl.train``/``dl.predict``/``dl.sweep``: the model as ``jax.export`` serialization
(``Exported.serialize(vjp_order=1)``, base64): the same lowering as the ``dl.model``'s
StableHLO text plus its VJP, in the form the runtime can call (``jax.export.deserialize``)
and differentiate. It rides on the ops that run the model because ``plan.json`` lists the
islands' ops only. Data, not code: deserializing runs nothing of the user's Python."""

LOSS_EXPORT_ATTR = "dl.loss_export"
"""Like ``dl.model_export``, for a custom loss (``loss = "custom:<name>"``)."""

CPU_ONLY_ATTR = "dl.cpu_only"
"""``true`` on ``dl.train``/``dl.predict``/``dl.sweep`` whose model or custom loss JAX could not
lower for CUDA where the pipeline was traced (the plan carries its CPU export alone): the
compiler keeps the op off the GPU."""

FLOPS_ATTR = "dl.flops_per_row"
BYTES_ATTR = "dl.bytes_per_row"
"""f64 **per row of x**, from XLA's cost analysis of the lowered function (JAX
``jit(f).lower(...).cost_analysis()`` on a batch of 256 rows, divided by 256): on ``dl.model``
and ``dl.predict`` one forward pass; on ``dl.train``/``dl.sweep`` one forward + backward pass
(per epoch; a sweep: per run), taken as 3 forward passes. Per row because the row count is only known to the
statistics passes: the cost model's total is ``per_row * rows`` (``* epochs`` for training).
(Not ``dl.flops``: the cost model reads that name as a total.)"""


def dtype_name(t: Attribute) -> str:
    """The numpy dtype name of a tensor element type (``f32`` -> ``float32``)."""
    for name, et in TENSOR_DTYPES.items():
        if et == t:
            return name
    return type_str(t)


def tensor_str(t: Attribute) -> str:
    """``tensor<?x5xf32>`` as MLIR writes it (for messages)."""
    if not isinstance(t, TensorType):
        return str(t)
    dims = ["?" if d == DYNAMIC_INDEX else str(d) for d in t.get_shape()]
    return "tensor<" + "".join(d + "x" for d in dims) + _mlir_elt(t.element_type) + ">"


def _mlir_elt(t: Attribute) -> str:
    if isinstance(t, Float32Type):
        return "f32"
    if isinstance(t, Float64Type):
        return "f64"
    if isinstance(t, IntegerType):
        return f"i{t.width.data}"
    return str(t)


def batched_tensor(element_type: Attribute, feature_dims: Sequence[int]) -> TensorType:
    """``tensor<?x...xT>``: a dynamic number of rows of static shape ``feature_dims``."""
    return TensorType(element_type, [DYNAMIC_INDEX, *feature_dims])


def _tensor(value: SSAValue | Attribute) -> TensorType:
    t = value.type if isinstance(value, SSAValue) else value
    if not isinstance(t, TensorType):
        raise SchemaError(f"expected a tensor, got {t}")
    return t


def params_type(leaves: Sequence[TensorType]) -> TupleType:
    """The type of a parameter set: ``tuple<leaf tensor types...>``."""
    return TupleType(ArrayAttr(list(leaves)))


def leaf_types(value: SSAValue | Attribute) -> list[TensorType]:
    """The leaf tensor types of a parameter-set value (or type)."""
    t = value.type if isinstance(value, SSAValue) else value
    if not isinstance(t, TupleType):
        raise SchemaError(f"parameters must be a tuple of tensors, got {t}")
    out = []
    for leaf in t.types:
        if not isinstance(leaf, TensorType) or not is_static(leaf):
            raise SchemaError(f"parameter leaves must be tensors of static shape, got {leaf}")
        out.append(leaf)
    if not out:
        raise SchemaError("a parameter set needs at least one leaf")
    return out


def _strs(attr: ArrayAttr) -> list[str]:
    return [a.data for a in attr]


def _int(attr: IntegerAttr) -> int:
    return attr.value.data


def is_static(t: TensorType) -> bool:
    return all(d != DYNAMIC_INDEX for d in t.get_shape())


def batch_compatible(actual: TensorType, expected: TensorType) -> bool:
    """Same element type and rank, equal dimensions after the batch dimension (dimension 0
    is the row count: it may differ, e.g. ``?`` against a static size)."""
    if actual.element_type != expected.element_type or actual.get_num_dims() != expected.get_num_dims():
        return False
    if actual.get_num_dims() == 0:
        return True
    return tuple(actual.get_shape()[1:]) == tuple(expected.get_shape()[1:])


def rows_consistent(a: TensorType, b: TensorType) -> bool:
    """Row counts agree where both are static."""
    if a.get_num_dims() == 0 or b.get_num_dims() == 0:
        return False
    da, db = a.get_shape()[0], b.get_shape()[0]
    return da == DYNAMIC_INDEX or db == DYNAMIC_INDEX or da == db


# ------------------------------------------------------------------ shape inference


def infer_to_tensor(schema: TableType, columns: Sequence[str], dtype: Attribute, vector: bool) -> TensorType:
    """``to_tensor``: ``tensor<?xNxT>`` for N columns, or ``tensor<?xT>`` when ``vector`` (one
    column given as a name rather than a list). Columns must be numeric and non-nullable."""
    if not columns:
        raise SchemaError("to_tensor needs at least one column")
    if vector and len(columns) != 1:
        raise SchemaError("a 1-D to_tensor takes exactly one column")
    if len(set(columns)) != len(columns):
        raise SchemaError("to_tensor lists a column twice")
    if dtype not in TENSOR_DTYPES.values():
        raise SchemaError(
            f"unsupported tensor dtype {type_str(dtype)} (expected one of {', '.join(TENSOR_DTYPES)})"
        )
    for name in columns:
        found = schema.column(name)
        if found is None:
            raise SchemaError(f"unknown column '{name}' in to_tensor (columns: {', '.join(schema.column_names)})")
        t, nullable = found
        if isinstance(t, StringType) or not is_numeric(t):
            raise SchemaError(f"column '{name}' has type {type_str(t)}: to_tensor needs numeric columns")
        if nullable:
            raise SchemaError(f"column '{name}' may hold nulls: fill or filter them before to_tensor")
    return batched_tensor(dtype, [] if vector else [len(columns)])


def infer_to_table(tensor: TensorType, names: Sequence[str]) -> TableType:
    """``to_table``: a 1-D tensor becomes one column, a 2-D ``?xN`` tensor N columns."""
    rank = tensor.get_num_dims()
    if rank not in (1, 2):
        raise SchemaError(f"to_table needs a 1-D or 2-D tensor, got {tensor_str(tensor)}")
    width = 1 if rank == 1 else tensor.get_shape()[1]
    if width == DYNAMIC_INDEX:
        raise SchemaError(f"to_table needs a static number of columns, got {tensor_str(tensor)}")
    if len(names) != width:
        raise SchemaError(f"to_table got {len(names)} names for {width} columns of {tensor_str(tensor)}")
    if len(set(names)) != len(names):
        raise SchemaError("to_table names a column twice")
    if not is_element_type(tensor.element_type):
        raise SchemaError(f"to_table cannot store elements of type {tensor.element_type}")
    return TableType([(n, tensor.element_type, False) for n in names])


def check_loss_target(loss: str, pred: TensorType, y: TensorType, custom: LossOp | None = None) -> None:
    """Whether the targets ``y`` fit the model output ``pred`` under ``loss``."""
    if not rows_consistent(pred, y):
        raise SchemaError(f"y ({tensor_str(y)}) must have one row per row of X")
    if loss == "mse":
        if not isinstance(y.element_type, Float32Type | Float64Type):
            raise SchemaError(f"loss 'mse' needs float targets, y is {tensor_str(y)}")
        if not batch_compatible(y, TensorType(y.element_type, pred.get_shape())):
            raise SchemaError(
                f"loss 'mse' needs targets shaped like the model output: model gives {tensor_str(pred)}, "
                f"y is {tensor_str(y)} (to_tensor(t, 'c') gives a vector, to_tensor(t, ['c']) one column)"
            )
    elif loss == "cross_entropy":
        if pred.get_num_dims() != 2 or not isinstance(pred.element_type, Float32Type | Float64Type):
            raise SchemaError(f"loss 'cross_entropy' needs float logits of shape (rows, classes), model gives {tensor_str(pred)}")
        labels = isinstance(y.element_type, IntegerType) and y.get_num_dims() == 1
        probs = batch_compatible(y, pred)
        if not (labels or probs):
            raise SchemaError(
                f"loss 'cross_entropy' needs integer class labels (a 1-D int tensor) or class probabilities "
                f"shaped like the model output {tensor_str(pred)}, y is {tensor_str(y)}"
            )
    elif loss.startswith(CUSTOM_LOSS_PREFIX):
        if custom is None:
            return
        expected = [_tensor(t) for t in custom.input_types]
        if not batch_compatible(pred, expected[0]) or not batch_compatible(y, expected[1]):
            raise SchemaError(
                f"loss @{custom.sym_name.data} takes ({tensor_str(expected[0])}, {tensor_str(expected[1])}), "
                f"got model output {tensor_str(pred)} and y {tensor_str(y)}"
            )
    else:
        raise SchemaError(
            f"unknown loss '{loss}' (expected {', '.join(repr(x) for x in BUILTIN_LOSSES)} or a function loss(pred, y))"
        )


def grid_column_type(key: str, values: ArrayAttr) -> Attribute:
    """The result column type of one ``dl.sweep`` grid key (homogeneous, non-empty values)."""
    items = list(values)
    if not items:
        raise SchemaError(f"grid '{key}' has no values")
    if all(isinstance(v, StringAttr) for v in items):
        return StringType()
    if all(isinstance(v, FloatAttr) for v in items):
        return Float64Type()
    if all(isinstance(v, IntegerAttr) and v.type == IntegerType(1) for v in items):
        return IntegerType(1)
    if all(isinstance(v, IntegerAttr) and v.type == i64 for v in items):
        return i64
    raise SchemaError(f"grid '{key}' mixes value kinds: use only numbers, only booleans or only strings")


def infer_sweep(grid: DictionaryAttr) -> TableType:
    """One row per grid point: the grid keys in sorted order, then ``final_loss``."""
    if not grid.data:
        raise SchemaError("sweep needs a non-empty grid")
    cols = []
    for key in sorted(grid.data):
        values = grid.data[key]
        if not isinstance(values, ArrayAttr):
            raise SchemaError(f"grid '{key}' must be an array of values")
        cols.append((key, grid_column_type(key, values), False))
    if SWEEP_LOSS_COLUMN in grid.data:
        raise SchemaError(f"'{SWEEP_LOSS_COLUMN}' is reserved for the result column")
    return TableType([*cols, (SWEEP_LOSS_COLUMN, LOSS_HISTORY_TYPE, False)])


def param_paths_json(paths: Sequence[Sequence[tuple[str, str | int]]]) -> str:
    """The ``param_paths`` attribute: one key path per leaf, each component ``["d", key]`` (dict
    key), ``["s", index]`` (list/tuple index) or ``["a", name]`` (attribute)."""
    return json.dumps([[list(c) for c in p] for p in paths], separators=(",", ":"))


def parse_param_paths(text: str) -> list[list[tuple[str, str | int]]]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise SchemaError(f"param_paths is not JSON: {e}") from None
    if not isinstance(raw, list):
        raise SchemaError("param_paths must be a JSON list of key paths")
    out = []
    for path in raw:
        if not isinstance(path, list) or not all(
            isinstance(c, list) and len(c) == 2 and c[0] in ("d", "s", "a") and isinstance(c[1], str | int)
            for c in path
        ):
            raise SchemaError(f"bad key path {path!r} in param_paths")
        out.append([(c[0], c[1]) for c in path])
    return out


# --------------------------------------------------------------------- module ops


class _FunctionOp(IRDLOperation):
    """A JAX function lowered to StableHLO, kept at module top level as a symbol.

    Upstream MLIR (the torch_mlir wheel) does not register the ``stablehlo`` dialect, so the
    StableHLO module cannot be nested as IR that every consumer verifies; it is carried as
    text (``jax.export`` output without debug locations) and its signature is repeated as
    ``input_types`` / ``output_types`` so that verifiers can check uses without parsing it.
    """

    sym_name = attr_def(StringAttr)
    stablehlo = attr_def(StringAttr)
    input_types = attr_def(ArrayAttr)
    output_types = attr_def(ArrayAttr)

    traits = traits_def(SymbolOpInterface(), HasParent(ModuleOp))

    def verify_(self) -> None:
        if not self.sym_name.data:
            raise fail(self, "sym_name must not be empty")
        for what, types in (("input_types", self.input_types), ("output_types", self.output_types)):
            for t in types:
                if not isinstance(t, TensorType):
                    raise fail(self, f"{what} must hold tensor types, got {t}")
        if "@main" not in self.stablehlo.data:
            raise fail(self, "stablehlo must hold a StableHLO module with a @main function")


@irdl_op_definition
class ModelOp(_FunctionOp):
    """``model_fn(params, x)`` lowered to StableHLO with a symbolic batch dimension.

    ``input_types`` are the parameter leaves (``jax.tree_util`` flattening order) followed by
    ``x`` (``tensor<?x...>``); ``output_types`` holds the one prediction tensor.

    ``param_tree`` is ``str(jax.tree_util.tree_structure(params))``, e.g.
    ``PyTreeDef({'W1': *, 'b1': *})``. It is a string, not nested IR or attributes, because a
    pytree definition is Python-side metadata (dict keys, tuple/list/custom node kinds) with no
    builtin attribute encoding that upstream MLIR could verify; it documents how the leaves
    regroup into the ``params`` argument of ``model_fn``.
    """

    name = "dl.model"
    param_tree = attr_def(StringAttr)

    def __init__(
        self,
        sym_name: str,
        stablehlo: str,
        input_types: Sequence[TensorType],
        output_types: Sequence[TensorType],
        param_tree: str,
    ):
        super().__init__(
            attributes={
                "sym_name": StringAttr(sym_name),
                "stablehlo": StringAttr(stablehlo),
                "input_types": ArrayAttr(list(input_types)),
                "output_types": ArrayAttr(list(output_types)),
                "param_tree": StringAttr(param_tree),
            }
        )

    def verify_(self) -> None:
        super().verify_()
        if len(self.input_types) < 1:
            raise fail(self, "a model takes the parameter leaves and x")
        if len(self.output_types) != 1:
            raise fail(self, f"a model returns one tensor, got {len(self.output_types)}")
        for t in self.param_types:
            if not is_static(t):
                raise fail(self, f"parameter leaves must have static shapes, got {tensor_str(t)}")

    @property
    def param_types(self) -> list[TensorType]:
        return [_tensor(t) for t in list(self.input_types)[:-1]]

    @property
    def x_type(self) -> TensorType:
        return _tensor(list(self.input_types)[-1])

    @property
    def output_type(self) -> TensorType:
        return _tensor(self.output_types.data[0])


@irdl_op_definition
class LossOp(_FunctionOp):
    """A custom ``loss(pred, y) -> scalar`` lowered to StableHLO (symbolic batch dimension);
    ``dl.train``/``dl.sweep`` name it as ``loss = "custom:<sym_name>"``."""

    name = "dl.loss"

    def __init__(self, sym_name: str, stablehlo: str, input_types: Sequence[TensorType], output_type: TensorType):
        super().__init__(
            attributes={
                "sym_name": StringAttr(sym_name),
                "stablehlo": StringAttr(stablehlo),
                "input_types": ArrayAttr(list(input_types)),
                "output_types": ArrayAttr([output_type]),
            }
        )

    def verify_(self) -> None:
        super().verify_()
        if len(self.input_types) != 2:
            raise fail(self, "a loss takes (pred, y)")
        if len(self.output_types) != 1:
            raise fail(self, "a loss returns one scalar")
        out = _tensor(self.output_types.data[0])
        if out.get_num_dims() != 0 or not isinstance(out.element_type, Float32Type | Float64Type):
            raise fail(self, f"a loss returns a float scalar, got {tensor_str(out)}")


def _lookup(op: Operation, ref: SymbolRefAttr, kind: type[_FunctionOp], what: str) -> _FunctionOp | None:
    """The ``dl.model``/``dl.loss`` named by ``ref``; None when ``op`` is not inside a module
    (a detached op cannot be checked against its model)."""
    module = op.parent_op()
    while module is not None and not isinstance(module, ModuleOp):
        module = module.parent_op()
    if module is None:
        return None
    if ref.nested_references.data:
        raise fail(op, f"{what} must be a flat symbol reference, got {ref}")
    for candidate in module.body.block.ops:
        if isinstance(candidate, kind) and candidate.sym_name.data == ref.root_reference.data:
            return candidate
    raise fail(op, f"unknown {what} @{ref.root_reference.data} (no '{kind.name}' op with that name in the module)")


def _leaves(op: Operation, value: SSAValue) -> list[TensorType]:
    try:
        return leaf_types(value)
    except SchemaError as e:
        raise fail(op, str(e)) from None


def _check_params(op: Operation, model: ModelOp, params: SSAValue) -> None:
    expected = model.param_types
    actual = _leaves(op, params)
    if len(actual) != len(expected):
        raise fail(op, f"model @{model.sym_name.data} takes {len(expected)} parameter leaves, got {len(actual)}")
    for i, (t, e) in enumerate(zip(actual, expected)):
        if t != e:
            raise fail(op, f"parameter leaf #{i} has type {tensor_str(t)}, model expects {tensor_str(e)}")


def _check_x(op: Operation, model: ModelOp, x: TensorType) -> None:
    if not batch_compatible(x, model.x_type):
        raise fail(op, f"x has type {tensor_str(x)}, model @{model.sym_name.data} expects {tensor_str(model.x_type)}")


def _check_positive(op: Operation, **values: IntegerAttr) -> None:
    for what, attr in values.items():
        if _int(attr) < 1:
            raise fail(op, f"{what} must be >= 1, got {_int(attr)}")


def _check_loss(op: Operation, loss: str, pred: TensorType, y: TensorType) -> None:
    custom = None
    if loss.startswith(CUSTOM_LOSS_PREFIX):
        custom = _lookup(op, SymbolRefAttr(loss[len(CUSTOM_LOSS_PREFIX):]), LossOp, "loss")
    try:
        check_loss_target(loss, pred, y, custom)  # type: ignore[arg-type]
    except SchemaError as e:
        raise fail(op, str(e)) from None


def _check_optimizer(op: Operation, optimizer: StringAttr, options: DictionaryAttr) -> None:
    if not optimizer.data.isidentifier():
        raise fail(op, f"optimizer must be an optax optimizer name, got '{optimizer.data}'")
    for key, value in options.data.items():
        if not isinstance(value, FloatAttr | IntegerAttr | StringAttr):
            raise fail(op, f"optimizer option '{key}' must be a number, boolean or string, got {value}")


# --------------------------------------------------------------------- tensor ops


@irdl_op_definition
class ToTensorOp(IRDLOperation):
    """Columns of a table as a tensor: ``tensor<?xNxT>`` (rows x columns, in ``columns`` order)
    or ``tensor<?xT>`` for a single column. Values are converted to ``dtype``."""

    name = "dl.to_tensor"
    input = operand_def(TableType)
    columns = attr_def(ArrayAttr[StringAttr])
    dtype = attr_def(Attribute)
    result = result_def(TensorType)
    traits = traits_def(Pure())

    def __init__(self, table: SSAValue, columns: Sequence[str], dtype: Attribute, vector: bool = False):
        assert isinstance(table.type, TableType)
        super().__init__(
            operands=[table],
            attributes={"columns": ArrayAttr([StringAttr(c) for c in columns]), "dtype": dtype},
            result_types=[infer_to_tensor(table.type, columns, dtype, vector)],
        )

    def verify_(self) -> None:
        result = _tensor(self.result)
        vector = result.get_num_dims() == 1
        try:
            expected = infer_to_tensor(self.input.type, _strs(self.columns), self.dtype, vector)  # type: ignore[arg-type]
        except SchemaError as e:
            raise fail(self, str(e)) from None
        if result != expected:
            raise fail(self, f"result type {tensor_str(result)} does not match the inferred {tensor_str(expected)}")


@irdl_op_definition
class ToTableOp(IRDLOperation):
    """A 1-D or 2-D tensor as a table with columns ``names`` (non-nullable)."""

    name = "dl.to_table"
    input = operand_def(TensorType)
    names = attr_def(ArrayAttr[StringAttr])
    result = result_def(TableType)
    traits = traits_def(Pure())

    def __init__(self, tensor: SSAValue, names: Sequence[str]):
        super().__init__(
            operands=[tensor],
            attributes={"names": ArrayAttr([StringAttr(n) for n in names])},
            result_types=[infer_to_table(_tensor(tensor), names)],
        )

    def verify_(self) -> None:
        try:
            expected = infer_to_table(_tensor(self.input), _strs(self.names))
        except SchemaError as e:
            raise fail(self, str(e)) from None
        if self.result.type != expected:
            raise fail(self, f"result type {self.result.type} does not match the inferred schema {expected}")


PARAM_SOURCES = ("inline",)
"""``dl.params`` sources: ``inline`` = the leaf values are in the ``values`` attribute."""


@irdl_op_definition
class ParamsOp(IRDLOperation):
    """Initial parameter leaves given as data at trace time (fine for small models: the values
    are stored in the IR as ``dense<...>`` attributes, one per leaf).

    ``names`` labels each leaf by its key path (``W1``, ``layers/0/w``); ``source`` says where
    the values are (``inline``: in ``values``)."""

    name = "dl.params"
    values = attr_def(ArrayAttr)
    names = attr_def(ArrayAttr[StringAttr])
    source = attr_def(StringAttr)
    result = result_def(TupleType)
    traits = traits_def(Pure())

    def __init__(self, values: Sequence[DenseIntOrFPElementsAttr], names: Sequence[str], source: str = "inline"):
        super().__init__(
            attributes={
                "values": ArrayAttr(list(values)),
                "names": ArrayAttr([StringAttr(n) for n in names]),
                "source": StringAttr(source),
            },
            result_types=[params_type([v.get_type() for v in values])],  # type: ignore[misc]
        )

    def verify_(self) -> None:
        if self.source.data not in PARAM_SOURCES:
            raise fail(self, f"unknown source '{self.source.data}' (expected one of {', '.join(PARAM_SOURCES)})")
        leaves = _leaves(self, self.result)
        if not (len(self.values) == len(self.names) == len(leaves)):
            raise fail(self, "values, names and result leaves differ in length")
        _check_names(self, _strs(self.names))
        for i, (value, leaf) in enumerate(zip(self.values, leaves)):
            if not isinstance(value, DenseIntOrFPElementsAttr):
                raise fail(self, f"value #{i} must be a dense elements attribute")
            if value.get_type() != leaf:
                raise fail(self, f"value #{i} has type {value.get_type()}, result leaf has {leaf}")


def _check_names(op: Operation, names: Sequence[str]) -> None:
    if len(set(names)) != len(names):
        raise fail(op, "parameter leaf names must be unique")
    if any(not n or n.startswith("__") for n in names):
        raise fail(op, "parameter leaf names must be non-empty and not start with '__'")


@irdl_op_definition
class TrainOp(IRDLOperation):
    """Trains ``model`` on (``x``, ``y``) from the initial ``params``; returns the trained
    parameters (same type) and the loss history (mean training loss per epoch,
    ``tensor<EPOCHSxf32>``). Deterministic for a given ``seed`` (shuffling, dropout keys)."""

    name = "dl.train"
    x = operand_def(TensorType)
    y = operand_def(TensorType)
    params = operand_def(TupleType)
    model = attr_def(SymbolRefAttr)
    loss = attr_def(StringAttr)
    optimizer = attr_def(StringAttr)
    optimizer_options = attr_def(DictionaryAttr)
    epochs = attr_def(IntegerAttr)
    batch_size = attr_def(IntegerAttr)
    shuffle = attr_def(IntegerAttr)
    seed = attr_def(IntegerAttr)
    trained = result_def(TupleType)
    losses = result_def(TensorType)
    traits = traits_def(Pure())

    def __init__(
        self,
        x: SSAValue,
        y: SSAValue,
        params: SSAValue,
        model: str,
        loss: str,
        optimizer: str,
        optimizer_options: dict[str, Attribute],
        epochs: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
    ):
        super().__init__(
            operands=[x, y, params],
            attributes={
                "model": SymbolRefAttr(model),
                "loss": StringAttr(loss),
                "optimizer": StringAttr(optimizer),
                "optimizer_options": DictionaryAttr(dict(sorted(optimizer_options.items()))),
                "epochs": IntegerAttr(epochs, i64),
                "batch_size": IntegerAttr(batch_size, i64),
                "shuffle": BoolAttr.from_bool(shuffle),
                "seed": IntegerAttr(seed, i64),
            },
            result_types=[params.type, TensorType(LOSS_HISTORY_TYPE, [epochs])],
        )

    def verify_(self) -> None:
        _check_positive(self, epochs=self.epochs, batch_size=self.batch_size)
        _check_optimizer(self, self.optimizer, self.optimizer_options)
        x, y = _tensor(self.x), _tensor(self.y)
        if not rows_consistent(x, y):
            raise fail(self, f"x ({tensor_str(x)}) and y ({tensor_str(y)}) have different row counts")
        _leaves(self, self.params)
        if self.trained.type != self.params.type:
            raise fail(self, f"trained parameters have type {self.trained.type}, initial ones {self.params.type}")
        losses = _tensor(self.losses)
        if losses.element_type != LOSS_HISTORY_TYPE or tuple(losses.get_shape()) not in (
            (_int(self.epochs),),
            (DYNAMIC_INDEX,),
        ):
            raise fail(self, f"loss history must be tensor<{_int(self.epochs)}xf32>, got {tensor_str(losses)}")
        model = _lookup(self, self.model, ModelOp, "model")
        if model is None:
            return
        assert isinstance(model, ModelOp)
        _check_params(self, model, self.params)
        _check_x(self, model, x)
        _check_loss(self, self.loss.data, model.output_type, y)


@irdl_op_definition
class PredictOp(IRDLOperation):
    """``model_fn(params, x)`` on all rows of ``x`` (in batches; row order is kept)."""

    name = "dl.predict"
    x = operand_def(TensorType)
    params = operand_def(TupleType)
    model = attr_def(SymbolRefAttr)
    result = result_def(TensorType)
    traits = traits_def(Pure())

    def __init__(self, x: SSAValue, params: SSAValue, model: str, result_type: TensorType):
        super().__init__(operands=[x, params], attributes={"model": SymbolRefAttr(model)}, result_types=[result_type])

    def verify_(self) -> None:
        model = _lookup(self, self.model, ModelOp, "model")
        if model is None:
            return
        assert isinstance(model, ModelOp)
        _check_params(self, model, self.params)
        x = _tensor(self.x)
        _check_x(self, model, x)
        result = _tensor(self.result)
        if not batch_compatible(result, model.output_type) or not rows_consistent(result, x):
            raise fail(
                self, f"result type {tensor_str(result)} does not match the model output {tensor_str(model.output_type)}"
            )


@irdl_op_definition
class SaveOp(IRDLOperation):
    """Writes the parameter leaves to an ``.npz`` file (numpy, no pickle): member ``names[i]`` holds
    leaf i; member ``__opgraph_paths__`` holds ``param_paths`` (a 0-d unicode array) so that
    ``load`` rebuilds the same pytree. Written atomically (temporary name + rename)."""

    name = "dl.save"
    params = operand_def(TupleType)
    path = attr_def(StringAttr)
    names = attr_def(ArrayAttr[StringAttr])
    param_paths = attr_def(StringAttr)

    def __init__(self, params: SSAValue, path: str, names: Sequence[str], param_paths: str):
        super().__init__(
            operands=[params],
            attributes={
                "path": StringAttr(path),
                "names": ArrayAttr([StringAttr(n) for n in names]),
                "param_paths": StringAttr(param_paths),
            },
        )

    def verify_(self) -> None:
        _check_leaf_attrs(self, len(_leaves(self, self.params)), _strs(self.names), self.param_paths.data)


@irdl_op_definition
class LoadOp(IRDLOperation):
    """Reads parameter leaves from an ``.npz`` file written by ``dl.save`` (or ``numpy.savez``):
    leaf i from member ``names[i]``, converted to the result's element type. The result type
    was read from the file's array headers at trace time."""

    name = "dl.load"
    path = attr_def(StringAttr)
    names = attr_def(ArrayAttr[StringAttr])
    param_paths = attr_def(StringAttr)
    result = result_def(TupleType)

    def __init__(self, path: str, names: Sequence[str], param_paths: str, types: Sequence[TensorType]):
        super().__init__(
            attributes={
                "path": StringAttr(path),
                "names": ArrayAttr([StringAttr(n) for n in names]),
                "param_paths": StringAttr(param_paths),
            },
            result_types=[params_type(types)],
        )

    def verify_(self) -> None:
        _check_leaf_attrs(self, len(_leaves(self, self.result)), _strs(self.names), self.param_paths.data)


def _check_leaf_attrs(op: Operation, count: int, names: list[str], paths: str) -> None:
    if len(names) != count:
        raise fail(op, f"{len(names)} names for {count} parameter leaves")
    _check_names(op, names)
    try:
        parsed = parse_param_paths(paths)
    except SchemaError as e:
        raise fail(op, str(e)) from None
    if len(parsed) != count:
        raise fail(op, f"param_paths holds {len(parsed)} key paths for {count} parameter leaves")


def grid_runs(grid: DictionaryAttr) -> int:
    """How many trainings a sweep grid holds (the product of its value lists' lengths)."""
    n = 1
    for values in grid.data.values():
        n *= len(values)  # type: ignore[arg-type]
    return n


def _check_sweep_table(op: Operation, grid: DictionaryAttr, result: Attribute) -> None:
    try:
        expected = infer_sweep(grid)
    except SchemaError as e:
        raise fail(op, str(e)) from None
    if result != expected:
        raise fail(op, f"result type {result} does not match the inferred schema {expected}")


@irdl_op_definition
class SweepOp(IRDLOperation):
    """Trains one model per point of ``grid`` (the cartesian product of its value lists, keys
    in sorted order) from the same initial ``params``; the runs are independent (concurrent
    islands). Grid keys are optimizer options (``learning_rate``, ``b1``...) or ``batch_size``,
    ``epochs``, ``optimizer``, ``seed``; they override ``optimizer_options`` and the run
    attributes. Result: one row per run, the grid values then ``final_loss`` (f32, the mean
    training loss of the last epoch)."""

    name = "dl.sweep"
    x = operand_def(TensorType)
    y = operand_def(TensorType)
    params = operand_def(TupleType)
    model = attr_def(SymbolRefAttr)
    loss = attr_def(StringAttr)
    optimizer = attr_def(StringAttr)
    optimizer_options = attr_def(DictionaryAttr)
    grid = attr_def(DictionaryAttr)
    epochs = attr_def(IntegerAttr)
    batch_size = attr_def(IntegerAttr)
    shuffle = attr_def(IntegerAttr)
    seed = attr_def(IntegerAttr)
    result = result_def(TableType)
    traits = traits_def(Pure())

    def __init__(
        self,
        x: SSAValue,
        y: SSAValue,
        params: SSAValue,
        model: str,
        loss: str,
        optimizer: str,
        optimizer_options: dict[str, Attribute],
        grid: dict[str, ArrayAttr],
        epochs: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
    ):
        grid_attr = DictionaryAttr(dict(sorted(grid.items())))
        super().__init__(
            operands=[x, y, params],
            attributes={
                "model": SymbolRefAttr(model),
                "loss": StringAttr(loss),
                "optimizer": StringAttr(optimizer),
                "optimizer_options": DictionaryAttr(dict(sorted(optimizer_options.items()))),
                "grid": grid_attr,
                "epochs": IntegerAttr(epochs, i64),
                "batch_size": IntegerAttr(batch_size, i64),
                "shuffle": BoolAttr.from_bool(shuffle),
                "seed": IntegerAttr(seed, i64),
            },
            result_types=[infer_sweep(grid_attr)],
        )

    @property
    def num_runs(self) -> int:
        return grid_runs(self.grid)

    def verify_(self) -> None:
        _check_positive(self, epochs=self.epochs, batch_size=self.batch_size)
        _check_optimizer(self, self.optimizer, self.optimizer_options)
        _check_sweep_table(self, self.grid, self.result.type)
        x, y = _tensor(self.x), _tensor(self.y)
        if not rows_consistent(x, y):
            raise fail(self, f"x ({tensor_str(x)}) and y ({tensor_str(y)}) have different row counts")
        _leaves(self, self.params)
        model = _lookup(self, self.model, ModelOp, "model")
        if model is None:
            return
        assert isinstance(model, ModelOp)
        _check_params(self, model, self.params)
        _check_x(self, model, x)
        _check_loss(self, self.loss.data, model.output_type, y)


@irdl_op_definition
class SweepResultOp(IRDLOperation):
    """The result table of a sweep expanded into one ``dl.train`` per grid point (pass
    ``expand-sweeps``): ``losses`` are the runs' loss histories (``tensor<?xf32>``) in grid
    order (keys sorted, last key varying fastest), ``grid`` the sweep's grid. Result: the same table as
    ``dl.sweep``'s - one row per run, the grid values then ``final_loss`` (the last epoch's
    mean training loss)."""

    name = "dl.sweep_result"
    # one exact type (upstream IRDL: a variadic group's operands share one type)
    losses = var_operand_def(EqAttrConstraint(TensorType(Float32Type(), [DYNAMIC_INDEX])))
    grid = attr_def(DictionaryAttr)
    result = result_def(TableType)
    traits = traits_def(Pure())

    def __init__(self, losses: Sequence[SSAValue], grid: DictionaryAttr):
        grid_attr = DictionaryAttr(dict(sorted(grid.data.items())))
        super().__init__(
            operands=[list(losses)],
            attributes={"grid": grid_attr},
            result_types=[infer_sweep(grid_attr)],
        )

    @property
    def num_runs(self) -> int:
        return grid_runs(self.grid)

    def verify_(self) -> None:
        _check_sweep_table(self, self.grid, self.result.type)
        if len(self.losses) != self.num_runs:
            raise fail(self, f"has {len(self.losses)} loss histories for a grid of {self.num_runs} runs")


DL = Dialect(
    "dl",
    [
        ModelOp,
        LossOp,
        ToTensorOp,
        ToTableOp,
        ParamsOp,
        TrainOp,
        PredictOp,
        SaveOp,
        LoadOp,
        SweepOp,
        SweepResultOp,
    ],
    [],
)

__all__ = [
    "DL",
    "LoadOp",
    "LossOp",
    "ModelOp",
    "ParamsOp",
    "PredictOp",
    "SaveOp",
    "SweepOp",
    "SweepResultOp",
    "ToTableOp",
    "ToTensorOp",
    "TrainOp",
]
