"""Time-series example: sort by time, then rolling windows, shift and diff per row order.

    opgraph compile examples/timeseries.py --hw frontier -o out
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import opgraph as og
from example_data import ROWS, data_path, shown


def make_data(rows: int = ROWS) -> str:
    path = data_path(f"sensor_{rows}.parquet")
    if not path.exists():
        rng = np.random.default_rng(7)
        t = rng.permutation(rows).astype(np.int64)  # unordered timestamps (seconds)
        temp = 20 + np.sin(t / 600.0) * 5 + rng.normal(0, 0.5, rows)
        pq.write_table(pa.table({"t": t, "sensor": rng.integers(0, 4, rows), "temp": temp}), path)
    return shown(path)


SENSOR = make_data()


@og.pipeline
def timeseries(path: str = SENSOR, window: int = 10):
    s = og.read_parquet(path)
    s = s.sort_values("t")
    s = s.assign(
        temp_avg=s["temp"].rolling(window).mean(),
        temp_max=s["temp"].rolling(window).max(),
        prev=s["temp"].shift(1),
        delta=s["temp"].diff(1),
    )
    s = s.assign(anomaly=(s["temp"] - s["temp_avg"]).abs() > 2.0)
    alerts = s[s["anomaly"]][["t", "sensor", "temp", "temp_avg"]]
    og.write_parquet(alerts, "out/alerts")
    return s.agg(n=("t", "size"), mean_delta=("delta", "mean"), max_temp=("temp_max", "max"))


if __name__ == "__main__":
    print(timeseries().to_pandas())
