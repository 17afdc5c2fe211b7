"""`--engine locust`: the scenario's traffic sent by Locust (a master and worker processes).

Locust runs as subprocesses (`python -m locust`, master plus N local workers; more workers may
join from other machines with Locust's own `--master-host`): gevent monkeypatches the process
it runs in, so it never runs inside the runner's asyncio process. The locustfile shipped next
to this module (`locustfile.py`) does the Locust side; the two talk through files:

- `segment-K.json` (written here): the planned requests between two timeline boundaries, each
  with its absolute URL and its headers, the user's token included. So they go to a private
  temporary folder (mode 0700, files 0600, never the run directory), the master deletes each
  one once read, and the folder is removed when the run ends (also on failure and Ctrl-C);
- `outcomes.jsonl` (written by the master into the run's `locust/` folder, with Locust's
  logs): one outcome per request, as the workers saw it (no headers, no tokens);
- `segment-K.done` (master, private folder): every request of segment K has its outcome:
  the timeline's steps run now, exactly as with the built-in engine (traffic stops at the
  boundary and waits for every request in flight);
- `finish` (here, private folder): the master quits, and with it every worker.

Locust's processes run in their own session (Ctrl-C reaches the runner only, which stops
them), and die with the runner when it is killed (PR_SET_PDEATHSIG, Linux).

So one Locust run covers the whole timeline; a boundary costs the time to drain the requests
in flight plus a few file polls (20 ms each), not a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from claimroute_tools.procutil import die_with_parent
from claimroute_tools.scenario.model import Scenario
from claimroute_tools.scenario.traffic import (
    PlannedRequest,
    ProgressReporter,
    RequestResult,
    StepRunner,
    TrafficRun,
    User,
    request_parts,
)

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
RUN_DIR_ENV = "CLAIMROUTE_LOCUST_DIR"  # as in locustfile.py: outcomes.jsonl
PLAN_DIR_ENV = "CLAIMROUTE_LOCUST_PLAN"  # as in locustfile.py: segments, markers (private)
POLL = 0.02
START_WAIT = 60  # seconds the master waits for its workers
STOP_WAIT = 20.0  # seconds to let Locust quit before it is killed
INSTALL_HINT = "the locust engine needs Locust: install claimroute[locust]"


class LocustUnavailable(RuntimeError):
    """Locust (or gevent) is not installed."""


class LocustFailed(RuntimeError):
    """The Locust master or a worker stopped before the traffic was sent."""


class LocustUnsupported(LocustFailed):
    """The scenario asks for something the Locust engine does not do (yet)."""


def unsupported(scenario: Scenario) -> str | None:
    """Why `scenario` cannot run on Locust, or None. The engine replays a planned list of
    requests in a closed loop: an open-model `rate` and a `duration` instead of a request
    count are the built-in engine's alone."""
    traffic = scenario.traffic
    refused = [name for name in ("rate", "duration") if getattr(traffic, name, None) is not None]
    if refused:
        return (
            f"traffic.{' and traffic.'.join(refused)} not supported with --engine locust "
            "(it sends a planned number of requests in a closed loop); use --engine builtin"
        )
    return None


@dataclass(frozen=True, slots=True)
class LocustOptions:
    """How Locust runs: local workers, and optionally workers from other machines."""

    workers: int = 2  # local worker processes started by the runner
    remote_workers: int = 0  # more workers the master waits for (`locust --worker ...`)
    master_host: str = "127.0.0.1"  # where the master listens for workers
    master_port: int = 0  # 0: a port the OS picks (give a fixed one for remote workers)
    proxy_url: str | None = None  # the proxy as the workers reach it (default: the world's)

    @property
    def expected_workers(self) -> int:
        """How many workers the master waits for before it starts."""
        return self.workers + self.remote_workers


def check_available() -> None:
    """Raise LocustUnavailable unless Locust and gevent can be imported (without importing
    them here: gevent would monkeypatch this process)."""
    missing = [name for name in ("locust", "gevent") if importlib.util.find_spec(name) is None]
    if missing:
        raise LocustUnavailable(f"{INSTALL_HINT} ({', '.join(missing)} not importable)")


def request_item(planned: PlannedRequest, user: User, target_url: str) -> list[Any]:
    """One planned request as the locustfile takes it: `[index, method, URL, headers]` plus
    the body as text when there is one. Headers and body are the built-in engine's own
    (`traffic.request_parts`: request id, population and mix headers, JSON body, token)."""
    headers, body = request_parts(planned, user)
    item: list[Any] = [planned.index, planned.method, target_url + planned.path, headers]
    if body is not None:
        item.append(body.decode("utf-8"))  # a rendered JSON body: UTF-8 text
    return item


def _served_by(scenario: Scenario) -> dict[str, Any] | None:
    served_by = scenario.served_by
    if served_by is None:
        return None
    return {"header": served_by.header, "json": list(served_by.json or ())}


