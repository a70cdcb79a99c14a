"""Type checks of untrusted values (a config file, a checkpoint header) against the field
annotations of a config dataclass, before the dataclass is built from them: a wrong type is
one ConfigError naming the field (a ConfigTypeError, so also the TypeError Python's own
functions raise for an argument of the wrong type), never an error from deep inside."""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any

from vitkit.errors import ConfigTypeError


def _fits(value: Any, hint) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return False
        try:
            return math.isfinite(float(value))
        except OverflowError:
            return False
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        return isinstance(value, dict) and all(_fits(k, key_hint) and _fits(v, value_hint)
                                               for k, v in value.items())
    return isinstance(value, hint)


def as_pair(value: Any, name: str = "image_size") -> tuple[int, int]:
    """(height, width) of an int (a square) or a pair of ints; anything else is a ConfigTypeError
    naming `name`."""
    pair = (value, value) if isinstance(value, numbers.Integral) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pair)):
        raise ConfigTypeError(f"{name} must be an int or a pair of ints (height, width), not {_short(value)}")
    return (int(pair[0]), int(pair[1]))


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer too long for Python to print
        return f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(hint) -> str:
    text = str(hint).replace("typing.", "").replace("NoneType", "None")
    return text.replace("<class '", "").replace("'>", "")


def check_fields(cls, values: Any, what: str) -> dict:
    """`values` if it is a mapping of `cls`'s field names to values of the annotated types
    (floats finite); otherwise a ConfigTypeError naming the first offending key."""
    if not isinstance(values, dict):
        raise ConfigTypeError(f"{what} must be a mapping of option: value, not {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k if isinstance(k, str) and k.isprintable() else repr(k) for k in values if k not in known)
    if unknown:
        raise ConfigTypeError(f"unknown {what} option(s): {', '.join(unknown)}")
    for name, value in values.items():
        if not _fits(value, hints[name]):
            raise ConfigTypeError(f"{what} option {name} must be {_describe(hints[name])}, not {_short(value)}")
    return values
