"""The DuckDB engine's sandbox: a client's SQL reaches no file, URL, extension or setting of the
server beyond its own database, unless the operator allows files (``--allow-files DIR``).

Every attack runs against a real ``exdb serve --engine duckdb`` with a durable database. Each
one must fail with a ProgrammingError that says what is refused; no file is read (its content
never comes back) or written; a session opened before still works, and so does a new one;
committed rows stay; another session's memory limit and threads are unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import exdb
from exdb.cluster import ServerProcess
from exdb.wire.codec import FrameDecoder, encode_frame
from exdb.wire.messages import FLAG_AUTOCOMMIT, MAGIC, PROTOCOL_VERSION, Msg

pytest.importorskip("duckdb")

StartServer = Callable[..., ServerProcess]

TIMEOUT = 10.0  # seconds on every raw socket operation
MAX_READS = 10_000  # bound on every read loop
MEMORY_LIMIT = "512.0 MiB"  # as DuckDB reports --memory-limit 512MiB
THREADS = 2
KEPT = [(i, f"row {i}") for i in range(50)]


@dataclasses.dataclass
class Sandbox:
    """A sandboxed server, a secret file next to its database, and a session opened first."""

    server: ServerProcess
    base: Path
    secret: Path
    secret_text: str
    before: Any


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One durable DuckDB server for every attack (they must leave it as they found it)."""
    base = tmp_path_factory.mktemp("sandbox")
    secret_text = f"SECRET-{uuid.uuid4().hex}"
    secret = base / "secret.csv"
    secret.write_text(f"name,value\nkey,{secret_text}\n")
    env = dict(os.environ)
    env.pop("EXDB_PASSWORD", None)
    args = ["--host", "127.0.0.1", "--port", "0", "--quiet", "--engine", "duckdb"]
    args += ["--db", str(base / "shard.duckdb"), "--memory-limit", "512MiB"]
    args += ["--threads", str(THREADS)]
    server = ServerProcess(args, env).start()
    try:
        with exdb.connect(server.node) as conn:
            conn.execute("CREATE TABLE kept (id INTEGER, v VARCHAR)")
            conn.executemany("INSERT INTO kept VALUES (?, ?)", KEPT)
            conn.commit()
        with exdb.connect(server.node, autocommit=True) as before:
            assert before.execute("SELECT count(*) FROM kept").fetchone() == (len(KEPT),)
            yield Sandbox(server, base, secret, secret_text, before)
    finally:
        server.stop()


def files_under(path: Path) -> set[str]:
    """Every file and directory below ``path``, relative to it."""
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@contextlib.contextmanager
def listener() -> Iterator[tuple[socket.socket, int]]:
    """A loopback port that records whether anything connected to it (an URL's target)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.5)
    try:
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


def nobody_connected(sock: socket.socket) -> bool:
    """True when no connection reached the listener."""
    try:
        conn, _ = sock.accept()
    except TimeoutError:
        return True
    conn.close()
    return False


def assert_unharmed(box: Sandbox) -> None:
    """The session opened before works, a new one does, the committed rows are all there, and
    the operator's settings hold for every session."""
    assert box.before.execute("SELECT 1").fetchone() == (1,)
    with exdb.connect(box.server.node) as fresh:
        rows = fresh.execute("SELECT id, v FROM kept ORDER BY id").fetchall()
        assert rows == KEPT
        settings = fresh.execute(
            "SELECT current_setting('memory_limit'), current_setting('threads'),"
            " current_setting('enable_external_access'), current_setting('lock_configuration')"
        ).fetchone()
        assert settings == (MEMORY_LIMIT, THREADS, False, True)


def refused(box: Sandbox, sql: str, *fragments: str) -> str:
    """Run ``sql`` on a new session: a ProgrammingError naming the node and the statement, with
    ``fragments`` in its message and not a byte of the secret file; the server unharmed."""
    before = files_under(box.base)
    with exdb.connect(box.server.node, autocommit=True) as attacker:
        with pytest.raises(exdb.ProgrammingError) as info:
            rows = attacker.execute(sql).fetchall()
            pytest.fail(f"not refused: {sql} gave {rows!r}")
        message = str(info.value)
        assert info.value.node == box.server.node and info.value.statement == sql
        for fragment in fragments:
            assert fragment in message, (fragment, message)
        assert box.secret_text not in message
        assert attacker.execute("SELECT 'goes on'").fetchone() == ("goes on",)
    after = files_under(box.base)
    # DuckDB's WAL may come and go with checkpoints; nothing else may appear.
    assert {f for f in after - before if not f.endswith(".wal")} == set()
    assert_unharmed(box)
    return message


