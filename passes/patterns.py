"""Which of the eight parallel patterns (DESIGN.md §2) each dataflow op follows.

An op class may declare its pattern itself with a class variable ``PATTERN = "..."``;
otherwise the table below (by op name) is used, and unknown ops are ``"opaque"``. The
pattern is the starting point; the parallelism pass may change it (e.g. a join becomes
``broadcast_compute``).
"""

from __future__ import annotations

from xdsl.ir import Operation

_BY_NAME: dict[str, str] = {
    # partitioned I/O
    "df.read_parquet": "partitioned_io",
    "df.read_csv": "partitioned_io",
    "df.read_ipc": "partitioned_io",
    "df.input": "partitioned_io",
    "df.write_parquet": "partitioned_io",
    "df.write_csv": "partitioned_io",
    "df.write_ipc": "partitioned_io",
    "dl.save": "partitioned_io",
    "dl.load": "partitioned_io",
    # embarrassingly parallel
    "df.filter": "embarrassingly_parallel",
    "df.project": "embarrassingly_parallel",
    "df.map": "embarrassingly_parallel",
    "df.rename": "embarrassingly_parallel",
    "df.drop": "embarrassingly_parallel",
    "df.concat": "embarrassingly_parallel",
    "dl.to_tensor": "embarrassingly_parallel",
    "dl.to_table": "embarrassingly_parallel",
    "dl.predict": "embarrassingly_parallel",
    # shuffle-compute
    "df.join": "shuffle_compute",
    "df.union": "shuffle_compute",
    "df.intersect": "shuffle_compute",
    "df.difference": "shuffle_compute",
    # sample-shuffle-compute
    "df.sort": "sample_shuffle_compute",
    # combine-shuffle-reduce
    "df.groupby_agg": "combine_shuffle_reduce",
    "df.distinct": "combine_shuffle_reduce",
    # globally-reduce
    "df.aggregate": "globally_reduce",
    "df.head": "globally_reduce",  # local head, gather, head
    "dl.train": "globally_reduce",  # data-parallel training: allreduce of gradients
    # halo exchange
    "df.window": "halo_exchange",
    # data movement
    "taskgraph.transfer": "transfer",
}


def pattern_of(op: Operation) -> str:
    declared = getattr(type(op), "PATTERN", None)
    if isinstance(declared, str) and declared:
        return declared
    return _BY_NAME.get(op.name, "opaque")
