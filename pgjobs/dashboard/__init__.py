"""The pgjobs web dashboard: see and steer the queue from a browser.

An ASGI application (Starlette and Jinja2, no JavaScript build: one small vendored
script for the live refresh). Install it with ``pip install 'pgjobs[dashboard]'`` and run
it standalone with ``pgjobs dashboard``, or mount it inside your own ASGI application::

    from pgjobs.dashboard import create_app

    dashboard = create_app(auth=who_is_asking)      # (request) -> str | None
    app.mount("/jobs", dashboard)                   # FastAPI; Starlette: Mount(...)

Pages: the queues (counts, the last hour's throughput and failures, pause and resume),
jobs (filters, args search, keyset pages), one job (args, result, every error with its
traceback, timeline, lease, worker, batch), batches, periodic schedules, workers.
Actions: retry, cancel and delete one job, or every job a filter matches after a
confirmation; all are POSTs with a CSRF token, and ``read_only=True`` offers none.
It reads pgjobs' tables and acts through pgjobs' operator statements only; it never
imports the worker. docs/dashboard.md has the whole story.
"""

from __future__ import annotations

from .app import Dashboard, create_app
from .security import Auth, BasicAuth

__all__ = ["Auth", "BasicAuth", "Dashboard", "create_app"]
