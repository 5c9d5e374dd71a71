"""Joins that are not co-located (plan kind ``join``: broadcast, repartition, semi-join
reduction), on real clusters of both engines, against one plain database holding all rows."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest

import exdb
import exdb.distributed.plan.join as join_plan
from exdb.cluster import LocalCluster

from oracle import check, plain_database, same_rows

SCHEMA = [
    "CREATE TABLE a (id INTEGER PRIMARY KEY, k INTEGER, s VARCHAR, v DOUBLE)",
    "CREATE TABLE b (id INTEGER PRIMARY KEY, k INTEGER, w INTEGER)",
    "CREATE TABLE c (id INTEGER PRIMARY KEY, name VARCHAR)",
    "CREATE TABLE r (id INTEGER PRIMARY KEY, label VARCHAR)",
]
SQLITE_SCHEMA = [
    "CREATE TABLE m (id INTEGER PRIMARY KEY, t TEXT, u BLOB)",  # u: values keep their class
]


def _data(engine: str) -> dict[str, list[tuple[Any, ...]]]:
    rng = random.Random(10)
    keys = [None, 1, 2, 3, 4, 5, 6, 7, 8]
    data = {
        "a": [
            (i, rng.choice(keys), rng.choice(["x", "y", None]), rng.choice([0.5, 1.25, None]))
            for i in range(120)
        ],
        "b": [(i, rng.choice([*keys, 99]), rng.choice([None, *range(12)])) for i in range(60)],
        "c": [(i, f"n{i % 5}") for i in range(12)],
        "r": [(i, f"label{i}") for i in range(6)],
    }
    if engine == "sqlite":
        mixed: list[Any] = [1, "1", 1.0, "x", None, b"1", 2, "2.0", 2.5]
        data["m"] = [(i, str(rng.choice(keys)), rng.choice(mixed)) for i in range(30)]
    return data


@pytest.fixture(
    scope="module",
    params=[("sqlite", 2), ("sqlite", 3), ("duckdb", 2)],
    ids=lambda p: f"{p[0]}-{p[1]}shards",
)
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any, str, LocalCluster]]:
    """A loaded cluster, a loaded plain database of the same engine, the engine, the cluster."""
    engine, shards = request.param
    with LocalCluster(shards, engine=engine) as cluster:
        dist = exdb.connect(nodes=cluster.nodes, autocommit=True)
        plain = plain_database(engine)
        try:
            schema = SCHEMA + (SQLITE_SCHEMA if engine == "sqlite" else [])
            for ddl in schema:
                dist.execute(ddl)
                plain.execute(ddl)
            dist.execute("SELECT create_reference_table('r')")
            for table, rows in _data(engine).items():
                marks = ", ".join("?" * len(rows[0]))
                dist.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
                plain.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
            yield dist, plain, engine, cluster
        finally:
            dist.close()
            plain.close()


@pytest.fixture(params=["default", "repartition"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The default thresholds, or none for broadcast (large sides are re-hashed instead)."""
    if request.param == "repartition":
        monkeypatch.setattr(join_plan, "BROADCAST_MAX_ROWS", 0)
    return str(request.param)


