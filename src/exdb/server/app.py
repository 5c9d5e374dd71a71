"""The shard server: ``exdb serve``. One engine, many sessions, on one asyncio event loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import ssl
import sys

from exdb.server.engines import Engine, open_engine
from exdb.server.session import Session
from exdb.wire.codec import DEFAULT_MAX_FRAME

__all__ = ["ServerConfig", "ShardServer", "run_server"]


@dataclasses.dataclass
class ServerConfig:
    """How one shard server runs; every field is an ``exdb serve`` option."""

    host: str = "127.0.0.1"
    port: int = 5001
    engine: str = "sqlite"
    db: str | None = None
    password: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    idle_timeout: float = 600.0
    max_sessions: int = 512
    shutdown_grace: float = 5.0
    quiet: bool = False


class ShardServer:
    """A running shard server."""

    def __init__(self, config: ServerConfig) -> None:
        from exdb import __version__

        self.config = config
        self.version = __version__
        self.sessions: set[Session] = set()
        self.engine: Engine
        self._server: asyncio.Server | None = None
        self._stop = asyncio.Event()

    def log(self, message: str) -> None:
        """One line on stderr, unless quiet."""
        if not self.config.quiet:
            print(f"exdb serve: {message}", file=sys.stderr, flush=True)

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.config.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return ctx

    async def start(self) -> int:
        """Open the engine and start listening; return the bound port."""
        loop = asyncio.get_running_loop()
        self.engine = await loop.run_in_executor(
            None, open_engine, self.config.engine, self.config.db
        )
        self._server = await loop.create_server(
            lambda: Session(self),
            self.config.host,
            self.config.port,
            ssl=self._tls_context(),
            reuse_address=True,
        )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def stop(self) -> None:
        """Ask the server to shut down gracefully (safe from a signal handler)."""
        self._stop.set()

    async def serve(self) -> None:
        """Serve until stop() or SIGTERM/SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight work finish (or roll it back), close the database."""
        if self._server is not None:
            self._server.close()
        await asyncio.gather(
            *(s.shutdown(self.config.shutdown_grace) for s in list(self.sessions))
        )
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.get_running_loop().run_in_executor(None, self.engine.close)
        self.log("stopped")


async def _main(config: ServerConfig) -> None:
    server = ShardServer(config)
    port = await server.start()
    where = config.db or "in memory"
    tls = ", TLS" if config.tls_cert else ""
    # The launcher (exdb cluster, the tests) reads this line to learn the port when --port is 0.
    print(f"exdb serve: listening on {config.host}:{port} ({config.engine}, {where}{tls})", flush=True)
    await server.serve()


def run_server(config: ServerConfig) -> None:
    """Run a shard server in this process until it is told to stop."""
    asyncio.run(_main(config))