# --- files -------------------------------------------------------------------------------------

FILE_READS = [
    "SELECT * FROM read_csv('{secret}')",
    "SELECT * FROM read_csv_auto('{secret}')",
    "SELECT * FROM read_text('{secret}')",
    "SELECT * FROM read_blob('{secret}')",
    "SELECT content FROM read_blob('/proc/self/environ')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_json_auto('{secret}')",
    "SELECT * FROM read_parquet('{secret}')",
    "SELECT * FROM parquet_metadata('{secret}')",
    "SELECT * FROM sniff_csv('{secret}')",
    "SELECT * FROM '{secret}'",
    "SELECT * FROM read_csv('file://{secret}')",
    "SELECT * FROM read_csv('{base}/../{base_name}/secret.csv')",
    "SELECT * FROM read_csv(['{secret}', '{secret}'])",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM glob('{base}/*')",
    "SELECT * FROM glob('**')",
    "SELECT * FROM read_text('*')",
]


@pytest.mark.parametrize("template", FILE_READS)
def test_sql_reads_no_file(sandbox: Sandbox, template: str) -> None:
    sql = template.format(secret=sandbox.secret, base=sandbox.base, base_name=sandbox.base.name)
    refused(sandbox, sql, "not allowed", "--allow-files DIR")


FILE_WRITES = [
    ("COPY kept TO '{base}/out.csv'", "COPY is not allowed"),
    ("COPY (SELECT * FROM kept) TO '{base}/out.parquet' (FORMAT parquet)", "COPY is not allowed"),
    ("COPY kept TO '/dev/stdout'", "COPY is not allowed"),
    ("COPY kept FROM '{secret}'", "COPY is not allowed"),
    ("COPY kept TO '{base}/shard.duckdb.wal'", "COPY is not allowed"),
    ("EXPORT DATABASE '{base}/export'", "EXPORT DATABASE is not allowed"),
    ("ATTACH '{base}/other.duckdb' AS other", "ATTACH is not allowed"),
    ("ATTACH ':memory:' AS scratch", "ATTACH is not allowed"),
    ("ATTACH '{base}/other.sqlite' AS other (TYPE sqlite)", "ATTACH is not allowed"),
    ("IMPORT DATABASE '{base}'", "not allowed"),
    ("CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')", "not allowed"),
]


@pytest.mark.parametrize(("template", "fragment"), FILE_WRITES)
def test_sql_writes_no_file(sandbox: Sandbox, template: str, fragment: str) -> None:
    sql = template.format(secret=sandbox.secret, base=sandbox.base)
    refused(sandbox, sql, fragment, "--allow-files DIR")
    assert not (sandbox.base / "out.csv").exists() and not (sandbox.base / "export").exists()


def test_no_url_is_fetched(sandbox: Sandbox) -> None:
    with listener() as (sock, port):
        url = f"http://127.0.0.1:{port}"
        refused(sandbox, f"SELECT * FROM read_csv('{url}/x.csv')", "not allowed")
        refused(sandbox, f"SELECT * FROM '{url}/x.parquet'", "not allowed")
        refused(sandbox, f"SELECT * FROM read_text('{url}/')", "not allowed")
        refused(sandbox, f"INSTALL httpfs FROM '{url}'", "INSTALL and LOAD are not allowed")
        refused(sandbox, "SELECT * FROM read_parquet('s3://bucket/x.parquet')", "not allowed")
        assert nobody_connected(sock)


@pytest.mark.parametrize(
    "sql",
    [
        "INSTALL httpfs",
        "FORCE INSTALL httpfs",
        "LOAD httpfs",
        "LOAD '/tmp/evil.duckdb_extension'",
        "LOAD json",
        "UPDATE EXTENSIONS",
    ],
)
def test_no_extension_is_installed_or_loaded(sandbox: Sandbox, sql: str) -> None:
    refused(sandbox, sql, "not allowed on an exdb server", "extensions")


