"""Completion for the shell: SQL keywords, meta-commands, and the tables and columns of the
distributed catalog and of the first shard's schema."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from exdb.distributed.catalog import INTERNAL_TABLES as _INTERNAL_TABLES
from exdb.errors import Error
from exdb.shell.meta import META_COMMANDS

__all__ = ["KEYWORDS", "Schema", "SqlCompleter"]

KEYWORDS = sorted(
    [
        "SELECT",
        "FROM",
        "WHERE",
        "GROUP",
        "BY",
        "ORDER",
        "HAVING",
        "LIMIT",
        "OFFSET",
        "INSERT",
        "INTO",
        "VALUES",
        "UPDATE",
        "SET",
        "DELETE",
        "CREATE",
        "TABLE",
        "DROP",
        "ALTER",
        "ADD",
        "COLUMN",
        "INDEX",
        "VIEW",
        "TRIGGER",
        "PRIMARY",
        "KEY",
        "REFERENCES",
        "UNIQUE",
        "NOT",
        "NULL",
        "DEFAULT",
        "CHECK",
        "AND",
        "OR",
        "IN",
        "IS",
        "LIKE",
        "BETWEEN",
        "EXISTS",
        "CASE",
        "WHEN",
        "THEN",
        "ELSE",
        "END",
        "AS",
        "ON",
        "JOIN",
        "LEFT",
        "RIGHT",
        "INNER",
        "OUTER",
        "CROSS",
        "FULL",
        "UNION",
        "ALL",
        "DISTINCT",
        "ASC",
        "DESC",
        "WITH",
        "RECURSIVE",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "INTEGER",
        "TEXT",
        "REAL",
        "BLOB",
        "VARCHAR",
        "BOOLEAN",
        "DOUBLE",
        "BIGINT",
        "DATE",
        "TIMESTAMP",
        "COUNT",
        "SUM",
        "AVG",
        "MIN",
        "MAX",
        "IF",
        "REPLACE",
        "RETURNING",
        "EXPLAIN",
        "CAST",
        "COALESCE",
    ]
)

_KEYWORD_SET = set(KEYWORDS) | {"NATURAL", "USING", "LATERAL", "SAMPLE"}

#: Keywords after which a table name comes.
_TABLE_CONTEXT = {"FROM", "JOIN", "INTO", "UPDATE", "TABLE", "\\D", "\\DT", "\\COPY"}

_SHARD_COLUMNS = {
    "sqlite": "1:SELECT m.name, p.name FROM sqlite_master AS m, pragma_table_info(m.name) AS p"
    " WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite_%' ORDER BY m.name, p.cid",
    "duckdb": "1:SELECT table_name, column_name FROM information_schema.columns"
    " ORDER BY table_name, ordinal_position",
}


class Schema:
    """Table and column names, read from a distributed connection."""

    def __init__(self) -> None:
        self.tables: dict[str, list[str]] = {}
        self.error: str | None = None  # why the shard's schema could not be read, if it could not

    def load(self, conn: Any) -> None:
        """Read the catalog (every table exdb places) and the first shard's own tables."""
        tables: dict[str, list[str]] = {}
        engine = conn.engine
        conn._drive(engine.load_catalog())
        for info in engine.catalog.tables.values():
            tables[info.name] = [name for name, _ in info.columns]
        query = _SHARD_COLUMNS.get(engine.engine)
        self.error = None
        if query is not None:
            cur = conn.cursor()
            try:
                cur.execute(query)
                for table, column in cur.fetchall():
                    if table in _INTERNAL_TABLES:
                        continue
                    columns = tables.setdefault(table, [])
                    if column not in columns:
                        columns.append(column)
            except Error as exc:  # the catalog alone still completes every placed table
                self.error = str(exc)
            finally:
                cur.close()
        self.tables = tables

    def columns(self, tables: Iterable[str]) -> list[str]:
        """The columns of the named tables (case-insensitive), without duplicates."""
        lower = {name.lower(): cols for name, cols in self.tables.items()}
        out: list[str] = []
        for table in tables:
            for column in lower.get(table.lower(), []):
                if column not in out:
                    out.append(column)
        return out


_WORD = re.compile(r"[\w$]*$")
_DOTTED = re.compile(r"([\w$]+)\.([\w$]*)$")
_PREVIOUS = re.compile(r"(\\?[\w$]+)[\s,()]*$")
_TABLE_REFS = re.compile(
    r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+([\w$]+)(?:\s+(?:AS\s+)?([\w$]+))?", re.IGNORECASE
)


def _case(word: str, typed: str) -> str:
    return word.lower() if typed and typed == typed.lower() and word.isupper() else word


class SqlCompleter(Completer):
    """Completes keywords, tables (after FROM, JOIN, INTO, UPDATE, \\d ...), ``table.column``
    and the columns of the tables the statement names."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        """The completions of the word before the cursor."""
        before = document.text_before_cursor
        yield from self.words(before, document.text)

    def words(self, before: str, text: str) -> Iterator[Completion]:
        """Completions for the text before the cursor (``text``: the whole buffer)."""
        line = before.rsplit("\n", 1)[-1]
        if line.lstrip().startswith("\\") and " " not in line.lstrip():
            typed = line.lstrip()
            for name in META_COMMANDS:
                if name.startswith(typed.lower()):
                    yield Completion(name, -len(typed))
            return
        refs = {m.group(1): m.group(1) for m in _TABLE_REFS.finditer(text)}
        refs.update(
            {
                m.group(2): m.group(1)
                for m in _TABLE_REFS.finditer(text)
                if m.group(2) and m.group(2).upper() not in _KEYWORD_SET
            }
        )
        dotted = _DOTTED.search(before)
        if dotted is not None:
            table = refs.get(dotted.group(1), dotted.group(1))
            typed = dotted.group(2)
            for column in self.schema.columns([table]):
                if column.lower().startswith(typed.lower()):
                    yield Completion(column, -len(typed))
            return
        typed = _WORD.search(before).group()  # type: ignore[union-attr]
        head = before[: len(before) - len(typed)]
        previous = _PREVIOUS.search(head)
        context = previous.group(1).upper() if previous else ""
        candidates: list[str]
        if context in _TABLE_CONTEXT:
            candidates = sorted(self.schema.tables)
        else:
            named = list(refs.values()) or sorted(self.schema.tables)  # none named yet: all
            candidates = self.schema.columns(named) + sorted(self.schema.tables) + KEYWORDS
        seen: set[str] = set()
        for candidate in candidates:
            if candidate.lower().startswith(typed.lower()) and candidate.lower() != typed.lower():
                shown = _case(candidate, typed)
                if shown not in seen:
                    seen.add(shown)
                    yield Completion(shown, -len(typed))
