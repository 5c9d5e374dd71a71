"""Stage 3, rewrite: the SQL each shard runs, and the SQL of the final stage.

- :func:`split_aggregate` turns one aggregate query into a partial query for the shards and a
  final query over their partial rows (Citus's partial/final split): COUNT and SUM add up, MIN
  and MAX of minima and maxima, AVG becomes SUM/COUNT. ``COUNT(DISTINCT x)`` ships each group's
  distinct values as one collected value (``collect``: the shards' engine), which the merge
  unions; other DISTINCT aggregates ship their argument as an extra grouping key so that the
  final stage de-duplicates across shards.
- :func:`split_scatter` pushes ORDER BY and ``LIMIT limit + offset`` down to the shards and
  says how to merge (sort keys, hidden sort columns to strip).
- :func:`substitute_macros` applies eXtremeSQL's ``%#`` (node number) and ``%@`` (shard count).

Anything that cannot be split exactly returns None, and the planner answers the query by
gathering rows instead. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses

from sqlglot import exp

__all__ = [
    "AggregateSplit",
    "ScatterSplit",
    "aggregate_below_joins",
    "split_aggregate",
    "split_scatter",
    "substitute_macros",
]

PARTIAL_TABLE = "_exdb_partial"
LIMIT_PARAM = "exdb_limit"
#: The shard aggregate that collects a group's distinct values (SQLite: the exdb server's own
#: function, a packed list; DuckDB: LIST).
COLLECT = {"sqlite": "exdb_collect", "duckdb": "LIST"}


def substitute_macros(sql: str, node: int, shards: int) -> str:
    """eXtremeSQL's broadcast macros: ``%#`` -> 1-based node number, ``%@`` -> shard count."""
    return sql.replace("%#", str(node)).replace("%@", str(shards))


def _col(name: str) -> exp.Column:
    return exp.column(name, quoted=True)


def _unqualified(node: exp.Expr) -> exp.Expr:
    """A copy with column qualifiers removed, for comparing expressions structurally."""
    copy = node.copy()
    for column in copy.find_all(exp.Column):
        column.set("table", None)
    return copy


def _is_total(node: exp.Expr) -> bool:
    return isinstance(node, exp.Anonymous) and node.name.lower() == "total"


_SIMPLE_AGGS = (exp.Count, exp.Sum, exp.Min, exp.Max, exp.Avg)


def _aggregates(nodes: list[exp.Expr], owner: exp.Select) -> list[exp.Expr]:
    """The aggregate calls of ``owner`` itself among ``nodes``: those inside a subquery belong
    to the subquery."""
    out: list[exp.Expr] = []
    for node in nodes:
        for found in node.find_all(exp.AggFunc, exp.Anonymous):
            if not (isinstance(found, exp.AggFunc) or _is_total(found)):
                continue
            if found.find_ancestor(exp.Select) is owner:
                out.append(found)
    return out


def _distinct_arg(agg: exp.Expr) -> exp.Expr | None:
    inner = agg.this if not isinstance(agg, exp.Anonymous) else (agg.expressions or [None])[0]
    if isinstance(inner, exp.Distinct):
        return inner.expressions[0] if len(inner.expressions) == 1 else inner
    return None


@dataclasses.dataclass
class AggregateSplit:
    """A partial query for the shards and the final query over their rows."""

    shard: exp.Select
    final: exp.Select
    partial_columns: list[str]
    groups: int = 0  # the leading partial columns that are the group keys
    collected: list[int] = dataclasses.field(default_factory=list)  # columns of collected values


def _resolve_group(select: exp.Select) -> list[exp.Expr] | None:
    group = select.args.get("group")
    if group is None:
        return []
    items = list(select.expressions)
    aliases = {e.alias.lower(): e.this for e in items if isinstance(e, exp.Alias)}
    out = []
    for key in group.expressions:
        if isinstance(key, exp.Literal) and not key.is_string:
            index = int(key.this) - 1
            if not 0 <= index < len(items):
                return None
            item = items[index]
            out.append(item.this if isinstance(item, exp.Alias) else item)
        elif isinstance(key, exp.Column) and not key.table and key.name.lower() in aliases:
            return None  # GROUP BY an alias: the engines disagree on columns of that name
        else:
            out.append(key)
    return out


