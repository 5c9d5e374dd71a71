"""The shape of a join that is not co-located, as the join strategies need it (pure analysis of
the sqlglot tree against the catalog; no I/O).

For each source of a SELECT's FROM and JOINs (each a catalog table): the columns the query reads
from it, the conjuncts that filter it alone and may run before it moves (its "own filters"), and
the equalities that tie two sources' columns (the join keys). Which conjuncts and equalities
qualify follows outer-join semantics:

- a conjunct of WHERE, or of an inner join's ON, holds on every row of the result: it may
  filter a source that no outer join null-extends, before the join;
- a conjunct of a LEFT JOIN's ON that reads only that join's right source filters that source
  before the join (``a LEFT JOIN b ON a.k = b.k AND b.v > 5`` is ``a LEFT JOIN (b WHERE v > 5)``);
  no conjunct of WHERE may (``WHERE b.v IS NULL`` keeps a's rows whose matches all fail it);
- an equality of WHERE or of an inner join's ON is *strict*: both ends are equal and not NULL in
  every row of the result (either end's keys may filter the other, a semi-join reduction); an
  equality of a LEFT JOIN's ON between its right source and an earlier one ties the two for
  co-location, and only the right source may be reduced by the other's keys.

RIGHT and FULL joins, NATURAL joins, USING, derived tables, table functions and DuckDB's
special joins are outside this analysis (``analyse_join`` returns None: the caller gathers).
"""

from __future__ import annotations

import dataclasses

from sqlglot import exp

from exdb.distributed.catalog import Catalog, TableInfo, sqlite_declared_types
from exdb.distributed.placement import affinity

__all__ = ["Edge", "JoinShape", "Source", "analyse_join", "declared_types", "key_compatible"]

#: Pseudo-columns each node numbers for itself: a source whose row id is read cannot move.
_ROW_IDS = frozenset({"rowid", "oid", "_rowid_"})
#: Functions whose value differs per call: a conjunct with one runs where it was written.
_VOLATILE = (exp.Rand,)
_VOLATILE_NAMES = frozenset({"random", "randomblob", "changes", "last_insert_rowid", "uuid"})


@dataclasses.dataclass
class Source:
    """One table of the join."""

    index: int  # 0: FROM; i: the i-th JOIN
    info: TableInfo
    alias: str  # as written (the table's name when it has no alias)
    node: exp.Table  # the tree node (in the statement's tree)
    columns: list[str] = dataclasses.field(default_factory=list)  # read by the query
    filters: list[exp.Expr] = dataclasses.field(default_factory=list)  # its own conjuncts
    null_supplied: bool = False  # the right source of a LEFT JOIN

    @property
    def key(self) -> str:
        """The alias, lower case (sources are told apart by it)."""
        return self.alias.lower()

    @property
    def spread(self) -> bool:
        """Whether its rows are spread over the shards (not a reference table)."""
        return self.info.kind != "reference"


@dataclasses.dataclass(frozen=True)
class Edge:
    """An equality ``left.lcol = right.rcol`` between two sources' columns."""

    left: str  # source key
    lcol: str  # the column's name as the catalog spells it
    right: str
    rcol: str
    strict: bool  # both ends equal and not NULL in every row of the result
    reducible: frozenset[str]  # the sources that the other end's keys may filter

    def other(self, source: str) -> tuple[str, str, str]:
        """(this end's column, the other source, its column), seen from ``source``."""
        if source == self.left:
            return self.lcol, self.right, self.rcol
        return self.rcol, self.left, self.lcol


@dataclasses.dataclass
class JoinShape:
    """A join of catalog tables, with what each strategy needs to move a source exactly."""

    sources: list[Source]
    edges: list[Edge]

    def source(self, key: str) -> Source:
        """The source of an alias (lower case)."""
        for s in self.sources:
            if s.key == key:
                return s
        raise KeyError(key)


