"""Claim values as request header values (docs/policy.md, "Header values from claims")."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from claimroute.match.claimpath import MISSING, walk

if TYPE_CHECKING:  # policy builds Identity objects, which use this module
    from claimroute.policy.model import ClaimHeader

# The characters RFC 9110 (§5.5) forbids in a field value: every C0 control but HTAB, and DEL.
# CR, LF and NUL among them would start a new header line; the others are refused or misread by
# upstreams, so none of them is sent raw.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


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
    # A claim must never be able to inject a second header line (CR/LF) into the request, put a
    # control character into it (RFC 9110 allows only HTAB), nor carry a lone surrogate (legal
    # as a JSON escape, "\ud800") that cannot be sent as UTF-8. Such a value is sent as the
    # text of a JSON string (json.dumps escapes every C0 control, DEL and non-ASCII).
    if text.isprintable():  # the common case: no control, no surrogate (both unprintable)
        return text
    if _CONTROL.search(text) is not None or not (text.isascii() or _encodable(text)):
        return json.dumps(text)[1:-1]
    return text  # a tab, a non-ASCII space or another unprintable but allowed character


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
