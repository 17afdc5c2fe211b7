"""Claim values as request header values (docs/policy.md, "Header values from claims")."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .claimpath import MISSING, walk
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
    if value is None or value is MISSING:
        return None
    scalar = _scalar(value)
    if scalar is not None:
        return _safe(scalar)
    if isinstance(value, list) and all(_scalar(v) is not None for v in value):
        return _safe(",".join(_scalar(v) or "" for v in value))
    return _safe(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _safe(text: str) -> str:
    # A claim must never be able to inject a second header line (CR/LF) into the request, nor
    # carry a lone surrogate (legal as a JSON escape, "\ud800") that cannot be sent as UTF-8.
    if any(ch in text for ch in "\r\n\0") or not _encodable(text):
        return json.dumps(text)[1:-1]
    return text


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
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
