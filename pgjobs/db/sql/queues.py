"""SQL: run-time queue settings (``queues`` table): pause, resume, limits."""

from __future__ import annotations

# Pause or resume; a queue needs no row until an operator sets something. The NOTIFY
# (transactional, sent at commit) wakes idle workers so a resumed queue drains at once.
queue_set_paused = """
WITH q AS (
    INSERT INTO {schema}.queues AS q (name, paused) VALUES (%(name)s, %(paused)s)
    ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = now()
    RETURNING q.name
)
SELECT name, pg_notify(%(channel)s, name) AS notified FROM q
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
SELECT name, concurrency_limit, rate_limit, rate_period,
       pg_notify(%(channel)s, name) AS notified
FROM q
"""

# Every queue with settings or live jobs. Counting available jobs reads the backlog, so
# this is for the command line, not for a hot path.
queue_list = """
SELECT coalesce(s.name, d.queue) AS name, coalesce(s.paused, false) AS paused,
       s.concurrency_limit, s.rate_limit, s.rate_period,
       coalesce(d.available, 0) AS available, coalesce(d.running, 0) AS running
FROM {schema}.queues AS s
FULL JOIN (
    SELECT queue, count(*) FILTER (WHERE state = 'available') AS available,
           count(*) FILTER (WHERE state = 'running') AS running
    FROM {schema}.jobs WHERE state IN ('available', 'running')
    GROUP BY queue
) AS d ON d.queue = s.name
ORDER BY 1
"""
