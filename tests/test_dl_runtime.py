"""Running ``og.dl`` pipelines: to_tensor zero-copy, training (forward + loss + grad + optax
through the model carried in the plan), data parallelism over local and MPI ranks, sweeps
as concurrent runs, save/load, device choice, the error cases and the example."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from opgraph.runtime import dl_exec

import opgraph as og
from opgraph.errors import OpgraphError, TraceError

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["a", "b", "c"]
_VENV_MPIEXEC = Path(sys.executable).parent / "mpiexec"
HAVE_MPI = shutil.which(str(_VENV_MPIEXEC)) is not None
needs_mpi = pytest.mark.skipif(
    not HAVE_MPI, reason="no mpiexec next to the Python executable (pip install mpich)"
)


@pytest.fixture(autouse=True)
def _pip_installed_mpi(monkeypatch) -> None:
    for name in ("OPGRAPH_MPIEXEC", "MPI4PY_LIBMPI", "MPI4PY_MPIABI"):
        monkeypatch.delenv(name, raising=False)


def line() -> int:
    return sys._getframe(1).f_lineno


def mlp(params, x):
    h = jnp.tanh(x @ params["W1"] + params["b1"])
    return h @ params["W2"] + params["b2"]


def init_params(
    features: int = 3, hidden: int = 8, out: int = 1, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W1": (rng.normal(size=(features, hidden)) / np.sqrt(features)).astype(
            np.float32
        ),
        "b1": np.zeros(hidden, np.float32),
        "W2": (rng.normal(size=(hidden, out)) / np.sqrt(hidden)).astype(np.float32),
        "b2": np.zeros(out, np.float32),
    }


def make_table(n: int = 200, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    target = (x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=n)).astype(
        np.float32
    )
    label = (target > 0).astype(np.int32)
    table = pa.table(
        {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "target": target, "label": label}
    )
    return table.cast(
        pa.schema([f.with_nullable(False) for f in table.schema])
    )  # no nulls


def fit_pipeline(save_path: str, **train_kw):
    @og.pipeline
    def fit(t):
        X = og.dl.to_tensor(t, FEATURES)
        y = og.dl.to_tensor(t, ["target"])
        params, losses = og.dl.train(mlp, init_params(), X, y, **train_kw)
        og.dl.save(params, save_path)
        return og.dl.to_table(losses, "loss")

    return fit


def load_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if not k.startswith("__")}


TRAIN_KW = {"epochs": 3, "batch_size": 32, "learning_rate": 0.05, "seed": 3}


# --------------------------------------------------------------------------- to_tensor


def test_to_tensor_single_column_is_zero_copy(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"a": np.arange(1000, dtype=np.float32)}), path)
    table = pq.read_table(path)
    chunk = table.column("a").chunk(0)
    arrow_address = chunk.buffers()[1].address + chunk.offset * 4
    vec = dl_exec.table_to_array(table, ["a"], "float32", vector=True)
    col = dl_exec.table_to_array(table, ["a"], "float32", vector=False)
    assert (
        vec.ctypes.data == arrow_address
        and col.ctypes.data == arrow_address
        and col.shape == (1000, 1)
    )
    on_jax = dl_exec.to_jax(vec)
    assert on_jax.unsafe_buffer_pointer() == arrow_address
    np.testing.assert_array_equal(np.asarray(on_jax), np.arange(1000, dtype=np.float32))


def test_to_tensor_several_columns_copy_and_convert():
    table = make_table(10)
    arr = dl_exec.table_to_array(table, ["a", "label"], "float32", vector=False)
    assert arr.shape == (10, 2) and arr.dtype == np.float32 and arr.flags.c_contiguous
    np.testing.assert_array_equal(
        arr[:, 1], table.column("label").to_numpy().astype(np.float32)
    )
    # two chunks: one copy, values in order
    two = pa.concat_tables([table.slice(0, 4), table.slice(4)])
    np.testing.assert_array_equal(
        dl_exec.table_to_array(two, ["a"], "float32", True),
        table.column("a").to_numpy(),
    )


def test_to_tensor_runtime_rejects_nulls_and_strings():
    with pytest.raises(dl_exec.DLError, match="column 'a' holds 1 null"):
        dl_exec.table_to_array(
            pa.table({"a": pa.array([1.0, None])}), ["a"], "float32", True
        )
    with pytest.raises(dl_exec.DLError, match="needs numeric columns"):
        dl_exec.table_to_array(pa.table({"s": ["x"]}), ["s"], "float32", True)


# ------------------------------------------------------------------------- error cases


def test_nulls_in_feature_column_is_a_trace_error_at_the_users_line():
    t = pa.table(
        {"a": pa.array([1.0, None, 2.0]), "b": [1.0, 2.0, 3.0], "c": [0.0, 0.0, 1.0]}
    )
    where = {}

    @og.pipeline
    def p(t):
        where["line"] = line() + 1
        X = og.dl.to_tensor(t, FEATURES)
        return og.dl.to_table(X, FEATURES)

    with pytest.raises(TraceError, match="may hold nulls") as info:
        p.trace(t)
    assert info.value.line == where["line"] and info.value.file.endswith(
        "test_dl_runtime.py"
    )


def test_shape_mismatch_between_model_and_features_is_a_trace_error():
    where = {}

    @og.pipeline
    def p(t):
        X = og.dl.to_tensor(t, FEATURES)
        y = og.dl.to_tensor(t, ["target"])
        where["line"] = line() + 1
        params, _ = og.dl.train(mlp, init_params(features=4), X, y)
        return og.dl.to_table(og.dl.predict(mlp, params, X), ["p"])

    with pytest.raises(
        TraceError, match="model expects 4 input features, to_tensor gave 3"
    ) as info:
        p.trace(make_table(8))
    assert info.value.line == where["line"]


def test_unknown_loss_is_a_trace_error():
    @og.pipeline
    def p(t):
        X = og.dl.to_tensor(t, FEATURES)
        y = og.dl.to_tensor(t, ["target"])
        _, losses = og.dl.train(mlp, init_params(), X, y, loss="hinge")
        return og.dl.to_table(losses, "loss")

    with pytest.raises(TraceError, match="unknown loss 'hinge'"):
        p.trace(make_table(8))


# ----------------------------------------------------------------------------- training


def test_train_step_equals_jax_reference(tmp_path):
    """One full-batch SGD step through the plan equals jax.grad of the Python model."""
    table = make_table(64)
    out = str(tmp_path / "p.npz")
    # both on the CPU (laptop: no GPU to place it on); a GPU's TF32 matmuls differ at 1e-3
    fit_pipeline(
        out, epochs=1, batch_size=64, shuffle=False, optimizer="sgd", learning_rate=0.1
    ).run(table, hw="laptop")
    X = np.stack([table.column(c).to_numpy() for c in FEATURES], axis=1)
    y = table.column("target").to_numpy().reshape(-1, 1)
    with jax.default_device(jax.devices("cpu")[0]):
        p0 = {k: jnp.asarray(v) for k, v in init_params().items()}
        grads = jax.grad(lambda p: jnp.mean((mlp(p, X) - y) ** 2))(p0)
    got = load_npz(out)
    for k, v in p0.items():
        np.testing.assert_allclose(got[k], v - 0.1 * grads[k], rtol=1e-5, atol=1e-6)


def test_training_is_deterministic_and_learns(tmp_path):
    table = make_table()
    runs = []
    dl_exec.TIMELINE.clear()
    for i, seed in enumerate((3, 3, 4)):
        out = str(tmp_path / f"p{i}.npz")
        losses = (
            fit_pipeline(out, **{**TRAIN_KW, "seed": seed})
            .run(table)
            .column("loss")
            .to_numpy()
        )
        runs.append((losses, load_npz(out)))
    (l0, p0), (l1, p1), (_, p2) = runs
    assert l0[-1] < l0[0]
    np.testing.assert_array_equal(l0, l1)
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k])
    assert not np.array_equal(p0["W1"], p2["W1"])  # another seed, another shuffle
    assert [e["device"] for e in dl_exec.TIMELINE] == [
        "cpu"
    ] * 3  # no GPU asked for: the CPU


@pytest.mark.parametrize("ranks", [2, 4])
def test_data_parallel_equals_single_rank(tmp_path, ranks):
    table = make_table()
    one, many = str(tmp_path / "one.npz"), str(tmp_path / "many.npz")
    l1 = fit_pipeline(one, **TRAIN_KW).run(table, ranks=1).column("loss").to_numpy()
    ln = (
        fit_pipeline(many, **TRAIN_KW).run(table, ranks=ranks).column("loss").to_numpy()
    )
    np.testing.assert_allclose(ln, l1, rtol=1e-5)
    a, b = load_npz(one), load_npz(many)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5)


@needs_mpi
def test_data_parallel_mpi_two_ranks_equals_single_rank(tmp_path):
    table = make_table()
    one, mpi = str(tmp_path / "one.npz"), str(tmp_path / "mpi.npz")
    l1 = fit_pipeline(one, **TRAIN_KW).run(table).column("loss").to_numpy()
    l2 = (
        fit_pipeline(mpi, **TRAIN_KW)
        .run(table, engine="mpi", ranks=2)
        .column("loss")
        .to_numpy()
    )
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    a, b = load_npz(one), load_npz(mpi)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_cross_entropy_custom_loss_predict_save_load(tmp_path):
    table = make_table()
    path = str(tmp_path / "clf.npz")

    def mean_abs(pred, y):
        return jnp.mean(jnp.abs(pred - y))

    @og.pipeline
    def clf(t):
        X = og.dl.to_tensor(t, FEATURES)
        labels = og.dl.to_tensor(t, "label", dtype="int32")
        params, losses = og.dl.train(
            mlp,
            init_params(out=2),
            X,
            labels,
            loss="cross_entropy",
            epochs=4,
            learning_rate=0.05,
        )
        og.dl.save(params, path)
        y = og.dl.to_tensor(t, ["target"])
        _, l1 = og.dl.train(
            mlp, init_params(), X, y, loss=mean_abs, epochs=2, learning_rate=0.05
        )
        logits = og.dl.predict(mlp, params, X)
        return (
            og.dl.to_table(losses, "loss"),
            og.dl.to_table(l1, "loss"),
            og.dl.to_table(logits, ["l0", "l1"]),
        )

    ce, custom, logits = clf.run(table, ranks=2)
    ce = ce.column("loss").to_numpy()
    assert ce[-1] < ce[0] and np.all(np.isfinite(custom.column("loss").to_numpy()))
    assert logits.num_rows == table.num_rows
    accuracy = np.mean(
        (logits.column("l1").to_numpy() > logits.column("l0").to_numpy())
        == table.column("label").to_numpy()
    )
    assert accuracy > 0.8

    @og.pipeline
    def reuse(t):
        params = og.dl.load(path)
        return og.dl.to_table(
            og.dl.predict(mlp, params, og.dl.to_tensor(t, FEATURES)), ["l0", "l1"]
        )

    again = reuse.run(table)
    np.testing.assert_allclose(
        again.column("l0").to_numpy(),
        logits.column("l0").to_numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


# --------------------------------------------------------------------------------- sweep


def _sweep_pipeline(grid, epochs=3):
    @og.pipeline
    def sw(t):
        X = og.dl.to_tensor(t, FEATURES)
        y = og.dl.to_tensor(t, ["target"])
        return og.dl.sweep(mlp, init_params(), X, y, grid=grid, epochs=epochs, batch_size=32)

    return sw


def test_sweep_expands_into_one_island_per_training():
    from opgraph.dialects import dl as dlops
    from opgraph.passes.expand_sweeps import SWEEP_RUN_ATTR

    table = make_table(600)
    grid = {"learning_rate": [0.001, 0.05], "seed": [1, 2]}
    plan = _sweep_pipeline(grid).compile(table)
    islands = plan.doc.islands
    trains = [i for i in islands if [o.op for o in i.ops] == ["dl.train"]]
    assert len(trains) == 4  # one island per grid point, nothing else in it
    runs = [tuple(i.ops[0].attributes[SWEEP_RUN_ATTR]) for i in trains]
    assert sorted(runs) == [(k, 4) for k in range(4)]
    # all fed by the same data-engineering output and initial parameters
    assert len({tuple(i.ops[0].operands) for i in trains}) == 1
    # the schedule puts them side by side: overlapping predicted intervals
    assert max(i.start for i in trains) < min(i.end for i in trains)
    result = [i for i in islands if any(o.op == "dl.sweep_result" for o in i.ops)]
    assert len(result) == 1
    assert result[0].ops[0].operands == [i.ops[0].results[1] for i in sorted(trains, key=lambda i: i.ops[0].attributes[SWEEP_RUN_ATTR][0])]
    assert not any(o.op == "dl.sweep" for i in islands for o in i.ops)
    # each training carries the point's settings
    by_run = {i.ops[0].attributes[SWEEP_RUN_ATTR][0]: i.ops[0].attributes for i in trains}
    points = og.dl.grid_points(grid)
    for k, point in enumerate(points):
        assert by_run[k]["seed"] == point["seed"]
        assert by_run[k]["optimizer_options"]["learning_rate"] == pytest.approx(point["learning_rate"])
    assert dlops.SweepResultOp.name == "dl.sweep_result"
    # the compiled plan's IR (islands, trainings, StableHLO model) verifies upstream
    upstream = pytest.importorskip("opgraph.dialects.upstream_verify")
    assert plan.mlir.count('"dl.train"') == 4
    assert upstream.verify_text(plan.mlir) is None


def test_sweep_grid_over_epochs_uses_dynamic_histories():
    from opgraph.dialects.context import print_module
    from opgraph.passes.pipeline import run_pipeline

    table = make_table(200)
    sw = _sweep_pipeline({"epochs": [1, 2], "learning_rate": [0.01]})
    module = run_pipeline(sw.trace(table), "expand-sweeps")
    text = print_module(module)
    assert text.count('"dl.train"') == 2 and '"dl.sweep_result"' in text and '"dl.sweep"' not in text
    assert "tensor<?xf32>" in text  # one operand type for dl.sweep_result (upstream IRDL)
    upstream = pytest.importorskip("opgraph.dialects.upstream_verify")
    assert upstream.verify_text(text) is None
    result = sw.run(table)
    assert result.column_names == ["epochs", "learning_rate", "final_loss"]
    assert result.column("epochs").to_pylist() == [1, 2]
    assert np.all(np.isfinite(result.column("final_loss").to_numpy()))


@pytest.mark.parametrize("ranks", [1, 2])
def test_sweep_runs_concurrently_and_returns_the_grid(ranks):
    from opgraph.runtime import executor

    table = make_table(600)
    sw = _sweep_pipeline({"learning_rate": [0.001, 0.05], "seed": [1]})
    dl_exec.TIMELINE.clear()
    executor.ISLAND_TIMELINE.clear()
    result = sw.run(table, ranks=ranks)
    assert result.column_names == ["learning_rate", "seed", "final_loss"]
    assert result.column("learning_rate").to_pylist() == [0.001, 0.05]
    assert result.column("seed").to_pylist() == [1, 1]
    final = result.column("final_loss").to_numpy()
    assert np.all(np.isfinite(final)) and final[1] < final[0]
    runs = [e for e in dl_exec.TIMELINE if e["op"] == "dl.train"]
    assert sorted(e["run"] for e in runs) == [0, 1]
    assert {e["rank"] for e in runs} == set(range(ranks))  # 2 ranks: one run each (disjoint)
    # the training islands overlap in the executor's timeline (threads of one rank, or
    # disjoint rank groups)
    islands = [e for e in executor.ISLAND_TIMELINE if e["concurrent"]]
    assert len(islands) == 2 and all(e["island"].endswith("train") for e in islands)
    assert max(e["start"] for e in islands) < min(e["end"] for e in islands)
    if ranks == 2:
        assert sorted(tuple(e["ranks"]) for e in islands) == [(0,), (1,)]  # disjoint groups
        return
    assert max(e["start"] for e in runs) < min(e["end"] for e in runs)

    @og.pipeline
    def single(
        t,
    ):  # the same run alone gives the same final loss (runs are independent)
        X = og.dl.to_tensor(t, FEATURES)
        y = og.dl.to_tensor(t, ["target"])
        _, losses = og.dl.train(
            mlp,
            init_params(),
            X,
            y,
            learning_rate=0.05,
            seed=1,
            epochs=3,
            batch_size=32,
        )
        return og.dl.to_table(losses, "loss")

    np.testing.assert_allclose(
        single.run(table).column("loss").to_numpy()[-1], final[1], rtol=1e-5
    )


@pytest.mark.parametrize("ranks", [1, 2])
def test_sweep_failing_run_reports_the_sweep_line(ranks, monkeypatch):
    from opgraph.runtime import executor

    def fault(op, rank):
        if op.op == "dl.train" and op.attributes.get("dl.sweep_run", [0])[0] == 1:
            raise ValueError("injected")

    monkeypatch.setattr(executor, "FAULT_HOOK", fault)
    table = make_table(100)

    @og.pipeline
    def sw(t):
        X = og.dl.to_tensor(t, FEATURES)
        y = og.dl.to_tensor(t, ["target"])
        sw.here = line() + 1
        return og.dl.sweep(mlp, init_params(), X, y, grid={"seed": [1, 2, 3]}, epochs=1)

    with pytest.raises(OpgraphError) as info:  # no hang: the other runs/ranks are stopped
        sw.run(table, ranks=ranks)
    assert "injected" in info.value.message and info.value.line == sw.here


@needs_mpi
def test_sweep_mpi_two_ranks_runs_on_disjoint_ranks(tmp_path, monkeypatch):
    timeline = tmp_path / "timeline.jsonl"
    monkeypatch.setenv("OPGRAPH_DL_TIMELINE", str(timeline))
    table = make_table(300)
    sw = _sweep_pipeline({"learning_rate": [0.001, 0.05], "seed": [1]}, epochs=2)
    mpi = sw.run(table, engine="mpi", ranks=2)
    runs = [json.loads(x) for x in timeline.read_text().splitlines()]
    assert sorted((e["run"], e["rank"]) for e in runs) == [(0, 0), (1, 1)]
    assert max(e["start"] for e in runs) < min(e["end"] for e in runs)  # same clock: one node
    monkeypatch.delenv("OPGRAPH_DL_TIMELINE")
    local = sw.run(table)
    np.testing.assert_allclose(
        mpi.column("final_loss").to_numpy(), local.column("final_loss").to_numpy(), rtol=1e-5
    )


# ------------------------------------------------------------------------------ devices


def test_device_selection(monkeypatch):
    cpu = jax.devices("cpu")[0]
    assert dl_exec.select_device("cpu") == cpu
    assert (
        dl_exec.select_device("gpu") == cpu
        or dl_exec.select_device("gpu").platform == "gpu"
    )

    class FakeGpu:
        platform = "gpu"

    real = jax.devices

    def devices(backend=None):
        return [FakeGpu()] if backend == "gpu" else real(backend)

    monkeypatch.setattr(jax, "devices", devices)
    assert isinstance(dl_exec.select_device("gpu"), FakeGpu)
    assert dl_exec.select_device("cpu") == cpu
    assert dl_exec.select_device(None) == cpu
    # only where the op's functions were lowered for the GPU's platform (a GPU lowers "cuda")
    assert isinstance(dl_exec.select_device("gpu", ("cpu", "cuda")), FakeGpu)
    assert dl_exec.select_device("gpu", ("cpu",)) == cpu
    FakeGpu.client = type("Client", (), {"platform_version": "rocm 6.2"})()
    assert dl_exec.select_device("gpu", ("cpu", "cuda")) == cpu
    assert isinstance(dl_exec.select_device("gpu", ("cpu", "rocm")), FakeGpu)
    # the ranks of a node spread over its GPUs
    two = [FakeGpu(), FakeGpu()]
    monkeypatch.setattr(jax, "devices", lambda backend=None: two if backend == "gpu" else real(backend))
    assert [dl_exec.select_device("gpu", None, r) for r in range(4)] == [two[0], two[1], two[0], two[1]]

    def no_gpu(backend=None):
        if backend == "gpu":
            raise RuntimeError("Unknown backend gpu")
        return real(backend)

    monkeypatch.setattr(jax, "devices", no_gpu)
    assert dl_exec.select_device("gpu") == cpu


def _without_cuda_lowering(monkeypatch) -> None:
    """Tracing as on a machine where JAX cannot lower the model for CUDA."""
    from opgraph import dl as og_dl

    real_export = og_dl._export

    def cpu_only(fn, *specs, platforms=("cpu",)):
        if "cuda" in platforms:
            raise NotImplementedError("no CUDA lowering for this custom call")
        return real_export(fn, *specs, platforms=platforms)

    monkeypatch.setattr(og_dl, "_export", cpu_only)


def test_compiler_keeps_a_cpu_only_model_off_the_gpu(monkeypatch):
    """A training the cost model puts on the GPUs of a GPU machine stays on the CPU when its
    model has no CUDA lowering (``dl.cpu_only``): plan and execution agree."""
    table = make_table(200_000)

    @og.pipeline
    def fit(t):
        X = og.dl.to_tensor(t, FEATURES)
        y = og.dl.to_tensor(t, ["target"])
        _, losses = og.dl.train(mlp, init_params(hidden=512), X, y, epochs=5, batch_size=256)
        return og.dl.to_table(losses, "loss")

    def train_op(plan):
        return next(op for isl in plan.doc.islands for op in isl.ops if op.op == "dl.train")

    both = train_op(fit.compile(table, hw="cloud_a100"))
    assert both.attributes["taskgraph.device"] == "gpu" and "dl.cpu_only" not in both.attributes
    _without_cuda_lowering(monkeypatch)
    plan = fit.compile(table, hw="cloud_a100")
    cpu = train_op(plan)
    assert cpu.attributes["taskgraph.device"] == "cpu"
    assert cpu.attributes.get("dl.cpu_only") in (True, 1)
    assert "dl.cpu_only = true" in plan.mlir
    upstream = pytest.importorskip("opgraph.dialects.upstream_verify")
    assert upstream.verify_text(plan.mlir) is None


def test_rank_processes_share_the_gpus(monkeypatch):
    """A rank process (its engine sets OPGRAPH_RANKS_PER_NODE; or one of several ranks a
    launcher started) keeps XLA from taking 75% of each GPU up front, and knows its rank on
    the node; a lone process and a value the user set are left alone."""
    names = ("OPGRAPH_RANKS_PER_NODE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
             "SLURM_NTASKS_PER_NODE", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
             "SLURM_LOCALID", "XLA_PYTHON_CLIENT_PREALLOCATE")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    dl_exec._share_gpus_with_other_ranks()
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ
    assert dl_exec.node_rank(5) == 5
    monkeypatch.setenv("MPI_LOCALNRANKS", "1")
    dl_exec._share_gpus_with_other_ranks()
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ
    for env in ({"OPGRAPH_RANKS_PER_NODE": "1"}, {"MPI_LOCALNRANKS": "2"}, {"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}):
        monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            dl_exec._share_gpus_with_other_ranks()
            assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
    monkeypatch.setenv("OPGRAPH_RANKS_PER_NODE", "2")
    dl_exec._share_gpus_with_other_ranks()
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")
    assert dl_exec.node_rank(0) == 3
    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_RANK")
    monkeypatch.setenv("MPI_LOCALRANKID", "1")
    assert dl_exec.node_rank(0) == 1


def test_plan_device_reaches_the_runtime(monkeypatch, tmp_path):
    """The device the plan gives a DL op (``taskgraph.device`` from choose-parallelism, or
    its island's) is what the runtime asks JAX for; without a GPU it runs on the CPU."""
    plan = fit_pipeline(str(tmp_path / "p.npz"), epochs=1).compile(
        make_table(40), hw="laptop"
    )
    doc = plan.doc.model_copy(deep=True)
    for island in doc.islands:
        for op in island.ops:
            if op.op == "dl.train":
                op.attributes["taskgraph.device"] = "gpu"
    asked = []
    real = dl_exec.select_device

    def spy(requested, platforms=None, rank_on_node=0):
        asked.append((requested, platforms))
        return real(requested, platforms, rank_on_node)

    monkeypatch.setattr(dl_exec, "select_device", spy)
    dl_exec.TIMELINE.clear()
    from opgraph.runtime.executor import run_local

    run_local(doc, [make_table(40)], 1)
    assert ("gpu", ("cpu", "cuda")) in asked  # the plan carries the model for both
    expected = "gpu" if real("gpu").platform == "gpu" else "cpu"
    assert [e["device"] for e in dl_exec.TIMELINE] == [expected]


# --------------------------------------------------------------------------- IR and plan


def test_plan_carries_model_and_verifies_upstream(tmp_path):
    plan = fit_pipeline(str(tmp_path / "p.npz"), **TRAIN_KW).compile(
        make_table(), hw="laptop"
    )
    text = plan.mlir
    assert '"dl.model"' in text and "stablehlo.dot_general" in text
    doc = (
        json.loads(plan.json())
        if callable(getattr(plan, "json", None))
        else json.loads(plan.json)
    )
    train = next(
        op for isl in doc["islands"] for op in isl["ops"] if op["op"] == "dl.train"
    )
    assert (
        train["attributes"]["dl.flops_per_row"] > 0
        and train["attributes"]["dl.bytes_per_row"] > 0
    )
    exported = dl_exec._deserialize(train["attributes"]["dl.model_export"])
    assert exported.in_tree.num_leaves == 5  # four parameter leaves and x
    # one plan for CPU and GPU machines, whichever traced it; the IR shows the CPU lowering
    assert exported.platforms == ("cpu", "cuda")
    assert "_platform_index" not in text
    upstream = pytest.importorskip("opgraph.dialects.upstream_verify")
    assert upstream.verify_text(text) is None


def test_model_without_a_cuda_lowering_stays_on_the_cpu(monkeypatch, tmp_path):
    """A model JAX cannot lower for CUDA on this machine is carried for the CPU alone, and
    the runtime keeps it there even when the plan asks for a GPU and one is present."""
    _without_cuda_lowering(monkeypatch)
    plan = fit_pipeline(str(tmp_path / "p.npz"), epochs=1).compile(
        make_table(40), hw="laptop"
    )
    doc = plan.doc.model_copy(deep=True)
    train = next(op for isl in doc.islands for op in isl.ops if op.op == "dl.train")
    assert dl_exec.carried_platforms(train) == ("cpu",)
    assert train.attributes.get("dl.cpu_only") in (True, 1)
    train.attributes["taskgraph.device"] = "gpu"  # a plan that asks anyway: the runtime declines

    class FakeGpu:
        platform = "gpu"

    real_devices = jax.devices
    monkeypatch.setattr(
        jax,
        "devices",
        lambda backend=None: [FakeGpu()] if backend == "gpu" else real_devices(backend),
    )
    dl_exec.TIMELINE.clear()
    from opgraph.runtime.executor import run_local

    (losses,) = run_local(doc, [make_table(40)], 1)
    assert losses.num_rows == 1
    assert [e["device"] for e in dl_exec.TIMELINE] == ["cpu"]


# ------------------------------------------------------------------------------- example


def _losses(stdout: str) -> list[float]:
    return [
        float(x)
        for x in re.findall(r"^\s*(-?\d+\.\d+(?:e[-+]?\d+)?)\s*$", stdout, re.MULTILINE)
    ]


@needs_mpi
def test_example_etl_train_local_and_mpi_same_loss_curve(tmp_path):
    env = {**os.environ, "OPGRAPH_EXAMPLE_ROWS": "2000", "COLUMNS": "200"}
    curves = []
    for extra in ([], ["--engine", "mpi", "-n", "2"]):
        cmd = [
            sys.executable,
            "-m",
            "opgraph.cli",
            "run",
            str(ROOT / "examples" / "etl_train.py"),
            "--arg",
            "epochs=3",
            *extra,
        ]
        proc = subprocess.run(
            cmd,
            check=False,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        curves.append(_losses(proc.stdout))
        preds = pq.read_table(tmp_path / "out" / "predictions")
        assert preds.column_names == ["predicted_solubility"] and preds.num_rows > 100
        assert (tmp_path / "out" / "mlp_params.npz").is_file()
    local, mpi = curves
    assert len(local) == 3 and local[-1] < local[0]
    np.testing.assert_allclose(mpi, local, rtol=1e-3)


def test_comm_ops_on_dl_values():
    """comm ops the compiler may place on tensors/parameters: allgather makes a tensor whole."""
    from opgraph.runtime.local_comm import run_ranks

    class Op:
        op = "comm.allgather"

    def body(comm):
        part = dl_exec.TensorValue(
            np.arange(3 * comm.rank, 3 * comm.rank + 3, dtype=np.float32)
        )
        whole = dl_exec.comm_on_dl_value(comm, Op, part)
        params = dl_exec.ParamsValue([np.ones(2)])
        return (
            whole.replicated,
            whole.data.tolist(),
            dl_exec.comm_on_dl_value(comm, Op, params) is params,
        )

    assert run_ranks(2, body) == [(True, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], True)] * 2


def test_errors_are_opgraph_errors():
    assert issubclass(dl_exec.DLError, OpgraphError)
