"""Arrow and DataFrame output, written once for every door (and for the shard server).

A result reaches the client as pieces, in order: batches of rows (tuples, the classic RESULT
frames) and Arrow IPC streams (RESULT frames whose rows field is bin, once the client asked for
Arrow; docs/protocol.md §8.1). :class:`Collector` turns them into one ``pyarrow.Table``; the
cursors' ``fetch_arrow_table``, ``fetch_record_batches``, ``fetch_df`` and ``fetch_pl`` are
built on it.

pyarrow, pandas and polars are optional (the extras ``arrow``, ``pandas``, ``polars``) and are
imported here only when a fetch needs them: ``import exdb`` never loads them.

Types: DuckDB columns take DuckDB's own Arrow types (the server exports them natively; rows
that came before the switch are converted to the same schema). SQLite columns are typed from
their values: integers int64, REAL float64, TEXT string, BLOB binary, booleans bool, a column
of NULLs null. A SQLite column holding integers and reals is float64 when every integer is
exactly representable; one holding values of kinds no single Arrow type holds exactly (text
and integers, text and blobs) is refused with DataError, not coerced.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import operator
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from exdb.errors import DataError, InterfaceError

__all__ = [
    "ArrowFetches",
    "AsyncArrowFetches",
    "Collector",
    "concat_tables",
    "ipc_bytes",
    "read_ipc",
    "reader_of",
    "require",
    "rows_table",
    "server_can_arrow",
    "table_from_rows",
    "to_pandas",
    "to_polars",
]

#: The extra that installs each optional library.
_EXTRAS = {"pyarrow": "arrow", "pandas": "pandas", "polars": "polars"}


def require(module: str, what: str) -> Any:
    """Import an optional library, or raise InterfaceError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = _EXTRAS.get(module, module)
        raise InterfaceError(
            f"{what} needs {module}, which is not installed: pip install 'exdb[{extra}]'"
        ) from None


@functools.cache
def server_can_arrow() -> bool:
    """Whether this process could build Arrow (pyarrow is installed), without importing it."""
    try:
        return importlib.util.find_spec("pyarrow") is not None
    except (ImportError, ValueError):  # a finder that refuses it
        return False


def _pa(what: str = "Arrow output") -> Any:
    return require("pyarrow", what)


# --- types --------------------------------------------------------------------------------------

_DECIMAL = re.compile(r"(?:DECIMAL|NUMERIC)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)", re.IGNORECASE)


def _duckdb_type(pa: Any, name: str) -> Any:
    """The Arrow type DuckDB exports for a column of type ``name``; None: infer from values."""
    simple = {
        "BOOLEAN": pa.bool_(),
        "TINYINT": pa.int8(),
        "SMALLINT": pa.int16(),
        "INTEGER": pa.int32(),
        "BIGINT": pa.int64(),
        "UTINYINT": pa.uint8(),
        "USMALLINT": pa.uint16(),
        "UINTEGER": pa.uint32(),
        "UBIGINT": pa.uint64(),
        "HUGEINT": pa.decimal128(38, 0),
        "FLOAT": pa.float32(),
        "DOUBLE": pa.float64(),
        "VARCHAR": pa.string(),
        "UUID": pa.string(),
        "BLOB": pa.binary(),
        "DATE": pa.date32(),
        "TIME": pa.time64("us"),
        "TIMESTAMP": pa.timestamp("us"),
        "TIMESTAMP_S": pa.timestamp("s"),
        "TIMESTAMP_MS": pa.timestamp("ms"),
        "TIMESTAMP_NS": pa.timestamp("ns"),
        "INTERVAL": pa.month_day_nano_interval(),
    }
    upper = name.upper()
    if upper in simple:
        return simple[upper]
    m = _DECIMAL.fullmatch(upper)
    if m and int(m.group(1)) <= 38:
        return pa.decimal128(int(m.group(1)), int(m.group(2)))
    if any(c in upper for c in "[(") and _NESTED.fullmatch(name):
        return _duckdb_nested_type(name)
    return None


