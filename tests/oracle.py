"""Differential testing: the same statements on an exdb cluster and on one plain database."""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import exdb

SCHEMA = [
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, cust INTEGER, amount REAL, qty INTEGER,"
    " tag TEXT)",
    "CREATE TABLE customers (cid INTEGER PRIMARY KEY, name TEXT, region TEXT)",
    "CREATE TABLE regions (region TEXT PRIMARY KEY, label TEXT)",
    "CREATE TABLE events (a INTEGER, b TEXT, v REAL)",
    "CREATE TABLE items (oid INTEGER, n INTEGER, price REAL, PRIMARY KEY (oid, n))",
    "CREATE TABLE empty_t (k INTEGER PRIMARY KEY, x INTEGER)",
]
PLACEMENT = [
    "SELECT create_reference_table('regions')",
    "SELECT create_distributed_table('items', 'oid')",
]


def rows_of_data() -> dict[str, list[tuple[Any, ...]]]:
    """Deterministic data with NULLs, duplicates across shards and skew."""
    tags = ["red", "green", None, "blue", "red"]
    orders = [
        (
            i,
            None if i % 11 == 0 else i % 7,
            None if i % 13 == 0 else round(i * 1.25 % 50, 2),
            i % 5 if i % 17 else None,
            tags[i % 5],
        )
        for i in range(1, 121)
    ]
    customers = [(c, f"c{c}", ["north", "south", None, "east"][c % 4]) for c in range(0, 9)]
    regions = [("north", "N"), ("south", "S"), ("east", "E"), ("west", "W")]
    events = [(i % 6 if i % 9 else None, f"e{i % 4}", i * 0.5) for i in range(60)]
    items = [(o, n, round((o * n) % 17 + 0.5, 2)) for o in range(1, 121, 3) for n in range(1, 4)]
    return {
        "orders": orders,
        "customers": customers,
        "regions": regions,
        "events": events,
        "items": items,
        "empty_t": [],
    }


def load(conn: Any, distributed: bool) -> None:
    """Create the schema and load the data through a DB-API connection."""
    cur = conn.cursor()
    for ddl in SCHEMA:
        cur.execute(ddl)
    if distributed:
        for call in PLACEMENT:
            cur.execute(call)
    for table, rows in rows_of_data().items():
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            cur.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    conn.commit()


def plain_database(engine: str) -> Any:
    """The oracle: one in-process database of the engine."""
    if engine == "sqlite":
        return sqlite3.connect(":memory:")
    import duckdb

    return duckdb.connect(":memory:")


def _close(a: Any, b: Any) -> bool:
    """Equal values of the same type; floats within a tolerance (shards sum in another order)."""
    if a is None or b is None:
        return a is None and b is None
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def _norm(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


def same_rows(got: Sequence[Sequence[Any]], want: Sequence[Sequence[Any]], ordered: bool) -> bool:
    """Rows equal (floats within tolerance); as multisets unless ``ordered``."""
    if len(got) != len(want):
        return False
    if not ordered:
        key = lambda r: tuple((v is None, str(type(v)), _norm(v)) for v in r)  # noqa: E731
        got = sorted(got, key=key)
        want = sorted(want, key=key)
    return all(
        len(g) == len(w) and all(_close(a, b) for a, b in zip(g, w, strict=True))
        for g, w in zip(got, want, strict=True)
    )


def run_both(
    dist: Any, plain: Any, sql: str, params: Sequence[Any] | None = None
) -> tuple[Any, Any]:
    """(distributed outcome, plain outcome): (names, rows, rowcount) or the exception class."""
    outcomes = []
    for conn in (dist, plain):
        try:
            cur = conn.cursor()
            cur.execute(sql, params) if params is not None else cur.execute(sql)
            names = [d[0] for d in cur.description] if cur.description else None
            rows = [tuple(r) for r in cur.fetchall()] if names is not None else []
            outcomes.append((names, rows, cur.rowcount if names is None else -1))
        except Exception as exc:
            outcomes.append(exc)
    return outcomes[0], outcomes[1]


def check(
    dist: Any,
    plain: Any,
    sql: str,
    params: Sequence[Any] | None = None,
    ordered: bool | None = None,
    names: bool = True,
) -> None:
    """Assert that the cluster answers as the plain database does."""
    got, want = run_both(dist, plain, sql, params)
    if isinstance(want, Exception):
        assert isinstance(got, exdb.Error), f"{sql}: plain failed with {want!r}, exdb gave {got!r}"
        return
    assert not isinstance(got, Exception), f"{sql}: exdb raised {got!r}; plain gave {want!r}"
    if ordered is None:
        ordered = "ORDER BY" in sql.upper().rsplit(")", 1)[-1]
    assert same_rows(got[1], want[1], ordered), (
        f"{sql}\n exdb:  {got[1][:20]}\n plain: {want[1][:20]}"
    )
    if names:
        assert got[0] == want[0], f"{sql}: columns {got[0]} != {want[0]}"
    if want[0] is None:
        assert got[2] == want[2], f"{sql}: rowcount {got[2]} != {want[2]}"


def counter(rows: Iterable[Sequence[Any]]) -> Counter[tuple[Any, ...]]:
    """A multiset of rows."""
    return Counter(tuple(r) for r in rows)
