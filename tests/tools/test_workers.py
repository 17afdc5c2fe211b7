"""`claimroute proxy --workers N`: N real proxy processes behind a real HAProxy.

Started as a subprocess (`claimroute_tools.lab.workerset.WorkerSetProcess` runs
`python -m claimroute_tools.cli proxy --workers N POLICY ...`), in front of real echo upstreams.
Checked: traffic through the one address; a worker killed with SIGKILL is restarted while every
request keeps succeeding; SIGTERM stops the supervisor, HAProxy and every worker; a policy change
reaches every worker; 2,000 users each get the cohort of the published bucket formula, the same
through 4 workers as through one process.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from claimroute_bench.procstat import descendants
from claimroute_tools.lab import EchoUpstream, MitmdumpProcess, TestIssuer
from claimroute_tools.lab.workerset import WorkerSetProcess
from claimroute_tools.proxy.haproxy import find_haproxy

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_haproxy() is None, reason="needs haproxy (apt-get install haproxy)"),
]

SALT = "workers"
ROUTE = "split"
POLICY = """\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {{file: corp.jwks.json}}
    claims_to_headers: [{{claim: sub, header: x-user}}]
rbac:
  default_action: deny
  policies:
    - name: readers
      action: allow
      principals: [{{provider: corp}}]
      permissions: {{paths: [{{prefix: {allowed}}}]}}
routes:
  - name: {route}
    match: {{authenticated: true}}
    split:
      salt: {salt}
      to: [{{upstream: "{canary}", weight: 30}}, {{upstream: "{primary}", weight: 70}}]
# {revision}
"""


def write_policy(folder: Path, primary: str, canary: str, allowed: str = "/api/", rev: int = 0):
    path = folder / "policy.yaml"
    path.write_text(POLICY.format(allowed=allowed, route=ROUTE, salt=SALT, canary=canary,
                                  primary=primary, revision=rev))  # fmt: skip
    return path


def formula_cohort(sub: str) -> str:
    """docs/policy.md: bucket = int.from_bytes(sha256(f"{salt}:{route}:{value}")[:8]) % 10000;
    weights 30/70: buckets 0..2999 go to the canary. Written out here, not the addon's code."""
    digest = hashlib.sha256(f"{SALT}:{ROUTE}:{sub}".encode()).digest()
    return "canary" if int.from_bytes(digest[:8], "big") % 10_000 < 3000 else "primary"


async def get(session: aiohttp.ClientSession, proxy: str, url: str, token: str) -> tuple[int, str]:
    """One request through the proxy: (status, the upstream that answered or '')."""
    headers = {"Authorization": f"Bearer {token}"}
    async with session.get(url, headers=headers, proxy=proxy) as response:
        body = await response.read()
        name = response.headers.get("x-upstream", "") if response.status == 200 else ""
        return response.status, name if body else ""


def fresh_session() -> aiohttp.ClientSession:
    # A new connection per request: HAProxy balances connections, so this reaches every worker.
    connector = aiohttp.TCPConnector(force_close=True, limit=16)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def corp(tmp_path: Path) -> TestIssuer:
    issuer = TestIssuer("corp", "ES256", issuer="https://corp.test")
    issuer.write_jwks(tmp_path / "corp.jwks.json")
    return issuer


async def test_workers_serve_survive_a_killed_worker_and_stop_cleanly(tmp_path, corp) -> None:
    async with EchoUpstream("primary") as primary, EchoUpstream("canary") as canary:
        policy = write_policy(tmp_path, primary.url, canary.url)
        proxy = WorkerSetProcess(policy, 2, options={"connection_strategy": "lazy"})
        await proxy.astart(timeout=120)
        try:
            assert proxy.proxy_url is not None
            [first, second] = proxy.worker_pids
            url = f"{primary.url}/api/items"
            token = corp.mint("alice")
            async with fresh_session() as session:
                statuses = [(await get(session, proxy.proxy_url, url, token))[0] for _ in range(8)]
                assert statuses == [200] * 8
                assert (await get(session, proxy.proxy_url, f"{primary.url}/x", token))[0] == 403

                supervised = set(descendants(proxy.pid))
                assert {first, second} <= supervised and len(supervised) >= 3  # + HAProxy
                mark = proxy.mark()
                os.kill(first, signal.SIGKILL)
                # Requests all the way through the restart: every one is served (by the other
                # worker while the first is down: HAProxy redispatches refused connections).
                restarted = asyncio.create_task(
                    proxy.await_output(r"\[worker 1\] .*claimroute worker ready", 120, since=mark)
                )
                during: list[int] = []
                for _ in range(2000):  # bounded; ends when the worker is back
                    during.append((await get(session, proxy.proxy_url, url, token))[0])
                    if restarted.done() and len(during) >= 20:
                        break
                    await asyncio.sleep(0.02)
                await restarted
                assert during and set(during) == {200}, during
                assert "worker 1 (pid" in proxy.output and "exited with" in proxy.output
                assert proxy.alive and alive(second)  # the other worker never stopped
                after = set(descendants(proxy.pid))
                assert first not in after
                statuses = [(await get(session, proxy.proxy_url, url, token))[0] for _ in range(8)]
                assert statuses == [200] * 8
        finally:
            supervisor = proxy.pid
            everything = set(descendants(supervisor))
            code = await proxy.astop()
        assert code == 0, proxy.output[-3000:]
        assert "all workers and HAProxy stopped" in proxy.output
        left = [pid for pid in everything | {supervisor or 0} if alive(pid)]
        assert left == [], f"processes left behind: {left}"


