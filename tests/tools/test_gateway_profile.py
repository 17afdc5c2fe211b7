"""The lean `gateway` profile decides exactly as mitmdump does, byte for byte.

The same traffic (allowed, denied, refused tokens, a sticky split, hygiene refusals, an h2c
upgrade, ambiguous framing) goes through a REAL mitmdump with the addon and through the gateway
profile, each in front of the same two echo upstreams. Compared: the decision log (minus ids and
timestamps), what each upstream received (method, path as sent, headers minus hop-by-hop ones,
body), and what the client got (status and body). Requests are raw HTTP/1.1 bytes, so that no
client library normalises anything away.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from claimroute_tools.lab import EchoUpstream, MitmdumpProcess, TestIssuer

pytestmark = [pytest.mark.e2e]

POLICY = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {{file: corp.jwks.json}}
    token_source:
      headers: [{{name: authorization, prefix: "Bearer "}}, {{name: x-auth-token}}]
      cookies: [session]
    claims_to_headers: [{{claim: sub, header: x-user}}, {{claim: org, header: x-org}}]
rbac:
  default_action: deny
  policies:
    - name: no-admin-host
      action: deny
      permissions: {{hosts: [admin.internal]}}
    - name: readers
      action: allow
      principals: [{{provider: corp}}]
      permissions: {{methods: [GET], paths: [{{prefix: /api/}}]}}
    - name: writers
      action: allow
      principals: [{{provider: corp, claims: {{org: writers}}}}]
      permissions: {{methods: [POST], paths: [{{prefix: /api/}}]}}
routes:
  - name: solo-to-canary
    match: {{claims: {{org: solo.io}}}}
    upstream: {canary}
  - name: split
    match: {{authenticated: true}}
    split:
      salt: gateway-profile
      to: [{{upstream: "{canary}", weight: 30}}, {{upstream: "{primary}", weight: 70}}]
"""

# Headers about one hop (RFC 9110 §7.6.1) and the ones each connection sets its own way.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                        "transfer-encoding", "upgrade", "proxy-authorization"})  # fmt: skip


@dataclass(frozen=True)
class Exchange:
    status: int
    body: bytes


async def raw_exchange(port: int, data: bytes) -> Exchange:
    """Send `data` to the proxy on a fresh connection and read one answer (its body by
    Content-Length, else until the proxy closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        read = reader.readexactly(length) if length is not None else reader.read(-1)
        body = await asyncio.wait_for(read, 20)
    finally:
        writer.close()
    return Exchange(int(head.split(b" ", 2)[1]), body)


def request(target: str, host: str, *lines: str, method: str = "GET", body: bytes = b"") -> bytes:
    """A raw absolute-form HTTP/1.1 request (regular proxy mode)."""
    head = [f"{method} {target} HTTP/1.1", f"Host: {host}", *lines, "Connection: close"]
    if body:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def traffic(corp: TestIssuer, primary: str) -> list[bytes]:
    """Every kind of request, each with its own request id (the decision log records it)."""
    hostport = primary.removeprefix("http://")
    url = f"{primary}/api/pets"
    users = [corp.mint(f"user-{i}", {"org": "acme"}) for i in range(12)]
    solo = corp.mint("sam", {"org": "solo.io"})
    writer = corp.mint("wanda", {"org": "writers"})
    bearer = lambda token: f"Authorization: Bearer {token}"  # noqa: E731
    out: list[bytes] = []
    # Allowed, through the split (both arms) and twice each (the second from the token cache).
    for token in users + users:
        out.append(request(url, hostport, bearer(token), "X-Org: forged-by-client"))
    out += [
        request(url, hostport, bearer(solo)),  # claim route to the canary
        request(url, hostport, f"X-Auth-Token: {users[0]}"),  # the second token location
        request(url, hostport, f"Cookie: theme=dark; session={users[1]}"),  # the cookie
        request(url, hostport, bearer(writer), method="POST", body=b'{"pet": "cat"}'),
        request(url, hostport, bearer(writer), method="POST", body=b"x" * 4096),  # streamed
        request(url, hostport, bearer(users[0]), method="POST", body=b"{}"),  # RBAC deny
        request(f"{primary}/other", hostport, bearer(users[0])),  # no allow: default deny
        request("http://admin.internal/api/pets", "admin.internal", bearer(users[0])),
        request(url, hostport),  # no token
    ]
    for tamper in ("expired", "signature", "wrong_issuer", "wrong_audience", "alg_none"):
        out.append(request(url, hostport, bearer(corp.mint("eve", tamper=tamper))))
    out += [
        # Hygiene refusals: no decision on requests the upstream could read otherwise.
        request(url, hostport, "Host: second.test", bearer(users[0])),  # two Host headers
        request(url, hostport, f"X_Auth_Token: {users[0]}"),  # token header with `_`
        request(url, hostport, f"Cookie: x=1, session={users[1]}"),  # ambiguous cookie
        request(url, hostport, bearer(users[0]), "X-Note: a\r\n folded"),  # obs-fold
        request(url, hostport, bearer(users[0]), bearer(users[1])),  # two tokens
        # An h2c upgrade: DisableH2C strips it; the request itself goes through.
        request(
            url,
            hostport,
            bearer(users[2]),
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAAQAAP__",
            "Connection: Upgrade, HTTP2-Settings",
        ),
        # Ambiguous framing: mitmproxy's own validation answers 400, nothing is decided.
        (
            request(
                url,
                hostport,
                bearer(users[0]),
                "Transfer-Encoding: chunked",
                method="POST",
                body=b"0\r\n\r\n",
            )
        ),
    ]
    return [
        r.replace(b"\r\n", f"\r\nX-Request-Id: r{i:03d}\r\n".encode(), 1) for i, r in enumerate(out)
    ]


def upstream_view(upstream: EchoUpstream) -> list[tuple[object, ...]]:
    """What the upstream received, in order, minus hop-by-hop headers."""
    return [
        (r.method, r.raw_path,
         tuple((k.lower(), v) for k, v in r.headers if k.lower() not in HOP_BY_HOP), r.body)
        for r in upstream.received
    ]  # fmt: skip


def decisions(path: Path) -> list[dict[str, object]]:
    """The decision log without what differs from run to run (flow id, timestamp)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in ("id", "ts")} for line in lines]


