"""Job arguments as JSON: checked and encoded at enqueue (``ArgsEncoder``), decoded
leniently by workers (``lenient_json_loads``), and results encoded for ``jobs.result``.

The rules refuse what JSON would silently change or PostgreSQL would refuse (NUL
characters, lone surrogates, huge floats, cycles, deep nesting) with ``InvalidArgs``
before any SQL is sent, so what a handler receives is exactly what was enqueued.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ArgsTooLarge, InvalidArgs

# One encoder for every enqueue: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _fast_encoder() -> Callable[[Any], str] | None:
    """The C encoder behind ``_ENCODER``, made once, for values ``_plain`` vouched for:
    without the cycle check (``_plain`` bounds the depth) and the per-call setup of
    ``JSONEncoder.encode``, it takes 40-60% less time. None when this Python has no C
    accelerator or it does not behave as expected; ``_ENCODER`` is used then."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        chunks = make(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",",
                      False, False, False)

        def encode(value: Any) -> str:
            return "".join(chunks(value, 0))

        sample = {"a": [1, 2.5, None, True, "\u00e9\x00"], "b": {}}
        if encode(sample) != _ENCODER.encode(sample):
            return None
    except Exception:  # an internal API that changed: use the public one
        return None
    return encode


_FAST_ENCODE = _fast_encoder()


@dataclass(frozen=True, slots=True)
class ArgsEncoder:
    """Turns keyword arguments into the JSON text stored in ``jobs.args``."""

    max_bytes: int | None
    allowed: frozenset[str] | None = None
    """Parameter names the handler accepts (None: any, it takes **kwargs)."""
    required: frozenset[str] = field(default_factory=frozenset)
    task: str = ""

    def encode(self, kwargs: Mapping[str, Any]) -> str:
        if type(kwargs) is not dict and not isinstance(kwargs, Mapping):
            raise InvalidArgs(f"job args must be a mapping of keyword arguments, not {kwargs!r}")
        self._check_signature(kwargs)
        # The common case, plain dicts/lists/scalars, is walked once without building the
        # paths of error messages; anything else (or anything suspect in the encoded text)
        # takes the full check, which names the offending value.
        fast = _FAST_ENCODE if _FAST_ENCODE is not None and _plain(kwargs, 0) else None
        if fast is None:
            self._check(kwargs)
        try:
            text = _ENCODER.encode(kwargs) if fast is None else fast(kwargs)
        except (TypeError, ValueError) as exc:
            raise InvalidArgs(
                f"job args for {self.task or 'task'} are not JSON-serialisable ({exc}); pass "
                "plain str/int/float/bool/None, lists and dicts, e.g. ids rather than objects"
            ) from None
        if fast is not None and "\\u0000" in text:  # maybe a NUL in a string
            self._check(kwargs)
        if text.isascii():
            size = len(text)
        else:
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError:  # a lone surrogate somewhere
                self._check(kwargs)
                raise
        if self.max_bytes is not None and size > self.max_bytes:
            raise ArgsTooLarge(
                f"job args for {self.task or 'task'} are {size} bytes, over the limit of "
                f"{self.max_bytes}: store large data in your own table and pass its id "
                "(or raise App(max_args_bytes=...))"
            )
        return text

    def _check(self, kwargs: Mapping[str, Any]) -> None:
        try:
            _check_json_value(kwargs, "args")
        except RecursionError:
            raise InvalidArgs(
                f"job args for {self.task or 'task'} contain a reference cycle or are nested "
                "too deeply to encode as JSON"
            ) from None

    def _check_signature(self, kwargs: Mapping[str, Any]) -> None:
        keys = kwargs.keys()
        if self.required and not self.required <= keys:
            missing = ", ".join(sorted(self.required - keys))
            raise InvalidArgs(f"{self.task}() is missing argument(s): {missing}")
        if self.allowed is not None and not self.allowed.issuperset(keys):
            extra = ", ".join(sorted(keys - self.allowed))
            raise InvalidArgs(f"{self.task}() got unexpected argument(s): {extra}")


MAX_FLOAT = 1e16
MAX_ARGS_DEPTH = 100
"""Deepest nesting of lists and objects in args. Deeper values would hit Python's
recursion limit when encoded here or decoded by a worker (a RecursionError, not a typed
error), and no real keyword arguments need them."""


