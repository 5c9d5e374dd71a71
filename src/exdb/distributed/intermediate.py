"""Intermediate results: rows a plan computed (a join's smaller side, a subquery's answer, a side
re-hashed on a join key) pushed back to the shards as a TEMP table of each node's session, so
that the statement that reads them plans as if they were a table of the catalog.

Two kinds, as tables have:

- ``reference``: every shard holds all the rows (a broadcast join's side, a subquery's result);
- ``distributed``: each row lives on the shard of its ``column`` value, placed with
  :func:`exdb.distributed.placement.shard_of` under the column's affinity, so that it is
  co-located with a table distributed by a column of the same affinity (a repartition join).

A TEMP table belongs to one client's session on one node: other clients never see it, and it
never reaches the node's database file. Names are ``exdb_ir_<n>``, a counter that skips every
name the catalog knows. Every statement that creates one drops it again in a ``finally``
(:func:`drop`), before the statement returns, inside a user's transaction too.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from typing import Any

from exdb.distributed.catalog import Catalog, TableInfo
from exdb.distributed.placement import affinity, place_many
from exdb.distributed.plan.base import ShardCall

__all__ = ["Intermediate", "drop", "new_name", "push", "with_intermediates"]

_COUNTER = itertools.count(1)
_PREFIX = "exdb_ir_"


def new_name(catalog: Catalog) -> str:
    """A fresh intermediate-result name that no table or view of the catalog has."""
    while True:
        name = f"{_PREFIX}{next(_COUNTER)}"
        if catalog.get(name) is None and name not in catalog.views:
            return name


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclasses.dataclass
class Intermediate:
    """Rows pushed to the shards as a TEMP table of each node's session, planned as a table."""

    name: str  # e.g. "exdb_ir_7" (unique per engine: see new_name)
    columns: list[tuple[str, str | None]]  # (name, declared type or None)
    kind: str  # "reference": every shard holds all rows; "distributed": by ``column``
    column: str | None = None  # distribution column when kind == "distributed"
    #: Columns the statement reading it compares with another table's (its join keys): on
    #: SQLite each gets an index, as the table it stands for may have had one.
    indexed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("reference", "distributed"):
            raise ValueError(f"an intermediate result is reference or distributed, not {self.kind}")
        if self.kind == "distributed" and self.column_index() is None:
            raise ValueError(f"{self.name}: no column {self.column!r} to distribute by")

    def column_index(self) -> int | None:
        """Position of the distribution column (case-insensitive), or None."""
        if self.column is None:
            return None
        low = self.column.lower()
        for i, (name, _) in enumerate(self.columns):
            if name.lower() == low:
                return i
        return None

    def ddl(self, temp: bool = True) -> str:
        """The CREATE TABLE statement (TEMP on the shards; a plain table in a local replay)."""
        defs = ", ".join(
            _quote(name) + (f" {declared}" if declared else "") for name, declared in self.columns
        )
        return f"CREATE {'TEMP ' if temp else ''}TABLE {_quote(self.name)} ({defs})"

    def info(self) -> TableInfo:
        """A catalog entry (kind and column as above), so that route.analyse_select sees it as
        a reference table or as a table distributed (co-located) by ``column``."""
        return TableInfo(
            self.name,
            self.kind,
            self.column if self.kind == "distributed" else None,
            [(name, declared or "") for name, declared in self.columns],
            [self.ddl(temp=False)],
        )


def push(
    ir: Intermediate, rows: list[tuple[Any, ...]], shards: int, engine: str
) -> list[ShardCall]:
    """The shard calls that create the TEMP table on every shard and load its rows (placed with
    placement.shard_of on the column's affinity when distributed, so it co-locates with a table
    distributed by an equal-affinity column), one executemany per shard. The calls of one node
    run in order (CREATE, then INSERT)."""
    calls = [ShardCall(n, ir.ddl()) for n in range(shards)]
    if not rows:
        return calls
    marks = ", ".join("?" * len(ir.columns))
    insert = f"INSERT INTO {_quote(ir.name)} VALUES ({marks})"
    if ir.kind == "reference":
        calls += [ShardCall(n, insert, rows, many=True) for n in range(shards)]
        return calls + _indexes(ir, range(shards), engine)
    index = ir.column_index()
    assert index is not None
    declared = dict(ir.columns).get(ir.columns[index][0])
    places = place_many([row[index] for row in rows], affinity(declared), shards)
    parts: dict[int, list[tuple[Any, ...]]] = {}
    for row, shard in zip(rows, places, strict=True):
        parts.setdefault(shard, []).append(row)
    calls += [ShardCall(n, insert, part, many=True) for n, part in sorted(parts.items())]
    return calls + _indexes(ir, sorted(parts), engine)


def _indexes(ir: Intermediate, nodes: Iterable[int], engine: str) -> list[ShardCall]:
    """An index on each join key of a loaded intermediate, on SQLite shards: SQLite joins by
    nested loops, and a join condition inside an OR (TPC-H Q19) gets no automatic index.
    DuckDB joins by hashing: it needs none."""
    if engine != "sqlite" or not ir.indexed:
        return []
    known = {name.lower() for name, _ in ir.columns}
    wanted = [c for c in dict.fromkeys(c.lower() for c in ir.indexed) if c in known]
    return [
        ShardCall(
            n,
            f"CREATE INDEX temp.{_quote(f'{ir.name}_k{i}')} ON {_quote(ir.name)}"
            f" ({_quote(column)})",
        )
        for n in nodes
        for i, column in enumerate(wanted)
    ]


def drop(ir: Intermediate, shards: int) -> list[ShardCall]:
    """DROP TABLE IF EXISTS on every shard (run in a finally: also after an error). Qualified
    by the session's temp schema, so that it can never drop a user's table of that name."""
    return [ShardCall(n, f"DROP TABLE IF EXISTS temp.{_quote(ir.name)}") for n in range(shards)]


def with_intermediates(catalog: Catalog, irs: list[Intermediate]) -> Catalog:
    """A copy of the catalog that also knows the intermediates, to plan the outer statement."""
    copy = Catalog()
    copy.tables = dict(catalog.tables)
    copy.views = dict(catalog.views)
    copy.version = catalog.version
    for ir in irs:
        copy.tables[ir.name.lower()] = ir.info()
    return copy
