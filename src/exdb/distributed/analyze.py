"""EXPLAIN ANALYZE: run a statement and measure what each stage of its plan moved.

One implementation for every door: :func:`analyze_execution` wraps the engine's execution
generator (the one that yields batches of :class:`ShardCall` and receives their outcomes), so a
door drives it exactly as it drives :meth:`Engine.run`. Each batch is one stage. For a stage it
counts the calls and nodes, the rows and bytes sent to the shards (statement text and
parameters: one parameter row for a call with parameters, one per set for ``many`` and
``each``), the rows and bytes received (result rows; a streamed result is counted as it is
read, and what the plan leaves unread is read and counted when it closes), and the seconds
spent waiting for the shards. The rest of the run's time is the final
stage in the client (merging, in-process final stages, planning).

Bytes are the encoded payload size: the msgpack size of the statement text, of its
parameters and of each result row, as the wire codec (:mod:`exdb.wire.codec`) encodes them.
Frame headers and the other fields of a request or a reply are not counted.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import sys
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import Any, Protocol

from exdb.distributed.plan.base import Execution, Outcomes, ShardCall, ShardResult
from exdb.errors import Error
from exdb.wire.codec import pack

__all__ = ["Analysis", "Analyzing", "StageStats", "analyze_execution"]

#: What a door drives for EXPLAIN ANALYZE: an execution whose value is the Analysis.
Analyzing = Generator[list[ShardCall], Outcomes, "Analysis"]


@dataclasses.dataclass
class StageStats:
    """One stage: one batch of shard calls a plan yielded, run concurrently."""

    label: str
    nodes: tuple[int, ...]  # 1-based, sorted, each once
    calls: int
    rows_sent: int
    bytes_sent: int
    rows_received: int
    bytes_received: int
    seconds: float

    def line(self) -> str:
        """The stage as one line of text."""
        nodes = ", ".join(map(str, self.nodes))
        return (
            f"{self.label}: node{_s(len(self.nodes))} {nodes}; {self.calls} call{_s(self.calls)};"
            f" sent {_moved(self.rows_sent, self.bytes_sent)};"
            f" received {_moved(self.rows_received, self.bytes_received)};"
            f" {_ms(self.seconds)}"
        )


@dataclasses.dataclass
class Analysis:
    """What a statement's run moved, stage by stage, and how long it took."""

    explain: str  # the plan, as explain() shows it
    stages: list[StageStats]
    result_rows: int  # rows the statement returned (0 without a result set)
    rowcount: int  # rows it changed, or -1
    seconds: float  # the whole run, the result read to its end
    final_seconds: float  # the client's share: everything but waiting for the shards

    @property
    def nodes(self) -> tuple[int, ...]:
        """Every node some stage called."""
        return tuple(sorted({n for s in self.stages for n in s.nodes}))

    @property
    def calls(self) -> int:
        """Shard calls in all."""
        return sum(s.calls for s in self.stages)

    @property
    def rows_sent(self) -> int:
        """Parameter rows sent to the shards in all."""
        return sum(s.rows_sent for s in self.stages)

    @property
    def bytes_sent(self) -> int:
        """Bytes sent to the shards in all (statements and parameters)."""
        return sum(s.bytes_sent for s in self.stages)

    @property
    def rows_received(self) -> int:
        """Rows received from the shards in all."""
        return sum(s.rows_received for s in self.stages)

    @property
    def bytes_received(self) -> int:
        """Bytes of rows received from the shards in all."""
        return sum(s.bytes_received for s in self.stages)

    def text(self) -> str:
        """The plan, then one line a stage, the final stage and the totals."""
        lines = [self.explain, "stages:"]
        lines += [f"  {i}. {stage.line()}" for i, stage in enumerate(self.stages, 1)]
        out = f"{self.result_rows} row{_s(self.result_rows)} returned"
        if self.rowcount >= 0:
            out += f", {self.rowcount} row{_s(self.rowcount)} changed"
        lines.append(f"  final stage (client): {out}; {_ms(self.final_seconds)}")
        nodes = ", ".join(map(str, self.nodes)) or "none"
        lines.append(
            f"total: {len(self.stages)} stage{_s(len(self.stages))}, {self.calls}"
            f" call{_s(self.calls)} on node{_s(len(self.nodes))} {nodes};"
            f" sent {_moved(self.rows_sent, self.bytes_sent)};"
            f" received {_moved(self.rows_received, self.bytes_received)}; {_ms(self.seconds)}"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for a message between processes)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Analysis:
        """The Analysis that :meth:`to_dict` gave."""
        fields = dict(data)
        fields["stages"] = [
            StageStats(**{**s, "nodes": tuple(s["nodes"])}) for s in fields["stages"]
        ]
        return cls(**fields)


