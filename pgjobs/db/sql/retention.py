"""SQL: retention. Bounded deletes of finished jobs, emptied batches, rows of gone
workers, expired unique holds, old receipts and unused limit keys."""

from __future__ import annotations

# Unique holds whose time ran out, and reliable-push receipts past their retry window.
unique_key_prune = """
DELETE FROM {schema}.unique_keys
WHERE key IN (SELECT key FROM {schema}.unique_keys WHERE expires_at <= now()
              LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
"""

enqueue_receipt_prune = """
DELETE FROM {schema}.enqueue_receipts
WHERE key IN (SELECT key FROM {schema}.enqueue_receipts
              WHERE created_at < now() - interval '1 day'
              LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
"""

# Deletes finished jobs past their state's retention, oldest first, at most %(limit)s per
# state per call (NULL retention: that state is kept forever).
# - One worker at a time: the advisory lock (%(lock)s, one key per schema) lasts for this
#   statement's transaction; a worker that does not get it deletes nothing and reads
#   nothing (the uncorrelated sub-select is a one-time filter, evaluated before any scan).
# - jobs_finished_state_idx: each state's range ends at that state's cutoff, so a week of
#   kept dead jobs is never stepped over to reach the succeeded ones. No ORDER BY: every
#   row in range is due, and without a sort the scan stops at the limit.
# - A job of a batch is kept until its batch has been complete (every job ran) for the
#   same period: while a batch runs, its finished jobs stay readable and an operator can
#   still retry its dead ones. The counters live in the batch row, so deleting a job never
#   changes them (the triggers fire on UPDATE OF state only).
# - FOR UPDATE SKIP LOCKED: never waits; a row an operator is changing right now is left
#   for the next run, and the state is re-checked on the row's latest version.
# - Deleting a job releases a unique hold it still names (jobs_unique_release_delete).
job_prune = """
WITH keep (state, period) AS (
    VALUES ('succeeded', %(succeeded)s::interval), ('cancelled', %(cancelled)s::interval),
           ('dead', %(dead)s::interval), ('expired', %(expired)s::interval)
),
doomed AS (
    SELECT old.id
    FROM keep
    CROSS JOIN LATERAL (
        SELECT job.id FROM {schema}.jobs AS job
        WHERE job.state = keep.state AND job.finished_at IS NOT NULL
          AND job.finished_at < now() - keep.period
          AND (job.batch_id IS NULL OR NOT EXISTS (
              SELECT FROM {schema}.batches AS b
              WHERE b.id = job.batch_id
                AND (b.completed_at IS NULL OR b.completed_at >= now() - keep.period)))
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS old
    WHERE keep.period IS NOT NULL AND (SELECT pg_try_advisory_xact_lock(%(lock)s))
)
DELETE FROM {schema}.jobs AS job
USING doomed WHERE job.id = doomed.id
RETURNING job.state
"""

# Batches that have been complete for %(keep)s and have no job and no child batch left
# (their finished jobs were pruned first; a batch with a job still retrying, or a parent
# whose child batch is still there, stays). Same lock as job_prune.
batch_prune = """
DELETE FROM {schema}.batches
WHERE id IN (
    SELECT b.id FROM {schema}.batches AS b
    WHERE b.completed_at < now() - %(keep)s::interval
      AND NOT EXISTS (SELECT FROM {schema}.jobs AS job WHERE job.batch_id = b.id)
      AND NOT EXISTS (SELECT FROM {schema}.batches AS c WHERE c.parent_id = b.id)
      AND (SELECT pg_try_advisory_xact_lock(%(lock)s))
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
"""

# Rows of workers whose last heartbeat is older than %(keep)s: stopped ones, and ones
# that died without saying so (a live worker beats every lease/3). Their jobs were
# reclaimed long before (jobs.worker_id is not a foreign key).
worker_prune = """
DELETE FROM {schema}.workers
WHERE id IN (
    SELECT id FROM {schema}.workers
    WHERE heartbeat_at < now() - %(keep)s::interval
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id, host, pid, state
"""

# The periodic ledger's rows older than %(keep)s, oldest first (periodic_ticks_recorded_idx).
# Same lock as job_prune: one pruner at a time. Ledger rows are never updated, so no row
# lock is needed: two deletes of one row (there are none, under the lock) would be harmless.
periodic_tick_prune = """
DELETE FROM {schema}.periodic_ticks
WHERE id IN (
    SELECT id FROM {schema}.periodic_ticks
    WHERE recorded_at < now() - %(keep)s::interval
      AND (SELECT pg_try_advisory_xact_lock(%(lock)s))
    ORDER BY recorded_at
    LIMIT %(limit)s
)
"""

# Forgets concurrency keys nobody used for an hour (or for their rate period, if longer:
# their start times are still needed until then). A key that comes back starts a new row,
# which the claim recognises by its created_at. SKIP LOCKED: never waits on a claim.
limit_key_prune = """
DELETE FROM {schema}.limit_keys
WHERE key IN (
    SELECT key FROM {schema}.limit_keys
    WHERE updated_at < now() - greatest(interval '1 hour', coalesce(rate_period, interval '0'))
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
"""
