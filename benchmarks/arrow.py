"""A large result into an Arrow table: ``fetch_arrow_table()`` against ``fetchall()``.

Loads the same deterministic rows (1,000,000 by default; 4 columns: BIGINT key, BIGINT, DOUBLE,
VARCHAR) into a 2-shard exdb cluster of each engine, then reads ``SELECT * FROM t`` (a plain
scatter: the shards' rows concatenated) with

- ``fetchall()``: today's path, rows as msgpack tuples (rows/s);
- ``fetch_arrow_table()``: the nodes send Arrow IPC (DuckDB exports it natively; a SQLite
  shard builds it from its rows) and the client concatenates the columns;
- the floor: in-process DuckDB's ``.arrow()`` on the same rows (DuckDB section only).

Each is run ``--repeat`` times, interleaved, and the medians are compared. The answers are
checked (row count, sum of the key, and at small sizes every row against ``fetchall()``); the
benchmark exits non-zero if they differ. Goal: DuckDB shards, Arrow >= 5x the rows/s of
``fetchall()``.

    python benchmarks/arrow.py [--rows N] [--repeat R] [--engine sqlite|duckdb|both]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import exdb
from exdb.cluster import LocalCluster

DDL = "CREATE TABLE t (k BIGINT PRIMARY KEY, g BIGINT, v DOUBLE, s VARCHAR)"
INSERT = "INSERT INTO t VALUES (?, ?, ?, ?)"
QUERY = "SELECT k, g, v, s FROM t"
_CHUNK = 50_000


def _rows(start: int, stop: int) -> list[tuple[Any, ...]]:
    return [(i, (i * 7919) % 1000, i * 0.25, f"name-{i % 9973}") for i in range(start, stop)]


def _load(conn: Any, n: int) -> None:
    cur = conn.cursor()
    cur.execute(DDL)
    for start in range(0, n, _CHUNK):
        cur.executemany(INSERT, _rows(start, min(n, start + _CHUNK)))
    conn.commit()


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _floor(n: int) -> Any:
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE t (k BIGINT, g BIGINT, v DOUBLE, s VARCHAR)")
    con.execute(
        "INSERT INTO t SELECT range, (range * 7919) % 1000, range * 0.25,"
        " 'name-' || (range % 9973)::VARCHAR FROM range(?)",
        [n],
    )
    return con


def run_engine(engine: str, n: int, repeat: int) -> tuple[float, bool]:
    """Measure one engine; returns the Arrow/fetchall ratio and whether the answers agree."""
    import pyarrow.compute as pc

    with LocalCluster(2, engine=engine) as cluster:
        conn = exdb.connect(nodes=list(cluster.nodes))
        try:
            t_load, _ = _timed(lambda: _load(conn, n))
            print(f"\n{engine}: {n:,} rows x 4 columns on 2 shards (loaded in {t_load:.1f} s)")
            floor = _floor(n) if engine == "duckdb" else None
            times: dict[str, list[float]] = {"fetchall": [], "arrow": [], "floor": []}
            agree = True
            expected_sum = n * (n - 1) // 2
            # Warm up: the first Arrow fetch imports pyarrow, in the client and on each node.
            conn.execute(QUERY + " LIMIT 20000").fetch_arrow_table()
            conn.execute(QUERY + " LIMIT 10").fetchall()
            for _ in range(repeat):
                t, rows = _timed(lambda: conn.execute(QUERY).fetchall())
                times["fetchall"].append(t)
                t, table = _timed(lambda: conn.execute(QUERY).fetch_arrow_table())
                times["arrow"].append(t)
                if floor is not None:
                    t, base = _timed(lambda: floor.sql(QUERY).arrow())
                    times["floor"].append(t)
                    base = base.read_all() if hasattr(base, "read_all") else base
                    agree &= base.num_rows == n
                agree &= len(rows) == n and table.num_rows == n
                agree &= pc.sum(table["k"]).as_py() == expected_sum == sum(r[0] for r in rows)
                if n <= 100_000:
                    key = sorted(rows)
                    agree &= sorted(tuple(d.values()) for d in table.to_pylist()) == key
            med = {k: statistics.median(v) for k, v in times.items() if v}
            print(f"  {'path':<34}{'median s':>10}{'rows/s':>14}")
            labels = {
                "fetchall": "fetchall() (rows)",
                "arrow": "fetch_arrow_table() (Arrow IPC)",
                "floor": "in-process duckdb .arrow() (floor)",
            }
            for key, label in labels.items():
                if key in med:
                    print(f"  {label:<34}{med[key]:>10.3f}{n / med[key]:>14,.0f}")
            ratio = med["fetchall"] / med["arrow"]
            print(f"  arrow/fetchall ({engine}): {ratio:.1f}x the rows/s")
            if "floor" in med:
                print(f"  arrow/floor ({engine}): {med['arrow'] / med['floor']:.1f}x the time")
            print(f"  results {'agree' if agree else 'DISAGREE'} ({engine})")
            return ratio, agree
        finally:
            conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engine", choices=["sqlite", "duckdb", "both"], default="both")
    args = parser.parse_args()
    engines = ["duckdb", "sqlite"] if args.engine == "both" else [args.engine]
    ok = True
    ratios = {}
    for engine in engines:
        ratios[engine], agree = run_engine(engine, args.rows, args.repeat)
        ok &= agree
    print()
    if "duckdb" in ratios:
        verdict = "PASS" if ratios["duckdb"] >= 5 else "MISS"
        print(f"goal duckdb (arrow >= 5x fetchall): {ratios['duckdb']:.1f}x {verdict}")
    if "sqlite" in ratios:
        print(f"sqlite (reported): arrow {ratios['sqlite']:.1f}x fetchall")
    if not ok:
        print("RESULTS DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
