"""``--emit slurm`` (job.slurm: valid bash, #SBATCH lines matching the spec) and every example
compiled with the full parallelism pipeline for summit, frontier, laptop and this machine's
detected spec, with every written IR file verifying in upstream MLIR."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from opgraph.dialects.upstream_verify import verify_files

from opgraph.cli import main
from opgraph.hwspec import load_spec
from opgraph.plan import IslandDoc, PlanDoc
from opgraph.slurm import format_time, job_shape, slurm_script

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = ["etl", "timeseries", "sets", "etl_train"]
LOGICAL = "fold-constants,predicate-pushdown,projection-pushdown,fuse-expressions,fold-constants,canonicalize,cse,dce"
RECOMMENDED = (
    f"builtin.module({LOGICAL},annotate-statistics,classify-patterns,choose-parallelism,"
    "insert-communication,form-islands,schedule-islands,lower-to-kernels)"
)


def sbatch(text: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)", text, re.MULTILINE))


def _doc(ranks: int, device: str = "cpu", makespan: float | None = 10.0, nodes_used: int | None = None) -> PlanDoc:
    return PlanDoc(
        pipeline="etl",
        hardware="summit",
        islands=[IslandDoc(name="i0", ranks=ranks, device=device, ops=[])],
        makespan=makespan,
        nodes_used=nodes_used,
    )


def test_job_shape_cpu_and_gpu_on_summit():
    summit = load_spec("summit")  # 42 usable cores, 6 GPUs per node
    s = job_shape(_doc(84), summit)
    assert (s.nodes, s.ntasks_per_node, s.gpus_per_task) == (2, 42, 0)
    s = job_shape(_doc(10), summit)
    assert (s.nodes, s.ntasks_per_node) == (1, 10)
    s = job_shape(_doc(12, "gpu"), summit)
    assert (s.nodes, s.ntasks_per_node, s.gpus_per_task, s.cpus_per_task) == (2, 6, 1, 7)
    s = job_shape(_doc(4, nodes_used=3), summit)
    assert s.nodes == 3
    s = job_shape(_doc(10**6), summit)  # larger than the machine: every node, more tasks each
    assert s.nodes == 4608 and s.nodes * s.ntasks_per_node >= 10**6
    text = slurm_script(_doc(12, "gpu"), summit, "/tmp/plan dir")
    lines = sbatch(text)
    assert lines["nodes"] == "2" and lines["ntasks-per-node"] == "6" and lines["gpus-per-task"] == "1"
    assert "gpus-per-task" not in sbatch(slurm_script(_doc(84), summit, "/tmp/x"))


def test_time_limit_from_makespan():
    assert format_time(1) == "00:01:00"
    assert format_time(3600) == "01:00:00"
    assert format_time(3601) == "01:01:00"
    assert format_time(2 * 86400 + 90) == "2-00:02:00"
    summit = load_spec("summit")
    assert job_shape(_doc(1, makespan=0.001), summit).time_s == 301  # 5 min margin
    assert job_shape(_doc(1, makespan=3600.0), summit).time_s == 7500  # twice, plus 5 min
    assert sbatch(slurm_script(_doc(1, makespan=3600.0), summit, "/x"))["time"] == "02:05:00"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, detected_spec) -> dict[tuple[str, str], Path]:
    """Every example for every spec, compiled by the CLI with the recommended pipeline as
    the default one (as the lead integrates it: verified once on output, not per pass)."""
    import opgraph.passes.pipeline as pipeline_module

    DUMPED = ("summit", str(detected_spec))

    out: dict[tuple[str, str], Path] = {}
    root = tmp_path_factory.mktemp("compiled")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPGRAPH_EXAMPLE_ROWS", "2000")
        mp.setattr(pipeline_module, "DEFAULT_PIPELINE", RECOMMENDED)
        for example in EXAMPLES:
            for hw in ("summit", "frontier", "laptop", str(detected_spec)):
                target = root / f"{example}-{Path(hw).stem}"
                argv = ["compile", str(REPO / "examples" / f"{example}.py"), "--hw", hw, "-o", str(target), "--emit", "slurm"]
                if hw in DUMPED:  # every pass's dump (printing etl_train's model text 17 times is slow)
                    argv.append("--print-ir-after-all")
                assert main(argv) == 0, argv
                out[(example, Path(hw).stem)] = target
    return out


def test_job_slurm_is_valid_bash_with_the_spec_s_sbatch_lines(compiled):
    for (example, hw), target in compiled.items():
        script = target / "job.slurm"
        text = script.read_text()
        assert text.startswith("#!/bin/bash\n")
        check = subprocess.run(["bash", "-n", str(script)], check=False, capture_output=True, text=True)
        assert check.returncode == 0, (example, hw, check.stderr)
        doc = PlanDoc.model_validate_json((target / "plan.json").read_text())
        lines = sbatch(text)
        ranks = max(i.ranks for i in doc.islands)
        nodes, per_node = int(lines["nodes"]), int(lines["ntasks-per-node"])
        assert nodes * per_node >= ranks
        assert re.fullmatch(r"(\d+-)?\d\d:\d\d:00", lines["time"])
        assert lines["job-name"] == f"opgraph-{example}"
        assert "srun" in text and "opgraph.runtime.mpi_worker" in text and str(target.resolve()) in text
        if hw == "summit":
            gpu = any(i.device == "gpu" for i in doc.islands)
            assert per_node <= (6 if gpu else 42)
            assert ("gpus-per-task" in lines) == gpu
        if hw == "laptop":
            assert nodes == 1 and "gpus-per-task" not in lines


def test_every_example_compiles_and_every_dump_verifies_upstream(compiled):
    """plan.mlir of every example x spec; every pass's dump for summit and the detected spec."""
    files: list[str] = []
    for (example, hw), target in compiled.items():
        dumps = sorted((target / "ir").glob("*.mlir"))
        doc = PlanDoc.model_validate_json((target / "plan.json").read_text())
        assert doc.makespan is not None and all(i.start is not None for i in doc.islands)
        files.append(str(target / "plan.mlir"))
        if hw in ("frontier", "laptop"):
            assert not dumps
            continue
        assert dumps[-1].name.endswith("lower-to-kernels.mlir")
        assert dumps[-1].read_text() == (target / "plan.mlir").read_text()
        names = [d.name for d in dumps]
        assert any("insert-communication" in n for n in names) and any("schedule-islands" in n for n in names)
        files += list(map(str, dumps))
    assert verify_files(files) == []
