"""A mitmdump script that measures how long the event loop is blocked, and by what.

Two measurements, reported once per window (default 100 ms) as one log line:

- every callback the loop runs is timed (`asyncio.Handle._run` is wrapped): `cb_max_ms` is the
  longest one in the window (wall clock) and `cb_max` names it (the coroutine of a task step,
  or the function), `cpu_max_ms` is the most CPU one callback used (wall time also counts
  time the process was preempted or waited for the GIL), `gc_max_ms` the longest garbage
  collection (and `gc_gen` its generation), `addon_max_ms` is the longest step
  of claimroute's own tasks (policy watcher, JWKS fetches), `over5` counts callbacks over
  5 ms and `over5_names` names them. The longest callback is the longest time nothing else
  could run.
- a task sleeps 1 ms at a time and records how late it wakes (`lag_max_ms`). On a saturated
  loop this includes queueing behind every other ready callback, so it is an upper bound.

    loopmon end=1700000000.123 cb_max_ms=1.2 cpu_max_ms=1.1 addon_max_ms=0.0 gc_max_ms=0.3
    gc_gen=0 gcs=12 lag_max_ms=30.1
    n=4 over5=0 cb_max=task:ConnectionHandler.handle_connection addon_max=- over5_names=

With `--set loopmon_full_gc_ms=N` it also runs a full garbage collection on the loop every N ms
(the one the interpreter runs by itself sooner or later) and logs its duration apart (the
callback and the collection are left out of the window figures above):

    loopmon full_gc_ms=3.2 cpu_ms=3.1 end=1700000000.123

Load it next to the addon (`-s addon.py -s loopmon.py`); the benchmark parses the lines.
"""

import asyncio
import gc
import logging
import time
from asyncio import events

from mitmproxy import ctx
from mitmproxy.utils import asyncio_utils

log = logging.getLogger("claimroute.loopmon")

INTERVAL = 0.001
OVER = 0.005
NOTABLE = 0.0002  # addon task steps shorter than this are not worth naming
ADDON_MARKERS = ("ClaimRoute.", "RemoteKeySource.", "claimroute")
LINE = (
    "loopmon end=%.3f cb_max_ms=%.3f cpu_max_ms=%.3f addon_max_ms=%.3f gc_max_ms=%.3f "
    "gc_gen=%d gcs=%d lag_max_ms=%.3f n=%d over5=%d cb_max=%s addon_max=%s over5_names=%s"
)
MAX_SECONDS = 900.0  # the monitor stops by itself after this long


def describe(handle: events.Handle) -> str:
    """A short name for what a loop callback runs."""
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        name = getattr(coro, "__qualname__", None) or type(coro).__name__
        return f"task:{name}"
    name = getattr(callback, "__qualname__", None) or repr(callback)
    return name.replace(" ", "_")[:80]


def _addon_task(handle: events.Handle) -> str | None:
    """The coroutine name if `handle` is a step of one of claimroute's own tasks."""
    owner = getattr(getattr(handle, "_callback", None), "__self__", None)
    if not isinstance(owner, asyncio.Task):
        return None
    name = getattr(owner.get_coro(), "__qualname__", "")
    return name if any(marker in name for marker in ADDON_MARKERS) else None


class _Window:
    __slots__ = (
        "addon_max", "addon_name", "cpu_max", "gc_count", "gc_gen", "gc_max", "max_handle",
        "max_seconds", "over", "over_names",
    )  # fmt: skip

    def __init__(self) -> None:
        self.max_seconds = 0.0
        self.max_handle: events.Handle | None = None
        self.cpu_max = 0.0
        self.addon_max = 0.0
        self.addon_name = "-"
        self.over = 0
        self.over_names: set[str] = set()
        self.gc_max = 0.0
        self.gc_gen = -1
        self.gc_count = 0


