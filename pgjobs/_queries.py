"""Every SQL statement pgjobs sends, by name (entity first: job_, batch_, worker_, ...).

Statements are written with a ``{schema}`` placeholder and composed once per schema with
``psycopg.sql.Identifier`` (see ``Queries``); nothing else is ever spliced into SQL text.
Literal braces are doubled (``'{{}}'``) because of that composition.
"""

from __future__ import annotations

from functools import cache

from psycopg import sql

# -- enqueue --------------------------------------------------------------------------

# One job, one round trip: the insert and its wake-up share a statement (pg_notify in
# RETURNING runs once, for the one row; no CTE to materialise). run_in is added to the
# *database* clock (promise: database clock only). pg_notify is transactional: a
# rolled-back enqueue notifies nobody, and a worker woken at commit finds the row visible.
# A job due later notifies nobody: waking workers then finds nothing, and every
# notifying commit holds a cluster-wide lock through its WAL flush, serialising
# concurrent enqueuers. Polling finds it when it is due. A NULL channel (App(notify=
# False)) notifies nobody at all.
job_insert = """
INSERT INTO {schema}.jobs (queue, task, args, priority, max_attempts, run_at, expires_at,
                           concurrency_key, concurrency_limit, rate_limit, rate_period)
SELECT %(queue)s, %(task)s, %(args)s::jsonb, %(priority)s, %(max_attempts)s, t.run_at,
       -- expires_in counts from the job's run_at, as in Sidekiq
       coalesce(%(expires_at)s::timestamptz, t.run_at + %(expires_in)s::interval),
       %(concurrency_key)s, %(concurrency_limit)s, %(rate_limit)s, %(rate_period)s::interval
FROM (SELECT coalesce(%(run_at)s::timestamptz, now() + %(run_in)s::interval) AS run_at) t
RETURNING id, CASE WHEN run_at <= now() AND %(channel)s::text IS NOT NULL
                  THEN pg_notify(%(channel)s, %(queue)s) END
"""

# Many jobs of one task (one queue, one set of options) in one statement: the options are
# scalars, and each job travels as [args, concurrency key] in one JSON array, a single
# text parameter (an array parameter is encoded element by element by the driver, in
# Python, which profiled at twice the cost of validating the rows). Identities are drawn
# in input order, and one notification goes out.
job_insert_many = """
WITH timed AS (
    SELECT coalesce(%(run_at)s::timestamptz, now() + %(run_in)s::interval) AS due
),
jobs AS (
    INSERT INTO {schema}.jobs (queue, task, args, priority, max_attempts, run_at, expires_at,
                               concurrency_key, concurrency_limit, rate_limit, rate_period)
    SELECT %(queue)s, %(task)s, r.job->0, %(priority)s, %(max_attempts)s, timed.due,
           coalesce(%(expires_at)s::timestamptz, timed.due + %(expires_in)s::interval),
           -- a row without a key has no per-key limit at all
           r.job->>1, limits.concurrency_limit, limits.rate_limit, limits.rate_period
    FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY AS r(job, ord)
    CROSS JOIN timed
    LEFT JOIN (SELECT %(concurrency_limit)s::integer AS concurrency_limit,
                      %(rate_limit)s::integer AS rate_limit,
                      %(rate_period)s::interval AS rate_period) limits
        ON r.job->>1 IS NOT NULL
    ORDER BY r.ord
    RETURNING id
),
notified AS (
    SELECT pg_notify(%(channel)s, %(queue)s)
    FROM timed WHERE due <= now() AND %(channel)s::text IS NOT NULL
)
SELECT id FROM jobs, (SELECT count(*) FROM notified) n ORDER BY id
"""

# Large enqueue_many calls of jobs without unique keys (COPY_MIN_ROWS rows or more) send
# their rows with binary COPY, which the server takes at about twice the rate of rows
# unpacked from a JSON parameter. COPY returns nothing, so this statement first draws the
# jobs' ids (in input order), computes the shared run_at and expires_at from the database
# clock as job_insert_many does, counts the jobs into their batch (refusing a batch that
# already succeeded), and notifies; all of it takes effect only if the COPY that follows
# in the same transaction does.
job_reserve_many = """
SELECT array(SELECT nextval(%(sequence)s::regclass) FROM generate_series(1, %(n)s)),
       t.due, coalesce(%(expires_at)s::timestamptz, t.due + %(expires_in)s::interval),
       (SELECT count(*) FROM (SELECT pg_notify(%(channel)s, %(queue)s)
                              WHERE t.due <= now() AND %(channel)s::text IS NOT NULL) n),
       (SELECT count(*) FROM (SELECT {schema}.batch_add_jobs(%(batch_id)s::bigint, %(n)s)
                              WHERE %(batch_id)s::bigint IS NOT NULL) b)
FROM (SELECT coalesce(%(run_at)s::timestamptz, now() + %(run_in)s::interval) AS due) t
"""

job_copy = """
COPY {schema}.jobs (id, queue, task, args, priority, max_attempts, run_at, expires_at,
                    batch_id, concurrency_key, concurrency_limit, rate_limit, rate_period)
FROM STDIN (FORMAT BINARY)
"""

