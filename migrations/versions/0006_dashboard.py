"""Indexes for the dashboard's lists and counts, fast at a million jobs.

- ``jobs_state_id_idx`` (state, id): the jobs page lists one state newest first with a
  keyset cursor on id (``WHERE state = $1 AND id < $2 ORDER BY id DESC``). Without it a
  list of a rare state (the dead jobs among a million succeeded ones) walks the primary
  key backwards over every row of the other states. It also serves `pgjobs jobs list
  --state` and the per-state counts. Every insert and every change of state adds one
  entry; the heartbeat, which changes no indexed column, stays a HOT update.
- ``jobs_retrying_idx`` (queue, run_at) of available jobs that have failed before: the
  overview counts jobs waiting for a retry, and the throughput chart reads their errors,
  without reading the whole backlog. Only failing jobs have an entry.
- ``jobs_finished_state_idx`` (state, finished_at) gains ``INCLUDE (queue, attempt)``:
  the overview counts the last hour's successes and the dead jobs per queue from the
  index alone, without a heap visit per finished job (a second per page at a million
  jobs otherwise). Retention reads it as before. It is rebuilt, unless it was already
  rebuilt by hand (``CREATE INDEX CONCURRENTLY`` under another name, drop the old one,
  rename).

CREATE INDEX (not CONCURRENTLY: alembic runs the revision in a transaction) blocks writes
to ``jobs`` while it reads the table once; on a large table, create the indexes
CONCURRENTLY by hand first (the names are then taken and this revision's
CREATE INDEX IF NOT EXISTS skips them).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE INDEX IF NOT EXISTS jobs_state_id_idx ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_retrying_idx ON jobs (queue, run_at)
    WHERE state = 'available' AND attempt > 0;
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_indexes
                   WHERE schemaname = current_schema() AND indexname = 'jobs_finished_state_idx'
                     AND indexdef LIKE '%INCLUDE (queue, attempt)%') THEN
        DROP INDEX IF EXISTS jobs_finished_state_idx;
        CREATE INDEX jobs_finished_state_idx ON jobs (state, finished_at)
            INCLUDE (queue, attempt) WHERE finished_at IS NOT NULL;
    END IF;
END $$;
"""

DOWNGRADE = """
DROP INDEX IF EXISTS jobs_finished_state_idx;
CREATE INDEX jobs_finished_state_idx ON jobs (state, finished_at) WHERE finished_at IS NOT NULL;
DROP INDEX IF EXISTS jobs_retrying_idx;
DROP INDEX IF EXISTS jobs_state_id_idx;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
