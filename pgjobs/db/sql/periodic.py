"""SQL: periodic schedules and their ticks (``periodic`` table)."""

from __future__ import annotations

# At worker start: every schedule of the code, in name order (two workers starting at once
# lock the rows in the same order). A new schedule starts from now(): ticks before it
# existed are not due. So does one enabled again: the ticks it missed while disabled are
# not due either. last_tick is kept otherwise, also when the cron expression changed.
periodic_upsert = """
INSERT INTO {schema}.periodic AS p (name, schedule, task, queue, args, timezone, catch_up,
                                    catch_up_window, enabled, last_tick)
SELECT s.name, s.schedule, s.task, s.queue, s.args, s.timezone, s.catch_up, s.catch_up_window,
       true, now()
FROM unnest(%(names)s::text[], %(schedules)s::text[], %(tasks)s::text[], %(queues)s::text[],
            %(args)s::jsonb[], %(timezones)s::text[], %(catch_ups)s::text[],
            %(windows)s::interval[])
     AS s(name, schedule, task, queue, args, timezone, catch_up, catch_up_window)
ORDER BY s.name
ON CONFLICT (name) DO UPDATE
SET schedule = excluded.schedule, task = excluded.task, queue = excluded.queue,
    args = excluded.args, timezone = excluded.timezone, catch_up = excluded.catch_up,
    catch_up_window = excluded.catch_up_window, enabled = true,
    last_tick = CASE WHEN p.enabled THEN p.last_tick ELSE now() END,
    updated_at = now()
"""

# A schedule removed from the code is disabled, not deleted: its history stays readable.
periodic_disable_missing = """
UPDATE {schema}.periodic SET enabled = false, updated_at = now()
WHERE enabled AND NOT (name = ANY(%(names)s::text[]))
RETURNING name
"""

# The state tick computation starts from, with the database clock (promise: database clock
# only; the worker's clock is never used for a tick).
periodic_state = """
SELECT name, coalesce(last_tick, created_at), last_tick, now()
FROM {schema}.periodic
WHERE name = ANY(%(names)s::text[]) AND enabled
"""

# The compare-and-set that makes a tick happen once: it succeeds only while last_tick is
# still what this worker read, and in the same transaction as the tick's job insert, so
# across any number of workers exactly one transaction enqueues each tick. SKIP LOCKED:
# while another worker is inside its tick transaction, this one moves on instead of
# waiting for a compare-and-set that would fail anyway. The sub-select re-checks
# last_tick on the row's latest version once it holds the lock.
# set_config(..., true): for the rest of this transaction, which now holds the row lock,
# a worker stopped mid-transaction (SIGSTOP, a VM pause) has its session ended by
# PostgreSQL after 5 idle seconds: its tick rolls back and the other workers take it.
periodic_advance = """
UPDATE {schema}.periodic AS p
SET last_tick = %(new)s, updated_at = now()
FROM (
    SELECT name, set_config('idle_in_transaction_session_timeout', '5s', true) AS guard
    FROM {schema}.periodic
    WHERE name = %(name)s AND enabled AND last_tick IS NOT DISTINCT FROM %(old)s
    FOR UPDATE SKIP LOCKED
) AS won
WHERE p.name = won.name
RETURNING p.name
"""

# Inside the tick transaction, after the jobs went in through the ordinary enqueue
# statement: mark each job with its schedule and tick (jobs.meta), and remember the last.
periodic_record = """
WITH stamped AS (
    UPDATE {schema}.jobs AS job
    SET meta = job.meta || jsonb_build_object('periodic', %(name)s::text, 'tick', t.tick)
    FROM unnest(%(ids)s::bigint[], %(ticks)s::text[]) AS t(id, tick)
    WHERE job.id = t.id
    RETURNING job.id
)
-- stamped is data-modifying, so it runs although nothing selects from it
UPDATE {schema}.periodic SET last_job_id = coalesce(%(last_job_id)s, last_job_id)
WHERE name = %(name)s
"""

periodic_list = """
SELECT name, task, queue, schedule, timezone, catch_up, catch_up_window, enabled, last_tick,
       last_job_id, now()
FROM {schema}.periodic
ORDER BY name
"""
