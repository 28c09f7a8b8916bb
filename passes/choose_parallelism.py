"""``choose-parallelism``: per dataflow op the parallel algorithm, rank count and device that
minimise the predicted makespan of the whole graph (cost model: ``passes/cost_model.py``,
sizes: ``annotate-statistics``, run here first when ``df.rows`` is missing).

Writes on every top-level dataflow op (the annotation contract, CONVENTIONS.md #3)::

    taskgraph.algorithm = "shuffle-hash"    taskgraph.ranks = 512 : i64
    taskgraph.device = "cpu"                taskgraph.partitioning = "hash(k)"   (its output)
    taskgraph.cost = 0.42 : f64             taskgraph.bytes_moved = 123456 : i64

and ``taskgraph.makespan`` (f64) on each function; a join run as a broadcast join gets
``taskgraph.pattern = "broadcast-compute"``.

Choice space, per op (every option is evaluated over a grid of rank counts: 1, 2, 4, ... up
to the machine's cores — or GPUs for GPU options — and the machine maximum itself)::

  read/input         partitioned-read                          out: any
  write              partitioned-write                         in: any
  filter/project/    local (window: halo)                      out: the input's partitioning
  map/rename/drop/                                              while its keys survive, else any
  window
  join               shuffle-hash, sort-merge: in hash(lk) / hash(rk)       out: hash(lk)
                     node-shared (inner/left, one integer key, fixed-width right columns,
                       ranks of one machine): no shuffle, one table in shared memory  out: any
                     broadcast-right (inner, left joins only): right side replicated
                     broadcast-left (inner, right joins only): left side replicated
                     (outer joins: no broadcast)                          out: any
  groupby/distinct   local: input already hash-partitioned by a subset of the keys
                     combine-shuffle-reduce (every aggregate decomposable: sum, count, mean,
                       min, max, var, std, size): local pre-aggregation, shuffle of partials
                     shuffle-reduce: in hash(keys)                        out: hash(keys)
  union/intersect/   shuffle-hash on all columns                          out: hash(columns)
  difference
  concat             local                                                out: any
  sort               sample-sort (regular sampling: r-1 samples per rank gathered, sorted on
                     one rank, r-1 splitters broadcast, rows partitioned by splitter,
                     all-to-all, local merge)                              out: range(by)
                     node-shared (one i8..i64/f32/f64 key, fixed-width columns, ranks of
                       one machine): no exchange, one bucketed array in shared memory
                                                                           out: range(by)
  aggregate          allreduce of partials (decomposable) else gather     out: single
  head               gather (local head, gather r*n rows, head)           out: single
  dl.train           allreduce (data parallel) on cpu or gpu              out: replicated
  dl.predict         local on cpu or gpu
  other dl ops       local; dl.params/load/save on one rank

At one rank every algorithm except partitioned I/O is recorded as ``local`` and moves nothing.

Cost of a plan = sum over ops of (option cost at its rank count + the cost of bringing each
input from its producer's partitioning and rank count to what the option requires) + the
gather of returned tables to the driver. This is the makespan of a bulk-synchronous
execution, one op after the other (an upper bound: the island scheduler may overlap
independent islands). Input transfers (``transfer``):

  same ranks & partitioning satisfied           0
  any, ranks r1 -> r2                           redistribute(D, r1, r2)
  hash(K) not already hash(K) on r2 ranks       redistribute + alltoall(D, r2) + hash-partition
                                                kernel on r1 ranks
  replicated                                    gather(D, r1) + broadcast(D, r2), or
                                                allgather(D, r) when r1 = r2 = r
  single (r2 = 1)                               gather(D, r1)

Search: dynamic programming over the topological order; a state is (option, rank count);
``best[v][o][r] = cost_v(o, r) + sum over inputs min_{o', r'} (best[u][o'][r'] +
transfer(u o' r' -> v o r))``, vectorised with numpy over the rank grid, O(ops * states^2).
It is exact on trees. Values used by several ops make the graph a DAG:

* small graphs (<= ``CONDITIONED_MAX_OPS`` ops, <= ``CONDITIONED_MAX_STATES`` joint states of
  the shared ops): one DP per joint state of the ops with several consumers, each pinned and
  counted once - exact (the tests check it against exhaustive search);
* larger graphs: one DP, backtracking keeps the first consumer's choice of a shared producer,
  then repair by moving rank-tied components (graphs <= ``BLOCK_REFINE_MAX_OPS`` ops) and
  coordinate descent around the shared ops.

Data-frame ops are costed on CPUs only (the runtime has no GPU dataframe kernels); DL ops
choose between CPU and GPU ranks. ``exhaustive(module)`` searches the same space by branch
and bound (tests); ``predict(module)`` returns per-op predicted seconds and the makespan of
the plan recorded in the attributes; ``scaling(module, op, grid)`` the strong-scaling curve
of one op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    FloatAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
)
from xdsl.ir import Operation
from xdsl.passes import ModulePass

from opgraph.dialects import dataframe as df
from opgraph.dialects import dl as dlops
from opgraph.dialects.walk import walk_block
from opgraph.passes.annotate_statistics import (
    BYTES_ATTR,
    ROWS_ATTR,
    annotate,
    dataflow_ops,
    fast_f64,
    fast_i64,
)
from opgraph.passes.classify_patterns import PATTERN_ATTR, classify
from opgraph.passes.cost_model import WORKING_SET_FACTOR, CostModel, rank_grid

ALGORITHM_ATTR = "taskgraph.algorithm"
RANKS_ATTR = "taskgraph.ranks"
DEVICE_ATTR = "taskgraph.device"
PARTITIONING_ATTR = "taskgraph.partitioning"
COST_ATTR = "taskgraph.cost"
MOVED_ATTR = "taskgraph.bytes_moved"
MAKESPAN_ATTR = "taskgraph.makespan"

DECOMPOSABLE = frozenset({"sum", "count", "mean", "min", "max", "var", "std", "size"})
MAX_CANDIDATES = 4
BLOCK_REFINE_MAX_OPS = 64
CONDITIONED_MAX_OPS = 64
CONDITIONED_MAX_STATES = 4096
"""Small graphs: the DP is run once per joint state of the ops with several consumers (exact)."""
"""Most distinct output partitionings tracked per value (the rest collapse to "any")."""

INF = math.inf

_EP_KIND = {
    "df.filter": "filter",
    "df.project": "project",
    "df.drop": "project",
    "df.rename": "project",
    "df.map": "map",
    "df.window": "window",
    "dl.to_tensor": "project",
    "dl.to_table": "project",
}


#: ops that select columns without copying them (Arrow tables share the buffers)
_ZERO_COPY = frozenset({"df.project", "df.drop", "df.rename"})

#: bytes per value of a column of unknown width (strings: offset + a short value)
_VARIABLE_WIDTH_BYTES = 16.0


def _column_bytes(table_type: Any, names: Any) -> float:
    total = 0.0
    for name in names:
        col = table_type.column(name)
        width = getattr(col[0], "bitwidth", None) if col is not None else None
        total += max(1.0, width / 8.0) if isinstance(width, int) else _VARIABLE_WIDTH_BYTES
    return total


def _filter_row_bytes(op: Any) -> float:
    """Bytes per input row a filter touches: the predicate's columns plus the columns kept
    for its readers (only those a ``df.project`` reader selects, as the runtime gathers)."""
    table = op.operands[0].type
    # (walk_block: a list built in one loop, not xDSL's nested generators)
    read = {o.column.data for b in op.predicate.blocks for o in walk_block(b) if type(o) is df.ColumnOp}
    return _column_bytes(table, read) + _filter_kept_bytes(op)


def _filter_kept_bytes(op: Any) -> float:
    """Bytes per row of the columns a filter keeps for its readers (see _filter_row_bytes)."""
    table = op.operands[0].type
    kept: dict[str, None] = {}
    users = [u.operation for u in op.results[0].uses]
    if users and all(isinstance(u, df.ProjectOp) for u in users):
        for u in users:
            kept.update(dict.fromkeys(_strs(u.columns)))
    else:
        kept = dict.fromkeys(table.column_names)
    return _column_bytes(table, kept)


#: element types of a node-shared join: integer keys, fixed-width right columns
_SHARED_KEY_TYPES = ("i8", "i16", "i32", "i64")
_SHARED_VALUE_TYPES = (*_SHARED_KEY_TYPES, "f32", "f64")


def _node_shared_join_applies(op: df.JoinOp) -> bool:
    """Whether the runtime's node-shared join (``runtime/parallel_ops.py``) takes this join:
    inner/left, one integer key, right output columns of fixed width."""
    lk, rk = _strs(op.left_on), _strs(op.right_on)
    if op.how.data not in ("inner", "left") or len(lk) != 1 or len(rk) != 1:
        return False
    lt, rt = op.operands[0].type, op.operands[1].type
    if not isinstance(lt, df.TableType) or not isinstance(rt, df.TableType):
        return False
    lc, rc = lt.column(lk[0]), rt.column(rk[0])
    if lc is None or rc is None or str(lc[0]) not in _SHARED_KEY_TYPES or str(rc[0]) not in _SHARED_KEY_TYPES:
        return False
    merged = rk[0] if lk[0] == rk[0] else None
    return all(str(t) in _SHARED_VALUE_TYPES for name, t, _ in rt.columns if name != merged)


def _node_shared_sort_applies(op: df.SortOp) -> bool:
    """Whether the runtime's node-shared sort (``runtime/parallel_ops.py``) takes this sort:
    one integer or float key, every column of fixed width."""
    t = op.operands[0].type
    by = _strs(op.by)
    if len(by) != 1 or not isinstance(t, df.TableType):
        return False
    return all(str(et) in _SHARED_VALUE_TYPES for _, et, _ in t.columns)


def _groupby_row_bytes(op: Any, keys: list[str]) -> float:
    """Bytes per input row a group-by touches: its keys and each aggregated column once
    (aggregates of one column share its read: on one thread, 8M rows / 1,000 keys, sum+mean
    of one column took 0.039 s like its sum alone, sum and mean of two columns 0.050 s)."""
    columns = dict.fromkeys(keys)
    columns.update(dict.fromkeys(col for _, col, _ in df.agg_tuples(op.aggs)))
    return _column_bytes(op.operands[0].type, columns)


# ----------------------------------------------------------------------------- partitionings


def hash_p(keys: Any) -> str:
    return f"hash({','.join(keys)})"


def parse_p(p: str) -> tuple[str, tuple[str, ...]]:
    if "(" in p:
        kind, rest = p.split("(", 1)
        return kind, tuple(k for k in rest[:-1].split(",") if k)
    return p, ()


def _strs(attr: Any) -> list[str]:
    return [a.data for a in attr] if attr is not None else []


def through(op: Operation, p: str) -> str:
    """The partitioning of an embarrassingly parallel op's output given its input's."""
    if p in ("any", "single", "replicated"):
        return p
    kind, keys = parse_p(p)
    if not keys:
        return "any"
    out_t = op.results[0].type if op.results else None
    if not isinstance(out_t, df.TableType):
        return "any"
    if isinstance(op, df.RenameOp):
        m = dict(zip(_strs(op.old_names), _strs(op.new_names)))
        keys = tuple(m.get(k, k) for k in keys)
    overwritten: set[str] = set()
    if isinstance(op, df.MapOp):
        overwritten = set(_strs(op.names))
    elif isinstance(op, df.WindowOp):
        overwritten = {op.output.data}
    cols = set(out_t.column_names)
    if any(k not in cols or k in overwritten for k in keys):
        return "any"
    return f"{kind}({','.join(keys)})"


# ----------------------------------------------------------------------------- problem


@dataclass
class Option:
    alg: str
    device: str
    out: str
    reqs: list[tuple]  # per input edge: ("same",) ("hash", p) ("replicated",) ("single",) ("colo", keys) ("exact", p)
    cost: np.ndarray
    moved: Any = 0.0  # internal bytes moved: float or array over the grid
    pattern: str | None = None


@dataclass
class Node:
    op: Operation
    inputs: list[int]  # producer node per input edge
    rows: float
    nbytes: float
    options: list[Option] = field(default_factory=list)
    consumers: list[tuple[int, int]] = field(default_factory=list)  # (node, edge index)
    returned: bool = False


class Problem:
    """The choice space of one function body: nodes, options and transfer costs."""

    def __init__(self, model: CostModel, ops: list[Operation], grid: list[int], returned: set[Operation]):
        self.model = model
        self.grid = grid
        self.g = np.asarray(grid, dtype=float)
        self.R = len(grid)
        self.eye = np.eye(self.R, dtype=bool)
        self.one = self.g == 1
        self.all_ok = np.ones(self.R, dtype=bool)
        self.none_ok = np.zeros(self.R, dtype=bool)
        self.nodes: list[Node] = []
        self.index: dict[Operation, int] = {}
        self._T: dict[tuple, Any] = {}
        r1, r2 = np.meshgrid(self.g, self.g, indexing="ij")
        red0 = model.redistribute(0.0, r1, r2)
        self._red_a = red0
        self._red_b = model.redistribute(1.0, r1, r2) - red0
        self._gpu_ok = self.g <= max(model.total_gpus, 0)
        for op in ops:
            self.add(op, op in returned)

    # ---------------------------------------------------------------- building

    def add(self, op: Operation, returned: bool) -> None:
        inputs = []
        for v in op.operands:
            owner = v.owner
            if isinstance(owner, Operation) and owner in self.index:
                inputs.append(self.index[owner])
        node = Node(op, inputs, _num(op, ROWS_ATTR), _num(op, BYTES_ATTR), returned=returned)
        i = len(self.nodes)
        self.nodes.append(node)
        self.index[op] = i
        for e, u in enumerate(inputs):
            self.nodes[u].consumers.append((i, e))
        node.options = _prune(self.options_of(node))
        if returned:
            extra = self.model.gather(node.nbytes, self.g)
            for o in node.options:
                o.cost = o.cost + extra

    def candidates(self, u: int) -> list[str]:
        seen: list[str] = []
        for o in self.nodes[u].options:
            if o.out not in seen:
                seen.append(o.out)
        return seen[:MAX_CANDIDATES]

    def options_of(self, node: Node) -> list[Option]:
        m, g, op = self.model, self.g, node.op
        name = op.name
        ins = [self.nodes[u] for u in node.inputs]
        n_in = sum(x.rows for x in ins)
        b_in = sum(x.nbytes for x in ins)
        ws_total = WORKING_SET_FACTOR * (b_in + node.nbytes)

        def guard(t: np.ndarray, total: float = ws_total, device: str = "cpu") -> np.ndarray:
            return m.guard_total(t, total, g, device)

        if isinstance(op, df.ReadParquetOp | df.ReadCsvOp | df.ReadIpcOp):
            kind = name.split(".")[1]
            t = m.read(kind, node.rows, node.nbytes, g)
            return [Option("partitioned-read", "cpu", "any", [], guard(t), node.nbytes)]
        if isinstance(op, df.InputOp):
            t = m.overhead("read_ipc") + m.redistribute(node.nbytes, 1.0, g) + m.sync(g)
            return [Option("partitioned-read", "cpu", "any", [], guard(t), np.where(g > 1, node.nbytes, 0.0))]
        if isinstance(op, df.WriteParquetOp | df.WriteCsvOp | df.WriteIpcOp):
            kind = name.split(".")[1]
            t = m.write(kind, n_in, b_in, g)
            return [Option("partitioned-write", "cpu", "single", [("same",)] * len(ins), guard(t), 0.0)]
        if name in _EP_KIND or not (name.startswith(("df.", "dl."))):
            if not ins:
                return [self._single_rank("local", "single")]
            if name in _ZERO_COPY:
                t = m.compute("project", n_in, b_in, g, touch=0.0)
            elif isinstance(op, df.FilterOp):
                row_bytes = _filter_row_bytes(op)
                kept = _filter_kept_bytes(op)
                selectivity = min(1.0, node.rows / n_in) if n_in > 0 else 1.0
                # memory traffic: every touched byte read once, the kept rows written once
                touch = 1.0 + kept * selectivity / row_bytes if row_bytes > 0 else 2.0
                t = m.compute("filter", n_in, b_in, g, touch=touch, row_bytes=row_bytes)
            else:
                t = m.compute(_EP_KIND.get(name, "project"), n_in, b_in, g)
            alg = "local"
            if isinstance(op, df.WindowOp):
                w = node.nbytes / max(node.rows, 1.0)
                t = t + m.halo(op.param.value.data * w, g)
                alg = "halo"
            t = guard(t)
            if len(ins) != 1:
                return [Option(alg, "cpu", "any", [("same",)] * len(ins), t)]
            # one input: the op runs where its input is (same ranks, partitioning carried
            # through); rank changes happen at the ops that move data anyway
            outs = [o.out for o in self.nodes[node.inputs[0]].options]
            cands = list(dict.fromkeys(outs))
            opts = [Option(alg, "cpu", through(op, p), [("exact", p)], t) for p in cands[:MAX_CANDIDATES]]
            if len(cands) > MAX_CANDIDATES:
                opts.append(Option(alg, "cpu", "any", [("same",)], t))
            return opts
        if isinstance(op, df.ConcatOp):
            t = guard(m.compute("concat", n_in, b_in, g))
            return [Option("local", "cpu", "any", [("same",), ("same",)], t)]
        if isinstance(op, df.JoinOp):
            return self._join_options(node, ins)
        if isinstance(op, df.GroupByAggOp | df.DistinctOp):
            return self._groupby_options(node, ins)
        if isinstance(op, df.UnionOp | df.IntersectOp | df.DifferenceOp):
            p = hash_p(op.results[0].type.column_names)  # type: ignore[union-attr]
            t = guard(m.compute("set_op", n_in, b_in, g))
            return [Option("shuffle-hash", "cpu", p, [("hash", p), ("hash", p)], t)]
        if isinstance(op, df.SortOp):
            by = _strs(op.by)
            r = g
            key_w = 8.0 * len(by)
            samples = r * (r - 1)
            t = (
                m.compute("sort", n_in, b_in, g)
                + m.gather(samples * key_w, g)
                + np.where(r > 1, samples / m.rate("sort") * np.maximum(1.0, np.log2(np.maximum(samples, 2.0)) / 23.25), 0.0)
                + m.broadcast((r - 1) * key_w, g)
                # every row's part from the splitters, rows grouped by part and gathered
                + np.where(r > 1, m.compute("range_partition", n_in, b_in, g), 0.0)
                + m.alltoall(b_in, g)
                + m.compute("concat", n_in, b_in, g)
            )
            moved = np.where(r > 1, b_in * (r - 1) / r + samples * key_w, 0.0)
            out = f"range({','.join(by)})"
            opts = [Option("sample-sort", "cpu", out, [("same",)], guard(t), moved)]
            if _node_shared_sort_applies(op):
                # no exchange: the ranks of one machine scatter their rows' keys into one
                # shared array and copy their columns in; skewed keys at run time fall back to
                # the sample sort inside the op (runtime/parallel_ops.py)
                t_ns = m.compute("sort", n_in, b_in, g) + m.compute("concat", n_in, b_in, g)
                opts.append(Option("node-shared", "cpu", out, [("same",)], np.where(g <= m.cores_per_node, guard(t_ns), INF)))
            return opts
        if isinstance(op, df.AggregateOp):
            fns = {fn for _, _, fn in df.agg_tuples(op.aggs)}
            width = 24.0 * len(op.aggs)
            if fns <= DECOMPOSABLE:
                t = m.compute("aggregate", n_in, b_in, g) + m.allreduce(width, g)
                return [Option("allreduce", "cpu", "single", [("same",)], guard(t), np.where(g > 1, width * g, 0.0))]
            t = m.gather(b_in, g) + m.compute("aggregate", n_in, b_in, 1.0)
            t = m.guard(t, 2 * b_in + 0.0 * g, g)
            return [Option("gather", "cpu", "single", [("same",)], t, np.where(g > 1, b_in, 0.0))]
        if isinstance(op, df.HeadOp):
            n = float(op.n.value.data)
            w = node.nbytes / max(node.rows, 1.0)
            part = np.minimum(n, n_in / g) * g * w
            t = m.compute("head", np.minimum(n * g, n_in), part, g) + m.gather(part, g)
            return [Option("gather", "cpu", "single", [("same",)], guard(t), np.where(g > 1, part, 0.0))]
        if name in ("dl.train", "dl.predict", "dl.sweep"):
            return self._dl_options(node, ins)
        # dl.params, dl.load, dl.save and other ops: one rank
        return [self._single_rank("local", "single", [("single",)] * len(ins))]

    def _single_rank(self, alg: str, out: str, reqs: list[tuple] | None = None) -> Option:
        t = np.where(self.one, self.model.overhead("project"), INF)
        return Option(alg, "cpu", out, reqs or [], t)

    def _join_options(self, node: Node, ins: list[Node]) -> list[Option]:
        m, g, op = self.model, self.g, node.op
        assert isinstance(op, df.JoinOp)
        left, right = ins[0], ins[1] if len(ins) > 1 else ins[0]
        lk, rk = _strs(op.left_on), _strs(op.right_on)
        how = op.how.data
        n_in, b_in = left.rows + right.rows, left.nbytes + right.nbytes
        ws = WORKING_SET_FACTOR * (b_in + node.nbytes)
        out = hash_p(lk) if (how in ("inner", "left") or lk == rk) else "any"
        reqs = [("hash", hash_p(lk)), ("hash", hash_p(rk))]
        t_hash = m.guard_total(m.compute("join", n_in, b_in, g), ws, g)
        t_sm = m.guard_total(m.compute("sort", n_in, b_in, g) + m.compute("concat", n_in + node.rows, b_in + node.nbytes, g), ws, g)
        opts = [Option("shuffle-hash", "cpu", out, reqs, t_hash), Option("sort-merge", "cpu", out, reqs, t_sm)]

        def bcast(big: Node, small: Node, side: str) -> Option:
            t = m.compute("join", big.rows + small.rows * g, big.nbytes + small.nbytes * g, g)
            req = [("same",), ("replicated",)] if side == "right" else [("replicated",), ("same",)]
            t = m.guard_total(t, WORKING_SET_FACTOR * (big.nbytes + node.nbytes), g, replicated=WORKING_SET_FACTOR * small.nbytes)
            return Option(f"broadcast-{side}", "cpu", "any", req, t, pattern="broadcast-compute")

        if _node_shared_join_applies(op):
            # no shuffle: the ranks of one machine build one table in shared memory (the
            # right rows copied in, every rank scans all right keys); sparse keys at run time
            # fall back to shuffling inside the op (runtime/parallel_ops.py)
            t_ns = t_hash + m.compute("concat", right.rows, right.nbytes, g)
            opts.append(Option("node-shared", "cpu", "any", [("same",), ("same",)], np.where(g <= m.cores_per_node, t_ns, INF)))
        if how in ("inner", "left"):
            opts.append(bcast(left, right, "right"))
        if how in ("inner", "right"):
            opts.append(bcast(right, left, "left"))
        return opts

    def _groupby_options(self, node: Node, ins: list[Node]) -> list[Option]:
        m, g, op = self.model, self.g, node.op
        src = ins[0]
        if isinstance(op, df.GroupByAggOp):
            keys = _strs(op.keys)
            fns = {fn for _, _, fn in df.agg_tuples(op.aggs)}
            decomposable = fns <= DECOMPOSABLE
            kind = "groupby"
        else:
            keys = _strs(op.subset) if op.subset is not None else op.results[0].type.column_names  # type: ignore[union-attr]
            decomposable = True
            kind = "distinct"
        p = hash_p(keys)
        ws = WORKING_SET_FACTOR * (src.nbytes + node.nbytes)
        row_bytes = _groupby_row_bytes(op, keys) if isinstance(op, df.GroupByAggOp) else None
        local = m.guard_total(m.compute(kind, src.rows, src.nbytes, g, row_bytes=row_bytes), ws, g)
        opts = []
        for c in self.candidates(node.inputs[0]):
            ck, cols = parse_p(c)
            if ck == "hash" and cols and set(cols) <= set(keys):
                opts.append(Option("local", "cpu", c, [("colo", frozenset(keys))], local))
        if decomposable:
            groups = max(node.rows, 1.0)
            w = node.nbytes / groups
            partial_rows = g * np.minimum(src.rows / g, groups)
            partial_bytes = partial_rows * w
            t = local + m.alltoall(partial_bytes, g)
            t = t + m.compute(kind, partial_rows, partial_bytes, g)
            moved = np.where(g > 1, partial_bytes * (g - 1) / g, 0.0)
            opts.append(Option("combine-shuffle-reduce", "cpu", p, [("same",)], t, moved))
        opts.append(Option("shuffle-reduce", "cpu", p, [("hash", p)], local))
        return opts

    def _dl_options(self, node: Node, ins: list[Node]) -> list[Option]:
        m, g, op = self.model, self.g, node.op
        name = op.name
        flops_attr = op.attributes.get("dl.flops")
        # JAX's cost analysis at trace time, per row of x (forward; train: forward + backward)
        per_row = op.attributes.get(dlops.FLOPS_ATTR)
        x = ins[0] if ins else node
        params = ins[-1] if len(ins) >= 2 else None
        p_bytes = params.nbytes if params is not None else 4e6
        n_params = p_bytes / 4.0
        rows = x.rows
        data_bytes = sum(i.nbytes for i in ins[:-1]) if len(ins) > 1 else x.nbytes
        opts = []
        for device in ("cpu", "gpu"):
            # dl.cpu_only: the plan carries the model for the CPU alone (no CUDA lowering)
            if device == "gpu" and (m.total_gpus == 0 or dlops.CPU_ONLY_ATTR in op.attributes):
                continue
            if name == "dl.predict":
                if isinstance(flops_attr, FloatAttr | IntegerAttr):
                    flops = float(flops_attr.value.data)
                elif isinstance(per_row, FloatAttr):
                    flops = per_row.value.data * rows
                else:
                    flops = 2 * n_params * rows
                t = m.dl_time(flops, data_bytes, p_bytes, 0.0, g, device)
                reqs = [("same",), ("replicated",)][: len(ins)]
                opts.append(Option("local", device, "any", reqs, t))
                continue
            epochs = float(op.epochs.value.data)  # type: ignore[attr-defined]
            batch = float(op.batch_size.value.data)  # type: ignore[attr-defined]
            steps = epochs * math.ceil(max(rows, 1.0) / batch)
            if isinstance(flops_attr, FloatAttr | IntegerAttr):
                flops = float(flops_attr.value.data)
            elif isinstance(per_row, FloatAttr):
                flops = per_row.value.data * rows * epochs
            else:
                flops = 6 * n_params * rows * epochs
            reqs = [("same",), ("same",), ("replicated",)][: len(ins)]
            if name == "dl.train":
                t = m.dl_time(flops, data_bytes, p_bytes, steps, g, device)
                moved = np.where(g > 1, 2 * p_bytes * steps, 0.0)
                opts.append(Option("allreduce", device, "replicated", reqs, t, moved))
            else:  # sweep: independent runs, one rank each
                runs = max(node.rows, 1.0)
                one = m.dl_time(flops, data_bytes, p_bytes, steps, 1.0, device)
                t = np.where(g <= m.max_ranks(device), np.ceil(runs / g) * one, INF)
                opts.append(Option("local", device, "single", reqs, t))
        return opts

    # ---------------------------------------------------------------- transfers

    def transfer(self, u: int, out: str, req: tuple) -> tuple[str, np.ndarray]:
        """("diag", mask over r) when only r1 == r2 (and allowed) is free, else ("full", R x R)."""
        key = (u, out, req)
        found = self._T.get(key)
        if found is not None:
            return found
        m, g, R = self.model, self.g, self.R
        node = self.nodes[u]
        D, N = node.nbytes, node.rows
        kind = req[0]
        res: tuple[str, np.ndarray]
        if kind == "exact":
            res = ("diag", self.all_ok if out == req[1] else self.none_ok)
        elif kind == "colo":
            ck, cols = parse_p(out)
            ok = ck == "hash" and bool(cols) and set(cols) <= req[1]
            res = ("diag", self.all_ok if ok else self.none_ok)
        else:
            red = self._red_a + D * self._red_b
            if kind == "same":
                res = ("full", red)
            elif kind == "hash":
                shuffle = np.where(g > 1, m.alltoall(D, g), 0.0)  # over r2
                hp = N / g / m.rate("hash_partition")  # over r1
                T = red + np.where(g[None, :] > 1, shuffle[None, :] + hp[:, None], 0.0)
                if out == req[1]:
                    T = np.where(self.eye, 0.0, T)
                res = ("full", T)
            elif kind == "replicated":
                gather = m.gather(D, g)
                bc = m.broadcast(D, g)
                T = gather[:, None] + bc[None, :]
                T = np.where(self.eye, np.minimum(T, m.allgather(D, g)[None, :]), T)
                if out == "replicated":
                    T = np.where(g[None, :] <= g[:, None], 0.0, bc[None, :] + 0.0 * T)
                T = np.where(self.one[:, None] & self.one[None, :], 0.0, T)
                res = ("full", T)
            elif kind == "single":
                T = np.full((R, R), INF)
                T[:, self.one] = m.gather(D, g)[:, None]
                res = ("full", T)
            else:  # pragma: no cover
                raise ValueError(kind)
        self._T[key] = res
        return res

    def edge_cost(self, u: int, out: str, req: tuple, r1: int, r2: int) -> float:
        kind, T = self.transfer(u, out, req)
        if kind == "diag":
            return 0.0 if (r1 == r2 and T[r2]) else INF
        return float(T[r1, r2])

    def edge_moved(self, u: int, out: str, req: tuple, r1: int, r2: int) -> float:
        D = self.nodes[u].nbytes
        a, b = self.grid[r1], self.grid[r2]
        kind = req[0]
        if kind in ("exact", "colo"):
            return 0.0
        if kind == "same":
            return D if a != b else 0.0
        if kind == "hash":
            if (out == req[1] and a == b) or (a == 1 and b == 1):
                return 0.0
            return D * (b - 1) / b + (D if a != b else 0.0)
        if kind == "replicated":
            if (a == 1 and b == 1) or (out == "replicated" and b <= a):
                return 0.0
            return D * (b - 1) + (D if a > 1 else 0.0)
        if kind == "single":
            return D * (a - 1) / a
        return 0.0

    # ---------------------------------------------------------------- evaluation

    def node_cost(self, v: int, assign: list[tuple[int, int]]) -> float:
        o, r = assign[v]
        node = self.nodes[v]
        opt = node.options[o]
        total = float(opt.cost[r])
        for e, u in enumerate(node.inputs):
            ou, ru = assign[u]
            total += self.edge_cost(u, self.nodes[u].options[ou].out, opt.reqs[e], ru, r)
        return total

    def evaluate(self, assign: list[tuple[int, int]]) -> float:
        return sum(self.node_cost(v, assign) for v in range(len(self.nodes)))

    # ---------------------------------------------------------------- search

    def solve(self) -> list[tuple[int, int]]:
        """The plan: exact conditioned DP on small graphs whose shared ops have few joint
        states, otherwise DP + backtracking + repair (see the module docstring)."""
        shared = [v for v, nd in enumerate(self.nodes) if len(nd.consumers) > 1]
        if shared and len(self.nodes) <= CONDITIONED_MAX_OPS:
            states = [[(o, r) for o in range(len(self.nodes[v].options)) for r in range(self.R)] for v in shared]
            if math.prod(len(x) for x in states) <= CONDITIONED_MAX_STATES:
                import itertools

                best_val, best_plan = INF, None
                for combo in itertools.product(*states):
                    val, plan = self._dp(dict(zip(shared, combo)))
                    if val < best_val:
                        best_val, best_plan = val, plan
                if best_plan is not None:
                    return best_plan
        _, plan = self._dp({})
        return self.refine(plan)

    def _dp(self, fixed: dict[int, tuple[int, int]]) -> tuple[float, list[tuple[int, int]]]:
        """One DP pass; ops in ``fixed`` are pinned to their (option, rank): their subtree is
        counted once (as a constant) and consumers see them at zero cost. Exact when every op
        with several consumers is pinned. Returns (DP value, plan)."""
        R = self.R
        n = len(self.nodes)
        best: list[list[np.ndarray]] = []
        back: list[list[list[tuple[np.ndarray, np.ndarray]]]] = []  # v -> o -> e -> (o' per r, r' per r)
        ar = np.arange(R)
        zeros = np.zeros(R, dtype=int)
        const = 0.0
        for v, node in enumerate(self.nodes):
            bv, kv = [], []
            pin = fixed.get(v)
            for o, opt in enumerate(node.options):
                if pin is not None and pin[0] != o:
                    bv.append(np.full(R, INF))
                    kv.append([(zeros, ar)] * len(node.inputs))
                    continue
                total = opt.cost  # never modified in place
                edges = []
                for e, u in enumerate(node.inputs):
                    req = opt.reqs[e]
                    best_c = best_o = best_r = None
                    exact = req[0] == "exact"
                    for ou, uopt in enumerate(self.nodes[u].options):
                        bu = best[u][ou]
                        if exact:  # fast path of the commonest edge: same ranks, same partitioning
                            if uopt.out != req[1]:
                                continue
                            kind, T = "diag", self.all_ok
                        else:
                            kind, T = self.transfer(u, uopt.out, req)
                        if kind == "diag":
                            if T is self.none_ok:
                                continue
                            c = bu
                            rr = ar
                        else:
                            M = bu[:, None] + T
                            rr = np.argmin(M, axis=0)
                            c = M[rr, ar]
                        if best_c is None:
                            best_c, best_r = c, rr
                            best_o = zeros if ou == 0 else np.full(R, ou)
                            continue
                        better = c < best_c
                        if better.any():
                            best_c = np.where(better, c, best_c)
                            best_o = np.where(better, ou, best_o)
                            best_r = np.where(better, rr, best_r)
                    if best_c is None:
                        best_c, best_o, best_r = np.full(R, INF), zeros, ar
                    total = total + best_c
                    edges.append((best_o, best_r))
                if pin is not None:
                    const += float(total[pin[1]])
                    total = np.where(ar == pin[1], 0.0, INF)
                bv.append(total)
                kv.append(edges)
            best.append(bv)
            back.append(kv)
        assign: list[tuple[int, int] | None] = [None] * n
        for v, state in fixed.items():
            assign[v] = state
        value = const
        for v in range(n - 1, -1, -1):
            if assign[v] is None:
                if self.nodes[v].consumers:
                    continue  # assigned by a consumer (processed later in reverse order)
                assign[v] = _argmin2(best[v])
                o, r = assign[v]
                value += float(best[v][o][r])
            self._backtrack(v, assign, back)
        for v in range(n):  # producers whose consumers all got pruned: pick their best
            if assign[v] is None:
                assign[v] = _argmin2(best[v])
        plan = [a for a in assign if a is not None]
        assert len(plan) == n
        return value, plan

    def _backtrack(self, v: int, assign: list, back: list) -> None:
        stack = [v]
        while stack:
            w = stack.pop()
            o, r = assign[w]
            for e, u in enumerate(self.nodes[w].inputs):
                if assign[u] is None:
                    bo, br = back[w][o][e]
                    assign[u] = (int(bo[r]), int(br[r]))
                    stack.append(u)

    def _diag_component(self, v: int, assign: list[tuple[int, int]]) -> list[int]:
        """``v`` and the ops tied to its rank count: connected to it through edges whose
        requirement (exact partitioning, co-location) forces equal rank counts."""
        seen = {v}
        stack = [v]
        while stack:
            w = stack.pop()
            node = self.nodes[w]
            opt = node.options[assign[w][0]]
            links = [u for e, u in enumerate(node.inputs) if opt.reqs[e][0] in ("exact", "colo")]
            for c, e in node.consumers:
                if self.nodes[c].options[assign[c][0]].reqs[e][0] in ("exact", "colo"):
                    links.append(c)
            for x in links:
                if x not in seen:
                    seen.add(x)
                    stack.append(x)
        return sorted(seen)

    def block_refine(self, assign: list[tuple[int, int]], shared: list[int]) -> list[tuple[int, int]]:
        """Moves the rank-tied component of each shared op to every rank count at once (the
        single-op descent cannot: it would break the equal-rank requirements)."""
        base = self.evaluate(assign)
        for _ in range(3):
            improved = False
            for v in shared:
                comp = self._diag_component(v, assign)
                for r in range(self.R):
                    trial = list(assign)
                    for w in comp:
                        trial[w] = (trial[w][0], r)
                    val = self.evaluate(trial)
                    if _better(val, base):
                        assign, base, improved = trial, val, True
            if not improved:
                break
        return assign

    def refine(self, assign: list[tuple[int, int]], sweeps: int = 3) -> list[tuple[int, int]]:
        """Coordinate descent over ops with several consumers (and their neighbourhoods);
        on graphs of up to ``BLOCK_REFINE_MAX_OPS`` ops also moves of rank-tied components."""
        shared = [v for v, nd in enumerate(self.nodes) if len(nd.consumers) > 1]
        if not shared:
            return assign
        if len(self.nodes) <= BLOCK_REFINE_MAX_OPS:
            assign = self.block_refine(assign, shared)
        # (a dict as an ordered set: a membership test per op, not a scan of the list)
        targets = sorted(
            dict.fromkeys(
                w for v in shared for w in [v, *[c for c, _ in self.nodes[v].consumers], *self.nodes[v].inputs]
            )
        )
        for sweep in range(sweeps):
            changed = False
            if sweep and len(self.nodes) <= BLOCK_REFINE_MAX_OPS:
                assign = self.block_refine(assign, shared)
            for v in targets:
                keep = assign[v]
                cur = float(self._local_vec(v, keep[0], assign)[keep[1]])
                best_state, best_val = keep, cur
                for o in range(len(self.nodes[v].options)):
                    vec = self._local_vec(v, o, assign)
                    r = int(np.argmin(vec))
                    if _better(float(vec[r]), best_val):
                        best_state, best_val = (o, r), float(vec[r])
                assign[v] = best_state
                changed |= best_state != keep
            if not changed:
                break
        return assign

    def _local_vec(self, v: int, o: int, assign: list[tuple[int, int]]) -> np.ndarray:
        """Over rank counts: the cost terms that depend on op ``v`` in option ``o`` (its own
        cost, its input transfers and the transfers to its consumers), neighbours fixed."""
        R = self.R
        node = self.nodes[v]
        opt = node.options[o]
        total = np.array(opt.cost, dtype=float)
        for e, u in enumerate(node.inputs):
            ou, ru = assign[u]
            kind, T = self.transfer(u, self.nodes[u].options[ou].out, opt.reqs[e])
            if kind == "diag":
                row = np.full(R, INF)
                if T[ru]:
                    row[ru] = 0.0
            else:
                row = T[ru, :]
            total += row
        for c, e in node.consumers:
            oc, rc = assign[c]
            kind, T = self.transfer(v, opt.out, self.nodes[c].options[oc].reqs[e])
            if kind == "diag":
                col = np.full(R, INF)
                if T[rc]:
                    col[rc] = 0.0
            else:
                col = T[:, rc]
            total += col
        return total

    def exhaustive(self, start: list[tuple[int, int]] | None = None) -> tuple[list[tuple[int, int]], float]:
        """Branch and bound over every (option, rank) per op, in topological order; ``start``
        (e.g. the DP plan) is the first incumbent."""
        n = len(self.nodes)
        best_val = [INF]
        best_plan: list[list[tuple[int, int]]] = [[]]
        if start is not None:
            best_val[0] = self.evaluate(start) * (1 + 1e-12)
            best_plan[0] = list(start)
        assign: list[tuple[int, int]] = [(0, 0)] * n
        # lower bound of the rest: sum of each remaining op's cheapest option cost
        floor = [float(min(np.min(o.cost) for o in nd.options)) for nd in self.nodes]
        rest = [0.0] * (n + 1)
        for v in range(n - 1, -1, -1):
            rest[v] = rest[v + 1] + (floor[v] if math.isfinite(floor[v]) else 0.0)

        def go(v: int, acc: float) -> None:
            if acc + rest[v] >= best_val[0]:
                return
            if v == n:
                best_val[0] = acc
                best_plan[0] = list(assign)
                return
            for o in range(len(self.nodes[v].options)):
                for r in range(self.R):
                    assign[v] = (o, r)
                    c = self.node_cost(v, assign)
                    if math.isfinite(c):
                        go(v + 1, acc + c)

        go(0, 0.0)
        return best_plan[0], best_val[0]

    # ---------------------------------------------------------------- results

    def describe(self, assign: list[tuple[int, int]], costs: list[float] | None = None) -> list[dict[str, Any]]:
        """Per op its choices and predictions; ``costs``: the ``node_cost`` of each op when
        already computed."""
        out = []
        for v, node in enumerate(self.nodes):
            o, r = assign[v]
            opt = node.options[o]
            ranks = self.grid[r]
            moved = float(np.asarray(opt.moved, dtype=float).reshape(-1)[r] if np.ndim(opt.moved) else opt.moved)
            if opt.alg == "partitioned-read" and ranks == 1 and isinstance(node.op, df.InputOp):
                moved = 0.0
            for e, u in enumerate(node.inputs):
                ou, ru = assign[u]
                moved += self.edge_moved(u, self.nodes[u].options[ou].out, opt.reqs[e], ru, r)
            alg = opt.alg
            if ranks == 1 and alg not in ("partitioned-read", "partitioned-write"):
                alg = "local"
            part = "single" if ranks == 1 and opt.out != "replicated" else opt.out
            if not node.op.results:
                part = "single" if ranks == 1 else "any"
            out.append(
                {
                    "op": node.op,
                    "algorithm": alg,
                    "ranks": ranks,
                    "device": opt.device,
                    "partitioning": part,
                    "cost": self.node_cost(v, assign) if costs is None else costs[v],
                    "bytes_moved": moved,
                    "pattern": opt.pattern if ranks > 1 else None,
                }
            )
        return out


def _prune(options: list[Option]) -> list[Option]:
    """Drops options dominated at every rank count by another with the same requirements,
    output partitioning and device (e.g. sort-merge when the hash join is always cheaper)."""
    if len(options) < 2:
        return options
    keep: list[Option] = []
    for o in options:
        dominated = any(
            k.reqs == o.reqs and k.out == o.out and k.device == o.device and bool(np.all(k.cost <= o.cost))
            for k in keep
        )
        if not dominated:
            keep = [
                k for k in keep
                if not (k.reqs == o.reqs and k.out == o.out and k.device == o.device and bool(np.all(o.cost < k.cost)))
            ]
            keep.append(o)
    return keep


def _better(a: float, b: float) -> bool:
    """``a`` is clearly smaller than ``b`` (relative tolerance; any finite beats inf)."""
    if not math.isfinite(b):
        return a < b
    return a < b - 1e-12 * max(1.0, abs(b))


def _argmin2(vectors: list[np.ndarray]) -> tuple[int, int]:
    best = (0, 0)
    val = INF
    for o, vec in enumerate(vectors):
        r = int(np.argmin(vec))
        if vec[r] < val:
            best, val = (o, r), float(vec[r])
    return best


def _num(op: Operation, name: str) -> float:
    a = op.attributes.get(name)
    return float(a.value.data) if isinstance(a, IntegerAttr) else 0.0


# ----------------------------------------------------------------------------- driver


def _functions(module: ModuleOp) -> list[func.FuncOp]:
    return [op for op in module.body.block.ops if isinstance(op, func.FuncOp) and op.body.blocks]


def problems(module: ModuleOp, max_ranks: int = 0, grid_factor: int = 2, grid: list[int] | None = None) -> list[tuple[func.FuncOp, Problem]]:
    """One ``Problem`` per function (statistics computed first when missing)."""
    ops = dataflow_ops(module)
    if any(ROWS_ATTR not in op.attributes for op in ops):
        annotate(module)
    model = CostModel.of(module)
    if grid is None:
        top = max_ranks if max_ranks > 0 else max(model.total_cores, model.total_gpus, 1)
        grid = rank_grid(top, grid_factor)
    by_function: dict[Operation, list[Operation]] = {}
    for op in ops:
        by_function.setdefault(op.parent_op(), []).append(op)
    out = []
    for f in _functions(module):
        body = by_function.get(f, [])
        returned: set[Operation] = set()
        last = f.body.block.last_op
        if last is not None and (not body or last is not body[-1]):
            for v in last.operands:
                if isinstance(v.owner, Operation):
                    returned.add(v.owner)
        out.append((f, Problem(model, body, grid, returned)))
    return out


def write_plan(f: func.FuncOp, problem: Problem, assign: list[tuple[int, int]], costs: list[float] | None = None) -> float:
    total = 0.0
    strs: dict[str, StringAttr] = {}

    def s(x: str) -> StringAttr:
        a = strs.get(x)
        if a is None:
            a = strs[x] = StringAttr(x)
        return a

    for d in problem.describe(assign, costs):
        op = d["op"]
        cost = d["cost"]
        total += cost
        op.attributes[ALGORITHM_ATTR] = s(d["algorithm"])
        op.attributes[RANKS_ATTR] = fast_i64(int(d["ranks"]))
        op.attributes[DEVICE_ATTR] = s(d["device"])
        op.attributes[PARTITIONING_ATTR] = s(d["partitioning"])
        op.attributes[COST_ATTR] = fast_f64(cost if math.isfinite(cost) else 1e300)
        op.attributes[MOVED_ATTR] = fast_i64(int(min(d["bytes_moved"], 2**62)))
        if d["pattern"]:
            op.attributes[PATTERN_ATTR] = s(d["pattern"])
        elif PATTERN_ATTR in op.attributes:
            op.attributes[PATTERN_ATTR] = s(classify(op))
    f.attributes[MAKESPAN_ATTR] = fast_f64(total if math.isfinite(total) else 1e300)
    return total


def choose(module: ModuleOp, max_ranks: int = 0, grid_factor: int = 2, grid: list[int] | None = None) -> float:
    """Chooses and records the plan of every function; returns the summed makespan."""
    total = 0.0
    for f, problem in problems(module, max_ranks, grid_factor, grid):
        assign = problem.solve()
        costs = [problem.node_cost(v, assign) for v in range(len(problem.nodes))]
        for v, cost in enumerate(costs):
            if not math.isfinite(cost):
                raise _infeasible(problem, v)
        total += write_plan(f, problem, assign, costs)
    return total


def _infeasible(problem: Problem, v: int) -> Exception:
    from opgraph.errors import PassError
    from opgraph.passes.verify import op_location

    node = problem.nodes[v]
    m = problem.model
    top = problem.grid[-1]
    cap = float(m.memory_cap(float(top))) if top else 0.0
    loc = op_location(node.op)
    return PassError(
        f"no parallel plan for '{node.op.name}' fits in memory on '{m.spec.name}': it holds about "
        f"{node.nbytes / 1e9:.3g} GB and a rank may use {cap / 1e9:.3g} GB at {top} ranks",
        **({"file": loc[0], "line": loc[1]} if loc else {}),
    )


def exhaustive(module: ModuleOp, max_ranks: int = 0, grid_factor: int = 2, grid: list[int] | None = None) -> tuple[float, float]:
    """(predicted cost of the DP plan, cost of the exhaustive optimum) summed over functions;
    writes nothing."""
    dp = ex = 0.0
    for _, problem in problems(module, max_ranks, grid_factor, grid):
        plan = problem.solve()
        value = problem.evaluate(plan)
        dp += value
        ex += min(problem.exhaustive(start=plan)[1], value)
    return dp, ex


@dataclass
class Prediction:
    times: dict[Operation, float]  # op -> predicted seconds (its kernel + its input transfers)
    makespan: float  # sum of the op times (bulk-synchronous, one op after another)
    critical_path: float  # longest dependency chain (the bound with unlimited concurrency)


def predict(module: ModuleOp) -> Prediction:
    """Per-op predicted seconds and the makespan of the plan recorded by
    ``choose-parallelism`` (chosen here first when the module carries no plan)."""
    ops = dataflow_ops(module)
    if any(COST_ATTR not in op.attributes for op in ops):
        choose(module)
        ops = dataflow_ops(module)
    times: dict[Operation, float] = {}
    finish: dict[Operation, float] = {}
    for op in ops:
        a = op.attributes.get(COST_ATTR)
        t = float(a.value.data) if isinstance(a, FloatAttr) else 0.0
        times[op] = t
        start = max((finish.get(v.owner, 0.0) for v in op.operands if isinstance(v.owner, Operation)), default=0.0)
        finish[op] = start + t
    return Prediction(times, sum(times.values()), max(finish.values(), default=0.0))


def scaling(module: ModuleOp, op: Operation, grid: list[int]) -> dict[str, np.ndarray]:
    """Predicted seconds of ``op`` per algorithm over ``grid`` rank counts, its inputs
    arriving on the same ranks unpartitioned ("any"): the strong-scaling curve of one op."""
    (_, problem), *_ = [(f, p) for f, p in problems(module, grid=grid) if op in p.index]
    v = problem.index[op]
    node = problem.nodes[v]
    out: dict[str, np.ndarray] = {}
    for opt in node.options:
        t = np.array(opt.cost, dtype=float)
        for e, u in enumerate(node.inputs):
            kind, T = problem.transfer(u, "any", opt.reqs[e])
            t = t + (np.where(T, 0.0, INF) if kind == "diag" else np.diag(T))
        key = f"{opt.alg}:{opt.device}"
        out[key] = np.minimum(out[key], t) if key in out else t
    return out


@dataclass(frozen=True)
class ChooseParallelism(ModulePass):
    """Chooses per op the parallel algorithm, rank count and device minimising the predicted
    makespan (cost model over the machine IR); records the taskgraph.* plan attributes."""

    name = "choose-parallelism"

    max_ranks: int = 0
    grid_factor: int = 2

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        choose(op, self.max_ranks, self.grid_factor)