def split_aggregate(
    select: exp.Select, single_source: bool, collect: str | None = None
) -> AggregateSplit | None:
    """Split an aggregate query, or return None when no exact split exists. With ``collect``
    (the shards' engine), COUNT(DISTINCT x) ships collected distinct values instead of x as an
    extra grouping key; the caller passes it only where values compare without collations."""
    if select.find(exp.Filter) is not None:
        return None  # an aggregate FILTER clause: gathered
    if _own_stars(select) and not _only_count_star(select):
        return None
    groups = _resolve_group(select)
    if groups is None:
        return None
    order = select.args.get("order")
    having = select.args.get("having")
    scope: list[exp.Expr] = list(select.expressions)
    scope += [having] if having is not None else []
    scope += [order] if order is not None else []
    aggs = _aggregates(scope, select)
    if not aggs and not groups:
        return None
    for agg in aggs:
        if not (isinstance(agg, _SIMPLE_AGGS) or _is_total(agg)):
            return None  # GROUP_CONCAT, statistics, ...: gathered instead
        if agg.find(exp.AggFunc, exp.Select) is not None and any(
            n is not agg for n in agg.find_all(exp.AggFunc)
        ):
            return None
    distinct_args = {_unqualified(d) for a in aggs if (d := _distinct_arg(a)) is not None}
    if any(isinstance(d, exp.Distinct) for d in distinct_args):
        return None  # COUNT(DISTINCT a, b): gathered
    if collect is not None and not all(_collectable(a) for a in aggs):
        collect = None
    if collect is None and len(distinct_args) > 1:
        return None  # several DISTINCT arguments cannot share one extra grouping key
    norm = _unqualified if single_source else (lambda e: e)

    shard_items: list[exp.Expr] = []
    names: list[str] = []
    made: dict[exp.Expr, str] = {}

    def partial(expr: exp.Expr) -> str:
        if expr in made:  # SUM(v) for both SUM(v) and AVG(v): computed once
            return made[expr]
        name = made[expr] = f"_c{len(names)}"
        shard_items.append(exp.alias_(expr, name, quoted=True))
        names.append(name)
        return name

    group_names = [partial(g.copy()) for g in groups]
    distinct_name = None
    if distinct_args and collect is None:
        source = next(d for a in aggs if (d := _distinct_arg(a)) is not None)
        distinct_name = partial(source.copy())

    finals: dict[int, exp.Expr] = {}
    collected: dict[exp.Expr, str] = {}  # unqualified DISTINCT argument -> its partial column
    for agg in aggs:
        if id(agg) in finals:
            continue
        d = _distinct_arg(agg)
        if collect is not None and d is not None:
            key = _unqualified(d)
            if key not in collected:
                call = exp.Anonymous(
                    this=COLLECT[collect], expressions=[exp.Distinct(expressions=[d.copy()])]
                )
                collected[key] = partial(call)
            finals[id(agg)] = _union_count(collected[key])
            continue
        finals[id(agg)] = _final_of(agg, partial, distinct_name)

    shard = select.copy()
    shard.set("expressions", shard_items)
    shard.set("having", None)
    shard.set("order", None)
    shard.set("limit", None)
    shard.set("offset", None)
    shard.set("distinct", None)
    # Group the shards by the partial columns' names: an integer constant written as a GROUP BY
    # term would be read as a column position.
    shard_groups = [_col(n) for n in group_names]
    if distinct_name is not None:
        shard_groups.append(_col(distinct_name))
    shard.set("group", exp.Group(expressions=shard_groups) if shard_groups else None)

    group_forms = [(norm(g), name) for g, name in zip(groups, group_names, strict=True)]

    aliases = {e.alias.lower() for e in select.expressions if isinstance(e, exp.Alias)}

    def to_final(node: exp.Expr) -> exp.Expr:
        if id(node) in finals:
            return finals[id(node)].copy()
        if (
            isinstance(node, exp.Column)
            and not node.table
            and node.name.lower() in aliases
            and node.find_ancestor(exp.Order) is not None
        ):
            return node  # ORDER BY an output alias: the alias, not a column of that name
        if not isinstance(node, (exp.Alias, exp.Ordered)) and group_forms:
            form = norm(node)
            for g, name in group_forms:
                if form == g:
                    return _col(name)
        return node

    final = select.copy()
    # Map the copy's aggregate nodes to the originals' finals by position.
    originals = _aggregates(scope, select)
    copies_scope: list[exp.Expr] = list(final.expressions)
    copies_scope += [final.args["having"]] if final.args.get("having") is not None else []
    copies_scope += [final.args["order"]] if final.args.get("order") is not None else []
    copies = _aggregates(copies_scope, final)
    finals = {
        id(c): finals[id(o)] for c, o in zip(copies, originals, strict=True) if id(o) in finals
    }
    final.set("expressions", [e.transform(to_final, copy=False) for e in final.expressions])
    if final.args.get("having") is not None:
        final.set("having", final.args["having"].transform(to_final, copy=False))
    if final.args.get("order") is not None:
        final.set("order", final.args["order"].transform(to_final, copy=False))
    final.set("from_", exp.From(this=exp.to_table(PARTIAL_TABLE)))
    final.set("joins", None)
    final.set("where", None)
    final.set("group", exp.Group(expressions=[_col(n) for n in group_names]) if groups else None)
    if _bare_columns(final, set(names)):
        return None  # SQLite's "bare column" picks a row; only gathering reproduces it
    if any(q is not final for q in final.find_all(exp.Select)):
        return None  # a subquery would run where only the partial rows are: gathered
    collected_at = [names.index(n) for n in collected.values()]
    return AggregateSplit(shard, final, names, len(set(group_names)), collected_at)


