"""A distributed result is typed as one database types it: the final stage of a split aggregate
must not widen a column (DuckDB's SUM of the shards' BIGINT counts is a HUGEINT)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import exdb
from exdb.cluster import LocalCluster

duckdb = pytest.importorskip("duckdb")

QUERIES = [
    "SELECT COUNT(*) FROM t",
    "SELECT g, COUNT(*), COUNT(v), SUM(id), MIN(v) FROM t GROUP BY g ORDER BY g",
    "SELECT g, COUNT(DISTINCT v) FROM t GROUP BY g ORDER BY g",
    "SELECT COUNT(*) FROM t WHERE id < 0",
    "SELECT g, COUNT(*) FROM t GROUP BY g HAVING COUNT(*) > 30 ORDER BY 2 DESC, 1",
]
DDL = "CREATE TABLE t (id INTEGER PRIMARY KEY, g INTEGER, v DOUBLE)"
ROWS = [(i, i % 3, (i % 7) * 0.5) for i in range(100)]


@pytest.fixture(scope="module")
def both() -> Iterator[tuple[exdb.DistributedConnection, object]]:
    with LocalCluster(2, engine="duckdb") as cluster:
        conn = exdb.connect(nodes=cluster.nodes)
        conn.execute(DDL)
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", ROWS)
        conn.commit()
        one = duckdb.connect()
        one.execute(DDL)
        one.executemany("INSERT INTO t VALUES (?, ?, ?)", ROWS)
        yield conn, one
        conn.close()
        one.close()


@pytest.mark.parametrize("sql", QUERIES)
def test_split_aggregates_keep_one_databases_types(
    both: tuple[exdb.DistributedConnection, object], sql: str
) -> None:
    conn, one = both
    cur = conn.execute(sql)
    ours = [d[1] for d in cur.description or []]
    got = cur.fetchall()
    ref = one.execute(sql)  # type: ignore[attr-defined]
    theirs = [str(d[1]) for d in ref.description]
    assert got == ref.fetchall()
    assert ours == theirs, conn.explain(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO r VALUES (5, 'e'), (6, 'f') RETURNING id, v",
        "INSERT INTO r VALUES (7, 'g') RETURNING id AS \"Count\"",
        "UPDATE r SET v = v || 'x' WHERE id > 1 RETURNING id, v",
        "DELETE FROM r WHERE id = 2 RETURNING *",
        "INSERT INTO r VALUES (8, 'returning') RETURNING id",
    ],
)
def test_duckdb_returning_gives_its_rows(sql: str) -> None:
    """A DuckDB INSERT/UPDATE/DELETE ... RETURNING answers its rows, on one node and on
    several, as one DuckDB does (the node used to read the first value as a row count)."""
    ddl = "CREATE TABLE r (id INTEGER PRIMARY KEY, v VARCHAR)"
    seed = [(1, "a"), (2, "b"), (3, "c")]
    one = duckdb.connect()
    one.execute(ddl)
    one.executemany("INSERT INTO r VALUES (?, ?)", seed)
    expected = sorted(one.execute(sql).fetchall())
    after = sorted(one.execute("SELECT * FROM r").fetchall())
    with LocalCluster(2, engine="duckdb") as cluster:
        for conn in (exdb.connect(cluster.nodes[0]), exdb.connect(nodes=cluster.nodes)):
            with conn:
                conn.execute("DROP TABLE IF EXISTS r")
                conn.execute(ddl)
                conn.executemany("INSERT INTO r VALUES (?, ?)", seed)
                assert sorted(conn.execute(sql).fetchall()) == expected
                assert sorted(conn.execute("SELECT * FROM r").fetchall()) == after
