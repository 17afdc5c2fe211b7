"""Remote keys end to end: a real mitmdump fetching a real JWKS / discovery server."""

from __future__ import annotations

import asyncio
import json

import pytest

from claimroute_tools.lab import EchoUpstream, JwksServer, MitmdumpProcess, TestIssuer

from .conftest import send, write

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]


def remote_policy(folder, jwks: str, issuer: str) -> object:
    return write(
        folder / "policy.yaml",
        f"version: 1\nproviders:\n  corp:\n    issuer: {issuer}\n"
        f"    jwks: {{{jwks}, timeout: 1s, cache_duration: 5m}}\n"
        "    claims_to_headers: [{claim: sub, header: x-user}]\n",
    )


async def test_cold_start_with_jwks_down_fails_closed_then_recovers_without_restart(tmp_path):
    corp = TestIssuer("corp", "RS256")
    jwks = JwksServer(corp)
    await jwks.start()
    url = jwks.jwks_url("corp")
    await jwks.stop()  # the identity provider is down when the proxy starts
    policy = remote_policy(tmp_path, f"url: '{url}'", corp.issuer)
    log_file = tmp_path / "decisions.jsonl"
    options = {"claimroute_log": str(log_file)}
    async with (
        EchoUpstream("primary") as upstream,
        MitmdumpProcess(policy, options=options) as proxy,
    ):
        token = corp.mint("alice")
        reply = await send(proxy.proxy_url, f"{upstream.url}/a", token=token)
        assert (reply.status, reply.text) == (401, "Jwks remote fetch is failed")
        assert 'error="invalid_token"' in reply.headers["www-authenticate"]
        assert upstream.received == []
        # The decision log says what the proxy holds for that provider: nothing, and why.
        record = json.loads(log_file.read_text().splitlines()[0])
        keys = record["keys"]["corp"]
        assert (keys["kids"], keys["remote"]) == ([], True)
        assert keys["failures"] >= 1 and keys["last_error"]

        await jwks.start()  # same port: the provider comes back
        try:
            for _ in range(50):  # the background fetch retries with backoff
                reply = await send(proxy.proxy_url, f"{upstream.url}/a", token=token)
                if reply.status == 200:
                    break
                await asyncio.sleep(0.2)
            assert reply.status == 200, reply.text
            assert reply.seen_headers["x-user"] == "alice"

            # Key rotation: the first token with the new kid triggers one refetch.
            hits = jwks.hits("corp")
            corp.rotate()
            reply = await send(proxy.proxy_url, f"{upstream.url}/b", token=corp.mint("bob"))
            assert reply.status == 200, reply.text
            assert jwks.hits("corp") == hits + 1

            # Outage after a good fetch: the last good keys keep serving.
            await jwks.stop()
            reply = await send(proxy.proxy_url, f"{upstream.url}/c", token=corp.mint("carol"))
            assert reply.status == 200
        finally:
            await jwks.stop()


async def test_random_unknown_kids_do_not_storm_the_jwks_server(tmp_path):
    corp = TestIssuer("corp", "ES256")
    async with JwksServer(corp) as jwks, EchoUpstream("primary") as upstream:
        policy = remote_policy(tmp_path, f"url: '{jwks.jwks_url('corp')}'", corp.issuer)
        async with MitmdumpProcess(policy) as proxy:
            assert (await send(proxy.proxy_url, upstream.url, token=corp.mint("a"))).status == 200
            before = jwks.hits("corp")
            tokens = [corp.mint("x", header={"kid": f"random-{i}"}) for i in range(60)]
            replies = await asyncio.gather(
                *(send(proxy.proxy_url, upstream.url, token=t) for t in tokens)
            )
            assert {r.status for r in replies} == {401}
            assert jwks.hits("corp") - before <= 1
            assert upstream.received[1:] == []


async def test_discovery_end_to_end_and_a_lying_discovery_document_is_refused(tmp_path):
    corp = TestIssuer("corp", "EdDSA")
    jwks = JwksServer()
    jwks.add(corp, discovery=True)
    async with jwks, EchoUpstream("primary") as upstream:
        policy = remote_policy(tmp_path, "discovery: true", corp.issuer)
        async with MitmdumpProcess(policy) as proxy:
            reply = await send(proxy.proxy_url, upstream.url, token=corp.mint("d"))
            assert reply.status == 200, reply.text
        assert jwks.hits("corp", "discovery") >= 1

        jwks.set_issuer_override("corp", "https://impostor.example")
        other = tmp_path / "other"
        other.mkdir()
        policy = remote_policy(other, "discovery: true", corp.issuer)
        hits = jwks.hits("corp")
        async with MitmdumpProcess(policy) as proxy:
            reply = await send(proxy.proxy_url, upstream.url, token=corp.mint("d"))
            assert (reply.status, reply.text) == (401, "Jwks remote fetch is failed")
            assert jwks.hits("corp") == hits  # the JWKS of a lying document is never fetched
