"""Generates the IRDL twins (``dialects/<module>.irdl.mlir``) of opgraph's xDSL dialects.

Every dialect module ``dialects/<module>.py`` that defines xDSL ``Dialect`` objects gets a twin
``dialects/<module>.irdl.mlir`` holding one ``irdl.dialect`` per dialect, in the syntax that
upstream MLIR's ``irdl.load_dialects`` (the ``torch_mlir`` bindings) accepts. Upstream MLIR
then parses and verifies opgraph IR with those dialects loaded (see ``upstream_verify``).

Usage::

    python -m opgraph.dialects.irdl_gen            # (re)write every twin
    python -m opgraph.dialects.irdl_gen --check    # exit 1 if a twin on disk is stale

How xDSL definitions map to upstream IRDL (facts checked against the upstream bindings):

* Each operand/result/attribute/parameter slot gets its **own** constraint op: in IRDL one
  SSA constraint value used twice means "these must be equal". An xDSL ``VarConstraint``
  (which means exactly that) is mapped to one shared SSA value, the only sharing we emit.
* Constraints map exactly where IRDL can express them: builtin bases
  (``irdl.base "#builtin.string"``, ``irdl.base "!builtin.integer"``), our own types and
  attributes (``irdl.base @df::@table`` inside the defining dialect; ``irdl.base "!df.table"``
  from another dialect, which must be loaded first), ``irdl.is`` for equality with a builtin
  attribute, ``irdl.any_of`` / ``irdl.all_of``, ``irdl.parametric`` for our own parametrized
  attributes. Anything else (element constraints of arrays, the type of an ``IntegerAttr``,
  ``DenseIntOrFPElementsAttr``, types of upstream non-builtin dialects) becomes
  ``irdl.any`` or the nearest base: the twin is never *stricter* than xDSL on these.
* Upstream ``irdl.attributes`` lists **required** attributes only (there is no optional
  form); attributes that are not listed are accepted with any value. Optional attributes
  (declared optional, or required with a default) are therefore left out of the twin.
* Upstream checks the exact number of regions (``irdl.regions`` has no variadicity; an op
  without ``irdl.regions`` must have none). Variadic/optional regions cannot be expressed;
  they are emitted as one region and reported as errors by ``twin_problems``.
* Every element of a variadic operand/result group binds the same constraint variable, so
  upstream requires all of them to have the **same type** (reported as a warning).
* No properties, successors or traits exist in IRDL dynamic ops.
"""

from __future__ import annotations

import argparse
import importlib
import keyword
import pkgutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from types import ModuleType

from xdsl.dialects import builtin
from xdsl.ir import Attribute, Dialect, Operation, ParametrizedAttribute, TypeAttribute
from xdsl.irdl import (
    AllOf,
    AnyAttr,
    AnyOf,
    AttrSizedOperandSegments,
    AttrSizedResultSegments,
    AttrSizedSegments,
    BaseAttr,
    EqAttrConstraint,
    MessageConstraint,
    OptionalDef,
    ParamAttrConstraint,
    RangeLengthConstraint,
    RangeOf,
    RangeVarConstraint,
    SingleOf,
    VarConstraint,
    VariadicDef,
)
from xdsl.irdl.constraints import AttrConstraint, AttrSetConstraint, RangeConstraint, TypeVarConstraint
from xdsl.irdl.constraints import EqIntConstraint
from xdsl.irdl.operations import (
    OptAttributeDef,
    OptSingleBlockRegionDef,
    SingleBlockRegionDef,
    VarSingleBlockRegionDef,
)
from xdsl.printer import Printer

PACKAGE = "opgraph.dialects"
DIALECTS_DIR = Path(__file__).resolve().parent
TWIN_SUFFIX = ".irdl.mlir"
# Modules of opgraph.dialects that never define dialects of their own.
_NOT_DIALECT_MODULES = frozenset({"irdl_gen", "upstream_verify", "context"})

