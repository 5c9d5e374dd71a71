"""AsyncDistributedConnection: the reference API of design section 2, on worker processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

import exdb
from exdb.cluster import LocalCluster
from exdb.demo import INSERT, MYTABLE
from exdb.distributed.placement import shard_of

SLOW = (
    "SELECT COUNT(*) FROM (WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c"
    " WHERE i < 1500000) SELECT i FROM c)"
)


@pytest.fixture(scope="module")
def three() -> Iterator[LocalCluster]:
    """Three SQLite shards shared by the module."""
    with LocalCluster(3) as cluster:
        yield cluster


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive: read its state
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _gone(pids: list[int], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("n_nodes", [2, 3])
@pytest.mark.parametrize("n_workers", [1, 2, 4])
def test_reference_example(three: LocalCluster, n_nodes: int, n_workers: int) -> None:
    nodes = three.nodes[:n_nodes]
    table = f"MyTable{n_nodes}{n_workers}"
    with exdb.connect(nodes=nodes, autocommit=True) as setup:
        setup.execute(MYTABLE.replace("MyTable", table))
    conn = exdb.connect(nodes=nodes, **{"async": True}, nWorkers=n_workers)
    try:
        r = conn.execute("SELECT 1,2")
        assert len(r) == 1 and r[0] == (1, 2) and r == [(1, 2)]
        assert conn.execute("SELECT 1,2,?", (3,)) == [(1, 2, 3)]
        q = [INSERT.replace("MyTable", table)] * 2
        args = [(i * 100, f"str{i}", i, i, i, i, i, i * 100, i * 100.9) for i in range(2)]
        assert conn.execute(q, args) == [1, 1]
        r = conn.execute(
            [f"SELECT COUNT(*) FROM {table}", f"SELECT SUM(pk) FROM {table}",
             f"SELECT SUM(i1) FROM {table}", f"SELECT SUM(i2) FROM {table}"],
            None,
        )  # fmt: skip
        assert r == [[(2,)], [(100,)], [(1,)], [(1,)]]
        assert len(conn.worker_pids()) == n_workers
    finally:
        conn.close()
    with exdb.connect(nodes=nodes, autocommit=True) as setup:
        setup.execute(f"DROP TABLE {table}")


def test_spellings_result_sets_and_argument_checks(three: LocalCluster) -> None:
    with exdb.connect(nodes=three.nodes, async_=True, nworkers=1) as conn:
        r = conn.execute("SELECT 1 AS a, 'x' AS b")
        assert r.columns == ["a", "b"]
        assert [d[0] for d in r.description] == ["a", "b"]
        assert list(r) == [(1, "x")] and r[0][1] == "x" and r[:1] == [(1, "x")]
        assert conn.execute("CREATE TABLE spell (k INTEGER PRIMARY KEY)") == -1
        assert conn.execute("DROP TABLE spell") == -1
        for bad in ([(1,)], [1, 2], "x", [None, None, None]):
            with pytest.raises(exdb.ProgrammingError):
                conn.execute(["SELECT ?", "SELECT ?"], bad)
        with pytest.raises(exdb.ProgrammingError):
            conn.execute([1, 2])  # type: ignore[list-item]
        with pytest.raises(exdb.ProgrammingError):
            conn.execute("SELECT ?", "ab")
    with pytest.raises(exdb.InterfaceError):
        conn.execute("SELECT 1")
    with pytest.raises(exdb.ProgrammingError):
        exdb.connect(nodes=three.nodes, nWorkers=2)  # nWorkers without async
    with pytest.raises(exdb.ProgrammingError):
        exdb.connect(nodes=three.nodes, async_=True, nWorkers=0)


def test_errors_wait_for_everything_and_keep_every_result(three: LocalCluster) -> None:
    with exdb.connect(nodes=three.nodes, async_=True, nWorkers=2) as conn:
        statements = ["SELECT 1", "SELECT * FROM no_such_table", "SELECT 3", "SELEC 4"]
        with pytest.raises(exdb.ProgrammingError) as info:
            conn.execute(statements)
        results = info.value.results
        assert results is not None and len(results) == 4
        assert results[0] == [(1,)] and results[2] == [(3,)]
        assert isinstance(results[1], exdb.ProgrammingError) and "no_such_table" in str(results[1])
        assert isinstance(results[3], exdb.Error)
        assert info.value is results[1]  # the first failure, in statement order
        got = conn.execute(statements, return_exceptions=True)
        assert got[0] == [(1,)] and got[2] == [(3,)]
        assert isinstance(got[1], exdb.ProgrammingError) and isinstance(got[3], exdb.Error)


def test_two_thousand_mixed_statements_in_order_and_as_plain_sqlite(three: LocalCluster) -> None:
    setup = [
        "CREATE TABLE mix (k INTEGER PRIMARY KEY, v INTEGER)",
        "INSERT INTO mix VALUES " + ", ".join(f"({-i}, {i})" for i in range(1, 201)),
    ]
    statements: list[str] = []
    args: list[tuple[int, ...] | None] = []
    expected: list[object] = []
    for i in range(2000):
        kind = i % 4
        if kind in (0, 1):
            statements.append("INSERT INTO mix VALUES (?, ?)")
            args.append((i, i * 2))
            expected.append(1)
        elif kind == 2:  # increments commute: the final state is order-independent
            statements.append("UPDATE mix SET v = v + 1 WHERE k = ?")
            args.append((-(i % 100) - 1,))
            expected.append(1)
        else:  # rows nobody changes in this list
            key = -(i % 100) - 101
            statements.append("SELECT k, v FROM mix WHERE k = ?")
            args.append((key,))
            expected.append([(key, -key)])
    plain = sqlite3.connect(":memory:")
    for sql in setup:
        plain.execute(sql)
    for sql, a in zip(statements, args, strict=True):
        plain.execute(sql, a or ())
    with exdb.connect(nodes=three.nodes, autocommit=True) as dist:
        for sql in setup:
            dist.execute(sql)
        with exdb.connect(nodes=three.nodes, async_=True, nWorkers=2) as conn:
            got = conn.execute(statements, args)
        assert got == expected
        final = dist.execute("SELECT k, v FROM mix ORDER BY k").fetchall()
        dist.execute("DROP TABLE mix")
    assert final == plain.execute("SELECT k, v FROM mix ORDER BY k").fetchall()
    plain.close()


def test_a_killed_worker_fails_only_its_statements(three: LocalCluster) -> None:
    with exdb.connect(nodes=three.nodes, async_=True, nWorkers=2) as conn:
        conn.execute("SELECT 1")  # both workers are up
        victim = conn.worker_pids()[0]
        outcome: list[object] = []
        # Slow enough that the victim is still busy when it is killed (the shards' SQLite runs
        # SLOW in ~0.3 s, and two of them could end before the kill).
        slower = SLOW.replace("1500000", "6000000")
        runner = threading.Thread(
            target=lambda: outcome.append(conn.execute([slower] * 4, return_exceptions=True))
        )
        runner.start()
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        runner.join(60)
        assert not runner.is_alive()
        (results,) = outcome
        assert isinstance(results, list)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert failed and all(isinstance(r, exdb.OperationalError) for r in failed)
        assert all("died" in str(r) and SLOW[:20] in str(r) for r in failed)
        assert any(r == [(6000000,)] for r in results)  # the other worker's statements
        assert conn.execute(["SELECT 5", "SELECT 6"]) == [[(5,)], [(6,)]]  # replaced
        assert victim not in conn.worker_pids() and len(conn.worker_pids()) == 2


def test_no_worker_outlives_close_or_an_exception(three: LocalCluster) -> None:
    conn = exdb.connect(nodes=three.nodes, async_=True, nWorkers=2)
    pids = conn.worker_pids()
    conn.execute("SELECT 1")
    conn.close()
    assert _gone(pids)
    with pytest.raises(RuntimeError), exdb.connect(nodes=three.nodes, async_=True) as conn:
        pids = conn.worker_pids()
        raise RuntimeError("boom")
    assert _gone(pids)


def test_no_worker_outlives_ctrl_c(three: LocalCluster, tmp_path: os.PathLike[str]) -> None:
    script = textwrap.dedent(
        f"""
        import sys, exdb
        conn = exdb.connect(nodes={list(three.nodes)!r}, async_=True, nWorkers=2)
        conn.execute("SELECT 1")
        print(" ".join(map(str, conn.worker_pids())), flush=True)
        conn.execute([{SLOW!r}] * 8)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert "KeyboardInterrupt" in err
    assert _gone(pids), "a worker outlived Ctrl-C"


