"""Statements per second through each door of exdb, on 2 local shards, in one run.

20,000 single-row INSERTs routed by key, then 2,000 point SELECTs, through:

- a sequential loop over DistributedConnection (the baseline);
- the asyncio door with 64 statements in flight;
- AsyncDistributedConnection with nWorkers 1, 2 and 4, given lists of 1,000 statements.

Every door writes its own key range; the row count and every SELECT's answer are checked. Then
the cost of moving results between processes: rows pickled versus rows as msgpack frames.

    python benchmarks/parallel.py [--quick] [--engine sqlite|duckdb]
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import exdb
from exdb.cluster import LocalCluster
from exdb.wire.codec import pack, unpack

from _common import print_table

INSERT = "INSERT INTO kv VALUES (?, ?)"
SELECT = "SELECT v FROM kv WHERE k = ?"


def _value(k: int) -> str:
    return f"value-{k}"


def sequential(nodes: tuple[str, ...], keys: range, probes: list[int]) -> tuple[float, float]:
    """The baseline: one statement after another on a DistributedConnection."""
    with exdb.connect(nodes=nodes, autocommit=True) as conn:
        cur = conn.cursor()
        t0 = time.perf_counter()
        for k in keys:
            cur.execute(INSERT, (k, _value(k)))
        t1 = time.perf_counter()
        for k in probes:
            assert cur.execute(SELECT, (k,)).fetchall() == [(_value(k),)]
        t2 = time.perf_counter()
    return len(keys) / (t1 - t0), len(probes) / (t2 - t1)


def asyncio_door(nodes: tuple[str, ...], keys: range, probes: list[int]) -> tuple[float, float]:
    """The asyncio door with 64 statements in flight on one connection per node."""

    async def main() -> tuple[float, float]:
        conn = await exdb.connect_async(nodes=nodes, autocommit=True)
        gate = asyncio.Semaphore(64)
        try:

            async def one(sql: str, params: tuple[Any, ...]) -> list[Any]:
                async with gate:
                    cur = await conn.execute(sql, params)
                    return await cur.fetchall() if cur.description else []

            t0 = time.perf_counter()
            await asyncio.gather(*(one(INSERT, (k, _value(k))) for k in keys))
            t1 = time.perf_counter()
            got = await asyncio.gather(*(one(SELECT, (k,)) for k in probes))
            t2 = time.perf_counter()
            assert got == [[(_value(k),)] for k in probes]
            return len(keys) / (t1 - t0), len(probes) / (t2 - t1)
        finally:
            await conn.close()

    return asyncio.run(main())


def workers_door(
    nodes: tuple[str, ...], keys: range, probes: list[int], n_workers: int, chunk: int
) -> tuple[float, float]:
    """AsyncDistributedConnection, given lists of ``chunk`` statements."""
    with exdb.connect(nodes=nodes, **{"async": True}, nWorkers=n_workers) as conn:
        conn.execute("SELECT 1")  # the workers are up and connected before the clock starts
        key_list = list(keys)
        t0 = time.perf_counter()
        for i in range(0, len(key_list), chunk):
            part = key_list[i : i + chunk]
            assert conn.execute([INSERT] * len(part), [(k, _value(k)) for k in part]) == [1] * len(
                part
            )
        t1 = time.perf_counter()
        for i in range(0, len(probes), chunk):
            part = probes[i : i + chunk]
            got = conn.execute([SELECT] * len(part), [(k,) for k in part])
            assert got == [[(_value(k),)] for k in part]
        t2 = time.perf_counter()
    return len(keys) / (t1 - t0), len(probes) / (t2 - t1)


def transfer_costs(rows: list[tuple[Any, ...]]) -> tuple[float, float]:
    """Seconds to serialise and deserialise ``rows`` with pickle, and with msgpack frames."""

    def timed(fn: Callable[[], object], repeat: int = 5) -> float:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    return (
        timed(lambda: pickle.loads(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))),
        timed(lambda: unpack(pack(rows))),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--engine", default="sqlite", choices=["sqlite", "duckdb"])
    args = ap.parse_args()
    inserts, selects, chunk = (2000, 200, 200) if args.quick else (20000, 2000, 1000)

    results: list[tuple[str, float, float]] = []
    with LocalCluster(2, engine=args.engine) as cluster:
        nodes = cluster.nodes
        with exdb.connect(nodes=nodes, autocommit=True) as setup:
            setup.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v VARCHAR)")
        doors: list[tuple[str, Callable[[range, list[int]], tuple[float, float]]]] = [
            ("sequential DistributedConnection", lambda r, p: sequential(nodes, r, p)),
            ("asyncio door, 64 in flight", lambda r, p: asyncio_door(nodes, r, p)),
        ]
        for n in (1, 2, 4):
            doors.append(
                (
                    f"AsyncDistributedConnection nWorkers={n}",
                    lambda r, p, n=n: workers_door(nodes, r, p, n, chunk),
                )
            )
        for i, (name, door) in enumerate(doors):
            keys = range(i * inserts, (i + 1) * inserts)
            probes = [keys[j * (inserts // selects)] for j in range(selects)]
            ins, sel = door(keys, probes)
            results.append((name, ins, sel))
        with exdb.connect(nodes=nodes) as check:
            total = check.execute("SELECT COUNT(*) FROM kv").fetchone()
            assert total == (inserts * len(doors),), total
            rows = check.execute("SELECT k, v FROM kv ORDER BY k LIMIT 100000").fetchall()
        with exdb.connect(nodes=nodes, async_=True, nWorkers=1) as conn:
            conn.execute("SELECT 1")
            t0 = time.perf_counter()
            big = conn.execute("SELECT k, v FROM kv ORDER BY k LIMIT 100000")
            through_worker = time.perf_counter() - t0
            assert list(big) == rows

    base_ins, base_sel = results[0][1], results[0][2]
    print_table(
        f"Statements per second, 2 {args.engine} shards: {inserts} INSERTs, {selects} SELECTs",
        ["door", "INSERT/s", "ratio", "SELECT/s", "ratio"],
        [[name, ins, ins / base_ins, sel, sel / base_sel] for name, ins, sel in results],
    )
    best = max(results[1:], key=lambda r: r[1] + r[2])
    combined = (inserts + selects) / (inserts / best[1] + selects / best[2])
    base = (inserts + selects) / (inserts / base_ins + selects / base_sel)
    print(
        f"\nbest parallel door: {best[0]}: {combined / base:.2f}x the sequential loop over all"
        " statements (goal >= 3.0)"
    )
    pickled, packed = transfer_costs(rows)
    print_table(
        f"Moving {len(rows)} result rows between processes",
        ["how", "ms", "ratio"],
        [
            ["pickle dumps + loads", pickled * 1000, 1.0],
            ["msgpack frame pack + unpack (what exdb sends)", packed * 1000, packed / pickled],
            [
                "whole query through a worker process",
                through_worker * 1000,
                through_worker / pickled,
            ],
        ],
    )
    print("\nresults agree: every SELECT answered its own key; row counts match")


if __name__ == "__main__":
    main()
