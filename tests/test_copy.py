"""COPY done right: server-side file statements exact or refused on a distributed connection, and
client-side COPY (cursor.copy_from / copy_to on every door, ``exdb import``) through real
servers, both engines, checked against DuckDB's own CSV reader and writer on the same file."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import random
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

import exdb
from exdb import copying
from exdb.cluster import LocalCluster
from exdb.distributed.placement import shard_of

ENGINES = ["sqlite", "duckdb"]
TEXTS = ["", "plain", "a,b", 'say "hi"', "line1\nline2", "ünïcødé 日本", " spaced ", "tab\there",
         "crlf\r\nin", '"', ",", "NULL", "\\N"]  # fmt: skip


class Cluster:
    """Two shards of one engine, allowed to reach one directory (so that a refusal is the
    planner's, not the sandbox's)."""

    def __init__(self, engine: str, files: Path) -> None:
        self.engine = engine
        self.files = files
        self.cluster = LocalCluster(2, engine=engine, extra_args=["--allow-files", str(files)])
        self.table = 0

    @property
    def nodes(self) -> list[str]:
        return list(self.cluster.nodes)

    def connect(self, **options: Any) -> Any:
        return exdb.connect(nodes=self.nodes, autocommit=True, **options)

    def new_table(self, conn: Any, columns: str = "id INTEGER PRIMARY KEY, n BIGINT, x DOUBLE,"
                  " s TEXT") -> str:  # fmt: skip
        self.table += 1
        name = f"t{self.table}"
        conn.execute(f"CREATE TABLE {name} ({columns})")
        return name


@pytest.fixture(scope="module", params=ENGINES)
def shards(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    files = tmp_path_factory.mktemp(f"files-{request.param}")
    c = Cluster(str(request.param), files)
    with c.cluster:
        yield c


@pytest.fixture(params=["arrow", "csv"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test that takes it runs with pyarrow's parser and with the csv module's."""
    if request.param == "csv":
        monkeypatch.setattr(copying, "_arrow_parser", lambda reader: None)
    else:
        pytest.importorskip("pyarrow")
    return str(request.param)


# --- data -----------------------------------------------------------------------------------


def _field(value: Any, rng: random.Random) -> str:
    """A CSV field by PostgreSQL's rules: NULL is an unquoted empty field, text is quoted when
    it must be (and sometimes when it need not)."""
    if value is None:
        return ""
    text = repr(value) if isinstance(value, float) else str(value)
    if text == "" or any(c in text for c in ',"\r\n') or rng.random() < 0.2:
        return '"' + text.replace('"', '""') + '"'
    return text


def make_rows(count: int, seed: int = 7) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        n = None if rng.random() < 0.1 else rng.randrange(-(10**12), 10**12)
        x = None if rng.random() < 0.1 else rng.choice([rng.random() * 1e6, -0.5, 1e-300, 3.0])
        s = (
            None
            if rng.random() < 0.1
            else rng.choice(TEXTS) + ("" if rng.random() < 0.5 else str(i))
        )
        rows.append((i * 7 - 300, n, x, s))
    return rows


def write_csv(path: Path, rows: list[tuple[Any, ...]], header: bool = True, delimiter: str = ",",
              names: tuple[str, ...] = ("id", "n", "x", "s")) -> None:  # fmt: skip
    rng = random.Random(3)
    with open(path, "w", encoding="utf-8", newline="") as f:
        if header:
            f.write(delimiter.join(names) + "\r\n")
        for row in rows:
            f.write(delimiter.join(_field(v, rng) for v in row) + "\n")


