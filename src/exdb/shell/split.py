"""Statement splitting, written once for ``exdb shell`` and ``exdb run``.

A statement ends at a ``;`` outside quotes (``'...'``, ``E'...'``, ``"..."``, `` `...` ``),
comments (``--``, ``/* */``) and dollar quotes (``$$...$$``, ``$tag$...$tag$``), and, in a
``CREATE TRIGGER``, outside its ``BEGIN ... END`` body (``CASE ... END`` inside the body is
counted). With ``meta=True`` a line that starts a statement with a backslash is a
meta-command, ended by the end of its line.

The splitter is incremental: :meth:`Splitter.feed` takes text as it arrives and returns the
statements completed so far, so :func:`iter_statements` yields the first statement of a file
before it reads the rest. Square-bracket identifiers (SQLite's ``[name]``) are not quotes here:
a ``;`` or a quote inside one is read as SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import IO, NamedTuple

__all__ = ["Splitter", "Statement", "is_complete", "iter_statements", "split_statements"]


class Statement(NamedTuple):
    """One statement of a script."""

    sql: str  # the text, stripped, without its ';'
    line: int  # the 1-based line where it starts
    keyword: str  # its first word, upper-cased ('' if none); '\\' for a meta-command
    end: int  # the offset (in characters) just past its ';' in the whole input

    @property
    def is_meta(self) -> bool:
        """Whether this is a backslash meta-command (``\\d``, ``\\q``, ...)."""
        return self.keyword == "\\"


_TOKEN = re.compile(
    r"""
      (?P<semi>;)
    | (?P<ws>\s+)
    | (?P<word>(?![Ee]')[A-Za-z_][A-Za-z0-9_$]*)
    | (?P<sq>'(?:[^']|'')*')
    | (?P<esq>[Ee]'(?:[^'\\]|\\.|'')*')
    | (?P<dq>"(?:[^"]|"")*")
    | (?P<bq>`(?:[^`]|``)*`)
    | (?P<line>--[^\n]*)
    | (?P<block>/\*.*?\*/)
    | (?P<dollar>\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$)
    | (?P<open>'|[Ee]'|"|`|/\*)
    | (?P<param>\$[A-Za-z0-9_]*)
    | (?P<other>[^\s;'"`A-Za-z_$/\\-]+|.)
    """,
    re.VERBOSE | re.DOTALL,
)

_META_LINE = re.compile(r"\\[^\n]*")
_TRIGGER_HEADS: set[tuple[str, ...]] = {
    ("CREATE", "TRIGGER"),
    ("CREATE", "TEMP", "TRIGGER"),
    ("CREATE", "TEMPORARY", "TRIGGER"),
}


class Splitter:
    """Incremental statement splitter: feed text, get the statements it completes."""

    def __init__(self, *, meta: bool = False) -> None:
        self.meta = meta
        self._buf = ""
        self._pos = 0  # scanning position in _buf
        self._start = 0  # where the current statement starts in _buf
        self._base = 0  # offset of _buf[0] in the whole input
        self._line = 1  # line of _buf[_start]
        self._reset_statement()

    def _reset_statement(self) -> None:
        self._significant = False
        self._head: list[str] = []
        self._trigger = False
        self._depth = 0  # BEGIN/CASE ... END nesting inside a trigger

    @property
    def pending(self) -> bool:
        """Whether text of an unfinished statement (not only blanks and comments) is held."""
        return self._significant or bool(self._buf[self._pos :].strip())

    def feed(self, text: str, final: bool = False) -> list[Statement]:
        """Add text; return the statements it completes. ``final``: the input ends here, so an
        unterminated last statement is returned too (the engine then reports its error)."""
        if self._start > 4096 and self._start > len(self._buf) // 2:
            self._drop_done()
        self._buf += text
        out: list[Statement] = []
        buf, n = self._buf, len(self._buf)
        pos = self._pos
        while pos < n:
            if self.meta and not self._significant and buf[pos] == "\\":
                m = _META_LINE.match(buf, pos)
                assert m is not None
                if m.end() == n and not final:
                    break  # the line may go on
                self._significant = True
                self._head = ["\\"]
                pos = m.end()
                self._emit(out, pos, pos)
                continue
            m = _TOKEN.match(buf, pos)
            assert m is not None
            kind = m.lastgroup
            end = m.end()
            if kind == "open":
                if not final:
                    break  # an unterminated quote or comment: wait for its end
                pos = n  # the input ends inside it: the rest is this statement's
                self._significant = True
                break
            if end == n and kind != "semi" and not final:
                break  # the token may go on in the text still to come
            if kind == "semi":
                if self._trigger and self._depth > 0:
                    pos = end
                    continue
                self._emit(out, m.start(), end)
                pos = end
                continue
            if kind == "dollar":
                close = buf.find(m.group(), end)
                if close < 0:
                    if not final:
                        break
                    self._significant = True
                    pos = n
                    break
                end = close + len(m.group())
            elif kind == "word":
                self._word(m.group().upper())
            if kind not in ("ws", "line", "block"):
                self._significant = True
            pos = end
        self._pos = pos
        if final:
            self._emit(out, n, n)
            self._buf, self._pos, self._start, self._base = "", 0, 0, self._base + n
        return out

    def _word(self, word: str) -> None:
        if len(self._head) < 3:
            self._head.append(word)
            if tuple(self._head) in _TRIGGER_HEADS:
                self._trigger = True
        if self._trigger:
            if word in ("BEGIN", "CASE"):
                self._depth += 1
            elif word == "END" and self._depth > 0:
                self._depth -= 1

    def _emit(self, out: list[Statement], stop: int, after: int) -> None:
        """End the current statement at ``stop`` (its ';' excluded); the next starts at
        ``after``. Blank and comment-only statements are dropped."""
        raw = self._buf[self._start : stop]
        keyword = self._head[0] if self._head else ""
        lead = len(raw) - len(raw.lstrip())
        line = self._line + raw.count("\n", 0, lead)
        statement = Statement(raw.strip(), line, keyword, self._base + after)
        self._line += self._buf.count("\n", self._start, after)
        self._start = after
        if self._significant:
            out.append(statement)
        self._reset_statement()

    def _drop_done(self) -> None:
        self._base += self._start
        self._buf = self._buf[self._start :]
        self._pos -= self._start
        self._start = 0


def iter_statements(
    source: str | IO[str] | Iterable[str], *, meta: bool = False, chunk: int = 1 << 16
) -> Iterator[Statement]:
    """The statements of a text, a text file or an iterable of text pieces, yielded as each is
    found: a file is read ``chunk`` characters at a time, never whole."""
    splitter = Splitter(meta=meta)
    if isinstance(source, str):
        yield from splitter.feed(source, final=True)
        return
    if hasattr(source, "read"):
        reader: IO[str] = source  # type: ignore[assignment]
        pieces: Iterable[str] = iter(lambda: reader.read(chunk), "")
    else:
        pieces = source  # type: ignore[assignment]
    for piece in pieces:
        yield from splitter.feed(piece)
    yield from splitter.feed("", final=True)


def split_statements(text: str, *, meta: bool = False) -> list[str]:
    """The statements of a script, as text (blank and comment-only statements dropped)."""
    return [s.sql for s in iter_statements(text, meta=meta)]


def is_complete(text: str, *, meta: bool = True) -> bool:
    """Whether ``text`` (what the user typed so far) ends its last statement: a ``;`` outside
    quotes, comments and trigger bodies, or a meta-command line; blank text is complete."""
    splitter = Splitter(meta=meta)
    splitter.feed(text + "\n")
    return not splitter.pending
