"""The pytest plugin (exdb.pytest_plugin), through real inner pytest sessions and real servers."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

# Inner-test helpers: what every node holds, by name, and the distributed catalog's tables.
_HELPERS = '''
import exdb

LIST = {
    "sqlite": "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!'",
    "duckdb": (
        "SELECT table_name FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views()"
        " WHERE NOT internal UNION ALL SELECT index_name FROM duckdb_indexes()"
    ),
}


def node_objects(nodes, options):
    """The sorted object names of each node."""
    found = []
    for node in nodes:
        with exdb.connect(node, **options) as conn:
            engine = conn.server_info["engine"]
            found.append(sorted(r[0] for r in conn.execute(LIST[engine]).fetchall()))
    return found


def catalog(nodes, options):
    with exdb.connect(nodes[0], **options) as conn:
        return sorted(r[0] for r in conn.execute("SELECT name FROM exdb_catalog").fetchall())
'''

_CLEAN = '''
import pytest

from helpers import catalog, node_objects
import exdb

# exdb's own tables on every node: the catalog, and two-phase commit's (server/prepared.py).
NODE_TABLES = ["exdb_catalog", "exdb_decisions", "exdb_prepared_done", "kept"]


@pytest.fixture(scope="session")
def kept(exdb_nodes, exdb_connect_options):
    """A table the session sets up: exdb_connection keeps it."""
    with exdb.connect(nodes=exdb_nodes, **exdb_connect_options) as conn:
        conn.execute("CREATE TABLE kept (id INTEGER PRIMARY KEY, v VARCHAR)")
        conn.execute("INSERT INTO kept VALUES (1, 'x')")
    return "kept"


def test_one(kept, exdb_connection, exdb_nodes, exdb_connect_options):
    conn = exdb_connection
    assert node_objects(exdb_nodes, exdb_connect_options)[0] == NODE_TABLES
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v VARCHAR)")
    conn.execute("CREATE INDEX t_v ON t (v)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, str(i)) for i in range(20)])
    conn.execute("CREATE INDEX kept_v ON kept (v)")
    # Dropped in name order, a_parent fails first on DuckDB (b_child refers to it): retried.
    conn.execute("CREATE TABLE a_parent (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE b_child (id INTEGER PRIMARY KEY, p INTEGER REFERENCES a_parent(id))")
    conn.commit()
    with exdb.connect(exdb_nodes[0], autocommit=True, **exdb_connect_options) as node:
        node.execute("CREATE VIEW only_here AS SELECT id FROM t")
        node.execute("CREATE TABLE node_only (a INTEGER)")
    assert catalog(exdb_nodes, exdb_connect_options) == ["a_parent", "b_child", "kept", "t"]
    conn.execute("CREATE VIEW dist_view AS SELECT id FROM t")  # in the catalog and on each node
    conn.commit()
    conn.execute("INSERT INTO kept VALUES (2, 'never committed')")  # open at the end


def test_two(kept, exdb_connection, exdb_nodes, exdb_connect_options):
    for names in node_objects(exdb_nodes, exdb_connect_options):
        assert names == NODE_TABLES
    assert catalog(exdb_nodes, exdb_connect_options) == ["kept"]
    conn = exdb_connection
    assert conn.execute("SELECT id, v FROM kept").fetchall() == [(1, "x")]
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, w REAL)")  # the name is free again
    assert conn.execute("SELECT count(*) FROM t").fetchall() == [(0,)]
    conn.commit()


def test_three(exdb_connection, exdb_nodes, exdb_connect_options):
    assert catalog(exdb_nodes, exdb_connect_options) == ["kept"]
    exdb_connection.close()  # a test may close it; the clean-up still runs
'''


def _run_clean_session(pytester: pytest.Pytester, *args: str) -> None:
    pytester.makepyfile(helpers=_HELPERS, test_clean=_CLEAN)
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=3)


def test_each_test_starts_with_a_clean_database(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXDB_PASSWORD", raising=False)
    _run_clean_session(pytester)


def test_each_test_starts_clean_on_duckdb_shards(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXDB_PASSWORD", raising=False)
    _run_clean_session(pytester, "--exdb-engine", "duckdb", "--exdb-shards", "3")


_OPTIONS = """
import pytest

import exdb


def test_options(exdb_cluster, exdb_nodes, exdb_connection, exdb_connect_options):
    assert exdb_nodes == exdb_cluster.nodes and len(exdb_nodes) == {shards}
    assert exdb_connect_options == {options!r}
    assert exdb_connection.execute("SELECT 1").fetchall() == [(1,)]
    for node in exdb_nodes:
        with exdb.connect(node, **exdb_connect_options) as conn:
            assert conn.server_info["engine"] == "{engine}"
        if exdb_connect_options:
            with pytest.raises(exdb.OperationalError, match="authentication failed"):
                exdb.connect(node, password="wrong").close()
"""


@pytest.mark.parametrize(
    ("ini", "args", "engine", "shards", "password"),
    [
        ("", (), "sqlite", 2, None),
        ("exdb_engine = duckdb\nexdb_shards = 1\n", (), "duckdb", 1, None),
        (
            "exdb_engine = duckdb\nexdb_shards = 1\nexdb_password = from-ini\n",
            ("--exdb-engine", "sqlite", "--exdb-shards", "3", "--exdb-password", "s3cret"),
            "sqlite",
            3,
            "s3cret",
        ),
    ],
    ids=["defaults", "ini", "command-line-over-ini"],
)
def test_options_reach_the_cluster(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    ini: str,
    args: tuple[str, ...],
    engine: str,
    shards: int,
    password: str | None,
) -> None:
    monkeypatch.delenv("EXDB_PASSWORD", raising=False)
    pytester.makeini("[pytest]\n" + ini)
    options = {} if password is None else {"password": password}
    source = _OPTIONS.format(shards=shards, options=options, engine=engine)
    pytester.makepyfile(test_options=source)
    pytester.runpytest(*args).assert_outcomes(passed=1)


def test_a_bad_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest("--exdb-shards", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*exdb_shards must be a positive integer*"])
    pytester.makeini("[pytest]\nexdb_engine = oracle\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*exdb_engine must be sqlite or duckdb*"])


def test_a_run_that_does_not_use_it_starts_and_loads_nothing(pytester: pytest.Pytester) -> None:
    """A separate process, as in a user's project: the plugin is loaded (entry point), yet no
    server runs and none of the client stack is imported."""
    pytester.makepyfile(
        test_plain=textwrap.dedent(
            """
            import os
            import sys


            def test_plain(request):
                assert request.config.pluginmanager.has_plugin("exdb")
                pid = os.getpid()
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    assert f.read().split() == []  # no exdb serve started
                heavy = ("exdb.cluster", "exdb.client", "exdb.distributed", "sqlglot", "asyncio")
                loaded = [m for m in sys.modules if m.startswith(heavy)]
                assert loaded == []
            """
        )
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
