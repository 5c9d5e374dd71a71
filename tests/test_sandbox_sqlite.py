"""The SQLite engine's sandbox: what a logged-in client may not do to the server's host.

Each attack runs against a real ``exdb serve --engine sqlite``; it must fail with a clear error of
the right class (ProgrammingError for "not allowed", as PostgreSQL's permission denied; DataError
for a value above the server's limit), create or change no file outside the database, leave the
server serving a session opened before the attack and a new one, and keep every committed row.
Durable servers are restarted on their file afterwards: the database still opens, intact.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import exdb
from exdb.cluster import ServerProcess

from _sandbox import KEPT, kept, seed

StartServer = Callable[..., ServerProcess]


# --- helpers -----------------------------------------------------------------------------------


def _sqlite(start_server: StartServer, *args: str, db: Path | None = None) -> ServerProcess:
    extra = ["--db", str(db)] if db is not None else []
    return start_server("--engine", "sqlite", *extra, *args)


def _tree(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (but the server's own database files) with size and mtime."""
    skipped = {str(p) + suffix for p in skip for suffix in ("", "-wal", "-shm", "-journal")}
    found: dict[str, tuple[int, int]] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if path in skipped:
                continue
            st = os.lstat(path)
            found[path] = (st.st_size, st.st_mtime_ns)
    return found


@contextlib.contextmanager
def _survives(server: ServerProcess, root: Path, *dbs: Path | None) -> Iterator[Any]:
    """Yields the attacker's connection (autocommit). Around it: a session opened before the
    attack still answers after it, a new session does too, the committed rows are all there,
    no file under ``root`` (but the servers' databases ``dbs``) appeared or changed, and the
    server process is alive."""
    skip = tuple(db for db in dbs if db is not None)
    files = _tree(root, skip)
    with exdb.connect(server.node, autocommit=True) as before:
        assert kept(before) == KEPT
        with exdb.connect(server.node, autocommit=True) as attacker:
            yield attacker
            assert attacker.execute("SELECT 1").fetchone() == (1,)  # its session goes on
        assert kept(before) == KEPT
    with exdb.connect(server.node) as fresh:
        assert kept(fresh) == KEPT
    assert server.proc is not None and server.proc.poll() is None
    assert _tree(root, skip) == files


def _refused(conn: Any, sql: str, *fragments: str, params: Any = None) -> exdb.Error:
    """``sql`` fails with ProgrammingError "not allowed: ..." naming the statement."""
    with pytest.raises(exdb.ProgrammingError) as info:
        conn.execute(sql, params)
    message = str(info.value)
    assert "not allowed" in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert info.value.statement == sql
    return info.value


def _restart(start_server: StartServer, server: ServerProcess, db: Path) -> ServerProcess:
    """Stop the server, start a new one on the same file; it must open and hold the rows."""
    assert server.stop() is not None
    again = _sqlite(start_server, db=db)
    with exdb.connect(again.node) as conn:
        assert kept(conn) == KEPT
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    return again


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


# --- files: ATTACH, VACUUM INTO --------------------------------------------------------------


def test_attach_reaches_no_file_by_default(start_server: StartServer, tmp_path: Path) -> None:
    server = _sqlite(start_server)
    seed(server.node)
    target = tmp_path / "created-by-attach.db"
    with _survives(server, tmp_path) as conn:
        for sql in (
            f"ATTACH DATABASE '{target}' AS x",
            f"ATTACH '{target}' AS x",
            f"ATTACH DATABASE 'file:{target}?mode=rwc' AS x",
            "ATTACH DATABASE ':memory:' AS m",
            "ATTACH DATABASE '' AS t",
        ):
            _refused(conn, sql, "ATTACH reaches files outside the database", "--allow-files")
        # The file name computed or bound: still refused, before anything is opened.
        _refused(conn, f"ATTACH DATABASE '{tmp_path}/' || 'x.db' AS x", "ATTACH")
        _refused(conn, "ATTACH DATABASE ? AS x", "ATTACH", params=(str(target),))
    # ... in a transaction, which goes on: its other statements still commit.
    with exdb.connect(server.node) as conn:
        conn.execute("INSERT INTO kept VALUES (100, 'in the transaction')")
        _refused(conn, f"ATTACH DATABASE '{target}' AS x", "ATTACH")
        conn.execute("DELETE FROM kept WHERE k = 100")
        conn.commit()
        assert kept(conn) == KEPT
    assert not target.exists()