# Enqueue with unique keys and/or into a batch, for one or many rows. Used only when a
# job needs it, so the plain statements above stay minimal.
# - Job ids are drawn first (nextval), so a unique hold can name its job before the job
#   row exists, and the row is inserted only if the hold was won.
# - ON CONFLICT DO UPDATE (not DO NOTHING) so RETURNING always yields the holder's id,
#   even when the holder committed after this statement's snapshot was taken. The update
#   takes the hold over only when it has expired (unique_for elapsed).
# - A rolled-back holder's key row vanishes with it; a concurrent enqueuer waiting on that
#   key then wins it.
# - Holds are taken in key order, whatever the order of the rows: two statements that
#   want the same keys then wait for each other instead of deadlocking.
# - batch_add_jobs counts the jobs into their batch once per statement (and refuses a
#   batch that already succeeded).
job_insert_special = """
WITH rows AS (
    SELECT r.*, nextval(%(sequence)s::regclass) AS new_id,
           coalesce(r.run_at, now() + r.run_in) AS due
    FROM unnest(
        %(queue)s::text[], %(task)s::text[], %(args)s::jsonb[], %(priority)s::smallint[],
        %(max_attempts)s::integer[], %(run_at)s::timestamptz[], %(run_in)s::interval[],
        %(expires_at)s::timestamptz[], %(expires_in)s::interval[],
        %(concurrency_key)s::text[], %(concurrency_limit)s::integer[],
        %(rate_limit)s::integer[], %(rate_period)s::interval[], %(unique_key)s::text[],
        %(unique_for)s::interval[], %(unique_until)s::text[]
    ) WITH ORDINALITY AS r(queue, task, args, priority, max_attempts, run_at, run_in,
                           expires_at, expires_in, concurrency_key, concurrency_limit,
                           rate_limit, rate_period, unique_key, unique_for, unique_until,
                           ord)
),
held AS (
    INSERT INTO {schema}.unique_keys AS u (key, job_id, expires_at, release_on)
    SELECT unique_key, new_id, due + unique_for, unique_until
    FROM rows WHERE unique_key IS NOT NULL
    ORDER BY unique_key
    ON CONFLICT (key) DO UPDATE SET
        job_id = CASE WHEN u.expires_at <= now() THEN EXCLUDED.job_id ELSE u.job_id END,
        release_on = CASE WHEN u.expires_at <= now() THEN EXCLUDED.release_on
                          ELSE u.release_on END,
        created_at = CASE WHEN u.expires_at <= now() THEN now() ELSE u.created_at END,
        expires_at = CASE WHEN u.expires_at <= now() THEN EXCLUDED.expires_at
                          ELSE u.expires_at END
    RETURNING key, job_id
),
winners AS (
    SELECT rows.* FROM rows LEFT JOIN held ON held.key = rows.unique_key
    WHERE rows.unique_key IS NULL OR held.job_id = rows.new_id
),
inserted AS (
    INSERT INTO {schema}.jobs
        (id, queue, task, args, priority, max_attempts, run_at, expires_at, unique_key, batch_id,
         concurrency_key, concurrency_limit, rate_limit, rate_period)
    OVERRIDING SYSTEM VALUE
    SELECT new_id, queue, task, args, priority, max_attempts, due,
           coalesce(expires_at, due + expires_in), unique_key, %(batch_id)s::bigint,
           concurrency_key, concurrency_limit, rate_limit, rate_period
    FROM winners ORDER BY ord
    RETURNING id, queue, run_at
),
counted AS (
    SELECT {schema}.batch_add_jobs(%(batch_id)s::bigint, (SELECT count(*) FROM inserted))
    WHERE %(batch_id)s::bigint IS NOT NULL
),
notified AS (
    SELECT pg_notify(%(channel)s, queue)
    FROM (SELECT DISTINCT queue FROM inserted WHERE run_at <= now()) q
    WHERE %(channel)s::text IS NOT NULL
)
SELECT coalesce(held.job_id, rows.new_id) AS id,
       coalesce(held.job_id <> rows.new_id, false) AS duplicate
FROM rows LEFT JOIN held ON held.key = rows.unique_key,
     (SELECT count(*) FROM notified) n, (SELECT count(*) FROM counted) c
ORDER BY rows.ord
"""

enqueue_receipt_put = """
INSERT INTO {schema}.enqueue_receipts (key, results) VALUES (%(key)s, %(results)s::jsonb)
"""

enqueue_receipt_get = """
SELECT results FROM {schema}.enqueue_receipts WHERE key = %(key)s
"""

# -- batches ----------------------------------------------------------------------------

# A new batch; a child also counts itself into its parent, whose callbacks then wait for it.
batch_insert = """
WITH parent AS (
    UPDATE {schema}.batches
    SET children_pending = children_pending + 1,
        children_incomplete = children_incomplete + 1
    WHERE id = %(parent_id)s::bigint AND succeeded_at IS NULL
    RETURNING id
)
INSERT INTO {schema}.batches (parent_id, description, meta)
SELECT %(parent_id)s::bigint, %(description)s, %(meta)s::jsonb
WHERE %(parent_id)s::bigint IS NULL OR EXISTS (SELECT FROM parent)
RETURNING id
"""

# Callbacks are appended as JSON rows; batch_fire() reads them when the event is due.
# A callback for an event that has already fired is refused, not silently kept.
batch_add_callback = """
UPDATE {schema}.batches SET callbacks = callbacks || jsonb_build_array(%(callback)s::jsonb)
WHERE id = %(id)s
  AND CASE %(event)s WHEN 'complete' THEN completed_at IS NULL
                     WHEN 'success' THEN succeeded_at IS NULL
                     ELSE died_at IS NULL END
RETURNING id
"""

batch_get = """
SELECT id, parent_id, description, state, total, pending, succeeded, failed, dead,
       children_pending, children_incomplete, created_at, completed_at, succeeded_at, died_at
FROM {schema}.batches WHERE id = %(id)s
"""

