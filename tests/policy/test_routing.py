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
      by: "[kubernetes.io].namespace"
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


# --- splits by several claims, fallback_by ------------------------------------------------------

MULTI = """
routes:
  - name: by-tenant-and-user
    split:
      by: [tenant, sub]
      fallback_by: sub
      salt: s7
      to: [{upstream: "http://a:1", weight: 30}, {upstream: "http://b:2", weight: 70}]
"""


def json_value(*texts: str) -> str:
    """The documented bucket input of a list `by`, written out independently: compact JSON
    of the texts, only `"`, `\\` and U+0000-U+001F escaped."""
    out = []
    for text in texts:
        escaped = "".join(
            {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
             "\t": "\\t"}.get(ch) or (f"\\u{ord(ch):04x}" if ord(ch) < 0x20 else ch)
            for ch in text
        )  # fmt: skip
        out.append(f'"{escaped}"')
    return "[" + ",".join(out) + "]"


def test_split_by_two_claims_hashes_the_json_of_their_values():
    routes = routes_from(MULTI)
    for index in range(300):
        claims = {"tenant": f"t{index % 7}", "sub": f"u{index}"}
        chosen = choose_route(routes, req(), claims)
        bucket = published_bucket("s7", "by-tenant-and-user", f'["t{index % 7}","u{index}"]')
        assert chosen.bucket == bucket
        assert chosen.host == ("a" if bucket < 3000 else "b")
    # numbers, booleans and objects are their single-claim texts inside the JSON
    chosen = choose_route(routes, req(), {"tenant": 7, "sub": {"b": 1, "a": [True]}})
    assert chosen.bucket == published_bucket(
        "s7", "by-tenant-and-user", '["7","{\\"a\\":[true],\\"b\\":1}"]'
    )


@pytest.mark.parametrize(
    ("tenant", "sub"),
    [
        ("a\x1fb", "c"),  # the separator other schemes would use
        ('x","y', "z"),  # a quote cannot forge a second element
        ("back\\slash", "new\nline\ttab\x00\x7f"),
        ("Jos\u00e9", "\u2028\U0001f600"),  # non-ASCII as it is
    ],
)
def test_list_bucket_input_is_the_documented_json(tenant, sub):
    routes = routes_from(MULTI)
    chosen = choose_route(routes, req(), {"tenant": tenant, "sub": sub})
    assert chosen.bucket == published_bucket("s7", "by-tenant-and-user", json_value(tenant, sub))


def test_list_values_are_unambiguous():
    routes = routes_from(MULTI)
    one = choose_route(routes, req(), {"tenant": "a\x1fb", "sub": "c"})
    other = choose_route(routes, req(), {"tenant": "a", "sub": "b\x1fc"})
    assert one.bucket != other.bucket  # a "\x1f" join would hash both as "a\x1fb\x1fc"


def test_a_single_by_and_a_list_of_one_give_todays_buckets():
    single = routes_from(SPLIT)
    listed = routes_from(SPLIT.replace("by: sub", "by: [sub]"))
    for index in range(300):
        claims = {"sub": f"u{index}"}
        expected = published_bucket("experiment-7", "ten-percent-of-users", f"u{index}")
        assert choose_route(single, req(), claims).bucket == expected
        assert choose_route(listed, req(), claims) == choose_route(single, req(), claims)


def test_fallback_by_when_a_claim_of_by_is_missing_or_null():
    routes = routes_from(MULTI)
    for claims in ({"sub": "u1"}, {"sub": "u1", "tenant": None}):
        chosen = choose_route(routes, req(), claims)
        assert chosen.bucket == published_bucket("s7", "by-tenant-and-user", "u1")
    # neither: the first target with a positive weight, no bucket (as without `by` today)
    for claims in ({"tenant": "t"}, {}, None):
        chosen = choose_route(routes, req(), claims)
        assert (chosen.host, chosen.bucket) == ("a", None)
    drained = routes_from(MULTI.replace("weight: 30", "weight: 0"))
    assert choose_route(drained, req(), {"org": "x"}).host == "b"


def test_fallback_by_may_be_a_list_and_paths_may_be_nested():
    routes = routes_from("""
routes:
  - name: r
    split:
      by: [[kubernetes.io, namespace], "[kubernetes.io].serviceaccount.name"]
      fallback_by: [org, team.name]
      to: [{upstream: "http://a:1", weight: 1}, {upstream: "http://b:2", weight: 1}]
""")
    k8s = {"kubernetes.io": {"namespace": "ns", "serviceaccount": {"name": "svc"}}}
    assert choose_route(routes, req(), k8s).bucket == published_bucket("", "r", '["ns","svc"]')
    other = {"org": "acme", "team": {"name": "red"}}
    assert choose_route(routes, req(), other).bucket == published_bucket("", "r", '["acme","red"]')
    assert choose_route(routes, req(), {"org": "acme"}).bucket is None


