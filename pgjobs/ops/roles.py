"""Least-privilege database roles: an owner that migrates, an app that enqueues, a worker.

``pgjobs roles`` applies (or, with ``--sql``, prints) one idempotent script:

- the three roles, created with LOGIN (and no password) when missing;
- the schema, created and owned by the owner role, so ``pgjobs migrate`` runs as it;
- for every object the migrations create, exactly the privileges listed in ``GRANTS``,
  after revoking whatever the two roles held before, so a re-run converges. Objects that
  do not exist yet are skipped: run the script again after every ``pgjobs migrate``.

Triggers and functions run with the caller's privileges (none is SECURITY DEFINER), so
each role is granted what its statements *and* the triggers they fire touch: an enqueue
into a batch updates ``batches``; a completion updates ``batches``, deletes unique holds
and inserts callback jobs. Neither role owns anything, so neither can ALTER, DROP or
TRUNCATE; TRUNCATE, REFERENCES and TRIGGER are never granted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from psycopg import sql

from ..core.errors import InvalidName
from ..core.names import check_name, check_schema

ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# object kind, name (with argument types for functions), app privileges, worker privileges.
# The worker also enqueues (periodic ticks, batch callbacks, handlers enqueueing more work
# through the worker's own DSN), so it holds everything the app holds.
GRANTS: tuple[tuple[str, str, str, str], ...] = (
    # enqueue inserts; the app reads its jobs back; only workers change them, and delete
    # finished ones past their retention (the pruner; docs/operations.md).
    ("TABLE", "jobs", "SELECT, INSERT", "SELECT, INSERT, UPDATE, DELETE"),
    # enqueue with a unique key or into a batch draws job ids itself (nextval).
    ("SEQUENCE", "jobs_id_seq", "USAGE", "USAGE"),
    # a unique enqueue takes over an expired hold (ON CONFLICT DO UPDATE); the worker's
    # trigger releases holds and maintenance prunes expired ones (DELETE).
    ("TABLE", "unique_keys", "SELECT, INSERT, UPDATE", "SELECT, INSERT, UPDATE, DELETE"),
    # app.batch() inserts, registers callbacks and counts jobs in (UPDATE); completions
    # count them out; the pruner deletes emptied, long-complete batches.
    ("TABLE", "batches", "SELECT, INSERT, UPDATE", "SELECT, INSERT, UPDATE, DELETE"),
    # counters' deltas: an enqueue into a batch appends one; a fold (a worker's, or the
    # batch's own at its creating commit) deletes what it folds; status reads sum them.
    ("TABLE", "batch_deltas", "SELECT, INSERT, DELETE", "SELECT, INSERT, DELETE"),
    # reliable push writes and reads receipts; maintenance prunes them after a day (its
    # FOR UPDATE SKIP LOCKED needs UPDATE; no statement updates a receipt).
    ("TABLE", "enqueue_receipts", "SELECT, INSERT", "SELECT, INSERT, UPDATE, DELETE"),
    # workers register schedules and advance ticks.
    ("TABLE", "periodic", "SELECT", "SELECT, INSERT, UPDATE"),
    # workers register themselves; the pruner deletes rows of long-gone workers.
    ("TABLE", "workers", "SELECT", "SELECT, INSERT, UPDATE, DELETE"),
    # the limited claim counts starts on a queue's row; `pgjobs queue pause|limit` upserts.
    ("TABLE", "queues", "SELECT", "SELECT, INSERT, UPDATE"),
    # per-key limits: upserted by the claim, pruned by maintenance.
    ("TABLE", "limit_keys", "SELECT", "SELECT, INSERT, UPDATE, DELETE"),
    # the worker refuses to start against a schema of another revision.
    ("TABLE", "alembic_version", "SELECT", "SELECT"),
    ("TABLE", "queue_depth", "SELECT", "SELECT"),
    ("TABLE", "queue_oldest_available", "SELECT", "SELECT"),
    ("TABLE", "failing_jobs", "SELECT", "SELECT"),
    ("TABLE", "batch_progress", "SELECT", "SELECT"),
    ("FUNCTION", "batch_add_jobs(bigint, bigint)", "EXECUTE", "EXECUTE"),
    ("FUNCTION", "batch_evaluate(bigint)", "EXECUTE", "EXECUTE"),
    ("FUNCTION", "batch_fold(bigint[])", "EXECUTE", "EXECUTE"),
    # current_job().transaction()'s completion (it needs UPDATE on jobs, which the app
    # role lacks: granting EXECUTE alone gives it nothing).
    ("FUNCTION", "job_complete(bigint, uuid, jsonb)", "EXECUTE", "EXECUTE"),
    ("FUNCTION", "batch_fire(batches, text)", "EXECUTE", "EXECUTE"),
    ("FUNCTION", "jobs_unique_release()", "EXECUTE", "EXECUTE"),
    ("FUNCTION", "jobs_batch_progress()", "EXECUTE", "EXECUTE"),
    ("FUNCTION", "batches_check_empty()", "EXECUTE", "EXECUTE"),
)


@dataclass(frozen=True, slots=True)
class Roles:
    """The three role names, checked: lowercase letters, digits and '_', distinct."""

    owner: str = "pgjobs_owner"
    app: str = "pgjobs_app"
    worker: str = "pgjobs_worker"

    def __post_init__(self) -> None:
        hint = "use 1-63 lowercase letters, digits and '_', starting with a letter or '_'"
        for kind in ("owner", "app", "worker"):
            name = getattr(self, kind)
            check_name(f"{kind} role", name, ROLE_NAME, hint)
            if name.startswith("pg_") or name == "public":
                raise InvalidName(f"invalid {kind} role name {name!r}: it is reserved; {hint}")
        if len({self.owner, self.app, self.worker}) < 3:
            raise InvalidName(
                f"the owner, app and worker roles must be three different roles, not "
                f"{self.owner!r}, {self.app!r}, {self.worker!r}"
            )


# One PL/pgSQL block per role: CREATE ROLE has no IF NOT EXISTS. The name is a literal
# inside the block and reaches CREATE ROLE through format('%I'), so it is quoted twice over.
CREATE_ROLE = """DO $pgjobs$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) THEN
        EXECUTE format('CREATE ROLE %I LOGIN', {name});
    END IF;
