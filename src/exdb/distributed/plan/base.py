"""The plan interface: shard calls, results, the context a plan runs in, and helpers every
plan kind shares."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any, Protocol

from sqlglot import exp

from exdb.distributed.catalog import (
    Catalog,
)
from exdb.distributed.merge import (
    LocalEngine,
)
from exdb.distributed.parse import placeholder_names


@dataclasses.dataclass
class ShardCall:
    """One statement for one node (0-based). ``many``: params is a list of parameter sets.
    ``stream``: the rows may come back as a lazy iterator (a door that can, streams them).
    ``each``: params is a list of parameter sets, each run on its own (one BATCH request); the
    outcome is then a list with each set's result (``columns``, ``types``, ``rows``,
    ``rowcount``, as a ShardResult has) or exception, in order. ``alone``: it never opens a
    transaction (it commits on its own outside one), as a catalog read after a rollback must
    not leave one open on every node. ``label``: what the stage is, for EXPLAIN ANALYZE (empty:
    the statement's first words)."""

    node: int
    sql: str
    params: Any = None
    many: bool = False
    stream: bool = False
    each: bool = False
    alone: bool = False
    label: str = ""


@dataclasses.dataclass
class ShardResult:
    """What one node returned (rows: a list, or a lazy iterator for a streamed call)."""

    columns: list[str] | None
    types: list[Any]
    rows: Iterable[tuple[Any, ...]]
    rowcount: int
    lastrowid: int | None = None  # the engine's, for a statement without a result set


@dataclasses.dataclass
class Result:
    """What the statement returns to the user, as one database would. ``rows`` is a list, or
    a lazy iterator when shard results stream; ``close`` then gives up what is left unread."""

    columns: list[str] | None
    types: list[Any]
    rows: Iterable[tuple[Any, ...]]
    rowcount: int = -1
    close: Callable[[], None] | None = None
    #: The unread result as a pyarrow Table, read from the shards as Arrow (a plain
    #: concatenation on a door that can); None: build it from ``rows``.
    arrow: Callable[[], Any] | None = None
    lastrowid: int | None = None  # see InsertPlan: only where it names the row exactly


Outcomes = list[ShardResult | BaseException]
Execution = Generator[list[ShardCall], Outcomes, Result]


class Context(Protocol):
    """What a plan needs from the connection that runs it."""

    shards: int
    engine: str
    catalog: Catalog
    local: LocalEngine

    def next_round_robin(self, table: str) -> int:
        """The next shard for a keyless table's row."""

    def run_nested(self, sql: str, params: dict[str, Any] | None) -> Execution:
        """Run another statement, with named parameters, through the pipeline."""


def raise_first(outcomes: Outcomes) -> list[ShardResult]:
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes  # type: ignore[return-value]


def only_named(params: dict[str, Any], tree: exp.Expr) -> dict[str, Any] | None:
    names = placeholder_names(tree)
    return {n: params[n] for n in names} if names else None


class Plan:
    """Base of the plans; subclasses set ``kind`` and implement ``execute``."""

    kind = "plan"

    def __init__(self, statement: str) -> None:
        self.statement = statement

    def execute(self, ctx: Context, params: dict[str, Any]) -> Execution:
        """Run the plan; yields shard call batches, returns the Result."""
        raise NotImplementedError

    def describe(self, ctx: Context) -> list[str]:
        """Lines for explain: nodes, shard SQL, merge."""
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind}: {self.statement!r}>"


def render(tree: exp.Expr, engine: str) -> str:
    return tree.sql(dialect=engine)


def node_list(indexes: Sequence[int]) -> str:
    return ", ".join(str(i + 1) for i in indexes)


def one_result(outcome: Any) -> Any:
    """A single node's answer as the statement's Result (an exception stays one)."""
    if isinstance(outcome, BaseException):
        return outcome
    return Result(outcome.columns, outcome.types, outcome.rows, outcome.rowcount)


def bind_params(params: dict[str, Any], names: list[str] | None) -> Any:
    """Parameters for a shard: the named ones it uses, or all of them in order (verbatim SQL)."""
    if names is None:
        return list(params.values()) or None
    return {n: params[n] for n in names} or None


def verbatim_names(tree: exp.Expr, n_params: int) -> list[str] | None:
    """How to bind a statement sent as the user wrote it: positionally (None) when it has ``?``
    marks, or by the names it carries (a nested, rewritten statement)."""
    return None if n_params else placeholder_names(tree)
