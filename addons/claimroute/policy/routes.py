"""Stage 4: pick the upstream from claims, headers, paths and methods (docs/policy.md `routes`).

The first matching route wins; no match leaves the destination alone. A `split` sends a
sticky share of users to each target with the published bucket formula:

    bucket = int.from_bytes(sha256(f"{salt}:{route name}:{value}")[:8], "big") % 10000

where `value` is the claim at `by` (default `sub`). Target i receives the buckets below
`cumulative_weight_i * 10000 // total_weight`, in the order given. A request with no value for
`by` goes to the first target with a positive weight. A value holding a lone surrogate (a JSON
escape such as "\\ud800", which has no UTF-8) is encoded code point by code point (Python's
"surrogatepass").
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from claimroute.config import readers as schema
from claimroute.config.source import Loc
from claimroute.match.claimpath import MISSING, ClaimPath, parse_claim_path, walk
from claimroute.match.conditions import ANY_REQUEST, RequestConditions, parse_request_conditions
from claimroute.match.matchers import ClaimsMatcher, compile_claims
from claimroute.match.request import RequestView

BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a route sends requests: scheme, host and port (the path is kept)."""

    url: str
    scheme: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """AND of the fields given; a field left out matches everything."""

    claims: ClaimsMatcher | None = None
    authenticated: bool | None = None
    request: RequestConditions = ANY_REQUEST  # methods, paths, headers

    @property
    def reads_request(self) -> bool:
        """Whether any condition reads the request (methods, paths, headers)."""
        return not self.request.empty

    def identity_matches(self, claims: Mapping[str, Any] | None) -> bool:
        """The conditions on the caller: `authenticated` and `claims`."""
        if self.authenticated is not None and self.authenticated != (claims is not None):
            return False
        return self.claims is None or self.claims.matches(claims)


@dataclass(frozen=True, slots=True)
class Split:
    """A sticky weighted split over targets, by the hash of one claim."""

    by: ClaimPath
    salt: str
    targets: tuple[Upstream, ...]
    boundaries: tuple[int, ...]  # exclusive upper bucket of each target
    # Where a caller without a value for `by` goes: the first target with a positive weight
    # (a target at weight 0 is drained, for them too).
    fallback: Upstream = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lower = 0
        for target, upper in zip(self.targets, self.boundaries, strict=True):
            if upper > lower:
                object.__setattr__(self, "fallback", target)
                return
            lower = upper
        raise ValueError("a split needs a target with a positive weight")  # parse refuses it


class RouteChoice(NamedTuple):
    """The route a request took and where it goes.

    Immutable (a named tuple rather than a frozen dataclass: one is built per new token for
    each sticky split it reaches, and this is about three times cheaper to build).
    """

    name: str
    upstream: str
    scheme: str
    host: str
    port: int
    preserve_host: bool
    bucket: int | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """One routing rule."""

    name: str
    match: RouteMatch
    upstream: Upstream | None
    split: Split | None
    preserve_host: bool
    # Built once: the choice of a route with a fixed upstream (choices are immutable), and the
    # salt and route name part of a split's bucket input, encoded (schema.string guarantees
    # both are valid Unicode).
    fixed_choice: RouteChoice | None = field(init=False, repr=False, compare=False)
    bucket_prefix: bytes | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fixed = None
        if self.upstream is not None:
            fixed = _choice(self, self.upstream, None)
        object.__setattr__(self, "fixed_choice", fixed)
        prefix = _bucket_prefix(self.split.salt, self.name) if self.split is not None else None
        object.__setattr__(self, "bucket_prefix", prefix)


def split_value(value: Any) -> str | None:
    """The text hashed for a claim value: strings as is, numbers in decimal, else compact JSON."""
    if value is MISSING or value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def bucket_of(salt: str, route_name: str, value: str) -> int:
    """The published sticky bucket in [0, 10000)."""
    return _bucket(_bucket_prefix(salt, route_name), value)


def _bucket_prefix(salt: str, route_name: str) -> bytes:
    return f"{salt}:{route_name}:".encode()