def duckdb_reads(path: Path, header: bool = True, delimiter: str = ",") -> list[tuple[Any, ...]]:
    """The oracle: DuckDB's own CSV reader, with the column types given and PostgreSQL's NULL
    rule (a quoted empty field is text)."""
    columns = "{'id': 'INTEGER', 'n': 'BIGINT', 'x': 'DOUBLE', 's': 'VARCHAR'}"
    sql = (
        f"SELECT * FROM read_csv('{path}', header={str(header).lower()}, delim='{delimiter}',"
        f" quote='\"', escape='\"', columns={columns}, allow_quoted_nulls=false,"
        " strict_mode=false)"  # (its strict mode refuses a file mixing \r\n and \n)
    )
    return sorted(duckdb.sql(sql).fetchall(), key=lambda r: r[0])


def table_rows(conn: Any, table: str) -> list[tuple[Any, ...]]:
    return sorted(conn.execute(f"SELECT id, n, x, s FROM {table}").fetchall(), key=lambda r: r[0])


def assert_placed(conn: Any, table: str, total: int) -> None:
    """Every row once, on the shard its key hashes to (asked of each node with its prefix)."""
    seen = 0
    for node in (1, 2):
        ids = [r[0] for r in conn.execute(f"{node}:SELECT id FROM {table}").fetchall()]
        assert all(shard_of(i, "INTEGER", 2) == node - 1 for i in ids)
        seen += len(ids)
    assert seen == total


# --- server-side file statements on a distributed connection -----------------------------------


def test_server_side_file_statements_are_refused(shards: Cluster) -> None:
    files = shards.files
    (files / "in.csv").write_text("id,n,x,s\n1,2,3.0,a\n2,3,4.0,b\n")
    with shards.connect() as conn:
        table = shards.new_table(conn)
        conn.execute(f"INSERT INTO {table} VALUES (1, 1, 1.0, 'a'), (2, 2, 2.0, 'b')")
        refused = [
            (f"COPY {table} TO '{files}/out.csv'", "copy_to"),
            (f"COPY {table} FROM '{files}/in.csv'", "copy_from"),
            (f"COPY (SELECT * FROM {table}) TO '{files}/out.csv'", "copy_to"),
            (f"ATTACH '{files}/side.db' AS side", "node prefix"),
        ]
        if shards.engine == "duckdb":
            refused += [
                (f"EXPORT DATABASE '{files}/export'", "copy_to"),
                (f"IMPORT DATABASE '{files}/export'", "copy_from"),
                (
                    f"SELECT * FROM {table} JOIN read_csv('{files}/in.csv') f ON f.id = {table}.id",
                    "copy_from",
                ),
                (
                    f"SELECT * FROM read_csv('{files}/in.csv') f LEFT JOIN {table} t"
                    " ON f.id = t.id",
                    "outer join",
                ),
                (
                    f"UPDATE {table} SET n = (SELECT max(n) FROM read_csv('{files}/in.csv'))",
                    "every node would read",
                ),
                (f"SELECT * FROM query_table('{table}')", "cannot see"),
            ]
        else:
            refused.append((f"VACUUM INTO '{files}/copy.db'", "copy_to"))
        for sql, hint in refused:
            with pytest.raises(exdb.NotSupportedError, match=hint) as info:
                conn.execute(sql)
            assert info.value.node is None  # the planner's refusal: nothing was sent
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (2,)
        assert table_rows(conn, table) == [(1, 1, 1.0, "a"), (2, 2, 2.0, "b")]
        conn.execute("VACUUM")  # no file: every node runs it, as before
    assert sorted(os.listdir(files)) == ["in.csv"]


def test_a_file_read_alone_runs_on_one_node(shards: Cluster) -> None:
    if shards.engine != "duckdb":
        pytest.skip("SQLite has no file-reading table functions")
    path = shards.files / "read.csv"
    rows = [(i, i * 2, i / 4, f"r{i}") for i in range(50)]
    path.write_text("id,n,x,s\n" + "".join(f"{i},{n},{x!r},{s}\n" for i, n, x, s in rows))
    with shards.connect() as conn:
        assert sorted(conn.execute(f"SELECT * FROM read_csv('{path}')").fetchall()) == rows
        assert sorted(conn.execute(f"SELECT * FROM '{path}'").fetchall()) == rows
        table = shards.new_table(conn)
        cur = conn.execute(f"INSERT INTO {table} SELECT * FROM read_csv('{path}')")
        assert cur.rowcount == 50
        assert table_rows(conn, table) == rows
        assert_placed(conn, table, 50)
        # A node prefix addresses one node on purpose: node 1 writes its own rows only.
        conn.execute(f"1:COPY {table} TO '{shards.files}/node1.csv' (HEADER)")
        written = (shards.files / "node1.csv").read_text().splitlines()[1:]
        node1 = conn.execute(f"1:SELECT count(*) FROM {table}").fetchone()[0]
        assert len(written) == node1 < 50


