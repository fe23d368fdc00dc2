"""SQL: a running job's lease, from claim to end. Heartbeats renew it; completions
(batched outcomes, or one fenced completion in the handler's own transaction), reclaims of
lost workers' jobs and expiries end it. Every write is fenced by the lease token."""

from __future__ import annotations

# Renews every lease this worker holds, and its own heartbeat, in one round trip. Fenced
# by token: a lease that was reclaimed is not renewed, and its token is missing from the
# result, which is how the worker learns that it lost the job.
# SKIP LOCKED: a row locked by a handler's own open transaction (complete(conn) before its
# commit) is reported busy (renewed = false) instead of stalling every other lease.
# It also carries what handlers reported since the last beat (current_job().progress() and
# .checkpoint(), as JSON text; NULL: unchanged), so reporting costs no round trip of its
# own. Both columns are unindexed: the update stays HOT.
job_heartbeat = """
WITH held AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(progress)s::text[],
                         %(checkpoints)s::text[]) AS h(id, token, progress, checkpoint)
),
lockable AS (
    SELECT job.id FROM {schema}.jobs AS job JOIN held ON job.id = held.id
    FOR UPDATE OF job SKIP LOCKED
),
renewed AS (
    UPDATE {schema}.jobs AS job
    SET lease_expires_at = clock_timestamp() + %(lease)s::interval,
        progress = coalesce(held.progress::jsonb, job.progress),
        checkpoint = coalesce(held.checkpoint::jsonb, job.checkpoint)
    FROM held
    WHERE job.id = held.id AND job.lease_token = held.token
      AND job.id IN (SELECT id FROM lockable)
    RETURNING job.lease_token::text AS token
),
beat AS (
    UPDATE {schema}.workers SET heartbeat_at = clock_timestamp()
    WHERE id = %(worker_id)s
    RETURNING id
),
-- The registry's last sighting of this worker's tasks (revision 0012), at most once a
-- minute per task across the fleet: most beats write nothing. A row another worker is
-- refreshing right now is skipped, never waited for.
seen AS (
    UPDATE {schema}.tasks AS t SET last_seen_at = clock_timestamp()
    WHERE t.name IN (
        SELECT stale.name FROM {schema}.tasks AS stale
        WHERE stale.name IN (SELECT jsonb_array_elements_text(w.meta->'tasks')
                             FROM {schema}.workers AS w WHERE w.id = %(worker_id)s)
          AND stale.last_seen_at < clock_timestamp() - interval '1 minute'
        FOR UPDATE SKIP LOCKED)
    RETURNING t.name
)
-- beat and seen are data-modifying, so they run although nothing selects from them
SELECT token, true FROM renewed
UNION ALL
SELECT held.token::text, false FROM held WHERE held.id NOT IN (SELECT id FROM lockable)
"""

