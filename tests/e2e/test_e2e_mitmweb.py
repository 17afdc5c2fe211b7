"""mitmweb with the addon: decisions on flow comments, refused flows marked, read back through
mitmweb's own HTTP API (`GET /flows`, authenticated with `web_password` as a bearer token)."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from claimroute_tools.lab import EchoUpstream, MitmdumpProcess, TestIssuer
from claimroute_tools.lab.mitmdump import MITMDUMP

from .conftest import send, write

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

MITMWEB = MITMDUMP.parent / "mitmweb"
PASSWORD = "claimroute-e2e-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mitmweb(policy, web_port: int) -> MitmdumpProcess:
    """The lab's mitmdump harness (isolated confdir, ready line) running mitmweb instead."""
    process = MitmdumpProcess(
        policy,
        options={
            "web_host": "127.0.0.1",
            "web_port": web_port,
            "web_open_browser": False,
            "web_password": PASSWORD,
        },
    )
    command = [str(MITMWEB), *process.command[1:]]
    # flow_detail belongs to mitmdump's dumper; mitmweb has no such option.
    at = command.index("flow_detail=0")
    process.command = command[: at - 1] + command[at + 1 :]
    return process


async def flows(web_port: int, **auth: str) -> tuple[int, object]:
    url = f"http://127.0.0.1:{web_port}/flows"
    headers = {"Authorization": f"Bearer {auth['token']}"} if "token" in auth else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        if response.status != 200 or "json" not in response.headers.get("content-type", ""):
            return response.status, await response.text()
        return response.status, await response.json()


@pytest.mark.skipif(not MITMWEB.exists(), reason="mitmweb is not installed next to mitmdump")
async def test_mitmweb_shows_decisions_and_marks_refused_flows(tmp_path):
    corp = TestIssuer("corp", "ES256", issuer="https://corp.test")
    corp.write_jwks(tmp_path / "corp.jwks.json")
    policy = write(
        tmp_path / "policy.yaml",
        "version: 1\nproviders:\n  corp:\n    issuer: https://corp.test\n"
        "    jwks: {file: corp.jwks.json}\n",
    )
    web_port = free_port()
    async with EchoUpstream("primary") as upstream, mitmweb(policy, web_port) as proxy:
        allowed = await send(proxy.proxy_url, f"{upstream.url}/ok", token=corp.mint("alice"))
        refused = await send(proxy.proxy_url, f"{upstream.url}/no")
        assert (allowed.status, refused.status) == (200, 401)

        status, _ = await flows(web_port)  # the API needs the password
        assert status == 403
        status, listed = await flows(web_port, token=PASSWORD)
    assert status == 200 and isinstance(listed, list)
    by_path = {flow["request"]["path"]: flow for flow in listed}
    ok, no = by_path["/ok"], by_path["/no"]
    assert ok["comment"] == "claimroute: allowed corp/alice"
    assert ok["marked"] == ""
    assert no["comment"] == "claimroute: denied 401 Jwt is missing"
    assert no["marked"] == "⛔"  # mitmweb shows the `:no_entry:` marker as its emoji
