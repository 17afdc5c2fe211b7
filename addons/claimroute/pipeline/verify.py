"""Stage 2: verify a compact JWS JWT strictly, with the checks joserfc leaves to callers.

Order: size and shape (before any decoding) -> header -> payload -> issuer (picks the
provider) -> algorithm allowlist -> time claims -> signature -> audience. Time is checked before
the signature so that junk tokens cost no crypto and trigger no key fetch; the audience after
it, so that an unsigned token cannot learn whether its audience would pass.

The signature itself is checked by joserfc's algorithm layer on exactly the bytes parsed here.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from joserfc.jws import JWSRegistry

from claimroute import errors as E
from claimroute.config.jsonstrict import StrictJSONError, loads_strict
from claimroute.errors import Rejection, invalid_token
from claimroute.keys.keyset import SUPPORTED_ALGORITHMS, KeySet, VerificationKey
from claimroute.keys.source import KeySource
from claimroute.policy.model import Policy, Provider

MAX_TOKEN_CHARS = 16 * 1024
MAX_HEADER_CHARS = 4 * 1024
MAX_NUMERIC_DATE = 253402300799  # 9999-12-31T23:59:59Z
_NUMBER = (int, float)  # a tuple: isinstance with it is cheaper than with int | float
_BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# The last character of a segment of length 4k+2 has 4 bits beyond the data, of 4k+3 it has 2;
# a canonical encoding leaves them zero. These are the last characters that do.
_CANONICAL_LAST = {
    2: frozenset(c for value, c in enumerate(_BASE64URL) if value & 0b1111 == 0),
    3: frozenset(c for value, c in enumerate(_BASE64URL) if value & 0b11 == 0),
}
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_+/=", b"+/!!!")
_PADDING = (b"", b"", b"==", b"=")
_ALGORITHMS = JWSRegistry.algorithms
# Header members this verifier understands. `crit` may only name members it understands, and
# it understands no extension, so any `crit` is refused (RFC 7515 §4.1.11).
_FORBIDDEN_HEADER_MEMBERS = ("b64", "crit")


@dataclass(slots=True)  # one per request: not frozen (docs/architecture.md, performance)
class VerifiedToken:
    """A token that passed every check, and the provider that vouched for it."""

    provider: Provider
    claims: dict[str, Any]
    header: Mapping[str, Any]  # read-only: shared by every token with the same header
    payload_b64: str  # the payload segment exactly as in the token


@dataclass(slots=True)  # one per request: not frozen (docs/architecture.md, performance)
class ParsedToken:
    """A structurally valid token, not yet trusted."""

    header: Mapping[str, Any]  # read-only (see _HEADERS)
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes
    alg: str
    kid: str | None
    payload_b64: str


def _b64decode(segment: str, what: str) -> bytes:
    # Strict base64url (RFC 7515 §2): the alphabet A-Za-z0-9-_ only, no padding, a length that
    # is not 1 mod 4, and canonical trailing bits (the bits the last character carries beyond
    # the data must be zero, so that one byte string has exactly one encoding).
    #
    # Done in C as far as possible: the last character is checked against a table, then the
    # segment is mapped to the standard alphabet (with '+', '/' and '=' mapped to '!', which no
    # base64 alphabet has) and decoded in strict mode, which refuses any character outside the
    # standard alphabet and any padding other than the one added here. Non-ASCII text fails to
    # encode. tests/pipeline/test_verify.py checks this against the reference definition.
    remainder = len(segment) & 3
    if remainder == 1 or not segment:
        raise invalid_token(f"Jwt {what} is not valid base64url")
    if remainder and segment[-1] not in _CANONICAL_LAST[remainder]:
        raise invalid_token(f"Jwt {what} is not valid base64url")
    try:
        standard = segment.encode("ascii").translate(_URLSAFE_TO_STANDARD)
        return binascii.a2b_base64(standard + _PADDING[remainder], strict_mode=True)
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        raise invalid_token(f"Jwt {what} is not valid base64url") from None


# Parsed JOSE headers by their encoded text. An issuer signs every token with the same few
# headers (alg, kid, typ), so the segment repeats across users: it is decoded and checked once.
# Only headers that passed every check are kept, as read-only mappings (they are shared).
_HEADERS: dict[str, tuple[Mapping[str, Any], str, str | None]] = {}
_HEADERS_MAX = 256


def _parse_header(header_b64: str) -> tuple[Mapping[str, Any], str, str | None]:
    """Decode and check one header segment: (header, alg, kid) or a 401 Rejection."""
    try:
        header = loads_strict(_b64decode(header_b64, "header"))
    except StrictJSONError as exc:
        raise invalid_token(f"Jwt header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise invalid_token("Jwt header is not a JSON object")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise invalid_token("Jwt header has no alg")
    kid = header.get("kid")
    if "kid" in header and not isinstance(kid, str):  # `"kid": null` is not "no kid"
        raise invalid_token("Jwt header kid is not a string")
    for member in _FORBIDDEN_HEADER_MEMBERS:
        if member in header:
            raise invalid_token(f"Jwt header member {member!r} is not supported")
    return MappingProxyType(header), alg, kid


def parse_token(token: str) -> ParsedToken:
    """Split and decode a compact JWS; every defect is a 401 `invalid_token` Rejection."""
    if len(token) > MAX_TOKEN_CHARS:
        raise invalid_token(E.JWT_TOO_LARGE)
    if token.count(".") != 2:
        raise invalid_token(E.JWT_BAD_FORMAT)
    header_b64, payload_b64, signature_b64 = token.split(".")
    if not (header_b64 and payload_b64 and signature_b64):
        raise invalid_token(E.JWT_BAD_FORMAT)
    if len(header_b64) > MAX_HEADER_CHARS:
        raise invalid_token(E.JWT_TOO_LARGE)
    known = _HEADERS.get(header_b64)
    if known is None:
        known = _parse_header(header_b64)
        if len(_HEADERS) >= _HEADERS_MAX:
            _HEADERS.clear()  # junk headers can only cost their own parse, never grow memory
        _HEADERS[header_b64] = known
    header, alg, kid = known
    try:
        claims = loads_strict(_b64decode(payload_b64, "payload"))
    except StrictJSONError as exc:
        raise invalid_token(f"Jwt payload is not valid JSON: {exc}") from None
    if not isinstance(claims, dict):
        raise invalid_token("Jwt payload is not a JSON object")
    signature = _b64decode(signature_b64, "signature")
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    return ParsedToken(header, claims, signing_input, signature, alg, kid, payload_b64)


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        if name in claims:
            raise invalid_token(f"Jwt {name} is not a number")
        return None
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        raise invalid_token(f"Jwt {name} is not a number")
    if not math.isfinite(value) or not 0 <= value <= MAX_NUMERIC_DATE:
        raise invalid_token(f"Jwt {name} is out of range")
    return float(value)


def _check_string_claims(claims: dict[str, Any]) -> None:
    for name in ("sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            raise invalid_token(f"Jwt {name} is not a string")
    if "aud" in claims:
        aud = claims["aud"]
        if not isinstance(aud, str):
            if not isinstance(aud, list):
                raise invalid_token("Jwt aud is not a string or a list of strings")
            for value in aud:
                if not isinstance(value, str):
                    raise invalid_token("Jwt aud is not a string or a list of strings")


def check_time(claims: dict[str, Any], provider: Provider, now: float) -> None:
    """exp/nbf/iat types and ranges, expiry, not-before, lifetime (RFC 7519 §4.1.4-4.1.6)."""
    exp = _numeric_date(claims, "exp")
    nbf = _numeric_date(claims, "nbf")
    _numeric_date(claims, "iat")
    if exp is None and provider.require_expiration:
        raise invalid_token("Jwt has no exp and the provider requires one")
    failure = time_window_failure(exp, nbf, provider.clock_skew, provider.max_lifetime, now)
    if failure is not None:
        raise invalid_token(failure)


def time_window_failure(
    exp: float | None, nbf: float | None, skew: float, max_lifetime: float | None, now: float
) -> str | None:
    """Why a token with these (already checked) NumericDates is outside its time window at
    `now`, or None. The token cache re-runs exactly this on every hit."""
    if exp is not None:
        # RFC 7519: reject on or after exp; the skew gives clocks some slack.
        if now >= exp + skew:
            return E.JWT_EXPIRED
        if max_lifetime is not None and exp - now > max_lifetime + skew:
            return E.JWT_LIFETIME_TOO_LONG
    if nbf is not None and now + skew < nbf:
        return E.JWT_NOT_YET_VALID
    return None


def check_audience(claims: dict[str, Any], provider: Provider) -> None:
    """Any-of, exact and case-sensitive; a token without aud fails when audiences are set."""
    if provider.audiences is None:
        return
    audiences = provider.audiences
    aud = claims.get("aud")
    if isinstance(aud, str):
        if aud in audiences:
            return
    else:
        for value in aud or ():
            if value in audiences:
                return
    raise Rejection(403, E.AUDIENCE_NOT_ALLOWED, None, challenge=False)


def _signature_verifies(parsed: ParsedToken, candidates: list[VerificationKey]) -> bool:
    algorithm = _ALGORITHMS[parsed.alg]
    alg = parsed.alg
    for candidate in candidates:
        # joserfc's `check_key` for this key and alg ran when the key was loaded; a key it
        # refused is skipped, as if it had raised here.
        if alg not in candidate.key_checked:
            continue
        try:
            if algorithm.verify(parsed.signing_input, parsed.signature, candidate.key):
                return True
        except Exception:  # any failure inside the primitive simply means "not verified"
            continue
    return False


def select_provider(parsed: ParsedToken, policy: Policy) -> Provider:
    """The provider whose issuer is the token's `iss` (exact string match)."""
    iss = parsed.claims.get("iss")
    if not isinstance(iss, str):
        raise invalid_token(E.JWT_UNKNOWN_ISSUER)
    provider = policy.by_issuer.get(iss)
    if provider is None:
        raise invalid_token(E.JWT_UNKNOWN_ISSUER)
    return provider


