"""Start-up: what ``import exdb``, each door, ``exdb serve`` and ``exdb --help`` load.

Every check runs in a fresh interpreter and looks at which modules it loaded, so it cannot fail
by noise (the times are in benchmarks/startup.py).
"""

from __future__ import annotations

import json
import os
import pickle
import selectors
import signal
import subprocess
import sys
import textwrap

import pytest

import exdb
import exdb.client
import exdb.client.aio
import exdb.client.sync
import exdb.distributed.connection
import exdb.errors
import exdb.types
import exdb.workers.connection

#: Never loaded by ``import exdb``: the doors, the engine, the server, and the big libraries
#: that optional features (Arrow, DataFrames, the shell, SQLAlchemy) import when used.
HEAVY = (
    "asyncio",
    "ssl",
    "sqlglot",
    "scramp",
    "msgpack",
    "click",
    "rich",
    "apsw",
    "duckdb",
    "numpy",
    "pyarrow",
    "pandas",
    "polars",
    "prompt_toolkit",
    "sqlalchemy",
    "concurrent.futures",
    "importlib.metadata",
    "exdb.client",
    "exdb.distributed",
    "exdb.workers",
    "exdb.server",
    "exdb.wire",
    "exdb.cluster",
    "exdb.cli",
)


def loaded_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def under(modules: set[str], *prefixes: str) -> set[str]:
    """The modules that are one of ``prefixes`` or inside one of them."""
    return {m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)}


def test_import_exdb_loads_nothing_heavy() -> None:
    modules = loaded_after("import exdb")
    assert under(modules, *HEAVY) == set()
    assert {"exdb", "exdb.errors", "exdb.types"} <= modules


def test_import_star_and_every_public_name() -> None:
    modules = loaded_after(
        textwrap.dedent(
            """
            import exdb
            assert set(exdb.__all__) <= set(dir(exdb)), set(exdb.__all__) - set(dir(exdb))
            for name in exdb.__all__:
                getattr(exdb, name)
            ns = {}
            exec("from exdb import *", ns)
            missing = set(exdb.__all__) - set(ns)
            assert not missing, missing
            """
        )
    )
    # Every door is loaded now: the names resolved to the real classes.
    assert {"exdb.client.aio", "exdb.distributed.connection", "exdb.workers.connection"} <= modules


def test_lazy_names_are_the_same_objects() -> None:
    assert exdb.Connection is exdb.client.sync.Connection is exdb.client.Connection
    assert exdb.Cursor is exdb.client.sync.Cursor
    assert exdb.AsyncConnection is exdb.client.aio.AsyncConnection is exdb.client.AsyncConnection
    assert exdb.DistributedConnection is exdb.distributed.connection.DistributedConnection
    assert exdb.DistributedCursor is exdb.distributed.connection.DistributedCursor
    assert exdb.AsyncDistributedConnection is exdb.workers.connection.AsyncDistributedConnection
    assert exdb.ResultSet is exdb.workers.connection.ResultSet
    assert exdb.Error is exdb.errors.Error
    assert exdb.ProgrammingError is exdb.errors.ProgrammingError
    assert exdb.STRING is exdb.types.STRING
    assert issubclass(exdb.UnknownTableError, exdb.ProgrammingError)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        exdb.nope  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        exdb.client.nope  # noqa: B018


def test_subpackages_stay_reachable_as_attributes() -> None:
    modules = loaded_after("import exdb; exdb.client.Connection; exdb.workers; exdb.wire.codec")
    assert {"exdb.client.sync", "exdb.workers.connection", "exdb.wire.codec"} <= modules


def test_one_node_connect_loads_neither_sqlglot_nor_asyncio(sqlite_node: str) -> None:
    modules = loaded_after(
        f"import exdb\nwith exdb.connect({sqlite_node!r}) as c:\n"
        "    assert c.execute('SELECT 1').fetchall() == [(1,)]"
    )
    assert "exdb.client.sync" in modules
    assert under(modules, "sqlglot", "asyncio", "ssl", "exdb.distributed", "exdb.workers") == set()
    assert under(modules, "pyarrow", "pandas", "numpy", "scramp", "exdb.server") == set()


def test_ssl_only_with_ssl_params() -> None:
    parse = "from exdb.client.options import ConnectOptions\nConnectOptions.from_kwargs({})"
    assert "ssl" not in loaded_after(parse)
    with_tls = "from exdb.client.options import ConnectOptions\n" + (
        "o = ConnectOptions.from_kwargs({'ssl_params': {'verify': False}})\n"
        "assert o.ssl_context is not None"
    )
    assert "ssl" in loaded_after(with_tls)


