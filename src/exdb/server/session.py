"""One client session on the shard server, on a thread of its own.

The thread owns its socket and its engine connection: it reads requests, runs them in order and
writes the answers, with no hand-off between threads on the way (a hand-off from an event loop to
a worker thread costs more than the whole loopback round trip; see docs/architecture.md). One
session's long statement therefore never delays another session.

Cancelling: between result batches the thread polls its socket for a CANCEL; a statement running
inside the engine is cancelled out of band, by a CANCEL sent on a second connection with the
session's id and secret key (as PostgreSQL does), which interrupts the engine from that thread.
The server's watchdog (exdb.server.watchdog) interrupts a statement past the session's statement
timeout, or whose client has hung up.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import itertools
import secrets
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from exdb.arrow import server_can_arrow
from exdb.keepalive import keep_alive
from exdb.server.auth import ServerExchange, Verifier, peer_key
from exdb.server.engines import FIRST_BATCH, EngineError, EngineSession, Outcome
from exdb.server.locks import abort_wait, lock_waits
from exdb.server.prepared import TwoPhaseHook
from exdb.wire.codec import (
    PREAUTH_LIMITS,
    PREAUTH_MAX_FRAME,
    FrameDecoder,
    ProtocolError,
    encode_frame,
    encode_frame_packed,
    pack,
)
from exdb.wire.messages import CODE_CANCELED, FLAG_AUTOCOMMIT, MAGIC, PROTOCOL_VERSION, SCRAM, Msg

if TYPE_CHECKING:
    from exdb.server.app import ShardServer

__all__ = ["Session"]

_session_ids = itertools.count(1)

# Result batches grow from small (fast first rows) to large (throughput), bounded in bytes.
_MAX_BATCH = 16384
_TARGET_FRAME = 1 << 20
_FLUSH_AT = 1 << 16  # pipelined answers are sent together up to this many bytes
# The same words whether the password is missing, malformed or wrong.
_AUTH_FAILED = "authentication failed: wrong or missing password"
# A RESULTS frame's bytes around its items (length, array headers, kind, id, more), at most.
_RESULTS_OVERHEAD = 32
_POLL_EVERY = 0.001  # seconds between two looks for a CANCEL while a BATCH runs
_MAX_EARLY_CANCELS = 1024  # out-of-band cancels of requests yet to come, kept at most
#: Requests read ahead at most while one runs (looking for a CANCEL): a client that pipelines
#: more waits in its socket's buffer, not in the server's memory.
_MAX_INBOX = 1024
#: Seconds a send may stay blocked past the statement timeout before the session is closed.
_SEND_GRACE = 1.0
#: Arrow IPC frames: rows asked of the engine at a time, and the size aimed at.
_ARROW_ROWS = 262144
_ARROW_FRAME = 8 << 20


class _SessionClosed(Exception):
    """The client went away, broke the protocol or idled out; the reason was already sent."""


class Session:
    """The server side of one client connection."""

    def __init__(self, server: ShardServer, sock: socket.socket, peer: str) -> None:
        self.server = server
        self.id = next(_session_ids)
        self.key = secrets.token_hex(16)
        self.peer = peer
        # Whom handshake slots and failed logins count against: the address (an IPv6 /64).
        self.source = peer_key(peer.rpartition(":")[0])
        self._sock = sock
        # Until the WELCOME: small frames, small msgpack values, one whole-handshake deadline.
        self._decoder = FrameDecoder(PREAUTH_MAX_FRAME, PREAUTH_LIMITS)
        self._deadline: float | None = time.monotonic() + server.config.handshake_timeout
        self._framed = False  # the preamble came: a failure can be told in an ERROR frame
        self._dropped = threading.Event()  # the server gave the handshake slot to a newcomer
        #: 0 until a whole HELLO has arrived, then 1: full handshake slots drop 0s first.
        self.handshake_progress = 0
        self._buf = memoryview(bytearray(1 << 16))
        self._inbox: collections.deque[Any] = collections.deque()
        self._out = bytearray()
        self._engine: EngineSession | None = None
        self._twopc: TwoPhaseHook | None = None  # PREPARE TRANSACTION & co (server/prepared.py)
        self._lock = threading.Lock()  # guards _current against a concurrent cancel
        self._current: int | None = None
        self._cancelled: set[int] = set()
        self.busy = False
        #: When the current (or last) request or BATCH parameter set started (time.monotonic()).
        self._started = 0.0
        #: The ``_started`` of a statement the watchdog interrupted for its timeout.
        self._expired_at = 0.0
        #: When the send now blocked began (0.0: not sending), for the watchdog.
        self._sending = 0.0
        self._last_rid = 0  # the latest request started; ids above it are still to come
        #: Seconds a statement may run (0: no limit): the server's, or the session's own.
        self.statement_timeout = server.config.statement_timeout
        #: Seconds a statement may wait for a lock, and a transaction may sit idle (0: no
        #: limit): the server's, or the session's own (HELLO).
        self.lock_timeout = server.config.lock_timeout
        self.idle_in_transaction_timeout = server.config.idle_in_transaction_timeout
        #: After each request: whether a transaction is open, and when the request ended.
        self.txn_open = False
        self.request_ended = 0.0
        #: Why the transaction was ended while the session was idle (told at the next request).
        self._idle_ended: str | None = None
        self._watchdog = server.watchdog
        with contextlib.suppress(OSError):  # a socket already reset: its first read will say so
            keep_alive(sock)
        self.thread = threading.Thread(
            target=self._run, name=f"exdb-session-{self.id}", daemon=True
        )

    # --- entry points from other threads ------------------------------------------------------

    def cancel(self, rid: int, key: str) -> bool:
        """Interrupt request ``rid`` if it is running now, or have it answered as cancelled
        when it comes (a request still on its way or queued: ids increase); ``key`` must be
        this session's."""
        if not hmac.compare_digest(key.encode(), self.key.encode()):
            return False
        with self._lock:
            if self._engine is None:
                return False
            if self._current != rid:
                if rid <= self._last_rid or len(self._cancelled) >= _MAX_EARLY_CANCELS:
                    return False  # finished already (or a flood of bogus ids)
                self._cancelled.add(rid)
                return True
            self._cancelled.add(rid)
            self._engine.interrupt()
            return True

    def expire(self, started: float) -> None:
        """The watchdog: interrupt the statement that started at ``started``, if it still runs,
        for its statement timeout."""
        with self._lock:
            if self._current is None or self._started != started or self._engine is None:
                return
            self._expired_at = started
            self._engine.interrupt()
            sending = self._sending
        if not sending or time.monotonic() - sending < _SEND_GRACE:
            return
        # The client does not read its answer: the session cannot tell it anything more, and
        # would keep its transaction (and locks) for the whole idle timeout. End it.
        self.server.log(
            f"session {self.id} from {self.peer}: closed, its client does not read the answer"
            " of a statement past its statement timeout"
        )
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def client_gone(self, started: float) -> None:
        """The watchdog: the client hung up; interrupt its statement if it still runs."""
        with self._lock:
            if self._current is None or self._started != started or self._engine is None:
                return
            self._cancelled.add(self._current)
            self._engine.interrupt()
        self.server.log(f"session {self.id} from {self.peer}: client gone, statement interrupted")

    def fileno(self) -> int:
        """The session socket's file descriptor (-1 once closed), for the watchdog's poll."""
        return self._sock.fileno()

    def drop_handshake(self) -> None:
        """End a session that has not authenticated yet, at once (its handshake slot went to
        a newer connection, or the server stops); from any thread."""
        self._dropped.set()
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def interrupt(self) -> None:
        """Interrupt whatever runs now (server shutdown)."""
        with self._lock:
            if self._current is not None and self._engine is not None:
                self._engine.interrupt()

    # --- the session thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except _SessionClosed:
            pass  # the reason was sent to the client and logged where it mattered
        except (OSError, ssl.SSLError) as exc:
            if not self._dropped.is_set():  # a dropped handshake was logged as it was dropped
                self.server.log(f"session {self.id} from {self.peer}: connection error: {exc}")
        finally:
            if self._twopc is not None:
                self._twopc.close(self)
            if self._engine is not None:
                self._engine.close()  # rolls back an open transaction
            with contextlib.suppress(OSError):
                self._sock.close()
            self.server.session_ended(self)

    def _serve(self) -> None:
        if self.server.tls is not None:
            self._arm_deadline()
            self._sock = self.server.tls.wrap_socket(
                self._sock, server_side=True, do_handshake_on_connect=False
            )
            if self._dropped.is_set():  # dropped while the socket changed hands
                raise _SessionClosed
            self._arm_deadline()
            try:
                self._sock.do_handshake()  # type: ignore[attr-defined]
            except TimeoutError:
                self._handshake_timed_out()
        self._read_magic()
        first = self._handshake_message()
        if first[0] == Msg.CANCEL:
            self._out_of_band_cancel(first)
            return
        if first[0] == Msg.LOCKS:
            self._out_of_band_locks(first)
            return
        if first[0] == Msg.PING:  # a liveness probe, before any authentication: alive
            self._send(encode_frame([Msg.PONG, 0, {}]))
            return self._flush()
        if first[0] != Msg.HELLO:
            self._fail("InterfaceError", "protocol error: the first message must be HELLO")
        self._hello(first)
        idle = self.server.config.idle_timeout or None
        if isinstance(self._sock, ssl.SSLSocket):
            # CPython's blocking SSL read retries past SO_RCVTIMEO: use a Python-level timeout.
            self._sock.settimeout(idle)
        else:
            # Blocking mode, no poll() before every call; the kernel times an idle read out.
            self._sock.settimeout(None)
            if idle:
                limit = struct.pack("ll", int(idle), int((idle % 1) * 1e6))
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        while True:
            self._handle(self._next_message(self.server.config.idle_timeout))

    def _read_magic(self) -> None:
        got = b""
        while len(got) < len(MAGIC):
            self._arm_deadline()
            try:
                chunk = self._sock.recv(len(MAGIC) - len(got))
            except TimeoutError:
                self._handshake_timed_out()
            if not chunk:
                raise _SessionClosed
            got += chunk
            if not MAGIC.startswith(got):
                self._fail("InterfaceError", "not an exdb client: bad preamble")
        self._framed = True

    def _arm_deadline(self) -> None:
        """Before each read or write of the handshake: the socket times out when the time
        allowed for the whole handshake (from accept) runs out; once out, the session ends."""
        assert self._deadline is not None
        if self._dropped.is_set():
            raise _SessionClosed
        left = self._deadline - time.monotonic()
        if left > 0:
            self._sock.settimeout(left)
            return
        self._handshake_timed_out()

    def _handshake_timed_out(self) -> None:
        """End the session: the time allowed for its handshake ran out."""
        message = (
            "handshake timeout: not authenticated within "
            f"{self.server.config.handshake_timeout:g} s"
        )
        if self._framed:
            self._fail("OperationalError", message)
        self.server.log(f"session {self.id} from {self.peer} closed: {message}")
        raise _SessionClosed

    def _handshake_message(self) -> Any:
        """The next message of the handshake. The decoder gives one at a time before the
        WELCOME, so one received with the message before it is still in its buffer."""
        if not self._inbox and self._decoder.buffered:
            try:
                self._inbox.extend(self._decoder.feed(b""))
            except ProtocolError as exc:
                self._fail("InterfaceError", f"protocol error: {exc}")
        return self._next_message(None)

    def _receive(self, timeout: float | None) -> None:
        """Block until bytes arrive. The socket is in blocking mode (no poll before each call)
        with SO_RCVTIMEO set to the idle timeout; the server wakes it with shutdown(SHUT_RD)."""
        if self._deadline is not None:
            self._arm_deadline()
        try:
            n = self._sock.recv_into(self._buf)
        except (BlockingIOError, ssl.SSLWantReadError, TimeoutError):
            if self._deadline is not None:
                self._handshake_timed_out()
            self._fail("OperationalError", f"idle timeout: no request for {timeout or 0:g} s")
        if self.server.stopping:
            self._fail("OperationalError", "server shutting down")
        if n == 0:
            raise _SessionClosed
        try:
            self._inbox.extend(self._decoder.feed(self._buf[:n]))
        except ProtocolError as exc:
            self._fail("InterfaceError", f"protocol error: {exc}")

    def _next_message(self, timeout: float | None) -> Any:
        while not self._inbox:
            self._flush()
            self._receive(timeout)
        msg = self._inbox.popleft()
        if not isinstance(msg, (list, tuple)) or len(msg) < 2 or not isinstance(msg[0], int):
            self._fail("InterfaceError", "protocol error: a message must be [kind, id, ...]")
        if not isinstance(msg[1], int):
            self._fail("InterfaceError", "protocol error: the request id must be an integer")
        return msg

    def _send(self, frame: bytes) -> None:
        self._out += frame
        if len(self._out) >= _FLUSH_AT or not self._inbox:
            self._flush()

    def _flush(self) -> None:
        if self._out:
            self._sending = time.monotonic()
            try:
                self._sock.sendall(self._out)
            except (BlockingIOError, ssl.SSLWantWriteError, TimeoutError):
                # SO_SNDTIMEO: the client has not read for the whole idle timeout.
                raise _SessionClosed from None
            finally:
                self._sending = 0.0
            self._out.clear()

    def wake(self) -> None:
        """Make a blocked read return at once (server shutdown); from any thread."""
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._sock, socket.SHUT_RD)

    def _fail(self, kind: str, message: str) -> None:
        """Tell the client why, then end this session only."""
        with contextlib.suppress(OSError):
            self._out += encode_frame([Msg.ERROR, 0, kind, message])
            self._flush()
        if kind != "OperationalError" or "shutting down" not in message:
            self.server.log(f"session {self.id} from {self.peer} closed: {message}")
        raise _SessionClosed

    def _hello(self, msg: Any) -> None:
        self.handshake_progress = 1
        info = msg[2] if len(msg) > 2 and isinstance(msg[2], dict) else None
        if info is None:
            self._fail("InterfaceError", "protocol error: HELLO needs a map of options")
        assert info is not None
        version = info.get("protocol")
        if version != PROTOCOL_VERSION:
            self._fail(
                "InterfaceError",
                f"unsupported protocol version {version!r}; this server speaks {PROTOCOL_VERSION}",
            )
        verifier = self.server.verifier
        proof = None if verifier is None else self._authenticate(info, verifier)
        self._session_timeout(info.get("statement_timeout"))
        self.lock_timeout = self._seconds(info, "lock_timeout", self.lock_timeout)
        self.idle_in_transaction_timeout = self._seconds(
            info, "idle_in_transaction_timeout", self.idle_in_transaction_timeout
        )
        refusal = self.server.promote(self)
        if refusal is not None:
            self._fail("OperationalError", refusal)
        # Authenticated: the configured frame size, no limits on values, no handshake deadline.
        self._deadline = None
        self._decoder.max_frame = self.server.config.max_frame
        self._decoder.limits = None
        try:
            self._inbox.extend(self._decoder.feed(b""))  # requests pipelined after the HELLO
        except ProtocolError as exc:
            self._fail("InterfaceError", f"protocol error: {exc}")
        try:
            self._twopc = TwoPhaseHook(self.server.engine)  # recovers prepared ones, once
            self._engine = self.server.engine.open_session()
        except EngineError as exc:
            self._fail(exc.kind, exc.message)
        locks = getattr(self._engine, "locks", None)
        if locks is not None:
            locks.timeout = self.lock_timeout or float("inf")
        welcome = {
            "protocol": PROTOCOL_VERSION,
            "server": self.server.version,
            "engine": self.server.engine.name,
            "session": self.id,
            "key": self.key,
        }
        if server_can_arrow():
            welcome["arrow"] = True  # it answers ARROW (docs/protocol.md §8.1)
        if proof is not None:
            welcome["scram"] = proof  # the server-final message: the server knows the password
        self._send(encode_frame([Msg.WELCOME, 0, welcome]))

    def _authenticate(self, info: dict[Any, Any], verifier: Verifier) -> str:
        """The SCRAM-SHA-256 exchange that HELLO opened: CHALLENGE (server-first), AUTH
        (client-final); returns the server-final message, or ends the session."""
        client_first = info.get("scram")
        if info.get("auth") != SCRAM or not isinstance(client_first, str):
            self._fail("OperationalError", _AUTH_FAILED)
        assert isinstance(client_first, str)
        exchange = ServerExchange(verifier)
        challenge = exchange.challenge(client_first)
        if challenge is None:
            self._fail("OperationalError", _AUTH_FAILED)
        self._send(encode_frame([Msg.CHALLENGE, 0, {"scram": challenge}]))
        self._flush()
        msg = self._handshake_message()
        reply = msg[2] if msg[0] == Msg.AUTH and len(msg) > 2 else None
        client_final = reply.get("scram") if isinstance(reply, dict) else None
        if not isinstance(client_final, str):
            self._fail("InterfaceError", "protocol error: CHALLENGE must be answered by AUTH")
        assert isinstance(client_final, str)
        # An address that failed recently waits its turn, before the proof is checked: a delay
        # on failures alone would tell a guesser that gives up early that it guessed wrong.
        who = self.source
        assert self._deadline is not None
        turn = self.server.failed_logins.reserve(who, self._deadline)
        if turn is None:
            self._fail(
                "OperationalError",
                "authentication failed: too many failed attempts from this address; "
                "try again later",
            )
        assert turn is not None
        if self._dropped.wait(max(0.0, turn - time.monotonic())):
            raise _SessionClosed
        proof = exchange.verify(client_final)
        if proof is None:
            self.server.failed_logins.failed(who)
            self._fail("OperationalError", _AUTH_FAILED)
        assert proof is not None
        return proof

    def _out_of_band_cancel(self, msg: Any) -> None:
        info = msg[2] if len(msg) > 2 and isinstance(msg[2], dict) else {}
        target = self.server.find_session(info.get("session"))
        rid, key = info.get("request"), info.get("key")
        done = (
            target is not None
            and isinstance(rid, int)
            and isinstance(key, str)
            and target.cancel(rid, key)
        )
        self._send(encode_frame([Msg.PONG, 0, {"cancelled": bool(done)}]))
        self._flush()

    def _out_of_band_locks(self, msg: Any) -> None:
        """LOCKS on a second connection (docs/protocol.md §12.2): the node's lock waits, for a
        client that holds a session's key; with "abort", end that session's wait as a
        deadlock's victim."""
        info = msg[2] if len(msg) > 2 and isinstance(msg[2], dict) else {}
        target = self.server.find_session(info.get("session"))
        key = info.get("key")
        if (
            target is None
            or not isinstance(key, str)
            or not hmac.compare_digest(key.encode(), target.key.encode())
        ):
            self._send(encode_frame([Msg.PONG, 0, {"waits": None, "aborted": False}]))
            return self._flush()
        aborted = False
        if info.get("abort") is not None:
            aborted = abort_wait(target, info.get("abort"), info.get("message"))
        answer = {"waits": lock_waits(self.server), "aborted": aborted}
        self._send(encode_frame([Msg.PONG, 0, answer]))
        self._flush()

    def _seconds(self, info: dict[Any, Any], name: str, default: float) -> float:
        """A session setting from HELLO in milliseconds (0: no limit), in seconds."""
        value = info.get(name)
        if value is None:
            return default
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            self._fail("ProgrammingError", f"{name} must be milliseconds, not {value!r}")
        return float(value) / 1000.0

    def end_idle_transaction(self, limit: float) -> None:
        """The watchdog: roll back the transaction of this session, idle in it past ``limit``
        seconds, unless a request started meanwhile; the next request is told."""
        with self._lock:
            engine = self._engine
            if self._current is not None or self.busy or engine is None or not self.txn_open:
                return
            try:
                engine.transaction("rollback")
            except EngineError as exc:
                self.server.log(f"session {self.id}: idle transaction rollback failed: {exc}")
                return
            self.txn_open = False
            self._idle_ended = (
                f"idle-in-transaction timeout: the transaction was idle for more than {limit:g} s"
                " (idle_in_transaction_timeout) and was rolled back on this node; nothing of it"
                " was committed"
            )
        self.server.log(f"session {self.id} from {self.peer}: idle transaction rolled back")

    # --- requests -----------------------------------------------------------------------------

    def _handle(self, msg: Any) -> None:
        kind, rid = msg[0], msg[1]
        if kind == Msg.CANCEL or kind == Msg.ARROW:
            return  # its request finished already (a running one is polled for while streaming)
        if kind == Msg.TXNID:
            self._txn_id(msg)
            return
        if kind == Msg.BYE:
            raise _SessionClosed
        if rid == 0:
            self._fail("InterfaceError", "protocol error: request id 0 is reserved")
        if rid in self._cancelled:
            self._cancelled.discard(rid)
            self._send(_canceled(rid))
            return
        engine = self._engine
        assert engine is not None
        with self._lock:
            self._current = self._last_rid = rid
            self._started = time.monotonic()
        self.busy = True
        if self._watchdog.idle:
            self._watchdog.wake()
        try:
            if self._idle_ended is not None and self._refused_after_idle(kind, rid, msg):
                return
            assert self._twopc is not None
            if not self._twopc.before(self, engine, kind, rid, msg):
                current = self._engine  # the hook may have given the session another one
                assert current is not None
                self._dispatch(current, kind, rid, msg)
                self._twopc.ran(current, kind, msg)
        except EngineError as exc:
            if rid in self._cancelled:
                self._send(_canceled(rid))
            elif self._expired_at == self._started:
                self._send(self._timeout_frame(rid))
            else:
                self._send(encode_frame([Msg.ERROR, rid, exc.kind, exc.message]))
        except (_SessionClosed, OSError):
            raise
        except Exception as exc:  # a bug of ours: report it, keep the session and the server up
            self.server.log(f"session {self.id}: internal error: {exc!r}")
            self._send(encode_frame([Msg.ERROR, rid, "InternalError", f"internal error: {exc!r}"]))
        finally:
            with self._lock:
                self._current = None
                self._cancelled.discard(rid)
            if self.idle_in_transaction_timeout:
                self.txn_open = (self._engine or engine).in_transaction
                self.request_ended = time.monotonic()
            self.busy = False

    def _txn_id(self, msg: Any) -> None:
        """TXNID: the client's id of the transaction this session works for (no answer)."""
        gid = msg[2] if len(msg) in (3, 4) else None
        flags = msg[3] if len(msg) == 4 else {}
        if not isinstance(gid, str) or len(gid) > 128 or not isinstance(flags, dict):
            self._fail(
                "InterfaceError", "protocol error: TXNID needs a string of 128 at most (and a map)"
            )
        locks = getattr(self._engine, "locks", None)
        if locks is not None:
            locks.gid = gid
            locks.elsewhere = bool(flags.get("elsewhere"))  # wait-die (exdb.server.locks)

    def _refused_after_idle(self, kind: int, rid: int, msg: Any) -> bool:
        """After the watchdog rolled back this session's idle transaction: ROLLBACK is
        answered as done, COMMIT and statements with why (until the client rolls back, as
        PostgreSQL ignores commands in an aborted transaction); True if answered here."""
        message = self._idle_ended
        assert message is not None
        if kind == Msg.PING:
            return False
        if kind == Msg.TXN and len(msg) == 3 and msg[2] == "rollback":
            self._idle_ended = None
            return False
        if kind == Msg.TXN and len(msg) == 3 and msg[2] == "commit":
            self._idle_ended = None  # the transaction is over: it committed nothing
        else:
            message += "; roll back to go on"
        self._send(encode_frame([Msg.ERROR, rid, "OperationalError", message]))
        return True

    def _dispatch(self, engine: EngineSession, kind: int, rid: int, msg: Any) -> None:
        if kind == Msg.QUERY:
            if len(msg) != 5 or not isinstance(msg[2], str) or not isinstance(msg[4], int):
                raise EngineError("InterfaceError", "malformed QUERY message")
            params = msg[3]
            if params is not None and not isinstance(params, (list, tuple, dict)):
                raise EngineError("ProgrammingError", "parameters must be a sequence or None")
            outcome = engine.execute(msg[2], params, bool(msg[4] & FLAG_AUTOCOMMIT))
            if outcome.columns is None:
                self._send(
                    encode_frame(
                        [Msg.RESULT, rid, None, (), False, outcome.rowcount, outcome.lastrowid]
                    )
                )
            else:
                self._stream(rid, outcome.columns, outcome.fetch, outcome)
        elif kind == Msg.EXECMANY:
            if (
                len(msg) != 5
                or not isinstance(msg[2], str)
                or not isinstance(msg[3], (list, tuple))
                or not isinstance(msg[4], int)
            ):
                raise EngineError("InterfaceError", "malformed EXECMANY message")
            if not all(isinstance(p, (list, tuple, dict)) for p in msg[3]):
                raise EngineError("ProgrammingError", "each parameter set must be a sequence")
            count = engine.executemany(msg[2], msg[3], bool(msg[4] & FLAG_AUTOCOMMIT))
            self._send(encode_frame([Msg.RESULT, rid, None, (), False, count, None]))
        elif kind == Msg.BATCH:
            if (
                len(msg) != 5
                or not isinstance(msg[2], str)
                or not isinstance(msg[3], (list, tuple))
                or not isinstance(msg[4], int)
            ):
                raise EngineError("InterfaceError", "malformed BATCH message")
            self._batch(engine, rid, msg[2], msg[3], bool(msg[4] & FLAG_AUTOCOMMIT))
        elif kind == Msg.TXN:
            if len(msg) != 3 or msg[2] not in ("begin", "commit", "rollback"):
                raise EngineError("InterfaceError", "malformed TXN message")
            engine.transaction(msg[2])
            self._send(encode_frame([Msg.RESULT, rid, None, (), False, -1, None]))
        elif kind == Msg.PING:
            self._send(encode_frame([Msg.PONG, rid, {"in_transaction": engine.in_transaction}]))
        else:
            raise EngineError("InterfaceError", f"unknown message type {kind}")

    def _stream(
        self, rid: int, columns: list[list[Any]], fetch: Any, outcome: Outcome | None = None
    ) -> None:
        """Send a result set in batches; between batches, look for a CANCEL of it, and for an
        ARROW, after which the rest goes as Arrow IPC."""
        batch = FIRST_BATCH
        header: list[list[Any]] | None = columns
        rows = fetch(batch)
        while True:
            more = len(rows) == batch
            frame = self._result_frames(rid, header, rows, more)
            header = None
            if not more:
                return
            self._flush()
            if self._stopped_between_frames(rid):
                return
            if outcome is not None and self._arrow_wanted(rid):
                return self._stream_arrow(rid, columns, outcome)
            if len(frame) < _TARGET_FRAME // 2 and batch < _MAX_BATCH:
                batch *= 2
            elif len(frame) > _TARGET_FRAME and batch > 1:
                batch //= 2
            rows = fetch(batch)

    def _stopped_between_frames(self, rid: int) -> bool:
        """Between two frames of a result: if it was cancelled or ran past its statement
        timeout, send the error that ends it and say so."""
        if self._poll_cancel(rid) or rid in self._cancelled:
            self._send(_canceled(rid))
            return True
        if self._expired_at == self._started:
            self._send(self._timeout_frame(rid))
            return True
        return False

    def _arrow_wanted(self, rid: int) -> bool:
        """Whether an ARROW for ``rid`` came (read by the last look for a CANCEL)."""
        return (
            any(
                isinstance(m, (list, tuple)) and len(m) == 3 and m[0] == Msg.ARROW and m[2] == rid
                for m in self._inbox
            )
            and server_can_arrow()
        )

    def _stream_arrow(self, rid: int, columns: list[list[Any]], outcome: Outcome) -> None:
        """Send the rest of a result set as Arrow IPC streams, one RESULT frame each, within
        ``max_frame``; between frames, look for a CANCEL as between row batches."""
        room = self.server.config.max_frame - _RESULTS_OVERHEAD
        for piece in _arrow_pieces(columns, outcome, room, min(_ARROW_FRAME, room)):
            if isinstance(piece, list):  # rows that cannot be Arrow columns
                self._send(encode_frame([Msg.RESULT, rid, None, piece, True, -1, None]))
                self._flush()
            else:
                self._send_ipc(rid, piece)
            if self._stopped_between_frames(rid):
                return
        self._send(encode_frame([Msg.RESULT, rid, None, (), False, -1, None]))

    def _send_ipc(self, rid: int, data: Any) -> None:
        """Send ``[RESULT, rid, nil, <data as bin>, true, -1, nil]`` and flush it, writing the
        Arrow buffer to the socket as it is (msgpack would copy megabytes into its own)."""
        head = b"\x97" + pack(Msg.RESULT) + pack(rid) + b"\xc0\xc6" + struct.pack(">I", len(data))
        tail = b"\xc3\xff\xc0"  # more: true, rowcount: -1, lastrowid: nil
        self._out += struct.pack(">I", len(head) + len(data) + len(tail)) + head
        self._flush()
        self._out += data  # a bytearray's += is one memcpy; sendall copies no more
        self._out += tail
        self._flush()

    def _result_frames(
        self, rid: int, header: list[list[Any]] | None, rows: list[Any], more: bool
    ) -> bytes:
        """Send rows as one RESULT frame, or as several when one would exceed the maximum
        frame size; returns the (last) frame, whose size steers the next batch size."""
        frame = encode_frame([Msg.RESULT, rid, header, rows, more, -1, None])
        if len(frame) - 4 <= self.server.config.max_frame:
            self._send(frame)
            return frame
        if len(rows) <= 1:
            raise EngineError("DataError", "a result row exceeds the maximum frame size")
        half = len(rows) // 2
        self._result_frames(rid, header, rows[:half], True)
        return self._result_frames(rid, None, rows[half:], more)

    def _batch(self, engine: EngineSession, rid: int, sql: str, seq: Any, autocommit: bool) -> None:
        """Run ``sql`` once per parameter set, each on its own, and answer each set's rows or
        error in order, in RESULTS frames within ``max_frame``; between sets (and after each
        frame sent) look for a CANCEL of the request, as between result batches."""
        room = self.server.config.max_frame - _RESULTS_OVERHEAD
        target = min(_TARGET_FRAME, room)
        items: list[bytes] = []
        size = 0
        due = time.monotonic() + _POLL_EVERY
        with contextlib.closing(engine.execute_each(sql, seq, autocommit)) as outcomes:
            for outcome in outcomes:
                for item in _set_items(outcome, room, self._set_timed_out):
                    if items and size + len(item) > target:
                        self._send(encode_frame_packed([Msg.RESULTS, rid, True], items))
                        items, size = [], 0
                        self._flush()
                        if self._poll_cancel(rid):
                            self._send(_canceled(rid))
                            return
                        due = time.monotonic() + _POLL_EVERY
                    items.append(item)
                    size += len(item)
                if rid in self._cancelled or time.monotonic() >= due:
                    if rid in self._cancelled or self._poll_cancel(rid):
                        self._send(_canceled(rid))
                        return
                    due = time.monotonic() + _POLL_EVERY
                if self.statement_timeout:
                    with self._lock:  # each set has its own statement timeout
                        self._started = time.monotonic()
        self._send(encode_frame_packed([Msg.RESULTS, rid, False], items))

    def _set_timed_out(self, exc: EngineError) -> EngineError:
        """A BATCH parameter set's error, or its statement timeout if that interrupted it."""
        if self._expired_at == self._started:
            return EngineError("OperationalError", self._timeout_message())
        return exc

    def _timeout_message(self) -> str:
        ms = round(self.statement_timeout * 1000)
        return f"canceling statement due to statement timeout ({ms} ms)"

    def _timeout_frame(self, rid: int) -> bytes:
        """The ERROR that answers a request the watchdog interrupted for its timeout."""
        message = self._timeout_message()
        return encode_frame([Msg.ERROR, rid, "OperationalError", message, CODE_CANCELED])

    def _session_timeout(self, value: Any) -> None:
        """Take the session's own ``statement_timeout`` from HELLO (milliseconds; 0: none)."""
        if value is None:
            return
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            self._fail("ProgrammingError", f"statement_timeout must be milliseconds, not {value!r}")
        self.statement_timeout = value / 1000.0

    def _poll_cancel(self, rid: int) -> bool:
        """Read whatever the client sent meanwhile, without waiting; True if it cancels ``rid``."""
        sock = self._sock
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
        if len(self._inbox) < _MAX_INBOX and (pending or select.select([sock], [], [], 0)[0]):
            self._receive(None)
        targets = {
            m[2]
            for m in self._inbox
            if isinstance(m, (list, tuple))
            and len(m) == 3
            and m[0] == Msg.CANCEL
            and isinstance(m[2], int)
        }
        if targets:
            queued = {
                m[1]
                for m in self._inbox
                if isinstance(m, (list, tuple)) and len(m) > 1 and isinstance(m[1], int)
            }
            self._cancelled.update(targets & queued)  # later, pipelined requests
        cancelled = rid in targets
        return cancelled or self.server.stopping


