"""Deadlocks across nodes, and what a lost lock does to a distributed transaction.

One node sees only its own lock waits: a cycle that runs through two nodes (client A holds the
write lock of node 1 and waits on node 2, where B holds it, and B waits on node 1) is invisible
to both, and without a detector both clients would wait until their ``lock_timeout``. So the
clients find it, as PostgreSQL's backends do for their own locks:

- every distributed transaction has a global id (``gid``): the start time in nanoseconds (hex,
  fixed width, so that ids sort by age) and a random part. The connection sends it to a node
  (a TXNID message, pipelined before the transaction's first statement there: no round trip);
- a statement of a transaction that has waited ``deadlock_timeout`` (1 s by default) makes the
  process's watcher thread ask every node for its lock waits (a LOCKS message on a second
  connection, like an out-of-band cancel): each wait is ``waiter gid -> holder gid``, with the
  id of the wait;
- the watcher builds the wait-for graph across the nodes; if this transaction is on a cycle it
  asks again, and the cycle counts only if every wait on it is still the same wait with the
  same holder (a wait that ended and one that began between two looks can fake a cycle; waits
  seen twice were all in progress at one instant between the two looks, and waits in a cycle
  never end by themselves);
- the victim is the youngest transaction on the cycle (the largest gid): every client computes
  the same one, and the oldest transaction always goes on. A connection's transaction after
  one that lost a lock (its retry, usually) keeps the lost one's age, so it grows older with
  each retry and at last wins, instead of being the youngest, and the victim, every time. Only
  the victim's own client acts: it asks the node to end its wait (LOCKS with "abort", checked
  against the wait's id so a wait that has just got its lock is not touched). The statement
  fails with DeadlockDetected and the door rolls the transaction back on every node.

Every door drives this the same way: :func:`watched` wraps each shard call of a transaction
(exdb.distributed.connection.shard_op), and :func:`lock_lost` is what each door raises after it
rolled back (exdb.distributed.connection and exdb.distributed.aio).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from exdb.client.base import BaseConnection
from exdb.client.core import Op
from exdb.client.options import ConnectOptions, parse_node
from exdb.errors import Error, LockError, OperationalError
from exdb.wire.codec import FrameDecoder, ProtocolError, encode_frame
from exdb.wire.messages import MAGIC, Msg

__all__ = ["Transactions", "batch", "find_cycle", "lock_lost", "new_gid", "watched"]

#: A wait seen on a node: (waiter gid, holder gid, node name, wait id).
Edge = tuple[str, str, str, int]


def new_gid(age: str | None = None) -> str:
    """A global transaction id: start time (ns, 16 hex digits, so ids sort by age; ``age``:
    the start of an earlier transaction to keep) and 8 random hex digits."""
    return f"{age or format(time.time_ns(), '016x')}-{secrets.token_hex(4)}"


class Transactions:
    """The transactions of one distributed connection: the gid of the open one, and whether
    a statement of it is running (and since when) for the watcher."""

    def __init__(self, conns: Sequence[BaseConnection], options: ConnectOptions) -> None:
        self.conns = list(conns)
        self.deadlock_timeout = options.deadlock_timeout
        self.gid: str | None = None
        #: The age the next transaction takes over: that of one that lost a lock, so that
        #: its retry (usually the next transaction) grows older and at last wins.
        self.age: str | None = None
        self.running = 0  # shard calls of the transaction running now
        self.since = 0.0  # when the first of them started
        self.next_look = 0.0
        #: The last look that failed (a node unreachable): the lock timeout still bounds waits.
        self.last_error: BaseException | None = None
        #: The node connections (ids) of the batch of shard calls running now (see batch()).
        self.batch: frozenset[int] = frozenset()
        #: What each node (connection id) was told last: (gid, may hold locks elsewhere).
        self.told: dict[int, tuple[str, bool]] = {}
        for conn in self.conns:
            conn.transactions = self

    def announce(self, conn: BaseConnection) -> None:
        """``conn``'s node is about to run a statement of a transaction: on its first there, a
        new transaction begins if no node has one, and the node is told its gid; the node is
        told again (once) when the transaction may hold locks on another node, for wait-die
        (exdb.server.locks.WriteLock). Pipelined: no answer, no wait."""
        if self.gid is None or not (conn._dirty or any(c._dirty for c in self.conns)):
            self.gid = new_gid(self.age)
            self.age = None
        # Conservative: a node where the transaction ran anything, or that a call of the same
        # batch runs on (its lock may be granted while this call waits), may hold a lock.
        elsewhere = any(c._dirty or id(c) in self.batch for c in self.conns if c is not conn)
        told = (self.gid, elsewhere)
        key = id(conn)
        if not conn._dirty or (elsewhere and self.told.get(key) != told):
            conn.core.txn_id(self.gid, elsewhere)
            self.told[key] = told


def batch(conns: Sequence[BaseConnection], nodes: Iterable[int]) -> None:
    """A door is about to run a batch of shard calls on ``nodes`` (indexes into ``conns``):
    each call of a transaction then tells its node that the others may hold locks."""
    txns = conns[0].transactions if conns else None
    if isinstance(txns, Transactions):
        txns.batch = frozenset(id(conns[n]) for n in nodes)


def watched(conn: BaseConnection, op: Op) -> Op:
    """Operation: ``op``, a shard call inside a transaction on ``conn``'s node, with its
    transaction announced to the node first and its run shown to the deadlock watcher."""
    txns = conn.transactions
    if not isinstance(txns, Transactions):
        return (yield from op)
    txns.announce(conn)
    if txns.deadlock_timeout is None:
        return (yield from op)
    txns.running += 1
    if txns.running == 1:
        txns.since = time.monotonic()
        txns.next_look = txns.since + txns.deadlock_timeout
        _WATCHER.add(txns)
    try:
        return (yield from op)
    except LockError:
        if txns.gid is not None:
            txns.age = txns.gid.partition("-")[0]
        raise
    finally:
        txns.running -= 1
        if txns.running == 0:
            _WATCHER.discard(txns)


def lock_lost(exc: LockError, nodes: Sequence[str], failed: BaseException | None) -> LockError:
    """The error a door raises when a statement lost a lock (timeout, deadlock, conflict) in
    a transaction that it then rolled back on ``nodes`` (``failed``: why that rollback failed
    on some node, if it did)."""
    if failed is None:
        note = f"the transaction was rolled back on every node it touched ({', '.join(nodes)})"
    else:
        note = f"rolling the transaction back failed: {failed}; the nodes roll it back when"
        note += " this connection closes"
    error = type(exc)(f"{exc.message}; {note}", node=exc.node, statement=exc.statement)
    error.code = exc.code
    return error


# --- the watcher --------------------------------------------------------------------------------


class _Watcher:
    """One thread per process: looks for deadlocks for the transactions whose statements have
    run past their ``deadlock_timeout``. One look serves all of them: each node is asked once
    (twice when a cycle shows), whatever the number of transactions waiting on it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: weakref.WeakSet[Transactions] = weakref.WeakSet()
        self._event = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, txns: Transactions) -> None:
        with self._lock:
            self._watched.add(txns)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="exdb-deadlock-watcher", daemon=True
                )
                self._thread.start()
        self._event.set()

    def discard(self, txns: Transactions) -> None:
        with self._lock:
            self._watched.discard(txns)

    def _run(self) -> None:
        while True:
            with self._lock:
                watched = [t for t in self._watched if t.running]
            now = time.monotonic()
            due = [t for t in watched if now >= t.next_look]
            if due:
                _look(due, watched)
                now = time.monotonic()
                for txns in due:
                    txns.next_look = now + (txns.deadlock_timeout or 1.0)
            wait = min((t.next_look - now for t in watched), default=None)
            self._event.wait(None if wait is None else max(wait, 0.001))
            self._event.clear()


