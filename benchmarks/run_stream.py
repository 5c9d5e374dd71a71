"""How soon ``exdb run`` starts a large script: the streaming splitter against splitting first.

Writes a script of N statements (100,000 by default: a CREATE TABLE, then INSERTs whose
strings hold semicolons) and measures, in this one run:

- in process: the time to the first statement and to the last, for the streaming splitter
  (exdb.shell.split) and for the way exdb run split before (sqlglot's tokenizer over the whole
  text, every statement found before the first ran), and the ratio;
- end to end: ``exdb run`` on a 2-shard cluster, from the command's start to the moment the
  script's first statement (CREATE TABLE) is seen on a shard, polled every 5 ms; the goal is
  1 s. The whole run's time is printed too, and the time a Python process takes to import
  exdb's CLI (part of the first figure, which streaming cannot shorten). The rows are checked
  (count and sum).

    python benchmarks/run_stream.py [--quick] [--statements N]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlglot
from sqlglot.tokens import TokenType  # type: ignore[attr-defined]

import exdb
from exdb.cluster import LocalCluster
from exdb.shell.split import iter_statements

GOAL_S = 1.0


def script_text(n: int) -> str:
    """A CREATE TABLE, then n - 1 INSERTs."""
    lines = ["CREATE TABLE stream_t (k INTEGER PRIMARY KEY, v TEXT);"]
    lines += [f"INSERT INTO stream_t VALUES ({i}, 'row;{i} it''s');" for i in range(n - 1)]
    return "\n".join(lines) + "\n"


def split_first(text: str) -> list[str]:
    """The splitter exdb run used before: tokenize everything with sqlglot, then cut."""
    cuts = [t.start for t in sqlglot.tokenize(text) if t.token_type == TokenType.SEMICOLON]
    out, start = [], 0
    for cut in [*cuts, len(text)]:
        statement = text[start:cut].strip()
        if statement:
            out.append(statement)
        start = cut + 1
    return out


def time_splitters(text: str) -> dict[str, tuple[float, float, int]]:
    """(first, all, count) per splitter, in seconds."""
    results = {}
    t0 = time.perf_counter()
    statements = iter_statements(io.StringIO(text))
    next(statements)
    first = time.perf_counter() - t0
    count = 1 + sum(1 for _ in statements)
    results["streaming (exdb.shell.split)"] = (first, time.perf_counter() - t0, count)
    t0 = time.perf_counter()
    whole = split_first(text)
    elapsed = time.perf_counter() - t0
    results["split first (sqlglot, before)"] = (elapsed, elapsed, len(whole))
    return results


def time_exdb_run(path: Path, n: int) -> tuple[float, float]:
    """(seconds to the first statement on a shard, seconds for the whole run)."""
    with LocalCluster(2) as cluster:
        probe = exdb.connect(cluster.nodes[0], autocommit=True)
        seen = "SELECT COUNT(*) FROM sqlite_master WHERE name = 'stream_t'"
        started = time.perf_counter()
        nodes = ",".join(cluster.nodes)
        proc = subprocess.Popen(
            [sys.executable, "-m", "exdb", "run", "--nodes", nodes, "--format", "none", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = float("nan")
        try:
            deadline = started + 120
            while time.perf_counter() < deadline:
                if probe.cursor().execute(seen).fetchone() == (1,):
                    first = time.perf_counter() - started
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.005)
            _, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            probe.close()
        total = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"exdb run failed ({proc.returncode}):\n{err}")
        with exdb.connect(nodes=cluster.nodes) as conn:
            got = conn.execute("SELECT COUNT(*), SUM(k) FROM stream_t").fetchone()
        expected = (n - 1, (n - 1) * (n - 2) // 2)
        if got != expected:
            raise SystemExit(f"WRONG ROWS: {got} != {expected}")
    return first, total


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 statements")
    args = parser.parse_args()
    n = 10_000 if args.quick else args.statements
    text = script_text(n)
    print(f"script: {n:,} statements, {len(text) / 1e6:.1f} MB")
    splitters = time_splitters(text)
    for name, (first, whole, count) in splitters.items():
        print(
            f"  {name:32} first statement {first * 1000:8.1f} ms   all {count:,} in {whole:.2f} s"
        )
    new_first = splitters["streaming (exdb.shell.split)"][0]
    old_first = splitters["split first (sqlglot, before)"][0]
    print(f"  time to the first statement: {old_first / new_first:,.0f}x sooner streaming")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "script.sql"
        path.write_text(text)
        first, total = time_exdb_run(path, n)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import exdb.cli, exdb.script"], check=True)
    start_up = time.perf_counter() - started
    verdict = "PASS" if first <= GOAL_S else "MISS"
    print(f"exdb run: first statement on a shard after {first:.2f} s (goal <= {GOAL_S:.0f} s:")
    print(f"  {verdict}); all {n:,} statements in {total:.2f} s; rows checked")
    print(f"  of which starting Python and importing exdb's CLI: {start_up:.2f} s (same run)")


if __name__ == "__main__":
    main()
