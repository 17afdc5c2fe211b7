"""The load generator: aiohttp clients in worker processes of their own.

Each worker runs `concurrency` keep-alive clients that send GET requests back to back, each with
the next user's token, for `warmup + duration` seconds; only requests that complete inside the
measured window count. Workers report their own CPU time, so the report can show that the
generator had room to spare while the proxy was saturated.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import statistics
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp

from claimroute_tools.scenario.summary import percentile

IDLE_LIMIT = 900.0  # a worker whose parent says nothing for this long exits


@dataclass(frozen=True, slots=True)
class Job:
    url: str
    concurrency: int
    duration: float
    warmup: float = 0.5
    token_offset: int = 0
    max_requests: int | None = None  # stop sending after this many (e.g. one per user)


@dataclass
class LoadResult:
    """Aggregated over all workers."""

    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    statuses: dict[int, int]
    completed: int = 0  # every response, warm-up included

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in ms (q in 0..100), nearest-rank as in scenario reports; nan
        without samples."""
        value = percentile(self.latencies_ms, q)
        return float("nan") if value is None else value

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile(50), 3),
            "p99_ms": round(self.percentile(99), 3),
            "mean_ms": round(statistics.fmean(self.latencies_ms), 3) if self.latencies_ms else None,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


async def _run_job(job: Job, tokens: list[str]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    latencies = array("d")
    statuses: dict[int, int] = {}
    counter = {"next": job.token_offset, "ok": 0, "errors": 0, "completed": 0}
    headers_for = [{"authorization": f"Bearer {t}"} for t in tokens]
    connector = aiohttp.TCPConnector(limit=job.concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    start = loop.time()
    measure_from = start + job.warmup
    end = measure_from + job.duration
    last_index = job.token_offset + job.max_requests if job.max_requests else None

    async def client(session: aiohttp.ClientSession) -> None:
        # Bounded by the deadline: each iteration is one request with a 30 s timeout.
        while True:
            sent = loop.time()
            if sent >= end:
                return
            index = counter["next"]
            if last_index is not None and index >= last_index:
                return
            counter["next"] = index + 1
            headers = headers_for[index % len(headers_for)]
            try:
                async with session.get(job.url, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = -1
            done = loop.time()
            counter["completed"] += 1
            if measure_from <= done < end:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    counter["ok"] += 1
                    latencies.append((done - sent) * 1000)
                else:
                    counter["errors"] += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(job.concurrency)))
    return {
        "ok": counter["ok"],
        "errors": counter["errors"],
        "latencies": latencies.tobytes(),
        "statuses": statuses,
        "completed": counter["completed"],
    }


def _worker(conn: Connection, tokens: list[str]) -> None:
    # Bounded: one job per message; exit on "stop", on EOF, or after IDLE_LIMIT of silence.
    while conn.poll(IDLE_LIMIT):
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] != "run":
            return
        job: Job = message[1]
        conn.send(asyncio.run(_run_job(job, tokens)))


class LoadGenerator:
    """A pool of worker processes; `run(job)` splits the concurrency between them."""

    def __init__(self, tokens: list[str], processes: int = 1) -> None:
        ctx = mp.get_context("spawn")
        self._workers: list[tuple[mp.process.BaseProcess, Connection]] = []
        for index in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker, args=(child, tokens), name=f"bench-loadgen-{index}", daemon=True
            )
            proc.start()
            child.close()
            self._workers.append((proc, parent))
        self.token_count = len(tokens)

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self._workers if proc.pid is not None]

    def run(self, job: Job) -> LoadResult:
        workers = self._workers
        share, extra = divmod(job.concurrency, len(workers))
        active = []
        for index, (_, conn) in enumerate(workers):
            concurrency = share + (1 if index < extra else 0)
            if concurrency == 0:
                continue
            offset = job.token_offset + index * (self.token_count // len(workers))
            requests = None
            if job.max_requests is not None:
                requests = job.max_requests // len(workers) + 1
            conn.send(("run", Job(job.url, concurrency, job.duration, job.warmup, offset,
                                  requests)))  # fmt: skip
            active.append(conn)
        limit = job.warmup + job.duration + 60
        results = []
        for conn in active:
            if not conn.poll(limit):
                raise TimeoutError("a load generator worker did not answer")
            results.append(conn.recv())
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        for result in results:
            samples = array("d")
            samples.frombytes(result["latencies"])
            latencies.extend(samples)
            for status, count in result["statuses"].items():
                statuses[status] = statuses.get(status, 0) + count
        return LoadResult(
            requests=sum(r["ok"] for r in results),
            errors=sum(r["errors"] for r in results),
            seconds=job.duration,
            latencies_ms=latencies,
            statuses=statuses,
            completed=sum(r["completed"] for r in results),
        )

    def close(self) -> None:
        for proc, conn in self._workers:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(("stop",))
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        self._workers = []

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
