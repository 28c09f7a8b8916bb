"""Pass pipelines: mlir-opt textual syntax, the default pipeline, and running them.

Accepted syntax (as ``mlir-opt --pass-pipeline`` / ``-p``)::

    canonicalize,cse
    builtin.module(canonicalize,cse,lower-to-islands{ranks=2})
    builtin.module(func.func(cse),dce)        # anchors are flattened: every opgraph pass
                                              # works on the whole module
    verify{upstream=true}                     # options: {key=value key2=value}

Options are the pass dataclass fields (``-`` and ``_`` are interchangeable in names).
Unknown passes, unknown options and ill-typed values raise ``PassError``.

``run_pipeline`` verifies the input, then runs each pass, verifies the module after it
(``PassError`` naming the pass and the failing op's location), and calls
``after_each(index, pass_name, module)`` with index 1, 2, ... (0 is the traced IR, which the
caller prints) - this is what ``--print-ir-after-all`` uses to write ``ir/NN-<pass>.mlir``.
The compile driver's default pipeline is verified once, on output, with the fast verifier
(``passes/verify.py``); xDSL's canonicalize/cse/dce run through ``apply_pass`` (same IR,
less bookkeeping). Both keep ``benchmarks/compile_scaling.py`` within its budget.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence

from opgraph.dialects.walk import only_block, several_blocks, walk_ops
from opgraph.passes.registry import get_pass, pass_options
from opgraph.passes.verify import find_verification_error, op_location
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation
from xdsl.passes import ModulePass
from xdsl.utils.arg_spec import ArgSpec, parse_spec
from xdsl.utils.exceptions import ArgSpecParseError, DiagnosticException

from opgraph.errors import IRError, OpgraphError, PassError

AfterEach = Callable[[int, str, ModuleOp], None]

# run_pipeline verifies its input and output itself, so no explicit verify passes here
DEFAULT_PIPELINE = (
    "builtin.module(fold-constants,predicate-pushdown,projection-pushdown,fuse-expressions,"
    "fold-constants,canonicalize,cse,dce,expand-sweeps,annotate-statistics,classify-patterns,"
    "choose-parallelism,insert-communication,form-islands,schedule-islands,lower-to-kernels)"
)

ANCHORS = ("builtin.module", "func.func", "any")
"""Op anchors accepted (and flattened) in pipeline text."""


# ----------------------------------------------------------------------------- parsing


def _bad(text: str, message: str) -> PassError:
    return PassError(f"bad pass pipeline '{text}': {message}")


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _ident_end(text: str, i: int) -> int:
    j = i
    while j < len(text) and (text[j].isalnum() or text[j] in "_-."):
        j += 1
    return j


def _brace_end(text: str, i: int) -> int:
    """Index just after the ``}`` matching the ``{`` at ``i`` (quotes respected)."""
    depth = 0
    j = i
    while j < len(text):
        c = text[j]
        if c == '"':
            j += 1
            while j < len(text) and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    raise _bad(text, "unclosed '{' in pass options")


def _parse_list(text: str, i: int, nested: bool, out: list[str]) -> int:
    """Parses ``element (, element)*`` from ``i``; returns the index after it (after ``)``
    when nested). Pass elements are appended to ``out`` as ``name{options}`` strings."""
    while True:
        i = _skip_ws(text, i)
        if i >= len(text):
            if nested:
                raise _bad(text, "missing ')'")
            if out or text.strip():
                raise _bad(text, "expected a pass name after ','")
            return i
        if nested and text[i] == ")" and not out:
            return i + 1  # empty anchor: builtin.module()
        j = _ident_end(text, i)
        if j == i:
            raise _bad(text, f"expected a pass name at column {i + 1}, found '{text[i]}'")
        name = text[i:j]
        k = _skip_ws(text, j)
        if k < len(text) and text[k] == "(":
            if name not in ANCHORS:
                raise _bad(
                    text,
                    f"unknown op anchor '{name}' (opgraph passes run on the whole module; "
                    f"anchors accepted: {', '.join(ANCHORS)})",
                )
            sub: list[str] = []
            i = _parse_list(text, k + 1, True, sub)
            out.extend(sub)
        elif k < len(text) and text[k] == "{":
            end = _brace_end(text, k)
            out.append(name + text[k:end])
            i = end
        else:
            out.append(name)
            i = j
        i = _skip_ws(text, i)
        if i >= len(text):
            if nested:
                raise _bad(text, "missing ')'")
            return i
        if text[i] == ",":
            i += 1
            if _skip_ws(text, i) >= len(text) or text[_skip_ws(text, i)] in ",)":
                raise _bad(text, "expected a pass name after ','")
            continue
        if text[i] == ")":
            if nested:
                return i + 1
            raise _bad(text, f"unbalanced ')' at column {i + 1}")
        raise _bad(text, f"expected ',' at column {i + 1}, found '{text[i]}'")


def parse_pipeline_specs(text: str) -> list[ArgSpec]:
    """Pipeline text -> one ``ArgSpec`` (name + raw option values) per pass."""
    elements: list[str] = []
    _parse_list(text, 0, False, elements)
    specs: list[ArgSpec] = []
    for element in elements:
        try:
            specs.append(parse_spec(element))
        except ArgSpecParseError as e:
            # xDSL's message: header, position, source line, caret line, then the reason
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            reason = lines[-1] if lines else "syntax error"
            raise _bad(text, f"cannot parse '{element}': {reason[0].lower() + reason[1:]}") from None
    return specs


def _base_types(t: typing.Any) -> tuple[list[typing.Any], bool]:
    """(non-None alternatives of a field type, whether None is allowed)."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = list(typing.get_args(t))
        return [a for a in args if a is not type(None)], type(None) in args
    return [t], False