def test_a_flat_list_in_by_names_several_claims_not_segments():
    # Before `by` took several claims, `by: [kubernetes.io, namespace]` was one nested claim;
    # now it is two claims (docs/policy.md, "Claim paths"): write the nested one in brackets.
    routes = routes_from("""
routes:
  - name: r
    split:
      by: [kubernetes.io, namespace]
      to: [{upstream: "http://a:1", weight: 1}, {upstream: "http://b:2", weight: 1}]
""")
    nested = {"kubernetes.io": {"namespace": "team-7"}}
    assert choose_route(routes, req(), nested).bucket is None
    two = {"kubernetes": {"io": "k"}, "namespace": "team-7"}
    assert choose_route(routes, req(), two).bucket == published_bucket("", "r", '["k","team-7"]')


def test_split_target_is_the_one_implementation():
    from claimroute.policy.routes import by_value, format_split_by, split_target

    route = routes_from(MULTI)[0]
    claims = {"tenant": "t", "sub": "u"}
    index, bucket = split_target(route.split, route.bucket_prefix, claims)
    chosen = choose_route((route,), req(), claims)
    assert (route.split.targets[index].url, bucket) == (chosen.upstream, chosen.bucket)
    assert by_value(claims, route.split.by) == '["t","u"]'
    assert format_split_by(route.split.by) == "[tenant, sub]"
    assert format_split_by(route.split.fallback_by) == "sub"


# --- the cohort header and baggage -----------------------------------------------------------

COHORT = """
routes:
  - name: sticky-canary
    match: {paths: [{prefix: /api}]}
    cohort_header: X-Cohort
    baggage: true
    split:
      by: sub
      to: [{upstream: "http://canary:8082", weight: 50}, {upstream: "http://primary:8081/", weight: 50}]
  - name: "docs; v=2 é"
    match: {paths: [{prefix: /docs}]}
    cohort_header: x-cohort
    upstream: http://docs:9
  - name: plain
    upstream: http://plain:9
"""


def test_cohort_header_names_route_target_and_bucket():
    from claimroute.policy.routes import cohort_headers

    routes = routes_from(COHORT)
    for index in range(50):
        chosen = choose_route(routes, req(), {"sub": f"u{index}"})
        bucket = published_bucket("", "sticky-canary", f"u{index}")
        target = "http://canary:8082" if bucket < 5000 else "http://primary:8081"
        value = f"route=sticky-canary; target={target}; bucket={bucket:04d}"
        assert chosen.cohort == (("x-cohort", value),)
        members = (
            f"claimroute.route=sticky-canary,claimroute.target={target},"
            f"claimroute.bucket={bucket:04d}"
        )
        assert chosen.baggage == members
        assert cohort_headers(chosen, req()) == (("x-cohort", value), ("baggage", members))
    # a caller without `sub`: the first target, no bucket
    anonymous = choose_route(routes, req(), None)
    assert anonymous.cohort == (("x-cohort", "route=sticky-canary; target=http://canary:8082"),)


def test_cohort_values_are_percent_encoded_and_parse_back():
    from urllib.parse import unquote

    routes = routes_from(COHORT)
    docs = choose_route(routes, req(path="/docs"), None)
    ((name, value),) = docs.cohort
    assert name == "x-cohort"
    assert value == "route=docs%3B%20v%3D2%20%C3%A9; target=http://docs:9"
    parsed = dict(pair.split("=", 1) for pair in value.split("; "))
    assert {k: unquote(v) for k, v in parsed.items()} == {
        "route": "docs; v=2 é", "target": "http://docs:9",
    }  # fmt: skip
    assert docs.baggage is None
    plain = choose_route(routes, req(path="/x"), {"sub": "a"})
    assert (plain.name, plain.cohort, plain.baggage) == ("plain", (), None)


@pytest.mark.parametrize(
    ("client", "ours", "expected"),
    [
        ([], None, None),  # nothing to do
        (["userId=7"], None, None),  # the client's baggage is left alone
        ([], "claimroute.route=r", "claimroute.route=r"),
        (["userId=7, k=v;prop=1"], "claimroute.route=r", "userId=7,k=v;prop=1,claimroute.route=r"),
        (["userId=7", "k=v"], "claimroute.route=r", "userId=7,k=v,claimroute.route=r"),
        # forged members go on every request, whatever their spelling
        (["claimroute.route=admin,userId=7"], None, "userId=7"),
        ([" Claimroute.Target = x ;p, a=1,,"], "claimroute.route=r", "a=1,claimroute.route=r"),
        (["claimroute.bucket=0001"], None, ""),
        (["a=1", "claimroute.route=x"], "claimroute.route=r", "a=1,claimroute.route=r"),
        # a key that merely contains the prefix elsewhere stays
        (["my.claimroute.x=1,v=claimroute.route"], None, "my.claimroute.x=1,v=claimroute.route"),
    ],
)
def test_merged_baggage(client, ours, expected):
    from claimroute.policy.routes import merged_baggage

    assert merged_baggage(client, ours) == expected


