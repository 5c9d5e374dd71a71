"""Recursive planning (issue 10, item 1): uncorrelated subqueries and CTEs run first as their
own distributed statements, their results bound into the outer statement. Checked against one
plain database of the same engine holding all the rows (3 SQLite shards, 2 DuckDB shards), with
the plan kind asserted through ``explain``."""

# ruff: noqa: E501  (the table of statements reads best one statement a line)
from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest

import exdb
from exdb.cluster import LocalCluster

from oracle import check, load, plain_database

#: (statement, parameters, the plan kind explain must name)
QUERIES: list[tuple[str, list[Any] | None, str]] = [
    # scalar subqueries: in WHERE, in the select list, empty (NULL), with parameters
    ("SELECT COUNT(*) FROM orders WHERE amount > (SELECT AVG(amount) FROM orders)", None, "recursive"),
    ("SELECT id, amount - (SELECT MIN(amount) FROM orders) FROM orders WHERE id < 20", None, "recursive"),
    ("SELECT COUNT(*) FROM orders WHERE qty = (SELECT qty FROM orders WHERE id = 7)", None, "recursive"),
    ("SELECT COUNT(*) FROM orders WHERE qty = (SELECT x FROM empty_t)", None, "recursive"),
    ("SELECT (SELECT MAX(amount) FROM orders WHERE cust = ?), (SELECT COUNT(*) FROM events)", [3], "recursive"),
    ("SELECT cust, COUNT(*) FROM orders WHERE amount > (SELECT AVG(amount) FROM orders WHERE qty > ?)"
     " GROUP BY cust ORDER BY cust", [2], "recursive"),
    ("SELECT tag FROM orders WHERE id = (SELECT MAX(id) FROM orders WHERE tag = 'red')", None, "recursive"),
    # IN / NOT IN, with NULLs in the list, empty lists, a text list
    ("SELECT name FROM customers WHERE cid IN (SELECT cust FROM orders WHERE qty = 4)", None, "recursive"),
    ("SELECT COUNT(*) FROM customers WHERE cid NOT IN (SELECT cust FROM orders WHERE qty = 4)", None, "recursive"),
    ("SELECT COUNT(*) FROM customers WHERE cid NOT IN (SELECT cust FROM orders WHERE cust IS NOT NULL AND qty = 4)", None, "recursive"),
    ("SELECT COUNT(*) FROM orders WHERE cust IN (SELECT x FROM empty_t)", None, "recursive"),
    ("SELECT COUNT(*) FROM orders WHERE cust NOT IN (SELECT x FROM empty_t)", None, "recursive"),
    ("SELECT cid, cid IN (SELECT cust FROM orders WHERE amount > ?) FROM customers", [30], "recursive"),
    ("SELECT id FROM orders WHERE tag IN (SELECT b FROM events WHERE v > 20) ORDER BY id", None, "recursive"),
    ("SELECT id FROM orders WHERE id IN (SELECT a FROM events) AND qty NOT IN (SELECT a FROM events WHERE a > 3)", None, "recursive"),
    # EXISTS / NOT EXISTS
    ("SELECT COUNT(*) FROM customers WHERE EXISTS (SELECT 1 FROM orders WHERE amount > 45)", None, "recursive"),
    ("SELECT COUNT(*) FROM customers WHERE NOT EXISTS (SELECT 1 FROM orders WHERE amount > 1000)", None, "recursive"),
    ("SELECT EXISTS (SELECT * FROM empty_t), NOT EXISTS (SELECT * FROM orders WHERE id = ?)", [5], "recursive"),
    # nested: a subquery inside a subquery
    ("SELECT COUNT(*) FROM orders WHERE cust IN (SELECT cid FROM customers WHERE cid >"
     " (SELECT AVG(cust) FROM orders))", None, "recursive"),
    # CTEs: read once (inlined), read twice (computed once), over a join, with parameters
    ("WITH s AS (SELECT cust, SUM(amount) AS t, COUNT(*) AS n FROM orders GROUP BY cust)"
     " SELECT AVG(t), MAX(n) FROM s", None, "recursive"),
    ("WITH s AS (SELECT cust, SUM(amount) AS t FROM orders GROUP BY cust)"
     " SELECT a.cust, b.t FROM s a JOIN s b ON a.cust = b.cust ORDER BY a.cust", None, "recursive"),
    ("WITH s AS (SELECT cust, SUM(amount) AS t FROM orders WHERE qty > ? GROUP BY cust)"
     " SELECT c.name, s.t FROM customers c JOIN s ON c.cid = s.cust ORDER BY c.name", [1], "recursive"),
    # a CTE read twice, once inside a subquery: not yet (its rows would be needed there too)
    ("WITH s(k, total) AS (SELECT cust, SUM(qty) FROM orders GROUP BY cust)"
     " SELECT k FROM s WHERE total > (SELECT AVG(total) FROM s) ORDER BY k", None, "gather"),
    ("WITH s(k, total) AS (SELECT cust, SUM(qty) FROM orders GROUP BY cust)"
     " SELECT k, total FROM s WHERE total > 20 ORDER BY k", None, "recursive"),
    ("WITH big AS (SELECT id, amount FROM orders WHERE amount > 40) SELECT COUNT(*) FROM big", None, "recursive"),
    # a derived table in FROM joined to a distributed table
    ("SELECT COUNT(*), SUM(o.amount) FROM orders o JOIN (SELECT cid FROM customers WHERE region = 'north') x"
     " ON o.cust = x.cid", None, "recursive"),
    # the outer statement, its subquery bound, is a join that is not co-located
    ("SELECT c.region, COUNT(*) FROM orders o JOIN customers c ON o.cust = c.cid"
     " WHERE o.amount > (SELECT AVG(amount) FROM orders) GROUP BY c.region ORDER BY 1", None, "recursive"),
    # correlated: decorrelated into a grouped derived table (tests/test_plan_correlated.py)
    ("SELECT COUNT(*) FROM orders o WHERE amount > (SELECT AVG(amount) FROM orders i WHERE i.cust = o.cust)", None, "recursive"),
    # still gathered: recursive
    ("WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 5)"
     " SELECT COUNT(*) FROM orders WHERE qty IN (SELECT x FROM r)", None, "gather"),
]  # fmt: skip


