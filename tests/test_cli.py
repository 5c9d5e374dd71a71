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
    assert "303 statements" in result.stderr
    assert result.stdout.splitlines()[-2:] == ["      300", "(1 row)"]  # what the SELECT returned
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


# --- exdb run: results, order, --stop-on-error, -1; one-line errors ---------------------------


def test_run_prints_selects_in_statement_order_and_keeps_writes_in_order(tmp_path: Path) -> None:
    from exdb.cluster import LocalCluster

    script = tmp_path / "order.sql"
    lines = ["CREATE TABLE o (k INTEGER PRIMARY KEY, v INTEGER);"]
    lines += [f"INSERT INTO o VALUES ({i}, {i});" for i in range(50)]
    lines += ["UPDATE o SET v = v * 10;", "SELECT SUM(v) AS total FROM o;"]
    lines += ["DELETE FROM o WHERE k >= 10;", "SELECT COUNT(*) AS n FROM o;"]
    lines += ["SELECT k, v FROM o WHERE k < 2 ORDER BY k;"]
    script.write_text("\n".join(lines))
    with LocalCluster(2) as cluster:
        nodes = ",".join(cluster.nodes)
        result = _exdb("run", "--nodes", nodes, str(script), "--format", "csv")
        assert result.returncode == 0, result.stderr
        # The UPDATE ran after every INSERT, the DELETE after the SUM: one database's answers.
        assert result.stdout == "total\n12250\nn\n10\nk,v\n0,0\n1,10\n"
        quiet = _exdb("run", "--nodes", nodes, "--format", "none", str(tmp_path / "q.sql"))
        assert quiet.returncode != 0 and "Traceback" not in quiet.stderr  # no such file


def test_run_stop_on_error_and_single_transaction(tmp_path: Path) -> None:
    import exdb
    from exdb.cluster import LocalCluster

    script = tmp_path / "s.sql"
    script.write_text(
        "INSERT INTO st VALUES (1);\nINSERT INTO st VALUES (1);\nINSERT INTO st VALUES (2);\n"
    )
    with LocalCluster(2) as cluster:
        nodes = ",".join(cluster.nodes)
        with exdb.connect(nodes=cluster.nodes) as conn:
            conn.execute("CREATE TABLE st (k INTEGER PRIMARY KEY)")

        def count() -> int:
            with exdb.connect(nodes=cluster.nodes) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM st").fetchone()[0])

        stopped = _exdb("run", "--nodes", nodes, "--stop-on-error", str(script))
        assert stopped.returncode == 1
        assert (
            "statement 2 (line 2)" in stopped.stderr
            and "stopped at the first error" in stopped.stderr
        )
        assert count() == 1
        with exdb.connect(nodes=cluster.nodes) as conn:
            conn.execute("DELETE FROM st")
        rolled = _exdb("run", "--nodes", nodes, "-1", str(script))
        assert rolled.returncode == 1 and "rolled back" in rolled.stderr
        assert count() == 0
        good = tmp_path / "good.sql"
        good.write_text("INSERT INTO st VALUES (5);\nINSERT INTO st VALUES (6);\nSELECT 7;\n")
        committed = _exdb("run", "--nodes", nodes, "--single-transaction", str(good))
        assert committed.returncode == 0, committed.stderr
        assert count() == 2
        assert committed.stdout.splitlines()[-2:] == [" 7", "(1 row)"]


def test_client_commands_name_a_node_that_is_down_in_one_line(tmp_path: Path) -> None:
    from exdb.cluster import LocalCluster

    with LocalCluster(1) as cluster:
        node = cluster.nodes[0]
    script = tmp_path / "s.sql"
    script.write_text("SELECT 1;\n")
    for args in (
        ("explain", "--nodes", node, "SELECT 1"),
        ("run", "--nodes", node, str(script)),
        ("run", "--nodes", node, "-1", str(script)),
        ("shell", "--nodes", node, "-c", "SELECT 1"),
    ):
        result = _exdb(*args, timeout=60)
        assert result.returncode == 1, args
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert node in result.stderr and "Traceback" not in result.stderr


def test_bad_input_to_client_commands_is_one_line() -> None:
    for args in (
        ("explain", "--nodes", "nohost", "SELECT 1"),
        ("explain", "--url", "exdb://h:0", "SELECT 1"),
        ("run", "--nodes", "127.0.0.1:1", "/no/such/file.sql"),
        ("shell", "--nodes", "127.0.0.1:1", "-f", "/no/such/file.sql", "--format", "xml"),
    ):
        result = _exdb(*args, timeout=60)
        assert result.returncode != 0, args
        assert "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("Error:"), result.stderr


def test_cluster_on_a_port_in_use_says_which_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = _exdb("cluster", "--shards", "2", "--base-port", str(port - 1), timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"shard 2: cannot listen on 127.0.0.1:{port}" in lines[0]
    assert "--base-port" in lines[0]


def test_shell_without_prompt_toolkit_names_the_extra(tmp_path: Path) -> None:
    pexpect = __import__("pytest").importorskip("pexpect")
    fake = tmp_path / "prompt_toolkit"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('not installed (test)')\n")
    import os

    env = dict(os.environ, PYTHONPATH=str(tmp_path), EXDB_NODES="127.0.0.1:1")
    child = pexpect.spawn(
        sys.executable, ["-m", "exdb", "shell"], env=env, encoding="utf-8", timeout=30
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    out = child.before.strip()
    assert out == "Error: exdb shell needs the prompt_toolkit package: pip install 'exdb[shell]'"


def test_run_batches_only_plain_inserts_or_plain_selects_together() -> None:
    from exdb.script import _batches, parallel_class
    from exdb.shell.split import iter_statements

    script = """
        CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO t VALUES (1, 'a'); INSERT INTO t (k, v) VALUES (2, 'b; c');
        SELECT * FROM t; SELECT COUNT(*) FROM t;
        INSERT INTO t VALUES (3, 'c');
        UPDATE t SET v = 'x'; INSERT INTO t SELECT k + 10, v FROM t;
        INSERT OR REPLACE INTO t VALUES (1, 'r'); INSERT INTO t VALUES ((SELECT 5), 'y');
        SELECT create_reference_table('t'); SELECT 1; SELECT 2;
    """
    statements = list(iter_statements(script))
    classes = [parallel_class(s) for s in statements]
    assert classes == [
        None,
        "insert",
        "insert",
        "select",
        "select",
        "insert",
        None,
        None,
        None,
        None,
        None,
        "select",
        "select",
    ]
    sizes = [len(batch) for batch in _batches(statements)]
    assert sizes == [1, 2, 2, 1, 1, 1, 1, 1, 1, 2]


def test_run_stream_benchmark_runs_at_a_small_size() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_stream.py"), "--statements", "2000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sooner streaming" in result.stdout and "rows checked" in result.stdout


def test_a_missing_duckdb_extra_is_one_line_naming_it(tmp_path: Path) -> None:
    import os

    fake = tmp_path / "duckdb"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('not installed (test)')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    for command in ("serve", "cluster", "demo"):
        result = subprocess.run(
            [sys.executable, "-m", "exdb", command, "--engine", "duckdb"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert result.returncode == 1, command
        assert result.stderr.strip().splitlines() == [
            f"Error: exdb {command} --engine duckdb needs the duckdb package:"
            " pip install 'exdb[duckdb]'"
        ]
