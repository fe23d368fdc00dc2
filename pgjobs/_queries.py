"""Every SQL statement pgjobs sends, by name (entity first: job_, batch_, worker_, ...).

Statements are written with a ``{schema}`` placeholder and composed once per schema with
``psycopg.sql.Identifier`` (see ``Queries``); nothing else is ever spliced into SQL text.
Literal braces are doubled (``'{{}}'``) because of that composition.
"""

from __future__ import annotations

from functools import cache

from psycopg import sql

# -- enqueue --------------------------------------------------------------------------

# One job, one round trip: the insert and its wake-up share a statement. run_in is added
# to the *database* clock (promise: database clock only). pg_notify is transactional: a
# rolled-back enqueue notifies nobody, and a worker woken at commit finds the row visible.
job_insert = """
WITH job AS (
    INSERT INTO {schema}.jobs (queue, task, args, priority, max_attempts, run_at, expires_at)
    SELECT %(queue)s, %(task)s, %(args)s::jsonb, %(priority)s, %(max_attempts)s, t.run_at,
           -- expires_in counts from the job's run_at, as in Sidekiq
           coalesce(%(expires_at)s::timestamptz, t.run_at + %(expires_in)s::interval)
    FROM (SELECT coalesce(%(run_at)s::timestamptz, now() + %(run_in)s::interval) AS run_at) t
    RETURNING id
)
SELECT job.id, pg_notify(%(channel)s, %(queue)s) FROM job
"""

# Many jobs in one statement. Arrays travel as parameters (no per-row SQL), identities are
# drawn in ordinality order, and one notification goes out per distinct queue.
job_insert_many = """
WITH rows AS (
    SELECT * FROM unnest(
        %(queue)s::text[], %(task)s::text[], %(args)s::jsonb[], %(priority)s::smallint[],
        %(max_attempts)s::integer[], %(run_at)s::timestamptz[], %(run_in)s::interval[],
        %(expires_at)s::timestamptz[], %(expires_in)s::interval[]
    ) WITH ORDINALITY AS r(queue, task, args, priority, max_attempts, run_at, run_in,
                           expires_at, expires_in, ord)
),
timed AS (
    SELECT rows.*, coalesce(rows.run_at, now() + rows.run_in) AS due FROM rows
),
jobs AS (
    INSERT INTO {schema}.jobs (queue, task, args, priority, max_attempts, run_at, expires_at)
    SELECT queue, task, args, priority, max_attempts, due,
           coalesce(expires_at, due + expires_in)
    FROM timed ORDER BY ord
    RETURNING id, queue
),
notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM jobs) q
)
SELECT id FROM jobs, (SELECT count(*) FROM notified) n ORDER BY id
"""

# -- inspection -------------------------------------------------------------------------

job_get = """
SELECT id, queue, task, args, priority, state, attempt, max_attempts, run_at, expires_at,
       lease_expires_at, worker_id, unique_key, batch_id, created_at, started_at,
       finished_at, errors, result, recoveries
FROM {schema}.jobs WHERE id = %(id)s
"""

NAMES = ("job_insert", "job_insert_many", "job_get")


@cache
def compose(text: str, schema: str) -> sql.Composed:
    """``text`` with its ``{schema}`` placeholder bound to the quoted schema name."""
    return sql.SQL(text).format(schema=sql.Identifier(schema))


class Queries:
    """The named statements of one schema, composed once."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        for name in NAMES:
            setattr(self, name, compose(globals()[name], schema))

    job_insert: sql.Composed
    job_insert_many: sql.Composed
    job_get: sql.Composed
