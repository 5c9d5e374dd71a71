"""Stage 1, parse: SQL text -> a sqlglot tree, cached by statement text.

Parameters stay parameters. Each ``?`` becomes a named placeholder ``:pN`` (N counts from 1 in
text order) by position in sqlglot's token stream, so that rewritten SQL can move, copy or drop
them and still bind each value to its own place. Values are never pasted into SQL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType  # type: ignore[attr-defined]

from exdb.dist.files import check_unparsed
from exdb.errors import NotSupportedError, ProgrammingError

__all__ = ["Parsed", "bind_names", "node_prefix", "parse", "placeholder_names"]


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A parsed statement: its tree (None when it is to run verbatim) and its parameter count."""

    text: str
    tree: exp.Expr | None
    n_params: int
    dialect: str


def node_prefix(sql: str) -> tuple[int | None, str]:
    """eXtremeSQL's ``N:`` prefix (1-based node number): ``"2:select 1"`` -> ``(2, "select 1")``."""
    stripped = sql.lstrip()
    digits = 0
    while digits < len(stripped) and stripped[digits].isdigit():
        digits += 1
    if digits and digits < len(stripped) and stripped[digits] == ":":
        return int(stripped[:digits]), stripped[digits + 1 :]
    return None, sql


@lru_cache(maxsize=2048)
def parse(sql: str, dialect: str) -> Parsed:
    """Parse one statement, with ``?`` placeholders numbered; cached by (text, dialect)."""
    try:
        tokens = sqlglot.tokenize(sql, read=dialect)
    except TokenError as exc:
        raise ProgrammingError(f"cannot tokenize the statement: {exc}", statement=sql) from None
    marks = [t for t in tokens if t.token_type == TokenType.PLACEHOLDER and t.text == "?"]
    text = sql
    sigil = "$" if dialect == "duckdb" else ":"  # each dialect's named-parameter syntax
    for i, token in reversed(list(enumerate(marks, 1))):
        text = text[: token.start] + f"{sigil}p{i}" + text[token.end + 1 :]
    _check_trigger(tokens, sql)
    try:
        trees = [
            t for t in sqlglot.parse(text, read="sqlite" if dialect == "sqlite" else dialect) if t
        ]
    except ParseError as exc:
        check_unparsed(sql)  # EXPORT/IMPORT DATABASE: refused as such, not as a syntax error
        raise ProgrammingError(
            f"syntax error: {exc.errors[0]['description'] if exc.errors else exc}", statement=sql
        ) from None
    if len(trees) != 1:
        raise ProgrammingError(
            f"expected one statement, got {len(trees)}: run statements one at a time",
            statement=sql,
        )
    tree = trees[0]
    if dialect == "sqlite":
        tree = _in_table_as_subquery(tree)
    return Parsed(sql, tree, len(marks), dialect)


_TRIGGER_REFUSAL = (
    "CREATE TRIGGER is not supported on a distributed connection: a trigger runs on the node"
    " that holds the row that fires it, so its body would read and write only that shard's rows"
    " (run it on one node on purpose with a node prefix, `1:CREATE TRIGGER ...`)"
)


def _check_trigger(tokens: Sequence[Any], sql: str) -> None:
    """Refuse CREATE [TEMP] TRIGGER, before its body's ``;`` reads as a second statement."""
    words = [t.text.upper() for t in tokens[:3]]
    if words[:1] == ["CREATE"] and "TRIGGER" in words[1:3]:
        if words[1] in ("TRIGGER", "TEMP", "TEMPORARY"):
            raise NotSupportedError(_TRIGGER_REFUSAL, statement=sql)


def _in_table_as_subquery(tree: exp.Expr) -> exp.Expr:
    """SQLite's ``x IN t`` (``IN schema.t``) names a table, which sqlglot reads as a column:
    written ``x IN (SELECT * FROM t)``, as SQLite defines it, so that the planner sees the table."""
    hidden = [
        node
        for node in tree.find_all(exp.In)
        if isinstance(node.args.get("field"), exp.Column)
        and not node.args["field"].args.get("catalog")
    ]
    if not hidden:
        return tree
    tree = tree.copy()
    for node in tree.find_all(exp.In):
        field = node.args.get("field")
        if not isinstance(field, exp.Column) or field.args.get("catalog"):
            continue
        table = exp.Table(this=field.this.copy())
        if field.args.get("table") is not None:
            table.set("db", field.args["table"].copy())
        select = exp.Select(expressions=[exp.Star()]).from_(table)
        node.set("field", None)
        node.set("query", exp.Subquery(this=select))
    return tree


def bind_names(params: Sequence[Any] | None, n_params: int, statement: str) -> dict[str, Any]:
    """The statement's positional parameters as the named parameters of its rewritten forms."""
    given = 0 if params is None else len(params)
    if given != n_params:
        raise ProgrammingError(
            f"the statement has {n_params} parameter(s) but {given} were supplied",
            statement=statement,
        )
    return {f"p{i}": v for i, v in enumerate(params or (), 1)}


def placeholder_names(tree: exp.Expr) -> list[str]:
    """The named placeholders a tree uses."""
    return [p.name for p in tree.find_all(exp.Placeholder)]
