"""Token extraction from headers, query parameters and cookies (no mitmproxy involved)."""

from __future__ import annotations

from typing import Any

import pytest

from claimroute.match.request import RequestView
from claimroute.pipeline.extract import FoundToken, extract_tokens, location_allowed
from claimroute.policy.model import DEFAULT_TOKEN_SOURCE, HeaderLocation, TokenSource


class FakeHeaders:
    """Case-insensitive multi-valued headers, in request order."""

    def __init__(self, *pairs: tuple[str, str]) -> None:
        self.pairs = list(pairs)

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.pairs if k.lower() == name.lower()]


def request(
    *headers: tuple[str, str],
    query: tuple[tuple[str, str], ...] = (),
    cookies: tuple[tuple[str, str], ...] = (),
) -> RequestView:
    return RequestView("GET", "http", "api.test", 80, "/p", query, FakeHeaders(*headers), cookies)


def tokens(found: list[FoundToken]) -> list[str]:
    return [f.token for f in found]


CUSTOM = TokenSource(
    headers=(HeaderLocation("x-jwt", ""), HeaderLocation("x-auth", "Token ")),
    query_params=("jwt", "token"),
    cookies=("session",),
)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_case_insensitive(scheme: str) -> None:
    found = extract_tokens(
        request(("Authorization", f"{scheme} abc.def.ghi")), DEFAULT_TOKEN_SOURCE
    )
    assert found == [FoundToken("abc.def.ghi", "header", "authorization", "Bearer ")]


def test_header_name_case_insensitive() -> None:
    found = extract_tokens(request(("AUTHORIZATION", "Bearer t")), DEFAULT_TOKEN_SOURCE)
    assert tokens(found) == ["t"]


@pytest.mark.parametrize(
    "value", ["Basic dXNlcjpwYXNz", "Digest username=x", "Bearer", "Bearerabc", "Token abc", ""]
)
def test_non_bearer_authorization_is_ignored(value: str) -> None:
    assert extract_tokens(request(("Authorization", value)), DEFAULT_TOKEN_SOURCE) == []


def test_only_the_prefix_is_removed() -> None:
    found = extract_tokens(
        request(("Authorization", "Bearer  abc "), ("Authorization", "Bearer ")),
        DEFAULT_TOKEN_SOURCE,
    )
    # stray whitespace stays (and makes the token malformed); an empty token is still a token
    assert tokens(found) == [" abc ", ""]


def test_two_authorization_headers_give_two_tokens() -> None:
    found = extract_tokens(
        request(("Authorization", "Bearer one"), ("authorization", "bearer two")),
        DEFAULT_TOKEN_SOURCE,
    )
    assert tokens(found) == ["one", "two"]
    assert all(f.kind == "header" and f.name == "authorization" for f in found)


def test_basic_next_to_bearer() -> None:
    found = extract_tokens(
        request(("Authorization", "Basic x"), ("Authorization", "Bearer y")), DEFAULT_TOKEN_SOURCE
    )
    assert tokens(found) == ["y"]


def test_default_query_param() -> None:
    found = extract_tokens(
        request(query=(("a", "1"), ("access_token", "q.t.s"))), DEFAULT_TOKEN_SOURCE
    )
    assert found == [FoundToken("q.t.s", "query", "access_token")]


def test_default_source_ignores_other_places() -> None:
    req = request(
        ("X-Jwt", "h"),
        query=(("jwt", "q"), ("ACCESS_TOKEN", "upper")),
        cookies=(("access_token", "c"),),
    )
    assert extract_tokens(req, DEFAULT_TOKEN_SOURCE) == []


def test_header_and_query_together() -> None:
    req = request(("Authorization", "Bearer h"), query=(("access_token", "q"),))
    found = extract_tokens(req, DEFAULT_TOKEN_SOURCE)
    assert [(f.kind, f.token) for f in found] == [("header", "h"), ("query", "q")]


def test_repeated_query_param() -> None:
    req = request(query=(("access_token", "a"), ("access_token", "b")))
    assert tokens(extract_tokens(req, DEFAULT_TOKEN_SOURCE)) == ["a", "b"]


def test_custom_header_without_prefix() -> None:
    found = extract_tokens(request(("X-JWT", "Bearer raw")), CUSTOM)
    assert found == [FoundToken("Bearer raw", "header", "x-jwt", "")]


def test_custom_header_with_prefix() -> None:
    found = extract_tokens(request(("x-auth", "token abc"), ("x-auth", "Bearer nope")), CUSTOM)
    assert found == [FoundToken("abc", "header", "x-auth", "Token ")]


def test_custom_query_and_cookie() -> None:
    req = request(
        query=(("token", "q1"), ("access_token", "ignored"), ("jwt", "q2")),
        cookies=(("other", "x"), ("session", "c1")),
    )
    found = extract_tokens(req, CUSTOM)
    assert [(f.kind, f.name, f.token) for f in found] == [
        ("query", "token", "q1"),
        ("query", "jwt", "q2"),
        ("cookie", "session", "c1"),
    ]


