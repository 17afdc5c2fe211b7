"""Stage 1: find the token(s) a request carries, in the locations the providers listed."""

from __future__ import annotations

import re
from dataclasses import dataclass

from claimroute.match.request import RequestView
from claimroute.policy.model import TokenSource

_TOKEN_CHAR = re.compile(r"[A-Za-z0-9\-._~+/=]")  # RFC 6750 token68


@dataclass(slots=True)  # one per request: not frozen (docs/architecture.md, performance)
class FoundToken:
    """One credential and where it was found (so the location can be checked and cleaned)."""

    token: str
    kind: str  # "header" | "query" | "cookie"
    name: str  # header name (lower-case), query parameter or cookie name
    prefix: str = ""


def extract_tokens(request: RequestView, locations: TokenSource) -> list[FoundToken]:
    """Every token in the request, at every configured location.

    A header whose value does not start with the location's prefix (e.g. `Basic ...` when the
    prefix is `Bearer `) is not a token. The prefix compares case-insensitively because the
    auth scheme is case-insensitive (RFC 9110 §11.1); exactly the prefix is removed, nothing
    else, so stray whitespace makes the token malformed rather than silently trimmed. A prefix
    ending in a space also takes the scheme followed by other whitespace (`Bearer<TAB>...`),
    as a malformed token.
    """
    found: list[FoundToken] = []
    # One header value is one credential, even when providers list the same header with
    # different prefixes (say `Bearer ` and none): the longest matching prefix takes it. The
    # table of names and prefixes (longest first) is built once per source, at policy load.
    for name, prefixes in locations.header_prefixes:
        for value in request.headers.get_all(name):
            for length, lowered, prefix in prefixes:
                if value[:length].lower() == lowered:
                    found.append(FoundToken(value[length:], "header", name, prefix))
                    break
                if _other_separator(value, length, lowered):
                    # `Bearer<TAB>t`: the scheme with another separator is still this
                    # credential, kept malformed (the token starts with the separator) so that
                    # it is refused, or removed when ignored, and never forwarded unverified.
                    found.append(FoundToken(value[length - 1 :], "header", name, prefix[:-1]))
                    break
    if locations.query_params and request.query:
        wanted = locations.query_params
        found.extend(FoundToken(v, "query", k) for k, v in request.query if k in wanted)
    if locations.cookies and request.cookies:
        wanted = locations.cookies
        found.extend(FoundToken(v, "cookie", k) for k, v in request.cookies if k in wanted)
    return found


def _other_separator(value: str, length: int, lowered: str) -> bool:
    """Whether `value` is a prefix that ends in a space (an auth scheme and its separator)
    written with something else in place of that space: other whitespace, or any character a
    token cannot start with (a raw 0xA0 byte is whitespace to a Latin-1 reader)."""
    return (
        lowered.endswith(" ")
        and len(value) >= length
        and not _TOKEN_CHAR.match(value[length - 1])
        and value[: length - 1].lower() == lowered[:-1]
    )


def location_allowed(found: FoundToken, source: TokenSource) -> bool:
    """Whether the provider that issued the token lists the place it was found (Envoy E16)."""
    if found.kind == "header":
        # Some header location has this name and, compared case-insensitively, this prefix.
        return (found.name, found.prefix.lower()) in source.header_keys
    if found.kind == "query":
        return found.name in source.query_params
    return found.name in source.cookies
