"""The shard server, ``exdb serve``: one engine, one listener, one thread per session."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import selectors
import signal
import socket
import ssl
import sys
import threading
import time
from typing import Any

from exdb.server.auth import FailedLogins, Verifier, load_verifier
from exdb.server.engines import Engine, EnginePolicy, open_engine
from exdb.server.memory import (
    DUCKDB_SHARE,
    apply_memory_ceiling,
    default_ceiling,
    parse_size,
)
from exdb.server.session import Session
from exdb.server.watchdog import Watchdog
from exdb.wire.codec import DEFAULT_MAX_FRAME

__all__ = ["ServerConfig", "ShardServer", "run_server"]


@dataclasses.dataclass
class ServerConfig:
    """How one shard server runs; every field is an ``exdb serve`` option."""

    host: str = "127.0.0.1"
    port: int = 5001
    engine: str = "sqlite"
    db: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)  # never in a repr
    #: A file whose first line is the password (or a SCRAM verifier); kept out of ``ps``.
    password_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    idle_timeout: float = 600.0
    max_sessions: int = 512
    #: Seconds a statement may run before it is interrupted (0: no limit); a session may ask
    #: for a shorter or longer one with its own ``statement_timeout``.
    statement_timeout: float = 0.0
    #: Seconds a statement may wait for a lock (0: no limit); sessions may set their own.
    lock_timeout: float = 10.0
    #: Seconds a session may sit idle inside a transaction before it is rolled back (0: no
    #: limit): an idle SQLite writer would otherwise lock out every other writer.
    idle_in_transaction_timeout: float = 60.0
    #: Seconds from accept to the end of authentication, all of it.
    handshake_timeout: float = 10.0
    #: Connections in their handshake at once, apart from the ``max_sessions`` sessions.
    max_handshakes: int = 64
    #: Directories SQL may read and write files in (ATTACH, COPY, read_csv ...); none by default.
    allow_files: tuple[str, ...] = ()
    #: DuckDB: the memory limit of the whole database (e.g. "4GB"); None: DuckDB's default.
    memory_limit: str | None = None
    #: DuckDB: worker threads of the whole database; None: DuckDB's default.
    threads: int | None = None
    #: The process's memory ceiling ("16GB", "0": none); None: 75% of the physical memory.
    max_memory: str | None = None
    shutdown_grace: float = 5.0
    quiet: bool = False


#: Seconds the accept loop waits at most before it looks at ``stopping`` again.
_SELECT_TIMEOUT = 1.0


class ShardServer:
    """A shard server: ``start()`` binds and opens the engine, ``serve()`` accepts until told to
    stop, then shuts down gracefully."""

    def __init__(self, config: ServerConfig) -> None:
        from exdb import __version__

        self.config = config
        self.version = __version__
        self.engine: Engine
        self.tls: ssl.SSLContext | None = None
        self.stopping = False
        #: This process's memory ceiling in bytes (run_server applies --max-memory); None: none.
        self.memory_ceiling: int | None = None
        #: What checks the clients' passwords (None: the server wants none); set by start().
        self.verifier: Verifier | None = None
        self.failed_logins = FailedLogins()
        self._sessions: dict[int, Session] = {}
        # Connections in their handshake, oldest first; they hold no session slot.
        self._handshakes: dict[int, Session] = {}
        self._sessions_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)  # a signal's wakeup byte must never block
        self._wake_r.setblocking(False)
        self.watchdog = Watchdog(self)

    def log(self, message: str) -> None:
        """One line on stderr, unless quiet."""
        if not self.config.quiet:
            print(f"exdb serve: {message}", file=sys.stderr, flush=True)

    def start(self) -> int:
        """Open the engine, bind and listen; return the bound port. ValueError for a bad
        setting (a password file that holds no usable password, for instance)."""
        cfg = self.config
        if cfg.handshake_timeout <= 0:
            raise ValueError("the handshake timeout must be above 0 s")
        if cfg.max_handshakes < 1:
            raise ValueError("max_handshakes must be 1 or more")
        if cfg.password is not None and cfg.password_file is not None:
            raise ValueError("give the password or the password file, not both")
        # Derived once: no login ever runs PBKDF2 on the server.
        self.verifier = load_verifier(cfg.password, cfg.password_file)
        if self.verifier is not None:
            import scramp  # noqa: F401 - loaded now, not in the first login's handshake
        if cfg.tls_cert:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((cfg.host, cfg.port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        memory_limit = cfg.memory_limit
        ceiling = self.memory_ceiling
        if memory_limit is None and ceiling is not None:  # DuckDB spills before the ceiling
            memory_limit = f"{int(ceiling * DUCKDB_SHARE) // 2**20}MiB"
        policy = EnginePolicy(
            max_value_bytes=cfg.max_frame,
            file_dirs=cfg.allow_files,
            memory_limit=memory_limit,
            threads=cfg.threads,
        )
        self.engine = open_engine(cfg.engine, cfg.db, policy)
        self.watchdog.start()
        port: int = listener.getsockname()[1]
        return port

    def stop(self, *_: Any) -> None:
        """Ask the server to shut down gracefully (safe from a signal handler or any thread)."""
        self.stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def serve(self) -> None:
        """Accept sessions until stop(), SIGTERM or SIGINT; then shut down gracefully."""
        main = threading.current_thread() is threading.main_thread()
        if main:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
            # The kernel may deliver a signal to any thread (the watchdog's, a session's); then
            # nothing interrupts the select below, and Python would run the handler only when
            # it returns. The wakeup fd makes every signal wake it.
            signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        assert self._listener is not None
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self._listener, selectors.EVENT_READ)
                sel.register(self._wake_r, selectors.EVENT_READ)
                while not self.stopping:
                    for key, _ in sel.select(_SELECT_TIMEOUT):
                        if key.fileobj is self._listener:
                            self._accept()
                        elif key.fileobj is self._wake_r:
                            with contextlib.suppress(OSError):
                                self._wake_r.recv(4096)
        finally:
            if main:
                signal.set_wakeup_fd(-1)
        self.shutdown()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, addr = self._listener.accept()
        except OSError as exc:  # e.g. out of file descriptors: keep serving the others
            self.log(f"accept failed: {exc}")
            return
        try:
            self._admit(sock, addr)
        except (MemoryError, RuntimeError) as exc:  # at the memory ceiling: no thread, no room
            self.log(f"refused {addr[0]}:{addr[1]}: {exc!r}")
            sock.close()

    def _admit(self, sock: socket.socket, addr: Any) -> None:
        """Give an accepted connection its session thread and a handshake slot."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = Session(self, sock, f"{addr[0]}:{addr[1]}")
        # A handshake slot, apart from the session slots. When all are taken, a pending
        # handshake goes: the oldest of the address that holds the most. Clients that trickle
        # their handshake cannot lock out one that authenticates in milliseconds, and a flood
        # from one address pushes out its own connections first.
        dropped = None
        with self._sessions_lock:
            if len(self._handshakes) >= self.config.max_handshakes:
                dropped = self._handshakes.pop(self._handshake_to_drop())
            self._handshakes[session.id] = session
        if dropped is not None:
            dropped.drop_handshake()
            self.log(
                f"session {dropped.id} from {dropped.peer}: handshake dropped for a newer"
                f" connection ({self.config.max_handshakes} handshakes at once at most)"
            )
        try:
            session.thread.start()
        except BaseException:
            self.session_ended(session)
            raise

    def _handshake_to_drop(self) -> int:
        """The pending handshake to drop for a newcomer (called with the lock held): of the
        address that holds the most, one that has not sent a whole HELLO yet if there is one
        (a client that logs in sends it at once; a trickler never does), the oldest first."""
        counts = collections.Counter(s.source for s in self._handshakes.values())
        most = max(counts.values())
        candidates = [(k, s) for k, s in self._handshakes.items() if counts[s.source] == most]
        least = min(s.handshake_progress for _, s in candidates)
        return next(k for k, s in candidates if s.handshake_progress == least)

    def promote(self, session: Session) -> str | None:
        """Move an authenticated session from its handshake slot to a session slot; the reason
        why not, if it cannot have one."""
        with self._sessions_lock:
            if self._handshakes.pop(session.id, None) is None:
                return "handshake dropped: too many connections were authenticating at once"
            if len(self._sessions) >= self.config.max_sessions:
                return f"too many sessions: the server allows {self.config.max_sessions}"
            self._sessions[session.id] = session
            return None

    def session_ended(self, session: Session) -> None:
        """Called by a session's thread as it ends."""
        with self._sessions_lock:
            self._sessions.pop(session.id, None)
            self._handshakes.pop(session.id, None)

    def sessions(self) -> list[Session]:
        """The live sessions now (a copy: for the watchdog)."""
        with self._sessions_lock:
            return list(self._sessions.values())

    def find_session(self, session_id: Any) -> Session | None:
        """The live session with this id (for an out-of-band cancel)."""
        with self._sessions_lock:
            return self._sessions.get(session_id) if isinstance(session_id, int) else None

    def shutdown(self) -> None:
        """Stop accepting; let running statements finish for up to ``shutdown_grace`` seconds,
        then interrupt them; every open transaction is rolled back; close the database."""
        self.stopping = True
        if self._listener is not None:
            self._listener.close()
        with self._sessions_lock:
            pending = list(self._handshakes.values())
        for session in pending:
            session.drop_handshake()
        with self._sessions_lock:
            for session in self._sessions.values():
                if not session.busy:
                    session.wake()  # idle ones go now; busy ones finish their statement first
        deadline = time.monotonic() + self.config.shutdown_grace
        while time.monotonic() < deadline:
            with self._sessions_lock:
                busy = [s for s in self._sessions.values() if s.busy]
            if not busy:
                break
            time.sleep(0.02)
        with self._sessions_lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.interrupt()
            session.wake()
        for session in sessions:
            session.thread.join(5.0)
        for session in pending:
            session.thread.join(1.0)
        self.watchdog.stop()
        prepared = getattr(self.engine, "_exdb_prepared", None)
        if prepared is not None:  # prepared transactions stay in their journals
            prepared.close()
        self.engine.close()
        self._wake_r.close()
        self._wake_w.close()
        self.log("stopped")


def _memory_ceiling(setting: str | None) -> int | None:
    """Apply ``--max-memory`` to this process (None: the default share of the machine, "0":
    none); the ceiling in force, in bytes. Only ``exdb serve`` does this: a ShardServer run
    inside another program leaves that program's limits alone."""
    if setting is None:
        return apply_memory_ceiling(default_ceiling())
    return apply_memory_ceiling(parse_size(setting) or None)


def run_server(config: ServerConfig) -> None:
    """Run a shard server in this process until it is told to stop."""
    server = ShardServer(config)
    server.memory_ceiling = _memory_ceiling(config.max_memory)
    port = server.start()
    where = config.db or "in memory"
    tls = ", TLS" if config.tls_cert else ""
    # The launcher (exdb cluster, the tests) reads this line to learn the port when --port is 0.
    print(
        f"exdb serve: listening on {config.host}:{port} ({config.engine}, {where}{tls})", flush=True
    )
    server.serve()
