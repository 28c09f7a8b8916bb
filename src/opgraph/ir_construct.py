"""Quick op construction for tracing and passes that build thousands of ops.

``init_op`` is ``Operation.__init__`` (xdsl.ir.core) for ops without successors: the same
fields in the same state - operands with their use-list entries, results, properties,
attributes, location, regions attached, then the class's ``__post_init__`` (IRDL's default
properties) - set directly instead of through the property setters and generators of the
generic constructor, which take about half of its time. ``new_op`` is ``cls.create(...)``
through it. The resulting op is indistinguishable from the generic constructor's.

``replace_all_uses``, ``replace_value_with_new_type`` and ``append_op`` are
``SSAValue.replace_all_uses_with``, ``Rewriter.replace_value_with_new_type`` and
``Block.add_op`` likewise: the same IR, use lists in the same order, the same checks.
``use_fixed_accessors(dialect)`` gives a dialect's ops quicker ``op.input``-style accessors
for their fixed (non-variadic) operands, results and regions; opgraph's df dialect uses
them (xDSL's own dialects are left as they are: patching them would change a library's
classes for every user of the process, for ~1% of a compile).

IR infrastructure, not a dialect: it defines no ops or attributes (so it lives beside the
tracer, its main user, not among the dialects and their IRDL twins).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from xdsl.dialects.builtin import UnknownLoc
from xdsl.ir import Attribute, Block, Dialect, Operation, Region, SSAValue
from xdsl.ir.core import OpResult, SSAValues, Use
from xdsl.irdl.operations import BeforeVariadicSingleAccessor, VarIRConstruct

UNKNOWN_LOC = UnknownLoc()  # what Operation.__init__ uses when no location is given

_EMPTY: Mapping[str, Attribute] = {}

OpT = TypeVar("OpT", bound=Operation)


def init_op(
    op: Operation,
    operands: Sequence[SSAValue] = (),
    result_types: Sequence[Attribute] = (),
    properties: Mapping[str, Attribute] = _EMPTY,
    attributes: Mapping[str, Attribute] = _EMPTY,
    location: Attribute = UNKNOWN_LOC,
    regions: Sequence[Region] = (),
) -> None:
    """``Operation.__init__(op, operands=..., ...)`` without successors (``operands`` are
    SSA values; ``location`` None means unknown, as there)."""
    values = SSAValues(operands)
    if values:
        uses = tuple([Use(op, i) for i in range(len(values))])
        for value, use in zip(values, uses):
            # IRWithUses.add_use
            first = value.first_use
            use._next_use = first
            use._prev_use = None
            if first is not None:
                first._prev_use = use
            value.first_use = use
        op._operands = values
        op._operand_uses = uses
    else:
        op._operands = values
        op._operand_uses = ()
    op.results = SSAValues([OpResult(t, op, i) for i, t in enumerate(result_types)])
    op.properties = dict(properties)
    op.attributes = dict(attributes)
    op.location = UNKNOWN_LOC if location is None else location
    op._successors = ()
    op._successor_uses = ()
    if regions:
        attached = []
        for region in regions:
            # Operation.add_region
            if region.parent:
                raise ValueError("Cannot add region that is already attached on an operation.")
            region.parent = op
            attached.append(region)
        op.regions = tuple(attached)
    else:
        op.regions = ()
    plan = _POST_INIT.get(type(op))
    if plan is None:
        plan = _post_init_plan(type(op))
    if plan is _CALL:
        op.__post_init__()
        return
    # IRDLOperation.__post_init__: the definition's default properties and attributes
    # (Operation.__post_init__'s checks of the class name hold for the class, see below)
    property_defaults, attribute_defaults = plan
    for name, default in property_defaults:
        if name not in op.properties:
            op.properties[name] = default
    for name, default in attribute_defaults:
        if name not in op.attributes:
            op.attributes[name] = default


_CALL = object()  # marks classes whose __post_init__ init_op calls as it is
# op class -> _CALL, or its default (properties, attributes) as IRDLOperation.__post_init__
# would fill them in: defaults of non-optional definitions, in definition order
_POST_INIT: dict[type, object] = {}


def _post_init_plan(cls: type) -> object:
    from xdsl.irdl.operations import IRDLOperation, OptionalDef

    plan: object = _CALL
    mro = cls.__mro__
    after = mro[mro.index(IRDLOperation) + 1 :] if IRDLOperation in mro else ()
    # the __post_init__ IRDLOperation's super() call reaches: Operation's (name checks only)
    reached = next((c for c in after if "__post_init__" in c.__dict__), None)
    if (
        reached is Operation
        and cls.__post_init__ is IRDLOperation.__post_init__
        and isinstance(cls.name, str)
        and cls.name != ""
    ):
        op_def = cls.get_irdl_definition()
        plan = (
            tuple(
                (name, d.default_value)
                for name, d in op_def.properties.items()
                if not isinstance(d, OptionalDef) and d.default_value is not None
            ),
            tuple(
                (name, d.default_value)
                for name, d in op_def.attributes.items()
                if not isinstance(d, OptionalDef) and d.default_value is not None
            ),
        )
    _POST_INIT[cls] = plan
    return plan


def new_op(
    cls: type[OpT],
    operands: Sequence[SSAValue] = (),
    result_types: Sequence[Attribute] = (),
    properties: Mapping[str, Attribute] = _EMPTY,
    attributes: Mapping[str, Attribute] = _EMPTY,
    location: Attribute = UNKNOWN_LOC,
    regions: Sequence[Region] = (),
) -> OpT:
    """``cls.create(operands=..., ...)`` (no successors) through ``init_op``."""
    op = cls.__new__(cls)
    init_op(op, operands, result_types, properties, attributes, location, regions)
    return op


def replace_all_uses(old: SSAValue, new: SSAValue) -> None:
    """``old.replace_all_uses_with(new)`` (xdsl.ir.core): every use of ``old`` becomes a use
    of ``new``, in the same order and with the same use objects, and ``new`` takes ``old``'s
    name hint when it has none - relinked directly instead of through the operand-list
    view, which rebuilds each user's operand tuple with two slices."""
    if new is old:
        return
    uses = []
    use = old.first_use
    while use is not None:
        uses.append(use)
        use = use._next_use
    for use in uses:
        # IRWithUses.remove_use on old, then add_use on new
        prev_use, next_use = use._prev_use, use._next_use
        if prev_use is not None:
            prev_use._next_use = next_use
        if next_use is not None:
            next_use._prev_use = prev_use
        if prev_use is None:
            old.first_use = next_use
        first = new.first_use
        use._next_use = first
        use._prev_use = None
        if first is not None:
            first._prev_use = use
        new.first_use = use
        op = use._operation
        operands = list(op._operands)
        operands[use._index] = new
        op._operands = SSAValues(operands)
    if new.name_hint is None:
        new.name_hint = old.name_hint
    assert old.first_use is None, "unexpected error in xdsl"


