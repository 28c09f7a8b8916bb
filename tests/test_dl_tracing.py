"""Tracing ``og.dl`` pipelines into the ``dl`` dialect (nothing is trained here)."""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from opgraph.dialects import dataframe as df
from opgraph.dialects import dl as dlops
from opgraph.dialects.context import parse_module, print_module
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    DYNAMIC_INDEX,
    ArrayAttr,
    BoolAttr,
    ModuleOp,
    StringAttr,
    TensorType,
    f32,
    i32,
)
from xdsl.utils.exceptions import VerifyException

import opgraph as og
from opgraph.errors import TraceError
from opgraph.tracing import display_path

pipeline_module = importlib.import_module("opgraph.pipeline")  # og.pipeline is the decorator

HERE = display_path(__file__)
FEATURES = ["a", "b", "c", "d", "e"]


def line() -> int:
    """The caller's line number (to compare with error places and op locations)."""
    return sys._getframe(1).f_lineno


@pytest.fixture(autouse=True)
def module_ops_in_pipeline(monkeypatch):
    """Until Pipeline.trace_full places ``state.module_ops`` (dl.model/dl.loss) before the
    func.func, do it here, so that tests go through the real ``og.pipeline`` path."""
    if "module_ops" in inspect.getsource(pipeline_module):
        return
    states = []

    class Tracing(pipeline_module.tracing):
        def __enter__(self):
            states.append(self.state)
            return super().__enter__()

    def module(ops):
        return ModuleOp([*getattr(states[-1], "module_ops", []), *ops])

    monkeypatch.setattr(pipeline_module, "tracing", Tracing)
    monkeypatch.setattr(pipeline_module, "ModuleOp", module)


@pytest.fixture
def data(tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    n = 64
    fields = [pa.field(c, pa.float64(), nullable=False) for c in [*FEATURES, "target"]]
    fields += [
        pa.field("label", pa.int64(), nullable=False),
        pa.field("maybe", pa.float64(), nullable=True),
        pa.field("name", pa.string(), nullable=False),
    ]
    cols = {c: rng.normal(size=n) for c in [*FEATURES, "target"]}
    cols["label"] = rng.integers(0, 3, n)
    cols["maybe"] = [None if i % 5 == 0 else float(i) for i in range(n)]
    cols["name"] = [f"r{i}" for i in range(n)]
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table(cols, schema=pa.schema(fields)), path)
    return str(path)


def mlp(params, x):
    h = jnp.tanh(x @ params["W1"] + params["b1"])
    return h @ params["W2"] + params["b2"]


MLP_LINE = mlp.__code__.co_firstlineno


def init_params(features: int = 5, hidden: int = 4, out: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.normal(size=(features, hidden)).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "W2": rng.normal(size=(hidden, out)).astype(np.float32),
        "b2": np.zeros(out, np.float32),
    }


def body_ops(module: ModuleOp) -> list:
    fn = next(op for op in module.body.block.ops if isinstance(op, func.FuncOp))
    return list(fn.body.block.ops)


def top_ops(module: ModuleOp) -> list:
    return list(module.body.block.ops)


def loc_line(op) -> int:
    return op.location.line.data


def roundtrip(module: ModuleOp) -> str:
    text = print_module(module)
    again = parse_module(text)
    again.verify()
    assert print_module(again) == text
    return text


def upstream_check(text: str) -> None:
    upstream = pytest.importorskip("opgraph.dialects.upstream_verify")
    assert upstream.verify_text(text) is None


def dyn(*dims: int, elt=f32) -> TensorType:
    return TensorType(elt, [DYNAMIC_INDEX, *dims])


MLP_PARAMS = dlops.params_type([TensorType(f32, [5, 4]), TensorType(f32, [4, 1]), TensorType(f32, [4]), TensorType(f32, [1])])


# --------------------------------------------------------------------- the main pipeline