# xDSL builtin class -> upstream base name accepted by ``irdl.base "<name>"`` (each one
# checked against the upstream bindings; builtin classes not listed map to ``irdl.any``).
BUILTIN_BASES: dict[type[Attribute], str] = {
    builtin.StringAttr: "#builtin.string",
    builtin.ArrayAttr: "#builtin.array",
    builtin.IntegerAttr: "#builtin.integer",
    builtin.FloatAttr: "#builtin.float",
    builtin.DictionaryAttr: "#builtin.dictionary",
    builtin.UnitAttr: "#builtin.unit",
    builtin.SymbolRefAttr: "#builtin.symbol_ref",
    builtin.DenseArrayBase: "#builtin.dense_array",
    builtin.DenseResourceAttr: "#builtin.dense_resource_elements",
    builtin.AffineMapAttr: "#builtin.affine_map",
    builtin.StridedLayoutAttr: "#builtin.strided_layout",
    builtin.OpaqueAttr: "#builtin.opaque",
    builtin.IntegerType: "!builtin.integer",
    builtin.IndexType: "!builtin.index",
    builtin.BFloat16Type: "!builtin.bf16",
    builtin.Float16Type: "!builtin.f16",
    builtin.Float32Type: "!builtin.f32",
    builtin.Float64Type: "!builtin.f64",
    builtin.ComplexType: "!builtin.complex",
    builtin.TupleType: "!builtin.tuple",
    builtin.VectorType: "!builtin.vector",
    builtin.TensorType: "!builtin.tensor",
    builtin.UnrankedTensorType: "!builtin.unranked_tensor",
    builtin.MemRefType: "!builtin.memref",
    builtin.FunctionType: "!builtin.function",
    builtin.NoneType: "!builtin.none",
}


class IrdlGenError(Exception):
    """A dialect module cannot be imported or turned into IRDL."""



def _is_irdl_op(op: type) -> bool:
    """Whether ``op`` is an op class defined with IRDL (it has an IRDL definition)."""
    return isinstance(op, type) and issubclass(op, Operation) and hasattr(op, "get_irdl_definition")

@dataclass(frozen=True)
class TwinProblem:
    """Something in an xDSL definition that the IRDL twin cannot express exactly.

    ``severity`` is ``"error"`` when IR that xDSL accepts will certainly be rejected
    upstream (or the twin cannot say what xDSL says), ``"warning"`` when upstream may reject
    IR xDSL accepts (variadic groups of differing types), ``"note"`` when upstream is only
    looser than xDSL (optional attributes, approximated constraints)."""

    dialect: str
    op: str
    severity: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.op}: {self.message}"


@dataclass
class _Owner:
    dialect: str
    short: str
    is_type: bool


@dataclass
class _Registry:
    """Which attribute classes belong to which opgraph dialect."""

    owners: dict[type[Attribute], _Owner] = field(default_factory=dict)

    def add(self, dialect: Dialect) -> None:
        for attr in dialect.attributes:
            _, short = Dialect.split_name(attr.name)
            self.owners[attr] = _Owner(dialect.name, short, issubclass(attr, TypeAttribute))


def _depython(name: str) -> str:
    if name.endswith("_") and keyword.iskeyword(name[:-1]):
        return name[:-1]
    return name


def _ssa_name(text: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in text)


def _print_attr(attr: Attribute) -> str:
    out = StringIO()
    Printer(stream=out).print_attribute(attr)
    return out.getvalue()


def _is_builtin(attr: type[Attribute]) -> bool:
    return attr.__module__ == builtin.__name__


