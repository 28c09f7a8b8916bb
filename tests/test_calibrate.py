"""`opgraph calibrate`: measured figures in a spec that validates and reaches the cost model."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from support import HAVE_MPI

from opgraph.calibrate import MAX_ROWS_PER_S, OP_KINDS, calibrate, fit_line
from opgraph.cli import main
from opgraph.errors import OpgraphError
from opgraph.hwspec import load_spec


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    """`opgraph calibrate --quick -o spec.yaml` (with MPI where a launcher exists)."""
    path = tmp_path_factory.mktemp("cal") / "this_machine.yaml"
    argv = ["calibrate", "--quick", "-o", str(path)] + ([] if HAVE_MPI else ["--no-mpi"])
    assert main(argv) == 0
    return path


# ------------------------------------------------------------------ fitting


def test_fit_line_recovers_overhead_and_rate():
    rate, overhead = fit_line(1000, 0.01 + 1000 / 1e6, 9000, 0.01 + 9000 / 1e6)
    assert rate == pytest.approx(1e6) and overhead == pytest.approx(0.01)


def test_fit_line_flat_and_superlinear_cases():
    rate, overhead = fit_line(1000, 0.002, 9000, 0.002)  # zero-copy op: no growth
    assert rate == MAX_ROWS_PER_S and overhead == pytest.approx(0.002)
    rate, overhead = fit_line(1000, 0.001, 9000, 0.5)  # super-linear: through the origin
    assert overhead == 0.0 and rate == pytest.approx(9000 / 0.5)
    with pytest.raises(ValueError):
        fit_line(10, 1.0, 10, 1.0)


# ------------------------------------------------------------------ the command


def test_calibrated_spec_validates_and_has_every_figure(calibrated, capsys):
    assert main(["hw", "validate", str(calibrated)]) == 0
    assert "valid" in capsys.readouterr().out
    spec = load_spec(str(calibrated))
    cal = spec.calibration
    for kind in OP_KINDS:
        assert cal[kind]["rows_per_s"] > 0 and math.isfinite(cal[kind]["rows_per_s"]), kind
        assert cal[kind]["overhead_s"] >= 0, kind
    for kind in ("read_parquet", "write_parquet"):
        assert cal[kind]["bytes_per_s"] > 0
    cores = len(os.sched_getaffinity(0))
    for kind in ("join", "groupby", "sort", "filter", "hash_partition", "range_partition"):
        if cores > 1:  # measured speedup of one rank on all cores, within [1, cores]
            assert cal[kind]["threads"] == cores
            assert 1.0 <= cal[kind]["parallel_speedup"] <= cores, kind
        else:
            assert "parallel_speedup" not in cal[kind]
    assert "parallel_speedup" not in cal["read_parquet"]
    assert cal["filter"]["row_bytes"] == 40 and cal["groupby"]["row_bytes"] == 24
    assert 1e8 < cal["memory"]["bandwidth_bytes_per_s"] < 1e13
    # the detected spec's defaults are replaced by measurements and marked so
    assert spec.sources["nodes.memory.bandwidth_gb_per_s"] == "measured"
    assert spec.nodes.memory.bandwidth_gb_per_s == pytest.approx(cal["memory"]["bandwidth_bytes_per_s"] / 1e9, rel=0.01)
    assert spec.sources["nodes.disks[0].write_gb_per_s"] == "measured"
    if HAVE_MPI:
        assert 0 < cal["mpi"]["latency_s"] < 0.01
        assert cal["mpi"]["bandwidth_bytes_per_s"] > 1e7
        assert spec.sources["network.latency_us"] == "measured"
    # a plausible machine: kernels are slower than a copy of memory, sort slower than filter
    assert cal["sort"]["rows_per_s"] < cal["filter"]["rows_per_s"] * 10
    assert "# written by 'opgraph calibrate --quick'" in calibrated.read_text()


def test_calibration_reaches_the_machine_ir(calibrated):
    from opgraph.dialects.machine import attach_machine, spec_from_machine_ops
    from xdsl.dialects.builtin import ModuleOp

    spec = load_spec(str(calibrated))
    module = ModuleOp([])
    attach_machine(module, spec)
    module.verify()
    back = spec_from_machine_ops(module)
    assert back.calibration["join"]["rows_per_s"] == pytest.approx(spec.calibration["join"]["rows_per_s"])
    assert back.calibration["memory"] == pytest.approx(spec.calibration["memory"])


def test_cost_model_uses_the_calibration(calibrated):
    cost_model = pytest.importorskip("opgraph.passes.cost_model")
    if not hasattr(cost_model, "CostModel"):
        pytest.skip("cost model without CostModel")
    spec = load_spec(str(calibrated))
    model = cost_model.CostModel(spec)
    assert model.rate("groupby") == pytest.approx(spec.calibration["groupby"]["rows_per_s"])
    assert model.overhead("sort") == pytest.approx(spec.calibration["sort"]["overhead_s"])


def test_base_spec_keeps_its_published_figures():
    laptop = load_spec("laptop")
    result = calibrate(laptop, quick=True, mpi=False, kinds=("filter", "hash_partition"))
    spec = result.spec
    assert spec.name == laptop.name
    assert spec.nodes.memory.bandwidth_gb_per_s == laptop.nodes.memory.bandwidth_gb_per_s
    assert spec.sources == laptop.sources
    assert set(spec.calibration) == {"filter", "hash_partition", "memory"}
    assert load_spec("laptop").calibration == laptop.calibration  # the packaged spec is untouched


def test_unknown_kind_and_bad_base_are_user_errors(tmp_path, capsys):
    with pytest.raises(OpgraphError, match="unknown op kind"):
        calibrate(quick=True, mpi=False, kinds=("teleport",))
    assert main(["calibrate", "--quick", "--hw", "no_such_machine", "-o", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no_such_machine" in err
    assert not (tmp_path / "x.yaml").exists()
