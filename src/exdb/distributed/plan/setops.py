"""``setop``: UNION [ALL], INTERSECT and EXCEPT (DuckDB: their ALL and BY NAME forms).

Three strategies, named by explain:

- *co-located, whole on each shard*: every branch is a plain SELECT of one distributed table
  whose output at one same position is its distribution column, the columns of one affinity
  (DuckDB: of one type), so rows that are equal live on one shard: every shard runs the whole
  statement, and the rows are concatenated (k-way merged on ORDER BY, LIMIT/OFFSET applied);
- *concatenate*: only UNION ALL, no ORDER BY or LIMIT, and (DuckDB) branches of one type per
  column: each branch is planned alone (scatter, aggregate, pinned...) and their rows follow
  one another;
- *branches, finished in the final stage*: each branch is planned alone, DISTINCT added where
  its nearest set operation removes duplicates anyway (so that the shards de-duplicate first),
  and the in-process engine runs the statement's own set operations, nesting, ORDER BY, LIMIT
  and OFFSET over the branches' rows, each branch under the column names it has on its own
  (ORDER BY resolves and BY NAME matches as in one database) and, on DuckDB, its own types.
"""

from __future__ import annotations

import itertools
from typing import Any, cast

from sqlglot import exp

from exdb.distributed.catalog import Catalog, TableInfo
from exdb.distributed.merge import LocalEngine
from exdb.distributed.plan.base import (
    Context,
    Execution,
    Plan,
    Result,
    only_named,
    render,
)
from exdb.distributed.plan.scatter import ScatterPlan
from exdb.distributed.rewrite import LIMIT_PARAM, ScatterSplit
from exdb.distributed.route import analyse_select, referenced_tables
from exdb.errors import Error
from exdb.types import value_type_names

__all__ = ["plan_set_operation"]

_BRANCH = "_exdb_b"


def plan_set_operation(
    text: str,
    tree: exp.SetOperation,
    catalog: Catalog,
    local: LocalEngine,
    n_params: int,
    dialect: str,
) -> Plan | None:
    """The plan of a set operation, or None when this module does not plan it (a WITH clause:
    planned as a CTE elsewhere; collated columns: gathered, as their comparisons are)."""
    if tree.args.get("with_") is not None:
        return None
    tables = referenced_tables(tree, catalog, text)
    if any("COLLATE" in ddl.upper() for t in tables for ddl in t.ddl):
        return None
    leaves = _leaves(tree)
    if leaves is None:
        return None
    try:
        setup = [ddl for t in {t.name: t for t in tables}.values() for ddl in t.ddl]
        names = _column_names(local, setup, tree, dialect)
    except Error:
        return None  # the engine refuses it: gathered, so that the error is the engine's own
    split = _colocated_split(tree, leaves, catalog, text, dialect, names)
    if split is not None:
        return SetColocatedPlan(text, split, False, None, names)
    from exdb.distributed.plan.rehash import SetRehashPlan  # it extends SetBranchesPlan

    return SetRehashPlan(text, tree, leaves, names, dialect)


class SetColocatedPlan(ScatterPlan):
    """Equal rows live on one shard: each shard runs the whole set operation."""

    kind = "setop"

    def describe(self, ctx: Context) -> list[str]:
        return ["set operation: co-located, whole on each shard", *super().describe(ctx)]