class _BodyWriter:
    """Emits the constraint ops of one ``irdl.operation`` / ``irdl.type`` body."""

    def __init__(self, dialect: str, registry: _Registry, problems: list[TwinProblem], owner: str):
        self.dialect = dialect
        self.registry = registry
        self.problems = problems
        self.owner = owner
        self.lines: list[str] = []
        self.used: set[str] = set()
        self.vars: dict[str, str] = {}
        self.any_values: set[str] = set()

    def note(self, severity: str, message: str) -> None:
        self.problems.append(TwinProblem(self.dialect, self.owner, severity, message))

    def fresh(self, hint: str) -> str:
        base = "%" + _ssa_name(hint)
        name, i = base, 0
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name

    def emit(self, hint: str, text: str) -> str:
        name = self.fresh(hint)
        self.lines.append(f"{name} = {text}")
        if text == "irdl.any":
            self.any_values.add(name)
        return name

    # -- constraints -------------------------------------------------------------------

    def base_of(self, cls: type[Attribute], hint: str) -> str:
        """``irdl.base`` for an attribute class, or ``irdl.any`` when it has no IRDL name."""
        if cls in BUILTIN_BASES:
            return self.emit(hint, f'irdl.base "{BUILTIN_BASES[cls]}"')
        owner = self.registry.owners.get(cls)
        if owner is not None:
            if owner.dialect == self.dialect:
                return self.emit(hint, f"irdl.base @{owner.dialect}::@{owner.short}")
            sigil = "!" if owner.is_type else "#"
            return self.emit(hint, f'irdl.base "{sigil}{owner.dialect}.{owner.short}"')
        return self.emit(hint, "irdl.any")

    def constraint(self, c: AttrConstraint, hint: str) -> str:
        """Emits ops for ``c`` (a fresh value, except shared ``VarConstraint``s)."""
        if isinstance(c, AnyAttr):
            return self.emit(hint, "irdl.any")
        if isinstance(c, VarConstraint):
            if c.name not in self.vars:
                self.vars[c.name] = self.constraint(c.constraint, "var_" + c.name)
            return self.vars[c.name]
        if isinstance(c, MessageConstraint):
            return self.constraint(c.constr, hint)
        if isinstance(c, TypeVarConstraint):
            return self.constraint(c.base_constraint, hint)
        if isinstance(c, BaseAttr):
            return self.base_of(c.attr, hint)
        if isinstance(c, EqAttrConstraint):
            return self.equal(c.attr, hint)
        if isinstance(c, AttrSetConstraint):
            return self.any_of([EqAttrConstraint(v) for v in c.values], hint)
        if isinstance(c, AnyOf):
            return self.any_of(list(c.attr_constrs), hint)
        if isinstance(c, AllOf):
            parts = [p for p in c.attr_constrs if not isinstance(p, AnyAttr)]
            if not parts:
                return self.emit(hint, "irdl.any")
            if len(parts) == 1:
                return self.constraint(parts[0], hint)
            args = [self.constraint(p, f"{hint}_{i}") for i, p in enumerate(parts)]
            return self.emit(hint, f"irdl.all_of({', '.join(args)})")
        if isinstance(c, ParamAttrConstraint):
            return self.parametric(c.base_attr, list(c.param_constrs), hint)
        bases = c.get_bases()
        if bases:
            return self.any_of([BaseAttr(b) for b in sorted(bases, key=lambda b: b.name)], hint)
        self.note("note", f"constraint {type(c).__name__} of '{hint}' is not checked upstream (irdl.any)")
        return self.emit(hint, "irdl.any")

    def any_of(self, alternatives: list[AttrConstraint], hint: str) -> str:
        if not alternatives or any(isinstance(a, AnyAttr) for a in alternatives):
            return self.emit(hint, "irdl.any")
        if len(alternatives) == 1:
            return self.constraint(alternatives[0], hint)
        mark, saved_vars = len(self.lines), dict(self.vars)
        args = [self.constraint(a, f"{hint}_{i}") for i, a in enumerate(alternatives)]
        if any(a in self.any_values for a in args):
            # one alternative accepts anything, so does the union: drop what was emitted
            del self.lines[mark:]
            self.vars = saved_vars
            return self.emit(hint, "irdl.any")
        return self.emit(hint, f"irdl.any_of({', '.join(args)})")

    def equal(self, attr: Attribute, hint: str) -> str:
        cls = type(attr)
        if _is_builtin(cls):
            return self.emit(hint, f"irdl.is {_print_attr(attr)}")
        owner = self.registry.owners.get(cls)
        if owner is not None and isinstance(attr, ParametrizedAttribute):
            if not attr.parameters:
                return self.base_of(cls, hint)
            return self.parametric(cls, [EqAttrConstraint(p) for p in attr.parameters], hint)
        return self.base_of(cls, hint)

    def parametric(self, cls: type[Attribute], params: list[AttrConstraint], hint: str) -> str:
        owner = self.registry.owners.get(cls)
        if (
            owner is None
            or owner.dialect != self.dialect
            or all(isinstance(p, AnyAttr) for p in params)
        ):
            # irdl.parametric only references IRDL definitions of the same module
            return self.base_of(cls, hint)
        args = [self.constraint(p, f"{hint}_{i}") for i, p in enumerate(params)]
        return self.emit(hint, f"irdl.parametric @{owner.dialect}::@{owner.short}<{', '.join(args)}>")

    def range_element(self, rc: RangeConstraint | AttrConstraint) -> AttrConstraint:
        if isinstance(rc, AttrConstraint):
            return rc
        if isinstance(rc, RangeLengthConstraint):
            return self.range_element(rc.constraint)
        if isinstance(rc, RangeOf | SingleOf):
            return rc.constr
        if isinstance(rc, RangeVarConstraint):
            return self.range_element(rc.constraint)
        return AnyAttr()


