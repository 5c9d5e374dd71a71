"""Replicas (``connect(nodes=..., nReplicas=N)``): each shard is kept on N nodes.

Layout, as eXtremeSQL's ``nReplicas``: consecutive groups of N nodes form one shard each
(nodes 1..N are shard 1, N+1..2N shard 2, ...). Plans address shards 0..S-1; this module is the
one layer, shared by every door, that turns a batch of shard calls into node calls:

- a call that may write (DML, DDL, catalog changes, session settings: anything that is not a
  plain read) goes to every live, caught-up replica of its shard, in the user's transaction;
  their outcomes must agree (rowcount, rows, error class), else InternalError
  naming the replicas;
- a read goes to one replica, chosen round-robin (sticky for the rest of a transaction), and
  is checked against the shard's other live replicas in the same round (a one-row question:
  whether they hold a *stale mark* for the chosen one);
- a replica that fails (connection lost, read timeout) is marked down and the work goes on with
  the others; a failed read is retried on another replica. Only when no replica of a shard is
  left does the statement fail, with OperationalError naming the shard and its nodes.

Correctness across clients rests on stale marks (table ``exdb_replica_marks`` on every node):
a write that skipped a replica (down or known stale) inserts a mark naming that replica on
every replica it wrote to, in the same transaction (autocommit: right after, before the
statement returns). A replica with a mark on any live partner serves no reads and takes no
writes until it is caught up: a full copy, in one transaction on each side, of every table of a
healthy partner (catalog and marks included), whose source transaction also deletes the marks
it has seen. A replica whose database has no marks table while a partner's has one (a fresh
database) is caught up the same way.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any

from exdb.distributed.plan import Result, ShardCall, ShardResult
from exdb.errors import (
    Error,
    InternalError,
    LockError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)

__all__ = [
    "MARKS_TABLE",
    "Layout",
    "Replicas",
    "after_end",
    "catch_up",
    "is_read",
    "join",
]

MARKS_TABLE = "exdb_replica_marks"
MARKS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {MARKS_TABLE} (replica INTEGER NOT NULL, mark VARCHAR PRIMARY KEY)"
)
MARKS_SELECT = f"SELECT replica FROM {MARKS_TABLE}"
MARK_INSERT = f"INSERT INTO {MARKS_TABLE} VALUES (?, ?)"
#: Whether a node's database has the marks table (a fresh database does not).
HAS_MARKS = {
    "sqlite": f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{MARKS_TABLE}'",
    "duckdb": (
        "SELECT count(*) FROM information_schema.tables"
        f" WHERE table_schema = 'main' AND table_name = '{MARKS_TABLE}'"
    ),
}
#: Seconds before a down replica is tried again; doubled after each failed try, up to the max.
RETRY_FIRST = 1.0
RETRY_MAX = 30.0
#: Seconds a reconnection to a down replica may take (a stopped node would otherwise hold the
#: statement that tries it for the whole connect timeout).
RECONNECT_TIMEOUT = 1.0
#: Tries of a stale mark's INSERT that meets a write conflict.
MARK_TRIES = 3
#: Rows per INSERT batch of a catch-up copy.
COPY_BATCH = 2000

NodeCalls = Generator[list[ShardCall], list[Any], Any]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which nodes hold which shard: consecutive groups of ``replicas`` nodes."""

    nodes: tuple[str, ...]
    replicas: int

    def __post_init__(self) -> None:
        n = self.replicas
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ProgrammingError(f"nReplicas must be a positive integer, not {n!r}")
        if len(self.nodes) % n:
            raise ProgrammingError(
                f"nReplicas={n} needs a multiple of {n} nodes (consecutive groups of {n} nodes"
                f" form one shard each), got {len(self.nodes)}"
            )

    @property
    def shards(self) -> int:
        """How many shards the nodes hold."""
        return len(self.nodes) // self.replicas

    def of_shard(self, shard: int) -> range:
        """The node indexes holding ``shard`` (0-based)."""
        return range(shard * self.replicas, (shard + 1) * self.replicas)

    def shard_of(self, node: int) -> int:
        """The shard a node holds."""
        return node // self.replicas

    def position(self, node: int) -> int:
        """The node's place (0-based) among its shard's replicas: what a stale mark names."""
        return node % self.replicas

    def describe(self, shard: int) -> str:
        """``shard 2 (nodes h:3, h:4)`` for messages."""
        nodes = ", ".join(self.nodes[i] for i in self.of_shard(shard))
        return f"shard {shard + 1} (nodes {nodes})"


