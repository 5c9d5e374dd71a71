"""``rehash``: rows re-hashed on a column into a distributed intermediate result (see
exdb.distributed.intermediate), so that the work that needs all the rows of one group, one
window partition or one distinct row together runs on the shards in parallel instead of in
the client's final stage.

Three uses, each chosen at run time from the number of rows fetched in the first stage (a
count, never a guess: below :func:`min_rows` the client's final stage is kept, and explain
says which ran):

- a window partitioned by a column that is not the distribution key: its input (one table's
  rows after their own filters, the columns it reads) is re-hashed on a PARTITION BY column
  that every window shares; each shard then runs the statement whole (window: whole on each
  shard) and the rows are merged as a scatter merges them;
- GROUP BY with many groups: the partial aggregates are re-hashed on the first group key; each
  shard runs the final stage's query over its part, and the groups are concatenated (k-way
  merged on ORDER BY, LIMIT/OFFSET applied);
- UNION, INTERSECT and EXCEPT: each branch's (de-duplicated) rows are re-hashed on one output
  column whose values hash alike in every branch; each shard runs the set operation whole.

Exactness: rows that the engine treats as one group (or one distinct row) hash alike, because
the intermediate's column keeps the type (SQLite: the affinity; DuckDB: the type) the client's
final stage would give it, and placement.canonical normalises values as that affinity compares
them. Where that is not sure (collations, DuckDB columns of different types, a NULL-typed
column) the re-hash is refused and the client path runs. Every TEMP table is dropped before the
statement returns, after an error too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from typing import Any

from sqlglot import exp

from exdb.distributed.catalog import Catalog
from exdb.distributed.intermediate import Intermediate, drop, new_name, push, with_intermediates
from exdb.distributed.joinshape import declared_types
from exdb.distributed.merge import LocalEngine
from exdb.distributed.parse import placeholder_names
from exdb.distributed.placement import affinity
from exdb.distributed.plan.aggregate import AggregatePlan
from exdb.distributed.plan.base import (
    Context,
    Execution,
    Outcomes,
    Plan,
    Result,
    ShardCall,
    raise_first,
    render,
)
from exdb.distributed.plan.gather import fetch_reads, fetched_columns
from exdb.distributed.plan.scatter import ScatterPlan
from exdb.distributed.plan.setops import (
    _BRANCH,
    SetBranchesPlan,
    SetColocatedPlan,
    _order_positions,
)
from exdb.distributed.plan.window import WindowInputPlan
from exdb.distributed.rewrite import (
    LIMIT_PARAM,
    PARTIAL_TABLE,
    AggregateSplit,
    ScatterSplit,
    split_scatter,
)
from exdb.errors import Error

__all__ = [
    "MIN_ROWS",
    "AggregateRehashPlan",
    "SetRehashPlan",
    "WindowRehashPlan",
    "min_rows",
    "window_rehash",
]

#: Below this many rows fetched by the first stage, the client's final stage runs (it is
#: cheaper there: a re-hash sends every row back to the shards and fetches the answer again).
#: EXDB_REHASH_MIN_ROWS overrides it (the tests set 1 to force a re-hash on small data).
MIN_ROWS = 200_000

_IR_PREFIX = "exdb_ir_"

Planner = Callable[[str, exp.Expr, Catalog, LocalEngine, int, str], Plan]


def min_rows() -> int:
    """The row count from which the first stage's rows are re-hashed (see MIN_ROWS)."""
    value = os.environ.get("EXDB_REHASH_MIN_ROWS")
    if value is None or not value.strip():
        return MIN_ROWS
    try:
        return max(int(value), 1)
    except ValueError:
        return MIN_ROWS


