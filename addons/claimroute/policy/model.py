"""The policy model: validated, immutable data (a leaf: nothing from the request path)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from claimroute.config.source import Stamp
from claimroute.keys.keyset import KeySet
from claimroute.match.claimpath import ClaimPath
from claimroute.policy.rbac import Rbac
from claimroute.policy.routes import Route

if TYPE_CHECKING:  # the request-time Identity: a type only, never imported at run time
    from claimroute.pipeline.identity import Identity

VALIDATION_MODES = ("require_valid", "allow_missing", "allow_missing_or_failed")
# `cors_preflight`: `verify` treats a CORS preflight like any request; `bypass` lets it pass
# without a token, as an anonymous caller (Envoy's jwt_authn bypass_cors_preflight).
CORS_PREFLIGHT_MODES = ("verify", "bypass")
DEFAULT_CLOCK_SKEW = 60.0
DEFAULT_CACHE_DURATION = 300.0
DEFAULT_FETCH_TIMEOUT = 5.0
# Headers the proxy must never take from a client, whatever the policy says.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


@dataclass(frozen=True, slots=True)
class HeaderLocation:
    """A header that may carry the token and its prefix (`Bearer `, case-insensitive)."""

    name: str  # lower-case
    prefix: str


@dataclass(frozen=True, slots=True)
class TokenSource:
    """Where one provider looks for its token."""

    headers: tuple[HeaderLocation, ...]
    query_params: tuple[str, ...]
    cookies: tuple[str, ...]
    # Derived once from `headers`, because a source is built at load and read per request.
    # For `extract_tokens`: each header name (in order of first mention) with its prefixes as
    # (length, prefix lower-cased, prefix), longest first (a stable sort: equal lengths keep
    # their order).
    header_prefixes: tuple[tuple[str, tuple[tuple[int, str, str], ...]], ...] = field(
        init=False, repr=False, compare=False
    )
    # For `location_allowed`: (name, prefix lower-cased) of every header location.
    header_keys: frozenset[tuple[str, str]] = field(init=False, repr=False, compare=False)
    # The header names that carry tokens (lower-case), for the request checks.
    header_names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, list[str]] = {}
        for location in self.headers:
            by_name.setdefault(location.name, []).append(location.prefix)
        table = tuple(
            (name, tuple((len(p), p.lower(), p) for p in sorted(prefixes, key=len, reverse=True)))
            for name, prefixes in by_name.items()
        )
        object.__setattr__(self, "header_prefixes", table)
        keys = frozenset((h.name, h.prefix.lower()) for h in self.headers)
        object.__setattr__(self, "header_keys", keys)
        object.__setattr__(self, "header_names", frozenset(by_name))


DEFAULT_TOKEN_SOURCE = TokenSource(
    headers=(HeaderLocation("authorization", "Bearer "),),
    query_params=("access_token",),
    cookies=(),
)


@dataclass(frozen=True, slots=True)
class ClaimHeader:
    """Copy the claim at `claim` to request header `header` after verification."""

    claim: ClaimPath
    header: str  # lower-case


@dataclass(frozen=True, slots=True)
class LocalJwks:
    """Keys read from the policy (file or inline), imported once at load."""

    key_set: KeySet
    origin: str
    path: str | None = None  # the key file, watched for changes like the policy itself
    # With a key file: the digest of the bytes read, and the file's stamp taken before reading
    # them (so a reload fingerprints exactly what it parsed and sees a later change).
    digest: str = field(default="", compare=False, repr=False)
    stamp: Stamp = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RemoteJwks:
    """Keys fetched over HTTP in the background: a JWKS URL or OIDC discovery."""

    url: str | None  # None with discovery
    discovery: bool
    issuer: str
    cache_duration: float
    timeout: float
    allowed_algorithms: frozenset[str] | None
    # Longest time the keys stay in use without a successful fetch; past it they are dropped
    # (refused as `Jwks remote fetch is failed`) until a fetch succeeds. None: no bound.
    max_stale: float | None = None

    @property
    def identity(self) -> tuple[Any, ...]:
        """Two configs with the same identity can share one fetcher across reloads."""
        return (self.url, self.discovery, self.issuer, self.cache_duration, self.timeout)


@dataclass(frozen=True, slots=True)
class Provider:
    """One trusted token issuer and what to do with its tokens."""

    name: str
    issuer: str
    audiences: frozenset[str] | None
    jwks: LocalJwks | RemoteJwks
    algorithms: frozenset[str] | None
    token_source: TokenSource
    keep_token: bool
    clock_skew: float
    require_expiration: bool
    max_lifetime: float | None
    claims_to_headers: tuple[ClaimHeader, ...]
    # Envoy's forward_payload_header / Istio's outputPayloadToHeader: the verified token's
    # payload segment (base64url, as in the token) in this header.
    forward_payload_header: str | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    """A whole validated policy file."""

    path: str
    providers: Mapping[str, Provider]
    by_issuer: Mapping[str, Provider]
    validation: str
    rbac: Rbac | None
    routes: tuple[Route, ...]
    identity_headers: frozenset[str]  # every claims_to_headers target: always stripped
    token_locations: TokenSource  # union of every provider's sources
    fingerprint: str  # changes whenever the file's (or a key file's) content changes
    # Each file the policy was read from (the policy file, then its key files) with its stamp
    # taken before reading it; empty for a policy parsed from text.
    file_stamps: tuple[tuple[str, Stamp], ...] = field(default=(), compare=False, repr=False)
    # What the policy concludes about every anonymous request's caller, worked out once by
    # the loader (`policy.load`), which may import the request path; the model does not.
    anonymous: Identity | None = field(default=None, repr=False, compare=False)
    # True with `cors_preflight: bypass`: a CORS preflight passes without a token, as anonymous.
    cors_preflight_bypass: bool = False

    def _key_file_jwks(self) -> list[tuple[str, LocalJwks]]:
        """(path, jwks) of every provider whose keys come from a key file, in provider order."""
        return [
            (p.jwks.path, p.jwks)
            for p in self.providers.values()
            if isinstance(p.jwks, LocalJwks) and p.jwks.path is not None
        ]

    @property
    def key_files(self) -> tuple[str, ...]:
        """The local key files the policy reads; a change to one reloads the policy too."""
        return tuple(path for path, _ in self._key_file_jwks())

    @property
    def key_file_digests(self) -> tuple[str, ...]:
        """Digests of the key files as read, in the order of `key_files`."""
        return tuple(jwks.digest for _, jwks in self._key_file_jwks())

    @property
    def key_file_stamps(self) -> tuple[tuple[str, Stamp], ...]:
        """(path, stamp before reading) of each key file, in the order of `key_files`."""
        return tuple((path, jwks.stamp) for path, jwks in self._key_file_jwks())
