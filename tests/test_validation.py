"""Input validation: every bad name, argument and option is refused with a typed error
before any SQL is sent. Most tests need no database; the property tests round-trip
accepted input through the jobs table."""

from __future__ import annotations

import decimal
import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgjobs
from pgjobs import (
    ArgsTooLarge,
    ConfigurationError,
    InvalidArgs,
    InvalidName,
    InvalidOption,
    PgJobsError,
    ValidationError,
)

Conn = psycopg.Connection[Any]


def make_app(**settings: Any) -> pgjobs.App:
    """An app that never connects (no DSN): validation must not need one."""
    return pgjobs.App(dsn=None, **settings)


def any_task(app: pgjobs.App, name: str = "t") -> pgjobs.Task[..., Any]:
    @app.job(name=name)
    def handler(**kwargs: Any) -> None: ...

    return handler


@pytest.fixture(autouse=True)
def _no_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    # A test that wrongly reached the database would fail with MissingDatabaseURL, not
    # with the typed error it expects.
    monkeypatch.delenv("PGJOBS_DATABASE_URL", raising=False)


# -- the error hierarchy ---------------------------------------------------------------


ERROR_NAMES = [
    "ConfigurationError", "MissingDatabaseURL", "ValidationError", "InvalidName", "InvalidArgs",
    "ArgsTooLarge", "InvalidOption", "SchemaNotReady", "UnknownTask", "LeaseLost",
]


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_every_error_derives_from_pgjobs_error(name: str) -> None:
    assert name in pgjobs.__all__
    error = getattr(pgjobs, name)
    assert issubclass(error, PgJobsError)
    assert error.__doc__, f"{name} needs a docstring"


@pytest.mark.parametrize("error", [InvalidName, InvalidArgs, ArgsTooLarge, InvalidOption])
def test_validation_errors_are_value_errors(error: type[Exception]) -> None:
    assert issubclass(error, ValidationError)
    assert issubclass(error, ValueError)
    assert issubclass(error, PgJobsError)


def test_configuration_errors() -> None:
    assert issubclass(pgjobs.MissingDatabaseURL, ConfigurationError)
    assert not issubclass(ConfigurationError, ValueError)


# -- names -----------------------------------------------------------------------------

BAD_COMMON = [
    "", " ", "a b", "a'b", 'a"b', "$1", ";--", "a;--", "a\x00b", "a\nb", "a\n", "\ta",
    "été", "очередь", "队列", "a\u200bb", "\uff41", "a/b", "a*b", "a%s", "%(x)s", "{schema}",
    "a\\b", None, 1, b"bytes",
]
BAD_QUEUES = [*BAD_COMMON, "a" * 64, "_a", "-a", ".a", ":a", "a<b>"]
GOOD_QUEUES = ["a", "0", "a" * 63, "mail", "mail.high", "eu-west:2", "A_b.c:d-e", "9lives"]
BAD_TASKS = [*BAD_COMMON, "a" * 256, "1abc", "-a", ".a", "<a>"]
GOOD_TASKS = ["a", "_", "a" * 255, "mail.send", "pkg.mod.<locals>.fn", "_private", "A:b-c"]
BAD_SCHEMAS = [*BAD_COMMON, "a" * 51, "1abc", "a-b", "a.b", "a:b", "pg_catalog", "pg_jobs"]
GOOD_SCHEMAS = ["a", "_", "a" * 50, "jobs_x", "Jobs", "PG_jobs", "pgjobs2"]


@pytest.mark.parametrize("queue", BAD_QUEUES, ids=repr)
def test_bad_queue_names(queue: Any) -> None:
    app = make_app()
    task = any_task(app)
    with pytest.raises(InvalidName, match="queue name"):
        task.options(queue=queue)
    with pytest.raises(InvalidName):
        app.job(name="other", queue=queue)(lambda: None)
    with pytest.raises(InvalidName):
        app.task("ref", queue=queue)
    assert "other" not in app.tasks


@pytest.mark.parametrize("queue", GOOD_QUEUES)
def test_good_queue_names(queue: str) -> None:
    assert any_task(make_app()).options(queue=queue).opts.queue == queue


