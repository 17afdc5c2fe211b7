"""Scenario files: YAML in, validated frozen dataclasses out.

The contract is docs/scenarios-contract.md (version 1); scenarios/README.md lists what the
runner adds to it (step kinds, expectation filters, per-population mix). Every mistake is a
`PolicyError` naming the file, the key path and the line, like the policy loader's. Policies
are kept as parsed YAML (plus their `Loc`) until the world knows the real ports: `${...}`
references are checked here and substituted by `substitute` once values exist.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from claimroute.config import readers as schema
from claimroute.config.source import Loc, load_yaml_file
from claimroute.errors import PolicyError
from claimroute.policy.routes import parse_upstream
from claimroute_tools.lab.echo import Misbehaviour
from claimroute_tools.lab.issuer import HMAC_SIZES, SUPPORTED_ALGS, TAMPERS
from claimroute_tools.lab.jwks_server import MODES
from claimroute_tools.scenario.comparisons import (
    default_comparisons,
    referenced_upstream,
    split_routes,
)
from claimroute_tools.scenario.pacing import MAX_RATE, parse_rate
from claimroute_tools.scenario.templates import Body, Text, has_claim, parse_body, parse_text
from claimroute_tools.scenario.tokenspec import (
    MINTING_KEYS,
    ExternalIssuer,
    TokenSource,
    parse_external,
    parse_token_source,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
METHOD_RE = re.compile(r"^[A-Z]+$")
# `$${` is a literal `${`; `${a.b.c}` a reference; a `${` without `}` an error.
REFERENCE_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
STEP_ACTIONS = (
    "rotate_keys",
    "stop_jwks",
    "start_jwks",
    "jwks_mode",
    "change_policy",
    "pause",
)
ISSUER_ACTIONS = ("rotate_keys", "stop_jwks", "start_jwks", "jwks_mode")
HTTP_ONLY_ACTIONS = ("stop_jwks", "start_jwks", "jwks_mode")
NO_UPSTREAM = "none"

type Serve = Literal["http", "file"]
type ExpectKind = Literal["outcome", "sticky", "formula", "log", "analysis"]

MAX_REQUESTS = 1_000_000  # traffic.requests, in the file or as --requests
MAX_CONCURRENCY = 512
MIN_DURATION, MAX_DURATION = 0.1, 3600.0  # traffic.duration, seconds
BUDGET_MARGIN = 60.0  # a duration run's default time budget: the duration plus this


@dataclass(frozen=True, slots=True)
class IssuerSpec:
    """A test identity provider: its key type, how its keys reach the addon, its claims."""

    name: str
    alg: str
    serve: Serve
    issuer: str | None  # the `iss` value; None keeps TestIssuer's default https://NAME.test
    audience: str | tuple[str, ...] | None
    # A real identity provider (docs/external-tokens.md): no keys are made, nothing is minted.
    external: ExternalIssuer | None = None


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """One upstream: an echo server the runner starts (`url` None), or a URL it does not."""

    name: str
    url: str | None = None  # external: `http(s)://host[:port]`, as a policy route writes it
    echo: Misbehaviour = field(default_factory=Misbehaviour)  # echo upstreams only
    probe: str = "/"  # the path the start-up probe asks
    loc: Loc | None = field(default=None, compare=False, repr=False)  # for probe errors

    @property
    def external(self) -> bool:
        """True for a URL the runner does not start (its records are not visible)."""
        return self.url is not None


@dataclass(frozen=True, slots=True)
class ServedBy:
    """Where an external upstream's answer says who served it: a header or a JSON field.

    `values` maps what it says to an upstream name (`{v1: primary}`); without it the value
    itself is the name. A value that maps to no upstream names nobody.
    """

    header: str | None = None
    json: tuple[str, ...] | None = None  # a field of the JSON body; `a.b` is nested
    values: Mapping[str, str] | None = None
    loc: Loc | None = field(default=None, compare=False, repr=False)

    @property
    def source(self) -> str:
        """`header x-version` or `JSON field build.version`, for messages."""
        if self.header is not None:
            return f"header {self.header}"
        return f"JSON field {'.'.join(self.json or ())}"

    def name_for(self, value: str) -> str | None:
        """The upstream a served_by value names (None: none)."""
        return self.values.get(value) if self.values is not None else value


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """A claimroute proxy the user started; the runner sends traffic through it."""

    url: str  # `http://host:port`
    decision_log: Path | None = None  # its claimroute_log file
    policy_file: Path | None = None  # its claimroute policy file (change_policy writes it)
    install_policy: bool = False  # write the scenario's policy there at start (and restore)
    reload_wait: float = 3.0  # a fixed settle time after writing its policy file
    metrics: str | None = None  # its /metrics URL, if it has one
    loc: Loc | None = None  # of the `proxy:` key, for errors found at start


@dataclass(frozen=True, slots=True)
class RequestKind:
    """One entry of a traffic mix: a request template (docs/traffic.md)."""

    method: str
    path: str  # as written; `template` is its parsed form
    weight: int
    headers: tuple[tuple[str, Text], ...] = ()  # header values are templates
    body: Body | None = None  # a JSON body (any YAML value), its strings templates
    template: Text | None = None  # the parsed path; None: `path` has no placeholder

    @property
    def has_fields(self) -> bool:
        """True when something of this request is filled in per user."""
        return bool(
            (self.template is not None and self.template.fields)
            or any(value.fields for _, value in self.headers)
            or (self.body is not None and self.body.fields)
        )


@dataclass(frozen=True, slots=True)
class Population:
    """A group of synthetic users; each user gets one token (none when `issuer` is None)."""

    name: str
    count: int
    issuer: str | None
    claims: dict[str, Any]
    tamper: str | None
    sub: str  # template: `{name}` and `{i}` (1-based index) are replaced
    mix: tuple[RequestKind, ...] | None  # None: the traffic mix
    headers: tuple[tuple[str, str], ...]
    token_source: TokenSource | None = None  # tokens from elsewhere (an external issuer's)

    @property
    def anonymous(self) -> bool:
        """True for `token: none`."""
        return self.issuer is None


@dataclass(frozen=True, slots=True)
class PolicySource:
    """A policy before substitution: the parsed YAML and where it came from."""

    document: Any
    loc: Loc
    base: Path  # folder that relative key files resolve against
    origin: str  # the file, or "<scenario>: policy" for an inline policy

    def route_names(self) -> set[str]:
        """Names of the routes this policy declares (best effort, for early checks)."""
        routes = self.document.get("routes") if isinstance(self.document, dict) else None
        if not isinstance(routes, list):
            return set()
        return {r["name"] for r in routes if isinstance(r, dict) and isinstance(r.get("name"), str)}


@dataclass(frozen=True, slots=True)
class Traffic:
    """How many requests (or for how long), how fast, to what."""

    requests: int | None  # None: `duration` says when to stop
    concurrency: int  # requests in flight; with `rate`, the cap on them
    seed: int
    mix: tuple[RequestKind, ...]
    time_budget: float  # seconds for the whole run, steps included (the hard stop)
    request_timeout: float
    rate: float | None = None  # requests per second (open model); None: closed loop
    duration: float | None = None  # seconds of traffic (steps excluded), instead of requests


@dataclass(frozen=True, slots=True)
class Step:
    """One timeline step, run when `at` of the requests have completed."""

    ordinal: int  # position in the sorted timeline
    name: str
    at: float  # fraction of the requests, 0..1
    action: str
    issuer: str | None = None
    mode: str | None = None  # jwks_mode
    seconds: float | None = None  # pause
    keep_old: bool = False  # rotate_keys: keep publishing the old key
    remint: bool | tuple[str, ...] = True  # rotate_keys: who gets a fresh token
    policy: PolicySource | None = None  # change_policy
    wait: float = 15.0  # change_policy: how long to wait for the addon to reload
    line: int | None = None

    def index(self, total: int) -> int:
        """The request index at which this step runs (requests before it have completed)."""
        return min(total, max(0, round(self.at * total)))


@dataclass(frozen=True, slots=True)
class Expectation:
    """One line of `expect:`: a selection of requests and what must hold for it."""

    text: str  # the line as written, for reports
    line: int | None
    kind: ExpectKind
    users: tuple[str, ...] | None = None
    route: str | None = None
    after_step: str | None = None
    before_step: str | None = None
    method: str | None = None
    path: str | None = None  # prefix
    upstream: str | None = None  # a name, or "none"
    status: tuple[int, ...] | None = None
    share: float | None = None
    tolerance: float | None = None
    min_share: float | None = None
    max_share: float | None = None
    log: str | None = None
    at_least: int | None = None
    at_most: int | None = None
    analysis: str | None = None  # the comparison's name (kind "analysis")
    max_error_rate_increase: float | None = None  # canary minus baseline, as a fraction
    max_p95_ratio: float | None = None  # canary p95 / baseline p95
    min_requests: int | None = None  # per side


@dataclass(frozen=True, slots=True)
class AnalysisSpec:
    """One comparison of `analysis:`: a canary upstream against a baseline upstream."""

    name: str
    canary: str
    baseline: str
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    """A whole validated scenario file."""

    path: Path
    name: str
    description: str
    issuers: dict[str, IssuerSpec]
    upstreams: tuple[str, ...]
    policy: PolicySource
    users: tuple[Population, ...]
    traffic: Traffic
    steps: tuple[Step, ...]
    expectations: tuple[Expectation, ...] = field(default=())
    analysis: tuple[AnalysisSpec, ...] = field(default=())  # declared comparisons (none: defaults)
    # Every upstream in file order (names as in `upstreams`); empty: echo servers by name.
    upstream_specs: tuple[UpstreamSpec, ...] = field(default=())
    served_by: ServedBy | None = None  # how external upstreams say who answered
    proxy: ProxySpec | None = None  # None: the runner starts mitmdump itself

    def upstream_spec(self, name: str) -> UpstreamSpec:
        """The spec of upstream `name` (a plain echo server when none was given)."""
        for spec in self.upstream_specs:
            if spec.name == name:
                return spec
        return UpstreamSpec(name)

    def with_overrides(
        self,
        *,
        requests: int | None = None,
        concurrency: int | None = None,
        seed: int | None = None,
        duration: float | None = None,
        rate: float | None = None,
    ) -> Scenario:
        """A copy with traffic settings replaced; None keeps the value. The overrides must
        keep the file's limits (ValueError otherwise). `requests` replaces the file's
        `duration` and `duration` its `requests`; a duration longer than the time budget
        raises the budget to the duration plus a minute."""
        if requests is not None and not 1 <= requests <= MAX_REQUESTS:
            raise ValueError(f"requests must be between 1 and {MAX_REQUESTS:,}")
        if concurrency is not None and not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be between 1 and {MAX_CONCURRENCY}")
        if requests is not None and duration is not None:
            raise ValueError("give requests or a duration, not both")
        if duration is not None and not MIN_DURATION <= duration <= MAX_DURATION:
            raise ValueError(f"a duration must be between {MIN_DURATION:g}s and 1h")
        if rate is not None and not 0 < rate <= MAX_RATE:
            raise ValueError(f"a rate must be above 0 and at most {MAX_RATE:g}/s")
        old = self.traffic
        traffic = dataclasses.replace(
            old,
            requests=requests if requests is not None else None if duration else old.requests,
            duration=duration if duration is not None else None if requests else old.duration,
            concurrency=concurrency if concurrency is not None else old.concurrency,
            seed=seed if seed is not None else old.seed,
            rate=rate if rate is not None else old.rate,
            time_budget=old.time_budget
            if duration is None
            else max(old.time_budget, duration + BUDGET_MARGIN),
        )
        return dataclasses.replace(self, traffic=traffic)


# -- substitution ----------------------------------------------------------------------------


def reference_names(issuers: Mapping[str, IssuerSpec], upstreams: tuple[str, ...]) -> list[str]:
    """Every `${...}` a policy of this scenario may use."""
    names: list[str] = []
    for spec in issuers.values():
        names.append(f"issuers.{spec.name}.issuer")
        names.append(f"issuers.{spec.name}.jwks_{'url' if spec.serve == 'http' else 'file'}")
    names += [f"upstreams.{name}.url" for name in upstreams]
    return names


def _hint(name: str, issuers: Mapping[str, IssuerSpec]) -> str:
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "issuers" and parts[1] in issuers:
        spec = issuers[parts[1]]
        if parts[2] == "jwks_file" and spec.external is not None:
            return f" (issuer {spec.name!r} is external; its keys are at jwks_url)"
        if parts[2] == "jwks_url" and spec.serve == "file":
            return f" (issuer {spec.name!r} has serve: file; use jwks_file, or serve: http)"
        if parts[2] == "jwks_file" and spec.serve == "http":
            return f" (issuer {spec.name!r} is served over http; use jwks_url, or serve: file)"
    return ""


def substitute(
    value: Any,
    loc: Loc,
    values: Mapping[str, str],
    issuers: Mapping[str, IssuerSpec] | None = None,
) -> Any:
    """`value` with every `${name}` in its strings replaced from `values`.

    Mapping keys are left alone. An unknown or unterminated reference is a PolicyError at its
    key path and line, naming the reference and listing the known ones.
    """
    if isinstance(value, str):
        return _substitute_text(value, loc, values, issuers or {})
    if isinstance(value, dict):
        return {k: substitute(v, loc / k, values, issuers) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, loc / i, values, issuers) for i, v in enumerate(value)]
    return value


def _substitute_text(
    text: str, loc: Loc, values: Mapping[str, str], issuers: Mapping[str, IssuerSpec]
) -> str:
    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        name = match.group(1)
        if name is None:
            raise loc.error(f"unterminated reference in {text!r} (write $${{ for a literal ${{)")
        name = name.strip()
        if name not in values:
            known = ", ".join(f"${{{k}}}" for k in values) or "none"
            raise loc.error(f"unknown reference ${{{name}}}{_hint(name, issuers)}; known: {known}")
        return values[name]

    return REFERENCE_RE.sub(replace, text)


# -- small readers ---------------------------------------------------------------------------


def _name(value: Any, loc: Loc) -> str:
    text = schema.string(value, loc)
    if not NAME_RE.match(text):
        raise loc.error(f"{text!r} is not a valid name (letters, digits, '_', '-', '.')")
    return text


def _fraction(value: Any, loc: Loc, what: str) -> float:
    """`50%` or a number in [0, 1]."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            number = float(value.strip()[:-1])
        except ValueError:
            raise loc.error(f"expected {what} such as 50% or 0.5, got {value!r}") from None
        number /= 100
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        raise loc.error(f"expected {what} such as 50% or 0.5, got {value!r}")
    if not 0 <= number <= 1:
        raise loc.error(f"{what} must be between 0% and 100% (0 and 1), got {value!r}")
    return number


