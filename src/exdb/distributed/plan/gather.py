"""``gather``: the rows of the tables involved come to the client and the query runs on an
in-process engine of the shards' kind. The most general plan, and the most expensive."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from sqlglot import exp

from exdb.distributed.catalog import (
    TableInfo,
)
from exdb.distributed.plan.base import (
    Context,
    Execution,
    Outcomes,
    Plan,
    Result,
    ShardCall,
    bind_params,
    raise_first,
    verbatim_names,
)
from exdb.distributed.reads import (
    TableRead,
    declared_types_sql,
    narrow_ddl,
    read_sql,
    table_reads,
)


class GatherPlan(Plan):
    """Gather what the statement reads of every table involved (its columns, the rows that pass
    each table's own filters: see exdb.distributed.reads) and run the query on an in-process
    engine."""

    kind = "gather"

    def __init__(self, statement: str, tree: exp.Expr, tables: list[TableInfo], n_params: int):
        super().__init__(statement)
        self.tree = tree
        self.names = verbatim_names(tree, n_params)
        self.reads = table_reads(tree, tables)
        self.tables = [r.info for r in self.reads]
        self._setup: list[str] | None = None  # the final stage's DDL, made on first use

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        rows = yield from fetch_reads(ctx, self.reads, params)
        return self.finish(ctx, params, rows)

    def finish(
        self, ctx: Context, params: dict[str, Any], rows: dict[str, list[tuple[Any, ...]]]
    ) -> Result:
        """The final stage: the statement on an in-process engine over the fetched rows."""
        if self._setup is None:
            self._setup = final_setup(ctx, self.reads)
        loads = [
            (r.info.name, [(c, None) for c in fetched_columns(r)], rows[r.info.name])
            for r in self.reads
        ]
        bound = bind_params(params, self.names)
        names, types, out = ctx.local.run(
            self._setup,
            loads,
            self.statement,
            bound if isinstance(bound, dict) else None,
            self.statement,
            bound if isinstance(bound, list) else None,
        )
        return Result(names, types, out, -1)

    def describe(self, ctx: Context) -> list[str]:
        lines = ["gather only what the statement reads of each table:"]
        lines += describe_reads(ctx, self.reads)
        lines.append("merge: run the statement on an in-process engine over them:")
        lines.append(f"  {self.statement}")
        return lines


def fetched_columns(read: TableRead) -> list[str]:
    """The columns a TableRead brings, in order."""
    return read.columns if read.columns is not None else [c for c, _ in read.info.columns]


def fetch_reads(
    ctx: Context, reads: list[TableRead], params: dict[str, Any]
) -> Generator[list[ShardCall], Outcomes, dict[str, list[tuple[Any, ...]]]]:
    """Fetch each TableRead (a reference table from node 1, others from every shard): rows by
    table name."""
    calls = []
    owners = []
    for read in reads:
        nodes = [0] if read.info.kind == "reference" else list(range(ctx.shards))
        sql = read_sql(read, ctx.engine)
        names = read.placeholders()
        bound = {n: params[n] for n in names} if names else None
        for n in nodes:
            calls.append(ShardCall(n, sql, bound, label=f"gather {read.info.name}"))
            owners.append(read.info.name)
    outcomes = yield calls
    results = raise_first(outcomes)
    rows: dict[str, list[tuple[Any, ...]]] = {r.info.name: [] for r in reads}
    for owner, result in zip(owners, results, strict=True):
        rows[owner].extend(result.rows)
    return rows


def final_setup(ctx: Context, reads: list[TableRead]) -> list[str]:
    """The final stage's DDL: each table with just the columns fetched, as declared (the
    engine's own record of the declared types, read from the table's DDL run locally), or
    the table's own DDL when every column is fetched."""
    setup: list[str] = []
    for read in reads:
        if read.columns is None or len(read.columns) == len(read.info.columns):
            setup.extend(read.info.ddl)
            continue
        rows = ctx.local.run(
            read.info.ddl, [], declared_types_sql(read.info, ctx.engine), None, "DDL"
        )[2]
        declared = {str(name).lower(): str(kind or "") for name, kind in rows}
        setup.append(narrow_ddl(read.info, read.columns, declared, ctx.engine))
    return setup


def describe_reads(ctx: Context, reads: list[TableRead]) -> list[str]:
    """explain lines: where each table's rows come from and the statement that fetches them."""
    return [
        f"  {'node 1' if r.info.kind == 'reference' else 'all shards'}: {read_sql(r, ctx.engine)}"
        for r in reads
    ]
