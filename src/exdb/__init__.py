"""exdb: several SQL shard servers behaving as one database, from Python.

The PEP 249 globals, the exceptions, the type objects and the ``connect`` functions live here;
everything else is in submodules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
    UnknownTableError,
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

if TYPE_CHECKING:
    from exdb.client.aio import AsyncConnection, AsyncCursor
    from exdb.client.sync import Connection, Cursor
    from exdb.distributed.connection import DistributedConnection, DistributedCursor
    from exdb.workers.connection import AsyncDistributedConnection, ResultSet

#: The doors, loaded on first use (PEP 562): the single-node door needs neither sqlglot nor
#: asyncio, and a shard server or a pytest run that never connects needs no door at all.
_LAZY = {
    "AsyncConnection": "exdb.client.aio",
    "AsyncCursor": "exdb.client.aio",
    "ConnectOptions": "exdb.client.options",
    "parse_node": "exdb.client.options",
    "Connection": "exdb.client.sync",
    "Cursor": "exdb.client.sync",
    "DistributedConnection": "exdb.distributed.connection",
    "DistributedCursor": "exdb.distributed.connection",
    "AsyncDistributedConnection": "exdb.workers.connection",
    "ResultSet": "exdb.workers.connection",
}
#: Subpackages that ``import exdb`` used to load, still reachable as ``exdb.<name>``.
_SUBPACKAGES = ("client", "distributed", "wire", "workers")


def __getattr__(name: str) -> Any:
    """Load a door (or a subpackage) the first time it is asked for."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"exdb.{name}")
    else:
        raise AttributeError(f"module 'exdb' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
    "AsyncDistributedConnection",
    "Binary",
    "Connection",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "DistributedConnection",
    "DistributedCursor",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "ResultSet",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "UnknownTableError",
    "Warning",
    "apilevel",
    "connect",
    "connect_async",
    "paramstyle",
    "threadsafety",
]


def _split_target(host: Any, port: Any) -> tuple[str, int]:
    from exdb.client.options import parse_node

    if host is None:
        raise ProgrammingError("connect() needs a node: connect('host', port) or 'host:port'")
    return parse_node(host, port)


def _url_target(host: Any, port: Any, nodes: Any, options: dict[str, Any]) -> tuple[Any, Any]:
    """``connect("exdb://h:p,h:p/?opts")``: (host, nodes) taken from the URL, its options merged
    into ``options`` (a keyword argument wins); other arguments come back as they were."""
    from exdb.client.url import is_url, parse_url

    if not (isinstance(host, str) and is_url(host)):
        return host, nodes
    if port is not None or nodes is not None:
        raise ProgrammingError("connect() takes an exdb:// URL alone, without port or nodes=")
    url_nodes, url_options = parse_url(host)
    for key, value in url_options.items():
        options.setdefault(key, value)
    if len(url_nodes) == 1:  # one node: a plain connection, as connect("host:port")
        return url_nodes[0], None
    return None, url_nodes


def _pop_workers(options: dict[str, Any]) -> int:
    given = [options.pop(k) for k in ("nWorkers", "nworkers") if k in options]
    if len(given) > 1:
        raise ProgrammingError("connect() got both nWorkers and nworkers")
    return int(given[0]) if given else 2


def _pop_replicas(options: dict[str, Any]) -> int:
    """``nReplicas`` (eXtremeSQL's spelling) or ``n_replicas``: nodes per shard (default 1)."""
    given = [options.pop(k) for k in ("nReplicas", "n_replicas") if k in options]
    if len(given) > 1:
        raise ProgrammingError("connect() got both nReplicas and n_replicas")
    value = given[0] if given else 1
    if value in (None, 0):
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ProgrammingError(f"nReplicas must be a positive integer, not {value!r}")
    return value


