"""Tasks of the shop app: a pgjobs task and django.tasks tasks, found at start-up."""

from __future__ import annotations

from django.db import connection, transaction

import pgjobs
from pgjobs.contrib.django import app

from .models import Order

try:  # Django 6
    from django.tasks import task  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # the django-tasks backport
    from django_tasks import task


@app.job(queue="mail")
def send_receipt(order_id: int) -> None:
    """Its effect and its completion in one Django transaction: exactly once."""
    with transaction.atomic():
        Order.objects.filter(pk=order_id).update(receipt_sent=True)
        pgjobs.current_job().complete(connection)


@task()
def total_of(order_id: int) -> int:
    return Order.objects.get(pk=order_id).total


@task(queue_name="mail")
def greet(name: str) -> str:
    return f"hello {name}"


@task()
def explode() -> None:
    raise ValueError("boom")


@task(takes_context=True)
def attempt_of(context, label: str) -> dict:  # type: ignore[no-untyped-def]
    return {"label": label, "attempt": context.attempt, "id": context.task_result.id}


@task()
async def double(n: int) -> int:
    return n * 2


@task(backend="now")
def audit(order_id: int) -> int:
    return order_id
