"""Statements that read or write files on the nodes, on a distributed connection: exact, or
refused with NotSupportedError before anything is sent.

Sent to every node as they stand, such statements go wrong in one of two ways: a file *read* on
every node repeats its rows once per node (``COPY t FROM 'f'`` stores each row N times), and a
file *written* by every node collides (``COPY t TO 'f'``: each node overwrites the file with its
own shard's rows). So:

- ``COPY`` (either way), ``EXPORT DATABASE``, ``IMPORT DATABASE``, ``VACUUM INTO`` and
  ``ATTACH`` are refused, naming what to use: ``cursor.copy_from`` / ``copy_to`` and
  ``exdb import`` (the client reads or writes the file and rows go by key), or a node prefix
  (``2:COPY ...``) to address one node on purpose;
- a file read in a query (``read_csv(...)``, ``read_parquet(...)``, ``FROM 'file.csv'`` ...) is
  exact when the query reads no distributed table: it runs on node 1 alone, which reads the file
  once (so ``INSERT INTO t SELECT * FROM read_csv(...)`` places each row once, by its key). Mixed
  with a distributed table it is refused: every shard would read the whole file (an outer join
  would repeat its rows), and a gathered query would read it on the client.

Whether a node may reach the file at all stays the node's decision (``exdb serve
--allow-files``); a single-node connection runs these statements as its engine does.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from exdb.distributed.catalog import Catalog
from exdb.errors import NotSupportedError

__all__ = ["FILE_FUNCTIONS", "check_statement", "check_unparsed", "looks_like_file"]

#: DuckDB table functions that read files (or globs of them) on the node that runs them.
FILE_FUNCTIONS = frozenset(
    {
        "read_blob", "read_csv", "read_csv_auto", "read_duckdb", "read_json", "read_json_auto",
        "read_json_objects", "read_json_objects_auto", "read_ndjson", "read_ndjson_auto",
        "read_ndjson_objects", "read_parquet", "read_single_csv_file", "read_single_json_file",
        "read_single_parquet_file", "read_text", "read_xlsx", "parquet_scan", "parquet_metadata",
        "parquet_schema", "parquet_file_metadata", "parquet_kv_metadata", "parquet_bloom_probe",
        "parquet_full_metadata", "parquet_page_index", "glob", "sniff_csv", "sqlite_scan",
        "iceberg_scan", "delta_scan",
    }
)  # fmt: skip
#: Table functions that run SQL given as a string: the planner cannot see what they read.
_OPAQUE = frozenset({"query", "query_table"})

_LOAD = (
    "use cursor.copy_from(file, table) or `exdb import TABLE FILE`, which read the file on the"
    " client and place each row on its shard by key"
)
_SAVE = "use cursor.copy_to(file, table_or_query), which writes one file of every row"
_ONE_NODE = "; a node prefix (`{n}:{what} ...`) runs it on one node on purpose"


_HERE = " on a distributed connection"


def _refuse(message: str, text: str) -> NotSupportedError:
    return NotSupportedError(message, statement=text)


def check_unparsed(text: str) -> None:
    """Refuse a file statement sqlglot cannot parse (EXPORT/IMPORT DATABASE) with what to use
    instead, rather than a syntax error."""
    words = text.split(None, 2)
    head = " ".join(words[:2]).upper()
    if head == "EXPORT DATABASE":
        raise _refuse(
            "EXPORT DATABASE"
            + _HERE
            + " would have every node write its own shard to the same directory"
            f" ({_SAVE}, for each table" + _ONE_NODE.format(n=1, what="EXPORT DATABASE") + ")",
            text,
        )
    if head == "IMPORT DATABASE":
        raise _refuse(
            "IMPORT DATABASE" + _HERE + " would load every row on every node"
            f" ({_LOAD}" + _ONE_NODE.format(n=1, what="IMPORT DATABASE") + ")",
            text,
        )


def looks_like_file(table: exp.Table, catalog: Catalog) -> bool:
    """DuckDB's ``FROM 'data/file.csv'``: a quoted name with a dot or a slash that is no table
    exdb knows reads that file."""
    this = table.this
    return (
        isinstance(this, exp.Identifier)
        and bool(this.args.get("quoted"))
        and not table.args.get("db")
        and any(c in this.name for c in "./")
        and catalog.get(this.name) is None
    )


def file_reads(tree: exp.Expr, catalog: Catalog) -> list[str]:
    """What in the statement reads files on the node that runs it (function or file names)."""
    found: list[str] = []
    for node in tree.find_all(exp.ReadCSV, exp.ReadParquet, exp.Anonymous, exp.Table):
        if isinstance(node, exp.ReadCSV):
            found.append("read_csv")
        elif isinstance(node, exp.ReadParquet):
            found.append("read_parquet")
        elif isinstance(node, exp.Anonymous):
            name = str(node.name).lower()
            if name in FILE_FUNCTIONS or name in _OPAQUE:
                found.append(name)
        elif isinstance(node, exp.Table) and looks_like_file(node, catalog):
            found.append(repr(node.this.name))
    return found


def check_statement(
    tree: exp.Expr, text: str, catalog: Catalog, spread: Callable[[exp.Expr], list[str]]
) -> None:
    """Refuse what would read a file once per node or write one from every node.

    ``spread(query)``: the distributed (or keyless) tables a query reads."""
    if isinstance(tree, exp.Copy):
        if tree.args.get("kind"):
            raise _refuse(
                "COPY ... FROM"
                + _HERE
                + " would load the whole file on every node (each row stored once"
                f" per node): {_LOAD}" + _ONE_NODE.format(n=1, what="COPY"),
                text,
            )
        raise _refuse(
            "COPY ... TO"
            + _HERE
            + " would have every node write its own rows to the same file, each"
            f" overwriting the others: {_SAVE}" + _ONE_NODE.format(n=1, what="COPY"),
            text,
        )
    if isinstance(tree, exp.Attach):
        raise _refuse(
            "ATTACH"
            + _HERE
            + " would attach the database on every node, and statements on it are not"
            " planned across the shards: run it on one node with a node prefix (`1:ATTACH ...`)"
            " or on a single-node connection",
            text,
        )
    if isinstance(tree, exp.Command):
        keyword = str(tree.this).upper()
        tail = tree.expression
        rest = str(getattr(tail, "this", tail) or "").lstrip().upper()  # an Expr or a str
        if keyword == "VACUUM" and rest.startswith("INTO"):
            raise _refuse(
                "VACUUM INTO"
                + _HERE
                + " would have every node write its own shard to the same file"
                f" ({_SAVE}, for each table" + _ONE_NODE.format(n=1, what="VACUUM INTO") + ")",
                text,
            )
        if keyword in ("EXPORT", "IMPORT", "COPY"):
            check_unparsed(text)
            raise _refuse(f"{keyword}{_HERE} would reach files on every node", text)
    reads = file_reads(tree, catalog)
    if not reads:
        return
    what = ", ".join(dict.fromkeys(reads))
    if any(name in _OPAQUE for name in reads):
        raise _refuse(
            f"{what}{_HERE}: the planner cannot see which tables or files the SQL string"
            " reads; name the tables in the statement, or run it on one node with a node prefix",
            text,
        )
    source = tree.expression if isinstance(tree, exp.Insert) else tree
    tables = spread(source) if isinstance(source, exp.Query) else None
    if tables is None or file_reads(tree, catalog) != file_reads(source, catalog):
        raise _refuse(
            f"this statement reads files on the nodes ({what}){_HERE}: every node would read them;"
            f" load the file into a table first ({_LOAD}), or run it on one node with a node"
            " prefix",
            text,
        )
    if tables:
        raise _refuse(
            f"a query that reads files on the nodes ({what}) and the distributed table(s)"
            f" {', '.join(sorted(set(tables)))}{_HERE}: every shard would read the whole file"
            f" (an outer join would repeat its rows); load the file into a table first ({_LOAD})",
            text,
        )