def hashable_type(declared: str | None, engine: str) -> bool:
    """Whether a column of this declared type (None: none) can carry the re-hash: values the
    engine groups together must hash alike (placement.canonical under its affinity)."""
    if engine == "sqlite":
        return True  # values compare by storage class and the column's affinity, as hashed
    text = (declared or "").strip().upper()
    if not text or text in ("NULL", '"NULL"'):
        return False
    # Nested and semi-structured values: their equality is not the canonical form's.
    return not any(k in text for k in ("[", "STRUCT", "MAP", "UNION", "JSON", "LIST"))


def types_hash_alike(declared: list[str | None], engine: str) -> bool:
    """Whether values of these declared types (one column of several branches) that the
    engine compares equal hash alike."""
    if not all(hashable_type(d, engine) for d in declared):
        return False
    if engine == "sqlite":
        return len({affinity(d) for d in declared}) == 1
    first = (declared[0] or "").upper()
    if affinity(first) == "INTEGER":
        return all(affinity(d) == "INTEGER" for d in declared)
    return all((d or "").upper() == first for d in declared)


def push_all(
    ctx: Context, loads: list[tuple[Intermediate, list[tuple[Any, ...]]]], pushed: list[Any]
) -> Generator[list[ShardCall], Outcomes, None]:
    """Create and fill every intermediate on every shard (one round of calls)."""
    calls: list[ShardCall] = []
    for ir, rows in loads:
        pushed.append(ir)
        calls += push(ir, rows, ctx.shards, ctx.engine)
    raise_first((yield calls))


def run_with(
    ctx: Context,
    loads: list[tuple[Intermediate, list[tuple[Any, ...]]]],
    plan: Plan,
    params: dict[str, Any],
    names: list[str],
) -> Execution:
    """Push the intermediates, run ``plan`` over them, read its rows, and drop them (in every
    case: after an error too)."""
    pushed: list[Intermediate] = []
    try:
        yield from push_all(ctx, loads, pushed)
        result = yield from plan.execute(ctx, params)
        try:
            rows = list(result.rows)
        finally:
            if result.close is not None:
                result.close()
    except GeneratorExit:
        raise
    except BaseException:
        if pushed:
            # The statement's own error is the one to report (see plan/join.py).
            yield [c for ir in pushed for c in drop(ir, ctx.shards)]
        raise
    if pushed:
        raise_first((yield [c for ir in pushed for c in drop(ir, ctx.shards)]))
    columns = result.columns
    if columns is not None and len(names) == len(columns):
        columns = names
    return Result(columns, result.types, rows, -1)


def scatter_whole(
    tree: exp.Expr,
    irs: list[Intermediate],
    catalog: Catalog,
    local: LocalEngine,
    engine: str,
    planner: Planner,
) -> Plan | None:
    """The plan of ``tree`` (reading the intermediates) with a catalog that also knows them,
    when it runs the statement whole on each shard (a scatter of it); else None."""
    text = render(tree, engine)
    plan = planner(text, tree, with_intermediates(catalog, irs), local, 0, engine)
    return plan if _whole(plan) else None


def _whole(plan: Plan) -> bool:
    """Whether the plan runs the statement whole on the shards (a scatter of it), not
    gathered nor finished in the client."""
    return isinstance(plan, ScatterPlan)


def ir_name(catalog: Catalog) -> str:
    """A fresh intermediate name."""
    return new_name(catalog)


# --- windows ----------------------------------------------------------------------------------


