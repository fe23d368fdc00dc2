"""Start Django when pgjobs is entered from outside it: a process that
``manage.py pgjobs worker --processes N`` supervises runs ``python -m pgjobs worker --app
pgjobs.contrib.django:app``, and Django must be set up (settings read, apps loaded, every
tasks.py imported) before that app is handed to the worker."""

from __future__ import annotations

import os

from ...core.errors import ConfigurationError


def ensure_setup() -> None:
    """``django.setup()`` unless Django is running or starting already."""
    from django.apps import apps
    from django.conf import settings

    if apps.ready or apps.loading:
        return
    if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise ConfigurationError(
            "pgjobs.contrib.django:app needs Django's settings: set DJANGO_SETTINGS_MODULE "
            "(or start the worker with `python manage.py pgjobs worker`)"
        )
    import django

    django.setup()
