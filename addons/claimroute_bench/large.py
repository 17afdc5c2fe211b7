"""Large requests: what the addon adds to bare mitmdump's time for the same bytes.

A client can send a Cookie header or a query string of a megabyte or more. The addon must
not parse what the policy does not read: with the benchmark policy (token in `Authorization`
only) such a request should cost about what it costs bare mitmdump. Each kind of request is
sent, one at a time and alternating between (a) bare mitmdump and (b) mitmdump + claimroute,
both in reverse mode in front of one upstream; the median time per kind is reported with the
difference b - a. A policy that reads a cookie refuses a Cookie header over the documented
limit (431), which is measured too.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import aiohttp

from claimroute_bench.proxy_load import BARE_SCRIPT, PROXY_OPTIONS
from claimroute_bench.scenario import REQUEST_PATH, Setup
from claimroute_bench.upstream import Upstream
from claimroute_tools.lab import MitmdumpProcess

COOKIE_BYTES = 1_500_000
QUERY_BYTES = 1_400_000


def _kinds(token: str) -> dict[str, dict[str, Any]]:
    auth = {"Authorization": f"Bearer {token}"}
    cookie = "; ".join(f"c{i}={'v' * 20}" for i in range(COOKIE_BYTES // 26))
    query = "&".join(f"q{i}={'v' * 20}" for i in range(QUERY_BYTES // 26))
    return {
        "small": {"path": REQUEST_PATH, "headers": auth},
        "cookie_1.5MB": {"path": REQUEST_PATH, "headers": {**auth, "Cookie": cookie}},
        "query_1.4MB": {"path": f"{REQUEST_PATH}?{query}", "headers": auth},
    }


async def _timed(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    async with session.get(url, headers=headers) as response:
        await response.read()
    return (time.perf_counter() - started) * 1000


async def _measure(proxies: dict[str, str], token: str, repeats: int) -> dict[str, Any]:
    kinds = _kinds(token)
    times: dict[str, dict[str, list[float]]] = {k: {"a": [], "b": []} for k in kinds}
    limits = aiohttp.TCPConnector(limit=1)
    # The default line and field limits of aiohttp's client are for responses; requests are
    # only bounded by mitmproxy here.
    async with aiohttp.ClientSession(connector=limits) as session:
        for index in range(repeats):
            for name in ("a", "b") if index % 2 == 0 else ("b", "a"):
                for kind, spec in kinds.items():
                    url = proxies[name] + spec["path"]
                    times[kind][name].append(await _timed(session, url, spec["headers"]))
    out: dict[str, Any] = {}
    for kind, by_proxy in times.items():
        a = statistics.median(by_proxy["a"])
        b = statistics.median(by_proxy["b"])
        out[kind] = {"a_ms": round(a, 2), "b_ms": round(b, 2), "added_ms": round(b - a, 2)}
    return out


def run(setup: Setup, *, repeats: int = 7, progress: Any = None) -> dict[str, Any]:
    """Median ms per request kind through bare mitmdump and through the addon."""
    import asyncio

    say = progress or (lambda message: None)
    with Upstream() as upstream:
        policy = setup.write_policy(upstream.url)
        mode = f"reverse:{upstream.url}"
        bare = MitmdumpProcess(None, mode=mode, script=BARE_SCRIPT, options=PROXY_OPTIONS)
        addon = MitmdumpProcess(policy, mode=mode, options=PROXY_OPTIONS)
        with bare, addon:
            say(f"large requests: {repeats} of each kind through a and b")
            proxies = {"a": str(bare.proxy_url), "b": str(addon.proxy_url)}
            result = asyncio.run(_measure(proxies, setup.tokens[0], repeats))
    return {"config": {"repeats": repeats, "cookie_bytes": COOKIE_BYTES,
                       "query_bytes": QUERY_BYTES}, "summary": result}  # fmt: skip
