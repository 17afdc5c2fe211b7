"""What the Prometheus metrics cost per request, and what a scrape costs.

- `record`: `ClaimRouteMetrics.record` plus `observe_request`, the two calls the addon makes
  per request, on real decisions (a warm allowed-and-routed token: the common case).
- `hook_warm_on` / `hook_warm_off`: the `requestheaders` hook, cache warm (as `micro`'s
  `hook_warm`), with the addon's metrics, then with them replaced by calls that do nothing;
  the difference is the metrics' share of the hook (noisier than `record`: two medians).
- `scrape`: building the whole text exposition (`claimroute.metrics`, or one GET /metrics),
  with the counts this run left behind.

Per-request figures are per call: a batch of N calls is timed and divided by N, several times,
and the median batch is reported (as in `micro`).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import warnings
from typing import Any

from claimroute.mitm.metrics import ClaimRouteMetrics
from claimroute.pipeline.decide import Decision, decide
from claimroute.pipeline.keysources import build_key_sources
from claimroute.pipeline.tokencache import TokenCache
from claimroute.policy.load import load_policy
from claimroute_bench.micro import UPSTREAM, _abatch, _batch, _stats, _view, hook_flows
from claimroute_bench.scenario import Setup


class _NoMetrics:
    """The addon's metrics replaced by calls that do nothing (the "off" side of the A/B)."""

    def record(self, decision: Decision) -> None:
        pass

    def observe_request(self, seconds: float) -> None:
        pass


async def _decisions(setup: Setup, tokens: list[str]) -> list[Decision]:
    policy = load_policy(setup.write_policy(UPSTREAM, name="metrics-policy.yaml"))
    key_sources = build_key_sources(policy)
    cache = TokenCache(len(tokens) + 1)
    now = time.time()
    out = []
    for token in tokens:
        await decide(_view(token), policy, key_sources, now, cache)  # first sight
    for token in tokens:
        out.append(await decide(_view(token), policy, key_sources, now, cache))
    return out


async def _hook(setup: Setup, tokens: list[str], repeats: int) -> dict[str, dict[str, float]]:
    from mitmproxy.test import taddons

    from claimroute.mitm.addon import ClaimRoute

    policy_path = setup.write_policy(UPSTREAM, name="metrics-policy.yaml")
    addon = ClaimRoute()
    real = addon.metrics
    samples: dict[str, list[float]] = {"hook_warm_on": [], "hook_warm_off": []}
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_path))

        def flows() -> list[Any]:
            return hook_flows(tokens)

        for flow in flows():  # first sight: fills the cache
            await addon.requestheaders(flow)
        for _ in range(repeats):
            # Alternate on and off within each repeat, so drift hits both sides alike.
            for key, metrics in (("hook_warm_on", real), ("hook_warm_off", _NoMetrics())):
                addon.metrics = metrics  # type: ignore[assignment]
                batch = flows()

                async def run(batch: list[Any] = batch) -> None:
                    for flow in batch:
                        await addon.requestheaders(flow)

                samples[key].append(await _abatch(run))
        addon.metrics = real
    return {key: _stats(values, len(tokens)) for key, values in samples.items()}


def run(setup: Setup, *, tokens: int = 500, repeats: int = 7) -> dict[str, Any]:
    """Run the metrics benchmark on the first `tokens` users' tokens; a JSON-able dict."""
    chosen = setup.tokens[:tokens]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decisions = asyncio.run(_decisions(setup, chosen))
        hook = asyncio.run(_hook(setup, chosen, repeats))
    if not all(d.outcome == "allowed" and d.route is not None for d in decisions):
        raise RuntimeError("metrics benchmark: a token was not allowed and routed")
    metrics = ClaimRouteMetrics()
    seconds = [0.00004 + i * 1e-7 for i in range(len(decisions))]

    def record() -> None:
        for decision, spent in zip(decisions, seconds, strict=True):
            metrics.record(decision)
            metrics.observe_request(spent)

    record()  # warm: every series exists
    record_samples = [_batch(record) for _ in range(repeats)]
    scrape_samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        text = metrics.text()
        scrape_samples.append((time.perf_counter_ns() - start) / 1e6)
    results: dict[str, Any] = {
        "record": _stats(record_samples, len(decisions)),
        **hook,
        "scrape_ms": round(statistics.median(scrape_samples), 3),
        "scrape_bytes": len(text),
        "config": {"tokens": len(chosen), "repeats": repeats},
    }
    on, off = hook["hook_warm_on"]["median_us"], hook["hook_warm_off"]["median_us"]
    results["summary"] = {
        "record_us": results["record"]["median_us"],
        "hook_warm_on_us": on,
        "hook_warm_off_us": off,
        "hook_added_us": round(on - off, 2),
        "scrape_ms": results["scrape_ms"],
    }
    return results
