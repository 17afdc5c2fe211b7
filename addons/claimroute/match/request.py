"""The view of a request that the stages read: no mitmproxy types, so stages test alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from claimroute.match.hostnames import canonical_host
from claimroute.match.paths import normalize_path


class HeaderLookup(Protocol):
    """Case-insensitive multi-valued headers (mitmproxy's `Headers` satisfies this)."""

    def get_all(self, name: str) -> list[str]: ...


@dataclass(slots=True)  # one per request: not frozen (docs/architecture.md, performance)
class RequestView:
    """What the stages may look at: method, target, path, query, headers and cookies."""

    method: str
    scheme: str
    host: str
    port: int
    path: str  # without the query string
    query: tuple[tuple[str, str], ...]
    headers: HeaderLookup
    cookies: tuple[tuple[str, str], ...] = ()
    # Every name the request is addressed to, canonical (`canonical_host`); None: worked out
    # from the Host values and `host` (the mitmproxy layer passes them, see `host_names`).
    addressed_to: tuple[str, ...] | None = None
    _rule_path: str | None = field(default=None, repr=False, compare=False)

    @property
    def host_names(self) -> tuple[str, ...]:
        """The names host rules read: each Host value and the target, unless given."""
        if self.addressed_to is None:
            # A comma-joined value counts name by name (the mitmproxy layer refuses it).
            names = [part for value in self.headers.get_all("host") for part in value.split(",")]
            self.addressed_to = (*map(canonical_host, names), canonical_host(self.host))
        return self.addressed_to

    @property
    def rule_path(self) -> str:
        """The path that path rules match on (`normalize_path`), worked out once per request
        however many RBAC policies and routes read it."""
        if self._rule_path is None:
            self._rule_path = normalize_path(self.path)
        return self._rule_path

    def header(self, name: str) -> str | None:
        """The header's value (several copies joined with `, `), or None when absent."""
        values = self.headers.get_all(name)
        if not values:
            return None
        return values[0] if len(values) == 1 else ", ".join(values)

    @property
    def realm(self) -> str:
        """`scheme://host/path` for the RFC 6750 challenge, as Envoy builds it."""
        default = {"http": 80, "https": 443}.get(self.scheme)
        authority = self.host if self.port == default else f"{self.host}:{self.port}"
        return f"{self.scheme}://{authority}{self.path}"