# -- worker: claim, heartbeat, outcomes --------------------------------------------------

# A job holding a unique key until it starts (unique_until="start") is claimed only if
# its hold can be locked now: the jobs' trigger deletes that hold when the claim starts
# the job. A duplicate enqueue locks the hold until its transaction ends, and an enqueue
# takes several keys one after another; a claim that waited there would hold up all its
# jobs for as long as the caller's transaction lasts, and could deadlock with it. Such a
# job is left for a later claim instead.
_START_HOLD_FREE = """
(J.unique_key IS NULL
 OR NOT EXISTS (SELECT FROM {schema}.unique_keys AS u
                WHERE u.key = J.unique_key AND u.job_id = J.id AND u.release_on = 'start')
 OR EXISTS (SELECT FROM {schema}.unique_keys AS u
            WHERE u.key = J.unique_key AND u.job_id = J.id AND u.release_on = 'start'
            FOR UPDATE SKIP LOCKED))"""


def _start_hold_free(alias: str) -> str:
    return _START_HOLD_FREE.replace("J.", f"{alias}.")


# Claims up to %(limit)s due jobs of the worker's queues in one statement.
# - Per queue, a LATERAL subquery walks jobs_claim_idx in claim order and stops after
#   %(limit)s rows, so the cost does not grow with the backlog; the outer ORDER BY merges
#   the queues. (A plain `queue = ANY(...) ORDER BY ...` would sort every available row.)
# - SKIP LOCKED: concurrent claimers take different rows instead of queueing on locks.
# - clock_timestamp(), not now(): the lease is measured from when the row is taken.
# - attempt + 1 here, so a crash after this commit still counts as a started attempt; a
#   reclaim refunds it (recoveries are counted apart).
# - `settings` reads `queues` once: paused queues drop out, and so do queues with a limit
#   and jobs with a concurrency key, which only job_claim_limited may start. This is the
#   statement a worker sends while none of that concerns it (see _limits.ClaimRouter):
#   it takes no lock beyond the claimed rows, and plans in a fraction of the time.
# - A job recovered after a lost worker (recoveries > 0) is a suspect: it may be what
#   killed that worker. A worker runs at most one suspect at a time (one per claim, none
#   while it runs one: the uncorrelated NOT EXISTS is evaluated once, on
#   jobs_running_idx). Jobs reclaimed together sit side by side in claim order, so
#   without this a poison job would be claimed again with the same innocent jobs, crash
#   after crash, and take them past the recovery budget with it.
# - synchronous_commit off for this transaction only (set_config(..., true) is SET LOCAL,
#   so it holds under any pooler): the claim returns without waiting for its WAL flush.
#   A claim lost in a server crash only makes the job claimable again (at-least-once), and
#   any durable write that follows it - a completion, the handler's own transaction -
#   flushes the WAL up to and past it first. See docs/benchmarks.md, "Asynchronous claims".
job_claim = """
WITH settings AS MATERIALIZED (
    SELECT q.name
    FROM unnest(%(queues)s::text[]) AS q(name)
    LEFT JOIN {schema}.queues AS s ON s.name = q.name
    WHERE s.name IS NULL
       OR (NOT s.paused AND s.concurrency_limit IS NULL AND s.rate_limit IS NULL)
),
candidates AS (
    SELECT j.id, j.priority, j.run_at, j.recoveries > 0 AS suspect
    FROM settings AS q
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at, recoveries
        FROM {schema}.jobs AS a
        WHERE queue = q.name AND state = 'available' AND run_at <= now()
          AND (expires_at IS NULL OR expires_at > now())
          AND concurrency_key IS NULL
          AND """ + _start_hold_free("a") + """
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
FROM chosen, (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
WHERE job.id = chosen.id
RETURNING job.id, job.task, job.queue, job.args, job.attempt, job.max_attempts,
          job.lease_token, job.recoveries, job.batch_id, job.meta
"""

# The queues of a worker that have limits (the worker then claims with
# job_claim_limited). Read about once a second; job_claim itself never relies on it.
queue_limited = """
SELECT name FROM {schema}.queues
WHERE name = ANY(%(queues)s::text[]) AND NOT paused
  AND (concurrency_limit IS NOT NULL OR rate_limit IS NOT NULL)
"""

