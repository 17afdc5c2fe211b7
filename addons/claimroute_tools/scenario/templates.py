"""Request templates: paths, header values and JSON bodies filled in per user.

Syntax (docs/traffic.md): `{sub}`, `{i}`, `{name}`, `{request}` and `{claims.PATH}` (a dotted
path into the population's claims, e.g. `{claims.org}` or `{claims.groups.0}`). A placeholder
is a `{` directly followed by a letter or `_` and closed by `}` with only name characters in
between; any other brace is literal text, so JSON text (`{"a": 1}`, where `{` is followed by a
quote, a space or `}`) never reads as a placeholder. `{{` is a literal `{` for the rare text
that needs `{word}` verbatim. An unknown placeholder is a load error at its key path and line.

Templates are parsed once at load (`parse_text`, `parse_body`) into immutable parts, so
filling one per request is a join over a few strings. Values: strings as they are, numbers
as written, true/false/null, lists and mappings as compact JSON. In a path the value is
URL-quoted (`quote(value, safe="")`); header values and body strings take it verbatim.

Also here: `fill_known`, the lenient fill of a population's `sub` and `claims` (only `{name}`,
`{i}`, `{sub}` are replaced, other braces stay), kept as it always was.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from claimroute.config.source import Loc

# `{{` (a literal brace) or a placeholder `{name}` / `{claims.a.b}`.
PLACEHOLDER_RE = re.compile(r"\{\{|\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\}")
USER_FIELDS = ("sub", "i", "name", "request")
CLAIMS_PREFIX = "claims."
KNOWN_TEXT = "{sub}, {i}, {name}, {request}, {claims.NAME}"


@dataclass(frozen=True, slots=True)
class Field:
    """One placeholder: its name and where it was written (for load errors)."""

    name: str
    loc: Loc

    @property
    def claim_path(self) -> tuple[str, ...] | None:
        """`("org",)` for `{claims.org}`; None for a user field."""
        if not self.name.startswith(CLAIMS_PREFIX):
            return None
        return tuple(self.name[len(CLAIMS_PREFIX) :].split("."))


@dataclass(frozen=True, slots=True)
class Text:
    """A parsed string template: literal parts and fields, in order."""

    source: str
    parts: tuple[str | Field, ...]

    @property
    def fields(self) -> tuple[Field, ...]:
        """The placeholders of this template."""
        return tuple(p for p in self.parts if isinstance(p, Field))

    def render(self, values: TemplateValues, *, url: bool = False) -> str:
        """The text with every field filled in (URL-quoted when `url`)."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                value = values.get(part.name)
                out.append(quote(value, safe="") if url else value)
        return "".join(out)


@dataclass(frozen=True, slots=True)
class Body:
    """A parsed JSON body: the YAML value with its template strings as `Text`."""

    value: Any  # JSON-like; strings with fields are Text
    fields: tuple[Field, ...]
    static: bytes | None  # the encoded body when it has no field (encoded once)

    def render(self, values: TemplateValues) -> bytes:
        """The body as compact UTF-8 JSON (keys in file order) with its fields filled in."""
        if self.static is not None:
            return self.static
        return encode_json(_render_value(self.value, values))


class TemplateValues:
    """The values one request's templates are filled from: its user and its index."""

    __slots__ = ("claims", "fixed")

    def __init__(
        self, *, sub: str | None, i: int, name: str, request: int, claims: Mapping[str, Any]
    ) -> None:
        # An anonymous user has no sub: `{sub}` is empty for it (documented).
        self.fixed = {"sub": sub or "", "i": str(i), "name": name, "request": str(request)}
        self.claims = claims

    def get(self, name: str) -> str:
        """The text of one placeholder (KeyError for a claim the user does not have: load
        checks make that impossible for parsed scenarios)."""
        if name in self.fixed:
            return self.fixed[name]
        found = claim_at(self.claims, tuple(name[len(CLAIMS_PREFIX) :].split(".")))
        if found is _MISSING:
            raise KeyError(name)
        return as_text(found)


_MISSING = object()


def claim_at(claims: Any, path: tuple[str, ...]) -> Any:
    """The value at a dotted path of claims (list items by index), or a private sentinel."""
    node = claims
    for key in path:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return _MISSING
    return node


def has_claim(claims: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    """True when `claims` has a value at `path`."""
    return claim_at(claims, path) is not _MISSING


def as_text(value: Any) -> str:
    """A claim value as text: strings as is, JSON for the rest (true, 3, ["a"], ...)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_json(value: Any) -> bytes:
    """The wire form of a body: compact JSON, UTF-8, keys in the order written."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_text(text: str, loc: Loc) -> Text:
    """Parse a template string; an unknown placeholder is a PolicyError at `loc`."""
    parts: list[str | Field] = []
    literal: list[str] = []
    position = 0
    for match in PLACEHOLDER_RE.finditer(text):
        literal.append(text[position : match.start()])
        position = match.end()
        name = match.group(1)
        if name is None:  # `{{`
            literal.append("{")
            continue
        if name not in USER_FIELDS and not (
            name.startswith(CLAIMS_PREFIX) and len(name) > len(CLAIMS_PREFIX)
        ):
            raise loc.error(
                f"unknown placeholder {{{name}}} in {text!r}; known: {KNOWN_TEXT} "
                "(write {{ for a literal {)"
            )
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(Field(name, loc))
    literal.append(text[position:])
    if "".join(literal):
        parts.append("".join(literal))
    return Text(text, tuple(parts))


def parse_body(value: Any, loc: Loc) -> Body:
    """Parse a body (any JSON-like YAML value); strings become templates. Mapping keys are
    left alone. A value JSON cannot carry (NaN, infinity) is a PolicyError at its line."""
    fields: list[Field] = []

    def walk(node: Any, where: Loc) -> Any:
        if isinstance(node, str):
            text = parse_text(node, where)
            if not text.fields:
                return text.render(_NO_VALUES)  # only `{{` escapes: plain text
            fields.extend(text.fields)
            return text
        if isinstance(node, dict):
            return {k: walk(v, where / k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, where / i) for i, v in enumerate(node)]
        if isinstance(node, float) and not math.isfinite(node):
            raise where.error(f"a JSON body cannot hold {node!r}")
        if node is None or isinstance(node, bool | int | float):
            return node
        raise where.error(f"a JSON body cannot hold a {type(node).__name__}")

    parsed = walk(value, loc)
    static = encode_json(parsed) if not fields else None
    return Body(parsed, tuple(fields), static)


def _render_value(node: Any, values: TemplateValues) -> Any:
    if isinstance(node, Text):
        return node.render(values)
    if isinstance(node, dict):
        return {k: _render_value(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_render_value(v, values) for v in node]
    return node


_NO_VALUES = TemplateValues(sub=None, i=0, name="", request=0, claims={})


def fill_known(value: Any, names: Mapping[str, str]) -> Any:
    """Replace `{key}` for each key of `names` in the strings of `value` (other braces stay).

    The lenient fill of a population's `sub` and `claims`, as it has always worked.
    """
    if isinstance(value, str):
        for key, text in names.items():
            value = value.replace("{" + key + "}", text)
        return value
    if isinstance(value, dict):
        return {k: fill_known(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_known(v, names) for v in value]
    return value


__all__ = [
    "Body",
    "Field",
    "TemplateValues",
    "Text",
    "as_text",
    "encode_json",
    "fill_known",
    "has_claim",
    "parse_body",
    "parse_text",
]
