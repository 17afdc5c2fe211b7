"""Small typed readers for policy and scenario documents; each failure names its key path."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from claimroute.config.source import Loc

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 field name (a token)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def mapping(
    value: Any, loc: Loc, *, allowed: Iterable[str] | None = None, required: Iterable[str] = ()
) -> dict[str, Any]:
    """Check that `value` is a mapping with only `allowed` keys and every `required` key."""
    if not isinstance(value, dict):
        raise loc.error(f"expected a mapping, got {type_name(value)}")
    if allowed is not None:
        allowed_set = set(allowed)
        for key in value:
            if key not in allowed_set:
                known = ", ".join(sorted(allowed_set))
                raise (loc / key).error(f"unknown key {key!r} (known keys: {known})")
    for key in required:
        if key not in value:
            raise loc.error(f"missing required key {key!r}")
    return value


def string(value: Any, loc: Loc, *, non_empty: bool = True) -> str:
    """A string (non-empty unless told otherwise)."""
    if not isinstance(value, str):
        raise loc.error(f"expected a string, got {type_name(value)}")
    if non_empty and not value:
        raise loc.error("must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A YAML escape such as "\ud800" yields text no header or hash input can carry.
        raise loc.error("is not valid Unicode text (it holds a lone surrogate)") from None
    return value


def header_name(value: Any, loc: Loc) -> str:
    """An HTTP header name (an RFC 9110 token), lower-cased: header names compare that way."""
    name = string(value, loc)
    if not _HEADER_NAME.fullmatch(name):
        raise loc.error(f"{name!r} is not a valid header name")
    return name.lower()


def boolean(value: Any, loc: Loc) -> bool:
    """A YAML boolean (true/false), never a string or number."""
    if not isinstance(value, bool):
        raise loc.error(f"expected true or false, got {type_name(value)}")
    return value


def integer(value: Any, loc: Loc, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer within the given bounds."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise loc.error(f"expected an integer, got {type_name(value)}")
    if minimum is not None and value < minimum:
        raise loc.error(f"must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise loc.error(f"must be at most {maximum}")
    return value


def number(value: Any, loc: Loc) -> float:
    """An integer or float (not a boolean)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise loc.error(f"expected a number, got {type_name(value)}")
    return float(value)


def sequence(value: Any, loc: Loc, *, non_empty: bool = False) -> list[Any]:
    """A YAML list."""
    if not isinstance(value, list):
        raise loc.error(f"expected a list, got {type_name(value)}")
    if non_empty and not value:
        raise loc.error("must not be an empty list")
    return value


def string_list(value: Any, loc: Loc, *, non_empty: bool = False) -> tuple[str, ...]:
    """A list of non-empty strings (a single string is not accepted: say what you mean)."""
    items = sequence(value, loc, non_empty=non_empty)
    return tuple(string(item, loc / i) for i, item in enumerate(items))


def choice(value: Any, loc: Loc, options: Iterable[str]) -> str:
    """One of a fixed set of strings."""
    options = tuple(options)
    text = string(value, loc)
    if text not in options:
        raise loc.error(f"must be one of {', '.join(options)}; got {text!r}")
    return text


def duration(value: Any, loc: Loc) -> float:
    """A duration in seconds from `90s`, `5m`, `1.5h`, `250ms`, `2d` or a bare number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise loc.error(f"expected a duration such as 30s, 5m, 24h or 250ms, got {value!r}")
    # YAML's .nan and .inf are floats: a NaN clock_skew would make every exp/nbf check false.
    if not math.isfinite(seconds):
        raise loc.error(f"expected a finite duration, got {value!r}")
    if seconds < 0:
        raise loc.error("a duration cannot be negative")
    return seconds
