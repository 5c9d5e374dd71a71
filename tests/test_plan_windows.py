"""Window functions: whole on each shard when every PARTITION BY holds the distribution column,
else the input comes from the shards and the final stage finishes the windows. Differential
against one database holding all the rows (random data with NULLs, ties and duplicates)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from oracle import check
from plan_data import CLUSTERS, loaded_pair

SEED = random.SystemRandom().randrange(2**32)

WHOLE = "window: whole on each shard"
INPUT = "window: input on the shards, finished in the final stage"

#: (query, strategy line explain must show); the visits table is distributed by cust (NULLs
#: included), sales and archive by id.
CASES: list[tuple[str, str]] = [
    (
        "SELECT vid, cust, ts, RANK() OVER (PARTITION BY cust ORDER BY ts) FROM visits",
        WHOLE,
    ),
    (
        "SELECT cust, ts, score, DENSE_RANK() OVER (PARTITION BY cust, ts ORDER BY score),"
        " SUM(score) OVER (PARTITION BY ts, cust) FROM visits ORDER BY cust, ts, score, 4",
        WHOLE,
    ),
    (
        "SELECT v.cust, v.ts, COUNT(*) OVER (PARTITION BY v.cust ORDER BY v.ts"
        " RANGE BETWEEN 2 PRECEDING AND CURRENT ROW) AS n FROM visits v WHERE v.score > ?"
        " ORDER BY n DESC, v.cust, v.ts LIMIT 15",
        WHOLE,
    ),
    (
        "SELECT id, SUM(amount) OVER (PARTITION BY id), LAG(qty) OVER (PARTITION BY id ORDER BY"
        " qty) FROM sales WHERE region IS NOT NULL",
        WHOLE,
    ),
    (
        "SELECT s.id, a.qty, MAX(a.amount) OVER (PARTITION BY s.id) FROM sales s"
        " JOIN archive a ON s.id = a.id",
        WHOLE,
    ),
    (
        "SELECT DISTINCT cust, MAX(ts) OVER (PARTITION BY cust) FROM visits",
        WHOLE,
    ),
    # not partitioned by the distribution column: finished in the final stage
    (
        "SELECT id, cust, SUM(amount) OVER (PARTITION BY cust ORDER BY id"
        " ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) FROM sales WHERE qty > 1",
        INPUT,
    ),
    (
        "SELECT id, amount, SUM(qty) OVER (ORDER BY amount RANGE BETWEEN UNBOUNDED PRECEDING"
        " AND CURRENT ROW), RANK() OVER (ORDER BY amount DESC) FROM sales",
        INPUT,
    ),
    (
        "SELECT id, LAG(amount) OVER (PARTITION BY region ORDER BY id),"
        " FIRST_VALUE(region) OVER (ORDER BY cust, id), NTILE(4) OVER (ORDER BY id)"
        " FROM sales WHERE cust IS NULL OR cust < ?",
        INPUT,
    ),
    (
        "SELECT vid, ts, PERCENT_RANK() OVER (ORDER BY ts), CUME_DIST() OVER (ORDER BY ts)"
        " FROM visits ORDER BY 3 DESC, 1, 2",
        INPUT,
    ),
    (
        "SELECT s.id, r.reason, RANK() OVER (PARTITION BY s.cust ORDER BY r.amount)"
        " FROM sales s JOIN returns r ON s.cust = r.cust WHERE r.amount > 3",
        INPUT,
    ),
    (
        "SELECT s.id, r.rid, COUNT(r.rid) OVER (PARTITION BY s.region) FROM sales s"
        " LEFT JOIN returns r ON r.cust = s.cust AND r.reason = 'late' WHERE s.qty = 2",
        INPUT,
    ),
    (
        "SELECT cust, COUNT(*), SUM(COUNT(*)) OVER (ORDER BY cust) FROM sales GROUP BY cust",
        INPUT,
    ),
    (
        "SELECT cust, tag, ROW_NUMBER() OVER (PARTITION BY cust, tag) > 0 FROM tags",
        INPUT,
    ),
    (
        "SELECT vid, cust, MIN(score) OVER (PARTITION BY vid) FROM visits",
        INPUT,
    ),
]
PARAMS = {2: (1.0,), 8: (6,)}


@pytest.fixture(scope="module", params=CLUSTERS, ids=lambda p: f"{p[0]}-{p[1]}shards")
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any, str]]:
    """A loaded cluster and one plain database holding the same rows."""
    engine, shards = request.param
    yield from loaded_pair(engine, shards, SEED)


@pytest.mark.parametrize(
    ("index", "sql", "strategy"), [(i, s, k) for i, (s, k) in enumerate(CASES)]
)
def test_window(pair: tuple[Any, Any, str], index: int, sql: str, strategy: str) -> None:
    """The strategy explain names, no ``SELECT *`` sent, and the rows of one database."""
    dist, plain, _ = pair
    plan = dist.explain(sql)
    assert plan.startswith("plan: window\n" + strategy), plan
    assert "SELECT *" not in plan, plan
    check(dist, plain, sql, PARAMS.get(index), ordered="LIMIT" in sql or None)


def test_input_filters_pushed(pair: tuple[Any, Any, str]) -> None:
    """The window's input is each table's own filtered rows, with only the columns read."""
    dist, _, _ = pair
    plan = dist.explain(CASES[10][0])
    assert 'SELECT "cust", "amount", "reason" FROM "returns" WHERE amount > 3' in plan, plan
    assert 'SELECT "id", "cust" FROM "sales"\n' in plan, plan
    left = dist.explain(CASES[11][0])
    assert "FROM \"returns\" WHERE reason = 'late'" in left, left
    assert 'FROM "sales" WHERE qty = 2' in left, left


def test_pinned_window_runs_on_one_shard(pair: tuple[Any, Any, str]) -> None:
    """A window over rows pinned to one shard runs there."""
    dist, plain, _ = pair
    sql = "SELECT id, ROW_NUMBER() OVER (ORDER BY id) FROM sales WHERE id = 17"
    assert dist.explain(sql).startswith("plan: single"), dist.explain(sql)
    check(dist, plain, sql)


def test_window_in_subquery_is_not_taken(pair: tuple[Any, Any, str]) -> None:
    """A window inside a derived table over distributed rows is not planned here (the outer
    statement is), and the answer is still exact."""
    dist, plain, _ = pair
    sql = (
        "SELECT cust, r FROM (SELECT cust, RANK() OVER (PARTITION BY region ORDER BY amount) AS r"
        " FROM sales) WHERE r = 1"
    )
    assert not dist.explain(sql).startswith("plan: window")
    check(dist, plain, sql)
