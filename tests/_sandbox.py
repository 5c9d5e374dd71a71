"""Helpers of the sandbox tests: rows committed before an attack, and a look at them after."""

from __future__ import annotations

from typing import Any

import exdb

KEPT = [(k, f"kept-{k}") for k in range(20)]


def seed(node: str) -> None:
    """Commit the KEPT rows into a new table ``kept`` on ``node``."""
    with exdb.connect(node) as conn:
        conn.execute("CREATE TABLE kept (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        conn.executemany("INSERT INTO kept VALUES (?, ?)", KEPT)
        conn.commit()


def kept(conn: Any) -> list[tuple[Any, ...]]:
    """The rows of ``kept``, in key order."""
    return [tuple(r) for r in conn.execute("SELECT k, v FROM kept ORDER BY k").fetchall()]
