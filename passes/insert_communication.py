"""``insert-communication``: explicit ``comm`` data movement between operators whose
partitionings differ under the chosen parallel algorithm (issue #3 item 6).

Reads the annotation contract (``taskgraph.algorithm``, ``taskgraph.ranks``,
``taskgraph.device``, ``df.bytes``; defaults: 1 rank, cpu, the op kind's usual algorithm) and
tracks the partitioning of every table through the function, mirroring what the runtime
(``runtime/parallel_ops.py``) tracks, so that no shuffle is inserted twice (join on k, then
groupby on k: one shuffle per join input, none before the groupby).

Before (``choose-parallelism`` picked 8 ranks and a shuffle-hash join)::

    %e = "df.read_parquet"() {..., taskgraph.ranks = 8 : i64}
    %u = "df.read_parquet"() {..., taskgraph.ranks = 8 : i64}
    %j = "df.join"(%e, %u) {left_on = ["k"], right_on = ["k"],
                            taskgraph.algorithm = "shuffle-hash", taskgraph.ranks = 8 : i64}

After::

    %e2 = "comm.shuffle"(%e) {kind = "hash", keys = ["k"], parts = 8 : i64,
                              taskgraph.partitioning = "hash(k)", ...} loc(<the join's>)
    %u2 = "comm.shuffle"(%u) {kind = "hash", keys = ["k"], parts = 8 : i64, ...}
    %j = "df.join"(%e2, %u2) {...}

Rules (only for ops with more than one rank; with one rank nothing moves):

==========================  ============================================================
join shuffle-hash,          ``comm.shuffle`` hash by each side's keys on every input not
sort-merge (default)        already hash-partitioned by them (same rank count); skipped
                            when a key's type differs between the sides (the runtime casts
                            to the common type and re-hashes itself)
join node-shared            nothing: the ranks (of one machine) share both tables in memory
join broadcast-right/left   ``comm.allgather`` of the broadcast side (a partitioned table:
                            every rank's rows to every rank), or ``comm.broadcast`` when the
                            side sits on one rank (a whole-table aggregate); only for the
                            join kinds that allow it (right side: inner/left; left side:
                            inner/right), otherwise the join falls back to shuffle-hash
sort sample-sort (default)  ``comm.shuffle`` kind range by the sort keys and directions (the
                            runtime's sample sort exchange), unless already range-partitioned
sort node-shared            nothing: the ranks (of one machine) bucket the rows in shared memory
groupby shuffle-reduce,     ``comm.shuffle`` hash by the keys unless the input is already
distinct shuffle-reduce     hash-partitioned by a subset of them
groupby / distinct          nothing before the op: the partial aggregation must run before
combine-shuffle-reduce      the shuffle, inside the op's kernel (local combine, shuffle of the
(default when every         partials, reduce); the op records the algorithm
aggregate decomposes)
union shuffle-hash          ``comm.shuffle`` hash by every column on both inputs (the union's
(default)                   distinct then runs locally)
aggregate (allreduce),      nothing: the collectives live inside the op's kernel (partials
window (halo), intersect,   gathered / halo rows exchanged / rows shuffled after a local
difference                  distinct); the runtime executes ``comm.halo`` only inside
                            ``df.window``
==========================  ============================================================

Inserted ops take the consumer's location, ranks and device, and carry
``taskgraph.partitioning`` (their output), ``taskgraph.bytes_moved``, ``taskgraph.cost``
(α-β, from the cost model), ``df.rows``/``df.bytes`` (of the moved table) and
``taskgraph.comm_for`` (the consumer's op name). The consumer keeps ``taskgraph.algorithm``.
"""

from __future__ import annotations

from dataclasses import dataclass

from opgraph.dialects import comm
from opgraph.dialects.dataframe import TableType
from opgraph.passes import _tg
from opgraph.passes.lower_to_islands import is_dataflow_op
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, ModuleOp, StringAttr
from xdsl.ir import Block, Operation, SSAValue
from xdsl.passes import ModulePass

DECOMPOSABLE = frozenset({"sum", "mean", "min", "max", "count", "size", "var", "std"})
# what the runtime pre-aggregates (parallel_ops._partial_specs); var/std decompose in theory
RUNTIME_DECOMPOSABLE = frozenset({"sum", "mean", "min", "max", "count", "size"})


