"""The client layer: what an application calls. ``App`` (configuration, task registry,
connection pools), ``Task`` (enqueue entry points), reliable push, batches, periodic
declarations and operator actions. It validates and encodes; the database layer writes.
"""
