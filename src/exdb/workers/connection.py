"""AsyncDistributedConnection: eXtremeSQL's API for running many statements at once over
several shards, with ``nWorkers`` worker processes.

>>> conn = exdb.connect(nodes=nodes, **{"async": True}, nWorkers=2)      # doctest: +SKIP
>>> conn.execute("SELECT 1,2")                                           # doctest: +SKIP
[(1, 2)]
>>> conn.execute(["SELECT COUNT(*) FROM t", "SELECT SUM(k) FROM t"], None)  # doctest: +SKIP
[[(2,)], [(100,)]]
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast, overload

from exdb.client.options import ConnectOptions, format_node, parse_node
from exdb.distributed.analyze import Analysis
from exdb.distributed.connection import DistributedConnection
from exdb.distributed.replicas import Layout
from exdb.errors import Error, ErrorClasses, InterfaceError, OperationalError, ProgrammingError
from exdb.types import plain_params
from exdb.workers.messages import result_fields
from exdb.workers.pool import WorkerPool

__all__ = ["AsyncDistributedConnection", "ResultSet"]


class ResultSet(Sequence[tuple[Any, ...]]):
    """One statement's rows: a sequence of tuples that compares equal to a list of tuples, with
    the column names (``.columns``) and a PEP 249 ``.description``."""

    __module__ = "exdb"

    def __init__(self, columns: Sequence[str], types: Sequence[Any], rows: Sequence[Any]) -> None:
        self.columns = list(columns)
        self.types = list(types)
        self._rows = [tuple(r) for r in rows]

    @property
    def description(self) -> list[tuple[Any, ...]]:
        """One 7-item tuple a column: (name, type_code, None, None, None, None, None)."""
        return [
            (c, t, None, None, None, None, None)
            for c, t in zip(self.columns, self.types, strict=True)
        ]

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, i: int) -> tuple[Any, ...]: ...

    @overload
    def __getitem__(self, i: slice) -> list[tuple[Any, ...]]: ...

    def __getitem__(self, i: int | slice) -> Any:
        return self._rows[i]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResultSet):
            return self._rows == other._rows and self.columns == other.columns
        if isinstance(other, (list, tuple)):
            return self._rows == [tuple(r) if isinstance(r, (list, tuple)) else r for r in other]
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._rows)

    # Arrow and DataFrames (the extras arrow, pandas, polars); the rows came whole from a
    # worker, so the columns are built here, typed from the values (see exdb.arrow).

    def fetch_arrow_table(self) -> Any:
        """The rows as a ``pyarrow.Table``."""
        from exdb.arrow import rows_table

        return rows_table(self.columns, self.types, self._rows, "", "fetch_arrow_table()")

    def fetch_record_batches(self, rows_per_batch: int = 1_000_000) -> Any:
        """The rows as a ``pyarrow.RecordBatchReader``."""
        from exdb.arrow import reader_of

        return reader_of(self.fetch_arrow_table(), rows_per_batch)

    def fetch_df(self) -> Any:
        """The rows as a pandas DataFrame."""
        from exdb.arrow import require, to_pandas

        require("pandas", "fetch_df()")
        return to_pandas(self.fetch_arrow_table())

    def fetch_pl(self) -> Any:
        """The rows as a polars DataFrame."""
        from exdb.arrow import require, to_polars

        require("polars", "fetch_pl()")
        return to_polars(self.fetch_arrow_table())


def _outcome(raw: Any) -> Any:
    """A statement's outcome for the user: a ResultSet, a rowcount or the exception."""
    if isinstance(raw, BaseException):
        return raw
    if raw[0] == "rows":
        return ResultSet(raw[1], raw[2], raw[3])
    return raw[1]