async def run_profile(
    profile: str, policy: Path, folder: Path, upstreams: dict[str, EchoUpstream], sent: list[bytes]
) -> dict[str, object]:
    for upstream in upstreams.values():
        upstream.clear()
    log = folder / f"decisions-{profile}.jsonl"
    options = {"claimroute_log": str(log), "connection_strategy": "lazy",
               "stream_large_bodies": "1k"}  # fmt: skip
    async with MitmdumpProcess(policy, profile=profile, options=options) as proxy:
        assert proxy.port is not None
        answers = [await raw_exchange(proxy.port, data) for data in sent]
    return {
        "answers": answers,
        "decisions": decisions(log),
        "upstreams": {name: upstream_view(u) for name, u in upstreams.items()},
    }


async def test_gateway_profile_decides_and_forwards_exactly_as_mitmdump(tmp_path: Path) -> None:
    corp = TestIssuer("corp", "RS256", issuer="https://corp.test")
    corp.write_jwks(tmp_path / "corp.jwks.json")
    async with EchoUpstream("primary") as primary, EchoUpstream("canary") as canary:
        upstreams = {"primary": primary, "canary": canary}
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.format(primary=primary.url, canary=canary.url))
        sent = traffic(corp, primary.url)
        plain = await run_profile("mitmdump", policy, tmp_path, upstreams, sent)
        lean = await run_profile("gateway", policy, tmp_path, upstreams, sent)

    # The traffic covers what it claims to, so that equality below means something.
    statuses = {a.status for a in plain["answers"]}  # type: ignore[attr-defined]
    assert {200, 400, 401, 403} <= statuses, statuses
    outcomes = {(d["outcome"], d["reason"]) for d in plain["decisions"]}  # type: ignore[union-attr]
    assert len(outcomes) >= 6, outcomes
    assert plain["upstreams"]["canary"] and plain["upstreams"]["primary"]  # type: ignore[index]
    assert len(plain["decisions"]) >= len(sent) - 1  # type: ignore[arg-type]

    for i, (a, b) in enumerate(zip(plain["answers"], lean["answers"], strict=True)):  # type: ignore[call-overload]
        assert a == b, f"request r{i:03d}: mitmdump answered {a}, gateway {b}"
    assert lean["decisions"] == plain["decisions"]
    assert lean["upstreams"] == plain["upstreams"]


