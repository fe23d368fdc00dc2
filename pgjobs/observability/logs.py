"""Log lines for machines: ``--log-format json`` prints one JSON object per line.

    {"time": "2026-11-26T16:41:40.405Z", "level": "INFO", "logger": "pgjobs.worker",
     "message": "job id=2 task=shop.charge_card ...", "job_id": 2,
     "task": "shop.charge_card", "queue": "billing", "attempt": 1, "outcome": "retry",
     "duration_ms": 32.03, "worker_id": 1}

A job's line carries its fields (``record.job``, set by the worker); other pgjobs lines
carry ``worker_id`` where they know it; an exception comes as ``exception`` (its text).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        document: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job = getattr(record, "job", None)
        if isinstance(job, dict):
            document.update(job)
        worker_id = getattr(record, "worker_id", None)
        if worker_id is not None:
            document["worker_id"] = worker_id
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str, ensure_ascii=False)


def configure(level: str, form: Literal["text", "json"] = "text") -> None:
    """Print log lines at ``level`` and above to stderr, as text or as JSON."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
