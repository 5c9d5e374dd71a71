"""Windows and set operations on SQLite shards against one in-process sqlite3 holding the same
rows (issue 10's 300,000-row window and UNION ALL queries), measured in one run.

    .venv/bin/python benchmarks/window_union.py --rows 300000 --shards 3

Prints, per query, the plan kind, the best of ``--repeat`` times on the cluster and on sqlite3,
and their ratio.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import exdb
from exdb.cluster import LocalCluster

from _common import print_table

DDL = "CREATE TABLE orders (id INTEGER PRIMARY KEY, cust INTEGER, amount REAL, qty INTEGER)"
QUERIES = {
    "window partitioned by the customer": (
        "SELECT id, cust, SUM(amount) OVER (PARTITION BY cust ORDER BY id) FROM orders"
    ),
    "window partitioned by the key": (
        "SELECT id, SUM(amount) OVER (PARTITION BY id) FROM orders WHERE qty = 1"
    ),
    "UNION ALL": (
        "SELECT id, amount FROM orders WHERE qty = 1 UNION ALL SELECT id, amount FROM orders"
        " WHERE qty = 2"
    ),
    "UNION": "SELECT cust, qty FROM orders UNION SELECT qty, cust FROM orders",
}


def rows(n: int) -> list[tuple[Any, ...]]:
    """n orders of 10,000 customers."""
    rng = random.Random(10)
    return [
        (i, rng.randrange(10_000), rng.randrange(10_000) / 4, rng.randrange(5)) for i in range(n)
    ]


def best(fn: Callable[[], Any], repeat: int) -> float:
    """The best wall time of ``repeat`` runs, in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    """Load both, run each query, print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = rows(args.rows)
    plain = sqlite3.connect(":memory:")
    plain.execute(DDL)
    plain.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", data)
    plain.commit()
    out = []
    with LocalCluster(args.shards, engine="sqlite") as cluster:
        conn = exdb.connect(nodes=cluster.nodes)
        cur = conn.cursor()
        cur.execute(DDL)
        cur.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", data)
        conn.commit()
        for name, sql in QUERIES.items():
            kind = conn.explain(sql).splitlines()[0].removeprefix("plan: ")
            exdb_s = best(lambda sql=sql: conn.cursor().execute(sql).fetchall(), args.repeat)
            plain_s = best(lambda sql=sql: plain.execute(sql).fetchall(), args.repeat)
            out.append([name, kind, exdb_s, plain_s, exdb_s / plain_s])
        conn.close()
    print_table(
        f"{args.rows:,} rows, {args.shards} SQLite shards vs one in-process sqlite3",
        ["query", "plan", "exdb s", "sqlite3 s", "ratio"],
        out,
    )


if __name__ == "__main__":
    main()