# --- settings ----------------------------------------------------------------------------------

SETTINGS = [
    ("SET memory_limit = '1MB'", "memory_limit"),
    ("SET GLOBAL memory_limit = '1MB'", "memory_limit"),
    ("SET SESSION memory_limit = '1MB'", "memory_limit"),
    ("SET max_memory = '1MB'", "max_memory"),
    ("PRAGMA memory_limit = '1MB'", "memory_limit"),
    ("RESET memory_limit", "memory_limit"),
    ("SET threads = 1", "threads"),
    ("SET SESSION threads = 1", "threads"),
    ("PRAGMA threads = 1", "threads"),
    ("RESET threads", "threads"),
    ("SET temp_directory = '/tmp/elsewhere'", "temp_directory"),
    ("SET max_temp_directory_size = '1KB'", "max_temp_directory_size"),
    ("SET enable_external_access = true", "enable_external_access"),
    ("SET lock_configuration = false", "lock_configuration"),
    ("SET allowed_directories = ['/']", "allowed_directories"),
    ("SET python_enable_replacements = true", "python_enable_replacements"),
    ("SET autoload_known_extensions = true", "autoload_known_extensions"),
    ("SET default_order = 'desc'", "default_order"),
    ("SET preserve_insertion_order = false", "preserve_insertion_order"),
    ("PRAGMA enable_profiling", "enable_profiling"),
    ("SET profiling_output = '/tmp/profile.json'", "profiling_output"),
    ("PRAGMA disable_checkpoint_on_shutdown", "checkpoint_on_shutdown"),
    ("CALL enable_logging()", "enable_logging"),
]


@pytest.mark.parametrize(("sql", "name"), SETTINGS)
def test_no_session_changes_a_setting(sandbox: Sandbox, sql: str, name: str) -> None:
    message = refused(sandbox, sql, f"setting '{name}' is not allowed", "--memory-limit")
    assert "every session" in message


def test_a_refused_setting_leaves_other_sessions_room(sandbox: Sandbox) -> None:
    """Session A tries to starve the server; session B's sort, far above 1MB, still runs."""
    with exdb.connect(sandbox.server.node, autocommit=True) as a:
        for sql in ("SET memory_limit = '1MB'", "SET GLOBAL threads = 1"):
            with pytest.raises(exdb.ProgrammingError):
                a.execute(sql)
        with exdb.connect(sandbox.server.node) as b:
            sort = (
                "SELECT count(*), min(s) FROM"
                " (SELECT md5(range::VARCHAR) AS s FROM range(300000) ORDER BY s)"
            )
            count, smallest = b.execute(sort).fetchone()
            assert count == 300_000 and len(smallest) == 32
            assert b.execute("SELECT current_setting('memory_limit')").fetchone() == (MEMORY_LIMIT,)
            assert b.execute("SELECT current_setting('threads')").fetchone() == (THREADS,)
        assert a.execute("SELECT current_setting('memory_limit')").fetchone() == (MEMORY_LIMIT,)
    assert_unharmed(sandbox)


def test_session_local_settings_stay_in_their_session(sandbox: Sandbox) -> None:
    """What a session may still SET (schema, search_path, USE, variables) is its own."""
    with exdb.connect(sandbox.server.node, autocommit=True) as a:
        a.execute("CREATE SCHEMA IF NOT EXISTS mine")
        a.execute("CREATE OR REPLACE TABLE mine.kept (x INTEGER)")
        a.execute("SET schema = 'mine'")
        assert a.execute("SELECT count(*) FROM kept").fetchone() == (0,)  # mine.kept
        a.execute("SET search_path = 'mine,main'")
        a.execute("SET VARIABLE answer = 42")
        assert a.execute("SELECT getvariable('answer')").fetchone() == (42,)
        with exdb.connect(sandbox.server.node, autocommit=True) as b:
            assert b.execute("SELECT current_schema()").fetchone() == ("main",)
            assert b.execute("SELECT getvariable('answer')").fetchone() == (None,)
            assert b.execute("SELECT count(*) FROM kept").fetchone() == (len(KEPT),)
        a.execute("USE main")
        assert a.execute("SELECT count(*) FROM kept").fetchone() == (len(KEPT),)
        a.execute("DROP TABLE mine.kept")
        a.execute("DROP SCHEMA mine")
        with pytest.raises(exdb.ProgrammingError, match="search_path"):
            a.execute("SET GLOBAL search_path = 'main'")
    assert_unharmed(sandbox)


