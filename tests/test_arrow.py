"""Arrow and DataFrame fetches through real servers, on both engines and every door.

The Arrow path must return exactly the rows ``fetchall()`` returns (differential, per query and
door), cross the wire as Arrow IPC when the node can send it, and refuse clearly when an extra
is missing.
"""

from __future__ import annotations

import asyncio
import decimal
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import exdb
from exdb.cluster import LocalCluster

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")
pl = pytest.importorskip("polars")

ROOT = Path(__file__).resolve().parent.parent
N = 3000  # enough rows that every shard's answer streams past its first batch (256 rows)

DDL = {
    "sqlite": "CREATE TABLE t (k INTEGER PRIMARY KEY, g INTEGER, v REAL, s TEXT, b BLOB,"
    " f BOOLEAN)",
    "duckdb": "CREATE TABLE t (k BIGINT PRIMARY KEY, g BIGINT, v DOUBLE, s VARCHAR, b BLOB,"
    " f BOOLEAN)",
}
EXPECTED_TYPES = ["int64", "int64", "double", "string", "binary", "bool"]


def _row(i: int) -> tuple[Any, ...]:
    """Deterministic values with NULLs, large integers, floats, unicode text and blobs."""
    big = 2**62 + i if i % 7 == 0 else -(2**63) + 1 + i if i % 11 == 0 else i * 1000
    return (
        i,
        None if i % 5 == 0 else big,
        None if i % 6 == 0 else (i * 0.1 if i % 2 else -1.5e300 / (i + 1)),
        None if i % 9 == 0 else f"ünï-{i}-☃-{'x' * (i % 13)}",
        None if i % 4 == 0 else bytes([i % 256, 0, 255]) * (1 + i % 3),
        None if i % 8 == 0 else bool(i % 3),
    )


ROWS = [_row(i) for i in range(N)]

QUERIES = [
    "SELECT * FROM t",  # a plain scatter: concatenation, read as Arrow from every shard
    "SELECT k, s, b FROM t WHERE k % 3 = 0",
    "SELECT * FROM t WHERE k < 0",  # empty
    "SELECT * FROM t ORDER BY k DESC LIMIT 40",  # k-way merge, then LIMIT
    "SELECT * FROM t ORDER BY k LIMIT 700 OFFSET 5",
    "SELECT g IS NULL AS gnull, COUNT(*) AS n, SUM(k) AS sk, MAX(s) AS ms FROM t GROUP BY g IS NULL"
    " ORDER BY gnull",  # aggregate across shards
]


@pytest.fixture(scope="module", params=["sqlite", "duckdb"])
def cluster(request: pytest.FixtureRequest) -> Iterator[tuple[str, LocalCluster]]:
    engine = str(request.param)
    with LocalCluster(2, engine=engine) as c:
        conn = exdb.connect(nodes=list(c.nodes))
        try:
            conn.execute(DDL[engine])
            conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", ROWS)
            conn.commit()
        finally:
            conn.close()
        yield engine, c


def _as_rows(table: Any) -> list[tuple[Any, ...]]:
    return [tuple(d.values()) for d in table.to_pylist()]


def _same(table: Any, rows: list[tuple[Any, ...]], sql: str) -> None:
    got = _as_rows(table)
    if "ORDER BY" not in sql:  # a scatter's rows come in no particular order
        got, rows = sorted(got, key=repr), sorted(rows, key=repr)
    assert got == rows, sql
    for a, b in zip(got, rows, strict=True):  # exact types too: an int stays an int
        for x, y in zip(a, b, strict=True):
            # DuckDB's HUGEINT (SUM of integers) is decimal128(38, 0) in Arrow, as DuckDB
            # exports it: the value is equal, the Python type Decimal.
            hugeint = isinstance(x, decimal.Decimal) and type(y) is int
            assert type(x) is type(y) or hugeint, (sql, a, b)


def test_sync_distributed_matches_fetchall(cluster: tuple[str, LocalCluster]) -> None:
    engine, c = cluster
    with exdb.connect(nodes=list(c.nodes)) as conn:
        for sql in QUERIES:
            rows = conn.execute(sql).fetchall()
            cur = conn.execute(sql)
            table = cur.fetch_arrow_table()
            assert table.column_names == [d[0] for d in cur.description]
            _same(table, rows, sql)
        table = conn.execute("SELECT * FROM t").fetch_arrow_table()
        assert [str(f.type) for f in table.schema] == EXPECTED_TYPES
        # LIMIT without ORDER BY: any 700 rows, each once (the concatenation, sliced)
        every = {r[0]: r for r in conn.execute("SELECT * FROM t").fetchall()}
        some = _as_rows(conn.execute("SELECT * FROM t LIMIT 700 OFFSET 5").fetch_arrow_table())
        assert len(some) == 700 == len({r[0] for r in some})
        assert all(every[r[0]] == r for r in some)
        empty = conn.execute("SELECT * FROM t WHERE k < 0").fetch_arrow_table()
        assert empty.num_rows == 0 and empty.column_names == ["k", "g", "v", "s", "b", "f"]
        if engine == "duckdb":  # the declared types, even with no row
            assert [str(f.type) for f in empty.schema] == EXPECTED_TYPES


