"""The quickstart demo that `make quickstart` runs: transactional enqueue and a worker, on
a local PostgreSQL.

It starts (or reuses) the server in ./.pgjobs that `pgjobs dev start` manages, installs
pgjobs' tables in a schema of its own (dropped and recreated on every run), enqueues jobs
in a committed transaction, in a rolled-back one and with enqueue_many, and reads the jobs
table back with plain SQL. Then it runs the jobs in this process with
`pgjobs.testing.drain(app)` (a burst worker: it runs every due job, then returns) and reads
the table again: states, attempts, results and the error a failed attempt left behind.
It exits 1 if what it reads is not what it should be.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

import pgjobs
from pgjobs.ops import migrate as _migrate
from pgjobs.ops.devserver import LocalServer
from pgjobs.testing import drain

SCHEMA = "pgjobs_demo"  # pgjobs' tables, for this demo only
SHOP = "pgjobs_demo_shop"  # the demo application's own table lives here

problems: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        problems.append(what)


def start_server() -> LocalServer:
    """The same server and folder as `pgjobs dev start` (PGJOBS_DEV_BINDIR respected)."""
    bindir = os.environ.get("PGJOBS_DEV_BINDIR")
    server = LocalServer(Path(".pgjobs") / "data", bindir=Path(bindir) if bindir else None)
    server.start()
    return server


def reset(url: str) -> None:
    """Drop what the previous run left, create the shop's table, install pgjobs."""
    with psycopg.connect(url, autocommit=True) as conn:
        for schema in (SCHEMA, SHOP):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SHOP)))
        conn.execute(
            sql.SQL("CREATE TABLE {}.users (id bigint GENERATED ALWAYS AS IDENTITY, email text)")
            .format(sql.Identifier(SHOP))
        )
    _migrate.upgrade(url, SCHEMA)


server = start_server()
url = server.url
print(f"local PostgreSQL: {url}")
reset(url)
print(f"pgjobs tables in schema {SCHEMA!r} (revision {_migrate.head_revision()})\n")

app = pgjobs.App(dsn=url, schema=SCHEMA)
ran: list[int] = []  # ids of the jobs the handlers below ran, one entry per attempt


@app.job(name="send_welcome_email", queue="mail", max_attempts=5)
def send_welcome_email(user_id: int) -> None:
    ran.append(pgjobs.current_job().id)
    print(f"    handler: welcome, user {user_id}")


@app.job(name="resize_image", queue="images", priority=10)
def resize_image(path: str, width: int) -> dict[str, Any]:
    ran.append(pgjobs.current_job().id)
    print(f"    handler: resizing {path} to {width}px")
    return {"thumbnail": path.replace(".", f".{width}."), "width": width}


# Fails on its first attempt, like a call to a flaky service. The retry_backoff of 0 s
# makes the retry due at once, so the same drain() runs it again (the default backoff
# would wait about 16 to 26 s before the second attempt).
@app.job(name="sync_crm", retry_backoff=lambda attempt: 0)
def sync_crm(user_id: int) -> str:
    job = pgjobs.current_job()
    ran.append(job.id)
    print(f"    handler: sync_crm user {user_id}, attempt {job.attempt}")
    if job.attempt == 1:
        raise ConnectionError("CRM timed out")
    return f"crm contact for user {user_id}"


INSERT_USER = sql.SQL("INSERT INTO {}.users (email) VALUES (%s) RETURNING id").format(
    sql.Identifier(SHOP)
)


def create_user(conn: psycopg.Connection[Any], email: str) -> int:
    row = conn.execute(INSERT_USER, (email,)).fetchone()
    assert row is not None
    return int(row[0])


class SignupFailed(Exception):
    pass


# Workers wake on NOTIFY; this connection listens on the same channel to show when the
# notifications are delivered: at commit, and never for a rolled-back transaction.
listener = psycopg.connect(url, autocommit=True)
listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(app.config.channel)))


def notified(expected: int) -> set[str]:
    timeout = 2.0 if expected else 0.5
    return {n.payload for n in listener.notifies(timeout=timeout, stop_after=expected or None)}


print("1. a committed transaction: a user row and two jobs")
with app.connect() as conn:  # commits when the block ends without an exception
    ada = create_user(conn, "ada@example.com")
    welcome = send_welcome_email.enqueue(conn, user_id=ada)
    resize = resize_image.options(run_in=timedelta(minutes=5)).enqueue(
        conn, path=f"avatars/{ada}.png", width=128
    )
    check(not notified(0), "no notification while the transaction is open")
# Only the job due now wakes workers: one due later sends no notification (polling
# finds it when it is due), so the commit delivers one, for the mail queue.
check(notified(1) == {"mail"}, "one notification for the job due now, delivered at commit")
check(not notified(0), "none for the job due in 5 minutes")

print("2. a transaction that fails: the user row and its job roll back together")
try:
    with app.connect() as conn:  # rolls back when the block ends with an exception
        bob = create_user(conn, "bob@example.com")
        lost = send_welcome_email.enqueue(conn, user_id=bob)
        raise SignupFailed("payment declined")
except SignupFailed:
    pass
check(not notified(0), "no notification for the rolled-back job")

print("3. enqueue_many: three jobs, one statement")
with app.connect() as conn:
    thumbs = resize_image.enqueue_many(
        conn, [{"path": f"photos/{n}.jpg", "width": 640} for n in (1, 2, 3)]
    )
check(notified(1) == {"images"}, "one notification for the whole statement")
listener.close()

print("4. a job whose first attempt will fail")
with app.connect() as conn:
    crm = sync_crm.enqueue(conn, user_id=ada)

JOBS = sql.Identifier(SCHEMA, "jobs")