class _Engine(Protocol):
    def explain(self, sql: str) -> str: ...

    def run(self, sql: str, params: Sequence[Any] | None = None) -> Execution: ...


def analyze_execution(engine: _Engine, sql: str, params: Sequence[Any] | None) -> Analyzing:
    """Run ``sql`` through ``engine`` measured, read its result to the end, and return the
    Analysis. It runs the statement for real (an INSERT inserts). A failing statement raises
    its own error, as it would run alone."""
    try:
        explained: str | None = engine.explain(sql)
    except Error:
        explained = None  # the run says why (or, a catalog reloaded, plans it after all)
    meter = _Meter()
    start = time.perf_counter()
    result = yield from meter.measure(engine.run(sql, params))
    try:
        result_rows = sum(1 for _ in result.rows) if result.columns is not None else 0
    finally:
        if result.close is not None:
            result.close()
    seconds = time.perf_counter() - start
    if explained is None:
        explained = _explain_after(engine, sql)
    waited = sum(s.seconds for s in meter.stages)
    return Analysis(
        explained,
        [s.stats() for s in meter.stages],
        result_rows,
        result.rowcount,
        seconds,
        max(seconds - waited, 0.0),
    )


def _explain_after(engine: _Engine, sql: str) -> str:
    """The plan of a statement that ran although it could not be explained before it ran."""
    try:
        return engine.explain(sql)
    except Error as exc:  # it ran: report the run, and why its plan cannot be shown
        return f"plan: not available ({exc.message})"


class _Stage:
    """A stage's counters while it runs (lazily read rows add to them later)."""

    def __init__(self, calls: list[ShardCall]) -> None:
        labels = dict.fromkeys(c.label or _default_label(c.sql) for c in calls)
        self.label = ", ".join(labels)
        self.nodes = tuple(sorted({c.node + 1 for c in calls}))
        self.calls = len(calls)
        self.rows_sent = sum(_rows_sent(c) for c in calls)
        self.bytes_sent = sum(_size(c.sql) + _size(c.params) for c in calls)
        self.rows_received = 0
        self.bytes_received = 0
        self.seconds = 0.0

    def receive(self, rows: Iterable[Any]) -> None:
        """Count rows already in memory."""
        for row in rows:
            self.rows_received += 1
            self.bytes_received += _size(row)

    def stats(self) -> StageStats:
        return StageStats(
            self.label,
            self.nodes,
            self.calls,
            self.rows_sent,
            self.bytes_sent,
            self.rows_received,
            self.bytes_received,
            self.seconds,
        )


