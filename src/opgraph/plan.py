"""The compiled plan: final IR text plus ``plan.json``, a versioned, data-only description
of the island task graph that the runtime reads (no code, nothing pickled)."""

from __future__ import annotations

import json
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
    if isinstance(attr, StringAttr):
        return attr.data
    if isinstance(attr, IntegerAttr):
        v = attr.value.data
        return bool(v) if attr.type.width.data == 1 else v  # type: ignore[union-attr]
    if isinstance(attr, FloatAttr):
        return attr.value.data
    if isinstance(attr, ArrayAttr):
        return [attr_to_json(a) for a in attr]
    if isinstance(attr, DictionaryAttr):
        return {k: attr_to_json(v) for k, v in attr.data.items()}
    if isinstance(attr, UnitAttr):
        return True
    if isinstance(attr, SymbolRefAttr):
        return "@" + attr.root_reference.data
    out = StringIO()
    Printer(stream=out).print_attribute(attr)
    return out.getvalue()


def schema_doc(t: df.TableType) -> list[Column]:
    return [Column(name=n, type=df.type_str(et), nullable=nl) for n, et, nl in t.columns]


def loc_text(op: Operation) -> str | None:
    loc = op.location
    if isinstance(loc, FileLineColLoc):
        return f"{loc.filename.data}:{loc.line.data}:{loc.column.data}"
    return None


class ValueNames:
    """Stable ids (``v0``, ``v1``, ...) for SSA values across the whole plan."""

    def __init__(self) -> None:
        self._ids: dict[SSAValue, str] = {}

    def __call__(self, value: SSAValue) -> str:
        if value not in self._ids:
            self._ids[value] = f"v{len(self._ids)}"
        return self._ids[value]

    def alias(self, value: SSAValue, same_as: SSAValue) -> None:
        self._ids[value] = self(same_as)


def op_doc(op: Operation, names: ValueNames) -> OpDoc:
    result_types = [attr_to_json(r.type) if not isinstance(r.type, df.TableType) else "table" for r in op.results]
    table = next((r.type for r in op.results if isinstance(r.type, df.TableType)), None)
    return OpDoc(
        op=op.name,
        loc=loc_text(op),
        operands=[names(o) for o in op.operands],
        results=[names(r) for r in op.results],
        result_types=[str(t) for t in result_types],
        schema_=schema_doc(table) if table is not None else None,
        attributes={k: attr_to_json(v) for k, v in op.attributes.items()},
        regions=[[op_doc(inner, names) for inner in region.ops] for region in op.regions],
    )


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
                island_ops = [op_doc(o, names) for o in ops]
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
