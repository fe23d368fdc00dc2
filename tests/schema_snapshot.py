"""A stable text snapshot of one schema, read from the catalogs.

The migration tests compare a freshly migrated schema with ``tests/reference_schema.txt``.
When a new revision changes the schema on purpose, regenerate the reference from a
throwaway database on any server (it is created, migrated, snapshotted and dropped):

    .venv/bin/pgjobs dev start
    .venv/bin/python -m tests.schema_snapshot --write "$(.venv/bin/pgjobs dev url)"

and review the diff of tests/reference_schema.txt with the revision. Without ``--write``
it prints the snapshot; ``--schema NAME --no-migrate`` snapshots an existing schema of the
named database instead.

What is compared: tables (kind, persistence, reloptions), columns (type, nullability,
default, identity, generated), constraints (``pg_get_constraintdef``), indexes
(``pg_get_indexdef``), sequences, views, functions, triggers, enum types and comments.
Normalised, so that PostgreSQL 15 and 18, any schema name, and a schema that went through
downgrade and upgrade again all give the same text:

- views are recorded as their columns, types and the table columns they read, not their
  definition (PostgreSQL 16 stopped qualifying column names in deparsed views);
- NOT NULL constraints are recorded as column nullability (18 also lists them in
  pg_constraint, 15 does not);
- column positions count visible columns (dropped columns keep their attnum);
- the schema's own name is written ``<schema>``: in qualified names, and in a function's
  ``search_path`` setting; function bodies are compared as written.

`make test` and `make test-pg15` both compare with the same reference.
"""

from __future__ import annotations

import argparse
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

REFERENCE = Path(__file__).with_name("reference_schema.txt")
PLACEHOLDER = "<schema>"

TABLES = """
SELECT c.relname, c.relkind::text, c.relpersistence::text,
       coalesce(array_to_string(array(SELECT unnest(c.reloptions) ORDER BY 1), ', '), '')
FROM pg_class c
WHERE c.relnamespace = %(ns)s AND c.relkind IN ('r', 'p')
ORDER BY c.relname
"""

# Positions count visible columns only: a column dropped and added again (a downgrade and
# an upgrade) gets a new attnum but the same place.
COLUMNS = """
SELECT c.relname, row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), a.attname,
       format_type(a.atttypid, a.atttypmod), a.attnotnull,
       coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity::text,
       a.attgenerated::text
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relnamespace = %(ns)s AND c.relkind IN ('r', 'p', 'v', 'm')
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum
"""

# contype 'n' (NOT NULL) exists from PostgreSQL 18 on; nullability is in COLUMNS.
CONSTRAINTS = """
SELECT c.relname, k.conname, k.contype::text, pg_get_constraintdef(k.oid, true)
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
WHERE k.connamespace = %(ns)s AND k.contype <> 'n'
ORDER BY c.relname, k.conname
"""

INDEXES = """
SELECT t.relname, i.relname, pg_get_indexdef(i.oid)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
WHERE i.relnamespace = %(ns)s
ORDER BY t.relname, i.relname
"""

SEQUENCES = """
SELECT c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin,
       s.seqmax, s.seqcache, s.seqcycle,
       coalesce((SELECT o.relname || '.' || a.attname
                 FROM pg_depend d
                 JOIN pg_class o ON o.oid = d.refobjid
                 JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                 WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                   AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                 LIMIT 1), '')
FROM pg_class c
JOIN pg_sequence s ON s.seqrelid = c.oid
WHERE c.relnamespace = %(ns)s
ORDER BY c.relname
"""

# What a view reads (its rewrite rule's dependencies) stands in for its definition.
VIEWS = """
SELECT c.relname, c.relkind::text,
       coalesce(array_to_string(array(SELECT unnest(c.reloptions) ORDER BY 1), ', '), ''),
       coalesce(array_to_string(array(
           SELECT DISTINCT t.relname || coalesce('.' || a.attname, '')
           FROM pg_rewrite r
           JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
           JOIN pg_class t ON d.refclassid = 'pg_class'::regclass AND t.oid = d.refobjid
           LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
                                   AND d.refobjsubid > 0
           WHERE r.ev_class = c.oid AND t.oid <> c.oid
           ORDER BY 1), ', '), '')
FROM pg_class c
WHERE c.relnamespace = %(ns)s AND c.relkind IN ('v', 'm')
ORDER BY c.relname
"""

# Not pg_get_functiondef: its body would go through the schema-name replacement (and a
# string like 'pgjobs.WorkerLost' is not a qualified name), and it shows search_path
# values unquoted. The body is compared as written, whitespace collapsed.
FUNCTIONS = """
SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
       l.lanname, p.provolatile::text, p.prosecdef,
       coalesce(array_to_string(p.proconfig, ', '), ''), p.prosrc
FROM pg_proc p
JOIN pg_language l ON l.oid = p.prolang
WHERE p.pronamespace = %(ns)s AND p.prokind IN ('f', 'p')
ORDER BY p.proname, 2
"""

TRIGGERS = """
SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid, true)
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace = %(ns)s AND NOT t.tgisinternal
ORDER BY c.relname, t.tgname
"""

