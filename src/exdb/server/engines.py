"""The storage engines behind a shard server, behind one small interface.

An :class:`Engine` is one database; each client session opens its own :class:`EngineSession`, a
connection with its own transaction. Engine calls block; each session's thread makes its own, so
one session's long statement never delays another.

Transactions: a session that is not in autocommit mode begins a transaction implicitly before its
first statement (PEP 249); COMMIT and ROLLBACK end it.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Generator, Sequence
from typing import Any

from exdb.errors import driver_class_name
from exdb.sqltext import first_keyword

__all__ = [
    "ENGINES",
    "FIRST_BATCH",
    "NO_TXN_KEYWORDS",
    "TXN_KEYWORDS",
    "Engine",
    "EngineError",
    "EnginePolicy",
    "EngineSession",
    "Outcome",
    "classify_python_error",
    "first_keyword",
    "open_engine",
    "parameter_set",
]


#: Rows in a result's first batch: small, so that the first rows arrive fast.
FIRST_BATCH = 256


#: Statement parameters: positional (qmark) or, where the engine allows, named.
Params = Sequence[Any] | dict[str, Any] | None


class EngineError(Exception):
    """An engine failure, already classified as a PEP 249 class name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Outcome:
    """What one statement produced: a result set to fetch from, or a rowcount."""

    __slots__ = ("_fetch", "arrow", "columns", "lastrowid", "rowcount")

    def __init__(
        self,
        columns: list[list[Any]] | None,
        rowcount: int,
        lastrowid: int | None = None,
        fetch: Any = None,
        arrow: Any = None,
    ) -> None:
        self.columns = columns  # [[name, type_name], ...] or None when there is no result set
        self.rowcount = rowcount
        self.lastrowid = lastrowid
        self._fetch = fetch
        #: The engine's own Arrow export of the rest of the result, if it has one: called with
        #: a batch size, returns an iterator of pyarrow RecordBatches (None: built from rows).
        self.arrow = arrow

    def fetch(self, n: int) -> list[Any]:
        """Up to ``n`` more rows; an empty list when the result is exhausted."""
        if self._fetch is None:
            return []
        return self._fetch(n)  # type: ignore[no-any-return]


class EngineSession(abc.ABC):
    """One connection to the engine, used by one thread at a time."""

    @abc.abstractmethod
    def execute(self, sql: str, params: Params, autocommit: bool) -> Outcome:
        """Run one statement."""

    @abc.abstractmethod
    def executemany(self, sql: str, seq: Sequence[Sequence[Any]], autocommit: bool) -> int:
        """Run one statement once per parameter tuple; return the total rowcount."""

    def execute_each(
        self, sql: str, seq: Sequence[Any], autocommit: bool
    ) -> Generator[Outcome | EngineError, None, None]:
        """Run one statement once per parameter set, each as :meth:`execute` would run it
        alone: yields each set's Outcome, to be read to its end before the next one is asked
        for, or its EngineError. Closing the iterator early stops there."""
        for params in seq:
            try:
                yield self.execute(sql, parameter_set(params), autocommit)
            except EngineError as exc:
                yield exc

    @abc.abstractmethod
    def transaction(self, op: str) -> None:
        """Begin, commit or roll back ("begin", "commit", "rollback")."""

    @property
    @abc.abstractmethod
    def in_transaction(self) -> bool:
        """Whether a transaction is open."""

    @abc.abstractmethod
    def interrupt(self) -> None:
        """Abort the statement running now, from any thread."""

    @abc.abstractmethod
    def close(self) -> None:
        """Roll back what is open and release the connection."""


@dataclasses.dataclass(frozen=True)
class EnginePolicy:
    """What the server's operator lets SQL do beyond its own database (the sandbox's knobs)."""

    #: The largest value (text or blob) a statement may build, in bytes; None: the engine's own.
    max_value_bytes: int | None = None
    #: Directories whose files SQL may read and write; empty: no file outside the database.
    file_dirs: tuple[str, ...] = ()
    #: DuckDB: the memory limit of the whole database; None: DuckDB's default.
    memory_limit: str | None = None
    #: DuckDB: worker threads of the whole database; None: DuckDB's default.
    threads: int | None = None


class Engine(abc.ABC):
    """One database that many sessions share."""

    name: str

    @abc.abstractmethod
    def open_session(self) -> EngineSession:
        """A new connection with its own transaction."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the database cleanly (checkpoint, release files)."""


def parameter_set(params: Any) -> Params:
    """One parameter set as received, checked: a sequence, a mapping or None."""
    if params is not None and not isinstance(params, (list, tuple, dict)):
        raise EngineError("ProgrammingError", "parameters must be a sequence or None")
    return params  # type: ignore[no-any-return]


TXN_KEYWORDS = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "ABORT"})
# Statements that need no enclosing transaction and, in SQLite, may not run inside one.
NO_TXN_KEYWORDS = TXN_KEYWORDS | {"VACUUM", "PRAGMA", "ATTACH", "DETACH"}


def classify_python_error(exc: BaseException) -> EngineError:
    """A Python error raised while binding or converting values, as its PEP 249 class; any other
    driver exception by its class name."""
    if isinstance(exc, OverflowError):
        return EngineError("DataError", str(exc))
    if isinstance(exc, (ValueError, TypeError)):
        return EngineError("ProgrammingError", str(exc))
    return EngineError(driver_class_name(exc), str(exc))


ENGINES = ("sqlite", "duckdb")


def open_engine(name: str, path: str | None = None, policy: EnginePolicy | None = None) -> Engine:
    """Open the engine called ``name`` ("sqlite" or "duckdb") on ``path`` (None: in memory)."""
    policy = policy or EnginePolicy()
    if name == "sqlite":
        from exdb.server.sqlite_engine import SqliteEngine

        return SqliteEngine(path, policy)
    if name == "duckdb":
        from exdb.server.duckdb_engine import DuckdbEngine

        return DuckdbEngine(path, policy)
    raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
