"""The shard server (``exdb serve``): storage engines, sessions and the listener."""

from exdb.server.app import ServerConfig, ShardServer, run_server

__all__ = ["ServerConfig", "ShardServer", "run_server"]
