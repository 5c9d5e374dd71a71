"""SCRAM-SHA-256 logins (protocol 2): every door, wrong passwords, a password that never
crosses the wire nor shows in ``ps``, the server's proof, and the delay after failed guesses."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scramp import ScramMechanism

import exdb
from exdb.cluster import LocalCluster, ServerProcess
from exdb.server.auth import FailedLogins, Verifier
from exdb.wire.codec import FrameDecoder, encode_frame
from exdb.wire.messages import MAGIC, PROTOCOL_VERSION, Msg

from _handshake import TIMEOUT, core_login, others_served

StartServer = Callable[..., ServerProcess]
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def guarded() -> Iterator[LocalCluster]:
    """Two SQLite shards that want PASSWORD (given to them in EXDB_PASSWORD)."""
    with LocalCluster(2, password=PASSWORD) as cluster:
        yield cluster


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


# --- every door logs in with SCRAM ------------------------------------------------------------


def test_scram_login_on_the_sync_door(guarded: LocalCluster) -> None:
    node = guarded.nodes[0]
    with exdb.connect(node, password=PASSWORD) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.server_info["protocol"] == PROTOCOL_VERSION
        assert "scram" not in conn.server_info  # the proof was checked, then dropped
    with exdb.connect(node, sql_password=PASSWORD) as conn:  # eXtremeSQL's spelling
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_scram_login_on_the_asyncio_door(guarded: LocalCluster) -> None:
    async def main() -> None:
        conn = await exdb.connect_async(guarded.nodes[0], password=PASSWORD, autocommit=True)
        try:
            cur = await conn.execute("SELECT ?", (7,))
            assert await cur.fetchall() == [(7,)]
        finally:
            await conn.close()
        with pytest.raises(exdb.OperationalError, match="authentication failed"):
            await exdb.connect_async(guarded.nodes[0], password="wrong")

    asyncio.run(asyncio.wait_for(main(), 60))


def test_scram_login_on_the_distributed_doors(guarded: LocalCluster) -> None:
    nodes = guarded.nodes
    with exdb.connect(nodes=nodes, password=PASSWORD, autocommit=True) as conn:
        conn.execute("CREATE TABLE doors (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO doors VALUES (?, ?)", [(i, f"v{i}") for i in range(20)])
    with pytest.raises(exdb.OperationalError, match="authentication failed"):
        exdb.connect(nodes=nodes, password="wrong")
    conn = exdb.connect(nodes=nodes, password=PASSWORD, **{"async": True}, nWorkers=1)
    try:
        assert conn.execute("SELECT COUNT(*) FROM doors") == [(20,)]
    finally:
        conn.close()
    bad = exdb.connect(nodes=nodes, password="wrong", **{"async": True}, nWorkers=1)
    try:  # the worker logs in as it starts, and reports the failure with the first statement
        with pytest.raises(exdb.OperationalError, match="authentication failed"):
            bad.execute("SELECT COUNT(*) FROM doors")
    finally:
        bad.close()

    async def main() -> None:
        aconn = await exdb.connect_async(nodes=nodes, password=PASSWORD)
        try:
            cur = await aconn.execute("SELECT COUNT(*) FROM doors")
            assert await cur.fetchall() == [(20,)]
        finally:
            await aconn.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_wrong_or_missing_password_fails_the_same_way(guarded: LocalCluster) -> None:
    node = guarded.nodes[1]
    with others_served(node, PASSWORD):
        for options in ({"password": "wrong"}, {}, {"password": ""}, {"password": PASSWORD[:-1]}):
            with pytest.raises(exdb.OperationalError) as info:
                exdb.connect(node, **options)
            assert info.value.node == node
            assert "authentication failed: wrong or missing password" in str(info.value)


def test_out_of_band_cancel_needs_no_login(start_server: StartServer) -> None:
    # The cancel connection sends CANCEL instead of HELLO: its ticket is the credential, and it
    # goes through the same pre-login limits.
    server = start_server("--engine", "sqlite", env={"EXDB_PASSWORD": PASSWORD})
    slow = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) SELECT COUNT(*) FROM c"
    with exdb.connect(server.node, password=PASSWORD) as conn:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                conn.execute(slow)
            except exdb.Error as exc:
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 10
        while conn._waiting is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        conn.cancel()
        worker.join(20)
        assert not worker.is_alive(), "the cancelled statement kept running"
        assert len(errors) == 1 and "canceled" in str(errors[0]), errors
        conn.rollback()
        assert conn.execute("SELECT 42").fetchone() == (42,)


# --- the password stays home ------------------------------------------------------------------


def test_the_password_never_crosses_the_wire(guarded: LocalCluster) -> None:
    node = guarded.nodes[0]
    secret = PASSWORD.encode()
    info, sent = core_login(node, PASSWORD)
    assert isinstance(info, dict) and info["protocol"] == PROTOCOL_VERSION
    error, wrong_sent = core_login(node, PASSWORD + "!")
    assert isinstance(error, exdb.OperationalError) and "authentication failed" in str(error)
    decoder = FrameDecoder()
    messages = decoder.feed(sent[len(MAGIC) :])
    assert [m[0] for m in messages] == [Msg.HELLO, Msg.AUTH]
    assert "password" not in messages[0][2]
    for blob in (sent, wrong_sent):
        assert secret not in blob
        assert base64.b64encode(secret) not in blob
        assert secret.hex().encode() not in blob


def test_the_client_refuses_a_server_that_wants_no_password(start_server: StartServer) -> None:
    server = start_server("--engine", "sqlite")  # no password: it cannot prove it knows ours
    with pytest.raises(exdb.OperationalError, match="asked for no password") as info:
        exdb.connect(server.node, password=PASSWORD)
    assert info.value.node == server.node
    with exdb.connect(server.node) as conn:  # without a password the client trusts it
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _impostor(listener: socket.socket) -> None:
    """A server that knows another password: it challenges, ignores the proof and welcomes."""
    sock, _ = listener.accept()
    with sock:
        sock.settimeout(TIMEOUT)
        decoder = FrameDecoder()
        data = b""
        while len(data) < len(MAGIC):
            data += sock.recv(64)
        messages = decoder.feed(data[len(MAGIC) :])
        while not messages:
            messages = decoder.feed(sock.recv(4096))
        salt, stored, server_key, count = ScramMechanism().make_auth_info("not it")
        scram = ScramMechanism().make_server(lambda _u: (salt, stored, server_key, count))
        scram.set_client_first(messages[0][2]["scram"])
        sock.sendall(encode_frame([Msg.CHALLENGE, 0, {"scram": scram.get_server_first()}]))
        messages = []
        while not messages:
            messages = decoder.feed(sock.recv(4096))
        fake = "v=" + base64.b64encode(b"\0" * 32).decode()
        welcome = {"protocol": PROTOCOL_VERSION, "session": 1, "key": "k", "scram": fake}
        sock.sendall(encode_frame([Msg.WELCOME, 0, welcome]))
        sock.recv(4096)  # until the client hangs up


def test_the_client_refuses_a_server_that_cannot_prove_it_knows_the_password() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        thread = threading.Thread(target=_impostor, args=(listener,), daemon=True)
        thread.start()
        node = f"127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(exdb.OperationalError, match="could not prove"):
            exdb.connect(node, password=PASSWORD, connectTimeout=5000)
        thread.join(TIMEOUT)
        assert not thread.is_alive()


# --- where the server gets the password -------------------------------------------------------


def test_a_password_file_keeps_the_password_out_of_ps(
    start_server: StartServer, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\nthe second line is not read\n")
    server = start_server("--engine", "sqlite", "--password-file", str(secret))
    assert server.pid is not None
    assert PASSWORD not in _cmdline(server.pid)
    with (
        others_served(server.node, PASSWORD),
        pytest.raises(exdb.OperationalError, match="authentication failed"),
    ):
        exdb.connect(server.node, password="the second line is not read")


def test_the_environment_keeps_the_password_out_of_ps(start_server: StartServer) -> None:
    server = start_server("--engine", "duckdb", env={"EXDB_PASSWORD": PASSWORD})
    assert server.pid is not None
    assert PASSWORD not in _cmdline(server.pid)
    with (
        others_served(server.node, PASSWORD),
        pytest.raises(exdb.OperationalError, match="authentication failed"),
    ):
        exdb.connect(server.node)


def test_a_verifier_file_from_exdb_passwd(start_server: StartServer, tmp_path: Path) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "exdb", "passwd"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    line = made.stdout.strip()
    assert line.startswith("SCRAM-SHA-256$4096:") and PASSWORD not in line
    Verifier.parse(line)  # PostgreSQL's format, as the server reads it
    secret = tmp_path / "verifier"
    secret.write_text(line + "\n")
    server = start_server("--engine", "sqlite", "--password-file", str(secret))
    with (
        others_served(server.node, PASSWORD),
        pytest.raises(exdb.OperationalError, match="authentication failed"),
    ):
        exdb.connect(server.node, password=line)  # the verifier is no password


def test_verifiers_are_in_postgresqls_format() -> None:
    # RFC 5802's derivation, by hand, for RFC 7677's example (password "pencil", this salt).
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    stored = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    salt64, stored64, server64 = (base64.b64encode(b).decode() for b in (salt, stored, server_key))
    text = f"SCRAM-SHA-256$4096:{salt64}${stored64}:{server64}"
    verifier = Verifier.parse(text)
    assert verifier == Verifier(salt, 4096, stored, server_key)
    assert str(verifier) == text
    derived = Verifier.derive("pencil")
    assert derived.iterations == 4096 and len(derived.salt) >= 12 and derived.salt != salt
    for bad in (
        "md5abcdef",
        "SCRAM-SHA-256$4096:c2FsdA==",
        "SCRAM-SHA-256$99:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA",
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$not base64!:AAAA",
    ):
        with pytest.raises(ValueError, match=r"SCRAM verifier|iteration|base64|salt"):
            Verifier.parse(bad)


def _serve_and_stop(*args: str, env: dict[str, str] | None = None) -> tuple[str, str, int]:
    """Run ``exdb serve`` until it listens (or exits), stop it; its stdout, stderr and code."""
    full_env = dict(os.environ)
    full_env.pop("EXDB_PASSWORD", None)
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "exdb", "serve", "--port", "0", *args]
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env
    ) as proc:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            sel.select(30)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        return out, err, proc.returncode


def test_the_password_option_warns_loudly() -> None:
    out, err, _ = _serve_and_stop("--password", "visible-to-all", "--quiet")
    assert "listening on" in out
    assert "WARNING" in err and "ps" in err and "--password-file" in err


def test_bad_password_settings_are_refused_clearly(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing-here")
    _, err, code = _serve_and_stop("--password-file", missing)
    assert code != 0 and "cannot read the password file" in err and missing in err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    _, err, code = _serve_and_stop("--password-file", str(empty))
    assert code != 0 and "empty" in err
    broken = tmp_path / "broken"
    broken.write_text("SCRAM-SHA-256$4096:abc\n")
    _, err, code = _serve_and_stop("--password-file", str(broken))
    assert code != 0 and "SCRAM verifier" in err
    _, err, code = _serve_and_stop("--password", "x", "--password-file", str(empty))
    assert code != 0 and "exclude each other" in err


# --- guessing ---------------------------------------------------------------------------------


def test_failed_logins_delay_grows_per_address_and_is_forgotten() -> None:
    now = [100.0]
    delays = FailedLogins(base=0.05, cap=3.2, forget_after=60.0, clock=lambda: now[0])
    assert delays.reserve("10.0.0.1", latest=200.0) == 100.0  # no failure: no wait
    turns = []
    for _ in range(9):
        at = delays.reserve("10.0.0.1", latest=1e9)
        assert at is not None
        turns.append(at)
        now[0] = at
        delays.failed("10.0.0.1")
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(turns)]
    assert gaps == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 3.2]
    assert delays.reserve("10.0.0.2", latest=1e9) == now[0]  # another address: no wait
    # Parallel attempts queue up: each takes the next turn.
    first, second = delays.reserve("10.0.0.1", 1e9), delays.reserve("10.0.0.1", 1e9)
    assert first is not None and second is not None and second - first == pytest.approx(3.2)
    assert delays.reserve("10.0.0.1", latest=now[0] + 1) is None  # past the deadline: refused
    now[0] += 61  # a quiet minute
    assert delays.reserve("10.0.0.1", latest=1e9) == now[0]
    assert delays.failures("10.0.0.1") == 0


def test_password_guessing_is_slowed_down(start_server: StartServer) -> None:
    server = start_server("--engine", "sqlite", env={"EXDB_PASSWORD": PASSWORD})
    with others_served(server.node, PASSWORD) as healthy:
        stop = time.monotonic() + 4.0
        guesses = [0] * 8  # attempts whose proof the server checked: "wrong or missing"
        turned_away = [0] * 8  # attempts refused before any check: "too many failed attempts"
        errors: list[str] = []

        def guess(slot: int) -> None:
            for n in range(10_000):
                if time.monotonic() >= stop:
                    return
                try:
                    exdb.connect(server.node, password=f"guess-{slot}-{n}", connectTimeout=15000)
                except exdb.OperationalError as exc:
                    if "authentication failed: wrong or missing password" in str(exc):
                        guesses[slot] += 1
                    elif "authentication failed: too many failed attempts" in str(exc):
                        turned_away[slot] += 1
                        time.sleep(0.05)
                    else:
                        errors.append(str(exc))
                else:
                    errors.append("a wrong password got in")

        threads = [threading.Thread(target=guess, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        # Meanwhile: another address logs in at once, the open session answers at once.
        started = time.monotonic()
        info, _ = core_login(server.node, PASSWORD, source="127.0.0.2")
        other_login = time.monotonic() - started
        assert isinstance(info, dict) and info["protocol"] == PROTOCOL_VERSION, info
        started = time.monotonic()
        assert healthy.execute("SELECT 5").fetchone() == (5,)
        answer = time.monotonic() - started
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        total = sum(guesses)
        assert not errors, errors[:3]
        # ~1,700 guesses/s before; 50 ms doubling to 3.2 s, in turn, allows a handful.
        assert 3 <= total < 20 * 4.0, f"{total} guesses in 4 s ({sum(turned_away)} turned away)"
        assert other_login < 2.0 and answer < 2.0, (other_login, answer)
    # The right password from the guessing address gets in again once its turn comes.
    for _ in range(40):
        try:
            conn = exdb.connect(server.node, password=PASSWORD, connectTimeout=15000)
        except exdb.OperationalError as exc:
            assert "too many failed attempts" in str(exc), exc
            time.sleep(0.5)
            continue
        with conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        break
    else:
        pytest.fail("the right password never got in after the guessing stopped")


def test_connect_time_with_scram(
    start_server: StartServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # A server of its own: failed passwords elsewhere would make this address wait its turn.
    server = start_server("--engine", "sqlite", env={"EXDB_PASSWORD": PASSWORD})
    plain = start_server("--engine", "sqlite")
    medians = []
    for node, options in ((server.node, {"password": PASSWORD}), (plain.node, {})):
        times = []
        for _ in range(50):
            started = time.perf_counter()
            conn = exdb.connect(node, **options)
            times.append(time.perf_counter() - started)
            conn.close()
        times.sort()
        medians.append(times[25])
    with capsys.disabled():
        print(
            f"\n50 connects: median {medians[0] * 1000:.2f} ms with SCRAM,"
            f" {medians[1] * 1000:.2f} ms without a password"
        )
    assert medians[0] < 1.0  # a generous bound: a few ms on an idle machine


def test_passwords_never_show_in_a_repr() -> None:
    from exdb.client.options import ConnectOptions
    from exdb.server.app import ServerConfig

    options = ConnectOptions.from_kwargs({"password": "s3cret-pw"})
    assert options.password == "s3cret-pw"
    assert "s3cret-pw" not in repr(options)
    assert "s3cret-pw" not in repr(ServerConfig(password="s3cret-pw"))
