"""SQL: the ``workers`` table (registration, state, the supervisor's checks)."""

from __future__ import annotations

# meta.lease: `pgjobs status` calls a worker stale once it has been silent that long.
# meta.tasks: the task names this worker can run (`pgjobs jobs why` names a job whose
# task no live worker knows).
worker_register = """
INSERT INTO {schema}.workers (host, pid, queues, concurrency, state, version, meta)
VALUES (%(host)s, %(pid)s, %(queues)s, %(concurrency)s, 'running', %(version)s,
        jsonb_build_object('lease', %(lease)s::float8, 'tasks', to_jsonb(%(tasks)s::text[]),
                           'isolates_suspects', %(isolates)s::boolean))
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

# A starting worker's tasks, into the registry (revision 0012) that pgjobs.enqueue() in
# SQL and `pgjobs jobs why` read: its definition replaces the row's (the latest worker
# started wins a mixed deploy), and the task is seen now. Rows are taken in name order,
# so two workers starting at once wait for each other instead of deadlocking.
task_register = """
INSERT INTO {schema}.tasks AS t
    (name, queue, priority, max_attempts, run_at, run_in, expires_at, expires_in,
     unique_for, unique_key, unique_until, on_duplicate, concurrency_key,
     concurrency_key_parts, concurrency_limit, rate_limit, rate_period)
SELECT r.name, r.queue, r.priority, r.max_attempts, r.run_at, r.run_in, r.expires_at,
       r.expires_in, r.unique_for, r.unique_key, r.unique_until, r.on_duplicate,
       r.concurrency_key,
       -- each task's parts travel as one JSON array (a text[][] cannot be ragged)
       CASE WHEN r.key_parts IS NOT NULL
            THEN ARRAY(SELECT jsonb_array_elements_text(r.key_parts::jsonb)) END,
       r.concurrency_limit, r.rate_limit, r.rate_period
FROM unnest(%(name)s::text[], %(queue)s::text[], %(priority)s::smallint[],
            %(max_attempts)s::integer[], %(run_at)s::timestamptz[], %(run_in)s::interval[],
            %(expires_at)s::timestamptz[], %(expires_in)s::interval[],
            %(unique_for)s::interval[], %(unique_key)s::text[], %(unique_until)s::text[],
            %(on_duplicate)s::text[], %(concurrency_key)s::text[], %(key_parts)s::text[],
            %(concurrency_limit)s::integer[], %(rate_limit)s::integer[],
            %(rate_period)s::interval[])
     AS r(name, queue, priority, max_attempts, run_at, run_in, expires_at, expires_in,
          unique_for, unique_key, unique_until, on_duplicate, concurrency_key, key_parts,
          concurrency_limit, rate_limit, rate_period)
ORDER BY r.name
ON CONFLICT (name) DO UPDATE
SET queue = excluded.queue, priority = excluded.priority,
    max_attempts = excluded.max_attempts, run_at = excluded.run_at,
    run_in = excluded.run_in, expires_at = excluded.expires_at,
    expires_in = excluded.expires_in, unique_for = excluded.unique_for,
    unique_key = excluded.unique_key, unique_until = excluded.unique_until,
    on_duplicate = excluded.on_duplicate, concurrency_key = excluded.concurrency_key,
    concurrency_key_parts = excluded.concurrency_key_parts,
    concurrency_limit = excluded.concurrency_limit, rate_limit = excluded.rate_limit,
    rate_period = excluded.rate_period, updated_at = now(), last_seen_at = now()
"""

# A task's definition, for a producer that enqueues it by name without its code.
task_definition = """
SELECT queue, priority, max_attempts, run_at, run_in, expires_at, expires_in, unique_for,
       unique_key, unique_until, on_duplicate, concurrency_key, concurrency_limit,
       rate_limit, rate_period
FROM {schema}.tasks WHERE name = %(name)s
"""
