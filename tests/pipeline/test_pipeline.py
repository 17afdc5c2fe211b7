"""The stages in order: validation modes, multiple tokens, location binding, RBAC on anonymous."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mitmproxy.http import Headers

from claimroute.match.request import RequestView
from claimroute.pipeline.decide import decide
from claimroute.pipeline.keysources import build_key_sources
from claimroute.policy.load import load_policy_text

NOW = 1_800_000_000.0

POLICY = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {{file: corp.jwks.json}}
    claims_to_headers: [{{claim: sub, header: x-user}}]
  kube:
    issuer: https://kube.test
    jwks: {{file: kube.jwks.json}}
    token_source: {{headers: [{{name: x-kube-token}}]}}
validation: {validation}
rbac:
  default_action: deny
  policies:
    - name: public-get
      action: allow
      principals: [{{claims: {{sub: {{present: false}}}}}}]
      permissions: {{methods: [GET]}}
    - name: corp-users
      action: allow
      principals: [{{provider: corp}}]
routes:
  - name: anonymous-to-static
    match: {{authenticated: false}}
    upstream: http://static.internal
"""


@pytest.fixture
def issuers(make_issuer: Any):
    return make_issuer("corp", "RS256"), make_issuer("kube", "ES256")


def setup(tmp_path: Path, issuers, validation: str):
    corp, kube = issuers
    corp.write_jwks(tmp_path / "corp.jwks.json")
    kube.write_jwks(tmp_path / "kube.jwks.json")
    policy = load_policy_text(POLICY.format(validation=validation), "p.yaml", base=tmp_path)
    return policy, build_key_sources(policy)


def request(method: str = "GET", query: tuple[tuple[str, str], ...] = (), **headers: str):
    return RequestView(method, "http", "api.test", 80, "/x", query, Headers(**headers))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_require_valid(tmp_path, issuers):
    policy, sources = setup(tmp_path, issuers, "require_valid")
    corp, _ = issuers
    missing = await decide(request(), policy, sources, NOW)
    assert (missing.rejection.status, missing.rejection.error) == (401, None)
    bad = await decide(request(**bearer("a.b.c")), policy, sources, NOW)
    assert (bad.rejection.status, bad.rejection.error) == (401, "invalid_token")
    good = await decide(request(**bearer(corp.mint("ann", now=NOW))), policy, sources, NOW)
    assert good.allowed and good.set_headers == (("x-user", "ann"),)
    assert good.rbac.policy == "corp-users"


async def test_allow_missing_lets_anonymous_through_but_not_bad_tokens(tmp_path, issuers):
    policy, sources = setup(tmp_path, issuers, "allow_missing")
    anonymous = await decide(request(), policy, sources, NOW)
    assert anonymous.allowed and anonymous.outcome == "anonymous"
    assert anonymous.rbac.policy == "public-get"  # evaluated with no claims
    assert anonymous.route.name == "anonymous-to-static"
    post = await decide(request("POST"), policy, sources, NOW)
    assert post.rejection.status == 403  # anonymous, but RBAC allows only GET
    bad = await decide(request(**bearer("a.b.c")), policy, sources, NOW)
    assert bad.rejection.status == 401


async def test_allow_missing_or_failed_treats_a_bad_token_as_anonymous(tmp_path, issuers):
    policy, sources = setup(tmp_path, issuers, "allow_missing_or_failed")
    corp, _ = issuers
    expired = corp.mint("ann", tamper="expired", now=NOW)
    decision = await decide(request(**bearer(expired)), policy, sources, NOW)
    assert decision.allowed and decision.outcome == "anonymous"
    assert decision.token_failure == "Jwt is expired"
    assert decision.claims is None and decision.set_headers == ()
    assert decision.token is not None and not decision.keep_token  # removed before upstream
    assert decision.record()["token_failure"] == "Jwt is expired"


