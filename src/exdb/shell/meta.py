"""The shell's backslash meta-commands: ``\\d``, ``\\timing``, ``\\explain``, ``\\copy``, ...

Each takes the rest of its line; an error raises an :class:`exdb.Error` the shell reports.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from exdb.errors import NotSupportedError, ProgrammingError
from exdb.shell.output import FORMATS, write_result

if TYPE_CHECKING:
    from exdb.shell.session import Shell

__all__ = ["HELP", "CopyCommand", "parse_copy", "run_meta"]

HELP = """\
  \\d                 list the tables: kind and distribution
  \\d TABLE           a table's columns, key and distribution
  \\timing [on|off]   show how long each statement takes
  \\format [FORMAT]   output format: table, plain, csv or json
  \\explain SQL       how SQL would run: the nodes, each shard's SQL, the merge
  \\copy TABLE [(COLUMNS)] FROM 'file.csv' [WITH CSV HEADER] [DELIMITER 'c']
  \\copy TABLE|(QUERY) TO 'file.csv' [WITH CSV HEADER] [DELIMITER 'c']
                     client-side CSV: the file is read or written here, not on the nodes
  \\i FILE            run the statements of FILE
  \\q                 quit (Ctrl-D too)
  \\?                 this help
A statement ends with ';' (Enter before it continues the statement on a new line).
BEGIN, COMMIT and ROLLBACK open and end a transaction; otherwise each statement commits."""


def run_meta(shell: Shell, line: str) -> None:
    """Run one meta-command line (it starts with a backslash)."""
    from exdb.shell.session import Quit

    name, _, arg = line.strip().partition(" ")
    arg = arg.strip()
    name = name.lower()
    if name in ("\\q", "\\quit"):
        raise Quit
    handler = _COMMANDS.get(name)
    if handler is None:
        raise ProgrammingError(f"unknown meta-command {name}: \\? lists them")
    handler(shell, arg)


def _help(shell: Shell, arg: str) -> None:
    shell.out.write(HELP + "\n")


def _timing(shell: Shell, arg: str) -> None:
    value = arg.lower().rstrip(";")
    if value in ("", "toggle"):
        shell.timing = not shell.timing
    elif value in ("on", "off"):
        shell.timing = value == "on"
    else:
        raise ProgrammingError(f"\\timing takes on or off, not {arg!r}")
    shell.out.write(f"Timing is {'on' if shell.timing else 'off'}.\n")


def _format(shell: Shell, arg: str) -> None:
    value = arg.lower().rstrip(";")
    if value:
        if value not in FORMATS:
            raise ProgrammingError(f"\\format takes one of {', '.join(FORMATS)}, not {arg!r}")
        shell.fmt = value
    shell.out.write(f"Output format is {shell.fmt}.\n")


def _explain(shell: Shell, arg: str) -> None:
    sql = arg.rstrip().rstrip(";")
    if not sql:
        raise ProgrammingError("\\explain needs a statement: \\explain SELECT ...")
    shell.out.write(shell.conn.explain(sql) + "\n")


def _include(shell: Shell, arg: str) -> None:
    path = _unquote(arg.rstrip(";")) if arg.startswith("'") else arg.rstrip(";")
    if not path:
        raise ProgrammingError("\\i needs a file name")
    if shell.run_file(path):
        raise ProgrammingError(f"{path}: a statement failed")


# --- \d ---------------------------------------------------------------------------------------


def _catalog(shell: Shell) -> Any:
    """The connection's catalog, read again from the nodes (other clients may have changed it)."""
    conn = shell.conn
    conn._drive(conn.engine.load_catalog())
    return conn.engine.catalog


def primary_key(ddl: str, dialect: str) -> list[str]:
    """The PRIMARY KEY columns of a CREATE TABLE statement."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(ddl, read=dialect)
    schema = tree.this if isinstance(tree, exp.Create) else None
    if not isinstance(schema, exp.Schema):
        return []
    keys: list[str] = []
    for item in schema.expressions:
        if isinstance(item, exp.ColumnDef):
            for constraint in item.args.get("constraints") or []:
                if isinstance(constraint.args.get("kind"), exp.PrimaryKeyColumnConstraint):
                    keys.append(item.name)
        elif isinstance(item, exp.PrimaryKey):
            keys.extend(e.name for e in item.expressions)
    return keys


def distribution(info: Any) -> str:
    """How a table's rows are placed, in words."""
    if info.kind == "distributed":
        return f"distributed by hash({info.column})"
    if info.kind == "reference":
        return "reference (a full copy on every node)"
    return "keyless (rows spread round-robin)"


def _describe(shell: Shell, arg: str) -> None:
    catalog = _catalog(shell)
    name = arg.rstrip(";").strip().strip('"')
    if not name:
        tables: list[tuple[Any, ...]] = [
            (t.name, t.kind, t.column if t.kind == "distributed" else None, len(t.columns))
            for t in sorted(catalog.tables.values(), key=lambda t: t.name)
        ]
        write_result(shell.out, ["table", "kind", "distributed by", "columns"], tables, shell.fmt)
        return
    info = catalog.get(name)
    if info is None:
        raise ProgrammingError(f"no table named {name}: \\d lists the tables")
    keys = primary_key(info.ddl[0], shell.conn.engine.engine) if info.ddl else []
    rows = [
        (column, declared, "PRIMARY KEY" if column in keys else "")
        for column, declared in info.columns
    ]
    write_result(shell.out, ["column", "type", "key"], rows, shell.fmt)
    if shell.fmt in ("table", "plain"):
        shell.out.write(f"Primary key: ({', '.join(keys)})\n" if keys else "No primary key\n")
        shell.out.write(f"Distribution: {distribution(info)}\n")