def test_train_predict_pipeline_ir(data, tmp_path):
    lines = {}
    init = init_params()

    @og.pipeline
    def fit(path, out):
        t = og.read_parquet(path)
        t = t[t["a"] > -1.0]
        X = og.dl.to_tensor(t, FEATURES); lines["X"] = line()
        y = og.dl.to_tensor(t, ["target"])
        params, losses = og.dl.train(mlp, init, X, y, epochs=3, batch_size=16, learning_rate=0.01); lines["train"] = line()
        pred = og.dl.predict(mlp, params, X); lines["predict"] = line()
        og.write_parquet(og.dl.to_table(pred, ["pred"]), out)
        return og.dl.to_table(losses, "loss")

    module = fit.trace(data, str(tmp_path / "pred"))
    module.verify()

    top = top_ops(module)
    assert [op.name for op in top] == ["dl.model", "func.func"]
    model = top[0]
    assert isinstance(model, dlops.ModelOp)
    assert model.sym_name.data == "mlp"
    assert list(model.input_types) == [*MLP_PARAMS.types, dyn(5)]
    assert list(model.output_types) == [dyn(1)]
    assert model.param_tree.data == "PyTreeDef({'W1': *, 'W2': *, 'b1': *, 'b2': *})"
    assert "func.func public @main" in model.stablehlo.data
    assert "stablehlo.dot_general" in model.stablehlo.data
    assert "tensor<?x5xf32>" in model.stablehlo.data
    assert "loc(" not in model.stablehlo.data  # no debug locations naming user files
    assert (model.location.filename.data, loc_line(model)) == (HERE, MLP_LINE)

    ops = body_ops(module)
    assert [op.name for op in ops] == [
        "df.read_parquet",
        "df.filter",
        "dl.to_tensor",
        "dl.to_tensor",
        "dl.params",
        "dl.train",
        "dl.predict",
        "dl.to_table",
        "df.write_parquet",
        "dl.to_table",
        "func.return",
    ]
    to_x, to_y, params, train, predict = ops[2:7]
    assert to_x.result.type == dyn(5) and to_y.result.type == dyn(1)
    assert [c.data for c in to_x.columns] == FEATURES and to_x.dtype == f32
    assert loc_line(to_x) == lines["X"] and to_x.location.filename.data == HERE

    assert params.result.type == MLP_PARAMS
    assert [n.data for n in params.names] == ["W1", "W2", "b1", "b2"]
    assert params.source.data == "inline"
    w1 = params.values.data[0]
    assert w1.get_type() == TensorType(f32, [5, 4])
    np.testing.assert_allclose(np.array(w1.get_values()).reshape(5, 4), init["W1"], rtol=1e-6)

    assert isinstance(train, dlops.TrainOp)
    assert list(train.operands) == [to_x.result, to_y.result, params.result]
    assert train.trained.type == MLP_PARAMS
    assert train.losses.type == TensorType(f32, [3])
    assert train.model.root_reference.data == "mlp"
    assert train.loss.data == "mse" and train.optimizer.data == "adam"
    assert train.optimizer_options.data["learning_rate"].value.data == 0.01
    assert (train.epochs.value.data, train.batch_size.value.data, train.seed.value.data) == (3, 16, 0)
    assert train.shuffle == BoolAttr.from_bool(True)
    assert loc_line(train) == lines["train"] and loc_line(params) == lines["train"]

    assert list(predict.operands) == [to_x.result, train.trained]
    assert predict.result.type == dyn(1)
    assert loc_line(predict) == lines["predict"]
    assert ops[7].result.type == df.TableType([("pred", f32, False)])
    assert ops[9].result.type == df.TableType([("loss", f32, False)])

    text = roundtrip(module)
    assert f'loc("{HERE}":{lines["train"]}:' in text
    upstream_check(text)


