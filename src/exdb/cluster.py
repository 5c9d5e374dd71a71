"""Local clusters: start ``exdb serve`` processes on loopback and stop them again.

Used by ``exdb cluster``, ``exdb demo``, the benchmarks and the tests (as a pytest fixture users
can take into their own tests too).

>>> with LocalCluster(shards=2) as cluster:      # doctest: +SKIP
...     conn = exdb.connect(cluster.nodes[0])
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

__all__ = ["LocalCluster", "ServerProcess"]

_READY = "exdb serve: listening on "


class ServerProcess:
    """One ``exdb serve`` child process."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.host = ""
        self.port = 0

    @property
    def node(self) -> str:
        """``host:port`` of the running server."""
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start the server and wait until it listens (it prints its address)."""
        cmd = [sys.executable, "-m", "exdb", "serve", *self.args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if "--quiet" in self.args else None,
            text=True,
            env=self.env,
        )
        assert self.proc.stdout is not None
        line = _readline(self.proc.stdout, timeout)
        if not line.startswith(_READY):
            self.stop()
            raise RuntimeError(f"exdb serve did not start ({' '.join(cmd)}): {line!r}")
        address = line[len(_READY) :].split()[0]
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a graceful stop), then SIGKILL if it does not end in ``timeout``; returns
        the exit code."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            return proc.returncode
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()

    @property
    def pid(self) -> int | None:
        """The server's process id."""
        return None if self.proc is None else self.proc.pid


def _readline(stream: IO[str], timeout: float) -> str:
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return stream.readline()


class LocalCluster:
    """N shard servers on 127.0.0.1. Ports are chosen by the OS unless ``base_port`` is given.
    With ``replicas`` > 1, each shard is ``replicas`` servers, in the layout of
    ``connect(nodes=cluster.nodes, nReplicas=replicas)``: consecutive groups of nodes."""

    def __init__(
        self,
        shards: int = 2,
        *,
        base_port: int = 0,
        engine: str = "sqlite",
        host: str = "127.0.0.1",
        password: str | None = None,
        db_dir: str | None = None,
        extra_args: Sequence[str] = (),
        quiet: bool = True,
        replicas: int = 1,
    ) -> None:
        if shards < 1:
            raise ValueError("a cluster needs at least one shard")
        if replicas < 1:
            raise ValueError("a shard needs at least one replica")
        self.replicas = replicas
        self.servers: list[ServerProcess] = []
        env = dict(os.environ)
        if password is not None:
            env["EXDB_PASSWORD"] = password
        for i in range(shards * replicas):
            args = ["--host", host, "--port", str(base_port + i if base_port else 0)]
            args += ["--engine", engine]
            if db_dir is not None:
                name = f"shard{i + 1}"
                if replicas > 1:
                    name = f"shard{i // replicas + 1}-replica{i % replicas + 1}"
                args += ["--db", os.path.join(db_dir, f"{name}.{engine}")]
            if quiet:
                args.append("--quiet")
            self.servers.append(ServerProcess([*args, *extra_args], env))

    @property
    def nodes(self) -> tuple[str, ...]:
        """The nodes' ``host:port`` addresses, in shard order (a shard's replicas together)."""
        return tuple(s.node for s in self.servers)

    def connect_line(self) -> str:
        """The Python call that connects to this cluster as one database."""
        extra = f", nReplicas={self.replicas}" if self.replicas > 1 else ""
        return f"exdb.connect(nodes={','.join(self.nodes)!r}{extra})"

    def start(self) -> LocalCluster:
        """Start every shard; on failure stop those already started."""
        try:
            for server in self.servers:
                server.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every shard gracefully."""
        for server in self.servers:
            server.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait_forever(self) -> None:
        """Block until a shard exits or the user presses Ctrl-C."""
        while all(s.proc is not None and s.proc.poll() is None for s in self.servers):
            time.sleep(0.5)
