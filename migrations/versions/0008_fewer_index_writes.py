"""One index write fewer per job: the dashboard's (state, id) index covers only the
states that need it.

``jobs_state_id_idx`` (state, id), added by 0006 for the dashboard, had an entry for
every job, and every change of state (the claim, the completion) wrote a new one, as
well as the insert: three index writes per job on the hot path, for lists that only the
rare states need. The common states have an index of their own that already serves
their lists (available: the primary key walked backwards finds them among the newest
jobs, or ``jobs_claim_idx``; running: ``jobs_running_idx``; succeeded: the bulk of the
table, so the primary key finds a page of them at once). The rare ones (dead, cancelled,
expired: "the dead jobs among a million succeeded ones") are exactly what the new
partial index holds, so a job that succeeds never enters it.

Measured with benchmarks/layouts.py (claim and completion, server CPU per job): the
partial index saves about 9% of the server's work per job and a sixth of the WAL.

Locks: CREATE INDEX (not CONCURRENTLY: alembic runs the revision in a transaction)
blocks writes to ``jobs`` while it reads the table once; dropping the old index is
instant. On a large table, create ``jobs_rare_state_idx`` CONCURRENTLY by hand first
(the statement below is in docs/migrations.md); this revision's IF NOT EXISTS then
skips it, and only the quick DROP remains.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE INDEX IF NOT EXISTS jobs_rare_state_idx ON jobs (state, id)
    WHERE state IN ('dead', 'cancelled', 'expired');
DROP INDEX IF EXISTS jobs_state_id_idx;
"""

DOWNGRADE = """
CREATE INDEX IF NOT EXISTS jobs_state_id_idx ON jobs (state, id);
DROP INDEX IF EXISTS jobs_rare_state_idx;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