def test_a_single_node_connection_copies_as_its_engine_does(shards: Cluster) -> None:
    if shards.engine != "duckdb":
        pytest.skip("SQLite has no COPY statement")
    host, port = shards.nodes[0].rsplit(":", 1)
    with exdb.connect(host, int(port), autocommit=True) as one:
        one.execute("CREATE TABLE solo (a INTEGER, b VARCHAR)")
        one.execute("INSERT INTO solo VALUES (1, 'x'), (2, NULL)")
        one.execute(f"COPY solo TO '{shards.files}/solo.csv' (HEADER)")
        one.execute(f"COPY solo FROM '{shards.files}/solo.csv' (HEADER)")
        assert one.execute("SELECT count(*) FROM solo").fetchone() == (4,)
        with pytest.raises(exdb.ProgrammingError, match="not allowed"):
            one.execute("COPY solo TO '/tmp/outside-the-allowed-directory.csv'")
        one.execute("DROP TABLE solo")


# --- copy_from ----------------------------------------------------------------------------------


def test_copy_from_loads_what_duckdb_reads(shards: Cluster, parser: str, tmp_path: Path) -> None:
    rows = make_rows(3000)
    path = tmp_path / "rows.csv"
    write_csv(path, rows)
    expected = duckdb_reads(path)
    assert expected == sorted(rows, key=lambda r: r[0])  # the file says what the rows say
    with shards.connect() as conn:
        table = shards.new_table(conn)
        assert conn.cursor().copy_from(path, table) == len(rows)
        assert table_rows(conn, table) == expected
        assert_placed(conn, table, len(rows))
        conn.execute(f"DROP TABLE {table}")


def test_copy_from_options(shards: Cluster, parser: str, tmp_path: Path) -> None:
    rows = make_rows(200, seed=11)
    path = tmp_path / "semi.csv"
    write_csv(path, rows, header=False, delimiter=";")
    with shards.connect() as conn:
        table = shards.new_table(conn)
        cur = conn.cursor()
        assert cur.copy_from(path, table, header=False, delimiter=";") == 200
        assert table_rows(conn, table) == duckdb_reads(path, header=False, delimiter=";")
        # A subset of the columns, in another order; the others are NULL.
        other = shards.new_table(conn)
        lines = ["s,id", '"x,y",1', ",2", '"",3']
        assert cur.copy_from(lines, other, ["s", "id"]) == 3
        assert table_rows(conn, other) == [(1, None, None, "x,y"), (2, None, None, None),
                                           (3, None, None, "")]  # fmt: skip
        # \N as the NULL marker: unquoted it is NULL, quoted it is text, empty is text.
        marker = shards.new_table(conn)
        data = io.StringIO('id,n,x,s\n1,\\N,\\N,\\N\n2,5,1.5,"\\N"\n3,6,2.5,\n')
        assert cur.copy_from(data, marker, null="\\N") == 3
        assert table_rows(conn, marker) == [(1, None, None, None), (2, 5, 1.5, "\\N"),
                                            (3, 6, 2.5, "")]  # fmt: skip
        # Iterable sources: rows as tuples (values as given) and lines of bytes.
        tuples = shards.new_table(conn)
        assert cur.copy_from([(5, None, 0.5, "t"), (6, 1, None, None)], tuples) == 2
        assert cur.copy_from([b"id,s\n", b"7,\xc3\xa9\n"], tuples, ["id", "s"]) == 1
        assert table_rows(conn, tuples) == [(5, None, 0.5, "t"), (6, 1, None, None),
                                            (7, None, None, "é")]  # fmt: skip


