"""An app with a one-second schedule, for the periodic tests' worker subprocesses."""

from __future__ import annotations

import os
from datetime import timedelta

import pgjobs

app = pgjobs.App(schema=os.environ.get("PGJOBS_SCHEMA", "pgjobs"))


# catch_up="all": a tick delayed by a stalled worker is still enqueued, so the test can
# require every second of the run to have exactly one job.
@app.periodic("* * * * * *", name="every_second", catch_up="all",
              catch_up_window=timedelta(minutes=10))
@app.job(name="tick")
def tick() -> None:
    pass
