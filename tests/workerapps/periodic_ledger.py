"""A one-second schedule and a daily one, for the ledger's tests with real workers
(tests/test_periodic_ledger.py): pause and resume while workers tick, and run-now."""

from __future__ import annotations

import os

import pgjobs

app = pgjobs.App(schema=os.environ.get("PGJOBS_SCHEMA", "pgjobs"),
                 periodic_owner="ledger-tests")


@app.periodic("* * * * * *", name="heartbeat", catch_up="latest")
@app.job(name="ledger.heartbeat", queue="ticks")
def heartbeat() -> None:
    pass


@app.periodic("0 3 * * *", name="nightly", kwargs={"kind": "full"})
@app.job(name="ledger.nightly", queue="ticks")
def nightly(kind: str) -> None:
    pass
