"""TPC-H's 22 queries on exdb (2 and 3 shards of each engine) against one in-process database.

The data comes from ``tpchgen-cli`` (the Rust generator on PyPI, ``pip install 'exdb[bench]'``),
written once per scale factor as CSV into a cache directory. It is loaded into 2 and 3 shards of
each engine (``exdb.cluster.LocalCluster``, ``cursor.copy_from``): lineitem and orders
distributed by orderkey, customer, part, partsupp and supplier by their own keys (partsupp by
ps_partkey), nation and region as reference tables. The same files go into one in-process
database of the same engine (sqlite3 / duckdb), and for SQLite shards into a private PostgreSQL
(benchmarks/_postgres.py), where the baselines run; ANALYZE runs on every one of them.

Per query it prints the plan exdb chose (the first line of ``conn.explain``), the rows moved
from the shards, the seconds of exdb and of each baseline, their ratios (exdb / baseline: lower
is better), and whether the answer is exact: equal, as a multiset, to the in-process engine's
(and PostgreSQL's), numbers within a relative 1e-9 (DECIMAL and float alike), and in the order
the ORDER BY fixes (rows tied on its keys may come in any order). Every query, exdb's and the
baselines', is capped at ``--cap`` seconds (120): a capped one is interrupted and shown as
"> 120 s", and its sum as a lower bound. Then the sums, and the goals of issue 10 as met or
missed (the speed goals are judged at SF 1). Exit status 1 when any answer is not exact.

    python benchmarks/tpch.py --sf 0.01                  # a smoke run
    python benchmarks/tpch.py --sf 1 --install-postgres  # the figures of issue 10
    python benchmarks/tpch.py --sf 0.1 --engines sqlite --shards 2 --queries 1,3,17
    python benchmarks/tpch.py --sf 0.1 --baselines-only  # sqlite3, duckdb, PostgreSQL alone
"""

from __future__ import annotations

import argparse
import csv
import datetime
import decimal
import functools
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import exdb
from exdb.cluster import LocalCluster

from _common import print_table
from _postgres import PostgresServer, PostgresStatus, find_postgres
from tpch_queries import DDL, DISTRIBUTED, ORDER_KEYS, QUERIES, REFERENCE, TABLES, query_text

CAP = 120.0  # seconds: a query running longer is interrupted and reported as over the cap
REL_TOL = 1e-9  # numbers compare equal within this relative tolerance
Row = tuple[Any, ...]


# --- the data -------------------------------------------------------------------------------------


def default_cache() -> Path:
    """Where generated data is kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "exdb" / "tpch"


def _tpchgen() -> str:
    """The tpchgen-cli program: next to this Python's executable, or on PATH."""
    beside = Path(sys.executable).with_name("tpchgen-cli")
    if beside.exists():
        return str(beside)
    found = shutil.which("tpchgen-cli")
    if found is None:
        raise SystemExit(
            "tpchgen-cli is not installed: `pip install 'exdb[bench]'` (or `pip install"
            " tpchgen-cli`)"
        )
    return found


def generate(sf: float, cache: Path) -> Path:
    """The CSV files of scale factor ``sf`` (one per table), generated once into ``cache``."""
    out = cache / f"sf{sf:g}"
    done = out / ".complete"
    if done.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"generating TPC-H SF {sf:g} with tpchgen-cli into {out} ...", flush=True)
    subprocess.run(
        [_tpchgen(), "csv", "-s", f"{sf:g}", "-o", str(out), "--overwrite", "--quiet"],
        check=True,
        timeout=3600,
    )
    missing = [t for t in TABLES if not (out / f"{t}.csv").exists()]
    if missing:
        raise SystemExit(f"tpchgen-cli did not write {', '.join(missing)} into {out}")
    done.write_text(f"generated in {time.perf_counter() - started:.1f} s\n")
    return out


def _csv_rows(path: Path) -> Any:
    """The rows of a generated CSV file, as text (the header skipped)."""
    f = open(path, newline="")  # noqa: SIM115 - closed by the generator's end
    try:
        reader = csv.reader(f)
        next(reader)
        yield from reader
    finally:
        f.close()


