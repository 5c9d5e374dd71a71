"""Stage 1, parse: SQL text -> a sqlglot tree, cached by statement text.

Parameters stay parameters. Each ``?`` becomes a named placeholder ``:pN`` (N counts from 1 in
text order) by position in sqlglot's token stream, so that rewritten SQL can move, copy or drop
them and still bind each value to its own place. Values are never pasted into SQL.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType  # type: ignore[attr-defined]

from exdb.distributed.files import check_unparsed
from exdb.errors import NotSupportedError, ProgrammingError

__all__ = [
    "Parsed",
    "SqlSyntaxError",
    "bind_names",
    "node_prefix",
    "parse",
    "placeholder_names",
]


class SqlSyntaxError(ProgrammingError):
    """exdb's SQL parser (sqlglot) cannot read the statement; the message says where, in a
    user's words. The distributed engine then asks a node's engine whether the statement is
    wrong (ProgrammingError, with the engine's own message) or only beyond exdb's parser
    (NotSupportedError); see exdb.distributed.execute.Engine.run."""

    __module__ = "exdb"


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
        raise _token_error(sql, exc) from None
    marks = [t for t in tokens if t.token_type == TokenType.PLACEHOLDER and t.text == "?"]
    text = sql
    sigil = "$" if dialect == "duckdb" else ":"  # each dialect's named-parameter syntax
    # A space after each name: DuckDB's tokenizer reads "$p1,$p2" as a dollar-quoted string.
    shifts: list[tuple[int, int]] = []  # (offset in ``sql``, characters added there)
    for i, token in reversed(list(enumerate(marks, 1))):
        name = f"{sigil}p{i} "
        text = text[: token.start] + name + text[token.end + 1 :]
        shifts.append((token.start, len(name) - (token.end + 1 - token.start)))
    _check_trigger(tokens, sql)
    try:
        trees = [
            t for t in sqlglot.parse(text, read="sqlite" if dialect == "sqlite" else dialect) if t
        ]
    except ParseError as exc:
        check_unparsed(sql)  # EXPORT/IMPORT DATABASE: refused as such, not as a syntax error
        raise _parse_error(sql, text, shifts, exc) from None
    except TokenError as exc:
        raise _token_error(sql, exc) from None
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
    trigger = words[:1] == ["CREATE"] and "TRIGGER" in words[1:3]
    if trigger and words[1] in ("TRIGGER", "TEMP", "TEMPORARY"):
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


def _position(sql: str, offset: int) -> str:
    """``line L, column C`` of a 0-based offset in ``sql`` (both 1-based)."""
    offset = max(0, min(offset, len(sql)))
    line = sql.count("\n", 0, offset) + 1
    column = offset - (sql.rfind("\n", 0, offset) + 1) + 1
    where = f"line {line}, column {column}"
    return where + " (the end of the statement)" if not sql[offset:].strip() else where


_MISSING_DELIMITER = re.compile(r"Missing (\S+) from \d+:(\d+)")


def _token_error(sql: str, exc: TokenError) -> SqlSyntaxError:
    """A tokenizer failure in words: an unterminated string, name or comment, and where."""
    cause = str(exc.__cause__ or "")
    missing = _MISSING_DELIMITER.search(cause)
    if missing is not None:
        delimiter, offset = missing.group(1), int(missing.group(2))
        what = f"a closing {delimiter} is missing: the text that starts here never ends"
        return SqlSyntaxError(f"syntax error at {_position(sql, offset)}: {what}", statement=sql)
    return SqlSyntaxError(
        f"syntax error at {_position(sql, len(sql))}: the statement ends inside a comment,"
        " a string or a quoted name",
        statement=sql,
    )


def _parse_error(
    sql: str, text: str, shifts: list[tuple[int, int]], exc: ParseError
) -> SqlSyntaxError:
    """A parser failure in words: where (in the statement as written, before its ``?`` were
    renamed), near which token, and what was expected; never the parser's internals."""
    if not exc.errors:
        return SqlSyntaxError("syntax error: exdb cannot read this statement", statement=sql)
    error = exc.errors[0]
    near = str(error.get("highlight") or "")
    # Where the token starts, by the text quoted before it (sqlglot's line numbers are not
    # reliable for every dialect); else at the end.
    before = str(error.get("start_context") or "")
    found = text.find(before + near)
    offset = found + len(before) if found >= 0 else len(text)
    offset -= sum(added for at, added in shifts if at < offset)
    description = str(error.get("description") or "")
    at_end = not sql[offset + len(near) :].strip()
    if description.startswith(("Expecting ", "Expected ")) and "<class" not in description:
        what = "expected " + description.split(" ", 1)[1]
    elif description.startswith("Required keyword"):
        what = "the statement ends too early" if at_end else "a required part is missing here"
    elif "Unexpected token" in description or "Invalid expression" in description:
        what = "unexpected token"
    else:
        what = "exdb cannot read the statement here"  # never the parser's internals
    where = _position(sql, offset)
    quoted = f' near "{near}"' if near and len(near) <= 40 else ""
    return SqlSyntaxError(f"syntax error at {where}{quoted}: {what}", statement=sql)


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
