"""Error types shared by every stage.

`PolicyError` is raised while loading a policy (or scenario) file and always names the file,
the key path and, where YAML gives it, the line. `Rejection` is the outcome of a request that
must not reach its upstream: it carries the documented status, body and RFC 6750 error code.
"""

from __future__ import annotations

from dataclasses import dataclass


class PolicyError(ValueError):
    """A policy (or scenario) file is invalid; the message names file, key path and line."""

    def __init__(self, message: str, *, file: str, key_path: str, line: int | None) -> None:
        self.file = file
        self.key_path = key_path
        self.line = line
        self.reason = message
        where = f"{file}:{line}" if line is not None else file
        subject = key_path or "(top level)"
        super().__init__(f"{where}: {subject}: {message}")


@dataclass(frozen=True, slots=True)
class Rejection(Exception):
    """A request is refused. `error` is the RFC 6750 error code, or None (no `error=`)."""

    status: int
    reason: str
    error: str | None = None
    challenge: bool = True  # send WWW-Authenticate (401/400 from authentication)

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


# Reasons, in the words Envoy and Gloo users already know (jwt_verify_lib status strings).
JWT_MISSING = "Jwt is missing"
JWT_EXPIRED = "Jwt is expired"
JWT_NOT_YET_VALID = "Jwt not yet valid"
JWT_BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature"
JWT_VERIFICATION_FAILS = "Jwt verification fails"
JWT_UNKNOWN_ISSUER = "Jwt issuer is not configured"
JWT_TOO_LARGE = "Jwt is too large"
JWT_ALG_NOT_ALLOWED = "Jwt algorithm is not allowed"
JWT_KID_NOT_FOUND = "Jwks doesn't have key to match kid or alg from Jwt"
JWT_LIFETIME_TOO_LONG = "Jwt lifetime exceeds the allowed maximum"
JWKS_FETCH_FAILED = "Jwks remote fetch is failed"
AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
MULTIPLE_TOKENS = "Multiple tokens"
RBAC_DENIED = "RBAC: access denied"
INTERNAL_ERROR = "Internal error in the authentication proxy"


def invalid_token(reason: str) -> Rejection:
    """401 with `error="invalid_token"`: the token is present but unusable."""
    return Rejection(401, reason, "invalid_token")
