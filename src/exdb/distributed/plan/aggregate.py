"""``aggregate``: each shard computes partial aggregates; a final stage finishes them."""

from __future__ import annotations

from typing import Any

from exdb.distributed.merge import (
    count_collected,
)
from exdb.distributed.plan.base import (
    Context,
    Execution,
    Plan,
    Result,
    ShardCall,
    only_named,
    raise_first,
    render,
)
from exdb.distributed.plan.scatter import target_shards
from exdb.distributed.rewrite import (
    PARTIAL_TABLE,
    AggregateSplit,
)
from exdb.distributed.route import (
    Pin,
)
from exdb.errors import DataError


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
        nodes = target_shards(self.pin, params, ctx.shards)
        shard_sql = render(split.shard, ctx.engine)
        params_for = only_named(params, split.shard)
        outcomes = yield [ShardCall(n, shard_sql, params_for, label="partials") for n in nodes]
        results = raise_first(outcomes)
        rows: list[Any] = [row for r in results for row in r.rows]
        types = list(results[0].types)
        if split.collected:
            rows = count_collected(rows, split.groups, split.collected)
            for index in split.collected:
                types[index] = "BIGINT" if ctx.engine == "duckdb" else "INTEGER"
        columns = list(zip(split.partial_columns, types, strict=True))
        return (yield from self.finish(ctx, params, split, columns, rows))

    def finish(
        self,
        ctx: Context,
        params: dict[str, Any],
        split: AggregateSplit,
        columns: list[tuple[str, Any]],
        rows: list[Any],
    ) -> Execution:
        """The final stage over the partial rows (``columns``: their names and types)."""
        yield from ()
        # The final stage keeps the statement's own aliases (its ORDER BY may name them); the
        # result's column names are the ones one database gives the statement as written.
        names, out_types, out = ctx.local.run(
            [],
            [(PARTIAL_TABLE, columns, rows)],
            render(split.final, ctx.engine),
            only_named(params, split.final),
            self.statement,
        )
        return Result(self.names if len(self.names) == len(names) else names, out_types, out, -1)

    def describe(self, ctx: Context) -> list[str]:
        where = "the shards of the pinned key" if self.pin else f"all {ctx.shards} shards"
        return [
            f"partial aggregates on {where}:",
            f"  {render(self.split.shard, ctx.engine)}",
            "merge: final stage on an in-process engine over the partial rows:",
            f"  {render(self.split.final, ctx.engine)}",
        ]
