"""An Identity (the caller's half of RBAC and routing, worked out once per token) changes no answer.

RBAC and routing conditions are split into those on the caller (provider, claims,
`authenticated`) and those on the request (methods, paths, hosts, headers). The caller's half is
memoised per verified token; these tests check, over generated callers and requests, that the
split evaluation gives exactly what evaluating every condition of every rule in order gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.http import Headers

from claimroute.match.request import RequestView
from claimroute.pipeline.identity import identity_of
from claimroute.policy.load import load_policy_text
from claimroute.policy.model import Policy
from claimroute.policy.routes import _choose, choose_route, route_for

POLICY = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {file: corp.jwks.json}
    claims_to_headers: [{claim: sub, header: x-user}, {claim: roles, header: x-roles}]
  partner:
    issuer: https://partner.test
    jwks: {file: partner.jwks.json}
validation: allow_missing
rbac:
  default_action: DEFAULT
  policies:
    - {name: no-internal, action: deny, permissions: {paths: [{prefix: /internal}]}}
    - name: no-partner-writes
      action: deny
      principals: [{provider: partner}]
      permissions: {methods: [POST, DELETE]}
    - name: readers
      action: allow
      principals: [{claims: {roles: {contains: reader}}}, {claims: {org: beta}}]
      permissions: {methods: [GET, HEAD], paths: [{prefix: /api/}]}
    - name: admins-on-admin-host
      action: allow
      principals: [{provider: corp, claims: {roles: {contains: admin}, level: {gte: 3}}}]
      permissions: {hosts: [admin.test]}
    - {name: health, action: allow, permissions: {paths: [{exact: /healthz}]}}
routes:
  - name: experiment
    match: {headers: {x-experiment: "on"}, authenticated: true}
    upstream: http://experiment:8080
  - name: beta-writes
    match: {claims: {org: beta}, methods: [POST]}
    upstream: http://beta-writes:8080
  - name: beta
    match: {claims: {org: beta}}
    upstream: http://beta:8080
  - name: anonymous-docs
    match: {authenticated: false, paths: [{prefix: /docs}]}
    upstream: http://docs:8080
  - name: sticky
    match: {authenticated: true, paths: [{regex: "/api/.*"}]}
    split:
      salt: s
      to: [{upstream: "http://canary:8080", weight: 10}, {upstream: "http://primary:8080", weight: 90}]
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, make_issuer: Any) -> Path:
    folder = tmp_path_factory.mktemp("identity")
    make_issuer("corp", "RS256", issuer="https://corp.test").write_jwks(folder / "corp.jwks.json")
    make_issuer("partner", "ES256", issuer="https://partner.test").write_jwks(
        folder / "partner.jwks.json"
    )
    return folder


@pytest.fixture(scope="module", params=["deny", "allow"])
def policy(request: pytest.FixtureRequest, folder: Path) -> Policy:
    text = POLICY.replace("DEFAULT", request.param)
    return load_policy_text(text, str(folder / "policy.yaml"), folder)


callers = st.one_of(
    st.just((None, None)),
    st.tuples(
        st.sampled_from(["corp", "partner"]),
        st.fixed_dictionaries(
            {"sub": st.sampled_from(["ann", "bob", "carol", "dave"])},
            optional={
                "roles": st.lists(st.sampled_from(["reader", "admin", "writer"]), max_size=3),
                "org": st.sampled_from(["beta", "acme", 1, True]),
                "level": st.sampled_from([1, 3, 4.5, "3"]),
            },
        ),
    ),
)


def make_request(method: str, path: str, host: str, experiment: str | None) -> RequestView:
    headers = Headers(host=host, **({"x-experiment": experiment} if experiment else {}))
    return RequestView(method, "http", host, 80, path, (), headers, ())


requests = st.builds(
    make_request,
    st.sampled_from(["GET", "HEAD", "POST", "DELETE", "get"]),
    st.sampled_from(["/api/x", "/api/../internal/a", "/internal", "/healthz", "/docs/a", "/"]),
    st.sampled_from(["api.test", "admin.test", "ADMIN.test"]),
    st.sampled_from([None, "on", "off"]),
)


def reference_rbac(policy: Policy, request: RequestView, provider: str | None, claims: Any):
    """Every condition of every rule, in order: the deny rules, then the allow rules."""
    rbac = policy.rbac
    assert rbac is not None
    for rules, allowed in ((rbac.deny, False), (rbac.allow, True)):
        for rule in rules:
            covered = rule.permissions is None or rule.permissions.matches(
                request, deny=rule.action == "deny"
            )
            if covered and rule.is_principal(provider, claims):
                return allowed, rule.name
    return rbac.default_allow, None


def reference_route(policy: Policy, request: RequestView, claims: Any):
    for route in policy.routes:
        match = route.match
        if match.identity_matches(claims) and match.request.matches(request):
            return _choose(route, claims)
    return None


@settings(max_examples=400, deadline=None)
@given(caller=callers, request=requests)
def test_identity_gives_the_answers_of_the_full_evaluation(policy, caller, request):
    provider_name, claims = caller
    provider = policy.providers[provider_name] if provider_name else None
    identity = identity_of(policy, provider, claims) if provider else policy.anonymous
    assert policy.rbac is not None
    result = policy.rbac.decide(request, identity.principals)
    assert (result.allowed, result.policy) == reference_rbac(policy, request, provider_name, claims)
    assert policy.rbac.evaluate(request, provider_name, claims) == result
    chosen = route_for(policy.routes, request, identity.route_choices)
    assert chosen == reference_route(policy, request, claims)
    assert choose_route(policy.routes, request, claims) == chosen


def test_identity_holds_the_caller_half(policy):
    corp = policy.providers["corp"]
    identity = identity_of(policy, corp, {"sub": "ann", "roles": ["reader"], "org": "beta"})
    assert identity.sub == "ann" and identity.provider_name == "corp"
    assert identity.set_headers == (("x-user", "ann"), ("x-roles", "reader"))
    # no-internal (no principals: everyone), no-partner-writes (partner only), readers (yes),
    # admins-on-admin-host (no admin role), health (everyone)
    assert identity.principals == (True, False, True, False, True)
    # `beta` reads nothing of the request, so it takes every request that gets that far: the
    # routes after it are never reached for this caller and their choices are not worked out.
    assert [c.name if c else None for c in identity.route_choices] == [
        "experiment", "beta-writes", "beta", None, None,
    ]  # fmt: skip
    acme = identity_of(policy, corp, {"sub": "ann", "org": "acme"})
    sticky = acme.route_choices[-1]
    assert sticky is not None and sticky.name == "sticky" and sticky.bucket is not None


def test_anonymous_identity_is_built_once_per_policy(policy):
    anonymous = policy.anonymous
    assert anonymous.provider is None and anonymous.claims is None and anonymous.sub is None
    assert anonymous.set_headers == () and not anonymous.keep_token
    assert [c.name if c else None for c in anonymous.route_choices] == [
        None, None, None, "anonymous-docs", None,
    ]  # fmt: skip


def test_a_reloaded_policy_has_its_own_anonymous_identity(policy, folder):
    again = load_policy_text(POLICY.replace("DEFAULT", "deny"), str(folder / "p.yaml"), folder)
    assert again.anonymous is not policy.anonymous


SURROGATE_POLICY = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {file: corp.jwks.json}
    claims_to_headers: [{claim: sub, header: x-user}]
rbac:
  default_action: allow
  policies:
    - {name: no-admin, action: deny, permissions: {paths: [{prefix: /admin}]}}
routes:
  - name: writes
    match: {methods: [POST]}
    split: {salt: s, to: [{upstream: "http://a:1", weight: 1}, {upstream: "http://b:1", weight: 1}]}
  - name: rest
    upstream: http://rest:1
"""


