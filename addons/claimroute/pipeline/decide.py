"""The four stages in order: extract -> verify -> authorize -> route.

`decide` is a pure function of (request view, policy, key sources, clock) -> Decision; it never
touches mitmproxy. The addon applies the Decision to the flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from claimroute import errors as E
from claimroute.errors import Rejection
from claimroute.keys.source import KeySource
from claimroute.match.request import RequestView
from claimroute.pipeline.extract import FoundToken, extract_tokens, location_allowed
from claimroute.pipeline.identity import Identity, identity_of
from claimroute.pipeline.tokencache import TokenCache
from claimroute.pipeline.verify import VerifiedToken, verify_token
from claimroute.policy.model import Policy
from claimroute.policy.rbac import RbacResult, RbacTrace
from claimroute.policy.routes import (
    RouteChoice,
    RouteTrace,
    cohort_headers,
    identity_choices,
    route_for,
)


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
    set_headers: tuple[tuple[str, str], ...] = ()
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


class DecisionTrace(RbacTrace, RouteTrace, Protocol):
    """What `decide` tells an observer (`claimroute explain`), stage by stage, in order.

    `decide`, `Rbac.decide`, `route_for` and the caller's half (`Rbac.principal_hits`,
    `identity_choices`) take one as `trace`; with None (the proxy) they only test
    `trace is not None` and allocate nothing for it.
    """

    def tokens_found(self, found: list[FoundToken]) -> None:
        """Stage 1: every token found (more than one is refused next)."""

    def preflight_bypass(self) -> None:
        """A CORS preflight under `cors_preflight: bypass`: no token verified."""

    def token_verified(self, verified: VerifiedToken) -> None:
        """Stage 2: the token passed every check (not called on a token cache hit)."""

    def token_refused(self, rejection: Rejection, ignored: bool) -> None:
        """Stage 2 (or the location check) refused the token; `ignored` under
        `allow_missing_or_failed` (the request goes on as anonymous)."""

    def caller(self, identity: Identity) -> None:
        """The caller the policy reads from here on (an anonymous one included)."""

    def refused(self, decision: Decision) -> None:
        """The final decision is a refusal (called once, before `decide` returns it)."""


def _deny(rejection: Rejection, **fields: Any) -> Decision:
    return Decision(outcome="denied", reason=rejection.reason, rejection=rejection, **fields)


CORS_PREFLIGHT = "cors preflight"


def is_cors_preflight(request: RequestView) -> bool:
    """Envoy's test for a CORS preflight: method `OPTIONS` (exactly: methods are
    case-sensitive) with a non-empty `Origin` and a non-empty `Access-Control-Request-Method`."""
    if request.method != "OPTIONS":
        return False
    origin = request.header("origin")
    wanted = request.header("access-control-request-method")
    return bool(origin and origin.strip() and wanted and wanted.strip())


async def decide(
    request: RequestView,
    policy: Policy,
    key_sources: dict[str, KeySource],
    now: float,
    cache: TokenCache | None = None,
    trace: DecisionTrace | None = None,
) -> Decision:
    """Run every stage for one request and return the decision (raises only on bugs).

    With a `cache`, a token verified before (same policy, same keys, still in its time window)
    skips verification and reuses its `Identity` (claim headers, the RBAC principals and
    route conditions it satisfies, its split buckets); the location check and everything
    that reads the request (permissions, route conditions on methods, paths and headers) run
    on every request, and the claim headers are set on every request.

    With a `trace`, every stage tells it what it found and evaluated (`DecisionTrace`).
    """
    found = extract_tokens(request, policy.token_locations)
    if trace is not None:
        trace.tokens_found(found)
    if len(found) > 1:
        # RFC 6750 §2: a client must not use more than one method; refuse rather than guess.
        return _refused(_deny(Rejection(400, E.MULTIPLE_TOKENS, "invalid_request")), trace)
    token = found[0] if found else None
    decision: Decision
    identity: Identity
    if policy.cors_preflight_bypass and is_cors_preflight(request):
        # `cors_preflight: bypass`: no token needed, and one that came is neither verified nor
        # forwarded (removed like a failed one). RBAC and routes see an anonymous caller.
        identity = policy.anonymous
        if trace is not None:
            trace.preflight_bypass()
        decision = Decision(
            "anonymous", CORS_PREFLIGHT, token=token,
            token_failure=None if token is None else "not verified on a CORS preflight",
        )  # fmt: skip
    elif token is None:
        if policy.validation == "require_valid":
            return _refused(_deny(Rejection(401, E.JWT_MISSING, None)), trace)
        identity = policy.anonymous
        decision = Decision("anonymous", "no token")
    else:
        cached = None
        looked_up: str | None = None  # the decision record's "cache": hit | miss
        if cache is not None:
            cached = cache.get(token.token, policy, key_sources, now)
            looked_up = "miss" if cached is None else "hit"
        try:
            if cached is not None:
                identity = cached
            else:
                verified = await verify_token(token.token, policy, key_sources, now)
                if trace is not None:
                    trace.token_verified(verified)
                # Everything the policy concludes from the claims alone, once per token.
                identity = identity_of(
                    policy, verified.provider, verified.claims, verified.payload_b64
                )
                if cache is not None:
                    cache.put(token.token, identity, policy, key_sources, now)
            assert identity.provider is not None  # a verified token has its provider
            if not location_allowed(token, identity.provider.token_source):
                raise E.invalid_token(E.JWT_UNKNOWN_ISSUER)
        except Rejection as rejection:
            ignored = policy.validation == "allow_missing_or_failed"
            if trace is not None:
                trace.token_refused(rejection, ignored)
            if not ignored:
                return _refused(_deny(rejection, token=token, cache=looked_up), trace)
            identity = policy.anonymous
            decision = Decision(
                outcome="anonymous", reason="token ignored", token=token,
                token_failure=rejection.reason, cache=looked_up,
            )  # fmt: skip
        else:
            decision = Decision(
                "allowed", "verified", None, identity.provider_name, identity.sub,
                identity.claims, token, identity.keep_token, identity.set_headers,
                cache=looked_up,
            )  # fmt: skip
    return authorize_and_route(request, policy, identity, decision, trace)


def authorize_and_route(
    request: RequestView,
    policy: Policy,
    identity: Identity,
    decision: Decision,
    trace: DecisionTrace | None = None,
) -> Decision:
    """Stages 3 and 4 for a caller already worked out: RBAC, then the route and its cohort
    headers, completing `decision` (`decide`'s tail; `claimroute explain --claims` enters
    here with an Identity from `identity_of`)."""
    if trace is not None:
        trace.caller(identity)
        # The caller's half, as `identity_of` works it out (the Identity holds its answers).
        if policy.rbac is not None:
            policy.rbac.principal_hits(identity.provider_name, identity.claims, trace)
        identity_choices(policy.routes, identity.claims, trace)
    if policy.rbac is not None:
        result = policy.rbac.decide(request, identity.principals, trace)
        decision.rbac = result
        if not result.allowed and not result.dry_run:
            decision.outcome = "denied"
            decision.reason = E.RBAC_DENIED
            decision.rejection = Rejection(403, E.RBAC_DENIED, None, challenge=False)
            return _refused(decision, trace)
    route = route_for(policy.routes, request, identity.route_choices, trace)
    decision.route = route
    # The route's cohort header and baggage members; client claimroute.* baggage members go.
    cohort = cohort_headers(route, request)
    if cohort:
        decision.set_headers += cohort
    return decision


def _refused(decision: Decision, trace: DecisionTrace | None) -> Decision:
    if trace is not None:
        trace.refused(decision)
    return decision
