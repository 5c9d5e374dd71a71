"""EXPLAIN ANALYZE (exdb.distributed.analyze): what each stage of a plan moved, on real 2-shard
clusters of both engines, through every door, and through the command line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import exdb
from exdb.cluster import LocalCluster
from exdb.distributed.analyze import Analysis, analyze_execution
from exdb.distributed.execute import Engine, Execution
from exdb.distributed.parse import parse
from exdb.distributed.placement import shard_of
from exdb.distributed.plan.gather import GatherPlan
from exdb.wire.codec import pack

ROWS = [(k, k % 3, f"value {k}") for k in range(40)]
BIG = 6000  # rows of a table whose scatter streams in several batches


@pytest.fixture(scope="module", params=["sqlite", "duckdb"])
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    with LocalCluster(2, engine=request.param) as c:
        with exdb.connect(nodes=c.nodes, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, g INTEGER, v TEXT)")
            conn.execute("SELECT create_distributed_table('t', 'k')")
            conn.executemany("INSERT INTO t VALUES (?, ?, ?)", ROWS)
            conn.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, x INTEGER)")
            conn.execute("SELECT create_distributed_table('big', 'id')")
            conn.executemany("INSERT INTO big VALUES (?, ?)", [(i, i * 7) for i in range(BIG)])
        yield c


@pytest.fixture
def conn(cluster: LocalCluster) -> Iterator[Any]:
    with exdb.connect(nodes=cluster.nodes, autocommit=True) as c:
        yield c


def _numbers(analysis: Analysis) -> list[Any]:
    """Everything an analysis measured except the times."""
    stages = [
        (s.label, s.nodes, s.calls, s.rows_sent, s.bytes_sent, s.rows_received, s.bytes_received)
        for s in analysis.stages
    ]
    return [analysis.explain, stages, analysis.result_rows, analysis.rowcount]


def _bytes(rows: list[tuple[Any, ...]]) -> int:
    return sum(len(pack(row)) for row in rows)


def test_pinned_point_select_moves_one_row_from_one_node(conn: Any) -> None:
    analysis = conn.analyze("SELECT k, v FROM t WHERE k = ?", (7,))
    assert analysis.explain.startswith("plan: single")
    (stage,) = analysis.stages
    assert stage.label == "single"
    assert stage.nodes == (shard_of(7, "INTEGER", 2) + 1,)
    assert (stage.calls, stage.rows_sent, stage.rows_received) == (1, 1, 1)
    assert stage.bytes_received == len(pack((7, "value 7")))
    assert stage.bytes_sent == len(pack("SELECT k, v FROM t WHERE k = ?")) + len(pack([7]))
    assert (analysis.result_rows, analysis.rowcount) == (1, -1)
    assert analysis.seconds >= stage.seconds >= 0
    assert analysis.rows_received == 1 and analysis.nodes == stage.nodes


def test_scatter_moves_the_matching_rows(conn: Any) -> None:
    analysis = conn.analyze("SELECT k, v FROM t WHERE g = 1")
    (stage,) = analysis.stages
    matching = [(k, v) for k, g, v in ROWS if g == 1]
    assert stage.label == "scatter" and stage.nodes == (1, 2) and stage.calls == 2
    assert stage.rows_sent == 0
    assert stage.rows_received == len(matching) == analysis.result_rows
    assert stage.bytes_received == _bytes(matching)


def test_a_streamed_scatter_is_counted_as_it_is_read(conn: Any) -> None:
    analysis = conn.analyze("SELECT id, x FROM big")
    (stage,) = analysis.stages
    assert stage.rows_received == BIG == analysis.result_rows
    assert stage.bytes_received == _bytes([(i, i * 7) for i in range(BIG)])
    ordered = conn.analyze("SELECT id FROM big ORDER BY id DESC LIMIT 5")
    assert ordered.result_rows == 5
    # Each shard returns its LIMIT rows; all of them count, read or not by the merge.
    assert ordered.stages[0].rows_received == 10


def test_aggregate_moves_one_partial_row_per_group_per_shard(conn: Any) -> None:
    analysis = conn.analyze("SELECT g, COUNT(*), SUM(k) FROM t GROUP BY g")
    assert analysis.explain.startswith("plan: aggregate")
    (stage,) = analysis.stages
    assert stage.label == "partials"
    groups = sum(conn.execute(f"{n}:SELECT COUNT(DISTINCT g) FROM t").fetchone()[0] for n in (1, 2))
    assert stage.rows_received == groups
    assert analysis.result_rows == 3


def test_a_gather_reports_the_gathered_rows(conn: Any) -> None:
    """A GatherPlan, run as the planner would run it, counts every row it fetched (a statement
    that reads every column of every row: a gather brings only what is read)."""
    engine: Engine = conn.engine
    sql = "SELECT * FROM t ORDER BY 1"
    info = engine.catalog.get("t")
    assert info is not None
    plan = GatherPlan(sql, parse(sql, engine.engine).tree, [info], 0)

    class Gathering:
        def explain(self, sql: str) -> str:
            return "\n".join(["plan: gather", *plan.describe(engine)])

        def run(self, sql: str, params: Any = None) -> Execution:
            return plan.execute(engine, {})

    analysis = conn._drive(analyze_execution(Gathering(), sql, None))
    (stage,) = analysis.stages
    assert stage.label == "gather t" and stage.nodes == (1, 2)
    assert stage.rows_received == len(ROWS)
    assert stage.bytes_received == _bytes(ROWS)
    assert analysis.result_rows == len(ROWS)


def test_insert_reports_the_rows_sent(cluster: LocalCluster, conn: Any) -> None:
    conn.execute("CREATE TABLE ins (k INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("SELECT create_distributed_table('ins', 'k')")
    try:
        one = conn.analyze("INSERT INTO ins VALUES (?, ?)", (1000, "x"))
        (stage,) = one.stages
        assert stage.nodes == (shard_of(1000, "INTEGER", 2) + 1,)
        assert (stage.rows_sent, stage.rows_received, one.rowcount) == (1, 0, 1)
        moved = conn.analyze("INSERT INTO ins SELECT k, v FROM t WHERE g = 2")
        read, write = moved.stages
        matching = [(k, v) for k, g, v in ROWS if g == 2]
        assert read.rows_received == len(matching)
        assert write.label == "insert rows" and write.rows_sent == len(matching)
        assert moved.rowcount == len(matching)
        assert moved.rows_sent == len(matching) and moved.rows_received == len(matching)
        count = conn.execute("SELECT COUNT(*) FROM ins").fetchone()[0]
        assert count == 1 + len(matching)  # analyze ran the statements for real
    finally:
        conn.execute("DROP TABLE ins")


STATEMENTS: list[tuple[str, Any]] = [
    ("SELECT k, v FROM t WHERE k = ?", (11,)),
    ("SELECT k, v FROM t WHERE g = 0", None),
    ("SELECT g, COUNT(*) FROM t GROUP BY g", None),
    ("SELECT id FROM big WHERE x > ? ORDER BY id LIMIT 7", (100,)),
    ("SELECT id, x FROM big", None),
]


def test_every_door_gives_the_same_numbers(cluster: LocalCluster, conn: Any) -> None:
    sync = [_numbers(conn.analyze(sql, params)) for sql, params in STATEMENTS]

    async def aio() -> list[Any]:
        door = await exdb.connect_async(nodes=cluster.nodes, autocommit=True)
        try:
            out = [_numbers(await door.analyze(sql, params)) for sql, params in STATEMENTS]
            text = await door.explain(STATEMENTS[0][0], analyze=True, params=STATEMENTS[0][1])
            assert text.startswith(door.explain(STATEMENTS[0][0]) + "\nstages:\n")
            return out
        finally:
            await door.close()

    assert asyncio.run(aio()) == sync
    with exdb.connect(nodes=cluster.nodes, **{"async": True}, nWorkers=2) as workers:
        assert [_numbers(workers.analyze(sql, params)) for sql, params in STATEMENTS] == sync
        text = workers.explain("SELECT k FROM t WHERE g = 0", analyze=True)
        assert text.startswith(workers.explain("SELECT k FROM t WHERE g = 0") + "\nstages:\n")


def test_explain_analyze_text(conn: Any) -> None:
    sql = "SELECT k FROM t WHERE g = 2"
    text = conn.explain(sql, analyze=True)
    plan, _, rest = text.partition("\nstages:\n")
    assert plan == conn.explain(sql)
    lines = rest.splitlines()
    matching = sum(1 for _, g, _ in ROWS if g == 2)
    assert lines[0].startswith("  1. scatter: nodes 1, 2; 2 calls; sent 0 rows, ")
    assert f"received {matching} rows, " in lines[0] and lines[0].endswith(" ms")
    assert lines[1].startswith(f"  final stage (client): {matching} rows returned; ")
    assert lines[2].startswith("total: 1 stage, 2 calls on nodes 1, 2; ")


def test_a_failing_statement_raises_its_own_error(cluster: LocalCluster, conn: Any) -> None:
    for sql in ("SELECT nosuch FROM t", "SELEC 1", "INSERT INTO t VALUES (1, 1, 'again')"):
        with pytest.raises(exdb.Error) as plain:
            conn.execute(sql)
        with pytest.raises(type(plain.value)) as analyzed:
            conn.explain(sql, analyze=True)
        assert analyzed.value.message == plain.value.message
    with exdb.connect(nodes=cluster.nodes, **{"async": True}, nWorkers=1) as workers:
        with pytest.raises(exdb.ProgrammingError):
            workers.analyze("SELECT nosuch FROM t")
        assert workers.execute("SELECT COUNT(*) FROM t") == [(len(ROWS),)]  # still serving


def test_the_analysis_crosses_processes_whole(conn: Any) -> None:
    analysis = conn.analyze("SELECT g, COUNT(*) FROM t GROUP BY g")
    assert Analysis.from_dict(analysis.to_dict()) == analysis


POINT = "SELECT k FROM t WHERE k = 3"


def test_cli_explain_analyze(cluster: LocalCluster) -> None:
    nodes = ",".join(cluster.nodes)
    result = subprocess.run(
        [sys.executable, "-m", "exdb", "explain", "--nodes", nodes, "--analyze", POINT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "plan: single"
    node = shard_of(3, "INTEGER", 2) + 1
    assert f"  1. single: node {node}; 1 call; sent 0 rows, " in result.stdout
    assert "received 1 row, " in result.stdout
    assert "  final stage (client): 1 row returned; " in result.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "exdb", "explain", "--nodes", nodes, "--analyze", "SELECT nosuch"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode != 0 and "nosuch" in failed.stderr


def test_rows_a_limit_leaves_unread_count_on_every_door(cluster: LocalCluster, conn: Any) -> None:
    """A LIMIT the merge meets early leaves rows unread: counted all the same, so the sync
    door (which streams) and the asyncio door (which reads whole) agree."""
    statements = ["SELECT id FROM big LIMIT 5", "SELECT id FROM big ORDER BY x LIMIT 3 OFFSET 2"]
    sync = [_numbers(conn.analyze(sql)) for sql in statements]
    assert [n[1][0][5] for n in sync] == [10, 10]

    async def aio() -> list[Any]:
        door = await exdb.connect_async(nodes=cluster.nodes)
        try:
            return [_numbers(await door.analyze(sql)) for sql in statements]
        finally:
            await door.close()

    assert asyncio.run(aio()) == sync
