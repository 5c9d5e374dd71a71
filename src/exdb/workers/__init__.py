"""Worker processes for AsyncDistributedConnection: each one runs the same distributed engine
(through the asyncio door) on its own connections to every node."""

from exdb.workers.connection import AsyncDistributedConnection, ResultSet

__all__ = ["AsyncDistributedConnection", "ResultSet"]
