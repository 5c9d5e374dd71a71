"""``exdb demo``: the main job, end to end, printed as tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

import exdb
from exdb.cluster import LocalCluster

__all__ = ["run_demo"]


def _show(console: Console, title: str, cursor: Any) -> None:
    table = Table(title=title, title_justify="left")
    for name, type_code, *_ in cursor.description:
        table.add_column(f"{name}\n[dim]{type_code or ''}[/dim]")
    for row in cursor.fetchall():
        table.add_row(*(repr(v) for v in row))
    console.print(table)


def run_demo(engine: str = "sqlite") -> int:
    """Start one shard, run statements through exdb.connect, print the results; 0 on success."""
    console = Console()
    with LocalCluster(1, engine=engine) as cluster:
        node = cluster.nodes[0]
        console.print(f"[bold]exdb serve[/bold] started on {node} ({engine}, in memory)")
        with exdb.connect(node) as conn:
            cur = conn.cursor()
            _show(console, "SELECT 1, 2", cur.execute("SELECT 1, 2"))
            _show(console, "SELECT 1, 2, ? with (3,)", cur.execute("SELECT 1, 2, ?", (3,)))
            cur.execute(
                "CREATE TABLE MyTable (pk INTEGER PRIMARY KEY, value VARCHAR, u2 INTEGER,"
                " i1 INTEGER, i2 INTEGER, i4 INTEGER, i8 BIGINT, flt REAL, dbl DOUBLE)"
            )
            rows = [(i * 100, f"str{i}", i, i, i, i, i, i * 100, i * 100.9) for i in range(2)]
            cur.executemany("INSERT INTO MyTable VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            console.print(f"inserted {cur.rowcount} rows into MyTable")
            conn.commit()
            _show(console, "MyTable", cur.execute("SELECT * FROM MyTable ORDER BY pk"))
            _show(
                console,
                "COUNT and SUMs",
                cur.execute("SELECT COUNT(*), SUM(pk), SUM(i1), SUM(i2) FROM MyTable"),
            )
    console.print("[bold]shard stopped[/bold]")
    return 0
