"""No hangs on the client: a connect that gets no answer, a node that stops answering (SIGSTOP of
a real server), a cancelled asyncio task and DistributedConnection.cancel() all end promptly with
an OperationalError naming the node, and leave the servers serving with their rows intact."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import exdb
from exdb.cluster import LocalCluster, ServerProcess

ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
# %# makes the statement run on every node of a distributed connection.
ENDLESS_EVERYWHERE = (
    "WITH RECURSIVE c(x) AS (SELECT %# UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
)
# A healthy statement of a few seconds (SQLite).
LONG = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n})"
    " SELECT count(*) FROM c"
)
FAST_LIVENESS = {"liveness_interval": 300, "liveness_timeout": 300}


@pytest.fixture
def silent_node() -> Iterator[str]:
    """A real listening socket that never accepts: the kernel completes the TCP handshake, and
    nothing ever answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def _seed(nodes: list[str] | str) -> None:
    target = {"host": nodes} if isinstance(nodes, str) else {"nodes": list(nodes)}
    with exdb.connect(**target) as conn:
        conn.execute("CREATE TABLE kept (k INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO kept VALUES (?, ?)", [(i, f"v{i}") for i in range(40)])


def _count(nodes: list[str] | str) -> int:
    target = {"host": nodes} if isinstance(nodes, str) else {"nodes": list(nodes)}
    with exdb.connect(**target) as conn:
        return int(conn.execute("SELECT count(*) FROM kept").fetchone()[0])


def _wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Wait until the kernel reports the process stopped (state T in /proc/PID/stat)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rpartition(")")[2].split()[0]
        if state in ("T", "t"):
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not stop within {timeout} s")