def test_sql_scans_no_python_object_of_the_server(sandbox: Sandbox) -> None:
    """DuckDB's replacement scans would find a DataFrame or array that a Python variable of the
    server holds, by the variable's name; they are off (the engine scans only what it
    registers itself)."""
    with exdb.connect(sandbox.server.node, autocommit=True) as conn:
        setting = "SELECT current_setting('python_enable_replacements')"
        assert conn.execute(setting).fetchone() == (False,)
    for name in ("arrays", "seq", "columns", "params", "numpy", "sys", "os"):
        refused(sandbox, f"SELECT * FROM {name}", "does not exist")


def test_bulk_inserts_still_scan_their_own_arrays(sandbox: Sandbox) -> None:
    """The engine's NumPy fast path (register + INSERT ... SELECT) works in the sandbox."""
    with exdb.connect(sandbox.server.node) as conn:
        conn.execute("CREATE TABLE bulk (i BIGINT, f DOUBLE, s VARCHAR)")
        rows = [(i, i / 2, f"s{i}") for i in range(5000)]
        assert conn.executemany("INSERT INTO bulk VALUES (?, ?, ?)", rows).rowcount == 5000
        conn.commit()
        got = conn.execute("SELECT sum(i), sum(f), count(DISTINCT s) FROM bulk").fetchone()
        assert got == (sum(range(5000)), sum(range(5000)) / 2, 5000)
        conn.execute("DROP TABLE bulk")
        conn.commit()
        conn.execute("CHECKPOINT")  # the engine's own CHECKPOINT runs too
    assert_unharmed(sandbox)


def test_a_value_beyond_duckdbs_string_limit_is_refused(sandbox: Sandbox) -> None:
    """DuckDB refuses a string above 4 GiB before it builds it (smaller ones are bounded only by
    the frame limit when sent; see docs/security.md)."""
    with exdb.connect(sandbox.server.node, autocommit=True) as conn:
        with pytest.raises(exdb.Error, match="maximum supported string size"):
            conn.execute("SELECT length(repeat('x', 5000000000))")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert_unharmed(sandbox)


def test_the_distributed_door_refuses_cleanly(sandbox: Sandbox, start_server: StartServer) -> None:
    """Through exdb.connect(nodes=[a, b]): the same refusals, as exdb errors naming a node."""
    other = start_server("--engine", "duckdb")
    nodes = [sandbox.server.node, other.node]
    with exdb.connect(nodes=nodes) as dist:
        # COPY is refused by the planner, before any node sees it (see distributed/files.py).
        with pytest.raises(exdb.NotSupportedError, match="copy_to"):
            dist.execute(f"COPY kept TO '{sandbox.base}/dist.csv'")
        for sql in (
            f"SELECT * FROM read_csv('{sandbox.secret}')",
            "SET memory_limit = '1MB'",
        ):
            with pytest.raises(exdb.ProgrammingError) as info:
                dist.execute(sql).fetchall()
            message = str(info.value)
            assert "not allowed" in message and sandbox.secret_text not in message
            assert info.value.node in nodes
            dist.rollback()
        assert not (sandbox.base / "dist.csv").exists()
    assert_unharmed(sandbox)


# --- --allow-files -----------------------------------------------------------------------------


