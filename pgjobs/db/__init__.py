"""The database layer: the SQL text (``db.sql``, one module per entity) and the typed
functions that run each statement and decode its rows by column name.

Every write to pgjobs' tables goes through a function of this package; the client, the
worker and the operator commands hand it values and get values back. Statements are
composed once per schema (``Queries``) and run on a caller's connection or on one of the
worker's own (``Connector``), sync or async, through the same ``Query`` objects.
"""
