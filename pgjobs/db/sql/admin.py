"""SQL: operators' reads and actions on jobs by id (``pgjobs jobs ...``)."""

from __future__ import annotations

job_get = """
SELECT id, queue, task, args, priority, state, attempt, max_attempts, run_at, expires_at,
       lease_expires_at, worker_id, unique_key, batch_id, created_at, started_at,
       finished_at, errors, result, recoveries, progress, checkpoint
FROM {schema}.jobs WHERE id = %(id)s
"""

# A job's state and outcome (App.result, Enqueued.wait): the columns of core.JobResult.
job_result = """
SELECT id, task, queue, state, result, errors, attempt, max_attempts, recoveries,
       progress, checkpoint, created_at, started_at, finished_at
FROM {schema}.jobs WHERE id = %(id)s
"""

# A waiter's mark on a job that has not ended: its end will notify the done channel
# (revision 0009). False: ended, missing, or locked right now (mark it at the next read).
job_watch = """
SELECT {schema}.job_watch(%(id)s)
"""

# Why a job is not running or did not run: the rows of why() (revision 0009).
job_why = """
SELECT cause, reason FROM {schema}.why(%(id)s)
"""

# The latest jobs, newest first, filtered by whatever is given (NULL: any).
job_list = """
SELECT id, queue, task, state, attempt, max_attempts, run_at, finished_at,
       errors->-1->>'type' AS last_error_type, errors->-1->>'message' AS last_error
FROM {schema}.jobs
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
ORDER BY id DESC
LIMIT %(limit)s
"""

# Cancels waiting and running jobs. A running job's lease goes with it, so its worker's
# next heartbeat finds the lease gone and stops the handler, and every write of that
# attempt is fenced out (as for a reclaimed job). Triggers release unique holds and count
# the job into its batch. Returns one row per id asked: changed, the state it had, the
# state it has, its batch (whose counters the caller then folds).
job_cancel = """
WITH target AS (
    SELECT id, state FROM {schema}.jobs
    WHERE id = ANY(%(ids)s::bigint[]) AND state IN ('available', 'running')
    ORDER BY id
    FOR UPDATE
),
cancelled AS (
    UPDATE {schema}.jobs AS job
    SET state = 'cancelled', finished_at = now(), lease_token = NULL,
        lease_expires_at = NULL,
        meta = job.meta || jsonb_build_object('cancel_reason', %(reason)s::text)
    FROM target WHERE job.id = target.id
    RETURNING job.id, target.state AS was
)
SELECT i.id, cancelled.id IS NOT NULL AS changed, coalesce(cancelled.was, job.state) AS was,
       CASE WHEN cancelled.id IS NOT NULL THEN 'cancelled' ELSE job.state END AS state,
       job.batch_id
FROM unnest(%(ids)s::bigint[]) AS i(id)
LEFT JOIN cancelled ON cancelled.id = i.id
LEFT JOIN {schema}.jobs AS job ON job.id = i.id
ORDER BY i.id
"""

# Makes dead, cancelled and expired jobs available again, at once (and runs a job waiting
# for its retry now). It keeps `errors` and `attempt` (history) and gives room for one
# more attempt, a fresh recovery budget and no expiry. A job with a unique key takes its
# key again (until it finishes) or, when another live job holds the key, stays as it is.
# A job of a batch that has succeeded stays too: its callbacks have run. Triggers adjust
# the batch's counters.
job_retry = """
WITH candidates AS (
    SELECT job.id, job.state, job.unique_key FROM {schema}.jobs AS job
    WHERE job.id = ANY(%(ids)s::bigint[])
      AND (job.state IN ('dead', 'cancelled', 'expired')
           OR (job.state = 'available' AND job.run_at > now()))
      AND NOT EXISTS (SELECT FROM {schema}.batches AS b
                      WHERE b.id = job.batch_id AND b.succeeded_at IS NOT NULL)
    ORDER BY job.id
    FOR UPDATE OF job
),
held AS (
    INSERT INTO {schema}.unique_keys AS u (key, job_id, expires_at, release_on)
    SELECT DISTINCT ON (unique_key) unique_key, id, NULL::timestamptz, 'success'
    FROM candidates
    WHERE unique_key IS NOT NULL AND state <> 'available'
    ORDER BY unique_key, id
    ON CONFLICT (key) DO UPDATE
        SET job_id = EXCLUDED.job_id, expires_at = NULL, release_on = 'success',
            created_at = now()
        WHERE u.job_id = EXCLUDED.job_id
           OR (u.expires_at IS NOT NULL AND u.expires_at <= now())
    RETURNING key, job_id
),
retried AS (
    UPDATE {schema}.jobs AS job
    SET state = 'available', run_at = now(), finished_at = NULL, expires_at = NULL,
        max_attempts = greatest(job.max_attempts, job.attempt + 1), recoveries = 0
    FROM candidates AS c
    WHERE job.id = c.id
      AND (c.unique_key IS NULL OR c.state = 'available'
           OR EXISTS (SELECT FROM held WHERE held.job_id = c.id))
    RETURNING job.id, job.queue, c.state AS was
),
notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM retried) q
)
SELECT i.id, retried.id IS NOT NULL AS changed, coalesce(retried.was, job.state) AS was,
       CASE WHEN retried.id IS NOT NULL THEN 'available' ELSE job.state END AS state,
       (SELECT u.job_id FROM {schema}.unique_keys AS u
        WHERE u.key = job.unique_key AND u.job_id <> job.id) AS key_holder,
       (SELECT b.succeeded_at IS NOT NULL FROM {schema}.batches AS b
        WHERE b.id = job.batch_id) AS batch_succeeded, job.batch_id
FROM unnest(%(ids)s::bigint[]) AS i(id)
LEFT JOIN retried ON retried.id = i.id
LEFT JOIN {schema}.jobs AS job ON job.id = i.id,
(SELECT count(*) FROM notified) n
ORDER BY i.id
"""

# Deletes finished jobs (succeeded, dead, cancelled, expired), as the pruner does. A job
# still waiting or running is left alone: cancel it first (deleting it would leave its
# batch waiting for it forever, and its worker's lease pointing at nothing). The delete
# trigger releases a unique hold. One row per id asked: changed, the state it had, the
# state it has (NULL: gone).
job_delete = """
WITH deleted AS (
    DELETE FROM {schema}.jobs
    WHERE id = ANY(%(ids)s::bigint[]) AND state IN ('succeeded', 'dead', 'cancelled', 'expired')
    RETURNING id, state
)
SELECT i.id, deleted.id IS NOT NULL AS changed, coalesce(deleted.state, job.state) AS was,
       CASE WHEN deleted.id IS NOT NULL THEN NULL ELSE job.state END AS state
FROM unnest(%(ids)s::bigint[]) AS i(id)
LEFT JOIN deleted ON deleted.id = i.id
LEFT JOIN {schema}.jobs AS job ON job.id = i.id
ORDER BY i.id
"""
