"""Request path, method, host and header conditions shared by RBAC permissions and routes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from claimroute.config import readers as schema
from claimroute.config.source import Loc
from claimroute.match.hostnames import canonical_host
from claimroute.match.matchers import HeadersMatcher, PolicyRegex, compile_headers, compile_regex

if TYPE_CHECKING:
    from claimroute.match.request import RequestView


@dataclass(frozen=True, slots=True)
class PathSet:
    """A list of path rules (`{exact: /p}`, `{prefix: /p}`, `{regex: r}` RE2 full match; OR),
    grouped by kind at load so that a request path is tested with a set lookup, one
    `startswith` over every prefix, and the regexes in turn."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    patterns: tuple[PolicyRegex, ...]

    def matches(self, path: str) -> bool:
        """Whether any of the rules matches the (normalised) path."""
        if path in self.exact or path.startswith(self.prefixes):
            return True
        for pattern in self.patterns:  # noqa: SIM110 (performance rules)
            if pattern.fullmatch(path):
                return True
        return False


def parse_path_rules(value: Any, loc: Loc) -> PathSet:
    """A non-empty list of path rules (OR)."""
    exact: set[str] = set()
    prefixes: list[str] = []
    patterns: list[PolicyRegex] = []
    for index, item in enumerate(schema.sequence(value, loc, non_empty=True)):
        item_loc = loc / index
        if isinstance(item, str):
            raise item_loc.error(f"write {{prefix: {item}}} or {{exact: {item}}}")
        spec = schema.mapping(item, item_loc, allowed=("exact", "prefix", "regex"))
        if len(spec) != 1:
            raise item_loc.error("give exactly one of exact, prefix, regex")
        kind, raw = next(iter(spec.items()))
        text = schema.string(raw, item_loc / kind)
        if kind == "regex":
            patterns.append(compile_regex(text, item_loc / kind))
            continue
        if not text.startswith("/"):
            raise (item_loc / kind).error("a path starts with /")
        if kind == "exact":
            exact.add(text)
        else:
            prefixes.append(text)
    return PathSet(frozenset(exact), tuple(prefixes), tuple(patterns))


@dataclass(frozen=True, slots=True)
class RequestConditions:
    """The conditions on the request itself, one mechanism for RBAC permissions and route
    matches: methods AND paths (any rule) AND hosts AND headers; a field left out matches
    everything."""

    methods: frozenset[str] | None = None
    paths: PathSet | None = None
    hosts: frozenset[str] | None = None
    headers: HeadersMatcher | None = None

    @property
    def empty(self) -> bool:
        """Whether no condition reads the request (it matches every request)."""
        return self.methods is self.paths is self.hosts is self.headers is None

    def matches(self, request: RequestView, *, deny: bool = False) -> bool:
        """Whether the request meets every condition; `deny` for a deny rule, whose hosts
        match any name the request is addressed to (see `hosts_match`)."""
        if self.methods is not None and request.method.upper() not in self.methods:
            return False
        if self.paths is not None and not self.paths.matches(request.rule_path):
            return False
        if self.hosts is not None and not hosts_match(
            self.hosts, request.host_names, any_name=deny
        ):
            return False
        return self.headers is None or self.headers.matches(request.header)


ANY_REQUEST = RequestConditions()  # no condition: every request


def parse_request_conditions(spec: Mapping[str, Any], loc: Loc) -> RequestConditions:
    """The request conditions among `spec`'s keys (the caller says which keys it allows)."""
    return RequestConditions(
        methods=parse_methods(spec["methods"], loc / "methods") if "methods" in spec else None,
        paths=parse_path_rules(spec["paths"], loc / "paths") if "paths" in spec else None,
        hosts=parse_hosts(spec["hosts"], loc / "hosts") if "hosts" in spec else None,
        headers=compile_headers(spec["headers"], loc / "headers") if "headers" in spec else None,
    )


def parse_methods(value: Any, loc: Loc) -> frozenset[str]:
    """HTTP methods, compared upper-case. `GET` also covers `HEAD`: a HEAD request is a GET
    without the body (RFC 9110 §9.3.2), and most frameworks answer it with the GET handler,
    so a deny on GET that let HEAD through would be dodged."""
    methods = {m.upper() for m in schema.string_list(value, loc, non_empty=True)}
    if "GET" in methods:
        methods.add("HEAD")
    return frozenset(methods)


def parse_hosts(value: Any, loc: Loc) -> frozenset[str]:
    """Host names, compared in `canonical_host` form (case-insensitive, no port, no final dot,
    numeric addresses in one spelling)."""
    return frozenset(canonical_host(h) for h in schema.string_list(value, loc, non_empty=True))


def hosts_match(hosts: frozenset[str], names: tuple[str, ...], *, any_name: bool) -> bool:
    """Whether a request addressed to `names` (canonical, see `RequestView.host_names`) is
    addressed to `hosts`.

    The names a request carries can disagree (Host, an absolute-form or `:authority`
    authority, the target the client chose in regular proxy mode), so the answer fails closed
    both ways: with `any_name` (deny rules) one matching name suffices; otherwise (allow rules)
    every name must match.
    """
    if any_name:
        return any(name in hosts for name in names)
    return bool(names) and all(name in hosts for name in names)
