"""Placement's pure functions: every path to a shard agrees with ``shard_of``."""

from __future__ import annotations

import decimal
import random
import sys

import pytest

from exdb.distributed.placement import place_many, placer, shard_of

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


def _random_keys(rng: random.Random) -> dict[str, list[object]]:
    ints = [rng.randrange(-(2**80), 2**80) for _ in range(300)]
    ints += [rng.randrange(-1000, 1000) for _ in range(300)] + [0, 2**63 - 1, -(2**63), 2**64]
    alphabet = "abcXYZ 019,\"'é中😀\t-."
    texts = ["".join(rng.choices(alphabet, k=rng.randrange(0, 12))) for _ in range(600)]
    texts += ["", "7", " 7 ", "1e3", "0x10", "NaN"]
    return {"int": ints, "str": texts}


@pytest.mark.parametrize("affinity", ["INTEGER", "TEXT", "REAL", "NUMERIC", "BLOB"])
@pytest.mark.parametrize("shards", [1, 2, 3, 4, 7, 16])
def test_vectorised_placement_agrees_with_shard_of_on_random_keys(
    affinity: str, shards: int
) -> None:
    """place_many's one-pass paths (all ints; all str under TEXT or BLOB affinity) and its
    general path give exactly shard_of's shard for every key."""
    rng = random.Random(f"{affinity}-{shards}")
    for kind, keys in _random_keys(rng).items():
        want = [shard_of(k, affinity, shards) for k in keys]
        assert place_many(keys, affinity, shards) == want, kind
        mixed = [*keys, None]  # one None: the general path, value by value
        assert place_many(mixed, affinity, shards) == [*want, 0], kind


def test_placement_without_numpy_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    """The array-module fallback of the vectorised reduction gives the same shards."""
    monkeypatch.setitem(sys.modules, "numpy", None)
    keys = _random_keys(random.Random(5))
    for shards in (2, 3, 5):
        for values in keys.values():
            got = place_many(values, "TEXT", shards)
            assert got == [shard_of(v, "TEXT", shards) for v in values]
