"""The DB-API 2.0 compliance suite (the ``dbapi-compliance`` package's ``dbapi20.py``) run
against exdb: one node and two nodes (a distributed connection), on both engines.

Every test of the suite runs as the suite wrote it. The only overrides are the two tests the
suite itself says every driver must override (they raise NotImplementedError in the suite):
``test_nextset`` and ``test_setoutputsize``; each is replaced below by a check of exdb's own
behaviour, with the reason.
"""

from __future__ import annotations

import unittest
from typing import Any, ClassVar

import dbapi20

import exdb
from exdb.cluster import LocalCluster


class _ExdbCompliance(dbapi20.DatabaseAPI20Test):
    """The suite against a cluster started for the class; subclasses choose engine and size."""

    driver = exdb
    engine_name: ClassVar[str] = "sqlite"
    shards: ClassVar[int] = 1
    cluster: ClassVar[LocalCluster | None] = None

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = LocalCluster(cls.shards, engine=cls.engine_name).start()
        nodes = cls.cluster.nodes
        if cls.shards == 1:
            cls.connect_args = (nodes[0],)
            cls.connect_kw_args = {}
        else:
            cls.connect_args = ()
            cls.connect_kw_args = {"nodes": list(nodes)}

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.cluster is not None:
            cls.cluster.stop()
            cls.cluster = None

    def setUp(self) -> None:
        super().setUp()
        self._opened: list[Any] = []

    def _connect(self) -> Any:
        con = exdb.connect(*self.connect_args, **self.connect_kw_args)
        self._opened.append(con)
        return con

    def tearDown(self) -> None:
        super().tearDown()
        # Two of the suite's tests (test_rollback, test_ExceptionsAsConnectionAttributes)
        # leave their connection open; close it here, or its ResourceWarning fails the run.
        for con in self._opened:
            if not con.closed:
                con.close()

    # The suite: "Drivers need to override this test". exdb's cursors have no nextset(): every
    # statement (callproc included) gives at most one result set, which fetchall() reads whole.
    def test_nextset(self) -> None:
        con = self._connect()
        try:
            cur = con.cursor()
            self.assertFalse(hasattr(cur, "nextset"))
            self.executeDDL1(cur)
            for sql in self._populate():
                cur.execute(sql)
            self.assertEqual(cur.callproc("abs", (-3,)), (-3,))
            self.assertEqual(cur.fetchall(), [(3,)])
        finally:
            con.close()

    # The suite: "Driver needed to override this test" (its real test is driver dependent).
    # exdb accepts setoutputsize() and ignores it, as PEP 249 allows: a long value still
    # comes back whole.
    def test_setoutputsize(self) -> None:
        con = self._connect()
        try:
            cur = con.cursor()
            self.executeDDL1(cur)
            long_name = "x" * 5000
            cur.execute(f"insert into {self.table_prefix}booze values (?)", (long_name,))
            cur.setoutputsize(10)
            cur.setoutputsize(10, 0)
            cur.execute(f"select name from {self.table_prefix}booze")
            self.assertEqual(cur.fetchall(), [(long_name,)])
        finally:
            con.close()


class TestSqliteOneNode(_ExdbCompliance):
    engine_name = "sqlite"
    shards = 1


class TestSqliteTwoNodes(_ExdbCompliance):
    engine_name = "sqlite"
    shards = 2


class TestDuckdbOneNode(_ExdbCompliance):
    engine_name = "duckdb"
    shards = 1


class TestDuckdbTwoNodes(_ExdbCompliance):
    engine_name = "duckdb"
    shards = 2


del _ExdbCompliance  # the base class runs no cluster of its own

if __name__ == "__main__":
    unittest.main()
