"""The decision path per token: cold (first sight), warm (cache hit), and the raw primitive.

Every figure is per token: a batch of N distinct tokens is timed and divided by N, several
times, and the median batch is reported (timeit-style: the garbage collector is off while a
batch runs). Rows:

- `raw_verify`: `cryptography`'s RSA PKCS#1 v1.5 SHA-256 verify of the token's signature.
- `verify_token`: the addon's verifier alone (parse, checks, signature through joserfc).
- `decide_uncached`: the whole decision path without a cache.
- `decide_cold`: the decision path with an empty cache (a miss, then the token is stored).
- `decide_warm`: the same tokens again (cache hits).
- `hook_warm`: the mitmproxy hook `requestheaders` on a test flow, cache warm: request view,
  header stripping, decision, record, token removal, claim headers and routing applied.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from mitmproxy.http import Headers

from claimroute.match.request import RequestView
from claimroute.mitm.flowedit import HeaderSnapshot
from claimroute.pipeline.decide import decide
from claimroute.pipeline.keysources import build_key_sources
from claimroute.pipeline.tokencache import TokenCache
from claimroute.pipeline.verify import verify_token
from claimroute.policy.load import load_policy
from claimroute_bench.scenario import REQUEST_PATH, Setup
from claimroute_tools.lab import b64url_decode

UPSTREAM = "http://127.0.0.1:9"  # never contacted: nothing is sent anywhere here


def _view(token: str) -> RequestView:
    """The view the addon would build for a typical request (see `addon.request_view`)."""
    headers = Headers(
        host="api.bench.test",
        authorization=f"Bearer {token}",
        accept="application/json",
        user_agent="bench/1.0",
    )
    snapshot = HeaderSnapshot(headers.fields)
    return RequestView("GET", "http", "api.bench.test", 80, REQUEST_PATH, (), snapshot, ())


def _batch(fn: Callable[[], None]) -> float:
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - start) / 1e3
    finally:
        if enabled:
            gc.enable()


async def _abatch(fn: Callable[[], Awaitable[None]]) -> float:
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        await fn()
        return (time.perf_counter_ns() - start) / 1e3
    finally:
        if enabled:
            gc.enable()


def _stats(samples_us: list[float], n: int) -> dict[str, float]:
    per = sorted(s / n for s in samples_us)
    return {
        "median_us": round(statistics.median(per), 2),
        "min_us": round(per[0], 2),
        "max_us": round(per[-1], 2),
    }


async def _measure(setup: Setup, tokens: list[str], repeats: int) -> dict[str, Any]:
    policy = load_policy(setup.write_policy(UPSTREAM, name="micro-policy.yaml"))
    key_sources = build_key_sources(policy)
    now = time.time()
    n = len(tokens)
    views = [_view(t) for t in tokens]
    public_key = setup.issuer.key.public_key
    parts = []
    for token in tokens:
        header_b64, payload_b64, sig_b64 = token.split(".")
        parts.append((f"{header_b64}.{payload_b64}".encode(), b64url_decode(sig_b64)))
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256

    def raw() -> None:
        for signing_input, signature in parts:
            public_key.verify(signature, signing_input, pkcs1, sha256())

    async def verify_only() -> None:
        for token in tokens:
            await verify_token(token, policy, key_sources, now)

    async def uncached() -> None:
        for view in views:
            await decide(view, policy, key_sources, now)

    # Sanity: every token must be allowed, or the benchmark measures refusals.
    for view in views[:5]:
        decision = await decide(view, policy, key_sources, now)
        if decision.outcome != "allowed" or decision.route is None:
            raise RuntimeError(f"benchmark token not allowed: {decision.record()}")

    samples: dict[str, list[float]] = {
        k: [] for k in ("raw_verify", "verify_token", "decide_uncached", "decide_cold",
                        "decide_warm")
    }  # fmt: skip
    hits = 0
    for _ in range(repeats):
        samples["raw_verify"].append(_batch(raw))
        samples["verify_token"].append(await _abatch(verify_only))
        samples["decide_uncached"].append(await _abatch(uncached))
        cache = TokenCache(max(n, 1))

        async def cold(cache: TokenCache = cache) -> None:
            for view in views:
                await decide(view, policy, key_sources, now, cache)

        async def warm(cache: TokenCache = cache) -> None:
            for view in views:
                await decide(view, policy, key_sources, now, cache)

        samples["decide_cold"].append(await _abatch(cold))
        before = cache.hits
        samples["decide_warm"].append(await _abatch(warm))
        hits += cache.hits - before
    results = {name: _stats(values, n) for name, values in samples.items()}
    results["warm_hit_ratio"] = round(hits / (n * repeats), 4)
    return results


def hook_flows(tokens: list[str]) -> list[Any]:
    """One test flow per token, as the benchmark policy's clients send it."""
    from mitmproxy.test import tflow, tutils

    out = []
    for token in tokens:
        flow = tflow.tflow(req=tutils.treq(host="api.bench.test", port=80, path=REQUEST_PATH))
        flow.request.headers["host"] = "api.bench.test"
        flow.request.headers["authorization"] = f"Bearer {token}"
        out.append(flow)
    return out


async def _measure_hook(setup: Setup, tokens: list[str], repeats: int) -> dict[str, float]:
    from mitmproxy.test import taddons

    from claimroute.mitm.addon import ClaimRoute

    policy_path = setup.write_policy(UPSTREAM, name="micro-policy.yaml")
    addon = ClaimRoute()
    samples: list[float] = []
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_path))

        def flows() -> list[Any]:
            return hook_flows(tokens)

        for flow in flows():  # first sight: fills the cache
            await addon.requestheaders(flow)
        for _ in range(repeats):
            batch = flows()

            async def run(batch: list[Any] = batch) -> None:
                for flow in batch:
                    await addon.requestheaders(flow)

            samples.append(await _abatch(run))
            record = batch[-1].metadata["claimroute"]
            if record.get("outcome") != "allowed" or record.get("cache") != "hit":
                raise RuntimeError(f"hook benchmark flow not a cache hit: {record}")
    return _stats(samples, len(tokens))


def run(setup: Setup, *, tokens: int = 500, repeats: int = 7) -> dict[str, Any]:
    """Run the micro-benchmark on the first `tokens` users' tokens; returns a JSON-able dict."""
    chosen = setup.tokens[:tokens]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = asyncio.run(_measure(setup, chosen, repeats))
        results["hook_warm"] = asyncio.run(_measure_hook(setup, chosen, repeats))
    raw = results["raw_verify"]["median_us"]
    results["config"] = {"tokens": len(chosen), "repeats": repeats, "alg": "RS256",
                         "key_bits": 2048}  # fmt: skip
    results["summary"] = {
        "raw_us": raw,
        "cold_us": results["decide_cold"]["median_us"],
        "warm_us": results["decide_warm"]["median_us"],
        "hook_warm_us": results["hook_warm"]["median_us"],
        "cold_over_raw": round(results["decide_cold"]["median_us"] / raw, 2) if raw else None,
        "uncached_us": results["decide_uncached"]["median_us"],
        "verify_token_us": results["verify_token"]["median_us"],
    }
    return results
