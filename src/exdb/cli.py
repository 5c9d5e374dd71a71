"""The ``exdb`` command line: serve, passwd, cluster, explain, run, import, demo."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from exdb.wire.codec import DEFAULT_MAX_FRAME

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="exdb")
def main() -> None:
    """exdb: many SQL shards that answer as one database."""


@main.command()
@click.option("--port", type=int, default=5001, show_default=True, help="0 picks a free port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--engine", type=click.Choice(["sqlite", "duckdb"]), default="sqlite", show_default=True
)
@click.option("--db", "db", default=None, help="Database file (durable); default: in memory.")
@click.option(
    "--password",
    default=None,
    help="Required password. Every user of this host can read it in ps: prefer"
    " --password-file or EXDB_PASSWORD.",
)
@click.option(
    "--password-file",
    default=None,
    help="File whose first line is the password, or its SCRAM verifier (see exdb passwd).",
)
@click.option("--tls-cert", default=None, help="PEM certificate chain: serve TLS.")
@click.option("--tls-key", default=None, help="PEM private key of --tls-cert.")
@click.option("--max-frame", type=int, default=DEFAULT_MAX_FRAME, show_default=True)
@click.option("--idle-timeout", type=float, default=600.0, show_default=True, help="Seconds.")
@click.option("--max-sessions", type=int, default=512, show_default=True)
@click.option(
    "--statement-timeout",
    type=float,
    default=0.0,
    show_default=True,
    help="Seconds a statement may run (0: no limit); sessions may set their own.",
)
@click.option(
    "--handshake-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds from connect to the end of authentication.",
)
@click.option(
    "--max-handshakes",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Connections authenticating at once (apart from --max-sessions).",
)
@click.option(
    "--allow-files",
    multiple=True,
    metavar="DIR",
    help="Let SQL read and write files in DIR (repeatable); by default it reaches none.",
)
@click.option("--memory-limit", default=None, help="DuckDB: memory of the whole database.")
@click.option("--threads", type=int, default=None, help="DuckDB: threads of the whole database.")
@click.option(
    "--max-memory",
    default=None,
    help="Memory ceiling of the server process (e.g. 8GB; 0: none). An allocation past it fails"
    " the statement that asked, not the server. Default: 75% of the machine's memory.",
)
@click.option("--quiet", is_flag=True, help="No log lines on stderr.")
def serve(**opts: Any) -> None:
    """Run one shard server."""
    from exdb.server import ServerConfig, run_server

    if opts["password"] is not None and opts["password_file"] is not None:
        raise click.UsageError("--password and --password-file exclude each other")
    if opts["password"] is not None:
        click.echo(_PASSWORD_WARNING, err=True)
    elif opts["password_file"] is None:
        opts["password"] = os.environ.get("EXDB_PASSWORD") or None
    if bool(opts["tls_cert"]) != bool(opts["tls_key"]):
        raise click.UsageError("--tls-cert and --tls-key go together")
    try:
        run_server(ServerConfig(**opts))
    except ValueError as exc:  # a setting refused: --password-file, --memory-limit, ...
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {opts['host']}:{opts['port']}: {exc}") from exc


_PASSWORD_WARNING = (
    "exdb serve: WARNING: --password puts the password on this process's command line, where"
    " every user of this host can read it (ps, /proc/PID/cmdline). Use --password-file FILE"
    " or the EXDB_PASSWORD environment variable instead."
)


@main.command()
@click.option(
    "--iterations",
    type=click.IntRange(4096, 1_000_000),
    default=4096,
    show_default=True,
    help="PBKDF2 iterations.",
)
def passwd(iterations: int) -> None:
    """Print the SCRAM-SHA-256 verifier of a password (asked for, or read from standard
    input), for the first line of exdb serve's --password-file: the server then never holds
    the password itself."""
    from exdb.server.auth import Verifier

    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise click.ClickException("the password is empty")
    try:
        click.echo(str(Verifier.derive(password, iterations)))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--shards", type=int, default=2, show_default=True)
@click.option("--base-port", type=int, default=5001, show_default=True)
@click.option(
    "--engine", type=click.Choice(["sqlite", "duckdb"]), default="sqlite", show_default=True
)
@click.option("--db-dir", default=None, help="Keep each shard's data in this directory.")
def cluster(shards: int, base_port: int, engine: str, db_dir: str | None) -> None:
    """Start N local shards and keep them running until Ctrl-C."""
    from exdb.cluster import LocalCluster

    with LocalCluster(shards, base_port=base_port, engine=engine, db_dir=db_dir) as c:
        click.echo("nodes: " + ",".join(c.nodes))
        try:
            c.wait_forever()
        except KeyboardInterrupt:
            click.echo("stopping")


def _nodes_option(f: Any) -> Any:
    return click.option(
        "--nodes",
        required=True,
        help="Comma-separated host:port of every node, in shard order.",
    )(f)


def _client_password_options(f: Any) -> Any:
    """``--password`` (which ps shows: it warns) and ``--password-file`` for client commands;
    without either, the client reads EXDB_PASSWORD."""
    f = click.option(
        "--password-file",
        default=None,
        type=click.Path(dir_okay=False),
        help="File whose first line is the nodes' password.",
    )(f)
    return click.option(
        "--password",
        default=None,
        help="The nodes' password; ps shows it: prefer --password-file or EXDB_PASSWORD.",
    )(f)


def _client_password(password: str | None, password_file: str | None) -> str | None:
    """The password a client command logs in with (None: EXDB_PASSWORD or none)."""
    if password is not None and password_file is not None:
        raise click.UsageError("--password and --password-file exclude each other")
    if password is not None:
        click.echo(_PASSWORD_WARNING.replace("exdb serve: ", "exdb: "), err=True)
        return password
    if password_file is None:
        return None
    try:
        with open(password_file, encoding="utf-8") as f:
            line = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read the password file {password_file}: {exc}") from exc
    if not line:
        raise click.ClickException(f"the password file {password_file} is empty")
    return line


@main.command()
@_nodes_option
@_client_password_options
@click.argument("sql")
def explain(nodes: str, password: str | None, password_file: str | None, sql: str) -> None:
    """Show how SQL would run: the nodes, each shard's SQL and the merge."""
    import exdb

    password = _client_password(password, password_file)
    options: dict[str, Any] = {"connectTimeout": 5000}
    if password:
        options["password"] = password
    try:
        with exdb.connect(nodes=nodes.split(","), **options) as conn:
            click.echo(conn.explain(sql))
    except exdb.Error as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@_nodes_option
