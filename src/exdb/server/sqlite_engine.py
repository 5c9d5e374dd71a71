"""The SQLite engine of a shard server, in a sandbox.

The server runs SQLite through apsw (SQLite's own C API, with the library it bundles) rather than
the standard library's sqlite3 module, which cannot switch on SQLite's defensive mode. A client
that logged in may run any SQL on the server's database, and nothing beyond it:

* an authorizer (SQLite calls it while it prepares a statement, not while it runs one) refuses
  ATTACH and VACUUM INTO outside the directories of ``exdb serve --allow-files`` (none by
  default), every PRAGMA not on an allowlist of per-session and read-only ones, functions that
  load native code or leak the server's memory addresses (``load_extension``,
  ``fts3_tokenizer``), and virtual-table modules not on an allowlist (fts3/4/5, rtree, ...);
* SQLite's defensive mode refuses the paths that corrupt a database (``writable_schema``, writes
  to the shadow tables of virtual tables, ``sqlite_dbpage`` writes), and with an untrusted schema
  functions in views and triggers must be innocuous;
* limits: no value (string, blob, row) larger than a frame may be built, so that
  ``zeroblob(2000000000)`` fails before anything is allocated; no attached database unless
  files are allowed.

Refusals are ProgrammingError (as PostgreSQL's "permission denied", class InsufficientPrivilege),
with a message that says what was refused and why. See docs/security.md.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import re
import tempfile
import uuid
import weakref
from collections.abc import Callable, Generator, Sequence
from typing import Any

import apsw

from exdb.server.engines import (
    FIRST_BATCH,
    NO_TXN_KEYWORDS,
    TXN_KEYWORDS,
    Engine,
    EngineError,
    EnginePolicy,
    EngineSession,
    Outcome,
    Params,
    classify_python_error,
    first_keyword,
)
from exdb.server.locks import ABORTED, TIMED_OUT, LockNotGranted, LockState, WriteLock
from exdb.types import value_type_names
from exdb.wire.codec import pack

__all__ = ["SqliteEngine", "SqliteSession"]


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


# --- the sandbox -------------------------------------------------------------------------------

#: Pragmas that only read the schema or the database's state; any argument (a table or index
#: name, a row count) is fine.
_PRAGMAS_INTROSPECT = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_info",
        "index_xinfo",
        "index_list",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
        "collation_list",
        "function_list",
        "module_list",
        "pragma_list",
        "compile_options",
        "data_version",
        "page_count",
        "freelist_count",
    }
)
#: Settings of this session's connection alone, or the database's own user data: read and set.
_PRAGMAS_SESSION = frozenset(
    {
        "foreign_keys",
        "defer_foreign_keys",
        "recursive_triggers",
        "reverse_unordered_selects",
        "case_sensitive_like",
        "automatic_index",
        "query_only",
        "busy_timeout",
        "cell_size_check",
        "analysis_limit",
        "cache_spill",
        "optimize",
        "user_version",
        "application_id",
    }
)
#: Parameter sets from which a bulk INSERT runs without a Python call a row (_insert_many).
_UNTRACED_MIN = 64

#: Settings that may be read but not set: setting them changes the database for every session
#: (journal_mode, page_size, auto_vacuum, encoding, schema_version), weakens the durability of
#: commits others rely on (synchronous), changes the whole process (soft/hard_heap_limit,
#: threads), or disarms the sandbox (trusted_schema, writable_schema, legacy_alter_table,
#: ignore_check_constraints). cache_size may also be set within the server's own bound.
_PRAGMAS_READ_ONLY = frozenset(
    {
        "journal_mode",
        "synchronous",
        "page_size",
        "auto_vacuum",
        "encoding",
        "schema_version",
        "max_page_count",
        "locking_mode",
        "temp_store",
        "mmap_size",
        "journal_size_limit",
        "wal_autocheckpoint",
        "secure_delete",
        "soft_heap_limit",
        "hard_heap_limit",
        "threads",
        "trusted_schema",
        "writable_schema",
        "legacy_alter_table",
        "ignore_check_constraints",
        "cache_size",
    }
)
#: The page cache a session may ask for, at most (the server gives each 64 MiB).
_MAX_CACHE_KIB = 65536

#: Virtual-table modules CREATE VIRTUAL TABLE may use: they keep their data in the database.
_VTAB_MODULES = frozenset(
    {"fts3", "fts4", "fts4aux", "fts5", "fts5vocab", "rtree", "rtree_i32", "geopoly"}
)
#: Functions no client may call: native code, the server's memory addresses, its log, debugging
#: helpers that parse raw r-tree nodes; the file functions exist only where SQLite's shell
#: extensions are registered (refused should one ever be).
_FUNCTIONS_REFUSED = {
    "load_extension": "it loads native code into the server",
    "fts3_tokenizer": "it can crash the server and leak its memory addresses",
    "sqlite_log": "it writes to the server's log",
    "rtreenode": "a debugging function that parses raw r-tree nodes",
    "rtreedepth": "a debugging function that parses raw r-tree nodes",
    "readfile": "it reads files of the server",
    "writefile": "it writes files of the server",
    "edit": "it runs programs on the server",
}
#: Authorizer action codes the sandbox looks at; every other one is allowed at once.
_GATED = frozenset(
    {
        apsw.SQLITE_ATTACH,
        apsw.SQLITE_PRAGMA,
        apsw.SQLITE_FUNCTION,
        apsw.SQLITE_CREATE_VTABLE,
    }
)
_OPT_IN = "exdb serve --allow-files DIR opts in"


class _Guard:
    """One session's authorizer: decides, while SQLite prepares a statement, whether each
    action it needs is allowed; remembers why it refused one, for the error message."""

    __slots__ = ("dirs", "max_cache_pages", "reason", "vacuum")

    def __init__(self, dirs: tuple[str, ...], max_cache_pages: int) -> None:
        self.dirs = dirs  # real paths, resolved when the engine opened
        self.max_cache_pages = max_cache_pages
        self.reason: str | None = None
        self.vacuum = False  # a VACUUM statement runs now (it attaches a temp database)

    def __call__(
        self, op: int, p1: str | None, p2: str | None, db: str | None, trigger: str | None
    ) -> int:
        if op not in _GATED:
            return apsw.SQLITE_OK
        if op == apsw.SQLITE_PRAGMA:
            reason = self._pragma((p1 or "").lower(), p2)
        elif op == apsw.SQLITE_FUNCTION:
            why = _FUNCTIONS_REFUSED.get((p2 or "").lower())
            reason = None if why is None else f"not allowed: function {p2}(): {why}"
        elif op == apsw.SQLITE_ATTACH:
            reason = self._attach(p1)
        else:  # SQLITE_CREATE_VTABLE
            module = (p2 or "").lower()
            reason = (
                None
                if module in _VTAB_MODULES
                else f"not allowed: virtual table module {p2!r}; exdb serve allows "
                + ", ".join(sorted(_VTAB_MODULES))
            )
        if reason is None:
            return apsw.SQLITE_OK
        self.reason = reason
        return apsw.SQLITE_DENY

    def _pragma(self, name: str, arg: str | None) -> str | None:
        if name in _PRAGMAS_INTROSPECT or name in _PRAGMAS_SESSION:
            return None
        if name in _PRAGMAS_READ_ONLY:
            if arg is None:
                return None
            if name == "cache_size" and self._cache_size_ok(arg):
                return None
            return (
                f"not allowed: PRAGMA {name} may be read but not set here; setting it would"
                " change the database or the server for every session"
                + (f" (cache_size: at most {_MAX_CACHE_KIB} KiB)" if name == "cache_size" else "")
            )
        return (
            f"not allowed: PRAGMA {name} is not one of the per-session or read-only pragmas"
            " exdb serve lets a client run (see docs/security.md)"
        )

    def _cache_size_ok(self, arg: str) -> bool:
        try:
            n = int(arg.strip())
        except ValueError:
            return False
        return -n <= _MAX_CACHE_KIB if n < 0 else n <= self.max_cache_pages

    def _attach(self, name: str | None) -> str | None:
        what = "VACUUM INTO writes" if self.vacuum else "ATTACH reaches"
        if self.vacuum and name == "":
            return None  # VACUUM rebuilds the database through a temporary one of its own
        if not self.dirs:
            return f"not allowed: {what} files outside the database; {_OPT_IN}"
        if name is None:
            return "not allowed: ATTACH needs its file name as a string literal, to check it"
        if name in ("", ":memory:"):
            return None  # a temporary or in-memory database reaches no file of the server
        if name[:5].lower() == "file:":
            return f"not allowed: URI file names ({name!r}); give a path"
        real = os.path.realpath(name)
        for d in self.dirs:
            if real != d and os.path.commonpath((real, d)) == d:
                return None
        return (
            f"not allowed: {what} {name!r}, outside the directories of exdb serve --allow-files"
            f" ({', '.join(self.dirs)}), once links and '..' are resolved"
        )


class _MoreThanOneStatement(Exception):
    """The SQL text holds a second statement; nothing of it ran."""


_ONE_STATEMENT = "You can only execute one statement at a time."
_DML = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})
#: Statements that never have a result set (DML without RETURNING has none either).
_NO_RESULT_SET = frozenset(
    {"CREATE", "DROP", "ALTER", "ATTACH", "DETACH", "VACUUM", "REINDEX", "ANALYZE"} | TXN_KEYWORDS
)
_RETURNING = re.compile("returning", re.IGNORECASE)
_KEYWORD = re.compile(r"[\s;(]*([A-Za-z_]\w*)")
# Whitespace and comments to the end (possessive: no backtracking on hostile text).
_BLANK = re.compile(r"(?:\s|--[^\n]*+(?:\n|\Z)|/\*(?:[^*]|\*(?!/))*+(?:\*/|\Z))*+\Z")
_BOOL_TYPES = frozenset({"BOOLEAN", "BOOL"})


def _keyword(sql: str) -> str:
    """The statement's first keyword, upper-cased: a regular expression for the usual case, the
    engines' comment-aware scan when the text starts with a comment."""
    m = _KEYWORD.match(sql)
    if m is not None and not sql.startswith(("-", "/"), m.end(1)):
        return m.group(1).upper()
    return first_keyword(sql)


