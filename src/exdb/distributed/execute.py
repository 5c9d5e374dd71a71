"""Stage 4, execute: the orchestrating function of the distributed engine, shared by every
door. It is a generator: it yields batches of :class:`ShardCall` for a door to run concurrently
and receives their outcomes; it never touches a socket.

    parse -> plan (route + rewrite, cached) -> execute on the shards -> merge
"""

from __future__ import annotations

import collections
import itertools
import random
import re
from collections.abc import Sequence
from typing import Any

from exdb.distributed.analyze import Analyzing, analyze_execution
from exdb.distributed.catalog import CATALOG_DDL, CATALOG_SELECT, Catalog
from exdb.distributed.merge import LocalEngine
from exdb.distributed.parse import SqlSyntaxError, bind_names, node_prefix, parse
from exdb.distributed.plan import (
    BroadcastPlan,
    Execution,
    InsertPlan,
    Plan,
    Result,
    ShardCall,
    SinglePlan,
    plan_statement,
)
from exdb.errors import (
    DatabaseError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    UnknownTableError,
)
from exdb.types import plain_params

__all__ = ["Engine", "Execution", "Result", "ShardCall"]

_PLAN_CACHE = 1024


class Engine:
    """The distributed engine of one connection: catalog cache, plan cache, final-stage engine.

    Door-independent: the sync door, the asyncio door and the worker processes each hold one and
    drive :meth:`run`.
    """

    def __init__(self, shards: int, engine: str) -> None:
        self.shards = shards
        self.engine = engine
        self.catalog = Catalog()
        self.local = LocalEngine(engine)
        self._plans: collections.OrderedDict[tuple[str, int], Plan] = collections.OrderedDict()
        self._round_robin: dict[str, itertools.count[int]] = {}

    # --- the pipeline -------------------------------------------------------------------------

    def run(self, sql: str, params: Sequence[Any] | None = None) -> Execution:
        """Run one statement: parse, plan (route + rewrite), execute on the shards, merge."""
        if not isinstance(sql, str):
            raise ProgrammingError(f"the statement must be a str, not {type(sql).__name__}")
        params = _plain(params, sql)
        node, text = node_prefix(sql)
        if node is not None:
            return (yield from self._on_node(node, text, params, sql))
        if "%#" in text or "%@" in text:
            plan: Plan = BroadcastPlan(sql, text, macros=True)
            return (yield from plan.execute(self, _positional(params)))
        try:
            parsed = parse(text, self.engine)
        except SqlSyntaxError as exc:
            return (yield from self._judge(text, params, sql, exc))
        try:
            plan = self.plan(parsed.text)
        except UnknownTableError:
            # Another client or worker may have created it since the catalog was read.
            yield from self.load_catalog()
            plan = self.plan(parsed.text)
        return (yield from plan.execute(self, bind_names(params, parsed.n_params, sql)))

    def run_nested(self, sql: str, params: dict[str, Any] | None) -> Execution:
        """Run a statement whose parameters are already named (from a rewritten tree)."""
        return (yield from self.plan(sql).execute(self, dict(params or {})))

    def plan(self, text: str) -> Plan:
        """The plan of a statement, from the cache when the catalog has not changed since."""
        key = (text, self.catalog.version)
        cached = self._plans.get(key)
        if cached is not None:
            self._plans.move_to_end(key)
            return cached
        plan = plan_statement(parse(text, self.engine), self.catalog, self.local, self.shards)
        self._plans[key] = plan
        if len(self._plans) > _PLAN_CACHE:
            self._plans.popitem(last=False)
        return plan

    def bulk_insert(self, sql: str, seq: list[Any]) -> Execution | None:
        """executemany of a one-row INSERT: each shard gets its rows in one batch. None when
        the statement is not such an INSERT (the caller then runs it once per parameter set)."""
        node, text = node_prefix(sql)
        if node is not None or "%#" in text or "%@" in text:
            return None
        plan = self.plan(parse(text, self.engine).text)
        if not isinstance(plan, InsertPlan) or not plan.bulk_ready():
            return None
        return plan.execute_many(self, [_plain(p, sql) for p in seq])

    def bulk_placer(self, sql: str) -> InsertPlan | None:
        """The plan of a one-row INSERT whose rows a bulk load places itself (``place_rows``,
        then ``execute_groups``), or None where executemany must run it."""
        node, text = node_prefix(sql)
        if node is not None or "%#" in text or "%@" in text:
            return None
        plan = self.plan(parse(text, self.engine).text)
        return plan if isinstance(plan, InsertPlan) and plan.bulk_ready() else None

    def _batch_candidate(self, sql: str) -> Plan | None:
        """The plan of a statement a run of which could go to the shards in batches: no node
        prefix or macros, and it plans; else None."""
        node, text = node_prefix(sql)
        if node is not None or "%#" in text or "%@" in text:
            return None
        try:
            return self.plan(parse(text, self.engine).text)
        except Exception:
            return None  # it will run alone and report its own error

    def plain_insert(self, sql: str) -> InsertPlan | None:
        """The plan of ``sql`` if it is a plain one-row INSERT (batchable), else None."""
        plan = self._batch_candidate(sql)
        return plan if isinstance(plan, InsertPlan) and plan.plain() else None

    def insert_each(self, sql: str, seq: list[Any]) -> Execution | None:
        """For a plain one-row INSERT run once per parameter set: one atomic batch per shard,
        with each statement's own outcome (see InsertPlan.execute_each); None otherwise."""
        plan = self.plain_insert(sql)
        if plan is None:
            return None
        n = parse(node_prefix(sql)[1], self.engine).n_params
        if any(not isinstance(p, (list, tuple)) or len(p) != n for p in seq):
            return None
        return plan.execute_each(self, [_plain(p, sql) for p in seq])  # type: ignore[return-value]

    def point_select(self, sql: str) -> SinglePlan | None:
        """The plan of ``sql`` if it is a SELECT that its distribution key pins to one shard
        (a run of them can go to each shard as one BATCH), else None."""
        plan = self._batch_candidate(sql)
        if isinstance(plan, SinglePlan) and plan.pin is not None and len(plan.pin.values) == 1:
            return plan
        return None

    def select_each(self, sql: str, seq: Sequence[Any]) -> Execution | None:
        """For a pinned point SELECT run once per parameter set: each set goes to its shard,
        each shard gets its sets as one BATCH; each statement's Result or exception, as if it
        ran alone (see SinglePlan.execute_each). None when the statement does not qualify."""
        plan = self.point_select(sql)
        if plan is None:
            return None
        n = parse(node_prefix(sql)[1], self.engine).n_params
        bound: list[dict[str, Any] | BaseException] = []
        for params in seq:
            try:
                bound.append(bind_names(_plain(params, sql), n, sql))
            except Exception as exc:  # this statement alone fails, as run() would fail it
                bound.append(exc)
        return plan.execute_each(self, bound)  # type: ignore[return-value]

    def explain(self, sql: str) -> str:
        """The plan of a statement as text: nodes, each shard's SQL, the merge."""
        node, text = node_prefix(sql)
        if node is not None:
            plan: Plan = SinglePlan(sql, text, node - 1, None, None)
        elif "%#" in text or "%@" in text:
            plan = BroadcastPlan(sql, text, macros=True)
        else:
            plan = self.plan(parse(text, self.engine).text)
        lines = [f"plan: {plan.kind}", *plan.describe(self)]
        return "\n".join(lines)

    def analyze(self, sql: str, params: Sequence[Any] | None = None) -> Analyzing:
        """EXPLAIN ANALYZE: run the statement, measured stage by stage; its value is the
        Analysis (see exdb.distributed.analyze). A door drives it as it drives :meth:`run`."""
        return (yield from analyze_execution(self, sql, params))

    def _judge(self, text: str, params: Any, sql: str, error: SqlSyntaxError) -> Execution:
        """exdb's parser cannot read the statement: node 1's engine judges it, by preparing
        (EXPLAIN, which runs nothing) the statement as written. If the engine refuses it too,
        the statement is wrong: ProgrammingError with the engine's own message. If the engine
        accepts it, the statement is only beyond exdb: NotSupportedError."""
        if _STARTS_WITH_EXPLAIN.match(text):  # EXPLAIN ANALYZE would run it: no judge
            raise error
        values = list(params) if isinstance(params, (list, tuple)) else None
        (outcome,) = yield [ShardCall(0, _EXPLAIN + text, values)]
        if isinstance(outcome, DatabaseError) and not isinstance(outcome, OperationalError):
            message = _without_explain(outcome.message)
            raise ProgrammingError(message, node=outcome.node, statement=sql) from None
        if isinstance(outcome, BaseException):
            raise error  # the node could not judge it (it is down, say): exdb's own message
        raise NotSupportedError(
            f"exdb cannot plan this statement: the engine of node 1 accepts it, but exdb's SQL"
            f" parser cannot read it ({error.message}); run it on one node with the N: prefix",
            statement=sql,
        )

    def _on_node(self, node: int, text: str, params: Any, sql: str) -> Execution:
        if not 1 <= node <= self.shards:
            raise ProgrammingError(
                f"node {node} does not exist: nodes are numbered 1 to {self.shards}", statement=sql
            )
        plan = SinglePlan(sql, text, node - 1, None, None)
        return (yield from plan.execute(self, _positional(params)))

    # --- what plans ask of the engine ---------------------------------------------------------

    def next_round_robin(self, table: str) -> int:
        """The next shard for a row of a keyless table (each client starts at a random shard)."""
        counter = self._round_robin.get(table)
        if counter is None:
            counter = self._round_robin[table] = itertools.count(random.randrange(self.shards))
        return next(counter) % self.shards

    # --- catalog ------------------------------------------------------------------------------

    def load_catalog(self) -> Execution:
        """Create the catalog table where missing and read it (from the first node)."""
        calls = [ShardCall(n, CATALOG_DDL, alone=True, label="catalog") for n in range(self.shards)]
        calls.append(ShardCall(0, CATALOG_SELECT, alone=True, label="catalog"))
        outcomes = yield calls
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        last = outcomes[-1]
        assert not isinstance(last, BaseException)
        self.catalog.load(list(last.rows), self.engine)
        return Result(None, [], [], -1)

    def close(self) -> None:
        """Release the final-stage engine."""
        self.local.close()