def _variadicity(d: object) -> str:
    if isinstance(d, OptionalDef):
        return "optional "
    if isinstance(d, VariadicDef):
        return "variadic "
    return ""


def _region_zero_args(rc: RangeConstraint | AttrConstraint) -> bool:
    return (
        isinstance(rc, RangeLengthConstraint)
        and isinstance(rc.length, EqIntConstraint)
        and rc.length.value == 0
    )


def _op_body(op: type[Operation], dialect: str, registry: _Registry, problems: list[TwinProblem]) -> list[str]:
    op_def = op.get_irdl_definition()
    w = _BodyWriter(dialect, registry, problems, op_def.name)

    if op_def.properties:
        w.note(
            "error",
            f"uses properties ({', '.join(op_def.properties)}); IRDL dynamic ops have none "
            "(declare them as discardable attributes instead)",
        )
    if op_def.successors:
        w.note("error", "has successors, which upstream IRDL cannot declare")
    for opt in op_def.options:
        if isinstance(opt, AttrSizedSegments) and opt.as_property:
            w.note("error", f"{type(opt).__name__} stores segment sizes as a property; IRDL needs an attribute")
    for kind, defs, segments in (
        ("operand", op_def.operands, AttrSizedOperandSegments),
        ("result", op_def.results, AttrSizedResultSegments),
    ):
        n_var = sum(isinstance(d, VariadicDef) for _, d in defs)
        if n_var > 1 and not any(isinstance(o, segments) for o in op_def.options):
            w.note("error", f"{n_var} variadic {kind} groups without {segments.__name__}; "
                   f"upstream IRDL demands the '{segments.attribute_name}' attribute")
        for name, d in defs:
            if isinstance(d, VariadicDef):
                elem = w.range_element(d.constr)
                if not isinstance(elem, VarConstraint | EqAttrConstraint):
                    w.note(
                        "warning",
                        f"variadic {kind} group '{name}': upstream IRDL requires all its "
                        f"{kind}s to have the same type",
                    )

    operands = []
    for name, d in op_def.operands:
        v = w.constraint(w.range_element(d.constr), "in_" + name)
        operands.append(f"{_depython(name)}: {_variadicity(d)}{v}")
    results = []
    for name, d in op_def.results:
        v = w.constraint(w.range_element(d.constr), "out_" + name)
        results.append(f"{_depython(name)}: {_variadicity(d)}{v}")
    attrs = []
    skipped = []
    for name, d in op_def.attributes.items():
        if isinstance(d, OptAttributeDef) or d.default_value is not None:
            skipped.append(name)
            continue
        v = w.constraint(d.constr, "attr_" + name)
        attrs.append(f'"{name}" = {v}')
    if skipped:
        w.note("note", f"optional attribute(s) {', '.join(skipped)} are not checked upstream")
    regions = []
    for name, d in op_def.regions:
        if isinstance(d, VariadicDef):
            w.note(
                "error",
                f"{'optional' if isinstance(d, OptionalDef) else 'variadic'} region '{name}': "
                "upstream IRDL checks the exact region count, the twin accepts exactly one",
            )
        args = "()" if _region_zero_args(d.entry_args) else ""
        single = isinstance(d, SingleBlockRegionDef | VarSingleBlockRegionDef | OptSingleBlockRegionDef)
        size = " with size 1" if single else ""
        v = w.emit("reg_" + name, f"irdl.region{args}{size}")
        regions.append(f"{_depython(name)}: {v}")

    body = list(w.lines)
    if operands:
        body.append(f"irdl.operands({', '.join(operands)})")
    if results:
        body.append(f"irdl.results({', '.join(results)})")
    if attrs:
        body.append("irdl.attributes {" + ", ".join(attrs) + "}")
    if regions:
        body.append(f"irdl.regions({', '.join(regions)})")
    return body


