"""Views on a distributed connection: recorded in exdb's catalog and inlined before planning.

``CREATE VIEW v AS SELECT ...`` runs on every node (so that ``N:SELECT * FROM v`` and
single-node tools see it, each over that node's rows) and is recorded in ``exdb_catalog`` with
kind ``view``. A statement that reads ``v`` is planned as if it read ``(SELECT ...) AS v``, as
Citus does: the view's definition is inlined, recursively for views over views, and the result
plans as any statement with a subquery does.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from sqlglot import exp

from exdb.errors import NotSupportedError, ProgrammingError

__all__ = ["MAX_DEPTH", "ViewInfo", "inline_views", "view_from_create", "write_target_check"]

#: How deep views over views may nest (SQLite has no fixed bound; a cycle is caught apart).
MAX_DEPTH = 32

#: Schemas a view of exdb's catalog may be named in.
_DEFAULT_SCHEMAS = ("", "main")


@dataclasses.dataclass
class ViewInfo:
    """One view: its name (lower case), the CREATE VIEW text, and its parsed query."""

    name: str
    ddl: str
    query: exp.Query
    columns: list[str] | None = None  # the view's column list, CREATE VIEW v(a, b)

    kind = "view"

    def row(self) -> tuple[Any, ...]:
        """The catalog row stored on the nodes (the format of a table's row: kind ``view``)."""
        return (self.name, "view", None, json.dumps([self.ddl]))


def view_from_create(tree: exp.Create, text: str) -> ViewInfo:
    """A ViewInfo from a CREATE VIEW statement; refuses what exdb cannot inline exactly."""
    properties = tree.args.get("properties")
    if properties is not None and any(
        isinstance(p, exp.TemporaryProperty) for p in properties.expressions
    ):
        raise NotSupportedError(
            "CREATE TEMP VIEW on a distributed connection: a temporary view lives in one"
            " session of one node; create a (permanent) view, or use a CTE",
            statement=text,
        )
    if tree.find(exp.Placeholder) is not None:
        raise ProgrammingError("parameters are not allowed in views", statement=text)
    target = tree.this
    columns = None
    if isinstance(target, exp.Schema):
        columns = [c.name for c in target.expressions]
        target = target.this
    if not isinstance(target, exp.Table) or target.args.get("catalog"):
        raise NotSupportedError("CREATE VIEW of this form", statement=text)
    if target.db.lower() not in _DEFAULT_SCHEMAS:
        raise NotSupportedError(
            f"CREATE VIEW in schema {target.db} on a distributed connection", statement=text
        )
    query = tree.expression
    if not isinstance(query, exp.Query):
        raise NotSupportedError("CREATE VIEW whose body is not a query", statement=text)
    info = ViewInfo(target.name.lower(), text, query, columns)
    if columns is not None:
        _renamed(info, text)  # refuse now what cannot be inlined later
    return info


def view_from_row(name: str, ddl: str, dialect: str) -> ViewInfo:
    """A ViewInfo from its catalog row (the CREATE VIEW text it keeps)."""
    import sqlglot

    (text,) = json.loads(ddl)
    tree = sqlglot.parse_one(text, read=dialect)
    assert isinstance(tree, exp.Create)
    info = view_from_create(tree, text)
    info.name = name
    return info


def _renamed(view: ViewInfo, statement: str) -> exp.Query:
    """The view's query with its output columns named by the view's column list: the
    projections are re-aliased, where nothing else in the query can read the old names."""
    query = view.query.copy()
    columns = view.columns or []
    if not isinstance(query, exp.Select) or any(
        isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star))
        for e in query.expressions
    ):
        raise NotSupportedError(
            "CREATE VIEW v(columns) on a distributed connection whose body is not a plain"
            " SELECT of named expressions (no *, no UNION): alias the columns in the SELECT",
            statement=statement,
        )
    if len(columns) != len(query.expressions):
        raise ProgrammingError(
            f"expected {len(query.expressions)} columns for '{view.name}' but got {len(columns)}",
            statement=statement,
        )
    old = {e.alias_or_name.lower() for e in query.expressions}
    for key in ("where", "group", "having", "order", "qualify", "windows"):
        node = query.args.get(key)
        if node is None:
            continue
        for part in node if isinstance(node, list) else [node]:
            for column in part.find_all(exp.Column):
                if not column.table and column.name.lower() in old:
                    raise NotSupportedError(
                        f"CREATE VIEW v(columns) on a distributed connection whose body reads"
                        f" an output name ({column.name}) outside its SELECT list: alias the"
                        " columns in the SELECT instead",
                        statement=statement,
                    )
    for i, (expression, name) in enumerate(zip(query.expressions, columns, strict=True)):
        inner = expression.this if isinstance(expression, exp.Alias) else expression
        query.expressions[i] = exp.alias_(inner.copy(), exp.to_identifier(name, quoted=True))
        query.expressions[i].parent = query
    return query


