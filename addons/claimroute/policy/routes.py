"""Stage 4: pick the upstream from claims, headers, paths and methods (docs/policy.md `routes`).

The first matching route wins; no match leaves the destination alone. A `split` sends a
sticky share of users to each target with the published bucket formula:

    bucket = int.from_bytes(sha256(f"{salt}:{route name}:{value}")[:8], "big") % 10000

where `value` is the claim at `by` (default `sub`) as text (`split_value`). When `by` lists
several claims, `value` is the compact JSON array of their texts (`by_value`: `["acme","u1"]`);
a list of one claim is that claim. Target i receives the buckets below
`cumulative_weight_i * 10000 // total_weight`, in the order given. A request with no value for
`by` (for a list: one of its claims absent or null) is hashed on `fallback_by` instead, if given,
and with no value for that either goes to the first target with a positive weight. A value
holding a lone surrogate (a JSON escape such as "\\ud800", which has no UTF-8) is encoded code
point by code point (Python's "surrogatepass").

A route with `cohort_header` or `baggage: true` tells the upstream where the caller went
(`cohort_text`, `baggage_members`, `cohort_headers`).
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol
from urllib.parse import quote, urlsplit

from claimroute.config import readers as schema
from claimroute.config.source import Loc
from claimroute.match.claimpath import (
    MISSING,
    ClaimPath,
    format_claim_path,
    parse_claim_path,
    walk,
)
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
    """A sticky weighted split over targets, by the hash of one claim or several."""

    by: tuple[ClaimPath, ...]  # one path, or several whose values are hashed together
    salt: str
    targets: tuple[Upstream, ...]
    boundaries: tuple[int, ...]  # exclusive upper bucket of each target
    # Hashed instead of `by` when `by` has no value (empty: no fallback claim).
    fallback_by: tuple[ClaimPath, ...] = ()
    # The target a caller without a value for `by` goes to: the first with a positive weight
    # (a target at weight 0 is drained, for them too).
    fallback_index: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lower = 0
        for index, (_, upper) in enumerate(zip(self.targets, self.boundaries, strict=True)):
            if upper > lower:
                object.__setattr__(self, "fallback_index", index)
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
    # What the route tells the upstream (built with the choice, so once per token for a
    # split): its `cohort_header` as (name, value) pairs, and its baggage members, if any.
    cohort: tuple[tuple[str, str], ...] = ()
    baggage: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """One routing rule."""

    name: str
    match: RouteMatch
    upstream: Upstream | None
    split: Split | None
    preserve_host: bool
    cohort_header: str | None = None  # lower-case; set to `cohort_text` of the choice
    baggage: bool = False  # add the cohort as W3C baggage members `claimroute.*`
    # Built once (choices are immutable): the choice of a route with a fixed upstream, the
    # choice of each split target without a bucket (cohort texts percent-encoded here, so a
    # caller hashed into a split only appends its bucket), and the salt and route name part of
    # a split's bucket input, encoded (schema.string guarantees both are valid Unicode).
    fixed_choice: RouteChoice | None = field(init=False, repr=False, compare=False)
    target_choices: tuple[RouteChoice, ...] = field(init=False, repr=False, compare=False)
    bucket_prefix: bytes | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fixed = None
        prefix = None
        targets: tuple[RouteChoice, ...] = ()
        if self.upstream is not None:
            fixed = _choice(self, self.upstream)
        if self.split is not None:
            targets = tuple(_choice(self, target) for target in self.split.targets)
            prefix = _bucket_prefix(self.split.salt, self.name)
        object.__setattr__(self, "fixed_choice", fixed)
        object.__setattr__(self, "target_choices", targets)
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


def by_value(claims: Mapping[str, Any] | None, paths: tuple[ClaimPath, ...]) -> str | None:
    """The text hashed for `by` (or `fallback_by`), or None when it has no value.

    One path: `split_value` of its claim. Several: the compact JSON array of their
    `split_value` texts (`["acme","u1"]`, only `"`, `\\` and U+0000-U+001F escaped), or None
    when any of them is absent or null.
    """
    if len(paths) == 1:
        return split_value(walk(claims, paths[0]))
    texts: list[str] = []
    for path in paths:
        text = split_value(walk(claims, path))
        if text is None:
            return None
        texts.append(text)
    return json.dumps(texts, ensure_ascii=False, separators=(",", ":"))


def format_split_by(paths: tuple[ClaimPath, ...]) -> str:
    """`by` as written in a policy: one path, or a list of them (`[tenant, sub]`)."""
    if len(paths) == 1:
        return format_claim_path(paths[0])
    return f"[{', '.join(map(format_claim_path, paths))}]"


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


# --- telling the upstream: the cohort header and W3C baggage ------------------------------------
#
# The cohort header is `route=R; target=T` plus `; bucket=NNNN` for a caller hashed into a
# split (four digits, zero-padded). R is the route name, T the upstream URL of the target (as
# the policy gives it, without a final `/`), each percent-encoded (`cohort_quote`). The same pairs
# go into W3C baggage as the members `claimroute.route`, `claimroute.target`,
# `claimroute.bucket`.

BAGGAGE_HEADER = "baggage"
BAGGAGE_PREFIX = "claimroute."


def cohort_quote(text: str) -> str:
    """A cohort value percent-encoded: UTF-8, every byte but A-Z a-z 0-9 `-._~:/` as %XX.

    The result holds no space, `,`, `;`, `=`, `"` or `\\`, so it is both a cohort header value
    and a W3C baggage value as it is, and `urllib.parse.unquote` gives the text back.
    """
    return quote(text, safe=":/")


def _bucket_text(bucket: int) -> str:
    return f"{bucket:04d}"


def cohort_pairs(route_name: str, target_url: str, bucket: int | None) -> list[tuple[str, str]]:
    """The (key, encoded value) pairs that describe where a caller went."""
    pairs = [("route", cohort_quote(route_name)), ("target", cohort_quote(target_url))]
    if bucket is not None:
        pairs.append(("bucket", _bucket_text(bucket)))
    return pairs


def cohort_text(route_name: str, target_url: str, bucket: int | None) -> str:
    """The cohort header's value: `route=R; target=T[; bucket=NNNN]`."""
    return "; ".join(
        f"{key}={value}" for key, value in cohort_pairs(route_name, target_url, bucket)
    )


