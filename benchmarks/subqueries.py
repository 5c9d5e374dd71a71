"""Recursive planning (issue 10, item 1): a CTE, a scalar subquery and an IN subquery over a
table of N rows (default 300,000) on 2 SQLite shards, against one in-process sqlite3 holding the
same rows, measured in the same run. "before" is the same statement planned as before this
change (gathered: every table fetched whole into the client), on a second connection.

    .venv/bin/python benchmarks/subqueries.py [--rows N] [--reps R] [--engine sqlite|duckdb]

Prints, per query, the medians and the ratios exdb/in-process, before and after; exits
non-zero if any answer differs from the in-process one.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any

import exdb
from exdb.cluster import LocalCluster
from exdb.distributed.plan import choose

from _common import median, print_table

QUERIES = {
    "CTE": "WITH per AS (SELECT cust, SUM(amount) AS total, COUNT(*) AS n FROM orders"
    " GROUP BY cust) SELECT COUNT(*), AVG(total), MAX(n) FROM per",
    "scalar subquery": "SELECT COUNT(*), SUM(amount) FROM orders"
    " WHERE amount > (SELECT AVG(amount) FROM orders)",
    "IN (subquery)": "SELECT COUNT(*), SUM(amount) FROM orders"
    " WHERE cust IN (SELECT cust FROM orders WHERE qty = 1 AND amount > 995)",
}
SCHEMA = "CREATE TABLE orders (id INTEGER PRIMARY KEY, cust INTEGER, amount REAL, qty INTEGER)"


def rows(n: int) -> list[tuple[Any, ...]]:
    """Deterministic rows: 5,000 customers, amounts 0-1000, quantities 1-9."""
    rng = random.Random(7)
    return [
        (i, rng.randrange(5000), round(rng.random() * 1000, 2), rng.randrange(1, 10))
        for i in range(n)
    ]


def timed(fn: Callable[[], Any], reps: int) -> tuple[float, Any]:
    """Median seconds of ``reps`` runs, and the last answer."""
    times, answer = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        answer = fn()
        times.append(time.perf_counter() - t0)
    return median(times), answer


def same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    """Equal answers (floats within a relative tolerance: shards sum in another order)."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b, strict=True):
        for x, y in zip(ra, rb, strict=True):
            if isinstance(x, float) and isinstance(y, float):
                if abs(x - y) > 1e-9 * max(1.0, abs(x), abs(y)):
                    return False
            elif x != y:
                return False
    return True


def main() -> int:
    """Load, check and time each query; print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--engine", default="sqlite", choices=["sqlite", "duckdb"])
    args = parser.parse_args()
    data = rows(args.rows)
    if args.engine == "sqlite":
        floor: Any = sqlite3.connect(":memory:")
    else:
        import duckdb

        floor = duckdb.connect(":memory:")
    floor.execute(SCHEMA)
    floor.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", data)
    ok = True
    with LocalCluster(2, engine=args.engine) as cluster:
        after = exdb.connect(nodes=cluster.nodes, autocommit=True)
        after.cursor().execute(SCHEMA)
        after.cursor().executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", data)
        before = exdb.connect(nodes=cluster.nodes, autocommit=True)

        def run(conn: Any, sql: str) -> list[tuple[Any, ...]]:
            cur = conn.cursor()
            cur.execute(sql)
            return [tuple(r) for r in cur.fetchall()]

        table = []
        for label, sql in QUERIES.items():
            t_floor, want = timed(lambda sql=sql: floor.execute(sql).fetchall(), args.reps)
            t_after, got = timed(lambda sql=sql: run(after, sql), args.reps)
            planner = choose._plan_recursive
            choose._plan_recursive = lambda *a: None  # type: ignore[assignment]
            try:
                t_before, old = timed(lambda sql=sql: run(before, sql), args.reps)
            finally:
                choose._plan_recursive = planner  # type: ignore[method-assign]
            want = [tuple(r) for r in want]
            good = same(got, want) and same(old, want)
            ok = ok and good
            table.append(
                [
                    label,
                    after.explain(sql).splitlines()[0].removeprefix("plan: "),
                    f"{t_floor * 1000:.1f}",
                    f"{t_before * 1000:.1f}",
                    f"{t_after * 1000:.1f}",
                    f"{t_before / t_floor:.1f}x",
                    f"{t_after / t_floor:.2f}x",
                    "yes" if good else "NO",
                ]
            )
        after.close()
        before.close()
    print_table(
        f"{args.rows:,} rows, 2 {args.engine} shards vs one in-process {args.engine}"
        f" (median of {args.reps})",
        ["query", "plan", "in-process ms", "before ms", "after ms", "before", "after", "exact"],
        table,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
