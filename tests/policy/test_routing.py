"""Routing: first match wins, upstream parsing, the published sticky split."""

from __future__ import annotations

import hashlib
import random

import pytest
from mitmproxy.http import Headers

from claimroute.config.source import parse_yaml_text
from claimroute.errors import PolicyError
from claimroute.match.request import RequestView
from claimroute.policy.routes import bucket_of, choose_route, parse_routes


def routes_from(text: str):
    value, loc = parse_yaml_text(text, "policy.yaml")
    return parse_routes(value["routes"], loc / "routes")


def req(method: str = "GET", path: str = "/api/pets", **headers: str) -> RequestView:
    return RequestView(method, "http", "primary.local", 8081, path, (), Headers(**headers))


GLOO_CLAIM_ROUTING = """
routes:
  - name: solo-to-canary
    match: {claims: {org: solo.io}}
    upstream: http://127.0.0.1:8082
  - name: everyone-else
    match: {authenticated: true}
    upstream: http://127.0.0.1:8081
"""


def test_gloo_claim_based_routing_guide():
    routes = routes_from(GLOO_CLAIM_ROUTING)
    canary = choose_route(routes, req(), {"sub": "a", "org": "solo.io"})
    primary = choose_route(routes, req(), {"sub": "b", "org": "example.com"})
    assert (canary.name, canary.port, canary.host) == ("solo-to-canary", 8082, "127.0.0.1")
    assert (primary.name, primary.port) == ("everyone-else", 8081)
    assert choose_route(routes, req(), None) is None  # anonymous: destination left alone


def test_first_match_wins_and_other_match_fields():
    routes = routes_from("""
routes:
  - name: debug
    match: {headers: {x-debug: 1}, methods: [get], paths: [{prefix: /api}]}
    upstream: https://debug.internal
  - name: catch-all
    upstream: http://10.0.0.1:9000/
""")
    assert choose_route(routes, req(x_debug="1"), None).name == "debug"
    assert choose_route(routes, req(x_debug="1"), None).port == 443
    assert choose_route(routes, req(x_debug="1"), None).scheme == "https"
    assert choose_route(routes, req("POST", x_debug="1"), None).name == "catch-all"
    assert choose_route(routes, req(path="/other", x_debug="1"), None).name == "catch-all"
    assert choose_route(routes, req(), None).upstream == "http://10.0.0.1:9000"


SPLIT = """
routes:
  - name: ten-percent-of-users
    match: {authenticated: true}
    split:
      by: sub
      salt: experiment-7
      to:
        - {upstream: "http://127.0.0.1:8082", weight: 10}
        - {upstream: "http://127.0.0.1:8081", weight: 90}
"""


def published_bucket(salt: str, route: str, value: str) -> int:
    """The formula exactly as docs/policy.md publishes it, written out independently."""
    return (
        int.from_bytes(hashlib.sha256(f"{salt}:{route}:{value}".encode()).digest()[:8], "big")
        % 10000
    )


def test_bucket_matches_the_published_formula():
    rng = random.Random(7)
    for _ in range(500):
        sub = f"user-{rng.getrandbits(64):x}"
        assert bucket_of("experiment-7", "ten-percent-of-users", sub) == published_bucket(
            "experiment-7", "ten-percent-of-users", sub
        )


def test_split_lands_within_half_a_point_of_the_weights_over_100k_subs():
    routes = routes_from(SPLIT)
    canary = 0
    total = 100_000
    for index in range(total):
        choice = choose_route(routes, req(), {"sub": f"synthetic-user-{index}"})
        canary += choice.port == 8082
    assert abs(canary / total - 0.10) < 0.005


def test_split_is_sticky_and_bucket_decides_target():
    routes = routes_from(SPLIT)
    for index in range(2000):
        claims = {"sub": f"u{index}"}
        first = choose_route(routes, req(), claims)
        again = choose_route(routes, req("POST", "/elsewhere"), claims)
        assert (first.port, first.bucket) == (again.port, again.bucket)
        assert first.bucket == published_bucket("experiment-7", "ten-percent-of-users", f"u{index}")
        assert (first.port == 8082) == (first.bucket < 1000)


def test_unencodable_salt_is_a_load_error():
    # A YAML escape can put a lone surrogate in the salt: no hash input can carry it, so the
    # policy is refused at load instead of failing per request.
    with pytest.raises(PolicyError) as info:
        routes_from(SPLIT.replace("salt: experiment-7", 'salt: "x\\ud800"'))
    assert info.value.key_path == "routes[0].split.salt"
    assert "lone surrogate" in str(info.value)


def test_a_new_salt_reshuffles_cohorts():
    old = routes_from(SPLIT)
    new = routes_from(SPLIT.replace("experiment-7", "experiment-8"))
    subs = [f"u{i}" for i in range(5000)]
    old_canary = {s for s in subs if choose_route(old, req(), {"sub": s}).port == 8082}
    new_canary = {s for s in subs if choose_route(new, req(), {"sub": s}).port == 8082}
    # Independent 10% cohorts overlap by about 1%; the same cohort would overlap 100%.
    assert len(old_canary & new_canary) < 0.3 * len(old_canary)


def test_split_by_nested_claim_and_missing_value_goes_to_first_target():
    routes = routes_from("""
routes:
  - name: by-tenant
    split:
      by: ["kubernetes.io", namespace]
      to: [{upstream: "http://a:1", weight: 1}, {upstream: "http://b:2", weight: 1}]
""")
    missing = choose_route(routes, req(), {"sub": "x"})
    assert (missing.host, missing.bucket) == ("a", None)
    claims = {"kubernetes.io": {"namespace": "team-7"}}
    chosen = choose_route(routes, req(), claims)
    assert chosen.bucket == published_bucket("", "by-tenant", "team-7")


def test_zero_weight_target_never_chosen():
    routes = routes_from("""
routes:
  - name: off
    split: {to: [{upstream: "http://a:1", weight: 0}, {upstream: "http://b:2", weight: 5}]}
""")
    assert {choose_route(routes, req(), {"sub": f"u{i}"}).host for i in range(300)} == {"b"}
    # Callers without a value for `by` (no sub, or anonymous) are not sent to a drained target.
    assert choose_route(routes, req(), {"org": "x"}).host == "b"
    assert choose_route(routes, req(), None).host == "b"


@pytest.mark.parametrize(
    ("text", "key_path", "line"),
    [
        ("routes:\n  - name: a\n    upstream: ftp://x\n", "routes[0].upstream", 3),
        ("routes:\n  - name: a\n    upstream: http://x/path\n", "routes[0].upstream", 3),
        ("routes:\n  - name: a\n", "routes[0]", 2),
        ("routes:\n  - name: a\n    upstream: http://x\n    split: {to: []}\n", "routes[0]", 2),
        ("routes:\n  - name: a\n    split:\n      to:\n        - {upstream: 'http://x', weight: -1}\n",
         "routes[0].split.to[0].weight", 5),
        ("routes:\n  - name: a\n    split:\n      to:\n        - {upstream: 'http://x', weight: 0}\n",
         "routes[0].split.to", 4),
        ("routes:\n  - name: a\n    match: {claims: {org: {bogus: 1}}}\n    upstream: http://x\n",
         "routes[0].match.claims.org.bogus", 3),
        ("routes:\n  - name: a\n    match: {cookies: {}}\n    upstream: http://x\n",
         "routes[0].match.cookies", 3),
    ],
)  # fmt: skip
def test_load_errors_name_key_path_and_line(text, key_path, line):
    with pytest.raises(PolicyError) as info:
        routes_from(text)
    assert info.value.key_path == key_path
    assert info.value.line == line