def load_exdb(conn: Any, data: Path, say: Callable[[str], None] = print) -> None:
    """Create the schema on a distributed connection, place the tables, copy the files in."""
    for table in TABLES:
        conn.execute(DDL[table])
        if table in REFERENCE:
            conn.execute(f"SELECT create_reference_table('{table}')")
        else:
            conn.execute(f"SELECT create_distributed_table('{table}', '{DISTRIBUTED[table]}')")
    for table in TABLES:
        started = time.perf_counter()
        count = conn.cursor().copy_from(data / f"{table}.csv", table)
        say(f"  {table}: {count:,} rows in {time.perf_counter() - started:.1f} s")
    conn.execute("ANALYZE")


def load_sqlite(data: Path) -> sqlite3.Connection:
    """One in-memory sqlite3 database holding the files (text values, cast by the columns'
    affinity, as on the shards)."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    for table in TABLES:
        conn.execute(DDL[table])
        with open(data / f"{table}.csv", newline="") as f:
            width = len(next(csv.reader(f)))
        marks = ", ".join("?" * width)
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO {table} VALUES ({marks})", _csv_rows(data / f"{table}.csv"))
        conn.execute("COMMIT")
    conn.execute("ANALYZE")
    return conn


def load_duckdb(data: Path) -> Any:
    """One in-memory DuckDB database holding the files."""
    import duckdb

    conn = duckdb.connect(":memory:")
    for table in TABLES:
        conn.execute(DDL[table])
        path = str(data / f"{table}.csv").replace("'", "''")
        conn.execute(f"COPY {table} FROM '{path}' (FORMAT csv, HEADER true)")
    conn.execute("ANALYZE")
    return conn


def load_postgres(conn: Any, data: Path) -> None:
    """Create the schema in PostgreSQL, COPY the files in, ANALYZE."""
    for table in TABLES:
        conn.execute(DDL[table])
        sql = f"COPY {table} FROM STDIN (FORMAT csv, HEADER true)"
        with conn.cursor() as cur, cur.copy(sql) as copy, open(data / f"{table}.csv", "rb") as f:
            while block := f.read(1 << 20):
                copy.write(block)
    conn.execute("ANALYZE")


# --- running a query under the cap ----------------------------------------------------------------


@dataclass
class Outcome:
    """One query's run: seconds (None when capped or failed), rows, and what went wrong."""

    seconds: float | None
    rows: list[Row] | None
    capped: bool = False
    error: str = ""

    def shown(self, cap: float) -> str:
        """The time as printed."""
        if self.capped:
            return f"> {cap:g} s"
        if self.seconds is None:
            return "error"
        return f"{self.seconds:.3f}"


def run_sqlite(conn: sqlite3.Connection, sql: str, cap: float) -> Outcome:
    """Run on sqlite3; a progress handler interrupts it past the cap."""
    deadline = time.perf_counter() + cap
    conn.set_progress_handler(lambda: int(time.perf_counter() > deadline), 10_000)
    started = time.perf_counter()
    try:
        rows = conn.execute(sql).fetchall()
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            return Outcome(None, None, capped=True)
        return Outcome(None, None, error=str(exc))
    finally:
        conn.set_progress_handler(None, 0)
    return Outcome(time.perf_counter() - started, [tuple(r) for r in rows])


def _with_timer(cap: float, stop: Callable[[], None], work: Callable[[], list[Row]]) -> Outcome:
    """Run ``work``; a timer calls ``stop`` if it runs past the cap."""
    fired = threading.Event()

    def on_cap() -> None:
        fired.set()
        stop()

    timer = threading.Timer(cap, on_cap)
    started = time.perf_counter()
    timer.start()
    try:
        rows = work()
    except Exception as exc:
        if fired.is_set():
            return Outcome(None, None, capped=True)
        return Outcome(None, None, error=f"{type(exc).__name__}: {exc}")
    finally:
        timer.cancel()
        timer.join()
    seconds = time.perf_counter() - started
    if fired.is_set() and seconds >= cap:
        return Outcome(None, None, capped=True)
    return Outcome(seconds, rows)


def run_duckdb(conn: Any, sql: str, cap: float) -> Outcome:
    """Run on in-process DuckDB; ``interrupt()`` stops it past the cap."""
    return _with_timer(
        cap, conn.interrupt, lambda: [tuple(r) for r in conn.execute(sql).fetchall()]
    )


