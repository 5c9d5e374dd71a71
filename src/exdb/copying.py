"""Client-side COPY: ``cursor.copy_from`` and ``cursor.copy_to`` on every door, and ``exdb import``.

The file is read (or written) by the client, never by a server: rows go to the nodes through
the bulk insert path (``executemany``; on a distributed connection each row goes to the shard
of its key, each shard's rows in one batch, the shards concurrently), and come back through an
ordinary query. The logic is written once, as generators (:func:`copy_from_job`,
:func:`copy_to_job`) that yield what they need done; :func:`run_sync` and :func:`run_async`
drive them with a door's cursor.

Reading (PostgreSQL's CSV rules):

- an *unquoted* field equal to the NULL marker (``null``, by default the empty string) is NULL;
  a quoted one (``""``) is that text. With ``null="\\N"``, an unquoted ``\\N`` is NULL;
- a field is converted to the column's declared type: integer types by ``int``, REAL, FLOAT and
  DOUBLE by ``float``, BOOLEAN from ``t/true/1/yes/on/y`` and ``f/false/0/no/off/n`` (any case);
  every other type is sent as text for the node to cast (DATE, TIMESTAMP, DECIMAL ...);
- a blank line is a row of one NULL for a one-column table and is skipped otherwise;
- a bad field or a row of the wrong width raises DataError naming the line (the physical line
  of the file, counting the header; the row number for an iterable of rows).

All or nothing: one ``copy_from`` call loads every row or none. On an autocommit connection it
runs in a transaction of its own, committed at the end; inside a transaction it joins it, and a
failure rolls the transaction back (as PostgreSQL aborts a transaction whose COPY fails), which
the error says. The file is streamed in chunks of about 2 MiB (bounded memory, whatever the
file's size): a background thread reads and converts the next chunk while the nodes insert one.

Formats: ``csv`` and ``jsonl`` (JSON lines: one object keyed by column name, or one array, per
line; copy_to writes objects).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import queue
import re
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

from exdb.errors import DataError, Error, InterfaceError, ProgrammingError

__all__ = [
    "FORMATS",
    "CopyOptions",
    "copy_from_job",
    "copy_to_job",
    "run_async",
    "run_sync",
]

FORMATS = ("csv", "jsonl")
_READ_HINT = 1 << 21  # characters of whole lines read per chunk (~2 MiB)
_ROW_CHUNK = 20_000  # rows per chunk for an iterable of rows
_FETCH_ROWS = 10_000  # rows fetched at a time by copy_to
_PREFETCH = 2  # chunks read ahead of the one being inserted
_IDENTIFIER = re.compile(r'^\s*(?:"[^"]+"|[A-Za-z_][\w$]*)\s*$')

#: What copy_to runs as given: a query, possibly after a node prefix (``2:SELECT ...``).
_QUERY = re.compile(r"^\s*(?:\d+\s*:)?[\s(]*(?:SELECT|WITH|VALUES|TABLE|FROM)\b", re.IGNORECASE)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CopyOptions:
    """How a file is read or written."""

    format: str = "csv"
    header: bool = True
    delimiter: str = ","
    null: str = ""

    def check(self) -> CopyOptions:
        """The options, or ProgrammingError for a bad one."""
        if self.format not in FORMATS:
            raise ProgrammingError(
                f"format must be one of {', '.join(FORMATS)}, not {self.format!r}"
            )
        if len(self.delimiter) != 1 or self.delimiter in '"\r\n':
            raise ProgrammingError(
                f"the delimiter must be one character other than a quote or newline,"
                f" not {self.delimiter!r}"
            )
        if any(c in self.null for c in (self.delimiter, '"', "\r", "\n")):
            raise ProgrammingError(f"the NULL marker {self.null!r} holds a delimiter or quote")
        return self


# --- naming -------------------------------------------------------------------------------------


def quote_identifier(name: str) -> str:
    """A name as a quoted SQL identifier (a name already in double quotes is kept)."""
    name = name.strip()
    if len(name) > 1 and name[0] == name[-1] == '"':
        return name
    return '"' + name.replace('"', '""') + '"'


def _bare(name: str) -> str:
    name = name.strip()
    if len(name) > 1 and name[0] == name[-1] == '"':
        return name[1:-1].replace('""', '"')
    return name


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# --- values ---------------------------------------------------------------------------------------

_TRUE = {"t", "true", "1", "yes", "y", "on"}
_FALSE = {"f", "false", "0", "no", "n", "off"}


def _to_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(text)


def _to_int(text: str) -> int:
    """An integer field: ASCII digits only (Python's int() takes '١٢' as 12; PostgreSQL and
    DuckDB refuse it)."""
    if text.isascii():
        return int(text)
    raise ValueError(text)


def _to_float(text: str) -> float:
    """A REAL field: ASCII only, as an integer field."""
    if text.isascii():
        return float(text)
    raise ValueError(text)


def converter(declared: str | None) -> Callable[[str], Any] | None:
    """How a CSV field becomes a value of a column of this declared type (None: sent as text
    for the node to cast). The rules follow SQLite's type affinity, which DuckDB's names fit."""
    upper = (declared or "").upper()
    if "BOOL" in upper:
        return _to_bool
    if "INTERVAL" in upper or "POINT" in upper:
        return None
    if "INT" in upper:
        return _to_int
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        return _to_float
    return None


_KIND: dict[Callable[[str], Any], str] = {
    _to_int: "an integer",
    _to_float: "a number",
    _to_bool: "a boolean",
}


# --- reading -------------------------------------------------------------------------------------


@dataclass
class Chunk:
    """Rows ready to insert, with where they came from (for errors and progress)."""

    rows: list[tuple[Any, ...]]
    first: int  # first line (or row) number of the chunk
    last: int
    done: int  # bytes (or characters, or rows) of the source read so far
    groups: list[list[Any]] | None = None  # the rows by shard, on a distributed connection


class _Lines:
    """An iterable of text (or bytes) lines with the ``readlines(hint)`` of a file."""

    def __init__(self, first: Any, rest: Iterator[Any]) -> None:
        self._items = itertools.chain([first], rest)

    def readlines(self, hint: int) -> list[str]:
        out: list[str] = []
        size = 0
        for item in self._items:
            line = item.decode("utf-8") if isinstance(item, (bytes, bytearray)) else item
            if not isinstance(line, str):
                raise ProgrammingError(
                    f"an iterable source holds lines (str) or rows (tuples), not a mix:"
                    f" got {type(item).__name__}"
                )
            if not line.endswith(("\n", "\r")):
                line += "\n"
            out.append(line)
            size += len(line)
            if size >= hint:
                break
        return out


class _Source:
    """What copy_from reads: text lines (a file or an iterable of lines) or rows (tuples)."""

    def __init__(self, source: Any) -> None:
        self.text: Any = None  # something with readlines(hint)
        self.rows: Iterator[Any] | None = None
        self.raw: Any = None  # the binary file under a text one, for progress in bytes
        self._close: list[IO[Any]] = []
        if isinstance(source, (str, os.PathLike)):
            try:
                binary = open(source, "rb")  # noqa: SIM115 - closed by close()
            except OSError as exc:
                raise InterfaceError(f"cannot open {os.fspath(source)!r}: {exc}") from exc
            self._close.append(binary)
            self.raw = binary
            self.text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
        elif hasattr(source, "read"):
            if isinstance(source, io.TextIOBase) or hasattr(source, "encoding"):
                self.text = source
            else:
                self.text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
                self.raw = source
        elif isinstance(source, (bytes, bytearray)):
            raise ProgrammingError("copy_from takes a path, a file object or an iterable; bytes"
                                   " are none of them (wrap them in io.BytesIO)")  # fmt: skip
        elif hasattr(source, "__iter__"):
            items = iter(source)
            first = next(items, None)
            if first is None:
                self.rows = iter(())
            elif isinstance(first, (str, bytes, bytearray)):
                self.text = _Lines(first, items)
            else:
                self.rows = itertools.chain([first], items)
        else:
            raise ProgrammingError(
                "copy_from reads a path, a file object, or an iterable of rows or lines,"
                f" not {type(source).__name__}"
            )

    def position(self, chars: int) -> int:
        """How far the source has been read: bytes where known, else characters."""
        if self.raw is not None:
            try:
                return int(self.raw.tell())
            except (OSError, ValueError, AttributeError):
                return chars
        return chars

    def close(self) -> None:
        for f in self._close:
            f.close()


def _split_exact(raw: str, delimiter: str) -> list[tuple[str, bool]]:
    """One CSV record as (value, quoted) pairs: what the csv module cannot say in Python 3.11
    (only needed for a record with a quote and a field that looks like NULL)."""
    fields: list[tuple[str, bool]] = []
    value: list[str] = []
    quoted = in_quotes = False
    i, n = 0, len(raw.rstrip("\r\n"))
    while i < n:
        c = raw[i]
        if in_quotes:
            if c == '"':
                if i + 1 < n and raw[i + 1] == '"':
                    value.append('"')
                    i += 1
                else:
                    in_quotes = False
            else:
                value.append(c)
        elif c == '"':
            in_quotes = quoted = True
        elif c == delimiter:
            fields.append(("".join(value), quoted))
            value, quoted = [], False
        else:
            value.append(c)
        i += 1
    fields.append(("".join(value), quoted))
    return fields


class _Reader:
    """Turns a source into chunks of typed rows."""

    def __init__(
        self,
        source: _Source,
        names: list[str],
        convert: list[Callable[[str], Any] | None],
        options: CopyOptions,
        table: str,
    ) -> None:
        self.source = source
        self.names = names
        self.convert = convert
        self.options = options
        self.table = table
        self.width = len(names)

    def chunks(self) -> Iterator[Chunk]:
        """Every chunk of the source, in order."""
        if self.source.rows is not None:
            yield from self._row_chunks(self.source.rows)
        elif self.options.format == "csv":
            yield from self._csv_chunks()
        else:
            yield from self._json_chunks()

    # -- rows given as tuples

    def _row_chunks(self, rows: Iterator[Any]) -> Iterator[Chunk]:
        number = 0
        while True:
            part = list(itertools.islice(rows, _ROW_CHUNK))
            if not part:
                return
            out = []
            for row in part:
                number += 1
                if isinstance(row, (str, bytes, Mapping)) or not hasattr(row, "__len__"):
                    raise DataError(
                        f"copy into {self.table}, row {number}: expected a sequence of"
                        f" {self.width} values, got {type(row).__name__}"
                    )
                if len(row) != self.width:
                    raise DataError(
                        f"copy into {self.table}, row {number}: expected {self.width} values,"
                        f" got {len(row)}"
                    )
                out.append(tuple(row))
            yield Chunk(out, number - len(part) + 1, number, number)

    # -- CSV

    def _dialect(self) -> dict[str, Any]:
        return {"delimiter": self.options.delimiter, "quotechar": '"', "doublequote": True,
                "strict": True, "skipinitialspace": False}  # fmt: skip

    def _csv_blocks(self) -> Iterator[tuple[list[str], int, int, bool]]:
        """The source as blocks of whole records: (lines, lines before the block, characters
        read so far, whether its quotes pair up), the header dropped. A block ends where the
        count of quote characters is even, that is outside any quoted field (or at the end)."""
        text = self.source.text
        pending: list[str] = []
        quotes = before = chars = 0
        header = self.options.header
        while True:
            lines = text.readlines(_READ_HINT)
            if lines:
                chars += sum(map(len, lines))
                quotes += "".join(lines).count('"')
                pending += lines
                if quotes % 2:
                    continue  # a quoted field runs on: read on to its end
            if header and pending:
                reader = csv.reader(pending, **self._dialect())
                try:
                    next(reader, None)
                except csv.Error as exc:
                    raise DataError(f"copy into {self.table}, line 1 (the header): {exc}") from None
                before, pending, header = reader.line_num, pending[reader.line_num :], False
            if not pending:
                if not lines:
                    return
                continue
            yield pending, before, chars, not quotes % 2
            before += len(pending)
            pending = []

    def _csv_chunks(self) -> Iterator[Chunk]:
        arrow = _arrow_parser(self) if self.width > 1 else None
        for lines, before, chars, paired in self._csv_blocks():
            rows = arrow(lines) if arrow is not None and paired else None
            if rows is None:  # no pyarrow, or it refused the block: the exact errors come here
                rows = self._python_block(lines, before)
            if rows:
                done = self.source.position(chars)
                yield Chunk(rows, before + 1, before + len(lines), done)

    def _python_block(self, lines: list[str], before: int) -> list[tuple[Any, ...]]:
        """One block parsed by the csv module: the reference semantics, and the errors."""
        reader = csv.reader(lines, **self._dialect())
        records: list[list[str]] = []
        ends: list[int] = []
        try:
            for record in reader:
                records.append(record)
                ends.append(reader.line_num)
        except csv.Error as exc:
            line = before + (ends[-1] if ends else 0) + 1
            raise DataError(f"copy into {self.table}, line {line}: {exc}") from None
        return self._typed(records, ends, lines, before, 0) if records else []

    def _typed(
        self, records: list[list[str]], ends: list[int], lines: list[str], before: int, start: int
    ) -> list[tuple[Any, ...]]:
        """Records of one block as typed rows. ``ends[i]``: the block line that ends record i;
        ``start``: the block line before the first record; ``before``: lines before the block."""
        starts = [start, *ends[:-1]]  # the block line before each record
        if set(map(len, records)) != {self.width}:
            records, starts, ends = self._fix_widths(records, starts, ends, before)
            if not records:
                return []
        columns = list(zip(*records, strict=True))
        out: list[Any] = []
        for index, (column, convert) in enumerate(zip(columns, self.convert, strict=True)):
            if self.options.null not in column:
                try:
                    out.append(list(column) if convert is None else list(map(convert, column)))
                    continue
                except (ValueError, OverflowError):
                    pass  # a bad value: the slow path below names its line
            out.append(self._slow(column, convert, index, (starts, ends, lines, before)))
        return list(zip(*out, strict=True))

    def _fix_widths(
        self, records: list[list[str]], starts: list[int], ends: list[int], before: int
    ) -> tuple[list[list[str]], list[int], list[int]]:
        """Blank lines dropped (a NULL row for a one-column table); a record of another width
        is a DataError."""
        kept: tuple[list[list[str]], list[int], list[int]] = ([], [], [])
        for record, first, end in zip(records, starts, ends, strict=True):
            if not record:
                if self.width != 1:
                    continue
                record = [self.options.null]
            elif len(record) != self.width:
                raise DataError(
                    f"copy into {self.table}, line {before + first + 1}: expected {self.width}"
                    f" fields ({', '.join(self.names)}), got {len(record)}"
                )
            kept[0].append(record)
            kept[1].append(first)
            kept[2].append(end)
        return kept

    def _slow(
        self,
        column: tuple[str, ...],
        convert: Callable[[str], Any] | None,
        index: int,
        where: tuple[list[int], list[int], list[str], int],
    ) -> list[Any]:
        """One column converted value by value: NULLs told from quoted text, bad values named
        by their line."""
        starts, ends, lines, before = where
        null = self.options.null
        out: list[Any] = []
        for i, value in enumerate(column):
            if value == null:
                raw = "".join(lines[starts[i] : ends[i]])
                if '"' not in raw or not _split_exact(raw, self.options.delimiter)[index][1]:
                    out.append(None)
                    continue
            if convert is None:
                out.append(value)
                continue
            try:
                out.append(convert(value))
            except (ValueError, OverflowError):
                raise DataError(
                    f"copy into {self.table}, line {before + starts[i] + 1}, column"
                    f" {self.names[index]}: {value!r} is not {_KIND.get(convert, 'valid')}"
                ) from None
        return out

    # -- JSON lines

    def _json_chunks(self) -> Iterator[Chunk]:
        text = self.source.text
        number = 0
        chars = 0
        positions = {name.lower(): i for i, name in enumerate(self.names)}
        while True:
            lines = text.readlines(_READ_HINT)
            if not lines:
                return
            chars += sum(map(len, lines))
            first = number + 1
            rows = []
            for line in lines:
                number += 1
                if not line.strip():
                    continue
                rows.append(self._json_row(line, number, positions))
            if rows:
                yield Chunk(rows, first, number, self.source.position(chars))

    def _json_row(self, line: str, number: int, positions: dict[str, int]) -> tuple[Any, ...]:
        where = f"copy into {self.table}, line {number}"
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{where}: not JSON: {exc}") from None
        values: list[Any]
        if isinstance(item, dict):
            values = [None] * self.width
            for key, value in item.items():
                i = positions.get(str(key).lower())
                if i is None:
                    raise DataError(f"{where}: no column {key!r} among {', '.join(self.names)}")
                values[i] = value
        elif isinstance(item, list):
            if len(item) != self.width:
                raise DataError(f"{where}: expected {self.width} values, got {len(item)}")
            values = item
        else:
            raise DataError(f"{where}: expected a JSON object or array")
        for i, (value, convert) in enumerate(zip(values, self.convert, strict=True)):
            if isinstance(value, str) and convert is not None:
                try:
                    values[i] = convert(value)
                except (ValueError, OverflowError):
                    raise DataError(
                        f"{where}, column {self.names[i]}: {value!r} is not"
                        f" {_KIND.get(convert, 'valid')}"
                    ) from None
            elif isinstance(value, (dict, list)):
                values[i] = json.dumps(value, ensure_ascii=False)
        return tuple(values)


def _arrow_parser(reader: _Reader) -> Callable[[list[str]], list[tuple[Any, ...]] | None] | None:
    """A faster parser of one block of whole CSV records, with pyarrow when it is installed:
    the same rules (an unquoted NULL marker is NULL, a quoted one is text; integers and reals
    typed as the csv path types them, the rest converted as there). It answers None for a block
    it refuses (a bad field, a row of another width ...): the csv path then parses that block
    and raises the error naming the line. Blank lines are skipped, as there (tables of two
    columns or more)."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:
        return None
    names = [f"c{i}" for i in range(reader.width)]
    kinds: dict[Callable[[str], Any] | None, Any] = {_to_int: pa.int64(), _to_float: pa.float64()}
    types = {n: kinds.get(c, pa.string()) for n, c in zip(names, reader.convert, strict=True)}
    after = [(i, c) for i, c in enumerate(reader.convert) if c is not None and c not in kinds]
    read_options = pacsv.ReadOptions(column_names=names, block_size=_READ_HINT * 4)
    parse_options = pacsv.ParseOptions(
        delimiter=reader.options.delimiter,
        quote_char='"',
        double_quote=True,
        escape_char=False,
        newlines_in_values=True,
        ignore_empty_lines=True,
    )
    convert_options = pacsv.ConvertOptions(
        column_types=types,
        null_values=[reader.options.null],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )

    def parse(lines: list[str]) -> list[tuple[Any, ...]] | None:
        data = "".join(lines).encode("utf-8")
        try:
            table = pacsv.read_csv(
                io.BytesIO(data),
                read_options=read_options,
                parse_options=parse_options,
                convert_options=convert_options,
            )
        except (pa.ArrowException, ValueError):
            return None
        columns = [column.to_pylist() for column in table.columns]
        try:
            for i, convert in after:
                columns[i] = [None if v is None else convert(v) for v in columns[i]]
        except (ValueError, OverflowError):
            return None
        return list(zip(*columns, strict=True))

    return parse


