"""pgjobs in a Django project (docs/django.md).

    INSTALLED_APPS = [..., "pgjobs.contrib.django"]
    TASKS = {"default": {"BACKEND": "pgjobs.contrib.django.PgJobsBackend"}}  # django.tasks

    # shop/tasks.py (each installed app's tasks.py is imported at start-up)
    from pgjobs.contrib.django import app

    @app.job(queue="mail")
    def send_receipt(order_id: int) -> None: ...

    with transaction.atomic():               # one transaction for the order and its job
        order = Order.objects.create(...)
        send_receipt.enqueue(connection, order_id=order.pk)

    $ python manage.py pgjobs migrate | worker | status

``app`` is the project's :class:`pgjobs.App`, built from ``settings.PGJOBS`` (or from
``DATABASES["default"]``) on first use; ``PgJobsBackend`` runs ``django.tasks`` tasks as
pgjobs jobs. Both are loaded on first access, so listing the app in INSTALLED_APPS imports
neither the backend nor ``django.tasks``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...client.app import App
    from .backend import PgJobsBackend

__all__ = ["PgJobsBackend", "app"]

APP_SPEC = "pgjobs.contrib.django:app"
"""What ``manage.py pgjobs worker`` (and each process it supervises) passes as ``--app``."""


def __getattr__(name: str) -> Any:
    if name == "app":
        from .conf import get_app
        from .setup import ensure_setup

        ensure_setup()
        return get_app()
    if name == "PgJobsBackend":
        from .backend import PgJobsBackend

        return PgJobsBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    app: App
