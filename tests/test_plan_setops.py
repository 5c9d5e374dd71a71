"""Set operations: co-located branches whole on each shard, UNION ALL concatenated, others
with each branch planned alone and finished in the final stage. Differential against one
database holding all the rows (random data with NULLs, ties and duplicates)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from oracle import check
from plan_data import CLUSTERS, loaded_pair

SEED = random.SystemRandom().randrange(2**32)

COLOCATED = "set operation: co-located, whole on each shard"
CONCATENATED = "set operation: UNION ALL, the branches concatenated"
BRANCHES = "set operation: branches planned alone, finished in the final stage"

#: (query, parameters, strategy explain names, engines or None for both). sales and archive are
#: distributed by id (a third of archive's rows are copies of sales rows); returns by rid.
CASES: list[tuple[str, tuple[Any, ...] | None, str, tuple[str, ...] | None]] = [
    ("SELECT id, cust FROM sales UNION SELECT id, cust FROM archive", None, COLOCATED, None),
    ("SELECT id, region FROM sales EXCEPT SELECT id, region FROM archive", None, COLOCATED, None),
    (
        "SELECT cust, id, qty FROM sales INTERSECT SELECT cust, id, qty FROM archive ORDER BY id",
        None,
        COLOCATED,
        None,
    ),
    (
        "SELECT id, amount FROM sales WHERE qty > ? UNION SELECT id, amount FROM archive"
        " ORDER BY 2 DESC, 1 LIMIT 7 OFFSET 3",
        (1,),
        COLOCATED,
        None,
    ),
    (
        "SELECT cust, amount FROM sales UNION ALL SELECT cust, amount FROM returns",
        None,
        CONCATENATED,
        None,
    ),
    (
        "SELECT region, COUNT(*) FROM sales GROUP BY region UNION ALL SELECT reason, COUNT(*)"
        " FROM returns GROUP BY reason UNION ALL SELECT tag, cust FROM tags",
        None,
        CONCATENATED,
        None,
    ),
    ("SELECT cust FROM sales UNION SELECT cust FROM returns", None, BRANCHES, None),
    ("SELECT region FROM sales UNION SELECT region FROM zones", None, BRANCHES, None),
    (
        "SELECT cust, region FROM sales INTERSECT SELECT cust, region FROM archive",
        None,
        BRANCHES,
        None,
    ),
    ("SELECT cust FROM sales EXCEPT SELECT cust FROM returns", None, BRANCHES, None),
    (
        "SELECT cust FROM sales UNION SELECT cust FROM returns EXCEPT SELECT cust FROM tags",
        None,
        BRANCHES,
        None,
    ),
    (
        "SELECT cust FROM sales EXCEPT SELECT cust FROM returns UNION SELECT cust FROM tags",
        None,
        BRANCHES,
        None,
    ),
    (
        "SELECT cust FROM sales UNION ALL SELECT cust FROM returns EXCEPT SELECT cust FROM tags"
        " ORDER BY 1 DESC",
        None,
        BRANCHES,
        None,
    ),
    (
        "SELECT cust, amount AS a FROM sales WHERE qty = ? UNION ALL"
        " SELECT cust, amount FROM returns WHERE amount > ? ORDER BY a, cust LIMIT ?",
        (2, 5.0, 12),
        BRANCHES,
        None,
    ),
    (
        "SELECT cust AS a FROM sales UNION SELECT cust AS b FROM returns ORDER BY b",
        None,
        BRANCHES,
        ("sqlite",),
    ),
    ("SELECT cust FROM sales UNION SELECT k FROM notes", None, BRANCHES, ("sqlite",)),
    ("SELECT qty FROM sales UNION SELECT amount FROM returns", None, BRANCHES, None),
    (
        "SELECT cust, region FROM sales UNION BY NAME SELECT region, rid AS cust FROM returns"
        " LEFT JOIN zones ON zones.label = returns.reason",
        None,
        BRANCHES,
        ("duckdb",),
    ),
    (
        "SELECT cust FROM sales INTERSECT ALL SELECT cust FROM returns",
        None,
        BRANCHES,
        ("duckdb",),
    ),
    ("SELECT cust FROM sales EXCEPT ALL SELECT cust FROM tags", None, BRANCHES, ("duckdb",)),
    (
        "SELECT cust FROM sales EXCEPT (SELECT cust FROM returns UNION SELECT cust FROM tags)",
        None,
        BRANCHES,
        ("duckdb",),
    ),
]


@pytest.fixture(scope="module", params=CLUSTERS, ids=lambda p: f"{p[0]}-{p[1]}shards")
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any, str]]:
    """A loaded cluster and one plain database holding the same rows."""
    engine, shards = request.param
    yield from loaded_pair(engine, shards, SEED)


@pytest.mark.parametrize(("sql", "params", "strategy", "engines"), CASES)
def test_set_operation(
    pair: tuple[Any, Any, str],
    sql: str,
    params: tuple[Any, ...] | None,
    strategy: str,
    engines: tuple[str, ...] | None,
) -> None:
    """The strategy explain names, no table read with ``SELECT *``, the rows and column names
    of one database."""
    dist, plain, engine = pair
    if engines is not None and engine not in engines:
        pytest.skip(f"{', '.join(engines)} syntax")
    plan = dist.explain(sql)
    assert plan.startswith("plan: setop\n" + strategy), plan
    assert "SELECT *" not in plan, plan
    check(dist, plain, sql, params, ordered="LIMIT" in sql or None)


def test_branches_deduplicate_on_the_shards(pair: tuple[Any, Any, str]) -> None:
    """Under UNION, INTERSECT and EXCEPT each branch is DISTINCT on the shards first."""
    dist, _, _ = pair
    plan = dist.explain(CASES[9][0])
    assert "branch 1: SELECT DISTINCT cust FROM sales" in plan, plan
    assert "branch 2: SELECT DISTINCT cust FROM returns" in plan, plan
    kept = dist.explain(CASES[12][0])
    assert "branch 1: SELECT cust FROM sales" in kept, kept  # under UNION ALL: every row


def test_a_set_operation_over_reference_tables_runs_on_one_node(
    pair: tuple[Any, Any, str],
) -> None:
    dist, plain, _ = pair
    sql = "SELECT region FROM zones UNION SELECT label FROM zones"
    assert dist.explain(sql).startswith("plan: single"), dist.explain(sql)
    check(dist, plain, sql)


def test_errors_are_errors(pair: tuple[Any, Any, str]) -> None:
    """Branches of different widths fail as on one database."""
    dist, plain, _ = pair
    check(dist, plain, "SELECT cust, id FROM sales UNION SELECT cust FROM returns")


DOOR_QUERIES = [
    "SELECT cust FROM sales UNION SELECT cust FROM returns EXCEPT SELECT cust FROM tags",
    "SELECT id, cust FROM sales UNION SELECT id, cust FROM archive",
    "SELECT cust, amount FROM sales UNION ALL SELECT cust, amount FROM returns",
    "SELECT vid, cust, RANK() OVER (PARTITION BY cust ORDER BY ts) FROM visits",
    "SELECT id, SUM(amount) OVER (PARTITION BY region ORDER BY id) FROM sales WHERE qty > 1",
    "SELECT s.id, r.rid FROM sales s JOIN returns r ON s.cust = r.cust WHERE r.amount > 3",
]


def test_every_door(pair: tuple[Any, Any, str]) -> None:
    """The asyncio door and the worker processes answer as the sync door does (one core)."""
    import asyncio

    import exdb
    from exdb.cluster import LocalCluster

    from plan_data import load

    engine = pair[2]
    with LocalCluster(2, engine=engine) as cluster:
        nodes = list(cluster.nodes)
        with exdb.connect(nodes=nodes) as sync:
            load(sync, True, SEED)
            want = [sorted(map(tuple, sync.execute(q).fetchall()), key=repr) for q in DOOR_QUERIES]

        async def run_async() -> list[list[tuple[Any, ...]]]:
            conn = await exdb.connect_async(nodes=nodes)
            try:
                out = []
                for q in DOOR_QUERIES:
                    cur = conn.cursor()
                    await cur.execute(q)
                    out.append(sorted(map(tuple, await cur.fetchall()), key=repr))
                return out
            finally:
                await conn.close()

        assert asyncio.run(run_async()) == want
        with exdb.connect(nodes=nodes, async_=True, nWorkers=2) as conn:
            got = [sorted(map(tuple, conn.execute(q)), key=repr) for q in DOOR_QUERIES]
        assert got == want
