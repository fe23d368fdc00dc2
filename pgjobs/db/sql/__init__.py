"""Every SQL statement pgjobs sends, as text, one module per entity or phase; statement
names are entity first (``job_claim``, ``batch_insert``, ``periodic_advance``).

Statements are written with a ``{schema}`` placeholder and composed once per schema by
``db.queries.Queries`` with ``psycopg.sql.Identifier``; nothing else is ever spliced into
SQL text. Literal braces are doubled (``'{{}}'``) because of that composition. Names that
start with ``_`` are fragments of statements, not statements.
"""

from __future__ import annotations

from types import ModuleType

from . import (
    admin,
    batches,
    claim,
    enqueue,
    leases,
    periodic,
    queues,
    retention,
    schema,
    status,
    workers,
)

MODULES: tuple[ModuleType, ...] = (
    enqueue, batches, claim, leases, retention, workers, periodic, queues, status, admin, schema,
)

CATALOG_NAMES = ("status_tables", "status_horizon", "status_now", "schema_version_table")
"""Statements that read only PostgreSQL's catalogs and statistics views: no ``{schema}``
placeholder (the schema, where needed, is the ``%(schema)s`` parameter)."""


def statements() -> dict[str, str]:
    """Every statement by name, from every module (a name defined twice is an error)."""
    found: dict[str, str] = {}
    for module in MODULES:
        for name, value in vars(module).items():
            if name.startswith("_") or not isinstance(value, str) or name in ("annotations",):
                continue
            if name in found:
                raise AssertionError(f"statement {name} is defined twice")
            found[name] = value
    return found
