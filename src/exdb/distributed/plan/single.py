"""``single``: one node answers (``N:`` prefix, no table, reference tables only, a pinned key)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

from sqlglot import exp

from exdb.distributed.placement import placer
from exdb.distributed.plan.base import (
    Context,
    Execution,
    Plan,
    Result,
    ShardCall,
    bind_params,
    one_result,
    raise_first,
)
from exdb.distributed.route import (
    Pin,
    shards_for_pin,
)

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
        outcomes = yield [
            ShardCall(
                self._node(ctx, params), self.sql, bind_params(params, self.names), label="single"
            )
        ]
        (result,) = raise_first(outcomes)
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
            bound.append(bind_params(params, self.names))
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
                results[i] = one_result(one)
        if retry:
            again = yield [call for call, _ in retry]
            for (_, i), one in zip(retry, again, strict=True):
                results[i] = one_result(one)
        return results

    def describe(self, ctx: Context) -> list[str]:
        where = "the shard of the pinned key" if self.pin else f"node {(self.node or 0) + 1}"
        return [f"run on {where}:", f"  {self.sql}", "merge: none (one node answers)"]
