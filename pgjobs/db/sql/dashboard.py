"""SQL: what the web dashboard reads (``pgjobs.dashboard``).

Every page must answer in well under 200 ms with a million jobs in the table, so each
statement here reads through an index and stops early: lists are keyset-paginated on
``id`` (``id < %(before)s``, newest first), never OFFSET, and counts read only the live
part of the table (waiting, running, dead) or the last hour of finished jobs. The
dashboard sends them unprepared (``prepare_threshold=None``): each is planned with its
parameters' values, so a NULL filter folds away and the planner sees ``state = 'dead'``.
"""

from __future__ import annotations

# Per queue: due, scheduled (future run_at, never run), retrying (future run_at after a
# failed attempt), running and dead jobs, the oldest due job's run_at, and the queue's
# settings. Each count reads the index made for its state: jobs_claim_idx (index-only:
# queue and run_at are in it), jobs_retrying_idx, jobs_running_idx, and for dead jobs
# jobs_finished_state_idx (index-only: queue is included; a dead job has finished_at).
queue_overview = """
WITH waiting AS (
    SELECT queue, count(*) FILTER (WHERE run_at <= now()) AS due,
           count(*) FILTER (WHERE run_at > now()) AS later,
           min(run_at) FILTER (WHERE run_at <= now()) AS oldest_run_at
    FROM {schema}.jobs WHERE state = 'available'
    GROUP BY queue
),
retrying AS (
    SELECT queue, count(*) AS retrying
    FROM {schema}.jobs WHERE state = 'available' AND attempt > 0 AND run_at > now()
    GROUP BY queue
),
running AS (
    SELECT queue, count(*) AS running FROM {schema}.jobs WHERE state = 'running'
    GROUP BY queue
),
dead AS (
    SELECT queue, count(*) AS dead FROM {schema}.jobs
    WHERE state = 'dead' AND finished_at IS NOT NULL
    GROUP BY queue
),
names AS (
    SELECT queue FROM waiting UNION SELECT queue FROM running UNION SELECT queue FROM dead
    UNION SELECT name FROM {schema}.queues
)
SELECT n.queue, coalesce(s.paused, false) AS paused, s.concurrency_limit, s.rate_limit,
       s.rate_period, coalesce(w.due, 0) AS available,
       coalesce(w.later, 0) - coalesce(r.retrying, 0) AS scheduled,
       coalesce(r.retrying, 0) AS retrying, coalesce(u.running, 0) AS running,
       coalesce(d.dead, 0) AS dead, now() - w.oldest_run_at AS oldest_wait
FROM names AS n
LEFT JOIN waiting AS w ON w.queue = n.queue
LEFT JOIN retrying AS r ON r.queue = n.queue
LEFT JOIN running AS u ON u.queue = n.queue
LEFT JOIN dead AS d ON d.queue = n.queue
LEFT JOIN {schema}.queues AS s ON s.name = n.queue
ORDER BY n.queue
"""

# Per queue and minute of the last hour: jobs that succeeded, and jobs that failed for
# good (died or expired). Both are read from jobs_finished_state_idx alone (queue is
# included), so the cost is an index range per state, never a heap visit per job. (Failed
# attempts that will be retried are not in the chart: counting them means reading each
# retried job's errors; the overview counts the jobs waiting for a retry instead.)
# Minute 0 is the one just past, 59 an hour ago.
job_throughput = """
SELECT queue, floor(extract(epoch FROM now() - finished_at) / 60)::int AS minutes_ago,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE state IN ('dead', 'expired')) AS failed
FROM {schema}.jobs
WHERE state IN ('succeeded', 'dead', 'expired')
  AND finished_at > now() - interval '1 hour' AND finished_at <= now()
GROUP BY 1, 2
ORDER BY 1, 2
"""

