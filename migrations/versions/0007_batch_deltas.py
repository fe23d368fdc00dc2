"""Batch accounting without a hot row; a completion that can share a round trip with COMMIT.

Until now every state change of a batch's job updated the batch's row inside the
transaction that made it (the jobs trigger), so the jobs of one batch took turns on one
row lock held until each commit: a batch of transactional jobs ran at 0.3x the same jobs
without a batch. Now:

- The jobs trigger appends one row to ``batch_deltas`` (what the change does to the
  counters) and locks nothing else. Enqueueing into a batch, and creating a child
  batch, append a delta too; they hold the batch's row FOR SHARE until they commit, so
  that a batch cannot succeed while jobs are being added to it (shared locks do not
  conflict with each other, so concurrent enqueuers do not wait for one another).
- ``batch_fold(ids)`` takes each batch's row (FOR NO KEY UPDATE SKIP LOCKED: it never
  waits, and a completion's FK check on the row does not block it), moves every
  committed delta into the counters, and fires the events they make due, exactly once,
  as before: the ``*_at`` timestamp is set in the transaction that fires. An event of a
  child becomes a delta of its parent, folded in the same call. Workers fold the batches
  of the jobs they finish right after writing them, and every worker sweeps the batches
  with unfolded deltas once a second (hand-written SQL, lost workers, expiries).
- Counters read through ``batch_progress`` (and ``App.batch_status``) are exact: the
  folded counters plus the deltas not yet folded. The ``batches`` table's own counter
  columns lag by at most one fold.

``batch_deltas`` has no foreign key: its check would share-lock the batch row for every
completion. A delta of a batch that no longer exists is deleted by the next fold.

``job_complete(id, token, result)`` marks a running job succeeded if this attempt still
holds its lease, and raises SQLSTATE PJ002 otherwise. Because it fails instead of
matching no row, it can be sent in one round trip with the COMMIT that follows it
(pipeline mode): a lost lease aborts the transaction, so the COMMIT rolls the handler's
effects back (``current_job().transaction()``). Any client can call it from SQL.

Locks: creates a table and an index, and replaces functions and a view; nothing is
rewritten. Downgrade folds every remaining delta into its batch first.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE batch_deltas (
    batch_id            bigint NOT NULL,
    total               integer NOT NULL DEFAULT 0,
    pending             integer NOT NULL DEFAULT 0,
    succeeded           integer NOT NULL DEFAULT 0,
    failed              integer NOT NULL DEFAULT 0,
    dead                integer NOT NULL DEFAULT 0,
    children_pending    integer NOT NULL DEFAULT 0,
    children_incomplete integer NOT NULL DEFAULT 0
) WITH (
    -- Append and delete only: vacuum it early, like jobs.
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
CREATE INDEX batch_deltas_batch_idx ON batch_deltas (batch_id);

-- Success for a running job, fenced by its lease token, failing when the lease is lost
-- (another attempt owns the job, or it was reclaimed or cancelled): the caller's
-- transaction is then aborted, and a COMMIT sent with it rolls back.
CREATE FUNCTION job_complete(job_id bigint, token uuid, result jsonb DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE jobs
    SET state = 'succeeded', lease_token = NULL, lease_expires_at = NULL,
        finished_at = clock_timestamp(), result = job_complete.result
    WHERE id = job_id AND lease_token = token;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % does not hold lease %: it was reclaimed, cancelled or '
                        'completed by another attempt', job_id, token
            USING ERRCODE = 'PJ002',
                  HINT = 'roll back: this attempt''s effects must not commit';
    END IF;
END $$;

-- Adds n jobs to a batch (called once per enqueue statement). A batch that already
-- succeeded cannot take more jobs: its callbacks have fired. FOR SHARE keeps a fold from
-- firing the batch's success until this transaction ends.
CREATE OR REPLACE FUNCTION batch_add_jobs(batch bigint, n bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM FROM batches WHERE id = batch AND succeeded_at IS NULL FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch % does not exist or has already succeeded', batch
            USING ERRCODE = 'PJ001',
                  HINT = 'add jobs to a batch before it finishes, e.g. from one of its jobs';
    END IF;
    INSERT INTO batch_deltas (batch_id, total, pending) VALUES (batch, n, n);
    RETURN n;
END $$;

-- Fires the events a batch's folded counters make due, once each (the caller holds the
-- row). An event that concerns the parent becomes one of its deltas; returns the parent's
-- id then, for the caller to fold, else NULL. (It returned nothing before: replaced.)
DROP FUNCTION batch_evaluate(bigint);
CREATE FUNCTION batch_evaluate(batch bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    b batches;
    parent bigint;
BEGIN
    SELECT * INTO b FROM batches WHERE id = batch;
    IF NOT FOUND THEN
        RETURN NULL;
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
            INSERT INTO batch_deltas (batch_id, children_incomplete) VALUES (b.parent_id, -1);
            parent := b.parent_id;
        END IF;
    END IF;
    IF b.succeeded_at IS NULL AND b.pending = 0 AND b.children_pending = 0 THEN
        UPDATE batches SET succeeded_at = clock_timestamp(), state = 'succeeded'
        WHERE id = batch RETURNING * INTO b;
        PERFORM batch_fire(b, 'success');
        IF b.parent_id IS NOT NULL THEN
            INSERT INTO batch_deltas (batch_id, children_pending) VALUES (b.parent_id, -1);
            parent := b.parent_id;
        END IF;
    END IF;
    RETURN parent;
END $$;

-- Folds the committed deltas of batches ``ids`` (and of the parents their events touch)
-- into their counters and fires what becomes due. Never waits: a batch whose row another
-- transaction holds (another fold, or an enqueue into it) is skipped and returned, for
-- the caller to fold again later. Each statement here takes a fresh snapshot, so the
-- DELETE sees every delta committed before it ran, including those committed after the
-- row was locked; a delta committed later is folded by the next call.
CREATE FUNCTION batch_fold(ids bigint[]) RETURNS bigint[]
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    todo bigint[] := ARRAY(SELECT DISTINCT unnest(ids) ORDER BY 1);
    skipped bigint[] := '{}';
    batch bigint;
    parent bigint;
    d batch_deltas;
BEGIN
    WHILE cardinality(todo) > 0 LOOP
        batch := todo[1];
        todo := todo[2:];
        PERFORM FROM batches WHERE id = batch FOR NO KEY UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            IF EXISTS (SELECT FROM batches WHERE id = batch) THEN
                skipped := skipped || batch;
            ELSE  -- the batch was pruned: its leftover deltas mean nothing now
                DELETE FROM batch_deltas WHERE batch_id = batch;
            END IF;
            CONTINUE;
        END IF;
        WITH gone AS (DELETE FROM batch_deltas WHERE batch_id = batch RETURNING *)
        SELECT batch, coalesce(sum(total), 0), coalesce(sum(pending), 0),
               coalesce(sum(succeeded), 0), coalesce(sum(failed), 0), coalesce(sum(dead), 0),
               coalesce(sum(children_pending), 0), coalesce(sum(children_incomplete), 0)
        INTO d FROM gone;
        UPDATE batches
        SET total = total + d.total, pending = pending + d.pending,
            succeeded = succeeded + d.succeeded, failed = failed + d.failed,
            dead = dead + d.dead, children_pending = children_pending + d.children_pending,
            children_incomplete = children_incomplete + d.children_incomplete
        WHERE id = batch
          AND (d.total, d.pending, d.succeeded, d.failed, d.dead, d.children_pending,
               d.children_incomplete) <> (0, 0, 0, 0, 0, 0, 0);
        parent := batch_evaluate(batch);
        IF parent IS NOT NULL AND NOT parent = ANY(todo) THEN
            todo := todo || parent;
        END IF;
    END LOOP;
    RETURN skipped;
END $$;

-- Keeps a batch's counters in step with its jobs' states, now by appending a delta. For
-- the batch, cancelled counts as succeeded (a deliberate, handled end) and expired as
-- dead (it never ran). A job "has failed" once it ends an attempt with an error (not a
-- lost worker) or dies; the flag is kept in meta.batch_failed so each job is counted once.
CREATE OR REPLACE FUNCTION jobs_batch_progress() RETURNS trigger
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
        INSERT INTO batch_deltas (batch_id, pending, succeeded, failed, dead)
        VALUES (NEW.batch_id, d_pending, d_succeeded, d_failed, d_dead);
    END IF;
    RETURN NEW;
END $$;

-- An empty batch completes and succeeds when its creating transaction commits (deferred
-- to commit, when every job of that transaction has been counted): the creating
-- transaction folds its own deltas.
CREATE OR REPLACE FUNCTION batches_check_empty() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM batch_fold(ARRAY[NEW.id]);
    RETURN NULL;
END $$;

-- Exact counters: folded plus not yet folded (the lateral subquery reads the batch's
-- deltas through batch_deltas_batch_idx).
CREATE OR REPLACE VIEW batch_progress AS
    SELECT b.id, b.parent_id, b.description, b.state, (b.total + d.total)::integer AS total,
           (b.pending + d.pending)::integer AS pending,
           (b.succeeded + d.succeeded)::integer AS succeeded,
           (b.failed + d.failed)::integer AS failed, (b.dead + d.dead)::integer AS dead,
           (b.children_pending + d.children_pending)::integer AS children_pending,
           CASE WHEN b.total + d.total = 0 THEN NULL
                ELSE round(100.0 * (b.total + d.total - b.pending - d.pending)
                           / (b.total + d.total), 1) END AS percent_done,
           b.created_at, b.completed_at, b.succeeded_at, b.died_at,
           (b.children_incomplete + d.children_incomplete)::integer AS children_incomplete
    FROM batches AS b
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(x.total), 0) AS total, coalesce(sum(x.pending), 0) AS pending,
               coalesce(sum(x.succeeded), 0) AS succeeded, coalesce(sum(x.failed), 0) AS failed,
               coalesce(sum(x.dead), 0) AS dead,
               coalesce(sum(x.children_pending), 0) AS children_pending,
               coalesce(sum(x.children_incomplete), 0) AS children_incomplete
        FROM batch_deltas AS x WHERE x.batch_id = b.id
    ) AS d;
"""

