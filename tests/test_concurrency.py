"""Many sessions at once, each with its own transaction."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import exdb
from exdb.cluster import ServerProcess


def test_two_sessions_are_isolated(server: ServerProcess) -> None:
    with exdb.connect(server.node) as a, exdb.connect(server.node) as b:
        a.execute("CREATE TABLE iso (k INTEGER PRIMARY KEY, v VARCHAR)")
        a.commit()
        a.execute("INSERT INTO iso VALUES (1, 'uncommitted')")
        assert b.execute("SELECT COUNT(*) FROM iso").fetchone() == (0,)
        b.rollback()  # end b's snapshot so that it sees the commit below
        a.commit()
        assert b.execute("SELECT v FROM iso").fetchall() == [("uncommitted",)]
        b.commit()
        a.execute("INSERT INTO iso VALUES (2, 'rolled back')")
        a.rollback()
        assert b.execute("SELECT COUNT(*) FROM iso").fetchone() == (1,)


def test_a_session_sees_its_own_uncommitted_writes(server: ServerProcess) -> None:
    with exdb.connect(server.node) as conn:
        conn.execute("CREATE TABLE own (x INTEGER)")
        conn.execute("INSERT INTO own VALUES (1)")
        assert conn.execute("SELECT COUNT(*) FROM own").fetchone() == (1,)
        assert conn.ping()["in_transaction"] is True
        conn.commit()
        assert conn.ping()["in_transaction"] is False


def test_autocommit_mode(server: ServerProcess) -> None:
    with exdb.connect(server.node, autocommit=True) as a, exdb.connect(server.node) as b:
        a.execute("CREATE TABLE ac (x INTEGER)")
        a.execute("INSERT INTO ac VALUES (1)")
        assert b.execute("SELECT COUNT(*) FROM ac").fetchone() == (1,)


def test_fifty_concurrent_clients_mixed_reads_and_writes(server: ServerProcess) -> None:
    clients, writes_each = 50, 20
    with exdb.connect(server.node) as setup:
        setup.execute("CREATE TABLE hits (client INTEGER, n INTEGER, PRIMARY KEY (client, n))")
        setup.commit()
    start = threading.Barrier(clients)

    def client(cid: int) -> int:
        seen = 0
        with exdb.connect(server.node) as conn:
            cur = conn.cursor()
            start.wait(30)
            for n in range(writes_each):
                cur.execute("INSERT INTO hits VALUES (?, ?)", (cid, n))
                conn.commit()
                (count,) = cur.execute(
                    "SELECT COUNT(*) FROM hits WHERE client = ?", (cid,)
                ).fetchone()
                assert count == n + 1  # its own committed writes, exactly
                (seen,) = cur.execute("SELECT COUNT(*) FROM hits").fetchone()
                conn.commit()
        return int(seen)

    with ThreadPoolExecutor(clients) as pool:
        seen = list(pool.map(client, range(clients)))
    assert all(writes_each <= s <= clients * writes_each for s in seen)
    with exdb.connect(server.node) as check:
        assert check.execute("SELECT COUNT(*), COUNT(DISTINCT client) FROM hits").fetchone() == (
            clients * writes_each,
            clients,
        )
