"""Strict JSON for token parts and key sets.

Python's json module silently keeps the last of duplicate members and accepts NaN, Infinity
and huge numbers. A proxy that forwards claims to upstreams with other parsers must not (RFC
7515 §4, RFC 8725 §2.6), so duplicates and non-finite numbers are errors here.
"""

from __future__ import annotations

import json
import math
from typing import Any


class StrictJSONError(ValueError):
    """The text is not strict JSON."""


def _reject_constant(name: str) -> Any:
    raise StrictJSONError(f"non-standard JSON literal {name}")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise StrictJSONError(f"duplicate member {key!r}")
            seen.add(key)
    return out


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError(f"number {text[:20]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    # Python refuses ints over 4300 digits with ValueError; claims never need more than 2**64.
    if len(text) > 40:
        raise StrictJSONError("integer is out of range")
    return int(text)


# Claims and key sets are a few levels deep. An explicit bound keeps the limit independent of
# the interpreter's recursion limit (CPython 3.12 parses ~1500 levels before RecursionError,
# later versions far more), so deep values never reach code that recurses over them.
MAX_DEPTH = 100


def _check_depth(value: Any) -> None:
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise StrictJSONError(f"nested deeper than {MAX_DEPTH} levels")
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
    parse_int=_bounded_int,
    strict=True,
)


def loads_strict(data: bytes | str) -> Any:
    """Decode UTF-8 JSON strictly (no BOM, no duplicates, finite numbers, bounded depth)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise StrictJSONError("not UTF-8") from None
    if text.startswith("\ufeff"):
        raise StrictJSONError("starts with a byte order mark")
    text = text.strip(" \t\r\n")
    try:
        value, end = _DECODER.raw_decode(text)
    except StrictJSONError:
        raise
    except RecursionError:
        raise StrictJSONError("nested too deeply") from None
    except ValueError as exc:
        raise StrictJSONError(str(exc)) from None
    if end != len(text):
        raise StrictJSONError("extra data after the JSON value")
    # Every object or array in the value opened with its own `{` or `[` in the text, so a text
    # with at most MAX_DEPTH of them (counting those inside strings too) cannot nest deeper: the
    # common case is settled by two C-level counts, without walking the value.
    if text.count("{") + text.count("[") > MAX_DEPTH:
        _check_depth(value)
    return value