# job_claim, and queue and key limits (docs/queues.md) on top, enforced in the claim so
# they hold for any number of workers:
# - `settings` reads `queues` once: paused queues drop out; a queue without limits keeps
#   the plain SKIP LOCKED path and takes no lock at all.
# - A limited queue's row is locked (FOR UPDATE, in name order so claimers never
#   deadlock), which serialises the claims of that queue. FOR UPDATE hands back the row's
#   latest committed version, but the rest of the statement still reads the snapshot taken
#   when it began, which may miss jobs another claimer started meanwhile. `claimed` (a
#   monotonic count of starts) closes that gap: latest claimed - claimed as the snapshot
#   saw it = starts the snapshot cannot see. Running jobs that finished meanwhile still
#   look running, so the estimate only ever errs on the safe side.
# - The rate limit is a sliding window over the start times inside it (`recent_starts`,
#   oldest first, at most rate_limit of them), read and written under the same lock.
#   Kept sorted, the array is counted and trimmed by binary search (width_bucket gives
#   the number of elements <= its operand) and a slice, never unnested or sorted.
# - Per-key limits (jobs.concurrency_key) use the same two ideas on a `limit_keys` row,
#   through INSERT ... ON CONFLICT DO UPDATE: the upsert locks the key's row (created on
#   first use) and computes the grant from its latest version. Keys are upserted in key
#   order, so two claimers never wait on each other's keys in a cycle. Only candidates
#   that have a key pay for this; the rest skip it.
job_claim_limited = """
WITH settings AS MATERIALIZED (
    SELECT q.name,
           coalesce(s.concurrency_limit IS NOT NULL OR s.rate_limit IS NOT NULL, false)
               AS limited,
           coalesce(s.claimed, 0) AS seen_claimed
    FROM unnest(%(queues)s::text[]) AS q(name)
    LEFT JOIN {schema}.queues AS s ON s.name = q.name
    WHERE s.paused IS NOT TRUE
),
locked AS MATERIALIZED (
    SELECT s.name, s.claimed, s.concurrency_limit, s.rate_limit, s.rate_period,
           s.recent_starts
    FROM {schema}.queues AS s
    -- re-checked on the latest version: a queue paused meanwhile drops out
    WHERE s.name IN (SELECT name FROM settings WHERE limited) AND NOT s.paused
    ORDER BY s.name
    FOR UPDATE
),
room AS MATERIALIZED (
    -- least() ignores NULLs: a limit that is not set does not bound the room
    SELECT l.name, greatest(0, least(
        %(limit)s,
        l.concurrency_limit
            - (SELECT count(*) FROM {schema}.jobs AS r
               WHERE r.state = 'running' AND r.queue = l.name)
            - (l.claimed - s.seen_claimed),
        l.rate_limit - cardinality(l.recent_starts)
            + width_bucket(clock_timestamp() - l.rate_period, l.recent_starts)
    )) AS n
    FROM locked AS l JOIN settings AS s ON s.name = l.name
),
locked_candidates AS MATERIALIZED (
    SELECT j.*
    FROM settings AS q
    LEFT JOIN room ON room.name = q.name
    CROSS JOIN LATERAL (
        SELECT a.id, a.priority, a.run_at, a.concurrency_key, a.concurrency_limit,
               a.rate_limit, a.rate_period, a.recoveries > 0 AS suspect
        FROM {schema}.jobs AS a
        WHERE a.queue = q.name AND a.state = 'available' AND a.run_at <= now()
          AND (a.expires_at IS NULL OR a.expires_at > now())
          -- suspects as in job_claim: none beside a running one, at most one per claim
          AND (a.recoveries = 0 OR NOT EXISTS (
              SELECT FROM {schema}.jobs AS mine
              WHERE mine.worker_id = %(worker_id)s AND mine.state = 'running'
                AND mine.recoveries > 0))
          AND """ + _start_hold_free("a") + """
          -- Step over jobs whose key is full as this snapshot sees it, so one busy key
          -- cannot block the jobs queued behind it. (The grant below is exact.)
          AND (a.concurrency_key IS NULL OR (
              (a.concurrency_limit IS NULL
               OR (SELECT count(*) FROM {schema}.jobs AS r
                   WHERE r.state = 'running' AND r.concurrency_key = a.concurrency_key)
                  < a.concurrency_limit)
              AND (a.rate_limit IS NULL OR NOT EXISTS (
                  SELECT 1 FROM {schema}.limit_keys AS k
                  WHERE k.key = a.concurrency_key
                    AND cardinality(k.recent_starts)
                        - width_bucket(now() - a.rate_period, k.recent_starts)
                        >= a.rate_limit))))
        ORDER BY a.priority, a.run_at, a.id
        LIMIT CASE WHEN q.limited THEN coalesce(room.n, 0) ELSE %(limit)s END
        FOR UPDATE SKIP LOCKED
    ) AS j
    ORDER BY j.priority, j.run_at, j.id
    LIMIT %(limit)s
),
candidates AS MATERIALIZED (
    SELECT c.* FROM (
        SELECT l.*, row_number() OVER (PARTITION BY l.suspect
                                       ORDER BY l.priority, l.run_at, l.id) AS n
        FROM locked_candidates AS l
    ) AS c
    WHERE NOT c.suspect OR c.n = 1
),
wanted AS MATERIALIZED (
    -- per key: candidates, the strictest limits among them, and what the snapshot saw
    SELECT c.concurrency_key AS key, count(*) AS n,
           min(c.concurrency_limit) AS concurrency_limit, min(c.rate_limit) AS rate_limit,
           max(c.rate_period) AS rate_period,
           (SELECT count(*) FROM {schema}.jobs AS r
            WHERE r.state = 'running' AND r.concurrency_key = c.concurrency_key)
               AS seen_running,
           k.claimed AS seen_claimed, k.created_at AS seen_created_at
    FROM candidates AS c
    LEFT JOIN {schema}.limit_keys AS k ON k.key = c.concurrency_key
    WHERE c.concurrency_key IS NOT NULL
    GROUP BY c.concurrency_key, k.claimed, k.created_at
),
granted AS (
    INSERT INTO {schema}.limit_keys AS k (key, claimed, last_grant, last_start,
        concurrency_limit, rate_limit, rate_period, recent_starts)
    SELECT w.key, g.n, g.n, g.at, w.concurrency_limit, w.rate_limit, w.rate_period,
           CASE WHEN w.rate_limit IS NULL THEN '{{}}'::timestamptz[]
                ELSE array_fill(g.at, ARRAY[g.n]) END
    FROM wanted AS w
    CROSS JOIN LATERAL (
        SELECT clock_timestamp() AS at,
               greatest(0, least(w.n, w.concurrency_limit - w.seen_running,
                                 w.rate_limit))::integer AS n
    ) AS g
    ORDER BY w.key
    ON CONFLICT (key) DO UPDATE SET
        (claimed, last_grant, last_start, concurrency_limit, rate_limit, rate_period,
         recent_starts, updated_at) = (
        SELECT k.claimed + g.n, g.n, g.at, excluded.concurrency_limit, excluded.rate_limit,
               excluded.rate_period,
               -- append the new starts (the newest: this claim holds the key's lock),
               -- drop those that left the window, keep at most rate_limit
               CASE WHEN excluded.rate_limit IS NULL THEN '{{}}'::timestamptz[]
                    ELSE (k.recent_starts || array_fill(g.at, ARRAY[g.n]))[greatest(
                        width_bucket(g.at - excluded.rate_period, k.recent_starts) + 1,
                        cardinality(k.recent_starts) + g.n - excluded.rate_limit + 1):]
               END,
               g.at
        FROM wanted AS w
        CROSS JOIN LATERAL (SELECT clock_timestamp() AS at) AS t
        CROSS JOIN LATERAL (
            SELECT t.at, greatest(0, least(
                w.n,
                excluded.concurrency_limit - w.seen_running
                    -- starts the snapshot cannot see; a row created (or re-created
                    -- after pruning) since the snapshot counts in full
                    - CASE WHEN w.seen_created_at = k.created_at
                           THEN k.claimed - w.seen_claimed ELSE k.claimed END,
                excluded.rate_limit - cardinality(k.recent_starts)
                    + width_bucket(t.at - excluded.rate_period, k.recent_starts)
            ))::integer AS n
        ) AS g
        WHERE w.key = k.key
    )
    RETURNING k.key, k.last_grant, k.last_start
),
picked AS (
    SELECT c.id, NULL::timestamptz AS started_at
    FROM candidates AS c WHERE c.concurrency_key IS NULL
    UNION ALL
    -- a key's first last_grant candidates, in claim order; they start at the grant's
    -- time, which is what the key's rate window recorded
    SELECT r.id, g.last_start
    FROM (SELECT id, concurrency_key, row_number() OVER (
              PARTITION BY concurrency_key ORDER BY priority, run_at, id) AS rank
          FROM candidates WHERE concurrency_key IS NOT NULL) AS r
    JOIN granted AS g ON g.key = r.concurrency_key
    WHERE r.rank <= g.last_grant
),
claimed AS (
    UPDATE {schema}.jobs AS job
    SET state = 'running',
        attempt = job.attempt + 1,
        lease_token = gen_random_uuid(),
        lease_expires_at = clock_timestamp() + %(lease)s::interval,
        worker_id = %(worker_id)s,
        started_at = coalesce(picked.started_at, clock_timestamp())
    FROM picked
    WHERE job.id = picked.id
    RETURNING job.id, job.task, job.queue, job.args, job.attempt, job.max_attempts,
              job.lease_token, job.recoveries, job.batch_id, job.meta, job.started_at
),
counted AS (
    -- the limited queues' rows, still locked by `locked`: count the starts, and append
    -- their times (the jobs' own started_at, later than any recorded) to the window,
    -- dropping those that left it and keeping at most rate_limit
    UPDATE {schema}.queues AS s
    SET claimed = s.claimed + c.n,
        recent_starts = CASE WHEN s.rate_limit IS NULL THEN '{{}}'::timestamptz[]
            ELSE (s.recent_starts || c.starts)[greatest(
                width_bucket(clock_timestamp() - s.rate_period, s.recent_starts) + 1,
                cardinality(s.recent_starts) + c.n - s.rate_limit + 1):] END
    FROM (SELECT queue, count(*)::integer AS n,
                 array_agg(started_at ORDER BY started_at) AS starts
          FROM claimed GROUP BY queue) AS c
    WHERE s.name = c.queue AND s.name IN (SELECT name FROM locked)
)
SELECT id, task, queue, args, attempt, max_attempts, lease_token, recoveries, batch_id, meta
FROM claimed
"""

