"""What the shell does with a statement, interactive or not: run it, print its result, keep
the transaction state, time it; meta-commands go to :mod:`exdb.shell.meta`."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from exdb.errors import Error, ProgrammingError
from exdb.shell.output import FORMATS, write_result
from exdb.shell.split import Statement, iter_statements

__all__ = ["Quit", "Shell"]


class Quit(Exception):
    """``\\q``: leave the shell."""


_LEADING_COMMENTS = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_BEGIN = re.compile(
    r"^(?:BEGIN|START\s+TRANSACTION)(?:\s+(?:DEFERRED|IMMEDIATE|EXCLUSIVE|TRANSACTION|WORK))*$",
    re.IGNORECASE,
)
_COMMIT = re.compile(r"^(?:COMMIT|END)(?:\s+(?:TRANSACTION|WORK))?$", re.IGNORECASE)
_ROLLBACK = re.compile(r"^(?:ROLLBACK|ABORT)(?:\s+(?:TRANSACTION|WORK))?$", re.IGNORECASE)


def transaction_verb(sql: str) -> str | None:
    """``begin``, ``commit`` or ``rollback`` for a bare transaction statement, else None."""
    text = _LEADING_COMMENTS.sub("", sql).strip()
    for verb, pattern in (("begin", _BEGIN), ("commit", _COMMIT), ("rollback", _ROLLBACK)):
        if pattern.match(text):
            return verb
    return None


class Shell:
    """A distributed connection with the shell's settings: output format, timing, and the
    transaction the user opened with BEGIN (statements autocommit otherwise)."""

    def __init__(
        self,
        conn: Any,
        *,
        fmt: str = "table",
        timing: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
        single_transaction: bool = False,
        status: bool = True,
    ) -> None:
        if fmt not in FORMATS:
            raise ProgrammingError(f"unknown output format {fmt!r}: one of {', '.join(FORMATS)}")
        self.conn = conn
        self.fmt = fmt
        self.timing = timing
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.single_transaction = single_transaction
        self.status = status  # print "N rows affected" and the like
        self.in_transaction = single_transaction
        conn.autocommit = not single_transaction
        #: Called after a statement that may have changed the schema (the completer reloads).
        self.on_schema_change: list[Any] = []

    # --- messages -----------------------------------------------------------------------------

    @property
    def info(self) -> TextIO:
        """Where status lines go: with the data for table formats, apart for CSV and JSON."""
        return self.out if self.fmt in ("table", "plain") else self.err

    def error(self, exc: BaseException | str, where: str = "") -> None:
        """One line on stderr: ``[where: ]ERROR: message``."""
        message = str(exc).strip().replace("\n", " ")
        self.err.write(f"{where + ': ' if where else ''}ERROR: {message}\n")
        self.err.flush()

    # --- running ------------------------------------------------------------------------------

    def execute(self, statement: Statement) -> None:
        """Run one statement or meta-command and print what it returns; errors raise."""
        if statement.is_meta:
            from exdb.shell.meta import run_meta

            run_meta(self, statement.sql)
            return
        started = time.perf_counter()
        verb = transaction_verb(statement.sql)
        if verb is not None:
            self._transaction(verb)
        else:
            self._run_sql(statement)
        if self.timing:
            self.info.write(f"Time: {(time.perf_counter() - started) * 1000:.3f} ms\n")
        self.out.flush()

    def _transaction(self, verb: str) -> None:
        if self.single_transaction:
            raise ProgrammingError(
                f"{verb.upper()} inside --single-transaction: the whole script is one transaction"
            )
        if verb == "begin":
            if self.in_transaction:
                raise ProgrammingError("a transaction is already open: COMMIT or ROLLBACK it first")
            self.conn.autocommit = False
            self.in_transaction = True
            self.info.write("BEGIN\n")
            return
        if not self.in_transaction:
            raise ProgrammingError(f"no transaction is open: {verb.upper()} has nothing to end")
        try:
            if verb == "commit":
                self.conn.commit()
            else:
                self.conn.rollback()
        finally:
            self.in_transaction = False
            self.conn.autocommit = True
        self.info.write(f"{verb.upper()}\n")

    def _run_sql(self, statement: Statement) -> None:
        cur = self.conn.cursor()
        try:
            cur.execute(statement.sql)
            if cur.description is not None:
                columns = [d[0] for d in cur.description]
                write_result(self.out, columns, iter(cur.fetchone, None), self.fmt)
            elif self.status and self.fmt in ("table", "plain"):
                n = cur.rowcount
                self.info.write("OK\n" if n < 0 else f"{n} row{'' if n == 1 else 's'} affected\n")
        finally:
            cur.close()
        if statement.keyword in ("CREATE", "DROP", "ALTER") or "_table(" in statement.sql:
            for callback in self.on_schema_change:
                callback()

    def run_statements(
        self,
        statements: Iterable[Statement],
        *,
        stop_on_error: bool = False,
        source: str = "",
    ) -> int:
        """Run statements in order; report each error on one line. Returns 0 if all succeeded,
        1 if any failed. With ``stop_on_error`` (implied by --single-transaction) nothing after
        the first failure runs; in a single transaction the failure rolls everything back."""
        failed = 0
        for statement in statements:
            try:
                self.execute(statement)
            except Quit:
                break
            except Error as exc:
                failed += 1
                self.error(exc, f"{source}:{statement.line}" if source else "")
                if stop_on_error or self.single_transaction:
                    break
        self.out.flush()
        return 1 if failed else 0

    def end_single_transaction(self, failed: bool) -> int:
        """--single-transaction: commit if nothing failed, else roll back; the exit code."""
        if failed:
            self.conn.rollback()
            self.err.write("ROLLBACK: the transaction is rolled back; nothing was changed\n")
            return 1
        try:
            self.conn.commit()
        except Error as exc:
            self.error(exc, "COMMIT")
            return 1
        return 0

    def run_file(self, path: str, *, stop_on_error: bool = False) -> int:
        """Run a file's statements and meta-commands (``-`` is standard input)."""
        if path == "-":
            return self.run_statements(
                iter_statements(sys.stdin, meta=True), stop_on_error=stop_on_error, source="stdin"
            )
        try:
            f = open(path, encoding="utf-8")  # noqa: SIM115 - closed below, after streaming
        except OSError as exc:
            raise ProgrammingError(f"cannot read {path}: {exc.strerror}") from None
        with f:
            return self.run_statements(
                iter_statements(f, meta=True), stop_on_error=stop_on_error, source=path
            )
