"""Imported Gloo and Istio configurations through a real mitmdump give the guides' outcomes.

The fixtures are the YAML the Gloo guides and Istio tasks publish (tests/tools/fixtures/). Only
key material is swapped after the import: the guides' keys are not ours, so each provider's
`jwks` points at a test issuer with the guide's issuer name, which mints the guides' tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from claimroute.config.source import parse_yaml_text
from claimroute_tools.importers import render, translate
from claimroute_tools.importers.common import to_yaml
from claimroute_tools.lab import EchoUpstream, MitmdumpProcess, TestIssuer

from .conftest import send

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

FIXTURES = Path(__file__).parents[1] / "tools" / "fixtures"
ISTIO = "testing@secure.istio.io"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstreams():
    async with EchoUpstream("primary") as primary, EchoUpstream("canary") as canary:
        yield {"primary": primary, "canary": canary}


def imported_policy(
    folder: Path,
    system: str,
    fixture: str,
    issuer: TestIssuer,
    upstreams: dict[str, str] | None = None,
) -> Path:
    """Import a fixture, point its one provider's keys at `issuer`, write the policy."""
    files = [FIXTURES / fixture]
    policy, _ = translate(system, files, upstreams)
    document, _ = parse_yaml_text(render(system, files, policy), "imported.yaml")
    [provider] = document["providers"].values()
    assert provider["issuer"] == issuer.issuer
    provider["jwks"] = {"file": str(issuer.write_jwks(folder / "keys.jwks.json"))}
    path = folder / "policy.yaml"
    path.write_text(to_yaml(document))
    return path


async def test_gloo_jwt_and_access_control(tmp_path, upstreams):
    kube = TestIssuer("kube", "RS256", issuer="kubernetes/serviceaccount")
    policy = imported_policy(
        tmp_path,
        "gloo",
        "gloo-jwt-access-control.yaml",
        kube,
        {"petstore": upstreams["primary"].url},
    )
    # The guide's token: a service-account JWT without exp.
    svc_a = kube.mint("system:serviceaccount:default:svc-a", {"exp": None, "iat": None})
    base = upstreams["canary"].url  # the route sends everything to the petstore (primary)
    async with MitmdumpProcess(policy) as proxy:
        missing = await send(proxy.proxy_url, f"{base}/api/pets/1")
        read = await send(proxy.proxy_url, f"{base}/api/pets/1", token=svc_a)
        write = await send(proxy.proxy_url, f"{base}/api/pets/1", token=svc_a, method="POST")
        elsewhere = await send(proxy.proxy_url, f"{base}/foo/", token=svc_a)
    assert (missing.status, missing.text) == (401, "Jwt is missing")
    assert (read.status, read.upstream) == (200, "primary")
    assert (write.status, write.text) == (403, "RBAC: access denied")
    assert (elsewhere.status, elsewhere.text) == (403, "RBAC: access denied")


async def test_gloo_claim_based_routing(tmp_path, upstreams):
    solo = TestIssuer("solo", "RS256", issuer="solo.io")
    urls = {
        "echoapp[stage=canary]": upstreams["canary"].url,
        "echoapp[stage=primary]": upstreams["primary"].url,
    }
    policy = imported_policy(tmp_path, "gloo", "gloo-claim-routing.yaml", solo, urls)
    solo_token = solo.mint("1234567890", {"org": "solo.io"})
    other_token = solo.mint("0987654321", {"org": "othercompany.com"})
    base = upstreams["primary"].url
    async with MitmdumpProcess(policy) as proxy:
        employee = await send(proxy.proxy_url, f"{base}/?token={solo_token}")
        other = await send(proxy.proxy_url, f"{base}/?token={other_token}")
        spoof = await send(
            proxy.proxy_url, f"{base}/", headers={"x-token": other_token, "x-company": "solo.io"}
        )
    assert (employee.status, employee.upstream) == (200, "canary")
    assert employee.seen_headers["x-company"] == "solo.io"
    assert (other.status, other.upstream) == (200, "primary")
    assert (spoof.status, spoof.upstream) == (200, "primary")


async def test_istio_jwt_authorization_task(tmp_path, upstreams):
    istio = TestIssuer("istio", "RS256", issuer=ISTIO)
    policy = imported_policy(tmp_path, "istio", "istio-authz-jwt.yaml", istio)
    token = istio.mint(ISTIO, {"foo": "bar"})  # demo.jwt
    token_group = istio.mint(ISTIO, {"groups": ["group1", "group2"], "scope": ["scope1"]})
    token_other = istio.mint(ISTIO, {"groups": ["group2"]})
    url = f"{upstreams['primary'].url}/headers"
    async with MitmdumpProcess(policy) as proxy:
        invalid = await send(proxy.proxy_url, url, token="invalidToken")
        group = await send(proxy.proxy_url, url, token=token_group)
        no_group = await send(proxy.proxy_url, url, token=token)
        other_group = await send(proxy.proxy_url, url, token=token_other)
        missing = await send(proxy.proxy_url, url)
    assert invalid.status == 401
    assert (group.status, group.upstream) == (200, "primary")
    assert (no_group.status, no_group.text) == (403, "RBAC: access denied")
    assert other_group.status == 403
    assert missing.status == 403  # an ALLOW policy exists: a request it does not allow is denied


async def test_istio_authentication_task_require_a_valid_token(tmp_path, upstreams):
    istio = TestIssuer("istio", "ES256", issuer=ISTIO)
    policy = imported_policy(tmp_path, "istio", "istio-authn-require-token.yaml", istio)
    url = f"{upstreams['primary'].url}/headers"
    async with MitmdumpProcess(policy) as proxy:
        missing = await send(proxy.proxy_url, url)
        bad = await send(proxy.proxy_url, url, token="deadbeef")
        good = await send(proxy.proxy_url, url, token=istio.mint(ISTIO))
    assert (missing.status, missing.text) == (403, "RBAC: access denied")
    assert bad.status == 401
    assert (good.status, good.upstream) == (200, "primary")


async def test_istio_authentication_task_per_path(tmp_path, upstreams):
    istio = TestIssuer("istio", "ES256", issuer=ISTIO)
    policy = imported_policy(tmp_path, "istio", "istio-authn-per-path.yaml", istio)
    base = upstreams["primary"].url
    async with MitmdumpProcess(policy) as proxy:
        headers = await send(proxy.proxy_url, f"{base}/headers")
        ip = await send(proxy.proxy_url, f"{base}/ip")
    assert headers.status == 403
    assert (ip.status, ip.upstream) == (200, "primary")