def _plain(value: Any, depth: int) -> bool:
    """True when ``value`` is made only of dicts with str keys, lists, tuples, str, int,
    bool, None and floats under ``MAX_FLOAT``, at most ``MAX_ARGS_DEPTH`` deep: what
    ``_check_json_value`` would accept, except for NUL characters and lone surrogates in
    strings, which ``ArgsEncoder.encode`` finds in the encoded text. False says only
    "check fully", not "refuse"."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return bool(abs(value) < MAX_FLOAT)
    if depth >= MAX_ARGS_DEPTH:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _plain(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        return all(_plain(item, depth + 1) for item in value)
    return False


def _check_json_value(value: Any, path: str, depth: int = 0) -> None:
    """Reject what JSON would silently change or PostgreSQL would refuse."""
    if depth > MAX_ARGS_DEPTH:
        raise InvalidArgs(
            f"args are nested deeper than {MAX_ARGS_DEPTH} lists/objects (at {path[:200]}); "
            "flatten them or store the data in your own table and pass its id"
        )
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidArgs(f"{path} contains a NUL character, which jsonb cannot store")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgs(f"{path} is not valid Unicode (a lone surrogate)") from None
    elif isinstance(value, float):
        if abs(value) >= MAX_FLOAT:  # also catches infinities; NaN fails in json.dumps
            raise InvalidArgs(
                f"{path} is the float {value!r}: jsonb keeps numbers as decimals and would "
                "hand a float of 1e16 or more back as an int; pass an int or a string"
            )
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgs(
                    f"{path} has a non-string key {key!r}; JSON objects only have string keys"
                )
            _check_json_value(key, f"{path} key", depth + 1)
            _check_json_value(item, f"{path}[{key!r}]", depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json_value(item, f"{path}[{index}]", depth + 1)


MAX_PROGRESS_BYTES = 4_096
"""Largest encoded ``current_job().progress(...)`` object: it rides every heartbeat."""
MAX_CHECKPOINT_BYTES = 1_048_576
"""Largest encoded ``current_job().checkpoint(...)`` value."""


def encode_progress(value: Any) -> str:
    """A progress report as JSON: a fraction from 0 to 1, or a small JSON object."""
    if isinstance(value, bool) or not isinstance(value, int | float | Mapping):
        raise InvalidArgs(f"progress is a fraction from 0 to 1 or a JSON object (dict), "
                          f"not {value!r}")
    if not isinstance(value, Mapping):
        if not 0 <= value <= 1:  # NaN fails this too
            raise InvalidArgs(f"progress {value!r} is not a fraction from 0 to 1; pass a "
                              'dict such as {"done": 40, "total": 100} for counts')
        return repr(float(value))
    return _encode_report("progress", value, MAX_PROGRESS_BYTES)


def encode_checkpoint(value: Any) -> str:
    """A checkpoint as JSON (any JSON value)."""
    return _encode_report("checkpoint", value, MAX_CHECKPOINT_BYTES)


def _encode_report(what: str, value: Any, limit: int) -> str:
    _check_json_value(value, what)
    try:
        encoded = _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise InvalidArgs(f"{what} is not JSON: {exc}") from None
    if len(encoded.encode("utf-8")) > limit:
        raise ArgsTooLarge(f"{what} is {len(encoded.encode())} bytes of JSON, more than "
                           f"{limit}; keep it small (store bulk data in your own table)")
    return encoded


MAX_MESSAGE = 2_000
"""Longest error message (and repr of an unserialisable result) kept, in characters."""


def text(value: str) -> str:
    """``value`` with NUL characters escaped: jsonb cannot store NUL, and an error message,
    a traceback or a repr may contain one."""
    return value.replace("\x00", "\\x00")


def encode_result(value: Any) -> str | None:
    """The JSON stored in ``result``; what JSON or jsonb cannot hold is kept as a repr."""
    if value is None:
        return None
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
        encoded.encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        encoded = ""
    if not encoded or "\\u0000" in encoded:
        return json.dumps({"unserialisable_result": text(repr(value)[:MAX_MESSAGE])})
    return encoded


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Stands for a JSON value a worker could not decode (nested too deep for Python,
    a number too long for ``int()``): that job fails, the others in its claim run."""

    error: str


def lenient_json_loads(data: str | bytes) -> Any:
    """``json.loads`` for the worker's claim connection, where one bad row must not
    abort the claim (and the worker) for every job claimed with it."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        return Undecodable(f"{type(exc).__name__}: {exc}"[:500])
