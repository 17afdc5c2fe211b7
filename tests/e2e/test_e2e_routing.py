"""Authorization and claim-based routing end to end: two real upstreams that name themselves."""

from __future__ import annotations

import json

import aiohttp
import pytest
import pytest_asyncio

from claimroute_tools.lab import EchoUpstream, MitmdumpProcess, TestIssuer

from .conftest import Reply, send, write

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SVC = "system:serviceaccount:default:{}"

POLICY = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {{file: corp.jwks.json}}
    claims_to_headers: [{{claim: org, header: x-org}}]
  kube:
    issuer: https://kube.test
    jwks: {{file: kube.jwks.json}}
rbac:
  mode: {mode}
  default_action: deny
  policies:
    - name: no-admin-host
      action: deny
      permissions: {{hosts: [admin.internal]}}
    - name: people
      action: allow
      principals: [{{provider: corp}}]
    - name: svc-a-reads-pets
      action: allow
      principals:
        - provider: kube
          claims: {{sub: "system:serviceaccount:default:svc-a"}}
      permissions: {{methods: [GET], paths: [{{prefix: /api/pets}}]}}
routes:
  - name: employees-to-canary
    match: {{claims: {{org: solo.io}}}}
    upstream: {canary}
  - name: ten-percent
    match: {{authenticated: true, headers: {{x-experiment: "on"}}}}
    split:
      salt: e2e
      to: [{{upstream: "{canary}", weight: 10}}, {{upstream: "{primary}", weight: 90}}]
