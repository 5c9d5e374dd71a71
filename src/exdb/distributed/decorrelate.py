"""Correlated subqueries (issue 10, item 1): run on the shards where that is exact.

Two ways, tried in this order:

- *Co-located* (:func:`colocated_subquery_tables`): a subquery in WHERE whose distributed tables
  are tied, by equalities of their distribution columns (top-level conjuncts of its WHERE or of
  an inner join's ON), to the distribution column of a distributed table of the outer statement.
  Every inner row that can match an outer row then lives on that row's shard, so each shard
  computes the subquery exactly for its own outer rows, wherever it stands (under NOT, OR, in
  any comparison): the statement plans as if the subquery read reference tables only (TPC-H Q4,
  Q21, as Citus does).
- *Decorrelated* (:func:`decorrelate`), when not co-located:

  - ``[NOT] EXISTS (SELECT .. FROM .. WHERE i = o AND <inner-only conjuncts>)``, one equality
    between an inner and an outer column: ``(o IS NOT NULL AND o IN (SELECT i FROM .. WHERE ..
    AND i IS NOT NULL))``; NOT EXISTS becomes ``(o IS NULL OR NOT o IN (...))``. Both are
    exactly two-valued, as EXISTS is, so they are exact in any position. (``x IN (SELECT y)``
    compares as ``x = y`` on both engines; no COLLATE is allowed.)
  - ``o_expr <op> (SELECT E FROM .. WHERE i1 = o1 AND .. AND <inner-only>)``, E an expression
    of aggregates: the subquery becomes a derived table grouped by the inner columns,
    ``(SELECT i1 AS k1, .., E AS v FROM .. WHERE .. GROUP BY i1, ..)``, joined on ``k = o``.
    When E is NULL over no rows (AVG, SUM, MIN, MAX and arithmetic with literals over them) and
    the comparison is a top-level conjunct of WHERE, an inner join is exact: an outer row with
    no group compares with NULL and is dropped either way. ``COUNT`` is 0 over no rows: a LEFT
    JOIN reads ``COALESCE(v, 0)``, exact anywhere in WHERE. A group must match as the
    correlation does, once: each pair of correlated columns has the same SQLite affinity, or the
    same DuckDB type (not a floating type, whose -0.0 and 0.0 compare equal).

  The derived table and the IN subquery are then uncorrelated: recursive planning runs them
  first (exdb.distributed.plan.recursive). Anything else is left as written (and gathered).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sqlglot import exp

from exdb.distributed.catalog import Catalog, TableInfo
from exdb.distributed.joinshape import declared_types
from exdb.distributed.placement import affinity

__all__ = ["colocated_subquery_tables", "decorrelate"]

#: Prefix of the names the derived tables and their columns get.
PREFIX = "exdb_dc"

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
_NULL_ON_EMPTY = (exp.Avg, exp.Sum, exp.Min, exp.Max)
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Paren, exp.Neg, exp.Literal)
_FLOATS = ("FLOAT", "DOUBLE", "REAL", "FLOAT4", "FLOAT8")


@dataclasses.dataclass
class _Scope:
    """A SELECT's sources: alias (lower case) -> catalog table."""

    sources: dict[str, TableInfo]

    def owner(self, column: exp.Column) -> str | None:
        """The alias of the source a column belongs to, or None (not here, or ambiguous)."""
        if column.args.get("db") or column.args.get("catalog"):
            return None
        if column.table:
            alias = column.table.lower()
            if alias not in self.sources:
                return None
            return alias if self.sources[alias].column_index(column.name) is not None else None
        found = [
            a for a, info in self.sources.items() if info.column_index(column.name) is not None
        ]
        return found[0] if len(found) == 1 else None

    def has_name(self, column: exp.Column) -> bool:
        """Whether the column's name could be read from this scope (its qualifier, or a source
        with a column of that name): then it is not an outer reference."""
        if column.table:
            return column.table.lower() in self.sources
        return any(info.column_index(column.name) is not None for info in self.sources.values())


def _scope(select: exp.Select, catalog: Catalog) -> _Scope | None:
    """The plain catalog tables a SELECT reads in FROM/JOIN, or None if it reads anything else."""
    from_ = select.args.get("from_")
    if from_ is None:
        return None
    out: dict[str, TableInfo] = {}
    for node in [from_.this, *(j.this for j in select.args.get("joins") or [])]:
        if not isinstance(node, exp.Table) or isinstance(node.this, exp.Func):
            return None
        if node.args.get("db") or node.args.get("catalog") or not node.name:
            return None
        alias = node.args.get("alias")
        if isinstance(alias, exp.TableAlias) and alias.columns:
            return None
        info = catalog.get(node.name)
        if info is None or not info.columns or node.alias_or_name.lower() in out:
            return None
        out[node.alias_or_name.lower()] = info
    return _Scope(out)


