"""The web dashboard over HTTP, in process (Starlette's test client) against a real
database: every page and every action, who may see them, CSRF, read-only mode, escaping
of hostile values, filters and keyset pages, and mounting inside another app."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from pgjobs.dashboard import create_app, pages
from pgjobs.ops.cli import cli
from tests.dashboard_data import (
    BIG_ARGS,
    CREDENTIALS,
    HOSTILE,
    PAGES,
    Seeded,
    client,
    csrf_of,
    error,
    insert_job,
    seed,
)
from tests.helpers import query, scalar

ACTION_PATHS = ("/jobs/1/retry", "/jobs/1/cancel", "/jobs/1/delete", "/jobs/bulk",
                "/queues/mail/pause", "/queues/mail/resume", "/periodic/pause",
                "/periodic/run-now")


@pytest.fixture
def seeded(fresh_dsn: str) -> tuple[str, Seeded]:
    return fresh_dsn, seed(fresh_dsn)


def state_of(dsn: str, job_id: int) -> str | None:
    found = scalar(dsn, "SELECT state FROM pgjobs.jobs WHERE id = %s", job_id)
    return None if found is None else str(found)


def test_every_page_refuses_a_visitor_without_the_right_credentials(
        seeded: tuple[str, Seeded]) -> None:
    dsn, rows = seeded
    with client(dsn) as c:
        for path in [*PAGES, *rows.detail_pages(), "/static/dashboard.js"]:
            for auth in (None, ("ops", "wrong"), ("nobody", CREDENTIALS[1])):
                refused = c.get(path, auth=auth)
                assert refused.status_code == 401, path
                assert refused.headers["www-authenticate"].startswith("Basic ")
                assert refused.headers["x-frame-options"] == "DENY"
        for path in ACTION_PATHS:
            assert c.post(path, auth=None).status_code == 401
        assert c.get("/", headers={"Authorization": "Basic !!notbase64"},
                     auth=None).status_code == 401


def test_every_page_renders_with_the_security_headers(seeded: tuple[str, Seeded]) -> None:
    dsn, rows = seeded
    with client(dsn) as c:
        for path in [*PAGES, *rows.detail_pages(), "/jobs?state=dead&queue=reports",
                     "/jobs/bulk?action=retry&state=dead"]:
            page = c.get(path)
            assert page.status_code == 200, (path, page.text[:500])
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            assert page.headers["x-frame-options"] == "DENY"
            assert page.headers["x-content-type-options"] == "nosniff"
            # no inline script or style anywhere: the CSP would block it
            assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), path
            assert "style=" not in page.text and "<style" not in page.text, path
        overview = c.get("/").text
        for queue in ("mail", "reports", "bulk", "frozen"):
            assert f'data-queue="{queue}"' in overview
        assert c.get("/static/dashboard.js").headers["content-type"].startswith("text/javascript")


def test_hostile_values_are_escaped_and_made_visible(seeded: tuple[str, Seeded]) -> None:
    dsn, rows = seeded
    with client(dsn) as c:
        for path in [*PAGES, *rows.detail_pages(), "/jobs?key=note"]:
            html = c.get(path).text
            assert "<img" not in html and "onerror=alert(1)>" not in html, path
            assert "<script>alert" not in html, path
            # the right-to-left override and the zero-width space are shown, not obeyed
            assert "\u202e" not in html and "\u200b" not in html and "\x07" not in html, path
        job = c.get(f"/jobs/{rows.available}").text
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in job
        assert "\\u202egnp.exe\\u200b\\u0007" in job
        big = c.get(f"/jobs/{rows.big}")
        assert len(big.content) < 200_000  # 1 MB of args is cut, not sent
        assert "Download the full args" in big.text
        full = c.get(f"/jobs/{rows.big}/args.json")
        assert json.loads(full.text) == BIG_ARGS
        assert full.headers["content-disposition"].startswith("attachment")
        assert full.headers["x-content-type-options"] == "nosniff"


def test_job_page_shows_errors_timeline_lease_worker_and_batch(
        seeded: tuple[str, Seeded]) -> None:
    dsn, rows = seeded
    with client(dsn) as c:
        dead = c.get(f"/jobs/{rows.dead}").text
        assert "Traceback (most recent call last)" in dead and "Errors (1)" in dead
        assert "attempt 1" in dead and "ValueError" in dead
        running = c.get(f"/jobs/{rows.running}").text
        assert "2999-01-01 00:00:00" in running  # the lease's expiry
        assert "pid 4242" in running and "host-" in running
        assert "&#34;done&#34;: 3" in running and "&#34;total&#34;: 7" in running  # progress
        assert 'class="json checkpoint"' in running
        assert "None reported" in dead
        for label in ("created", "run at", "started", "finished"):
            assert f'<span class="label">{label}</span>' in running
        member = c.get(f"/jobs/{rows.available}").text
        assert f'href="/batches/{rows.batch}"' in member
        batch = c.get(f"/batches/{rows.batch}").text
        assert "on success" in batch and "mark_sent" in batch
        assert f'href="/batches/{rows.child_batch}"' in batch  # its child is listed
        child = c.get(f"/batches/{rows.child_batch}").text
        assert f'href="/batches/{rows.batch}"' in child and "Inside:" in child  # its parent
        workers = c.get("/workers").text
        assert f'href="/jobs/{rows.running}"' in workers and "1 / 8" in workers
        periodic = c.get("/periodic").text
        assert "*/5 * * * *" in periodic and "reports" in periodic


def test_actions_retry_cancel_and_delete_one_job(seeded: tuple[str, Seeded]) -> None:
    dsn, rows = seeded
    with client(dsn) as c:
        token = csrf_of(c.get(f"/jobs/{rows.dead}").text)
        retried = c.post(f"/jobs/{rows.dead}/retry", data={"csrf": token})
        assert retried.status_code == 200 and "retried (was dead)" in retried.text
        assert state_of(dsn, rows.dead) == "available"
        cancelled = c.post(f"/jobs/{rows.running}/cancel", data={"csrf": token})
        assert "its worker stops the handler" in cancelled.text
        assert state_of(dsn, rows.running) == "cancelled"
        assert scalar(dsn, "SELECT meta->>'cancel_reason' FROM pgjobs.jobs WHERE id = %s",
                      rows.running) == "cancelled in the dashboard by ops"
        kept = c.post(f"/jobs/{rows.available}/delete", data={"csrf": token})
        assert "not deleted: it is available; cancel it first" in kept.text
        deleted = c.post(f"/jobs/{rows.cancelled}/delete", data={"csrf": token})
        assert "deleted (was cancelled)" in deleted.text
        assert state_of(dsn, rows.cancelled) is None
        missing = c.post("/jobs/999999/retry", data={"csrf": token})
        assert "no such job" in missing.text
        assert c.post(f"/jobs/{rows.dead}/explode", data={"csrf": token}).status_code == 400


def test_a_post_without_a_valid_csrf_token_is_refused_and_changes_nothing(
        seeded: tuple[str, Seeded]) -> None:
    dsn, rows = seeded
    with client(dsn) as c:
        token = csrf_of(c.get("/").text)
        # (the last character changed: to "1" when it already is "0", one token in 16)
        altered = token[:-1] + ("1" if token.endswith("0") else "0")
        for form in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": altered}):
            for path in (f"/jobs/{rows.dead}/retry", "/queues/mail/pause"):
                refused = c.post(path, data=form)
                assert refused.status_code == 403 and "CSRF" in refused.text
        # the right token from another site's page (the browser says so) is refused too
        foreign = c.post(f"/jobs/{rows.dead}/retry", data={"csrf": token},
                         headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403
        # a GET never changes anything: action URLs take POST only
        assert c.get(f"/jobs/{rows.dead}/retry").status_code == 405
        assert c.request("PUT", "/jobs").status_code == 405
    with client(dsn, secret="another process") as other:
        assert other.post(f"/jobs/{rows.dead}/retry", data={"csrf": token}).status_code == 403
    assert state_of(dsn, rows.dead) == "dead"
    assert scalar(dsn, "SELECT count(*) FROM pgjobs.queues WHERE paused") == 1


def test_bulk_actions_show_the_count_then_touch_only_what_was_counted(fresh_dsn: str) -> None:
    with psycopg.connect(fresh_dsn) as conn:
        dead = [insert_job(conn, queue="reports", state="dead", finished_at="now",
                           errors=error()) for _ in range(3)]
        other = insert_job(conn, queue="mail", state="dead", finished_at="now")
    with client(fresh_dsn) as c:
        confirm = c.get("/jobs/bulk", params={"action": "retry", "state": "dead",
                                               "queue": "reports"})
        assert "<strong>3</strong> jobs match" in confirm.text
        form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"',
                               confirm.text))
        assert form["upto"] == str(dead[-1]) and form["queue"] == "reports"
        with psycopg.connect(fresh_dsn) as conn:  # arrives after the confirmation
            late = insert_job(conn, queue="reports", state="dead", finished_at="now")
        done = c.post("/jobs/bulk", data=form)
        assert "3 of 3 jobs changed" in done.text and "3 \u00d7 retried (was dead)" in done.text
        assert [state_of(fresh_dsn, i) for i in dead] == ["available"] * 3
        assert state_of(fresh_dsn, late) == "dead" and state_of(fresh_dsn, other) == "dead"
        nothing = c.get("/jobs/bulk", params={"action": "delete", "state": "expired"})
        assert "No job matches" in nothing.text and "<form method=\"post\"" not in nothing.text
        assert c.get("/jobs/bulk", params={"action": "explode"}).status_code == 400


def test_pause_and_resume_a_queue(seeded: tuple[str, Seeded]) -> None:
    dsn, _ = seeded
    with client(dsn) as c:
        token = csrf_of(c.get("/").text)
        paused = c.post("/queues/mail/pause", data={"csrf": token}, follow_redirects=False)
        assert paused.status_code == 303 and paused.headers["location"] == "/"
        assert scalar(dsn, "SELECT paused FROM pgjobs.queues WHERE name = 'mail'") is True
        overview = c.get("/").text
        row = overview[overview.index('data-queue="mail"') - 30:]
        assert row.startswith('<tr class="queue paused"') or 'queue paused" data-queue="mail"' \
            in overview
        assert 'action="/queues/mail/resume"' in overview
        c.post("/queues/mail/resume", data={"csrf": token})
        assert scalar(dsn, "SELECT paused FROM pgjobs.queues WHERE name = 'mail'") is False
        assert c.post("/queues/bad name!/pause", data={"csrf": token}).status_code == 400
        assert c.post("/queues/mail/explode", data={"csrf": token}).status_code == 404


def test_pause_resume_and_run_now_a_schedule_and_its_recent_ticks(
        seeded: tuple[str, Seeded]) -> None:
    dsn, _ = seeded
    name = HOSTILE  # schedule names are free text: sent in the form, escaped in the page
    query(dsn, "INSERT INTO pgjobs.periodic_ticks (name, tick, first_tick, outcome, reason, "
               "job_id) VALUES (%s, now() - interval '5 minutes', now() - interval '5 minutes', "
               "'enqueued', 'on_time', 4242)", name)
    with client(dsn) as c:
        page = c.get("/periodic").text
        assert "enqueued (on_time)" in page and 'href="/jobs/4242"' in page
        assert "owner default" in page
        token = csrf_of(page)
        paused = c.post("/periodic/pause", data={"csrf": token, "name": name},
                        follow_redirects=False)
        assert paused.status_code == 303 and paused.headers["location"] == "/periodic"
        assert scalar(dsn, "SELECT paused FROM pgjobs.periodic WHERE name = %s", name) is True
        page = c.get("/periodic").text
        assert 'class="badge paused"' in page and 'action="/periodic/resume"' in page
        c.post("/periodic/resume", data={"csrf": token, "name": name})
        c.post("/periodic/run-now", data={"csrf": token, "name": name})
        assert query(dsn, "SELECT paused, resumed_at IS NOT NULL, run_requested_at IS NOT NULL "
                          "FROM pgjobs.periodic WHERE name = %s", name) == [(False, True, True)]
        assert "run requested" in c.get("/periodic").text
        missing = c.post("/periodic/pause", data={"csrf": token, "name": "nope"})
        assert missing.status_code == 404 and "no periodic schedule named" in missing.text
        assert c.post("/periodic/explode", data={"csrf": token, "name": name}).status_code == 404
        assert c.post("/periodic/pause", data={"csrf": token}).status_code == 400


def test_read_only_offers_no_action_and_refuses_every_post(seeded: tuple[str, Seeded]) -> None:
    dsn, rows = seeded
    with client(dsn, read_only=True) as c:
        for path in [*PAGES, *rows.detail_pages(), "/jobs?state=dead"]:
            html = c.get(path).text
            assert 'method="post"' not in html and "/jobs/bulk" not in html, path
            assert "read-only" in html
        for path in (*ACTION_PATHS, f"/jobs/{rows.dead}/retry"):
            refused = c.post(path, data={"csrf": "anything"})
            assert refused.status_code == 403 and "read-only" in refused.text
    assert state_of(dsn, rows.dead) == "dead"
    assert scalar(dsn, "SELECT count(*) FROM pgjobs.queues WHERE paused") == 1


def test_jobs_filters_and_keyset_pages(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with psycopg.connect(fresh_dsn) as conn:
        conn.execute("""
            INSERT INTO pgjobs.jobs (queue, task, args)
            SELECT CASE WHEN n % 10 = 0 THEN 'rare' ELSE 'mail' END, 'double',
                   jsonb_build_object('x', n, 'tag', CASE WHEN n % 2 = 0 THEN 'even' END)
            FROM generate_series(1, 120) AS n""")
    ids = lambda html: [int(i) for i in re.findall(r'data-job="(\d+)"', html)]  # noqa: E731
    with client(fresh_dsn) as c:
        first = c.get("/jobs").text
        assert ids(first) == list(range(120, 70, -1))
        older = re.search(r'href="(/jobs\?before=\d+)" rel="next"', first)
        assert older, "no link to older jobs"
        second = c.get(older.group(1)).text
        assert ids(second) == list(range(70, 20, -1))
        assert ids(c.get("/jobs", params={"queue": "rare"}).text) == list(range(120, 0, -10))
        assert ids(c.get("/jobs", params={"key": "x", "value": "42"}).text) == [42]
        assert ids(c.get("/jobs", params={"key": "tag", "value": "even",
                                          "queue": "rare"}).text) == list(range(120, 0, -10))
        assert ids(c.get("/jobs", params={"key": "nope"}).text) == []
        # a page reads a bounded number of candidates; past them it says where it stopped
        monkeypatch.setattr(pages, "SCAN", 25)
        bounded = c.get("/jobs", params={"queue": "rare"}).text
        assert ids(bounded) == [120, 110, 100]
        assert "read 25 jobs (down to job 96)" in bounded
        assert 'href="/jobs?queue=rare&amp;before=96"' in bounded
        for bad, reason in [({"state": "bogus"}, "state must be one of"),
                            ({"before": "abc"}, "positive whole number"),
                            ({"value": "1"}, "needs its key"),
                            ({"queue": "no spaces"}, "invalid queue name")]:
            page = c.get("/jobs", params=bad)
            assert page.status_code == 400 and reason in page.text, bad


def test_the_overview_counts_each_queue_and_charts_the_last_hour(fresh_dsn: str) -> None:
    with psycopg.connect(fresh_dsn) as conn:
        conn.execute("""
            INSERT INTO pgjobs.jobs (queue, task, state, finished_at)
            SELECT 'mail', 'double', 'succeeded', now() - m * interval '1 minute'
            FROM unnest(ARRAY[1, 1, 5, 90]) AS m""")  # the last one is older than an hour
        conn.execute("""
            INSERT INTO pgjobs.jobs (queue, task, attempt, run_at, errors)
            VALUES ('mail', 'double', 1, '2999-01-01', jsonb_build_array(jsonb_build_object(
                'attempt', 1, 'at', now() - interval '3 minutes', 'type', 'ValueError',
                'message', 'boom')))""")  # waits for its retry
        insert_job(conn, queue="mail", run_at="2999-01-01T00:00:00Z")  # scheduled
        insert_job(conn, queue="mail", run_at="2000-01-01T00:00:00Z")  # due for long
        insert_job(conn, queue="mail", state="dead", finished_at="now", errors=error())
    with client(fresh_dsn) as c:
        html = c.get("/").text
    assert "Last hour, every queue: 3 succeeded, 1 failed" in html
    cells = re.findall(r'<td class="num[^"]*">(?:<a [^>]*>)?(\d+)',
                       html[html.index('data-queue="mail"'):])[:5]
    assert cells == ["1", "1", "0", "1", "1"]  # available, scheduled, running, retrying, dead
    assert re.search(r"<td>\d+d \d+h</td>", html)  # the oldest available job's age


def test_mounted_in_another_app_with_its_own_auth(seeded: tuple[str, Seeded]) -> None:
    dsn, rows = seeded

    async def staff_only(request: Request) -> str | None:
        return request.headers.get("x-staff-user")  # set by the host app's own login

    dashboard = create_app(dsn, auth=staff_only)
    host = Starlette(routes=[Route("/", lambda r: PlainTextResponse("the shop")),
                             Mount("/admin/jobs", app=dashboard)])
    with TestClient(host) as c:
        assert c.get("/").text == "the shop"
        assert c.get("/admin/jobs/").status_code == 403
        staff = {"x-staff-user": "ada"}
        overview = c.get("/admin/jobs/", headers=staff)
        assert overview.status_code == 200 and "ada" in overview.text
        assert 'href="/admin/jobs/static/dashboard.css"' in overview.text
        assert 'href="/admin/jobs/jobs?queue=mail' in overview.text
        assert c.get("/admin/jobs/static/dashboard.js", headers=staff).status_code == 200
        job = c.get(f"/admin/jobs/jobs/{rows.dead}", headers=staff).text
        assert f'action="/admin/jobs/jobs/{rows.dead}/retry"' in job
        done = c.post(f"/admin/jobs/jobs/{rows.dead}/retry", headers=staff,
                      data={"csrf": csrf_of(job)})
        assert "retried" in done.text
    dashboard.close()
    assert state_of(dsn, rows.dead) == "available"


def test_a_database_without_pgjobs_says_to_migrate(empty_dsn: str) -> None:
    with client(empty_dsn) as c:
        page = c.get("/jobs")
    assert page.status_code == 503 and "run `pgjobs migrate`" in page.text


def test_a_bad_auth_callable_is_a_clear_error(fresh_dsn: str) -> None:
    def wrong(request: Request) -> Any:
        return 42

    with TestClient(create_app(fresh_dsn, auth=wrong), raise_server_exceptions=True) as c, \
            pytest.raises(Exception, match="must return a non-empty string"):
        c.get("/")
    with pytest.raises(Exception, match="refresh is seconds"):
        create_app(fresh_dsn, auth=None, refresh=-1)


def test_the_database_refusing_an_action_is_a_403_page(seeded: tuple[str, Seeded]) -> None:
    dsn, rows = seeded
    query(dsn, "CREATE ROLE dash_nobody LOGIN")
    query(dsn, "GRANT USAGE ON SCHEMA pgjobs TO dash_nobody")
    query(dsn, "GRANT SELECT ON ALL TABLES IN SCHEMA pgjobs TO dash_nobody")
    try:
        with client(make_conninfo(dsn, user="dash_nobody")) as c:
            token = csrf_of(c.get(f"/jobs/{rows.dead}").text)
            refused = c.post(f"/jobs/{rows.dead}/retry", data={"csrf": token})
            assert refused.status_code == 403 and "may not do this" in refused.text
    finally:
        query(dsn, "DROP OWNED BY dash_nobody; DROP ROLE dash_nobody")


def test_the_command_refuses_to_start_without_credentials_off_loopback(
        fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGJOBS_DASHBOARD_USER", raising=False)
    monkeypatch.delenv("PGJOBS_DASHBOARD_PASSWORD", raising=False)
    runner = CliRunner()
    bare = runner.invoke(cli, ["--dsn", fresh_dsn, "dashboard"])
    assert bare.exit_code == 2 and "refuses to start without credentials" in bare.output
    exposed = runner.invoke(cli, ["--dsn", fresh_dsn, "dashboard", "--no-auth",
                                  "--host", "0.0.0.0"])
    assert exposed.exit_code == 2 and "only allowed on a loopback address" in exposed.output
    half = runner.invoke(cli, ["--dsn", fresh_dsn, "dashboard"],
                         env={"PGJOBS_DASHBOARD_USER": "ops"})
    assert half.exit_code == 1 and "needs a user name and a password" in half.output


def test_without_the_extra_every_other_command_works_and_this_one_says_what_to_install(
) -> None:
    # A Python where Starlette, Jinja2 and uvicorn cannot be imported.
    blocked = ("import sys; sys.modules.update(starlette=None, jinja2=None, uvicorn=None); "
               "sys.argv = ['pgjobs', *sys.argv[1:]]; from pgjobs.ops.cli import main; main()")
    other = subprocess.run([sys.executable, "-c", blocked, "queue", "--help"],
                           capture_output=True, text=True)
    assert other.returncode == 0 and "Pause, resume and limit" in other.stdout
    dash = subprocess.run([sys.executable, "-c", blocked, "dashboard", "--no-auth"],
                          capture_output=True, text=True)
    assert dash.returncode == 1
    assert "pip install 'pgjobs[dashboard]'" in dash.stderr
