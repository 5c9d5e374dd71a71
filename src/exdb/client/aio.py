"""The asyncio door: the same operations as the synchronous door, driven by an event loop.

Many tasks may share one connection: their requests are pipelined, and each task wakes when its
own request's answer arrives. A task cancelled while it waits (``task.cancel()``,
``asyncio.wait_for``) cancels its statement on the node and leaves the connection usable at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from exdb.arrow import AsyncArrowFetches
from exdb.client.base import AsyncTransaction, BaseConnection, BaseCursor, callproc_statement
from exdb.client.core import ClientCore, Op, bye_frame
from exdb.client.options import ConnectOptions, format_node
from exdb.client.sync import PROBE
from exdb.copy_methods import AsyncCopyMethods
from exdb.errors import OperationalError
from exdb.keepalive import keep_alive

__all__ = ["AsyncConnection", "AsyncCursor"]


class _Protocol(asyncio.Protocol):
    """Feeds received bytes to the core and wakes the tasks whose requests got answers."""

    def __init__(self, core: ClientCore) -> None:
        self.core = core
        self.waiters: dict[int, asyncio.Future[None]] = {}
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.Event()
        self.heard = 0.0  # when the node last sent (or was sent) anything; time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        woken = self.core.receive_data(data)
        if woken and woken[0] == -1:
            self._wake_all()
            return
        for rid in woken:
            fut = self.waiters.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.core.connection_lost(exc)
        self._wake_all()
        self.lost.set()

    def _wake_all(self) -> None:
        waiters, self.waiters = self.waiters, {}
        for fut in waiters.values():
            if not fut.done():
                fut.set_result(None)


class AsyncConnection(BaseConnection):
    """A connection to one node for asyncio. Create it with ``await exdb.connect_async(...)``."""

    __module__ = "exdb"

    def __init__(self, host: str, port: int, options: ConnectOptions) -> None:
        super().__init__(format_node(host, port), options)
        self._host = host
        self._port = port
        self._protocol = _Protocol(self.core)
        self._transport: asyncio.Transport | None = None
        self._liveness: asyncio.TimerHandle | None = None  # armed while requests wait
        self._probing: asyncio.Task[None] | None = None
        self._probed = 0.0
        self._cancels: set[asyncio.Task[None]] = set()  # out-of-band cancels on their way

    async def _open(self) -> AsyncConnection:
        loop = asyncio.get_running_loop()
        opts = self.options
        last: Exception | None = None
        deadline = 0.0
        for attempt in range(opts.max_connect_attempts):
            if attempt:
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
            deadline = time.monotonic() + opts.connect_timeout
            try:
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: self._protocol,
                        self._host,
                        self._port,
                        ssl=opts.ssl_context,
                        server_hostname=self._host if opts.ssl_context else None,
                    ),
                    opts.connect_timeout,
                )
            except (TimeoutError, OSError) as exc:
                last = exc
                continue
            self._transport = transport  # type: ignore[assignment]
            sock = transport.get_extra_info("socket")
            if sock is not None:
                keep_alive(sock)
            break
        else:
            self.closed = True
            n = opts.max_connect_attempts
            raise OperationalError(
                f"cannot connect after {n} attempt{'s' * (n > 1)}: {last!r}", node=self.node
            )
        try:
            self.core.start(opts.password, opts.user)
            left = max(deadline - time.monotonic(), 0.001)
            try:
                await asyncio.wait_for(self._run(self.core.handshake()), left)
            except TimeoutError:
                raise self.core.connect_timed_out(opts.connect_timeout) from None
        except BaseException:
            self.closed = True
            if self._transport is not None:
                self._transport.close()
            raise
        return self

    # --- the driver ---------------------------------------------------------------------------

    async def _run(self, op: Op) -> Any:
        """Drive an operation to its end on the event loop."""
        rid = -1
        try:
            rid = next(op)
            while True:
                self._flush()
                if not self.core.has_event(rid):
                    await self._wait(rid)
                rid = op.send(None)
        except StopIteration as stop:
            self._flush()
            return stop.value
        except asyncio.CancelledError:
            self._abandon(op, rid)
            raise

    def _abandon(self, op: Op, rid: int) -> None:
        """The task waiting on ``rid`` was cancelled: drop the request's later events and
        cancel it on the node, in band (a result being streamed, a request still queued) and
        out of band (a statement running in the engine), without waiting for either."""
        op.close()  # the operation lets go of its request; a cursor's result is marked done
        self.core.forget(rid)
        self._protocol.waiters.pop(rid, None)
        if rid <= 0 or self.closed or self.core.broken is not None or not self.core.server_info:
            return  # the handshake, or nothing left to cancel on
        self.core.cancel(rid)
        self._flush()
        task = asyncio.get_running_loop().create_task(self._cancel_on_node(rid))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel_on_node(self, rid: int) -> None:
        """Send the out-of-band cancel of ``rid`` on a second connection. If the node cannot be
        reached, the statement runs to its end: this connection stays correct either way (its
        answer is dropped), so the failure only costs time and is not raised anywhere."""
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(
                _exchange(self._host, self._port, self.options, self.core.out_of_band_cancel(rid)),
                self.options.connect_timeout,
            )

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._protocol.heard = time.monotonic()  # the node's silence counts from here
            self._transport.write(data)

    # --- liveness: a node that stops answering fails the requests that wait on it -------------

    def _liveness_tick(self) -> None:
        """While requests wait: probe the node once it has been silent for liveness_interval."""
        self._liveness = None
        interval = self.options.liveness_interval
        if not interval or self.closed or self.core.broken is not None:
            return
        if not self._protocol.waiters:
            return  # disarmed; the next wait arms it again
        now = time.monotonic()
        since = max(self._protocol.heard, self._probed)
        if now - since >= interval - 0.002 and self._probing is None:
            self._probed = now
            self._probing = asyncio.get_running_loop().create_task(self._probe())
            since = now
        delay = max(since + interval - now, 0.01)
        self._liveness = asyncio.get_running_loop().call_later(delay, self._liveness_tick)

    async def _probe(self) -> None:
        opts = self.options
        silent = time.monotonic() - self._protocol.heard
        try:
            why = await probe_async(self._host, self._port, opts)
        finally:
            self._probing = None
        if why is None or self.core.broken is not None or self.closed:
            return
        self.core.stopped_answering(silent, why)
        self._protocol._wake_all()
        if self._transport is not None:
            self._transport.abort()

    async def _wait(self, rid: int) -> None:
        fut = self._protocol.waiters.get(rid)
        if fut is None:
            fut = self._protocol.waiters[rid] = asyncio.get_running_loop().create_future()
        if self._liveness is None and self.options.liveness_interval:
            interval = self.options.liveness_interval
            self._liveness = asyncio.get_running_loop().call_later(interval, self._liveness_tick)
        timeout = self.options.read_timeout
        if timeout is None:
            await fut
            return
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            self.core.read_timed_out(timeout)
            self._protocol._wake_all()
            if self._transport is not None:
                self._transport.close()

    # --- PEP 249, as coroutines ---------------------------------------------------------------

    def cursor(self) -> AsyncCursor:
        """A new cursor."""
        self._check_open()
        return AsyncCursor(self)

    async def execute(self, sql: str, params: Sequence[Any] | None = None) -> AsyncCursor:
        """Run one statement on a new cursor and return that cursor."""
        return await self.cursor().execute(sql, params)

    async def executemany(self, sql: str, seq_of_params: Any) -> AsyncCursor:
        """Run one statement for every parameter sequence, on a new cursor."""
        return await self.cursor().executemany(sql, seq_of_params)

    async def commit(self) -> None:
        """Commit the open transaction."""
        await self._run(self._txn_op("commit"))

    async def rollback(self) -> None:
        """Roll back the open transaction."""
        await self._run(self._txn_op("rollback"))

    async def ping(self) -> dict[str, Any]:
        """One round trip; returns the session's state on the node."""
        self._check_open()
        return await self._run(self.core.ping())  # type: ignore[no-any-return]

    def transaction(self) -> AsyncTransaction:
        """``async with conn.transaction():`` commits at the block's end, or rolls back if it
        raises or its task is cancelled (see exdb.client.base.TransactionBlock)."""
        self._check_open()
        return AsyncTransaction(self, lambda: self._dirty)

    async def close(self) -> None:
        """Close the connection; an open transaction is rolled back by the node. Closing a
        closed connection raises InterfaceError."""
        if self.closed:
            raise self._closed_twice()
        await self._close()

    async def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._liveness is not None:
            self._liveness.cancel()
            self._liveness = None
        if self._probing is not None:
            self._probing.cancel()
        if self._cancels:  # let cancels on their way reach the node (bounded)
            await asyncio.wait(list(self._cancels), timeout=self.options.connect_timeout)
        transport, self._transport = self._transport, None
        if transport is None:
            return
        if self.core.broken is None and not transport.is_closing():
            transport.write(self.core.data_to_send() + bye_frame())
        transport.close()
        self._protocol._wake_all()
        # A TLS transport closes only after its close-notify exchange: wait for it (bounded),
        # so that the socket is released before the caller's event loop ends.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._protocol.lost.wait(), 2.0)

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if not self.closed and self.core.broken is None:
                if exc_type is None:
                    await self.commit()
                else:
                    await self.rollback()
        finally:
            await self._close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            import warnings

            warnings.warn(
                f"exdb async connection to {self.node} was never closed",
                ResourceWarning,
                stacklevel=2,
            )
            transport = getattr(self, "_transport", None)
            if transport is not None:
                with contextlib.suppress(RuntimeError):  # its loop may be closed already
                    transport.close()


