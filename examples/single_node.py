"""Talk to one exdb node, synchronously and with asyncio.

Start a node first, e.g. ``exdb serve --port 5001``, then run::

    python examples/single_node.py 127.0.0.1:5001
"""

from __future__ import annotations

import asyncio
import sys

import exdb


def sync_example(node: str) -> None:
    """PEP 249: cursor, parameters, transactions."""
    with exdb.connect(node) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v VARCHAR)")
        cur.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", [(1, "one"), (2, "two")])
        conn.commit()
        cur.execute("SELECT k, v FROM kv WHERE k >= ? ORDER BY k", (1,))
        print([d[0] for d in cur.description], cur.fetchall())


async def async_example(node: str) -> None:
    """The same core, as coroutines; many statements pipelined on one connection."""
    async with await exdb.connect_async(node, autocommit=True) as conn:

        async def square(i: int) -> int:
            cur = await conn.execute("SELECT ? * ?", (i, i))
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

        print(await asyncio.gather(*(square(i) for i in range(10))))


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:5001"
    sync_example(target)
    asyncio.run(async_example(target))