def _conjuncts(node: exp.Expr | None) -> list[exp.Expr]:
    if node is None:
        return []
    if isinstance(node, (exp.Where, exp.Paren)):
        return _conjuncts(node.this)
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    return [node]


def _inner_joins_only(select: exp.Select) -> bool:
    for join in select.args.get("joins") or []:
        side = (join.side or "").upper()
        kind = (join.kind or "").upper()
        if side or join.args.get("using") or join.args.get("method"):
            return False
        if kind not in ("", "INNER", "CROSS"):
            return False
    return True


@dataclasses.dataclass
class _Correlated:
    """A subquery's SELECT resolved against its own scope and the outer one."""

    select: exp.Select
    inner: _Scope
    #: Every column of the subquery: ("inner" | "outer", alias).
    refs: dict[int, tuple[str, str]]

    def side(self, node: exp.Expr) -> set[str]:
        """Which scopes a subtree's columns read."""
        return {self.refs[id(c)][0] for c in node.find_all(exp.Column)}


def _resolve(
    query: exp.Expr, outer: _Scope, catalog: Catalog, plain: bool = True
) -> _Correlated | None:
    """Resolve each column of a one-level subquery (a SELECT over catalog tables, no nested
    query, no COLLATE) to its scope; None when any column cannot be told or it is beyond this.
    ``plain``: also refuse GROUP BY, HAVING, LIMIT, OFFSET, ORDER BY, windows and DISTINCT."""
    if not isinstance(query, exp.Select) or query.args.get("with_"):
        return None
    if any(n is not query for n in query.find_all(exp.Query)) or query.find(exp.Collate):
        return None
    if plain and any(
        query.args.get(k) for k in ("group", "having", "limit", "offset", "order", "distinct")
    ):
        return None
    if plain and query.find(exp.Window) is not None:
        return None
    inner = _scope(query, catalog)
    if inner is None:
        return None
    refs: dict[int, tuple[str, str]] = {}
    for column in query.find_all(exp.Column):
        if isinstance(column.this, exp.Star):
            return None
        alias = inner.owner(column)
        if alias is not None:
            refs[id(column)] = ("inner", alias)
            continue
        if inner.has_name(column):
            return None  # ambiguous, or a column the table lacks: the engine says so
        alias = outer.owner(column)
        if alias is None:
            return None
        refs[id(column)] = ("outer", alias)
    return _Correlated(query, inner, refs)


# --- co-located subqueries ----------------------------------------------------------------------


def colocated_subquery_tables(tree: exp.Expr, catalog: Catalog) -> set[int]:
    """The ids of the Table nodes read by the co-located correlated subqueries in a SELECT's
    WHERE (see the module's docstring): the planner may treat them as present on every shard."""
    if not isinstance(tree, exp.Select) or tree.args.get("where") is None:
        return set()
    outer = _scope(tree, catalog)
    if outer is None:
        return set()
    found: set[int] = set()
    for query in _where_subqueries(tree):
        if _colocated(query, outer, catalog):
            found.update(id(t) for t in query.find_all(exp.Table))
    return found


def _where_subqueries(tree: exp.Select) -> list[exp.Expr]:
    """The queries of the subqueries directly in a SELECT's WHERE (not nested in another)."""
    out = []
    for node in tree.args["where"].find_all(exp.Select, exp.SetOperation):
        parent = node.parent
        while parent is not None and not isinstance(parent, (exp.Select, exp.SetOperation)):
            parent = parent.parent
        if parent is tree:
            out.append(node)
    return out


