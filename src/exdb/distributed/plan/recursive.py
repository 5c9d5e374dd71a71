"""``recursive``: a SELECT's subqueries and CTEs run first, each as its own distributed
statement; their results are bound into the outer statement, which then plans normally (Citus's
recursive planning). See exdb.distributed.subqueries for what is taken out and how it is marked.

Binding is exact per engine:

- SQLite compares by affinity. A scalar subquery's value is bound as a parameter wrapped in a
  CAST that keeps its value and gives it the subquery column's affinity (an integer under a
  numeric affinity: ``CAST(? AS INTEGER)``); a value no such CAST keeps (text under a numeric
  affinity) falls back to gathering. An ``IN`` list's values have no affinity (SQLite's rule for
  ``x IN (a, b)``), so a list is used only where the subquery column's affinity cannot change a
  comparison; otherwise the statement is gathered.
- DuckDB compares by type: each bound value is cast to the subquery column's type.
- A scalar subquery of 0 rows is NULL. Of several rows: SQLite takes the first (exact when the
  subquery orders its rows, or when they all agree); DuckDB raises, but only where the outer
  statement evaluates it: both fall back to gathering, which runs the statement as written.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import functools
import re
import uuid
from collections.abc import Callable
from typing import Any

from sqlglot import exp

from exdb.distributed.catalog import Catalog, TableInfo
from exdb.distributed.intermediate import Intermediate, drop, new_name, push, with_intermediates
from exdb.distributed.merge import LocalEngine
from exdb.distributed.parse import parse, placeholder_names
from exdb.distributed.placement import affinity
from exdb.distributed.plan.base import (
    Context,
    Execution,
    Plan,
    Result,
    only_named,
    raise_first,
    render,
)
from exdb.distributed.plan.gather import GatherPlan
from exdb.distributed.route import referenced_tables
from exdb.distributed.subqueries import Split, Step, column_affinity, split_subqueries
from exdb.errors import Error

__all__ = ["RecursivePlan", "plan_subqueries"]

#: The most values bound as an IN list (SQLite allows 32766 parameters in a statement).
LIST_MAX = 10_000

_NUMERIC = ("INTEGER", "REAL", "NUMERIC")
#: DuckDB types a bound Python value converts to exactly with a CAST.
_DUCKDB_CASTABLE = re.compile(
    r"^(BOOLEAN|TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT"
    r"|UHUGEINT|FLOAT|DOUBLE|DECIMAL\(\d+, ?\d+\)|VARCHAR|BLOB|DATE|TIME|TIMESTAMP"
    r"|TIMESTAMP WITH TIME ZONE|INTERVAL|UUID)$"
)
_PLAIN_VALUES = (type(None), bool, int, float, str, bytes, decimal.Decimal, uuid.UUID)
_TIME_VALUES = (datetime.date, datetime.time, datetime.timedelta)


@dataclasses.dataclass
class _Prepared:
    """A step with what running it needs: its SQL, its plan (for explain), SQLite affinities."""

    step: Step
    sql: str
    plan: Plan
    affinities: list[str]  # SQLite: each result column's affinity; DuckDB: empty
    as_list: bool = True  # an IN subquery's values may be bound as a list (see _list_exact)


class RecursivePlan(Plan):
    """Run each subquery or CTE as its own statement, bind the results, run the outer one."""

    kind = "recursive"

    def __init__(
        self,
        statement: str,
        steps: list[_Prepared],
        outer: exp.Select,
        outer_plan: Plan | None,
        fallback: GatherPlan,
    ) -> None:
        super().__init__(statement)
        self.steps = steps
        self.outer = outer
        self.outer_plan = outer_plan  # None: the outer statement runs in-process
        self.fallback = fallback
        #: The outer statement's SQL and placeholders by how its scalars are bound (the cast
        #: each takes): rendering it again on every run would cost more than the shards do.
        self._rendered: dict[tuple[Any, ...], tuple[str, list[str]]] = {}

    def _bound_outer(
        self,
        values: dict[str, Any],
        lists: dict[str, list[Any] | None],
        renames: dict[str, str],
        engine: str,
    ) -> tuple[str, list[str], dict[str, Any]]:
        """The outer statement's SQL with the steps' results bound, its placeholder names, and
        the values of the parameters it gained."""
        key = None
        if not lists and not renames:
            key = tuple(
                (name, type(v[0]).__name__, v[1]) if isinstance(v, tuple) else (name,)
                for name, v in sorted(values.items())
            )
            cached = self._rendered.get(key)
            if cached is not None:
                bound = {n: v[0] if isinstance(v, tuple) else v for n, v in values.items()}
                return cached[0], cached[1], bound
        outer, bound = _bind(self.outer, values, lists, renames, engine)
        sql, names = render(outer, engine), placeholder_names(outer)
        if key is not None and len(self._rendered) < 64:
            self._rendered[key] = (sql, names)
        return sql, names, bound

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        irs: list[Intermediate] = []
        try:
            return (yield from self._run(ctx, params, irs))
        finally:
            if irs:  # dropped before the statement returns, after an error too
                yield [call for ir in irs for call in drop(ir, ctx.shards)]

    def _run(self, ctx: Context, params: dict[str, Any], irs: list[Intermediate]) -> Execution:
        values: dict[str, Any] = {}
        lists: dict[str, list[Any] | None] = {}
        renames: dict[str, str] = {}  # a step's table -> its intermediate result on the shards
        loads: list[tuple[str, list[tuple[str, str | None]], list[tuple[Any, ...]]]] = []
        for prepared in self.steps:
            step = prepared.step
            result = yield from ctx.run_nested(prepared.sql, only_named(params, step.tree))
            rows = [tuple(r) for r in result.rows]
            if step.kind == "exists":
                values[step.name] = (1 if rows else 0) if ctx.engine == "sqlite" else bool(rows)
                continue
            if step.kind == "table":
                columns = step.columns or list(result.columns or [])
                if len({c.lower() for c in columns}) != len(columns):
                    return (yield from self.fallback.execute(ctx, params))  # ambiguous names
                types = _load_types(ctx.engine, prepared.affinities, result.types, len(columns))
                if self.outer_plan is None:
                    loads.append((step.name, list(zip(columns, types, strict=True)), rows))
                    continue
                if ctx.engine == "duckdb" and None in types:
                    return (yield from self.fallback.execute(ctx, params))
                ir = Intermediate(
                    new_name(ctx.catalog), list(zip(columns, types, strict=True)), "reference"
                )
                irs.append(ir)
                raise_first((yield push(ir, rows, ctx.shards, ctx.engine)))
                renames[step.name] = ir.name
                continue
            if len(result.columns or []) != 1:
                return (yield from self.fallback.execute(ctx, params))  # the engine's own error
            kind = _type_of(ctx.engine, prepared.affinities, result.types)
            if step.kind == "scalar":
                value = _scalar(rows, step.tree, ctx.engine)
                if value is _AMBIGUOUS or not _castable(value, kind, ctx.engine):
                    return (yield from self.fallback.execute(ctx, params))
                values[step.name] = (value, kind)
                continue
            # IN compares with a set: each value once (kept apart by type: 1 and '1' differ).
            listed = list({(type(r[0]).__name__, r[0]): r[0] for r in rows}.values())
            values[step.name] = (None, kind)
            if (
                prepared.as_list
                and len(listed) <= LIST_MAX
                and all(_castable(v, kind, ctx.engine) for v in listed)
            ):
                lists[step.name] = listed
                continue
            # An intermediate result: a one-column table of the subquery column's affinity
            # (SQLite) or type (DuckDB), read as ``x IN (SELECT c FROM exdb_ir_N)``.
            declared = _load_types(ctx.engine, prepared.affinities, result.types, 1)[0]
            if ctx.engine == "duckdb" and (declared is None or not _DUCKDB_CASTABLE.match(kind)):
                return (yield from self.fallback.execute(ctx, params))
            ir = Intermediate(new_name(ctx.catalog), [("c", declared)], "reference")
            irs.append(ir)
            raise_first((yield push(ir, [(v,) for v in listed], ctx.shards, ctx.engine)))
            renames[step.name] = ir.name
        sql, names, bound = self._bound_outer(values, lists, renames, ctx.engine)
        named = {n: params[n] for n in names if n in params} | bound
        if self.outer_plan is None:
            names, types, out = ctx.local.run([], loads, sql, named or None, self.statement)
            return Result(names, types, out, -1)
        if not irs:
            return (yield from ctx.run_nested(sql, named))
        from exdb.distributed.plan.choose import plan_statement  # choose imports this module

        catalog = with_intermediates(ctx.catalog, irs)
        plan = plan_statement(parse(sql, ctx.engine), catalog, ctx.local, ctx.shards)
        result = yield from plan.execute(ctx, named)
        # Read whole before the intermediate results are dropped.
        result.rows = list(result.rows)
        result.arrow = None
        return result

    def describe(self, ctx: Context) -> list[str]:
        lines: list[str] = []
        for i, prepared in enumerate(self.steps, 1):
            step = prepared.step
            how = {
                "scalar": "a scalar, bound as a parameter",
                "in": "an IN list, bound as parameters"
                if prepared.as_list
                else "an IN list, read from an intermediate result",
                "exists": "EXISTS, bound as a parameter",
                "table": f"a table of rows, read as {step.name}",
            }[step.kind]
            lines.append(f"subquery {i} ({how}): {prepared.sql}")
            lines.append(f"  plan: {prepared.plan.kind}")
            lines.extend("  " + line for line in prepared.plan.describe(ctx))
        outer_sql = render(self.outer, ctx.engine)
        if self.outer_plan is None:
            lines.append(
                f"outer: run on an in-process engine over the subqueries' rows: {outer_sql}"
            )
        else:
            again = any(p.step.kind == "in" for p in self.steps)
            note = " (planned again with the values bound)" if again else ""
            lines.append(f"outer{note}: {outer_sql}")
            lines.append(f"  plan: {self.outer_plan.kind}")
            lines.extend("  " + line for line in self.outer_plan.describe(ctx))
        return lines


_AMBIGUOUS = object()


def _scalar(rows: list[tuple[Any, ...]], tree: exp.Query, engine: str) -> Any:
    """A scalar subquery's value: NULL for no row; for several, SQLite's first row where that is
    well defined (the subquery orders them, or they agree), else _AMBIGUOUS."""
    if not rows:
        return None
    if len(rows) == 1:
        return rows[0][0]
    if engine == "sqlite" and (
        tree.args.get("order") is not None or all(r[0] == rows[0][0] for r in rows)
    ):
        return rows[0][0]
    return _AMBIGUOUS


def _type_of(engine: str, affinities: list[str], types: list[Any]) -> str:
    if engine == "sqlite":
        return affinities[0] if affinities else "BLOB"
    return str(types[0]) if types and types[0] is not None else ""


def _castable(value: Any, kind: str, engine: str) -> bool:
    """Whether a value bound with a CAST to ``kind`` compares as the subquery's column would."""
    if value is None:
        return True
    if engine == "sqlite":
        if kind == "BLOB":
            return True
        if kind in _NUMERIC:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        return isinstance(value, str)  # TEXT
    if not _DUCKDB_CASTABLE.match(kind.upper()):
        return False
    return isinstance(value, _PLAIN_VALUES + _TIME_VALUES)


