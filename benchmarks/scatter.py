"""Scatter queries over 1 and 2 shards, against the same query on one in-process database.

Loads the same deterministic rows (4,000,000 by default) into an exdb cluster of 1 shard, one of
2 shards, and one in-process database of the same engine (the floor: ``sqlite3`` or ``duckdb``
in this process). Then it runs, on all three, interleaved so that machine noise falls on each
alike:

- a GROUP BY aggregate (plan ``aggregate``: partial aggregates on each shard, a final stage);
- an ORDER BY ... LIMIT 10 (plan ``scatter``: LIMIT pushed down, a k-way merge);
- a point SELECT by key (plan ``single``: one shard answers), with a different key each time.

It checks that the three agree (a benchmark that returns wrong answers is worthless: it exits
non-zero if they differ) and prints, per engine, the medians, the ratios to the floor and the
1 -> 2 shard speedup, then the goals with PASS or MISS. Two machine lines say how far the figures
can be trusted: how much two processes at once get done compared with one (the ceiling for any
speedup), and how much CPU other processes took while it measured. Load times are printed too
(informative: exdb loads with ``executemany`` in chunks; the floor loads directly, DuckDB's
through columnar ``UNNEST`` lists, since its per-row INSERT is far too slow for millions of
rows).

    python benchmarks/scatter.py [--quick] [--rows N] [--engine sqlite|duckdb|both]
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import io
import math
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import exdb
from exdb.cluster import LocalCluster

from _common import median, print_table

DDL = "CREATE TABLE facts (k INTEGER PRIMARY KEY, g INTEGER, v DOUBLE, s VARCHAR)"
INSERT = "INSERT INTO facts (k, g, v, s) VALUES (?, ?, ?, ?)"
DUCKDB_BULK = "INSERT INTO facts SELECT UNNEST(?), UNNEST(?), UNNEST(?), UNNEST(?)"
AGGREGATE = "SELECT g, COUNT(*), SUM(v), AVG(v) FROM facts GROUP BY g"
TOP_N = "SELECT k, v FROM facts ORDER BY v DESC, k LIMIT 10"
POINT = "SELECT * FROM facts WHERE k = ?"

GROUPS = 1000
CHUNK = 100_000
FULL_ROWS = 4_000_000
# v = a multiplicative hash of k modulo 2**24, over 256: distinct for k < 2**24 (no ties in the
# top-N) and a multiple of 1/256, so that each group's SUM is exact in any summation order.
_HASH = 2654435761
_MOD = 1 << 24

TARGETS = ("floor", "exdb 1 shard", "exdb 2 shards")
Row = tuple[Any, ...]


def make_row(k: int) -> Row:
    """Row ``k`` of the data set: (k, g, v, s)."""
    return (k, k % GROUPS, ((k * _HASH) % _MOD) / 256, f"s{k % 9973}")


def chunks(n: int, size: int = CHUNK) -> Iterator[list[Row]]:
    """The rows 0..n-1, ``size`` at a time."""
    for start in range(0, n, size):
        yield [make_row(k) for k in range(start, min(n, start + size))]


def point_keys(n: int, count: int) -> list[int]:
    """``count`` keys spread over 0..n-1, the same sequence for every target."""
    return [(i * _HASH + 12345) % n for i in range(count)]


# --- the targets --------------------------------------------------------------------------------


class Floor:
    """The in-process database: sqlite3 in memory, or DuckDB in memory."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        if engine == "sqlite":
            self.conn: Any = sqlite3.connect(":memory:", isolation_level=None)
        else:
            import duckdb

            self.conn = duckdb.connect(":memory:")
        self.conn.execute(DDL)

    def load(self, rows: list[Row]) -> None:
        """Insert one chunk, in one transaction."""
        if self.engine == "sqlite":
            self.conn.execute("BEGIN")
            self.conn.executemany(INSERT, rows)
            self.conn.execute("COMMIT")
        else:
            self.conn.execute(DUCKDB_BULK, [list(col) for col in zip(*rows, strict=True)])

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[Row]:
        """Run a query and fetch every row."""
        if params is None:
            return [tuple(r) for r in self.conn.execute(sql).fetchall()]
        return [tuple(r) for r in self.conn.execute(sql, list(params)).fetchall()]

    def close(self) -> None:
        """Release the database."""
        self.conn.close()