def fetch(columns: str, where: str = "TRUE", *params: Any) -> list[tuple[Any, ...]]:
    """Rows of the jobs table, read with plain SQL on a connection of our own."""
    query = sql.SQL(f"SELECT {columns} FROM {{}} WHERE {where} ORDER BY id").format(JOBS)
    with app.connect() as conn:
        return conn.execute(query, params).fetchall()


print(f"\nSELECT id, queue, task, args, state, run_at FROM {SCHEMA}.jobs ORDER BY id;")
rows = fetch("id, queue, task, args, state, run_at")
with app.connect() as conn:
    users = conn.execute(
        sql.SQL("SELECT email FROM {}.users ORDER BY id").format(sql.Identifier(SHOP))
    ).fetchall()
due = fetch("run_at > now() + interval '4 minutes'", "id = %s", resize.id)

print(f"  {'id':>3}  {'queue':<7} {'task':<19} {'args':<42} {'state':<10} run_at (UTC)")
for id_, queue, task, args, state, run_at in rows:
    print(
        f"  {id_:>3}  {queue:<7} {task:<19} {json.dumps(args):<42} {state:<10} "
        f"{run_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}"
    )
print()

by_id = {row[0]: row for row in rows}
committed = [welcome.id, resize.id, *(t.id for t in thumbs), crm.id]
check(sorted(by_id) == sorted(committed), f"exactly the committed jobs exist: ids {committed}")
check(lost.id not in by_id, f"the rolled-back job (id {lost.id}) does not exist")
check(users == [("ada@example.com",)], "only the committed user exists")
welcome_row = by_id.get(welcome.id)
check(
    welcome_row is not None
    and welcome_row[1:4] == ("mail", "send_welcome_email", {"user_id": ada}),
    "queue, task and args are stored as given",
)
check(due == [(True,)], "run_in=5 minutes put run_at 5 minutes ahead")
check(
    [by_id[t.id][3]["path"] if t.id in by_id else None for t in thumbs]
    == ["photos/1.jpg", "photos/2.jpg", "photos/3.jpg"],
    "enqueue_many returns the ids in input order",
)
check(all(row[4] == "available" for row in rows), "every job is 'available' (nothing ran yet)")

# The worker's own log lines (one at start, one per outcome, one at stop).
logging.basicConfig(format="    log: %(message)s")
logging.getLogger("pgjobs.worker").setLevel(logging.INFO)

print("\n5. run the due jobs: pgjobs.testing.drain(app), a burst worker in this process")
outcomes = drain(app)
print(f"  drain returned {dict(outcomes)}")
check(
    outcomes == {"succeeded": 5, "retry": 1},
    "5 jobs succeeded; sync_crm failed once and was retried",
)
check(
    fetch("state", "id = %s", resize.id) == [("available",)],
    "the job scheduled 5 minutes ahead still waits: drain leaves future jobs queued",
)

print("\n6. make the scheduled job due (as if 5 minutes passed) and drain again")
with app.connect() as conn:
    conn.execute(
        sql.SQL("UPDATE {} SET run_at = now() WHERE id = %s AND state = 'available'").format(JOBS),
        (resize.id,),
    )
outcomes = drain(app)
print(f"  drain returned {dict(outcomes)}")
check(outcomes == {"succeeded": 1}, "the scheduled job ran")
logging.getLogger("pgjobs.worker").setLevel(logging.WARNING)

print(f"\nSELECT id, task, state, attempt, result, errors FROM {SCHEMA}.jobs ORDER BY id;")
done = fetch("id, task, state, attempt, result, errors")
app.close()
print(f"  {'id':>3}  {'task':<19} {'state':<10} {'attempt':>7}  result / errors")
for id_, task, state, attempt, result, errors in done:
    print(f"  {id_:>3}  {task:<19} {state:<10} {attempt:>7}  {json.dumps(result)}")
    for error in errors:
        print(f"{'':47}error: attempt {error['attempt']}, {error['type']}: {error['message']}")
print()

final = {row[0]: row for row in done}
check(
    sorted(final) == sorted(committed) and all(r[2] == "succeeded" for r in done),
    "every committed job ended 'succeeded'",
)
check(lost.id not in ran, f"the rolled-back job (id {lost.id}) never ran")
check(ran.count(crm.id) == 2, "sync_crm ran twice")
crm_row = final.get(crm.id)
check(
    crm_row is not None
    and crm_row[3] == 2
    and [(e["attempt"], e["type"], e["message"]) for e in crm_row[5]]
    == [(1, "ConnectionError", "CRM timed out")],
    "sync_crm succeeded on attempt 2; its errors column keeps the failure of attempt 1",
)
check(
    all(ran.count(job_id) == 1 for job_id in committed if job_id != crm.id),
    "every other job ran exactly once",
)
resize_row = final.get(resize.id)
check(
    resize_row is not None
    and resize_row[4] == {"thumbnail": f"avatars/{ada}.128.png", "width": 128},
    "a handler's return value is stored in the result column",
)
welcome_done = final.get(welcome.id)
check(
    welcome_done is not None and welcome_done[4] is None,
    "a handler that returns None leaves result NULL",
)

if problems:
    print(f"\ndemo FAILED: {len(problems)} check(s) did not hold", file=sys.stderr)
    sys.exit(1)
print(
    f"\nThe jobs stay in {SCHEMA}.jobs (the next run drops that schema). To look yourself:\n"
    f"  {server.bindir}/psql {url} -c 'TABLE {SCHEMA}.queue_depth'\n"
    "The server keeps running; `.venv/bin/pgjobs dev stop` stops it (data stays in .pgjobs/)."
)
