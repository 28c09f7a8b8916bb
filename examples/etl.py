"""ETL example: read, filter, map, join, groupby, sort, write.

    opgraph compile examples/etl.py --hw summit -o out --print-ir-after-all
    opgraph run examples/etl.py
The input files are generated next to this file on first use (small, seeded).
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import opgraph as og
from example_data import ROWS, data_path, shown


def make_data(rows: int = ROWS) -> tuple[str, str]:
    """Writes events/users Parquet files once; returns their paths."""
    events, users = data_path(f"events_{rows}.parquet"), data_path(f"users_{rows}.parquet")
    if not events.exists() or not users.exists():
        rng = np.random.default_rng(42)
        n_users = max(rows // 10, 1)
        countries = np.array(["US", "DE", "FR", "JP", "BR"])
        ev = pa.table(
            {
                "user_id": rng.integers(0, n_users, rows),
                "value": rng.random(rows),
                "country": countries[rng.integers(0, len(countries), rows)],
            }
        )
        us = pa.table({"user_id": np.arange(n_users), "age": rng.integers(18, 90, n_users)})
        pq.write_table(ev, events)
        pq.write_table(us, users)
    return shown(events), shown(users)


EVENTS, USERS = make_data()


@og.pipeline
def etl(events: str = EVENTS, users: str = USERS, out: str = "out/summary"):
    ev = og.read_parquet(events)
    us = og.read_parquet(users)
    ev = ev[(ev["value"] > 0.5) & ev["country"].isin(["US", "DE"])]
    ev = ev.assign(score=ev["value"] * 2 + 1)
    j = ev.merge(us, on="user_id", how="inner")
    g = j.groupby("country").agg(total=("score", "sum"), n=("score", "count"), mean_age=("age", "mean"))
    og.write_parquet(g, out)
    return g.sort_values("total", ascending=False)


if __name__ == "__main__":
    print(etl().to_pandas())
