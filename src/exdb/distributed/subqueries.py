"""Recursive planning, the rewrite (issue 10, item 1): the subqueries and CTEs of a SELECT that
can run on their own, taken out of it.

A statement's uncorrelated subqueries over distributed tables, and its CTEs, each become a
:class:`Step`: a statement of its own, planned and run through the whole pipeline first (so
that it scatters, aggregates, pins or recurses itself). What remains is the outer statement, in
which each step's place holds a marker that the step's result replaces at run time:

- a scalar subquery ``(SELECT ...)``: a named parameter;
- ``x IN (SELECT ...)``: a list of named parameters (``FALSE`` when the list is empty: the
  engines answer so even for a NULL ``x``);
- ``EXISTS (SELECT ...)``: a named parameter holding the engine's true or false;
- a derived table ``(SELECT ...) AS t`` (an inlined CTE, an inlined view) and a CTE read
  several times (computed once): a table of its rows.

A CTE read once is inlined as a derived table first. A correlated subquery (it reads a column of
the outer statement: sqlglot's ``qualify`` cannot resolve it on its own) stays in the outer
statement. ``WITH RECURSIVE`` is left alone.
"""

from __future__ import annotations

import dataclasses

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify

from exdb.distributed.catalog import Catalog
from exdb.distributed.placement import affinity

__all__ = ["Split", "Step", "column_affinity", "split_subqueries", "uncorrelated"]

#: Prefix of the names exdb gives parameters and tables of a split statement.
PREFIX = "exdb_sq"


@dataclasses.dataclass
class Step:
    """One subquery or CTE run on its own. ``kind``: scalar, in, exists or table. ``name``: the
    marker's parameter name (scalar, in, exists) or the table's name (table). ``columns``: the
    column names a derived table or CTE declares (``AS t(a, b)``), else None."""

    kind: str
    name: str
    tree: exp.Query
    columns: list[str] | None = None
    #: For ``in``: the left operand (to judge SQLite's affinity rules), else None.
    left: exp.Expr | None = None


@dataclasses.dataclass
class Split:
    """The steps, in the order they run, and the outer statement with their markers."""

    steps: list[Step]
    outer: exp.Select


def _schema(catalog: Catalog) -> dict[str, object]:
    return {
        name: {column: (declared or "TEXT") for column, declared in info.columns}
        for name, info in catalog.tables.items()
        if info.columns
    }


def uncorrelated(query: exp.Query, catalog: Catalog, dialect: str) -> bool:
    """Whether a subquery reads no column of an enclosing statement: qualified on its own
    against the catalog's schema, every column resolves (sqlglot resolves a name innermost
    first, as the engines do)."""
    try:
        qualify(
            query.copy(),
            schema=_schema(catalog),
            dialect=dialect,
            validate_qualify_columns=True,
        )
    except (SqlglotError, KeyError, ValueError):
        return False
    return True


def _reads_spread(query: exp.Expr, catalog: Catalog, ctes: set[str]) -> bool:
    """Whether a query names a table that is not a reference table (or a CTE computed once)."""
    for table in query.find_all(exp.Table):
        name = table.name.lower()
        if name in ctes:
            return True
        info = catalog.get(name)
        if info is not None and info.kind != "reference":
            return True
    return False


def _owner(node: exp.Expr) -> exp.Expr | None:
    parent = node.parent
    while parent is not None and not isinstance(parent, (exp.Select, exp.SetOperation)):
        if isinstance(parent, exp.Subquery):
            return parent
        parent = parent.parent
    return parent


def _inline_ctes(tree: exp.Select) -> tuple[exp.Select, list[exp.CTE]] | None:
    """The statement with each CTE read once inlined as a derived table and each CTE read never
    dropped; the CTEs read several times (to compute once) are returned, in order. None when
    the WITH clause is beyond this (RECURSIVE, or a name defined twice at different levels)."""
    with_ = tree.args.get("with_")
    if with_ is None:
        return tree.copy(), []
    if with_.args.get("recursive") or len(list(tree.find_all(exp.With))) > 1:
        return None
    tree = tree.copy()
    kept: list[exp.CTE] = []
    for cte in list(tree.args["with_"].expressions):
        name = cte.alias_or_name.lower()
        refs = [
            t
            for t in tree.find_all(exp.Table)
            if not t.db and t.name.lower() == name and cte not in _ancestors(t)
        ]
        if len(refs) == 1:
            ref = refs[0]
            alias = exp.TableAlias(this=exp.to_identifier(ref.alias_or_name))
            columns = cte.args["alias"].columns if cte.args.get("alias") else []
            if columns:
                alias.set("columns", [c.copy() for c in columns])
            ref.replace(exp.Subquery(this=cte.this.copy(), alias=alias))
        elif refs:
            kept.append(cte)
    tree.set("with_", None)
    return tree, kept


