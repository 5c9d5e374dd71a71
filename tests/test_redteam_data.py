"""Red-team findings on the data paths (merge order, final stage, Arrow types, keys, COPY), each
checked through real servers against one in-process database holding all the rows."""

from __future__ import annotations

import io
import math
import random
from collections.abc import Iterator
from typing import Any

import pytest

import exdb
from exdb.cluster import LocalCluster

duckdb = pytest.importorskip("duckdb")


@pytest.fixture(scope="module")
def duck3() -> Iterator[LocalCluster]:
    """Three DuckDB shards."""
    with LocalCluster(3, engine="duckdb") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def duck1() -> Iterator[LocalCluster]:
    """One DuckDB shard."""
    with LocalCluster(1, engine="duckdb") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def lite2() -> Iterator[LocalCluster]:
    """Two SQLite shards."""
    with LocalCluster(2, engine="sqlite") as cluster:
        yield cluster


_OPEN: list[Any] = []


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    """Every connection a test opens is closed after it."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def _connect(nodes: Any) -> Any:
    conn = exdb.connect(nodes=list(nodes), autocommit=True)
    _OPEN.append(conn)
    return conn


def _norm(value: Any) -> Any:
    """Values comparable across drivers: NaN as a marker, LIST tuples as lists."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


def _load(cluster: LocalCluster, ddl: str, rows: list[tuple[Any, ...]]) -> tuple[Any, Any]:
    """The rows in a distributed table and in one in-process DuckDB; (exdb cursor, duckdb)."""
    conn = _connect(cluster.nodes)
    cur = conn.cursor()
    one = duckdb.connect()
    marks = ", ".join("?" * len(rows[0]))
    name = ddl.split()[2]
    for target in (cur, one):
        target.execute(ddl)
        target.executemany(f"INSERT INTO {name} VALUES ({marks})", rows)
    return cur, one


@pytest.mark.parametrize("direction", ["", " DESC", " NULLS FIRST", " DESC NULLS LAST"])
def test_nan_orders_as_duckdb_across_shards(duck3: LocalCluster, direction: str) -> None:
    """NaN sorts above +inf in DuckDB; the shards' sorted streams merged as Python floats put
    it anywhere (every comparison with NaN is false)."""
    specials = [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 1e308, None, -1.5]
    rows = [(i, specials[i % len(specials)]) for i in range(60)]
    cur, one = _load(
        duck3, f"CREATE TABLE fnan{len(direction)} (k BIGINT PRIMARY KEY, f DOUBLE)", rows
    )
    sql = f"SELECT f, k FROM fnan{len(direction)} ORDER BY f{direction}, k"
    assert _norm(cur.execute(sql).fetchall()) == _norm(one.execute(sql).fetchall())
    sql = f"SELECT f FROM fnan{len(direction)} ORDER BY f{direction} LIMIT 12"
    assert _norm(cur.execute(sql).fetchall()) == _norm(one.execute(sql).fetchall())
    sql = f"SELECT DISTINCT f FROM fnan{len(direction)} ORDER BY f{direction}"  # NaN is one value
    assert _norm(cur.execute(sql).fetchall()) == _norm(one.execute(sql).fetchall())


def _nested_rows(n: int) -> list[tuple[Any, ...]]:
    rnd = random.Random(13)

    def pick(options: list[Any]) -> Any:
        return rnd.choice(options)

    rows = []
    for i in range(n):
        lst = None if i % 10 == 0 else [pick([None, 0, 1, 2]) for _ in range(rnd.randint(0, 3))]
        dbl = None if i % 9 == 0 else [pick([None, 0.0, float("nan"), float("inf"), -1.5])]
        st = None if i % 11 == 0 else {"a": pick([None, 0, 1]), "b": pick([None, "x", "y"])}
        mp = None if i % 8 == 0 else {pick(["a", "b", "c"]): pick([0, 1, None])}
        rows.append((i, lst, dbl, st, mp))
    return rows


@pytest.mark.parametrize("column", ["l", "d", "s", "m"])
@pytest.mark.parametrize("direction", ["", " DESC", " NULLS FIRST"])
def test_nested_columns_order_as_duckdb_across_shards(
    duck3: LocalCluster, column: str, direction: str
) -> None:
    """ORDER BY a LIST, STRUCT or MAP column over several shards: DuckDB's order (a NULL
    inside the value above any value), not a TypeError from comparing dicts or None."""
    table = f"nest_{column}{len(direction)}"
    cur, one = _load(
        duck3,
        f"CREATE TABLE {table} (k BIGINT PRIMARY KEY, l INTEGER[], d DOUBLE[],"
        " s STRUCT(a INTEGER, b VARCHAR), m MAP(VARCHAR, INTEGER))",
        _nested_rows(150),
    )
    sql = f"SELECT {column} FROM {table} ORDER BY {column}{direction}"
    assert _norm(cur.execute(sql).fetchall()) == _norm(one.execute(sql).fetchall())


def test_final_stage_over_a_list_column_runs_twice(duck1: LocalCluster) -> None:
    """A table whose DDL has a DuckDB-only type (INTEGER[]): the final stage's copy of it was
    created, then its name was read with the SQLite dialect, which failed, so it was never
    dropped and every later statement over the table failed with "already exists"."""
    conn = _connect(duck1.nodes)
    cur = conn.cursor()
    cur.execute("CREATE TABLE lists (k BIGINT PRIMARY KEY, l INTEGER[])")
    cur.execute("INSERT INTO lists VALUES (1, [1, 2]), (2, NULL)")
    for _ in range(3):
        cur.execute("SELECT * FROM lists ORDER BY k")
        assert _norm(cur.fetchall()) == [[1, [1, 2]], [2, None]]


