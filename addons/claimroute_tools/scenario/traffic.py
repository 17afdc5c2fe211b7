"""Users, their tokens, and the traffic they send through the proxy.

Each user gets one token, minted once (the only re-mints are the documented ones after a
`rotate_keys` step). Requests are spread over the users in shuffled rounds, so every user is
used before any user is used again, and each picks a request kind from its mix; both draws
come from one seeded RNG, so a seed always gives the same plan. Traffic goes through mitmdump
in regular proxy mode (aiohttp `proxy=`), with bounded concurrency and a total time budget.

Which upstream served a request is read from the upstream's own answer (`x-upstream`, or the
echo JSON `upstream`), never from the addon. Every request carries a unique
`x-claimroute-scenario-request` header, so the echo servers' records also tell which upstream
*saw* it, even when no answer came back.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from claimroute_tools.lab import EchoUpstream, TestIssuer, split_compact
from claimroute_tools.scenario.model import Population, RequestKind, Scenario

REQUEST_ID_HEADER = "x-claimroute-scenario-request"
ATTRIBUTION_SLACK = 0.05  # seconds: clock granularity between our timestamps and the addon's


@dataclass(slots=True)
class User:
    """One synthetic user and the token it currently holds."""

    id: int
    population: Population
    index: int  # 1-based within the population
    sub: str | None
    claims: dict[str, Any]  # the user's own claims (before iss/sub/iat/exp are added)
    token: str | None = None
    kid: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)  # what the token says
    mints: int = 0

    @property
    def label(self) -> str:
        """`population#index`, unique per run."""
        return f"{self.population.name}#{self.index}"


def _fill(value: Any, names: dict[str, str]) -> Any:
    """Replace `{name}`, `{i}`, `{sub}` in strings (only those; other braces stay)."""
    if isinstance(value, str):
        for key, text in names.items():
            value = value.replace("{" + key + "}", text)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    return value


def build_users(populations: Sequence[Population]) -> list[User]:
    """Every user of every population, with its sub and claims filled in (no tokens yet)."""
    users: list[User] = []
    for population in populations:
        for index in range(1, population.count + 1):
            names = {"name": population.name, "i": str(index)}
            sub = None if population.anonymous else _fill(population.sub, names)
            claims = _fill(population.claims, {**names, "sub": sub or ""})
            users.append(User(len(users), population, index, sub, claims))
    return users


class TokenBook:
    """Mints and holds one token per user; counts every mint."""

    def __init__(self, users: list[User], issuers: dict[str, TestIssuer]) -> None:
        self.users = users
        self.issuers = issuers

    @property
    def minted(self) -> int:
        """How many tokens were minted so far."""
        return sum(user.mints for user in self.users)

    def _mint(self, user: User) -> None:
        population = user.population
        if population.issuer is None:
            return
        issuer = self.issuers[population.issuer]
        token = issuer.mint(user.sub, user.claims, tamper=population.tamper)
        header, payload, _ = split_compact(token)
        user.token, user.payload, user.mints = token, payload, user.mints + 1
        kid = header.get("kid")
        user.kid = kid if isinstance(kid, str) else None

    def mint_all(self) -> int:
        """Give every user with an issuer its token; returns how many were minted."""
        before = self.minted
        for user in self.users:
            self._mint(user)
        return self.minted - before

    def remint(self, issuer: str, populations: bool | tuple[str, ...]) -> int:
        """Fresh tokens for the users of `issuer` (all, none, or the named populations)."""
        if populations is False:
            return 0
        before = self.minted
        for user in self.users:
            if user.population.issuer != issuer:
                continue
            if populations is True or user.population.name in populations:
                self._mint(user)
        return self.minted - before


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request of the plan."""

    index: int
    user: int
    method: str
    path: str


