"""The parent's side of the worker processes: start them, hand them statements, collect the
answers as they come, notice a death and replace the dead.

Workers are fresh interpreters (``python -m exdb.workers.worker``), never forks: DuckDB and
threads are not fork-safe, and a fresh interpreter never re-runs the user's main module.
Everything crosses their stdin and stdout as frames of the wire codec, so rows are never
pickled. The parent reads and writes the pipes without blocking, so neither side can stall the
other.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from exdb.errors import Error, OperationalError, make_error
from exdb.wire.codec import FrameDecoder, encode_frame
from exdb.workers.messages import error_from

__all__ = ["WorkerPool"]

_READ = 1 << 20
_SEND_BATCH = 1000  # tasks per frame to a worker


class _Worker:
    """One worker process and the parent's buffers for it."""

    def __init__(self, number: int, config: dict[str, Any], epoch: int) -> None:
        self.number = number
        self.epoch = epoch  # the catalog epoch this worker has read (see WorkerPool.epoch)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exdb.workers.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin.fileno()
        self.stdout = self.proc.stdout.fileno()
        os.set_blocking(self.stdin, False)
        os.set_blocking(self.stdout, False)
        self.decoder = FrameDecoder()
        self.out = bytearray(encode_frame(config))
        self.inflight: dict[int, int] = {}  # task id -> index in the caller's list
        self.failure: Error | None = None  # a worker that could not connect says why
        self.dead = False

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    def send(self, msg: list[Any]) -> None:
        """Queue a message; it is written when the pipe can take it."""
        self.out += encode_frame(msg)

    def write_some(self) -> None:
        """Write what the pipe takes now."""
        try:
            written = os.write(self.stdin, self.out)
        except BlockingIOError:
            return
        except (BrokenPipeError, OSError):
            self.dead = True
            return
        del self.out[:written]

    def stop(self, timeout: float = 5.0) -> None:
        """Close its stdin (it finishes and exits), then make sure it is gone."""
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class WorkerPool:
    """``n`` worker processes connected to the same nodes."""

    def __init__(
        self, nodes: Sequence[str], options: dict[str, Any], n: int, replicas: int = 1
    ) -> None:
        self.config = {"nodes": list(nodes), "options": options, "replicas": replicas}
        self.n = n
        self.workers: list[_Worker] = []
        self._numbers = 0
        self._task_ids = 0
        self.closed = False
        # Bumped after statements that may change the catalog (DDL, placement calls): a worker
        # behind it reloads its catalog before its next statements, so that no worker plans
        # with a placement another worker has changed.
        self.epoch = 0

    def start(self) -> None:
        """Start the missing workers (all of them at first; a replacement after a death)."""
        self.workers = [w for w in self.workers if not w.dead]
        while len(self.workers) < self.n:
            self._numbers += 1
            self.workers.append(_Worker(self._numbers, self.config, self.epoch))

    def pids(self) -> list[int]:
        """The live workers' process ids."""
        return [w.pid for w in self.workers if not w.dead]

    def run(
        self,
        tasks: Sequence[tuple[str, Any]],
        on_done: Callable[[int, Any], None] | None = None,
        mode: str | None = None,
    ) -> list[Any]:
        """Run every (sql, params) on the workers; return each result or exception, in order.
        ``mode`` "explain" or "analyze": explain each statement, or run it analyzed, instead."""
        if self.closed:
            raise OperationalError("the worker pool is closed")
        self.start()
        outcomes: list[Any] = [None] * len(tasks)
        pending = len(tasks)
        workers = list(self.workers)
        # Each worker gets an even share, in runs of consecutive statements, sent as batches:
        # a worker then sees runs of the same statement together and can batch them per shard.
        share = -(-len(tasks) // len(workers))
        for w_index, worker in enumerate(workers):
            if worker.epoch != self.epoch:
                worker.send([0, "catalog"])
                worker.epoch = self.epoch
            batch = []
            for index in range(w_index * share, min(len(tasks), (w_index + 1) * share)):
                sql, params = tasks[index]
                self._task_ids += 1
                worker.inflight[self._task_ids] = index
                batch.append([self._task_ids, sql, params, *([mode] if mode else [])])
                if len(batch) == _SEND_BATCH:
                    worker.send([0, "batch", batch])
                    batch = []
            if batch:
                worker.send([0, "batch", batch])

        def finish(index: int, outcome: Any) -> None:
            nonlocal pending
            outcomes[index] = outcome
            pending -= 1
            if on_done is not None:
                on_done(index, outcome)

        with selectors.DefaultSelector() as sel:
            while pending:
                for w in workers:
                    if w.out and not w.dead:
                        w.write_some()  # non-blocking: what the pipe takes now
                    if w.dead and w.inflight:
                        self._fail_inflight(w, tasks, finish)
                if not pending:
                    break
                for w in workers:
                    if not w.dead:
                        sel.register(w.stdout, selectors.EVENT_READ, w)
                        if w.out:
                            sel.register(w.stdin, selectors.EVENT_WRITE, w)
                for key, _ in sel.select():
                    if key.fd == key.data.stdout:
                        self._read(key.data, tasks, finish)
                for key in list(sel.get_map().values()):
                    sel.unregister(key.fileobj)
        return outcomes

    def _read(
        self, w: _Worker, tasks: Sequence[tuple[str, Any]], finish: Callable[[int, Any], None]
    ) -> None:
        try:
            data = os.read(w.stdout, _READ)
        except BlockingIOError:
            return
        if not data:
            w.dead = True
            return
        for msg in w.decoder.feed(data):
            task_id, kind = msg[0], msg[1]
            if task_id == 0:
                if kind == "error":
                    w.failure = make_error(msg[2], msg[3])
                    w.dead = True
                continue
            index = w.inflight.pop(task_id, None)
            if index is None:
                continue
            if kind == "rows":
                finish(index, ("rows", msg[2], msg[3], msg[4]))
            elif kind == "count":
                finish(index, ("count", msg[2]))
            elif kind in ("explain", "analysis"):
                finish(index, (kind, msg[2]))
            else:
                finish(index, error_from(msg))

    def _fail_inflight(
        self, w: _Worker, tasks: Sequence[tuple[str, Any]], finish: Callable[[int, Any], None]
    ) -> None:
        code = w.proc.poll()
        if code is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = w.proc.wait(1.0)
        for index in w.inflight.values():
            sql = tasks[index][0]
            if w.failure is not None:
                error: Error = type(w.failure)(
                    w.failure.message, node=w.failure.node, statement=sql
                )
            else:
                error = OperationalError(
                    f"worker process {w.pid} died (exit code {code}) while running this"
                    " statement; it is replaced",
                    statement=sql,
                )
            finish(index, error)
        w.inflight.clear()
        w.stop(0.5)

    def close(self, force: bool = False) -> None:
        """Stop every worker; none outlives the pool. Workers finish their statements first,
        unless ``force`` (an interrupted call): then they are terminated at once."""
        if self.closed:
            return
        self.closed = True
        for w in self.workers:
            if force and w.proc.poll() is None:
                w.proc.terminate()
            w.stop()
        self.workers = []
