"""The bench's own App (no-op tasks of every scenario) and the child processes that run
its workers. Spawned children import pgjobs afresh, so the app is built per process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
from psycopg import sql

from ...client.app import App
from ...core.names import channel_for
from ...worker.context import current_job

_STARTS: list[tuple[int, float]] = []
_POOLS: dict[str, Any] = {}


def bench_app(dsn: str, schema: str) -> App:
    """A pgjobs App on the bench schema with the no-op tasks of every scenario."""
    app = App(dsn=dsn, schema=schema)

    @app.job(name="noop")
    def noop() -> None:
        pass

    @app.job(name="async")
    async def anoop() -> None:
        pass

    @app.job(name="sync_tx")
    def noop_tx() -> None:
        with _POOLS["sync"].connection() as conn:
            current_job().complete(conn)

    @app.job(name="async_tx")
    async def anoop_tx() -> None:
        async with _POOLS["async"].connection() as aconn:
            await current_job().complete_async(aconn)

    effect = sql.SQL("INSERT INTO {} (job_id) VALUES (%s)").format(
        sql.Identifier(schema, "bench_effects"))

    @app.job(name="tx_effect")
    def tx_effect() -> None:
        """One effect row and the job's success, in one transaction of the worker's."""
        job = current_job()
        with job.transaction() as conn:
            conn.execute(effect, (job.id,))

    @app.job(name="tx_effect_own")
    def tx_effect_own() -> None:
        """The same with a pool of the handler's own and complete(conn)."""
        job = current_job()
        with _POOLS["sync"].connection() as conn:
            conn.execute(effect, (job.id,))
            job.complete(conn)

    @app.job(name="stamp")
    async def stamp() -> None:
        _STARTS.append((current_job().id, time.time()))

    return app


def _task_name(kind: str) -> str:
    return "noop" if kind == "sync" else kind


def _open_pools(dsn: str, size: int) -> None:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    _POOLS["sync"] = ConnectionPool(dsn, min_size=size, max_size=size, open=True)
    _POOLS["async"] = AsyncConnectionPool(dsn, min_size=size, max_size=size, open=False)


def _drain_child(dsn: str, schema: str, kind: str, concurrency: int, ready: Any,
                 results: Any) -> None:
    from ...worker.config import WorkerConfig
    from ...worker.lifecycle import Worker

    app = bench_app(dsn, schema)
    if kind.endswith("_tx") or kind == "tx_effect_own":
        _open_pools(dsn, concurrency)

    async def main() -> dict[str, int]:
        if kind == "async_tx":
            await _POOLS["async"].open(wait=True)
        worker = Worker(app, WorkerConfig(concurrency=concurrency, burst=True, listen=False))
        await asyncio.to_thread(ready.wait, 120)
        stats = await worker.run()
        if kind == "async_tx":
            await _POOLS["async"].close()
        return dict(stats)

    stats = asyncio.run(main())
    if kind in ("sync_tx", "tx_effect_own"):
        _POOLS["sync"].close()
    results.put(stats)


def serve_until_stopped(app: App, concurrency: int, ready: Any, stop: Any,
                        settle: float = 0.3) -> None:
    """Run a worker of ``app`` in this process: ``ready`` is set once it has had
    ``settle`` seconds to start listening, and it stops when ``stop`` is set (both
    multiprocessing events)."""
    from ...worker.config import WorkerConfig
    from ...worker.lifecycle import Worker

    async def main() -> None:
        worker = Worker(app, WorkerConfig(concurrency=concurrency))
        run = asyncio.create_task(worker.run())
        await asyncio.sleep(settle)
        ready.set()
        await asyncio.to_thread(stop.wait)
        worker.stop()
        await run

    asyncio.run(main())


def _latency_child_pgjobs(dsn: str, schema: str, concurrency: int, ready: Any, stop: Any,
                          results: Any) -> None:
    serve_until_stopped(bench_app(dsn, schema), concurrency, ready, stop)
    results.put(list(_STARTS))


def _latency_child_minimal(dsn: str, schema: str, concurrency: int, ready: Any, stop: Any,
                           results: Any) -> None:
    """LISTEN; on each notification claim up to ``concurrency`` jobs; a claimed row's
    arrival is its 'handler start'."""
    jobs = sql.Identifier(schema, "jobs")
    claim = sql.SQL("""
        UPDATE {jobs} SET state = 'running', lease_token = gen_random_uuid(),
               lease_expires_at = now() + interval '30 s', attempt = attempt + 1
        WHERE id IN (SELECT id FROM {jobs} WHERE state = 'available' AND queue = 'default'
                     AND run_at <= now() ORDER BY priority, run_at, id LIMIT %s
                     FOR UPDATE SKIP LOCKED)
        RETURNING id""").format(jobs=jobs)
    starts: list[tuple[int, float]] = []
    with psycopg.connect(dsn, autocommit=True) as listen, \
            psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as work:
        listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_for(schema))))
        ready.set()
        while not stop.is_set():
            for _note in listen.notifies(timeout=0.2, stop_after=1):
                while rows := work.execute(claim, (concurrency,)).fetchall():
                    now = time.time()
                    starts.extend((row[0], now) for row in rows)
    results.put(starts)
