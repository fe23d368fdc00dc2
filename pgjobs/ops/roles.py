"""Least-privilege database roles: an owner that migrates, an app that enqueues, a worker,
and the web dashboard's two: one that reads and acts, one that only reads.

``pgjobs roles`` applies (or, with ``--sql``, prints) one idempotent script:

- the five roles, created with LOGIN (and no password) when missing;
- the schema, created and owned by the owner role, so ``pgjobs migrate`` runs as it;
- for every object the migrations create, exactly the privileges listed in ``GRANTS``,
  after revoking whatever the other roles held before, so a re-run converges. Objects
  that do not exist yet are skipped: run the script again after every ``pgjobs migrate``.

Triggers and functions run with the caller's privileges (none is SECURITY DEFINER), so
each role is granted what its statements *and* the triggers they fire touch: an enqueue
into a batch updates ``batches``; a completion updates ``batches``, deletes unique holds
and inserts callback jobs. No role but the owner owns anything, so none can ALTER, DROP
or TRUNCATE; TRUNCATE, REFERENCES and TRIGGER are never granted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from psycopg import sql

from ..core.errors import InvalidName
from ..core.names import check_name, check_schema

ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# object kind, name (with argument types for functions), then the privileges of the app,
# the worker, the dashboard and the read-only dashboard ("": none).
# The worker also enqueues (periodic ticks, batch callbacks, handlers enqueueing more work
# through the worker's own DSN), so it holds everything the app holds. The dashboard reads
# what its pages show and acts as an operator: retry, cancel and delete jobs (whose
# triggers count batches, release or take unique keys, and may fire a batch's callbacks,
# which inserts jobs), pause and resume queues and periodic schedules. The read-only
# dashboard reads the same.
_OPERATOR_COLUMNS = "UPDATE (paused, resumed_at, run_requested_at, updated_at)"
GRANTS: tuple[tuple[str, str, str, str, str, str], ...] = (
    # enqueue inserts; the app reads its jobs back; only workers change them, and delete
    # finished ones past their retention (the pruner; docs/operations.md).
    ("TABLE", "jobs", "SELECT, INSERT", "SELECT, INSERT, UPDATE, DELETE",
     "SELECT, INSERT, UPDATE, DELETE", "SELECT"),
    # enqueue with a unique key or into a batch draws job ids itself (nextval).
    ("SEQUENCE", "jobs_id_seq", "USAGE", "USAGE", "", ""),
    # a unique enqueue takes over an expired hold (ON CONFLICT DO UPDATE); the worker's
    # trigger releases holds and maintenance prunes expired ones (DELETE). A retry takes
    # its job's key back; a cancel or a delete releases it.
    ("TABLE", "unique_keys", "SELECT, INSERT, UPDATE", "SELECT, INSERT, UPDATE, DELETE",
     "SELECT, INSERT, UPDATE, DELETE", ""),
    # app.batch() inserts, registers callbacks and counts jobs in (UPDATE); completions
    # count them out; the pruner deletes emptied, long-complete batches.
    ("TABLE", "batches", "SELECT, INSERT, UPDATE", "SELECT, INSERT, UPDATE, DELETE",
     "SELECT, UPDATE", "SELECT"),
    # counters' deltas: an enqueue into a batch, and any state change of a batch's job,
    # appends one; a fold (a worker's, an operator action's, or the batch's own at its
    # creating commit) deletes what it folds; status reads sum them.
    ("TABLE", "batch_deltas", "SELECT, INSERT, DELETE", "SELECT, INSERT, DELETE",
     "SELECT, INSERT, DELETE", "SELECT"),
    # reliable push writes and reads receipts; maintenance prunes them after a day (its
    # FOR UPDATE SKIP LOCKED needs UPDATE; no statement updates a receipt).
    ("TABLE", "enqueue_receipts", "SELECT, INSERT", "SELECT, INSERT, UPDATE, DELETE", "", ""),
    # workers register schedules, advance ticks and take run requests; the app
    # (App.pause_periodic, run_periodic_now) and the dashboard pause, resume and request
    # runs: UPDATE of the operator columns only (a column grant: they cannot enable,
    # re-schedule or move ticks).
    ("TABLE", "periodic", f"SELECT, {_OPERATOR_COLUMNS}", "SELECT, INSERT, UPDATE",
     f"SELECT, {_OPERATOR_COLUMNS}", "SELECT"),
    # the ledger: written by the worker that wins a tick, pruned by its retention step;
    # read by `pgjobs periodic show` and the dashboard.
    ("TABLE", "periodic_ticks", "SELECT", "SELECT, INSERT, DELETE", "SELECT", "SELECT"),
    # workers register themselves; the pruner deletes rows of long-gone workers.
    ("TABLE", "workers", "SELECT", "SELECT, INSERT, UPDATE, DELETE", "SELECT", "SELECT"),
    # the task registry: workers upsert their tasks at start and refresh last_seen_at
    # with their heartbeat; pgjobs.enqueue() reads a task's queue and defaults from it.
    ("TABLE", "tasks", "SELECT", "SELECT, INSERT, UPDATE", "SELECT", "SELECT"),
    # the limited claim counts starts on a queue's row; `pgjobs queue pause|limit` and the
    # dashboard's pause and resume upsert.
    ("TABLE", "queues", "SELECT", "SELECT, INSERT, UPDATE", "SELECT, INSERT, UPDATE",
     "SELECT"),
    # per-key limits: upserted by the claim, pruned by maintenance; read by why().
    ("TABLE", "limit_keys", "SELECT", "SELECT, INSERT, UPDATE, DELETE", "SELECT", ""),
    # the worker refuses to start against a schema of another revision.
    ("TABLE", "alembic_version", "SELECT", "SELECT", "", ""),
    ("TABLE", "queue_depth", "SELECT", "SELECT", "SELECT", "SELECT"),
    ("TABLE", "queue_oldest_available", "SELECT", "SELECT", "SELECT", "SELECT"),
    ("TABLE", "failing_jobs", "SELECT", "SELECT", "SELECT", "SELECT"),
    ("TABLE", "batch_progress", "SELECT", "SELECT", "SELECT", "SELECT"),
    ("FUNCTION", "batch_add_jobs(bigint, bigint)", "EXECUTE", "EXECUTE", "", ""),
    ("FUNCTION", "batch_evaluate(bigint)", "EXECUTE", "EXECUTE", "EXECUTE", ""),
    # operator actions fold the batches of the jobs they change, in their transaction
    ("FUNCTION", "batch_fold(bigint[])", "EXECUTE", "EXECUTE", "EXECUTE", ""),
    # current_job().transaction()'s completion (it needs UPDATE on jobs, which the app
    # role lacks: granting EXECUTE alone gives it nothing).
    ("FUNCTION", "job_complete(bigint, uuid, jsonb)", "EXECUTE", "EXECUTE", "", ""),
    ("FUNCTION", "batch_fire(batches, text)", "EXECUTE", "EXECUTE", "EXECUTE", ""),
    ("FUNCTION", "jobs_unique_release()", "EXECUTE", "EXECUTE", "EXECUTE", ""),
    ("FUNCTION", "jobs_batch_progress()", "EXECUTE", "EXECUTE", "EXECUTE", ""),
    ("FUNCTION", "batches_check_empty()", "EXECUTE", "EXECUTE", "", ""),
    # the NOTIFY at a job's end fires for whoever ends it (worker, operator)
    ("FUNCTION", "jobs_done_notify()", "EXECUTE", "EXECUTE", "EXECUTE", ""),
    # a wait marks its job so that the job's end notifies (SECURITY DEFINER: it sets
    # jobs.done_waited, which the app role cannot update itself)
    ("FUNCTION", "job_watch(bigint)", "EXECUTE", "EXECUTE", "EXECUTE", ""),
    # `pgjobs jobs why` reads jobs, queues, workers, unique_keys and limit_keys (the
    # read-only dashboard role cannot read the last two)
    ("FUNCTION", "why(bigint)", "EXECUTE", "EXECUTE", "EXECUTE", ""),
    # enqueue from SQL (a trigger, psql, another language): the caller needs what a
    # Python enqueue needs (jobs, jobs_id_seq, unique_keys, batches, batch_deltas), and
    # to read tasks. The dashboard's retry and cancel enqueue nothing through it.
    ("FUNCTION", "enqueue(text, jsonb, text, integer, timestamptz, interval, interval, text, "
     "interval, bigint, integer, timestamptz, text, jsonb)", "EXECUTE", "EXECUTE", "", ""),
    ("FUNCTION", "canonical_json(jsonb)", "EXECUTE", "EXECUTE", "", ""),
)
KINDS = ("app", "worker", "dashboard", "dashboard_readonly")
"""The roles GRANTS gives privileges to, in its column order (the owner owns)."""


@dataclass(frozen=True, slots=True)
class Roles:
    """The role names, checked: lowercase letters, digits and '_', all different."""

    owner: str = "pgjobs_owner"
    app: str = "pgjobs_app"
    worker: str = "pgjobs_worker"
    dashboard: str = "pgjobs_dashboard"
    dashboard_readonly: str = "pgjobs_dashboard_ro"

    def __post_init__(self) -> None:
        hint = "use 1-63 lowercase letters, digits and '_', starting with a letter or '_'"
        for kind in ("owner", *KINDS):
            name = getattr(self, kind)
            check_name(f"{kind} role", name, ROLE_NAME, hint)
            if name.startswith("pg_") or name == "public":
                raise InvalidName(f"invalid {kind} role name {name!r}: it is reserved; {hint}")
        names = self.names()
        if len(set(names)) < len(names):
            raise InvalidName(
                f"the owner, app, worker, dashboard and read-only dashboard roles must be "
                f"different roles, not {', '.join(map(repr, names))}"
            )

    def names(self) -> tuple[str, ...]:
        """Every role: the owner first, then the granted ones in GRANTS' column order."""
        return (self.owner, *(getattr(self, kind) for kind in KINDS))


