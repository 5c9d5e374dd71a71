"""How a distributed transaction ends, and how in-doubt ones are recovered: written once, as
generators that yield batches of :class:`NodeRequest` (run concurrently, one per node) and
receive each one's outcome (its rows, None, or the exception), as the engine's plans do. Every
door (sync, asyncio, the workers through the asyncio door) only drives them.

Commit:

* one node touched: COMMIT there (one phase, as before: no extra round trip);
* several: two-phase commit. The first participant (the lowest node index) is the
  coordinator; it never prepares. ``PREPARE TRANSACTION 'gid'`` on every other participant;
  then, in the coordinator's own transaction, ``INSERT INTO exdb_decisions`` a 'commit' row and
  COMMIT: that one local commit is the decision. Then ``COMMIT PREPARED 'gid'`` on the others.
  The gid names the coordinator (``exdb:<hex>@host:port``), so that any client finds the
  decision. If a PREPARE fails, the coordinator rolls back (no decision) and the prepared ones
  are rolled back.

Recovery (:func:`recover`): every node lists its in-doubt transactions; for one whose
preparing session is gone, the decision is looked up on the coordinator named by its gid, after
an ``INSERT OR IGNORE`` of an 'abort' row: the gid is the decisions' primary key, so whichever
of the coordinator's commit and this abort comes first wins, and the other cannot happen. The
participants are then committed or rolled back accordingly.

Test hook: with ``EXDB_2PC_PAUSE_AT=<step>`` in its environment, a client stops itself
(SIGSTOP) at that step of a two-phase commit, for a fault test to kill a node or the client
there, or to let it go on (SIGCONT). Steps: ``before_prepare``, ``between_prepares`` (after the
first participant's PREPARE; the others then prepare one batch later), ``after_prepares``,
``after_decision``, ``between_commits`` (after the first COMMIT PREPARED).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import uuid
from collections.abc import Generator, Sequence
from typing import Any

from exdb.client.base import BaseConnection
from exdb.client.core import Op, ResultStream
from exdb.distributed.plan import ShardCall
from exdb.errors import Error, OperationalError
from exdb.sqltext import first_keyword
from exdb.wire.messages import Msg

__all__ = [
    "PAUSE_STEPS",
    "Finish",
    "NodeRequest",
    "Recovery",
    "Step",
    "TwoPhaseState",
    "end_transaction",
    "node_op",
    "recover",
    "spans_writes",
]

DECISIONS = "exdb_decisions"
LIST_IN_DOUBT = "SELECT * FROM exdb_prepared_xacts"
PAUSE_STEPS = (
    "before_prepare",
    "between_prepares",
    "after_prepares",
    "after_decision",
    "between_commits",
)


_WRITES = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "UPSERT"})
_WRITE_WORD = re.compile(r"\b(?:INSERT|UPDATE|DELETE|REPLACE|MERGE)\b", re.IGNORECASE)


def spans_writes(calls: Sequence[ShardCall]) -> bool:
    """Whether a batch of an autocommit statement writes on more than one node: the doors then
    run the rest of the statement in a transaction, ended by :func:`end_transaction` (so that
    an autocommit statement is all or nothing across the nodes, as on one database). ``each``
    calls are independent statements (one BATCH), each on one node: never."""
    nodes = set()
    for call in calls:
        if call.alone or call.each or call.stream:
            continue
        keyword = first_keyword(call.sql)
        if keyword in _WRITES or (keyword == "WITH" and _WRITE_WORD.search(call.sql)):
            nodes.add(call.node)
    return len(nodes) > 1


@dataclasses.dataclass(frozen=True)
class Step:
    """One request: a statement (autocommit, or inside the node's open transaction when
    ``in_txn``), or ``txn``: "commit" / "rollback" of the node's transaction."""

    sql: str | None = None
    params: Sequence[Any] | None = None
    in_txn: bool = False
    txn: str | None = None


@dataclasses.dataclass(frozen=True)
class NodeRequest:
    """Steps for one node, run in order; the outcome is the last statement's rows (its
    rowcount if it has no result set)."""

    node: int
    steps: tuple[Step, ...]


Finish = Generator[list[NodeRequest], list[Any], Any]


