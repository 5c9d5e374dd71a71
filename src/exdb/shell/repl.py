"""The interactive loop of ``exdb shell`` (prompt_toolkit): history, multi-line statements,
completion, and Ctrl-C that cancels the running statement instead of ending the shell."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.lexers import PygmentsLexer
from pygments.lexers.sql import SqlLexer

from exdb.errors import Error
from exdb.shell.complete import Schema, SqlCompleter
from exdb.shell.session import Quit, Shell
from exdb.shell.split import Splitter, is_complete

__all__ = ["default_history_path", "repl"]


def default_history_path() -> Path:
    """``$EXDB_HISTORY``, else ``$XDG_STATE_HOME/exdb/history`` (``~/.local/state/exdb/...``)."""
    given = os.environ.get("EXDB_HISTORY")
    if given:
        return Path(given).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "exdb" / "history"


def _history(path: str | None) -> History:
    """A history file (created private to the user); ``""`` keeps the history in memory only."""
    if path == "":
        return InMemoryHistory()
    target = Path(path).expanduser() if path else default_history_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(target, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise Error(f"cannot use the history file {target}: {exc.strerror}") from None
    return FileHistory(str(target))


def _key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("enter")
    def _enter(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        state = buffer.complete_state
        if state is not None and state.current_completion is not None:
            buffer.apply_completion(state.current_completion)
            return
        if is_complete(buffer.text):
            buffer.validate_and_handle()
        else:
            buffer.insert_text("\n")

    @bindings.add("escape", "enter")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return bindings


@contextlib.contextmanager
def _cancel_on_ctrl_c(shell: Shell) -> Iterator[None]:
    """While a statement runs, Ctrl-C cancels it on the nodes (the statement then fails with
    an error the shell reports) instead of interrupting the client mid-message."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel() -> None:
        try:
            shell.conn.cancel()
        except Error as exc:
            shell.error(exc, "cancel")

    def handler(signum: int, frame: Any) -> None:
        shell.err.write("cancelling...\n")
        threading.Thread(target=cancel, daemon=True).start()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def repl(shell: Shell, history: str | None = None) -> int:
    """Read statements from the terminal until ``\\q`` or Ctrl-D; returns the exit code 0."""
    schema = Schema()
    try:
        schema.load(shell.conn)
    except Error as exc:
        shell.error(exc, "completion")

    def reload() -> None:
        try:
            schema.load(shell.conn)
        except Error as exc:
            shell.error(exc, "completion")

    shell.on_schema_change.append(reload)
    session: PromptSession[str] = PromptSession(
        history=_history(history),
        completer=SqlCompleter(schema),
        complete_while_typing=False,
        multiline=True,
        key_bindings=_key_bindings(),
        lexer=PygmentsLexer(SqlLexer),
        prompt_continuation=lambda width, line, wrap: "...> ".rjust(width),
        enable_history_search=False,
    )
    nodes = ",".join(shell.conn.nodes)
    shell.out.write(
        f"exdb shell: {len(shell.conn.nodes)} node(s) {nodes}. \\? for help, \\q to quit.\n"
    )
    while True:
        try:
            text = session.prompt("exdb*> " if shell.in_transaction else "exdb> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        splitter = Splitter(meta=True)
        statements = splitter.feed(text + "\n", final=True)
        try:
            with _cancel_on_ctrl_c(shell):
                for statement in statements:
                    try:
                        shell.execute(statement)
                    except Error as exc:  # reported; the shell and the rest of the line go on
                        shell.error(exc)
        except Quit:
            break
    return 0
