"""Verified identity at the proxy, end to end: real mitmdump + real aiohttp upstream."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import pytest_asyncio

from claimroute_tools.lab import EchoUpstream, MitmdumpProcess, TestIssuer

from .conftest import send, write

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

POLICY = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    audiences: [orders-api]
    jwks: {file: corp.jwks.json}
    claims_to_headers:
      - {claim: sub, header: x-user}
      - {claim: realm_access.roles, header: x-roles}
    forward_payload_header: x-jwt-payload
  edge:
    issuer: https://edge.test
    algorithms: [ES256]
    jwks: {file: edge.pem}
    claims_to_headers:
      - {claim: sub, header: x-user}
  okp:
    issuer: https://okp.test
    jwks: {file: okp.jwks.json}
    claims_to_headers:
      - {claim: sub, header: x-user}
"""


@pytest.fixture(scope="module")
def issuers():
    return {
        "corp": TestIssuer("corp", "RS256", audience="orders-api"),
        "edge": TestIssuer("edge", "ES256"),
        "okp": TestIssuer("okp", "EdDSA"),
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstream():
    async with EchoUpstream("primary") as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(tmp_path_factory, issuers, upstream):
    folder = tmp_path_factory.mktemp("policy")
    issuers["corp"].write_jwks(folder / "corp.jwks.json")
    (folder / "edge.pem").write_bytes(issuers["edge"].public_pem())
    issuers["okp"].write_jwks(folder / "okp.jwks.json")
    policy = write(folder / "policy.yaml", POLICY)
    async with MitmdumpProcess(policy) as process:
        yield process


@pytest.fixture
def url(upstream):
    upstream.clear()
    return f"{upstream.url}/api/orders?page=2"


@pytest.mark.parametrize("name", ["corp", "edge", "okp"])
async def test_valid_tokens_reach_the_upstream_with_claim_headers_and_without_the_token(
    proxy, issuers, upstream, url, name
):
    token = issuers[name].mint("alice", {"realm_access": {"roles": ["reader", "writer"]}})
    reply = await send(proxy.proxy_url, url, token=token)
    assert reply.status == 200, reply.text
    assert reply.upstream == "primary"
    [seen] = upstream.received
    assert seen.header("x-user") == "alice"
    assert "authorization" not in {k.lower() for k, _ in seen.headers}
    assert token not in json.dumps(seen.headers)
    if name == "corp":
        assert seen.header("x-roles") == "reader,writer"
        assert seen.header("x-jwt-payload") == token.split(".")[1]
    else:
        assert seen.header("x-jwt-payload") is None
    assert seen.query == "page=2"


async def test_token_in_query_parameter_is_accepted_and_removed(proxy, issuers, upstream):
    upstream.clear()
    token = issuers["corp"].mint("bob")
    reply = await send(proxy.proxy_url, f"{upstream.url}/q?access_token={token}&keep=1")
    assert reply.status == 200
    [seen] = upstream.received
    assert seen.query == "keep=1"
    assert seen.header("x-user") == "bob"


async def test_missing_token_is_401_without_error(proxy, upstream, url):
    reply = await send(proxy.proxy_url, url)
    assert reply.status == 401
    assert reply.text == "Jwt is missing"
    assert reply.headers["www-authenticate"] == f'Bearer realm="{upstream.url}/api/orders"'
    assert upstream.received == []


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("expired", "Jwt is expired"),
        ("signature", "Jwt verification fails"),
        ("wrong_issuer", "Jwt issuer is not configured"),
        ("alg_none", "Jwt is not in the form of Header.Payload.Signature"),  # empty signature
        ("hs256_public_key", "Jwt algorithm is not allowed"),
        ("not_yet_valid", "Jwt not yet valid"),
        ("unknown_kid", "Jwks doesn't have key to match kid or alg from Jwt"),
        ("embedded_jwk", "Jwt verification fails"),
        ("payload_swap", "Jwt verification fails"),
    ],
)
async def test_bad_tokens_are_401_invalid_token_and_never_reach_the_upstream(
    proxy, issuers, upstream, url, tamper, reason
):
    token = issuers["corp"].mint("mallory", tamper=tamper)
    reply = await send(proxy.proxy_url, url, token=token)
    assert reply.status == 401
    assert reply.text == reason
    challenge = reply.headers["www-authenticate"]
    assert challenge.startswith(f'Bearer realm="{upstream.url}/api/orders", error="invalid_token"')
    assert upstream.received == []


async def test_wrong_audience_is_403(proxy, issuers, upstream, url):
    token = issuers["corp"].mint("carol", tamper="wrong_audience")
    reply = await send(proxy.proxy_url, url, token=token)
    assert (reply.status, reply.text) == (403, "Audiences in Jwt are not allowed")
    assert "www-authenticate" not in reply.headers
    assert upstream.received == []


async def test_two_tokens_are_400_invalid_request(proxy, issuers, upstream):
    upstream.clear()
    token = issuers["corp"].mint("dave")
    reply = await send(proxy.proxy_url, f"{upstream.url}/x?access_token={token}", token=token)
    assert (reply.status, reply.text) == (400, "Multiple tokens")
    assert 'error="invalid_request"' in reply.headers["www-authenticate"]
    assert upstream.received == []


