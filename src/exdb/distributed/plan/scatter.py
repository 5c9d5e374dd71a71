"""``scatter``: each shard runs the query with ORDER BY and LIMIT pushed down; a k-way merge."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlglot import exp

from exdb.distributed.merge import (
    SortKey,
    arrow_concat,
    hashable,
    kway_merge,
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
from exdb.distributed.rewrite import (
    LIMIT_PARAM,
    ScatterSplit,
)
from exdb.distributed.route import (
    Pin,
    literal_value,
    shards_for_pin,
)
from exdb.errors import NotSupportedError, ProgrammingError

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
        sql = render(split.shard, ctx.engine)
        nodes = target_shards(self.pin, params, ctx.shards)
        params_for = only_named(shard_params, split.shard)
        outcomes = yield [
            ShardCall(n, sql, params_for, stream=True, label="scatter") for n in nodes
        ]
        try:
            results = raise_first(outcomes)
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
            f"  {render(self.split.shard, ctx.engine)}",
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


def target_shards(pin: Pin | None, params: dict[str, Any], shards: int) -> list[int]:
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