# One page of jobs, newest first, after the keyset cursor `before`. `state` and `batch`
# pick the index that drives the scan (jobs_rare_state_idx walks a dead, cancelled or
# expired state in id order, jobs_running_idx the running jobs,
# jobs_batch_idx one batch, the primary key everything); `scan` bounds how many of those
# rows are read, and queue, task and args filter inside those candidates. So a page never
# reads more than `scan` rows, however rare its matches: when the candidates run out before
# the page is full, `scanned_to` (the last id read) is where the next page goes on looking.
job_page = """
WITH candidates AS (
    SELECT id, queue, task, state, attempt, max_attempts, priority, run_at, created_at,
           finished_at, args, errors
    FROM {schema}.jobs
    WHERE (%(state)s::text IS NULL OR state = %(state)s)
      AND (%(batch)s::bigint IS NULL OR batch_id = %(batch)s)
      AND (%(before)s::bigint IS NULL OR id < %(before)s)
    ORDER BY id DESC
    LIMIT %(scan)s
),
matched AS (
    SELECT * FROM candidates
    WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
      AND (%(task)s::text IS NULL OR task = %(task)s)
      AND (%(args)s::jsonb IS NULL OR args @> %(args)s)
      AND (%(key)s::text IS NULL OR args ? %(key)s)
    ORDER BY id DESC
    LIMIT %(limit)s
)
-- One row per match, each carrying how far the search went; no match: one row of NULLs
-- that still says so.
SELECT m.id, m.queue, m.task, m.state, m.attempt, m.max_attempts, m.priority, m.run_at,
       m.created_at, m.finished_at,
       -- a preview only: a page never carries a megabyte of args per row
       left(m.args::text, 160) AS args_preview,
       m.errors->-1->>'type' AS last_error_type,
       left(m.errors->-1->>'message', 200) AS last_error,
       s.scanned_to, s.scanned
FROM (SELECT min(id) AS scanned_to, count(*) AS scanned FROM candidates) AS s
LEFT JOIN matched AS m ON true
ORDER BY m.id DESC
"""

# How many jobs the same filters match, up to `cap` (a bulk action's confirmation shows
# the count; past the cap it says "more than"), and the newest matching id: the action
# then touches only jobs that existed when the operator confirmed.
job_count_matching = """
SELECT count(*) AS matching, max(id) AS newest FROM (
    SELECT id FROM {schema}.jobs
    WHERE (%(state)s::text IS NULL OR state = %(state)s)
      AND (%(batch)s::bigint IS NULL OR batch_id = %(batch)s)
      AND (%(queue)s::text IS NULL OR queue = %(queue)s)
      AND (%(task)s::text IS NULL OR task = %(task)s)
      AND (%(args)s::jsonb IS NULL OR args @> %(args)s)
      AND (%(key)s::text IS NULL OR args ? %(key)s)
      AND (%(upto)s::bigint IS NULL OR id <= %(upto)s)
    ORDER BY id DESC
    LIMIT %(cap)s
) AS m
"""

# The ids a bulk action works on, newest first from `upto`, a chunk at a time.
job_ids_matching = """
SELECT id FROM {schema}.jobs
WHERE (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(batch)s::bigint IS NULL OR batch_id = %(batch)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(args)s::jsonb IS NULL OR args @> %(args)s)
  AND (%(key)s::text IS NULL OR args ? %(key)s)
  AND id <= %(upto)s
ORDER BY id DESC
LIMIT %(limit)s
"""

