"""Named failpoints for fault-injection tests: ``PGJOBS_FAILPOINTS=name=action[,...]``.

Actions: ``exit`` (the process dies at once, like SIGKILL: no cleanup, no flush),
``raise`` (a RuntimeError at that point), ``sleep:SECONDS``. A failpoint may fire only
once per process with ``name=action@once``. When the variable is unset, ``hit`` is one
dict lookup on an empty dict.
"""

from __future__ import annotations

import os
import time

_points: dict[str, str] = {}
_fired: set[str] = set()


def configure(spec: str | None) -> None:
    _points.clear()
    _fired.clear()
    for item in filter(None, (spec or "").split(",")):
        name, _, action = item.partition("=")
        _points[name.strip()] = action.strip() or "exit"


def hit(name: str) -> None:
    if not _points:
        return
    action = _points.get(name)
    if action is None:
        return
    if action.endswith("@once"):
        if name in _fired:
            return
        _fired.add(name)
        action = action.removesuffix("@once")
    if action == "exit":
        os._exit(137)
    if action == "raise":
        raise RuntimeError(f"failpoint {name}")
    if action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))


configure(os.environ.get("PGJOBS_FAILPOINTS"))
