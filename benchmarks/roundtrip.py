"""Round-trip latency of one tiny statement, against the physical floor, in one run.

Prints the median latency of ``SELECT 1`` through exdb (sync door, loopback), a bare msgpack
echo over a loopback socket to a separate process (the floor), sqlite3 in-process, the ratio
exdb/echo, and pipelined throughput (64 statements in flight on one asyncio connection).

    python benchmarks/roundtrip.py [--quick] [--engine sqlite|duckdb]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import exdb
from exdb.cluster import LocalCluster
from exdb.wire.codec import FrameDecoder, encode_frame

from _common import latencies, median, print_table

# The floor: a separate process that decodes each msgpack frame and sends it back re-encoded.
_ECHO_SERVER = r"""
import socket, sys
from exdb.wire.codec import FrameDecoder, encode_frame
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
dec = FrameDecoder()
while True:
    data = conn.recv(1 << 16)
    if not data:
        break
    for msg in dec.feed(data):
        conn.sendall(encode_frame(msg))
"""


class EchoPeer:
    """A connection to the echo process: the physical floor of a request/response."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ECHO_SERVER], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        port = int(self.proc.stdout.readline())
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = FrameDecoder()
        self.frame = encode_frame([2, 1, "SELECT 1", None, 0])

    def once(self) -> None:
        """One frame out, the same frame back."""
        self.sock.sendall(self.frame)
        while not self.decoder.feed(self.sock.recv(1 << 16)):
            pass

    def close(self) -> None:
        """Stop the echo process (it exits when its client goes)."""
        self.sock.close()
        self.proc.wait(10)


def interleaved(fns: dict[str, Callable[[], object]], n: int, rounds: int = 10) -> dict[str, float]:
    """Median latency (us) of each function, measured in alternating rounds, so that noise on
    this shared machine falls on all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name] += latencies(fn, max(1, n // rounds), warmup=50)
    return {name: median(values) for name, values in samples.items()}


async def _pipelined(node: str, total: int, in_flight: int, **options: Any) -> float:
    conn = await exdb.connect_async(node, autocommit=True, **options)
    try:
        sem = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with sem:
                cur = await conn.execute("SELECT ?", (i,))
                rows = await cur.fetchall()
                assert rows == [(i,)]

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(total)))
        return total / (time.perf_counter() - t0)
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--engine", default="sqlite", choices=["sqlite", "duckdb"])
    args = ap.parse_args()
    n = 300 if args.quick else 10000
    total = 2000 if args.quick else 30000

    with LocalCluster(1, engine=args.engine) as cluster:
        node = cluster.nodes[0]
        echo = EchoPeer()
        conn = exdb.connect(node, autocommit=True)
        cur = conn.cursor()
        lite = sqlite3.connect(":memory:")
        try:
            med = interleaved(
                {
                    "exdb": lambda: cur.execute("SELECT 1").fetchall(),
                    "echo": echo.once,
                    "sqlite3": lambda: lite.execute("SELECT 1").fetchall(),
                },
                n,
            )
        finally:
            conn.close()
            echo.close()
            lite.close()
        seq = asyncio.run(_pipelined(node, total // 4, 1))
        piped = asyncio.run(_pipelined(node, total, 64))
    exdb_us, echo_us, sqlite_us = med["exdb"], med["echo"], med["sqlite3"]

    print_table(
        f"SELECT 1 round trip, median of {n} ({args.engine} engine)",
        ["what", "median us", "ratio to echo"],
        [
            ["exdb sync door, loopback", exdb_us, exdb_us / echo_us],
            ["msgpack echo, loopback (floor)", echo_us, 1.0],
            ["sqlite3 in-process", sqlite_us, sqlite_us / echo_us],
        ],
    )
    print_table(
        "Pipelined throughput, asyncio door, one connection",
        ["what", "statements/s", "ratio to 1 in flight"],
        [["1 in flight", seq, 1.0], ["64 in flight", piped, piped / seq]],
    )
    print(f"\nexdb/echo = {exdb_us / echo_us:.2f} (goal <= 2.0)")


if __name__ == "__main__":
    main()