def test_copy_from_jsonl_and_booleans(shards: Cluster) -> None:
    with shards.connect() as conn:
        table = shards.new_table(conn, "id INTEGER PRIMARY KEY, ok BOOLEAN, s TEXT")
        cur = conn.cursor()
        text = '{"id": 1, "ok": true, "s": "a"}\n[2, "false", null]\n\n{"ID": 3, "s": ""}\n'
        assert cur.copy_from(io.StringIO(text), table, format="jsonl") == 3
        csv_text = "id,ok,s\n4,t,x\n5,NO,y\n6,,z\n"
        assert cur.copy_from(io.StringIO(csv_text), table) == 3
        got = sorted(conn.execute(f"SELECT id, ok, s FROM {table}").fetchall())
        assert got == [(1, True, "a"), (2, False, None), (3, None, ""), (4, True, "x"),
                       (5, False, "y"), (6, None, "z")]  # fmt: skip
        with pytest.raises(exdb.DataError, match="line 2, column ok: 'maybe' is not a boolean"):
            cur.copy_from(io.StringIO("id,ok,s\n9,maybe,q\n"), table)
        out = io.StringIO()
        assert cur.copy_to(out, f"SELECT * FROM {table} ORDER BY id", format="jsonl") == 6
        first = json.loads(out.getvalue().splitlines()[0])
        assert first == {"id": 1, "ok": True, "s": "a"}


def test_a_bad_row_names_its_line_and_loads_nothing(shards: Cluster, parser: str) -> None:
    # Line 3 holds a quoted newline, so the bad value of the third record is on line 5.
    bad_value = 'id,n,x,s\n1,1,1.0,a\n2,2,2.0,"two\nlines"\n3,zz,3.0,c\n'
    bad_width = "id,n,x,s\n1,1,1.0,a\n2,2,2.0\n"
    with shards.connect() as conn:
        table = shards.new_table(conn)
        cur = conn.cursor()
        with pytest.raises(exdb.DataError, match=r"line 5, column n: 'zz' is not an integer"):
            cur.copy_from(io.StringIO(bad_value), table)
        with pytest.raises(exdb.DataError, match=r"line 3: expected 4 fields .*got 3"):
            cur.copy_from(io.StringIO(bad_width), table)
        with pytest.raises(exdb.DataError, match=r"line 2: .*"):
            cur.copy_from(io.StringIO('id,n,x,s\n1,1,1.0,"open\n'), table)
        # A good chunk before a bad one: nothing stays (all or nothing, autocommit).
        many = "id,n,x,s\n" + "".join(f"{i},{i},0.5,s\n" for i in range(30_000)) + "x,1,1,1\n"
        with pytest.raises(exdb.DataError, match="line 30002, column id"):
            cur.copy_from(io.StringIO(many), table)
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        # A duplicate key is the node's error, naming the lines of the rows it came with.
        cur.copy_from(io.StringIO("id,n,x,s\n1,1,1.0,a\n"), table)
        with pytest.raises(exdb.IntegrityError, match="lines 2-3"):
            cur.copy_from(io.StringIO("id,n,x,s\n2,1,1.0,a\n1,1,1.0,a\n"), table)
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
    # In a transaction: the failure rolls the transaction back, and says so.
    with shards.connect() as conn:
        conn.autocommit = False
        conn.execute(f"INSERT INTO {table} VALUES (100, 1, 1.0, 'before')")
        with pytest.raises(exdb.DataError, match="the open transaction was rolled back"):
            conn.cursor().copy_from(io.StringIO(bad_value), table)
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
        assert conn.cursor().copy_from(io.StringIO("id,n,x,s\n3,3,3.0,c\n"), table) == 1
        conn.rollback()  # it joined the transaction: rolled back with it
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)


