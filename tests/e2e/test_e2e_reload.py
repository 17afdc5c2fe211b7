"""Live edits and hostile strings through a real mitmdump: no half-read policy, no forged line."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from aiohttp import web

from claimroute_tools.lab import EchoUpstream, MitmdumpProcess, TestIssuer
from claimroute_tools.lab.echo import LoopbackServer

from .conftest import send, write

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

# The first half is a valid policy by itself, and lets anonymous requests through; the whole
# file denies them.
HALF = (
    "version: 1\n"
    "providers:\n"
    "  corp:\n"
    "    issuer: https://corp.test\n"
    "    jwks: {url: 'http://127.0.0.1:9/jwks.json'}\n"
    "validation: allow_missing\n"
)
FULL = HALF + "rbac:\n  default_action: deny\n"
FORGED = "FORGED claimroute ready: listening on 6.6.6.6"


def write_in_two_halves(path, first: str, rest: str, pause: float) -> None:
    """A non-atomic save: truncate, write the first part, pause, write the rest."""
    with open(path, "w") as handle:
        handle.write(first)
        handle.flush()
        time.sleep(pause)
        handle.write(rest)


async def test_a_policy_written_in_two_halves_is_never_read_half_way(tmp_path) -> None:
    policy = write(tmp_path / "policy.yaml", FULL + "# revision 0\n")
    async with EchoUpstream("primary") as upstream, MitmdumpProcess(policy) as proxy:
        url = f"{upstream.url}/anything"
        assert (await send(proxy.proxy_url, url)).status == 403
        statuses: list[int] = []
        stop = asyncio.Event()

        async def probe() -> None:
            while not stop.is_set():
                statuses.append((await send(proxy.proxy_url, url)).status)
                await asyncio.sleep(0.02)

        prober = asyncio.create_task(probe())
        try:
            for revision in (1, 2, 3):
                mark = proxy.mark()
                await asyncio.to_thread(
                    write_in_two_halves, policy, HALF, FULL[len(HALF) :] + f"# {revision}\n", 0.2
                )
                await proxy.await_output(r"policy reloaded", 15, since=mark)
                await asyncio.sleep(1.5)  # room for a second (half-read) install to show
                reloads = [line for line in proxy.lines[mark:] if "policy reloaded" in line]
                assert len(reloads) == 1, reloads
        finally:
            stop.set()
            await prober
        assert statuses and set(statuses) == {403}, statuses
        assert upstream.received == []


class HostileIdp(LoopbackServer):
    """An identity provider whose discovery document points at a jwks_uri with a newline and
    ANSI escapes; any other path serves its keys (so the jwks_uri is fetched, and logged)."""

    def __init__(self, issuer: TestIssuer) -> None:
        super().__init__()
        self.issuer = issuer

    def build_app(self) -> web.Application:
        async def discovery(request: web.Request) -> web.Response:
            return web.json_response(
                {"issuer": self.url, "jwks_uri": f"{self.url}/jwks\n{FORGED}\x1b[2K\x1b[31mred"}
            )

        async def anything(request: web.Request) -> web.Response:
            return web.json_response(self.issuer.public_jwks())

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_route("*", "/{tail:.*}", anything)
        return app


async def test_hostile_idp_and_token_strings_cannot_forge_a_log_line(tmp_path) -> None:
    issuer = TestIssuer("corp", "RS256")
    async with HostileIdp(issuer) as idp:
        issuer.issuer = idp.url
        policy = write(
            tmp_path / "policy.yaml",
            "version: 1\nproviders:\n  corp:\n"
            f"    issuer: {idp.url}\n"
            "    jwks: {discovery: true, timeout: 1s}\n",
        )
        async with EchoUpstream("primary") as upstream, MitmdumpProcess(policy) as proxy:
            await proxy.await_output(r"loaded keys .* from ", 15, since=0)
            good = await send(proxy.proxy_url, f"{upstream.url}/ok", token=issuer.mint("alice"))
            assert good.status == 200, good.text
            kid = f"k\n{FORGED}\x1b[31m" + "x" * 5000
            token = issuer.mint("mallory", header={"kid": kid})
            reply = await send(proxy.proxy_url, f"{upstream.url}/a", token=token)
            assert reply.status == 401
            assert len(reply.text) <= 200
            junk = issuer.mint("mallory").split(".")
            junk[1] = "eyJ" + "A" * 6000  # a payload of several KB that is not JSON
            reply = await send(proxy.proxy_url, f"{upstream.url}/b", token=".".join(junk))
            assert reply.status == 401 and len(reply.text) <= 200, reply.text
            assert len(reply.headers.get("www-authenticate", "")) < 400
            await asyncio.sleep(0.5)
            output = proxy.output
    assert "\x1b" not in output
    assert not re.search(r"^\s*FORGED", output, re.MULTILINE), output
    assert f"\\n{FORGED}\\x1b[2K" in output  # logged, escaped, on the line it belongs to
