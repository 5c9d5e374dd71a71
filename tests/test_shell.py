"""exdb shell without a terminal (-c, -f, stdin, --stop-on-error, -1), through real servers;
the statement splitter it shares with exdb run; exdb:// URLs; \\copy."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import exdb
from exdb.client.url import parse_url
from exdb.cluster import LocalCluster
from exdb.shell.meta import parse_copy
from exdb.shell.split import Splitter, is_complete, iter_statements, split_statements

# --- the splitter -----------------------------------------------------------------------------

TRICKY = """\
-- a comment; with a semicolon
SELECT 'a;b', "c;d", `e;f` FROM t; /* block; comment */
SELECT 'it''s; here';
CREATE TRIGGER tr AFTER INSERT ON t BEGIN
  INSERT INTO log VALUES (new.k, 'x;y');
  UPDATE log SET v = CASE WHEN new.k > 0 THEN 'pos;' ELSE 'neg' END WHERE k = new.k;
END;
CREATE TEMP TRIGGER tr2 AFTER DELETE ON t BEGIN DELETE FROM log; END;
SELECT $$dollar; quoted$$, $tag$ $$ ; $tag$;
SELECT E'it\\'s; escaped';
  ;
-- only a comment;
SELECT 1 -- the last one has no semicolon"""

EXPECTED = [
    "SELECT 'a;b', \"c;d\", `e;f` FROM t",
    "/* block; comment */\nSELECT 'it''s; here'",
    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  INSERT INTO log VALUES (new.k, 'x;y');\n"
    "  UPDATE log SET v = CASE WHEN new.k > 0 THEN 'pos;' ELSE 'neg' END WHERE k = new.k;\nEND",
    "CREATE TEMP TRIGGER tr2 AFTER DELETE ON t BEGIN DELETE FROM log; END",
    "SELECT $$dollar; quoted$$, $tag$ $$ ; $tag$",
    "SELECT E'it\\'s; escaped'",
    "-- only a comment;\nSELECT 1 -- the last one has no semicolon",
]


def test_the_splitter_respects_quotes_comments_dollar_quotes_and_trigger_bodies() -> None:
    assert split_statements(TRICKY)[0].startswith("-- a comment; with a semicolon\nSELECT 'a;b'")
    got = split_statements(TRICKY)
    assert [got[0].split("\n", 1)[1], *got[1:]] == EXPECTED
    lines = [s.line for s in iter_statements(TRICKY)]
    assert lines == [1, 2, 4, 8, 9, 10, 12]
    assert [s.keyword for s in iter_statements(TRICKY)] == [
        "SELECT",
        "SELECT",
        "CREATE",
        "CREATE",
        "SELECT",
        "SELECT",
        "SELECT",
    ]


def test_the_splitter_gives_the_same_statements_however_the_text_arrives() -> None:
    whole = list(iter_statements(TRICKY, meta=True))
    rng = random.Random(13)
    for _ in range(300):
        cuts = sorted(rng.sample(range(len(TRICKY)), rng.randint(1, 40)))
        pieces = [TRICKY[a:b] for a, b in zip([0, *cuts], [*cuts, len(TRICKY)], strict=True)]
        assert list(iter_statements(pieces, meta=True)) == whole


def test_the_splitter_is_lazy_it_yields_the_first_statement_before_reading_the_rest() -> None:
    reads: list[int] = []

    class Script(io.StringIO):
        def read(self, size: int | None = -1) -> str:
            reads.append(size if size is not None else -1)
            return super().read(size)

    body = "".join(f"INSERT INTO t VALUES ({i}, 'v;{i}');\n" for i in range(100_000))
    script = Script("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT);\n" + body)
    statements = iter_statements(script, chunk=4096)
    first = next(statements)
    assert first.sql == "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"
    assert len(reads) == 1 and script.tell() == 4096  # one chunk read of ~3.5 MB
    assert next(statements).sql == "INSERT INTO t VALUES (0, 'v;0')"
    assert sum(1 for _ in statements) == 99_999


def test_meta_commands_end_at_the_end_of_their_line() -> None:
    text = "\\d t\nSELECT 1;\n  \\timing on\nSELECT\n2;\n\\q"
    got = [(s.sql, s.is_meta) for s in iter_statements(text, meta=True)]
    assert got == [
        ("\\d t", True),
        ("SELECT 1", False),
        ("\\timing on", True),
        ("SELECT\n2", False),
        ("\\q", True),
    ]
    # Without meta=True (exdb run), a backslash is SQL.
    assert split_statements("\\d t\nSELECT 1;") == ["\\d t\nSELECT 1"]


@pytest.mark.parametrize(
    ("text", "complete"),
    [
        ("", True),
        ("SELECT 1", False),
        ("SELECT 1;", True),
        ("SELECT ';", False),
        ("SELECT 1; -- done", True),
        ("SELECT 1 /* ; */", False),
        ("\\d", True),
        ("CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1;", False),
        ("CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1; END;", True),
    ],
)
def test_is_complete_decides_when_enter_runs_the_statement(text: str, complete: bool) -> None:
    assert is_complete(text) is complete


def test_a_trigger_split_by_the_splitter_runs_on_sqlite_as_written() -> None:
    db = sqlite3.connect(":memory:")
    script = """
        CREATE TABLE t (k INTEGER PRIMARY KEY);
        CREATE TABLE log (k INTEGER, v TEXT);
        CREATE TRIGGER tr AFTER INSERT ON t BEGIN
          INSERT INTO log VALUES (new.k, 'a;b');
          UPDATE log SET v = CASE WHEN new.k > 1 THEN 'big;' ELSE v END WHERE k = new.k;
        END;
        INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);
    """
    for sql in split_statements(script):
        db.execute(sql)
    assert db.execute("SELECT * FROM log ORDER BY k").fetchall() == [(1, "a;b"), (2, "big;")]
    db.close()


def test_the_splitter_keeps_no_more_than_the_unfinished_statement() -> None:
    splitter = Splitter()
    for i in range(20_000):
        splitter.feed(f"INSERT INTO t VALUES ({i});\n")
    assert len(splitter._buf) < 10_000


# --- URLs -------------------------------------------------------------------------------------


def test_parse_url() -> None:
    assert parse_url("exdb://127.0.0.1:5001,127.0.0.1:5002/") == (
        ["127.0.0.1:5001", "127.0.0.1:5002"],
        {},
    )
    nodes, options = parse_url(
        "exdb://me:p%40ss@[::1]:5001,h:5002?connectTimeout=500&autocommit=true"
    )
    assert nodes == ["[::1]:5001", "h:5002"]
    assert options == {
        "user": "me",
        "password": "p@ss",
        "connectTimeout": 500,
        "autocommit": True,
    }
    bad_urls = ("http://h:1", "exdb://", "exdb://h", "exdb://h:1/db", "exdb://h:99999")
    for bad in (*bad_urls, "exdb://h:1/?x=a", "exdb://h:1/?connectTimeout=soon"):
        with pytest.raises(exdb.ProgrammingError):
            parse_url(bad)
    with pytest.raises(exdb.ProgrammingError) as info:
        parse_url("exdb://u:secret@h")
    assert "secret" not in str(info.value)


# --- \copy parsing ----------------------------------------------------------------------------


def test_parse_copy() -> None:
    c = parse_copy("t FROM 'data file.csv' WITH CSV HEADER")
    assert (c.direction, c.table, c.columns, c.path, c.header) == (
        "from",
        "t",
        None,
        "data file.csv",
        True,
    )
    c = parse_copy("t (a, b) FROM '/x/it''s.csv' DELIMITER ';'")
    assert (c.columns, c.path, c.header, c.delimiter) == (["a", "b"], "/x/it's.csv", False, ";")
    c = parse_copy("(SELECT k, 'a)b' FROM t WHERE k > 1) TO 'out.csv' WITH (FORMAT csv, HEADER)")
    assert (c.direction, c.table, c.query, c.path, c.header) == (
        "to",
        None,
        "SELECT k, 'a)b' FROM t WHERE k > 1",
        "out.csv",
        True,
    )
    assert parse_copy("t TO STDOUT").path == "-"
    for bad in ("", "t", "t INTO 'x'", "(SELECT 1) FROM 'x'", "t FROM 'x' WITH BINARY", "(SELECT"):
        with pytest.raises(exdb.ProgrammingError):
            parse_copy(bad)


# --- through real servers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def nodes() -> Iterator[str]:
    with LocalCluster(2) as cluster:
        yield ",".join(cluster.nodes)


def _shell(
    nodes: str, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EXDB_")}
    base["EXDB_NODES"] = nodes
    return subprocess.run(
        [sys.executable, "-m", "exdb", "shell", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
    )


def _count(nodes: str, table: str) -> int:
    with exdb.connect(nodes=nodes.split(",")) as conn:
        row = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_dash_c_prints_in_every_format_and_exits_1_on_error(nodes: str) -> None:
    made = _shell(
        nodes,
        "-c",
        "CREATE TABLE fmt (k INTEGER PRIMARY KEY, v TEXT, x REAL);"
        " INSERT INTO fmt VALUES (1, 'a,b', 1.5), (2, NULL, -2), (3, 'say \"hi\"', 0.25);",
    )
    assert made.returncode == 0, made.stderr
    query = "SELECT k, v, x FROM fmt ORDER BY k"
    plain = _shell(nodes, "-c", query)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert lines[0].split("|")[0].strip() == "k" and "(3 rows)" in lines[-1]
    assert "| a,b" in lines[2] and "NULL" in lines[3]
    as_csv = _shell(nodes, "--format", "csv", "-c", query)
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [
        ["k", "v", "x"],
        ["1", "a,b", "1.5"],
        ["2", "", "-2.0"],
        ["3", 'say "hi"', "0.25"],
    ]
    as_json = _shell(nodes, "--format", "json", "-c", query)
    assert json.loads(as_json.stdout) == [
        {"k": 1, "v": "a,b", "x": 1.5},
        {"k": 2, "v": None, "x": -2.0},
        {"k": 3, "v": 'say "hi"', "x": 0.25},
    ]
    failed = _shell(nodes, "-c", "SELECT no_such_column FROM fmt")
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1 and "ERROR:" in failed.stderr
    assert "no_such_column" in failed.stderr


def test_meta_commands_through_dash_c(nodes: str) -> None:
    _shell(nodes, "-c", "CREATE TABLE meta_t (id INTEGER PRIMARY KEY, name TEXT)")
    described = _shell(nodes, "-c", "\\d meta_t", "-c", "\\d")
    assert described.returncode == 0, described.stderr
    assert "Distribution: distributed by hash(id)" in described.stdout
    assert "Primary key: (id)" in described.stdout
    assert any(line.split("|")[0].strip() == "meta_t" for line in described.stdout.splitlines())
    explained = _shell(nodes, "-c", "\\explain SELECT * FROM meta_t WHERE id = 7")
    assert "plan: single" in explained.stdout
    unknown = _shell(nodes, "-c", "\\nope")
    assert unknown.returncode == 1 and "unknown meta-command \\nope" in unknown.stderr
    timed = _shell(nodes, "--timing", "-c", "SELECT 1")
    assert "Time: " in timed.stdout


def test_a_file_goes_on_after_an_error_unless_told_to_stop(nodes: str, tmp_path: Path) -> None:
    _shell(nodes, "-c", "CREATE TABLE go_on (k INTEGER PRIMARY KEY)")
    script = tmp_path / "s.sql"
    script.write_text(
        "INSERT INTO go_on VALUES (1);\nINSERT INTO go_on VALUES (1);\n"
        "INSERT INTO go_on VALUES (2);\n"
    )
    result = _shell(nodes, "-f", str(script))
    assert result.returncode == 1
    assert f"{script}:2: ERROR:" in result.stderr
    assert _count(nodes, "go_on") == 2

    _shell(nodes, "-c", "DELETE FROM go_on")
    stopped = _shell(nodes, "--stop-on-error", "-f", str(script))
    assert stopped.returncode == 1
    assert _count(nodes, "go_on") == 1  # the third statement never ran

    from_stdin = _shell(nodes, "--stop-on-error", stdin="SELECT 5;\nSELEC 6;\nSELECT 7;\n")
    assert from_stdin.returncode == 1 and "stdin:2: ERROR:" in from_stdin.stderr
    assert " 5" in from_stdin.stdout and " 7" not in from_stdin.stdout


def test_single_transaction_rolls_everything_back_on_the_first_error(
    nodes: str, tmp_path: Path
) -> None:
    _shell(nodes, "-c", "CREATE TABLE one_txn (k INTEGER PRIMARY KEY, v TEXT)")
    bad = tmp_path / "bad.sql"
    bad.write_text(
        "".join(f"INSERT INTO one_txn VALUES ({i}, 'v');\n" for i in range(10))
        + "INSERT INTO one_txn VALUES (3, 'duplicate');\nINSERT INTO one_txn VALUES (99, 'v');\n"
    )
    result = _shell(nodes, "-1", "-f", str(bad))
    assert result.returncode == 1
    assert "ROLLBACK" in result.stderr
    assert _count(nodes, "one_txn") == 0  # all ten rolled back, on both nodes

    good = tmp_path / "good.sql"
    good.write_text("".join(f"INSERT INTO one_txn VALUES ({i}, 'v');\n" for i in range(10)))
    assert _shell(nodes, "--single-transaction", "-f", str(good)).returncode == 0
    assert _count(nodes, "one_txn") == 10
    refused = _shell(nodes, "-1", "-c", "BEGIN; INSERT INTO one_txn VALUES (50, 'v'); COMMIT;")
    assert refused.returncode == 1 and "--single-transaction" in refused.stderr
    assert _count(nodes, "one_txn") == 10


def test_begin_commit_and_rollback_in_a_script(nodes: str) -> None:
    _shell(nodes, "-c", "CREATE TABLE txn_t (k INTEGER PRIMARY KEY)")
    script = (
        "BEGIN; INSERT INTO txn_t VALUES (1); INSERT INTO txn_t VALUES (2); ROLLBACK;\n"
        "BEGIN; INSERT INTO txn_t VALUES (3); COMMIT;\n"
    )
    result = _shell(nodes, stdin=script)
    assert result.returncode == 0, result.stderr
    assert _count(nodes, "txn_t") == 1
    assert _shell(nodes, "-c", "COMMIT").returncode == 1  # none open


def test_nodes_from_a_url_the_environment_or_nowhere(nodes: str) -> None:
    url = "exdb://" + nodes + "/?connectTimeout=3000"
    assert _shell("", url, "-c", "SELECT 11").stdout.count("11") >= 1
    assert " 12" in _shell("", "--url", url, "-c", "SELECT 12").stdout
    assert " 13" in _shell("", "-c", "SELECT 13", env={"EXDB_URL": url}).stdout
    assert " 14" in _shell("", "-c", "SELECT 14", env={"EXDB_NODES": url}).stdout
    nowhere = _shell("", "-c", "SELECT 1", env={"EXDB_NODES": ""})
    assert nowhere.returncode == 2 and "no nodes" in nowhere.stderr
    both = _shell(nodes, "--nodes", nodes, "--url", url, "-c", "SELECT 1")
    assert both.returncode == 2 and "exclude each other" in both.stderr
    bad = _shell("", "exdb://h:not-a-port", "-c", "SELECT 1")
    assert bad.returncode == 2 and "bad port" in bad.stderr and "Traceback" not in bad.stderr


def test_a_password_in_the_url(tmp_path: Path) -> None:
    with LocalCluster(2, password="url-secret") as cluster:
        nodes = ",".join(cluster.nodes)
        ok = _shell("", f"exdb://:url-secret@{nodes}/", "-c", "SELECT 21")
        assert ok.returncode == 0, ok.stderr
        assert " 21" in ok.stdout and "WARNING" in ok.stderr  # it was on the command line
        quiet = _shell(
            "", "-c", "SELECT 22", env={"EXDB_URL": f"exdb://{nodes}/?password=url-secret"}
        )
        assert quiet.returncode == 0 and "WARNING" not in quiet.stderr
        wrong = _shell("", f"exdb://{nodes}/?password=nope", "-c", "SELECT 1")
        assert wrong.returncode == 1 and "authentication failed" in wrong.stderr
        assert "nope" not in wrong.stderr


def test_a_node_down_is_one_line_naming_the_node() -> None:
    with LocalCluster(1) as cluster:
        node = cluster.nodes[0]
    result = _shell(node, "-c", "SELECT 1")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and node in result.stderr
    assert "Traceback" not in result.stderr


def test_copy_from_and_to_a_csv_file(nodes: str, tmp_path: Path) -> None:
    """Needs cursor.copy_from/copy_to (another branch of issue 13): fails until merged."""
    source = tmp_path / "in.csv"
    with source.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["k", "v"])
        writer.writerows([(i, f"v,{i}") for i in range(50)])
    _shell(nodes, "-c", "CREATE TABLE copied (k INTEGER PRIMARY KEY, v TEXT)")
    loaded = _shell(nodes, "-c", f"\\copy copied FROM '{source}' WITH CSV HEADER")
    assert loaded.returncode == 0, loaded.stderr
    assert "COPY 50" in loaded.stdout
    assert _count(nodes, "copied") == 50
    target = tmp_path / "out.csv"
    dumped = _shell(
        nodes, "-c", f"\\copy (SELECT k, v FROM copied WHERE k < 5) TO '{target}' WITH CSV HEADER"
    )
    assert dumped.returncode == 0, dumped.stderr
    with target.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["k", "v"]
    assert sorted(rows[1:], key=lambda r: int(r[0])) == [[str(i), f"v,{i}"] for i in range(5)]
