"""Intermediate results (exdb.distributed.intermediate): TEMP tables pushed to real shards of
both engines, placed as a table of the catalog would be, planned co-located, and dropped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import exdb
from exdb.cluster import LocalCluster
from exdb.distributed.intermediate import Intermediate, drop, new_name, push, with_intermediates
from exdb.distributed.placement import shard_of
from exdb.distributed.route import analyse_select


@pytest.fixture(scope="module", params=["sqlite", "duckdb"])
def cluster(request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    """Two shards and a distributed connection with one table distributed by id."""
    with LocalCluster(2, engine=request.param) as nodes:
        conn = exdb.connect(nodes=nodes.nodes)
        conn.autocommit = True
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(40)])
        try:
            yield conn, request.param
        finally:
            conn.close()


def _run(conn: Any, calls: list[Any]) -> list[Any]:
    """Run shard calls on the connection's nodes (as a plan's execute would), raising any error."""

    def plan() -> Any:
        outcomes = yield calls
        return outcomes

    outcomes = conn._drive(plan())
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes


def _node_count(conn: Any, node: int, sql: str) -> Any:
    return conn.execute(f"{node}: {sql}").fetchall()[0][0]


def test_distributed_intermediate_colocates_with_table(cluster: tuple[Any, str]) -> None:
    conn, engine = cluster
    ir = Intermediate(
        new_name(conn.engine.catalog),
        [("k", "INTEGER"), ("w", None if engine == "sqlite" else "VARCHAR")],
        "distributed",
        "k",
    )
    rows = [(i, f"w{i}") for i in range(0, 40, 3)] + [(None, "null key")]
    try:
        _run(conn, push(ir, rows, 2, engine))
        for node in (1, 2):
            # every row sits on the shard of its key, as a row of t with that id would
            got = conn.execute(f"{node}: SELECT k FROM {ir.name}").fetchall()
            for (k,) in got:
                assert shard_of(k, "INTEGER", 2) == node - 1
            joined = conn.execute(
                f"{node}: SELECT count(*) FROM t JOIN {ir.name} ON t.id = k"
            ).fetchall()
            assert joined[0][0] == len([k for (k,) in got if k is not None])
        total = sum(_node_count(conn, n, f"SELECT count(*) FROM {ir.name}") for n in (1, 2))
        assert total == len(rows)
        catalog = with_intermediates(conn.engine.catalog, [ir])
        sql = f"SELECT * FROM t JOIN {ir.name} AS x ON t.id = x.k"
        import sqlglot

        shape = analyse_select(sqlglot.parse_one(sql, read=engine), catalog, sql)
        assert shape.colocated
        assert conn.engine.catalog.get(ir.name) is None  # the connection's catalog is untouched
    finally:
        _run(conn, drop(ir, 2))
    for node in (1, 2):
        with pytest.raises(exdb.Error):
            conn.execute(f"{node}: SELECT count(*) FROM {ir.name}")


def test_reference_intermediate_on_every_shard_and_dropped_in_transaction(
    cluster: tuple[Any, str],
) -> None:
    conn, engine = cluster
    conn.autocommit = False
    ir = Intermediate(new_name(conn.engine.catalog), [("a", "INTEGER")], "reference")
    try:
        _run(conn, push(ir, [(1,), (2,), (2,)], 2, engine))
        for node in (1, 2):
            assert _node_count(conn, node, f"SELECT count(*) FROM {ir.name}") == 3
        _run(conn, drop(ir, 2))
        for node in (1, 2):
            with pytest.raises(exdb.Error):
                conn.execute(f"{node}: SELECT count(*) FROM {ir.name}")
            if engine == "duckdb":
                conn.rollback()  # a failed statement aborts a DuckDB transaction
    finally:
        conn.rollback()
        conn.autocommit = True


def test_drop_never_touches_a_main_table(cluster: tuple[Any, str]) -> None:
    conn, _ = cluster
    ir = Intermediate("t", [("id", "INTEGER")], "reference")
    _run(conn, drop(ir, 2))  # no temp table t: nothing happens to the user's t
    assert conn.execute("SELECT count(*) FROM t").fetchall() == [(40,)]


def test_names_skip_the_catalog() -> None:
    from exdb.distributed.catalog import Catalog, TableInfo

    catalog = Catalog()
    first = new_name(catalog)
    following = int(first.rsplit("_", 1)[1]) + 1
    catalog.put(TableInfo(f"exdb_ir_{following}", "reference", None, [], []))
    assert new_name(catalog) != f"exdb_ir_{following}"
    with pytest.raises(ValueError):
        Intermediate("x", [("a", None)], "distributed", "b")
