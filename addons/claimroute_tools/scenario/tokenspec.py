"""Scenario syntax for tokens from a real identity provider: external issuers, token sources.

An issuer may be `external:` (OIDC discovery, or its issuer, JWKS URL and token endpoint
given), and a population may get its tokens from a `token:` source: an OAuth 2.0 grant
(client credentials or password) against the issuer's token endpoint, a file (one token per
line) or a command (run once per user). Secrets are named by environment variable, never
written in the file. This module only reads the file; `tokens.py` fetches at run time.
See docs/external-tokens.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from authlib.common.security import is_secure_transport

from claimroute.config import readers as schema
from claimroute.config.source import Loc

type TokenKind = Literal["client_credentials", "password", "file", "command"]
GRANTS = ("client_credentials", "password")
AUTH_METHODS = ("client_secret_basic", "client_secret_post")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Settings of a test issuer's tokens that mean nothing for tokens someone else issued.
MINTING_KEYS = ("claims", "tamper", "sub")
MAX_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class ExternalIssuer:
    """Where a real identity provider is: discovery, or its facts given one by one."""

    discovery: str | None = None  # the openid-configuration URL
    issuer: str | None = None  # without discovery: the `iss` of its tokens
    jwks_url: str | None = None  # without discovery: its JWKS
    token_endpoint: str | None = None  # without discovery: needed only by grant populations
    timeout: float = 10.0  # per discovery request


@dataclass(frozen=True, slots=True)
class TokenSource:
    """Where a population's tokens come from (instead of the runner minting them)."""

    kind: TokenKind
    loc: Loc = field(compare=False, repr=False)  # the `token:` mapping, for run-time errors
    client_id: str | None = None
    client_secret_env: str | None = None  # the variable's name; its value is read at run start
    auth_method: str = "client_secret_basic"
    scope: str | None = None
    audience: str | None = None  # sent as the `audience` parameter (Auth0, Okta, ...)
    username: str | None = None  # template: {name} and {i} (1-based) are replaced
    password_env: str | None = None
    file: str | None = None  # as written; resolved against the scenario's folder
    command: tuple[str, ...] = ()  # argv; {name} and {i} are replaced per user
    timeout: float = 10.0  # per token request or command run

    @property
    def grant(self) -> bool:
        """True for the OAuth 2.0 grants (they need the issuer's token endpoint)."""
        return self.kind in GRANTS

    def variables(self) -> list[tuple[str, str]]:
        """(key, environment variable) pairs this source reads at run start."""
        pairs = [("client_secret_env", self.client_secret_env), ("password_env", self.password_env)]
        return [(key, var) for key, var in pairs if var is not None]


def _url(value: Any, loc: Loc, *, secure: bool = False) -> str:
    """An http(s) URL without credentials; `secure`: https, or http on loopback only (secrets
    are sent there, or the token endpoint is learnt from there)."""
    text = schema.string(value, loc)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise loc.error(f"expected an http:// or https:// URL, got {text!r}")
    if parts.username or parts.password:
        raise loc.error("credentials do not go in a URL (they would be logged); use *_env keys")
    if secure and not is_secure_transport(text):
        raise loc.error(f"{text!r}: secrets go there: use https (http only on loopback)")
    return text


def _env(value: Any, loc: Loc) -> str:
    name = schema.string(value, loc)
    if not ENV_RE.match(name):
        raise loc.error(
            f"{name!r} is not an environment variable name (the secret itself never goes in "
            "the file: name the variable that holds it)"
        )
    return name


def _timeout(spec: dict[str, Any], loc: Loc, default: str) -> float:
    seconds = schema.duration(spec.get("timeout", default), loc / "timeout")
    if not 0.1 <= seconds <= MAX_TIMEOUT:
        raise (loc / "timeout").error("must be between 100ms and 300s")
    return seconds