def test_every_worker_sees_a_placement_another_worker_changed(three: LocalCluster) -> None:
    # Worker 2 plans INSERTs into the table as first placed; worker 1 then drops it and places
    # it again by another column. Worker 2 must place the new rows by the new column.
    with exdb.connect(nodes=three.nodes, **{"async": True}, nWorkers=2) as conn:
        conn.execute("CREATE TABLE moved (k INTEGER PRIMARY KEY, v INTEGER)")
        conn.execute(["INSERT INTO moved VALUES (?, ?)"] * 40, [(k, k + 1000) for k in range(40)])
        conn.execute("DROP TABLE moved")
        conn.execute("CREATE TABLE moved (k INTEGER, v INTEGER)")
        conn.execute("SELECT create_distributed_table('moved', 'v')")
        conn.execute(["INSERT INTO moved VALUES (?, ?)"] * 40, [(k, k + 2000) for k in range(40)])
        for node in (1, 2, 3):
            got = sorted(r[0] for r in conn.execute(f"{node}:SELECT v FROM moved"))
            want = [v for v in range(2000, 2040) if shard_of(v, "INTEGER", 3) == node - 1]
            assert got == want, node
        # and the parent's own point SELECTs too
        assert conn.execute(
            ["SELECT k FROM moved WHERE v = ?"] * 40, [(v,) for v in range(2000, 2040)]
        ) == [[(k,)] for k in range(40)]
        conn.execute("DROP TABLE moved")
