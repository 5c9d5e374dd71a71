"""``exdb run``: many statements from a file, with a progress bar that only the parent process
draws. The file is split as it is read (:mod:`exdb.shell.split`), so the first statements run
while the rest is still being read.

Two modes:

- parallel (the default): statements run on worker processes, every statement autocommits.
  Order is kept where it can matter: only a run of consecutive plain ``INSERT ... VALUES``
  statements, or a run of consecutive plain ``SELECT`` statements, runs concurrently (so two
  INSERTs of one run that collide on a key may fail either one); every other statement (DDL,
  UPDATE, DELETE, INSERT ... SELECT, the placement functions, ...) runs alone, after everything
  before it and before everything after it. Errors are reported; the rest still runs.
- in order (``--stop-on-error`` or ``--single-transaction``): one statement at a time on one
  connection, stopping at the first error; with ``--single-transaction`` all of them form one
  transaction, rolled back on the first error.

What SELECTs return is printed on stdout in statement order (``fmt``; ``none`` drops it).
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import exdb
from exdb.shell.output import write_result
from exdb.shell.split import Statement, iter_statements, split_statements

__all__ = ["parallel_class", "run_script", "split_statements"]

#: Most statements handed to the workers at once.
BATCH = 1000

_PLAIN_INSERT = re.compile(
    r"INSERT\s+INTO\s+(?:\"[^\"]*\"|`[^`]*`|[\w.$]+)\s*(?:\([^()]*\)\s*)?VALUES\b", re.IGNORECASE
)
_NOT_PLAIN = re.compile(
    r"\b(?:SELECT|RETURNING|CONFLICT|REPLACE|_table|nextval|setval)\b|create_\w+_table",
    re.IGNORECASE,
)


def parallel_class(statement: Statement) -> str | None:
    """``"insert"`` or ``"select"`` for a statement that may run concurrently with its
    neighbours of the same class; None for one that must run alone (conservative: a word
    inside a string literal can only make a statement run alone)."""
    if statement.keyword == "INSERT":
        if _PLAIN_INSERT.match(statement.sql) and not _NOT_PLAIN.search(statement.sql):
            return "insert"
        return None
    if statement.keyword == "SELECT":
        rest = statement.sql[statement.sql.upper().find("SELECT") + 6 :]
        return None if _NOT_PLAIN.search(rest) else "select"
    return None


def _batches(statements: Iterable[Statement]) -> Iterator[list[Statement]]:
    """Consecutive statements that may run concurrently (one class, at most BATCH), in order;
    a statement that must run alone is a batch of one."""
    batch: list[Statement] = []
    kind: str | None = None
    for statement in statements:
        this = parallel_class(statement)
        if batch and (this is None or this != kind or len(batch) >= BATCH):
            yield batch
            batch = []
        batch.append(statement)
        kind = this
        if this is None:
            yield batch
            batch = []
    if batch:
        yield batch


def _size(source: Any) -> int | None:
    try:
        return os.fstat(source.fileno()).st_size or None
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


def run_script(
    nodes: list[str],
    source: str | IO[str],
    workers: int,
    password: str | None = None,
    *,
    options: dict[str, Any] | None = None,
    fmt: str = "table",
    stop_on_error: bool = False,
    single_transaction: bool = False,
    out: TextIO | None = None,
) -> int:
    """Run a script's statements; print what SELECTs return and a summary; 0 if all succeeded,
    1 otherwise. Connection failures raise exdb.Error."""
    out = out if out is not None else sys.stdout
    console = Console(stderr=True)
    connect_options: dict[str, Any] = dict(options or {})
    if password:
        connect_options["password"] = password
    total = len(source) if isinstance(source, str) else _size(source)
    statements = iter_statements(source)
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        TextColumn("{task.fields[done]} statements"),
        TimeElapsedColumn(),
        console=console,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    started = time.perf_counter()
    in_order = stop_on_error or single_transaction
    # In order: the one connection. In parallel: this connection runs the statements that come
    # before the first run of parallel ones (so a script's leading DDL starts at once, while no
    # worker process exists yet); it also says once that a node is down, before any worker
    # would find it on its own.
    conn = exdb.connect(nodes=nodes, **{**connect_options, "autocommit": not in_order})
    with conn, progress:
        label = "in order" if in_order else f"{workers} workers"
        task = progress.add_task(label, total=total, done=0)

        done = [0]

        def advance(statement: Statement) -> None:
            done[0] += 1
            progress.update(task, completed=statement.end, done=done[0])

        if in_order:
            count, failures = _run_in_order(conn, statements, fmt, single_transaction, out, advance)
        else:
            pool = _Pool(nodes, connect_options, workers)
            try:
                count, failures = _run_parallel(conn, pool, statements, fmt, out, advance)
            finally:
                pool.close()
        if total is not None:
            progress.update(task, completed=total)
    elapsed = time.perf_counter() - started
    rate = count / elapsed if elapsed else 0.0
    summary = f"{count} statements in {elapsed:.2f} s ({rate:,.0f}/s), {len(failures)} failed"
    if in_order and failures:
        summary += "; stopped at the first error"
        if single_transaction:
            summary += ", the transaction is rolled back"
    # soft_wrap: one line per failure, not cut at 80 columns when stderr is a file or a pipe
    console.print(summary, markup=False, soft_wrap=True)
    for statement, error in failures[:10]:
        console.print(
            f"  statement {statement[0]} (line {statement[1]}): {error}",
            style="red",
            markup=False,
            soft_wrap=True,
        )
    return 1 if failures else 0


class _Pool:
    """The worker processes, started when the first run of parallel statements needs them."""

    def __init__(self, nodes: list[str], options: dict[str, Any], workers: int) -> None:
        self.nodes, self.options, self.workers = nodes, options, workers
        self.conn: Any = None

    def get(self) -> Any:
        """The AsyncDistributedConnection, started on first use."""
        if self.conn is None:
            self.conn = exdb.connect(
                nodes=self.nodes, **{"async": True, "nWorkers": self.workers}, **self.options
            )
        return self.conn

    def close(self) -> None:
        """Stop the workers, if started."""
        if self.conn is not None:
            self.conn.close()


def _run_here(conn: Any, sql: str) -> Any:
    """One statement on this process's connection: a ResultSet, a rowcount or the exception."""
    cur = conn.cursor()
    try:
        cur.execute(sql)
        if cur.description is None:
            return cur.rowcount
        return exdb.ResultSet(
            [d[0] for d in cur.description], [d[1] for d in cur.description], cur.fetchall()
        )
    except exdb.Error as exc:
        return exc
    finally:
        cur.close()


