"""Errors and DB-API details: parse errors in a user's words, the exception classes on every
connection, description types on empty results, and NumPy / pandas values as parameters
(stored exactly as the plain Python value is), through real servers on both engines."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

import exdb
from exdb.cluster import LocalCluster
from exdb.distributed.parse import parse


@pytest.fixture(scope="module", params=["sqlite", "duckdb"])
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """Two shards of each engine, shared by this module's tests (each uses its own tables)."""
    with LocalCluster(2, engine=str(request.param)) as c:
        yield c


def _engine(cluster: LocalCluster) -> str:
    return "duckdb" if "duckdb" in " ".join(cluster.servers[0].args) else "sqlite"


def _connect(cluster: LocalCluster, distributed: bool) -> Any:
    if distributed:
        return exdb.connect(nodes=list(cluster.nodes))
    return exdb.connect(cluster.nodes[0])


BOTH = pytest.mark.parametrize("distributed", [False, True], ids=["1node", "2nodes"])

# --- parse errors -------------------------------------------------------------------------


def test_parse_errors_say_where_in_words() -> None:
    for dialect in ("sqlite", "duckdb"):
        with pytest.raises(exdb.ProgrammingError) as info:
            parse("SELECT ?,\n  ? FROM t t2 t3", dialect)
        message = str(info.value)
        assert "line 2, column 15" in message  # "t3", in the text as written (with its ?s)
        assert 'near "t3"' in message
        assert "statement: SELECT ?, ? FROM t t2 t3" in message
        with pytest.raises(exdb.ProgrammingError) as info:
            parse("SELECT * FROM t WHERE", dialect)
        assert "the statement ends too early" in str(info.value)
        with pytest.raises(exdb.ProgrammingError) as info:
            parse("SELECT 'abc", dialect)
        assert "line 1, column 8" in str(info.value)
        assert "closing ' is missing" in str(info.value)
        with pytest.raises(exdb.ProgrammingError) as info:
            parse("SELECT 1 /* never closed", dialect)
        assert "ends inside a comment" in str(info.value)
        for sql in ("SELECT ?,?", "SELECT (?),(?)", "SELECT ?,?,? FROM t WHERE a IN (?,?)"):
            assert parse(sql, dialect).n_params == sql.count("?")


BAD = ["SELECT 1 +* 2", "SELECT * FROM t WHERE", "SELECT 'abc", "SELEC 1", "SELECT (1"]


@BOTH
def test_syntax_errors_are_programming_errors(cluster: LocalCluster, distributed: bool) -> None:
    with _connect(cluster, distributed) as conn:
        assert conn.execute("SELECT ?,?", (1, 2)).fetchall() == [(1, 2)]
        for sql in BAD:
            with pytest.raises(exdb.ProgrammingError) as info:
                conn.execute(sql)
            message = str(info.value)
            assert info.value.statement == sql
            assert "sqlglot" not in message and "<class" not in message, message
            assert "EXPLAIN" not in message, message
            conn.rollback()  # DuckDB: a failed statement aborts the transaction
        assert conn.execute("SELECT ?,?", (3, 4)).fetchall() == [(3, 4)]


def test_what_only_exdb_cannot_read_is_not_supported(cluster: LocalCluster) -> None:
    with _connect(cluster, True) as conn:
        if _engine(cluster) == "sqlite":
            sql, params = "SELECT ?1 + 1", (5,)  # SQLite's numbered parameter
        else:
            sql, params = "SELECT x'00' AS b", None  # DuckDB reads x'..' as a bit string
        with pytest.raises(exdb.NotSupportedError, match="exdb cannot plan this statement"):
            conn.execute(sql, params)
        conn.rollback()
        with pytest.raises(exdb.ProgrammingError, match="line 1, column"):
            conn.explain("SELECT 1 +* 2")


# --- exception classes on every connection --------------------------------------------------


def test_every_connection_carries_the_exception_classes(cluster: LocalCluster) -> None:
    names = [
        "Warning", "Error", "InterfaceError", "DatabaseError", "DataError", "OperationalError",
        "IntegrityError", "InternalError", "ProgrammingError", "NotSupportedError",
    ]  # fmt: skip

    def check(conn: Any) -> None:
        for name in names:
            assert getattr(conn, name) is getattr(exdb, name), (type(conn), name)

    for distributed in (False, True):
        with _connect(cluster, distributed) as conn:
            check(conn)
            with pytest.raises(conn.ProgrammingError):
                conn.execute("SELECT * FROM no_such_table")
            conn.rollback()  # DuckDB: the failed statement aborted the transaction

    async def main() -> None:
        for conn in (
            await exdb.connect_async(cluster.nodes[0]),
            await exdb.connect_async(nodes=list(cluster.nodes)),
        ):
            check(conn)
            await conn.close()

    asyncio.run(main())
    with exdb.connect(nodes=list(cluster.nodes), async_=True, nWorkers=1) as workers:
        check(workers)


# --- description on empty results -----------------------------------------------------------


