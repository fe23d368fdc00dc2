"""SQL: what ``pgjobs status`` and ``pgjobs exporter`` read, from pgjobs' tables and
PostgreSQL's own views."""

from __future__ import annotations

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
SELECT coalesce(q.name, c.queue) AS queue, coalesce(q.paused, false) AS paused,
       coalesce(c.available, 0) AS available, coalesce(c.scheduled, 0) AS scheduled,
       coalesce(c.retrying, 0) AS retrying, coalesce(c.running, 0) AS running,
       coalesce(c.dead, 0) AS dead, c.oldest_wait
FROM counts AS c
FULL JOIN {schema}.queues AS q ON q.name = c.queue
ORDER BY 1
"""

# Jobs of tasks that the live workers of their queue do not know (a producer's typo, or
# producers deployed ahead of the workers), per queue and task, with the conditions of
# why()'s unknown_task: those waiting for a worker that has the task (workers that lack it
# hand them back unrun, until their --unknown-task-grace), and those dead because none
# came (their latest error is UnknownTask); and when a live worker last knew the task (the
# registry; NULL: never). A queue no live worker serves is queue_unserved's warning, not
# this one. A live worker that does not list its tasks (workers.meta.tasks) is assumed to
# know every task, as why() assumes. Jobs are grouped before workers are looked at: one
# probe per queue and task, not per job.
status_unknown_tasks = """
WITH live AS (
    SELECT w.queues, w.meta FROM {schema}.workers AS w
    WHERE w.state = 'running'
      AND w.heartbeat_at > now() - make_interval(secs => coalesce((w.meta->>'lease')::float8, 30))
),
counted AS (
    SELECT queue, task, count(*) FILTER (WHERE state = 'available') AS waiting,
           count(*) FILTER (WHERE state = 'dead') AS dead
    FROM {schema}.jobs
    WHERE state = 'available'
       OR (state = 'dead' AND errors -> -1 ->> 'type' = 'pgjobs.UnknownTask')
    GROUP BY queue, task
)
SELECT c.queue, c.task, c.waiting, c.dead, t.last_seen_at
FROM counted AS c LEFT JOIN {schema}.tasks AS t ON t.name = c.task
WHERE EXISTS (SELECT FROM live WHERE c.queue = ANY(live.queues))
  AND NOT EXISTS (SELECT FROM live WHERE c.queue = ANY(live.queues)
                                     AND (NOT live.meta ? 'tasks' OR live.meta->'tasks' ? c.task))
ORDER BY c.queue, c.task
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

# Dead and live row estimates of pgjobs' tables, and when vacuum last ran on them. A table
# that has not been vacuumed or analysed yet has no row here.
status_tables = """
SELECT relname AS table, n_live_tup AS live_tuples, n_dead_tup AS dead_tuples,
       greatest(last_autovacuum, last_vacuum) AS last_vacuum,
       autovacuum_count + vacuum_count AS vacuum_count
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
       coalesce(nullif(application_name, ''), backend_type) AS application_name, state,
       usename AS user,
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

# The database's clock: every age `pgjobs status` shows is measured against it.
status_now = """
SELECT now() AS now
"""

# What `pgjobs exporter` serves, once per scrape.
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
status_gauges = """
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
