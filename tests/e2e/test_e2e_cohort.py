"""Running it for real: `has_word` on scopes, a split by two claims, and the cohort passed to the
upstream (a cohort header and W3C baggage), through a real mitmdump and two real upstreams."""

from __future__ import annotations

import hashlib
from urllib.parse import unquote

import aiohttp
import pytest
import pytest_asyncio
from multidict import CIMultiDict

from claimroute_tools.lab import EchoUpstream, MitmdumpProcess, TestIssuer

from .conftest import Reply, send, write

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

POLICY = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {{file: corp.jwks.json}}
    claims_to_headers: [{{claim: sub, header: x-user}}]
validation: allow_missing
rbac:
  default_action: allow
  policies:
    - name: admin-area-needs-the-admin-scope
      action: deny
      principals: [{{claims: {{scope: {{not: {{has_word: admin}}}}}}}}]
      permissions: {{paths: [{{prefix: /admin}}]}}
routes:
  - name: admins
    match: {{claims: {{scope: {{has_word: admin}}}}, paths: [{{prefix: /admin}}]}}
    cohort_header: X-Cohort
    upstream: {canary}
  - name: sticky-canary
    match: {{authenticated: true, paths: [{{prefix: /api}}]}}
    cohort_header: x-cohort
    baggage: true
    split:
      by: [tenant, sub]
      fallback_by: sub
      salt: e2e-cohort
      to: [{{upstream: "{canary}", weight: 30}}, {{upstream: "{primary}", weight: 70}}]
