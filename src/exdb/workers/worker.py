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
from exdb.distributed.aio import AioDistributedConnection, AioDistributedCursor
from exdb.distributed.plan import Result
from exdb.wire.codec import FrameDecoder, encode_frame
from exdb.workers.messages import error_message, result_fields

_IN_FLIGHT = 64  # statements a worker runs at once (they pipeline on its node connections)
_BATCH = 1000  # the most statements of one run of identical INSERTs batched
# The most point SELECTs of one run: smaller runs overlap, as the shards answer one run while
# this process routes the next and its parent reads the answers of the one before.
_SELECT_RUN = 500
_INSERT, _SELECT = "insert", "select"
_EXPLAIN, _ANALYZE = "explain", "analyze"  # the modes of a task (see exdb.workers.messages)
_RELOAD = "reload"  # the queue's marker of a [0, "catalog"] message


class _Stdin(asyncio.Protocol):
    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self.decoder = FrameDecoder()
        self.queue = queue

    def data_received(self, data: bytes) -> None:
        # The queue holds sequences of messages: a batch's tasks, or any other message alone.
        for msg in self.decoder.feed(data):
            if isinstance(msg, (list, tuple)) and len(msg) == 3 and msg[1] == "batch":
                self.queue.put_nowait(msg[2])
            elif isinstance(msg, (list, tuple)) and list(msg) == [0, "catalog"]:
                self.queue.put_nowait(_RELOAD)
            else:
                self.queue.put_nowait((msg,))

    def eof_received(self) -> bool | None:
        self.queue.put_nowait(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.put_nowait(None)


class _Writer:
    """Frames for the parent, written together once per turn of the event loop: one pipe
    write (and one wake-up of the parent) for many answers, not one each."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport
        self.frames: list[bytes] = []

    def send(self, msg: list[Any]) -> None:
        """Queue a message; it leaves at the end of this turn of the loop."""
        if not self.frames:
            asyncio.get_running_loop().call_soon(self.flush)
        self.frames.append(encode_frame(msg))

    def flush(self) -> None:
        """Write what is queued."""
        if self.frames:
            self.transport.write(b"".join(self.frames))
            self.frames.clear()


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    await loop.connect_read_pipe(lambda: _Stdin(queue), os.fdopen(0, "rb", buffering=0))
    out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(1, "wb", buffering=0))
    writer = _Writer(out)
    send = writer.send

    first = await queue.get()
    if first is None:
        return
    config = first[0]
    try:
        options = ConnectOptions.from_kwargs(dict(config["options"]))
        replicas = int(config.get("replicas", 1))
        conn = await AioDistributedConnection.open(list(config["nodes"]), options, replicas)
    except Exception as exc:
        send([0, "error", *error_message(0, exc)[2:4]])
        writer.flush()
        return
    send([0, "ready"])
    gate = asyncio.Semaphore(_IN_FLIGHT)
    running: set[asyncio.Task[None]] = set()

    async def answer(task_id: int, cur: AioDistributedCursor) -> None:
        description = cur.description
        if description is None:
            send([task_id, "count", cur.rowcount])
        else:
            columns = [d[0] for d in description]
            types = [d[1] for d in description]
            send([task_id, "rows", columns, types, await cur.fetchall()])

    async def one(task_id: int, sql: str, params: Any) -> None:
        try:
            await answer(task_id, await conn.execute(sql, params))
        except Exception as exc:
            send(error_message(task_id, exc))

    async def explained(mode: str, task_id: int, sql: str, params: Any) -> None:
        """A statement explained, or run analyzed (explain(analyze=True) on the parent)."""
        try:
            if mode == _EXPLAIN:
                send([task_id, "explain", conn.explain(sql)])
            else:
                send([task_id, "analysis", (await conn.analyze(sql, params)).to_dict()])
        except Exception as exc:
            send(error_message(task_id, exc))

    async def each(kind: str, batch: list[Any]) -> list[Any] | None:
        """A run's outcomes from one batch per shard, or None to run it one by one."""
        sql, seq = batch[0][1], [m[2] for m in batch]
        try:
            if kind == _INSERT:
                return await conn.insert_each(sql, seq)
            return await conn.select_each(sql, seq)
        except Exception as exc:  # the batch could not run at all: each says so
            return [exc] * len(batch)

    async def run(kind: str | None, batch: list[Any]) -> None:
        """One statement, or a run of the same plain INSERT (one atomic batch per shard) or
        point SELECT (one BATCH per shard)."""
        try:
            if kind in (_EXPLAIN, _ANALYZE):
                task_id, sql, params = batch[0][:3]
                await explained(kind, task_id, sql, params)
                return
            outcomes = await each(kind, batch) if kind is not None and len(batch) > 1 else None
            if outcomes is None:
                for task_id, sql, params in batch:
                    await one(task_id, sql, params)
                return
            for (task_id, _, _), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    send(error_message(task_id, outcome))
                elif isinstance(outcome, Result):
                    send(_rows_message(task_id, outcome))
                else:
                    send([task_id, "count", outcome])
        finally:
            gate.release()

    engine = conn._engine()

    def batch_kind(sql: str) -> str | None:
        """_INSERT or _SELECT if runs of this statement are batched per shard, else None."""
        if engine.plain_insert(sql) is not None:
            return _INSERT
        if engine.point_select(sql) is not None:
            return _SELECT
        return None

    def joins(kind: str | None, run: list[Any], msg: Any) -> bool:
        """Whether ``msg``, the same statement as ``run``'s, can join it in one batch."""
        if kind == _SELECT:
            return len(run) < _SELECT_RUN
        return kind == _INSERT and msg[2] is not None and len(run) < _BATCH

    def runs(messages: list[Any]) -> list[tuple[str | None, list[Any]]]:
        """Consecutive tasks running the same plain INSERT or point SELECT, grouped (in
        order) with their kind; every other task alone, with None."""
        out: list[tuple[str | None, list[Any]]] = []
        kinds: dict[str, str | None] = {}
        for msg in messages:
            sql = msg[1]
            if len(msg) > 3:  # a task with a mode (explain, analyze) runs alone
                out.append((msg[3], [msg]))
                continue
            if out and out[-1][1][0][1] == sql and len(out[-1][1][0]) == 3:
                if sql not in kinds:
                    kinds[sql] = batch_kind(sql)
                kind, run = kinds[sql], out[-1][1]
                if joins(kind, run, msg):
                    run.append(msg)
                    out[-1] = (kind, run)
                    continue
            out.append((None, [msg]))
        return out

    try:
        done = False
        while not done:
            messages: list[Any] = []
            arrived = await queue.get()
            while True:
                if arrived is None:
                    done = True
                    break
                if arrived == _RELOAD:
                    # The parent sends it between lists, when no statement of ours is queued.
                    await conn._drive(engine.load_catalog())
                else:
                    messages.extend(arrived)
                if queue.empty() or len(messages) >= _BATCH * 4:
                    break
                arrived = queue.get_nowait()
            for kind, batch in runs(messages):
                await gate.acquire()
                task = asyncio.create_task(run(kind, batch))
                running.add(task)
                task.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running)
    finally:
        writer.flush()
        await conn.close()
        out.close()


def _rows_message(task_id: int, result: Result) -> list[Any]:
    """What ``answer`` sends for a cursor holding ``result``, built without the cursor."""
    return [task_id, *result_fields(result)]


def main() -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        asyncio.run(_serve())
    except BrokenPipeError:
        sys.exit(0)  # the parent is gone: nobody is left to answer


if __name__ == "__main__":
    main()