@click.option("--workers", type=int, default=2, show_default=True, help="Worker processes.")
@_client_password_options
@click.argument("script", type=click.File("r"))
def run(
    nodes: str, workers: int, password: str | None, password_file: str | None, script: Any
) -> None:
    """Run every statement of SCRIPT (separated by ';') on the nodes, in parallel, with a
    progress bar. Each statement autocommits; the exit code is 1 if any failed."""
    from exdb.script import run_script

    password = _client_password(password, password_file)
    sys.exit(run_script(nodes.split(","), script.read(), workers, password))


@main.command("import")
@_nodes_option
@_client_password_options
@click.option("--header/--no-header", default=True, show_default=True, help="A header line.")
@click.option("--delimiter", default=",", show_default=True, help="The field delimiter.")
@click.option("--columns", default=None, help="Comma-separated columns the file holds, in order.")
@click.option("--null", default="", help="The text of an unquoted NULL field (default: empty).")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True
)
@click.argument("table")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def import_(
    nodes: str,
    password: str | None,
    password_file: str | None,
    header: bool,
    delimiter: str,
    columns: str | None,
    null: str,
    fmt: str,
    table: str,
    file: str,
) -> None:
    """Load FILE (CSV or JSON lines) into TABLE: the file is read here and each row goes to its
    shard by key, all rows or none. Shows a progress bar."""
    import time

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    import exdb

    password = _client_password(password, password_file)
    options: dict[str, Any] = {"connectTimeout": 5000, "autocommit": True}
    if password:
        options["password"] = password
    names = [c.strip() for c in columns.split(",")] if columns else None
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        "{task.fields[rows]:,} rows",
        TimeRemainingColumn(),
        transient=True,
        disable=not sys.stderr.isatty(),
        console=Console(stderr=True),
    )
    start = time.perf_counter()
    try:
        with exdb.connect(nodes=nodes.split(","), **options) as conn, bar:
            task = bar.add_task(f"import {table}", total=os.path.getsize(file), rows=0)
            count = conn.cursor().copy_from(
                file,
                table,
                names,
                format=fmt,
                header=header,
                delimiter=delimiter,
                null=null,
                progress=lambda rows, done: bar.update(task, completed=done, rows=rows),
            )
    except exdb.Error as exc:
        raise click.ClickException(str(exc)) from exc
    seconds = time.perf_counter() - start
    click.echo(
        f"imported {count:,} rows into {table} in {seconds:.1f} s ({count / seconds:,.0f} rows/s)"
    )


@main.command()
@click.option(
    "--engine", type=click.Choice(["sqlite", "duckdb"]), default="sqlite", show_default=True
)
def demo(engine: str) -> None:
    """Start a local shard, run a few statements through the client, print them, stop."""
    from exdb.demo import run_demo

    sys.exit(run_demo(engine))
