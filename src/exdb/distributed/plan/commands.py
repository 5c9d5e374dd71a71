"""Plans of the statements that are not queries: DDL, INSERT, UPDATE/DELETE, placement calls,
schema queries, engine commands, and the checks that refuse what cannot be distributed."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlglot import exp

from exdb.distributed.catalog import (
    CATALOG_DELETE,
    CATALOG_UPSERT,
    Catalog,
    TableInfo,
    table_from_create,
)
from exdb.distributed.parse import placeholder_names
from exdb.distributed.plan.base import Plan, render, verbatim_names
from exdb.distributed.plan.broadcast import BroadcastPlan, ViewPlan
from exdb.distributed.plan.insert import InsertPlan
from exdb.distributed.plan.redistribute import PlacementPlan
from exdb.distributed.plan.single import SinglePlan
from exdb.distributed.route import (
    Pin,
    hide_catalog_table,
    pinned_values,
    referenced_tables,
)
from exdb.distributed.views import view_from_create
from exdb.errors import NotSupportedError, ProgrammingError, UnknownTableError

_ROW_IDS = frozenset({"rowid", "_rowid_", "oid"})
#: PRAGMAs that only read the schema, which every node holds alike: one node answers.
_SCHEMA_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
)


def one_node_command(tree: exp.Expr) -> bool:
    """A command that reads only the schema, the same on every node (DuckDB's SHOW, SQLite's
    schema PRAGMAs): one node answers it, rather than each node once."""
    if isinstance(tree, exp.Show) or (
        isinstance(tree, exp.Command) and str(tree.this).upper() == "SHOW"
    ):
        return True
    if isinstance(tree, exp.Pragma):
        inner = tree.this  # PRAGMA [schema.]name(arg) reads as name = arg
        if isinstance(inner, exp.EQ):
            inner = inner.this
        if isinstance(inner, exp.Dot):
            inner = inner.expression
        return isinstance(inner, exp.Expr) and inner.name.lower() in _SCHEMA_PRAGMAS
    return False


def check_row_order(tree: exp.Expr, catalog: Catalog, text: str) -> None:
    """Refuse what depends on where rows sit or in which order they were stored: a row id
    (``rowid``, ``oid``, ``_rowid_``) of a distributed or keyless table that does not declare
    such a column (each shard numbers its own rows), and DuckDB's POSITIONAL JOIN over one
    (it pairs rows by their order in storage)."""
    sources: dict[str, TableInfo] = {}
    for table in tree.find_all(exp.Table):
        info = catalog.get(table.name) if table.name else None
        if info is not None:
            sources[table.alias_or_name.lower()] = info
            sources.setdefault(info.name, info)
    spread = {n: i for n, i in sources.items() if i.kind != "reference"}
    if not spread:
        return
    for join in tree.find_all(exp.Join):
        if str(join.args.get("method") or "").upper() == "POSITIONAL":
            raise NotSupportedError(
                "POSITIONAL JOIN over a distributed table on a distributed connection: it pairs"
                " rows by their order in storage, which exdb's shards do not keep; join on a"
                " key instead",
                statement=text,
            )
    for table in tree.find_all(exp.Table):
        if table.arg_key == "indexed":
            raise NotSupportedError(
                "INDEXED BY in a statement over a distributed table on a distributed"
                " connection: the rows may be combined where the index does not exist;"
                " leave the choice of index to the shards",
                statement=text,
            )
    for column in tree.find_all(exp.Column):
        name = column.name.lower()
        if name not in _ROW_IDS:
            continue
        if column.table:
            owners = [sources[column.table.lower()]] if column.table.lower() in sources else []
        else:
            owners = list(sources.values())
        if any(name in (c.lower() for c, _ in o.columns) for o in owners):
            continue  # a declared column of that name
        if owners and all(o.kind == "reference" for o in owners):
            continue
        raise NotSupportedError(
            f"{column.name} of a distributed table on a distributed connection: each shard"
            " numbers its own rows, so row ids repeat across shards; use the table's key",
            statement=text,
        )


def spread_tables(query: exp.Expr, catalog: Catalog, text: str) -> list[str]:
    """The distributed and keyless tables a query reads."""
    return [t.name for t in referenced_tables(query, catalog, text) if t.kind != "reference"]


def plan_schema_query(text: str, tree: exp.Query, n_params: int, dialect: str) -> Plan:
    """A query of the schema catalog only: DDL runs on every node, so node 1 answers it
    exactly; exdb's own catalog table is left out of table listings."""
    hidden = hide_catalog_table(tree)
    if hidden == tree:
        return SinglePlan(text, text, 0, None, verbatim_names(tree, n_params))
    return SinglePlan(text, render(hidden, dialect), 0, None, placeholder_names(hidden))


