"""Periodic schedules' catch-up window; queue and per-key limits enforced by the claim.

- ``jobs`` gains the per-key limit a job was enqueued with (``concurrency_key`` and its
  limits), plus a partial index that counts running jobs per key.
- ``queues`` gains ``claimed`` (a monotonic count of jobs started under a limit) and
  ``recent_starts`` (the start times inside the window of the sliding-window rate limit).
- ``limit_keys`` holds the same two things per concurrency key.
- ``periodic`` gains ``catch_up_window`` (how far back ``catch_up = 'all'`` reaches).

Every ALTER here is a catalog-only change on PostgreSQL 11+ (new nullable columns, or
defaults that are constants); the new CHECK on ``jobs`` is NOT VALID so the migration does
not scan the table: existing rows have NULLs in the new columns, and new rows are checked.
The new index does read ``jobs`` once (its entries are only running jobs with a key).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE jobs
    ADD COLUMN concurrency_key   text,
    ADD COLUMN concurrency_limit integer,
    ADD COLUMN rate_limit        integer,
    ADD COLUMN rate_period       interval;
ALTER TABLE jobs ADD CONSTRAINT jobs_key_limits_valid CHECK (
    -- a key comes with at least one limit, and limits only with a key
    (concurrency_key IS NULL) = (concurrency_limit IS NULL AND rate_limit IS NULL)
    AND (concurrency_limit IS NULL OR concurrency_limit > 0)
    AND (rate_limit IS NULL OR rate_limit > 0)
    AND (rate_limit IS NULL) = (rate_period IS NULL)
    AND (rate_period IS NULL OR rate_period > interval '0')
    AND (concurrency_key IS NULL OR char_length(concurrency_key) BETWEEN 1 AND 1000)
) NOT VALID;
-- Counts the running jobs of one key for the claim. Only running jobs that have a key are
-- in it, so jobs without a key never pay for it.
CREATE INDEX jobs_running_key_idx ON jobs (concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;

ALTER TABLE queues
    ADD COLUMN claimed       bigint NOT NULL DEFAULT 0,
    ADD COLUMN recent_starts timestamptz[] NOT NULL DEFAULT '{}';
ALTER TABLE queues ADD CONSTRAINT queues_rate_pair CHECK (
    (rate_limit IS NULL) = (rate_period IS NULL));

CREATE TABLE limit_keys (
    key               text PRIMARY KEY,
    -- Jobs started under this key, ever (monotonic). A claim adds the starts made since
    -- its snapshot (latest claimed - claimed as the snapshot saw it) to the running jobs
    -- it can see, so concurrent claims never overshoot the limit.
    claimed           bigint NOT NULL DEFAULT 0,
    -- What the newest claim that looked at this key started, and when.
    last_grant        integer NOT NULL DEFAULT 0,
    last_start        timestamptz,
    -- The limits of the newest job that asked (jobs carry their own; shown for operators).
    concurrency_limit integer,
    rate_limit        integer,
    rate_period       interval,
    -- Start times still inside the rate window, oldest first, at most rate_limit.
    recent_starts     timestamptz[] NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);

ALTER TABLE periodic ADD COLUMN catch_up_window interval;
"""

DOWNGRADE = """
ALTER TABLE periodic DROP COLUMN IF EXISTS catch_up_window;
DROP TABLE IF EXISTS limit_keys;
ALTER TABLE queues DROP CONSTRAINT IF EXISTS queues_rate_pair;
ALTER TABLE queues DROP COLUMN IF EXISTS recent_starts, DROP COLUMN IF EXISTS claimed;
DROP INDEX IF EXISTS jobs_running_key_idx;
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_key_limits_valid;
ALTER TABLE jobs
    DROP COLUMN IF EXISTS rate_period,
    DROP COLUMN IF EXISTS rate_limit,
    DROP COLUMN IF EXISTS concurrency_limit,
    DROP COLUMN IF EXISTS concurrency_key;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
