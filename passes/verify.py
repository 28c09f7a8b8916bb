"""The ``verify`` pass: checks the module and reports the first failing op with its location.

xDSL's ``Operation.verify()`` raises an exception whose notes hold the whole module; here
each op is verified on its own (nested ops first, like MLIR) so the error is one line naming
the op and the user's source location, and becomes an ``IRError`` with ``file``/``line``.
Island attributes (``taskgraph.*`` on ``async.execute``) are checked too. With
``verify{upstream=true}`` the printed module is also verified by upstream MLIR (in a
subprocess, via ``opgraph.dialects.upstream_verify``).

``fast_verify`` / ``find_verification_error(fast=True)`` give xDSL's verdict in a fraction
of the time on large pipelines (see the section below); the compile driver verifies its
default pipeline's output with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from opgraph.dialects.diagnostics import describe, file_line_col, op_location  # noqa: F401  (re-exported)
from opgraph.dialects.taskgraph import PlanOp, check_islands, needs_island_check
from opgraph.dialects.walk import region_blocks
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, StringAttr, SymbolRefAttr
from xdsl.dialects.func import CallOpSymbolUserOpInterface, FuncOp
from xdsl.ir import Operation
from xdsl.passes import ModulePass
from xdsl.traits import IsolatedFromAbove, NoTerminator, SymbolOpInterface, SymbolTable
from xdsl.utils.exceptions import DiagnosticException, VerifyException

from opgraph.errors import IRError


def _message(op: Operation, err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if text.startswith(f"'{op.name}' at "):
        return text  # already located (opgraph verifiers use this form)
    if text.startswith(f"'{op.name}' "):
        text = text[len(op.name) + 3 :]
    elif text.startswith("Operation does not verify: "):
        text = text[len("Operation does not verify: ") :]
    return f"{describe(op)}: {text}"


def _first_error(op: Operation) -> tuple[Operation, str] | None:
    for region in op.regions:
        for block in region.blocks:
            for child in block.ops:
                found = _first_error(child)
                if found is not None:
                    return found
            if not block.ops and len(region.blocks) == 1 and not op.has_trait(NoTerminator):
                return op, f"{describe(op)}: empty block in a region that expects a terminator"
    try:
        op.verify(verify_nested_ops=False)
    except (VerifyException, DiagnosticException, ValueError) as e:
        return op, _message(op, e)
    return None


# ------------------------------------------------------------------ fast verification
#
# xDSL's verifier checks every op against its IRDL definition (operand/result/attribute
# constraints, regions, traits) and then runs the op's own verifier. The IRDL part depends
# only on the op's signature - class, operand and result types, attributes, properties,
# region shapes and block argument types - and a traced pipeline has few distinct
# signatures (thousands of ``arith.mulf : f64`` ops), so ``fast_verify`` checks each
# signature once and per op runs only what depends on the op's place in the IR: its own
# verifier (the df ops' schema inference), traits that look at the surroundings
# (``HasParent``, ...), terminators, and that operands are defined in scope (which covers
# ``IsolatedFromAbove``). Anything it rejects is re-checked by xDSL's verifier, which has
# the final word and the error message.
#
# Signatures are abstract where the op definition allows it (``_abstract_keys``): a value
# whose constraint is AnyAttr or BaseAttr only counts through its class, so the kernels of
# lower-to-kernels (a func.func and a func.call with their own name and table types each)
# and the df ops share a handful of signatures. func.call's callee check looks the symbol
# up in a table built once (xDSL scans the module per call: quadratic in kernels).


class _OpInfo:
    __slots__ = (
        "abstract",
        "attr_names",
        "context_traits",
        "custom",
        "is_plan",
        "is_terminator",
        "isolated",
        "no_terminator",
        "op_def",
        "signature_traits",
    )

    def __init__(self, op: Operation, verifier: _FastVerifier):
        from xdsl.traits import IsTerminator

        cls = type(op)
        self.op_def = None
        self.custom = None
        if hasattr(cls, "get_irdl_definition"):  # defined with IRDL
            # irdl_op_definition's verify_ = "op_def.verify(op); custom_verify(op)"
            verify_ = cls.verify_
            code = getattr(verify_, "__code__", None)
            if code is not None and "op_def" in code.co_freevars:
                cells = dict(zip(code.co_freevars, verify_.__closure__ or ()))
                self.op_def = cls.get_irdl_definition()
                if "custom_verify" in cells:
                    self.custom = cells["custom_verify"].cell_contents
        from xdsl.traits import OpTrait

        # the attributes IRDL checks (others are discardable: no constraint reads them)
        self.attr_names = frozenset(
            (*(self.op_def.attributes if self.op_def is not None else ()), *_SEGMENT_SIZES)
        )

        traits = tuple(verifier.fast_trait(t) for t in (self.op_def.traits if self.op_def is not None else ()))
        # IsolatedFromAbove is checked by the scoping of fast_verify's walk
        self.signature_traits = tuple(t for t in traits if not isinstance(t, IsolatedFromAbove))
        self.context_traits = tuple(
            t
            for t in traits
            if type(t).verify is not OpTrait.verify
            and not isinstance(t, IsolatedFromAbove)
            and type(t).__name__ not in _SIGNATURE_ONLY_TRAITS
        )
        self.is_plan = isinstance(op, PlanOp)
        self.is_terminator = op.has_trait(IsTerminator)
        self.isolated = op.has_trait(IsolatedFromAbove)
        self.no_terminator = op.has_trait(NoTerminator)
        self.abstract = _abstract_keys(self.op_def, self.signature_traits, self.context_traits)

    def signature(self, op: Operation) -> tuple:
        """What the IRDL checks of ``op`` depend on (see ``_abstract_keys``)."""
        abstract = self.abstract
        names = self.attr_names
        # (empty parts are spelled (), as the comprehensions would give them, only quicker)
        attributes, properties, regions = op.attributes, op.properties, op.regions
        if abstract is None:
            return (
                type(op),
                tuple([v._type for v in op._operands]),  # ._type: .type without the property
                tuple([r._type for r in op.results]),
                tuple([item for item in attributes.items() if item[0] in names]) if attributes else (),
                tuple(properties.items()) if properties else (),
                tuple([tuple([a.type for b in r.blocks for a in b.args]) for r in regions]) if regions else (),
                tuple([len(region_blocks(r)) for r in regions]) if regions else (),
            )
        operand_key, result_key, attr_keys, prop_keys, arg_key = abstract
        return (
            type(op),
            tuple([operand_key(v._type) for v in op._operands]),
            tuple([result_key(r._type) for r in op.results]),
            tuple([(k, attr_keys.get(k, _same)(v)) for k, v in attributes.items() if k in names]) if attributes else (),
            tuple([(k, prop_keys.get(k, _same)(v)) for k, v in properties.items()]) if properties else (),
            tuple([tuple([tuple([arg_key(a.type) for a in b.args]) for b in r.blocks]) for r in regions]) if regions else (),
        )


# ---- abstract signatures: an op's IRDL verdict depends on each constrained value only
# through what its constraint reads - nothing for AnyAttr, the class for BaseAttr (and
# SymbolNameConstraint), the class and parameters' keys for ParamAttrConstraint - so kernels
# (func.func / func.call, each with its own name and table types) and df ops (each with its
# own table type) share a few signatures. Only for op definitions without constraint
# variables (which tie values together) and whose per-signature traits check nothing.


def _same(a):
    return a


def _nothing(a):
    return None


def _attr_key(constr):
    """A function mapping an attribute to what ``constr.verify`` depends on (``_same``
    when unknown: the attribute itself)."""
    from xdsl.dialects.builtin import ArrayOfConstraint, SymbolNameConstraint
    from xdsl.irdl.constraints import (
        AnyAttr,
        BaseAttr,
        MessageConstraint,
        ParamAttrConstraint,
        RangeOf,
    )

    kind = type(constr)
    if kind is AnyAttr:
        return _nothing
    if kind is BaseAttr or kind is SymbolNameConstraint:
        return type
    if kind is MessageConstraint:
        return _attr_key(constr.constr)
    if kind is ParamAttrConstraint:
        keys = tuple(_attr_key(c) for c in constr.param_constrs)
        n = len(keys)

        def param_key(a, keys=keys, n=n):
            params = a.parameters
            if len(params) != n:
                return (type(a), params)
            return (type(a), tuple([f(p) for f, p in zip(keys, params)]))

        return param_key
    if kind is ArrayOfConstraint and type(constr.elem_range_constraint) is RangeOf:
        elem = _attr_key(constr.elem_range_constraint.constr)
        return lambda a, elem=elem: (type(a), tuple([elem(e) for e in a.data]))
    return _same


def _range_key(range_constr):
    """Per-element key of an operand/result/block-argument range constraint."""
    from xdsl.irdl.constraints import RangeLengthConstraint, RangeOf

    if type(range_constr) is RangeLengthConstraint:
        range_constr = range_constr.constraint
    if type(range_constr) is RangeOf:
        return _attr_key(range_constr.constr)
    return _same


def _uniform(keys: list):
    """One element key for several definitions (whose extents depend on segment sizes)."""
    kinds = set(keys)
    if not kinds or kinds == {_nothing}:
        return _nothing
    if kinds <= {_nothing, type}:
        return type
    return _same


def _abstract_keys(op_def, signature_traits, context_traits):
    from xdsl.traits import OpTrait

    if op_def is None:
        return None
    try:
        constraints = [
            *(d.constr for _, d in op_def.operands),
            *(d.constr for _, d in op_def.results),
            *(d.constr for d in op_def.attributes.values()),
            *(d.constr for d in op_def.properties.values()),
            *(d.entry_args for _, d in op_def.regions),
        ]
        if any(c.variables() for c in constraints):
            return None
    except Exception:  # noqa: BLE001  (an unusual definition: full signatures)
        return None
    for trait in signature_traits:
        if trait not in context_traits and type(trait).verify is not OpTrait.verify:
            return None  # a per-signature trait check may read the types
    return (
        _uniform([_range_key(d.constr) for _, d in op_def.operands]),
        _uniform([_range_key(d.constr) for _, d in op_def.results]),
        {k: _attr_key(d.constr) for k, d in op_def.attributes.items()},
        {k: _attr_key(d.constr) for k, d in op_def.properties.items()},
        _uniform([_range_key(d.entry_args) for _, d in op_def.regions]),
    )


_SEGMENT_SIZES = ("operandSegmentSizes", "resultSegmentSizes")

# traits whose verifier reads only what the signature holds (operand/result types, attributes)
_SIGNATURE_ONLY_TRAITS = frozenset(
    {
        "SameOperandsAndResultType",
        "SameOperandsElementType",
        "SameOperandsAndResultElementType",
        "SameOperandTypes",
        "Pure",
        "NoMemoryEffect",
        "ConstantLike",
        "Commutative",
        "HasFolder",
        "HasCanonicalizationPatternsTrait",
        "MemoryReadEffect",
        "MemoryWriteEffect",
        "MemoryAllocEffect",
        "RecursiveMemoryEffect",
    }
)


class _FastCallee:
    """``func.call``'s symbol-user check (xdsl.dialects.func.CallOpSymbolUserOpInterface)
    with the callee found in a symbol table built once per symbol-table op: xDSL's
    ``SymbolTable.lookup_symbol`` scans the module's ops for every call (quadratic in the
    number of kernels that lower-to-kernels outlines)."""

    __slots__ = ("verifier",)

    def __init__(self, verifier: _FastVerifier) -> None:
        self.verifier = verifier

    def verify(self, op: Operation) -> None:
        callee = self.verifier.lookup_symbol(op, op.callee)  # type: ignore[attr-defined]
        if callee is None or not isinstance(callee, FuncOp):
            raise VerifyException("callee not found: left to xDSL")
        fn_type = callee.function_type
        if tuple(fn_type.inputs.data) != tuple(a.type for a in op.arguments):  # type: ignore[attr-defined]
            raise VerifyException("callee operand types: left to xDSL")
        if tuple(fn_type.outputs.data) != tuple(op.result_types):
            raise VerifyException("callee result types: left to xDSL")


class _FastVerifier:
    """Scopes are sets of ``id()`` of the values defined so far (SSA values hash by identity
    through a Python-level ``__hash__``; the module is alive throughout, so ids are unique).
    ``island_ops`` collects, in ``walk()`` order, the ops ``check_islands`` looks at."""

    def __init__(self) -> None:
        self.infos: dict[type, _OpInfo] = {}
        self.signatures: set[tuple] = set()
        self.symbol_tables: dict[int, tuple[Operation, dict]] = {}
        self.anchors: dict[int, tuple] = {}  # id(block) -> (block, its symbol-table op)
        self.island_ops: list[Operation] = []

    def fast_trait(self, trait):
        """``trait``, or a quicker equivalent check of it."""
        if type(trait) is CallOpSymbolUserOpInterface:
            return _FastCallee(self)
        return trait

    def lookup_symbol(self, op: Operation, name) -> Operation | None:
        """``SymbolTable.lookup_symbol(op, name)`` (xdsl.traits) with one name -> op table per
        symbol-table op (the first op defining each name, like xDSL's scan)."""
        block = op.parent
        cached_anchor = self.anchors.get(id(block)) if not op.regions else None  # op itself no table
        if cached_anchor is not None and cached_anchor[0] is block:
            anchor: Operation | None = cached_anchor[1]
        else:
            anchor = op
            while anchor is not None and not anchor.has_trait(SymbolTable):
                anchor = anchor.parent_op()
            if not op.regions:
                self.anchors[id(block)] = (block, anchor)
        if anchor is None:
            raise VerifyException("no symbol table: left to xDSL")
        if isinstance(name, str | StringAttr):
            name = SymbolRefAttr(name)
        cached = self.symbol_tables.get(id(anchor))
        if cached is None or cached[0] is not anchor:
            table: dict = {}
            for o in anchor.regions[0].block.ops:
                interface = o.get_trait(SymbolOpInterface)
                if interface is not None:
                    table.setdefault(interface.get_sym_attr_name(o), o)
            cached = self.symbol_tables[id(anchor)] = (anchor, table)
        found = cached[1].get(name.root_reference)
        if found is None or not name.nested_references:
            return found
        nested_root, *nested = name.nested_references.data
        return self.lookup_symbol(found, SymbolRefAttr(nested_root, nested))

    def region(self, region, visible: set[int]) -> None:
        parent = region.parent
        blocks = region_blocks(region)
        for block in blocks:
            added = [id(a) for a in block.args]
            visible.update(added)
            op = block.first_op  # the block's ops through their links (no iterator object)
            while op is not None:
                if op.parent is not block:
                    raise VerifyException("parent pointer of an op does not refer to its block")
                self.op(op, visible)
                results = op.results
                if results:
                    ids = [id(r) for r in results]
                    visible.update(ids)
                    added.extend(ids)
                op = op._next_op
            if parent is not None and len(blocks) == 1:
                info = self.infos.get(type(parent)) or self._info(parent)
                if not info.no_terminator:
                    last = block.last_op
                    if last is None:
                        raise VerifyException("empty block in a region that expects a terminator")
                    last_info = self.infos.get(type(last)) or self._info(last)
                    if not last_info.is_terminator:
                        raise VerifyException("block does not end with a terminator")
            visible.difference_update(added)

    def _info(self, op: Operation) -> _OpInfo:
        info = self.infos[type(op)] = _OpInfo(op, self)
        return info

    def op(self, op: Operation, visible: set[int]) -> None:
        operands = op._operands
        if operands and not visible.issuperset(map(id, operands)):
            raise VerifyException("operand not defined in scope")
        if op._successors:
            raise VerifyException("successors: left to xDSL")
        info = self.infos.get(type(op)) or self._info(op)
        if (op.attributes or info.is_plan) and needs_island_check(op):
            self.island_ops.append(op)
        if op.regions:
            scope = set() if info.isolated else visible
            for region in op.regions:
                self.region(region, scope)
        if info.op_def is None:
            op.verify_()
            return
        signature = info.signature(op)
        if signature not in self.signatures:
            _verify_signature(op, info)
            self.signatures.add(signature)
            if info.custom is not None:
                info.custom(op)
            return
        for trait in info.context_traits:
            trait.verify(op)
        if info.custom is not None:
            info.custom(op)


def _verify_signature(op: Operation, info: _OpInfo) -> None:
    """``OpDef.verify`` (xdsl.irdl.operations) without the IsolatedFromAbove trait."""
    from xdsl.irdl.operations import (
        OptAttributeDef,
        OptPropertyDef,
        VarIRConstruct,
        VerificationContext,
        irdl_op_verify_arg_list,
        irdl_op_verify_regions,
        verify_variadic_size,
    )

    op_def = info.op_def
    assert op_def is not None
    context = VerificationContext()
    irdl_op_verify_arg_list(op, op_def, VarIRConstruct.OPERAND, context)
    irdl_op_verify_arg_list(op, op_def, VarIRConstruct.RESULT, context)
    irdl_op_verify_regions(op, op_def, context)
    verify_variadic_size(op, op_def, VarIRConstruct.SUCCESSOR)
    for name in op.properties:
        if name not in op_def.properties:
            raise VerifyException(f"property '{name}' is not defined by the operation '{op.name}'")
    for kind, defs, values, optional in (
        ("property", op_def.properties, op.properties, OptPropertyDef),
        ("attribute", op_def.attributes, op.attributes, OptAttributeDef),
    ):
        for name, definition in defs.items():
            if name in values:
                definition.constr.verify(values[name], context)
            elif not isinstance(definition, optional):
                raise VerifyException(f"{kind} '{name}' expected in operation '{op.name}'")
    for trait in info.signature_traits:
        trait.verify(op)


def fast_verify(module: Operation) -> bool:
    """True if ``module`` verifies (xDSL's checks, each op signature checked once); False
    when it may not (then ask xDSL's verifier)."""
    return _fast_verify(module) is not None


def _fast_verify(module: Operation) -> _FastVerifier | None:
    """The verifier after a successful ``fast_verify`` (its ``island_ops``), else None."""
    verifier = _FastVerifier()
    try:
        verifier.op(module, set())
    except Exception:  # noqa: BLE001  (any failure: xDSL's verifier decides and reports)
        return None
    return verifier


def find_verification_error(module: Operation, fast: bool = False) -> tuple[Operation, str] | None:
    """``(op, one-line message)`` for the first op that does not verify, else None.

    ``fast`` checks with ``fast_verify`` first (xDSL's verifier then only runs when that
    finds a problem); the compile driver's default pipeline uses it."""
    verifier = _fast_verify(module) if fast else None
    if verifier is not None:
        found = None
    else:
        try:
            module.verify()  # one recursive verification
            found = None
        except (VerifyException, DiagnosticException, ValueError):
            found = _first_error(module)  # slow path: locate the innermost failing op
    if found is not None:
        return found
    try:
        # the fast verifier's walk collected the ops the island check looks at
        check_islands(verifier.island_ops if verifier is not None else module.walk())
    except VerifyException as e:
        text = str(e).strip().splitlines()[0]
        return getattr(e, "op", module), text
    return None


def verify_module(module: Operation, upstream: bool = False) -> None:
    """Raises ``IRError`` (with file/line of the failing op) if the module does not verify."""
    found = find_verification_error(module)
    if found is not None:
        op, message = found
        loc = op_location(op)
        raise IRError(message, file=loc[0] if loc else None, line=loc[1] if loc else None)
    if upstream:
        verify_upstream(module)


def verify_upstream(module: Operation) -> None:
    """Prints the module and verifies it with upstream MLIR; raises IRError on failure."""
    from opgraph.dialects.context import print_module
    from opgraph.dialects.upstream_verify import verify_text

    error = verify_text(print_module(module))
    if error:
        lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
        first = next((ln for ln in lines if "error:" in ln), lines[0] if lines else "")
        raise IRError(f"upstream MLIR rejects the IR: {first}")


@dataclass(frozen=True)
class VerifyPass(ModulePass):
    """Verifies the module (xDSL verifiers + island attributes; upstream MLIR if asked)."""

    name = "verify"

    upstream: bool = False

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        verify_module(op, upstream=self.upstream)