# --- what reads and what writes ---------------------------------------------------------------

_SKIP = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*", re.S)
_WORD = re.compile(r"[A-Za-z_]+")
_READ_WORDS = frozenset({"SELECT", "VALUES", "SHOW", "DESCRIBE", "SUMMARIZE", "TABLE", "FROM"})
_WRITE_INSIDE = re.compile(
    r"\b(?:INSERT|UPDATE|DELETE|REPLACE|MERGE|CREATE|DROP|ALTER|NEXTVAL|SETVAL|SETSEED)\b", re.I
)
_READ_PRAGMAS = re.compile(
    r"PRAGMA\s+(?:\w+\.)?(?:table_info|table_xinfo|index_list|index_info|index_xinfo"
    r"|foreign_key_list)\b",
    re.I,
)
#: Functions whose value differs from one replica to the next: refused in writes.
_VOLATILE = re.compile(
    r"\b(?:random|randomblob|rand|uuid|gen_random_uuid|uuidv4|uuidv7|now|get_current_time"
    r"|get_current_timestamp|today|current_localtime|current_localtimestamp|transaction_timestamp"
    r"|nextval|changes|total_changes|last_insert_rowid)\s*\("
    r"|\b(?:current_timestamp|current_time|current_date|localtimestamp|localtime)\b"
    r"|\b(?:date|time|datetime|julianday|unixepoch|strftime)\s*\(\s*(?:\)|'now')"
    r"|'now'",
    re.I,
)


def is_read(sql: str) -> bool:
    """Whether a node statement only reads (one replica may answer it). Anything not plainly a
    read counts as a write and goes to every replica: a wrong guess costs work, not data."""
    text = sql[_SKIP.match(sql).end() :]  # type: ignore[union-attr]
    word = _WORD.match(text)
    keyword = word.group(0).upper() if word else ""
    if keyword in _READ_WORDS or keyword == "WITH":
        return _WRITE_INSIDE.search(text) is None
    if keyword == "EXPLAIN":
        return re.match(r"EXPLAIN\s+ANALY[SZ]E\b", text, re.I) is None and (
            _WRITE_INSIDE.search(text) is None
        )
    return keyword == "PRAGMA" and _READ_PRAGMAS.match(text) is not None


def check_deterministic(sql: str) -> None:
    """Refuse a write whose value depends on where it runs: each replica would store its own."""
    found = _VOLATILE.search(sql)
    if found is not None:
        raise NotSupportedError(
            f"{found.group(0).rstrip('(').strip()} in a write with nReplicas > 1: each replica"
            " would compute its own value and the replicas would differ; compute the value in"
            " the client and pass it as a parameter",
            statement=sql,
        )


# --- comparing the replicas' answers ----------------------------------------------------------


def _signature(outcome: Any) -> Any:
    """What must be equal in every replica's answer to one write (not ``lastrowid``: a
    session's last rowid outlives the statements that set it, so replicas' may differ)."""
    if isinstance(outcome, BaseException):
        return ("error", type(outcome).__name__)
    if isinstance(outcome, list):  # an ``each`` call: one outcome a parameter set
        return ("each", tuple(_signature(o) for o in outcome))
    rows = getattr(outcome, "rows", None)
    columns = getattr(outcome, "columns", None)
    return (
        getattr(outcome, "rowcount", None),
        None if columns is None else tuple(columns),
        tuple(tuple(r) for r in rows) if isinstance(rows, list) else None,
    )


def _release(outcome: Any) -> None:
    """Give up a read's result that is not used (a streamed one stops on its node)."""
    rows = getattr(outcome, "rows", None)
    close = getattr(rows, "close", None)
    if callable(close):
        close()


# --- the per-connection state and the driver ---------------------------------------------------


@dataclasses.dataclass
class _Route:
    """One shard call being answered: the node calls sent for it, and its outcome when known."""

    call: ShardCall
    read: bool
    tried: set[int] = dataclasses.field(default_factory=set)
    written: list[int] = dataclasses.field(default_factory=list)
    outcome: Any = None
    done: bool = False