@pytest.mark.parametrize("name", BAD_TASKS, ids=repr)
def test_bad_task_names(name: Any) -> None:
    app = make_app()
    if name not in ("", None):  # (name=None means the default name; "" see below)
        with pytest.raises(InvalidName, match="task name"):
            app.job(name=name)(lambda: None)
    with pytest.raises(InvalidName, match="task name"):
        app.task(name)
    # By name, without a connection: refused before the pool (and the DSN) is needed.
    with pytest.raises(InvalidName):
        app.enqueue(None, name, x=1)
    assert app.tasks == {}


def test_an_explicit_empty_task_name_is_refused() -> None:
    with pytest.raises(InvalidName):
        make_app().job(name="")(lambda: None)


@pytest.mark.parametrize("name", GOOD_TASKS)
def test_good_task_names(name: str) -> None:
    app = make_app()
    assert app.job(name=name)(lambda: None).name == name
    assert app.task(name) is app.tasks[name]


def test_default_task_name_is_module_and_qualname() -> None:
    app = make_app()

    @app.job
    def nested() -> None: ...

    qualname = "test_default_task_name_is_module_and_qualname.<locals>.nested"
    assert nested.name == f"{__name__}.{qualname}"
    assert app.get_task(nested.name) is nested


@pytest.mark.parametrize("schema", BAD_SCHEMAS, ids=repr)
def test_bad_schema_names(schema: Any) -> None:
    with pytest.raises(InvalidName, match="schema name"):
        pgjobs.App(schema=schema)
    with pytest.raises(InvalidName):
        pgjobs.Config(schema=schema)


@pytest.mark.parametrize("schema", GOOD_SCHEMAS)
def test_good_schema_names(schema: str) -> None:
    app = pgjobs.App(schema=schema)
    assert app.config.schema == schema
    assert app.config.channel == f"pgjobs_{schema}"


# -- arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rows",
    [[["a", 1]], ["x=1"], [None], [[("a", 1)]], [{"a": 1}, 42]],
    ids=["list", "str", "None", "pairs", "second-row"],
)
def test_args_must_be_mappings(rows: list[Any]) -> None:
    task = any_task(make_app())
    with pytest.raises(InvalidArgs, match="mapping"):
        task.enqueue_many(None, rows)


class Unserialisable:
    pass


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x": {1: "a"}}, "non-string key"),
        ({"x": {None: "a"}}, "non-string key"),
        ({"x": [{"ok": {(1, 2): 3}}]}, "non-string key"),
        ({"x": math.nan}, "JSON"),
        ({"x": math.inf}, "float"),
        ({"x": [1.0, -math.inf]}, "float"),
        ({"x": {"y": [math.nan]}}, "JSON"),
        ({"x": "a\x00b"}, "NUL"),
        ({"x": ["ok", "\x00"]}, "NUL"),
        ({"x": {"y": {"z": "\x00"}}}, "NUL"),
        ({"x": {"a\x00": 1}}, "NUL"),
        ({"x\x00": 1}, "NUL"),
        ({"x": "\ud800"}, "surrogate"),
        ({"x": ["a", "b\udfff"]}, "surrogate"),
        ({"x": {"\udc80": 1}}, "surrogate"),
        ({"\ud83d": 1}, "surrogate"),
        ({"x": object()}, "JSON-serialisable"),
        ({"x": Unserialisable()}, "JSON-serialisable"),
        ({"x": datetime.now(UTC)}, "JSON-serialisable"),
        ({"x": {1, 2}}, "JSON-serialisable"),
        ({"x": b"bytes"}, "JSON-serialisable"),
        ({"x": decimal.Decimal("1.5")}, "JSON-serialisable"),
        ({"x": [[{"y": object()}]]}, "JSON-serialisable"),
        ({"x": 10**5000}, "JSON-serialisable"),
        ({"x": 1e16}, "float"),
        ({"x": [-1.5e300]}, "float"),
    ],
)
def test_bad_args(kwargs: dict[str, Any], message: str) -> None:
    task = any_task(make_app())
    with pytest.raises(InvalidArgs, match=message):
        task.enqueue(None, **kwargs)
    with pytest.raises(InvalidArgs, match=message):
        task.enqueue_many(None, [{"fine": 1}, kwargs])


@pytest.mark.parametrize("kwargs", [
    {"x": "\\u0000"}, {"x": ["\\\\u0000"]}, {"x": "caf\u00e9 \U0001f600"}, {"x": 9.99e15},
    {"x": -1e-300}, {"x": [[[]]], "y": {}}, {"x": (1, "two")},
])
def test_args_that_only_look_suspect_are_stored(kwargs: dict[str, Any]) -> None:
    """Text that looks like an escaped NUL, non-ASCII text, floats just under the limit."""
    task = any_task(make_app())
    text = task.encoder.encode(kwargs)
    assert json.loads(text) == json.loads(json.dumps(kwargs))


