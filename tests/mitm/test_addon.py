"""The mitmproxy layer with mitmproxy's own test helpers: options, fail-closed, streaming."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow, tutils

from claimroute.mitm.addon import ClaimRoute
from claimroute.mitm.decisionlog import request_id
from claimroute.pipeline import decide as pipeline
from claimroute_tools.lab import TestIssuer

POLICY = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {file: corp.jwks.json}
    claims_to_headers: [{claim: sub, header: x-user}, {claim: org, header: x-org}]
rbac:
  mode: enforce
  policies:
    - {name: everyone, action: allow, principals: [{provider: corp}]}
routes:
  - name: employees
    match: {claims: {org: solo.io}}
    upstream: https://canary.internal:8443
    preserve_host: true
"""


@pytest.fixture
def issuer():
    return TestIssuer("corp", "RS256")


@pytest.fixture
def policy_file(tmp_path, issuer):
    issuer.write_jwks(tmp_path / "corp.jwks.json")
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def flow_with(token: str | None = None, **headers: str):
    flow = tflow.tflow(req=tutils.treq(host="api.example", port=80, path="/api/pets?x=1"))
    flow.request.headers["host"] = "api.example"
    if token is not None:
        flow.request.headers["authorization"] = f"Bearer {token}"
    for name, value in headers.items():
        flow.request.headers[name.replace("_", "-")] = value
    return flow


async def test_valid_token_is_rewritten_for_the_upstream(policy_file, issuer):
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file))
        flow = flow_with(issuer.mint("alice", {"org": "solo.io"}), x_user="mallory")
        await addon.requestheaders(flow)
    assert flow.response is None
    request = flow.request
    assert request.headers.get_all("x-user") == ["alice"]
    assert request.headers["x-org"] == "solo.io"
    assert "authorization" not in request.headers
    assert (request.scheme, request.host, request.port) == ("https", "canary.internal", 8443)
    assert request.headers["host"] == "api.example"  # preserve_host
    record = flow.metadata["claimroute"]
    assert record["outcome"] == "allowed"
    assert (record["provider"], record["sub"], record["route"]) == ("corp", "alice", "employees")
    assert record["rbac"]["policy"] == "everyone"
    assert flow.comment.startswith("claimroute: allowed corp/alice")


async def test_missing_token_is_answered_by_the_proxy(policy_file):
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file))
        flow = flow_with(x_org="forged")
        await addon.requestheaders(flow)
    assert flow.response.status_code == 401
    assert flow.response.headers["www-authenticate"] == 'Bearer realm="http://api.example/api/pets"'
    assert "x-org" not in flow.request.headers  # stripped even though the request is refused
    assert flow.metadata["claimroute"]["status"] == 401


async def test_an_exception_inside_a_stage_fails_closed(policy_file, issuer, monkeypatch):
    async def explode(*args, **kwargs):
        raise RuntimeError("bug in a stage")

    monkeypatch.setattr("claimroute.mitm.addon.decide", explode)
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file))
        flow = flow_with(issuer.mint("alice"))
        await addon.requestheaders(flow)
    assert flow.response.status_code == 500
    assert flow.metadata["claimroute"]["outcome"] == "denied"


async def test_streamed_request_that_is_refused_is_killed(policy_file):
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file))
        flow = flow_with()
        flow.request.stream = True
        await addon.requestheaders(flow)
    assert flow.response is None
    assert flow.error is not None and flow.error.msg == "Connection killed."


async def test_no_policy_refuses_every_request():
    addon = ClaimRoute()
    with taddons.context(addon):
        flow = flow_with()
        await addon.requestheaders(flow)
    assert flow.response.status_code == 503


async def test_flows_already_answered_are_left_alone(policy_file):
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file))
        flow = flow_with()
        flow.response = tutils.tresp(status_code=204)
        await addon.requestheaders(flow)
    assert flow.response.status_code == 204


def test_bad_policy_is_an_options_error_naming_the_key_path(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nproviders:\n  corp:\n    issuer: x\n    jwks: {inline: '{}'}\n")
    addon = ClaimRoute()
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError) as info:
        tctx.configure(addon, claimroute=str(path))
    assert f"{path}:5: providers.corp.jwks.inline:" in str(info.value)
    assert addon.policy is None


def test_keys_command_lists_kids(policy_file, issuer):
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file))
        state = tctx.command(addon.keys_state)
    assert issuer.kid in state


