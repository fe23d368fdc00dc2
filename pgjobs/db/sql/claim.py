"""SQL: the claim. ``job_claim`` when no limit concerns the worker, ``job_claim_limited``
with queue and per-key limits on top (``worker.routing`` chooses)."""

from __future__ import annotations

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

# Whether the claiming worker runs each suspect in a process of its own (see job_claim).
_ISOLATES = """
(SELECT coalesce(bool_or((w.meta->>'isolates_suspects')::boolean), false)
 FROM {schema}.workers AS w WHERE w.id = %(worker_id)s)"""

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
#   Unless the worker isolates suspects (workers.meta.isolates_suspects: it runs each in
#   a process of its own, worker/isolated.py, so a poison job kills only that process):
#   then it takes any number, and the innocent ones run side by side. The worker's row
#   is read once per statement (an uncorrelated subquery), and only if a suspect is due.
# - The lease token comes back as text: the worker only hands it back to the database,
#   so it never pays for parsing a UUID. unique_hold tells the completer which jobs may
#   hold a unique key (those take the full completion statement, which locks holds).
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
          AND (recoveries = 0 OR """ + _ISOLATES + """ OR NOT EXISTS (
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
    WHERE NOT suspect OR n = 1 OR """ + _ISOLATES + """
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
          job.lease_token::text AS lease_token, job.recoveries, job.batch_id, job.meta,
          job.unique_key IS NOT NULL AS unique_hold, job.checkpoint
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
          -- suspects as in job_claim: none beside a running one, at most one per claim,
          -- unless the worker isolates them
          AND (a.recoveries = 0 OR """ + _ISOLATES + """ OR NOT EXISTS (
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
    WHERE NOT c.suspect OR c.n = 1 OR """ + _ISOLATES + """
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
              job.lease_token::text AS lease_token, job.recoveries, job.batch_id,
              job.meta, job.unique_key IS NOT NULL AS unique_hold, job.checkpoint,
              job.started_at
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
SELECT id, task, queue, args, attempt, max_attempts, lease_token, recoveries, batch_id, meta,
       unique_hold, checkpoint
FROM claimed
"""
