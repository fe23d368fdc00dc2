"""What the dashboard tests share: a database with a job in every state (some with hostile
values), a batch inside a batch, a worker running a job, a schedule and a paused queue;
and an in-process client of the dashboard app."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from starlette.testclient import TestClient

import pgjobs
from pgjobs.dashboard import BasicAuth, Dashboard, create_app

USER, PASSWORD = "ops", "s3cret: with a colon"
CREDENTIALS = (USER, PASSWORD)

# Markup, quotes, attribute breakers, a right-to-left override (shown reversed if
# rendered raw), a zero-width space, a NUL-free control character.
HOSTILE = ("<script>alert('x')</script>\"'><img src=x onerror=alert(1)>"
           "\u202egnp.exe\u200b\x07")
BIG_ARGS = {"blob": "x" * 1_000_000, "note": HOSTILE}

PAGES = ("/", "/jobs", "/batches", "/periodic", "/workers")


@dataclass
class Seeded:
    available: int
    scheduled: int
    running: int
    succeeded: int
    dead: int
    cancelled: int
    expired: int
    big: int
    batch: int
    child_batch: int
    worker: int

    def detail_pages(self) -> list[str]:
        return [f"/jobs/{self.available}", f"/jobs/{self.running}", f"/jobs/{self.dead}",
                f"/jobs/{self.big}", f"/batches/{self.batch}", f"/batches/{self.child_batch}"]


def insert_job(conn: psycopg.Connection[Any], **columns: Any) -> int:
    columns.setdefault("task", "double")
    columns.setdefault("args", {"x": 1})
    columns["args"] = json.dumps(columns["args"])
    if "errors" in columns:
        columns["errors"] = json.dumps(columns["errors"])
    names = ", ".join(columns)
    values = ", ".join(f"%({name})s" for name in columns)
    row = conn.execute(f"INSERT INTO pgjobs.jobs ({names}) VALUES ({values}) RETURNING id",
                       columns).fetchone()
    assert row is not None
    return int(row[0])


def error(message: str = "boom", at: str = "now") -> list[dict[str, Any]]:
    return [{"attempt": 1, "at": at, "type": "ValueError", "message": message,
             "traceback": f"Traceback (most recent call last):\nValueError: {message}\n"}]


def seed(dsn: str) -> Seeded:
    """Rows written by SQL, as any writer could (the dashboard must show whatever is
    there); the worker row and the running job are a worker's, faked."""
    app = pgjobs.App(dsn=dsn)
    with psycopg.connect(dsn) as conn:
        now = conn.execute("SELECT now()::text").fetchone()[0]  # type: ignore[index]
        newsletter = app.batch(conn, description=f"newsletter {HOSTILE}")
        newsletter.on_success(app.task("mark_sent", queue="mail"))
        member = newsletter.enqueue(app.task("double", queue="mail"), note=HOSTILE, user=7)
        part = newsletter.child("part 1")
        part.enqueue(app.task("double", queue="mail"), x=2)
        batch, child = newsletter.id, part.id
        worker = conn.execute(
            "INSERT INTO pgjobs.workers (host, pid, queues, concurrency, meta) "
            "VALUES (%s, 4242, '{mail,reports}', 8, '{\"lease\": 30}') RETURNING id",
            (f"host-{HOSTILE}",)).fetchone()[0]  # type: ignore[index]
        seeded = Seeded(
            available=member.id,
            scheduled=insert_job(conn, queue="mail", run_at="2999-01-01T00:00:00Z"),
            running=insert_job(conn, queue="mail", state="running", attempt=1,
                               lease_token="00000000-0000-0000-0000-000000000001",
                               lease_expires_at="2999-01-01T00:00:00Z", worker_id=worker,
                               started_at=now, progress=json.dumps({"done": 3, "total": 7}),
                               checkpoint=json.dumps({"cursor": HOSTILE})),
            succeeded=insert_job(conn, queue="mail", state="succeeded", attempt=1,
                                 started_at=now, finished_at=now, result=json.dumps(HOSTILE)),
            dead=insert_job(conn, queue="reports", task="double", args={"x": 21},
                            state="dead", attempt=3, max_attempts=3, finished_at=now,
                            errors=error(HOSTILE, now)),
            cancelled=insert_job(conn, queue="mail", state="cancelled", finished_at=now),
            expired=insert_job(conn, queue="mail", state="expired", finished_at=now),
            big=insert_job(conn, queue="bulk", args=BIG_ARGS),
            batch=batch, child_batch=child, worker=worker,
        )
        conn.execute("INSERT INTO pgjobs.periodic (name, schedule, task, queue, last_tick) "
                     "VALUES (%s, '*/5 * * * *', 'double', 'reports', now())", (HOSTILE,))
        conn.execute("INSERT INTO pgjobs.queues (name, paused) VALUES ('frozen', true)")
    app.close()
    return seeded