def run_postgres(conn: Any, sql: str, cap: float) -> Outcome:
    """Run on PostgreSQL under ``statement_timeout``."""
    import psycopg

    conn.execute(f"SET statement_timeout = {int(cap * 1000)}")
    started = time.perf_counter()
    try:
        rows = conn.execute(sql).fetchall()
    except psycopg.errors.QueryCanceled:
        return Outcome(None, None, capped=True)
    except psycopg.Error as exc:
        return Outcome(None, None, error=f"{type(exc).__name__}: {exc}")
    return Outcome(time.perf_counter() - started, [tuple(r) for r in rows])


def _stop_exdb(conn: Any) -> Callable[[], None]:
    """What stops a running exdb statement: cancel on every node, and an interrupt of the
    client's in-process final stage (``conn.cancel()`` does not reach that stage today)."""

    def stop() -> None:
        local = getattr(getattr(getattr(conn, "engine", None), "local", None), "_conn", None)
        if local is not None:
            local.interrupt()
        conn.cancel()

    return stop


def run_exdb(conn: Any, sql: str, cap: float) -> Outcome:
    """Run on exdb; cancelled past the cap."""
    return _with_timer(cap, _stop_exdb(conn), lambda: list(conn.execute(sql).fetchall()))


def rows_moved(conn: Any, sql: str, params: Any = None) -> int | None:
    """The rows the shards sent the client for ``sql``.

    None for now: EXPLAIN ANALYZE (``conn.explain(sql, analyze=True)``, issue 10 item 7) is being
    built by another part of the work; once it lands, this reads its per-stage row counts.
    """
    return None


def plan_kind(conn: Any, sql: str) -> tuple[str, str]:
    """exdb's plan for ``sql``: its kind (the first line of explain) and the whole text."""
    try:
        text = conn.explain(sql)
    except exdb.Error as exc:
        return f"refused ({type(exc).__name__})", str(exc)
    first = text.splitlines()[0] if text else ""
    return first.removeprefix("plan:").strip(), text


_SELECT_STAR = re.compile(r"SELECT\s+\*\s+FROM\s+\"?(\w+)\"?(?:\s*$|\s*;|\s*\))", re.I | re.M)
_GATHERED = re.compile(r"^gather the rows of: (.*)$", re.MULTILINE)


def whole_table_fetches(kind: str, explain: str) -> list[str]:
    """The distributed tables a plan fetches whole into the client, as far as today's explain
    text tells: a ``gather`` plan (its "gather the rows of:" line names the tables), or a
    shard statement ``SELECT * FROM <distributed table>`` with no WHERE."""
    found = {m.group(1).lower() for m in _SELECT_STAR.finditer(explain)}
    for line in _GATHERED.findall(explain):
        found |= {item.split("(")[0].strip().strip('"').lower() for item in line.split(",")}
    fetched = sorted(t for t in found if t in DISTRIBUTED)
    if kind == "gather" and not fetched:
        fetched = ["(gather)"]
    return fetched


# --- comparing answers ----------------------------------------------------------------------------


