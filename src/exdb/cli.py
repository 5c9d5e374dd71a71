"""The ``exdb`` command line: serve, passwd, cluster, explain, run, import, demo."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, overload

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
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds a statement may wait for a lock (0: no limit); sessions may set their own.",
)
@click.option(
    "--idle-in-transaction-timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds a session may sit idle in a transaction before it is rolled back (0: never).",
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
    if opts["engine"] == "duckdb":
        _require("duckdb", "duckdb", "exdb serve --engine duckdb")
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
@click.option(
    "--shards", type=click.IntRange(min=1), default=2, show_default=True, help="How many shards."
)
@click.option(
    "--base-port",
    type=click.IntRange(min=0, max=65535),
    default=5001,
    show_default=True,
    help="Port of shard 1; shard N listens on BASE_PORT + N - 1 (0: free ports).",
)
@click.option(
    "--engine",
    type=click.Choice(["sqlite", "duckdb"]),
    default="sqlite",
    show_default=True,
    help="The shards' storage engine.",
)
@click.option("--db-dir", default=None, help="Keep each shard's data in this directory.")
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Nodes per shard: SHARDS x REPLICAS nodes, each shard's replicas consecutive"
    " (connect with nReplicas=REPLICAS).",
)
def cluster(shards: int, base_port: int, engine: str, db_dir: str | None, replicas: int) -> None:
    """Start N local shards and keep them running until Ctrl-C."""
    from exdb.cluster import LocalCluster

    if engine == "duckdb":
        _require("duckdb", "duckdb", "exdb cluster --engine duckdb")
    if base_port:
        for i in range(shards * replicas):
            _check_port_free("127.0.0.1", base_port + i, f"shard {i // replicas + 1}")
    cluster = LocalCluster(
        shards, base_port=base_port, engine=engine, db_dir=db_dir, replicas=replicas
    )
    try:
        cluster.start()
    except RuntimeError:  # a shard did not come up (the port taken since the check, ...)
        index = next((i for i, s in enumerate(cluster.servers) if s.port == 0), 0)
        port = base_port + index if base_port else 0
        raise click.ClickException(
            f"shard {index + 1} (127.0.0.1:{port}) did not start;"
            f" exdb serve --port {port} --engine {engine} shows why"
        ) from None
    import signal

    def _stop_on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # `kill PID` stops the shards too, as Ctrl-C does

    previous = signal.signal(signal.SIGTERM, _stop_on_term)
    try:  # started above: a `with cluster` here would start every shard a second time
        click.echo("nodes: " + ",".join(cluster.nodes))
        if replicas > 1:
            click.echo("connect: " + cluster.connect_line())
        sys.stdout.flush()  # seen at once when stdout is a file or a pipe
        cluster.wait_forever()
    except KeyboardInterrupt:
        click.echo("stopping")
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)


def _check_port_free(host: str, port: int, what: str) -> None:
    """One clear line if ``host:port`` is taken (the server itself would say so only in its own
    log, which exdb cluster keeps quiet)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise click.ClickException(
                f"{what}: cannot listen on {host}:{port}: {exc.strerror or exc}"
                " (choose another --base-port)"
            ) from None


def _require(module: str, extra: str, what: str) -> None:
    """One line naming the extra to install when an optional package is missing."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise click.ClickException(
            f"{what} needs the {module} package: pip install 'exdb[{extra}]'"
        ) from None


def _resolve_nodes(nodes: str | None, url: str | None) -> tuple[str, dict[str, Any], str]:
    """The nodes (comma-separated) and the URL's connect options, from --nodes, an exdb://
    URL (--url or the argument), EXDB_NODES (nodes or a URL) or EXDB_URL, in that order; and
    where they came from."""
    from exdb.client.url import parse_url
    from exdb.errors import ProgrammingError

    if nodes and url:
        raise click.UsageError("--nodes and an exdb:// URL exclude each other: give one")
    source = "--nodes" if nodes else "the URL" if url else ""
    if not nodes and not url:
        for name in ("EXDB_NODES", "EXDB_URL"):
            value = os.environ.get(name, "").strip()
            if value:
                source = name
                if "://" in value:
                    url = value
                else:
                    nodes = value
                break
    if not nodes and not url:
        raise click.UsageError(
            "no nodes: give --nodes HOST:PORT,HOST:PORT, an exdb://HOST:PORT,HOST:PORT URL,"
            " or set EXDB_NODES"
        )
    if nodes:
        listed = [n.strip() for n in nodes.split(",") if n.strip()]
        if not listed:
            raise click.UsageError(f"{source}: no nodes in {nodes!r}")
        return ",".join(listed), {}, source
    assert url is not None
    try:
        found, options = parse_url(url)
    except ProgrammingError as exc:
        raise click.UsageError(f"{source}: {exc}") from None
    return ",".join(found), options, source


@overload
def _nodes_option(f: Callable[..., Any]) -> Any: ...


@overload
def _nodes_option(*, url_argument: bool = ...) -> Callable[[Callable[..., Any]], Any]: ...


def _nodes_option(f: Any = None, *, url_argument: bool = False) -> Any:
    """``--nodes`` and ``--url`` (and, with ``url_argument``, an optional URL argument) for a
    client command; the command receives the resolved nodes as ``nodes`` (comma-separated),
    and the URL's options reach :func:`_client_password` and :func:`_client_options`."""

    def decorate(command: Any) -> Any:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            url = kwargs.pop("url", None)
            argument = kwargs.pop("url_argument", None)
            if argument is not None:
                if url is not None:
                    raise click.UsageError("give the exdb:// URL once: as --url or as the argument")
                url = argument
            nodes, options, source = _resolve_nodes(kwargs.pop("nodes", None), url)
            ctx = click.get_current_context(silent=True)
            if ctx is not None:
                ctx.meta["exdb.url_options"] = options
                ctx.meta["exdb.nodes_source"] = source
            return command(*args, nodes=nodes, **kwargs)

        wrapper = click.option(
            "--url",
            default=None,
            metavar="URL",
            help="exdb://HOST:PORT,HOST:PORT/?password=...: the nodes and connect options.",
        )(wrapper)
        wrapper = click.option(
            "--nodes",
            default=None,
            help="Comma-separated host:port of every node, in shard order"
            " (default: $EXDB_NODES, or $EXDB_URL).",
        )(wrapper)
        if url_argument:
            wrapper = click.argument("url_argument", required=False, metavar="[URL]")(wrapper)
        return wrapper

    return decorate if f is None else decorate(f)


