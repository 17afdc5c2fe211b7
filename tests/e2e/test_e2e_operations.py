"""Running it for real, through a real mitmdump: CORS preflight bypass, a bound on key
staleness (`max_stale`), and keys from a map of kid to X.509 certificate served at a URL."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from claimroute_tools.lab import (
    EchoUpstream,
    JwksServer,
    LoopbackServer,
    MitmdumpProcess,
    TestIssuer,
)

from .conftest import Reply, send, write

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

CORS = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}


async def poll(call: Any, done: Any, seconds: float = 8.0) -> Reply:
    """Send `call()` every 0.2 s until `done(reply)` holds or `seconds` pass; the last reply."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        reply = await call()
        if done(reply) or asyncio.get_running_loop().time() > deadline:
            return reply
        await asyncio.sleep(0.2)


async def test_a_cors_preflight_passes_without_a_token_and_nothing_else_does(tmp_path: Path):
    corp = TestIssuer("corp", "ES256")
    corp.write_jwks(tmp_path / "corp.jwks.json")
    policy = write(
        tmp_path / "policy.yaml",
        f"version: 1\nproviders:\n  corp:\n    issuer: {corp.issuer}\n"
        "    jwks: {file: corp.jwks.json}\n"
        "    claims_to_headers: [{claim: sub, header: x-user}]\n"
        "cors_preflight: bypass\n"
        "rbac:\n  default_action: deny\n  policies:\n"
        "    - {name: preflight, action: allow, permissions: {methods: [OPTIONS]}}\n"
        "    - {name: corp, action: allow, principals: [{provider: corp}]}\n",
    )
    async with EchoUpstream("primary") as upstream, MitmdumpProcess(policy) as proxy:
        url = f"{upstream.url}/api/orders"
        preflight = await send(proxy.proxy_url, url, method="OPTIONS", headers=CORS)
        assert preflight.status == 200, preflight.text
        assert preflight.upstream == "primary"
        [seen] = upstream.received
        assert seen.method == "OPTIONS" and seen.header("origin") == "https://app.example"

        # A token on a preflight is not verified and never forwarded; a forged identity
        # header is stripped as from every request.
        forged = {**CORS, "x-user": "admin"}
        reply = await send(proxy.proxy_url, url, method="OPTIONS", headers=forged, token="a.b.c")
        assert reply.status == 200, reply.text
        assert "authorization" not in reply.seen_headers
        assert "x-user" not in reply.seen_headers

        # Nothing but a preflight is let through without a token.
        upstream.clear()
        for method, headers in [
            ("OPTIONS", {}),
            ("OPTIONS", {"Origin": "https://app.example"}),
            ("OPTIONS", {"Access-Control-Request-Method": "POST"}),
            ("GET", CORS),
            ("POST", CORS),
        ]:
            reply = await send(proxy.proxy_url, url, method=method, headers=headers)
            assert (reply.status, reply.text) == (401, "Jwt is missing"), (method, headers)
        assert upstream.received == []

        # With a token, the other methods work as ever.
        reply = await send(proxy.proxy_url, url, headers=CORS, token=corp.mint("alice"))
        assert reply.status == 200 and reply.seen_headers["x-user"] == "alice"


async def test_keys_past_max_stale_are_refused_until_the_jwks_is_back(tmp_path: Path):
    corp = TestIssuer("corp", "ES256")
    log_file = tmp_path / "decisions.jsonl"
    async with JwksServer(corp) as jwks, EchoUpstream("primary") as upstream:
        policy = write(
            tmp_path / "policy.yaml",
            f"version: 1\nproviders:\n  corp:\n    issuer: {corp.issuer}\n"
            f"    jwks: {{url: '{jwks.jwks_url('corp')}', timeout: 1s, cache_duration: 1s,"
            " max_stale: 2s}\n",
        )
        options = {"claimroute_log": str(log_file)}
        async with MitmdumpProcess(policy, options=options) as proxy:
            token = corp.mint("alice")

            async def request() -> Reply:
                return await send(proxy.proxy_url, f"{upstream.url}/a", token=token)

            assert (await request()).status == 200
            await jwks.stop()  # the identity provider goes away
            reply = await poll(request, lambda r: r.status != 200)
            assert (reply.status, reply.text) == (401, "Jwks remote fetch is failed")
            assert 'error="invalid_token"' in reply.headers["www-authenticate"]
            # The decision log shows why: no keys, dropped for being older than max_stale.
            records = [json.loads(line) for line in log_file.read_text().splitlines()]
            state = records[-1]["keys"]["corp"]
            assert (state["kids"], state["stale"], state["max_stale"]) == ([], True, 2.0)
            assert state["stale_drops"] >= 1 and state["last_error"]

            await jwks.start()  # same port: back up
            reply = await poll(request, lambda r: r.status == 200)
            assert reply.status == 200, reply.text
            assert reply.seen_headers.get("authorization") is None


# -- keys from a map of kid to X.509 certificate (Google's and Firebase's form) -----------------


def certificate_pem(private: Any, *, days_from: float = -1, days_to: float = 14) -> str:
    """A self-signed certificate of `private`'s public key, valid now+days_from..now+days_to."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.test")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days_from))
        .not_valid_after(now + datetime.timedelta(days=days_to))
        .sign(private, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


class CertificateServer(LoopbackServer):
    """Serves one JSON document at `/x509` and counts the fetches."""

    def __init__(self, document: dict[str, str]) -> None:
        super().__init__()
        self.body = json.dumps(document).encode()
        self.hits = 0

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/x509", self._serve)
        return app

    async def _serve(self, _: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(body=self.body, content_type="application/json")


async def test_a_certificate_map_at_a_url_verifies_its_keys_and_refuses_an_expired_one(
    tmp_path: Path,
):
    corp = TestIssuer("corp", "RS256")
    retired = TestIssuer("corp", "RS256")  # same issuer; its certificate has expired
    document = {
        corp.kid: certificate_pem(corp.private_key),
        "expired": certificate_pem(retired.private_key, days_from=-30, days_to=-1),
    }
    async with CertificateServer(document) as certs, EchoUpstream("primary") as upstream:
        policy = write(
            tmp_path / "policy.yaml",
            f"version: 1\nproviders:\n  corp:\n    issuer: {corp.issuer}\n"
            f"    jwks: {{url: '{certs.url}/x509', timeout: 1s}}\n"
            "    claims_to_headers: [{claim: sub, header: x-user}]\n",
        )
        async with MitmdumpProcess(policy) as proxy:
            reply = await send(proxy.proxy_url, upstream.url, token=corp.mint("alice"))
            assert reply.status == 200, reply.text
            assert reply.seen_headers["x-user"] == "alice"

            forged = retired.mint("mallory", header={"kid": "expired"})
            reply = await send(proxy.proxy_url, upstream.url, token=forged)
            assert reply.status == 401
            assert reply.text == "Jwks doesn't have key to match kid or alg from Jwt"
            assert len(upstream.received) == 1
        assert certs.hits >= 1