def test_allow_files_opens_only_its_directory(start_server: StartServer, tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "in.csv").write_text("a,b\n1,x\n2,y\n")
    secret = f"SECRET-{uuid.uuid4().hex}"
    (outside / "secret.csv").write_text(f"a,b\n1,{secret}\n")
    (allowed / "escape").symlink_to(outside)  # a link inside the directory, to outside it
    (tmp_path / "allowed-not").mkdir()  # a sibling whose name starts like the directory
    (tmp_path / "allowed-not" / "x.csv").write_text("a\n1\n")
    server = start_server(
        "--engine", "duckdb", "--db", str(tmp_path / "shard.duckdb"), "--allow-files", str(allowed)
    )
    with exdb.connect(server.node, autocommit=True) as conn:
        rows = conn.execute(f"SELECT a, b FROM read_csv('{allowed}/in.csv') ORDER BY a").fetchall()
        assert rows == [(1, "x"), (2, "y")]
        assert conn.execute(f"SELECT count(*) FROM glob('{allowed}/*.csv')").fetchone() == (1,)
        conn.execute(f"CREATE TABLE t AS SELECT * FROM read_csv('{allowed}/in.csv')")
        conn.execute(f"COPY t TO '{allowed}/out.csv'")
        assert (allowed / "out.csv").read_text().splitlines() == ["a,b", "1,x", "2,y"]
        conn.execute(f"COPY t FROM '{allowed}/out.csv'")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (4,)
        conn.execute(f"ATTACH '{allowed}/side.duckdb' AS side")
        conn.execute("CREATE TABLE side.s AS SELECT 1 AS one")
        conn.execute("DETACH side")
        assert (allowed / "side.duckdb").exists()
        for sql in (
            f"SELECT * FROM read_csv('{outside}/secret.csv')",
            f"SELECT * FROM read_csv('{allowed}/../outside/secret.csv')",
            f"SELECT * FROM read_csv('{allowed}/escape/secret.csv')",
            f"SELECT * FROM read_csv('{tmp_path}/allowed-not/x.csv')",
            f"SELECT * FROM glob('{tmp_path}/*')",
            f"COPY t TO '{outside}/out.csv'",
            f"COPY t TO '{allowed}/../outside/out.csv'",
            f"ATTACH '{outside}/x.duckdb' AS x",
            "INSTALL httpfs",
            "SET threads = 1",
        ):
            with pytest.raises(exdb.ProgrammingError, match="not allowed") as info:
                conn.execute(sql).fetchall()
            assert secret not in str(info.value)
        assert sorted(os.listdir(outside)) == ["secret.csv"]
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (4,)


