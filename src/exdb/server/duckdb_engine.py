"""The DuckDB engine of a shard server."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import uuid
import warnings
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

from exdb.server.engines import (
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
from exdb.server.locks import LockState
from exdb.types import array_type

__all__ = ["DuckdbEngine", "DuckdbSession"]


# --- DuckDB ------------------------------------------------------------------------------------


class DuckdbEngine(Engine):
    """DuckDB: MVCC transactions, one cursor (its own connection) per session.

    The database is sandboxed (docs/security.md): SQL reaches no file, URL or extension beyond
    the database's own files, except in the operator's ``--allow-files`` directories; settings
    (memory, threads ...) are the operator's, locked, since DuckDB applies them to every
    session; a client's SQL never scans a Python object of the server process."""

    name = "duckdb"

    def __init__(self, path: str | None = None, policy: EnginePolicy | None = None) -> None:
        self.policy = policy or EnginePolicy()
        try:
            import duckdb
        except ImportError as exc:  # an optional extra
            raise RuntimeError(
                "the duckdb engine needs the duckdb package: pip install 'exdb[duckdb]'"
            ) from exc
        self._duckdb = duckdb
        self.durable = path is not None
        self.path = path  # the database file (None: in memory); see server/prepared.py
        self.file_dirs = _file_dirs(self.policy.file_dirs)
        config: dict[str, Any] = {
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "allow_unsigned_extensions": False,
            # A client's SQL naming a Python variable of this process must not scan it; the
            # engine's own bulk INSERTs scan what they register() by name, which still works.
            "python_enable_replacements": False,
            "python_scan_all_frames": False,
        }
        if self.policy.memory_limit is not None:
            config["memory_limit"] = self.policy.memory_limit
        if self.policy.threads is not None:
            config["threads"] = self.policy.threads
        try:
            self._db = duckdb.connect(path or ":memory:", config=config)
        except duckdb.Error as exc:  # e.g. --memory-limit 12XB, --threads 0
            raise ValueError(f"cannot open the duckdb engine: {exc}") from exc
        try:
            # DuckDB takes allowed_directories only once the database runs, and only while
            # external access is on; then external access goes off and every setting is locked.
            if self.file_dirs:
                dirs = ", ".join(_sql_string(d) for d in self.file_dirs)
                self._db.execute(f"SET allowed_directories = [{dirs}]")
            self._db.execute("SET enable_external_access = false")
            self._db.execute("SET lock_configuration = true")
        except BaseException:
            self._db.close()
            raise
        self._lock = threading.Lock()
        #: Built-in function names (lower case): no macro of a client may take one of them.
        self._builtins = frozenset(
            name.lower()
            for (name,) in self._db.execute(
                "SELECT DISTINCT function_name FROM duckdb_functions() WHERE internal"
            ).fetchall()
        )

    def open_session(self) -> EngineSession:
        with self._lock:  # cursor() on the shared database object from many threads
            return DuckdbSession(
                self._db.cursor(), self._duckdb, bool(self.file_dirs), self._builtins
            )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._db.execute("CHECKPOINT")
        self._db.close()


#: A CREATE statement that may define a macro (a cheap look before DuckDB's tokenizer).
_ROUTINE = re.compile(r"\b(?:MACRO|FUNCTION)\b", re.IGNORECASE)


def _routine_name(sql: str, duckdb: Any) -> str | None:
    """The name a ``CREATE [OR REPLACE] [TEMP] MACRO|FUNCTION [IF NOT EXISTS] [a.[b.]]name``
    statement defines (quotes removed), by DuckDB's own tokenizer; None for other statements."""
    tokens = duckdb.tokenize(sql)
    ends = [offset for offset, _ in tokens[1:]] + [len(sql)]
    comment = duckdb.token_type.comment
    texts = [
        sql[offset:end].strip()
        for (offset, kind), end in zip(tokens, ends, strict=True)
        if kind != comment
    ]
    words = [t.lower() for t in texts]
    j = 1
    while j < len(words) and words[j] in ("or", "replace", "temp", "temporary"):
        j += 1
    if words[:1] != ["create"] or j >= len(words) or words[j] not in ("macro", "function"):
        return None
    j += 1
    if words[j : j + 3] == ["if", "not", "exists"]:
        j += 3
    name = None
    while j < len(texts) and texts[j] not in ("(", "AS", "as"):
        if texts[j] != ".":
            name = texts[j]
        j += 1
    if name is None:
        return None
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('""', '"')
    return name