# Renews every lease this worker holds, and its own heartbeat, in one round trip. Fenced
# by token: a lease that was reclaimed is not renewed, and its token is missing from the
# result, which is how the worker learns that it lost the job.
# SKIP LOCKED: a row locked by a handler's own open transaction (complete(conn) before its
# commit) is reported busy (renewed = false) instead of stalling every other lease.
job_heartbeat = """
WITH held AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS h(id, token)
),
lockable AS (
    SELECT job.id FROM {schema}.jobs AS job JOIN held ON job.id = held.id
    FOR UPDATE OF job SKIP LOCKED
),
renewed AS (
    UPDATE {schema}.jobs AS job
    SET lease_expires_at = clock_timestamp() + %(lease)s::interval
    FROM held
    WHERE job.id = held.id AND job.lease_token = held.token
      AND job.id IN (SELECT id FROM lockable)
    RETURNING job.lease_token
),
beat AS (
    UPDATE {schema}.workers SET heartbeat_at = clock_timestamp()
    WHERE id = %(worker_id)s
    RETURNING id
)
-- beat is data-modifying, so it runs although nothing selects from it
SELECT lease_token, true FROM renewed
UNION ALL
SELECT held.token, false FROM held WHERE held.id NOT IN (SELECT id FROM lockable)
"""

