"""The pass registry: every pass opgraph can run, by its mlir-opt style name.

A pass is an xDSL ``ModulePass``: a frozen dataclass with a ``name`` class variable and its
options as dataclass fields (``ranks: int = 1`` is the option ``ranks``, written
``lower-to-islands{ranks=2}``; a field ``foo_bar`` is written ``foo-bar``).

Registered passes:

* xDSL's generic passes ``canonicalize``, ``cse`` and ``dce``;
* every ``ModulePass`` subclass with a ``name`` defined in a module of ``opgraph.passes``
  (found automatically: adding ``passes/my_pass.py`` is enough);
* anything registered with ``register_pass`` (tests, plugins).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Any, get_type_hints

from xdsl.passes import ModulePass

from opgraph.errors import PassError

# Modules of opgraph.passes that hold infrastructure, not passes.
_NOT_PASS_MODULES = frozenset({"registry", "pipeline"})


def _xdsl_builtin_passes() -> list[type[ModulePass]]:
    from xdsl.transforms.canonicalize import CanonicalizePass
    from xdsl.transforms.common_subexpression_elimination import (
        CommonSubexpressionElimination,
    )
    from xdsl.transforms.dead_code_elimination import DeadCodeElimination

    return [CanonicalizePass, CommonSubexpressionElimination, DeadCodeElimination]


_registry: dict[str, type[ModulePass]] = {}
_discovered = False


def _add(cls: type[ModulePass], replace: bool = False) -> None:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} has no pass name (class variable 'name')")
    existing = _registry.get(name)
    if existing is not None and existing is not cls and not replace:
        raise RuntimeError(
            f"pass name '{name}' is used by both {existing.__module__}.{existing.__qualname__} "
            f"and {cls.__module__}.{cls.__qualname__}"
        )
    _registry[name] = cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for cls in _xdsl_builtin_passes():
        _add(cls)
    import opgraph.passes as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in _NOT_PASS_MODULES:
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, ModulePass)
                and obj.__module__ == module.__name__
                and not inspect.isabstract(obj)
                and isinstance(getattr(obj, "name", None), str)
            ):
                _add(obj)


def register_pass(cls: type[ModulePass], replace: bool = False) -> type[ModulePass]:
    """Registers a pass class (usable as a decorator); returns it unchanged."""
    _discover()
    _add(cls, replace=replace)
    return cls


def unregister_pass(name: str) -> None:
    """Removes a pass (for tests that register temporary passes)."""
    _discover()
    _registry.pop(name, None)


def available_passes() -> dict[str, type[ModulePass]]:
    """All registered passes, name -> class, sorted by name."""
    _discover()
    return dict(sorted(_registry.items()))


def pass_names() -> list[str]:
    return list(available_passes())


def get_pass(name: str) -> type[ModulePass]:
    """The pass class called ``name``; ``PassError`` naming the available ones otherwise."""
    passes = available_passes()
    cls = passes.get(name)
    if cls is None:
        raise PassError(f"unknown pass '{name}' (available: {', '.join(passes)})")
    return cls


@dataclass(frozen=True)
class PassOption:
    """One option of a pass: its spelling in a pipeline, its type and default."""

    name: str  # as written in a pipeline: dashes, e.g. "ranks"
    field: str  # dataclass field name: underscores
    type: str  # e.g. "int", "bool", "str", "int | None"
    default: Any  # dataclasses.MISSING when required
    required: bool


def _type_name(t: Any) -> str:
    if isinstance(t, type):
        return t.__name__
    return str(t).replace("typing.", "")


def pass_options(cls: type[ModulePass]) -> list[PassOption]:
    hints = get_type_hints(cls)
    out: list[PassOption] = []
    for f in dataclasses.fields(cls):
        if f.name == "name" or not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out.append(
            PassOption(
                name=f.name.replace("_", "-"),
                field=f.name,
                type=_type_name(hints.get(f.name, f.type)),
                default=default,
                required=default is dataclasses.MISSING,
            )
        )
    return out


_SUMMARIES = {
    "canonicalize": "Applies all canonicalization patterns (xDSL).",
    "cse": "Common-subexpression elimination: merges identical side-effect-free ops (xDSL).",
    "dce": "Dead-code elimination: removes unused side-effect-free ops (xDSL).",
}


def pass_summary(cls: type[ModulePass]) -> str:
    """First line of the pass's docstring (or of its module's)."""
    if cls.name in _SUMMARIES and cls.__module__.startswith("xdsl."):
        return _SUMMARIES[cls.name]
    doc = inspect.getdoc(cls)
    if not doc or doc == inspect.getdoc(ModulePass):
        doc = inspect.getdoc(inspect.getmodule(cls)) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def describe_passes() -> list[dict[str, Any]]:
    """``[{name, summary, options: [{name, type, default}]}]`` for help texts."""
    result = []
    for name, cls in available_passes().items():
        result.append(
            {
                "name": name,
                "summary": pass_summary(cls),
                "options": [
                    {
                        "name": o.name,
                        "type": o.type,
                        "default": None if o.required else o.default,
                        "required": o.required,
                    }
                    for o in pass_options(cls)
                ],
            }
        )
    return result
