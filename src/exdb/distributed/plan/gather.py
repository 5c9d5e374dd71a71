"""``gather``: the rows of the tables involved come to the client and the query runs on an
in-process engine of the shards' kind. The most general plan, and the most expensive."""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from exdb.distributed.catalog import (
    TableInfo,
)
from exdb.distributed.plan.base import (
    Context,
    Execution,
    Plan,
    Result,
    ShardCall,
    bind_params,
    raise_first,
    verbatim_names,
)


class GatherPlan(Plan):
    """Gather the rows of every table involved and run the query on an in-process engine."""

    kind = "gather"

    def __init__(self, statement: str, tree: exp.Expr, tables: list[TableInfo], n_params: int):
        super().__init__(statement)
        self.tree = tree
        self.names = verbatim_names(tree, n_params)
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
                calls.append(
                    ShardCall(n, f'SELECT * FROM "{info.name}"', label=f"gather {info.name}")
                )
                owners.append(info.name)
        outcomes = yield calls
        results = raise_first(outcomes)
        rows: dict[str, list[tuple[Any, ...]]] = {t.name: [] for t in self.tables}
        for owner, result in zip(owners, results, strict=True):
            rows[owner].extend(result.rows)
        setup = [ddl for t in self.tables for ddl in t.ddl]
        # No declared types here: they are rendered for SQLite (DOUBLE would read as REAL, a
        # 4-byte float in DuckDB); DuckDB infers each column from the Python values instead.
        loads = [(t.name, [(c, None) for c, _ in t.columns], rows[t.name]) for t in self.tables]
        bound = bind_params(params, self.names)
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
