"""Enqueue from SQL: ``pgjobs.enqueue(task, args, ...)`` (revision 0012) reads the task's
queue and defaults from the ``tasks`` registry that workers fill, and writes the same job
the Python enqueue writes: same columns, the same unique key (a duplicate of a Python
enqueue is a duplicate in SQL), the same batch count and the same notification. From a
trigger on a user table, the job commits with the row and a real worker runs it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs.core.limits import KeyLimit
from pgjobs.db import leases, workers
from tests.helpers import harness_database, query, scalar, wait_until
from tests.workerapps import registry
from tests.workerprocs import Spawner, spawner

Conn = psycopg.Connection[Any]

COLUMNS = ("queue", "task", "args", "priority", "max_attempts", "run_at", "expires_at",
           "concurrency_key", "concurrency_limit", "rate_limit", "rate_period", "unique_key",
           "batch_id", "meta", "state", "attempt")


@pytest.fixture
def tasks(app: pgjobs.App) -> pgjobs.App:
    """``app`` with tasks of every kind of default the registry stores."""

    @app.job(name="parity.plain", queue="mail", priority=-3, max_attempts=7,
             run_in=timedelta(seconds=30), expires_in=timedelta(minutes=10))
    def plain(user_id: int, note: str = "") -> None: ...

    @app.job(name="parity.keyed", concurrency_key="customer:{customer_id}/{flag}",
             concurrency_limit=2, rate_limit=5, rate_period=timedelta(seconds=60))
    def keyed(customer_id: int, flag: bool = False) -> None: ...

    @app.job(name="parity.unique", queue="reports", unique_for=timedelta(hours=1))
    def unique(report: dict[str, Any]) -> None: ...

    @app.job(name="parity.task_wide", concurrency_limit=1)
    def task_wide() -> None: ...

    @app.job(name="parity.callable_key", concurrency_key=lambda user_id: f"u{user_id}",
             concurrency_limit=1)
    def callable_key(user_id: int) -> None: ...

    @app.job(name="parity.raises", unique_for=timedelta(hours=1), on_duplicate="raise")
    def raises(n: int) -> None: ...

    return app


def register(conn: Conn, app: pgjobs.App) -> None:
    """What a worker of ``app`` does at start: its tasks into the registry."""
    workers.register_tasks(app.queries, app.tasks.values()).run(conn)


def sql_enqueue(conn: Conn, task: str, args: dict[str, Any] | None = None,
                **options: Any) -> int:
    names = "".join(f", {name} => %({name})s" for name in options)
    return int(conn.execute(f"SELECT pgjobs.enqueue(%(task)s, %(args)s::jsonb{names})",
                            {"task": task, "args": json.dumps(args or {}), **options}
                            ).fetchone()[0])  # type: ignore[index]


def row(conn: Conn, job_id: int) -> dict[str, Any]:
    found = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM pgjobs.jobs WHERE id = %s",
                         (job_id,)).fetchone()
    assert found is not None
    return dict(zip(COLUMNS, found, strict=True))


def test_a_worker_registers_its_tasks_definitions(conn: Conn, tasks: pgjobs.App) -> None:
    register(conn, tasks)
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT name, queue, priority, max_attempts, run_in, expires_in, unique_for, "
        "on_duplicate, concurrency_key, concurrency_key_parts, concurrency_limit, "
        "rate_limit, rate_period FROM pgjobs.tasks WHERE name LIKE 'parity.%'")}
    assert rows["parity.plain"] == ("mail", -3, 7, timedelta(seconds=30),
                                    timedelta(minutes=10), None, "return", None, None, None,
                                    None, None)
    assert rows["parity.keyed"][7:] == ("customer:{customer_id}/{flag}",
                                        ["customer:", "customer_id", "/", "flag", ""], 2, 5,
                                        timedelta(seconds=60))
    assert rows["parity.task_wide"][7:9] == ("parity.task_wide", ["parity.task_wide"])
    # a callable key: the limit is stored, the key only Python can compute
    assert rows["parity.callable_key"][7:10] == (None, None, 1)
    assert rows["parity.raises"][5:7] == (timedelta(hours=1), "raise")


@pytest.mark.parametrize(("task", "args", "options", "python_options"), [
    ("parity.plain", {"user_id": 1, "note": "é \"quoted\""}, {}, {}),
    ("parity.plain", {"user_id": 2}, {"queue": "other", "priority": 4, "max_attempts": 2},
     {"queue": "other", "priority": 4, "max_attempts": 2}),
    # run_in replaces the task's run_in; expires_in counts from run_at
    ("parity.plain", {"user_id": 3}, {"run_in": timedelta(hours=2),
                                      "expires_in": timedelta(seconds=5)},
     {"run_in": timedelta(hours=2), "expires_in": timedelta(seconds=5)}),
    ("parity.keyed", {"customer_id": 42, "flag": True}, {}, {}),
    ("parity.keyed", {"customer_id": "acme", "flag": None}, {}, {}),
    ("parity.task_wide", {}, {}, {}),
])
def test_sql_enqueue_writes_the_row_python_writes(
    conn: Conn, tasks: pgjobs.App, task: str, args: dict[str, Any], options: dict[str, Any],
    python_options: dict[str, Any],
) -> None:
    register(conn, tasks)
    # One transaction: now() is the same for both, so run_at and expires_at are equal.
    by_python = tasks.task(task).options(**python_options).enqueue(conn, **args).id
    by_sql = sql_enqueue(conn, task, args, **options)
    assert by_sql != by_python
    assert row(conn, by_sql) == row(conn, by_python)


def test_sql_enqueue_shares_unique_keys_with_python(conn: Conn, tasks: pgjobs.App) -> None:
    register(conn, tasks)
    report = {"b": [1, {"z": 1.5, "a": "ü"}], "a": None, "flag": False}
    first = tasks.task("parity.unique").enqueue(conn, report=report)
    # the same args (keys in another order): the key Python computed, so a duplicate
    assert sql_enqueue(conn, "parity.unique", {"report": dict(reversed(report.items()))}) \
        == first.id
    other = sql_enqueue(conn, "parity.unique", {"report": {"a": 2}})
    assert other != first.id
    # and the other way round
    assert tasks.task("parity.unique").enqueue(conn, report={"a": 2}).id == other
    assert tasks.task("parity.unique").enqueue(conn, report={"a": 2}).duplicate
    # an explicit key and window
    keyed = sql_enqueue(conn, "parity.plain", {"user_id": 1}, unique_key="once",
                        unique_for=timedelta(minutes=1))
    assert tasks.task("parity.plain").options(unique_key="once").enqueue(
        conn, user_id=9).id == keyed
    assert row(conn, keyed)["unique_key"] == "once"
    assert scalar_in(conn, "SELECT expires_at - now() FROM pgjobs.unique_keys "
                           "WHERE key = 'once'") == timedelta(seconds=90)  # run_in + window
    # the task says on_duplicate="raise": SQL raises too
    tasks.task("parity.raises").enqueue(conn, n=1)
    with pytest.raises(psycopg.errors.UniqueViolation, match="duplicate job"):
        sql_enqueue(conn, "parity.raises", {"n": 1})


def scalar_in(conn: Conn, text: str) -> Any:
    found = conn.execute(text).fetchone()
    return None if found is None else found[0]


def test_sql_enqueue_counts_jobs_into_a_batch(conn: Conn, tasks: pgjobs.App) -> None:
    register(conn, tasks)
    batch = tasks.batch(conn, "mixed producers")
    in_python = tasks.task("parity.plain").options(batch=batch).enqueue(conn, user_id=1)
    in_sql = sql_enqueue(conn, "parity.plain", {"user_id": 2}, batch_id=batch.id)
    assert row(conn, in_sql)["batch_id"] == row(conn, in_python.id)["batch_id"] == batch.id
    status = tasks.batch_status(conn, batch.id)
    assert (status.total, status.pending) == (2, 2)


def test_a_task_nobody_registered_needs_a_queue(conn: Conn, tasks: pgjobs.App) -> None:
    with pytest.raises(psycopg.Error) as caught:
        sql_enqueue(conn, "nobody.knows")
    assert caught.value.sqlstate == "PJ003"
    assert "unknown task 'nobody.knows'" in str(caught.value)
    assert "start a worker whose app registers it" in (caught.value.diag.message_hint or "")
    conn.rollback()
    # with a queue: pgjobs' defaults, as a Python reference without options
    job_id = sql_enqueue(conn, "nobody.knows", {"a": 1}, queue="later")
    reference = pgjobs.App(dsn=tasks.dsn, strict_names=False)
    try:
        python_id = reference.task("nobody.knows", queue="later").enqueue(conn, a=1).id
        assert row(conn, job_id) == row(conn, python_id)
    finally:
        reference.close()


@pytest.mark.parametrize(("call", "message"), [
    ("SELECT pgjobs.enqueue('parity.plain', '[1]')", "args must be a JSON object"),
    ("SELECT pgjobs.enqueue('parity.plain', run_at => now(), run_in => '1 s')",
     "give run_at or run_in, not both"),
    ("SELECT pgjobs.enqueue('parity.plain', priority => 40000)", "priority must be in"),
    ("SELECT pgjobs.enqueue('parity.plain', max_attempts => 0)", "max_attempts must be 1"),
    ("SELECT pgjobs.enqueue('parity.plain', queue => 'no spaces')", "invalid queue name"),
    ("SELECT pgjobs.enqueue('parity.plain', unique_until => 'never')", "unique_until must"),
    ("SELECT pgjobs.enqueue('parity.plain', expires_in => '-1 s')", "must be positive"),
    ("SELECT pgjobs.enqueue('bad name!')", "invalid task name"),
    ("SELECT pgjobs.enqueue('parity.keyed', '{\"flag\": true}')",
     "needs argument 'customer_id'"),
    ("SELECT pgjobs.enqueue('parity.keyed', '{\"customer_id\": [1]}')",
     "needs argument 'customer_id' as a string, number, boolean or null, not array"),
    ("SELECT pgjobs.enqueue('parity.callable_key', '{\"user_id\": 1}')",
     "computed in Python"),
])
def test_invalid_values_are_refused_with_what_to_do(
    conn: Conn, tasks: pgjobs.App, call: str, message: str
) -> None:
    register(conn, tasks)
    with pytest.raises(psycopg.Error, match=message) as caught:
        conn.execute(call)
    assert caught.value.sqlstate == "22023"
    conn.rollback()
    assert scalar_in(conn, "SELECT count(*) FROM pgjobs.jobs WHERE task LIKE 'parity.%'") == 0


def test_a_python_producer_enqueues_by_name_with_the_registry(
    conn: Conn, tasks: pgjobs.App
) -> None:
    register(conn, tasks)
    producer = pgjobs.App(dsn=tasks.dsn)  # imports none of the tasks
    try:
        for task, args in (("parity.plain", {"user_id": 5}),
                           ("parity.keyed", {"customer_id": 3, "flag": False})):
            by_name = producer.enqueue(conn, task, **args).id
            by_code = tasks.task(task).enqueue(conn, **args).id
            assert row(conn, by_name) == row(conn, by_code)
        # options given with the name win over the registry's
        job_id = producer.task("parity.plain", priority=9).options(max_attempts=1).enqueue(
            conn, user_id=1).id
        assert (row(conn, job_id)["queue"], row(conn, job_id)["priority"],
                row(conn, job_id)["max_attempts"]) == ("mail", 9, 1)
        held = producer.enqueue(conn, "parity.unique", report={"x": 1})
        assert tasks.task("parity.unique").enqueue(conn, report={"x": 1}).id == held.id
        with pytest.raises(pgjobs.InvalidOption, match="computed by a Python callable"):
            producer.enqueue(conn, "parity.callable_key", user_id=1)
        # a name no worker registered: pgjobs' defaults, as before the registry
        assert row(conn, producer.enqueue(conn, "nobody.registered").id)["queue"] == "default"
    finally:
        producer.close()


def test_an_async_producer_enqueues_by_name_with_the_registry(fresh_app: pgjobs.App) -> None:
    @fresh_app.job(name="by_name.async", queue="mail", priority=2)
    def task() -> None: ...

    with psycopg.connect(fresh_app.dsn) as c:
        register(c, fresh_app)
    producer = pgjobs.App(dsn=fresh_app.dsn)

    async def enqueue() -> tuple[int, int]:
        try:
            async with await psycopg.AsyncConnection.connect(fresh_app.dsn) as aconn:
                in_tx = (await producer.task("by_name.async").enqueue_async(aconn)).id
            producer._definitions.clear()  # read again, on the async pool this time
            own = (await producer.task("by_name.async").enqueue_async(None)).id
            return in_tx, own
        finally:
            await producer.aclose()

    ids = asyncio.run(enqueue())
    assert query(fresh_app.dsn, "SELECT queue, priority FROM pgjobs.jobs WHERE id = ANY(%s)",
                 list(ids)) == [("mail", 2)] * 2


def test_sql_enqueue_notifies_as_python_does(fresh_app: pgjobs.App) -> None:
    @fresh_app.job(name="notify.me", queue="mail")
    def notify_me() -> None: ...

    with psycopg.connect(fresh_app.dsn, autocommit=True) as listener, \
            psycopg.connect(fresh_app.dsn) as c:
        register(c, fresh_app)
        c.commit()
        listener.execute("LISTEN pgjobs_pgjobs")

        def heard_after_commit() -> list[tuple[str, str]]:
            assert list(listener.notifies(timeout=0.2)) == []  # nothing before the commit
            c.commit()
            return [(n.channel, n.payload) for n in listener.notifies(timeout=1)]

        notify_me.enqueue(c)
        assert heard_after_commit() == [("pgjobs_pgjobs", "mail")]
        sql_enqueue(c, "notify.me")
        assert heard_after_commit() == [("pgjobs_pgjobs", "mail")]
        sql_enqueue(c, "notify.me", run_in=timedelta(minutes=5))  # due later: nobody
        notify_me.options(run_in=timedelta(minutes=5)).enqueue(c)
        assert heard_after_commit() == []


def test_canonical_json_matches_python(conn: Conn) -> None:
    for value in ({"b": 1, "a": [True, None, "x\n\"y\"", {"é": -2, "A": 0.5}], "": {}},
                  [], "tab\tand \u2028", 10**20):
        python = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        found = conn.execute("SELECT pgjobs.canonical_json(%s::jsonb)",
                             (json.dumps(value),)).fetchone()
        assert found is not None and found[0] == python


def test_key_limits_sql_parts() -> None:
    assert KeyLimit("c:{a}{b}-{{x}}", 1).sql_parts() == ["c:", "a", "", "b", "-{x}"]
    assert KeyLimit("plain", 1).sql_parts() == ["plain"]
    for unsupported in ("{a.b}", "{a[0]}", "{a!r}", "{a:>4}", "{}", "{a", lambda: "k"):
        assert KeyLimit(unsupported, 1).sql_parts() is None


def test_the_heartbeat_refreshes_last_seen_at_once_a_minute(
    conn: Conn, tasks: pgjobs.App
) -> None:
    register(conn, tasks)
    q = tasks.queries
    worker_id = workers.register(q, "host", 1, ["mail"], 1, "test", 30.0,
                                 ["parity.plain"]).run(conn)
    conn.execute("UPDATE pgjobs.tasks SET last_seen_at = now() - interval '2 minutes'")

    def seen() -> dict[str, Any]:
        return dict(conn.execute("SELECT name, last_seen_at FROM pgjobs.tasks "
                                 "WHERE name LIKE 'parity.%'").fetchall())

    before = seen()
    leases.heartbeat(q, [], [], timedelta(seconds=30), worker_id).run(conn)
    after = seen()
    assert after["parity.plain"] > before["parity.plain"]
    # only the worker's own tasks
    assert {k: v for k, v in after.items() if k != "parity.plain"} == \
        {k: v for k, v in before.items() if k != "parity.plain"}
    leases.heartbeat(q, [], [], timedelta(seconds=30), worker_id).run(conn)
    assert seen() == after  # fresh: not written again


# -- from a trigger, run by a real worker ---------------------------------------------

ORDERS = """
CREATE TABLE public.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                            customer_id int NOT NULL);
CREATE FUNCTION public.orders_ship() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgjobs.enqueue('registry.ship',
                           jsonb_build_object('order_id', NEW.id,
                                              'customer_id', NEW.customer_id));
    RETURN NEW;