DOWNGRADE = r"""
-- Fold what is left, without firing anything: the old triggers evaluate at the next change.
UPDATE batches AS b
SET total = b.total + d.total, pending = b.pending + d.pending,
    succeeded = b.succeeded + d.succeeded, failed = b.failed + d.failed, dead = b.dead + d.dead,
    children_pending = b.children_pending + d.children_pending,
    children_incomplete = b.children_incomplete + d.children_incomplete
FROM (SELECT batch_id, sum(total) AS total, sum(pending) AS pending,
             sum(succeeded) AS succeeded, sum(failed) AS failed, sum(dead) AS dead,
             sum(children_pending) AS children_pending,
             sum(children_incomplete) AS children_incomplete
      FROM batch_deltas GROUP BY batch_id) AS d
WHERE b.id = d.batch_id;

CREATE OR REPLACE VIEW batch_progress AS
    SELECT id, parent_id, description, state, total, pending, succeeded, failed, dead,
           children_pending,
           CASE WHEN total = 0 THEN NULL
                ELSE round(100.0 * (total - pending) / total, 1) END AS percent_done,
           created_at, completed_at, succeeded_at, died_at, children_incomplete
    FROM batches;

CREATE OR REPLACE FUNCTION batches_check_empty() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM batch_evaluate(NEW.id);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION batch_add_jobs(batch bigint, n bigint) RETURNS bigint
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

DROP FUNCTION batch_fold(bigint[]);
DROP FUNCTION batch_evaluate(bigint);
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

CREATE OR REPLACE FUNCTION jobs_batch_progress() RETURNS trigger
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

DROP TABLE batch_deltas;
DROP FUNCTION job_complete(bigint, uuid, jsonb);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