def _marker(name: str, value: Any, kind: str, engine: str) -> exp.Expr:
    """The placeholder a bound value takes, cast so that it compares as the subquery would."""
    mark: exp.Expr = exp.Placeholder(this=name)
    if value is None and engine == "sqlite":
        return mark
    if engine == "sqlite":
        if kind == "BLOB":
            return mark
        if kind == "TEXT":
            return exp.Cast(this=mark, to=_data_type("TEXT", engine))
        target = "REAL" if isinstance(value, float) else "INTEGER"
        return exp.Cast(this=mark, to=_data_type(target, engine))
    return exp.Cast(this=mark, to=_data_type(kind, engine))


@functools.lru_cache(maxsize=256)
def _parsed_type(name: str, engine: str) -> exp.DataType:
    return exp.DataType.build(name, dialect=engine)


def _data_type(name: str, engine: str) -> exp.DataType:
    """A type node (parsed once per name: parsing it for each bound value costs)."""
    return _parsed_type(name, engine).copy()


def _bind(
    template: exp.Select,
    values: dict[str, Any],
    lists: dict[str, list[Any] | None],
    renames: dict[str, str],
    engine: str,
) -> tuple[exp.Select, dict[str, Any]]:
    """The outer statement with each marker replaced, and the parameters it now takes."""
    outer = template.copy()
    bound: dict[str, Any] = {}
    for table in list(outer.find_all(exp.Table)):
        if not table.db and table.name in renames:
            table.set("this", exp.to_identifier(renames[table.name]))
    for mark in list(outer.find_all(exp.Placeholder)):
        name = mark.name
        if name not in values:
            continue
        if name in renames:  # an IN list read from an intermediate result
            in_node = mark.parent
            assert isinstance(in_node, exp.In)
            in_node.set("expressions", [])
            in_node.set("query", exp.select(exp.column("c")).from_(renames[name]).subquery())
            continue
        if name in lists:
            listed = lists[name] or []
            kind = values[name][1]
            in_node = mark.parent
            assert isinstance(in_node, exp.In)
            if not listed:
                in_node.replace(exp.false())
                continue
            items: list[exp.Expr] = []
            for i, value in enumerate(listed):
                bound[f"{name}_{i}"] = value
                if engine == "sqlite":  # an IN list's values have no affinity, CAST or not
                    items.append(exp.Placeholder(this=f"{name}_{i}"))
                else:
                    items.append(_marker(f"{name}_{i}", value, kind, engine))
            in_node.set("expressions", items)
            continue
        entry = values[name]
        if isinstance(entry, tuple):
            value, kind = entry
            bound[name] = value
            mark.replace(_marker(name, value, kind, engine))
        else:
            bound[name] = entry
    return outer, bound