class _Prefetch:
    """Runs an iterator in a thread, ``depth`` items ahead: the next chunk is read and
    converted while the nodes insert this one."""

    _END = object()

    def __init__(self, items: Iterator[Any], depth: int = _PREFETCH) -> None:
        self._items = items
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="exdb-copy-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> Chunk | None:
        """The next chunk, or None at the end (the reader's error is raised here)."""
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if self._stop.is_set():  # closed: nothing more will come
                    return None
        if item is self._END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the reader thread and wait for it."""
        self._stop.set()
        self._thread.join(timeout=10)


# --- the jobs -----------------------------------------------------------------------------------


Step = tuple[Any, ...]
Job = Generator[Step, Any, int]


def copy_from_job(
    source: Any,
    table: str,
    columns: Iterable[str] | None,
    options: CopyOptions,
    progress: Progress | None = None,
) -> Job:
    """copy_from as steps for a door to run (see :func:`run_sync`); returns the row count."""
    options.check()
    if not isinstance(table, str) or not _IDENTIFIER.match(table):
        raise ProgrammingError(f"copy_from needs a table name, not {table!r}")
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",")]
    describe = f"SELECT name, type FROM pragma_table_info({_sql_string(_bare(table))})"
    try:
        declared = yield ("query", describe)
    except ProgrammingError as exc:  # DuckDB's own words for a missing table
        raise ProgrammingError(f"no such table: {_bare(table)}", node=exc.node) from exc
    if not declared:
        raise ProgrammingError(f"no such table: {_bare(table)}")
    types = {str(name).lower(): (str(name), kind) for name, kind in declared}
    wanted = list(columns) if columns is not None else [name for name, _ in declared]
    if not wanted:
        raise ProgrammingError("copy_from needs at least one column")
    names, converters = [], []
    for column in wanted:
        found = types.get(_bare(column).lower())
        if found is None:
            raise ProgrammingError(f"table {_bare(table)} has no column {_bare(column)}")
        names.append(found[0])
        converters.append(converter(found[1]))
    sql = (
        f"INSERT INTO {quote_identifier(table)} ({', '.join(map(quote_identifier, names))})"
        f" VALUES ({', '.join(['?'] * len(names))})"
    )
    # On a distributed connection, the plan that places rows by key: the reader thread places
    # each chunk while the shards insert the one before.
    plan = yield ("placer", sql)
    src = _Source(source)
    fetcher: _Prefetch | None = None
    own = False
    total = 0
    try:
        own = yield ("autocommit", False)  # True: it was on; the copy is its own transaction
        reader = _Reader(src, names, converters, options, _bare(table))
        fetcher = _Prefetch(_placed(reader.chunks(), plan))
        while (chunk := (yield ("next", fetcher))) is not None:
            try:
                if chunk.groups is not None:
                    count = yield ("insert_groups", plan, chunk.groups)
                else:
                    count = yield ("insert", sql, chunk.rows)
            except Error as exc:
                raise _in_lines(exc, chunk, _bare(table)) from exc
            total += count if count >= 0 else len(chunk.rows)
            if progress is not None:
                progress(total, chunk.done)
        if own:
            yield ("commit",)
    except GeneratorExit:  # the door gave the job up: it runs no more steps
        own = False
        raise
    except BaseException as exc:
        try:
            yield ("rollback",)
        except Error as second:  # the copy's own error is the one to raise
            exc.add_note(f"the rollback after it failed too: {second}")
        if isinstance(exc, Error) and not own:
            message = f"{exc.message} (the open transaction was rolled back)"
            raise type(exc)(message, node=exc.node, statement=exc.statement) from exc
        raise
    finally:
        if fetcher is not None:
            fetcher.close()
        src.close()
        if own:
            yield ("autocommit", True)
    return total


def _placed(chunks: Iterator[Chunk], plan: Any) -> Iterator[Chunk]:
    """Chunks with their rows grouped by shard by ``plan`` (an InsertPlan and its engine)."""
    for chunk in chunks:
        if plan is not None:
            chunk.groups = plan[0].place_rows(plan[1], chunk.rows)
        yield chunk


def _placer(conn: Any, sql: str) -> Any:
    """(InsertPlan, engine) for a distributed connection's bulk INSERT, else None."""
    engine = getattr(conn, "engine", None)
    bulk_placer = getattr(engine, "bulk_placer", None)
    if bulk_placer is None:
        return None
    plan = bulk_placer(sql)
    return None if plan is None else (plan, engine)