def test_cohort_headers_strip_forged_baggage_without_a_route():
    from claimroute.policy.routes import cohort_headers

    forged = req(baggage="claimroute.route=sticky-canary,claimroute.bucket=0000,u=1")
    assert cohort_headers(None, forged) == (("baggage", "u=1"),)
    assert cohort_headers(None, req(baggage="u=1")) == ()
    assert cohort_headers(None, req()) == ()


@pytest.mark.parametrize(
    ("text", "key_path", "line", "fragment"),
    [
        ("routes:\n  - name: a\n    split:\n      by: []\n      to: [{upstream: 'http://x', weight: 1}]\n",
         "routes[0].split.by", 4, "at least one claim path"),
        ("routes:\n  - name: a\n    split:\n      by: [sub, a.b, sub]\n      to: [{upstream: 'http://x', weight: 1}]\n",
         "routes[0].split.by[2]", 4, "'sub' is listed twice"),
        ("routes:\n  - name: a\n    split:\n      by: [sub, 'a..b']\n      to: [{upstream: 'http://x', weight: 1}]\n",
         "routes[0].split.by[1]", 4, "empty segment"),
        ("routes:\n  - name: a\n    split:\n      by: [sub, [a, 3]]\n      to: [{upstream: 'http://x', weight: 1}]\n",
         "routes[0].split.by[1][1]", 4, "must be a string"),
        ("routes:\n  - name: a\n    split:\n      fallback_by: sub\n      to: [{upstream: 'http://x', weight: 1}]\n",
         "routes[0].split.fallback_by", 4, "is the same as by"),
        ("routes:\n  - name: a\n    split:\n      fallback_by: 7\n      to: [{upstream: 'http://x', weight: 1}]\n",
         "routes[0].split.fallback_by", 4, "a claim path must be a string"),
        ("routes:\n  - name: a\n    upstream: http://x\n    cohort_header: 'x cohort'\n",
         "routes[0].cohort_header", 4, "not a valid header name"),
        ("routes:\n  - name: a\n    upstream: http://x\n    cohort_header: Baggage\n",
         "routes[0].cohort_header", 4, "use baggage: true"),
        ("routes:\n  - name: a\n    upstream: http://x\n    cohort_header: null\n",
         "routes[0].cohort_header", 4, "expected a string"),
        ("routes:\n  - name: a\n    upstream: http://x\n    baggage: 'yes'\n",
         "routes[0].baggage", 4, "expected true or false"),
    ],
)  # fmt: skip
def test_split_by_and_cohort_load_errors(text, key_path, line, fragment):
    with pytest.raises(PolicyError) as info:
        routes_from(text)
    assert (info.value.key_path, info.value.line) == (key_path, line)
    assert fragment in info.value.reason
    assert str(info.value).startswith(f"policy.yaml:{line}: {key_path}: ")


POLICY_HEAD = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {url: "http://127.0.0.1:9/jwks.json"}
    token_source: {headers: [{name: authorization, prefix: "Bearer "}, {name: x-token}]}
    claims_to_headers: [{claim: sub, header: x-user}, {claim: bag, header: BAGGAGE}]
routes:
  - name: r
    upstream: http://x
"""


@pytest.mark.parametrize(
    ("option", "key_path", "fragment"),
    [
        ("cohort_header: Host", "routes[0].cohort_header", "cannot carry the cohort"),
        ("cohort_header: content-length", "routes[0].cohort_header", "cannot carry the cohort"),
        ("cohort_header: X-Token", "routes[0].cohort_header", "carries tokens"),
        ("cohort_header: x-user", "routes[0].cohort_header", "also set from a token"),
        ("baggage: true", "routes[0].baggage", "'baggage' is set from a token"),
    ],
)
def test_cohort_header_policy_load_errors(tmp_path, option, key_path, fragment):
    from claimroute.policy.load import load_policy_text

    with pytest.raises(PolicyError) as info:
        load_policy_text(POLICY_HEAD + f"    {option}\n", "policy.yaml", tmp_path)
    assert (info.value.key_path, info.value.line) == (key_path, 11)
    assert fragment in info.value.reason


def test_cohort_headers_are_identity_headers(tmp_path):
    from claimroute.policy.load import load_policy_text

    text = POLICY_HEAD.replace(", {claim: bag, header: BAGGAGE}", "") + (
        "    cohort_header: X-Cohort\n    baggage: true\n"
        "  - {name: s, cohort_header: x-cohort, split: {to: [{upstream: 'http://y', weight: 1}]}}\n"
        "  - {name: t, cohort_header: x-other, upstream: 'http://z'}\n"
    )
    policy = load_policy_text(text, "policy.yaml", tmp_path)
    assert policy.identity_headers == {"x-user", "x-cohort", "x-other"}
    assert "baggage" not in policy.identity_headers  # the client's members are kept