async def test_multiple_tokens_are_400_in_every_mode(tmp_path, issuers):
    corp, _ = issuers
    token = corp.mint("ann", now=NOW)
    for mode in ("require_valid", "allow_missing", "allow_missing_or_failed"):
        policy, sources = setup(tmp_path, issuers, mode)
        both = request(query=(("access_token", token),), **bearer(token))
        decision = await decide(both, policy, sources, NOW)
        assert (decision.rejection.status, decision.rejection.error) == (400, "invalid_request")


async def test_a_token_is_only_accepted_where_its_provider_looks(tmp_path, issuers):
    policy, sources = setup(tmp_path, issuers, "require_valid")
    corp, kube = issuers
    # A kube token in Authorization: kube only reads x-kube-token.
    misplaced = await decide(request(**bearer(kube.mint("svc", now=NOW))), policy, sources, NOW)
    assert misplaced.rejection.reason == "Jwt issuer is not configured"
    placed = await decide(request(x_kube_token=kube.mint("svc", now=NOW)), policy, sources, NOW)
    assert placed.provider == "kube"  # verified; then RBAC (no policy for kube) denies
    assert placed.reason == "RBAC: access denied"
    # A corp token in x-kube-token: corp does not read that header.
    wrong = await decide(request(x_kube_token=corp.mint("ann", now=NOW)), policy, sources, NOW)
    assert wrong.rejection.reason == "Jwt issuer is not configured"


async def test_record_never_contains_the_token_or_all_claims(tmp_path, issuers):
    policy, sources = setup(tmp_path, issuers, "require_valid")
    corp, _ = issuers
    token = corp.mint("ann", {"secret": "s3cr3t"}, now=NOW)
    record = (await decide(request(**bearer(token)), policy, sources, NOW)).record()
    text = repr(record)
    assert token not in text and "s3cr3t" not in text
    assert record["sub"] == "ann" and record["provider"] == "corp"


# -- cors_preflight: bypass ---------------------------------------------------------------------

PREFLIGHT_POLICY = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {{file: corp.jwks.json}}
    claims_to_headers: [{{claim: sub, header: x-user}}]
  kube:
    issuer: https://kube.test
    jwks: {{file: kube.jwks.json}}
    token_source: {{headers: [{{name: x-kube-token}}]}}
validation: require_valid
{cors}
rbac:
  default_action: deny
  policies:
    - name: no-preflight-on-admin
      action: deny
      permissions: {{paths: [{{prefix: /admin}}]}}
    - name: anyone-may-ask-options
      action: allow
      permissions: {{methods: [OPTIONS]}}
    - name: corp-users
      action: allow
      principals: [{{provider: corp}}]
routes:
  - name: corp-to-canary
    match: {{claims: {{sub: ann}}}}
    upstream: http://canary.internal
  - name: anonymous-to-static
    match: {{authenticated: false}}
    upstream: http://static.internal
