"""The PEP 249 exception tree, shared by the client, the server and the distributed layer.

::

    Exception
    |__ Warning
    |__ Error
        |__ InterfaceError
        |__ DatabaseError
            |__ DataError
            |__ OperationalError
            |   |__ LockError: LockTimeout, DeadlockDetected, TransactionConflict
            |__ IntegrityError
            |__ InternalError
            |__ ProgrammingError
            |__ NotSupportedError

Every error raised by exdb names the node (``host:port``) and the statement it concerns, when
there is one, both in its message and as the ``node`` and ``statement`` attributes.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DataError",
    "DatabaseError",
    "DeadlockDetected",
    "Error",
    "ErrorClasses",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "LockError",
    "LockTimeout",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "TransactionConflict",
    "Warning",
    "driver_class_name",
    "error_class",
    "make_error",
]

_MAX_SQL_IN_MESSAGE = 200

#: The PEP 249 classes a database driver's exceptions are named after (sqlite3, duckdb).
PEP249_NAMES = (
    "DataError",
    "OperationalError",
    "IntegrityError",
    "InternalError",
    "ProgrammingError",
    "NotSupportedError",
    "InterfaceError",
    "DatabaseError",
)


def driver_class_name(exc: BaseException, exclude: tuple[str, ...] = ()) -> str:
    """The PEP 249 class a driver's exception belongs to, by the names in its MRO (drivers
    define their own classes of those names); "DatabaseError" when none matches."""
    return next(
        (
            c.__name__
            for c in type(exc).__mro__
            if c.__name__ in PEP249_NAMES and c.__name__ not in exclude
        ),
        "DatabaseError",
    )


class Warning(Exception):  # noqa: A001 - the name is fixed by PEP 249
    """Important warnings, such as data truncation."""

    __module__ = "exdb"


class Error(Exception):
    """Base class of every exdb error."""

    __module__ = "exdb"

    def __init__(
        self,
        message: str = "",
        *,
        node: str | None = None,
        statement: str | None = None,
        results: list[Any] | None = None,
    ) -> None:
        self.message = message
        self.node = node
        self.statement = statement
        #: Every statement's outcome when a list of statements failed (AsyncDistributedConnection).
        self.results = results
        #: A machine-readable reason from the server, e.g. "canceled"; None for most errors.
        self.code: str | None = None
        super().__init__(_describe(message, node, statement))

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep node, statement and results across pickling (worker processes send errors back).
        return (_rebuild, (type(self), self.message, self.node, self.statement, self.results))


class InterfaceError(Error):
    """The client was misused: for example an object used after close()."""

    __module__ = "exdb"


class DatabaseError(Error):
    """An error from the database or about the data."""

    __module__ = "exdb"


class DataError(DatabaseError):
    """A value was out of range or of the wrong kind."""

    __module__ = "exdb"


class OperationalError(DatabaseError):
    """The database's operation failed: a node down, a timeout, a cancelled statement."""

    __module__ = "exdb"


class LockError(OperationalError):
    """A transaction lost a lock: it waited too long, was a deadlock's victim, or conflicted
    with a concurrent write. The whole transaction was rolled back; retrying it may succeed."""

    __module__ = "exdb"


class LockTimeout(LockError):
    """A statement waited for a lock past ``lock_timeout`` (PostgreSQL: lock_not_available)."""

    __module__ = "exdb"


class DeadlockDetected(LockError):
    """The transaction was chosen as the victim of a deadlock (PostgreSQL: deadlock_detected)."""

    __module__ = "exdb"


class TransactionConflict(LockError):
    """A write conflicted with a concurrent transaction's (PostgreSQL: serialization_failure)."""

    __module__ = "exdb"


class IntegrityError(DatabaseError):
    """A constraint was violated."""

    __module__ = "exdb"


class InternalError(DatabaseError):
    """The database hit an internal inconsistency."""

    __module__ = "exdb"


class ProgrammingError(DatabaseError):
    """The statement or its arguments are wrong: a syntax error, a missing table, bad parameters."""

    __module__ = "exdb"


class NotSupportedError(DatabaseError):
    """exdb cannot answer this exactly, so it refuses instead of answering wrongly."""

    __module__ = "exdb"


class UnknownTableError(ProgrammingError):
    """A statement names a table the client's catalog does not know (yet)."""

    __module__ = "exdb"


class ErrorClasses:
    """PEP 249's optional extension: a connection carries the module's exception classes as
    attributes (``conn.Error``, ``conn.ProgrammingError`` ...), for code that holds only the
    connection. Every exdb connection class inherits it."""

    Warning = Warning
    Error = Error
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError


_CLASSES: dict[str, type[Error]] = {
    cls.__name__: cls
    for cls in (
        Error,
        InterfaceError,
        DatabaseError,
        DataError,
        OperationalError,
        IntegrityError,
        InternalError,
        ProgrammingError,
        NotSupportedError,
        UnknownTableError,
        LockError,
        LockTimeout,
        DeadlockDetected,
        TransactionConflict,
    )
}


def error_class(name: str) -> type[Error]:
    """Map a PEP 249 class name (as carried on the wire) to its exdb class."""
    return _CLASSES.get(name, DatabaseError)


def make_error(
    name: str, message: str, *, node: str | None = None, statement: str | None = None
) -> Error:
    """Build the exdb error named ``name``."""
    return error_class(name)(message, node=node, statement=statement)


def _rebuild(
    cls: type[Error], message: str, node: str | None, statement: str | None, results: Any
) -> Error:
    return cls(message, node=node, statement=statement, results=results)


def _describe(message: str, node: str | None, statement: str | None) -> str:
    parts = []
    if node:
        parts.append(f"[node {node}]")
    parts.append(message)
    if statement:
        sql = " ".join(statement.split())
        if len(sql) > _MAX_SQL_IN_MESSAGE:
            sql = sql[: _MAX_SQL_IN_MESSAGE - 3] + "..."
        parts.append(f"(statement: {sql})")
    return " ".join(parts)