class _Meter:
    """Wraps an execution: each batch it yields becomes a measured stage."""

    def __init__(self) -> None:
        self.stages: list[_Stage] = []

    def measure(self, execution: Execution) -> Execution:
        """``execution``, measured; the door drives this generator in its place."""
        try:
            try:
                calls = next(execution)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            while True:
                stage = _Stage(calls)
                self.stages.append(stage)
                start = time.perf_counter()
                outcomes = yield calls
                stage.seconds += time.perf_counter() - start
                counted = [self._counted(stage, o) for o in outcomes]
                try:
                    calls = execution.send(counted)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
        finally:
            execution.close()  # a door that gives up (a cancelled task) closes the plan too

    @staticmethod
    def _counted(stage: _Stage, outcome: Any) -> Any:
        if isinstance(outcome, BaseException):
            return outcome
        if isinstance(outcome, list):  # an ``each`` call: one answer (or exception) per set
            for one in outcome:
                if not isinstance(one, BaseException):
                    stage.receive(one.rows)
            return outcome
        if not isinstance(outcome, ShardResult) or outcome.columns is None:
            return outcome
        if isinstance(outcome.rows, (list, tuple)):
            stage.receive(outcome.rows)
            return outcome
        return dataclasses.replace(outcome, rows=CountedRows(stage, outcome.rows))


class CountedRows:
    """A streamed shard result whose rows are counted, and the wait for them timed, as the
    plan reads them. It keeps what the door's lazy rows offer a plan: ``close`` and, when
    every part belongs to one stage, ``interleave``."""

    def __init__(self, stage: _Stage, rows: Iterable[tuple[Any, ...]]) -> None:
        self.stage = stage
        self.rows = rows
        self._read: Iterator[tuple[Any, ...]] | None = None
        self._shared: Iterator[tuple[Any, ...]] | None = None  # an interleave of this part

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        # One iterator: rows the door fetched but the plan has not read yet stay in it.
        if self._read is None:
            self._read = _timed(self.stage, iter(self.rows))
        return self._read

    def close(self) -> None:
        """Read and count the unread rest (a merge that met its LIMIT early leaves some),
        then close as the door's rows do. Counted so, a stage's rows are all that its shard
        statements returned, on every door (the asyncio door reads results whole). A plan
        that closes its streams because it fails closes them at once."""
        if sys.exc_info()[1] is None:
            if self._shared is not None:
                collections.deque(self._shared, maxlen=0)
            collections.deque(self, maxlen=0)
        close = getattr(self.rows, "close", None)
        if close is not None:
            close()

    @staticmethod
    def interleave(parts: Sequence[CountedRows]) -> Iterator[tuple[Any, ...]]:
        """The parts' rows as they arrive (the door's interleave), counted."""
        inner = [p.rows for p in parts]
        interleave = getattr(type(inner[0]), "interleave", None) if inner else None
        stages = {id(p.stage) for p in parts}
        if interleave is None or len(stages) != 1 or len({type(r) for r in inner}) != 1:
            return itertools.chain.from_iterable(parts)
        shared = _timed(parts[0].stage, iter(interleave(inner)))
        for part in parts:
            part._shared = shared
        return shared


def _timed(stage: _Stage, rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """``rows``, each counted into ``stage``, the time spent fetching them added to it."""
    while True:
        start = time.perf_counter()
        try:
            row = next(rows)
        except StopIteration:
            stage.seconds += time.perf_counter() - start
            return
        stage.seconds += time.perf_counter() - start
        stage.rows_received += 1
        stage.bytes_received += _size(row)
        yield row


def _rows_sent(call: ShardCall) -> int:
    if call.many or call.each:
        return len(call.params or ())
    return 1 if call.params else 0


def _size(value: Any) -> int:
    """The msgpack size of a value as the wire codec encodes it."""
    if value is None:
        return 1
    try:
        return len(pack(value))
    except (TypeError, ValueError, OverflowError):
        # The codec refuses it (the call then fails on its own): count its text instead.
        return len(repr(value).encode())


def _default_label(sql: str) -> str:
    """A stage label from a call's statement: its first words."""
    words = " ".join(sql.split())
    return words if len(words) <= 40 else words[:39] + "…"


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _moved(rows: int, size: int) -> str:
    return f"{rows} row{_s(rows)}, {_bytes(size)}"


def _bytes(size: int) -> str:
    if size < 10_000:
        return f"{size} B"
    if size < 10_000_000:
        return f"{size / 1000:.1f} kB"
    return f"{size / 1_000_000:.1f} MB"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"
