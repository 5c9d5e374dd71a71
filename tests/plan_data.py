"""Random data for the window, set-operation and gather tests: NULLs, ties and duplicates, in
tables placed every way (by key, by a non-key column, keyless, reference)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import exdb
from exdb.cluster import LocalCluster

from oracle import plain_database

SCHEMA = [
    "CREATE TABLE sales (id INTEGER PRIMARY KEY, cust INTEGER, region TEXT, amount REAL,"
    " qty INTEGER)",
    "CREATE TABLE archive (id INTEGER PRIMARY KEY, cust INTEGER, region TEXT, amount REAL,"
    " qty INTEGER)",
    "CREATE TABLE returns (rid INTEGER PRIMARY KEY, cust INTEGER, amount REAL, reason TEXT)",
    "CREATE TABLE visits (vid INTEGER, cust INTEGER, ts INTEGER, score REAL)",
    "CREATE TABLE tags (cust INTEGER, tag TEXT)",
    "CREATE TABLE zones (region TEXT PRIMARY KEY, label TEXT)",
    "CREATE TABLE notes (k TEXT PRIMARY KEY, cust INTEGER)",
]
PLACEMENT = [
    "SELECT create_distributed_table('visits', 'cust')",
    "SELECT create_reference_table('zones')",
]
REGIONS = ["north", "south", "east", None, "west"]
REASONS = ["late", "broken", None, "wrong"]


def _maybe(rng: random.Random, value: Any, tenths: int = 1) -> Any:
    return None if rng.randrange(10) < tenths else value


def rows(seed: int) -> dict[str, list[tuple[Any, ...]]]:
    """Each table's rows: small pools of values (ties, duplicates across tables), NULLs, and
    floats that are multiples of 1/4 (sums exact in any order)."""
    rng = random.Random(seed)

    def sale(i: int) -> tuple[Any, ...]:
        return (
            i,
            _maybe(rng, rng.randrange(12)),
            rng.choice(REGIONS),
            _maybe(rng, rng.randrange(40) / 4),
            _maybe(rng, rng.randrange(5)),
        )

    sales = [sale(i) for i in range(1, 241)]
    # archive: a third are copies of sales rows (equal rows on the same shard), the rest new
    archive = [r for r in sales if r[0] % 3 == 0] + [sale(i) for i in range(300, 380)]
    returns = [
        (
            i,
            _maybe(rng, rng.randrange(12)),
            _maybe(rng, rng.randrange(40) / 4),
            rng.choice(REASONS),
        )
        for i in range(1, 121)
    ]
    visits = [
        (i % 50, _maybe(rng, rng.randrange(15)), rng.randrange(20), rng.randrange(8) / 2)
        for i in range(200)
    ]
    tags = [(_maybe(rng, rng.randrange(12)), rng.choice(["a", "b", "c", None])) for _ in range(90)]
    zones = [("north", "N"), ("south", "S"), ("east", "E"), ("west", "W"), ("up", None)]
    notes = [(str(i), _maybe(rng, rng.randrange(12))) for i in range(0, 30)]
    return {
        "sales": sales,
        "archive": archive,
        "returns": returns,
        "visits": visits,
        "tags": tags,
        "zones": zones,
        "notes": notes,
    }


def load(conn: Any, distributed: bool, seed: int) -> None:
    """Create the schema and load the rows through a DB-API connection."""
    cur = conn.cursor()
    for ddl in SCHEMA:
        cur.execute(ddl)
    if distributed:
        for call in PLACEMENT:
            cur.execute(call)
    for table, data in rows(seed).items():
        marks = ", ".join("?" * len(data[0]))
        cur.executemany(f"INSERT INTO {table} VALUES ({marks})", data)
    conn.commit()


CLUSTERS = [("sqlite", 2), ("sqlite", 3), ("duckdb", 2)]


def loaded_pair(engine: str, shards: int, seed: int) -> Iterator[tuple[Any, Any, str]]:
    """A loaded cluster and a plain database of the same engine holding the same rows."""
    with LocalCluster(shards, engine=engine) as cluster:
        dist = exdb.connect(nodes=cluster.nodes)
        plain = plain_database(engine)
        try:
            load(dist, True, seed)
            load(plain, False, seed)
            yield dist, plain, engine
        finally:
            dist.close()
            plain.close()
