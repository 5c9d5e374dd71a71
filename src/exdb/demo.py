"""``exdb demo``: an embedded 2-shard cluster running eXtremeSQL's reference example end to
end, printed as tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

import exdb
from exdb.cluster import LocalCluster

__all__ = ["run_demo"]

MYTABLE = (
    "CREATE TABLE MyTable (pk INTEGER PRIMARY KEY, value VARCHAR, u2 INTEGER, i1 INTEGER,"
    " i2 INTEGER, i4 INTEGER, i8 BIGINT, flt REAL, dbl DOUBLE)"
)
INSERT = (
    "INSERT INTO MyTable(pk, value, u2, i1, i2, i4, i8, flt, dbl)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _table(title: str, result: Any) -> Table:
    table = Table(title=f"[bold]{title}[/bold]", title_justify="left", min_width=len(title) + 4)
    if isinstance(result, exdb.ResultSet):
        for name, type_code, *_ in result.description:
            table.add_column(f"{name}\n[dim]{type_code or ''}[/dim]")
        for row in result:
            table.add_row(*(repr(v) for v in row))
    else:
        table.add_column("rows affected")
        table.add_row(repr(result))
    return table


def run_demo(engine: str = "sqlite", shards: int = 2, workers: int = 2) -> int:
    """Start the shards, run the reference example, print each result; 0 on success."""
    console = Console()
    with LocalCluster(shards, engine=engine) as cluster:
        nodes = cluster.nodes
        console.print(f"[bold]{shards} shards[/bold] ({engine}, in memory): {', '.join(nodes)}")
        with exdb.connect(nodes=nodes, autocommit=True) as setup:
            setup.execute(MYTABLE)
        conn = exdb.connect(nodes=nodes, **{"async": True}, nWorkers=workers)
        try:
            console.print(f"AsyncDistributedConnection with nWorkers={workers}\n")
            console.print(_table('conn.execute("SELECT 1,2")', conn.execute("SELECT 1,2")))
            console.print(
                _table('conn.execute("SELECT 1,2,?", (3,))', conn.execute("SELECT 1,2,?", (3,)))
            )
            args = [(i * 100, f"str{i}", i, i, i, i, i, i * 100, i * 100.9) for i in range(2)]
            inserted = conn.execute([INSERT] * 2, args)
            console.print(f"parallel INSERTs into MyTable -> {inserted!r}")
            queries = [
                "SELECT COUNT(*) FROM MyTable",
                "SELECT SUM(pk) FROM MyTable",
                "SELECT SUM(i1) FROM MyTable",
                "SELECT SUM(i2) FROM MyTable",
            ]
            for sql, result in zip(queries, conn.execute(queries, None), strict=True):
                console.print(_table(sql, result))
            rows = conn.execute("SELECT * FROM MyTable ORDER BY pk")
            console.print(_table("SELECT * FROM MyTable ORDER BY pk", rows))
            placement = conn.execute(["1:SELECT pk FROM MyTable", "2:SELECT pk FROM MyTable"])
            held = [f"node {i + 1} holds pk {[r[0] for r in p]}" for i, p in enumerate(placement)]
            console.print("placement (N: prefix): " + ", ".join(held))
        finally:
            conn.close()
    console.print("[bold]shards stopped[/bold]")
    return 0