class NodeLost(OperationalError):
    """A request's connection was lost before its answer came: whether the node did it is
    unknown."""


def node_op(conn: BaseConnection, request: NodeRequest) -> Op:
    """Operation: run a request's steps on one node connection."""
    try:
        return (yield from _steps(conn, request))
    except OperationalError as exc:
        if conn.core.broken is not None or conn.closed:
            raise NodeLost(exc.message, node=exc.node, statement=exc.statement) from exc
        raise


def _steps(conn: BaseConnection, request: NodeRequest) -> Op:
    conn._check_open()
    rows: Any = None
    for step in request.steps:
        if step.txn is not None:
            try:
                yield from conn.core.simple(Msg.TXN, step.txn)
            finally:
                conn._dirty = False
            continue
        assert step.sql is not None
        stream = ResultStream(conn.core, step.sql)
        yield from stream.execute(step.sql, step.params, not step.in_txn)
        rows = stream.rowcount if stream.columns is None else (yield from stream.fetch(None))
    return rows


class TwoPhaseState:
    """What a connection keeps between two-phase commits: decisions to delete from each
    coordinator (their participants all committed), in that coordinator's next decision."""

    def __init__(self) -> None:
        self.finished: dict[int, list[str]] = {}


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _pause(step: str) -> None:
    """The fault tests' hook (see the module's docstring)."""
    if os.environ.get("EXDB_2PC_PAUSE_AT") == step:
        os.kill(os.getpid(), signal.SIGSTOP)


def _names(names: Sequence[str], nodes: Sequence[int]) -> str:
    return ", ".join(names[n] for n in nodes) or "none"


def _failed(outcome: Any) -> bool:
    return isinstance(outcome, BaseException)


def _why(outcomes: dict[int, Any], names: Sequence[str]) -> str:
    return "; ".join(
        f"{names[n]}: {getattr(e, 'message', None) or e}" for n, e in outcomes.items() if _failed(e)
    )


def end_transaction(
    op: str,
    dirty: Sequence[int],
    names: Sequence[str],
    state: TwoPhaseState,
    broken: Sequence[bool] = (),
) -> Finish:
    """Commit (``op`` "commit") or roll back the transaction on the nodes ``dirty`` (indexes
    into ``names``, the node addresses); raises the Error that says what happened where.
    ``broken``: per node, whether its connection is lost (its transaction is gone)."""
    if not dirty:
        return None
    if op == "rollback" or len(dirty) == 1:
        outcomes = yield [NodeRequest(n, (Step(txn=op),)) for n in dirty]
        errors = [o for o in outcomes if _failed(o)]
        if errors:
            raise errors[0]
        return None
    lost = [n for n in dirty if n < len(broken) and broken[n]]
    if lost:
        yield [NodeRequest(n, (Step(txn="rollback"),)) for n in dirty if n not in lost]
        raise OperationalError(
            f"commit failed: the connection to {_names(names, lost)} was lost during the"
            " transaction, which was rolled back on every node; nothing was committed",
            node=_names(names, lost),
        )
    return (yield from _two_phase(dirty, names, state))


