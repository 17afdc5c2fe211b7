"""Error types shared by every stage.

`PolicyError` is raised while loading a policy (or scenario) file and always names the file,
the key path and, where YAML gives it, the line. `Rejection` is the outcome of a request that
must not reach its upstream: it carries the documented status, body and RFC 6750 error code.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_REASON_CHARS = 200  # a refusal reason built from token contents (body, header, decision log)
MAX_LOG_CHARS = 300  # an IdP- or client-supplied string in a log line


def log_safe(text: object, limit: int = MAX_LOG_CHARS) -> str:
    """`text` fit for one log line: control characters escaped, at most `limit` characters.

    Newlines, carriage returns, ESC (ANSI sequences), DEL, the C1 controls and the Unicode line
    and paragraph separators become `\\n`, `\\x1b`, `\\u2028`... so a string from an IdP or a
    client can neither start a forged log line nor drive the terminal; a longer text is cut and
    ends in `...(N more)`.
    """
    text = str(text)
    if len(text) > limit:
        text = f"{text[:limit]}...({len(text) - limit} more)"
    if text.isprintable() and text.isascii():
        return text
    return "".join(_escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if ch.isprintable() or ch == " ":
        return ch
    if ch == "\n":
        return "\\n"
    if ch == "\r":
        return "\\r"
    if ch == "\t":
        return "\\t"
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def bounded_reason(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """A refusal reason that echoes token contents, cut to `limit` characters."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


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
    """401 with `error="invalid_token"`: the token is present but unusable.

    Some reasons quote the token (a JSON parser's complaint, a header member's name): they are
    cut to `MAX_REASON_CHARS`, as they reach the body, `WWW-Authenticate` and the decision log.
    """
    return Rejection(401, bounded_reason(reason), "invalid_token")
