"""``broadcast``: every node runs the statement (DDL, unpinned UPDATE/DELETE, writes to reference
tables); ``ViewPlan`` records a view as well."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from exdb.distributed.catalog import (
    Catalog,
)
from exdb.distributed.plan.base import (
    Context,
    Execution,
    Plan,
    Result,
    ShardCall,
    bind_params,
    raise_first,
)
from exdb.distributed.rewrite import (
    substitute_macros,
)
from exdb.distributed.route import (
    Pin,
    shards_for_pin,
)


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
        bound = bind_params(params, self.names)
        calls = []
        for node in nodes:
            sql = substitute_macros(self.sql, node + 1, ctx.shards) if self.macros else self.sql
            calls.append(ShardCall(node, sql, bound))
            calls.extend(ShardCall(node, s, list(p)) for s, p in self.after)
        if not calls:
            return Result(None, [], [], 0)
        outcomes = yield calls
        results = raise_first(outcomes)
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
            raise_first((yield calls))
        self.change(ctx.catalog)
        return result

    def describe(self, ctx: Context) -> list[str]:
        lines = [f"run on all {ctx.shards} nodes:", f"  {self.sql}"]
        lines += [f"  then, once every node has: {s}  -- {p[0]}" for s, p in self.then]
        return lines
