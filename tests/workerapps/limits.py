"""Tasks for the limit tests: each records when its handler ran (``spans``), so the tests
can compute from the database how many ran at once."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import psycopg

import pgjobs

app = pgjobs.App(schema=os.environ.get("PGJOBS_SCHEMA", "pgjobs"))

HARNESS = """
CREATE TABLE IF NOT EXISTS public.spans (
    job_id bigint NOT NULL, scope text NOT NULL, pid int NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(), finished_at timestamptz
);
"""


def span(scope: str, seconds: float) -> None:
    """Record the handler's run in ``spans``: its start before the work, its end after."""
    job = pgjobs.current_job()
    with psycopg.connect(app.dsn, autocommit=True) as c:
        c.execute("INSERT INTO public.spans (job_id, scope, pid) VALUES (%s, %s, %s)",
                  (job.id, scope, os.getpid()))
        time.sleep(seconds)
        c.execute("UPDATE public.spans SET finished_at = clock_timestamp() WHERE job_id = %s",
                  (job.id,))


@app.job(name="held", queue="limited")
def held(seconds: float) -> None:
    span("queue:limited", seconds)


@app.job(name="per_customer", concurrency_key="customer:{customer_id}", concurrency_limit=2)
def per_customer(customer_id: int, seconds: float) -> None:
    span(f"customer:{customer_id}", seconds)


@app.job(name="rated", queue="rated")
def rated() -> None:
    span("queue:rated", 0.0)


@app.job(name="key_rated", concurrency_key=lambda account: f"api:{account}",
         rate_limit=3, rate_period=timedelta(seconds=1))
def key_rated(account: str) -> None:
    span(f"api:{account}", 0.0)


@app.job(name="sentinel", queue="other")
def sentinel() -> None:
    pass
