"""The schema revision this code needs, without importing alembic (which costs a worker
about half a second and 20 MB at start). tests/test_migrations.py checks that it is the
head of migrations/versions, so a new revision cannot be forgotten here."""

HEAD = "0004"
