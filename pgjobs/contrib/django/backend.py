"""``PgJobsBackend``: Django's Tasks framework (``django.tasks``) on pgjobs.

    TASKS = {"default": {
        "BACKEND": "pgjobs.contrib.django.PgJobsBackend",
        "QUEUES": ["default", "mail"],        # as in Django: the queues tasks may use
        "ENQUEUE_ON_COMMIT": True,            # the default (see below)
        "OPTIONS": {"MAX_ATTEMPTS": 1},       # the default: Django's tasks do not retry
    }}

A task is a pgjobs job named after its function's module path, its arguments stored as
``{"args": [...], "kwargs": {...}}``. Django's priority (-100..100, higher first) becomes
pgjobs' (lower first) with its sign turned; ``run_after`` becomes ``run_at``. A result's
id is the job's id; ``get_result`` reads the ``jobs`` row: available is READY, running is
RUNNING, succeeded is SUCCESSFUL, and dead, cancelled or expired are FAILED, with one
``TaskError`` per failed attempt (``worker_ids`` has one entry per attempt, the last
worker's id where the row records it).

``ENQUEUE_ON_COMMIT`` (per task too, ``@task(enqueue_on_commit=False)`` where the
decorator passes it on): when true, the job is written on Django's own connection, in
the current transaction, so workers see it when that transaction commits and never if
it rolls back (outside ``atomic()`` that is at once): what ``transaction.on_commit``
would give, without the window where the commit happened and the enqueue did not. When
false, it is committed at once on pgjobs' own pool, whatever the caller's transaction
does.

Tasks are registered with the project's :data:`pgjobs.contrib.django.app` when they are
defined, so ``manage.py pgjobs worker`` runs every task of each installed app's
``tasks.py`` (imported at start-up) without change.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import traceback
from collections.abc import Callable, Mapping
from inspect import iscoroutinefunction
from typing import Any

import psycopg
from django.db import close_old_connections, connections
from django.utils import timezone
from psycopg.types.json import JsonbLoader

from ...client.task import Task as JobTask
from ...core.errors import ConfigurationError, InvalidOption, PgJobsError
from ...core.names import check_queue
from ...db import jobs as db_jobs
from ...db.sessions import sync_connection
from ...worker.context import current_job
from . import tasks_api as api
from .conf import database_alias, get_app

OPTIONS = frozenset({"MAX_ATTEMPTS"})

JSONB = frozenset({"args", "errors", "result", "meta"})
"""The jsonb columns of a job (Django's connection may hand them over as text)."""

STATUS = {"available": "READY", "running": "RUNNING", "succeeded": "SUCCESSFUL",
          "dead": "FAILED", "cancelled": "FAILED", "expired": "FAILED"}

_registered: dict[str, Any] = {}
"""Module path -> the Django task first defined under it (backends are per thread, the
registry is per process)."""
_lock = threading.Lock()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PgJobsTask(api.Task):  # type: ignore[misc]
    """Django's ``Task`` with Django's ``enqueue_on_commit`` setting per task."""

    enqueue_on_commit: bool | None = None
    """None: the backend's ``ENQUEUE_ON_COMMIT``."""


class PgJobsBackend(api.BaseTaskBackend):  # type: ignore[misc]
    """A ``django.tasks`` backend that runs tasks as pgjobs jobs (module docstring)."""

    task_class = PgJobsTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: Mapping[str, Any]) -> None:
        super().__init__(alias, params)
        self.enqueue_on_commit = bool(params.get("ENQUEUE_ON_COMMIT", True))
        options = dict(params.get("OPTIONS") or {})
        if set(options) - OPTIONS:
            raise ConfigurationError(
                f"TASKS[{alias!r}]['OPTIONS'] has unknown key(s) "
                f"{', '.join(sorted(set(options) - OPTIONS))}; known: {', '.join(OPTIONS)}")
        self.max_attempts = options.get("MAX_ATTEMPTS", 1)
        if type(self.max_attempts) is not int or self.max_attempts < 1:
            raise InvalidOption(f"TASKS[{alias!r}]['OPTIONS']['MAX_ATTEMPTS'] must be an int "
                                f">= 1, not {self.max_attempts!r}")
        for queue in self.queues:
            check_queue(queue)

    def validate_task(self, task: Any) -> None:
        """Django's checks, pgjobs' queue name rule, then register the task to run."""
        super().validate_task(task)
        try:
            check_queue(task.queue_name)
        except PgJobsError as exc:
            raise api.InvalidTask(str(exc)) from exc
        register(task)

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        self.validate_task(task)
        on_commit = getattr(task, "enqueue_on_commit", None)
        if on_commit is None:
            on_commit = self.enqueue_on_commit
        # On commit: in the caller's transaction on Django's connection. Otherwise: now,
        # in a transaction of pgjobs' own pool.
        conn = connections[database_alias()] if on_commit else None
        enqueued = self._job(task).enqueue(conn, args=list(args), kwargs=dict(kwargs))
        result = api.TaskResult(
            task=task, id=str(enqueued.id), status=api.TaskResultStatus.READY,
            enqueued_at=None, started_at=None, finished_at=None, last_attempted_at=None,
            args=list(args), kwargs=dict(kwargs), backend=self.alias, errors=[],
            worker_ids=[],
        )
        api.task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> Any:
        """The task's result as its job's row says now (on Django's connection, so an
        uncommitted enqueue of this transaction is seen too)."""
        try:
            job_id = int(result_id)
        except (TypeError, ValueError):
            raise api.TaskResultDoesNotExist(result_id) from None
        conn = sync_connection(connections[database_alias()])
        assert conn is not None
        row = db_jobs.get(get_app().queries, job_id).run(conn)
        task = None if row is None else _registered.get(row["task"])
        if row is None or task is None:
            raise api.TaskResultDoesNotExist(
                f"{result_id}: no job, or one that no django.tasks task registered here ran")
        if _jsonb_as_text(conn):
            row = {k: json.loads(v) if k in JSONB and isinstance(v, str) else v
                   for k, v in row.items()}
        return self._result(task, row)

    def _job(self, task: Any) -> JobTask[..., Any]:
        run_at = task.run_after
        if run_at is not None and timezone.is_naive(run_at):
            run_at = timezone.make_aware(run_at)  # USE_TZ = False: the current zone
        return get_app().task(task.module_path).options(
            queue=task.queue_name, priority=-task.priority, max_attempts=self.max_attempts,
            run_at=run_at)

    def _result(self, task: Any, row: dict[str, Any]) -> Any:
        status = api.TaskResultStatus[STATUS[row["state"]]]
        payload = row["args"]
        errors = [api.TaskError(exception_class_path=_class_path(entry.get("type")),
                                traceback=entry.get("traceback") or "")
                  for entry in row["errors"] or []]
        attempts = int(row["attempt"])
        last = "" if row["worker_id"] is None else str(row["worker_id"])
        result = api.TaskResult(
            task=_as_run(task, row), id=str(row["id"]), status=status,
            enqueued_at=row["created_at"], started_at=row["started_at"],
            finished_at=row["finished_at"], last_attempted_at=row["started_at"],
            args=payload.get("args", []), kwargs=payload.get("kwargs", {}),
            backend=self.alias, errors=errors,
            worker_ids=[""] * max(attempts - 1, 0) + [last] * min(attempts, 1),
        )
        if status == api.TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", row["result"])
        return result


