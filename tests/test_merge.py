"""The merge's pure functions, on values the engines can return."""

from __future__ import annotations

import math

from exdb.distributed.merge import count_collected
from exdb.wire.codec import pack


def test_collected_values_become_one_union_size_per_group() -> None:
    rows = [
        ("a", 10, [1, 2, None]),  # DuckDB lists keep a NULL; it does not count
        ("b", 5, [3]),
        ("a", 7, [2, 3]),
        (None, 1, None),  # a group without values: its collected value is NULL
    ]
    out = count_collected(rows, groups=1, collected=[2])
    assert out == [("a", 10, 3), ("b", 5, 1), ("a", 7, 0), (None, 1, 0)]


def test_union_uses_sql_equality() -> None:
    # SQLite's packed lists: 1 and 1.0 are one value; '1' is text and b'1' a blob: two more.
    packed = [
        (0, pack([1, "1"])),
        (0, pack([1.0, b"1"])),
        (1, pack([2**53 + 1])),
        (1, pack([float(2**53)])),
    ]
    assert count_collected(packed, 1, [1]) == [(0, 3), (0, 0), (1, 2), (1, 0)]


def test_every_nan_is_one_value_and_nested_values_hash() -> None:
    rows = [
        (1, [math.nan, 0.0]),
        (1, [float("nan"), -0.0]),  # another NaN object, and -0.0 equals 0.0
        (2, [[1, 2], {"x": [3]}]),  # DuckDB lists and structs
        (2, [[1, 2]]),
    ]
    assert count_collected(rows, 1, [1]) == [(1, 2), (1, 0), (2, 2), (2, 0)]


def test_several_group_keys_and_collected_columns() -> None:
    rows = [(1, "x", ["p"], ["q", "r"]), (1, "y", ["p"], []), (1, "x", ["s"], ["q"])]
    assert count_collected(rows, 2, [2, 3]) == [(1, "x", 2, 2), (1, "y", 1, 0), (1, "x", 0, 0)]
