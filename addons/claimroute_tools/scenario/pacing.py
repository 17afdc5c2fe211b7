"""Open-model pacing: requests leave at a fixed arrival rate, whatever the answers do.

`Pacer` computes the arrival schedule (request k of a stretch of traffic leaves at
`start + k / rate`, evenly spaced) and sends each request as its time comes, as long as fewer
than `cap` requests are in flight. When the cap is reached the request waits for a free slot
and is counted in `delayed_by_cap`; the schedule does not move, so the next requests catch up
as soon as slots free up. The observed rate (`sent / traffic time`) then says how far the run
fell behind the target: an honest open model says when it could not keep the rate.

A stretch ends when its plan runs dry, when its duration (`stop_after`) is over, or at the
run's deadline, whichever comes first; the last two are checked against the scheduled time
*and* the clock, so a proxy slower than the rate cannot stretch the run past either. Arrivals
due within a duration that its time ran out for are counted (`unsent_on_schedule`).

The clock and the sleep are injectable, so the schedule is tested with a fake clock and no
timing assertion (tests/tools/test_traffic_shapes.py).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from claimroute.config import readers
from claimroute.config.source import Loc
from claimroute.errors import PolicyError

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute)\s*$")
_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
MAX_RATE = 10_000.0  # requests per second


def parse_rate(value: Any, loc: Loc) -> float:
    """`200/s` or `30/m` -> requests per second (PolicyError at `loc` otherwise)."""
    match = _RATE.match(value) if isinstance(value, str) else None
    if match is None:
        raise loc.error(f"expected a rate such as 200/s or 30/m, got {value!r}")
    per_second = float(match.group(1)) / _PER[match.group(2)]
    if not 0 < per_second <= MAX_RATE:
        raise loc.error(f"a rate must be above 0 and at most {MAX_RATE:g}/s, got {value!r}")
    return per_second


type Clock = Callable[[], float]
type Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class PaceStats:
    """What pacing did over the whole run."""

    sent: int = 0
    delayed_by_cap: int = 0  # waited for a free slot: `cap` requests were in flight
    traffic_time: float = 0.0  # seconds of paced traffic (steps and drains excluded)
    max_lag: float = 0.0  # the most a request left behind its scheduled time, in seconds
    # Arrivals due within a stretch's duration that were never sent: the clock reached the
    # end of the duration first (the proxy, or the cap, could not keep the rate).
    unsent_on_schedule: int = 0


class Pacer:
    """Sends requests at `rate` per second with at most `cap` in flight."""

    def __init__(
        self,
        rate: float,
        cap: int,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.cap = cap
        self.clock = clock
        self.sleep = sleep
        self.stats = PaceStats()
        self.cut = False  # the last `run` was stopped by its deadline

    def arrival(self, start: float, k: int) -> float:
        """When request k (0-based) of a stretch that began at `start` is due."""
        return start + k / self.rate

    def due_within(self, length: float) -> int:
        """How many arrivals of a stretch fall before `length` seconds (k / rate < length)."""
        count = max(0, math.ceil(length * self.rate))
        # Settle float rounding with the same comparison as `run` uses.
        while count > 0 and self.arrival(0.0, count - 1) >= length:
            count -= 1
        while self.arrival(0.0, count) < length:
            count += 1
        return count

    async def run(
        self,
        requests: Iterator[Any],
        send: Callable[[Any], Awaitable[None]],
        *,
        stop_after: float | None = None,
        deadline: float | None = None,
    ) -> int:
        """Send from `requests` on schedule until it is exhausted, until `stop_after` seconds
        of this stretch are over (no arrival at or after it, and none once the clock is past
        it), or until `deadline` (no arrival due at or after it, and none once the clock
        passes it); then wait for the requests in flight. Returns how many were sent;
        `self.cut` says whether the deadline stopped it."""
        start = self.clock()
        slots = asyncio.Semaphore(self.cap)
        tasks: set[asyncio.Task[None]] = set()
        sent = 0
        self.cut = False  # stopped by the deadline rather than by the plan or the duration
        over = False  # the duration ended on the clock with arrivals still due
        ran_out = False  # the duration ended on schedule: no arrival left before it

        async def one(item: Any) -> None:
            try:
                await send(item)
            finally:
                slots.release()

        def stop_now(*, duration: bool = True) -> bool:
            """The clock is past the deadline or (`duration`) the stretch's length; sets
            `cut` or `over`."""
            nonlocal over
            now = self.clock()
            if deadline is not None and now >= deadline:
                self.cut = True
            elif duration and stop_after is not None and now - start >= stop_after:
                over = True
            return self.cut or over

        for k in itertools.count():
            due = self.arrival(start, k)
            if stop_after is not None and due - start >= stop_after:
                ran_out = True
                break
            if deadline is not None and due >= deadline:
                self.cut = True
                break
            # Behind schedule there is no sleep that ends at the deadline or the duration:
            # check the clock too, before the sleep and after the wait for a free slot (which
            # lasts as long as the proxy takes). A sleep that overshoots its arrival by a
            # little does not cost that arrival its place in the duration.
            if stop_now():
                break
            wait = due - self.clock()
            if wait > 0:
                await self.sleep(wait)
            waited = slots.locked()
            if waited:
                self.stats.delayed_by_cap += 1
            await slots.acquire()
            if stop_now(duration=waited):
                slots.release()
                break
            item = next(requests, None)  # taken only once it will be sent
            if item is None:
                slots.release()
                break
            self.stats.max_lag = max(self.stats.max_lag, self.clock() - due)
            task = asyncio.ensure_future(one(item))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if over and stop_after is not None:
            self.stats.unsent_on_schedule += self.due_within(stop_after) - sent
        # A stretch that ran its duration lasted exactly that (as a closed-loop one: a late
        # slot or the drain is not traffic time); one that the plan or the deadline ended
        # lasted what the clock says, and at least its scheduled length (sent / rate).
        if stop_after is not None and (ran_out or over):
            self.stats.traffic_time += stop_after
        else:
            self.stats.traffic_time += max(self.clock() - start, sent / self.rate)
        self.stats.sent += sent
        if tasks:
            await asyncio.gather(*tasks)
        return sent


def rate_argument(text: str) -> float:
    """An argparse type for `--rate 200/s` (requests per second)."""
    try:
        return parse_rate(text, Loc("--rate"))
    except PolicyError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


def duration_argument(text: str) -> float:
    """An argparse type for `--duration 60s` (seconds, 100ms to 1h)."""
    try:
        seconds = readers.duration(text, Loc("--duration"))
    except PolicyError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError("must be between 100ms and 1h")
    return seconds


__all__ = ["MAX_RATE", "PaceStats", "Pacer", "duration_argument", "parse_rate", "rate_argument"]
