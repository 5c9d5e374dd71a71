"""A pytest plugin: real local shards for a test session, and a clean database for each test.

Installed with exdb (entry point ``pytest11``), so it loads in every pytest run where exdb is
installed: at load it imports nothing but pytest. The cluster starts only when a test asks for
one of its fixtures, once per session, and stops at the end of the session::

    def test_mine(exdb_connection):
        exdb_connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        ...  # the next test will not see t

Fixtures:

- ``exdb_connection``: a DistributedConnection (autocommit off) to the session cluster. After the
  test, an open transaction is rolled back and every table, view, index, trigger, sequence and
  schema the test created is dropped, on every node and from the distributed catalog. What
  existed before the test (created by a session fixture, say) is kept, rows included.
- ``exdb_cluster``: the session's :class:`exdb.cluster.LocalCluster`; ``exdb_nodes``: its nodes
  (``host:port``, in shard order). Tests that write through these clean up after themselves.
- ``exdb_connect_options``: the keyword arguments (the password) that ``exdb.connect`` needs.

Options (command line, else the ini file, else the default): ``--exdb-engine`` / ``exdb_engine``
(sqlite or duckdb; sqlite), ``--exdb-shards`` / ``exdb_shards`` (2), ``--exdb-password`` /
``exdb_password`` (none: the servers take EXDB_PASSWORD from the environment, as the client does).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from exdb.client.sync import Connection
    from exdb.cluster import LocalCluster
    from exdb.distributed.connection import DistributedConnection

_ENGINES = ("sqlite", "duckdb")


def pytest_addoption(parser: pytest.Parser) -> None:
    """The plugin's options, on the command line and in the ini file."""
    group = parser.getgroup("exdb", "exdb: a local cluster of shard servers for tests")
    group.addoption(
        "--exdb-engine",
        choices=_ENGINES,
        default=None,
        help="Storage engine of the test cluster's shards (default: sqlite).",
    )
    group.addoption(
        "--exdb-shards", type=int, default=None, help="Shards of the test cluster (default: 2)."
    )
    group.addoption("--exdb-password", default=None, help="Password of the test cluster's shards.")
    parser.addini("exdb_engine", "Storage engine of the test cluster (sqlite or duckdb).")
    parser.addini("exdb_shards", "Shards of the test cluster.")
    parser.addini("exdb_password", "Password of the test cluster's shards.")


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a bad option at once, as a usage error (it starts nothing)."""
    _Settings.from_config(config)


class _Settings:
    """The plugin's options, resolved (a plain class: a dataclass costs ~1 ms to build)."""

    def __init__(self, engine: str, shards: int, password: str | None) -> None:
        self.engine, self.shards, self.password = engine, shards, password

    @classmethod
    def from_config(cls, config: pytest.Config) -> _Settings:
        def get(name: str) -> Any:
            value = config.getoption(name)
            return value if value is not None else (config.getini(name) or None)

        engine = str(get("exdb_engine") or "sqlite")
        if engine not in _ENGINES:
            raise pytest.UsageError(f"exdb_engine must be sqlite or duckdb, not {engine!r}")
        raw = get("exdb_shards")
        raw = 2 if raw is None else raw
        try:
            shards = int(raw)
        except ValueError:
            shards = 0
        if shards < 1:
            raise pytest.UsageError(f"exdb_shards must be a positive integer, not {raw!r}")
        password = get("exdb_password")
        return cls(engine, shards, None if password is None else str(password))


@pytest.fixture(scope="session")
def exdb_connect_options(pytestconfig: pytest.Config) -> dict[str, Any]:
    """Keyword arguments for ``exdb.connect`` to the session cluster (its password)."""
    password = _Settings.from_config(pytestconfig).password
    return {} if password is None else {"password": password}


@pytest.fixture(scope="session")
def exdb_cluster(pytestconfig: pytest.Config) -> Iterator[LocalCluster]:
    """The session's shards (``--exdb-shards``, ``--exdb-engine``, in memory) on free loopback
    ports: started when a test first asks for them, stopped at the end of the session."""
    from exdb.cluster import LocalCluster

    settings = _Settings.from_config(pytestconfig)
    cluster = LocalCluster(settings.shards, engine=settings.engine, password=settings.password)
    with cluster:
        yield cluster


@pytest.fixture(scope="session")
def exdb_nodes(exdb_cluster: LocalCluster) -> tuple[str, ...]:
    """The session cluster's nodes, ``host:port`` in shard order."""
    return exdb_cluster.nodes


