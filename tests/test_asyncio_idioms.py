"""asyncio idioms on every async door: ``async for``, ``async with conn.cursor()``,
``async with conn.transaction()`` (and the sync ``with conn.transaction()``), and cancellation
that leaves the connection usable at once, on one node and on several."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

import exdb
from exdb.cluster import LocalCluster

# Seconds: bounds, never assertions about speed. A statement that is still running on a node
# because its cancel never arrived would hold that node's session for minutes (_SLOW counts to
# ten billion), so the statement after it would run into this bound and fail the test.
_BOUND = 60.0
_SLOW = (
    "SELECT k, (WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c"
    " WHERE i < 10000000000) SELECT count(*) FROM c) FROM t"
)


@pytest.fixture(scope="module", params=["sqlite", "duckdb"])
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """Two shards of each engine, shared by this module's tests (each uses its own tables)."""
    with LocalCluster(2, engine=str(request.param)) as c:
        yield c


Connect = Callable[[LocalCluster], Awaitable[Any]]


async def _one_node(cluster: LocalCluster) -> Any:
    return await exdb.connect_async(cluster.nodes[0])


async def _two_nodes(cluster: LocalCluster) -> Any:
    return await exdb.connect_async(nodes=list(cluster.nodes))


DOORS = pytest.mark.parametrize("connect", [_one_node, _two_nodes], ids=["1node", "2nodes"])


def _table(name: str, connect: Connect) -> str:
    return f"{name}_{'one' if connect is _one_node else 'two'}"


@DOORS
def test_async_for_and_async_with_cursor(cluster: LocalCluster, connect: Connect) -> None:
    table = _table("aiter", connect)

    async def main() -> None:
        conn = await connect(cluster)
        try:
            await conn.execute(f"CREATE TABLE {table} (k INTEGER PRIMARY KEY, v TEXT)")
            await conn.executemany(
                f"INSERT INTO {table} VALUES (?, ?)", [(i, f"v{i}") for i in range(50)]
            )
            async with conn.cursor() as cur:
                await cur.execute(f"SELECT k, v FROM {table} ORDER BY k")
                rows = [row async for row in cur]
            assert rows == [(i, f"v{i}") for i in range(50)]
            assert cur.closed
            with pytest.raises(exdb.InterfaceError):
                await cur.execute("SELECT 1")
            await conn.execute(f"DROP TABLE {table}")
            await conn.commit()
        finally:
            await conn.close()

    asyncio.run(main())


@DOORS
def test_async_transaction_commits_or_rolls_back(cluster: LocalCluster, connect: Connect) -> None:
    table = _table("atxn", connect)

    async def main() -> None:
        conn = await connect(cluster)
        other = await connect(cluster)
        try:
            await conn.execute(f"CREATE TABLE {table} (k INTEGER PRIMARY KEY, v INTEGER)")
            await conn.commit()
            async with conn.transaction():
                await conn.executemany(f"INSERT INTO {table} VALUES (?, ?)", [(1, 10), (2, 20)])
            # Committed: another connection sees the rows.
            cur = await other.execute(f"SELECT k, v FROM {table} ORDER BY k")
            assert await cur.fetchall() == [(1, 10), (2, 20)]
            await other.commit()

            with pytest.raises(ZeroDivisionError):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (3, 30)")
                    await conn.execute(f"UPDATE {table} SET v = v + 1")
                    raise ZeroDivisionError
            cur = await conn.execute(f"SELECT k, v FROM {table} ORDER BY k")
            assert await cur.fetchall() == [(1, 10), (2, 20)]
            await conn.commit()

            # With autocommit on, the block is one transaction all the same.
            conn.autocommit = True
            with pytest.raises(KeyError):
                async with conn.transaction():
                    await conn.execute(f"DELETE FROM {table}")
                    raise KeyError("x")
            assert conn.autocommit is True
            cur = await conn.execute(f"SELECT count(*) FROM {table}")
            assert await cur.fetchall() == [(2,)]

            # Nested blocks are refused; so is a block over statements not yet committed.
            async with conn.transaction():
                with pytest.raises(exdb.ProgrammingError, match="nest"):
                    async with conn.transaction():
                        pass
            conn.autocommit = False
            await conn.execute(f"SELECT 1 FROM {table}")
            with pytest.raises(exdb.ProgrammingError, match="commit\\(\\) or rollback\\(\\)"):
                async with conn.transaction():
                    pass
            await conn.rollback()
            await conn.execute(f"DROP TABLE {table}")
            await conn.commit()
        finally:
            await conn.close()
            await other.close()

    asyncio.run(main())


@pytest.mark.parametrize("distributed", [False, True], ids=["1node", "2nodes"])
def test_sync_transaction(cluster: LocalCluster, distributed: bool) -> None:
    table = f"stxn_{'two' if distributed else 'one'}"

    def connect() -> Any:
        return (
            exdb.connect(nodes=list(cluster.nodes))
            if distributed
            else exdb.connect(cluster.nodes[0])
        )

    with connect() as conn, connect() as other:
        conn.execute(f"CREATE TABLE {table} (k INTEGER PRIMARY KEY, v INTEGER)")
        conn.commit()
        with conn.transaction():
            conn.executemany(f"INSERT INTO {table} VALUES (?, ?)", [(1, 1), (2, 2), (3, 3)])
        assert other.execute(f"SELECT count(*) FROM {table}").fetchall() == [(3,)]
        other.commit()
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute(f"DELETE FROM {table} WHERE k > 1")
            raise RuntimeError
        assert conn.execute(f"SELECT k FROM {table} ORDER BY k").fetchall() == [(1,), (2,), (3,)]
        conn.commit()
        conn.execute(f"DROP TABLE {table}")


@DOORS
def test_cancelled_task_leaves_the_connection_usable(
    cluster: LocalCluster, connect: Connect
) -> None:
    table = _table("cancel", connect)

    async def main() -> None:
        conn = await connect(cluster)
        try:
            conn.autocommit = True
            await conn.execute(f"CREATE TABLE {table} (k INTEGER PRIMARY KEY)")
            await conn.executemany(f"INSERT INTO {table} VALUES (?)", [(i,) for i in range(8)])
            # Every shard holds rows, so the slow statement runs on every node.
            slow = _SLOW.replace("FROM t", f"FROM {table}")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.execute(slow), 0.5)
            # The next statements run at once: the slow one was cancelled on every node.
            cur = await asyncio.wait_for(conn.execute(f"SELECT count(*) FROM {table}"), _BOUND)
            assert await cur.fetchall() == [(8,)]
            task = asyncio.create_task(conn.execute(slow))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            cur = await asyncio.wait_for(conn.execute(f"SELECT max(k) FROM {table}"), _BOUND)
            assert await cur.fetchall() == [(7,)]
            # A cancelled transaction block rolls back, and the connection goes on.
            conn.autocommit = False

            async def block() -> None:
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (100)")
                    await conn.execute(slow)

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(block(), 1.0)
            cur = await asyncio.wait_for(conn.execute(f"SELECT count(*) FROM {table}"), _BOUND)
            assert await cur.fetchall() == [(8,)]
            await conn.execute(f"DROP TABLE {table}")
            await conn.commit()
        finally:
            await conn.close()

    asyncio.run(main())
