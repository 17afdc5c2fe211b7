"""Tests of the lab toolkit itself (issuers, JWKS server, echo upstreams, mitmdump harness)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from claimroute_tools.lab import (
    ADDON_SCRIPT,
    TAMPERS,
    EchoUpstream,
    JwksServer,
    MitmdumpFailed,
    MitmdumpProcess,
    TestIssuer,
    b64url,
    build_compact,
    run_mitmdump_until_exit,
    split_compact,
)
from claimroute_tools.lab.issuer import SUPPORTED_ALGS, WRONG_AUDIENCE

pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")

AUDIENCE = "api"
CLAIM_TAMPERS = {"expired", "not_yet_valid", "wrong_audience", "wrong_issuer", "missing_exp"}
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth"}


def verify_signature(issuer: TestIssuer, token: str) -> dict[str, Any]:
    """Verify with joserfc against the published JWKS only; return the claims."""
    keys = KeySet.import_key_set(issuer.public_jwks())  # type: ignore[arg-type]
    return jwt.decode(token, keys, algorithms=[issuer.alg]).claims


def validate_claims(issuer: TestIssuer, claims: dict[str, Any]) -> None:
    """Raise if the claims are not acceptable for `issuer` (iss, aud, exp, nbf)."""
    registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer.issuer},
        aud={"essential": True, "value": AUDIENCE},
        exp={"essential": True},
    )
    registry.validate(claims)


def defects(issuer: TestIssuer, token: str) -> set[str]:
    """Which of {signature, claims} are wrong in `token`."""
    found = set()
    try:
        verify_signature(issuer, token)
    except JoseError:
        found.add("signature")
    try:
        validate_claims(issuer, split_compact(token)[1])
    except JoseError:
        found.add("claims")
    return found


# -- TestIssuer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", SUPPORTED_ALGS)
def test_minted_token_verifies_for_every_alg(alg: str) -> None:
    issuer = TestIssuer("corp", alg, audience=AUDIENCE)
    before = int(time.time())
    token = issuer.mint("alice", {"org": "solo.io", "roles": ["admin"]})

    claims = verify_signature(issuer, token)
    validate_claims(issuer, claims)
    header = split_compact(token)[0]
    assert header == {"alg": alg, "typ": "JWT", "kid": "corp-1"}
    assert claims["iss"] == "https://corp.test"
    assert claims["sub"] == "alice"
    assert claims["aud"] == AUDIENCE
    assert claims["org"] == "solo.io" and claims["roles"] == ["admin"]
    assert before <= claims["iat"] <= before + 2
    assert claims["exp"] - claims["iat"] == 600


@pytest.mark.parametrize("alg", SUPPORTED_ALGS)
def test_public_jwks_has_no_private_members(alg: str) -> None:
    issuer = TestIssuer("corp", alg)
    (key,) = issuer.public_jwks()["keys"]
    assert key["kid"] == "corp-1" and key["alg"] == alg
    if issuer.symmetric:
        assert key["kty"] == "oct" and "k" in key  # no public form exists
        with pytest.raises(ValueError):
            issuer.public_pem()
    else:
        assert not PRIVATE_MEMBERS & key.keys()
        assert load_pem_public_key(issuer.public_pem()) is not None


@pytest.mark.parametrize(("alg", "kty", "size"), [("ES384", "EC", None), ("HS384", "oct", 48)])
def test_key_type_matches_alg(alg: str, kty: str, size: int | None) -> None:
    issuer = TestIssuer("corp", alg)
    key = issuer.public_jwks()["keys"][0]
    assert key["kty"] == kty
    if kty == "EC":
        assert key["crv"] == "P-384"
    else:
        assert len(issuer.private_key) == size


def test_claims_override_and_removal() -> None:
    issuer = TestIssuer("corp")
    token = issuer.mint(None, {"exp": None, "iss": "custom", "n": 1}, header={"typ": "at+jwt"})
    header, claims, _ = split_compact(token)
    assert header["typ"] == "at+jwt"
    assert "exp" not in claims and "sub" not in claims and "aud" not in claims
    assert claims["iss"] == "custom" and claims["n"] == 1
    assert verify_signature(issuer, token)["n"] == 1


def test_now_and_ttl() -> None:
    issuer = TestIssuer("corp", "ES256")
    claims = split_compact(issuer.mint("a", now=1_000_000, ttl=30))[1]
    assert (claims["iat"], claims["exp"]) == (1_000_000, 1_000_030)


def test_rotate() -> None:
    issuer = TestIssuer("corp", "ES256")
    old = issuer.mint("alice")
    assert issuer.rotate() == "corp-2"
    new = issuer.mint("alice")
    assert split_compact(new)[0]["kid"] == "corp-2"
    assert issuer.published_kids == ["corp-2"]
    verify_signature(issuer, new)
    with pytest.raises(JoseError):
        verify_signature(issuer, old)

    issuer.rotate(keep_old=True)
    assert issuer.published_kids == ["corp-3", "corp-2"]
    verify_signature(issuer, new)


@pytest.mark.parametrize("alg", ["RS256", "PS384", "ES256", "EdDSA", "HS256"])
@pytest.mark.parametrize("tamper", TAMPERS)
def test_each_tamper_has_exactly_one_defect(alg: str, tamper: str) -> None:
    issuer = TestIssuer("corp", alg, audience=AUDIENCE)
    if tamper == "hs256_public_key" and issuer.symmetric:
        with pytest.raises(ValueError, match="no public key"):
            issuer.mint("alice", tamper=tamper)
        return
    token = issuer.mint("alice", {"org": "solo.io"}, tamper=tamper)
    expected = "claims" if tamper in CLAIM_TAMPERS else "signature"
    assert defects(issuer, token) == {expected}
    assert split_compact(token)[1]["org"] == "solo.io"


def test_claim_tampers_change_the_right_claim() -> None:
    issuer = TestIssuer("corp", audience=AUDIENCE)
    now = time.time()

    def claims(tamper: str) -> dict[str, Any]:
        return verify_signature(issuer, issuer.mint("alice", tamper=tamper, now=now))

    assert claims("expired")["exp"] < now - 60
    assert claims("not_yet_valid")["nbf"] > now + 60
    assert claims("wrong_audience")["aud"] == WRONG_AUDIENCE
    assert claims("wrong_issuer")["iss"] != issuer.issuer
    assert "exp" not in claims("missing_exp")


def test_signature_tampers_are_the_real_attacks() -> None:
    issuer = TestIssuer("corp", "RS256")
    token = issuer.mint("alice", {"role": "admin"}, tamper="alg_none")
    assert token.endswith(".") and split_compact(token)[0] == {"alg": "none"}

    token = issuer.mint("alice", tamper="hs256_public_key")
    signing_input, sig = token.rsplit(".", 1)
    expected = hmac.new(issuer.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    assert split_compact(token)[0]["alg"] == "HS256" and b64url(expected) == sig

    token = issuer.mint("alice", tamper="embedded_jwk")
    header = split_compact(token)[0]
    assert "d" not in header["jwk"] and header["kid"] == issuer.kid
    assert len(token.split(".")[0]) <= JWSRegistry.max_header_length
    embedded = KeySet.import_key_set({"keys": [header["jwk"] | {"kid": header["kid"]}]})
    jwt.decode(token, embedded, algorithms=["RS256"])  # a verifier trusting `jwk` would accept

    token = issuer.mint("alice", tamper="unknown_kid")
    assert split_compact(token)[0]["kid"] not in issuer.published_kids

    token = issuer.mint("mallory", tamper="payload_swap")
    assert split_compact(token)[1]["sub"] == "mallory"


def test_unknown_tamper_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="payload_swap"):
        TestIssuer("corp", "ES256").mint("a", tamper="nope")


def test_unknown_alg() -> None:
    with pytest.raises(ValueError, match="RS256"):
        TestIssuer("corp", "RS1")


def test_build_compact_raw_parts() -> None:
    header = b'{"alg":"none","alg":"RS256"}'
    token = build_compact(header, {"sub": "x"}, lambda data: b"sig:" + data[:3])
    h, _, s = token.split(".")
    assert "=" not in token
    assert h == b64url(header)
    assert split_compact(token)[1] == {"sub": "x"}
    assert s == b64url(b"sig:" + h[:3].encode())
    assert build_compact({"alg": "none"}, b"{}", None).endswith(".")


def test_write_jwks(tmp_path: Path) -> None:
    issuer = TestIssuer("kube", "HS256")
    path = issuer.write_jwks(tmp_path / "jwks.json")
    assert json.loads(path.read_text()) == issuer.public_jwks()


# -- JwksServer ---------------------------------------------------------------------------------


async def fetch(url: str, **kw: Any) -> tuple[int, bytes, aiohttp.ClientResponse]:
    async with aiohttp.ClientSession() as session, session.get(url, **kw) as resp:
        return resp.status, await resp.read(), resp


async def test_jwks_server_serves_and_counts() -> None:
    corp, kube = TestIssuer("corp", "ES256"), TestIssuer("kube", "EdDSA")
    async with JwksServer(corp, kube) as server:
        assert server.url.startswith("http://127.0.0.1:") and server.port > 0
        status, body, _ = await fetch(server.jwks_url("corp"))
        assert status == 200 and json.loads(body) == corp.public_jwks()
        await fetch(server.jwks_url("corp"))
        await fetch(server.jwks_url("kube"))
        assert server.hits("corp") == 2 and server.hits("kube") == 1
        assert server.hits("corp", "discovery") == 0

        corp.rotate()
        status, body, _ = await fetch(server.jwks_url("corp"))
        assert [k["kid"] for k in json.loads(body)["keys"]] == ["corp-2"]

        status, _, _ = await fetch(f"{server.url}/nobody/jwks.json")
        assert status == 404
        server.reset_hits()
        assert server.hits("corp") == 0


async def test_jwks_server_failure_modes() -> None:
    corp = TestIssuer("corp", "ES256")
    async with JwksServer(corp) as server:
        url = server.jwks_url("corp")
        server.set_mode("corp", "error500")
        assert (await fetch(url))[0] == 500

        server.set_mode("corp", "garbage")
        status, body, _ = await fetch(url)
        assert status == 200
        with pytest.raises(ValueError):
            json.loads(body)

        server.set_mode("corp", "redirect_offsite")
        status, _, resp = await fetch(url, allow_redirects=False)
        assert status == 302 and resp.headers["Location"].startswith("http://offsite.invalid/")

        server.set_mode("corp", "slow", slow_seconds=0.5)
        with pytest.raises(TimeoutError):
            await fetch(url, timeout=aiohttp.ClientTimeout(total=0.1))
        started = time.monotonic()
        assert (await fetch(url))[0] == 200
        assert time.monotonic() - started >= 0.4

        server.set_mode("corp", "ok")
        assert (await fetch(url))[0] == 200
        assert server.hits("corp") == 6
        with pytest.raises(ValueError):
            server.set_mode("corp", "bogus")  # type: ignore[arg-type]


async def test_jwks_server_stop_start_same_port() -> None:
    corp = TestIssuer("corp", "ES256")
    server = JwksServer(corp)
    await server.start()
    port, url = server.port, server.jwks_url("corp")
    await server.stop()
    with pytest.raises(aiohttp.ClientConnectorError):
        await fetch(url)
    await server.start()
    try:
        assert server.port == port
        assert (await fetch(url))[0] == 200
    finally:
        await server.stop()


async def test_stop_does_not_wait_for_slow_handlers() -> None:
    server = JwksServer(TestIssuer("corp", "ES256"))
    await server.start()
    server.set_mode("corp", "slow", slow_seconds=30)
    pending = asyncio.ensure_future(fetch(server.jwks_url("corp")))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < 5
    with pytest.raises(aiohttp.ClientError):
        await pending


async def test_discovery_document() -> None:
    corp = TestIssuer("corp", "RS256")
    server = JwksServer()
    server.add(corp, discovery=True)
    async with server:
        assert corp.issuer == server.discovery_issuer("corp") == f"{server.url}/corp"
        status, body, _ = await fetch(server.discovery_url("corp"))
        doc = json.loads(body)
        assert status == 200
        assert doc["issuer"] == corp.issuer and doc["jwks_uri"] == server.jwks_url("corp")
        assert server.hits("corp", "discovery") == 1 and server.hits("corp") == 0

        server.set_issuer_override("corp", "https://elsewhere.test")
        doc = json.loads((await fetch(server.discovery_url("corp")))[1])
        assert doc["issuer"] == "https://elsewhere.test"

        server.set_mode("corp", "error500", endpoint="discovery")
        assert (await fetch(server.discovery_url("corp")))[0] == 500
        assert (await fetch(server.jwks_url("corp")))[0] == 200

        server.set_mode("corp", "ok")
        server.set_mode("corp", "garbage", endpoint="jwks")
        assert (await fetch(server.discovery_url("corp")))[0] == 200
        assert server.control("corp").jwks_mode == "garbage"


# -- EchoUpstream -------------------------------------------------------------------------------


async def test_echo_upstream_reports_and_records() -> None:
    async with EchoUpstream("canary") as echo, aiohttp.ClientSession() as session:
        headers = [("X-Dup", "1"), ("X-Dup", "2"), ("Authorization", "Bearer t")]
        async with session.post(
            f"{echo.url}/api/pets?x=1&y=2", data=b"hello", headers=headers
        ) as resp:
            assert resp.status == 200 and resp.headers["x-upstream"] == "canary"
            body = await resp.json()
        assert body["upstream"] == "canary" and body["method"] == "POST"
        assert body["path"] == "/api/pets" and body["query"] == "x=1&y=2"
        assert body["headers"]["x-dup"] == "1, 2"
        assert body["headers"]["authorization"] == "Bearer t"

        async with session.delete(f"{echo.url}/") as resp:
            assert resp.status == 200

        first, second = echo.received
        assert (first.method, first.path, first.query, first.body) == (
            "POST",
            "/api/pets",
            "x=1&y=2",
            b"hello",
        )
        assert first.raw_path == "/api/pets?x=1&y=2"
        assert first.header_values("x-dup") == ["1", "2"]
        assert first.header("AUTHORIZATION") == "Bearer t"
        assert ("X-Dup", "1") in first.headers
        assert second.method == "DELETE" and second.path == "/"
        echo.clear()
        assert echo.received == []


# -- MitmdumpProcess ----------------------------------------------------------------------------

STANDIN = """\
import logging