class SetBranchesPlan(Plan):
    """Each branch planned alone; concatenated, or finished in the final stage."""

    kind = "setop"

    def __init__(
        self,
        statement: str,
        tree: exp.SetOperation,
        leaves: list[exp.Expr],
        names: list[str],
        dialect: str,
    ) -> None:
        super().__init__(statement)
        self.names = names
        self.branches = [_branch_sql(leaf, dialect) for leaf in leaves]
        self.trees = [leaf.copy() for leaf in leaves]
        #: UNION ALL only, no ORDER BY, LIMIT or OFFSET: the branches' rows follow one another.
        self.concatenate = _all_union_all(tree) and not any(
            tree.args.get(k) is not None for k in ("order", "limit", "offset")
        )
        self.final = _final_tree(tree, leaves)

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        results = []
        for sql, leaf in zip(self.branches, self.trees, strict=True):
            result = yield from ctx.run_nested(sql, only_named(params, leaf))
            results.append(result)
        return (yield from self.finish(ctx, params, results))

    def finish(self, ctx: Context, params: dict[str, Any], results: list[Result]) -> Execution:
        """The branches' rows concatenated, or the set operations in the final stage."""
        yield from ()
        if self.concatenate and (
            ctx.engine != "duckdb" or len({tuple(r.types) for r in results}) == 1
        ):
            rows = list(itertools.chain.from_iterable(r.rows for r in results))
            types = (
                results[0].types
                if ctx.engine == "duckdb"
                else value_type_names(rows, len(self.names))
            )
            return Result(self.names, types, rows, -1)
        loads = []
        for k, result in enumerate(results):
            width = len(result.columns or [])
            declared = result.types if ctx.engine == "duckdb" else [None] * width
            columns = [(f"_c{i}", _declared(declared[i])) for i in range(width)]
            loads.append((f"{_BRANCH}{k}", columns, list(result.rows)))
        final = self.final_sql(results, ctx.engine)
        names, types, rows = ctx.local.run(
            [], loads, final, only_named(params, self.final), self.statement
        )
        return Result(self.names if len(self.names) == len(names) else names, types, rows, -1)

    def final_sql(self, results: list[Result] | None, engine: str) -> str:
        """The final stage: the statement's set operations over the branches' rows, each
        branch's columns under the names it has on its own (for explain, before they are
        known: the statement's)."""
        final = self.final.copy()
        for select in final.find_all(exp.Select):
            table = select.args["from_"].this.name
            index = int(table[len(_BRANCH) :])
            columns = results[index].columns if results is not None else self.names
            select.set(
                "expressions",
                [
                    exp.alias_(exp.column(f"_c{i}", quoted=True), name, quoted=True)
                    for i, name in enumerate(columns or [])
                ],
            )
        return render(final, engine)

    def describe(self, ctx: Context) -> list[str]:
        lines = []
        if self.concatenate:
            lines.append("set operation: UNION ALL, the branches concatenated")
        else:
            lines.append("set operation: branches planned alone, finished in the final stage")
        for k, sql in enumerate(self.branches, 1):
            lines.append(f"branch {k}: {sql}")
            plan = cast(Any, ctx).plan(sql) if hasattr(ctx, "plan") else None
            if plan is not None:
                lines.append(f"  plan: {plan.kind}")
                lines.extend("  " + line for line in plan.describe(ctx))
        if not self.concatenate:
            lines.append("merge: the set operations on an in-process engine:")
            lines.append(f"  {self.final_sql(None, ctx.engine)}")
        return lines


def _column_names(
    local: LocalEngine, setup: list[str], tree: exp.SetOperation, dialect: str
) -> list[str]:
    """The column names one database gives the statement (asked of an empty local copy of
    its tables), without its LIMIT and OFFSET, which name nothing (SQLite refuses a NULL
    LIMIT, the value a parameter has here)."""
    bare = tree.copy()
    bare.set("limit", None)
    bare.set("offset", None)
    sql = render(bare, dialect)
    params = {p.name: None for p in bare.find_all(exp.Placeholder)} or None
    if dialect == "duckdb":  # described, not run (see LocalEngine.column_names)
        return [str(row[0]) for row in local.run(setup, [], f"DESCRIBE {sql}", params, sql)[2]]
    return local.run(setup, [], sql, params, sql)[0]


# --- the tree ---------------------------------------------------------------------------------


def _leaves(tree: exp.SetOperation) -> list[exp.Expr] | None:
    """The branches (SELECTs, a parenthesized SELECT) in order; None for a shape not planned
    here (a VALUES branch, a branch with its own WITH)."""
    out: list[exp.Expr] = []

    def walk(node: exp.Expr) -> bool:
        inner = node.this if isinstance(node, exp.Subquery) else node
        if isinstance(inner, exp.SetOperation):
            if inner.args.get("with_") is not None:
                return False
            return walk(inner.this) and walk(inner.expression)
        if not isinstance(inner, exp.Select) or inner.args.get("with_") is not None:
            return False
        out.append(node)
        return True

    if not walk(tree.this) or not walk(tree.expression):
        return None
    return out


def _branch_sql(leaf: exp.Expr, dialect: str) -> str:
    """A branch as a statement of its own, DISTINCT where its set operation de-duplicates."""
    select = (leaf.this if isinstance(leaf, exp.Subquery) else leaf).copy()
    parent = leaf.parent
    while isinstance(parent, exp.Subquery):
        parent = parent.parent
    dedupes = isinstance(parent, exp.SetOperation) and bool(parent.args.get("distinct"))
    limited = select.args.get("limit") is not None or select.args.get("offset") is not None
    if dedupes and not limited and select.args.get("distinct") is None:
        select.set("distinct", exp.Distinct())
    return render(select, dialect)


def _final_tree(tree: exp.SetOperation, leaves: list[exp.Expr]) -> exp.SetOperation:
    """The statement with each branch read from its table in the final stage."""
    final = tree.copy()
    ids = {id(leaf): k for k, leaf in enumerate(leaves)}
    mapping: dict[int, exp.Expr] = {}
    for original, copied in zip(tree.walk(), final.walk(), strict=True):
        if id(original) in ids:
            mapping[id(copied)] = original
    for node in list(final.walk()):
        source = mapping.get(id(node))
        if source is None:
            continue
        k = ids[id(source)]
        node.replace(exp.select(exp.Star()).from_(exp.to_table(f"{_BRANCH}{k}")))
    return final