def _colocated(query: exp.Expr, outer: _Scope, catalog: Catalog) -> bool:
    resolved = _resolve(query, outer, catalog, plain=False)
    if resolved is None or not _inner_joins_only(resolved.select):
        return False
    if "outer" not in {scope for scope, _ in resolved.refs.values()}:
        return False  # uncorrelated: recursive planning runs it on its own
    inner_spread = {a: i for a, i in resolved.inner.sources.items() if i.kind != "reference"}
    if any(i.kind != "distributed" for i in inner_spread.values()):
        return False
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(a: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(a, a)
        while parent[a] != a:
            a = parent[a]
        return a

    conds = _conjuncts(resolved.select.args.get("where"))
    for join in resolved.select.args.get("joins") or []:
        conds.extend(_conjuncts(join.args.get("on")))
    affinities = {i.column_affinity for i in inner_spread.values()}
    for cond in conds:
        if not isinstance(cond, exp.EQ):
            continue
        ends = []
        for side in (cond.this, cond.expression):
            if not isinstance(side, exp.Column):
                break
            scope, alias = resolved.refs[id(side)]
            info = (resolved.inner if scope == "inner" else outer).sources[alias]
            if info.kind != "distributed" or info.column is None:
                break
            if side.name.lower() != info.column.lower():
                break
            ends.append(((scope, alias), info.column_affinity))
        if len(ends) == 2 and ends[0][1] == ends[1][1]:
            parent[find(ends[0][0])] = find(ends[1][0])
            affinities.add(ends[0][1])
    if len(affinities) != 1:
        return False
    roots = {find(key) for key in parent if key[0] == "outer"}
    return all(find(("inner", alias)) in roots for alias in inner_spread)


# --- decorrelation ------------------------------------------------------------------------------


def decorrelate(tree: exp.Select, catalog: Catalog, dialect: str) -> exp.Select | None:
    """The statement with each correlated EXISTS and scalar aggregate in its WHERE that is not
    co-located rewritten as the module's docstring says, or None when none could be."""
    if tree.args.get("where") is None or tree.find(exp.Collate):
        return None
    outer_scope = _scope(tree, catalog)
    if outer_scope is None:
        return None
    tree = tree.copy()
    colocated = colocated_subquery_tables(tree, catalog)
    changed = 0
    for query in _where_subqueries(tree):
        if any(id(t) in colocated for t in query.find_all(exp.Table)):
            continue
        node = query.parent
        if isinstance(node, exp.Exists):
            changed += _exists(tree, node, outer_scope, catalog)
        elif isinstance(node, exp.Subquery):
            changed += _scalar(tree, node, outer_scope, catalog, dialect, changed + 1)
    return tree if changed else None


def _split_correlation(
    resolved: _Correlated,
) -> tuple[list[tuple[exp.Column, exp.Column]], list[exp.Expr]] | None:
    """The correlation equalities (inner column, outer column) and the inner-only conjuncts of
    a subquery's WHERE; None when a conjunct reads the outer statement otherwise."""
    pairs: list[tuple[exp.Column, exp.Column]] = []
    rest: list[exp.Expr] = []
    for join in resolved.select.args.get("joins") or []:
        if "outer" in resolved.side(join):
            return None
    for cond in _conjuncts(resolved.select.args.get("where")):
        sides = resolved.side(cond)
        if "outer" not in sides:
            rest.append(cond)
            continue
        if not isinstance(cond, exp.EQ):
            return None
        left, right = cond.this, cond.expression
        if not (isinstance(left, exp.Column) and isinstance(right, exp.Column)):
            return None
        scopes = (resolved.refs[id(left)][0], resolved.refs[id(right)][0])
        if scopes == ("inner", "outer"):
            pairs.append((left, right))
        elif scopes == ("outer", "inner"):
            pairs.append((right, left))
        else:
            return None
    if not pairs or any("outer" in resolved.side(e) for e in resolved.select.expressions):
        return None
    return pairs, rest


def _where_of(conds: Sequence[exp.Expr]) -> exp.Expr | None:
    if not conds:
        return None
    out = conds[0].copy()
    for cond in conds[1:]:
        out = exp.And(this=out, expression=cond.copy())
    return out


def _exists(tree: exp.Select, node: exp.Exists, outer: _Scope, catalog: Catalog) -> int:
    """``[NOT] EXISTS`` with one equality: an IN (see the module's docstring); 1 if rewritten."""
    query = node.this
    resolved = _resolve(query, outer, catalog)
    if resolved is None or not _inner_joins_only(resolved.select):
        return 0
    if any(resolved.select.find_all(exp.AggFunc)):
        return 0  # an aggregate makes one row of none
    split = _split_correlation(resolved)
    if split is None or len(split[0]) != 1:
        return 0
    (inner_col, outer_col), rest = split[0][0], split[1]
    select = resolved.select.copy()
    key = inner_col.copy()
    select.set("expressions", [key])
    select.set("distinct", exp.Distinct())  # IN reads a set: each shard sends each key once
    where = _where_of([*rest, exp.Not(this=exp.Is(this=inner_col.copy(), expression=exp.Null()))])
    select.set("where", exp.Where(this=where))
    member = exp.In(this=outer_col.copy(), query=exp.Subquery(this=select))
    negated = isinstance(node.parent, exp.Not)
    if negated:
        replacement: exp.Expr = exp.Paren(
            this=exp.Or(
                this=exp.Is(this=outer_col.copy(), expression=exp.Null()),
                expression=exp.Not(this=member),
            )
        )
        assert node.parent is not None
        node.parent.replace(replacement)
    else:
        replacement = exp.Paren(
            this=exp.And(
                this=exp.Not(this=exp.Is(this=outer_col.copy(), expression=exp.Null())),
                expression=member,
            )
        )
        node.replace(replacement)
    return 1


def _null_on_empty(expr: exp.Expr) -> bool:
    """Whether an expression of aggregates is NULL over no rows: AVG/SUM/MIN/MAX, combined with
    literals by arithmetic."""
    if isinstance(expr, _NULL_ON_EMPTY):
        return True
    if not isinstance(expr, _ARITHMETIC) or isinstance(expr, exp.Literal):
        return False
    children = [c for c in expr.iter_expressions()]
    ok = all(_null_on_empty(c) or isinstance(c, exp.Literal) for c in children)
    return ok and any(_null_on_empty(c) for c in children)


def _same_kind(
    inner: exp.Column, outer: exp.Column, resolved: _Correlated, outer_scope: _Scope, dialect: str
) -> bool:
    """Whether the two columns compare as GROUP BY tells values apart (see the docstring)."""
    infos = (
        resolved.inner.sources[resolved.refs[id(inner)][1]],
        outer_scope.sources[resolved.refs[id(outer)][1]],
    )
    types = [
        declared_types(info, dialect).get(c.name.lower()) or ""
        for info, c in zip(infos, (inner, outer), strict=True)
    ]
    if dialect == "sqlite":
        return affinity(types[0]) == affinity(types[1])
    first, second = (t.upper().replace(" ", "") for t in types)
    if not first or first != second:
        return False
    return not first.startswith(_FLOATS)


def _top_level(node: exp.Expr, tree: exp.Select) -> bool:
    return any(c is node for c in _conjuncts(tree.args.get("where")))


def _scalar(
    tree: exp.Select,
    node: exp.Subquery,
    outer: _Scope,
    catalog: Catalog,
    dialect: str,
    number: int,
) -> int:
    """A correlated scalar aggregate: a join with a grouped derived table; 1 if rewritten."""
    if node.args.get("alias") or isinstance(node.parent, (exp.In, exp.Any, exp.All)):
        return 0
    if any(isinstance(item, exp.Star) for item in tree.expressions):
        return 0  # ``SELECT *`` would read the derived table's columns too
    resolved = _resolve(node.this, outer, catalog)
    if resolved is None or not _inner_joins_only(resolved.select):
        return 0
    items = resolved.select.expressions
    if len(items) != 1:
        return 0
    value = items[0].unalias() if isinstance(items[0], exp.Alias) else items[0]
    is_count = isinstance(value, exp.Count)
    if not is_count:
        comparison = node.parent
        if not (isinstance(comparison, _COMPARISONS) and _top_level(comparison, tree)):
            return 0
        other = comparison.expression if comparison.this is node else comparison.this
        if other.find(exp.Query) is not None or not _null_on_empty(value):
            return 0
    split = _split_correlation(resolved)
    if split is None:
        return 0
    pairs, rest = split
    if not all(_same_kind(i, o, resolved, outer, dialect) for i, o in pairs):
        return 0
    name = f"{PREFIX}_{number}"
    keys = [f"{PREFIX}_k{i}" for i in range(1, len(pairs) + 1)]
    derived = resolved.select.copy()
    derived.set(
        "expressions",
        [exp.alias_(i.copy(), k) for (i, _), k in zip(pairs, keys, strict=True)]
        + [exp.alias_(value.copy(), f"{PREFIX}_v")],
    )
    where = _where_of(rest)
    derived.set("where", exp.Where(this=where) if where is not None else None)
    derived.set("group", exp.Group(expressions=[i.copy() for i, _ in pairs]))
    source = exp.Subquery(this=derived, alias=exp.TableAlias(this=exp.to_identifier(name)))
    ties = [
        exp.EQ(this=exp.column(k, table=name), expression=o.copy())
        for (_, o), k in zip(pairs, keys, strict=True)
    ]
    read: exp.Expr = exp.column(f"{PREFIX}_v", table=name)
    joins = list(tree.args.get("joins") or [])
    if is_count:
        read = exp.Coalesce(this=read, expressions=[exp.Literal.number(0)])
        joins.append(exp.Join(this=source, side="LEFT", on=_where_of(ties)))
        tree.set("joins", joins)
        node.replace(read)
        return 1
    joins.append(exp.Join(this=source))
    tree.set("joins", joins)
    node.replace(read)
    conds = [tree.args["where"].this, *ties]
    tree.set("where", exp.Where(this=_where_of(conds)))
    return 1
