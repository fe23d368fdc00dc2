"""Property tests with hypothesis, on a real PostgreSQL.

- Lease state machine: random interleavings of enqueue, claim, heartbeat, lease expiry,
  reclaim, completion with every outcome (succeed, fail/retry, die, snooze, cancel,
  release) and fenced completion in a transaction, from current and stale attempts,
  run through the real statements of ``pgjobs.db.sql``. After every step the rows
  match a model, only legal transitions happened, a job has at most one live lease, and
  terminal states stay terminal.
- Fuzzed queue names, task names and args: refused with a typed error before any SQL, or
  stored and decoded exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

import pgjobs
from pgjobs.core import args as core_args
from pgjobs.core import outcomes
from pgjobs.core.args import ArgsEncoder, lenient_json_loads
from pgjobs.core.types import ClaimedJob
from pgjobs.db import leases
from pgjobs.worker.context import JobContext

pytestmark = pytest.mark.xdist_group("properties")

TERMINAL = {"succeeded", "dead", "cancelled", "expired"}
LEGAL = {
    ("available", "running"),                    # claim
    ("running", "available"),                    # retry, snooze, release, reclaim
    ("running", "succeeded"), ("running", "dead"), ("running", "cancelled"),
}
KINDS = [outcomes.SUCCEEDED, outcomes.RETRY, outcomes.DEAD, outcomes.SNOOZED,
         outcomes.CANCELLED, outcomes.RELEASED]
OUTCOME_STATE = {outcomes.SUCCEEDED: "succeeded", outcomes.RETRY: "available",
                 outcomes.DEAD: "dead", outcomes.SNOOZED: "available",
                 outcomes.CANCELLED: "cancelled", outcomes.RELEASED: "available"}
REFUND = {outcomes.SNOOZED: 1, outcomes.RELEASED: 1}


@dataclass
class Job:
    state: str = "available"
    attempt: int = 0
    recoveries: int = 0
    token: Any = None
    worker: int | None = None
    due: bool = True
    expired: bool = False
    tokens: list[Any] = field(default_factory=list)  # every token ever issued


def lease_machine(dsn: str) -> type[RuleBasedStateMachine]:
    app = pgjobs.App(dsn=dsn)
    queries = app.queries

    class Leases(RuleBasedStateMachine):
        attempts = Bundle("attempts")  # (job id, token) of every claim, stale or not

        def __init__(self) -> None:
            super().__init__()
            self.conn = psycopg.connect(dsn, autocommit=True)
            self.conn.execute("TRUNCATE pgjobs.jobs RESTART IDENTITY")
            self.jobs: dict[int, Job] = {}
            self.claims: dict[Any, ClaimedJob] = {}  # by lease token, as claimed
            self.seen: dict[int, str] = {}  # last observed state, for transition checks

        def teardown(self) -> None:
            self.conn.close()

        # -- rules ------------------------------------------------------------------

        @initialize(n=st.integers(1, 4), max_attempts=st.integers(1, 3))
        def enqueue_first(self, n: int, max_attempts: int) -> None:
            self.enqueue(n, max_attempts)

        @rule(n=st.integers(1, 3), max_attempts=st.integers(1, 3))
        def enqueue(self, n: int, max_attempts: int) -> None:
            task = app.task("prop.job", max_attempts=max_attempts)
            for job in task.enqueue_many(self.conn, [{}] * n):
                self.jobs[job.id] = Job()

        @rule(target=attempts, limit=st.integers(1, 4), worker=st.sampled_from([None, 1, 2]))
        def claim(self, limit: int, worker: int | None) -> Any:
            rows = self.conn.execute(queries.job_claim, {
                "queues": ["default"], "limit": limit, "lease": timedelta(seconds=600),
                "worker_id": worker}).fetchall()
            claimed = [ClaimedJob(*row) for row in rows]
            eligible = {i for i, j in self.jobs.items() if j.state == "available" and j.due}
            suspects = [c for c in claimed if c.recoveries > 0]
            runs_suspect = worker is not None and any(
                j.state == "running" and j.worker == worker and j.recoveries > 0
                for j in self.jobs.values())
            assert {c.id for c in claimed} <= eligible
            assert len(claimed) <= limit and len(suspects) <= (0 if runs_suspect else 1)
            if eligible and not runs_suspect:
                assert claimed, "due jobs were available but none was claimed"
            for c in claimed:
                job = self.jobs[c.id]
                job.state, job.attempt, job.token, job.worker = "running", job.attempt + 1, \
                    c.lease_token, worker
                job.expired = False
                job.tokens.append(c.lease_token)
                self.claims[c.lease_token] = c
                assert (c.attempt, c.recoveries) == (job.attempt, job.recoveries)
            return multiple(*[(c.id, c.lease_token) for c in claimed])

        @rule(data=st.data())
        def expire(self, data: st.DataObject) -> None:
            running = sorted(i for i, j in self.jobs.items() if j.state == "running")
            if not running:
                return
            job_id = data.draw(st.sampled_from(running))
            self.conn.execute("UPDATE pgjobs.jobs SET lease_expires_at = clock_timestamp() "
                              "- interval '1 second' WHERE id = %s", (job_id,))
            self.jobs[job_id].expired = True

        @rule(budget=st.integers(0, 2))
        def reclaim(self, budget: int) -> None:
            params = {"limit": 1000, "budget": budget, "channel": "pgjobs_pgjobs"}
            rows = self.conn.execute(queries.job_reclaim, params).fetchall()
            expected = {i for i, j in self.jobs.items() if j.state == "running" and j.expired}
            assert {int(r[0]) for r in rows} == expected
            for job_id in expected:
                job = self.jobs[job_id]
                job.state = "dead" if job.recoveries >= budget else "available"
                job.recoveries += 1
                job.attempt = max(job.attempt - 1, 0)
                job.token, job.due, job.expired = None, True, False

        @rule(attempt=attempts, data=st.data())
        def heartbeat(self, attempt: tuple[int, Any], data: st.DataObject) -> None:
            job_id, token = self.pick(attempt, data)
            rows = self.conn.execute(queries.job_heartbeat, {
                "ids": [job_id], "tokens": [token], "lease": timedelta(seconds=600),
                "worker_id": None, "progress": [None], "checkpoints": [None]}).fetchall()
            live = self.live(job_id, token)
            # (lease_token, renewed): a live lease is renewed; nothing here holds a row lock
            assert [(r[0], r[1]) for r in rows] == ([(token, True)] if live else [])
            if live:
                self.jobs[job_id].expired = False

        @rule(attempt=attempts, data=st.data(), kind=st.sampled_from(KINDS),
              later=st.booleans())
        def complete(self, attempt: tuple[int, Any], data: st.DataObject, kind: str,
                     later: bool) -> None:
            job_id, token = self.pick(attempt, data)
            outcome = outcomes.Outcome(kind, delay=3600 if later else 0,
                                        error={"message": "e"}, meta={"m": 1})
            row = leases.outcome_row(outcome)
            assert row is not None
            params = leases.outcomes_param([(job_id, token, row)])
            written = self.conn.execute(queries.job_complete_many, params).fetchall()
            live = self.live(job_id, token)
            assert [int(r[0]) for r in written] == ([job_id] if live else [])
            if live:
                job = self.jobs[job_id]
                job.state, job.token, job.expired = OUTCOME_STATE[kind], None, False
                job.attempt -= REFUND.get(kind, 0)
                job.due = not later or kind == "released"  # released: keeps its run_at

        @rule(attempt=attempts, data=st.data())
        def complete_plain(self, attempt: tuple[int, Any], data: st.DataObject) -> None:
            """The completer's short statement for plain successes, fenced alike."""
            job_id, token = self.pick(attempt, data)
            query = leases.complete_succeeded(queries, [(job_id, token)])
            written = self.conn.execute(query.text, query.params).fetchall()
            live = self.live(job_id, token)
            assert [int(r[0]) for r in written] == ([job_id] if live else [])
            if live:
                job = self.jobs[job_id]
                job.state, job.token, job.expired = "succeeded", None, False

        @rule(attempt=attempts, data=st.data(), commit=st.booleans())
        def complete_in_transaction(self, attempt: tuple[int, Any], data: st.DataObject,
                                    commit: bool) -> None:
            job_id, token = self.pick(attempt, data)
            job = self.jobs[job_id]
            ctx = JobContext(self.claims[token], queries)
            live = self.live(job_id, token)
            with psycopg.connect(dsn) as conn:
                if live:
                    ctx.complete(conn, result={"ok": True})
                else:
                    with pytest.raises(pgjobs.LeaseLost):
                        ctx.complete(conn)
                    assert ctx.lease_lost
                (conn.commit if commit else conn.rollback)()
            if live and commit:
                job.state, job.token, job.expired = "succeeded", None, False

        def pick(self, attempt: tuple[int, Any], data: st.DataObject) -> tuple[int, Any]:
            """An attempt from the bundle, or any token ever issued (mostly stale)."""
            issued = [(i, t) for i, j in self.jobs.items() for t in j.tokens]
            return data.draw(st.sampled_from([attempt, *issued]))

        def live(self, job_id: int, token: Any) -> bool:
            job = self.jobs[job_id]
            return job.state == "running" and job.token == token

        # -- invariants ---------------------------------------------------------------

        @invariant()
        def rows_match_the_model_and_transitions_are_legal(self) -> None:
            rows = self.conn.execute(
                "SELECT id, state, attempt, recoveries, lease_token::text, lease_expires_at "
                "FROM pgjobs.jobs ORDER BY id").fetchall()
            assert [r[0] for r in rows] == sorted(self.jobs)
            for job_id, state, attempt, recoveries, token, expires in rows:
                job = self.jobs[job_id]
                assert (state, attempt, recoveries, token) == (
                    job.state, job.attempt, job.recoveries, job.token), job_id
                # at most one live lease: exactly the current token, only while running
                assert (token is not None) == (expires is not None) == (state == "running")
                live = [t for t in job.tokens if self.live(job_id, t)]
                assert len(live) == (1 if state == "running" else 0)
                before = self.seen.get(job_id, "available")
                if before in TERMINAL:
                    assert state == before, f"job {job_id} left terminal state {before}"
                assert before == state or (before, state) in LEGAL, (job_id, before, state)
                self.seen[job_id] = state

    return Leases


