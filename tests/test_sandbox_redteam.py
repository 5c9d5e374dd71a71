"""Red-team attacks on the SQL sandbox of ``exdb serve`` beyond those of test_sandbox_sqlite.py
and test_sandbox_duckdb.py, each one that broke the sandbox before its fix.

Every attack runs against real servers, in memory and durable, through the single-node door and
the distributed one: it must fail with a clear exdb error of the right class, the server must
stay up and serve a session opened before the attack and a new one, and every committed row must
stay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import exdb
from exdb.cluster import ServerProcess

from _sandbox import KEPT, kept, seed

StartServer = Callable[..., ServerProcess]


@contextlib.contextmanager
def _survives(server: ServerProcess) -> Iterator[Any]:
    """Yields the attacker's connection (autocommit); around it: a session opened before still
    answers, a new one does too, the committed rows are all there, the server is alive."""
    with exdb.connect(server.node, autocommit=True) as before:
        assert kept(before) == KEPT
        with exdb.connect(server.node, autocommit=True) as attacker:
            yield attacker
            assert attacker.execute("SELECT 1").fetchone() == (1,)  # its session goes on
        assert kept(before) == KEPT
    with exdb.connect(server.node) as fresh:
        assert kept(fresh) == KEPT
    assert server.proc is not None and server.proc.poll() is None


# --- DuckDB: a chain of set operations -----------------------------------------------------------

pytest.importorskip("duckdb")


def _chain(terms: int, op: str = "UNION ALL") -> str:
    return "SELECT 1 AS x" + f" {op} SELECT 1" * (terms - 1)


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
def test_duckdb_refuses_a_chain_of_set_operations_that_no_memory_limit_bounds(
    start_server: StartServer, tmp_path: Path, durable: bool
) -> None:
    """DuckDB plans ``SELECT 1 UNION ALL SELECT 1 ...`` in time and memory that grow with the
    square of the chain, counted against no --memory-limit and deaf to interrupts (a statement
    timeout): 20,000 terms (400 KB of SQL) took 10 GB and a minute, 30,000 would have the server
    killed for memory. The chain is refused before DuckDB sees it, beyond SQLite's own bound
    (500 set operations); shorter ones, and the words inside strings, comments or names, pass."""
    db = ["--db", str(tmp_path / "shard.duckdb")] if durable else []
    server = start_server("--engine", "duckdb", *db, "--memory-limit", "256MiB")
    seed(server.node)
    with _survives(server) as conn:
        for op in ("UNION ALL", "UNION", "UNION ALL BY NAME", "INTERSECT ALL", "EXCEPT"):
            sql = _chain(3000, op)
            with pytest.raises(exdb.ProgrammingError) as info:
                conn.execute(sql)
            message = str(info.value)
            assert "not allowed" in message and "set operations" in message, message
            assert "2999" in message and "500" in message, message
            assert info.value.node == server.node and info.value.statement == sql
        # Parenthesised terms and lower case count alike.
        with pytest.raises(exdb.ProgrammingError, match="set operations"):
            conn.execute("(SELECT 1)" + " union all (SELECT 1)" * 600)
        # At the bound, and the words where they are no set operation: allowed.
        assert conn.execute(f"SELECT count(*) FROM ({_chain(501)})").fetchone() == (501,)
        words = " ".join(["union all except intersect"] * 400)
        row = conn.execute(
            f"SELECT '{words}' AS \"union\" /* {words} */ -- {words}\n UNION ALL SELECT 'x'"
        ).fetchall()
        assert row == [(words,), ("x",)]
    # Inside a transaction: refused before DuckDB sees it, so the transaction goes on.
    with exdb.connect(server.node) as conn:
        conn.execute("INSERT INTO kept VALUES (100, 'in the transaction')")
        with pytest.raises(exdb.ProgrammingError, match="set operations"):
            conn.execute(_chain(3000))
        conn.execute("DELETE FROM kept WHERE k = 100")
        conn.commit()
        assert kept(conn) == KEPT


def test_duckdb_set_operation_chains_are_refused_through_the_distributed_door(
    start_server: StartServer,
) -> None:
    """Through exdb.connect(nodes=[a, b]), and verbatim on one node with the ``N:`` prefix."""
    a = start_server("--engine", "duckdb", "--memory-limit", "256MiB")
    b = start_server("--engine", "duckdb", "--memory-limit", "256MiB")
    with exdb.connect(nodes=[a.node, b.node], autocommit=True) as dist:
        dist.execute("CREATE TABLE kept (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        dist.executemany("INSERT INTO kept VALUES (?, ?)", KEPT)
        for sql in (_chain(3000), f"SELECT count(*) FROM ({_chain(3000)})", "1:" + _chain(3000)):
            with pytest.raises(exdb.ProgrammingError, match="set operations") as info:
                dist.execute(sql).fetchall()
            assert info.value.node in (a.node, b.node)
        assert sorted(dist.execute("SELECT k, v FROM kept").fetchall()) == KEPT
    for server in (a, b):
        assert server.proc is not None and server.proc.poll() is None


# --- DuckDB: a macro that replaces a built-in function for every session ------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE MACRO upper(x) AS 'pwned'",
        "CREATE OR REPLACE MACRO main.lower(x) AS 'pwned'",
        'CREATE TEMP MACRO "Upper"(x) AS 1',
        "CREATE FUNCTION IF NOT EXISTS sum(x) AS 0",
        "/* hidden */ CREATE MACRO -- here\n count(x) AS 0",
        "CREATE MACRO memory.main.length(x) AS 0",
    ],
)
def test_duckdb_refuses_a_macro_named_like_a_built_in_function(
    start_server: StartServer, sql: str
) -> None:
    # Before: after CREATE MACRO main.upper(x) AS 'pwned', every other session's upper('a')
    # returned 'pwned', and sum(x)/count(x) could be replaced alike (the distributed engine's
    # partial aggregates with them).
    server = start_server("--engine", "duckdb")
    seed(server.node)
    with _survives(server) as attacker:
        with pytest.raises(exdb.ProgrammingError, match="built-in function") as caught:
            attacker.execute(sql)
        assert caught.value.node == server.node
        with exdb.connect(server.node) as other:
            assert other.execute("SELECT upper('a'), lower('B'), length('abc')").fetchone() == (
                "A",
                "b",
                3,
            )
            assert other.execute("SELECT sum(k), count(k) FROM kept").fetchone() == (190, 20)


def test_duckdb_macros_of_their_own_names_still_work(start_server: StartServer) -> None:
    server = start_server("--engine", "duckdb")
    seed(server.node)
    with _survives(server) as conn:
        conn.execute("CREATE MACRO add_one(x) AS x + 1")
        conn.execute("CREATE TABLE macro_words (macro INTEGER, function INTEGER)")
        assert conn.execute("SELECT add_one(41)").fetchone() == (42,)
        with exdb.connect(server.node) as other:
            assert other.execute("SELECT add_one(1)").fetchone() == (2,)
