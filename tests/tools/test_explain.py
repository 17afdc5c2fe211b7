"""`claimroute explain`: every stage of one request, from the code the proxy runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy.http import Headers

from claimroute.match.request import RequestView
from claimroute.pipeline.decide import decide
from claimroute.pipeline.keysources import build_key_sources
from claimroute.policy.load import load_policy_text
from claimroute_tools import explain as ex
from claimroute_tools.explain import RequestSpec, UsageError
from tests.pipeline.test_identity import POLICY, callers

CLAIMROUTE = Path(sys.executable).parent / "claimroute"
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, make_issuer: Any) -> Path:
    folder = tmp_path_factory.mktemp("explain")
    make_issuer("corp", "RS256", issuer="https://corp.test").write_jwks(folder / "corp.jwks.json")
    make_issuer("partner", "ES256", issuer="https://partner.test").write_jwks(
        folder / "partner.jwks.json"
    )
    return folder


@pytest.fixture(scope="module", params=["deny", "allow"])
def policy(request: pytest.FixtureRequest, folder: Path):
    text = POLICY.replace("DEFAULT", request.param)
    return load_policy_text(text, str(folder / "policy.yaml"), folder)


requests = st.tuples(
    st.sampled_from(["GET", "HEAD", "POST", "DELETE"]),
    st.sampled_from(["/api/x", "/api/../internal/a", "/internal", "/healthz", "/docs/a", "/"]),
    st.sampled_from(["api.test", "admin.test"]),
    st.sampled_from([None, "on", "off"]),
)


async def _decide(policy, token: str | None, method: str, path: str, host: str, exp: str | None):
    fields: dict[str, str] = {"host": host}
    if exp:
        fields["x-experiment"] = exp
    if token:
        fields["authorization"] = f"Bearer {token}"
    view = RequestView(method, "http", host, 80, path, (), Headers(**fields), ())
    return await decide(view, policy, build_key_sources(policy), NOW)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(caller=callers, request=requests)
async def test_explain_ends_where_decide_does(policy, make_issuer, caller, request):
    """Over generated callers and requests: explain (token and claims) gives decide's answer."""
    provider, claims = caller
    method, path, host, experiment = request
    token = None
    if provider is not None:
        issuer = make_issuer(provider, "RS256" if provider == "corp" else "ES256",
                             issuer=f"https://{provider}.test")  # fmt: skip
        extra = {k: v for k, v in claims.items() if k != "sub"}
        token = issuer.mint(claims["sub"], extra, now=int(NOW))
    headers = [("x-experiment", experiment)] if experiment else []
    spec = RequestSpec(method, path, host, headers, token=token)
    explained = await ex.explain_async(policy, spec, NOW)
    decided = await _decide(policy, token, method, path, host, experiment)
    assert explained.decision.record() == decided.record()
    assert explained.decision.set_headers == decided.set_headers
    assert (explained.status is None) == decided.allowed
    if decided.rejection is not None:
        assert explained.status == decided.rejection.status
        body = explained.data["outcome"]["body"]
        if method == "HEAD":  # no body, the length a GET would have had (as the addon does)
            length = explained.data["outcome"]["headers"]["content-length"]
            assert body == "" and length == str(len(decided.rejection.reason.encode()))
        else:
            assert body == decided.rejection.reason
    elif decided.route is not None:
        assert explained.upstream_url.startswith(decided.route.upstream)
    if provider is not None:
        # The same caller from --claims: the same RBAC and route answers.
        by_claims = await ex.explain_async(
            policy, RequestSpec(method, path, host, headers, claims=claims, provider=provider), NOW
        )
        assert by_claims.decision.rbac == decided.rbac
        assert by_claims.decision.route == decided.route
        assert by_claims.status == (None if decided.allowed else decided.rejection.status)
    # Every stage is in the document, and it is JSON.
    json.dumps(explained.data)


async def test_the_explanation_names_every_condition(policy, make_issuer):
    token = make_issuer("partner", "ES256", issuer="https://partner.test").mint(
        "ann", {"org": "beta"}, now=int(NOW)
    )
    got = await ex.explain_async(
        policy, RequestSpec("POST", "/api/x", "api.test", token=token), NOW
    )
    data = got.data
    assert data["verification"]["result"] == "verified"
    assert data["verification"]["provider"] == "partner"
    rbac = {p["name"]: p for p in data["rbac"]["policies"]}
    assert rbac["no-internal"]["result"] == "permissions do not cover the request"
    assert rbac["no-partner-writes"]["result"] == "decides"
    assert rbac["no-partner-writes"]["principals"][0]["result"] == ex.MATCHED
    assert rbac["readers"]["result"] == ex.NOT_EVALUATED
    assert data["outcome"] == {**data["outcome"], "action": "refuse", "status": 403}
    assert data["routes"]["routes"][0]["result"] == ex.NOT_EVALUATED


async def test_claims_mode_says_it_skipped_verification(policy):
    spec = RequestSpec("GET", "/api/x", "api.test", claims={"sub": "bob", "roles": ["reader"]},
                       provider="corp")  # fmt: skip
    got = await ex.explain_async(policy, spec, NOW)
    assert got.data["verification"]["result"] == "skipped"
    assert "not checked" in "\n".join(ex.render_text(got.data))
    assert ("x-user", "bob") in got.upstream_headers
    sticky = got.data["routes"]["routes"][-1]
    assert sticky["result"] == ex.MATCHED and sticky["choice"]["split"]["value"] == "bob"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (RequestSpec(token="not-a-jwt"), "--token: not a parsable JWT"),
        (RequestSpec(claims={}, provider="nope"), "no such provider"),
        (RequestSpec(claims={}), "go together"),
        (RequestSpec(path="api"), "a path starts with /"),
    ],
)
async def test_bad_input_is_a_usage_error(policy, spec, message):
    with pytest.raises(UsageError, match=message):
        await ex.explain_async(policy, spec, NOW)


POLICY_CLI = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {file: corp.jwks.json}
    claims_to_headers: [{claim: sub, header: x-user}]
rbac:
  mode: dry_run
  policies:
    - {name: readers, action: allow, principals: [{provider: corp}], permissions: {methods: [GET]}}
routes:
  - {name: all, upstream: "http://127.0.0.1:9"}
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLAIMROUTE), *args], capture_output=True, text=True, timeout=60)


def test_cli_text_and_json(folder: Path, make_issuer: Any) -> None:
    path = folder / "cli.yaml"
    path.write_text(POLICY_CLI)
    token = make_issuer("corp", "RS256", issuer="https://corp.test").mint("ann")
    done = run("explain", str(path), "--token", token, "--method", "POST", "--path", "/a",
               "--header", "x-user: forged")  # fmt: skip
    assert done.returncode == 0, done.stderr
    for text in ("1. token", "2. verification", "3. rbac", "dry run: would deny", "4. routes",
                 "forward to http://127.0.0.1:9/a", "x-user: ann", "token removed",
                 "identity headers removed: x-user"):  # fmt: skip
        assert text in done.stdout, text
    done = run("explain", str(path), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["outcome"]["status"] == 401
    assert data["outcome"]["www_authenticate"].startswith("Bearer realm=")
    done = run("explain", str(path), "--claims", "[1]", "--provider", "corp")
    assert done.returncode == 2 and "expected a JSON object" in done.stderr
    assert "Traceback" not in done.stderr
    done = run("explain", str(path), "--token", "x.y")
    assert done.returncode == 2 and "--token" in done.stderr and "Traceback" not in done.stderr