"""

SALT, ROUTE = "e2e-cohort", "sticky-canary"


def published_bucket(value: str) -> int:
    """docs/policy.md "Sticky split", written out independently of the addon's code."""
    digest = hashlib.sha256(f"{SALT}:{ROUTE}:{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10000


def cohort_fields(value: str) -> dict[str, str]:
    """The documented cohort header format: `key=value` pairs separated by `; `, each value
    percent-encoded."""
    return {key: unquote(text) for key, text in (pair.split("=", 1) for pair in value.split("; "))}


@pytest.fixture(scope="module")
def corp():
    return TestIssuer("corp", "ES256", issuer="https://corp.test")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstreams():
    async with EchoUpstream("primary") as primary, EchoUpstream("canary") as canary:
        yield {"primary": primary, "canary": canary}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(tmp_path_factory, corp, upstreams):
    folder = tmp_path_factory.mktemp("cohort")
    corp.write_jwks(folder / "corp.jwks.json")
    text = POLICY.format(canary=upstreams["canary"].url, primary=upstreams["primary"].url)
    async with MitmdumpProcess(write(folder / "policy.yaml", text)) as process:
        yield process


@pytest.fixture
def clean(upstreams):
    for server in upstreams.values():
        server.clear()
    return upstreams


async def send_raw(proxy_url: str, url: str, headers: list[tuple[str, str]]) -> Reply:
    """A request with header fields exactly as listed (duplicates and spellings kept)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session,
        session.get(url, headers=CIMultiDict(headers), proxy=proxy_url) as response,
    ):
        text = await response.text()
        return Reply(response.status, text, {k.lower(): v for k, v in response.headers.items()})


async def test_has_word_on_scope_decides_rbac_and_routing(proxy, corp, clean):
    url = f"{clean['primary'].url}/admin/users"
    canary = clean["canary"].url
    for scope in ("read admin", "admin", ["pets", "admin"], "read  admin "):
        reply = await send(proxy.proxy_url, url, token=corp.mint("ann", {"scope": scope}))
        assert (reply.status, reply.upstream) == (200, "canary"), scope
        assert cohort_fields(reply.seen_headers["x-cohort"]) == {
            "route": "admins",
            "target": canary,
        }
    # `contains` would let these in: has_word does not
    for scope in ("superadmin", "read admins", "read:admin", "Admin", ["superadmin"]):
        reply = await send(proxy.proxy_url, url, token=corp.mint("bob", {"scope": scope}))
        assert (reply.status, reply.text) == (403, "RBAC: access denied"), scope
    assert (await send(proxy.proxy_url, url)).status == 403  # anonymous: no scope at all
    assert len(clean["canary"].received) == 4 and clean["primary"].received == []


async def test_a_split_by_tenant_and_user_matches_the_published_formula(proxy, corp, clean):
    url = f"{clean['primary'].url}/api/orders"
    seen: dict[str, int] = {"canary": 0, "primary": 0}
    for index in range(40):
        tenant, sub = f"tenant-{index % 3}", f"user-{index}"
        bucket = published_bucket(f'["{tenant}","{sub}"]')
        expected = "canary" if bucket < 3000 else "primary"
        token = corp.mint(sub, {"tenant": tenant})
        for _ in range(2):  # sticky: the same user twice, the same upstream
            reply = await send(proxy.proxy_url, url, token=token)
            assert (reply.status, reply.upstream) == (200, expected), sub
        assert cohort_fields(reply.seen_headers["x-cohort"])["bucket"] == f"{bucket:04d}"
        seen[expected] += 1
    assert seen["canary"] and seen["primary"]  # both cohorts exist
    # no tenant: fallback_by sub, hashed as the plain text of sub
    for index in range(10):
        sub = f"solo-{index}"
        expected = "canary" if published_bucket(sub) < 3000 else "primary"
        reply = await send(proxy.proxy_url, url, token=corp.mint(sub))
        assert (reply.status, reply.upstream) == (200, expected), sub


async def test_the_cohort_header_and_baggage_reach_the_upstream(proxy, corp, clean):
    url = f"{clean['primary'].url}/api/orders"
    tenant, sub = "acme", "ann"
    bucket = published_bucket(f'["{tenant}","{sub}"]')
    name = "canary" if bucket < 3000 else "primary"
    target = clean[name].url
    token = corp.mint(sub, {"tenant": tenant})
    forged = [
        ("Authorization", f"Bearer {token}"),
        ("X-Cohort", "route=admins; target=http://evil; bucket=0000"),
        ("x_cohort", "route=admins"),  # an underscore spelling goes too
        ("baggage", "userId=7, claimroute.route=admins"),
        ("baggage", "Claimroute.Target=http://evil;p=1,session=s1"),
    ]
    reply = await send_raw(proxy.proxy_url, url, forged)
    assert (reply.status, reply.upstream) == (200, name)
    [received] = clean[name].received
    cohorts = [v for k, v in received.headers if k.lower().replace("_", "-") == "x-cohort"]
    assert cohorts == [f"route={ROUTE}; target={target}; bucket={bucket:04d}"]
    assert cohort_fields(cohorts[0]) == {
        "route": ROUTE,
        "target": target,
        "bucket": f"{bucket:04d}",
    }
    assert received.header_values("baggage") == [
        f"userId=7,session=s1,claimroute.route={ROUTE},claimroute.target={target},"
        f"claimroute.bucket={bucket:04d}"
    ]
    assert received.header("x-user") == sub


async def test_forged_copies_go_on_requests_no_route_takes(proxy, clean):
    url = f"{clean['primary'].url}/public"
    forged = [
        ("X-Cohort", "route=sticky-canary; target=http://evil"),
        ("baggage", "claimroute.route=sticky-canary,claimroute.bucket=0001,lang=fr"),
    ]
    reply = await send_raw(proxy.proxy_url, url, forged)
    assert (reply.status, reply.upstream) == (200, "primary")
    [received] = clean["primary"].received
    assert received.header("x-cohort") is None
    assert received.header_values("baggage") == ["lang=fr"]
    # a client baggage header without claimroute.* members passes untouched
    await send_raw(proxy.proxy_url, url, [("baggage", "a=1, b=2;p")])
    assert clean["primary"].received[-1].header_values("baggage") == ["a=1, b=2;p"]