def analyse_join(select: exp.Select, catalog: Catalog) -> JoinShape | None:
    """The join's shape, or None when a strategy could not move its sources exactly."""
    from_ = select.args.get("from_")
    if from_ is None or not isinstance(from_.this, exp.Table):
        return None
    nodes: list[tuple[exp.Table, exp.Join | None]] = [(from_.this, None)]
    for join in select.args.get("joins") or []:
        if not isinstance(join.this, exp.Table) or not _plain_join(join):
            return None
        nodes.append((join.this, join))
    sources: list[Source] = []
    for i, (table, join) in enumerate(nodes):
        if table.args.get("db") or table.args.get("catalog") or not table.name:
            return None
        info = catalog.get(table.name)
        if info is None or not info.columns or isinstance(table.this, exp.Func):
            return None
        alias = table.alias_or_name
        if any(s.key == alias.lower() for s in sources):
            return None  # two sources of one name: the engine refuses it, let it say so
        side = (join.side or "").upper() if join is not None else ""
        sources.append(Source(i, info, alias, table, null_supplied=side == "LEFT"))
    shape = JoinShape(sources, [])
    if not _collect_columns(select, shape):
        return None
    _collect_conditions(select, shape)
    return shape


def _plain_join(join: exp.Join) -> bool:
    """An inner, cross or LEFT join with ON (or none), as every engine means it."""
    side = (join.side or "").upper()
    kind = (join.kind or "").upper()
    method = str(join.args.get("method") or "").upper()
    if method or join.args.get("using") or side not in ("", "LEFT"):
        return False
    return kind in ("", "INNER", "CROSS", "OUTER") and not (side == "" and kind == "OUTER")


def _owners(column: exp.Column, shape: JoinShape) -> list[Source]:
    """The sources a column may belong to: its qualifier's, or every source that has a column
    of that name (an unqualified name two sources share is kept in both)."""
    name = column.name.lower()
    if column.table:
        if column.args.get("db") or column.args.get("catalog"):
            return []
        return [s for s in shape.sources if s.key == column.table.lower()]
    return [s for s in shape.sources if s.info.column_index(name) is not None]


def join_keys(select: exp.Select, shape: JoinShape, source: Source) -> tuple[str, ...]:
    """The columns of ``source`` that the statement compares for equality with a column of
    another source, anywhere (an ON, WHERE, or inside an OR): what an index would serve."""
    keys: list[str] = []
    for eq in select.find_all(exp.EQ):
        left, right = eq.this, eq.expression
        if not (isinstance(left, exp.Column) and isinstance(right, exp.Column)):
            continue
        for mine, theirs in ((left, right), (right, left)):
            owners = _owners(mine, shape)
            others = _owners(theirs, shape)
            if owners == [source] and others and source not in others:
                keys.append(mine.name)
    return tuple(dict.fromkeys(keys))


def _collect_columns(select: exp.Select, shape: JoinShape) -> bool:
    """Fill each source's columns read (in table order); False when the query reads something
    a moved source could not give as one database would (a row id, an unknown column of it)."""
    wanted: dict[str, set[str]] = {s.key: set() for s in shape.sources}
    for item in select.expressions:
        if isinstance(item, exp.Star):
            for s in shape.sources:
                wanted[s.key].update(c.lower() for c, _ in s.info.columns)
    for column in select.find_all(exp.Column):
        if isinstance(column.this, exp.Star):
            for s in shape.sources:
                if s.key == column.table.lower():
                    wanted[s.key].update(c.lower() for c, _ in s.info.columns)
            continue
        name = column.name.lower()
        owners = _owners(column, shape)
        if (
            column.table
            and not owners
            and any(column.table.lower() == s.info.name.lower() for s in shape.sources)
        ):
            return False  # ``t.x`` where t is aliased: the engine refuses it, let it say so
        for s in owners:
            if s.info.column_index(name) is None:
                return False  # a row id or a column the table lacks: not moved
            wanted[s.key].add(name)
        if not owners and not column.table and name in _ROW_IDS:
            return False
    for s in shape.sources:
        s.columns = [c for c, _ in s.info.columns if c.lower() in wanted[s.key]]
        if not s.columns:
            s.columns = [s.info.columns[0][0]]  # the join needs its rows, not its values
    return True


def _conjuncts(node: exp.Expr | None) -> list[exp.Expr]:
    if node is None:
        return []
    if isinstance(node, (exp.Where, exp.Paren)):
        return _conjuncts(node.this)
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    return [node]


