"""Batches with callbacks and unique jobs, enforced by the database.

The rules live in triggers so that they hold for every writer: the worker, the CLI and an
operator's hand-written SQL alike (cancel a job with UPDATE and its unique hold is released
and its batch counted). Every function pins its search_path to this schema (FROM CURRENT),
so it finds its tables whatever the caller's search_path is.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Reliable push: an enqueue made without a connection writes a receipt in the same
-- transaction as its jobs. When the commit's outcome is unknown (the connection died
-- during COMMIT), the retry looks for the receipt first and never enqueues twice.
CREATE TABLE enqueue_receipts (
    key        uuid PRIMARY KEY,
    results    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX enqueue_receipts_created_idx ON enqueue_receipts (created_at);

-- When a hold ends besides its time limit: 'success' (the job reaches a terminal state)
-- or 'start' (the job is claimed).
ALTER TABLE unique_keys ADD COLUMN release_on text NOT NULL DEFAULT 'success',
    ADD CONSTRAINT unique_keys_release_valid CHECK (release_on IN ('success', 'start'));

-- Children that have not completed yet (children_pending counts those not yet succeeded):
-- a parent completes after all its children complete, and succeeds after they succeed.
ALTER TABLE batches ADD COLUMN children_incomplete integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT batches_children_incomplete_valid CHECK (children_incomplete >= 0);

-- Unique holds end with the job: on a terminal state, on start for 'start' holds, and when
-- the job row is deleted. Keyed on (key, job_id) so a hold taken over by a newer job after
-- expiry is never released by the old one.
CREATE FUNCTION jobs_unique_release() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM unique_keys WHERE key = OLD.unique_key AND job_id = OLD.id;
        RETURN OLD;
    END IF;
    IF NEW.state IN ('succeeded', 'dead', 'cancelled', 'expired') THEN
        DELETE FROM unique_keys WHERE key = NEW.unique_key AND job_id = NEW.id;
    ELSIF NEW.state = 'running' THEN
        DELETE FROM unique_keys
        WHERE key = NEW.unique_key AND job_id = NEW.id AND release_on = 'start';
    END IF;
    RETURN NEW;
END $$;

-- WHEN clauses keep these free for the common job without a key or batch.
CREATE TRIGGER jobs_unique_release AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.unique_key IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION jobs_unique_release();
CREATE TRIGGER jobs_unique_release_delete AFTER DELETE ON jobs
    FOR EACH ROW WHEN (OLD.unique_key IS NOT NULL)
    EXECUTE FUNCTION jobs_unique_release();

-- Adds n jobs to a batch (called once per enqueue statement). A batch that already
-- succeeded cannot take more jobs: its callbacks have fired.
CREATE FUNCTION batch_add_jobs(batch bigint, n bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE batches SET total = total + n, pending = pending + n
    WHERE id = batch AND succeeded_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch % does not exist or has already succeeded', batch
            USING ERRCODE = 'PJ001',
                  HINT = 'add jobs to a batch before it finishes, e.g. from one of its jobs';
    END IF;
    RETURN n;
END $$;

-- Enqueues the callbacks registered for one event, as ordinary jobs that carry a snapshot
-- of the batch in meta.batch (current_job().batch in the handler).
CREATE FUNCTION batch_fire(b batches, event text) RETURNS void
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

-- Decides, under the batch row's lock, whether an event is due, and fires it once: the
-- *_at timestamp is set in the same transaction, so no concurrent or repeated completion
-- can fire it again. Then tells the parent, if any.
CREATE FUNCTION batch_evaluate(batch bigint) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    b batches;
BEGIN
    SELECT * INTO b FROM batches WHERE id = batch FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF b.died_at IS NULL AND b.dead > 0 THEN
        UPDATE batches SET died_at = clock_timestamp() WHERE id = batch RETURNING * INTO b;
        PERFORM batch_fire(b, 'death');
    END IF;
    -- complete: every job has run at least once (succeeded, or failed at least once)
    IF b.completed_at IS NULL AND b.pending = b.failed AND b.children_incomplete = 0 THEN
        UPDATE batches SET completed_at = clock_timestamp(), state = 'complete'
        WHERE id = batch RETURNING * INTO b;
        PERFORM batch_fire(b, 'complete');
        IF b.parent_id IS NOT NULL THEN
            UPDATE batches SET children_incomplete = children_incomplete - 1
            WHERE id = b.parent_id;
            PERFORM batch_evaluate(b.parent_id);
        END IF;
    END IF;
    IF b.succeeded_at IS NULL AND b.pending = 0 AND b.children_pending = 0 THEN
        UPDATE batches SET succeeded_at = clock_timestamp(), state = 'succeeded'
        WHERE id = batch RETURNING * INTO b;
        PERFORM batch_fire(b, 'success');
        IF b.parent_id IS NOT NULL THEN
            UPDATE batches SET children_pending = children_pending - 1 WHERE id = b.parent_id;
            PERFORM batch_evaluate(b.parent_id);
        END IF;
    END IF;
END $$;

-- Keeps a batch's counters in step with its jobs' states. For the batch, cancelled counts
-- as succeeded (a deliberate, handled end) and expired as dead (it never ran). A job
-- "has failed" once it ends an attempt with an error (not a lost worker) or dies; the flag
-- is kept in meta.batch_failed so each job is counted once.
CREATE FUNCTION jobs_batch_progress() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    was_done boolean := OLD.state IN ('succeeded', 'cancelled');
    now_done boolean := NEW.state IN ('succeeded', 'cancelled');
    was_dead boolean := OLD.state IN ('dead', 'expired');
    now_dead boolean := NEW.state IN ('dead', 'expired');
    had_failed boolean := coalesce((OLD.meta->>'batch_failed')::boolean, false);
    fails boolean := now_dead OR (
        OLD.state = 'running' AND NEW.state = 'available'
        AND jsonb_array_length(NEW.errors) > jsonb_array_length(OLD.errors)
        AND NEW.errors->-1->>'type' IS DISTINCT FROM 'pgjobs.WorkerLost');
    d_pending integer := 0;
    d_succeeded integer := 0;
    d_failed integer := 0;
    d_dead integer := 0;
BEGIN
    IF now_done AND NOT was_done THEN
        d_pending := -1;
        d_succeeded := 1;
        IF had_failed THEN
            d_failed := -1;
        END IF;
    ELSIF was_done AND NOT now_done THEN  -- an operator retried a cancelled job
        d_pending := 1;
        d_succeeded := -1;
        IF had_failed THEN
            d_failed := 1;
        END IF;
    END IF;
    IF fails AND NOT had_failed AND NOT now_done THEN
        NEW.meta := NEW.meta || '{"batch_failed": true}';
        d_failed := d_failed + 1;
    END IF;
    IF now_dead AND NOT was_dead THEN
        d_dead := 1;
    ELSIF was_dead AND NOT now_dead THEN  -- an operator retried a dead job
        d_dead := -1;
    END IF;
    IF d_pending <> 0 OR d_succeeded <> 0 OR d_failed <> 0 OR d_dead <> 0 THEN
        UPDATE batches
        SET pending = pending + d_pending, succeeded = succeeded + d_succeeded,
            failed = failed + d_failed, dead = dead + d_dead
        WHERE id = NEW.batch_id;
        PERFORM batch_evaluate(NEW.batch_id);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER jobs_batch_progress BEFORE UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.batch_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION jobs_batch_progress();

-- An empty batch completes and succeeds when its creating transaction commits (deferred
-- to commit, when every job of that transaction has been counted).
CREATE FUNCTION batches_check_empty() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM batch_evaluate(NEW.id);
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER batches_check_empty AFTER INSERT ON batches
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION batches_check_empty();

CREATE OR REPLACE VIEW batch_progress AS
    SELECT id, parent_id, description, state, total, pending, succeeded, failed, dead,
           children_pending,
           CASE WHEN total = 0 THEN NULL
                ELSE round(100.0 * (total - pending) / total, 1) END AS percent_done,
           created_at, completed_at, succeeded_at, died_at, children_incomplete
    FROM batches;
"""

DOWNGRADE = r"""
DROP VIEW batch_progress;
CREATE VIEW batch_progress AS
    SELECT id, parent_id, description, state, total, pending, succeeded, failed, dead,
           children_pending,
           CASE WHEN total = 0 THEN NULL
                ELSE round(100.0 * (total - pending) / total, 1) END AS percent_done,
           created_at, completed_at, succeeded_at, died_at
    FROM batches;
DROP TRIGGER batches_check_empty ON batches;
DROP FUNCTION batches_check_empty();
DROP TRIGGER jobs_batch_progress ON jobs;
DROP FUNCTION jobs_batch_progress();
DROP FUNCTION batch_evaluate(bigint);
DROP FUNCTION batch_fire(batches, text);
DROP FUNCTION batch_add_jobs(bigint, bigint);
DROP TRIGGER jobs_unique_release_delete ON jobs;
DROP TRIGGER jobs_unique_release ON jobs;
DROP FUNCTION jobs_unique_release();
ALTER TABLE batches DROP COLUMN children_incomplete;
ALTER TABLE unique_keys DROP COLUMN release_on;
DROP TABLE enqueue_receipts;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
