"""The package version, and the schema revision this code needs.

The revision is kept here, without importing alembic (which costs a worker about half a
second and 20 MB at start); tests/test_migrations.py checks that it is the head of
migrations/versions, so a new revision cannot be forgotten here.
"""

__version__ = "0.1.0"

HEAD_REVISION = "0010"
