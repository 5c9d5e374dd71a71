"""What a node knows of its locks: who waits, who holds, and which distributed transaction
each session works for; the time a session may sit idle inside a transaction.

Each engine session carries a :class:`LockState`. The engine stamps it (a SQLite session waits
for the database's write lock in its busy handler, and holds that lock once it has written);
other threads only read it. A client's deadlock detector (exdb.distributed.deadlock) asks the
node for its waits with a LOCKS message on a second connection, as an out-of-band CANCEL does
(docs/protocol.md §12.2), and may ask it to end its own session's wait as a deadlock's victim.

The global transaction id (``gid``) is the client's: a distributed connection sends it in a
TXNID message before the first statement of each transaction on each node. A session that never
sent one (a plain single-node connection) shows as ``None``: it cannot be on a cycle across
nodes, since one node has one write lock and a plain session waits on no other node.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exdb.server.app import ShardServer
    from exdb.server.session import Session

__all__ = [
    "LockNotGranted",
    "LockState",
    "WriteLock",
    "abort_wait",
    "idle_transactions",
    "lock_waits",
]

_wait_ids = itertools.count(1)

#: How a wait ended, when it did not get its lock.
TIMED_OUT = "timeout"
ABORTED = "deadlock"


class LockState:
    """One engine session's locks: its transaction's gid, the wait it is in (if any), and
    whether it holds the node's write lock (SQLite)."""

    __slots__ = (
        "_wake",
        "aborted",
        "elsewhere",
        "ended",
        "gid",
        "holds",
        "timeout",
        "wait_id",
        "wait_since",
        "waited",
    )

    def __init__(self, timeout: float) -> None:
        #: Seconds a statement may wait for a lock (``lock_timeout``).
        self.timeout = timeout
        self.gid: str | None = None
        #: The client said (TXNID) that this transaction may hold locks on another node: a
        #: wait of it here could close a cycle across nodes, so it waits only for younger
        #: transactions (wait-die, :meth:`WriteLock.acquire`). Cleared when the transaction ends.
        self.elsewhere = False
        #: The wait now in progress (0: none); a new id each wait, never reused.
        self.wait_id = 0
        self.wait_since = 0.0
        #: Whether the session holds the node's write lock (set only while that is true).
        self.holds = False
        #: How the last wait ended without its lock (TIMED_OUT, ABORTED) or None.
        self.ended: str | None = None
        #: The seconds the last wait lasted, and the message of an abort.
        self.waited = 0.0
        self.aborted = ""
        self._wake = threading.Event()

    def begin_wait(self) -> None:
        """A statement starts to wait for a lock (from the session's thread)."""
        self.ended = None
        self.aborted = ""
        self._wake.clear()
        self.wait_since = time.monotonic()
        self.wait_id = next(_wait_ids)

    def pause(self, seconds: float) -> bool:
        """Sleep one step of the wait; False if the wait must end now (timed out or aborted),
        with ``ended`` saying why."""
        if self.aborted:
            self.ended = ABORTED
            return False
        left = self.timeout - (time.monotonic() - self.wait_since)
        if left <= 0:
            self.ended = TIMED_OUT
            self.waited = time.monotonic() - self.wait_since
            return False
        if self._wake.wait(min(seconds, left)) and self.aborted:
            self.ended = ABORTED
            return False
        return True

    def pause_locked(self, cond: threading.Condition, seconds: float) -> bool:
        """As :meth:`pause`, waiting on ``cond`` (held by the caller) instead of sleeping."""
        if self.aborted:
            self.ended = ABORTED
            return False
        left = self.timeout - (time.monotonic() - self.wait_since)
        if left <= 0:
            self.ended = TIMED_OUT
            self.waited = time.monotonic() - self.wait_since
            return False
        cond.wait(min(seconds, left))
        if self.aborted:
            self.ended = ABORTED
            return False
        return True

    def end_wait(self) -> None:
        """The statement that waited has finished, one way or another."""
        if self.wait_id:
            self.waited = time.monotonic() - self.wait_since
        self.wait_id = 0

    def abort(self, wait_id: int, message: str) -> bool:
        """End wait ``wait_id`` as a deadlock's victim, if it still goes on (any thread)."""
        if not wait_id or self.wait_id != wait_id:
            return False
        self.aborted = message
        self._wake.set()
        return True