@pytest.fixture(
    scope="module", params=[("sqlite", 3), ("duckdb", 2)], ids=lambda p: f"{p[0]}-{p[1]}shards"
)
def cluster(request: pytest.FixtureRequest) -> Iterator[tuple[str, LocalCluster]]:
    """One cluster per engine for the module."""
    engine, shards = request.param
    with LocalCluster(shards, engine=engine) as running:
        yield engine, running


@pytest.fixture(scope="module")
def pair(cluster: tuple[str, LocalCluster]) -> Iterator[tuple[Any, Any, str, LocalCluster]]:
    """(distributed connection, plain database, engine, cluster) with the oracle's tables."""
    engine, running = cluster
    dist = exdb.connect(nodes=running.nodes)
    plain = plain_database(engine)
    try:
        load(dist, distributed=True)
        load(plain, distributed=False)
        yield dist, plain, engine, running
    finally:
        dist.rollback()
        dist.close()
        plain.close()


@pytest.mark.parametrize("sql, params, kind", QUERIES, ids=range(len(QUERIES)))
def test_each_kind_against_one_database(
    pair: tuple[Any, Any, str, LocalCluster], sql: str, params: list[Any] | None, kind: str
) -> None:
    dist, plain, _, _ = pair
    check(dist, plain, sql, params)
    assert dist.explain(sql).startswith(f"plan: {kind}"), dist.explain(sql)
    dist.rollback()