def _answered_by(record: dict[str, Any], scenario: Scenario) -> str | None:
    """The upstream an outcome's word names (as `attribution.served_word` maps it)."""
    word = record.get("said")
    if not isinstance(word, str):
        return None
    served_by = scenario.served_by
    if record.get("said_by_rule") and served_by is not None:
        return served_by.name_for(word)
    return word


def _free_port(host: str) -> int:
    # A small race (another process could take it before the master binds): acceptable for a
    # local run; remote workers need a fixed port anyway.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _write_privately(path: Path, text: str) -> None:
    """Write `path` readable by this user only (0600), atomically (the master polls it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


class _LocustProcesses:
    """The master and the local workers, with their logs; `close()` stops every one.

    `folder` keeps the logs and the outcomes; `plan` (private) the segment files and markers.
    """

    def __init__(self, folder: Path, plan: Path, options: LocustOptions, users: int,
                 budget: float) -> None:  # fmt: skip
        self.folder = folder
        self.plan = plan
        self.options = options
        self.users = users
        self.budget = budget
        self.master: asyncio.subprocess.Process | None = None
        self.workers: list[asyncio.subprocess.Process] = []
        self._logs: list[IO[bytes]] = []
        self.port = options.master_port or _free_port(options.master_host)

    async def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Any:
        log = (self.folder / f"{name}.log").open("wb")
        self._logs.append(log)
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
            env=env, start_new_session=True,
            # Killed with the runner (a SIGKILLed runner cannot stop them itself): SIGKILL,
            # as there is nothing left for them to finish once the runner is gone.
            preexec_fn=die_with_parent(signal.SIGKILL),
        )  # fmt: skip

    async def start(self) -> None:
        """Start the master, then the local workers."""
        env = {**os.environ, RUN_DIR_ENV: str(self.folder), PLAN_DIR_ENV: str(self.plan),
               "PYTHONUNBUFFERED": "1"}  # fmt: skip
        opts = self.options
        run_time = f"{int(self.budget) + 60}s"  # a backstop: the runner ends the run itself
        self.master = await self._spawn("master", [
            "--headless", "--master", "--master-bind-host", opts.master_host,
            "--master-bind-port", str(self.port), "--expect-workers", str(opts.expected_workers),
            "--expect-workers-max-wait", str(START_WAIT), "-u", str(self.users),
            "-r", str(self.users), "-t", run_time, "--stop-timeout", "0", "--only-summary",
        ], env)  # fmt: skip
        connect = "127.0.0.1" if opts.master_host in ("0.0.0.0", "") else opts.master_host
        worker_env = {k: v for k, v in env.items() if k not in (RUN_DIR_ENV, PLAN_DIR_ENV)}
        for index in range(opts.workers):
            worker = await self._spawn(f"worker-{index}", [
                "--worker", "--master-host", connect, "--master-port", str(self.port),
            ], worker_env)  # fmt: skip
            self.workers.append(worker)

    def failure(self) -> str | None:
        """Why Locust cannot go on (the master or a worker exited), or None."""
        if self.master is not None and self.master.returncode is not None:
            return f"the Locust master exited (code {self.master.returncode})"
        for index, worker in enumerate(self.workers):
            if worker.returncode is not None:
                return f"Locust worker {index} exited (code {worker.returncode})"
        return None

    def log_tail(self, lines: int = 30) -> str:
        """The end of the master's log and of any worker that failed."""
        out = []
        names = ["master", *(f"worker-{i}" for i in range(len(self.workers)))]
        for name in names:
            path = self.folder / f"{name}.log"
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    out.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(out)

    async def close(self) -> None:
        """Ask the master to quit (it stops the workers); kill whatever is left."""
        with contextlib.suppress(OSError):
            (self.plan / "finish").write_text("")
        for proc in [p for p in (self.master, *self.workers) if p is not None]:
            try:
                await asyncio.wait_for(proc.wait(), STOP_WAIT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: only Locust's
                await proc.wait()
        for log in self._logs:
            log.close()


class _Outcomes:
    """Reads `outcomes.jsonl` as the master appends to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.records: dict[int, dict[str, Any]] = {}

    def read_new(self) -> int:
        """Parse what was appended since the last call; returns how many new outcomes."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return 0
        self.offset += len(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = lines.pop()
        new = 0
        for line in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                index = record.get("index")
                if isinstance(index, int) and index not in self.records:
                    self.records[index] = record
                    new += 1
        return new


def _result(record: dict[str, Any], planned: PlannedRequest, user: User, phase: int,
            kid: str | None, answered_by: str | None) -> RequestResult:  # fmt: skip
    status = record.get("status")
    started = float(record.get("started") or 0.0)
    return RequestResult(
        index=planned.index,
        user=user.id,
        population=user.population.name,
        phase=phase,
        method=planned.method,
        path=planned.path,
        kid=kid,
        started=started,
        ended=float(record.get("ended") or started),
        latency_ms=float(record.get("latency_ms") or 0.0),
        status=status if isinstance(status, int) and status > 0 else None,
        error=record.get("error"),
        answered_by=answered_by,
        reason=record.get("reason") if answered_by is None else None,
    )


async def _drain(
    done: Path,
    locust: _LocustProcesses,
    outcomes: _Outcomes,
    progress: ProgressReporter,
    deadline: float,
) -> bool:
    """Wait until the master marks the segment done (True) or the time budget is spent."""
    while not done.exists() and time.monotonic() < deadline:
        for _ in range(outcomes.read_new()):
            progress.advance()
        failure = locust.failure()
        if failure is not None:
            raise LocustFailed(f"{failure}; logs in {locust.folder}\n{locust.log_tail()}")
        await asyncio.sleep(POLL)
    for _ in range(outcomes.read_new()):
        progress.advance()
    return done.exists()


async def drive_locust(
    scenario: Scenario,
    users: list[User],
    plan: Sequence[PlannedRequest] | Iterator[PlannedRequest],
    *,
    proxy_url: str,
    target_url: str,
    run_steps: StepRunner,
    boundaries: Sequence[float],
    progress: ProgressReporter,
    options: LocustOptions | None = None,
    run_dir: Path | None = None,
) -> TrafficRun:
    """`traffic.drive`, with Locust sending the requests: the same plan, the same timeline
    (steps at their request boundaries, after the requests in flight), the same time budget,
    the same results. `traffic.concurrency` is the number of Locust users over all workers.

    Raises LocustUnavailable when Locust is not installed, LocustUnsupported for what only
    the built-in engine does (see `unsupported`), LocustFailed when Locust stops.
    """
    check_available()
    refused = unsupported(scenario)
    if refused is not None:
        raise LocustUnsupported(f"{scenario.name}: {refused}")
    if not isinstance(plan, Sequence):  # a duration run's plan (refused above already)
        raise LocustUnsupported(f"{scenario.name}: the Locust engine needs a planned list")
    options = options or LocustOptions()
    traffic = scenario.traffic
    deadline = time.monotonic() + traffic.time_budget
    folder = Path(tempfile.mkdtemp(prefix="claimroute-locust-")) if run_dir is None else run_dir
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*"):  # an earlier run's (older versions left segments here)
        if stale.is_file():
            stale.unlink()
    # The segments carry every user's token: a private folder (mkdtemp: 0700), removed below.
    plan_dir = Path(tempfile.mkdtemp(prefix="claimroute-locust-plan-"))
    outcomes = _Outcomes(folder / "outcomes.jsonl")
    by_index = {planned.index: planned for planned in plan}
    phases: dict[int, tuple[int, str | None]] = {}  # index -> (phase, kid) when it was sent
    started = time.time()
    incomplete: str | None = None
    traffic_time = 0.0  # seconds of sending, steps excluded
    edges = sorted({0, *boundaries, len(plan)})
    locust = _LocustProcesses(folder, plan_dir, options, traffic.concurrency,
                              traffic.time_budget)  # fmt: skip
    try:
        await locust.start()
        phase = 0
        pairs = zip(edges, [*edges[1:], None], strict=True)
        for segment, (start, end) in enumerate(pairs):
            if start in boundaries:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    incomplete = f"time budget of {traffic.time_budget:g}s spent before a step"
                    break
                try:
                    async with asyncio.timeout(remaining):
                        phase = await run_steps(start)
                except TimeoutError:
                    incomplete = f"time budget of {traffic.time_budget:g}s spent during a step"
                    break
            if end is None:
                break
            requests = []
            for planned in plan[int(start) : int(end)]:
                user = users[planned.user]
                phases[planned.index] = (phase, user.kid)  # the token it is sent with
                requests.append(request_item(planned, user, target_url))
            document = {
                "proxy": options.proxy_url or proxy_url,
                "timeout": traffic.request_timeout,
                "served_by": _served_by(scenario),
                "requests": requests,
            }
            _write_privately(plan_dir / f"segment-{segment}.json", json.dumps(document))
            clock = time.monotonic()
            drained = await _drain(plan_dir / f"segment-{segment}.done", locust, outcomes,
                                   progress, deadline)  # fmt: skip
            traffic_time += time.monotonic() - clock
            if not drained:
                incomplete = (
                    f"time budget of {traffic.time_budget:g}s spent after "
                    f"{len(outcomes.records)} of {len(plan)} requests"
                )
                break
    finally:
        try:
            await asyncio.shield(locust.close())
        finally:  # also when closing fails or is cancelled (Ctrl-C)
            shutil.rmtree(plan_dir, ignore_errors=True)
    for _ in range(outcomes.read_new()):
        progress.advance()
    results = []
    for index, record in sorted(outcomes.records.items()):
        planned = by_index.get(index)
        if planned is None or index not in phases:
            continue  # not ours: never sent by this run
        phase, kid = phases[index]
        answered_by = _answered_by(record, scenario)
        results.append(_result(record, planned, users[planned.user], phase, kid, answered_by))
    return TrafficRun(results, len(plan), started, time.time(), incomplete,
                      traffic_time=traffic_time)  # fmt: skip
