"""The cost of two-phase commit, and the fault trials in bulk.

On 2 local shards of each engine, durable (``--db``) and in memory, a transaction of one
single-row INSERT per touched node, committed, in a loop:

- one node touched: committed in one phase (as before two-phase commit existed);
- two nodes touched: PREPARE, the decision on the coordinator, COMMIT PREPARED.

It prints the median latency of each and the ratio of two nodes to one. Then (unless
``--no-faults``) the fault suite, tests/test_two_phase_commit.py, with ``EXDB_SLOW=1``: every
kill -9 step (node and client, 5 steps) 5 times on each engine, 100 trials in all.

    python benchmarks/two_phase.py [--quick] [--no-faults]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import exdb
from exdb.cluster import LocalCluster

from _common import latencies, median, print_table

ROOT = Path(__file__).resolve().parent.parent


def _keys_on_each_node(conn: exdb.DistributedConnection, table: str) -> tuple[int, int]:
    """A key that lands on node 1 and one that lands on node 2 (the placement's own)."""
    conn.executemany(f"INSERT INTO {table} VALUES (?, 0)", [(k,) for k in range(1, 65)])
    conn.commit()
    first = {r[0] for r in conn.execute(f"1:SELECT k FROM {table}").fetchall()}
    second = {r[0] for r in conn.execute(f"2:SELECT k FROM {table}").fetchall()}
    conn.commit()
    return min(first), min(second)


def measure(engine: str, durable: bool, n: int) -> list[object]:
    """Median commit latencies (µs) of one-node and two-node transactions."""
    with (
        tempfile.TemporaryDirectory() as directory,
        LocalCluster(2, engine=engine, db_dir=directory if durable else None) as cluster,
        exdb.connect(nodes=cluster.nodes) as conn,
    ):
        conn.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, n INTEGER)")
        conn.execute("SELECT create_distributed_table('kv', 'k')")
        conn.commit()
        a, b = _keys_on_each_node(conn, "kv")
        update = "UPDATE kv SET n = n + 1 WHERE k = ?"

        def one() -> None:
            conn.execute(update, (a,))
            conn.commit()

        def two() -> None:
            conn.execute(update, (a,))
            conn.execute(update, (b,))
            conn.commit()

        def two_separately() -> None:
            one()
            conn.execute(update, (b,))
            conn.commit()

        warm = max(10, n // 10)
        t1 = median(latencies(one, n, warm))
        t2 = median(latencies(two, n, warm))
        t11 = median(latencies(two_separately, n, warm))
        got = conn.execute("SELECT n FROM kv WHERE k IN (?, ?) ORDER BY k", (a, b))
        total = sum(r[0] for r in got.fetchall())
        conn.commit()
        expected = (n + warm) * 5  # one: a; two: a and b; separately: a and b
        assert total == expected, (total, expected)
    kind = "durable" if durable else "in memory"
    return [f"{engine}, {kind}", t1, t11, t2, t2 / t1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer transactions")
    parser.add_argument("--no-faults", action="store_true", help="skip the fault trials")
    args = parser.parse_args()
    n = 100 if args.quick else 1000
    rows = []
    engines = ["sqlite"]
    try:
        import duckdb  # noqa: F401

        engines.append("duckdb")
    except ImportError:
        print("duckdb is not installed: sqlite only")
    for engine in engines:
        for durable in (False, True):
            rows.append(measure(engine, durable, n))
    print_table(
        f"Commit latency, median of {n} transactions (µs): one UPDATE per touched node",
        ["shards", "1 node", "1 node, twice", "2 nodes, 2PC", "2PC / 1 node"],
        rows,
    )
    if args.no_faults:
        return
    print("\nFault trials (kill -9 of a node or of the client at each step), EXDB_SLOW=1:")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-k",
            "kill_at",
            str(ROOT / "tests" / "test_two_phase_commit.py"),
        ],
        env={**os.environ, "EXDB_SLOW": "1"},
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        sys.exit("fault trials failed")
    print("every trial all or nothing, the decision winning")
    print("(100 trials: 5 steps x 2 faults x 5 repeats x 2 engines)")


if __name__ == "__main__":
    main()
