"""SQL: the queue-wide gauges ``pgjobs exporter`` serves, read once per scrape."""

from __future__ import annotations

# Every gauge in one statement (one round trip, one snapshot), as rows of (metric, queue,
# state, value); a label that does not apply is NULL.
# - jobs: every job by queue and state. This counts the whole table, finished jobs kept
#   by retention included: the reason one exporter serves the fleet, not every worker.
# - oldest_available_seconds: how long the oldest due job of each queue has waited (the
#   claim index's range of due rows). 0 for a queue with nothing due, so that an alert
#   on it clears instead of going stale.
# - dead: the dead jobs of each queue.
# - workers: workers that have not stopped and whose last heartbeat is within their
#   lease (workers.meta.lease), by state; a killed worker drops out a lease after it
#   died, as its jobs become reclaimable.
# - batches_pending: batches whose jobs have not all run yet.
metrics_gauges = """
WITH counts AS (
    SELECT queue, state, count(*) AS jobs FROM {schema}.jobs GROUP BY queue, state
),
known AS (
    SELECT queue FROM counts UNION SELECT name FROM {schema}.queues
),
waits AS (
    SELECT queue, extract(epoch FROM now() - min(run_at)) AS seconds
    FROM {schema}.jobs
    WHERE state = 'available' AND run_at <= now()
    GROUP BY queue
)
SELECT 'jobs' AS metric, queue, state, jobs::float8 AS value FROM counts
UNION ALL
SELECT 'oldest_available_seconds', known.queue, NULL,
       greatest(coalesce(waits.seconds, 0), 0)::float8
FROM known LEFT JOIN waits USING (queue)
UNION ALL
SELECT 'dead', known.queue, NULL, coalesce(counts.jobs, 0)::float8
FROM known LEFT JOIN counts ON counts.queue = known.queue AND counts.state = 'dead'
UNION ALL
SELECT 'workers', NULL, state, count(*)::float8
FROM {schema}.workers AS w
WHERE state <> 'stopped'
  AND heartbeat_at > now() - make_interval(secs => coalesce((meta->>'lease')::float8, 30))
GROUP BY state
UNION ALL
SELECT 'batches_pending', NULL, NULL, count(*)::float8
FROM {schema}.batches WHERE state IN ('open', 'pending')
"""
