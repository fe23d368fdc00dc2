"""One measurement of one system, run by that system's own interpreter (see peers.py).

    <venv>/bin/python benchmarks/peer_runner.py SYSTEM SCENARIO --dsn DSN [sizes]

SYSTEM: minimal | pgjobs | pgqueuer | procrastinate. SCENARIO: setup | enqueue_single |
enqueue_bulk | drain | latency. Prints one JSON object on stdout. Each system is used
through its idiomatic API with the configuration its documentation recommends for
throughput (see docs/benchmarks.md): no-op async handlers, one durable PostgreSQL.

``minimal`` is the ceiling, not a product: the least a PostgreSQL queue can do. One
table, one partial index; ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED
LIMIT K) RETURNING`` claims K rows (K is ``--concurrency``), one batched ``DELETE``
finishes them; single enqueue is one ``INSERT``, bulk enqueue is ``COPY``; the latency
producer adds a ``pg_notify`` to its insert, which the worker LISTENs for.
This file imports only the standard library at module level, so each venv can run it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import sys
import time
from typing import Any

STARTS: list[tuple[int, float]] = []

# -- minimal (the ceiling) ---------------------------------------------------------------


class Minimal:
    table = "minimal_jobs"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def setup(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS minimal_jobs (id bigserial PRIMARY KEY, "
                "task text NOT NULL, args jsonb NOT NULL DEFAULT '{}', "
                "claimed boolean NOT NULL DEFAULT false)")
            conn.execute("CREATE INDEX IF NOT EXISTS minimal_jobs_ready ON minimal_jobs (id) "
                         "WHERE NOT claimed")

    def clear(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE minimal_jobs")

    def enqueue_single(self, n: int) -> float:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            start = time.perf_counter()
            for _ in range(n):
                conn.execute("INSERT INTO minimal_jobs (task, args) VALUES (%s, %s) "
                             "RETURNING id", ("noop", "{}"))
                conn.commit()
            return n / (time.perf_counter() - start)

    def enqueue_bulk(self, n: int, batch: int) -> float:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            start = time.perf_counter()
            for offset in range(0, n, batch):
                with conn.cursor().copy("COPY minimal_jobs (task, args) FROM STDIN") as copy:
                    for _ in range(min(batch, n - offset)):
                        copy.write_row(("noop", "{}"))
                conn.commit()
            return n / (time.perf_counter() - start)

    def fill(self, n: int) -> None:
        self.enqueue_bulk(n, 10_000)

    CLAIM = ("UPDATE minimal_jobs SET claimed = true WHERE id IN (SELECT id FROM minimal_jobs "
             "WHERE NOT claimed ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
             "RETURNING id, task, args")

    async def work(self, concurrency: int, drain: bool, ready: Any, stop: Any) -> int:
        import psycopg

        done = 0
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)

        async def run(task: str, job_id: int) -> None:
            if task == "stamp":
                STARTS.append((job_id, time.time()))

        async def claim_and_finish() -> int:
            nonlocal done
            rows = await (await conn.execute(self.CLAIM, (concurrency,))).fetchall()
            if rows:
                await asyncio.gather(*(run(task, job_id) for job_id, task, _args in rows))
                await conn.execute("DELETE FROM minimal_jobs WHERE id = ANY(%s)",
                                   ([r[0] for r in rows],))
                done += len(rows)
            return len(rows)

        if drain:
            await asyncio.to_thread(ready.wait, 120)
            while await claim_and_finish():
                pass
            await conn.close()
            return done
        # A LISTEN connection of its own wakes the claim loop; a 0.2 s poll is the
        # fallback.
        listener = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        await listener.execute("LISTEN minimal")
        wake = asyncio.Event()

        async def listen() -> None:
            async for _ in listener.notifies():
                wake.set()

        listening = asyncio.create_task(listen())
        ready.set()
        while not stop.is_set():
            wake.clear()
            if await claim_and_finish():
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), 0.2)
        listening.cancel()
        await conn.close()
        return done

    def producer(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.dsn)

        def enqueue() -> int:
            row = conn.execute(
                "WITH j AS (INSERT INTO minimal_jobs (task, args) VALUES ('stamp', '{}') "
                "RETURNING id) SELECT id, pg_notify('minimal', '') FROM j").fetchone()
            conn.commit()
            return int(row[0])  # type: ignore[index]

        return enqueue, conn.close


# -- pgjobs ---------------------------------------------------------------------------


class PgJobs:
    schema = "pgjobs"

    def __init__(self, dsn: str) -> None:
        import pgjobs

        self.dsn = dsn
        self.app = pgjobs.App(dsn=dsn, schema=self.schema)

        @self.app.job(name="noop")
        async def noop() -> None:
            pass

        @self.app.job(name="stamp")
        async def stamp() -> None:
            STARTS.append((pgjobs.current_job().id, time.time()))

    def setup(self) -> None:
        from pgjobs.ops import migrate as _migrate

        _migrate.upgrade(self.dsn, self.schema)

    def clear(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE pgjobs.jobs, pgjobs.workers")

    def enqueue_single(self, n: int) -> float:
        import psycopg

        task = self.app.tasks["noop"]
        with psycopg.connect(self.dsn, prepare_threshold=0) as conn:
            start = time.perf_counter()
            for _ in range(n):
                task.enqueue(conn)
                conn.commit()
            return n / (time.perf_counter() - start)

    def enqueue_bulk(self, n: int, batch: int) -> float:
        import psycopg

        task = self.app.tasks["noop"]
        with psycopg.connect(self.dsn) as conn:
            start = time.perf_counter()
            for offset in range(0, n, batch):
                task.enqueue_many(conn, [{}] * min(batch, n - offset))
                conn.commit()
            return n / (time.perf_counter() - start)

    def fill(self, n: int) -> None:
        import psycopg

        task = self.app.tasks["noop"]
        with psycopg.connect(self.dsn) as conn:
            for offset in range(0, n, 10_000):
                task.enqueue_many(conn, [{}] * min(10_000, n - offset))

    async def work(self, concurrency: int, drain: bool, ready: Any, stop: Any) -> int:
        from pgjobs import Worker, WorkerConfig

        config = WorkerConfig(concurrency=concurrency, burst=drain, listen=not drain)
        worker = Worker(self.app, config)
        if drain:
            await asyncio.to_thread(ready.wait, 120)
            return (await worker.run())["succeeded"]
        run = asyncio.create_task(worker.run())
        await asyncio.sleep(0.3)
        ready.set()
        await asyncio.to_thread(stop.wait)
        worker.stop()
        return (await run)["succeeded"]

    def producer(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.dsn, prepare_threshold=0)
        task = self.app.tasks["stamp"]

        def enqueue() -> int:
            job_id = task.enqueue(conn).id
            conn.commit()
            return job_id

        return enqueue, conn.close


# -- pgqueuer -----------------------------------------------------------------------------


class PgQueuer:
    """asyncpg driver (the docs' recommendation: about twice psycopg's throughput), uvloop
    and batch size 50, as in pgqueuer's own benchmark tool; 5 queue managers per process
    (that tool's default)."""

    batch_size = 50
    dequeuers = 5

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def queries(self) -> Any:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        return Queries(AsyncpgDriver(await asyncpg.connect(dsn=self.dsn)))

    def run(self, coro: Any) -> Any:
        import uvloop

        return uvloop.run(coro)

    def setup(self) -> None:
        async def install() -> None:
            q = await self.queries()
            if not await q.has_table("pgqueuer"):
                await q.install()

        self.run(install())

    def clear(self) -> None:
        async def clear() -> None:
            await (await self.queries()).clear_queue()

        self.run(clear())

    def enqueue_single(self, n: int) -> float:
        async def go() -> float:
            q = await self.queries()
            start = time.perf_counter()
            for _ in range(n):
                await q.enqueue("noop", None, 0)
            return n / (time.perf_counter() - start)

        return float(self.run(go()))

    def enqueue_bulk(self, n: int, batch: int) -> float:
        async def go() -> float:
            q = await self.queries()
            start = time.perf_counter()
            for offset in range(0, n, batch):
                size = min(batch, n - offset)
                await q.enqueue(["noop"] * size, [None] * size, [0] * size)
            return n / (time.perf_counter() - start)

        return float(self.run(go()))

    def fill(self, n: int) -> None:
        self.enqueue_bulk(n, 10_000)

    async def work(self, concurrency: int, drain: bool, ready: Any, stop: Any) -> int:
        from pgqueuer import PgQueuer as App
        from pgqueuer import types

        done = 0
        managers = []
        for _ in range(self.dequeuers if drain else 1):
            pgq = App((await self.queries()).driver)

            @pgq.entrypoint("noop")
            async def noop(job: Any) -> None:
                nonlocal done
                done += 1

            @pgq.entrypoint("stamp")
            async def stamp(job: Any) -> None:
                STARTS.append((int(job.id), time.time()))

            managers.append(pgq)
        mode = types.QueueExecutionMode.drain if drain else types.QueueExecutionMode.continuous
        if drain:
            await asyncio.to_thread(ready.wait, 120)
            await asyncio.gather(*(m.run(batch_size=self.batch_size, mode=mode)
                                   for m in managers))
            return done
        runs = [asyncio.create_task(m.run(batch_size=self.batch_size, mode=mode))
                for m in managers]
        await asyncio.sleep(0.5)
        ready.set()
        await asyncio.to_thread(stop.wait)
        for m in managers:
            m.shutdown.set()
        await asyncio.gather(*runs, return_exceptions=True)
        return len(STARTS)

    def producer(self) -> Any:
        loop = asyncio.new_event_loop()
        q = loop.run_until_complete(self.queries())

        def enqueue() -> int:
            (job_id,) = loop.run_until_complete(q.enqueue("stamp", None, 0))
            return int(job_id)

        return enqueue, loop.close


# -- procrastinate ------------------------------------------------------------------------


class Procrastinate:
    """PsycopgConnector (the default async connector) with a pool sized for the worker's
    concurrency; concurrency 10 as for pgjobs; jobs kept (delete_jobs never, the default)."""

    def __init__(self, dsn: str, pool: int = 12) -> None:
        import procrastinate

        self.dsn = dsn
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(
            conninfo=dsn, min_size=2, max_size=pool))

        @self.app.task(name="noop")
        async def noop() -> None:
            pass

        @self.app.task(name="stamp", pass_context=True)
        async def stamp(context: Any) -> None:
            STARTS.append((int(context.job.id), time.time()))

    def setup(self) -> None:
        async def go() -> None:
            async with self.app.open_async():
                import psycopg

                with psycopg.connect(self.dsn) as conn:
                    found = conn.execute(
                        "SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
                if not (found and found[0]):
                    await self.app.schema_manager.apply_schema_async()

        asyncio.run(go())

    def clear(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE procrastinate_jobs CASCADE")

    def enqueue_single(self, n: int) -> float:
        async def go() -> float:
            async with self.app.open_async():
                task = self.app.tasks["noop"]
                start = time.perf_counter()
                for _ in range(n):
                    await task.defer_async()
                return n / (time.perf_counter() - start)

        return asyncio.run(go())

    def enqueue_bulk(self, n: int, batch: int) -> float:
        async def go() -> float:
            async with self.app.open_async():
                task = self.app.tasks["noop"]
                start = time.perf_counter()
                for offset in range(0, n, batch):
                    await task.batch_defer_async(*[{}] * min(batch, n - offset))
                return n / (time.perf_counter() - start)

        return asyncio.run(go())

    def fill(self, n: int) -> None:
        self.enqueue_bulk(n, 10_000)

    async def work(self, concurrency: int, drain: bool, ready: Any, stop: Any) -> int:
        async with self.app.open_async():
            options = {"concurrency": concurrency, "install_signal_handlers": False,
                       "wait": not drain}
            if drain:
                await asyncio.to_thread(ready.wait, 120)
                await self.app.run_worker_async(**options)
                return -1
            run = asyncio.create_task(self.app.run_worker_async(**options))
            await asyncio.sleep(0.5)
            ready.set()
            await asyncio.to_thread(stop.wait)
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            return len(STARTS)

    def producer(self) -> Any:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(self.app.open_async().__aenter__())
        task = self.app.tasks["stamp"]

        def enqueue() -> int:
            return int(loop.run_until_complete(task.defer_async()))

        def close() -> None:
            loop.run_until_complete(self.app.close_async())
            loop.close()

        return enqueue, close


SYSTEMS = {"minimal": Minimal, "pgjobs": PgJobs, "pgqueuer": PgQueuer,
           "procrastinate": Procrastinate}

# -- scenarios ----------------------------------------------------------------------------


def _child(system: str, dsn: str, concurrency: int, drain: bool, ready: Any, stop: Any,
           out: Any) -> None:
    impl = SYSTEMS[system](dsn)
    runner = getattr(impl, "run", asyncio.run)
    done = runner(impl.work(concurrency, drain, ready, stop))
    out.put((done, STARTS))


def drain(system: str, dsn: str, n: int, procs: int, concurrency: int) -> float:
    impl = SYSTEMS[system](dsn)
    impl.clear()
    impl.fill(n)
    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Barrier(procs + 1), ctx.Queue()
    children = [ctx.Process(target=_child, args=(system, dsn, concurrency, True, ready, None,
                                                 out)) for _ in range(procs)]
    for child in children:
        child.start()
    ready.wait(120)
    start = time.perf_counter()
    for _ in children:
        out.get(timeout=900)
    elapsed = time.perf_counter() - start
    for child in children:
        child.join(30)
    left = remaining(system, dsn)
    if left:
        raise RuntimeError(f"{system} drain left {left} job(s) unfinished")
    return n / elapsed


def remaining(system: str, dsn: str, unclaimed: bool = False) -> int:
    """Jobs not finished (or, with ``unclaimed``, not yet picked by a worker)."""
    import psycopg

    query = {
        ("minimal", False): "SELECT count(*) FROM minimal_jobs",
        ("minimal", True): "SELECT count(*) FROM minimal_jobs WHERE NOT claimed",
        ("pgjobs", False): "SELECT count(*) FROM pgjobs.jobs WHERE state <> 'succeeded'",
        ("pgjobs", True): "SELECT count(*) FROM pgjobs.jobs WHERE state = 'available'",
        ("pgqueuer", False): "SELECT count(*) FROM pgqueuer",
        ("pgqueuer", True): "SELECT count(*) FROM pgqueuer WHERE status = 'queued'",
        ("procrastinate", False):
            "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'",
        ("procrastinate", True): "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'",
    }[system, unclaimed]
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def wait_claimed(system: str, dsn: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while remaining(system, dsn, unclaimed=True) and time.monotonic() < deadline:
        time.sleep(0.05)


def latency(system: str, dsn: str, rate: float, seconds: float, concurrency: int
            ) -> dict[str, float]:
    impl = SYSTEMS[system](dsn)
    impl.clear()
    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_child, args=(system, dsn, concurrency, False, ready, stop, out))
    child.start()
    ready.wait(120)
    time.sleep(0.5)
    enqueue, close = impl.producer()
    committed: dict[int, float] = {}
    interval, next_at = 1.0 / rate, time.perf_counter()
    for _ in range(int(rate * seconds)):
        job_id = enqueue()
        committed[job_id] = time.time()
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))
    close()
    wait_claimed(system, dsn, timeout=60)  # a loaded machine may lag behind the producer
    time.sleep(0.5)
    stop.set()
    _done, starts = out.get(timeout=60)
    child.join(30)
    delays = sorted((t - committed[i]) * 1000 for i, t in starts if i in committed)
    if len(delays) < len(committed):
        raise RuntimeError(f"{system}: {len(committed) - len(delays)} job(s) never started")
    pick = lambda q: delays[min(len(delays) - 1, int(len(delays) * q))]  # noqa: E731
    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("scenario")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    impl = SYSTEMS[args.system](args.dsn)
    result: dict[str, Any]
    if args.scenario == "setup":
        impl.setup()
        result = {"ok": True}
    elif args.scenario == "enqueue_single":
        impl.clear()
        result = {"value": impl.enqueue_single(args.n)}
    elif args.scenario == "enqueue_bulk":
        impl.clear()
        result = {"value": impl.enqueue_bulk(args.n, args.batch)}
    elif args.scenario == "drain":
        result = {"value": drain(args.system, args.dsn, args.n, args.processes,
                                 args.concurrency)}
    elif args.scenario == "latency":
        result = latency(args.system, args.dsn, args.rate, args.seconds, args.concurrency)
    else:
        raise SystemExit(f"unknown scenario {args.scenario}")
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
