"""Shared fixtures: real ``exdb serve`` processes on free loopback ports, always stopped."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from exdb.cluster import LocalCluster, ServerProcess

ENGINES = ["sqlite", "duckdb"]

#: SQLAlchemy's dialect compliance suite has its own plugin and nodes: `make sqla-suite`.
collect_ignore = ["sqla_suite"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs once per engine."""
    return str(request.param)


@pytest.fixture
def start_server(tmp_path: os.PathLike[str]) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``exdb serve`` with extra arguments on a free port; every one is stopped after."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        full_env = dict(os.environ)
        full_env.pop("EXDB_PASSWORD", None)
        full_env.update(env or {})
        server = ServerProcess(["--host", "127.0.0.1", "--port", "0", "--quiet", *args], full_env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess], engine: str) -> ServerProcess:
    """One in-memory server of the engine under test."""
    return start_server("--engine", engine)


@pytest.fixture(scope="module")
def sqlite_node() -> Iterator[str]:
    """A shared in-memory SQLite server for tests that only read or use their own tables."""
    with LocalCluster(1) as cluster:
        yield cluster.nodes[0]
