"""PEP 249 type objects and constructors."""

from __future__ import annotations

import datetime
import decimal
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from exdb.errors import DataError, ProgrammingError

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
    "plain_params",
    "plain_value",
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


#: Parameter types the wire carries as they are (the fast path of plain_params).
_NATIVE = frozenset(
    {int, float, str, bytes, bool, type(None), decimal.Decimal, datetime.datetime, datetime.date,
     datetime.time, datetime.timedelta, uuid.UUID, bytearray, memoryview}
)  # fmt: skip
#: Units of NumPy datetime64/timedelta64 finer than a microsecond (Python's resolution).
_FINER_THAN_MICROSECONDS = ("ns", "ps", "fs", "as")


def plain_params(params: Sequence[Any], statement: str | None = None) -> Sequence[Any]:
    """A parameter sequence with NumPy and pandas values made plain Python values (see
    plain_value); the sequence itself when there are none (the common case costs one pass)."""
    for v in params:
        if type(v) not in _NATIVE:
            try:
                return [plain_value(x) for x in params]
            except (DataError, ProgrammingError) as exc:
                raise type(exc)(exc.message, statement=statement) from None
    return params


def plain_value(v: Any) -> Any:
    """The plain Python value a NumPy or pandas value stands for, so that it is stored as the
    same Python value would be: NumPy scalars by ``.item()`` (np.int64 -> int, np.float32 ->
    float, np.bool_ -> bool, np.str_ -> str, datetime64 -> datetime); pd.Timestamp and
    pd.Timedelta -> datetime and timedelta; pd.NA, pd.NaT and NumPy's NaT -> None (NULL).
    NaN stays a float NaN, as with sqlite3. A value finer than a microsecond is refused
    (DataError), not rounded. Neither library is imported here: values are told by their
    type's module. Any other value is returned as it is (the wire refuses what it cannot
    carry)."""
    module = type(v).__module__
    if module.startswith("numpy"):
        return _numpy_value(v)
    if module.startswith("pandas"):
        return _pandas_value(v)
    return v


def _numpy_value(v: Any) -> Any:
    dtype = getattr(v, "dtype", None)
    if getattr(v, "ndim", None) != 0 or dtype is None:
        raise ProgrammingError(
            f"a NumPy {type(v).__name__} is not one value: pass each value as a parameter"
        )
    if dtype.kind in "mM":  # timedelta64, datetime64
        if v != v:  # NaT
            return None
        unit = str(dtype).partition("[")[2].rstrip("]")
        if unit in _FINER_THAN_MICROSECONDS:
            coarse = v.astype(f"{'datetime64' if dtype.kind == 'M' else 'timedelta64'}[us]")
            if coarse != v:
                raise DataError(f"{v!r} is finer than a microsecond: it cannot be stored exactly")
            v = coarse
        out = v.item()
        if isinstance(out, int):  # a unit Python's datetime cannot hold (years beyond 9999)
            raise DataError(f"{v!r} is out of the range of Python's datetime")
        return out
    out = v.item()
    if type(out).__module__.startswith("numpy"):  # np.longdouble, np.clongdouble
        raise ProgrammingError(f"a NumPy {type(v).__name__} has no exact Python value")
    return out


def _pandas_value(v: Any) -> Any:
    name = type(v).__name__
    if name in ("NAType", "NaTType"):
        return None
    if isinstance(v, (datetime.datetime, datetime.timedelta)):  # Timestamp, Timedelta
        if getattr(v, "nanoseconds", 0) or getattr(v, "nanosecond", 0):
            raise DataError(f"{v!r} is finer than a microsecond: it cannot be stored exactly")
        if isinstance(v, datetime.datetime):
            return v.to_pydatetime()  # type: ignore[attr-defined]
        return v.to_pytimedelta()  # type: ignore[attr-defined]
    return v
