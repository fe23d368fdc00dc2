"""Command-line options generated from a settings dataclass: each field once, with its
default and its docstring, becomes ``--field-name`` with a ``PGJOBS_FIELD_NAME`` twin.

    @options(WorkerConfig)
    def worker(..., concurrency: int, lease: float, ...): ...

The option's type follows the field's annotation (bool: a flag, ``--x/--no-x`` when it
defaults to true; int, float, str; a float that may also be a timedelta: a duration such
as ``90s``, ``15m``, ``12h`` or ``7d``). Values are checked by the dataclass itself when
the command builds it (:func:`build`), so each rule is written once too.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, Field, fields
from datetime import timedelta
from functools import cache
from typing import Any, TypeVar

import click

from ..core.errors import InvalidOption

FC = TypeVar("FC", bound=Callable[..., Any])
T = TypeVar("T")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal right after it in the class body)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, following in zip(body, [*body[1:], None], strict=True):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            # one paragraph; RST's ``literal`` marks read as plain words in --help
            text = " ".join(following.value.value.split())
            docs[node.target.id] = text.replace("``", "")
    return docs


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def envvar(name: str) -> str:
    return "PGJOBS_" + name.upper()


class Duration(click.ParamType[float | None]):
    """Seconds, or a number with a unit (``90s``, ``15m``, ``12h``, ``7d``); ``never``
    (or ``0``) is None: keep forever."""

    name = "duration"
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float | None:
        if value is None or isinstance(value, float):
            return value
        text = str(value).strip().lower()
        if text in ("never", "0"):
            return None
        unit = text[-1:]
        number, factor = (text[:-1], self.units.get(unit)) if unit.isalpha() else (text, 1)
        try:
            seconds = float(number) * factor if factor else -1.0
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            self.fail(f"{value!r} is not a duration: give seconds or a number with s, m, h "
                      "or d (for example 12h or 7d), or 'never' to keep forever", param, ctx)
        return seconds

    @classmethod
    def show(cls, seconds: float | None) -> str:
        """``604800.0`` as ``7d``, ``None`` as ``never``."""
        if seconds is None:
            return "never"
        for unit, factor in sorted(cls.units.items(), key=lambda u: -u[1]):
            if seconds % factor == 0:
                return f"{int(seconds // factor)}{unit}"
        return f"{seconds:g}s"


def _option(cls: type, item: Field[Any], hints: dict[str, Any], help_text: str,
            env_prefix: str) -> Callable[[FC], FC]:
    name, hint = item.name, hints[item.name]
    default = item.default if item.default is not MISSING else None
    args = set(typing.get_args(hint))
    common: dict[str, Any] = {"envvar": envvar(env_prefix + name), "show_envvar": True,
                              "help": help_text}
    if hint is bool:
        if default:
            return click.option(f"{flag(name)}/--no-{name.replace('_', '-')}", name,
                                default=True, show_default=True, **common)
        return click.option(flag(name), name, is_flag=True, default=False, **common)
    if typing.get_origin(hint) is typing.Literal:
        return click.option(flag(name), name, type=click.Choice(typing.get_args(hint)),
                            default=default, show_default=True, **common)
    if timedelta in args:
        return click.option(flag(name), name, type=Duration(), default=Duration.show(default),
                            show_default=True, **common)
    if tuple in {typing.get_origin(a) for a in args}:  # a comma-separated list
        return click.option(flag(name), name, default=None, metavar="A,B", **common)
    kind = next((k for k in (int, float, str) if hint is k or k in args), str)
    return click.option(flag(name), name, type=kind, default=default,
                        show_default=default is not None, **common)


def options(cls: type, names: Iterable[str] | None = None, env_prefix: str = ""
            ) -> Callable[[FC], FC]:
    """Decorate a click command with one option per field of ``cls`` (or of ``names``);
    ``env_prefix`` goes between ``PGJOBS_`` and the field's name in the environment twin
    (``exporter_``: ``--port`` is ``PGJOBS_EXPORTER_PORT``, not a generic ``PGJOBS_PORT``)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    chosen = [f for f in fields(cls) if names is None or f.name in set(names)]

    def decorate(command: FC) -> FC:
        for item in reversed(chosen):
            command = _option(cls, item, hints, docs.get(item.name, ""), env_prefix)(command)
        return command

    return decorate


def build(cls: Callable[..., T], values: dict[str, Any]) -> T:
    """``cls(**values)``; a value the dataclass refuses as out of range is a usage error
    naming its flag (exit status 2). A bad name (``InvalidName``) stays pgjobs' own error,
    one line and exit status 1, as everywhere in the command line."""
    try:
        return cls(**values)
    except InvalidOption as exc:
        field = max((name for name in values if str(exc).startswith(name)), key=len,
                    default=None)
        raise click.BadParameter(str(exc), param_hint=flag(field) if field else None) from None