def plan_create(text: str, tree: exp.Create, catalog: Catalog, dialect: str) -> Plan:
    kind = str(tree.args.get("kind") or "").upper()
    if kind == "TABLE":
        info = table_from_create(tree, text, dialect)
        if catalog.get(info.name) is not None and tree.args.get("exists"):
            return BroadcastPlan(text, text)  # IF NOT EXISTS on a known table: keep its placement
        return BroadcastPlan(
            text,
            text,
            after=[(CATALOG_UPSERT, info.row())],
            catalog_change=lambda c: c.put(info),
        )
    if kind == "INDEX":
        return BroadcastPlan(text, text)
    if kind == "VIEW":
        view = view_from_create(tree, text)
        if tree.args.get("exists") and (
            view.name in catalog.views or catalog.get(view.name) is not None
        ):
            return BroadcastPlan(text, text)  # IF NOT EXISTS on a known name: keep its definition
        # Every node defines the view too (each over its own rows, as a node prefix means), so
        # the engine checks the definition, and N: queries and one-node tools can read it.
        return ViewPlan(text, [(CATALOG_UPSERT, view.row())], lambda c: c.put_view(view))
    why = {"TABLE": ""}.get(kind, "exdb plans statements over tables, indexes and views only")
    raise NotSupportedError(
        f"CREATE {kind or 'this object'} is not supported on a distributed connection ({why})",
        statement=text,
    )


def plan_drop(text: str, tree: exp.Drop, catalog: Catalog) -> Plan:
    kind = str(tree.args.get("kind") or "").upper()
    if kind == "VIEW":
        views = [t.name.lower() for t in tree.args.get("tables") or [tree.this] if t is not None]
        # A name that is a table is left in the catalog: the nodes refuse DROP VIEW of a table.
        views = [n for n in views if catalog.get(n) is None]

        def forget_views(c: Catalog) -> None:
            for n in views:
                c.drop_view(n)

        return ViewPlan(text, [(CATALOG_DELETE, (n,)) for n in views], forget_views)
    if kind == "TABLE":
        names = [t.name.lower() for t in tree.args.get("tables") or [tree.this] if t is not None]
        names = [n for n in names if n not in catalog.views]  # the nodes refuse DROP TABLE of one
        after = [(CATALOG_DELETE, (n,)) for n in names]

        def forget(c: Catalog) -> None:
            for n in names:
                c.drop(n)

        return BroadcastPlan(text, text, after=after, catalog_change=forget)
    return BroadcastPlan(text, text)


def plan_alter(text: str, tree: exp.Alter, catalog: Catalog) -> Plan:
    info = catalog.get(tree.this.name)
    if info is None:
        return BroadcastPlan(text, text)
    renamed = next(
        (
            a.this.name.lower()
            for a in tree.args.get("actions") or []
            if isinstance(a, exp.AlterRename)
        ),
        None,
    )
    new = dataclasses.replace(info, ddl=[*info.ddl, text], columns=list(info.columns))
    for action in tree.args.get("actions") or []:
        if isinstance(action, exp.ColumnDef):
            kind = action.args.get("kind")
            new.columns.append((action.name, kind.sql("sqlite") if kind else ""))
    after: list[tuple[str, tuple[Any, ...]]] = []
    if renamed:
        new.name = renamed
        after.append((CATALOG_DELETE, (info.name,)))
    after.append((CATALOG_UPSERT, new.row()))

    def change(c: Catalog) -> None:
        if renamed:
            c.drop(info.name)
        c.put(new)

    return BroadcastPlan(text, text, after=after, catalog_change=change)


