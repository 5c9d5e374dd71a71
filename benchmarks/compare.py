"""exdb against what a user would pick instead, measured side by side in one run.

The alternatives: one PostgreSQL server reached from Python (psycopg 3, with its best practice
for each task), and one in-process database (``sqlite3`` or ``duckdb`` in this process: the
floor). exdb runs 2 local shards, SQLite engine, and DuckDB where the workload is analytical.

- W1 point writes: single-row INSERTs with distinct keys (statements/s), through each exdb door
  that runs single-row statements; PostgreSQL in pipeline mode and with executemany.
- W2 point reads: SELECTs by primary key (statements/s).
- W3 bulk load: (int key, int group, double, text) rows (rows/s): exdb ``executemany`` in chunks
  against PostgreSQL ``COPY``.
- W4 analytics on the W3 rows: a GROUP BY with SUM, AVG and COUNT(DISTINCT); an
  ORDER BY ... LIMIT 10; a join with a reference table (seconds).
- W5 large result: fetch a million rows (rows/s); PostgreSQL with a server-side cursor.
- Scaling: W4's aggregate and W1 on 1, 2, 3 and 4 local SQLite shards.

Every figure stands beside its baselines, measured in the same run and interleaved chunk by
chunk (or repetition by repetition) so that noise on this shared machine falls on all alike.
Every answer is checked (row counts, checksums, and the analytics results of exdb, PostgreSQL
and the floor against each other): wrong answers stop the run with ``RESULTS DISAGREE`` and a
non-zero exit. It prints the tables, and with ``--out DIR`` (the default without ``--quick``)
writes ``DIR/benchmarks.md`` and the chart ``DIR/benchmarks.png``.

    python benchmarks/compare.py [--quick] [--out DIR] [--install-postgres] [--without-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import heapq
import io
import json
import math
import os
import platform
import shlex
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import exdb
from exdb.cluster import LocalCluster

from _common import median, print_table
from _postgres import SETTINGS, PostgresServer, PostgresStatus, find_postgres

ROOT = Path(__file__).resolve().parent.parent
Row = tuple[Any, ...]

# --- the data ------------------------------------------------------------------------------------

KV_DDL = "CREATE TABLE {t} (k INTEGER PRIMARY KEY, v VARCHAR)"
INSERT = "INSERT INTO {t} (k, v) VALUES (?, ?)"
SELECT = "SELECT v FROM kv WHERE k = ?"
FACTS_DDL = "CREATE TABLE facts (k INTEGER PRIMARY KEY, g INTEGER, v {double}, s VARCHAR)"
FACTS_INSERT = "INSERT INTO facts (k, g, v, s) VALUES (?, ?, ?, ?)"
REF_DDL = "CREATE TABLE group_info (g INTEGER PRIMARY KEY, region INTEGER, label VARCHAR)"
REF_INSERT = "INSERT INTO group_info (g, region, label) VALUES (?, ?, ?)"
DUCKDB_BULK = "INSERT INTO facts SELECT UNNEST(?), UNNEST(?), UNNEST(?), UNNEST(?)"
AGGREGATE = "SELECT g, SUM(v), AVG(v), COUNT(DISTINCT s) FROM facts GROUP BY g ORDER BY g"
TOP_N = "SELECT k, v FROM facts ORDER BY v DESC, k LIMIT 10"
JOIN = (
    "SELECT i.region, COUNT(*), SUM(f.v) FROM facts f JOIN group_info i ON f.g = i.g"
    " GROUP BY i.region ORDER BY i.region"
)
FETCH = "SELECT k, g, v, s FROM facts WHERE k < ?"
QUERIES = {
    "GROUP BY: SUM, AVG, COUNT(DISTINCT)": AGGREGATE,
    "ORDER BY ... LIMIT 10": TOP_N,
    "join with a reference table": JOIN,
}

GROUPS = 1000  # g = k % GROUPS
CATEGORIES = 100  # s takes 100 values, spread pseudo-randomly over the groups
REGIONS = 10
# v = a multiplicative hash of k modulo 2**24, over 256: distinct for k < 2**24 (no ties in the
# top-N) and a multiple of 1/256, so that every SUM is exact in any summation order.
_HASH = 2654435761
_MOD = 1 << 24


def value(k: int) -> str:
    """The text W1 writes under key ``k``."""
    return f"value-{k}"


def make_row(k: int) -> Row:
    """Row ``k`` of the W3 data set: (k, g, v, s)."""
    h = k * _HASH
    return (k, k % GROUPS, (h % _MOD) / 256, f"cat-{(h >> 12) % CATEGORIES:02d}")


def ref_rows() -> list[Row]:
    """The reference table: one row per group."""
    return [(g, g % REGIONS, f"group {g}") for g in range(GROUPS)]


def pg(sql: str) -> str:
    """The statement in psycopg's parameter style."""
    return sql.replace("?", "%s")


# --- sizes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much each workload does."""

    writes: int = 50_000  # W1 statements
    write_chunk: int = 1_000  # statements per list (AsyncDistributedConnection) / transaction
    reads: int = 20_000  # W2 statements
    read_chunk: int = 1_000
    rows: int = 2_000_000  # W3 rows
    load_chunk: int = 100_000
    fetch: int = 1_000_000  # W5 rows
    reps: int = 7  # W4 repetitions at most (after a warm-up that is also the correctness check)
    min_reps: int = 3  # ... and at least, beyond the time budget
    budget: float = 30.0  # seconds of W4 repetitions per query (and of the scaling aggregate)
    fetch_reps: int = 3  # W5 repetitions
    scale_shards: tuple[int, ...] = (1, 2, 3, 4)


QUICK = Sizes(
    writes=2_000,
    write_chunk=200,
    reads=500,
    read_chunk=100,
    rows=6_000,
    load_chunk=2_000,
    fetch=3_000,
    reps=1,
    min_reps=1,
    fetch_reps=1,
)

# --- results -------------------------------------------------------------------------------------

EXDB, EXTRA, POSTGRES, FLOOR = "exdb", "exdb (extra)", "PostgreSQL", "in-process"
NOT_AVAILABLE = "not available"


@dataclass
class Result:
    """One measured figure (or a PostgreSQL figure that could not be measured)."""

    workload: str  # "W1 point writes", "W4 analytics", ...
    case: str  # the W4 query; "" otherwise
    target: str  # what ran it
    kind: str  # EXDB, EXTRA, POSTGRES or FLOOR
    engine: str  # "sqlite", "duckdb" or "postgres"
    value: float | None  # a rate, or seconds; None: not available
    unit: str  # "statements/s", "rows/s" or "s"
    note: str = ""

    @property
    def higher_is_better(self) -> bool:
        """Rates: higher is better; times: lower."""
        return self.unit != "s"


@dataclass
class Report:
    """Everything one run measured, for the tables, the goals, the markdown and the chart."""

    sizes: Sizes
    quick: bool
    results: list[Result] = field(default_factory=list)
    scaling: dict[int, dict[str, float]] = field(default_factory=dict)
    scaling_baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)
    postgres: PostgresStatus = field(default_factory=PostgresStatus)
    pg_version: str = ""
    argv: list[str] = field(default_factory=list)
    runtime: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    def timed(self, phase: str, fn: Callable[[], Any]) -> Any:
        """Run one phase and record how long it took (setup, loads and checks included)."""
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.phases[phase] = time.perf_counter() - t0

    def add(self, result: Result) -> None:
        """Record a result and print it as it comes."""
        self.results.append(result)
        shown = NOT_AVAILABLE if result.value is None else _figure(result.value, result.unit)
        case = f" [{result.case}]" if result.case else ""
        print(f"  {result.workload}{case}: {result.target}: {shown}", flush=True)

    def of(self, workload: str, case: str = "") -> list[Result]:
        """The results of one workload (and W4 query)."""
        return [r for r in self.results if r.workload == workload and r.case == case]