def test_no_locations_no_tokens() -> None:
    empty = TokenSource((), (), ())
    req = request(("Authorization", "Bearer x"), query=(("access_token", "y"),))
    assert extract_tokens(req, empty) == []


# --------------------------------------------------------------------------- location_allowed


@pytest.mark.parametrize(
    ("found", "source", "allowed"),
    [
        (FoundToken("t", "header", "authorization", "Bearer "), DEFAULT_TOKEN_SOURCE, True),
        # the prefix compares case-insensitively, as it did when the token was found
        (FoundToken("t", "header", "authorization", "BEARER "), DEFAULT_TOKEN_SOURCE, True),
        (FoundToken("t", "header", "authorization", ""), DEFAULT_TOKEN_SOURCE, False),
        (FoundToken("t", "header", "x-jwt", ""), DEFAULT_TOKEN_SOURCE, False),
        (FoundToken("t", "query", "access_token"), DEFAULT_TOKEN_SOURCE, True),
        (FoundToken("t", "query", "jwt"), DEFAULT_TOKEN_SOURCE, False),
        (FoundToken("t", "cookie", "access_token"), DEFAULT_TOKEN_SOURCE, False),
        (FoundToken("t", "header", "x-jwt", ""), CUSTOM, True),
        (FoundToken("t", "header", "x-auth", "Token "), CUSTOM, True),
        (FoundToken("t", "header", "x-auth", ""), CUSTOM, False),
        (FoundToken("t", "header", "authorization", "Bearer "), CUSTOM, False),
        (FoundToken("t", "query", "access_token"), CUSTOM, False),
        (FoundToken("t", "query", "jwt"), CUSTOM, True),
        (FoundToken("t", "cookie", "session"), CUSTOM, True),
        (FoundToken("t", "cookie", "jwt"), CUSTOM, False),
    ],
)
def test_location_allowed(found: FoundToken, source: TokenSource, allowed: bool) -> None:
    assert location_allowed(found, source) is allowed


def test_found_tokens_are_allowed_where_found() -> None:
    req = request(
        ("x-auth", "TOKEN a"), ("x-jwt", "b"), query=(("jwt", "c"),), cookies=(("session", "d"),)
    )
    found = extract_tokens(req, CUSTOM)
    assert sorted(tokens(found)) == ["a", "b", "c", "d"]
    assert all(location_allowed(f, CUSTOM) for f in found)
    assert not any(location_allowed(f, DEFAULT_TOKEN_SOURCE) for f in found)


# --------------------------------------------------------------------------- shared headers

BOTH = TokenSource(
    headers=(HeaderLocation("authorization", "Bearer "), HeaderLocation("authorization", "")),
    query_params=(),
    cookies=(),
)


@pytest.mark.parametrize("order", [BOTH.headers, BOTH.headers[::-1]])
def test_one_header_value_is_one_token(order: tuple[HeaderLocation, ...]) -> None:
    # two providers list authorization, one with `Bearer `, one raw: still one credential
    source = TokenSource(order, (), ())
    found = extract_tokens(request(("Authorization", "Bearer a.b.c")), source)
    assert found == [FoundToken("a.b.c", "header", "authorization", "Bearer ")]
    raw = extract_tokens(request(("Authorization", "a.b.c")), source)
    assert raw == [FoundToken("a.b.c", "header", "authorization", "")]


def test_longest_prefix_wins_per_value() -> None:
    source = TokenSource(
        (HeaderLocation("x-t", "Bearer "), HeaderLocation("x-t", "Bearer v2:")), (), ()
    )
    found = extract_tokens(request(("x-t", "bearer v2:abc"), ("x-t", "Bearer abc")), source)
    assert [(f.token, f.prefix) for f in found] == [("abc", "Bearer v2:"), ("abc", "Bearer ")]


def test_union_of_provider_locations(tmp_path: Any, make_issuer: Any) -> None:
    from claimroute.policy.load import load_policy_text

    make_issuer("ex", "ES256").write_jwks(tmp_path / "k.json")
    text = (
        "version: 1\nproviders:\n"
        "  a: {issuer: https://a.test, jwks: {file: k.json}}\n"
        "  b:\n    issuer: https://b.test\n    jwks: {file: k.json}\n"
        "    token_source: {headers: [{name: Authorization}], cookies: [sid]}\n"
    )
    policy = load_policy_text(text, "p.yaml", base=tmp_path)
    req = request(("Authorization", "Bearer t1"), cookies=(("sid", "t2"),))
    found = extract_tokens(req, policy.token_locations)
    assert [(f.kind, f.token) for f in found] == [("header", "t1"), ("cookie", "t2")]
    a, b = policy.providers["a"].token_source, policy.providers["b"].token_source
    assert [location_allowed(f, a) for f in found] == [True, False]
    assert [location_allowed(f, b) for f in found] == [False, True]