class Exdb:
    """An exdb distributed connection to one cluster."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.conn: exdb.DistributedConnection = exdb.connect(nodes=cluster.nodes, autocommit=True)
        self.cur = self.conn.cursor()
        self.cur.execute(DDL)

    def load(self, rows: list[Row]) -> None:
        """Insert one chunk: each shard gets its rows in one batch (one transaction a shard)."""
        self.cur.executemany(INSERT, rows)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[Row]:
        """Run a query and fetch every row."""
        rows: list[Row] = self.cur.execute(sql, params).fetchall()
        return rows

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


Target = Floor | Exdb


def load_all(targets: dict[str, Target], n: int) -> dict[str, float]:
    """Load rows 0..n-1 into every target, chunk by chunk; seconds spent loading each."""
    spent = dict.fromkeys(targets, 0.0)
    done = 0
    last_note = time.monotonic()
    for rows in chunks(n):
        for name, target in targets.items():
            t0 = time.perf_counter()
            target.load(rows)
            spent[name] += time.perf_counter() - t0
        done += len(rows)
        if time.monotonic() - last_note > 30 and done < n:
            last_note = time.monotonic()
            so_far = ", ".join(f"{k} {v:.0f} s" for k, v in spent.items())
            print(f"  ... loaded {done:,} of {n:,} rows ({so_far})", file=sys.stderr, flush=True)
    return spent


# --- checks -------------------------------------------------------------------------------------


class Disagreement(Exception):
    """exdb and the floor returned different results."""


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def _same_rows(a: list[Row], b: list[Row]) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(_close(p, q) for p, q in zip(x, y, strict=True))
        for x, y in zip(a, b, strict=True)
    )


def check_agreement(targets: dict[str, Target], n: int, keys: list[int]) -> str:
    """Run each query on every target and compare; raise Disagreement on any difference.
    Returns a one-line summary of what was checked."""
    results = {name: sorted(t.query(AGGREGATE)) for name, t in targets.items()}
    floor = results["floor"]
    groups = min(GROUPS, n)
    if len(floor) != groups or sum(r[1] for r in floor) != n:
        raise Disagreement(f"floor aggregate: {len(floor)} groups, expected {groups}")
    for name, rows in results.items():
        if not _same_rows(rows, floor):
            bad = next(
                ((x, y) for x, y in zip(rows, floor, strict=False) if not _same_rows([x], [y])),
                None,
            )
            raise Disagreement(f"aggregate: {name} has {len(rows)} groups, first difference {bad}")
    tops = {name: t.query(TOP_N) for name, t in targets.items()}
    top_keys = heapq.nlargest(10, range(n), key=lambda k: (make_row(k)[2], -k))
    wanted = [(k, make_row(k)[2]) for k in top_keys]
    for name, rows in tops.items():
        if rows != wanted:
            raise Disagreement(
                f"top-10: {name} returned keys {[r[0] for r in rows]}, "
                f"expected {[k for k, _ in wanted]}"
            )
    for k in keys:
        want = [make_row(k)]
        for name, t in targets.items():
            got = t.query(POINT, (k,))
            if not _same_rows(got, want):
                raise Disagreement(f"point k={k}: {name} returned {got}, expected {want}")
    return (
        f"results agree: {groups} groups (counts, sums and averages), the top-10 keys and"
        f" {len(keys)} point rows are the same on the floor, exdb 1 shard and exdb 2 shards"
    )


# --- the machine's parallelism ------------------------------------------------------------------

# A CPU-bound SQLite statement (no data, no I/O), timed in a child process on each "go" line.
_PROBE = r"""
import sqlite3, sys, time
conn = sqlite3.connect(":memory:")
sql = ("WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 500000)"
       " SELECT sum(x % 7) FROM r")
for _ in sys.stdin:
    t0 = time.perf_counter()
    conn.execute(sql).fetchall()
    print(time.perf_counter() - t0, flush=True)
