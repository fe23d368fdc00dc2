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
job_insert = """
INSERT INTO {schema}.jobs (queue, task, args, priority, max_attempts, run_at, expires_at)
SELECT %(queue)s, %(task)s, %(args)s::jsonb, %(priority)s, %(max_attempts)s, t.run_at,
       -- expires_in counts from the job's run_at, as in Sidekiq
       coalesce(%(expires_at)s::timestamptz, t.run_at + %(expires_in)s::interval)
FROM (SELECT coalesce(%(run_at)s::timestamptz, now() + %(run_in)s::interval) AS run_at) t
RETURNING id, pg_notify(%(channel)s, %(queue)s)
"""

# Many jobs of one task (one queue, one set of options) in one statement: the options are
# scalars and the args travel as one JSON array, a single text parameter (an array
# parameter is encoded element by element by the driver, in Python, which profiled at
# twice the cost of validating the rows). Identities are drawn in input order, and one
# notification goes out.
job_insert_many = """
WITH timed AS (
    SELECT coalesce(%(run_at)s::timestamptz, now() + %(run_in)s::interval) AS due
),
jobs AS (
    INSERT INTO {schema}.jobs (queue, task, args, priority, max_attempts, run_at, expires_at)
    SELECT %(queue)s, %(task)s, a.args, %(priority)s, %(max_attempts)s, timed.due,
           coalesce(%(expires_at)s::timestamptz, timed.due + %(expires_in)s::interval)
    FROM jsonb_array_elements(%(args)s::jsonb) WITH ORDINALITY AS a(args, ord), timed
    ORDER BY a.ord
    RETURNING id
),
notified AS (
    SELECT pg_notify(%(channel)s, %(queue)s)
)
SELECT id FROM jobs, (SELECT count(*) FROM notified) n ORDER BY id
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
# - batch_add_jobs counts the jobs into their batch once per statement (and refuses a
#   batch that already succeeded).
job_insert_special = """
WITH rows AS (
    SELECT r.*, nextval(%(sequence)s::regclass) AS new_id,
           coalesce(r.run_at, now() + r.run_in) AS due
    FROM unnest(
        %(queue)s::text[], %(task)s::text[], %(args)s::jsonb[], %(priority)s::smallint[],
        %(max_attempts)s::integer[], %(run_at)s::timestamptz[], %(run_in)s::interval[],
        %(expires_at)s::timestamptz[], %(expires_in)s::interval[], %(unique_key)s::text[],
        %(unique_for)s::interval[], %(unique_until)s::text[]
    ) WITH ORDINALITY AS r(queue, task, args, priority, max_attempts, run_at, run_in,
                           expires_at, expires_in, unique_key, unique_for, unique_until, ord)
),
held AS (
    INSERT INTO {schema}.unique_keys AS u (key, job_id, expires_at, release_on)
    SELECT unique_key, new_id, due + unique_for, unique_until
    FROM rows WHERE unique_key IS NOT NULL
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
        (id, queue, task, args, priority, max_attempts, run_at, expires_at, unique_key, batch_id)
    OVERRIDING SYSTEM VALUE
    SELECT new_id, queue, task, args, priority, max_attempts, due,
           coalesce(expires_at, due + expires_in), unique_key, %(batch_id)s::bigint
    FROM winners ORDER BY ord
    RETURNING id, queue
),
counted AS (
    SELECT {schema}.batch_add_jobs(%(batch_id)s::bigint, (SELECT count(*) FROM inserted))
    WHERE %(batch_id)s::bigint IS NOT NULL
),
notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM inserted) q
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
batch_add_callback = """
UPDATE {schema}.batches SET callbacks = callbacks || jsonb_build_array(%(callback)s::jsonb)
WHERE id = %(id)s AND succeeded_at IS NULL
RETURNING id
"""

batch_get = """
SELECT id, parent_id, description, state, total, pending, succeeded, failed, dead,
       children_pending, children_incomplete, created_at, completed_at, succeeded_at, died_at
FROM {schema}.batches WHERE id = %(id)s
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
# - synchronous_commit off for this transaction only (set_config(..., true) is SET LOCAL,
#   so it holds under any pooler): the claim returns without waiting for its WAL flush.
#   A claim lost in a server crash only makes the job claimable again (at-least-once), and
#   any durable write that follows it - a completion, the handler's own transaction -
#   flushes the WAL up to and past it first. See docs/benchmarks.md, "Asynchronous claims".
job_claim = """
WITH candidates AS (
    SELECT j.id
    FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at
        FROM {schema}.jobs
        WHERE queue = q.name AND state = 'available' AND run_at <= now()
          AND (expires_at IS NULL OR expires_at > now())
        ORDER BY priority, run_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) j
    ORDER BY j.priority, j.run_at, j.id
    LIMIT %(limit)s
)
UPDATE {schema}.jobs AS job
SET state = 'running',
    attempt = job.attempt + 1,
    lease_token = gen_random_uuid(),
    lease_expires_at = clock_timestamp() + %(lease)s::interval,
    worker_id = %(worker_id)s,
    started_at = clock_timestamp()
FROM candidates, (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
WHERE job.id = candidates.id
RETURNING job.id, job.task, job.queue, job.args, job.attempt, job.max_attempts,
          job.lease_token, job.recoveries, job.batch_id, job.meta
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
              WHERE created_at < now() - interval '1 day' LIMIT %(limit)s)
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
    "job_insert_special",
    "enqueue_receipt_put",
    "enqueue_receipt_get",
    "batch_insert",
    "batch_add_callback",
    "batch_get",
    "job_expire",
    "unique_key_prune",
    "enqueue_receipt_prune",
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
        self.sequence = sql.Identifier(schema, "jobs_id_seq").as_string(None)
        for name in NAMES:
            setattr(self, name, compose(globals()[name], schema))

    job_insert: sql.Composed
    job_insert_many: sql.Composed
    job_insert_special: sql.Composed
    enqueue_receipt_put: sql.Composed
    enqueue_receipt_get: sql.Composed
    batch_insert: sql.Composed
    batch_add_callback: sql.Composed
    batch_get: sql.Composed
    job_expire: sql.Composed
    unique_key_prune: sql.Composed
    enqueue_receipt_prune: sql.Composed
    job_claim: sql.Composed
    job_heartbeat: sql.Composed
    job_complete_many: sql.Composed
    job_complete_fenced: sql.Composed
    job_reclaim: sql.Composed
    worker_register: sql.Composed
    worker_set_state: sql.Composed
    job_get: sql.Composed
