"""The synchronous door: a PEP 249 connection to one node over a blocking socket."""

from __future__ import annotations

import contextlib
import dataclasses
import select
import socket
import struct
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

from exdb.arrow import ArrowFetches
from exdb.client.base import BaseConnection, BaseCursor, Transaction, callproc_statement
from exdb.client.core import Op, bye_frame
from exdb.client.options import ConnectOptions, format_node
from exdb.copy_methods import CopyMethods
from exdb.errors import OperationalError
from exdb.keepalive import keep_alive
from exdb.wire.codec import encode_frame
from exdb.wire.messages import MAGIC, Msg

if TYPE_CHECKING:
    import ssl  # loaded only by a connection with ssl_params

__all__ = ["PROBE", "Connection", "Cursor", "drive", "open_socket", "probe"]

_RECV = 1 << 18
#: A liveness probe: the first (and only) message of a second connection; the server answers
#: PONG before any authentication.
PROBE = MAGIC + encode_frame([Msg.PING, 0])
_SLACK = 0.002  # seconds: a timer that fires this early still counts as due


def _is_tls(sock: socket.socket) -> TypeGuard[ssl.SSLSocket]:
    """Whether ``sock`` is wrapped in TLS (ssl is imported only by connections that use it)."""
    ssl_module = sys.modules.get("ssl")
    return ssl_module is not None and isinstance(sock, ssl_module.SSLSocket)


def _ms(seconds: float | None) -> int:
    return round((seconds or 0) * 1000)


def _connect(
    host: str, port: int, options: ConnectOptions, budget: float
) -> tuple[socket.socket, float]:
    """A connected (and, with ssl, wrapped) socket and the deadline of the try that made it:
    up to ``max_connect_attempts`` tries, each of at most ``budget`` seconds in all."""
    node = format_node(host, port)
    last: Exception | None = None
    for attempt in range(options.max_connect_attempts):
        if attempt:
            time.sleep(min(0.05 * 2**attempt, 1.0))
        deadline = time.monotonic() + budget
        try:
            sock = socket.create_connection((host, port), timeout=budget)
        except OSError as exc:
            last = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        keep_alive(sock)
        if options.ssl_context is not None:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                sock = options.ssl_context.wrap_socket(sock, server_hostname=host)
            except OSError as exc:
                sock.close()
                why = f"no answer within {_ms(budget)} ms" if isinstance(exc, TimeoutError) else exc
                raise OperationalError(f"TLS handshake failed: {why}", node=node) from exc
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        return sock, deadline
    attempts = options.max_connect_attempts
    raise OperationalError(
        f"cannot connect after {attempts} attempt{'s' * (attempts > 1)}: {last}", node=node
    )


def open_socket(host: str, port: int, options: ConnectOptions) -> socket.socket:
    """A connected (and, with ssl, wrapped) socket, after up to ``max_connect_attempts`` tries;
    its timeout is what is left of ``connect_timeout``."""
    return _connect(host, port, options, options.connect_timeout)[0]


def probe(host: str, port: int, options: ConnectOptions) -> str | None:
    """Probe a node on a second connection: None if it answers within ``liveness_timeout``,
    else why not. A node running a long statement answers at once; a stopped one does not."""
    budget = options.liveness_timeout
    once = dataclasses.replace(options, max_connect_attempts=1)
    try:
        sock, deadline = _connect(host, port, once, budget)
    except OperationalError as exc:
        return f"the liveness probe failed: {exc.message}"
    try:
        sock.sendall(PROBE)
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.recv(64)  # PONG, or an orderly close: either way the server process runs
    except TimeoutError:
        return f"no answer to a liveness probe within {_ms(budget)} ms"
    except OSError as exc:
        return f"the liveness probe failed: {exc}"
    finally:
        sock.close()
    return None


