"""Locks on real servers: lock_timeout and its error, deadlocks across nodes (one victim, one
commit), write-write conflicts, and transactions left idle; through the sync, asyncio and
worker doors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import exdb
from exdb.client.core import ClientCore
from exdb.cluster import LocalCluster
from exdb.distributed.deadlock import _ask, find_cycle
from exdb.errors import (
    DeadlockDetected,
    LockError,
    LockTimeout,
    OperationalError,
    TransactionConflict,
)
from exdb.server.locks import LockNotGranted, LockState, WriteLock

N_ROWS = 20


def _setup(nodes: tuple[str, ...]) -> tuple[int, int]:
    """An ``acct`` table of N_ROWS rows of 100; one id on the first node, one on the second."""
    with exdb.connect(nodes=nodes, autocommit=True) as setup:
        setup.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, v INTEGER)")
        setup.executemany("INSERT INTO acct VALUES (?, ?)", [(i, 100) for i in range(N_ROWS)])
    firsts = []
    for node in nodes[:2]:
        with exdb.connect(node, autocommit=True) as plain:
            firsts.append(plain.execute("SELECT MIN(id) FROM acct").fetchall()[0][0])
    return firsts[0], firsts[1]


def _total(nodes: tuple[str, ...]) -> Any:
    with exdb.connect(nodes=nodes, autocommit=True) as conn:
        return conn.execute("SELECT SUM(v) FROM acct").fetchall()[0][0]


def _open(conn: Any) -> list[bool]:
    return [bool(c.ping()["in_transaction"]) for c in conn._conns]


@pytest.fixture(scope="module")
def sqlite2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[tuple[str, ...], int, int]]:
    with LocalCluster(2, engine="sqlite", db_dir=str(tmp_path_factory.mktemp("locks"))) as cl:
        x, y = _setup(cl.nodes)
        yield cl.nodes, x, y


# --- lock_timeout ------------------------------------------------------------------------------


def test_lock_timeout_names_the_node_and_rolls_back_everywhere(
    sqlite2: tuple[tuple[str, ...], int, int],
) -> None:
    nodes, x, y = sqlite2
    holder = exdb.connect(nodes=nodes)
    waiter = exdb.connect(nodes=nodes, lock_timeout=200)
    try:
        # The waiter's transaction starts first: older, it waits (wait-die stops only a
        # younger one that holds locks on another node).
        waiter.execute("UPDATE acct SET v = v - 5 WHERE id = ?", (y,))  # node 2: fine
        holder.execute("UPDATE acct SET v = v + 1 WHERE id = ?", (x,))  # node 1's write lock
        with pytest.raises(LockTimeout) as info:
            waiter.execute("UPDATE acct SET v = v + 5 WHERE id = ?", (x,))
        error = info.value
        assert isinstance(error, OperationalError) and isinstance(error, LockError)
        assert error.node == nodes[0]
        assert "lock timeout" in str(error) and nodes[0] in str(error)
        assert "rolled back on every node" in str(error)
        assert _open(waiter) == [False, False]  # its write on node 2 was undone
        holder.commit()
        assert _total(nodes) == N_ROWS * 100 + 1
        # The connection goes on: the next transaction runs normally.
        waiter.execute("UPDATE acct SET v = v - 1 WHERE id = ?", (x,))
        waiter.commit()
        assert _total(nodes) == N_ROWS * 100
    finally:
        holder.close()
        waiter.close()


def test_lock_timeout_in_autocommit_is_the_statement_only(
    sqlite2: tuple[tuple[str, ...], int, int],
) -> None:
    nodes, x, _ = sqlite2
    holder = exdb.connect(nodes=nodes)
    other = exdb.connect(nodes[0], autocommit=True, lock_timeout=100)  # a plain connection
    try:
        holder.execute("UPDATE acct SET v = v WHERE id = ?", (x,))
        with pytest.raises(LockTimeout, match="lock timeout"):
            other.execute("UPDATE acct SET v = 0 WHERE id = ?", (x,))
        holder.rollback()
        assert other.execute("UPDATE acct SET v = v WHERE id = ?", (x,)).rowcount == 1
    finally:
        holder.close()
        other.close()


def test_server_lock_timeout_option(tmp_path: Path) -> None:
    with LocalCluster(1, extra_args=["--lock-timeout", "0.2"]) as cluster:
        node = cluster.nodes[0]
        a = exdb.connect(node)
        b = exdb.connect(node)
        try:
            a.execute("CREATE TABLE t (x INTEGER)")
            with pytest.raises(LockTimeout, match="lock_timeout 200 ms"):
                b.execute("INSERT INTO t VALUES (1)")
        finally:
            a.close()
            b.close()


def test_bad_lock_timeout_is_refused() -> None:
    with pytest.raises(exdb.ProgrammingError, match="lock_timeout"):
        exdb.connect(nodes=["127.0.0.1:1"], lock_timeout=-1)


# --- deadlocks across nodes --------------------------------------------------------------------


def _transfer_pair(nodes: tuple[str, ...], x: int, y: int, **options: Any) -> dict[str, Any]:
    """Two clients in threads: A updates x then y, B updates y then x, each waiting for the
    other's first update before its second: a cycle through both nodes unless one stops. The
    victim then retries its transfer on the same connection (its age kept) until it commits."""
    both_hold = threading.Barrier(2, timeout=30)
    outcomes: dict[str, Any] = {}

    def client(name: str, first: int, second: int) -> None:
        # lock_timeout far beyond the test's patience: only prevention or detection ends it
        conn = exdb.connect(nodes=nodes, lock_timeout=60000, **options)
        try:
            conn.execute("UPDATE acct SET v = v - 1 WHERE id = ?", (first,))
            both_hold.wait()
            conn.execute("UPDATE acct SET v = v + 1 WHERE id = ?", (second,))
            conn.commit()
            outcomes[name] = "committed"
        except DeadlockDetected as exc:
            outcomes[name] = exc
            outcomes[name + "_open"] = _open(conn)
            for _ in range(20):  # the retry: bounded, as a client's should be
                try:
                    conn.execute("UPDATE acct SET v = v - 1 WHERE id = ?", (first,))
                    conn.execute("UPDATE acct SET v = v + 1 WHERE id = ?", (second,))
                    conn.commit()
                    outcomes[name + "_retry"] = "committed"
                    break
                except DeadlockDetected:
                    conn.rollback()
        finally:
            conn.close()

    threads = [
        threading.Thread(target=client, args=("A", x, y)),
        threading.Thread(target=client, args=("B", y, x)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)  # bounded: far below the 60 s lock timeout
    assert not any(t.is_alive() for t in threads), "the deadlock was not resolved"
    return outcomes


def _one_victim(nodes: tuple[str, ...], outcomes: dict[str, Any]) -> DeadlockDetected:
    """One of the pair committed; the other lost, was rolled back everywhere, and its retry
    committed; the victim's error."""
    results = [outcomes["A"], outcomes["B"]]
    assert results.count("committed") == 1
    victim = next(r for r in results if isinstance(r, DeadlockDetected))
    assert isinstance(victim, LockError) and isinstance(victim, OperationalError)
    text = str(victim)
    assert nodes[0] in text and nodes[1] in text
    assert "rolled back on every node" in text
    name = "A" if outcomes["A"] is victim else "B"
    assert outcomes[name + "_open"] == [False, False]
    assert outcomes[name + "_retry"] == "committed"
    return victim


