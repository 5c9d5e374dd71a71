"""TLS: the server serves it with --tls-cert/--tls-key, and both doors speak it; a client that
does not, or that does not trust the server's certificate, fails fast and clearly."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import pathlib
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest
import trustme

import exdb
from exdb.cluster import ServerProcess
from exdb.wire.codec import FrameDecoder, encode_frame
from exdb.wire.messages import MAGIC, PROTOCOL_VERSION, Msg

StartServer = Callable[..., ServerProcess]

VALUES: list[Any] = [0, -(2**63), 1.5, "", "héllo ✓", "x" * 70_000, b"\x00\xff" * 40_000, None]


class Pki:
    """A throwaway CA, a server certificate for 127.0.0.1, and their PEM files."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1")
        self.cafile = directory / "ca.pem"
        self.certfile = directory / "server-chain.pem"
        self.keyfile = directory / "server-key.pem"
        self.ca.cert_pem.write_to_path(str(self.cafile))
        # The chain and the key in the files --tls-cert and --tls-key name.
        for blob in cert.cert_chain_pems:
            blob.write_to_path(str(self.certfile), append=True)
        cert.private_key_pem.write_to_path(str(self.keyfile))
        other = trustme.CA()
        self.wrong_cafile = directory / "other-ca.pem"
        other.cert_pem.write_to_path(str(self.wrong_cafile))


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def tls_server(start_server: StartServer, pki: Pki) -> ServerProcess:
    return start_server(
        "--engine", "sqlite", "--tls-cert", str(pki.certfile), "--tls-key", str(pki.keyfile)
    )


def test_sync_round_trip_over_tls(tls_server: ServerProcess, pki: Pki) -> None:
    with exdb.connect(tls_server.node, ssl_params={"cafile": str(pki.cafile)}) as conn:
        cur = conn.cursor()
        for value in VALUES:
            assert cur.execute("SELECT ?", (value,)).fetchone() == (value,)
        cur.execute("CREATE TABLE t (i INTEGER, s VARCHAR)")
        cur.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row {i}") for i in range(2000)])
        conn.commit()
        rows = cur.execute("SELECT i, s FROM t ORDER BY i").fetchall()
        assert rows == [(i, f"row {i}") for i in range(2000)]
        assert conn.ping() == {"in_transaction": True}
        assert conn.server_info["engine"] == "sqlite"


