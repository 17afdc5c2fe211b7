"""Memory: many distinct tokens through `decide` with the cache; the process must level off.

Run in a fresh interpreter (`python -m claimroute_bench.memory`), so that the RSS it reports
belongs to this test alone. Tokens are minted one at a time and dropped after use, so the only
thing that can accumulate is the cache. The provider here uses HS256 (same policy otherwise):
minting 100,000 RS256 tokens would take minutes, and the cache entries have the same shape.
Each token carries a `jti` and a `name`, so it is about as long as a typical access token.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
import warnings
from typing import Any

from claimroute.pipeline.decide import decide
from claimroute.pipeline.keysources import build_key_sources
from claimroute.pipeline.tokencache import DEFAULT_CACHE_SIZE, TokenCache
from claimroute.policy.load import load_policy
from claimroute_bench.micro import UPSTREAM, _view
from claimroute_bench.procstat import rss_bytes
from claimroute_bench.scenario import make_setup, user_claims


def _full_collection_ms(repeats: int = 3) -> float:
    """Median duration of a full collection: the loop pause a gen-2 collection would cause."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        gc.collect()
        samples.append((time.perf_counter() - start) * 1000)
    return sorted(samples)[len(samples) // 2]


async def _run(tokens: int, cache_size: int, checkpoints: int) -> dict[str, Any]:
    setup = make_setup(0, alg="HS256")
    policy = load_policy(setup.write_policy(UPSTREAM, alg="HS256"))
    key_sources = build_key_sources(policy)
    cache = TokenCache(cache_size)
    issuer = setup.issuer
    now = time.time()

    def token(index: int) -> str:
        claims = user_claims(index) | {"jti": f"{index:032x}", "name": f"Bench User {index}"}
        return issuer.mint(f"user-{index:06d}@corp.bench.test", claims, ttl=3600, now=now)

    # Warm up the interpreter's own caches before the baseline.
    for index in range(50):
        await decide(_view(token(-index - 1)), policy, key_sources, now, TokenCache(10))
    gc.collect()
    gc.freeze()  # as the addon does once mitmdump is running
    gc_empty = _full_collection_ms()
    tracked_empty = len(gc.get_objects())
    rss_start = rss_bytes()
    samples: list[dict[str, Any]] = []
    rss_full: int | None = None
    step = max(1, tokens // checkpoints)
    allowed = 0
    started = time.perf_counter()
    for index in range(tokens):
        decision = await decide(_view(token(index)), policy, key_sources, now, cache)
        allowed += decision.outcome == "allowed"
        if rss_full is None and len(cache) >= cache_size > 0:
            gc.collect()
            rss_full = rss_bytes()
        if (index + 1) % step == 0 or index + 1 == tokens:
            gc.collect()
            samples.append({"tokens": index + 1, "rss_mib": round(rss_bytes() / 2**20, 2),
                            "cache_size": len(cache)})  # fmt: skip
    elapsed = time.perf_counter() - started
    gc.collect()
    rss_end = rss_bytes()
    gc_full = _full_collection_ms()
    out: dict[str, Any] = {
        "tokens": tokens,
        "allowed": allowed,
        "cache_bound": cache_size,
        "cache_size_end": len(cache),
        "cache_stats": cache.stats(),
        "rss_start_mib": round(rss_start / 2**20, 2),
        "rss_end_mib": round(rss_end / 2**20, 2),
        "rss_growth_mib": round((rss_end - rss_start) / 2**20, 2),
        "seconds": round(elapsed, 1),
        "gc_full_collection_ms_empty_cache": round(gc_empty, 2),
        "gc_full_collection_ms_full_cache": round(gc_full, 2),
        "gc_tracked_objects_full_cache": len(gc.get_objects()),
        # What each cached token adds to the collector's work (tracked objects, all included).
        "gc_tracked_objects_per_entry": round(
            (len(gc.get_objects()) - tracked_empty) / max(1, len(cache)), 3
        ),
        "samples": samples,
        "alg": "HS256",
    }
    if rss_full is not None:
        out["rss_at_cache_full_mib"] = round(rss_full / 2**20, 2)
        out["rss_growth_after_full_mib"] = round((rss_end - rss_full) / 2**20, 2)
        out["bytes_per_entry"] = round((rss_full - rss_start) / max(1, cache_size))
    return out


def run(tokens: int = 100_000, cache_size: int = DEFAULT_CACHE_SIZE, checkpoints: int = 10) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return asyncio.run(_run(tokens, cache_size, checkpoints))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--cache-size", type=int, default=DEFAULT_CACHE_SIZE)
    parser.add_argument("--checkpoints", type=int, default=10)
    args = parser.parse_args(argv)
    json.dump(run(args.tokens, args.cache_size, args.checkpoints), sys.stdout)


if __name__ == "__main__":
    main()
