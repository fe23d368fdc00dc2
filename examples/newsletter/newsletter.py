"""Newsletters sent by pgjobs: the system of docs/tutorial-newsletter.md.

Every few minutes a unique periodic job imports the newsletters that are due: in one
transaction it marks them ``sending``, creates a batch per newsletter and enqueues one
delivery job per subscriber. Each delivery hands its message to the sender, keyed by
the job's id, and records the delivery in the transaction that completes the job. When
every delivery of a newsletter has succeeded, the batch's ``on_success`` marks it sent;
if one uses up its attempts, ``on_death`` flags the newsletter for a human.

Run the workers with ``pgjobs worker --app newsletter:app --processes 2`` from this
folder, with ``PGJOBS_DATABASE_URL`` set. Settings (environment):
``NEWSLETTER_IMPORT_CRON`` (default ``*/5 * * * *``) and ``NEWSLETTER_SEND_LATENCY``
(seconds the local sink takes per message, default 0).
"""

from __future__ import annotations

import atexit
import functools
import os
from datetime import timedelta
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool

import pgjobs

from sink import Message, Sender, SinkSender

app = pgjobs.App()  # PGJOBS_DATABASE_URL; pgjobs' tables in schema "pgjobs"

IMPORT_CRON = os.environ.get("NEWSLETTER_IMPORT_CRON", "*/5 * * * *")
SCHEMA_SQL = Path(__file__).with_name("schema.sql")


def migrate(conn: psycopg.Connection) -> None:
    """Create the example's own tables (after `pgjobs migrate` has created pgjobs')."""
    conn.execute(SCHEMA_SQL.read_text())


@functools.cache
def db() -> ConnectionPool:
    """This process's connections for the handlers (sized for --concurrency up to 20).
    Autocommit: a statement commits on its own unless it runs in `conn.transaction()`."""
    pool = ConnectionPool(app.dsn, min_size=1, max_size=20, kwargs={"autocommit": True},
                          name="newsletter", open=True)
    atexit.register(pool.close)
    return pool


@functools.cache
def sender() -> Sender:
    """The sender every delivery uses: replace this function to send real mail."""
    sink = SinkSender(app.dsn, latency=float(os.environ.get("NEWSLETTER_SEND_LATENCY", "0")))
    atexit.register(sink.close)
    return sink


PICK_DUE = """
SELECT id FROM newsletters
WHERE status = 'scheduled' AND send_at <= now()
ORDER BY send_at
FOR UPDATE SKIP LOCKED  -- an import running alongside (it should not: unique) skips these
"""
SUBSCRIBERS = "SELECT id FROM subscribers ORDER BY id"
MARK_SENDING = """
UPDATE newsletters SET status = 'sending', batch_id = %s, recipients = %s, started_at = now()
WHERE id = %s
"""


# unique_for: a tick while the previous import still waits or runs is dropped, so two
# imports never overlap; the hold ends when the import succeeds. priority=-10 (lower runs
# first): the import and the callbacks do not wait behind 10,000 queued deliveries.
@app.periodic(IMPORT_CRON, name="newsletter.import")
@app.job(name="newsletter.import", queue="newsletter", priority=-10,
         unique_for=timedelta(minutes=10))
def import_due() -> None:
    """Turn every due newsletter into a batch of deliveries, all in one transaction."""
    job = pgjobs.current_job()
    imported: list[int] = []
    with db().connection() as conn, conn.transaction():
        due = [newsletter_id for (newsletter_id,) in conn.execute(PICK_DUE)]
        subscribers = [s for (s,) in conn.execute(SUBSCRIBERS)] if due else []
        for newsletter_id in due:
            batch = app.batch(conn, description=f"newsletter {newsletter_id}")
            batch.on_success(mark_sent, newsletter_id=newsletter_id)
            batch.on_death(flag_for_human, newsletter_id=newsletter_id)
            batch.enqueue_many(deliver, [
                {"newsletter_id": newsletter_id, "subscriber_id": s} for s in subscribers
            ])
            conn.execute(MARK_SENDING, (batch.id, len(subscribers), newsletter_id))
            imported.append(newsletter_id)
        # Completing in the same transaction: a re-run after a crash finds nothing due.
        job.complete(conn, result=imported)


MESSAGE = """
SELECT s.email, n.subject, n.body FROM subscribers s, newsletters n
WHERE s.id = %s AND n.id = %s
"""
RECORD_DELIVERY = """
INSERT INTO deliveries (newsletter_id, subscriber_id, job_id) VALUES (%s, %s, %s)
"""


@app.job(name="newsletter.deliver", queue="mail", max_attempts=5)
def deliver(newsletter_id: int, subscriber_id: int) -> None:
    """Send one subscriber's copy and record it, exactly once per job."""
    job = pgjobs.current_job()
    with db().connection() as conn:
        email, subject, body = conn.execute(MESSAGE, (subscriber_id, newsletter_id)).fetchone()
    # The job id is the same on every attempt of this job, so a re-run (after a crash
    # between this send and the commit below) sends with the same key.
    sender().send(Message(idempotency_key=f"newsletter-job-{job.id}", to=email,
                          subject=subject, body=body, tag=str(newsletter_id)))
    # The delivery row and the job's success commit together, on a connection the worker
    # lends: if this attempt lost its lease meanwhile, both roll back (LeaseLost).
    with job.transaction() as conn:
        conn.execute(RECORD_DELIVERY, (newsletter_id, subscriber_id, job.id))


@app.job(name="newsletter.mark_sent", queue="newsletter", priority=-10)
def mark_sent(newsletter_id: int) -> None:
    """on_success: every delivery of the newsletter has succeeded."""
    with db().connection() as conn:
        conn.execute("UPDATE newsletters SET status = 'sent', sent_at = now() WHERE id = %s",
                     (newsletter_id,))


@app.job(name="newsletter.flag_for_human", queue="newsletter", priority=-10)
def flag_for_human(newsletter_id: int) -> None:
    """on_death: a delivery failed for good; someone has to look at it."""
    with db().connection() as conn:
        conn.execute("UPDATE newsletters SET status = 'needs_attention' WHERE id = %s",
                     (newsletter_id,))