END $pgjobs$;"""

# Grants for the objects that exist now. REVOKE first, so privileges dropped from GRANTS
# are taken back on the next run. EXECUTE on pgjobs' functions is revoked from PUBLIC:
# only the three roles call them. (Function argument types such as `batches` resolve
# through the search_path the script pins to the schema.)
OBJECT_GRANTS = """DO $pgjobs$
DECLARE
    g record;
    target text;
BEGIN
    FOR g IN
        SELECT * FROM (VALUES {rows}) AS v(kind, name, app, worker)
        -- (by name: before PostgreSQL 16, to_regprocedure raises on an argument type
        -- such as `batches` that does not exist yet, before the first migrate)
        WHERE (kind = 'FUNCTION' AND EXISTS (
                   SELECT FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
                   WHERE n.nspname = {schema} AND p.proname = split_part(name, '(', 1)))
           OR (kind <> 'FUNCTION' AND to_regclass(format('%I.%I', {schema}, name)) IS NOT NULL)
    LOOP
        target := format('%s %I.%s', g.kind, {schema},
                         CASE g.kind WHEN 'FUNCTION' THEN g.name ELSE quote_ident(g.name) END);
        EXECUTE format('REVOKE ALL ON %s FROM PUBLIC, %I, %I', target, {app}, {worker});
        EXECUTE format('GRANT %s ON %s TO %I', g.app, target, {app});
        EXECUTE format('GRANT %s ON %s TO %I', g.worker, target, {worker});
    END LOOP;
END $pgjobs$;"""


def roles_sql(schema: str, roles: Roles) -> str:
    """The grant script for ``schema`` (idempotent; run it as a superuser or as a role
    with CREATEROLE that owns the schema's objects)."""
    check_schema(schema)
    ident = sql.Identifier
    lit = sql.Literal
    parts: list[sql.Composable] = [
        sql.SQL("-- pgjobs roles for schema {}: {} migrates, {} enqueues and reads, {} runs jobs.\n"
                "-- Run again after every `pgjobs migrate`: new objects get their grants then.")
        .format(ident(schema), ident(roles.owner), ident(roles.app), ident(roles.worker)),
        sql.SQL("BEGIN;"),
        sql.SQL("SET LOCAL search_path TO {};").format(ident(schema)),
    ]
    parts += [sql.SQL(CREATE_ROLE).format(name=lit(name))
              for name in (roles.owner, roles.app, roles.worker)]
    parts += [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {};").format(
            ident(schema), ident(roles.owner)),
        sql.SQL("ALTER SCHEMA {} OWNER TO {};").format(ident(schema), ident(roles.owner)),
        # USAGE only: neither role may create objects in the schema.
        sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC, {}, {};").format(
            ident(schema), ident(roles.app), ident(roles.worker)),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}, {};").format(
            ident(schema), ident(roles.app), ident(roles.worker)),
        sql.SQL(OBJECT_GRANTS).format(
            rows=sql.SQL(", ").join(
                sql.SQL("({})").format(sql.SQL(", ").join(map(lit, row))) for row in GRANTS),
            schema=lit(schema), app=lit(roles.app), worker=lit(roles.worker)),
        sql.SQL("COMMIT;"),
    ]
    return sql.SQL("\n").join(parts).as_string(None) + "\n"
