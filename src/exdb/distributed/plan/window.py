"""``window``: a SELECT with window functions.

Two strategies, named by explain:

- *whole on each shard*: every window of the SELECT is partitioned by the distribution column
  of its one distributed table (or of the FROM table of a co-located inner join), so each
  partition lives whole on one shard: the query runs as it is on every shard and the rows are
  merged as scatter merges them (ORDER BY k-way merge, LIMIT/OFFSET, DISTINCT);
- *input on the shards, finished in the final stage*: the shards return the window's input,
  each table's rows that pass its own filters with only the columns the query reads (see
  exdb.distributed.reads), and the in-process engine runs the statement over them, with the
  engine's own ties, frames, NULL order, RANGE and ROWS.
"""

from __future__ import annotations

from sqlglot import exp

from exdb.distributed.catalog import Catalog, TableInfo
from exdb.distributed.merge import LocalEngine
from exdb.distributed.parse import placeholder_names
from exdb.distributed.plan.base import Context, Plan, verbatim_names
from exdb.distributed.plan.gather import GatherPlan
from exdb.distributed.plan.scatter import ScatterPlan
from exdb.distributed.plan.single import SinglePlan
from exdb.distributed.rewrite import ScatterSplit, split_scatter
from exdb.distributed.route import Pin, SelectShape, analyse_select, referenced_tables
from exdb.errors import Error

__all__ = ["WindowInputPlan", "WindowWholePlan", "has_window", "plan_window"]

WHOLE = "window: whole on each shard"
INPUT = "window: input on the shards, finished in the final stage"


class WindowWholePlan(ScatterPlan):
    """Every window partition lives on one shard: scatter the statement whole."""

    kind = "window"

    def __init__(
        self, statement: str, split: ScatterSplit, distinct: bool, pin: Pin | None, names: list[str]
    ) -> None:
        super().__init__(statement, split, distinct, pin, names)

    def describe(self, ctx: Context) -> list[str]:
        return [WHOLE, *super().describe(ctx)]


class WindowInputPlan(GatherPlan):
    """The window's input comes from the shards; the final stage computes the windows."""

    kind = "window"

    def describe(self, ctx: Context) -> list[str]:
        return [INPUT, *super().describe(ctx)]


def has_window(tree: exp.Expr) -> bool:
    """Whether a SELECT computes a window function of its own."""
    return isinstance(tree, exp.Select) and any(
        w.find_ancestor(exp.Select) is tree for w in tree.find_all(exp.Window)
    )


def window_shape(tree: exp.Select, catalog: Catalog, text: str) -> SelectShape:
    """The shape route gives the SELECT with its own windows taken out (they are planned
    here): whether it is simple, co-located, pinned."""
    bare = tree.copy()
    for window in list(bare.find_all(exp.Window)):
        if window.find_ancestor(exp.Select) is bare:
            window.replace(exp.Null())
    return analyse_select(bare, catalog, text)


def partitioned_by_key(tree: exp.Select, shape: SelectShape) -> bool:
    """Whether every window of the SELECT has the distribution column of the FROM table (a
    distributed table not on the null-supplying side of an outer join) among its PARTITION BY
    terms, so that each partition is whole on one shard."""
    if tree.args.get("windows") or tree.args.get("group") is not None:
        return False
    if _aggregates(tree):
        return False
    from_ = tree.args.get("from_")
    if from_ is None or not isinstance(from_.this, exp.Table):
        return False
    for join in tree.args.get("joins") or []:
        if str(join.side or "").upper() in ("RIGHT", "FULL"):
            return False
    table = from_.this
    info = next(
        (i for i, alias in shape.distributed if alias.lower() == table.alias_or_name.lower()),
        None,
    )
    if info is None or info.kind != "distributed" or info.column is None:
        return False
    if any("COLLATE" in ddl.upper() for ddl in info.ddl):
        return False
    own = [w for w in tree.find_all(exp.Window) if w.find_ancestor(exp.Select) is tree]
    return all(_partitions_by(w, info, table, tree) for w in own)


def _partitions_by(window: exp.Window, info: TableInfo, table: exp.Table, tree: exp.Select) -> bool:
    alias = table.alias_or_name.lower()
    single = not tree.args.get("joins")
    assert info.column is not None
    for term in window.args.get("partition_by") or []:
        if not isinstance(term, exp.Column) or term.name.lower() != info.column.lower():
            continue
        if term.args.get("db") or term.args.get("catalog"):
            continue
        qualifier = term.table.lower()
        if qualifier == alias or (not qualifier and single and not _is_output_alias(term, tree)):
            return True
    return False


def _is_output_alias(column: exp.Column, tree: exp.Select) -> bool:
    return any(e.alias and e.alias.lower() == column.name.lower() for e in tree.expressions)


def _aggregates(tree: exp.Select) -> bool:
    for node in tree.find_all(exp.AggFunc):
        if node.find_ancestor(exp.Window) is None and node.find_ancestor(exp.Select) is tree:
            return True
    return tree.args.get("having") is not None


def plan_window(
    text: str,
    tree: exp.Select,
    catalog: Catalog,
    local: LocalEngine,
    n_params: int,
    dialect: str,
) -> Plan | None:
    """The plan of a SELECT with windows of its own, or None when it is not one this module
    plans (a subquery or CTE over distributed rows: planned as such elsewhere)."""
    shape = window_shape(tree, catalog, text)
    if not shape.simple:
        return None
    tables = referenced_tables(tree, catalog, text)
    if shape.colocated and shape.pin is not None and len(shape.pin.values) == 1:
        # Every row the query reads is on one shard: the windows see them all there.
        return SinglePlan(text, text, None, shape.pin, verbatim_names(tree, n_params))
    distinct = tree.args.get("distinct")
    if (
        shape.colocated
        and partitioned_by_key(tree, shape)
        and (distinct is None or distinct.args.get("on") is None)
    ):
        split = split_scatter(tree, dialect)
        if split is not None:
            try:
                setup = [ddl for t in {t.name: t for t in tables}.values() for ddl in t.ddl]
                names = local.column_names(setup, text, n_params, placeholder_names(tree))
            except Error:
                names = None
            if names is not None:
                return WindowWholePlan(text, split, distinct is not None, shape.pin, names)
    return WindowInputPlan(text, tree, tables, n_params)
