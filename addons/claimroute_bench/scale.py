"""Requests per second of each way to run the proxy, alternated in one run (`--only scale`).

(a) bare mitmdump (no addon), (b) mitmdump -s claimroute, (c) the lean gateway profile with
claimroute, (d) `claimroute proxy --workers N` (gateway workers behind HAProxy). All run side by
side in reverse mode in front of the same upstream and are loaded in turn, the order reversed
every round, so that drifting machine load hits all alike. Reported: medians over rounds, the
ratios c/b, c/a and d/c (of medians, and per round), each proxy's CPU per request, and what the
machine had: usable cores, load averages before and after, and the CPU other processes used
during the runs (a busy machine makes every figure, d most of all, unreliable).
"""

from __future__ import annotations

import statistics
from typing import Any

from claimroute_bench.loadgen import Job, LoadGenerator
from claimroute_bench.procstat import descendants, machine_info
from claimroute_bench.proxy_load import BARE_SCRIPT, BUSY_CORES, PROXY_OPTIONS, _run
from claimroute_bench.scenario import REQUEST_PATH, Setup
from claimroute_bench.upstream import Upstream
from claimroute_tools.lab import MitmdumpProcess
from claimroute_tools.lab.workerset import WorkerSetProcess

LABELS = {
    "a": "bare mitmdump",
    "b": "mitmdump + claimroute",
    "c": "gateway + claimroute",
    "d": "workers behind HAProxy",
}
# The targets, reported and never asserted.
TARGETS = {"c/b": 1.5, "c/a": 1.2, "d/c": 1.7}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def run(
    setup: Setup,
    *,
    rounds: int = 3,
    seconds: float = 5.0,
    concurrency: int = 16,
    workers: int = 2,
    loadgen_processes: int = 1,
    warmup: float = 1.0,
    progress: Any = None,
) -> dict[str, Any]:
    """Run the comparison; returns a JSON-able dict with `summary`."""
    say = progress or (lambda message: None)
    out: dict[str, Any] = {
        "config": {"rounds": rounds, "seconds": seconds, "concurrency": concurrency,
                   "workers": workers, "loadgen_processes": loadgen_processes,
                   "users": len(setup.tokens), "path": REQUEST_PATH, "labels": LABELS,
                   "mode": "reverse, connection_strategy=lazy, HTTP/1.1 keep-alive"},
        "machine_before": machine_info(),
    }  # fmt: skip
    with Upstream() as upstream, LoadGenerator(setup.tokens, loadgen_processes) as lg:
        policy = setup.write_policy(upstream.url)
        mode = f"reverse:{upstream.url}"
        gen_pids = {f"loadgen{i}": pid for i, pid in enumerate(lg.pids)}
        proxies = {
            "a": MitmdumpProcess(None, mode=mode, script=BARE_SCRIPT, options=PROXY_OPTIONS,
                                 profile="mitmdump"),
            "b": MitmdumpProcess(policy, mode=mode, options=PROXY_OPTIONS, profile="mitmdump"),
            "c": MitmdumpProcess(policy, mode=mode, options=PROXY_OPTIONS, profile="gateway"),
            "d": WorkerSetProcess(policy, workers, mode=mode, options=PROXY_OPTIONS),
        }  # fmt: skip
        try:
            for name, proc in proxies.items():
                say(f"starting ({name}) {LABELS[name]}")
                proc.start(timeout=120)
            for name, proc in proxies.items():
                say(f"warming ({name}): one request per user")
                url = f"{proc.proxy_url}{REQUEST_PATH}"
                lg.run(Job(url, concurrency, 60.0, 0.0, max_requests=len(setup.tokens)))
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in proxies}
            order = list(proxies)
            for index in range(rounds):
                for name in order if index % 2 == 0 else order[::-1]:
                    say(f"round {index + 1}/{rounds}: ({name}) {LABELS[name]}")
                    proc = proxies[name]
                    url = f"{proc.proxy_url}{REQUEST_PATH}"
                    own = [proc.pid, *descendants(proc.pid)] if name == "d" else [proc.pid]
                    pids = {f"proxy{i}": pid for i, pid in enumerate(own)}
                    pids.update({"upstream": upstream.pid, **gen_pids})
                    _, info = _run(lg, url, Job(url, concurrency, seconds, warmup), pids)
                    runs[name].append(info)
        finally:
            for proc in proxies.values():
                proc.stop()
    out["runs"] = runs
    out["machine_after"] = machine_info()
    out["summary"] = summarize(out)
    return out


