"""The command line, run as a user runs it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _exdb(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exdb", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_the_commands() -> None:
    result = _exdb("--help")
    assert result.returncode == 0
    for command in ("serve", "cluster", "demo"):
        assert command in result.stdout


def test_demo_runs_end_to_end() -> None:
    result = _exdb("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "SELECT 1, 2" in out
    assert "inserted 2 rows" in out
    assert "str1" in out and "100.9" in out
    assert "stopped" in out


def test_serve_on_a_taken_port_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = _exdb("serve", "--port", str(port), "--quiet", timeout=30)
    assert result.returncode != 0
    assert f"127.0.0.1:{port}" in result.stderr


def test_serve_refuses_half_a_tls_configuration() -> None:
    result = _exdb("serve", "--port", "0", "--tls-cert", "x.pem", timeout=30)
    assert result.returncode != 0
    assert "--tls-key" in result.stderr


def test_roundtrip_benchmark_quick_mode_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "roundtrip.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "exdb/echo = " in result.stdout
    assert "64 in flight" in result.stdout
