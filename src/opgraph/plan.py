"""The compiled plan: final IR text plus ``plan.json``, a versioned, data-only description
of the island task graph that the runtime reads (no code, nothing pickled)."""

from __future__ import annotations

import json
from functools import lru_cache
from io import StringIO
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from xdsl.dialects.builtin import (
    ArrayAttr,
    DictionaryAttr,
    FileLineColLoc,
    FloatAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    SymbolRefAttr,
    UnitAttr,
)
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.printer import Printer

from opgraph.dialects import dataframe as df

PLAN_VERSION = 1

# DESIGN §2: the parallel pattern of each dataframe/DL op (the compiler's vocabulary)
PATTERNS: dict[str, str] = {
    "df.filter": "embarrassingly-parallel",
    "df.project": "embarrassingly-parallel",
    "df.map": "embarrassingly-parallel",
    "df.rename": "embarrassingly-parallel",
    "df.drop": "embarrassingly-parallel",
    "df.join": "shuffle-compute",
    "df.concat": "embarrassingly-parallel",
    "df.union": "shuffle-compute",
    "df.intersect": "shuffle-compute",
    "df.difference": "shuffle-compute",
    "df.distinct": "combine-shuffle-reduce",
    "df.groupby_agg": "combine-shuffle-reduce",
    "df.sort": "sample-shuffle-compute",
    "df.head": "globally-reduce",
    "df.aggregate": "globally-reduce",
    "df.window": "halo-exchange",
    "df.read_parquet": "partitioned-io",
    "df.read_csv": "partitioned-io",
    "df.read_ipc": "partitioned-io",
    "df.write_parquet": "partitioned-io",
    "df.write_csv": "partitioned-io",
    "df.write_ipc": "partitioned-io",
    "df.input": "partitioned-io",
}


