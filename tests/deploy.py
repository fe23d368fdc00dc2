"""Helpers for the deployment tests: a PgBouncer process, and one producer scenario that
enqueues in every way the API offers (tests/test_roles.py, tests/test_pgbouncer.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import pgjobs
from pgjobs.db import enqueue as _enqueue
from pgjobs.ops.devserver import _ensure_user, _reachable, free_port
from tests.workerapps import deployed


def pgbouncer_binary() -> str:
    """The pgbouncer binary; skips the test when it is missing, except under CI."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if found:
        return found
    reason = "pgbouncer is not installed (run scripts/install-system-deps as root)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must install it before the tests")
    pytest.skip(reason)


@dataclass
class PgBouncer:
    """PgBouncer in transaction pooling mode in front of the server of ``dsn``, on a free
    port, trusting the users it is told about (the test server trusts them too). A few
    server connections per database and user, so clients really do share them."""

    dsn: str
    users: tuple[str, ...] = ("postgres",)
    pool_size: int = 3
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pgbouncer-")))
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = conninfo_to_dict(self.dsn)
        host, port = server.get("host", "127.0.0.1"), server.get("port", "5432")
        self.port = free_port()
        (self.folder / "users.txt").write_text(
            "".join(f'"{user}" ""\n' for user in self.users))
        (self.folder / "pgbouncer.ini").write_text(f"""\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.folder}/users.txt
pool_mode = transaction
default_pool_size = {self.pool_size}
max_client_conn = 500
logfile = {self.folder}/pgbouncer.log
""")
        user = _ensure_user()  # pgbouncer refuses to run as root
        extra: dict[str, object] = {}
        if user:
            _reachable(self.folder, user)
            for path in self.folder.iterdir():
                _reachable(path, user)
            extra = {"user": user, "group": user, "extra_groups": []}
        self.proc = subprocess.Popen(
            [pgbouncer_binary(), str(self.folder / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, **extra,  # type: ignore[arg-type]
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with psycopg.connect(self.url_for(self.dsn), connect_timeout=2,
                                     prepare_threshold=None):
                    return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"pgbouncer did not start:\n{self.log()}") from None
                time.sleep(0.1)

    def url_for(self, dsn: str) -> str:
        """``dsn`` (same database and user) through this PgBouncer."""
        return make_conninfo(dsn, host="127.0.0.1", port=str(self.port))

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


def database_name(dsn: str) -> str:
    return conninfo_to_dict(dsn).get("dbname") or urlsplit(dsn).path.lstrip("/")


@dataclass
class Produced:
    """What :func:`enqueue_every_way` wrote: every job id, and the batch's id."""

    ids: list[int]
    batch_id: int


COPY_ROWS = 50
"""Rows per enqueue_many call that goes by COPY here: enqueue_every_way lowers the
threshold to this while it runs, so the COPY path is exercised without thousands of jobs
for the worker of a deployment test to run."""


def many_by_copy(start: int) -> list[dict[str, int]]:
    """Enough rows for enqueue_many to send them by COPY (under enqueue_every_way)."""
    assert _enqueue.COPY_MIN_ROWS <= COPY_ROWS
    return [{"n": n} for n in range(start, start + COPY_ROWS)]


def enqueue_every_way(app: pgjobs.App, dsn: str) -> Produced:
    """Enqueue through ``app`` in every way (see ``_enqueue_every_way``), with the COPY
    threshold lowered to COPY_ROWS meanwhile."""
    saved, _enqueue.COPY_MIN_ROWS = _enqueue.COPY_MIN_ROWS, COPY_ROWS
    try:
        return _enqueue_every_way(app, dsn)
    finally:
        _enqueue.COPY_MIN_ROWS = saved


def _enqueue_every_way(app: pgjobs.App, dsn: str) -> Produced:
    """Enqueue through ``app`` (a producer: it names tasks, it does not import them) in every
    way: the app's pool (reliable push, more than psycopg's prepare threshold of 5 times),
    the caller's connection, many at once (also by COPY), a unique key twice, a batch with
    a callback, jobs under a per-key limit, and the async twins. Connections made here
    never prepare (PgBouncer 1.18)."""
    flaky, member = app.task("once_flaky"), app.task("member")
    ids = [flaky.enqueue().id for _ in range(6)]
    with psycopg.connect(dsn, prepare_threshold=None) as conn:
        ids += [app.enqueue(conn, "member", n=n).id for n in range(6)]
        ids += [r.id for r in member.enqueue_many(conn, [{"n": n} for n in range(6, 12)])]
        ids += [r.id for r in member.enqueue_many(conn, many_by_copy(1000))]
        unique = member.options(unique_for=timedelta(hours=1))
        first, again = unique.enqueue(conn, n=99), unique.enqueue(conn, n=99)
        assert again.duplicate and again.id == first.id
        ids.append(first.id)
        batch = app.batch(conn, description="deploy")
        batch.on_success(app.task("on_batch_success"))
        ids += [r.id for r in batch.enqueue_many(member, [{"n": n} for n in range(3)])]
        ids += [r.id for r in batch.enqueue_many(member, many_by_copy(2000))]
        ids.append(app.enqueue(conn, "fenced").id)
        # Limits travel with the registered task, so this one is enqueued through it.
        ids += [r.id for r in deployed.keyed.enqueue_many(conn, [{"n": n} for n in range(3)])]

    async def produce_async() -> list[int]:
        try:
            found = [(await member.enqueue_async(n=n)).id for n in range(20, 26)]
            async with await psycopg.AsyncConnection.connect(
                    dsn, prepare_threshold=None) as aconn:
                found += [(await member.enqueue_async(aconn, n=n)).id for n in range(26, 32)]
            found += [job.id for job in await member.enqueue_many_async(None, many_by_copy(3000))]
            return found
        finally:
            await app.aclose()

    ids += asyncio.run(produce_async())
    return Produced(ids, batch.id)
