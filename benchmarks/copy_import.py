"""exdb import (cursor.copy_from) of a CSV file into 2 shards vs PostgreSQL's COPY FROM STDIN.

The same file (an int key, an int, a real and a text column; a header line) is loaded into
two SQLite shards, into two DuckDB shards, and into a private PostgreSQL 15 through
``COPY t FROM STDIN (FORMAT csv, HEADER)`` (psycopg, the file streamed in 1 MiB pieces), all in
the same run; each table has the same PRIMARY KEY. Every load is checked: the row count and the
sums of the two integer columns equal the file's, on exdb summed over the shards. Printed: the
seconds, rows/s, and the ratio to PostgreSQL (the goal: >= 0.5x).

    python benchmarks/copy_import.py                # 2,000,000 rows
    python benchmarks/copy_import.py --rows 20000   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import exdb
from exdb.cluster import LocalCluster

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table
from _postgres import PostgresServer, find_postgres

FULL_ROWS = 2_000_000
DDL = "CREATE TABLE t (id INTEGER PRIMARY KEY, n BIGINT, x DOUBLE PRECISION, s TEXT)"
DDL_EXDB = "CREATE TABLE t (id INTEGER PRIMARY KEY, n BIGINT, x DOUBLE, s TEXT)"


def write_file(path: Path, rows: int) -> tuple[int, int]:
    """The CSV file; returns (sum of id, sum of n) to check the loads against."""
    rng = random.Random(13)
    sum_id = sum_n = 0
    with open(path, "w", newline="") as f:
        f.write("id,n,x,s\n")
        lines = []
        for i in range(rows):
            n = rng.randrange(1_000_000)
            sum_id += i
            sum_n += n
            lines.append(f"{i},{n},{rng.random() * 1000:.6f},name_{rng.randrange(100_000)}\n")
            if len(lines) == 10_000:
                f.writelines(lines)
                lines.clear()
        f.writelines(lines)
    return sum_id, sum_n


def load_exdb(engine: str, path: Path, expect: tuple[int, int, int]) -> float:
    """Seconds for copy_from of the file into 2 shards; checked."""
    with (
        LocalCluster(2, engine=engine) as cluster,
        exdb.connect(nodes=list(cluster.nodes), autocommit=True) as conn,
    ):
        conn.execute(DDL_EXDB)
        start = time.perf_counter()
        count = conn.cursor().copy_from(path, "t")
        seconds = time.perf_counter() - start
        got = conn.execute("SELECT count(*), sum(id), sum(n) FROM t").fetchone()
        per_node = [conn.execute(f"{i + 1}:SELECT count(*) FROM t").fetchone()[0] for i in range(2)]
    check(f"exdb {engine}", (count, *got[1:]), expect)
    check(f"exdb {engine} (shards)", (sum(per_node), expect[1], expect[2]), expect)
    return seconds


def load_postgres(status: Any, path: Path, expect: tuple[int, int, int]) -> float:
    """Seconds for COPY FROM STDIN of the file into PostgreSQL; checked."""
    import psycopg

    with PostgresServer(status) as pg, psycopg.connect(**pg.conninfo, autocommit=True) as conn:
        conn.execute(DDL)
        start = time.perf_counter()
        sql = "COPY t FROM STDIN (FORMAT csv, HEADER true)"
        with conn.cursor() as cur, cur.copy(sql) as copy, open(path, "rb") as f:
            while data := f.read(1 << 20):
                copy.write(data)
        seconds = time.perf_counter() - start
        row = conn.execute("SELECT count(*), sum(id), sum(n) FROM t").fetchone()
        assert row is not None
    check("PostgreSQL", tuple(int(v) for v in row), expect)  # type: ignore[arg-type]
    return seconds


FAILURES: list[str] = []


def check(what: str, got: tuple[int, ...], expect: tuple[int, int, int]) -> None:
    """Record a disagreement (printed at the end as RESULTS DISAGREE)."""
    if tuple(got) != tuple(expect):
        FAILURES.append(f"{what}: (count, sum id, sum n) = {got}, the file has {expect}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=FULL_ROWS, help=f"rows (default {FULL_ROWS:,})")
    ap.add_argument("--engine", default="both", choices=["sqlite", "duckdb", "both"])
    ap.add_argument("--without-postgres", action="store_true", help="skip PostgreSQL")
    args = ap.parse_args()
    engines = ["sqlite", "duckdb"] if args.engine == "both" else [args.engine]
    status = find_postgres(install=False, disabled="--without-postgres" * args.without_postgres)
    with tempfile.TemporaryDirectory(prefix="exdb-copy-") as tmp:
        path = Path(tmp) / "rows.csv"
        sum_id, sum_n = write_file(path, args.rows)
        expect = (args.rows, sum_id, sum_n)
        size = path.stat().st_size
        print(f"file: {args.rows:,} rows, {size / 1e6:.1f} MB ({path.name})")
        pg_seconds = None
        if status.available:
            pg_seconds = load_postgres(status, path, expect)
        else:
            print(f"PostgreSQL not available: {status.reason}")
        results = []
        for engine in engines:
            seconds = load_exdb(engine, path, expect)
            ratio = (pg_seconds / seconds) if pg_seconds else None
            results.append((engine, seconds, ratio))
    rows: list[list[Any]] = []
    if pg_seconds is not None:
        rows.append(["PostgreSQL COPY FROM STDIN", pg_seconds, args.rows / pg_seconds, 1.0])
    else:
        rows.append(["PostgreSQL COPY FROM STDIN", "not available", "-", "-"])
    for engine, seconds, ratio in results:
        shown = ratio if ratio is not None else "-"
        rows.append([f"exdb copy_from, 2 {engine} shards", seconds, args.rows / seconds, shown])
    print_table(
        "Load (seconds, rows/s, speed vs PostgreSQL)", ["load", "s", "rows/s", "x PG"], rows
    )
    for engine, _, ratio in results:
        if ratio is None:
            print(f"goal {engine}: not judged (PostgreSQL not available)")
        else:
            verdict = "met" if ratio >= 0.5 else "NOT met"
            print(f"goal {engine}: {ratio:.2f}x PostgreSQL (>= 0.5x: {verdict})")
    if FAILURES:
        print("RESULTS DISAGREE:\n  " + "\n  ".join(FAILURES))
        sys.exit(1)
    print("results agree: every load holds the file's rows (count and sums)")


if __name__ == "__main__":
    main()
