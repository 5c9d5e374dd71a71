"""Stage 2, plan: what a statement does across the shards. One module per plan kind, and
``choose.plan_statement``, the short function that picks one.

Plan kinds, from cheapest to most general:

- ``single`` (single.py): one node answers;
- ``broadcast`` (broadcast.py): every node runs it;
- ``insert`` (insert.py): each row goes to the shard of its distribution value;
- ``scatter`` (scatter.py): each shard runs the query, ORDER BY and LIMIT pushed down; a merge;
- ``aggregate`` (aggregate.py): partial aggregates on the shards, finished in a final stage;
- ``gather`` (gather.py): the rows come to the client and an in-process engine runs the query.

A plan's ``execute`` is a generator: it yields batches of shard calls for a door to run
concurrently and receives their outcomes (see exdb.distributed.execute).
"""

from exdb.distributed.plan.base import (
    Context,
    Execution,
    Outcomes,
    Plan,
    Result,
    ShardCall,
    ShardResult,
)
from exdb.distributed.plan.broadcast import BroadcastPlan
from exdb.distributed.plan.choose import plan_statement
from exdb.distributed.plan.insert import InsertPlan
from exdb.distributed.plan.single import SinglePlan

__all__ = [
    "BroadcastPlan",
    "Context",
    "Execution",
    "InsertPlan",
    "Outcomes",
    "Plan",
    "Result",
    "ShardCall",
    "ShardResult",
    "SinglePlan",
    "plan_statement",
]
