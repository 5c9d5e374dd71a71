"""A real terminal for the shell's tests: the program runs in a pseudo-terminal (pexpect), and
what it draws goes through a terminal emulator (pyte), so tests read the screen a user sees."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pexpect
import pyte

ROWS, COLUMNS = 40, 120


class Terminal:
    """A program in a pty, with the screen it draws."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], timeout: float = 20.0) -> None:
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.Stream(self.screen)
        self.timeout = timeout
        self.child = pexpect.spawn(
            argv[0], list(argv[1:]), env=env, encoding="utf-8", dimensions=(ROWS, COLUMNS)
        )
        # prompt_toolkit asks where the cursor is (CPR): answer as a terminal does.
        self.screen.write_process_input = self.child.send  # type: ignore[method-assign]
        self.transcript = ""

    def _pump(self, wait: float) -> bool:
        try:
            data = self.child.read_nonblocking(65536, timeout=wait)
        except pexpect.TIMEOUT:
            return False
        except pexpect.EOF:
            raise
        self.transcript += data
        self.stream.feed(data)
        return True

    @property
    def text(self) -> str:
        """The screen, one line a row, trailing blanks removed."""
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, needle: str, count: int = 1, timeout: float | None = None) -> str:
        """Read until ``needle`` is on the screen (``count`` times); the screen then."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self.text.count(needle) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never appeared; the screen:\n{self.text}")
            try:
                self._pump(0.1)
            except pexpect.EOF:
                if self.text.count(needle) >= count:
                    break
                raise AssertionError(
                    f"the program ended before {needle!r} appeared; the screen:\n{self.text}"
                ) from None
        return self.text

    def settle(self, quiet: float = 0.3) -> str:
        """Read until the program draws nothing for ``quiet`` seconds."""
        deadline = time.monotonic() + self.timeout
        while self._pump(quiet) and time.monotonic() < deadline:
            pass
        return self.text

    def send(self, keys: str) -> None:
        """Type keys (``\\r`` is Enter, ``\\t`` TAB, ``\\x1b[A`` Up, ``\\x04`` Ctrl-D)."""
        self.child.send(keys)

    def line_with(self, needle: str) -> str:
        """The last screen line that holds ``needle``."""
        lines = [line for line in self.text.splitlines() if needle in line]
        assert lines, f"no line holds {needle!r}; the screen:\n{self.text}"
        return lines[-1]

    def wait_exit(self, timeout: float | None = None) -> int:
        """Wait for the program to end; its exit status."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while time.monotonic() < deadline:
            try:
                self._pump(0.1)
            except pexpect.EOF:
                break
        self.child.close()
        status = self.child.exitstatus
        assert status is not None, f"the program did not end; the screen:\n{self.text}"
        return int(status)

    def close(self) -> None:
        """End the program if it still runs (it was started here)."""
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close()