def _plain(params: Any, sql: str) -> Any:
    """A statement's parameters with NumPy and pandas values made plain (as every door does):
    the value a distribution key hashes and a final stage binds is the plain one."""
    if isinstance(params, (list, tuple)):
        return plain_params(params, sql)
    return params


_EXPLAIN = "EXPLAIN "
#: A statement that is an EXPLAIN already (after blanks and comments).
_STARTS_WITH_EXPLAIN = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*EXPLAIN\b", re.I | re.S)


def _without_explain(message: str) -> str:
    """An engine's message about ``EXPLAIN <statement>`` as if about the statement: DuckDB
    quotes the line with a caret under the fault ("LINE 1: EXPLAIN SELECT ...")."""
    lines = message.split("\n")
    for i, line in enumerate(lines):
        head, sep, rest = line.partition(": ")
        if head.startswith("LINE ") and sep and rest.startswith(_EXPLAIN):
            lines[i] = head + sep + rest[len(_EXPLAIN) :]
            if i + 1 < len(lines) and lines[i + 1].startswith(" " * len(_EXPLAIN)):
                lines[i + 1] = lines[i + 1][len(_EXPLAIN) :]
            break
    return "\n".join(lines)


def _positional(params: Any) -> dict[str, Any]:
    """Positional parameters for verbatim statements, keyed p1..pN in order."""
    if params is None:
        return {}
    if isinstance(params, (str, bytes)) or not isinstance(params, Sequence):
        raise ProgrammingError("parameters must be a sequence (a tuple or list)")
    return {f"p{i}": v for i, v in enumerate(params, 1)}