def _collectable(agg: exp.Expr) -> bool:
    """Whether the aggregate is fine with collected distinct values: COUNT(DISTINCT x) without a
    COLLATE, or no DISTINCT at all."""
    d = _distinct_arg(agg)
    if d is None:
        return True
    return isinstance(agg, exp.Count) and d.find(exp.Collate) is None


def _union_count(name: str) -> exp.Expr:
    """COUNT(DISTINCT x) over the shards' collected values of x: the merge replaces them with
    the size of each group's union (on one row of the group, 0 on the others), summed here."""
    return _count_total(_col(name))


def _count_total(partials: exp.Expr) -> exp.Expr:
    """The sum of partial counts, typed as one database types COUNT: BIGINT (DuckDB's SUM of
    BIGINTs is a HUGEINT)."""
    total = exp.func("COALESCE", exp.Sum(this=partials), exp.Literal.number(0))
    return exp.Cast(this=total, to=exp.DataType.build("BIGINT"))


def _own_stars(select: exp.Select) -> list[exp.Star]:
    """The ``*`` of the SELECT itself (not of a subquery in it: ``EXISTS (SELECT * ...)``)."""
    return [s for s in select.find_all(exp.Star) if s.find_ancestor(exp.Select) is select]


def _only_count_star(select: exp.Select) -> bool:
    stars = _own_stars(select)
    return bool(stars) and all(isinstance(s.parent, exp.Count) for s in stars)


def _final_of(agg: exp.Expr, partial: object, distinct_name: str | None) -> exp.Expr:
    make = partial  # type: ignore[assignment]
    d = _distinct_arg(agg)
    if d is not None:
        assert distinct_name is not None
        copy = agg.copy()
        inner = copy.this if not isinstance(copy, exp.Anonymous) else copy.expressions[0]
        inner.set("expressions", [_col(distinct_name)])
        return copy
    if isinstance(agg, exp.Count):
        name = make(agg.copy())  # type: ignore[operator]
        return _count_total(_col(name))
    if isinstance(agg, exp.Sum):
        return exp.Sum(this=_col(make(agg.copy())))  # type: ignore[operator]
    if _is_total(agg):
        return exp.Anonymous(this="TOTAL", expressions=[_col(make(agg.copy()))])  # type: ignore[operator]
    if isinstance(agg, (exp.Min, exp.Max)):
        return type(agg)(this=_col(make(agg.copy())))  # type: ignore[operator]
    assert isinstance(agg, exp.Avg)
    total = make(exp.Sum(this=agg.this.copy()))  # type: ignore[operator]
    count = make(exp.Count(this=agg.this.copy()))  # type: ignore[operator]
    return exp.Div(
        this=exp.Cast(this=exp.Sum(this=_col(total)), to=exp.DataType.build("DOUBLE")),
        expression=exp.func("NULLIF", exp.Sum(this=_col(count)), exp.Literal.number(0)),
    )


def _bare_columns(final: exp.Select, partial_names: set[str]) -> bool:
    aliases = {e.alias.lower() for e in final.expressions if isinstance(e, exp.Alias)}
    for column in final.find_all(exp.Column):
        name = column.name
        if name in partial_names:
            continue
        in_order = column.find_ancestor(exp.Order) is not None
        if in_order and not column.table and name.lower() in aliases:
            continue
        return True
    return False


@dataclasses.dataclass
class ScatterSplit:
    """A query the shards run as it is (with LIMIT pushed down), and how to merge them."""

    shard: exp.Select
    sort: list[tuple[int, bool, bool | None]]  # (column index, desc, nulls_first)
    hidden: int  # trailing sort-only columns to strip
    limit: exp.Expr | None
    offset: exp.Expr | None