def test_sync_single_node_matches_fetchall(cluster: tuple[str, LocalCluster]) -> None:
    _engine, c = cluster
    with exdb.connect(c.nodes[0]) as conn:
        for sql in [*QUERIES, "SELECT * FROM t ORDER BY k"]:
            rows = conn.execute(sql).fetchall()
            _same(conn.execute(sql).fetch_arrow_table(), rows, sql)


def test_asyncio_doors_match_fetchall(cluster: tuple[str, LocalCluster]) -> None:
    _engine, c = cluster

    async def main() -> None:
        single = await exdb.connect_async(c.nodes[1])
        dist = await exdb.connect_async(nodes=list(c.nodes))
        try:
            for conn in (single, dist):
                for sql in QUERIES:
                    rows = await (await conn.execute(sql)).fetchall()
                    cur = await conn.execute(sql)
                    _same(await cur.fetch_arrow_table(), rows, sql)
                cur = await conn.execute("SELECT * FROM t WHERE k < 500 ORDER BY k")
                df = await cur.fetch_df()
                cur = await conn.execute("SELECT * FROM t WHERE k < 500 ORDER BY k")
                assert df.equals((await cur.fetch_arrow_table()).to_pandas())
        finally:
            await single.close()
            await dist.close()

    asyncio.run(main())


def test_workers_door(cluster: tuple[str, LocalCluster]) -> None:
    _engine, c = cluster
    conn = exdb.connect(nodes=list(c.nodes), **{"async": True}, nWorkers=1)
    try:
        sql = "SELECT * FROM t ORDER BY k"
        result = conn.execute(sql)
        table = result.fetch_arrow_table()
        _same(table, list(result), sql)
        assert result.fetch_df().equals(table.to_pandas())
        assert result.fetch_pl().equals(pl.from_arrow(table))
        batches = list(result.fetch_record_batches(rows_per_batch=1000))
        assert [b.num_rows for b in batches] == [1000, 1000, 1000]
    finally:
        conn.close()


def test_dataframes_equal_the_arrow_table(cluster: tuple[str, LocalCluster]) -> None:
    _engine, c = cluster
    sql = "SELECT * FROM t ORDER BY k"
    with exdb.connect(nodes=list(c.nodes)) as conn:
        table = conn.execute(sql).fetch_arrow_table()
        df = conn.execute(sql).fetch_df()
        assert isinstance(df, pd.DataFrame) and df.equals(table.to_pandas())
        frame = conn.execute(sql).fetch_pl()
        assert isinstance(frame, pl.DataFrame) and frame.equals(pl.from_arrow(table))
        reader = conn.execute(sql).fetch_record_batches(rows_per_batch=512)
        assert isinstance(reader, pa.RecordBatchReader)
        batches = list(reader)
        assert max(b.num_rows for b in batches) <= 512
        assert pa.Table.from_batches(batches).equals(table)


def test_rest_of_a_partly_read_result(cluster: tuple[str, LocalCluster]) -> None:
    _engine, c = cluster
    sql = "SELECT * FROM t ORDER BY k"
    for target in (c.nodes[0], None):
        conn = exdb.connect(target) if target else exdb.connect(nodes=list(c.nodes))
        try:
            rows = conn.execute(sql).fetchall()
            cur = conn.execute(sql)
            head = [cur.fetchone() for _ in range(300)]
            rest = cur.fetch_arrow_table()
            assert head + _as_rows(rest) == rows
            assert cur.fetchall() == []
            cur = conn.execute("SELECT * FROM t")  # plain scatter, partly read first
            first = cur.fetchmany(10)
            rest_rows = _as_rows(cur.fetch_arrow_table())
            assert sorted(first + rest_rows, key=repr) == sorted(rows, key=repr)
        finally:
            conn.close()