"""

CORS = {"origin": "https://app.example", "access_control_request_method": "POST"}


def preflight_setup(tmp_path: Path, issuers, cors: str = "cors_preflight: bypass"):
    corp, kube = issuers
    corp.write_jwks(tmp_path / "corp.jwks.json")
    kube.write_jwks(tmp_path / "kube.jwks.json")
    policy = load_policy_text(PREFLIGHT_POLICY.format(cors=cors), "p.yaml", base=tmp_path)
    return policy, build_key_sources(policy)


def at(path: str, method: str = "OPTIONS", **headers: str) -> RequestView:
    return RequestView(method, "http", "api.test", 80, path, (), Headers(**headers))


async def test_a_cors_preflight_passes_without_a_token_as_an_anonymous_caller(tmp_path, issuers):
    policy, sources = preflight_setup(tmp_path, issuers)
    decision = await decide(at("/x", **CORS), policy, sources, NOW)
    assert decision.allowed, decision.reason
    assert (decision.outcome, decision.reason) == ("anonymous", "cors preflight")
    assert decision.claims is None and decision.set_headers == () and decision.token is None
    # RBAC still runs, with no caller: only a rule that anonymous requests satisfy allows it ...
    assert decision.rbac.policy == "anyone-may-ask-options"
    # ... and routes see the anonymous caller too.
    assert decision.route.name == "anonymous-to-static"
    assert decision.record()["reason"] == "cors preflight"
    # RBAC can still refuse a preflight: the bypass skips the token, nothing else.
    admin = await decide(at("/admin/x", **CORS), policy, sources, NOW)
    assert (admin.rejection.status, admin.reason) == (403, "RBAC: access denied")


async def test_only_a_real_preflight_is_bypassed(tmp_path, issuers):
    policy, sources = preflight_setup(tmp_path, issuers)
    not_preflights = [
        at("/x"),  # OPTIONS without the CORS headers
        at("/x", origin="https://app.example"),  # no Access-Control-Request-Method
        at("/x", access_control_request_method="POST"),  # no Origin
        at("/x", origin="", access_control_request_method="POST"),  # empty Origin
        at("/x", origin="https://app.example", access_control_request_method=" "),
        at("/x", "GET", **CORS),  # another method carrying the headers
        at("/x", "POST", **CORS),
        at("/x", "options", **CORS),  # methods are case-sensitive: not OPTIONS
    ]
    for request_view in not_preflights:
        decision = await decide(request_view, policy, sources, NOW)
        assert (decision.rejection.status, decision.reason) == (401, "Jwt is missing"), (
            request_view.method,
            request_view.headers,
        )


async def test_preflight_bypass_is_off_by_default_and_with_verify(tmp_path, issuers):
    for cors in ("", "cors_preflight: verify"):
        policy, sources = preflight_setup(tmp_path, issuers, cors)
        assert policy.cors_preflight_bypass is False
        decision = await decide(at("/x", **CORS), policy, sources, NOW)
        assert (decision.rejection.status, decision.reason) == (401, "Jwt is missing")


async def test_a_token_on_a_preflight_is_neither_verified_nor_forwarded(tmp_path, issuers):
    policy, sources = preflight_setup(tmp_path, issuers)
    corp, _ = issuers
    good = corp.mint("ann", now=NOW)  # would route to the canary if it were verified
    for token in (good, "a.b.c", corp.mint("ann", tamper="expired", now=NOW)):
        decision = await decide(at("/x", **CORS, **bearer(token)), policy, sources, NOW)
        assert decision.allowed and decision.outcome == "anonymous"
        assert decision.claims is None and decision.set_headers == ()
        assert decision.route.name == "anonymous-to-static"
        # The token is handed back to be removed before the request goes upstream.
        assert decision.token is not None and decision.token.token == token
        assert not decision.keep_token
        assert decision.token_failure == "not verified on a CORS preflight"
    # Two tokens are still 400, as on every request.
    both = at("/x", **CORS, **bearer(good), x_kube_token=good)
    decision = await decide(both, policy, sources, NOW)
    assert (decision.rejection.status, decision.reason) == (400, "Multiple tokens")


async def test_preflight_bypass_in_every_validation_mode(tmp_path, issuers):
    preflight_setup(tmp_path, issuers)  # writes the key files
    for mode in ("allow_missing", "allow_missing_or_failed"):
        policy_text = PREFLIGHT_POLICY.format(cors="cors_preflight: bypass").replace(
            "validation: require_valid", f"validation: {mode}"
        )
        policy = load_policy_text(policy_text, "p.yaml", base=tmp_path)
        sources = build_key_sources(policy)
        decision = await decide(at("/x", **CORS), policy, sources, NOW)
        assert decision.allowed and decision.reason == "cors preflight"
        # A plain OPTIONS is an ordinary anonymous request in these modes.
        plain = await decide(at("/x"), policy, sources, NOW)
        assert plain.allowed and plain.reason == "no token"