def _two_phase(dirty: Sequence[int], names: Sequence[str], state: TwoPhaseState) -> Finish:
    coordinator, others = dirty[0], list(dirty[1:])
    gid = f"exdb:{uuid.uuid4().hex}@{names[coordinator]}"
    quoted = _sql_string(gid)
    _pause("before_prepare")
    prepare = (Step(f"PREPARE TRANSACTION {quoted}"),)
    waves = [others[:1], others[1:]] if os.environ.get("EXDB_2PC_PAUSE_AT") else [others]
    prepared: dict[int, Any] = {}
    for i, wave in enumerate(waves):
        if not wave:
            continue
        outcomes = yield [NodeRequest(n, prepare) for n in wave]
        prepared.update(zip(wave, outcomes, strict=True))
        if any(_failed(o) for o in outcomes):
            break
        if i == 0:
            _pause("between_prepares")
    if any(_failed(o) for o in prepared.values()) or len(prepared) < len(others):
        yield from _abort(coordinator, [n for n, o in prepared.items() if o == 1], quoted)
        first = next(o for o in prepared.values() if _failed(o))
        failed = [n for n, o in prepared.items() if _failed(o)]
        raise _again(
            first,
            f"commit failed: PREPARE TRANSACTION failed on {_names(names, failed)}"
            f" ({_why(prepared, names)}); the transaction was rolled back on every node that"
            " answered, and nothing was committed. A node that prepared it and did not answer"
            " keeps it in doubt until recovery (the next connect, or `exdb recover`) rolls it"
            " back.",
            _names(names, failed),
            prepare[0].sql,
        )
    if all(o == 0 for o in prepared.values()):  # the others only read: committed already
        (last,) = yield [NodeRequest(coordinator, (Step(txn="commit"),))]
        if _failed(last):
            raise last
        return None
    _pause("after_prepares")
    others = [n for n, o in prepared.items() if o != 0]  # read-only ones committed at PREPARE
    participants = ",".join(names[n] for n in dirty)
    old = state.finished.pop(coordinator, [])
    steps = [Step(f"DELETE FROM {DECISIONS} WHERE gid = ?", [g], True) for g in old]
    steps.append(
        Step(
            f"INSERT INTO {DECISIONS} (gid, outcome, participants) VALUES (?, 'commit', ?)",
            [gid, participants],
            True,
        )
    )
    steps.append(Step(txn="commit"))
    (decided,) = yield [NodeRequest(coordinator, tuple(steps))]
    if _failed(decided):
        coordinator_name = names[coordinator]
        why = getattr(decided, "message", decided)
        if isinstance(decided, NodeLost):
            raise OperationalError(
                f"commit outcome unknown: the coordinator {coordinator_name} did not confirm the"
                f" commit ({why}); {_names(names, others)} are prepared as {gid}. Recovery (the"
                f" next connect, or `exdb recover`) commits them if {coordinator_name} recorded"
                " the decision, else rolls them back.",
                node=coordinator_name,
            )
        yield from _abort(coordinator, others, quoted)
        raise _again(
            decided,
            f"commit failed on the coordinator {coordinator_name}: {why}; the transaction was"
            " rolled back on every node; nothing was committed",
            coordinator_name,
            None,
        )
    _pause("after_decision")
    commit = (Step(f"COMMIT PREPARED {quoted}"),)
    waves = [others[:1], others[1:]] if os.environ.get("EXDB_2PC_PAUSE_AT") else [others]
    done: dict[int, Any] = {}
    for i, wave in enumerate(waves):
        if not wave:
            continue
        outcomes = yield [NodeRequest(n, commit) for n in wave]
        done.update(zip(wave, outcomes, strict=True))
        if i == 0:
            _pause("between_commits")
    failed = [n for n, o in done.items() if _failed(o)]
    if failed:
        ok = [coordinator, *(n for n in others if n not in failed)]
        raise OperationalError(
            f"the transaction is committed (decision {gid} recorded on {names[coordinator]}),"
            f" and committed on {_names(names, ok)}, but {_names(names, failed)} did not"
            f" confirm its part ({_why(done, names)}): that part stays prepared, its locks held,"
            " until recovery (the next connect, or `exdb recover`) commits it. Do not run the"
            " transaction again.",
            node=_names(names, failed),
        )
    state.finished.setdefault(coordinator, []).append(gid)
    return None


def _again(error: BaseException, message: str, node: str, statement: str | None) -> Exception:
    """The error to raise: of ``error``'s class (NotSupportedError stays one), with the
    whole story as its message."""
    if isinstance(error, NodeLost):
        return OperationalError(message, node=node, statement=statement)
    if isinstance(error, Error):
        return type(error)(message, node=node, statement=statement)
    return OperationalError(message, node=node, statement=statement)


def _abort(coordinator: int, prepared: Sequence[int], quoted: str) -> Finish:
    """Roll back: the coordinator's open transaction and the prepared parts."""
    requests = [NodeRequest(coordinator, (Step(txn="rollback"),))]
    requests += [NodeRequest(n, (Step(f"ROLLBACK PREPARED {quoted}"),)) for n in prepared]
    yield requests