def plan_requests(
    users: Sequence[User], mix: Sequence[RequestKind], total: int, seed: int
) -> list[PlannedRequest]:
    """`total` requests over `users` in shuffled rounds; deterministic for a given seed."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < total:
        ids = list(range(len(users)))
        rng.shuffle(ids)
        order.extend(ids)
    plan = []
    for index, user_id in enumerate(order[:total]):
        kinds = users[user_id].population.mix or mix
        kind = rng.choices(kinds, weights=[k.weight for k in kinds])[0]
        plan.append(PlannedRequest(index, user_id, kind.method, kind.path))
    return plan


@dataclass(slots=True)
class RequestResult:
    """What happened to one request."""

    index: int
    user: int
    population: str
    phase: int  # how many timeline steps had run when it was sent
    method: str
    path: str
    kid: str | None
    started: float  # wall clock, like the addon's decision log
    ended: float = 0.0
    latency_ms: float = 0.0
    status: int | None = None  # None: no HTTP answer at all
    error: str | None = None
    answered_by: str | None = None  # the upstream that answered, by its own word
    reason: str | None = None  # body of an answer that did not come from an upstream
    seen_by: tuple[str, ...] = ()  # upstreams whose records contain this request
    route: str | None = None  # from the addon's decision log (attribution only)
    bucket: int | None = None  # ditto

    @property
    def upstream(self) -> str:
        """The upstream that served it, or "none"."""
        return self.answered_by or "none"

    @property
    def status_label(self) -> str:
        """The status as text; "error" when the connection failed."""
        return str(self.status) if self.status is not None else "error"


@dataclass(slots=True)
class TrafficRun:
    """The outcome of sending the plan."""

    results: list[RequestResult]
    planned: int
    started: float
    finished: float
    incomplete: str | None = None  # why not every planned request was sent

    @property
    def duration(self) -> float:
        """Seconds from the first request to the last answer (steps included)."""
        return self.finished - self.started


class ProgressReporter:
    """A rich progress bar on a terminal; a few plain lines otherwise (readable CI logs)."""

    def __init__(self, total: int, console: Console, enabled: bool | None = None) -> None:
        self.total = total
        self.console = console
        self.live = console.is_terminal if enabled is None else enabled
        self._done = 0
        self._next_mark = 0.25
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> ProgressReporter:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]traffic"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("traffic", total=self.total, note="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self) -> None:
        """One more request finished."""
        self._done += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1)
        elif self.total and self._done / self.total >= self._next_mark:
            self.console.print(f"traffic: {self._done}/{self.total} requests")
            while self._next_mark <= self._done / self.total:
                self._next_mark += 0.25

    def note(self, text: str) -> None:
        """A timeline event: printed above the bar (or as a line)."""
        if self._progress is not None:
            self._progress.update(self._task, note=text)
            self._progress.console.print(text)
        else:
            self.console.print(text)


def _upstream_of(response: aiohttp.ClientResponse, body: bytes) -> str | None:
    name = response.headers.get("x-upstream")
    if name:
        return name
    if response.content_type == "application/json":
        try:
            document = json.loads(body)
        except ValueError:
            return None
        if isinstance(document, dict) and isinstance(document.get("upstream"), str):
            return document["upstream"]
    return None


async def send_one(
    session: aiohttp.ClientSession,
    proxy_url: str,
    target_url: str,
    planned: PlannedRequest,
    user: User,
    phase: int,
) -> RequestResult:
    """Send one request through the proxy and record what came back (never raises)."""
    headers = {REQUEST_ID_HEADER: str(planned.index), **dict(user.population.headers)}
    if user.token is not None:
        headers["Authorization"] = f"Bearer {user.token}"
    result = RequestResult(
        index=planned.index,
        user=user.id,
        population=user.population.name,
        phase=phase,
        method=planned.method,
        path=planned.path,
        kid=user.kid,
        started=time.time(),
    )
    clock = time.perf_counter()
    try:
        async with session.request(
            planned.method, target_url + planned.path, headers=headers, proxy=proxy_url
        ) as response:
            body = await response.read()
            result.status = response.status
            result.answered_by = _upstream_of(response, body)
            if result.answered_by is None:
                result.reason = body[:120].decode("utf-8", "replace").strip() or None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    result.latency_ms = (time.perf_counter() - clock) * 1000
    result.ended = time.time()
    return result


type StepRunner = Callable[[int], Awaitable[int]]


async def drive(
    scenario: Scenario,
    users: list[User],
    plan: list[PlannedRequest],
    *,
    proxy_url: str,
    target_url: str,
    run_steps: StepRunner,
    boundaries: Sequence[int],
    progress: ProgressReporter,
) -> TrafficRun:
    """Send `plan` with bounded concurrency; at each boundary index, wait for every request in
    flight, then `run_steps(index)` (which returns how many steps have run so far).

    Stops sending when the time budget is spent; the run is then marked incomplete.
    """
    traffic = scenario.traffic
    deadline = time.monotonic() + traffic.time_budget
    results: list[RequestResult] = []
    started = time.time()
    incomplete: str | None = None
    connector = aiohttp.TCPConnector(limit=traffic.concurrency)
    timeout = aiohttp.ClientTimeout(total=traffic.request_timeout)
    edges = sorted({0, *boundaries, len(plan)})
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:
        phase = 0
        for start, end in zip(edges, [*edges[1:], None], strict=True):
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
            queue = iter(plan[start:end])  # shared: each worker takes the next request

            async def worker(queue: Iterator[PlannedRequest], phase: int) -> None:
                for planned in queue:
                    if time.monotonic() >= deadline:
                        return
                    result = await send_one(
                        session, proxy_url, target_url, planned, users[planned.user], phase
                    )
                    results.append(result)
                    progress.advance()

            workers = min(traffic.concurrency, end - start)
            await asyncio.gather(*(worker(queue, phase) for _ in range(workers)))
            if time.monotonic() >= deadline and len(results) < end:
                incomplete = (
                    f"time budget of {traffic.time_budget:g}s spent after {len(results)} of "
                    f"{len(plan)} requests"
                )
                break
    results.sort(key=lambda r: r.index)
    return TrafficRun(results, len(plan), started, time.time(), incomplete)


def mark_seen(results: list[RequestResult], upstreams: dict[str, EchoUpstream]) -> None:
    """Fill `seen_by` from what each echo upstream recorded."""
    seen: dict[int, set[str]] = defaultdict(set)
    for name, upstream in upstreams.items():
        for record in upstream.received:
            value = record.header(REQUEST_ID_HEADER)
            if value is not None and value.isdigit():
                seen[int(value)].add(name)
    for result in results:
        result.seen_by = tuple(sorted(seen.get(result.index, ())))


def read_decisions(path: Path) -> list[dict[str, Any]]:
    """The addon's decision log (one JSON object per line); unreadable lines are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("ts"), int | float):
            out.append(record)
    return out


