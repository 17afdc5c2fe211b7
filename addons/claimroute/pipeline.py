"""The four stages in order: extract -> verify -> authorize -> route.

`decide` is a pure function of (request view, policy, key sources, clock) -> Decision; it never
touches mitmproxy. The addon applies the Decision to the flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import errors as E
from .claimheaders import claim_headers
from .errors import Rejection
from .extract import FoundToken, extract_tokens, location_allowed
from .keysource import KeySource
from .policy import Policy
from .rbac import RbacResult
from .request import RequestView
from .routing import RouteChoice, choose_route
from .tokencache import TokenCache
from .verify import verify_token


@dataclass(slots=True)
class Decision:
    """What to do with one request, and why (recorded in flow.metadata and the decision log)."""

    outcome: str  # "allowed" | "anonymous" | "denied"
    reason: str
    rejection: Rejection | None = None
    provider: str | None = None
    sub: str | None = None
    claims: dict[str, Any] | None = None
    token: FoundToken | None = None
    keep_token: bool = False
    set_headers: list[tuple[str, str]] = field(default_factory=list)
    rbac: RbacResult | None = None
    route: RouteChoice | None = None
    token_failure: str | None = None  # why a token was ignored under allow_missing_or_failed
    cache: str | None = None  # "hit" | "miss" when a token was looked up in a TokenCache

    @property
    def allowed(self) -> bool:
        return self.rejection is None

    def record(self) -> dict[str, Any]:
        """A small JSON-able summary (never the token, never all claims)."""
        out: dict[str, Any] = {
            "outcome": self.outcome,
            "reason": self.reason,
            "status": self.rejection.status if self.rejection else None,
            "provider": self.provider,
            "sub": self.sub,
        }
        if self.token_failure:
            out["token_failure"] = self.token_failure
        if self.cache is not None:
            out["cache"] = self.cache
        if self.rbac is not None:
            out["rbac"] = self.rbac.record()
        if self.route is not None:
            out["route"] = self.route.name
            out["upstream"] = self.route.upstream
            if self.route.bucket is not None:
                out["bucket"] = self.route.bucket
        return out


def _deny(rejection: Rejection, **fields: Any) -> Decision:
    return Decision(outcome="denied", reason=rejection.reason, rejection=rejection, **fields)


async def decide(
    request: RequestView,
    policy: Policy,
    key_sources: dict[str, KeySource],
    now: float,
    cache: TokenCache | None = None,
) -> Decision:
    """Run every stage for one request and return the decision (raises only on bugs).

    With a `cache`, a token verified before (same policy, same keys, still in its time window)
    skips verification; the location check, claim headers, RBAC and routing always run.
    """
    found = extract_tokens(request, policy.token_locations)
    if len(found) > 1:
        # RFC 6750 §2: a client must not use more than one method; refuse rather than guess.
        return _deny(Rejection(400, E.MULTIPLE_TOKENS, "invalid_request"))
    token = found[0] if found else None
    decision: Decision
    if token is None:
        if policy.validation == "require_valid":
            return _deny(Rejection(401, E.JWT_MISSING, None))
        decision = Decision(outcome="anonymous", reason="no token")
    else:
        cached = None
        looked_up: str | None = None  # the decision record's "cache": hit | miss
        if cache is not None:
            cached = cache.get(token.token, policy, key_sources, now)
            looked_up = "miss" if cached is None else "hit"
        try:
            if cached is not None:
                verified = cached
            else:
                verified = await verify_token(token.token, policy, key_sources, now)
                if cache is not None:
                    cache.put(token.token, verified, policy, key_sources, now)
            if not location_allowed(token, verified.provider.token_source):
                raise E.invalid_token(E.JWT_UNKNOWN_ISSUER)
        except Rejection as rejection:
            if policy.validation != "allow_missing_or_failed":
                return _deny(rejection, token=token, cache=looked_up)
            decision = Decision(
                outcome="anonymous", reason="token ignored", token=token,
                token_failure=rejection.reason, cache=looked_up,
            )  # fmt: skip
        else:
            provider = verified.provider
            sub = verified.claims.get("sub")
            decision = Decision(
                outcome="allowed",
                reason="verified",
                provider=provider.name,
                sub=sub if isinstance(sub, str) else None,
                claims=verified.claims,
                token=token,
                keep_token=provider.keep_token,
                set_headers=claim_headers(provider.claims_to_headers, verified.claims),
                cache=looked_up,
            )
    if policy.rbac is not None:
        result = policy.rbac.evaluate(request, decision.provider, decision.claims)
        decision.rbac = result
        if not result.allowed and not result.dry_run:
            decision.outcome = "denied"
            decision.reason = E.RBAC_DENIED
            decision.rejection = Rejection(403, E.RBAC_DENIED, None, challenge=False)
            return decision
    decision.route = choose_route(policy.routes, request, decision.claims)
    return decision