def _brief(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_brief(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_brief(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# Headers the runner (or aiohttp, for the body) sets itself: a template may not set them.
RUNNER_HEADERS = ("authorization", "host", "x-claimroute-scenario-request")
CLIENT_HEADERS = ("content-length", "transfer-encoding")


def _mix(value: Any, loc: Loc) -> tuple[RequestKind, ...]:
    """A traffic mix: request templates (docs/traffic.md) picked by weight."""
    kinds = []
    allowed = ("method", "path", "weight", "headers", "body")
    for index, item in enumerate(schema.sequence(value, loc, non_empty=True)):
        item_loc = loc / index
        spec = schema.mapping(item, item_loc, allowed=allowed, required=("path",))
        method = schema.string(spec.get("method", "GET"), item_loc / "method").upper()
        if not METHOD_RE.match(method):
            raise (item_loc / "method").error(f"{method!r} is not an HTTP method")
        path = schema.string(spec["path"], item_loc / "path")
        if not path.startswith("/"):
            raise (item_loc / "path").error("a path starts with '/'")
        template = parse_text(path, item_loc / "path")
        if not template.fields:  # only `{{` escapes, if anything: the path as sent
            path = "".join(part for part in template.parts if isinstance(part, str))
        weight = schema.integer(spec.get("weight", 1), item_loc / "weight", minimum=1)
        headers = []
        for key, text in schema.mapping(spec.get("headers", {}), item_loc / "headers").items():
            where = item_loc / "headers" / key
            name = schema.header_name(key, where)
            if name in RUNNER_HEADERS:
                raise where.error(f"header {key!r} is set by the runner")
            if name in CLIENT_HEADERS:
                raise where.error(f"header {key!r} is set by the HTTP client from the body")
            value_text = schema.string(text, where, non_empty=False)
            if any(c in value_text for c in "\r\n\0"):
                raise where.error("a header value cannot hold CR, LF or NUL")
            headers.append((key, parse_text(value_text, where)))
        body = parse_body(spec["body"], item_loc / "body") if "body" in spec else None
        kinds.append(
            RequestKind(
                method,
                path,
                weight,
                headers=tuple(headers),
                body=body,
                template=template if template.fields else None,
            )
        )
    return tuple(kinds)


def _check_claim_fields(
    mix: tuple[RequestKind, ...],
    name: str,
    claims: Mapping[str, Any],
    anonymous: bool,
    loc: Loc | None = None,
) -> None:
    """Every `{claims.X}` of `mix` names a claim every user of population `name` has (the
    claims are fixed at load, so this is known before the run). `loc`: where the population
    is, for the message when the mix is the traffic's."""
    for kind in mix:
        texts = [
            *((kind.template,) if kind.template is not None else ()),
            *(value for _, value in kind.headers),
        ]
        fields = [f for text in texts for f in text.fields]
        fields += list(kind.body.fields) if kind.body is not None else []
        for found in fields:
            path = found.claim_path
            if path is None or has_claim(claims, path):
                continue
            whose = f"population {name!r}"
            if loc is not None:
                whose += f" (line {loc.line})"
            what = "is anonymous (token: none)" if anonymous else "has no such claim"
            raise found.loc.error(
                f"{{{found.name}}}: {whose} {what}; its claims: "
                f"{', '.join(claims) or 'none'}" + (" (give it its own mix)" if loc else "")
            )


def check_templates(traffic: Traffic, users: tuple[Population, ...], loc: Loc) -> None:
    """The traffic mix's `{claims.X}` against every population that uses it (PolicyError)."""
    for index, population in enumerate(users):
        if population.mix is None:
            _check_claim_fields(
                traffic.mix, population.name, population.claims, population.anonymous, loc / index
            )


# -- sections --------------------------------------------------------------------------------


def _issuers(value: Any, loc: Loc) -> dict[str, IssuerSpec]:
    specs = schema.mapping(value, loc)
    if not specs:
        raise loc.error("needs at least one issuer")
    out: dict[str, IssuerSpec] = {}
    for name, item in specs.items():
        item_loc = loc / name
        _name(name, item_loc)
        spec = schema.mapping(
            item if item is not None else {},
            item_loc,
            allowed=("alg", "serve", "issuer", "audience", "external"),
        )
        if "external" in spec:
            for key in ("alg", "serve", "issuer", "audience"):
                if key in spec:
                    raise (item_loc / key).error(
                        f"an external issuer has no {key} here: its keys and tokens are the "
                        "provider's (write issuer inside external: without discovery)"
                    )
            external = parse_external(spec["external"], item_loc / "external")
            out[name] = IssuerSpec(name, "external", "http", None, None, external=external)
            continue
        alg = schema.choice(spec.get("alg", "RS256"), item_loc / "alg", SUPPORTED_ALGS)
        serve = schema.choice(spec.get("serve", "http"), item_loc / "serve", ("http", "file"))
        if serve == "http" and alg in HMAC_SIZES:
            raise (item_loc / "serve").error(
                f"{alg} keys are shared secrets and are never served over HTTP; use serve: file"
            )
        issuer = schema.string(spec["issuer"], item_loc / "issuer") if "issuer" in spec else None
        audience: str | tuple[str, ...] | None = None
        if "audience" in spec:
            raw = spec["audience"]
            audience = (
                schema.string_list(raw, item_loc / "audience", non_empty=True)
                if isinstance(raw, list)
                else schema.string(raw, item_loc / "audience")
            )
        out[name] = IssuerSpec(name, alg, serve, issuer, audience)  # type: ignore[arg-type]
    return out


_ECHO_KEYS = ("latency_ms", "jitter_ms", "error_rate", "error_status")


def _echo(value: Any, loc: Loc) -> Misbehaviour:
    """`echo: {latency_ms, jitter_ms, error_rate, error_status}` (all optional)."""
    spec = schema.mapping(value if value is not None else {}, loc, allowed=_ECHO_KEYS)
    times = {}
    for key in ("latency_ms", "jitter_ms"):
        number = schema.number(spec.get(key, 0), loc / key)
        if not 0 <= number <= 60_000:
            raise (loc / key).error("must be between 0 and 60000 (milliseconds)")
        times[key] = number
    rate = _fraction(spec.get("error_rate", 0), loc / "error_rate", "an error rate")
    status = schema.integer(spec.get("error_status", 503), loc / "error_status", minimum=100,
                            maximum=599)  # fmt: skip
    return Misbehaviour(times["latency_ms"], times["jitter_ms"], rate, status)


def _upstream(name: str, value: Any, loc: Loc, name_loc: Loc) -> UpstreamSpec:
    """One upstream's settings: `echo: {...}` (or nothing) or `url: ...` (with `probe`)."""
    _name(name, name_loc)
    if name == NO_UPSTREAM:
        raise name_loc.error("'none' is reserved (it means: no upstream answered)")
    keys = ("echo", "url", "probe", *(("name",) if name_loc != loc else ()))
    spec = schema.mapping(value if value is not None else {}, loc, allowed=keys)
    if "url" in spec and "echo" in spec:
        raise loc.error("an upstream is either `url:` (yours) or `echo:` (the runner's), not both")
    if "url" not in spec:
        if "probe" in spec:
            raise (loc / "probe").error("probe only goes with url (echo servers are known)")
        return UpstreamSpec(name, echo=_echo(spec.get("echo"), loc / "echo"), loc=loc)
    url = parse_upstream(spec["url"], loc / "url").url
    probe = schema.string(spec.get("probe", "/"), loc / "probe")
    if not probe.startswith("/"):
        raise (loc / "probe").error("a path starts with '/'")
    return UpstreamSpec(name, url=url, probe=probe, loc=loc)


def _upstreams(value: Any, loc: Loc) -> tuple[UpstreamSpec, ...]:
    """A list (`[primary, {name: canary, echo: {...}}]`) or a mapping (`{primary: {url: ...}}`)."""
    if isinstance(value, dict):
        if not value:
            raise loc.error("needs at least one upstream")
        specs = [_upstream(str(k), v, loc / k, loc / k) for k, v in value.items()]
    else:
        specs = []
        for index, item in enumerate(schema.sequence(value, loc, non_empty=True)):
            if isinstance(item, dict):
                schema.mapping(item, loc / index, required=("name",))
                name = schema.string(item["name"], loc / index / "name")
                specs.append(_upstream(name, item, loc / index, loc / index / "name"))
            else:
                name = schema.string(item, loc / index)
                specs.append(_upstream(name, None, loc / index, loc / index))
    seen: set[str] = set()
    origins: dict[tuple[str, str, int], str] = {}
    for index, spec in enumerate(specs):
        where = loc / spec.name if isinstance(value, dict) else loc / index
        if spec.name in seen:
            raise where.error(f"upstream {spec.name!r} is listed twice")
        seen.add(spec.name)
        # The decision log names an upstream by its origin: two at one origin would be one.
        origin = upstream_origin(spec.url) if spec.url is not None else None
        if origin is not None:
            if origin in origins:
                raise (where / "url").error(
                    f"{spec.url} is the same address as upstream {origins[origin]!r}: the "
                    "proxy's decision log could not tell them apart (give each its own "
                    "host or port)"
                )
            origins[origin] = spec.name
    return tuple(specs)


def upstream_origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an upstream URL, so `http://localhost:80/` matches
    `http://127.0.0.1` as the addon logs it; None for something that is no URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if host == "localhost":
        host = "127.0.0.1"
    return (parts.scheme.lower(), host, port) if host else None


def _served_by(value: Any, loc: Loc, upstreams: tuple[UpstreamSpec, ...]) -> ServedBy:
    """`served_by: {header: x-version | json: build.version, values: {v1: primary}}`."""
    spec = schema.mapping(value, loc, allowed=("header", "json", "values"))
    if ("header" in spec) == ("json" in spec):
        raise loc.error("give exactly one of header (a response header) or json (a body field)")
    if not any(u.external for u in upstreams):
        raise loc.error("served_by is for url upstreams; echo upstreams always say their name")
    header = schema.header_name(spec["header"], loc / "header") if "header" in spec else None
    path = None
    if "json" in spec:
        text = schema.string(spec["json"], loc / "json")
        path = tuple(text.split("."))
        if not all(path):
            raise (loc / "json").error(f"{text!r} is not a field path such as build.version")
    values = None
    names = {u.name for u in upstreams}
    if "values" in spec:
        raw = schema.mapping(spec["values"], loc / "values")
        if not raw:
            raise (loc / "values").error("must map at least one value to an upstream")
        values = {}
        for key, name in raw.items():
            name = schema.string(name, loc / "values" / key)
            if name not in names:
                raise (loc / "values" / key).error(
                    f"{key!r} names no upstream: {name!r} (declared: {', '.join(sorted(names))})"
                )
            values[str(key)] = name
    return ServedBy(header, path, values, loc)


def _proxy(value: Any, loc: Loc, base: Path, has_policy: bool) -> ProxySpec:
    """`proxy: {url, decision_log, policy_file, reload_wait, metrics}`: the user's own proxy."""
    spec = schema.mapping(
        value,
        loc,
        allowed=("url", "decision_log", "policy_file", "reload_wait", "metrics"),
        required=("url",),
    )
    url = parse_upstream(spec["url"], loc / "url").url
    paths: dict[str, Path] = {}
    for key in ("decision_log", "policy_file"):
        if key in spec:
            paths[key] = (base / schema.string(spec[key], loc / key)).resolve()
    if "policy_file" in paths and not paths["policy_file"].is_file():
        raise (loc / "policy_file").error(f"no such file: {paths['policy_file']}")
    if not has_policy and "policy_file" not in paths:
        raise loc.error(
            "with your own proxy, give proxy.policy_file (the policy file it runs) or the "
            "scenario's policy / policy_file (the policy it runs, for route checks)"
        )
    wait = schema.duration(spec.get("reload_wait", "3s"), loc / "reload_wait")
    if not 0 <= wait <= 300:
        raise (loc / "reload_wait").error("must be between 0s and 300s")
    metrics = None
    if "metrics" in spec:
        metrics = schema.string(spec["metrics"], loc / "metrics")
        if not metrics.startswith(("http://", "https://")):
            raise (loc / "metrics").error(
                "expected the URL of its /metrics, http://host:port/metrics"
            )
        try:
            credentials = "@" in (urlsplit(metrics).netloc or "")
        except ValueError:
            raise (loc / "metrics").error(f"not a URL: {metrics!r}") from None
        if credentials:
            # The URL is written to report.json: no user or password in it (as the others).
            raise (loc / "metrics").error(
                "no credentials in the metrics URL (it is written to the report); "
                "expected http://host:port/metrics"
            )
    return ProxySpec(
        url,
        decision_log=paths.get("decision_log"),
        policy_file=paths.get("policy_file"),
        install_policy=has_policy and "policy_file" in paths,
        reload_wait=wait,
        metrics=metrics,
        loc=loc,
    )


def _policy(spec: dict[str, Any], loc: Loc, base: Path) -> PolicySource:
    """The `policy:` / `policy_file:` pair of a mapping (the scenario, or a change_policy step)."""
    if ("policy" in spec) == ("policy_file" in spec):
        raise loc.error("give exactly one of policy (inline) or policy_file")
    if "policy" in spec:
        document = spec["policy"]
        schema.mapping(document, loc / "policy")
        return PolicySource(document, loc / "policy", base, f"{loc.file}: policy")
    name = schema.string(spec["policy_file"], loc / "policy_file")
    path = (base / name).resolve()
    if not path.is_file():
        raise (loc / "policy_file").error(f"no such file: {path}")
    document, root = load_yaml_file(path)
    schema.mapping(document, root)
    return PolicySource(document, root, path.parent, str(path))


def _users(value: Any, loc: Loc, issuers: Mapping[str, IssuerSpec]) -> tuple[Population, ...]:
    out: list[Population] = []
    names: set[str] = set()
    allowed = ("name", "count", "issuer", "claims", "tamper", "token", "sub", "mix", "headers")
    for index, item in enumerate(schema.sequence(value, loc, non_empty=True)):
        item_loc = loc / index
        spec = schema.mapping(item, item_loc, allowed=allowed, required=("name",))
        name = _name(spec["name"], item_loc / "name")
        if name in names:
            raise (item_loc / "name").error(f"population {name!r} is declared twice")
        names.add(name)
        count = schema.integer(spec.get("count", 1), item_loc / "count", minimum=1, maximum=100_000)
        anonymous = False
        source = None
        if isinstance(spec.get("token"), dict):
            source = parse_token_source(spec["token"], item_loc / "token")
        elif "token" in spec:
            if spec["token"] is not None and spec["token"] != "none":
                raise (item_loc / "token").error(
                    "expected `token: none`, or a token source: {grant: ...}, {file: ...} or "
                    "{command: [...]} (docs/external-tokens.md)"
                )
            anonymous = True
        issuer = None
        if anonymous:
            for key in ("issuer", "claims", "tamper", "sub"):
                if key in spec:
                    raise (item_loc / key).error(
                        f"an anonymous population (token: none) has no {key}"
                    )
        else:
            if "issuer" not in spec:
                raise item_loc.error("missing required key 'issuer' (or `token: none`)")
            issuer = schema.string(spec["issuer"], item_loc / "issuer")
            if issuer not in issuers:
                known = ", ".join(issuers)
                raise (item_loc / "issuer").error(f"unknown issuer {issuer!r} (declared: {known})")
            _check_token_source(issuers[issuer], source, spec, item_loc)
        claims = schema.mapping(spec.get("claims", {}), item_loc / "claims")
        tamper = None
        if spec.get("tamper") is not None:
            tamper = schema.choice(spec["tamper"], item_loc / "tamper", TAMPERS)
            if tamper == "hs256_public_key" and issuer is not None:
                alg = issuers[issuer].alg
                if alg in HMAC_SIZES:
                    raise (item_loc / "tamper").error(
                        f"hs256_public_key signs with the issuer's public key, and issuer "
                        f"{issuer!r} ({alg}) has none; use an RS, ES or EdDSA issuer"
                    )
        sub = schema.string(spec.get("sub", "{name}-{i}"), item_loc / "sub")
        mix = _mix(spec["mix"], item_loc / "mix") if "mix" in spec else None
        if mix is not None:
            _check_claim_fields(mix, name, claims, anonymous)
        headers_spec = schema.mapping(spec.get("headers", {}), item_loc / "headers")
        headers = tuple(
            (k, schema.string(v, item_loc / "headers" / k, non_empty=False))
            for k, v in headers_spec.items()
        )
        for key, _ in headers:
            if key.lower() in ("authorization", "host", "x-claimroute-scenario-request"):
                raise (item_loc / "headers" / key).error(f"header {key!r} is set by the runner")
        out.append(
            Population(name, count, issuer, claims, tamper, sub, mix, headers, token_source=source)
        )
    return tuple(out)


def _check_token_source(
    issuer: IssuerSpec, source: TokenSource | None, spec: dict[str, Any], loc: Loc
) -> None:
    """An external issuer's population has a token source and nothing that shapes minted
    tokens; a test issuer's population has no token source (the runner mints its tokens)."""
    if issuer.external is None:
        if source is not None:
            raise (loc / "token").error(
                f"issuer {issuer.name!r} is a test issuer: the runner mints its tokens; a token "
                "source needs an issuer with external: (docs/external-tokens.md)"
            )
        return
    if source is None:
        raise (loc / "issuer").error(
            f"issuer {issuer.name!r} is external: give the population a token source, "
            "token: {grant: client_credentials | password, ...}, {file: ...} or {command: [...]}"
        )
    for key in MINTING_KEYS:
        if key in spec:
            raise (loc / key).error(
                f"{key} shapes tokens the runner mints; issuer {issuer.name!r} is external and "
                "its tokens are the provider's (sub and claims are read from each token)"
            )
    if source.grant and issuer.external.discovery is None and not issuer.external.token_endpoint:
        raise (loc / "token" / "grant").error(
            f"the {source.kind} grant needs a token endpoint: issuer {issuer.name!r} has no "
            "external.token_endpoint (or use external.discovery)"
        )


def _traffic(value: Any, loc: Loc) -> Traffic:
    allowed = ("requests", "duration", "rate", "concurrency", "seed", "mix", "time_budget",
               "request_timeout")  # fmt: skip
    spec = schema.mapping(value, loc, allowed=allowed)
    if ("requests" in spec) == ("duration" in spec):
        where = loc / "duration" if "duration" in spec else loc
        raise where.error("give exactly one of requests (a count) or duration (e.g. 60s)")
    mix = _mix(spec["mix"], loc / "mix") if "mix" in spec else (RequestKind("GET", "/", 1),)
    requests = duration = None
    if "requests" in spec:
        requests = schema.integer(
            spec["requests"], loc / "requests", minimum=1, maximum=MAX_REQUESTS
        )
    else:
        duration = schema.duration(spec["duration"], loc / "duration")
        if not MIN_DURATION <= duration <= MAX_DURATION:
            raise (loc / "duration").error("must be between 100ms and 1h")
    rate = parse_rate(spec["rate"], loc / "rate") if "rate" in spec else None
    # A duration run's default budget leaves a minute for the world and the steps.
    default_budget = max(120.0, (duration or 0) + BUDGET_MARGIN)
    budget = schema.duration(spec.get("time_budget", default_budget), loc / "time_budget")
    timeout = schema.duration(spec.get("request_timeout", "10s"), loc / "request_timeout")
    if "time_budget" in spec and not 1 <= budget <= 3600:
        raise (loc / "time_budget").error("must be between 1s and 1h")
    if duration is not None and budget <= duration:
        raise (loc / "time_budget").error(
            f"the time budget ({budget:g}s, the hard stop) must be longer than the duration "
            f"({duration:g}s)"
        )
    if not 0.1 <= timeout <= 120:
        raise (loc / "request_timeout").error("must be between 100ms and 120s")
    return Traffic(
        requests=requests,
        concurrency=schema.integer(
            spec.get("concurrency", 16), loc / "concurrency", minimum=1, maximum=MAX_CONCURRENCY
        ),
        seed=schema.integer(spec.get("seed", 1), loc / "seed"),
        mix=mix,
        time_budget=budget,
        request_timeout=timeout,
        rate=rate,
        duration=duration,
    )


_STEP_KEYS = {
    "rotate_keys": ("issuer", "keep_old", "remint"),
    "stop_jwks": ("issuer",),
    "start_jwks": ("issuer",),
    "jwks_mode": ("issuer", "mode"),
    "change_policy": ("policy", "policy_file", "wait"),
    "pause": ("seconds",),
}


def _steps(
    value: Any,
    loc: Loc,
    issuers: Mapping[str, IssuerSpec],
    populations: tuple[Population, ...],
    base: Path,
) -> tuple[Step, ...]:
    raw: list[tuple[float, int, Step]] = []
    names: dict[str, Loc] = {}
    for index, item in enumerate(schema.sequence(value, loc)):
        item_loc = loc / index
        head = schema.mapping(item, item_loc, required=("at", "action"))
        action = schema.choice(head["action"], item_loc / "action", STEP_ACTIONS)
        spec = schema.mapping(item, item_loc, allowed=("at", "action", "name", *_STEP_KEYS[action]))
        at = _fraction(spec["at"], item_loc / "at", "a share of the requests")
        name = _name(spec["name"], item_loc / "name") if "name" in spec else None
        kw: dict[str, Any] = {}
        if action in ISSUER_ACTIONS:
            if "issuer" not in spec:
                raise item_loc.error(f"missing required key 'issuer' for {action}")
            issuer = schema.string(spec["issuer"], item_loc / "issuer")
            if issuer not in issuers:
                raise (item_loc / "issuer").error(f"unknown issuer {issuer!r}")
            if issuers[issuer].external is not None:
                raise (item_loc / "issuer").error(
                    f"{action} changes a test issuer the runner runs; {issuer!r} is external "
                    "(its keys and JWKS are the provider's)"
                )
            if action in HTTP_ONLY_ACTIONS and issuers[issuer].serve != "http":
                raise (item_loc / "issuer").error(
                    f"{action} needs an issuer with serve: http ({issuer!r} has serve: file)"
                )
            kw["issuer"] = issuer
        if action == "jwks_mode":
            if "mode" not in spec:
                raise item_loc.error("missing required key 'mode'")
            kw["mode"] = schema.choice(spec["mode"], item_loc / "mode", MODES)
        if action == "pause":
            if "seconds" not in spec:
                raise item_loc.error("missing required key 'seconds'")
            seconds = schema.duration(spec["seconds"], item_loc / "seconds")
            if seconds > 300:
                raise (item_loc / "seconds").error("a pause may last at most 300s")
            kw["seconds"] = seconds
        if action == "rotate_keys":
            kw["keep_old"] = schema.boolean(spec.get("keep_old", False), item_loc / "keep_old")
            remint = spec.get("remint", True)
            if isinstance(remint, list):
                known = {p.name for p in populations}
                names_list = schema.string_list(remint, item_loc / "remint")
                for i, population in enumerate(names_list):
                    if population not in known:
                        raise (item_loc / "remint" / i).error(f"unknown population {population!r}")
                kw["remint"] = names_list
            else:
                kw["remint"] = schema.boolean(remint, item_loc / "remint")
        if action == "change_policy":
            kw["policy"] = _policy(spec, item_loc, base)
            kw["wait"] = schema.duration(spec.get("wait", "15s"), item_loc / "wait")
        default_name = action if name is None else name
        if default_name in names:
            where = names[default_name]
            raise (item_loc / "name").error(
                f"step name {default_name!r} is already used (line {where.line}); give each "
                "step of the same action its own `name:`"
            )
        names[default_name] = item_loc
        step = Step(ordinal=0, name=default_name, at=at, action=action, line=item_loc.line, **kw)
        raw.append((at, index, step))
    raw.sort(key=lambda entry: (entry[0], entry[1]))
    return tuple(dataclasses.replace(step, ordinal=i) for i, (_, _, step) in enumerate(raw))


_OUTCOME_KEYS = ("upstream", "status", "share", "tolerance", "min_share", "max_share")
_FILTER_KEYS = ("users", "route", "after_step", "before_step", "method", "path")


def _status(value: Any, loc: Loc) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise loc.error("must not be an empty list")
    return tuple(
        schema.integer(v, loc / i if isinstance(value, list) else loc, minimum=100, maximum=599)
        for i, v in enumerate(items)
    )


_ANALYSIS_LIMITS = ("max_error_rate_increase", "max_p95_ratio", "min_requests")


def _analysis_expectation(spec: dict[str, Any], loc: Loc, text: str) -> Expectation:
    """`{analysis: NAME, max_error_rate_increase: 0.01, max_p95_ratio: 1.25, min_requests: N}`
    (the name is checked against the comparisons by `_check_analysis_names`)."""
    schema.mapping(spec, loc, allowed=("analysis", *_ANALYSIS_LIMITS))
    kw: dict[str, Any] = {"analysis": schema.string(spec["analysis"], loc / "analysis")}
    if not any(key in spec for key in _ANALYSIS_LIMITS):
        raise loc.error(
            f"an analysis expectation needs at least one of {', '.join(_ANALYSIS_LIMITS)}"
        )
    if "max_error_rate_increase" in spec:
        kw["max_error_rate_increase"] = _fraction(
            spec["max_error_rate_increase"],
            loc / "max_error_rate_increase",
            "an error rate increase",
        )
    if "max_p95_ratio" in spec:
        ratio = schema.number(spec["max_p95_ratio"], loc / "max_p95_ratio")
        if not ratio > 0:
            raise (loc / "max_p95_ratio").error(
                f"must be a ratio above 0 (e.g. 1.25), got {ratio!r}"
            )
        kw["max_p95_ratio"] = ratio
    if "min_requests" in spec:
        kw["min_requests"] = schema.integer(
            spec["min_requests"], loc / "min_requests", minimum=1, maximum=MAX_REQUESTS
        )
    return Expectation(text, loc.line, "analysis", **kw)


def _analysis_specs(value: Any, loc: Loc, upstreams: tuple[str, ...]) -> tuple[AnalysisSpec, ...]:
    """The top-level `analysis:` list: `{name, canary, baseline}`, two declared upstreams."""
    out: list[AnalysisSpec] = []
    names: dict[str, int | None] = {}
    for index, item in enumerate(schema.sequence(value, loc, non_empty=True)):
        item_loc = loc / index
        spec = schema.mapping(
            item, item_loc, allowed=("name", "canary", "baseline"), required=("canary", "baseline")
        )
        sides = {}
        for key in ("canary", "baseline"):
            upstream = schema.string(spec[key], item_loc / key)
            if upstream not in upstreams:
                raise (item_loc / key).error(
                    f"unknown upstream {upstream!r} (declared: {', '.join(upstreams)})"
                )
            sides[key] = upstream
        if sides["canary"] == sides["baseline"]:
            raise (item_loc / "baseline").error("the canary and the baseline are the same upstream")
        default = f"{sides['canary']}-vs-{sides['baseline']}"
        name = schema.string(spec.get("name", default), item_loc / "name")
        if name in names:
            raise (item_loc / "name").error(
                f"comparison {name!r} is declared twice (line {names[name]}); give each a name"
            )
        names[name] = item_loc.line
        out.append(AnalysisSpec(name, sides["canary"], sides["baseline"], item_loc.line))
    return tuple(out)


def _check_analysis_names(
    expectations: tuple[Expectation, ...],
    declared: tuple[AnalysisSpec, ...],
    sources: list[PolicySource],
    root: Loc,
) -> None:
    """Each `analysis:` expectation names a comparison: a declared one or, when none is
    declared, a default one of a split route. A default name whose route has a target written
    as something else than `${upstreams.NAME.url}` is only known when the run starts."""
    if declared:
        known, pending = [spec.name for spec in declared], ()
    else:
        routes: dict[str, list[tuple[str | None, int]]] = {}
        for source in sources:
            for route, targets in split_routes(source.document).items():
                routes.setdefault(route, [(referenced_upstream(t.text), t.weight) for t in targets])
        found, pending = default_comparisons(routes)
        known = [c.name for c in found]
    for index, expectation in enumerate(expectations):
        name = expectation.analysis
        if expectation.kind != "analysis" or name is None or name in known:
            continue
        if any(name.startswith(f"{route}: ") for route in pending):
            continue  # checked when the run starts, once the route's targets have names
        where = root / "expect" / index / "analysis"
        listed = ", ".join(repr(n) for n in known) or "none"
        how = (
            "declared under analysis:"
            if declared
            else "one per split route's targets, as 'ROUTE: CANARY-vs-BASELINE'"
        )
        raise where.error(f"no comparison is called {name!r} ({how}; comparisons: {listed})")


def _expectation(
    item: Any,
    loc: Loc,
    *,
    populations: set[str],
    upstreams: tuple[str, ...],
    steps: tuple[Step, ...],
    routes: set[str],
) -> Expectation:
    spec = schema.mapping(item, loc)
    text = _brief(spec)
    line = loc.line
    if "analysis" in spec:
        return _analysis_expectation(spec, loc, text)
    if "log" in spec:
        schema.mapping(spec, loc, allowed=("log", "at_least", "at_most"))
        pattern = schema.string(spec["log"], loc / "log")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise (loc / "log").error(f"invalid regular expression: {exc}") from None
        bounds = {
            key: schema.integer(spec[key], loc / key, minimum=0)
            for key in ("at_least", "at_most")
            if spec.get(key) is not None
        }
        if not bounds:
            bounds["at_least"] = 1  # `log: X` alone means: X was logged
        return Expectation(text, line, "log", log=pattern, **bounds)
    kw: dict[str, Any] = {}
    if "users" in spec:
        raw = spec["users"]
        names = (
            schema.string_list(raw, loc / "users", non_empty=True)
            if isinstance(raw, list)
            else (schema.string(raw, loc / "users"),)
        )
        for name in names:
            if name not in populations:
                raise (loc / "users").error(
                    f"unknown population {name!r} (declared: {', '.join(sorted(populations))})"
                )
        kw["users"] = names
    if "route" in spec:
        route = schema.string(spec["route"], loc / "route")
        if route not in routes:
            known = ", ".join(sorted(routes)) or "none"
            raise (loc / "route").error(
                f"no policy of this scenario has a route {route!r} (routes: {known})"
            )
        kw["route"] = route
    step_names = {s.name for s in steps}
    for key in ("after_step", "before_step"):
        if key in spec:
            step_name = schema.string(spec[key], loc / key)
            if step_name not in step_names:
                known = ", ".join(s.name for s in steps) or "none"
                raise (loc / key).error(f"no step is called {step_name!r} (steps: {known})")
            kw[key] = step_name
    if "method" in spec:
        kw["method"] = schema.string(spec["method"], loc / "method").upper()
    if "path" in spec:
        kw["path"] = schema.string(spec["path"], loc / "path")
    if "sticky" in spec:
        schema.mapping(spec, loc, allowed=("sticky", *_FILTER_KEYS))
        if schema.boolean(spec["sticky"], loc / "sticky") is not True:
            raise (loc / "sticky").error("only `sticky: true` is meaningful")
        return Expectation(text, line, "sticky", **kw)
    if "formula" in spec:
        schema.mapping(spec, loc, allowed=("formula", *_FILTER_KEYS))
        if schema.boolean(spec["formula"], loc / "formula") is not True:
            raise (loc / "formula").error("only `formula: true` is meaningful")
        if "route" not in kw:
            raise loc.error("formula: true needs a `route:` to check")
        return Expectation(text, line, "formula", **kw)
    schema.mapping(spec, loc, allowed=(*_OUTCOME_KEYS, *_FILTER_KEYS))
    if "upstream" not in spec and "status" not in spec:
        raise loc.error(
            "an expectation needs upstream and/or status (or sticky: true, formula: true, log:)"
        )
    if "upstream" in spec:
        upstream = schema.string(spec["upstream"], loc / "upstream")
        if upstream != NO_UPSTREAM and upstream not in upstreams:
            raise (loc / "upstream").error(
                f"unknown upstream {upstream!r} (declared: {', '.join(upstreams)}, or none)"
            )
        kw["upstream"] = upstream
    if "status" in spec:
        kw["status"] = _status(spec["status"], loc / "status")
    if "share" in spec:
        kw["share"] = _fraction(spec["share"], loc / "share", "a share")
        if "tolerance" not in spec:
            raise loc.error(
                "share needs a tolerance (e.g. tolerance: 0.01); "
                "use min_share/max_share for a bound"
            )
        kw["tolerance"] = _fraction(spec["tolerance"], loc / "tolerance", "a tolerance")
        for bound in ("min_share", "max_share"):
            if bound in spec:
                raise (loc / bound).error("give either share (with tolerance) or min/max_share")
    elif "tolerance" in spec:
        raise (loc / "tolerance").error("tolerance only goes with share")
    for bound in ("min_share", "max_share"):
        if bound in spec:
            kw[bound] = _fraction(spec[bound], loc / bound, "a share")
    return Expectation(text, line, "outcome", **kw)


def _check_external_proxy(proxy: ProxySpec, steps: Any, expect: Any, root: Loc) -> None:
    """What a proxy the runner did not start cannot do: policy steps without its policy file,
    `log:` expectations (the runner never sees that proxy's output). `steps` and `expect` are
    the raw lists, already validated."""
    for index, item in enumerate(steps if isinstance(steps, list) else []):
        if item.get("action") == "change_policy" and proxy.policy_file is None:
            raise (root / "steps" / index / "action").error(
                "change_policy needs proxy.policy_file, the policy file your proxy runs "
                "(its --set claimroute=...)"
            )
    for index, item in enumerate(expect if isinstance(expect, list) else []):
        if isinstance(item, dict) and "log" in item:
            raise (root / "expect" / index / "log").error(
                "log: reads mitmdump's output, which the runner cannot see with your own "
                "proxy (proxy: url); check your proxy's log yourself"
            )


def parse_scenario(document: Any, root: Loc, path: Path) -> Scenario:
    """Validate a parsed scenario document (raises PolicyError with key path and line)."""
    spec = schema.mapping(
        document,
        root,
        allowed=(
            "version",
            "name",
            "description",
            "issuers",
            "upstreams",
            "served_by",
            "proxy",
            "policy",
            "policy_file",
            "users",
            "traffic",
            "steps",
            "expect",
            "analysis",
        ),
        required=("version", "issuers", "upstreams", "users", "traffic", "expect"),
    )
    version = spec["version"]
    if version != 1 or isinstance(version, bool):
        raise (root / "version").error(f"unsupported scenario version {version!r}; expected 1")
    base = path.resolve().parent
    name = _name(spec.get("name", path.stem), root / "name")
    description = schema.string(spec.get("description", ""), root / "description", non_empty=False)
    issuers = _issuers(spec["issuers"], root / "issuers")
    upstream_specs = _upstreams(spec["upstreams"], root / "upstreams")
    upstreams = tuple(u.name for u in upstream_specs)
    served_by = (
        _served_by(spec["served_by"], root / "served_by", upstream_specs)
        if "served_by" in spec
        else None
    )
    has_policy = "policy" in spec or "policy_file" in spec
    proxy = _proxy(spec["proxy"], root / "proxy", base, has_policy) if "proxy" in spec else None
    if proxy is not None and not has_policy:
        assert proxy.policy_file is not None  # _proxy insists on one of the two
        # The proxy's own policy file is the initial policy: read, never rewritten at start.
        policy = _policy({"policy_file": str(proxy.policy_file)}, root / "proxy", base)
    else:
        policy = _policy(spec, root, base)
    traffic = _traffic(spec["traffic"], root / "traffic")
    users = _users(spec["users"], root / "users", issuers)
    check_templates(traffic, users, root / "users")
    steps = _steps(spec.get("steps", []), root / "steps", issuers, users, base)
    if proxy is not None:
        _check_external_proxy(proxy, spec.get("steps"), spec.get("expect"), root)
    sources = [policy, *(s.policy for s in steps if s.policy is not None)]
    placeholders = {ref: f"http://127.0.0.1:1/{ref}" for ref in reference_names(issuers, upstreams)}
    for source in sources:
        substitute(source.document, source.loc, placeholders, issuers)
    routes = set().union(*(source.route_names() for source in sources))
    expectations = tuple(
        _expectation(
            item,
            root / "expect" / i,
            populations={u.name for u in users},
            upstreams=upstreams,
            steps=steps,
            routes=routes,
        )
        for i, item in enumerate(schema.sequence(spec["expect"], root / "expect", non_empty=True))
    )
    analysis = (
        _analysis_specs(spec["analysis"], root / "analysis", upstreams)
        if "analysis" in spec
        else ()
    )
    _check_analysis_names(expectations, analysis, sources, root)
    return Scenario(
        path,
        name,
        description,
        issuers,
        upstreams,
        policy,
        users,
        traffic,
        steps,
        expectations,
        analysis=analysis,
        upstream_specs=upstream_specs,
        served_by=served_by,
        proxy=proxy,
    )


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file. Raises PolicyError naming file, key path and line."""
    path = Path(path)
    document, root = load_yaml_file(path)
    return parse_scenario(document, root, path)


__all__ = [
    "AnalysisSpec",
    "Expectation",
    "IssuerSpec",
    "PolicyError",
    "PolicySource",
    "Population",
    "RequestKind",
    "Scenario",
    "Step",
    "Traffic",
    "load_scenario",
    "parse_scenario",
    "reference_names",
    "substitute",
]