@dataclass(frozen=True)
class Part:
    """Static partitioning of a table: kind any/hash/range/replicated/single, keys,
    ascending flags (range) and the rank count it holds for."""

    kind: str = "any"
    keys: tuple[str, ...] = ()
    ascending: tuple[bool, ...] = ()
    ranks: int = 1

    def text(self) -> str:
        if self.kind == "hash":
            return f"hash({','.join(self.keys)})"
        if self.kind == "range":
            return "range(" + ",".join(k + ("" if a else " desc") for k, a in zip(self.keys, self.ascending)) + ")"
        return self.kind

    def hashed_within(self, keys: tuple[str, ...] | list[str], ranks: int) -> bool:
        return self.kind == "hash" and self.ranks == ranks and bool(self.keys) and set(self.keys) <= set(keys)

    def survives(self, columns: list[str], changed: tuple[str, ...] | list[str] = ()) -> Part:
        if self.kind in ("any", "replicated", "single") or not self.keys:
            return self
        if any(k in changed or k not in columns for k in self.keys):
            return Part("any", ranks=self.ranks)
        return self


def _strs(attr) -> list[str]:
    return [a.data for a in attr] if isinstance(attr, ArrayAttr) else []


def _bools(attr) -> list[bool]:
    return [bool(a.value.data) for a in attr] if isinstance(attr, ArrayAttr) else []


def _columns(v: SSAValue) -> list[str]:
    t = v.type
    return t.column_names if isinstance(t, TableType) else []


def _col_type(v: SSAValue, name: str):
    t = v.type
    if isinstance(t, TableType):
        c = t.column(name)
        return c[0] if c else None
    return None


def _aggs(op: Operation) -> list[tuple[str, str, str]]:
    out = []
    aggs = op.attributes.get("aggs")
    if isinstance(aggs, ArrayAttr):
        for a in aggs:
            if isinstance(a, ArrayAttr) and len(a) == 3:
                out.append(tuple(x.data if isinstance(x, StringAttr) else str(x) for x in a))  # type: ignore[arg-type]
    return out


def default_algorithm(op: Operation) -> str:
    """The algorithm an op runs with when ``choose-parallelism`` recorded none."""
    name = op.name
    if name in ("df.join", "df.union"):
        return "shuffle-hash"
    if name == "df.sort":
        return "sample-sort"
    if name == "df.groupby_agg":
        fns = {fn for _, _, fn in _aggs(op)}
        return "combine-shuffle-reduce" if fns <= RUNTIME_DECOMPOSABLE else "shuffle-reduce"
    if name == "df.distinct":
        return "combine-shuffle-reduce"
    if name == "df.aggregate":
        return "allreduce"
    if name == "df.window":
        return "halo"
    if name.startswith("df.read_") or name == "df.input":
        return "partitioned-read"
    if name.startswith("df.write_"):
        return "partitioned-write"
    return "local"