def test_bound_outer_statement_plans_as_a_join(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    """A subquery bound as a named parameter leaves the outer statement free to plan as a join
    that moves a side (it used to gather: its column names were asked without the name)."""
    dist, _, _, _ = pair
    sql = (
        "SELECT c.region, COUNT(*) FROM orders o JOIN customers c ON o.cust = c.cid"
        " WHERE o.amount > (SELECT AVG(amount) FROM orders) GROUP BY c.region"
    )
    outer = dist.explain(sql).split("\nouter:", 1)[1]
    assert "plan: join" in outer, dist.explain(sql)


def test_explain_names_each_subquery_then_the_outer(
    pair: tuple[Any, Any, str, LocalCluster],
) -> None:
    dist, _, _, _ = pair
    text = dist.explain(
        "SELECT COUNT(*) FROM orders WHERE amount > (SELECT AVG(amount) FROM orders)"
        " AND cust IN (SELECT cid FROM customers WHERE region = 'north')"
    )
    lines = text.splitlines()
    assert lines[0] == "plan: recursive", text
    assert lines[1].startswith("subquery 1 (a scalar"), text
    assert "  plan: aggregate" in lines, text
    assert any(line.startswith("subquery 2 (an IN list") for line in lines), text
    assert any(line.startswith("outer (planned again") for line in lines), text
    assert not any("gather" in line for line in lines), text


def test_random_data_with_nulls_and_duplicates(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, plain, _, _ = pair
    rng = random.Random(10)
    rows = [
        (i, rng.choice([None, 1, 2, 2, 3, 5]), rng.choice([None, 0.5, 1.5, 2.0, 7.25]))
        for i in range(1, 301)
    ]
    for conn in (dist, plain):
        cur = conn.cursor()
        cur.execute("CREATE TABLE r1 (k INTEGER PRIMARY KEY, g INTEGER, v REAL)")
        cur.execute("CREATE TABLE r2 (k INTEGER PRIMARY KEY, g INTEGER, v REAL)")
        cur.executemany("INSERT INTO r1 VALUES (?, ?, ?)", rows)
        cur.executemany("INSERT INTO r2 VALUES (?, ?, ?)", rows[::3])
        conn.commit()
    try:
        for sql in [
            "SELECT COUNT(*) FROM r1 WHERE g NOT IN (SELECT g FROM r2 WHERE v > 1)",
            "SELECT COUNT(*) FROM r1 WHERE g NOT IN (SELECT g FROM r2 WHERE g IS NOT NULL)",
            "SELECT COUNT(*) FROM r1 WHERE g IN (SELECT g FROM r2 WHERE v IS NULL)",
            "SELECT g, COUNT(*) FROM r1 WHERE v >= (SELECT AVG(v) FROM r2) GROUP BY g",
            "SELECT COUNT(*) FROM r1 WHERE v IN (SELECT v FROM r2)",
            "SELECT k FROM r1 WHERE k IN (SELECT k * 2 FROM r2) ORDER BY k",
            "WITH d AS (SELECT g, COUNT(*) AS n FROM r1 GROUP BY g) SELECT * FROM d",
            "WITH d AS (SELECT g, SUM(v) AS s FROM r2 GROUP BY g)"
            " SELECT x.g, y.s FROM d x LEFT JOIN d y ON x.g = y.g + 1",
        ]:
            check(dist, plain, sql)
            assert dist.explain(sql).startswith("plan: recursive"), dist.explain(sql)
    finally:
        dist.rollback()
        for conn in (dist, plain):
            conn.cursor().execute("DROP TABLE r1")
            conn.cursor().execute("DROP TABLE r2")
            conn.commit()


def test_large_in_list_goes_as_an_intermediate_result(
    pair: tuple[Any, Any, str, LocalCluster],
) -> None:
    dist, plain, _, _ = pair
    for conn in (dist, plain):
        cur = conn.cursor()
        cur.execute("CREATE TABLE many (k INTEGER PRIMARY KEY, v INTEGER)")
        cur.executemany("INSERT INTO many VALUES (?, ?)", [(i, i % 977) for i in range(12_000)])
        conn.commit()
    try:
        check(dist, plain, "SELECT COUNT(*) FROM orders WHERE id IN (SELECT k FROM many)")
        check(
            dist,
            plain,
            "SELECT COUNT(*) FROM many WHERE v NOT IN (SELECT k FROM many WHERE k > 50)",
        )
        cur = dist.cursor()  # the intermediate results were dropped again
        cur.execute("SELECT COUNT(*) FROM orders")
        assert cur.fetchone() == (120,)
    finally:
        dist.rollback()
        for conn in (dist, plain):
            conn.cursor().execute("DROP TABLE many")
            conn.commit()


def test_sqlite_affinity_of_the_subquery_column_is_kept(
    pair: tuple[Any, Any, str, LocalCluster],
) -> None:
    """``'5' IN (SELECT intcol ...)`` applies the column's affinity: SQLite says 1; a plain
    list would say 0. The text column keeps '05' apart from 5 and '5'."""
    dist, plain, engine, _ = pair
    if engine != "sqlite":
        pytest.skip("affinity is SQLite's; DuckDB compares by type (the other tests)")
    for conn in (dist, plain):
        cur = conn.cursor()
        cur.execute("CREATE TABLE aff (k INTEGER PRIMARY KEY, n INTEGER, t TEXT, b BLOB)")
        cur.executemany(
            "INSERT INTO aff VALUES (?, ?, ?, ?)",
            [(1, 5, "5", "5"), (2, 7, "05", None), (3, None, "x", 5)],
        )
        conn.commit()
    try:
        for sql in [
            "SELECT k FROM aff WHERE t IN (SELECT n FROM aff)",
            "SELECT k FROM aff WHERE b IN (SELECT n FROM aff)",
            "SELECT k FROM aff WHERE n IN (SELECT t FROM aff)",
            "SELECT k FROM aff WHERE t = (SELECT n FROM aff WHERE k = 1)",
            "SELECT k FROM aff WHERE b = (SELECT t FROM aff WHERE k = 1)",
            "SELECT '5' IN (SELECT n FROM aff), 5 IN (SELECT t FROM aff)",
        ]:
            check(dist, plain, sql)
    finally:
        dist.rollback()
        for conn in (dist, plain):
            conn.cursor().execute("DROP TABLE aff")
            conn.commit()


def test_scalar_subquery_of_several_rows(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    """SQLite takes the first row (exact here: the subquery orders them); DuckDB raises where
    the statement evaluates it, and not where it does not."""
    dist, plain, engine, _ = pair
    check(dist, plain, "SELECT COUNT(*) FROM orders WHERE qty = (SELECT qty FROM orders"
          " WHERE qty IS NOT NULL ORDER BY id DESC)")  # fmt: skip
    check(dist, plain, "SELECT COUNT(*) FROM orders WHERE qty > 100"
          " AND id = (SELECT id FROM orders)")  # fmt: skip
    if engine == "duckdb":
        with pytest.raises(exdb.Error, match="More than one row"):
            dist.cursor().execute("SELECT (SELECT id FROM orders)")
        dist.rollback()


def test_mixed_case_table_name(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    """Issue 10, item 8: this raised ``final stage: table "orders" already exists``."""
    dist, plain, _, _ = pair
    for conn in (dist, plain):
        cur = conn.cursor()
        cur.execute("CREATE TABLE Sales (saleId INTEGER PRIMARY KEY, price REAL)")
        cur.executemany("INSERT INTO Sales VALUES (?, ?)", [(i, i * 2.5) for i in range(1, 9)])
        conn.commit()
    try:
        sql = "SELECT COUNT(*) FROM Sales WHERE price > (SELECT AVG(price) FROM Sales)"
        check(dist, plain, sql)
        check(
            dist, plain, "SELECT COUNT(*) FROM SALES WHERE price > (SELECT AVG(price) FROM sales)"
        )
        assert dist.explain(sql).startswith("plan: recursive")
    finally:
        dist.rollback()
        for conn in (dist, plain):
            conn.cursor().execute("DROP TABLE Sales")
            conn.commit()


def test_inside_a_transaction_sees_its_own_writes(
    pair: tuple[Any, Any, str, LocalCluster],
) -> None:
    dist, plain, _, _ = pair
    dist.autocommit = False
    try:
        for conn in (dist, plain):
            conn.cursor().execute("INSERT INTO orders VALUES (1001, 2, 49.5, 4, 'new')")
        check(dist, plain, "SELECT id FROM orders WHERE amount >= (SELECT MAX(amount) FROM orders)")
        check(
            dist,
            plain,
            "WITH s AS (SELECT cust, COUNT(*) AS n FROM orders GROUP BY cust)"
            " SELECT o.id, s.n FROM orders o JOIN s ON o.cust = s.cust WHERE o.tag = 'new'",
        )
    finally:
        dist.rollback()
        plain.cursor().execute("DELETE FROM orders WHERE id = 1001")
        plain.commit()
    check(
        dist,
        plain,
        "SELECT COUNT(*) FROM orders WHERE id IN (SELECT id FROM orders WHERE id > 1000)",
    )


def test_view_benefits(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, plain, _, _ = pair
    view = "CREATE VIEW per_cust_sq AS SELECT cust, SUM(amount) AS total FROM orders GROUP BY cust"
    for conn in (dist, plain):
        conn.cursor().execute(view)
        conn.commit()
    try:
        for sql in [
            "SELECT MAX(total) FROM per_cust_sq",
            "SELECT COUNT(*) FROM orders WHERE cust IN (SELECT cust FROM per_cust_sq WHERE total > 200)",
        ]:
            check(dist, plain, sql)
            assert dist.explain(sql).startswith("plan: recursive"), dist.explain(sql)
    finally:
        dist.rollback()
        for conn in (dist, plain):
            conn.cursor().execute("DROP VIEW per_cust_sq")
            conn.commit()


SAMPLE = (
    "SELECT COUNT(*) FROM orders WHERE amount > (SELECT AVG(amount) FROM orders WHERE qty > ?)"
    " AND cust IN (SELECT cid FROM customers WHERE region = 'north')"
)


def _want(plain: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in plain.cursor().execute(SAMPLE, [1]).fetchall()]


def test_asyncio_door(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, plain, _, running = pair
    dist.commit()

    async def main() -> list[tuple[Any, ...]]:
        conn = await exdb.connect_async(nodes=running.nodes)
        try:
            cur = await conn.execute(SAMPLE, [1])
            return [tuple(r) for r in await cur.fetchall()]
        finally:
            await conn.close()

    assert asyncio.run(main()) == _want(plain)


def test_worker_door(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, plain, _, running = pair
    dist.commit()
    with exdb.connect(nodes=running.nodes, async_=True, nWorkers=2) as conn:
        got = conn.execute([SAMPLE, SAMPLE], [[1], [1]])
    want = _want(plain)
    assert [[tuple(r) for r in rows] for rows in got] == [want, want]