def _ancestors(node: exp.Expr) -> list[exp.Expr]:
    out = []
    parent = node.parent
    while parent is not None:
        out.append(parent)
        parent = parent.parent
    return out


def split_subqueries(tree: exp.Select, catalog: Catalog, dialect: str) -> Split | None:
    """The steps that can run on their own and the outer statement, or None when there is
    nothing to take out (the statement then plans as before)."""
    inlined = _inline_ctes(tree)
    if inlined is None:
        return None
    outer, kept = inlined
    steps: list[Step] = []
    cte_names: dict[str, str] = {}
    for i, cte in enumerate(kept, 1):
        name = f"{PREFIX}_c{i}"
        cte_names[cte.alias_or_name.lower()] = name
        alias = cte.args.get("alias")
        columns = [c.name for c in alias.columns] if alias is not None and alias.columns else None
        steps.append(Step("table", name, cte.this.copy(), columns))
    if cte_names:
        for table in list(outer.find_all(exp.Table)):
            step_name = cte_names.get(table.name.lower()) if not table.db else None
            if step_name is None:
                continue
            if _owner(table) is not outer:
                return None  # read inside a subquery or derived table: needs it on the shards
            alias = exp.TableAlias(this=exp.to_identifier(table.alias_or_name))
            table.replace(exp.Table(this=exp.to_identifier(step_name), alias=alias))
    derived = 0
    for source in [outer.args.get("from_"), *(outer.args.get("joins") or [])]:
        if source is None or not isinstance(source.this, exp.Subquery):
            continue
        sub = source.this
        if not isinstance(sub.this, exp.Query):
            return None  # a parenthesized join, ``FROM (a JOIN b ON ...)``
        if isinstance(source, exp.Join) and source.args.get("method"):
            return None  # LATERAL / ASOF / POSITIONAL: not a plain derived table
        derived += 1
        name = f"{PREFIX}_d{derived}"
        alias = sub.args.get("alias")
        columns = [c.name for c in alias.columns] if alias is not None and alias.columns else None
        steps.append(Step("table", name, sub.this.copy(), columns))
        table_alias = exp.TableAlias(this=exp.to_identifier(sub.alias_or_name or name))
        sub.replace(exp.Table(this=exp.to_identifier(name), alias=table_alias))
    count = 0
    for node in list(outer.find_all(exp.Subquery, exp.Exists)):
        if _owner(node) is not outer or isinstance(node.parent, (exp.From, exp.Join)):
            continue
        query = node.this
        if not isinstance(query, exp.Query) or not _reads_spread(query, catalog, set()):
            continue
        if isinstance(node.parent, (exp.Limit, exp.Offset, exp.Fetch)):
            continue  # LIMIT (SELECT ...): left whole
        if not uncorrelated(query, catalog, dialect):
            continue
        count += 1
        name = f"{PREFIX}_{count}"
        parent = node.parent
        if isinstance(node, exp.Exists):
            steps.append(Step("exists", name, query.copy()))
            node.replace(exp.Placeholder(this=name))
        elif isinstance(parent, exp.In) and parent.args.get("query") is node:
            if isinstance(parent.this, exp.Tuple) or parent.args.get("unnest"):
                continue
            steps.append(Step("in", name, query.copy(), left=parent.this.copy()))
            parent.set("query", None)
            parent.set("expressions", [exp.Placeholder(this=name)])
        elif isinstance(parent, (exp.Any, exp.All)):
            continue  # DuckDB's x > ALL (SELECT ...): left whole
        else:
            steps.append(Step("scalar", name, query.copy()))
            node.replace(exp.Placeholder(this=name))
    if not steps:
        return None
    return Split(steps, outer)


def column_affinity(select: exp.Select, column: exp.Expr, catalog: Catalog) -> str | None:
    """SQLite's affinity of an expression of ``select``, where exdb can tell it: a column of a
    catalog table (by its qualifier, or the one source that has it); None when unknown."""
    if not isinstance(column, exp.Column):
        return None
    sources: dict[str, str] = {}
    for source in [select.args.get("from_"), *(select.args.get("joins") or [])]:
        if source is not None and isinstance(source.this, exp.Table):
            sources[source.this.alias_or_name.lower()] = source.this.name.lower()
    wanted = column.name.lower()
    found: list[str] = []
    for alias, table in sources.items():
        if column.table and column.table.lower() != alias:
            continue
        info = catalog.get(table)
        if info is None:
            return None
        for name, declared in info.columns:
            if name.lower() == wanted:
                found.append(affinity(declared))
    return found[0] if len(found) == 1 else None


def parse_one(sql: str, dialect: str) -> exp.Expr:
    """One statement in the engine's dialect (sqlglot reads SQLite's as ``sqlite``)."""
    return sqlglot.parse_one(sql, read=dialect)
