"""The client's sans-IO core: protocol state, request ids, result streams and the operations
every door shares.

Operations are generators. They queue bytes to send on the :class:`ClientCore` and ``yield`` the
request id whose next event they wait for. A door drives them: the synchronous connection with a
blocking socket, the asyncio connection with a transport. Neither door knows the protocol, and no
operation knows how bytes move.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scramp import ScramClient

from exdb.errors import Error, InterfaceError, OperationalError, ProgrammingError, make_error
from exdb.types import plain_params
from exdb.wire.codec import FrameDecoder, ProtocolError, encode_frame
from exdb.wire.messages import CODE_CANCELED, FLAG_AUTOCOMMIT, MAGIC, PROTOCOL_VERSION, SCRAM, Msg

__all__ = ["BatchResult", "ClientCore", "Op", "ResultStream", "bye_frame", "check_params"]

#: An operation: yields the request id it waits on, returns its value.
Op = Generator[int, None, Any]

_HELLO_ID = 0
# The SCRAM user name: the server has one password and reads no name (HELLO carries "user").
_SCRAM_USER = "exdb"
# The most PBKDF2 iterations a server may make the client compute (PostgreSQL's default: 4096).
_MAX_ITERATIONS = 1_000_000


class ClientCore:
    """Protocol state of one connection to one node. Not thread-safe: a door serialises use."""

    def __init__(self, node: str, max_frame: int = 64 * 1024 * 1024) -> None:
        self.node = node
        self._decoder = FrameDecoder(max_frame)
        self._out = bytearray()
        self._ids = itertools.count(1)
        self._events: dict[int, collections.deque[Any]] = {}
        self.broken: Error | None = None
        self.server_info: dict[str, Any] = {}
        #: Session settings sent in HELLO (e.g. ``statement_timeout``), set by the door.
        self.hello_options: dict[str, Any] = {}
        self._scram: ScramClient | None = None

    # --- bytes in and out ---------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes queued for the node; the door must send them all."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def receive_data(self, data: bytes | memoryview) -> list[int]:
        """Feed bytes from the node; return the request ids that got events (-1: all of them)."""
        try:
            messages = self._decoder.feed(data)
        except ProtocolError as exc:
            self.fail(OperationalError(f"protocol error from the server: {exc}", node=self.node))
            return [-1]
        woken = []
        for msg in messages:
            rid = msg[1] if len(msg) > 1 else None
            if rid == _HELLO_ID and msg[0] == Msg.ERROR:
                self.fail(make_error(msg[2], msg[3], node=self.node))
                return [-1]
            queue = self._events.get(rid)  # type: ignore[arg-type]
            if queue is not None:  # events of forgotten requests (cancelled, timed out) drop
                queue.append(msg)
                woken.append(rid)
        return woken  # type: ignore[return-value]

    def fail(self, error: Error) -> None:
        """Mark the connection unusable; every waiting operation raises ``error``."""
        if self.broken is None:
            self.broken = error

    def connection_lost(self, exc: BaseException | None = None) -> None:
        """The transport closed."""
        reason = f": {exc}" if exc else ""
        self.fail(OperationalError(f"connection to the node was lost{reason}", node=self.node))

    # The node does not answer: what every door says of it (each then closes its transport).

    def connect_timed_out(self, seconds: float) -> Error:
        """The connect (TCP, TLS and the handshake) took past connectTimeout: fail; the error."""
        return self._silent(f"connect timeout: no answer within connectTimeout ({_ms(seconds)} ms)")

    def read_timed_out(self, seconds: float) -> Error:
        """Nothing came for readTimeout: fail; the error."""
        return self._silent(f"no answer within readTimeout ({_ms(seconds)} ms)")

    def stopped_answering(self, silent: float, why: str) -> Error:
        """Silent for ``silent`` seconds, and a liveness probe failed (``why``): fail; the error."""
        return self._silent(
            f"node {self.node} stopped answering: nothing received for {silent:.1f} s, and {why}"
        )

    def _silent(self, message: str) -> Error:
        self.fail(OperationalError(message, node=self.node))
        assert self.broken is not None
        return self.broken

    # --- requests and events ------------------------------------------------------------------

    def start(self, password: str | None, user: str | None) -> None:
        """Queue the preamble and the handshake. With a password (an empty one is none), the
        handshake is a SCRAM-SHA-256 exchange: the password never leaves this process, and
        :meth:`handshake` accepts only a server that proves it knows the password too."""
        self._events[_HELLO_ID] = collections.deque()
        info: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "user": user, "client": "exdb"}
        if password:
            try:
                from scramp import ScramClient  # only with a password: ~80 ms to import

                self._scram = ScramClient([SCRAM], _SCRAM_USER, password)
                info["scram"] = self._scram.get_client_first()
            except Exception as exc:  # scramp's ScramException: SASLprep refused the password
                raise ProgrammingError(
                    f"this password cannot be used with {SCRAM}: {exc}", node=self.node
                ) from None
            info["auth"] = SCRAM
        self._out += MAGIC
        info.update(self.hello_options)
        self._out += encode_frame([Msg.HELLO, _HELLO_ID, info])

    def request(self, kind: Msg, *fields: Any) -> int:
        """Queue a request; return its id."""
        if self.broken is not None:
            raise self.broken
        rid = next(self._ids)
        frame = encode_frame([kind, rid, *fields])  # first: a value it cannot send leaves no trace
        self._events[rid] = collections.deque()
        self._out += frame
        return rid

    def cancel(self, rid: int) -> None:
        """Queue a CANCEL for ``rid``."""
        self._out += self.cancel_frame(rid)

    def cancel_frame(self, rid: int) -> bytes:
        """The bytes of an in-band CANCEL for ``rid`` (honoured between result batches)."""
        return encode_frame([Msg.CANCEL, 0, rid])

    def txn_id(self, gid: str, elsewhere: bool = False) -> None:
        """Queue a TXNID: the id of the distributed transaction whose first statement on this
        node comes next, and whether it may hold locks on another node (no answer;
        exdb.distributed.deadlock)."""
        self._out += encode_frame(
            [Msg.TXNID, 0, gid, {"elsewhere": True}] if elsewhere else [Msg.TXNID, 0, gid]
        )

    def want_arrow(self, rid: int) -> None:
        """Queue an ARROW for ``rid``: the node sends the rest of its result as Arrow IPC."""
        self._out += encode_frame([Msg.ARROW, 0, rid])

    def out_of_band_cancel(self, rid: int) -> bytes:
        """What a door sends on a second connection to interrupt ``rid`` while it runs."""
        info = self.server_info
        ticket = {"session": info.get("session"), "key": info.get("key"), "request": rid}
        return MAGIC + encode_frame([Msg.CANCEL, 0, ticket])

    def has_event(self, rid: int) -> bool:
        """Whether an operation waiting on ``rid`` can go on."""
        queue = self._events.get(rid)
        return bool(queue) or self.broken is not None or queue is None

    def pop_event(self, rid: int) -> Any:
        """The next event of ``rid``; raises the connection's error if it broke."""
        queue = self._events.get(rid)
        if queue:
            return queue.popleft()
        if self.broken is not None:
            raise self.broken
        raise InterfaceError(f"request {rid} is not pending", node=self.node)

    def forget(self, rid: int) -> None:
        """Stop tracking ``rid``; its later events are dropped."""
        self._events.pop(rid, None)

    def wait(self, rid: int) -> Op:
        """Operation: the next event of ``rid``."""
        while not self.has_event(rid):
            yield rid
        return self.pop_event(rid)

    # --- shared operations --------------------------------------------------------------------

    def handshake(self) -> Op:
        """Operation: the rest of the handshake (the SCRAM exchange, when :meth:`start` was
        given a password), up to the server's WELCOME; returns what the server said of itself."""
        msg = yield from self.wait(_HELLO_ID)
        scram = self._scram
        if msg[0] == Msg.CHALLENGE and scram is not None:
            self._out += encode_frame([Msg.AUTH, _HELLO_ID, {"scram": self._answer(scram, msg)}])
            msg = yield from self.wait(_HELLO_ID)
            challenged = True
        else:
            challenged = False
        if msg[0] != Msg.WELCOME or len(msg) < 3 or not isinstance(msg[2], dict):
            raise OperationalError(f"unexpected handshake reply {msg[0]}", node=self.node)
        info = dict(msg[2])
        if scram is not None:
            proof = info.pop("scram", None)
            if not challenged or not isinstance(proof, str):
                raise OperationalError(
                    "authentication failed: the server asked for no password, so it could not"
                    " prove it knows ours; refusing it (connect without a password to trust it)",
                    node=self.node,
                )
            try:
                scram.set_server_final(proof)
            except Exception:  # scramp's ScramException: a wrong server signature
                raise OperationalError(
                    "authentication failed: the server could not prove it knows the password",
                    node=self.node,
                ) from None
        self.server_info = info
        return self.server_info

    def _answer(self, scram: ScramClient, msg: Any) -> str:
        """The SCRAM client-final message that answers a CHALLENGE."""
        body = msg[2] if len(msg) > 2 and isinstance(msg[2], dict) else {}
        server_first = body.get("scram")
        if not isinstance(server_first, str):
            raise OperationalError("malformed CHALLENGE from the server", node=self.node)
        fields = dict(f.split("=", 1) for f in server_first.split(",") if "=" in f)
        count = fields.get("i", "")
        if not count.isdigit() or int(count) > _MAX_ITERATIONS:
            raise OperationalError(
                f"the server asks for {count!r} SCRAM iterations; at most {_MAX_ITERATIONS}",
                node=self.node,
            )
        try:
            scram.set_server_first(server_first)
            return str(scram.get_client_final())
        except Exception as exc:  # scramp's ScramException: a malformed server-first
            raise OperationalError(
                f"malformed SCRAM challenge from the server: {exc}", node=self.node
            ) from None

    def simple(self, kind: Msg, *fields: Any, statement: str | None = None) -> Op:
        """Operation: one request answered by one RESULT (or ERROR); returns the RESULT."""
        rid = self.request(kind, *fields)
        try:
            msg = yield from self.wait(rid)
        finally:
            self.forget(rid)
        if msg[0] == Msg.ERROR:
            raise make_error(msg[2], msg[3], node=self.node, statement=statement)
        return msg

    def ping(self) -> Op:
        """Operation: a round trip; returns the server's session state."""
        msg = yield from self.simple(Msg.PING)
        return dict(msg[2])

    def batch(self, sql: str, seq: Sequence[Any], autocommit: bool) -> Op:
        """Operation: run ``sql`` once per parameter set, each on its own (one BATCH request);
        returns each set's :class:`BatchResult` or exception, in order. The whole operation
        raises only when the request fails as a whole (cancelled, refused, connection lost)."""
        try:
            rid = self.request(Msg.BATCH, sql, seq, FLAG_AUTOCOMMIT if autocommit else 0)
        except TypeError as exc:  # a parameter the wire cannot carry
            raise ProgrammingError(str(exc), node=self.node, statement=sql) from None
        collector = _BatchCollector(self.node, sql)
        try:
            more = True
            while more:
                msg = yield from self.wait(rid)
                more = collector.absorb(msg)
        finally:
            self.forget(rid)
        return collector.finish(len(seq))


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def bye_frame() -> bytes:
    """The frame a client sends when it closes."""
    return encode_frame([Msg.BYE, 0])


