"""Re-hashing into distributed intermediates (exdb.distributed.plan.rehash) against the client's
final stage, on SQLite shards, both against one in-process sqlite3 holding the same rows,
measured in one run.

    .venv/bin/python benchmarks/rehash.py --rows 300000 --shards 3

Per query: the best of ``--repeat`` times with the client's final stage (before: a threshold no
statement reaches), with the re-hash (after: every eligible statement re-hashes), one sqlite3's,
and the ratios. Every answer is checked against sqlite3's (as a multiset).
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import time
from collections import Counter
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
    "UNION": (
        "SELECT cust, amount FROM orders WHERE qty < 3 UNION SELECT cust, amount FROM orders"
        " WHERE qty > 1"
    ),
    "GROUP BY, ~rows/2 groups": (
        "SELECT id / 2, COUNT(*), SUM(amount) FROM orders GROUP BY id / 2"
    ),
}


def rows(n: int) -> list[tuple[Any, ...]]:
    """n orders of 10,000 customers."""
    rng = random.Random(10)
    return [
        (i, rng.randrange(10_000), rng.randrange(10_000) / 4, rng.randrange(5)) for i in range(n)
    ]


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The best wall time of ``repeat`` runs, in seconds, and the last answer."""
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    """Load both, run each query both ways, print the ratios."""
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
            plain_s, want = best(lambda sql=sql: plain.execute(sql).fetchall(), args.repeat)
            timings = []
            for threshold in ("1000000000000", "1"):
                os.environ["EXDB_REHASH_MIN_ROWS"] = threshold
                seconds, got = best(
                    lambda sql=sql: conn.cursor().execute(sql).fetchall(), args.repeat
                )
                if Counter(map(tuple, got)) != Counter(map(tuple, want)):
                    raise SystemExit(f"{name}: the answer differs from sqlite3's")
                timings.append(seconds)
            chosen = next(x for x in conn.explain(sql).splitlines() if "re-hash:" in x).strip()
            before, after = timings
            out.append(
                [name, chosen[17:57], before, after, plain_s, before / plain_s, after / plain_s]
            )
        os.environ.pop("EXDB_REHASH_MIN_ROWS", None)
        conn.close()
    print_table(
        f"{args.rows:,} rows, {args.shards} SQLite shards vs one in-process sqlite3",
        ["query", "explain", "client s", "rehash s", "sqlite3 s", "before", "after"],
        out,
    )


if __name__ == "__main__":
    main()