class _Inserter:
    def __init__(self, module: ModuleOp, block: Block):
        self.module = module
        self.block = block
        self.part: dict[SSAValue, Part] = {}
        self.inserted: list[Operation] = []

    def part_of(self, v: SSAValue) -> Part:
        p = self.part.get(v)
        if p is not None:
            return p
        owner = v.owner
        ranks = _tg.ranks_of(owner) if isinstance(owner, Operation) else 1
        return Part("any", ranks=ranks)

    # ----------------------------------------------------------------- insertion
    def insert(self, new: Operation, consumer: Operation, index: int, out: Part, kind: str) -> None:
        value = consumer.operands[index]
        owner = value.owner
        r = _tg.ranks_of(consumer)
        device = _tg.device_of(consumer)
        nbytes = _tg.bytes_of(owner) if isinstance(owner, Operation) else 0
        attrs = new.attributes
        attrs[_tg.RANKS] = _tg.i64_attr(r)
        attrs[_tg.DEVICE] = _tg.str_attr(device)
        pattern = consumer.attributes.get(_tg.PATTERN)
        if pattern is not None:
            attrs[_tg.PATTERN] = pattern
        attrs[_tg.ALGORITHM] = _tg.str_attr(_tg.get_str(consumer, _tg.ALGORITHM, default_algorithm(consumer)))
        attrs[_tg.PARTITIONING] = _tg.str_attr(out.text())
        moved = nbytes if kind != "allgather" else nbytes * max(r - 1, 0)
        attrs[_tg.BYTES_MOVED] = _tg.i64_attr(int(moved))
        attrs[_tg.COST] = _tg.f64_attr(_tg.collective_seconds(self.module, kind, nbytes, r, device))
        if isinstance(owner, Operation):
            for k in (_tg.ROWS, _tg.BYTES):
                if k in owner.attributes:
                    attrs[k] = owner.attributes[k]
        attrs["taskgraph.comm_for"] = _tg.str_attr(consumer.name)
        new.location = consumer.location
        self.block.insert_op_before(new, consumer)
        consumer.operands[index] = new.results[0]
        self.part[new.results[0]] = out
        self.inserted.append(new)

    def hash_shuffle(self, consumer: Operation, index: int, keys: list[str]) -> None:
        r = _tg.ranks_of(consumer)
        v = consumer.operands[index]
        self.insert(comm.ShuffleOp(v, "hash", keys, r), consumer, index, Part("hash", tuple(keys), ranks=r), "shuffle")

    # ----------------------------------------------------------------- per op
    def visit(self, op: Operation) -> None:
        name = op.name
        r = _tg.ranks_of(op)
        algo = _tg.get_str(op, _tg.ALGORITHM, "") or default_algorithm(op)
        if r > 1:
            if name == "df.join":
                self.join(op, algo, r)
            elif name == "df.sort":
                by = tuple(_strs(op.attributes.get("by")))
                asc = tuple(_bools(op.attributes.get("ascending")))
                p = self.part_of(op.operands[0])
                wanted = Part("range", by, asc, r)
                if algo in ("sample-sort", "sort", "range") and by and p != wanted:
                    self.insert(comm.ShuffleOp(op.operands[0], "range", list(by), r, list(asc)), op, 0, wanted, "shuffle")
            elif name == "df.union" and algo in ("shuffle-hash", "shuffle"):
                # union = concat + distinct: inputs hashed alike by every column make the
                # distinct local (intersect/difference shuffle inside their kernel)
                cols = _columns(op.results[0])
                for index in (0, 1):
                    if _columns(op.operands[index]) == cols and not self.part_of(op.operands[index]).hashed_within(cols, r):
                        self.hash_shuffle(op, index, cols)
            elif name in ("df.groupby_agg", "df.distinct"):
                if name == "df.groupby_agg":
                    keys = _strs(op.attributes.get("keys"))
                else:
                    subset = op.attributes.get("subset")
                    keys = _strs(subset) if subset is not None else _columns(op.operands[0])
                p = self.part_of(op.operands[0])
                if algo in ("shuffle-reduce", "shuffle") and keys and not p.hashed_within(keys, r):
                    self.hash_shuffle(op, 0, keys)
        self.propagate(op, r)

    def join(self, op: Operation, algo: str, r: int) -> None:
        how = _tg.get_str(op, "how", "inner")
        left_on, right_on = _strs(op.attributes.get("left_on")), _strs(op.attributes.get("right_on"))
        lv, rv = op.operands[0], op.operands[1]
        if algo in ("broadcast-right", "broadcast-left", "broadcast"):
            side = 0 if algo == "broadcast-left" else 1
            allowed = ("inner", "right") if side == 0 else ("inner", "left")
            if how in allowed:
                v = op.operands[side]
                p = self.part_of(v)
                if p.kind != "replicated" or p.ranks != r:
                    owner = v.owner
                    on_root = p.kind == "single" and isinstance(owner, Operation) and owner.name == "df.aggregate"
                    new = comm.BroadcastOp(v, 0) if on_root else comm.AllGatherOp(v)
                    kind = "broadcast" if on_root else "allgather"
                    self.insert(new, op, side, Part("replicated", ranks=r), kind)
                return
            # the join kind does not allow broadcasting that side: shuffle-hash instead
        if algo in ("local", "node-shared") or not left_on:
            return  # (node-shared: the ranks share the tables in memory, nothing moves)
        if any(_col_type(lv, a) != _col_type(rv, b) for a, b in zip(left_on, right_on)):
            return  # the runtime shuffles both sides on the common key type itself
        for index, keys in ((0, left_on), (1, right_on)):
            p = self.part_of(op.operands[index])
            if not (p.kind == "hash" and p.keys == tuple(keys) and p.ranks == r):
                self.hash_shuffle(op, index, keys)

    # --------------------------------------------------------- partitioning flow
    def propagate(self, op: Operation, r: int) -> None:
        if not op.results:
            return
        out = op.results[0]
        cols = _columns(out)
        name = op.name
        ins = [self.part_of(v) for v in op.operands]
        p = ins[0] if ins else Part("any", ranks=r)
        if name in ("df.filter", "df.head"):
            res = p
        elif name in ("df.project", "df.drop"):
            res = p.survives(cols)
        elif name == "df.map":
            res = p.survives(cols, _strs(op.attributes.get("names")))
        elif name == "df.window":
            res = p.survives(cols, [_tg.get_str(op, "output", "")])
        elif name == "df.rename":
            m = dict(zip(_strs(op.attributes.get("old_names")), _strs(op.attributes.get("new_names"))))
            res = Part(p.kind, tuple(m.get(k, k) for k in p.keys), p.ascending, p.ranks) if p.keys else p
        elif name == "df.join":
            lo, ro = _strs(op.attributes.get("left_on")), _strs(op.attributes.get("right_on"))
            lp, rp = ins[0], ins[1]
            if r == 1:
                res = Part("single", ranks=1)
            elif rp.kind == "replicated" or lp.kind == "replicated":
                res = Part("any", ranks=r)
            elif _tg.get_str(op, "taskgraph.algorithm", "") == "node-shared" and not (
                lp.kind == "hash" and lp.keys == tuple(lo) and rp.kind == "hash" and rp.keys == tuple(ro)
            ):
                res = Part("any", ranks=r)  # the runtime's node-shared join leaves rows where they were
            else:
                res = Part("hash", tuple(lo), ranks=r) if lo == ro else Part("any", ranks=r)
        elif name == "df.groupby_agg":
            keys = tuple(_strs(op.attributes.get("keys")))
            res = p if (r > 1 and p.hashed_within(keys, r)) else Part("hash", keys, ranks=r)
        elif name == "df.distinct":
            subset = op.attributes.get("subset")
            keys = tuple(_strs(subset)) if subset is not None else tuple(_columns(op.operands[0]))
            res = p if (r > 1 and p.hashed_within(keys, r)) else Part("hash", keys, ranks=r)
        elif name in ("df.union", "df.intersect", "df.difference"):
            res = Part("hash", tuple(cols), ranks=r)
        elif name == "df.concat":
            res = p if (p.kind == "hash" and ins[1] == p) else Part("any", ranks=r)
        elif name == "df.sort":
            res = Part("range", tuple(_strs(op.attributes.get("by"))), tuple(_bools(op.attributes.get("ascending"))), r)
        elif name == "df.aggregate":
            res = Part("single", ranks=1)
        elif name == "comm.shuffle":
            res = self.part.get(out) or Part(
                _tg.get_str(op, "kind", "hash"), tuple(_strs(op.attributes.get("keys"))),
                tuple(_bools(op.attributes.get("ascending"))) if _tg.get_str(op, "kind", "hash") == "range" else (),
                r,
            )
        elif name in ("comm.broadcast", "comm.allgather"):
            res = Part("replicated", ranks=r)
        elif name == "comm.gather":
            res = Part("single", ranks=1)
        else:
            res = Part("any", ranks=r)
        if r == 1 and res.kind not in ("replicated",):
            res = Part(res.kind, res.keys, res.ascending, 1)
        for v in op.results:
            self.part.setdefault(v, res)


def insert_in_block(module: ModuleOp, block: Block) -> list[Operation]:
    ins = _Inserter(module, block)
    for op in list(block.ops):
        if is_dataflow_op(op):
            ins.visit(op)
    return ins.inserted


@dataclass(frozen=True)
class InsertCommunication(ModulePass):
    """Inserts comm.shuffle/broadcast/allgather between ops whose partitionings differ
    under the chosen parallel algorithms."""

    name = "insert-communication"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for fn in [o for o in op.body.block.ops if isinstance(o, func.FuncOp)]:
            if fn.body.blocks:
                insert_in_block(op, fn.body.blocks[0])