def _only_source(cond: exp.Expr, shape: JoinShape) -> Source | None:
    """The one source every column of a deterministic, subquery-free conjunct belongs to."""
    if cond.find(exp.Query, exp.AggFunc, exp.Window, *_VOLATILE) is not None:
        return None
    for func in cond.find_all(exp.Anonymous):
        if func.name.lower() in _VOLATILE_NAMES:
            return None
    found: set[str] = set()
    for column in cond.find_all(exp.Column):
        owners = _owners(column, shape)
        if len(owners) != 1:
            return None
        found.add(owners[0].key)
    return shape.source(found.pop()) if len(found) == 1 else None


def _collect_conditions(select: exp.Select, shape: JoinShape) -> None:
    """Each source's own filters and the equalities between sources."""
    outer = any(s.null_supplied for s in shape.sources)
    strict_conds = list(_conjuncts(select.args.get("where")))
    joins = select.args.get("joins") or []
    for position, join in enumerate(joins, 1):
        conds = _conjuncts(join.args.get("on"))
        right = shape.sources[position]
        if not right.null_supplied:
            strict_conds.extend(conds)
            continue
        for cond in conds:
            owner = _only_source(cond, shape)
            if owner is right:
                right.filters.append(cond)
            edge = _equality(cond, shape, strict=False)
            if edge is not None and right.key in (edge.left, edge.right):
                other = edge.left if edge.right == right.key else edge.right
                if shape.source(other).index < right.index:
                    shape.edges.append(dataclasses.replace(edge, reducible=frozenset({right.key})))
    for cond in strict_conds:
        owner = _only_source(cond, shape)
        if owner is not None and not (outer and owner.null_supplied):
            owner.filters.append(cond)
        edge = _equality(cond, shape, strict=True)
        if edge is not None:
            shape.edges.append(edge)


def _equality(cond: exp.Expr, shape: JoinShape, strict: bool) -> Edge | None:
    """``a.x = b.y`` between two sources' columns (the catalog's spelling), or None."""
    if not isinstance(cond, exp.EQ):
        return None
    ends = []
    for side in (cond.this, cond.expression):
        if not isinstance(side, exp.Column) or isinstance(side.this, exp.Star):
            return None
        owners = _owners(side, shape)
        if len(owners) != 1:
            return None
        index = owners[0].info.column_index(side.name)
        if index is None:
            return None
        ends.append((owners[0].key, owners[0].info.columns[index][0]))
    (left, lcol), (right, rcol) = ends
    if left == right:
        return None
    reducible = frozenset({left, right}) if strict else frozenset()
    return Edge(left, lcol, right, rcol, strict, reducible)


def declared_types(info: TableInfo, dialect: str) -> dict[str, str]:
    """Each column's declared type (lower-case name -> type) in the engine's own spelling, read
    from the DDL the catalog keeps. On SQLite, as SQLite itself records it (the DDL run on an
    empty in-memory database): a type rendered by sqlglot can change a column's affinity
    (STRING is NUMERIC to SQLite, TEXT once rendered), and with it the values a TEMP copy of
    the column holds and how they compare."""
    if dialect == "sqlite":
        return dict(sqlite_declared_types(tuple(info.ddl))) or {
            name.lower(): declared for name, declared in info.columns
        }
    import sqlglot

    out = {name.lower(): declared for name, declared in info.columns}
    for text in info.ddl:
        try:
            tree = sqlglot.parse_one(text, read=dialect)
        except sqlglot.errors.SqlglotError:
            continue
        defs: list[exp.Expr] = []
        if isinstance(tree, exp.Create) and isinstance(tree.this, exp.Schema):
            defs = list(tree.this.expressions)
        elif isinstance(tree, exp.Alter):
            defs = list(tree.args.get("actions") or [])
        for item in defs:
            if isinstance(item, exp.ColumnDef) and item.args.get("kind") is not None:
                out[item.name.lower()] = item.args["kind"].sql(dialect)
    return out


def key_compatible(left: str, right: str, dialect: str) -> bool:
    """Whether values of two declared types that the engine compares equal hash alike under one
    affinity (placement.canonical): SQLite compares by affinity, so equal affinities suffice;
    DuckDB casts across types (a DATE equals a TIMESTAMP at midnight), so only equal types, or
    two integer types, qualify."""
    if affinity(left) != affinity(right):
        return False
    if dialect == "sqlite":
        return True
    return left.upper() == right.upper() or affinity(left) == "INTEGER"