def _url_options() -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get("exdb.url_options", {})) if ctx is not None else {}


def _client_options(password: str | None) -> dict[str, Any]:
    """connect() options of a client command: a 5 s connect timeout, the URL's options, and
    the password from _client_password."""
    options: dict[str, Any] = {"connectTimeout": 5000, **_url_options()}
    options.pop("sql_password", None)
    options.pop("password", None)
    if password:
        options["password"] = password
    return options


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
        url_password = _url_options().get("password") or _url_options().get("sql_password")
        ctx = click.get_current_context(silent=True)
        on_the_line = ctx is not None and ctx.meta.get("exdb.nodes_source") == "the URL"
        if url_password and on_the_line:
            click.echo(
                _PASSWORD_WARNING.replace("exdb serve: ", "exdb: ").replace(
                    "--password puts", "a password in the URL puts"
                ),
                err=True,
            )
        return str(url_password) if url_password else None
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
@click.option(
    "--analyze",
    is_flag=True,
    help="Run SQL (for real, committed) and show the rows and bytes each stage moved, and times.",
)
@click.argument("sql")
def explain(
    nodes: str, password: str | None, password_file: str | None, analyze: bool, sql: str
) -> None:
    """Show how SQL would run: the nodes, each shard's SQL and the merge."""
    import exdb

    password = _client_password(password, password_file)
    try:
        with exdb.connect(nodes=nodes.split(","), **_client_options(password)) as conn:
            click.echo(conn.explain(sql, analyze=analyze))
    except exdb.Error as exc:
        raise click.ClickException(_one_line(exc)) from exc


@main.command()
@_nodes_option
@_client_password_options
@click.option(
    "--all",
    "all_in_doubt",
    is_flag=True,
    help="Also transactions whose client is still connected (it may be committing them now).",
)
def recover(
    nodes: str, password: str | None, password_file: str | None, all_in_doubt: bool
) -> None:
    """Finish the nodes' in-doubt two-phase commits by their recorded decisions; print what
    was committed and rolled back. Exit code 1 if some stay in doubt."""
    import exdb

    password = _client_password(password, password_file)
    options = {**_client_options(password), "autocommit": True}
    try:
        with exdb.connect(nodes=nodes.split(","), **options) as conn:
            found = conn.last_recovery
            report = conn.recover(all_in_doubt=all_in_doubt)
    except exdb.Error as exc:
        raise click.ClickException(_one_line(exc)) from exc
    lines = found.lines() + report.lines()
    click.echo("\n".join(lines) if lines else "nothing in doubt")
    if report.unresolved or report.unreachable:
        sys.exit(1)


def _one_line(exc: BaseException) -> str:
    """An error as one line (an error may carry its statement on a line of its own)."""
    return " ".join(str(exc).split())


_FORMAT_CHOICE = click.Choice(["table", "plain", "csv", "json"])


