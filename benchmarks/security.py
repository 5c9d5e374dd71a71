"""What the sandbox and the SCRAM login cost, against baselines measured in the same run.

Prints, in one run on this machine:

- connect time (TCP connect, handshake, login, close) of exdb without a password and with
  SCRAM-SHA-256, beside PostgreSQL's with trust and with SCRAM-SHA-256 (its default since 14);
- the ``SELECT 1`` round trip of a sandboxed exdb shard (SQLite and DuckDB engines) against the
  msgpack echo floor of benchmarks/roundtrip.py, and pipelined throughput on one connection;
- a runaway statement's cost to its neighbours: round trips of one session while another
  session's statement is cut by ``--statement-timeout``.

    python benchmarks/security.py [--quick] [--without-postgres] [--install-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import exdb
from exdb.cluster import LocalCluster
from roundtrip import EchoPeer, _pipelined, interleaved

from _common import median, print_table
from _postgres import PostgresServer, find_postgres

PASSWORD = "bench-secret-Δ1"  # non-ASCII on purpose: SCRAM normalises it (SASLprep)


def connect_times(connect: Callable[[], Any], n: int) -> list[float]:
    """Milliseconds of ``n`` connect-and-close cycles (after two warm-ups)."""
    for _ in range(2):
        connect().close()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn = connect()
        out.append((time.perf_counter() - t0) * 1000.0)
        conn.close()
    return out


def exdb_connects(n: int) -> dict[str, float]:
    """Median connect time (ms) of an exdb node without and with a password."""
    out: dict[str, float] = {}
    with LocalCluster(1) as open_node, LocalCluster(1, password=PASSWORD) as locked:
        plain, scram = open_node.nodes[0], locked.nodes[0]
        samples: dict[str, list[float]] = {"exdb, no password": [], "exdb, SCRAM-SHA-256": []}
        for _ in range(5):  # alternate, so that noise falls on both alike
            samples["exdb, no password"] += connect_times(lambda: exdb.connect(plain), n // 5)
            samples["exdb, SCRAM-SHA-256"] += connect_times(
                lambda: exdb.connect(scram, password=PASSWORD), n // 5
            )
    for name, values in samples.items():
        out[name] = median(values)
    return out


def postgres_connects(n: int, install: bool, disabled: str) -> tuple[dict[str, float], str]:
    """Median connect time (ms) of PostgreSQL over TCP, trust and SCRAM; or why it was skipped."""
    status = find_postgres(install, disabled)
    if not status.available:
        return {}, status.reason
    import psycopg

    out: dict[str, float] = {}
    with PostgresServer(status) as trust, PostgresServer(status, password=PASSWORD) as scram:
        samples: dict[str, list[float]] = {
            "PostgreSQL, trust": [],
            "PostgreSQL, SCRAM-SHA-256": [],
        }
        for _ in range(5):
            samples["PostgreSQL, trust"] += connect_times(
                lambda: psycopg.connect(**trust.conninfo), n // 5
            )
            samples["PostgreSQL, SCRAM-SHA-256"] += connect_times(
                lambda: psycopg.connect(**scram.conninfo), n // 5
            )
    for name, values in samples.items():
        out[name] = median(values)
    return out, ""


def round_trips(engine: str, n: int, total: int) -> dict[str, float]:
    """Median SELECT 1 latency (us) through a sandboxed shard and through the echo floor, and
    pipelined statements/s."""
    with LocalCluster(1, engine=engine, password=PASSWORD) as cluster:
        node = cluster.nodes[0]
        echo = EchoPeer()
        conn = exdb.connect(node, autocommit=True, password=PASSWORD)
        cur = conn.cursor()
        try:
            med = interleaved(
                {"exdb": lambda: cur.execute("SELECT 1").fetchall(), "echo": echo.once}, n
            )
        finally:
            conn.close()
            echo.close()
        piped = asyncio.run(_pipelined(node, total, 64, password=PASSWORD))
    return {"exdb": med["exdb"], "echo": med["echo"], "piped": piped}


def neighbour_under_runaway(n: int) -> tuple[float, float, int]:
    """Median SELECT 1 latency (us) of one session, alone and while other sessions run
    statements that loop forever until ``--statement-timeout`` cuts them; and how many were cut."""
    runaway = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    )
    with LocalCluster(1, extra_args=["--statement-timeout", "0.5"]) as cluster:
        node = cluster.nodes[0]
        conn = exdb.connect(node, autocommit=True)
        cur = conn.cursor()
        alone = [_one(cur) for _ in range(n)]
        cut = 0
        stop = threading.Event()

        def attacker() -> None:
            nonlocal cut
            with exdb.connect(node, autocommit=True) as bad:
                for _ in range(1000):  # bounded: each try lasts the 0.5 s timeout
                    if stop.is_set():
                        break
                    try:
                        bad.execute(runaway).fetchall()
                    except exdb.OperationalError as exc:
                        if "statement timeout" in str(exc):
                            cut += 1

        threads = [threading.Thread(target=attacker) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.2)
            loaded: list[float] = []
            began = time.monotonic()
            # At least n round trips and 2 s, so that several runaways meet their timeout.
            while len(loaded) < 200_000 and (len(loaded) < n or time.monotonic() - began < 2.0):
                loaded.append(_one(cur))
        finally:
            stop.set()
            for t in threads:
                t.join(30)
            conn.close()
    return statistics.median(alone), statistics.median(loaded), cut


def _one(cur: Any) -> float:
    t0 = time.perf_counter_ns()
    cur.execute("SELECT 1").fetchall()
    return (time.perf_counter_ns() - t0) / 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--without-postgres", action="store_true", help="skip the PostgreSQL side")
    ap.add_argument("--install-postgres", action="store_true", help="apt-get it if missing")
    args = ap.parse_args()
    connects = 20 if args.quick else 200
    n = 300 if args.quick else 10000
    total = 2000 if args.quick else 30000

    conn_ms = exdb_connects(connects)
    pg_ms, why = postgres_connects(
        connects, args.install_postgres, "--without-postgres" if args.without_postgres else ""
    )
    conn_ms.update(pg_ms)
    base = pg_ms.get("PostgreSQL, SCRAM-SHA-256")
    print_table(
        f"Connect and close over TCP loopback, median of {connects}",
        ["what", "median ms", "ratio to PostgreSQL SCRAM"],
        [[k, v, (v / base) if base else "-"] for k, v in conn_ms.items()],
    )
    if why:
        print(f"  (PostgreSQL skipped: {why})")

    rows = []
    for engine in ("sqlite", "duckdb"):
        r = round_trips(engine, n, total)
        rows.append([engine, r["exdb"], r["echo"], r["exdb"] / r["echo"], r["piped"]])
    print_table(
        f"SELECT 1 through a sandboxed shard with a SCRAM login, median of {n}",
        ["engine", "exdb us", "echo us", "exdb/echo", "64 in flight, stmt/s"],
        rows,
    )

    alone, loaded, cut = neighbour_under_runaway(max(200, n // 10))
    print_table(
        "One session's SELECT 1 while 2 others loop until --statement-timeout 0.5 s cuts them",
        ["what", "median us"],
        [["alone", alone], ["beside the runaways", loaded]],
    )
    print(f"  runaway statements cut by the timeout: {cut}")
    print(f"\nexdb SCRAM connect / PostgreSQL SCRAM connect = {_ratio(conn_ms, base)}")
    print(f"exdb/echo (sqlite) = {rows[0][3]:.2f}; (duckdb) = {rows[1][3]:.2f}")


def _ratio(conn_ms: dict[str, float], base: float | None) -> str:
    if not base:
        return "n/a (PostgreSQL skipped)"
    return f"{conn_ms['exdb, SCRAM-SHA-256'] / base:.2f}"


if __name__ == "__main__":
    main()