class AsyncCursor(BaseCursor, AsyncArrowFetches, AsyncCopyMethods):
    """A PEP 249-style cursor whose operations are coroutines."""

    __module__ = "exdb"
    _conn: AsyncConnection

    async def execute(self, sql: str, params: Sequence[Any] | None = None) -> AsyncCursor:
        """Run one statement with qmark (``?``) parameters."""
        await self._conn._run(self._execute_op(sql, params))
        return self

    async def executemany(self, sql: str, seq_of_params: Any) -> AsyncCursor:
        """Run one statement for every parameter sequence; rowcount is the total."""
        await self._conn._run(self._executemany_op(sql, seq_of_params))
        return self

    execute_many = executemany

    async def callproc(self, procname: str, parameters: Sequence[Any] = ()) -> Any:
        """Call the function ``procname`` with ``parameters``; its value is the result set
        (see exdb.client.base.callproc_statement). Returns a copy of ``parameters``."""
        sql, values, returned = callproc_statement(procname, parameters)
        await self.execute(sql, values)
        return returned

    async def fetchone(self) -> tuple[Any, ...] | None:
        """The next row, or None."""
        return await self._conn._run(self._fetchone_op())  # type: ignore[no-any-return]

    async def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        """Up to ``size`` (default ``arraysize``) rows."""
        return await self._conn._run(self._fetchmany_op(size))  # type: ignore[no-any-return]

    async def fetchall(self) -> list[tuple[Any, ...]]:
        """All the remaining rows."""
        return await self._conn._run(self._fetchall_op())  # type: ignore[no-any-return]

    async def _arrow_table(self, what: str) -> Any:
        return (await self._conn._run(self._arrow_op(what))).table()

    async def close(self) -> None:
        """Close the cursor; an unread result is cancelled on the node."""
        if not self.closed and self._conn.closed:
            self.closed = True
            return
        await self._conn._run(self._close_op())

    def __aiter__(self) -> AsyncIterator[tuple[Any, ...]]:
        return self

    async def __anext__(self) -> tuple[Any, ...]:
        row = await self.fetchone()
        if row is None:
            raise StopAsyncIteration
        return row

    async def __aenter__(self) -> AsyncCursor:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


async def _exchange(host: str, port: int, options: ConnectOptions, message: bytes) -> bytes:
    """Open a second connection to the node, send ``message`` (a first message that needs no
    handshake: a liveness probe, an out-of-band cancel) and return the first bytes of its
    answer (b"": the node closed the connection)."""
    ctx = options.ssl_context
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ctx, server_hostname=host if ctx else None
    )
    try:
        writer.write(message)
        return await reader.read(64)
    finally:
        writer.transport.abort()


async def probe_async(host: str, port: int, options: ConnectOptions) -> str | None:
    """Probe a node on a second connection: None if it answers within ``liveness_timeout``,
    else why not (see exdb.client.sync.probe)."""
    budget = options.liveness_timeout
    try:
        await asyncio.wait_for(_exchange(host, port, options, PROBE), budget)
    except TimeoutError:
        return f"no answer to a liveness probe within {round(budget * 1000)} ms"
    except OSError as exc:
        return f"the liveness probe failed: {exc}"
    return None  # PONG, or an orderly close: either way the server process runs