async def test_a_claim_with_a_lone_surrogate_gets_the_usual_answers(folder, make_issuer):
    """A signed `sub` of "\\ud800x" (legal JSON) must not turn answers into errors: the split
    hash of every reachable route is worked out with the Identity, before RBAC runs."""
    from claimroute.pipeline.decide import decide
    from claimroute.pipeline.keysources import build_key_sources
    from claimroute.policy.routes import bucket_of

    policy = load_policy_text(SURROGATE_POLICY, str(folder / "s.yaml"), folder)
    sources = build_key_sources(policy)
    corp = make_issuer("corp", "RS256", issuer="https://corp.test")
    token = corp.mint("\ud800x", now=1_800_000_000)

    async def answer(method: str, path: str):
        view = RequestView(method, "http", "api.test", 80, path, (),
                           Headers(authorization=f"Bearer {token}"), ())  # fmt: skip
        return await decide(view, policy, sources, 1_800_000_000.0)

    denied = await answer("GET", "/admin")
    assert denied.rejection is not None and denied.rejection.status == 403
    rest = await answer("GET", "/x")
    assert rest.allowed and rest.route is not None and rest.route.name == "rest"
    assert rest.set_headers == (("x-user", "\\ud800x"),)  # JSON-escaped, never raw
    writes = await answer("POST", "/x")
    assert writes.allowed and writes.route is not None and writes.route.name == "writes"
    # The published formula over the code points (surrogatepass), the same on every request.
    assert writes.route.bucket == bucket_of("s", "writes", "\ud800x")
    assert (await answer("POST", "/y")).route == writes.route