class WindowRehashPlan(Plan):
    """A window partitioned by a column that is not the key: its input fetched from the shards;
    re-hashed on a PARTITION BY column and run whole on each shard when it is large, else
    finished in the final stage (the WindowInputPlan it wraps)."""

    kind = "window"

    def __init__(
        self, inner: WindowInputPlan, ir: Intermediate, outer: Plan, column: str, names: list[str]
    ) -> None:
        super().__init__(inner.statement)
        self.inner = inner  # WindowInputPlan: a GatherPlan with finish()
        self.ir = ir
        self.outer = outer
        self.column = column
        self.names = names
        self.last: tuple[bool, int] | None = None  # (re-hashed?, rows fetched)

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        fetched = yield from fetch_reads(ctx, self.inner.reads, params)
        rows = fetched[self.inner.reads[0].info.name]
        rehash = len(rows) >= min_rows() and ctx.shards > 1
        self.last = (rehash, len(rows))
        if not rehash:
            finished: Result = self.inner.finish(ctx, params, fetched)
            return finished
        return (yield from run_with(ctx, [(self.ir, rows)], self.outer, params, self.names))

    def describe(self, ctx: Context) -> list[str]:
        lines = self.inner.describe(ctx)
        lines.append(_choice_line(self.last, f"the window's input re-hashed on {self.column}"))
        lines.append(
            f"or, when the shards return at least {min_rows()} rows: the input re-hashed on"
            f" {self.column} into a distributed intermediate ({self.ir.name}), then:"
        )
        lines += ["  " + line for line in self.outer.describe(ctx)]
        return lines


def _choice_line(last: tuple[bool, int] | None, what: str) -> str:
    if last is None:
        return "re-hash: chosen at run time from the rows the first stage returns"
    done, rows = last
    if done:
        return f"re-hash: last run: {what} ({rows} rows >= {min_rows()})"
    return f"re-hash: last run: final stage in the client ({rows} rows < {min_rows()})"


def _own_windows(tree: exp.Select) -> list[exp.Window]:
    return [w for w in tree.find_all(exp.Window) if w.find_ancestor(exp.Select) is tree]


def _partition_column(tree: exp.Select, table: exp.Table, columns: list[str]) -> str | None:
    """A plain column of the FROM table among every window's PARTITION BY terms (first in the
    fetched column order), or None."""
    alias = table.alias_or_name.lower()
    outputs = {e.alias.lower() for e in tree.expressions if e.alias}
    shared: set[str] | None = None
    for window in _own_windows(tree):
        mine = set()
        for term in window.args.get("partition_by") or []:
            if not isinstance(term, exp.Column) or term.args.get("db"):
                continue
            qualifier = term.table.lower()
            if qualifier == alias or (not qualifier and term.name.lower() not in outputs):
                mine.add(term.name.lower())
        shared = mine if shared is None else shared & mine
    if not shared:
        return None
    return next((c for c in columns if c.lower() in shared), None)


def window_rehash(
    inner: WindowInputPlan,
    tree: exp.Select,
    catalog: Catalog,
    local: LocalEngine,
    dialect: str,
    planner: Planner,
    n_params: int,
) -> Plan | None:
    """A WindowRehashPlan around a WindowInputPlan (``inner``), or None when its input cannot
    be re-hashed exactly (several tables, no shared PARTITION BY column, collations, groups,
    named windows, DISTINCT ON)."""

    if len(inner.reads) != 1 or tree.args.get("joins") or tree.args.get("windows"):
        return None
    if tree.args.get("group") is not None or tree.args.get("having") is not None:
        return None
    if any(
        a.find_ancestor(exp.Window) is None and a.find_ancestor(exp.Select) is tree
        for a in tree.find_all(exp.AggFunc)
    ):
        return None
    distinct = tree.args.get("distinct")
    if distinct is not None and distinct.args.get("on") is not None:
        return None
    read = inner.reads[0]
    info = read.info
    from_ = tree.args.get("from_")
    if info.kind == "reference" or from_ is None or not isinstance(from_.this, exp.Table):
        return None
    if from_.this.name.lower() != info.name.lower() or from_.this.args.get("db"):
        return None
    if any("COLLATE" in ddl.upper() for ddl in info.ddl):
        return None
    if info.name.lower().startswith(_IR_PREFIX):
        return None  # an intermediate already: this is the re-hashed statement's own plan
    columns = fetched_columns(read)
    column = _partition_column(tree, from_.this, columns)
    if column is None:
        return None
    types = declared_types(info, dialect)
    ir = Intermediate(
        new_name(catalog),
        [(c, types.get(c.lower()) or None) for c in columns],
        "distributed",
        column,
    )
    outer_tree = tree.copy()
    node = outer_tree.args["from_"].this
    alias = node.args.get("alias")
    alias_id = alias.this.copy() if isinstance(alias, exp.TableAlias) else node.this.copy()
    node.replace(
        exp.Table(this=exp.to_identifier(ir.name, quoted=True), alias=exp.TableAlias(this=alias_id))
    )
    outer = scatter_whole(outer_tree, [ir], catalog, local, dialect, planner)
    if outer is None or outer.kind != "window":
        return None
    try:
        names = local.column_names(
            list(info.ddl), inner.statement, n_params, placeholder_names(tree)
        )
    except Error:
        return None
    return WindowRehashPlan(inner, ir, outer, column, names)


