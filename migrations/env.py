"""Alembic environment for pgjobs' own revisions.

The version table lives inside the pgjobs schema, so an application's own alembic history
is never touched. Every revision is plain SQL run with search_path pinned to that schema.
pgjobs._migrate builds the Config and passes the schema (and, online, the connection).
"""

from alembic import context
from psycopg import sql

config = context.config
schema: str = config.attributes["schema"]
VERSION_TABLE = "alembic_version"

# Composed once with Identifier: any schema name is quoted correctly.
# Created only when missing: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even
# when the schema exists, which an owner role given the schema by `pgjobs roles` lacks.
CREATE_SCHEMA = sql.SQL(
    "DO $pgjobs$ BEGIN IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = {}) "
    "THEN EXECUTE {}; END IF; END $pgjobs$"
).format(sql.Literal(schema),
         sql.Literal(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)).as_string(None)))
PIN_SEARCH_PATH = sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema))
# Serialises concurrent `pgjobs migrate` runs against one schema; released at commit.
MIGRATION_LOCK = sql.SQL("SELECT pg_advisory_xact_lock(hashtextextended({}, 0))").format(
    sql.Literal(f"pgjobs.migrate:{schema}")
)


def _prologue() -> None:
    for statement in (MIGRATION_LOCK, CREATE_SCHEMA, PIN_SEARCH_PATH):
        context.execute(statement.as_string(None))


def run_offline() -> None:
    context.configure(
        dialect_name="postgresql",
        # With the dialect's default "pyformat" style, every % in a revision's SQL would be
        # printed doubled (%%), which breaks e.g. RAISE formats in PL/pgSQL.
        dialect_opts={"paramstyle": "named"},
        literal_binds=True,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        _prologue()
        context.run_migrations()


def run_online() -> None:
    context.configure(
        connection=config.attributes["connection"],
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        _prologue()
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