"""


@pytest.fixture(scope="module")
def corp():
    return TestIssuer("corp", "RS256")


@pytest.fixture(scope="module")
def kube():
    return TestIssuer("kube", "ES256")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstreams():
    async with EchoUpstream("primary") as primary, EchoUpstream("canary") as canary:
        yield {"primary": primary, "canary": canary}


def write_policy(folder, corp, kube, upstreams, mode="enforce"):
    corp.write_jwks(folder / "corp.jwks.json")
    kube.write_jwks(folder / "kube.jwks.json")
    text = POLICY.format(
        mode=mode, canary=upstreams["canary"].url, primary=upstreams["primary"].url
    )
    return write(folder / "policy.yaml", text)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(tmp_path_factory, corp, kube, upstreams):
    policy = write_policy(tmp_path_factory.mktemp("enforce"), corp, kube, upstreams)
    async with MitmdumpProcess(policy) as process:
        yield process


@pytest.fixture
def clean(upstreams):
    for server in upstreams.values():
        server.clear()
    return upstreams


async def test_employees_reach_canary_and_others_primary(proxy, corp, clean):
    primary_url = clean["primary"].url
    employee = await send(
        proxy.proxy_url, f"{primary_url}/api", token=corp.mint("e1", {"org": "solo.io"})
    )
    customer = await send(
        proxy.proxy_url, f"{primary_url}/api", token=corp.mint("c1", {"org": "example.com"})
    )
    assert (employee.status, employee.upstream) == (200, "canary")
    assert (customer.status, customer.upstream) == (200, "primary")
    assert employee.seen_headers["x-org"] == "solo.io"
    assert [r.header("x-org") for r in clean["canary"].received] == ["solo.io"]
    assert [r.header("x-org") for r in clean["primary"].received] == ["example.com"]


async def test_sticky_split_through_the_proxy_matches_the_published_buckets(proxy, corp, clean):
    from claimroute.policy.routes import bucket_of

    url = f"{clean['primary'].url}/api"
    for index in range(40):
        sub = f"user-{index}"
        token = corp.mint(sub, {"org": "example.com"})
        expected = "canary" if bucket_of("e2e", "ten-percent", sub) < 1000 else "primary"
        for _ in range(2):  # the same user twice: same upstream
            reply = await send(proxy.proxy_url, url, token=token, headers={"x-experiment": "on"})
            assert reply.upstream == expected, sub


async def test_service_account_permissions(proxy, kube, clean):
    url = f"{clean['primary'].url}/api/pets/7"
    svc_a = kube.mint(SVC.format("svc-a"))
    svc_b = kube.mint(SVC.format("svc-b"))
    assert (await send(proxy.proxy_url, url, token=svc_a)).status == 200
    clean["primary"].clear()
    for token, method in [(svc_a, "POST"), (svc_b, "GET")]:
        reply = await send(proxy.proxy_url, url, token=token, method=method)
        assert (reply.status, reply.text) == (403, "RBAC: access denied")
    assert clean["primary"].received == []


async def test_dry_run_lets_it_through_and_records_the_denial(tmp_path, corp, kube, upstreams):
    policy = write_policy(tmp_path, corp, kube, upstreams, mode="dry_run")
    log_file = tmp_path / "decisions.jsonl"
    options = {"claimroute_log": str(log_file), "claimroute_debug_headers": True}
    async with MitmdumpProcess(policy, options=options) as process:
        url = f"{upstreams['primary'].url}/api/pets"
        reply = await send(
            process.proxy_url, url, token=kube.mint(SVC.format("svc-b")), method="DELETE"
        )
    assert (reply.status, reply.upstream) == (200, "primary")
    assert reply.headers["x-claimroute-rbac"] == "deny; policy=(default)"
    [record] = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert record["rbac"] == {"decision": "deny", "policy": None, "mode": "dry_run"}
    assert record["outcome"] == "allowed"
    assert record["sub"] == SVC.format("svc-b")


async def test_reverse_mode_with_lazy_connections(tmp_path, corp, kube, upstreams):
    """Reverse mode: canary routing works, and with connection_strategy=lazy a dead primary
    does not break requests that go to the canary."""
    dead = EchoUpstream("dead")
    await dead.start()
    dead_url = dead.url
    await dead.stop()  # the reverse target now refuses connections
    policy = write_policy(tmp_path, corp, kube, upstreams)
    async with MitmdumpProcess(
        policy, mode=f"reverse:{dead_url}", options={"connection_strategy": "lazy"}
    ) as process:
        # Reverse mode: the client talks to the proxy as if it were the server (no proxy=).
        employee = await direct(f"{process.proxy_url}/api", corp.mint("e2", {"org": "solo.io"}))
        customer = await direct(f"{process.proxy_url}/api", corp.mint("c2", {"org": "x.com"}))
    assert (employee.status, employee.upstream) == (200, "canary")
    assert customer.status == 502  # the primary is down; only its requests fail


async def direct(url: str, token: str) -> Reply:
    """A request straight to `url` (reverse mode), with a bearer token."""
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        text = await response.text()
        return Reply(response.status, text, dict(response.headers))


async def test_escaped_paths_cannot_dodge_a_path_rule(proxy, kube, clean):
    """svc-a may read /api/pets only: escaped dot segments and slashes that an upstream decodes
    into another path are judged on that path (docs/policy.md, Permissions)."""
    from yarl import URL

    base = clean["primary"].url
    svc_a = kube.mint(SVC.format("svc-a"))
    for dodge in ("/api/pets/..%2F..%2Fadmin", "/api/pets/%2e%2e/%2E%2E/admin",
                  "/api/pets/..%5C..%5Cadmin", "/%61pi/pets/../../admin"):  # fmt: skip
        reply = await send(proxy.proxy_url, URL(base + dodge, encoded=True), token=svc_a)
        assert (reply.status, reply.text) == (403, "RBAC: access denied"), dodge
    assert clean["primary"].received == []
    # An escaped form of an allowed path is allowed, and the upstream gets it as sent.
    reply = await send(proxy.proxy_url, URL(base + "/%61pi/pets/%37", encoded=True), token=svc_a)
    assert reply.status == 200
    [seen] = clean["primary"].received
    assert (seen.raw_path, seen.path) == ("/%61pi/pets/%37", "/api/pets/7")


async def test_a_host_rule_sees_every_name_the_request_gives(proxy, corp, clean):
    """Regular proxy mode: the client names the host twice (request target and Host header).
    A deny on admin.internal holds whichever of them says so, and a final dot changes nothing."""
    token = corp.mint("e3", {"org": "example.com"})
    port = clean["primary"].url.rsplit(":", 1)[1]
    for target, host in (("127.0.0.1", "admin.internal"), ("127.0.0.1", "ADMIN.internal."),
                         ("admin.internal", f"127.0.0.1:{port}")):  # fmt: skip
        url = f"http://{target}:{port}/api"
        reply = await send(proxy.proxy_url, url, token=token, headers={"Host": host})
        assert (reply.status, reply.text) == (403, "RBAC: access denied"), (target, host)
    assert clean["primary"].received == []
    reply = await send(proxy.proxy_url, f"http://127.0.0.1:{port}/api", token=token)
    assert (reply.status, reply.upstream) == (200, "primary")
