"""A large executemany INSERT on a SQLite shard (the bulk path copy_from takes) reports the
rows it changed exactly as sqlite3 does, whatever the schema around the table: the server runs
it without a Python call a row only where total_changes() cannot count more than changes()."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest

import exdb
from exdb.cluster import ServerProcess

ROWS = [(i % 150, f"v{i}") for i in range(300)]  # 300 rows, 150 distinct keys

SCHEMAS: dict[str, tuple[list[str], str]] = {
    "plain": (["CREATE TABLE t (k INTEGER, v TEXT)"], "INSERT INTO t VALUES (?, ?)"),
    "or ignore": (
        ["CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"],
        "INSERT OR IGNORE INTO t VALUES (?, ?)",
    ),
    "table-level ON CONFLICT IGNORE": (
        ["CREATE TABLE t (k INTEGER PRIMARY KEY ON CONFLICT IGNORE, v TEXT)"],
        "INSERT INTO t VALUES (?, ?)",
    ),
    "or replace": (
        ["CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"],
        "INSERT OR REPLACE INTO t VALUES (?, ?)",
    ),
    "upsert": (
        ["CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"],
        "INSERT INTO t VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v || 'x'",
    ),
    "insert select, some rows": (
        ["CREATE TABLE t (k INTEGER, v TEXT)"],
        "INSERT INTO t SELECT ?, ? WHERE 1 = 1 AND random() IS NOT NULL LIMIT 1",
    ),
    "trigger": (
        [
            "CREATE TABLE t (k INTEGER, v TEXT)",
            "CREATE TABLE log (k INTEGER)",
            "CREATE TRIGGER t_log AFTER INSERT ON t BEGIN INSERT INTO log VALUES (new.k);"
            " INSERT INTO log VALUES (new.k); END",
        ],
        "INSERT INTO t VALUES (?, ?)",
    ),
    "temp trigger": (
        [
            "CREATE TABLE t (k INTEGER, v TEXT)",
            "CREATE TEMP TABLE log (k INTEGER)",
            "CREATE TEMP TRIGGER t_log AFTER INSERT ON t BEGIN INSERT INTO log VALUES (new.k); END",
        ],
        "INSERT INTO t VALUES (?, ?)",
    ),
    "fts5": (["CREATE VIRTUAL TABLE t USING fts5(k, v)"], "INSERT INTO t VALUES (?, ?)"),
    "foreign key cascade": (
        [
            "PRAGMA foreign_keys = ON",
            "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)",
            "CREATE TABLE child (k INTEGER REFERENCES t (k) ON DELETE CASCADE)",
            "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
            "INSERT INTO child VALUES (1), (1), (2)",
        ],
        "INSERT OR REPLACE INTO t VALUES (?, ?)",
    ),
}


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_bulk_insert_rowcount_matches_sqlite3(
    name: str, start_server: Callable[..., ServerProcess]
) -> None:
    setup, sql = SCHEMAS[name]
    oracle = sqlite3.connect(":memory:")
    for statement in setup:
        oracle.execute(statement)
    want = oracle.executemany(sql, ROWS).rowcount
    want_rows = sorted(oracle.execute("SELECT * FROM t").fetchall())
    server = start_server("--engine", "sqlite")
    with exdb.connect(server.node, autocommit=True) as conn:
        for statement in setup:
            conn.execute(statement)
        cur = conn.cursor()
        cur.executemany(sql, ROWS)
        assert cur.rowcount == want
        assert sorted(conn.execute("SELECT * FROM t").fetchall()) == want_rows
        if name == "foreign key cascade":  # the cascade ran, and was not counted
            assert conn.execute("SELECT count(*) FROM child").fetchone() == (0,)
