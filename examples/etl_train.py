"""Data engineering + deep learning in one pipeline: molecule descriptors -> features ->
an MLP (pure JAX) -> predictions written to Parquet.

    opgraph run examples/etl_train.py                      # local engine, one rank
    opgraph run examples/etl_train.py --engine mpi -n 2    # data-parallel training on 2 MPI ranks
    opgraph compile examples/etl_train.py --hw cloud_a100 -o out --print-ir-after-all

The molecule table (descriptors, a scaffold id, a measured solubility) and the scaffold table
are generated once into examples/data/ (``OPGRAPH_EXAMPLE_ROWS`` rows, default 100,000) and
read back from Parquet. Features: filter on molecular weight, the mean logP of each scaffold
(groupby) joined back, the scaffold family joined in and one family filtered out. The MLP
trains with adam on minibatches of 256; the returned table is the loss of each epoch, which
is the same (up to float rounding) for any number of ranks: the runtime puts the training
rows into a canonical order before its seeded shuffle and averages gradients over the ranks.
Predictions go to out/predictions/ (Parquet), the trained parameters to out/mlp_params.npz.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import opgraph as og
from example_data import ROWS, data_path, shown

FEATURES = ["mol_weight", "logp", "h_donors", "h_acceptors", "rings", "scaffold_mean_logp"]


def make_data(rows: int = ROWS) -> tuple[str, str]:
    """Molecules (numeric descriptors, a scaffold id and a measured property) + scaffolds."""
    molecules, scaffolds = data_path(f"molecules_{rows}.parquet"), data_path(f"scaffolds_{rows}.parquet")
    if not molecules.exists() or not scaffolds.exists():
        rng = np.random.default_rng(11)
        n_scaffolds = max(rows // 100, 1)
        weight = rng.normal(350, 80, rows)
        logp = rng.normal(2.5, 1.2, rows)
        donors = rng.integers(0, 6, rows).astype(np.float64)
        acceptors = rng.integers(0, 10, rows).astype(np.float64)
        rings = rng.integers(0, 5, rows).astype(np.float64)
        solubility = -0.01 * weight - 0.6 * logp + 0.2 * donors + 0.1 * acceptors + rng.normal(0, 0.3, rows)
        pq.write_table(
            pa.table(
                {
                    "mol_id": np.arange(rows),
                    "scaffold": rng.integers(0, n_scaffolds, rows),
                    "mol_weight": weight,
                    "logp": logp,
                    "h_donors": donors,
                    "h_acceptors": acceptors,
                    "rings": rings,
                    "solubility": solubility,
                }
            ),
            molecules,
        )
        pq.write_table(
            pa.table({"scaffold": np.arange(n_scaffolds), "family": np.array(["A", "B", "C"])[np.arange(n_scaffolds) % 3]}),
            scaffolds,
        )
    return shown(molecules), shown(scaffolds)


MOLECULES, SCAFFOLDS = make_data()


def mlp(params, x):
    """A two-layer perceptron: pure JAX, traced into the plan as StableHLO."""
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def init_params(n_in: int, hidden: int = 32, seed: int = 0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {
        "w1": jax.random.normal(k1, (n_in, hidden)) / np.sqrt(n_in),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, 1)) / np.sqrt(hidden),
        "b2": jnp.zeros(1),
    }


@og.pipeline
def etl_train(molecules: str = MOLECULES, scaffolds: str = SCAFFOLDS, epochs: int = 5):
    mol = og.read_parquet(molecules)
    scf = og.read_parquet(scaffolds)
    mol = mol[(mol["mol_weight"] > 100) & (mol["mol_weight"] < 700)]
    per_scaffold = mol.groupby("scaffold").agg(scaffold_mean_logp=("logp", "mean"))
    feats = mol.merge(per_scaffold, on="scaffold").merge(scf, on="scaffold")
    feats = feats[feats["family"] != "C"]
    feats = feats.assign(
        mol_weight=feats["mol_weight"] / 100.0,
        scaffold_mean_logp=feats["scaffold_mean_logp"].fillna(0.0),
    )
    X = og.dl.to_tensor(feats, FEATURES, dtype="float32")
    y = og.dl.to_tensor(feats, ["solubility"], dtype="float32")
    params, losses = og.dl.train(
        mlp, init_params(len(FEATURES)), X, y, loss="mse", optimizer="adam",
        epochs=epochs, batch_size=256, shuffle=True, seed=0, learning_rate=1e-2,
    )
    pred = og.dl.to_table(og.dl.predict(mlp, params, X), ["predicted_solubility"])
    og.write_parquet(pred, "out/predictions")
    og.dl.save(params, "out/mlp_params.npz")
    return og.dl.to_table(losses, ["loss"])


if __name__ == "__main__":
    print(etl_train().to_pandas())
