"""The planner: ``plan_statement`` chooses a plan kind for one statement (route + rewrite, once
per statement text)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sqlglot import exp

from exdb.distributed.catalog import (
    Catalog,
    TableInfo,
)
from exdb.distributed.decorrelate import decorrelate
from exdb.distributed.files import check_statement
from exdb.distributed.merge import (
    LocalEngine,
)
from exdb.distributed.parse import Parsed, parse, placeholder_names
from exdb.distributed.plan.aggregate import AggregatePlan
from exdb.distributed.plan.base import Plan, render, verbatim_names
from exdb.distributed.plan.broadcast import BroadcastPlan
from exdb.distributed.plan.commands import (
    check_row_order,
    one_node_command,
    placement_call,
    plan_alter,
    plan_create,
    plan_drop,
    plan_insert,
    plan_schema_query,
    plan_write,
    spread_tables,
)
from exdb.distributed.plan.gather import GatherPlan
from exdb.distributed.plan.join import plan_join
from exdb.distributed.plan.recursive import plan_subqueries
from exdb.distributed.plan.rehash import AggregateRehashPlan, window_rehash
from exdb.distributed.plan.renamed import RenamedPlan
from exdb.distributed.plan.scatter import ScatterPlan
from exdb.distributed.plan.setops import plan_set_operation
from exdb.distributed.plan.single import SinglePlan
from exdb.distributed.plan.window import WindowInputPlan, has_window, plan_window
from exdb.distributed.rewrite import (
    AggregateSplit,
    aggregate_below_joins,
    split_aggregate,
    split_scatter,
)
from exdb.distributed.route import (
    SelectShape,
    analyse_select,
    referenced_tables,
    schema_query,
)
from exdb.distributed.views import inline_views, write_target_check
from exdb.errors import Error, ProgrammingError

# --- the planner ------------------------------------------------------------------------------


_TXN_STATEMENTS = (exp.Transaction, exp.Commit, exp.Rollback)


def plan_statement(parsed: Parsed, catalog: Catalog, local: LocalEngine, shards: int) -> Plan:
    """Choose and build the plan of one statement (cached by the caller)."""
    text, tree = parsed.text, parsed.tree
    assert tree is not None
    if isinstance(tree, _TXN_STATEMENTS):
        raise ProgrammingError(
            "transaction statements are not sent to the shards: use commit() and rollback()",
            statement=text,
        )
    if catalog.views and not isinstance(tree, (exp.Create, exp.Drop, exp.Alter)):
        if isinstance(tree, exp.Describe) and any(
            _names_view(t, catalog) for t in tree.find_all(exp.Table)
        ):
            # Every node defines the view alike, and DESCRIBE reads no rows: node 1 answers.
            return SinglePlan(text, text, 0, None, None)
        inlined = _with_views_inlined(parsed, catalog)
        if inlined is not None:
            return _plan_inlined(parsed, inlined[0], inlined[1], catalog, local, shards)
    check_statement(tree, text, catalog, lambda q: spread_tables(q, catalog, text))
    check_row_order(tree, catalog, text)
    if isinstance(tree, exp.Create):
        return plan_create(text, tree, catalog, parsed.dialect)
    if isinstance(tree, exp.Drop):
        return plan_drop(text, tree, catalog)
    if isinstance(tree, exp.Alter):
        return plan_alter(text, tree, catalog)
    if isinstance(tree, exp.Insert):
        return plan_insert(text, tree, catalog, parsed.n_params)
    if isinstance(tree, (exp.Update, exp.Delete)):
        return plan_write(text, tree, catalog, parsed.dialect)
    if isinstance(tree, exp.Select) and (placement := placement_call(text, tree, catalog)):
        return placement
    if isinstance(tree, exp.Query) and schema_query(tree, text):
        return plan_schema_query(text, tree, parsed.n_params, parsed.dialect)
    if isinstance(tree, exp.Query):
        return _plan_select(text, tree, catalog, local, parsed.n_params, parsed.dialect, shards)
    if isinstance(tree, (exp.Pivot, exp.Summarize)):
        # DuckDB's PIVOT/UNPIVOT and SUMMARIZE read a table's rows: gathered (or, over
        # reference tables only, answered by one node), never concatenated per shard.
        return _plan_select(text, tree, catalog, local, parsed.n_params, parsed.dialect, shards)
    if one_node_command(tree):
        return SinglePlan(text, text, 0, None, None)
    if isinstance(tree, exp.Describe):
        # Every node holds the same schema: one node describes it (once, not once per node).
        referenced_tables(tree, catalog, text)  # an unknown table is an error
        return SinglePlan(text, text, 0, None, verbatim_names(tree, parsed.n_params))
    # PRAGMA, VACUUM and other engine commands: every node runs them, as in eXtremeSQL.
    return BroadcastPlan(text, text)


def _names_view(node: Any, catalog: Catalog) -> bool:
    return isinstance(node, exp.Table) and not node.db and node.name.lower() in catalog.views


def _with_views_inlined(parsed: Parsed, catalog: Catalog) -> tuple[Parsed, list[Any]] | None:
    """The statement with every view it reads inlined as a subquery (see exdb.distributed.views),
    rendered again, its ``?`` now named placeholders, as nested statements are; and the views
    it read. None when it reads no view."""
    text, tree = parsed.text, parsed.tree
    assert tree is not None
    if isinstance(tree, exp.Insert):
        target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
        write_target_check(target.name, catalog.views, text, "INSERT INTO")
    elif isinstance(tree, exp.Update):
        write_target_check(tree.this.name, catalog.views, text, "UPDATE of")
    elif isinstance(tree, exp.Delete):
        write_target_check(tree.this.name, catalog.views, text, "DELETE FROM")
    inlined, used = inline_views(tree, catalog.views, text)
    if not used:
        return None
    return Parsed(render(inlined, parsed.dialect), inlined, 0, parsed.dialect), used


def _plan_inlined(
    original: Parsed,
    inlined: Parsed,
    views: list[Any],
    catalog: Catalog,
    local: LocalEngine,
    shards: int,
) -> Plan:
    """The plan of a statement over views: that of its inlined form, whose result columns get
    the names one database gives the statement as written (an unaliased expression is named
    after its text, which inlining changes)."""
    plan = plan_statement(inlined, catalog, local, shards)
    assert inlined.tree is not None
    if not isinstance(inlined.tree, exp.Query):
        return plan
    tables = [t for t in referenced_tables(inlined.tree, catalog, inlined.text)]
    setup = [ddl for t in {t.name: t for t in tables}.values() for ddl in t.ddl]
    setup += [v.ddl for v in views]
    try:
        names = local.column_names(setup, original.text, original.n_params)
    except Error:
        return plan  # the statement fails on the shards too, with the engine's own error
    return RenamedPlan(original.text, plan, names)


#: Names of the engines' row-id pseudo-columns: each shard numbers its own rows.


@dataclasses.dataclass
class _Select:
    """One query being planned, with what every strategy reads."""

    text: str
    tree: exp.Expr
    catalog: Catalog
    local: LocalEngine
    n_params: int
    dialect: str
    shards: int
    shape: SelectShape
    tables: list[TableInfo]

    def gather(self) -> GatherPlan:
        """The most general plan: the rows it reads come to the client."""
        return GatherPlan(self.text, self.tree, self.tables, self.n_params)

    @property
    def collated(self) -> bool:
        """Whether a table it reads declares a collation: a TEMP copy of a column keeps its
        type, not its collation, so no strategy that moves rows into one runs it."""
        return any(_collated(t) for t in self.tables)

    def names(self) -> list[str]:
        """The column names one database gives the statement (raises the engine's Error)."""
        return _output_names(self.text, self.n_params, self.tables, self.local, self.tree)

    def renamed(self, plan: Plan) -> Plan | None:
        """A plan of a rewritten statement, its columns named as this statement's own; None
        when the engine refuses the statement (gathered, it then fails as the engine says)."""
        try:
            return RenamedPlan(self.text, plan, self.names())
        except Error:
            return None

    def plan_text(self, sql: str) -> Plan:
        """The plan of another statement against the same catalog."""
        return plan_statement(parse(sql, self.dialect), self.catalog, self.local, self.shards)


def _plan_select(
    text: str,
    tree: exp.Expr,
    catalog: Catalog,
    local: LocalEngine,
    n_params: int,
    dialect: str,
    shards: int = 1,
) -> Plan:
    """A query's plan: the first strategy that runs it exactly on the shards, else a gather."""
    shape = analyse_select(tree, catalog, text)
    if shape.reference_only:
        return SinglePlan(text, text, 0, None, verbatim_names(tree, n_params))
    tables = referenced_tables(tree, catalog, text)
    query = _Select(text, tree, catalog, local, n_params, dialect, shards, shape, tables)
    for strategy in _STRATEGIES:
        plan = strategy(query)
        if plan is not None:
            return plan
    return query.gather()


def _set_operation(q: _Select) -> Plan | None:
    """UNION/INTERSECT/EXCEPT: each branch planned alone (plan/setops.py)."""
    if not isinstance(q.tree, exp.SetOperation):
        return None
    return plan_set_operation(q.text, q.tree, q.catalog, q.local, q.n_params, q.dialect)


def _window(q: _Select) -> Plan | None:
    """Window functions: whole on each shard, or their input re-hashed or finished in the
    client (plan/window.py, plan/rehash.py)."""
    if not (isinstance(q.tree, exp.Select) and has_window(q.tree)):
        return None
    window = plan_window(q.text, q.tree, q.catalog, q.local, q.n_params, q.dialect)
    if isinstance(window, WindowInputPlan):
        # Partitioned by another column: re-hashed on it when the input is large.
        rehashed = window_rehash(
            window, q.tree, q.catalog, q.local, q.dialect, _plan_select, q.n_params
        )
        return rehashed or window
    return window


def _join(q: _Select) -> Plan | None:
    """A join that is not co-located: sources broadcast or re-hashed (plan/join.py)."""
    if not (q.shape.simple and not q.shape.colocated) or q.collated:
        return None
    gather = q.gather()
    try:
        names = q.names()
    except Error:
        return gather
    args = (q.text, q.tree, q.catalog, q.local, q.n_params, q.dialect)
    return plan_join(*args, _plan_select, lambda: names, gather) or gather


def _decorrelated(q: _Select) -> Plan | None:
    """Correlated subqueries turned into joins and IN subqueries, where that is exact
    (exdb.distributed.decorrelate); None when nothing was rewritten or the rewritten statement
    would gather anyway."""
    if q.shape.simple or not isinstance(q.tree, exp.Select) or q.collated:
        return None
    rewritten = decorrelate(q.tree, q.catalog, q.dialect)
    if rewritten is None:
        return None
    parsed = Parsed(render(rewritten, q.dialect), rewritten, 0, q.dialect)
    plan = plan_statement(parsed, q.catalog, q.local, q.shards)
    return None if plan.kind == "gather" else q.renamed(plan)


def _recursive(q: _Select) -> Plan | None:
    """Subqueries and CTEs run first, on their own (recursive planning, plan/recursive.py)."""
    if q.shape.simple or not isinstance(q.tree, exp.Select) or q.collated:
        return None
    args = (q.text, q.tree, q.catalog, q.local, q.n_params, q.dialect)
    plan = plan_subqueries(*args, q.plan_text, q.shards)
    return None if plan is None else q.renamed(plan)


def _colocated(q: _Select) -> Plan | None:
    """One distributed table or a co-located join: pinned to one shard, partial aggregates,
    or a scatter with ORDER BY and LIMIT pushed down."""
    tree, shape = q.tree, q.shape
    if not (shape.simple and shape.colocated) or not isinstance(tree, exp.Select):
        return None
    if shape.pin is not None and len(shape.pin.values) == 1:
        return SinglePlan(q.text, q.text, None, shape.pin, verbatim_names(tree, q.n_params))
    if q.collated:
        # Partial groups, MIN/MAX, DISTINCT and merges would follow the collation on the shards
        # but not in the client: gathered, as the statement runs exactly then.
        return None
    if tree.args.get("group") is not None or _has_aggregate(tree):
        return _aggregate(q, tree)
    scatter = split_scatter(tree, q.dialect)
    distinct_node = tree.args.get("distinct")
    if scatter is None or (distinct_node is not None and distinct_node.args.get("on")):
        return None
    try:
        names = q.names()
    except Error:
        return None
    return ScatterPlan(q.text, scatter, distinct_node is not None, shape.pin, names)


def _aggregate(q: _Select, tree: exp.Select) -> Plan | None:
    """Partial aggregates on the shards, finished in the client or, with many groups,
    re-hashed and finished on the shards (plan/aggregate.py, plan/rehash.py)."""
    single_source = len(q.shape.distributed) == 1 and not tree.args.get("joins")
    classic = split_aggregate(tree, single_source)
    split = split_aggregate(tree, single_source, q.local.engine)
    if split is None:
        return None
    try:
        names = q.names()
    except Error:
        return None
    collects = classic is not None and classic.shard.sql() != split.shard.sql()
    fallback = classic if collects else None
    for one in (split, fallback):
        if one is not None:
            _aggregate_first(one, tree, q.shape.distributed, q.catalog)
    if q.shape.pin is None and split.groups:  # many groups: the final stage may run on shards
        return AggregateRehashPlan(q.text, split, names, q.shape.pin, fallback)
    return AggregatePlan(q.text, split, names, q.shape.pin, fallback)


#: The strategies for a query, cheapest first; the first that returns a plan wins.
_STRATEGIES: tuple[Callable[[_Select], Plan | None], ...] = (
    _set_operation,
    _window,
    _join,
    _decorrelated,
    _recursive,
    _colocated,
)


def _aggregate_first(
    split: AggregateSplit,
    tree: exp.Select,
    distributed: list[tuple[TableInfo, str]],
    catalog: Catalog,
) -> None:
    """One distributed table joined to reference tables: its shards aggregate it by the columns
    the joins and groups read before joining (eager aggregation), when the query allows."""
    if len(distributed) != 1 or not tree.args.get("joins"):
        return
    columns: dict[str, set[str]] = {}
    for table in tree.find_all(exp.Table):
        info = catalog.get(table.name)
        if info is None:
            return
        columns[table.alias_or_name.lower()] = {name.lower() for name, _ in info.columns}
    fact, alias = distributed[0]
    eager = aggregate_below_joins(split.shard, alias.lower(), columns, fact.column)
    if eager is not None:
        split.shard = eager


def _has_aggregate(tree: exp.Select) -> bool:
    """Whether the SELECT itself aggregates (not a subquery inside it, not a window)."""
    for item in tree.expressions:
        for node in item.find_all(exp.AggFunc, exp.Anonymous):
            if not (isinstance(node, exp.AggFunc) or node.name.lower() == "total"):
                continue
            if node.find_ancestor(exp.Window) is None and node.find_ancestor(exp.Select) is tree:
                return True
    return tree.args.get("having") is not None


def _collated(info: TableInfo) -> bool:
    return any("COLLATE" in ddl.upper() for ddl in info.ddl)


def _output_names(
    statement: str,
    n_params: int,
    tables: list[TableInfo],
    local: LocalEngine,
    tree: exp.Expr | None = None,
) -> list[str]:
    """The column names one database gives this statement: the engine names an unaliased
    expression after its text as written, so ask an empty local copy of the tables."""
    setup = [ddl for t in {t.name: t for t in tables}.values() for ddl in t.ddl]
    named = placeholder_names(tree) if tree is not None else []
    return local.column_names(setup, statement, n_params, named)
