"""The SQLAlchemy 2 dialect of exdb: ``create_engine("exdb://host:port/")``.

It speaks SQLite's SQL (a subclass of SQLAlchemy's SQLite dialect, driver ``exdb``): the shards
run SQLite through apsw and the final stage of a distributed query runs on Python's sqlite3.
Nodes running DuckDB are refused at the first connection, with NotSupportedError.

URLs (see :mod:`exdb.client.url`; SQLAlchemy's own URL parser reads one ``host:port``, so
several nodes go in the query):

- ``exdb://127.0.0.1:5001/``: one node, a plain :class:`exdb.Connection`;
- ``exdb:///?nodes=127.0.0.1:5001,127.0.0.1:5002``, or ``exdb://127.0.0.1:5001/?node=
  127.0.0.1:5002``: several nodes as one database, a :class:`exdb.DistributedConnection`;
- ``&password=...``, ``&statement_timeout=5000`` and the other connect() options.

:func:`create_engine` also takes exdb's own form, ``exdb://h:5001,h:5002/?...``, which
SQLAlchemy's parser refuses.
"""

from __future__ import annotations

import sqlite3
import types
from typing import Any

from sqlalchemy.dialects.sqlite.base import SQLiteDialect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.interfaces import IsolationLevel

import exdb
from exdb.client.url import parse_url
from exdb.distributed.catalog import INTERNAL_TABLES

__all__ = ["ExdbDialect", "create_engine", "dbapi", "engine_url"]

_NODE_KEYS = ("node", "host", "nodes")


def engine_url(url: str) -> URL:
    """An ``exdb://`` URL in any form exdb reads (``exdb://h:5001,h:5002/?password=...``
    included) as a SQLAlchemy URL: the nodes go in the query, where SQLAlchemy's parser takes
    several; credentials and options stay as they were written."""
    nodes, _ = parse_url(url)  # refuses a malformed URL, naming what is wrong
    netloc, _, tail = url.strip()[len("exdb://") :].partition("/")
    netloc, question, query = netloc.partition("?")
    if not question:
        query = tail.partition("?")[2]
    credentials = netloc.rpartition("@")[0]
    at = "@" if credentials else ""
    options = "&".join(p for p in query.split("&") if p and p.split("=")[0] not in _NODE_KEYS)
    text = f"exdb://{credentials}{at}/?nodes={','.join(nodes)}" + (f"&{options}" if options else "")
    result = make_url(text)
    secret = [k for k in ("password", "sql_password") if k in result.query]
    if len(secret) == 1 and result.password is None:  # where SQLAlchemy's reprs hide it
        password = result.query[secret[0]]
        if isinstance(password, tuple):  # given twice: parse_url names that when connecting
            return result
        user = "" if result.username is None else result.username
        result = result.difference_update_query(secret).set(username=user, password=password)
    return result


def create_engine(url: str, **kwargs: Any) -> Any:
    """``sqlalchemy.create_engine`` for an ``exdb://`` URL in any form exdb reads, including
    several nodes before the path (``exdb://h:5001,h:5002/``)."""
    import sqlalchemy

    return sqlalchemy.create_engine(engine_url(url), **kwargs)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


class _DBAPI(types.ModuleType):
    """The exdb module as SQLAlchemy's SQLite dialect expects its DB-API module: with
    ``sqlite_version_info``, here the SQLite of the final stage (Python's sqlite3, the oldest
    SQLite a distributed statement may run on; the shards run a newer one)."""

    sqlite_version_info = sqlite3.sqlite_version_info
    sqlite_version = sqlite3.sqlite_version

    def __getattr__(self, name: str) -> Any:
        return getattr(exdb, name)


#: exdb, as the DB-API module of the dialect.
dbapi = _DBAPI("exdb.sqlalchemy.dbapi", "exdb, as the DB-API module of the SQLAlchemy dialect")
dbapi.connect = exdb.connect  # type: ignore[attr-defined]
dbapi.paramstyle = exdb.paramstyle  # type: ignore[attr-defined]