def parse_external(value: Any, loc: Loc) -> ExternalIssuer:
    """`external: {discovery: URL}` or `{issuer, jwks_url, token_endpoint?}` (+ `timeout`)."""
    spec = schema.mapping(
        value,
        loc,
        allowed=("discovery", "issuer", "jwks_url", "token_endpoint", "timeout"),
    )
    timeout = _timeout(spec, loc, "10s")
    if "discovery" in spec:
        for key in ("issuer", "jwks_url", "token_endpoint"):
            if key in spec:
                raise (loc / key).error(
                    f"{key} comes from the discovery document; give discovery or "
                    "issuer + jwks_url (+ token_endpoint), not both"
                )
        url = _url(spec["discovery"], loc / "discovery", secure=True)
        if not urlsplit(url).path.endswith("/.well-known/openid-configuration"):
            raise (loc / "discovery").error(
                "expected the discovery document's URL, ending in /.well-known/openid-configuration"
            )
        return ExternalIssuer(discovery=url, timeout=timeout)
    for key in ("issuer", "jwks_url"):
        if key not in spec:
            raise loc.error(f"missing required key {key!r} (or give `discovery:`)")
    return ExternalIssuer(
        issuer=schema.string(spec["issuer"], loc / "issuer"),
        jwks_url=_url(spec["jwks_url"], loc / "jwks_url"),
        token_endpoint=(
            _url(spec["token_endpoint"], loc / "token_endpoint", secure=True)
            if "token_endpoint" in spec
            else None
        ),
        timeout=timeout,
    )


_GRANT_KEYS = {
    "client_credentials": (
        "client_id",
        "client_secret_env",
        "auth_method",
        "scope",
        "audience",
        "timeout",
    ),
    "password": (
        "client_id",
        "client_secret_env",
        "auth_method",
        "scope",
        "audience",
        "username",
        "password_env",
        "timeout",
    ),
}


def parse_token_source(value: Any, loc: Loc) -> TokenSource:
    """A population's `token:` mapping: `{grant: ...}`, `{file: ...}` or `{command: [...]}`."""
    spec = schema.mapping(value, loc)
    kinds = [key for key in ("grant", "file", "command") if key in spec]
    if len(kinds) != 1:
        raise loc.error(
            "give exactly one of grant (client_credentials or password), file or command "
            "(or write `token: none` for anonymous users)"
        )
    if kinds == ["file"]:
        schema.mapping(spec, loc, allowed=("file",))
        return TokenSource("file", loc, file=schema.string(spec["file"], loc / "file"))
    if kinds == ["command"]:
        schema.mapping(spec, loc, allowed=("command", "timeout"))
        argv = schema.string_list(spec["command"], loc / "command", non_empty=True)
        return TokenSource("command", loc, command=argv, timeout=_timeout(spec, loc, "30s"))
    grant = schema.choice(spec["grant"], loc / "grant", GRANTS)
    for key in ("client_secret", "password"):
        if key in spec:
            raise (loc / key).error(
                f"a secret never goes in the scenario file: put it in an environment variable "
                f"and name the variable with {key}_env"
            )
    required = ("client_id", "client_secret_env") if grant == "client_credentials" else ()
    required += ("client_id", "username", "password_env") if grant == "password" else ()
    schema.mapping(spec, loc, allowed=("grant", *_GRANT_KEYS[grant]), required=required)
    kw: dict[str, Any] = {
        "client_id": schema.string(spec["client_id"], loc / "client_id"),
        "timeout": _timeout(spec, loc, "10s"),
    }
    for key in ("client_secret_env", "password_env"):
        if key in spec:
            kw[key] = _env(spec[key], loc / key)
    for key in ("scope", "audience", "username"):
        if key in spec:
            kw[key] = schema.string(spec[key], loc / key)
    if "auth_method" in spec:
        if "client_secret_env" not in spec:
            raise (loc / "auth_method").error(
                "auth_method is how the client secret is sent; this client has none "
                "(a public client sends only its client_id)"
            )
        kw["auth_method"] = schema.choice(spec["auth_method"], loc / "auth_method", AUTH_METHODS)
    return TokenSource(grant, loc, **kw)  # type: ignore[arg-type]


def resolve_file(source: TokenSource, scenario_path: Path) -> Path:
    """A `file:` source's path: absolute, or relative to the scenario file's folder."""
    assert source.file is not None
    return (scenario_path.resolve().parent / source.file).resolve()


__all__ = [
    "ExternalIssuer",
    "TokenSource",
    "parse_external",
    "parse_token_source",
    "resolve_file",
]
