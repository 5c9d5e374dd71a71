"""The asyncio door to many nodes: the same engine pipeline, driven by an event loop; each
batch of shard calls runs as concurrent tasks (pipelined where two go to one node)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, Literal, cast, overload

from exdb.arrow import AsyncArrowFetches
from exdb.client.aio import AsyncConnection
from exdb.client.base import AsyncTransaction, callproc_statement
from exdb.client.options import ConnectOptions, format_node, parse_node
from exdb.copy_methods import AsyncCopyMethods
from exdb.distributed.analyze import Analysis
from exdb.distributed.connection import (
    NodesAutocommit,
    ResultCursor,
    check_engines,
    many_execution,
    node_broken,
    reconnect_options,
    shard_op,
)
from exdb.distributed.deadlock import Transactions, batch, lock_lost
from exdb.distributed.execute import Engine, Execution
from exdb.distributed.plan import Result
from exdb.distributed.replicas import Layout, Replicas, after_end, join
from exdb.distributed.transaction import (
    Finish,
    Recovery,
    TwoPhaseState,
    end_transaction,
    node_op,
    recover,
)
from exdb.errors import (
    Error,
    ErrorClasses,
    InterfaceError,
    LockError,
    OperationalError,
    ProgrammingError,
)

__all__ = ["AioDistributedConnection", "AioDistributedCursor"]


class AioDistributedConnection(NodesAutocommit, ErrorClasses):
    """Several nodes as one database, for asyncio: ``await exdb.connect_async(nodes=...)``."""

    __module__ = "exdb"

    def __init__(self, options: ConnectOptions) -> None:
        self.options = options
        self.closed = False
        self._conns: list[AsyncConnection] = []
        self.nodes: tuple[str, ...] = ()
        self.engine: Engine | None = None
        self._replicas: Replicas | None = None
        self._twopc = TwoPhaseState()
        self.last_recovery: Recovery | None = None

    @classmethod
    async def open(
        cls, nodes: Sequence[Any], options: ConnectOptions, replicas: int = 1
    ) -> AioDistributedConnection:
        """Connect to every node (concurrently) and load the catalog."""
        if not nodes:
            raise ProgrammingError("nodes= needs at least one node")
        self = cls(options)
        addresses = [parse_node(n) for n in nodes]
        layout = Layout(tuple(format_node(h, p) for h, p in addresses), replicas)
        conns = [AsyncConnection(h, p, options) for h, p in addresses]
        opened = await asyncio.gather(*(c._open() for c in conns), return_exceptions=True)
        if layout.replicas > 1:  # an unreachable replica is kept, closed, as a placeholder
            for c, r in zip(conns, opened, strict=True):
                if isinstance(r, OperationalError):
                    c.closed = True
                    c.core.broken = c.core.broken or r
            self._conns = conns
            opened = [
                c if isinstance(r, OperationalError) else r
                for c, r in zip(conns, opened, strict=True)
            ]
        else:
            self._conns = [c for c, r in zip(conns, opened, strict=True) if r is c]
        try:
            failures = [r for r in opened if isinstance(r, BaseException)]
            if failures:
                raise failures[0]
            self.nodes = tuple(c.node for c in self._conns)
            live = [c for c in self._conns if not node_broken(c)]
            engine = check_engines([c.server_info for c in live], [c.node for c in live])
            self.engine = Engine(layout.shards, engine)
            if layout.replicas > 1:
                self._replicas = Replicas(layout, engine, lambda n: node_broken(self._conns[n]))
                for n, conn in enumerate(self._conns):
                    if node_broken(conn):
                        self._replicas.mark_down(n)
                await self._drive_nodes(join(self._replicas, range(len(self._conns)), initial=True))
            Transactions(self._conns, options)  # global transaction ids, deadlock detection
            await self._drive(self.engine.load_catalog())
            await self.commit()
            self.last_recovery = await self._finish(recover(self.nodes))
        except BaseException:
            await self._close()
            raise
        return self

    async def _drive(self, execution: Execution) -> Result:
        """Drive the engine's pipeline (with replicas, through replicas.py). A cancelled task
        cancels its shard calls (each node connection cancels its statement on its node, and
        stays usable) and the pipeline."""
        if self._replicas is None:
            if any(c.core.broken is not None for c in self._conns):
                await self._revive()
            return await self._drive_nodes(execution)  # type: ignore[no-any-return]
        await self._recover_replicas()
        self._replicas.autocommit = self.autocommit
        return await self._drive_nodes(self._replicas.run(execution))  # type: ignore[no-any-return]

    async def _recover_replicas(self) -> None:
        """Reconnect the down replicas whose time has come and catch up those behind, when
        no transaction is open (see DistributedConnection._recover_replicas)."""
        replicas = self._replicas
        assert replicas is not None
        due = replicas.due()
        if not due or any(c._dirty for c in self._conns):
            return
        for n in due:
            if n in replicas.down or node_broken(self._conns[n]):
                old = self._conns[n]
                host, port = parse_node(old.node)
                fresh = AsyncConnection(host, port, reconnect_options(self.options))
                try:
                    await fresh._open()
                except Error:
                    replicas.retry_failed(n)
                    continue
                fresh.autocommit = self.autocommit
                await old._close()
                self._conns[n] = fresh
                replicas.reconnected(n)
        await self._drive_nodes(join(replicas, due))

    async def _drive_nodes(self, execution: Any) -> Any:
        """Drive a generator of node calls, each batch as concurrent tasks."""
        try:
            calls = next(execution)
            while True:
                batch(self._conns, (c.node for c in calls))  # for wait-die on the nodes
                outcomes = await asyncio.gather(
                    *(self._conns[c.node]._run(shard_op(self._conns[c.node], c)) for c in calls),
                    return_exceptions=True,
                )
                calls = execution.send(list(outcomes))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            execution.close()
            raise
        except LockError as exc:
            touched = [c.node for c in self._conns if c._dirty]
            if not touched or self.closed:
                raise
            failed: Error | None = None
            try:  # a lost lock ends the whole transaction, on every node, as in PostgreSQL
                await self.rollback()
            except Error as why:
                failed = why
            raise lock_lost(exc, touched, failed) from exc

    def _engine(self) -> Engine:
        if self.closed or self.engine is None:
            raise InterfaceError("the connection is closed", node=",".join(self.nodes))
        return self.engine

    def transaction(self) -> AsyncTransaction:
        """``async with conn.transaction():`` commits on every node at the block's end, or
        rolls back if it raises or its task is cancelled (see TransactionBlock)."""
        self._engine()
        return AsyncTransaction(self, lambda: any(c._dirty for c in self._conns))

    def cursor(self) -> AioDistributedCursor:
        """A new cursor."""
        self._engine()
        return AioDistributedCursor(self)

    async def execute(self, sql: str, params: Sequence[Any] | None = None) -> AioDistributedCursor:
        """Run one statement on a new cursor and return that cursor."""
        return await self.cursor().execute(sql, params)

    async def executemany(self, sql: str, seq_of_params: Any) -> AioDistributedCursor:
        """Run one statement for every parameter sequence, on a new cursor."""
        return await self.cursor().executemany(sql, seq_of_params)

    async def insert_each(self, sql: str, seq: list[Any]) -> list[Any] | None:
        """Run a plain one-row INSERT once per parameter set in one batch per shard; each
        statement's outcome (1 or its exception), or None if the statement does not qualify."""
        execution = self._engine().insert_each(sql, seq)
        if execution is None:
            return None
        return await self._drive(execution)  # type: ignore[return-value]

    async def select_each(self, sql: str, seq: list[Any]) -> list[Any] | None:
        """Run a point SELECT (its distribution key pinned to one shard) once per parameter
        set, each shard's sets as one BATCH; each statement's Result or exception, exactly as
        if it ran alone, or None if the statement does not qualify."""
        execution = self._engine().select_each(sql, seq)
        if execution is None:
            return None
        return await self._drive(execution)  # type: ignore[return-value]

    @overload
    def explain(
        self, sql: str, analyze: Literal[False] = False, params: Sequence[Any] | None = None
    ) -> str: ...

    @overload
    def explain(
        self, sql: str, analyze: Literal[True], params: Sequence[Any] | None = None
    ) -> Coroutine[Any, Any, str]: ...

    def explain(
        self, sql: str, analyze: bool = False, params: Sequence[Any] | None = None
    ) -> str | Coroutine[Any, Any, str]:
        """How the statement would run. ``analyze=True`` gives a coroutine instead, which
        runs it (``await conn.explain(sql, analyze=True)``): see :meth:`analyze`."""
        engine = self._engine()
        if analyze:
            return self._explain_analyze(sql, params)
        return engine.explain(sql)

    async def _explain_analyze(self, sql: str, params: Sequence[Any] | None) -> str:
        return (await self.analyze(sql, params)).text()

    async def analyze(self, sql: str, params: Sequence[Any] | None = None) -> Analysis:
        """Run the statement (for real: an INSERT inserts) and read its result to the end;
        the rows and bytes each stage moved, and the time (exdb.distributed.analyze)."""
        analyzing = cast(Execution, self._engine().analyze(sql, params))  # its value: Analysis
        return cast(Analysis, await self._drive(analyzing))

    async def _finish(self, steps: Finish) -> Any:
        """Drive a transaction-ending or recovery generator (exdb.distributed.transaction)."""
        try:
            requests = next(steps)
            while True:
                outcomes = await asyncio.gather(
                    *(self._conns[r.node]._run(node_op(self._conns[r.node], r)) for r in requests),
                    return_exceptions=True,
                )
                requests = steps.send(list(outcomes))
        except StopIteration as stop:
            return stop.value

    async def _revive(self) -> None:
        """Reconnect to the nodes whose connection was lost and that hold no part of the open
        transaction; a node still down stays as it is (its next statement says so)."""
        for i, conn in enumerate(self._conns):
            if conn.core.broken is None or conn._dirty:
                continue
            fresh = AsyncConnection(*parse_node(self.nodes[i]), self.options)
            try:
                await fresh._open()
            except Error:
                continue
            fresh.autocommit = conn.autocommit
            await conn._close()
            self._conns[i] = fresh

    async def _end(self, op: str) -> None:
        engine = self._engine()
        if self._replicas is not None:  # a replica that went down leaves the transaction
            for c in self._conns:
                if c._dirty and node_broken(c):
                    c._dirty = False
        dirty = [i for i, c in enumerate(self._conns) if c._dirty]
        broken = [c.core.broken is not None for c in self._conns]
        error: Error | None = None
        try:
            await self._finish(end_transaction(op, dirty, self.nodes, self._twopc, broken))
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
                await self._revive()
            try:
                await self._drive(engine.load_catalog())  # DDL may have been rolled back
            except Error as exc:
                error = error or exc
        if error is not None:
            raise error

    async def commit(self) -> None:
        """Commit on every node the transaction touched: one phase on one node, two-phase
        commit on several (see DistributedConnection.commit)."""
        await self._end("commit")

    async def recover(self, all_in_doubt: bool = False) -> Recovery:
        """Resolve the nodes' in-doubt two-phase transactions (see
        DistributedConnection.recover)."""
        self._engine()
        return await self._finish(recover(self.nodes, all_in_doubt=all_in_doubt))  # type: ignore[no-any-return]

    async def rollback(self) -> None:
        """Roll back on every node the transaction touched."""
        await self._end("rollback")

    async def close(self) -> None:
        """Close every node connection. Closing a closed connection raises InterfaceError."""
        if self.closed:
            raise InterfaceError("the connection is closed already", node=",".join(self.nodes))
        await self._close()

    async def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await asyncio.gather(*(c._close() for c in self._conns), return_exceptions=True)
        if self.engine is not None:
            self.engine.close()

    async def __aenter__(self) -> AioDistributedConnection:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if not self.closed:
                if exc_type is None:
                    await self.commit()
                else:
                    await self.rollback()
        finally:
            await self._close()