class Replicas:
    """The replica state of one client connection (any door) and the driver that maps shard
    calls onto node calls. ``broken(node)`` says whether a node's connection has failed."""

    def __init__(self, layout: Layout, engine: str, broken: Callable[[int], bool]) -> None:
        self.layout = layout
        self.engine = engine
        self.broken = broken
        self.down: set[int] = set()  # connection failed: to be reconnected
        self.stale: set[int] = set()  # reachable, but behind: no reads, no writes
        self._next_try: dict[int, float] = {}  # node -> when to try it again
        self._backoff: dict[int, float] = {}
        self.autocommit = True  # set by the door before each statement
        self._turn = [itertools.count(s) for s in range(layout.shards)]
        self._sticky: dict[int, int] = {}  # shard -> replica read in the open transaction
        self.detected: list[tuple[int, float]] = []  # (node, when) each time one went down

    # state ----------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether there are replicas to manage (nReplicas > 1)."""
        return self.layout.replicas > 1

    def _schedule(self, node: int) -> None:
        wait = self._backoff.get(node, RETRY_FIRST)
        self._next_try[node] = time.monotonic() + wait
        self._backoff[node] = min(wait * 2, RETRY_MAX)
        for shard, replica in list(self._sticky.items()):
            if replica == node:
                del self._sticky[shard]

    def mark_down(self, node: int) -> None:
        """Stop using a node until it is reconnected and caught up."""
        if node not in self.down:
            self.detected.append((node, time.monotonic()))
            self.down.add(node)
        self._schedule(node)

    def mark_stale(self, node: int) -> None:
        """Stop using a node that is behind until it is caught up."""
        if node not in self.stale:
            self.stale.add(node)
            self._schedule(node)

    def fresh(self, node: int) -> None:
        """A node is caught up: it serves again."""
        self.stale.discard(node)
        self._next_try.pop(node, None)
        self._backoff.pop(node, None)

    def reconnected(self, node: int) -> None:
        """A down node has a new connection (it still has to be judged by ``join``)."""
        self.down.discard(node)
        self.stale.add(node)

    def due(self) -> list[int]:
        """Down or stale nodes whose time to be tried again has come."""
        now = time.monotonic()
        return sorted(n for n in self.down | self.stale if self._next_try.get(n, 0.0) <= now)

    def retry_failed(self, node: int) -> None:
        """A reconnection or a catch-up failed: try again later (with a longer wait)."""
        self._schedule(node)

    def usable(self, shard: int) -> list[int]:
        """The shard's nodes that serve reads and take writes now."""
        return [
            n
            for n in self.layout.of_shard(shard)
            if n not in self.down and n not in self.stale and not self.broken(n)
        ]

    def end_transaction(self) -> None:
        """The transaction ended: reads may go to any replica again."""
        self._sticky.clear()

    def shard_down(self, shard: int, why: str = "") -> OperationalError:
        """The error for a shard with no usable replica."""
        states = []
        for n in self.layout.of_shard(shard):
            state = "down" if n in self.down or self.broken(n) else "stale"
            states.append(f"{self.layout.nodes[n]} {state}")
        return OperationalError(
            f"{self.layout.describe(shard)} is unavailable: no replica can serve it"
            f" ({'; '.join(states)}){why}",
            node=",".join(self.layout.nodes[n] for n in self.layout.of_shard(shard)),
        )

    def _pick(self, shard: int, exclude: set[int]) -> int | None:
        candidates = [n for n in self.usable(shard) if n not in exclude]
        if not candidates:
            return None
        sticky = self._sticky.get(shard)
        if sticky in candidates:
            return sticky
        chosen = candidates[next(self._turn[shard]) % len(candidates)]
        if not self.autocommit:
            self._sticky[shard] = chosen
        return chosen

    # the driver -----------------------------------------------------------------------------

    def run(self, execution: Generator[list[ShardCall], Any, Result]) -> NodeCalls:
        """Drive an engine execution, answering its shard calls from the replicas; yields
        node calls (``ShardCall.node`` is then a node index) and returns the Result."""
        try:
            calls = next(execution)
            while True:
                outcomes = yield from self.batch(calls)
                calls = execution.send(outcomes)
        except StopIteration as stop:
            return stop.value
        finally:
            execution.close()

    def batch(self, calls: Sequence[ShardCall]) -> NodeCalls:
        """One batch of shard calls: each call's outcome, in order."""
        routes = [_Route(c, is_read(c.sql)) for c in calls]
        for route in routes:
            if not route.read:
                check_deterministic(route.call.sql)
        first = True
        while True:
            node_calls: list[ShardCall] = []
            owners: list[tuple[_Route, int, str]] = []  # (route, node, "data" | "check")
            for route in routes:
                if route.done:
                    continue
                if route.read:
                    self._plan_read(route, node_calls, owners)
                elif first:
                    self._plan_write(route, node_calls, owners)
            first = False
            if not node_calls:
                break
            outcomes = yield node_calls
            self._settle(routes, owners, outcomes)
            if all(r.done for r in routes):
                break
        yield from self._mark_skipped(routes)
        return [r.outcome for r in routes]

    def _plan_read(
        self, route: _Route, node_calls: list[ShardCall], owners: list[tuple[_Route, int, str]]
    ) -> None:
        shard = route.call.node
        node = self._pick(shard, route.tried)
        if node is None:
            route.outcome, route.done = self.shard_down(shard), True
            return
        route.tried.add(node)
        node_calls.append(dataclasses.replace(route.call, node=node))
        owners.append((route, node, "data"))
        for other in self.layout.of_shard(shard):
            if other != node and other not in self.down and not self.broken(other):
                node_calls.append(ShardCall(other, MARKS_SELECT, alone=self.autocommit))
                owners.append((route, other, "check"))

    def _plan_write(
        self, route: _Route, node_calls: list[ShardCall], owners: list[tuple[_Route, int, str]]
    ) -> None:
        shard = route.call.node
        targets = self.usable(shard)
        if not targets:
            route.outcome, route.done = self.shard_down(shard), True
            return
        call = dataclasses.replace(route.call, stream=False)
        for node in targets:
            node_calls.append(dataclasses.replace(call, node=node))
            owners.append((route, node, "data"))

    def _settle(
        self, routes: list[_Route], owners: list[tuple[_Route, int, str]], outcomes: list[Any]
    ) -> None:
        answers: dict[int, list[tuple[int, str, Any]]] = {}
        for (route, node, what), outcome in zip(owners, outcomes, strict=True):
            if isinstance(outcome, BaseException) and self.broken(node):
                self.mark_down(node)
                outcome = _LOST
            answers.setdefault(id(route), []).append((node, what, outcome))
        for route in routes:
            got = answers.get(id(route))
            if got is None:
                continue
            if route.read:
                self._settle_read(route, got)
            else:
                self._settle_write(route, got)

    def _settle_read(self, route: _Route, got: list[tuple[int, str, Any]]) -> None:
        data = [(n, o) for n, w, o in got if w == "data"]
        (node, outcome) = data[0]
        position = self.layout.position(node)
        for _other, what, answer in got:
            if (
                what == "check"
                and isinstance(answer, ShardResult)
                and any(row[0] == position for row in answer.rows)
            ):
                self.mark_stale(node)
        if outcome is _LOST or node in self.stale:
            if outcome is not _LOST:
                _release(outcome)
            return  # tried again on another replica in the next round
        route.outcome, route.done = outcome, True

    def _settle_write(self, route: _Route, got: list[tuple[int, str, Any]]) -> None:
        shard = route.call.node
        alive = [(n, o) for n, _, o in got if o is not _LOST]
        route.done = True
        if not alive:
            route.outcome = self.shard_down(shard, ": every replica failed during the statement")
            return
        if route.call.alone and any(isinstance(o, BaseException) for _, o in alive):
            # A catalog bootstrap (CREATE ... IF NOT EXISTS, outside any transaction) that met
            # a concurrent one: the same on every replica; its error is the statement's.
            route.outcome = next(o for _, o in alive if isinstance(o, BaseException))
            return
        applied = [(n, o) for n, o in alive if not isinstance(o, OperationalError)]
        lost_lock = [o for _, o in alive if isinstance(o, LockError)]
        if applied and lost_lock and not self.autocommit:
            # Inside a transaction a lost lock (wait-die, a deadlock, a timeout) ends the whole
            # transaction: the door rolls it back on every replica, the applied one too.
            route.outcome = lost_lock[0]
            return
        if applied and len(applied) < len(alive):
            # A replica failed where another applied the write (a lock or a write conflict,
            # say, while it is being copied): it is behind, and skipped like a down one.
            for n, o in alive:
                if isinstance(o, OperationalError):
                    self.mark_stale(n)
            alive = applied
        route.written = [n for n, _ in alive]
        signatures = [repr(_signature(o)) for _, o in alive]
        if len(set(signatures)) == 1:
            route.outcome = alive[0][1]
            return
        # The replicas disagree: the first one's answer stands; the others are behind it.
        keep = alive[0][0]
        others = [n for (n, _), sig in zip(alive, signatures, strict=True) if sig != signatures[0]]
        for n in others:
            self.mark_stale(n)
        route.written = [n for n in route.written if n not in others]
        detail = "; ".join(f"{self.layout.nodes[n]}: {_describe(o)}" for n, o in alive)
        route.outcome = InternalError(
            f"the replicas of {self.layout.describe(shard)} answered the same statement"
            f" differently ({detail}); {', '.join(self.layout.nodes[n] for n in others)}"
            f" is marked stale and will be copied from {self.layout.nodes[keep]}",
            statement=route.call.sql,
        )

    def _mark_skipped(self, routes: list[_Route]) -> NodeCalls:
        """After writes that skipped replicas: a stale mark for each skipped one on every
        replica written, in the same transaction (autocommit: before the statement returns)."""
        marks: dict[int, set[int]] = {}  # written node -> positions skipped
        for route in routes:
            if route.read or not route.written:
                continue
            shard = route.call.node
            skipped = {
                self.layout.position(n)
                for n in self.layout.of_shard(shard)
                if n not in route.written
            }
            for n in route.written:
                marks.setdefault(n, set()).update(skipped)
        calls = [
            ShardCall(n, MARK_INSERT, [position, uuid.uuid4().hex])
            for n, positions in sorted(marks.items())
            for position in sorted(positions)
        ]
        if not calls:
            return None
        outcomes = yield calls
        for _ in range(MARK_TRIES - 1):  # a write conflict on the marks table: try again
            again = [
                i
                for i, (c, o) in enumerate(zip(calls, outcomes, strict=True))
                if isinstance(o, OperationalError) and not self.broken(c.node)
            ]
            if not again:
                break
            retried = yield [
                dataclasses.replace(calls[i], params=[calls[i].params[0], uuid.uuid4().hex])
                for i in again
            ]
            for i, outcome in zip(again, retried, strict=True):
                outcomes[i] = outcome
        failed_shards = set()
        for call, outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                # A written replica that cannot take the mark cannot be trusted to have the
                # write either: it is taken out, and the shard fails if none is left.
                if self.broken(call.node):
                    self.mark_down(call.node)
                else:
                    self.mark_stale(call.node)
                failed_shards.add(self.layout.shard_of(call.node))
        for shard in failed_shards:
            if not self.usable(shard):
                raise self.shard_down(shard, ": no replica could record the write")
        return None


