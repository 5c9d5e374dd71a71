"""A plan whose result columns take the names one database would give (a query over a view)."""

from __future__ import annotations

from typing import Any

from exdb.distributed.plan.base import Context, Execution, Plan


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