def baggage_members(route_name: str, target_url: str, bucket: int | None) -> str:
    """The W3C baggage members: `claimroute.route=R,claimroute.target=T[,claimroute.bucket=N]`."""
    pairs = cohort_pairs(route_name, target_url, bucket)
    return ",".join(f"{BAGGAGE_PREFIX}{key}={value}" for key, value in pairs)


def _is_ours(member: str) -> bool:
    # The member's key: before `=` (or before a `;` property), without OWS; compared
    # case-insensitively so that no spelling of a claimroute.* key gets through.
    key = member.split("=", 1)[0].split(";", 1)[0].strip(" \t").lower()
    return key.startswith(BAGGAGE_PREFIX)


def merged_baggage(client: list[str], ours: str | None) -> str | None:
    """The baggage value to send upstream, or None to leave the client's header alone.

    Every member of the client's `baggage` headers whose key starts with `claimroute.` (in any
    case) is removed, the other members are kept in order (without surrounding whitespace and
    empty members), and `ours` is appended. The result may be empty (a client that sent only
    claimroute.* members, on a route without `baggage`).
    """
    forged = False
    for value in client:
        if BAGGAGE_PREFIX in value.lower():
            forged = True
            break
    if not forged and ours is None:
        return None
    kept: list[str] = []
    for value in client:
        for member in value.split(","):
            member = member.strip(" \t")
            if member and not (forged and _is_ours(member)):
                kept.append(member)
    if ours is not None:
        kept.append(ours)
    return ",".join(kept)


def cohort_headers(choice: RouteChoice | None, request: RequestView) -> tuple[tuple[str, str], ...]:
    """The headers to set for the route a request took (None: no route): its cohort header,
    and a `baggage` header when the route adds members or the client sent claimroute.* ones
    (removed on every request, whatever the route)."""
    headers: tuple[tuple[str, str], ...] = ()
    ours = None
    if choice is not None:
        headers = choice.cohort
        ours = choice.baggage
    client = request.headers.get_all(BAGGAGE_HEADER)
    if client or ours is not None:
        value = merged_baggage(client, ours)
        if value is not None:
            headers += ((BAGGAGE_HEADER, value),)
    return headers


def _choice(route: Route, target: Upstream) -> RouteChoice:
    """The choice of `target` without a bucket (at load)."""
    cohort: tuple[tuple[str, str], ...] = ()
    if route.cohort_header is not None:
        cohort = ((route.cohort_header, cohort_text(route.name, target.url, None)),)
    baggage = baggage_members(route.name, target.url, None) if route.baggage else None
    return RouteChoice(
        route.name, target.url, target.scheme, target.host, target.port, route.preserve_host,
        None, cohort, baggage,
    )  # fmt: skip


def _with_bucket(base: RouteChoice, bucket: int) -> RouteChoice:
    """`base` (a target's choice without a bucket) for a caller hashed into `bucket`: the
    bucket pair appended to its cohort texts, as `cohort_pairs` appends it."""
    cohort = base.cohort
    baggage = base.baggage
    if cohort or baggage is not None:
        pair = f"bucket={_bucket_text(bucket)}"
        if cohort:
            cohort = ((cohort[0][0], f"{cohort[0][1]}; {pair}"),)
        if baggage is not None:
            baggage = f"{baggage},{BAGGAGE_PREFIX}{pair}"
    return RouteChoice(
        base.name, base.upstream, base.scheme, base.host, base.port, base.preserve_host,
        bucket, cohort, baggage,
    )  # fmt: skip


def split_target(
    split: Split, prefix: bytes, claims: Mapping[str, Any] | None
) -> tuple[int, int | None]:
    """The index of the target a caller goes to and its bucket (None: no value to hash, the
    first target with a positive weight). `prefix` is the route's `bucket_prefix`. The one
    implementation of the published formula, for the addon and the scenario runner alike."""
    value = by_value(claims, split.by)
    if value is None and split.fallback_by:
        value = by_value(claims, split.fallback_by)
    if value is None:
        return split.fallback_index, None
    bucket = _bucket(prefix, value)
    # The first target whose (exclusive) upper bound is above the bucket; the last bound is
    # BUCKETS, so there always is one.
    return bisect_right(split.boundaries, bucket), bucket