def _insert_target(tree: exp.Insert, catalog: Catalog, text: str) -> tuple[TableInfo, list[str]]:
    target = tree.this
    table = target.this if isinstance(target, exp.Schema) else target
    info = catalog.get(table.name)
    if info is None:
        raise UnknownTableError(f"no such table: {table.name}", statement=text)
    if isinstance(target, exp.Schema) and target.expressions:
        columns = [c.name for c in target.expressions]
    else:
        columns = [c for c, _ in info.columns]
    return info, columns


def plan_insert(text: str, tree: exp.Insert, catalog: Catalog, n_params: int) -> Plan:
    info, columns = _insert_target(tree, catalog, text)
    if tree.args.get("by_name"):
        raise NotSupportedError(
            "INSERT ... BY NAME on a distributed connection: name the columns instead"
            " (INSERT INTO t (a, b) SELECT ...)",
            statement=text,
        )
    if info.kind == "reference":
        source = tree.expression
        if source is not None and not isinstance(source, exp.Values):
            spread = [t for t in referenced_tables(source, catalog, text) if t.kind != "reference"]
            if spread:
                raise NotSupportedError(
                    "INSERT INTO a reference table SELECT FROM a distributed table",
                    statement=text,
                )
        return BroadcastPlan(text, text, count_once=True, rowid=True)
    if tree.args.get("returning") is not None and not isinstance(tree.expression, exp.Values):
        raise NotSupportedError("INSERT ... SELECT ... RETURNING", statement=text)
    return InsertPlan(text, tree, info, columns, n_params)


def plan_write(text: str, tree: exp.Update | exp.Delete, catalog: Catalog, dialect: str) -> Plan:
    table = tree.this
    info = catalog.get(table.name)
    if info is None:
        raise UnknownTableError(f"no such table: {table.name}", statement=text)
    others = [t for t in referenced_tables(tree, catalog, text)[1:] if t.kind != "reference"]
    if others:
        raise NotSupportedError(
            f"{type(tree).__name__.upper()} that reads a distributed table in a subquery or join"
            f" ({', '.join(sorted({t.name for t in others}))}): each shard would see only its"
            " own rows",
            statement=text,
        )
    if isinstance(tree, exp.Update) and info.column is not None:
        for assignment in tree.expressions:
            target = assignment.this
            if isinstance(target, exp.Column) and target.name.lower() == info.column.lower():
                raise NotSupportedError(
                    f"UPDATE of the distribution column {info.name}.{info.column}: the row"
                    " would have to move to another shard; DELETE and INSERT it instead",
                    statement=text,
                )
    names = placeholder_names(tree)
    if info.kind == "reference":
        return BroadcastPlan(text, render(tree, dialect), count_once=True, names=names)
    pin = None
    if info.kind == "distributed":
        values = pinned_values(tree.args.get("where"), info, table.alias_or_name)
        if values is not None:
            pin = Pin(info, values)
    return BroadcastPlan(text, render(tree, dialect), pin=pin, names=names)


def placement_call(text: str, tree: exp.Select, catalog: Catalog) -> Plan | None:
    if len(tree.expressions) != 1 or tree.args.get("from_") is not None:
        return None
    call = tree.expressions[0]
    if not isinstance(call, exp.Anonymous):
        return None
    name = call.name.lower()
    if name not in ("create_distributed_table", "create_reference_table"):
        return None
    args = call.expressions
    wanted = 2 if name == "create_distributed_table" else 1
    if len(args) != wanted or not all(isinstance(a, exp.Literal) and a.is_string for a in args):
        raise ProgrammingError(
            f"{name} takes {wanted} string literal(s): the table"
            + (" and the column" if wanted == 2 else ""),
            statement=text,
        )
    info = catalog.get(args[0].this)
    if info is None:
        raise UnknownTableError(f"no such table: {args[0].this}", statement=text)
    column = None
    if wanted == 2:
        index = info.column_index(args[1].this)
        if index is None:
            raise ProgrammingError(
                f"table {info.name} has no column {args[1].this}", statement=text
            )
        column = info.columns[index][0]
    return PlacementPlan(text, name, info, column)