class Connection(BaseConnection):
    """A PEP 249 connection to one exdb node.

    >>> conn = exdb.connect("127.0.0.1", 5001)        # doctest: +SKIP
    >>> conn.execute("SELECT 1, 2").fetchall()         # doctest: +SKIP
    [(1, 2)]
    """

    __module__ = "exdb"

    def __init__(self, host: str, port: int, options: ConnectOptions) -> None:
        super().__init__(format_node(host, port), options)
        self._lock = threading.RLock()
        self._waiting: int | None = None
        self._address = (host, port)
        self._rbuf = memoryview(bytearray(_RECV))
        self._sock: socket.socket | None = None
        # Liveness: when the node was last heard (or sent to), and last probed.
        self._heard = self._probed = 0.0
        self._batch_waiting: tuple[dict[int, int], Sequence[tuple[Connection, Op]]] | None = None
        # Until the handshake ends, every read is bounded by what is left of connectTimeout.
        self._connect_deadline: float | None = None
        opts = options
        waits = [t for t in (opts.read_timeout, opts.liveness_interval) if t]
        self._steady_wait = min(waits) if waits else None  # the read timeout between checks
        self._wait_changed = False
        try:
            self._sock, self._connect_deadline = _connect(host, port, options, opts.connect_timeout)
        except BaseException:
            self.closed = True
            raise
        try:
            self.core.start(options.password, options.user)
            self._run(self.core.handshake())
        except BaseException:
            self._sock.close()
            self.closed = True
            raise
        self._connect_deadline = None
        self._set_wait(self._steady_wait)
        self._wait_changed = False

    # --- the driver ---------------------------------------------------------------------------

    def _run(self, op: Op) -> Any:
        """Drive an operation to its end over the blocking socket."""
        with self._lock:
            try:
                rid = next(op)
                while True:
                    self._flush()
                    self._waiting = rid
                    while not self.core.has_event(rid):
                        self._receive()
                    rid = op.send(None)
            except StopIteration as stop:
                self._flush()
                return stop.value
            finally:
                self._waiting = None

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data and self._sock is not None:
            self._heard = time.monotonic()  # the node's silence counts from here
            try:
                self._sock.sendall(data)
            except OSError as exc:
                self._lost(exc)

    def _receive(self) -> None:
        sock = self._sock
        assert sock is not None
        if self._connect_deadline is not None:
            sock.settimeout(max(self._connect_deadline - time.monotonic(), 0.001))
        try:
            n = sock.recv_into(self._rbuf)
        except (TimeoutError, BlockingIOError):  # the socket's timeout, or SO_RCVTIMEO's
            self._silence(time.monotonic())
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not n:
            self._lost(None)
            return
        self._heard = time.monotonic()
        if self._wait_changed:
            self._set_wait(self._steady_wait)
            self._wait_changed = False
        self.core.receive_data(self._rbuf[:n])

    def _set_wait(self, seconds: float | None) -> None:
        """How long one read may block before the node's silence is looked at. A plain socket
        stays in blocking mode with SO_RCVTIMEO (no poll() before every read); a TLS socket
        gets a Python timeout (a blocking SSL read would retry past SO_RCVTIMEO)."""
        sock = self._sock
        if sock is None:
            return
        if _is_tls(sock):
            sock.settimeout(seconds)
            return
        sock.settimeout(None)
        whole = seconds or 0.0
        limit = struct.pack("ll", int(whole), int((whole % 1) * 1e6) if seconds else 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)

    def _due_in(self, now: float) -> float | None:
        """Seconds until the node's silence must be looked at again (None: never)."""
        opts = self.options
        due: float | None = None
        if opts.read_timeout:
            due = self._heard + opts.read_timeout - now
        if opts.liveness_interval:
            probe_due = max(self._heard, self._probed) + opts.liveness_interval - now
            due = probe_due if due is None else min(due, probe_due)
        return due

    def _silence(self, now: float) -> None:
        """A read timed out: fail the connection if its node has been silent past readTimeout
        (or connectTimeout, while connecting) or does not answer a liveness probe."""
        opts = self.options
        if self._connect_deadline is not None:
            if now >= self._connect_deadline - _SLACK:
                self.core.connect_timed_out(opts.connect_timeout)
                self._close_socket()
            return
        silent = now - self._heard
        if opts.read_timeout is not None and silent >= opts.read_timeout - _SLACK:
            self.core.read_timed_out(opts.read_timeout)
            self._close_socket()
            return
        interval = opts.liveness_interval
        if interval and now - max(self._heard, self._probed) >= interval - _SLACK:
            why = probe(*self._address, opts)
            self._probed = time.monotonic()
            if why is not None:
                self.core.stopped_answering(silent, why)
                self._close_socket()
                return
        due = self._due_in(time.monotonic())
        if due is not None:
            self._set_wait(max(due, 0.001))
            self._wait_changed = True

    def _close_socket(self) -> None:
        """The connection is broken (the core says why): close its socket."""
        if self._sock is not None:
            self._sock.close()

    def _lost(self, exc: BaseException | None) -> None:
        self.core.connection_lost(exc)
        self._close_socket()

    # --- PEP 249 ------------------------------------------------------------------------------

    def cursor(self) -> Cursor:
        """A new cursor."""
        self._check_open()
        return Cursor(self)

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Cursor:
        """Run one statement on a new cursor and return that cursor."""
        return self.cursor().execute(sql, params)

    def executemany(self, sql: str, seq_of_params: Any) -> Cursor:
        """Run one statement for every parameter sequence, on a new cursor."""
        return self.cursor().executemany(sql, seq_of_params)

    def commit(self) -> None:
        """Commit the open transaction."""
        self._run(self._txn_op("commit"))

    def rollback(self) -> None:
        """Roll back the open transaction."""
        self._run(self._txn_op("rollback"))

    def ping(self) -> dict[str, Any]:
        """One round trip; returns the session's state on the node."""
        self._check_open()
        return self._run(self.core.ping())  # type: ignore[no-any-return]

    def cancel(self) -> None:
        """Interrupt the statement this connection is running; safe from any thread.

        Like PostgreSQL, the request goes over a second, short connection, so that it reaches the
        node while this one waits. The interrupted statement raises OperationalError.
        """
        if self.closed:
            return
        for rid in self._waiting_for():
            sock = open_socket(*self._address, self.options)
            try:
                sock.sendall(self.core.out_of_band_cancel(rid))
                sock.recv(4096)  # the node's acknowledgement; its content does not matter here
            except OSError as exc:
                raise OperationalError(
                    f"cannot send the cancel request: {exc}", node=self.node
                ) from exc
            finally:
                sock.close()

    def _waiting_for(self) -> list[int]:
        """The requests this connection waits on now (from any thread): one of its own
        operation, or those of a drive() over several connections."""
        rid = self._waiting
        rids = [] if rid is None else [rid]
        batch = self._batch_waiting
        if batch is not None:
            waiting, pairs = batch
            rids += [r for i, r in dict(waiting).items() if pairs[i][0] is self and r not in rids]
        return rids

    def transaction(self) -> Transaction:
        """``with conn.transaction():`` commits at the block's end, or rolls back if it
        raises (see exdb.client.base.TransactionBlock)."""
        self._check_open()
        return Transaction(self, lambda: self._dirty)

    def close(self) -> None:
        """Close the connection; an open transaction is rolled back by the node. Closing a
        closed connection raises InterfaceError."""
        if self.closed:
            raise self._closed_twice()
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        sock, self._sock = self._sock, None
        if sock is None:
            return
        # A node that is gone already cannot be told goodbye; closing is all that is left to do.
        with contextlib.suppress(OSError):
            if self.core.broken is None:
                sock.sendall(self.core.data_to_send() + bye_frame())
        sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if not self.closed and self.core.broken is None:
                if exc_type is None:
                    self.commit()
                else:
                    self.rollback()
        finally:
            self._close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            warnings.warn(
                f"exdb connection to {self.node} was never closed", ResourceWarning, stacklevel=2
            )
            sock = getattr(self, "_sock", None)
            if sock is not None:
                sock.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<exdb.Connection to {self.node} ({state})>"