def test_arrow_crosses_the_wire(
    cluster: tuple[str, LocalCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large result comes as Arrow IPC pieces, not only as rows."""
    import exdb.arrow

    _engine, c = cluster
    pieces: list[str] = []
    add = exdb.arrow.Collector.add

    def spy(self: Any, piece: Any) -> None:
        pieces.append("ipc" if isinstance(piece, (bytes, memoryview)) else "rows")
        add(self, piece)

    monkeypatch.setattr(exdb.arrow.Collector, "add", spy)
    n = 60_000  # streamed long enough for the ARROW to arrive while it still runs
    with exdb.connect(nodes=list(c.nodes)) as conn:
        assert all(c.server_info.get("arrow") is True for c in conn._conns)
        conn.execute("CREATE TABLE big (k BIGINT PRIMARY KEY, s VARCHAR)")
        try:
            conn.executemany("INSERT INTO big VALUES (?, ?)", [(i, str(i)) for i in range(n)])
            conn.commit()
            table = conn.execute("SELECT * FROM big").fetch_arrow_table()
            assert sorted(table.column("k").to_pylist()) == list(range(n))
            assert "ipc" in pieces
        finally:
            conn.execute("DROP TABLE big")
            conn.commit()


def test_small_frames_split_arrow(start_server: Any, engine: str) -> None:
    """With a small --max-frame the Arrow IPC is split into frames that fit."""
    server = start_server("--engine", engine, "--max-frame", "65536")
    with exdb.connect(server.node) as conn:
        conn.execute("CREATE TABLE w (k BIGINT, s VARCHAR)")
        for start in range(0, 40_000, 200):  # each request within the 64 KiB frames too
            chunk = [(i, f"{i:0>200}") for i in range(start, start + 200)]
            conn.executemany("INSERT INTO w VALUES (?, ?)", chunk)
        sql = "SELECT * FROM w"
        _same(conn.execute(sql).fetch_arrow_table(), conn.execute(sql).fetchall(), sql)


def test_sqlite_column_of_mixed_kinds_is_refused(start_server: Any) -> None:
    server = start_server("--engine", "sqlite")
    with exdb.connect(server.node) as conn:
        conn.execute("CREATE TABLE m (x)")
        conn.executemany("INSERT INTO m VALUES (?)", [(i,) for i in range(600)] + [("text",)])
        with pytest.raises(exdb.DataError, match="'x'"):
            conn.execute("SELECT x FROM m").fetch_arrow_table()
        conn.execute("CREATE TABLE n (x)")  # integers and reals: float64, exact
        conn.executemany("INSERT INTO n VALUES (?)", [(i,) for i in range(600)] + [(0.5,)])
        table = conn.execute("SELECT x FROM n").fetch_arrow_table()
        assert table.schema.field("x").type == pa.float64()
        assert table.column("x").to_pylist() == [*range(600), 0.5]


_BLOCK = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked for the test: " + name)
        return None
sys.meta_path.insert(0, _Block())
"""


def _run_blocked(blocked: set[str], body: str, env_extra: dict[str, str] | None = None) -> str:
    code = _BLOCK.format(blocked=blocked) + textwrap.dedent(body)
    env = {**os.environ, **(env_extra or {})}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_missing_extras_are_clear_errors(sqlite_node: str) -> None:
    out = _run_blocked(
        {"pyarrow", "pandas", "polars"},
        f"""
        import exdb
        with exdb.connect({sqlite_node!r}) as conn:
            assert "pyarrow" not in sys.modules
            cur = conn.execute("SELECT 1 AS a UNION ALL SELECT 2")
            for name in ("fetch_arrow_table", "fetch_df", "fetch_pl", "fetch_record_batches"):
                try:
                    getattr(cur, name)()
                except exdb.InterfaceError as exc:
                    print(name, exc)
                else:
                    raise SystemExit(name + " did not fail")
            print("rows", cur.fetchall())  # nothing was read by the failed calls
        """,
    )
    assert "fetch_arrow_table fetch_arrow_table() needs pyarrow" in out
    assert "pip install 'exdb[arrow]'" in out
    assert "fetch_df fetch_df() needs pandas" in out and "'exdb[pandas]'" in out
    assert "fetch_pl fetch_pl() needs polars" in out and "'exdb[polars]'" in out
    assert "rows [(1,), (2,)]" in out


def test_import_exdb_does_not_load_pyarrow() -> None:
    code = "import sys, exdb; print('pyarrow' in sys.modules, 'pandas' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False"], done.stderr


def test_server_without_pyarrow_answers_rows(
    start_server: Any, engine: str, tmp_path: Path
) -> None:
    """A node that cannot build Arrow does not offer it; the client builds the columns."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCK.format(blocked={"pyarrow"}))
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    server = start_server("--engine", engine, env={"PYTHONPATH": path})
    with exdb.connect(server.node) as conn:
        assert "arrow" not in conn.server_info
        conn.execute(DDL[engine])
        conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", ROWS)
        rows = conn.execute("SELECT * FROM t").fetchall()
        _same(conn.execute("SELECT * FROM t").fetch_arrow_table(), rows, "SELECT * FROM t")
