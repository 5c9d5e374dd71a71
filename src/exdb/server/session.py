"""One client session on the shard server: the protocol state machine on the event loop, and a
thread of its own that runs the session's engine calls in order.

The event loop only decodes frames, checks them and hands requests to the session's thread; it
never waits on the engine. The thread executes, encodes result batches and hands the bytes back to
the loop. A CANCEL is seen by the loop while the thread is busy, and interrupts the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import queue
import threading
from typing import TYPE_CHECKING, Any

from exdb.server.engines import EngineError, EngineSession
from exdb.wire.codec import FrameDecoder, ProtocolError, encode_frame
from exdb.wire.messages import FLAG_AUTOCOMMIT, MAGIC, PROTOCOL_VERSION, Msg

if TYPE_CHECKING:
    from exdb.server.app import ShardServer

__all__ = ["Session"]

_session_ids = itertools.count(1)

# Result batches grow from small (fast first rows) to large (throughput), bounded in bytes.
_FIRST_BATCH = 256
_MAX_BATCH = 16384
_TARGET_FRAME = 1 << 20


class _Request:
    __slots__ = ("kind", "rid", "args")

    def __init__(self, kind: Msg, rid: int, args: tuple[Any, ...]) -> None:
        self.kind = kind
        self.rid = rid
        self.args = args


class Session(asyncio.Protocol):
    """The server side of one client connection."""

    def __init__(self, server: ShardServer) -> None:
        self.server = server
        self.id = next(_session_ids)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._decoder = FrameDecoder(server.config.max_frame)
        self._state = "magic"  # magic -> hello -> ready -> closed
        self._pending_magic = b""
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._engine: EngineSession | None = None
        self._lock = threading.Lock()  # guards _current and _cancelled
        self._current: int | None = None
        self._cancelled: set[int] = set()
        self._pending: set[int] = set()  # request ids queued or running
        self._writable = threading.Event()
        self._writable.set()
        self._idle: asyncio.TimerHandle | None = None
        self.closed = False
        self.thread_done = asyncio.Event()

    # --- event loop side ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.server.sessions.add(self)
        if len(self.server.sessions) > self.server.config.max_sessions:
            self._fail("OperationalError", "too many sessions; try again later")
            return
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._close_now()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._touch()
        if self._state == "magic":
            data = self._pending_magic + data
            if len(data) < len(MAGIC):
                if not MAGIC.startswith(data):
                    self._fail("InterfaceError", "not an exdb client: bad preamble")
                    return
                self._pending_magic = data
                return
            if data[: len(MAGIC)] != MAGIC:
                self._fail("InterfaceError", "not an exdb client: bad preamble")
                return
            data = data[len(MAGIC) :]
            self._state = "hello"
        try:
            messages = self._decoder.feed(data)
        except ProtocolError as exc:
            self._fail("InterfaceError", f"protocol error: {exc}")
            return
        for msg in messages:
            if self.closed:
                return
            self._dispatch(msg)

    def _dispatch(self, msg: Any) -> None:
        if not isinstance(msg, (list, tuple)) or len(msg) < 2 or not isinstance(msg[0], int):
            self._fail("InterfaceError", "protocol error: a message must be [kind, id, ...]")
            return
        kind, rid = msg[0], msg[1]
        if not isinstance(rid, int):
            self._fail("InterfaceError", "protocol error: the request id must be an integer")
            return
        if self._state == "hello":
            if kind != Msg.HELLO:
                self._fail("InterfaceError", "protocol error: the first message must be HELLO")
            else:
                self._hello(msg)
            return
        try:
            handler = self._HANDLERS[Msg(kind)]
        except (ValueError, KeyError):
            self._send(encode_frame([Msg.ERROR, rid, "InterfaceError", f"unknown message type {kind}"]))
            return
        handler(self, msg)

    def _hello(self, msg: Any) -> None:
        info = msg[2] if len(msg) > 2 and isinstance(msg[2], dict) else None
        if info is None:
            self._fail("InterfaceError", "protocol error: HELLO needs a map of options")
            return
        version = info.get("protocol")
        if version != PROTOCOL_VERSION:
            self._fail(
                "InterfaceError",
                f"unsupported protocol version {version!r}; this server speaks {PROTOCOL_VERSION}",
            )
            return
        expected = self.server.config.password
        if expected is not None:
            given = info.get("password")
            given_bytes = given.encode() if isinstance(given, str) else b""
            # Constant time, and the same path whether the password is missing or wrong.
            if not hmac.compare_digest(given_bytes, expected.encode()) or given is None:
                self._fail("OperationalError", "authentication failed: wrong or missing password")
                return
        self._state = "ready"
        self._thread = threading.Thread(
            target=self._run, name=f"exdb-session-{self.id}", daemon=True
        )
        self._thread.start()
        self._send(
            encode_frame(
                [
                    Msg.WELCOME,
                    0,
                    {
                        "protocol": PROTOCOL_VERSION,
                        "server": self.server.version,
                        "engine": self.server.engine.name,
                        "session": self.id,
                    },
                ]
            )
        )

    def _on_query(self, msg: Any) -> None:
        rid = msg[1]
        if len(msg) != 5 or not isinstance(msg[2], str) or not isinstance(msg[4], int):
            self._reply_error(rid, "InterfaceError", "malformed QUERY message")
            return
        params = msg[3]
        if params is not None and not isinstance(params, (list, tuple, dict)):
            self._reply_error(rid, "ProgrammingError", "parameters must be a sequence or None")
            return
        self._enqueue(_Request(Msg.QUERY, rid, (msg[2], params, msg[4])))

    def _on_execmany(self, msg: Any) -> None:
        rid = msg[1]
        if (
            len(msg) != 5
            or not isinstance(msg[2], str)
            or not isinstance(msg[3], (list, tuple))
            or not isinstance(msg[4], int)
        ):
            self._reply_error(rid, "InterfaceError", "malformed EXECMANY message")
            return
        if not all(isinstance(p, (list, tuple, dict)) for p in msg[3]):
            self._reply_error(rid, "ProgrammingError", "each parameter set must be a sequence")
            return
        self._enqueue(_Request(Msg.EXECMANY, rid, (msg[2], msg[3], msg[4])))

    def _on_txn(self, msg: Any) -> None:
        rid = msg[1]
        if len(msg) != 3 or msg[2] not in ("begin", "commit", "rollback"):
            self._reply_error(rid, "InterfaceError", "malformed TXN message")
            return
        self._enqueue(_Request(Msg.TXN, rid, (msg[2],)))

    def _on_ping(self, msg: Any) -> None:
        self._enqueue(_Request(Msg.PING, msg[1], ()))

    def _on_cancel(self, msg: Any) -> None:
        if len(msg) != 3 or not isinstance(msg[2], int):
            self._reply_error(msg[1], "InterfaceError", "malformed CANCEL message")
            return
        target = msg[2]
        with self._lock:
            if target not in self._pending:
                return  # already finished: nothing to cancel
            self._cancelled.add(target)
            if self._current == target and self._engine is not None:
                self._engine.interrupt()

    def _on_bye(self, msg: Any) -> None:
        self._close_now()

    _HANDLERS = {
        Msg.QUERY: _on_query,
        Msg.EXECMANY: _on_execmany,
        Msg.TXN: _on_txn,
        Msg.PING: _on_ping,
        Msg.CANCEL: _on_cancel,
        Msg.BYE: _on_bye,
    }

    def _enqueue(self, request: _Request) -> None:
        with self._lock:
            self._pending.add(request.rid)
        self._queue.put(request)

    def _reply_error(self, rid: int, kind: str, message: str) -> None:
        self._send(encode_frame([Msg.ERROR, rid, kind, message]))

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _fail(self, kind: str, message: str) -> None:
        """Tell the client why, then close this session only."""
        self._send(encode_frame([Msg.ERROR, 0, kind, message]))
        self.server.log(f"session {self.id} from {self.peer} closed: {message}")
        self._close_now()

    def _close_now(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._writable.set()  # wake a thread waiting to write, so it sees the session closed
        if self._idle is not None:
            self._idle.cancel()
        with self._lock:
            if self._current is not None and self._engine is not None:
                self._engine.interrupt()
        self._queue.put(None)
        if self.transport is not None:
            self.transport.close()
        if self._thread is None:
            self._finished()

    def _finished(self) -> None:
        self.server.sessions.discard(self)
        self.thread_done.set()

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        timeout = self.server.config.idle_timeout
        if timeout:
            self._idle = self.loop.call_later(timeout, self._idle_check)

    def _idle_check(self) -> None:
        if self.closed:
            return
        if self._pending:
            self._touch()  # busy, not idle: a long query is not an idle session
            return
        self._fail(
            "OperationalError",
            f"idle timeout: no request for {self.server.config.idle_timeout:g} s",
        )

    async def shutdown(self, grace: float) -> None:
        """Let the running request finish for up to ``grace`` seconds, then interrupt it, roll
        back whatever is open and close the session."""
        for _ in range(int(grace * 20)):
            if not self._pending:
                break
            await asyncio.sleep(0.05)
        self._fail("OperationalError", "server shutting down")
        await self.thread_done.wait()

    # --- session thread side ------------------------------------------------------------------

    def _post(self, data: bytes) -> None:
        """Hand bytes to the event loop for sending (from the session thread)."""
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self.loop.call_soon_threadsafe(self._send, data)

    def _run(self) -> None:
        try:
            try:
                self._engine = self.server.engine.open_session()
            except EngineError as exc:
                self._post(encode_frame([Msg.ERROR, 0, exc.kind, exc.message]))
                self.loop.call_soon_threadsafe(self._close_now)
                return
            while True:
                request = self._queue.get()
                if request is None or self.closed:
                    break
                with self._lock:
                    cancelled = request.rid in self._cancelled
                    self._current = None if cancelled else request.rid
                try:
                    if cancelled:
                        self._post(_canceled(request.rid))
                    else:
                        self._execute(request)
                finally:
                    with self._lock:
                        self._current = None
                        self._cancelled.discard(request.rid)
                        self._pending.discard(request.rid)
        finally:
            if self._engine is not None:
                self._engine.close()  # rolls back an open transaction
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._finished)

    def _execute(self, request: _Request) -> None:
        engine = self._engine
        assert engine is not None
        rid = request.rid
        try:
            if request.kind == Msg.QUERY:
                sql, params, flags = request.args
                outcome = engine.execute(sql, params, bool(flags & FLAG_AUTOCOMMIT))
                if outcome.columns is None:
                    self._post(
                        encode_frame(
                            [Msg.RESULT, rid, None, [], False, outcome.rowcount, outcome.lastrowid]
                        )
                    )
                else:
                    self._stream(rid, outcome.columns, outcome.fetch)
            elif request.kind == Msg.EXECMANY:
                sql, seq, flags = request.args
                count = engine.executemany(sql, seq, bool(flags & FLAG_AUTOCOMMIT))
                self._post(encode_frame([Msg.RESULT, rid, None, [], False, count, None]))
            elif request.kind == Msg.TXN:
                engine.transaction(request.args[0])
                self._post(encode_frame([Msg.RESULT, rid, None, [], False, -1, None]))
            elif request.kind == Msg.PING:
                self._post(encode_frame([Msg.PONG, rid, {"in_transaction": engine.in_transaction}]))
        except EngineError as exc:
            if rid in self._cancelled:
                self._post(_canceled(rid))
            else:
                self._post(encode_frame([Msg.ERROR, rid, exc.kind, exc.message]))
        except Exception as exc:  # a bug of ours: report it, keep the session and the server up
            self.server.log(f"session {self.id}: internal error: {exc!r}")
            self._post(encode_frame([Msg.ERROR, rid, "InternalError", f"internal error: {exc!r}"]))

    def _stream(self, rid: int, columns: list[list[Any]], fetch: Any) -> None:
        """Send a result set in batches, waiting whenever the client is slow to read."""
        batch = _FIRST_BATCH
        header: list[list[Any]] | None = columns
        rows = fetch(batch)
        while True:
            if self.closed:
                return
            if rid in self._cancelled:
                self._post(_canceled(rid))
                return
            more = len(rows) == batch
            frame = encode_frame([Msg.RESULT, rid, header, rows, more, -1, None])
            if len(frame) > self.server.config.max_frame:
                self._post(
                    encode_frame(
                        [Msg.ERROR, rid, "DataError", "a result row exceeds the maximum frame size"]
                    )
                )
                return
            header = None
            while not self._writable.wait(0.5):
                if self.closed:
                    return
            self._post(frame)
            if not more:
                return
            if len(frame) < _TARGET_FRAME // 2 and batch < _MAX_BATCH:
                batch *= 2
            elif len(frame) > _TARGET_FRAME and batch > 1:
                batch //= 2
            rows = fetch(batch)


def _canceled(rid: int) -> bytes:
    return encode_frame([Msg.ERROR, rid, "OperationalError", "statement canceled"])
