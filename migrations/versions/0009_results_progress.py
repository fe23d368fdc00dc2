"""Results you can wait for; progress and checkpoints.

- ``jobs_done_notify``: when a job reaches a terminal state (succeeded, dead, cancelled,
  expired), a notification on channel ``pgjobs_<schema>_done`` carries its id, so a
  process waiting for it (``Enqueued.wait``, ``App.wait``) wakes at once instead of
  polling. A row trigger with a WHEN clause: claims, heartbeats and retries (which do not
  end a job) do not call it, and it fires for every writer (the worker's flush, a fenced
  completion, ``pgjobs.job_complete``, cancel, expiry, a reclaim past its budget, SQL by
  hand). Notifications are sent at commit, so a waiter never sees a state that rolls back.
- ``jobs.progress`` (a fraction 0..1 or a small JSON object) and ``jobs.checkpoint`` (any
  JSON): what a handler reported through ``current_job().progress()`` and
  ``.checkpoint()``, written with the worker's heartbeat and at the job's end. A retried or
  recovered attempt reads the last checkpoint back. Both unindexed, so the heartbeat stays
  a HOT update.

Locks: ADD COLUMN without a default changes the catalog only (a brief ACCESS EXCLUSIVE
lock, no rewrite); CREATE TRIGGER takes SHARE ROW EXCLUSIVE on ``jobs`` briefly.

Revision ID: 0009
Revises: 0007
"""

from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE jobs ADD COLUMN progress jsonb, ADD COLUMN checkpoint jsonb;

-- The payload is the job's id as text: small and constant, and distinct per job, so
-- PostgreSQL's de-duplication of identical notifications in one transaction never merges
-- two jobs. The channel name follows the schema (pgjobs.core.names.done_channel_for).
CREATE FUNCTION jobs_done_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_notify('pgjobs_' || TG_TABLE_SCHEMA || '_done', NEW.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_done_notify AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.state IN ('succeeded', 'dead', 'cancelled', 'expired')
                       AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION jobs_done_notify();
"""

DOWNGRADE = r"""
DROP TRIGGER jobs_done_notify ON jobs;
DROP FUNCTION jobs_done_notify();
ALTER TABLE jobs DROP COLUMN progress, DROP COLUMN checkpoint;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
