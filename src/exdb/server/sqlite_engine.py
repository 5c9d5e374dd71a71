"""The SQLite engine of a shard server."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import uuid
from collections.abc import Generator, Sequence
from typing import Any

from exdb.errors import PEP249_NAMES
from exdb.server.engines import (
    FIRST_BATCH,
    NO_TXN_KEYWORDS,
    Engine,
    EngineError,
    EnginePolicy,
    EngineSession,
    Outcome,
    Params,
    classify_python_error,
    first_keyword,
)
from exdb.types import value_type_names
from exdb.wire.codec import pack

__all__ = ["SqliteEngine", "SqliteSession"]


# --- SQLite ------------------------------------------------------------------------------------


def _register_sqlite_bool() -> None:
    # SQLite has no boolean type; a column declared BOOLEAN gives back Python bools.
    for name in ("BOOLEAN", "BOOL"):
        sqlite3.register_converter(name, lambda b: b not in (b"0", b"0.0", b""))


_register_sqlite_bool()


def _shm_dir() -> str:
    """RAM-backed directory for the in-memory default (tmpfs), else the temp directory."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return tempfile.gettempdir()


def _sweep_stale_memory_files(directory: str) -> None:
    """Remove in-memory databases left by servers that were killed (their pid is gone)."""
    for name in os.listdir(directory):
        if not name.startswith("exdb-mem-"):
            continue
        try:
            pid = int(name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SqliteEngine(Engine):
    """SQLite in WAL mode: readers never block the writer and see only committed data.

    With no file, the database lives in RAM (a tmpfs file when /dev/shm exists) and is deleted when
    the server stops; it is not durable, but it has the same isolation as a durable one. With a
    file, commits are synchronous (``synchronous=FULL``) and survive ``kill -9`` and power loss.
    """

    name = "sqlite"

    def __init__(
        self,
        path: str | None = None,
        policy: EnginePolicy | None = None,
        busy_timeout: float = 10.0,
    ) -> None:
        self.policy = policy or EnginePolicy()
        self.durable = path is not None
        if path is None:
            directory = _shm_dir()
            _sweep_stale_memory_files(directory)
            path = os.path.join(directory, f"exdb-mem-{os.getpid()}-{uuid.uuid4().hex}.db")
        self.path = path
        self.busy_timeout = busy_timeout
        with contextlib.closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,  # exdb issues BEGIN itself
            check_same_thread=False,  # interrupt() comes from another session's thread (cancel)
            timeout=self.busy_timeout,
            detect_types=sqlite3.PARSE_DECLTYPES,
            cached_statements=256,
        )
        conn.execute("PRAGMA synchronous=FULL" if self.durable else "PRAGMA synchronous=OFF")
        # A page cache of up to 64 MiB per session (the default is 2 MiB): scans of tables that
        # fit are served from it rather than read through the file system again.
        conn.execute("PRAGMA cache_size=-65536")
        conn.create_aggregate("exdb_collect", 1, _Collect)  # type: ignore[arg-type]
        return conn

    def open_session(self) -> EngineSession:
        try:
            return SqliteSession(self._connect())
        except sqlite3.Error as exc:
            raise _classify(exc) from exc

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error), contextlib.closing(self._connect()) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if not self.durable:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path + suffix)