def valid_policy(folder: Path) -> Path:
    """A policy that loads (so that a refusal is about the options, not the policy)."""
    TestIssuer("corp", "ES256", issuer="https://corp.test").write_jwks(folder / "corp.jwks.json")
    path = folder / "good.yaml"
    path.write_text(POLICY.format(primary="http://127.0.0.1:9", canary="http://127.0.0.1:9"))
    return path


def _claimroute_proxy(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "claimroute_tools.cli", "proxy", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def test_help_says_what_the_gateway_profile_leaves_out() -> None:
    done = _claimroute_proxy("--help", timeout=30)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for left_out in ("flow display", "interactive", "onboarding", "--workers"):
        assert left_out in text, left_out


def test_gateway_start_errors_exit_1_with_the_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nproviders: {x: 1}\n")
    common = ["--listen-host", "127.0.0.1", "-p", "0", "--set", f"confdir={tmp_path}"]
    done = _claimroute_proxy("--profile", "gateway", str(bad), *common)
    assert done.returncode == 1
    assert "bad.yaml:2: providers.x" in done.stdout + done.stderr

    good = valid_policy(tmp_path)
    done = _claimroute_proxy("--profile", "gateway", str(good), *common, "--set", "anticache=true")
    assert done.returncode == 1
    assert "anticache not available in the gateway profile" in done.stdout + done.stderr


@pytest.mark.parametrize(
    "option",
    ["validate_inbound_headers=false", "allow_hosts=example.com", "ignore_hosts=example.com"],
)
def test_gateway_refuses_the_options_the_addon_refuses(tmp_path: Path, option: str) -> None:
    """Set before the addon is registered, they still reach its checks (as with mitmdump)."""
    good = valid_policy(tmp_path)
    common = ["--listen-host", "127.0.0.1", "-p", "0", "--set", f"confdir={tmp_path}"]
    done = _claimroute_proxy("--profile", "gateway", str(good), *common, "--set", option)
    assert done.returncode == 1
    assert f"claimroute: {option.split('=')[0]}" in done.stdout + done.stderr


def test_the_lab_profile_follows_the_environment_for_the_addon_only(monkeypatch, tmp_path) -> None:
    from claimroute_tools.lab.mitmdump import ADDON_SCRIPT, GATEWAY_MODULE

    stand_in = tmp_path / "bare.py"
    stand_in.write_text("addons = []\n")
    monkeypatch.setenv("CLAIMROUTE_LAB_PROFILE", "gateway")
    lean = MitmdumpProcess(tmp_path / "p.yaml", confdir=tmp_path)
    assert lean.profile == "gateway" and lean.command[1:3] == ["-m", GATEWAY_MODULE]
    assert "-s" not in lean.command and "flow_detail=0" not in lean.command
    injected = MitmdumpProcess(None, script=stand_in, extra_args=["-s", str(ADDON_SCRIPT)],
                               confdir=tmp_path)  # fmt: skip
    assert injected.profile == "gateway"
    assert injected.command[3:5] == ["-s", str(stand_in)]  # loaded before the built-in addon
    assert MitmdumpProcess(None, script=stand_in, confdir=tmp_path).profile == "mitmdump"
    monkeypatch.setenv("CLAIMROUTE_LAB_PROFILE", "")
    assert MitmdumpProcess(None, confdir=tmp_path).profile == "mitmdump"
    monkeypatch.setenv("CLAIMROUTE_LAB_PROFILE", "fast")
    with pytest.raises(ValueError, match="CLAIMROUTE_LAB_PROFILE"):
        MitmdumpProcess(None, confdir=tmp_path)


# Review 17: the gateway runs the `-s` scripts and the addon in mitmdump's order, and keeps
# enforcing what mitmdump enforces when options change once running.

ORDER_POLICY = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {{file: corp.jwks.json}}
rbac:
  default_action: deny
  policies:
    - name: readers
      action: allow
      principals: [{{provider: corp}}]
      permissions: {{methods: [GET]}}
routes:
  - name: all
    match: {{authenticated: true}}
    upstream: {upstream}
"""

# A sidecar-like script that adds a service token: it decides the outcome by running before or
# after the addon's verification.
INJECT = """\
def requestheaders(flow):
    flow.request.headers["authorization"] = "Bearer {token}"
"""


async def _status(port: int, upstream: EchoUpstream, headers: str = "") -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = (f"GET {upstream.url}/x HTTP/1.1\r\nHost: {upstream.url[7:]}\r\n{headers}"
                   "Connection: close\r\n\r\n")  # fmt: skip
        writer.write(request.encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    finally:
        writer.close()
    return int(head.split(b" ", 2)[1])


async def _outcome(
    profile: str, policy: Path, upstream: EchoUpstream, headers: str = "", **kwargs: object
) -> tuple[int, int]:
    upstream.clear()
    async with MitmdumpProcess(policy, profile=profile, **kwargs) as proxy:  # type: ignore[arg-type]
        assert proxy.port is not None
        status = await _status(proxy.port, upstream, headers)
    return status, len(upstream.received)


async def test_scripts_and_the_addon_run_in_mitmdumps_order(tmp_path: Path) -> None:
    from claimroute_tools.lab.mitmdump import ADDON_SCRIPT

    corp = TestIssuer("corp", "RS256", issuer="https://corp.test")
    corp.write_jwks(tmp_path / "corp.jwks.json")
    inject = tmp_path / "inject.py"
    inject.write_text(INJECT.format(token=corp.mint("svc")))
    addon, script = ["-s", str(ADDON_SCRIPT)], ["-s", str(inject)]
    async with EchoUpstream("up") as upstream:
        policy = tmp_path / "policy.yaml"
        policy.write_text(ORDER_POLICY.format(upstream=upstream.url))
        # The addon first (`mitmdump -s ADDON -s inject.py`): refused before the script runs.
        after = await _outcome("mitmdump", policy, upstream, extra_args=script)
        assert after == (401, 0), after
        given = await _outcome("gateway", policy, upstream, extra_args=[*addon, *script])
        assert given == after, f"gateway {given} != mitmdump {after}"
        # No `-s ADDON` given: first, where `claimroute proxy` puts it for mitmdump.
        implied = await _outcome("gateway", policy, upstream, extra_args=script)
        assert implied == after, f"gateway {implied} != mitmdump {after}"
        # The script first (the lab's fault injector: `-s inject.py -s ADDON`): it runs first.
        before = await _outcome("mitmdump", policy, upstream, script=inject, extra_args=addon)
        assert before == (200, 1), before
        lean = await _outcome("gateway", policy, upstream, script=inject, extra_args=addon)
        assert lean == before, f"gateway {lean} != mitmdump {before}"


SETS_PROXYAUTH = """\
from mitmproxy import ctx


def running():
    # e.g. credentials fetched once the proxy runs (a secret store, a rotation)
    ctx.options.update(proxyauth="alice:secret")
"""


async def test_proxyauth_set_once_running_is_enforced_as_in_mitmdump(tmp_path: Path) -> None:
    corp = TestIssuer("corp", "RS256", issuer="https://corp.test")
    corp.write_jwks(tmp_path / "corp.jwks.json")
    script = tmp_path / "sets_proxyauth.py"
    script.write_text(SETS_PROXYAUTH)
    headers = f"Authorization: Bearer {corp.mint('alice')}\r\n"
    async with EchoUpstream("up") as upstream:
        policy = tmp_path / "policy.yaml"
        policy.write_text(ORDER_POLICY.format(upstream=upstream.url))
        results = {
            profile: await _outcome(
                profile, policy, upstream, headers, extra_args=["-s", str(script)]
            )
            for profile in ("mitmdump", "gateway")
        }
    assert results["mitmdump"] == (407, 0), results
    assert results["gateway"] == results["mitmdump"], results


@pytest.mark.parametrize("mode", ["dns@0", "wireguard@0"])
def test_gateway_refuses_modes_it_cannot_serve(tmp_path: Path, mode: str) -> None:
    """DNS (and WireGuard's in-tunnel DNS) need mitmproxy's resolver, left out of the gateway:
    a startup error rather than a proxy answering SERVFAIL."""
    good = valid_policy(tmp_path)
    common = ["--listen-host", "127.0.0.1", "--set", f"confdir={tmp_path}"]
    done = _claimroute_proxy("--profile", "gateway", str(good), *common, "--mode", mode)
    assert done.returncode == 1, done.stdout + done.stderr
    name = mode.split("@")[0]
    assert f"mode {mode} is not served by the gateway profile: {name}" in done.stdout + done.stderr
