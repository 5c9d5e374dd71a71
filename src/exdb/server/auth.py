"""Authentication on the shard server: the SCRAM-SHA-256 verifier (RFC 5802, RFC 7677), the
server side of one exchange, and the growing delay after failed passwords.

The server never needs the password itself: a *verifier* (salt, iteration count, stored key,
server key) checks a client's proof, and proves to the client that the server knows the password.
It is derived once at start, or read ready-made from ``--password-file`` in PostgreSQL's format
``SCRAM-SHA-256$<iterations>:<salt>$<stored key>:<server key>`` (base64), which ``exdb passwd``
prints.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import threading
import time
from collections.abc import Callable

from exdb.wire.messages import SCRAM

__all__ = [
    "ITERATIONS",
    "FailedLogins",
    "ServerExchange",
    "Verifier",
    "load_verifier",
    "peer_key",
]

#: PBKDF2 iterations of a derived verifier: PostgreSQL's default.
ITERATIONS = 4096
#: The most iterations a verifier (or a server's challenge, on the client) may ask for.
MAX_ITERATIONS = 1_000_000
_PREFIX = SCRAM + "$"


@dataclasses.dataclass(frozen=True)
class Verifier:
    """What the server keeps instead of the password."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def derive(cls, password: str, iterations: int = ITERATIONS) -> Verifier:
        """A verifier of ``password`` with a fresh random salt; ValueError if SCRAM cannot use
        the password (SASLprep refuses control characters, for instance)."""
        from scramp import ScramMechanism  # ~100 ms to import: only with a password

        try:
            salt, stored, server, count = ScramMechanism(SCRAM).make_auth_info(
                password, iteration_count=iterations
            )
        except Exception as exc:  # scramp says why in its ScramException
            raise ValueError(f"this password cannot be used: {exc}") from None
        return cls(bytes(salt), int(count), bytes(stored), bytes(server))

    @classmethod
    def parse(cls, text: str) -> Verifier:
        """Read PostgreSQL's ``SCRAM-SHA-256$<iterations>:<salt>$<stored key>:<server key>``;
        ValueError names what is wrong."""
        if not text.startswith(_PREFIX):
            raise ValueError(f"a SCRAM verifier starts with {_PREFIX!r}")
        try:
            count_salt, keys = text[len(_PREFIX) :].split("$")
            count, salt = count_salt.split(":")
            stored, server = keys.split(":")
        except ValueError:
            raise ValueError(
                f"a SCRAM verifier reads {_PREFIX}<iterations>:<salt>$<stored key>:<server key>"
            ) from None
        if not count.isdigit() or not 4096 <= int(count) <= MAX_ITERATIONS:
            raise ValueError(f"the iteration count must be from 4096 to {MAX_ITERATIONS}")
        try:
            fields = [base64.b64decode(f, validate=True) for f in (salt, stored, server)]
        except binascii.Error:
            raise ValueError("the salt and the keys must be base64") from None
        if len(fields[0]) < 12 or len(fields[1]) != 32 or len(fields[2]) != 32:
            raise ValueError("the salt needs 12 bytes or more and each key exactly 32")
        return cls(fields[0], int(count), fields[1], fields[2])

    def __str__(self) -> str:
        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        salt, stored, server = b64(self.salt), b64(self.stored_key), b64(self.server_key)
        return f"{_PREFIX}{self.iterations}:{salt}${stored}:{server}"


def load_verifier(password: str | None, password_file: str | None) -> Verifier | None:
    """The server's verifier: from the first line of ``password_file`` (a password or a
    verifier), else derived from ``password``; None when neither is given. ValueError names
    what is wrong with the file (unreadable included) or the password."""
    if password_file is not None:
        try:
            with open(password_file, encoding="utf-8") as f:
                line = f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the password file {password_file}: {exc}") from None
        if not line:
            raise ValueError(f"{password_file}: the first line (the password) is empty")
        if line.startswith(_PREFIX):
            try:
                return Verifier.parse(line)
            except ValueError as exc:
                raise ValueError(f"{password_file}: {exc}") from None
        return Verifier.derive(line)
    if password:
        return Verifier.derive(password)
    return None