"""


class ForeignLoad:
    """CPU used by processes that are not this benchmark's (other users of the machine) while
    it measures: Linux /proc accounting, all of the machine's CPU time minus this process's,
    its shard servers' and its probes'. None where /proc is not available."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self._start: tuple[float, float, float] | None = None
        self.cores: float | None = None

    @staticmethod
    def _process_ticks(pid: int) -> float:
        """utime + stime of a process, all its threads (fields 14 and 15 of /proc/PID/stat)."""
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[-1].split()  # after "pid (comm)": field 3 onwards
        return float(int(fields[11]) + int(fields[12]))

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            # /proc/stat "cpu" line: user nice system idle iowait irq softirq steal ...
            with open("/proc/stat") as f:
                cpu = [int(x) for x in f.readline().split()[1:]]
            busy = float(sum(cpu) - cpu[3] - cpu[4])
            ours = sum(self._process_ticks(pid) for pid in self.pids())
        except (OSError, ValueError, IndexError):
            return None
        return time.perf_counter(), busy, ours

    def start(self) -> None:
        """Begin the measured period."""
        self._start = self._sample()

    def stop(self) -> None:
        """End it: ``cores`` is the other processes' average use, in cores."""
        end = self._sample()
        if self._start is None or end is None:
            return
        ticks = os.sysconf("SC_CLK_TCK")
        wall = end[0] - self._start[0]
        foreign = (end[1] - self._start[1]) - (end[2] - self._start[2])
        self.cores = max(0.0, foreign / ticks / wall) if wall > 0 else None


class ParallelProbe:
    """How much faster two processes get through CPU-bound work than one, right now: the
    ceiling for any 1 -> 2 shard speedup. A 2-core virtual machine often delivers much less than
    2x (vCPUs sharing a physical core, other tenants, other processes on the machine)."""

    def __init__(self) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", _PROBE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        self.samples: list[float] = []

    def _run(self, procs: list[subprocess.Popen[str]]) -> list[float]:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        out = []
        for proc in procs:
            assert proc.stdout is not None
            out.append(float(proc.stdout.readline()))
        return out

    def measure(self) -> None:
        """One sample: the same work by one process alone, then by both at once."""
        (solo,) = self._run(self.procs[:1])
        pair = self._run(self.procs)
        self.samples.append(2 * solo / max(pair))

    @property
    def ceiling(self) -> float:
        """Median of the samples: 2.0 on two free cores, 1.0 when two processes share one."""
        return median(self.samples)

    def close(self) -> None:
        """Stop the probe processes (they end when their stdin closes)."""
        for proc in self.procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            proc.wait(10)
            proc.stdout.close()


# --- timing -------------------------------------------------------------------------------------