async def test_a_policy_change_reaches_every_worker(tmp_path, corp) -> None:
    async with EchoUpstream("primary") as primary, EchoUpstream("canary") as canary:
        policy = write_policy(tmp_path, primary.url, canary.url, allowed="/api/")
        async with WorkerSetProcess(policy, 2) as proxy:
            assert proxy.proxy_url is not None
            url = f"{primary.url}/new/items"
            token = corp.mint("bob")
            async with fresh_session() as session:
                before = [(await get(session, proxy.proxy_url, url, token))[0] for _ in range(6)]
                assert before == [403] * 6
                mark = proxy.mark()
                write_policy(tmp_path, primary.url, canary.url, allowed="/new/", rev=1)
                for worker in (1, 2):
                    await proxy.await_output(
                        rf"\[worker {worker}\] .*policy reloaded", 60, since=mark
                    )
                after = [(await get(session, proxy.proxy_url, url, token))[0] for _ in range(12)]
                assert after == [200] * 12


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_listen_address_in_the_equals_spelling_is_haproxys(tmp_path, corp) -> None:
    """Review 17: `--set=listen_host=`/`--set=listen_port=` (argparse's one-token spelling) name
    HAProxy's address; the workers each get a loopback port of their own."""
    port = _free_port()
    async with EchoUpstream("primary") as primary, EchoUpstream("canary") as canary:
        policy = write_policy(tmp_path, primary.url, canary.url)
        listen = ("--set=listen_host=127.0.0.1", f"--set=listen_port={port}",
                  "--set=block_private")  # fmt: skip
        async with WorkerSetProcess(policy, 2, listen=listen) as proxy:
            assert proxy.port == port, proxy.output[-2000:]
            ready = next(line for line in proxy.lines if "HAProxy, 2 workers" in line)
            assert f"listening on 127.0.0.1:{port} " in ready
            async with fresh_session() as session:
                url = f"{primary.url}/api/items"
                status, _ = await get(session, f"http://127.0.0.1:{port}", url, corp.mint("al"))
                assert status == 200  # loopback passes block_private, as with one process


@pytest.mark.parametrize("mode", ["transparent", "wireguard"])
def test_a_mode_haproxy_cannot_carry_is_refused_at_start(tmp_path, mode) -> None:
    """Nothing starts: the message says why, before any worker or HAProxy."""
    policy = write_policy(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9")
    done = subprocess.run(
        [sys.executable, "-m", "claimroute_tools.cli", "proxy", "--workers", "2", str(policy),
         "--mode", mode, "--set", f"confdir={tmp_path}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert f"--mode {mode} cannot run behind HAProxy" in done.stderr
    assert "worker 1" not in done.stdout


async def _metrics_decisions(port: int) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("claimroute_decisions_total{")))  # fmt: skip


async def _cohorts(proxy_url: str, upstream_url: str, tokens: dict[str, str]) -> dict[str, str]:
    async with fresh_session() as session:
        limit = asyncio.Semaphore(16)

        async def one(sub: str, token: str) -> tuple[str, str]:
            async with limit:
                status, name = await get(session, proxy_url, f"{upstream_url}/api/me", token)
                assert status == 200, (sub, status)
                return sub, name

        return dict(await asyncio.gather(*(one(s, t) for s, t in tokens.items())))


async def test_2000_users_get_the_formula_cohort_through_4_workers(tmp_path, corp) -> None:
    tokens = {f"user-{i:04d}@corp.test": "" for i in range(2000)}
    for sub in tokens:
        tokens[sub] = corp.mint(sub)
    expected = {sub: formula_cohort(sub) for sub in tokens}
    assert 0.2 < sum(c == "canary" for c in expected.values()) / len(expected) < 0.4
    async with EchoUpstream("primary") as primary, EchoUpstream("canary") as canary:
        policy = write_policy(tmp_path, primary.url, canary.url)
        metrics = _free_port()
        options = {"claimroute_metrics": str(metrics)}
        async with WorkerSetProcess(policy, 4, options=options) as proxy:
            assert proxy.proxy_url is not None
            through_workers = await _cohorts(proxy.proxy_url, primary.url, tokens)
            per_worker = [await _metrics_decisions(metrics + i) for i in range(4)]
        async with MitmdumpProcess(policy) as single:
            assert single.proxy_url is not None
            through_one = await _cohorts(single.proxy_url, primary.url, tokens)

    assert sum(per_worker) == len(tokens) and min(per_worker) > 0, per_worker  # all 4 served
    wrong = {
        s: (through_workers[s], expected[s]) for s in tokens if through_workers[s] != expected[s]
    }
    assert not wrong, f"{len(wrong)} users off the formula, e.g. {list(wrong.items())[:5]}"
    assert through_workers == through_one


async def test_the_scenario_runner_sends_an_experiment_through_two_workers(tmp_path) -> None:
    """`claimroute scenario NAME --proxy-workers 2`: the formula and sticky expectations hold
    through HAProxy, and both workers decided requests (each logs its own ready line)."""
    from claimroute_tools.scenario import load_scenario, run_scenario
    from claimroute_tools.scenario.cli import resolve

    scenario = load_scenario(resolve("sticky-ten-percent")).with_overrides(requests=600)
    result = await run_scenario(scenario, tmp_path / "run", progress=False, proxy_workers=2)
    assert result.passed, [o.observed for o in result.outcomes if not o.passed]
    output = (tmp_path / "run" / "mitmdump.log").read_text()
    assert "HAProxy, 2 workers" in output
    for worker in (1, 2):
        assert f"[worker {worker}]" in output
    assert result.summary.run.requests_sent == 600