def test_random_lease_interleavings_keep_the_state_machine_legal(fresh_dsn: str) -> None:
    machine = lease_machine(fresh_dsn)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=40, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))


# -- fuzzed names and args ---------------------------------------------------------------

HOSTILE = st.sampled_from(["\x00", "\ud800", "'", '"', "$1", ";--", "%s", "%(x)s", "{}",
                           "\\", "é", "😀", "\u202e", " ", "\n"])
TEXT = st.lists(st.one_of(st.characters(), HOSTILE), max_size=20).map("".join)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**17),
    st.floats(allow_nan=True, allow_infinity=True), TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner),
        st.dictionaries(TEXT, inner, max_size=4),
        st.dictionaries(st.integers(), inner, min_size=1, max_size=2),  # non-str keys
    ),
    max_leaves=12,
)
ARGS = st.dictionaries(TEXT, VALUES, max_size=5)


def typed(value: Any) -> Any:
    """``value`` with types made part of equality (1 != 1.0 != True)."""
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    return (type(value).__name__, value)


@settings(max_examples=300, deadline=None)
@given(args=ARGS)
def test_the_fast_args_encoder_decides_exactly_as_the_full_check(
    args: dict[str, Any],
) -> None:
    """Plain args skip the full walk (and its error paths) and use the C encoder made
    once; the text, or the error and its message, must be what the full path gives."""
    encoder = ArgsEncoder(max_bytes=200)

    def outcome() -> tuple[str, str]:
        try:
            return ("ok", encoder.encode(args))
        except pgjobs.ValidationError as exc:
            return (type(exc).__name__, str(exc))

    fast = outcome()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(core_args, "_FAST_ENCODE", None)
        assert outcome() == fast


