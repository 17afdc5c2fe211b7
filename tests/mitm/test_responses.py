"""Refusals as HTTP responses: status, body and a well-formed RFC 6750 challenge."""

from __future__ import annotations

from claimroute import errors as E
from claimroute.errors import Rejection
from claimroute.mitm.responses import response_parts, www_authenticate

REALM = "http://api.test/orders"


def test_missing_token_challenge_has_no_error():
    assert www_authenticate(Rejection(401, E.JWT_MISSING, None), REALM) == (
        f'Bearer realm="{REALM}"'
    )


def test_invalid_token_and_invalid_request_challenges():
    challenge = www_authenticate(E.invalid_token(E.JWT_EXPIRED), REALM)
    assert challenge == (
        f'Bearer realm="{REALM}", error="invalid_token", error_description="{E.JWT_EXPIRED}"'
    )
    status, body, headers = response_parts(
        Rejection(400, E.MULTIPLE_TOKENS, "invalid_request"), REALM
    )
    assert (status, body) == (400, E.MULTIPLE_TOKENS.encode())
    assert 'error="invalid_request"' in headers["www-authenticate"]


def test_forbidden_sends_no_challenge():
    status, body, headers = response_parts(
        Rejection(403, E.RBAC_DENIED, None, challenge=False), REALM
    )
    assert (status, body) == (403, b"RBAC: access denied")
    assert "www-authenticate" not in headers
    assert headers["cache-control"] == "no-store"


def test_client_text_cannot_break_the_challenge():
    # The realm echoes the URL and some reasons quote token contents (a JSON member name).
    realm = 'http://api.test/a"b\\c\r\nX-Evil: 1\x7f'
    reason = "Jwt payload is not valid JSON: duplicate member 'a\"\r\nX-Evil: 1'"
    challenge = www_authenticate(E.invalid_token(reason), realm)
    assert challenge is not None
    assert not any(ch in challenge for ch in "\r\n\x7f\\")
    assert challenge.count('"') == 6  # three quoted parameters, nothing else quoted