async def test_forward_payload_header_carries_the_payload_segment_on_every_request(
    folder, make_issuer
):
    """Envoy's forward_payload_header / Istio's outputPayloadToHeader: the verified token's
    payload segment, byte for byte, on misses and on cache hits alike."""
    import base64
    import json

    from claimroute.pipeline.decide import decide
    from claimroute.pipeline.keysources import build_key_sources
    from claimroute.pipeline.tokencache import TokenCache

    text = POLICY.replace("DEFAULT", "allow").replace(
        "    claims_to_headers: [{claim: sub, header: x-user}, {claim: roles, header: x-roles}]",
        "    claims_to_headers: [{claim: sub, header: x-user}]\n"
        "    forward_payload_header: X-Jwt-Payload",
    )
    policy = load_policy_text(text, str(folder / "payload.yaml"), folder)
    sources = build_key_sources(policy)
    corp = make_issuer("corp", "RS256", issuer="https://corp.test")  # wrote corp.jwks.json
    token = corp.mint("ann", {"roles": ["reader"]}, now=1_800_000_000)
    view = make_request("GET", "/api/x", "api.test", None)
    view.headers["authorization"] = f"Bearer {token}"
    cache = TokenCache()
    for expected_cache in ("miss", "hit"):
        decision = await decide(view, policy, sources, 1_800_000_000.0, cache)
        assert decision.allowed and decision.cache == expected_cache
        headers = dict(decision.set_headers)
        assert headers["x-jwt-payload"] == token.split(".")[1]
        padded = headers["x-jwt-payload"] + "=" * (-len(headers["x-jwt-payload"]) % 4)
        assert json.loads(base64.urlsafe_b64decode(padded))["sub"] == headers["x-user"] == "ann"


COHORT_POLICY = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {file: corp.jwks.json}
    claims_to_headers: [{claim: sub, header: x-user}]
validation: allow_missing
rbac:
  default_action: allow
  policies:
    - name: admin-needs-the-word
      action: deny
      principals: [{claims: {scope: {not: {has_word: admin}}}}]
      permissions: {paths: [{prefix: /admin}]}
