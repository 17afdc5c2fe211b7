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

from claimroute.config import readers as schema
from claimroute.config.source import Loc, load_yaml_file
from claimroute.errors import PolicyError
from claimroute_tools.lab.issuer import HMAC_SIZES, SUPPORTED_ALGS, TAMPERS
from claimroute_tools.lab.jwks_server import MODES

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
type ExpectKind = Literal["outcome", "sticky", "formula", "log"]

MAX_REQUESTS = 1_000_000  # traffic.requests, in the file or as --requests
MAX_CONCURRENCY = 512


@dataclass(frozen=True, slots=True)
class IssuerSpec:
    """A test identity provider: its key type, how its keys reach the addon, its claims."""

    name: str
    alg: str
    serve: Serve
    issuer: str | None  # the `iss` value; None keeps TestIssuer's default https://NAME.test
    audience: str | tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class RequestKind:
    """One entry of a traffic mix."""

    method: str
    path: str
    weight: int


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
    """How many requests, how fast, to what."""

    requests: int
    concurrency: int
    seed: int
    mix: tuple[RequestKind, ...]
    time_budget: float  # seconds for the whole run, steps included
    request_timeout: float


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

    def with_overrides(
        self,
        *,
        requests: int | None = None,
        concurrency: int | None = None,
        seed: int | None = None,
    ) -> Scenario:
        """A copy with traffic settings replaced; None keeps the value. The overrides must
        keep the file's limits (ValueError otherwise)."""
        if requests is not None and not 1 <= requests <= MAX_REQUESTS:
            raise ValueError(f"requests must be between 1 and {MAX_REQUESTS:,}")
        if concurrency is not None and not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be between 1 and {MAX_CONCURRENCY}")
        traffic = dataclasses.replace(
            self.traffic,
            requests=requests if requests is not None else self.traffic.requests,
            concurrency=concurrency if concurrency is not None else self.traffic.concurrency,
            seed=seed if seed is not None else self.traffic.seed,
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


def _mix(value: Any, loc: Loc) -> tuple[RequestKind, ...]:
    kinds = []
    for index, item in enumerate(schema.sequence(value, loc, non_empty=True)):
        item_loc = loc / index
        spec = schema.mapping(
            item, item_loc, allowed=("method", "path", "weight"), required=("path",)
        )
        method = schema.string(spec.get("method", "GET"), item_loc / "method").upper()
        if not METHOD_RE.match(method):
            raise (item_loc / "method").error(f"{method!r} is not an HTTP method")
        path = schema.string(spec["path"], item_loc / "path")
        if not path.startswith("/"):
            raise (item_loc / "path").error("a path starts with '/'")
        weight = schema.integer(spec.get("weight", 1), item_loc / "weight", minimum=1)
        kinds.append(RequestKind(method, path, weight))
    return tuple(kinds)


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
            allowed=("alg", "serve", "issuer", "audience"),
        )
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


def _upstreams(value: Any, loc: Loc) -> tuple[str, ...]:
    names = schema.string_list(value, loc, non_empty=True)
    seen: set[str] = set()
    for index, name in enumerate(names):
        _name(name, loc / index)
        if name == NO_UPSTREAM:
            raise (loc / index).error("'none' is reserved (it means: no upstream answered)")
        if name in seen:
            raise (loc / index).error(f"upstream {name!r} is listed twice")
        seen.add(name)
    return names


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
        if "token" in spec:
            if spec["token"] is not None and spec["token"] != "none":
                raise (item_loc / "token").error("the only token setting is `token: none`")
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
        headers_spec = schema.mapping(spec.get("headers", {}), item_loc / "headers")
        headers = tuple(
            (k, schema.string(v, item_loc / "headers" / k, non_empty=False))
            for k, v in headers_spec.items()
        )
        for key, _ in headers:
            if key.lower() in ("authorization", "host", "x-claimroute-scenario-request"):
                raise (item_loc / "headers" / key).error(f"header {key!r} is set by the runner")
        out.append(Population(name, count, issuer, claims, tamper, sub, mix, headers))
    return tuple(out)


def _traffic(value: Any, loc: Loc) -> Traffic:
    spec = schema.mapping(
        value,
        loc,
        allowed=("requests", "concurrency", "seed", "mix", "time_budget", "request_timeout"),
        required=("requests",),
    )
    mix = _mix(spec["mix"], loc / "mix") if "mix" in spec else (RequestKind("GET", "/", 1),)
    budget = schema.duration(spec.get("time_budget", "120s"), loc / "time_budget")
    timeout = schema.duration(spec.get("request_timeout", "10s"), loc / "request_timeout")
    if not 1 <= budget <= 3600:
        raise (loc / "time_budget").error("must be between 1s and 1h")
    if not 0.1 <= timeout <= 120:
        raise (loc / "request_timeout").error("must be between 100ms and 120s")
    return Traffic(
        requests=schema.integer(
            spec["requests"], loc / "requests", minimum=1, maximum=MAX_REQUESTS
        ),
        concurrency=schema.integer(
            spec.get("concurrency", 16), loc / "concurrency", minimum=1, maximum=MAX_CONCURRENCY
        ),
        seed=schema.integer(spec.get("seed", 1), loc / "seed"),
        mix=mix,
        time_budget=budget,
        request_timeout=timeout,
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
            "policy",
            "policy_file",
            "users",
            "traffic",
            "steps",
            "expect",
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
    upstreams = _upstreams(spec["upstreams"], root / "upstreams")
    policy = _policy(spec, root, base)
    traffic = _traffic(spec["traffic"], root / "traffic")
    users = _users(spec["users"], root / "users", issuers)
    steps = _steps(spec.get("steps", []), root / "steps", issuers, users, base)
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
    return Scenario(
        path, name, description, issuers, upstreams, policy, users, traffic, steps, expectations
    )


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file. Raises PolicyError naming file, key path and line."""
    path = Path(path)
    document, root = load_yaml_file(path)
    return parse_scenario(document, root, path)


__all__ = [
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
