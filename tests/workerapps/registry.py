"""Two releases of one app, for the task registry tests (tests/test_sql_enqueue.py and
tests/test_mixed_deploys.py): ``app`` is the new release, ``old`` the one before it, which
lacks ``registry.ship`` and ``registry.new_task``. Handlers log each run to
``public.registry_runs`` (with the worker's pid) on an autocommit connection.
"""

from __future__ import annotations

import os

import psycopg

import pgjobs

SCHEMA = os.environ.get("PGJOBS_SCHEMA", "pgjobs")
app = pgjobs.App(schema=SCHEMA)
old = pgjobs.App(schema=SCHEMA)

HARNESS = """
CREATE TABLE IF NOT EXISTS public.registry_runs (
    job_id bigint NOT NULL, task text NOT NULL, attempt int NOT NULL, args jsonb NOT NULL,
    pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""


def _log(**args: object) -> None:
    job = pgjobs.current_job()
    with psycopg.connect(app.dsn, autocommit=True) as c:
        c.execute("INSERT INTO public.registry_runs (job_id, task, attempt, args, pid) "
                  "VALUES (%s, %s, %s, %s, %s)",
                  (job.id, job.task, job.attempt, psycopg.types.json.Jsonb(args), os.getpid()))


def old_task() -> None:
    """In both releases."""
    _log()


def new_task(n: int) -> int:
    """Only in the new release."""
    _log(n=n)
    return n


def ship(order_id: int, customer_id: int) -> None:
    """Enqueued by a trigger on public.orders, with pgjobs.enqueue() in SQL."""
    _log(order_id=order_id, customer_id=customer_id)


app.job(name="registry.old_task")(old_task)
app.job(name="registry.new_task")(new_task)
app.job(name="registry.ship", queue="shipping", priority=-5, max_attempts=3,
        concurrency_key="customer:{customer_id}", concurrency_limit=2)(ship)
old.job(name="registry.old_task")(old_task)
