"""BATCH: one statement with many parameter sets, one answer each. Point SELECTs run through it
(one request per shard) answer exactly what the statements run one by one answer."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import exdb
from exdb.client.core import BatchResult, ClientCore, Op
from exdb.cluster import LocalCluster
from exdb.distributed.aio import AioDistributedConnection
from exdb.distributed.placement import shard_of
from exdb.distributed.plan import Result
from exdb.wire.messages import Msg

POINT = "SELECT v, n FROM kv WHERE k = ?"
N_KEYS = 200
MAX_FRAME = 16384  # the shards' --max-frame
PAD = 1500  # bytes of each row of ev: a few rows fill a frame


def _v(k: int) -> str | None:
    return None if k % 7 == 0 else f"v{k}"


KV_ROWS = [(k, _v(k), k * 3) for k in range(N_KEYS)]
# ev: several rows per key (k = 1 has 40 of them), and one row too big for a frame (made by
# the engine: no request can carry it). Its value fits the shards' value limit (a SQLite shard
# builds no value above --max-frame) but the row, with its framing, does not fit a frame.
EV_ROWS = [(k, i, f"{k}-{i}-" + "x" * PAD) for k in range(1, 6) for i in range(40 if k == 1 else 2)]
BIG_ROW = f"INSERT INTO ev VALUES (9, 0, printf('%{MAX_FRAME - 16}s', 'y'))"


def _load(conn: Any) -> None:
    conn.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
    conn.execute("CREATE TABLE ev (k INTEGER, i INTEGER, pad TEXT, PRIMARY KEY (k, i))")
    conn.executemany("INSERT INTO kv VALUES (?, ?, ?)", KV_ROWS)
    for row in EV_ROWS:  # one at a time: each request must fit in a frame
        conn.execute("INSERT INTO ev VALUES (?, ?, ?)", row)
    conn.execute(BIG_ROW)


@pytest.fixture(scope="module", params=["sqlite", "duckdb"])
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """Two shards of each engine, with a small maximum frame, holding kv and ev."""
    args = ["--max-frame", str(MAX_FRAME)]
    with LocalCluster(2, engine=request.param, extra_args=args) as c:
        with exdb.connect(nodes=c.nodes, autocommit=True) as conn:
            _load(conn)
        yield c


@pytest.fixture(scope="module")
def reference() -> Iterator[sqlite3.Connection]:
    """The same data in one plain sqlite3 database."""
    db = sqlite3.connect(":memory:")
    _load(db)
    yield db
    db.close()


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


async def _open(cluster: LocalCluster, autocommit: bool = True) -> AioDistributedConnection:
    return await exdb.connect_async(nodes=cluster.nodes, autocommit=autocommit)  # type: ignore[no-any-return]


async def _one_by_one(conn: AioDistributedConnection, sql: str, seq: list[Any]) -> list[Any]:
    """What each statement answers alone: (columns, types, rows) or its exception."""
    out: list[Any] = []
    for params in seq:
        try:
            cur = await conn.execute(sql, params)
            names = [d[0] for d in cur.description or []]
            types = [d[1] for d in cur.description or []]
            out.append((names, types, await cur.fetchall()))
        except Exception as exc:
            out.append(exc)
    return out


def _shape(outcomes: list[Any]) -> list[Any]:
    """select_each outcomes in the form _one_by_one gives."""
    out: list[Any] = []
    for o in outcomes:
        if isinstance(o, Result):
            names = list(o.columns or [])
            types = o.types if len(o.types) == len(names) else [None] * len(names)
            out.append((names, list(types), [tuple(r) for r in o.rows]))
        else:
            out.append(o)
    return out


def _same(batched: list[Any], alone: list[Any]) -> None:
    assert len(batched) == len(alone)
    for i, (b, a) in enumerate(zip(batched, alone, strict=True)):
        if isinstance(a, BaseException):
            assert type(b) is type(a), (i, b, a)
            assert str(b) == str(a), i
            assert (b.node, b.statement) == (a.node, a.statement), i
        else:
            assert b == a, (i, b, a)


def _requests(conn: AioDistributedConnection) -> list[int]:
    """The next request id of each node connection (taking one)."""
    return [next(c.core._ids) for c in conn._conns]


def test_point_selects_equal_one_by_one_and_sqlite3(
    cluster: LocalCluster, reference: sqlite3.Connection
) -> None:
    keys = [(k * 37) % (N_KEYS + 40) for k in range(300)]  # some keys do not exist
    seq = [(k,) for k in keys]
    assert {shard_of(k, "INTEGER", 2) for k in keys} == {0, 1}  # both shards answer

    async def main() -> tuple[list[Any], list[Any]]:
        conn = await _open(cluster)
        try:
            before = _requests(conn)
            batched = await conn.select_each(POINT, seq)
            after = _requests(conn)
            assert batched is not None
            assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2]  # one BATCH each
            return _shape(batched), await _one_by_one(conn, POINT, seq)
        finally:
            await conn.close()

    batched, alone = _run(main())
    _same(batched, alone)
    for k, (columns, _, rows) in zip(keys, batched, strict=True):
        assert columns == ["v", "n"]
        assert rows == reference.execute(POINT, (k,)).fetchall()
    assert sum(1 for _, _, rows in batched if not rows) == sum(1 for k in keys if k >= N_KEYS)


def test_an_error_in_one_parameter_set_fails_that_set_only(cluster: LocalCluster) -> None:
    sql = "SELECT v FROM kv WHERE k = ? AND abs(?) >= 0"
    seq: list[Any] = [
        (1, 1),
        (2, -(2**63)),  # abs() overflows: the engine fails this set
        (3, 5),
        (4,),  # too few parameters: refused before it is sent
        (5, (1, 2)),  # a value the engine cannot bind
        (None, 1),  # a NULL key: shard 0, no row
        (6, 2),
    ]

    async def main() -> tuple[list[Any], list[Any]]:
        conn = await _open(cluster)
        try:
            batched = await conn.select_each(sql, seq)
            assert batched is not None
            return _shape(batched), await _one_by_one(conn, sql, seq)
        finally:
            await conn.close()

    batched, alone = _run(main())
    _same(batched, alone)
    failed = [i for i, o in enumerate(batched) if isinstance(o, BaseException)]
    assert failed == [1, 3, 4]
    assert isinstance(batched[3], exdb.ProgrammingError)
    assert all(isinstance(batched[i], exdb.Error) for i in failed)
    assert batched[1].node in cluster.nodes and batched[1].statement == sql
    assert [o[2] for o in batched if not isinstance(o, BaseException)] == [
        [(_v(1),)],
        [(_v(3),)],
        [],
        [(_v(6),)],
    ]


def test_a_value_the_wire_cannot_carry_falls_back_to_one_by_one(cluster: LocalCluster) -> None:
    seq: list[Any] = [(1,), (object(),), (2,), (3,)]

    async def main() -> tuple[list[Any], list[Any]]:
        conn = await _open(cluster)
        try:
            batched = await conn.select_each(POINT, seq)
            assert batched is not None
            return _shape(batched), await _one_by_one(conn, POINT, seq)
        finally:
            await conn.close()

    batched, alone = _run(main())
    _same(batched, alone)
    assert isinstance(batched[1], exdb.ProgrammingError) and "cannot send" in str(batched[1])
    assert batched[0][2] == [(_v(1), 3)] and batched[3][2] == [(_v(3), 9)]


def test_a_server_without_batch_gets_one_statement_at_a_time(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unknown_request(self: ClientCore, sql: str, seq: Any, autocommit: bool) -> Op:
        return (yield from self.simple(99, sql, seq, 0))  # type: ignore[arg-type]

    seq = [(k,) for k in range(20)]

    async def main() -> tuple[list[Any], list[Any]]:
        conn = await _open(cluster)
        try:
            with pytest.raises(exdb.InterfaceError, match="unknown message type 99"):
                await conn._conns[0]._run(unknown_request(conn._conns[0].core, POINT, seq, True))
            monkeypatch.setattr(ClientCore, "batch", unknown_request)
            batched = await conn.select_each(POINT, seq)
            assert batched is not None
            return _shape(batched), await _one_by_one(conn, POINT, seq)
        finally:
            await conn.close()

    batched, alone = _run(main())
    _same(batched, alone)
    assert [o[2] for o in batched] == [[(_v(k), k * 3)] for k in range(20)]


def test_results_larger_than_the_max_frame_are_split(
    cluster: LocalCluster, reference: sqlite3.Connection
) -> None:
    sql = "SELECT i, pad FROM ev WHERE k = ? ORDER BY i"
    seq = [(k,) for k in (1, 2, 9, 3, 1, 8, 4, 9, 5)]  # 9: its one row exceeds the frame

    async def main() -> tuple[list[Any], list[Any]]:
        conn = await _open(cluster)
        try:
            batched = await conn.select_each(sql, seq)
            assert batched is not None
            return _shape(batched), await _one_by_one(conn, sql, seq)
        finally:
            await conn.close()

    batched, alone = _run(main())
    _same(batched, alone)
    for (k,), outcome in zip(seq, batched, strict=True):
        if k == 9:
            assert isinstance(outcome, exdb.DataError) and "maximum frame size" in str(outcome)
        else:
            assert outcome[2] == reference.execute(sql, (k,)).fetchall()
    assert len(batched[0][2]) == 40  # about 60 KiB: several frames


def test_only_selects_pinned_to_one_shard_qualify(cluster: LocalCluster) -> None:
    async def main() -> None:
        conn = await _open(cluster)
        try:
            for sql in (
                "SELECT v FROM kv WHERE n = ?",  # not the distribution key: every shard
                "SELECT v FROM kv WHERE k IN (?, ?)",  # two keys
                "1: SELECT v FROM kv WHERE k = ?",  # a node prefix
                "UPDATE kv SET n = n WHERE k = ?",
                "SELECT ?",  # no table
                "SELECT v FROM kv WHERE k = ?)",  # a syntax error: it fails alone
            ):
                assert await conn.select_each(sql, [(1,), (2,)]) is None, sql
            seq: list[Any] = [(k,) for k in range(10)]
            for sql, params in (
                ("SELECT COUNT(*), MAX(v) FROM kv WHERE k = ?", seq),  # one shard aggregates
                ("SELECT v FROM kv WHERE n = ? AND k = ?", [(k * 3, k) for k in range(10)]),
                ("SELECT v FROM kv WHERE k = 5", [None, None, ()]),  # a constant key
            ):
                got = await conn.select_each(sql, params)
                assert got is not None, sql
                _same(_shape(got), await _one_by_one(conn, sql, params))
        finally:
            await conn.close()

    _run(main())


def test_in_a_transaction_the_batch_sees_its_own_writes(cluster: LocalCluster) -> None:
    async def main() -> None:
        conn = await _open(cluster, autocommit=False)
        try:
            await conn.execute("INSERT INTO kv VALUES (?, ?, ?)", (1000, "new", 1))
            got = await conn.select_each(POINT, [(1000,), (1,)])
            assert got is not None
            assert [list(r.rows) for r in got] == [[("new", 1)], [(_v(1), 3)]]
            await conn.rollback()
            got = await conn.select_each(POINT, [(1000,)])
            assert got is not None and list(got[0].rows) == []
            await conn.commit()
        finally:
            await conn.close()

    _run(main())


# --- the wire request itself -------------------------------------------------------------------


def _batch(conn: exdb.Connection, sql: str, seq: list[Any], autocommit: bool = True) -> Any:
    return conn._run(conn.core.batch(sql, seq, autocommit))


def test_the_batch_request_on_one_node(cluster: LocalCluster) -> None:
    node = cluster.nodes[0]
    with exdb.connect(node, autocommit=True) as conn:
        got = _batch(conn, "SELECT ? + 1, ?", [[1, "a"], (2, None), 5, None, [3, 4, 5]])
        assert isinstance(got[0], BatchResult) and got[0].columns is not None
        assert [r.rows for r in got[:2]] == [[(2, "a")], [(3, None)]]
        assert isinstance(got[2], exdb.ProgrammingError) and "must be a sequence" in str(got[2])
        assert isinstance(got[3], exdb.Error) and isinstance(got[4], exdb.Error)
        assert got[4].node == node and got[4].statement == "SELECT ? + 1, ?"
        assert conn.ping()["in_transaction"] is False  # autocommit: nothing stays open
        assert _batch(conn, "SELECT 1", []) == []
        with pytest.raises(exdb.InterfaceError, match="malformed BATCH"):
            conn._run(conn.core.simple(Msg.BATCH, "SELECT 1", 7, 0))
        assert conn.execute("SELECT 42").fetchone() == (42,)  # the session goes on


# A statement that takes some milliseconds on each engine, so that a batch of them takes seconds.
# On SQLite it starts with SELECT: the batch runs in one read snapshot, which a cancel must end.
BUSY = {
    "sqlite": "SELECT (WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?)"
    " SELECT COUNT(*) FROM c)",
    "duckdb": "SELECT COUNT(*) FROM range(?::BIGINT)",
}
BUSY_N = {"sqlite": 20000, "duckdb": 3_000_000}


def _engine(cluster: LocalCluster) -> str:
    with exdb.connect(cluster.nodes[0]) as conn:
        return str(conn.core.server_info["engine"])


def test_an_in_band_cancel_stops_a_batch_between_sets(cluster: LocalCluster) -> None:
    engine = _engine(cluster)
    seq = [(BUSY_N[engine],)] * 2000
    with exdb.connect(cluster.nodes[0], autocommit=True) as conn:

        def cancelled() -> Op:
            inner = conn.core.batch(BUSY[engine], seq, True)
            rid = next(inner)
            conn.core.cancel(rid)  # right behind the request
            while True:
                yield rid
                try:
                    rid = inner.send(None)
                except StopIteration as stop:
                    return stop.value

        started = time.monotonic()
        with pytest.raises(exdb.OperationalError, match="canceled"):
            conn._run(cancelled())
        assert time.monotonic() - started < 10
        assert conn.ping()["in_transaction"] is False  # the batch's snapshot ended with it
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_an_out_of_band_cancel_stops_a_batch(cluster: LocalCluster) -> None:
    engine = _engine(cluster)
    seq = [(BUSY_N[engine],)] * 2000
    with exdb.connect(cluster.nodes[1], autocommit=True) as conn:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                _batch(conn, BUSY[engine], seq)
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
        assert not worker.is_alive(), "the cancelled batch kept running"
        assert time.monotonic() - started < 10
        assert len(errors) == 1 and isinstance(errors[0], exdb.OperationalError), errors
        assert "canceled" in str(errors[0])
        assert conn.ping()["in_transaction"] is False
        assert conn.execute("SELECT 2").fetchone() == (2,)


# --- the workers door --------------------------------------------------------------------------


def test_workers_door_end_to_end(cluster: LocalCluster, reference: sqlite3.Connection) -> None:
    keys = [(k * 53) % (N_KEYS + 30) for k in range(400)]
    queries = [POINT] * len(keys)
    args: list[Any] = [(k,) for k in keys]
    # A run broken by another statement, a failing set and a wrong parameter count.
    queries[100] = "SELECT COUNT(*) FROM kv"
    args[100] = None
    queries[200] = "SELECT v FROM kv WHERE k = ? AND abs(?) >= 0"
    args[200] = (3, -(2**63))
    args[300] = (1, 2)
    with exdb.connect(nodes=cluster.nodes, **{"async": True}, nWorkers=1) as conn:
        batched = conn.execute(queries, args, return_exceptions=True)
        alone = [
            conn.execute(q, a, return_exceptions=True) for q, a in zip(queries, args, strict=True)
        ]
    assert len(batched) == len(alone) == len(keys)
    for i, (b, a) in enumerate(zip(batched, alone, strict=True)):
        if isinstance(a, BaseException):
            assert type(b) is type(a) and str(b) == str(a), i
        else:
            assert b == a and b.columns == a.columns and b.types == a.types, i
    assert isinstance(batched[200], exdb.Error) and isinstance(batched[300], exdb.ProgrammingError)
    assert batched[100] == [(N_KEYS,)]
    for i, k in enumerate(keys):
        if i not in (100, 200, 300):
            assert batched[i] == reference.execute(POINT, (k,)).fetchall(), i


def test_a_list_of_point_selects_runs_from_the_parent_as_if_each_ran_alone(
    cluster: LocalCluster, reference: sqlite3.Connection
) -> None:
    # Only point SELECTs: the parent sends them to the shards itself (no worker hop).
    other = "SELECT n FROM kv WHERE k = ? AND n >= ?"
    queries = [POINT] * 150 + [other] * 50 + [POINT] * 100
    args: list[Any] = [((k * 37) % (N_KEYS + 20),) for k in range(150)]
    args += [(k, k) for k in range(50)]
    args += [((k * 11) % N_KEYS,) for k in range(100)]
    args[7] = (1, 2)  # a wrong parameter count
    args[160] = (3, -(2**63) - 5)  # beyond 64 bits: SQLite refuses it, DuckDB compares it
    seen: dict[int, Any] = {}
    with exdb.connect(nodes=cluster.nodes, **{"async": True}, nWorkers=1) as conn:
        together = conn.execute(queries, args, return_exceptions=True, on_result=seen.__setitem__)
        alone = [
            conn.execute(q, a, return_exceptions=True) for q, a in zip(queries, args, strict=True)
        ]
    assert sorted(seen) == list(range(len(queries)))
    for i, (t, a) in enumerate(zip(together, alone, strict=True)):
        assert seen[i] is t
        if isinstance(a, BaseException):
            assert type(t) is type(a) and str(t) == str(a), i
        else:
            assert t == a and t.columns == a.columns and t.types == a.types, i
            if i != 160:
                assert t == reference.execute(queries[i], args[i]).fetchall(), i
    assert isinstance(together[7], exdb.ProgrammingError)


def test_point_selects_after_ddl_through_the_workers_see_the_new_placement(
    cluster: LocalCluster,
) -> None:
    # The parent's catalog is loaded by its first list of point SELECTs; the table is then
    # re-created through the workers, distributed by another column. A stale catalog would
    # look for each row on the shard of its old key.
    point = "SELECT v FROM moved WHERE k = ?"
    with exdb.connect(nodes=cluster.nodes, **{"async": True}, nWorkers=2) as conn:
        conn.execute("CREATE TABLE moved (k INTEGER PRIMARY KEY, v INTEGER)")
        conn.execute("SELECT create_distributed_table('moved', 'k')")
        conn.execute(["INSERT INTO moved VALUES (?, ?)"] * 40, [(k, k + 1000) for k in range(40)])
        assert conn.execute([point] * 40, [(k,) for k in range(40)]) == [
            [(k + 1000,)] for k in range(40)
        ]
        conn.execute("DROP TABLE moved")
        conn.execute("CREATE TABLE moved (k INTEGER, v INTEGER)")
        conn.execute("SELECT create_distributed_table('moved', 'v')")
        conn.execute(["INSERT INTO moved VALUES (?, ?)"] * 40, [(k, k + 2000) for k in range(40)])
        assert conn.execute([point] * 40, [(k,) for k in range(40)]) == [
            [(k + 2000,)] for k in range(40)
        ]
        conn.execute("DROP TABLE moved")


def test_point_selects_with_a_node_down_fail_only_that_nodes_statements(
    tmp_path: Path,
) -> None:
    keys = list(range(40))
    with LocalCluster(2, db_dir=str(tmp_path)) as down:
        with exdb.connect(nodes=down.nodes, autocommit=True) as setup:
            setup.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v VARCHAR)")
            setup.executemany("INSERT INTO kv VALUES (?, ?)", [(k, f"v{k}") for k in keys])
        with exdb.connect(
            nodes=down.nodes, **{"async": True}, nWorkers=1, connectTimeout=2000
        ) as conn:
            point = "SELECT v FROM kv WHERE k = ?"
            assert conn.execute([point] * 40, [(k,) for k in keys]) == [[(f"v{k}",)] for k in keys]
            down.servers[1].stop()
            for _ in range(2):  # and again: the connection stays usable
                got = conn.execute([point] * 40, [(k,) for k in keys], return_exceptions=True)
                for k, outcome in zip(keys, got, strict=True):
                    if shard_of(k, "INTEGER", 2) == 1:
                        assert isinstance(outcome, exdb.OperationalError), (k, outcome)
                        assert down.nodes[1] in str(outcome), outcome
                    else:
                        assert outcome == [(f"v{k}",)], (k, outcome)
            assert not conn.closed
            # The node comes back (durable, on its old port): every statement answers again.
            server = down.servers[1]
            server.args[server.args.index("--port") + 1] = str(server.port)
            server.start()
            assert conn.execute([point] * 40, [(k,) for k in keys]) == [[(f"v{k}",)] for k in keys]