def _declared(type_name: Any, engine: str) -> str | None:
    """The type an intermediate column declares: the one the client's final stage gives it
    (SQLite: none, every value keeps its storage class; DuckDB: the shards' result type)."""
    if engine == "sqlite" or not type_name:
        return None
    return str(type_name)


def _read_from(tree: exp.Expr, tables: dict[str, str]) -> exp.Expr:
    """``tree`` with each table named in ``tables`` (lower-case name -> intermediate) read from
    its intermediate instead, under its old name as alias when it had none."""
    out = tree.copy()
    for node in list(out.find_all(exp.Table)):
        target = tables.get(node.name.lower())
        if target is None or node.args.get("db"):
            continue
        alias = node.args.get("alias")
        alias_id = alias.this.copy() if isinstance(alias, exp.TableAlias) else node.this.copy()
        node.replace(
            exp.Table(
                this=exp.to_identifier(target, quoted=True), alias=exp.TableAlias(this=alias_id)
            )
        )
    return out


# --- GROUP BY ---------------------------------------------------------------------------------


class AggregateRehashPlan(AggregatePlan):
    """Partial aggregates on every shard; the final stage in the client for few groups, or on
    the shards, the partial rows re-hashed on the first group key, for many."""

    last: tuple[bool, int] | None = None

    def finish(
        self,
        ctx: Context,
        params: dict[str, Any],
        split: AggregateSplit,
        columns: list[tuple[str, Any]],
        rows: list[Any],
    ) -> Execution:
        """The final stage, on the shards when the partial rows are many (see module doc)."""
        found = self._on_shards(ctx, split, columns) if len(rows) >= min_rows() else None
        self.last = (found is not None, len(rows))
        if found is None:
            return (yield from super().finish(ctx, params, split, columns, rows))
        ir, plan = found
        return (yield from run_with(ctx, [(ir, rows)], plan, params, self.names))

    def _on_shards(
        self, ctx: Context, split: AggregateSplit, columns: list[tuple[str, Any]]
    ) -> tuple[Intermediate, Plan] | None:
        if split.groups < 1 or ctx.shards < 2:
            return None
        declared = [_declared(t, ctx.engine) for _, t in columns]
        if not hashable_type(declared[0], ctx.engine):
            return None
        ir = Intermediate(
            new_name(ctx.catalog),
            [(name, d) for (name, _), d in zip(columns, declared, strict=True)],
            "distributed",
            columns[0][0],
        )
        final = _read_from(split.final, {PARTIAL_TABLE.lower(): ir.name})
        assert isinstance(final, exp.Select)
        scatter = split_scatter(final, ctx.engine)
        if scatter is None:
            return None
        distinct = final.args.get("distinct") is not None
        return ir, ScatterPlan(self.statement, scatter, distinct, None, self.names)

    def describe(self, ctx: Context) -> list[str]:
        what = "final stage on the shards, partial rows re-hashed on the first group key"
        return [
            *super().describe(ctx),
            _choice_line(self.last, what),
            f"or, when the shards return at least {min_rows()} partial rows of a GROUP BY:"
            " the partial rows re-hashed on the first group key into a distributed"
            " intermediate, the final stage run whole on each shard, the groups concatenated"
            " (k-way merged on ORDER BY)",
        ]


