"""Training throughput (samples/s) of ``og.dl.train`` on 1 and 2 ranks, local and MPI.

    python benchmarks/bench_dl.py [--rows 20000] [--epochs 4] [--hidden 64] [--repeat 2]

Each run trains an MLP (16 features -> hidden -> 1, tanh) with adam, batch 256, on a table
passed to the pipeline. The time is the ``dl.train`` op's own (the runtime's DL timeline,
``OPGRAPH_DL_TIMELINE``: from every MPI rank too), not process start or tracing; it includes
loading the compiled step from JAX's persistent cache (a fresh process per MPI run), so a
warm-up run goes first. ``samples_per_s`` = rows x epochs / seconds (the slowest rank);
``steady_samples_per_s`` leaves the fixed per-run cost out: rows x E / (t(1 + E epochs) -
t(1 epoch)). Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax.numpy as jnp
import numpy as np
import pyarrow as pa

import opgraph as og

FEATURES = [f"f{i}" for i in range(16)]


def mlp(params, x):
    h = jnp.tanh(x @ params["W1"] + params["b1"])
    return h @ params["W2"] + params["b2"]


def make(rows: int, hidden: int) -> tuple[pa.Table, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, len(FEATURES))).astype(np.float32)
    y = (np.sin(x[:, 0]) + x[:, 1] * x[:, 2]).astype(np.float32)
    cols = {name: x[:, i] for i, name in enumerate(FEATURES)} | {"y": y}
    table = pa.table(cols)
    table = table.cast(pa.schema([f.with_nullable(False) for f in table.schema]))
    init = {
        "W1": (rng.normal(size=(len(FEATURES), hidden)) / 4).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "W2": (rng.normal(size=(hidden, 1)) / np.sqrt(hidden)).astype(np.float32),
        "b2": np.zeros(1, np.float32),
    }
    return table, init


def pipeline(init: dict[str, np.ndarray], epochs: int):
    @og.pipeline
    def fit(t):
        X = og.dl.to_tensor(t, FEATURES)
        y = og.dl.to_tensor(t, ["y"])
        _, losses = og.dl.train(
            mlp, init, X, y, epochs=epochs, batch_size=256, learning_rate=1e-3
        )
        return og.dl.to_table(losses, "loss")

    return fit


def timed(fit, table: pa.Table, engine: str, ranks: int, hw: str | None = None) -> tuple[float, float, str]:
    """(seconds of the dl.train op on the slowest rank, final loss, the devices it ran on)."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl", delete=False) as f:
        path = f.name
    os.environ["OPGRAPH_DL_TIMELINE"] = path
    try:
        out = fit.run(table, engine=engine, ranks=ranks, hw=hw)
        with open(path, encoding="utf-8") as f:
            entries = [json.loads(line) for line in f if line.strip()]
    finally:
        os.environ.pop("OPGRAPH_DL_TIMELINE", None)
        os.unlink(path)
    train = [e for e in entries if e["op"] == "dl.train"]
    seconds = max(e["end"] - e["start"] for e in train)
    devices = ",".join(sorted({str(e["device"]) for e in train}))
    return seconds, float(out.column("loss").to_numpy()[-1]), devices


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--cases", default="local:1,local:2,mpi:1,mpi:2")
    ap.add_argument(
        "--hw",
        default=None,
        help="hardware spec the compiler places the training against (a YAML path or a bundled "
        "name; default: this machine, detected); a spec with GPUs lets it choose the GPU",
    )
    args = ap.parse_args(argv)
    table, init = make(args.rows, args.hidden)
    short, long = pipeline(init, 1), pipeline(init, 1 + args.epochs)
    for case in args.cases.split(","):
        engine, ranks = case.split(":")
        timed(long, table, engine, int(ranks), args.hw)  # warm-up: compiles into JAX's persistent cache
        t_long, loss, devices = min(timed(long, table, engine, int(ranks), args.hw) for _ in range(args.repeat))
        t_short, _, _ = min(timed(short, table, engine, int(ranks), args.hw) for _ in range(args.repeat))
        marginal = args.rows * args.epochs / (t_long - t_short) if t_long > t_short else None  # noise
        row = {
            "engine": engine,
            "ranks": int(ranks),
            "rows": args.rows,
            "epochs": 1 + args.epochs,
            "hidden": args.hidden,
            "device": devices,
            "train_s": round(t_long, 4),
            "samples_per_s": round(args.rows * (1 + args.epochs) / t_long),
            "steady_samples_per_s": round(marginal) if marginal else None,
            "final_loss": round(loss, 6),
        }
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    code = main()
    print(f"# total {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    sys.exit(code)
