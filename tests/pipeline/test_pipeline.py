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