#: Type names of nested columns (LIST, STRUCT, MAP, UNION, ENUM) to ask DuckDB about.
_NESTED = re.compile(r"[A-Za-z0-9_ ,()\[\]\"']+")


@functools.cache
def _duckdb_nested_type(name: str) -> Any:
    """The Arrow type DuckDB itself exports for a nested type name (a MAP is a map, not a
    struct of its keys; INTEGER[] is list<int32>): asked of an in-process DuckDB that reads no
    file; None without duckdb installed, or for a name it refuses."""
    try:
        import duckdb
    except ImportError:
        return None
    try:
        with duckdb.connect(config={"enable_external_access": False}) as conn:
            table = conn.sql(f"SELECT CAST(NULL AS {name}) AS x").to_arrow_table()
    except duckdb.Error:
        return None
    return table.schema.field(0).type


def _column(pa: Any, values: Sequence[Any], name: str, target: Any) -> Any:
    """One column's values as an Arrow array: of type ``target`` when given (DuckDB's type),
    else typed from the values, refusing a mix no Arrow type holds exactly."""
    if target is not None:
        if pa.types.is_string(target) or pa.types.is_large_string(target):
            if any(type(v) is bytes for v in values):  # pyarrow would decode them silently
                raise DataError(f"column {name!r} holds text and blobs: Arrow needs one type")
            values = [str(v) if isinstance(v, uuid.UUID) else v for v in values]  # as DuckDB
        try:
            return pa.array(values, type=target)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            pass  # e.g. a value DuckDB typed otherwise; fall back on the values' own type
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
        kinds = sorted({type(v).__name__ for v in values if v is not None})
        raise DataError(
            f"column {name!r} cannot be one Arrow column: it holds {', '.join(kinds)} ({exc})"
        ) from None
    if pa.types.is_binary(array.type) and any(type(v) is str for v in values):
        raise DataError(f"column {name!r} holds text and blobs: Arrow needs one type")
    return array


def _empty_type(pa: Any, name: Any, engine: str) -> Any:
    """A column's type when no value tells it: the engine's type name, where it maps."""
    if not isinstance(name, str):
        return pa.null()
    if engine == "duckdb":
        found = _duckdb_type(pa, name)
        return pa.null() if found is None else found
    sqlite = {
        "INTEGER": pa.int64(),
        "REAL": pa.float64(),
        "TEXT": pa.string(),
        "BLOB": pa.binary(),
        "BOOLEAN": pa.bool_(),
    }
    return sqlite.get(name.upper(), pa.null())


def table_from_rows(
    columns: Sequence[str],
    types: Sequence[Any],
    rows: Sequence[Sequence[Any]],
    engine: str,
    schema: Any = None,
) -> Any:
    """Rows (tuples) as a ``pyarrow.Table``. DuckDB: of ``schema``'s types when given (the
    Arrow the server sent for the rest of the result), else of DuckDB's types; SQLite: typed
    from the values (pieces are reconciled by :func:`concat_tables`)."""
    pa = _pa()
    names = list(columns)
    if not rows:
        if schema is not None:
            return schema.empty_table().rename_columns(names)
        fields = [
            pa.field(str(n), _empty_type(pa, t, engine))
            for n, t in zip(names, _padded(types, len(names)), strict=True)
        ]
        return pa.schema(fields).empty_table()
    arrays = []
    if any(len(r) != len(names) for r in rows):
        raise DataError(f"rows of {len(names)} values expected")
    for i in range(len(names)):
        values = list(map(operator.itemgetter(i), rows))  # zip(*rows) is 7x slower
        if schema is not None and engine == "duckdb":
            target = schema.field(i).type
        elif engine == "duckdb" and isinstance(types[i] if i < len(types) else None, str):
            target = _duckdb_type(pa, types[i])
        else:
            target = None
        arrays.append(_column(pa, values, names[i], target))
    return pa.Table.from_arrays(arrays, names=[str(n) for n in names])


