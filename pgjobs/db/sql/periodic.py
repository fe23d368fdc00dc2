"""SQL: periodic schedules and their ticks (``periodic`` table)."""

from __future__ import annotations

# At worker start: every schedule of the code, in name order (two workers starting at once
# lock the rows in the same order). A new schedule starts from now(): ticks before it
# existed are not due. So does one enabled again: the ticks it missed while disabled are
# not due either. last_tick is kept otherwise, also when the cron expression changed.
# paused, resumed_at and run_requested_at belong to the operators: never changed here, so a
# worker's restart or deploy does not resume a paused schedule. The owner is the syncing
# App's (a schedule declared by two owners belongs to the last that synced).
periodic_upsert = """
INSERT INTO {schema}.periodic AS p (name, schedule, task, queue, args, timezone, catch_up,
                                    catch_up_window, enabled, last_tick, owner)
SELECT s.name, s.schedule, s.task, s.queue, s.args, s.timezone, s.catch_up, s.catch_up_window,
       true, now(), %(owner)s
FROM unnest(%(names)s::text[], %(schedules)s::text[], %(tasks)s::text[], %(queues)s::text[],
            %(args)s::jsonb[], %(timezones)s::text[], %(catch_ups)s::text[],
            %(windows)s::interval[])
     AS s(name, schedule, task, queue, args, timezone, catch_up, catch_up_window)
ORDER BY s.name
ON CONFLICT (name) DO UPDATE
SET schedule = excluded.schedule, task = excluded.task, queue = excluded.queue,
    args = excluded.args, timezone = excluded.timezone, catch_up = excluded.catch_up,
    catch_up_window = excluded.catch_up_window, enabled = true, owner = excluded.owner,
    last_tick = CASE WHEN p.enabled THEN p.last_tick ELSE now() END,
    updated_at = now()
"""

# A schedule removed from the code is disabled, not deleted: its history stays readable.
# Only the syncing App's own schedules: another codebase's, sharing the schema under
# another owner, are not "missing" from this code. A pending run request is dropped: no
# worker has the code to run it, and it must not fire if the schedule comes back weeks
# later.
periodic_disable_missing = """
UPDATE {schema}.periodic SET enabled = false, run_requested_at = NULL, updated_at = now()
WHERE enabled AND owner = %(owner)s AND NOT (name = ANY(%(names)s::text[]))
RETURNING name
"""

# The state tick computation starts from, with the database clock (promise: database clock
# only; the worker's clock is never used for a tick).
periodic_state = """
SELECT name, coalesce(last_tick, created_at) AS base, last_tick, now() AS now, paused,
       resumed_at, run_requested_at
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
# paused and resumed_at are compared too: a pause or resume committed after this worker
# read the schedule makes it read again, so no tick is enqueued after a pause committed.
periodic_advance = """
UPDATE {schema}.periodic AS p
SET last_tick = %(new)s, updated_at = now()
FROM (
    SELECT name, set_config('idle_in_transaction_session_timeout', '5s', true) AS guard
    FROM {schema}.periodic
    WHERE name = %(name)s AND enabled AND last_tick IS NOT DISTINCT FROM %(old)s
      AND paused = %(paused)s AND resumed_at IS NOT DISTINCT FROM %(resumed_at)s
    FOR UPDATE SKIP LOCKED
) AS won
WHERE p.name = won.name
RETURNING p.name
"""

# Inside the transaction that won a tick (or a run request), after the jobs went in
# through the ordinary enqueue statement: the ledger rows of every tick decided (in the
# order given, so ids follow the ticks), each enqueued job marked with its schedule and
# tick (jobs.meta; a manual run with "manual": true), and the last tick's job remembered.
# Recorded by the one transaction that moved last_tick, so each tick is recorded once.
periodic_tick_record = """
WITH entry AS (
    SELECT * FROM unnest(%(ticks)s::timestamptz[], %(first_ticks)s::timestamptz[],
                         %(outcomes)s::text[], %(reasons)s::text[], %(job_ids)s::bigint[],
                         %(stamps)s::text[])
                  WITH ORDINALITY AS e(tick, first_tick, outcome, reason, job_id, stamp, n)
),
stamped AS (
    UPDATE {schema}.jobs AS job
    SET meta = job.meta || CASE
        WHEN e.reason = 'manual' THEN jsonb_build_object('periodic', %(name)s::text,
                                                         'manual', true)
        ELSE jsonb_build_object('periodic', %(name)s::text, 'tick', e.stamp) END
    FROM entry AS e
    WHERE job.id = e.job_id AND e.outcome = 'enqueued'
    RETURNING job.id
),
ledger AS (
    INSERT INTO {schema}.periodic_ticks (name, tick, first_tick, outcome, reason, job_id)
    SELECT %(name)s, tick, first_tick, outcome, reason, job_id FROM entry ORDER BY n
    RETURNING id
)
-- stamped and ledger are data-modifying, so they run although nothing selects from them
UPDATE {schema}.periodic SET last_job_id = coalesce(%(last_job_id)s, last_job_id)
WHERE name = %(name)s
"""

# pgjobs periodic pause|resume. A resume notes when: the ticks due before it that no
# worker handled while paused are skipped as paused, not caught up (no burst on resume).
# In the SET list, paused is the old value.
periodic_set_paused = """
UPDATE {schema}.periodic
SET paused = %(paused)s, updated_at = now(),
    resumed_at = CASE WHEN paused AND NOT %(paused)s THEN now() ELSE resumed_at END