def after_end(
    replicas: Replicas, op: str, nodes: Sequence[int], results: Sequence[Any]
) -> tuple[list[ShardCall], BaseException | None]:
    """A commit or rollback ran on ``nodes`` (the dirty ones): which replicas are now down or
    behind, the stale marks to record (autocommitted) on the replicas that committed, and the
    error to raise, if any (a shard none of whose replicas committed; a rollback's failure)."""
    layout = replicas.layout
    replicas.end_transaction()
    by_shard: dict[int, list[tuple[int, Any]]] = {}
    for n, result in zip(nodes, results, strict=True):
        by_shard.setdefault(layout.shard_of(n), []).append((n, result))
    marks: list[ShardCall] = []
    error: BaseException | None = None
    for _shard, answers in sorted(by_shard.items()):
        failed = [(n, r) for n, r in answers if isinstance(r, BaseException)]
        good = [n for n, r in answers if not isinstance(r, BaseException)]
        for n, _ in failed:
            if replicas.broken(n):
                replicas.mark_down(n)
        if op != "commit":
            lasting = [r for n, r in failed if not replicas.broken(n)]
            error = error or (lasting[0] if lasting else None)
            continue
        if failed and not good:
            error = error or failed[0][1]
            continue
        for n, _ in failed:  # committed elsewhere: this one is behind
            replicas.mark_stale(n)
            for g in good:
                marks.append(
                    ShardCall(g, MARK_INSERT, [layout.position(n), uuid.uuid4().hex], alone=True)
                )
    return marks, error


