"""Claim values as header values (docs/policy.md, "Header values from claims")."""

from __future__ import annotations

import json
from typing import Any

import pytest

from claimroute.match.claimpath import MISSING
from claimroute.pipeline.claimheaders import claim_headers, header_value
from claimroute.policy.model import ClaimHeader

CLAIMS: dict[str, Any] = {
    "sub": "alice",
    "admin": True,
    "verified": False,
    "level": 42,
    "score": 1.5,
    "groups": ["a", "b"],
    "mixed": ["x", 1, True, 2.5],
    "realm_access": {"roles": ["reader", "writer"]},
    "kubernetes.io": {"namespace": "default", "pod": {"name": "p-1", "uid": "u"}},
    "nothing": None,
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alice", "alice"),
        ("", ""),
        ("José ☃", "José ☃"),
        ("with, comma", "with, comma"),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (42, "42"),
        (-7, "-7"),
        (12345678901234567890, "12345678901234567890"),
        (1.5, "1.5"),
        (-0.25, "-0.25"),
        (["a", "b", "c"], "a,b,c"),
        (["x", 1, True, False, 2.5], "x,1,true,false,2.5"),
        (["only"], "only"),
        ({"a": 1, "b": [1, 2], "c": {"d": "e"}}, '{"a":1,"b":[1,2],"c":{"d":"e"}}'),
        ([{"a": 1}, "b"], '[{"a":1},"b"]'),
        ([["a"], "b"], '[["a"],"b"]'),
        ({}, "{}"),
    ],
)
def test_header_value(value: Any, expected: str) -> None:
    assert header_value(value) == expected


def test_integral_float_is_a_number() -> None:
    text = header_value(2.0)
    assert text is not None
    assert float(text) == 2.0


def test_object_is_compact_json() -> None:
    value = {"roles": ["r 1", "r2"], "n": {"x": None}}
    text = header_value(value)
    assert text is not None
    assert " " not in text.replace("r 1", "")
    assert json.loads(text) == value


@pytest.mark.parametrize("value", [None, MISSING])
def test_no_value_no_header(value: Any) -> None:
    assert header_value(value) is None


def test_claim_headers_mapping() -> None:
    mapping = (
        ClaimHeader(("sub",), "x-user"),
        ClaimHeader(("admin",), "x-admin"),
        ClaimHeader(("verified",), "x-verified"),
        ClaimHeader(("level",), "x-level"),
        ClaimHeader(("score",), "x-score"),
        ClaimHeader(("groups",), "x-groups"),
        ClaimHeader(("realm_access", "roles"), "x-roles"),
        ClaimHeader(("kubernetes.io", "namespace"), "x-namespace"),
        ClaimHeader(("kubernetes.io", "pod"), "x-pod"),
    )
    assert claim_headers(mapping, CLAIMS) == [
        ("x-user", "alice"),
        ("x-admin", "true"),
        ("x-verified", "false"),
        ("x-level", "42"),
        ("x-score", "1.5"),
        ("x-groups", "a,b"),
        ("x-roles", "reader,writer"),
        ("x-namespace", "default"),
        ("x-pod", '{"name":"p-1","uid":"u"}'),
    ]


@pytest.mark.parametrize(
    "path",
    [
        ("missing",),
        ("nothing",),
        ("realm_access", "missing"),
        ("sub", "deeper"),  # a string has no members
        ("groups", "0"),  # no list indexing
        ("kubernetes", "io", "namespace"),  # a dotted claim name is one segment
    ],
)
def test_missing_claim_sets_no_header(path: tuple[str, ...]) -> None:
    mapping = (ClaimHeader(path, "x-h"), ClaimHeader(("sub",), "x-user"))
    assert claim_headers(mapping, CLAIMS) == [("x-user", "alice")]


INJECTIONS = [
    "alice\r\nx-admin: true",
    "alice\nx-admin: true",
    "alice\rx-admin: true",
    "alice\r\n\r\nGET / HTTP/1.1",
    "nul\0byte",
]


