"""Periodic: a ledger of every tick, run-time control (pause, resume, run now), owners.

- ``periodic_ticks``: one row per decision about a schedule's ticks: ``enqueued`` (with
  the job), ``skipped`` (paused, dropped by the catch-up policy, or a duplicate of a job
  that still holds the task's unique key) or ``missed`` (older than the catch-up
  window). A run of ticks passed over together is one row: every cron tick from
  ``first_tick`` to ``tick``. Written by the worker that won the tick's compare-and-set,
  in that transaction, so each tick is recorded exactly once. Pruned by the workers'
  retention step (``--retention-periodic-ticks``, default seven days). Deleting a
  ``periodic`` row by hand deletes its ledger (ON DELETE CASCADE).
- ``periodic.paused``: set by ``pgjobs periodic pause``; workers record the ticks of a
  paused schedule as skipped and enqueue nothing. ``resumed_at``: when it was resumed;
  ticks due before it that no worker had handled are skipped too (no burst on resume).
  Workers' sync never changes either.
- ``periodic.run_requested_at``: ``pgjobs periodic run-now`` asks the workers (which have
  the task's code: its options, unique key, limits) to enqueue one job now; the worker
  that takes the request clears it in the same transaction as the enqueue and its ledger
  row. It never touches ``last_tick``.
- ``periodic.owner``: the ``App(periodic_owner=...)`` that declares the schedule. A
  worker's sync disables only its own owner's rows that its code no longer declares.
  Rows from before this revision get the default owner, ``'default'``, which is what an
  App without ``periodic_owner`` uses, so existing deployments behave as before.

Locks: ADD COLUMN with a constant default changes the catalog only (a brief ACCESS
EXCLUSIVE lock on ``periodic``, a small table, no rewrite).

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE periodic
    ADD COLUMN owner            text NOT NULL DEFAULT 'default',
    ADD COLUMN paused           boolean NOT NULL DEFAULT false,
    ADD COLUMN resumed_at       timestamptz,
    ADD COLUMN run_requested_at timestamptz;
-- sync disables the missing schedules of one owner
CREATE INDEX periodic_owner_idx ON periodic (owner);

CREATE TABLE periodic_ticks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL REFERENCES periodic (name) ON DELETE CASCADE,
    -- the tick (for a run of ticks passed over together: the newest), or for a manual
    -- run, when it was requested
    tick        timestamptz NOT NULL,
    -- the oldest tick of the run this row stands for (= tick for a single tick)
    first_tick  timestamptz NOT NULL,
    outcome     text NOT NULL,
    reason      text NOT NULL,
    -- enqueued: the job; skipped as a duplicate: the job holding the unique key
    job_id      bigint,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT periodic_ticks_outcome_valid
        CHECK (outcome IN ('enqueued', 'skipped', 'missed')),
    CONSTRAINT periodic_ticks_reason_valid CHECK (reason IN (
        'on_time', 'caught_up', 'manual', 'paused', 'catch_up', 'duplicate',
        'outside_window')),
    CONSTRAINT periodic_ticks_range_valid CHECK (first_tick <= tick)
);
-- a schedule's newest ticks (pgjobs periodic show, the dashboard); the foreign key's
-- deletes by name
CREATE INDEX periodic_ticks_name_idx ON periodic_ticks (name, id);
-- retention deletes the oldest rows first
CREATE INDEX periodic_ticks_recorded_idx ON periodic_ticks (recorded_at);
"""

DOWNGRADE = r"""
DROP TABLE periodic_ticks;
DROP INDEX periodic_owner_idx;
ALTER TABLE periodic DROP COLUMN owner, DROP COLUMN paused, DROP COLUMN resumed_at,
                     DROP COLUMN run_requested_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
