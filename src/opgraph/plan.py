"""The compiled plan: final IR text plus ``plan.json``, a versioned, data-only description
of the island task graph that the runtime reads (no code, nothing pickled)."""

from __future__ import annotations

from functools import lru_cache
from io import StringIO
from typing import Any

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
from opgraph.plan_schema import (  # noqa: F401  (re-exported: the plan.json models)
    PATTERNS,
    PLAN_VERSION,
    Column,
    IslandDoc,
    OpDoc,
    PlanDoc,
    TableInput,
    TransferDoc,
    plan_json_text,
)


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
        # locations are immutable and shared by the ops traced at one place: text once each
        cached = _loc_texts.get(id(loc))
        if cached is None or cached[0] is not loc:
            if len(_loc_texts) >= 1 << 16:
                _loc_texts.clear()
            text = f"{loc.filename.data}:{loc.line.data}:{loc.column.data}"  # type: ignore[attr-defined]
            cached = _loc_texts[id(loc)] = (loc, text)
        return cached[1]
    return None


# id(location) -> (location, its text); the entry keeps the location alive, so its id
# cannot be reused while cached
_loc_texts: dict[int, tuple[Attribute, str]] = {}


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


def op_doc(op: Operation, names: ValueNames) -> OpDoc:
    return OpDoc(**_op_data(op, names))


@lru_cache(maxsize=4096)
def _schema_data(t: df.TableType) -> tuple[Column, ...]:
    # validated Column models, shared by the ops with this schema (pydantic takes model
    # instances as they are, without validating each op's columns again); read-only
    return tuple(schema_doc(t))


def _op_data(op: Operation, names: ValueNames) -> dict[str, Any]:
    """An ``OpDoc``'s fields as plain data: pydantic validates nested plain data into models
    much faster than models are built one by one (thousands of ops and columns)."""
    results = op.results
    table = None
    types = []
    for r in results:
        t = r.type
        if type(t) is df.TableType:
            if table is None:
                table = t
            types.append("table")
        else:
            types.append(str(attr_to_json(t)))
    # upstream ops keep their data in properties (arith.constant value, cmp predicates)
    attributes = {k: attr_to_json(v) for k, v in op.properties.items()} if op.properties else {}
    for k, v in op.attributes.items():
        attributes[k] = attr_to_json(v)
    return {
        "op": op.name,
        "loc": loc_text(op),
        "operands": [names(o) for o in op._operands],  # .operands wraps this tuple
        "results": [names(r) for r in results],
        "result_types": types,
        "schema": list(_schema_data(table)) if table is not None else None,
        "attributes": attributes,
        "regions": [[_op_data(inner, names) for inner in region.ops] for region in op.regions] if op.regions else [],
    }


def build_plan_doc(module: ModuleOp, pipeline: str, hardware: str) -> PlanDoc:
    """Reads the island graph of a lowered module: islands are ``async.execute`` ops with
    ``taskgraph.*`` attributes; table values crossing islands are ``!async.value``s."""
    names = ValueNames()
    islands: list[IslandDoc] = []
    inputs: list[TableInput] = []
    outputs: list[str] = []
    island_of_token: dict[SSAValue, str] = {}
    # kernel functions of lower-to-kernels: an island's func.call runs the callee's ops
    functions = {
        f.attributes["sym_name"].data if "sym_name" in f.attributes else f.properties["sym_name"].data: f  # type: ignore[union-attr]
        for f in module.ops
        if f.name == "func.func"
    }
    for fn in module.ops:
        if fn.name != "func.func" or "taskgraph.kernel" in fn.attributes:
            continue  # kernel functions are read through the islands' calls
        for op in fn.regions[0].ops:
            if op.name == "async.execute":
                name = attr_to_json(op.attributes.get("taskgraph.island", StringAttr(f"island{len(islands)}")))
                island_of_token[op.results[0]] = name
                body = op.regions[0].block
                # the body's block arguments are the unwrapped async values passed in
                body_operands = [o for o in op.operands if o not in island_of_token]
                for arg, outer in zip(body.args, body_operands):
                    names.alias(arg, outer)
                ops = _expand_kernels([o for o in body.ops if o.name != "async.yield"], functions, names)
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
                island_ranks = attr_to_json(ranks) if ranks is not None else 1
                islands.append(
                    IslandDoc(
                        name=name,
                        ranks=island_ranks,
                        device=attr_to_json(device) if device is not None else "cpu",
                        pattern=attr_to_json(pattern) if pattern is not None else _island_pattern(ops),
                        depends_on=[island_of_token[o] for o in op.operands if o in island_of_token],
                        inputs=[names(o) for o in body_operands],
                        outputs=[names(r) for r in op.results[1:]],
                        ops=island_ops,
                        **_island_extras(op, ops, yielded, body_operands, island_ranks, names),
                    )
                )
            elif op.name == "async.await":
                names.alias(op.results[0], op.operands[0]) if op.results else None
            elif op.name == "func.return":
                outputs = [names(o) for o in op.operands]
    extras: dict[str, Any] = {}
    for fn in module.ops:
        if fn.name == "func.func" and "taskgraph.makespan" in fn.attributes:
            a = fn.attributes
            makespan = attr_to_json(a["taskgraph.makespan"])
            if extras.get("makespan") is None or makespan > extras["makespan"]:
                extras = {
                    "makespan": makespan,
                    "nodes_used": attr_to_json(a.get("taskgraph.nodes_used", IntegerAttr(0, 64))),
                    "peak_memory": attr_to_json(a.get("taskgraph.peak_memory", IntegerAttr(0, 64))),
                    "node_peak_memory": attr_to_json(a.get("taskgraph.node_peak_memory", ArrayAttr([]))),
                }
    return PlanDoc(pipeline=pipeline, hardware=hardware, islands=islands, inputs=inputs, outputs=outputs, **extras)


