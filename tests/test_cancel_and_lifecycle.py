"""Cancelling, closing and stopping: nothing hangs and nothing is lost."""

from __future__ import annotations

import signal
import threading
import time

import pytest

import exdb
from exdb.cluster import ServerProcess

# A statement that keeps the engine busy for far longer than any test waits.
SLOW = {
    "sqlite": "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c)"
    " SELECT COUNT(*) FROM c",
    "duckdb": "SELECT COUNT(*) FROM range(100000000000) a",
}


def test_cancel_a_running_statement(server: ServerProcess, engine: str) -> None:
    with exdb.connect(server.node) as conn:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                conn.execute(SLOW[engine])
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 10
        while conn._waiting is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        started = time.monotonic()
        conn.cancel()
        worker.join(20)
        assert not worker.is_alive(), "the cancelled statement kept running"
        assert time.monotonic() - started < 10
        assert len(errors) == 1 and isinstance(errors[0], exdb.OperationalError), errors
        assert server.node in str(errors[0])
        conn.rollback()
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)  # the session goes on


def test_an_abandoned_large_result_is_cancelled_not_read(sqlite_node: str) -> None:
    with exdb.connect(sqlite_node) as conn:
        cur = conn.cursor()
        cur.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) SELECT i FROM c"
        )
        assert cur.fetchmany(3) == [(1,), (2,), (3,)]
        started = time.monotonic()
        cur.execute("SELECT 'next'")  # the endless stream above is cancelled in between
        assert cur.fetchall() == [("next",)]
        assert time.monotonic() - started < 10


def test_read_timeout_gives_operational_error_naming_the_node(
    server: ServerProcess, engine: str
) -> None:
    conn = exdb.connect(server.node, readTimeout=500)
    try:
        started = time.monotonic()
        with pytest.raises(exdb.OperationalError, match="readTimeout") as info:
            conn.execute(SLOW[engine])
        assert time.monotonic() - started < 5
        assert server.node in str(info.value)
    finally:
        conn.close()
    with exdb.connect(server.node) as fresh:  # the server is still serving
        assert fresh.execute("SELECT 1").fetchone() == (1,)


def test_connect_to_nothing_fails_fast_and_names_the_node() -> None:
    started = time.monotonic()
    with pytest.raises(exdb.OperationalError, match=r"127\.0\.0\.1:1"):
        exdb.connect("127.0.0.1", 1, maxConnectAttempts=2, connectTimeout=1000)
    assert time.monotonic() - started < 5


def test_sigterm_stops_gracefully_and_rolls_back(start_server, engine: str) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--engine", engine)
    idle = exdb.connect(server.node)
    busy = exdb.connect(server.node)
    busy.execute("CREATE TABLE g (x INTEGER)")
    busy.commit()
    busy.execute("INSERT INTO g VALUES (1)")  # left open: must be rolled back, not hang
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0
    with pytest.raises(exdb.OperationalError):
        idle.execute("SELECT 1")
    idle.close()
    busy.close()


def test_closing_a_connection_rolls_back_its_transaction(server: ServerProcess) -> None:
    conn = exdb.connect(server.node)
    conn.execute("CREATE TABLE r (x INTEGER)")
    conn.commit()
    conn.execute("INSERT INTO r VALUES (1)")
    conn.close()
    with exdb.connect(server.node) as other:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the server ends the session asynchronously
            try:
                count = other.execute("SELECT COUNT(*) FROM r").fetchone()
                break
            except exdb.OperationalError:
                time.sleep(0.05)
        assert count == (0,)


def test_context_manager_commits_or_rolls_back(server: ServerProcess) -> None:
    with exdb.connect(server.node) as conn:
        conn.execute("CREATE TABLE cm (x INTEGER)")
    with exdb.connect(server.node) as conn:
        conn.execute("INSERT INTO cm VALUES (1)")
    with pytest.raises(RuntimeError), exdb.connect(server.node) as conn:
        conn.execute("INSERT INTO cm VALUES (2)")
        raise RuntimeError("boom")
    with exdb.connect(server.node) as conn:
        assert conn.execute("SELECT x FROM cm").fetchall() == [(1,)]


_SIGNAL_TO_ANOTHER_THREAD = """
import signal, sys, threading
from exdb.server.app import ServerConfig, ShardServer
server = ShardServer(ServerConfig(port=0, quiet=True))
server.start()
# The kernel may hand SIGTERM to any thread of the process: here, to one that is not the main one.
threading.Timer(0.5, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGTERM)).start()
server.serve()
print("stopped", flush=True)
"""


def test_sigterm_delivered_to_another_thread_still_stops_the_server() -> None:
    # Before: the main thread sat in select() with no timeout, which a signal taken by the
    # watchdog's (or a session's) thread does not interrupt: `exdb serve` ignored SIGTERM.
    import subprocess
    import sys

    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _SIGNAL_TO_ANOTHER_THREAD],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "stopped" in done.stdout
    assert time.monotonic() - began < 30