# One PL/pgSQL block per role: CREATE ROLE has no IF NOT EXISTS. The name is a literal
# inside the block and reaches CREATE ROLE through format('%I'), so it is quoted twice over.
CREATE_ROLE = """DO $pgjobs$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) THEN
        EXECUTE format('CREATE ROLE %I LOGIN', {name});
    END IF;
END $pgjobs$;"""

# Grants for the objects that exist now. REVOKE first, so privileges dropped from GRANTS
# are taken back on the next run. EXECUTE on pgjobs' functions is revoked from PUBLIC:
# only pgjobs' roles call them. (Function argument types such as `batches` resolve
# through the search_path the script pins to the schema.) `grantees` and each row's
# `privileges` are arrays in the same order: KINDS.
OBJECT_GRANTS = """DO $pgjobs$
DECLARE
    grantees text[] := {grantees};
    g record;
    target text;
    i integer;
BEGIN
    FOR g IN
        SELECT * FROM (VALUES {rows}) AS v(kind, name, privileges)
        -- (by name: before PostgreSQL 16, to_regprocedure raises on an argument type
        -- such as `batches` that does not exist yet, before the first migrate)
        WHERE (kind = 'FUNCTION' AND EXISTS (
                   SELECT FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
                   WHERE n.nspname = {schema} AND p.proname = split_part(name, '(', 1)))
           OR (kind <> 'FUNCTION' AND to_regclass(format('%I.%I', {schema}, name)) IS NOT NULL)
    LOOP
        target := format('%s %I.%s', g.kind, {schema},
                         CASE g.kind WHEN 'FUNCTION' THEN g.name ELSE quote_ident(g.name) END);
        EXECUTE format('REVOKE ALL ON %s FROM PUBLIC, %s', target,
                       (SELECT string_agg(quote_ident(r), ', ') FROM unnest(grantees) AS r));
        FOR i IN 1 .. array_length(grantees, 1) LOOP
            IF g.privileges[i] <> '' THEN
                EXECUTE format('GRANT %s ON %s TO %I', g.privileges[i], target, grantees[i]);
            END IF;
        END LOOP;
    END LOOP;
END $pgjobs$;"""


