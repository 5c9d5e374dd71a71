"""Distribution metadata: how each table is placed. It is stored on every node (table
``exdb_catalog``), so that every client, worker and process agrees on it; clients cache it.

Kinds of table:

- ``distributed``: rows spread by the hash of one column (default: the first PRIMARY KEY column;
  ``SELECT create_distributed_table('t', 'col')`` picks another);
- ``reference``: a full copy on every node (``SELECT create_reference_table('t')``);
- ``keyless``: no key; rows spread round-robin.

A view is a row of kind ``view`` (no distribution column; ``ddl`` holds its CREATE VIEW text):
see exdb.distributed.views.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from typing import Any

from sqlglot import exp

from exdb.distributed.placement import affinity
from exdb.distributed.views import ViewInfo, view_from_row
from exdb.errors import NotSupportedError

__all__ = [
    "CATALOG_DDL",
    "CATALOG_TABLE",
    "Catalog",
    "TableInfo",
    "rowid_alias",
    "table_from_create",
]

CATALOG_TABLE = "exdb_catalog"
#: exdb's own tables on every node (the catalog, two-phase commit's decisions and finished
#: parts, replicas' stale marks): hidden from table listings, as one database would not have
#: them.
INTERNAL_TABLES = frozenset(
    {CATALOG_TABLE, "exdb_decisions", "exdb_prepared_done", "exdb_replica_marks"}
)
CATALOG_DDL = (
    f"CREATE TABLE IF NOT EXISTS {CATALOG_TABLE} (name VARCHAR PRIMARY KEY,"
    " kind VARCHAR NOT NULL, dist_column VARCHAR, ddl VARCHAR NOT NULL)"
)
CATALOG_SELECT = f"SELECT name, kind, dist_column, ddl FROM {CATALOG_TABLE}"
CATALOG_UPSERT = f"INSERT OR REPLACE INTO {CATALOG_TABLE} VALUES (?, ?, ?, ?)"
CATALOG_DELETE = f"DELETE FROM {CATALOG_TABLE} WHERE name = ?"


@dataclasses.dataclass
class TableInfo:
    """One table's placement and schema."""

    name: str
    kind: str  # "distributed" | "reference" | "keyless"
    column: str | None  # the distribution column of a distributed table
    columns: list[tuple[str, str]]  # (name, declared type), in order
    ddl: list[str]  # the statements that built it (CREATE, then ALTERs), replayed locally

    @property
    def column_affinity(self) -> str:
        """The affinity of the distribution column."""
        for name, declared in self.columns:
            if name == self.column:
                return affinity(declared)
        return "BLOB"

    def column_index(self, name: str) -> int | None:
        """Position of a column, by case-insensitive name."""
        low = name.lower()
        for i, (col, _) in enumerate(self.columns):
            if col.lower() == low:
                return i
        return None

    def row(self) -> tuple[Any, ...]:
        """The catalog row stored on the nodes."""
        return (self.name, self.kind, self.column, json.dumps(self.ddl))


