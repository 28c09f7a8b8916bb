"""The ``taskgraph`` dialect: the island (task-graph) level of opgraph IR.

An **island** is a gang-scheduled, bulk-synchronous group of ranks running one or more
operators. Islands are upstream ``async.execute`` ops (see ``dialects/upstream/async_dialect``)
carrying *discardable* attributes of this dialect:

    taskgraph.island  = "i3_filter"    island name, unique in the module
    taskgraph.ranks   = 2 : i64         number of ranks (>= 1)
    taskgraph.device  = "cpu"          "cpu" | "gpu"
    taskgraph.pattern = "shuffle_compute"   parallel pattern (see ``PATTERNS``)

The dataflow between islands is upstream ``!async.value<T>`` / ``!async.token``. This dialect
adds the ops the graph needs beyond that:

* ``taskgraph.transfer``: moves a table (or tensor) from ``from_ranks`` ranks to ``to_ranks``
  ranks with a re-partitioning (``"hash:k1,k2"``, ``"range:k1,k2:desc"``, ``"replicated"``,
  ``"single"``, ``"any"``). It lives inside its own island (pattern ``"transfer"``); operand
  and result have the same type.
* ``taskgraph.plan``: plan metadata at module top level (pipeline name, hardware name,
  format version, optionally the pass pipeline that produced it).

``verify_islands(module)`` checks the discardable island attributes (xDSL does not verify
discardable attributes); ``opgraph.passes.verify`` calls it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from xdsl.dialects.builtin import (
    IntegerAttr,
    IntegerType,
    ModuleOp,
    StringAttr,
    i64,
)
from xdsl.ir import Attribute, Dialect, Operation, SSAValue
from xdsl.irdl import (
    IRDLOperation,
    attr_def,
    irdl_op_definition,
    operand_def,
    opt_attr_def,
    result_def,
    traits_def,
)
from xdsl.traits import HasParent, Pure

from opgraph.dialects.diagnostics import OpVerifyException, fail, where
from opgraph.dialects.upstream.async_dialect import ExecuteOp
from opgraph.dialects.walk import walk_ops

PLAN_VERSION = 1
"""Version of the plan format written into ``taskgraph.plan``."""

# Discardable attributes on islands (``async.execute`` ops).
ISLAND_ATTR = "taskgraph.island"
RANKS_ATTR = "taskgraph.ranks"
DEVICE_ATTR = "taskgraph.device"
PATTERN_ATTR = "taskgraph.pattern"

DEVICES = ("cpu", "gpu")

PATTERNS = (
    "embarrassingly_parallel",  # select, project, map, row aggregation
    "shuffle_compute",  # join, union, intersect, difference
    "sample_shuffle_compute",  # sort
    "combine_shuffle_reduce",  # unique, groupby
    "broadcast_compute",  # broadcast join
    "globally_reduce",  # column aggregation
    "halo_exchange",  # window / rolling / shift
    "partitioned_io",  # read, write
    "transfer",  # an island holding one taskgraph.transfer
    "opaque",  # anything whose pattern is not known
)
"""The vocabulary of ``taskgraph.pattern`` (the eight parallel patterns of DESIGN.md §2,
plus ``transfer`` and ``opaque``)."""

PARTITIONING_KINDS = ("hash", "range", "replicated", "single", "any")


# a verification error that knows its op (``.op``); ``fail`` builds one
TaskGraphVerifyException = OpVerifyException


# ------------------------------------------------------------------------ partitioning


@dataclass(frozen=True)
class Partitioning:
    """A parsed partitioning string.

    ``hash:k1,k2`` -> kind "hash", keys ("k1", "k2");
    ``range:k1,k2:desc`` -> kind "range", keys ("k1", "k2"), descending (False, True);
    ``replicated`` / ``single`` / ``any`` -> no keys.
    """

    kind: str
    keys: tuple[str, ...] = ()
    descending: tuple[bool, ...] = ()

    def __str__(self) -> str:
        if self.kind == "hash":
            return "hash:" + ",".join(self.keys)
        if self.kind == "range":
            return "range:" + ",".join(
                k + (":desc" if d else "") for k, d in zip(self.keys, self.descending)
            )
        return self.kind


def parse_partitioning(text: str) -> Partitioning:
    """Parses a partitioning string; raises ValueError with a readable message."""
    kind, sep, rest = text.partition(":")
    if kind not in PARTITIONING_KINDS:
        raise ValueError(
            f"unknown partitioning '{text}' (expected hash:<keys>, range:<keys>, "
            "replicated, single or any)"
        )
    if kind in ("replicated", "single", "any"):
        if sep:
            raise ValueError(f"partitioning '{kind}' takes no keys, got '{text}'")
        return Partitioning(kind)
    items = rest.split(",") if rest else []
    if not items or any(not i for i in items):
        raise ValueError(f"partitioning '{text}' needs a comma-separated list of key columns")
    if kind == "hash":
        return Partitioning(kind, tuple(items), (False,) * len(items))
    keys: list[str] = []
    desc: list[bool] = []
    for item in items:
        name, colon, order = item.rpartition(":")
        if colon and order in ("asc", "desc") and name:
            keys.append(name)
            desc.append(order == "desc")
        else:
            keys.append(item)
            desc.append(False)
    return Partitioning(kind, tuple(keys), tuple(desc))


def _i64_value(op: Operation, attr: Attribute | None, what: str) -> int:
    if not isinstance(attr, IntegerAttr) or not isinstance(attr.type, IntegerType):
        raise fail(op, f"{what} must be an i64 integer attribute, got {attr}")
    if attr.type.width.data != 64:
        raise fail(op, f"{what} must be an i64 integer attribute, got {attr}")
    return attr.value.data


# --------------------------------------------------------------------------------- ops


@irdl_op_definition
class TransferOp(IRDLOperation):
    """Moves a table between islands, re-partitioning it from ``from_ranks`` to ``to_ranks``.

    Example (inside its own island)::

        %r = "taskgraph.transfer"(%t) {from_ranks = 4 : i64, to_ranks = 2 : i64,
                                       partitioning = "hash:user_id"} : (T) -> T
    """

    name = "taskgraph.transfer"

    input = operand_def()
    output = result_def()

    from_ranks = attr_def(IntegerAttr)
    to_ranks = attr_def(IntegerAttr)
    partitioning = attr_def(StringAttr)

    traits = traits_def(Pure())

    def __init__(self, value: SSAValue | Operation, from_ranks: int, to_ranks: int, partitioning: str):
        value = SSAValue.get(value)
        super().__init__(
            operands=[value],
            result_types=[value.type],
            attributes={
                "from_ranks": IntegerAttr(from_ranks, i64),
                "to_ranks": IntegerAttr(to_ranks, i64),
                "partitioning": StringAttr(partitioning),
            },
        )

    @property
    def parsed_partitioning(self) -> Partitioning:
        return parse_partitioning(self.partitioning.data)

    def verify_(self) -> None:
        for what, attr in (("from_ranks", self.from_ranks), ("to_ranks", self.to_ranks)):
            if _i64_value(self, attr, what) < 1:
                raise fail(self, f"{what} must be >= 1, got {attr.value.data}")
        try:
            p = parse_partitioning(self.partitioning.data)
        except ValueError as e:
            raise fail(self, str(e)) from None
        if p.kind == "single" and self.to_ranks.value.data != 1:
            raise fail(self, f"partitioning 'single' needs to_ranks = 1, got {self.to_ranks.value.data}")
        if self.input.type != self.output.type:
            raise fail(
                self,
                f"result type {self.output.type} must equal the operand type {self.input.type}",
            )


@irdl_op_definition
class PlanOp(IRDLOperation):
    """Plan metadata at module top level.

    Example::

        "taskgraph.plan"() {pipeline = "etl", hardware = "summit", version = 1 : i64,
                            pass_pipeline = "builtin.module(verify,...)"} : () -> ()
    """

    name = "taskgraph.plan"

    pipeline = attr_def(StringAttr)
    hardware = attr_def(StringAttr)
    version = attr_def(IntegerAttr)
    pass_pipeline = opt_attr_def(StringAttr)

    traits = traits_def(HasParent(ModuleOp))

    def __init__(
        self,
        pipeline: str,
        hardware: str,
        version: int = PLAN_VERSION,
        pass_pipeline: str | None = None,
    ):
        attrs: dict[str, Attribute] = {
            "pipeline": StringAttr(pipeline),
            "hardware": StringAttr(hardware),
            "version": IntegerAttr(version, i64),
        }
        if pass_pipeline is not None:
            attrs["pass_pipeline"] = StringAttr(pass_pipeline)
        super().__init__(attributes=attrs)

    def verify_(self) -> None:
        if not self.pipeline.data:
            raise fail(self, "pipeline name must not be empty")
        if _i64_value(self, self.version, "version") < 1:
            raise fail(self, f"version must be >= 1, got {self.version.value.data}")


TaskGraph = Dialect("taskgraph", [TransferOp, PlanOp], [])


# ---------------------------------------------------------------- island attributes


def island_attributes(name: str, ranks: int = 1, device: str = "cpu", pattern: str | None = None) -> dict[str, Attribute]:
    """The discardable attributes that make an ``async.execute`` an island."""
    attrs: dict[str, Attribute] = {
        ISLAND_ATTR: StringAttr(name),
        RANKS_ATTR: _i64_attr(ranks) if type(ranks) is int else IntegerAttr(ranks, i64),
        DEVICE_ATTR: _str_attr(device),
    }
    if pattern is not None:
        attrs[PATTERN_ATTR] = _str_attr(pattern)
    return attrs


# attributes are immutable values: islands share the few distinct ones
@lru_cache(maxsize=256)
def _str_attr(value: str) -> StringAttr:
    return StringAttr(value)


@lru_cache(maxsize=256)
def _i64_attr(value: int) -> IntegerAttr:
    return IntegerAttr(value, i64)


def is_island(op: Operation) -> bool:
    return ISLAND_ATTR in op.attributes and isinstance(op, ExecuteOp)  # (the cheaper test first)


@dataclass(frozen=True)
class IslandInfo:
    name: str
    ranks: int
    device: str
    pattern: str | None


def island_info(op: ExecuteOp) -> IslandInfo:
    """The island attributes of ``op`` (which must verify with ``verify_island``)."""
    pattern = op.attributes.get(PATTERN_ATTR)
    return IslandInfo(
        name=op.attributes[ISLAND_ATTR].data,  # type: ignore[union-attr]
        ranks=op.attributes[RANKS_ATTR].value.data,  # type: ignore[union-attr]
        device=op.attributes[DEVICE_ATTR].data,  # type: ignore[union-attr]
        pattern=pattern.data if isinstance(pattern, StringAttr) else None,
    )


def verify_island(op: Operation) -> None:
    """Checks the ``taskgraph.*`` discardable attributes of one op."""
    tg = [k for k in op.attributes if k.startswith("taskgraph.")]
    if not tg:
        return
    if not isinstance(op, ExecuteOp):
        # per-op annotations of the compiler contract (taskgraph.ranks/device/algorithm/...
        # on dataflow ops, CONVENTIONS #3) are allowed; only the island name is island-only
        if ISLAND_ATTR in op.attributes:
            raise fail(op, f"island attributes ({', '.join(tg)}) are only allowed on 'async.execute'")
        ranks = op.attributes.get(RANKS_ATTR)
        if ranks is not None and _i64_value(op, ranks, RANKS_ATTR) < 1:
            raise fail(op, f"{RANKS_ATTR} must be >= 1")
        device = op.attributes.get(DEVICE_ATTR)
        if device is not None and (not isinstance(device, StringAttr) or device.data not in DEVICES):
            raise fail(op, f"{DEVICE_ATTR} must be \"cpu\" or \"gpu\", got {device}")
        return
    name = op.attributes.get(ISLAND_ATTR)
    if not isinstance(name, StringAttr) or not name.data:
        raise fail(op, f"an island needs a non-empty string attribute '{ISLAND_ATTR}'")
    if RANKS_ATTR not in op.attributes:
        raise fail(op, f"island '{name.data}' needs '{RANKS_ATTR}'")
    if _i64_value(op, op.attributes[RANKS_ATTR], RANKS_ATTR) < 1:
        raise fail(op, f"island '{name.data}': {RANKS_ATTR} must be >= 1")
    device = op.attributes.get(DEVICE_ATTR)
    if not isinstance(device, StringAttr) or device.data not in DEVICES:
        raise fail(op, f"island '{name.data}': {DEVICE_ATTR} must be \"cpu\" or \"gpu\", got {device}")
    pattern = op.attributes.get(PATTERN_ATTR)
    if pattern is not None and (not isinstance(pattern, StringAttr) or not pattern.data):
        raise fail(op, f"island '{name.data}': {PATTERN_ATTR} must be a non-empty string")


def verify_islands(module: Operation) -> None:
    """Checks every island's attributes, unique island names, and one plan at most."""
    check_islands(walk_ops(module))


def needs_island_check(op: Operation) -> bool:
    """Whether ``check_islands`` looks at ``op``: plans and ops with ``taskgraph.*``
    attributes (it skips every other op)."""
    if isinstance(op, PlanOp):
        return True
    for k in op.attributes:
        if k.startswith("taskgraph."):
            return True
    return False


def check_islands(ops: Iterable[Operation]) -> None:
    """``verify_islands`` over ``ops``: every op of a module in ``walk()`` order, or those of
    them for which ``needs_island_check`` holds (same verdict, same first error)."""
    seen: dict[str, Operation] = {}
    plans = 0
    for op in ops:
        if isinstance(op, PlanOp):
            plans += 1
            if plans > 1:
                raise fail(op, "a module holds at most one 'taskgraph.plan'")
        attrs = op.attributes
        if not attrs or not any(k.startswith("taskgraph.") for k in attrs):
            continue  # nothing for verify_island to check, and not an island
        verify_island(op)
        if is_island(op):
            name = op.attributes[ISLAND_ATTR].data  # type: ignore[union-attr]
            if name in seen:
                raise fail(op, f"duplicate island name '{name}' (first at {where(seen[name])})")
            seen[name] = op