def test_model_lowered_once_per_shape(data):
    @og.pipeline
    def two_models(path):
        t = og.read_parquet(path)
        X5 = og.dl.to_tensor(t, FEATURES)
        X3 = og.dl.to_tensor(t, ["a", "b", "c"])
        y = og.dl.to_tensor(t, ["target"])
        p5, _ = og.dl.train(mlp, init_params(5), X5, y, epochs=1)
        og.dl.predict(mlp, p5, X5)
        og.dl.predict(mlp, init_params(5), X5)
        p3, _ = og.dl.train(mlp, init_params(3), X3, y, epochs=1)
        return og.dl.to_table(og.dl.predict(mlp, p3, X3), ["p"])

    module = two_models.trace(data)
    models = [op for op in top_ops(module) if isinstance(op, dlops.ModelOp)]
    assert [m.sym_name.data for m in models] == ["mlp", "mlp_2"]
    assert models[1].x_type == dyn(3)
    uses = [op.model.root_reference.data for op in body_ops(module) if isinstance(op, dlops.TrainOp | dlops.PredictOp)]
    assert uses == ["mlp", "mlp", "mlp", "mlp_2", "mlp_2"]
    # the same initial values (equal arrays) are recorded once
    assert sum(isinstance(op, dlops.ParamsOp) for op in body_ops(module)) == 2
    upstream_check(roundtrip(module))


def test_custom_loss_cross_entropy_and_sweep(data):
    def my_loss(pred, y):
        return jnp.mean(jnp.abs(pred - y))

    def classifier(p, x):
        return x @ p["W"] + p["b"]

    cls_init = {"W": np.zeros((5, 3), np.float32), "b": np.zeros(3, np.float32)}

    @og.pipeline
    def many(path):
        t = og.read_parquet(path)
        X = og.dl.to_tensor(t, FEATURES)
        y = og.dl.to_tensor(t, ["target"])
        labels = og.dl.to_tensor(t, "label", dtype="int32")
        og.dl.train(mlp, init_params(), X, y, loss=my_loss, optimizer="sgd", epochs=2, optimizer_options={"momentum": 0.9})
        og.dl.train(classifier, cls_init, X, labels, loss="cross_entropy", epochs=2)
        return og.dl.sweep(
            mlp, init_params(), X, y, grid={"learning_rate": [0.1, 0.01, 1], "optimizer": ["adam", "sgd"], "batch_size": [8, 32]}, epochs=2
        )

    module = many.trace(data)
    top = top_ops(module)
    assert [op.name for op in top] == ["dl.model", "dl.loss", "dl.model", "func.func"]
    loss = top[1]
    assert loss.sym_name.data == "my_loss"
    assert list(loss.input_types) == [dyn(1), dyn(1)]
    assert list(loss.output_types) == [TensorType(f32, [])]
    trains = [op for op in body_ops(module) if isinstance(op, dlops.TrainOp)]
    assert trains[0].loss.data == "custom:my_loss" and trains[0].optimizer.data == "sgd"
    assert set(trains[0].optimizer_options.data) == {"learning_rate", "momentum"}
    assert trains[1].y.type == dyn(elt=i32) and trains[1].loss.data == "cross_entropy"
    assert trains[1].model.root_reference.data == "classifier"
    sweep = next(op for op in body_ops(module) if isinstance(op, dlops.SweepOp))
    assert sweep.num_runs == 12
    assert sweep.result.type == df.TableType(
        [("batch_size", df.i64, False), ("learning_rate", df.Float64Type(), False), ("optimizer", df.StringType(), False), ("final_loss", f32, False)]
    )
    assert sweep.params is trains[0].params  # same initial values: one dl.params
    upstream_check(roundtrip(module))


def test_float64_params_follow_jax_canonicalization(data):
    init = {k: v.astype(np.float64) for k, v in init_params().items()}

    @og.pipeline
    def fit(path):
        t = og.read_parquet(path)
        og.dl.train(mlp, init, og.dl.to_tensor(t, FEATURES), og.dl.to_tensor(t, ["target"]), epochs=1)

    params = next(op for op in body_ops(fit.trace(data)) if isinstance(op, dlops.ParamsOp))
    assert params.result.type == MLP_PARAMS  # float64 -> float32 as jnp.asarray does without x64


# ---------------------------------------------------------------------------- errors


def trace_error_of(pipe, *args) -> TraceError:
    with pytest.raises(TraceError) as info:
        pipe.trace(*args)
    return info.value