def check_params(params: Any, statement: str) -> Sequence[Any] | None:
    """Parameters as sent on the wire: None, a tuple or a list, NumPy and pandas values made
    plain (exdb.types.plain_params). Refuse what qmark style cannot bind."""
    if params is None:
        return None
    if type(params) is tuple or type(params) is list:
        return plain_params(params, statement)
    if isinstance(params, (str, bytes, bytearray)) or not isinstance(params, Sequence):
        raise ProgrammingError(
            f"parameters must be a sequence (a tuple or list), not {type(params).__name__}",
            statement=statement,
        )
    return plain_params(list(params), statement)


class BatchResult:
    """One parameter set's answer to a BATCH: its columns (None: no result set), column types,
    rows (tuples) and rowcount."""

    __slots__ = ("columns", "rowcount", "rows", "types")

    def __init__(self, header: Any, rows: Sequence[Any], rowcount: int) -> None:
        self.columns: list[str] | None = None if header is None else [c[0] for c in header]
        self.types: list[Any] = [] if header is None else [c[1] for c in header]
        self.rows: list[tuple[Any, ...]] = list(rows)
        self.rowcount = rowcount

    def __repr__(self) -> str:
        return f"BatchResult({self.columns!r}, {self.rows!r}, {self.rowcount})"


