"""Output formats of ``exdb shell`` and ``exdb run``: table, plain, CSV and JSON.

- ``table``: a rich table on a terminal, plain aligned text elsewhere (pipes, files);
- ``plain``: aligned text, psql-like, always;
- ``csv``: a header line, then one line a row (RFC 4180 quoting; NULL is an empty field);
- ``json``: one JSON array of objects a result, one object a line.

Values are shown exactly: decimals keep their digits (a JSON number written from the text),
bytes are written as ``\\x`` and hex digits, dates and times in ISO 8601.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import json
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

__all__ = ["FORMATS", "render_value", "status_line", "write_result"]

FORMATS = ("table", "plain", "csv", "json")


def render_value(value: Any, null: str = "NULL") -> str:
    """A value as text, for the table and CSV formats."""
    if value is None:
        return null
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)


def _json_value(value: Any) -> str:
    if isinstance(value, decimal.Decimal) and value.is_finite():
        return str(value)
    if isinstance(value, float) and value != value:  # NaN: not a JSON number
        return '"NaN"'
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return '"Infinity"' if value > 0 else '"-Infinity"'
    if isinstance(value, (str, int, bool)) or value is None:
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_json_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (
            f"{json.dumps(str(k), ensure_ascii=False)}: {_json_value(v)}" for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    if isinstance(value, float):
        return json.dumps(value)
    return json.dumps(render_value(value), ensure_ascii=False)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool)


def _numeric_columns(n: int, rows: list[tuple[Any, ...]]) -> list[bool]:
    """Which columns hold only numbers (and NULLs): they are right-aligned."""
    return [bool(rows) and all(_is_number(r[i]) or r[i] is None for r in rows) for i in range(n)]


def status_line(rows: int) -> str:
    """The line under a table: ``(1 row)``, ``(3 rows)``."""
    return f"({rows} row{'' if rows == 1 else 's'})"


def write_result(
    out: TextIO, columns: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str
) -> int:
    """Write one result set in ``fmt``; return the number of rows written."""
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        n = 0
        for row in rows:
            writer.writerow([render_value(v, "") for v in row])
            n += 1
        return n
    if fmt == "json":
        names = [json.dumps(str(c), ensure_ascii=False) for c in columns]
        n = 0
        out.write("[")
        for row in rows:
            fields = ", ".join(f"{k}: {_json_value(v)}" for k, v in zip(names, row, strict=True))
            out.write(("\n" if n == 0 else ",\n") + "{" + fields + "}")
            n += 1
        out.write("\n]\n" if n else "]\n")
        return n
    if fmt not in ("table", "plain"):
        raise ValueError(f"unknown output format {fmt!r}: choose one of {', '.join(FORMATS)}")
    data = [tuple(row) for row in rows]
    if fmt == "table" and out.isatty():
        _rich_table(out, columns, data)
    else:
        _plain_table(out, columns, data)
    out.write(status_line(len(data)) + "\n")
    return len(data)


def _rich_table(out: TextIO, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    numeric = [
        bool(rows) and all(_is_number(r[i]) or r[i] is None for r in rows)
        for i in range(len(columns))
    ]
    table = Table(*[str(c) for c in columns], show_edge=True, highlight=False)
    for i, column in enumerate(table.columns):
        if numeric[i]:
            column.justify = "right"
    for row in rows:
        table.add_row(*[Text(render_value(v), style="dim" if v is None else "") for v in row])
    Console(file=out, soft_wrap=False).print(table)


def _plain_table(out: TextIO, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    cells = [[render_value(v) for v in row] for row in rows]
    widths = [len(str(c)) for c in columns]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    numeric = [
        bool(rows) and all(_is_number(r[i]) or r[i] is None for r in rows)
        for i in range(len(columns))
    ]
    out.write(
        " " + " | ".join(str(c).center(w) for c, w in zip(columns, widths, strict=True)) + "\n"
    )
    out.write("-" + "-+-".join("-" * w for w in widths) + "-\n")
    for row in cells:
        parts = [
            text.rjust(w) if numeric[i] else text.ljust(w)
            for i, (text, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.write(" " + " | ".join(parts).rstrip() + "\n")