def _is_bool_type(declared: str | None) -> bool:
    """Whether a column's declared type names a boolean (its first word, as sqlite3's
    PARSE_DECLTYPES reads it: ``BOOLEAN``, ``bool(1)``, ...)."""
    if not declared:
        return False
    return declared.split("(", 1)[0].split(" ", 1)[0].upper() in _BOOL_TYPES


def _to_bool(value: Any) -> Any:
    """SQLite has no boolean type; a value of a BOOLEAN column as a Python bool (NULL stays)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value not in ("0", "0.0", "")
    if isinstance(value, bytes):
        return value not in (b"0", b"0.0", b"")
    return value


def _bool_row_trace(description: Sequence[tuple[str, str | None]]) -> Callable[[Any, Any], Any]:
    """A row tracer that turns the values of BOOLEAN columns into bools."""
    indexes = [i for i, (_, declared) in enumerate(description) if _is_bool_type(declared)]

    def convert(_cursor: Any, row: Any) -> Any:
        values = list(row)
        for i in indexes:
            values[i] = _to_bool(values[i])
        return tuple(values)

    return convert


class SqliteEngine(Engine):
    """SQLite in WAL mode: readers never block the writer and see only committed data.

    With no file, the database lives in RAM (a tmpfs file when /dev/shm exists) and is deleted when
    the server stops; it is not durable, but it has the same isolation as a durable one. With a
    file, commits are synchronous (``synchronous=FULL``) and survive ``kill -9`` and power loss.
    Each session's connection runs in the sandbox of the engine's :class:`EnginePolicy`.
    """

    name = "sqlite"

    def __init__(
        self,
        path: str | None = None,
        policy: EnginePolicy | None = None,
        busy_timeout: float = 10.0,
    ) -> None:
        self.policy = policy or EnginePolicy()
        for d in self.policy.file_dirs:
            if not os.path.isdir(d):
                raise ValueError(f"--allow-files {d}: not a directory")
        self.file_dirs = tuple(os.path.realpath(d) for d in self.policy.file_dirs)
        self.durable = path is not None
        if path is None:
            directory = _shm_dir()
            _sweep_stale_memory_files(directory)
            path = os.path.join(directory, f"exdb-mem-{os.getpid()}-{uuid.uuid4().hex}.db")
        self.path = path
        self.busy_timeout = busy_timeout
        #: Writers queue for it in turn (exdb.server.locks.WriteLock).
        self.write_lock = WriteLock()
        conn = apsw.Connection(self.path)
        try:
            conn.set_busy_timeout(int(busy_timeout * 1000))
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            page_size = conn.execute("PRAGMA page_size").fetchall()[0][0]
        finally:
            conn.close()
        assert isinstance(page_size, int)
        self.max_cache_pages = _MAX_CACHE_KIB * 1024 // page_size

    def _connect(self) -> apsw.Connection:
        conn = apsw.Connection(self.path, statementcachesize=256)
        # Its first statements read the schema: under a writer's commit or a checkpoint they
        # wait (the session's own lock wait replaces this below), not fail "database is locked".
        conn.set_busy_timeout(int(min(self.busy_timeout, 60.0) * 1000))
        # The server's own settings, before the authorizer that refuses them to clients.
        sync = "FULL" if self.durable else "OFF"
        conn.execute(f"PRAGMA synchronous={sync}", can_cache=False)
        # A page cache of up to 64 MiB per session (the default is 2 MiB): scans of tables that
        # fit are served from it rather than read through the file system again.
        conn.execute(f"PRAGMA cache_size=-{_MAX_CACHE_KIB}", can_cache=False)
        conn.create_aggregate_function(
            "exdb_collect",
            _Collect,
            1,
            flags=apsw.SQLITE_DETERMINISTIC | apsw.SQLITE_INNOCUOUS,
        )
        self._sandbox(conn)
        return conn

    def _sandbox(self, conn: apsw.Connection) -> _Guard:
        files = bool(self.file_dirs)
        for op, value in (
            (apsw.SQLITE_DBCONFIG_DEFENSIVE, 1),
            (apsw.SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0),
            (apsw.SQLITE_DBCONFIG_WRITABLE_SCHEMA, 0),
            (apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0),
            (apsw.SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER, 0),
            (apsw.SQLITE_DBCONFIG_ENABLE_ATTACH_CREATE, int(files)),
            (apsw.SQLITE_DBCONFIG_ENABLE_ATTACH_WRITE, int(files)),
        ):
            conn.config(op, value)
        if not files:
            conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)
        conn.limit(apsw.SQLITE_LIMIT_WORKER_THREADS, 0)
        largest = self.policy.max_value_bytes
        if largest is not None:
            conn.limit(apsw.SQLITE_LIMIT_LENGTH, largest)
            conn.limit(apsw.SQLITE_LIMIT_SQL_LENGTH, largest)
        guard = _Guard(self.file_dirs, self.max_cache_pages)
        conn.authorizer = guard
        return guard

    def open_session(self) -> EngineSession:
        try:
            conn = self._connect()
        except apsw.Error as exc:
            raise _classify(exc, None, None) from exc
        assert isinstance(conn.authorizer, _Guard)
        session = SqliteSession(conn, conn.authorizer, bool(self.file_dirs), self.policy)
        # A lock wait of up to the session's lock_timeout (the server's --lock-timeout unless
        # the session sets its own), which an interrupt or a deadlock's abort ends.
        session.locks.timeout = self.busy_timeout
        session.write_lock = self.write_lock
        conn.set_busy_handler(_LockWait(weakref.ref(conn), session.locks))
        return session

    def close(self) -> None:
        with contextlib.suppress(apsw.Error):
            conn = apsw.Connection(self.path)
            try:
                conn.set_busy_timeout(int(self.busy_timeout * 1000))
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                conn.close()
        if not self.durable:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path + suffix)


class _LockWait:
    """SQLite's busy handler: wait for a lock up to the session's ``lock_timeout``, sleeping in
    growing steps as SQLite's own busy timeout does, but give up at once when the connection is
    interrupted (SQLite's own wait does not look), so that a cancel or a statement timeout ends
    a statement stuck behind another session's write lock, or when a deadlock detector chose
    this session's transaction as its victim. The wait is published in the session's
    :class:`~exdb.server.locks.LockState` for the detector."""

    _STEPS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.025, 0.025, 0.05, 0.05, 0.1)

    def __init__(self, conn: weakref.ref[apsw.Connection], state: LockState) -> None:
        self._conn = conn
        self._state = state

    def __call__(self, prior_calls: int) -> bool:
        state = self._state
        if prior_calls == 0:
            state.begin_wait()
        conn = self._conn()
        if conn is None or conn.is_interrupted:
            return False
        return state.pause(self._STEPS[min(prior_calls, len(self._STEPS) - 1)])


class _Collect:
    """``exdb_collect(DISTINCT x)``: a group's distinct non-NULL values, packed as one msgpack
    list (exact: integers, doubles, text and blobs keep their type). The distributed engine's
    COUNT(DISTINCT x) partial; SQLite applies DISTINCT, with its own equality, before ``step``."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def step(self, *values: Any) -> None:  # registered with one argument
        if values[0] is not None:
            self.values.append(values[0])

    def final(self) -> bytes:
        return pack(self.values)


class SqliteSession(EngineSession):
    """One apsw connection, in the sandbox."""

    def __init__(
        self, conn: apsw.Connection, guard: _Guard, files: bool, policy: EnginePolicy
    ) -> None:
        self._conn = conn
        self._guard = guard
        self._files = files
        self._largest = policy.max_value_bytes
        # The statement being run: its text, and what the exec tracer saw of it.
        self._sql = ""
        self._runs = 0
        self._description: Any = ()
        self._changes = 0
        self._shapes: dict[str, tuple[str, bool]] = {}
        self._bool_converters: dict[Any, Callable[[Any, Any], Any]] = {}
        self.locks = LockState(10.0)
        self.write_lock = WriteLock()  # the engine's, set by open_session

    @property
    def in_transaction(self) -> bool:
        return bool(self._conn.in_transaction)

    def _maybe_begin(self, keyword: str, autocommit: bool) -> None:
        if not autocommit and not self._conn.in_transaction and keyword not in NO_TXN_KEYWORDS:
            self._conn.execute("BEGIN")

    def _trace(self, cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        """apsw's exec tracer: called before each statement of the text runs. The first one
        refuses a text of more than one statement (before anything ran) and keeps the result's
        columns (apsw forgets them once a statement is done); later ones (executemany) add up
        the rows the previous run changed."""
        runs = self._runs
        self._runs = runs + 1
        if runs:
            self._changes += self._conn.changes()
            return True
        full = self._sql
        if len(sql) < len(full) and _BLANK.match(full, len(sql)) is None:
            raise _MoreThanOneStatement
        self._description = cursor.get_description()
        return True

    def _start(self, sql: str) -> apsw.Cursor:
        """A cursor for one statement of a client, traced."""
        self._guard.reason = None
        self._sql = sql
        self._runs = 0
        self._changes = 0
        self._description = ()
        cur = self._conn.cursor()
        cur.exec_trace = self._trace
        return cur

    def _keyword(self, sql: str) -> str:
        """The statement's first keyword."""
        return self._shape(sql)[0]

    def _shape(self, sql: str) -> tuple[str, bool]:
        """The statement's first keyword, and whether it surely has no result set; remembered
        for the texts seen last."""
        shape = self._shapes.get(sql)
        if shape is None:
            keyword = _keyword(sql)
            no_result_set = keyword in _NO_RESULT_SET or (
                keyword in _DML and _RETURNING.search(sql) is None
            )
            shape = (keyword, no_result_set)
            if len(sql) <= 4096:  # short texts only: the cache stays small
                if len(self._shapes) >= 512:
                    self._shapes.clear()
                self._shapes[sql] = shape
        return shape

    def execute(self, sql: str, params: Params, autocommit: bool) -> Outcome:
        try:
            keyword, no_result_set = self._shape(sql)
            if keyword in _WRITES and not self.locks.holds:
                self._take_write_lock(not autocommit)
            if not autocommit and keyword not in NO_TXN_KEYWORDS and not self._conn.in_transaction:
                # A transaction that starts with a write takes the write lock at once, waiting
                # its turn: it never reads a snapshot that a later write cannot build on.
                self._conn.execute("BEGIN IMMEDIATE" if keyword in _WRITES else "BEGIN")
            self._guard.reason = None
            cur = self._conn.cursor()
            # Only a text with a ';' can hold a second statement: only then is it traced (the
            # tracer refuses the second one before the first runs, and keeps the columns).
            traced = ";" in sql
            if traced:
                self._sql = sql
                self._runs = 0
                self._description = ()
                cur.exec_trace = self._trace
            if keyword == "VACUUM":
                self._vacuum(cur, sql, params)
            else:
                cur.execute(sql, params)
            if traced:
                description = self._description
            elif no_result_set:
                description = ()
            else:
                try:
                    description = cur.get_description()
                except apsw.ExecutionCompleteError:  # done already: no row, or no result set
                    description = self._describe(sql, params)
            if not description:
                rowcount = self._conn.changes() if keyword in _DML else -1
                return Outcome(None, rowcount, self._conn.last_insert_rowid())
            for _, declared in description:
                if declared and declared[0] in "bB" and _is_bool_type(declared):
                    cur.row_trace = self._bool_converter(description)
                    break
            first = list(itertools.islice(cur, FIRST_BATCH))
            # A column's declared type where it has one (so even an empty result has types),
            # else the type its first non-NULL value reads as (an expression's column).
            types = value_type_names(first, len(description))
            columns = [[d[0], d[1] or t] for d, t in zip(description, types, strict=True)]
            return Outcome(columns, -1, None, _Prefetched(first, cur, self._classify))
        except Exception as exc:
            raise self._classify(exc) from exc
        finally:
            self._after_statement()

    def _take_write_lock(self, in_transaction: bool) -> None:
        """Wait in turn for the node's write lock (kept until the transaction ends); inside a
        transaction, wait-die may refuse the wait at once (exdb.server.locks.WriteLock). A
        session whose transaction holds SQLite's own write lock already (through DDL or BEGIN
        IMMEDIATE, which do not queue) does not queue: the writers ahead of it wait for it."""
        locks = self.locks
        if self._conn.txn_state("main") == apsw.SQLITE_TXN_WRITE:
            return
        try:
            interrupted = lambda: bool(self._conn.is_interrupted)  # noqa: E731
            self.write_lock.acquire(locks, interrupted, prevent=in_transaction)
        except LockNotGranted:
            if locks.ended == TIMED_OUT:
                raise EngineError("LockTimeout", self._timeout_message()) from None
            if locks.ended == ABORTED:
                raise EngineError("DeadlockDetected", locks.aborted) from None
            raise EngineError("OperationalError", "interrupted while waiting for a lock") from None

    def _timeout_message(self) -> str:
        locks = self.locks
        return (
            f"lock timeout: waited {locks.waited * 1000:.0f} ms for the write lock"
            f" (lock_timeout {locks.timeout * 1000:.0f} ms); the statement did not run"
        )

    def _after_statement(self) -> None:
        """The statement's wait is over; a transaction that ended gives the write lock up."""
        locks = self.locks
        if locks.wait_id:
            locks.end_wait()
        locks.ended = None
        if locks.holds and not self._conn.in_transaction:
            self.write_lock.release(locks)

    def _describe(self, sql: str, params: Params) -> Any:
        """The result columns of a statement that already ran to its end (apsw no longer says
        them): the statement is prepared and bound again, and stopped by the exec tracer before
        it runs."""
        cur = self._conn.cursor()
        self._sql = sql
        self._runs = 0
        self._description = ()
        cur.exec_trace = self._trace_only
        with contextlib.suppress(apsw.ExecTraceAbort):
            cur.execute(sql, params)
        return self._description

    def _trace_only(self, cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        """An exec tracer that keeps the columns and stops the statement before it runs."""
        self._description = cursor.get_description()
        return False

    def _bool_converter(self, description: Any) -> Callable[[Any, Any], Any]:
        converter = self._bool_converters.get(description)
        if converter is None:
            if len(self._bool_converters) >= 256:
                self._bool_converters.clear()
            converter = self._bool_converters[description] = _bool_row_trace(description)
        return converter

    def _vacuum(self, cur: apsw.Cursor, sql: str, params: Params) -> None:
        """VACUUM attaches a temporary database of its own (VACUUM INTO: its target file): let
        it, for this statement only, where no ATTACH is allowed."""
        if not self._files:
            self._conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 1)
        self._guard.vacuum = True
        try:
            cur.execute(sql, params)
        finally:
            self._guard.vacuum = False
            if not self._files:
                self._conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]], autocommit: bool) -> int:
        try:
            keyword = self._keyword(sql)
            if keyword not in _DML:
                raise EngineError(
                    "ProgrammingError", "executemany() can only execute DML statements."
                )
            if not self.locks.holds:
                self._take_write_lock(not autocommit)
            self._maybe_begin(keyword, autocommit)
            if autocommit and not self._conn.in_transaction:
                # One transaction for the batch: all rows or none, and far faster than one each.
                self._conn.execute("BEGIN")
                try:
                    count = self._run_many(sql, seq)
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
                return count
            return self._run_many(sql, seq)
        except EngineError:
            raise
        except Exception as exc:
            raise self._classify(exc) from exc
        finally:
            self._after_statement()

    def _run_many(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        if (
            len(seq) >= _UNTRACED_MIN
            and self._keyword(sql) == "INSERT"
            and self._no_trigger_programs()
        ):
            return self._insert_many(sql, seq)
        cur = self._start(sql)
        cur.executemany(sql, seq)
        collections.deque(cur, maxlen=0)  # rows of RETURNING, if any: run every set to its end
        if not self._runs:
            return 0
        return self._changes + self._conn.changes()

    def _insert_many(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        """A bulk INSERT with the exec tracer on its first run only (a Python call a row costs
        as much as a third of the insert): the rows it changed are the growth of
        ``total_changes()``, which equals the sum of each run's ``changes()`` where no trigger
        program (a trigger, a foreign key action) can run: see :meth:`_no_trigger_programs`."""
        cur = self._start(sql)
        cur.exec_trace = self._trace_once
        before = self._conn.total_changes()
        cur.executemany(sql, seq)
        collections.deque(cur, maxlen=0)  # rows of RETURNING, if any: run every set to its end
        if not self._runs:
            return 0
        return int(self._conn.total_changes() - before)

    def _trace_once(self, cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        """The exec tracer's first-run checks, after which it takes itself off the cursor."""
        cursor.exec_trace = None
        return self._trace(cursor, sql, bindings)

    def _no_trigger_programs(self) -> bool:
        """Whether no statement can run a trigger program or a nested statement: no trigger
        and no virtual table (FTS5 writes its shadow tables by statements of its own) in any
        attached schema, and foreign keys off (their actions are trigger programs): what those
        change counts in total_changes() and not in changes()."""
        conn = self._conn
        if conn.execute("PRAGMA foreign_keys").fetchall() != [(0,)]:
            return False
        for name in conn.db_names():
            schema = '"' + str(name).replace('"', '""') + '"'
            found = conn.execute(
                f"SELECT 1 FROM {schema}.sqlite_schema WHERE type = 'trigger'"
                " OR sql LIKE 'CREATE VIRTUAL%' LIMIT 1"
            ).fetchall()
            if found:
                return False
        return True

    def execute_each(
        self, sql: str, seq: Sequence[Any], autocommit: bool
    ) -> Generator[Outcome | EngineError, None, None]:
        """As each statement alone would run, except that a run of SELECTs outside a
        transaction reads one snapshot (a read transaction around the run): in WAL mode,
        taking a snapshot costs more than a point SELECT itself. The answers are those of the
        statements run one after another with no commit in between, which they could be."""
        snapshot = autocommit and not self._conn.in_transaction and self._keyword(sql) == "SELECT"
        if not snapshot:
            yield from super().execute_each(sql, seq, autocommit)
            return
        try:
            self._conn.execute("BEGIN")
        except apsw.Error:
            yield from super().execute_each(sql, seq, autocommit)  # each reports the error
            return
        try:
            yield from super().execute_each(sql, seq, autocommit)
        finally:
            with contextlib.suppress(apsw.Error):
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")  # it only read

    def transaction(self, op: str) -> None:
        self._guard.reason = None
        try:
            if op == "begin":
                if not self._conn.in_transaction:
                    self._conn.execute("BEGIN")
            elif op == "commit":
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")
            elif op == "rollback":
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            else:
                raise EngineError("ProgrammingError", f"unknown transaction operation {op!r}")
        except apsw.Error as exc:
            raise self._classify(exc) from exc
        finally:
            self._after_statement()
            if not self._conn.in_transaction:  # the transaction is over: so is its gid
                self.locks.gid = None
                self.locks.elsewhere = False

    def interrupt(self) -> None:
        with contextlib.suppress(apsw.ConnectionClosedError):
            self._conn.interrupt()

    def close(self) -> None:
        with contextlib.suppress(apsw.Error):
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        self.write_lock.release(self.locks)
        self._conn.close()

    def _classify(self, exc: BaseException) -> EngineError:
        if isinstance(exc, apsw.BusyError):
            return self._lock_error(exc)
        return _classify(exc, self._guard.reason, self._largest)

    def _lock_error(self, exc: apsw.BusyError) -> EngineError:
        """What a SQLITE_BUSY means: the wait for the write lock timed out or was ended as a
        deadlock's victim; or a transaction that read first could not write, because another
        wrote since its snapshot or holds the lock now (SQLite does not wait then: it would
        deadlock), a serialization failure; else (an interrupted wait) as it is."""
        locks = self.locks
        if locks.ended == TIMED_OUT:
            return EngineError("LockTimeout", self._timeout_message())
        if locks.ended == ABORTED:
            return EngineError("DeadlockDetected", locks.aborted)
        code = getattr(exc, "extendedresult", None)
        if not locks.wait_id and (code == _SQLITE_BUSY_SNAPSHOT or self._conn.in_transaction):
            return EngineError(
                "TransactionConflict",
                "serialization failure: this transaction read a snapshot, and another"
                " transaction has written (or is writing) since, so it cannot write here;"
                " roll back and retry the transaction (start it with the write to have it wait"
                " its turn instead)",
            )
        return _classify(exc, self._guard.reason, self._largest)


class _Prefetched:
    """A fetch function that first hands out rows already read (to learn the column types)."""

    __slots__ = ("_classify", "_cursor", "_first")

    def __init__(
        self, first: list[Any], cursor: apsw.Cursor, classify: Callable[[BaseException], Any]
    ) -> None:
        self._first = first
        self._cursor = cursor
        self._classify = classify

    def __call__(self, n: int) -> list[Any]:
        try:
            if self._first:
                rows = self._first
                self._first = []
                if len(rows) < n:
                    rows.extend(itertools.islice(self._cursor, n - len(rows)))
                return rows
            return list(itertools.islice(self._cursor, n))
        except Exception as exc:
            raise self._classify(exc) from exc


def _classify(exc: BaseException, refused: str | None, largest: int | None) -> EngineError:
    """Map a driver exception onto the PEP 249 class exdb reports for it. ``refused``: why the
    sandbox refused an action of the statement, if it did; ``largest``: the value size limit."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, _MoreThanOneStatement):
        return EngineError("ProgrammingError", _ONE_STATEMENT)
    if refused is not None and isinstance(exc, apsw.Error):
        return EngineError("ProgrammingError", refused)  # whatever error the refusal became
    if isinstance(exc, apsw.Error):
        code = getattr(exc, "result", None)
        message = str(exc)
        if code is not None and code & 0xFF == _SQLITE_TOOBIG and largest is not None:
            message = (
                f"{message}: a value may hold at most {largest} bytes, the server's maximum"
                " frame size (exdb serve --max-frame)"
            )
        return EngineError(_sqlite_kind(exc), message)
    if isinstance(exc, KeyError):  # a named parameter with no value
        return EngineError(
            "ProgrammingError", f"You did not supply a value for binding parameter :{exc.args[0]}."
        )
    return classify_python_error(exc)


# SQLite primary result codes (sqlite3.h) that decide the class.
_SQLITE_ERROR = 1
_SQLITE_INTERNAL = 2
_SQLITE_CONSTRAINT = 19
_SQLITE_MISMATCH = 20
_SQLITE_TOOBIG = 18
_SQLITE_RANGE = 25
_SQLITE_AUTH = 23
_SQLITE_INTERRUPT = 9
_SQLITE_BUSY_SNAPSHOT = 517
#: Statements that write rows: they queue for the write lock (exdb.server.locks.WriteLock),
#: and a transaction that starts with one begins IMMEDIATE. (DDL, such as CREATE TABLE IF NOT
#: EXISTS, may write nothing: it waits in SQLite's busy handler, as before.)
_WRITES = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})


def _sqlite_kind(exc: apsw.Error) -> str:
    code = getattr(exc, "result", None)
    if code is None or code < 0:  # raised by apsw itself, e.g. a wrong number of bindings
        return "ProgrammingError" if isinstance(exc, apsw.BindingsError) else "InterfaceError"
    primary = code & 0xFF
    if primary in (_SQLITE_ERROR, _SQLITE_RANGE, _SQLITE_AUTH):
        return "ProgrammingError"  # syntax errors, missing tables and columns, bad bindings
    if primary == _SQLITE_CONSTRAINT:
        return "IntegrityError"
    if primary in (_SQLITE_MISMATCH, _SQLITE_TOOBIG):
        return "DataError"
    if primary == _SQLITE_INTERNAL:
        return "InternalError"
    return "OperationalError"  # busy, locked, interrupted, I/O, full