def _value_ok(value: typing.Any, t: typing.Any) -> bool:
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if t is str:
        return isinstance(value, str)
    return True  # tuples and others: left to xDSL's own check


def instantiate(spec: ArgSpec) -> ModulePass:
    """An ``ArgSpec`` -> a configured pass; ``PassError`` for unknown names/options/values."""
    cls = get_pass(spec.name)
    options = {o.field: o for o in pass_options(cls)}
    hints = typing.get_type_hints(cls)
    for key, values in spec.parameters.items():
        field = key.replace("-", "_")
        if field not in options:
            known = ", ".join(o.name for o in options.values())
            raise PassError(
                f"unknown option '{key}' for pass '{spec.name}' "
                + (f"(options: {known})" if known else "(it takes no options)")
            )
        alternatives, nullable = _base_types(hints.get(field))
        simple = [a for a in alternatives if a in (bool, int, float, str)]
        if simple and len(values) == 1 and not any(_value_ok(values[0], a) for a in simple):
            raise PassError(
                f"option '{key}' of pass '{spec.name}' expects "
                f"{' | '.join(a.__name__ for a in simple)}, got {values[0]!r}"
            )
        if simple and len(values) == 0 and not nullable and bool not in simple:
            raise PassError(f"option '{key}' of pass '{spec.name}' needs a value")
        if simple and len(values) > 1:
            raise PassError(f"option '{key}' of pass '{spec.name}' takes one value, got {len(values)}")
    # `flag` alone means true for bool options (mlir-opt style)
    params = {
        k: ((True,) if not v and bool in _base_types(hints.get(k.replace("-", "_")))[0] else v)
        for k, v in spec.parameters.items()
    }
    try:
        return cls.from_spec(ArgSpec(spec.name, params))
    except (ValueError, TypeError) as e:
        raise PassError(f"bad option for pass '{spec.name}': {e}") from None


def parse_pipeline(text: str) -> list[ModulePass]:
    """mlir-opt style pipeline text -> configured passes."""
    return [instantiate(s) for s in parse_pipeline_specs(text)]