def _in_lines(exc: Error, chunk: Chunk, table: str) -> Error:
    """The node's error on a chunk's rows, saying which lines they were."""
    where = f"copy into {table}, the rows of lines {chunk.first}-{chunk.last}"
    return type(exc)(f"{where}: {exc.message}", node=exc.node)


def copy_to_job(dest: Any, table_or_query: str, options: CopyOptions) -> Job:
    """copy_to as steps for a door to run; returns the row count."""
    options.check()
    if not isinstance(table_or_query, str):
        raise ProgrammingError(f"copy_to needs a table name or a query, not {table_or_query!r}")
    if _IDENTIFIER.match(table_or_query):
        sql = f"SELECT * FROM {quote_identifier(table_or_query)}"
    elif _QUERY.match(table_or_query):
        sql = table_or_query
    else:
        raise ProgrammingError(
            "copy_to takes a table name or a query (SELECT, WITH, VALUES ...), not"
            f" {table_or_query[:60]!r}"
        )
    out, close = _open_dest(dest)
    try:
        names = yield ("execute", sql)
        if names is None:
            raise ProgrammingError("copy_to needs a statement that returns rows", statement=sql)
        write = _csv_writer(out, options) if options.format == "csv" else _json_writer(out, names)
        if options.format == "csv" and options.header:
            write([names])
        total = 0
        while rows := (yield ("fetch", _FETCH_ROWS)):
            write(rows)
            total += len(rows)
        return total
    finally:
        close()


