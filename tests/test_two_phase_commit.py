"""Two-phase commit across durable nodes, under faults made for real.

Three ``exdb serve --db`` nodes; a client process writes rows on all three in one transaction
and commits. The client stops itself at a step of the commit (``EXDB_2PC_PAUSE_AT``, see
exdb.distributed.transaction); the test then kills one node with SIGKILL and lets the client
go on, or kills the client. The node comes back on its file and port, a new client connects
(recovery runs), and every trial must be all or nothing, the decision winning: rows committed
iff the coordinator recorded the decision.

CI runs each step once per fault and engine; ``EXDB_SLOW=1`` runs each five times (50 trials
per engine). Besides: the statements of the protocol, refusals, the doors, ``exdb recover``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import exdb
from exdb.cluster import ServerProcess
from exdb.distributed.transaction import PAUSE_STEPS

ENGINES = ["sqlite", "duckdb"]
ROWS = 12  # rows a trial writes: over three nodes, every node gets some (checked)
REPEAT = 5 if os.environ.get("EXDB_SLOW") else 1
#: Whom a node fault kills at each step: a participant not yet prepared / not yet committed,
#: or the coordinator (node 0) where the decision is at stake.
VICTIM = {
    "before_prepare": 2,
    "between_prepares": 2,
    "after_prepares": 0,
    "after_decision": 1,
    "between_commits": 2,
}
#: Whether the decision is recorded once the client reached the step (the rows must then be
#: committed everywhere after recovery; before it, nowhere).
DECIDED = {
    "before_prepare": False,
    "between_prepares": False,
    "after_prepares": False,
    "after_decision": True,
    "between_commits": True,
}

CLIENT = f"""
import sys, exdb
nodes, trial = sys.argv[1].split(","), int(sys.argv[2])
conn = exdb.connect(nodes=nodes)
rows = [(trial * 1000 + i, trial, "v") for i in range({ROWS})]
conn.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
try:
    conn.commit()
    print("committed", flush=True)
except exdb.Error as exc:
    print("failed", type(exc).__name__, exc, flush=True)
"""
INSERT = "INSERT INTO t VALUES (?, ?, ?)"


def _rows(trial: int) -> list[tuple[int, int, str]]:
    """A trial's rows (keys trial * 1000 + i)."""
    return [(trial * 1000 + i, trial, "v") for i in range(ROWS)]


class Nodes:
    """Three durable nodes on fixed files and ports, which can be killed and brought back."""

    def __init__(self, engine: str, directory: Path) -> None:
        self.engine = engine
        self.files = [str(directory / f"node{i}.db") for i in range(3)]
        self.procs: list[ServerProcess] = []
        for f in self.files:
            self.procs.append(self._start(f, 0))
        self.ports = [p.port for p in self.procs]
        self.nodes = [p.node for p in self.procs]

    def _start(self, file: str, port: int) -> ServerProcess:
        args = ["--engine", self.engine, "--db", file, "--port", str(port), "--quiet"]
        return ServerProcess(args).start()

    def kill(self, i: int) -> None:
        proc = self.procs[i].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()

    def restart(self, i: int) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                self.procs[i] = self._start(self.files[i], self.ports[i])
                return
            except RuntimeError:  # the port is not free yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


@pytest.fixture(params=ENGINES)
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Nodes]:
    if request.param == "duckdb":
        pytest.importorskip("duckdb")
    nodes = Nodes(request.param, tmp_path)
    try:
        with exdb.connect(nodes=nodes.nodes, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, trial INTEGER, v VARCHAR)")
            conn.execute("SELECT create_distributed_table('t', 'k')")
        yield nodes
    finally:
        nodes.stop()


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "T"


def _run_client(nodes: Nodes, trial: int, step: str) -> subprocess.Popen[str]:
    """A client process that stops itself at ``step`` of its commit; waits until it has."""
    env = {**os.environ, "EXDB_2PC_PAUSE_AT": step}
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, ",".join(nodes.nodes), str(trial)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not _stopped(proc.pid):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the client never reached its step"
        time.sleep(0.02)
    return proc


