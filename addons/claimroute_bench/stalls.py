"""Event-loop stalls inside mitmdump under load: baseline, policy reloads, JWKS refreshes.

mitmdump runs the addon plus `loopmon.py`, which samples the loop's lateness every 1 ms and
logs the largest lag per 100 ms window with its wall-clock time. While the load generator
keeps the proxy saturated:

- `bare`: bare mitmdump (no addon), the floor that mitmproxy itself sets;
- `addon`: the addon with its local-keys policy, nothing happening;
- `policy_reload`: the policy file is rewritten several times; the addon's watcher notices it
  within a second, parses it in a worker thread and installs it on the loop;
- `jwks_refresh`: the provider's keys come from a JWKS URL (a `lab.JwksServer` with four RSA
  keys) with `cache_duration: 1s`, so the remote source refetches and re-imports every 0.8 s.

`run_scale` (`stalls_at_scale` in the results) does it with 100,000 distinct active tokens:
each sent once through the proxy (the cache fills), then a load cycling through all of them,
with a full collection forced every second; the same on bare mitmdump gives mitmproxy's
share (see its docstring).

For the events, only windows overlapping an event (the write of the file until 1.5 s later;
each JWKS request until 0.3 s later) count, so their maximum is the worst stall around the
event; it is compared with the steady-state windows of the same process.
"""

from __future__ import annotations

import asyncio
import copy
import re
import threading
import time
import urllib.request
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from claimroute_bench.loadgen import Job, LoadGenerator
from claimroute_bench.proxy_load import BARE_SCRIPT, PROXY_OPTIONS
from claimroute_bench.scenario import REQUEST_PATH, Setup, make_setup
from claimroute_bench.upstream import Upstream
from claimroute_tools.lab import JwksServer, MitmdumpProcess, TestIssuer

LOOPMON_SCRIPT = Path(__file__).resolve().parent / "loopmon.py"
WINDOW_RE = re.compile(
    r"loopmon end=([\d.]+) cb_max_ms=([\d.]+) cpu_max_ms=([\d.]+) addon_max_ms=([\d.]+) "
    r"gc_max_ms=([\d.]+) gc_gen=(-?\d+) gcs=(\d+) lag_max_ms=([\d.]+) n=(\d+) over5=(\d+) "
    r"cb_max=(\S+) addon_max=(\S+) over5_names=(\S*)"
)
# Callbacks that run only claimroute code: its own background tasks.
ADDON_TASKS = ("ClaimRoute.", "RemoteKeySource.", "claimroute")
WINDOW_SECONDS = 0.1
RELOADED = "policy reloaded"


