"""The operations layer: running and administering pgjobs. The ``pgjobs`` command line
(``ops.cli``), the supervisor of ``--processes N``, migrations, database roles, the local
development server, ``pgjobs status`` and ``pgjobs bench``."""