#: (statement, parameters): every one plans as ``join``.
JOINS: list[tuple[str, tuple[Any, ...] | None]] = [
    ("SELECT a.id, b.id, b.w FROM a JOIN b ON a.k = b.k ORDER BY 1, 2", None),
    ("SELECT * FROM a JOIN b ON a.k = b.k WHERE b.w < 5", None),
    ("SELECT a.id, b.w FROM a, b WHERE a.k = b.k AND a.s = 'x'", None),
    ("SELECT a.id, b.w FROM a JOIN b ON a.k = b.k WHERE b.w > ?", (6,)),
    # outer joins: the null-supplying side's ON conditions move with it, WHERE stays after
    ("SELECT a.id, b.id FROM a LEFT JOIN b ON a.k = b.k AND b.w > 3", None),
    ("SELECT a.id, b.w FROM a LEFT JOIN b ON a.k = b.k WHERE b.w IS NULL", None),
    ("SELECT b.id, a.id FROM b LEFT JOIN a ON a.k = b.k AND a.s = 'y'", None),
    ("SELECT b.id, count(a.id) FROM b LEFT JOIN a ON a.k = b.k GROUP BY b.id", None),
    # self-joins not on the key
    ("SELECT x.id, y.id FROM a x JOIN a y ON x.k = y.k AND x.id < y.id", None),
    ("SELECT x.k, count(*), sum(y.v) FROM a AS x JOIN a AS y ON x.k = y.k GROUP BY x.k", None),
    ("SELECT x.id, y.id FROM b x LEFT JOIN b y ON y.k = x.w", None),
    # aggregates, ORDER BY, LIMIT, DISTINCT over the join
    ("SELECT count(*), sum(b.w), avg(a.v), min(a.s) FROM a JOIN b ON a.k = b.k", None),
    ("SELECT a.k, count(DISTINCT b.w) FROM a JOIN b ON a.k = b.k GROUP BY a.k ORDER BY a.k", None),
    ("SELECT DISTINCT a.s, b.w FROM a JOIN b ON a.k = b.k", None),
    ("SELECT a.id, b.id FROM a JOIN b ON a.k = b.k ORDER BY b.w DESC, a.id, b.id LIMIT 7", None),
    # three tables, a reference table among them
    ("SELECT a.id, b.id, c.name FROM a JOIN b ON a.id = b.k JOIN c ON c.id = b.w", None),
    (
        "SELECT a.id, b.id, c.name FROM a JOIN b ON a.id = b.k JOIN c ON c.id = b.w"
        " WHERE c.name = 'n3'",
        None,
    ),
    ("SELECT r.label, count(*) FROM a JOIN b ON a.k = b.k JOIN r ON r.id = b.w GROUP BY 1", None),
    ("SELECT a.id, c.name, b.w FROM a JOIN c ON c.id = a.k LEFT JOIN b ON b.k = c.id", None),
    # unqualified columns, expressions named as written
    ("SELECT name, w, w + 1 FROM c JOIN b ON c.id = b.w WHERE name <> 'n1'", None),
]

#: SQLite keys of mixed types: the engine's affinity decides what is equal.
SQLITE_JOINS = [
    "SELECT m.id, a.id FROM m JOIN a ON m.t = a.k",
    "SELECT m.id, b.id FROM m JOIN b ON m.u = b.k",
    "SELECT x.id, y.id FROM m x JOIN m y ON x.u = y.u AND x.id < y.id",
    "SELECT x.id, y.id FROM m x JOIN m y ON x.t = y.u",
]


def _temp_tables(dist: Any, engine: str, shards: int) -> list[Any]:
    """The TEMP tables of this connection's session on every node."""
    sql = (
        "SELECT name FROM sqlite_temp_master WHERE type = 'table'"
        if engine == "sqlite"
        else "SELECT table_name FROM duckdb_tables() WHERE temporary"
    )
    return [row for n in range(1, shards + 1) for row in dist.execute(f"{n}: {sql}").fetchall()]


@pytest.mark.parametrize(("sql", "params"), JOINS)
def test_join_answers_as_one_database(
    pair: tuple[Any, Any, str, LocalCluster], mode: str, sql: str, params: Any
) -> None:
    dist, plain, engine, cluster = pair
    check(dist, plain, sql, params)
    text = dist.explain(sql)
    assert text.startswith("plan: join"), text
    assert "join: " in text.split("\n", 1)[1]
    if "LEFT JOIN" in sql:
        preserved = sql.split(" FROM ", 1)[1].split()[0]
        alias = sql.split(" FROM ", 1)[1].split()[1]
        for name in {preserved, alias}:
            assert f"broadcast {name} " not in text, text  # a preserved side never broadcasts
    assert _temp_tables(dist, engine, len(cluster.nodes)) == []