from mitmproxy import ctx


def running():
    port = ctx.master.addons.get("proxyserver").listen_addrs()[0][1]
    logging.info("claimroute ready: listening on 127.0.0.1:%d", port)


def request(flow):
    logging.info("stand-in saw %s", flow.request.path)
"""

BROKEN = "raise RuntimeError('stand-in exploded at import')\n"


@pytest.fixture
def standin(tmp_path: Path) -> Path:
    path = tmp_path / "standin_addon.py"
    path.write_text(STANDIN)
    return path


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "broken_addon.py"
    path.write_text(BROKEN)
    return path


def test_addon_script_path() -> None:
    assert ADDON_SCRIPT.name == "mitmdump_script.py"
    assert ADDON_SCRIPT.parent.name == "claimroute"
    assert ADDON_SCRIPT.is_file()


def test_command_line(tmp_path: Path) -> None:
    proc = MitmdumpProcess(
        tmp_path / "policy.yaml",
        mode="reverse:http://127.0.0.1:1",
        options={"connection_strategy": "lazy", "ssl_insecure": True, "n": 3, "seq": ["a", "b"]},
        confdir=tmp_path,
        extra_args=["-v"],
    )
    cmd = proc.command
    assert cmd[0].endswith("mitmdump") and cmd[-1] == "-v"
    joined = " ".join(cmd)
    for part in (
        f"-s {ADDON_SCRIPT}",
        f"--set claimroute={tmp_path / 'policy.yaml'}",
        "--listen-host 127.0.0.1 -p 0 --mode reverse:http://127.0.0.1:1",
        f"--set confdir={tmp_path}",
        "--set termlog_verbosity=info --set flow_detail=0",
        "--set connection_strategy=lazy --set ssl_insecure=true --set n=3",
        "--set seq=a --set seq=b",
    ):
        assert part in joined
    with pytest.raises(TypeError, match="float"):
        MitmdumpProcess(None, options={"f": 1.5})  # type: ignore[dict-item]


@pytest.mark.e2e
async def test_mitmdump_proxies_through_standin(standin: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    proc = MitmdumpProcess(policy, script=standin)
    async with EchoUpstream("primary") as echo:
        await proc.astart()
        try:
            assert proc.alive and proc.port and proc.proxy_url == f"http://127.0.0.1:{proc.port}"
            assert "claimroute ready: listening on 127.0.0.1:" in proc.output
            mark = proc.mark()
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{echo.url}/hello?a=1", proxy=proc.proxy_url) as resp,
            ):
                assert resp.status == 200 and resp.headers["x-upstream"] == "primary"
            await proc.await_output(r"stand-in saw /hello\?a=1", 10, since=mark)
            assert [r.raw_path for r in echo.received] == ["/hello?a=1"]
            assert proc.ca_cert.exists()  # the isolated confdir is really used
        finally:
            rc = await proc.astop()
    assert rc == 0 and not proc.alive
    assert not proc.confdir.exists()  # isolated confdir cleaned up


@pytest.mark.e2e
def test_mitmdump_wait_for_output_timeout(standin: Path) -> None:
    with MitmdumpProcess(None, script=standin) as proc:
        with pytest.raises(MitmdumpFailed, match="timed out") as info:
            proc.wait_for_output("never printed", 0.3)
        assert "claimroute ready" in info.value.output


@pytest.mark.e2e
def test_mitmdump_failure_carries_output(broken: Path) -> None:
    proc = MitmdumpProcess(None, script=broken)
    with pytest.raises(MitmdumpFailed) as info:
        proc.start(timeout=30)
    message = str(info.value)
    assert "stand-in exploded at import" in message
    assert "exit code" in message and str(broken) in message
    assert info.value.returncode is not None and not proc.alive


@pytest.mark.e2e
def test_run_until_exit(broken: Path, standin: Path) -> None:
    rc, output = run_mitmdump_until_exit(None, timeout=30, script=broken)
    assert rc != 0 and "stand-in exploded at import" in output

    with pytest.raises(MitmdumpFailed, match="expected to refuse"):
        run_mitmdump_until_exit(None, timeout=30, script=standin)