def _counts(nodes: Nodes, trial: int) -> list[int]:
    """The trial's rows on each node (read node by node)."""
    out = []
    for node in nodes.nodes:
        with exdb.connect(node, autocommit=True) as conn:
            rows = conn.execute("SELECT count(*) FROM t WHERE trial = ?", [trial]).fetchall()
            out.append(rows[0][0])
    return out


def _in_doubt(nodes: Nodes) -> list[str]:
    found = []
    for node in nodes.nodes:
        with exdb.connect(node, autocommit=True) as conn:
            found += [r[0] for r in conn.execute("SELECT gid FROM exdb_prepared_xacts")]
    return found


def _trial(nodes: Nodes, trial: int, step: str, fault: str) -> tuple[list[int], str]:
    client = _run_client(nodes, trial, step)
    try:
        if fault == "node":
            victim = VICTIM[step]
            nodes.kill(victim)
            os.kill(client.pid, signal.SIGCONT)
            out, err = client.communicate(timeout=120)
            assert client.returncode == 0, err
            nodes.restart(victim)
        else:
            os.kill(client.pid, signal.SIGKILL)
            client.communicate(timeout=30)
            out = "client killed"
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    with exdb.connect(nodes=nodes.nodes, autocommit=True) as conn:  # recovery runs here
        report = conn.last_recovery
        assert report is not None and not report.unresolved, report
    assert _in_doubt(nodes) == []
    return _counts(nodes, trial), out


@pytest.mark.parametrize("fault", ["node", "client"])
@pytest.mark.parametrize("step", PAUSE_STEPS)
def test_kill_at_each_step_is_all_or_nothing(cluster: Nodes, step: str, fault: str) -> None:
    for rep in range(REPEAT):
        trial = PAUSE_STEPS.index(step) * 100 + rep * 10 + (fault == "node")
        counts, out = _trial(cluster, trial, step, fault)
        assert all(c > 0 for c in counts) or sum(counts) == 0, counts
        assert sum(counts) in (0, ROWS), (counts, out)
        assert sum(counts) == (ROWS if DECIDED[step] else 0), (counts, out)
        if fault == "node":
            # The error says what happened: committed or not, and what recovery does.
            assert out.startswith("failed"), out
            if DECIDED[step]:
                assert "is committed" in out and "recovery" in out, out
            else:
                assert "nothing was committed" in out or "outcome unknown" in out, out


def test_trial_rows_reach_every_node(cluster: Nodes) -> None:
    """The fault trials' premise: one transaction's rows land on all three nodes."""
    with exdb.connect(nodes=cluster.nodes) as conn:
        before = _decisions(cluster)
        conn.executemany(INSERT, _rows(99))
        conn.commit()
    assert all(c > 0 for c in _counts(cluster, 99))
    assert _decisions(cluster) == before + 1


def test_connection_stays_usable_after_a_failed_commit(cluster: Nodes) -> None:
    conn = exdb.connect(nodes=cluster.nodes)
    try:
        conn.executemany(INSERT, _rows(5))
        cluster.kill(2)
        with pytest.raises(exdb.OperationalError, match="nothing was committed") as info:
            conn.commit()
        assert cluster.nodes[2] in str(info.value)
        cluster.restart(2)
        conn.rollback()  # works, and the next statements too
        conn.executemany(INSERT, _rows(6))
        conn.commit()
        assert conn.execute("SELECT count(*) FROM t WHERE trial IN (5, 6)").fetchall() == [(ROWS,)]
    finally:
        conn.close()


def test_rollback_ends_every_node_transaction(cluster: Nodes) -> None:
    with exdb.connect(nodes=cluster.nodes) as conn:
        conn.executemany(INSERT, _rows(7))
        conn.rollback()
        assert sum(_counts(cluster, 7)) == 0
        # another writer is not locked out afterwards
        with exdb.connect(nodes=cluster.nodes, autocommit=True) as other:
            other.execute("INSERT INTO t VALUES (7999, 7, 'w')")
        conn.rollback()


def test_asyncio_door_commits_in_two_phases(cluster: Nodes) -> None:
    async def main() -> None:
        conn = await exdb.connect_async(nodes=cluster.nodes)
        try:
            await conn.executemany(INSERT, _rows(8))
            await conn.commit()
        finally:
            await conn.close()

    before = _decisions(cluster)
    asyncio.run(main())
    assert sum(_counts(cluster, 8)) == ROWS
    assert _decisions(cluster) == before + 1


