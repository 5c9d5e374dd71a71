"""Statement limits on real servers: a statement past its statement timeout is interrupted, and
so is the statement of a client that was killed; the server goes on serving the others and keeps
every committed row."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest

import exdb
from exdb.cluster import LocalCluster, ServerProcess
from exdb.server.app import ServerConfig, ShardServer

# Statements that never end (SQLite) or run for far longer than any test waits (DuckDB).
ENDLESS = {
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
    " SELECT count(*) FROM c",
    "duckdb": "SELECT count(*) FROM range(10000000000) a",
}
# About a second of work for SQLite, on a quiet machine.
BOUNDED = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1500000)"
    " SELECT count(*) FROM c"
)
TIMEOUT_MESSAGE = r"canceling statement due to statement timeout \((\d+) ms\)"


def _seed(node: str) -> None:
    with exdb.connect(node) as conn:
        conn.execute("CREATE TABLE kept (k INTEGER, v TEXT)")
        conn.executemany("INSERT INTO kept VALUES (?, ?)", [(i, f"v{i}") for i in range(50)])


def _kept(node: str) -> list[tuple[int, int]]:
    with exdb.connect(node) as conn:
        return conn.execute("SELECT count(*), sum(k) FROM kept").fetchall()  # type: ignore[no-any-return]


def test_server_statement_timeout_interrupts_and_the_session_goes_on(
    start_server: Callable[..., ServerProcess], engine: str
) -> None:
    server = start_server("--engine", engine, "--statement-timeout", "0.4")
    _seed(server.node)
    with exdb.connect(server.node) as conn:
        started = time.monotonic()
        with pytest.raises(exdb.OperationalError, match=TIMEOUT_MESSAGE) as info:
            conn.execute(ENDLESS[engine])
        assert time.monotonic() - started < 10
        assert "(400 ms)" in str(info.value)
        assert server.node in str(info.value)  # the error names the node
        conn.rollback()
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)  # the same session goes on
    with exdb.connect(server.node) as other:  # and the server serves others
        assert other.execute("SELECT 'still here'").fetchone() == ("still here",)
    assert _kept(server.node) == [(50, sum(range(50)))]


def test_session_statement_timeout_overrides_the_server_default(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--engine", "sqlite", "--statement-timeout", "0.2")
    with (
        exdb.connect(server.node, autocommit=True) as strict,
        pytest.raises(exdb.OperationalError, match=r"statement timeout \(200 ms\)"),
    ):
        strict.execute(BOUNDED)
    # A session may ask for no limit (0) or a longer one, as in PostgreSQL.
    for own in (0, 60_000):
        with exdb.connect(server.node, autocommit=True, statement_timeout=own) as relaxed:
            assert relaxed.execute(BOUNDED).fetchone() == (1500000,)
    # ... or a shorter one on a server without a default.
    plain = start_server("--engine", "sqlite")
    with exdb.connect(plain.node, statementTimeout=150) as short:
        with pytest.raises(exdb.OperationalError, match=r"statement timeout \(150 ms\)"):
            short.execute(ENDLESS["sqlite"])
        assert short.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("bad", [-1, "300", True, [1]])
def test_a_bad_statement_timeout_is_refused(sqlite_node: str, bad: object) -> None:
    with pytest.raises(exdb.ProgrammingError, match="statement_timeout"):
        exdb.connect(sqlite_node, statement_timeout=bad)


def test_a_timed_out_statement_in_a_transaction_leaves_what_the_engine_leaves(
    start_server: Callable[..., ServerProcess], engine: str
) -> None:
    """SQLite: a timed-out read leaves the transaction open with its writes; DuckDB aborts the
    transaction: every statement fails until ROLLBACK. Nothing committed is lost either way."""
    server = start_server("--engine", engine)
    _seed(server.node)
    with exdb.connect(server.node, statement_timeout=300) as conn:
        conn.execute("INSERT INTO kept VALUES (100, 'in the transaction')")
        with pytest.raises(exdb.OperationalError, match=TIMEOUT_MESSAGE):
            conn.execute(ENDLESS[engine])
        if engine == "sqlite":
            assert conn.ping()["in_transaction"] is True
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (51,)
            conn.commit()
            expected = [(51, sum(range(50)) + 100)]
        else:
            with pytest.raises(exdb.OperationalError, match=r"(?i)abort"):
                conn.execute("SELECT count(*) FROM kept")
            conn.rollback()
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (50,)
            expected = [(50, sum(range(50)))]
    assert _kept(server.node) == expected


def test_statement_timeout_on_the_asyncio_door(sqlite_node: str) -> None:
    async def main() -> None:
        conn = await exdb.connect_async(sqlite_node, statement_timeout=250, autocommit=True)
        try:
            with pytest.raises(exdb.OperationalError, match=r"statement timeout \(250 ms\)"):
                await conn.execute(ENDLESS["sqlite"])
            cur = await conn.execute("SELECT 7")
            assert await cur.fetchall() == [(7,)]
        finally:
            await conn.close()

    asyncio.run(main())


def test_statement_timeout_on_the_distributed_doors() -> None:
    # %# makes the statement run on every node: a scatter that never ends.
    endless_everywhere = (
        "WITH RECURSIVE c(x) AS (SELECT %# UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    )
    with LocalCluster(2) as cluster:
        nodes = cluster.nodes
        with exdb.connect(nodes=nodes, statement_timeout=300, autocommit=True) as conn:
            conn.execute("CREATE TABLE d (k INTEGER PRIMARY KEY, v TEXT)")
            conn.executemany("INSERT INTO d VALUES (?, ?)", [(i, str(i)) for i in range(20)])
            with pytest.raises(exdb.OperationalError, match=r"statement timeout \(300 ms\)"):
                conn.execute(endless_everywhere)
            assert conn.execute("SELECT count(*) FROM d").fetchone() == (20,)

        async def aio() -> None:
            conn = await exdb.connect_async(nodes=nodes, statement_timeout=300, autocommit=True)
            try:
                with pytest.raises(exdb.OperationalError, match=r"statement timeout \(300 ms\)"):
                    await conn.execute(endless_everywhere)
                cur = await conn.execute("SELECT count(*) FROM d")
                assert await cur.fetchall() == [(20,)]
            finally:
                await conn.close()

        asyncio.run(aio())

        workers = exdb.connect(nodes=nodes, **{"async": True}, nWorkers=2, statement_timeout=300)
        try:
            outcomes = workers.execute(
                [ENDLESS["sqlite"], "SELECT count(*) FROM d"], return_exceptions=True
            )
            assert isinstance(outcomes[0], exdb.OperationalError), outcomes
            assert "statement timeout (300 ms)" in str(outcomes[0])
            assert outcomes[1] == [(20,)]
        finally:
            workers.close()


def _cpu_ticks(pid: int) -> int:
    """User + system clock ticks the process has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _cpu_share(pid: int, seconds: float) -> float:
    """The share of one core the process used over ``seconds``."""
    hz = os.sysconf("SC_CLK_TCK")
    before = _cpu_ticks(pid)
    time.sleep(seconds)
    return (_cpu_ticks(pid) - before) / hz / seconds


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_statement_of_a_killed_client_is_interrupted(
    start_server: Callable[..., ServerProcess], engine: str
) -> None:
    server = start_server("--engine", engine, "--threads", "1") if engine == "duckdb" else None
    server = server or start_server("--engine", engine)
    assert server.pid is not None
    _seed(server.node)
    client = textwrap.dedent(
        f"""
        import sys, exdb
        conn = exdb.connect({server.node!r})
        print("running", flush=True)
        conn.execute({ENDLESS[engine]!r})
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", client], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "running"
        # The runaway statement burns a core on the server ...
        deadline = time.monotonic() + 10
        while _cpu_share(server.pid, 0.3) < 0.5:
            assert time.monotonic() < deadline, "the client's statement never started"
        proc.kill()  # kill -9: no BYE, no cancel; the kernel closes its socket
        proc.wait(10)
        # ... and stops within a few seconds of the client's death.
        deadline = time.monotonic() + 10
        while (share := _cpu_share(server.pid, 0.5)) > 0.3:
            assert time.monotonic() < deadline, f"the server still burns {share:.0%} of a core"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert _kept(server.node) == [(50, sum(range(50)))]  # it serves others, rows intact


def test_the_watchdog_sleeps_while_nothing_runs() -> None:
    """No thread wakes up on an idle server; the first request wakes the watchdog, which then
    times statements out as usual."""
    shard = ShardServer(ServerConfig(port=0, quiet=True, statement_timeout=0.3))
    port = shard.start()
    serving = threading.Thread(target=shard.serve)
    serving.start()
    try:
        with exdb.connect("127.0.0.1", port, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            deadline = time.monotonic() + 10
            while not shard.watchdog.idle:  # a second after the last request, it sleeps
                assert time.monotonic() < deadline, "the watchdog never went to sleep"
                time.sleep(0.05)
            with pytest.raises(exdb.OperationalError, match=r"statement timeout \(300 ms\)"):
                conn.execute(ENDLESS["sqlite"])
            assert not shard.watchdog.idle
    finally:
        shard.stop()
        serving.join(10)
    assert not serving.is_alive()


def test_a_lock_wait_ends_at_the_statement_timeout_and_at_a_cancel(
    start_server: Callable[..., ServerProcess],
) -> None:
    # SQLite's own busy wait does not look at interrupts: a write stuck behind another session's
    # write lock ran the whole 10 s busy timeout past a 1 s statement timeout.
    server = start_server("--engine", "sqlite", "--statement-timeout", "1")
    with exdb.connect(server.node, autocommit=True) as setup:
        setup.execute("CREATE TABLE locked (k INTEGER PRIMARY KEY)")
    holder = exdb.connect(server.node)
    waiter = exdb.connect(server.node)
    try:
        holder.execute("INSERT INTO locked VALUES (1)")  # holds the write lock, uncommitted
        began = time.monotonic()
        with pytest.raises(exdb.OperationalError, match="statement timeout") as caught:
            waiter.execute("INSERT INTO locked VALUES (2)")
        assert time.monotonic() - began < 5.0
        assert caught.value.node == server.node
        waiter.rollback()

        # A cancel from another thread ends the wait too (no statement timeout for this one).
        patient = exdb.connect(server.node, statement_timeout=0)
        try:
            timer = threading.Timer(0.5, patient.cancel)
            timer.start()
            began = time.monotonic()
            with pytest.raises(exdb.OperationalError, match="cancel"):
                patient.execute("INSERT INTO locked VALUES (3)")
            assert time.monotonic() - began < 5.0
            timer.join()
            patient.rollback()
        finally:
            patient.close()
        holder.commit()
        assert waiter.execute("SELECT k FROM locked").fetchall() == [(1,)]
    finally:
        holder.close()
        waiter.close()