_WATCHER = _Watcher()

#: Seconds a node has to answer a LOCKS request.
_ASK_TIMEOUT = 2.0


def _look(due: Sequence[Transactions], watched: Sequence[Transactions]) -> None:
    """Look for deadlocks through the transactions ``due``; end the wait of each victim that
    is one of this process's (``watched``)."""
    mine = {t.gid: t for t in watched if t.gid is not None}
    gids = [t.gid for t in due if t.gid is not None]
    try:
        edges = _edges(due)
        cycles = [c for c in (find_cycle(edges, gid) for gid in gids) if c is not None]
        if not cycles:
            return
        again = set(_edges(due))
        for cycle in cycles:
            if not all(edge in again for edge in cycle):
                continue  # the waits changed: not a deadlock (yet); the next look sees
            victim = max(edge[0] for edge in cycle)
            txns = mine.get(victim)
            if txns is None or txns.gid != victim:
                continue  # another process's transaction: its own client ends it
            message = _describe(cycle, victim)
            by_node = {c.node: c for c in txns.conns}
            for waiter, _, node, wait_id in cycle:
                if waiter == victim and node in by_node:
                    _ask(by_node[node], {"abort": wait_id, "message": message})
    except (Error, OSError, ProtocolError) as exc:
        for txns in due:  # no detection this time; the lock timeout still ends the waits
            txns.last_error = exc