def _bucket(prefix: bytes, value: str) -> int:
    # sha256 of the UTF-8 of f"{salt}:{route name}:{value}", the prefix encoded once per route.
    # A claim may hold a lone surrogate (legal as a JSON escape, "\ud800"), which has no UTF-8:
    # it is encoded as UTF-8 would encode the code point (surrogatepass), so such a caller
    # still has a defined, sticky bucket; every other string encodes exactly as UTF-8.
    digest = hashlib.sha256(prefix + value.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def _choice(route: Route, target: Upstream, bucket: int | None) -> RouteChoice:
    return RouteChoice(
        route.name, target.url, target.scheme, target.host, target.port, route.preserve_host,
        bucket,
    )  # fmt: skip


def _choose(route: Route, claims: Mapping[str, Any] | None) -> RouteChoice:
    if route.fixed_choice is not None:
        return route.fixed_choice
    split = route.split
    assert split is not None
    value = split_value(walk(claims, split.by))
    if value is None:
        return _choice(route, split.fallback, None)
    prefix = route.bucket_prefix
    assert prefix is not None  # built at load for every split route
    bucket = _bucket(prefix, value)
    # The first target whose (exclusive) upper bound is above the bucket; the last bound is
    # BUCKETS, so there always is one.
    return _choice(route, split.targets[bisect_right(split.boundaries, bucket)], bucket)


def identity_choices(
    routes: tuple[Route, ...], claims: Mapping[str, Any] | None
) -> tuple[RouteChoice | None, ...]:
    """Per route: where it sends this caller, or None when its conditions on the caller fail.

    It reads only the claims, so it is worked out once per verified token (see
    `identity.Identity`), sticky-split hashes included; `route_for` only checks the request.
    """
    choices: list[RouteChoice | None] = [None] * len(routes)
    for index, route in enumerate(routes):
        match = route.match
        if match.identity_matches(claims):
            choices[index] = _choose(route, claims)
            if not match.reads_request:
                # This route takes every request of this caller: no later route is ever
                # reached (`route_for` stops here), so their choices (and split hashes) are
                # not worked out.
                break
    return tuple(choices)


def route_for(
    routes: tuple[Route, ...], request: RequestView, choices: tuple[RouteChoice | None, ...]
) -> RouteChoice | None:
    """The first route whose conditions on the caller held (`choices`) and whose conditions
    on the request hold, or None to leave the destination as it is."""
    for route, choice in zip(routes, choices, strict=True):
        if choice is not None:
            conditions = route.match.request
            if conditions.empty or conditions.matches(request):
                return choice
    return None


def choose_route(
    routes: tuple[Route, ...], request: RequestView, claims: Mapping[str, Any] | None
) -> RouteChoice | None:
    """The first matching route's choice, or None to leave the destination as it is."""
    return route_for(routes, request, identity_choices(routes, claims))


def parse_upstream(value: Any, loc: Loc) -> Upstream:
    """An `http(s)://host[:port]` URL (no path, query or credentials)."""
    text = schema.string(value, loc)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise loc.error(f"expected http://host:port or https://host:port, got {text!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise loc.error("an upstream is scheme, host and port only (the request path is kept)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise loc.error(f"invalid port in {text!r}") from None
    return Upstream(text.rstrip("/"), parts.scheme, parts.hostname, port)


def _parse_match(value: Any, loc: Loc) -> RouteMatch:
    spec = schema.mapping(
        value, loc, allowed=("claims", "headers", "paths", "methods", "authenticated")
    )
    return RouteMatch(
        claims=compile_claims(spec["claims"], loc / "claims") if "claims" in spec else None,
        authenticated=(
            schema.boolean(spec["authenticated"], loc / "authenticated")
            if "authenticated" in spec
            else None
        ),
        request=parse_request_conditions(spec, loc),
    )


def _parse_split(value: Any, loc: Loc) -> Split:
    spec = schema.mapping(value, loc, allowed=("by", "salt", "to"), required=("to",))
    by = parse_claim_path(spec.get("by", "sub"), loc / "by")
    salt = schema.string(spec.get("salt", ""), loc / "salt", non_empty=False)
    targets: list[Upstream] = []
    weights: list[int] = []
    for index, item in enumerate(schema.sequence(spec["to"], loc / "to", non_empty=True)):
        item_loc = loc / "to" / index
        entry = schema.mapping(item, item_loc, allowed=("upstream", "weight"),
                               required=("upstream", "weight"))  # fmt: skip
        targets.append(parse_upstream(entry["upstream"], item_loc / "upstream"))
        weights.append(schema.integer(entry["weight"], item_loc / "weight", minimum=0))
    total = sum(weights)
    if total <= 0:
        raise (loc / "to").error("the weights add up to 0")
    boundaries, running = [], 0
    for weight in weights:
        running += weight
        boundaries.append(running * BUCKETS // total)
    return Split(by, salt, tuple(targets), tuple(boundaries))


def parse_routes(value: Any, loc: Loc) -> tuple[Route, ...]:
    """Validate the `routes` section (raises PolicyError with key path and line)."""
    routes: list[Route] = []
    names: set[str] = set()
    for index, item in enumerate(schema.sequence(value, loc)):
        item_loc = loc / index
        spec = schema.mapping(
            item, item_loc, allowed=("name", "match", "upstream", "split", "preserve_host"),
            required=("name",),
        )  # fmt: skip
        name = schema.string(spec["name"], item_loc / "name")
        if name in names:
            raise (item_loc / "name").error(f"route name {name!r} is used twice")
        names.add(name)
        if ("upstream" in spec) == ("split" in spec):
            raise item_loc.error("give exactly one of upstream or split")
        routes.append(
            Route(
                name=name,
                match=_parse_match(spec.get("match", {}), item_loc / "match"),
                upstream=(
                    parse_upstream(spec["upstream"], item_loc / "upstream")
                    if "upstream" in spec
                    else None
                ),
                split=_parse_split(spec["split"], item_loc / "split") if "split" in spec else None,
                preserve_host=schema.boolean(
                    spec.get("preserve_host", False), item_loc / "preserve_host"
                ),
            )
        )
    return tuple(routes)
