"""Where a row lives: a stable hash of its distribution value, normalised so that values SQL
compares as equal land on the same shard.

The hash is BLAKE2b of a canonical byte form, never Python's ``hash()`` (salted per process).
Normalisation follows the column's declared type the way SQLite's type affinity does: in an
INTEGER column ``1``, ``1.0`` and ``'1'`` are one value; in a TEXT column ``1`` and ``'1'`` are.
"""

from __future__ import annotations

import array
import decimal
import hashlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["affinity", "canonical", "placer", "shard_of"]

_INT64 = 2**63


def affinity(declared: str | None) -> str:
    """SQLite's type affinity for a declared column type (section 3.1 of its datatype docs)."""
    t = (declared or "").upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:  # STRING is NUMERIC, as SQLite rules
        return "TEXT"
    if not t or "BLOB" in t or "BYTEA" in t:
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"


def _number(value: Any) -> int | float | None:
    """The value as a number if SQL would read it as one, else None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            return None
    return None


def _numeric_form(n: int | float) -> bytes:
    if isinstance(n, float) and n.is_integer() and -_INT64 <= n < _INT64:
        n = int(n)
    return b"n" + (str(n) if isinstance(n, int) else repr(n)).encode()


def canonical(value: Any, column_affinity: str) -> bytes:
    """The byte form that equal values share."""
    if value is None:
        return b"\x00"
    if column_affinity in ("INTEGER", "REAL", "NUMERIC"):
        n = _number(value)
        if n is not None:
            return _numeric_form(n)
    if column_affinity == "TEXT" and not isinstance(value, (bytes, bytearray)):
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            return b"s" + repr(value).encode()
        return b"s" + str(value).encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"b" + bytes(value)
    if isinstance(value, str):
        return b"s" + value.encode()
    n = _number(value)
    if n is not None:
        return _numeric_form(n)
    return b"r" + repr(value).encode()


def shard_of(value: Any, column_affinity: str, shards: int) -> int:
    """The 0-based shard of a distribution value."""
    if value is None:
        return 0
    digest = hashlib.blake2b(canonical(value, column_affinity), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def placer(column_affinity: str, shards: int) -> Callable[[Any], int]:
    """``shard_of`` for one column and shard count, as one fast function for many rows (bulk
    INSERTs): integer keys, the usual kind, skip the general normalisation."""
    prefix = b"s" if column_affinity == "TEXT" else b"n"
    blake2b = hashlib.blake2b
    from_bytes = int.from_bytes

    def place(value: Any) -> int:
        if type(value) is int:
            digest = blake2b(prefix + str(value).encode(), digest_size=8).digest()
            return from_bytes(digest, "big") % shards
        return shard_of(value, column_affinity, shards)

    return place


def place_many(values: Sequence[Any], column_affinity: str, shards: int) -> list[int]:
    """``shard_of`` of every value, in order: integer keys (the usual kind) in one pass with no
    per-value call, the others one by one."""
    if all(type(v) is int for v in values):
        blake2b = hashlib.blake2b
        form = b"s%d" if column_affinity == "TEXT" else b"n%d"
        digests = b"".join([blake2b(form % v, digest_size=8).digest() for v in values])
        return _buckets(digests, shards)
    if column_affinity in ("TEXT", "BLOB") and all(type(v) is str for v in values):
        blake2b = hashlib.blake2b
        digests = b"".join([blake2b(b"s" + v.encode(), digest_size=8).digest() for v in values])
        return _buckets(digests, shards)
    return [shard_of(v, column_affinity, shards) for v in values]


def _buckets(digests: bytes, shards: int) -> list[int]:
    """Each 8-byte digest read as a big-endian unsigned integer, modulo ``shards``: what
    ``shard_of`` does one value at a time, here in one vectorised pass."""
    try:
        import numpy as np
    except ImportError:
        words = array.array("Q", digests)
        if sys.byteorder == "little":
            words.byteswap()
        return [w % shards for w in words]
    result: list[int] = (np.frombuffer(digests, dtype=">u8") % shards).tolist()
    return result
