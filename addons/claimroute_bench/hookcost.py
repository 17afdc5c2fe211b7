"""Where a loaded mitmproxy spends its time per request: per addon and per event.

Loaded as the first `-s` script of a mitmdump (or run inside the gateway profile), it wraps
`AddonManager.trigger_event` and `invoke_addon` so that every event is timed as a whole and per
addon (the addon's own hook, and the cost of asking an addon that has no hook for that event:
mitmproxy walks every addon of the chain, and its children, for every event). At `done` it writes
a JSON file (`CLAIMROUTE_HOOKCOST_OUT`) with, per event: count, total µs, µs spent inside hooks,
and per addon: calls and µs. `measure()` drives one proxy profile with the load generator and reads
the file back; `python -m claimroute_bench.hookcost` prints the table for each profile (the
figures include the wrapper's own cost, a few µs per hook: compare profiles, not absolutes).

An async hook's time includes what it awaits; the claimroute hook awaits nothing on a warm
cache, so its figure is its CPU time.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from typing import Any

from mitmproxy import addonmanager

OUT_ENV = "CLAIMROUTE_HOOKCOST_OUT"

_events: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # count, total, in hooks
_addons: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])  # calls, µs
_original_trigger = addonmanager.AddonManager.trigger_event
_original_invoke = addonmanager.AddonManager.invoke_addon


async def _timed_trigger(self: addonmanager.AddonManager, event: Any) -> None:
    started = time.perf_counter()
    await _original_trigger(self, event)
    row = _events[event.name]
    row[0] += 1
    row[1] += (time.perf_counter() - started) * 1e6


async def _timed_invoke(self: addonmanager.AddonManager, addon: Any, event: Any) -> None:
    for child, func in self._iter_hooks(addon, event):
        started = time.perf_counter()
        result = func(*event.args())
        if result is not None and hasattr(result, "__await__"):
            await result
        spent = (time.perf_counter() - started) * 1e6
        row = _addons[(type(child).__name__, event.name)]
        row[0] += 1
        row[1] += spent
        _events[event.name][2] += spent


def install() -> None:
    """Wrap the addon manager (idempotent per process)."""
    addonmanager.AddonManager.trigger_event = _timed_trigger  # type: ignore[method-assign]
    addonmanager.AddonManager.invoke_addon = _timed_invoke  # type: ignore[method-assign]


def snapshot() -> dict[str, Any]:
    """The figures so far, JSON-able."""
    return {
        "events": {
            name: {"count": int(c), "total_us": round(t, 1), "in_hooks_us": round(h, 1)}
            for name, (c, t, h) in _events.items()
        },
        "hooks": [
            {"addon": addon, "event": event, "calls": int(calls), "us": round(us, 1)}
            for (addon, event), (calls, us) in sorted(_addons.items(), key=lambda kv: -kv[1][1])
        ],
    }


class HookCost:
    """The mitmdump-script face: install at load, write the figures at done."""

    def done(self) -> None:
        path = os.environ.get(OUT_ENV)
        if path:
            with open(path, "w") as handle:
                json.dump(snapshot(), handle)


def measure(profile: str, users: int = 200, seconds: float = 5.0, concurrency: int = 16) -> dict:
    """Drive one proxy profile ("mitmdump" or "gateway", with claimroute) under load with this
    script loaded first; the figures per request (µs), and the requests per second."""
    import tempfile
    from pathlib import Path

    from claimroute_bench.loadgen import Job, LoadGenerator
    from claimroute_bench.scenario import REQUEST_PATH, make_setup
    from claimroute_bench.upstream import Upstream
    from claimroute_tools.lab.mitmdump import ADDON_SCRIPT, MitmdumpProcess

    setup = make_setup(users)
    out = Path(tempfile.mkdtemp(prefix="claimroute-hookcost-")) / "hookcost.json"
    with Upstream() as upstream, LoadGenerator(setup.tokens, 1) as lg:
        policy = setup.write_policy(upstream.url)
        proxy = MitmdumpProcess(
            policy, mode=f"reverse:{upstream.url}", script=Path(__file__),
            extra_args=["-s", str(ADDON_SCRIPT)], options={"connection_strategy": "lazy"},
            profile=profile, env={OUT_ENV: str(out)},
        )  # fmt: skip
        with proxy:
            url = f"{proxy.proxy_url}{REQUEST_PATH}"
            lg.run(Job(url, concurrency, 60, 0, max_requests=users))
            result = lg.run(Job(url, concurrency, seconds, 0.5))
    data = json.loads(out.read_text())
    requests = data["events"]["requestheaders"]["count"] or 1
    events = {name: {"per_request_us": round(e["total_us"] / requests, 1),
                     "in_hooks_us": round(e["in_hooks_us"] / requests, 1)}
              for name, e in data["events"].items() if e["count"] >= requests}  # fmt: skip
    hooks = [{**h, "per_request_us": round(h["us"] / requests, 1)} for h in data["hooks"]
             if h["calls"] >= requests]  # fmt: skip
    return {"profile": profile, "rps": round(result.rps, 1), "requests": requests,
            "dispatch_us_per_request": round(sum(e["per_request_us"] for e in events.values()), 1),
            "events": events, "hooks": hooks}  # fmt: skip


def main() -> None:
    """`python -m claimroute_bench.hookcost`: both profiles, one after the other."""
    for profile in ("mitmdump", "gateway"):
        found = measure(profile)
        print(f"{profile}: {found['rps']} req/s, event dispatch "
              f"{found['dispatch_us_per_request']} µs per request")  # fmt: skip
        for name, row in found["events"].items():
            print(f"  {name:16s} {row['per_request_us']:7.1f} µs (in hooks {row['in_hooks_us']})")
        for hook in found["hooks"][:12]:
            print(f"  {hook['addon']:>16s}.{hook['event']:<16s} {hook['per_request_us']:7.1f} µs")


if __name__.startswith("__mitmproxy_script__"):  # loaded by mitmproxy with -s
    install()
    addons = [HookCost()]
elif __name__ == "__main__":
    main()