WHERE name = %(name)s
RETURNING name, enabled, paused
"""

# pgjobs periodic run-now: only the workers have the task's code (its options, unique key,
# limits), so the request is a mark that the next worker ticking this schedule takes. A
# request already pending is kept (two requests before a worker took one: one run).
# found reads the row whatever its state, so a missing or disabled schedule is reported.
periodic_request_run = """
WITH found AS (
    SELECT name, enabled FROM {schema}.periodic WHERE name = %(name)s
),
requested AS (
    UPDATE {schema}.periodic AS p
    SET run_requested_at = coalesce(p.run_requested_at, now()), updated_at = now()
    FROM found
    WHERE p.name = found.name AND found.enabled
    RETURNING p.run_requested_at
)
SELECT found.name, found.enabled, requested.run_requested_at
FROM found LEFT JOIN requested ON true
"""

# A worker takes a pending run request: the request is cleared in the same transaction as
# the run's enqueue and ledger row, so one worker runs it, once. SKIP LOCKED and the
# session guard as in periodic_advance; last_tick is not touched.
periodic_take_run = """
UPDATE {schema}.periodic AS p
SET run_requested_at = NULL, updated_at = now()
FROM (
    SELECT name, run_requested_at,
           set_config('idle_in_transaction_session_timeout', '5s', true) AS guard
    FROM {schema}.periodic
    WHERE name = %(name)s AND enabled AND run_requested_at IS NOT NULL
    FOR UPDATE SKIP LOCKED
) AS won
WHERE p.name = won.name
RETURNING won.run_requested_at
"""

# The ledger row of a manual run, by the time it was requested (what run-now waits for).
periodic_tick_manual = """
SELECT id, tick, first_tick, outcome, reason, job_id, recorded_at
FROM {schema}.periodic_ticks
WHERE name = %(name)s AND reason IN ('manual', 'duplicate') AND tick = %(tick)s
ORDER BY id DESC
LIMIT 1
"""

# The newest ledger rows of one schedule (periodic_ticks_name_idx, backwards).
periodic_tick_recent = """
SELECT id, tick, first_tick, outcome, reason, job_id, recorded_at
FROM {schema}.periodic_ticks
WHERE name = %(name)s
ORDER BY id DESC
LIMIT %(limit)s
"""

# The newest ledger rows of every schedule, %(limit)s each (the dashboard's periodic
# page): one backward index scan of periodic_ticks_name_idx per schedule.
periodic_tick_latest = """
SELECT p.name, t.tick, t.first_tick, t.outcome, t.reason, t.job_id, t.recorded_at
FROM {schema}.periodic AS p
CROSS JOIN LATERAL (
    SELECT id, tick, first_tick, outcome, reason, job_id, recorded_at
    FROM {schema}.periodic_ticks
    WHERE name = p.name
    ORDER BY id DESC
    LIMIT %(limit)s
) AS t
ORDER BY p.name, t.id DESC
"""

periodic_list = """
SELECT name, task, queue, schedule, timezone, catch_up, catch_up_window, enabled, last_tick,
       last_job_id, owner, paused, resumed_at, run_requested_at, created_at, now()
FROM {schema}.periodic
WHERE %(name)s::text IS NULL OR name = %(name)s
ORDER BY name
"""
