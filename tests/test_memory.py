"""The server's memory ceiling (``exdb serve --max-memory``): a statement or a frame that asks for
more memory than the ceiling fails on its own, and the server goes on serving everyone else,
instead of the kernel killing it. Real servers; the allocations are real."""

from __future__ import annotations

import os
import resource
import signal
import struct
from collections.abc import Callable

import pytest

import exdb
from exdb.cluster import ServerProcess
from exdb.server.memory import apply_memory_ceiling, default_ceiling, parse_size
from exdb.wire.codec import encode_frame
from exdb.wire.messages import MAGIC, PROTOCOL_VERSION, Msg

from _handshake import messages_until_close, open_raw, others_served, vm_rss_kib

StartServer = Callable[..., ServerProcess]


def _alive(server: ServerProcess) -> bool:
    assert server.proc is not None
    return server.proc.poll() is None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT len(range(1000000000))",  # an 8 GB list, outside DuckDB's memory_limit
        "SELECT length(repeat('x', 3000000000))",
        "SELECT len(list_resize([1], 1500000000))",
    ],
)
def test_a_duckdb_allocation_past_the_ceiling_fails_its_statement_only(
    start_server: StartServer, sql: str
) -> None:
    server = start_server("--engine", "duckdb", "--max-memory", "2GB")
    with others_served(server.node) as healthy:
        with pytest.raises(exdb.OperationalError, match=r"(?i)memory") as caught:
            healthy.cursor().execute(sql).fetchall()
        assert caught.value.node == server.node
        assert _alive(server)
    assert server.pid is not None
    assert vm_rss_kib(server.pid) < 2 * 1024 * 1024


def test_a_frame_that_decodes_past_the_ceiling_closes_its_session_only(
    start_server: StartServer,
) -> None:
    # After login a client may send frames up to --max-frame; one made of 60 million empty maps
    # decodes into gigabytes. At the ceiling the decoding fails, and that session is closed.
    server = start_server("--engine", "sqlite", "--max-memory", "1GB")
    with others_served(server.node):
        with open_raw(server.node) as sock:
            hello = [Msg.HELLO, 0, {"protocol": PROTOCOL_VERSION, "client": "attack"}]
            sock.sendall(MAGIC + encode_frame(hello))
            count = 60_000_000
            body = (
                b"\x95"  # [QUERY, 1, "SELECT ?", params, 0]
                + bytes([Msg.QUERY, 1])
                + b"\xa8SELECT ?"
                + b"\xdd"
                + struct.pack(">I", count)
                + b"\x80" * count
                + b"\x00"
            )
            sock.sendall(struct.pack(">I", len(body)) + body)
            answers = messages_until_close(sock, limit=60)
        assert answers[0][0] == Msg.WELCOME
        errors = [m for m in answers if m[0] == Msg.ERROR]
        assert errors and "not enough memory to decode a frame" in errors[-1][3], answers
        assert _alive(server)


def test_the_server_starts_with_a_ceiling_and_refuses_a_bad_one(
    start_server: StartServer,
) -> None:
    server = start_server("--engine", "sqlite", "--max-memory", "3GiB")
    assert server.pid is not None
    with open(f"/proc/{server.pid}/limits") as f:
        line = next(x for x in f if x.startswith("Max data size"))
    assert line.split()[3] == str(3 * 1024**3)
    with pytest.raises(RuntimeError, match="did not start"):
        start_server("--engine", "sqlite", "--max-memory", "lots")
    # "0" is no ceiling, even when the process that starts the server has one of its own.
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (16 * 1024**3, hard))
    try:
        unlimited = start_server("--engine", "sqlite", "--max-memory", "0")
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    assert unlimited.pid is not None
    with open(f"/proc/{unlimited.pid}/limits") as f:
        line = next(x for x in f if x.startswith("Max data size"))
    assert line.split()[3] == "unlimited"


def test_sizes_parse_as_duckdb_writes_them() -> None:
    assert parse_size("8GB") == 8 * 1000**3
    assert parse_size("512MiB") == 512 * 1024**2
    assert parse_size("1.5 GiB") == int(1.5 * 1024**3)
    assert parse_size("4096") == 4096
    for bad in ("", "GB", "-1GB", "12XB", "1e9"):
        with pytest.raises(ValueError, match="bad size"):
            parse_size(bad)


def test_the_default_ceiling_is_a_share_of_the_machine() -> None:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    ceiling = default_ceiling()
    assert ceiling is not None
    assert 0.5 * total < ceiling < total


def test_the_ceiling_never_rises_above_the_hard_limit() -> None:
    # In a child process, so that this test run keeps its own limits.
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the ceiling behaved
        code = 1
        try:
            resource.setrlimit(resource.RLIMIT_DATA, (1 << 34, 1 << 34))
            ok = apply_memory_ceiling(1 << 40) == 1 << 34
            ok = ok and apply_memory_ceiling(1 << 33) == 1 << 33
            ok = ok and apply_memory_ceiling(None) == 1 << 34  # "none": up to the hard limit
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert not os.WIFSIGNALED(status) or os.WTERMSIG(status) != signal.SIGKILL
