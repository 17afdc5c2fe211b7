"""Claim values as header values (design/policy.md, "Header values from claims")."""

from __future__ import annotations

import json
from typing import Any

import pytest

from claimroute.claimheaders import claim_headers, header_value
from claimroute.claimpath import MISSING
from claimroute.policy import ClaimHeader

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
    from claimroute.jsonstrict import loads_strict

    claims = loads_strict('{"sub": "\\ud800admin"}')
    assert claims["sub"] == "\ud800admin"
    [(_, value)] = claim_headers((ClaimHeader(("sub",), "x-user"),), claims)
    assert value.encode("utf-8").endswith(b"admin")
