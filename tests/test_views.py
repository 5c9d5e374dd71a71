"""Views on a distributed connection (issue 10, item 6): CREATE VIEW is recorded in exdb's
catalog and defined on every node; a query over a view plans with the view inlined. Checked
against one plain database of the same engine (3 SQLite shards, 2 DuckDB shards)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import exdb
from exdb.cluster import LocalCluster

from oracle import check, load, plain_database, run_both

VIEWS = [
    # a filtered distributed table; a keyless one; a reference table
    "CREATE VIEW big AS SELECT id, cust, amount, qty FROM orders WHERE amount > 20",
    "CREATE VIEW ev AS SELECT a, b, v FROM events WHERE a IS NOT NULL",
    "CREATE VIEW North AS SELECT region, label FROM regions WHERE region <> 'west'",
    # aggregates inside the view
    "CREATE VIEW per_cust AS SELECT cust, COUNT(*) AS n, SUM(amount) AS total, AVG(qty) AS q"
    " FROM orders GROUP BY cust",
    # a view over a view, a view over a join, ORDER BY and LIMIT in the definition
    "CREATE VIEW bigger AS SELECT id, amount FROM big WHERE amount > 35",
    "CREATE VIEW named AS SELECT o.id, c.name, o.amount FROM orders o JOIN customers c"
    " ON o.cust = c.cid",
    "CREATE VIEW top5 AS SELECT id, amount FROM orders WHERE amount IS NOT NULL"
    " ORDER BY amount DESC, id LIMIT 5",
    "CREATE VIEW top_of_top AS SELECT id FROM top5 WHERE amount < 49",
]

QUERIES = [
    "SELECT * FROM big",
    "SELECT COUNT(*), AVG(amount), SUM(qty) FROM big",
    "SELECT COUNT(*) FROM BIG WHERE cust = 3",
    "SELECT cust, COUNT(*) FROM big GROUP BY cust ORDER BY cust",
    "SELECT * FROM big WHERE id = 7",
    "SELECT * FROM big ORDER BY amount DESC, id LIMIT 4",
    "SELECT b.id, b.amount FROM big AS b WHERE b.qty > 2 ORDER BY b.id",
    "SELECT * FROM ev",
    "SELECT a, SUM(v) FROM ev GROUP BY a",
    "SELECT * FROM north",
    "SELECT * FROM per_cust",
    "SELECT * FROM per_cust WHERE cust = 2",
    "SELECT * FROM per_cust WHERE n > 16 ORDER BY cust",
    "SELECT SUM(total), MAX(n) FROM per_cust",
    "SELECT * FROM bigger ORDER BY id",
    "SELECT COUNT(*) FROM bigger",
    "SELECT * FROM named WHERE amount > 40",
    "SELECT name, SUM(amount) FROM named GROUP BY name ORDER BY name",
    "SELECT * FROM top5",
    "SELECT SUM(amount), COUNT(*) FROM top5",
    "SELECT * FROM top_of_top",
    # joined to a table, in subqueries, twice under two aliases
    "SELECT c.name, b.amount FROM big b JOIN customers c ON b.cust = c.cid ORDER BY b.id",
    "SELECT o.id FROM orders o JOIN per_cust p ON o.cust = p.cust WHERE p.n > 16",
    "SELECT COUNT(*) FROM orders WHERE id IN (SELECT id FROM bigger)",
    "SELECT (SELECT MAX(amount) FROM big), (SELECT COUNT(*) FROM ev)",
    "SELECT x.id FROM big x JOIN big y ON x.id = y.id + 1 ORDER BY x.id",
    "SELECT r.label, COUNT(*) FROM big b JOIN customers c ON b.cust = c.cid"
    " JOIN north r ON c.region = r.region GROUP BY r.label",
    # a CTE of the view's name hides the view
    "WITH big AS (SELECT 1 AS id) SELECT * FROM big",
    "WITH t AS (SELECT id FROM big WHERE qty = 1) SELECT COUNT(*) FROM t",
]


@pytest.fixture(
    scope="module", params=[("sqlite", 3), ("duckdb", 2)], ids=lambda p: f"{p[0]}-{p[1]}shards"
)
def cluster(request: pytest.FixtureRequest) -> Iterator[tuple[str, LocalCluster]]:
    """One cluster per engine for the module."""
    engine, shards = request.param
    with LocalCluster(shards, engine=engine) as running:
        yield engine, running


@pytest.fixture
def pair(cluster: tuple[str, LocalCluster]) -> Iterator[tuple[Any, Any, str, LocalCluster]]:
    """(distributed connection, plain database, engine, cluster), both with the oracle's
    tables and VIEWS; every view and table is dropped afterwards."""
    engine, running = cluster
    dist = exdb.connect(nodes=running.nodes)
    plain = plain_database(engine)
    try:
        load(dist, distributed=True)
        load(plain, distributed=False)
        for sql in VIEWS:
            dist.cursor().execute(sql)
            plain.cursor().execute(sql)
        dist.commit()
        plain.commit()
        yield dist, plain, engine, running
    finally:
        dist.rollback()
        cur = dist.cursor()
        cur.execute("SELECT name, kind FROM exdb_catalog")
        rows = cur.fetchall()
        for name, kind in rows:
            if kind == "view":
                cur.execute(f'DROP VIEW IF EXISTS "{name}"')
        for name, kind in rows:
            if kind != "view":
                cur.execute(f'DROP TABLE IF EXISTS "{name}"')
        dist.commit()
        dist.close()
        plain.close()


def both(dist: Any, plain: Any, sql: str) -> None:
    """Run a statement on both (it must succeed on both)."""
    dist.cursor().execute(sql)
    plain.cursor().execute(sql)


def same_outcome(dist: Any, plain: Any, sql: str) -> None:
    """A statement without a result set (DDL) succeeds on both or fails on both (exdb with
    one of its error classes)."""
    got, want = run_both(dist, plain, sql)
    assert isinstance(got, Exception) == isinstance(want, Exception), f"{sql}: {got!r} {want!r}"
    if isinstance(got, Exception):
        assert isinstance(got, exdb.Error), repr(got)


def test_queries_over_views(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, plain, _, _ = pair
    for sql in QUERIES:
        check(dist, plain, sql)


def test_parameters_in_a_query_over_a_view(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, plain, _, _ = pair
    check(dist, plain, "SELECT id FROM big WHERE cust = ? AND qty > ? ORDER BY id", [3, 1])
    check(dist, plain, "SELECT * FROM per_cust WHERE cust IN (?, ?)", [1, 4])


def test_explain_shows_the_view_inlined(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, _, _, _ = pair
    text = dist.explain("SELECT COUNT(*) FROM bigger")
    assert "FROM orders WHERE amount > 20" in text, text
    assert "AS big" in text and "AS bigger" in text, text
    assert text.startswith("plan: "), text


def test_view_in_insert_select(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, plain, _, _ = pair
    both(dist, plain, "CREATE TABLE copy_t (id INTEGER PRIMARY KEY, amount REAL)")
    both(dist, plain, "INSERT INTO copy_t SELECT id, amount FROM bigger")
    for conn in (dist, plain):
        conn.cursor().execute(
            "INSERT INTO copy_t SELECT id + 1000, amount FROM big WHERE qty = ?", [3]
        )
    check(dist, plain, "SELECT * FROM copy_t")


def test_writes_into_a_view_are_refused(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, _, _, _ = pair
    for sql in (
        "INSERT INTO big (id, cust, amount, qty) VALUES (1000, 1, 50, 1)",
        "UPDATE big SET qty = 0",
        "DELETE FROM big WHERE id = 3",
    ):
        with pytest.raises(exdb.NotSupportedError, match="view"):
            dist.cursor().execute(sql)
        dist.rollback()


def test_drop_view(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, plain, _, _ = pair
    dist.autocommit = True  # each statement on its own: a failing one undoes nothing else
    both(dist, plain, "DROP VIEW top_of_top")
    check(dist, plain, "SELECT * FROM top_of_top")  # an error on both
    dist.rollback()
    same_outcome(dist, plain, "DROP VIEW top_of_top")  # an error on both
    dist.rollback()
    same_outcome(dist, plain, "DROP VIEW IF EXISTS top_of_top")
    same_outcome(dist, plain, "DROP VIEW IF EXISTS Top5")
    check(dist, plain, "SELECT * FROM top5")
    dist.rollback()
    same_outcome(dist, plain, "DROP VIEW orders")  # a table: an error on both
    dist.rollback()
    same_outcome(dist, plain, "DROP TABLE big")  # a view: an error on both
    dist.rollback()
    check(dist, plain, "SELECT COUNT(*) FROM big")  # still there
    cur = dist.cursor()
    cur.execute("SELECT name FROM exdb_catalog WHERE kind = 'view' ORDER BY name")
    names = [r[0] for r in cur.fetchall()]
    assert names == ["big", "bigger", "ev", "named", "north", "per_cust"]


def test_create_view_if_not_exists_and_mixed_case(
    pair: tuple[Any, Any, str, LocalCluster],
) -> None:
    dist, plain, _, _ = pair
    dist.autocommit = True  # each statement on its own: a failing one undoes nothing else
    same_outcome(dist, plain, "CREATE VIEW IF NOT EXISTS BIG AS SELECT 1 AS one")
    check(dist, plain, "SELECT COUNT(*) FROM big")  # the first definition stays
    same_outcome(dist, plain, "CREATE VIEW Big AS SELECT 1 AS one")  # exists: an error on both
    dist.rollback()
    # DuckDB replaces a view; SQLite has no CREATE OR REPLACE VIEW (an error on both).
    same_outcome(dist, plain, "CREATE OR REPLACE VIEW top5 AS SELECT id, amount FROM orders")
    check(dist, plain, "SELECT COUNT(*), SUM(amount) FROM top5")
    both(dist, plain, 'CREATE VIEW "MiXed" AS SELECT id FROM orders WHERE qty = 4')
    check(dist, plain, "SELECT COUNT(*) FROM mixed")
    check(dist, plain, "SELECT COUNT(*) FROM MIXED m WHERE m.id > 50")


def test_view_column_list(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, plain, _, _ = pair
    both(dist, plain, "CREATE VIEW renamed(k, doubled) AS SELECT id, amount * 2 FROM orders")
    check(dist, plain, "SELECT * FROM renamed WHERE k < 10")
    check(dist, plain, "SELECT SUM(doubled) FROM renamed")
    with pytest.raises(exdb.NotSupportedError, match="column"):
        dist.cursor().execute("CREATE VIEW star(a, b) AS SELECT * FROM customers")
    dist.rollback()


def test_another_client_sees_a_new_view(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, plain, _, running = pair
    other = exdb.connect(nodes=running.nodes)
    try:
        other.cursor().execute("CREATE VIEW fresh AS SELECT cust FROM orders WHERE qty = 2")
        other.commit()
        plain.cursor().execute("CREATE VIEW fresh AS SELECT cust FROM orders WHERE qty = 2")
        check(dist, plain, "SELECT cust, COUNT(*) FROM fresh GROUP BY cust")
        dist.commit()
        other.cursor().execute("DROP VIEW fresh")
        other.commit()
    finally:
        other.close()


def test_node_prefix_reads_that_nodes_rows(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, _, _, running = pair
    total = 0
    for node in range(1, len(running.nodes) + 1):
        cur = dist.cursor()
        cur.execute(f"{node}:SELECT COUNT(*) FROM big")
        (via_view,) = cur.fetchone()
        cur.execute(f"{node}:SELECT COUNT(*) FROM orders WHERE amount > 20")
        assert cur.fetchone() == (via_view,)
        total += via_view
    cur = dist.cursor()
    cur.execute("SELECT COUNT(*) FROM big")
    assert cur.fetchone() == (total,)


def test_errors_match_the_engine(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, plain, engine, _ = pair
    dist.autocommit = True  # each statement on its own: a failing one undoes nothing else
    # SQLite checks a view's columns when it is used, DuckDB when it is created.
    same_outcome(dist, plain, "CREATE VIEW bad AS SELECT nosuchcolumn FROM orders")
    check(dist, plain, "SELECT * FROM bad")
    got, want = run_both(dist, plain, "CREATE VIEW bad2 AS SELECT FROM WHERE")
    assert isinstance(want, Exception) and isinstance(got, exdb.ProgrammingError), got
    with pytest.raises(exdb.ProgrammingError, match="parameters"):
        dist.cursor().execute("CREATE VIEW p AS SELECT id FROM orders WHERE id = ?", [1])
    dist.rollback()
    with pytest.raises(exdb.NotSupportedError, match="TEMP"):
        dist.cursor().execute("CREATE TEMP VIEW tv AS SELECT 1 AS one")
    dist.rollback()
    # A view over a table that does not exist: SQLite creates it and fails on use; DuckDB
    # refuses to create it.
    same_outcome(dist, plain, "CREATE VIEW ghost AS SELECT * FROM nosuch")
    dist.rollback()
    check(dist, plain, "SELECT * FROM ghost")
    dist.rollback()
    # The table under a view is dropped: both engines allow it; the view then fails on use.
    both(dist, plain, "CREATE TABLE gone (k INTEGER PRIMARY KEY)")
    both(dist, plain, "CREATE VIEW on_gone AS SELECT k FROM gone")
    both(dist, plain, "DROP TABLE gone")
    dist.commit()
    check(dist, plain, "SELECT * FROM on_gone")
    dist.rollback()
    if engine == "sqlite":  # DuckDB checks a view's body when it is created: no cycle there
        both(dist, plain, "CREATE VIEW c1 AS SELECT * FROM c2")
        both(dist, plain, "CREATE VIEW c2 AS SELECT * FROM c1")
        with pytest.raises(exdb.ProgrammingError, match="circularly"):
            dist.cursor().execute("SELECT * FROM c1")
        dist.rollback()


def test_create_view_rolls_back(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, _, _, _ = pair
    dist.cursor().execute("CREATE VIEW undone AS SELECT id FROM orders")
    dist.rollback()
    with pytest.raises(exdb.ProgrammingError, match="undone"):
        dist.cursor().execute("SELECT * FROM undone")
    dist.rollback()


def test_asyncio_door(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, plain, _, running = pair
    dist.commit()

    async def main() -> list[tuple[Any, ...]]:
        conn = await exdb.connect_async(nodes=running.nodes)
        try:
            cur = await conn.execute("SELECT COUNT(*), SUM(amount) FROM bigger")
            return [tuple(r) for r in await cur.fetchall()]
        finally:
            await conn.close()

    got = asyncio.run(main())
    want = plain.cursor().execute("SELECT COUNT(*), SUM(amount) FROM bigger").fetchall()
    assert got[0][0] == want[0][0] and abs(got[0][1] - want[0][1]) < 1e-6


def test_describe_and_in_view_shorthand(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, plain, engine, _ = pair
    if engine == "sqlite":
        check(dist, plain, "PRAGMA table_info(big)")
        check(dist, plain, "SELECT COUNT(*) FROM orders WHERE id IN top_of_top")
    else:
        check(dist, plain, "DESCRIBE big")
        check(dist, plain, "DESCRIBE SELECT id, amount * 2 FROM big")