class _BatchCollector:
    """Reassembles the RESULTS frames of one BATCH into each parameter set's outcome."""

    __slots__ = ("_open", "node", "outcomes", "statement")

    def __init__(self, node: str, statement: str) -> None:
        self.node = node
        self.statement = statement
        self.outcomes: list[BatchResult | Error] = []
        self._open: BatchResult | None = None  # a set whose rows go on in the next item

    def absorb(self, msg: Any) -> bool:
        """Take one frame of the answer; whether more frames follow."""
        if msg[0] == Msg.ERROR:
            error = make_error(msg[2], msg[3], node=self.node, statement=self.statement)
            error.code = msg[4] if len(msg) > 4 else None
            raise error
        if msg[0] != Msg.RESULTS or len(msg) != 4:
            raise InterfaceError(
                f"unexpected answer to BATCH: message type {msg[0]}",
                node=self.node,
                statement=self.statement,
            )
        for item in msg[3]:
            self._item(item)
        return bool(msg[2])

    def _item(self, item: Any) -> None:
        if item[0] == Msg.ERROR:
            self._open = None  # rows already received for this set are void
            self.outcomes.append(
                make_error(item[1], item[2], node=self.node, statement=self.statement)
            )
            return
        _, header, rows, more, rowcount = item
        current = self._open
        if current is None:
            current = BatchResult(header, rows, rowcount)
        else:
            current.rows.extend(rows)
        self._open = current if more else None
        if not more:
            self.outcomes.append(current)

    def finish(self, expected: int) -> list[BatchResult | Error]:
        """Every set's outcome, once the answer is complete."""
        if self._open is not None or len(self.outcomes) != expected:
            raise InterfaceError(
                f"the server answered {len(self.outcomes)} of {expected} parameter sets",
                node=self.node,
                statement=self.statement,
            )
        return self.outcomes