class AioDistributedCursor(ResultCursor, AsyncArrowFetches, AsyncCopyMethods):
    """A cursor whose statements are coroutines."""

    __module__ = "exdb"

    def __init__(self, connection: AioDistributedConnection) -> None:
        super().__init__()
        self.connection = connection

    async def execute(self, sql: str, params: Sequence[Any] | None = None) -> AioDistributedCursor:
        """Run one statement across the shards."""
        if self.closed:
            raise InterfaceError("the cursor is closed")
        engine = self.connection._engine()
        self._set(await self.connection._drive(engine.run(sql, params)))
        return self

    async def executemany(self, sql: str, seq_of_params: Any) -> AioDistributedCursor:
        """Run one statement for every parameter sequence."""
        if self.closed:
            raise InterfaceError("the cursor is closed")
        engine = self.connection._engine()
        self._set(await self.connection._drive(many_execution(engine, sql, list(seq_of_params))))
        return self

    async def callproc(self, procname: str, parameters: Sequence[Any] = ()) -> Any:
        """Call the function ``procname`` with ``parameters``; its value is the result set
        (see exdb.client.base.callproc_statement). Returns a copy of ``parameters``."""
        sql, values, returned = callproc_statement(procname, parameters)
        await self.execute(sql, values)
        return returned

    async def fetchone(self) -> tuple[Any, ...] | None:
        """The next row, or None."""
        return self._fetchone()

    async def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        """Up to ``size`` rows."""
        return self._fetchmany(size)

    async def fetchall(self) -> list[tuple[Any, ...]]:
        """All the remaining rows."""
        return self._fetchall()

    async def _arrow_table(self, what: str) -> Any:
        return self._result_table(what, self.connection._engine().engine)

    async def close(self) -> None:
        """Close the cursor."""
        self.closed = True
        self._release()

    def __aiter__(self) -> AsyncIterator[tuple[Any, ...]]:
        return self

    async def __anext__(self) -> tuple[Any, ...]:
        row = self._fetchone()
        if row is None:
            raise StopAsyncIteration
        return row

    async def __aenter__(self) -> AioDistributedCursor:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