@pytest.mark.parametrize("text", INJECTIONS)
@pytest.mark.parametrize("shape", ["string", "list", "object", "nested list"])
def test_no_line_break_from_a_claim(text: str, shape: str) -> None:
    value: Any = {
        "string": text,
        "list": ["ok", text],
        "object": {"name": text},
        "nested list": [{"k": text}],
    }[shape]
    out = claim_headers((ClaimHeader(("c",), "x-c"),), {"c": value})
    assert len(out) == 1
    name, header = out[0]
    assert name == "x-c"
    assert not {"\r", "\n", "\0"} & set(header)
    # the content is still there, escaped, not dropped
    assert "x-admin" in header or "GET" in header or "byte" in header


@pytest.mark.parametrize("text", ["\ud800", "a\udcffb", "x\udc0d\udc0ay"])
@pytest.mark.parametrize("shape", ["string", "list", "object"])
def test_lone_surrogates_are_escaped(text: str, shape: str) -> None:
    # `"\ud800"` is a legal JSON escape; the header must still be sendable as UTF-8
    value: Any = {"string": text, "list": [text, "b"], "object": {"k": text}}[shape]
    out = header_value(value)
    assert out is not None
    out.encode("utf-8")
    assert not {"\r", "\n"} & set(out)


def test_lone_surrogate_from_strict_json() -> None:
    from claimroute.config.jsonstrict import loads_strict

    claims = loads_strict('{"sub": "\\ud800admin"}')
    assert claims["sub"] == "\ud800admin"
    [(_, value)] = claim_headers((ClaimHeader(("sub",), "x-user"),), claims)
    assert value.encode("utf-8").endswith(b"admin")


# --- control characters (RFC 9110 §5.5: a field value holds no control but HTAB) ---------------

CONTROLS = [chr(c) for c in [*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F]]


@pytest.mark.parametrize("char", CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("shape", ["string", "list", "object"])
def test_no_control_character_reaches_a_header(char: str, shape: str) -> None:
    text = f"alice{char}admin"
    value: Any = {"string": text, "list": ["ok", text], "object": {"name": text}}[shape]
    out = header_value(value)
    assert out is not None
    assert not set(CONTROLS) & set(out)
    # escaped as in a JSON string, the content kept: decoding gives the claim back. An object
    # is compact JSON, whose C0 controls are escaped already; DEL is not, so that text is
    # escaped as a whole, as one with a lone surrogate is.
    if shape == "object":
        assert json.loads(out if char != "\x7f" else json.loads(f'"{out}"')) == value
    else:
        assert json.loads(f'"{out}"') == (text if shape == "string" else f"ok,{text}")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a\x01b", "a\\u0001b"),
        ("a\x08b", "a\\bb"),
        ("a\x0bb", "a\\u000bb"),
        ("a\x0cb", "a\\fb"),
        ("a\x1bb", "a\\u001bb"),
        ("a\x1fb", "a\\u001fb"),
        ("a\x7fb", "a\\u007fb"),
        # the whole value is escaped, the same way as for CR/LF/NUL
        ('a\x01\tb"c\\é', 'a\\u0001\\tb\\"c\\\\\\u00e9'),
        ("a\nb", "a\\nb"),
        ("a\rb", "a\\rb"),
        ("a\0b", "a\\u0000b"),
    ],
)
def test_control_characters_are_json_escaped(value: str, expected: str) -> None:
    assert header_value(value) == expected


@pytest.mark.parametrize(
    "value", ["a\tb", "José ☃", "a\u00a0b", "a\x85b", "a\u2028b", 'quote " and \\ backslash']
)
def test_allowed_characters_are_sent_as_they_are(value: str) -> None:
    # HTAB is allowed in a field value; non-ASCII goes out as UTF-8 (obs-text), unescaped
    assert header_value(value) == value


def test_control_character_in_a_mapped_claim() -> None:
    claims = {"sub": "alice\x1b[31m", "groups": ["a", "b\x7f"]}
    mapping = (ClaimHeader(("sub",), "x-user"), ClaimHeader(("groups",), "x-groups"))
    assert claim_headers(mapping, claims) == [
        ("x-user", "alice\\u001b[31m"),
        ("x-groups", "a,b\\u007f"),
    ]
