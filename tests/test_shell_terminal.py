"""exdb shell in a real terminal: keys typed into a pseudo-terminal (and into tmux), the screen
read back through a terminal emulator."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import exdb
from exdb.cluster import LocalCluster

pytest.importorskip("prompt_toolkit", reason="exdb shell needs the shell extra")
pytest.importorskip("pexpect", reason="the terminal tests need pexpect")
pytest.importorskip("pyte", reason="the terminal tests need pyte")

from _terminal import Terminal

UP, TAB, ENTER, CTRL_C, CTRL_D = "\x1b[A", "\t", "\r", "\x03", "\x04"


@pytest.fixture(scope="module")
def nodes() -> Iterator[str]:
    with LocalCluster(2) as cluster:
        with exdb.connect(nodes=cluster.nodes) as conn:
            conn.execute("CREATE TABLE customers (cust_id INTEGER PRIMARY KEY, cust_name TEXT)")
            conn.execute("INSERT INTO customers VALUES (1, 'ann'), (2, 'bob'), (3, 'cy')")
        yield ",".join(cluster.nodes)


def _env(nodes: str, history: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXDB_")}
    env.update(EXDB_NODES=nodes, EXDB_HISTORY=str(history), TERM="xterm-256color")
    return env


@pytest.fixture
def term(nodes: str, tmp_path: Path) -> Iterator[Terminal]:
    t = Terminal([sys.executable, "-m", "exdb", "shell"], _env(nodes, tmp_path / "history"))
    try:
        t.wait_for("exdb>")
        yield t
    finally:
        t.close()


def test_tab_completes_columns_and_tables_and_enter_continues_a_statement(
    term: Terminal,
) -> None:
    term.send("SELECT cust_n" + TAB)
    term.wait_for("SELECT cust_name")
    term.send(" FROM cust" + TAB)
    term.wait_for("SELECT cust_name FROM customers")
    term.send(ENTER)  # no ';' yet: a new line of the same statement
    term.wait_for("...>")
    term.send("ORDER BY cust_name DESC;" + ENTER)
    screen = term.wait_for("(3 rows)")
    lines = screen.splitlines()
    names = [n for n in ("cy", "bob", "ann") for line in lines if f"│ {n} " in line]
    assert names == ["cy", "bob", "ann"], screen


def test_up_recalls_the_last_statement_and_history_is_kept_in_the_file(
    nodes: str, tmp_path: Path
) -> None:
    history = tmp_path / "state" / "history"
    t = Terminal([sys.executable, "-m", "exdb", "shell"], _env(nodes, history))
    try:
        t.wait_for("exdb>")
        t.send("SELECT COUNT(*) AS n_rows FROM customers;" + ENTER)
        t.wait_for("(1 row)")
        t.send(UP)
        t.settle()
        assert t.line_with("exdb>").count("SELECT COUNT(*) AS n_rows") == 1
        t.send(ENTER)
        t.wait_for("(1 row)", count=2)  # the recalled statement ran again
        assert t.text.count("exdb> SELECT COUNT(*) AS n_rows FROM customers;") == 2
        t.send(CTRL_D)
        assert t.wait_exit() == 0
    finally:
        t.close()
    assert "SELECT COUNT(*) AS n_rows FROM customers;" in history.read_text()
    assert history.stat().st_mode & 0o077 == 0  # only its owner reads it

    # A new shell starts with that history.
    t = Terminal([sys.executable, "-m", "exdb", "shell"], _env(nodes, history))
    try:
        t.wait_for("exdb>")
        t.send(UP)
        t.wait_for("exdb> SELECT COUNT(*) AS n_rows FROM customers;")
    finally:
        t.close()


def test_meta_commands_formats_and_an_error_that_leaves_the_shell_running(
    term: Terminal,
) -> None:
    term.send("\\d" + ENTER)
    term.wait_for("distributed")
    term.send("\\d customers" + ENTER)
    term.wait_for("Distribution: distributed by hash(cust_id)")
    assert "PRIMARY KEY" in term.line_with("│ cust_id ")
    term.send("SELECT nothing_here FROM customers;" + ENTER)
    term.wait_for("ERROR:")
    assert "nothing_here" in term.line_with("ERROR:")
    term.send("\\timing on" + ENTER)
    term.wait_for("Timing is on.")
    term.send("\\format csv" + ENTER)
    term.wait_for("Output format is csv.")
    term.send("SELECT cust_id, cust_name FROM customers WHERE cust_id = 2;" + ENTER)
    term.wait_for("2,bob")
    term.wait_for("Time: ")
    assert "cust_id,cust_name" in term.text
    term.send("\\format json" + ENTER)
    term.wait_for("Output format is json.")
    term.send("SELECT cust_name FROM customers WHERE cust_id = 3;" + ENTER)
    term.wait_for('{"cust_name": "cy"}')
    term.send("\\explain SELECT * FROM customers WHERE cust_id = 1" + ENTER)
    term.wait_for("plan: single")
    term.send("\\?" + ENTER)
    term.wait_for("\\copy TABLE")
    term.send("\\q" + ENTER)
    assert term.wait_exit() == 0


def test_ctrl_c_clears_the_line_and_ctrl_d_leaves(term: Terminal) -> None:
    term.send("SELECT 'half typed")
    term.wait_for("half typed")
    term.send(CTRL_C)
    term.send("SELECT 40 + 2 AS answer;" + ENTER)
    term.wait_for("(1 row)")
    assert "42" in term.text
    term.send(CTRL_D)
    assert term.wait_exit() == 0


def test_a_transaction_opened_with_begin_shows_in_the_prompt(term: Terminal) -> None:
    term.send("BEGIN;" + ENTER)
    term.wait_for("exdb*>")
    term.send("INSERT INTO customers VALUES (99, 'temp');" + ENTER)
    term.wait_for("1 row affected")
    term.send("ROLLBACK;" + ENTER)
    term.wait_for("ROLLBACK")
    term.send("SELECT COUNT(*) FROM customers WHERE cust_id = 99;" + ENTER)
    term.wait_for("(1 row)")
    assert "│ 0 " in term.text or "│        0 │" in term.text


# --- tmux -------------------------------------------------------------------------------------


TMUX = shutil.which("tmux")


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
def test_the_shell_in_tmux(nodes: str, tmp_path: Path) -> None:
    assert TMUX is not None
    socket = str(tmp_path / "tmux.sock")
    env = _env(nodes, tmp_path / "history")
    command = " ".join(
        [
            "env",
            *(f"{k}={v}" for k, v in env.items() if k.startswith("EXDB_") or k == "TERM"),
            sys.executable,
            "-m",
            "exdb",
            "shell",
        ]
    )

    def tmux(*args: str) -> str:
        return subprocess.run(
            [TMUX, "-S", socket, *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout

    def screen_with(needle: str) -> str:
        deadline = time.monotonic() + 20
        while True:
            screen = tmux("capture-pane", "-p", "-t", "exdbtest")
            if needle in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never appeared in tmux:\n{screen}")
            time.sleep(0.1)

    tmux("-f", "/dev/null", "new-session", "-d", "-s", "exdbtest", "-x", "120", "-y", "40", command)
    try:
        screen_with("exdb>")
        tmux("send-keys", "-t", "exdbtest", "SELECT cust_name FROM custo", "Tab")
        screen_with("FROM customers")
        # tmux reads an argument's trailing ';' as a command separator: "\\;" is the key.
        tmux("send-keys", "-t", "exdbtest", "Enter", "WHERE cust_id = 1\\;", "Enter")
        screen = screen_with("(1 row)")
        assert "ann" in screen and "...>" in screen
        tmux("send-keys", "-t", "exdbtest", "\\q", "Enter")
        deadline = time.monotonic() + 20
        while (
            "exdbtest"
            in subprocess.run(
                [TMUX, "-S", socket, "list-sessions"], capture_output=True, text=True, timeout=10
            ).stdout
        ):
            assert time.monotonic() < deadline, "the shell did not end on \\q"
            time.sleep(0.1)
    finally:
        subprocess.run([TMUX, "-S", socket, "kill-server"], capture_output=True, timeout=10)