def _attr_body(attr: type[Attribute], dialect: str, registry: _Registry, problems: list[TwinProblem]) -> list[str]:
    w = _BodyWriter(dialect, registry, problems, attr.name)
    if not issubclass(attr, ParametrizedAttribute):
        w.note("error", "only ParametrizedAttribute definitions can have an IRDL twin")
        return ["irdl.parameters()"]
    params = []
    for name, pdef in attr.get_irdl_definition().parameters:
        v = w.constraint(pdef.constr, "param_" + name)
        params.append(f"{_depython(name)}: {v}")
    return [*w.lines, f"irdl.parameters({', '.join(params)})"]


def dialect_to_irdl(dialect: Dialect, registry: _Registry | None = None) -> tuple[str, list[TwinProblem]]:
    """The ``irdl.dialect`` text of one xDSL dialect and what it cannot express."""
    if registry is None:
        registry = _Registry()
        registry.add(dialect)
    problems: list[TwinProblem] = []
    out = [f"irdl.dialect @{dialect.name} {{"]
    for attr in dialect.attributes:
        _, short = Dialect.split_name(attr.name)
        kind = "type" if issubclass(attr, TypeAttribute) else "attribute"
        out.append(f"  irdl.{kind} @{short} {{")
        out += [f"    {line}" for line in _attr_body(attr, dialect.name, registry, problems)]
        out.append("  }")
    for op in dialect.operations:
        _, short = Dialect.split_name(op.name)
        if not _is_irdl_op(op):
            problems.append(TwinProblem(dialect.name, op.name, "error", "not an IRDL-defined op (no xDSL op definition)"))
            continue
        out.append(f"  irdl.operation @{short} {{")
        out += [f"    {line}" for line in _op_body(op, dialect.name, registry, problems)]
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n", problems


# ------------------------------------------------------------------------- discovery


def _defined_here(dialect: Dialect, module: ModuleType) -> bool:
    classes = [*dialect.operations, *dialect.attributes]
    return any(c.__module__ == module.__name__ for c in classes) or not classes


def module_dialects(module: ModuleType) -> list[Dialect]:
    """The xDSL ``Dialect`` objects a module defines (not the ones it imports)."""
    found: list[Dialect] = []
    for value in vars(module).values():
        if isinstance(value, Dialect) and _defined_here(value, module) and value not in found:
            found.append(value)
    return found


def dialect_module_names() -> list[str]:
    """Names (``dataframe``, ``comm``, ...) of the modules of ``opgraph.dialects``, except
    ``opgraph.dialects.upstream.*`` (dialects upstream MLIR already has) and our tools."""
    pkg = importlib.import_module(PACKAGE)
    names = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.ispkg or info.name.startswith("_") or info.name in _NOT_DIALECT_MODULES:
            continue
        names.append(info.name)
    return sorted(names)


def discover() -> tuple[dict[str, list[Dialect]], dict[str, str]]:
    """``({module: [dialects]}, {module: import error})`` for every dialect module."""
    found: dict[str, list[Dialect]] = {}
    errors: dict[str, str] = {}
    for name in dialect_module_names():
        try:
            module = importlib.import_module(f"{PACKAGE}.{name}")
        except Exception as e:  # another engineer's module may be mid-edit
            errors[name] = f"{type(e).__name__}: {e}"
            continue
        dialects = module_dialects(module)
        if dialects:
            found[name] = dialects
    return found, errors


