"""Each list query of the dashboard reads through an index, never a sequential scan of
``jobs``, on a table big enough for the planner to choose freely (100,000 jobs of a
production-like mix, analysed; no planner setting is forced).

The page size and the scan budget are scaled to the table as they relate to a table of a
million jobs: a filtered page reads at most 20,000 candidates of 1,000,000 there, 2,000 of
100,000 here, so the planner faces the same choice. benchmarks/dashboard_pages.py times
the pages themselves at a million jobs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgjobs.db import dashboard as db
from pgjobs.db.dashboard import JobFilter
from pgjobs.db.queries import Queries
from pgjobs.db.statement import Query
from tests.dashboard_data import fill

pytestmark = pytest.mark.slow

JOBS = 100_000
SCAN = 2_000
Q = Queries("pgjobs")


@pytest.fixture(scope="module")
def big(databases: Any) -> Iterator[psycopg.Connection[Any]]:
    dsn = databases.create()
    with psycopg.connect(dsn) as conn:
        fill(conn, JOBS)
    # Unprepared, as the dashboard sends them: planned with the parameters' values.
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        yield conn


def plan(conn: psycopg.Connection[Any], query: Query[Any]) -> dict[str, Any]:
    row = conn.execute(b"EXPLAIN (FORMAT JSON) " + query.text.as_bytes(conn),
                       query.params).fetchone()
    assert row is not None
    return row[0][0]["Plan"]  # type: ignore[no-any-return]


def scans(node: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """(node type, relation, index) of every scan in the plan."""
    found = []
    if "Scan" in node["Node Type"]:
        found.append((node["Node Type"], node.get("Relation Name"), node.get("Index Name")))
    for child in node.get("Plans", []):
        found += scans(child)
    return found


LIST_QUERIES: dict[str, tuple[Query[Any], set[str]]] = {
    "newest jobs": (db.job_page(Q, JobFilter(), before=None, limit=51, scan=51),
                    {"jobs_pkey"}),
    "older jobs": (db.job_page(Q, JobFilter(), before=JOBS // 2, limit=51, scan=51),
                   {"jobs_pkey"}),
    # (dead jobs are 3% of the mix, spread evenly: walking the primary key back finds a
    # page of them as soon; the deep page and the rarer states need jobs_rare_state_idx.
    # Running jobs have jobs_running_idx; the common states need no index of their own.)
    "dead jobs": (db.job_page(Q, JobFilter(state="dead"), before=None, limit=51, scan=51),
                  {"jobs_rare_state_idx", "jobs_pkey"}),
    "cancelled jobs, deep": (db.job_page(Q, JobFilter(state="cancelled"), before=JOBS // 10,
                                         limit=51, scan=51), {"jobs_rare_state_idx"}),
    "running jobs": (db.job_page(Q, JobFilter(state="running"), before=None, limit=51,
                                 scan=51), {"jobs_running_idx", "jobs_pkey"}),
    "a rare queue": (db.job_page(Q, JobFilter(queue="rare"), before=None, limit=51,
                                 scan=SCAN), {"jobs_pkey"}),
    "dead jobs of a task with an args value": (
        db.job_page(Q, JobFilter(state="dead", task="task_3", args={"newsletter_id": 7}),
                    before=None, limit=51, scan=SCAN), {"jobs_rare_state_idx"}),
    "a batch's jobs": (db.job_page(Q, JobFilter(batch=3), before=None, limit=51, scan=51),
                       {"jobs_batch_idx"}),
    "bulk count": (db.count_matching(Q, JobFilter(state="dead", queue="mail"), upto=None,
                                     cap=10_001), {"jobs_rare_state_idx"}),
    "bulk ids": (db.ids_matching(Q, JobFilter(state="dead", queue="mail"), upto=JOBS,
                                 limit=500), {"jobs_rare_state_idx"}),
    "queue overview": (db.queue_overview(Q), {"jobs_claim_idx", "jobs_rare_state_idx"}),
    "throughput": (db.throughput(Q), {"jobs_finished_state_idx"}),
    "batches": (db.batch_page(Q, parent=None, before=None, limit=51), {"batches_pkey"}),
    "child batches": (db.batch_page(Q, parent=1, before=None, limit=51),
                      {"batches_parent_idx"}),
    "workers and their jobs": (db.worker_page(Q, 20), {"jobs_running_idx"}),
}


@pytest.mark.parametrize("name", list(LIST_QUERIES))
def test_list_query_reads_through_an_index(big: psycopg.Connection[Any], name: str) -> None:
    """No sequential scan of jobs or batches (the small tables: queues, workers, may be
    read whole), and at least one of the indexes named."""
    query, indexes = LIST_QUERIES[name]
    found = scans(plan(big, query))
    whole = [s for s in found if s[0] == "Seq Scan" and s[1] in ("jobs", "batches")]
    assert not whole, f"{name}: {json.dumps(found)}"
    used = {index for _, _, index in found if index}
    assert indexes & used, f"{name}: expected one of {indexes}, the plan uses {found}"
