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
