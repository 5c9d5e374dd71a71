"""Before authentication the server is bounded: small frames, small msgpack values, str map
keys, one deadline for the whole handshake, handshake slots apart from the sessions. Each attack
runs against a real server, and the server keeps serving everyone else and keeps what was
committed."""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

import exdb
from exdb.cluster import ServerProcess
from exdb.wire.codec import PREAUTH_MAX_FRAME, FrameDecoder, encode_frame
from exdb.wire.messages import MAGIC, PROTOCOL_VERSION, Msg

from _handshake import TIMEOUT, core_login, messages_until_close, open_raw, others_served
from _handshake import vm_rss_kib as rss

StartServer = Callable[..., ServerProcess]
PASSWORD = "trickle-proof"


# CPython's tuple hash (xxHash-like, the same since 3.8) is invertible: for any first item, a
# second item can be solved for so that every pair hashes alike.
_M = (1 << 64) - 1
_X1, _X2, _X5 = 11400714785074694791, 14029467366897019727, 2870177450012600261


def _rotl(x: int) -> int:
    return ((x << 31) | (x >> 33)) & _M


def _rotr(x: int) -> int:
    return ((x >> 31) | (x << 33)) & _M


def colliding_map(n: int) -> bytes:
    """A packed msgpack map of ``n`` keys, pairs of ints (arrays, which decode as tuples),
    that all hash alike: building it as a dict is quadratic in ``n``, with the GIL held
    throughout. (Packed by hand: this process would pay the same price to build the dict.)"""
    inv1, inv2 = pow(_X1, -1, 1 << 64), pow(_X2, -1, 1 << 64)
    want = _rotr(((12345 - (2 ^ _X5 ^ 3527539)) & _M) * inv1 & _M)
    keys: list[tuple[int, int]] = []
    a = 0
    while len(keys) < n:
        a += 1
        second = ((want - (_rotl((_X5 + a * _X2) & _M) * _X1 & _M)) * inv2) & _M
        if second < (1 << 61) - 1:
            b = second
        elif second > _M - ((1 << 61) - 1) and second != _M:
            b = second - (1 << 64)
        else:
            continue
        if b not in (-1, -2):  # hash(-1) is -2
            keys.append((a, b))
    assert len({hash(k) for k in keys[:100]}) == 1  # they do collide
    header = b"\xdf" + struct.pack(">I", n)  # map 32
    return header + b"".join(msgpack.packb(k) + b"\x00" for k in keys)


def frame(body: bytes) -> bytes:
    """A frame around an already packed body."""
    return struct.pack(">I", len(body)) + body


def error_of(messages: list[Any]) -> str:
    """The text of the session-level ERROR among ``messages``."""
    errors = [m for m in messages if m[0] == Msg.ERROR and m[1] == 0]
    assert len(errors) == 1, messages
    return f"{errors[0][2]}: {errors[0][3]}"


# --- decoding -------------------------------------------------------------------------------


def test_colliding_map_keys_are_refused_fast(start_server: StartServer) -> None:
    # Before: strict_map_key=False let a HELLO of 20,000 such keys freeze every session for
    # 5.8 s (measured: the other session's SELECT 1 waited 5,835 ms).
    server = start_server("--engine", "sqlite", env={"EXDB_PASSWORD": PASSWORD})
    hello = b"\x93" + msgpack.packb(Msg.HELLO) + b"\x00"  # [HELLO, 0, <map>]
    small = hello + colliding_map(150)  # fits a pre-auth frame
    assert len(small) < PREAUTH_MAX_FRAME
    large = hello + colliding_map(20_000)
    with others_served(server.node, PASSWORD) as healthy:
        stop = threading.Event()
        answers: list[float] = []

        def ping() -> None:
            while not stop.is_set():
                started = time.monotonic()
                assert healthy.execute("SELECT 1").fetchone() == (1,)
                answers.append(time.monotonic() - started)
                time.sleep(0.01)

        pinger = threading.Thread(target=ping)
        pinger.start()
        try:
            for body in [small, large] * 10:
                started = time.monotonic()
                with open_raw(server.node) as raw:
                    # Refused at the header, perhaps before the rest went out.
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        raw.sendall(MAGIC + frame(body))
                    text = error_of(messages_until_close(raw))
                assert time.monotonic() - started < 2.0, text
                assert text.startswith("InterfaceError: protocol error"), text
                assert "exceeds" in text or "map" in text, text
        finally:
            stop.set()
            pinger.join(TIMEOUT)
        assert answers and max(answers) < 1.0, max(answers)
    # Once logged in, the same map as a named parameter set is refused as fast, and only that
    # session ends (the map keys of every message must be str).
    with exdb.connect(server.node, password=PASSWORD) as conn:
        started = time.monotonic()
        sock = conn._sock  # the door's socket: send the raw frame on the logged-in session
        assert sock is not None
        query = b"\x95" + msgpack.packb(Msg.QUERY) + b"\x01" + msgpack.packb("SELECT 1")
        sock.sendall(frame(query + colliding_map(20_000) + b"\x00"))
        with pytest.raises(exdb.InterfaceError, match=r"str|map key"):
            conn.execute("SELECT 2")
        assert time.monotonic() - started < 2.0


