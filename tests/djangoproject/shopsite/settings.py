"""A small Django project for pgjobs' tests: the database is the test run's own
(``SHOP_DATABASE_URL``, set by tests/test_django.py), pgjobs' defaults come from it."""

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ["SHOP_DATABASE_URL"])

SECRET_KEY = "tests-only"
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["pgjobs.contrib.django", "shop"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db["dbname"],
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
    }
}
TASKS = {
    "default": {
        "BACKEND": "pgjobs.contrib.django.PgJobsBackend",
        "QUEUES": ["default", "mail"],
    },
    "now": {
        "BACKEND": "pgjobs.contrib.django.PgJobsBackend",
        "ENQUEUE_ON_COMMIT": False,
        "OPTIONS": {"MAX_ATTEMPTS": 3},
    },
}
