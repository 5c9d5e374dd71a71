"""Re-hashing into distributed intermediates (exdb.distributed.plan.rehash): windows partitioned
by a column that is not the key, GROUP BY with many groups, and UNION/INTERSECT/EXCEPT finished
on the shards. Differential against one database holding the rows (random data with NULLs,
ties and duplicates), the strategy asserted with explain, no TEMP table left behind.

EXDB_REHASH_MIN_ROWS=1 makes every eligible statement re-hash on this small data; the default
threshold keeps the client's final stage, which a test checks too."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest

import exdb
from exdb.cluster import LocalCluster

from oracle import check, same_rows
from plan_data import CLUSTERS, load, plain_database

SEED = random.SystemRandom().randrange(2**32)

WINDOW = "re-hash: last run: the window's input re-hashed on "
GROUPS = "re-hash: last run: final stage on the shards, partial rows re-hashed"
SETOP = "re-hash: last run: set operation whole on each shard, branches re-hashed"
CLIENT = "re-hash: last run: final stage in the client"

#: (query, params, the line explain shows after it ran).
CASES: list[tuple[str, Any, str]] = [
    (
        "SELECT id, cust, SUM(amount) OVER (PARTITION BY cust ORDER BY id ROWS BETWEEN 2"
        " PRECEDING AND CURRENT ROW) FROM sales WHERE qty > ?",
        (1,),
        WINDOW + "cust",
    ),
    (
        "SELECT id, region, RANK() OVER (PARTITION BY region, cust ORDER BY amount, id) AS r,"
        " COUNT(*) OVER (PARTITION BY cust, region) FROM sales ORDER BY r, id LIMIT 20",
        None,
        WINDOW + "cust",
    ),
    (
        "SELECT s.id, LAG(s.amount) OVER (PARTITION BY s.region ORDER BY s.id),"
        " DENSE_RANK() OVER (PARTITION BY s.region ORDER BY s.qty) FROM sales s",
        None,
        WINDOW + "region",
    ),
    (
        "SELECT DISTINCT region, MAX(amount) OVER (PARTITION BY region) FROM archive",
        None,
        WINDOW + "region",
    ),
    ("SELECT cust, region, COUNT(*), SUM(amount) FROM sales GROUP BY cust, region", None, GROUPS),
    (
        "SELECT region, cust, MAX(qty) AS m, AVG(amount) FROM sales GROUP BY region, cust"
        " HAVING COUNT(*) > ? ORDER BY m DESC, region, cust LIMIT 7 OFFSET 2",
        (1,),
        GROUPS,
    ),
    ("SELECT cust, COUNT(DISTINCT qty) FROM sales GROUP BY cust ORDER BY cust", None, GROUPS),
    ("SELECT DISTINCT qty FROM archive GROUP BY qty, cust", None, GROUPS),
    ("SELECT cust, region FROM sales UNION SELECT cust, region FROM archive", None, SETOP),
    (
        "SELECT cust, qty FROM sales INTERSECT SELECT cust, qty FROM archive ORDER BY 1, 2",
        None,
        SETOP,
    ),
    (
        "SELECT cust, qty FROM sales EXCEPT SELECT cust, qty FROM archive"
        " ORDER BY cust DESC, qty LIMIT 5",
        None,
        SETOP,
    ),
    (
        "SELECT cust FROM sales UNION ALL SELECT cust FROM tags EXCEPT SELECT cust FROM returns",
        None,
        SETOP,
    ),
    ("SELECT amount FROM sales UNION SELECT amount FROM returns WHERE amount > ?", (2,), SETOP),
]


@pytest.fixture(scope="module", params=CLUSTERS, ids=lambda p: f"{p[0]}-{p[1]}shards")
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any, str, LocalCluster]]:
    """A loaded cluster (every eligible statement re-hashes) and one plain database."""
    engine, shards = request.param
    patch = pytest.MonkeyPatch()
    patch.setenv("EXDB_REHASH_MIN_ROWS", "1")
    try:
        with LocalCluster(shards, engine=engine) as cluster:
            dist = exdb.connect(nodes=cluster.nodes)
            plain = plain_database(engine)
            try:
                load(dist, True, SEED)
                load(plain, False, SEED)
                yield dist, plain, engine, cluster
            finally:
                dist.close()
                plain.close()
    finally:
        patch.undo()


def _temp_tables(dist: Any, engine: str, shards: int) -> list[Any]:
    """The TEMP tables of this connection's session on every node."""
    sql = (
        "SELECT name FROM sqlite_temp_master WHERE type = 'table'"
        if engine == "sqlite"
        else "SELECT table_name FROM duckdb_tables() WHERE temporary"
    )
    return [row for n in range(1, shards + 1) for row in dist.execute(f"{n}: {sql}").fetchall()]