def _file_dirs(dirs: Sequence[str]) -> tuple[str, ...]:
    """The ``--allow-files`` directories as DuckDB prefixes: absolute, resolved, ending in a
    separator (so that DIR does not also allow DIR-other); a missing one is refused."""
    prefixes = []
    for directory in dirs:
        real = os.path.realpath(directory)
        if not os.path.isdir(real):
            raise ValueError(f"--allow-files {directory}: not a directory")
        prefixes.append(real.rstrip(os.sep) + os.sep)
    return tuple(prefixes)


def _sql_string(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


#: Statements that reach files (COPY ... TO/FROM, EXPORT DATABASE, ATTACH): only with
#: ``--allow-files``, and then only in its directories (DuckDB's allowed_directories).
_FILE_STATEMENTS = {"COPY": "COPY", "EXPORT": "EXPORT DATABASE", "ATTACH": "ATTACH"}
#: Statements never allowed: INSTALL and LOAD (StatementType.LOAD), other extension statements.
_EXTENSION_STATEMENTS = {"LOAD", "EXTENSION"}
#: Statements that change rows: their result is one "Count" row, read as the rowcount.
_DML_KINDS = frozenset({"INSERT", "UPDATE", "DELETE"})
#: Statements with no result set: DuckDB's one-row status answer to them is not passed on.
_NO_RESULT_KINDS = frozenset(
    {"CREATE", "DROP", "ALTER", "TRANSACTION", "VACUUM", "SET", "VARIABLE_SET", "PREPARE",
     "ATTACH", "DETACH", "CREATE_FUNC", "ANALYZE"}
)  # fmt: skip
#: What a DML statement's text holds apart from its keywords: string literals, quoted names,
#: dollar-quoted strings and comments (a RETURNING inside one is not the clause).
_NOT_KEYWORDS = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$(\w*)\$.*?\$\1\$|--[^\n]*|/\*.*?\*/", re.DOTALL
)
_RETURNING = re.compile(r"\bRETURNING\b", re.IGNORECASE)


def _returns_rows(sql: str) -> bool:
    """Whether an INSERT, UPDATE or DELETE has a RETURNING clause: its result is then the
    returned rows, not DuckDB's one-row count."""
    return _RETURNING.search(_NOT_KEYWORDS.sub(" ", sql)) is not None


_ALLOW_FILES_HINT = "`exdb serve --allow-files DIR` lets SQL read and write files in DIR"
_LOCKED_SETTING = re.compile(r'Cannot change configuration option "([^"]+)"')
#: Set operations (UNION, INTERSECT, EXCEPT) one statement may hold: SQLite's own bound
#: (SQLITE_MAX_COMPOUND_SELECT). DuckDB plans a chain of them in time and memory that grow with
#: the square of its length, counted against no memory_limit and deaf to interrupts: 20,000 terms
#: (400 KB of SQL) took 10 GB and a minute, a few more would get the server killed for memory.
_MAX_SET_OPERATIONS = 500
_SET_OPERATION = re.compile(r"(union|intersect|except)\b", re.IGNORECASE)


_VALUES_ROWS = 1000  # rows of one multi-row VALUES (DuckDB bulk INSERTs of mixed types)
#: ``INSERT INTO t [(cols)] VALUES (?, ...)``: group 1 is everything before VALUES.
_PLAIN_INSERT = re.compile(
    r"^\s*(INSERT\s+INTO\s+[\w.\"]+\s*(?:\([\w\s,\"]*\))?)\s*VALUES\s*\(\s*\?(?:\s*,\s*\?)*\s*\)\s*;?\s*$",
    re.IGNORECASE,
)


