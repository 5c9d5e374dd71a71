"""Distributed connections: writes, placement, transactions, routing, faults, doors."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

import exdb
from exdb.cluster import LocalCluster
from exdb.distributed.parse import parse
from exdb.distributed.placement import shard_of

from oracle import plain_database, same_rows


@pytest.fixture(scope="module", params=["sqlite", "duckdb"])
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """Two shards of the engine, shared by the module; each test uses its own tables."""
    with LocalCluster(2, engine=request.param) as c:
        yield c


def _engine(cluster: LocalCluster) -> str:
    return "duckdb" if "duckdb" in " ".join(cluster.servers[0].args) else "sqlite"


def _per_node_counts(conn: Any, table: str, nodes: int) -> list[int]:
    return [
        conn.execute(f"{n}:SELECT COUNT(*) FROM {table}").fetchone()[0] for n in range(1, nodes + 1)
    ]


def test_writes_match_one_plain_database(cluster: LocalCluster) -> None:
    engine = _engine(cluster)
    script: list[tuple[str, tuple[Any, ...] | None]] = [
        ("CREATE TABLE w (id INTEGER PRIMARY KEY, g INTEGER, v VARCHAR)", None),
        (
            "INSERT INTO w VALUES (1, 1, 'a'), (2, 1, 'b'), (3, 2, 'c'), (4, 2, 'd'), (5, 3, 'e')",
            None,
        ),
        ("INSERT INTO w (id, g, v) VALUES (?, ?, ?)", (6, 3, "f")),
        ("INSERT INTO w VALUES (3 + 4, 4, 'g')", None),
        ("UPDATE w SET v = 'pinned' WHERE id = 2", None),
        ("UPDATE w SET v = v || '!' WHERE g = 2", None),
        ("UPDATE w SET g = g + 10 WHERE id IN (1, 5, 99)", None),
        ("DELETE FROM w WHERE id = ?", (4,)),
        ("DELETE FROM w WHERE g > 10", None),
        ("UPDATE w SET g = 0 WHERE id = 12345", None),
        ("CREATE TABLE w2 (id INTEGER PRIMARY KEY, g INTEGER, v VARCHAR)", None),
        ("INSERT INTO w2 SELECT id + 100, g, v FROM w WHERE g < 4", None),
        ("DELETE FROM w2", None),
    ]
    plain = plain_database(engine)
    with exdb.connect(nodes=cluster.nodes) as dist:
        for sql, params in script:
            got = dist.execute(sql, params).rowcount
            cur = plain.cursor()
            cur.execute(sql, params) if params else cur.execute(sql)
            want = cur.rowcount
            if want is not None and want >= 0 and not sql.startswith("CREATE"):
                assert got == want, f"{sql}: rowcount {got} != {want}"
        for table in ("w", "w2"):
            rows = dist.execute(f"SELECT * FROM {table}").fetchall()
            assert same_rows(rows, plain.execute(f"SELECT * FROM {table}").fetchall(), False)
        dist.execute("DROP TABLE w")
        dist.execute("DROP TABLE w2")
    plain.close()


def test_rows_land_on_the_shard_of_their_normalised_key(cluster: LocalCluster) -> None:
    with exdb.connect(nodes=cluster.nodes, autocommit=True) as conn:
        conn.execute("CREATE TABLE p (id INTEGER PRIMARY KEY, v VARCHAR)")
        conn.executemany("INSERT INTO p VALUES (?, ?)", [(i, str(i)) for i in range(200)])
        for i in range(0, 200, 17):
            node = shard_of(i, "INTEGER", 2) + 1
            assert conn.execute(f"{node}:SELECT v FROM p WHERE id = ?", (i,)).fetchone() == (
                str(i),
            )
        # 1, 1.0 and '1' are one key in an INTEGER column: same shard, so the PK catches it
        with pytest.raises(exdb.IntegrityError):
            conn.execute("INSERT INTO p VALUES (?, 'again')", (7.0,))
        assert conn.execute("SELECT v FROM p WHERE id = ?", (7.0,)).fetchall() == [("7",)]
        counts = _per_node_counts(conn, "p", 2)
        assert sum(counts) == 200 and min(counts) > 60  # spread, not piled on one shard
        conn.execute("DROP TABLE p")


def test_keyless_tables_spread_round_robin(cluster: LocalCluster) -> None:
    with exdb.connect(nodes=cluster.nodes, autocommit=True) as conn:
        conn.execute("CREATE TABLE k (a INTEGER, b VARCHAR)")
        conn.executemany("INSERT INTO k VALUES (?, ?)", [(i, "x") for i in range(100)])
        assert _per_node_counts(conn, "k", 2) == [50, 50]
        assert conn.execute("SELECT COUNT(*), SUM(a) FROM k").fetchone() == (100, 4950)
        conn.execute("DROP TABLE k")


def test_reference_and_redistributed_tables(cluster: LocalCluster) -> None:
    with exdb.connect(nodes=cluster.nodes, autocommit=True) as conn:
        conn.execute("CREATE TABLE r (code VARCHAR PRIMARY KEY, label VARCHAR)")
        conn.execute("INSERT INTO r VALUES ('a', 'A'), ('b', 'B'), ('c', 'C')")
        assert sum(_per_node_counts(conn, "r", 2)) == 3
        assert conn.execute("SELECT create_reference_table('r')").fetchall() == [("",)]
        assert _per_node_counts(conn, "r", 2) == [3, 3]  # a full copy on every node
        assert conn.execute("UPDATE r SET label = 'x' WHERE code <> 'a'").rowcount == 2
        assert conn.execute("INSERT INTO r VALUES ('d', 'D')").rowcount == 1
        assert conn.execute("SELECT COUNT(*) FROM r").fetchone() == (4,)
        conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, owner INTEGER)")
        conn.executemany("INSERT INTO m VALUES (?, ?)", [(i, i % 10) for i in range(40)])
        conn.execute("SELECT create_distributed_table('m', 'owner')")
        for owner in range(10):
            node = shard_of(owner, "INTEGER", 2) + 1
            got = conn.execute(f"{node}:SELECT COUNT(*) FROM m WHERE owner = ?", (owner,))
            assert got.fetchone() == (4,)
        assert conn.execute("SELECT COUNT(*) FROM m").fetchone() == (40,)
        assert "single" in conn.explain("SELECT * FROM m WHERE owner = 3")
        # another client reads the placement from the nodes
        with exdb.connect(nodes=cluster.nodes) as other:
            assert "single" in other.explain("SELECT * FROM m WHERE owner = 3")
            assert "broadcast" in other.explain("UPDATE r SET label = 'y'")
        conn.execute("DROP TABLE r")
        conn.execute("DROP TABLE m")


def test_refusals_are_clear(cluster: LocalCluster) -> None:
    with exdb.connect(nodes=cluster.nodes, autocommit=True) as conn:
        conn.execute("CREATE TABLE f (id INTEGER PRIMARY KEY, v INTEGER)")
        conn.execute("CREATE TABLE f2 (id INTEGER PRIMARY KEY, v INTEGER)")
        with pytest.raises(exdb.NotSupportedError, match="distribution column"):
            conn.execute("UPDATE f SET id = id + 1")
        with pytest.raises(exdb.NotSupportedError, match="f2"):
            conn.execute("DELETE FROM f WHERE v IN (SELECT v FROM f2)")
        with pytest.raises(exdb.NotSupportedError, match="distribution column"):
            conn.execute("INSERT INTO f (v) VALUES (1)")
        with pytest.raises(exdb.ProgrammingError, match="no such table"):
            conn.execute("SELECT * FROM nowhere")
        with pytest.raises(exdb.ProgrammingError, match="commit"):
            conn.execute("BEGIN")
        with pytest.raises(exdb.ProgrammingError, match="parameter"):
            conn.execute("SELECT * FROM f WHERE id = ?", (1, 2))
        with pytest.raises(exdb.ProgrammingError, match="node 9"):
            conn.execute("9:SELECT 1")
        conn.execute("DROP TABLE f")
        conn.execute("DROP TABLE f2")


def test_transactions_span_the_nodes(cluster: LocalCluster) -> None:
    with exdb.connect(nodes=cluster.nodes) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        conn.commit()
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(20)])
        assert min(_per_node_counts(conn, "t", 2)) > 0  # the transaction touched both nodes
        with exdb.connect(nodes=cluster.nodes) as other:
            assert other.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)
        conn.rollback()
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(20)])
        conn.commit()
        with exdb.connect(nodes=cluster.nodes) as other:
            assert other.execute("SELECT COUNT(*) FROM t").fetchone() == (20,)
        conn.execute("DROP TABLE t")
        conn.commit()


def test_node_prefix_and_broadcast_macros(cluster: LocalCluster) -> None:
    with exdb.connect(nodes=cluster.nodes) as conn:
        assert conn.execute("2:SELECT 40 + 2").fetchall() == [(42,)]
        rows = conn.execute("SELECT %#, %@").fetchall()
        assert sorted(rows) == [(1, 2), (2, 2)]


def test_plans_are_cached_by_statement_text(cluster: LocalCluster) -> None:
    with exdb.connect(nodes=cluster.nodes, autocommit=True) as conn:
        conn.execute("CREATE TABLE c (id INTEGER PRIMARY KEY, v INTEGER)")
        sql = "SELECT v, COUNT(*) FROM c WHERE id > ? GROUP BY v"
        conn.execute(sql, (1,))
        before = parse.cache_info()
        plans = len(conn.engine._plans)
        for i in range(20):
            conn.execute(sql, (i,))
        after = parse.cache_info()
        assert after.misses == before.misses  # not parsed again
        assert len(conn.engine._plans) == plans
        conn.execute("DROP TABLE c")


def test_asyncio_door(cluster: LocalCluster) -> None:
    async def main() -> None:
        async with await exdb.connect_async(nodes=cluster.nodes, autocommit=True) as conn:
            await conn.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, v INTEGER)")
            cur = await conn.executemany(
                "INSERT INTO a VALUES (?, ?)", [(i, i * i) for i in range(50)]
            )
            assert cur.rowcount == 50
            cur = await conn.execute("SELECT COUNT(*), SUM(v) FROM a WHERE id >= ?", (10,))
            assert await cur.fetchall() == [(40, sum(i * i for i in range(10, 50)))]
            cur = await conn.execute("SELECT id FROM a ORDER BY v DESC LIMIT 2")
            assert await cur.fetchall() == [(49,), (48,)]
            await conn.execute("DROP TABLE a")

    asyncio.run(asyncio.wait_for(main(), 60))


def test_explain_names_nodes_shard_sql_and_merge(cluster: LocalCluster) -> None:
    with exdb.connect(nodes=cluster.nodes, autocommit=True) as conn:
        conn.execute("CREATE TABLE e (id INTEGER PRIMARY KEY, g INTEGER, v REAL)")
        text = conn.explain("SELECT g, AVG(v) FROM e GROUP BY g")
        assert text.startswith("plan: aggregate")
        assert "SUM(v)" in text and "COUNT(v)" in text and "final stage" in text
        text = conn.explain("SELECT id FROM e ORDER BY v LIMIT 5 OFFSET 5")
        assert "scatter" in text and "k-way merge" in text and "LIMIT" in text
        assert "node 2" in conn.explain("2:SELECT 1")
        conn.execute("DROP TABLE e")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exdb",
            "explain",
            "--nodes",
            ",".join(cluster.nodes),
            "SELECT COUNT(*) FROM exdb_catalog",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("plan: single")


# --- faults ---------------------------------------------------------------------------------


def test_a_node_that_is_down_is_named(cluster: LocalCluster) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(exdb.OperationalError, match=dead):
        exdb.connect(nodes=[cluster.nodes[0], dead], connectTimeout=2000)
    assert time.monotonic() - started < 10


class _Staller:
    """A TCP peer that accepts and answers the handshake like a node, then never answers."""

    def __init__(self, real_node: str) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.node = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.real = real_node
        self.threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = []
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        host, port = self.real.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        self.socks += [client, upstream]
        # Relay until the test flips `stall`, then swallow everything.
        self.stall = False
        for a, b in ((client, upstream), (upstream, client)):
            t = threading.Thread(target=self._pipe, args=(a, b), daemon=True)
            t.start()
            self.threads.append(t)

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                if not getattr(self, "stall", False):
                    b.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        self.listener.close()
        for s in self.socks:
            s.close()


def test_a_node_that_stalls_gives_operational_error_within_the_timeout(
    cluster: LocalCluster,
) -> None:
    staller = _Staller(cluster.nodes[1])
    try:
        conn = exdb.connect(nodes=[cluster.nodes[0], staller.node], readTimeout=1500)
        try:
            assert conn.execute("SELECT COUNT(*) FROM exdb_catalog").fetchone() is not None
            staller.stall = True
            started = time.monotonic()
            with pytest.raises(exdb.OperationalError, match=staller.node):
                conn.execute("SELECT %#")
            assert time.monotonic() - started < 10
        finally:
            conn.close()
    finally:
        staller.close()


def test_a_node_killed_mid_session_is_named(engine: str) -> None:
    with LocalCluster(2, engine=engine) as c:
        conn = exdb.connect(nodes=c.nodes, autocommit=True)
        try:
            conn.execute("CREATE TABLE x (id INTEGER PRIMARY KEY)")
            c.servers[1].kill()
            with pytest.raises(exdb.OperationalError, match=c.nodes[1]):
                conn.execute("SELECT COUNT(*) FROM x")
        finally:
            conn.close()


def test_mixed_engines_are_refused() -> None:
    with (
        LocalCluster(1, engine="sqlite") as a,
        LocalCluster(1, engine="duckdb") as b,
        pytest.raises(exdb.NotSupportedError, match="different engines"),
    ):
        exdb.connect(nodes=[a.nodes[0], b.nodes[0]])


def test_an_order_by_merge_streams_instead_of_holding_every_row(cluster: LocalCluster) -> None:
    n = 150_000
    with exdb.connect(nodes=cluster.nodes, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (k INTEGER PRIMARY KEY, v INTEGER, pad VARCHAR)")
        conn.executemany(
            "INSERT INTO big VALUES (?, ?, ?)",
            [(i, (i * 7919) % 100_003, "x" * 60) for i in range(n)],
        )
        cur = conn.execute("SELECT k, v, pad FROM big ORDER BY v, k")
        tracemalloc.start()
        count, previous = 0, (-1, -1)
        while rows := cur.fetchmany(5000):
            for k, v, _ in rows:
                assert (v, k) > previous
                previous = (v, k)
            count += len(rows)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert count == n
        # Every row held at once would take ~30 MB; the merge holds a few batches per shard.
        assert peak < 12 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB: the merge was materialised"
        cur.execute("SELECT k FROM big ORDER BY k")
        assert cur.fetchmany(3) == [(0,), (1,), (2,)]
        cur.execute("SELECT COUNT(*) FROM big")  # the abandoned stream is cancelled, not read
        assert cur.fetchall() == [(n,)]

        # Without ORDER BY the shards' rows are read as they arrive, still a few batches each.
        cur.execute("SELECT k, v, pad FROM big")
        tracemalloc.start()
        seen = 0
        total = 0
        while rows := cur.fetchmany(5000):
            seen += len(rows)
            total += sum(k for k, _, _ in rows)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert (seen, total) == (n, n * (n - 1) // 2)
        assert peak < 12 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB: the rows were materialised"
        cur.execute("SELECT k FROM big WHERE k % 2 = 0")
        assert len(cur.fetchmany(10)) == 10
        cur.execute("SELECT COUNT(*) FROM big")  # the abandoned streams are cancelled
        assert cur.fetchall() == [(n,)]
        conn.execute("DROP TABLE big")


def test_aggregates_under_a_collation_use_the_collation(cluster: LocalCluster) -> None:
    # Partial aggregates would group, dedupe and compare by the collation on the shards but not
    # in the final stage: tables with a COLLATE column are gathered.
    engine = _engine(cluster)
    with exdb.connect(nodes=cluster.nodes, autocommit=True) as conn:
        conn.execute("CREATE TABLE names (id INTEGER PRIMARY KEY, n VARCHAR COLLATE NOCASE)")
        rows = [(i, ["a", "A", "b", "B", "c"][i % 5]) for i in range(40)]
        conn.executemany("INSERT INTO names VALUES (?, ?)", rows)
        assert conn.explain("SELECT COUNT(DISTINCT n) FROM names").startswith("plan: gather")
        plain = plain_database(engine)
        plain.execute("CREATE TABLE names (id INTEGER PRIMARY KEY, n VARCHAR COLLATE NOCASE)")
        plain.executemany("INSERT INTO names VALUES (?, ?)", rows)
        for sql in (
            "SELECT COUNT(DISTINCT n) FROM names",
            "SELECT id % 3, COUNT(DISTINCT n) FROM names GROUP BY id % 3 ORDER BY 1",
            "SELECT LOWER(n), COUNT(*) FROM names GROUP BY n ORDER BY 1",
            "SELECT MAX(n) = 'c', MIN(LOWER(n)) FROM names",
        ):
            assert conn.execute(sql).fetchall() == plain.execute(sql).fetchall(), sql
        plain.close()
        conn.execute("DROP TABLE names")


def test_count_distinct_too_large_for_one_frame_falls_back(engine: str) -> None:
    # A group's collected values travel as one value; when they do not fit in one frame, the
    # plan runs again grouping by the argument on the shards (rows that stream).
    with (
        LocalCluster(2, engine=engine, extra_args=["--max-frame", "8000"]) as small,
        exdb.connect(nodes=small.nodes, autocommit=True) as conn,
    ):
        conn.execute("CREATE TABLE wide (id INTEGER PRIMARY KEY, g INTEGER, s VARCHAR)")
        rows = [(i, i % 2, f"value-{i:06d}") for i in range(4000)]
        for start in range(0, len(rows), 200):  # each request fits in a frame too
            conn.executemany("INSERT INTO wide VALUES (?, ?, ?)", rows[start : start + 200])
        assert "(DISTINCT s) AS" in conn.explain("SELECT COUNT(DISTINCT s) FROM wide")
        got = conn.execute("SELECT g, COUNT(DISTINCT s), COUNT(*) FROM wide GROUP BY g ORDER BY g")
        assert got.fetchall() == [(0, 2000, 2000), (1, 2000, 2000)]


def test_bulk_inserts_match_one_plain_database(cluster: LocalCluster) -> None:
    # DuckDB shards: EXECMANY inserted from NumPy arrays when every column is all int, all
    # float or all text; column lists (INSERT ... SELECT UNNEST) when one type with NULLs;
    # multi-row VALUES when a column mixes types. SQLite: EXECMANY.
    engine = _engine(cluster)
    ddl = "CREATE TABLE bulk (k INTEGER PRIMARY KEY, n INTEGER, x DOUBLE, s VARCHAR)"
    uniform = [(i, None if i % 7 == 0 else i * 3, i / 4, f"s{i % 13}") for i in range(3000)]
    mixed = [
        (i, i, i if i % 2 else i + 0.5, i if i % 3 == 0 else f"t{i}") for i in range(3000, 3400)
    ]
    dense = [(i, -i, i * 0.25, f"d{i}") for i in range(4000, 9000)]
    plain = plain_database(engine)
    plain.execute(ddl)
    with exdb.connect(nodes=cluster.nodes, autocommit=True) as conn:
        conn.execute(ddl)
        for rows in (uniform, mixed, dense):
            assert conn.executemany("INSERT INTO bulk VALUES (?, ?, ?, ?)", rows).rowcount == len(
                rows
            )
            plain.executemany("INSERT INTO bulk VALUES (?, ?, ?, ?)", rows)
        sql = "SELECT k, n, x, s FROM bulk ORDER BY k"
        assert conn.execute(sql).fetchall() == plain.execute(sql).fetchall()
        with pytest.raises(exdb.IntegrityError):  # a duplicate key fails the batch
            conn.executemany("INSERT INTO bulk VALUES (?, ?, ?, ?)", uniform[:10])
        with pytest.raises(exdb.IntegrityError):  # ... on every path
            conn.executemany("INSERT INTO bulk VALUES (?, ?, ?, ?)", dense[-10:])
        assert conn.execute("SELECT COUNT(*) FROM bulk").fetchone() == (len(uniform) + 5400,)
        conn.execute("DROP TABLE bulk")
    plain.close()
