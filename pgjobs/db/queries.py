"""The statements of one schema, composed once: ``Queries(schema).job_claim``."""

from __future__ import annotations

from functools import cache

from psycopg import sql

from . import sql as text


@cache
def compose(statement: str, schema: str) -> sql.SQL:
    """``statement`` with its ``{schema}`` placeholder bound to the quoted schema name,
    rendered once: psycopg turns a ``Composed`` into bytes again at every execute (a fifth
    of an enqueue's client CPU), a plain ``SQL`` costs one encode."""
    return sql.SQL(sql.SQL(statement).format(schema=sql.Identifier(schema)).as_string(None))


class Queries:
    """The named statements of one schema (every statement of ``db.sql``), composed once."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.sequence = sql.Identifier(schema, "jobs_id_seq").as_string(None)
        for name, statement in text.statements().items():
            setattr(self, name, compose(statement, schema))

    job_insert: sql.SQL
    job_insert_many: sql.SQL
    job_reserve_many: sql.SQL
    job_copy: sql.SQL
    job_insert_special: sql.SQL
    unique_key_holders: sql.SQL
    enqueue_receipt_put: sql.SQL
    enqueue_receipt_get: sql.SQL
    batch_insert: sql.SQL
    batch_add_callback: sql.SQL
    batch_get: sql.SQL
    batch_fold: sql.SQL
    batch_unfolded: sql.SQL
    job_claim: sql.SQL
    queue_limited: sql.SQL
    job_claim_limited: sql.SQL
    job_heartbeat: sql.SQL
    job_complete_many: sql.SQL
    job_complete_fenced: sql.SQL
    job_complete_succeeded: sql.SQL
    job_complete_commit: sql.SQL
    job_report: sql.SQL
    job_reclaim: sql.SQL
    job_expire: sql.SQL
    unique_key_prune: sql.SQL
    enqueue_receipt_prune: sql.SQL
    job_prune: sql.SQL
    batch_prune: sql.SQL
    worker_prune: sql.SQL
    periodic_tick_prune: sql.SQL
    limit_key_prune: sql.SQL
    worker_register: sql.SQL
    worker_set_state: sql.SQL
    worker_last_id: sql.SQL
    worker_registered: sql.SQL
    task_register: sql.SQL
    task_definition: sql.SQL
    periodic_upsert: sql.SQL
    periodic_disable_missing: sql.SQL
    periodic_state: sql.SQL
    periodic_advance: sql.SQL
    periodic_tick_record: sql.SQL
    periodic_set_paused: sql.SQL
    periodic_request_run: sql.SQL
    periodic_take_run: sql.SQL
    periodic_tick_manual: sql.SQL
    periodic_tick_recent: sql.SQL
    periodic_tick_latest: sql.SQL
    periodic_list: sql.SQL
    queue_set_paused: sql.SQL
    queue_set_limits: sql.SQL
    queue_list: sql.SQL
    status_queues: sql.SQL
    status_unknown_tasks: sql.SQL
    status_workers: sql.SQL
    status_tables: sql.SQL
    status_horizon: sql.SQL
    status_now: sql.SQL
    status_gauges: sql.SQL
    job_get: sql.SQL
    job_result: sql.SQL
    job_why: sql.SQL
    job_watch: sql.SQL
    job_list: sql.SQL
    job_cancel: sql.SQL
    job_retry: sql.SQL
    job_delete: sql.SQL
    queue_overview: sql.SQL
    job_throughput: sql.SQL
    job_page: sql.SQL
    job_count_matching: sql.SQL
    job_ids_matching: sql.SQL
    job_detail: sql.SQL
    job_args: sql.SQL
    batch_page: sql.SQL
    batch_lineage: sql.SQL
    worker_page: sql.SQL
    schema_version_table: sql.SQL
    schema_revision: sql.SQL
