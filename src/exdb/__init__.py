"""exdb: several SQL shard servers behaving as one database, from Python.

The PEP 249 globals, the exceptions, the type objects and the ``connect`` functions live here;
everything else is in submodules.
"""

from __future__ import annotations

from typing import Any

from exdb.client.aio import AsyncConnection, AsyncCursor
from exdb.client.options import ConnectOptions, parse_node
from exdb.client.sync import Connection, Cursor
from exdb.errors import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
)
from exdb.types import (
    BINARY,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    Binary,
    Date,
    DateFromTicks,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
)

__version__ = "0.1.0"

apilevel = "2.0"
#: Threads may share the module, not connections.
threadsafety = 1
paramstyle = "qmark"

__all__ = [
    "BINARY",
    "DATETIME",
    "NUMBER",
    "ROWID",
    "STRING",
    "AsyncConnection",
    "AsyncCursor",
    "Binary",
    "Connection",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "Warning",
    "apilevel",
    "connect",
    "connect_async",
    "paramstyle",
    "threadsafety",
]


def _split_target(host: Any, port: Any, nodes: Any) -> tuple[str, int]:
    if nodes is not None:
        if host is not None or port is not None:
            raise ProgrammingError("connect() takes either host/port or nodes=, not both")
        raise NotSupportedError(
            "connect(nodes=...): distributed connections are not built yet; "
            "connect to one node with connect('host', port)"
        )
    if host is None:
        raise ProgrammingError("connect() needs a node: connect('host', port) or 'host:port'")
    return parse_node(host, port)


def connect(host: Any = None, port: Any = None, *, nodes: Any = None, **options: Any) -> Connection:
    """Connect to one node: ``connect("localhost", 5001)`` or ``connect("localhost:5001")``.

    Options (eXtremeSQL spellings accepted): ``sql_password``/``password``, ``sql_login``,
    ``connectTimeout`` and ``readTimeout`` (milliseconds), ``maxConnectAttempts``, ``ssl_params``
    (a mapping or an ``ssl.SSLContext``) and ``autocommit``.
    """
    target_host, target_port = _split_target(host, port, nodes)
    return Connection(target_host, target_port, ConnectOptions.from_kwargs(options))


async def connect_async(
    host: Any = None, port: Any = None, *, nodes: Any = None, **options: Any
) -> AsyncConnection:
    """Connect to one node for asyncio; the options are those of :func:`connect`."""
    target_host, target_port = _split_target(host, port, nodes)
    conn = AsyncConnection(target_host, target_port, ConnectOptions.from_kwargs(options))
    return await conn._open()