def test_reference_cycles_are_refused() -> None:
    task = any_task(make_app())
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(InvalidArgs, match=r"cycle|nested deeper"):
        task.enqueue(None, x=cycle)
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(InvalidArgs, match=r"cycle|nested deeper"):
        task.enqueue(None, x=[loop])


def test_non_string_top_level_keys_are_refused() -> None:
    task = any_task(make_app())
    with pytest.raises(InvalidArgs, match="non-string key"):
        task.enqueue_many(None, [{1: "a"}])


def test_kwargs_are_checked_against_the_handler_signature() -> None:
    app = make_app()

    @app.job(name="sig")
    def handler(a: int, b: int = 2, *, c: int, d: int = 4) -> None: ...

    with pytest.raises(InvalidArgs, match=r"missing argument\(s\): a, c"):
        handler.enqueue(None)
    with pytest.raises(InvalidArgs, match=r"missing argument\(s\): c"):
        handler.enqueue(None, a=1, b=2)
    with pytest.raises(InvalidArgs, match=r"unexpected argument\(s\): e, f"):
        handler.enqueue(None, a=1, c=3, e=5, f=6)
    with pytest.raises(InvalidArgs, match="unexpected"):
        handler.enqueue_many(None, [{"a": 1, "c": 2}, {"a": 1, "c": 2, "z": 0}])
    # Enqueue by name checks the registered handler's signature too.
    with pytest.raises(InvalidArgs, match="missing"):
        app.enqueue(None, "sig", a=1)
    # The same checks with options applied, and for an async handler.
    with pytest.raises(InvalidArgs, match="missing"):
        handler.options(queue="q").enqueue(None, a=1)

    @app.job(name="async_sig")
    async def async_handler(x: int) -> None: ...

    with pytest.raises(InvalidArgs, match="unexpected"):
        async_handler.enqueue(None, x=1, y=2)


def test_var_keyword_handlers_accept_any_names_but_still_require_their_params() -> None:
    app = make_app()

    @app.job(name="kw")
    def handler(a: int, **rest: Any) -> None: ...

    assert handler.encoder.allowed is None
    with pytest.raises(InvalidArgs, match="missing"):
        handler.enqueue(None, b=1)


def test_references_without_a_handler_take_any_kwargs() -> None:
    app = make_app()
    ref = app.task("elsewhere.defined")
    assert ref.fn is None
    assert ref.encoder.allowed is None and ref.encoder.required == frozenset()
    with pytest.raises(pgjobs.UnknownTask):
        ref()


@pytest.mark.parametrize(
    "source",
    [
        "def h(a, /): ...",
        "def h(a, /, b=1): ...",
        "def h(*args): ...",
        "def h(x, *args): ...",
        "def h(*args, **kwargs): ...",
        "async def h(a, /): ...",
    ],
)
def test_handlers_that_need_positional_arguments_are_refused(source: str) -> None:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    app = make_app()
    with pytest.raises(ConfigurationError, match="keyword arguments only"):
        app.job(name="h")(namespace["h"])
    assert "h" not in app.tasks


def test_positional_only_params_with_defaults_are_allowed() -> None:
    app = make_app()

    @app.job(name="h")
    def handler(a: int = 1, /, *, b: int) -> None: ...

    assert handler.encoder.required == frozenset({"b"})
    with pytest.raises(InvalidArgs, match="unexpected"):
        handler.enqueue(None, a=1, b=2)


def test_duplicate_task_names_are_refused() -> None:
    app = make_app()
    first = app.job(name="same")(lambda: None)
    with pytest.raises(ConfigurationError, match=r"registered twice.*name="):
        app.job(name="same")(lambda: None)
    assert app.tasks["same"] is first
    # Another app has its own registry.
    assert make_app().job(name="same")(lambda: None).name == "same"


# -- the size limit ----------------------------------------------------------------------


