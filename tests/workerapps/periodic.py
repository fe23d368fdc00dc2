"""An app with one-second schedules, one per catch-up policy, for the periodic chaos test's
worker subprocesses (tests/chaos/test_cron_ticks.py)."""

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


# The other two policies on the same task: after a gap (shorter than a minute) both
# enqueue the newest tick once and pass over the older ones.
app.schedule(tick, "* * * * * *", name="latest_second", catch_up="latest")
app.schedule(tick, "* * * * * *", name="skip_second", catch_up="skip")