def test_attach_of_another_servers_database_is_refused(
    start_server: StartServer, tmp_path: Path
) -> None:
    # Two servers on one host; a client of the first (with its password) must not reach the
    # second's file and change its rows past the second's password.
    victim_db = tmp_path / "victim.db"
    victim = _sqlite(start_server, "--password", "victim-secret", db=victim_db)
    with exdb.connect(victim.node, password="victim-secret") as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)")
        conn.executemany("INSERT INTO accounts VALUES (?, ?)", [(1, 100), (2, 200)])
        conn.commit()
    attacked = _sqlite(start_server, db=tmp_path / "attacker.db")
    seed(attacked.node)
    with _survives(attacked, tmp_path, victim_db, tmp_path / "attacker.db") as conn:
        _refused(conn, f"ATTACH DATABASE '{victim_db}' AS victim", "ATTACH")
        _refused(conn, "ATTACH DATABASE ? AS victim", "ATTACH", params=(str(victim_db),))
        with pytest.raises(exdb.ProgrammingError, match="no such table"):
            conn.execute("UPDATE victim.accounts SET balance = 0")
    with exdb.connect(victim.node, password="victim-secret") as conn:
        assert conn.execute("SELECT id, balance FROM accounts ORDER BY id").fetchall() == [
            (1, 100),
            (2, 200),
        ]
    _restart(start_server, attacked, tmp_path / "attacker.db")


def test_vacuum_into_writes_no_file_by_default(start_server: StartServer, tmp_path: Path) -> None:
    db = tmp_path / "main.db"
    server = _sqlite(start_server, db=db)
    seed(server.node)
    target = tmp_path / "copy.db"
    with _survives(server, tmp_path, db) as conn:
        _refused(conn, f"VACUUM INTO '{target}'", "VACUUM INTO writes files", "--allow-files")
        _refused(conn, "VACUUM main INTO ?", "VACUUM INTO", params=(str(target),))
        _refused(conn, "VACUUM INTO ':memory:'", "VACUUM INTO")
        _refused(conn, "/* a comment first */ VACUUM INTO '/dev/shm/exdb-sandbox.db'", "VACUUM")
        conn.execute("VACUUM")  # the plain one rebuilds the database in place: allowed
    assert not target.exists() and not os.path.exists("/dev/shm/exdb-sandbox.db")
    _restart(start_server, server, db)


# --- native code and memory addresses ---------------------------------------------------------


def test_fts3_tokenizer_cannot_crash_the_server(start_server: StartServer, tmp_path: Path) -> None:
    # The classic two statements: read the address of a tokenizer, register a fake one at an
    # address one chooses; the next FTS3 table that uses it jumps there (SIGSEGV at best).
    server = _sqlite(start_server)
    seed(server.node)
    with _survives(server, tmp_path) as conn:
        _refused(conn, "SELECT fts3_tokenizer('simple')", "fts3_tokenizer")
        _refused(conn, "SELECT hex(fts3_tokenizer('porter'))", "fts3_tokenizer")
        _refused(conn, "SELECT fts3_tokenizer('simple', x'4141414141414141')", "fts3_tokenizer")
        _refused(conn, "SELECT fts3_tokenizer(?, ?)", "fts3", params=("evil", b"A" * 8))
        # Hidden in a view or a trigger: refused when the statement that uses it is prepared.
        conn.execute("CREATE TEMP VIEW leak AS SELECT fts3_tokenizer('simple') AS p")
        _refused(conn, "SELECT p FROM leak", "fts3_tokenizer")
        conn.execute("CREATE TABLE fts_host (x TEXT)")
        conn.execute(
            "CREATE TRIGGER fts_host_ai AFTER INSERT ON fts_host "
            "BEGIN SELECT fts3_tokenizer('simple', x'4141414141414141'); END"
        )
        _refused(conn, "INSERT INTO fts_host VALUES ('x')", "fts3_tokenizer")
        # An FTS3 table with a built-in tokenizer still works.
        conn.execute("CREATE VIRTUAL TABLE notes USING fts3(body, tokenize=simple)")
        conn.execute("INSERT INTO notes VALUES ('the quick brown fox')")
        assert conn.execute("SELECT body FROM notes WHERE body MATCH 'quick'").fetchall() == [
            ("the quick brown fox",)
        ]