def pipeline_text(passes: Sequence[ModulePass]) -> str:
    """Configured passes -> ``builtin.module(a,b{opt=1})`` (parses back to the same passes)."""
    parts = []
    for p in passes:
        spec = p.spec()
        opts = " ".join(
            ArgSpec._spec_parameter_list_type_str(k.replace("_", "-"), v)
            for k, v in spec.parameters.items()
        )
        parts.append(spec.name + (f"{{{opts}}}" if opts else ""))
    return f"builtin.module({','.join(parts)})"


# DEFAULT_PIPELINE parsed once (parsing and instantiating its 16 passes took about 8 ms per
# compile): the passes are frozen dataclasses, so the instances can be shared; reused only
# while the registry still maps every name to the same class (tests replace passes).
_default_passes: tuple[ModulePass, ...] | None = None


def _parsed_default_pipeline() -> list[ModulePass]:
    global _default_passes
    from opgraph.passes import registry

    cached = _default_passes
    if cached is not None:
        registry._discover()
        classes = registry._registry
        if all(classes.get(p.name) is type(p) for p in cached):
            return list(cached)
    passes = parse_pipeline(DEFAULT_PIPELINE)
    if all(dataclasses.is_dataclass(p) and type(p).__dataclass_params__.frozen for p in passes):  # type: ignore[attr-defined]
        _default_passes = tuple(passes)
    return passes


def default_pipeline(ranks: int = 1) -> list[ModulePass]:
    """The passes of ``DEFAULT_PIPELINE``; ``ranks`` is the island grouping's rank count for
    ops that choose-parallelism left unannotated."""
    passes = _parsed_default_pipeline()
    if ranks != 1:
        passes = [
            dataclasses.replace(p, ranks=ranks) if p.name == "form-islands" else p  # type: ignore[type-var]
            for p in passes
        ]
    return passes


# ------------------------------------------------------- xDSL's generic passes, quicker
#
# canonicalize, cse and dce are xDSL's passes. On opgraph IR they mostly find nothing to do,
# and xDSL spends most of their time on bookkeeping: canonicalize runs a liveness fixpoint
# over the whole module after its walk, dce runs that fixpoint alone, and cse copies its
# table of known ops for every region (quadratic in pipeline size: each df.filter/df.map
# region copies every op of the function body known so far). ``apply_pass`` runs them with
# the same result:
#
# * dce: one walk checks whether any op is trivially dead (no used result, no effect). In
#   single-block regions without use cycles (all of opgraph's IR), a set of ops the
#   liveness analysis deletes has a last op in program order, whose results nothing uses:
#   a trivially dead op. So when there is none, nothing is deleted; otherwise (or with any
#   multi-block region) xDSL's dce runs.
# * canonicalize: one walk applies what xDSL's driver applies to each op (erase if
#   trivially dead, fold, the op's canonicalization patterns); if nothing changes anywhere
#   the module is already canonical. At the first change, xDSL's full pass takes over.
# * cse: xDSL's CSE driver with a scoped table (entries added inside a region are undone
#   when leaving it) instead of a copy per region; same visiting order, same decisions.
#   For region-free ops of classes whose only effect trait is NoMemoryEffect (arith, df.col,
#   ...) the driver's trait/effect queries are answered once per class; for ops with regions
#   (df.map, df.filter) the effects of their nested ops come from per-class answers
#   (``_effects``) instead of xDSL's recursive query of every nested op.


_MISSING = object()


def _walk_nested(module: Operation):
    """Every op nested in ``module`` (not ``module`` itself), parents before children."""
    return walk_ops(module)[1:]


def _nothing_dead(module: Operation) -> bool:
    from xdsl.transforms.dead_code_elimination import is_trivially_dead

    for op in _walk_nested(module):
        for region in op.regions:
            if several_blocks(region):
                return False
        if is_trivially_dead(op):
            return False
    return True


