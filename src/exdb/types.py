"""PEP 249 type objects and constructors."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "BINARY",
    "DATETIME",
    "NUMBER",
    "ROWID",
    "STRING",
    "Binary",
    "Date",
    "DateFromTicks",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "value_type_names",
]


class DBAPITypeObject:
    """Compares equal to every engine type name of its kind (``description[i][1]``)."""

    def __init__(self, name: str, *prefixes: str) -> None:
        self.name = name
        self._prefixes = tuple(p.upper() for p in prefixes)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return other.upper().startswith(self._prefixes)
        return other is self

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"exdb.{self.name}"


STRING = DBAPITypeObject("STRING", "TEXT", "VARCHAR", "CHAR", "STRING", "CLOB")
BINARY = DBAPITypeObject("BINARY", "BLOB", "BYTEA", "BINARY", "VARBINARY")
NUMBER = DBAPITypeObject(
    "NUMBER",
    "INT", "BIGINT", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER", "USMALLINT",
    "UTINYINT", "REAL", "FLOAT", "DOUBLE", "DECIMAL", "NUMERIC", "BOOLEAN",
)  # fmt: skip
DATETIME = DBAPITypeObject("DATETIME", "DATE", "TIME", "TIMESTAMP", "INTERVAL")
ROWID = DBAPITypeObject("ROWID", "ROWID")

Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime


def DateFromTicks(ticks: float) -> datetime.date:  # noqa: N802 - PEP 249 name
    """The local date of a POSIX timestamp."""
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:  # noqa: N802 - PEP 249 name
    """The local time of a POSIX timestamp."""
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:  # noqa: N802 - PEP 249 name
    """The local date and time of a POSIX timestamp."""
    return Timestamp(*time.localtime(ticks)[:6])


_VALUE_TYPE_NAMES = {int: "INTEGER", float: "REAL", str: "TEXT", bytes: "BLOB", bool: "BOOLEAN"}


def value_type_names(rows: Sequence[Sequence[Any]], width: int) -> list[str | None]:
    """Column type names read off the values (SQLite results carry none): each column is named
    by its first non-NULL value; an all-NULL column has None."""
    names: list[str | None] = [None] * width
    missing = set(range(width))
    for row in rows:
        for i in list(missing):
            v = row[i]
            if v is not None:
                names[i] = _VALUE_TYPE_NAMES.get(type(v), "TEXT")
                missing.discard(i)
        if not missing:
            break
    return names


def array_type(column: Iterable[Any]) -> type | None:
    """``int``, ``float`` or ``str`` when every value of the column is of that one type (no
    NULL), so that one NumPy array holds it with no value converted; else None."""
    kinds = {type(v) for v in column}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    return kind if kind in (int, float, str) else None


def Binary(value: Any) -> bytes:  # noqa: N802 - PEP 249 name
    """A binary value."""
    return bytes(value)