def _pop_async(options: dict[str, Any]) -> bool:
    flags = [bool(options.pop(k)) for k in ("async", "async_") if k in options]
    for name in ("nWorkers", "nworkers"):
        if name in options and not any(flags):
            raise ProgrammingError(f"{name} applies to asynchronous connections (async=True)")
    return any(flags)


def connect(host: Any = None, port: Any = None, *, nodes: Any = None, **options: Any) -> Any:
    """Connect to one node, or to several that answer as one database.

    - ``connect("localhost", 5001)`` or ``connect("localhost:5001")``: a :class:`Connection`.
    - ``connect(nodes=("h:5001", "h:5002"))``: a :class:`DistributedConnection`.
    - ``connect(nodes=..., **{"async": True}, nWorkers=2)`` (or ``async_=True``): an
      :class:`AsyncDistributedConnection` running statements on worker processes.
    - ``connect("exdb://h:5001,h:5002/?password=...")``: the nodes and options of an exdb URL
      (one node: a :class:`Connection`; several: a :class:`DistributedConnection`).

    Options (eXtremeSQL spellings accepted): ``sql_password``/``password``, ``sql_login``,
    ``connectTimeout`` and ``readTimeout`` (milliseconds), ``maxConnectAttempts``, ``ssl_params``
    (a mapping or an ``ssl.SSLContext``) and ``autocommit``; ``statement_timeout`` (milliseconds
    a statement may run on a node, 0: none; default: the server's ``--statement-timeout``),
    ``liveness_interval`` and ``liveness_timeout`` (milliseconds; see docs/protocol.md);
    ``nReplicas`` (with ``nodes=``): consecutive groups of that many nodes hold one shard each
    (see docs/architecture.md, "Replicas").
    """
    from exdb.client.options import ConnectOptions

    host, nodes = _url_target(host, port, nodes, options)
    is_async = _pop_async(options)
    workers = _pop_workers(options)
    replicas = _pop_replicas(options)
    if nodes is not None:
        if host is not None or port is not None:
            raise ProgrammingError("connect() takes either host/port or nodes=, not both")
        if isinstance(nodes, str):
            nodes = [n for n in nodes.split(",") if n.strip()]
        if is_async:
            from exdb.workers.connection import AsyncDistributedConnection

            return AsyncDistributedConnection(list(nodes), options, workers, replicas)
        if isinstance(nodes, str):
            nodes = [n for n in nodes.split(",") if n.strip()]
        from exdb.distributed.connection import DistributedConnection

        return DistributedConnection(list(nodes), ConnectOptions.from_kwargs(options), replicas)
    if replicas > 1:
        raise ProgrammingError("nReplicas applies to nodes=: it groups the nodes into shards")
    if is_async:
        raise ProgrammingError("async=True needs nodes=")
    target_host, target_port = _split_target(host, port)
    from exdb.client.sync import Connection

    return Connection(target_host, target_port, ConnectOptions.from_kwargs(options))


async def connect_async(
    host: Any = None, port: Any = None, *, nodes: Any = None, **options: Any
) -> Any:
    """Connect for asyncio: to one node, or (``nodes=``) to several as one database; an
    ``exdb://`` URL as in :func:`connect`."""
    from exdb.client.options import ConnectOptions

    host, nodes = _url_target(host, port, nodes, options)
    replicas = _pop_replicas(options)
    if nodes is not None:
        if host is not None or port is not None:
            raise ProgrammingError("connect_async() takes either host/port or nodes=, not both")
        from exdb.distributed.aio import AioDistributedConnection

        if isinstance(nodes, str):
            nodes = [n for n in nodes.split(",") if n.strip()]
        return await AioDistributedConnection.open(
            list(nodes), ConnectOptions.from_kwargs(options), replicas
        )
    if replicas > 1:
        raise ProgrammingError("nReplicas applies to nodes=: it groups the nodes into shards")
    target_host, target_port = _split_target(host, port)
    from exdb.client.aio import AsyncConnection

    conn = AsyncConnection(target_host, target_port, ConnectOptions.from_kwargs(options))
    return await conn._open()
