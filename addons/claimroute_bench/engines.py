"""The highest request rate each scenario traffic engine sustains against a bare upstream.

Both engines (`traffic.drive`, aiohttp in this process, and `drive_locust`, a Locust master
and local workers) send the same plan (the sticky-ten-percent library scenario's users and
mix, `GET /`, without tokens) straight to the benchmark upstream (an aiohttp server in its
own process), with no proxy in between: through mitmdump, the proxy's own ceiling (a few
hundred to a few thousand requests a second) would be both engines'. The
rate is the requests answered divided by the time from the first request sent to the last
answer, so Locust's process start-up (reported apart) does not count against it.

    uv run just bench --only engines
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from rich.console import Console

from claimroute_bench.procstat import process_cpu
from claimroute_bench.upstream import Upstream
from claimroute_tools.scenario.cli import scenario_library
from claimroute_tools.scenario.engines.locust_engine import LocustOptions, drive_locust
from claimroute_tools.scenario.model import Scenario, load_scenario
from claimroute_tools.scenario.traffic import (
    ProgressReporter,
    TrafficRun,
    build_users,
    drive,
    plan_requests,
)

TIME_BUDGET = 300.0  # seconds per engine run, at most


def _scenario(requests: int, concurrency: int) -> Scenario:
    # A library scenario for its users, mix and limits; its world is never started: the
    # engines are pointed at the bench upstream, with no proxy and no tokens.
    path = scenario_library() / "sticky-ten-percent.yaml"
    scenario = load_scenario(path).with_overrides(requests=requests, concurrency=concurrency)
    traffic = dataclasses.replace(scenario.traffic, time_budget=TIME_BUDGET)
    return dataclasses.replace(scenario, traffic=traffic)


def _rate(run: TrafficRun) -> dict[str, Any]:
    answered = [r for r in run.results if r.status is not None]
    if not answered:
        return {"requests": 0, "rps": None, "errors": len(run.results)}
    span = max(r.ended for r in answered) - min(r.started for r in answered)
    return {
        "requests": len(answered),
        "errors": len(run.results) - len(answered),
        "statuses": sorted({r.status for r in answered if r.status is not None}),
        "send_seconds": round(span, 3),
        "rps": round(len(answered) / span, 1) if span > 0 else None,
        "wall_seconds": round(run.duration, 3),  # start-up included
        "p50_ms": round(statistics.median(r.latency_ms for r in answered), 3),
        "incomplete": run.incomplete,
    }


def _engine_cpu() -> float:
    """CPU seconds of this process and of its children that have exited (Locust's)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def _noop(index: int) -> int:
    return 0


async def _drive(engine: str, upstream: str, requests: int, concurrency: int,
                 workers: int) -> TrafficRun:  # fmt: skip
    scenario = _scenario(requests, concurrency)
    users = build_users(scenario.users)  # no tokens minted: the upstream does not check
    plan = plan_requests(users, scenario.traffic.mix, requests, scenario.traffic.seed)
    quiet = Console(file=io.StringIO())
    with ProgressReporter(len(plan), quiet, enabled=False) as progress:
        if engine == "builtin":
            # proxy_url goes to aiohttp's `proxy=`: None sends straight to the upstream.
            return await drive(
                scenario, users, plan, proxy_url=cast(str, None), target_url=upstream,
                run_steps=_noop, boundaries=[], progress=progress,
            )  # fmt: skip
        folder = Path(tempfile.mkdtemp(prefix="claimroute-bench-locust-"))
        return await drive_locust(
            scenario, users, plan, proxy_url="", target_url=upstream, run_steps=_noop,
            boundaries=[], progress=progress, options=LocustOptions(workers=workers),
            run_dir=folder,
        )  # fmt: skip


def run(
    *,
    requests: int = 20_000,
    concurrency: int = 64,
    locust_workers: int = 2,
    progress: Any = None,
) -> dict[str, Any]:
    """Each engine sends `requests` GETs at `concurrency` to a bare upstream; their rates."""
    say = progress or (lambda message: None)
    out: dict[str, Any] = {
        "config": {"requests": requests, "concurrency": concurrency,
                   "locust_workers": locust_workers, "target": "bare aiohttp upstream, no proxy"},
    }  # fmt: skip
    with Upstream() as upstream:
        for engine in ("builtin", "locust"):
            say(f"engines: {engine}, {requests:,} requests at concurrency {concurrency}")
            cpu_before, engine_before = process_cpu(upstream.pid), _engine_cpu()
            clock = time.perf_counter()
            traffic = asyncio.run(
                _drive(engine, upstream.url, requests, concurrency, locust_workers)
            )
            elapsed = time.perf_counter() - clock
            upstream_cpu = process_cpu(upstream.pid) - cpu_before
            engine_cpu = _engine_cpu() - engine_before
            rate = _rate(traffic)
            out[engine] = rate | {
                "upstream_cpu_share": round(upstream_cpu / elapsed, 2) if elapsed else None,
                # This process (built-in) or this process plus the Locust master and workers
                # (children, counted once they exited), start-up included.
                "engine_cpu_seconds": round(engine_cpu, 2),
                "requests_per_engine_cpu_second": round(rate["requests"] / engine_cpu)
                if engine_cpu > 0 else None,
            }  # fmt: skip
    builtin, locust = out["builtin"].get("rps"), out["locust"].get("rps")
    out["summary"] = {
        "builtin_rps": builtin,
        "locust_rps": locust,
        "locust_over_builtin": round(locust / builtin, 2) if builtin and locust else None,
        "locust_workers": locust_workers,
        "cpus": os.cpu_count(),
        "builtin_requests_per_cpu_second": out["builtin"].get("requests_per_engine_cpu_second"),
        "locust_requests_per_cpu_second": out["locust"].get("requests_per_engine_cpu_second"),
    }
    return out
