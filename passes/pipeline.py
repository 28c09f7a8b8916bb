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
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.utils.arg_spec import ArgSpec, parse_spec
from xdsl.utils.exceptions import ArgSpecParseError, DiagnosticException

from opgraph.errors import IRError, OpgraphError, PassError
from opgraph.passes.registry import get_pass, pass_options
from opgraph.passes.verify import find_verification_error, op_location

AfterEach = Callable[[int, str, ModuleOp], None]

# run_pipeline verifies its input and output itself, so no explicit verify passes here
DEFAULT_PIPELINE = "builtin.module(canonicalize,cse,dce,lower-to-islands)"

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


def default_pipeline(ranks: int = 1) -> list[ModulePass]:
    """canonicalize, cse, dce, lower-to-islands{ranks}."""
    passes = parse_pipeline(DEFAULT_PIPELINE)
    if ranks != 1:
        passes = [
            dataclasses.replace(p, ranks=ranks) if p.name == "lower-to-islands" else p  # type: ignore[type-var]
            for p in passes
        ]
    return passes


# ----------------------------------------------------------------------------- running


def _located(op_loc: tuple[str, int, int] | None) -> dict[str, typing.Any]:
    return {"file": op_loc[0], "line": op_loc[1]} if op_loc else {}


def run_pipeline(
    module: ModuleOp,
    pipeline: str | Sequence[ModulePass] | None = None,
    ctx: Context | None = None,
    after_each: AfterEach | None = None,
    verify_each: bool = True,
) -> ModuleOp:
    """Runs ``pipeline`` (text, passes, or None for ``default_pipeline()``) on ``module`` in
    place and returns it. Raises ``IRError`` if the input does not verify and ``PassError``
    if a pass fails or leaves IR that does not verify. ``verify_each`` (mlir-opt's
    -verify-each, on by default) verifies after every pass; with it off only the output is
    verified, which the compile driver uses for its own default pipeline (a full
    verification per pass dominates compile time)."""
    if pipeline is None:
        passes = default_pipeline()
    elif isinstance(pipeline, str):
        passes = parse_pipeline(pipeline)
    else:
        passes = list(pipeline)
    if ctx is None:
        from opgraph.dialects.context import make_context

        ctx = make_context()

    found = find_verification_error(module)
    if found is not None:
        op, message = found
        raise IRError(f"input IR does not verify: {message}", **_located(op_location(op)))

    for index, p in enumerate(passes, start=1):
        try:
            p.apply(ctx, module)
        except PassError:
            raise
        except OpgraphError as e:
            raise PassError(f"pass '{p.name}' failed: {e.message}", file=e.file, line=e.line) from None
        except DiagnosticException as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PassError(f"pass '{p.name}' failed: {first}") from None
        if verify_each or index == len(passes):
            found = find_verification_error(module)
            if found is not None:
                op, message = found
                raise PassError(
                    f"IR does not verify after pass '{p.name}': {message}",
                    **_located(op_location(op)),
                )
        if after_each is not None:
            after_each(index, p.name, module)
    return module
