"""Contention: 50 threads move money between random accounts on 2 nodes, for each engine, beside
the same workload through psycopg on one PostgreSQL 15.

Each operation is, at random, a transfer (``--read-share`` aside): in one transaction, take an
amount from one account and add it to another (two UPDATEs, then COMMIT); or a read of two
balances (one SELECT, then COMMIT). An operation that fails with a retryable error (exdb: a
LockError, that is a lock timeout, a deadlock's victim or a write conflict; PostgreSQL:
deadlock_detected, serialization_failure, lock_not_available) is rolled back and retried, at
most ``--retries`` times, after a random backoff that doubles each time; it counts as failed
only if it never commits. Reported: operations committed per second, the failure rate, the
retries, and checks that money is conserved (the sum of balances is unchanged) and that no
thread hung (every thread ends within ``--seconds`` plus a grace).

SQLite has one writer per node: a transfer across the two nodes holds node 1's write lock while
it waits for node 2's, so two transfers in opposite directions would deadlock (on the nodes, not
on rows). The nodes prevent that (wait-die, docs/architecture.md): the younger one stops at once
with DeadlockDetected and retries, keeping its age. The report counts those errors;
``--deadlock-timeout`` sets the detector that remains the backstop.

    python benchmarks/contention.py [--seconds 60] [--threads 50] [--engines sqlite,duckdb]
        [--accounts 1000] [--without-postgres] [--install-postgres]
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import exdb
from exdb.cluster import LocalCluster
from exdb.errors import LockError

from _common import print_table
from _postgres import PostgresServer, find_postgres

START_BALANCE = 1000
#: Backoff before the first retry, in seconds; it doubles each retry, up to _MAX_BACKOFF.
_BACKOFF = 0.005
_MAX_BACKOFF = 0.5
#: Seconds past --seconds a thread may take to finish before the run counts as hung.
_GRACE = 60.0


@dataclass
class Tally:
    """What the threads of one run did."""

    committed: int = 0
    transfers: int = 0
    reads: int = 0
    failed: int = 0
    retries: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, ok: bool, tries: int, errors: list[str]) -> None:
        with self.lock:
            self.retries += max(0, tries - 1)
            self.errors.update(errors)
            if ok:
                self.committed += 1
                if kind == "transfer":
                    self.transfers += 1
                else:
                    self.reads += 1
            else:
                self.failed += 1


@dataclass
class Run:
    """One system's figures."""

    name: str
    seconds: float
    tally: Tally
    conserved: bool
    hung: int

    @property
    def ops(self) -> float:
        return self.tally.committed / self.seconds

    @property
    def failure_rate(self) -> float:
        done = self.tally.committed + self.tally.failed
        return self.tally.failed / done if done else 0.0


class Client:
    """One thread's connection to a system: how to run an operation, what is retryable."""

    placeholder = "?"

    def __init__(self, conn: Any, retryable: tuple[type[BaseException], ...]) -> None:
        self.conn = conn
        self.retryable = retryable

    def sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)

    def transfer(self, a: int, b: int, amount: int) -> None:
        cur = self.conn.cursor()
        cur.execute(self.sql("UPDATE acct SET bal = bal - ? WHERE id = ?"), (amount, a))
        cur.execute(self.sql("UPDATE acct SET bal = bal + ? WHERE id = ?"), (amount, b))
        self.conn.commit()

    def read(self, a: int, b: int) -> None:
        cur = self.conn.cursor()
        cur.execute(self.sql("SELECT id, bal FROM acct WHERE id IN (?, ?)"), (a, b))
        if len(cur.fetchall()) != 2:
            raise AssertionError(f"accounts {a} and {b}: a row is missing")
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()


def worker(
    client: Client,
    accounts: int,
    deadline: float,
    read_share: float,
    retries: int,
    tally: Tally,
    seed: int,
) -> None:
    """Run operations until ``deadline``, each retried as the module's docstring says."""
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        a, b = rng.sample(range(accounts), 2)
        kind = "read" if rng.random() < read_share else "transfer"
        errors: list[str] = []
        ok = False
        tries = 0
        backoff = _BACKOFF
        while tries <= retries:
            tries += 1
            try:
                if kind == "read":
                    client.read(a, b)
                else:
                    client.transfer(a, b, rng.randint(1, 10))
                ok = True
                break
            except client.retryable as exc:
                errors.append(type(exc).__name__)
                client.rollback()  # exdb rolled back already; this one opens nothing
                time.sleep(rng.uniform(0, backoff))
                backoff = min(backoff * 2, _MAX_BACKOFF)
            except Exception as exc:  # not retryable: the operation failed; say which error
                errors.append(f"{type(exc).__name__} (not retried)")
                try:
                    client.rollback()
                except Exception as again:
                    errors.append(f"{type(again).__name__} (rollback)")
                break
        tally.add(kind, ok, tries, errors)
    client.conn.close()  # in the thread that used it (exdb's local engine is per thread)