# One job with everything the detail page shows: its worker (while it holds the job's
# lease) and its batch. args is sent as text, cut at `args_max` characters; its full size
# tells the page whether it was cut.
job_detail = """
SELECT job.id, job.queue, job.task, job.state, job.priority, job.attempt, job.max_attempts,
       job.recoveries, job.run_at, job.expires_at, job.created_at, job.started_at,
       job.finished_at, job.lease_expires_at, job.lease_expires_at - now() AS lease_left,
       job.worker_id, job.unique_key, job.concurrency_key, job.batch_id, job.errors,
       job.result::text AS result, job.meta::text AS meta,
       job.progress::text AS progress, job.checkpoint::text AS checkpoint,
       left(job.args::text, %(args_max)s) AS args, octet_length(job.args::text) AS args_size,
       w.host AS worker_host, w.pid AS worker_pid, w.state AS worker_state,
       now() - w.heartbeat_at AS worker_silent,
       b.description AS batch_description, b.state AS batch_state, b.total AS batch_total,
       b.pending AS batch_pending, b.succeeded AS batch_succeeded, b.dead AS batch_dead,
       now() AS now
FROM {schema}.jobs AS job
LEFT JOIN {schema}.workers AS w ON w.id = job.worker_id
LEFT JOIN {schema}.batches AS b ON b.id = job.batch_id
WHERE job.id = %(id)s
"""

# The full args of one job, for the download link of a job whose args were cut.
job_args = """
SELECT args::text FROM {schema}.jobs WHERE id = %(id)s
"""

# One page of batches, newest first (primary key), or the children of one batch
# (batches_parent_idx), with the events their callbacks wait for and their child count.
batch_page = """
SELECT b.id, b.parent_id, b.description, b.state, b.total, b.pending, b.succeeded,
       b.failed, b.dead, b.children_pending, b.children_incomplete, b.created_at,
       b.completed_at, b.succeeded_at, b.died_at,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('event', cb->>'event',
                                                     'task', cb->>'task')), '[]')
        FROM jsonb_array_elements(b.callbacks) AS cb) AS callbacks,
       (SELECT count(*) FROM {schema}.batches AS c WHERE c.parent_id = b.id) AS children
FROM {schema}.batches AS b
WHERE (%(parent)s::bigint IS NULL OR b.parent_id = %(parent)s)
  AND (%(before)s::bigint IS NULL OR b.id < %(before)s)
ORDER BY b.id DESC
LIMIT %(limit)s
"""

# One batch and the chain of its parents, innermost first (a nested batch shows where it
# sits). The depth bound stops a cycle written by hand.
batch_lineage = """
WITH RECURSIVE chain AS (
    SELECT b.*, 0 AS depth FROM {schema}.batches AS b WHERE b.id = %(id)s
    UNION ALL
    SELECT p.*, chain.depth + 1 FROM {schema}.batches AS p
    JOIN chain ON p.id = chain.parent_id
    WHERE chain.depth < 20
)
SELECT id, parent_id, description, state, total, pending, succeeded, failed, dead,
       children_pending, children_incomplete, created_at, completed_at, succeeded_at,
       died_at, callbacks, depth,
       (SELECT count(*) FROM {schema}.batches AS c WHERE c.parent_id = chain.id) AS children
FROM chain
ORDER BY depth
"""

# Workers that have not stopped (and stopped ones from the last hour), each with the jobs
# it runs now (jobs_running_idx), the first `jobs` of them listed.
worker_page = """
SELECT w.id, w.host, w.pid, w.state, w.queues, w.concurrency, w.version, w.started_at,
       w.heartbeat_at, now() - w.heartbeat_at AS silent,
       make_interval(secs => coalesce((w.meta->>'lease')::float8, 30)) AS lease,
       r.running, coalesce(r.jobs, '[]') AS jobs
FROM {schema}.workers AS w
LEFT JOIN LATERAL (
    SELECT count(*) AS running,
           jsonb_agg(jsonb_build_object('id', j.id, 'task', j.task, 'queue', j.queue,
                                        'started_at', j.started_at)
                     ORDER BY j.id) FILTER (WHERE j.n <= %(jobs)s) AS jobs
    FROM (SELECT id, task, queue, started_at, row_number() OVER (ORDER BY id) AS n
          FROM {schema}.jobs WHERE state = 'running' AND worker_id = w.id) AS j
) AS r ON true
WHERE w.state <> 'stopped' OR w.heartbeat_at > now() - interval '1 hour'
ORDER BY w.id
"""