def split_scatter(select: exp.Select, engine: str) -> ScatterSplit | None:
    """Push ORDER BY and LIMIT down; None when the merge cannot be exact without gathering."""
    shard = select.copy()
    limit_node = select.args.get("limit")
    offset_node = select.args.get("offset")
    limit = limit_node.expression if limit_node is not None else None
    offset = offset_node.expression if offset_node is not None else None
    for bound in (limit, offset):
        if bound is not None and bound.find(exp.Select, exp.Column) is not None:
            return None
    items = list(shard.expressions)
    has_star = any(isinstance(e, exp.Star) or e.find(exp.Star) for e in items)
    aliases = {}
    for i, e in enumerate(items):
        if isinstance(e, exp.Alias):
            aliases[e.alias.lower()] = i
        elif isinstance(e, exp.Column) and not has_star:
            aliases.setdefault(e.name.lower(), i)
    sort: list[tuple[int, bool, bool | None]] = []
    hidden: list[exp.Expr] = []
    order = select.args.get("order")
    for ordered in order.expressions if order is not None else []:
        key = ordered.this
        if key.find(exp.Collate) is not None:
            return None
        desc = bool(ordered.args.get("desc"))
        nulls_first = ordered.args.get("nulls_first")
        explicit = _explicit_nulls(ordered, engine)
        if isinstance(key, exp.Literal) and not key.is_string:
            index = int(key.this) - 1
            if has_star or not 0 <= index < len(items):
                return None
        elif isinstance(key, exp.Column) and not key.table and key.name.lower() in aliases:
            index = aliases[key.name.lower()]
        else:
            if select.args.get("distinct"):
                return None
            hidden.append(exp.alias_(key.copy(), f"_o{len(hidden)}", quoted=True))
            index = -len(hidden)  # fixed up below, counted from the end
        sort.append((index, desc, nulls_first if explicit else None))
    if hidden:
        shard.set("expressions", items + hidden)
        # Hidden keys were numbered -1, -2, ... in the order added; as indexes from the end of
        # the row, the k-th (0-based) of n is at k - n.
        n = len(hidden)
        sort = [((-i - 1) - n if i < 0 else i, d, nf) for i, d, nf in sort]
    shard.set("offset", None)
    if limit is not None:
        # LIMIT limit + offset, computed at run time (a negative LIMIT means none in SQLite).
        shard.set("limit", exp.Limit(expression=exp.Placeholder(this=LIMIT_PARAM)))
    if order is not None:
        shard.set("order", order.copy())
    return ScatterSplit(shard, sort, len(hidden), limit, offset)


def _explicit_nulls(ordered: exp.Ordered, engine: str) -> bool:
    """Whether NULLS FIRST/LAST was written (sqlglot fills in the dialect's default)."""
    return "NULLS" in ordered.sql(engine).upper()


#: The shard partials that eager aggregation can pre-aggregate (and TOTAL).
_PREAGGREGABLE = (exp.Count, exp.Sum, exp.Min, exp.Max)
EAGER_PREFIX = "_exdb_e"