def test_str_keyed_named_parameters_still_pass(start_server: StartServer) -> None:
    server = start_server("--engine", "sqlite")
    with exdb.connect(server.node) as conn:
        sock = conn._sock
        assert sock is not None
        sock.sendall(encode_frame([Msg.QUERY, 1, "SELECT :a + :b", {"a": 1, "b": 2}, 0]))
        decoder = FrameDecoder()
        messages: list[Any] = []
        for _ in range(100):
            if messages:
                break
            messages.extend(decoder.feed(sock.recv(1 << 16)))
        assert messages[0][0] == Msg.RESULT and messages[0][3] == ((3,),), messages


def test_an_oversized_preauth_frame_is_refused_at_its_header(start_server: StartServer) -> None:
    # Before: four 60 MiB HELLOs raised the server's memory by 240-440 MiB.
    server = start_server("--engine", "sqlite", env={"EXDB_PASSWORD": PASSWORD})
    assert server.pid is not None
    with others_served(server.node, PASSWORD):
        before = rss(server.pid)
        header = struct.pack(">I", 60 * 1024 * 1024)
        socks = [open_raw(server.node) for _ in range(4)]
        try:
            for sock in socks:
                sock.sendall(MAGIC + header)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(b"\0" * (1 << 20))  # the start of the body; no more is read
            for sock in socks:
                text = error_of(messages_until_close(sock))
                assert f"frame of {60 * 1024 * 1024} bytes exceeds the limit of 4096" in text
        finally:
            for sock in socks:
                sock.close()
        grown = rss(server.pid) - before
        assert grown < 32 * 1024, f"the server grew by {grown} KiB"


def test_after_login_the_configured_max_frame_applies(start_server: StartServer) -> None:
    server = start_server("--engine", "duckdb", env={"EXDB_PASSWORD": PASSWORD})
    with exdb.connect(server.node, password=PASSWORD, autocommit=True) as conn:
        big = "x" * 200_000  # far above the 4 KiB before login
        assert conn.execute("SELECT length(?)", (big,)).fetchone() == (200_000,)
    # Without a password, requests sent in the same write as the HELLO are read after it, with
    # the limits of a logged-in session.
    plain = start_server("--engine", "sqlite")
    with open_raw(plain.node) as raw:
        query = encode_frame([Msg.QUERY, 1, "SELECT length(?)", ["y" * 10_000], 1])
        raw.sendall(MAGIC + encode_frame([Msg.HELLO, 0, {"protocol": PROTOCOL_VERSION}]) + query)
        decoder = FrameDecoder()
        messages: list[Any] = []
        for _ in range(100):
            if len(messages) >= 2:
                break
            messages.extend(decoder.feed(raw.recv(1 << 16)))
        assert messages[0][0] == Msg.WELCOME
        assert messages[1][0] == Msg.RESULT and messages[1][3] == ((10_000,),), messages[1]


# --- one deadline for the whole handshake ---------------------------------------------------


