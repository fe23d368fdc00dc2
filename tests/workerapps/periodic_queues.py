"""Two one-second schedules whose jobs go to different queues (mail, reports), for the
test that a worker ticks only the schedules of the queues it serves
(tests/test_periodic.py)."""

from __future__ import annotations

import os

import pgjobs

app = pgjobs.App(schema=os.environ.get("PGJOBS_SCHEMA", "pgjobs"))


@app.periodic("* * * * * *", name="mail_digest", catch_up="latest")
@app.job(name="mail.digest", queue="mail")
def digest() -> None:
    pass


@app.periodic("* * * * * *", name="nightly_report", catch_up="latest")
@app.job(name="reports.nightly", queue="reports")
def nightly() -> None:
    pass