_canon_info: dict[type, tuple[bool, tuple[typing.Any, ...]]] = {}


def _canonicalization_info(op: Operation) -> tuple[bool, tuple[typing.Any, ...]]:
    """(whether the driver folds the op, its canonicalization patterns) - per op class."""
    info = _canon_info.get(type(op))
    if info is None:
        from xdsl.traits import (
            ConstantLike,
            HasCanonicalizationPatternsTrait,
            HasFolder,
        )

        folds = op.has_trait(HasFolder, value_if_unregistered=False) and not op.has_trait(
            ConstantLike, value_if_unregistered=True
        )
        patterns = tuple(
            pattern
            for trait in op.get_traits_of_type(HasCanonicalizationPatternsTrait)
            for pattern in trait.get_patterns(type(op))
        )
        info = _canon_info[type(op)] = (folds, patterns)
    return info


def _already_canonical(ctx: Context, module: ModuleOp) -> bool:
    """True if xDSL's canonicalize would change nothing; False at the first op it would
    change (a pattern that matched has then already rewritten that op, as xDSL would)."""
    from opgraph.passes._expr_regions import ReusedRewriter
    from xdsl.dialects.builtin import UnregisteredOp
    from xdsl.folder import Folder
    from xdsl.transforms.dead_code_elimination import is_trivially_dead

    folder = Folder(ctx)
    rewriter = ReusedRewriter()
    try:
        for op in _walk_nested(module):
            unregistered = _UNREGISTERED.get(type(op))  # isinstance, once per op class
            if unregistered is None:
                unregistered = _UNREGISTERED[type(op)] = issubclass(type(op), UnregisteredOp)
            if unregistered:
                return False
            for region in op.regions:
                if several_blocks(region):
                    return False
            if is_trivially_dead(op):
                return False
            folds, patterns = _canonicalization_info(op)
            if folds and folder.try_fold(op) is not None:
                return False
            if patterns:
                rewriter.at(op)
                for pattern in patterns:
                    pattern.match_and_rewrite(op, rewriter)
                    if rewriter.has_done_action:
                        return False
    except Exception:  # noqa: BLE001  (xDSL's own driver then runs and reports it)
        return False
    return True


def _attr_hash(attr: typing.Any, cache: dict[int, tuple[typing.Any, int]]) -> int:
    cached = cache.get(id(attr))
    if cached is None or cached[0] is not attr:
        cached = cache[id(attr)] = (attr, hash(attr))
    return cached[1]


_UNREGISTERED: dict[type, bool] = {}  # op class -> whether it is an UnregisteredOp


class _Key:
    """An op as a key of the CSE table: equal exactly when xDSL's ``OperationInfo`` says so
    (name, attributes, properties, operands, result types, structurally equal regions).
    The hash is computed once, from attribute hashes cached per attribute object (xDSL
    rehashes nested attributes such as arrays of strings on every lookup)."""

    __slots__ = ("hash", "name", "op")

    def __init__(self, op: Operation, attr_hashes: dict[int, tuple[typing.Any, int]]):
        self.op = op
        unregistered = _UNREGISTERED.get(type(op))
        if unregistered is None:
            from xdsl.dialects.builtin import UnregisteredOp

            unregistered = _UNREGISTERED[type(op)] = issubclass(type(op), UnregisteredOp)
        self.name = op.op_name.data if unregistered else op.name  # type: ignore[attr-defined]
        total = 0
        get = attr_hashes.get
        for items in (op.attributes, op.properties):
            for k, v in items.items():
                cached = get(id(v))  # _attr_hash, inlined
                if cached is None or cached[0] is not v:
                    cached = attr_hashes[id(v)] = (v, hash(v))
                total += hash((k, cached[1]))
        types = []
        for r in op.results:
            t = r._type
            cached = get(id(t))
            if cached is None or cached[0] is not t:
                cached = attr_hashes[id(t)] = (t, hash(t))
            types.append(cached[1])
        # SSA values hash by id(): the same hash as hashing the operand tuple, quicker
        self.hash = hash((self.name, total, tuple(types), tuple(map(id, op._operands))))

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Key) or self.hash != other.hash or self.name != other.name:
            return False
        a, b = self.op, other.op
        return (
            a.attributes == b.attributes
            and a.properties == b.properties
            and a._operands == b._operands  # tuples of the operand values
            and a.result_types == b.result_types
            and len(a.regions) == len(b.regions)
            and all(s.is_structurally_equivalent(o) for s, o in zip(a.regions, b.regions))
        )