def test_async_round_trip_over_tls(tls_server: ServerProcess, pki: Pki) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.cafile))

    async def main() -> list[Any]:
        conn = await exdb.connect_async(tls_server.node, ssl_context=ctx)
        try:
            got = []
            for value in VALUES:
                cur = await conn.execute("SELECT ?", (value,))
                got.append(await cur.fetchone())
            cur = await conn.execute(
                "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 5000)"
                " SELECT sum(i), count(*) FROM c"
            )
            got.append(await cur.fetchone())
            return got
        finally:
            await conn.close()

    got = asyncio.run(asyncio.wait_for(main(), 30))
    assert got == [(v,) for v in VALUES] + [(5000 * 5001 // 2, 5000)]


def _open_sockets() -> set[str]:
    """This process's open sockets, by inode, as Linux lists them."""
    fds = pathlib.Path("/proc/self/fd")
    found = set()
    for fd in fds.iterdir():
        try:
            target = str(fd.readlink())
        except OSError:  # closed meanwhile (e.g. the directory's own descriptor)
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


@pytest.mark.skipif(not pathlib.Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_async_close_over_tls_releases_the_socket(tls_server: ServerProcess, pki: Pki) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.cafile))

    async def main() -> set[str]:
        before = _open_sockets()
        conn = await exdb.connect_async(tls_server.node, ssl_context=ctx)
        cur = await conn.execute("SELECT 1")
        assert await cur.fetchone() == (1,)
        assert _open_sockets() - before, "the connection's socket is not listed"
        await conn.close()
        return _open_sockets() - before

    left_open = asyncio.run(asyncio.wait_for(main(), 30))
    assert not left_open, f"sockets still open after 'await conn.close()': {left_open}"


def test_tls_serves_both_engines(start_server: StartServer, pki: Pki) -> None:
    server = start_server(
        "--engine", "duckdb", "--tls-cert", str(pki.certfile), "--tls-key", str(pki.keyfile)
    )
    with exdb.connect(server.node, ssl_params={"cafile": str(pki.cafile)}) as conn:
        row = conn.execute("SELECT 1.25::DECIMAL(10,2), DATE '2024-02-29', ?", ("ok",)).fetchone()
        assert row == (decimal.Decimal("1.25"), datetime.date(2024, 2, 29), "ok")


def test_a_plain_client_to_a_tls_server_fails_fast(tls_server: ServerProcess, pki: Pki) -> None:
    started = time.monotonic()
    with pytest.raises(exdb.OperationalError) as info:
        exdb.connect(tls_server.node, readTimeout=3000)
    assert time.monotonic() - started < 5
    assert info.value.node == tls_server.node
    # The server is fine for TLS clients.
    with exdb.connect(tls_server.node, ssl_params={"cafile": str(pki.cafile)}) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_tls_client_with_the_wrong_ca_fails(tls_server: ServerProcess, pki: Pki) -> None:
    started = time.monotonic()
    with pytest.raises(exdb.OperationalError, match="TLS handshake failed") as info:
        exdb.connect(
            tls_server.node, ssl_params={"cafile": str(pki.wrong_cafile)}, readTimeout=3000
        )
    assert time.monotonic() - started < 5
    assert info.value.node == tls_server.node
    assert "certificate" in str(info.value).lower()
    with exdb.connect(tls_server.node, ssl_params={"cafile": str(pki.cafile)}) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_an_async_tls_client_with_the_wrong_ca_fails(tls_server: ServerProcess, pki: Pki) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.wrong_cafile))

    async def main() -> None:
        await exdb.connect_async(tls_server.node, ssl_context=ctx, readTimeout=3000)

    with pytest.raises(exdb.OperationalError) as info:
        asyncio.run(asyncio.wait_for(main(), 10))
    assert info.value.node == tls_server.node
    assert "certificate" in str(info.value).lower()


def test_a_tls_client_to_a_plain_server_fails(start_server: StartServer, pki: Pki) -> None:
    server = start_server("--engine", "sqlite")
    started = time.monotonic()
    with pytest.raises(exdb.OperationalError) as info:
        exdb.connect(server.node, ssl_params={"cafile": str(pki.cafile)}, readTimeout=3000)
    assert time.monotonic() - started < 5
    assert info.value.node == server.node
    with exdb.connect(server.node) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_an_idle_tls_session_is_told_and_closed(start_server: StartServer, pki: Pki) -> None:
    server = start_server(
        "--engine",
        "sqlite",
        "--tls-cert",
        str(pki.certfile),
        "--tls-key",
        str(pki.keyfile),
        "--idle-timeout",
        "0.5",
    )
    ctx = ssl.create_default_context(cafile=str(pki.cafile))
    raw = socket.create_connection((server.host, server.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.settimeout(3)  # the server should speak after 0.5 s
        sock.sendall(MAGIC + encode_frame([Msg.HELLO, 0, {"protocol": PROTOCOL_VERSION}]))
        decoder = FrameDecoder()
        messages: list[Any] = []
        for _ in range(1000):
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                pytest.fail(f"no idle-timeout error after 3 s; got only {messages}")
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            messages.extend(decoder.feed(chunk))
        else:
            pytest.fail("the server never closed the idle session")
    assert [m[0] for m in messages] == [Msg.WELCOME, Msg.ERROR], messages
    assert messages[1][1] == 0 and messages[1][2] == "OperationalError"
    assert "idle timeout" in messages[1][3]
