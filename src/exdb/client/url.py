"""``exdb://`` URLs: ``exdb://[user[:password]@]host:port[,host:port...][/][?option=value&...]``.

The nodes are listed in shard order; the query string carries connect() options
(``password``, ``connectTimeout``, ``readTimeout``, ``statement_timeout``, ``autocommit``, ...),
with numbers and booleans converted from their text. IPv6 hosts go in brackets:
``exdb://[::1]:5001``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, unquote

from exdb.client.options import format_node, parse_node
from exdb.errors import ProgrammingError

__all__ = ["parse_url"]

_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$", re.DOTALL)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _value(text: str) -> Any:
    """An option's value from its text: int, float, bool, or the text itself."""
    low = text.lower()
    if low in _TRUE - {"1"}:
        return True
    if low in _FALSE - {"0"}:
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_url(url: str) -> tuple[list[str], dict[str, Any]]:
    """The nodes (``host:port``, in order) and the connect() options of an ``exdb://`` URL;
    a malformed URL raises ProgrammingError (the password is never echoed)."""
    m = _URL.match(url.strip()) if isinstance(url, str) else None
    if m is None or m.group("scheme").lower().split("+")[0] != "exdb":
        raise ProgrammingError("an exdb URL looks like exdb://host:port,host:port/?password=...")
    rest = m.group("rest")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if path.strip("/"):
        raise ProgrammingError(
            f"exdb URL: unexpected path /{path}: exdb has no database names"
            " (exdb://host:port,host:port/?options)"
        )
    options: dict[str, Any] = {}
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts = netloc
    elif userinfo:
        user, colon, password = userinfo.partition(":")
        if user:
            options["user"] = unquote(user)
        if colon:
            options["password"] = unquote(password)
    nodes: list[str] = []
    for part in hosts.split(","):
        if not part.strip():
            continue
        try:
            host, port = parse_node(unquote(part.strip()))
        except ProgrammingError as exc:
            raise ProgrammingError(f"exdb URL: {exc}") from None
        nodes.append(format_node(host, port))
    if not nodes:
        raise ProgrammingError("exdb URL: no nodes (exdb://host:port,host:port/)")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ProgrammingError("exdb URL: malformed query string after '?'") from None
    for key, text in pairs:
        if key in options or (key in ("password", "sql_password") and "password" in options):
            raise ProgrammingError(f"exdb URL: option {key} given twice")
        options[key] = text if key in ("password", "sql_password", "user") else _value(text)
    return nodes, options