class _ScopedKnownOps:
    """The known-ops table of xDSL's CSE driver, scoped by an undo log instead of copies."""

    def __init__(self, attr_hashes: dict[int, tuple[typing.Any, int]]) -> None:
        self.known: dict[_Key, Operation] = {}
        self.log: list[tuple[_Key, typing.Any]] = []
        self.attr_hashes = attr_hashes
        self.last: _Key | None = None  # the driver looks an op up, then inserts it

    def _key(self, op: Operation) -> _Key:
        last = self.last
        if last is not None and last.op is op:
            return last
        self.last = key = _Key(op, self.attr_hashes)
        return key

    def get(self, op: Operation, default: typing.Any = None) -> typing.Any:
        return self.known.get(self._key(op), default)

    def __contains__(self, op: Operation) -> bool:
        return _Key(op, self.attr_hashes) in self.known

    def __setitem__(self, op: Operation, value: Operation) -> None:
        key = self._key(op)
        self.log.append((key, self.known.get(key, _MISSING)))
        self.known[key] = value

    def restore(self, mark: int) -> None:
        while len(self.log) > mark:
            key, previous = self.log.pop()
            self.known.pop(key, None)
            if previous is not _MISSING:
                self.known[key] = previous


def _simple_pure(op: Operation) -> bool:
    """Whether xDSL's CSE driver treats every op of this class (when it has no regions) as
    a side-effect-free, non-terminator, non-symbol op: effects only from NoMemoryEffect."""
    from xdsl.dialects.builtin import UnregisteredOp
    from xdsl.traits import IsTerminator, MemoryEffect, NoMemoryEffect, SymbolOpInterface

    if isinstance(op, UnregisteredOp) or op.has_trait(IsTerminator) or op.has_trait(SymbolOpInterface):
        return False
    effects = op.get_traits_of_type(MemoryEffect)
    no_effect = NoMemoryEffect.get_effects.__func__  # type: ignore[attr-defined]
    return bool(effects) and all(
        isinstance(t, NoMemoryEffect) and type(t).get_effects.__func__ is no_effect  # type: ignore[attr-defined]
        for t in effects
    )


def _effect_kind(op: Operation) -> tuple[typing.Any, ...]:
    """How ``xdsl.traits.get_effects`` answers for ops of this class: ``("const", effects)``
    when every effect trait returns a constant (NoMemoryEffect/Pure, MemoryRead/Write/Alloc/
    FreeEffect as defined by xDSL), ``("recursive", own effects)`` when one is xDSL's
    RecursiveMemoryEffect and the others constant, else ``("other",)`` (ask xDSL)."""
    from xdsl.traits import (
        MemoryAllocEffect,
        MemoryEffect,
        MemoryFreeEffect,
        MemoryReadEffect,
        MemoryWriteEffect,
        NoMemoryEffect,
        RecursiveMemoryEffect,
    )

    constant = {
        c.get_effects.__func__  # type: ignore[attr-defined]
        for c in (NoMemoryEffect, MemoryReadEffect, MemoryWriteEffect, MemoryAllocEffect, MemoryFreeEffect)
    }
    recursive_fn = RecursiveMemoryEffect.get_effects.__func__  # type: ignore[attr-defined]
    traits = op.get_traits_of_type(MemoryEffect)
    if not traits:
        return ("const", None)
    own: set[typing.Any] = set()
    recursive = False
    for trait in traits:
        fn = getattr(type(trait).get_effects, "__func__", None)
        if fn in constant:
            own.update(trait.get_effects(op))
        elif fn is recursive_fn:
            recursive = True
        else:
            return ("other",)
    return ("recursive", frozenset(own)) if recursive else ("const", frozenset(own))


