"""Bad input gets a clear error, and the server goes on serving every other session.

Protocol-level cases speak to the server over raw sockets (always with a timeout); SQL-level ones
go through the client. After each bad input, a connection opened before it still works, and so
does a fresh one.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest

import exdb
from exdb.cluster import ServerProcess
from exdb.wire.codec import FrameDecoder, encode_frame
from exdb.wire.messages import MAGIC, PROTOCOL_VERSION, Msg

StartServer = Callable[..., ServerProcess]

TIMEOUT = 10.0  # seconds on every raw socket operation
MAX_READS = 10_000  # bound on every read loop


class RawClient:
    """A bare TCP connection to a server, speaking frames by hand."""

    def __init__(self, node: str) -> None:
        host, port = node.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        self.sock.settimeout(TIMEOUT)
        self.decoder = FrameDecoder()
        self.inbox: list[Any] = []

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self) -> bool:
        """Read once; False at the end of the stream (a reset counts as an end)."""
        try:
            chunk = self.sock.recv(1 << 16)
        except ConnectionResetError:
            return False
        if not chunk:
            return False
        self.inbox.extend(self.decoder.feed(chunk))
        return True

    def next_message(self) -> Any:
        """The next message; fails the test if the server closes first."""
        for _ in range(MAX_READS):
            if self.inbox:
                return self.inbox.pop(0)
            if not self._read():
                pytest.fail("the server closed the connection instead of answering")
        pytest.fail("no complete message arrived")

    def rest_until_close(self) -> list[Any]:
        """Every message until the server closes the connection."""
        for _ in range(MAX_READS):
            if not self._read():
                messages, self.inbox = self.inbox, []
                return messages
        pytest.fail("the server never closed the connection")

    def handshake(self) -> Any:
        self.send(MAGIC + encode_frame([Msg.HELLO, 0, {"protocol": PROTOCOL_VERSION}]))
        welcome = self.next_message()
        assert welcome[0] == Msg.WELCOME, welcome
        return welcome


def body_frame(body: bytes) -> bytes:
    """A well-formed frame around an arbitrary body."""
    return struct.pack(">I", len(body)) + body


def assert_session_error(messages: list[Any], kind: str, *fragments: str) -> str:
    """Exactly one ERROR for the whole session (id 0) of class ``kind``, then the close."""
    assert len(messages) == 1, messages
    msg = messages[0]
    assert msg[0] == Msg.ERROR and msg[1] == 0 and msg[2] == kind, msg
    text = str(msg[3])
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


@contextlib.contextmanager
def others_unaffected(node: str, **options: Any) -> Iterator[None]:
    """A connection opened before the block still works after it, and so does a new one."""
    with exdb.connect(node, autocommit=True, **options) as healthy:
        assert healthy.execute("SELECT 1").fetchone() == (1,)
        yield
        assert healthy.execute("SELECT 2").fetchone() == (2,)
    with exdb.connect(node, **options) as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)


# --- the protocol ---------------------------------------------------------------------------


def test_random_bytes_get_an_error_then_the_close(sqlite_node: str) -> None:
    garbage = bytearray(random.Random(1234).randbytes(256))
    garbage[0] = 0xFF  # never the start of the preamble
    with others_unaffected(sqlite_node), RawClient(sqlite_node) as raw:
        raw.send(bytes(garbage))
        assert_session_error(raw.rest_until_close(), "InterfaceError", "not an exdb client")


def test_a_truncated_frame_closes_only_that_session(sqlite_node: str) -> None:
    with others_unaffected(sqlite_node), RawClient(sqlite_node) as raw:
        raw.send(MAGIC + struct.pack(">I", 100) + b"0123456789")
        raw.sock.shutdown(socket.SHUT_WR)
        assert raw.rest_until_close() == []  # nothing to answer: the session just ends


def test_a_truncated_frame_after_the_handshake(sqlite_node: str) -> None:
    with others_unaffected(sqlite_node), RawClient(sqlite_node) as raw:
        raw.handshake()
        raw.send(encode_frame([Msg.QUERY, 1, "SELECT 1", None, 1])[:-3])
        raw.sock.shutdown(socket.SHUT_WR)
        assert raw.rest_until_close() == []


def test_an_oversized_frame_is_refused_before_its_body(start_server: StartServer) -> None:
    server = start_server("--engine", "sqlite", "--max-frame", "1024")
    with others_unaffected(server.node), RawClient(server.node) as raw:
        raw.handshake()
        raw.send(struct.pack(">I", 1025))  # the header only: no body follows
        text = assert_session_error(raw.rest_until_close(), "InterfaceError", "1024")
        assert "1025" in text and "exceeds" in text


def test_a_client_statement_above_the_max_frame(start_server: StartServer) -> None:
    server = start_server("--engine", "sqlite", "--max-frame", "1024")
    with others_unaffected(server.node):
        conn = exdb.connect(server.node)
        try:
            with pytest.raises(exdb.InterfaceError, match="exceeds the limit of 1024") as info:
                conn.execute("SELECT ?", ("x" * 2000,))
            assert info.value.node == server.node
            with pytest.raises(exdb.Error):  # the session is gone; the connection says so
                conn.execute("SELECT 1")
        finally:
            conn.close()


def test_a_result_row_above_the_max_frame_is_a_data_error(
    start_server: StartServer, engine: str
) -> None:
    server = start_server("--engine", engine, "--max-frame", "1024")
    with others_unaffected(server.node), exdb.connect(server.node) as conn:
        sql = "SELECT printf('%2000s', 'x')"
        with pytest.raises(exdb.DataError, match="maximum frame size") as info:
            conn.execute(sql)
        assert info.value.node == server.node and info.value.statement == sql
        conn.rollback()
        assert conn.execute("SELECT 'small'").fetchone() == ("small",)  # the session goes on


@pytest.mark.parametrize(
    ("hello", "fragments"),
    [
        ([Msg.HELLO, 0, {"protocol": 3}], ["unsupported protocol version 3", "speaks 2"]),
        ([Msg.HELLO, 0, {"protocol": "1"}], ["unsupported protocol version '1'"]),
        ([Msg.HELLO, 0, {}], ["unsupported protocol version None"]),
        ([Msg.HELLO, 0], ["HELLO needs a map"]),
        ([Msg.QUERY, 1, "SELECT 1", None, 1], ["first message must be HELLO"]),
    ],
    ids=["version-3", "version-str", "no-version", "no-map", "query-first"],
)
def test_a_bad_handshake_is_refused(
    sqlite_node: str, hello: list[Any], fragments: list[str]
) -> None:
    with others_unaffected(sqlite_node), RawClient(sqlite_node) as raw:
        raw.send(MAGIC + encode_frame(hello))
        assert_session_error(raw.rest_until_close(), "InterfaceError", *fragments)


def test_wrong_and_missing_passwords(
    start_server: StartServer, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXDB_PASSWORD", raising=False)
    server = start_server("--engine", engine, "--password", "s3cret")
    with others_unaffected(server.node, sql_password="s3cret"):
        for options in ({"password": "nope"}, {}, {"password": ""}, {"password": "s3cret "}):
            with pytest.raises(exdb.OperationalError) as info:
                exdb.connect(server.node, **options)
            assert server.node in str(info.value) and info.value.node == server.node
            assert "authentication failed" in str(info.value), options
    with exdb.connect(server.node, password="s3cret") as conn:
        assert conn.execute("SELECT 3").fetchone() == (3,)


def test_server_password_from_the_environment(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXDB_PASSWORD", raising=False)
    server = start_server("--engine", "sqlite", env={"EXDB_PASSWORD": "x"})
    with others_unaffected(server.node, password="x"):
        with pytest.raises(exdb.OperationalError, match="authentication failed"):
            exdb.connect(server.node)
        with pytest.raises(exdb.OperationalError, match="authentication failed"):
            exdb.connect(server.node, password="y")
        monkeypatch.setenv("EXDB_PASSWORD", "x")  # the client reads it too
        with exdb.connect(server.node) as conn:
            assert conn.execute("SELECT 4").fetchone() == (4,)


def test_an_unknown_message_type_fails_only_that_request(sqlite_node: str) -> None:
    with others_unaffected(sqlite_node), RawClient(sqlite_node) as raw:
        raw.handshake()
        raw.send(encode_frame([99, 5]))
        error = raw.next_message()
        assert error[0] == Msg.ERROR and error[1] == 5 and error[2] == "InterfaceError", error
        assert "unknown message type 99" in error[3]
        raw.send(encode_frame([Msg.QUERY, 6, "SELECT 1", None, 1]))
        result = raw.next_message()
        assert result[0] == Msg.RESULT == 17 and result[1] == 6, result
        assert result[3] == ((1,),) and result[4] is False
        raw.send(encode_frame([Msg.QUERY, 7]))  # malformed, but still just this request
        error = raw.next_message()
        assert error[:3] == (Msg.ERROR, 7, "InterfaceError") and "malformed" in error[3]
        raw.send(encode_frame([Msg.PING, 8]))
        assert raw.next_message()[:2] == (Msg.PONG, 8)


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        (encode_frame("hello"), "a message must be [kind, id, ...]"),
        (encode_frame(5), "a message must be [kind, id, ...]"),
        (encode_frame({"kind": 2}), "a message must be [kind, id, ...]"),
        (encode_frame([Msg.PING]), "a message must be [kind, id, ...]"),
        (encode_frame(["PING", 1]), "a message must be [kind, id, ...]"),
        (encode_frame([Msg.PING, "one"]), "request id must be an integer"),
        (body_frame(b"\xc1"), "malformed frame"),
        (body_frame(b"\x92\x06"), "malformed frame"),  # an array of 2 with 1 item
        (body_frame(msgpack.packb([6, 1]) + b"\x00"), "malformed frame"),  # trailing data
        (body_frame(msgpack.packb(msgpack.ExtType(99, b"?"))), "unknown msgpack extension"),
        (body_frame(msgpack.packb(msgpack.ExtType(2, b"not a date"))), "malformed frame"),
    ],
    ids=[
        "str",
        "int",
        "map",
        "short-list",
        "str-kind",
        "str-id",
        "reserved-byte",
        "truncated-array",
        "trailing-bytes",
        "unknown-ext",
        "bad-date-ext",
    ],
)
def test_a_malformed_message_ends_the_session(
    sqlite_node: str, frame: bytes, fragment: str
) -> None:
    with others_unaffected(sqlite_node), RawClient(sqlite_node) as raw:
        raw.handshake()
        raw.send(frame)
        assert_session_error(raw.rest_until_close(), "InterfaceError", "protocol error", fragment)


# --- statements and parameters ----------------------------------------------------------------


def test_a_wrong_parameter_count(server: ServerProcess) -> None:
    with others_unaffected(server.node), exdb.connect(server.node) as conn:
        for sql, params in (("SELECT ?, ?", (1,)), ("SELECT ?", (1, 2)), ("SELECT ?", None)):
            with pytest.raises(exdb.ProgrammingError) as info:
                conn.execute(sql, params)
            assert server.node in str(info.value) and sql in str(info.value)
            assert info.value.node == server.node and info.value.statement == sql
            conn.rollback()
            assert conn.execute("SELECT ?, ?", (1, 2)).fetchone() == (1, 2)


def test_sql_errors_are_classified(server: ServerProcess) -> None:
    with others_unaffected(server.node), exdb.connect(server.node) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v VARCHAR)")
        conn.execute("INSERT INTO t VALUES (1, 'a')")
        conn.commit()
        cases: list[tuple[str, type[exdb.Error]]] = [
            ("SELEC 1 FROM t", exdb.ProgrammingError),
            ("INSERT INTO t VALUES (1, 'duplicate')", exdb.IntegrityError),
            ("SELECT * FROM no_such_table", exdb.ProgrammingError),
            ("SELECT no_such_column FROM t", exdb.ProgrammingError),
        ]
        for sql, cls in cases:
            with pytest.raises(cls) as info:
                conn.execute(sql)
            text = str(info.value)
            assert server.node in text and sql in text, text
            assert info.value.statement == sql
            conn.rollback()
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
        conn.execute("INSERT INTO t VALUES (2, 'b')")
        conn.commit()
    with exdb.connect(server.node) as conn:
        assert conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [(1, "a"), (2, "b")]


def test_use_after_close(sqlite_node: str) -> None:
    conn = exdb.connect(sqlite_node)
    cur = conn.cursor()
    assert cur.execute("SELECT 1").fetchone() == (1,)
    conn.close()
    with pytest.raises(exdb.InterfaceError, match="closed already"):  # the DB-API suite asks it
        conn.close()
    with pytest.raises(exdb.InterfaceError, match="closed"):
        cur.execute("SELECT 1")
    with pytest.raises(exdb.InterfaceError, match="closed"):
        cur.fetchone()
    with pytest.raises(exdb.InterfaceError, match="closed"):
        conn.cursor()
    with pytest.raises(exdb.InterfaceError, match="closed"):
        conn.execute("SELECT 1")
    with pytest.raises(exdb.InterfaceError, match="closed"):
        conn.commit()
    with pytest.raises(exdb.InterfaceError, match="closed"):
        conn.rollback()
    with pytest.raises(exdb.InterfaceError, match="closed"):
        conn.ping()
    cur.close()
    cur.close()


def test_cursor_use_after_its_close(sqlite_node: str) -> None:
    with exdb.connect(sqlite_node) as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1 UNION ALL SELECT 2")
        cur.close()
        cur.close()  # twice is fine
        for use in (
            lambda: cur.execute("SELECT 1"),
            cur.fetchone,
            cur.fetchall,
            lambda: cur.executemany("SELECT ?", [(1,)]),
        ):
            with pytest.raises(exdb.InterfaceError, match="cursor is closed"):
                use()
        assert conn.cursor().execute("SELECT 5").fetchone() == (5,)  # the connection is fine


def test_parameters_are_bound_not_pasted(server: ServerProcess) -> None:
    evil = "'); DROP TABLE t; --"
    with others_unaffected(server.node), exdb.connect(server.node) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE t (id INTEGER, s VARCHAR)")
        cur.execute("INSERT INTO t VALUES (1, 'plain')")
        cur.execute("INSERT INTO t VALUES (?, ?)", (2, evil))
        cur.execute("INSERT INTO t VALUES (3, ?)", ('"; DROP TABLE t; --',))
        conn.commit()
        assert cur.execute("SELECT s FROM t WHERE id = ?", (2,)).fetchone() == (evil,)
        assert cur.execute("SELECT id FROM t WHERE s = ?", (evil,)).fetchall() == [(2,)]
        assert cur.execute("SELECT count(*) FROM t").fetchone() == (3,)


def test_several_statements_in_one_execute_are_refused(server: ServerProcess) -> None:
    with exdb.connect(server.node, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")
        for sql in ("SELECT 1; DROP TABLE t", "INSERT INTO t VALUES (2); DROP TABLE t"):
            with pytest.raises(exdb.DatabaseError) as info:
                conn.execute(sql)
            assert info.value.node == server.node and info.value.statement == sql
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    with exdb.connect(server.node) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)


def test_parameters_must_be_a_sequence(sqlite_node: str) -> None:
    with exdb.connect(sqlite_node) as conn:
        cur = conn.cursor()
        for params in ("ab", b"ab", bytearray(b"ab"), {1, 2}, 7, iter([1])):
            with pytest.raises(exdb.ProgrammingError, match="must be a sequence") as info:
                cur.execute("SELECT ?", params)  # type: ignore[arg-type]
            assert info.value.statement == "SELECT ?"
        with pytest.raises(exdb.ProgrammingError, match="must be a str"):
            cur.execute(b"SELECT 1")  # type: ignore[arg-type]
        with pytest.raises(exdb.ProgrammingError):
            cur.executemany("SELECT ?", "ab")
        assert cur.execute("SELECT ?", ["ab"]).fetchone() == ("ab",)


def test_an_unsendable_parameter_is_an_exdb_error(sqlite_node: str) -> None:
    with exdb.connect(sqlite_node) as conn:
        with pytest.raises(exdb.Error) as info:
            conn.execute("SELECT ?", (object(),))
        assert info.value.node == sqlite_node and info.value.statement == "SELECT ?"
        assert conn.execute("SELECT 1").fetchone() == (1,)


# --- idle sessions ----------------------------------------------------------------------------


def test_an_idle_session_is_told_and_closed(start_server: StartServer) -> None:
    server = start_server("--engine", "sqlite", "--idle-timeout", "0.5")
    with RawClient(server.node) as raw:
        raw.handshake()
        started = time.monotonic()
        text = assert_session_error(raw.rest_until_close(), "OperationalError", "idle timeout")
        waited = time.monotonic() - started
        assert 0.3 < waited < 5, waited
        assert "0.5" in text
    with exdb.connect(server.node) as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)


def test_an_idle_client_connection_fails_clearly(start_server: StartServer) -> None:
    server = start_server("--engine", "sqlite", "--idle-timeout", "0.5")
    conn = exdb.connect(server.node)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        time.sleep(1.5)
        with pytest.raises(exdb.OperationalError) as info:
            conn.execute("SELECT 1")
        assert info.value.node == server.node
        assert "idle timeout" in str(info.value) or "connection" in str(info.value)
    finally:
        conn.close()
    with exdb.connect(server.node) as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)