@pytest.mark.parametrize("token", [None, "not-a-jwt", "expired"])
async def test_forged_identity_header_never_reaches_the_upstream(proxy, issuers, upstream, token):
    upstream.clear()
    forged = {"X-User": "admin", "x-roles": "superuser", "x-jwt-payload": "eyJzdWIiOiJhZG1pbiJ9"}
    if token == "expired":
        token = issuers["corp"].mint("eve", tamper="expired")
    valid = issuers["corp"].mint("eve")
    await send(proxy.proxy_url, f"{upstream.url}/a", token=token, headers=forged)
    reply = await send(proxy.proxy_url, f"{upstream.url}/b", token=valid, headers=forged)
    assert reply.status == 200
    [seen] = upstream.received  # only the valid one got through
    assert seen.header_values("x-user") == ["eve"]
    assert seen.header_values("x-roles") == []
    assert seen.header_values("x-jwt-payload") == [valid.split(".")[1]]


async def test_head_request_with_bad_token_gets_401_and_no_body(proxy, issuers, upstream, url):
    token = issuers["corp"].mint("f", tamper="expired")
    reply = await send(proxy.proxy_url, url, token=token, method="HEAD")
    assert reply.status == 401
    assert reply.text == ""
    assert reply.headers["content-length"] == str(len("Jwt is expired"))
    assert upstream.received == []


async def test_policy_edit_takes_effect_and_a_bad_edit_keeps_the_last_good_one(tmp_path, issuers):
    issuers["corp"].write_jwks(tmp_path / "corp.jwks.json")
    policy = write(
        tmp_path / "policy.yaml",
        "version: 1\nproviders:\n  corp:\n    issuer: https://corp.test\n"
        "    jwks: {file: corp.jwks.json}\n",
    )
    token = issuers["corp"].mint("grace")  # aud orders-api
    async with EchoUpstream("primary") as upstream, MitmdumpProcess(policy) as process:
        url = f"{upstream.url}/x"
        assert (await send(process.proxy_url, url, token=token)).status == 200

        mark = process.mark()
        text = policy.read_text() + "    audiences: [billing-api]\n"
        time.sleep(0.01)  # a distinct mtime even on coarse clocks
        write(policy, text)
        await asyncio.to_thread(process.wait_for_output, r"policy reloaded", 10, since=mark)
        reply = await send(process.proxy_url, url, token=token)
        assert (reply.status, reply.text) == (403, "Audiences in Jwt are not allowed")

        mark = process.mark()
        write(policy, text + "    clock_skew: whenever\n")
        match = await asyncio.to_thread(
            process.wait_for_output, r"policy change rejected.*", 10, since=mark
        )
        assert "providers.corp.clock_skew" in match.group(0)
        reply = await send(process.proxy_url, url, token=token)
        assert reply.status == 403  # the last good policy is still in force


async def test_rotating_a_local_key_file_takes_effect_without_touching_the_policy(tmp_path):
    issuer = TestIssuer("disk", "ES256")
    issuer.write_jwks(tmp_path / "disk.jwks.json")
    policy = write(
        tmp_path / "policy.yaml",
        "version: 1\nproviders:\n  disk:\n    issuer: https://disk.test\n"
        "    jwks: {file: disk.jwks.json}\n",
    )
    async with EchoUpstream("primary") as upstream, MitmdumpProcess(policy) as process:
        old_token = issuer.mint("old")
        assert (await send(process.proxy_url, upstream.url, token=old_token)).status == 200
        issuer.rotate()  # a new key pair; the file will hold only the new public key
        mark = process.mark()
        issuer.write_jwks(tmp_path / "disk.jwks.json")
        await asyncio.to_thread(process.wait_for_output, r"policy reloaded", 10, since=mark)
        assert (await send(process.proxy_url, upstream.url, token=issuer.mint("new"))).status == 200
        reply = await send(process.proxy_url, upstream.url, token=old_token)
        assert reply.status == 401  # the retired key no longer verifies (and no cache hit)


@pytest.mark.parametrize("tcp_hosts", [False, True])
async def test_non_http_bytes_in_a_connect_tunnel_never_reach_the_upstream(
    tmp_path, issuers, tcp_hosts
):
    """mitmproxy relays what it does not recognise as HTTP as raw TCP; an upstream that
    skips a leading empty line would then serve an unverified request. Nothing may pass."""
    issuers["corp"].write_jwks(tmp_path / "corp.jwks.json")
    policy = write(
        tmp_path / "policy.yaml",
        "version: 1\nproviders:\n  corp:\n    issuer: https://corp.test\n"
        "    jwks: {file: corp.jwks.json}\n    claims_to_headers: [{claim: sub, header: x-user}]\n",
    )
    options = {"tcp_hosts": "127.0.0.1"} if tcp_hosts else {}
    async with (
        EchoUpstream("primary") as upstream,
        MitmdumpProcess(policy, options=options) as proc,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
        target = f"127.0.0.1:{upstream.port}"
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        await writer.drain()
        assert b" 200 " in await asyncio.wait_for(reader.readline(), 5)
        await asyncio.wait_for(reader.readline(), 5)  # the empty line ending the CONNECT reply
        writer.write(b"\r\nGET /api HTTP/1.1\r\nHost: 127.0.0.1\r\nx-user: admin\r\n\r\n")
        await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(4096), 3)
        except TimeoutError:
            answer = b""
        writer.close()
        assert b"primary" not in answer
        assert upstream.received == []
