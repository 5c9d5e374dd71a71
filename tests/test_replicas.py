"""Replicas (``connect(nodes=..., nReplicas=2)``) on real nodes: 2 shards x 2 replicas, both
engines. Layout, writes on every replica, reads spread, kill -9 under load, SIGSTOP, restart
and catch-up, a second client that never saw the failure, a whole shard down; the sync,
asyncio and worker doors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import exdb
from exdb.cluster import ServerProcess
from exdb.distributed.replicas import Layout, is_read
from exdb.errors import TransactionConflict

N = 2  # replicas per shard
SHARDS = 2
#: A stopped node is found within about 3 seconds; a node busy with a statement (or waiting on
#: a lock) answers the probe and is left alone, as readTimeout would not.
LIVENESS = {"liveness_interval": 1000, "liveness_timeout": 2000}


class Replicated:
    """2 shards x 2 replicas of durable nodes; a node can be killed and restarted on its port
    with the same database file."""

    def __init__(self, engine: str, tmp: Path) -> None:
        self.engine = engine
        self.tmp = tmp
        self.servers: list[ServerProcess] = []
        for i in range(SHARDS * N):
            self.servers.append(self._server(i, 0).start())
        self.nodes = [s.node for s in self.servers]

    def _server(self, i: int, port: int) -> ServerProcess:
        db = self.tmp / f"node{i}.{self.engine}"
        args = ["--host", "127.0.0.1", "--port", str(port), "--engine", self.engine]
        return ServerProcess([*args, "--db", str(db), "--quiet"])

    def kill(self, i: int) -> None:
        self.servers[i].kill()

    def restart(self, i: int) -> None:
        port = self.servers[i].port
        self.servers[i] = self._server(i, port).start()

    def stop(self) -> None:
        for s in self.servers:
            proc = s.proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
            s.stop()


@pytest.fixture
def cluster(engine: str, tmp_path: Path) -> Iterator[Replicated]:
    c = Replicated(engine, tmp_path)
    try:
        yield c
    finally:
        c.stop()


def connect(c: Replicated, **options: object) -> exdb.DistributedConnection:
    return exdb.connect(nodes=c.nodes, nReplicas=N, autocommit=True, **options)


def on_node(node: str, sql: str) -> list[tuple[object, ...]]:
    with exdb.connect(node, autocommit=True) as one:
        return one.execute(sql).fetchall()


def test_layout_refuses_bad_counts() -> None:
    layout = Layout(("a:1", "a:2", "a:3", "a:4", "a:5", "a:6"), 3)
    assert layout.shards == 2
    assert list(layout.of_shard(1)) == [3, 4, 5]
    assert layout.shard_of(4) == 1 and layout.position(4) == 1
    with pytest.raises(exdb.ProgrammingError, match="multiple of 2"):
        Layout(("a:1", "a:2", "a:3"), 2)
    with pytest.raises(exdb.ProgrammingError, match="positive integer"):
        exdb.connect(nodes=["a:1"], nReplicas=-1)
    with pytest.raises(exdb.ProgrammingError, match="nodes="):
        exdb.connect("127.0.0.1:1", nReplicas=2)
    assert is_read("SELECT 1") and is_read("  /* c */ (SELECT 1) UNION SELECT 2")
    assert not is_read("INSERT INTO t VALUES (1)") and not is_read("CREATE TABLE x (a INT)")
    assert not is_read("SET threads = 1") and not is_read("WITH a AS (SELECT 1) DELETE FROM t")


def test_bad_node_count_refused_on_real_nodes(cluster: Replicated) -> None:
    with pytest.raises(exdb.ProgrammingError, match="multiple of 2"):
        exdb.connect(nodes=cluster.nodes[:3], nReplicas=2)


def test_writes_reach_every_replica_and_reads_spread(cluster: Replicated) -> None:
    with connect(cluster) as conn:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v VARCHAR)")
        conn.execute("CREATE TABLE r (k INTEGER PRIMARY KEY, name VARCHAR)")
        conn.execute("SELECT create_reference_table('r')")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(200)])
        conn.execute("INSERT INTO r VALUES (1, 'one')")
        conn.execute("UPDATE t SET v = 'u' WHERE k % 3 = 0")
        assert conn.engine.shards == SHARDS
        picks: list[int] = []
        assert conn._replicas is not None
        real_pick = conn._replicas._pick

        def pick(shard: int, exclude: set[int]) -> int | None:
            node = real_pick(shard, exclude)
            if node is not None:
                picks.append(node)
            return node

        conn._replicas._pick = pick  # type: ignore[method-assign]
        for _ in range(8):
            assert conn.execute("SELECT count(*), sum(k) FROM t").fetchall() == [(200, 19900)]
        assert set(picks) == {0, 1, 2, 3}  # every replica served reads
    per_node = [on_node(n, "SELECT k, v FROM t ORDER BY k") for n in cluster.nodes]
    assert per_node[0] == per_node[1] and per_node[2] == per_node[3]
    assert len(per_node[0]) + len(per_node[2]) == 200
    catalogs = [on_node(n, "SELECT * FROM exdb_catalog ORDER BY name") for n in cluster.nodes]
    assert all(c == catalogs[0] for c in catalogs) and len(catalogs[0]) == 2
    assert {on_node(n, "SELECT name FROM r")[0][0] for n in cluster.nodes} == {"one"}


def test_volatile_writes_refused(cluster: Replicated) -> None:
    with connect(cluster) as conn:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v DOUBLE)")
        with pytest.raises(exdb.NotSupportedError, match="random"):
            conn.execute("INSERT INTO t VALUES (1, random())")
        conn.execute("INSERT INTO t VALUES (1, ?)", (0.5,))
        assert conn.execute("SELECT v FROM t").fetchall() == [(0.5,)]


def _load(
    cluster: Replicated, stop: threading.Event, acked: set[int], failures: list[BaseException]
) -> list[threading.Thread]:
    """Two writer threads (each its own connection, keys of its own) and two reader threads."""

    def writer(base: int) -> None:
        try:
            conn = connect(cluster, **LIVENESS)
        except BaseException as exc:
            failures.append(exc)
            return
        with conn:
            k = base
            while not stop.is_set():
                try:
                    conn.execute("INSERT INTO t VALUES (?, ?)", (k, f"w{k}"))
                except BaseException as exc:
                    failures.append(exc)
                    return
                acked.add(k)
                k += 1

    def reader() -> None:
        try:
            conn = connect(cluster, **LIVENESS)
        except BaseException as exc:
            failures.append(exc)
            return
        with conn:
            while not stop.is_set():
                floor = len(acked)
                try:
                    (count,) = conn.execute("SELECT count(*) FROM t").fetchone() or (0,)
                except BaseException as exc:
                    failures.append(exc)
                    return
                if count < floor:  # rows acknowledged before the read began are missing
                    failures.append(AssertionError(f"read {count} rows, {floor} acknowledged"))

    threads = [threading.Thread(target=writer, args=(b,)) for b in (0, 1_000_000)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    return threads


def _wait_rows(acked: set[int], more: int, failures: list[BaseException]) -> None:
    target = len(acked) + more
    deadline = time.monotonic() + 60
    while len(acked) < target and not failures and time.monotonic() < deadline:
        time.sleep(0.05)


def test_kill_one_replica_of_each_shard_under_load(cluster: Replicated) -> None:
    with connect(cluster) as conn:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v VARCHAR)")
    stop = threading.Event()
    acked: set[int] = set()
    failures: list[BaseException] = []
    threads = _load(cluster, stop, acked, failures)
    try:
        _wait_rows(acked, 50, failures)
        cluster.kill(1)
        cluster.kill(2)
        _wait_rows(acked, 100, failures)
        cluster.restart(1)
        cluster.restart(2)
        _wait_rows(acked, 100, failures)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:3]
    # A client that never saw the failure: it joins the restarted nodes, catching them up.
    with connect(cluster) as fresh:
        rows = fresh.execute("SELECT k FROM t").fetchall()
        assert {k for (k,) in rows} >= acked
        assert fresh._replicas is not None and not fresh._replicas.stale
    # Every replica holds its shard whole: the restarted ones were copied.
    per_node = [on_node(n, "SELECT k, v FROM t ORDER BY k") for n in cluster.nodes]
    assert per_node[0] == per_node[1] and per_node[2] == per_node[3]
    assert {r[0] for r in per_node[0] + per_node[2]} >= acked


def test_restarted_replica_is_not_read_before_catch_up(cluster: Replicated) -> None:
    """A client that saw nothing reads only rows with every acknowledged write, while the
    restarted replica (its old database file) is behind."""
    with connect(cluster) as writer, connect(cluster) as bystander:
        writer.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v VARCHAR)")
        writer.executemany("INSERT INTO t VALUES (?, ?)", [(i, "a") for i in range(20)])
        assert bystander.execute("SELECT count(*) FROM t").fetchall() == [(20,)]
        cluster.kill(0)
        writer.execute("UPDATE t SET v = 'b'")  # replica 0 misses it
        writer.executemany("INSERT INTO t VALUES (?, ?)", [(i, "b") for i in range(20, 40)])
        cluster.restart(0)  # back, with its old file: stale
        for _ in range(10):
            got = bystander.execute("SELECT count(*), min(v) FROM t").fetchall()
            assert got == [(40, "b")]
        time.sleep(1.1)  # the bystander's retry time for the lost node comes
        for _ in range(4):
            assert bystander.execute("SELECT count(*), min(v) FROM t").fetchall() == [(40, "b")]
    # The bystander caught node 1 up from node 2 when it reconnected.
    whole = "SELECT k, v FROM t ORDER BY k"
    assert on_node(cluster.nodes[0], whole) == on_node(cluster.nodes[1], whole)


def test_sigstop_replica_is_marked_down_and_stale_after(cluster: Replicated) -> None:
    with connect(cluster, **LIVENESS) as writer, connect(cluster) as bystander:
        writer.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v VARCHAR)")
        writer.executemany("INSERT INTO t VALUES (?, ?)", [(i, "a") for i in range(20)])
        assert bystander.execute("SELECT count(*) FROM t").fetchall() == [(20,)]
        pid = cluster.servers[3].pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            writer.execute(
                "UPDATE t SET v = 'b'"
            )  # waits for the liveness probe of node 4, goes on
            assert writer._replicas is not None and 3 in writer._replicas.down
            assert writer.execute("SELECT count(*), min(v) FROM t").fetchall() == [(20, "b")]
        finally:
            os.kill(pid, signal.SIGCONT)
        # The bystander's connection to node 4 never broke: its reads must still see the update
        # (node 4 is marked stale on node 3, which each read asks).
        for _ in range(6):
            assert bystander.execute("SELECT count(*), min(v) FROM t").fetchall() == [(20, "b")]
        assert bystander._replicas is not None and 3 in bystander._replicas.stale


def test_whole_shard_down_names_shard_and_nodes(cluster: Replicated) -> None:
    with connect(cluster) as conn:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v VARCHAR)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "a") for i in range(20)])
        cluster.kill(2)
        cluster.kill(3)
        with pytest.raises(exdb.OperationalError) as info:
            conn.execute("SELECT count(*) FROM t").fetchall()
        message = str(info.value)
        assert "shard 2" in message
        assert cluster.nodes[2] in message and cluster.nodes[3] in message
        # Shard 1 still answers a read pinned to it; shard 2's keys fail the same clear way.
        answered = 0
        for k in range(20):
            try:
                assert conn.execute("SELECT count(*) FROM t WHERE k = ?", (k,)).fetchall() == [(1,)]
                answered += 1
            except exdb.OperationalError as exc:
                assert "shard 2" in str(exc)
        assert 0 < answered < 20


def test_asyncio_door(cluster: Replicated) -> None:
    async def main() -> None:
        conn = await exdb.connect_async(nodes=cluster.nodes, nReplicas=N, autocommit=True)
        try:
            await conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v VARCHAR)")
            await conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "a") for i in range(50)])
            cluster.kill(0)
            cluster.kill(3)
            await conn.execute("UPDATE t SET v = 'b' WHERE k < 10")
            for _ in range(4):
                cur = await conn.execute("SELECT count(*), sum(k) FROM t")
                assert await cur.fetchall() == [(50, 1225)]
            cur = await conn.execute("SELECT count(*) FROM t WHERE v = 'b'")
            assert await cur.fetchall() == [(10,)]
        finally:
            await conn.close()

    asyncio.run(main())
    assert on_node(cluster.nodes[1], "SELECT count(*) FROM t WHERE v = 'b'") == on_node(
        cluster.nodes[1], "SELECT count(*) FROM t WHERE k < 10"
    )


def test_worker_door(cluster: Replicated) -> None:
    with exdb.connect(nodes=cluster.nodes, nReplicas=N, nWorkers=2, **{"async": True}) as conn:
        for attempt in range(5):  # bounded: DuckDB refuses DDL racing another worker's start
            try:
                conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v VARCHAR)")
                break
            except TransactionConflict:  # retryable by its class, as the docs say
                assert attempt < 4
        conn.execute(["INSERT INTO t VALUES (?, ?)"] * 40, [(i, "a") for i in range(40)])
        cluster.kill(1)
        cluster.kill(2)
        counts = conn.execute(["SELECT count(*) FROM t"] * 4, None)
        assert counts == [[(40,)]] * 4
        points = conn.execute(["SELECT v FROM t WHERE k = ?"] * 10, [(i,) for i in range(10)])
        assert points == [[("a",)]] * 10
    for i in (0, 3):
        assert len(on_node(cluster.nodes[i], "SELECT k FROM t")) > 0


@pytest.mark.parametrize("engine", ["sqlite"])
def test_cli_cluster_with_replicas(engine: str) -> None:
    args = [sys.executable, "-m", "exdb", "cluster", "--shards", "2", "--replicas", "2"]
    args += ["--base-port", "0", "--engine", engine]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        nodes_line = proc.stdout.readline().strip()
        connect_line = proc.stdout.readline().strip()
        nodes = nodes_line.removeprefix("nodes: ").split(",")
        assert len(nodes) == 4
        assert connect_line.startswith("connect: exdb.connect(") and "nReplicas=2" in connect_line
        with exdb.connect(nodes=nodes, nReplicas=2, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(10)])
            assert conn.execute("SELECT count(*) FROM t").fetchall() == [(10,)]
        assert on_node(nodes[0], "SELECT count(*) FROM t") == on_node(
            nodes[1], "SELECT count(*) FROM t"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