@functools.lru_cache(maxsize=256)
def sqlite_declared_types(ddl: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The declared types SQLite records for the table the DDL builds (lower-case name, type as
    written); empty when the DDL does not run on the standard library's SQLite. sqlglot's
    rendering of a type can change its affinity (STRING is NUMERIC to SQLite, TEXT once
    rendered), and the affinity decides where a key is placed and how values compare."""
    import sqlite3

    con = sqlite3.connect(":memory:")
    try:
        for text in ddl:
            con.execute(text)
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        if len(tables) != 1:
            return ()
        rows = con.execute("SELECT name, type FROM pragma_table_info(?)", (tables[0],))
        return tuple((str(name).lower(), str(kind or "")) for name, kind in rows)
    except sqlite3.Error:
        return ()
    finally:
        con.close()


def table_from_create(tree: exp.Create, text: str, dialect: str | None = None) -> TableInfo:
    """A TableInfo from a CREATE TABLE statement (its text is kept to replay it verbatim); on
    SQLite, each column's type as SQLite records it."""
    schema = tree.this
    if not isinstance(schema, exp.Schema):
        what = "CREATE TABLE ... AS SELECT"
        if tree.find(exp.VirtualProperty) is not None:
            what = "CREATE VIRTUAL TABLE"
        raise NotSupportedError(
            f"{what} is not supported on a distributed connection;"
            " create the table with its columns, then INSERT ... SELECT",
            statement=text,
        )
    name = schema.this.name.lower()
    columns: list[tuple[str, str]] = []
    primary: list[str] = []
    for item in schema.expressions:
        if isinstance(item, exp.ColumnDef):
            kind = item.args.get("kind")
            columns.append((item.name, kind.sql("sqlite") if kind is not None else ""))
            for constraint in item.args.get("constraints") or []:
                if isinstance(constraint.args.get("kind"), exp.PrimaryKeyColumnConstraint):
                    primary.append(item.name)
        elif isinstance(item, exp.PrimaryKey):
            primary.extend(e.name for e in item.expressions)
    if dialect == "sqlite":
        declared = dict(sqlite_declared_types((text,)))
        columns = [(c, declared.get(c.lower(), kind)) for c, kind in columns]
    if primary:
        return TableInfo(name, "distributed", primary[0], columns, [text])
    return TableInfo(name, "keyless", None, columns, [text])


#: What may follow a declared type of exactly INTEGER in a column definition.
_AFTER_TYPE = re.compile(
    r"\s*(?:[,)]|PRIMARY\b|NOT\b|NULL\b|CONSTRAINT\b|UNIQUE\b|CHECK\b|DEFAULT\b|COLLATE\b"
    r"|REFERENCES\b|GENERATED\b|AS\b)",
    re.IGNORECASE,
)


def rowid_alias(info: TableInfo) -> str | None:
    """The column that is SQLite's rowid of the table (its one PRIMARY KEY column, declared
    exactly INTEGER, not ``PRIMARY KEY DESC`` on the column), or None."""
    import sqlglot

    if not info.ddl:
        return None
    text = info.ddl[0]
    try:
        tree = sqlglot.parse_one(text, read="sqlite")
    except sqlglot.errors.SqlglotError:
        return None
    if not isinstance(tree, exp.Create) or not isinstance(tree.this, exp.Schema):
        return None
    primary: list[tuple[exp.ColumnDef | None, str, bool]] = []  # (column, name, column-level DESC)
    defs = {}
    for item in tree.this.expressions:
        if isinstance(item, exp.ColumnDef):
            defs[item.name.lower()] = item
            for constraint in item.args.get("constraints") or []:
                kind = constraint.args.get("kind")
                if isinstance(kind, exp.PrimaryKeyColumnConstraint):
                    primary.append((item, item.name, bool(kind.args.get("desc"))))
        elif isinstance(item, exp.PrimaryKey):
            primary += [(None, e.name, False) for e in item.expressions]
    if len(primary) != 1 or primary[0][2]:
        return None
    column = defs.get(primary[0][1].lower())
    end = column.this.meta.get("end") if column is not None else None
    if column is None or end is None:
        return None
    after = text[end + 1 :].lstrip().lstrip('"`]').lstrip()
    if after[:7].upper() != "INTEGER" or not _AFTER_TYPE.match(after[7:]):
        return None
    return column.name


class Catalog:
    """The client's cached copy of the catalog."""

    def __init__(self) -> None:
        self.tables: dict[str, TableInfo] = {}
        self.views: dict[str, ViewInfo] = {}
        self.version = 0  # bumped on every change, so that cached plans are not reused

    def load(self, rows: list[tuple[Any, ...]], dialect: str) -> None:
        """Replace the cache with rows read from a node."""
        tables = {}
        views = {}
        for name, kind, column, ddl in rows:
            if kind == "view":
                views[name] = view_from_row(name, ddl, dialect)
                continue
            info = TableInfo(name, kind, column, [], json.loads(ddl))
            _fill_columns(info, dialect)
            tables[name] = info
        self.tables = tables
        self.views = views
        self.version += 1

    def put(self, info: TableInfo) -> None:
        """Add or change a table."""
        self.tables[info.name] = info
        self.version += 1

    def drop(self, name: str) -> None:
        """Forget a table."""
        self.tables.pop(name.lower(), None)
        self.version += 1

    def put_view(self, info: ViewInfo) -> None:
        """Add a view."""
        self.views[info.name] = info
        self.version += 1

    def drop_view(self, name: str) -> None:
        """Forget a view."""
        self.views.pop(name.lower(), None)
        self.version += 1

    def get(self, name: str) -> TableInfo | None:
        """The table called ``name`` (case-insensitive), if exdb knows it."""
        return self.tables.get(name.lower())


def _fill_columns(info: TableInfo, dialect: str) -> None:
    """Columns of a catalog entry, from the DDL it keeps (CREATE, then ALTER ... ADD)."""
    import sqlglot

    for text in info.ddl:
        tree = sqlglot.parse_one(text, read=dialect)
        if isinstance(tree, exp.Create) and isinstance(tree.this, exp.Schema):
            info.columns = table_from_create(tree, text, dialect).columns
        elif isinstance(tree, exp.Alter):
            for action in tree.args.get("actions") or []:
                if isinstance(action, exp.ColumnDef):
                    kind = action.args.get("kind")
                    info.columns.append((action.name, kind.sql("sqlite") if kind else ""))
    if dialect == "sqlite":  # each type as SQLite records it (see sqlite_declared_types)
        declared = dict(sqlite_declared_types(tuple(info.ddl)))
        info.columns = [(c, declared.get(c.lower(), kind)) for c, kind in info.columns]