def interleaved(
    targets: dict[str, Target],
    sql: str,
    rounds: int,
    per_round: int,
    keys: list[int] | None = None,
    between: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Median seconds of one query on each target, measured in alternating rounds (after one
    warm-up call each); ``keys`` gives the point query a different key on every call;
    ``between`` runs after each round."""
    samples: dict[str, list[float]] = {name: [] for name in targets}
    calls: dict[str, int] = dict.fromkeys(targets, 0)
    for t in targets.values():
        t.query(sql, (keys[0],) if keys else None)
    clock = time.perf_counter
    for _ in range(rounds):
        for name, t in targets.items():
            for _ in range(per_round):
                params = None
                if keys:
                    params = (keys[calls[name] % len(keys)],)
                    calls[name] += 1
                t0 = clock()
                t.query(sql, params)
                samples[name].append(clock() - t0)
        if between is not None:
            between()
    return {name: median(values) for name, values in samples.items()}


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} us"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# --- one engine ---------------------------------------------------------------------------------


def run_engine(engine: str, n: int, heavy_reps: int, point_reps: int, quick: bool) -> None:
    """Load, check and time the three queries on one engine; print its tables and goals."""
    print(f"\n=== {engine}: {n:,} rows, {heavy_reps} repetitions (point: {point_reps}) ===")
    with contextlib.ExitStack() as stack:
        one = stack.enter_context(LocalCluster(1, engine=engine))
        two = stack.enter_context(LocalCluster(2, engine=engine))
        targets: dict[str, Target] = {}
        floor = Floor(engine)
        stack.callback(floor.close)
        targets["floor"] = floor
        for name, cluster in (("exdb 1 shard", one), ("exdb 2 shards", two)):
            target = Exdb(cluster)
            stack.callback(target.close)
            targets[name] = target

        spent = load_all(targets, n)
        print_table(
            f"Load ({engine}): {n:,} rows in chunks of {min(n, CHUNK):,}",
            ["target", "seconds", "rows/s"],
            [[name, f"{s:.2f}", n / s if s else 0.0] for name, s in spent.items()],
        )

        keys = point_keys(n, max(point_reps, 20))
        print("\n" + check_agreement(targets, n, keys[:20]))

        probe = ParallelProbe()
        stack.callback(probe.close)
        ours = [os.getpid(), *(p.pid for p in probe.procs)]
        ours += [s.pid for c in (one, two) for s in c.servers if s.pid is not None]
        foreign = ForeignLoad(lambda: ours)
        foreign.start()
        point_rounds = min(10, point_reps)
        medians = {
            "aggregate": interleaved(targets, AGGREGATE, heavy_reps, 1, between=probe.measure),
            "top-10": interleaved(targets, TOP_N, heavy_reps, 1),
            "point": interleaved(targets, POINT, point_rounds, point_reps // point_rounds, keys),
        }
        foreign.stop()

    labels = {
        "aggregate": "GROUP BY aggregate",
        "top-10": "ORDER BY ... LIMIT 10",
        "point": "point SELECT by key",
    }
    rows = []
    for query, m in medians.items():
        f, s1, s2 = (m[t] for t in TARGETS)
        rows.append(
            [labels[query], _duration(f), _duration(s1), _duration(s2), s1 / f, s2 / f, s1 / s2]
        )
    print_table(
        f"Medians ({engine}; floor = {'sqlite3' if engine == 'sqlite' else 'duckdb'} in-process)",
        [
            "query",
            "floor",
            "exdb 1 shard",
            "exdb 2 shards",
            "1 shard/floor",
            "2 shards/floor",
            "speedup 1->2",
        ],
        rows,
    )

    note = "  (--quick: too little data for the goals to mean anything)" if quick else ""
    agg = medians["aggregate"]
    print(
        f"\nmachine: 2 processes at once got through {probe.ceiling:.2f}x the CPU-bound work of"
        f" one (median of {len(probe.samples)}, measured between the aggregate rounds): the"
        " ceiling for any 1 -> 2 shard speedup in this run"
    )
    if foreign.cores is not None:
        verdict = (
            "quiet"
            if foreign.cores < 0.2
            else "NOT quiet: the timings are disturbed, run again on a quiet machine"
        )
        print(
            f"machine: other processes used {foreign.cores:.2f} cores on average while this"
            f" measured ({verdict})"
        )
    if engine == "sqlite":
        speedup = agg["exdb 1 shard"] / agg["exdb 2 shards"]
        ratio = agg["exdb 1 shard"] / agg["floor"]
        print(
            f"goal sqlite: aggregate speedup 1 -> 2 shards >= 1.7x:"
            f" {speedup:.2f}x {_verdict(speedup >= 1.7)}"
            f" (machine ceiling {probe.ceiling:.2f}x){note}"
        )
        print(
            f"goal sqlite: aggregate exdb 1 shard / sqlite3 in-process <= 1.3x:"
            f" {ratio:.2f}x {_verdict(ratio <= 1.3)}{note}"
        )
    else:
        for query in ("aggregate", "top-10"):
            ratio = medians[query]["exdb 2 shards"] / medians[query]["floor"]
            print(
                f"goal duckdb: {labels[query]} exdb 2 shards / duckdb in-process <= 1.5x:"
                f" {ratio:.2f}x {_verdict(ratio <= 1.5)}{note}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--rows", type=int, default=None, help=f"rows to load (default {FULL_ROWS:,})")
    ap.add_argument("--engine", default="both", choices=["sqlite", "duckdb", "both"])
    args = ap.parse_args()
    n = args.rows if args.rows is not None else (20_000 if args.quick else FULL_ROWS)
    if n < 1:
        ap.error("--rows must be at least 1")
    heavy_reps, point_reps = (2, 20) if args.quick else (5, 200)
    engines = ["sqlite", "duckdb"] if args.engine == "both" else [args.engine]
    # Line by line even into a file, so that the tables and the progress notes on stderr interleave.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)

    t0 = time.perf_counter()
    try:
        for engine in engines:
            run_engine(engine, n, heavy_reps, point_reps, args.quick)
    except Disagreement as exc:
        print(f"\nRESULTS DISAGREE: {exc}", flush=True)
        sys.exit(1)
    print(f"\ntotal runtime: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
