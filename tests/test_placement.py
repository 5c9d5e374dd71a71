"""Placement's pure functions: every path to a shard agrees with ``shard_of``."""

from __future__ import annotations

import decimal

import pytest

from exdb.dist.placement import place_many, placer, shard_of

VALUES = [0, 1, -1, 7, 2**63 - 1, 2**63, -(2**70), 10**30, 3]
MIXED = [*VALUES, 1.0, 7.5, "7", "x", b"7", None, True, decimal.Decimal("7.0")]


@pytest.mark.parametrize("affinity", ["INTEGER", "TEXT", "REAL", "NUMERIC", "BLOB"])
@pytest.mark.parametrize("shards", [1, 2, 3, 5])
def test_bulk_placement_agrees_with_shard_of(affinity: str, shards: int) -> None:
    for values in (VALUES, MIXED):
        want = [shard_of(v, affinity, shards) for v in values]
        assert place_many(values, affinity, shards) == want
        place = placer(affinity, shards)
        assert [place(v) for v in values] == want


def test_equal_numbers_share_a_shard_and_keys_spread() -> None:
    assert len({shard_of(v, "INTEGER", 7) for v in (7, 7.0, "7", decimal.Decimal("7"))}) == 1
    spread = place_many(list(range(1000)), "INTEGER", 4)
    assert all(200 < spread.count(s) < 300 for s in range(4))
