"""Replicas under failure: nReplicas=2 on 2 shards (4 durable nodes), a write and read load in
threads; one replica of each shard is killed (kill -9) a third of the way in and restarted (same
database file) at two thirds. Reports acknowledged writes lost, failed reads and writes, reads
that missed an acknowledged row, the time to detect the failure, the time a new client takes to
catch the restarted replicas up, and the throughput beside the same load on 2 nodes without
replicas (measured in the same run).

    python benchmarks/replicas.py [--seconds 12] [--engines sqlite,duckdb]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import exdb
from exdb.cluster import ServerProcess

from _common import print_table

LIVENESS = {"liveness_interval": 1000, "liveness_timeout": 2000}


def _server(engine: str, db: Path, port: int = 0) -> ServerProcess:
    args = ["--host", "127.0.0.1", "--port", str(port), "--engine", engine, "--db", str(db)]
    return ServerProcess([*args, "--quiet"]).start()


class Load:
    """Writer and reader threads, each with its own connection; counts what happened."""

    def __init__(self, nodes: list[str], replicas: int, writers: int, readers: int) -> None:
        self.nodes, self.replicas = nodes, replicas
        self.stop = threading.Event()
        self.acked: set[int] = set()
        self.writes = self.reads = 0
        self.failed_writes: list[str] = []
        self.failed_reads: list[str] = []
        self.stale_reads = 0
        self.detections: list[tuple[int, float]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._writer, args=(i,)) for i in range(writers)]
        self.threads += [threading.Thread(target=self._reader) for _ in range(readers)]

    def _connect(self) -> Any:
        return exdb.connect(nodes=self.nodes, nReplicas=self.replicas, autocommit=True, **LIVENESS)

    def _done(self, conn: Any) -> None:
        """Keep when the connection saw nodes go down; close it (in its own thread)."""
        replicas = getattr(conn, "_replicas", None)
        with self.lock:
            self.detections += replicas.detected if replicas is not None else []
        conn.close()

    def _writer(self, index: int) -> None:
        conn = self._connect()
        k = index * 10_000_000
        while not self.stop.is_set():
            try:
                conn.execute("INSERT INTO t VALUES (?, ?)", (k, "x"))
            except exdb.Error as exc:
                self.failed_writes.append(str(exc)[:200])
            else:
                self.acked.add(k)
                self.writes += 1
            k += 1
        self._done(conn)

    def _reader(self) -> None:
        conn = self._connect()
        while not self.stop.is_set():
            floor = len(self.acked)
            try:
                row = conn.execute("SELECT count(*) FROM t").fetchone()
            except exdb.Error as exc:
                self.failed_reads.append(str(exc)[:200])
                continue
            self.reads += 1
            if row is None or row[0] < floor:
                self.stale_reads += 1
        self._done(conn)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)


def run(engine: str, seconds: float, writers: int, readers: int) -> list[Any]:
    with tempfile.TemporaryDirectory() as tmp:
        base = [_server(engine, Path(tmp) / f"base{i}.db") for i in range(2)]
        try:
            with exdb.connect(nodes=[s.node for s in base], autocommit=True) as conn:
                conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v VARCHAR)")
            plain = Load([s.node for s in base], 1, writers, readers)
            plain.start()
            time.sleep(seconds / 3)
            plain.finish()
            plain_ops = (plain.writes + plain.reads) / (seconds / 3)
        finally:
            for s in base:
                s.stop()

        servers = [_server(engine, Path(tmp) / f"node{i}.db") for i in range(4)]
        nodes = [s.node for s in servers]
        try:
            with exdb.connect(nodes=nodes, nReplicas=2, autocommit=True) as conn:
                conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v VARCHAR)")
            load = Load(nodes, 2, writers, readers)
            load.start()
            time.sleep(seconds / 3)
            healthy_ops = (load.writes + load.reads) / (seconds / 3)
            killed_at = time.monotonic()
            for i in (1, 2):
                servers[i].kill()
            time.sleep(seconds / 3)
            for i in (1, 2):
                servers[i] = _server(engine, Path(tmp) / f"node{i}.db", servers[i].port)
            time.sleep(seconds / 3)
            load.finish()
            detected = [when - killed_at for node, when in load.detections if node in (1, 2)]
            t0 = time.perf_counter()
            with exdb.connect(nodes=nodes, nReplicas=2, autocommit=True) as fresh:
                catch_up = time.perf_counter() - t0
                present = {k for (k,) in fresh.execute("SELECT k FROM t").fetchall()}
                behind = sorted(fresh._replicas.stale)
            counts = []
            for node in nodes:
                with exdb.connect(node, autocommit=True) as one:
                    counts.append(one.execute("SELECT count(*) FROM t").fetchone()[0])
        finally:
            for s in servers:
                s.stop()
    lost = len(load.acked - present)
    return [
        engine,
        len(load.acked),
        lost,
        len(load.failed_writes),
        len(load.failed_reads),
        load.stale_reads,
        f"{max(detected) * 1000:.0f}" if detected else "n/a",
        f"{catch_up * 1000:.0f}",
        "yes" if counts[0] == counts[1] and counts[2] == counts[3] and not behind else "NO",
        f"{healthy_ops / plain_ops:.2f}",
    ]


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--engines", default="sqlite,duckdb")
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--readers", type=int, default=2)
    args = parser.parse_args()
    rows = [
        run(engine, args.seconds, args.writers, args.readers) for engine in args.engines.split(",")
    ]
    print_table(
        f"Replicas: 2 shards x 2, kill -9 one replica of each shard, restart ({args.seconds:g} s,"
        f" {args.writers} writers + {args.readers} readers)",
        [
            "engine",
            "acked writes",
            "lost",
            "failed writes",
            "failed reads",
            "stale reads",
            "detect ms",
            "catch-up ms",
            "replicas equal",
            "ops vs no replicas",
        ],
        rows,
    )
    bad = [r for r in rows if r[2] or r[3] or r[4] or r[5] or r[8] != "yes"]
    if bad:
        raise SystemExit(f"replicas lost or refused work: {bad}")


if __name__ == "__main__":
    main()
