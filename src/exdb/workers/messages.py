"""What the parent and its worker processes say to each other, over the workers' stdin and
stdout, as frames of the wire codec (msgpack, no pickle: result rows cross as msgpack).

- parent -> worker, first: ``{"nodes": [...], "options": {...}}``
- parent -> worker: ``[0, "batch", [[task_id, sql, params | None], ...]]``
- parent -> worker: a task ``[task_id, sql, params, mode]`` with mode "explain" or "analyze"
  explains the statement, or runs it analyzed; the answer is ``[task_id, "explain", text]`` or
  ``[task_id, "analysis", Analysis.to_dict()]``
- parent -> worker: ``[0, "catalog"]``: reload the catalog before the next statements (another
  worker ran DDL or a placement call)
- worker -> parent: ``[0, "ready"]`` once connected, or ``[0, "error", class, message]``
- worker -> parent: ``[task_id, "rows", columns, types, rows]``, ``[task_id, "count", n]`` or
  ``[task_id, "error", class, message, node, statement]``
"""

from __future__ import annotations

from typing import Any

from exdb.distributed.plan import Result
from exdb.errors import Error, make_error

__all__ = ["error_from", "error_message", "result_fields"]


def error_message(task_id: int, exc: BaseException) -> list[Any]:
    """The message that carries a statement's exception to the parent."""
    if isinstance(exc, Error):
        return [task_id, "error", type(exc).__name__, exc.message, exc.node, exc.statement]
    return [task_id, "error", "InternalError", f"{type(exc).__name__}: {exc}", None, None]


def error_from(msg: Any) -> Error:
    """Rebuild the exception a worker reported."""
    _, _, kind, message, node, statement = msg
    return make_error(kind, message, node=node, statement=statement)


def result_fields(outcome: Result | BaseException) -> Any:
    """A statement's outcome as a message's fields: ``("rows", columns, types, rows)``,
    ``("count", n)``, or the exception as it is."""
    if isinstance(outcome, BaseException):
        return outcome
    if outcome.columns is None:
        return ("count", outcome.rowcount)
    columns = list(outcome.columns)
    types = outcome.types if len(outcome.types) == len(columns) else [None] * len(columns)
    return ("rows", columns, list(types), [tuple(r) for r in outcome.rows])
