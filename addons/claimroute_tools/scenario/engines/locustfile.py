"""The Locust side of `claimroute scenario NAME --engine locust`.

This file runs inside Locust's master and worker processes (gevent, monkeypatched); it imports
only Locust and the standard library, so a worker on another machine can fetch it from the
master (`locust -f - --worker --master-host HOST`) without claimroute installed.

How work flows (the runner's side is `locust_engine.py`):

- The runner writes `segment-K.json` into a private folder of its own
  (`CLAIMROUTE_LOCUST_PLAN`, set for the master only; the requests carry the users' tokens,
  so the master deletes each file as soon as it has read it): the proxy URL and the planned
  requests between two timeline boundaries, each as `[index, method, absolute URL,
  headers]` (and optionally a body, as text), and how upstreams say who served an answer
  (the scenario's `served_by`).
- The master loads it and hands requests out in small batches to the workers that ask for
  them (`want` -> `work`), so fast workers take more and any number of workers is fine.
- Each worker's users send their requests through the proxy (absolute-form, like a browser
  configured with an HTTP proxy) and report one outcome per request (`outcomes`): status, the
  upstream's own word on who served it (read in the order of the runner's
  `attribution.served_word`; the runner maps it to an upstream), latency, wall clock
  start/end, error.
- The master appends the outcomes to `outcomes.jsonl` in the run's Locust folder
  (`CLAIMROUTE_LOCUST_DIR`; no tokens there); when every request of the segment has its
  outcome it writes `segment-K.done` into the private folder. The runner then runs the
  timeline's steps and writes the next segment. `finish` (private folder too) makes the
  master quit (and with it every worker).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
from gevent.event import Event
from locust import User, events, task
from locust.contrib.fasthttp import FastHttpSession
from locust.runners import MasterRunner, WorkerRunner

RUN_DIR_ENV = "CLAIMROUTE_LOCUST_DIR"  # outcomes.jsonl (kept for the report)
PLAN_DIR_ENV = "CLAIMROUTE_LOCUST_PLAN"  # segment files, markers (private; default: the same)
POLL = 0.02  # seconds between looks at the run folder / an idle worker's next ask
FLUSH = 0.05  # a worker sends its outcomes at least this often
MAX_SECONDS = 24 * 3600  # the master's folder watcher gives up after this long


# -- master ---------------------------------------------------------------------------------


class _Master:
    """Serves the current segment's requests and collects the outcomes."""

    def __init__(self, environment: Any, folder: Path, plan: Path) -> None:
        self.environment = environment
        self.folder = folder
        self.plan = plan
        self.segment = -1
        self.queue: deque[list[Any]] = deque()
        self.proxy = ""
        self.timeout = 60.0
        self.served_by: dict[str, Any] | None = None
        self.expected = 0
        self.received = 0
        self.active = False
        self.out = (folder / "outcomes.jsonl").open("a", encoding="utf-8")

    def watch(self) -> None:
        """Load each next segment file as it appears; quit on `finish`."""
        deadline = time.monotonic() + MAX_SECONDS
        while time.monotonic() < deadline:
            if (self.plan / "finish").exists():
                break
            nxt = self.plan / f"segment-{self.segment + 1}.json"
            if not self.active and nxt.exists():
                document = json.loads(nxt.read_text(encoding="utf-8"))
                nxt.unlink(missing_ok=True)  # it holds tokens: keep them on disk no longer
                self.segment += 1
                self.proxy = document["proxy"]
                self.timeout = float(document.get("timeout", self.timeout))
                self.served_by = document.get("served_by")
                self.queue = deque(document["requests"])
                self.expected, self.received = len(self.queue), 0
                self.active = True
                if not self.expected:
                    self._segment_done()
            gevent.sleep(POLL)
        self.out.close()
        self.environment.runner.quit()

    def on_want(self, environment: Any, msg: Any) -> None:
        count = max(1, int(msg.data.get("n", 1)))
        batch = [self.queue.popleft() for _ in range(min(count, len(self.queue)))]
        data = {
            "segment": self.segment,
            "proxy": self.proxy,
            "timeout": self.timeout,
            "served_by": self.served_by,
            "requests": batch,
        }
        environment.runner.send_message("work", data, client_id=msg.node_id)

    def on_outcomes(self, environment: Any, msg: Any) -> None:
        for outcome in msg.data:
            self.out.write(json.dumps(outcome, separators=(",", ":")) + "\n")
            if outcome.get("segment") == self.segment:
                self.received += 1
        self.out.flush()
        if self.active and self.received >= self.expected:
            self._segment_done()

    def _segment_done(self) -> None:
        self.active = False
        (self.plan / f"segment-{self.segment}.done").write_text(str(self.received))


# -- worker ---------------------------------------------------------------------------------


class _Worker:
    """The worker's share: a local queue filled from the master, and outcomes sent back."""

    def __init__(self, environment: Any) -> None:
        self.environment = environment
        self.queue: deque[tuple[int, str, list[Any]]] = deque()  # (segment, proxy, request)
        self.asking = False
        self.idle_until = 0.0
        self.timeout = 60.0  # seconds per request; the master sends the scenario's
        self.served_by: dict[str, Any] | None = None  # the scenario's, from the master
        self.arrived = Event()
        self.outcomes: list[dict[str, Any]] = []
        self.flusher = gevent.spawn(self._flush_loop)

    def on_work(self, environment: Any, msg: Any) -> None:
        data = msg.data
        self.timeout = float(data.get("timeout", self.timeout))
        self.served_by = data.get("served_by")
        for request in data["requests"]:
            self.queue.append((data["segment"], data["proxy"], request))
        if not data["requests"]:
            self.idle_until = time.monotonic() + POLL  # nothing now: ask again a bit later
        self.asking = False
        self.arrived.set()

    def next(self) -> tuple[int, str, list[Any]]:
        """The next request for one of this worker's users (waits while there is none)."""
        while not self.queue:
            if not self.asking and time.monotonic() >= self.idle_until:
                self.asking = True
                users = max(1, self.environment.runner.user_count)
                self.environment.runner.send_message("want", {"n": 2 * users})
            self.arrived.clear()
            self.arrived.wait(POLL)
        return self.queue.popleft()

    def report(self, outcome: dict[str, Any]) -> None:
        self.outcomes.append(outcome)
        if len(self.outcomes) >= 200:
            self.flush()

    def flush(self) -> None:
        if self.outcomes:
            batch, self.outcomes = self.outcomes, []
            self.environment.runner.send_message("outcomes", batch)

    def _flush_loop(self) -> None:
        while True:
            gevent.sleep(FLUSH)
            self.flush()


