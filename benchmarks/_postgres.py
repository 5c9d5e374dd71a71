"""A private PostgreSQL server for the benchmarks: found (or installed), started, stopped.

The server is Debian's ``postgresql`` package, run on a throwaway data directory (in RAM when
``/dev/shm`` exists), listening on 127.0.0.1 only, on a free port, with its Unix socket inside
that private directory. As root it runs as the ``postgres`` user (PostgreSQL refuses to run as
root). It is always stopped by ``pg_ctl stop``, and the directory removed, when the ``with``
block ends.

>>> status = find_postgres(install=False)            # doctest: +SKIP
>>> with PostgresServer(status) as pg:               # doctest: +SKIP
...     conn = psycopg.connect(**pg.conninfo)
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SETTINGS", "PostgresServer", "PostgresStatus", "find_postgres"]

USER = "bench"  # the database superuser created by initdb (trust authentication, loopback only)

#: Settings written into the private server's postgresql.conf, besides address, port and socket.
#: The first three make it as (non-)durable as exdb's in-memory shards: a fair comparison of
#: speed, not of safety. The others are what one sets for analytics and bulk loads on a machine
#: with memory to spare; everything else is PostgreSQL's default (including parallel query).
SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "1GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "256MB",
    "max_wal_size": "4GB",
}

_HOW = (
    "install it with `apt-get install postgresql` (as root), or run `make bench` as root,"
    " which installs it"
)


@dataclass
class PostgresStatus:
    """Whether a PostgreSQL server can be run here, and how (or why not)."""

    bindir: str | None = None
    run_as: str | None = None  # the user to run initdb/pg_ctl as (when we are root)
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def available(self) -> bool:
        """True when a server can be started."""
        return self.bindir is not None and not self.reason


def _bindir() -> str | None:
    """The directory holding initdb, pg_ctl and postgres, newest version first."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", path)[:2]) or (0,)

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).resolve().parent))
    for d in candidates:
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _install(status: PostgresStatus) -> bool:
    """apt-get install postgresql (root only); stop any cluster the package itself started."""
    if os.geteuid() != 0:
        status.reason = f"PostgreSQL is not installed and this is not root: {_HOW}"
        return False
    if shutil.which("apt-get") is None:
        status.reason = "PostgreSQL is not installed and there is no apt-get to install it"
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("PostgreSQL is not installed: apt-get install postgresql ...", flush=True)
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
    ):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
            status.reason = f"`{shlex.join(cmd)}` failed: {' '.join(tail)}"
            return False
    status.notes.append("PostgreSQL was installed by this run (apt-get install postgresql)")
    # Debian's package creates and may start a "main" cluster on port 5432: we did not ask for
    # it, so stop it (it is the package's, started by this install).
    if shutil.which("pg_lsclusters") and shutil.which("pg_ctlcluster"):
        listing = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True)
        for line in listing.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[3] == "online":
                subprocess.run(["pg_ctlcluster", parts[0], parts[1], "stop"], check=False)
                status.notes.append(
                    f"stopped the cluster {parts[0]}/{parts[1]} the package started"
                )
    return True


def find_postgres(install: bool, disabled: str = "") -> PostgresStatus:
    """Find PostgreSQL's server programs; with ``install`` (and root), apt-get them if missing.

    ``disabled`` (a reason) skips PostgreSQL entirely, e.g. for ``--without-postgres``.
    """
    status = PostgresStatus()
    if disabled:
        status.reason = disabled
        return status
    try:
        import psycopg  # noqa: F401
    except ImportError:
        status.reason = "psycopg is not installed: `pip install 'exdb[bench]'` (make bench does it)"
        return status
    status.bindir = _bindir()
    if status.bindir is None:
        if not install:
            status.reason = f"PostgreSQL's server programs (initdb, pg_ctl) were not found: {_HOW}"
            return status
        if not _install(status):
            return status
        status.bindir = _bindir()
        if status.bindir is None:
            status.reason = "apt-get installed postgresql but initdb/pg_ctl were not found"
            return status
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
            status.run_as = "postgres"
        except KeyError:
            status.reason = (
                "running as root, and there is no `postgres` user to run the server as"
                " (PostgreSQL refuses to run as root): create one, or run as another user"
            )
    return status


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A PostgreSQL server on a private data directory, for the length of a ``with`` block."""

    def __init__(self, status: PostgresStatus, password: str | None = None) -> None:
        if not status.available or status.bindir is None:
            raise RuntimeError(f"PostgreSQL is not available: {status.reason}")
        self.status = status
        #: With a password, TCP logins use SCRAM-SHA-256 (local socket logins stay trusted).
        self.password = password
        self.bindir: str = status.bindir
        self.root = ""
        self.data = ""
        self.port = 0
        self.started = False

    # --- commands -----------------------------------------------------------------------------

    def _cmd(self, program: str, *args: str) -> list[str]:
        cmd = [os.path.join(self.bindir, program), *args]
        if self.status.run_as is None:
            return cmd
        if shutil.which("runuser"):
            return ["runuser", "-u", self.status.run_as, "--", *cmd]
        return ["su", self.status.run_as, "-s", "/bin/sh", "-c", shlex.join(cmd)]

    def _run(self, program: str, *args: str, timeout: float = 120) -> str:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        done = subprocess.run(
            self._cmd(program, *args),
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}"
            )
        return done.stdout

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        """initdb a private directory and start the server on 127.0.0.1:<free port>."""
        parent = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.root = tempfile.mkdtemp(prefix="exdb-bench-pg-", dir=parent)
        self.data = os.path.join(self.root, "data")
        try:
            if self.status.run_as is not None:
                user = pwd.getpwnam(self.status.run_as)
                os.chown(self.root, user.pw_uid, user.pw_gid)
            auth = ["-A", "trust"]
            if self.password is not None:
                pwfile = os.path.join(self.root, "pwfile")
                Path(pwfile).write_text(self.password + "\n")
                if self.status.run_as is not None:
                    os.chown(pwfile, user.pw_uid, user.pw_gid)
                auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
            self._run("initdb", "-D", self.data, "-U", USER, *auth, "-E", "UTF8",
                      "--locale=C", "--no-sync")  # fmt: skip
            for attempt in range(3):
                self.port = free_port()
                settings = {
                    "listen_addresses": "'127.0.0.1'",
                    "port": str(self.port),
                    "unix_socket_directories": f"'{self.root}'",
                    **{k: (f"'{v}'" if not v.isalnum() else v) for k, v in SETTINGS.items()},
                }
                with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
                    conf.write("\n# exdb benchmarks\n")
                    conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
                try:
                    self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.root, "log"),
                              "-w", "-t", "60", "start")  # fmt: skip
                    self.started = True
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """pg_ctl stop (fast), then remove the data directory. Falls back to signalling the
        postmaster of *this* data directory (its pid file) if pg_ctl cannot stop it."""
        try:
            if self.started:
                try:
                    self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")
                except (RuntimeError, subprocess.TimeoutExpired):
                    self._kill_postmaster()
                self.started = False
        finally:
            if self.root:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = ""

    def _kill_postmaster(self) -> None:
        pidfile = os.path.join(self.data, "postmaster.pid")
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(Path(pidfile).read_text().splitlines()[0])
            os.kill(pid, signal.SIGQUIT)
            for _ in range(50):
                time.sleep(0.1)
                os.kill(pid, 0)  # raises once it is gone
            os.kill(pid, signal.SIGKILL)

    @property
    def conninfo(self) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect``."""
        info: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": USER,
            "dbname": "postgres",
        }
        if self.password is not None:
            info["password"] = self.password
        return info

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
