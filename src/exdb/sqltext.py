"""Reading a statement's text without parsing it: shared by the server and the client, and
importing nothing else."""

from __future__ import annotations

__all__ = ["first_keyword"]


def first_keyword(sql: str) -> str:
    """The statement's first keyword, upper-cased, skipping comments; no SQL parsing beyond that."""
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace() or ch == ";" or ch == "(":
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            j = i
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            return sql[i:j].upper()
    return ""
