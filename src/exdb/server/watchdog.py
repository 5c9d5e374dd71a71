"""The server's watchdog: one thread that stops statements which should not go on.

A statement is interrupted when it passes its session's statement timeout, or when its client
has gone (closed its socket, was killed): a runaway query of a dead client would otherwise burn
a core until it ends, if it ever does.

The request loop pays for this with a couple of attribute writes a request (see
Session._handle): a session stamps when its current request started; the watchdog reads the
stamps. It sleeps until the next deadline, and at most :data:`TICK` seconds while any session is
busy (to look for hung-up clients); when no session has run anything for a while it sleeps until
a session wakes it.
"""

from __future__ import annotations

import select
import threading
import time
from typing import TYPE_CHECKING

from exdb.server.locks import idle_transactions

if TYPE_CHECKING:
    from exdb.server.app import ShardServer
    from exdb.server.session import Session

__all__ = ["TICK", "Watchdog"]

#: Seconds between two looks at busy sessions' sockets (hang-up) while any session is busy.
TICK = 0.1
#: A request must have run this long before its socket is looked at: short ones never are.
_HANGUP_AFTER = TICK
#: After this many seconds with no request started anywhere, the watchdog sleeps until woken.
_IDLE_AFTER = 1.0
# The peer closed (POLLRDHUP: it sent FIN; POLLHUP/POLLERR: reset or both directions closed).
_GONE = getattr(select, "POLLRDHUP", 0x2000) | select.POLLHUP | select.POLLERR


class Watchdog:
    """Interrupts statements past their deadline or whose client hung up; one per server."""

    def __init__(self, server: ShardServer) -> None:
        self.server = server
        #: True while the thread sleeps until woken; a session that starts a request wakes it.
        self.idle = False
        self._stopping = False
        self._event = threading.Event()
        self._thread = threading.Thread(target=self._run, name="exdb-watchdog", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """End the thread (server shutdown)."""
        self._stopping = True
        self._event.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def wake(self) -> None:
        """A request started while the watchdog slept: look again (from a session's thread)."""
        self.idle = False
        self._event.set()

    def _run(self) -> None:
        while not self._stopping:
            try:
                wait = self._check(time.monotonic())
            except Exception as exc:  # a bug of ours must not end the watchdog: log, go on
                self.server.log(f"watchdog: internal error: {exc!r}")
                wait = TICK
            if wait is None:
                self.idle = True
                # A session sets busy before it reads ``idle``; look once more after setting it,
                # so that a request that started meanwhile is not left unwatched.
                if not any(s.busy for s in self.server.sessions()):
                    self._event.wait()
                self.idle = False
            else:
                self._event.wait(wait)
            self._event.clear()

    def _check(self, now: float) -> float | None:
        """Interrupt what must stop; return the seconds until the next look (None: sleep until
        woken)."""
        wait: float | None = None
        latest = 0.0
        suspects: list[tuple[Session, float]] = []
        for session in self.server.sessions():
            started = session._started
            latest = max(latest, started)
            if not session.busy or not started:
                continue
            limit = session.statement_timeout
            if limit:
                due = started + limit - now
                if due <= 0:
                    session.expire(started)
                    # Look again at TICK while it runs on (an engine wait that ignores the
                    # interrupt, a send to a client that does not read): never spin.
                    wait = TICK if wait is None else min(wait, TICK)
                    continue
                wait = due if wait is None else min(wait, due)
            if now - started >= _HANGUP_AFTER:
                suspects.append((session, started))
            wait = TICK if wait is None else min(wait, TICK)
        if suspects:
            self._hung_up(suspects)
        idle = idle_transactions(self.server, now)
        if idle is not None:
            wait = idle if wait is None else min(wait, idle)
        if wait is None and now - latest < _IDLE_AFTER:
            wait = TICK  # requests come and go: keep looking, do not make each one wake us
        return wait

    def _hung_up(self, suspects: list[tuple[Session, float]]) -> None:
        """Interrupt the statements of sessions whose client closed its connection."""
        poller = select.poll()
        by_fd: dict[int, tuple[Session, float]] = {}
        for session, started in suspects:
            fd = session.fileno()
            if fd >= 0:
                by_fd[fd] = (session, started)
                poller.register(fd, _GONE)
        for fd, events in poller.poll(0):
            if events & _GONE and fd in by_fd:
                session, started = by_fd[fd]
                session.client_gone(started)
