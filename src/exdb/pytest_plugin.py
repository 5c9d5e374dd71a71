"""A pytest plugin: the ``exdb_cluster`` fixture starts real local shards for a test session.

Installed with exdb (entry point ``pytest11``), so a user's own tests can ask for it::

    def test_mine(exdb_cluster):
        conn = exdb.connect(exdb_cluster.nodes[0])
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from exdb.cluster import LocalCluster


@pytest.fixture(scope="session")
def exdb_cluster() -> Iterator[LocalCluster]:
    """Two in-memory SQLite shards on free loopback ports, stopped after the session."""
    with LocalCluster(2) as cluster:
        yield cluster