def register(task: Any) -> None:
    """Register a Django task with the project's App under its module path (once)."""
    name = task.module_path
    if name in _registered:
        return
    with _lock:
        if name not in _registered:
            get_app().job(name=name, queue=task.queue_name)(_handler(task))
            _registered[name] = task


def _handler(task: Any) -> Callable[..., Any]:
    """The pgjobs handler of a Django task: its arguments, its context, Django's
    connection hygiene (as around a request) and the task_started/finished signals."""
    if iscoroutinefunction(task.func):
        async def run_async(args: list[Any], kwargs: dict[str, Any]) -> Any:
            result, context = _started(task, args, kwargs)
            try:
                value = await task.acall(*context, *args, **kwargs)
            except BaseException as exc:
                _finished(result, exc)
                raise
            _finished(result, None)
            return value

        return run_async

    def run(args: list[Any], kwargs: dict[str, Any]) -> Any:
        close_old_connections()
        try:
            result, context = _started(task, args, kwargs)
            try:
                value = task.call(*context, *args, **kwargs)
            except BaseException as exc:
                _finished(result, exc)
                raise
            _finished(result, None)
            return value
        finally:
            close_old_connections()

    return run


def _started(task: Any, args: list[Any], kwargs: dict[str, Any]) -> tuple[Any, tuple[Any, ...]]:
    job = current_job()
    now = timezone.now()
    result = api.TaskResult(
        task=task, id=str(job.id), status=api.TaskResultStatus.RUNNING, enqueued_at=None,
        started_at=now, finished_at=None, last_attempted_at=now, args=args, kwargs=kwargs,
        backend=task.backend, errors=[], worker_ids=[""] * job.attempt,
    )
    api.task_started.send(sender=PgJobsBackend, task_result=result)
    return result, (api.TaskContext(task_result=result),) if task.takes_context else ()


def _finished(result: Any, exc: BaseException | None) -> None:
    object.__setattr__(result, "finished_at", timezone.now())
    if exc is None:
        object.__setattr__(result, "status", api.TaskResultStatus.SUCCESSFUL)
    else:
        object.__setattr__(result, "status", api.TaskResultStatus.FAILED)
        result.errors.append(api.TaskError(
            exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}",
            traceback="".join(traceback.format_exception(exc))))
    api.task_finished.send(sender=PgJobsBackend, task_result=result)


def _as_run(task: Any, row: Mapping[str, Any]) -> Any:
    """The task as its job was enqueued (queue, priority), if the backend still allows."""
    try:
        return task.using(queue_name=row["queue"], priority=-int(row["priority"]))
    except api.InvalidTask:
        return task


def _class_path(kind: str | None) -> str:
    """``ValueError`` -> ``builtins.ValueError``: Django imports the path."""
    if not kind:
        return "builtins.Exception"
    return kind if "." in kind else f"builtins.{kind}"


def _jsonb_as_text(conn: psycopg.Connection[Any]) -> bool:
    """Django registers a text loader for jsonb on its connections (its JSONField decodes
    the text itself); asked rather than assumed, so a string value is never decoded twice."""
    oid = conn.adapters.types["jsonb"].oid
    loader = conn.adapters.get_loader(oid, psycopg.pq.Format.TEXT)
    return loader is not None and not issubclass(loader, JsonbLoader)

