"""``lower-to-kernels``: the last lowering step of a plan (issue #3 item 9): every op of every
island becomes a ``func.call`` to a named kernel, and islands of several ranks get the MPI
communicator they run on.

Before (an island from ``form-islands``)::

    %t, %v = "async.execute"(%in) ({
    ^bb0(%a : !df.table<...>):
      %s = "comm.shuffle"(%a) {kind = "hash", keys = ["k"], parts = 4 : i64, ...}
      %j = "df.join"(%s, ...) {...}
      "async.yield"(%j) : (!df.table<...>) -> ()
    }) {taskgraph.island = "i3_join", taskgraph.ranks = 4 : i64, ...}

After::

    %t, %v = "async.execute"(%in) ({
    ^bb0(%a : !df.table<...>):
      %world = "mpi.comm_world"() : () -> !mpi.comm
      %s = "func.call"(%a, %world) <{callee = @og_kernel_comm_shuffle_0}> {df.bytes = ..., ...}
      %j = "func.call"(%s, ..., %world) <{callee = @og_kernel_join_1}> {...}
      "async.yield"(%j) : (!df.table<...>) -> ()
    }) {...}
    "func.func"() <{sym_name = "og_kernel_join_1", sym_visibility = "private",
                    function_type = (!df.table<...>, !df.table<...>, !mpi.comm) -> !df.table<...>}> ({
    ^bb0(%l : !df.table<...>, %r : !df.table<...>, %comm : !mpi.comm):
      %o = "df.join"(%l, %r) {...}       // the op, with its attributes and expression regions
      "func.return"(%o) : (!df.table<...>) -> ()
    }) {taskgraph.kernel = "og_kernel_join", taskgraph.island = "i3_join"}

* One kernel function per op (``@og_kernel_<op>_<n>``, private), named after the runtime
  kernel it runs (``taskgraph.kernel``: ``og_kernel_join``, ``og_kernel_comm_shuffle``, see
  ``opgraph.plan.kernel_name``). Its body is the op itself - the kernel's specification with
  all attributes and expression regions - so ``plan.json`` (``opgraph.plan.build_plan_doc``
  follows each call into its kernel) still lists the dataframe ops the runtime executes.
* Values an op captures (cloned scalar helpers, other captured values) become kernel
  arguments. The call carries the op's annotations (``df.rows``, ``df.bytes``,
  ``taskgraph.partitioning``, ``taskgraph.algorithm``, ``taskgraph.cost``, ...), so the
  scheduler's and plan's reads of a yielded value's producer still work.
* An island of more than one rank starts with ``mpi.comm_world`` and passes the
  communicator (``!mpi.comm``) as the last argument of each kernel (a bulk-synchronous island
  runs all its kernels on its ranks). Table movement stays ``comm.*`` inside the kernels:
  upstream ``mpi`` collectives move ``memref`` buffers, not variable-size Arrow tables
  (there is no upstream ``alltoallv``); see ``dialects/upstream/mpi_dialect.py``.

Run it last (after ``schedule-islands``): passes before it see the dataframe ops directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from opgraph.ir_construct import new_op, replace_all_uses
from opgraph.dialects.dataframe import string_attr
from opgraph.dialects.taskgraph import ISLAND_ATTR, is_island
from opgraph.dialects.upstream.async_dialect import ExecuteOp, YieldOp
from opgraph.dialects.upstream.mpi_dialect import CommWorldOp
from opgraph.dialects.walk import walk_ops
from opgraph.passes import _tg
from opgraph.passes.lower_to_islands import is_dataflow_op
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    FunctionType,
    ModuleOp,
    StringAttr,
    SymbolRefAttr,
)
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue
from xdsl.passes import ModulePass

from opgraph.plan import kernel_name

KERNEL_ATTR = "taskgraph.kernel"
_PRIVATE = StringAttr("private")
_CALL_ATTRS = ("df.rows", "df.bytes", "df.distinct", _tg.PARTITIONING, _tg.ALGORITHM, _tg.COST, _tg.BYTES_MOVED, _tg.PATTERN)


def _function_type(inputs: list[Attribute], outputs: list[Attribute]) -> FunctionType:
    """``FunctionType.from_lists`` without re-verifying the (already verified) types: the
    constraint check of the two arrays dominated this pass on wide 1,000-op pipelines."""
    ft = FunctionType.__new__(FunctionType)
    object.__setattr__(ft, "inputs", ArrayAttr(inputs))
    object.__setattr__(ft, "outputs", ArrayAttr(outputs))
    return ft


_NO_NESTED: ArrayAttr = ArrayAttr([])


def _symbol_ref(name: str) -> SymbolRefAttr:
    """``SymbolRefAttr(name)`` without re-verifying its (empty) nested references, which
    costs about a millisecond per call in this xDSL version."""
    ref = SymbolRefAttr.__new__(SymbolRefAttr)
    object.__setattr__(ref, "root_reference", StringAttr(name))
    object.__setattr__(ref, "nested_references", _NO_NESTED)
    return ref


def _external_values(op: Operation, ops: list[Operation] | None = None) -> list[SSAValue]:
    """Values ``op`` and its nested ops (``ops``: ``walk_ops(op)``) use that are defined
    outside it (one walk: in pre-order every value defined inside is seen before its uses)."""
    if not op.regions:
        return list(dict.fromkeys(op.operands))
    out: list[SSAValue] = []
    seen: set[SSAValue] = set()
    defined: set[SSAValue] = set()
    for inner in walk_ops(op) if ops is None else ops:
        for v in inner._operands:  # the operand tuple (.operands wraps it)
            if v not in defined and v not in seen:
                seen.add(v)
                out.append(v)
        if inner.results:
            defined.update(inner.results)
        for region in inner.regions:
            for b in region.blocks:
                defined.update(b.args)
    return out


@dataclass(frozen=True)
class LowerToKernels(ModulePass):
    """Outlines every island op into a named kernel function called with func.call; islands
    of several ranks pass their MPI communicator."""

    name = "lower-to-kernels"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        block = op.body.block
        taken = {o.sym_name.data for o in block.ops if isinstance(o, func.FuncOp)}
        counter = 0
        for fn in [o for o in block.ops if isinstance(o, func.FuncOp)]:
            if not fn.body.blocks:
                continue
            kernels: list[func.FuncOp] = []
            for island in [o for o in fn.body.block.ops if isinstance(o, ExecuteOp) and is_island(o)]:
                body = island.body
                ops = [o for o in body.ops if is_dataflow_op(o) and not isinstance(o, YieldOp)]
                if not ops:
                    continue
                world: SSAValue | None = None
                if _tg.ranks_of(island) > 1:
                    w = CommWorldOp()
                    w.location = island.location
                    body.insert_op_before(w, body.first_op)  # type: ignore[arg-type]
                    world = w.results[0]
                for o in ops:
                    while True:
                        short = o.name.split(".", 1)[-1].replace(".", "_")
                        prefix = "og_kernel_" + (short if o.dialect_name() == "df" else f"{o.dialect_name()}_{short}")
                        name = f"{prefix}_{counter}"
                        counter += 1
                        if name not in taken:
                            taken.add(name)
                            break
                    kernels.append(self._outline(o, name, world, island))
            # kernels follow their pipeline function
            anchor: Operation = fn
            for k in kernels:
                block.insert_op_after(k, anchor)
                anchor = k

    @staticmethod
    def _outline(o: Operation, name: str, world: SSAValue | None, island: ExecuteOp) -> func.FuncOp:
        nested = walk_ops(o)
        args = _external_values(o, nested)
        call_args = [*args, world] if world is not None else list(args)
        arg_types = [v.type for v in call_args]
        result_types = [r.type for r in o.results]
        kblock = Block(arg_types=arg_types)
        for a, v in zip(kblock.args, call_args):
            a.location = o.location
        # Op.create: the generic constructor (the typed ones re-check every argument, which
        # costs more than everything else here on 1,000-op pipelines)
        call = new_op(
            func.CallOp,
            operands=call_args,
            result_types=result_types,
            properties={"callee": _symbol_ref(name)},
            attributes={key: o.attributes[key] for key in _CALL_ATTRS if key in o.attributes},
            location=o.location,
        )
        parent = o.parent_block()
        assert parent is not None
        parent.insert_op_before(call, o)
        for old, new in zip(o.results, call.results):
            replace_all_uses(old, new)
        o.detach()
        mapping = dict(zip(args, kblock.args))
        for inner in nested:  # detaching o changed none of its nested ops
            operands = inner._operands
            for i, v in enumerate(operands):
                if v in mapping:
                    inner.operands[i] = mapping[v]
        ret = new_op(func.ReturnOp, operands=list(o.results), location=o.location)
        kblock.add_ops([o, ret])
        attrs: dict[str, Attribute] = {KERNEL_ATTR: string_attr(kernel_name(o.name))}
        isl_name = island.attributes.get(ISLAND_ATTR)
        if isinstance(isl_name, StringAttr):
            attrs["taskgraph.in_island"] = isl_name
        kfn = new_op(
            func.FuncOp,
            properties={
                "sym_name": StringAttr(name),
                "function_type": _function_type(arg_types, result_types),
                "sym_visibility": _PRIVATE,
            },
            attributes=attrs,
            regions=[Region(kblock)],
            location=o.location,
        )
        return kfn