def _load_types(engine: str, affinities: list[str], types: list[Any], n: int) -> list[str | None]:
    """Declared types of a step's table in the final stage: SQLite's affinity names (values
    then compare as the CTE's columns would), DuckDB's own types."""
    if engine == "sqlite":
        names = {"INTEGER": "INTEGER", "REAL": "REAL", "NUMERIC": "NUMERIC", "TEXT": "TEXT"}
        return [names.get(a) for a in (affinities + ["BLOB"] * n)[:n]]
    return [(str(t) if t is not None else None) for t in (list(types) + [None] * n)[:n]]


# --- the planner's part -----------------------------------------------------------------------


def plan_subqueries(
    text: str,
    tree: exp.Select,
    catalog: Catalog,
    local: LocalEngine,
    n_params: int,
    dialect: str,
    plan_text: Callable[[str], Plan],
    shards: int,
) -> Plan | None:
    """A RecursivePlan for a SELECT whose subqueries or CTEs can run on their own first, or None
    (the statement is then gathered, as before)."""
    if any(_collated(t) for t in referenced_tables(tree, catalog, text)):
        return None
    split = split_subqueries(tree, catalog, dialect)
    if split is None:
        return None
    prepared: list[_Prepared] = []
    for step in split.steps:
        if step.kind == "exists":
            _at_most_one_row(step.tree)
        sql = render(step.tree, dialect)
        affinities = _affinities(step.tree, catalog, local) if dialect == "sqlite" else []
        if affinities is None:
            return None
        # SQLite gives the subquery's column its affinity; a list's values have none: then an
        # intermediate result holds them, in a column of that affinity.
        as_list = not (
            step.kind == "in"
            and dialect == "sqlite"
            and not _list_exact(split, step, affinities, catalog)
        )
        prepared.append(_Prepared(step, sql, plan_text(sql), affinities, as_list))
    outer_plan: Plan | None = None
    step_tables = {s.name for s in split.steps if s.kind == "table"}
    reads = [
        t
        for t in split.outer.find_all(exp.Table)
        if t.name.lower() not in step_tables and catalog.get(t.name) is not None
    ]
    if not step_tables or reads:
        # The outer statement runs on the shards, the steps' tables pushed to them as
        # intermediate results (reference tables); planned here with their columns, for explain.
        irs = [
            Intermediate(s.name, _step_columns(s, local, catalog), "reference")
            for s in split.steps
            if s.kind == "table"
        ]
        from exdb.distributed.plan.choose import plan_statement  # choose imports this module

        outer_sql = render(split.outer, dialect)
        outer_plan = plan_statement(
            parse(outer_sql, dialect), with_intermediates(catalog, irs), local, shards
        )
        if outer_plan.kind == "gather":
            return None  # the outer statement gathers its tables anyway
    tables = referenced_tables(tree, catalog, text)
    return RecursivePlan(
        text, prepared, split.outer, outer_plan, GatherPlan(text, tree, tables, n_params)
    )