class ResultStream:
    """The client side of one statement's result: header, buffered batches, rowcount."""

    __slots__ = (
        "_batch",
        "_batches",
        "_pos",
        "columns",
        "core",
        "lastrowid",
        "more",
        "rid",
        "rowcount",
        "statement",
        "types",
    )

    def __init__(self, core: ClientCore, statement: str) -> None:
        self.core = core
        self.rid = -1
        self.statement = statement
        self.columns: list[str] | None = None
        self.types: list[Any] = []
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.more = False
        self._batches: collections.deque[tuple[Any, ...]] = collections.deque()
        self._batch: tuple[Any, ...] = ()
        self._pos = 0

    def _absorb(self, msg: Any) -> None:
        if msg[0] == Msg.ERROR:
            self.more = False
            self.core.forget(self.rid)
            error = make_error(msg[2], msg[3], node=self.core.node, statement=self.statement)
            error.code = msg[4] if len(msg) > 4 else None
            raise error
        _, _, header, rows, more, rowcount, lastrowid = msg
        if header is not None:
            self.columns = [c[0] for c in header]
            self.types = [c[1] for c in header]
        if rows:
            self._batches.append(rows)
        self.more = more
        self.rowcount = rowcount
        self.lastrowid = lastrowid
        if not more:
            self.core.forget(self.rid)

    def _request(self, kind: Msg, sql: str, params: Any, autocommit: bool) -> int:
        try:
            return self.core.request(kind, sql, params, FLAG_AUTOCOMMIT if autocommit else 0)
        except TypeError as exc:  # a parameter the wire cannot carry
            raise ProgrammingError(str(exc), node=self.core.node, statement=sql) from None

    def execute(self, sql: str, params: Sequence[Any] | None, autocommit: bool) -> Op:
        """Operation: send the statement and wait for its first batch (or its rowcount)."""
        self.rid = self._request(Msg.QUERY, sql, params, autocommit)
        self.more = True
        self._absorb((yield from self.core.wait(self.rid)))

    def executemany(self, sql: str, seq: list[Any], autocommit: bool) -> Op:
        """Operation: send one statement with many parameter sets; wait for the total rowcount."""
        self.rid = self._request(Msg.EXECMANY, sql, seq, autocommit)
        self.more = True
        self._absorb((yield from self.core.wait(self.rid)))

    def _available(self) -> int:
        return len(self._batch) - self._pos + sum(len(b) for b in self._batches)

    def fetch(self, n: int | None) -> Op:
        """Operation: up to ``n`` rows (all the rest when None), as tuples."""
        if n is None and not self.more and not self._pos and len(self._batches) == 1:
            return list(self._batches.popleft())  # the common case: one batch, read whole
        while self.more and (n is None or self._available() < n):
            self._absorb((yield from self.core.wait(self.rid)))
        out: list[Any] = []
        while n is None or len(out) < n:
            if self._pos >= len(self._batch):
                if not self._batches:
                    break
                self._batch = self._batches.popleft()
                self._pos = 0
            take = len(self._batch) - self._pos if n is None else n - len(out)
            chunk = self._batch[self._pos : self._pos + take]
            out.extend(chunk)
            self._pos += len(chunk)
        return out

    def fetchone(self) -> Op:
        """Operation: the next row, or None."""
        if self._pos >= len(self._batch):
            while not self._batches and self.more:
                self._absorb((yield from self.core.wait(self.rid)))
            if not self._batches:
                return None
            self._batch = self._batches.popleft()
            self._pos = 0
        row = self._batch[self._pos]
        self._pos += 1
        return row

    def take_ready(self) -> list[Any]:
        """The rows received so far and not yet read, without waiting for more (a door reads
        several results as their rows arrive). Raises the node's error if it sent one."""
        while self.more and self.core.has_event(self.rid):
            self._absorb(self.core.pop_event(self.rid))
        out = list(self._batch[self._pos :])
        self._batch, self._pos = (), 0
        while self._batches:
            out.extend(self._batches.popleft())
        return out

    def arrow(self, collector: Any) -> Op:
        """Operation: the rest of the result into ``collector`` (an exdb.arrow.Collector), read
        to its end; a node that can (WELCOME "arrow") is asked to send it as Arrow IPC."""
        if self.more and self.core.server_info.get("arrow") is True:
            self.core.want_arrow(self.rid)
        collector.add(self._batch[self._pos :])
        self._batch, self._pos = (), 0
        while True:
            while self._batches:
                collector.add(self._batches.popleft())
            if not self.more:
                return collector
            self._absorb((yield from self.core.wait(self.rid)))

    def discard(self) -> Op:
        """Operation: give up the rest of the result. A long stream is cancelled, not read."""
        self._batches.clear()
        self._batch = ()
        if not self.more:
            return
        self.core.cancel(self.rid)
        while self.more:
            try:
                self._absorb((yield from self.core.wait(self.rid)))
            except Error as exc:
                if exc.code != CODE_CANCELED:
                    raise
            self._batches.clear()