class WriteLock:
    """A node's write lock (SQLite has one writer), granted in the order it was asked for.

    SQLite's own lock is not fair: a waiter polls, and a newcomer often takes the lock before
    one that has waited for seconds, so an old transaction can starve behind a stream of young
    ones (each chosen as a deadlock's victim in turn). A session takes this lock before a
    statement that writes, and keeps it until its transaction ends: SQLite's lock is then
    free when it asks, and the waits are known exactly (who holds, who is ahead).

    Deadlocks across nodes are prevented here when they can be (wait-die, by transaction age).
    A transaction inside a transaction that may hold locks on another node (``LockState.
    elsewhere``, the client's word) queues ahead of those that hold nothing (it holds a lock
    others wait for: the sooner it ends, the sooner both nodes move), behind the others like
    it; and it waits only if it is older than the holder and every one like it ahead of it;
    otherwise it stops at once as a deadlock's victim (DeadlockDetected), before it queues.
    A transaction that holds nothing elsewhere always waits, in arrival order: it holds no
    lock, and only such waiters queue behind it, so its wait is on no cycle. The waits of the
    others all go from an older transaction to a younger one, so no cycle can form
    (docs/architecture.md, "Locks, deadlocks and idle transactions")."""

    _STEP = 0.05  # seconds between looks at a waiter's timeout, abort and interrupt

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.holder: LockState | None = None
        self.queue: list[LockState] = []
        #: The waiters that may hold locks on other nodes: always the front of the queue.
        self._first: set[LockState] = set()

    def acquire(
        self, state: LockState, interrupted: Callable[[], bool], prevent: bool = False
    ) -> None:
        """Wait for the lock, in turn; ends the wait (``state.ended`` says why) and raises
        LockNotGranted on timeout, a deadlock's abort or an interrupt; with ``prevent`` (a
        statement inside a transaction), also at once when wait-die says it must not wait."""
        with self._cond:
            if self.holder is state:
                return
            if self.holder is None and not self.queue:
                self._grant(state)
                return
            first = prevent and state.elsewhere and state.gid is not None
            if first:
                self._wait_die(state)
            state.begin_wait()
            if first:  # ahead of those that hold nothing, behind those that may hold locks
                self.queue.insert(len(self._first), state)
                self._first.add(state)
            else:
                self.queue.append(state)
            try:
                while True:
                    if self.holder is None and self.queue[0] is state:
                        self.queue.pop(0)
                        self._first.discard(state)
                        self._grant(state)
                        return
                    if interrupted() or not state.pause_locked(self._cond, self._STEP):
                        raise LockNotGranted
            except BaseException:
                if state in self.queue:
                    self.queue.remove(state)
                self._first.discard(state)
                self._cond.notify_all()
                raise
            finally:
                state.end_wait()

    def _wait_die(self, state: LockState) -> None:
        """Raise LockNotGranted (a deadlock's victim, at once) if a distributed transaction
        older than ``state``'s holds the lock or would be ahead of it in line (called with the
        lock held)."""
        gid = state.gid
        assert gid is not None
        ahead = ([self.holder] if self.holder is not None else []) + self.queue[: len(self._first)]
        older = [s for s in ahead if s.gid is not None and s.gid < gid]
        if not older:
            return
        oldest = min(older, key=lambda s: s.gid or "")
        role = "holds" if oldest is self.holder else "is in line for"
        state.ended = ABORTED
        state.aborted = (
            f"deadlock prevented (wait-die): this transaction ({gid}) may hold locks on another"
            f" node, and an older transaction ({oldest.gid}) {role} this node's write lock;"
            " waiting could close a cycle across nodes, so it stopped at once instead. A retry"
            " on the same connection keeps its age, so it gets older and at last waits"
        )
        raise LockNotGranted

    def _grant(self, state: LockState) -> None:
        self.holder = state
        state.holds = True

    def release(self, state: LockState) -> None:
        """``state``'s transaction ended: the next in line gets the lock."""
        with self._cond:
            if self.holder is state:
                self.holder = None
                state.holds = False
                self._cond.notify_all()

    def waits_of(self, state: LockState) -> list[LockState]:
        """Whom ``state`` waits for: the holder, and those ahead of it in the queue."""
        with self._cond:
            ahead = self.queue[: self.queue.index(state)] if state in self.queue else []
            holder = self.holder
        return ([holder] if holder is not None and holder is not state else []) + ahead


class LockNotGranted(Exception):
    """A wait for the write lock ended without it (``LockState.ended`` says why)."""


def lock_waits(server: ShardServer) -> list[list[Any]]:
    """The node's lock waits now: ``[waiter_gid, wait_id, holder_gid, waited_s]`` for each
    session that waits for a lock, once per transaction it waits for (the holder, and with a
    write lock those ahead of it in line)."""
    states = []
    for session in server.sessions():
        state = getattr(session._engine, "locks", None)
        if isinstance(state, LockState):
            states.append((session, state))
    write_lock = getattr(server.engine, "write_lock", None)
    holders = [st for _, st in states if st.holds]
    now = time.monotonic()
    waits: list[list[Any]] = []
    for _, state in states:
        wait_id = state.wait_id
        if not wait_id:
            continue
        if isinstance(write_lock, WriteLock):
            targets = write_lock.waits_of(state)
        else:
            targets = [h for h in holders if h is not state]
        for target in targets:
            waits.append([state.gid, wait_id, target.gid, round(now - state.wait_since, 3)])
    return waits


def abort_wait(session: Session, wait_id: Any, message: Any) -> bool:
    """End ``session``'s wait ``wait_id`` as a deadlock's victim (its own client asked)."""
    state = getattr(session._engine, "locks", None)
    if not isinstance(state, LockState) or not isinstance(wait_id, int):
        return False
    text = message if isinstance(message, str) and message else "deadlock detected"
    return state.abort(wait_id, text[:2000])


def idle_transactions(server: ShardServer, now: float) -> float | None:
    """The watchdog's look at sessions idle inside a transaction: end those past their
    ``idle_in_transaction_timeout``; the seconds until the next one is due (None: none)."""
    due: float | None = None
    for session in server.sessions():
        limit = session.idle_in_transaction_timeout
        if not limit or session.busy or not session.txn_open:
            continue
        left = session.request_ended + limit - now
        if left <= 0:
            session.end_idle_transaction(limit)
            continue
        due = left if due is None else min(due, left)
    return due