def run_threads(
    name: str,
    make: Callable[[], Client],
    total: Callable[[], int],
    args: argparse.Namespace,
) -> Run:
    """Run the workload on ``args.threads`` threads; check conservation and hangs."""
    before = total()
    clients = [make() for _ in range(args.threads)]
    tally = Tally()
    started = time.monotonic()
    deadline = started + args.seconds
    threads = [
        threading.Thread(
            target=worker,
            args=(c, args.accounts, deadline, args.read_share, args.retries, tally, i),
            daemon=True,
        )
        for i, c in enumerate(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline + _GRACE - time.monotonic()))
    elapsed = time.monotonic() - started
    hung = sum(t.is_alive() for t in threads)
    after = total()
    return Run(name, elapsed, tally, before == after, hung)


def exdb_run(engine: str, args: argparse.Namespace) -> Run:
    """The workload on 2 exdb nodes of ``engine``."""
    options: dict[str, Any] = {"deadlock_timeout": args.deadlock_timeout}
    with LocalCluster(2, engine=engine) as cluster:
        nodes = cluster.nodes
        with exdb.connect(nodes=nodes, autocommit=True) as setup:
            setup.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)")
            setup.executemany(
                "INSERT INTO acct VALUES (?, ?)",
                [(i, START_BALANCE) for i in range(args.accounts)],
            )

        def total() -> int:
            with exdb.connect(nodes=nodes, autocommit=True) as conn:
                return int(conn.execute("SELECT SUM(bal) FROM acct").fetchall()[0][0])

        def make() -> Client:
            return Client(exdb.connect(nodes=nodes, **options), (LockError,))

        return run_threads(f"exdb {engine}, 2 nodes", make, total, args)


def postgres_run(args: argparse.Namespace) -> Run | str:
    """The same workload through psycopg on one PostgreSQL; or why it could not run."""
    status = find_postgres(install=args.install_postgres, disabled=args.without_postgres)
    if not status.available:
        return status.reason
    import psycopg
    from psycopg import errors as pg

    with PostgresServer(status) as server:
        info = server.conninfo
        with psycopg.connect(**info, autocommit=True) as setup:
            setup.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)")
            with setup.cursor() as cur:
                cur.executemany(
                    "INSERT INTO acct VALUES (%s, %s)",
                    [(i, START_BALANCE) for i in range(args.accounts)],
                )

        def total() -> int:
            with psycopg.connect(**info, autocommit=True) as conn:
                row = conn.execute("SELECT SUM(bal) FROM acct").fetchone()
                assert row is not None
                return int(row[0])

        def make() -> Client:
            conn = psycopg.connect(**info)
            conn.execute("SET lock_timeout = '10s'")  # exdb's default lock_timeout
            conn.commit()
            client = Client(
                conn, (pg.DeadlockDetected, pg.SerializationFailure, pg.LockNotAvailable)
            )
            client.placeholder = "%s"
            return client

        return run_threads("PostgreSQL 15 (psycopg)", make, total, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=50)
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--engines", default="sqlite,duckdb")
    ap.add_argument("--read-share", type=float, default=0.2, help="share of reads (0..1)")
    ap.add_argument("--retries", type=int, default=10, help="retries of one operation, at most")
    ap.add_argument(
        "--deadlock-timeout", type=int, default=1000, help="exdb: milliseconds (default 1000)"
    )
    ap.add_argument("--without-postgres", action="store_const", const="--without-postgres")
    ap.add_argument("--install-postgres", action="store_true")
    args = ap.parse_args()
    args.without_postgres = args.without_postgres or ""

    runs: list[Run] = []
    for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
        print(f"running exdb {engine} for {args.seconds:g} s ...", flush=True)
        runs.append(exdb_run(engine, args))
    print(f"running PostgreSQL for {args.seconds:g} s ...", flush=True)
    pg_run = postgres_run(args)
    baseline = pg_run if isinstance(pg_run, Run) else None
    if baseline is not None:
        runs.append(baseline)

    rows = []
    for r in runs:
        t = r.tally
        ratio = f"{r.ops / baseline.ops:.3f}" if baseline is not None and baseline.ops else "-"
        errors = ", ".join(f"{k} {v}" for k, v in t.errors.most_common()) or "none"
        rows.append(
            [
                r.name,
                f"{r.ops:,.0f}",
                f"{t.transfers / r.seconds:,.0f}",
                f"{t.reads / r.seconds:,.0f}",
                f"{100 * r.failure_rate:.2f}%",
                f"{t.retries:,}",
                errors,
                "yes" if r.conserved else "NO",
                "none" if not r.hung else f"{r.hung} THREADS HUNG",
                ratio,
            ]
        )
    print_table(
        f"Contention: {args.threads} threads, {args.accounts} accounts, {args.seconds:g} s,"
        f" {100 * args.read_share:.0f}% reads, up to {args.retries} retries",
        [
            "system",
            "ops/s",
            "transfers/s",
            "reads/s",
            "failed",
            "retries",
            "retryable errors seen",
            "money conserved",
            "hang",
            "ops/s vs PostgreSQL",
        ],
        rows,
    )
    if baseline is None:
        print(f"PostgreSQL not run: {pg_run}")
    goals = [r for r in runs if r is not baseline]
    for r in goals:
        verdict = "meets" if r.failure_rate <= 0.05 else "MISSES"
        print(f"{r.name}: failure rate {100 * r.failure_rate:.2f}% {verdict} the goal of <= 5%")
    if any(not r.conserved or r.hung for r in runs):
        print("FAILED: money was not conserved, or a thread hung")
        sys.exit(1)


if __name__ == "__main__":
    main()