class Column(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    type: str
    nullable: bool


class OpDoc(BaseModel):
    """One op: its name, attributes as JSON, operand/result value ids, result schema and, for
    expression ops, nested regions (each a list of ops; the last is ``vector.yield``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    op: str
    loc: str | None = None
    operands: list[str] = []
    results: list[str] = []
    result_types: list[str] = []
    schema_: list[Column] | None = Field(None, alias="schema")
    attributes: dict[str, Any] = {}
    regions: list[list[OpDoc]] = []


class IslandDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    ranks: int
    device: str
    pattern: str | None = None
    depends_on: list[str] = []
    inputs: list[str] = []  # value ids produced by other islands
    outputs: list[str] = []  # value ids this island yields
    ops: list[OpDoc]


class TableInput(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    index: int
    name: str
    schema_: list[Column] = Field(alias="schema")


class PlanDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    version: Literal[1] = PLAN_VERSION
    pipeline: str
    hardware: str
    islands: list[IslandDoc]
    inputs: list[TableInput] = []
    outputs: list[str] = []  # value ids returned by the pipeline, in order


def attr_to_json(attr: Attribute) -> Any:
    # Attribute classes are final (xDSL forbids subclassing them), so exact type tests are
    # isinstance tests, only much cheaper than isinstance against these ABCs.
    kind = type(attr)
    if kind is StringAttr:
        return attr.data  # type: ignore[attr-defined]
    if kind is IntegerAttr:
        v = attr.value.data  # type: ignore[attr-defined]
        return bool(v) if attr.type.width.data == 1 else v  # type: ignore[attr-defined]
    if kind is FloatAttr:
        return attr.value.data  # type: ignore[attr-defined]
    if kind is ArrayAttr:
        return [attr_to_json(a) for a in attr]  # type: ignore[attr-defined]
    if kind is DictionaryAttr:
        return {k: attr_to_json(v) for k, v in attr.data.items()}  # type: ignore[attr-defined]
    if kind is UnitAttr:
        return True
    if kind is SymbolRefAttr:
        return "@" + attr.root_reference.data  # type: ignore[attr-defined]
    try:
        return _printed(attr)
    except TypeError:  # an attribute holding unhashable data
        return _print(attr)


@lru_cache(maxsize=4096)
def _printed(attr: Attribute) -> str:
    # attributes are immutable values and equal ones print alike (element types recur a lot)
    return _print(attr)


def _print(attr: Attribute) -> str:
    out = StringIO()
    Printer(stream=out).print_attribute(attr)
    return out.getvalue()


@lru_cache(maxsize=4096)
def _schema_fields(t: df.TableType) -> tuple[tuple[str, str, bool], ...]:
    return tuple((n, df.type_str(et), nl) for n, et, nl in t.columns)


def schema_doc(t: df.TableType) -> list[Column]:
    return [Column(name=n, type=ts, nullable=nl) for n, ts, nl in _schema_fields(t)]


def loc_text(op: Operation) -> str | None:
    loc = op.location
    if type(loc) is FileLineColLoc:
        return f"{loc.filename.data}:{loc.line.data}:{loc.column.data}"  # type: ignore[attr-defined]
    return None


class ValueNames:
    """Stable ids (``v0``, ``v1``, ...) for SSA values across the whole plan."""

    def __init__(self) -> None:
        # keyed by id(): SSA values hash and compare by identity anyway, and the values named
        # are those of the module being described, which keeps them alive meanwhile
        self._ids: dict[int, str] = {}

    def __call__(self, value: SSAValue) -> str:
        ids = self._ids
        name = ids.get(id(value))
        if name is None:
            name = ids[id(value)] = f"v{len(ids)}"
        return name

    def alias(self, value: SSAValue, same_as: SSAValue) -> None:
        self._ids[id(value)] = self(same_as)


def _result_type_text(t: Attribute) -> str:
    return "table" if type(t) is df.TableType else str(attr_to_json(t))


def op_doc(op: Operation, names: ValueNames) -> OpDoc:
    return OpDoc(**_op_data(op, names))


@lru_cache(maxsize=4096)
def _schema_data(t: df.TableType) -> tuple[dict[str, Any], ...]:
    # read-only input for pydantic, which builds fresh Column models from it
    return tuple({"name": n, "type": ts, "nullable": nl} for n, ts, nl in _schema_fields(t))


def _op_data(op: Operation, names: ValueNames) -> dict[str, Any]:
    """An ``OpDoc``'s fields as plain data: pydantic validates nested plain data into models
    much faster than models are built one by one (thousands of ops and columns)."""
    results = op.results
    table = next((r.type for r in results if type(r.type) is df.TableType), None)
    return {
        "op": op.name,
        "loc": loc_text(op),
        "operands": [names(o) for o in op.operands],
        "results": [names(r) for r in results],
        "result_types": [_result_type_text(r.type) for r in results],
        "schema": list(_schema_data(table)) if table is not None else None,
        # upstream ops keep their data in properties (arith.constant value, cmp predicates)
        "attributes": {k: attr_to_json(v) for d in (op.properties, op.attributes) for k, v in d.items()},
        "regions": [[_op_data(inner, names) for inner in region.ops] for region in op.regions],
    }


def build_plan_doc(module: ModuleOp, pipeline: str, hardware: str) -> PlanDoc:
    """Reads the island graph of a lowered module: islands are ``async.execute`` ops with
    ``taskgraph.*`` attributes; table values crossing islands are ``!async.value``s."""
    names = ValueNames()
    islands: list[IslandDoc] = []
    inputs: list[TableInput] = []
    outputs: list[str] = []
    island_of_token: dict[SSAValue, str] = {}
    for fn in module.ops:
        if fn.name != "func.func":
            continue
        for op in fn.regions[0].ops:
            if op.name == "async.execute":
                name = attr_to_json(op.attributes.get("taskgraph.island", StringAttr(f"island{len(islands)}")))
                island_of_token[op.results[0]] = name
                body = op.regions[0].block
                # the body's block arguments are the unwrapped async values passed in
                body_operands = [o for o in op.operands if o not in island_of_token]
                for arg, outer in zip(body.args, body_operands):
                    names.alias(arg, outer)
                ops = [o for o in body.ops if o.name != "async.yield"]
                yielded = [o for o in body.ops if o.name == "async.yield"]
                for res, val in zip(op.results[1:], yielded[0].operands if yielded else []):
                    names.alias(res, val)
                island_ops = [_op_data(o, names) for o in ops]  # validated by IslandDoc
                for o in ops:
                    if isinstance(o, df.InputOp):
                        inputs.append(
                            TableInput(index=o.index.value.data, name=o.arg_name.data, schema_=schema_doc(o.result.type))
                        )
                ranks = op.attributes.get("taskgraph.ranks")
                device = op.attributes.get("taskgraph.device")
                pattern = op.attributes.get("taskgraph.pattern")
                islands.append(
                    IslandDoc(
                        name=name,
                        ranks=attr_to_json(ranks) if ranks is not None else 1,
                        device=attr_to_json(device) if device is not None else "cpu",
                        pattern=attr_to_json(pattern) if pattern is not None else _island_pattern(ops),
                        depends_on=[island_of_token[o] for o in op.operands if o in island_of_token],
                        inputs=[names(o) for o in body_operands],
                        outputs=[names(r) for r in op.results[1:]],
                        ops=island_ops,
                    )
                )
            elif op.name == "async.await":
                names.alias(op.results[0], op.operands[0]) if op.results else None
            elif op.name == "func.return":
                outputs = [names(o) for o in op.operands]
    return PlanDoc(pipeline=pipeline, hardware=hardware, islands=islands, inputs=inputs, outputs=outputs)


def _island_pattern(ops: list[Operation]) -> str | None:
    kinds = [PATTERNS.get(o.name) for o in ops if o.name in PATTERNS]
    return kinds[0] if kinds else None


def plan_json_text(doc: PlanDoc) -> str:
    return json.dumps(doc.model_dump(mode="json", by_alias=True), indent=2) + "\n"
