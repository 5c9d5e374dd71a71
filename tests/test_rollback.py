"""rollback() ends the transaction on every node it touched and opens none: a catalog reload
after it (DDL may have been rolled back) runs outside any transaction, so it holds no lock that
keeps another client's writes waiting (SQLAlchemy's ORM calls rollback() all the time)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import exdb
from exdb.cluster import LocalCluster


def _in_transaction(conn: exdb.DistributedConnection) -> list[bool]:
    return [bool(c.ping()["in_transaction"]) for c in conn._conns]


@pytest.mark.parametrize("engine", ["sqlite", "duckdb"])
def test_rollback_leaves_no_transaction_open(tmp_path: Path, engine: str) -> None:
    with LocalCluster(2, engine=engine, db_dir=str(tmp_path)) as cluster:
        with exdb.connect(nodes=cluster.nodes, autocommit=True) as setup:
            setup.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, v INTEGER)")
            setup.executemany("INSERT INTO acct VALUES (?, ?)", [(i, 0) for i in range(10)])
        conn = exdb.connect(nodes=cluster.nodes)  # autocommit off
        other = exdb.connect(nodes=cluster.nodes, autocommit=True, statement_timeout=3000)
        try:
            conn.execute("UPDATE acct SET v = v + 1")  # a write on every node
            assert _in_transaction(conn) == [True, True]
            conn.rollback()
            assert _in_transaction(conn) == [False, False]
            # Another client writes at once, on every node: nothing holds a lock.
            assert other.execute("UPDATE acct SET v = 7").rowcount == 10
            conn.rollback()  # a rollback with nothing to roll back opens nothing either
            assert _in_transaction(conn) == [False, False]
            assert conn.execute("SELECT SUM(v) FROM acct").fetchall() == [(70,)]
        finally:
            conn.close()
            other.close()


def test_asyncio_rollback_leaves_no_transaction_open(tmp_path: Path) -> None:
    async def main(nodes: tuple[str, ...]) -> None:
        conn = await exdb.connect_async(nodes=nodes)
        try:
            await conn.execute("INSERT INTO acct VALUES (1, 1), (2, 2)")
            await conn.rollback()
            states = [await c.ping() for c in conn._conns]
            assert [s["in_transaction"] for s in states] == [False, False]
        finally:
            await conn.close()

    with LocalCluster(2, db_dir=str(tmp_path)) as cluster:
        with exdb.connect(nodes=cluster.nodes, autocommit=True) as setup:
            setup.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, v INTEGER)")
        asyncio.run(main(cluster.nodes))