def _choose(route: Route, claims: Mapping[str, Any] | None) -> RouteChoice:
    if route.fixed_choice is not None:
        return route.fixed_choice
    split = route.split
    assert split is not None
    prefix = route.bucket_prefix
    assert prefix is not None  # built at load for every split route
    index, bucket = split_target(split, prefix, claims)
    base = route.target_choices[index]
    return base if bucket is None else _with_bucket(base, bucket)


class RouteTrace(Protocol):
    """What route evaluation tells an observer (`claimroute explain`); see `pipeline.decide`."""

    def route_caller(self, route: Route, matched: bool, choice: RouteChoice | None) -> None:
        """`identity_choices`: whether `route`'s conditions on the caller hold, and where it
        sends the caller then (routes after one that reads no request are not worked out)."""

    def route_request(self, route: Route, choice: RouteChoice | None, matched: bool | None) -> None:
        """`route_for`: `route` was reached; `matched` is whether its conditions on the
        request hold (None: its conditions on the caller failed, the request is not read)."""

    def route_result(self, choice: RouteChoice | None) -> None:
        """The route taken (None: the destination is left alone)."""


def identity_choices(
    routes: tuple[Route, ...],
    claims: Mapping[str, Any] | None,
    trace: RouteTrace | None = None,
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
            if trace is not None:
                trace.route_caller(route, True, choices[index])
            if not match.reads_request:
                # This route takes every request of this caller: no later route is ever
                # reached (`route_for` stops here), so their choices (and split hashes) are
                # not worked out.
                break
        elif trace is not None:
            trace.route_caller(route, False, None)
    return tuple(choices)


def route_for(
    routes: tuple[Route, ...],
    request: RequestView,
    choices: tuple[RouteChoice | None, ...],
    trace: RouteTrace | None = None,
) -> RouteChoice | None:
    """The first route whose conditions on the caller held (`choices`) and whose conditions
    on the request hold, or None to leave the destination as it is."""
    for route, choice in zip(routes, choices, strict=True):
        if choice is not None:
            conditions = route.match.request
            if conditions.empty or conditions.matches(request):
                if trace is not None:
                    trace.route_request(route, choice, True)
                    trace.route_result(choice)
                return choice
            if trace is not None:
                trace.route_request(route, choice, False)
        elif trace is not None:
            trace.route_request(route, None, None)
    if trace is not None:
        trace.route_result(None)
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


def _parse_by(value: Any, loc: Loc) -> tuple[ClaimPath, ...]:
    """`by` or `fallback_by`: one claim path (a string), or a list of claim paths, each a
    string or a list of segments (`[tenant, sub]`, `[[kubernetes.io, namespace], sub]`)."""
    if not isinstance(value, list):
        return (parse_claim_path(value, loc),)
    if not value:
        raise loc.error("needs at least one claim path")
    paths: list[ClaimPath] = []
    for index, item in enumerate(value):
        path = parse_claim_path(item, loc / index)
        if path in paths:
            raise (loc / index).error(f"claim {format_claim_path(path)!r} is listed twice")
        paths.append(path)
    return tuple(paths)


def _parse_split(value: Any, loc: Loc) -> Split:
    spec = schema.mapping(value, loc, allowed=("by", "fallback_by", "salt", "to"), required=("to",))
    by = _parse_by(spec.get("by", "sub"), loc / "by")
    fallback_by: tuple[ClaimPath, ...] = ()
    if "fallback_by" in spec:
        fallback_by = _parse_by(spec["fallback_by"], loc / "fallback_by")
        if fallback_by == by:
            raise (loc / "fallback_by").error("is the same as by")
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
    return Split(by, salt, tuple(targets), tuple(boundaries), fallback_by)


def _parse_cohort_header(value: Any, loc: Loc) -> str:
    # The loader also refuses reserved headers, token headers and claim headers (policy.load).
    header = schema.header_name(value, loc)
    if header == BAGGAGE_HEADER:
        raise loc.error("'baggage' cannot be the cohort header; use baggage: true")
    return header


def parse_routes(value: Any, loc: Loc) -> tuple[Route, ...]:
    """Validate the `routes` section (raises PolicyError with key path and line)."""
    routes: list[Route] = []
    names: set[str] = set()
    for index, item in enumerate(schema.sequence(value, loc)):
        item_loc = loc / index
        spec = schema.mapping(
            item, item_loc, required=("name",),
            allowed=("name", "match", "upstream", "split", "preserve_host", "cohort_header",
                     "baggage"),
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
                cohort_header=(
                    _parse_cohort_header(spec["cohort_header"], item_loc / "cohort_header")
                    if "cohort_header" in spec
                    else None
                ),
                baggage=schema.boolean(spec.get("baggage", False), item_loc / "baggage"),
            )
        )
    return tuple(routes)
