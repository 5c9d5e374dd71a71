"""Values, result sets and cursors round-trip through a real server, on both engines."""

from __future__ import annotations

import datetime
import decimal
import tracemalloc

import pytest

import exdb
from exdb.cluster import ServerProcess

VALUES = [
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    1.5,
    -0.0,
    1e308,
    float("inf"),
    "",
    "héllo wörld ✓",
    "x" * 100_000,
    b"",
    b"\x00\xff" * 1000,
    None,
]


def test_select_parameter_round_trips_every_type(server: ServerProcess) -> None:
    with exdb.connect(server.node) as conn:
        cur = conn.cursor()
        for value in VALUES:
            row = cur.execute("SELECT ?", (value,)).fetchone()
            assert row is not None
            got = row[0]
            assert got == value and type(got) is type(value), (value, got)


def test_stored_values_round_trip(server: ServerProcess) -> None:
    with exdb.connect(server.node) as conn:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE t (i BIGINT, f DOUBLE, s VARCHAR, b BLOB, flag BOOLEAN, n INTEGER)"
        )
        rows = [
            (2**63 - 1, 0.1, "a", b"\x01\x02", True, None),
            (-(2**63), -1e-300, "", b"", False, 7),
        ]
        cur.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", rows)
        assert cur.rowcount == 2
        got = cur.execute("SELECT * FROM t ORDER BY i DESC").fetchall()
        assert got == rows
        for row in got:
            assert [type(v) for v in row] == [type(v) for v in rows[got.index(row)]]
        names = [d[0] for d in cur.description]
        assert names == ["i", "f", "s", "b", "flag", "n"]
        assert cur.description[0][1] == exdb.NUMBER
        assert cur.description[2][1] == exdb.STRING
        assert cur.description[3][1] == exdb.BINARY


def test_duckdb_rich_types_round_trip(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--engine", "duckdb")
    with exdb.connect(server.node) as conn:
        row = conn.execute(
            "SELECT 1.25::DECIMAL(10,2), DATE '2024-02-29', TIMESTAMP '2024-02-29 12:34:56.789',"
            " TIME '01:02:03', INTERVAL 3 DAY, 2::HUGEINT ** 70, ?::DATE",
            (datetime.date(1999, 12, 31),),
        ).fetchone()
    assert row == (
        decimal.Decimal("1.25"),
        datetime.date(2024, 2, 29),
        datetime.datetime(2024, 2, 29, 12, 34, 56, 789000),
        datetime.time(1, 2, 3),
        datetime.timedelta(days=3),
        row[5],
        datetime.date(1999, 12, 31),
    )
    assert isinstance(row[5], float)


def test_empty_results(server: ServerProcess) -> None:
    with exdb.connect(server.node) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE e (a INTEGER, b VARCHAR)")
        cur.execute("SELECT a, b FROM e")
        assert [d[0] for d in cur.description] == ["a", "b"]
        assert cur.fetchone() is None
        assert cur.fetchall() == []
        assert cur.fetchmany(10) == []
        assert cur.rowcount == -1
        cur.execute("DELETE FROM e")
        assert cur.rowcount == 0
        assert cur.description is None


def test_cursor_fetch_api(server: ServerProcess) -> None:
    with exdb.connect(server.node) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE f (x INTEGER)")
        cur.executemany("INSERT INTO f VALUES (?)", [(i,) for i in range(10)])
        cur.execute("SELECT x FROM f ORDER BY x")
        assert cur.fetchone() == (0,)
        cur.arraysize = 3
        assert cur.fetchmany() == [(1,), (2,), (3,)]
        assert cur.fetchmany(2) == [(4,), (5,)]
        assert list(cur) == [(6,), (7,), (8,), (9,)]
        assert cur.fetchone() is None
        cur.execute_many("UPDATE f SET x = x + ? WHERE x = ?", [(100, 1), (100, 2), (100, 99)])
        assert cur.rowcount == 2


def test_million_rows_stream_without_holding_them_twice(sqlite_node: str) -> None:
    n = 1_000_000
    with exdb.connect(sqlite_node) as conn:
        cur = conn.cursor()
        cur.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?)"
            " SELECT i, 'row' || i FROM c",
            (n,),
        )
        tracemalloc.start()
        count = 0
        total = 0
        while True:
            rows = cur.fetchmany(10_000)
            if not rows:
                break
            count += len(rows)
            total += sum(r[0] for r in rows)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert count == n
    assert total == n * (n + 1) // 2
    # All rows held at once would take well over 100 MB of tuples and strings; streaming holds a
    # few batches. The bound is loose on purpose: it proves streaming, not an exact figure.
    assert peak < 20 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB: the result was not streamed"


def test_connection_execute_shortcut_and_repr(sqlite_node: str) -> None:
    with exdb.connect(sqlite_node) as conn:
        assert conn.execute("SELECT 1, 2").fetchall() == [(1, 2)]
        assert sqlite_node in repr(conn)
        assert conn.server_info["engine"] == "sqlite"
    assert "closed" in repr(conn)


def test_connect_spellings(sqlite_node: str) -> None:
    host, port = sqlite_node.rsplit(":", 1)
    for conn in (
        exdb.connect(host, int(port)),
        exdb.connect(sqlite_node),
        exdb.connect((host, int(port))),
    ):
        with conn:
            assert conn.execute("SELECT 7").fetchone() == (7,)


def test_module_globals() -> None:
    assert exdb.apilevel == "2.0"
    assert exdb.threadsafety == 1
    assert exdb.paramstyle == "qmark"
    names = ["Warning", "Error", "InterfaceError", "DatabaseError", "DataError"]
    names += ["OperationalError", "IntegrityError", "InternalError", "ProgrammingError"]
    for name in [*names, "NotSupportedError"]:
        assert issubclass(getattr(exdb, name), Exception)
    assert issubclass(exdb.ProgrammingError, exdb.DatabaseError)
    assert issubclass(exdb.DatabaseError, exdb.Error)
    assert issubclass(exdb.InterfaceError, exdb.Error)


@pytest.mark.parametrize("bad", ["nohost", "h:notaport", "h:70000", "", "[::1]5001"])
def test_bad_node_addresses(bad: str) -> None:
    with pytest.raises(exdb.ProgrammingError):
        exdb.connect(bad)