def test_recover_command_finishes_an_orphan(cluster: Nodes) -> None:
    client = _run_client(cluster, 9, "after_decision")
    os.kill(client.pid, signal.SIGKILL)
    client.communicate(timeout=30)
    assert _in_doubt(cluster)  # the participants wait for a decision
    result = subprocess.run(
        [sys.executable, "-m", "exdb", "recover", "--nodes", ",".join(cluster.nodes)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "committed exdb:" in result.stdout
    assert sum(_counts(cluster, 9)) == ROWS
    assert _in_doubt(cluster) == []
    again = subprocess.run(
        [sys.executable, "-m", "exdb", "recover", "--nodes", ",".join(cluster.nodes)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.stdout.strip() == "nothing in doubt"


def test_one_node_transaction_commits_in_one_phase(cluster: Nodes) -> None:
    before = _decisions(cluster)
    with exdb.connect(nodes=cluster.nodes) as conn:
        conn.execute("INSERT INTO t VALUES (1, 1, 'one')")
        conn.commit()
    assert _decisions(cluster) == before


def test_prepare_statements_on_one_node(cluster: Nodes) -> None:
    with exdb.connect(cluster.nodes[0]) as conn:
        conn.execute("INSERT INTO t VALUES (424242, 42, 'p')")
        conn.execute("PREPARE TRANSACTION 'by hand'")
        assert conn.execute("SELECT gid FROM exdb_prepared_xacts").fetchall() == [("by hand",)]
        with pytest.raises(exdb.ProgrammingError, match="does not exist"):
            conn.execute("COMMIT PREPARED 'nope'")
        conn.execute("COMMIT PREPARED 'by hand'")
        assert conn.execute("SELECT v FROM t WHERE k = 424242").fetchall() == [("p",)]
        conn.commit()


def test_a_statement_a_redo_cannot_repeat_is_refused(cluster: Nodes) -> None:
    clock = "datetime('now')" if cluster.engine == "sqlite" else "CAST(now() AS VARCHAR)"
    with exdb.connect(nodes=cluster.nodes) as conn:
        conn.executemany(INSERT, _rows(3))
        conn.execute(f"UPDATE t SET v = {clock} WHERE trial = 3")
        if cluster.engine == "sqlite":  # a changeset holds the values: exact, allowed
            conn.commit()
            assert sum(_counts(cluster, 3)) == ROWS
            return
        with pytest.raises(exdb.NotSupportedError, match="could not repeat"):
            conn.commit()
        conn.rollback()
    assert sum(_counts(cluster, 3)) == 0


def _decisions(nodes: Nodes) -> int:
    with exdb.connect(nodes.nodes[0], autocommit=True) as node:
        return int(node.execute("SELECT count(*) FROM exdb_decisions").fetchall()[0][0])


def test_an_autocommit_statement_on_several_nodes_is_all_or_nothing(cluster: Nodes) -> None:
    """On the sync door, an autocommit UPDATE that fails on one node changes no other node (it
    runs as one transaction, committed in two phases)."""
    with exdb.connect(nodes=cluster.nodes, autocommit=True) as conn:
        conn.execute("CREATE TABLE acct (k INTEGER PRIMARY KEY, n INTEGER CHECK (n >= 0))")
        conn.execute("SELECT create_distributed_table('acct', 'k')")
        conn.executemany("INSERT INTO acct VALUES (?, ?)", [(k, 10) for k in range(ROWS)])
        conn.execute("UPDATE acct SET n = 1 WHERE k = 0")
        with pytest.raises(exdb.IntegrityError):
            conn.execute("UPDATE acct SET n = n - 5")
        assert conn.execute("SELECT sum(n) FROM acct").fetchall() == [(10 * (ROWS - 1) + 1,)]
        conn.execute("UPDATE acct SET n = n + 1")  # on every node, in two phases
        assert conn.execute("SELECT sum(n) FROM acct").fetchall() == [(11 * (ROWS - 1) + 2,)]