@dataclasses.dataclass
class Recovery:
    """What :func:`recover` did, gid by gid."""

    committed: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    rolled_back: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    unresolved: dict[str, str] = dataclasses.field(default_factory=dict)
    unreachable: dict[str, str] = dataclasses.field(default_factory=dict)

    def lines(self) -> list[str]:
        """A line per gid."""
        out = [f"committed {g} on {', '.join(n)}" for g, n in sorted(self.committed.items())]
        out += [f"rolled back {g} on {', '.join(n)}" for g, n in sorted(self.rolled_back.items())]
        out += [f"left in doubt {g}: {why}" for g, why in sorted(self.unresolved.items())]
        out += [f"could not ask {n}: {why}" for n, why in sorted(self.unreachable.items())]
        return out


def recover(names: Sequence[str], *, all_in_doubt: bool = False) -> Finish:
    """Resolve the nodes' in-doubt transactions (those whose preparing session is gone, or all
    with ``all_in_doubt``); returns a :class:`Recovery`. Costs one round trip when there is
    none."""
    report = Recovery()
    listed = yield [NodeRequest(n, (Step(LIST_IN_DOUBT),)) for n in range(len(names))]
    in_doubt: dict[str, list[int]] = {}
    for node, rows in enumerate(listed):
        if _failed(rows):
            report.unreachable[names[node]] = str(getattr(rows, "message", rows))
            continue
        for gid, _, owner_connected in rows or ():
            if owner_connected and not all_in_doubt:
                continue
            in_doubt.setdefault(gid, []).append(node)
    if not in_doubt:
        return report
    index = {name: i for i, name in enumerate(names)}
    decide: dict[str, int] = {}
    for gid in in_doubt:
        coordinator = gid.rpartition("@")[2] if gid.startswith("exdb:") else ""
        if coordinator not in index:
            report.unresolved[gid] = f"its coordinator {coordinator or '?'} is not among the nodes"
        else:
            decide[gid] = index[coordinator]
    requests = [
        NodeRequest(
            node,
            (
                Step(
                    f"INSERT OR IGNORE INTO {DECISIONS} (gid, outcome, participants)"
                    " VALUES (?, 'abort', '')",
                    [gid],
                ),
                Step(f"SELECT outcome, participants FROM {DECISIONS} WHERE gid = ?", [gid]),
            ),
        )
        for gid, node in decide.items()
    ]
    decisions = yield requests
    finishing: list[tuple[str, str, int, str]] = []
    for (gid, node), rows in zip(decide.items(), decisions, strict=True):
        if _failed(rows) or not rows:
            why = getattr(rows, "message", rows)
            report.unresolved[gid] = f"its decision on {names[node]} could not be read: {why}"
            continue
        outcome, participants = rows[0]
        for participant in in_doubt[gid]:
            finishing.append((gid, outcome, participant, participants))
    results = yield [
        NodeRequest(
            participant,
            (
                Step(
                    ("COMMIT" if outcome == "commit" else "ROLLBACK")
                    + f" PREPARED {_sql_string(gid)}"
                ),
            ),
        )
        for gid, outcome, participant, _ in finishing
    ]
    for (gid, outcome, participant, _), result in zip(finishing, results, strict=True):
        if _failed(result):
            why = getattr(result, "message", result)
            report.unresolved[gid] = f"{outcome} on {names[participant]} failed: {why}"
            continue
        done = report.committed if outcome == "commit" else report.rolled_back
        done.setdefault(gid, []).append(names[participant])
    # A commit decision may go once no participant it names is in doubt any more.
    drop = []
    for gid, _, _, participants in {f[0]: f for f in finishing}.values():
        others = [p for p in participants.split(",") if p and p != names[decide[gid]]]
        if (
            gid in report.committed
            and gid not in report.unresolved
            and all(
                p in index
                and not _failed(listed[index[p]])
                and (
                    p in report.committed[gid] or gid not in {r[0] for r in listed[index[p]] or ()}
                )
                for p in others
            )
        ):
            drop.append(
                NodeRequest(decide[gid], (Step(f"DELETE FROM {DECISIONS} WHERE gid = ?", [gid]),))
            )
    if drop:
        yield drop
    return report