class AsyncDistributedConnection(ErrorClasses):
    """Statements run concurrently on ``nWorkers`` worker processes, each with its own
    connections to every node; every statement autocommits. Results come back in statement
    order."""

    __module__ = "exdb"

    def __init__(
        self, nodes: Sequence[Any], options: dict[str, Any], n_workers: int, replicas: int = 1
    ) -> None:
        if not nodes:
            raise ProgrammingError("nodes= needs at least one node")
        if not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 1:
            raise ProgrammingError(f"nWorkers must be a positive integer, not {n_workers!r}")
        if options.get("ssl_context") is not None:
            raise ProgrammingError(
                "worker processes cannot share an ssl.SSLContext: pass ssl_params as a mapping"
            )
        ConnectOptions.from_kwargs(dict(options))  # refuse bad options here, not in each worker
        self.nodes = tuple(format_node(*parse_node(n)) for n in nodes)
        self.replicas = Layout(self.nodes, replicas).replicas  # refuses a bad layout here
        worker_options = {**options, "autocommit": True}
        self.closed = False
        # Lists of point SELECTs run from this process: see _point_selects.
        self._options = ConnectOptions.from_kwargs(dict(worker_options))
        self._direct: DistributedConnection | None = None
        self._direct_epoch = 0  # the pool's catalog epoch when _direct last read the catalog
        self._direct_lost = False  # _direct lost a node: reconnect before the next list
        self._pool = WorkerPool(self.nodes, worker_options, n_workers, replicas)
        self._pool.start()

    @property
    def n_workers(self) -> int:
        """How many worker processes run statements."""
        return self._pool.n

    def worker_pids(self) -> list[int]:
        """The process ids of the live workers."""
        return self._pool.pids()

    def execute(
        self,
        queries: str | Sequence[str],
        args: Any = None,
        *,
        return_exceptions: bool = False,
        on_result: Callable[[int, Any], None] | None = None,
    ) -> Any:
        """Run one statement (-> its result set, or its rowcount) or a list of statements
        (-> a list of results in the same order), concurrently on the workers.

        ``args`` is the parameter tuple of one statement, or for a list None or a list of the
        same length whose items are tuples or None. When statements fail, every statement is
        first run to its end; then the first failure is raised with ``.results`` holding every
        outcome (or, with ``return_exceptions=True``, the exceptions stand in the list).
        """
        if self.closed:
            raise InterfaceError("the connection is closed", node=",".join(self.nodes))
        if isinstance(queries, str):
            single, tasks = True, [(queries, _params(args, 0))]
        else:
            single, tasks = False, _tasks(queries, args)
        try:
            outcomes = None if single else self._point_selects(tasks, on_result)
            if outcomes is None:
                outcomes = [_outcome(r) for r in self._pool.run(tasks, on_result)]
                if any(_CATALOG_CHANGE.search(sql) for sql, _ in tasks):
                    self._pool.epoch += 1  # every worker and _direct reload it before use
        except BaseException:
            self._pool.close(force=True)  # Ctrl-C or worse: stop the workers now
            self._close_direct()
            self.closed = True
            raise
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures and not return_exceptions:
            first = failures[0]
            if isinstance(first, Error):
                first.results = outcomes
            raise first
        return outcomes[0] if single else outcomes

    def explain(self, sql: str, analyze: bool = False, params: Sequence[Any] | None = None) -> str:
        """How the statement would run, as a worker plans it. ``analyze=True`` runs it on a
        worker (with ``params``) and adds what each stage moved and its time."""
        if analyze:
            return self.analyze(sql, params).text()
        return cast(str, self._on_worker("explain", sql, None))

    def analyze(self, sql: str, params: Sequence[Any] | None = None) -> Analysis:
        """Run the statement on a worker (for real: an INSERT inserts), its result read to the
        end there; the rows and bytes each stage moved, and the time (exdb.distributed.analyze)."""
        return Analysis.from_dict(self._on_worker("analyze", sql, params))

    def _on_worker(self, mode: str, sql: str, params: Any) -> Any:
        """One statement explained or analyzed by a worker: what the worker answered."""
        if self.closed:
            raise InterfaceError("the connection is closed", node=",".join(self.nodes))
        if not isinstance(sql, str):
            raise ProgrammingError(f"the statement must be a str, not {type(sql).__name__}")
        try:
            (outcome,) = self._pool.run([(sql, _params(params, 0))], mode=mode)
        except BaseException:
            self._pool.close(force=True)  # as execute(): Ctrl-C or worse stops the workers
            self._close_direct()
            self.closed = True
            raise
        if mode == "analyze" and _CATALOG_CHANGE.search(sql):
            self._pool.epoch += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome[1]

    def _point_selects(
        self, tasks: list[tuple[str, Any]], on_result: Callable[[int, Any], None] | None
    ) -> list[Any] | None:
        """A list of point SELECTs (each pinned to one shard by its distribution key), run
        from this process: each run of one statement as one BATCH per shard, the shards in
        parallel. Their work is the shards'; a trip through the workers would only add two
        process hops per statement (measured: ~1.5x the throughput of the workers on 2 cores).
        None when a statement is not one, or when the nodes cannot be reached from here: the
        workers run the list (SELECTs only read, so running them again there is harmless)."""
        if len(tasks) < 2:
            return None
        try:
            outcomes = self._run_point_selects(tasks)
        except Error:
            self._close_direct()
            return None
        if any(isinstance(o, (OperationalError, InterfaceError)) for o in outcomes or ()):
            self._direct_lost = True  # a node was lost: the next list tries to reconnect
        if outcomes is not None and on_result is not None:
            for index, outcome in enumerate(outcomes):
                on_result(index, outcome)
        return outcomes

    def _run_point_selects(self, tasks: list[tuple[str, Any]]) -> list[Any] | None:
        if self._direct is None or self._direct_lost:
            try:
                fresh: DistributedConnection | None = DistributedConnection(
                    self.nodes, self._options, self.replicas
                )
            except Error:
                if self._direct is None:
                    raise
                fresh = None  # still down: the old connection serves the nodes it reaches
            if fresh is not None:
                self._close_direct()
                self._direct, self._direct_lost = fresh, False
                self._direct_epoch = self._pool.epoch
        assert self._direct is not None
        conn, engine = self._direct, self._direct.engine
        if self._direct_epoch != self._pool.epoch:  # tables the workers changed since
            conn._drive(engine.load_catalog())
            self._direct_epoch = self._pool.epoch
        if not all(engine.point_select(sql) is not None for sql in {sql for sql, _ in tasks}):
            return None
        outcomes: list[Any] = []
        for sql, run in itertools.groupby(tasks, key=lambda task: task[0]):
            execution = engine.select_each(sql, [params for _, params in run])
            assert execution is not None
            results = cast(list[Any], conn._drive(execution))  # select_each: one per set
            outcomes += [_outcome(result_fields(r)) for r in results]
        return outcomes

    def _close_direct(self) -> None:
        if self._direct is not None:
            self._direct._close()
            self._direct = None

    def close(self) -> None:
        """Stop the worker processes. Closing a closed connection raises InterfaceError."""
        if self.closed:
            raise InterfaceError("the connection is closed already", node=",".join(self.nodes))
        self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self._close_direct()
            self._pool.close()

    def __enter__(self) -> AsyncDistributedConnection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            warnings.warn(
                "exdb AsyncDistributedConnection was never closed", ResourceWarning, stacklevel=2
            )
            self._close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.n_workers} workers"
        return f"<exdb.AsyncDistributedConnection to {', '.join(self.nodes)} ({state})>"