END $$;
CREATE TRIGGER orders_ship AFTER INSERT ON public.orders
    FOR EACH ROW EXECUTE FUNCTION public.orders_ship();
"""


@pytest.fixture
def dsn(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from harness_database(fresh_dsn, monkeypatch, registry.HARNESS + ORDERS,
                                registry.app)


@pytest.fixture
def spawn(dsn: str) -> Iterator[Spawner]:
    with spawner(dsn) as start:
        yield start


@pytest.mark.xdist_group("worker")
def test_a_trigger_enqueues_and_a_worker_runs_the_job(dsn: str, spawn: Spawner) -> None:
    worker = spawn("--queues", "shipping", app="workerapps.registry:app")
    wait_until(lambda: scalar(dsn, "SELECT queue FROM pgjobs.tasks "
                                   "WHERE name = 'registry.ship'"), 60, "the registry row")
    with psycopg.connect(dsn) as c, c.cursor() as cursor:
        cursor.execute("INSERT INTO public.orders (customer_id) VALUES (7) RETURNING id")
        order_id = cursor.fetchone()[0]  # type: ignore[index]
        # no job is visible before the order commits
        assert scalar(dsn, "SELECT count(*) FROM pgjobs.jobs") == 0
    with psycopg.connect(dsn) as c:
        c.execute("INSERT INTO public.orders (customer_id) VALUES (8)")
        c.rollback()  # a rolled-back order leaves no job
    runs = wait_until(lambda: query(dsn, "SELECT task, args, pid FROM public.registry_runs"),
                      60, "the shipping job to run")
    assert runs == [("registry.ship", {"order_id": order_id, "customer_id": 7}, worker.pid)]
    # the handler logs its run before it returns; the success is written just after
    wait_until(lambda: scalar(dsn, "SELECT state FROM pgjobs.jobs") == "succeeded", 30,
               "the job's success")
    job = query(dsn, "SELECT queue, priority, max_attempts, concurrency_key, "
                     "concurrency_limit, state FROM pgjobs.jobs")
    assert job == [("shipping", -5, 3, "customer:7", 2, "succeeded")]