@BOTH
def test_description_has_types_on_an_empty_result(cluster: LocalCluster, distributed: bool) -> None:
    table = f"empty_{int(distributed)}"
    with _connect(cluster, distributed) as conn:
        conn.execute(f"CREATE TABLE {table} (k INTEGER PRIMARY KEY, s TEXT, r REAL, b BLOB)")
        for sql in (
            f"SELECT k, s, r, b FROM {table}",
            f"SELECT k, s, r, b FROM {table} WHERE k = 1",
            f"SELECT k, s, r, b FROM {table} ORDER BY s LIMIT 2",
        ):
            cur = conn.execute(sql)
            assert cur.fetchall() == []
            types = [d[1] for d in cur.description]
            assert types[0] == exdb.NUMBER, (sql, types)
            assert types[1] == exdb.STRING, (sql, types)
            assert types[2] == exdb.NUMBER, (sql, types)
            assert types[3] == exdb.BINARY, (sql, types)
        # DDL and DML have no result set (DuckDB answers them with a status row).
        assert conn.execute(f"CREATE INDEX {table}_s ON {table} (s)").description is None
        cur = conn.execute(f"INSERT INTO {table} VALUES (?, ?, ?, ?)", (1, "a", 1.5, b"\0"))
        assert cur.description is None and cur.rowcount == 1
        conn.rollback()


# --- NumPy and pandas values as parameters --------------------------------------------------

_TS = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456)
# (the value given, the plain Python value it stands for, its column type)
CASES: list[tuple[Any, Any, str]] = [
    (np.int64(7), 7, "BIGINT"),
    (np.int32(-3), -3, "INTEGER"),
    (np.uint8(200), 200, "INTEGER"),
    (np.float64(1.5), 1.5, "DOUBLE"),
    (np.float32(0.1), float(np.float32(0.1)), "DOUBLE"),
    (np.float64("nan"), float("nan"), "DOUBLE"),
    (float("nan"), float("nan"), "DOUBLE"),
    (np.bool_(True), True, "BOOLEAN"),
    (np.str_("héllo"), "héllo", "VARCHAR"),
    (np.datetime64("2024-05-06T07:08:09.123456"), _TS, "TIMESTAMP"),
    (np.datetime64("2024-05-06T07:08:09.123456000", "ns"), _TS, "TIMESTAMP"),
    (np.datetime64("2024-05-06"), datetime.date(2024, 5, 6), "DATE"),
    (np.datetime64("NaT"), None, "TIMESTAMP"),
    (pd.Timestamp("2024-05-06 07:08:09.123456"), _TS, "TIMESTAMP"),
    (pd.Timedelta(seconds=90), datetime.timedelta(seconds=90), "INTERVAL"),
    (pd.NA, None, "BIGINT"),
    (pd.NaT, None, "TIMESTAMP"),
    (None, None, "VARCHAR"),
    (decimal.Decimal("1.250"), decimal.Decimal("1.250"), "DECIMAL(10,3)"),
]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@BOTH
def test_numpy_and_pandas_parameters_store_as_plain_values(
    cluster: LocalCluster, distributed: bool
) -> None:
    duck = _engine(cluster) == "duckdb"
    with _connect(cluster, distributed) as conn:
        for i, (given, plain, kind) in enumerate(CASES):
            table = f"p{i}_{int(distributed)}"
            conn.execute(f"CREATE TABLE {table} (k INTEGER PRIMARY KEY, v {kind})")
            conn.commit()
            try:
                conn.execute(f"INSERT INTO {table} VALUES (?, ?)", (1, plain))
            except exdb.Error as exc:  # SQLite binds no datetime: the NumPy value neither
                assert not duck
                conn.rollback()
                with pytest.raises(type(exc)):
                    conn.execute(f"INSERT INTO {table} VALUES (?, ?)", (2, given))
                conn.rollback()
                continue
            conn.execute(f"INSERT INTO {table} VALUES (?, ?)", (np.int64(2), given))
            conn.executemany(f"INSERT INTO {table} VALUES (?, ?)", [(np.int16(3), given)])
            stored = conn.execute(f"SELECT k, v FROM {table} ORDER BY k").fetchall()
            assert [k for k, _ in stored] == [1, 2, 3]
            first = stored[0][1]
            assert all(_same(v, first) for _, v in stored), (given, stored)
            # The key as a NumPy value finds its row (a distribution key hashes the plain value).
            row = conn.execute(f"SELECT k FROM {table} WHERE k = ?", (np.int64(2),)).fetchall()
            assert row == [(2,)]
        conn.rollback()


def test_parameters_that_cannot_be_exact_are_refused(cluster: LocalCluster) -> None:
    with _connect(cluster, True) as conn, _connect(cluster, False) as one:
        for c in (conn, one):
            with pytest.raises(exdb.DataError, match="finer than a microsecond"):
                c.execute("SELECT ?", (np.datetime64("2024-05-06T07:08:09.123456789", "ns"),))
            with pytest.raises(exdb.DataError, match="finer than a microsecond"):
                c.execute("SELECT ?", (pd.Timestamp("2024-05-06 07:08:09.123456789"),))
            with pytest.raises(exdb.ProgrammingError, match="not one value"):
                c.execute("SELECT ?", (np.array([1, 2]),))


def test_numpy_parameters_on_the_async_and_worker_doors(cluster: LocalCluster) -> None:
    async def main() -> list[Any]:
        out = []
        for conn in (
            await exdb.connect_async(cluster.nodes[0]),
            await exdb.connect_async(nodes=list(cluster.nodes)),
        ):
            cur = await conn.execute("SELECT ?, ?, ?", (np.int64(5), np.float32(0.5), pd.NA))
            out.append(await cur.fetchall())
            await conn.close()
        return out

    assert asyncio.run(main()) == [[(5, 0.5, None)], [(5, 0.5, None)]]
    with exdb.connect(nodes=list(cluster.nodes), async_=True, nWorkers=1) as workers:
        assert workers.execute("SELECT ?, ?", (np.int64(5), np.bool_(False))) == [(5, False)]