def attribute_routes(
    results: list[RequestResult], users: list[User], decisions: list[dict[str, Any]]
) -> int:
    """Give each request the route the addon logged for it; returns how many were matched.

    A decision that carries the request's id (`request_id`: the scenario sends its index in
    REQUEST_ID_HEADER and the world has the addon log it) is matched exactly; a request's
    second decision (a client retry of a killed flow) is dropped. Any other is matched by
    (method, path, sub) and by time: its timestamp must fall inside the request's send..answer
    window; requests with the same key at the same time take the same route (same user, same
    policy), so a swap is harmless. This is attribution only; which upstream served a request
    never comes from the log.
    """
    by_index = {result.index: result for result in results}
    pending = dict(by_index)  # requests not yet given a decision
    matched = 0
    loose: list[dict[str, Any]] = []
    for record in decisions:
        request_id = record.get("request_id")
        index = int(request_id) if _is_index(request_id) else None
        if index is None or index not in by_index:
            loose.append(record)  # no id, or not one of ours: the time join may place it
            continue
        result = pending.pop(index, None)
        if result is None:
            continue  # a second decision for one request (a client retry): it has its first
        _attribute(result, record)
        matched += 1
    unmatched = sorted(pending.values(), key=lambda r: r.started)
    return matched + _attribute_by_time(unmatched, users, loose)


def _is_index(value: Any) -> bool:
    return isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 12


def _attribute(result: RequestResult, record: dict[str, Any]) -> None:
    result.route = record.get("route")
    bucket = record.get("bucket")
    result.bucket = bucket if isinstance(bucket, int) else None


def _attribute_by_time(
    results: list[RequestResult], users: list[User], decisions: list[dict[str, Any]]
) -> int:
    """The fallback join by (method, path, sub) and time for decisions without a request id."""
    pending: dict[tuple[str, str, str | None], list[dict[str, Any]]] = defaultdict(list)
    for record in sorted(decisions, key=lambda r: r["ts"]):
        path = urlsplit(str(record.get("url", ""))).path or "/"
        sub = record.get("sub")
        if not isinstance(sub, str):
            sub = None  # the addon logs a string or null; anything else joins as anonymous
        pending[(str(record.get("method", "")), path, sub)].append(record)
    cursor: dict[tuple[str, str, str | None], int] = defaultdict(int)
    matched = 0
    for result in sorted(results, key=lambda r: r.started):
        path = result.path.split("?", 1)[0]
        # A refused token is logged without sub: fall back to the anonymous key.
        for sub in dict.fromkeys((users[result.user].sub, None)):
            key = (result.method, path, sub)
            queue = pending.get(key)
            if not queue:
                continue
            i = cursor[key]
            while i < len(queue) and queue[i]["ts"] < result.started - ATTRIBUTION_SLACK:
                i += 1  # an unmatched decision (e.g. a client retry): skip it
            found = i < len(queue) and queue[i]["ts"] <= result.ended + ATTRIBUTION_SLACK
            if found:
                _attribute(result, queue[i])
                matched += 1
                i += 1
            cursor[key] = i
            if found:
                break
    return matched
