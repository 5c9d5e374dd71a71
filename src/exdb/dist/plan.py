"""Plans: what a statement does across the shards. ``plan_statement`` chooses the plan (route +
rewrite, once per statement text); ``Plan.execute`` runs it (a generator that yields batches of
shard calls for a door to run concurrently, and merges their results).

Plan kinds, from cheapest to most general:

- ``single``: one node answers (``N:`` prefix, no table, reference tables only, a pinned key);
- ``broadcast``: every node runs it (DDL, unpinned UPDATE/DELETE, writes to reference tables);
- ``insert``: each row goes to the shard of its distribution value;
- ``scatter``: each shard runs the query with ORDER BY and LIMIT pushed down; a k-way merge;
- ``aggregate``: each shard computes partial aggregates; a final stage finishes them;
- ``gather``: the rows of the tables involved are gathered and the query runs on an in-process
  engine of the shards' kind. Exact for anything the engine can run: window functions, set
  operations, CTEs, subqueries and joins that are not co-located.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, Protocol

from sqlglot import exp

from exdb.dist.catalog import (
    CATALOG_DELETE,
    CATALOG_UPSERT,
    Catalog,
    TableInfo,
    rowid_alias,
    table_from_create,
)
from exdb.dist.files import check_statement
from exdb.dist.merge import (
    LocalEngine,
    SortKey,
    arrow_concat,
    count_collected,
    hashable,
    kway_merge,
)
from exdb.dist.parse import Parsed, placeholder_names
from exdb.dist.placement import place_many, placer, shard_of
from exdb.dist.rewrite import (
    LIMIT_PARAM,
    PARTIAL_TABLE,
    AggregateSplit,
    ScatterSplit,
    aggregate_below_joins,
    split_aggregate,
    split_scatter,
    substitute_macros,
)
from exdb.dist.route import (
    Pin,
    analyse_select,
    hide_catalog_table,
    literal_value,
    pinned_values,
    referenced_tables,
    schema_query,
    shards_for_pin,
)
from exdb.dist.views import inline_views, view_from_create, write_target_check
from exdb.errors import DataError, Error, NotSupportedError, ProgrammingError, UnknownTableError

__all__ = ["Plan", "Result", "ShardCall", "ShardResult", "plan_statement"]


@dataclasses.dataclass
class ShardCall:
    """One statement for one node (0-based). ``many``: params is a list of parameter sets.
    ``stream``: the rows may come back as a lazy iterator (a door that can, streams them).
    ``each``: params is a list of parameter sets, each run on its own (one BATCH request); the
    outcome is then a list with each set's result (``columns``, ``types``, ``rows``,
    ``rowcount``, as a ShardResult has) or exception, in order. ``alone``: it never opens a
    transaction (it commits on its own outside one), as a catalog read after a rollback must
    not leave one open on every node."""

    node: int
    sql: str
    params: Any = None
    many: bool = False
    stream: bool = False
    each: bool = False
    alone: bool = False


@dataclasses.dataclass
class ShardResult:
    """What one node returned (rows: a list, or a lazy iterator for a streamed call)."""

    columns: list[str] | None
    types: list[Any]
    rows: Iterable[tuple[Any, ...]]
    rowcount: int
    lastrowid: int | None = None  # the engine's, for a statement without a result set


@dataclasses.dataclass
class Result:
    """What the statement returns to the user, as one database would. ``rows`` is a list, or
    a lazy iterator when shard results stream; ``close`` then gives up what is left unread."""

    columns: list[str] | None
    types: list[Any]
    rows: Iterable[tuple[Any, ...]]
    rowcount: int = -1
    close: Callable[[], None] | None = None
    #: The unread result as a pyarrow Table, read from the shards as Arrow (a plain
    #: concatenation on a door that can); None: build it from ``rows``.
    arrow: Callable[[], Any] | None = None
    lastrowid: int | None = None  # see InsertPlan: only where it names the row exactly


Outcomes = list[ShardResult | BaseException]
Execution = Generator[list[ShardCall], Outcomes, Result]


class Context(Protocol):
    """What a plan needs from the connection that runs it."""

    shards: int
    engine: str
    catalog: Catalog
    local: LocalEngine

    def next_round_robin(self, table: str) -> int:
        """The next shard for a keyless table's row."""

    def run_nested(self, sql: str, params: dict[str, Any] | None) -> Execution:
        """Run another statement, with named parameters, through the pipeline."""


def _raise_first(outcomes: Outcomes) -> list[ShardResult]:
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes  # type: ignore[return-value]


def _only(params: dict[str, Any], tree: exp.Expr) -> dict[str, Any] | None:
    names = placeholder_names(tree)
    return {n: params[n] for n in names} if names else None


class Plan:
    """Base of the plans; subclasses set ``kind`` and implement ``execute``."""

    kind = "plan"

    def __init__(self, statement: str) -> None:
        self.statement = statement

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        """Run the plan; yields shard call batches, returns the Result."""
        raise NotImplementedError

    def describe(self, ctx: Context) -> list[str]:
        """Lines for explain: nodes, shard SQL, merge."""
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind}: {self.statement!r}>"


def _sql(tree: exp.Expr, engine: str) -> str:
    return tree.sql(dialect=engine)


def _nodes(indexes: Sequence[int]) -> str:
    return ", ".join(str(i + 1) for i in indexes)


# --- single node, broadcast -----------------------------------------------------------------


