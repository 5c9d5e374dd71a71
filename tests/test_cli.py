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
    assert "AsyncDistributedConnection with nWorkers=2" in out
    assert 'conn.execute("SELECT 1,2")' in out
    assert "parallel INSERTs into MyTable -> [1, 1]" in out
    for sql, value in [("COUNT(*)", "2"), ("SUM(pk)", "100"), ("SUM(i1)", "1"), ("SUM(i2)", "1")]:
        assert f"SELECT {sql} FROM MyTable" in out
        assert f"│ {value} " in out
    assert "str1" in out and "100.9" in out
    assert "node 1 holds pk" in out and "node 2 holds pk" in out
    assert "shards stopped" in out


def test_run_a_script_with_a_progress_bar(tmp_path: Path) -> None:
    from exdb.cluster import LocalCluster

    script = tmp_path / "script.sql"
    lines = ["CREATE TABLE s (k INTEGER PRIMARY KEY, v TEXT);"]
    lines += [f"INSERT INTO s VALUES ({i}, 'a;b {i}');" for i in range(300)]
    lines += ["SELECT COUNT(*) FROM s;", "SELEC oops;"]
    script.write_text("\n".join(lines))
    with LocalCluster(2) as cluster:
        result = _exdb("run", "--nodes", ",".join(cluster.nodes), str(script), "--workers", "2")
        import exdb

        with exdb.connect(nodes=cluster.nodes) as conn:
            assert conn.execute("SELECT COUNT(*) FROM s").fetchone() == (300,)
    assert result.returncode == 1  # one statement failed
    assert "303/303" in result.stderr
    assert "statement 303" in result.stderr and "SELEC oops" in result.stderr
    assert "[node 127.0.0.1:" in result.stderr


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


def test_client_commands_take_the_password_from_a_file_not_the_command_line(
    tmp_path: Path,
) -> None:
    import os

    from exdb.cluster import LocalCluster

    secret = "cli-secret-1"
    pwfile = tmp_path / "pw"
    pwfile.write_text(secret + "\n")
    env = {k: v for k, v in os.environ.items() if k != "EXDB_PASSWORD"}
    with LocalCluster(2, password=secret) as cluster:
        nodes = ",".join(cluster.nodes)

        def explain(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "exdb", "explain", "--nodes", nodes, *args, "SELECT 1"],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
            )

        from_file = explain("--password-file", str(pwfile))
        assert from_file.returncode == 0, from_file.stderr
        assert "WARNING" not in from_file.stderr
        on_the_line = explain("--password", secret)
        assert on_the_line.returncode == 0, on_the_line.stderr
        assert "WARNING" in on_the_line.stderr and "--password-file" in on_the_line.stderr
        wrong = tmp_path / "wrong"
        wrong.write_text("not-it\n")
        refused = explain("--password-file", str(wrong))
        assert refused.returncode != 0 and "authentication failed" in refused.stderr
        missing = explain("--password-file", str(tmp_path / "nothing"))
        assert missing.returncode != 0 and "cannot read the password file" in missing.stderr
