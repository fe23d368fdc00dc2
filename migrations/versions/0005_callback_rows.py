"""Batch callbacks are inserted as the full job row the Python row builder writes.

``batch_fire`` used to insert a callback job with only its queue, task, args, priority
and attempts, and to notify on a channel it named itself. A callback registered by
``Batch.on_success`` (and friends) now carries the whole row ``task.enqueue`` would
write: run_at or run_in, expires_at or expires_in, the per-key limit columns, and the
notification channel, or none for ``App(notify=False)``. ``batch_fire`` writes exactly
that, and notifies only the channel the callback names, so the channel's name is defined
in one place (pgjobs.core.names), not in SQL too.

Callbacks registered before this revision carry no channel: they are inserted as before
and found by polling (``--poll-interval``, a second by default) rather than woken.

Only a function is replaced: no table is touched, nothing is locked beyond the catalog.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE OR REPLACE FUNCTION batch_fire(b batches, event text) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    notified bigint;
BEGIN
    WITH due AS (
        SELECT cb, t.run_at
        FROM jsonb_array_elements(b.callbacks) AS cb
        -- run_in (seconds) counts from the moment the event fires, on the database clock
        CROSS JOIN LATERAL (
            SELECT coalesce((cb->>'run_at')::timestamptz,
                            now() + make_interval(secs => coalesce((cb->>'run_in')::float8, 0)))
                   AS run_at
        ) AS t
        WHERE cb->>'event' = event
    ),
    inserted AS (
        INSERT INTO jobs (queue, task, args, priority, max_attempts, run_at, expires_at,
                          concurrency_key, concurrency_limit, rate_limit, rate_period, meta)
        SELECT cb->>'queue', cb->>'task', cb->'args',
               coalesce((cb->>'priority')::smallint, 0),
               coalesce((cb->>'max_attempts')::integer, 25),
               run_at,
               -- expires_in counts from the job's run_at, as for any job
               coalesce((cb->>'expires_at')::timestamptz,
                        run_at + make_interval(secs => (cb->>'expires_in')::float8)),
               cb->>'concurrency_key', (cb->>'concurrency_limit')::integer,
               (cb->>'rate_limit')::integer,
               make_interval(secs => (cb->>'rate_period')::float8),
               jsonb_build_object('batch', jsonb_build_object(
                   'id', b.id, 'event', event, 'description', b.description,
                   'total', b.total, 'pending', b.pending, 'succeeded', b.succeeded,
                   'failed', b.failed, 'dead', b.dead))
        FROM due
    )
    -- (inserted is data-modifying: it runs to completion although nothing reads it.)
    -- One notification per channel and queue of the callbacks due now, sent at commit
    -- like an enqueue's; a callback without a channel (notify=False) wakes nobody.
    SELECT count(pg_notify(channel, queue)) INTO notified
    FROM (SELECT DISTINCT cb->>'channel' AS channel, cb->>'queue' AS queue
          FROM due WHERE run_at <= now() AND cb->>'channel' IS NOT NULL) AS n;
END $$;
"""

DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION batch_fire(b batches, event text) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    queue_name text;
BEGIN
    FOR queue_name IN
        INSERT INTO jobs (queue, task, args, priority, max_attempts, meta)
        SELECT cb->>'queue', cb->>'task', cb->'args',
               coalesce((cb->>'priority')::smallint, 0),
               coalesce((cb->>'max_attempts')::integer, 25),
               jsonb_build_object('batch', jsonb_build_object(
                   'id', b.id, 'event', event, 'description', b.description,
                   'total', b.total, 'pending', b.pending, 'succeeded', b.succeeded,
                   'failed', b.failed, 'dead', b.dead))
        FROM jsonb_array_elements(b.callbacks) AS cb
        WHERE cb->>'event' = event
        RETURNING queue
    LOOP
        PERFORM pg_notify('pgjobs_' || current_schema(), queue_name);
    END LOOP;
END $$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
