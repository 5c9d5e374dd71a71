"""``insert``: each row goes to the shard of its distribution value."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

from sqlglot import exp

from exdb.distributed.catalog import (
    TableInfo,
    rowid_alias,
)
from exdb.distributed.parse import placeholder_names
from exdb.distributed.placement import place_many, shard_of
from exdb.distributed.plan.base import (
    Context,
    Execution,
    Outcomes,
    Plan,
    Result,
    ShardCall,
    ShardResult,
    bind_params,
    only_named,
    raise_first,
    render,
    verbatim_names,
)
from exdb.distributed.route import (
    literal_value,
)
from exdb.errors import NotSupportedError, ProgrammingError

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
        self.names = verbatim_names(tree, n_params)
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
        return _sum_results(raise_first(outcomes))

    def _parameter_set(self, params: Any) -> Sequence[Any]:
        if isinstance(params, (str, bytes)) or not isinstance(params, Sequence):
            raise ProgrammingError(
                "each parameter set must be a sequence", statement=self.statement
            )
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
            self._positional = render(tree, ctx.engine)
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
            call = ShardCall(
                self._shard(ctx, value), self.statement, bind_params(params, self.names)
            )
            return self._with_rowid(raise_first((yield [call])), values, params)
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
            calls.append(ShardCall(node, render(tree, ctx.engine), only_named(all_params, tree)))
        outcomes = yield calls
        results = raise_first(outcomes)
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
        source = yield from ctx.run_nested(render(select, ctx.engine), only_named(params, select))
        groups: dict[int, list[tuple[Any, ...]]] = {}
        for row in source.rows:
            value = row[self.index] if self.index is not None else None
            groups.setdefault(self._shard(ctx, value), []).append(tuple(row))
        cols = ", ".join(f'"{c}"' for c in self.columns)
        marks = ", ".join("?" * len(self.columns))
        target = self.tree.this.this if isinstance(self.tree.this, exp.Schema) else self.tree.this
        verb = "INSERT OR REPLACE" if self.tree.args.get("alternative") == "REPLACE" else "INSERT"
        sql = f"{verb} INTO {render(target, ctx.engine)} ({cols}) VALUES ({marks})"
        calls = [
            ShardCall(n, sql, rows, many=True, label="insert rows")
            for n, rows in sorted(groups.items())
        ]
        if not calls:
            return Result(None, [], [], 0)
        outcomes = yield calls
        return _sum_results(raise_first(outcomes))

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
    _, _, rows = ctx.local.run(
        [], [], render(select, ctx.engine), only_named(params, select), statement
    )
    return rows[0][0]


def _sum_results(results: list[ShardResult]) -> Result:
    rows = [row for r in results for row in r.rows]
    first = results[0]
    return Result(first.columns, first.types, rows, sum(max(r.rowcount, 0) for r in results))
