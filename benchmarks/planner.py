"""The six query shapes of issue 10 on a 300,000-row table: exdb (2 shards) against one
in-process database of the same engine.

The table ``orders (id PRIMARY KEY, cust, amount, day)`` is distributed by its key ``id`` on 2
shards of each engine; ``cust`` takes 3,000 values. The queries are the shapes that used to
gather: a window partitioned by the customer, a CTE, a scalar subquery, ``IN (subquery)``,
``UNION ALL`` and a self-join on ``cust`` (not the key); each answer is small, so that the time
is the plan's, not the transfer of a big result. Per query: the plan kind, exdb's median time,
the in-process engine's, and their ratio (goal: <= 1.5x each). Every answer is checked against
the in-process engine's (a multiset, numbers within a relative 1e-9, in ORDER BY order); each
run is capped at ``--cap`` seconds. Exit status 1 when any answer differs.

    python benchmarks/planner.py                     # 300,000 rows, both engines
    python benchmarks/planner.py --rows 20000 --engines sqlite
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import exdb
from exdb.cluster import LocalCluster

from _common import print_table
from tpch import Outcome, compare, plan_kind, run_duckdb, run_exdb, run_sqlite

ROWS = 300_000
CUSTOMERS = 3_000
DDL = "CREATE TABLE orders (id INTEGER PRIMARY KEY, cust INTEGER, amount DOUBLE, day INTEGER)"

#: name -> (SQL, ORDER BY keys as (column, descending)).
QUERIES: dict[str, tuple[str, list[tuple[int, bool]]]] = {
    "window partitioned by the customer": (
        "SELECT cust, id, amount FROM (SELECT cust, id, amount, ROW_NUMBER() OVER"
        " (PARTITION BY cust ORDER BY amount DESC, id) AS rn FROM orders) AS ranked"
        " WHERE rn = 1 ORDER BY cust",
        [(0, False)],
    ),
    "CTE": (
        "WITH totals AS (SELECT cust, SUM(amount) AS total, COUNT(*) AS n FROM orders"
        " GROUP BY cust) SELECT COUNT(*), SUM(n), MAX(total) FROM totals"
        " WHERE total > (SELECT AVG(total) FROM totals)",
        [],
    ),
    "scalar subquery": (
        "SELECT COUNT(*), SUM(amount) FROM orders WHERE amount > (SELECT AVG(amount) FROM orders)",
        [],
    ),
    "IN (subquery)": (
        "SELECT COUNT(*), SUM(amount) FROM orders"
        " WHERE cust IN (SELECT cust FROM orders WHERE amount > 995)",
        [],
    ),
    "UNION ALL": (
        "SELECT day, COUNT(*), SUM(amount) FROM (SELECT day, amount FROM orders WHERE day < 30"
        " UNION ALL SELECT day, amount FROM orders WHERE amount > 900) AS u"
        " GROUP BY day ORDER BY day",
        [(0, False)],
    ),
    "self-join not on the key": (
        "SELECT a.cust, COUNT(*), SUM(b.amount) FROM orders a JOIN orders b"
        " ON a.cust = b.cust AND a.id <> b.id WHERE a.amount > 990 AND b.amount < 20"
        " GROUP BY a.cust ORDER BY a.cust",
        [(0, False)],
    ),
}


def make_rows(n: int) -> list[tuple[int, int, float, int]]:
    """Deterministic rows: (id, cust, amount in [0, 1000), day in [0, 365))."""
    out = []
    for i in range(n):
        h = (i * 2654435761) % (1 << 32)
        out.append((i, h % CUSTOMERS, (h >> 8) % 100_000 / 100, (h >> 4) % 365))
    return out


def load_local(engine: str, rows: list[tuple[int, int, float, int]]) -> Any:
    """One in-process database of ``engine`` holding the rows."""
    if engine == "sqlite":
        conn: Any = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        conn.execute(DDL)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    else:
        import duckdb

        conn = duckdb.connect(":memory:")
        conn.execute(DDL)
        columns = [list(c) for c in zip(*rows, strict=True)]
        conn.execute(
            "INSERT INTO orders SELECT UNNEST(?), UNNEST(?), UNNEST(?), UNNEST(?)", columns
        )
    conn.execute("ANALYZE")
    return conn


def timed(run: Callable[[], Outcome], repeat: int) -> Outcome:
    """The median of ``repeat`` runs (after the first, which also gives the answer)."""
    first = run()
    if first.seconds is None or repeat <= 1:
        return first
    times = [first.seconds]
    for _ in range(repeat - 1):
        again = run()
        if again.seconds is None:
            return again
        times.append(again.seconds)
    return Outcome(statistics.median(times), first.rows)


def bench_engine(
    engine: str, rows: list[tuple[int, int, float, int]], repeat: int, cap: float
) -> tuple[list[list[Any]], list[str]]:
    """The table rows for one engine, and its disagreements."""
    local = load_local(engine, rows)
    run_local = run_sqlite if engine == "sqlite" else run_duckdb
    table: list[list[Any]] = []
    wrong: list[str] = []
    with (
        LocalCluster(2, engine=engine) as cluster,
        exdb.connect(nodes=list(cluster.nodes), autocommit=True) as conn,
    ):
        conn.execute(DDL)
        conn.cursor().copy_from(iter(rows), "orders")
        conn.execute("ANALYZE")
        for name, (sql, order) in QUERIES.items():
            kind, _ = plan_kind(conn, sql)
            base = timed(lambda sql=sql: run_local(local, sql, cap), repeat)
            got = timed(lambda sql=sql: run_exdb(conn, sql, cap), repeat)
            if got.rows is not None and base.rows is not None:
                diff = compare(got.rows, base.rows, order)
                check = f"DIFFERS: {diff}" if diff else "exact"
            else:
                check = f"not checked: {got.error or base.error or 'capped'}"
            if check != "exact":
                wrong.append(f"{engine} {name}: {check}")
            if got.seconds is not None and base.seconds is not None:
                ratio = got.seconds / max(base.seconds, 1e-9)
                shown = f"{ratio:.2f}"
                goal = "met" if ratio <= 1.5 else "MISSED"
            else:
                shown, goal = "-", "MISSED" if got.capped else "-"
            table.append([name, kind, got.shown(cap), base.shown(cap), shown, goal, check])
            print(
                f"  {engine} {name}: {kind} {got.shown(cap)} s vs {base.shown(cap)} s", flush=True
            )
    local.close()
    return table, wrong


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 1 when an answer differs."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=ROWS, help=f"rows (default {ROWS:,})")
    ap.add_argument("--engines", default="sqlite,duckdb", help="sqlite,duckdb (default both)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per query, median (default 3)")
    ap.add_argument("--cap", type=float, default=120.0, help="seconds per run (default 120)")
    args = ap.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not set(engines) <= {"sqlite", "duckdb"}:
        ap.error("--engines takes sqlite and/or duckdb")
    rows = make_rows(args.rows)
    wrong: list[str] = []
    for engine in engines:
        print(f"\n{engine}: {args.rows:,} rows on 2 shards and in-process", flush=True)
        started = time.perf_counter()
        table, bad = bench_engine(engine, rows, args.repeat, args.cap)
        wrong += bad
        print_table(
            f"{args.rows:,} rows, exdb on 2 {engine} shards vs in-process {engine} (seconds,"
            f" median of {args.repeat}; goal <= 1.5x) [{time.perf_counter() - started:.0f} s]",
            ["query", "plan", "exdb s", f"{engine} s", "x", "goal", "check"],
            table,
        )
    if wrong:
        print("RESULTS DISAGREE:\n  " + "\n  ".join(wrong))
        return 1
    print("results agree: every answer is exact")
    return 0


if __name__ == "__main__":
    sys.exit(main())