# The batches (and their parents) of the jobs in SOURCE, locked in id order before any job
# is updated. A job's state change updates its batch's counters and then, when an event
# fires, the parent's, through the jobs' trigger: left to the trigger, two statements over
# jobs of the same batches lock those rows in whatever order their jobs come, and can
# deadlock (PostgreSQL aborts one of them after deadlock_timeout). Every statement that
# moves jobs of several batches, or that may fire a batch's events, takes them here first.
_BATCH_LOCKS = """
batch_locks AS (
    SELECT b.id FROM {schema}.batches AS b
    WHERE b.id IN (
        SELECT ids.id
        FROM SOURCE AS s
        JOIN {schema}.jobs AS j ON j.id = s.id
        JOIN {schema}.batches AS own ON own.id = j.batch_id
        CROSS JOIN LATERAL (VALUES (own.id), (own.parent_id)) AS ids(id))
    ORDER BY b.id
    FOR UPDATE OF b
)"""


def _batch_locks(source: str) -> str:
    return _BATCH_LOCKS.replace("SOURCE", source)


# Writes a flush of outcomes in one statement. Every row is fenced by its lease token:
# an attempt that lost its lease (reclaimed, or already completed in the handler's own
# transaction) matches nothing, and a terminal state can never be overwritten because
# terminal rows carry no token (jobs_lease_iff_running). Returns the ids written.
# The outcomes arrive as one JSON array of [id, token, state, delay seconds, refund, error,
# result text, meta] rows (see _executor.outcomes_param): one text parameter is far
# cheaper for the worker to send than eight arrays dumped element by element.
job_complete_many = """
WITH o AS (
    SELECT (e->>0)::bigint AS id, (e->>1)::uuid AS token, e->>2 AS state,
           make_interval(secs => (e->>3)::float8) AS delay, (e->>4)::integer AS refund,
           nullif(e->5, 'null') AS error, (e->>6)::jsonb AS result,
           nullif(e->7, 'null') AS meta
    FROM jsonb_array_elements(%(outcomes)s::jsonb) AS e
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
),""" + _batch_locks("o") + """
UPDATE {schema}.jobs AS job
SET state = o.state,
    lease_token = NULL,
    lease_expires_at = NULL,
    attempt = job.attempt - o.refund,
    -- no delay (a job released unstarted or interrupted): it keeps its place in line
    run_at = CASE WHEN o.state = 'available'
                  THEN coalesce(clock_timestamp() + o.delay, job.run_at)
                  ELSE job.run_at END,
    finished_at = CASE WHEN o.state = 'available' THEN NULL ELSE clock_timestamp() END,
    errors = CASE WHEN o.error IS NULL THEN job.errors
                  ELSE job.errors || jsonb_build_array(
                      o.error || jsonb_build_object('at', clock_timestamp())) END,
    result = o.result,
    meta = CASE WHEN o.meta IS NULL THEN job.meta ELSE job.meta || o.meta END
FROM o
WHERE job.id = o.id AND job.lease_token = o.token
  -- the holds, then the batches, are locked before any job is updated
  AND (SELECT count(*) FROM holds) >= 0 AND (SELECT count(*) FROM batch_locks) >= 0
RETURNING job.id
"""

# current_job().complete(conn): success inside the handler's own transaction, fenced by
# the lease so that a stale attempt's transaction finds no row and rolls back.
job_complete_fenced = """
WITH target AS (SELECT %(id)s::bigint AS id),""" + _batch_locks("target") + """
UPDATE {schema}.jobs
SET state = 'succeeded', lease_token = NULL, lease_expires_at = NULL,
    finished_at = clock_timestamp(), result = %(result)s::jsonb
WHERE id = %(id)s AND lease_token = %(token)s AND (SELECT count(*) FROM batch_locks) >= 0
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
),""" + _batch_locks("lost") + """,
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
    WHERE job.id = lost.id AND (SELECT count(*) FROM batch_locks) >= 0
    RETURNING job.id, job.state, job.queue
),
-- Recovered jobs wake idle workers of their queue, as a new job would.
notified AS (
    SELECT pg_notify(%(channel)s, queue)
    FROM (SELECT DISTINCT queue FROM reclaimed WHERE state = 'available') q
)
SELECT id, state FROM reclaimed, (SELECT count(*) FROM notified) n
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
),""" + _batch_locks("due") + """
UPDATE {schema}.jobs AS job
SET state = 'expired', finished_at = clock_timestamp()
FROM due WHERE job.id = due.id AND (SELECT count(*) FROM batch_locks) >= 0
RETURNING job.id
"""

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

# -- workers --------------------------------------------------------------------------

# meta.lease: `pgjobs status` calls a worker stale once it has been silent that long.
worker_register = """
INSERT INTO {schema}.workers (host, pid, queues, concurrency, state, version, meta)
VALUES (%(host)s, %(pid)s, %(queues)s, %(concurrency)s, 'running', %(version)s,
        jsonb_build_object('lease', %(lease)s::float8))
RETURNING id
"""

worker_set_state = """
UPDATE {schema}.workers
SET state = %(state)s, heartbeat_at = clock_timestamp(),
    stopped_at = CASE WHEN %(state)s = 'stopped' THEN clock_timestamp() END
WHERE id = %(id)s
"""

# Whether a worker process has registered (the supervisor waits for this before it stops
# the process being replaced). `after` is the highest id before the process was started,
# so an old row of a reused pid never counts.
worker_last_id = """
SELECT coalesce(max(id), 0) FROM {schema}.workers
"""

worker_registered = """
SELECT id FROM {schema}.workers
WHERE host = %(host)s AND pid = %(pid)s AND id > %(after)s AND state = 'running'
"""

# -- periodic -------------------------------------------------------------------------

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

# -- queues ---------------------------------------------------------------------------

# Pause or resume; a queue needs no row until an operator sets something. The NOTIFY
# (transactional, sent at commit) wakes idle workers so a resumed queue drains at once.
queue_set_paused = """
WITH q AS (
    INSERT INTO {schema}.queues AS q (name, paused) VALUES (%(name)s, %(paused)s)
    ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = now()
    RETURNING q.name
)
SELECT name, pg_notify(%(channel)s, name) FROM q
"""