def test_native_code_and_the_server_log_are_out_of_reach(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = _sqlite(start_server)
    seed(server.node)
    with _survives(server, tmp_path) as conn:
        for sql in (
            "SELECT load_extension('/lib/x86_64-linux-gnu/libc.so.6')",
            "SELECT load_extension('/lib/x86_64-linux-gnu/libc.so.6', 'system')",
            "SELECT LOAD_EXTENSION('libc.so.6')",
        ):
            _refused(conn, sql, "load_extension", "native code")
        _refused(conn, "SELECT sqlite_log(1, 'a forged line in the server log')", "log")
        _refused(conn, "SELECT rtreenode(2, x'0001000000000000000100')", "r-tree")


# --- the schema --------------------------------------------------------------------------------


def test_writable_schema_cannot_corrupt_a_durable_database(
    start_server: StartServer, tmp_path: Path
) -> None:
    db = tmp_path / "main.db"
    server = _sqlite(start_server, db=db)
    seed(server.node)
    with _survives(server, tmp_path, db) as conn:
        _refused(conn, "PRAGMA writable_schema=ON", "writable_schema")
        _refused(conn, "PRAGMA writable_schema = 1", "writable_schema")
        _refused(conn, "PRAGMA main.writable_schema=RESET", "writable_schema")
        _refused(conn, "PRAGMA schema_version = 1", "schema_version")
        for sql in (
            "UPDATE sqlite_master SET sql = 'CREATE TABLE kept (broken' WHERE name = 'kept'",
            "UPDATE sqlite_schema SET rootpage = 1 WHERE name = 'kept'",
            "DELETE FROM sqlite_master",
            "INSERT INTO sqlite_master VALUES ('table', 'x', 'x', 99, 'CREATE TABLE x (')",
        ):
            with pytest.raises(exdb.ProgrammingError, match="may not be modified"):
                conn.execute(sql)
        assert conn.execute("PRAGMA writable_schema").fetchone() == (0,)  # reading is fine
    _restart(start_server, server, db)


def test_shadow_tables_and_unknown_modules_are_refused(
    start_server: StartServer, tmp_path: Path
) -> None:
    db = tmp_path / "main.db"
    server = _sqlite(start_server, db=db)
    seed(server.node)
    with _survives(server, tmp_path, db) as conn:
        conn.execute("CREATE VIRTUAL TABLE docs USING fts5(body)")
        conn.executemany("INSERT INTO docs VALUES (?)", [("alpha beta",), ("gamma delta",)])
        conn.execute("CREATE VIRTUAL TABLE boxes USING rtree(id, x0, x1)")
        conn.execute("INSERT INTO boxes VALUES (1, 0.0, 10.0)")
        for sql in (
            "INSERT INTO docs_data VALUES (10, x'00ff')",
            "UPDATE docs_data SET block = x'deadbeef'",
            "DELETE FROM docs_idx",
            "UPDATE docs_config SET v = 99",
            "DELETE FROM boxes_node",
            "UPDATE boxes_rowid SET nodeno = 7",
        ):
            with pytest.raises(exdb.ProgrammingError, match="may not be modified"):
                conn.execute(sql)
        for module in ("dbstat", "fts3tokenize", "sqlite_dbpage", "json_each", "no_such_mod"):
            _refused(
                conn,
                f"CREATE VIRTUAL TABLE v_{module} USING {module}(x)",
                "virtual table module",
                module,
            )
        assert conn.execute("SELECT body FROM docs WHERE docs MATCH 'gamma'").fetchall() == [
            ("gamma delta",)
        ]
    server = _restart(start_server, server, db)
    with exdb.connect(server.node) as conn:
        assert conn.execute("SELECT count(*) FROM docs WHERE docs MATCH 'alpha'").fetchone() == (1,)
        assert conn.execute("SELECT id FROM boxes WHERE x0 <= 5 AND x1 >= 5").fetchall() == [(1,)]


# --- pragmas -----------------------------------------------------------------------------------

SHARED_PRAGMAS = [
    "PRAGMA hard_heap_limit = 1",
    "PRAGMA soft_heap_limit = 1",
    "PRAGMA mmap_size = 1073741824",
    "PRAGMA threads = 8",
    "PRAGMA temp_store_directory = '/tmp'",
    "PRAGMA data_store_directory = '/tmp'",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA journal_mode = OFF",
    "PRAGMA main.journal_mode = MEMORY",
    "PRAGMA synchronous = OFF",
    "PRAGMA wal_autocheckpoint = 0",
    "PRAGMA wal_checkpoint(TRUNCATE)",
    "PRAGMA journal_size_limit = 0",
    "PRAGMA locking_mode = EXCLUSIVE",
    "PRAGMA cache_size = -100000000",
    "PRAGMA cache_size = 100000000",
    "PRAGMA page_size = 512",
    "PRAGMA auto_vacuum = FULL",
    "PRAGMA encoding = 'UTF-16'",
    "PRAGMA trusted_schema = ON",
    "PRAGMA legacy_alter_table = ON",
    "PRAGMA ignore_check_constraints = ON",
    "PRAGMA secure_delete = OFF",
    "PRAGMA shrink_memory",
    "PRAGMA database_list",
    "PRAGMA temp_store_directory",
    "SELECT * FROM pragma_database_list",
    "SELECT file FROM pragma_database_list WHERE name = 'main'",
    "PRAGMA no_such_pragma = 1",
]


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
def test_pragmas_that_reach_other_sessions_are_refused(
    start_server: StartServer, tmp_path: Path, durable: bool
) -> None:
    db = tmp_path / "main.db" if durable else None
    server = _sqlite(start_server, db=db)
    seed(server.node)
    with _survives(server, tmp_path, db) as conn:
        for sql in SHARED_PRAGMAS:
            _refused(conn, sql, "PRAGMA")
        # None took effect: the heap has no limit, the journal is still WAL.
        with exdb.connect(server.node, autocommit=True) as other:
            other.execute("CREATE TABLE big (b BLOB)")
            other.execute("INSERT INTO big VALUES (randomblob(4000000))")
            assert other.execute("SELECT length(b) FROM big").fetchone() == (4000000,)
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert other.execute("PRAGMA hard_heap_limit").fetchone() == (0,)
            other.execute("DROP TABLE big")
    if db is not None:
        _restart(start_server, server, db)


def test_per_session_and_read_only_pragmas_keep_working(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = _sqlite(start_server)
    seed(server.node)
    with _survives(server, tmp_path) as conn:
        conn.execute("CREATE TABLE child (id INTEGER PRIMARY KEY, k INTEGER REFERENCES kept(k))")
        conn.execute("CREATE INDEX child_k ON child (k)")
        assert [r[1] for r in conn.execute("PRAGMA table_info(kept)").fetchall()] == ["k", "v"]
        assert [r[1] for r in conn.execute("PRAGMA main.table_info(child)").fetchall()] == [
            "id",
            "k",
        ]
        assert [r[1] for r in conn.execute("PRAGMA index_list(child)").fetchall()] == ["child_k"]
        assert [r[2] for r in conn.execute("PRAGMA foreign_key_list(child)").fetchall()] == ["kept"]
        names = conn.execute("SELECT name FROM pragma_table_info('kept') ORDER BY cid")
        assert names.fetchall() == [("k",), ("v",)]
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        conn.execute("PRAGMA foreign_keys = ON")
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        with pytest.raises(exdb.IntegrityError, match="FOREIGN KEY"):
            conn.execute("INSERT INTO child VALUES (1, 999)")
        conn.execute("PRAGMA user_version = 7")
        assert conn.execute("PRAGMA user_version").fetchone() == (7,)
        conn.execute("PRAGMA cache_size = -2000")  # within the server's own bound
        assert conn.execute("PRAGMA cache_size").fetchone() == (-2000,)
        for read in ("journal_mode", "synchronous", "page_size", "schema_version"):
            assert conn.execute(f"PRAGMA {read}").fetchone() is not None
        conn.execute("PRAGMA optimize")
        conn.execute("ANALYZE")
        conn.execute("DROP TABLE child")


# --- values larger than a frame ----------------------------------------------------------------

HUGE = [
    "SELECT zeroblob(2000000000)",
    "SELECT length(zeroblob(2000000000))",
    "SELECT randomblob(2000000000)",
    "SELECT printf('%.*c', 2000000000, 'x')",
    "SELECT length(printf('%2000000000s', 'x'))",
    "SELECT replace(printf('%.*c', 500000, 'x'), 'x', 'xxxxx')",
    "SELECT hex(zeroblob(600000))",
    "SELECT length(x'00' || zeroblob(1048576))",
    "WITH RECURSIVE r(s, n) AS (SELECT 'x', 0 UNION ALL SELECT s || s, n + 1 FROM r WHERE n < 40)"
    " SELECT max(length(s)) FROM r",
    "SELECT length(group_concat(printf('%.*c', 100000, 'y'))) FROM kept, kept AS k2",
    "SELECT length(upper(zeroblob(2000000)))",
]


def test_values_above_the_frame_limit_are_refused_before_allocation(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = _sqlite(start_server, "--max-frame", "1048576")
    seed(server.node)
    pid = server.pid
    assert pid is not None
    with _survives(server, tmp_path) as conn:
        for sql in HUGE:
            with pytest.raises(exdb.DataError, match="maximum frame size") as info:
                conn.execute(sql)
            assert "1048576 bytes" in str(info.value) and info.value.statement == sql
        with pytest.raises(exdb.DataError, match="maximum frame size"):
            conn.execute("INSERT INTO kept VALUES (500, printf('%.*c', 2000000, 'z'))")
        # Below the limit, all is as before.
        assert conn.execute("SELECT length(zeroblob(500000))").fetchone() == (500000,)
        assert conn.execute("SELECT length(printf('%.*c', 400000, 'x'))").fetchone() == (400000,)
    # Nothing near the sizes asked for was ever allocated (generous: 2 GB were asked for).
    assert _peak_rss_kib(pid) < 400 * 1024


# --- one statement per request -----------------------------------------------------------------


def test_a_second_statement_is_refused_before_the_first_runs(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = _sqlite(start_server)
    seed(server.node)
    with _survives(server, tmp_path) as conn:
        for sql in (
            "INSERT INTO kept VALUES (100, 'x'); DROP TABLE kept",
            "SELECT 1; PRAGMA hard_heap_limit = 1",
            "DELETE FROM kept;\n-- a comment\nDELETE FROM kept",
            "/* first */ UPDATE kept SET v = 'gone'; ; SELECT 1",
        ):
            with pytest.raises(exdb.ProgrammingError, match="one statement at a time"):
                conn.execute(sql)
        with pytest.raises(exdb.ProgrammingError, match="one statement at a time"):
            conn.executemany("INSERT INTO kept VALUES (?, 'a'); DELETE FROM kept", [(101,)])
        # One statement with trailing comments, or ';' inside literals, runs.
        assert conn.execute("SELECT 'a;b'; -- done").fetchone() == ("a;b",)
        assert conn.execute("SELECT 2; /* done */").fetchone() == (2,)
        conn.execute("CREATE TEMP TABLE log (m TEXT)")
        conn.execute(
            "CREATE TEMP TRIGGER kept_au AFTER UPDATE ON kept BEGIN "
            "INSERT INTO log VALUES ('one'); INSERT INTO log VALUES ('two'); END;"
        )
        conn.execute("UPDATE kept SET v = v WHERE k = 0")
        assert conn.execute("SELECT m FROM log ORDER BY m").fetchall() == [("one",), ("two",)]


# --- --allow-files -----------------------------------------------------------------------------


def test_allow_files_opens_its_directories_only(start_server: StartServer, tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "escape").symlink_to(outside, target_is_directory=True)
    (allowed / "escape.db").symlink_to(outside / "linked.db")
    server = _sqlite(start_server, "--allow-files", str(allowed))
    seed(server.node)
    with _survives(server, outside) as conn:
        # Inside: ATTACH creates and writes, VACUUM INTO copies.
        conn.execute(f"ATTACH DATABASE '{allowed / 'side.db'}' AS side")
        conn.execute("CREATE TABLE side.t (x INTEGER)")
        conn.execute("INSERT INTO side.t SELECT k FROM kept")
        assert conn.execute("SELECT count(*) FROM side.t").fetchone() == (len(KEPT),)
        conn.execute("DETACH DATABASE side")
        # A bound file name is not seen when the statement is prepared: refused.
        _refused(conn, "ATTACH DATABASE ? AS side", "string literal", params=(str(allowed),))
        conn.execute(f"VACUUM INTO '{allowed / 'copy.db'}'")
        conn.execute("ATTACH DATABASE ':memory:' AS scratch")
        conn.execute("DETACH DATABASE scratch")
        # Outside, by a plain path, by '..', by a link to a directory or a file: refused.
        for path in (
            outside / "plain.db",
            allowed / ".." / "outside" / "dotdot.db",
            allowed / "escape" / "through-link.db",
            allowed / "escape.db",
            Path("/dev/shm/exdb-sandbox-escape.db"),
        ):
            _refused(conn, f"ATTACH DATABASE '{path}' AS x", "outside the directories")
            _refused(conn, f"VACUUM INTO '{path}'", "VACUUM INTO", "outside the directories")
        _refused(conn, f"ATTACH DATABASE 'file:{allowed}/uri.db' AS x", "URI")
        _refused(conn, f"ATTACH DATABASE '{allowed}/' || 'computed.db' AS x", "string literal")
        _refused(conn, f"ATTACH DATABASE '{allowed}' AS x", "outside the directories")
    assert os.listdir(outside) == []
    assert not os.path.exists("/dev/shm/exdb-sandbox-escape.db")
    assert sorted(p.name for p in allowed.iterdir()) == [
        "copy.db",
        "escape",
        "escape.db",
        "side.db",
    ]
    with contextlib.closing(sqlite3.connect(allowed / "copy.db")) as copy:
        assert copy.execute("SELECT k, v FROM kept ORDER BY k").fetchall() == KEPT


def test_allow_files_must_name_a_directory(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    args = ["--host", "127.0.0.1", "--port", "0", "--quiet", "--allow-files", str(missing)]
    server = ServerProcess(["--engine", "sqlite", *args])
    with pytest.raises(RuntimeError, match="did not start"):
        server.start(timeout=30)
    server.stop()
    assert not missing.exists()


# --- the distributed door ----------------------------------------------------------------------


def test_the_distributed_door_refuses_cleanly(start_server: StartServer, tmp_path: Path) -> None:
    a, b = _sqlite(start_server), _sqlite(start_server)
    with exdb.connect(nodes=[a.node, b.node], autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        conn.executemany("INSERT INTO kept VALUES (?, ?)", KEPT)
        # ATTACH and VACUUM INTO are refused by the planner, before any node sees them.
        for sql in (
            f"ATTACH DATABASE '{tmp_path / 'x.db'}' AS x",
            f"VACUUM INTO '{tmp_path / 'copy.db'}'",
        ):
            with pytest.raises(exdb.NotSupportedError, match="node prefix"):
                conn.execute(sql)
        for sql, fragment in (
            ("PRAGMA hard_heap_limit = 1", "hard_heap_limit"),
            ("PRAGMA writable_schema = ON", "writable_schema"),
            ("PRAGMA database_list", "database_list"),
            ("SELECT fts3_tokenizer('simple')", "fts3_tokenizer"),
            ("SELECT load_extension('libc.so.6')", "load_extension"),
        ):
            with pytest.raises(exdb.ProgrammingError, match="not allowed") as info:
                conn.execute(sql)
            assert fragment in str(info.value) and info.value.node in (a.node, b.node)
        with pytest.raises(exdb.DataError, match="maximum frame size"):
            conn.execute("SELECT zeroblob(2000000000)")
        # A statement the planner does not know is refused by it, with nothing sent.
        with pytest.raises(exdb.ProgrammingError):
            conn.execute("INSERT INTO kept VALUES (100, 'x'); DROP TABLE kept")
        conn.execute("VACUUM")
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (len(KEPT),)
        assert sorted(conn.execute("SELECT k, v FROM kept").fetchall()) == KEPT
    assert os.listdir(tmp_path) == []
    for node in (a.node, b.node):
        with exdb.connect(node) as one:
            assert one.execute("SELECT 1").fetchone() == (1,)
