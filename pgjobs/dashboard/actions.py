"""What an operator can do: retry, cancel or delete a job, the same in bulk over a filter
(after a confirmation page that shows the count), pause and resume a queue, pause, resume
and run now a periodic schedule.

Every action is a POST that carries the CSRF token (``checked``); the bulk confirmation
is a GET that only counts. The writes are pgjobs' own operator statements
(``client.admin``, ``db.queues``, ``client.periodic``), the same as ``pgjobs jobs``,
``pgjobs queue`` and ``pgjobs periodic`` use.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..client import admin
from ..client import periodic as client_periodic
from ..core.errors import ScheduleNotFound
from ..core.names import check_queue
from ..core.types import JobChange
from ..db import dashboard as db
from ..db import queues as db_queues
from . import forms
from .pages import dashboard
from .security import same_origin
from .state import PRINCIPAL, State

AnyConnection = psycopg.Connection[Any]
Handler = Callable[[Request, State, FormData], Awaitable[Response]]

BULK_MAX = 10_000
"""Most jobs one bulk action touches (the confirmation says when more match)."""
CHUNK = 500
"""Jobs per transaction of a bulk action: no lock is held for long."""


def checked(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A POST endpoint that runs ``handler`` only with a valid CSRF token from this
    site (the guard has already refused every POST of a read-only dashboard)."""

    async def endpoint(request: Request) -> Response:
        state = dashboard(request)
        form = await request.form(max_files=0, max_fields=50)
        if not same_origin(request) or not state.csrf.valid(request.scope[PRINCIPAL],
                                                            form.get("csrf")):
            raise HTTPException(403, "the form's CSRF token is missing or out of date: "
                                     "reload the page and try again")
        return await handler(request, state, form)

    return endpoint


def act(state: State, action: str, conn: AnyConnection, ids: Sequence[int],
        principal: str) -> list[JobChange]:
    """One action on ``ids`` in one transaction."""
    q = state.queries
    with conn.transaction():
        if action == "retry":
            return admin.retry_jobs(q, conn, ids, state.channel)
        if action == "cancel":
            return admin.cancel_jobs(q, conn, ids, f"cancelled in the dashboard by {principal}")
        return admin.delete_jobs(q, conn, ids)


async def job_action(request: Request, state: State, form: FormData) -> Response:
    action = forms.action(request.path_params)
    job_id = int(request.path_params["id"])
    principal = request.scope[PRINCIPAL]
    changes = await state.run(lambda conn: act(state, action, conn, [job_id], principal))
    return state.page(request, "done.html", action=action, changes=changes,
                      summary=Counter(c.detail for c in changes), job_id=job_id,
                      filters={})


async def bulk_confirm(request: Request) -> Response:
    """GET: how many jobs the action would touch, and the form that does it."""
    state = dashboard(request)
    params = request.query_params
    action, where = forms.action(params), forms.job_filter(params)
    row = await state.run(db.count_matching(state.queries, where, upto=None,
                                            cap=BULK_MAX + 1))
    return state.page(request, "confirm.html", action=action, matching=row["matching"],
                      newest=row["newest"], cap=BULK_MAX, filters=forms.filter_params(params))


async def bulk_apply(request: Request, state: State, form: FormData) -> Response:
    action, where = forms.action(form), forms.job_filter(form)
    upto = forms.positive(form, "upto")
    principal = request.scope[PRINCIPAL]

    def run(conn: AnyConnection) -> list[JobChange]:
        changes: list[JobChange] = []
        newest = upto
        while newest is not None and len(changes) < BULK_MAX:
            limit = min(CHUNK, BULK_MAX - len(changes))
            ids = db.ids_matching(state.queries, where, upto=newest, limit=limit).run(conn)
            if not ids:
                break
            changes += act(state, action, conn, ids, principal)
            newest = ids[-1] - 1 if len(ids) == limit and ids[-1] > 1 else None
        return changes

    changes = await state.run(run) if upto is not None else []
    return state.page(request, "done.html", action=action, changes=changes,
                      summary=Counter(c.detail for c in changes), job_id=None,
                      filters=forms.filter_params(form))


async def queue_action(request: Request, state: State, form: FormData) -> Response:
    name, verb = check_queue(request.path_params["name"]), request.path_params["action"]
    if verb not in ("pause", "resume"):
        raise HTTPException(404, f"a queue can be paused or resumed, not {verb!r}")
    paused = verb == "pause"
    await state.run(db_queues.set_paused(state.queries, name, paused, state.channel))
    return RedirectResponse(f"{request.scope.get('root_path', '')}/", status_code=303)


PERIODIC_ACTIONS = {"pause": client_periodic.pause, "resume": client_periodic.resume,
                    "run-now": client_periodic.run_now}


async def periodic_action(request: Request, state: State, form: FormData) -> Response:
    # The schedule's name comes in the form: names are free text (slashes too).
    verb, name = request.path_params["action"], form.get("name")
    action = PERIODIC_ACTIONS.get(verb)
    if action is None:
        raise HTTPException(404, f"a periodic schedule can be paused, resumed or run now, "
                                 f"not {verb!r}")
    if not isinstance(name, str) or not name:
        raise HTTPException(400, "the form names no periodic schedule")
    try:
        await state.run(lambda conn: action(state.queries, conn, name))
    except ScheduleNotFound as exc:  # ScheduleDisabled too: run-now of a gone schedule
        raise HTTPException(404, str(exc)) from None
    return RedirectResponse(f"{request.scope.get('root_path', '')}/periodic", status_code=303)


def routes() -> list[Route]:
    return [
        Route("/jobs/bulk", bulk_confirm, methods=["GET"], name="bulk_confirm"),
        Route("/jobs/bulk", checked(bulk_apply), methods=["POST"], name="bulk_apply"),
        Route("/jobs/{id:int}/{action:str}", checked(job_action), methods=["POST"],
              name="job_action"),
        Route("/queues/{name:str}/{action:str}", checked(queue_action), methods=["POST"],
              name="queue_action"),
        Route("/periodic/{action:str}", checked(periodic_action), methods=["POST"],
              name="periodic_action"),
    ]