def best(results: Sequence[Result]) -> Result | None:
    """The best measured figure among ``results`` (None when none was measured)."""
    measured = [r for r in results if r.value is not None]
    if not measured:
        return None
    if measured[0].higher_is_better:
        return max(measured, key=lambda r: r.value or 0.0)
    return min(measured, key=lambda r: r.value or math.inf)


def ratio(result: Result, base: Result | None) -> float | None:
    """result / base in the unit's own sense (rate/rate, or time/time)."""
    if base is None or result.value is None or base.value is None or base.value == 0:
        return None
    return result.value / base.value


def baselines(report: Report, workload: str, case: str) -> tuple[Result | None, dict[str, Result]]:
    """The best PostgreSQL figure, and the floor per engine, for one workload (and query)."""
    rows = report.of(workload, case)
    floors = {r.engine: r for r in rows if r.kind == FLOOR and r.value is not None}
    return best([r for r in rows if r.kind == POSTGRES]), floors


# --- checks --------------------------------------------------------------------------------------


class Disagreement(Exception):
    """A benchmark returned a wrong answer."""


CHECKS = [0]  # how many checks passed in this run


def check(ok: bool, message: str) -> None:
    """Fail loudly: a benchmark that returns wrong answers is worthless."""
    if not ok:
        raise Disagreement(message)
    CHECKS[0] += 1


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def same_rows(a: Sequence[Sequence[Any]], b: Sequence[Sequence[Any]]) -> bool:
    """Equal row by row, floats within a relative 1e-9."""
    return len(a) == len(b) and all(
        len(x) == len(y) and all(_close(p, q) for p, q in zip(x, y, strict=True))
        for x, y in zip(a, b, strict=True)
    )


# --- timing --------------------------------------------------------------------------------------

Runner = Callable[[int], None]


def interleaved(
    runners: dict[str, Runner],
    rounds: int,
    after: Callable[[str], None] | None = None,
    budget: float | None = None,
    min_rounds: int = 3,
) -> dict[str, list[float]]:
    """Seconds of each runner's call ``i`` for i in 0..rounds-1, taking turns (the order
    rotates each round), so that noise on this shared machine falls on all of them alike.
    ``after(name)`` runs, untimed, after each call (checks). With a ``budget`` (seconds), no
    round starts after it is spent once ``min_rounds`` are done."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    clock = time.perf_counter
    began = clock()
    for i in range(rounds):
        if budget is not None and i >= min_rounds and clock() - began > budget:
            break
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = clock()
            runners[name](i)
            times[name].append(clock() - t0)
            if after is not None:
                after(name)
    return times


def _figure(value: float, unit: str) -> str:
    if unit == "s":
        if value >= 1:
            return f"{value:.2f} s"
        if value >= 1e-3:
            return f"{value * 1e3:.1f} ms"
        return f"{value * 1e6:.0f} us"
    return f"{value:,.0f} {unit}"


# --- targets: the doors -------------------------------------------------------------------------


class WorkersDoor:
    """AsyncDistributedConnection with ``n`` worker processes, given lists of statements: runs of
    the same INSERT are sent to each shard as one batch."""

    def __init__(self, nodes: tuple[str, ...], n: int) -> None:
        self.conn = exdb.connect(nodes=nodes, **{"async": True}, nWorkers=n)
        self.conn.execute("SELECT 1")  # the workers are up before the clock starts

    def insert(self, table: str, keys: Sequence[int]) -> None:
        """One list of single-row INSERTs."""
        got = self.conn.execute([INSERT.format(t=table)] * len(keys), [(k, value(k)) for k in keys])
        check(got == [1] * len(keys), f"workers INSERT: {len(keys)} statements, outcomes {got[:3]}")

    def select(self, keys: Sequence[int]) -> None:
        """One list of point SELECTs."""
        got = self.conn.execute([SELECT] * len(keys), [(k,) for k in keys])
        check(got == [[(value(k),)] for k in keys], "workers SELECT: a wrong answer")

    def close(self) -> None:
        """Stop the workers."""
        self.conn.close()


class AsyncioDoor:
    """The asyncio door (``connect_async(nodes=...)``), 64 statements in flight."""

    IN_FLIGHT = 64

    def __init__(self, nodes: tuple[str, ...]) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(exdb.connect_async(nodes=nodes, autocommit=True))

    def _many(self, sql: str, params: list[tuple[Any, ...]]) -> list[Any]:
        async def run() -> list[Any]:
            gate = asyncio.Semaphore(self.IN_FLIGHT)

            async def one(p: tuple[Any, ...]) -> Any:
                async with gate:
                    cur = await self.conn.execute(sql, p)
                    return await cur.fetchall() if cur.description else cur.rowcount

            return list(await asyncio.gather(*(one(p) for p in params)))

        return self.loop.run_until_complete(run())

    def insert(self, table: str, keys: Sequence[int]) -> None:
        """Single-row INSERTs, each its own statement (autocommit)."""
        got = self._many(INSERT.format(t=table), [(k, value(k)) for k in keys])
        check(got == [1] * len(keys), "asyncio INSERT: a rowcount is not 1")

    def select(self, keys: Sequence[int]) -> None:
        """Point SELECTs."""
        got = self._many(SELECT, [(k,) for k in keys])
        check(got == [[(value(k),)] for k in keys], "asyncio SELECT: a wrong answer")

    def close(self) -> None:
        """Close the connection and the loop."""
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


class SyncDoor:
    """DistributedConnection: one statement after another (and executemany, as an extra)."""

    def __init__(self, nodes: tuple[str, ...]) -> None:
        self.conn = exdb.connect(nodes=nodes, autocommit=True)
        self.cur = self.conn.cursor()

    def insert_many(self, table: str, keys: Sequence[int]) -> None:
        """executemany of the one-row INSERT: each shard gets its rows in one batch."""
        self.cur.executemany(INSERT.format(t=table), [(k, value(k)) for k in keys])
        check(self.cur.rowcount == len(keys), f"executemany rowcount {self.cur.rowcount}")

    def select(self, keys: Sequence[int]) -> None:
        """Point SELECTs, one after another."""
        for k in keys:
            got = self.cur.execute(SELECT, (k,)).fetchall()
            check(got == [(value(k),)], f"sync SELECT k={k}: {got}")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class PgClient:
    """psycopg 3 on the private PostgreSQL server."""

    def __init__(self, server: PostgresServer) -> None:
        import psycopg

        self.conn = psycopg.connect(**server.conninfo, autocommit=True)
        self.cur = self.conn.cursor()

    def insert_pipeline(self, table: str, keys: Sequence[int]) -> None:
        """Single-row INSERTs in pipeline mode: sent without waiting, one Sync at the end."""
        sql = pg(INSERT.format(t=table))
        with self.conn.pipeline():
            for k in keys:
                self.cur.execute(sql, (k, value(k)))

    def insert_executemany(self, table: str, keys: Sequence[int]) -> None:
        """executemany (pipelined by psycopg) in one transaction."""
        with self.conn.transaction():
            self.cur.executemany(pg(INSERT.format(t=table)), [(k, value(k)) for k in keys])
        check(self.cur.rowcount == len(keys), f"psycopg executemany rowcount {self.cur.rowcount}")

    def select_each(self, keys: Sequence[int]) -> None:
        """Point SELECTs, one after another (prepared by psycopg after 5 runs)."""
        sql = pg(SELECT)
        for k in keys:
            got = self.cur.execute(sql, (k,)).fetchall()
            check(got == [(value(k),)], f"psycopg SELECT k={k}: {got}")

    def select_pipeline(self, keys: Sequence[int]) -> None:
        """Point SELECTs in pipeline mode: executemany(..., returning=True)."""
        self.cur.executemany(pg(SELECT), [(k,) for k in keys], returning=True)
        got = []
        while True:
            got.append(self.cur.fetchall())
            if not self.cur.nextset():
                break
        check(got == [[(value(k),)] for k in keys], "psycopg pipelined SELECT: a wrong answer")

    def copy(self, rows: list[Row]) -> None:
        """COPY ... FROM STDIN in binary format, one transaction."""
        with (
            self.conn.transaction(),
            self.cur.copy("COPY facts (k, g, v, s) FROM STDIN (FORMAT BINARY)") as cp,
        ):
            cp.set_types(["int4", "int4", "float8", "text"])
            for row in rows:
                cp.write_row(row)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[Row]:
        """A query, every row fetched (client-side cursor)."""
        return [tuple(r) for r in self.cur.execute(pg(sql), params).fetchall()]

    def fetch_server_side(self, sql: str, params: Sequence[Any], batch: int = 10_000) -> list[Row]:
        """A large result through a server-side (named) cursor, ``batch`` rows at a time."""
        rows: list[Row] = []
        with self.conn.transaction(), self.conn.cursor(name="w5") as cur:
            cur.execute(pg(sql), params)
            while part := cur.fetchmany(batch):
                rows.extend(part)
        return rows

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class Floor:
    """The in-process database: sqlite3 or DuckDB, in memory, in this process."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.closed = False
        if engine == "sqlite":
            self.conn: Any = sqlite3.connect(":memory:")
        else:
            import duckdb

            self.conn = duckdb.connect(":memory:")

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """One statement, committed."""
        self.conn.execute(sql, list(params or ()))
        if self.engine == "sqlite":
            self.conn.commit()

    def insert_rows(self, sql: str, rows: list[Row]) -> None:
        """executemany in one transaction (a small table)."""
        self.conn.executemany(sql, rows)
        if self.engine == "sqlite":
            self.conn.commit()

    def insert_each(self, table: str, keys: Sequence[int]) -> None:
        """Single-row INSERTs, one transaction."""
        sql = INSERT.format(t=table)
        for k in keys:
            self.conn.execute(sql, (k, value(k)))
        self.conn.commit()

    def select_each(self, keys: Sequence[int]) -> None:
        """Point SELECTs."""
        for k in keys:
            got = self.conn.execute(SELECT, (k,)).fetchall()
            check(got == [(value(k),)], f"floor SELECT k={k}: {got}")

    def load(self, rows: list[Row]) -> None:
        """A chunk of rows: sqlite3 executemany in one transaction; DuckDB from column lists
        (its per-row INSERT is far too slow for millions of rows)."""
        if self.engine == "sqlite":
            self.conn.executemany(FACTS_INSERT, rows)
            self.conn.commit()
        else:
            self.conn.execute(DUCKDB_BULK, [list(col) for col in zip(*rows, strict=True)])

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[Row]:
        """A query, every row fetched."""
        return [tuple(r) for r in self.conn.execute(sql, list(params or ())).fetchall()]

    def close(self) -> None:
        """Release the database (once)."""
        if not self.closed:
            self.closed = True
            self.conn.close()


