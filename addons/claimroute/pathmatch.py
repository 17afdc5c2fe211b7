"""Request path, method and host matching shared by RBAC permissions and route matches."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import schema
from .source import Loc

_DOUBLE_SLASH = re.compile(r"/{2,}")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# Escapes decoded before matching: the unreserved characters (RFC 3986 §2.3, whose escaped and
# plain forms are the same path, §6.2.2.2) and the two separators an upstream may decode,
# `/` and `\`. Others (`%25`, `%00`, `%20`, ...) stay as written, so nothing is decoded twice.
_DECODED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/\\")


def _decode_escape(match: re.Match[str]) -> str:
    code = int(match.group(1), 16)
    return chr(code) if code in _DECODED else match.group(0).upper()


def normalize_path(path: str) -> str:
    """The path the rules match on (RFC 3986 §6.2.2): escaped unreserved characters, `%2F` and
    `%5C` decoded, `\\` read as `/`, `//` merged and `.`/`..` segments resolved (§5.2.4).

    Without this, `/api/pets/../admin`, `/%61dmin` or `/api/..%2Fadmin` would dodge a rule on
    `/admin` while an upstream that normalises or decodes the path serves `/admin`. The
    upstream still receives the original path.
    """
    if "%" in path:
        path = _ESCAPE.sub(_decode_escape, path)
    if "\\" in path:
        path = path.replace("\\", "/")
    if "//" not in path and "/." not in path:
        return path
    path = _DOUBLE_SLASH.sub("/", path)
    out: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    trailing = path.endswith(("/.", "/..")) and out
    return "/" + "/".join(out) + ("/" if trailing else "")


@dataclass(frozen=True, slots=True)
class PathRule:
    """One of `{exact: /p}`, `{prefix: /p}` or `{regex: r}` (full match)."""

    kind: str
    value: str
    pattern: re.Pattern[str] | None = None

    def matches(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.value
        if self.kind == "prefix":
            return path.startswith(self.value)
        assert self.pattern is not None
        return self.pattern.fullmatch(path) is not None


@dataclass(frozen=True, slots=True)
class PathSet:
    """A list of path rules (OR), grouped by kind once at load so that a request path is
    tested with a set lookup, one `startswith` over every prefix, and the regexes in turn."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]

    @classmethod
    def of(cls, rules: tuple[PathRule, ...]) -> PathSet:
        exact: set[str] = set()
        prefixes: list[str] = []
        patterns: list[re.Pattern[str]] = []
        for rule in rules:  # the same split as `PathRule.matches`
            if rule.kind == "exact":
                exact.add(rule.value)
            elif rule.kind == "prefix":
                prefixes.append(rule.value)
            else:
                assert rule.pattern is not None
                patterns.append(rule.pattern)
        return cls(frozenset(exact), tuple(prefixes), tuple(patterns))

    def matches(self, path: str) -> bool:
        """Whether any of the rules matches (the same as `any(r.matches(path) for r in ...)`)."""
        if path in self.exact or path.startswith(self.prefixes):
            return True
        for pattern in self.patterns:  # noqa: SIM110 (a loop: no generator on the request path)
            if pattern.fullmatch(path) is not None:
                return True
        return False


def parse_path_rules(value: Any, loc: Loc) -> tuple[PathRule, ...]:
    """A non-empty list of path rules (OR)."""
    rules = []
    for index, item in enumerate(schema.sequence(value, loc, non_empty=True)):
        item_loc = loc / index
        if isinstance(item, str):
            raise item_loc.error(f"write {{prefix: {item}}} or {{exact: {item}}}")
        spec = schema.mapping(item, item_loc, allowed=("exact", "prefix", "regex"))
        if len(spec) != 1:
            raise item_loc.error("give exactly one of exact, prefix, regex")
        kind, raw = next(iter(spec.items()))
        text = schema.string(raw, item_loc / kind)
        pattern = None
        if kind == "regex":
            try:
                pattern = re.compile(text)
            except re.error as exc:
                raise (item_loc / kind).error(f"invalid regular expression: {exc}") from None
        elif not text.startswith("/"):
            raise (item_loc / kind).error("a path starts with /")
        rules.append(PathRule(kind, text, pattern))
    return tuple(rules)


def parse_methods(value: Any, loc: Loc) -> frozenset[str]:
    """HTTP methods, compared upper-case."""
    return frozenset(m.upper() for m in schema.string_list(value, loc, non_empty=True))


def parse_hosts(value: Any, loc: Loc) -> frozenset[str]:
    """Host names (compared as `host_name` gives them: case-insensitive, no port, no final dot)."""
    return frozenset(host_name(h) for h in schema.string_list(value, loc, non_empty=True))


def host_name(value: str) -> str:
    """A host as rules compare it: without port, lower-case, without a final dot (the FQDN
    `admin.example.` is `admin.example`)."""
    name = value.strip()
    if name.startswith("["):
        name = name.split("]", 1)[0] + "]"
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    return name.lower().rstrip(".")


def hosts_match(
    hosts: frozenset[str], host_values: list[str], target_host: str, *, any_name: bool
) -> bool:
    """Whether a request is addressed to `hosts`.

    A request names its host in the Host header (several values, or a comma-separated one, are
    counted one by one) and, in regular proxy mode, in its target, which the client chooses
    too. When they disagree the answer must fail closed both ways: with `any_name` (deny rules)
    one matching name suffices, the target included; otherwise (allow rules) every Host name
    must match (the target when there is no Host header).
    """
    names = [host_name(part) for value in host_values for part in value.split(",")]
    if any_name:
        return host_name(target_host) in hosts or any(name in hosts for name in names)
    return all(name in hosts for name in names or [host_name(target_host)])
