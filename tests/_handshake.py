"""Helpers of the authentication and pre-authentication tests: the client core driven over a
bare socket (to see every byte it sends, or to connect from another loopback address), raw
reads, and a check that the server kept serving everyone else and kept committed rows."""

from __future__ import annotations

import contextlib
import itertools
import socket
import time
from collections.abc import Iterator
from typing import Any

import exdb
from exdb.client.core import ClientCore
from exdb.wire.codec import FrameDecoder

#: Seconds any raw socket waits at most.
TIMEOUT = 10.0
_tables = itertools.count(1)


def open_raw(node: str, source: str | None = None, timeout: float = TIMEOUT) -> socket.socket:
    """A TCP connection to ``node``, from ``source`` (another 127.x address) if given."""
    host, port = node.rsplit(":", 1)
    address = (source, 0) if source else None
    sock = socket.create_connection((host, int(port)), timeout=timeout, source_address=address)
    sock.settimeout(timeout)
    return sock


def core_login(
    node: str, password: str | None, source: str | None = None
) -> tuple[dict[str, Any] | exdb.Error, bytes]:
    """Log in with the client core over a bare socket, from ``source`` (a 127.x address) if
    given; return what the server said of itself (or the core's error) and every byte the
    client sent."""
    core = ClientCore(node)
    sent = bytearray()
    with open_raw(node, source) as sock:
        core.start(password, None)
        op = core.handshake()
        try:
            rid = next(op)
            for _ in range(100):
                data = core.data_to_send()
                sent += data
                sock.sendall(data)
                while not core.has_event(rid):
                    try:
                        chunk = sock.recv(1 << 16)
                    except ConnectionResetError as exc:
                        core.connection_lost(exc)
                        continue
                    if not chunk:
                        core.connection_lost()
                    else:
                        core.receive_data(chunk)
                rid = op.send(None)
            raise AssertionError("the handshake never ended")
        except StopIteration as stop:
            sent += core.data_to_send()
            return stop.value, bytes(sent)
        except exdb.Error as exc:
            return exc, bytes(sent)


def messages_until_close(sock: socket.socket, limit: float = TIMEOUT) -> list[Any]:
    """Every message the server sends until it closes the connection (within ``limit`` s)."""
    decoder = FrameDecoder()
    messages: list[Any] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(1 << 16)
        except (ConnectionResetError, BrokenPipeError):
            return messages
        except TimeoutError:
            break
        if not chunk:
            return messages
        messages.extend(decoder.feed(chunk))
    raise AssertionError(f"the server did not close the connection in {limit} s: {messages}")


def vm_rss_kib(pid: int) -> int:
    """The resident memory of process ``pid``, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


@contextlib.contextmanager
def others_served(node: str, password: str | None = None) -> Iterator[exdb.Connection]:
    """Around an attack: a row committed before it and a session opened before it; after it the
    session still answers, the row is still there and a new connection logs in."""
    options: dict[str, Any] = {"password": password} if password else {}
    table = f"kept{next(_tables)}"
    with exdb.connect(node, autocommit=True, **options) as healthy:
        healthy.execute(f"CREATE TABLE {table} (k INTEGER PRIMARY KEY, v TEXT)")
        healthy.execute(f"INSERT INTO {table} VALUES (1, 'committed before')")
        yield healthy
        assert healthy.execute("SELECT 2").fetchone() == (2,)
    with exdb.connect(node, **options) as fresh:
        rows = fresh.execute(f"SELECT k, v FROM {table}").fetchall()
        assert rows == [(1, "committed before")]
