"""Connection options, with eXtremeSQL's spellings, parsed once for every door."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from exdb.errors import ProgrammingError

if TYPE_CHECKING:
    import ssl  # loaded only when ssl_params are given (~10 ms)

__all__ = ["ConnectOptions", "format_node", "parse_node"]


@dataclasses.dataclass(frozen=True)
class ConnectOptions:
    """How to reach and talk to a node. Times are in seconds here; the eXtremeSQL options
    ``connectTimeout`` and ``readTimeout`` are in milliseconds and converted."""

    password: str | None = dataclasses.field(default=None, repr=False)  # never in a repr
    user: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float | None = None  # None: wait as long as the statement runs
    max_connect_attempts: int = 1
    ssl_context: ssl.SSLContext | None = None
    autocommit: bool = False
    max_frame: int = 64 * 1024 * 1024
    #: Milliseconds a statement may run on the node before it is interrupted (0: no limit);
    #: None: the server's ``--statement-timeout``.
    statement_timeout: int | None = None
    #: While a request has heard nothing from its node for this long, the node is probed on a
    #: second connection (None: never). A node busy with a long statement still answers a
    #: probe at once; a stopped or unreachable one does not.
    liveness_interval: float | None = 10.0
    #: How long a liveness probe (connect, TLS, PING/PONG) may take before the node is declared
    #: to have stopped answering and the request fails.
    liveness_timeout: float = 10.0
    #: Milliseconds a statement may wait for a lock on a node (0: no limit); None: the
    #: server's ``--lock-timeout`` (10 s by default). A timeout raises exdb.errors.LockTimeout.
    lock_timeout: int | None = None
    #: Milliseconds a session may sit idle inside a transaction before the node rolls it back
    #: (0: no limit); None: the server's ``--idle-in-transaction-timeout``.
    idle_in_transaction_timeout: int | None = None
    #: Seconds a statement of a distributed transaction waits for a lock before the client
    #: looks for a deadlock across the nodes (PostgreSQL's deadlock_timeout); None: never.
    deadlock_timeout: float | None = 1.0

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> ConnectOptions:
        """Take the options out of ``kwargs`` (eXtremeSQL and Pythonic spellings); refuse the
        rest with ProgrammingError."""
        kw = dict(kwargs)
        password = _pop_alias(kw, "sql_password", "password")
        if password is None:
            password = os.environ.get("EXDB_PASSWORD")
        user = _pop_alias(kw, "sql_login", "user")
        connect_ms = _pop_alias(kw, "connectTimeout", "connect_timeout_ms")
        read_ms = _pop_alias(kw, "readTimeout", "read_timeout_ms")
        attempts = _pop_alias(kw, "maxConnectAttempts", "max_connect_attempts")
        ssl_params = kw.pop("ssl_params", None)
        ssl_context = kw.pop("ssl_context", None)
        autocommit = bool(kw.pop("autocommit", False))
        statement_ms = _pop_alias(kw, "statement_timeout", "statementTimeout")
        liveness_ms = _pop_alias(kw, "liveness_interval", "livenessInterval")
        probe_ms = _pop_alias(kw, "liveness_timeout", "livenessTimeout")
        lock_ms = _pop_alias(kw, "lock_timeout", "lockTimeout")
        idle_txn_ms = _pop_alias(kw, "idle_in_transaction_timeout", "idleInTransactionTimeout")
        deadlock_ms = _pop_alias(kw, "deadlock_timeout", "deadlockTimeout")
        if kw:
            raise ProgrammingError(f"unknown connect() option(s): {', '.join(sorted(kw))}")
        if ssl_context is None and ssl_params is not None:
            ssl_context = _ssl_context(ssl_params)
        return cls(
            password=password,
            user=user,
            connect_timeout=_ms(connect_ms, "connectTimeout") or 10.0,
            read_timeout=_ms(read_ms, "readTimeout"),
            max_connect_attempts=_positive_int(attempts, "maxConnectAttempts", 1),
            ssl_context=ssl_context,
            autocommit=autocommit,
            statement_timeout=_whole_ms(statement_ms, "statement_timeout"),
            liveness_interval=(
                10.0 if liveness_ms is None else _ms(liveness_ms, "liveness_interval")
            ),
            liveness_timeout=_ms(probe_ms, "liveness_timeout") or 10.0,
            lock_timeout=_whole_ms(lock_ms, "lock_timeout"),
            idle_in_transaction_timeout=_whole_ms(idle_txn_ms, "idle_in_transaction_timeout"),
            deadlock_timeout=1.0 if deadlock_ms is None else _ms(deadlock_ms, "deadlock_timeout"),
        )


def _pop_alias(kw: dict[str, Any], *names: str) -> Any:
    found = [name for name in names if name in kw]
    if len(found) > 1:
        raise ProgrammingError(f"connect() got both {found[0]} and {found[1]}")
    return kw.pop(found[0]) if found else None


def _ms(value: Any, name: str) -> float | None:
    if value is None or value == 0:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ProgrammingError(f"{name} must be a number of milliseconds, not {value!r}")
    return value / 1000.0


def _whole_ms(value: Any, name: str) -> int | None:
    """A duration in milliseconds kept as given (0 stays 0: "no limit"); None if not given."""
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ProgrammingError(f"{name} must be a number of milliseconds, not {value!r}")
    return 0 if value == 0 else max(1, round(value))


def _positive_int(value: Any, name: str, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ProgrammingError(f"{name} must be a positive integer, not {value!r}")
    return value


def _ssl_context(params: Any) -> ssl.SSLContext:
    """An SSL context from eXtremeSQL-style ``ssl_params``: a mapping with any of ``cafile``,
    ``certfile``, ``keyfile``, ``check_hostname`` and ``verify`` (default True)."""
    import ssl

    if isinstance(params, ssl.SSLContext):
        return params
    if not isinstance(params, Mapping):
        raise ProgrammingError("ssl_params must be a mapping or an ssl.SSLContext")
    ctx = ssl.create_default_context(cafile=params.get("cafile") or params.get("ca_file"))
    certfile = params.get("certfile") or params.get("cert_file")
    if certfile:
        ctx.load_cert_chain(certfile, params.get("keyfile") or params.get("key_file"))
    ctx.check_hostname = bool(params.get("check_hostname", True))
    if not params.get("verify", True):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def redact(url: str) -> str:
    """``url`` with its passwords (``user:PASSWORD@`` and ``password=``/``sql_password=``)
    replaced by ``***``, for error messages and reprs."""
    url = re.sub(r"(//[^/?@]*?:)[^/?@]*@", r"\1***@", url)
    return re.sub(r"((?:^|[?&])(?:sql_)?password=)[^&]*", r"\1***", url)


def parse_node(node: Any, port: Any = None) -> tuple[str, int]:
    """``"host:port"``, ``"[::1]:port"``, ``("host", port)`` or ``host, port`` -> (host, port)."""
    if isinstance(node, (tuple, list)) and len(node) == 2 and port is None:
        node, port = node
    if not isinstance(node, str) or not node:
        raise ProgrammingError(f"a node must be 'host:port' or (host, port), not {node!r}")
    host = node
    if port is None:
        if node.startswith("["):
            close = node.find("]")
            if close < 0 or node[close + 1 : close + 2] != ":":
                raise ProgrammingError(f"bad node address {node!r}: expected '[ipv6]:port'")
            host, port = node[1:close], node[close + 2 :]
        else:
            host, sep, port = node.rpartition(":")
            if not sep:
                raise ProgrammingError(f"bad node address {node!r}: expected 'host:port'")
    try:
        port_number = int(port)
    except (TypeError, ValueError):
        if "/" in str(port):  # a URL, or a mistyped one: keep its password out of the message
            raise ProgrammingError(
                f"bad node address {redact(node)!r}: expected 'host:port'"
                " (an exdb URL starts with exdb://)"
            ) from None
        raise ProgrammingError(f"bad port {port!r} for node {node!r}") from None
    if not 0 < port_number < 65536:
        raise ProgrammingError(f"port {port_number} of node {node!r} is out of range")
    return host, port_number


def format_node(host: str, port: int) -> str:
    """The node's name in messages: ``host:port`` (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