def _registry(all_dialects: Iterable[Dialect]) -> _Registry:
    reg = _Registry()
    for d in all_dialects:
        reg.add(d)
    return reg


def twin_path(module_name: str) -> Path:
    return DIALECTS_DIR / f"{module_name}{TWIN_SUFFIX}"


def twin_text(module_name: str, dialects: list[Dialect], registry: _Registry) -> tuple[str, list[TwinProblem]]:
    """The whole twin file of one dialect module."""
    bodies = []
    problems: list[TwinProblem] = []
    for d in dialects:
        text, probs = dialect_to_irdl(d, registry)
        bodies.append(text)
        problems += probs
    own = {d.name for d in dialects}
    deps = sorted(
        {
            o.dialect
            for o in registry.owners.values()
            if o.dialect not in own
            and any(f'"{"!" if o.is_type else "#"}{o.dialect}.{o.short}"' in b for b in bodies)
        }
    )
    header = [
        f"// IRDL twin of dialects/{module_name}.py (dialect{'s' if len(dialects) > 1 else ''} "
        f"{', '.join(sorted(own))}) for upstream MLIR.",
        "// GENERATED by `python -m opgraph.dialects.irdl_gen`: do not edit by hand.",
    ]
    if deps:
        header.append(f"// requires: {', '.join(deps)} (load the twin(s) defining them first)")
    interesting = [p for p in problems if p.severity in ("error", "warning")]
    if interesting:
        header.append("// Not expressible in upstream IRDL (checked by the xDSL verifiers only):")
        header += [f"//   {p}" for p in interesting]
    return "\n".join(header) + "\n\n" + "\n".join(bodies), problems


def generate_all() -> tuple[dict[Path, str], dict[str, list[TwinProblem]], dict[str, str]]:
    """``({twin path: text}, {module: problems}, {module: import error})``."""
    found, errors = discover()
    registry = _registry(d for ds in found.values() for d in ds)
    texts: dict[Path, str] = {}
    problems: dict[str, list[TwinProblem]] = {}
    for module_name, dialects in found.items():
        text, probs = twin_text(module_name, dialects, registry)
        texts[twin_path(module_name)] = text
        problems[module_name] = probs
    return texts, problems, errors


def twin_problems() -> list[TwinProblem]:
    """Everything the twins of all dialect modules cannot express exactly."""
    _, problems, _ = generate_all()
    return [p for probs in problems.values() for p in probs]


def stale_twins() -> list[str]:
    """Reasons why twins on disk differ from what the dialect modules generate."""
    texts, _, errors = generate_all()
    out = [f"dialects/{m}.py cannot be imported: {e}" for m, e in errors.items()]
    for path, text in texts.items():
        if not path.exists():
            out.append(f"{path.name} is missing")
        elif path.read_text() != text:
            out.append(f"{path.name} is stale")
    expected = set(texts)
    for path in DIALECTS_DIR.glob(f"*{TWIN_SUFFIX}"):
        if path not in expected and path.name[: -len(TWIN_SUFFIX)] not in errors:
            out.append(f"{path.name} has no dialect module")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opgraph.dialects.irdl_gen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if any twin on disk is stale")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list notes")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_twins()
        for reason in stale:
            print(f"irdl_gen: {reason}", file=sys.stderr)
        if stale:
            print("irdl_gen: run `python -m opgraph.dialects.irdl_gen` to regenerate", file=sys.stderr)
        return 1 if stale else 0
    texts, problems, errors = generate_all()
    for module_name, err in errors.items():
        print(f"irdl_gen: error: dialects/{module_name}.py cannot be imported: {err}", file=sys.stderr)
    for path, text in sorted(texts.items()):
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"irdl_gen: wrote {path.name}", file=sys.stderr)
    for module_name, probs in sorted(problems.items()):
        for p in probs:
            if p.severity != "note" or args.verbose:
                print(f"irdl_gen: {module_name}: {p}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