def _set_items(
    outcome: Outcome | EngineError, room: int, why: Callable[[EngineError], EngineError]
) -> Iterator[bytes]:
    """The packed BATCH items that answer one parameter set: its rows, in pieces of at most
    ``room`` bytes, or its error (after pieces already given, which it voids); ``why`` turns an
    error into the one to report (an interrupted statement's timeout)."""
    if isinstance(outcome, EngineError):
        outcome = why(outcome)
        yield _error_item(outcome.kind, outcome.message, room)
        return
    if outcome.columns is None:
        yield pack([Msg.RESULT, None, (), False, outcome.rowcount])
        return
    header: list[list[Any]] | None = outcome.columns
    batch = FIRST_BATCH
    try:
        while True:
            rows = outcome.fetch(batch)
            more = len(rows) == batch
            yield from _row_items(header, rows, more, room)
            if not more:
                return
            header = None
            batch = min(batch * 2, _MAX_BATCH)
    except EngineError as exc:
        exc = why(exc)
        yield _error_item(exc.kind, exc.message, room)


def _arrow_pieces(
    columns: list[list[Any]], outcome: Outcome, room: int, target: int
) -> Iterator[Any]:
    """The rest of a result as RESULT rows fields: Arrow IPC streams of at most ``room``
    bytes (about ``target``), from the engine's own export or built from its rows; a batch of
    rows that cannot be one Arrow column each (a SQLite column of mixed kinds) goes as rows,
    for the client to judge."""
    from exdb import arrow  # pyarrow loads only when a client asks for Arrow

    if outcome.arrow is not None:
        batches: Iterator[Any] = outcome.arrow(_ARROW_ROWS)
    else:
        batches = _batches_from_rows(columns, outcome)
    for batch in batches:
        if isinstance(batch, list):
            yield from _split_rows(batch, room)
            continue
        slices = max(1, -(-batch.nbytes // target))
        step = max(1, -(-batch.num_rows // slices))
        for start in range(0, batch.num_rows, step):
            yield from _ipc_within(arrow, batch.slice(start, step), room)


def _batches_from_rows(columns: list[list[Any]], outcome: Outcome) -> Iterator[Any]:
    """Record batches built from an engine's rows (SQLite), or the rows where they cannot."""
    from exdb import arrow
    from exdb.errors import DataError

    names = [c[0] for c in columns]
    while rows := outcome.fetch(_ARROW_ROWS):
        try:
            table = arrow.table_from_rows(names, [], rows, "sqlite")
        except DataError:
            yield rows
            continue
        yield from table.to_batches()


def _ipc_within(arrow: Any, batch: Any, room: int) -> Iterator[Any]:
    data = arrow.ipc_bytes(batch)
    if len(data) <= room:
        yield data
        return
    if batch.num_rows <= 1:
        raise EngineError("DataError", "a result row exceeds the maximum frame size")
    half = batch.num_rows // 2
    yield from _ipc_within(arrow, batch.slice(0, half), room)
    yield from _ipc_within(arrow, batch.slice(half), room)


def _split_rows(rows: list[Any], room: int) -> Iterator[list[Any]]:
    if len(pack(rows)) <= room:
        yield rows
        return
    if len(rows) <= 1:
        raise EngineError("DataError", "a result row exceeds the maximum frame size")
    half = len(rows) // 2
    yield from _split_rows(rows[:half], room)
    yield from _split_rows(rows[half:], room)


def _row_items(
    header: list[list[Any]] | None, rows: list[Any], more: bool, room: int
) -> Iterator[bytes]:
    """Rows of one parameter set as packed BATCH items of at most ``room`` bytes each."""
    item = pack([Msg.RESULT, header, rows, more, -1])
    if len(item) <= room:
        yield item
        return
    if len(rows) <= 1:
        raise EngineError("DataError", "a result row exceeds the maximum frame size")
    half = len(rows) // 2
    yield from _row_items(header, rows[:half], True, room)
    yield from _row_items(None, rows[half:], more, room)


def _error_item(kind: str, message: str, room: int) -> bytes:
    """A parameter set's error as a packed BATCH item; a message too long for a frame is cut."""
    item = pack([Msg.ERROR, kind, message])
    if len(item) > room:
        cut = message.encode()[: max(0, room - 64)].decode(errors="ignore")
        item = pack([Msg.ERROR, kind, cut + "..."])
    return item


def _canceled(rid: int) -> bytes:
    return encode_frame([Msg.ERROR, rid, "OperationalError", "statement canceled", CODE_CANCELED])
