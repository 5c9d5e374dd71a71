"""Row estimates for the join strategies: each source's rows after its own filters, counted by
the shards themselves.

Why counts and not the engines' statistics: ``sqlite_stat1`` exists only after ANALYZE (which
nobody runs on a freshly loaded shard) and counts a table's rows, not those passing a filter;
DuckDB's EXPLAIN cardinalities are guesses for filtered scans (a fixed selectivity). A
``SELECT count(*) FROM t WHERE <t's own filters>`` on every shard is exact, costs one scan
that moves one row per shard, and runs on all shards and all sources at once (one round trip).
The counts are taken once per execution of a plan and never cached across executions: a
table's size changes with every write.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

from sqlglot import exp

from exdb.distributed.joinshape import Source
from exdb.distributed.plan.base import Context, Outcomes, ShardCall, only_named, raise_first

__all__ = ["count_tree", "estimate_rows", "source_select"]


def source_select(
    source: Source, items: Sequence[exp.Expr], extra: Sequence[exp.Expr] = ()
) -> exp.Select:
    """``SELECT items FROM <table> AS <alias> WHERE <its own filters> [AND extra]``."""
    table = exp.Table(this=exp.to_identifier(source.info.name, quoted=True))
    alias = source.node.args.get("alias")
    alias_id = alias.this.copy() if isinstance(alias, exp.TableAlias) else source.node.this.copy()
    table.set("alias", exp.TableAlias(this=alias_id))
    select = exp.Select(expressions=list(items)).from_(table)
    conds = [c.copy() for c in source.filters] + list(extra)
    if conds:
        select = select.where(exp.and_(*conds))
    return select


def count_tree(source: Source) -> exp.Select:
    """The count of a source's rows that pass its own filters."""
    return source_select(source, [exp.Count(this=exp.Star())])


def estimate_rows(
    ctx: Context, sources: Sequence[Source], params: dict[str, Any]
) -> Generator[list[ShardCall], Outcomes, dict[str, int]]:
    """Each source's rows after its own filters (by alias key): every shard counts its part
    (node 1 alone for a reference table), all at once."""
    calls: list[ShardCall] = []
    owners: list[str] = []
    for source in sources:
        tree = count_tree(source)
        sql = tree.sql(dialect=ctx.engine)
        nodes = range(ctx.shards) if source.spread else range(1)
        for n in nodes:
            calls.append(ShardCall(n, sql, only_named(params, tree)))
            owners.append(source.key)
    counts = {source.key: 0 for source in sources}
    if not calls:
        return counts
    for owner, result in zip(owners, raise_first((yield calls)), strict=True):
        for row in result.rows:
            counts[owner] += int(row[0] or 0)
    return counts
