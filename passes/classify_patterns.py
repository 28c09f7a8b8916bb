"""``classify-patterns``: writes ``taskgraph.pattern`` (one of the eight parallel patterns of
DESIGN.md §2) on every top-level dataflow op.

The table of ``passes/patterns.py`` decides (its ``snake_case`` names are written with dashes,
as the annotation contract spells them), with these choices for ops it leaves open:

* ``dl.train``: ``globally-reduce`` (data-parallel training: every step allreduces gradients);
  ``dl.predict``, ``dl.to_tensor``, ``dl.to_table``, ``dl.params`` (a replicated constant) and
  ``dl.sweep`` (independent runs): ``embarrassingly-parallel``; ``dl.save``/``dl.load``:
  ``partitioned-io``.
* ``comm.shuffle``: ``shuffle-compute``; ``comm.broadcast``: ``broadcast-compute``;
  ``comm.gather``/``allgather``/``allreduce``: ``globally-reduce``; ``comm.halo``:
  ``halo-exchange``; ``comm.scatter`` and ``taskgraph.transfer``: ``partitioned-io``
  (send-recv/scatter).
* any other dataflow op: ``embarrassingly-parallel``.

``choose-parallelism`` later rewrites the pattern of a join it runs as a broadcast join to
``broadcast-compute``.
"""

from __future__ import annotations

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.ir import Operation
from xdsl.passes import ModulePass

from opgraph.passes.annotate_statistics import dataflow_ops
from opgraph.passes.patterns import pattern_of

PATTERN_ATTR = "taskgraph.pattern"

PATTERN_NAMES = (
    "embarrassingly-parallel",
    "shuffle-compute",
    "sample-shuffle-compute",
    "combine-shuffle-reduce",
    "broadcast-compute",
    "globally-reduce",
    "halo-exchange",
    "partitioned-io",
)

_OVERRIDES = {
    "dl.train": "globally-reduce",
    "dl.predict": "embarrassingly-parallel",
    "dl.to_tensor": "embarrassingly-parallel",
    "dl.to_table": "embarrassingly-parallel",
    "dl.params": "embarrassingly-parallel",
    "dl.sweep": "embarrassingly-parallel",
    "dl.save": "partitioned-io",
    "dl.load": "partitioned-io",
    "comm.shuffle": "shuffle-compute",
    "comm.broadcast": "broadcast-compute",
    "comm.gather": "globally-reduce",
    "comm.allgather": "globally-reduce",
    "comm.allreduce": "globally-reduce",
    "comm.halo": "halo-exchange",
    "comm.scatter": "partitioned-io",
    "taskgraph.transfer": "partitioned-io",
}


def classify(op: Operation) -> str:
    """The pattern of one op (always one of ``PATTERN_NAMES``)."""
    found = _OVERRIDES.get(op.name)
    if found is not None:
        return found
    name = pattern_of(op).replace("_", "-")
    return name if name in PATTERN_NAMES else "embarrassingly-parallel"


class ClassifyPatterns(ModulePass):
    """Writes ``taskgraph.pattern`` (DESIGN §2's eight patterns) on every dataflow op."""

    name = "classify-patterns"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        cache: dict[str, StringAttr] = {}
        for inner in dataflow_ops(op):
            p = classify(inner)
            attr = cache.get(p)
            if attr is None:
                attr = cache[p] = StringAttr(p)
            inner.attributes[PATTERN_ATTR] = attr