# Set (or clear, with NULL) the limits the claim enforces. Only the given ones change:
# %(set_*)s say which.
queue_set_limits = """
WITH q AS (
    INSERT INTO {schema}.queues AS q (name, concurrency_limit, rate_limit, rate_period)
    VALUES (%(name)s, %(concurrency_limit)s, %(rate_limit)s, %(rate_period)s::interval)
    ON CONFLICT (name) DO UPDATE SET
        concurrency_limit = CASE WHEN %(set_concurrency)s THEN excluded.concurrency_limit
                                 ELSE q.concurrency_limit END,
        rate_limit = CASE WHEN %(set_rate)s THEN excluded.rate_limit ELSE q.rate_limit END,
        rate_period = CASE WHEN %(set_rate)s THEN excluded.rate_period ELSE q.rate_period END,
        updated_at = now()
    RETURNING q.name, q.concurrency_limit, q.rate_limit, q.rate_period
)
SELECT name, concurrency_limit, rate_limit, rate_period, pg_notify(%(channel)s, name) FROM q
"""

# Every queue with settings or live jobs. Counting available jobs reads the backlog, so
# this is for the command line, not for a hot path.
queue_list = """
SELECT coalesce(s.name, d.queue) AS name, coalesce(s.paused, false), s.concurrency_limit,
       s.rate_limit, s.rate_period, coalesce(d.available, 0), coalesce(d.running, 0)
FROM {schema}.queues AS s
FULL JOIN (
    SELECT queue, count(*) FILTER (WHERE state = 'available') AS available,
           count(*) FILTER (WHERE state = 'running') AS running
    FROM {schema}.jobs WHERE state IN ('available', 'running')
    GROUP BY queue
) AS d ON d.queue = s.name
ORDER BY 1
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

# -- status (`pgjobs status`) -----------------------------------------------------------

# Per queue: due, scheduled (future run_at, never run), retrying (future run_at after a
# failed attempt), running and dead jobs, and how long the oldest due job has waited.
# Reads the live backlog and the dead jobs kept by retention, never the succeeded ones.
status_queues = """
WITH counts AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'available' AND run_at <= now()) AS available,
           count(*) FILTER (WHERE state = 'available' AND run_at > now() AND attempt = 0)
               AS scheduled,
           count(*) FILTER (WHERE state = 'available' AND run_at > now() AND attempt > 0)
               AS retrying,
           count(*) FILTER (WHERE state = 'running') AS running,
           count(*) FILTER (WHERE state = 'dead') AS dead,
           now() - min(run_at) FILTER (WHERE state = 'available' AND run_at <= now())
               AS oldest_wait
    FROM {schema}.jobs
    WHERE state IN ('available', 'running', 'dead')
    GROUP BY queue
)
SELECT coalesce(q.name, c.queue), coalesce(q.paused, false), coalesce(c.available, 0),
       coalesce(c.scheduled, 0), coalesce(c.retrying, 0), coalesce(c.running, 0),
       coalesce(c.dead, 0), c.oldest_wait
FROM counts AS c
FULL JOIN {schema}.queues AS q ON q.name = c.queue
ORDER BY 1
"""

# Workers that have not stopped (and stopped ones from the last hour), with the jobs
# each holds now; silent = time since its last heartbeat, lease = the lease it runs with.
status_workers = """
SELECT w.id, w.host, w.pid, w.state, w.queues, w.concurrency, w.started_at,
       w.heartbeat_at, now() - w.heartbeat_at AS silent,
       make_interval(secs => coalesce((w.meta->>'lease')::float8, 30)) AS lease,
       (SELECT count(*) FROM {schema}.jobs AS job
        WHERE job.state = 'running' AND job.worker_id = w.id) AS running
FROM {schema}.workers AS w
WHERE w.state <> 'stopped' OR w.heartbeat_at > now() - interval '1 hour'
ORDER BY w.id
"""

# -- status: PostgreSQL's own views (no pgjobs table; the schema is a parameter) --------

# Dead and live row estimates of pgjobs' tables, and when vacuum last ran on them. A table
# that has not been vacuumed or analysed yet has no row here.
status_tables = """
SELECT relname, n_live_tup, n_dead_tup, greatest(last_autovacuum, last_vacuum),
       autovacuum_count + vacuum_count
FROM pg_stat_user_tables
WHERE schemaname = %(schema)s
ORDER BY n_dead_tup DESC, relname
"""

# What holds back the xmin horizon of this database, oldest first: vacuum cannot remove a
# row version that any of these may still see, on any table, pgjobs' included.
# - backends with a snapshot (backend_xmin) or an open transaction, in this database (a
#   backend of another database does not hold back this one's tables);
# - prepared transactions, which survive restarts until committed or rolled back;
# - replication slots with an xmin (a standby with hot_standby_feedback, or a logical slot
#   whose consumer stopped reading).
status_horizon = """
SELECT 'backend' AS kind, pid::text AS name,
       coalesce(nullif(application_name, ''), backend_type), state, usename,
       now() - coalesce(xact_start, query_start) AS age, age(backend_xmin) AS xmin_age,
       left(query, 120) AS query
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND (backend_xmin IS NOT NULL OR xact_start IS NOT NULL)
UNION ALL
SELECT 'prepared transaction', gid, NULL, NULL, owner, now() - prepared,
       age(transaction), NULL
