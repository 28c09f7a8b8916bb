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
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation
from xdsl.passes import ModulePass
from xdsl.traits import NoTerminator
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


class _OpInfo:
    __slots__ = (
        "attr_names",
        "context_traits",
        "custom",
        "is_terminator",
        "no_terminator",
        "op_def",
        "signature_traits",
    )

    def __init__(self, op: Operation):
        from xdsl.traits import IsolatedFromAbove, IsTerminator

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

        traits = self.op_def.traits if self.op_def is not None else ()
        # IsolatedFromAbove is checked by the scoping of fast_verify's walk
        self.signature_traits = tuple(t for t in traits if not isinstance(t, IsolatedFromAbove))
        self.context_traits = tuple(
            t
            for t in traits
            if type(t).verify is not OpTrait.verify
            and not isinstance(t, IsolatedFromAbove)
            and type(t).__name__ not in _SIGNATURE_ONLY_TRAITS
        )
        self.is_terminator = op.has_trait(IsTerminator)
        self.no_terminator = op.has_trait(NoTerminator)


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


class _FastVerifier:
    def __init__(self) -> None:
        self.infos: dict[type, _OpInfo] = {}
        self.signatures: set[tuple] = set()

    def region(self, region, visible: set) -> None:
        parent = region.parent
        for block in region.blocks:
            added = list(block.args)
            visible.update(added)
            for op in block.ops:
                if op.parent is not block:
                    raise VerifyException("parent pointer of an op does not refer to its block")
                self.op(op, visible)
                visible.update(op.results)
                added.extend(op.results)
            if parent is not None and len(region.blocks) == 1:
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
        info = self.infos[type(op)] = _OpInfo(op)
        return info

    def op(self, op: Operation, visible: set) -> None:
        for v in op.operands:
            if v not in visible:
                raise VerifyException("operand not defined in scope")
        if op.successors:
            raise VerifyException("successors: left to xDSL")
        info = self.infos.get(type(op)) or self._info(op)
        if op.regions:
            from xdsl.traits import IsolatedFromAbove

            scope = set() if op.has_trait(IsolatedFromAbove) else visible
            for region in op.regions:
                self.region(region, scope)
        if info.op_def is None:
            op.verify_()
            return
        signature = (
            type(op),
            tuple([v.type for v in op._operands]),
            tuple([r.type for r in op.results]),
            tuple([item for item in op.attributes.items() if item[0] in info.attr_names]),
            tuple(op.properties.items()),
            tuple([tuple([a.type for b in r.blocks for a in b.args]) for r in op.regions]),
            tuple([len(r.blocks) for r in op.regions]),
        )
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
    try:
        _FastVerifier().op(module, set())
    except Exception:  # noqa: BLE001  (any failure: xDSL's verifier decides and reports)
        return False
    return True


def find_verification_error(module: Operation, fast: bool = False) -> tuple[Operation, str] | None:
    """``(op, one-line message)`` for the first op that does not verify, else None.

    ``fast`` checks with ``fast_verify`` first (xDSL's verifier then only runs when that
    finds a problem); the compile driver's default pipeline uses it."""
    if fast and fast_verify(module):
        found = None
    else:
        try:
            module.verify()  # one recursive verification
            found = None
        except (VerifyException, DiagnosticException, ValueError):
            found = _first_error(module)  # slow path: locate the innermost failing op
    if found is not None:
        return found
    from opgraph.dialects.taskgraph import verify_islands

    try:
        verify_islands(module)
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