def test_args_too_large_at_the_configured_boundary() -> None:
    # {"s":"..."} is 8 bytes plus the string's UTF-8 bytes; "é" is 2 bytes.
    app = make_app(max_args_bytes=100)
    task = any_task(app)
    assert len(task.encoder.encode({"s": "x" * 92}).encode()) == 100
    assert len(task.encoder.encode({"s": "é" * 46}).encode()) == 100
    with pytest.raises(ArgsTooLarge, match="101 bytes, over the limit of 100"):
        task.enqueue(None, s="x" * 93)
    with pytest.raises(ArgsTooLarge, match="101 bytes"):
        task.enqueue(None, s="é" * 46 + "x")  # bytes count, not characters
    with pytest.raises(ArgsTooLarge):
        task.enqueue_many(None, [{"s": "x"}, {"s": "x" * 93}])
    with pytest.raises(ArgsTooLarge):
        app.enqueue(None, "t", s="x" * 93)


def test_args_size_limit_can_be_disabled() -> None:
    task = any_task(make_app(max_args_bytes=None))
    assert len(task.encoder.encode({"s": "x" * 2_000_000})) == 2_000_008
    default = any_task(make_app())
    with pytest.raises(ArgsTooLarge):
        default.enqueue(None, s="x" * 1_048_569)


@pytest.mark.parametrize("settings", [{"max_args_bytes": 1}, {"max_args_bytes": 0},
                                      {"pool_size": 0}])
def test_bad_app_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(InvalidOption):
        make_app(**settings)


def test_exact_size_limit_round_trips(conn: Conn) -> None:
    task = any_task(make_app(max_args_bytes=100))
    job = task.enqueue(conn, s="é" * 46)
    row = conn.execute("SELECT args FROM pgjobs.jobs WHERE id = %s", (job.id,)).fetchone()
    assert row == ({"s": "é" * 46},)


# -- options ---------------------------------------------------------------------------

AWARE = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "options",
    [
        {"priority": 32768},
        {"priority": -32769},
        {"priority": 1.5},
        {"priority": "1"},
        {"priority": True},
        {"priority": None},
        {"max_attempts": 0},
        {"max_attempts": -1},
        {"max_attempts": 2**31},
        {"max_attempts": 2.0},
        {"max_attempts": True},
        {"run_at": datetime(2030, 1, 1)},
        {"run_at": "2030-01-01T00:00:00Z"},
        {"run_at": 1_900_000_000},
        {"run_at": AWARE, "run_in": timedelta(seconds=1)},
        {"run_in": 5},
        {"run_in": "5 minutes"},
        {"expires_at": datetime(2030, 1, 1)},
        {"expires_at": AWARE, "expires_in": timedelta(seconds=1)},
        {"expires_in": timedelta(0)},
        {"expires_in": timedelta(seconds=-1)},
        {"expires_in": 60},
        {"queue": ""},
        {"unknown": 1},
        {"delay": timedelta(seconds=1)},
    ],
    ids=repr,
)
def test_bad_options(options: dict[str, Any]) -> None:
    app = make_app()
    task = any_task(app)
    before = task.opts
    with pytest.raises(ValidationError) as info:
        task.options(**options)
    expected = InvalidName if "queue" in options else InvalidOption
    assert type(info.value) is expected
    assert task.opts is before
    with pytest.raises(expected):
        app.job(name="other", **options)(lambda: None)
    with pytest.raises(expected):
        app.task("reference", **options)
    assert "other" not in app.tasks


def test_unknown_option_message_lists_the_known_ones() -> None:
    with pytest.raises(InvalidOption, match=r"unknown option\(s\) bogus; known: .*max_attempts"):
        any_task(make_app()).options(bogus=1)


@pytest.mark.parametrize(
    "options",
    [
        {"priority": -32768},
        {"priority": 32767},
        {"max_attempts": 1},
        {"max_attempts": 2**31 - 1},
        {"run_at": datetime(2030, 1, 1, tzinfo=UTC)},
        {"run_in": timedelta(0)},
        {"expires_in": timedelta(microseconds=1)},
    ],
    ids=repr,
)
def test_boundary_options_are_accepted(options: dict[str, Any]) -> None:
    opts = any_task(make_app()).options(**options).opts
    for name, value in options.items():
        assert getattr(opts, name) == value


def test_one_of_an_exclusive_pair_replaces_the_other() -> None:
    app = make_app()

    @app.job(name="timed", run_at=AWARE, expires_in=timedelta(hours=1))
    def timed() -> None: ...

    later = timed.options(run_in=timedelta(minutes=5), expires_at=AWARE)
    assert (later.opts.run_at, later.opts.run_in) == (None, timedelta(minutes=5))
    assert (later.opts.expires_at, later.opts.expires_in) == (AWARE, None)
    assert (timed.opts.run_at, timed.opts.expires_in) == (AWARE, timedelta(hours=1))


