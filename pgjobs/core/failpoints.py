"""Named failpoints for fault-injection tests: ``PGJOBS_FAILPOINTS=name=action[,...]``.

Actions: ``exit`` (the process dies at once, like SIGKILL: no cleanup, no flush),
``raise`` (a RuntimeError at that point), ``sleep:SECONDS``. Suffixes choose the hit that
fires: ``@once`` (the first hit in this process only) or ``@N`` (the N-th hit only).
When the variable is unset, ``hit`` is one test of an empty dict.

Points, in the order a job meets them:

    before_claim            the claim statement is about to be sent
    after_claim_commit      claimed jobs came back (the claim is committed)
    mid_handler             in current_job().complete(conn): the handler's effects are
                            written, its transaction is not committed
    after_handler           the handler returned (its own transaction, if any,
                            committed); the outcome is not yet buffered
    before_complete_commit  a flush of outcomes is about to be written
    after_complete_commit   a flush of outcomes was written
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

_points: dict[str, str] = {}
_hits: Counter[str] = Counter()
_lock = threading.Lock()


def configure(spec: str | None) -> None:
    _points.clear()
    _hits.clear()
    for item in filter(None, (spec or "").split(",")):
        name, _, action = item.partition("=")
        _points[name.strip()] = action.strip() or "exit"


def hit(name: str) -> None:
    if not _points:
        return
    spec = _points.get(name)
    if spec is None:
        return
    action, _, when = spec.partition("@")
    if when:
        with _lock:
            _hits[name] += 1
            count = _hits[name]
        if count != (1 if when == "once" else int(when)):
            return
    if action == "exit":
        os._exit(137)
    if action == "raise":
        raise RuntimeError(f"failpoint {name}")
    if action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))


configure(os.environ.get("PGJOBS_FAILPOINTS"))