FROM pg_prepared_xacts
WHERE database = current_database()
UNION ALL
SELECT 'replication slot', slot_name, NULL, CASE WHEN active THEN 'active' ELSE 'inactive' END,
       NULL, NULL, greatest(age(xmin), age(catalog_xmin)), NULL
FROM pg_replication_slots
WHERE xmin IS NOT NULL OR catalog_xmin IS NOT NULL
ORDER BY xmin_age DESC NULLS LAST, age DESC NULLS LAST
LIMIT 10
"""

# -- inspection -------------------------------------------------------------------------

job_get = """
SELECT id, queue, task, args, priority, state, attempt, max_attempts, run_at, expires_at,
       lease_expires_at, worker_id, unique_key, batch_id, created_at, started_at,
       finished_at, errors, result, recoveries
FROM {schema}.jobs WHERE id = %(id)s
"""

# -- operator actions on jobs (pgjobs jobs ..., App.cancel_jobs / App.retry_jobs) ---------

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
# state it has.
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
SELECT i.id, cancelled.id IS NOT NULL AS changed, coalesce(cancelled.was, job.state),
       CASE WHEN cancelled.id IS NOT NULL THEN 'cancelled' ELSE job.state END
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
SELECT i.id, retried.id IS NOT NULL AS changed, coalesce(retried.was, job.state),
       CASE WHEN retried.id IS NOT NULL THEN 'available' ELSE job.state END,
       (SELECT u.job_id FROM {schema}.unique_keys AS u
        WHERE u.key = job.unique_key AND u.job_id <> job.id) AS key_holder,
       (SELECT b.succeeded_at IS NOT NULL FROM {schema}.batches AS b
        WHERE b.id = job.batch_id) AS batch_succeeded
FROM unnest(%(ids)s::bigint[]) AS i(id)
LEFT JOIN retried ON retried.id = i.id
LEFT JOIN {schema}.jobs AS job ON job.id = i.id,
(SELECT count(*) FROM notified) n
ORDER BY i.id
"""

NAMES = (
    "job_insert",
    "job_insert_many",
    "job_insert_special",
    "job_reserve_many",
    "job_copy",
    "enqueue_receipt_put",
    "enqueue_receipt_get",
    "batch_insert",
    "batch_add_callback",
    "batch_get",
    "job_expire",
    "unique_key_prune",
    "enqueue_receipt_prune",
    "job_claim",
    "job_claim_limited",
    "queue_limited",
    "job_heartbeat",
    "job_complete_many",
    "job_complete_fenced",
    "job_reclaim",
    "worker_register",
    "worker_set_state",
    "job_get",
    "worker_last_id",
    "worker_registered",
    "periodic_upsert",
    "periodic_disable_missing",
    "periodic_state",
    "periodic_advance",
    "periodic_record",
    "periodic_list",
    "queue_set_paused",
    "queue_set_limits",
    "queue_list",
    "limit_key_prune",
    "job_list",
    "job_cancel",
    "job_retry",
    "job_prune",
    "batch_prune",
    "worker_prune",
    "status_queues",
    "status_workers",
    "status_tables",
    "status_horizon",
)

CATALOG_NAMES = ("status_tables", "status_horizon")
"""Statements that read only PostgreSQL's statistics views: no ``{schema}`` placeholder
(the schema, where needed, is the ``%(schema)s`` parameter)."""


@cache
def compose(text: str, schema: str) -> sql.SQL:
    """``text`` with its ``{schema}`` placeholder bound to the quoted schema name, rendered
    once: psycopg turns a ``Composed`` into bytes again at every execute (a fifth of an
    enqueue's client CPU), a plain ``SQL`` costs one encode."""
    return sql.SQL(sql.SQL(text).format(schema=sql.Identifier(schema)).as_string(None))


class Queries:
    """The named statements of one schema, composed once."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.sequence = sql.Identifier(schema, "jobs_id_seq").as_string(None)
        for name in NAMES:
            setattr(self, name, compose(globals()[name], schema))

    job_insert: sql.SQL
    job_insert_many: sql.SQL
    job_insert_special: sql.SQL
    job_reserve_many: sql.SQL
    job_copy: sql.SQL
    enqueue_receipt_put: sql.SQL
    enqueue_receipt_get: sql.SQL
    batch_insert: sql.SQL
    batch_add_callback: sql.SQL
    batch_get: sql.SQL
    job_expire: sql.SQL
    unique_key_prune: sql.SQL
    enqueue_receipt_prune: sql.SQL
    job_claim: sql.SQL
    job_claim_limited: sql.SQL
    queue_limited: sql.SQL
    job_heartbeat: sql.SQL
    job_complete_many: sql.SQL
    job_complete_fenced: sql.SQL
    job_reclaim: sql.SQL
    worker_register: sql.SQL
    worker_set_state: sql.SQL
    job_get: sql.SQL
    worker_last_id: sql.SQL
    worker_registered: sql.SQL
    periodic_upsert: sql.SQL
    periodic_disable_missing: sql.SQL
    periodic_state: sql.SQL
    periodic_advance: sql.SQL
    periodic_record: sql.SQL
    periodic_list: sql.SQL
    queue_set_paused: sql.SQL
    queue_set_limits: sql.SQL
    queue_list: sql.SQL
    limit_key_prune: sql.SQL
    job_list: sql.SQL
    job_cancel: sql.SQL
    job_retry: sql.SQL
    job_prune: sql.SQL
    batch_prune: sql.SQL
    worker_prune: sql.SQL
    status_queues: sql.SQL
    status_workers: sql.SQL
    status_tables: sql.SQL
    status_horizon: sql.SQL