def test_distributed_connect_loads_the_engine_not_asyncio(sqlite_node: str) -> None:
    modules = loaded_after(
        f"import exdb\nwith exdb.connect(nodes=[{sqlite_node!r}]) as c:\n"
        "    assert c.execute('SELECT 2').fetchall() == [(2,)]"
    )
    assert {"exdb.distributed.connection", "sqlglot"} <= modules
    assert under(modules, "asyncio", "ssl", "exdb.client.aio", "exdb.workers") == set()


def test_async_connect_loads_asyncio(sqlite_node: str) -> None:
    modules = loaded_after(
        "import asyncio, exdb\n"
        "async def main():\n"
        f"    conn = await exdb.connect_async({sqlite_node!r})\n"
        "    cur = await conn.execute('SELECT 3')\n"
        "    assert await cur.fetchall() == [(3,)]\n"
        "    await conn.close()\n"
        "asyncio.run(main())"
    )
    assert "exdb.client.aio" in modules
    assert under(modules, "sqlglot", "exdb.distributed") == set()


def test_exceptions_and_result_sets_pickle_into_a_fresh_process() -> None:
    error = exdb.ProgrammingError("bad", node="127.0.0.1:1", statement="SELECT ?")
    rows = exdb.ResultSet(["a", "b"], [None, None], [(1, "x"), (2, None)])
    payload = pickle.dumps((error, rows, exdb.UnknownTableError("no such table: t")))
    # The child unpickles before touching exdb: the lazy names must resolve through pickle.
    child = textwrap.dedent(
        """
        import pickle, sys
        error, rows, unknown = pickle.loads(sys.stdin.buffer.read())
        import exdb
        assert type(error) is exdb.ProgrammingError and isinstance(error, exdb.Error)
        assert (error.node, error.statement, error.message) == ("127.0.0.1:1", "SELECT ?", "bad")
        assert type(rows) is exdb.ResultSet and rows == [(1, "x"), (2, None)]
        assert rows.columns == ["a", "b"]
        assert isinstance(unknown, exdb.ProgrammingError)
        sys.stdout.buffer.write(pickle.dumps((error, rows)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", child], input=payload, capture_output=True, timeout=60
    )
    assert out.returncode == 0, out.stderr.decode()
    back_error, back_rows = pickle.loads(out.stdout)
    assert type(back_error) is exdb.ProgrammingError
    assert back_error.statement == "SELECT ?"
    assert back_rows == rows and back_rows.columns == ["a", "b"]


def test_the_cli_help_loads_neither_client_nor_server() -> None:
    modules = loaded_after(
        "import sys\nsys.argv = ['exdb', '--help']\nfrom exdb.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code"
    )
    assert "click" in modules
    heavy = (
        "sqlglot",
        "asyncio",
        "rich",
        "scramp",
        "exdb.client",
        "exdb.distributed",
        "exdb.server",
    )
    assert under(modules, *heavy) == set()


def _imported_by(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines ("import time: self | cumulative | name")."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


@pytest.mark.parametrize("engine", ["sqlite", "duckdb"])
def test_exdb_serve_loads_neither_the_client_stack_nor_sqlglot(engine: str) -> None:
    """The real ``exdb serve`` process, under ``-X importtime``, serves a few statements; every
    module it imported (at start and while serving) is in its stderr."""
    cmd = [sys.executable, "-X", "importtime", "-m", "exdb", "serve"]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--engine", engine, "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "EXDB_PASSWORD"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(60), "exdb serve did not start"
        line = proc.stdout.readline()
        assert line.startswith("exdb serve: listening on "), line
        node = line[len("exdb serve: listening on ") :].split()[0]
        with exdb.connect(node, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "a"), (2, "b")])
            assert conn.execute("SELECT v FROM t ORDER BY id").fetchall() == [("a",), ("b",)]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    modules = _imported_by(stderr)
    assert {"exdb.server.app", "exdb.server.session", "click"} <= modules  # the parse works
    forbidden = (
        "sqlglot",
        "asyncio",
        "rich",
        "scramp",
        "exdb.client",
        "exdb.distributed",
        "exdb.workers",
    )
    assert under(modules, *forbidden) == set()


def test_the_pytest_plugin_loads_nothing_heavy() -> None:
    before = loaded_after("import pytest")
    after = loaded_after("import pytest, exdb.pytest_plugin")
    assert under(after - before, *HEAVY) == set()
    assert "exdb.pytest_plugin" in after


@pytest.mark.timeout(330)
def test_startup_benchmark_quick_mode_runs() -> None:
    """The benchmark runs end to end and prints every figure (times are never asserted)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "startup.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for label in (
        "import sqlite3",
        "import exdb ",
        "connect(1 node), SELECT",
        "connect(2 nodes), SELECT",
        "exdb --help",
        "exdb serve until listening",
        "exdb plugin only",
        "import exdb / import sqlite3",
        "pytest plugin adds:",
    ):
        assert label in result.stdout, label
