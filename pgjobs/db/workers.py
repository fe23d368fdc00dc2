"""The ``workers`` table: a worker registers, changes state; the supervisor watches."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from ..core.limits import KeyLimit
from ..core.options import JobOptions
from .queries import Queries
from .statement import Query, first, records, rowcount, scalar


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


class TaskDefinition(Protocol):
    """What the registry stores of a task (a worker's registered handler)."""

    @property
    def name(self) -> str: ...

    @property
    def opts(self) -> JobOptions: ...

    @property
    def limit(self) -> KeyLimit | None: ...


REGISTRY_COLUMNS = ("name", "queue", "priority", "max_attempts", "run_at", "run_in",
                    "expires_at", "expires_in", "unique_for", "unique_key", "unique_until",
                    "on_duplicate", "concurrency_key", "key_parts", "concurrency_limit",
                    "rate_limit", "rate_period")


def register_tasks(q: Queries, tasks: Iterable[TaskDefinition]) -> Query[int]:
    """Upsert ``tasks`` into the registry (``tasks``), each seen now; the rows written."""
    params: dict[str, list[Any]] = {name: [] for name in REGISTRY_COLUMNS}
    for task in sorted(tasks, key=lambda t: t.name):
        opts, limit = task.opts, task.limit
        parts = None if limit is None else limit.sql_parts()
        row = {
            "name": task.name, "queue": opts.queue, "priority": opts.priority,
            "max_attempts": opts.max_attempts, "run_at": opts.run_at, "run_in": opts.run_in,
            "expires_at": opts.expires_at, "expires_in": opts.expires_in,
            "unique_for": opts.unique_for, "unique_key": opts.unique_key,
            "unique_until": opts.unique_until, "on_duplicate": opts.on_duplicate,
            # a callable key is stored as NULL: only Python can compute it
            "concurrency_key": limit.key if limit is not None and isinstance(limit.key, str)
            else None,
            "key_parts": None if parts is None else json.dumps(parts),
            "concurrency_limit": None if limit is None else limit.concurrency_limit,
            "rate_limit": None if limit is None else limit.rate_limit,
            "rate_period": None if limit is None else limit.rate_period,
        }
        for name in REGISTRY_COLUMNS:
            params[name].append(row[name])
    return Query(q.task_register, params, rowcount, schema=q.schema)


def definition(q: Queries, name: str) -> Query[dict[str, Any] | None]:
    """Task ``name``'s row in the registry, by column (None: no worker registered it)."""
    return Query(q.task_definition, {"name": name}, first, records, schema=q.schema)
