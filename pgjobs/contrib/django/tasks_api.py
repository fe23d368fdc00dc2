"""Django's Tasks framework: ``django.tasks`` (Django 6.0 and later), or on older Django
the ``django-tasks`` backport, whose API is the same under the name ``django_tasks``
(Django 6 needs Python 3.12; the backport keeps Python 3.11 projects covered).

Everything the backend uses of the framework is named here once."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ...core.errors import ConfigurationError


def _framework() -> tuple[str, ModuleType]:
    for root in ("django.tasks", "django_tasks"):
        try:
            return root, importlib.import_module(root)
        except ImportError:
            continue
    raise ConfigurationError(
        "PgJobsBackend needs Django's Tasks framework: Django 6.0 or later, or on older "
        "Django the django-tasks backport (pip install 'pgjobs[django]' installs it)"
    )


ROOT, api = _framework()
_base = importlib.import_module(f"{ROOT}.base")
_exceptions = importlib.import_module(f"{ROOT}.exceptions")
_signals = importlib.import_module(f"{ROOT}.signals")

BaseTaskBackend: Any = importlib.import_module(f"{ROOT}.backends.base").BaseTaskBackend
Task: Any = _base.Task
TaskContext: Any = _base.TaskContext
TaskError: Any = _base.TaskError
TaskResult: Any = _base.TaskResult
TaskResultStatus: Any = _base.TaskResultStatus
TaskResultDoesNotExist: Any = _exceptions.TaskResultDoesNotExist
InvalidTask: Any = getattr(_exceptions, "InvalidTask", None) or _exceptions.InvalidTaskError
task_backends: Any = api.task_backends
task_enqueued: Any = _signals.task_enqueued
task_started: Any = _signals.task_started
task_finished: Any = _signals.task_finished
