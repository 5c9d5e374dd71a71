"""Golden routing and rewrite fixtures: SQL in, the plan out (nodes, per-shard SQL, merge).

Each file in tests/fixtures/ holds cases::

    -- case: a short name
    SELECT ...
    -- expect:
    -- plan: scatter
    -- ...

The catalog is the differential schema of oracle.py on 2 SQLite shards, built without any
server. ``EXDB_UPDATE_GOLDEN=1 pytest tests/test_golden.py`` rewrites the expectations; review
the diff before committing it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import sqlglot

from exdb.distributed.catalog import table_from_create
from exdb.distributed.execute import Engine

from oracle import SCHEMA

FIXTURES = Path(__file__).parent / "fixtures"


def offline_engine() -> Engine:
    """A 2-shard SQLite engine whose catalog is the differential schema."""
    engine = Engine(2, "sqlite")
    for ddl in SCHEMA:
        engine.catalog.put(table_from_create(sqlglot.parse_one(ddl, read="sqlite"), ddl))
    regions = engine.catalog.get("regions")
    items = engine.catalog.get("items")
    assert regions is not None and items is not None
    regions.kind, regions.column = "reference", None
    items.column = "oid"
    return engine


def read_cases(path: Path) -> list[tuple[str, str, str]]:
    """(name, sql, expected plan text) for each case of a fixture file."""
    cases = []
    for block in path.read_text().split("-- case: ")[1:]:
        name, _, rest = block.partition("\n")
        sql, _, expected = rest.partition("-- expect:\n")
        plan = "\n".join(line[3:] for line in expected.strip().splitlines())
        cases.append((name.strip(), sql.strip(), plan))
    return cases


def write_cases(path: Path, cases: list[tuple[str, str, str]]) -> None:
    """Write cases back with fresh expectations."""
    out = [path.read_text().split("-- case: ")[0].rstrip() + "\n"] if path.exists() else []
    for name, sql, plan in cases:
        body = "\n".join("-- " + line for line in plan.splitlines())
        out.append(f"\n-- case: {name}\n{sql}\n-- expect:\n{body}\n")
    path.write_text("".join(out).lstrip("\n"))


CASES = [
    pytest.param(path, name, sql, plan, id=f"{path.stem}:{name}")
    for path in sorted(FIXTURES.glob("*.sql"))
    for name, sql, plan in read_cases(path)
]


def test_fixtures_exist() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(("path", "name", "sql", "plan"), CASES)
def test_plan(path: Path, name: str, sql: str, plan: str) -> None:
    engine = offline_engine()
    try:
        # Intermediate results are numbered per process: the fixtures show them as exdb_ir_N.
        got = re.sub(r"exdb_ir_\d+", "exdb_ir_N", engine.explain(sql))
    finally:
        engine.close()
    if os.environ.get("EXDB_UPDATE_GOLDEN"):
        cases = [(n, s, got if n == name else p) for n, s, p in read_cases(path)]
        write_cases(path, cases)
        return
    assert got == plan, f"\n--- expected\n{plan}\n--- got\n{got}"