def test_nullable_feature_column_is_an_error(data):
    @og.pipeline
    def bad(path):
        t = og.read_parquet(path)
        lines["err"] = line(); og.dl.to_tensor(t, ["a", "maybe"])

    lines = {}
    err = trace_error_of(bad, data)
    assert err.message == "column 'maybe' may hold nulls: fill or filter them before to_tensor"
    assert (err.file, err.line) == (HERE, lines["err"])


def test_filled_column_is_accepted(data):
    @og.pipeline
    def ok(path):
        t = og.read_parquet(path)
        t = t.assign(maybe=t["maybe"].fillna(0.0))
        return og.dl.to_table(og.dl.to_tensor(t, ["a", "maybe"]), ["a", "maybe"])

    assert body_ops(ok.trace(data))[-2].result.type == df.TableType([("a", f32, False), ("maybe", f32, False)])


def test_string_and_unknown_columns_are_errors(data):
    @og.pipeline
    def strings(path):
        t = og.read_parquet(path)
        lines["err"] = line(); og.dl.to_tensor(t, ["a", "name"])

    lines = {}
    err = trace_error_of(strings, data)
    assert err.message == "column 'name' has type string: to_tensor needs numeric columns"
    assert (err.file, err.line) == (HERE, lines["err"])

    @og.pipeline
    def unknown(path):
        og.dl.to_tensor(og.read_parquet(path), ["zz"])

    assert trace_error_of(unknown, data).message.startswith("unknown column 'zz' in to_tensor (columns: a, b, c")


def test_feature_count_mismatch(data):
    @og.pipeline
    def bad(path):
        t = og.read_parquet(path)
        X = og.dl.to_tensor(t, FEATURES)
        y = og.dl.to_tensor(t, ["target"])
        lines["err"] = line(); og.dl.train(mlp, init_params(features=8), X, y)

    lines = {}
    err = trace_error_of(bad, data)
    assert err.message == "model expects 8 input features, to_tensor gave 5"
    assert (err.file, err.line) == (HERE, lines["err"])


def test_target_shape_mismatch(data):
    @og.pipeline
    def bad(path):
        t = og.read_parquet(path)
        og.dl.train(mlp, init_params(), og.dl.to_tensor(t, FEATURES), og.dl.to_tensor(t, "target"))

    assert trace_error_of(bad, data).message == (
        "loss 'mse' needs targets shaped like the model output: model gives tensor<?x1xf32>, y is tensor<?xf32>"
        " (to_tensor(t, 'c') gives a vector, to_tensor(t, ['c']) one column)"
    )


def test_unknown_loss(data):
    @og.pipeline
    def bad(path):
        t = og.read_parquet(path)
        X, y = og.dl.to_tensor(t, FEATURES), og.dl.to_tensor(t, ["target"])
        lines["err"] = line(); og.dl.train(mlp, init_params(), X, y, loss="hinge")

    lines = {}
    err = trace_error_of(bad, data)
    assert err.message == (
        "unknown loss 'hinge' (expected 'mse', 'cross_entropy' or a function loss(pred, y) returning a scalar)"
    )
    assert (err.file, err.line) == (HERE, lines["err"])


def test_unknown_optimizer_and_option(data):
    @og.pipeline
    def bad(path, optimizer, options):
        t = og.read_parquet(path)
        X, y = og.dl.to_tensor(t, FEATURES), og.dl.to_tensor(t, ["target"])
        lines["err"] = line(); og.dl.train(mlp, init_params(), X, y, optimizer=optimizer, optimizer_options=options)

    lines = {}
    names = og.dl.optimizer_names()
    assert {"adam", "adamw", "sgd", "rmsprop"} <= set(names) and "scale_by_adam" not in names
    err = trace_error_of(bad, data, "adamm", None)
    assert err.message == f"unknown optimizer 'adamm', did you mean 'adam'? (optax optimizers: {', '.join(names)})"
    assert (err.file, err.line) == (HERE, lines["err"])
    err = trace_error_of(bad, data, "sgd", {"beta": 0.9})
    assert err.message == "optimizer 'sgd' has no option 'beta' (options: accumulator_dtype, learning_rate, momentum, nesterov)"


