"""A worker process: ``python -m exdb.workers.worker``. It connects to every node with the
asyncio door and runs the statements its parent sends, many at once, answering each as it
finishes. It exits when its stdin closes (the parent closed it, or died)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from exdb.client.options import ConnectOptions
from exdb.dist.aio import AioDistributedConnection
from exdb.wire.codec import FrameDecoder, encode_frame
from exdb.workers.messages import error_message

_IN_FLIGHT = 64  # statements a worker runs at once (they pipeline on its node connections)
_BATCH = 1000  # the most statements of one run of identical INSERTs sent as one batch


class _Stdin(asyncio.Protocol):
    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self.decoder = FrameDecoder()
        self.queue = queue

    def data_received(self, data: bytes) -> None:
        for msg in self.decoder.feed(data):
            if isinstance(msg, (list, tuple)) and len(msg) == 3 and msg[1] == "batch":
                for task in msg[2]:
                    self.queue.put_nowait(task)
            else:
                self.queue.put_nowait(msg)

    def eof_received(self) -> bool | None:
        self.queue.put_nowait(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.put_nowait(None)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    await loop.connect_read_pipe(lambda: _Stdin(queue), os.fdopen(0, "rb", buffering=0))
    out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(1, "wb", buffering=0))

    def send(msg: list[Any]) -> None:
        out.write(encode_frame(msg))

    config = await queue.get()
    if config is None:
        return
    try:
        options = ConnectOptions.from_kwargs(dict(config["options"]))
        conn = await AioDistributedConnection.open(list(config["nodes"]), options)
    except Exception as exc:
        send([0, "error", *error_message(0, exc)[2:4]])
        return
    send([0, "ready"])
    gate = asyncio.Semaphore(_IN_FLIGHT)
    running: set[asyncio.Task[None]] = set()

    async def one(task_id: int, sql: str, params: Any) -> None:
        try:
            cur = await conn.execute(sql, params)
            if cur.description is None:
                send([task_id, "count", cur.rowcount])
            else:
                columns = [d[0] for d in cur.description]
                types = [d[1] for d in cur.description]
                send([task_id, "rows", columns, types, await cur.fetchall()])
        except Exception as exc:
            send(error_message(task_id, exc))

    async def run(batch: list[Any]) -> None:
        """One statement, or a run of the same plain INSERT: one atomic batch per shard."""
        try:
            outcomes = None
            if len(batch) > 1:
                try:
                    outcomes = await conn.insert_each(batch[0][1], [m[2] for m in batch])
                except Exception as exc:  # the batch could not run at all: each says so
                    outcomes = [exc] * len(batch)
            if outcomes is None:
                for task_id, sql, params in batch:
                    await one(task_id, sql, params)
                return
            for (task_id, _, _), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    send(error_message(task_id, outcome))
                else:
                    send([task_id, "count", outcome])
        finally:
            gate.release()

    engine = conn._engine()

    def runs(messages: list[Any]) -> list[list[Any]]:
        """Consecutive tasks running the same plain INSERT, grouped (in order); every other
        task alone."""
        out: list[list[Any]] = []
        for msg in messages:
            same = out and out[-1][0][1] == msg[1] and len(out[-1]) < _BATCH
            if same and msg[2] is not None and engine.plain_insert(msg[1]) is not None:
                out[-1].append(msg)
            else:
                out.append([msg])
        return out

    try:
        done = False
        while not done:
            messages = [await queue.get()]
            while not queue.empty() and len(messages) < _BATCH * 4:
                messages.append(queue.get_nowait())
            if None in messages:
                done = True
                messages = messages[: messages.index(None)]
            for batch in runs(messages):
                await gate.acquire()
                task = asyncio.create_task(run(batch))
                running.add(task)
                task.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running)
    finally:
        await conn.close()
        out.close()


def main() -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        asyncio.run(_serve())
    except BrokenPipeError:
        sys.exit(0)  # the parent is gone: nobody is left to answer


if __name__ == "__main__":
    main()