def summarize(out: dict[str, Any]) -> dict[str, Any]:
    """Medians, ratios (of the medians, and per round) and the machine's state."""
    runs = out["runs"]
    rps = {name: _median([r["rps"] for r in group]) for name, group in runs.items()}
    summary: dict[str, Any] = {f"{name}_rps": value for name, value in rps.items()}
    for name, group in runs.items():
        summary[f"{name}_proxy_cpu_share"] = _median([r["proxy_cpu_share"] for r in group])
        cpu_ms = [r["proxy_cpu_share"] / r["rps"] * 1000 for r in group if r["rps"]]
        summary[f"{name}_cpu_ms_per_request"] = _median(cpu_ms)
    for pair in TARGETS:
        top, bottom = pair.split("/")
        if rps.get(top) and rps.get(bottom):
            summary[pair] = round(rps[top] / rps[bottom], 3)  # type: ignore[operator]
            summary[f"{pair} per round"] = [
                round(x["rps"] / y["rps"], 3)
                for x, y in zip(runs[top], runs[bottom], strict=False)
                if y["rps"]
            ]
    others = [r["cpu_share"].get("others", 0.0) for group in runs.values() for r in group]
    summary["others_cpu_share"] = _median(others)
    summary["machine_busy"] = (summary["others_cpu_share"] or 0.0) > BUSY_CORES
    summary["errors"] = sum(r["errors"] for group in runs.values() for r in group)
    summary["usable_cores"] = out["machine_before"]["usable_cores"]
    summary["loadavg_before"] = out["machine_before"]["loadavg"]
    summary["loadavg_after"] = out["machine_after"]["loadavg"]
    summary["targets"] = {
        pair: {"goal": f">= {goal}", "measured": summary.get(pair),
               "met": summary.get(pair) is not None and summary[pair] >= goal}
        for pair, goal in TARGETS.items()
    }  # fmt: skip
    return summary


def print_table(results: dict[str, Any] | None, console: Any) -> None:
    """The scale section's table and machine line (nothing when it did not run)."""
    if not results:
        return
    from rich.table import Table

    s = results["summary"]
    workers = results["config"]["workers"]
    table = Table(title=f"Proxy profiles, requests/s (medians of {results['config']['rounds']} "
                  "alternated rounds)")  # fmt: skip
    for column in ("", "req/s", "proxy CPU (cores)", "CPU ms / request"):
        table.add_column(column, justify="right")
    for name, label in LABELS.items():
        label = f"({name}) {label}" + (f" ({workers} workers)" if name == "d" else "")
        table.add_row(label, f"{s.get(f'{name}_rps') or 0:,.0f}",
                      f"{s.get(f'{name}_proxy_cpu_share') or 0:.2f}",
                      f"{s.get(f'{name}_cpu_ms_per_request') or 0:.3f}")  # fmt: skip
    console.print(table)
    ratios = ", ".join(
        f"{pair} {s.get(pair) or 0:.2f} (goal {row['goal']}, "
        f"per round {s.get(f'{pair} per round')})"
        for pair, row in s["targets"].items()
    )
    console.print(f"Ratios: {ratios}.")
    console.print(
        f"Machine: {s['usable_cores']} usable cores; load average {s['loadavg_before']} before, "
        f"{s['loadavg_after']} after; other processes used {s['others_cpu_share']} cores "
        f"(median) during the runs; errors {s['errors']}."
        + (" [yellow]Busy machine: figures unreliable.[/yellow]" if s["machine_busy"] else "")
    )