class Cursor(BaseCursor, ArrowFetches, CopyMethods):
    """A PEP 249 cursor over one node."""

    __module__ = "exdb"
    _conn: Connection

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Cursor:
        """Run one statement with qmark (``?``) parameters."""
        self._conn._run(self._execute_op(sql, params))
        return self

    def executemany(self, sql: str, seq_of_params: Any) -> Cursor:
        """Run one statement for every parameter sequence; rowcount is the total."""
        self._conn._run(self._executemany_op(sql, seq_of_params))
        return self

    execute_many = executemany

    def callproc(self, procname: str, parameters: Sequence[Any] = ()) -> Any:
        """Call the function ``procname`` with ``parameters``; its value is the result set
        (see exdb.client.base.callproc_statement). Returns a copy of ``parameters``."""
        sql, values, returned = callproc_statement(procname, parameters)
        self.execute(sql, values)
        return returned

    def fetchone(self) -> tuple[Any, ...] | None:
        """The next row, or None."""
        return self._conn._run(self._fetchone_op())  # type: ignore[no-any-return]

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        """Up to ``size`` (default ``arraysize``) rows."""
        return self._conn._run(self._fetchmany_op(size))  # type: ignore[no-any-return]

    def fetchall(self) -> list[tuple[Any, ...]]:
        """All the remaining rows."""
        return self._conn._run(self._fetchall_op())  # type: ignore[no-any-return]

    def _arrow_table(self, what: str) -> Any:
        return self._conn._run(self._arrow_op(what)).table()

    def close(self) -> None:
        """Close the cursor; an unread result is cancelled on the node."""
        if not self.closed and self._conn.closed:
            self.closed = True
            return
        self._conn._run(self._close_op())

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return self

    def __next__(self) -> tuple[Any, ...]:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def drive(pairs: Sequence[tuple[Connection, Op]]) -> list[Any]:
    """Run operations on several connections at once; return each one's result, or the
    exception it raised, in order. Every operation runs to its end, whatever the others do."""
    results: list[Any] = [None] * len(pairs)
    waiting: dict[int, int] = {}
    conns = list({id(c): c for c, _ in pairs}.values())
    locks = sorted(conns, key=id)
    for conn in locks:
        conn._lock.acquire()
    try:
        for conn in conns:
            conn._batch_waiting = (waiting, pairs)  # for cancel() from another thread
        for i, (_, op) in enumerate(pairs):
            _step(i, op, None, results, waiting)
        while waiting:
            for conn in conns:
                conn._flush()
            progressed = False
            for i in list(waiting):
                conn, op = pairs[i]
                while i in waiting and conn.core.has_event(waiting[i]):
                    _step(i, op, waiting[i], results, waiting)
                    progressed = True
            if progressed or not waiting:
                continue
            _receive_any([pairs[i][0] for i in waiting])
        for conn in conns:
            conn._flush()
    finally:
        for conn in locks:
            conn._batch_waiting = None
            conn._lock.release()
    return results