ENUMS = """
SELECT t.typname, array_to_string(array_agg(e.enumlabel ORDER BY e.enumsortorder), ', ')
FROM pg_type t
JOIN pg_enum e ON e.enumtypid = t.oid
WHERE t.typnamespace = %(ns)s
GROUP BY t.typname
ORDER BY t.typname
"""

COMMENTS = """
SELECT c.relname, coalesce(a.attname, ''), d.description
FROM pg_description d
JOIN pg_class c ON d.classoid = 'pg_class'::regclass AND c.oid = d.objoid
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid AND d.objsubid > 0
WHERE c.relnamespace = %(ns)s
ORDER BY 1, 2
"""


def _rows(conn: psycopg.Connection[Any], query: str, ns: int) -> list[tuple[Any, ...]]:
    return conn.execute(query, {"ns": ns}).fetchall()


def snapshot(dsn: str, schema: str) -> str:
    """The schema ``schema`` of database ``dsn`` as sorted, version-independent text ('' if
    the schema does not exist). Uses a connection of its own."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT oid FROM pg_namespace WHERE nspname = %s", (schema,)
        ).fetchone()
        if row is None:
            return ""
        # An empty search_path makes every deparsed name schema-qualified, so that the
        # schema's name can be replaced by the placeholder wherever it appears.
        conn.execute("SELECT set_config('search_path', '', false)")
        quoted = conn.execute("SELECT quote_ident(%s)", (schema,)).fetchone()
        assert quoted is not None
        lines = _lines(conn, int(row[0]), quoted[0])
    return "".join(line + "\n" for line in lines)


def _lines(conn: psycopg.Connection[Any], ns: int, quoted: str) -> list[str]:
    qualified = f"{quoted}."

    def generic(text: str) -> str:
        return text.replace(qualified, PLACEHOLDER + ".")

    lines: list[str] = []
    for name, kind, persistence, options in _rows(conn, TABLES, ns):
        lines.append(f"table {name} kind={kind} persistence={persistence} options=[{options}]")
    for table, num, col, typ, notnull, default, identity, generated in _rows(conn, COLUMNS, ns):
        flags = " not null" if notnull else ""
        flags += f" default {generic(default)}" if default else ""
        flags += f" identity={identity}" if identity else ""
        flags += f" generated={generated}" if generated else ""
        lines.append(f"column {table}.{col} #{num} {generic(typ)}{flags}")
    for table, name, kind, definition in _rows(conn, CONSTRAINTS, ns):
        lines.append(f"constraint {table}.{name} [{kind}] {generic(_one_line(definition))}")
    for table, name, definition in _rows(conn, INDEXES, ns):
        lines.append(f"index {table}.{name} {generic(definition)}")
    for name, typ, start, inc, lo, hi, cache, cycle, owner in _rows(conn, SEQUENCES, ns):
        lines.append(
            f"sequence {name} {typ} start={start} increment={inc} min={lo} max={hi} "
            f"cache={cache} cycle={cycle} owned_by={owner or '-'}"
        )
    for name, kind, options, reads in _rows(conn, VIEWS, ns):
        lines.append(f"view {name} kind={kind} options=[{options}] reads=[{reads}]")
    for name, args, result, language, volatility, definer, config, body in _rows(
        conn, FUNCTIONS, ns
    ):
        # A search_path pinned to the schema (SET search_path FROM CURRENT at creation).
        config = config.replace(f"search_path={quoted}", f"search_path={PLACEHOLDER}")
        lines.append(
            f"function {name}({generic(args)}) returns {generic(result)} language={language} "
            f"volatility={volatility} security_definer={definer} config=[{config}] "
            f"body={_one_line(body)}"
        )
    for table, name, definition in _rows(conn, TRIGGERS, ns):
        lines.append(f"trigger {table}.{name} {generic(definition)}")
    for name, labels in _rows(conn, ENUMS, ns):
        lines.append(f"enum {name} ({labels})")
    for table, column, text in _rows(conn, COMMENTS, ns):
        target = f"{table}.{column}" if column else table
        lines.append(f"comment {target} {_one_line(text)}")
    return lines


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def migrated_snapshot(dsn: str, schema: str = "pgjobs") -> str:
    """Create a throwaway database on ``dsn``'s server, migrate it, snapshot it, drop it."""
    from pgjobs.ops import migrate as _migrate

    name = f"pgjobs_snapshot_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            target = make_conninfo(dsn, dbname=name)
            _migrate.upgrade(target, schema)
            return snapshot(target, schema)
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.schema_snapshot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dsn", help="a server to create the throwaway database on")
    parser.add_argument("--schema", default="pgjobs")
    parser.add_argument("--no-migrate", action="store_true",
                        help="snapshot the schema of the database named by DSN as it is")
    parser.add_argument("--write", action="store_true", help=f"write {REFERENCE.name}")
    args = parser.parse_args(argv)
    if args.no_migrate:
        text = snapshot(args.dsn, args.schema)
    else:
        text = migrated_snapshot(args.dsn, args.schema)
    if args.write:
        REFERENCE.write_text(text)
        print(f"wrote {REFERENCE} ({text.count(chr(10))} lines)")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
