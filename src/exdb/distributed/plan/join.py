"""``join``: a join that is not co-located runs on the shards after some of its sources move.

At run time each distributed source is counted on the shards after its own filters
(exdb.distributed.estimate), and the cheapest way to make the join co-located is chosen:

- the *hub* stays where it is: the sources of one co-located group (tables joined on their
  distribution columns), or two sources re-hashed on the key that joins them (a *dual
  repartition*, for when no group can stay);
- every other source moves, with only the columns the query reads and the rows that pass its
  own filters: *repartition* (re-hashed on a key that an equality ties to a hub column of the
  same affinity, into a TEMP table distributed by that key, so that equal keys meet on one
  shard) or *broadcast* (all its rows to every shard, a TEMP table planned as a reference
  table);
- *semi-join reduction*: a moving source tied by a strict equality to a source with few rows
  after its filters is first filtered by that source's join keys (``key IN (SELECT k FROM
  <keys>)``), so that only rows that can match move.

The statement, rewritten to read the TEMP tables under the sources' own aliases, then plans as
any co-located query (scatter, aggregate: exdb.distributed.plan.choose) and runs. Every TEMP
table is dropped before the statement returns, after an error too. Rows move through the
client: nodes do not talk to each other.

Cost, in rows moved through the client: a broadcast fetches N rows and sends S copies
((S + 1) N); a repartition fetches and sends each row once (2 N). A side above
BROADCAST_MAX_ROWS also pays S N more when broadcast: every shard then stores and joins a full
copy of it, so the join's work is no longer divided among the shards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from typing import Any

from sqlglot import exp

from exdb.distributed.catalog import Catalog
from exdb.distributed.estimate import estimate_rows, source_select
from exdb.distributed.intermediate import Intermediate, drop, new_name, push, with_intermediates
from exdb.distributed.joinshape import (
    JoinShape,
    Source,
    analyse_join,
    declared_types,
    join_keys,
    key_compatible,
)
from exdb.distributed.merge import LocalEngine
from exdb.distributed.plan.base import (
    Context,
    Execution,
    Outcomes,
    Plan,
    Result,
    ShardCall,
    only_named,
    raise_first,
    render,
)
from exdb.distributed.plan.gather import GatherPlan
from exdb.distributed.route import analyse_select

__all__ = ["BROADCAST_MAX_ROWS", "SEMI_JOIN_MAX_KEYS", "JoinPlan", "plan_join"]

#: Above this many rows (after its filters), a broadcast side costs S times its rows more: each
#: shard would hold and join a whole copy of it. Below it, broadcast is costed by rows moved
#: alone: a repartition through the client also fetches the hub's rows and hashes every row in
#: Python, and measured no faster on benchmarks/joins.py (see docs/architecture.md).
BROADCAST_MAX_ROWS = 1_000_000
#: A source with at most this many rows after its filters reduces the sources it is strictly
#: joined to (when they have at least twice as many): its keys travel to their shards first.
SEMI_JOIN_MAX_KEYS = 10_000

Planner = Callable[[str, exp.Expr, Catalog, LocalEngine, int, str], Plan]


@dataclasses.dataclass(frozen=True)
class Move:
    """How one source moves: ``broadcast``, or ``repartition`` on ``column``; ``reduce``: the
    (source, its column, this source's column) whose keys filter it first."""

    source: str
    how: str
    column: str | None = None
    reduce: tuple[str, str, str] | None = None


@dataclasses.dataclass(frozen=True)
class Choice:
    """One way to run the join: the moves, their cost in rows, and the hub's description."""

    moves: tuple[Move, ...]
    cost: int
    hub: str


class JoinPlan(Plan):
    """Move some sources of a join to the shards of the others, then run it co-located."""

    kind = "join"

    def __init__(
        self,
        statement: str,
        tree: exp.Select,
        shape: JoinShape,
        catalog: Catalog,
        dialect: str,
        names: list[str],
        planner: Planner,
        fallback: GatherPlan,
    ) -> None:
        super().__init__(statement)
        self.tree = tree
        self.shape = shape
        self.catalog = catalog
        self.dialect = dialect
        self.names = names
        self.planner = planner
        self.fallback = fallback
        self.types = {s.key: declared_types(s.info, dialect) for s in shape.sources}
        self.groups = _colocated_groups(shape)
        self.ir_names = {s.key: new_name(catalog) for s in shape.sources if s.spread}
        self.key_names = {s.key: new_name(catalog) for s in shape.sources if s.spread}
        self._outer: dict[tuple[Move, ...], Plan | None] = {}
        self.last: tuple[Choice, dict[str, int]] | None = None

    # --- the choice ---------------------------------------------------------------------------

    def choices(self, estimates: dict[str, int], shards: int) -> list[Choice]:
        """Every way to make the join co-located, cheapest first."""
        spread = [s for s in self.shape.sources if s.spread]
        hubs: list[tuple[dict[str, str | None], list[Move], int, str]] = []
        for group in self.groups:
            members = {k: self.shape.source(k).info.column for k in group}
            hubs.append((members, [], 0, ", ".join(self.shape.source(k).alias for k in group)))
        for edge in self.shape.edges:
            if self._same_group(edge.left, edge.right) or not self._compatible(
                (edge.left, edge.lcol), (edge.right, edge.rcol)
            ):
                continue
            left, right = self.shape.source(edge.left), self.shape.source(edge.right)
            if not (left.spread and right.spread):
                continue
            if _on_distribution(left, edge.lcol) or _on_distribution(right, edge.rcol):
                continue  # one side stays and the other moves: a cheaper candidate already
            moves = [
                Move(edge.left, "repartition", edge.lcol),
                Move(edge.right, "repartition", edge.rcol),
            ]
            cost = 2 * (estimates[edge.left] + estimates[edge.right])
            hubs.append(({edge.left: edge.lcol, edge.right: edge.rcol}, moves, cost, ""))
        out = []
        for members, moves, cost, label in hubs:
            members = dict(members)
            moves = list(moves)
            pending = [s for s in spread if s.key not in members]
            changed = True
            while changed:
                changed = False
                for s in list(pending):
                    column = self._tie(s, members)
                    if column is None or 2 * estimates[s.key] > self._broadcast_cost(
                        estimates[s.key], shards
                    ):
                        continue
                    members[s.key] = column
                    moves.append(Move(s.key, "repartition", column))
                    cost += 2 * estimates[s.key]
                    pending.remove(s)
                    changed = True
            for s in pending:
                moves.append(Move(s.key, "broadcast"))
                cost += self._broadcast_cost(estimates[s.key], shards)
            moves = [self._reduced(m, estimates) for m in moves]
            out.append(Choice(tuple(moves), cost, label))
        out.sort(key=lambda c: (c.cost, len(c.moves)))
        return out

    @staticmethod
    def _broadcast_cost(rows: int, shards: int) -> int:
        cost = (shards + 1) * rows
        return cost + shards * rows if rows > BROADCAST_MAX_ROWS else cost

    def _same_group(self, a: str, b: str) -> bool:
        return any(a in g and b in g for g in self.groups)

    def _compatible(self, a: tuple[str, str], b: tuple[str, str]) -> bool:
        left = self.types[a[0]].get(a[1].lower(), "")
        right = self.types[b[0]].get(b[1].lower(), "")
        return key_compatible(left, right, self.dialect)

    def _tie(self, source: Source, members: dict[str, str | None]) -> str | None:
        """A column of ``source`` an equality ties to a hub member's hub column (compatible)."""
        for edge in self.shape.edges:
            if source.key not in (edge.left, edge.right):
                continue
            mine, other, theirs = edge.other(source.key)
            hub_column = members.get(other)
            if hub_column is None or hub_column.lower() != theirs.lower():
                continue
            if self._compatible((source.key, mine), (other, theirs)):
                return mine
        return None

    def _reduced(self, move: Move, estimates: dict[str, int]) -> Move:
        """The move, filtered first by the keys of a small source strictly joined to it."""
        best: tuple[int, tuple[str, str, str]] | None = None
        for edge in self.shape.edges:
            if move.source not in edge.reducible:
                continue
            mine, other, theirs = edge.other(move.source)
            rows = estimates.get(other)
            if rows is None or rows > SEMI_JOIN_MAX_KEYS or 2 * rows > estimates[move.source]:
                continue
            if not self._compatible((move.source, mine), (other, theirs)):
                continue
            if best is None or rows < best[0]:
                best = (rows, (other, theirs, mine))
        return dataclasses.replace(move, reduce=best[1]) if best is not None else move

    # --- the rewritten statement --------------------------------------------------------------

    def _intermediate(self, move: Move) -> Intermediate:
        source = self.shape.source(move.source)
        types = self.types[source.key]
        columns = [(c, types.get(c.lower()) or None) for c in source.columns]
        keys = join_keys(self.tree, self.shape, source)
        if move.how == "broadcast":
            return Intermediate(self.ir_names[source.key], columns, "reference", indexed=keys)
        return Intermediate(
            self.ir_names[source.key], columns, "distributed", move.column, indexed=keys
        )

    def _keys(self, move: Move) -> Intermediate:
        assert move.reduce is not None
        other, column, _ = move.reduce
        declared = self.types[other].get(column.lower()) or None
        return Intermediate(self.key_names[move.source], [("k", declared)], "reference")

    def outer(self, moves: tuple[Move, ...], ctx: Context) -> Plan | None:
        """The plan of the statement reading the moved sources' TEMP tables (cached), or None
        when it would not run co-located."""
        key = tuple(dataclasses.replace(m, reduce=None) for m in moves)
        if key in self._outer:
            return self._outer[key]
        irs = [self._intermediate(m) for m in key]
        tree = self.tree.copy()
        tables = [tree.args["from_"].this] + [j.this for j in tree.args.get("joins") or []]
        for move, ir in zip(key, irs, strict=True):
            source = self.shape.source(move.source)
            node = tables[source.index]
            alias = node.args.get("alias")
            alias_id = alias.this.copy() if isinstance(alias, exp.TableAlias) else node.this.copy()
            node.replace(
                exp.Table(
                    this=exp.to_identifier(ir.name, quoted=True),
                    alias=exp.TableAlias(this=alias_id),
                )
            )
        catalog = with_intermediates(
            self.catalog, irs
        )  # the planning catalog: a recursive plan's steps too
        text = render(tree, ctx.engine)
        plan: Plan | None = None
        if analyse_select(tree, catalog, text).colocated:
            plan = self.planner(text, tree, catalog, ctx.local, 0, ctx.engine)
            if isinstance(plan, GatherPlan):
                plan = None
        self._outer[key] = plan
        return plan

    # --- running it ---------------------------------------------------------------------------

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        spread = [s for s in self.shape.sources if s.spread]
        counted = [s for s in self.shape.sources if s.spread or s.filters]
        estimates = yield from estimate_rows(ctx, counted, params)
        for choice in self.choices(estimates, ctx.shards):
            outer = self.outer(choice.moves, ctx)
            if outer is not None:
                break
        else:
            return (yield from self.fallback.execute(ctx, params))
        self.last = (choice, {s.key: estimates[s.key] for s in spread})
        pushed: list[Intermediate] = []
        try:
            result = yield from self._run(ctx, params, choice, outer, pushed)
        except GeneratorExit:
            raise
        except BaseException:
            if pushed:
                # The statement's own error is the one to report: a drop that fails after it
                # (a DuckDB transaction aborted by it) is undone by the rollback that follows.
                yield [c for ir in pushed for c in drop(ir, ctx.shards)]
            raise
        if pushed:
            raise_first((yield [c for ir in pushed for c in drop(ir, ctx.shards)]))
        return result

    def _run(
        self,
        ctx: Context,
        params: dict[str, Any],
        choice: Choice,
        outer: Plan,
        pushed: list[Intermediate],
    ) -> Execution:
        # 1. semi-join keys: each reducing source's join keys, pushed to every shard
        reducers = [m for m in choice.moves if m.reduce is not None]
        if reducers:
            trees = []
            for move in reducers:
                assert move.reduce is not None
                other, column, _ = move.reduce
                source = self.shape.source(other)
                item = exp.column(column, table=source.alias, quoted=True)
                trees.append((move, source, source_select(source, [item]).distinct()))
            keys = yield from _fetch(ctx, params, [(s, t) for _, s, t in trees])
            calls = []
            for (move, _, _), rows in zip(trees, keys, strict=True):
                ir = self._keys(move)
                pushed.append(ir)
                calls += push(ir, sorted(set(rows), key=repr), ctx.shards, ctx.engine)
            raise_first((yield calls))
        # 2. the moving sources, after their filters, with the columns the query reads
        sides = []
        for move in choice.moves:
            source = self.shape.source(move.source)
            items = [exp.column(c, table=source.alias, quoted=True) for c in source.columns]
            extra = []
            if move.reduce is not None:
                keys_name = self.key_names[move.source]
                probe = exp.select(exp.column("k", quoted=True)).from_(
                    exp.to_identifier(keys_name, quoted=True)
                )
                key = exp.column(move.reduce[2], table=source.alias, quoted=True)
                extra.append(exp.In(this=key, query=exp.Subquery(this=probe)))
            sides.append((source, source_select(source, items, extra)))
        fetched = yield from _fetch(ctx, params, sides)
        calls = []
        for move, rows in zip(choice.moves, fetched, strict=True):
            ir = self._intermediate(move)
            pushed.append(ir)
            calls += push(ir, rows, ctx.shards, ctx.engine)
        raise_first((yield calls))
        # 3. the statement, co-located now; its rows are read before the TEMP tables go
        result = yield from outer.execute(ctx, params)
        try:
            rows = list(result.rows)
        finally:
            if result.close is not None:
                result.close()
        names = self.names if result.columns is not None else None
        if names is None or len(names) != len(result.columns or []):
            names = result.columns
        return Result(names, result.types, rows, result.rowcount)

    def describe(self, ctx: Context) -> list[str]:
        if self.last is not None:
            choice, estimates = self.last
            return self._choice_lines(choice, estimates, ctx)
        # Not run yet: the candidates, as they rank when every source counts alike (the rows
        # each holds after its filters decide at run time; explain then shows the choice).
        lines = [
            "join: not co-located; chosen at run time from each source's rows after its own"
            " filters, counted on the shards (run it, then explain shows the choice). Candidates:"
        ]
        neutral = {s.key: 1 for s in self.shape.sources}
        runnable = [c for c in self.choices(neutral, ctx.shards) if self.outer(c.moves, ctx)]
        for i, choice in enumerate(runnable, 1):
            body = self._choice_lines(choice, None, ctx)
            lines.append(f"  {i}. {body[0]}")
            lines += ["     " + line for line in body[1:]]
        lines.append("fallback: gather, when no candidate runs co-located")
        return lines

    def _choice_lines(
        self, choice: Choice, estimates: dict[str, int] | None, ctx: Context
    ) -> list[str]:
        lines = []
        if choice.hub:
            lines.append(f"join: {choice.hub} stay in place")
        repart = [m for m in choice.moves if m.how == "repartition"]
        if repart:
            keys = sorted({m.column or "" for m in repart})
            names = ", ".join(self.shape.source(m.source).alias for m in repart)
            lines.append(f"join: repartition {names} on {', '.join(keys)}")
        for move in choice.moves:
            source = self.shape.source(move.source)
            if move.how == "broadcast":
                rows = f" (est. {estimates[move.source]} rows)" if estimates is not None else ""
                lines.append(f"join: broadcast {source.alias}{rows}")
            if move.reduce is not None:
                other = self.shape.source(move.reduce[0]).alias
                lines.append(
                    f"join: semi-join reduce {source.alias} by the keys of {other}"
                    f" ({move.reduce[2]} IN {other}.{move.reduce[1]})"
                )
        outer = self.outer(choice.moves, ctx)
        if outer is not None:
            lines.append(f"then: {outer.kind}")
            lines += ["  " + line for line in outer.describe(ctx)]
        return lines


def _fetch(
    ctx: Context, params: dict[str, Any], queries: list[tuple[Source, exp.Select]]
) -> Generator[list[ShardCall], Outcomes, list[list[tuple[Any, ...]]]]:
    """Each query's rows from its source's shards (node 1 for a reference table), all at once."""
    calls: list[ShardCall] = []
    owners: list[int] = []
    for i, (source, tree) in enumerate(queries):
        sql = tree.sql(dialect=ctx.engine)
        for n in range(ctx.shards) if source.spread else range(1):
            calls.append(ShardCall(n, sql, only_named(params, tree)))
            owners.append(i)
    out: list[list[tuple[Any, ...]]] = [[] for _ in queries]
    for i, result in zip(owners, raise_first((yield calls)), strict=True):
        out[i].extend(tuple(row) for row in result.rows)
    return out


def _on_distribution(source: Source, column: str) -> bool:
    """Whether ``column`` is the distribution column of a distributed source."""
    info = source.info
    return info.kind == "distributed" and (info.column or "").lower() == column.lower()


def _colocated_groups(shape: JoinShape) -> list[list[str]]:
    """The spread sources in groups that are co-located already: distributed tables tied by
    equalities of their distribution columns (of one affinity); a keyless table alone."""
    spread = [s for s in shape.sources if s.spread]
    parent = {s.key: s.key for s in spread}

    def find(a: str) -> str:
        while parent[a] != a:
            a = parent[a]
        return a

    for edge in shape.edges:
        if edge.left not in parent or edge.right not in parent:
            continue
        left, right = shape.source(edge.left).info, shape.source(edge.right).info
        if left.kind != "distributed" or right.kind != "distributed":
            continue
        if (left.column or "").lower() != edge.lcol.lower():
            continue
        if (right.column or "").lower() != edge.rcol.lower():
            continue
        if left.column_affinity != right.column_affinity:
            continue
        parent[find(edge.left)] = find(edge.right)
    groups: dict[str, list[str]] = {}
    for s in spread:
        groups.setdefault(find(s.key), []).append(s.key)
    return list(groups.values())


def plan_join(
    text: str,
    tree: exp.Expr,
    catalog: Catalog,
    local: LocalEngine,
    n_params: int,
    dialect: str,
    planner: Planner,
    names: Callable[[], list[str]],
    fallback: GatherPlan,
) -> JoinPlan | None:
    """A JoinPlan for a simple SELECT over tables that are not co-located, or None when its
    sources cannot move exactly (the caller gathers)."""
    del local, n_params
    if not isinstance(tree, exp.Select):
        return None
    shape = analyse_join(tree, catalog)
    if shape is None or sum(1 for s in shape.sources if s.spread) < 2:
        return None
    return JoinPlan(text, tree, shape, catalog, dialect, names(), planner, fallback)
