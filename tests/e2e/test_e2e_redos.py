"""Hostile input against policy regexes, end to end: no header, path or signed claim can make
a regex stall the proxy (policy regexes are RE2, linear in the input; docs/policy.md).

The e-mail regex and the path rule below backtrack catastrophically in Python's `re`: on the
inputs sent here each match takes well over 10 s with `re`, and mitmproxy runs every hook on
one event loop, so a probe request sent next to an evil one waited just as long. Measured on
the code before the change (commit 6b60e4a, `re.fullmatch`, 2 shared cores): the header case
took 14.8 s (probe 14.7 s), the path case 16.0 s (probe 16.0 s), the claim case 15.6 s (probe
15.6 s), 48 s for the module, with the three timing tests failing. With RE2 every request,
evil or probe, answered within 12 ms, and the module took 2 s, mostly mitmdump's start.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import pytest_asyncio

from claimroute_tools.lab import EchoUpstream, MitmdumpProcess, TestIssuer

from .conftest import Reply, write

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

# A common e-mail regex, and a path rule, both with nested quantifiers.
EMAIL = r"([a-zA-Z0-9]+[._-]?)+@([a-zA-Z0-9-]+\.)+[a-zA-Z]{2,}"
FILES = r"/files/([a-z0-9]+/?)+"
# Inputs that almost match: `re` tries every way to split the run of letters (2^n).
EVIL_EMAIL = "a" * 28 + "!"
EVIL_PATH = "/files/" + "a" * 28 + "!"

# Generous: a few milliseconds is typical; the old engine took over 10 s on each evil input.
BOUND = 2.0

POLICY = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {{file: corp.jwks.json}}
validation: allow_missing
rbac:
  default_action: deny
  policies:
    - name: files
      action: allow
      permissions: {{paths: [{{regex: '{files}'}}]}}
    - name: mail-users
      action: allow
      principals: [{{claims: {{email: {{regex: '{email}'}}}}}}]
      permissions: {{paths: [{{prefix: /mail}}]}}
    - name: probe
      action: allow
      permissions: {{paths: [{{exact: /probe}}]}}
routes:
  - name: mail-header-to-canary
    match: {{headers: {{x-email: {{regex: '{email}'}}}}}}
    upstream: "{canary}"
"""


@pytest.fixture(scope="module")
def corp():
    return TestIssuer("corp", "RS256")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstreams():
    async with EchoUpstream("primary") as primary, EchoUpstream("canary") as canary:
        yield {"primary": primary, "canary": canary}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(tmp_path_factory, corp, upstreams):
    folder = tmp_path_factory.mktemp("redos")
    corp.write_jwks(folder / "corp.jwks.json")
    policy = write(
        folder / "policy.yaml",
        POLICY.format(files=FILES, email=EMAIL, canary=upstreams["canary"].url),
    )
    async with MitmdumpProcess(policy) as process:
        # one request first, so that the timed ones do not pay for the first connection
        await timed(process, upstreams, "/probe")
        yield process


async def timed(
    proxy, upstreams, path: str, *, token: str | None = None, headers: dict[str, str] | None = None
) -> tuple[Reply, float]:
    """One request through the proxy on a fresh connection, and the seconds it took. The
    client waits long enough for the old engine to finish, so a slow answer is measured rather
    than cut off."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    url = f"{upstreams['primary'].url}{path}"
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
        session.get(url, headers=all_headers, proxy=proxy.proxy_url) as response,
    ):
        text = await response.text()
        reply = Reply(response.status, text, {k.lower(): v for k, v in response.headers.items()})
    return reply, time.perf_counter() - started


async def evil_and_probe(proxy, upstreams, path: str, **kwargs) -> tuple[Reply, float, float]:
    """The evil request, and a plain probe sent 50 ms after it while it is in the proxy."""

    async def probe() -> tuple[Reply, float]:
        await asyncio.sleep(0.05)
        return await timed(proxy, upstreams, "/probe")

    (evil, evil_seconds), (plain, probe_seconds) = await asyncio.gather(
        timed(proxy, upstreams, path, **kwargs), probe()
    )
    print(f"{path[:20]}: evil {evil_seconds:.3f} s, probe {probe_seconds:.3f} s")
    assert (plain.status, plain.upstream) == (200, "primary")
    return evil, evil_seconds, probe_seconds


async def test_the_regexes_still_match_good_input(proxy, corp, upstreams):
    routed, _ = await timed(proxy, upstreams, "/probe", headers={"x-email": "ann.lee@corp.test"})
    assert (routed.status, routed.upstream) == (200, "canary")
    files, _ = await timed(proxy, upstreams, "/files/a1/b2/")
    assert (files.status, files.upstream) == (200, "primary")
    token = corp.mint("ann", {"email": "ann.lee@corp.test"})
    mail, _ = await timed(proxy, upstreams, "/mail/inbox", token=token)
    assert (mail.status, mail.upstream) == (200, "primary")


async def test_evil_header_value_does_not_stall_the_proxy(proxy, upstreams):
    evil, evil_seconds, probe_seconds = await evil_and_probe(
        proxy, upstreams, "/probe", headers={"x-email": EVIL_EMAIL}
    )
    assert (evil.status, evil.upstream) == (200, "primary")  # no match: the default upstream
    assert evil_seconds < BOUND
    assert probe_seconds < BOUND


async def test_evil_path_does_not_stall_the_proxy(proxy, upstreams):
    evil, evil_seconds, probe_seconds = await evil_and_probe(proxy, upstreams, EVIL_PATH)
    assert (evil.status, evil.text) == (403, "RBAC: access denied")  # no rule allows it
    assert evil_seconds < BOUND
    assert probe_seconds < BOUND


async def test_evil_signed_claim_does_not_stall_the_proxy(proxy, corp, upstreams):
    token = corp.mint("mallory", {"email": EVIL_EMAIL})
    evil, evil_seconds, probe_seconds = await evil_and_probe(
        proxy, upstreams, "/mail/inbox", token=token
    )
    assert (evil.status, evil.text) == (403, "RBAC: access denied")  # the principal fails
    assert evil_seconds < BOUND
    assert probe_seconds < BOUND


async def test_header_bytes_that_are_not_utf8_reach_the_regex_safely(proxy, upstreams):
    # mitmproxy keeps such bytes as lone surrogates; RE2 matches UTF-8, so they are encoded
    # code point by code point: one character each, as for `re`, and never an error (a 500).
    # (A request target with such a byte never gets this far: mitmproxy answers 400.)
    target = upstreams["primary"].url.encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(
            b"GET " + target + b"/probe HTTP/1.1\r\n"
            b"Host: " + target.split(b"//")[1] + b"\r\n"
            b"x-email: ann\xff@corp.test\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    assert response.startswith(b"HTTP/1.1 200 "), response[:200]
    assert b"x-upstream: primary" in response.lower()  # the e-mail regex did not match
