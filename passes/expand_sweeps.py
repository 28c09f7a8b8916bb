"""``expand-sweeps``: a hyperparameter sweep becomes one independent training per grid point
(issue #5 item 4).

``og.dl.sweep`` traces into one ``dl.sweep`` op. This pass replaces it with one ``dl.train``
per grid point (cartesian product of the grid, keys sorted, last key varying fastest: the
order of the result rows), all fed by the sweep's ``x``, ``y`` and initial ``params`` (one
data-engineering output), and a ``dl.sweep_result`` that assembles the table of grid values
and final losses from the runs' loss histories. The trainings share no value, so
``form-islands`` puts each in its own island and ``schedule-islands`` can place them on
disjoint resources at the same time; the executor runs such ready islands concurrently.

Each ``dl.train`` gets the sweep's settings with the point's values substituted (grid keys
``epochs``/``batch_size``/``seed``/``optimizer`` are run settings, the others optimizer
options), the sweep's discardable attributes (model export, FLOP figures), its location,
and ``dl.sweep_run = [k, runs]`` (run index, number of runs of the sweep) which the
scheduler uses to share the machine between the runs. The loss histories are typed
``tensor<?xf32>``: upstream IRDL wants one type for ``dl.sweep_result``'s variadic operands
and a grid may vary ``epochs``.

Place it before ``annotate-statistics`` so that statistics, costs, parallelism and islands
see the trainings. O(ops + runs).
"""

from __future__ import annotations

from dataclasses import dataclass

from opgraph.dialects import dl as dlops
from opgraph.ir_construct import replace_all_uses
from opgraph.dialects.walk import walk_ops
from xdsl.context import Context
from xdsl.dialects.builtin import (
    DYNAMIC_INDEX,
    ArrayAttr,
    DictionaryAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    TensorType,
    i64,
)
from xdsl.ir import Attribute
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

SWEEP_HISTORY_TYPE = TensorType(dlops.LOSS_HISTORY_TYPE, [DYNAMIC_INDEX])

SWEEP_RUN_ATTR = "dl.sweep_run"
"""``[run index, number of runs]`` (i64 array) on every ``dl.train`` made from a sweep."""


def grid_points(grid: DictionaryAttr) -> list[dict[str, Attribute]]:
    """The grid's points in result-row order (keys sorted, last key varying fastest)."""
    keys = sorted(grid.data)
    points: list[dict[str, Attribute]] = [{}]
    for key in keys:
        values = grid.data[key]
        assert isinstance(values, ArrayAttr)
        points = [{**p, key: v} for p in points for v in values.data]
    return points


def _int(a: Attribute) -> int:
    assert isinstance(a, IntegerAttr)
    return int(a.value.data)


def expand_sweep(sweep: dlops.SweepOp) -> dlops.SweepResultOp:
    """Replaces ``sweep`` by its trainings and a ``dl.sweep_result``; returns the latter."""
    points = grid_points(sweep.grid)
    extra = {k: v for k, v in sweep.attributes.items() if "." in k}  # discardable: exports, flops
    base_options = dict(sweep.optimizer_options.data)
    trains: list[dlops.TrainOp] = []
    for k, point in enumerate(points):
        settings = {
            "optimizer": sweep.optimizer.data,
            "epochs": _int(sweep.epochs),
            "batch_size": _int(sweep.batch_size),
            "seed": _int(sweep.seed),
        }
        options = dict(base_options)
        for key, value in point.items():
            if key == "optimizer":
                assert isinstance(value, StringAttr)
                settings["optimizer"] = value.data
            elif key in dlops.SWEEP_RUN_OPTIONS:
                settings[key] = _int(value)
            else:
                options[key] = value
        template = dlops.TrainOp(  # builds the attributes; its history type is static
            sweep.x,
            sweep.y,
            sweep.params,
            sweep.model.root_reference.data,
            sweep.loss.data,
            str(settings["optimizer"]),
            options,
            int(settings["epochs"]),
            int(settings["batch_size"]),
            bool(_int(sweep.shuffle)),
            int(settings["seed"]),
        )
        train = dlops.TrainOp.create(  # history tensor<?xf32>: dl.sweep_result's operand type
            operands=list(template.operands),
            attributes=dict(template.attributes),
            result_types=[template.trained.type, SWEEP_HISTORY_TYPE],
        )
        template.drop_all_references()  # never inserted
        train.attributes.update(extra)
        train.attributes[SWEEP_RUN_ATTR] = ArrayAttr([IntegerAttr(k, i64), IntegerAttr(len(points), i64)])
        train.location = sweep.location
        trains.append(train)
    result = dlops.SweepResultOp([t.losses for t in trains], sweep.grid)
    result.location = sweep.location
    rewriter = Rewriter()
    rewriter.insert_op([*trains, result], InsertPoint.before(sweep))
    replace_all_uses(sweep.result, result.result)
    rewriter.erase_op(sweep)
    return result


@dataclass(frozen=True)
class ExpandSweeps(ModulePass):
    """Expands every ``dl.sweep`` into one ``dl.train`` per grid point + ``dl.sweep_result``."""

    name = "expand-sweeps"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        sweeps = [o for o in walk_ops(op) if isinstance(o, dlops.SweepOp)]
        for sweep in sweeps:
            expand_sweep(sweep)