def write_target_check(name: str, views: dict[str, ViewInfo], statement: str, what: str) -> None:
    """Refuse INSERT, UPDATE and DELETE into a view (SQLite does without INSTEAD OF triggers)."""
    if name.lower() in views:
        raise NotSupportedError(
            f"{what} a view ({name}) on a distributed connection: write to its tables",
            statement=statement,
        )


def inline_views(
    tree: exp.Expr, views: dict[str, ViewInfo], statement: str
) -> tuple[exp.Expr, list[ViewInfo]]:
    """The statement with each view it reads replaced by ``(its query) AS name``, and the views
    inlined, each after those its own definition reads; ``(tree, [])`` when it reads none. A
    CTE of the same name hides the view, as in one database."""
    if not views or not any(_view_of(t, views) for t in tree.find_all(exp.Table)):
        return tree, []
    copy = tree.copy()
    used: list[ViewInfo] = []
    _inline(copy, views, statement, (), used)
    return (copy, used) if used else (tree, [])


def _view_of(table: exp.Table, views: dict[str, ViewInfo]) -> ViewInfo | None:
    if not isinstance(table.this, exp.Identifier) or table.args.get("catalog"):
        return None
    if table.db.lower() not in _DEFAULT_SCHEMAS:
        return None
    return views.get(table.name.lower())


def _inline(
    tree: exp.Expr,
    views: dict[str, ViewInfo],
    statement: str,
    chain: tuple[str, ...],
    used: list[ViewInfo],
) -> None:
    for table in list(tree.find_all(exp.Table)):
        view = _view_of(table, views)
        if view is None or _hidden_by_cte(table, view.name, statement):
            continue
        if view.name in chain:
            raise ProgrammingError(f"view {chain[0]} is circularly defined", statement=statement)
        if len(chain) >= MAX_DEPTH:
            raise NotSupportedError(
                f"views nested more than {MAX_DEPTH} deep ({' -> '.join(chain)})",
                statement=statement,
            )
        for key in ("pivots", "sample", "laterals", "joins", "hints", "version", "when"):
            if table.args.get(key):
                raise NotSupportedError(
                    f"this use of the view {view.name} on a distributed connection ({key})",
                    statement=statement,
                )
        if table.arg_key not in ("this", "expressions") or not isinstance(
            table.parent, (exp.From, exp.Join)
        ):
            raise NotSupportedError(
                f"the view {view.name} named here on a distributed connection: read it in"
                " FROM or JOIN",
                statement=statement,
            )
        body = _renamed(view, statement) if view.columns is not None else view.query.copy()
        _inline(body, views, statement, (*chain, view.name), used)
        if view not in used:
            used.append(view)
        _check_capture(table, body, view.name, statement)
        alias = table.args.get("alias")
        if alias is None or not alias.name:
            alias = exp.TableAlias(this=exp.to_identifier(table.name))
        table.replace(exp.Subquery(this=body, alias=alias.copy()))


def _visible_ctes(node: exp.Expr) -> set[str]:
    """Names of the CTEs in scope at ``node``: those of every enclosing WITH."""
    names: set[str] = set()
    parent = node.parent
    while parent is not None:
        with_ = parent.args.get("with_") if isinstance(parent, exp.Expr) else None
        if isinstance(with_, exp.With):
            names.update(c.alias_or_name.lower() for c in with_.expressions)
        parent = parent.parent
    return names


def _hidden_by_cte(table: exp.Table, name: str, statement: str) -> bool:
    """Whether a CTE of the view's name is in scope at ``table`` (it then names the CTE). A
    reference from an earlier CTE of the same WITH to a later one is ambiguous across engines:
    refused."""
    if name not in _visible_ctes(table):
        return False
    cte = table.find_ancestor(exp.CTE)
    while cte is not None:
        with_ = cte.parent
        if isinstance(with_, exp.With):
            names = [c.alias_or_name.lower() for c in with_.expressions]
            later = name in names and names.index(name) > with_.expressions.index(cte)
            if later and not with_.args.get("recursive"):
                raise NotSupportedError(
                    f"a CTE that reads {name}, both a view and a later CTE of the same WITH",
                    statement=statement,
                )
        cte = cte.find_ancestor(exp.CTE)
    return True


def _check_capture(table: exp.Table, body: exp.Expr, view: str, statement: str) -> None:
    """Refuse an inlining where a CTE of the outer statement would capture a table the view's
    body names (the view reads the table; inlined, it would read the CTE)."""
    outer = _visible_ctes(table)
    if not outer:
        return
    inner = {c.alias_or_name.lower() for c in body.find_all(exp.CTE)}
    for named in body.find_all(exp.Table):
        low = named.name.lower()
        if low in outer and low not in inner:
            raise NotSupportedError(
                f"the view {view} reads {named.name}, which a CTE of this statement also"
                " names: rename the CTE",
                statement=statement,
            )
