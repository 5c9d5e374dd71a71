"""With --db, a commit survives kill -9 and a graceful stop; nothing uncommitted does; and
transactions of different sessions do not see each other's uncommitted rows."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest

import exdb
from exdb.cluster import ServerProcess

StartServer = Callable[..., ServerProcess]


def durable(start_server: StartServer, engine: str, path: pathlib.Path) -> ServerProcess:
    return start_server("--engine", engine, "--db", str(path))


def rows_of(node: str) -> list[tuple[int, str]]:
    with exdb.connect(node) as conn:
        return conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()  # type: ignore[return-value]


def test_a_commit_survives_kill_9(
    start_server: StartServer, engine: str, tmp_path: pathlib.Path
) -> None:
    db = tmp_path / f"shard.{engine}"
    server = durable(start_server, engine, db)
    conn = exdb.connect(server.node)
    auto = exdb.connect(server.node, autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v VARCHAR)")
        cur.execute("INSERT INTO t VALUES (1, 'committed')")
        cur.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"batch {i}") for i in range(10, 60)])
        conn.commit()
        auto.execute("INSERT INTO t VALUES (2, 'autocommitted')")
        cur.execute("INSERT INTO t VALUES (3, 'uncommitted')")
        cur.execute("UPDATE t SET v = 'changed, uncommitted' WHERE id = 1")
        assert cur.execute("SELECT count(*) FROM t").fetchone() == (53,)  # seen inside the txn
        server.kill()
        with pytest.raises(exdb.OperationalError) as info:
            cur.execute("SELECT 1")
        assert info.value.node == server.node
    finally:
        conn.close()
        auto.close()
    restarted = durable(start_server, engine, db)
    expected = [(1, "committed"), (2, "autocommitted")]
    expected += [(i, f"batch {i}") for i in range(10, 60)]
    assert rows_of(restarted.node) == expected
    # The restarted server takes writes again, and keeps them across another crash.
    with exdb.connect(restarted.node) as conn:
        conn.execute("INSERT INTO t VALUES (4, 'after restart')")
    restarted.kill()
    again = durable(start_server, engine, db)
    assert rows_of(again.node) == [*expected[:2], (4, "after restart"), *expected[2:]]


def test_a_graceful_stop_rolls_back_open_transactions(
    start_server: StartServer, engine: str, tmp_path: pathlib.Path
) -> None:
    db = tmp_path / f"shard.{engine}"
    server = durable(start_server, engine, db)
    with exdb.connect(server.node) as setup:
        setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v VARCHAR)")
        setup.execute("INSERT INTO t VALUES (1, 'committed')")
    holder = exdb.connect(server.node)
    idle = exdb.connect(server.node)
    try:
        assert idle.execute("SELECT count(*) FROM t").fetchone() == (1,)
        idle.rollback()
        holder.execute("INSERT INTO t VALUES (2, 'uncommitted')")
        holder.execute("DELETE FROM t WHERE id = 1")
        assert holder.ping()["in_transaction"] is True
        assert server.stop() == 0
        with pytest.raises(exdb.OperationalError):
            holder.execute("SELECT 1")
        with pytest.raises(exdb.OperationalError):
            holder.commit()
    finally:
        holder.close()
        idle.close()
    restarted = durable(start_server, engine, db)
    assert rows_of(restarted.node) == [(1, "committed")]


def test_uncommitted_rows_are_invisible_to_other_sessions(
    start_server: StartServer, engine: str, tmp_path: pathlib.Path
) -> None:
    server = durable(start_server, engine, tmp_path / f"shard.{engine}")
    with (
        exdb.connect(server.node) as a,
        exdb.connect(server.node) as b,
        exdb.connect(server.node, autocommit=True) as c,
    ):
        a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v VARCHAR)")
        a.commit()
        a.execute("INSERT INTO t VALUES (1, 'from a')")
        assert a.execute("SELECT count(*) FROM t").fetchone() == (1,)  # A sees its own row
        assert b.execute("SELECT count(*) FROM t").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM t").fetchone() == (0,)
        a.commit()
        # C reads outside any transaction: the commit shows at once.
        assert c.execute("SELECT v FROM t").fetchall() == [("from a",)]
        # B's transaction keeps the snapshot it started with until B ends it.
        assert b.execute("SELECT count(*) FROM t").fetchone() == (0,)
        b.rollback()
        assert b.execute("SELECT v FROM t").fetchall() == [("from a",)]
        b.commit()
        # A rolled-back row never shows anywhere.
        a.execute("INSERT INTO t VALUES (2, 'rolled back')")
        a.rollback()
        assert a.execute("SELECT count(*) FROM t").fetchone() == (1,)
        assert b.execute("SELECT count(*) FROM t").fetchone() == (1,)
        assert c.execute("SELECT count(*) FROM t").fetchone() == (1,)
