"""The ``workers`` table: a worker registers, changes state; the supervisor watches."""

from __future__ import annotations

from collections.abc import Sequence

from .queries import Queries
from .statement import Query, rowcount, scalar


def register(q: Queries, host: str, pid: int, queues: Sequence[str], concurrency: int,
             version: str, lease: float, tasks: Sequence[str] = (), isolates: bool = False
             ) -> Query[int]:
    """A new ``workers`` row, with the names of the tasks it can run; its id. ``isolates``:
    it runs suspects in processes of their own, so the claim gives it any number of them
    (``db.sql.claim``)."""
    params = {"host": host, "pid": pid, "queues": list(queues), "concurrency": concurrency,
              "version": version, "lease": lease, "tasks": sorted(tasks), "isolates": isolates}
    return Query(q.worker_register, params, scalar, schema=q.schema)


def set_state(q: Queries, worker_id: int | None, state: str) -> Query[int]:
    return Query(q.worker_set_state, {"state": state, "id": worker_id}, rowcount,
                 schema=q.schema)


def last_id(q: Queries) -> Query[int]:
    """The highest worker id so far (0: none)."""
    return Query(q.worker_last_id, None, scalar, schema=q.schema)


def registered(q: Queries, host: str, pid: int, after: int) -> Query[int | None]:
    """The id of the running worker ``pid`` on ``host`` registered after id ``after``."""
    return Query(q.worker_registered, {"host": host, "pid": pid, "after": after}, scalar,
                 schema=q.schema)
