"""The fast request rewriting in `flowedit` against the plain mitmproxy operations it replaces.

The reference functions below are the addon's former code, step by step through mitmproxy's
`Headers` and `Request` setters; every generated request must end up byte-for-byte the same.
"""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import tutils

from claimroute.mitm.addon import request_view
from claimroute.mitm.flowedit import HeaderSnapshot, apply_decision, header_key, strip_headers
from claimroute.pipeline.decide import Decision
from claimroute.pipeline.extract import FoundToken
from claimroute.policy.routes import RouteChoice

NAMES = [
    b"Host", b"host", b"HOST", b"Authorization", b"authorization", b"AUTHORIZATION", b"X-User",
    b"x-user", b"x-org", b"X-Org", b"Cookie", b"cookie", b"Accept", b"X-\xc3\x9cser",
    b"x-\xc3\xbcser", b"\xff-raw",
]  # fmt: skip
VALUES = [
    b"Bearer TOK", b"bearer tok", b"BEARER TOK", b"Bearer other", b"Basic abc", b"api.example",
    b"api.example:8443", b"a=1; access_token=TOK", b"access_token=TOK", b"\xff\xfe", b"v", b"",
]  # fmt: skip
CLAIM_HEADERS = [
    ("x-user", "alice"), ("x-org", "acme"), ("x-roles", "a,b"), ("authorization", "zzz"),
    ("x-\u00fcser", "v\u00e4lue"), ("cookie", "c=1"),
]  # fmt: skip
TOKENS = [
    None,
    FoundToken("TOK", "header", "authorization", "Bearer "),
    FoundToken("tok", "header", "authorization", "bearer "),
    FoundToken("TOK", "header", "x-\u00fcser", ""),
    FoundToken("TOK", "query", "access_token"),
    FoundToken("TOK", "cookie", "access_token"),
]
ROUTES = [
    None,
    RouteChoice("r", "http://canary:8080", "http", "canary", 8080, False),
    RouteChoice("r", "http://canary", "http", "canary", 80, False),
    RouteChoice("r", "https://canary.internal:8443", "https", "canary.internal", 8443, True),
    RouteChoice("r", "https://canary", "https", "canary", 443, False, bucket=7),
    RouteChoice("r", "http://10.0.0.1:9", "http", "10.0.0.1", 9, True),
]


def reference_strip(request: http.Request, names: frozenset[str]) -> None:
    for name in names:
        if name in request.headers:
            del request.headers[name]


def reference_remove_token(request: http.Request, decision: Decision) -> None:
    token = decision.token
    if token is None:
        return
    if token.kind == "header":
        wanted = token.prefix.lower() + token.token
        kept = [v for v in request.headers.get_all(token.name) if v.lower() != wanted.lower()]
        request.headers.set_all(token.name, kept)
    elif token.kind == "query":
        request.query = [(k, v) for k, v in request.query.items(multi=True) if k != token.name]
    else:
        request.cookies = [(k, v) for k, v in request.cookies.items(multi=True) if k != token.name]


def reference_apply(request: http.Request, decision: Decision) -> None:
    if not decision.keep_token:
        reference_remove_token(request, decision)
    for name, value in decision.set_headers:
        request.headers[name] = value
    route = decision.route
    if route is not None:
        original_host = request.host_header
        request.scheme = route.scheme
        request.host = route.host
        request.port = route.port
        if route.preserve_host and original_host is not None:
            request.host_header = original_host


def state(request: http.Request) -> tuple[object, ...]:
    return (
        request.headers.fields,
        request.data.scheme,
        request.data.host,
        request.data.port,
        request.data.authority,
        request.data.path,
    )


requests = st.builds(
    lambda fields, h2, authority, query: tutils.treq(
        host="api.example",
        port=80,
        headers=http.Headers(fields),
        http_version=b"HTTP/2.0" if h2 else b"HTTP/1.1",
        authority=authority,
        path=b"/p?access_token=TOK&x=1" if query else b"/p",
    ),
    st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=8),
    st.booleans(),
    st.sampled_from([b"", b"api.example", b"api.example:8443"]),
    st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(
    request=requests,
    token=st.sampled_from(TOKENS),
    keep_token=st.booleans(),
    set_headers=st.lists(st.sampled_from(CLAIM_HEADERS), max_size=4, unique=True),
    route=st.sampled_from(ROUTES),
)
def test_apply_decision_is_the_plain_mitmproxy_sequence(
    request, token, keep_token, set_headers, route
):
    decision = Decision(
        outcome="allowed", reason="verified", token=token, keep_token=keep_token,
        set_headers=tuple(set_headers), route=route,
    )  # fmt: skip
    expected = copy.deepcopy(request)
    reference_apply(expected, decision)
    apply_decision(request, decision)
    assert state(request) == state(expected)


@settings(max_examples=300, deadline=None)
@given(
    request=requests,
    names=st.sets(st.sampled_from(["x-user", "x-org", "authorization", "x-\u00fcser", "host"])),
)
def test_strip_headers_is_deleting_each_name(request, names):
    expected = copy.deepcopy(request)
    reference_strip(expected, frozenset(names))
    strip_headers(request, frozenset(header_key(name) for name in names))
    assert state(request) == state(expected)


@settings(max_examples=300, deadline=None)
@given(request=requests)
def test_header_snapshot_answers_like_headers(request):
    snapshot = HeaderSnapshot(request.headers.fields)
    for name in ["host", "HOST", "authorization", "x-\u00fcser", "X-\u00dcser", "cookie", "nope"]:
        assert snapshot.get_all(name) == request.headers.get_all(name)
        assert (name in snapshot) == (name in request.headers)
    view = request_view(request)
    assert view.cookies == tuple(request.cookies.items(multi=True))
    assert view.query == tuple(request.query.items(multi=True))
    assert view.header("authorization") == request.headers.get("authorization")