def test_opposite_order_pair_is_prevented_at_once(
    sqlite2: tuple[tuple[str, ...], int, int],
) -> None:
    nodes, x, y = sqlite2
    before = _total(nodes)
    # deadlock_timeout=0: no detector at all. Only wait-die on the nodes can end this cycle
    # (else both would wait out the 60 s lock timeout, past the test's bounded joins).
    outcomes = _transfer_pair(nodes, x, y, deadlock_timeout=0)
    victim = _one_victim(nodes, outcomes)
    assert "deadlock prevented (wait-die)" in str(victim)
    assert victim.node in nodes
    assert _total(nodes) == before  # two transfers of 1, each way: the sum is unchanged


def test_detector_is_the_backstop(
    sqlite2: tuple[tuple[str, ...], int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that never says its transaction holds locks elsewhere (one older than
    wait-die, say): the node cannot prevent the cycle, and the detector breaks it."""
    nodes, x, y = sqlite2
    plain_txn_id = ClientCore.txn_id

    def without_flag(self: ClientCore, gid: str, elsewhere: bool = False) -> None:
        plain_txn_id(self, gid)

    monkeypatch.setattr(ClientCore, "txn_id", without_flag)
    before = _total(nodes)
    victim = _one_victim(nodes, _transfer_pair(nodes, x, y))
    assert "deadlock detected" in str(victim)
    assert _total(nodes) == before


def test_write_on_both_nodes_at_once_counts_as_elsewhere(
    sqlite2: tuple[tuple[str, ...], int, int],
) -> None:
    """A statement that writes on both nodes at once (one batch) may be granted one node's
    lock while it waits for the other's: each of its calls says so, and wait-die stops it
    when an older transaction holds a lock it needs (no detector here to save a cycle)."""
    nodes, x, y = sqlite2
    older = exdb.connect(nodes=nodes, lock_timeout=60000, deadlock_timeout=0)
    younger = exdb.connect(nodes=nodes, lock_timeout=60000, deadlock_timeout=0)
    outcome: list[Any] = []
    try:
        before = _total(nodes)
        older.execute("UPDATE acct SET v = v - 1 WHERE id = ?", (x,))  # node 1's lock

        def everywhere() -> None:
            try:
                younger.execute("UPDATE acct SET v = v + 0")  # both nodes, one batch
                outcome.append("updated")
            except DeadlockDetected as exc:
                outcome.append(exc)

        thread = threading.Thread(target=everywhere)
        thread.start()
        thread.join(30)
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], DeadlockDetected)
        assert "wait-die" in str(outcome[0])
        assert _open(younger) == [False, False]
        # Node 2 is free again: the older transaction finishes its transfer.
        older.execute("UPDATE acct SET v = v + 1 WHERE id = ?", (y,))
        older.commit()
        assert _total(nodes) == before
    finally:
        older.close()
        younger.close()


def test_single_node_contention_waits(sqlite2: tuple[tuple[str, ...], int, int]) -> None:
    """Transactions that write on one node only never stop each other: a younger one waits
    for the older one's commit, whatever their ages (it holds nothing elsewhere)."""
    nodes, x, _ = sqlite2
    older = exdb.connect(nodes=nodes)
    younger = exdb.connect(nodes=nodes, lock_timeout=60000)
    outcome: list[Any] = []
    try:
        older.execute("UPDATE acct SET v = v + 1 WHERE id = ?", (x,))
        before = _total(nodes)

        def write() -> None:
            try:
                younger.execute("UPDATE acct SET v = v - 1 WHERE id = ?", (x,))
                younger.commit()
                outcome.append("committed")
            except Exception as exc:
                outcome.append(exc)

        thread = threading.Thread(target=write)
        thread.start()
        waits: list[Any] = []
        for _ in range(300):  # until the node shows the younger one waiting (bounded)
            waits = _ask(older._conns[0], {}).get("waits") or []
            if waits or not thread.is_alive():
                break
            threading.Event().wait(0.02)
        assert waits, f"the younger transaction did not wait: {outcome}"
        older.commit()
        thread.join(30)
        assert not thread.is_alive()
        assert outcome == ["committed"]
        assert _total(nodes) == before  # +1 (committed first) then -1
    finally:
        older.close()
        younger.close()


def test_asyncio_deadlock_and_lock_timeout(sqlite2: tuple[tuple[str, ...], int, int]) -> None:
    nodes, x, y = sqlite2

    async def main() -> None:
        # No detector (deadlock_timeout=0): wait-die alone must end the cycle.
        a = await exdb.connect_async(nodes=nodes, lock_timeout=60000, deadlock_timeout=0)
        b = await exdb.connect_async(nodes=nodes, lock_timeout=60000, deadlock_timeout=0)
        try:
            await a.execute("UPDATE acct SET v = v - 1 WHERE id = ?", (x,))
            await b.execute("UPDATE acct SET v = v - 1 WHERE id = ?", (y,))

            async def second(conn: Any, row: int) -> str:
                try:
                    await conn.execute("UPDATE acct SET v = v + 1 WHERE id = ?", (row,))
                    await conn.commit()
                    return "committed"
                except DeadlockDetected as exc:
                    assert "rolled back on every node" in str(exc)
                    assert "wait-die" in str(exc)
                    return "victim"

            got = await asyncio.wait_for(asyncio.gather(second(a, y), second(b, x)), 30)
            assert got == ["committed", "victim"]  # b, younger, stopped at once (wait-die)
            # A lock timeout on the asyncio door: same class, same rollback.
            short = await exdb.connect_async(nodes=nodes, lock_timeout=150)
            try:
                await short.execute("UPDATE acct SET v = v WHERE id = ?", (y,))  # older
                await a.execute("UPDATE acct SET v = v WHERE id = ?", (x,))
                with pytest.raises(LockTimeout, match="lock timeout"):
                    await short.execute("UPDATE acct SET v = v WHERE id = ?", (x,))
                states = [await c.ping() for c in short._conns]
                assert [s["in_transaction"] for s in states] == [False, False]
                await a.rollback()
            finally:
                await short.close()
        finally:
            await a.close()
            await b.close()

    before = _total(nodes)
    asyncio.run(main())
    assert _total(nodes) == before


def test_worker_door_reports_lock_timeout(sqlite2: tuple[tuple[str, ...], int, int]) -> None:
    nodes, x, _ = sqlite2
    holder = exdb.connect(nodes=nodes)
    workers = exdb.connect(nodes=nodes, nWorkers=1, lock_timeout=150, **{"async": True})
    try:
        holder.execute("UPDATE acct SET v = v WHERE id = ?", (x,))
        with pytest.raises(LockTimeout, match="lock timeout") as info:
            workers.execute("UPDATE acct SET v = v + 1 WHERE id = ?", (x,))
        assert isinstance(info.value, OperationalError)
        holder.rollback()
        assert workers.execute("UPDATE acct SET v = v WHERE id = ?", (x,)) == 1
    finally:
        holder.close()
        workers.close()


def test_find_cycle() -> None:
    edges = [("a", "b", "n1", 1), ("b", "c", "n2", 2), ("c", "a", "n1", 3), ("d", "a", "n2", 4)]
    assert find_cycle(edges, "a") == edges[:3]
    assert find_cycle(edges, "d") is None
    assert find_cycle(edges[:2], "a") is None


def _state(gid: str | None, elsewhere: bool = False) -> LockState:
    state = LockState(30.0)
    state.gid, state.elsewhere = gid, elsewhere
    return state


def test_write_queue_wait_die_and_order() -> None:
    """The node's write queue alone: a waiter that may hold locks elsewhere goes ahead of
    those that hold nothing, and dies at once if an older one holds or is ahead of it; one
    that holds nothing elsewhere waits whatever its age; outside a transaction nobody dies."""
    lock = WriteLock()
    holder = _state("0002")
    lock.acquire(holder, lambda: False)
    plain, flagged = _state("0009"), _state("0001", elsewhere=True)
    granted: list[str] = []

    def take(name: str, state: LockState) -> None:
        lock.acquire(state, lambda: False, prevent=True)
        granted.append(name)
        lock.release(state)

    threads = [threading.Thread(target=take, args=("plain", plain))]
    threads[0].start()
    for _ in range(500):  # bounded: until the plain one is in line
        if plain in lock.queue:
            break
        threading.Event().wait(0.01)
    threads.append(threading.Thread(target=take, args=("flagged", flagged)))
    threads[1].start()
    for _ in range(500):
        if flagged in lock.queue:
            break
        threading.Event().wait(0.01)
    assert lock.queue == [flagged, plain]  # the older, flagged one went ahead
    younger = _state("0003", elsewhere=True)
    with pytest.raises(LockNotGranted):
        lock.acquire(younger, lambda: False, prevent=True)  # older ones hold and wait
    assert younger.ended == "deadlock" and "wait-die" in younger.aborted
    assert younger not in lock.queue
    lock.release(holder)
    for t in threads:
        t.join(10)
    assert granted == ["flagged", "plain"]
    assert lock.holder is None and not lock.queue


# --- conflicts ---------------------------------------------------------------------------------


def test_duckdb_write_conflict_is_a_transaction_conflict(tmp_path: Path) -> None:
    with LocalCluster(2, engine="duckdb", db_dir=str(tmp_path)) as cluster:
        x, y = _setup(cluster.nodes)
        a = exdb.connect(nodes=cluster.nodes)
        b = exdb.connect(nodes=cluster.nodes)
        try:
            a.execute("UPDATE acct SET v = v + 1 WHERE id = ?", (x,))
            b.execute("UPDATE acct SET v = v - 1 WHERE id = ?", (y,))
            with pytest.raises(TransactionConflict) as info:
                b.execute("UPDATE acct SET v = v + 1 WHERE id = ?", (x,))
            assert "serialization failure" in str(info.value)
            assert info.value.node == cluster.nodes[0]
            assert "rolled back on every node" in str(info.value)
            assert _open(b) == [False, False]
            a.commit()
            assert _total(cluster.nodes) == N_ROWS * 100 + 1
        finally:
            a.close()
            b.close()


def test_sqlite_read_then_write_conflict(sqlite2: tuple[tuple[str, ...], int, int]) -> None:
    nodes, x, _ = sqlite2
    node = nodes[0]
    reader = exdb.connect(node)
    writer = exdb.connect(node, autocommit=True)
    try:
        reader.execute("SELECT v FROM acct WHERE id = ?", (x,)).fetchall()  # a snapshot
        writer.execute("UPDATE acct SET v = v + 1 WHERE id = ?", (x,))  # commits after it
        with pytest.raises(TransactionConflict, match="serialization failure"):
            reader.execute("UPDATE acct SET v = v + 1 WHERE id = ?", (x,))
        reader.rollback()
        writer.execute("UPDATE acct SET v = v - 1 WHERE id = ?", (x,))
    finally:
        reader.close()
        writer.close()


# --- idle in transaction -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["server", "session"])
def test_idle_transaction_is_rolled_back_and_frees_the_lock(how: str) -> None:
    extra = ["--idle-in-transaction-timeout", "0.3"] if how == "server" else []
    options = {} if how == "server" else {"idle_in_transaction_timeout": 300}
    with LocalCluster(1, extra_args=extra) as cluster:
        node = cluster.nodes[0]
        with exdb.connect(node, autocommit=True) as setup:
            setup.execute("CREATE TABLE t (x INTEGER)")
        idle = exdb.connect(node, **options)
        other = exdb.connect(node, autocommit=True, lock_timeout=20000)
        try:
            idle.execute("INSERT INTO t VALUES (1)")  # holds the write lock, then sits idle
            # Another client's write waits for the lock, and gets it once the idle
            # transaction is rolled back (well before its own 20 s lock timeout).
            assert other.execute("INSERT INTO t VALUES (2)").rowcount == 1
            with pytest.raises(OperationalError, match="idle-in-transaction timeout"):
                idle.execute("SELECT COUNT(*) FROM t")
            with pytest.raises(OperationalError, match="roll back to go on"):
                idle.execute("INSERT INTO t VALUES (3)")
            idle.rollback()
            assert idle.execute("SELECT x FROM t").fetchall() == [(2,)]
            idle.rollback()
        finally:
            idle.close()
            other.close()


def test_idle_transaction_commit_says_nothing_was_committed() -> None:
    with LocalCluster(1, extra_args=["--idle-in-transaction-timeout", "0.2"]) as cluster:
        node = cluster.nodes[0]
        conn = exdb.connect(node)
        other = exdb.connect(node, autocommit=True, lock_timeout=20000)
        try:
            other.execute("CREATE TABLE t (x INTEGER)")
            conn.execute("INSERT INTO t VALUES (1)")
            # Waits for the write lock until the idle transaction is rolled back.
            assert other.execute("INSERT INTO t VALUES (2)").rowcount == 1
            with pytest.raises(OperationalError, match="nothing of it was committed"):
                conn.commit()
            assert conn.execute("SELECT x FROM t").fetchall() == [(2,)]  # the session goes on
            conn.rollback()
        finally:
            conn.close()
            other.close()
