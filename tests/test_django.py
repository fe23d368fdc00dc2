"""pgjobs.contrib.django in a real Django project (tests/djangoproject) on the test run's
PostgreSQL: transactional enqueue in ``atomic()``, the ``django.tasks`` backend read back
after a real ``manage.py pgjobs worker`` ran its tasks, the management command, settings.

Django is set up once per test process, on a database of its own (``shop_dsn``)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Databases
from tests.helpers import query, scalar

PROJECT = Path(__file__).resolve().parent / "djangoproject"


@pytest.fixture(scope="session")
def shop_dsn(databases: Databases) -> str:
    dsn = databases.create()
    os.environ["SHOP_DATABASE_URL"] = dsn
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")
    sys.path.insert(0, str(PROJECT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return dsn


@pytest.fixture
def shop(shop_dsn: str) -> Iterator[str]:
    """The project's database, emptied of jobs and orders before each test."""
    query(shop_dsn, "TRUNCATE pgjobs.jobs, shop_order")
    yield shop_dsn
    from django.db import connection

    connection.close()


def manage(dsn: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python manage.py ...`` of the test project, as a deploy would run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGJOBS_")}
    env.update(SHOP_DATABASE_URL=dsn, PYTHONPATH=str(PROJECT.parent.parent))
    env.pop("DJANGO_SETTINGS_MODULE", None)  # manage.py sets its own
    return subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def jobs(dsn: str) -> list[tuple[Any, ...]]:
    return query(dsn, "SELECT task, queue, priority, state FROM pgjobs.jobs ORDER BY id")


class Boom(Exception):
    pass


def test_a_rolled_back_atomic_leaves_no_job(shop: str) -> None:
    from django.db import connection, transaction

    from pgjobs.contrib.django.tasks_api import TaskResultDoesNotExist, task_enqueued

    from shop.models import Order
    from shop.tasks import send_receipt, total_of

    sent: list[Any] = []
    task_enqueued.connect(lambda sender, task_result, **_: sent.append(task_result),
                          weak=False, dispatch_uid="test")
    with pytest.raises(Boom), transaction.atomic():
        order = Order.objects.create(email="a@example.com", total=5)
        send_receipt.enqueue(connection, order_id=order.pk)
        result = total_of.enqueue(order.pk)  # ENQUEUE_ON_COMMIT: this transaction too
        task_enqueued.disconnect(dispatch_uid="test")
        assert [r.id for r in sent] == [result.id]  # Django's signal
        assert [task for task, *_ in jobs(shop)] == []  # invisible to everyone else
        assert total_of.get_result(result.id).status == "READY"  # but seen in here
        raise Boom
    assert jobs(shop) == [] and scalar(shop, "SELECT count(*) FROM shop_order") == 0
    with pytest.raises(TaskResultDoesNotExist):
        total_of.get_result(result.id)


@pytest.mark.slow  # a manage.py worker process
def test_a_committed_atomic_runs_and_its_results_read_back(shop: str) -> None:
    from django.db import connection, transaction
    from django.utils import timezone

    from pgjobs.contrib.django.tasks_api import TaskResultStatus

    from shop.models import Order
    from shop.tasks import attempt_of, double, explode, greet, send_receipt, total_of

    with transaction.atomic():
        order = Order.objects.create(email="b@example.com", total=42)
        send_receipt.enqueue(connection, order_id=order.pk)
        total = total_of.enqueue(order.pk)
        hello = greet.using(priority=10).enqueue("Ada")
        later = greet.using(run_after=timezone.now() + timedelta(hours=1)).enqueue("Bob")
        boom = explode.enqueue()
        context = attempt_of.enqueue(label="ctx")
        doubled = double.enqueue(21)
    assert total.status == TaskResultStatus.READY and total.id.isdigit()
    assert jobs(shop)[:3] == [("shop.tasks.send_receipt", "mail", 0, "available"),
                              ("shop.tasks.total_of", "default", 0, "available"),
                              ("shop.tasks.greet", "mail", -10, "available")]
    assert scalar(shop, "SELECT run_at > now() + interval '59 minutes' FROM pgjobs.jobs "
                        "WHERE id = %s", int(later.id))

    done = manage(shop, "pgjobs", "worker", "--burst", "--concurrency", "4")
    assert done.returncode == 0, done.stdout + done.stderr

    order.refresh_from_db()
    assert order.receipt_sent  # completed by the handler in its own atomic() block
    assert scalar(shop, "SELECT state FROM pgjobs.jobs "
                        "WHERE task = 'shop.tasks.send_receipt'") == "succeeded"
    for result in (total, hello, later, boom, context, doubled):
        result.refresh()
    assert (total.status, total.return_value) == (TaskResultStatus.SUCCESSFUL, 42)
    assert total.enqueued_at <= total.started_at <= total.finished_at
    assert total.attempts == 1 and total.args == [order.pk]
    assert hello.return_value == "hello Ada" and hello.task.priority == 10
    assert hello.task.queue_name == "mail"
    assert later.status == TaskResultStatus.READY and not later.is_finished
    assert boom.status == TaskResultStatus.FAILED
    assert boom.errors[0].exception_class is ValueError
    assert "boom" in boom.errors[0].traceback
    with pytest.raises(ValueError, match="failed"):
        boom.return_value  # noqa: B018 - Django's contract: no value for a failure
    assert context.return_value == {"label": "ctx", "attempt": 1, "id": context.id}
    assert doubled.return_value == 42
    assert total_of.get_result(total.id).return_value == 42


def test_enqueue_on_commit_false_commits_at_once(shop: str) -> None:
    from django.db import transaction

    from shop.tasks import audit, greet

    at_once = dataclasses.replace(greet, enqueue_on_commit=False)  # per task
    with pytest.raises(Boom), transaction.atomic():
        result = audit.enqueue(7)  # its backend: ENQUEUE_ON_COMMIT False
        at_once.enqueue("Di")
        # Committed on pgjobs' own pool, apart from this transaction.
        assert jobs(shop) == [("shop.tasks.audit", "default", 0, "available"),
                              ("shop.tasks.greet", "mail", 0, "available")]
        raise Boom
    assert audit.get_result(result.id).status == "READY"
    assert query(shop, "SELECT max_attempts FROM pgjobs.jobs ORDER BY id") == [(3,), (1,)]


@pytest.mark.slow  # a supervisor and its worker process
def test_a_supervised_worker_starts_django_in_each_process(shop: str) -> None:
    from shop.tasks import greet

    result = greet.enqueue("Cy")
    done = manage(shop, "pgjobs", "worker", "--burst", "--processes", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    result.refresh()
    assert result.return_value == "hello Cy"


def test_the_command_reuses_the_cli_options(shop: str, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    from django.core.management import call_command

    from pgjobs.contrib.django.cli import queues, run
    from pgjobs.ops.cli.worker import worker

    call_command("pgjobs", "migrate")
    assert "is at revision" in capsys.readouterr().out
    with pytest.raises(SystemExit) as status:
        call_command("pgjobs", "status", "--json")
    assert json.loads(capsys.readouterr().out)["ok"] is (status.value.code == 0)
    with pytest.raises(SystemExit) as helped:
        run(["worker", "--help"], prog_name="manage.py pgjobs")
    assert helped.value.code == 0
    text = capsys.readouterr().out
    assert all(opt in text for param in worker.params for opt in param.opts)
    # Served by default: every queue a task or the backend's QUEUES may use (the run above
    # served greet's "mail" with no --queues).
    assert queues() == ["default", "mail"]


def test_settings_default_to_the_django_database() -> None:
    from pgjobs import ConfigurationError, InvalidOption
    from pgjobs.contrib.django.conf import read

    databases = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "shop",
                             "USER": "u", "HOST": "db", "PORT": 5433,
                             "OPTIONS": {"sslmode": "require", "pool": True}},
                 "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}}
    config = read(None, databases)
    assert config.database == "default"
    assert config.app == {"dsn": "sslmode=require dbname=shop user=u host=db port=5433"}
    config = read({"SCHEMA": "jobs", "POOL_SIZE": 2, "DSN": "host=direct"}, databases)
    assert config.app == {"schema": "jobs", "pool_size": 2, "dsn": "host=direct"}
    with pytest.raises(ConfigurationError, match=r"unknown PGJOBS key.*SCHEME"):
        read({"SCHEME": "x"}, databases)
    with pytest.raises(ConfigurationError, match="sqlite3"):
        read({"DATABASE": "other"}, databases)
    with pytest.raises(ConfigurationError, match="does not define"):
        read({"DATABASE": "missing"}, databases)
    from pgjobs.contrib.django.backend import PgJobsBackend

    with pytest.raises(InvalidOption, match="MAX_ATTEMPTS"):
        PgJobsBackend("x", {"OPTIONS": {"MAX_ATTEMPTS": 0}})


def test_import_pgjobs_imports_no_framework() -> None:
    code = ("import sys, pgjobs; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('django', 'django_tasks', 'fastapi') or m.startswith('sqlalchemy.orm')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_a_django_connection_not_on_psycopg_3_is_refused() -> None:
    import pgjobs
    from pgjobs.db.sessions import sync_connection

    class Wrapper:  # what Django's psycopg2 backend, or another vendor's, looks like
        def __init__(self, vendor: str) -> None:
            self.vendor, self.connection = vendor, object()

        def ensure_connection(self) -> None: ...

    Wrapper.__module__ = "django.db.backends.postgresql.base"
    with pytest.raises(pgjobs.UnsupportedConnection, match="install psycopg 3"):
        sync_connection(Wrapper("postgresql"))  # type: ignore[arg-type]
    with pytest.raises(pgjobs.UnsupportedConnection, match="is to sqlite"):
        sync_connection(Wrapper("sqlite"))  # type: ignore[arg-type]