def _run_parallel(
    here: Any,
    pool: _Pool,
    statements: Iterator[Statement],
    fmt: str,
    out: TextIO,
    advance: Any,
) -> tuple[int, list[tuple[tuple[int, int], BaseException]]]:
    failures: list[tuple[tuple[int, int], BaseException]] = []
    count = 0
    for batch in _batches(statements):
        first = count

        def done(index: int, outcome: Any, batch: list[Statement] = batch) -> None:
            advance(batch[index])

        if pool.conn is None and len(batch) == 1 and parallel_class(batch[0]) is None:
            outcomes = [_run_here(here, batch[0].sql)]
            done(0, outcomes[0])
        else:
            outcomes = pool.get().execute(
                [s.sql for s in batch], return_exceptions=True, on_result=done
            )
        count += len(batch)
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, BaseException):
                failures.append(((first + i + 1, batch[i].line), outcome))
            elif fmt != "none" and isinstance(outcome, exdb.ResultSet):
                write_result(out, outcome.columns, outcome, fmt)
        out.flush()
    return count, failures


def _run_in_order(
    conn: Any,
    statements: Iterator[Statement],
    fmt: str,
    single_transaction: bool,
    out: TextIO,
    advance: Any,
) -> tuple[int, list[tuple[tuple[int, int], BaseException]]]:
    from exdb.shell.session import Shell

    failures: list[tuple[tuple[int, int], BaseException]] = []
    count = 0
    shell = Shell(
        conn,
        fmt="plain" if fmt == "none" else fmt,
        out=out if fmt != "none" else io.StringIO(),
        err=io.StringIO(),  # errors are reported in the summary
        single_transaction=single_transaction,
        status=False,
    )
    for statement in statements:
        count += 1
        try:
            shell.execute(statement)
        except exdb.Error as exc:
            failures.append(((count, statement.line), exc))
            break
        finally:
            advance(statement)
    if single_transaction and failures:
        conn.rollback()
    else:
        try:
            conn.commit()
        except exdb.Error as exc:
            failures.append(((count, 0), exc))
    return count, failures
