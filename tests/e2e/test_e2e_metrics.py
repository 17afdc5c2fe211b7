"""Prometheus metrics end to end: a real mitmdump with `claimroute_metrics`, known traffic, and
a scrape of /metrics over HTTP parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import re

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from claimroute_tools.lab import (
    EchoUpstream,
    JwksServer,
    MitmdumpProcess,
    TestIssuer,
    run_mitmdump_until_exit,
)
from claimroute_tools.scenario import load_scenario, run_scenario

from .conftest import send, write

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

METRICS_LINE = re.compile(r"claimroute: metrics at (http://\S+/metrics)")


def policy(folder, jwks_url: str, primary: str, canary: str):
    return write(
        folder / "policy.yaml",
        f"""\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {{url: "{jwks_url}", timeout: 2s}}
    audiences: [api]
rbac:
  mode: dry_run
  default_action: deny
  policies:
    - {{name: staff, action: allow, principals: [{{claims: {{org: solo.io}}}}]}}
routes:
  - name: half
    match: {{authenticated: true}}
    split:
      salt: metrics
      to: [{{upstream: "{canary}", weight: 50}}, {{upstream: "{primary}", weight: 50}}]
""",
    )


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain")
        return await response.text()


async def test_counters_equal_the_traffic_sent(tmp_path):
    corp = TestIssuer("corp", "ES256", issuer="https://corp.test", audience="api")
    async with (
        JwksServer(corp) as jwks,
        EchoUpstream("primary") as primary,
        EchoUpstream("canary") as canary,
    ):
        path = policy(tmp_path, jwks.jwks_url("corp"), primary.url, canary.url)
        options = {"claimroute_metrics": "127.0.0.1:0"}
        async with MitmdumpProcess(path, options=options) as proxy:
            metrics_url = (await proxy.await_output(METRICS_LINE, since=0)).group(1)
            assert metrics_url.startswith("http://127.0.0.1:")
            target = f"{primary.url}/api/items/SECRETPATH?q=1"
            staff = [corp.mint(f"staff-sub-{i}", {"org": "solo.io"}) for i in range(12)]
            replies = [await send(proxy.proxy_url, target, token=t) for t in staff]
            replies.append(await send(proxy.proxy_url, target, token=staff[0]))  # a cache hit
            served = [r.upstream for r in replies]
            assert set(served) == {"primary", "canary"}  # the split chose both targets
            outsiders = [corp.mint(f"outsider-sub-{i}", {"org": "evil"}) for i in range(2)]
            for token in outsiders:  # dry run: RBAC would deny, the request goes through
                assert (await send(proxy.proxy_url, target, token=token)).status == 200
            for _ in range(2):
                assert (await send(proxy.proxy_url, target)).status == 401
            tampered = corp.mint("forger-sub", {"org": "solo.io"}, tamper="signature")
            assert (await send(proxy.proxy_url, target, token=tampered)).status == 401
            wrong_aud = corp.mint("aud-sub", {"org": "solo.io", "aud": "other"})
            assert (await send(proxy.proxy_url, target, token=wrong_aud)).status == 403
            text = await scrape(metrics_url)
            async with aiohttp.ClientSession() as session:
                other = metrics_url.replace("/metrics", "/")
                async with session.get(other) as response:
                    assert response.status == 404

    samples = parse(text)
    allowed = len(replies) + len(outsiders)  # 13 staff requests + 2 dry-run would-denies
    assert value(samples, "claimroute_decisions_total", outcome="allowed", status="",
                 reason="verified") == allowed  # fmt: skip
    assert value(samples, "claimroute_decisions_total", outcome="denied", status="401",
                 reason="Jwt is missing") == 2  # fmt: skip
    assert value(samples, "claimroute_decisions_total", outcome="denied", status="401",
                 reason="Jwt verification fails") == 1  # fmt: skip
    assert value(samples, "claimroute_decisions_total", outcome="denied", status="403",
                 reason="Audiences in Jwt are not allowed") == 1  # fmt: skip
    sent = allowed + 4
    assert total(samples, "claimroute_decisions_total") == sent
    assert value(samples, "claimroute_decisions_by_provider_total", provider="corp",
                 outcome="allowed") == allowed  # fmt: skip
    assert value(samples, "claimroute_rbac_dry_run_would_deny_total", policy="(default)") == 2
    assert value(samples, "claimroute_rbac_decisions_total", policy="staff", action="allow",
                 mode="dry_run") == len(replies)  # fmt: skip
    assert value(samples, "claimroute_rbac_decisions_total", policy="(default)", action="deny",
                 mode="dry_run") == 2  # fmt: skip
    # The split's targets, as the upstreams themselves answered (outsiders are routed too).
    assert total(samples, "claimroute_routes_total") == len(served) + len(outsiders)
    for name, upstream in (("primary", primary), ("canary", canary)):
        assert value(samples, "claimroute_routes_total", route="half",
                     upstream=upstream.url) >= served.count(name)  # fmt: skip
    assert value(samples, "claimroute_request_duration_seconds_count") == sent
    assert value(samples, "claimroute_request_duration_seconds_bucket", le="+Inf") == sent
    assert value(samples, "claimroute_token_cache_hits_total") == 1
    # Remote keys: fetched, held, and how long ago.
    assert value(samples, "claimroute_jwks_fetches_total", provider="corp", result="ok") >= 1
    assert value(samples, "claimroute_jwks_fetches_total", provider="corp", result="failed") == 0
    assert value(samples, "claimroute_keys", provider="corp") == 1
    assert value(samples, "claimroute_jwks_seconds_since_success", provider="corp") >= 0
    assert ("claimroute_jwks_seconds_since_success", (("provider", "corp"),)) in samples
    # No label value comes from a token or a request.
    for (_, labels), _v in samples.items():
        for _, label in labels:
            assert "-sub" not in label and "SECRETPATH" not in label and "/api" not in label
            assert "127.0.0.1" not in label or label in (primary.url, canary.url)


async def test_route_counts_match_the_split_exactly(tmp_path):
    """Only staff traffic: every routed request's target is known from the upstream's answer."""
    corp = TestIssuer("corp", "ES256", issuer="https://corp.test", audience="api")
    async with (
        JwksServer(corp) as jwks,
        EchoUpstream("primary") as primary,
        EchoUpstream("canary") as canary,
    ):
        path = policy(tmp_path, jwks.jwks_url("corp"), primary.url, canary.url)
        async with MitmdumpProcess(path, options={"claimroute_metrics": "0"}) as proxy:
            metrics_url = (await proxy.await_output(METRICS_LINE, since=0)).group(1)
            tokens = [corp.mint(f"u{i}", {"org": "solo.io"}) for i in range(16)]
            served = [(await send(proxy.proxy_url, primary.url, token=t)).upstream for t in tokens]
            samples = parse(await scrape(metrics_url))
    for name, upstream in (("primary", primary), ("canary", canary)):
        assert value(samples, "claimroute_routes_total", route="half",
                     upstream=upstream.url) == served.count(name)  # fmt: skip


@pytest.mark.parametrize("spec", ["127.0.0.1:http", "[::1", "1.2.3.4:99999"])
async def test_a_bad_value_stops_mitmdump_naming_the_option(tmp_path, spec):
    corp = TestIssuer("corp", "ES256")
    corp.write_jwks(tmp_path / "corp.jwks.json")
    path = write(
        tmp_path / "policy.yaml",
        "version: 1\nproviders:\n  corp:\n    issuer: https://corp.test\n"
        "    jwks: {file: corp.jwks.json}\n",
    )
    rc, output = run_mitmdump_until_exit(path, options={"claimroute_metrics": spec})
    assert rc != 0
    assert "claimroute_metrics" in output


SCENARIO = """\
version: 1
name: metrics-in-the-report
issuers:
  corp: {alg: ES256, serve: file}
