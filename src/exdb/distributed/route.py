"""Stage 2, route: which tables a statement touches, how they are placed, and which nodes must
run it. Pure analysis of the sqlglot tree against the catalog; no I/O.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlglot import exp

from exdb.distributed.catalog import CATALOG_TABLE, INTERNAL_TABLES, Catalog, TableInfo
from exdb.distributed.decorrelate import colocated_subquery_tables
from exdb.distributed.files import looks_like_file
from exdb.distributed.placement import shard_of
from exdb.errors import NotSupportedError, UnknownTableError

__all__ = [
    "Pin",
    "SelectShape",
    "analyse_select",
    "literal_value",
    "pinned_values",
    "referenced_tables",
    "schema_query",
    "shards_for_pin",
]

_CATALOG = TableInfo(CATALOG_TABLE, "reference", None, [], [])


def literal_value(node: exp.Expr, params: dict[str, Any]) -> tuple[bool, Any]:
    """(True, value) if ``node`` is a constant exdb can read without an engine."""
    if isinstance(node, exp.Placeholder):
        return True, params.get(node.name)
    if isinstance(node, exp.Null):
        return True, None
    if isinstance(node, exp.Boolean):
        return True, bool(node.this)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return True, node.this
        text = node.this
        try:
            return True, int(text)
        except ValueError:
            return True, float(text)
    if isinstance(node, exp.Neg):
        ok, value = literal_value(node.this, params)
        if ok and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, -value
    if isinstance(node, exp.Paren):
        return literal_value(node.this, params)
    return False, None


def referenced_tables(tree: exp.Expr, catalog: Catalog, statement: str) -> list[TableInfo]:
    """Every catalog table the statement names (CTE names excluded), in order of appearance.

    An unknown table is a ProgrammingError naming it.
    """
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    out: list[TableInfo] = []
    for table in tree.find_all(exp.Table):
        name = table.name.lower()
        if not name or name in ctes or looks_like_file(table, catalog):
            continue  # a CTE, a table function, DuckDB's FROM 'file.csv' (see distributed/files.py)
        if table.arg_key == "indexed":
            continue  # SQLite's ``t INDEXED BY i`` names an index, not a table
        info = _CATALOG if name == CATALOG_TABLE else catalog.get(name)
        if info is None:
            raise UnknownTableError(
                f"no such table: {table.name} (exdb's catalog does not know it; create it"
                " through a distributed connection)",
                statement=statement,
            )
        out.append(info)
    return out


@dataclasses.dataclass
class Pin:
    """A WHERE clause that pins a table's distribution column to a list of constants."""

    table: TableInfo
    values: list[exp.Expr]


def _conjuncts(node: exp.Expr | None) -> list[exp.Expr]:
    if node is None:
        return []
    if isinstance(node, exp.Where):
        return _conjuncts(node.this)
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    if isinstance(node, exp.Paren):
        return _conjuncts(node.this)
    return [node]


def _is_column_of(node: exp.Expr, table: TableInfo, alias: str) -> bool:
    if not isinstance(node, exp.Column) or table.column is None:
        return False
    if node.name.lower() != table.column.lower():
        return False
    qualifier = node.table.lower()
    return qualifier in ("", alias.lower(), table.name.lower())


def _constant(node: exp.Expr) -> bool:
    return isinstance(node, (exp.Placeholder, exp.Literal, exp.Null, exp.Neg, exp.Boolean))


def pinned_values(where: exp.Expr | None, table: TableInfo, alias: str) -> list[exp.Expr] | None:
    """The constants a top-level ``col = c`` or ``col IN (c, ...)`` pins the distribution column
    to, or None when WHERE does not pin it."""
    for cond in _conjuncts(where):
        if isinstance(cond, exp.EQ):
            left, right = cond.this, cond.expression
            if _is_column_of(left, table, alias) and _constant(right):
                return [right]
            if _is_column_of(right, table, alias) and _constant(left):
                return [left]
        if isinstance(cond, exp.In) and not cond.args.get("query") and not cond.args.get("not"):
            values = cond.expressions
            if _is_column_of(cond.this, table, alias) and values and all(map(_constant, values)):
                return list(values)
    return None


def shards_for_pin(pin: Pin, params: dict[str, Any], shards: int) -> list[int]:
    """The sorted shard indexes the pinned values live on."""
    found = set()
    for node in pin.values:
        ok, value = literal_value(node, params)
        if not ok:
            return list(range(shards))
        if value is None:
            continue  # col = NULL matches nothing
        found.add(shard_of(value, pin.table.column_affinity, shards))
    return sorted(found)


@dataclasses.dataclass
class SelectShape:
    """What a SELECT looks like to the planner."""

    distributed: list[tuple[TableInfo, str]]  # distributed/keyless tables with their alias
    reference_only: bool
    simple: bool  # one SELECT (no set operation, CTE, window, subquery over distributed data)
    colocated: bool  # the distributed tables are joined on their distribution columns
    pin: Pin | None  # WHERE pins the single distributed table


