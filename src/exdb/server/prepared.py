"""Prepared (two-phase) transactions on a shard server, as PostgreSQL names them:
``PREPARE TRANSACTION 'gid'``, ``COMMIT PREPARED 'gid'``, ``ROLLBACK PREPARED 'gid'``, and the
in-doubt list ``SELECT * FROM exdb_prepared_xacts`` (see docs/protocol.md, "Two-phase commit").

PREPARE TRANSACTION takes the session's open transaction away from the session: the transaction
stays open (it keeps its locks) in the server's registry, and the session goes on with a new
engine connection. Any session may then commit or roll it back by its gid.

Durability (a node with ``--db``): PREPARE writes the transaction's redo record to a journal
beside the database file (``<db>.2pc/``), with fsync, before it answers; inside the transaction
it inserts a marker row for the gid into ``exdb_prepared_done``. After a crash, a journal whose
marker row is present belongs to a transaction that committed (the journal is deleted); one
whose marker is absent is re-applied in a new transaction, held open as prepared again, before
the node serves any session. The redo record:

* SQLite: the transaction's changeset (SQLite's session extension, through apsw), exact row
  images; DDL statements are kept as statements, between the changesets before and after them.
  A transaction whose changes include indirect ones (made by a trigger or a foreign key action)
  is refused: applying its changeset would fire them again.
* DuckDB: the statements that changed something, with their parameters, in order, preceded by
  the session's search path. A statement whose effect a replay could not repeat exactly (a
  non-deterministic function, a sequence, a column default of that kind) makes PREPARE fail
  with NotSupportedError.

A node with no file keeps prepared transactions in memory only: there is nothing durable to
protect, and PREPARE works all the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import threading
import time
from typing import Any

import msgpack

from exdb.server.engines import Engine, EngineError, EngineSession, first_keyword
from exdb.wire.codec import encode_frame
from exdb.wire.messages import FLAG_AUTOCOMMIT, Msg

__all__ = [
    "DECISIONS_TABLE",
    "DONE_TABLE",
    "PreparedRegistry",
    "TwoPhaseHook",
    "parse_statement",
    "registry_for",
]

#: The coordinator's decisions (see exdb.distributed.transaction): one row per two-phase commit.
DECISIONS_TABLE = "exdb_decisions"
#: A participant's marker rows: the gid's prepared transaction committed on this node.
DONE_TABLE = "exdb_prepared_done"
#: The in-doubt list a client reads.
LIST_TABLE = "exdb_prepared_xacts"

_TABLES = (
    f"CREATE TABLE IF NOT EXISTS {DECISIONS_TABLE} (gid VARCHAR PRIMARY KEY,"
    " outcome VARCHAR NOT NULL, participants VARCHAR NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {DONE_TABLE} (gid VARCHAR PRIMARY KEY)",
)

_STATEMENT = re.compile(
    r"\s*(PREPARE\s+TRANSACTION|COMMIT\s+PREPARED|ROLLBACK\s+PREPARED)\s+'((?:[^']|'')*)'\s*;?\s*",
    re.IGNORECASE,
)
_LIST = re.compile(
    rf"\s*SELECT\s+(\*|gid\s*,\s*prepared\s*,\s*owner_connected|gid)\s+FROM\s+{LIST_TABLE}\s*;?\s*",
    re.IGNORECASE,
)
_DDL = frozenset({"CREATE", "DROP", "ALTER"})
_READ_ONLY = frozenset({"SELECT", "VALUES", "EXPLAIN", "DESCRIBE", "SHOW", "SUMMARIZE", "FROM"})
#: Functions whose value a replay would not repeat (or whose call has effects of its own).
_NOT_REPLAYABLE = re.compile(
    r"\b(random|randomblob|random_bytes|uuid|gen_random_uuid|uuidv4|uuidv7|nextval|currval|"
    r"setval|setseed|now|current_timestamp|current_date|current_time|localtimestamp|localtime|"
    r"today|get_current_time|get_current_timestamp|transaction_timestamp|changes|"
    r"total_changes|last_insert_rowid)\b|'now'",
    re.IGNORECASE,
)
_MAX_GID = 200  # PostgreSQL's limit


def parse_statement(sql: str) -> tuple[str, str] | None:
    """("prepare" | "commit" | "rollback", gid) for a two-phase statement, ("list", columns)
    for the in-doubt list ("gid" or "*"), or None for any other statement."""
    m = _STATEMENT.fullmatch(sql)
    if m is not None:
        word = m.group(1).split()[0].lower()
        return word, m.group(2).replace("''", "'")
    m = _LIST.fullmatch(sql)
    if m is not None:
        return "list", "gid" if m.group(1).lower() == "gid" else "*"
    return None


# --- the redo record of one transaction ---------------------------------------------------------


class _Recorder:
    """What a session's open transaction changed, kept so that PREPARE can write it down."""

    def __init__(self, engine: EngineSession) -> None:
        self.engine = engine
        self.entries: list[list[Any]] = []
        self.refusal: str | None = None
        self._session: Any = None  # the apsw Session recording the current changeset
        self.sqlite = hasattr(engine, "_guard")

    def before(self, kind: str, sql: str) -> None:
        """Called before a statement of the transaction runs."""
        if not self.sqlite:
            return
        if first_keyword(sql) in _DDL:
            self.flush()
        elif self._session is None:
            import apsw

            session = apsw.Session(self.engine._conn, "main")  # type: ignore[attr-defined]
            session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
            session.attach()
            self._session = session

    def ran(self, kind: str, sql: str, params: Any) -> None:
        """Called after a statement of the transaction ran without error."""
        keyword = first_keyword(sql)
        if self.sqlite:
            if keyword in _DDL:
                self._check(sql)
                self.entries.append(["sql", sql, params])
            return
        if keyword in _READ_ONLY and _NOT_REPLAYABLE.search(sql) is None:
            return
        self._check(sql)
        if kind == "many":
            self.entries.append(["many", sql, list(params)])
        elif kind == "each":
            self.entries.extend(["sql", sql, p] for p in params)
        else:
            self.entries.append(["sql", sql, params])

    def _check(self, sql: str) -> None:
        if self.refusal is None and _NOT_REPLAYABLE.search(sql) is not None:
            short = sql if len(sql) <= 200 else sql[:200] + "..."
            self.refusal = (
                "this transaction cannot be prepared for a two-phase commit: its statement"
                f" {short!r} calls a function whose value a redo after a crash could not"
                " repeat exactly (a random value, a clock, a sequence); run it in a transaction"
                " that writes on one node only, or pass the value as a parameter"
            )

    def flush(self) -> None:
        """Close the current changeset (SQLite) and keep it."""
        if self._session is None:
            return
        import apsw

        session, self._session = self._session, None
        try:
            changeset = session.changeset()
            for change in apsw.Changeset.iter(changeset):
                if change.indirect and self.refusal is None:
                    self.refusal = (
                        "this transaction cannot be prepared for a two-phase commit: a trigger"
                        f" or a foreign key action changed table {change.name!r}, and a redo"
                        " after a crash would run it again; write on one node in such a"
                        " transaction"
                    )
            if changeset:
                self.entries.append(["changeset", changeset])
        finally:
            session.close()

    def close(self) -> None:
        """Stop recording (the transaction ended)."""
        if self._session is not None:
            self._session.close()
            self._session = None


