"""A join that is not co-located: the self-join not on the key of issue 10, on a cluster of
SQLite (or DuckDB) shards, against one in-process database of the same engine.

Loads ``orders(id INTEGER PRIMARY KEY, cust INTEGER, amount DOUBLE)`` (300,000 rows by default,
3 rows per customer) into a cluster distributed by id and into one in-process database, then
runs ``SELECT count(*), sum(b.amount) FROM orders a JOIN orders b ON a.cust = b.cust WHERE
a.id <> b.id`` (a self-join on cust, not the key) in each of these ways, interleaved:

- floor: the in-process database;
- gather: exdb's plan before issue 10 (both tables fetched whole, joined in the client);
- broadcast: exdb's plan join, one side pushed to every shard;
- repartition: exdb's plan join, both sides re-hashed on cust through the client.

It checks that all answers agree (exit status 1 if not) and prints medians and ratios.

    python benchmarks/joins.py [--rows N] [--shards S] [--engine sqlite|duckdb] [--repeat R]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import exdb
import exdb.distributed.plan.choose as choose
import exdb.distributed.plan.join as join_plan
from exdb.cluster import LocalCluster

from _common import median, print_table

DDL = "CREATE TABLE orders (id INTEGER PRIMARY KEY, cust INTEGER, amount DOUBLE)"
QUERY = (
    "SELECT count(*), sum(b.amount) FROM orders a JOIN orders b ON a.cust = b.cust"
    " WHERE a.id <> b.id"
)


def rows(n: int) -> list[tuple[int, int, float]]:
    """Row i: (i, i mod n/3, a multiple of 1/4 so that sums are exact in any order)."""
    customers = max(1, n // 3)
    return [(i, i % customers, (i * 7919 % 1000) / 4) for i in range(n)]


def plain_database(engine: str, data: list[tuple[int, int, float]]) -> Any:
    """The floor: one in-process database holding every row."""
    if engine == "sqlite":
        conn: Any = sqlite3.connect(":memory:")
    else:
        import duckdb

        conn = duckdb.connect(":memory:")
    conn.execute(DDL)
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", data)
    return conn


def timed(run: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    answer = run()
    return time.perf_counter() - start, answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--engine", choices=["sqlite", "duckdb"], default="sqlite")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = rows(args.rows)
    plain = plain_database(args.engine, data)
    times: dict[str, list[float]] = {k: [] for k in ("floor", "gather", "broadcast", "repartition")}
    answers: dict[str, Any] = {}
    with LocalCluster(args.shards, engine=args.engine) as cluster:
        conn = exdb.connect(nodes=cluster.nodes, autocommit=True)
        conn.execute(DDL)
        for start in range(0, len(data), 100_000):
            conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", data[start : start + 100_000])
        original_join, original_max = choose.plan_join, join_plan.BROADCAST_MAX_ROWS
        for _ in range(args.repeat):
            for kind in times:
                if kind == "floor":
                    seconds, answer = timed(lambda: plain.execute(QUERY).fetchall())
                else:
                    choose.plan_join = (lambda *a: None) if kind == "gather" else original_join
                    join_plan.BROADCAST_MAX_ROWS = 0 if kind == "repartition" else 10**12
                    fresh = exdb.connect(nodes=cluster.nodes, autocommit=True)  # a new plan
                    try:
                        seconds, answer = timed(lambda f=fresh: f.execute(QUERY).fetchall())
                        if kind != "gather":
                            assert kind in fresh.explain(QUERY), fresh.explain(QUERY)
                    finally:
                        fresh.close()
                        choose.plan_join, join_plan.BROADCAST_MAX_ROWS = (
                            original_join,
                            original_max,
                        )
                times[kind].append(seconds)
                answers[kind] = [tuple(r) for r in answer]
        conn.close()
    plain.close()
    floor = median(times["floor"])
    print_table(
        f"self-join not on the key: {args.rows:,} rows, {args.shards} {args.engine} shards",
        ["plan", "median s", "x floor"],
        [[k, f"{median(v):.3f}", f"{median(v) / floor:.1f}"] for k, v in times.items()],
    )
    if len({repr(a) for a in answers.values()}) != 1:
        print(f"ANSWERS DIFFER: {answers}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