@pytest.mark.parametrize("sql", SQLITE_JOINS)
def test_sqlite_type_mixed_keys(
    pair: tuple[Any, Any, str, LocalCluster], mode: str, sql: str
) -> None:
    dist, plain, engine, cluster = pair
    if engine != "sqlite":
        pytest.skip("SQLite affinity")
    check(dist, plain, sql)
    assert dist.explain(sql).startswith("plan: join")
    assert _temp_tables(dist, engine, len(cluster.nodes)) == []


def test_strategies_named_in_explain(
    pair: tuple[Any, Any, str, LocalCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    dist, plain, _, _ = pair
    sql = "SELECT a.id, b.id FROM a JOIN b ON a.k = b.k"
    check(dist, plain, sql)
    assert "join: broadcast b (est. 60 rows)" in dist.explain(sql)
    monkeypatch.setattr(join_plan, "BROADCAST_MAX_ROWS", 0)
    sql = "SELECT x.id, y.id FROM a x JOIN a y ON x.k = y.k"
    check(dist, plain, sql)
    assert "join: repartition x, y on k" in dist.explain(sql)
    sql = (
        "SELECT a.id, b.id, c.name FROM a JOIN b ON a.id = b.k JOIN c ON c.id = b.w"
        " WHERE c.name = 'n3'"
    )
    check(dist, plain, sql)
    text = dist.explain(sql)
    assert "join: repartition b on k" in text and "semi-join reduce b by the keys of c" in text
    assert "join: broadcast c (est. 2 rows)" in text


def test_before_running_explain_says_when_it_chooses(pair: Any) -> None:
    dist = pair[0]
    text = dist.explain("SELECT a.id FROM a JOIN b ON a.s = b.w AND a.id = 17")
    assert text.startswith("plan: join") and "at run time" in text


def test_inside_a_transaction(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, _, engine, cluster = pair
    sql = "SELECT count(*) FROM a JOIN b ON a.k = b.k"
    before = dist.execute(sql).fetchall()[0][0]
    dist.autocommit = False
    try:
        dist.execute("INSERT INTO b VALUES (1000, 1, 1)")
        ones = dist.execute("SELECT count(*) FROM a WHERE k = 1").fetchall()[0][0]
        assert dist.execute(sql).fetchall() == [(before + ones,)]  # its own write is seen
        assert _temp_tables(dist, engine, len(cluster.nodes)) == []
        dist.rollback()
        assert dist.execute(sql).fetchall() == [(before,)]
        dist.rollback()
    finally:
        dist.autocommit = True
    assert _temp_tables(dist, engine, len(cluster.nodes)) == []


def test_an_error_drops_the_temp_tables(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    dist, plain, engine, cluster = pair
    sql = (
        "SELECT CAST(b.w AS INTEGER) / 0, abs(-9223372036854775807 - b.w - 1)"
        " FROM a JOIN b ON a.k = b.k"
    )
    check(dist, plain, sql)  # the plain database fails it: exdb raises an exdb.Error too
    assert _temp_tables(dist, engine, len(cluster.nodes)) == []
    dist.autocommit = False
    try:
        with pytest.raises(exdb.Error):
            dist.execute(sql).fetchall()
        dist.rollback()
        assert _temp_tables(dist, engine, len(cluster.nodes)) == []
    finally:
        dist.rollback()
        dist.autocommit = True


def test_asyncio_and_worker_doors(pair: tuple[Any, Any, str, LocalCluster]) -> None:
    _, plain, _, cluster = pair
    sql = "SELECT x.id, y.id, y.w FROM b x JOIN b y ON x.w = y.k WHERE y.w > ?"
    want = plain.execute(sql, (2,)).fetchall()

    async def main() -> list[Any]:
        conn = await exdb.connect_async(nodes=list(cluster.nodes))
        try:
            cur = await conn.execute(sql, (2,))
            return [tuple(r) for r in await cur.fetchall()]
        finally:
            await conn.close()

    assert same_rows(asyncio.run(main()), want, ordered=False)
    with exdb.connect(nodes=cluster.nodes, async_=True, nworkers=2) as workers:
        for _ in range(3):  # the statements spread over both workers
            assert same_rows(list(workers.execute(sql, (2,))), want, ordered=False)
