"""What the worker needs of an application: the small Protocol it is written against.

``pgjobs.App`` satisfies it; the worker never imports the client. Anything else that
offers these attributes (a test double, another front end) can be run by a worker too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..core.hooks import Hooks
from ..core.limits import KeyLimit
from ..core.options import JobOptions
from ..core.schedule import Schedule
from ..db.queries import Queries


class Handler(Protocol):
    """A registered task, as the worker runs it."""

    @property
    def name(self) -> str: ...

    @property
    def fn(self) -> Callable[..., Any] | None: ...

    @property
    def opts(self) -> JobOptions: ...

    @property
    def timeout(self) -> float | None: ...

    @property
    def retry_backoff(self) -> Callable[[int], float] | None: ...

    @property
    def limit(self) -> KeyLimit | None: ...

    @property
    def is_async(self) -> bool: ...


class Settings(Protocol):
    """The app settings a worker reads."""

    @property
    def schema(self) -> str: ...

    @property
    def prepare_threshold(self) -> int | None: ...

    @property
    def channel(self) -> str: ...

    @property
    def periodic_owner(self) -> str: ...


class Host(Protocol):
    """An application the worker can run: its database, statements, tasks, schedules,
    and the middleware, listeners and probes registered on it (``hooks``)."""

    @property
    def config(self) -> Settings: ...

    @property
    def dsn(self) -> str: ...

    @property
    def listen_dsn(self) -> str | None: ...

    @property
    def queries(self) -> Queries: ...

    @property
    def tasks(self) -> Mapping[str, Handler]: ...

    @property
    def schedules(self) -> Mapping[str, Schedule]: ...

    @property
    def hooks(self) -> Hooks: ...