def test_decision_log_writes_one_json_line(policy_file, issuer, tmp_path):
    import asyncio
    import json

    log_path = tmp_path / "decisions.jsonl"
    addon = ClaimRoute()

    async def run():
        with taddons.context(addon) as tctx:
            tctx.configure(addon, claimroute=str(policy_file), claimroute_log=str(log_path))
            await addon.requestheaders(flow_with(issuer.mint("zed")))
            addon.done()

    asyncio.run(run())
    [line] = log_path.read_text().splitlines()
    record = json.loads(line)
    assert (record["sub"], record["outcome"], record["method"]) == ("zed", "allowed", "GET")
    assert "token" not in line.lower() or "eyj" not in line.lower()


def test_pipeline_is_importable_without_mitmproxy_types():
    assert not any("mitmproxy" in name for name in vars(pipeline) if not name.startswith("__"))


def _log_lines(policy_file, issuer, tmp_path, flows, **options):
    import asyncio
    import json

    log_path = tmp_path / f"decisions-{len(list(tmp_path.glob('decisions-*')))}.jsonl"
    addon = ClaimRoute()

    async def run():
        with taddons.context(addon) as tctx:
            tctx.configure(addon, claimroute=str(policy_file), claimroute_log=str(log_path),
                           **options)  # fmt: skip
            for flow in flows:
                await addon.requestheaders(flow)
            addon.done()

    asyncio.run(run())
    return [json.loads(line) for line in log_path.read_text().splitlines()]


def test_decision_log_records_the_request_id(policy_file, issuer, tmp_path):
    with_id = flow_with(issuer.mint("zed"))
    with_id.request.headers["x-request-id"] = "req-42"
    refused = flow_with("not-a-token")
    refused.request.headers["x-request-id"] = "r" * 500
    plain = flow_with(issuer.mint("amy"))
    records = _log_lines(policy_file, issuer, tmp_path, [with_id, refused, plain])
    assert records[0]["request_id"] == "req-42" and records[0]["outcome"] == "allowed"
    assert records[1]["request_id"] == "r" * 200 and records[1]["outcome"] == "denied"
    assert "request_id" not in records[2]


def test_request_id_header_is_configurable_and_never_a_token_header(policy_file, issuer, tmp_path):
    token = issuer.mint("zed")
    flow = flow_with(token)
    flow.request.headers["x-trace"] = "t-1"
    [record] = _log_lines(policy_file, issuer, tmp_path, [flow],
                          claimroute_request_id_header="x-trace")  # fmt: skip
    assert record["request_id"] == "t-1"
    for name in ("authorization", "Authorization", "cookie"):
        [record] = _log_lines(policy_file, issuer, tmp_path, [flow_with(token)],
                              claimroute_request_id_header=name)  # fmt: skip
        assert "request_id" not in record
    [record] = _log_lines(policy_file, issuer, tmp_path, [flow_with(token)],
                          claimroute_request_id_header="")  # fmt: skip
    assert "request_id" not in record


async def test_cache_command_reports_hits_and_misses(policy_file, issuer):
    import json

    addon = ClaimRoute()
    token = issuer.mint("zed")
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file))
        for _ in range(3):
            await addon.requestheaders(flow_with(token))
        state = json.loads(tctx.command(addon.cache_state))
        assert state["enabled"] is True
        assert (state["size"], state["hits"], state["misses"]) == (1, 2, 1)
        tctx.configure(addon, claimroute_cache_size=0)
        assert json.loads(tctx.command(addon.cache_state)) == {"enabled": False}


def test_request_id_is_never_read_from_a_token_location_of_the_deciding_policy(
    policy_file, issuer, tmp_path
):
    """The guard follows the policy a request was decided with (a reload may land while the
    decision waits for keys) and compares names as identity headers are stripped."""
    from claimroute.policy.load import load_policy_text

    custom = load_policy_text(
        POLICY.replace(
            "    claims_to_headers:",
            "    token_source: {headers: [{name: X-Api-Token}]}\n    claims_to_headers:",
        ),
        str(tmp_path / "custom.yaml"),
        tmp_path,
    )
    token = issuer.mint("zed")
    flow = flow_with(None, x_api_token=token, proxy_authorization="Basic c2VjcmV0")
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file))  # the loaded policy: authorization
        for name in ("x-api-token", "X_API_TOKEN", " x-api-token ", "proxy-authorization"):
            tctx.configure(addon, claimroute_request_id_header=name)
            assert request_id(flow.request, custom, addon._request_id_header) is None, name
        # The same header is an ordinary one for a policy that does not take tokens there.
        tctx.configure(addon, claimroute_request_id_header="x-api-token")
        assert request_id(flow.request, addon.policy, addon._request_id_header) == token[:200]
