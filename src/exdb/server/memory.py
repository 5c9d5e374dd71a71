"""The server process's memory ceiling (``exdb serve --max-memory``).

A statement can ask an engine for more memory than any of the engine's own limits count (a DuckDB
``range(10**9)`` list, a plan of a huge statement, the decoding of a large frame). Without a
ceiling the kernel's OOM killer ends the whole server; with one, the allocation fails inside that
statement, which gets an out-of-memory error, and every other session goes on. The ceiling is the
process's data limit (``RLIMIT_DATA``: heap and private writable mappings), which both engines and
Python turn into an error of the statement that asked.
"""

from __future__ import annotations

import os
import re
import resource

__all__ = ["DEFAULT_SHARE", "apply_memory_ceiling", "default_ceiling", "parse_size"]

#: The default ceiling: this share of the machine's physical memory.
DEFAULT_SHARE = 0.75
#: What DuckDB's own buffer manager may use of the ceiling when ``--memory-limit`` is not given,
#: so that it spills to disk before the ceiling makes allocations fail.
DUCKDB_SHARE = 0.6

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> int:
    """``"8GB"``, ``"512MiB"`` or a number of bytes, as bytes; ValueError otherwise."""
    match = _SIZE.match(text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"bad size {text!r}: expected a number with KB, MB, GB, TB, KiB, MiB, GiB or TiB"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def default_ceiling() -> int | None:
    """:data:`DEFAULT_SHARE` of the physical memory; None where the platform does not say."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    return int(total * DEFAULT_SHARE) if total > 0 else None


def apply_memory_ceiling(limit: int | None) -> int | None:
    """Set this process's data limit to ``limit`` bytes (None: as high as the hard limit the
    process has, which it can never pass); return the limit now in force (None: unlimited)."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if limit is None or (hard != resource.RLIM_INFINITY and limit > hard):
        limit = hard
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return None if limit == resource.RLIM_INFINITY else limit
