"""A FastAPI application that writes a row and enqueues a job in one transaction
(docs/fastapi.md).

    pip install pgjobs fastapi uvicorn
    export PGJOBS_DATABASE_URL=$(pgjobs dev start)   # any PostgreSQL will do
    pgjobs migrate
    uvicorn shopapi:api                                  # the web app
    pgjobs worker --app shopapi:jobs                     # and a worker, in another shell
    curl -X POST localhost:8000/signups -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com"}'

The lifespan opens one async psycopg pool for the requests; each request takes a
connection, inserts the signup and enqueues its welcome mail on it, and the two commit
together when the ``async with`` block ends (or roll back together if anything fails).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, HTTPException, Request
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

import pgjobs

jobs = pgjobs.App()  # PGJOBS_DATABASE_URL

SCHEMA = """
CREATE TABLE IF NOT EXISTS signups (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE,
    welcomed_at timestamptz
)
"""


@jobs.job(queue="mail", name="shop.send_welcome")
def send_welcome(signup_id: int) -> None:
    """The worker's side: "send" the mail, and record it in the job's own transaction."""
    with psycopg.connect(jobs.dsn) as conn:
        conn.execute("UPDATE signups SET welcomed_at = now() WHERE id = %s", (signup_id,))
        pgjobs.current_job().complete(conn)


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    async with AsyncConnectionPool(jobs.dsn, min_size=1, max_size=10, open=False) as pool:
        async with pool.connection() as conn:
            await conn.execute(SCHEMA)  # a demo's shortcut: use migrations in a real app
        api.state.pool = pool
        yield
    await jobs.aclose()  # pgjobs' own pool, if anything enqueued without a connection


api = FastAPI(lifespan=lifespan)


class SignupIn(BaseModel):
    email: str


@api.post("/signups", status_code=201)
async def create_signup(signup: SignupIn, request: Request) -> dict[str, Any]:
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = request.app.state.pool
    try:
        # One transaction: committed when the block ends, rolled back if it raises.
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "INSERT INTO signups (email) VALUES (%s) RETURNING id", (signup.email,))
            row = await cursor.fetchone()
            assert row is not None
            job = await send_welcome.enqueue_async(conn, signup_id=row[0])
    except psycopg.errors.UniqueViolation:
        raise HTTPException(409, f"{signup.email} has signed up already") from None
    return {"id": row[0], "job_id": job.id}


@api.get("/signups/{signup_id}")
async def get_signup(signup_id: int, request: Request) -> dict[str, Any]:
    async with request.app.state.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT email, welcomed_at IS NOT NULL FROM signups WHERE id = %s", (signup_id,))
        row = await cursor.fetchone()
    if row is None:
        raise HTTPException(404, f"no signup {signup_id}")
    return {"id": signup_id, "email": row[0], "welcomed": row[1]}
