"""The synchronous door: a PEP 249 connection to one node over a blocking socket."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from exdb.client.base import BaseConnection, BaseCursor
from exdb.client.core import Op, bye_frame
from exdb.client.options import ConnectOptions, format_node
from exdb.errors import OperationalError

__all__ = ["Connection", "Cursor", "drive", "open_socket"]

_RECV = 1 << 18


def open_socket(host: str, port: int, options: ConnectOptions) -> socket.socket:
    """A connected (and, with ssl, wrapped) socket, after up to ``max_connect_attempts`` tries."""
    node = format_node(host, port)
    last: Exception | None = None
    for attempt in range(options.max_connect_attempts):
        if attempt:
            time.sleep(min(0.05 * 2**attempt, 1.0))
        try:
            sock = socket.create_connection((host, port), timeout=options.connect_timeout)
        except OSError as exc:
            last = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if options.ssl_context is not None:
            try:
                sock = options.ssl_context.wrap_socket(sock, server_hostname=host)
            except OSError as exc:
                sock.close()
                raise OperationalError(f"TLS handshake failed: {exc}", node=node) from exc
        sock.settimeout(options.read_timeout)
        return sock
    attempts = options.max_connect_attempts
    raise OperationalError(
        f"cannot connect after {attempts} attempt{'s' * (attempts > 1)}: {last}", node=node
    )


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
        try:
            self._sock = open_socket(host, port, options)
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
            try:
                self._sock.sendall(data)
            except OSError as exc:
                self._lost(exc)

    def _receive(self) -> None:
        assert self._sock is not None
        try:
            n = self._sock.recv_into(self._rbuf)
        except TimeoutError:
            ms = int((self.options.read_timeout or 0) * 1000)
            self.core.fail(
                OperationalError(f"no answer within readTimeout ({ms} ms)", node=self.node)
            )
            self._sock.close()
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not n:
            self._lost(None)
            return
        self.core.receive_data(self._rbuf[:n])

    def _lost(self, exc: BaseException | None) -> None:
        self.core.connection_lost(exc)
        if self._sock is not None:
            self._sock.close()

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
        rid = self._waiting
        if rid is None or self.closed:
            return
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

    def close(self) -> None:
        """Close the connection; an open transaction is rolled back by the node."""
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
            self.close()

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


class Cursor(BaseCursor):
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

    def fetchone(self) -> tuple[Any, ...] | None:
        """The next row, or None."""
        return self._conn._run(self._fetchone_op())  # type: ignore[no-any-return]

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        """Up to ``size`` (default ``arraysize``) rows."""
        return self._conn._run(self._fetchmany_op(size))  # type: ignore[no-any-return]

    def fetchall(self) -> list[tuple[Any, ...]]:
        """All the remaining rows."""
        return self._conn._run(self._fetchall_op())  # type: ignore[no-any-return]

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
    import select as _select
    import ssl as _ssl

    by_sock = {c._sock: c for c in unique if c._sock is not None}
    for sock, conn in by_sock.items():
        if isinstance(sock, _ssl.SSLSocket) and sock.pending():
            conn._receive()
            return
    timeouts = [c.options.read_timeout for c in unique if c.options.read_timeout]
    timeout = min(timeouts) if timeouts else None
    ready, _, _ = _select.select(list(by_sock), [], [], timeout)
    if not ready:
        ms = int((timeout or 0) * 1000)
        for conn in unique:
            conn.core.fail(
                OperationalError(f"no answer within readTimeout ({ms} ms)", node=conn.node)
            )
            if conn._sock is not None:
                conn._sock.close()
        return
    for sock in ready:
        by_sock[sock]._receive()