def test_allow_files_refuses_a_missing_directory(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("EXDB_PASSWORD", None)
    args = ["--host", "127.0.0.1", "--port", "0", "--quiet", "--engine", "duckdb"]
    server = ServerProcess([*args, "--allow-files", str(tmp_path / "missing")], env)
    with pytest.raises(RuntimeError, match="did not start"):
        server.start()
    assert server.proc is not None and server.proc.returncode not in (None, 0)


# --- parameter sets that are maps ---------------------------------------------------------------


class RawSession:
    """A bare protocol session, to send what the client library refuses to (maps as parameter
    sets of EXECMANY and QUERY)."""

    def __init__(self, node: str) -> None:
        host, port = node.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        self.sock.settimeout(TIMEOUT)
        self.decoder = FrameDecoder()
        self.inbox: list[Any] = []
        self.sock.sendall(MAGIC + encode_frame([Msg.HELLO, 0, {"protocol": PROTOCOL_VERSION}]))
        assert self.next_message()[0] == Msg.WELCOME

    def close(self) -> None:
        self.sock.close()

    def next_message(self) -> Any:
        for _ in range(MAX_READS):
            if self.inbox:
                return self.inbox.pop(0)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                pytest.fail("the server closed the connection instead of answering")
            self.inbox.extend(self.decoder.feed(chunk))
        pytest.fail("no complete message arrived")

    def request(self, kind: int, rid: int, sql: str, params: Any) -> Any:
        self.sock.sendall(encode_frame([kind, rid, sql, params, FLAG_AUTOCOMMIT]))
        answer = self.next_message()
        assert answer[1] == rid, answer
        return answer


def test_executemany_with_maps_never_stores_their_keys(start_server: StartServer) -> None:
    server = start_server("--engine", "duckdb")
    with exdb.connect(server.node, autocommit=True) as conn:
        conn.execute("CREATE TABLE m (a INTEGER, b VARCHAR)")
        raw = RawSession(server.node)
        try:
            maps = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
            answer = raw.request(Msg.EXECMANY, 1, "INSERT INTO m VALUES (?, ?)", maps)
            assert answer[0] == Msg.ERROR and answer[2] == "ProgrammingError", answer
            assert "use a sequence for ? placeholders" in answer[3]
            assert conn.execute("SELECT count(*) FROM m").fetchone() == (0,)
            # Text columns would take the keys 'a' and 'b' without a complaint: still refused.
            conn.execute("CREATE TABLE k (a VARCHAR, b VARCHAR)")
            answer = raw.request(Msg.EXECMANY, 11, "INSERT INTO k VALUES (?, ?)", maps)
            assert answer[0] == Msg.ERROR and answer[2] == "ProgrammingError", answer
            assert conn.execute("SELECT count(*) FROM k").fetchone() == (0,)

            # Named placeholders bind a map by name: its values, never its keys.
            answer = raw.request(Msg.EXECMANY, 2, "INSERT INTO m VALUES ($a, $b)", maps)
            assert answer[0] == Msg.RESULT and answer[5] == 2, answer
            reordered = [{"b": "z", "a": 3}]
            answer = raw.request(Msg.EXECMANY, 3, "INSERT INTO m VALUES ($a, $b)", reordered)
            assert answer[0] == Msg.RESULT and answer[5] == 1, answer
            mixed = [[4, "w"], {"a": 5, "b": "v"}]
            answer = raw.request(Msg.EXECMANY, 4, "INSERT INTO m VALUES (?, ?)", mixed)
            assert answer[0] == Msg.ERROR and answer[2] == "ProgrammingError", answer

            # One statement with a map: the same rules.
            answer = raw.request(Msg.QUERY, 5, "INSERT INTO m VALUES (?, ?)", {"a": 6, "b": "u"})
            assert answer[0] == Msg.ERROR and answer[2] == "ProgrammingError", answer
            assert "use a sequence for ? placeholders" in answer[3]
            answer = raw.request(Msg.QUERY, 6, "INSERT INTO m VALUES ($a, $b)", {"a": 7, "b": "t"})
            assert answer[0] == Msg.RESULT, answer
            missing = raw.request(Msg.QUERY, 7, "INSERT INTO m VALUES ($a, $b)", {"a": 8})
            assert missing[0] == Msg.ERROR and missing[2] == "ProgrammingError", missing
        finally:
            raw.close()
        rows = conn.execute("SELECT a, b FROM m ORDER BY a").fetchall()
        assert rows == [(1, "x"), (2, "y"), (3, "z"), (7, "t")]
        # The client library refuses maps before sending them.
        with pytest.raises(exdb.ProgrammingError, match="sequence"):
            conn.executemany("INSERT INTO m VALUES (?, ?)", [{"a": 9, "b": "s"}])
        assert conn.execute("SELECT count(*) FROM m").fetchone() == (4,)


def test_a_batch_of_maps_binds_by_name_or_is_refused(start_server: StartServer) -> None:
    """The BATCH path (each parameter set on its own): a map binds $name placeholders, and is
    a ProgrammingError of its own set for ? placeholders."""
    server = start_server("--engine", "duckdb")
    with exdb.connect(server.node, autocommit=True) as conn:
        conn.execute("CREATE TABLE m (a INTEGER, b VARCHAR)")
        conn.execute("INSERT INTO m VALUES (1, 'x'), (2, 'y')")
        named = conn._run(
            conn.core.batch("SELECT b FROM m WHERE a = $a", [{"a": 2}, {"a": 1}], True)
        )
        assert [r.rows for r in named] == [[("y",)], [("x",)]]
        qmark = conn._run(conn.core.batch("SELECT b FROM m WHERE a = ?", [{"a": 2}, [1]], True))
        assert isinstance(qmark[0], exdb.ProgrammingError)
        assert "use a sequence for ? placeholders" in str(qmark[0])
        assert qmark[1].rows == [("x",)]
        inserts = conn._run(
            conn.core.batch("INSERT INTO m VALUES (?, ?)", [{"a": 3, "b": "z"}], True)
        )
        assert isinstance(inserts[0], exdb.ProgrammingError)
        assert conn.execute("SELECT a, b FROM m ORDER BY a").fetchall() == [(1, "x"), (2, "y")]