upstreams: [primary, canary]
policy:
  version: 1
  providers:
    corp:
      issuer: "${issuers.corp.issuer}"
      jwks: {file: "${issuers.corp.jwks_file}"}
  routes:
    - name: employees-to-canary
      match: {claims: {org: solo.io}}
      upstream: "${upstreams.canary.url}"
users:
  - {name: employees, count: 4, issuer: corp, claims: {org: solo.io}}
  - {name: anonymous, count: 2, token: none}
traffic: {requests: 30, concurrency: 4}
expect:
  - {users: employees, upstream: canary, status: 200}
  - {users: anonymous, status: 401}
"""


async def test_the_scenario_report_records_the_proxy_metrics(tmp_path):
    source = write(tmp_path / "metrics.yaml", SCENARIO)
    result = await run_scenario(
        load_scenario(source), tmp_path / "out", console=Console(quiet=True), progress=False
    )
    assert result.passed
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert list(report)[-1] == "proxy_metrics"
    metrics = report["proxy_metrics"]
    decisions = {
        (s["labels"]["outcome"], s["labels"]["status"]): s["value"]
        for s in metrics["claimroute_decisions_total"]
    }
    employees = sum(report["populations"][0]["statuses"].values())
    anonymous = sum(report["populations"][1]["statuses"].values())
    assert decisions == {("allowed", ""): employees, ("denied", "401"): anonymous}
    [count] = metrics["claimroute_request_duration_seconds_count"]
    assert count["value"] == 30
    routes = {s["labels"]["route"]: s["value"] for s in metrics["claimroute_routes_total"]}
    assert routes == {"employees-to-canary": employees}
