"""Claim values as request header values (docs/policy.md, "Header values from claims")."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .claimpath import MISSING, walk

if TYPE_CHECKING:  # policy builds Identity objects, which use this module
    from .policy import ClaimHeader


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def header_value(value: Any) -> str | None:
    """String as is, bool `true`/`false`, integer in decimal, list of scalars joined with `,`,
    anything else as compact JSON; None (claim null) gives no header."""
    # Per request and per mapped claim: plain loops and inline tests, no generators.
    if isinstance(value, str):  # the common case first (a str is no other scalar)
        return _safe(value)
    if value is None or value is MISSING:
        return None
    scalar = _scalar(value)
    if scalar is not None:
        return _safe(scalar)
    if isinstance(value, list):
        parts = []
        for item in value:
            text = _scalar(item)
            if text is None:
                break
            parts.append(text)
        else:  # every element is a scalar
            return _safe(",".join(parts))
    return _safe(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _safe(text: str) -> str:
    # A claim must never be able to inject a second header line (CR/LF) into the request, nor
    # carry a lone surrogate (legal as a JSON escape, "\ud800") that cannot be sent as UTF-8.
    if "\r" in text or "\n" in text or "\0" in text or not (text.isascii() or _encodable(text)):
        return json.dumps(text)[1:-1]
    return text


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def claim_headers(
    mapping: tuple[ClaimHeader, ...], claims: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """(header, value) pairs to set upstream for a verified token's claims."""
    out = []
    for entry in mapping:
        value = header_value(walk(claims, entry.claim))
        if value is not None:
            out.append((entry.header, value))
    return out