def _norm(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return value


def _same(a: Any, b: Any, rel_tol: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)
    return bool(a == b)


def _row_key(row: Row) -> tuple[Any, ...]:
    out: list[Any] = []
    for v in row:
        if v is None:
            out.append((0, 0))
        elif isinstance(v, (int, float)):
            out.append((1, float(f"{v:.6g}")))
        else:
            out.append((2, str(v)))
    return tuple(out)


def _cmp(a: Any, b: Any, rel_tol: float) -> int:
    if a is None or b is None or _same(a, b, rel_tol):
        return 0  # NULLs sort first on SQLite and last on DuckDB/PostgreSQL: not judged
    return -1 if a < b else 1


def compare(
    got: Sequence[Row],
    want: Sequence[Row],
    order: Sequence[tuple[int, bool]],
    rel_tol: float = REL_TOL,
) -> str:
    """ "" when ``got`` is ``want`` (a multiset, numbers within ``rel_tol``, in ``order``);
    otherwise what differs."""
    g = [tuple(_norm(v) for v in r) for r in got]
    w = [tuple(_norm(v) for v in r) for r in want]
    if len(g) != len(w):
        return f"{len(g)} rows, expected {len(w)}"
    if any(len(r) != len(w[0]) for r in g) if w else False:
        return "a different number of columns"

    def rows_same(a: Row, b: Row) -> bool:
        return all(_same(x, y, rel_tol) for x, y in zip(a, b, strict=True))

    gs, ws = sorted(g, key=_row_key), sorted(w, key=_row_key)
    if not all(rows_same(a, b) for a, b in zip(gs, ws, strict=True)):
        # values near a rounding edge of the sort key: match row by row (small answers only)
        if len(w) > 2000:
            first = next(
                i for i, (a, b) in enumerate(zip(gs, ws, strict=True)) if not rows_same(a, b)
            )
            return f"rows differ, e.g. {gs[first]!r} vs {ws[first]!r}"
        left = list(w)
        for row in g:
            match = next((i for i, r in enumerate(left) if rows_same(row, r)), None)
            if match is None:
                return f"row {row!r} is not expected"
            left.pop(match)
    for i in range(1, len(g)):
        for col, desc in order:
            c = _cmp(g[i - 1][col], g[i][col], rel_tol)
            if c == 0:
                continue
            if (c > 0) != desc:
                return f"rows {i} and {i + 1} are out of ORDER BY order"
            break
    return ""


# --- the run --------------------------------------------------------------------------------------


@dataclass
class QueryResult:
    """One query on one exdb cluster, beside its baselines."""

    number: int
    plan: str
    explain: str
    moved: int | None
    exdb: Outcome
    base: Outcome
    pg: Outcome | None
    check: str  # "exact" or what differs
    fetches: list[str] = field(default_factory=list)


def _ratio(a: Outcome, b: Outcome | None, cap: float) -> str:
    if b is None:
        return "-"
    if a.error or b.error:
        return "-"
    if a.capped and b.capped:
        return "?"
    if a.capped:
        assert b.seconds is not None
        return f"> {cap / b.seconds:.2f}"
    if b.capped:
        assert a.seconds is not None
        return f"< {a.seconds / cap:.2f}"
    assert a.seconds is not None and b.seconds is not None
    return f"{a.seconds / max(b.seconds, 1e-9):.2f}"


def _sum(outcomes: Sequence[Outcome], cap: float) -> tuple[float, bool]:
    """The sum of the times (a capped query counts as the cap) and whether it is a lower bound."""
    total = sum(cap if o.capped else (o.seconds or 0.0) for o in outcomes)
    return total, any(o.capped or o.error for o in outcomes)


def run_baselines(
    name: str, run: Callable[[str], Outcome], sqls: dict[int, str], cap: float
) -> dict[int, Outcome]:
    """Every query on one baseline, with progress."""
    out: dict[int, Outcome] = {}
    for number, sql in sqls.items():
        out[number] = run(sql)
        print(f"  {name} Q{number}: {out[number].shown(cap)} {out[number].error}", flush=True)
    return out


def run_cluster(
    engine: str,
    shards: int,
    data: Path,
    sqls: dict[int, str],
    base: dict[int, Outcome],
    pg: dict[int, Outcome] | None,
    cap: float,
    rel_tol: float,
) -> list[QueryResult]:
    """Load one cluster, run every query on it, check each answer."""
    results: list[QueryResult] = []
    print(f"\nexdb, {shards} {engine} shards: loading", flush=True)
    with (
        LocalCluster(shards, engine=engine) as cluster,
        exdb.connect(nodes=list(cluster.nodes), autocommit=True) as conn,
    ):
        load_exdb(conn, data)
        for number, sql in sqls.items():
            kind, explain = plan_kind(conn, sql)
            outcome = run_exdb(conn, sql, cap)
            checks = []
            for label, want in (("", base[number]), ("PostgreSQL: ", (pg or {}).get(number))):
                if want is None:
                    continue
                if outcome.rows is None or want.rows is None:
                    if outcome.error or want.error:
                        checks.append(f"{label}error: {outcome.error or want.error}")
                    else:
                        checks.append(f"{label}not checked (capped)")
                    continue
                diff = compare(outcome.rows, want.rows, ORDER_KEYS[number], rel_tol)
                if diff:
                    checks.append(f"{label}DIFFERS: {diff}")
            check = "; ".join(checks) or "exact"
            result = QueryResult(
                number,
                kind,
                explain,
                rows_moved(conn, sql, None),
                outcome,
                base[number],
                (pg or {}).get(number),
                check,
                whole_table_fetches(kind, explain),
            )
            results.append(result)
            print(
                f"  exdb Q{number}: {outcome.shown(cap)} ({kind}) {check} {outcome.error}".rstrip(),
                flush=True,
            )
    return results


def report(
    engine: str,
    shards: int,
    results: list[QueryResult],
    cap: float,
    sf: float,
    with_pg: bool,
) -> list[tuple[str, bool | None, str]]:
    """Print one cluster's table and sums; return its goals as (goal, met, figure)."""
    header = ["Q", "plan", "rows moved", "exdb s", f"{engine} s", f"x {engine}"]
    if with_pg:
        header += ["PostgreSQL s", "x PG"]
    header.append("check")
    rows: list[list[Any]] = []
    for r in results:
        row: list[Any] = [
            f"Q{r.number}",
            r.plan,
            "-" if r.moved is None else f"{r.moved:,}",
            r.exdb.shown(cap),
            r.base.shown(cap),
            _ratio(r.exdb, r.base, cap),
        ]
        if with_pg:
            pg = r.pg or Outcome(None, None, error="not run")
            row += [pg.shown(cap), _ratio(r.exdb, r.pg, cap)]
        row.append(r.check)
        rows.append(row)
    exdb_sum, exdb_low = _sum([r.exdb for r in results], cap)
    base_sum, base_low = _sum([r.base for r in results], cap)
    mark = {True: "> ", False: ""}
    sums = ["sum", "", "", f"{mark[exdb_low]}{exdb_sum:.3f}", f"{mark[base_low]}{base_sum:.3f}",
            f"{exdb_sum / max(base_sum, 1e-9):.2f}"]  # fmt: skip
    pg_sum = 0.0
    if with_pg:
        pg_sum, pg_low = _sum([r.pg or Outcome(None, None) for r in results], cap)
        sums += [f"{mark[pg_low]}{pg_sum:.3f}", f"{exdb_sum / max(pg_sum, 1e-9):.2f}"]
    sums.append("")
    rows.append(sums)
    print_table(
        f"TPC-H SF {sf:g}, exdb on {shards} {engine} shards (seconds; x: exdb / baseline)",
        header,
        rows,
    )
    goals: list[tuple[str, bool | None, str]] = []
    exact = sum(r.check == "exact" for r in results)
    goals.append((f"{engine} x{shards}: all queries exact", exact == len(results),
                  f"{exact}/{len(results)} exact"))  # fmt: skip
    whole = [f"Q{r.number}" for r in results if r.fetches]
    goals.append((f"{engine} x{shards}: no plan fetches a whole distributed table", not whole,
                  f"{len(whole)} do: {' '.join(whole)}" if whole else "none does"))  # fmt: skip
    if shards == 2:
        judged = sf == 1 and len(results) == len(QUERIES)
        ratio = exdb_sum / max(base_sum, 1e-9)
        goal = 1.5 if engine == "duckdb" else 0.75
        goals.append((f"{engine} x2: sum <= {goal}x in-process {engine} (SF 1)",
                      (ratio <= goal and not exdb_low) if judged else None,
                      f"{ratio:.2f}x at SF {sf:g}"))  # fmt: skip
        if engine == "sqlite" and with_pg:
            pg_ratio = exdb_sum / max(pg_sum, 1e-9)
            goals.append(("sqlite x2: sum <= 1.0x PostgreSQL 15 (SF 1)",
                          (pg_ratio <= 1.0 and not exdb_low) if judged else None,
                          f"{pg_ratio:.2f}x at SF {sf:g}"))  # fmt: skip
    return goals


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 1 when an answer is not exact."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sf", type=float, default=0.1, choices=[0.01, 0.1, 1.0],
                    help="scale factor (default 0.1)")  # fmt: skip
    ap.add_argument("--engines", default="sqlite,duckdb", help="sqlite,duckdb (default both)")
    ap.add_argument("--shards", default="2,3", help="shard counts (default 2,3)")
    ap.add_argument("--baselines-only", action="store_true", help="run no exdb cluster")
    ap.add_argument("--queries", default="", help="query numbers, e.g. 1,3,17 (default all 22)")
    ap.add_argument("--cap", type=float, default=CAP, help=f"seconds per query (default {CAP:g})")
    ap.add_argument("--rel-tol", type=float, default=REL_TOL, help="relative tolerance")
    ap.add_argument("--cache", type=Path, default=default_cache(), help="generated data")
    ap.add_argument("--install-postgres", action="store_true",
                    help="apt-get install postgresql if missing (root)")  # fmt: skip
    ap.add_argument("--without-postgres", action="store_true", help="skip PostgreSQL")
    args = ap.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not set(engines) <= {"sqlite", "duckdb"}:
        ap.error("--engines takes sqlite and/or duckdb")
    shard_counts = [int(s) for s in args.shards.split(",") if s.strip()]
    if args.baselines_only:
        shard_counts = []
    numbers = [int(q) for q in args.queries.split(",") if q.strip()] or sorted(QUERIES)
    if not set(numbers) <= set(QUERIES):
        ap.error("--queries takes numbers from 1 to 22")
    cap, sf = args.cap, args.sf
    data = generate(sf, args.cache)
    goals: list[tuple[str, bool | None, str]] = []
    any_wrong = False
    status: PostgresStatus | None = None
    if "sqlite" in engines:
        status = find_postgres(args.install_postgres, "--without-postgres" * args.without_postgres)
        if not status.available:
            print(f"PostgreSQL not available: {status.reason}")
    for engine in engines:
        sqls = {n: query_text(n, engine, sf) for n in numbers}
        print(f"\n{engine}: in-process baseline, loading", flush=True)
        started = time.perf_counter()
        if engine == "sqlite":
            local: Any = load_sqlite(data)
            run_local: Callable[[str], Outcome] = functools.partial(run_sqlite, local, cap=cap)
        else:
            local = load_duckdb(data)
            run_local = functools.partial(run_duckdb, local, cap=cap)
        print(f"  loaded in {time.perf_counter() - started:.1f} s", flush=True)
        base = run_baselines(f"in-process {engine}", run_local, sqls, cap)
        local.close()
        pg: dict[int, Outcome] | None = None
        if engine == "sqlite" and status is not None and status.available:
            pg = postgres_baseline(status, data, numbers, sf, cap)
        baseline_table(engine, base, pg, cap, sf, args.rel_tol)
        for shards in shard_counts:
            results = run_cluster(engine, shards, data, sqls, base, pg, cap, args.rel_tol)
            any_wrong |= any(r.check != "exact" for r in results)
            goals += report(engine, shards, results, cap, sf, pg is not None)
    print("\nGoals of issue 10 (speed goals are judged at SF 1 only):")
    for goal, met, figure in goals:
        verdict = {True: "met", False: "MISSED", None: "not judged"}[met]
        print(f"  {goal}: {verdict} ({figure})")
    if any_wrong:
        print("RESULTS DISAGREE: some answers are not exact (see the check column)")
        return 1
    print("results agree: every answer that ran is exact")
    return 0


