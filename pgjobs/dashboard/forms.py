"""Request parameters to values: the job filter of the list and of bulk actions, cursors.

Bad input is refused with :class:`pgjobs.InvalidOption` (a 400 page that says what is
wrong); nothing a visitor types reaches SQL except as a parameter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..core.errors import InvalidOption
from ..core.names import check_queue, check_task_name
from ..db.dashboard import JobFilter

STATES = ("available", "running", "succeeded", "dead", "cancelled", "expired")
ACTIONS = ("retry", "cancel", "delete")
FILTER_FIELDS = ("state", "queue", "task", "batch", "key", "value")
MAX_TEXT = 1000


def text(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise InvalidOption(f"{name} must be text of at most {MAX_TEXT} characters")
    return value


def positive(params: Mapping[str, Any], name: str) -> int | None:
    """An optional positive integer (an id, a cursor)."""
    value = text(params, name)
    if value is None:
        return None
    if not value.isdigit() or not 0 < int(value) < 2**63:
        raise InvalidOption(f"{name} must be a positive whole number, not {value!r}")
    return int(value)


def job_filter(params: Mapping[str, Any]) -> JobFilter:
    """The filter of the jobs list: state, queue, task, batch, and an args key with an
    optional value (JSON, or else taken as a string: ``42`` is a number, ``"42"`` and
    ``abc`` are strings)."""
    state = text(params, "state")
    if state is not None and state not in STATES:
        raise InvalidOption(f"state must be one of {', '.join(STATES)}, not {state!r}")
    queue, task = text(params, "queue"), text(params, "task")
    key, value = text(params, "key"), params.get("value")
    if value and not key:
        raise InvalidOption("an args value needs its key: fill in both, or only the key")
    args: dict[str, Any] | None = None
    if key is not None and value:
        raw = text(params, "value")
        try:
            parsed = json.loads(raw or "")
        except ValueError:
            parsed = raw
        args = {key: parsed}
    return JobFilter(
        state=state,
        queue=None if queue is None else check_queue(queue),
        task=None if task is None else check_task_name(task),
        batch=positive(params, "batch"),
        args=args,
        key=key if args is None else None,
    )


def filter_params(params: Mapping[str, Any]) -> dict[str, str]:
    """The filter fields as given (for links and hidden fields that carry them on)."""
    return {name: params[name] for name in FILTER_FIELDS if params.get(name)}


def action(params: Mapping[str, Any]) -> str:
    name = text(params, "action")
    if name not in ACTIONS:
        raise InvalidOption(f"action must be one of {', '.join(ACTIONS)}, not {name!r}")
    return name