class _Lost:
    def __repr__(self) -> str:
        return "<lost>"


_LOST: Any = _Lost()


def _describe(outcome: Any) -> str:
    if isinstance(outcome, BaseException):
        return f"{type(outcome).__name__}: {outcome}"
    return f"rowcount {getattr(outcome, 'rowcount', '?')}"


# --- joining: which replicas are behind, and the catch-up copy ---------------------------------


def join(replicas: Replicas, nodes: Iterable[int], initial: bool = False) -> NodeCalls:
    """Decide whether each of ``nodes`` (connected, not yet serving) is caught up, and copy a
    healthy partner onto it if it is not. Nodes that cannot be checked or copied stay out
    (down or stale). A returning node is judged against a live partner only: with none to
    ask, it stays out (at the ``initial`` connect there is nothing better to go on: a node
    alone in its shard is trusted; see docs/architecture.md, "Replicas").
    Runs on idle connections only (no transaction of the user open)."""
    layout = replicas.layout
    wanted = set(nodes)
    shards = sorted({layout.shard_of(n) for n in wanted})
    members = [
        n
        for s in shards
        for n in layout.of_shard(s)
        if (n in wanted or n not in replicas.down) and not replicas.broken(n)
    ]
    wanted |= {n for n in members if n in replicas.stale}
    probe = replicas.engine if replicas.engine in HAS_MARKS else "sqlite"
    outcomes = yield [ShardCall(n, HAS_MARKS[probe], alone=True) for n in members]
    has_marks: dict[int, bool] = {}
    for n, outcome in zip(members, outcomes, strict=True):
        if isinstance(outcome, ShardResult):
            has_marks[n] = bool(next(iter(outcome.rows))[0])
        else:
            replicas.mark_down(n)
    with_table = [n for n in has_marks if has_marks[n]]
    outcomes = yield [ShardCall(n, MARKS_SELECT, alone=True) for n in with_table]
    marked: dict[int, set[int]] = {}  # node -> positions marked stale on it
    for n, outcome in zip(with_table, outcomes, strict=True):
        if isinstance(outcome, ShardResult):
            marked[n] = {row[0] for row in outcome.rows}
        else:
            replicas.mark_down(n)
            has_marks.pop(n, None)
    for shard in shards:
        live = [n for n in layout.of_shard(shard) if n in has_marks]
        if live and not any(has_marks[n] for n in live):
            if len(live) < layout.replicas:
                for n in live:  # a fresh database and an unreachable partner: no way to tell
                    replicas.mark_stale(n)
                continue
            pending = list(live)  # a new shard: every replica gets the (empty) marks table
            for _ in range(MARK_TRIES):  # a concurrent creation (DuckDB: a write conflict)
                outcomes = yield [ShardCall(n, MARKS_DDL, alone=True) for n in pending]
                for n, outcome in zip(list(pending), outcomes, strict=True):
                    if not isinstance(outcome, BaseException):
                        replicas.fresh(n)
                        pending.remove(n)
                if not pending:
                    break
            for n in pending:
                replicas.mark_stale(n)
            continue
        behind = set()
        for n in live:
            position = layout.position(n)
            if not has_marks[n] or any(position in marked.get(o, ()) for o in live if o != n):
                behind.add(n)
        judged = initial or len(live) > 1
        for n in live:
            if n not in behind and (judged or n not in wanted):
                replicas.fresh(n)
            elif n not in behind:
                replicas.mark_stale(n)  # no partner to ask: judged when one is back
        for n in sorted(behind):
            replicas.mark_stale(n)
            sources = [o for o in live if o not in behind and o not in replicas.stale]
            sources.sort(key=lambda o: layout.position(n) not in marked.get(o, ()))
            if not sources:
                continue
            done = yield from catch_up(replicas, sources[0], n)
            if done:
                replicas.fresh(n)
            else:
                replicas.retry_failed(n)


