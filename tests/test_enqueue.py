"""Transactional enqueue on a real PostgreSQL: visibility, the caller's transaction,
options, bulk enqueue, enqueue by name, async, NOTIFY, missing schema, custom schema."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

import pgjobs
from pgjobs.db import enqueue as _enqueue
from pgjobs.ops import migrate as _migrate
from pgjobs.testing import drain

Conn = psycopg.Connection[Any]
IDLE, INTRANS = TransactionStatus.IDLE, TransactionStatus.INTRANS


def job_row(conn: Conn, job_id: int, schema: str = "pgjobs") -> dict[str, Any] | None:
    query = sql.SQL("SELECT * FROM {}.jobs WHERE id = %s").format(sql.Identifier(schema))
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, (job_id,)).fetchone()


def job_count(dsn: str, schema: str = "pgjobs") -> int:
    """Jobs visible to a new connection, i.e. committed ones."""
    with psycopg.connect(dsn, autocommit=True) as other:
        query = sql.SQL("SELECT count(*) FROM {}.jobs").format(sql.Identifier(schema))
        row = other.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def register(app: pgjobs.App, name: str = "mail.send", **options: Any) -> pgjobs.Task[..., Any]:
    @app.job(name=name, **options)
    def handler(**kwargs: Any) -> None: ...

    return handler


class CountingCursor(psycopg.Cursor[Any]):
    """Counts the statements sent through a connection (set as its cursor_factory)."""

    statements: list[str] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        text = query.as_string(self) if isinstance(query, sql.Composable) else str(query)
        CountingCursor.statements.append(text)
        return super().execute(query, params, **kwargs)

    def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> Any:
        raise AssertionError("enqueue must not use executemany")


@pytest.fixture(params=["insert", "copy"])
def bulk_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with enqueue's INSERT statements, then with the COPY path that large
    enqueue_many calls take (here from one row: single enqueues too)."""
    monkeypatch.setattr(_enqueue, "COPY_MIN_ROWS", 10**9 if request.param == "insert" else 1)
    return str(request.param)


@pytest.fixture
def counting(conn: Conn) -> Iterator[list[str]]:
    CountingCursor.statements = []
    conn.cursor_factory = CountingCursor
    yield CountingCursor.statements
    conn.cursor_factory = psycopg.Cursor


# -- transactions --------------------------------------------------------------------


def test_commit_makes_the_job_exist(fresh_app: pgjobs.App, fresh_dsn: str) -> None:
    task = register(fresh_app)
    with psycopg.connect(fresh_dsn) as conn:
        job = task.enqueue(conn, user_id=1, tags=["a", "b"])
    assert isinstance(job, pgjobs.Enqueued)
    assert job.duplicate is False
    with psycopg.connect(fresh_dsn) as other:
        row = job_row(other, job.id)
    assert row is not None
    assert row["task"] == "mail.send"
    assert row["queue"] == "default"
    assert row["args"] == {"user_id": 1, "tags": ["a", "b"]}
    assert (row["state"], row["attempt"], row["max_attempts"], row["priority"]) == (
        "available", 0, 25, 0)
    assert row["run_at"] == row["created_at"]
    assert row["expires_at"] is None
    assert row["lease_token"] is None and row["errors"] == [] and row["recoveries"] == 0


@pytest.mark.usefixtures("bulk_path")
def test_rollback_leaves_no_job(fresh_app: pgjobs.App, fresh_dsn: str) -> None:
    task = register(fresh_app)
    with psycopg.connect(fresh_dsn) as conn:
        job = task.enqueue(conn, user_id=1)
        task.enqueue_many(conn, [{"user_id": 2}, {"user_id": 3}])
        assert job_row(conn, job.id) is not None  # visible to its own transaction
        conn.rollback()
        assert job_row(conn, job.id) is None
    assert job_count(fresh_dsn) == 0


def test_exception_before_commit_leaves_no_job(fresh_app: pgjobs.App, fresh_dsn: str) -> None:
    task = register(fresh_app)
    with pytest.raises(RuntimeError, match="application failed"), \
            psycopg.connect(fresh_dsn) as conn:
        task.enqueue(conn, user_id=1)
        raise RuntimeError("application failed after enqueue")
    assert job_count(fresh_dsn) == 0


