"""The batch counters' trigger no longer runs for a claim.

``jobs_batch_progress`` (BEFORE UPDATE OF state, per row) fired for every change of state
of a job in a batch, the claim's ``available`` -> ``running`` included. That change moves
no counter (a running job is as pending as an available one, and only a ``running`` job
can fail), so the call only cost the claim a PL/pgSQL function per batch job: the claims
of a drain of jobs in one batch took 10-14 ms against 6-7 ms without a batch
(benchmarks/profile_drain.py --batch). The trigger's WHEN clause now leaves that
transition out; every other change of state still counts, also from SQL by hand.

Locks: CREATE OR REPLACE TRIGGER takes SHARE ROW EXCLUSIVE on ``jobs`` briefly (writes
wait for it, reads do not); nothing is rewritten.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE OR REPLACE TRIGGER jobs_batch_progress BEFORE UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.batch_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state
                       AND NOT (OLD.state = 'available' AND NEW.state = 'running'))
    EXECUTE FUNCTION jobs_batch_progress();
"""

DOWNGRADE = """
CREATE OR REPLACE TRIGGER jobs_batch_progress BEFORE UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.batch_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION jobs_batch_progress();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