class DuckdbSession(EngineSession):
    """One DuckDB connection (a cursor of the shared database)."""

    def __init__(
        self,
        conn: Any,
        duckdb: Any,
        allow_files: bool = False,
        builtins: frozenset[str] = frozenset(),
    ) -> None:
        self._conn = conn
        self._duckdb = duckdb
        self._allow_files = allow_files
        self._builtins = builtins
        self._in_txn = False
        self._aborted = False
        self._kind = lru_cache(maxsize=512)(self._statement_kind)
        #: DuckDB never waits for a lock (a write-write conflict fails at once): only the
        #: transaction's gid is kept, for LOCKS (exdb.server.locks).
        self.locks = LockState(0.0)

    def _changes(self, sql: str) -> bool:
        """Whether the statement is an INSERT, UPDATE or DELETE (see _statement_kind)."""
        return self._kind(sql) in _DML_KINDS

    def _statement_kind(self, sql: str) -> str | None:
        """The statement's kind (a StatementType name), by DuckDB's own parser. More
        than one statement is refused, as SQLite does (no stacked statements); so are the
        statements the sandbox keeps from clients (extensions; files without --allow-files)."""
        statements = self._conn.extract_statements(sql)
        if len(statements) != 1:
            raise EngineError(
                "ProgrammingError",
                f"one statement at a time: got {len(statements)}",
            )
        try:
            kind = statements[0].type
        except ValueError:  # a statement type this duckdb module has no name for
            kind = None
        name = getattr(kind, "name", None)
        if name is None or name in _EXTENSION_STATEMENTS:
            what = "INSTALL and LOAD are" if name == "LOAD" else "this kind of statement is"
            raise EngineError(
                "ProgrammingError",
                f"{what} not allowed on an exdb server: its DuckDB extensions are the"
                " operator's, and SQL installs, loads or updates none",
            )
        self._check_set_operations(sql)
        if name == "CREATE" and _ROUTINE.search(sql) is not None:
            self._check_routine_name(sql)
        if name in _FILE_STATEMENTS and not self._allow_files:
            raise EngineError(
                "ProgrammingError",
                f"{_FILE_STATEMENTS[name]} is not allowed: SQL reaches no file on this server"
                f" ({_ALLOW_FILES_HINT})",
            )
        return None if name is None else str(name)

    def _check_routine_name(self, sql: str) -> None:
        """Refuse a CREATE MACRO/FUNCTION named like a built-in function: DuckDB would call the
        macro in place of the built-in in every session (``upper``, ``sum(x)`` ...), changing
        what other clients, and the distributed engine's partial aggregates, get."""
        routine = _routine_name(sql, self._duckdb)
        if routine is not None and routine.lower() in self._builtins:
            raise EngineError(
                "ProgrammingError",
                f"not allowed: a macro may not take the name of the built-in function"
                f" {routine!r}: it would replace that function for every session",
            )

    def _check_set_operations(self, sql: str) -> None:
        """Refuse a chain of more set operations than SQLite allows (see _MAX_SET_OPERATIONS):
        a cheap count of the words first, then DuckDB's own tokenizer, so that the words in
        strings, comments and names do not count."""
        lowered = sql.lower()
        if sum(lowered.count(w) for w in ("union", "intersect", "except")) <= _MAX_SET_OPERATIONS:
            return
        keyword = self._duckdb.token_type.keyword
        count = 0
        for offset, kind in self._duckdb.tokenize(sql):
            if kind == keyword and _SET_OPERATION.match(sql, offset) is not None:
                count += 1
        if count > _MAX_SET_OPERATIONS:
            raise EngineError(
                "ProgrammingError",
                f"not allowed: {count} set operations (UNION, INTERSECT, EXCEPT) in one"
                f" statement; an exdb server allows at most {_MAX_SET_OPERATIONS}, as SQLite"
                " does (DuckDB would plan a longer chain in memory no --memory-limit bounds)",
            )

    @property
    def in_transaction(self) -> bool:
        return self._in_txn

    def _maybe_begin(self, sql: str, autocommit: bool) -> None:
        keyword = first_keyword(sql)
        if keyword in TXN_KEYWORDS:  # the user's own BEGIN, COMMIT or ROLLBACK
            self._in_txn = keyword == "BEGIN"
            self._aborted = False
            return
        if not autocommit and not self._in_txn:
            self._conn.execute("BEGIN TRANSACTION")
            self._in_txn = True

    def execute(self, sql: str, params: Params, autocommit: bool) -> Outcome:
        try:
            kind = self._kind(sql)
            self._maybe_begin(sql, autocommit)
            self._conn.execute(sql, params if params is not None else None)
            if kind in _DML_KINDS and not _returns_rows(sql):
                row = self._conn.fetchone()
                return Outcome(None, int(row[0]) if row else 0)
            if self._conn.description is None or kind in _NO_RESULT_KINDS:
                # DuckDB answers DDL and SET with a one-row status ("Count", "Success"); as in
                # SQLite and PEP 249, such a statement has no result set.
                return Outcome(None, -1)
            columns = [[d[0], str(d[1])] for d in self._conn.description]
            return Outcome(columns, -1, None, self._fetch, self._arrow)
        except self._duckdb.Error as exc:
            self._after_error()
            raise _classify(exc, params) from exc

    def _fetch(self, n: int) -> list[Any]:
        try:
            return self._conn.fetchmany(n)  # type: ignore[no-any-return]
        except self._duckdb.Error as exc:
            self._after_error()
            raise _classify(exc) from exc

    def _arrow(self, rows_per_batch: int) -> Iterator[Any]:
        """The rest of the result as pyarrow RecordBatches, exported by DuckDB itself."""
        try:
            with warnings.catch_warnings():  # "an extra copy": cheaper than rows all the same
                warnings.simplefilter("ignore")
                export = getattr(self._conn, "to_arrow_reader", None)  # DuckDB 1.4+
                if export is None:
                    export = self._conn.fetch_record_batch
                reader = export(rows_per_batch)
            yield from reader
        except self._duckdb.Error as exc:
            self._after_error()
            raise _classify(exc) from exc

    def _after_error(self) -> None:
        # A failed statement aborts DuckDB's transaction: later statements fail until ROLLBACK,
        # and a COMMIT would silently roll back. Remember it, so that commit() can say so.
        if self._in_txn:
            self._aborted = True

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]], autocommit: bool) -> int:
        try:
            dml = self._changes(sql)
        except self._duckdb.Error as exc:
            raise _classify(exc) from exc
        own_txn = not self._in_txn
        failed: Params = None  # the parameter set being bound, for the error's message
        try:
            if own_txn:
                self._conn.execute("BEGIN TRANSACTION")
                self._in_txn = True
            total = 0
            columnar = self._columnar_insert(sql, seq)
            if columnar is not None:
                total = columnar
            else:
                for params in seq:
                    failed = params
                    self._conn.execute(sql, params)
                    if dml:
                        row = self._conn.fetchone()
                        total += int(row[0]) if row else 0
            if own_txn and autocommit:
                self._conn.execute("COMMIT")
                self._in_txn = False
            return total if dml else -1
        except self._duckdb.Error as exc:
            if own_txn and autocommit:
                # The batch was its own transaction: none of its rows stay, and the session
                # goes on (an aborted transaction left open would fail what comes next).
                with contextlib.suppress(self._duckdb.Error):
                    self._conn.execute("ROLLBACK")
                self._in_txn = self._aborted = False
            else:
                self._after_error()
            raise _classify(exc, failed) from exc

    def _columnar_insert(self, sql: str, seq: Sequence[Sequence[Any]]) -> int | None:
        """A plain ``INSERT INTO t [(cols)] VALUES (?, ...)`` of many rows as a few statements
        that each insert many rows, by what the columns hold; None for other statements (the
        caller inserts row by row). Each value converts as its own parameter would:

        - every column of one type (int64, float or text), no NULL: one INSERT ... SELECT from
          registered NumPy arrays, which DuckDB scans ~7x faster than it binds list parameters;
        - every column of one Python type, or NULL, none of lists or dicts: one INSERT ...
          SELECT UNNEST(?) per column list (~10x faster than a multi-row VALUES);
        - else (a column of several types, which DuckDB would convert as a whole list): a
          multi-row VALUES per 1,000 rows (~25x faster than a row at a time)."""
        match = _PLAIN_INSERT.match(sql)
        if match is None or not seq:
            return None
        if not all(isinstance(params, (list, tuple)) for params in seq):
            return None  # a mapping binds by name, row by row (DuckDB refuses it for ?)
        head = match.group(1)
        width = sql.count("?")
        if any(len(params) != width for params in seq):
            return None
        columns = list(zip(*seq, strict=True))
        kinds = [array_type(column) for column in columns]
        if all(kinds):
            inserted = self._insert_arrays(head, columns, kinds)
            if inserted is not None:
                return inserted
        held = [{type(v) for v in column} - {type(None)} for column in columns]
        if all(len(kinds) <= 1 for kinds in held) and not any(
            issubclass(kind, (list, tuple, dict)) for kinds in held for kind in kinds
        ):  # a list of dicts converts as a whole: a MAP would gain every other row's keys
            unnest = ", ".join(["UNNEST(?)"] * width)
            return self._insert_count(f"{head} SELECT {unnest}", [list(c) for c in columns])
        total = 0
        row = "(" + ", ".join(["?"] * width) + ")"
        for start in range(0, len(seq), _VALUES_ROWS):
            part = seq[start : start + _VALUES_ROWS]
            flat = [v for params in part for v in params]
            total += self._insert_count(f"{head} VALUES {', '.join([row] * len(part))}", flat)
        return total

    def _insert_arrays(
        self, head: str, columns: list[tuple[Any, ...]], kinds: list[type | None]
    ) -> int | None:
        """INSERT ... SELECT from one NumPy array per column; None without NumPy or for an
        integer beyond 64 bits."""
        try:
            import numpy
        except ImportError:
            return None
        dtypes = {int: numpy.int64, float: numpy.float64, str: object}
        arrays: dict[str, Any] = {}
        for i, (column, kind) in enumerate(zip(columns, kinds, strict=True)):
            assert kind is not None
            try:
                arrays[f"c{i}"] = numpy.array(column, dtype=dtypes[kind])
            except OverflowError:
                return None
            if kind is float and numpy.isnan(arrays[f"c{i}"]).any():
                return None  # DuckDB scans a NaN in a NumPy array as NULL: not the value sent
        name = f"exdb_rows_{uuid.uuid4().hex}"
        self._conn.register(name, arrays)
        try:
            return self._insert_count(f"{head} SELECT * FROM {name}", None)
        finally:
            # After a failed INSERT the transaction is aborted and refuses this too; its
            # rollback then drops the registration, made in the same transaction.
            with contextlib.suppress(self._duckdb.Error):
                self._conn.unregister(name)

    def _insert_count(self, sql: str, params: Any) -> int:
        """Run one INSERT; the rows it inserted."""
        self._conn.execute(sql, params)
        row = self._conn.fetchone()
        return int(row[0]) if row else 0

    def transaction(self, op: str) -> None:
        try:
            if op == "begin":
                if not self._in_txn:
                    self._conn.execute("BEGIN TRANSACTION")
                    self._in_txn = True
            elif op in ("commit", "rollback"):
                if self._in_txn:
                    aborted = self._aborted
                    self._in_txn = self._aborted = False
                    self._conn.execute("ROLLBACK" if aborted else op.upper())
                    if aborted and op == "commit":
                        raise EngineError(
                            "OperationalError",
                            "commit failed: an earlier error aborted the transaction, which was"
                            " rolled back; nothing was committed",
                        )
            else:
                raise EngineError("ProgrammingError", f"unknown transaction operation {op!r}")
        except self._duckdb.Error as exc:
            raise _classify(exc) from exc

    def interrupt(self) -> None:
        self._conn.interrupt()

    def close(self) -> None:
        with contextlib.suppress(self._duckdb.Error):
            if self._in_txn:
                self._conn.execute("ROLLBACK")
            self._conn.close()