# Writes a flush of outcomes in one statement. Every row is fenced by its lease token:
# an attempt that lost its lease (reclaimed, or already completed in the handler's own
# transaction) matches nothing, and a terminal state can never be overwritten because
# terminal rows carry no token (jobs_lease_iff_running). Returns the ids written.
# The outcomes arrive as one JSON array of [id, token, kind, delay seconds, refund, error,
# result text, meta, recoveries added, progress text, checkpoint text] rows (see
# db.leases.outcomes_param): one text parameter is far cheaper for the worker to send than
# eleven arrays dumped one by one. progress and checkpoint: what the handler reported after
# the last heartbeat (null: nothing new), so that the final report is not lost.
job_complete_many = """
WITH o AS (
    SELECT id, token,
           CASE WHEN kind <> 'unknown_task' THEN kind
                WHEN death IS NULL THEN 'available' ELSE 'dead' END AS state,
           delay, refund, coalesce(death, error) AS error, result, meta, recovered,
           progress, checkpoint
    FROM (
        SELECT (e->>0)::bigint AS id, (e->>1)::uuid AS token, e->>2 AS kind,
               make_interval(secs => (e->>3)::float8) AS delay, (e->>4)::integer AS refund,
               nullif(e->5, 'null') AS error, (e->>6)::jsonb AS result,
               nullif(e->7, 'null') AS meta, coalesce((e->>8)::integer, 0) AS recovered,
               (e->>9)::jsonb AS progress, (e->>10)::jsonb AS checkpoint,
               -- Handed back by a worker that lacks its task (a mixed deploy): available
               -- again for one that has it, or dead once no live worker knows the task
               -- and none has for the grace, counted from the task's last sighting in
               -- the registry or, if later, the job's enqueue. The subquery runs for
               -- those rows only (CASE), so other flushes pay one comparison per row.
               CASE WHEN e->>2 = 'unknown_task' THEN (
                   SELECT jsonb_build_object(
                       'attempt', j.attempt, 'type', 'pgjobs.UnknownTask', 'traceback', NULL,
                       'message', format(
                           'no live worker knows task %%L: %%s, and this job waited the '
                           'grace of %%s (--unknown-task-grace) for one; deploy a worker '
                           'whose app registers %%L, then `pgjobs jobs retry %%s`', j.task,
                           CASE WHEN t.name IS NULL
                                THEN 'no worker has ever registered it'
                                ELSE format('a worker last knew it at %%s', t.last_seen_at)
                           END, %(unknown_task_grace)s::interval, j.task, j.id))
                   FROM {schema}.jobs AS j LEFT JOIN {schema}.tasks AS t ON t.name = j.task
                   WHERE j.id = (e->>0)::bigint
                     AND clock_timestamp() - greatest(t.last_seen_at, j.created_at)
                         >= %(unknown_task_grace)s::interval
                     AND NOT EXISTS (
                         SELECT FROM {schema}.workers AS w
                         WHERE w.state = 'running'
                           -- (one that does not list its tasks is assumed to know it,
                           -- as why() assumes)
                           AND (NOT w.meta ? 'tasks' OR w.meta->'tasks' ? j.task)
                           AND w.heartbeat_at > clock_timestamp() - make_interval(
                               secs => coalesce((w.meta->>'lease')::float8, 30))))
               END AS death
        FROM jsonb_array_elements(%(outcomes)s::jsonb) AS e
    ) AS r
),
-- The unique holds these outcomes release, locked first and in key order (the order in
-- which enqueue takes them): a flush and an enqueue of the same keys then wait for each
-- other instead of deadlocking. The jobs' trigger then deletes holds already locked here.
holds AS (
    SELECT u.key FROM o
    JOIN {schema}.jobs AS j ON j.id = o.id AND j.lease_token = o.token
    JOIN {schema}.unique_keys AS u ON u.key = j.unique_key AND u.job_id = j.id
    ORDER BY u.key
    FOR UPDATE OF u
)
UPDATE {schema}.jobs AS job
SET state = o.state,
    lease_token = NULL,
    lease_expires_at = NULL,
    attempt = job.attempt - o.refund,
    -- a suspect whose isolated process died: a recovery, as job_reclaim counts one
    recoveries = job.recoveries + o.recovered,
    -- no delay (a job released unstarted or interrupted): it keeps its place in line
    run_at = CASE WHEN o.state = 'available'
                  THEN coalesce(clock_timestamp() + o.delay, job.run_at)
                  ELSE job.run_at END,
    finished_at = CASE WHEN o.state = 'available' THEN NULL ELSE clock_timestamp() END,
    errors = CASE WHEN o.error IS NULL THEN job.errors
                  ELSE job.errors || jsonb_build_array(
                      o.error || jsonb_build_object('at', clock_timestamp())) END,
    result = o.result,
    meta = CASE WHEN o.meta IS NULL THEN job.meta ELSE job.meta || o.meta END,
    progress = coalesce(o.progress, job.progress),
    checkpoint = coalesce(o.checkpoint, job.checkpoint)
FROM o
WHERE job.id = o.id AND job.lease_token = o.token
  -- the holds are locked before any job is updated
  AND (SELECT count(*) FROM holds) >= 0
RETURNING job.id
"""

# current_job().complete(conn): success inside the handler's own transaction, fenced by
# the lease so that a stale attempt's transaction finds no row and rolls back.
job_complete_fenced = """
UPDATE {schema}.jobs
SET state = 'succeeded', lease_token = NULL, lease_expires_at = NULL,
    finished_at = clock_timestamp(), result = %(result)s::jsonb,
    progress = coalesce(%(progress)s::jsonb, progress),
    checkpoint = coalesce(%(checkpoint)s::jsonb, checkpoint)
WHERE id = %(id)s AND lease_token = %(token)s::uuid
RETURNING id
"""