@pytest.fixture(scope="module")
def fuzz_app(shared_dsn: str) -> Any:
    application = pgjobs.App(dsn=shared_dsn)
    yield application
    application.close()


@settings(max_examples=150, deadline=None)
@given(queue=st.one_of(TEXT, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,62}", fullmatch=True)),
       task=st.one_of(TEXT, st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:<>\-]{0,254}", fullmatch=True)),
       args=ARGS)
def test_fuzzed_names_and_args_are_refused_with_a_typed_error_or_round_trip_exactly(
    fuzz_app: pgjobs.App, shared_dsn: str, queue: str, task: str, args: dict[str, Any]
) -> None:
    with psycopg.connect(shared_dsn) as conn:
        marker = fuzz_app.task("prop.marker").enqueue(conn).id  # must survive refusals
        try:
            job = fuzz_app.task(task, queue=queue).enqueue(conn, **args)
        except pgjobs.ValidationError:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        else:
            stored = conn.execute("SELECT queue, task, args, args::text FROM pgjobs.jobs "
                                  "WHERE id = %s", (job.id,)).fetchone()
            assert stored is not None
            expected = typed(json.loads(json.dumps(args)))
            assert stored[:2] == (queue, task)
            assert typed(stored[2]) == expected
            assert typed(lenient_json_loads(stored[3])) == expected  # as a worker decodes
        assert conn.execute("SELECT count(*) FROM pgjobs.jobs WHERE id = %s",
                            (marker,)).fetchone() == (1,)
        conn.rollback()

