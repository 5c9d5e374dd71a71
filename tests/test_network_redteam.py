"""Red-team attacks on the network side of ``exdb serve`` after login: clients that do not read
their results, past a statement timeout, and clients that flood pipelined requests while a
long request runs. Each runs against a real server; the server keeps serving a session opened
before, a new login, and the rows committed before."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import exdb
from exdb.cluster import ServerProcess
from exdb.wire.codec import FrameDecoder, encode_frame
from exdb.wire.messages import MAGIC, PROTOCOL_VERSION, Msg

from _handshake import messages_until_close, open_raw, others_served
from _handshake import vm_rss_kib as rss

StartServer = Callable[..., ServerProcess]

#: Millions of wide rows: far more than any socket buffer holds.
_HUGE = (
    "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 5000000)"
    " SELECT i, printf('%0500d', i) FROM r"
)


def _login(node: str) -> tuple[socket.socket, FrameDecoder]:
    """A session logged in over a raw socket (no password)."""
    sock = open_raw(node)
    hello = {"protocol": PROTOCOL_VERSION, "user": None, "client": "redteam"}
    sock.sendall(MAGIC + encode_frame([Msg.HELLO, 0, hello]))
    decoder = FrameDecoder()
    messages: list[Any] = []
    while not messages:
        chunk = sock.recv(1 << 16)
        assert chunk, "the server closed the connection during the handshake"
        messages = decoder.feed(chunk)
    assert messages[0][0] == Msg.WELCOME, messages
    return sock, decoder


def _answer(sock: socket.socket, decoder: FrameDecoder, rid: int) -> Any:
    """The first message for ``rid``."""
    for _ in range(1000):
        for msg in decoder.feed(sock.recv(1 << 16)):
            if msg[1] == rid:
                return msg
    raise AssertionError(f"no answer to request {rid}")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_share(pid: int, seconds: float) -> float:
    """The share of one core that process ``pid`` used over the next ``seconds``."""
    start, began = _cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (_cpu_seconds(pid) - start) / (time.monotonic() - began)


def test_a_client_that_does_not_read_is_cut_off_by_the_statement_timeout(
    start_server: StartServer, tmp_path: Any
) -> None:
    """A client opens a write transaction, then asks for a huge result and never reads it: the
    server blocks sending. Before: the session kept the write lock for the whole idle timeout
    (600 s), whatever --statement-timeout said, and the watchdog spun at 70-100% of a core
    meanwhile. Now the session is closed soon after its statement timeout (its transaction rolled
    back), and the server idles."""
    server = start_server("--db", str(tmp_path / "t.db"), "--statement-timeout", "1")
    assert server.pid is not None
    with others_served(server.node) as healthy:
        healthy.execute("CREATE TABLE w (k INTEGER)")
        sock, decoder = _login(server.node)
        with sock:
            sock.sendall(encode_frame([Msg.QUERY, 1, "INSERT INTO w VALUES (1)", None, 0]))
            assert _answer(sock, decoder, 1)[0] == Msg.RESULT  # a write transaction is open
            sock.sendall(encode_frame([Msg.QUERY, 2, _HUGE, None, 0]))
            time.sleep(2.5)  # the statement timeout (1 s) has passed; the send is blocked
            share = _cpu_share(server.pid, 2.0)
            assert share < 0.3, f"the server burns {share:.0%} of a core on a blocked client"
            # Another writer gets the lock: the stuck session's transaction was rolled back.
            began = time.monotonic()
            with exdb.connect(server.node, autocommit=True) as writer:
                writer.execute("INSERT INTO w VALUES (2)")
            assert time.monotonic() - began < 8.0
            sock.settimeout(5.0)
            with_error = messages_until_close(sock, limit=30.0)  # drained, then closed
            assert all(m[0] == Msg.RESULT for m in with_error if m[1] != 0), with_error[-1:]
        assert healthy.execute("SELECT k FROM w").fetchall() == [(2,)]


def test_pipelined_requests_during_a_long_batch_do_not_pile_up(start_server: StartServer) -> None:
    """While a long BATCH runs, the server looks for a CANCEL once a millisecond. Before, each
    look read and decoded 64 KiB more of whatever the client had pipelined, without bound (and
    scanned all of it for CANCELs): a client flooding PINGs grew the server by 58 MiB in 8 s,
    and on. Now at most ~1024 requests are read ahead; the rest wait in the socket."""
    server = start_server()
    assert server.pid is not None
    with others_served(server.node):
        sock, _ = _login(server.node)
        with sock:
            sets = [[i] for i in range(3_000_000)]
            sock.sendall(encode_frame([Msg.BATCH, 1, "SELECT ?", sets, 1]))
            sock.recv(1 << 16)  # the BATCH is decoded and runs: from here on it stays alike
            time.sleep(0.5)
            before = rss(server.pid)
            pings = b"".join(encode_frame([Msg.PING, 100 + i]) for i in range(9000))
            pending = bytearray()
            sock.setblocking(False)
            peak = before
            deadline = time.monotonic() + 8.0
            while time.monotonic() < deadline:
                if not pending:
                    pending += pings
                try:
                    del pending[: sock.send(pending)]
                except BlockingIOError:
                    time.sleep(0.001)
                try:
                    while sock.recv(1 << 20):
                        pass
                except BlockingIOError:
                    pass
                peak = max(peak, rss(server.pid))
            grown = (peak - before) / 1024
            assert grown < 20, f"the server grew by {grown:.0f} MiB"