# -- refused before any SQL --------------------------------------------------------------


def test_refusals_leave_the_callers_connection_untouched(app: pgjobs.App, conn: Conn) -> None:
    task = any_task(app)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with pytest.raises(InvalidArgs):
        task.enqueue(conn, x=math.nan)
    with pytest.raises(InvalidArgs):
        task.enqueue_many(conn, [{"x": 1}, {"x": "\x00"}])
    with pytest.raises(ArgsTooLarge):
        task.enqueue(conn, x="x" * 2_000_000)
    with pytest.raises(InvalidName):
        app.enqueue(conn, "no spaces allowed")
    # Nothing was sent: not even the BEGIN that the first statement would have opened.
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_missing_database_url_names_the_env_var_and_pgjobs_dev() -> None:
    app = make_app()
    task = any_task(app)
    with pytest.raises(pgjobs.MissingDatabaseURL) as info:
        task.enqueue(x=1)
    message = str(info.value)
    assert "PGJOBS_DATABASE_URL" in message
    assert "`pgjobs dev start`" in message
    with pytest.raises(pgjobs.MissingDatabaseURL):
        app.connect()


def test_database_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGJOBS_DATABASE_URL", "postgresql://example/db")
    assert make_app().dsn == "postgresql://example/db"
    assert pgjobs.App(dsn="postgresql://explicit/db").dsn == "postgresql://explicit/db"


# -- properties, against the database ----------------------------------------------------

SPECIAL_TEXT = st.sampled_from(
    ["'", '"', "''", "$1", "$$", ";--", "'; DROP TABLE pgjobs.jobs; --", "%s", "%(x)s",
     "{schema}", "\\", "\\u0000", "\x00", "\ud800", "é", "😀", "\u2028", "\ufeff", ""]
)
TEXT = st.one_of(st.text(), SPECIAL_TEXT)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**60), max_value=10**60),
    st.floats(),
    TEXT,
)
JSONISH = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(TEXT, children, max_size=4)
    ),
    max_leaves=12,
)
PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same JSON type at every level (1.0 and 1 are not the same)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


@PROPERTY_SETTINGS
@given(kwargs=st.dictionaries(TEXT, JSONISH, max_size=5))
def test_args_are_refused_or_round_trip_exactly(
    app: pgjobs.App, conn: Conn, kwargs: dict[str, Any]
) -> None:
    task = app.tasks.get("roundtrip") or any_task(app, "roundtrip")
    with conn.transaction(force_rollback=True):
        try:
            job = task.enqueue(conn, **kwargs)
        except ValidationError:
            return
        row = conn.execute("SELECT args FROM pgjobs.jobs WHERE id = %s", (job.id,)).fetchone()
    assert row is not None
    assert same(row[0], kwargs), (row[0], kwargs)


# The documented rule: 1-63 characters from ASCII letters, digits, '_', '.', ':' and '-',
# starting with a letter or digit.
DOCUMENTED_QUEUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}", re.ASCII)


@PROPERTY_SETTINGS
@given(
    queue=st.one_of(
        st.text(max_size=70),
        st.from_regex(DOCUMENTED_QUEUE, fullmatch=True),
        st.from_regex(r"[A-Za-z0-9_.:\- ;'\"$]{0,70}", fullmatch=True),
    )
)
def test_queue_names_are_refused_or_round_trip_exactly(
    app: pgjobs.App, conn: Conn, queue: str
) -> None:
    task = app.tasks.get("queues") or any_task(app, "queues")
    with conn.transaction(force_rollback=True):
        try:
            job = task.options(queue=queue).enqueue(conn)
        except InvalidName:
            assert DOCUMENTED_QUEUE.fullmatch(queue) is None, queue
            return
        row = conn.execute("SELECT queue FROM pgjobs.jobs WHERE id = %s", (job.id,)).fetchone()
    assert DOCUMENTED_QUEUE.fullmatch(queue) is not None, queue
    assert row == (queue,)


@pytest.mark.parametrize("schema", ["public", "PUBLIC"])
def test_the_public_schema_is_refused(schema: str) -> None:
    with pytest.raises(InvalidName, match="schema of its own"):
        pgjobs.App(schema=schema)
