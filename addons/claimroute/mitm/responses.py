"""Refusals as HTTP responses: status, body and the RFC 6750 challenge (docs/policy.md)."""

from __future__ import annotations

from authlib.oauth2.rfc6750.errors import InvalidTokenError

from claimroute.errors import Rejection


class _InvalidRequest(InvalidTokenError):
    """authlib's bearer challenge with the `invalid_request` code (RFC 6750 §3.1)."""

    error = "invalid_request"
    status_code = 400


def _quote(text: str) -> str:
    # The realm echoes the request URL, which the client controls: keep the header well-formed.
    return "".join(ch for ch in text if ch >= " " and ch not in '"\\\x7f')


def www_authenticate(rejection: Rejection, realm: str) -> str | None:
    """The `WWW-Authenticate` value for a refusal, or None when none is sent (403s)."""
    if not rejection.challenge:
        return None
    realm = _quote(realm)
    if rejection.error is None:
        return f'Bearer realm="{realm}"'
    error_class = _InvalidRequest if rejection.error == "invalid_request" else InvalidTokenError
    error = error_class(description=_quote(rejection.reason), realm=realm)
    return dict(error.get_headers())["WWW-Authenticate"]


def response_parts(rejection: Rejection, realm: str) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) for a refusal; the body is the short reason in plain text."""
    headers = {"content-type": "text/plain; charset=utf-8", "cache-control": "no-store"}
    challenge = www_authenticate(rejection, realm)
    if challenge is not None:
        headers["www-authenticate"] = challenge
    return rejection.status, rejection.reason.encode("utf-8"), headers