@pytest.mark.parametrize(("index", "sql", "params", "line"), [(i, *c) for i, c in enumerate(CASES)])
def test_rehashed_answers_as_one_database(
    pair: tuple[Any, Any, str, LocalCluster], index: int, sql: str, params: Any, line: str
) -> None:
    dist, plain, engine, cluster = pair
    before = dist.explain(sql)
    assert "re-hash: chosen at run time" in before, before
    check(dist, plain, sql, params, ordered="LIMIT" in sql or None)
    after = dist.explain(sql)
    assert line in after, after
    assert "SELECT *" not in after, after
    assert _temp_tables(dist, engine, len(cluster.nodes)) == []


def test_few_rows_keep_the_client_final_stage(
    pair: tuple[Any, Any, str, LocalCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    dist, plain, _, _ = pair
    monkeypatch.setenv("EXDB_REHASH_MIN_ROWS", "100000")
    for sql, params, _ in CASES[:1] + CASES[4:5] + CASES[8:9]:
        check(dist, plain, sql, params)
        assert CLIENT in dist.explain(sql), dist.explain(sql)


def test_not_rehashed_where_hashes_could_differ(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    """No PARTITION BY: one partition, finished in the client; a partition by an expression
    alone is not re-hashed either."""
    dist, plain, _, _ = pair
    for sql in (
        "SELECT id, ROW_NUMBER() OVER (ORDER BY amount, id) FROM sales",
        "SELECT id, SUM(qty) OVER (PARTITION BY cust + 0 ORDER BY id) FROM sales",
    ):
        check(dist, plain, sql)
        assert "re-hash" not in dist.explain(sql), dist.explain(sql)


def test_an_error_drops_the_temp_tables(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, plain, engine, cluster = pair
    if engine == "duckdb":
        # Known, not this module's: on DuckDB an error raised while a scattered window's rows
        # stream leaves the shard sessions in an aborted transaction (WindowWholePlan alone
        # does it too, with no intermediate); reported to the lead.
        pytest.skip("DuckDB: mid-stream error leaves the sessions aborted (pre-existing)")
    sql = (
        "SELECT cust, SUM(qty) OVER (PARTITION BY cust ORDER BY id),"
        " abs(-9223372036854775807 - qty - 2) FROM sales"
    )
    check(dist, plain, sql)  # both fail (integer overflow) or both answer
    assert _temp_tables(dist, engine, len(cluster.nodes)) == []
    dist.autocommit = False
    try:
        sql2 = CASES[4][0]
        assert same_rows(
            dist.execute(sql2).fetchall(), plain.execute(sql2).fetchall(), ordered=False
        )
        assert _temp_tables(dist, engine, len(cluster.nodes)) == []
    finally:
        dist.rollback()
        dist.autocommit = True


def test_asyncio_and_worker_doors(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    _, plain, _, cluster = pair
    for sql, params, _ in (CASES[0], CASES[5], CASES[9]):
        want = plain.execute(sql, params or ()).fetchall()

        async def main(sql: str = sql, params: Any = params) -> list[Any]:
            conn = await exdb.connect_async(nodes=list(cluster.nodes))
            try:
                cur = await conn.execute(sql, params)
                return [tuple(r) for r in await cur.fetchall()]
            finally:
                await conn.close()

        ordered = "LIMIT" in sql
        assert same_rows(asyncio.run(main()), want, ordered=ordered)
        with exdb.connect(nodes=cluster.nodes, async_=True, nworkers=2) as workers:
            for _ in range(2):
                assert same_rows(list(workers.execute(sql, params)), want, ordered=ordered)
