"""Enqueue under faults: transactions that commit, roll back or die; hostile input.

RELIABILITY.md rows: "enqueue, then commit / rollback / exception before commit" and
"oversized args; hostile queue/task names and args".
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs.testing import drain
from tests.chaos.harness import scale
from tests.helpers import query, scalar
from tests.workerapps import chaos
from tests.workerapps.chaos import app

pytestmark = [pytest.mark.chaos, pytest.mark.xdist_group("chaos")]

CHANNEL = 'LISTEN "pgjobs_pgjobs"'


def claim(conn: psycopg.Connection[Any], queues: list[str]) -> list[int]:
    rows = conn.execute(app.queries.job_claim, {
        "queues": queues, "limit": 1000, "lease": timedelta(seconds=60), "worker_id": None,
    }).fetchall()
    return sorted(int(r[0]) for r in rows)


def notifications_until(listener: psycopg.Connection[Any], marker: str) -> list[str]:
    """Payloads received up to ``marker`` (committed last): notifications arrive in commit
    order, so whatever was not received before the marker was never sent."""
    payloads: list[str] = []
    for note in listener.notifies(timeout=60):
        payloads.append(note.payload)
        if note.payload == marker:
            return payloads
    raise AssertionError(f"no notification {marker!r} within 60 s; got {payloads}")


def send_marker(dsn: str, marker: str) -> None:
    with psycopg.connect(dsn) as conn:
        chaos.plain.options(queue=marker).enqueue(conn)


def test_a_job_exists_is_claimable_and_notified_only_after_its_commit(
    db: str, rng: random.Random
) -> None:
    """Random transactions that commit, roll back, raise, lose a savepoint, or die with
    their connection. A claimer and a listener watch each one before its end."""
    n = scale(40, 600)
    listener = psycopg.connect(db, autocommit=True)
    claimer = psycopg.connect(db, autocommit=True)
    listener.execute(CHANNEL)
    committed: dict[str, list[int]] = {}  # queue -> ids
    discarded: dict[str, list[int]] = {}
    endings = ["commit", "rollback", "exception", "savepoint", "killed", "async-rollback"]
    try:
        for i in range(n):
            ending = rng.choice(endings)
            queue = f"q{i}-{ending}"
            task = chaos.plain.options(queue=queue)
            if ending == "async-rollback":
                ids = asyncio.run(_async_enqueue_then_rollback(db, task))
                discarded[queue] = ids
                continue
            conn = psycopg.connect(db)
            ids = [task.enqueue(conn).id]
            if rng.random() < 0.5:
                ids += [j.id for j in task.enqueue_many(conn, [{}] * rng.randint(1, 3))]
            # Before the end: invisible to others, not claimable, nothing notified yet.
            assert scalar(db, "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s)", ids) == 0
            assert claim(claimer, [queue]) == []
            if ending == "commit":
                conn.commit()
                committed[queue] = ids
            elif ending == "rollback":
                conn.rollback()
                discarded[queue] = ids
            elif ending == "exception":
                with pytest.raises(ZeroDivisionError), conn:  # psycopg rolls back on error
                    _ = 1 / 0
                discarded[queue] = ids
            elif ending == "savepoint":
                conn.rollback()
                with conn.transaction():
                    outer = chaos.plain.options(queue=f"{queue}-outer").enqueue(conn).id
                    with pytest.raises(ZeroDivisionError), conn.transaction():
                        ids = [task.enqueue(conn).id]
                        _ = 1 / 0
                committed[f"{queue}-outer"] = [outer]
                discarded[queue] = ids
            else:  # killed: the connection dies before COMMIT
                conn.pgconn.finish()
                discarded[queue] = ids
            conn.close()
        marker = "marker"
        send_marker(db, marker)
        payloads = notifications_until(listener, marker)
    finally:
        listener.close()
    assert set(payloads) == set(committed) | {marker}
    assert not set(payloads) & set(discarded), "a rolled-back enqueue sent a notification"
    stored = query(db, "SELECT queue, array_agg(id ORDER BY id) FROM pgjobs.jobs "
                       "WHERE queue <> %s GROUP BY queue", marker)
    assert {q: sorted(ids) for q, ids in stored} == {q: sorted(i) for q, i in committed.items()}
    assert claim(claimer, sorted(committed)) == sorted(i for ids in committed.values() for i in ids)
    claimer.close()


async def _async_enqueue_then_rollback(dsn: str, task: pgjobs.Task[..., Any]) -> list[int]:
    async with await psycopg.AsyncConnection.connect(dsn) as aconn:
        job = await task.enqueue_async(aconn)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as other:
            cursor = await other.execute("SELECT count(*) FROM pgjobs.jobs WHERE id = %s",
                                         (job.id,))
            assert await cursor.fetchone() == (0,)
        await aconn.rollback()
    return [job.id]


# -- hostile input -------------------------------------------------------------------------

HOSTILE_STRINGS = [
    "'", "''", '"', "\\", "\\'", "$1", "$$", "$tag$ x $tag$", ";--", "'; DROP TABLE pgjobs.jobs;--",
    "%s", "%(x)s", "%%", "{schema}", "{}", "\u2028\u2029", "\t\r\n", "\x7f", "\x01",
    "e\u0301", "\u202eRTL", "\U0001f4a9" * 3, "\ufeff", "ß" * 5, "日本語テキスト",
    "😀" * 20_000, "x" * 200_000,
]
VALID_QUEUES = ["q" * 63, "a-b.c:d_e", "0", "Queue.With:Dots-and_underscores"]
INVALID_QUEUES = [
    "", "q" * 64, "q'uote", "$1", "a;--", "a\x00b", "ü", "a b", "-lead", "\U0001f4a9", "a/b",
    "; DROP TABLE pgjobs.jobs", 7, None,
]
INVALID_TASKS = ["", "t" * 256, "os.system'; --", "$1", "a\x00", "é" * 10, "a b", "1abc", 3]


CYCLE: list[Any] = []
CYCLE.append(CYCLE)


def deep(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


INVALID_ARGS: list[tuple[str, Any]] = [
    ("NUL in a value", {"a": "x\x00y"}),
    ("NUL in a key", {"a\x00": 1}),
    ("lone surrogate", {"a": "\ud800"}),
    ("lone surrogate key", {"\udfff": 1}),
    ("NaN", {"a": float("nan")}),
    ("infinity", {"a": float("-inf")}),
    ("non-string key", {"a": {1: 2}}),
    ("bytes", {"a": b"\x00"}),
    ("a set", {"a": {1, 2}}),
    ("an object", {"a": object()}),
    ("a 5000-digit integer", {"a": 10**4999}),
    ("a float jsonb would return as an int", {"a": [1e16]}),
    ("the largest float", {"a": {"b": -1.7976931348623157e308}}),
    ("a reference cycle", {"a": CYCLE}),
    ("nested 5000 deep", {"a": deep(5000)}),
    ("nested past the limit", {"a": deep(200)}),
    ("not a mapping", [("a", 1)]),
]


def test_hostile_names_are_refused_with_a_typed_error_before_any_sql(db: str) -> None:
    with psycopg.connect(db) as conn:
        first = chaos.plain.enqueue(conn).id  # the transaction must survive every refusal
        for queue in INVALID_QUEUES:
            with pytest.raises(pgjobs.InvalidName):
                chaos.plain.options(queue=queue).enqueue(conn)
            with pytest.raises(pgjobs.InvalidName):
                app.task("chaos.plain", queue=queue)
        for name in INVALID_TASKS:
            with pytest.raises(pgjobs.InvalidName):
                app.enqueue(conn, name)  # type: ignore[arg-type]
        for queue in VALID_QUEUES:
            job = chaos.plain.options(queue=queue).enqueue(conn)
            assert conn.execute("SELECT queue FROM pgjobs.jobs WHERE id = %s",
                                (job.id,)).fetchone() == (queue,)
        long_task = "t" * 255  # valid, and no task has it: a producer that opted out
        job = pgjobs.App(dsn=db, strict_names=False).enqueue(conn, long_task)
        assert conn.execute("SELECT task FROM pgjobs.jobs WHERE id = %s",
                            (job.id,)).fetchone() == (long_task,)
    assert scalar(db, "SELECT count(*) FROM pgjobs.jobs WHERE id = %s", first) == 1


def test_hostile_args_are_refused_with_a_typed_error_or_round_trip_exactly(
    db: str, rng: random.Random
) -> None:
    """Refused before the database (the transaction goes on), or stored and handed to
    the handler exactly: equal, with the same types (JSON has no tuples: a tuple is a
    list, as documented)."""
    accepted: dict[int, dict[str, Any]] = {}
    samples = HOSTILE_STRINGS + [rng.choice(HOSTILE_STRINGS) + str(i) for i in range(scale(5, 50))]
    with psycopg.connect(db) as conn:
        for text in samples:
            args = {"value": text, "nested": {text[:100]: [text[:50], 1, -0.5, None, True]},
                    "tuple": (text[:10], 2), "big": 10**300, "tiny": 5e-324,
                    "float": 9999999999999998.0, "neg": -1e-300, "third": 1 / 3}
            accepted[chaos.echo.enqueue(conn, **args).id] = args
            keyed = {text[:1000] or "empty": 1, "k": text[:1000]}
            accepted[chaos.echo.enqueue(conn, **keyed).id] = keyed
        for label, bad in INVALID_ARGS:
            with pytest.raises(pgjobs.InvalidArgs):
                chaos.echo.enqueue(conn, **bad) if isinstance(bad, dict) else \
                    chaos.echo.enqueue_many(conn, [bad])  # type: ignore[list-item]
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS, label
        with pytest.raises(pgjobs.ArgsTooLarge):
            chaos.echo.enqueue(conn, value="x" * (1 << 20))
        with pytest.raises(pgjobs.InvalidArgs):
            chaos.plain.enqueue(conn, unexpected="x")  # not a parameter of the handler
    chaos.RECEIVED.clear()
    assert drain(app, queues=("default",), concurrency=4) == {"succeeded": len(accepted)}
    for job_id, args in accepted.items():
        expected = json_value(json.loads(json.dumps(args)))
        assert json_value(chaos.RECEIVED[job_id]) == expected, job_id
        stored = scalar(db, "SELECT args FROM pgjobs.jobs WHERE id = %s", job_id)
        assert json_value(stored) == expected, job_id


def json_value(value: Any) -> Any:
    """``value`` for a comparison that also checks types (1 != 1.0 != True)."""
    if value is None or isinstance(value, bool | int | float | str):
        return (type(value).__name__, value)
    if isinstance(value, list):
        return [json_value(v) for v in value]
    assert isinstance(value, dict), value
    return {k: json_value(v) for k, v in value.items()}


def test_notify_payloads_stay_small_whatever_the_args(db: str) -> None:
    queue = "q" * 63
    with psycopg.connect(db, autocommit=True) as listener:
        listener.execute(CHANNEL)
        with psycopg.connect(db) as conn:
            chaos.echo.options(queue=queue).enqueue(conn, blob="é" * 400_000)
            chaos.echo.options(queue=queue).enqueue_many(conn, [{"blob": "x" * 100_000}] * 5)
        send_marker(db, "marker")
        payloads = notifications_until(listener, "marker")
    assert payloads == [queue, "marker"]
    assert all(len(p.encode()) <= 63 for p in payloads)