def baseline_table(
    engine: str,
    base: dict[int, Outcome],
    pg: dict[int, Outcome] | None,
    cap: float,
    sf: float,
    rel_tol: float,
) -> None:
    """Print the baselines' times (and whether sqlite3's answers are PostgreSQL's)."""
    header = ["Q", f"in-process {engine} s"] + (["PostgreSQL s", "same answer"] if pg else [])
    rows: list[list[Any]] = []
    for number, outcome in base.items():
        row: list[Any] = [f"Q{number}", outcome.shown(cap)]
        if pg:
            other = pg[number]
            if outcome.rows is None or other.rows is None:
                same = "not checked"
            else:
                same = compare(outcome.rows, other.rows, ORDER_KEYS[number], rel_tol) or "yes"
            row += [other.shown(cap), same]
        rows.append(row)
    total, low = _sum(list(base.values()), cap)
    sums: list[Any] = ["sum", f"{'> ' * low}{total:.3f}"]
    if pg:
        pg_total, pg_low = _sum(list(pg.values()), cap)
        sums += [f"{'> ' * pg_low}{pg_total:.3f}", ""]
    rows.append(sums)
    print_table(f"TPC-H SF {sf:g}: the baselines ({engine})", header, rows)


def postgres_baseline(
    status: PostgresStatus, data: Path, numbers: Sequence[int], sf: float, cap: float
) -> dict[int, Outcome]:
    """Load a private PostgreSQL and run the queries on it."""
    import psycopg

    print("\nPostgreSQL: loading", flush=True)
    with PostgresServer(status) as server, psycopg.connect(**server.conninfo, autocommit=True) as c:
        started = time.perf_counter()
        load_postgres(c, data)
        version = c.execute("SHOW server_version").fetchone()
        print(f"  PostgreSQL {version[0] if version else '?'}: loaded in"
              f" {time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
        sqls = {n: query_text(n, "postgres", sf) for n in numbers}
        return run_baselines("PostgreSQL", lambda sql: run_postgres(c, sql, cap), sqls, cap)


if __name__ == "__main__":
    sys.exit(main())