def test_float64_features_need_jax_x64(data):
    @og.pipeline
    def bad(path):
        t = og.read_parquet(path)
        X = og.dl.to_tensor(t, FEATURES, dtype="float64")
        og.dl.predict(mlp, init_params(), X)

    assert trace_error_of(bad, data).message == (
        "X is tensor<?x5xf64> but JAX runs without 64-bit types: use dtype='float32' in to_tensor or enable jax_enable_x64"
    )


def test_x_and_y_from_different_tables(data):
    @og.pipeline
    def bad(path):
        t = og.read_parquet(path)
        u = t[t["a"] > 0]
        og.dl.train(mlp, init_params(), og.dl.to_tensor(t, FEATURES), og.dl.to_tensor(u, ["target"]))

    assert trace_error_of(bad, data).message == (
        "X and y come from different tables, so their rows are not aligned: take both from one table"
    )


def test_bad_sweep_grid(data):
    @og.pipeline
    def bad(path, grid):
        t = og.read_parquet(path)
        og.dl.sweep(mlp, init_params(), og.dl.to_tensor(t, FEATURES), og.dl.to_tensor(t, ["target"]), grid=grid)

    assert trace_error_of(bad, data, {"momentum": [0.9]}).message.startswith(
        "grid key 'momentum' is neither a run setting (batch_size, epochs, optimizer, seed) nor an option of optimizer 'adam'"
    )
    assert trace_error_of(bad, data, {"epochs": [0, 2]}).message == "grid 'epochs' value must be >= 1, got 0"
    assert trace_error_of(bad, data, {"b1": [0.9, "x"]}).message == (
        "grid 'b1' mixes value kinds: use only numbers, only booleans or only strings"
    )


# ----------------------------------------------------------------------- save and load


def write_like_runtime(save: dlops.SaveOp, arrays: list[np.ndarray], path: Path) -> None:
    """What the runtime's dl.save writes: one member per leaf plus the key paths."""
    members = {n.data: a for n, a in zip(save.names, arrays)}
    np.savez(path, **members, __opgraph_paths__=np.array(save.param_paths.data))


def test_save_load_round_trip_of_header_shapes(data, tmp_path):
    model_path = tmp_path / "model.npz"
    nested = {"layers": [{"w": np.ones((5, 3), np.float32)}, {"w": np.ones((3, 1), np.float32)}], "scale": np.float32(2.0)}

    def deep(p, x):
        return (x @ p["layers"][0]["w"]) @ p["layers"][1]["w"] * p["scale"]

    @og.pipeline
    def saver(path, out):
        t = og.read_parquet(path)
        X, y = og.dl.to_tensor(t, FEATURES), og.dl.to_tensor(t, ["target"])
        params, _ = og.dl.train(deep, nested, X, y, epochs=1)
        og.dl.save(params, out)

    module = saver.trace(data, str(model_path))
    save = next(op for op in body_ops(module) if isinstance(op, dlops.SaveOp))
    assert [n.data for n in save.names] == ["layers/0/w", "layers/1/w", "scale"]
    assert json.loads(save.param_paths.data) == [[["d", "layers"], ["s", 0], ["d", "w"]], [["d", "layers"], ["s", 1], ["d", "w"]], [["d", "scale"]]]
    saved_type = save.params.type
    upstream_check(roundtrip(module))

    leaves = [nested["layers"][0]["w"], nested["layers"][1]["w"], np.asarray(nested["scale"])]
    write_like_runtime(save, leaves, model_path)

    @og.pipeline
    def loader(path, params_path):
        t = og.read_parquet(path)
        lines["load"] = line(); params = og.dl.load(params_path)
        assert params.names == ["layers/0/w", "layers/1/w", "scale"]
        assert params.shapes["layers"][1]["w"].shape == (3, 1)
        return og.dl.to_table(og.dl.predict(deep, params, og.dl.to_tensor(t, FEATURES)), ["p"])

    lines = {}
    module = loader.trace(data, str(model_path))
    load = next(op for op in body_ops(module) if isinstance(op, dlops.LoadOp))
    assert load.result.type == saved_type
    assert load.path.data == str(model_path) and loc_line(load) == lines["load"]
    assert load.param_paths.data == save.param_paths.data
    upstream_check(roundtrip(module))


