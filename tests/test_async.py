"""The asyncio door: the same operations as coroutines, pipelined on one connection."""

from __future__ import annotations

import asyncio

import pytest

import exdb
from exdb.cluster import ServerProcess


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_async_round_trip_and_transactions(server: ServerProcess, engine: str) -> None:
    server_engine = engine

    async def main() -> None:
        async with await exdb.connect_async(server.node) as conn:
            cur = await conn.execute("SELECT 1, ?, ?", (2, "three"))
            assert await cur.fetchall() == [(1, 2, "three")]
            await conn.execute("CREATE TABLE a (k INTEGER PRIMARY KEY, v VARCHAR)")
            await conn.commit()
            cur = await conn.executemany("INSERT INTO a VALUES (?, ?)", [(1, "x"), (2, "y")])
            assert cur.rowcount == 2
            await conn.rollback()
            cur = await conn.execute("SELECT COUNT(*) FROM a")
            assert await cur.fetchone() == (0,)
            await conn.executemany("INSERT INTO a VALUES (?, ?)", [(1, "x"), (2, "y")])
            await conn.commit()
            cur = conn.cursor()
            await cur.execute("SELECT k, v FROM a ORDER BY k")
            assert [row async for row in cur] == [(1, "x"), (2, "y")]
            with pytest.raises(exdb.IntegrityError):
                await conn.execute("INSERT INTO a VALUES (1, 'dup')")
            with pytest.raises(exdb.ProgrammingError):
                await conn.execute("SELEC 1")
            assert (await conn.ping())["in_transaction"] is True
            if server_engine == "duckdb":
                # DuckDB aborts the transaction on an error; commit says so instead of pretending.
                with pytest.raises(exdb.OperationalError, match="nothing was committed"):
                    await conn.commit()
            else:
                await conn.commit()  # SQLite undoes the failed statement only

    run(main())


def test_async_pipelines_many_tasks_on_one_connection(sqlite_node: str) -> None:
    async def main() -> None:
        conn = await exdb.connect_async(sqlite_node, autocommit=True)
        try:

            async def one(i: int) -> list[tuple[int, str]]:
                cur = await conn.execute("SELECT ?, ?", (i, str(i)))
                return await cur.fetchall()

            results = await asyncio.gather(*(one(i) for i in range(500)))
            assert results == [[(i, str(i))] for i in range(500)]
        finally:
            await conn.close()

    run(main())


def test_async_use_after_close_and_errors_name_the_node(sqlite_node: str) -> None:
    async def main() -> None:
        conn = await exdb.connect_async(sqlite_node)
        await conn.close()
        with pytest.raises(exdb.InterfaceError):  # as the sync door (the DB-API suite asks it)
            await conn.close()
        with pytest.raises(exdb.InterfaceError):
            await conn.execute("SELECT 1")
        with pytest.raises(exdb.OperationalError) as info:
            await exdb.connect_async("127.0.0.1", 1, connectTimeout=2000)
        assert "127.0.0.1:1" in str(info.value)

    run(main())


def test_async_large_result_streams(sqlite_node: str) -> None:
    async def main() -> None:
        async with await exdb.connect_async(sqlite_node) as conn:
            cur = await conn.execute(
                "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200000)"
                " SELECT i FROM c"
            )
            total = 0
            while rows := await cur.fetchmany(5000):
                total += sum(r[0] for r in rows)
            assert total == 200000 * 200001 // 2

    run(main())
