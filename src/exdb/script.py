"""``exdb run``: many statements from a file, on worker processes, with a progress bar that
only the parent process draws."""

from __future__ import annotations

import time
from typing import Any

import sqlglot
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from sqlglot.tokens import TokenType  # type: ignore[attr-defined]

import exdb

__all__ = ["run_script", "split_statements"]


def split_statements(text: str) -> list[str]:
    """Statements of a script, split at top-level semicolons (found by sqlglot's tokenizer, so a
    semicolon inside a string or a comment does not split)."""
    cuts = [t.start for t in sqlglot.tokenize(text) if t.token_type == TokenType.SEMICOLON]
    out, start = [], 0
    for cut in [*cuts, len(text)]:
        statement = text[start:cut].strip()
        if statement and any(not line.strip().startswith("--") for line in statement.splitlines()):
            out.append(statement)
        start = cut + 1
    return out


_BARRIERS = {"CREATE", "DROP", "ALTER"}


def _is_barrier(sql: str) -> bool:
    tokens = sqlglot.tokenize(sql)
    first = tokens[0].text.upper() if tokens else ""
    low = sql.lower()
    return (
        first in _BARRIERS or "create_distributed_table" in low or "create_reference_table" in low
    )


def _segments(statements: list[str]) -> list[tuple[int, list[str]]]:
    """Runs of statements that may run in parallel, with their offsets. DDL (and the placement
    functions) runs alone, after everything before it and before everything after it."""
    out: list[tuple[int, list[str]]] = []
    alone = True  # the last segment takes no more statements
    for i, sql in enumerate(statements):
        barrier = _is_barrier(sql)
        if barrier or alone:
            out.append((i, [sql]))
        else:
            out[-1][1].append(sql)
        alone = barrier
    return out


def run_script(nodes: list[str], text: str, workers: int, password: str | None = None) -> int:
    """Run a script's statements in parallel; print a summary; 0 if all succeeded."""
    console = Console(stderr=True)
    statements = split_statements(text)
    options: dict[str, Any] = {"async": True, "nWorkers": workers}
    if password:
        options["password"] = password
    errors: list[tuple[int, BaseException]] = []
    started = time.perf_counter()
    with (
        exdb.connect(nodes=nodes, **options) as conn,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task(f"{workers} workers", total=len(statements))

        for offset, batch in _segments(statements):

            def done(index: int, outcome: Any, offset: int = offset) -> None:
                if isinstance(outcome, BaseException):
                    errors.append((offset + index, outcome))
                progress.advance(task)

            conn.execute(batch, return_exceptions=True, on_result=done)
    elapsed = time.perf_counter() - started
    rate = len(statements) / elapsed if elapsed else 0.0
    console.print(
        f"{len(statements)} statements in {elapsed:.2f} s ({rate:,.0f}/s), {len(errors)} failed"
    )
    for index, error in sorted(errors, key=lambda e: e[0])[:10]:
        console.print(f"  statement {index + 1}: {error}", style="red", markup=False)
    return 1 if errors else 0