def _step_columns(step: Step, local: LocalEngine, catalog: Catalog) -> list[tuple[str, str | None]]:
    """A table step's columns as the engine names and types them (DuckDB: DESCRIBE; SQLite:
    the affinity), for the plan explain shows; empty when the engine cannot say."""
    tables = referenced_tables(step.tree, catalog, step.tree.sql())
    setup = [ddl for t in {t.name: t for t in tables}.values() for ddl in t.ddl]
    sql = render(step.tree, local.engine)
    nulls = dict.fromkeys(placeholder_names(step.tree)) or None
    found: list[tuple[str, str | None]]
    try:
        if local.engine == "duckdb":
            rows = local.run(setup, [], f"DESCRIBE {sql}", nulls, sql)[2]
            found = [(str(r[0]), str(r[1])) for r in rows]
        else:
            names = local.column_names(setup, sql, 0, placeholder_names(step.tree))
            found = [(c, None) for c in names]
    except Error:
        return []
    if step.columns and len(step.columns) == len(found):
        return [(c, t) for c, (_, t) in zip(step.columns, found, strict=True)]
    return found


def _at_most_one_row(query: exp.Query) -> None:
    """EXISTS needs one row at most: LIMIT 1 where the subquery has no LIMIT or OFFSET."""
    if (
        isinstance(query, exp.Select)
        and not query.args.get("limit")
        and not query.args.get("offset")
    ):
        query.set("limit", exp.Limit(expression=exp.Literal.number(1)))