#: Statements that may change the catalog (conservative: a false match costs one reload).
_CATALOG_CHANGE = re.compile(
    r"\b(?:create|drop|alter)\b|create_(?:distributed|reference)_table", re.IGNORECASE
)


def _params(params: Any, index: int) -> list[Any] | None:
    if params is None:
        return None
    if isinstance(params, (str, bytes)) or not isinstance(params, (tuple, list)):
        raise ProgrammingError(
            f"the arguments of statement {index + 1} must be a tuple or None,"
            f" not {type(params).__name__}"
        )
    return list(plain_params(params))


def _tasks(queries: Any, args: Any) -> list[tuple[str, Any]]:
    if not isinstance(queries, (list, tuple)):
        raise ProgrammingError(
            f"execute() takes a statement or a list of statements, not {type(queries).__name__}"
        )
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise ProgrammingError(f"statement {i + 1} must be a str, not {type(q).__name__}")
    if args is None:
        return [(q, None) for q in queries]
    if not isinstance(args, (list, tuple)) or len(args) != len(queries):
        got = len(args) if isinstance(args, (list, tuple)) else type(args).__name__
        raise ProgrammingError(
            f"args must be None or a list as long as the statements ({len(queries)}), got {got}"
        )
    return [(q, _params(a, i)) for i, (q, a) in enumerate(zip(queries, args, strict=True))]