def test_bad_arguments(shards: Cluster) -> None:
    with shards.connect() as conn:
        table = shards.new_table(conn)
        cur = conn.cursor()
        with pytest.raises(exdb.ProgrammingError, match="no such table"):
            cur.copy_from(["a"], "missing")
        with pytest.raises(exdb.ProgrammingError, match="no column nope"):
            cur.copy_from(["id"], table, ["nope"])
        with pytest.raises(exdb.ProgrammingError, match="format"):
            cur.copy_from(["id"], table, format="xml")
        with pytest.raises(exdb.ProgrammingError, match="delimiter"):
            cur.copy_from(["id"], table, delimiter='"')
        with pytest.raises(exdb.ProgrammingError, match="table name"):
            cur.copy_from(["id"], f"{table}; DROP TABLE {table}")
        with pytest.raises(exdb.InterfaceError, match="cannot open"):
            cur.copy_from(shards.files / "does-not-exist.csv", table)
        with pytest.raises(exdb.ProgrammingError, match="table name or a query"):
            cur.copy_to(io.StringIO(), f"DELETE FROM {table}")
        with pytest.raises(exdb.DataError, match="row 1: expected a sequence of 4 values"):
            cur.copy_from([{"id": 1, "n": 2, "x": 3.0, "s": "d"}], table)
        with pytest.raises(exdb.NotSupportedError, match="distribution column"):
            cur.copy_from(["n", "1"], table, ["n"])


def test_a_large_generator_streams_in_bounded_memory(shards: Cluster) -> None:
    count = 200_000
    pad = "p" * 100

    def rows() -> Iterator[tuple[Any, ...]]:
        for i in range(count):
            yield (i, i, i / 2, pad)

    with shards.connect() as conn:
        table = shards.new_table(conn)
        tracemalloc.start()
        try:
            assert conn.cursor().copy_from(rows(), table) == count
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # Held whole, the rows alone would take ~60 MB; streamed, a few chunks at a time.
        assert peak < 25_000_000, peak
        assert conn.execute(f"SELECT count(*), sum(id) FROM {table}").fetchone() == (
            count,
            count * (count - 1) // 2,
        )
        conn.execute(f"DROP TABLE {table}")


# --- copy_to ----------------------------------------------------------------------------------


def test_copy_to_writes_what_one_database_writes(shards: Cluster, tmp_path: Path) -> None:
    rows = make_rows(500, seed=5)
    with shards.connect() as conn:
        table = shards.new_table(conn)
        conn.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?)", rows)
        path = tmp_path / "out.csv"
        query = f"SELECT * FROM {table} ORDER BY id"
        assert conn.cursor().copy_to(path, query) == len(rows)
        written = path.read_text(encoding="utf-8")
        # One database holding every row writes the same file (DuckDB's COPY, PostgreSQL's
        # CSV rules: NULL unquoted empty, "" for empty text).
        one = duckdb.connect()
        one.execute("CREATE TABLE t (id INTEGER, n BIGINT, x DOUBLE, s VARCHAR)")
        one.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
        reference = tmp_path / "duckdb.csv"
        one.execute(f"COPY (SELECT * FROM t ORDER BY id) TO '{reference}' (HEADER)")
        assert duckdb_reads(path) == duckdb_reads(reference) == sorted(rows)
        if shards.engine == "duckdb":
            assert written == reference.read_text(encoding="utf-8")
        # And it loads back into an equal table (every door writes the same text).
        again = shards.new_table(conn)
        assert conn.cursor().copy_from(path, again) == len(rows)
        assert table_rows(conn, again) == table_rows(conn, table)
        # A table name; no header; a binary file object.
        out = io.BytesIO()
        assert conn.cursor().copy_to(out, table, header=False, delimiter="|") == len(rows)
        parsed = list(csv.reader(io.StringIO(out.getvalue().decode()), delimiter="|"))
        assert len(parsed) == len(rows)


