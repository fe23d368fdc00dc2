"""Retention: an index that lets the pruner delete finished jobs state by state.

``jobs_finished_idx`` (finished_at) becomes ``jobs_finished_state_idx`` (state,
finished_at): each state has its own retention (succeeded and cancelled jobs are kept a
day, dead and expired ones a week), so the pruner reads one state's oldest entries and
stops at that state's cutoff, instead of stepping over a week of dead jobs to reach the
succeeded ones. It also serves "dead jobs of the last hour". A finished job still costs
one entry, as before.

CREATE INDEX (not CONCURRENTLY: alembic runs the revision in a transaction) blocks writes
to ``jobs`` while it reads the finished rows once; on a large table, apply it in a quiet
moment, or create the index CONCURRENTLY by hand first (the name is then taken and this
revision's CREATE INDEX IF NOT EXISTS skips it).

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE INDEX IF NOT EXISTS jobs_finished_state_idx ON jobs (state, finished_at)
    WHERE finished_at IS NOT NULL;
DROP INDEX IF EXISTS jobs_finished_idx;
"""

DOWNGRADE = """
CREATE INDEX IF NOT EXISTS jobs_finished_idx ON jobs (finished_at)
    WHERE finished_at IS NOT NULL;
DROP INDEX IF EXISTS jobs_finished_state_idx;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