def _all_union_all(tree: exp.Expr) -> bool:
    """Whether every set operation of the tree is a plain UNION ALL (not BY NAME)."""
    for node in [tree, *tree.find_all(exp.SetOperation)]:
        if not isinstance(node, exp.Union) or node.args.get("distinct"):
            return False
        if node.args.get("by_name") or node.args.get("on"):
            return False
    return True


def _declared(type_name: Any) -> str | None:
    return str(type_name) if type_name else None


# --- co-location ------------------------------------------------------------------------------


def _colocated_split(
    tree: exp.SetOperation,
    leaves: list[exp.Expr],
    catalog: Catalog,
    text: str,
    dialect: str,
    names: list[str],
) -> ScatterSplit | None:
    """A scatter of the whole statement when every branch's rows are placed by one same output
    column (see the module docstring), else None."""
    if any(isinstance(leaf, exp.Subquery) for leaf in leaves):
        return None
    for node in [tree, *tree.find_all(exp.SetOperation)]:
        if node.args.get("by_name") or node.args.get("on"):
            return None
        if node is not tree and any(node.args.get(k) for k in ("order", "limit", "offset")):
            return None
    keys: list[tuple[TableInfo, list[int]]] = []
    for leaf in leaves:
        assert isinstance(leaf, exp.Select)
        found = _key_positions(leaf, catalog, text)
        if found is None:
            return None
        keys.append(found)
    positions = set(keys[0][1])
    for _, p in keys[1:]:
        positions &= set(p)
    if not positions:
        return None
    first = keys[0][0]
    for info, _ in keys:
        if dialect == "sqlite":
            if info.column_affinity != first.column_affinity or info.column_affinity == "BLOB":
                return None
        elif _declared_key_type(info) != _declared_key_type(first):
            return None
    sort = _order_positions(tree, leaves, names, dialect)
    if sort is None:
        return None
    shard = tree.copy()
    limit_node, offset_node = tree.args.get("limit"), tree.args.get("offset")
    limit = limit_node.expression if limit_node is not None else None
    offset = offset_node.expression if offset_node is not None else None
    for bound in (limit, offset):
        if bound is not None and bound.find(exp.Select, exp.Column) is not None:
            return None
    shard.set("offset", None)
    if limit is not None:
        shard.set("limit", exp.Limit(expression=exp.Placeholder(this=LIMIT_PARAM)))
    return ScatterSplit(cast(exp.Select, shard), sort, 0, limit, offset)


def _key_positions(
    leaf: exp.Select, catalog: Catalog, text: str
) -> tuple[TableInfo, list[int]] | None:
    """The table of a plain one-table branch and the output positions of its distribution
    column; None when the branch is not such."""
    if leaf.args.get("joins") or leaf.args.get("group") is not None:
        return None
    if any(leaf.args.get(k) is not None for k in ("having", "order", "limit", "offset", "windows")):
        return None
    if leaf.find(exp.Window, exp.AggFunc) is not None:
        return None
    distinct = leaf.args.get("distinct")
    if distinct is not None and distinct.args.get("on") is not None:
        return None
    shape = analyse_select(leaf, catalog, text)
    if not shape.simple or not shape.colocated or len(shape.distributed) != 1:
        return None
    info, alias = shape.distributed[0]
    if info.kind != "distributed" or info.column is None:
        return None
    positions = []
    for i, item in enumerate(leaf.expressions):
        value = item.this if isinstance(item, exp.Alias) else item
        if (
            isinstance(value, exp.Column)
            and value.name.lower() == info.column.lower()
            and value.table.lower() in ("", alias.lower())
            and not value.args.get("db")
        ):
            positions.append(i)
    return (info, positions) if positions else None


def _declared_key_type(info: TableInfo) -> str:
    return next((t.upper() for c, t in info.columns if c == info.column), "")


def _order_positions(
    tree: exp.SetOperation, leaves: list[exp.Expr], names: list[str], dialect: str
) -> list[tuple[int, bool, bool | None]] | None:
    """The ORDER BY of the set operation as output positions; None when a term is something
    else, or a name that another branch could read otherwise."""
    order = tree.args.get("order")
    if order is None:
        return []
    out: list[tuple[int, bool, bool | None]] = []
    for ordered in order.expressions:
        key = ordered.this
        if isinstance(key, exp.Literal) and not key.is_string:
            index = int(key.this) - 1
            if not 0 <= index < len(names):
                return None
        elif isinstance(key, exp.Column) and not key.table:
            name = key.name.lower()
            matches = [i for i, n in enumerate(names) if n.lower() == name]
            if len(matches) != 1:
                return None
            index = matches[0]
            for leaf in leaves:
                assert isinstance(leaf, exp.Select)
                other = [
                    i for i, e in enumerate(leaf.expressions) if e.alias_or_name.lower() == name
                ]
                if other and other != [index]:
                    return None
        else:
            return None
        explicit = "NULLS" in ordered.sql(dialect).upper()
        nulls_first = ordered.args.get("nulls_first") if explicit else None
        out.append((index, bool(ordered.args.get("desc")), nulls_first))
    return out