_master: _Master | None = None
_worker: _Worker | None = None


@events.init.add_listener
def _on_init(environment: Any, **_kwargs: Any) -> None:
    global _master, _worker
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        folder = os.environ.get(RUN_DIR_ENV)
        if not folder:
            raise SystemExit(f"{RUN_DIR_ENV} is not set: run this through claimroute scenario")
        _master = _Master(environment, Path(folder), Path(os.environ.get(PLAN_DIR_ENV) or folder))
        runner.register_message("want", _master.on_want)
        runner.register_message("outcomes", _master.on_outcomes)
    elif isinstance(runner, WorkerRunner):
        _worker = _Worker(environment)
        runner.register_message("work", _worker.on_work)


@events.test_start.add_listener
def _on_test_start(environment: Any, **_kwargs: Any) -> None:
    if _master is not None:
        gevent.spawn(_master.watch)


@events.test_stop.add_listener
def _on_test_stop(environment: Any, **_kwargs: Any) -> None:
    if _worker is not None:
        _worker.flush()


@events.quitting.add_listener
def _on_quitting(environment: Any, **_kwargs: Any) -> None:
    # A 4xx/5xx answer is an outcome to record, not a failure of the run.
    environment.process_exit_code = 0


# -- the user -------------------------------------------------------------------------------


def _header(headers: Any, name: str) -> str | None:
    value = headers.get(name) if headers else None
    if isinstance(value, list):  # a repeated header: the first, as aiohttp's get() gives
        value = value[0] if value else None
    return str(value) if value is not None else None


def _json_field(body: bytes, path: list[str]) -> str | None:
    try:
        value: Any = json.loads(body)
    except ValueError:
        return None
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    return None


def said(headers: Any, body: bytes, served_by: dict[str, Any] | None) -> tuple[str | None, bool]:
    """What the answer says about who served it, and whether the scenario's `served_by` said
    it (the runner maps that word to an upstream). The same order as the runner's
    `attribution.served_word`: served_by, then `x-upstream`, then the echo JSON `upstream`."""
    content_type = (_header(headers, "content-type") or "").split(";")[0].strip().lower()
    if served_by:
        if served_by.get("header"):
            word = _header(headers, served_by["header"])
        else:
            json_ok = "json" in content_type
            word = _json_field(body, served_by.get("json") or []) if json_ok else None
        if word is not None:
            return word, True
    name = _header(headers, "x-upstream")
    if name:
        return name, False
    if content_type == "application/json":
        found = _json_field(body, ["upstream"])
        if found:
            return found, False
    return None, False


class ScenarioUser(User):
    """One concurrent client: takes the next planned request, sends it, reports the outcome."""

    # Each user is one greenlet with its own keep-alive connection, like one aiohttp worker.
    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.proxy = ""
        self.session: FastHttpSession | None = None

    def _session_for(self, proxy: str, timeout: float) -> FastHttpSession:
        if self.session is None or proxy != self.proxy:
            parts = urlsplit(proxy)  # an empty proxy: straight to the target (benchmarks)
            self.session = FastHttpSession(
                None,
                request_event=self.environment.events.request,
                user=self,
                proxy_host=parts.hostname if proxy else None,
                proxy_port=(parts.port or 80) if proxy else None,
                network_timeout=timeout,
                connection_timeout=timeout,
                max_retries=1,
            )
            self.session.client.cookiejar = None  # as the built-in engine: no cookies
            self.proxy = proxy
        return self.session

    @task
    def send(self) -> None:
        """Send the next planned request and report what came back (never raises)."""
        if _worker is None:
            gevent.sleep(1)
            return
        segment, proxy, request = _worker.next()
        index, method, url, headers = request[:4]
        body = request[4] if len(request) > 4 else None  # the body as text, if any
        session = self._session_for(proxy, _worker.timeout)
        outcome: dict[str, Any] = {"index": index, "segment": segment, "started": time.time()}
        clock = time.perf_counter()
        name = f"{method} {urlsplit(url).path}"
        with session.request(
            method, url, name=name, headers=headers, data=body, catch_response=True
        ) as response:
            if response.status_code:
                outcome["status"] = response.status_code
                body = response.content or b""
                word, by_rule = said(response.headers, body, _worker.served_by)
                outcome["said"] = word
                outcome["said_by_rule"] = by_rule
                if word is None or by_rule:  # the runner may find it names no upstream
                    reason = body[:120].decode("utf-8", "replace").strip()
                    outcome["reason"] = reason or None
                response.success()
            else:
                error = response.error
                outcome["error"] = f"{type(error).__name__}: {error}"[:200]
                response.failure(error)
        outcome["latency_ms"] = (time.perf_counter() - clock) * 1000
        outcome["ended"] = time.time()
        _worker.report(outcome)
