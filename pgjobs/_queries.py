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

# -- worker: claim, heartbeat, outcomes --------------------------------------------------

# Claims up to %(limit)s due jobs of the worker's queues in one statement.
# - Per queue, a LATERAL subquery walks jobs_claim_idx in claim order and stops after
#   %(limit)s rows, so the cost does not grow with the backlog; the outer ORDER BY merges
#   the queues. (A plain `queue = ANY(...) ORDER BY ...` would sort every available row.)
# - SKIP LOCKED: concurrent claimers take different rows instead of queueing on locks.
# - clock_timestamp(), not now(): the lease is measured from when the row is taken.
# - attempt + 1 here, so a crash after this commit still counts as a started attempt; a
#   reclaim refunds it (recoveries are counted apart).
# - A job recovered after a lost worker (recoveries > 0) is a suspect: it may be what
#   killed that worker. A worker runs at most one suspect at a time (one per claim, none
#   while it runs one: the uncorrelated NOT EXISTS is evaluated once, on
#   jobs_running_idx). Jobs reclaimed together sit side by side in claim order, so
#   without this a poison job would be claimed again with the same innocent jobs, crash
#   after crash, and take them past the recovery budget with it.
job_claim = """
WITH candidates AS (
    SELECT j.id, j.priority, j.run_at, j.recoveries > 0 AS suspect
    FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at, recoveries
        FROM {schema}.jobs
        WHERE queue = q.name AND state = 'available' AND run_at <= now()
          AND (expires_at IS NULL OR expires_at > now())
          AND (recoveries = 0 OR NOT EXISTS (
              SELECT FROM {schema}.jobs AS mine
              WHERE mine.worker_id = %(worker_id)s AND mine.state = 'running'
                AND mine.recoveries > 0))
        ORDER BY priority, run_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) j
    ORDER BY j.priority, j.run_at, j.id
    LIMIT %(limit)s
),
chosen AS (
    SELECT id FROM (
        SELECT id, suspect,
               row_number() OVER (PARTITION BY suspect ORDER BY priority, run_at, id) AS n
        FROM candidates
    ) c
    WHERE NOT suspect OR n = 1
)
UPDATE {schema}.jobs AS job
SET state = 'running',
    attempt = job.attempt + 1,
    lease_token = gen_random_uuid(),
    lease_expires_at = clock_timestamp() + %(lease)s::interval,
    worker_id = %(worker_id)s,
    started_at = clock_timestamp()
FROM chosen
WHERE job.id = chosen.id
RETURNING job.id, job.task, job.queue, job.args, job.attempt, job.max_attempts,
          job.lease_token, job.recoveries, job.batch_id
"""

# Renews every lease this worker holds, and its own heartbeat, in one round trip. Fenced
# by token: a lease that was reclaimed is not renewed, and its id is missing from the
# result, which is how the worker learns that it lost the job.
job_heartbeat = """
WITH renewed AS (
    UPDATE {schema}.jobs AS job
    SET lease_expires_at = clock_timestamp() + %(lease)s::interval
    FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS h(id, token)
    WHERE job.id = h.id AND job.lease_token = h.token
    RETURNING job.id
),
beat AS (
    UPDATE {schema}.workers SET heartbeat_at = clock_timestamp()
    WHERE id = %(worker_id)s
    RETURNING id
)
-- beat is data-modifying, so it runs although nothing selects from it
SELECT id FROM renewed
"""

# Writes a flush of outcomes in one statement. Every row is fenced by its lease token:
# an attempt that lost its lease (reclaimed, or already completed in the handler's own
# transaction) matches nothing, and a terminal state can never be overwritten because
# terminal rows carry no token (jobs_lease_iff_running). Returns the ids written.
job_complete_many = """
WITH o AS (
    SELECT * FROM unnest(
        %(ids)s::bigint[], %(tokens)s::uuid[], %(states)s::text[], %(delays)s::interval[],
        %(refunds)s::integer[], %(errors)s::jsonb[], %(results)s::jsonb[], %(metas)s::jsonb[]
    ) AS o(id, token, state, delay, refund, error, result, meta)
)
UPDATE {schema}.jobs AS job
SET state = o.state,
    lease_token = NULL,
    lease_expires_at = NULL,
    attempt = job.attempt - o.refund,
    run_at = CASE WHEN o.state = 'available' THEN clock_timestamp() + o.delay
                  ELSE job.run_at END,
    finished_at = CASE WHEN o.state = 'available' THEN NULL ELSE clock_timestamp() END,
    errors = CASE WHEN o.error IS NULL THEN job.errors
                  ELSE job.errors || jsonb_build_array(
                      o.error || jsonb_build_object('at', clock_timestamp())) END,
    result = o.result,
    meta = CASE WHEN o.meta IS NULL THEN job.meta ELSE job.meta || o.meta END
FROM o
WHERE job.id = o.id AND job.lease_token = o.token
RETURNING job.id
"""