def test_load_plain_npz_and_save_then_load(data, tmp_path):
    plain = tmp_path / "plain.npz"
    init = init_params()
    np.savez(plain, **init)

    @og.pipeline
    def use(path, params_path, out):
        t = og.read_parquet(path)
        X = og.dl.to_tensor(t, FEATURES)
        params = og.dl.load(params_path)
        og.dl.save(params, out)
        again = og.dl.load(out)  # saved earlier in this pipeline: the same value, no file read
        assert again is params
        return og.dl.to_table(og.dl.predict(mlp, again, X), ["p"])

    module = use.trace(data, str(plain), str(tmp_path / "copy.npz"))
    load = next(op for op in body_ops(module) if isinstance(op, dlops.LoadOp))
    assert load.result.type == MLP_PARAMS
    assert [n.data for n in load.names] == ["W1", "W2", "b1", "b2"]
    assert not (tmp_path / "copy.npz").exists()  # tracing writes nothing


def test_load_errors(data, tmp_path):
    @og.pipeline
    def use(params_path):
        lines["err"] = line(); og.dl.load(params_path)

    lines = {}
    err = trace_error_of(use, str(tmp_path / "missing.npz"))
    assert err.message == f"no such file: '{tmp_path / 'missing.npz'}'"
    assert (err.file, err.line) == (HERE, lines["err"])

    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, w=np.array([{"a": 1}], dtype=object))
    err = trace_error_of(use, str(pickled))
    assert err.message == f"'{pickled}' member 'w' has unsupported dtype object"

    npy = tmp_path / "single.npy"
    np.save(npy, np.ones(3))
    err = trace_error_of(use, str(npy))
    assert err.message == f"cannot read parameters from '{npy}': not an .npz archive (write it with og.dl.save or numpy.savez)"

    @og.pipeline
    def bad_save(path):
        t = og.read_parquet(path)
        og.dl.save(init_params(), "weights.pkl")

    err = trace_error_of(bad_save, data)
    assert err.message == "save writes an .npz file: the path must end with '.npz', got 'weights.pkl'"


# ------------------------------------------------------------------------- verifiers


def test_verifier_rejects_unknown_model_and_bad_types(data):
    @og.pipeline
    def fit(path):
        t = og.read_parquet(path)
        X, y = og.dl.to_tensor(t, FEATURES), og.dl.to_tensor(t, ["target"])
        og.dl.train(mlp, init_params(), X, y, epochs=2)

    text = print_module(fit.trace(data))
    with pytest.raises(Exception, match="unknown model @nope"):
        parse_module(text.replace("model = @mlp", "model = @nope")).verify()
    with pytest.raises(Exception, match="loss history must be tensor<2xf32>"):
        parse_module(text.replace("tensor<2xf32>", "tensor<3xf32>")).verify()
    module = parse_module(text)
    good = next(op for op in body_ops(module) if isinstance(op, dlops.ToTensorOp))
    bad = dlops.ToTensorOp.create(operands=[good.input], attributes=dict(good.attributes), result_types=[dyn(4)])
    with pytest.raises(VerifyException, match="does not match the inferred tensor<\\?x5xf32>"):
        bad.verify()
    params = next(op for op in body_ops(module) if isinstance(op, dlops.ParamsOp))
    attrs = dict(params.attributes)
    attrs["names"] = ArrayAttr([StringAttr("W1")] * 4)
    with pytest.raises(VerifyException, match="parameter leaf names must be unique"):
        dlops.ParamsOp.create(attributes=attrs, result_types=[params.result.type]).verify()


def test_irdl_twin_is_current_and_exact():
    gen = pytest.importorskip("opgraph.dialects.irdl_gen")
    texts, problems, _ = gen.generate_all()
    twin = gen.twin_path("dl")
    assert twin.exists() and twin.read_text() == texts[twin], "run python -m opgraph.dialects.irdl_gen"
    # no variadic groups (parameters are one tuple value): nothing the twin cannot express
    assert [str(p) for p in problems["dl"] if p.severity in ("error", "warning")] == []
