"""The asyncio door to many nodes: the same engine pipeline, driven by an event loop; each
batch of shard calls runs as concurrent tasks (pipelined where two go to one node)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, Literal, cast, overload

from exdb.arrow import AsyncArrowFetches
from exdb.client.aio import AsyncConnection
from exdb.client.base import AsyncTransaction, callproc_statement
from exdb.client.options import ConnectOptions, parse_node
from exdb.copy_methods import AsyncCopyMethods
from exdb.distributed.analyze import Analysis
from exdb.distributed.connection import (
    NodesAutocommit,
    ResultCursor,
    check_engines,
    many_execution,
    shard_op,
)
from exdb.distributed.deadlock import Transactions, batch, lock_lost
from exdb.distributed.execute import Engine, Execution
from exdb.distributed.plan import Result
from exdb.errors import Error, ErrorClasses, InterfaceError, LockError, ProgrammingError

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

    @classmethod
    async def open(cls, nodes: Sequence[Any], options: ConnectOptions) -> AioDistributedConnection:
        """Connect to every node (concurrently) and load the catalog."""
        if not nodes:
            raise ProgrammingError("nodes= needs at least one node")
        self = cls(options)
        addresses = [parse_node(n) for n in nodes]
        conns = [AsyncConnection(h, p, options) for h, p in addresses]
        opened = await asyncio.gather(*(c._open() for c in conns), return_exceptions=True)
        self._conns = [c for c, r in zip(conns, opened, strict=True) if r is c]
        try:
            failures = [r for r in opened if isinstance(r, BaseException)]
            if failures:
                raise failures[0]
            self.nodes = tuple(c.node for c in self._conns)
            engine = check_engines([c.server_info for c in self._conns], self.nodes)
            self.engine = Engine(len(self._conns), engine)
            Transactions(self._conns, options)  # global transaction ids, deadlock detection
            await self._drive(self.engine.load_catalog())
            await self.commit()
        except BaseException:
            await self._close()
            raise
        return self

    async def _drive(self, execution: Execution) -> Result:
        """Drive the engine's pipeline. A cancelled task cancels its shard calls (each node
        connection cancels its statement on its node, and stays usable) and the pipeline."""
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

    async def _end(self, op: str) -> None:
        engine = self._engine()
        dirty = [c for c in self._conns if c._dirty]
        results = await asyncio.gather(
            *(c._run(c._txn_op(op)) for c in dirty), return_exceptions=True
        )
        if op == "rollback":
            await self._drive(engine.load_catalog())
            for c in self._conns:
                c._dirty = False
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def commit(self) -> None:
        """Commit on every node the transaction touched."""
        await self._end("commit")

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
