"""The task registry, and enqueue from SQL: ``pgjobs.enqueue(task, args, ...)``.

- ``tasks``: one row per task name that a worker has registered, with what an enqueue
  computes from the task's definition: its queue, priority, attempts, run and expiry
  defaults, unique defaults and per-key limits (the key as literal text and argument
  names, ``concurrency_key_parts``, when SQL can compute it as Python does). Every
  worker upserts the rows of its app's tasks when it registers (the most recently
  started worker's definition wins) and refreshes ``last_seen_at`` with its heartbeat, at
  most once a minute per task. Which live workers know a task is in ``workers.meta.tasks``
  (revision 0009), which the heartbeat keeps current; ``last_seen_at`` outlives them, so a
  worker can tell how long nobody has known the task of a job it cannot run.
- ``enqueue(task, args, ...)``: one job, with the semantics of the Python enqueue: the
  queue and defaults from the registry row (a NULL argument means "the task's default"),
  run_in and expires_in from the database clock (expiry counted from run_at), the per-key
  limit columns, the unique key (explicit, or task + queue + a digest of the canonical
  args, as ``pgjobs.core.options.unique_key`` computes it) and its window, the batch
  count, and the NOTIFY that wakes workers when the job is due now. Returns the job's id
  (a duplicate returns the holder's, or raises when the task says ``on_duplicate="raise"``).
  A task missing from the registry is refused (SQLSTATE PJ003) unless ``queue`` is given,
  as a producer's reference without options would be enqueued with pgjobs' defaults.
  Invalid values raise SQLSTATE 22023 with a message that says what to give instead.
  Usable from a trigger: the job commits (and notifies) with the trigger's transaction.
- ``canonical_json(jsonb)``: the text Python's ``json.dumps(value, sort_keys=True,
  separators=(",", ":"), ensure_ascii=False)`` gives, the input of a unique key's digest.

Locks: CREATE TABLE and CREATE FUNCTION take no lock on existing tables.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE tasks (
    name text PRIMARY KEY CHECK (char_length(name) BETWEEN 1 AND 255),
    queue text NOT NULL CHECK (char_length(queue) BETWEEN 1 AND 63),
    priority smallint NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 25 CHECK (max_attempts >= 1),
    run_at timestamptz,
    run_in interval,
    expires_at timestamptz,
    expires_in interval,
    unique_for interval,
    unique_key text,
    unique_until text NOT NULL DEFAULT 'success' CHECK (unique_until IN ('success', 'start')),
    on_duplicate text NOT NULL DEFAULT 'return' CHECK (on_duplicate IN ('return', 'raise')),
    -- the key as written (a format string over the job's args; NULL with a limit: a
    -- Python callable computes it), and as SQL computes it (NULL: only Python can)
    concurrency_key text,
    concurrency_key_parts text[],
    concurrency_limit integer CHECK (concurrency_limit > 0),
    rate_limit integer CHECK (rate_limit > 0),
    rate_period interval,
    registered_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tasks_rate_valid CHECK ((rate_limit IS NULL) = (rate_period IS NULL))
);

-- The text Python's json.dumps(value, sort_keys=True, separators=(",", ":"),
-- ensure_ascii=False) gives for the same JSON: keys sorted by code point (the C
-- collation on UTF-8), no spaces; strings are escaped the same way by both.
CREATE FUNCTION canonical_json(value jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT SET search_path FROM CURRENT AS $$
BEGIN
    CASE jsonb_typeof(value)
    WHEN 'object' THEN
        RETURN '{' || coalesce((SELECT string_agg(to_json(e.key)::text || ':'
                                                  || canonical_json(e.value), ','
                                                  ORDER BY e.key COLLATE "C")
                                FROM jsonb_each(value) AS e), '') || '}';
    WHEN 'array' THEN
        RETURN '[' || coalesce((SELECT string_agg(canonical_json(a.value), ',' ORDER BY a.n)
                                FROM jsonb_array_elements(value) WITH ORDINALITY
                                     AS a(value, n)), '') || ']';
    ELSE
        RETURN value::text;
    END CASE;
END $$;

-- One job of `task`, as the Python enqueue writes it (pgjobs/db/sql/enqueue.py:
-- job_insert, and job_insert_special for a unique key or a batch). NULL arguments take
-- the task's defaults from the registry; giving one of run_at/run_in (expires_at/
-- expires_in) replaces both of the task's, as task.options() does.
CREATE FUNCTION enqueue(
    task text, args jsonb DEFAULT '{}', queue text DEFAULT NULL,
    priority integer DEFAULT NULL, run_at timestamptz DEFAULT NULL,
    run_in interval DEFAULT NULL, expires_in interval DEFAULT NULL,
    unique_key text DEFAULT NULL, unique_for interval DEFAULT NULL,
    batch_id bigint DEFAULT NULL, max_attempts integer DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL, unique_until text DEFAULT NULL,
    meta jsonb DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
#variable_conflict use_variable
DECLARE
    t tasks%ROWTYPE;
    q text;
    due timestamptz;
    expires timestamptz;
    ukey text;
    uwindow interval;
    ckey text;
    arg jsonb;
    new_id bigint;
    holder bigint;
BEGIN
    IF task IS NULL OR task !~ '^[A-Za-z_][A-Za-z0-9_.:<>\-]{0,254}$' THEN
        RAISE EXCEPTION 'pgjobs.enqueue: invalid task name %', quote_nullable(task)
            USING ERRCODE = '22023', HINT = 'give the name the task is registered under '
            '(@app.job(name=...), or module.function)';
    END IF;
    IF args IS NULL OR jsonb_typeof(args) <> 'object' THEN
        RAISE EXCEPTION 'pgjobs.enqueue(%): args must be a JSON object of keyword '
            'arguments, not %', task, coalesce(jsonb_typeof(args), 'NULL')
            USING ERRCODE = '22023', HINT = 'for example jsonb_build_object(''user_id'', 1)';
    END IF;

    SELECT * INTO t FROM tasks WHERE name = task;
    IF NOT FOUND THEN
        IF queue IS NULL THEN
            RAISE EXCEPTION 'pgjobs.enqueue: unknown task %: no worker has registered it',
                quote_literal(task) USING ERRCODE = 'PJ003',
                HINT = 'start a worker whose app registers it (workers record their tasks in '
                       'the tasks table), or pass queue => ''...'' to enqueue it with '
                       'pgjobs'' default options';
        END IF;
        -- pgjobs' defaults, as a Python reference without options (JobOptions())
        t.queue := 'default'; t.priority := 0; t.max_attempts := 25;
        t.unique_until := 'success'; t.on_duplicate := 'return';
    END IF;

    q := coalesce(queue, t.queue);
    IF q !~ '^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,62}$' THEN
        RAISE EXCEPTION 'pgjobs.enqueue(%): invalid queue name %', task, quote_literal(q)
            USING ERRCODE = '22023', HINT = 'use 1-63 characters from letters, digits, '
            '''_'', ''.'', '':'' and ''-'', starting with a letter or digit';
    END IF;
    IF priority NOT BETWEEN -32768 AND 32767 THEN
        RAISE EXCEPTION 'pgjobs.enqueue(%): priority must be in -32768..32767, not %',
            task, priority USING ERRCODE = '22023';
    END IF;
    IF max_attempts < 1 THEN
        RAISE EXCEPTION 'pgjobs.enqueue(%): max_attempts must be 1 or more, not %', task,
            max_attempts USING ERRCODE = '22023';
    END IF;
    IF run_at IS NOT NULL AND run_in IS NOT NULL THEN
        RAISE EXCEPTION 'pgjobs.enqueue(%): give run_at or run_in, not both', task
            USING ERRCODE = '22023';
    END IF;
    IF expires_at IS NOT NULL AND expires_in IS NOT NULL THEN
        RAISE EXCEPTION 'pgjobs.enqueue(%): give expires_at or expires_in, not both', task
            USING ERRCODE = '22023';
    END IF;
    IF expires_in <= interval '0' OR unique_for <= interval '0' THEN
        RAISE EXCEPTION 'pgjobs.enqueue(%): expires_in and unique_for must be positive '
            'intervals', task USING ERRCODE = '22023';
    END IF;
    IF char_length(unique_key) NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'pgjobs.enqueue(%): unique_key must be 1-500 characters', task
            USING ERRCODE = '22023';
    END IF;
    IF unique_until NOT IN ('success', 'start') THEN
        RAISE EXCEPTION 'pgjobs.enqueue(%): unique_until must be ''success'' or ''start'', '
            'not %', task, quote_literal(unique_until) USING ERRCODE = '22023';
    END IF;

    -- run_in and expires_in count from the database clock; expiry from the job's run_at
    IF run_at IS NOT NULL OR run_in IS NOT NULL THEN
        due := coalesce(run_at, now() + run_in);
    ELSE
        due := coalesce(t.run_at, now() + coalesce(t.run_in, interval '0'));
    END IF;
    IF expires_at IS NOT NULL OR expires_in IS NOT NULL THEN
        expires := coalesce(expires_at, due + expires_in);
    ELSE
        expires := coalesce(t.expires_at, due + t.expires_in);
    END IF;

    -- The per-key limit: the key from the job's args, formatted as Python's
    -- str.format_map formats JSON values (true -> True, null -> None).
    IF t.concurrency_limit IS NOT NULL OR t.rate_limit IS NOT NULL THEN
        IF t.concurrency_key_parts IS NULL THEN
            RAISE EXCEPTION 'pgjobs.enqueue(%): the task''s concurrency key %is computed '
                'in Python, so SQL cannot enqueue it with its per-key limit', task,
                coalesce(quote_literal(t.concurrency_key) || ' ', '')
                USING ERRCODE = '22023', HINT = 'enqueue it from Python, or write the key as '
                'a format string of plain argument names (''customer:{customer_id}'')';
        END IF;
        ckey := '';
        FOR i IN 1 .. cardinality(t.concurrency_key_parts) LOOP
            IF i % 2 = 1 THEN
                ckey := ckey || t.concurrency_key_parts[i];
                CONTINUE;
            END IF;
            arg := args -> t.concurrency_key_parts[i];
            ckey := ckey || CASE jsonb_typeof(arg)
                WHEN 'string' THEN arg #>> '{}'
                WHEN 'number' THEN arg::text
                WHEN 'boolean' THEN CASE WHEN arg::boolean THEN 'True' ELSE 'False' END
                WHEN 'null' THEN 'None' END;
            IF ckey IS NULL THEN
                RAISE EXCEPTION 'pgjobs.enqueue(%): concurrency_key % needs argument % as a '
                    'string, number, boolean or null, not %', task,
                    quote_literal(t.concurrency_key), quote_literal(t.concurrency_key_parts[i]),
                    coalesce(jsonb_typeof(arg), 'missing') USING ERRCODE = '22023';
            END IF;
        END LOOP;
        IF char_length(ckey) NOT BETWEEN 1 AND 1000 THEN
            RAISE EXCEPTION 'pgjobs.enqueue(%): concurrency key must be 1-1000 characters, '
                'got %', task, char_length(ckey) USING ERRCODE = '22023';
        END IF;
    END IF;

    -- The unique key: the explicit one, or task + queue + digest of the canonical args
    -- (pgjobs.core.options.unique_key).
    uwindow := coalesce(unique_for, t.unique_for);
    ukey := coalesce(unique_key, t.unique_key);
    IF ukey IS NULL AND uwindow IS NOT NULL THEN
        ukey := task || ':' || q || ':' || left(encode(sha256(convert_to(
            canonical_json(args), 'UTF8')), 'hex'), 40);
    END IF;

    new_id := nextval('jobs_id_seq');
    -- A hold as job_insert_special takes it: an expired one is taken over (the UPDATE
    -- re-checks the expiry on the latest version of the row it locks), else a new one
    -- is inserted unless another job holds the key, whose id is returned instead. Each
    -- statement sees what committed before it (READ COMMITTED), so a holder that ended
    -- between two of them sends the loop round again.
    WHILE ukey IS NOT NULL LOOP
        UPDATE unique_keys AS u
        SET job_id = new_id, release_on = coalesce(unique_until, t.unique_until),
            created_at = now(), expires_at = due + uwindow
        WHERE u.key = ukey AND u.expires_at <= now();
        EXIT WHEN FOUND;
        INSERT INTO unique_keys AS u (key, job_id, expires_at, release_on)
        VALUES (ukey, new_id, due + uwindow, coalesce(unique_until, t.unique_until))
        ON CONFLICT (key) DO NOTHING;
        EXIT WHEN FOUND;
        SELECT u.job_id INTO holder FROM unique_keys AS u
        WHERE u.key = ukey AND (u.expires_at IS NULL OR u.expires_at > now());
        IF FOUND THEN
            IF t.on_duplicate = 'raise' THEN
                RAISE EXCEPTION 'pgjobs.enqueue(%): duplicate job: unique key % is held by '
                    'job %', task, quote_literal(ukey), holder USING ERRCODE = '23505';
            END IF;
            RETURN holder;
        END IF;
    END LOOP;

    INSERT INTO jobs (id, queue, task, args, priority, max_attempts, run_at, expires_at,
                      unique_key, batch_id, concurrency_key, concurrency_limit,
                      rate_limit, rate_period, meta)
    OVERRIDING SYSTEM VALUE
    VALUES (new_id, q, task, args, coalesce(priority, t.priority),
            coalesce(max_attempts, t.max_attempts), due, expires, ukey, batch_id, ckey,
            CASE WHEN ckey IS NOT NULL THEN t.concurrency_limit END,
            CASE WHEN ckey IS NOT NULL THEN t.rate_limit END,
            CASE WHEN ckey IS NOT NULL THEN t.rate_period END, coalesce(meta, '{}'));
    IF batch_id IS NOT NULL THEN
        PERFORM batch_add_jobs(batch_id, 1);
    END IF;
    -- The channel of pgjobs.core.names.channel_for; a job due later notifies nobody.
    IF due <= now() THEN
        PERFORM pg_notify('pgjobs_' || current_schema(), q);
    END IF;
    RETURN new_id;
END $$;
"""

DOWNGRADE = r"""
DROP FUNCTION enqueue(text, jsonb, text, integer, timestamptz, interval, interval, text,
                      interval, bigint, integer, timestamptz, text, jsonb);
DROP FUNCTION canonical_json(jsonb);
DROP TABLE tasks;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