@pytest.fixture
def exdb_connection(
    exdb_nodes: tuple[str, ...], exdb_connect_options: dict[str, Any]
) -> Iterator[DistributedConnection]:
    """A distributed connection to the session cluster; afterwards the test's open transaction
    is rolled back and whatever it created is dropped."""
    import exdb

    with _Janitor(exdb_nodes, exdb_connect_options) as janitor:
        before = janitor.objects()
    conn: DistributedConnection = exdb.connect(nodes=exdb_nodes, **exdb_connect_options)
    try:
        yield conn
    finally:
        try:
            if not conn.closed:
                conn.rollback()
        finally:
            if not conn.closed:  # a test may close it itself
                conn.close()
            with _Janitor(exdb_nodes, exdb_connect_options) as janitor:
                janitor.drop_all_but(before)


# What a node holds: (kind, schema, name). The engines' own objects are left out.
_LIST_SQL = {
    "sqlite": (
        "SELECT type, 'main', name FROM sqlite_master"
        " WHERE type IN ('table', 'view', 'index', 'trigger')"
        " AND name NOT LIKE 'sqlite!_%' ESCAPE '!'"
    ),
    "duckdb": (
        "SELECT 'schema', schema_name, schema_name FROM duckdb_schemas()"
        " WHERE NOT internal AND schema_name <> 'main'"
        " UNION ALL SELECT 'table', schema_name, table_name FROM duckdb_tables() WHERE NOT internal"
        " UNION ALL SELECT 'view', schema_name, view_name FROM duckdb_views() WHERE NOT internal"
        " UNION ALL SELECT 'index', schema_name, index_name FROM duckdb_indexes()"
        " UNION ALL SELECT 'sequence', schema_name, sequence_name FROM duckdb_sequences()"
    ),
}
# Dependents first: a view may read a table, a table's default may use a sequence.
_DROP_ORDER = ("view", "trigger", "index", "table", "sequence", "schema")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Janitor:
    """Lists what the nodes hold and drops what a test added, with its own connections
    (autocommit), opened for one listing or one clean-up: between tests a session may stay
    idle past the servers' --idle-timeout."""

    def __init__(self, nodes: tuple[str, ...], options: dict[str, Any]) -> None:
        import exdb

        self.nodes: list[Connection] = []
        self.dist: DistributedConnection | None = None
        try:
            self.nodes = [exdb.connect(n, autocommit=True, **options) for n in nodes]
            self.dist = exdb.connect(nodes=nodes, autocommit=True, **options)
        except BaseException:
            self.close()
            raise
        self.engine = str(self.nodes[0].server_info.get("engine"))

    def objects(self) -> set[tuple[str, str, str]]:
        """Every (kind, schema, name) on any node, and the distributed catalog's tables."""
        found: set[tuple[str, str, str]] = set()
        for conn in self.nodes:
            found.update(tuple(row) for row in conn.execute(_LIST_SQL[self.engine]).fetchall())
        rows = self.nodes[0].execute("SELECT name, kind FROM exdb_catalog").fetchall()
        found.update(("view" if k == "view" else "table", "main", str(n)) for n, k in rows)
        return found

    def drop_all_but(self, keep: set[tuple[str, str, str]]) -> None:
        """Drop every object not in ``keep``: tables of the main schema through the distributed
        connection (so that the catalog forgets them), the rest on every node. A drop that
        fails while another succeeds is tried again (one object may depend on another)."""
        assert self.dist is not None
        pending = sorted(self.objects() - keep, key=lambda o: (_DROP_ORDER.index(o[0]), o))
        for _ in range(len(pending) + 1):
            if not pending:
                return
            failed: list[tuple[tuple[str, str, str], Exception]] = []
            for obj in pending:
                try:
                    self._drop(*obj)
                except Exception as exc:  # kept, tried again; raised if no drop succeeds
                    failed.append((obj, exc))
            if len(failed) == len(pending):
                (kind, schema, name), why = failed[0]
                raise RuntimeError(
                    f"exdb_connection: cannot drop {kind} {schema}.{name}, which the test"
                    f" created: {why}"
                ) from why
            pending = [obj for obj, _ in failed]

    def _drop(self, kind: str, schema: str, name: str) -> None:
        assert self.dist is not None
        if kind in ("table", "view") and schema == "main":
            self.dist.execute(f"DROP {kind.upper()} IF EXISTS {_quote(name)}")
            return
        if kind == "schema":
            target, suffix = _quote(name), " CASCADE"
        else:
            target = _quote(name) if self.engine == "sqlite" else f"{_quote(schema)}.{_quote(name)}"
            suffix = ""
        for conn in self.nodes:
            conn.execute(f"DROP {kind.upper()} IF EXISTS {target}{suffix}")

    def __enter__(self) -> _Janitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the janitor's connections."""
        for conn in [*self.nodes, self.dist]:
            if conn is not None:
                conn.close()
