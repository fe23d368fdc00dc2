"""SQL: enqueue. Job inserts (one job, many jobs of one task, jobs with unique keys or a
batch, and the reservation that precedes a COPY), and reliable push's receipts.

Every statement here is composed once per schema by ``db.queries.Queries``: ``{schema}``
is bound to the quoted schema name, and literal braces are doubled (``'{{}}'``).
"""

from __future__ import annotations

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
                           concurrency_key, concurrency_limit, rate_limit, rate_period, meta)
SELECT %(queue)s, %(task)s, %(args)s::jsonb, %(priority)s, %(max_attempts)s, t.run_at,
       -- expires_in counts from the job's run_at, as in Sidekiq
       coalesce(%(expires_at)s::timestamptz, t.run_at + %(expires_in)s::interval),
       %(concurrency_key)s, %(concurrency_limit)s, %(rate_limit)s, %(rate_period)s::interval,
       -- what enqueue middleware stored (a trace context, a tenant); NULL: none
       coalesce(%(meta)s::jsonb, '{{}}')
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
                               concurrency_key, concurrency_limit, rate_limit, rate_period,
                               meta)
    SELECT %(queue)s, %(task)s, r.job->0, %(priority)s, %(max_attempts)s, timed.due,
           coalesce(%(expires_at)s::timestamptz, timed.due + %(expires_in)s::interval),
           -- a row without a key has no per-key limit at all
           r.job->>1, limits.concurrency_limit, limits.rate_limit, limits.rate_period,
           coalesce(%(meta)s::jsonb, '{{}}')
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
# their rows with binary COPY, which the server takes faster than rows unpacked from a
# JSON parameter once the calls are large enough to pay for two more round trips. COPY
# returns nothing, so this statement first draws the jobs' ids (in input order), computes
# the shared run_at and expires_at from the database clock as job_insert_many does,
# counts the jobs into their batch (refusing a batch that already succeeded), and
# notifies; all of it takes effect only if the COPY that follows in the same transaction
# does.
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
                    batch_id, concurrency_key, concurrency_limit, rate_limit, rate_period,
                    meta)
FROM STDIN (FORMAT BINARY)
"""

# Enqueue with unique keys and/or into a batch, for one or many rows. Used only when a
# job needs it, so the plain statements above stay minimal.
# - Job ids are drawn first (nextval), so a unique hold can name its job before the job
#   row exists, and the row is inserted only if the hold was won.
# - A live hold of another job is never locked: ON CONFLICT DO NOTHING, and the holder's
#   id is read from this statement's snapshot (`existing`). A duplicate enqueue held open
#   by its caller therefore never makes the holder's completion (which deletes the hold)
#   wait for that caller. A holder committed after the snapshot is not seen: its row
#   comes back with a NULL id, and the caller reads it with unique_key_holders, a new
#   statement with a new snapshot. (Under REPEATABLE READ and SERIALIZABLE, PostgreSQL
#   raises a serialization failure there instead: retry the transaction.)
# - An expired hold (unique_for elapsed) is taken over: locked in key order, the expiry
#   re-checked on its latest version, then given to the new job.
# - A rolled-back holder's key row vanishes with it; a concurrent enqueuer waiting on that
#   key (DO NOTHING waits for an uncommitted insert of the same key) then wins it.
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
expired AS (
    SELECT u.key FROM {schema}.unique_keys AS u
    WHERE u.key IN (SELECT unique_key FROM rows) AND u.expires_at <= now()
    ORDER BY u.key
    FOR UPDATE
),
taken AS (
    UPDATE {schema}.unique_keys AS u
    SET job_id = r.new_id, release_on = r.unique_until, created_at = now(),
        expires_at = r.due + r.unique_for
    FROM rows AS r
    WHERE u.key = r.unique_key AND u.key IN (SELECT key FROM expired)
    RETURNING u.key, u.job_id
),
inserted_holds AS (
    INSERT INTO {schema}.unique_keys AS u (key, job_id, expires_at, release_on)
    SELECT unique_key, new_id, due + unique_for, unique_until
    FROM rows
    WHERE unique_key IS NOT NULL AND unique_key NOT IN (SELECT key FROM taken)
    ORDER BY unique_key
    ON CONFLICT (key) DO NOTHING
    RETURNING key, job_id
),
held AS (
    SELECT key, job_id FROM taken UNION ALL SELECT key, job_id FROM inserted_holds
),
existing AS (
    SELECT u.key, u.job_id FROM {schema}.unique_keys AS u
    WHERE u.key IN (SELECT unique_key FROM rows) AND u.key NOT IN (SELECT key FROM held)
      AND (u.expires_at IS NULL OR u.expires_at > now())
),
winners AS (
    SELECT rows.* FROM rows LEFT JOIN held ON held.key = rows.unique_key
    WHERE rows.unique_key IS NULL OR held.job_id = rows.new_id
),
inserted AS (
    INSERT INTO {schema}.jobs
        (id, queue, task, args, priority, max_attempts, run_at, expires_at, unique_key, batch_id,
         concurrency_key, concurrency_limit, rate_limit, rate_period, meta)
    OVERRIDING SYSTEM VALUE
    SELECT new_id, queue, task, args, priority, max_attempts, due,
           coalesce(expires_at, due + expires_in), unique_key, %(batch_id)s::bigint,
           concurrency_key, concurrency_limit, rate_limit, rate_period,
           coalesce(%(meta)s::jsonb, '{{}}')
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
-- id: the new job, or the holder's (NULL: a holder this snapshot cannot see)
SELECT coalesce(held.job_id, existing.job_id,
                CASE WHEN rows.unique_key IS NULL THEN rows.new_id END) AS id,
       rows.unique_key IS NOT NULL AND held.job_id IS NULL AS duplicate
FROM rows
LEFT JOIN held ON held.key = rows.unique_key
LEFT JOIN existing ON existing.key = rows.unique_key,
     (SELECT count(*) FROM notified) n, (SELECT count(*) FROM counted) c
ORDER BY rows.ord
"""

# The live holders of unique keys, in a new snapshot: for the rows of job_insert_special
# whose holder committed after that statement's snapshot.
unique_key_holders = """
SELECT key, job_id FROM {schema}.unique_keys
WHERE key = ANY(%(keys)s::text[]) AND (expires_at IS NULL OR expires_at > now())
"""

enqueue_receipt_put = """
INSERT INTO {schema}.enqueue_receipts (key, results) VALUES (%(key)s, %(results)s::jsonb)
"""

enqueue_receipt_get = """
SELECT results FROM {schema}.enqueue_receipts WHERE key = %(key)s
"""
