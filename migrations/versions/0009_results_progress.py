"""Results you can wait for; progress and checkpoints; ``why(id)``.

- ``jobs_done_notify``: when a job that someone waits for reaches a terminal state
  (succeeded, dead, cancelled, expired), a notification on channel
  ``pgjobs_<schema>_done`` carries its id, so a process waiting for it
  (``Enqueued.wait``, ``App.wait``) wakes at once instead of polling. A waiter marks the
  job first (``job_watch(id)`` sets ``jobs.done_waited``), and the trigger's WHEN clause
  fires only for marked jobs: a notifying commit takes a cluster-wide lock through its
  WAL flush, which every completion flush paid when all jobs notified (the drain ran at
  0.82x). It fires for every writer (the worker's flush, a fenced completion,
  ``pgjobs.job_complete``, cancel, expiry, a reclaim past its budget, SQL by hand).
  Notifications are sent at commit, so a waiter never sees a state that rolls back.
- ``job_watch(id)``: marks a job that has not ended as waited for; SKIP LOCKED, so it
  never waits for a handler's open transaction (the waiter marks it at its next read).
  SECURITY DEFINER: the app role, which cannot update jobs, may mark them.
- ``jobs.progress`` (a fraction 0..1 or a small JSON object) and ``jobs.checkpoint`` (any
  JSON): what a handler reported through ``current_job().progress()`` and
  ``.checkpoint()``, written with the worker's heartbeat and at the job's end. A retried or
  recovered attempt reads the last checkpoint back. Both unindexed, so the heartbeat stays
  a HOT update.

- ``why(job_id)``: rows of (cause, reason) saying in plain words why a job is not
  running or did not run, each naming the blocking fact, with the same conditions as the
  claim statements (pgjobs/db/sql/claim.py): scheduled for later, past its deadline,
  queue paused, queue or per-key concurrency limit full (with the jobs holding it), rate
  window full, its unique hold locked by another transaction (or, for a finished job,
  its key held by another job), expired, dead with the last error, no live worker
  serving its queue or knowing its task (workers record their tasks in
  ``workers.meta.tasks`` from this version on), the suspect throttle after a recovery.
  ``pgjobs jobs why ID`` prints the same rows.

Locks: ADD COLUMN without a default changes the catalog only (a brief ACCESS EXCLUSIVE
lock, no rewrite); CREATE TRIGGER takes SHARE ROW EXCLUSIVE on ``jobs`` briefly.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE jobs ADD COLUMN progress jsonb, ADD COLUMN checkpoint jsonb,
                 ADD COLUMN done_waited boolean;

-- The payload is the job's id as text: small and constant, and distinct per job, so
-- PostgreSQL's de-duplication of identical notifications in one transaction never merges
-- two jobs. The channel name follows the schema (pgjobs.core.names.done_channel_for).
CREATE FUNCTION jobs_done_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_notify('pgjobs_' || TG_TABLE_SCHEMA || '_done', NEW.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_done_notify AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.done_waited
                       AND NEW.state IN ('succeeded', 'dead', 'cancelled', 'expired')
                       AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION jobs_done_notify();

-- A waiter's mark: the job's end will notify. True when the job is marked now (or was
-- already), false when it has ended, is locked (ask again at the next read) or does
-- not exist.
CREATE FUNCTION job_watch(job_id bigint) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    found_id bigint;
BEGIN
    SELECT id INTO found_id FROM jobs
    WHERE id = job_id AND state NOT IN ('succeeded', 'dead', 'cancelled', 'expired')
    FOR NO KEY UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE jobs SET done_waited = true WHERE id = found_id AND done_waited IS NOT TRUE;
    RETURN true;
END $$;

-- Why is job_id not running, or why did it not run? One row per fact, in plain words.
-- Read-only (STABLE) and lock-free: it reads the same rows and conditions the claim
-- statements do, as this snapshot sees them.
CREATE FUNCTION why(job_id bigint) RETURNS TABLE (cause text, reason text)
LANGUAGE plpgsql STABLE SET search_path FROM CURRENT AS $$
DECLARE
    j jobs%ROWTYPE;
    q queues%ROWTYPE;
    ids text;
    n bigint;
    blocked boolean := false;
    last jsonb;
BEGIN
    SELECT * INTO j FROM jobs WHERE id = job_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'missing', format(
            'there is no job %s: it was never enqueued (or its transaction has not '
            'committed yet), or it finished and was pruned by retention', job_id);
        RETURN;
    END IF;
    last := j.errors -> -1;

    IF j.state = 'succeeded' THEN
        RETURN QUERY SELECT 'succeeded', format(
            'it ran: it succeeded at %s, on attempt %s', j.finished_at, j.attempt);
    ELSIF j.state = 'cancelled' THEN
        RETURN QUERY SELECT 'cancelled', format(
            'it was cancelled at %s%s; `pgjobs jobs retry %s` runs it again', j.finished_at,
            coalesce(': ' || nullif(j.meta->>'cancel_reason', ''), ''), j.id);
    ELSIF j.state = 'expired' THEN
        RETURN QUERY SELECT 'expired', format(
            'it expired: it had not started by its deadline %s (expires_at), so it will not '
            'run; `pgjobs jobs retry %s` runs it anyway', j.expires_at, j.id);
    ELSIF j.state = 'dead' THEN
        RETURN QUERY SELECT 'dead', format(
            'it is dead after %s attempt(s) and %s recovery(ies): the last error, at %s, '
            'was %s: %s; `pgjobs jobs retry %s` runs it again', j.attempt, j.recoveries,
            coalesce(last->>'at', '?'), coalesce(last->>'type', 'unknown'),
            coalesce(last->>'message', '(no message)'), j.id);
    ELSIF j.state = 'running' THEN
        RETURN QUERY SELECT 'running', format(
            'it is running: attempt %s on worker %s since %s, lease until %s%s', j.attempt,
            coalesce(j.worker_id::text, '?'), j.started_at, j.lease_expires_at,
            CASE WHEN j.lease_expires_at < now() THEN '; that lease has expired, so its '
                 'worker is probably lost and the next reclaim makes the job available '
                 'again' ELSE '' END);
    END IF;

    IF j.state <> 'available' THEN
        -- A finished job whose unique key another job holds now cannot be retried.
        IF j.state IN ('dead', 'cancelled', 'expired') AND j.unique_key IS NOT NULL THEN
            RETURN QUERY SELECT 'unique_hold', format(
                'its unique key %L is held by job %s, so a retry is refused until that job '
                'finishes', u.key, u.job_id)
            FROM unique_keys AS u WHERE u.key = j.unique_key AND u.job_id <> j.id;
        END IF;
        RETURN;
    END IF;

    -- Available from here on: every condition under which the claim passes it over.
    IF j.run_at > now() THEN
        blocked := true;
        IF j.attempt > 0 AND last IS NOT NULL THEN
            RETURN QUERY SELECT 'scheduled', format(
                'it waits for its retry at %s (in %s): attempt %s failed with %s: %s',
                j.run_at, date_trunc('second', j.run_at - now()), j.attempt,
                coalesce(last->>'type', 'unknown'), coalesce(last->>'message', ''));
        ELSE
            RETURN QUERY SELECT 'scheduled', format(
                'it is scheduled for later: run_at is %s (in %s)', j.run_at,
                date_trunc('second', j.run_at - now()));
        END IF;
    END IF;

    IF j.expires_at IS NOT NULL AND j.expires_at <= now() THEN
        blocked := true;
        RETURN QUERY SELECT 'expired', format(
            'its deadline %s (expires_at) has passed before it started: it will not run, '
            'and the next maintenance pass marks it expired', j.expires_at);
    END IF;

    SELECT * INTO q FROM queues WHERE name = j.queue;
    IF FOUND THEN
        IF q.paused THEN
            blocked := true;
            RETURN QUERY SELECT 'paused', format(
                'its queue %L is paused (since %s); `pgjobs queue resume %s` resumes it',
                q.name, q.updated_at, q.name);
        END IF;
        IF q.concurrency_limit IS NOT NULL THEN
            SELECT count(*), string_agg(r.id::text, ', ' ORDER BY r.id)
            INTO n, ids FROM jobs AS r WHERE r.state = 'running' AND r.queue = q.name;
            IF n >= q.concurrency_limit THEN
                blocked := true;
                RETURN QUERY SELECT 'queue_concurrency', format(
                    'its queue %L is at its concurrency limit: %s of %s running (jobs %s)',
                    q.name, n, q.concurrency_limit, ids);
            END IF;
        END IF;
        IF q.rate_limit IS NOT NULL AND cardinality(q.recent_starts)
                - width_bucket(now() - q.rate_period, q.recent_starts) >= q.rate_limit THEN
            blocked := true;
            RETURN QUERY SELECT 'queue_rate', format(
                'its queue %L has used its rate limit: %s starts in the last %s; the next '
                'start is allowed at %s', q.name, q.rate_limit, q.rate_period,
                q.recent_starts[cardinality(q.recent_starts) - q.rate_limit + 1]
                    + q.rate_period);
        END IF;
    END IF;

    IF j.concurrency_key IS NOT NULL AND j.concurrency_limit IS NOT NULL THEN
        SELECT count(*), string_agg(r.id::text, ', ' ORDER BY r.id)
        INTO n, ids FROM jobs AS r
        WHERE r.state = 'running' AND r.concurrency_key = j.concurrency_key;
        IF n >= j.concurrency_limit THEN
            blocked := true;
            RETURN QUERY SELECT 'key_concurrency', format(
                'its key %L is at its concurrency limit: %s of %s running (jobs %s)',
                j.concurrency_key, n, j.concurrency_limit, ids);
        END IF;
    END IF;
    IF j.concurrency_key IS NOT NULL AND j.rate_limit IS NOT NULL THEN
        RETURN QUERY SELECT 'key_rate', format(
            'its key %L has used its rate limit: %s starts in the last %s; the next start '
            'is allowed at %s', k.key, j.rate_limit, j.rate_period,
            k.recent_starts[cardinality(k.recent_starts) - j.rate_limit + 1] + j.rate_period)
        FROM limit_keys AS k
        WHERE k.key = j.concurrency_key
          AND cardinality(k.recent_starts)
              - width_bucket(now() - j.rate_period, k.recent_starts) >= j.rate_limit;
        blocked := blocked OR FOUND;
    END IF;

    -- A hold released at start is locked by another transaction (an enqueue taking over
    -- the expired hold for a new job, a retry): the claim skips the job until it ends.
    -- xmax names the locking transaction; pg_locks says whether it is still running.
    IF j.unique_key IS NOT NULL THEN
        RETURN QUERY SELECT 'unique_hold', format(
            'its unique hold %L is locked by another transaction (backend pid %s), which is '
            'giving the key to another job; the claim skips it until that transaction ends',
            u.key, l.pid)
        FROM unique_keys AS u
        JOIN pg_locks AS l ON l.locktype = 'transactionid' AND l.transactionid = u.xmax
                          AND l.mode = 'ExclusiveLock' AND l.granted
        WHERE u.key = j.unique_key AND u.job_id = j.id AND u.release_on = 'start';
        blocked := blocked OR FOUND;
    END IF;

    -- Workers: running, heard from within their lease, serving the job's queue.
    IF NOT EXISTS (SELECT FROM workers AS w
                   WHERE w.state = 'running' AND j.queue = ANY(w.queues)
                     AND w.heartbeat_at > now()
                         - make_interval(secs => coalesce((w.meta->>'lease')::float8, 30))) THEN
        blocked := true;
        RETURN QUERY SELECT 'no_worker', format(
            'no live worker serves its queue %L: start one with `pgjobs worker --queues %s`',
            j.queue, j.queue);
    ELSIF NOT EXISTS (SELECT FROM workers AS w
                      WHERE w.state = 'running' AND j.queue = ANY(w.queues)
                        AND w.heartbeat_at > now()
                            - make_interval(secs => coalesce((w.meta->>'lease')::float8, 30))
                        -- workers older than this revision do not say: assume they know it
                        AND (NOT w.meta ? 'tasks' OR w.meta->'tasks' ? j.task)) THEN
        blocked := true;
        RETURN QUERY SELECT 'unknown_task', format(
            'no live worker of queue %L knows its task %L: deploy a worker whose app '
            'registers it', j.queue, j.task);
    ELSIF j.recoveries > 0 AND NOT EXISTS (
            SELECT FROM workers AS w
            WHERE w.state = 'running' AND j.queue = ANY(w.queues)
              AND w.heartbeat_at > now()
                  - make_interval(secs => coalesce((w.meta->>'lease')::float8, 30))
              AND NOT EXISTS (SELECT FROM jobs AS mine
                              WHERE mine.worker_id = w.id AND mine.state = 'running'
                                AND mine.recoveries > 0)) THEN
        blocked := true;
        SELECT string_agg(format('job %s on worker %s', mine.id, mine.worker_id), ', '
                          ORDER BY mine.id)
        INTO ids FROM jobs AS mine
        JOIN workers AS w ON w.id = mine.worker_id
        WHERE mine.state = 'running' AND mine.recoveries > 0 AND j.queue = ANY(w.queues);
        RETURN QUERY SELECT 'suspect', format(
            'it was recovered %s time(s) from a lost worker, so it may be what killed it: a '
            'worker runs one such job at a time, and every live worker of queue %L runs one '
            '(%s)', j.recoveries, j.queue, ids);
    END IF;

    IF NOT blocked THEN
        SELECT count(*) INTO n FROM (
            SELECT FROM jobs AS a
            WHERE a.queue = j.queue AND a.state = 'available'
              AND (a.priority, a.run_at, a.id) < (j.priority, j.run_at, j.id)
            LIMIT 10000) AS ahead;
        RETURN QUERY SELECT 'due', format(
            'nothing blocks it: it is due, and %s job(s) of queue %L are ahead of it in '
            'claim order (priority, run_at, id); a worker takes it at one of its next claims',
            CASE WHEN n >= 10000 THEN 'at least 10000' ELSE n::text END, j.queue);
    END IF;
END $$;
"""

DOWNGRADE = r"""
DROP FUNCTION why(bigint);
DROP FUNCTION job_watch(bigint);
DROP TRIGGER jobs_done_notify ON jobs;
DROP FUNCTION jobs_done_notify();
ALTER TABLE jobs DROP COLUMN progress, DROP COLUMN checkpoint, DROP COLUMN done_waited;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