def _step(i: int, op: Op, rid: int | None, results: list[Any], waiting: dict[int, int]) -> None:
    try:
        waiting[i] = next(op) if rid is None else op.send(None)
    except StopIteration as stop:
        results[i] = stop.value
        waiting.pop(i, None)
    except Exception as exc:
        results[i] = exc
        waiting.pop(i, None)


def receive_any(conns: Sequence[Connection]) -> None:
    """Block until one of the connections has read something (or failed)."""
    locks = sorted({id(c): c for c in conns}.values(), key=id)
    for conn in locks:
        conn._lock.acquire()
    try:
        for conn in locks:
            conn._flush()
        _receive_any(list(conns))
    finally:
        for conn in locks:
            conn._lock.release()


def _receive_any(conns: list[Connection]) -> None:
    """Block until one of the connections has read something (or failed)."""
    unique = list({id(c): c for c in conns}.values())
    if len(unique) == 1:
        unique[0]._receive()
        return
    by_sock = {c._sock: c for c in unique if c._sock is not None}
    for sock, conn in by_sock.items():
        if _is_tls(sock) and sock.pending():
            conn._receive()
            return
    now = time.monotonic()
    dues = [d for c in unique if (d := c._due_in(now)) is not None]
    timeout = max(min(dues), 0.001) if dues else None
    ready, _, _ = select.select(list(by_sock), [], [], timeout)
    for sock in ready:
        by_sock[sock]._receive()
    if timeout is None:
        return
    now = time.monotonic()
    for conn in unique:  # the silent ones: readTimeout, liveness probe
        if conn._sock not in ready and conn.core.broken is None:
            due = conn._due_in(now)
            if due is not None and due <= _SLACK:
                conn._silence(now)