routes:
  - name: admins
    match: {claims: {scope: {has_word: admin}}, paths: [{prefix: /admin}]}
    cohort_header: x-cohort
    upstream: http://admin:1
  - name: tenants
    match: {authenticated: true, paths: [{prefix: /api}]}
    cohort_header: x-cohort
    baggage: true
    split:
      by: [tenant, sub]
      fallback_by: sub
      salt: s
      to: [{upstream: "http://a:1", weight: 1}, {upstream: "http://b:1", weight: 1}]
"""


@pytest.fixture(scope="module")
def cohort_policy(folder: Path) -> Policy:
    return load_policy_text(COHORT_POLICY, str(folder / "cohort.yaml"), folder)


cohort_callers = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "sub": st.sampled_from(["ann", "bob", 7]),
            "tenant": st.sampled_from(["acme", "beta", None, ["x", "y"]]),
            "scope": st.sampled_from(["read admin", "superadmin", "admin", ["admin"], 3]),
        },
    ),
)


@settings(max_examples=300, deadline=None)
@given(claims=cohort_callers, request=requests)
def test_identity_answers_with_has_word_and_a_two_claim_split(cohort_policy, claims, request):
    corp = cohort_policy.providers["corp"]
    identity = identity_of(cohort_policy, corp, claims) if claims is not None else None
    identity = identity or cohort_policy.anonymous
    chosen = route_for(cohort_policy.routes, request, identity.route_choices)
    assert chosen == reference_route(cohort_policy, request, claims)
    assert choose_route(cohort_policy.routes, request, claims) == chosen


async def test_the_cohort_header_and_baggage_are_set_on_misses_and_hits(cohort_policy, make_issuer):
    from claimroute.pipeline.decide import decide
    from claimroute.pipeline.keysources import build_key_sources
    from claimroute.pipeline.tokencache import TokenCache
    from claimroute.policy.routes import bucket_of

    sources = build_key_sources(cohort_policy)
    corp = make_issuer("corp", "RS256", issuer="https://corp.test")
    now = 1_800_000_000
    cache = TokenCache()

    async def answer(path: str, token: str | None, **headers: str):
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        view = RequestView("GET", "http", "api.test", 80, path, (), Headers(**headers), ())
        return await decide(view, cohort_policy, sources, float(now), cache)

    token = corp.mint("ann", {"tenant": "acme", "scope": "read admin"}, now=now)
    bucket = bucket_of("s", "tenants", '["acme","ann"]')
    target = "http://a:1" if bucket < 5000 else "http://b:1"
    cohort = f"route=tenants; target={target}; bucket={bucket:04d}"
    members = f"claimroute.route=tenants,claimroute.target={target},claimroute.bucket={bucket:04d}"
    for expected_cache in ("miss", "hit"):
        decision = await answer("/api/x", token, baggage="claimroute.route=admins, u=1")
        assert decision.allowed and decision.cache == expected_cache
        assert decision.route is not None and decision.route.bucket == bucket
        assert decision.set_headers == (
            ("x-user", "ann"), ("x-cohort", cohort), ("baggage", f"u=1,{members}"),
        )  # fmt: skip
    admin = await answer("/admin/x", token)
    assert admin.set_headers == (
        ("x-user", "ann"),
        ("x-cohort", "route=admins; target=http://admin:1"),
    )
    # `superadmin` is not the word `admin`: RBAC denies, and no route would have taken it
    other = corp.mint("bob", {"scope": "superadmin"}, now=now)
    denied = await answer("/admin/x", other)
    assert denied.rejection is not None and denied.rejection.status == 403
    # no tenant: fallback_by sub
    fallback = await answer("/api/x", other)
    assert fallback.route is not None and fallback.route.bucket == bucket_of("s", "tenants", "bob")
    # anonymous, no route: no cohort, but forged claimroute.* members go
    anonymous = await answer("/elsewhere", None, baggage="claimroute.target=http://a:1,k=v")
    assert anonymous.route is None and anonymous.set_headers == (("baggage", "k=v"),)
    assert (await answer("/elsewhere", None, baggage="k=v")).set_headers == ()
