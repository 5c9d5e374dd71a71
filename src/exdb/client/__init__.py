"""The client doors to one node: synchronous (PEP 249) and asyncio, over one sans-IO core."""

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