def _open_dest(dest: Any) -> tuple[Callable[[str], Any], Callable[[], None]]:
    if isinstance(dest, (str, os.PathLike)):
        try:
            f = open(dest, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise InterfaceError(f"cannot write {os.fspath(dest)!r}: {exc}") from exc
        return f.write, f.close
    if not hasattr(dest, "write"):
        raise ProgrammingError(
            f"copy_to writes to a path or a file object, not {type(dest).__name__}"
        )
    if isinstance(dest, io.TextIOBase) or hasattr(dest, "encoding"):
        return dest.write, lambda: None
    return (lambda text: dest.write(text.encode("utf-8"))), lambda: None


def _csv_writer(write: Callable[[str], Any], options: CopyOptions) -> Callable[[list[Any]], None]:
    delimiter, null = options.delimiter, options.null
    special = re.compile("[" + re.escape(delimiter) + '"\r\n]')

    def field(value: Any) -> str:
        if value is None:
            return null
        if isinstance(value, str):
            text = value
        elif isinstance(value, bool):
            return "true" if value else "false"
        elif isinstance(value, (int, float)):
            return repr(value)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            return "\\x" + bytes(value).hex()
        else:
            text = str(value)
        if text == null or special.search(text):
            return '"' + text.replace('"', '""') + '"'
        return text

    def rows(batch: list[Any]) -> None:
        write("".join(delimiter.join(map(field, row)) + "\n" for row in batch))

    return rows


def _json_writer(write: Callable[[str], Any], names: list[str]) -> Callable[[list[Any]], None]:
    def default(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return "\\x" + bytes(value).hex()
        return str(value)

    def rows(batch: list[Any]) -> None:
        write(
            "".join(
                json.dumps(dict(zip(names, row, strict=True)), ensure_ascii=False, default=default)
                + "\n"
                for row in batch
            )
        )

    return rows


# --- the drivers --------------------------------------------------------------------------------


def _names(cursor: Any) -> list[str] | None:
    description = cursor.description
    return None if description is None else [d[0] for d in description]


def run_sync(cursor: Any, job: Job) -> int:
    """Run a copy job with a synchronous cursor (exdb.Cursor, DistributedCursor)."""
    conn = cursor.connection
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = job.send(value) if error is None else job.throw(error)
        except StopIteration as stop:
            return int(stop.value)
        value, error = None, None
        try:
            kind = step[0]
            if kind == "query":
                value = cursor.execute(step[1]).fetchall()
            elif kind == "execute":
                cursor.execute(step[1])
                value = _names(cursor)
            elif kind == "fetch":
                value = cursor.fetchmany(step[1])
            elif kind == "next":
                value = step[1].get()
            elif kind == "insert":
                cursor.executemany(step[1], step[2])
                value = cursor.rowcount
            elif kind == "placer":
                value = _placer(conn, step[1])
            elif kind == "insert_groups":
                plan, engine = step[1]
                value = conn._drive(plan.execute_groups(engine, step[2])).rowcount
            elif kind == "autocommit":
                value = conn.autocommit
                conn.autocommit = step[1]
            elif kind == "commit":
                conn.commit()
            elif kind == "rollback":
                conn.rollback()
        except BaseException as exc:
            error = exc


async def run_async(cursor: Any, job: Job) -> int:
    """Run a copy job with an asyncio cursor (AsyncCursor, AioDistributedCursor): the file is
    read in a thread, so the event loop does not wait on it."""
    import asyncio

    conn = cursor.connection
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = job.send(value) if error is None else job.throw(error)
        except StopIteration as stop:
            return int(stop.value)
        value, error = None, None
        try:
            kind = step[0]
            if kind == "query":
                await cursor.execute(step[1])
                value = await cursor.fetchall()
            elif kind == "execute":
                await cursor.execute(step[1])
                value = _names(cursor)
            elif kind == "fetch":
                value = await cursor.fetchmany(step[1])
            elif kind == "next":
                value = await asyncio.to_thread(step[1].get)
            elif kind == "insert":
                await cursor.executemany(step[1], step[2])
                value = cursor.rowcount
            elif kind == "placer":
                value = _placer(conn, step[1])
            elif kind == "insert_groups":
                plan, engine = step[1]
                value = (await conn._drive(plan.execute_groups(engine, step[2]))).rowcount
            elif kind == "autocommit":
                value = conn.autocommit
                conn.autocommit = step[1]
            elif kind == "commit":
                await conn.commit()
            elif kind == "rollback":
                await conn.rollback()
        except BaseException as exc:
            error = exc
