"""``create_distributed_table`` / ``create_reference_table``: record a table's new placement on
every node and move its rows where they now belong."""

from __future__ import annotations

import dataclasses
from typing import Any

from exdb.distributed.catalog import (
    CATALOG_UPSERT,
    TableInfo,
)
from exdb.distributed.placement import shard_of
from exdb.distributed.plan.base import Context, Execution, Plan, Result, ShardCall, raise_first

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
        rows = [row for r in raise_first(outcomes) for row in r.rows]
        calls = []
        for n in range(ctx.shards):
            calls.append(ShardCall(n, CATALOG_UPSERT, list(new.row())))
            calls.append(ShardCall(n, f'DELETE FROM "{old.name}"'))
        raise_first((yield calls))
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
            raise_first((yield [ShardCall(n, sql, r, many=True) for n, r in targets.items()]))
        ctx.catalog.put(new)
        return Result([self.function], ["TEXT"], [("",)], -1)

    def describe(self, ctx: Context) -> list[str]:
        what = f"distributed by {self.column}" if self.column else "a reference table"
        return [f"make {self.table.name} {what}: record it on every node, move its rows"]