def _classify(exc: BaseException, params: Any = None) -> EngineError:
    """Map a DuckDB (or binding) exception onto the PEP 249 class exdb reports for it; the
    sandbox's refusals (files, settings) as ProgrammingError, saying what is refused."""
    error = classify_python_error(exc)
    detail = str(exc).split("\n", 1)[0]
    if type(exc).__name__ == "TransactionException" and "onflict" in detail:
        # Optimistic concurrency: another transaction wrote the same rows first.
        error = EngineError(
            "TransactionConflict",
            f"serialization failure: {detail}; another transaction wrote the same rows"
            " concurrently: roll back and retry the transaction",
        )
    elif type(exc).__name__ in ("InterruptException", "TransactionException"):
        error.kind = "OperationalError"
    elif type(exc).__name__ == "PermissionException":
        error = EngineError(
            "ProgrammingError",
            "not allowed on this server: SQL reaches no file or URL outside the directories"
            f" its operator allows ({_ALLOW_FILES_HINT}): {detail}",
        )
    elif (locked := _LOCKED_SETTING.search(detail)) is not None:
        error = EngineError(
            "ProgrammingError",
            f"changing the DuckDB setting {locked.group(1)!r} is not allowed: settings apply"
            " to every session of the server and are its operator's (exdb serve"
            " --memory-limit, --threads); a session may SET only schema, search_path and"
            " VARIABLEs",
        )
    elif isinstance(params, dict) and "arameter" in detail:
        error = EngineError(
            "ProgrammingError",
            "a mapping of parameters binds named placeholders ($name) only; use a sequence"
            f" for ? placeholders: {detail}",
        )
    return error
