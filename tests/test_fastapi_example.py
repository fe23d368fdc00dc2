"""The FastAPI example (examples/fastapi) driven in-process with httpx: its lifespan opens
the async pool, a signup and its welcome job commit together (a refused signup enqueues
nothing), and a worker then runs the job."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from pgjobs.testing import adrain
from tests.helpers import query

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "fastapi"))
import shopapi


def test_a_signup_and_its_job_commit_together_and_the_job_runs(
    fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGJOBS_DATABASE_URL", fresh_dsn)

    async def scenario() -> tuple[dict[str, Any], int, dict[str, Any]]:
        async with shopapi.api.router.lifespan_context(shopapi.api):
            transport = httpx.ASGITransport(app=shopapi.api)
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as c:
                created = await c.post("/signups", json={"email": "ada@example.com"})
                assert created.status_code == 201, created.text
                again = await c.post("/signups", json={"email": "ada@example.com"})
                ran = await adrain(shopapi.jobs)
                assert ran["succeeded"] == 1
                shown = await c.get(f"/signups/{created.json()['id']}")
        return created.json(), again.status_code, shown.json()

    created, again, shown = asyncio.run(scenario())
    assert again == 409  # the refused signup rolled back, and enqueued nothing
    assert query(fresh_dsn, "SELECT id, task, state FROM pgjobs.jobs") == [
        (created["job_id"], "shop.send_welcome", "succeeded")]
    assert shown == {"id": created["id"], "email": "ada@example.com", "welcomed": True}