def _expand_kernels(ops: list[Operation], functions: dict[str, Operation], names: ValueNames) -> list[Operation]:
    """Island body ops with each ``func.call`` of a kernel function replaced by the kernel's
    ops (its arguments and results aliased to the call's), and MPI setup ops dropped: the
    runtime executes the dataframe ops and brings its own communicator."""
    out: list[Operation] = []
    for o in ops:
        if o.name.startswith("mpi."):
            continue
        if o.name == "func.call":
            callee = o.properties.get("callee") or o.attributes.get("callee")
            target = functions.get(callee.root_reference.data) if isinstance(callee, SymbolRefAttr) else None
            if target is not None and target.regions[0].blocks:
                kblock = target.regions[0].block
                for arg, operand in zip(kblock.args, o.operands):
                    names.alias(arg, operand)
                ret = kblock.last_op
                out.extend(k for k in kblock.ops if k is not ret and not k.name.startswith("mpi."))
                if ret is not None:
                    for res, val in zip(o.results, ret.operands):
                        names.alias(res, val)
                continue
        out.append(o)
    return out


def kernel_name(op_name: str) -> str:
    """The named kernel an op runs as: ``df.join`` -> ``og_kernel_join``, ``comm.shuffle`` ->
    ``og_kernel_comm_shuffle``, ``dl.train`` -> ``og_kernel_dl_train``."""
    dialect, _, rest = op_name.partition(".")
    rest = rest.replace(".", "_")
    return f"og_kernel_{rest}" if dialect == "df" else f"og_kernel_{dialect}_{rest}"


def _island_extras(
    island: Operation,
    ops: list[Operation],
    yielded: list[Operation],
    body_operands: list[SSAValue],
    ranks: int,
    names: ValueNames,
) -> dict[str, Any]:
    """The compiler's choices and predictions for one island (plan.json fields)."""
    a = island.attributes
    out: dict[str, Any] = {"kernels": [kernel_name(o.name) for o in ops]}
    for key, field_name in (
        ("taskgraph.algorithm", "algorithm"),
        ("taskgraph.start", "start"),
        ("taskgraph.end", "end"),
        ("taskgraph.cost", "cost"),
        ("taskgraph.bytes_moved", "bytes_moved"),
    ):
        if key in a:
            out[field_name] = attr_to_json(a[key])
    nodes = a.get("taskgraph.nodes")
    if type(nodes) is StringAttr and nodes.data:
        ids: list[int] = []
        for part in nodes.data.split(","):
            lo, _, hi = part.partition("-")
            ids.extend(range(int(lo), int(hi or lo) + 1))
        out["nodes"] = ids
    parts: dict[str, str] = {}
    if yielded:
        for v in yielded[0].operands:
            owner = v.owner
            p = owner.attributes.get("taskgraph.partitioning") if isinstance(owner, Operation) else None
            parts[names(v)] = p.data if type(p) is StringAttr else "any"
    out["partitionings"] = parts
    transfers = []
    for v in body_operands:
        src = v.owner
        if not isinstance(src, Operation) or src.name != "async.execute":
            continue
        src_name = src.attributes.get("taskgraph.island")
        index = list(src.results).index(v) - 1
        src_yield = src.regions[0].block.last_op
        produced = src_yield.operands[index] if src_yield is not None and 0 <= index < len(src_yield.operands) else None
        producer = produced.owner if produced is not None else None
        nbytes = producer.attributes.get("df.bytes") if isinstance(producer, Operation) else None
        part = producer.attributes.get("taskgraph.partitioning") if isinstance(producer, Operation) else None
        src_ranks = src.attributes.get("taskgraph.ranks")
        transfers.append(
            {
                "value": names(v),
                "from_island": src_name.data if type(src_name) is StringAttr else "?",
                "from_ranks": attr_to_json(src_ranks) if src_ranks is not None else 1,
                "to_ranks": ranks,
                "bytes": attr_to_json(nbytes) if type(nbytes) is IntegerAttr else 0,
                "partitioning": part.data if type(part) is StringAttr else "any",
            }
        )
    out["transfers"] = transfers
    return out


def _island_pattern(ops: list[Operation]) -> str | None:
    kinds = [PATTERNS.get(o.name) for o in ops if o.name in PATTERNS]
    return kinds[0] if kinds else None