def test_job_is_invisible_to_others_until_the_enqueuer_commits(
    fresh_app: pgjobs.App, fresh_dsn: str
) -> None:
    task = register(fresh_app)
    with psycopg.connect(fresh_dsn) as conn, psycopg.connect(fresh_dsn, autocommit=True) as other:
        job = task.enqueue(conn, user_id=1)
        assert job_row(other, job.id) is None
        # Not claimable either: a worker locking available rows finds nothing.
        claimable = other.execute(
            "SELECT id FROM pgjobs.jobs WHERE state = 'available' FOR UPDATE SKIP LOCKED"
        ).fetchall()
        assert claimable == []
        conn.commit()
        assert job_row(other, job.id) is not None


@pytest.mark.usefixtures("bulk_path")
def test_enqueue_never_ends_or_reconfigures_the_callers_transaction(
    fresh_app: pgjobs.App, fresh_dsn: str
) -> None:
    task = register(fresh_app)
    with psycopg.connect(fresh_dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        conn.execute("CREATE TABLE users (id int PRIMARY KEY)")
        conn.execute("INSERT INTO users VALUES (1)")
        xid = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        task.enqueue(conn, user_id=1)
        task.enqueue_many(conn, [{"user_id": 2}])
        fresh_app.enqueue(conn, "mail.send", user_id=3)
        # Same transaction, same settings, nothing committed.
        assert conn.info.transaction_status == INTRANS
        assert conn.execute("SELECT pg_current_xact_id()::text").fetchone() == xid
        assert conn.autocommit is False
        assert conn.isolation_level == psycopg.IsolationLevel.SERIALIZABLE
        assert conn.execute("SHOW transaction_isolation").fetchone() == ("serializable",)
        assert job_count(fresh_dsn) == 0
        conn.rollback()
    # The application's write and the jobs went together.
    with psycopg.connect(fresh_dsn) as other:
        assert other.execute("SELECT to_regclass('users')").fetchone() == (None,)
    assert job_count(fresh_dsn) == 0


@pytest.mark.usefixtures("bulk_path")
def test_enqueue_on_an_autocommit_connection(fresh_app: pgjobs.App, fresh_dsn: str) -> None:
    task = register(fresh_app)
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        job = task.enqueue(conn, user_id=1)
        many = task.enqueue_many(conn, [{"user_id": 2}, {"user_id": 3}])
        assert conn.autocommit is True
        assert conn.info.transaction_status == IDLE
        assert job_count(fresh_dsn) == 3
    assert [j.id for j in many] == [job.id + 1, job.id + 2]


@pytest.mark.usefixtures("bulk_path")
def test_enqueue_without_a_connection_commits_on_the_apps_pool(
    fresh_app: pgjobs.App, fresh_dsn: str
) -> None:
    task = register(fresh_app)
    job = task.enqueue(user_id=1)
    assert job_count(fresh_dsn) == 1
    many = task.enqueue_many(None, [{"user_id": 2}, {"user_id": 3}])
    by_name = fresh_app.enqueue(None, "mail.send", user_id=4)
    assert job_count(fresh_dsn) == 4
    with psycopg.connect(fresh_dsn) as other:
        args = [job_row(other, j.id)["args"]["user_id"]  # type: ignore[index]
                for j in [job, *many, by_name]]
    assert args == [1, 2, 3, 4]


# -- options -------------------------------------------------------------------------


def test_task_defaults_are_stored(app: pgjobs.App, conn: Conn) -> None:
    task = register(app, queue="mail", priority=3, max_attempts=7)
    row = job_row(conn, task.enqueue(conn).id)
    assert row is not None
    assert (row["queue"], row["priority"], row["max_attempts"]) == ("mail", 3, 7)


def test_options_are_stored(app: pgjobs.App, conn: Conn) -> None:
    task = register(app)
    run_at = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    expires_at = run_at + timedelta(days=1, microseconds=1)
    job = task.options(
        queue="reports", priority=-32768, max_attempts=1, run_at=run_at, expires_at=expires_at
    ).enqueue(conn, x=1)
    row = job_row(conn, job.id)
    assert row is not None
    assert (row["queue"], row["priority"], row["max_attempts"]) == ("reports", -32768, 1)
    assert row["run_at"] == run_at  # same instant, to the microsecond
    assert row["expires_at"] == expires_at


def test_run_in_counts_from_the_database_clock(app: pgjobs.App, conn: Conn) -> None:
    task = register(app)
    delay = timedelta(minutes=5, seconds=3, microseconds=123)
    job = task.options(run_in=delay).enqueue(conn)
    # created_at and run_at both come from now() in this transaction: exact.
    row = conn.execute(
        "SELECT run_at - created_at, created_at = now() FROM pgjobs.jobs WHERE id = %s",
        (job.id,),
    ).fetchone()
    assert row == (delay, True)


def test_expires_in_counts_from_run_at(app: pgjobs.App, conn: Conn) -> None:
    task = register(app)
    run_in, expires_in = timedelta(hours=2), timedelta(minutes=30, microseconds=7)
    delayed = task.options(run_in=run_in, expires_in=expires_in).enqueue(conn)
    now_job = task.options(expires_in=expires_in).enqueue(conn)
    run_at = datetime(2032, 1, 1, tzinfo=UTC)
    fixed = task.options(run_at=run_at, expires_in=expires_in).enqueue(conn)
    rows = conn.execute(
        "SELECT id, run_at - created_at, expires_at - run_at, expires_at FROM pgjobs.jobs"
        " WHERE id = ANY(%s) ORDER BY id",
        ([delayed.id, now_job.id, fixed.id],),
    ).fetchall()
    assert rows[0][1:3] == (run_in, expires_in)
    assert rows[1][1:3] == (timedelta(0), expires_in)
    assert rows[2][2:] == (expires_in, run_at + expires_in)


def test_options_returns_a_copy_and_leaves_the_task_alone(app: pgjobs.App, conn: Conn) -> None:
    task = register(app, queue="mail", priority=1)
    before = task.opts
    urgent = task.options(queue="urgent", priority=-1)
    assert urgent is not task
    assert urgent.name == task.name and urgent.fn is task.fn
    assert task.opts is before and task.opts.queue == "mail"
    assert app.tasks["mail.send"] is task
    plain, fast = task.enqueue(conn), urgent.enqueue(conn)
    later = task.enqueue(conn)
    queues = [job_row(conn, j.id)["queue"] for j in (plain, fast, later)]  # type: ignore[index]
    assert queues == ["mail", "urgent", "mail"]


# -- enqueue_many --------------------------------------------------------------------


def test_enqueue_many_returns_ids_in_input_order_with_one_statement(
    app: pgjobs.App, conn: Conn, counting: list[str]
) -> None:
    task = register(app)
    rows = [{"i": i, "pad": "x" * (i % 7)} for i in range(300)]
    jobs = task.enqueue_many(conn, rows)
    assert len(counting) == 1
    assert len(jobs) == 300
    ids = [j.id for j in jobs]
    assert ids == sorted(set(ids))
    stored = dict(conn.execute(
        "SELECT id, (args ->> 'i')::int FROM pgjobs.jobs WHERE id = ANY(%s)", (ids,)
    ).fetchall())
    assert [stored[i] for i in ids] == list(range(300))
    assert all(not j.duplicate for j in jobs)


def test_enqueue_many_of_nothing_sends_no_sql(
    app: pgjobs.App, conn: Conn, counting: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    task = register(app)
    assert task.enqueue_many(conn, []) == []
    assert task.enqueue_many(conn, iter(())) == []
    assert counting == []
    assert conn.info.transaction_status == IDLE
    # Nor does it need a connection, a pool or even a DSN.
    monkeypatch.delenv("PGJOBS_DATABASE_URL", raising=False)
    closed = psycopg.connect(conn.info.dsn)
    closed.close()
    assert task.enqueue_many(closed, []) == []
    assert register(pgjobs.App(), "x").enqueue_many(None, []) == []


@pytest.mark.usefixtures("bulk_path")
def test_enqueue_many_stores_options_for_every_row(app: pgjobs.App, conn: Conn) -> None:
    task = register(app, queue="bulk", priority=5, max_attempts=2)
    delay, ttl = timedelta(seconds=90), timedelta(minutes=10)
    ids = [j.id for j in task.options(run_in=delay, expires_in=ttl).enqueue_many(
        conn, ({"i": i} for i in range(3)))]  # any iterable
    rows = conn.execute(
        "SELECT queue, priority, max_attempts, run_at - created_at, expires_at - run_at,"
        " task, state FROM pgjobs.jobs WHERE id = ANY(%s) ORDER BY id", (ids,)
    ).fetchall()
    assert rows == [("bulk", 5, 2, delay, ttl, "mail.send", "available")] * 3
    run_at = datetime(2033, 3, 3, tzinfo=UTC)
    fixed = task.options(run_at=run_at, expires_at=run_at + ttl).enqueue_many(conn, [{}, {}])
    rows = conn.execute(
        "SELECT run_at, expires_at FROM pgjobs.jobs WHERE id = ANY(%s)",
        ([j.id for j in fixed],),
    ).fetchall()
    assert rows == [(run_at, run_at + ttl)] * 2


@pytest.mark.usefixtures("bulk_path")
def test_enqueue_many_to_several_queues_through_separate_tasks(app: pgjobs.App, conn: Conn) -> None:
    mail = register(app, "mail.send", queue="mail")
    report = register(app, "report.build", queue="reports")
    a = mail.enqueue_many(conn, [{"n": 1}, {"n": 2}])
    b = report.enqueue_many(conn, [{"n": 3}])
    c = mail.options(queue="mail.bulk").enqueue_many(conn, [{"n": 4}])
    rows = conn.execute(
        "SELECT task, queue, (args->>'n')::int FROM pgjobs.jobs WHERE id = ANY(%s) ORDER BY id",
        ([j.id for j in [*a, *b, *c]],),
    ).fetchall()
    assert rows == [("mail.send", "mail", 1), ("mail.send", "mail", 2),
                    ("report.build", "reports", 3), ("mail.send", "mail.bulk", 4)]


# -- by name ---------------------------------------------------------------------------


def test_enqueue_by_name_of_a_registered_task(app: pgjobs.App, conn: Conn) -> None:
    @app.job(name="emails.welcome", queue="mail", priority=2)
    def welcome(user_id: int) -> None: ...

    job = app.enqueue(conn, "emails.welcome", user_id=7)
    row = job_row(conn, job.id)
    assert row is not None
    assert (row["task"], row["queue"], row["priority"], row["args"]) == (
        "emails.welcome", "mail", 2, {"user_id": 7})
    with pytest.raises(pgjobs.InvalidArgs):
        app.enqueue(conn, "emails.welcome", user=7)
    assert app.task("emails.welcome") is welcome
    tweaked = app.task("emails.welcome", priority=-3)
    assert tweaked.opts.priority == -3 and welcome.opts.priority == 2


def test_enqueue_by_a_name_no_task_has_is_refused_with_the_close_matches(
    app: pgjobs.App, conn: Conn,
) -> None:
    @app.job(name="shop.send_mail")
    def send_mail(user_id: int) -> None: ...

    @app.job(name="shop.send_sms")
    def send_sms(user_id: int) -> None: ...

    # The new user's mistake: the short name of a registered task.
    with pytest.raises(pgjobs.UnknownTask, match=r"did you mean 'shop\.send_mail'") as raised:
        app.enqueue(conn, "send_mail", user_id=1)
    assert "strict_names=False" in str(raised.value)  # and how a pure producer opts out
    with pytest.raises(pgjobs.UnknownTask, match=r"'shop\.send_mail' or 'shop\.send_sms'"):
        app.enqueue(conn, "shop.send_mial", user_id=1)
    with pytest.raises(pgjobs.UnknownTask) as far:
        app.task("billing.charge", queue="billing")  # enqueue_many and batches use these
    assert "did you mean" not in str(far.value)
    with pytest.raises(pgjobs.UnknownTask):
        app.get_task("send_mail")
    # Nothing was written, and a refusal is a PgJobsError like every other.
    assert conn.execute("SELECT count(*) FROM pgjobs.jobs WHERE task IN "
                        "('send_mail', 'shop.send_mial')").fetchone() == (0,)
    assert issubclass(pgjobs.UnknownTask, pgjobs.PgJobsError)


def test_an_app_without_tasks_or_with_strict_names_off_enqueues_any_name(
    shared_dsn: str, conn: Conn,
) -> None:
    pure = pgjobs.App(dsn=shared_dsn)  # registers nothing: a producer, not checked
    mixed = pgjobs.App(dsn=shared_dsn, strict_names=False)

    @mixed.job(name="local.task")
    def local() -> None: ...

    ids = [pure.enqueue(conn, "shop.send_mail", user_id=1).id,
           mixed.enqueue(conn, "shop.send_mail", user_id=2).id,
           *(j.id for j in mixed.task("shop.send_mail").enqueue_many(conn, [{"user_id": 3}]))]
    assert conn.execute("SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) "
                        "AND task = 'shop.send_mail'", (ids,)).fetchone() == (3,)
    with pytest.raises(pgjobs.InvalidOption, match="strict_names"):
        pgjobs.App(dsn=shared_dsn, strict_name=False)


def test_enqueue_by_name_of_an_unregistered_task(shared_dsn: str, conn: Conn) -> None:
    app = pgjobs.App(dsn=shared_dsn, strict_names=False)

    @app.job(name="emails.welcome")
    def welcome(user_id: int) -> None: ...

    plain = app.enqueue(conn, "billing.charge", invoice=42, anything="goes")
    ref = app.task("billing.charge", queue="billing", max_attempts=3)
    referenced = ref.enqueue(conn, invoice=43)
    assert "billing.charge" not in app.tasks  # a reference does not register a handler
    rows = conn.execute(
        "SELECT task, queue, max_attempts, args FROM pgjobs.jobs WHERE id = ANY(%s) ORDER BY id",
        ([plain.id, referenced.id],),
    ).fetchall()
    assert rows == [
        ("billing.charge", "default", 25, {"invoice": 42, "anything": "goes"}),
        ("billing.charge", "billing", 3, {"invoice": 43}),
    ]


# -- async -----------------------------------------------------------------------------


@pytest.mark.usefixtures("bulk_path")
def test_enqueue_async_on_an_async_connection(fresh_app: pgjobs.App, fresh_dsn: str) -> None:
    task = register(fresh_app, queue="mail")

    async def scenario() -> tuple[pgjobs.Enqueued, pgjobs.Enqueued, list[pgjobs.Enqueued]]:
        async with await psycopg.AsyncConnection.connect(fresh_dsn) as aconn:
            first = await task.enqueue_async(aconn, user_id=1)
            assert aconn.info.transaction_status == INTRANS
            assert job_count(fresh_dsn) == 0
            await aconn.rollback()
            second = await task.options(priority=4).enqueue_async(aconn, user_id=2)
            many = await task.enqueue_many_async(aconn, [{"user_id": 3}, {"user_id": 4}])
            assert await task.enqueue_many_async(aconn, []) == []
            assert aconn.info.transaction_status == INTRANS
            await aconn.commit()
        return first, second, many

    first, second, many = asyncio.run(scenario())
    with psycopg.connect(fresh_dsn) as other:
        assert job_row(other, first.id) is None
        row = job_row(other, second.id)
        users = [job_row(other, j.id)["args"]["user_id"] for j in many]  # type: ignore[index]
    assert row is not None
    assert (row["queue"], row["priority"], row["args"]) == ("mail", 4, {"user_id": 2})
    assert users == [3, 4]


@pytest.mark.usefixtures("bulk_path")
def test_enqueue_async_without_a_connection(fresh_app: pgjobs.App, fresh_dsn: str) -> None:
    task = register(fresh_app)

    async def scenario() -> list[pgjobs.Enqueued]:
        try:
            jobs = [await task.enqueue_async(user_id=1)]
            jobs += await asyncio.gather(*(task.enqueue_async(user_id=i) for i in (2, 3)))
            with pytest.raises(pgjobs.InvalidArgs):
                await task.enqueue_async(user_id=float("nan"))
            return jobs
        finally:
            await fresh_app.aclose()

    jobs = asyncio.run(scenario())
    assert job_count(fresh_dsn) == 3
    with psycopg.connect(fresh_dsn) as other:
        users = sorted(job_row(other, j.id)["args"]["user_id"] for j in jobs)  # type: ignore[index]
    assert users == [1, 2, 3]


# -- NOTIFY ----------------------------------------------------------------------------

SENTINEL = "test-sentinel"


class Listener:
    """A LISTEN connection that collects notifications up to a sentinel.

    The sentinel is sent from another connection and committed after the transaction
    under test committed (or rolled back), and notifications are delivered in commit order,
    so everything received before it is everything that transaction sent: no sleeps.
    """

    def __init__(self, dsn: str, channel: str) -> None:
        self.dsn, self.channel = dsn, channel
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def received(self) -> list[str]:
        with psycopg.connect(self.dsn, autocommit=True) as sender:
            sender.execute("SELECT pg_notify(%s, %s)", (self.channel, SENTINEL))
        payloads = []
        for notify in self.conn.notifies(timeout=30):
            assert notify.channel == self.channel
            if notify.payload == SENTINEL:
                return payloads
            payloads.append(notify.payload)
        raise AssertionError("the sentinel notification never arrived")

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


@pytest.fixture
def listener(fresh_app: pgjobs.App, fresh_dsn: str) -> Iterator[Listener]:
    with Listener(fresh_dsn, fresh_app.config.channel) as listening:
        yield listening


@pytest.mark.usefixtures("bulk_path")
def test_notify_once_per_statement_after_commit(
    fresh_app: pgjobs.App, fresh_dsn: str, listener: Listener
) -> None:
    assert fresh_app.config.channel == "pgjobs_pgjobs"
    mail = register(fresh_app, "mail.send", queue="mail")
    report = register(fresh_app, "report.build", queue="reports")
    with psycopg.connect(fresh_dsn) as conn:
        mail.enqueue(conn, n=1)
        assert listener.received() == []  # not before commit
        conn.commit()
        assert listener.received() == ["mail"]

        mail.enqueue_many(conn, [{"n": i} for i in range(5)])
        conn.commit()
        assert listener.received() == ["mail"]  # one per statement, not per row

        mail.enqueue_many(conn, [{"n": 1}])
        report.enqueue_many(conn, [{"n": 2}, {"n": 3}])
        mail.options(queue="other").enqueue(conn)
        conn.commit()
        assert sorted(listener.received()) == ["mail", "other", "reports"]


@pytest.mark.usefixtures("bulk_path")
def test_jobs_due_later_notify_nobody(
    fresh_app: pgjobs.App, fresh_dsn: str, listener: Listener
) -> None:
    task = register(fresh_app, queue="mail")
    later = task.options(run_in=timedelta(minutes=5))
    with psycopg.connect(fresh_dsn) as conn:
        later.enqueue(conn, n=1)
        later.enqueue_many(conn, [{"n": 2}, {"n": 3}])
        later.options(unique_key="k").enqueue(conn, n=4)  # the unique-job statement
        conn.commit()
        assert listener.received() == []
        task.options(run_at=datetime.now(UTC) - timedelta(seconds=1)).enqueue(conn, n=5)
        conn.commit()
        assert listener.received() == ["mail"]
        task.options(unique_key="j").enqueue_many(conn, [{"n": 6}])
        conn.commit()
        assert listener.received() == ["mail"]
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pgjobs.jobs").fetchone() == (6,)


@pytest.mark.usefixtures("bulk_path")
def test_an_app_with_notify_off_notifies_nobody(fresh_dsn: str, listener: Listener) -> None:
    app = pgjobs.App(dsn=fresh_dsn, notify=False)
    try:
        task = register(app, queue="mail")
        with psycopg.connect(fresh_dsn) as conn:
            task.enqueue(conn, n=1)
            task.enqueue_many(conn, [{"n": 2}, {"n": 3}])
            task.options(unique_key="k").enqueue(conn, n=4)
            conn.commit()
        task.enqueue(n=5)  # the app's pool
        assert listener.received() == []
        stats = drain(app)  # polling finds them
        assert stats == {"succeeded": 5}
    finally:
        app.close()


@pytest.mark.usefixtures("bulk_path")
def test_no_notify_after_rollback(
    fresh_app: pgjobs.App, fresh_dsn: str, listener: Listener
) -> None:
    task = register(fresh_app, queue="mail")
    with psycopg.connect(fresh_dsn) as conn:
        task.enqueue(conn, n=1)
        task.enqueue_many(conn, [{"n": 2}])
        conn.rollback()
    assert listener.received() == []
    with pytest.raises(ZeroDivisionError), psycopg.connect(fresh_dsn) as conn:
        task.enqueue(conn, n=3)
        _ = 1 / 0
    assert listener.received() == []


@pytest.mark.usefixtures("bulk_path")
def test_notify_on_autocommit_and_pool_enqueues(
    fresh_app: pgjobs.App, fresh_dsn: str, listener: Listener
) -> None:
    task = register(fresh_app, queue="mail")
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        task.enqueue(conn, n=1)
    assert listener.received() == ["mail"]
    task.enqueue_many(None, [{"n": 2}, {"n": 3}])
    assert listener.received() == ["mail"]


# -- missing schema, custom schema -------------------------------------------------------


@pytest.mark.usefixtures("bulk_path")
def test_schema_not_ready_when_never_migrated(empty_dsn: str) -> None:
    app = pgjobs.App(dsn=empty_dsn)
    task = register(app)
    try:
        with psycopg.connect(empty_dsn) as conn:
            with pytest.raises(pgjobs.SchemaNotReady, match="pgjobs migrate") as info:
                task.enqueue(conn, x=1)
            assert info.value.schema == "pgjobs"
            assert isinstance(info.value.__cause__, (psycopg.errors.UndefinedTable,
                                                     psycopg.errors.InvalidSchemaName))
            conn.rollback()
            with pytest.raises(pgjobs.SchemaNotReady):
                task.enqueue_many(conn, [{"x": 1}])
            conn.rollback()
        with pytest.raises(pgjobs.SchemaNotReady):
            task.enqueue(x=1)

        async def on_async() -> None:
            try:
                with pytest.raises(pgjobs.SchemaNotReady):
                    await task.enqueue_async(x=1)
            finally:
                await app.aclose()

        asyncio.run(on_async())
    finally:
        app.close()


def test_schema_not_ready_when_the_schema_exists_without_tables(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA pgjobs")
        with pytest.raises(pgjobs.SchemaNotReady) as info:
            register(pgjobs.App()).enqueue(conn, x=1)
    assert isinstance(info.value.__cause__, psycopg.errors.UndefinedTable)


@pytest.mark.usefixtures("bulk_path")
@pytest.mark.parametrize("schema", ["jobs_x", "Jobs_X"])  # the second needs quoting
def test_custom_schema_is_separate_from_pgjobs(fresh_dsn: str, schema: str) -> None:
    _migrate.upgrade(fresh_dsn, schema)
    custom = pgjobs.App(dsn=fresh_dsn, schema=schema)
    default = pgjobs.App(dsn=fresh_dsn)
    assert custom.config.channel == f"pgjobs_{schema}"
    with Listener(fresh_dsn, custom.config.channel) as theirs, \
            Listener(fresh_dsn, default.config.channel) as ours:
        with psycopg.connect(fresh_dsn) as conn:
            in_custom = register(custom, queue="q1").enqueue(conn, where="custom")
            many = register(custom, "other", queue="q2").enqueue_many(conn, [{"n": 1}])
            in_default = register(default).enqueue(conn, where="default")
        assert sorted(theirs.received()) == ["q1", "q2"]
        assert ours.received() == ["default"]
    assert job_count(fresh_dsn, schema) == 2
    assert job_count(fresh_dsn) == 1
    with psycopg.connect(fresh_dsn) as other:
        assert job_row(other, in_custom.id, schema)["args"] == {"where": "custom"}  # type: ignore[index]
        assert job_row(other, many[0].id, schema)["queue"] == "q2"  # type: ignore[index]
        assert job_row(other, in_default.id)["args"] == {"where": "default"}  # type: ignore[index]


def test_custom_schema_not_migrated_is_not_ready(fresh_dsn: str) -> None:
    app = pgjobs.App(dsn=fresh_dsn, schema="not_migrated")
    with psycopg.connect(fresh_dsn, autocommit=True) as conn, \
            pytest.raises(pgjobs.SchemaNotReady) as info:
        register(app).enqueue(conn)
    assert info.value.schema == "not_migrated"
    assert "'not_migrated'" in str(info.value)


# -- large enqueue_many by COPY ----------------------------------------------------------

STORED = ("queue, task, args, args::text, priority, state, attempt, max_attempts, "
          "run_at - created_at, expires_at - run_at, batch_id IS NOT NULL, unique_key, "
          "concurrency_key, concurrency_limit, rate_limit, rate_period, errors, result, meta")


def stored(conn: Conn, ids: list[int]) -> list[tuple[Any, ...]]:
    query = f"SELECT {STORED} FROM pgjobs.jobs WHERE id = ANY(%s) ORDER BY id"
    return conn.execute(query, (ids,)).fetchall()


def test_a_large_enqueue_many_is_copied_and_stores_exactly_what_insert_stores(
    fresh_app: pgjobs.App, fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COPY from COPY_MIN_ROWS rows: every column as the INSERT statement stores it,
    including per-key limits (rows without a key have none), options, batches, and args
    of every JSON kind, non-ASCII text included."""

    @fresh_app.job(name="bulk.keyed", queue="bulk", priority=3, max_attempts=4,
                   concurrency_key=lambda tenant=None, **_: tenant, concurrency_limit=2,
                   rate_limit=5, rate_period=timedelta(seconds=7))
    def keyed(n: int, tenant: str | None = None, payload: Any = None) -> None: ...

    n = _enqueue.COPY_MIN_ROWS
    rows = [{"n": i, "tenant": None if i % 3 else f"t{i % 4}",
             "payload": [i, "é😀\\u0000", {"deep": {"x": 1.5}}, None, True]} for i in range(n)]
    later = keyed.options(run_in=timedelta(minutes=5), expires_in=timedelta(hours=1))

    def enqueue_both_ways(conn: Conn) -> tuple[list[int], list[int]]:
        batch = fresh_app.batch(conn)
        copied = [j.id for j in batch.enqueue_many(later, rows)]
        with monkeypatch.context() as patch:
            patch.setattr(_enqueue, "COPY_MIN_ROWS", 10**9)
            inserted = [j.id for j in batch.enqueue_many(later, rows)]
        assert batch.status().total == 2 * n
        return copied, inserted

    with psycopg.connect(fresh_dsn, cursor_factory=CountingCursor) as copying:
        CountingCursor.statements = []
        copied, inserted = enqueue_both_ways(copying)
        copying.commit()
    assert any(text.lstrip().startswith("SELECT array(SELECT nextval")
               for text in CountingCursor.statements)
    assert copied == sorted(copied) and len(set(copied)) == n
    with psycopg.connect(fresh_dsn) as conn:
        as_copied, as_inserted = stored(conn, copied), stored(conn, inserted)
    assert as_copied == as_inserted
    assert [row[2] for row in as_copied] == rows
    assert {row[12:16] for row in as_copied} == {
        (None, None, None, None), *((f"t{k}", 2, 5, timedelta(seconds=7)) for k in range(4))}


def test_a_copied_enqueue_many_into_a_finished_batch_is_refused_and_writes_nothing(
    fresh_app: pgjobs.App, fresh_dsn: str
) -> None:
    task = register(fresh_app)
    with psycopg.connect(fresh_dsn) as conn:
        batch = fresh_app.batch(conn)
        batch.enqueue(task, n=0)
        conn.commit()
    assert drain(fresh_app) == {"succeeded": 1}
    with psycopg.connect(fresh_dsn) as conn:
        with pytest.raises(pgjobs.BatchFinished, match="already succeeded"):
            task.options(batch=batch.id).enqueue_many(
                conn, [{"n": i} for i in range(_enqueue.COPY_MIN_ROWS)])
        conn.rollback()
    assert job_count(fresh_dsn) == 1


def test_a_copied_enqueue_many_on_an_autocommit_connection_is_one_transaction(
    fresh_app: pgjobs.App, fresh_dsn: str, listener: Listener
) -> None:
    """Reserving ids and notifying, then COPY: together or not at all."""
    task = register(fresh_app, queue="mail")
    rows = [{"n": i} for i in range(_enqueue.COPY_MIN_ROWS)]
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        jobs = task.enqueue_many(conn, rows)
        assert conn.info.transaction_status == IDLE and conn.autocommit
        assert job_count(fresh_dsn) == len(rows)
        assert listener.received() == ["mail"]
        with pytest.raises(pgjobs.InvalidArgs):  # refused before any SQL
            task.enqueue_many(conn, [*rows, {"n": float("nan")}])
        bad = task.options(max_attempts=2**31 - 1)
        conn.execute("ALTER TABLE pgjobs.jobs ADD CONSTRAINT no_n_7 "
                     "CHECK ((args->>'n')::int <> 7) NOT VALID")
        with pytest.raises(psycopg.errors.CheckViolation):
            bad.enqueue_many(conn, rows)
        assert conn.info.transaction_status == IDLE
    assert job_count(fresh_dsn) == len(rows)
    assert listener.received() == []  # the failed COPY's notification never went out
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)


def test_a_large_enqueue_many_in_a_pipeline_is_inserted(
    fresh_app: pgjobs.App, fresh_dsn: str
) -> None:
    """COPY is not allowed in pipeline mode: the INSERT statement is used there."""
    task = register(fresh_app)
    rows = [{"n": i} for i in range(_enqueue.COPY_MIN_ROWS)]

    async def on_async() -> list[pgjobs.Enqueued]:
        async with await psycopg.AsyncConnection.connect(fresh_dsn) as aconn:
            async with aconn.pipeline():
                jobs = await task.enqueue_many_async(aconn, rows)
            await aconn.commit()
        return jobs

    with psycopg.connect(fresh_dsn) as conn, conn.pipeline():
        first = task.enqueue_many(conn, rows)
    second = asyncio.run(on_async())
    assert job_count(fresh_dsn) == 2 * len(rows)
    with psycopg.connect(fresh_dsn) as conn:
        args = conn.execute("SELECT (args->>'n')::int FROM pgjobs.jobs WHERE id = ANY(%s) "
                            "ORDER BY id", ([j.id for j in first + second],)).fetchall()
    assert [a for (a,) in args] == [r["n"] for r in rows] * 2