class SinglePlan(Plan):
    """The statement runs as it is on one node: chosen, pinned or given by ``N:``."""

    kind = "single"

    def __init__(
        self,
        statement: str,
        sql: str,
        node: int | None,
        pin: Pin | None,
        names: list[str] | None,
    ) -> None:
        super().__init__(statement)
        self.sql = sql
        self.node = node
        self.pin = pin
        self.names = names  # named placeholders; None: positional, as given

    def target(self, ctx: Context, params: dict[str, Any]) -> list[int]:
        """The node(s): a fixed one, or the shards a pinned key maps to."""
        if self.pin is not None:
            return shards_for_pin(self.pin, params, ctx.shards)
        return [self.node or 0]

    def _node(self, ctx: Context, params: dict[str, Any]) -> int:
        """The one node that runs the statement with these parameters."""
        nodes = self.target(ctx, params)
        # A key pinned to NULL only: no row can match; ask any shard for the shape.
        return nodes[0] if nodes else 0

    def _router(self, ctx: Context) -> Callable[[dict[str, Any]], int]:
        """A function of the parameters giving what :meth:`_node` gives, with what does not
        depend on them worked out once (for a key pinned to one ``?``, the usual case)."""
        pin = self.pin
        if pin is None or len(pin.values) != 1 or not isinstance(pin.values[0], exp.Placeholder):
            return lambda params: self._node(ctx, params)
        name, place = pin.values[0].name, placer(pin.table.column_affinity, ctx.shards)

        def node(params: dict[str, Any]) -> int:
            value = params.get(name)
            return 0 if value is None else place(value)  # a NULL key: as _node

        return node

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        outcomes = yield [ShardCall(self._node(ctx, params), self.sql, _bind(params, self.names))]
        (result,) = _raise_first(outcomes)
        return Result(result.columns, result.types, result.rows, result.rowcount)

    def execute_each(
        self, ctx: Context, seq: Sequence[dict[str, Any] | BaseException]
    ) -> Generator[list[ShardCall], Any, list[Any]]:
        """Run the statement once per bound parameter set (an exception stands for a set that
        could not be bound), each on the node :meth:`execute` would choose, but send each node
        its sets as one BATCH; returns each set's Result or exception, in order.

        A BATCH that fails as a whole (a server without BATCH, a value the wire cannot carry,
        a lost connection) is re-run one statement at a time, so that every set still gets the
        outcome it would get alone."""
        results: list[Any] = list(seq)
        groups: dict[int, tuple[list[int], list[Any]]] = {}
        route = self._router(ctx)
        for i, params in enumerate(seq):
            if isinstance(params, BaseException):
                continue
            try:
                node = route(params)
            except Exception as exc:  # a key the placement hash refuses: as execute would
                results[i] = exc
                continue
            indexes, bound = groups.setdefault(node, ([], []))
            indexes.append(i)
            bound.append(_bind(params, self.names))
        batches = [
            (ShardCall(node, self.sql, bound, each=True), indexes)
            for node, (indexes, bound) in sorted(groups.items())
        ]
        if not batches:
            return results
        outcomes = yield [call for call, _ in batches]
        retry: list[tuple[ShardCall, int]] = []
        for (call, idx), outcome in zip(batches, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                pairs = zip(call.params, idx, strict=True)
                retry += [(ShardCall(call.node, self.sql, p), i) for p, i in pairs]
                continue
            for i, one in zip(idx, outcome, strict=True):
                results[i] = _one_result(one)
        if retry:
            again = yield [call for call, _ in retry]
            for (_, i), one in zip(retry, again, strict=True):
                results[i] = _one_result(one)
        return results

    def describe(self, ctx: Context) -> list[str]:
        where = "the shard of the pinned key" if self.pin else f"node {(self.node or 0) + 1}"
        return [f"run on {where}:", f"  {self.sql}", "merge: none (one node answers)"]


def _one_result(outcome: Any) -> Any:
    """A single node's answer as the statement's Result (an exception stays one)."""
    if isinstance(outcome, BaseException):
        return outcome
    return Result(outcome.columns, outcome.types, outcome.rows, outcome.rowcount)


def _bind(params: dict[str, Any], names: list[str] | None) -> Any:
    """Parameters for a shard: the named ones it uses, or all of them in order (verbatim SQL)."""
    if names is None:
        return list(params.values()) or None
    return {n: params[n] for n in names} or None


class BroadcastPlan(Plan):
    """Every node (or the pinned shards) runs the statement; rowcounts add up (a reference
    table counts once: every node holds the same rows)."""

    kind = "broadcast"

    def __init__(
        self,
        statement: str,
        sql: str,
        *,
        macros: bool = False,
        count_once: bool = False,
        pin: Pin | None = None,
        after: list[tuple[str, tuple[Any, ...]]] | None = None,
        catalog_change: Any = None,
        names: list[str] | None = None,
        rowid: bool = False,
    ) -> None:
        super().__init__(statement)
        self.sql = sql
        self.macros = macros
        self.count_once = count_once
        self.pin = pin
        self.after = after or []  # catalog statements each node runs after the statement
        self.catalog_change = catalog_change
        self.names = names
        self.rowid = rowid  # an INSERT into a reference table: lastrowid where nodes agree
        if pin is not None:
            self.kind = "routed"

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        nodes = (
            shards_for_pin(self.pin, params, ctx.shards)
            if self.pin is not None
            else list(range(ctx.shards))
        )
        bound = _bind(params, self.names)
        calls = []
        for node in nodes:
            sql = substitute_macros(self.sql, node + 1, ctx.shards) if self.macros else self.sql
            calls.append(ShardCall(node, sql, bound))
            calls.extend(ShardCall(node, s, list(p)) for s, p in self.after)
        if not calls:
            return Result(None, [], [], 0)
        outcomes = yield calls
        results = _raise_first(outcomes)
        main = [r for r, c in zip(results, calls, strict=True) if c.sql not in self._after_sql]
        if self.catalog_change is not None:
            self.catalog_change(ctx.catalog)
        rows = [row for r in main for row in r.rows]
        first = main[0]
        counts = [r.rowcount for r in main]
        if any(c < 0 for c in counts):
            rowcount = -1
        else:
            rowcount = counts[0] if self.count_once else sum(counts)
        if self.count_once and first.columns is not None:
            rows = list(first.rows)
        lastrowid = None
        if self.rowid and rowcount > 0 and len({r.lastrowid for r in main}) == 1:
            # Every node holds the same rows and gave the new row the same rowid.
            lastrowid = first.lastrowid
        return Result(first.columns, first.types, rows, rowcount, lastrowid=lastrowid)

    @property
    def _after_sql(self) -> set[str]:
        return {s for s, _ in self.after}

    def describe(self, ctx: Context) -> list[str]:
        where = "the shards of the pinned key" if self.pin else f"all {ctx.shards} nodes"
        lines = [f"run on {where}:", f"  {self.sql}"]
        for sql, params in self.after:
            lines.append(f"  then: {sql}  -- {params[0]}")
        if self.count_once:
            lines.append("merge: rowcount of one node (every node holds the same rows)")
        else:
            lines.append("merge: concatenate rows, add rowcounts")
        return lines


class ViewPlan(BroadcastPlan):
    """CREATE VIEW / DROP VIEW: every node runs it; only once all of them have is the catalog
    row written (a definition a node's engine refuses is never recorded)."""

    def __init__(
        self,
        statement: str,
        then: list[tuple[str, tuple[Any, ...]]],
        change: Callable[[Catalog], None],
    ) -> None:
        super().__init__(statement, statement)
        self.then = then
        self.change = change

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        result = yield from super().execute(ctx, params)
        calls = [ShardCall(n, s, list(p)) for n in range(ctx.shards) for s, p in self.then]
        if calls:
            _raise_first((yield calls))
        self.change(ctx.catalog)
        return result

    def describe(self, ctx: Context) -> list[str]:
        lines = [f"run on all {ctx.shards} nodes:", f"  {self.sql}"]
        lines += [f"  then, once every node has: {s}  -- {p[0]}" for s, p in self.then]
        return lines


class RenamedPlan(Plan):
    """Another plan whose result columns are renamed: a statement over views, planned in its
    inlined form, named as the statement as written is."""

    def __init__(self, statement: str, inner: Plan, names: list[str]) -> None:
        super().__init__(statement)
        self.inner = inner
        self.names = names
        self.kind = inner.kind

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        result = yield from self.inner.execute(ctx, params)
        if result.columns is None or len(result.columns) != len(self.names):
            return result
        result.columns = list(self.names)
        arrow, names = result.arrow, self.names
        if arrow is not None:
            result.arrow = lambda: arrow().rename_columns(names)
        return result

    def describe(self, ctx: Context) -> list[str]:
        return self.inner.describe(ctx)


# --- insert ---------------------------------------------------------------------------------

_COLUMN_ROWS = 50_000  # rows one EXECMANY carries to a DuckDB shard


class InsertPlan(Plan):
    """INSERT: VALUES rows are split by shard; INSERT ... SELECT runs the SELECT first."""

    kind = "insert"

    def __init__(
        self,
        statement: str,
        tree: exp.Insert,
        info: TableInfo,
        columns: list[str],
        n_params: int,
    ):
        super().__init__(statement)
        self.tree = tree
        self.info = info
        self.columns = columns
        self.index = None
        self.names = _verbatim(tree, n_params)
        self._positional: str | None = None
        alias = rowid_alias(info) if info.kind != "reference" else None
        low_columns = [c.lower() for c in columns]
        #: Where the row's rowid is given, if the table has a rowid column (INTEGER PRIMARY
        #: KEY): lastrowid is then the value given, unique across the shards. A rowid each
        #: shard generates is not (two shards give out the same numbers): lastrowid is None.
        self.rowid_index = (
            low_columns.index(alias.lower()) if alias and alias.lower() in low_columns else None
        )
        if info.kind == "distributed":
            assert info.column is not None
            low = [c.lower() for c in columns]
            if info.column.lower() not in low:
                raise NotSupportedError(
                    f"INSERT into {info.name} must give its distribution column"
                    f" {info.column}: exdb places each row by it",
                    statement=statement,
                )
            self.index = low.index(info.column.lower())

    def bulk_ready(self) -> bool:
        """One VALUES row whose distribution value is a parameter or a constant."""
        values = self.tree.expression
        if not isinstance(values, exp.Values) or len(values.expressions) != 1:
            return False
        if self.tree.args.get("returning") is not None or self.index is None:
            return self.tree.args.get("returning") is None
        node = values.expressions[0].expressions[self.index]
        return isinstance(node, exp.Placeholder) or literal_value(node, {})[0]

    def execute_many(self, ctx: Context, seq: Sequence[Any]) -> Execution:
        """Run the one-row INSERT for every parameter set, each shard's rows in one batch."""
        return (yield from self.execute_groups(ctx, self.place_rows(ctx, seq)))

    def place_rows(self, ctx: Context, seq: Sequence[Any]) -> list[list[Any]]:
        """The parameter sets grouped by the shard each row goes to (no I/O: a bulk load may
        run it in another thread while the shards insert the rows before)."""
        row = self.tree.expression.expressions[0]
        node = row.expressions[self.index] if self.index is not None else None
        position = None
        constant = None
        if isinstance(node, exp.Placeholder):
            position = int(node.name[1:]) - 1
        elif node is not None:
            constant = literal_value(node, {})[1]
        n = len(placeholder_names(self.tree))
        if not set(map(type, seq)) <= {tuple, list}:  # (map: no Python call a row)
            seq = [self._parameter_set(params) for params in seq]
        if set(map(len, seq)) - {n}:
            wrong = next(len(params) for params in seq if len(params) != n)
            raise ProgrammingError(
                f"the statement has {n} parameter(s) but {wrong} were supplied",
                statement=self.statement,
            )
        if self.info.kind == "keyless":
            shards = [ctx.next_round_robin(self.info.name) for _ in seq]
        else:
            keys = [p[position] for p in seq] if position is not None else [constant] * len(seq)
            if self._generated_key(ctx) and any(k is None for k in keys):
                self._refuse_null_key()
            shards = place_many(keys, self.info.column_affinity, ctx.shards)
        groups: list[list[Any]] = [[] for _ in range(ctx.shards)]
        for shard, params in zip(shards, seq, strict=True):
            groups[shard].append(params)
        return groups

    def execute_groups(self, ctx: Context, groups: list[list[Any]]) -> Execution:
        """Insert rows already grouped by shard (see place_rows): one batch per shard."""
        calls = []
        for node_, rows in enumerate(groups):
            if not rows:
                continue
            if ctx.engine == "duckdb" and self._all_placeholders():
                calls += self._duckdb_calls(node_, rows, ctx)
            else:
                calls.append(ShardCall(node_, self.statement, rows, many=True))
        if not calls:
            return Result(None, [], [], 0)
        outcomes = yield calls
        return _sum_results(_raise_first(outcomes))

    def _parameter_set(self, params: Any) -> Sequence[Any]:
        if isinstance(params, (str, bytes)) or not isinstance(params, Sequence):
            raise ProgrammingError("each parameter set must be a sequence", statement=self.statement)
        return list(params)

    def plain(self) -> bool:
        """A one-row INSERT whose every success inserts exactly one row (no OR IGNORE, ON
        CONFLICT or RETURNING): a batch of them can report 1 for each statement."""
        tree = self.tree
        return (
            self.bulk_ready()
            and not tree.args.get("alternative")
            and not tree.args.get("conflict")
            and tree.args.get("returning") is None
        )

    def execute_each(self, ctx: Context, seq: Sequence[Any]) -> Generator[Any, Outcomes, list[Any]]:
        """Run the statement once per parameter set, as if each ran alone, but send each shard
        its rows as one atomic batch; returns 1 or the exception for each parameter set.

        A batch that fails is rolled back whole on its shard; its rows are then run one by one,
        so that each gets its own outcome, exactly as separate statements would."""
        assert self.plain()
        batches: list[tuple[ShardCall, list[int]]] = []
        groups: dict[int, list[int]] = {}
        position = self._key_position()
        for i, params in enumerate(seq):
            value = params[position] if position is not None else self._constant_key()
            groups.setdefault(self._shard(ctx, value), []).append(i)
        for node, indexes in sorted(groups.items()):
            batches.append(
                (
                    ShardCall(node, self.statement, [list(seq[i]) for i in indexes], many=True),
                    indexes,
                )
            )
        outcomes = yield [call for call, _ in batches]
        results: list[Any] = [1] * len(seq)
        retry: list[tuple[ShardCall, int]] = []
        for (call, indexes), outcome in zip(batches, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                retry += [(ShardCall(call.node, self.statement, list(seq[i])), i) for i in indexes]
        if retry:
            again = yield [call for call, _ in retry]
            for (_, i), outcome in zip(retry, again, strict=True):
                results[i] = outcome if isinstance(outcome, BaseException) else outcome.rowcount
        return results

    def _key_position(self) -> int | None:
        if self.index is None:
            return None
        node = self.tree.expression.expressions[0].expressions[self.index]
        return int(node.name[1:]) - 1 if isinstance(node, exp.Placeholder) else None

    def _constant_key(self) -> Any:
        if self.index is None:
            return None
        return literal_value(self.tree.expression.expressions[0].expressions[self.index], {})[1]

    def _all_placeholders(self) -> bool:
        row = self.tree.expression.expressions[0]
        names = [e.name if isinstance(e, exp.Placeholder) else None for e in row.expressions]
        return names == [f"p{i}" for i in range(1, len(names) + 1)] and self.names is None

    def _duckdb_calls(self, node: int, rows: list[Any], ctx: Context) -> list[ShardCall]:
        """A DuckDB shard's rows in EXECMANY calls of up to ``_COLUMN_ROWS`` rows; the server
        inserts each as a whole (from NumPy arrays, column lists or multi-row VALUES, by what
        the columns hold), not a row at a time."""
        sql = self._positional_sql(ctx)
        return [
            ShardCall(node, sql, rows[start : start + _COLUMN_ROWS], many=True)
            for start in range(0, len(rows), _COLUMN_ROWS)
        ]

    def _positional_sql(self, ctx: Context) -> str:
        """The INSERT with positional ``?`` marks, in the shards' dialect."""
        if self._positional is None:
            tree = self.tree.copy()
            width = len(tree.expression.expressions[0].expressions)
            row = exp.Tuple(expressions=[exp.Placeholder() for _ in range(width)])
            tree.set("expression", exp.Values(expressions=[row]))
            self._positional = _sql(tree, ctx.engine)
        return self._positional

    def _generated_key(self, ctx: Context) -> bool:
        """Whether a NULL key is one the shard generates: SQLite's INTEGER PRIMARY KEY (the
        rowid) as the distribution column."""
        return (
            ctx.engine == "sqlite"
            and ctx.shards > 1
            and self.index is not None
            and self.rowid_index == self.index
        )

    def _refuse_null_key(self) -> None:
        raise NotSupportedError(
            f"INSERT into {self.info.name} with a NULL {self.info.column}: SQLite would make up"
            f" the key on one shard, where other shards may hold the same; give the key",
            statement=self.statement,
        )

    def _shard(self, ctx: Context, value: Any) -> int:
        if self.info.kind == "keyless":
            return ctx.next_round_robin(self.info.name)
        if value is None and self._generated_key(ctx):
            self._refuse_null_key()
        return shard_of(value, self.info.column_affinity, ctx.shards)

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        source = self.tree.expression
        if isinstance(source, exp.Values):
            return (yield from self._values(ctx, params, source))
        return (yield from self._select(ctx, params, source))

    def _values(self, ctx: Context, params: dict[str, Any], values: exp.Values) -> Execution:
        if len(values.expressions) == 1 and self.bulk_ready():
            # One row with a constant key: the statement goes, as written, to one shard.
            node = values.expressions[0].expressions[self.index] if self.index is not None else None
            value = literal_value(node, params)[1] if node is not None else None
            call = ShardCall(self._shard(ctx, value), self.statement, _bind(params, self.names))
            return self._with_rowid(_raise_first((yield [call])), values, params)
        groups: dict[int, list[exp.Expr]] = {}
        extra: dict[str, Any] = {}
        for row in values.expressions:
            if not isinstance(row, exp.Tuple) or len(row.expressions) != len(self.columns):
                raise ProgrammingError(
                    f"each VALUES row must have {len(self.columns)} values",
                    statement=self.statement,
                )
            if self.index is None:
                groups.setdefault(self._shard(ctx, None), []).append(row)
                continue
            node = row.expressions[self.index]
            ok, value = literal_value(node, params)
            if not ok:  # an expression: compute it once here, and send the value itself
                value = _evaluate(ctx, node, params, self.statement)
                name = f"exdb_v{len(extra)}"
                extra[name] = value
                row = row.copy()
                row.expressions[self.index].replace(exp.Placeholder(this=name))
            groups.setdefault(self._shard(ctx, value), []).append(row)
        all_params = {**params, **extra}
        calls = []
        for node, rows in sorted(groups.items()):
            tree = self.tree.copy()
            tree.set("expression", exp.Values(expressions=[r.copy() for r in rows]))
            calls.append(ShardCall(node, _sql(tree, ctx.engine), _only(all_params, tree)))
        outcomes = yield calls
        results = _raise_first(outcomes)
        return self._with_rowid(results, values, params)

    def _with_rowid(
        self, results: list[ShardResult], values: exp.Values, params: dict[str, Any]
    ) -> Result:
        """The summed result, with lastrowid for one row inserted with its rowid column given
        (the shard's own lastrowid: the value given, or the integer SQLite converted it to)."""
        result = _sum_results(results)
        if self.rowid_index is None or len(values.expressions) != 1 or len(results) != 1:
            return result
        if result.rowcount != 1:
            return result
        row = values.expressions[0]
        if not isinstance(row, exp.Tuple) or len(row.expressions) <= self.rowid_index:
            return result
        known, value = literal_value(row.expressions[self.rowid_index], params)
        if known and value is not None:
            result.lastrowid = results[0].lastrowid
        return result

    def _select(self, ctx: Context, params: dict[str, Any], select: exp.Expr) -> Execution:
        source = yield from ctx.run_nested(_sql(select, ctx.engine), _only(params, select))
        groups: dict[int, list[tuple[Any, ...]]] = {}
        for row in source.rows:
            value = row[self.index] if self.index is not None else None
            groups.setdefault(self._shard(ctx, value), []).append(tuple(row))
        cols = ", ".join(f'"{c}"' for c in self.columns)
        marks = ", ".join("?" * len(self.columns))
        target = self.tree.this.this if isinstance(self.tree.this, exp.Schema) else self.tree.this
        verb = "INSERT OR REPLACE" if self.tree.args.get("alternative") == "REPLACE" else "INSERT"
        sql = f"{verb} INTO {_sql(target, ctx.engine)} ({cols}) VALUES ({marks})"
        calls = [ShardCall(n, sql, rows, many=True) for n, rows in sorted(groups.items())]
        if not calls:
            return Result(None, [], [], 0)
        outcomes = yield calls
        return _sum_results(_raise_first(outcomes))

    def describe(self, ctx: Context) -> list[str]:
        how = (
            "round-robin (no key)"
            if self.info.kind == "keyless"
            else f"by hash of {self.info.column}"
        )
        return [
            f"insert into {self.info.name}: each row goes to its shard {how}",
            "merge: add rowcounts",
        ]


def _evaluate(ctx: Context, node: exp.Expr, params: dict[str, Any], statement: str) -> Any:
    select = exp.select(node.copy())
    _, _, rows = ctx.local.run([], [], _sql(select, ctx.engine), _only(params, select), statement)
    return rows[0][0]


def _sum_results(results: list[ShardResult]) -> Result:
    rows = [row for r in results for row in r.rows]
    first = results[0]
    return Result(first.columns, first.types, rows, sum(max(r.rowcount, 0) for r in results))


# --- scatter, aggregate, gather ---------------------------------------------------------------


class ScatterPlan(Plan):
    """Each shard runs the query (ORDER BY and LIMIT pushed down); the rows are merged in order
    with a k-way merge, or concatenated; then OFFSET and LIMIT; DISTINCT in a final stage."""

    kind = "scatter"

    def __init__(
        self,
        statement: str,
        split: ScatterSplit,
        distinct: bool,
        pin: Pin | None,
        names: list[str],
    ):
        super().__init__(statement)
        self.split = split
        self.distinct = distinct
        self.pin = pin
        self.names = names

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        split = self.split
        limit = _bound(split.limit, params, self.statement)
        offset = _bound(split.offset, params, self.statement) or 0
        if offset < 0 and ctx.engine != "sqlite":
            raise ProgrammingError("OFFSET cannot be negative", statement=self.statement)
        offset = max(offset, 0)  # SQLite: a negative OFFSET is no offset
        if limit is not None and limit < 0:
            limit = None
        shard_params = dict(params)
        if split.limit is not None:
            pushed = (limit + offset) if limit is not None else None
            if pushed is None:
                pushed = -1 if ctx.engine == "sqlite" else 2**62
            shard_params[LIMIT_PARAM] = pushed
        sql = _sql(split.shard, ctx.engine)
        nodes = _targets(self.pin, params, ctx.shards)
        params_for = _only(shard_params, split.shard)
        outcomes = yield [ShardCall(n, sql, params_for, stream=True) for n in nodes]
        try:
            results = _raise_first(outcomes)
        except BaseException:
            _close_streams(outcomes)
            raise
        first = results[0]
        width = len(first.columns or []) - split.hidden
        # Lazily: the k-way merge pulls a shard's next batch only when its rows run out.
        merged: Iterator[tuple[Any, ...]]
        if split.sort:
            merged = kway_merge([r.rows for r in results], SortKey(split.sort, ctx.engine))
        else:
            merged = _concatenate([r.rows for r in results])
        if self.distinct:
            merged = _distinct(merged)
        stop = None if limit is None else offset + limit
        rows: Iterator[tuple[Any, ...]] = itertools.islice(merged, offset, stop)
        if split.hidden:
            rows = (tuple(r[:width]) for r in rows)
        columns = self.names if len(self.names) == width else (first.columns or [])[:width]
        arrow = None
        if not (split.sort or self.distinct or split.hidden):
            arrow = arrow_concat([r.rows for r in results], columns, offset, stop)
        close = lambda: _close_streams(results)  # noqa: E731
        return Result(columns, first.types[:width], rows, -1, close, arrow)

    def describe(self, ctx: Context) -> list[str]:
        merge = "k-way merge on the ORDER BY keys" if self.split.sort else "concatenate"
        if self.distinct:
            merge += ", then DISTINCT across shards"
        if self.split.limit is not None:
            merge += ", then OFFSET/LIMIT (shards return LIMIT + OFFSET rows)"
        where = "the shards of the pinned key" if self.pin else f"all {ctx.shards} shards"
        return [
            f"scatter to {where}:",
            f"  {_sql(self.split.shard, ctx.engine)}",
            f"merge: {merge}",
        ]


def _concatenate(parts: Sequence[Iterable[tuple[Any, ...]]]) -> Iterator[tuple[Any, ...]]:
    """Every shard's rows, in no particular order: as they arrive where the door streams
    (``interleave``), else shard after shard."""
    interleave = getattr(type(parts[0]), "interleave", None) if parts else None
    if interleave is not None and len(parts) > 1:
        return interleave(parts)  # type: ignore[no-any-return]
    return itertools.chain.from_iterable(parts)


def _close_streams(outcomes: Sequence[Any]) -> None:
    """Give up the unread rest of streamed shard results."""
    for outcome in outcomes:
        close = getattr(getattr(outcome, "rows", None), "close", None)
        if close is not None:
            close()


def _distinct(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """Rows without repeats, first occurrence kept (numbers equal across int and float, as in
    SQL; text never equals a number; NaN equals NaN; lists, structs and maps compare by
    value)."""
    seen: set[tuple[Any, ...]] = set()
    for row in rows:
        key = tuple((type(v) is str, hashable(v)) if v is not None else (None, None) for v in row)
        if key not in seen:
            seen.add(key)
            yield row


def _targets(pin: Pin | None, params: dict[str, Any], shards: int) -> list[int]:
    if pin is None:
        return list(range(shards))
    return shards_for_pin(pin, params, shards) or [0]


def _bound(node: exp.Expr | None, params: dict[str, Any], statement: str) -> int | None:
    if node is None:
        return None
    ok, value = literal_value(node, params)
    if not ok or not isinstance(value, int):
        raise NotSupportedError(
            f"LIMIT and OFFSET must be integer constants or parameters, not {node.sql()}",
            statement=statement,
        )
    return value


class AggregatePlan(Plan):
    """Partial aggregates on every shard, finished by a final stage on an in-process engine."""

    kind = "aggregate"

    def __init__(
        self,
        statement: str,
        split: AggregateSplit,
        names: list[str],
        pin: Pin | None,
        fallback: AggregateSplit | None = None,
    ):
        super().__init__(statement)
        self.split = split
        # When COUNT(DISTINCT) collects each group's values and a group's values do not fit in
        # one frame, the split that groups by the DISTINCT argument instead (rows stream).
        self.fallback = fallback
        self.pin = pin
        self.names = names

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        try:
            return (yield from self._run(ctx, params, self.split))
        except DataError as exc:
            if self.fallback is None or "maximum frame size" not in str(exc):
                raise
        return (yield from self._run(ctx, params, self.fallback))

    def _run(self, ctx: Context, params: dict[str, Any], split: AggregateSplit) -> Execution:
        nodes = _targets(self.pin, params, ctx.shards)
        shard_sql = _sql(split.shard, ctx.engine)
        outcomes = yield [ShardCall(n, shard_sql, _only(params, split.shard)) for n in nodes]
        results = _raise_first(outcomes)
        rows: list[Any] = [row for r in results for row in r.rows]
        types = list(results[0].types)
        if split.collected:
            rows = count_collected(rows, split.groups, split.collected)
            for index in split.collected:
                types[index] = "BIGINT" if ctx.engine == "duckdb" else "INTEGER"
        columns = list(zip(split.partial_columns, types, strict=True))
        # The final stage keeps the statement's own aliases (its ORDER BY may name them); the
        # result's column names are the ones one database gives the statement as written.
        names, out_types, out = ctx.local.run(
            [],
            [(PARTIAL_TABLE, columns, rows)],
            _sql(split.final, ctx.engine),
            _only(params, split.final),
            self.statement,
        )
        return Result(self.names if len(self.names) == len(names) else names, out_types, out, -1)

    def describe(self, ctx: Context) -> list[str]:
        where = "the shards of the pinned key" if self.pin else f"all {ctx.shards} shards"
        return [
            f"partial aggregates on {where}:",
            f"  {_sql(self.split.shard, ctx.engine)}",
            "merge: final stage on an in-process engine over the partial rows:",
            f"  {_sql(self.split.final, ctx.engine)}",
        ]


class GatherPlan(Plan):
    """Gather the rows of every table involved and run the query on an in-process engine."""

    kind = "gather"

    def __init__(self, statement: str, tree: exp.Expr, tables: list[TableInfo], n_params: int):
        super().__init__(statement)
        self.tree = tree
        self.names = _verbatim(tree, n_params)
        unique: dict[str, TableInfo] = {}
        for t in tables:
            unique.setdefault(t.name, t)
        self.tables = list(unique.values())

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        calls = []
        owners = []
        for info in self.tables:
            nodes = [0] if info.kind == "reference" else list(range(ctx.shards))
            for n in nodes:
                calls.append(ShardCall(n, f'SELECT * FROM "{info.name}"'))
                owners.append(info.name)
        outcomes = yield calls
        results = _raise_first(outcomes)
        rows: dict[str, list[tuple[Any, ...]]] = {t.name: [] for t in self.tables}
        for owner, result in zip(owners, results, strict=True):
            rows[owner].extend(result.rows)
        setup = [ddl for t in self.tables for ddl in t.ddl]
        # No declared types here: they are rendered for SQLite (DOUBLE would read as REAL, a
        # 4-byte float in DuckDB); DuckDB infers each column from the Python values instead.
        loads = [(t.name, [(c, None) for c, _ in t.columns], rows[t.name]) for t in self.tables]
        bound = _bind(params, self.names)
        names, types, out = ctx.local.run(
            setup,
            loads,
            self.statement,
            bound if isinstance(bound, dict) else None,
            self.statement,
            bound if isinstance(bound, list) else None,
        )
        return Result(names, types, out, -1)

    def describe(self, ctx: Context) -> list[str]:
        lines = [
            "gather the rows of: "
            + ", ".join(
                f"{t.name} ({'node 1' if t.kind == 'reference' else 'all shards'})"
                for t in self.tables
            )
        ]
        lines.append("merge: run the statement on an in-process engine over them:")
        lines.append(f"  {self.statement}")
        return lines


# --- catalog functions ------------------------------------------------------------------------


class PlacementPlan(Plan):
    """``create_distributed_table('t', 'col')`` / ``create_reference_table('t')``: record the
    new placement on every node and move the rows where they now belong."""

    kind = "placement"

    def __init__(self, statement: str, function: str, table: TableInfo, column: str | None):
        super().__init__(statement)
        self.function = function
        self.table = table
        self.column = column

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        old = self.table
        new = dataclasses.replace(
            old,
            kind="reference" if self.column is None else "distributed",
            column=self.column,
        )
        read_from = [0] if old.kind == "reference" else list(range(ctx.shards))
        outcomes = yield [ShardCall(n, f'SELECT * FROM "{old.name}"') for n in read_from]
        rows = [row for r in _raise_first(outcomes) for row in r.rows]
        calls = []
        for n in range(ctx.shards):
            calls.append(ShardCall(n, CATALOG_UPSERT, list(new.row())))
            calls.append(ShardCall(n, f'DELETE FROM "{old.name}"'))
        _raise_first((yield calls))
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            sql = f'INSERT INTO "{old.name}" VALUES ({marks})'
            if new.kind == "reference":
                targets: dict[int, list[tuple[Any, ...]]] = {n: rows for n in range(ctx.shards)}
            else:
                index = new.column_index(self.column or "")
                targets = {}
                for row in rows:
                    node = shard_of(row[index or 0], new.column_affinity, ctx.shards)
                    targets.setdefault(node, []).append(row)
            _raise_first((yield [ShardCall(n, sql, r, many=True) for n, r in targets.items()]))
        ctx.catalog.put(new)
        return Result([self.function], ["TEXT"], [("",)], -1)

    def describe(self, ctx: Context) -> list[str]:
        what = f"distributed by {self.column}" if self.column else "a reference table"
        return [f"make {self.table.name} {what}: record it on every node, move its rows"]


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
    check_statement(tree, text, catalog, lambda q: _spread(q, catalog, text))
    _check_row_order(tree, catalog, text)
    if isinstance(tree, exp.Create):
        return _plan_create(text, tree, catalog, parsed.dialect)
    if isinstance(tree, exp.Drop):
        return _plan_drop(text, tree, catalog)
    if isinstance(tree, exp.Alter):
        return _plan_alter(text, tree, catalog)
    if isinstance(tree, exp.Insert):
        return _plan_insert(text, tree, catalog, parsed.n_params)
    if isinstance(tree, (exp.Update, exp.Delete)):
        return _plan_write(text, tree, catalog, parsed.dialect)
    if isinstance(tree, exp.Select) and (placement := _placement_call(text, tree, catalog)):
        return placement
    if isinstance(tree, exp.Query) and schema_query(tree, text):
        return _plan_schema_query(text, tree, parsed.n_params, parsed.dialect)
    if isinstance(tree, (exp.Select, exp.SetOperation)) or isinstance(tree, exp.Query):
        return _plan_select(text, tree, catalog, local, parsed.n_params, parsed.dialect)
    if isinstance(tree, (exp.Pivot, exp.Summarize)):
        # DuckDB's PIVOT/UNPIVOT and SUMMARIZE read a table's rows: gathered (or, over
        # reference tables only, answered by one node), never concatenated per shard.
        return _plan_select(text, tree, catalog, local, parsed.n_params, parsed.dialect)
    if _one_node_command(tree):
        return SinglePlan(text, text, 0, None, None)
    if isinstance(tree, exp.Describe):
        # Every node holds the same schema: one node describes it (once, not once per node).
        referenced_tables(tree, catalog, text)  # an unknown table is an error
        return SinglePlan(text, text, 0, None, _verbatim(tree, parsed.n_params))
    # PRAGMA, VACUUM and other engine commands: every node runs them, as in eXtremeSQL.
    return BroadcastPlan(text, text)


def _names_view(node: Any, catalog: Catalog) -> bool:
    return isinstance(node, exp.Table) and not node.db and node.name.lower() in catalog.views


def _with_views_inlined(parsed: Parsed, catalog: Catalog) -> tuple[Parsed, list[Any]] | None:
    """The statement with every view it reads inlined as a subquery (see exdb.dist.views),
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
    return Parsed(_sql(inlined, parsed.dialect), inlined, 0, parsed.dialect), used


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
_ROW_IDS = frozenset({"rowid", "_rowid_", "oid"})
#: PRAGMAs that only read the schema, which every node holds alike: one node answers.
_SCHEMA_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
)


def _one_node_command(tree: exp.Expr) -> bool:
    """A command that reads only the schema, the same on every node (DuckDB's SHOW, SQLite's
    schema PRAGMAs): one node answers it, rather than each node once."""
    if isinstance(tree, exp.Show) or (
        isinstance(tree, exp.Command) and str(tree.this).upper() == "SHOW"
    ):
        return True
    if isinstance(tree, exp.Pragma):
        inner = tree.this  # PRAGMA [schema.]name(arg) reads as name = arg
        if isinstance(inner, exp.EQ):
            inner = inner.this
        if isinstance(inner, exp.Dot):
            inner = inner.expression
        return isinstance(inner, exp.Expr) and inner.name.lower() in _SCHEMA_PRAGMAS
    return False


def _check_row_order(tree: exp.Expr, catalog: Catalog, text: str) -> None:
    """Refuse what depends on where rows sit or in which order they were stored: a row id
    (``rowid``, ``oid``, ``_rowid_``) of a distributed or keyless table that does not declare
    such a column (each shard numbers its own rows), and DuckDB's POSITIONAL JOIN over one
    (it pairs rows by their order in storage)."""
    sources: dict[str, TableInfo] = {}
    for table in tree.find_all(exp.Table):
        info = catalog.get(table.name) if table.name else None
        if info is not None:
            sources[table.alias_or_name.lower()] = info
            sources.setdefault(info.name, info)
    spread = {n: i for n, i in sources.items() if i.kind != "reference"}
    if not spread:
        return
    for join in tree.find_all(exp.Join):
        if str(join.args.get("method") or "").upper() == "POSITIONAL":
            raise NotSupportedError(
                "POSITIONAL JOIN over a distributed table on a distributed connection: it pairs"
                " rows by their order in storage, which exdb's shards do not keep; join on a"
                " key instead",
                statement=text,
            )
    for table in tree.find_all(exp.Table):
        if table.arg_key == "indexed":
            raise NotSupportedError(
                "INDEXED BY in a statement over a distributed table on a distributed"
                " connection: the rows may be combined where the index does not exist;"
                " leave the choice of index to the shards",
                statement=text,
            )
    for column in tree.find_all(exp.Column):
        name = column.name.lower()
        if name not in _ROW_IDS:
            continue
        if column.table:
            owners = [sources[column.table.lower()]] if column.table.lower() in sources else []
        else:
            owners = list(sources.values())
        if any(name in (c.lower() for c, _ in o.columns) for o in owners):
            continue  # a declared column of that name
        if owners and all(o.kind == "reference" for o in owners):
            continue
        raise NotSupportedError(
            f"{column.name} of a distributed table on a distributed connection: each shard"
            " numbers its own rows, so row ids repeat across shards; use the table's key",
            statement=text,
        )


def _spread(query: exp.Expr, catalog: Catalog, text: str) -> list[str]:
    """The distributed and keyless tables a query reads."""
    return [t.name for t in referenced_tables(query, catalog, text) if t.kind != "reference"]
def _plan_schema_query(text: str, tree: exp.Query, n_params: int, dialect: str) -> Plan:
    """A query of the schema catalog only: DDL runs on every node, so node 1 answers it
    exactly; exdb's own catalog table is left out of table listings."""
    hidden = hide_catalog_table(tree)
    if hidden == tree:
        return SinglePlan(text, text, 0, None, _verbatim(tree, n_params))
    return SinglePlan(text, _sql(hidden, dialect), 0, None, placeholder_names(hidden))


def _plan_create(text: str, tree: exp.Create, catalog: Catalog, dialect: str) -> Plan:
    kind = str(tree.args.get("kind") or "").upper()
    if kind == "TABLE":
        info = table_from_create(tree, text)
        if catalog.get(info.name) is not None and tree.args.get("exists"):
            return BroadcastPlan(text, text)  # IF NOT EXISTS on a known table: keep its placement
        return BroadcastPlan(
            text,
            text,
            after=[(CATALOG_UPSERT, info.row())],
            catalog_change=lambda c: c.put(info),
        )
    if kind == "INDEX":
        return BroadcastPlan(text, text)
    if kind == "VIEW":
        view = view_from_create(tree, text)
        if tree.args.get("exists") and (
            view.name in catalog.views or catalog.get(view.name) is not None
        ):
            return BroadcastPlan(text, text)  # IF NOT EXISTS on a known name: keep its definition
        # Every node defines the view too (each over its own rows, as a node prefix means), so
        # the engine checks the definition, and N: queries and one-node tools can read it.
        return ViewPlan(text, [(CATALOG_UPSERT, view.row())], lambda c: c.put_view(view))
    why = {"TABLE": ""}.get(kind, "exdb plans statements over tables, indexes and views only")
    raise NotSupportedError(
        f"CREATE {kind or 'this object'} is not supported on a distributed connection ({why})",
        statement=text,
    )


def _plan_drop(text: str, tree: exp.Drop, catalog: Catalog) -> Plan:
    kind = str(tree.args.get("kind") or "").upper()
    if kind == "VIEW":
        views = [t.name.lower() for t in tree.args.get("tables") or [tree.this] if t is not None]
        # A name that is a table is left in the catalog: the nodes refuse DROP VIEW of a table.
        views = [n for n in views if catalog.get(n) is None]

        def forget_views(c: Catalog) -> None:
            for n in views:
                c.drop_view(n)

        return ViewPlan(text, [(CATALOG_DELETE, (n,)) for n in views], forget_views)
    if kind == "TABLE":
        names = [t.name.lower() for t in tree.args.get("tables") or [tree.this] if t is not None]
        names = [n for n in names if n not in catalog.views]  # the nodes refuse DROP TABLE of one
        after = [(CATALOG_DELETE, (n,)) for n in names]

        def forget(c: Catalog) -> None:
            for n in names:
                c.drop(n)

        return BroadcastPlan(text, text, after=after, catalog_change=forget)
    return BroadcastPlan(text, text)


def _plan_alter(text: str, tree: exp.Alter, catalog: Catalog) -> Plan:
    info = catalog.get(tree.this.name)
    if info is None:
        return BroadcastPlan(text, text)
    renamed = next(
        (
            a.this.name.lower()
            for a in tree.args.get("actions") or []
            if isinstance(a, exp.AlterRename)
        ),
        None,
    )
    new = dataclasses.replace(info, ddl=[*info.ddl, text], columns=list(info.columns))
    for action in tree.args.get("actions") or []:
        if isinstance(action, exp.ColumnDef):
            kind = action.args.get("kind")
            new.columns.append((action.name, kind.sql("sqlite") if kind else ""))
    after: list[tuple[str, tuple[Any, ...]]] = []
    if renamed:
        new.name = renamed
        after.append((CATALOG_DELETE, (info.name,)))
    after.append((CATALOG_UPSERT, new.row()))

    def change(c: Catalog) -> None:
        if renamed:
            c.drop(info.name)
        c.put(new)

    return BroadcastPlan(text, text, after=after, catalog_change=change)


def _insert_target(tree: exp.Insert, catalog: Catalog, text: str) -> tuple[TableInfo, list[str]]:
    target = tree.this
    table = target.this if isinstance(target, exp.Schema) else target
    info = catalog.get(table.name)
    if info is None:
        raise UnknownTableError(f"no such table: {table.name}", statement=text)
    if isinstance(target, exp.Schema) and target.expressions:
        columns = [c.name for c in target.expressions]
    else:
        columns = [c for c, _ in info.columns]
    return info, columns


def _plan_insert(text: str, tree: exp.Insert, catalog: Catalog, n_params: int) -> Plan:
    info, columns = _insert_target(tree, catalog, text)
    if tree.args.get("by_name"):
        raise NotSupportedError(
            "INSERT ... BY NAME on a distributed connection: name the columns instead"
            " (INSERT INTO t (a, b) SELECT ...)",
            statement=text,
        )
    if info.kind == "reference":
        source = tree.expression
        if source is not None and not isinstance(source, exp.Values):
            spread = [t for t in referenced_tables(source, catalog, text) if t.kind != "reference"]
            if spread:
                raise NotSupportedError(
                    "INSERT INTO a reference table SELECT FROM a distributed table",
                    statement=text,
                )
        return BroadcastPlan(text, text, count_once=True, rowid=True)
    if tree.args.get("returning") is not None and not isinstance(tree.expression, exp.Values):
        raise NotSupportedError("INSERT ... SELECT ... RETURNING", statement=text)
    return InsertPlan(text, tree, info, columns, n_params)


def _plan_write(text: str, tree: exp.Update | exp.Delete, catalog: Catalog, dialect: str) -> Plan:
    table = tree.this
    info = catalog.get(table.name)
    if info is None:
        raise UnknownTableError(f"no such table: {table.name}", statement=text)
    others = [t for t in referenced_tables(tree, catalog, text)[1:] if t.kind != "reference"]
    if others:
        raise NotSupportedError(
            f"{type(tree).__name__.upper()} that reads a distributed table in a subquery or join"
            f" ({', '.join(sorted({t.name for t in others}))}): each shard would see only its"
            " own rows",
            statement=text,
        )
    if isinstance(tree, exp.Update) and info.column is not None:
        for assignment in tree.expressions:
            target = assignment.this
            if isinstance(target, exp.Column) and target.name.lower() == info.column.lower():
                raise NotSupportedError(
                    f"UPDATE of the distribution column {info.name}.{info.column}: the row"
                    " would have to move to another shard; DELETE and INSERT it instead",
                    statement=text,
                )
    names = placeholder_names(tree)
    if info.kind == "reference":
        return BroadcastPlan(text, _sql(tree, dialect), count_once=True, names=names)
    pin = None
    if info.kind == "distributed":
        values = pinned_values(tree.args.get("where"), info, table.alias_or_name)
        if values is not None:
            pin = Pin(info, values)
    return BroadcastPlan(text, _sql(tree, dialect), pin=pin, names=names)


def _placement_call(text: str, tree: exp.Select, catalog: Catalog) -> Plan | None:
    if len(tree.expressions) != 1 or tree.args.get("from_") is not None:
        return None
    call = tree.expressions[0]
    if not isinstance(call, exp.Anonymous):
        return None
    name = call.name.lower()
    if name not in ("create_distributed_table", "create_reference_table"):
        return None
    args = call.expressions
    wanted = 2 if name == "create_distributed_table" else 1
    if len(args) != wanted or not all(isinstance(a, exp.Literal) and a.is_string for a in args):
        raise ProgrammingError(
            f"{name} takes {wanted} string literal(s): the table"
            + (" and the column" if wanted == 2 else ""),
            statement=text,
        )
    info = catalog.get(args[0].this)
    if info is None:
        raise UnknownTableError(f"no such table: {args[0].this}", statement=text)
    column = None
    if wanted == 2:
        index = info.column_index(args[1].this)
        if index is None:
            raise ProgrammingError(
                f"table {info.name} has no column {args[1].this}", statement=text
            )
        column = info.columns[index][0]
    return PlacementPlan(text, name, info, column)


def _plan_select(
    text: str,
    tree: exp.Expr,
    catalog: Catalog,
    local: LocalEngine,
    n_params: int,
    dialect: str,
) -> Plan:
    shape = analyse_select(tree, catalog, text)
    if shape.reference_only:
        return SinglePlan(text, text, 0, None, _verbatim(tree, n_params))
    tables = referenced_tables(tree, catalog, text)
    if not shape.simple or not shape.colocated:
        return GatherPlan(text, tree, tables, n_params)
    assert isinstance(tree, exp.Select)
    if shape.pin is not None and len(shape.pin.values) == 1:
        return SinglePlan(text, text, None, shape.pin, _verbatim(tree, n_params))
    single_source = len(shape.distributed) == 1 and not tree.args.get("joins")
    if tree.args.get("group") is not None or _has_aggregate(tree):
        if any(_collated(t) for t in tables):
            # Partial groups, MIN/MAX and DISTINCT would follow the collation on the shards but
            # not in the final stage: gathered, as the statement runs exactly then.
            return GatherPlan(text, tree, tables, n_params)
        classic = split_aggregate(tree, single_source)
        split = split_aggregate(tree, single_source, local.engine)
        if split is None:
            return GatherPlan(text, tree, tables, n_params)
        try:
            names = _output_names(text, n_params, tables, local)
        except Error:
            return GatherPlan(text, tree, tables, n_params)
        collects = classic is not None and classic.shard.sql() != split.shard.sql()
        fallback = classic if collects else None
        for one in (split, fallback):
            if one is not None:
                _aggregate_first(one, tree, shape.distributed, catalog)
        return AggregatePlan(text, split, names, shape.pin, fallback)
    scatter = split_scatter(tree, dialect)
    if scatter is None or any(_collated(t) for t in tables):
        return GatherPlan(text, tree, tables, n_params)
    distinct_node = tree.args.get("distinct")
    distinct = distinct_node is not None
    if distinct_node is not None and distinct_node.args.get("on") is not None:
        return GatherPlan(text, tree, tables, n_params)
    try:
        names = _output_names(text, n_params, tables, local)
    except Error:
        return GatherPlan(text, tree, tables, n_params)
    return ScatterPlan(text, scatter, distinct, shape.pin, names)


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


def _verbatim(tree: exp.Expr, n_params: int) -> list[str] | None:
    """How to bind a statement sent as the user wrote it: positionally (None) when it has ``?``
    marks, or by the names it carries (a nested, rewritten statement)."""
    return None if n_params else placeholder_names(tree)


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
    statement: str, n_params: int, tables: list[TableInfo], local: LocalEngine
) -> list[str]:
    """The column names one database gives this statement: the engine names an unaliased
    expression after its text as written, so ask an empty local copy of the tables."""
    setup = [ddl for t in {t.name: t for t in tables}.values() for ddl in t.ddl]
    return local.column_names(setup, statement, n_params)