# current_job().complete(conn): success inside the handler's own transaction, fenced by
# the lease so that a stale attempt's transaction finds no row and rolls back.
job_complete_fenced = """
UPDATE {schema}.jobs
SET state = 'succeeded', lease_token = NULL, lease_expires_at = NULL,
    finished_at = clock_timestamp(), result = %(result)s::jsonb
WHERE id = %(id)s AND lease_token = %(token)s
RETURNING id
"""

# -- maintenance ----------------------------------------------------------------------

# Returns running jobs whose lease expired (their worker died, hung or lost the network).
# The lost attempt is refunded and counted as a recovery instead; past the recovery budget
# the job is dead, so a job that kills its worker cannot crash-loop the fleet. SKIP LOCKED
# makes concurrent reclaimers safe, and the lease check is re-evaluated on the locked row,
# so a job completed meanwhile is left alone.
job_reclaim = """
WITH lost AS (
    SELECT id FROM {schema}.jobs
    WHERE state = 'running' AND lease_expires_at < clock_timestamp()
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.jobs AS job
SET state = CASE WHEN job.recoveries >= %(budget)s THEN 'dead' ELSE 'available' END,
    recoveries = job.recoveries + 1,
    attempt = greatest(job.attempt - 1, 0),
    lease_token = NULL,
    lease_expires_at = NULL,
    run_at = clock_timestamp(),
    finished_at = CASE WHEN job.recoveries >= %(budget)s THEN clock_timestamp() END,
    errors = job.errors || jsonb_build_array(jsonb_build_object(
        'attempt', job.attempt,
        'at', clock_timestamp(),
        'type', 'pgjobs.WorkerLost',
        'message', CASE WHEN job.recoveries >= %(budget)s
            THEN format('worker lost (worker %%s): lease expired; recovery budget of %%s '
                        'exhausted, job is dead', job.worker_id, %(budget)s)
            ELSE format('worker lost (worker %%s): lease expired; job recovered',
                        job.worker_id) END,
        'traceback', NULL))
FROM lost
WHERE job.id = lost.id
RETURNING job.id, job.state
"""

# -- workers --------------------------------------------------------------------------

worker_register = """
INSERT INTO {schema}.workers (host, pid, queues, concurrency, state, version)
VALUES (%(host)s, %(pid)s, %(queues)s, %(concurrency)s, 'running', %(version)s)
RETURNING id
"""

worker_set_state = """
UPDATE {schema}.workers
SET state = %(state)s, heartbeat_at = clock_timestamp(),
    stopped_at = CASE WHEN %(state)s = 'stopped' THEN clock_timestamp() END
WHERE id = %(id)s
"""

# -- inspection -------------------------------------------------------------------------

job_get = """
SELECT id, queue, task, args, priority, state, attempt, max_attempts, run_at, expires_at,
       lease_expires_at, worker_id, unique_key, batch_id, created_at, started_at,
       finished_at, errors, result, recoveries
FROM {schema}.jobs WHERE id = %(id)s
"""

NAMES = (
    "job_insert",
    "job_insert_many",
    "job_claim",
    "job_heartbeat",
    "job_complete_many",
    "job_complete_fenced",
    "job_reclaim",
    "worker_register",
    "worker_set_state",
    "job_get",
)


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
    job_claim: sql.Composed
    job_heartbeat: sql.Composed
    job_complete_many: sql.Composed
    job_complete_fenced: sql.Composed
    job_reclaim: sql.Composed
    worker_register: sql.Composed
    worker_set_state: sql.Composed
    job_get: sql.Composed
