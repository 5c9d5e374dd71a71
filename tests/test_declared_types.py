"""A column's type as SQLite records it decides its affinity, and the affinity decides where a
key is placed and what a TEMP copy of the column holds. sqlglot's rendering of a type can
change it (STRING is NUMERIC to SQLite, TEXT once rendered): exdb reads types as SQLite does.
Differential against one sqlite3 holding every row."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

import exdb
from exdb.cluster import LocalCluster
from exdb.distributed.placement import affinity


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Any, sqlite3.Connection]]:
    with LocalCluster(3) as cluster:
        dist = exdb.connect(nodes=cluster.nodes, autocommit=True)
        plain = sqlite3.connect(":memory:")
        for conn in (dist, plain):
            conn.execute("CREATE TABLE k (s STRING PRIMARY KEY, v INTEGER)")
            conn.executemany(
                "INSERT INTO k VALUES (?, ?)",
                [("07", 1), ("8", 2), (" 9", 3), ("1e1", 4), ("x", 5), ("5.0", 6)],
            )
            conn.execute("CREATE TABLE w (wid INTEGER PRIMARY KEY, w TEXT, n NUMERIC)")
            conn.executemany(
                "INSERT INTO w VALUES (?, ?, ?)",
                [(1, "7", "5"), (2, "08", 5.0), (3, "x", "a"), (4, "10", None)],
            )
        try:
            yield dist, plain
        finally:
            dist.close()
            plain.close()


def test_affinity_follows_sqlite() -> None:
    assert affinity("STRING") == "NUMERIC"
    assert affinity("VARCHAR(10)") == "TEXT"
    assert affinity("DECIMAL(10, 2)") == "NUMERIC"
    assert affinity("FLOATING POINT") == "INTEGER"  # "INT" comes first, as in SQLite


@pytest.mark.parametrize(
    "sql, params",
    [
        ("SELECT v FROM k WHERE s = ?", (7,)),
        ("SELECT v FROM k WHERE s = ?", ("7",)),
        ("SELECT v FROM k WHERE s = ?", ("07",)),
        ("SELECT v FROM k WHERE s = ?", (10,)),
        ("SELECT v FROM k WHERE s IN (9, 5)", ()),
        ("SELECT s, typeof(s) FROM k ORDER BY v", ()),
        # a join not on the keys: one side moves to the other's shards as a TEMP table
        ("SELECT k.v, w.wid FROM k JOIN w ON k.s = w.w ORDER BY 1, 2", ()),
        ("SELECT w.wid, w.n, typeof(w.n) FROM k JOIN w ON k.v = w.wid ORDER BY 1", ()),
    ],
)
def test_a_key_of_a_rendered_type_is_found(
    pair: tuple[Any, sqlite3.Connection], sql: str, params: tuple[Any, ...]
) -> None:
    dist, plain = pair
    assert dist.execute(sql, params).fetchall() == plain.execute(sql, params).fetchall()
