"""The Django app: ``INSTALLED_APPS += ["pgjobs.contrib.django"]``."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class PgJobsConfig(AppConfig):  # type: ignore[misc]
    """Imports each installed app's ``tasks.py`` once the registry is ready, so every
    ``@app.job`` and ``django.tasks`` task is registered before a worker claims a job or a
    result is read back (a worker never imports a task by a name found in the database)."""

    name = "pgjobs.contrib.django"
    label = "pgjobs"
    verbose_name = "pgjobs"
    default = True

    def ready(self) -> None:
        autodiscover_modules("tasks")