def test_arrow_map_column_is_a_map(duck3: LocalCluster) -> None:
    """A MAP column in a small result (rows, not Arrow IPC, on the wire) was typed from its
    values as a struct of every key: a map {'a': 1} came back as {'a': 1, 'b': None}."""
    pa = pytest.importorskip("pyarrow")
    rows = [(1, {"a": 1}, [1, None]), (2, {"b": 2, "c": None}, []), (3, None, None)]
    cur, one = _load(
        duck3,
        "CREATE TABLE maps (k BIGINT PRIMARY KEY, m MAP(VARCHAR, INTEGER), l INTEGER[])",
        rows,
    )
    sql = "SELECT * FROM maps ORDER BY k"
    table = cur.execute(sql).fetch_arrow_table()
    expected = one.sql(sql).to_arrow_table()
    assert table.schema.field("m").type == expected.schema.field("m").type
    assert pa.types.is_map(table.schema.field("m").type)
    assert table.schema.field("l").type == expected.schema.field("l").type
    assert table.column("m").to_pylist() == expected.column("m").to_pylist()
    assert table.column("m").to_pylist() == [[("a", 1)], [("b", 2), ("c", None)], None]


def test_null_rowid_key_is_refused_on_several_shards(lite2: LocalCluster) -> None:
    """A NULL INTEGER PRIMARY KEY that distributes the table: SQLite makes up the key on the
    shard the NULL was placed on, so keys repeat across shards and a point query misses the
    row. Refused on every path (INSERT, executemany, copy_from); nothing is stored."""
    conn = _connect(lite2.nodes)
    cur = conn.cursor()
    cur.execute("CREATE TABLE nk (k INTEGER PRIMARY KEY, v INTEGER)")
    with pytest.raises(exdb.NotSupportedError, match="NULL k"):
        cur.execute("INSERT INTO nk VALUES (NULL, 1)")
    with pytest.raises(exdb.NotSupportedError, match="NULL k"):
        cur.execute("INSERT INTO nk VALUES (?, ?)", (None, 1))
    with pytest.raises(exdb.NotSupportedError, match="NULL k"):
        cur.executemany("INSERT INTO nk VALUES (?, ?)", [(5, 1), (None, 2)])
    with pytest.raises(exdb.NotSupportedError, match="NULL k"):
        cur.copy_from(io.StringIO("k,v\n6,1\n,2\n,3\n"), "nk")
    with pytest.raises(exdb.NotSupportedError, match="NULL k"):
        cur.execute("INSERT INTO nk SELECT NULL, 4")
    assert cur.execute("SELECT * FROM nk").fetchall() == []
    cur.execute("INSERT INTO nk VALUES (1, 1)")  # a given key still goes in
    assert cur.execute("SELECT * FROM nk WHERE k = 1").fetchall() == [(1, 1)]


def test_null_rowid_key_on_one_node_is_sqlites(start_server: Any) -> None:
    """On one node the generated key is unique: the INSERT behaves as sqlite3's."""
    node = start_server("--engine", "sqlite").node
    cur = _connect([node]).cursor()
    cur.execute("CREATE TABLE nk1 (k INTEGER PRIMARY KEY, v INTEGER)")
    cur.execute("INSERT INTO nk1 VALUES (NULL, 7)")
    assert cur.execute("SELECT * FROM nk1").fetchall() == [(1, 7)]


@pytest.mark.parametrize("engine_name", ["sqlite", "duckdb"])
@pytest.mark.parametrize("field", ["\u0661\u0662", "\uff11\uff12", "1.\uff15"])
def test_copy_refuses_non_ascii_digits(start_server: Any, engine_name: str, field: str) -> None:
    """Python's int() and float() read Arabic-Indic and full-width digits as 12;
    PostgreSQL's COPY, DuckDB and sqlite3 do not take them as numbers: DataError, no row."""
    node = start_server("--engine", engine_name).node
    cur = _connect([node]).cursor()
    kind = "DOUBLE" if "." in field else "INTEGER"
    cur.execute(f"CREATE TABLE nd (k INTEGER PRIMARY KEY, v {kind})")
    cur.execute(f"CREATE TABLE nd1 (v {kind})")
    with pytest.raises(exdb.DataError, match="line 2"):  # two columns: pyarrow's parser first
        cur.copy_from(io.StringIO(f"k,v\n1,{field}\n2,3\n"), "nd")
    with pytest.raises(exdb.DataError, match="line 3"):  # one column: the csv module's
        cur.copy_from(io.StringIO(f"v\n2\n{field}\n"), "nd1")
    assert cur.execute("SELECT count(*) FROM nd").fetchall() == [(0,)]
    assert cur.execute("SELECT count(*) FROM nd1").fetchall() == [(0,)]


def test_executemany_keeps_maps_and_lists_as_sent(duck1: LocalCluster, duck3: LocalCluster) -> None:
    """A DuckDB node inserted a batch's column of dicts or lists as one list parameter, which
    DuckDB converts as a whole: each MAP gained every other row's keys (as NULLs), and [1]
    next to [1.5] was stored in a VARCHAR[] column as ['1.0']. Each value converts alone."""
    rows = [(1, {"a": 0}, [1]), (2, {"b": 1, "c": None}, [1.5]), (3, None, None)]
    ddl = "CREATE TABLE mv (k BIGINT PRIMARY KEY, m MAP(VARCHAR, INTEGER), l VARCHAR[])"
    for cluster in (duck1, duck3):
        cur, one = _load(cluster, ddl, rows)
        for sql in ("SELECT * FROM mv ORDER BY k", "SELECT DISTINCT m FROM mv ORDER BY m"):
            assert _norm(cur.execute(sql).fetchall()) == _norm(one.execute(sql).fetchall())
        cur.execute("DROP TABLE mv")