@main.command()
@_nodes_option
@click.option("--workers", type=int, default=2, show_default=True, help="Worker processes.")
@_client_password_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "plain", "csv", "json", "none"]),
    default="table",
    show_default=True,
    help="How what SELECTs return is printed on stdout (none: not at all).",
)
@click.option(
    "--stop-on-error",
    is_flag=True,
    help="Run the statements in order, one at a time, and stop at the first error.",
)
@click.option(
    "-1",
    "--single-transaction",
    is_flag=True,
    help="Run the statements in order as one transaction, rolled back on the first error.",
)
@click.argument("script", type=click.File("r"))
def run(
    nodes: str,
    workers: int,
    password: str | None,
    password_file: str | None,
    fmt: str,
    stop_on_error: bool,
    single_transaction: bool,
    script: Any,
) -> None:
    """Run every statement of SCRIPT ('-': stdin) on the nodes, with a progress bar, printing
    what SELECTs return. By default statements run in parallel on worker processes, each
    autocommits, errors do not stop the script, and only runs of plain INSERTs (or of plain
    SELECTs) run concurrently: everything else runs alone, in order. The exit code is 1 if any
    statement failed."""
    import exdb
    from exdb.script import run_script

    password = _client_password(password, password_file)
    options = _client_options(password)
    try:
        code = run_script(
            nodes.split(","),
            script,
            workers,
            options=options,
            fmt=fmt,
            stop_on_error=stop_on_error,
            single_transaction=single_transaction,
        )
    except exdb.Error as exc:
        raise click.ClickException(_one_line(exc)) from exc
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{script.name} is not UTF-8 text: {exc}") from exc
    sys.exit(code)


@main.command()
@_nodes_option(url_argument=True)
@_client_password_options
@click.option(
    "-c",
    "--command",
    "commands",
    multiple=True,
    metavar="SQL",
    help="Run SQL (statements or a meta-command; repeatable), print, exit (1 on error).",
)
@click.option("-f", "--file", "files", multiple=True, help="Run a file's statements ('-': stdin).")
@click.option(
    "--format",
    "fmt",
    type=_FORMAT_CHOICE,
    default="table",
    show_default=True,
    help="Output: table (rich on a terminal, aligned text otherwise), plain, csv or json.",
)
@click.option("--timing", is_flag=True, help="Print how long each statement takes.")
@click.option(
    "--stop-on-error",
    is_flag=True,
    help="With -c/-f/stdin: stop at the first failing statement (default: go on, exit 1).",
)
@click.option(
    "-1",
    "--single-transaction",
    is_flag=True,
    help="With -c/-f/stdin: all statements in one transaction, rolled back on the first error.",
)
@click.option(
    "--history",
    default=None,
    metavar="FILE",
    help="History file (default: $EXDB_HISTORY or $XDG_STATE_HOME/exdb/history; '' keeps none).",
)
def shell(
    nodes: str,
    password: str | None,
    password_file: str | None,
    commands: tuple[str, ...],
    files: tuple[str, ...],
    fmt: str,
    timing: bool,
    stop_on_error: bool,
    single_transaction: bool,
    history: str | None,
) -> None:
    """An SQL shell on the nodes: exdb shell [exdb://HOST:PORT,HOST:PORT] (or --nodes, or
    $EXDB_NODES). Statements end with ';'; \\? lists the meta-commands. Without -c or -f and
    with stdin not a terminal, it runs the statements read from stdin."""
    import exdb
    from exdb.shell.session import Shell
    from exdb.shell.split import iter_statements

    interactive = not commands and not files and sys.stdin.isatty()
    if interactive:
        _require("prompt_toolkit", "shell", "exdb shell")
        if single_transaction:
            raise click.UsageError("--single-transaction needs -c, -f or statements on stdin")
    password = _client_password(password, password_file)
    try:
        conn = exdb.connect(nodes=nodes.split(","), **_client_options(password))
    except exdb.Error as exc:
        raise click.ClickException(_one_line(exc)) from exc
    try:
        session = Shell(conn, fmt=fmt, timing=timing, single_transaction=single_transaction)
        if interactive:
            from exdb.shell.repl import repl

            code = repl(session, history)
        else:
            stop = stop_on_error or single_transaction
            code = 0
            sources: list[tuple[str, Any]] = [
                ("-c", iter_statements(c + "\n", meta=True)) for c in commands
            ]
            sources += [(path, None) for path in files]
            if not sources:
                sources = [("-", None)]
            for name, statements in sources:
                if statements is not None:
                    code |= session.run_statements(statements, stop_on_error=stop)
                else:
                    code |= session.run_file(name, stop_on_error=stop)
                if code and stop:
                    break
            if single_transaction:
                code = session.end_single_transaction(bool(code))
    except exdb.Error as exc:
        raise click.ClickException(_one_line(exc)) from exc
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"the input is not UTF-8 text: {exc}") from exc
    finally:
        conn.close()
    sys.exit(code)


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
    options = {**_client_options(password), "autocommit": True}
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
        raise click.ClickException(_one_line(exc)) from exc
    seconds = time.perf_counter() - start
    click.echo(
        f"imported {count:,} rows into {table} in {seconds:.1f} s ({count / seconds:,.0f} rows/s)"
    )


@main.command()
@click.option(
    "--engine", type=click.Choice(["sqlite", "duckdb"]), default="sqlite", show_default=True
)
def demo(engine: str) -> None:
    """Start two local shards, run eXtremeSQL's reference example on them, print each result,
    stop."""
    from exdb.demo import run_demo

    if engine == "duckdb":
        _require("duckdb", "duckdb", "exdb demo --engine duckdb")
    sys.exit(run_demo(engine))