def _windows(lines: list[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        match = WINDOW_RE.search(line)
        if match:
            (end, cb_max, cpu_max, addon_max, gc_max, gc_gen, gcs, lag_max, n, over, name,
             addon, names) = match.groups()  # fmt: skip
            out.append({
                "end": float(end), "cb_max_ms": float(cb_max), "cpu_max_ms": float(cpu_max),
                "addon_max_ms": float(addon_max), "addon_max": addon, "gc_max_ms": float(gc_max),
                "gc_gen": int(gc_gen), "gcs": int(gcs),
                "lag_max_ms": float(lag_max), "n": int(n), "over5": int(over), "cb_max": name,
                "over5_names": [n for n in names.split(",") if n],
            })  # fmt: skip
    return out


def _is_addon(name: str) -> bool:
    return any(marker in name for marker in ADDON_TASKS)


def _summary(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The longest callback (wall and CPU) and what it was, the longest step of the addon's own
    tasks, and the sampler's worst lag."""
    if not windows:
        return {"windows": 0, "max_block_ms": None}
    worst = max(windows, key=lambda w: w["cb_max_ms"])
    addon = max(windows, key=lambda w: w["addon_max_ms"])
    return {
        "windows": len(windows),
        "max_block_ms": round(worst["cb_max_ms"], 3),
        "max_block_by": worst["cb_max"],
        "max_block_cpu_ms": round(max(w["cpu_max_ms"] for w in windows), 3),
        "addon_task_max_block_ms": round(addon["addon_max_ms"], 3),
        "addon_task_max_block_by": addon["addon_max"],
        "median_window_max_block_ms": round(
            sorted(w["cb_max_ms"] for w in windows)[len(windows) // 2], 3
        ),
        "callbacks_over_5ms": sum(w["over5"] for w in windows),
        "over_5ms_by": sorted({n for w in windows for n in w["over5_names"]}),
        "addon_callbacks_over_5ms": sum(
            1 for w in windows for n in w["over5_names"] if _is_addon(n)
        ),
        "max_lag_ms": round(max(w["lag_max_ms"] for w in windows), 3),
        "gc_max_ms": round(max(w["gc_max_ms"] for w in windows), 3),
        "gc_max_generation": max(windows, key=lambda w: w["gc_max_ms"])["gc_gen"],
        "gc_runs": sum(w["gcs"] for w in windows),
    }


def _overlapping(
    windows: list[dict[str, float]], spans: list[tuple[float, float]]
) -> list[dict[str, float]]:
    return [
        w for w in windows
        if any(w["end"] - WINDOW_SECONDS <= stop and w["end"] >= start for start, stop in spans)
    ]  # fmt: skip


def _start_load(lg: LoadGenerator, url: str, concurrency: int, seconds: float) -> Future[Any]:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(lg.run, Job(url, concurrency, seconds, 0.2))
    pool.shutdown(wait=False)
    return future


def _steady(proc: MitmdumpProcess, lg: LoadGenerator, concurrency: float, seconds: float) -> Any:
    url = f"{proc.proxy_url}{REQUEST_PATH}"
    mark = proc.mark()
    started = time.time()
    result = _start_load(lg, url, int(concurrency), seconds).result(seconds + 60)
    windows = [w for w in _windows(proc.lines[mark:]) if w["end"] >= started + 0.5]
    return _summary(windows) | {"rps": round(result.rps, 1), "errors": result.errors}


class _JwksThread:
    """A `JwksServer` on its own event loop in a thread, recording when keys are fetched."""

    def __init__(self, server: JwksServer, name: str) -> None:
        self.server = server
        self.name = name
        self.fetch_times: list[float] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="bench-jwks", daemon=True)

    def _main(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        await self.server.start()
        self._ready.set()
        seen = self.server.hits(self.name)
        deadline = time.monotonic() + 900
        while not self._stop.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
            hits = self.server.hits(self.name)
            if hits != seen:
                self.fetch_times.extend([time.time()] * (hits - seen))
                seen = hits
        await self.server.stop()

    def __enter__(self) -> _JwksThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("JWKS server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def run(
    setup: Setup,
    *,
    concurrency: int = 16,
    steady_seconds: float = 3.0,
    reloads: int = 3,
    reload_spacing: float = 1.6,
    jwks_seconds: float = 5.0,
    loadgen_processes: int = 1,
    progress: Any = None,
) -> dict[str, Any]:
    say = progress or (lambda message: None)
    out: dict[str, Any] = {
        "config": {"concurrency": concurrency, "steady_seconds": steady_seconds,
                   "reloads": reloads, "reload_spacing": reload_spacing,
                   "jwks_seconds": jwks_seconds, "window_ms": WINDOW_SECONDS * 1000,
                   "sample_interval_ms": 1},
    }  # fmt: skip
    extra = ["-s", str(LOOPMON_SCRIPT)]
    with Upstream() as upstream, LoadGenerator(setup.tokens, loadgen_processes) as lg:
        mode = f"reverse:{upstream.url}"
        say("stalls: bare mitmdump under load")
        with MitmdumpProcess(
            None, mode=mode, script=BARE_SCRIPT, options=PROXY_OPTIONS, extra_args=extra
        ) as bare:
            out["bare"] = _steady(bare, lg, concurrency, steady_seconds)

        policy = setup.write_policy(upstream.url, name="stall-policy.yaml")
        with MitmdumpProcess(policy, mode=mode, options=PROXY_OPTIONS, extra_args=extra) as proc:
            say("stalls: addon under load")
            out["addon"] = _steady(proc, lg, concurrency, steady_seconds)
            say(f"stalls: {reloads} policy reloads under load")
            url = f"{proc.proxy_url}{REQUEST_PATH}"
            mark = proc.mark()
            load_seconds = reloads * reload_spacing + 2.0
            future = _start_load(lg, url, concurrency, load_seconds)
            time.sleep(1.0)
            spans = []
            for revision in range(1, reloads + 1):
                written = time.time()
                setup.write_policy(upstream.url, name="stall-policy.yaml", revision=revision)
                spans.append((written, written + 1.5))
                time.sleep(reload_spacing)
            result = future.result(load_seconds + 60)
            lines = proc.lines[mark:]
            events = _overlapping(_windows(lines), spans)
            out["policy_reload"] = _summary(events) | {
                "reloads_written": reloads,
                "reloads_applied": sum(1 for line in lines if RELOADED in line),
                "rps": round(result.rps, 1),
                "errors": result.errors,
            }

        say("stalls: JWKS refreshes under load")
        issuer = setup.issuer
        # Four published keys, as an IdP in the middle of a rotation might have. The tokens
        # keep their kid: the first key stays published.
        jwks_issuer = _issuer_with_keys(issuer, 4)
        with _JwksThread(JwksServer(jwks_issuer), jwks_issuer.name) as jwks:
            jwks_url = jwks.server.jwks_url(jwks_issuer.name)
            policy = setup.write_policy(
                upstream.url, name="jwks-policy.yaml",
                jwks=f'{{url: "{jwks_url}", cache_duration: 1s}}',
            )  # fmt: skip
            with MitmdumpProcess(
                policy, mode=mode, options=PROXY_OPTIONS, extra_args=extra
            ) as proc:
                url = f"{proc.proxy_url}{REQUEST_PATH}"
                mark = proc.mark()
                started = time.time()
                result = _start_load(lg, url, concurrency, jwks_seconds).result(jwks_seconds + 60)
                windows = [w for w in _windows(proc.lines[mark:]) if w["end"] >= started + 0.5]
                fetches = [t for t in jwks.fetch_times if t >= started + 0.5]
                events = _overlapping(windows, [(t - 0.05, t + 0.3) for t in fetches])
                out["jwks_refresh"] = _summary(events) | {
                    "fetches": len(fetches),
                    "rps": round(result.rps, 1),
                    "errors": result.errors,
                    "keys_published": len(jwks_issuer.published_kids),
                }
                out["jwks_steady"] = _summary([w for w in windows if w not in events])
    out["summary"] = {
        "bare_max_block_ms": out["bare"]["max_block_ms"],
        "addon_max_block_ms": out["addon"]["max_block_ms"],
        "policy_reload_max_block_ms": out["policy_reload"]["max_block_ms"],
        "policy_reload_addon_task_max_ms": out["policy_reload"]["addon_task_max_block_ms"],
        "jwks_refresh_max_block_ms": out["jwks_refresh"]["max_block_ms"],
        "jwks_refresh_addon_task_max_ms": out["jwks_refresh"]["addon_task_max_block_ms"],
        "reloads_applied": out["policy_reload"]["reloads_applied"],
        "jwks_fetches": out["jwks_refresh"]["fetches"],
    }
    return out


def _issuer_with_keys(issuer: TestIssuer, count: int) -> TestIssuer:
    """A copy of `issuer` that publishes `count` keys; it still signs with the original key,
    which stays published, so the benchmark's tokens keep verifying."""
    clone = copy.copy(issuer)  # rotate() replaces the key list, so the original is unchanged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(count - 1):
            clone.rotate(keep_old=True)
    clone.key = issuer.key
    return clone


# -- at scale: 100,000 distinct active tokens ----------------------------------------------

FULL_GC_RE = re.compile(r"loopmon full_gc_ms=([\d.]+) cpu_ms=([\d.]+) end=([\d.]+)")
METRICS_RE = re.compile(r"claimroute: metrics at (http://\S+/metrics)")
SCALE_ALG = "ES256"  # fast to sign (about 0.15 ms a token here) and to verify


def _median(values: list[float]) -> float | None:
    return round(sorted(values)[len(values) // 2], 3) if values else None


def _full_gcs(lines: list[str], group: int = 1) -> list[float]:
    """The forced full collections' durations (ms; group 2: their CPU time), in order."""
    return [float(m.group(group)) for line in lines if (m := FULL_GC_RE.search(line))]


def _cache_entries(proc: MitmdumpProcess) -> int | None:
    """`claimroute_token_cache_entries` from the addon's own metrics, or None."""
    found = METRICS_RE.search(proc.output)
    if found is None:
        return None
    with urllib.request.urlopen(found.group(1), timeout=30) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("claimroute_token_cache_entries "):
            return int(float(line.split()[1]))
    return None


def _hold(proc: MitmdumpProcess, lg: LoadGenerator, concurrency: int, seconds: float) -> Any:
    """Saturating load cycling through every token, with the forced full collections."""
    url = f"{proc.proxy_url}{REQUEST_PATH}"
    mark = proc.mark()
    started = time.time()
    result = _start_load(lg, url, concurrency, seconds).result(seconds + 120)
    lines = proc.lines[mark:]
    windows = [w for w in _windows(lines) if w["end"] >= started + 0.3]
    gcs, cpu = _full_gcs(lines), _full_gcs(lines, 2)
    return _summary(windows) | {
        "rps": round(result.rps, 1),
        "errors": result.errors,
        "full_gc_ms": [round(ms, 2) for ms in gcs],
        "full_gc_cpu_ms": [round(ms, 2) for ms in cpu],
        "full_gc_max_ms": round(max(gcs), 3) if gcs else None,
        "full_gc_max_cpu_ms": round(max(cpu), 3) if cpu else None,
    }


def run_scale(
    *,
    tokens: int = 100_000,
    concurrency: int = 16,
    loadgen_processes: int = 1,
    fill_seconds: float = 420.0,
    hold_seconds: float = 6.0,
    full_gc_every_ms: int = 1000,
    progress: Any = None,
) -> dict[str, Any]:
    """The longest event-loop stall inside mitmdump with `tokens` distinct active tokens.

    Every token is sent once through the proxy (the cache, sized to hold them all, fills up:
    `fill`), then a saturating load cycles through all of them (`hold`). Throughout, `loopmon`
    forces a full garbage collection on the loop every `full_gc_every_ms` (the collection the
    interpreter runs by itself sooner or later, whose time grows with what the process holds)
    and times every callback: `max_block_ms` is the longest callback and `gc_max_ms` the
    longest collection the interpreter ran by itself, `full_gc_max_ms` the longest forced one
    (kept apart). The same load and forced collections on bare mitmdump (`bare`, with the
    addon's startup `gc.freeze()` too) give mitmproxy's own share. The fill stops at
    `fill_seconds` (then fewer tokens are active, and the result says how many).
    """
    say = progress or (lambda message: None)
    say(f"stalls at scale: minting {tokens:,} {SCALE_ALG} tokens")
    clock = time.perf_counter()
    setup = make_setup(tokens, alg=SCALE_ALG)
    out: dict[str, Any] = {
        "config": {"tokens": tokens, "alg": SCALE_ALG, "concurrency": concurrency,
                   "hold_seconds": hold_seconds, "full_gc_every_ms": full_gc_every_ms,
                   "cache_size": tokens + tokens // 10},
        "mint_seconds": round(time.perf_counter() - clock, 1),
    }  # fmt: skip
    extra = ["-s", str(LOOPMON_SCRIPT)]
    gc_option = {"loopmon_full_gc_ms": full_gc_every_ms}
    with Upstream() as upstream, LoadGenerator(setup.tokens, loadgen_processes) as lg:
        mode = f"reverse:{upstream.url}"
        say("stalls at scale: bare mitmdump, forced full collections under load")
        with MitmdumpProcess(
            None, mode=mode, script=BARE_SCRIPT,
            options=PROXY_OPTIONS | gc_option | {"loopmon_freeze": True}, extra_args=extra,
        ) as bare:  # fmt: skip
            out["bare"] = _hold(bare, lg, concurrency, hold_seconds)
        policy = setup.write_policy(upstream.url, name="scale-policy.yaml", alg=SCALE_ALG)
        options = PROXY_OPTIONS | gc_option | {
            "claimroute_cache_size": out["config"]["cache_size"],
            "claimroute_metrics": "127.0.0.1:0",
        }  # fmt: skip
        with MitmdumpProcess(policy, mode=mode, options=options, extra_args=extra) as proc:
            say(f"stalls at scale: every one of {tokens:,} tokens once (the cache fills)")
            url = f"{proc.proxy_url}{REQUEST_PATH}"
            mark = proc.mark()
            clock = time.perf_counter()
            result = lg.run(Job(url, concurrency, fill_seconds, 0.0, max_requests=tokens))
            elapsed = time.perf_counter() - clock
            lines = proc.lines[mark:]
            gcs, cpu = _full_gcs(lines), _full_gcs(lines, 2)
            out["fill"] = _summary(_windows(lines)) | {
                "requests": result.completed,
                "seconds": round(elapsed, 1),
                "rps": round(result.completed / elapsed, 1) if elapsed else None,
                "errors": result.errors,
                "full_gc_ms_first_last": [gcs[0], gcs[-1]] if gcs else None,
                "full_gc_max_ms": round(max(gcs), 3) if gcs else None,
                "full_gc_max_cpu_ms": round(max(cpu), 3) if cpu else None,
            }
            out["cache_entries_after_fill"] = _cache_entries(proc)
            say(f"stalls at scale: {out['cache_entries_after_fill']} cached tokens; holding load")
            out["hold"] = _hold(proc, lg, concurrency, hold_seconds)
            out["cache_entries_after_hold"] = _cache_entries(proc)
    hold, bare = out["hold"], out["bare"]
    out["summary"] = {
        "tokens": tokens,
        "cache_entries": out["cache_entries_after_hold"],
        "max_block_ms": hold.get("max_block_ms"),
        "max_block_by": hold.get("max_block_by"),
        "max_block_cpu_ms": hold.get("max_block_cpu_ms"),
        "gc_max_ms": hold.get("gc_max_ms"),
        "full_gc_max_ms": hold.get("full_gc_max_ms"),
        "full_gc_max_cpu_ms": hold.get("full_gc_max_cpu_ms"),
        "full_gc_median_ms": _median(hold.get("full_gc_ms") or []),
        "bare_full_gc_median_ms": _median(bare.get("full_gc_ms") or []),
        "bare_max_block_ms": bare.get("max_block_ms"),
        "bare_full_gc_max_ms": bare.get("full_gc_max_ms"),
        "bare_full_gc_max_cpu_ms": bare.get("full_gc_max_cpu_ms"),
        "fill_max_block_ms": out["fill"].get("max_block_ms"),
        "fill_max_block_cpu_ms": out["fill"].get("max_block_cpu_ms"),
        "fill_seconds": out["fill"]["seconds"],
    }
    return out