def _effects(op: Operation, kinds: dict[type, tuple[typing.Any, ...]]) -> typing.Any:
    """``xdsl.traits.get_effects(op)`` (an equal set, or None), with what depends only on
    an op's class looked up once per class (xDSL recomputes the effects of every nested op
    of each filter/map region)."""
    kind = kinds.get(type(op))
    if kind is None:
        kind = kinds[type(op)] = _effect_kind(op)
    tag = kind[0]
    if tag == "const":
        return None if kind[1] is None else set(kind[1])
    if tag == "recursive":
        effects = set(kind[1])
        for region in op.regions:
            for block in region.blocks:
                for child in block.ops:
                    child_effects = _effects(child, kinds)
                    if child_effects is None:
                        return None
                    effects.update(child_effects)
        return effects
    from xdsl.traits import get_effects

    return get_effects(op)


def _cse(module: ModuleOp) -> None:
    from xdsl.traits import IsolatedFromAbove, IsTerminator
    from xdsl.transforms.common_subexpression_elimination import CSEDriver

    class Driver(CSEDriver):
        def _simplify_operation(self, op):  # type: ignore[override]
            # xDSL's steps, with what depends only on the op's class looked up once: for
            # ops without regions whose only effect trait is NoMemoryEffect (Pure), the
            # driver's checks come down to "dead -> erase; else look up / record"
            if op.regions:
                self._simplify_region_op(op)
                return
            simple = simple_pure.get(type(op))
            if simple is None:
                simple = simple_pure[type(op)] = _simple_pure(op)
            if not simple:
                CSEDriver._simplify_operation(self, op)
                return
            for r in op.results:
                if r.first_use is not None:
                    break
            else:
                self._mark_erasure(op)
                return
            existing = self._known_ops.get(op)
            if existing:
                self._replace_and_delete(op, existing)
                return
            self._known_ops[op] = op

        def _simplify_region_op(self, op):
            # CSEDriver._simplify_operation for an op with regions: the same steps, with
            # the effects of its nested ops from _effects. Dead ops and ops with effects
            # take xDSL's own path.
            if op.has_trait(IsTerminator):
                return
            if all(r.first_use is None for r in op.results):
                CSEDriver._simplify_operation(self, op)
                return
            if any(several_blocks(region) for region in op.regions):
                return
            effects = _effects(op, effect_kinds)
            if effects is None or len(effects) != 0:
                CSEDriver._simplify_operation(self, op)
                return
            if existing := self._known_ops.get(op):
                self._replace_and_delete(op, existing)
                return
            self._known_ops[op] = op

        def _simplify_block(self, block):  # type: ignore[override]
            for op in block.ops:
                if op.regions:
                    if op.has_trait(IsolatedFromAbove, value_if_unregistered=True):
                        outer = self._known_ops
                        self._known_ops = _ScopedKnownOps(attr_hashes)  # type: ignore[assignment]
                        for region in op.regions:
                            self._simplify_region(region)
                        self._known_ops = outer
                    else:
                        for region in op.regions:
                            self._simplify_region(region)
                self._simplify_operation(op)

        def _simplify_region(self, region):  # type: ignore[override]
            block = only_block(region)
            if block is not None:
                known: _ScopedKnownOps = self._known_ops  # type: ignore[assignment]
                mark = len(known.log)
                self._simplify_block(block)
                known.restore(mark)

    attr_hashes: dict[int, tuple[typing.Any, int]] = {}
    simple_pure: dict[type, bool] = {}
    effect_kinds: dict[type, tuple[typing.Any, ...]] = {}
    Driver(_known_ops=_ScopedKnownOps(attr_hashes)).simplify(module)  # type: ignore[arg-type]


