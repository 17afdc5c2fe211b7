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

import base64
import json
import marshal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from claimroute.config.jsonstrict import loads_strict
from claimroute.pipeline.claimheaders import claim_headers
from claimroute.policy.routes import RouteChoice, identity_choices

if TYPE_CHECKING:
    from claimroute.policy.model import Policy, Provider


class Identity:
    """Who the caller is and what the policy says about them regardless of the request.

    Read-only by convention (a plain slots class: one is built per new token, and a frozen
    dataclass would cost several microseconds more to build on that path).
    """

    __slots__ = ("claims", "keep_token", "payload_b64", "principals", "provider", "provider_name",
                 "route_choices", "set_headers", "sub")  # fmt: skip

    def __init__(
        self,
        provider: Provider | None,
        claims: Mapping[str, Any] | None,
        set_headers: tuple[tuple[str, str], ...],
        principals: tuple[bool, ...],
        route_choices: tuple[RouteChoice | None, ...],
        payload_b64: str = "",
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
        self.payload_b64 = payload_b64  # the token's payload segment the claims came from, or ""

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
    choices = identity_choices(policy.routes, claims)
    return Identity(provider, claims, headers, principals, choices, payload_b64)


# --- the compact form the token cache keeps ------------------------------------------------------
#
# An Identity is a handful of objects the cyclic garbage collector tracks (the Identity, the
# claims' dicts and lists, a split's RouteChoice, the tuple holding it), and a full collection
# walks every one of them: with 100,000 cached tokens that is a loop stall of a third of a
# second. `identity_record` gives the same answers as bytes (the `marshal` form of nested tuples
# of strings, numbers, bools and None), which the collector never tracks, so the token cache can
# hold them at no collector cost; `identity_from_record` builds the Identity again. (Bytes
# rather than the nested tuples themselves: CPython stops tracking a tuple of untracked values
# when a collection sees it, but only one level of nesting per collection of its generation,
# so nested tuples would stay tracked until a few full collections had passed.) The claims are
# not kept when they are the token's own payload (they are parsed from the token again), else
# as JSON text.
# A route's choice is kept as None (no match), True (its fixed choice, the very object) or the
# plain tuple of a split's RouteChoice fields.

_FIXED = True
_new_object = object.__new__
_new_tuple = tuple.__new__


def identity_record(identity: Identity, policy: Policy, token: str) -> bytes | None:
    """`identity` (built for `policy` from `token`) as bytes, or None
    when it cannot be rebuilt from them (a provider or routes not of `policy`, claims that are
    not JSON)."""
    provider = identity.provider
    claims = identity.claims
    if provider is None or claims is None or policy.providers.get(provider.name) is not provider:
        return None
    routes = policy.routes
    choices = identity.route_choices
    if len(routes) != len(choices):
        return None
    codes: list[Any] = []
    for route, choice in zip(routes, choices, strict=True):
        if choice is None:
            codes.append(None)
        elif choice is route.fixed_choice:
            codes.append(_FIXED)
        elif type(choice) is RouteChoice:
            codes.append(tuple(choice))
        else:
            return None
    payload = identity.payload_b64
    source: str | None = None
    if not payload or token.split(".", 2)[1:2] != [payload]:
        try:
            source = json.dumps(claims)  # claims not from this token's payload (API callers)
        except (TypeError, ValueError):
            return None
    form = (provider.name, identity.sub, identity.set_headers, identity.principals,
            tuple(codes), source)  # fmt: skip
    try:
        return marshal.dumps(form)
    except ValueError:  # not plain values (a caller's own types)
        return None


def identity_from_record(record: bytes, policy: Policy, token: str) -> Identity:
    """The Identity `identity_record` was given (equal in every field), for the same policy."""
    name, sub, headers, principals, codes, source = marshal.loads(record)
    provider = policy.providers[name]
    if source is None:  # the claims are the token's payload, verified when it was stored
        payload = token.split(".", 2)[1]
        claims = loads_strict(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    else:
        payload = ""
        claims = json.loads(source)
    choices: list[RouteChoice | None] = []
    for route, code in zip(policy.routes, codes, strict=True):
        if code is None:
            choices.append(None)
        elif code is _FIXED:
            choices.append(route.fixed_choice)
        else:
            choices.append(_new_tuple(RouteChoice, code))
    identity: Identity = _new_object(Identity)
    identity.provider = provider
    identity.provider_name = name
    identity.claims = claims
    identity.sub = sub
    identity.keep_token = provider.keep_token
    identity.set_headers = headers
    identity.principals = principals
    identity.route_choices = tuple(choices)
    identity.payload_b64 = payload
    return identity