class _Collect:
    """``exdb_collect(DISTINCT x)``: a group's distinct non-NULL values, packed as one msgpack
    list (exact: integers, doubles, text and blobs keep their type). The distributed engine's
    COUNT(DISTINCT x) partial; SQLite applies DISTINCT, with its own equality, before ``step``."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def step(self, value: Any) -> None:
        if value is not None:
            self.values.append(value)

    def finalize(self) -> bytes:
        return pack(self.values)


class SqliteSession(EngineSession):
    """One sqlite3 connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def _maybe_begin(self, sql: str, autocommit: bool) -> None:
        needs_txn = not autocommit and not self._conn.in_transaction
        if needs_txn and first_keyword(sql) not in NO_TXN_KEYWORDS:
            self._conn.execute("BEGIN")

    def execute(self, sql: str, params: Params, autocommit: bool) -> Outcome:
        try:
            self._maybe_begin(sql, autocommit)
            cur = self._conn.execute(sql, params if params is not None else ())
            if cur.description is None:
                return Outcome(None, cur.rowcount, cur.lastrowid)
            first = cur.fetchmany(FIRST_BATCH)
            types = value_type_names(first, len(cur.description))
            columns = [[d[0], t] for d, t in zip(cur.description, types, strict=True)]
            return Outcome(columns, -1, None, _Prefetched(first, cur.fetchmany, _classify))
        except (sqlite3.Error, OverflowError, ValueError, TypeError) as exc:
            raise _classify(exc) from exc

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]], autocommit: bool) -> int:
        try:
            self._maybe_begin(sql, autocommit)
            if autocommit and not self._conn.in_transaction:
                # One transaction for the batch: all rows or none, and far faster than one each.
                self._conn.execute("BEGIN")
                try:
                    cur = self._conn.executemany(sql, seq)
                except BaseException:
                    self._conn.rollback()
                    raise
                self._conn.commit()
            else:
                cur = self._conn.executemany(sql, seq)
            return cur.rowcount
        except (sqlite3.Error, OverflowError, ValueError, TypeError) as exc:
            raise _classify(exc) from exc

    def execute_each(
        self, sql: str, seq: Sequence[Any], autocommit: bool
    ) -> Generator[Outcome | EngineError, None, None]:
        """As each statement alone would run, except that a run of SELECTs outside a
        transaction reads one snapshot (a read transaction around the run): in WAL mode,
        taking a snapshot costs more than a point SELECT itself. The answers are those of the
        statements run one after another with no commit in between, which they could be."""
        snapshot = autocommit and not self._conn.in_transaction and first_keyword(sql) == "SELECT"
        if not snapshot:
            yield from super().execute_each(sql, seq, autocommit)
            return
        try:
            self._conn.execute("BEGIN")
        except sqlite3.Error:
            yield from super().execute_each(sql, seq, autocommit)  # each reports the error
            return
        try:
            yield from super().execute_each(sql, seq, autocommit)
        finally:
            with contextlib.suppress(sqlite3.Error):
                if self._conn.in_transaction:
                    self._conn.rollback()  # it only read

    def transaction(self, op: str) -> None:
        try:
            if op == "begin":
                if not self._conn.in_transaction:
                    self._conn.execute("BEGIN")
            elif op == "commit":
                if self._conn.in_transaction:
                    self._conn.commit()
            elif op == "rollback":
                if self._conn.in_transaction:
                    self._conn.rollback()
            else:
                raise EngineError("ProgrammingError", f"unknown transaction operation {op!r}")
        except sqlite3.Error as exc:
            raise _classify(exc) from exc

    def interrupt(self) -> None:
        self._conn.interrupt()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self._conn.in_transaction:
                self._conn.rollback()
        self._conn.close()


class _Prefetched:
    """A fetch function that first hands out rows already read (to learn the column types)."""

    __slots__ = ("_classify", "_fetchmany", "_first")

    def __init__(self, first: list[Any], fetchmany: Any, classify: Any) -> None:
        self._first = first
        self._fetchmany = fetchmany
        self._classify = classify

    def __call__(self, n: int) -> list[Any]:
        try:
            if self._first:
                rows = self._first
                self._first = []
                if len(rows) < n:
                    rows.extend(self._fetchmany(n - len(rows)))
                return rows
            return self._fetchmany(n)  # type: ignore[no-any-return]
        except Exception as exc:
            raise self._classify(exc) from exc


def _classify(exc: BaseException) -> EngineError:
    """Map a driver exception onto the PEP 249 class exdb reports for it."""
    if isinstance(exc, sqlite3.Error):
        return EngineError(_sqlite_kind(exc), str(exc))
    return classify_python_error(exc)


# SQLite primary result codes (sqlite3.h) that decide the class.
_SQLITE_ERROR = 1
_SQLITE_INTERNAL = 2
_SQLITE_CONSTRAINT = 19
_SQLITE_MISMATCH = 20
_SQLITE_TOOBIG = 18
_SQLITE_RANGE = 25
_SQLITE_INTERRUPT = 9


def _sqlite_kind(exc: sqlite3.Error) -> str:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # raised by the sqlite3 module itself, e.g. a wrong number of bindings
        return type(exc).__name__ if type(exc).__name__ in PEP249_NAMES else "DatabaseError"
    primary = code & 0xFF
    if primary in (_SQLITE_ERROR, _SQLITE_RANGE):
        return "ProgrammingError"  # syntax errors, missing tables and columns, bad bindings
    if primary == _SQLITE_CONSTRAINT:
        return "IntegrityError"
    if primary in (_SQLITE_MISMATCH, _SQLITE_TOOBIG):
        return "DataError"
    if primary == _SQLITE_INTERNAL:
        return "InternalError"
    return "OperationalError"  # busy, locked, interrupted, I/O, full