class ServerExchange:
    """The server side of one SCRAM exchange. Every failure, a malformed message included,
    reads as a failed authentication (None), with no detail for the peer."""

    def __init__(self, verifier: Verifier) -> None:
        def keys(_username: str) -> tuple[bytes, bytes, bytes, int]:
            # One password for the server: the SCRAM user name is not looked at.
            v = verifier
            return v.salt, v.stored_key, v.server_key, v.iterations

        from scramp import ScramMechanism  # ~100 ms to import: only with a password

        self._server = ScramMechanism(SCRAM).make_server(keys)

    def challenge(self, client_first: str) -> str | None:
        """The server-first message that answers the client-first one, or None."""
        try:
            self._server.set_client_first(client_first)
            return str(self._server.get_server_first())
        except Exception:  # scramp refuses a malformed message in many ways; all mean "no"
            return None

    def verify(self, client_final: str) -> str | None:
        """The server-final message if the client's proof is right, else None."""
        try:
            self._server.set_client_final(client_final)
            return str(self._server.get_server_final())
        except Exception:  # a wrong proof (ScramException) or a malformed message
            return None


def peer_key(address: str) -> str:
    """Whom failures are counted against: the IPv4 address, or the /64 of an IPv6 one (a host
    there has a whole /64 to pick addresses from)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclasses.dataclass
class _Peer:
    failures: int
    last: float  # when the last failure was
    next_at: float  # when the next attempt may be checked


class FailedLogins:
    """A growing delay for password attempts from an address that failed recently.

    After ``n`` failures, attempts from that address are checked at most one per
    ``min(base * 2 ** (n - 1), cap)`` seconds, in turn (parallel connections queue up, so
    they gain nothing), whatever their outcome: a delay on failures alone would tell a client
    that gives up early that it guessed wrong. An address is forgotten ``forget_after`` seconds
    after its last failure. Other addresses are not delayed at all.
    """

    def __init__(
        self,
        base: float = 0.05,
        cap: float = 3.2,
        forget_after: float = 60.0,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base
        self.cap = cap
        self.forget_after = forget_after
        self.max_peers = max_peers
        self._clock = clock
        self._peers: dict[str, _Peer] = {}  # oldest last failure first
        self._lock = threading.Lock()

    def _delay(self, failures: int) -> float:
        return min(self.base * 2.0 ** min(failures - 1, 30), self.cap)

    def reserve(self, peer: str, latest: float) -> float | None:
        """When (monotonic time) an attempt of ``peer`` may be checked: now if it has no recent
        failure. The turn is taken only if it comes by ``latest``; None otherwise."""
        now = self._clock()
        with self._lock:
            state = self._peers.get(peer)
            if state is None:
                return now
            if now - state.last > self.forget_after:
                del self._peers[peer]
                return now
            at = max(now, state.next_at)
            if at > latest:
                return None
            state.next_at = at + self._delay(state.failures)
            return at

    def failed(self, peer: str) -> None:
        """Count a failed password from ``peer``."""
        now = self._clock()
        with self._lock:
            state = self._peers.pop(peer, None)
            if state is None or now - state.last > self.forget_after:
                state = _Peer(0, now, now)
            state.failures += 1
            state.last = now
            state.next_at = max(state.next_at, now + self._delay(state.failures))
            self._peers[peer] = state  # to the end: the order is by last failure
            if len(self._peers) > self.max_peers:
                self._prune(now)

    def _prune(self, now: float) -> None:
        for key in list(self._peers):
            if now - self._peers[key].last <= self.forget_after and (
                len(self._peers) <= self.max_peers
            ):
                break
            del self._peers[key]

    def failures(self, peer: str) -> int:
        """Recent failures of ``peer`` (for logs and tests)."""
        with self._lock:
            state = self._peers.get(peer)
            return 0 if state is None else state.failures
