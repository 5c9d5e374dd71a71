"""TCP keepalives, for the client's and the server's sockets alike.

A peer whose host vanished (no FIN, no RST) leaves a socket that waits forever; with keepalives
the kernel errors it after about a minute of silence: 30 s idle, then 3 probes 10 s apart.
"""

from __future__ import annotations

import socket

__all__ = ["keep_alive"]

_KEEPALIVE = (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))


def keep_alive(sock: socket.socket) -> None:
    """Turn on TCP keepalives (see the module) where the platform has them."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE:
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