def aggregate_below_joins(
    shard: exp.Select,
    fact: str,
    source_columns: dict[str, set[str]],
    many_valued: str | None = None,
) -> exp.Select | None:
    """Eager aggregation: a shard's partial query over one distributed table ``fact`` (its alias)
    inner-joined to reference tables, with the distributed table aggregated first by the columns
    the rest of the query reads, and the joins then done on those few rows::

        SELECT i.region, COUNT(*), SUM(f.v) FROM facts f JOIN info i ON f.g = i.g GROUP BY 1
        -> SELECT i.region, CAST(COALESCE(SUM(f._exdb_e0), 0) AS BIGINT), SUM(f._exdb_e1)
           FROM (SELECT f.g AS g, COUNT(*) AS _exdb_e0, SUM(f.v) AS _exdb_e1
                 FROM facts f GROUP BY f.g) AS f JOIN info i ON f.g = i.g GROUP BY 1

    Exact for COUNT, SUM, TOTAL, MIN and MAX of the distributed table's columns: an inner join
    repeats a pre-aggregated row for each match as it would repeat each of its rows.
    ``source_columns`` maps every source's alias (lower case) to its columns' names (lower case).

    None when the query is not of that shape (outer joins, USING, a subquery, a DISTINCT
    aggregate, an aggregate over a reference table's columns, an ambiguous column, ...), or
    when it reads ``many_valued`` (a column with about one row per value, such as the
    distribution key) outside its aggregates: there would be about as many groups as rows."""
    from_ = shard.args.get("from_")
    joins = shard.args.get("joins") or []
    if from_ is None or not joins:
        return None
    sources = [from_.this] + [j.this for j in joins]
    if not all(isinstance(s, exp.Table) and not s.args.get("joins") for s in sources):
        return None
    aliases = [s.alias_or_name.lower() for s in sources]
    if len(set(aliases)) != len(aliases) or set(aliases) != set(source_columns):
        return None
    for join in joins:
        if join.side or join.kind not in ("", "INNER") or join.args.get("using"):
            return None
        if join.args.get("on") is None or join.args.get("method"):
            return None
    if any(q is not shard for q in shard.find_all(exp.Select)) or shard.find(exp.Window):
        return None
    items = {e.alias.lower() for e in shard.expressions if isinstance(e, exp.Alias)}
    if any(items & columns for columns in source_columns.values()):
        return None

    def owner(column: exp.Column) -> str | None:
        if column.table:
            return column.table.lower()
        name = column.name.lower()
        found = [a for a, columns in source_columns.items() if name in columns]
        return found[0] if len(found) == 1 else None

    for call in shard.find_all(exp.Anonymous):
        if call.name.upper() in {c.upper() for c in COLLECT.values()} and not _distinct_arg(call):
            return None
    # A collected COUNT(DISTINCT x) (its DISTINCT ignores repeats) reads x as a grouping key.
    aggs = _aggregates(list(shard.expressions), shard)
    for agg in aggs:
        if not (isinstance(agg, _PREAGGREGABLE) or _is_total(agg)) or _distinct_arg(agg):
            return None
        for column in agg.find_all(exp.Column):
            if owner(column) != fact:
                return None
    inside = {id(c) for agg in aggs for c in agg.find_all(exp.Column)}

    # The WHERE conjuncts over the distributed table alone filter its rows before aggregating.
    pushed: list[exp.Expr] = []
    kept: list[exp.Expr] = []
    where = shard.args.get("where")
    condition = where.this if where is not None else None
    conjuncts = condition.flatten() if isinstance(condition, exp.And) else [condition]
    for conjunct in [c for c in conjuncts if c is not None]:
        columns = list(conjunct.find_all(exp.Column))
        if columns and all(owner(c) == fact for c in columns):
            pushed.append(conjunct)
        else:
            kept.append(conjunct)
    pushed_ids = {id(c) for p in pushed for c in p.find_all(exp.Column)}

    keys: dict[str, exp.Column] = {}
    for column in shard.find_all(exp.Column):
        if id(column) in inside or id(column) in pushed_ids:
            continue
        if not column.table and column.name.lower() in items:
            continue  # GROUP BY "_c0": a select item's alias (no source has such a column)
        who = owner(column)
        if who is None:
            return None
        if who == fact:
            keys.setdefault(column.name.lower(), column)
    if not keys or (many_valued is not None and many_valued.lower() in keys):
        return None  # nothing to pre-aggregate by, or about as many groups as rows

    inner_items: list[exp.Expr] = [
        exp.alias_(exp.column(c.name, table=fact, quoted=True), c.name, quoted=True)
        for c in keys.values()
    ]
    combined: dict[int, exp.Expr] = {}
    for i, agg in enumerate(aggs):
        name = f"{EAGER_PREFIX}{i}"
        inner_items.append(exp.alias_(agg.copy(), name, quoted=True))
        ref = exp.column(name, table=fact, quoted=True)
        if isinstance(agg, exp.Count):
            combined[id(agg)] = _count_total(ref)
        elif _is_total(agg):
            combined[id(agg)] = exp.Anonymous(this="TOTAL", expressions=[ref])
        else:
            combined[id(agg)] = type(agg)(this=ref)
    fact_table = next(s for s in sources if s.alias_or_name.lower() == fact).copy()
    inner = exp.select(*inner_items).from_(fact_table)
    if pushed:
        inner = inner.where(exp.and_(*(p.copy() for p in pushed)))
    inner = inner.group_by(*(exp.column(c.name, table=fact, quoted=True) for c in keys.values()))

    out = shard.copy()
    copies = _aggregates(list(out.expressions), out)
    by_copy = {id(c): combined[id(o)] for c, o in zip(copies, aggs, strict=True)}
    out.set(
        "expressions",
        [e.transform(lambda n: by_copy.get(id(n), n), copy=False) for e in out.expressions],
    )
    subquery = exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(fact)))
    position = aliases.index(fact)
    if position == 0:
        out.set("from_", exp.From(this=subquery))
    else:
        out.args["joins"][position - 1].set("this", subquery)
    out.set("where", exp.Where(this=exp.and_(*(k.copy() for k in kept))) if kept else None)
    return out