def dashboard(dsn: str, **options: Any) -> Dashboard:
    options.setdefault("auth", BasicAuth(USER, PASSWORD))
    return create_app(dsn, **options)


@contextmanager
def client(dsn: str, base: str = "http://testserver", **options: Any) -> Iterator[TestClient]:
    """A client of a dashboard on ``dsn``, signed in unless ``auth`` says otherwise."""
    app = dashboard(dsn, **options)
    with TestClient(app, base_url=base) as test_client:
        test_client.auth = CREDENTIALS
        yield test_client
    app.close()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


# A table the size of a busy production queue, for the plan test (100,000 rows) and the
# page-time benchmark (1,000,000): per thousand jobs 700 succeeded over the last day, 200
# due, 30 scheduled, 10 waiting for a retry, 30 dead, 15 cancelled, 10 expired, 5 running;
# seven queues (one rare: a job in 5,000), thirteen tasks, a tenth of the jobs in batches
# (a batch per hundred jobs; one batch in ten inside another).
FILL_BATCHES = """
INSERT INTO pgjobs.batches (description, total, pending, parent_id, children_pending,
                            children_incomplete)
SELECT 'batch ' || b, 0, 0, CASE WHEN b %% 10 = 0 THEN b / 10 END, c, c
FROM generate_series(1, %(batches)s) AS b,
     LATERAL (SELECT CASE WHEN b * 10 <= %(batches)s THEN 1 ELSE 0 END AS c) AS children
"""
FILL = """
INSERT INTO pgjobs.jobs (queue, task, args, state, attempt, max_attempts, run_at, created_at,
                         started_at, finished_at, errors, lease_token, lease_expires_at,
                         worker_id, batch_id)
SELECT CASE WHEN n %% 5000 = 0 THEN 'rare'
            ELSE (ARRAY['mail', 'reports', 'billing', 'default', 'images', 'webhooks'])[n %% 6 + 1]
       END,
       'task_' || n %% 13,
       jsonb_build_object('user_id', n %% 100000, 'newsletter_id', n %% 50, 'note', 'hello'),
       s.state, s.attempt, 25, s.run_at, now() - (%(jobs)s - n) * interval '50 ms',
       CASE WHEN s.state IN ('succeeded', 'running', 'dead') THEN s.run_at END,
       s.finished_at,
       CASE WHEN s.failed THEN jsonb_build_array(jsonb_build_object(
           'attempt', 1, 'at', now() - random() * interval '1 hour', 'type', 'ValueError',
           'message', 'boom', 'traceback', 'Traceback ...')) ELSE '[]' END,
       CASE WHEN s.state = 'running' THEN gen_random_uuid() END,
       CASE WHEN s.state = 'running' THEN now() + interval '30 seconds' END,
       CASE WHEN s.state = 'running' THEN n %% 8 + 1 END,
       CASE WHEN n %% 10 = 0 THEN n %% %(batches)s + 1 END
FROM generate_series(1, %(jobs)s) AS n
CROSS JOIN LATERAL (
    SELECT r,
           CASE WHEN r < 700 THEN 'succeeded' WHEN r < 940 THEN 'available'
                WHEN r < 970 THEN 'dead' WHEN r < 985 THEN 'cancelled'
                WHEN r < 995 THEN 'expired' ELSE 'running' END AS state,
           CASE WHEN r BETWEEN 930 AND 939 THEN 1 WHEN r < 700 OR r >= 995 THEN 1
                WHEN r BETWEEN 940 AND 969 THEN 25 ELSE 0 END AS attempt,
           CASE WHEN r BETWEEN 900 AND 939 THEN now() + random() * interval '2 hours'
                ELSE now() - random() * interval '1 day' END AS run_at,
           CASE WHEN r < 700 THEN now() - random() * interval '1 day'
                WHEN r BETWEEN 940 AND 994 THEN now() - random() * interval '7 days'
           END AS finished_at,
           r BETWEEN 930 AND 969 AS failed
    FROM (SELECT n %% 1000 AS r) AS m
) AS s
"""


def fill(conn: psycopg.Connection[Any], jobs: int) -> None:
    """``jobs`` jobs of the mix above (and batches for them), then VACUUM ANALYZE so the
    planner and the visibility map see the table as autovacuum would leave it."""
    params = {"jobs": jobs, "batches": max(1, jobs // 100)}
    conn.execute(FILL_BATCHES, params)
    conn.execute(FILL, params)
    conn.commit()
    autocommit, conn.autocommit = conn.autocommit, True
    conn.execute("VACUUM ANALYZE pgjobs.jobs")
    conn.execute("VACUUM ANALYZE pgjobs.batches")
    conn.autocommit = autocommit
