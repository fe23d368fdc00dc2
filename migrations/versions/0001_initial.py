"""Initial pgjobs schema: jobs, batches, unique_keys, periodic, workers, queues, views.

env.py pins search_path to the pgjobs schema for the migration's transaction, so every
name below lands in that schema without string substitution.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE batches (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parent_id        bigint REFERENCES batches (id) ON DELETE SET NULL,
    description      text,
    -- open: still being built in its creating transaction or by a running job of the
    -- batch; it cannot complete until closed. pending: jobs outstanding.
    state            text NOT NULL DEFAULT 'pending',
    total            integer NOT NULL DEFAULT 0,
    pending          integer NOT NULL DEFAULT 0,
    succeeded        integer NOT NULL DEFAULT 0,
    failed           integer NOT NULL DEFAULT 0,
    dead             integer NOT NULL DEFAULT 0,
    children_pending integer NOT NULL DEFAULT 0,
    -- [{"event": "success"|"complete"|"death", "task": ..., "queue": ..., "args": {...}}]
    callbacks        jsonb NOT NULL DEFAULT '[]',
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    succeeded_at     timestamptz,
    died_at          timestamptz,
    meta             jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT batches_state_valid
        CHECK (state IN ('open', 'pending', 'complete', 'succeeded')),
    CONSTRAINT batches_counters_valid
        CHECK (total >= 0 AND pending >= 0 AND succeeded >= 0 AND failed >= 0
               AND dead >= 0 AND children_pending >= 0)
);
CREATE INDEX batches_parent_idx ON batches (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue            text NOT NULL DEFAULT 'default',
    task             text NOT NULL,
    args             jsonb NOT NULL DEFAULT '{}',
    priority         smallint NOT NULL DEFAULT 0,
    state            text NOT NULL DEFAULT 'available',
    attempt          integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 25,
    run_at           timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz,
    lease_token      uuid,
    lease_expires_at timestamptz,
    worker_id        bigint,
    unique_key       text,
    batch_id         bigint REFERENCES batches (id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    errors           jsonb NOT NULL DEFAULT '[]',
    result           jsonb,
    recoveries       integer NOT NULL DEFAULT 0,
    meta             jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT jobs_state_valid CHECK (
        state IN ('available', 'running', 'succeeded', 'dead', 'cancelled', 'expired')),
    -- A lease exists exactly while a job runs: at most one live lease per job, and a
    -- finished job can never carry a stale one.
    CONSTRAINT jobs_lease_iff_running CHECK (
        (state = 'running') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CONSTRAINT jobs_args_object CHECK (jsonb_typeof(args) = 'object'),
    CONSTRAINT jobs_errors_array CHECK (jsonb_typeof(errors) = 'array'),
    CONSTRAINT jobs_attempts_valid CHECK (
        max_attempts >= 1 AND attempt >= 0 AND recoveries >= 0),
    -- Names are checked against their full pattern in Python; lengths are enforced here
    -- too, for rows written by hand.
    CONSTRAINT jobs_queue_length CHECK (char_length(queue) BETWEEN 1 AND 63),
    CONSTRAINT jobs_task_length CHECK (char_length(task) BETWEEN 1 AND 255)
) WITH (
    -- Room on each page for HOT updates: heartbeats touch only unindexed columns.
    fillfactor = 85,
    -- The hot table churns: vacuum and analyze it after a small fraction changes, and
    -- without cost-based sleeps so dead tuples never pile up behind the claim index.
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- The claim index: available rows only, in claim order within a queue, so a claim reads
-- the head of one queue's range and stops. It holds no lease columns, so the heartbeat
-- (which only moves lease_expires_at on running rows) stays a HOT update.
CREATE INDEX jobs_claim_idx ON jobs (queue, priority, run_at, id) WHERE state = 'available';
-- Running rows by worker: heartbeats and reclaim scan only running jobs.
CREATE INDEX jobs_running_idx ON jobs (worker_id) WHERE state = 'running';
-- Maintenance finds available jobs past their expiry without reading the backlog.
CREATE INDEX jobs_expiry_idx ON jobs (expires_at)
    WHERE state = 'available' AND expires_at IS NOT NULL;
-- Pruning of finished jobs by age.
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_batch_idx ON jobs (batch_id) WHERE batch_id IS NOT NULL;

CREATE TABLE unique_keys (
    key        text PRIMARY KEY,
    job_id     bigint NOT NULL,
    -- NULL: held until the job releases it (succeeds, starts, dies or is cancelled).
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX unique_keys_job_idx ON unique_keys (job_id);
CREATE INDEX unique_keys_expiry_idx ON unique_keys (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE periodic (
    name        text PRIMARY KEY,
    schedule    text NOT NULL,
    task        text NOT NULL,
    queue       text NOT NULL,
    args        jsonb NOT NULL DEFAULT '{}',
    timezone    text NOT NULL DEFAULT 'UTC',
    catch_up    text NOT NULL DEFAULT 'latest',
    enabled     boolean NOT NULL DEFAULT true,
    -- The last tick enqueued; workers advance it by compare-and-set.
    last_tick   timestamptz,
    last_job_id bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT periodic_catch_up_valid CHECK (catch_up IN ('latest', 'skip', 'all'))
);

CREATE TABLE workers (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    queues       text[] NOT NULL,
    concurrency  integer NOT NULL,
    state        text NOT NULL DEFAULT 'running',
    version      text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz,
    meta         jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT workers_state_valid
        CHECK (state IN ('running', 'quiet', 'stopping', 'stopped'))
);
CREATE INDEX workers_live_idx ON workers (heartbeat_at) WHERE state <> 'stopped';

CREATE TABLE queues (
    name              text PRIMARY KEY,
    paused            boolean NOT NULL DEFAULT false,
    concurrency_limit integer,
    rate_limit        integer,
    rate_period       interval,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT queues_limits_valid CHECK (
        (concurrency_limit IS NULL OR concurrency_limit > 0)
        AND (rate_limit IS NULL OR rate_limit > 0)
        AND (rate_period IS NULL OR rate_period > interval '0'))
);

CREATE VIEW queue_depth AS
    SELECT queue, state, count(*) AS jobs
    FROM jobs
    GROUP BY queue, state;

CREATE VIEW queue_oldest_available AS
    SELECT queue,
           count(*) AS due_jobs,
           min(run_at) AS oldest_run_at,
           now() - min(run_at) AS oldest_wait
    FROM jobs
    WHERE state = 'available' AND run_at <= now()
    GROUP BY queue;

CREATE VIEW failing_jobs AS
    SELECT id, queue, task, state, attempt, max_attempts, recoveries, run_at,
           errors -> -1 ->> 'type' AS last_error_type,
           errors -> -1 ->> 'message' AS last_error_message,
           (errors -> -1 ->> 'at')::timestamptz AS last_error_at
    FROM jobs
    WHERE jsonb_array_length(errors) > 0 AND state IN ('available', 'running', 'dead');

CREATE VIEW batch_progress AS
    SELECT id, parent_id, description, state, total, pending, succeeded, failed, dead,
           children_pending,
           CASE WHEN total = 0 THEN NULL
                ELSE round(100.0 * (total - pending) / total, 1) END AS percent_done,
           created_at, completed_at, succeeded_at, died_at
    FROM batches;
"""

DOWNGRADE = """
DROP VIEW IF EXISTS batch_progress;
DROP VIEW IF EXISTS failing_jobs;
DROP VIEW IF EXISTS queue_oldest_available;
DROP VIEW IF EXISTS queue_depth;
DROP TABLE IF EXISTS queues;
DROP TABLE IF EXISTS workers;
DROP TABLE IF EXISTS periodic;
DROP TABLE IF EXISTS unique_keys;
DROP TABLE IF EXISTS jobs;
DROP TABLE IF EXISTS batches;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
