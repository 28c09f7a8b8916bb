"""`opgraph compile/opt/hw`: files written, upstream verification, exact error lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opgraph.dialects.context import parse_module, print_module
from opgraph.dialects.upstream_verify import verify_files
from opgraph.passes.pipeline import default_pipeline
from opgraph.passes.registry import pass_names

from opgraph.cli import main
from opgraph.plan import PlanDoc

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = ["etl", "timeseries", "sets", "etl_train"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real console entry point in a fresh process (exit code, stderr as a user sees it)."""
    env = {**os.environ, "OPGRAPH_EXAMPLE_ROWS": "2000"}
    return subprocess.run(
        [sys.executable, "-m", "opgraph.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, detected_spec) -> dict[tuple[str, str], Path]:
    """Every example compiled for summit, frontier, laptop and this machine's detected spec."""
    out: dict[tuple[str, str], Path] = {}
    root = tmp_path_factory.mktemp("compiled")
    os.environ["OPGRAPH_EXAMPLE_ROWS"] = "2000"
    for example in EXAMPLES:
        for hw in ("summit", "frontier", "laptop", str(detected_spec)):
            target = root / f"{example}-{Path(hw).stem}"
            argv = ["compile", str(REPO / "examples" / f"{example}.py"), "--hw", hw, "-o", str(target), "--print-ir-after-all"]
            assert main(argv) == 0, argv
            out[(example, Path(hw).stem)] = target
    return out


def test_compile_writes_plan_files(compiled):
    for (example, _hw), target in compiled.items():
        assert (target / "plan.mlir").is_file()
        doc = PlanDoc.model_validate_json((target / "plan.json").read_text())
        assert doc.version == 1 and doc.pipeline == example and doc.hardware
        dumps = sorted(p.name for p in (target / "ir").iterdir())
        assert dumps[0] == "00-traced.mlir"
        assert dumps[1:] == [f"{i:02d}-{p.name}.mlir" for i, p in enumerate(default_pipeline(), start=1)]
        assert dumps[-1].endswith("lower-to-kernels.mlir")
        assert (target / "ir" / dumps[-1]).read_text() == (target / "plan.mlir").read_text()
        traced = (target / "ir" / "00-traced.mlir").read_text()
        assert '"machine.system"' in traced and "#dlti.target_system_spec" in traced
        assert '"async.execute"' in (target / "plan.mlir").read_text()
        assert doc.islands and all(i.ranks >= 1 for i in doc.islands)


def test_every_written_ir_file_verifies_upstream(compiled):
    files = [str(p) for target in compiled.values() for p in [target / "plan.mlir", *sorted((target / "ir").glob("*.mlir"))]]
    assert len(files) > 4 * len(EXAMPLES) * 4
    assert verify_files(files) == []


def test_dumps_round_trip_through_xdsl(compiled):
    target = compiled[("etl", "summit")]
    for path in sorted((target / "ir").glob("*.mlir")):
        text = path.read_text()
        assert print_module(parse_module(text)) == text, path.name


def test_summit_spec_is_in_the_ir(compiled):
    text = (compiled[("etl", "summit")] / "plan.mlir").read_text()
    assert 'nodes = 4608 : i64' in text
    assert '"num_cores" = 42 : i64' in text


def test_plan_json_describes_islands(compiled):
    doc = json.loads((compiled[("etl", "laptop")] / "plan.json").read_text())
    ops = [op["op"] for island in doc["islands"] for op in island["ops"]]
    assert ops[:2] == ["df.read_parquet", "df.read_parquet"]
    assert "df.join" in ops and "df.groupby_agg" in ops and "df.write_parquet" in ops
    producers = {out: i["name"] for i in doc["islands"] for out in i["outputs"]}
    for island in doc["islands"]:
        for value in island["inputs"]:
            assert value in producers  # every input comes from another island
    assert doc["outputs"] and all(v in producers for v in doc["outputs"])
    filt = next(op for island in doc["islands"] for op in island["ops"] if op["op"] == "df.filter")
    assert filt["regions"][0][-1]["op"] == "vector.yield"
    assert filt["loc"].startswith(str(REPO / "examples" / "etl.py") + ":") or filt["loc"].startswith("examples/etl.py:")


def test_explain_prints_per_op_table(tmp_path, capsys):
    os.environ["OPGRAPH_EXAMPLE_ROWS"] = "2000"
    assert main(["compile", str(REPO / "examples" / "etl.py"), "--hw", "laptop", "-o", str(tmp_path / "o"), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "df.join" in out and "shuffle" in out and "pattern" in out


def test_pass_pipeline_option_and_opt(tmp_path, compiled):
    os.environ["OPGRAPH_EXAMPLE_ROWS"] = "2000"
    target = tmp_path / "o"
    argv = ["compile", str(REPO / "examples" / "etl.py"), "--hw", "laptop", "-o", str(target),
            "--pass-pipeline", "builtin.module(cse,lower-to-islands{ranks=4})", "--print-ir-after-all"]
    assert main(argv) == 0
    assert sorted(p.name for p in (target / "ir").iterdir()) == ["00-traced.mlir", "01-cse.mlir", "02-lower-to-islands.mlir"]
    assert "taskgraph.ranks = 4 : i64" in (target / "plan.mlir").read_text()
    # opgraph opt on the traced dump reproduces the same lowering
    lowered = tmp_path / "lowered.mlir"
    assert main(["opt", str(target / "ir" / "01-cse.mlir"), "--pass-pipeline", "lower-to-islands{ranks=4}", "-o", str(lowered)]) == 0
    assert lowered.read_text() == (target / "plan.mlir").read_text()


def test_hw_commands(tmp_path, capsys, detected_spec):
    assert main(["hw", "validate", "summit"]) == 0
    assert main(["hw", "show", "frontier"]) == 0
    assert "9408" in capsys.readouterr().out.replace(",", "")
    assert main(["hw", "show", "summit.yaml", "--emit", "mlir"]) == 0
    mlir = capsys.readouterr().out
    (tmp_path / "hw.mlir").write_text(mlir)
    assert verify_files([str(tmp_path / "hw.mlir")]) == []
    assert main(["hw", "validate", str(detected_spec)]) == 0


# ------------------------------------------------------------------ bad input


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _error(args: list[str], cwd: Path) -> str:
    proc = run_cli(*args, cwd=cwd)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_error_missing_pipeline_file(tmp_path):
    assert _error(["compile", "nope.py", "--hw", "summit", "-o", "out"], tmp_path) == "error: nope.py: no such pipeline file"
    assert not (tmp_path / "out").exists()


def test_error_no_pipeline_in_file(tmp_path):
    _write(tmp_path, "plain.py", "x = 1\n")
    assert _error(["compile", "plain.py", "--hw", "summit", "-o", "out"], tmp_path) == (
        "error: plain.py: no @og.pipeline function in this file"
    )


def test_error_unknown_hw_name(tmp_path):
    _write(tmp_path, "p.py", """\
        import opgraph as og
        @og.pipeline
        def p(t):
            return t
        """)
    assert _error(["compile", str(REPO / "examples" / "etl.py"), "--hw", "mars", "-o", "out"], tmp_path) == (
        "error: unknown hardware spec 'mars' (packaged specs: cloud_a100, frontier, laptop, summit; or give a YAML path)"
    )
    assert not (tmp_path / "out").exists()


def test_error_malformed_yaml(tmp_path):
    _write(tmp_path, "bad.yaml", "name: x\nnodes:\n  count: [1\n")
    line = _error(["compile", str(REPO / "examples" / "etl.py"), "--hw", "bad.yaml", "-o", "out"], tmp_path)
    assert line.startswith("error: bad.yaml:3: invalid YAML:") or line.startswith("error: bad.yaml:4: invalid YAML:")
    assert not (tmp_path / "out").exists()


def test_error_invalid_spec_field(tmp_path):
    text = (REPO / "hardware_specs" / "laptop.yaml").read_text().replace("memory_gb: 16", "memory_gb: lots", 1)
    if "memory_gb: lots" not in text:
        text = text.replace("capacity_gb: 16", "capacity_gb: lots", 1)
    (tmp_path / "spec.yaml").write_text(text)
    line = _error(["hw", "validate", "spec.yaml"], tmp_path)
    assert line.startswith("error: spec.yaml:") and "expected a positive number, got 'lots'" in line


def test_error_unknown_pass(tmp_path):
    assert _error(
        ["compile", str(REPO / "examples" / "etl.py"), "--hw", "laptop", "-o", "out", "--pass-pipeline", "cse,frobnicate"],
        tmp_path,
    ) == f"error: unknown pass 'frobnicate' (available: {', '.join(sorted(pass_names()))})"
    assert not (tmp_path / "out").exists()


def test_error_user_mistake_in_pipeline(tmp_path):
    _write(tmp_path, "p.py", """\
        import pyarrow as pa, pyarrow.parquet as pq
        import opgraph as og
        pq.write_table(pa.table({"a": [1, 2]}), "in.parquet")

        @og.pipeline
        def p(path: str = "in.parquet"):
            t = og.read_parquet(path)
            return t.assign(b=t["zzz"] * 2)
        """)
    assert _error(["compile", "p.py", "--hw", "laptop", "-o", "out"], tmp_path) == (
        "error: p.py:8: unknown column 'zzz' (columns: a)"
    )
    assert not (tmp_path / "out").exists()


def test_error_python_exception_in_pipeline(tmp_path):
    _write(tmp_path, "p.py", """\
        import opgraph as og

        @og.pipeline
        def p():
            return undefined_name
        """)
    assert _error(["compile", "p.py", "--hw", "laptop", "-o", "out"], tmp_path) == (
        "error: p.py:5: NameError: name 'undefined_name' is not defined"
    )


def test_error_bad_arg_and_entry(tmp_path):
    _write(tmp_path, "p.py", """\
        import opgraph as og

        @og.pipeline
        def a(x: int = 1):
            return None

        @og.pipeline
        def b():
            return None
        """)
    assert _error(["compile", "p.py", "--hw", "laptop", "-o", "out"], tmp_path) == (
        "error: p.py: several pipelines (a, b): choose one with --entry"
    )
    assert _error(["compile", "p.py", "--entry", "c", "--hw", "laptop", "-o", "out"], tmp_path) == (
        "error: p.py: no pipeline named 'c' (pipelines: a, b)"
    )
    assert _error(["compile", "p.py", "--entry", "a", "--arg", "y=2", "--hw", "laptop", "-o", "out"], tmp_path) == (
        "error: pipeline 'a' has no parameter 'y' (parameters: x)"
    )


def test_error_opt_on_bad_ir(tmp_path):
    _write(tmp_path, "bad.mlir", '"builtin.module"() ({\n  "df.nope"() : () -> ()\n}) : () -> ()\n')
    assert _error(["opt", "bad.mlir", "--pass-pipeline", "cse"], tmp_path) == (
        "error: bad.mlir:2: Operation df.nope is not registered"
    )
    # parses, but does not verify: a read whose path is not a string
    _write(tmp_path, "bad2.mlir", '"builtin.module"() ({\n  %0 = "df.read_parquet"() {path = 3 : i64} : () -> !df.table<[], [], []>\n}) : () -> ()\n')
    assert _error(["opt", "bad2.mlir", "--pass-pipeline", "cse"], tmp_path) == (
        "error: bad2.mlir: input IR does not verify: 'df.read_parquet' at unknown location: "
        "3 : i64 should be of base attribute string"
    )


def test_failed_compile_keeps_previous_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "plan.mlir").write_text("previous")
    _error(["compile", "nope.py", "--hw", "summit", "-o", "out"], tmp_path)
    assert (out / "plan.mlir").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_debug_shows_traceback(tmp_path):
    proc = run_cli("--debug", "compile", "nope.py", "--hw", "summit", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" in proc.stderr
