"""`python -m claimroute_bench` (`just bench`): every benchmark, a table, and a JSON file.

uv run just bench            # full run (about 3 minutes)
uv run just bench --quick    # a short run to check that everything works
uv run just bench --only micro --only memory --json /tmp/bench.json
uv run just bench --only policy   # only the policy load time (1,000 rules), seconds
uv run just bench --only metrics  # what the Prometheus metrics cost per request (µs)
uv run just bench --only scale    # bare / claimroute / gateway profile / 2 workers, req/s
uv run just bench --only stalls --stall-tokens 100000   # loop stalls, 100,000 active tokens
uv run just bench --only engines  # scenario traffic engines: built-in vs Locust, req/s
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from claimroute_bench import engines as engines_bench
from claimroute_bench import large, metricscost, micro, policyload, proxy_load, stalls
from claimroute_bench import scale as scale_bench
from claimroute_bench.scenario import DEFAULT_USERS, make_setup

SECTIONS = ("proxy", "scale", "micro", "metrics", "memory", "stalls", "large", "policy",
            "engines")  # fmt: skip
DEFAULT_JSON = Path("reports") / "bench-results.json"

# The targets; the benchmark reports against them and never fails on them.
TARGETS = {
    "throughput_ratio_min": 0.95,
    "warm_us_max": 10.0,
    "cold_over_raw_max": 1.5,
    "loop_block_ms_max": 5.0,
}
# The raw RS256 verify on the machines the figures come from (µs).
REFERENCE_RAW_US = 22.0


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for name in ("mitmproxy", "joserfc", "cryptography", "aiohttp"):
        try:
            out[name] = version(name)
        except Exception:  # a missing distribution is not worth failing the run for
            out[name] = "?"
    return out


def _machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpus": os.cpu_count(),
        "loadavg_1m": round(load[0], 2),
        "platform": platform.platform(),
    }


def _run_memory(tokens: int, cache_size: int) -> dict[str, Any]:
    # A fresh interpreter, so that the RSS belongs to this measurement alone.
    command = [sys.executable, "-m", "claimroute_bench.memory", "--tokens", str(tokens),
               "--cache-size", str(cache_size)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory benchmark failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return "-"
    return "[green]met[/green]" if ok else "[red]missed[/red]"


def _tables(results: dict[str, Any], console: Console) -> None:
    proxy = results.get("proxy", {}).get("summary")
    if proxy:
        table = Table(title="Proxy: (a) bare mitmdump vs (b) mitmdump + claimroute (medians)")
        for column in ("", "(a) bare", "(b) claimroute", "b - a / ratio"):
            table.add_column(column, justify="right")
        table.add_row("requests/s", _fmt(proxy["a_rps"]), _fmt(proxy["b_rps"]),
                      f"ratio {_fmt(proxy['ratio'], 3)}")  # fmt: skip
        table.add_row("requests/s per CPU core", _fmt(1000 / proxy["a_cpu_ms_per_request"]),
                      _fmt(1000 / proxy["b_cpu_ms_per_request"]),
                      f"ratio {_fmt(proxy['cpu_ratio'], 3)}")  # fmt: skip
        table.add_row(
            "p50 / p99 ms, c=1",
            f"{_fmt(proxy.get('c1_a_p50_ms'), 2)} / {_fmt(proxy.get('c1_a_p99_ms'), 2)}",
            f"{_fmt(proxy.get('c1_b_p50_ms'), 2)} / {_fmt(proxy.get('c1_b_p99_ms'), 2)}",
            f"{proxy.get('c1_p50_added_ms', 0):+.2f} / {proxy.get('c1_p99_added_ms', 0):+.2f}",
        )
        c = results["proxy"]["config"]["concurrency"]
        table.add_row(
            f"p50 / p99 ms, c={c}",
            f"{_fmt(proxy['a_p50_ms'], 2)} / {_fmt(proxy['a_p99_ms'], 2)}",
            f"{_fmt(proxy['b_p50_ms'], 2)} / {_fmt(proxy['b_p99_ms'], 2)}",
            f"{proxy['p50_added_ms_saturated']:+.2f} / {proxy['p99_added_ms_saturated']:+.2f}",
        )
        table.add_row(
            "proxy CPU ms / request",
            _fmt(proxy["a_cpu_ms_per_request"], 3), _fmt(proxy["b_cpu_ms_per_request"], 3),
            f"{proxy['addon_cpu_us_per_request']:+.0f} µs",
        )  # fmt: skip
        table.add_row("proxy CPU (cores)", _fmt(proxy["a_proxy_cpu_share"], 2),
                      _fmt(proxy["b_proxy_cpu_share"], 2), "")  # fmt: skip
        console.print(table)
        console.print(
            f"Load generator: {_fmt(proxy['direct_rps'])} req/s against the bare upstream "
            f"({_fmt(proxy['direct_over_proxy'], 1)}x what bare mitmdump served) using "
            f"{_fmt(proxy['direct_loadgen_cpu_share'], 2)} cores; during the proxy runs it used "
            f"at most {_fmt(proxy['loadgen_cpu_share'], 2)} cores. Other processes on the "
            f"machine: {_fmt(proxy['others_cpu_share'], 2)} cores (median). "
            f"Errors: {proxy['errors']}."
        )
        if proxy.get("machine_busy"):
            console.print(
                "[yellow]Other jobs used CPU during the proxy runs: these figures are not "
                "reliable; run again on a quiet machine.[/yellow]"
            )
    scale_bench.print_table(results.get("scale"), console)
    m = results.get("micro", {}).get("summary")
    if m:
        table = Table(title="Decision path per token (median µs, RS256 2048)")
        table.add_column("path")
        table.add_column("µs", justify="right")
        table.add_column("vs raw", justify="right")
        raw = m["raw_us"]
        rows = [
            ("raw cryptography RSA verify", raw),
            ("verify_token alone", m["verify_token_us"]),
            ("decide, no cache", m["uncached_us"]),
            ("decide, cold (first sight)", m["cold_us"]),
            ("decide, warm (cache hit)", m["warm_us"]),
            ("requestheaders hook, warm", m["hook_warm_us"]),
        ]
        for name, value in rows:
            table.add_row(name, _fmt(value, 2), f"{value / raw:.2f}x" if raw else "-")
        console.print(table)
    mc = results.get("metrics", {}).get("summary")
    if mc:
        console.print(
            f"Metrics: recording one request costs {_fmt(mc['record_us'], 2)} µs (median); "
            f"the warm requestheaders hook takes {_fmt(mc['hook_warm_on_us'], 2)} µs with "
            f"metrics, {_fmt(mc['hook_warm_off_us'], 2)} µs without "
            f"({mc['hook_added_us']:+.2f} µs); a scrape takes {_fmt(mc['scrape_ms'], 2)} ms."
        )
    mem = results.get("memory")
    if mem:
        console.print(
            f"Memory: {mem['tokens']:,} distinct tokens through decide, cache bound "
            f"{mem['cache_bound']:,}: cache ends at {mem['cache_size_end']:,}; RSS "
            f"{mem['rss_start_mib']} -> {mem.get('rss_at_cache_full_mib', '-')} (cache full) -> "
            f"{mem['rss_end_mib']} MiB; growth after the cache filled "
            f"{mem.get('rss_growth_after_full_mib', '-')} MiB; ~{mem.get('bytes_per_entry', '-')} "
            f"bytes per entry; a full GC takes {mem['gc_full_collection_ms_full_cache']} ms with "
            f"the cache full ({mem['gc_full_collection_ms_empty_cache']} ms empty), "
            f"{mem.get('gc_tracked_objects_per_entry', '-')} GC-tracked objects per entry."
        )
    scale = results.get("memory_gc_at_scale")
    if scale:
        console.print(
            f"Full GC with {scale['cache_size_end']:,} cached tokens: "
            f"{scale['gc_full_collection_ms_full_cache']} ms "
            f"({scale.get('gc_tracked_objects_per_entry', '-')} GC-tracked objects per entry)."
        )
    st = results.get("stalls")
    if st:
        table = Table(title="Event loop inside mitmdump under load: longest callback (ms)")
        for column in ("run", "longest", "by", "addon's own tasks", "longest GC", "req/s"):
            table.add_column(column, justify="right")
        labels = {
            "bare": "bare mitmdump",
            "addon": "claimroute, steady",
            "policy_reload": f"policy reloads ({st['policy_reload'].get('reloads_applied')})",
            "jwks_refresh": f"JWKS refreshes ({st['jwks_refresh'].get('fetches')})",
        }
        for key, label in labels.items():
            row = st[key]
            table.add_row(
                label, _fmt(row.get("max_block_ms"), 2), str(row.get("max_block_by", "-")),
                _fmt(row.get("addon_task_max_block_ms"), 2)
                + (f" {row['addon_task_max_block_by']}" if row.get("addon_task_max_block_by")
                   not in (None, "-") else ""),
                _fmt(row.get("gc_max_ms"), 2), _fmt(row.get("rps")),
            )  # fmt: skip
        console.print(table)
    _scale_stall_lines(results, console)
    big = results.get("large", {}).get("summary")
    if big:
        table = Table(title="Large requests, one at a time (median ms)")
        for column in ("request", "(a) bare", "(b) claimroute", "b - a"):
            table.add_column(column, justify="right")
        for kind, row in big.items():
            table.add_row(kind, _fmt(row["a_ms"], 2), _fmt(row["b_ms"], 2),
                          f"{row['added_ms']:+.2f}")  # fmt: skip
        console.print(table)
    targets = results.get("targets")
    if targets:
        table = Table(title="Targets (reported, not asserted)")
        for column in ("target", "goal", "measured", ""):
            table.add_column(column)
        for row in targets:
            table.add_row(row["name"], row["goal"], row["measured"], _verdict(row["met"]))
        console.print(table)


def _scale_stall_lines(results: dict[str, Any], console: Console) -> None:
    """The stalls at scale and the engines' rates, one paragraph each."""
    scale = results.get("stalls_at_scale", {}).get("summary")
    if scale:
        console.print(
            f"Stalls with {scale['tokens']:,} distinct active tokens "
            f"({scale['cache_entries']} cached), under load: longest loop callback "
            f"{_fmt(scale['max_block_ms'], 2)} ms wall / {_fmt(scale['max_block_cpu_ms'], 2)} ms "
            f"CPU ({scale['max_block_by']}); longest collection the interpreter ran "
            f"{_fmt(scale['gc_max_ms'], 2)} ms; a full GC forced every second: median "
            f"{_fmt(scale['full_gc_median_ms'], 2)} ms, max {_fmt(scale['full_gc_max_ms'], 2)} ms "
            f"(bare mitmdump under the same load: median "
            f"{_fmt(scale['bare_full_gc_median_ms'], 2)} ms, max "
            f"{_fmt(scale['bare_full_gc_max_ms'], 2)} ms). While the cache filled "
            f"({scale['fill_seconds']} s): longest callback {_fmt(scale['fill_max_block_ms'], 2)} "
            f"ms wall / {_fmt(scale.get('fill_max_block_cpu_ms'), 2)} ms CPU."
        )
    eng = results.get("engines", {}).get("summary")
    if eng:
        console.print(
            f"Traffic engines against a bare upstream (no proxy): built-in "
            f"{_fmt(eng['builtin_rps'])} req/s, Locust with {eng['locust_workers']} workers "
            f"{_fmt(eng['locust_rps'])} req/s ({_fmt(eng['locust_over_builtin'], 2)}x)."
        )


