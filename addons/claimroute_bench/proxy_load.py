"""Throughput and latency: (a) bare mitmdump vs (b) mitmdump + claimroute, alternated.

Both proxies run side by side for the whole measurement, in reverse mode in front of the same
upstream with `connection_strategy=lazy`, and are loaded in turn (a b, b a, a b, ...) so that
drifting machine load hits both alike. The load generator first runs against the bare upstream
to show its own capacity; during every run the CPU of the proxy, of the generator and of the
rest of the machine is recorded, which shows which process was the bottleneck.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from claimroute_bench.loadgen import Job, LoadGenerator, LoadResult
from claimroute_bench.procstat import CpuWindow
from claimroute_bench.scenario import REQUEST_PATH, Setup
from claimroute_bench.upstream import Upstream
from claimroute_tools.lab import MitmdumpProcess

BARE_SCRIPT = Path(__file__).resolve().parent / "bare.py"
PROXY_OPTIONS = {"connection_strategy": "lazy"}
# Other processes using more than this many cores during the runs make the figures unreliable.
BUSY_CORES = 0.25


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _run(
    lg: LoadGenerator, url: str, job: Job, pids: dict[str, int | None]
) -> tuple[LoadResult, dict[str, Any]]:
    started = time.monotonic()
    with CpuWindow(pids) as cpu:
        result = lg.run(Job(url, job.concurrency, job.duration, job.warmup))
    wall = time.monotonic() - started
    info = result.summary()
    info["cpu_share"] = {name: round(used / wall, 3) for name, used in cpu.used.items()}
    info["cpu_share"]["others"] = round(cpu.others() / wall, 3)
    # "proxy", or "proxy0", "proxy1", ... for a proxy made of several processes (workers).
    proxy_cpu = sum(used for name, used in cpu.used.items() if name.startswith("proxy"))
    info["proxy_cpu_share"] = round(proxy_cpu / wall, 3)
    total = result.completed
    info["proxy_cpu_ms_per_request"] = round(proxy_cpu / total * 1000, 4) if total else None
    return result, info


def run(
    setup: Setup,
    *,
    rounds: int = 3,
    seconds: float = 5.0,
    concurrency: int = 16,
    latency_rounds: int = 2,
    latency_seconds: float = 3.0,
    loadgen_processes: int = 1,
    warmup: float = 1.0,
    progress: Any = None,
) -> dict[str, Any]:
    """Run the comparison; returns a JSON-able dict (see `summarize`)."""
    say = progress or (lambda message: None)
    out: dict[str, Any] = {
        "config": {
            "rounds": rounds, "seconds": seconds, "concurrency": concurrency,
            "latency_rounds": latency_rounds, "latency_seconds": latency_seconds,
            "latency_concurrency": 1, "loadgen_processes": loadgen_processes,
            "warmup_seconds": warmup, "users": len(setup.tokens), "path": REQUEST_PATH,
            "mode": "reverse, connection_strategy=lazy, HTTP/1.1 keep-alive",
        },
    }  # fmt: skip
    with Upstream() as upstream, LoadGenerator(setup.tokens, loadgen_processes) as lg:
        policy = setup.write_policy(upstream.url)
        target = upstream.url + REQUEST_PATH
        gen_pids = {f"loadgen{i}": pid for i, pid in enumerate(lg.pids)}

        say("load generator against the bare upstream")
        pids = {"upstream": upstream.pid, **gen_pids}
        _, info = _run(lg, target, Job(target, concurrency, seconds, warmup), pids)
        out["direct"] = info

        mode = f"reverse:{upstream.url}"
        bare = MitmdumpProcess(None, mode=mode, script=BARE_SCRIPT, options=PROXY_OPTIONS)
        addon = MitmdumpProcess(policy, mode=mode, options=PROXY_OPTIONS)
        with bare, addon:
            proxies = {"a": bare, "b": addon}
            for name, proc in proxies.items():
                # Every user's token once through each proxy: b's cache is warm from here on.
                say(f"warming {name}: one request per user")
                url = f"{proc.proxy_url}{REQUEST_PATH}"
                users = len(setup.tokens)
                lg.run(Job(url, concurrency, 60.0, 0.0, max_requests=users))

            def alternate(
                count: int, label: str, job_for: Callable[[str], Job]
            ) -> dict[str, list[dict[str, Any]]]:
                """`count` rounds of a and b, their order swapped every round."""
                results: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
                for index in range(count):
                    for name in ("a", "b") if index % 2 == 0 else ("b", "a"):
                        say(f"{label}round {index + 1}/{count}: {name}")
                        proc = proxies[name]
                        url = f"{proc.proxy_url}{REQUEST_PATH}"
                        pids = {"proxy": proc.pid, "upstream": upstream.pid, **gen_pids}
                        _, info = _run(lg, url, job_for(url), pids)
                        results[name].append(info)
                return results

            runs = alternate(rounds, "", lambda url: Job(url, concurrency, seconds, warmup))
            latency = alternate(
                latency_rounds,
                "latency ",
                lambda url: Job(url, 1, latency_seconds, min(warmup, 0.5)),
            )
            out["addon_errors_logged"] = sum(
                1 for line in addon.lines if "Addon error" in line or "internal error" in line
            )
        out["runs"] = runs
        out["latency_runs"] = latency
    out["summary"] = summarize(out)
    return out


def summarize(out: dict[str, Any]) -> dict[str, Any]:
    """Medians over rounds, the b/a ratio, and the latency b adds."""
    runs, latency = out["runs"], out["latency_runs"]

    def med(group: list[dict[str, Any]], key: str) -> float:
        return _median([run[key] for run in group if run.get(key) is not None])

    def med_cpu(group: list[dict[str, Any]], who: str) -> float:
        return _median([run["cpu_share"].get(who, 0.0) for run in group])

    a_rps, b_rps = med(runs["a"], "rps"), med(runs["b"], "rps")
    ratios = [b["rps"] / a["rps"] for a, b in zip(runs["a"], runs["b"], strict=False) if a["rps"]]
    summary = {
        "a_rps": round(a_rps, 1),
        "b_rps": round(b_rps, 1),
        "ratio": round(b_rps / a_rps, 3) if a_rps else None,
        "ratio_per_round": [round(r, 3) for r in ratios],
        "a_p50_ms": med(runs["a"], "p50_ms"),
        "b_p50_ms": med(runs["b"], "p50_ms"),
        "a_p99_ms": med(runs["a"], "p99_ms"),
        "b_p99_ms": med(runs["b"], "p99_ms"),
        "a_cpu_ms_per_request": med(runs["a"], "proxy_cpu_ms_per_request"),
        "b_cpu_ms_per_request": med(runs["b"], "proxy_cpu_ms_per_request"),
        "a_proxy_cpu_share": med_cpu(runs["a"], "proxy"),
        "b_proxy_cpu_share": med_cpu(runs["b"], "proxy"),
        "loadgen_cpu_share": max(
            sum(v for k, v in run["cpu_share"].items() if k.startswith("loadgen"))
            for run in runs["a"] + runs["b"]
        ),
        "others_cpu_share": med_cpu(runs["a"] + runs["b"], "others"),
        "direct_rps": out["direct"]["rps"],
        "direct_loadgen_cpu_share": sum(
            v for k, v in out["direct"]["cpu_share"].items() if k.startswith("loadgen")
        ),
        "errors": sum(run["errors"] for run in runs["a"] + runs["b"]),
    }
    summary["p50_added_ms_saturated"] = round(summary["b_p50_ms"] - summary["a_p50_ms"], 3)
    summary["p99_added_ms_saturated"] = round(summary["b_p99_ms"] - summary["a_p99_ms"], 3)
    summary["addon_cpu_us_per_request"] = round(
        (summary["b_cpu_ms_per_request"] - summary["a_cpu_ms_per_request"]) * 1000, 1
    )
    if latency["a"] and latency["b"]:
        for key in ("p50_ms", "p99_ms"):
            a_val, b_val = med(latency["a"], key), med(latency["b"], key)
            summary[f"c1_a_{key}"] = a_val
            summary[f"c1_b_{key}"] = b_val
            summary[f"c1_{key.replace('_ms', '')}_added_ms"] = round(b_val - a_val, 3)
    summary["direct_over_proxy"] = round(summary["direct_rps"] / a_rps, 2) if a_rps else None
    # Throughput if each proxy had a whole core: robust to other jobs taking CPU away.
    b_cpu = summary["b_cpu_ms_per_request"]
    summary["cpu_ratio"] = round(summary["a_cpu_ms_per_request"] / b_cpu, 3) if b_cpu else None
    summary["machine_busy"] = summary["others_cpu_share"] > BUSY_CORES
    return summary