class ExdbDialect(SQLiteDialect):
    """SQLAlchemy's SQLite dialect over exdb's DB-API doors."""

    driver = "exdb"
    supports_statement_cache = True
    # SQLite's DATETIME and DATE types turn values into ISO text and back: exdb passes them on.
    supports_native_decimal = False

    @classmethod
    def import_dbapi(cls) -> Any:
        """The DB-API module: exdb."""
        return dbapi

    def create_connect_args(self, url: URL) -> tuple[list[Any], dict[str, Any]]:
        """(args, kwargs) for exdb.connect from the URL: one node, or ``nodes=`` for several."""
        text = url.set(drivername="exdb").render_as_string(hide_password=False)
        nodes, options = parse_url(text)
        if len(nodes) == 1:
            return [nodes[0]], options
        return [], {"nodes": nodes, **options}

    # --- what the SQLite dialect asks of sqlite3 that exdb answers differently -----------------

    def _get_server_version_info(self, connection: Any) -> tuple[int, ...]:
        raw = connection.connection.dbapi_connection
        engine = _engine_of(raw)
        if engine != "sqlite":
            raise exdb.NotSupportedError(
                f"the exdb SQLAlchemy dialect speaks SQLite's SQL; these nodes run {engine}"
                " (use exdb's DB-API connection with DuckDB nodes)"
            )
        shards = _version(str(connection.exec_driver_sql("SELECT sqlite_version()").scalar()))
        if isinstance(raw, exdb.DistributedConnection):
            # Gathered and aggregated statements end on the client's SQLite (the older one).
            return min(shards, tuple(sqlite3.sqlite_version_info))
        return shards

    def get_isolation_level_values(self, dbapi_connection: Any) -> list[IsolationLevel]:
        """SERIALIZABLE (each node's SQLite transaction; no snapshot across nodes) or
        AUTOCOMMIT."""
        return ["SERIALIZABLE", "AUTOCOMMIT"]

    def set_isolation_level(self, dbapi_connection: Any, level: Any) -> None:
        """AUTOCOMMIT: each statement commits on its own; SERIALIZABLE: transactions."""
        dbapi_connection.autocommit = level == "AUTOCOMMIT"

    def get_isolation_level(self, dbapi_connection: Any) -> Any:
        """AUTOCOMMIT or SERIALIZABLE, by the connection's autocommit."""
        return "AUTOCOMMIT" if dbapi_connection.autocommit else "SERIALIZABLE"

    def detect_autocommit_setting(self, dbapi_conn: Any) -> bool:
        """Whether the connection commits each statement on its own."""
        return bool(dbapi_conn.autocommit)

    def get_schema_names(self, connection: Any, **kw: Any) -> list[str]:
        """One schema: main (exdb does not ATTACH databases)."""
        return ["main"]

    def get_table_names(
        self, connection: Any, schema: Any = None, sqlite_include_internal: Any = False, **kw: Any
    ) -> list[str]:
        """The tables, without exdb's own tables (a node of a cluster has them)."""
        names = super().get_table_names(  # type: ignore[no-untyped-call]
            connection, schema=schema, sqlite_include_internal=sqlite_include_internal, **kw
        )
        return [n for n in names if n not in INTERNAL_TABLES]

    def is_disconnect(self, e: Any, connection: Any, cursor: Any) -> bool:
        """Whether the error left the connection unusable (closed, or a node lost)."""
        if isinstance(e, exdb.InterfaceError) and "closed" in str(e):
            return True
        if not isinstance(e, exdb.OperationalError) or connection is None:
            return False
        conns = getattr(connection, "_conns", None) or [connection]
        return any(getattr(getattr(c, "core", None), "broken", None) is not None for c in conns)

    def on_connect(self) -> None:
        """Nothing to register on a new connection (sqlite3's Python functions are not
        exdb's: the nodes run the SQL)."""
        return None


def _engine_of(raw: Any) -> str:
    """The engine the nodes behind a DB-API connection run."""
    if isinstance(raw, exdb.DistributedConnection):
        return str(raw.engine.engine)
    return str(raw.server_info.get("engine", "sqlite"))