def exdb_query(conn: exdb.DistributedConnection, sql: str, params: Any = None) -> list[Row]:
    """A query through exdb, every row fetched."""
    rows: list[Row] = conn.execute(sql, params).fetchall()
    return rows


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What the workloads run on."""

    sqlite: LocalCluster
    duckdb: LocalCluster
    floors: dict[str, Floor]
    pg: PgClient | None
    stack: contextlib.ExitStack


def unavailable(report: Report, workload: str, case: str, target: str, unit: str) -> None:
    """A PostgreSQL row that could not be measured: it says so, it is not dropped."""
    report.add(
        Result(workload, case, target, POSTGRES, "postgres", None, unit, report.postgres.reason)
    )


def chunk_keys(offset: int, chunk: int) -> Callable[[int], range]:
    """Keys of chunk ``i`` for a target whose key range starts at ``offset``."""
    return lambda i: range(offset + i * chunk, offset + (i + 1) * chunk)


def rate_of(times: list[float], per_call: int) -> float:
    """Items per second from the median call."""
    return per_call / median(times)


def w1_point_writes(report: Report, s: Setup, z: Sizes) -> str:
    """W1: single-row INSERTs with distinct keys; returns the name of the best exdb door."""
    print(f"\nW1 point writes: {z.writes:,} single-row INSERTs per target", flush=True)
    nodes = s.sqlite.nodes
    with exdb.connect(nodes=nodes, autocommit=True) as conn:
        conn.execute(KV_DDL.format(t="kv"))
    s.floors["sqlite"].execute(KV_DDL.format(t="kv"))
    if s.pg is not None:
        s.pg.cur.execute(KV_DDL.format(t="kv"))
    workers1, workers2 = WorkersDoor(nodes, 1), WorkersDoor(nodes, 2)
    aio, sync = AsyncioDoor(nodes), SyncDoor(nodes)
    try:
        n, c = z.writes, z.write_chunk
        # Each target writes its own key range of the one table (offset 0 is every target's
        # first range: W2 reads those keys everywhere).
        doors: dict[str, tuple[str, Callable[[Sequence[int]], None], int]] = {
            "AsyncDistributedConnection nWorkers=1, lists of {c:,}": (
                EXDB,
                lambda ks: workers1.insert("kv", ks),
                0,
            ),
            "AsyncDistributedConnection nWorkers=2, lists of {c:,}": (
                EXDB,
                lambda ks: workers2.insert("kv", ks),
                n,
            ),
            "asyncio door, 64 in flight": (EXDB, lambda ks: aio.insert("kv", ks), 2 * n),
            "DistributedConnection.executemany, {c:,} rows a call (a batch, not single-row"
            " INSERTs)": (EXTRA, lambda ks: sync.insert_many("kv", ks), 3 * n),
            "sqlite3 in-process, a transaction per {c:,}": (
                FLOOR,
                lambda ks: s.floors["sqlite"].insert_each("kv", ks),
                0,
            ),
        }
        if s.pg is not None:
            pgc = s.pg
            doors["psycopg pipeline mode, autocommit, one Sync per {c:,}"] = (
                POSTGRES,
                lambda ks: pgc.insert_pipeline("kv", ks),
                0,
            )
            doors["psycopg executemany, a transaction per {c:,}"] = (
                POSTGRES,
                lambda ks: pgc.insert_executemany("kv", ks),
                n,
            )
        runners: dict[str, Runner] = {}
        for name, (_, fn, offset) in doors.items():
            keys = chunk_keys(offset, c)
            runners[name] = lambda i, fn=fn, keys=keys: fn(keys(i))
        times = interleaved(runners, n // c)
    finally:
        for door in (workers1, workers2, aio, sync):
            door.close()
    for name, (kind, _, _) in doors.items():
        engine = {FLOOR: "sqlite", POSTGRES: "postgres"}.get(kind, "sqlite")
        label = name.format(c=c)
        target = label if kind != EXDB and kind != EXTRA else f"exdb 2 SQLite shards, {label}"
        report.add(
            Result(
                "W1 point writes", "", target, kind, engine, rate_of(times[name], c), "statements/s"
            )
        )
    if s.pg is None:
        unavailable(report, "W1 point writes", "", "psycopg pipeline mode", "statements/s")
    # every target holds exactly the rows it was sent
    exdb_rows = 4 * n
    with exdb.connect(nodes=nodes) as conn:
        got = conn.execute("SELECT COUNT(*), SUM(k) FROM kv").fetchone()
    check(got == (exdb_rows, exdb_rows * (exdb_rows - 1) // 2), f"exdb kv holds {got}")
    got = s.floors["sqlite"].query("SELECT COUNT(*), SUM(k) FROM kv")[0]
    check(got == (n, n * (n - 1) // 2), f"sqlite3 kv holds {got}")
    if s.pg is not None:
        got = s.pg.query("SELECT COUNT(*), SUM(k) FROM kv")[0]
        check(got == (2 * n, 2 * n * (2 * n - 1) // 2), f"PostgreSQL kv holds {got}")
    winner = best([r for r in report.of("W1 point writes") if r.kind == EXDB])
    assert winner is not None
    return next(name for name in doors if winner.target.endswith(name.format(c=c)))


def w2_point_reads(report: Report, s: Setup, z: Sizes) -> None:
    """W2: SELECTs by primary key, of keys W1 wrote on every target."""
    print(f"\nW2 point reads: {z.reads:,} SELECTs by primary key per target", flush=True)
    nodes = s.sqlite.nodes
    c = z.read_chunk
    probes = [(i * _HASH + 12345) % z.writes for i in range(z.reads)]

    def part(i: int) -> list[int]:
        return probes[i * c : (i + 1) * c]

    workers1, workers2 = WorkersDoor(nodes, 1), WorkersDoor(nodes, 2)
    aio, sync = AsyncioDoor(nodes), SyncDoor(nodes)
    try:
        doors: dict[str, tuple[str, Callable[[Sequence[int]], None]]] = {
            "AsyncDistributedConnection nWorkers=1, lists of {c:,}": (EXDB, workers1.select),
            "AsyncDistributedConnection nWorkers=2, lists of {c:,}": (EXDB, workers2.select),
            "asyncio door, 64 in flight": (EXDB, aio.select),
            "DistributedConnection, one after another": (EXDB, sync.select),
            "sqlite3 in-process": (FLOOR, s.floors["sqlite"].select_each),
        }
        if s.pg is not None:
            doors["psycopg pipeline mode, executemany(returning=True) of {c:,}"] = (
                POSTGRES,
                s.pg.select_pipeline,
            )
            doors["psycopg, one after another (prepared)"] = (POSTGRES, s.pg.select_each)
        runners: dict[str, Runner] = {
            name: (lambda i, fn=fn: fn(part(i))) for name, (_, fn) in doors.items()
        }
        times = interleaved(runners, z.reads // c)
    finally:
        for door in (workers1, workers2, aio, sync):
            door.close()
    for name, (kind, _) in doors.items():
        engine = {FLOOR: "sqlite", POSTGRES: "postgres"}.get(kind, "sqlite")
        label = name.format(c=c)
        target = label if kind != EXDB else f"exdb 2 SQLite shards, {label}"
        report.add(
            Result(
                "W2 point reads", "", target, kind, engine, rate_of(times[name], c), "statements/s"
            )
        )
    if s.pg is None:
        unavailable(report, "W2 point reads", "", "psycopg pipeline mode", "statements/s")


def chunks(n: int, size: int) -> Iterator[list[Row]]:
    """The W3 rows 0..n-1, ``size`` at a time."""
    for start in range(0, n, size):
        yield [make_row(k) for k in range(start, min(n, start + size))]


def load_exdb(conn: exdb.DistributedConnection, rows: list[Row]) -> None:
    """One chunk through exdb: executemany of a one-row INSERT (one batch per shard)."""
    cur = conn.executemany(FACTS_INSERT, rows)
    check(cur.rowcount == len(rows), f"exdb executemany rowcount {cur.rowcount} != {len(rows)}")


def w3_bulk_load(report: Report, s: Setup, z: Sizes) -> dict[str, exdb.DistributedConnection]:
    """W3: the rows into every target, chunk by chunk; returns the exdb connections."""
    print(f"\nW3 bulk load: {z.rows:,} rows in chunks of {z.load_chunk:,}", flush=True)
    conns: dict[str, exdb.DistributedConnection] = {}
    for engine, cluster in (("sqlite", s.sqlite), ("duckdb", s.duckdb)):
        conn = exdb.connect(nodes=cluster.nodes, autocommit=True)
        s.stack.callback(lambda conn=conn: conn.closed or conn.close())  # W5 may close it first
        conn.execute(FACTS_DDL.format(double="DOUBLE"))
        conn.execute(REF_DDL)
        conn.execute("SELECT create_reference_table('group_info')")
        conn.executemany(REF_INSERT, ref_rows())
        conns[engine] = conn
    for floor in s.floors.values():
        floor.execute(FACTS_DDL.format(double="DOUBLE"))
        floor.execute(REF_DDL)
        floor.insert_rows(REF_INSERT, ref_rows())
    if s.pg is not None:
        s.pg.cur.execute(FACTS_DDL.format(double="DOUBLE PRECISION"))
        s.pg.cur.execute(REF_DDL)
        s.pg.cur.executemany(pg(REF_INSERT), ref_rows())

    loaders: dict[str, tuple[str, str, Callable[[list[Row]], None]]] = {
        "exdb 2 SQLite shards, executemany": (
            EXDB,
            "sqlite",
            lambda rows: load_exdb(conns["sqlite"], rows),
        ),
        "exdb 2 DuckDB shards, executemany": (
            EXDB,
            "duckdb",
            lambda rows: load_exdb(conns["duckdb"], rows),
        ),
        "sqlite3 in-process, executemany": (FLOOR, "sqlite", s.floors["sqlite"].load),
        "duckdb in-process, INSERT ... SELECT UNNEST(column lists)": (
            FLOOR,
            "duckdb",
            s.floors["duckdb"].load,
        ),
    }
    if s.pg is not None:
        loaders["psycopg COPY FROM STDIN (binary)"] = (POSTGRES, "postgres", s.pg.copy)
    times: dict[str, list[float]] = {name: [] for name in loaders}
    names = list(loaders)
    last_note = time.monotonic()
    for i, rows in enumerate(chunks(z.rows, z.load_chunk)):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            loaders[name][2](rows)
            times[name].append(time.perf_counter() - t0)
        if time.monotonic() - last_note > 30:
            last_note = time.monotonic()
            done = (i + 1) * z.load_chunk
            spent = ", ".join(f"{n.split(',')[0]} {sum(t):.0f} s" for n, t in times.items())
            print(f"  ... {done:,} of {z.rows:,} rows ({spent})", file=sys.stderr, flush=True)
    for name, (kind, engine, _) in loaders.items():
        note = f"total {sum(times[name]):.1f} s"
        report.add(
            Result(
                "W3 bulk load",
                "",
                name,
                kind,
                engine,
                rate_of(times[name], z.load_chunk),
                "rows/s",
                note,
            )
        )
    if s.pg is None:
        unavailable(report, "W3 bulk load", "", "psycopg COPY FROM STDIN", "rows/s")
    else:
        s.pg.conn.autocommit = True
        t0 = time.perf_counter()
        s.pg.cur.execute("VACUUM ANALYZE facts")
        s.pg.cur.execute("VACUUM ANALYZE group_info")
        report.notes.append(
            f"PostgreSQL: `VACUUM ANALYZE` after the load (its best practice before analytics),"
            f" not counted in W3: {time.perf_counter() - t0:.1f} s."
        )

    want = (z.rows, z.rows * (z.rows - 1) // 2)
    for engine, conn in conns.items():
        got = exdb_query(conn, "SELECT COUNT(*), SUM(k) FROM facts")[0]
        check(tuple(got) == want, f"exdb {engine} facts holds {got}, expected {want}")
    for engine, floor in s.floors.items():
        got = floor.query("SELECT COUNT(*), SUM(k) FROM facts")[0]
        check(tuple(got) == want, f"{engine} in-process facts holds {got}, expected {want}")
    if s.pg is not None:
        got = s.pg.query("SELECT COUNT(*), SUM(k) FROM facts")[0]
        check(tuple(got) == want, f"PostgreSQL facts holds {got}, expected {want}")
    return conns


def expected_top(n: int) -> list[Row]:
    """The top-10 rows by (v DESC, k), computed in Python."""
    top = heapq.nlargest(10, range(n), key=lambda k: ((k * _HASH) % _MOD, -k))
    return [(k, make_row(k)[2]) for k in top]


def w4_analytics(
    report: Report, s: Setup, z: Sizes, conns: dict[str, exdb.DistributedConnection]
) -> None:
    """W4: three queries on the W3 rows, on every target, checked against each other."""
    print(f"\nW4 analytics on {z.rows:,} rows, after a warm-up", flush=True)
    targets: dict[str, tuple[str, str, Callable[[str], list[Row]]]] = {
        "exdb 2 SQLite shards": (EXDB, "sqlite", lambda q: exdb_query(conns["sqlite"], q)),
        "exdb 2 DuckDB shards": (EXDB, "duckdb", lambda q: exdb_query(conns["duckdb"], q)),
        "sqlite3 in-process": (FLOOR, "sqlite", s.floors["sqlite"].query),
        "duckdb in-process": (FLOOR, "duckdb", s.floors["duckdb"].query),
    }
    if s.pg is not None:
        targets["PostgreSQL (psycopg)"] = (POSTGRES, "postgres", s.pg.query)
    top = expected_top(z.rows)
    for label, sql in QUERIES.items():
        answers = {name: fn(sql) for name, (_, _, fn) in targets.items()}  # the warm-up
        reference = answers["sqlite3 in-process"]
        for name, rows in answers.items():
            check(
                same_rows(rows, reference),
                f"{label}: {name} disagrees with sqlite3: "
                f"{len(rows)} rows, first {rows[:2]} against {reference[:2]}",
            )
        if sql is AGGREGATE:
            check(len(reference) == min(GROUPS, z.rows), f"{label}: {len(reference)} groups")
            total = sum((k * _HASH) % _MOD for k in range(z.rows)) / 256
            check(_close(sum(r[1] for r in reference), total), f"{label}: SUM(v) over groups")
        elif sql is TOP_N:
            check(reference == top, f"{label}: wrong top-10 {reference} against {top}")
        else:
            check(sum(r[1] for r in reference) == z.rows, f"{label}: COUNT(*) over regions")
        runners: dict[str, Runner] = {
            name: (lambda i, fn=fn, sql=sql: fn(sql)) for name, (_, _, fn) in targets.items()
        }
        times = interleaved(runners, z.reps, budget=z.budget, min_rounds=z.min_reps)
        reps = f"median of {len(next(iter(times.values())))}"
        for name, (kind, engine, _) in targets.items():
            report.add(
                Result("W4 analytics", label, name, kind, engine, median(times[name]), "s", reps)
            )
        if s.pg is None:
            unavailable(report, "W4 analytics", label, "PostgreSQL (psycopg)", "s")


def w5_large_result(
    report: Report, s: Setup, z: Sizes, conns: dict[str, exdb.DistributedConnection]
) -> None:
    """W5: fetch ``z.fetch`` rows into Python."""
    n = z.fetch
    print(f"\nW5 large result: fetch {n:,} rows, median of {z.fetch_reps}", flush=True)
    targets: dict[str, tuple[str, str, Callable[[], list[Row]]]] = {
        "exdb 2 SQLite shards, fetchall": (
            EXDB,
            "sqlite",
            lambda: exdb_query(conns["sqlite"], FETCH, (n,)),
        ),
        "exdb 2 DuckDB shards, fetchall": (
            EXDB,
            "duckdb",
            lambda: exdb_query(conns["duckdb"], FETCH, (n,)),
        ),
        "sqlite3 in-process, fetchall": (
            FLOOR,
            "sqlite",
            lambda: s.floors["sqlite"].query(FETCH, (n,)),
        ),
        "duckdb in-process, fetchall": (
            FLOOR,
            "duckdb",
            lambda: s.floors["duckdb"].query(FETCH, (n,)),
        ),
    }
    if s.pg is not None:
        pgc = s.pg
        targets["psycopg server-side cursor, fetchmany(10,000)"] = (
            POSTGRES,
            "postgres",
            lambda: pgc.fetch_server_side(FETCH, (n,)),
        )
        targets["psycopg client-side cursor, fetchall"] = (
            POSTGRES,
            "postgres",
            lambda: pgc.query(FETCH, (n,)),
        )
    want_k = n * (n - 1) // 2
    want_v = sum((k * _HASH) % _MOD for k in range(n)) / 256
    outcome: dict[str, list[Row]] = {}

    def runner(name: str, fn: Callable[[], list[Row]]) -> Runner:
        def run(_: int) -> None:
            outcome[name] = fn()

        return run

    def verify(name: str) -> None:
        rows = outcome.pop(name)  # checked, then dropped: one large result alive at a time
        check(len(rows) == n, f"W5: {name} fetched {len(rows):,} rows, expected {n:,}")
        got_k, got_v = sum(r[0] for r in rows), sum(r[2] for r in rows)
        check(got_k == want_k and _close(got_v, want_v), f"W5: {name}: wrong rows")

    runners = {name: runner(name, fn) for name, (_, _, fn) in targets.items()}
    times = interleaved(runners, z.fetch_reps, after=verify)
    for name, (kind, engine, _) in targets.items():
        report.add(
            Result("W5 large result", "", name, kind, engine, n / median(times[name]), "rows/s")
        )
    if s.pg is None:
        unavailable(report, "W5 large result", "", "psycopg server-side cursor", "rows/s")


def scaling(report: Report, s: Setup, z: Sizes, door: str) -> None:
    """W4's aggregate and W1 (the best door) on 1..4 local SQLite shards."""
    counts = z.scale_shards
    print(f"\nScaling: SQLite shards {counts}; loading {z.rows:,} rows into each", flush=True)
    with contextlib.ExitStack() as stack:
        clusters: dict[int, LocalCluster] = {}
        conns: dict[int, exdb.DistributedConnection] = {}
        for shards in counts:
            if shards == 2:
                clusters[2] = s.sqlite
            else:
                clusters[shards] = stack.enter_context(LocalCluster(shards, engine="sqlite"))
            conn = exdb.connect(nodes=clusters[shards].nodes, autocommit=True)
            stack.callback(conn.close)
            conns[shards] = conn
            if shards != 2:
                conn.execute(FACTS_DDL.format(double="DOUBLE"))
                t0 = time.perf_counter()
                for rows in chunks(z.rows, z.load_chunk):
                    load_exdb(conn, rows)
                spent = time.perf_counter() - t0
                report.scaling.setdefault(shards, {})["load rows/s"] = z.rows / spent
        reference = sorted(s.floors["sqlite"].query(AGGREGATE))
        for shards, conn in conns.items():
            check(
                same_rows(sorted(exdb_query(conn, AGGREGATE)), reference),
                f"scaling: the aggregate on {shards} shards disagrees",
            )
        # The baselines are measured again here, in the same rounds: the chart's lines and
        # points then share one stretch of machine load.
        floor = s.floors["sqlite"]
        runners: dict[str, Runner] = {
            str(n): (lambda i, conn=conn: exdb_query(conn, AGGREGATE)) for n, conn in conns.items()
        }
        runners[FLOOR] = lambda i: floor.query(AGGREGATE)
        if s.pg is not None:
            pgc = s.pg
            runners[POSTGRES] = lambda i: pgc.query(AGGREGATE)
        times = interleaved(runners, z.reps, budget=z.budget, min_rounds=z.min_reps)
        for n in counts:
            report.scaling.setdefault(n, {})["aggregate s"] = median(times[str(n)])
        for name in (FLOOR, POSTGRES):
            if name in times:
                report.scaling_baselines.setdefault("aggregate s", {})[name] = median(times[name])

        # W1 through the best door, each cluster its own new table
        c = z.write_chunk
        doors: dict[int, Any] = {}
        for n, cluster in clusters.items():
            conns[n].execute(KV_DDL.format(t="kv_scale"))
            doors[n] = (
                AsyncioDoor(cluster.nodes)
                if door.startswith("asyncio")
                else WorkersDoor(cluster.nodes, 2 if "nWorkers=2" in door else 1)
            )
            stack.callback(doors[n].close)
        writers: dict[str, Runner] = {
            str(n): (lambda i, d=d: d.insert("kv_scale", chunk_keys(0, c)(i)))
            for n, d in doors.items()
        }
        floor.execute(KV_DDL.format(t="kv_scale"))
        writers[FLOOR] = lambda i: floor.insert_each("kv_scale", chunk_keys(0, c)(i))
        if s.pg is not None:
            pgc = s.pg
            pgc.cur.execute(KV_DDL.format(t="kv_scale"))
            writers[POSTGRES] = lambda i: pgc.insert_executemany("kv_scale", chunk_keys(0, c)(i))
        times = interleaved(writers, z.writes // c)
        for name in (FLOOR, POSTGRES):
            if name in times:
                rate = rate_of(times[name], c)
                report.scaling_baselines.setdefault("W1 statements/s", {})[name] = rate
        for n in counts:
            report.scaling[n]["W1 statements/s"] = rate_of(times[str(n)], c)
            got = exdb_query(conns[n], "SELECT COUNT(*), SUM(k) FROM kv_scale")[0]
            check(got == (z.writes, z.writes * (z.writes - 1) // 2), f"kv_scale holds {got}")
    base = report.scaling_baselines
    print_table(
        f"Scaling (SQLite shards; W1 through: {door.format(c=c)})",
        ["shards", "aggregate (s)", "W1 statements/s", "load rows/s"],
        [
            [n, f"{v['aggregate s']:.3f}", v["W1 statements/s"], v.get("load rows/s", "-")]
            for n, v in sorted(report.scaling.items())
        ]
        + [
            [name, f"{base['aggregate s'][name]:.3f}", base["W1 statements/s"][name], "-"]
            for name in (POSTGRES, FLOOR)
            if name in base.get("aggregate s", {})
        ],
    )
    report.notes.append(f"Scaling W1 door: {door.format(c=c)}.")


# --- the machine ---------------------------------------------------------------------------------


def machine(report: Report) -> dict[str, str]:
    """Cores, memory, CPU, OS and every engine's version."""
    import duckdb

    info: dict[str, str] = {"cores": str(os.cpu_count())}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["CPU"] = line.split(":", 1)[1].strip()
                break
    info["OS"] = platform.platform()
    info["Python"] = platform.python_version()
    info["exdb"] = exdb.__version__
    info["SQLite"] = f"{sqlite3.sqlite_version} (in-process and exdb's final stage)"
    try:
        import apsw

        info["SQLite of the exdb shards"] = f"{apsw.sqlite_lib_version()} (apsw)"
    except ImportError:
        pass
    info["DuckDB"] = duckdb.__version__
    try:
        import psycopg

        info["psycopg"] = f"{psycopg.__version__} (libpq {psycopg.pq.version()})"
    except ImportError:
        info["psycopg"] = NOT_AVAILABLE
    info["PostgreSQL"] = report.pg_version or f"{NOT_AVAILABLE}: {report.postgres.reason}"
    return info


def load_average() -> str:
    """The 1-minute load average, or '?'."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


# --- goals, tables, the markdown and the chart --------------------------------------------------


@dataclass
class Goal:
    """One goal of the issue, judged on this run's ratios."""

    what: str
    measured: str
    verdict: str


def goals(report: Report) -> list[Goal]:
    """Each goal: the measured ratio exdb / PostgreSQL and PASS, MISS or not judged."""
    out: list[Goal] = []
    quick = " (--quick: sizes too small to mean anything)" if report.quick else ""

    def judge(what: str, exdb_rows: list[Result], op: str, limit: float, case: str = "") -> None:
        workload = what.split(":")[0]
        pg_best, _ = baselines(report, workload, case)
        mine = best(exdb_rows)
        r = ratio(mine, pg_best) if mine is not None else None
        if r is None:
            out.append(Goal(what, "-", f"not judged: PostgreSQL {NOT_AVAILABLE}"))
            return
        ok = r >= limit if op == ">=" else r <= limit
        who = mine.target if mine is not None else ""
        assert pg_best is not None
        out.append(
            Goal(what, f"{r:.2f} ({who} / {pg_best.target})", ("PASS" if ok else "MISS") + quick)
        )

    def exdb_of(workload: str, engine: str, case: str = "") -> list[Result]:
        return [r for r in report.of(workload, case) if r.kind == EXDB and r.engine == engine]

    judge(
        "W1 point writes: best exdb door / PostgreSQL >= 1.0",
        exdb_of("W1 point writes", "sqlite"),
        ">=",
        1.0,
    )
    judge(
        "W2 point reads: best exdb door / PostgreSQL >= 1.0",
        exdb_of("W2 point reads", "sqlite"),
        ">=",
        1.0,
    )
    for engine, name in (("sqlite", "SQLite"), ("duckdb", "DuckDB")):
        judge(
            f"W3 bulk load: exdb {name} executemany / PostgreSQL COPY >= 0.5",
            exdb_of("W3 bulk load", engine),
            ">=",
            0.5,
        )
    for engine, name, limit in (("sqlite", "SQLite", 1.0), ("duckdb", "DuckDB", 0.2)):
        for case in QUERIES:
            judge(
                f"W4 analytics: {case}, exdb {name} time / PostgreSQL <= {limit}",
                exdb_of("W4 analytics", engine, case),
                "<=",
                limit,
                case,
            )
    for engine, name in (("sqlite", "SQLite"), ("duckdb", "DuckDB")):
        judge(
            f"W5 large result: exdb {name} / PostgreSQL >= 1.0",
            exdb_of("W5 large result", engine),
            ">=",
            1.0,
        )
    return out


WORKLOADS = [
    ("W1 point writes", ""),
    ("W2 point reads", ""),
    ("W3 bulk load", ""),
    *(("W4 analytics", case) for case in QUERIES),
    ("W5 large result", ""),
]


def table_rows(report: Report, workload: str, case: str) -> list[list[str]]:
    """Rows of one workload's table: target, median, ratio to PostgreSQL, ratio to floor."""
    pg_best, floors = baselines(report, workload, case)
    out = []
    for r in report.of(workload, case):
        if r.value is None:
            out.append([r.kind, r.target, NOT_AVAILABLE, "-", "-", r.note])
            continue
        to_pg = ratio(r, pg_best)
        floor = floors.get(r.engine)
        to_floor = ratio(r, floor) if r.kind != POSTGRES else None
        out.append(
            [
                r.kind,
                r.target,
                _figure(r.value, r.unit),
                "-" if to_pg is None else f"{to_pg:.2f}",
                "-" if to_floor is None else f"{to_floor:.2f}",
                r.note,
            ]
        )
    return out


def print_report(report: Report) -> None:
    """The tables and the goals on stdout."""
    header = ["kind", "target", "median", "ratio to PostgreSQL", "ratio to in-process", "note"]
    for workload, case in WORKLOADS:
        title = f"{workload}: {case}" if case else workload
        print_table(title, header, table_rows(report, workload, case))
    print_table(
        "Goals (ratios exdb / PostgreSQL, same run)",
        ["goal", "measured", "verdict"],
        [[g.what, g.measured, g.verdict] for g in goals(report)],
    )


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


UNITS = {
    "W1 point writes": "statements per second (higher is better)",
    "W2 point reads": "statements per second (higher is better)",
    "W3 bulk load": "rows per second (higher is better)",
    "W4 analytics": "seconds per query (lower is better)",
    "W5 large result": "rows per second (higher is better)",
}


def write_markdown(report: Report, path: Path, chart: str | None) -> None:
    """docs/benchmarks.md: how it was run, the machine, the tables, the goals, the chart."""
    z = report.sizes
    cmd = shlex.join(["python", "benchmarks/compare.py", *report.argv])
    today = datetime.date.today().isoformat()
    lines = [
        "# exdb against PostgreSQL and an in-process database",
        "",
        f"Generated by `benchmarks/compare.py` on {today} in {report.runtime / 60:.1f} minutes;"
        " do not edit by hand: `make bench` measures again and rewrites this page and"
        + (f" [the chart]({chart})." if chart else " the chart."),
        "",
        "A user deciding whether to use exdb would compare it with **one PostgreSQL server**"
        " reached from Python (psycopg 3, with its best practice for each task) and with **one"
        " in-process database** (`sqlite3` or `duckdb` in the same Python process: the floor,"
        " no network, no server). All of them ran here side by side in one run on the same"
        " machine, their measurements interleaved chunk by chunk (or repetition by repetition)"
        " so that noise falls on each alike. Every answer was checked: row counts and checksums"
        " after each load, every point read's value, and the analytics results of exdb,"
        " PostgreSQL and the floor against each other (floats within a relative 1e-9); a wrong"
        " answer stops the run.",
        "",
        "**Ratios** are exdb (or the floor) divided by the best PostgreSQL figure of the same"
        " workload, in the unit's own sense: for rates, above 1 means faster than PostgreSQL; for"
        " times (W4), below 1 means faster. *ratio to in-process* compares with the floor of the"
        " same engine (sqlite3 for SQLite shards, duckdb for DuckDB shards).",
        "",
        "## How it was run",
        "",
        "```sh",
        "make bench  # installs exdb[bench] and PostgreSQL if missing (root), runs every benchmark",
        f"{cmd}",
        "```",
        "",
        "- exdb: 2 local shards (`exdb serve`, in-memory: not durable) per engine, on 127.0.0.1;"
        " the client in this process (worker processes for AsyncDistributedConnection).",
        "- PostgreSQL: a private server started for the run (`initdb -A trust -E UTF8"
        " --locale=C`, `pg_ctl start`, run as the `postgres` user when the run is root), data"
        " directory in RAM (`/dev/shm`), listening on 127.0.0.1 only, stopped by `pg_ctl stop` at"
        " the end. Settings changed from the defaults: "
        + ", ".join(f"`{k}={v}`" for k, v in SETTINGS.items())
        + ". `fsync`, `synchronous_commit` and `full_page_writes` off make it as non-durable as"
        " exdb's in-memory shards: the comparison is of speed, not of safety. Parallel query is"
        " on (PostgreSQL's default: 2 workers per gather).",
        "- The floor: `sqlite3.connect(':memory:')` and `duckdb.connect(':memory:')`.",
        f"- Sizes: W1 {z.writes:,} INSERTs (chunks of {z.write_chunk:,}), W2 {z.reads:,} SELECTs"
        f" (chunks of {z.read_chunk:,}), W3 {z.rows:,} rows (chunks of {z.load_chunk:,}), W4"
        f" median of {z.min_reps} to {z.reps} repetitions (as many as fit in {z.budget:.0f} s a"
        f" query) after a warm-up, W5 {z.fetch:,} rows (median of {z.fetch_reps}).",
        f"- Data: `facts(k INTEGER PRIMARY KEY, g INTEGER, v DOUBLE, s VARCHAR)`, k = 0..n-1,"
        f" g = k % {GROUPS} ({GROUPS:,} groups), v a hash of k (distinct, multiples of 1/256 so"
        f" that sums are exact), s one of {CATEGORIES} categories spread over the groups;"
        f" `group_info(g, region, label)`, {GROUPS:,} rows, a reference table in exdb.",
        "",
        "## The machine",
        "",
        *_md_table(["what", "value"], [[k, v] for k, v in report.machine.items()]),
        "",
        "The machine is shared with other work, and other benchmarks may have run at the same"
        " time: absolute figures move between runs by tens of percent; the ratios of one run are"
        " what count. "
        + f"Load average (1 min) at the start {report.machine.get('load at start', '?')}, at the"
        f" end {report.machine.get('load at end', '?')}, on {report.machine.get('cores')} cores.",
        "",
        "## Results: medians and ratios",
        "",
    ]
    header = ["kind", "target", "median", "ratio to PostgreSQL", "ratio to in-process", "note"]
    for workload, case in WORKLOADS:
        title = f"{workload}: {case}" if case else workload
        if case:
            sql = QUERIES[case]
            lines += [f"### {title}", "", f"`{sql}` — {UNITS[workload]}", ""]
        else:
            lines += [f"### {title}", "", UNITS[workload], ""]
        lines += [*_md_table(header, table_rows(report, workload, case)), ""]
    lines += [
        "W1 and W2 were run on SQLite shards only: they are the transactional workloads, and"
        " DuckDB is an analytical engine nobody would pick for single-row writes. W1 counts only"
        " doors that run single-row statements; `DistributedConnection.executemany` is shown as an"
        " extra row and never counted as the best exdb door. A list of point SELECTs given to"
        " AsyncDistributedConnection runs from the calling process (one BATCH per shard), not"
        " through its worker processes, so its nWorkers=1 and nWorkers=2 rows measure the same"
        " path; other lists (W1's INSERTs) go through the workers.",
        "",
        "## Goals",
        "",
        "Ratios exdb / PostgreSQL from this run (the best exdb door against the best PostgreSQL"
        " practice).",
        "",
        *_md_table(
            ["goal", "measured", "verdict"],
            [[g.what, g.measured, g.verdict] for g in goals(report)],
        ),
        "",
        "## Scaling: 1 to 4 local shards",
        "",
        f"![W4 aggregate and W1 on 1 to 4 shards]({chart})" if chart else "(no chart: see Notes)",
        "",
    ]
    if report.scaling:
        base = report.scaling_baselines
        lines += _md_table(
            ["SQLite shards", "W4 GROUP BY aggregate", "W1 statements/s", "load (executemany)"],
            [
                [
                    str(n),
                    _figure(v["aggregate s"], "s"),
                    f"{v['W1 statements/s']:,.0f}",
                    f"{v['load rows/s']:,.0f} rows/s" if "load rows/s" in v else "(W3 above)",
                ]
                for n, v in sorted(report.scaling.items())
            ]
            + [
                [
                    f"{name} (baseline)",
                    _figure(base["aggregate s"][name], "s"),
                    f"{base['W1 statements/s'][name]:,.0f}",
                    "-",
                ]
                for name in (POSTGRES, FLOOR)
                if name in base.get("aggregate s", {})
            ],
        )
        lines += [
            "",
            f"This machine has {report.machine.get('cores')} cores. Every shard is a server"
            " process, and the client (and, for W1, its worker processes) runs on the same cores:"
            " beyond 2 shards the machine is oversubscribed, so 3 and 4 shards show the cost of"
            " more processes than cores, not what they would gain on a machine with a core per"
            " shard. PostgreSQL (the GROUP BY; psycopg executemany for W1) and the in-process"
            " floor were measured again in the same interleaved rounds as the shard counts: they"
            " are the chart's horizontal lines. This phase runs at another time of the run than"
            " W1 and W4 above, so its absolute figures differ from theirs by the machine's load"
            " of the moment; compare within one table.",
            "",
        ]
    if report.phases:
        spent = ", ".join(f"{name} {sec:.0f} s" for name, sec in report.phases.items())
        report.notes.append(
            f"Time per phase (setup, loads and checks included): {spent}; the whole run"
            f" {report.runtime:.0f} s."
        )
    if report.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in report.notes], ""]
    path.write_text("\n".join(lines))


def write_chart(report: Report, path: Path) -> bool:
    """docs/benchmarks.png: W4's aggregate and W1 against the number of shards. False when
    matplotlib is not installed (it is in the ``bench`` extra)."""
    try:
        import matplotlib
    except ImportError:
        report.notes.append(
            "The chart was not drawn: matplotlib is not installed (`pip install 'exdb[bench]'`)."
        )
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted(report.scaling)
    agg = [report.scaling[n]["aggregate s"] for n in counts]
    w1 = [report.scaling[n]["W1 statements/s"] for n in counts]
    cores = os.cpu_count() or 2
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = [
        (axes[0], agg, "W4 analytics: GROUP BY aggregate", "seconds per query (lower is better)",
         "aggregate s"),
        (axes[1], w1, "W1 point writes", "statements per second (higher is better)",
         "W1 statements/s"),
    ]  # fmt: skip
    for ax, values, title, ylabel, key in panels:
        ax.plot(counts, values, "o-", color="tab:blue", lw=2, label="exdb, SQLite shards")
        lines = report.scaling_baselines.get(key, {})
        if POSTGRES in lines:
            ax.axhline(lines[POSTGRES], color="tab:green", ls="--", label="PostgreSQL (psycopg)")
        else:
            ax.text(0.02, 0.95, f"PostgreSQL {NOT_AVAILABLE}", transform=ax.transAxes, va="top")
        if FLOOR in lines:
            ax.axhline(lines[FLOOR], color="tab:gray", ls=":", label="sqlite3 in-process")
        if counts and counts[-1] > cores:
            ax.axvspan(
                cores + 0.5,
                counts[-1] + 0.5,
                color="tab:red",
                alpha=0.08,
                label=f"more shards than the {cores} cores",
            )
        ax.set_xticks(counts)
        ax.set_xlim(counts[0] - 0.5, counts[-1] + 0.5)
        ax.set_xlabel("local shards")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    info = report.machine
    fig.suptitle(
        f"exdb scaling, {report.sizes.rows:,} rows, {report.sizes.writes:,} INSERTs"
        f" — {info.get('cores')} cores, {info.get('memory', '?')}, Python {info.get('Python')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_json(report: Report, path: Path) -> None:
    """Every figure as JSON (for the tests and for tools)."""
    data = {
        "quick": report.quick,
        "postgres": {"available": report.postgres.available, "reason": report.postgres.reason},
        "checks_passed": CHECKS[0],
        "results": [asdict(r) for r in report.results],
        "scaling": {str(n): v for n, v in report.scaling.items()},
        "goals": [asdict(g) for g in goals(report)],
        "machine": report.machine,
        "phases": report.phases,
    }
    path.write_text(json.dumps(data, indent=1))


# --- main ----------------------------------------------------------------------------------------


def run(report: Report, pg_status: PostgresStatus) -> None:
    """Start everything, run the workloads, stop everything (always)."""
    z = report.sizes
    with contextlib.ExitStack() as stack:
        server: PostgresServer | None = None
        if pg_status.available:
            server = stack.enter_context(PostgresServer(pg_status))
        sqlite_cluster = stack.enter_context(LocalCluster(2, engine="sqlite"))
        duckdb_cluster = stack.enter_context(LocalCluster(2, engine="duckdb"))
        floors = {engine: Floor(engine) for engine in ("sqlite", "duckdb")}
        for floor in floors.values():
            stack.callback(floor.close)
        pgc = None
        if server is not None:
            pgc = PgClient(server)
            stack.callback(pgc.close)
            report.pg_version = str(pgc.query("SHOW server_version")[0][0])
            print(f"PostgreSQL {report.pg_version} on 127.0.0.1:{server.port} ({server.root})")
        else:
            print(f"PostgreSQL {NOT_AVAILABLE}: {pg_status.reason}")
        setup = Setup(sqlite_cluster, duckdb_cluster, floors, pgc, stack)
        door = report.timed("W1", lambda: w1_point_writes(report, setup, z))
        report.timed("W2", lambda: w2_point_reads(report, setup, z))
        conns = report.timed("W3", lambda: w3_bulk_load(report, setup, z))
        report.timed("W4", lambda: w4_analytics(report, setup, z, conns))
        report.timed("W5", lambda: w5_large_result(report, setup, z, conns))
        conns["duckdb"].close()
        floors["duckdb"].close()
        duckdb_cluster.stop()  # free its memory and cores before the scaling runs
        report.timed("scaling", lambda: scaling(report, setup, z, door))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run of seconds")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write benchmarks.md and benchmarks.png there (default: docs/, none with --quick)",
    )
    ap.add_argument(
        "--install-postgres",
        action="store_true",
        help="apt-get install postgresql when it is missing (root only; `make bench` does it)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write every figure there")
    ap.add_argument(
        "--without-postgres",
        action="store_true",
        help="do not use PostgreSQL (its rows say 'not available')",
    )
    args = ap.parse_args()
    out = args.out if args.out is not None else (None if args.quick else ROOT / "docs")
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)

    report = Report(sizes=QUICK if args.quick else Sizes(), quick=args.quick, argv=sys.argv[1:])
    started = time.perf_counter()
    load_start = load_average()
    report.postgres = find_postgres(
        install=args.install_postgres,
        disabled="disabled by --without-postgres" if args.without_postgres else "",
    )
    report.notes += report.postgres.notes
    try:
        run(report, report.postgres)
    except Disagreement as exc:
        print(f"\nRESULTS DISAGREE: {exc}", flush=True)
        sys.exit(1)
    report.runtime = time.perf_counter() - started
    report.machine = machine(report)
    report.machine["load at start"] = load_start
    report.machine["load at end"] = load_average()
    print_report(report)
    who = (
        "exdb, PostgreSQL and the in-process floors"
        if report.pg_version
        else ("exdb and the in-process floors (PostgreSQL not available)")
    )
    print(f"\nresults agree: {who} returned the same answers ({CHECKS[0]:,} checks passed)")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        drawn = write_chart(report, out / "benchmarks.png")
        write_markdown(report, out / "benchmarks.md", "benchmarks.png" if drawn else None)
        print(
            f"wrote {out / 'benchmarks.md'}" + (f" and {out / 'benchmarks.png'}" if drawn else "")
        )
    if args.json is not None:
        write_json(report, args.json)
    spent = ", ".join(f"{name} {sec:.0f} s" for name, sec in report.phases.items())
    print(f"total runtime: {report.runtime:.1f} s ({spent})")


if __name__ == "__main__":
    main()