# --- set operations ---------------------------------------------------------------------------


class SetRehashPlan(SetBranchesPlan):
    """Each branch planned alone; for many rows, each branch re-hashed on one output column and
    the set operation run whole on each shard; else finished in the final stage."""

    last: tuple[bool, int] | None = None

    def finish(self, ctx: Context, params: dict[str, Any], results: list[Result]) -> Execution:
        """The set operations on the shards when the branches' rows are many."""
        fetched = [list(r.rows) for r in results]
        listed = [
            Result(r.columns, r.types, rows, r.rowcount, None, None, r.lastrowid)
            for r, rows in zip(results, fetched, strict=True)
        ]
        total = sum(len(rows) for rows in fetched)
        found = None
        if not self.concatenate and total >= min_rows():
            found = self._on_shards(ctx, listed)
        self.last = (found is not None, total)
        if found is None:
            return (yield from super().finish(ctx, params, listed))
        loads, plan = found
        return (yield from run_with(ctx, loads, plan, params, self.names))

    def _on_shards(
        self, ctx: Context, results: list[Result]
    ) -> tuple[list[tuple[Intermediate, list[tuple[Any, ...]]]], Plan] | None:
        if ctx.shards < 2:
            return None
        for node in [self.final, *self.final.find_all(exp.SetOperation)]:
            if node.args.get("by_name") or node.args.get("on"):
                return None
            if node is not self.final and any(
                node.args.get(k) is not None for k in ("order", "limit", "offset")
            ):
                return None
        widths = {len(r.columns or []) for r in results}
        if len(widths) != 1 or not (width := widths.pop()):
            return None
        declared = [[_declared(r.types[i], ctx.engine) for r in results] for i in range(width)]
        key = next((i for i in range(width) if types_hash_alike(declared[i], ctx.engine)), None)
        if key is None:
            return None
        irs = [
            Intermediate(
                new_name(ctx.catalog),
                [(f"_c{i}", declared[i][k]) for i in range(width)],
                "distributed",
                f"_c{key}",
            )
            for k in range(len(results))
        ]
        final = self.final.copy()
        for select in final.find_all(exp.Select):
            table = select.args["from_"].this.name
            k = int(table[len(_BRANCH) :])
            select.set("from_", exp.From(this=exp.to_table(irs[k].name, quoted=True)))
            select.set(
                "expressions",
                [
                    exp.alias_(exp.column(f"_c{i}", quoted=True), name, quoted=True)
                    for i, name in enumerate(results[k].columns or [])
                ],
            )
        sort = _order_positions(final, self.trees, self.names, ctx.engine)
        if sort is None:
            return None
        limit_node, offset_node = final.args.get("limit"), final.args.get("offset")
        limit = limit_node.expression if limit_node is not None else None
        offset = offset_node.expression if offset_node is not None else None
        for bound in (limit, offset):
            if bound is not None and bound.find(exp.Select, exp.Column) is not None:
                return None
        final.set("offset", None)
        if limit is not None:
            final.set("limit", exp.Limit(expression=exp.Placeholder(this=LIMIT_PARAM)))
        split = ScatterSplit(final, sort, 0, limit, offset)  # type: ignore[arg-type]
        plan = SetColocatedPlan(self.statement, split, False, None, self.names)
        rows = [list(r.rows) for r in results]
        return list(zip(irs, rows, strict=True)), plan

    def describe(self, ctx: Context) -> list[str]:
        lines = super().describe(ctx)
        if self.concatenate:
            return lines
        return [
            *lines,
            _choice_line(self.last, "set operation whole on each shard, branches re-hashed"),
            f"or, when the branches return at least {min_rows()} rows: each branch re-hashed on"
            " one output column (of one type in every branch) into a distributed intermediate,"
            " the set operation run whole on each shard",
        ]
