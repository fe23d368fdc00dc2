"""Batch counters for less: the trigger no longer runs for a claim, nor for the workers'
plain successes, which count themselves per batch.

``jobs_batch_progress`` (BEFORE UPDATE OF state, per row) fired for every change of state
of a job in a batch and appended one ``batch_deltas`` row per job, which the fold then
deleted: a PL/pgSQL call, a row and an index entry written and deleted again, per job.

- **Claims.** The claim's ``available`` -> ``running`` moves no counter (a running job is
  as pending as an available one, and only a running job can fail), so the call only
  cost the claim a function per batch job. The WHEN clause now leaves it out.
- **Plain successes.** The workers' common flush (``job_complete_succeeded``) knows what
  each of its rows does to the counters: a running job succeeds. It appends one delta row
  per batch and sets ``pgjobs_batches.counted_by_statement`` for its own transaction, which
  the WHEN clause reads to leave the trigger out. Every other change of state (failures,
  retries, reclaims, expiries, ``complete(conn)``, operator actions, SQL by hand) still
  goes through the trigger, one delta per job.

Locks: CREATE OR REPLACE TRIGGER takes SHARE ROW EXCLUSIVE on ``jobs`` briefly (writes
wait for it, reads do not); nothing is rewritten.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE OR REPLACE TRIGGER jobs_batch_progress BEFORE UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.batch_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state
                       AND NOT (OLD.state = 'available' AND NEW.state = 'running')
                       AND current_setting('pgjobs_batches.counted_by_statement', true)
                           IS DISTINCT FROM 'on')
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