@contextlib.contextmanager
def stopped(server: ServerProcess) -> Iterator[None]:
    """SIGSTOP the server process for the block; SIGCONT it whatever happens."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        _wait_stopped(server.pid)  # the signal is delivered asynchronously
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


# --- connectTimeout covers the whole connect ------------------------------------------------


def test_connect_timeout_covers_the_handshake_sync(sqlite_node: str, silent_node: str) -> None:
    started = time.monotonic()
    with pytest.raises(exdb.OperationalError, match=r"connectTimeout \(400 ms\)") as info:
        exdb.connect(silent_node, connectTimeout=400)
    assert time.monotonic() - started < 5
    assert silent_node in str(info.value)
    # TLS: a peer that never answers the TLS handshake.
    started = time.monotonic()
    with pytest.raises(exdb.OperationalError, match="TLS handshake failed") as info:
        exdb.connect(silent_node, connectTimeout=400, ssl_params={"verify": False})
    assert time.monotonic() - started < 5
    assert silent_node in str(info.value)
    # The distributed door: one good node, one silent one.
    started = time.monotonic()
    with pytest.raises(exdb.OperationalError, match="connectTimeout") as info:
        exdb.connect(nodes=[sqlite_node, silent_node], connectTimeout=400)
    assert time.monotonic() - started < 5
    assert silent_node in str(info.value)
    with exdb.connect(sqlite_node) as conn:  # the good node serves on
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_connect_timeout_covers_the_handshake_asyncio(sqlite_node: str, silent_node: str) -> None:
    async def main() -> None:
        for target in ({"host": silent_node}, {"nodes": [sqlite_node, silent_node]}):
            started = time.monotonic()
            with pytest.raises(exdb.OperationalError, match=r"connectTimeout \(400 ms\)") as info:
                await exdb.connect_async(**target, connectTimeout=400)
            assert time.monotonic() - started < 5
            assert silent_node in str(info.value)

    asyncio.run(main())


# --- a node that stops answering --------------------------------------------------------------


def test_a_stopped_node_is_detected_sync(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--engine", "sqlite")
    _seed(server.node)
    conn = exdb.connect(server.node, **FAST_LIVENESS)
    try:
        with stopped(server):
            started = time.monotonic()
            with pytest.raises(exdb.OperationalError, match="stopped answering") as info:
                conn.execute("SELECT count(*) FROM kept")
            assert time.monotonic() - started < 5
            assert server.node in str(info.value)
            with pytest.raises(exdb.OperationalError):  # the connection is marked broken
                conn.execute("SELECT 1")
    finally:
        conn.close()
    assert _count(server.node) == 40  # once it runs again it serves, and lost nothing


def test_a_stopped_node_is_detected_asyncio(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--engine", "sqlite")
    _seed(server.node)

    async def main() -> None:
        conn = await exdb.connect_async(server.node, **FAST_LIVENESS)
        try:
            with stopped(server):
                started = time.monotonic()
                with pytest.raises(exdb.OperationalError, match="stopped answering") as info:
                    await conn.execute("SELECT count(*) FROM kept")
                assert time.monotonic() - started < 5
                assert server.node in str(info.value)
                with pytest.raises(exdb.OperationalError):
                    await conn.execute("SELECT 1")
        finally:
            await conn.close()

    asyncio.run(main())
    assert _count(server.node) == 40


def test_a_stopped_node_is_detected_distributed() -> None:
    with LocalCluster(2) as cluster:
        nodes = cluster.nodes
        _seed(nodes)
        victim = cluster.servers[1]
        conn = exdb.connect(nodes=nodes, **FAST_LIVENESS)
        try:
            with stopped(victim):
                started = time.monotonic()
                with pytest.raises(exdb.OperationalError, match="stopped answering") as info:
                    conn.execute("SELECT count(*) FROM kept")  # a scatter over both nodes
                assert time.monotonic() - started < 5
                assert victim.node in str(info.value)
                assert nodes[0] not in str(info.value)
        finally:
            conn.close()

        async def aio() -> None:
            conn = await exdb.connect_async(nodes=nodes, **FAST_LIVENESS)
            try:
                with stopped(victim):
                    started = time.monotonic()
                    with pytest.raises(exdb.OperationalError, match="stopped answering") as info:
                        await conn.execute("SELECT count(*) FROM kept")
                    assert time.monotonic() - started < 5
                    assert victim.node in str(info.value)
            finally:
                await conn.close()

        asyncio.run(aio())
        assert _count(nodes) == 40


def test_a_long_healthy_statement_is_not_failed(sqlite_node: str) -> None:
    with exdb.connect(sqlite_node, liveness_interval=500, liveness_timeout=500) as conn:
        assert conn.execute(LONG.format(n=3_000_000)).fetchone() == (3_000_000,)

    async def main() -> None:
        conn = await exdb.connect_async(sqlite_node, **FAST_LIVENESS)
        try:
            cur = await conn.execute(LONG.format(n=1_500_000))
            assert await cur.fetchall() == [(1_500_000,)]
        finally:
            await conn.close()

    asyncio.run(main())


# --- cancelling ---------------------------------------------------------------------------------


def test_a_cancelled_asyncio_task_cancels_its_statement(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--engine", "sqlite")
    _seed(server.node)

    async def main() -> None:
        conn = await exdb.connect_async(server.node, autocommit=True)
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.execute(ENDLESS), 0.5)
            started = time.monotonic()  # the same connection answers at once
            cur = await asyncio.wait_for(conn.execute("SELECT count(*) FROM kept"), 10)
            assert await cur.fetchall() == [(40,)]
            assert time.monotonic() - started < 3
            # task.cancel() of a cursor's statement: the cursor is usable again.
            cur = conn.cursor()
            task = asyncio.create_task(cur.execute(ENDLESS))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(exdb.ProgrammingError):
                await cur.fetchall()  # the abandoned result is gone, not silently short
            started = time.monotonic()
            await asyncio.wait_for(cur.execute("SELECT 'again'"), 10)
            assert await cur.fetchall() == [("again",)]
            assert time.monotonic() - started < 3
        finally:
            await conn.close()

    asyncio.run(main())
    assert _count(server.node) == 40


def test_a_cancelled_task_cancels_on_every_node_distributed_asyncio() -> None:
    with LocalCluster(2) as cluster:
        nodes = cluster.nodes
        _seed(nodes)

        async def main() -> None:
            conn = await exdb.connect_async(nodes=nodes, autocommit=True)
            try:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(conn.execute(ENDLESS_EVERYWHERE), 0.5)
                started = time.monotonic()
                cur = await asyncio.wait_for(conn.execute("SELECT count(*) FROM kept"), 10)
                assert await cur.fetchall() == [(40,)]
                assert time.monotonic() - started < 3
            finally:
                await conn.close()

        asyncio.run(main())
        assert _count(nodes) == 40


def test_distributed_cancel_from_another_thread() -> None:
    with LocalCluster(2) as cluster:
        nodes = cluster.nodes
        _seed(nodes)
        with exdb.connect(nodes=nodes) as conn:
            errors: list[BaseException] = []

            def run() -> None:
                try:
                    conn.execute(ENDLESS_EVERYWHERE)
                except BaseException as exc:
                    errors.append(exc)

            worker = threading.Thread(target=run)
            worker.start()
            deadline = time.monotonic() + 10
            while not all(c._waiting_for() for c in conn._conns):
                assert time.monotonic() < deadline, "the scatter never started"
                time.sleep(0.01)
            time.sleep(0.2)
            started = time.monotonic()
            conn.cancel()
            worker.join(15)
            assert not worker.is_alive(), "the cancelled statement kept running"
            assert time.monotonic() - started < 10
            assert len(errors) == 1 and isinstance(errors[0], exdb.OperationalError), errors
            assert "canceled" in str(errors[0])
            conn.rollback()
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (40,)
        assert _count(nodes) == 40