def apply_pass(p: ModulePass, ctx: Context, module: ModuleOp) -> None:
    """``p.apply(ctx, module)``; xDSL's canonicalize, cse and dce run the quicker way
    described above (same resulting IR)."""
    from xdsl.transforms.canonicalize import CanonicalizePass
    from xdsl.transforms.common_subexpression_elimination import (
        CommonSubexpressionElimination,
    )
    from xdsl.transforms.dead_code_elimination import DeadCodeElimination

    cls = type(p)
    if cls is CanonicalizePass:
        if not _already_canonical(ctx, module):
            p.apply(ctx, module)
    elif cls is CommonSubexpressionElimination:
        _cse(module)
    elif cls is DeadCodeElimination:
        if not _nothing_dead(module):
            p.apply(ctx, module)
    else:
        p.apply(ctx, module)


# ----------------------------------------------------------------------------- running


def _located(op_loc: tuple[str, int, int] | None) -> dict[str, typing.Any]:
    return {"file": op_loc[0], "line": op_loc[1]} if op_loc else {}


def run_pipeline(
    module: ModuleOp,
    pipeline: str | Sequence[ModulePass] | None = None,
    ctx: Context | None = None,
    after_each: AfterEach | None = None,
    verify_each: bool = True,
    verify_input: bool = True,
    timings: dict[str, float] | None = None,
) -> ModuleOp:
    """Runs ``pipeline`` (text, passes, or None for ``default_pipeline()``) on ``module`` in
    place and returns it. Raises ``IRError`` if the input does not verify and ``PassError``
    if a pass fails or leaves IR that does not verify.

    ``verify_each`` (mlir-opt's -verify-each, on by default) verifies with xDSL's verifier
    after every pass. With it off, the output is verified once, with ``fast_verify`` (xDSL's
    checks, each op signature once; xDSL's verifier only when that finds a problem): the
    compile driver's default pipeline, where verifying per pass would dominate compile time.
    ``verify_input=False`` skips verifying the input (the driver's traced IR, built by
    constructors that infer every type). ``timings``, when given, receives the seconds of
    each step: ``verify input``, ``NN-<pass>``, ``verify output`` (wall-clock seconds, or
    ``timings.clock()`` differences when it has that attribute, e.g. ``time.process_time``)."""
    import time

    if pipeline is None:
        passes = default_pipeline()
    elif isinstance(pipeline, str):
        passes = parse_pipeline(pipeline)
    else:
        passes = list(pipeline)
    if ctx is None:
        from opgraph.dialects.context import make_context

        ctx = make_context()
    clock = getattr(timings, "clock", time.perf_counter)  # a dict subclass may pick its clock

    if verify_input:
        start = clock()
        found = find_verification_error(module, fast=not verify_each)
        if timings is not None:
            timings["verify input"] = clock() - start
        if found is not None:
            op, message = found
            raise IRError(f"input IR does not verify: {message}", **_located(op_location(op)))

    for index, p in enumerate(passes, start=1):
        start = clock()
        try:
            apply_pass(p, ctx, module)
        except PassError:
            raise
        except OpgraphError as e:
            raise PassError(f"pass '{p.name}' failed: {e.message}", file=e.file, line=e.line) from None
        except DiagnosticException as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PassError(f"pass '{p.name}' failed: {first}") from None
        if timings is not None:
            timings[f"{index:02d}-{p.name}"] = clock() - start
        if verify_each or index == len(passes):
            start = clock()
            found = find_verification_error(module, fast=not verify_each)
            if timings is not None and not verify_each:
                timings["verify output"] = clock() - start
            if found is not None:
                op, message = found
                raise PassError(
                    f"IR does not verify after pass '{p.name}': {message}",
                    **_located(op_location(op)),
                )
        if after_each is not None:
            after_each(index, p.name, module)
    return module
