"""The pages (GET only: none of them changes anything): overview, jobs, one job, batches,
one batch, periodic schedules, workers."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..core.schedule import next_tick
from ..db import dashboard as db
from ..db import periodic as db_periodic
from . import forms
from .render import chart
from .state import State

PAGE = 50
"""Rows per page of jobs and batches."""
SCAN = 20_000
"""Most candidate rows one page of a filtered job list reads (db/sql/dashboard.py)."""
ARGS_SHOWN = 64 * 1024
"""Most characters of args the job page shows (the rest is a download)."""
WORKER_JOBS = 20
"""Jobs listed per worker (all are counted)."""
RECENT_TICKS = 5
"""Ledger rows shown per periodic schedule (``pgjobs periodic show`` prints more)."""


def dashboard(request: Request) -> State:
    found: State = request.app.state.dashboard
    return found


async def overview(request: Request) -> Response:
    d = dashboard(request)

    def read(conn: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return db.queue_overview(d.queries).run(conn), db.throughput(d.queries).run(conn)

    queues, minutes = await d.run(read)
    per_queue: dict[str, list[dict[str, Any]]] = defaultdict(list)
    totals: dict[int, dict[str, Any]] = {}
    for row in minutes:
        per_queue[row["queue"]].append(row)
        total = totals.setdefault(row["minutes_ago"], {"minutes_ago": row["minutes_ago"],
                                                      "succeeded": 0, "failed": 0})
        total["succeeded"] += row["succeeded"]
        total["failed"] += row["failed"]
    charts = {name: chart(rows) for name, rows in per_queue.items()}
    return d.page(request, "overview.html", queues=queues, charts=charts,
                  total=chart(list(totals.values())), live=True)


async def jobs(request: Request) -> Response:
    d = dashboard(request)
    params = request.query_params
    where = forms.job_filter(params)
    before = forms.positive(params, "before")
    narrowed = any(v is not None for v in (where.queue, where.task, where.args, where.key))
    # Without queue, task or args filters every candidate matches: read one page's worth.
    scan = SCAN if narrowed else PAGE + 1
    rows = await d.run(db.job_page(d.queries, where, before=before, limit=PAGE + 1,
                                   scan=scan))
    found = [row for row in rows if row["id"] is not None]
    scanned = rows[0]["scanned"] if rows else 0
    older, searched_to = None, None
    if len(found) > PAGE:
        found, older = found[:PAGE], found[PAGE - 1]["id"]
    elif narrowed and scanned >= scan and rows[0]["scanned_to"] > 1:
        # The candidates ran out before the page filled: go on below the last id read.
        older = searched_to = rows[0]["scanned_to"]
    return d.page(request, "jobs.html", jobs=found, filters=forms.filter_params(params),
                  states=forms.STATES, older=older, searched_to=searched_to, scan=scan,
                  before=before, live=before is None)


async def job(request: Request) -> Response:
    d = dashboard(request)
    job_id = int(request.path_params["id"])
    row = await d.run(db.job_detail(d.queries, job_id, ARGS_SHOWN))
    if row is None:
        raise HTTPException(404, f"no job {job_id} (never enqueued, or pruned after it "
                                 "finished)")
    row["args_cut"] = len(row["args"].encode()) < row["args_size"]
    timeline = [(label, row[key]) for label, key in (
        ("created", "created_at"), ("run at", "run_at"), ("started", "started_at"),
        ("finished", "finished_at"), ("expires", "expires_at"))]
    timeline.sort(key=lambda item: (item[1] is None, item[1] or row["now"]))
    return d.page(request, "job.html", job=row, timeline=timeline, live=True)


async def job_args(request: Request) -> Response:
    """The full args of a job, as a JSON download (never rendered as a page)."""
    d = dashboard(request)
    job_id = int(request.path_params["id"])
    args = await d.run(db.job_args(d.queries, job_id))
    if args is None:
        raise HTTPException(404, f"no job {job_id}")
    return Response(args, media_type="application/json", headers={
        "Content-Disposition": f'attachment; filename="job-{job_id}-args.json"'})


async def batches(request: Request) -> Response:
    d = dashboard(request)
    before = forms.positive(request.query_params, "before")
    rows = await d.run(db.batch_page(d.queries, parent=None, before=before, limit=PAGE + 1))
    older = rows[PAGE - 1]["id"] if len(rows) > PAGE else None
    return d.page(request, "batches.html", batches=rows[:PAGE], older=older, before=before,
                  live=before is None)


async def batch(request: Request) -> Response:
    d = dashboard(request)
    batch_id = int(request.path_params["id"])

    def read(conn: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        lineage = db.batch_lineage(d.queries, batch_id).run(conn)
        children = db.batch_page(d.queries, parent=batch_id, before=None,
                                 limit=PAGE + 1).run(conn) if lineage else []
        return lineage, children

    lineage, children = await d.run(read)
    if not lineage:
        raise HTTPException(404, f"no batch {batch_id} (never created, or pruned)")
    return d.page(request, "batch.html", batch=lineage[0], parents=lineage[1:],
                  children=children[:PAGE], more_children=len(children) > PAGE, live=True)


async def periodic(request: Request) -> Response:
    d = dashboard(request)
    rows = await d.run(db_periodic.list_all(d.queries))
    ticks: dict[str, list[dict[str, Any]]] = {}
    for tick in await d.run(db_periodic.latest_ticks(d.queries, RECENT_TICKS)):
        ticks.setdefault(tick["name"], []).append(tick)
    for row in rows:
        row["ticks"] = ticks.get(row["name"], [])
        upcoming = (next_tick(row["schedule"], row["timezone"], row["last_tick"] or row["now"])
                    if row["enabled"] else None)
        row["next_tick"] = upcoming
        row["due"] = upcoming is not None and upcoming <= row["now"]
    return d.page(request, "periodic.html", schedules=rows, live=True)


async def workers(request: Request) -> Response:
    d = dashboard(request)
    rows = await d.run(db.worker_page(d.queries, WORKER_JOBS))
    for row in rows:
        row["stale"] = row["state"] != "stopped" and row["silent"] > row["lease"]
    return d.page(request, "workers.html", workers=rows, shown=WORKER_JOBS, live=True)


def routes() -> list[Route]:
    return [
        Route("/", overview, name="overview"),
        Route("/jobs", jobs, name="jobs"),
        Route("/jobs/{id:int}", job, name="job"),
        Route("/jobs/{id:int}/args.json", job_args, name="job_args"),
        Route("/batches", batches, name="batches"),
        Route("/batches/{id:int}", batch, name="batch"),
        Route("/periodic", periodic, name="periodic"),
        Route("/workers", workers, name="workers"),
    ]