def _edges(due: Sequence[Transactions]) -> list[Edge]:
    """Every node's waits between distributed transactions, as graph edges: each node that
    one of ``due`` works on is asked once."""
    nodes: dict[str, BaseConnection] = {}
    for txns in due:
        for conn in txns.conns:
            nodes.setdefault(conn.node, conn)
    edges: list[Edge] = []
    for name, conn in nodes.items():
        try:
            answer = _ask(conn, {})
        except (Error, OSError, ProtocolError) as exc:
            # A node that does not answer (stopped, gone) hides its waits: a cycle through it
            # is not seen this time (its lock timeout still ends the wait); the others are.
            for txns in due:
                txns.last_error = exc
            continue
        for wait in answer.get("waits") or ():
            waiter, wait_id, holder = wait[0], wait[1], wait[2]
            if isinstance(waiter, str) and isinstance(holder, str) and isinstance(wait_id, int):
                edges.append((waiter, holder, name, wait_id))
    return edges


def find_cycle(edges: Sequence[Edge], gid: str) -> list[Edge] | None:
    """A cycle of waits through transaction ``gid`` (its edges, from ``gid`` around), or None."""
    out: dict[str, list[Edge]] = {}
    for edge in edges:
        out.setdefault(edge[0], []).append(edge)
    path: list[Edge] = []
    seen: set[str] = set()

    def walk(at: str) -> bool:
        for edge in out.get(at, ()):
            path.append(edge)
            if edge[1] == gid:
                return True
            if edge[1] not in seen:
                seen.add(edge[1])
                if walk(edge[1]):
                    return True
            path.pop()
        return False

    return list(path) if walk(gid) else None


def _describe(cycle: Sequence[Edge], victim: str) -> str:
    """The victim's error message: the cycle, node by node."""
    steps = "; ".join(
        f"transaction {waiter} waits on node {node} for transaction {holder}"
        for waiter, holder, node, _ in cycle
    )
    return (
        f"deadlock detected: {steps}. This transaction ({victim}), the youngest on the"
        " cycle, was chosen as the victim"
    )


def _ask(conn: BaseConnection, extra: dict[str, Any]) -> dict[str, Any]:
    """A LOCKS request on a second connection to ``conn``'s node; its answer."""
    from exdb.client.sync import open_socket  # the socket helpers of the synchronous door

    info = conn.core.server_info
    ticket = {"session": info.get("session"), "key": info.get("key"), **extra}
    host, port = parse_node(conn.node)
    sock = open_socket(host, port, conn.options)
    sock.settimeout(_ASK_TIMEOUT)  # one stopped node must not hold the process's watcher
    decoder = FrameDecoder()
    try:
        sock.sendall(MAGIC + encode_frame([Msg.LOCKS, 0, ticket]))
        while True:
            data = sock.recv(65536)
            if not data:
                raise OperationalError("the node closed the LOCKS connection", node=conn.node)
            messages = decoder.feed(data)
            if messages:
                msg = messages[0]
                if msg[0] != Msg.PONG or not isinstance(msg[2], dict):
                    raise OperationalError(f"unexpected answer to LOCKS: {msg[0]}", node=conn.node)
                return msg[2]  # type: ignore[no-any-return]
    finally:
        with contextlib.suppress(OSError):
            sock.close()
