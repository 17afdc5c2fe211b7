"""What the policy concludes from one caller's identity, worked out once per verified token.

Several answers depend only on who the caller is (the provider that vouched for the token and
its claims), never on the request: the claim headers, which RBAC principals the caller is, which
routes' claim conditions hold and, for those routes, where the caller goes (a sticky split's
bucket is a hash of a claim). An `Identity` holds those answers. It is built when a token is
first verified and kept with it in the token cache, so a request with a known token only runs
the parts that read the request itself (methods, paths, hosts, headers). Anonymous requests
share one `Identity` per policy (`Policy.anonymous`).

The answers come from the same matcher engine and the same functions as always: an Identity is
a memo of `Rbac.principal_hits` and `routing.identity_choices`, which the full evaluations
(`Rbac.evaluate`, `choose_route`) also go through. It belongs to the policy it was built
for, and the token cache drops it with that policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from claimroute.pipeline.claimheaders import claim_headers
from claimroute.policy.routes import RouteChoice, identity_choices

if TYPE_CHECKING:
    from claimroute.policy.model import Policy, Provider


class Identity:
    """Who the caller is and what the policy says about them regardless of the request.

    Read-only by convention (a plain slots class: one is built per new token, and a frozen
    dataclass would cost several microseconds more to build on that path).
    """

    __slots__ = ("claims", "keep_token", "principals", "provider", "provider_name",
                 "route_choices", "set_headers", "sub")  # fmt: skip

    def __init__(
        self,
        provider: Provider | None,
        claims: Mapping[str, Any] | None,
        set_headers: tuple[tuple[str, str], ...],
        principals: tuple[bool, ...],
        route_choices: tuple[RouteChoice | None, ...],
    ) -> None:
        self.provider = provider
        self.provider_name = provider.name if provider is not None else None
        self.claims = claims
        sub = claims.get("sub") if claims is not None else None
        self.sub: str | None = sub if isinstance(sub, str) else None
        self.keep_token = provider.keep_token if provider is not None else False
        self.set_headers = set_headers  # (header, value) pairs to set upstream
        self.principals = principals  # per RBAC rule, in evaluation order: a principal of it?
        self.route_choices = route_choices  # per route: where it sends this caller, or None

    def __repr__(self) -> str:
        return f"Identity({self.provider_name}/{self.sub})"


def identity_of(
    policy: Policy,
    provider: Provider | None,
    claims: Mapping[str, Any] | None,
    payload_b64: str = "",
) -> Identity:
    """Work out everything `policy` concludes from this provider and these claims alone
    (provider and claims None for an anonymous request); `payload_b64` is the token's payload
    segment, for a provider's `forward_payload_header`."""
    name = provider.name if provider is not None else None
    headers: tuple[tuple[str, str], ...] = ()
    if provider is not None and claims is not None:
        if provider.claims_to_headers:
            headers = tuple(claim_headers(provider.claims_to_headers, claims))
        if provider.forward_payload_header and payload_b64:
            headers += ((provider.forward_payload_header, payload_b64),)
    principals = policy.rbac.principal_hits(name, claims) if policy.rbac is not None else ()
    return Identity(provider, claims, headers, principals, identity_choices(policy.routes, claims))