def roles_sql(schema: str, roles: Roles) -> str:
    """The grant script for ``schema`` (idempotent; run it as a superuser or as a role
    with CREATEROLE that owns the schema's objects)."""
    check_schema(schema)
    ident = sql.Identifier
    lit = sql.Literal
    grantees = sql.SQL(", ").join(ident(getattr(roles, kind)) for kind in KINDS)
    parts: list[sql.Composable] = [
        sql.SQL("-- pgjobs roles for schema {}: {} migrates, {} enqueues and reads, {} runs jobs,\n"
                "-- {} serves the dashboard, {} serves it read-only.\n"
                "-- Run again after every `pgjobs migrate`: new objects get their grants then.")
        .format(ident(schema), *map(ident, roles.names())),
        sql.SQL("BEGIN;"),
        sql.SQL("SET LOCAL search_path TO {};").format(ident(schema)),
    ]
    parts += [sql.SQL(CREATE_ROLE).format(name=lit(name))
              for name in roles.names()]
    parts += [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {};").format(
            ident(schema), ident(roles.owner)),
        sql.SQL("ALTER SCHEMA {} OWNER TO {};").format(ident(schema), ident(roles.owner)),
        # USAGE only: no role but the owner may create objects in the schema.
        sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC, {};").format(ident(schema), grantees),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {};").format(ident(schema), grantees),
        sql.SQL(OBJECT_GRANTS).format(
            grantees=array(getattr(roles, kind) for kind in KINDS),
            rows=sql.SQL(", ").join(
                sql.SQL("({}, {}, {})").format(lit(kind), lit(name), array(privileges))
                for kind, name, *privileges in GRANTS),
            schema=lit(schema)),
        sql.SQL("COMMIT;"),
    ]
    return sql.SQL("\n").join(parts).as_string(None) + "\n"


def array(values: Iterable[str]) -> sql.Composable:
    """``ARRAY['a', 'b']::text[]`` of literals."""
    return sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(map(sql.Literal, values)))
