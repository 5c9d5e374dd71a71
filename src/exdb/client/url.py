"""``exdb://`` URLs: the nodes and the connect() options in one string, for the CLI, the shell
and the SQLAlchemy dialect.

Forms (query values are percent-decoded):

- ``exdb://127.0.0.1:5001/`` - one node;
- ``exdb://127.0.0.1:5001,127.0.0.1:5002/?password=s3cret&statement_timeout=5000`` - several;
- ``exdb:///?nodes=127.0.0.1:5001,127.0.0.1:5002`` - the nodes in the query, the form
  SQLAlchemy's own URL parser accepts for several nodes (it reads one port per URL);
- ``exdb://user:password@host:port/`` - credentials before the first node;
- ``node=host:port`` (or ``host=``) may repeat, and adds nodes to those above.

Options are connect()'s (see :func:`exdb.connect`), typed from their text: the times and counts
as integers, ``autocommit`` as a boolean. ``ssl_cafile``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_check_hostname`` and ``ssl_verify`` make up ``ssl_params``; ``ssl=1`` alone asks for TLS
with the system's certificate authorities.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from exdb.client.options import format_node, parse_node, redact
from exdb.errors import ProgrammingError

__all__ = ["SCHEME", "is_url", "parse_url", "redact"]

SCHEME = "exdb"

_INTEGER_OPTIONS = frozenset(
    {
        "connectTimeout",
        "connect_timeout_ms",
        "readTimeout",
        "read_timeout_ms",
        "maxConnectAttempts",
        "max_connect_attempts",
        "statement_timeout",
        "statementTimeout",
        "liveness_interval",
        "livenessInterval",
        "liveness_timeout",
        "livenessTimeout",
        "lock_timeout",
        "lockTimeout",
        "idle_in_transaction_timeout",
        "idleInTransactionTimeout",
        "deadlock_timeout",
        "deadlockTimeout",
    }
)
_TEXT_OPTIONS = frozenset({"password", "sql_password", "user", "sql_login"})
_BOOLEAN_OPTIONS = frozenset({"autocommit"})
_SSL_TEXT = {"ssl_cafile": "cafile", "ssl_certfile": "certfile", "ssl_keyfile": "keyfile"}
_SSL_BOOLEAN = {"ssl_check_hostname": "check_hostname", "ssl_verify": "verify"}
_NODE_KEYS = frozenset({"node", "host", "nodes"})
#: The options an error lists (one spelling each; the others are accepted too).
_DOCUMENTED = (
    "nodes", "password", "user", "connectTimeout", "readTimeout", "maxConnectAttempts",
    "statement_timeout", "liveness_interval", "liveness_timeout", "lock_timeout",
    "idle_in_transaction_timeout", "deadlock_timeout", "autocommit", "ssl",
    "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname", "ssl_verify",
)  # fmt: skip
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def is_url(text: str) -> bool:
    """Whether ``text`` is an ``exdb://`` URL (not a ``host:port`` node)."""
    return text.lower().startswith(SCHEME + "://")


def parse_url(url: str) -> tuple[list[str], dict[str, Any]]:
    """``exdb://`` URL -> (nodes as ``host:port``, connect() options); bad URLs raise
    ProgrammingError naming what is wrong."""
    if not isinstance(url, str) or not is_url(url):
        shown = redact(url) if isinstance(url, str) else url
        raise ProgrammingError(f"not an exdb URL (expected exdb://host:port,...): {shown!r}")
    rest = url[len(SCHEME) + 3 :]
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    if "?" in netloc:  # exdb://host:port?opts, with no slash
        netloc, _, query = netloc.partition("?")
    if path.strip("/"):
        raise ProgrammingError(
            f"exdb URLs name no database (got /{path}): the nodes hold one database"
        )
    options: dict[str, Any] = {}
    credentials, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, password = credentials.partition(":")
        if user:
            options["user"] = urllib.parse.unquote(user)
        if colon:
            options["password"] = urllib.parse.unquote(password)
    nodes = [_node(h) for h in hosts.split(",") if h.strip()]
    ssl_params: dict[str, Any] = {}
    want_ssl = False
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key in _NODE_KEYS:
            nodes += [_node(h) for h in value.split(",") if h.strip()]
        elif key in options or key in ssl_params:
            raise ProgrammingError(f"the URL gives option {key!r} twice")
        elif key in _TEXT_OPTIONS:
            options[key] = value
        elif key in _INTEGER_OPTIONS:
            options[key] = _integer(key, value)
        elif key in _BOOLEAN_OPTIONS:
            options[key] = _boolean(key, value)
        elif key in _SSL_TEXT:
            ssl_params[_SSL_TEXT[key]] = value
        elif key in _SSL_BOOLEAN:
            ssl_params[_SSL_BOOLEAN[key]] = _boolean(key, value)
        elif key == "ssl":
            want_ssl = _boolean(key, value)
        else:
            raise ProgrammingError(
                f"unknown exdb URL option {key!r} (known: {', '.join(_DOCUMENTED)})"
            )
    if ssl_params or want_ssl:
        options["ssl_params"] = ssl_params
    if not nodes:
        raise ProgrammingError("the exdb URL names no node (exdb://host:port,... or ?nodes=)")
    return nodes, options


def _node(text: str) -> str:
    host, port = parse_node(urllib.parse.unquote(text.strip()))
    return format_node(host, port)


def _integer(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ProgrammingError(f"URL option {key} must be an integer, not {value!r}") from None


def _boolean(key: str, value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ProgrammingError(f"URL option {key} must be true or false, not {value!r}")