# --- every door -----------------------------------------------------------------------------------


def test_every_door(shards: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "door.csv"
    write_csv(path, make_rows(100, seed=9))
    expected = duckdb_reads(path)
    host, port = shards.nodes[0].rsplit(":", 1)
    with shards.connect() as conn:
        tables = [shards.new_table(conn) for _ in range(4)]
    with exdb.connect(nodes=shards.nodes) as dist:
        assert dist.cursor().copy_from(path, tables[0]) == 100
        dist.commit()
    with exdb.connect(host, int(port)) as one:
        one.execute(f"CREATE TABLE solo_{tables[1]} (id INTEGER, n BIGINT, x DOUBLE, s TEXT)")
        assert one.cursor().copy_from(path, f"solo_{tables[1]}") == 100
        out = io.StringIO()
        assert one.cursor().copy_to(out, f"SELECT * FROM solo_{tables[1]} ORDER BY id") == 100
        one.execute(f"DROP TABLE solo_{tables[1]}")
        one.commit()

    async def doors() -> tuple[str, str]:
        async with await exdb.connect_async(nodes=shards.nodes, autocommit=True) as adist:
            assert await adist.cursor().copy_from(path, tables[2]) == 100
            aout = io.StringIO()
            assert await adist.cursor().copy_to(aout, f"SELECT * FROM {tables[2]} ORDER BY id")
        conn = await exdb.connect_async(host, int(port), autocommit=True)
        try:
            cur = conn.cursor()
            await cur.execute("CREATE TABLE asolo (id INTEGER, n BIGINT, x DOUBLE, s TEXT)")
            assert await cur.copy_from(path, "asolo") == 100
            sout = io.StringIO()
            assert await cur.copy_to(sout, "SELECT * FROM asolo ORDER BY id") == 100
            await cur.execute("DROP TABLE asolo")
        finally:
            await conn.close()
        return aout.getvalue(), sout.getvalue()

    from_async_dist, from_async_one = asyncio.run(doors())
    assert from_async_dist == from_async_one == out.getvalue()
    with shards.connect() as conn:
        assert table_rows(conn, tables[0]) == table_rows(conn, tables[2]) == expected
        assert_placed(conn, tables[2], 100)


# --- exdb import ----------------------------------------------------------------------------------


def _exdb(*args: str) -> subprocess.CompletedProcess[str]:
    cli = [sys.executable, "-m", "exdb", *args]
    env = {k: v for k, v in os.environ.items() if k != "EXDB_PASSWORD"}
    return subprocess.run(cli, capture_output=True, text=True, timeout=120, env=env)


def test_exdb_import(shards: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "import.csv"
    rows = make_rows(1000, seed=21)
    write_csv(path, rows)
    with shards.connect() as conn:
        table = shards.new_table(conn)
    done = _exdb("import", "--nodes", ",".join(shards.nodes), table, str(path))
    assert done.returncode == 0, done.stderr
    assert f"imported 1,000 rows into {table}" in done.stdout
    with shards.connect() as conn:
        assert table_rows(conn, table) == duckdb_reads(path)
        subset = shards.new_table(conn)
    semi = tmp_path / "semi.csv"
    semi.write_text("5;x\n6;y\n")
    done = _exdb("import", "--nodes", ",".join(shards.nodes), "--no-header", "--delimiter", ";",
                 "--columns", "id,s", subset, str(semi))  # fmt: skip
    assert done.returncode == 0, done.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("id,n,x,s\n1,2,3.0,a\n2,oops,1.0,b\n")
    done = _exdb("import", "--nodes", ",".join(shards.nodes), subset, str(bad))
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0  # one line
    assert "line 3, column n: 'oops' is not an integer" in done.stderr
    with shards.connect() as conn:
        got = sorted(conn.execute(f"SELECT id, s FROM {subset}").fetchall())
        assert got == [(5, "x"), (6, "y")]