def _subquery_tables(tree: exp.Expr) -> list[exp.Table]:
    """Tables named inside subqueries of a SELECT (not in its own FROM/JOIN)."""
    out: list[exp.Table] = []
    for sub in tree.find_all(exp.Subquery, exp.Exists, exp.Any, exp.All):
        out.extend(sub.find_all(exp.Table))
    for found in tree.find_all(exp.In):
        query = found.args.get("query")
        if query is not None:
            out.extend(query.find_all(exp.Table))
    return out


def analyse_select(tree: exp.Expr, catalog: Catalog, statement: str) -> SelectShape:
    """Classify a SELECT (or set operation) for planning."""
    tables = referenced_tables(tree, catalog, statement)
    spread = [t for t in tables if t.kind != "reference"]
    if not spread:
        return SelectShape([], True, False, False, None)
    # Correlated subqueries co-located with the outer rows run on each shard as they stand.
    colocated_tables = colocated_subquery_tables(tree, catalog)
    if colocated_tables:
        hidden = [t for t in tree.find_all(exp.Table) if id(t) in colocated_tables]
        spread = spread[: len(spread) - sum(1 for t in hidden if _spread_table(t, catalog))]
    simple = (
        isinstance(tree, exp.Select)
        and not tree.args.get("with_")
        and tree.find(exp.Window) is None
        and not any(
            (catalog.get(t.name) or _CATALOG).kind != "reference"
            for t in _subquery_tables(tree)
            if id(t) not in colocated_tables
            and t.name.lower() not in {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
        )
    )
    if not simple:
        return SelectShape([(t, t.name) for t in spread], False, False, False, None)
    assert isinstance(tree, exp.Select)
    if _renames_or_pairs(tree):
        return SelectShape([(t, t.name) for t in spread], False, False, False, None)
    sources = _from_sources(tree)
    distributed = [(catalog.get(t.name), t.alias_or_name) for t in sources]
    distributed_pairs = [
        (info, alias) for info, alias in distributed if info and info.kind != "reference"
    ]
    if len(distributed_pairs) != len(spread):  # a distributed table outside FROM/JOIN
        return SelectShape(distributed_pairs, False, False, False, None)
    colocated = _colocated(
        tree, distributed_pairs, _source_columns(sources, catalog)
    ) and not _preserves_reference_rows(tree, catalog)
    pin = None
    if len(distributed_pairs) == 1:
        info, alias = distributed_pairs[0]
        if info.kind == "distributed":
            values = pinned_values(tree.args.get("where"), info, alias)
            if values is not None:
                pin = Pin(info, values)
    return SelectShape(distributed_pairs, False, True, colocated, pin)


def _spread_table(table: exp.Table, catalog: Catalog) -> bool:
    info = catalog.get(table.name)
    return info is not None and info.kind != "reference"


def _renames_or_pairs(select: exp.Select) -> bool:
    """Whether a source renames its columns (``t AS x(a, b)``: a name would no longer be the
    column the catalog knows by it) or a join pairs rows by something other than their values
    (DuckDB's ASOF and POSITIONAL joins): such queries are gathered, never split per shard."""
    for table in select.find_all(exp.Table):
        alias = table.args.get("alias")
        if isinstance(alias, exp.TableAlias) and alias.columns:
            return True
    for join in select.find_all(exp.Join):
        if str(join.args.get("method") or "").upper() in ("ASOF", "POSITIONAL"):
            return True
    return False


def _source_columns(sources: list[exp.Table], catalog: Catalog) -> dict[str, set[str]] | None:
    """The columns (lower case) of every source of a SELECT by its alias (lower case), or None
    when a source is not a catalog table (its columns are unknown here)."""
    out: dict[str, set[str]] = {}
    for table in sources:
        info = catalog.get(table.name)
        if info is None or not info.columns:
            return None
        out[table.alias_or_name.lower()] = {name.lower() for name, _ in info.columns}
    return out


def _from_sources(select: exp.Select) -> list[exp.Table]:
    out = []
    from_ = select.args.get("from_")
    if from_ is not None and isinstance(from_.this, exp.Table):
        out.append(from_.this)
    for join in select.args.get("joins") or []:
        if isinstance(join.this, exp.Table):
            out.append(join.this)
    return out


def _preserves_reference_rows(select: exp.Select, catalog: Catalog) -> bool:
    """Whether an outer join keeps rows of reference tables alone that match no row of a
    distributed table: every shard would then return each such row once (``regions LEFT JOIN
    customers``), where one database returns it once in all. Such statements are gathered."""
    from_ = select.args.get("from_")
    if from_ is None:
        return False

    def spread(source: exp.Expr) -> bool:
        tables = [source] if isinstance(source, exp.Table) else list(source.find_all(exp.Table))
        return any(
            (info := catalog.get(t.name)) is None or info.kind != "reference" for t in tables
        )

    left = spread(from_.this)
    for join in select.args.get("joins") or []:
        right = spread(join.this)
        side = (join.side or "").upper()
        if side == "LEFT" and right and not left:
            return True
        if side == "RIGHT" and left and not right:
            return True
        if side == "FULL" and left != right:
            return True
        left = left or right
    return False


def _colocated(
    select: exp.Select,
    tables: list[tuple[TableInfo, str]],
    scope: dict[str, set[str]] | None = None,
) -> bool:
    """True when one distributed table, or all of them are tied by equalities of their
    distribution columns (in ON or WHERE), with the same hash normalisation. An unqualified
    column counts when ``scope`` (each source's columns by alias) finds it in exactly one
    source."""
    if len(tables) == 1:
        return tables[0][0].kind == "distributed" or tables[0][0].kind == "keyless"
    if any(t.kind != "distributed" for t, _ in tables):
        return False
    if len({t.column_affinity for t, _ in tables}) != 1:
        return False
    if len({alias.lower() for _, alias in tables}) != len(tables):
        return False  # a self-join: aliases would need tracking
    conds = _conjuncts(select.args.get("where"))
    for join in select.args.get("joins") or []:
        conds.extend(_conjuncts(join.args.get("on")))
        if join.args.get("using"):
            return False
    # Union-find over aliases tied by dist-column equalities.
    parent = {alias.lower(): alias.lower() for _, alias in tables}

    def find(a: str) -> str:
        while parent[a] != a:
            a = parent[a]
        return a

    for cond in conds:
        if not isinstance(cond, exp.EQ):
            continue
        ends = []
        for side in (cond.this, cond.expression):
            for info, alias in tables:
                if _is_column_of(side, info, alias) and _owner(side, scope) == alias.lower():
                    ends.append(alias.lower())
        if len(ends) == 2:
            parent[find(ends[0])] = find(ends[1])
    return len({find(a) for a in parent}) == 1


# --- the engines' own schema catalog ----------------------------------------------------------

#: SQLite's schema tables (DuckDB has sqlite_master too): every node has the same schema, since
#: DDL runs on every node, so one node answers a query of them exactly.
_SCHEMA_TABLES = frozenset(
    {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"}
)
_SCHEMA_SCHEMAS = frozenset({"information_schema", "pg_catalog"})
_SCHEMA_FUNCTIONS = ("pragma_", "duckdb_")
#: The listings that would show exdb's own catalog table, and the column naming the table: a
#: query of them sees the listing without it (see hide_catalog_table).
_LISTINGS = {
    ("", "sqlite_master"): "tbl_name",
    ("", "sqlite_schema"): "tbl_name",
    ("main", "sqlite_master"): "tbl_name",
    ("main", "sqlite_schema"): "tbl_name",
    ("information_schema", "tables"): "table_name",
}


def _schema_table(table: exp.Table) -> bool:
    if isinstance(table.this, exp.Func):
        return table.this.name.lower().startswith(_SCHEMA_FUNCTIONS)
    return table.name.lower() in _SCHEMA_TABLES or table.db.lower() in _SCHEMA_SCHEMAS


def schema_query(tree: exp.Expr, statement: str) -> bool:
    """Whether a query reads only the engine's schema catalog (sqlite_master, pragma_*()
    functions, information_schema, duckdb_*() functions), which one node answers for all.
    A query that reads the catalog and tables at once is refused with NotSupportedError."""
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    schema = others = 0
    for table in tree.find_all(exp.Table):
        if _schema_table(table):
            schema += 1
        elif table.name and table.name.lower() not in ctes:
            others += 1
    if schema and others:
        raise NotSupportedError(
            "a query that reads the schema catalog (sqlite_master, pragma_*, information_schema)"
            " and tables at once: query the catalog on its own",
            statement=statement,
        )
    return schema > 0


def hide_catalog_table(tree: exp.Expr) -> exp.Expr:
    """The query with each table listing (sqlite_master, information_schema.tables) read
    without exdb's own tables (catalog.INTERNAL_TABLES): one database holding the rows would
    not have them, and tools that compare a listing with their models (Alembic) would try to
    drop them."""

    def hide(node: exp.Expr) -> exp.Expr:
        if not isinstance(node, exp.Table) or isinstance(node.this, exp.Func):
            return node
        column = _LISTINGS.get((node.db.lower(), node.name.lower()))
        if column is None:
            return node
        bare = exp.Table(this=node.this.copy(), db=node.args["db"].copy() if node.db else None)
        inner = (
            exp.select("*")
            .from_(bare)
            .where(
                exp.Not(
                    this=exp.In(
                        this=exp.column(column),
                        expressions=[exp.Literal.string(t) for t in sorted(INTERNAL_TABLES)],
                    )
                )
            )
        )
        return inner.subquery(node.alias_or_name)

    return tree.copy().transform(hide)


def _owner(column: exp.Column, scope: dict[str, set[str]] | None) -> str | None:
    """The alias (lower case) of the source a column belongs to: its qualifier, or the one
    source in ``scope`` that has a column of that name; None when unknown or ambiguous."""
    if column.table:
        return column.table.lower()
    if scope is None:
        return None
    name = column.name.lower()
    found = [alias for alias, columns in scope.items() if name in columns]
    return found[0] if len(found) == 1 else None