# The common flush: every outcome a plain success (no result, no error, no meta) of a
# job without a unique key, so there are no holds to lock and nothing to merge. The
# same fenced update as job_complete_many with constants for the rest, and one text
# parameter "id:token,id:token,..." that costs the server no JSON parsing. Returns the
# ids written.
# Batch counters (revision 0011): every row is a running job that succeeds, so what it
# does to its batch's counters is known (pending -1, succeeded +1, failed -1 if it had
# failed before), and the statement appends one delta row per batch instead of the
# trigger's one per job. set_config(..., true) tells the trigger to stay out until this
# transaction ends, which is this statement's end (the completer's connection is in
# autocommit). `counted` is volatile, so it is evaluated once, and before the first row
# is updated: the update's rows are joined with it.
job_complete_succeeded = """
WITH counted AS (
    SELECT set_config('pgjobs_batches.counted_by_statement', 'on', true) AS flag
),
done AS (
    UPDATE {schema}.jobs AS job
    SET state = 'succeeded', lease_token = NULL, lease_expires_at = NULL,
        finished_at = clock_timestamp(), result = NULL
    FROM (SELECT split_part(e, ':', 1)::bigint AS id, split_part(e, ':', 2)::uuid AS token
          FROM unnest(string_to_array(%(jobs)s::text, ',')) AS e) AS o, counted
    WHERE job.id = o.id AND job.lease_token = o.token
    RETURNING job.id, job.batch_id, coalesce((job.meta->>'batch_failed')::boolean, false)
              AS had_failed
),
counts AS (
    INSERT INTO {schema}.batch_deltas (batch_id, pending, succeeded, failed)
    SELECT batch_id, -count(*), count(*), -count(*) FILTER (WHERE had_failed)
    FROM done WHERE batch_id IS NOT NULL
    GROUP BY batch_id
)
SELECT id FROM done
"""

# current_job().transaction(): the same success, through job_complete() (revision 0007),
# which raises PJ002 when the lease is lost instead of matching no row: a lost lease
# aborts the transaction, and the handler's effects roll back with it.
job_complete_commit = """
SELECT {schema}.job_complete(%(id)s::bigint, %(token)s::uuid, %(result)s::jsonb)
"""

# current_job().transaction(): what the handler reported since the last heartbeat, written
# in the handler's transaction before job_complete() (fenced like it; NULL: unchanged).
job_report = """
UPDATE {schema}.jobs
SET progress = coalesce(%(progress)s::jsonb, progress),
    checkpoint = coalesce(%(checkpoint)s::jsonb, checkpoint)
WHERE id = %(id)s AND lease_token = %(token)s::uuid
"""

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
),
reclaimed AS (
    UPDATE {schema}.jobs AS job
    SET state = CASE WHEN job.recoveries >= %(budget)s THEN 'dead' ELSE 'available' END,
        recoveries = job.recoveries + 1,
        attempt = greatest(job.attempt - 1, 0),
        lease_token = NULL,
        lease_expires_at = NULL,
        -- run_at is kept: the job goes back to its place in line, not to the end
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
    RETURNING job.id, job.state, job.queue, job.task, job.attempt, job.meta
),
-- Recovered jobs wake idle workers of their queue, as a new job would.
notified AS (
    SELECT pg_notify(%(channel)s, queue)
    FROM (SELECT DISTINCT queue FROM reclaimed WHERE state = 'available') q
)
-- task, queue, attempt and meta: for the worker's `reclaimed` events and metrics
SELECT id, task, queue, attempt, state, meta FROM reclaimed, (SELECT count(*) FROM notified) n
"""

# Marks available jobs whose expires_at has passed as expired (the claim already skips
# them; this makes the outcome visible and releases unique holds and batch counts through
# the triggers). SKIP LOCKED: any number of workers may run it at once.
job_expire = """
WITH due AS (
    SELECT id FROM {schema}.jobs
    WHERE state = 'available' AND expires_at <= now()
    ORDER BY expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.jobs AS job
SET state = 'expired', finished_at = clock_timestamp()
FROM due WHERE job.id = due.id
RETURNING job.id, job.task, job.queue, job.attempt, job.state, job.meta
"""