# --- \copy ------------------------------------------------------------------------------------


@dataclasses.dataclass
class CopyCommand:
    """A parsed ``\\copy``."""

    direction: str  # "from" | "to"
    table: str | None  # the table, or None for a query
    query: str | None  # the query of \copy (query) TO
    columns: list[str] | None
    path: str  # a file name, or "-" for standard input/output
    format: str = "csv"
    header: bool = False
    delimiter: str = ","


_COPY_TOKEN = re.compile(
    r"\s*(?:('(?:[^']|'')*')|([A-Za-z_][A-Za-z0-9_.]*)|(\"(?:[^\"]|\"\")*\")|(\S))"
)


def _unquote(text: str) -> str:
    return text[1:-1].replace("''", "'") if text.startswith("'") else text


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        m = _COPY_TOKEN.match(text, pos)
        if m is None:
            break
        out.append(m.group().strip())
        pos = m.end()
    return [t for t in out if t]


def _balanced(text: str) -> int:
    """The index just past the ')' that closes the '(' at text[0] (quotes respected)."""
    depth, i, quote = 0, 0, ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ProgrammingError("\\copy: the query's '(' is never closed")


def parse_copy(arg: str) -> CopyCommand:
    """Parse the text after ``\\copy``."""
    text = arg.strip().rstrip(";").strip()
    usage = (
        "\\copy TABLE [(COLUMNS)] FROM 'file' | \\copy TABLE|(QUERY) TO 'file' [WITH CSV HEADER]"
    )
    if not text:
        raise ProgrammingError(f"\\copy needs arguments: {usage}")
    table: str | None = None
    query: str | None = None
    columns: list[str] | None = None
    if text.startswith("("):
        end = _balanced(text)
        query = text[1 : end - 1].strip()
        rest = text[end:]
    else:
        m = re.match(r'\s*("(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_.$]*)', text)
        if m is None:
            raise ProgrammingError(f"\\copy: expected a table name or (query): {usage}")
        table = m.group(1)
        rest = text[m.end() :].lstrip()
        if rest.startswith("("):
            end = _balanced(rest)
            columns = [c.strip().strip('"') for c in rest[1 : end - 1].split(",") if c.strip()]
            rest = rest[end:]
    tokens = _tokens(rest)
    if not tokens or tokens[0].lower() not in ("from", "to"):
        raise ProgrammingError(f"\\copy: expected FROM or TO: {usage}")
    direction = tokens[0].lower()
    if query is not None and direction == "from":
        raise ProgrammingError("\\copy (query) FROM: a query can only be copied TO a file")
    if len(tokens) < 2:
        raise ProgrammingError(f"\\copy: expected a file name after {tokens[0].upper()}")
    target = tokens[1]
    path = "-" if target.lower() in ("stdin", "stdout", "pstdin", "pstdout") else _unquote(target)
    command = CopyCommand(direction, table, query, columns, path)
    options = [t for t in tokens[2:] if t not in ("(", ")", ",")]
    i = 0
    while i < len(options):
        word = options[i].lower()
        following = options[i + 1] if i + 1 < len(options) else None
        if word == "with":
            i += 1
        elif word == "csv":
            command.format = "csv"
            i += 1
        elif word == "format" and following is not None:
            command.format = _unquote(following).lower()
            i += 2
        elif word == "header":
            if following is not None and following.lower() in ("true", "false", "on", "off"):
                command.header = following.lower() in ("true", "on")
                i += 2
            else:
                command.header = True
                i += 1
        elif word == "delimiter" and following is not None:
            command.delimiter = _unquote(following)
            i += 2
        else:
            raise ProgrammingError(f"\\copy: unknown option {options[i]!r}: {usage}")
    if command.format != "csv":
        raise ProgrammingError(f"\\copy: only CSV is supported, not FORMAT {command.format}")
    if len(command.delimiter) != 1:
        raise ProgrammingError("\\copy: DELIMITER must be one character")
    return command


def _copy(shell: Shell, arg: str) -> None:
    command = parse_copy(arg)
    method = "copy_from" if command.direction == "from" else "copy_to"
    cur = shell.conn.cursor()
    if not hasattr(cur, method):
        cur.close()
        raise NotSupportedError(f"\\copy needs cursor.{method}(), which this exdb lacks")
    try:
        kwargs = {
            "format": command.format,
            "header": command.header,
            "delimiter": command.delimiter,
        }
        if command.direction == "from":
            count = _with_file(
                command.path,
                "r",
                sys.stdin,
                lambda f: cur.copy_from(f, command.table, command.columns, **kwargs),
            )
        else:
            what = command.query if command.query is not None else command.table
            count = _with_file(
                command.path, "w", shell.out, lambda f: cur.copy_to(f, what, **kwargs)
            )
    finally:
        cur.close()
    if command.path != "-" or command.direction == "from":
        shell.info.write(f"COPY {count}\n")


def _with_file(path: str, mode: str, std: IO[str], use: Callable[[IO[str]], Any]) -> Any:
    if path == "-":
        return use(std)
    try:
        f = open(path, mode, encoding="utf-8", newline="")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ProgrammingError(f"\\copy: cannot open {path}: {exc.strerror}") from None
    with f:
        return use(f)


_COMMANDS: dict[str, Callable[[Shell, str], None]] = {
    "\\?": _help,
    "\\h": _help,
    "\\help": _help,
    "\\d": _describe,
    "\\dt": _describe,
    "\\timing": _timing,
    "\\format": _format,
    "\\explain": _explain,
    "\\copy": _copy,
    "\\i": _include,
}

#: The meta-command names, for completion.
META_COMMANDS = sorted({*_COMMANDS, "\\q"})
