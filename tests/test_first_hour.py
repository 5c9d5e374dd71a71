"""A new user's first hour: the README's first command, URLs typed by hand, passwords kept out of
messages and reprs, error lines read in a log."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import exdb
from exdb.cluster import LocalCluster, ServerProcess

SECRET = "s3cret-first-hour"


def _exdb(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exdb", *args], capture_output=True, text=True, timeout=timeout
    )


def _free_port_pair() -> int:
    """A port p with p and p + 1 free on 127.0.0.1 (bounded search)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base >= 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 1))
        except OSError:
            continue
        return base
    raise AssertionError("no two consecutive free ports found")


def _refused(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_exdb_cluster_serves_until_kill_and_stops_its_shards() -> None:
    """README's first command: the shards start once, the nodes line reaches a pipe at once,
    and `kill PID` stops the shards too."""
    base = _free_port_pair()
    command = [sys.executable, "-m", "exdb", "cluster", "--shards", "2", "--base-port", str(base)]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        _serve_and_kill(proc, base)


def _serve_and_kill(proc: subprocess.Popen[str], base: int) -> None:
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until flushed; the timeout below bounds the test
        nodes = (f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}")
        assert line.strip() == "nodes: " + ",".join(nodes), line or proc.stderr.read()
        with exdb.connect(nodes=nodes, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            conn.cursor().executemany("INSERT INTO t VALUES (?, ?)", [(i, "x") for i in range(20)])
            assert conn.execute("SELECT COUNT(*) FROM t").fetchone() == (20,)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
        assert _refused(base) and _refused(base + 1)  # no shard left behind
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_exdb_cluster_bad_counts_in_one_line() -> None:
    result = _exdb("cluster", "--shards", "0", timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--shards" in result.stderr.strip().splitlines()[-1]


def test_help_texts_say_what_the_commands_do() -> None:
    demo = _exdb("demo", "--help")
    assert "two local shards" in demo.stdout
    cluster = _exdb("cluster", "--help")
    assert "Port of shard 1" in cluster.stdout and "How many shards" in cluster.stdout


def test_exdb_run_errors_are_whole_lines_in_a_log(tmp_path: Path) -> None:
    """stderr to a file: each failure on one line, not cut at 80 columns."""
    script = tmp_path / "s.sql"
    long_name = "a_rather_long_table_name_that_does_not_exist_anywhere_" * 2
    script.write_text(f"SELECT 1;\nSELECT * FROM {long_name} WHERE id = 1;\n")
    with LocalCluster(2) as cluster:
        result = _exdb("run", "--nodes", ",".join(cluster.nodes), str(script))
    assert result.returncode == 1
    failure = [line for line in result.stderr.splitlines() if "statement 2 (line 2)" in line]
    assert len(failure) == 1, result.stderr
    assert f"(statement: SELECT * FROM {long_name} WHERE id = 1)" in failure[0]


def test_connect_takes_an_exdb_url(start_server: Callable[..., ServerProcess]) -> None:
    first, second = start_server(), start_server()
    with exdb.connect(f"exdb://{first.node}/?autocommit=true") as one:
        assert isinstance(one, exdb.Connection)
        assert one.autocommit is True
        assert one.execute("SELECT 41 + 1").fetchone() == (42,)
    with exdb.connect(f"exdb://{first.node},{second.node}/") as conn:
        assert isinstance(conn, exdb.DistributedConnection)
        conn.execute("CREATE TABLE u (id INTEGER PRIMARY KEY)")
        conn.cursor().executemany("INSERT INTO u VALUES (?)", [(i,) for i in range(10)])
        conn.commit()
        assert conn.execute("SELECT COUNT(*) FROM u").fetchone() == (10,)

    async def main() -> object:
        conn = await exdb.connect_async(f"exdb://{first.node},{second.node}/")
        try:
            cur = await conn.execute("SELECT COUNT(*) FROM u")
            return await cur.fetchall()
        finally:
            await conn.close()

    assert asyncio.run(main()) == [(10,)]
    with pytest.raises(exdb.ProgrammingError, match="without port or nodes"):
        exdb.connect(f"exdb://{first.node}/", nodes=[first.node])


def test_url_password_reaches_the_server(start_server: Callable[..., ServerProcess]) -> None:
    node = start_server(env={"EXDB_PASSWORD": SECRET})
    with exdb.connect(f"exdb://{node.node}/?password={SECRET}") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(exdb.OperationalError, match="authentication failed") as info:
        exdb.connect(f"exdb://{node.node}/?password=wrong-{SECRET}")
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "typed",
    [
        f"exdb//127.0.0.1:1/?password={SECRET}",
        f"127.0.0.1:1/?password={SECRET}",
        f"exdb//user:{SECRET}@127.0.0.1:1/",
    ],
)
def test_a_mistyped_url_keeps_the_password_out_of_the_error(typed: str) -> None:
    with pytest.raises(exdb.ProgrammingError) as info:
        exdb.connect(typed)
    assert SECRET not in str(info.value)
    assert "***" in str(info.value)
    from exdb.client.url import parse_url

    with pytest.raises(exdb.ProgrammingError) as parsed:
        parse_url(typed)
    assert SECRET not in str(parsed.value)


def test_the_shell_keeps_a_mistyped_urls_password_off_stderr() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXDB_")}
    result = subprocess.run(
        [sys.executable, "-m", "exdb", "shell", f"exdb//127.0.0.1:1/?password={SECRET}", "-c", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2
    assert "not an exdb URL" in result.stderr
    assert SECRET not in result.stderr


def test_sqlalchemy_engine_repr_hides_a_query_password(
    start_server: Callable[..., ServerProcess],
) -> None:
    pytest.importorskip("sqlalchemy")
    from exdb.sqlalchemy import create_engine

    first = start_server(env={"EXDB_PASSWORD": SECRET})
    second = start_server(env={"EXDB_PASSWORD": SECRET})
    engine = create_engine(f"exdb://{first.node},{second.node}/?password={SECRET}")
    try:
        assert SECRET not in repr(engine) and SECRET not in str(engine.url)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    finally:
        engine.dispose()
    one = create_engine(f"exdb://{first.node}/?sql_password={SECRET}")
    try:
        assert SECRET not in repr(one)
        with one.connect() as conn:
            assert conn.exec_driver_sql("SELECT 2").scalar() == 2
    finally:
        one.dispose()