def check_algorithm(parsed: ParsedToken, provider: Provider, key_set: KeySet | None) -> None:
    """The alg must be known, allowed for this provider and (when keys exist) for a key."""
    if parsed.alg not in SUPPORTED_ALGORITHMS:  # the project's own list (never `none`)
        raise invalid_token(E.JWT_ALG_NOT_ALLOWED)
    if provider.algorithms is not None and parsed.alg not in provider.algorithms:
        raise invalid_token(E.JWT_ALG_NOT_ALLOWED)
    if key_set is not None and parsed.alg not in key_set.algorithms:
        raise invalid_token(E.JWT_ALG_NOT_ALLOWED)


async def verify_token(
    token: str, policy: Policy, key_sources: dict[str, KeySource], now: float
) -> VerifiedToken:
    """Verify `token` against `policy`; raises Rejection with the documented status/reason."""
    parsed = parse_token(token)
    provider = select_provider(parsed, policy)
    source = key_sources[provider.name]
    key_set = source.current()
    check_algorithm(parsed, provider, key_set)
    _check_string_claims(parsed.claims)
    check_time(parsed.claims, provider, now)
    if key_set is None or (parsed.kid is not None and not key_set.has_kid(parsed.kid)):
        # Not fetched yet, or an unknown kid (rotation): the source may refetch, rate-limited.
        key_set = await source.keys_for_kid(parsed.kid)
        if key_set is None:
            raise invalid_token(E.JWKS_FETCH_FAILED)
        check_algorithm(parsed, provider, key_set)
    candidates = key_set.candidates(parsed.kid, parsed.alg)
    if not candidates:
        raise invalid_token(E.JWT_KID_NOT_FOUND)
    if not _signature_verifies(parsed, candidates):
        raise invalid_token(E.JWT_VERIFICATION_FAILS)
    check_audience(parsed.claims, provider)
    return VerifiedToken(provider, parsed.claims, parsed.header, parsed.payload_b64)