def replace_value_with_new_type(val: SSAValue, new_type: Attribute) -> SSAValue:
    """``Rewriter.replace_value_with_new_type(val, new_type)`` (xdsl.rewriter): the op
    result ``val`` is replaced by a new result of type ``new_type`` (same op and index, same
    name hint) that takes over all its uses; returns the new value."""
    if type(val) is not OpResult:
        from xdsl.rewriter import Rewriter

        return Rewriter.replace_value_with_new_type(val, new_type)
    operation = val.op
    index = val.index
    new_value = OpResult(new_type, operation, index)
    results = list(operation.results)
    results[index] = new_value
    operation.results = SSAValues(results)
    new_value.name_hint = val.name_hint
    replace_all_uses(val, new_value)
    return new_value


def append_op(block: Block, op: Operation) -> None:
    """``block.add_op(op)`` (xdsl.ir.core.Block): the same checks and links, set directly
    (an op without regions cannot contain the block, so only ops with regions are walked
    for that check)."""
    if op.parent:
        raise ValueError("Can't add to a block an operation already attached to a block.")
    if op.regions and op.is_ancestor(block):
        raise ValueError("Can't add an operation to a block contained in the operation.")
    op.parent = block
    last = block._last_op
    if last is None:
        block._first_op = op
    else:
        # insert_op_after(op, last): last has no next op
        op._prev_op = last
        op._next_op = None
        last._next_op = op
    block._last_op = op


class _OperandAccessor(BeforeVariadicSingleAccessor):
    """IRDL's accessor of a single operand that comes before any variadic group
    (``op.input``): the same value, read straight from the op's operand tuple instead of
    through the generic construct lookup and the operand-list view. Such accessors are read
    for nearly every op by every pass (see ``use_fixed_accessors``)."""

    def __get__(self, obj: Operation | None, objtype: type | None = None) -> object:
        return self if obj is None else _tuple_item(obj._operands, self.idx)


class _ResultAccessor(BeforeVariadicSingleAccessor):
    """The same for a single result (``op.result``)."""

    def __get__(self, obj: Operation | None, objtype: type | None = None) -> object:
        return self if obj is None else _tuple_item(obj.results, self.idx)


class _RegionAccessor(BeforeVariadicSingleAccessor):
    """The same for a single region (``op.expr``)."""

    def __get__(self, obj: Operation | None, objtype: type | None = None) -> object:
        return self if obj is None else obj.regions[self.idx]


_tuple_item = tuple.__getitem__  # (SSAValues overrides __getitem__ to also take slices)
_FIXED_ACCESSORS = {
    VarIRConstruct.OPERAND: _OperandAccessor,
    VarIRConstruct.RESULT: _ResultAccessor,
    VarIRConstruct.REGION: _RegionAccessor,
}


def use_fixed_accessors(dialect: Dialect) -> None:
    """Replaces the ``BeforeVariadicSingleAccessor``s of the dialect's op classes by the
    quicker accessors above (same construct, same index, same values)."""
    for cls in dialect.operations:
        for name, accessor in list(vars(cls).items()):
            if type(accessor) is BeforeVariadicSingleAccessor and accessor.construct in _FIXED_ACCESSORS:
                setattr(cls, name, _FIXED_ACCESSORS[accessor.construct](accessor.construct, accessor.idx))