class LoopMonitor:
    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._gc_task: asyncio.Task[None] | None = None
        self._window = _Window()
        self._original_run = None
        self._gc_started = 0.0
        self._forced = False  # the callback running now forced a full collection

    def load(self, loader) -> None:
        loader.add_option("loopmon_window_ms", int, 100, "Loop-lag report window (ms).")
        loader.add_option(
            "loopmon_full_gc_ms", int, 0,
            "Run a full garbage collection on the loop every this many ms (0: never).",
        )  # fmt: skip
        loader.add_option(
            "loopmon_freeze", bool, False,
            "gc.freeze() once running, as the claimroute addon does (for bare mitmdump).",
        )  # fmt: skip

    def running(self) -> None:
        if self._original_run is None:
            self._install()
        if ctx.options.loopmon_freeze:
            gc.freeze()
        if self._task is None or self._task.done():
            self._task = asyncio_utils.create_task(self._run(), name="loopmon", keep_ref=True)
        every = ctx.options.loopmon_full_gc_ms
        if every > 0 and (self._gc_task is None or self._gc_task.done()):
            self._gc_task = asyncio_utils.create_task(
                self._full_gcs(every / 1000), name="loopmon-full-gc", keep_ref=True
            )

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._gc_task is not None:
            self._gc_task.cancel()
            self._gc_task = None
        if self._original_run is not None:
            events.Handle._run = self._original_run
            self._original_run = None
        if self._gc_callback in gc.callbacks:
            gc.callbacks.remove(self._gc_callback)

    def _gc_callback(self, phase: str, info: dict) -> None:
        # Garbage collections run inside whatever callback allocated last; time them apart.
        if self._forced:
            return  # ours (loopmon_full_gc_ms): logged apart
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_started
        window = self._window
        window.gc_count += 1
        if took > window.gc_max:
            window.gc_max = took
            window.gc_gen = info.get("generation", -1)

    def _install(self) -> None:
        original = events.Handle._run
        monitor = self
        clock = time.perf_counter
        cpu_clock = time.thread_time

        def record(handle: events.Handle, took: float, cpu: float) -> None:
            window = monitor._window
            if took > window.max_seconds:
                window.max_seconds = took
                window.max_handle = handle
            if cpu > window.cpu_max:
                window.cpu_max = cpu
            if took > OVER:
                window.over += 1
                window.over_names.add(describe(handle))
            if took > NOTABLE and took > window.addon_max:
                name = _addon_task(handle)
                if name is not None:
                    window.addon_max = took
                    window.addon_name = name

        def timed_run(handle: events.Handle) -> None:
            start = clock()
            cpu_start = cpu_clock()
            try:
                original(handle)
            finally:
                if monitor._forced:  # the forced full collection: logged apart
                    monitor._forced = False
                else:
                    record(handle, clock() - start, cpu_clock() - cpu_start)

        self._original_run = original
        events.Handle._run = timed_run
        gc.callbacks.append(self._gc_callback)

    async def _full_gcs(self, every: float) -> None:
        # A full collection is what the interpreter runs by itself sooner or later (its
        # threshold grows with the number of long-lived objects, so under a short benchmark it
        # may not come): forcing one every few seconds measures that worst stall, on the loop,
        # with whatever the process holds at that moment. It is logged apart so that the
        # benchmark can tell it from the interpreter's own collections.
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + MAX_SECONDS
        while loop.time() < stop_at:
            await asyncio.sleep(every)
            self._forced = True
            started, cpu_started = time.perf_counter(), time.thread_time()
            gc.collect()
            took = (time.perf_counter() - started) * 1000
            cpu = (time.thread_time() - cpu_started) * 1000
            log.info("loopmon full_gc_ms=%.3f cpu_ms=%.3f end=%.3f", took, cpu, time.time())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = max(0.01, ctx.options.loopmon_window_ms / 1000)
        stop_at = loop.time() + MAX_SECONDS
        lag_max = 0.0
        samples = 0
        window_end = loop.time() + period
        while loop.time() < stop_at:
            before = loop.time()
            await asyncio.sleep(INTERVAL)
            after = loop.time()
            lag_max = max(lag_max, after - before - INTERVAL)
            samples += 1
            if after >= window_end:
                window, self._window = self._window, _Window()
                name = describe(window.max_handle) if window.max_handle is not None else "-"
                log.info(
                    LINE,
                    time.time(), window.max_seconds * 1000, window.cpu_max * 1000,
                    window.addon_max * 1000, window.gc_max * 1000, window.gc_gen,
                    window.gc_count, lag_max * 1000, samples, window.over, name,
                    window.addon_name, ",".join(sorted(window.over_names)),
                )  # fmt: skip
                lag_max = 0.0
                samples = 0
                window_end = after + period


addons = [LoopMonitor()]