# --- the registry of a server's prepared transactions -----------------------------------------


@dataclasses.dataclass
class _Prepared:
    gid: str
    engine: EngineSession
    journal: str | None
    prepared: str  # when (UTC, ISO 8601)
    #: The session hook whose session still runs on ``engine`` (None: the registry's alone).
    holder: Any = None
    #: Set while a COMMIT/ROLLBACK PREPARED of it runs; set (done) when it ends.
    finishing: threading.Event | None = None


class PreparedRegistry:
    """One server's prepared transactions, its journal directory and its recovery."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lock = threading.Lock()
        self.txns: dict[str, _Prepared] = {}
        path = getattr(engine, "path", None)
        self.directory = f"{path}.2pc" if getattr(engine, "durable", False) and path else None
        self.finished: list[str] = []  # gids whose marker row may go (their journal is gone)
        #: Gids whose preparing session is still connected: probably still being committed
        #: by their client, so recovery leaves them alone.
        self.owned: set[str] = set()
        session = engine.open_session()
        try:
            for ddl in _TABLES:
                session.execute(ddl, None, True)
        finally:
            session.close()
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)
            self._recover()

    # --- recovery at start ---

    def _recover(self) -> None:
        assert self.directory is not None
        session = self.engine.open_session()
        try:
            for name in os.listdir(self.directory):
                if name.endswith(".tmp"):  # a PREPARE that never answered
                    os.unlink(os.path.join(self.directory, name))
            journals = sorted(n for n in os.listdir(self.directory) if n.endswith(".redo"))
            for name in journals:
                path = os.path.join(self.directory, name)
                with open(path, "rb") as f:
                    record = msgpack.unpackb(f.read(), raw=False, strict_map_key=False)
                gid = record["gid"]
                done = session.execute(f"SELECT 1 FROM {DONE_TABLE} WHERE gid = ?", [gid], True)
                if done.fetch(1):
                    self._forget_journal(path)
                    self.finished.append(gid)
                    continue
                self.txns[gid] = _Prepared(gid, self._replay(record), path, record["prepared"])
            known = set(self.txns)
            rows = session.execute(f"SELECT gid FROM {DONE_TABLE}", None, True).fetch(1 << 30)
            self.finished.extend(g for (g,) in rows if g not in known)
        finally:
            session.close()

    def _replay(self, record: dict[str, Any]) -> EngineSession:
        """The journal's transaction applied again in a new transaction, left open."""
        engine = self.engine.open_session()
        try:
            engine.transaction("begin")
            for entry in record["entries"]:
                if entry[0] == "changeset":
                    import apsw

                    apsw.Changeset.apply(entry[1], engine._conn)  # type: ignore[attr-defined]
                elif entry[0] == "many":
                    engine.executemany(entry[1], entry[2], False)
                else:
                    engine.execute(entry[1], entry[2], False)
            engine.execute(f"INSERT INTO {DONE_TABLE} VALUES (?)", [record["gid"]], False)
        except BaseException:
            engine.close()
            raise
        return engine

    # --- the statements ---

    def prepare(
        self,
        gid: str,
        engine: EngineSession,
        recorder: _Recorder | None,
        wrote: bool,
        holder: Any = None,
    ) -> bool:
        """PREPARE TRANSACTION: keep ``engine``'s open transaction as ``gid``, durably; True.
        A transaction that changed nothing is committed at once instead (it has nothing to
        keep, and no lock need wait for the decision): False."""
        if not gid or len(gid) > _MAX_GID:
            raise EngineError("ProgrammingError", f"a gid has 1 to {_MAX_GID} characters")
        with self.lock:
            if gid in self.txns:
                raise EngineError(
                    "IntegrityError", f'transaction identifier "{gid}" is already in use'
                )
        if recorder is not None:
            recorder.flush()
            if recorder.refusal is not None:
                raise EngineError("NotSupportedError", recorder.refusal)
        if not self._wrote(engine, wrote):
            if engine.in_transaction:
                engine.transaction("commit")
            return False
        entries = recorder.entries if recorder is not None else []
        if not engine.in_transaction:
            engine.transaction("begin")
        if not self.sqlite_engine():
            self._check_defaults(engine, entries)
            entries = self._search_path(engine) + entries
        with self.lock:
            stale, self.finished = self.finished[:500], self.finished[500:]
        for old in stale:
            engine.execute(f"DELETE FROM {DONE_TABLE} WHERE gid = ?", [old], False)
        engine.execute(f"INSERT INTO {DONE_TABLE} VALUES (?)", [gid], False)
        prepared = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        journal = None
        if self.directory is not None:
            journal = self._write_journal(
                gid, {"gid": gid, "prepared": prepared, "entries": entries}
            )
        with self.lock:
            self.txns[gid] = _Prepared(gid, engine, journal, prepared, holder)
            if holder is not None:
                self.owned.add(gid)
        return True

    def finish(self, gid: str, op: str) -> None:
        """COMMIT PREPARED (``op`` "commit") or ROLLBACK PREPARED ("rollback"), from any
        session. The engine connection is closed unless a session still runs on it."""
        with self.lock:
            txn = self.txns.get(gid)
            if txn is None or txn.finishing is not None:
                raise EngineError(
                    "ProgrammingError",
                    f'prepared transaction with identifier "{gid}" does not exist',
                )
            finishing = txn.finishing = threading.Event()
        try:
            txn.engine.transaction(op)
        except EngineError:
            with self.lock:  # still prepared: it may be tried again
                txn.finishing = None
            finishing.set()
            raise
        with self.lock:
            del self.txns[gid]
            self.owned.discard(gid)
            if op == "commit":
                self.finished.append(gid)
            alone = txn.holder is None
        finishing.set()
        if alone:
            txn.engine.close()
        if txn.journal is not None:
            # No directory fsync: a journal that comes back after a crash has its marker row
            # (committed) or none (rolled back, prepared again and decided again): both safe.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(txn.journal)

    def release(self, gid: str) -> bool:
        """The holding session needs its engine connection for something else: True if the
        prepared transaction stays (the registry keeps the connection; the session must open
        another), False if it has ended (the connection is free again)."""
        while True:
            with self.lock:
                txn = self.txns.get(gid)
                if txn is None:
                    return False
                if txn.finishing is None:
                    txn.holder = None
                    return True
                finishing = txn.finishing
            finishing.wait()

    def hand_over(self, gid: str) -> bool:
        """The holding session ends: True if the registry keeps its engine connection (the
        transaction is still prepared, or being finished by another session)."""
        with self.lock:
            txn = self.txns.get(gid)
            if txn is None:
                return False
            txn.holder = None
            return True

    def listing(self) -> list[tuple[str, str, bool]]:
        """The in-doubt transactions: (gid, when prepared, whether the session that prepared
        it is still connected)."""
        with self.lock:
            return sorted((t.gid, t.prepared, t.gid in self.owned) for t in self.txns.values())

    def orphan(self, gids: set[str]) -> None:
        """The session that prepared ``gids`` ended."""
        with self.lock:
            self.owned -= gids

    # --- helpers ---

    def sqlite_engine(self) -> bool:
        """Whether the engine is SQLite (changesets) rather than DuckDB (statement logs)."""
        return self.engine.name == "sqlite"

    def _wrote(self, engine: EngineSession, wrote: bool) -> bool:
        """Whether the open transaction may have changed something: SQLite says so exactly
        (a write transaction); DuckDB's is known from its statements (any but a query)."""
        if self.sqlite_engine():
            import apsw

            conn = engine._conn  # type: ignore[attr-defined]
            return bool(conn.txn_state("main") == apsw.SQLITE_TXN_WRITE)
        return wrote

    @staticmethod
    def _search_path(engine: EngineSession) -> list[list[Any]]:
        rows = engine.execute("SELECT current_setting('search_path')", None, False).fetch(1)
        value = rows[0][0] if rows else ""
        if not value:
            return []
        return [["sql", "SET search_path = '" + str(value).replace("'", "''") + "'", None]]

    @staticmethod
    def _check_defaults(engine: EngineSession, entries: list[list[Any]]) -> None:
        """DuckDB: refuse a redo that inserts into a table whose defaults a replay would not
        compute again alike (a clock, a random value, a sequence)."""
        if not any(first_keyword(e[1]) in ("INSERT", "CREATE") for e in entries):
            return
        rows = engine.execute(
            "SELECT table_name, column_name, column_default FROM duckdb_columns()"
            " WHERE column_default IS NOT NULL AND NOT internal",
            None,
            False,
        ).fetch(1 << 20)
        for table, column, default in rows:
            if _NOT_REPLAYABLE.search(str(default)) is not None:
                raise EngineError(
                    "NotSupportedError",
                    "this transaction cannot be prepared for a two-phase commit: column"
                    f" {table}.{column} has the default {default}, which a redo after a crash"
                    " would not compute again alike; write on one node in such a transaction",
                )

    def _write_journal(self, gid: str, record: dict[str, Any]) -> str:
        assert self.directory is not None
        name = hashlib.sha256(gid.encode()).hexdigest()[:32]
        path = os.path.join(self.directory, name + ".redo")
        tmp = path + ".tmp"
        data = msgpack.packb(record, use_bin_type=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._sync_directory()
        return path

    def _forget_journal(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _sync_directory(self) -> None:
        assert self.directory is not None
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Server shutdown: prepared transactions are rolled back in the engine, and stay in
        their journals (a durable node prepares them again when it starts)."""
        with self.lock:
            txns, self.txns = list(self.txns.values()), {}
        for txn in txns:
            txn.engine.close()


_registries_lock = threading.Lock()


def registry_for(engine: Engine) -> PreparedRegistry:
    """The engine's registry, created (and its journals recovered) on first use."""
    registry = getattr(engine, "_exdb_prepared", None)
    if registry is not None:
        return registry  # type: ignore[no-any-return]
    with _registries_lock:
        registry = getattr(engine, "_exdb_prepared", None)
        if registry is None:
            try:
                registry = PreparedRegistry(engine)
            except EngineError:
                raise
            except Exception as exc:
                raise EngineError(
                    "OperationalError",
                    f"this node could not recover its prepared transactions: {exc!r}",
                ) from exc
            engine._exdb_prepared = registry  # type: ignore[attr-defined]
    return registry


# --- the session's hook -------------------------------------------------------------------------

_FINISH = ("commit", "rollback")
_KINDS: dict[int, str] = {Msg.QUERY: "query", Msg.EXECMANY: "many", Msg.BATCH: "each"}


class TwoPhaseHook:
    """A session's part: answers the two-phase statements and records the open transaction
    (exdb.server.session calls :meth:`before` and :meth:`ran` around each request)."""

    def __init__(self, engine: Engine) -> None:
        self.registry = registry_for(engine)
        self.server_engine = engine
        self.recorder: _Recorder | None = None
        self.prepared: set[str] = set()  # gids this session prepared
        self.txn_engine: EngineSession | None = None  # whose open transaction is tracked
        self.wrote = False  # whether it ran a statement other than a query
        #: The gid of the prepared transaction this session's engine connection still holds.
        self.holding: str | None = None

    def before(self, session: Any, engine: EngineSession, kind: int, rid: int, msg: Any) -> bool:
        """Before a request: answer it if it is a two-phase statement (True), else note it for
        the redo record of the open transaction (False: the session runs it)."""
        what = _KINDS.get(kind)
        well_formed = what is not None and len(msg) == 5 and isinstance(msg[2], str)
        parsed = parse_statement(msg[2]) if well_formed and what == "query" else None
        held = self.holding
        # The session's connection holds a prepared transaction: anything but its COMMIT or
        # ROLLBACK PREPARED runs on another connection (the registry keeps that one).
        finishes_held = parsed is not None and parsed[0] in _FINISH and parsed[1] == held
        if held is not None and (kind in _KINDS or kind == Msg.TXN) and not finishes_held:
            self.holding = None
            if self.registry.release(held):
                engine = self.server_engine.open_session()
                with session._lock:
                    session._engine = engine
        if what is None or not well_formed:
            return False
        sql, autocommit = msg[2], bool(isinstance(msg[4], int) and msg[4] & FLAG_AUTOCOMMIT)
        if parsed is None:
            self._track(engine, what, sql, autocommit)
            return False
        op, gid = parsed
        if op == "list":
            rows: list[Any] = self.registry.listing()
            columns = [["gid", "VARCHAR"], ["prepared", "VARCHAR"], ["owner_connected", "BOOLEAN"]]
            if gid == "gid":
                columns, rows = columns[:1], [(g,) for g, _, _ in rows]
            session._stream(rid, columns, _Rows(rows))
            return True
        if op == "prepare":
            recorder, wrote = self.recorder, self.wrote
            self.recorder, self.txn_engine, self.wrote = None, None, False
            try:
                kept = self.registry.prepare(gid, engine, recorder, wrote, self)
            except EngineError:
                if recorder is not None:
                    recorder.close()
                with contextlib.suppress(EngineError):
                    engine.transaction("rollback")  # as PostgreSQL: a failed PREPARE aborts
                raise
            if not kept:  # read-only: committed; rowcount 0 tells the client
                session._send(encode_frame([Msg.RESULT, rid, None, (), False, 0, None]))
                return True
            # The session keeps its connection (its settings, its TEMP tables) while its
            # client finishes the transaction; it takes another if it needs one before.
            self.prepared.add(gid)
            self.holding = gid
            session._send(encode_frame([Msg.RESULT, rid, None, (), False, 1, None]))
            return True
        self.registry.finish(gid, op)
        self.prepared.discard(gid)
        if gid == self.holding:
            self.holding = None
        session._send(encode_frame([Msg.RESULT, rid, None, (), False, -1, None]))
        return True

    def _track(self, engine: EngineSession, what: str, sql: str, autocommit: bool) -> None:
        if self.txn_engine is not None and (
            self.txn_engine is not engine or not engine.in_transaction
        ):
            self._ended()  # the transaction it tracked ended
        if autocommit:
            return
        if self.txn_engine is None:
            self.txn_engine, self.wrote = engine, False
            if self.registry.directory is not None:  # in memory: nothing to redo
                self.recorder = _Recorder(engine)
        if not self.wrote and first_keyword(sql) not in _READ_ONLY:
            self.wrote = True
        if self.recorder is not None:
            self.recorder.before(what, sql)

    def _ended(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
        self.recorder, self.txn_engine, self.wrote = None, None, False

    def ran(self, engine: EngineSession, kind: int, msg: Any) -> None:
        """After a request ran without error."""
        recorder = self.recorder
        if recorder is not None and recorder.engine is engine and engine.in_transaction:
            what = _KINDS.get(kind)
            if what is not None:
                recorder.ran(what, msg[2], msg[3])

    def close(self, session: Any) -> None:
        """The session ends; the registry takes the connection of a transaction it holds."""
        if self.holding is not None and self.registry.hand_over(self.holding):
            with session._lock:
                session._engine = None
        self.holding = None
        if self.prepared:
            self.registry.orphan(self.prepared)
        self._ended()


class _Rows:
    """The in-doubt list as a result to stream."""

    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    def __call__(self, n: int) -> list[Any]:
        out, self.rows = self.rows[:n], self.rows[n:]
        return out
