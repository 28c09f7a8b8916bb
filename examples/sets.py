"""Set operations example: union / intersect / difference / drop_duplicates / concat.

    opgraph compile examples/sets.py --hw laptop -o out
"""

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

import opgraph as og
from example_data import ROWS, data_path, shown


def make_data(rows: int = ROWS) -> tuple[str, str]:
    paths = (data_path(f"monday_{rows}.arrow"), data_path(f"tuesday_{rows}.arrow"))
    if not all(p.exists() for p in paths):
        rng = np.random.default_rng(3)
        for path in paths:
            ids = rng.integers(0, rows // 2, rows)
            table = pa.table({"visitor": ids, "page": np.array(["home", "docs", "blog"])[ids % 3]})
            with ipc.new_file(path, table.schema) as writer:
                writer.write_table(table)
    return shown(paths[0]), shown(paths[1])


MONDAY, TUESDAY = make_data()


@og.pipeline
def sets(monday: str = MONDAY, tuesday: str = TUESDAY):
    mon = og.read_ipc(monday)
    tue = og.read_ipc(tuesday)
    both = mon.intersect(tue)
    either = mon.union(tue)
    only_monday = mon.difference(tue)
    visitors = og.concat([mon, tue]).drop_duplicates(subset=["visitor"])[["visitor"]]
    og.write_csv(only_monday, "out/only_monday")
    counts = og.concat(
        [
            both.agg(n=("visitor", "size")).assign(kind="both"),
            either.agg(n=("visitor", "size")).assign(kind="either"),
            only_monday.agg(n=("visitor", "size")).assign(kind="only_monday"),
            visitors.agg(n=("visitor", "nunique")).assign(kind="distinct_visitors"),
        ]
    )
    return counts.sort_values("kind")


if __name__ == "__main__":
    print(sets().to_pandas())
