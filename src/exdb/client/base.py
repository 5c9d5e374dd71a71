"""What the synchronous and the asyncio doors share of PEP 249: cursor and connection state, with
every operation written once as a generator (see exdb.client.core). A door subclasses these and
only drives the operations."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from exdb.client.core import ClientCore, Op, ResultStream, check_params
from exdb.client.options import ConnectOptions
from exdb.errors import Error, ErrorClasses, InterfaceError, ProgrammingError
from exdb.wire.messages import Msg

__all__ = [
    "AsyncTransaction",
    "BaseConnection",
    "BaseCursor",
    "Description",
    "Transaction",
    "callproc_statement",
]

Description = list[tuple[str, Any, None, None, None, None, None]]


class BaseConnection(ErrorClasses):
    """State of a connection to one node, whatever door drives it."""

    def __init__(self, node: str, options: ConnectOptions) -> None:
        self.node = node
        self.options = options
        self.core = ClientCore(node, options.max_frame)
        if options.statement_timeout is not None:
            self.core.hello_options["statement_timeout"] = options.statement_timeout
        if options.lock_timeout is not None:
            self.core.hello_options["lock_timeout"] = options.lock_timeout
        if options.idle_in_transaction_timeout is not None:
            self.core.hello_options["idle_in_transaction_timeout"] = (
                options.idle_in_transaction_timeout
            )
        self.autocommit = options.autocommit
        self._dirty = False  # a statement ran outside autocommit since the last commit/rollback
        self._block: TransactionBlock | None = None  # the open ``with conn.transaction()``
        #: The distributed connection's transactions, for a node connection of one
        #: (exdb.distributed.deadlock.Transactions); None for a plain connection.
        self.transactions: Any = None
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise InterfaceError("the connection is closed", node=self.node)
        if self.core.broken is not None:
            raise self.core.broken

    def _txn_op(self, op: str) -> Op:
        """Operation: commit or roll back, if a transaction may be open."""
        self._check_open()
        if not self._dirty:
            return
        yield from self.core.simple(Msg.TXN, op)
        self._dirty = False

    @property
    def server_info(self) -> dict[str, Any]:
        """What the node said of itself in the handshake (protocol, server version, engine)."""
        return self.core.server_info

    def _closed_twice(self) -> InterfaceError:
        """close() of a closed connection is an error (as the DB-API compliance suite asks);
        leaving a ``with`` block after close() is not."""
        return InterfaceError("the connection is closed already", node=self.node)


class TransactionBlock:
    """``conn.transaction()``: a block that commits when it ends normally and rolls back when
    it ends by an exception (a cancelled asyncio task included). With autocommit on, the
    block is one transaction all the same (autocommit is off inside it). Blocks do not nest,
    and a block does not start while statements run since the last commit() or rollback()
    are still pending: both are refused with ProgrammingError, since a rollback would undo
    more than the block. Shared by every door; see Transaction and AsyncTransaction."""

    def __init__(self, conn: Any, pending: Callable[[], bool]) -> None:
        self._conn = conn
        self._pending = pending
        self._autocommit: bool | None = None

    def _begin(self) -> None:
        conn = self._conn
        if getattr(conn, "_block", None) is not None:
            raise ProgrammingError(
                "a transaction block is open already on this connection: exdb does not nest"
                " them (there are no savepoints)"
            )
        if self._pending():
            raise ProgrammingError(
                "a transaction is open already on this connection (statements ran since the"
                " last commit or rollback): commit() or rollback() before conn.transaction()"
            )
        self._autocommit = bool(conn.autocommit)
        conn.autocommit = False
        conn._block = self

    def _restore(self) -> None:
        conn = self._conn
        conn._block = None
        if self._autocommit is not None and not conn.closed:
            conn.autocommit = self._autocommit

    @staticmethod
    def _rollback_failed(exc: BaseException | None, error: Error) -> None:
        """The block failed and so did its rollback: the block's own exception goes on, with
        a note of the rollback's failure (the nodes roll back on their own when the
        connection closes)."""
        if exc is not None:
            exc.add_note(f"exdb: the rollback after this error failed too: {error}")


class Transaction(TransactionBlock):
    """``with conn.transaction():`` on a synchronous connection."""

    def __enter__(self) -> Transaction:
        self._begin()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc_type is None:
                self._conn.commit()
                return
            try:
                self._conn.rollback()
            except Error as error:
                self._rollback_failed(exc, error)
        finally:
            self._restore()


class AsyncTransaction(TransactionBlock):
    """``async with conn.transaction():`` on an asyncio connection."""

    async def __aenter__(self) -> AsyncTransaction:
        self._begin()
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc_type is None:
                await self._conn.commit()
                return
            try:
                await self._conn.rollback()
            except Error as error:
                self._rollback_failed(exc, error)
        finally:
            self._restore()


_PROCEDURE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?")


def callproc_statement(procname: Any, parameters: Any) -> tuple[str, list[Any], Any]:
    """What callproc() runs, on every door: the engines exdb serves have no stored procedures,
    so a "procedure" is a function, called as ``SELECT procname(?, ...)`` (as psycopg does);
    its result is the cursor's result set. Returns the statement, its parameters, and the
    copy of the input sequence that callproc returns (no parameter is an output)."""
    if not isinstance(procname, str) or _PROCEDURE_NAME.fullmatch(procname) is None:
        raise ProgrammingError(f"callproc: {procname!r} is not a function name")
    if isinstance(parameters, (str, bytes)) or not isinstance(parameters, Sequence):
        raise ProgrammingError(
            f"callproc: parameters must be a sequence, not {type(parameters).__name__}"
        )
    values = list(parameters)
    marks = ", ".join("?" * len(values))
    returned = values.copy() if isinstance(parameters, list) else tuple(values)
    return f"SELECT {procname}({marks})", values, returned


def _abandoned_if_closed(stream: ResultStream, op: Op) -> Op:
    """Run one of ``stream``'s operations; if its door gives it up while it waits (a cancelled
    asyncio task closes it), abandon the stream (see _abandon)."""
    try:
        return (yield from op)
    except GeneratorExit:
        _abandon(stream)
        raise


def _abandon(stream: ResultStream) -> None:
    """Its door gave the operation up while it waited (a cancelled asyncio task): the rest of
    the result is not awaited and its later events are dropped (the door cancels it); the
    cursor has no result set to fetch from any more (not a silently shortened one)."""
    stream.more = False
    stream.columns = None
    stream.core.forget(stream.rid)


class BaseCursor:
    """PEP 249 cursor state; its operations are generators a door drives."""

    arraysize: int

    def __init__(self, connection: BaseConnection) -> None:
        self._conn = connection
        self._stream: ResultStream | None = None
        self.arraysize = 1
        self.closed = False
        self._kept: tuple[int, int | None] = (-1, None)  # rowcount, lastrowid after close

    @property
    def description(self) -> Description | None:
        """One 7-item tuple a column (name, type_code, None x 5), or None for no result set."""
        s = self._stream
        if s is None or s.columns is None:
            return None
        return [
            (name, t, None, None, None, None, None)
            for name, t in zip(s.columns, s.types, strict=True)
        ]

    @property
    def rowcount(self) -> int:
        """Rows changed by the last INSERT, UPDATE or DELETE; -1 otherwise."""
        return self._kept[0] if self._stream is None else self._stream.rowcount

    @property
    def lastrowid(self) -> int | None:
        """The rowid of the last inserted row, where the engine tells it."""
        return self._kept[1] if self._stream is None else self._stream.lastrowid

    @property
    def connection(self) -> BaseConnection:
        """The connection this cursor belongs to."""
        return self._conn

    def _check(self) -> None:
        if self.closed:
            raise InterfaceError("the cursor is closed", node=self._conn.node)
        self._conn._check_open()

    def _result(self) -> ResultStream:
        self._check()
        if self._stream is None or self._stream.columns is None:
            raise ProgrammingError("no result set to fetch from: execute a query first")
        return self._stream

    def _execute_op(self, sql: str, params: Any = None) -> Op:
        self._check()
        if not isinstance(sql, str):
            raise ProgrammingError(f"the statement must be a str, not {type(sql).__name__}")
        wire_params = check_params(params, sql)
        if self._stream is not None and self._stream.more:
            yield from self._stream.discard()
        stream = self._stream = ResultStream(self._conn.core, sql)
        autocommit = self._conn.autocommit
        if not autocommit:
            self._conn._dirty = True
        yield from _abandoned_if_closed(stream, stream.execute(sql, wire_params, autocommit))

    def _executemany_op(self, sql: str, seq_of_params: Any) -> Op:
        self._check()
        if isinstance(seq_of_params, (str, bytes)) or not hasattr(seq_of_params, "__iter__"):
            raise ProgrammingError("executemany() needs an iterable of parameter sequences")
        seq = [check_params(p, sql) or [] for p in seq_of_params]
        if self._stream is not None and self._stream.more:
            yield from self._stream.discard()
        stream = self._stream = ResultStream(self._conn.core, sql)
        if not seq:
            stream.rowcount = 0
            return
        autocommit = self._conn.autocommit
        if not autocommit:
            self._conn._dirty = True
        yield from _abandoned_if_closed(stream, stream.executemany(sql, seq, autocommit))

    def _fetchone_op(self) -> Op:
        stream = self._result()
        return (yield from _abandoned_if_closed(stream, stream.fetchone()))

    def _fetchmany_op(self, size: int | None = None) -> Op:
        n = self.arraysize if size is None else size
        if n < 0:
            raise ProgrammingError("fetchmany() size must not be negative")
        stream = self._result()
        return (yield from _abandoned_if_closed(stream, stream.fetch(n)))

    def _fetchall_op(self) -> Op:
        stream = self._result()
        return (yield from _abandoned_if_closed(stream, stream.fetch(None)))

    def _arrow_op(self, what: str) -> Op:
        """Operation: the rest of the result as an exdb.arrow.Collector (Arrow IPC from a node
        that can send it); nothing is read when pyarrow is missing."""
        from exdb.arrow import Collector, require

        require("pyarrow", what)
        stream = self._result()
        engine = str(self._conn.core.server_info.get("engine", ""))
        collector = Collector(stream.columns or [], stream.types, engine)
        return (yield from _abandoned_if_closed(stream, stream.arrow(collector)))

    def _close_op(self) -> Op:
        if self.closed:
            return
        self.closed = True
        if self._stream is not None and not self._conn.closed and self._conn.core.broken is None:
            yield from self._stream.discard()
        if self._stream is not None:  # as sqlite3's: what the last statement did stays readable
            self._kept = (self._stream.rowcount, self._stream.lastrowid)
        self._stream = None

    def setinputsizes(self, sizes: Sequence[Any]) -> None:
        """Accepted and ignored, as PEP 249 allows."""

    def setoutputsize(self, size: int, column: int | None = None) -> None:
        """Accepted and ignored, as PEP 249 allows."""
