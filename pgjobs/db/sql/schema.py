"""SQL: which revision of pgjobs' schema is applied (the worker refuses any other)."""

from __future__ import annotations

# Whether the version table exists; the schema is a parameter (a catalog read, so it
# works before the first `pgjobs migrate`, when the schema may not exist at all).
schema_version_table = """
SELECT to_regclass(format('%%I.alembic_version', %(schema)s::text)) IS NOT NULL AS found
"""

schema_revision = """
SELECT version_num AS revision FROM {schema}.alembic_version
"""
