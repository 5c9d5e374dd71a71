"""The client doors to one node: synchronous (PEP 249) and asyncio, over one sans-IO core."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exdb.client.aio import AsyncConnection, AsyncCursor
    from exdb.client.options import ConnectOptions, format_node, parse_node
    from exdb.client.sync import Connection, Cursor

__all__ = [
    "AsyncConnection",
    "AsyncCursor",
    "ConnectOptions",
    "Connection",
    "Cursor",
    "format_node",
    "parse_node",
]

#: Loaded on first use (PEP 562), so that the sync door does not import asyncio.
_LAZY = {
    "AsyncConnection": "exdb.client.aio",
    "AsyncCursor": "exdb.client.aio",
    "ConnectOptions": "exdb.client.options",
    "format_node": "exdb.client.options",
    "parse_node": "exdb.client.options",
    "Connection": "exdb.client.sync",
    "Cursor": "exdb.client.sync",
}


def __getattr__(name: str) -> Any:
    """Load a door the first time it is asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module 'exdb.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
