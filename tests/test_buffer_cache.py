"""The kernels' buffer cache (runtime/kernels/kernel_common.hpp: cached_alloc): big blocks
are kept after use, up to OPGRAPH_KERNEL_CACHE_MB idle, and handed out again; arrays
over them are ordinary writable numpy arrays; joins and sorts through it stay exact."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from opgraph.runtime import local_ops as L
from opgraph.runtime.kernels import opkernels as K
from test_runtime_local import assert_same, duck


def test_a_freed_block_is_kept_and_handed_out_again():
    gc.collect()
    idle0, budget = K.buffer_cache_stats()
    assert budget == 1 << 30
    a = K.cached_empty(1_000_000, np.int64)
    assert a.flags.writeable and a.shape == (1_000_000,) and a.dtype == np.int64
    a[:] = np.arange(1_000_000)
    assert int(a.sum()) == 999_999 * 1_000_000 // 2
    address = a.ctypes.data
    del a
    idle1, _ = K.buffer_cache_stats()
    assert idle1 >= idle0 + 8_000_000
    b = K.cached_empty(900_000, np.float64)  # fits the kept block: no new mapping
    assert b.ctypes.data == address
    assert K.buffer_cache_stats()[0] == idle0
    small = K.cached_empty(10, np.int32)  # below 1 MiB: malloc, never kept
    del small
    assert K.buffer_cache_stats()[0] == idle0


def test_budget_zero_keeps_nothing():
    code = (
        "import numpy as np\n"
        "from opgraph.runtime.kernels import opkernels as K\n"
        "a = K.cached_empty(4_000_000, np.int64); a[:] = 1; del a\n"
        "print(K.buffer_cache_stats())\n"
    )
    env = {**os.environ, "OPGRAPH_KERNEL_CACHE_MB": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(0, 0)"


@settings(max_examples=12, deadline=None)
@given(n=st.integers(0, 150_000), m=st.integers(1, 150_000), seed=st.integers(0, 2**16))
def test_repeated_joins_and_sorts_through_the_cache_equal_duckdb(n, m, seed):
    """Blocks come back holding an earlier call's values: every result must still be exact."""
    rng = np.random.default_rng(seed)
    # payloads distinct to 6 digits: assert_same orders rows by values rounded that far
    left = pa.table({"k": rng.integers(0, m, n), "x": rng.permutation(n).astype(np.float64)})
    right = pa.table({"k": rng.permutation(m).astype(np.int64), "y": rng.permutation(m).astype(np.float64)})
    schema = pa.schema([("k", pa.int64()), ("x", pa.float64()), ("y", pa.float64())])
    expected = duck("SELECT l.k, x, y FROM l JOIN r USING (k)", l=left, r=right)
    for _ in range(2):
        assert_same(L.join(left, right, "inner", ["k"], ["k"], schema), expected)
    order = K.sort_indices([left.column("k")], [False])
    assert np.array_equal(np.asarray(left.column("k"))[order], np.sort(np.asarray(left.column("k")), kind="stable"))


def test_local_shared_segments_come_from_the_cache_and_are_never_shared_while_held():
    """The thread ranks' shared segment is one block of the cache: every rank sees the
    others' writes, the block goes back once the last view is gone (the next segment
    reuses it), and a segment still held is never handed out again."""
    from opgraph.runtime.local_comm import run_ranks

    nbytes = 8 << 20

    def body(comm):
        seg = comm.shared_segment(nbytes)
        words = seg.view(np.int64)
        half = len(words) // comm.size  # (nbytes divides evenly)
        words[comm.rank * half : (comm.rank + 1) * half] = comm.rank + 1
        comm.barrier()
        seen = np.unique(words).tolist()
        comm.barrier()
        return seg.ctypes.data, seen, seg

    gc.collect()
    first = run_ranks(2, body)
    assert first[0][0] == first[1][0]  # one block for both ranks
    assert first[0][1] == first[1][1] == [1, 2]
    held = first[0][2]  # a view over the first block, still alive
    del first
    second = run_ranks(2, body)
    assert second[0][0] != held.ctypes.data  # held: not handed out again
    assert np.unique(held.view(np.int64)).tolist() == [1, 2]  # untouched
    idle = K.buffer_cache_stats()[0]
    del second
    gc.collect()
    assert K.buffer_cache_stats()[0] >= idle + nbytes  # dropped: back in the cache
    idle = K.buffer_cache_stats()[0]
    third = run_ranks(2, body)
    assert K.buffer_cache_stats()[0] <= idle - nbytes  # the next segment: a kept block, no new pages
    assert third[0][1] == [1, 2]