def _targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    proxy = results.get("proxy", {}).get("summary")
    if proxy and proxy.get("ratio") is not None:
        busy = " (machine busy: unreliable)" if proxy.get("machine_busy") else ""
        rows.append({"name": "throughput b/a", "goal": ">= 0.95",
                     "measured": f"{proxy['ratio']:.3f}; per CPU {proxy['cpu_ratio']:.3f}{busy}",
                     "met": proxy["ratio"] >= TARGETS["throughput_ratio_min"]})  # fmt: skip
    m = results.get("micro", {}).get("summary")
    if m:
        # The issue sets 10 µs on machines where the raw verify takes 22 µs; the same share of
        # the primitive is shown for this machine, beside the absolute goal (which decides).
        scaled = TARGETS["warm_us_max"] / REFERENCE_RAW_US * m["raw_us"]
        rows.append({"name": "warm decision path", "goal": "<= 10 µs",
                     "measured": f"{m['warm_us']:.1f} µs = {m['warm_us'] / m['raw_us']:.2f}x raw "
                                 f"(raw {m['raw_us']:.1f} µs; 10 µs at the issue's 22 µs raw is "
                                 f"0.45x, {scaled:.1f} µs here)",
                     "met": m["warm_us"] <= TARGETS["warm_us_max"]})  # fmt: skip
        rows.append({"name": "cold / raw primitive", "goal": "<= 1.5x",
                     "measured": f"{m['cold_over_raw']:.2f}x",
                     "met": m["cold_over_raw"] <= TARGETS["cold_over_raw_max"]})  # fmt: skip
    mem = results.get("memory")
    if mem:
        growth = mem.get("rss_growth_after_full_mib")
        rows.append({
            "name": "memory bounded", "goal": "no growth once the cache is full",
            "measured": f"{growth} MiB after full, cache {mem['cache_size_end']:,}",
            "met": growth is not None and mem["cache_size_end"] <= mem["cache_bound"]
            and growth < 5,
        })  # fmt: skip
    st = results.get("stalls")
    if st:
        runs = [st[k] for k in ("addon", "policy_reload", "jwks_refresh")]
        worst = max((r["max_block_ms"] for r in runs if r.get("max_block_ms") is not None),
                    default=None)  # fmt: skip
        own = max((r.get("addon_task_max_block_ms") or 0.0 for r in runs), default=None)
        bare = st["bare"].get("max_block_ms")
        limit = TARGETS["loop_block_ms_max"]
        rows.append({"name": "loop block, addon's own tasks", "goal": "<= 5 ms",
                     "measured": f"{own} ms (policy reload, JWKS refresh)",
                     "met": own is not None and own <= limit})  # fmt: skip
        rows.append({"name": "loop block, whole process", "goal": "<= 5 ms",
                     "measured": f"{worst} ms (bare mitmdump: {bare} ms)",
                     "met": worst is not None and worst <= limit})  # fmt: skip
    scale = results.get("stalls_at_scale", {}).get("summary")
    if scale and scale.get("max_block_ms") is not None:
        limit = TARGETS["loop_block_ms_max"]
        rows.append({"name": f"loop block, {scale['tokens']:,} active tokens", "goal": "<= 5 ms",
                     "measured": f"{scale['max_block_ms']} ms; forced full GC median "
                                 f"{scale['full_gc_median_ms']} ms (bare mitmdump: "
                                 f"{scale['bare_full_gc_median_ms']} ms)",
                     "met": scale["max_block_ms"] <= limit})  # fmt: skip
    eng = results.get("engines", {}).get("summary")
    if eng and eng.get("locust_over_builtin") is not None:
        rows.append({"name": "Locust (2 workers) / built-in engine", "goal": ">= 2x",
                     "measured": f"{eng['locust_over_builtin']}x",
                     "met": eng["locust_over_builtin"] >= 2})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m claimroute_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run (checks, not figures)")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only these")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write JSON")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--loadgen-processes", type=int, default=1)
    parser.add_argument("--users", type=int, default=DEFAULT_USERS)
    parser.add_argument("--memory-tokens", type=int, default=None)
    parser.add_argument(
        "--gc-entries", type=int, default=100_000, help="also time a full GC at this cache size"
    )
    parser.add_argument("--cache-size", type=int, default=10_000)
    parser.add_argument("--scale-workers", type=int, default=2, help="workers of (d) in scale")
    parser.add_argument("--stall-tokens", type=int, default=None,
                        help="distinct active tokens of the stalls run at scale (default "
                        "100,000; --quick 20,000; 0: skip it)")  # fmt: skip
    parser.add_argument("--engine-requests", type=int, default=None,
                        help="requests per engine in `engines` (default 20,000)")  # fmt: skip
    args = parser.parse_args(argv)
    quick = args.quick
    sections = args.only or list(SECTIONS)
    console = Console()
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": "python -m claimroute_bench "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "versions": _versions(),
        "machine_before": _machine(),
    }
    say = lambda message: console.log(message)  # noqa: E731
    if "policy" in sections:
        results["policy_load"] = policyload.run(rules=1000, repeats=3 if quick else 5)
        say(f"policy load, 1,000 rules: {results['policy_load']['median_ms']} ms (median)")
    if sections != ["policy"]:  # only the policy load needs no tokens
        say(f"minting {args.users} user tokens")
        setup = make_setup(args.users)
    if "micro" in sections:
        say("micro-benchmark of the decision path")
        results["micro"] = micro.run(setup, tokens=min(200 if quick else 500, args.users),
                                     repeats=3 if quick else 7)  # fmt: skip
    if "metrics" in sections:
        say("cost of the Prometheus metrics per request")
        results["metrics"] = metricscost.run(setup, tokens=min(200 if quick else 500, args.users),
                                             repeats=3 if quick else 7)  # fmt: skip
    if "memory" in sections:
        tokens = args.memory_tokens or (20_000 if quick else 100_000)
        say(f"memory: {tokens:,} distinct tokens through decide")
        results["memory"] = _run_memory(tokens, args.cache_size)
        if args.gc_entries:
            say(f"memory: a full GC with {args.gc_entries:,} cached tokens")
            results["memory_gc_at_scale"] = _run_memory(args.gc_entries, args.gc_entries)
    if "proxy" in sections:
        results["proxy"] = proxy_load.run(
            setup,
            rounds=args.rounds or (1 if quick else 5),
            seconds=args.seconds or (2.0 if quick else 5.0),
            concurrency=args.concurrency,
            latency_rounds=1 if quick else 2,
            latency_seconds=1.5 if quick else 3.0,
            loadgen_processes=args.loadgen_processes,
            warmup=0.5 if quick else 1.0,
            progress=say,
        )
    if "stalls" in sections:
        results["stalls"] = stalls.run(
            setup,
            concurrency=args.concurrency,
            steady_seconds=1.5 if quick else 3.0,
            reloads=1 if quick else 3,
            jwks_seconds=2.5 if quick else 5.0,
            loadgen_processes=args.loadgen_processes,
            progress=say,
        )
    if "stalls" in sections:
        tokens = args.stall_tokens if args.stall_tokens is not None else (
            20_000 if quick else 100_000)  # fmt: skip
        if tokens:
            results["stalls_at_scale"] = stalls.run_scale(
                tokens=tokens, concurrency=args.concurrency,
                loadgen_processes=args.loadgen_processes, hold_seconds=3.0 if quick else 6.0,
                progress=say,
            )  # fmt: skip
    if "engines" in sections:
        results["engines"] = engines_bench.run(
            requests=args.engine_requests or (5_000 if quick else 20_000), progress=say
        )
    if "large" in sections:
        results["large"] = large.run(setup, repeats=3 if quick else 7, progress=say)
    if "scale" in sections:
        results["scale"] = scale_bench.run(
            setup,
            rounds=args.rounds or (1 if quick else 3),
            seconds=args.seconds or (2.0 if quick else 5.0),
            concurrency=args.concurrency,
            workers=args.scale_workers,
            loadgen_processes=args.loadgen_processes,
            warmup=0.5 if quick else 1.0,
            progress=say,
        )
    results["targets"] = _targets(results)
    results["machine_after"] = _machine()
    results["seconds"] = round(time.monotonic() - started, 1)
    _tables(results, console)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    console.print(f"Results written to {args.json} ({results['seconds']} s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
