"""What a statement reads of each table it names: the columns it may use, and the rows that
pass that table's own filters. A plan that brings rows to the client (gather, the input of a
window or a set operation finished in the final stage) fetches only these, never ``SELECT *``.

Both are computed from the tree, conservatively, so that the final stage, which evaluates the
whole statement again, sees every row and column it could need:

- columns: every column name the statement writes that the table has (a superset: a name read
  from another table with the same column is fetched too); every column where the statement
  reads a whole row (``*``, ``t.*``, NATURAL joins, DuckDB's ``COLUMNS(...)``, PIVOT, ``#1``,
  a table read as a value) or a SQLite row id;
- rows: a table occurrence's own filters are the conjuncts of its SELECT's WHERE (when no outer
  join makes it the null-supplying side) and of its own ON (an inner or LEFT join's right side)
  that read only its columns, nothing correlated, no subquery and nothing random. Its rows are
  those that pass them; a table read several times brings the rows any of its occurrences
  reads (OR), and every row if one occurrence has no filter.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlglot import exp

from exdb.distributed.catalog import TableInfo

__all__ = ["TableRead", "narrow_ddl", "read_sql", "table_reads"]

#: SQLite's names of a row id: a statement that reads one gets the table's declared DDL whole.
_ROWID_NAMES = frozenset({"rowid", "oid", "_rowid_"})
#: Functions whose value differs call by call: a filter with one is never evaluated twice.
_VOLATILE = frozenset({"random", "randomblob", "rand", "uuid", "gen_random_uuid", "setseed"})
#: Constructs that read every column of the tables they name (or of all, conservatively).
_WHOLE_ROW = (exp.Pivot, exp.Columns, exp.PositionalColumn, exp.Summarize)
#: Join kinds whose ON filters the joined table the way WHERE would (an inner join) or that
#: filter only the right side (LEFT); others (SEMI, ANTI, ASOF, POSITIONAL) push nothing.
_PLAIN_KINDS = frozenset({"", "INNER", "OUTER", "CROSS"})


@dataclasses.dataclass
class TableRead:
    """What to fetch of one table: ``columns`` in declared order (None: every column, with the
    table's own DDL), and ``where`` over its unqualified columns (None: every row)."""

    info: TableInfo
    columns: list[str] | None
    where: exp.Expr | None

    def placeholders(self) -> list[str]:
        """The named parameters the filter binds."""
        if self.where is None:
            return []
        return [p.name for p in self.where.find_all(exp.Placeholder)]


def table_reads(tree: exp.Expr, tables: list[TableInfo]) -> list[TableRead]:
    """One TableRead per distinct table of ``tables`` (the catalog tables the statement names)."""
    unique: dict[str, TableInfo] = {}
    for t in tables:
        unique.setdefault(t.name.lower(), t)
    occurrences = _occurrences(tree, unique)
    columns = _columns(tree, unique, occurrences)
    filters = _filters(tree, unique, occurrences)
    out = []
    for name, info in unique.items():
        wanted = columns.get(name)
        cols: list[str] | None
        if wanted is None:
            cols = None
        else:
            cols = [c for c, _ in info.columns if c.lower() in wanted]
            if not cols and info.columns:
                cols = [info.columns[0][0]]  # rows are counted: one column carries them
        out.append(TableRead(info, cols, filters.get(name)))
    return out


def read_sql(read: TableRead, engine: str) -> str:
    """The statement that fetches a TableRead from a node."""
    names = read.columns if read.columns is not None else [c for c, _ in read.info.columns]
    listed = ", ".join(_quote(c) for c in names) if names else "*"
    sql = f"SELECT {listed} FROM {_quote(read.info.name)}"
    if read.where is not None:
        sql += " WHERE " + read.where.sql(dialect=engine)
    return sql


def narrow_ddl(info: TableInfo, columns: list[str], declared: dict[str, str], engine: str) -> str:
    """CREATE TABLE of just ``columns``, each with its declared type as the engine reports it
    (``declared``, by lower-case name) and its COLLATE, no other constraint (the rows are the
    shards', already checked): comparisons and affinities stay exactly the table's."""
    collations = _collations(info, engine)
    defs = []
    for name in columns:
        part = _quote(name)
        kind = declared.get(name.lower(), "")
        if kind:
            part += f" {kind}"
        if name.lower() in collations:
            part += f" {collations[name.lower()]}"
        defs.append(part)
    return f"CREATE TABLE {_quote(info.name)} ({', '.join(defs)})"


def declared_types_sql(info: TableInfo, engine: str) -> str:
    """A query of the engine's own record of the table's declared column types: (name, type)."""
    name = info.name.replace("'", "''")
    if engine == "sqlite":
        return f"SELECT name, type FROM pragma_table_info('{name}')"
    return f'SELECT column_name, column_type FROM (DESCRIBE "{info.name}")'


# --- internals --------------------------------------------------------------------------------


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _collations(info: TableInfo, engine: str) -> dict[str, str]:
    import sqlglot

    out: dict[str, str] = {}
    for text in info.ddl:
        try:
            tree = sqlglot.parse_one(text, read=engine)
        except sqlglot.errors.SqlglotError:
            continue
        defs: list[Any] = []
        if isinstance(tree, exp.Create) and isinstance(tree.this, exp.Schema):
            defs = [e for e in tree.this.expressions if isinstance(e, exp.ColumnDef)]
        elif isinstance(tree, exp.Alter):
            defs = [a for a in tree.args.get("actions") or [] if isinstance(a, exp.ColumnDef)]
        for column in defs:
            for constraint in column.args.get("constraints") or []:
                if isinstance(constraint.args.get("kind"), exp.CollateColumnConstraint):
                    out[column.name.lower()] = constraint.sql(dialect=engine)
    return out


@dataclasses.dataclass
class _Occurrence:
    table: exp.Table
    name: str  # the catalog table (lower case)
    alias: str  # lower case
    select: exp.Select | None  # the SELECT whose FROM/JOIN names it directly


def _occurrences(tree: exp.Expr, tables: dict[str, TableInfo]) -> list[_Occurrence]:
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    out = []
    for table in tree.find_all(exp.Table):
        name = table.name.lower()
        if name in ctes or name not in tables or table.arg_key == "indexed":
            continue
        select = None
        parent = table.parent
        if isinstance(parent, (exp.From, exp.Join)) and isinstance(parent.parent, exp.Select):
            select = parent.parent
        out.append(_Occurrence(table, name, table.alias_or_name.lower(), select))
    return out


def _columns(
    tree: exp.Expr, tables: dict[str, TableInfo], occurrences: list[_Occurrence]
) -> dict[str, set[str] | None]:
    """Column names (lower case) to fetch per table; None: every column, with its own DDL."""
    have = {name: {c.lower() for c, _ in info.columns} for name, info in tables.items()}
    wanted: dict[str, set[str] | None] = {name: set() for name in tables}
    by_alias: dict[str, set[str]] = {}
    for occ in occurrences:
        by_alias.setdefault(occ.alias, set()).add(occ.name)
        by_alias.setdefault(occ.name, set()).add(occ.name)

    def everything(names: set[str] | None = None) -> None:
        for name in names if names is not None else set(tables):
            current = wanted.get(name)
            if current is not None:
                wanted[name] = current | have[name]

    def add(names: set[str], column: str) -> None:
        for name in names:
            current = wanted[name]
            if current is not None and column in have[name]:
                current.add(column)

    if tree.find(*_WHOLE_ROW) is not None or not isinstance(tree, exp.Query):
        everything()
    for occ in occurrences:
        if _renamed(occ.table):
            everything({occ.name})
    for join in tree.find_all(exp.Join):
        if str(join.args.get("method") or "").upper() == "NATURAL":
            everything()
        for ident in join.args.get("using") or []:
            add(set(tables), ident.name.lower())
    for star in tree.find_all(exp.Star):
        parent = star.parent
        if isinstance(parent, exp.Count) or (
            isinstance(parent, exp.Column) and parent.this is star
        ):
            continue  # COUNT(*); t.* is a column, below
        select = star.find_ancestor(exp.Select)
        direct = [o for o in occurrences if o.select is select and select is not None]
        sources = _sources(select) if isinstance(select, exp.Select) else None
        if sources is None or any(kind is None for _, kind in sources) or direct == []:
            everything()  # a star over something other than plain tables: all, to be safe
        else:
            everything({o.name for o in direct})
    for column in tree.find_all(exp.Column):
        name = column.name.lower()
        qualifier = column.table.lower()
        if isinstance(column.this, exp.Star):
            everything(by_alias.get(qualifier) or set(tables))
            continue
        if name in _ROWID_NAMES and not any(name in have[t] for t in tables):
            for t in tables:
                wanted[t] = None  # the table's own DDL, every column, as one database
            continue
        if not qualifier and name in by_alias and not any(name in have[t] for t in tables):
            everything(by_alias[name])  # DuckDB: a table's name as a value is its whole row
            continue
        owners = by_alias.get(qualifier) if qualifier else None
        add(owners or set(tables), name)
    return wanted


def _sources(select: exp.Select) -> list[tuple[str, exp.Table | None]] | None:
    """A SELECT's FROM/JOIN sources: (alias, its Table or None when it is something else)."""
    from_ = select.args.get("from_")
    if from_ is None:
        return None
    items = [from_.this] + [j.this for j in select.args.get("joins") or []]
    return [
        (item.alias_or_name.lower(), item if isinstance(item, exp.Table) else None)
        for item in items
    ]


def _filters(
    tree: exp.Expr, tables: dict[str, TableInfo], occurrences: list[_Occurrence]
) -> dict[str, exp.Expr | None]:
    """Per table: the OR of its occurrences' own filters; absent: every row."""
    per_table: dict[str, list[exp.Expr]] = {}
    unfiltered: set[str] = set()
    for occ in occurrences:
        own = _own_filter(occ, tables) if occ.select is not None else None
        if own is None:
            unfiltered.add(occ.name)
        else:
            per_table.setdefault(occ.name, []).append(own)
    out: dict[str, exp.Expr | None] = {}
    for name, conds in per_table.items():
        if name in unfiltered:
            continue
        unique = list({c.sql(): c for c in conds}.values())
        combined = unique[0] if len(unique) == 1 else exp.or_(*unique)
        out[name] = combined
    return out


def _own_filter(occ: _Occurrence, tables: dict[str, TableInfo]) -> exp.Expr | None:
    """The AND of an occurrence's own pushable conjuncts (unqualified), or None."""
    select = occ.select
    assert select is not None
    sources = _sources(select)
    if sources is None:
        return None
    aliases = [alias for alias, _ in sources]
    if len(set(aliases)) != len(aliases):
        return None  # two sources of one name: ambiguous
    columns: dict[str, set[str] | None] = {}
    for alias, table in sources:
        info = None
        if table is not None and not table.db and not isinstance(table.this, exp.Func):
            info = None if _renamed(table) else tables.get(table.name.lower())
        columns[alias] = {c.lower() for c, _ in info.columns} if info is not None else None
    output_aliases = {e.alias.lower() for e in select.expressions if e.alias}
    joins = select.args.get("joins") or []
    nullable: set[str] = set()
    conds: list[exp.Expr] = []
    position = 0
    for k, join in enumerate(joins, 1):
        side = str(join.side or "").upper()
        kind = str(join.kind or "").upper()
        method = str(join.args.get("method") or "").upper()
        if kind not in _PLAIN_KINDS or method not in ("", "NATURAL"):
            return None
        if side in ("RIGHT", "FULL"):
            nullable.update(aliases[:k])
        if side in ("LEFT", "FULL"):
            nullable.add(aliases[k])
        if aliases[k] == occ.alias and join.this is occ.table:
            position = k
            if side in ("", "LEFT"):
                conds.extend(_conjuncts(join.args.get("on")))
    if position == 0 and select.args["from_"].this is not occ.table:
        return None
    if occ.alias not in nullable:
        conds.extend(_conjuncts(select.args.get("where")))
    own = [
        c.copy()
        for c in conds
        if _reads_only(c, occ.alias, columns, output_aliases) and not _volatile(c)
    ]
    if not own:
        return None
    for cond in own:
        for column in cond.find_all(exp.Column):
            column.set("table", None)
    return own[0] if len(own) == 1 else exp.and_(*own)


def _renamed(table: exp.Table) -> bool:
    """``t AS x(a, b)``: its columns go by other names."""
    alias = table.args.get("alias")
    return isinstance(alias, exp.TableAlias) and bool(alias.columns)


def _conjuncts(node: exp.Expr | None) -> list[exp.Expr]:
    if node is None:
        return []
    if isinstance(node, exp.Where):
        return _conjuncts(node.this)
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    if isinstance(node, exp.Paren) and isinstance(node.this, exp.And):
        return _conjuncts(node.this)
    return [node]


def _reads_only(
    cond: exp.Expr,
    alias: str,
    columns: dict[str, set[str] | None],
    output_aliases: set[str],
) -> bool:
    """Whether every column of ``cond`` is one of the source ``alias``'s own (and there is at
    least one), with no subquery, aggregate or window in it."""
    if cond.find(exp.Select, exp.Subquery, exp.AggFunc, exp.Window, exp.Star) is not None:
        return False
    found = False
    for column in cond.find_all(exp.Column):
        if column.args.get("db") or column.args.get("catalog"):
            return False
        name = column.name.lower()
        qualifier = column.table.lower()
        if qualifier:
            if qualifier != alias or columns.get(alias) is None:
                return False
            if name not in (columns[alias] or set()):
                return False
        else:
            if name in output_aliases:
                return False
            if any(cols is None for cols in columns.values()):
                return False
            owners = [a for a, cols in columns.items() if cols is not None and name in cols]
            if owners != [alias]:
                return False
        found = True
    return found


def _volatile(cond: exp.Expr) -> bool:
    for func in cond.find_all(exp.Func):
        name = (func.name if isinstance(func, exp.Anonymous) else func.sql_name()).lower()
        if name in _VOLATILE or isinstance(func, (exp.Rand, exp.Randn)):
            return True
    return False