def _padded(types: Sequence[Any], n: int) -> list[Any]:
    out = list(types)[:n]
    return out + [None] * (n - len(out))


def concat_tables(tables: Sequence[Any]) -> Any:
    """Tables of the same columns as one: a column of NULLs takes the others' type, int64 and
    float64 meet as float64 when every integer is exact in it; other mixes are refused."""
    pa = _pa()
    if len(tables) == 1:
        return tables[0]
    first = tables[0]
    fields = []
    for i, field in enumerate(first.schema):
        kinds = {t.schema.field(i).type for t in tables} - {pa.null()}
        if not kinds:
            fields.append(field)
        elif len(kinds) == 1:
            fields.append(field.with_type(kinds.pop()))
        elif kinds == {pa.int64(), pa.float64()}:
            fields.append(field.with_type(pa.float64()))
        else:
            names = ", ".join(sorted(str(k) for k in kinds))
            raise DataError(f"column {field.name!r} has several types ({names}): Arrow needs one")
    schema = pa.schema(fields)
    cast = []
    for t in tables:
        if t.schema.equals(schema):
            cast.append(t)
            continue
        try:
            cast.append(t.rename_columns(schema.names).cast(schema, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataError(f"the result cannot be one Arrow table: {exc}") from None
    return pa.concat_tables(cast)


# --- IPC ----------------------------------------------------------------------------------------


def ipc_bytes(batch: Any) -> Any:
    """One record batch as an Arrow IPC stream (schema, the batch, end), as a buffer."""
    pa = _pa()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return memoryview(sink.getvalue())


def read_ipc(data: bytes) -> Any:
    """An Arrow IPC stream (as a RESULT frame carries it) as a table."""
    pa = _pa()
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


# --- collecting a result ------------------------------------------------------------------------


class Collector:
    """The pieces of one result (row batches and Arrow IPC streams, in order) as one table."""

    def __init__(self, columns: Sequence[str], types: Sequence[Any], engine: str) -> None:
        self.columns = list(columns)
        self.types = list(types)
        self.engine = engine
        self._pieces: list[Any] = []  # lists of rows, or pyarrow Tables

    def add(self, piece: Any) -> None:
        """One piece: rows (a sequence of tuples) or an Arrow IPC stream (bytes)."""
        if isinstance(piece, (bytes, bytearray, memoryview)):
            table = read_ipc(bytes(piece))
            self._pieces.append(table.rename_columns([str(c) for c in self.columns]))
        elif piece:
            last = self._pieces[-1] if self._pieces else None
            if isinstance(last, list):
                last.extend(piece)
            else:
                self._pieces.append(list(piece))

    def add_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        """Rows read some other way (already merged, for instance)."""
        self.add(list(rows))

    def table(self) -> Any:
        """Everything collected, as one ``pyarrow.Table``."""
        pa = _pa()
        schema = next((p.schema for p in self._pieces if isinstance(p, pa.Table)), None)
        tables = [
            p
            if isinstance(p, pa.Table)
            else table_from_rows(self.columns, self.types, p, self.engine, schema)
            for p in self._pieces
        ]
        if not tables:
            tables.append(table_from_rows(self.columns, self.types, [], self.engine, schema))
        return concat_tables(tables)


# --- outputs ------------------------------------------------------------------------------------


def reader_of(table: Any, rows_per_batch: int) -> Any:
    """A ``pyarrow.RecordBatchReader`` over ``table``, batches of at most ``rows_per_batch``."""
    pa = _pa()
    _check_rows_per_batch(rows_per_batch)
    return pa.RecordBatchReader.from_batches(
        table.schema, table.to_batches(max_chunksize=rows_per_batch)
    )


def to_pandas(table: Any) -> Any:
    """An Arrow table as a pandas DataFrame."""
    require("pandas", "fetch_df()")
    return table.to_pandas()


def to_polars(table: Any) -> Any:
    """An Arrow table as a polars DataFrame."""
    pl = require("polars", "fetch_pl()")
    return pl.from_arrow(table)


# --- the cursors' methods, written once per kind of door -------------------------------------

#: fetch_record_batches' default batch size, as DuckDB's fetch_record_batch.
DEFAULT_ROWS_PER_BATCH = 1_000_000


def _check_rows_per_batch(rows_per_batch: Any) -> None:
    if type(rows_per_batch) is not int or rows_per_batch < 1:
        from exdb.errors import ProgrammingError

        raise ProgrammingError(f"rows_per_batch must be a positive int, not {rows_per_batch!r}")


class ArrowFetches:
    """``fetch_arrow_table``, ``fetch_record_batches``, ``fetch_df`` and ``fetch_pl`` of a
    synchronous cursor (names as in DuckDB and ADBC); the cursor supplies ``_arrow_table``."""

    def _arrow_table(self, what: str) -> Any:
        raise NotImplementedError

    def fetch_arrow_table(self) -> Any:
        """The rest of the result as a ``pyarrow.Table`` (needs the ``arrow`` extra)."""
        return self._arrow_table("fetch_arrow_table()")

    def fetch_record_batches(self, rows_per_batch: int = DEFAULT_ROWS_PER_BATCH) -> Any:
        """The rest of the result as a ``pyarrow.RecordBatchReader``."""
        _check_rows_per_batch(rows_per_batch)
        return reader_of(self._arrow_table("fetch_record_batches()"), rows_per_batch)

    fetch_record_batch = fetch_record_batches

    def fetch_df(self) -> Any:
        """The rest of the result as a pandas DataFrame (needs the ``pandas`` extra)."""
        require("pandas", "fetch_df()")
        return to_pandas(self._arrow_table("fetch_df()"))

    def fetch_pl(self) -> Any:
        """The rest of the result as a polars DataFrame (needs the ``polars`` extra)."""
        require("polars", "fetch_pl()")
        return to_polars(self._arrow_table("fetch_pl()"))


class AsyncArrowFetches:
    """The same methods for an asyncio cursor, as coroutines."""

    async def _arrow_table(self, what: str) -> Any:
        raise NotImplementedError

    async def fetch_arrow_table(self) -> Any:
        """The rest of the result as a ``pyarrow.Table`` (needs the ``arrow`` extra)."""
        return await self._arrow_table("fetch_arrow_table()")

    async def fetch_record_batches(self, rows_per_batch: int = DEFAULT_ROWS_PER_BATCH) -> Any:
        """The rest of the result as a ``pyarrow.RecordBatchReader`` (read whole first)."""
        _check_rows_per_batch(rows_per_batch)
        return reader_of(await self._arrow_table("fetch_record_batches()"), rows_per_batch)

    fetch_record_batch = fetch_record_batches

    async def fetch_df(self) -> Any:
        """The rest of the result as a pandas DataFrame (needs the ``pandas`` extra)."""
        require("pandas", "fetch_df()")
        return to_pandas(await self._arrow_table("fetch_df()"))

    async def fetch_pl(self) -> Any:
        """The rest of the result as a polars DataFrame (needs the ``polars`` extra)."""
        require("polars", "fetch_pl()")
        return to_polars(await self._arrow_table("fetch_pl()"))


def rows_table(
    columns: Sequence[str] | None, types: Sequence[Any], rows: Iterable[Any], engine: str, what: str
) -> Any:
    """Rows already merged (a final stage's, a worker's) as a table."""
    require("pyarrow", what)
    collector = Collector(columns or [], types, engine)
    collector.add_rows(tuple(r) for r in rows)
    return collector.table()