def _list_exact(split: Split, step: Step, affinities: list[str], catalog: Catalog) -> bool:
    """Whether ``x IN (v1, v2, ...)`` compares as ``x IN (SELECT c ...)`` does in SQLite: the
    list's values have no affinity, the subquery's column has its own."""
    inner = affinities[0] if affinities else "BLOB"
    if inner == "BLOB":
        return True
    assert step.left is not None
    left = column_affinity(split.outer, step.left, catalog)
    if left in _NUMERIC:
        return True
    return left == "TEXT" and inner == "TEXT"


def _affinities(query: exp.Query, catalog: Catalog, local: LocalEngine) -> list[str] | None:
    """SQLite's affinity of each result column of ``query``, as SQLite itself tells it: a
    ``CREATE TABLE AS`` over empty copies of its tables declares each column by its affinity.
    None when that fails (the statement is then gathered and fails as the engine says)."""
    tables = referenced_tables(query, catalog, query.sql())
    setup = [ddl for t in {t.name: t for t in tables}.values() for ddl in t.ddl]
    blank = query.copy().transform(lambda n: exp.Null() if isinstance(n, exp.Placeholder) else n)
    probe = "exdb_sq_affinity"
    setup.append(f'CREATE TABLE "{probe}" AS {render(blank, "sqlite")}')
    try:
        _, _, rows = local.run(
            setup, [], f"SELECT type FROM pragma_table_info('{probe}')", None, query.sql()
        )
    except Error:
        return None
    return [affinity(str(r[0])) for r in rows]


def _collated(info: TableInfo) -> bool:
    return any("COLLATE" in ddl.upper() for ddl in info.ddl)
