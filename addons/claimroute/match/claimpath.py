"""Claim paths: the one syntax for naming a nested claim, and the one walker that resolves it.

`a.b.c` walks nested objects. A segment that contains dots goes in square brackets:
`[kubernetes.io].namespace` is the claim `kubernetes.io`, then its member `namespace`. Where a path
is a YAML value, a list of segments is accepted too: `[kubernetes.io, namespace]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from claimroute.config.source import Loc

ClaimPath = tuple[str, ...]


class _Missing:
    """The type of `MISSING`; there is exactly one instance."""

    __slots__ = ()
    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<missing>"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        # copy, deepcopy and pickle return the singleton, so `is MISSING` keeps working
        return "MISSING"


MISSING: Final = _Missing()
"""What `walk` returns when a path does not resolve (distinct from a claim that is JSON null)."""


def _bad(loc: Loc, text: str, why: str) -> Exception:
    return loc.error(f"invalid claim path {text!r}: {why}")


def _parse_text(text: str, loc: Loc) -> ClaimPath:
    if not text:
        raise loc.error("a claim path must not be empty")
    segments: list[str] = []
    end_of_text = len(text)
    i = 0
    while True:
        if text.startswith("[", i):
            close = text.find("]", i + 1)
            if close < 0:
                raise _bad(loc, text, "'[' without a matching ']'")
            segment = text[i + 1 : close]
            if "[" in segment:
                raise _bad(loc, text, "brackets cannot be nested")
            if not segment:
                raise _bad(loc, text, "empty segment '[]'")
            i = close + 1
            if i < end_of_text and text[i] != ".":
                raise _bad(loc, text, "']' must be followed by '.' or the end of the path")
        else:
            dot = text.find(".", i)
            stop = end_of_text if dot < 0 else dot
            segment = text[i:stop]
            if not segment:
                raise _bad(loc, text, "empty segment (a leading, trailing or doubled '.')")
            if "[" in segment:
                raise _bad(loc, text, "'[' may only start a segment, as in a.[b.c].d")
            if "]" in segment:
                raise _bad(loc, text, "']' without a matching '['")
            i = stop
        segments.append(segment)
        if i == end_of_text:
            return tuple(segments)
        i += 1  # past the '.'
        if i == end_of_text:
            raise _bad(loc, text, "empty segment (a leading, trailing or doubled '.')")


def parse_claim_path(value: Any, loc: Loc) -> ClaimPath:
    """Parse a claim path: a dotted string (`a.[b.c].d`) or a list of non-empty string segments."""
    if isinstance(value, str):
        return _parse_text(value, loc)
    if isinstance(value, list):
        if not value:
            raise loc.error("a claim path must not be an empty list")
        for index, segment in enumerate(value):
            if not isinstance(segment, str):
                raise (loc / index).error(
                    f"a claim path segment must be a string, got {type(segment).__name__}"
                )
            if not segment:
                raise (loc / index).error("a claim path segment must not be empty")
        return tuple(value)
    raise loc.error(
        "a claim path must be a string such as realm_access.roles or a list of segments, "
        f"got {'null' if value is None else type(value).__name__}"
    )


def walk(claims: Mapping[str, Any] | None, path: ClaimPath) -> Any:
    """The value at `path` in `claims`, or `MISSING` if a step is absent or not an object."""
    if claims is None:
        return MISSING
    if len(path) == 1:  # most paths are one top-level claim: one lookup, no loop
        return claims.get(path[0], MISSING)
    value: Any = claims
    try:
        for segment in path:
            value = value[segment]
    except (KeyError, TypeError):
        # JSON values other than objects (list, str, number, bool, null) reject a str index
        # with TypeError, so this also stops at any non-object step: no list indexing.
        return MISSING
    return value


def format_claim_path(path: ClaimPath) -> str:
    """The canonical string of a path: segments joined by '.', brackets around dotted ones."""
    return ".".join(f"[{segment}]" if "." in segment else segment for segment in path)