def catch_up(replicas: Replicas, source: int, target: int) -> Generator[list[ShardCall], Any, bool]:
    """Copy every table of ``source`` onto ``target`` (same shard): one transaction on each;
    the source's also deletes the marks naming ``target`` that it has seen, so that a write
    the copy missed (committed after its snapshot) leaves its own mark and the target stays
    behind. True when the copy committed on both sides."""
    engine = replicas.engine
    position = replicas.layout.position(target)
    begin = "BEGIN IMMEDIATE" if engine == "sqlite" else "BEGIN TRANSACTION"

    def one(node: int, sql: str, params: Any = None, many: bool = False) -> ShardCall:
        return ShardCall(node, sql, params, many=many, alone=True)

    def ok(outcomes: list[Any]) -> list[ShardResult]:
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes

    opened: list[int] = []
    try:
        # The source first, then the target, each alone: two clients copying the same replica
        # queue on the source's lock instead of each holding one side (SQLite would deadlock
        # them, and every writer of the shard with them, for the busy timeout).
        ok((yield [one(source, begin)]))
        opened = [source]
        ok((yield [one(target, begin)]))
        opened = [source, target]
        (deleted,) = ok(
            (yield [one(source, f"DELETE FROM {MARKS_TABLE} WHERE replica = ?", [position])])
        )
        objects = ok((yield [one(source, _OBJECTS[engine]), one(target, _OBJECTS[engine])]))
        if deleted.rowcount == 0 and any(n == MARKS_TABLE for _, n, _ in objects[1].rows):
            # No mark left and not a fresh database: another client has just copied it.
            yield [one(n, "ROLLBACK") for n in opened]
            return True
        have = [(str(k), str(n)) for k, n, _ in objects[1].rows]
        wanted = [(str(k), str(n), str(s)) for k, n, s in objects[0].rows]
        if engine == "duckdb":
            (count,) = ok((yield [one(source, "SELECT count(*) FROM duckdb_sequences()")]))
            if next(iter(count.rows))[0]:
                raise NotSupportedError(
                    "a replica cannot be caught up: the database has sequences, which the copy"
                    " does not carry"
                )
        drops = [
            one(target, f"DROP {kind.upper()} IF EXISTS {_quote(name)}")
            for kind, name in sorted(have, key=lambda o: o[0] != "view")
            if kind in ("view", "table")
        ]
        if drops:
            ok((yield drops))
        tables = [(n, s) for k, n, s in wanted if k == "table"]
        for _name, ddl in tables:
            ok((yield [one(target, ddl)]))
        for name, _ddl in tables:
            (result,) = ok((yield [one(source, f"SELECT * FROM {_quote(name)}")]))
            rows = [list(r) for r in result.rows]
            if not rows or result.columns is None:
                continue
            marks = ", ".join("?" * len(result.columns))
            insert = f"INSERT INTO {_quote(name)} VALUES ({marks})"
            for start in range(0, len(rows), COPY_BATCH):
                ok((yield [one(target, insert, rows[start : start + COPY_BATCH], many=True)]))
        for kind, _name, ddl in wanted:
            if kind in ("index", "view") and ddl and ddl != "None":
                ok((yield [one(target, ddl)]))
        ok((yield [one(target, "COMMIT")]))
        opened = [source]
        ok((yield [one(source, "COMMIT")]))
        return True
    except Error:
        if opened:
            yield [one(n, "ROLLBACK") for n in opened]
        for n in (source, target):
            if replicas.broken(n):
                replicas.mark_down(n)
        return False


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


#: (kind, name, sql) of every user object of a node's database, tables first.
_OBJECTS = {
    "sqlite": (
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        " AND type IN ('table', 'index', 'view') AND sql IS NOT NULL"
        " ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 ELSE 2 END, rowid"
    ),
    "duckdb": (
        "SELECT 'table', table_name, sql FROM duckdb_tables() WHERE NOT internal"
        " AND schema_name = 'main' AND NOT temporary"
        " UNION ALL SELECT 'index', index_name, sql FROM duckdb_indexes()"
        " WHERE schema_name = 'main' AND sql IS NOT NULL"
        " UNION ALL SELECT 'view', view_name, sql FROM duckdb_views() WHERE NOT internal"
        " AND schema_name = 'main' AND NOT temporary"
    ),
}
