"""``opgraph compile --emit slurm``: ``OUT/job.slurm``, a batch script that runs the plan on the
described machine with the ``mpi`` engine's worker under ``srun``.

Shape of the job (from ``plan.json`` and the hardware spec):

* ranks: the largest island's ``ranks`` (the runtime runs every island on all ranks of the
  world; an island's ranks is the compiler's advice) - at least 1;
* CPU plan: ``--ntasks-per-node = min(ranks, cores per node)`` (one rank per core);
  GPU plan (some island on ``gpu``): ``--ntasks-per-node = min(ranks, GPUs per node)``,
  ``--gpus-per-task=1`` and the node's cores shared out as ``--cpus-per-task``;
* ``--nodes = max(ceil(ranks / ntasks-per-node), nodes the schedule used)``, capped by the
  machine's node count;
* ``--time``: twice the predicted makespan plus 5 minutes, rounded up to whole minutes
  (``HH:MM:SS``; ``D-HH:MM:SS`` beyond a day);
* ``--job-name``: ``opgraph-<pipeline>``.

The script then runs ``srun python -m opgraph.runtime.mpi_worker PLAN.json INPUTS RESULTS
--expect-ranks N`` (see ``runtime/mpi_worker.py``: rank 0 reads the plan and broadcasts it;
outputs land in ``RESULTS/output_<i>.arrow`` with ``results.json`` as the success marker).
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from typing import Any

from opgraph.plan import PlanDoc

TIME_FACTOR = 2.0
TIME_MARGIN_S = 300.0


@dataclass(frozen=True)
class JobShape:
    ranks: int
    nodes: int
    ntasks_per_node: int
    gpus_per_task: int  # 0: CPU job
    cpus_per_task: int
    time_s: int
    job_name: str


def format_time(seconds: float) -> str:
    """Slurm's ``--time``: whole minutes, ``HH:MM:SS`` or ``D-HH:MM:SS``."""
    minutes = max(1, math.ceil(seconds / 60.0))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{mins:02d}:00"
    return f"{hours:02d}:{mins:02d}:00"


def job_shape(doc: PlanDoc, spec: Any) -> JobShape:
    """Nodes, tasks per node, GPUs per task and time limit for ``doc`` on ``spec``
    (a ``HardwareSpec``)."""
    ranks = max([isl.ranks for isl in doc.islands] or [1])
    gpu = any(isl.device == "gpu" for isl in doc.islands)
    cores = spec.nodes.cpu.cores
    gpus = spec.nodes.gpus.count if spec.nodes.gpus is not None else 0
    if gpu and gpus:
        per_node = min(ranks, gpus)
        gpus_per_task = 1
        cpus_per_task = max(1, cores // per_node)
    else:
        per_node = min(ranks, cores)
        gpus_per_task = 0
        cpus_per_task = 1
    nodes = max(math.ceil(ranks / per_node), doc.nodes_used or 1)
    nodes = min(nodes, spec.nodes.count)
    if nodes * per_node < ranks:  # the machine is smaller than the plan: fill every node
        per_node = math.ceil(ranks / nodes)
    makespan = doc.makespan or 0.0
    time_s = math.ceil(makespan * TIME_FACTOR + TIME_MARGIN_S)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"opgraph-{doc.pipeline}")
    return JobShape(ranks, nodes, per_node, gpus_per_task, cpus_per_task, time_s, name)


def slurm_script(doc: PlanDoc, spec: Any, plan_dir: str) -> str:
    """The text of ``job.slurm`` for the plan written to ``plan_dir`` (absolute path)."""
    s = job_shape(doc, spec)
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"# opgraph plan '{doc.pipeline}' for '{doc.hardware}': {s.ranks} rank(s)"
        + (f", predicted makespan {doc.makespan:.3g} s" if doc.makespan is not None else ""),
        f"#SBATCH --job-name={s.job_name}",
        f"#SBATCH --nodes={s.nodes}",
        f"#SBATCH --ntasks-per-node={s.ntasks_per_node}",
    ]
    if s.gpus_per_task:
        lines.append(f"#SBATCH --gpus-per-task={s.gpus_per_task}")
    lines += [
        f"#SBATCH --cpus-per-task={s.cpus_per_task}",
        f"#SBATCH --time={format_time(s.time_s)}",
        f"#SBATCH --output={s.job_name}-%j.out",
        "##SBATCH --account=<project>     (site specific: uncomment and fill in)",
        "##SBATCH --partition=<queue>",
        "",
        "set -euo pipefail",
        f"PLAN_DIR=${{OPGRAPH_PLAN_DIR:-{q(plan_dir)}}}",
        'INPUTS="${OPGRAPH_INPUTS:-$PLAN_DIR/inputs}"',
        'RESULTS="${OPGRAPH_RESULTS:-$PLAN_DIR/results-${SLURM_JOB_ID:-local}}"',
        'mkdir -p "$INPUTS" "$RESULTS"',
        f"NTASKS=$(( ${{SLURM_JOB_NUM_NODES:-{s.nodes}}} * {s.ntasks_per_node} ))",
        f"if [ \"$NTASKS\" -gt {s.ranks} ]; then NTASKS={s.ranks}; fi",
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
        "",
        "# every rank runs the plan; rank 0 gathers the outputs into $RESULTS",
        'srun --ntasks="$NTASKS" ${OPGRAPH_SRUN_FLAGS:-} \\',
        '    "${OPGRAPH_PYTHON:-python}" -m opgraph.runtime.mpi_worker \\',
        '    "$PLAN_DIR/plan.json" "$INPUTS" "$RESULTS" --expect-ranks "$NTASKS"',
        'echo "opgraph: outputs in $RESULTS"',
        "",
    ]
    return "\n".join(lines)
