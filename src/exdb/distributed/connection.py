"""The distributed doors: many nodes presented as one PEP 249 connection.

:class:`DistributedConnection` (synchronous) and :class:`AsyncDistributedNodes` hold one client
connection per node and an :class:`~exdb.distributed.execute.Engine`; both only drive the engine's
pipeline, running each batch of shard calls concurrently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

from exdb.arrow import ArrowFetches
from exdb.client.base import BaseConnection, Transaction, callproc_statement
from exdb.client.core import Op, ResultStream
from exdb.client.options import ConnectOptions, format_node, parse_node
from exdb.client.sync import Connection, drive, receive_any
from exdb.copy_methods import CopyMethods
from exdb.distributed.analyze import Analysis
from exdb.distributed.deadlock import Transactions, batch, lock_lost, watched
from exdb.distributed.execute import Engine, Execution
from exdb.distributed.plan import Result, ShardCall, ShardResult
from exdb.distributed.replicas import RECONNECT_TIMEOUT, Layout, Replicas, after_end, join
from exdb.distributed.transaction import (
    Finish,
    Recovery,
    TwoPhaseState,
    end_transaction,
    node_op,
    recover,
    spans_writes,
)
from exdb.errors import (
    Error,
    ErrorClasses,
    InterfaceError,
    LockError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)

__all__ = [
    "DistributedConnection",
    "DistributedCursor",
    "NodesAutocommit",
    "ResultCursor",
    "check_engines",
    "many_execution",
    "node_broken",
    "reconnect_options",
    "shard_op",
]


def shard_op(
    conn: BaseConnection,
    call: ShardCall,
    lazy: Callable[[BaseConnection, ResultStream], Iterable[tuple[Any, ...]]] | None = None,
    in_txn: bool = False,
) -> Op:
    """Operation: run one shard call on one node connection and read its result: whole, or,
    for a streamed call on a door that gives ``lazy``, as rows fetched when they are read. An
    ``each`` call is one BATCH request: each parameter set's BatchResult or exception.
    ``in_txn``: inside a transaction even on an autocommit connection (see spans_writes)."""
    autocommit = (conn.autocommit and not in_txn) or call.alone
    if not autocommit:
        return (yield from watched(conn, _shard_op(conn, call, lazy, autocommit)))
    return (yield from _shard_op(conn, call, lazy, autocommit))


def _shard_op(
    conn: BaseConnection,
    call: ShardCall,
    lazy: Callable[[BaseConnection, ResultStream], Iterable[tuple[Any, ...]]] | None,
    autocommit: bool,
) -> Op:
    if not autocommit:
        conn._dirty = True
    if call.each:
        return (yield from conn.core.batch(call.sql, call.params, autocommit))
    stream = ResultStream(conn.core, call.sql)
    if call.many:
        yield from stream.executemany(call.sql, list(call.params), autocommit)
    else:
        yield from stream.execute(call.sql, call.params, autocommit)
    if stream.columns is None:
        return ShardResult(None, [], [], stream.rowcount, stream.lastrowid)
    if call.stream and lazy is not None:
        return ShardResult(stream.columns, stream.types, lazy(conn, stream), stream.rowcount)
    rows = yield from stream.fetch(None)
    return ShardResult(stream.columns, stream.types, rows, stream.rowcount)


class LazyRows:
    """A shard's rows, fetched a batch at a time as the merge reads them (sync door)."""

    def __init__(self, conn: BaseConnection, stream: ResultStream, batch: int = 4096) -> None:
        assert isinstance(conn, Connection)
        self._conn = conn
        self._stream = stream
        self._batch = batch

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while rows := self._conn._run(self._stream.fetch(self._batch)):
            yield from rows

    def close(self) -> None:
        """Give up the rest: the node stops sending it."""
        if self._stream.more and not self._conn.closed and self._conn.core.broken is None:
            self._conn._run(self._stream.discard())

    @staticmethod
    def arrow_table(parts: Sequence[LazyRows]) -> Any:
        """The unread rest of several shards' results as one pyarrow Table: every node is
        asked for Arrow IPC and all are read at once (see exdb.distributed.merge.arrow_concat)."""
        from exdb.arrow import Collector, concat_tables

        collectors = [
            Collector(
                p._stream.columns or [],
                p._stream.types,
                str(p._conn.core.server_info.get("engine", "")),
            )
            for p in parts
        ]
        outcomes = drive(
            [(p._conn, p._stream.arrow(c)) for p, c in zip(parts, collectors, strict=True)]
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return concat_tables([c.table() for c in collectors])

    @staticmethod
    def interleave(parts: Sequence[LazyRows]) -> Iterator[tuple[Any, ...]]:
        """The rows of several shards in the order they arrive, for a merge that keeps no
        order: every node keeps sending while another's rows are read, instead of waiting,
        its socket full, for its turn. At most one read per node is held at a time."""
        live = list(parts)
        while live:
            arrived = False
            for part in list(live):
                rows = part._stream.take_ready()
                if rows:
                    arrived = True
                    yield from rows
                if not part._stream.more:
                    live.remove(part)
            if live and not arrived:
                receive_any([part._conn for part in live])


def check_engines(infos: Sequence[dict[str, Any]], nodes: Sequence[str]) -> str:
    """The nodes' common engine; a mix is refused with NotSupportedError."""
    engines = {info.get("engine") for info in infos}
    if len(engines) != 1:
        detail = ", ".join(f"{n}={i.get('engine')}" for n, i in zip(nodes, infos, strict=True))
        raise NotSupportedError(f"the nodes run different engines ({detail}); use one engine")
    return str(engines.pop())


class NodesAutocommit:
    """``autocommit`` of a connection to several nodes (sync and asyncio doors): read from the
    node connections, set on every one of them."""

    options: ConnectOptions
    _conns: Sequence[BaseConnection]

    @property
    def autocommit(self) -> bool:
        """Whether each statement commits on its own."""
        return self.options.autocommit if not self._conns else self._conns[0].autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        for conn in self._conns:
            conn.autocommit = bool(value)


def node_broken(conn: BaseConnection) -> bool:
    """Whether a node connection has failed (closed, or its core broken)."""
    return conn.closed or conn.core.broken is not None


def reconnect_options(options: ConnectOptions) -> ConnectOptions:
    """The options of a reconnection to a down replica: one short try (see replicas.py)."""
    timeout = min(options.connect_timeout, RECONNECT_TIMEOUT)
    return dataclasses.replace(options, connect_timeout=timeout, max_connect_attempts=1)


def _down_connection(host: str, port: int, options: ConnectOptions, error: Error) -> Connection:
    """A placeholder for a replica that could not be reached at connect time: closed and
    broken, so that nothing is sent to it until it is reconnected."""
    conn = Connection.__new__(Connection)
    BaseConnection.__init__(conn, format_node(host, port), options)
    conn._lock = threading.RLock()
    conn._sock = None
    conn.closed = True
    conn.core.broken = error
    return conn


def _in_node_order(calls: Sequence[ShardCall], pairs: list[tuple[Connection, Op]]) -> list[Any]:
    """Run a batch one node at a time, in node order; the outcomes in the batch's order."""
    outcomes: list[Any] = [None] * len(calls)
    for node in sorted({c.node for c in calls}):
        indexes = [i for i, c in enumerate(calls) if c.node == node]
        for i, outcome in zip(indexes, drive([pairs[i] for i in indexes]), strict=True):
            outcomes[i] = outcome
    return outcomes


class DistributedConnection(NodesAutocommit, ErrorClasses):
    """A PEP 249 connection to several nodes that answer as one database."""

    __module__ = "exdb"

    def __init__(self, nodes: Sequence[Any], options: ConnectOptions, replicas: int = 1) -> None:
        if not nodes:
            raise ProgrammingError("nodes= needs at least one node")
        addresses = [parse_node(n) for n in nodes]
        layout = Layout(tuple(format_node(h, p) for h, p in addresses), replicas)
        self.options = options
        self.closed = False
        self._conns: list[Connection] = []
        self._replicas: Replicas | None = None
        try:
            for host, port in addresses:
                try:
                    self._conns.append(Connection(host, port, options))
                except OperationalError as exc:
                    if layout.replicas == 1:
                        raise
                    self._conns.append(_down_connection(host, port, options, exc))
            self.nodes = tuple(c.node for c in self._conns)
            live = [c for c in self._conns if not node_broken(c)]
            engine = check_engines([c.server_info for c in live], [c.node for c in live])
            self.engine = Engine(layout.shards, engine)
            self._twopc = TwoPhaseState()
            if layout.replicas > 1:
                self._replicas = Replicas(layout, engine, lambda n: node_broken(self._conns[n]))
                for n, conn in enumerate(self._conns):
                    if node_broken(conn):
                        self._replicas.mark_down(n)
                self._drive_nodes(join(self._replicas, range(len(self._conns)), initial=True))
            Transactions(self._conns, options)  # global transaction ids, deadlock detection
            self._drive(self.engine.load_catalog())
            self.commit()
            #: What the recovery run at connect did (see exdb.distributed.transaction).
            self.last_recovery = self._finish(recover(self.nodes))
        except BaseException:
            self._close()
            raise

    # --- the driver ---------------------------------------------------------------------------

    def _drive(self, execution: Execution) -> Result:
        """Drive the engine's pipeline, running each batch of shard calls concurrently (with
        replicas, each shard call becomes calls to its replicas: see replicas.py)."""
        if self._replicas is None:
            if any(c.core.broken is not None for c in self._conns):
                self._revive()
            return self._drive_nodes(execution, group=True)  # type: ignore[no-any-return]
        self._recover_replicas()
        self._replicas.autocommit = self.autocommit
        return self._drive_nodes(self._replicas.run(execution))  # type: ignore[no-any-return]

    def _recover_replicas(self) -> None:
        """Reconnect the down replicas whose time has come and catch up those behind, when
        no transaction is open (a reconnection is one short try; see replicas.py)."""
        replicas = self._replicas
        assert replicas is not None
        due = replicas.due()
        if not due or any(c._dirty for c in self._conns):
            return
        for n in due:
            if n in replicas.down or node_broken(self._conns[n]):
                old = self._conns[n]
                host, port = parse_node(old.node)
                try:
                    fresh = Connection(host, port, reconnect_options(self.options))
                except Error:
                    replicas.retry_failed(n)
                    continue
                fresh.autocommit = self.autocommit
                old._close()
                self._conns[n] = fresh
                replicas.reconnected(n)
        self._drive_nodes(join(replicas, due))

    def _drive_nodes(self, execution: Any, group: bool = False) -> Any:
        """Drive a generator of node calls, each batch concurrently. ``group``: an autocommit
        statement whose writes reach several nodes runs as one transaction, committed in two
        phases (not with replicas yet: their layer commits an autocommit write itself)."""
        atomic = group and self.autocommit and len(self._conns) > 1
        grouped = False
        try:
            calls = next(execution)
            while True:
                batch(self._conns, (c.node for c in calls))  # for wait-die on the nodes
                first = not grouped and atomic and spans_writes(calls)
                grouped = grouped or first
                pairs = [
                    (self._conns[c.node], shard_op(self._conns[c.node], c, LazyRows, grouped))
                    for c in calls
                ]
                # Its first writes take the nodes' write locks in node order, one node after
                # another: two such statements never wait for each other in a cycle.
                calls = execution.send(_in_node_order(calls, pairs) if first else drive(pairs))
        except StopIteration as stop:
            if grouped:
                self._end("commit")
            return stop.value  # type: ignore[no-any-return]
        except LockError as exc:
            touched = [c.node for c in self._conns if c._dirty]
            if not touched or self.closed:
                raise
            failed: Error | None = None
            try:  # a lost lock ends the whole transaction, on every node, as in PostgreSQL
                self.rollback()
            except Error as why:
                failed = why
            raise lock_lost(exc, touched, failed) from exc
        except BaseException:
            if grouped:
                with contextlib.suppress(Error):  # the statement's own error is the one to see
                    self._end("rollback")
            raise

    def _check_open(self) -> None:
        if self.closed:
            raise InterfaceError("the connection is closed", node=",".join(self.nodes))

    # --- PEP 249 ------------------------------------------------------------------------------

    def cursor(self) -> DistributedCursor:
        """A new cursor."""
        self._check_open()
        return DistributedCursor(self)

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> DistributedCursor:
        """Run one statement on a new cursor and return that cursor."""
        return self.cursor().execute(sql, params)

    def executemany(self, sql: str, seq_of_params: Any) -> DistributedCursor:
        """Run one statement for every parameter sequence, on a new cursor."""
        return self.cursor().executemany(sql, seq_of_params)

    def explain(self, sql: str, analyze: bool = False, params: Sequence[Any] | None = None) -> str:
        """How the statement would run: the plan, the nodes, each shard's SQL and the merge.
        ``analyze=True`` runs it (with ``params``) and adds what each stage moved and its time
        (see :meth:`analyze`)."""
        self._check_open()
        if analyze:
            return self.analyze(sql, params).text()
        return self.engine.explain(sql)

    def analyze(self, sql: str, params: Sequence[Any] | None = None) -> Analysis:
        """Run the statement (for real: an INSERT inserts) and read its result to the end;
        the rows and bytes each stage moved, and the time (exdb.distributed.analyze)."""
        self._check_open()
        analyzing = cast(Execution, self.engine.analyze(sql, params))  # its value: Analysis
        return cast(Analysis, self._drive(analyzing))

    def _finish(self, steps: Finish) -> Any:
        """Drive a transaction-ending or recovery generator (exdb.distributed.transaction)."""
        try:
            requests = next(steps)
            while True:
                pairs = [(self._conns[r.node], node_op(self._conns[r.node], r)) for r in requests]
                requests = steps.send(drive(pairs))
        except StopIteration as stop:
            return stop.value

    def _revive(self) -> None:
        """Reconnect to the nodes whose connection was lost and that hold no part of the open
        transaction; a node still down stays as it is (its next statement says so)."""
        for i, conn in enumerate(self._conns):
            if conn.core.broken is None or conn._dirty:
                continue
            try:
                fresh = Connection(*parse_node(self.nodes[i]), self.options)
            except Error:
                continue
            fresh.autocommit = conn.autocommit
            conn._close()
            self._conns[i] = fresh

    def _end(self, op: str) -> None:
        self._check_open()
        if self._replicas is not None:  # a replica that went down leaves the transaction
            for c in self._conns:
                if c._dirty and node_broken(c):
                    c._dirty = False
        dirty = [i for i, c in enumerate(self._conns) if c._dirty]
        broken = [c.core.broken is not None for c in self._conns]
        error: Error | None = None
        try:
            self._finish(end_transaction(op, dirty, self.nodes, self._twopc, broken))
        except Error as exc:
            error = exc
        finally:
            for c in self._conns:
                c._dirty = False
        if self._replicas is not None:  # replicas that broke meanwhile are marked down
            outcome = "commit" if op == "commit" and error is None else "rollback"
            after_end(self._replicas, outcome, dirty, [None] * len(dirty))
        if op == "rollback" or error is not None:
            if self._replicas is None:  # with replicas, their layer reconnects (and catches up)
                self._revive()
            try:
                self._drive(self.engine.load_catalog())  # DDL may have been rolled back
            except Error as exc:
                error = error or exc
        if error is not None:
            raise error

    def commit(self) -> None:
        """Commit on every node this transaction touched: in one phase on one node, by
        two-phase commit on several (exdb.distributed.transaction); a failure's error says
        which nodes committed and what recovery will do."""
        self._end("commit")

    def recover(self, all_in_doubt: bool = False) -> Recovery:
        """Resolve the nodes' in-doubt two-phase transactions (those whose client is gone, or
        every one with ``all_in_doubt``) by the decisions their coordinators recorded."""
        self._check_open()
        return self._finish(recover(self.nodes, all_in_doubt=all_in_doubt))  # type: ignore[no-any-return]

    def rollback(self) -> None:
        """Roll back on every node this transaction touched."""
        self._end("rollback")

    def cancel(self) -> None:
        """Interrupt the running statement on every node; safe from any thread. The statement
        raises OperationalError; nodes that had finished their part are not touched. Every
        node is tried; the first failure to reach one is raised after."""
        errors: list[OperationalError] = []
        for conn in list(self._conns):
            try:
                conn.cancel()
            except OperationalError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def transaction(self) -> Transaction:
        """``with conn.transaction():`` commits on every node at the block's end, or rolls
        back if it raises (see exdb.client.base.TransactionBlock)."""
        self._check_open()
        return Transaction(self, lambda: any(c._dirty for c in self._conns))

    def close(self) -> None:
        """Close every node connection; open transactions are rolled back by the nodes.
        Closing a closed connection raises InterfaceError."""
        if self.closed:
            nodes = ",".join(getattr(self, "nodes", ()))
            raise InterfaceError("the connection is closed already", node=nodes)
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for conn in self._conns:
            conn._close()
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()

    def __enter__(self) -> DistributedConnection:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if not self.closed:
                if exc_type is None:
                    self.commit()
                else:
                    self.rollback()
        finally:
            self._close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            warnings.warn(
                "exdb distributed connection was never closed", ResourceWarning, stacklevel=2
            )
            self._close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<exdb.DistributedConnection to {', '.join(getattr(self, 'nodes', ()))} ({state})>"


class ResultCursor:
    """Cursor state over a merged result; the sync and asyncio distributed cursors share it.
    Rows are read from the result as they are fetched: a streamed result is never held whole."""

    def __init__(self) -> None:
        self.arraysize = 1
        self.closed = False
        self._result: Result | None = None
        self._rows_left: Iterator[tuple[Any, ...]] = iter(())
        self._fresh = False
        self._kept: tuple[int, int | None] = (-1, None)  # rowcount, lastrowid after close

    def _set(self, result: Result) -> None:
        self._release()
        self._result = result
        self._rows_left = iter(result.rows)
        self._fresh = True  # no row read yet: Result.arrow may read the shards as Arrow

    def _release(self) -> None:
        if self._result is not None and self._result.close is not None:
            self._result.close()
        if self._result is not None:
            self._kept = (self._result.rowcount, self._result.lastrowid)
        self._result = None

    @property
    def description(self) -> list[tuple[Any, ...]] | None:
        """One 7-item tuple a column, or None for no result set."""
        r = self._result
        if r is None or r.columns is None:
            return None
        types = r.types if len(r.types) == len(r.columns) else [None] * len(r.columns)
        return [(n, t, None, None, None, None, None) for n, t in zip(r.columns, types, strict=True)]

    @property
    def rowcount(self) -> int:
        """Rows changed by the last INSERT, UPDATE or DELETE, over all shards; -1 otherwise."""
        return self._kept[0] if self._result is None else self._result.rowcount

    @property
    def lastrowid(self) -> int | None:
        """The rowid of the row the last statement inserted, where it names that row across
        the shards: a one-row INSERT that gives the table's INTEGER PRIMARY KEY, or an INSERT
        into a reference table; None otherwise (a rowid a shard generates is not unique)."""
        return self._kept[1] if self._result is None else self._result.lastrowid

    def _rows(self) -> Iterator[tuple[Any, ...]]:
        if self.closed:
            raise InterfaceError("the cursor is closed")
        if self._result is None or self._result.columns is None:
            raise ProgrammingError("no result set to fetch from: execute a query first")
        self._fresh = False
        return self._rows_left

    def _result_table(self, what: str, engine: str) -> Any:
        """The unread rest of the result as a pyarrow Table: as Arrow from the shards when
        the merge is a plain concatenation and no row was read yet, else from the rows."""
        from exdb.arrow import require, rows_table

        require("pyarrow", what)
        fresh = self._fresh
        rows = self._rows()
        result = self._result
        assert result is not None
        if fresh and result.arrow is not None:
            self._rows_left = iter(())
            return result.arrow()
        return rows_table(result.columns, result.types, rows, engine, what)

    def _fetchone(self) -> tuple[Any, ...] | None:
        row = next(self._rows(), None)
        return None if row is None else tuple(row)

    def _fetchmany(self, size: int | None) -> list[tuple[Any, ...]]:
        n = self.arraysize if size is None else size
        return [tuple(r) for r in itertools.islice(self._rows(), n)]

    def _fetchall(self) -> list[tuple[Any, ...]]:
        return list(map(tuple, self._rows()))

    def setinputsizes(self, sizes: Any) -> None:
        """Accepted and ignored, as PEP 249 allows."""

    def setoutputsize(self, size: int, column: int | None = None) -> None:
        """Accepted and ignored, as PEP 249 allows."""


def many_execution(engine: Engine, sql: str, seq: list[Any]) -> Execution:
    """executemany over the shards: a bulk INSERT per shard where possible, else one statement
    per parameter set; the rowcount is the total."""
    bulk = engine.bulk_insert(sql, seq) if seq else None
    if bulk is not None:
        return (yield from bulk)
    total = 0
    for params in seq:
        result = yield from engine.run(sql, params)
        total += max(result.rowcount, 0)
    return Result(None, [], [], total)


class DistributedCursor(ResultCursor, ArrowFetches, CopyMethods):
    """A PEP 249 cursor over a distributed connection. Results are merged before they are
    returned, so fetching never goes back to the nodes."""

    __module__ = "exdb"

    def __init__(self, connection: DistributedConnection) -> None:
        super().__init__()
        self.connection = connection

    def _check(self) -> None:
        if self.closed:
            raise InterfaceError("the cursor is closed")
        self.connection._check_open()

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> DistributedCursor:
        """Run one statement with qmark parameters, across the shards."""
        self._check()
        self._set(self.connection._drive(self.connection.engine.run(sql, params)))
        return self

    def executemany(self, sql: str, seq_of_params: Any) -> DistributedCursor:
        """Run one statement for every parameter sequence; INSERTs go to each shard in bulk."""
        self._check()
        engine = self.connection.engine
        self._set(self.connection._drive(many_execution(engine, sql, list(seq_of_params))))
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
        return self._fetchone()

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        """Up to ``size`` (default ``arraysize``) rows."""
        return self._fetchmany(size)

    def fetchall(self) -> list[tuple[Any, ...]]:
        """All the remaining rows."""
        return self._fetchall()

    def _arrow_table(self, what: str) -> Any:
        return self._result_table(what, self.connection.engine.engine)

    def close(self) -> None:
        """Close the cursor; an unread streamed result is cancelled on the nodes."""
        self.closed = True
        self._release()

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while (row := self.fetchone()) is not None:
            yield row

    def __enter__(self) -> DistributedCursor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