def test_the_deadline_covers_the_whole_handshake(start_server: StartServer) -> None:
    server = start_server(
        "--engine", "sqlite", "--handshake-timeout", "1", env={"EXDB_PASSWORD": PASSWORD}
    )
    with others_served(server.node, PASSWORD):
        # The preamble and nothing else: told, then closed, after about 1 s.
        with open_raw(server.node) as raw:
            started = time.monotonic()
            raw.sendall(MAGIC)
            text = error_of(messages_until_close(raw))
            took = time.monotonic() - started
        assert "OperationalError: handshake timeout: not authenticated within 1 s" in text
        assert 0.8 < took < 5.0, took
        # Nothing at all: closed without a frame.
        with open_raw(server.node) as raw:
            started = time.monotonic()
            assert messages_until_close(raw) == []
            assert 0.8 < time.monotonic() - started < 5.0
        # A HELLO a byte every 0.2 s: each read comes in time, the whole does not.
        hello = MAGIC + encode_frame([Msg.HELLO, 0, {"protocol": PROTOCOL_VERSION, "x": "y" * 50}])
        with open_raw(server.node) as raw:
            started = time.monotonic()
            for i in range(len(hello)):
                try:
                    raw.sendall(hello[i : i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    break
                if time.monotonic() - started > 1.2:
                    break
                time.sleep(0.2)
            text = error_of(messages_until_close(raw))
            assert "handshake timeout" in text and time.monotonic() - started < 5.0
        # A SCRAM exchange left hanging after the CHALLENGE.
        with open_raw(server.node) as raw:
            started = time.monotonic()
            first = "n,,n=exdb,r=abcdefghijklmnopqrstuvwx"
            info = {"protocol": PROTOCOL_VERSION, "auth": "SCRAM-SHA-256", "scram": first}
            raw.sendall(MAGIC + encode_frame([Msg.HELLO, 0, info]))
            messages = messages_until_close(raw)
            assert messages[0][0] == Msg.CHALLENGE, messages
            assert "handshake timeout" in error_of(messages[1:])
            assert 0.8 < time.monotonic() - started < 5.0


class Tricklers:
    """``count`` connections that each send a byte of a never-ending HELLO every ``interval``
    seconds (from one thread, with a selector), and record how long the server kept each."""

    def __init__(
        self, node: str, count: int, interval: float = 0.5, source: str | None = None
    ) -> None:
        self.node, self.count, self.interval, self.source = node, count, interval, source
        info = {"protocol": PROTOCOL_VERSION, "client": "z" * 600}
        self.payload = MAGIC + encode_frame([Msg.HELLO, 0, info])
        self.lifetimes: list[float] = []
        self.errors: list[str] = []
        self.connect_failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._socks: dict[socket.socket, list[Any]] = {}  # -> [connected at, sent, decoder]
        self._sel = selectors.DefaultSelector()

    def __enter__(self) -> Tricklers:
        for _ in range(self.count):
            self._open()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive()
        for sock in list(self._socks):
            self._sel.unregister(sock)
            sock.close()
        self._sel.close()

    def ages(self) -> list[float]:
        """How long the connections open now have been open."""
        now = time.monotonic()
        return [now - state[0] for state in self._socks.values()]

    def _open(self) -> None:
        try:
            sock = open_raw(self.node, self.source, timeout=5.0)
        except OSError:
            self.connect_failures += 1
            return
        sock.setblocking(False)
        self._socks[sock] = [time.monotonic(), 0, FrameDecoder()]
        self._sel.register(sock, selectors.EVENT_READ)

    def _cut(self, sock: socket.socket) -> None:
        state = self._socks.pop(sock)
        self.lifetimes.append(time.monotonic() - state[0])
        self._sel.unregister(sock)
        sock.close()
        self._open()  # the attack goes on

    def _run(self) -> None:
        next_tick = time.monotonic()
        give_up = next_tick + 120  # bounded, whatever happens
        while not self._stop.is_set() and time.monotonic() < give_up:
            if time.monotonic() >= next_tick:
                for sock, state in list(self._socks.items()):
                    try:
                        sock.send(self.payload[state[1] : state[1] + 1])
                        state[1] += 1
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        self._cut(sock)
                next_tick += self.interval
            wait = max(0.0, min(next_tick - time.monotonic(), 0.1))
            for key, _ in self._sel.select(wait):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    for msg in self._socks[sock][2].feed(data):
                        self.errors.append(str(msg[3]) if msg[0] == Msg.ERROR else str(msg))
                else:
                    self._cut(sock)


def _ten_logins(node: str) -> int:
    """Ten logins with the right password, each with its own short timeout; how many got in."""
    good = 0
    for _ in range(10):
        try:
            with exdb.connect(node, password=PASSWORD, connectTimeout=5000) as conn:
                good += conn.execute("SELECT 1").fetchone() == (1,)
        except exdb.OperationalError as exc:
            print(f"login failed: {exc}")
        time.sleep(0.1)
    return good


def test_tricklers_are_cut_off_by_the_deadline_and_lock_out_no_one(
    start_server: StartServer,
) -> None:
    # Before: the limit was per read, so 100+ tricklers held every session slot as long as
    # they went on, and the right password failed 10 of 10 tries.
    server = start_server(
        "--engine",
        "sqlite",
        "--handshake-timeout",
        "2",
        "--max-sessions",
        "8",
        "--max-handshakes",
        "128",
        env={"EXDB_PASSWORD": PASSWORD},
    )
    with others_served(server.node, PASSWORD), Tricklers(server.node, 110) as tricklers:
        assert _ten_logins(server.node) == 10
        time.sleep(2.5)  # every trickler has met the deadline at least once
        assert max(tricklers.ages(), default=0) < 2 + 1.5
    assert tricklers.lifetimes, "no trickler was cut off"
    assert max(tricklers.lifetimes) < 2 + 1.5, max(tricklers.lifetimes)
    assert min(tricklers.lifetimes) > 1.5, min(tricklers.lifetimes)  # the deadline, not a slot
    assert any("handshake timeout: not authenticated within 2 s" in e for e in tricklers.errors)


def test_full_handshake_slots_drop_the_oldest_not_the_newcomer(
    start_server: StartServer,
) -> None:
    server = start_server(
        "--engine",
        "sqlite",
        "--max-handshakes",
        "16",
        "--max-sessions",
        "8",
        env={"EXDB_PASSWORD": PASSWORD},
    )
    with others_served(server.node, PASSWORD):
        # 100 tricklers for 16 slots, from this address: each newcomer pushes out the oldest,
        # and a client that logs in within milliseconds gets through every time.
        with Tricklers(server.node, 100) as tricklers:
            time.sleep(1.0)
            assert _ten_logins(server.node) == 10
        assert len(tricklers.lifetimes) >= 80  # pushed out long before the 10 s deadline
        assert max(tricklers.lifetimes) < 10, max(tricklers.lifetimes)
        # A flood that reconnects at once, from another address: it pushes out its own
        # connections, never those of other addresses.
        with Tricklers(server.node, 60, interval=0.05, source="127.0.0.3") as flood:
            time.sleep(0.5)
            for _ in range(10):
                info, _ = core_login(server.node, PASSWORD)
                assert isinstance(info, dict), info
        assert len(flood.lifetimes) > 40


def test_sessions_beyond_max_sessions_are_told(start_server: StartServer) -> None:
    server = start_server("--engine", "sqlite", "--max-sessions", "2")
    first = exdb.connect(server.node, autocommit=True)
    second = exdb.connect(server.node)
    try:
        first.execute("CREATE TABLE kept (v INTEGER)")
        first.execute("INSERT INTO kept VALUES (42)")
        with pytest.raises(exdb.OperationalError, match="too many sessions: the server allows 2"):
            exdb.connect(server.node)
        assert second.execute("SELECT v FROM kept").fetchall() == [(42,)]
    finally:
        first.close()
        second.close()
    for _ in range(50):  # the slot frees as the session thread ends
        try:
            with exdb.connect(server.node) as conn:
                assert conn.execute("SELECT v FROM kept").fetchall() == [(42,)]
            break
        except exdb.OperationalError:
            time.sleep(0.1)
    else:
        pytest.fail("no session slot came free")
