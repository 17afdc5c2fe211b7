"""Users, their tokens, and the traffic they send through the proxy.

Each user gets one token, minted once (the only re-mints are the documented ones after a
`rotate_keys` step). Requests are spread over the users in shuffled rounds, so every user is
used before any user is used again, and each picks a request kind from its mix; both draws
come from one seeded RNG, so a seed always gives the same plan. Traffic goes through mitmdump
in regular proxy mode (aiohttp `proxy=`), with bounded concurrency and a total time budget.

Which upstream served a request is read from the upstream's own answer (the scenario's
`served_by`, `x-upstream`, or the echo JSON `upstream`: attribution.py). Only for url
upstreams (services the runner does not start), where the answer does not say, the addon's
decision log decides (`attribute_routes`), and each result says which source decided. Every
request carries a unique `x-claimroute-scenario-request` header, so the echo servers' records
also tell which upstream *saw* it, even when no answer came back.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import defaultdict
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yarl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from claimroute_tools.lab import EchoUpstream, TestIssuer, split_compact
from claimroute_tools.scenario.attribution import name_by_url, read_answer, url_key
from claimroute_tools.scenario.model import (
    MAX_REQUESTS,
    NO_UPSTREAM,
    Population,
    RequestKind,
    Scenario,
    ServedBy,
    Traffic,
)
from claimroute_tools.scenario.pacing import Pacer
from claimroute_tools.scenario.templates import TemplateValues, fill_known
from claimroute_tools.scenario.tokens import Prepared, Provider, obtain

REQUEST_ID_HEADER = "x-claimroute-scenario-request"
FORWARDED_OUTCOMES = ("allowed", "anonymous")  # decisions after which the addon forwards
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


def build_users(populations: Sequence[Population]) -> list[User]:
    """Every user of every population, with its sub and claims filled in (no tokens yet)."""
    users: list[User] = []
    for population in populations:
        for index in range(1, population.count + 1):
            names = {"name": population.name, "i": str(index)}
            sub = None if population.anonymous else fill_known(population.sub, names)
            claims = fill_known(population.claims, {**names, "sub": sub or ""})
            users.append(User(len(users), population, index, sub, claims))
    return users


class TokenBook:
    """Mints (test issuers) or obtains (token sources: tokens.py) and holds one token per
    user; counts every token minted or obtained."""

    def __init__(
        self,
        users: list[User],
        issuers: dict[str, TestIssuer],
        providers: dict[str, Provider] | None = None,
        prepared: Prepared | None = None,
    ) -> None:
        self.users = users
        self.issuers = issuers
        self.providers = providers or {}
        self.prepared = prepared or Prepared()

    @property
    def minted(self) -> int:
        """How many tokens were minted so far."""
        return sum(user.mints for user in self.users)

    def _mint(self, user: User) -> None:
        population = user.population
        if population.issuer is None or population.token_source is not None:
            return  # anonymous, or tokens from a provider (obtain_all)
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

    async def obtain_all(self) -> int:
        """Every user's token: minted for test issuers (in a thread: RSA signing is slow),
        then obtained from token sources. Raises TokenFetchFailed (exit 3)."""
        minted = await asyncio.to_thread(self.mint_all)
        return minted + await obtain(self.users, self.providers, self.prepared)

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
    """One request of the plan: `path` as sent (templates filled in, values URL-quoted);
    `kind` is the mix entry it came from (its headers and body are filled at send time)."""

    index: int
    user: int
    method: str
    path: str
    kind: RequestKind | None = None


def _planned(index: int, user: User, kind: RequestKind) -> PlannedRequest:
    path = kind.path
    if kind.template is not None:
        filled = kind.template.render(template_values(user, index), url=True)
        # As the client puts it on the wire (yarl's normal form: `%40` -> `@`, `%2F` stays),
        # so the path in the results is the one the proxy and the decision log see.
        path = yarl.URL(filled).raw_path_qs
    return PlannedRequest(index, user.id, kind.method, path, kind)


def template_values(user: User, request: int) -> TemplateValues:
    """What request `request` of `user` fills its templates from."""
    return TemplateValues(
        sub=user.sub,
        i=user.index,
        name=user.population.name,
        request=request,
        claims=user.claims,
    )


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
        plan.append(_planned(index, users[user_id], kind))
    return plan


def iter_plan(
    users: Sequence[User], mix: Sequence[RequestKind], seed: int, limit: int | None = None
) -> Iterator[PlannedRequest]:
    """The plan of a duration run, made as it is consumed: the same shuffled rounds, one round
    drawn at a time (so its order differs from `plan_requests` for the same seed, but is just
    as deterministic); at most `limit` requests."""
    rng = random.Random(seed)
    index = 0
    while limit is None or index < limit:
        ids = list(range(len(users)))
        rng.shuffle(ids)
        for user_id in ids:
            if limit is not None and index >= limit:
                return
            kinds = users[user_id].population.mix or mix
            kind = rng.choices(kinds, weights=[k.weight for k in kinds])[0]
            yield _planned(index, users[user_id], kind)
            index += 1


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
    decided: str | None = None  # the upstream the decision log says the addon sent it to
    # True when `decided` is a url upstream (one that cannot be seen): the log's word counts.
    decision_counts: bool = False
    # A decision-log record was joined to it. An answer with no upstream's word and no record,
    # where url upstreams may not name themselves, is of unknown origin (expect.unknown).
    logged: bool = False
    # The answer named this, which is no declared upstream: not taken as who served it.
    undeclared: str | None = None

    @property
    def disagrees(self) -> bool:
        """True when the upstream's own word and the decision log name different upstreams
        (the word wins; the report counts these)."""
        return (
            self.answered_by is not None
            and self.decided is not None
            and "://" not in self.decided  # a URL: the log named no declared upstream
            and self.decided != self.answered_by
        )

    @property
    def source(self) -> str:
        """Who decided `upstream`: "upstream" (its own answer; "upstream, decision log
        disagrees" when the log named another), "decision log" (a url upstream whose answer
        did not say), "undeclared name" (the answer named no declared upstream), "unknown"
        (an answer that named nobody, with no decision-log record and no upstream's record),
        or "none" (nobody served it)."""
        if self.answered_by is not None:
            return "upstream, decision log disagrees" if self.disagrees else "upstream"
        if self.decided is not None and self.decision_counts:
            return "decision log"
        if self.undeclared is not None:
            return "undeclared name"
        if self.status is not None and not self.logged and not self.seen_by:
            return "unknown"
        return NO_UPSTREAM

    @property
    def upstream(self) -> str:
        """The upstream that served it (by its own word, else the decision log's for url
        upstreams), or "none"."""
        if self.answered_by is not None:
            return self.answered_by
        if self.decided is not None and self.decision_counts:
            return self.decided
        return NO_UPSTREAM

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
    traffic_time: float = 0.0  # seconds of traffic: steps and the waits before them excluded
    target_rate: float | None = None  # requests per second asked for (open model)
    delayed_by_cap: int = 0  # requests that waited: `concurrency` were in flight (open model)
    max_lag: float = 0.0  # the most a request left behind its scheduled time (open model)
    # Open model, duration run: arrivals due within the duration that the clock ran out for.
    unsent_on_schedule: int = 0

    @property
    def observed_rate(self) -> float | None:
        """Requests sent per second of traffic time (None before any traffic)."""
        return len(self.results) / self.traffic_time if self.traffic_time > 0 else None

    @property
    def duration(self) -> float:
        """Seconds from the first request to the last answer (steps included)."""
        return self.finished - self.started


class ProgressReporter:
    """A rich progress bar on a terminal; a few plain lines otherwise (readable CI logs).

    `total` None (a duration run): the bar counts requests without an end, and the plain
    lines come at each 25% of the traffic time (`advance(fraction)`).
    """

    def __init__(self, total: int | None, console: Console, enabled: bool | None = None) -> None:
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

    def advance(self, fraction: float | None = None) -> None:
        """One more request finished; `fraction`: of the traffic time, for duration runs."""
        self._done += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1)
            return
        if fraction is None:
            if not self.total:
                return
            fraction = self._done / self.total
        if fraction >= self._next_mark:
            if self.total:
                self.console.print(f"traffic: {self._done}/{self.total} requests")
            else:
                self.console.print(
                    f"traffic: {self._done} requests ({min(fraction, 1):.0%} of the duration)"
                )
            while self._next_mark <= fraction:
                self._next_mark += 0.25
            if fraction >= 1:
                # The answers in flight after the end keep coming: 100% is said once.
                self._next_mark = math.inf

    def note(self, text: str) -> None:
        """A timeline event: printed above the bar (or as a line)."""
        if self._progress is not None:
            self._progress.update(self._task, note=text)
            self._progress.console.print(text)
        else:
            self.console.print(text)


def _upstream_of(
    response: aiohttp.ClientResponse, body: bytes, served_by: ServedBy | None = None
) -> str | None:
    """The upstream that answered, by its own word (attribution.read_answer), or None."""
    return read_answer(response, body, served_by)


def request_parts(planned: PlannedRequest, user: User) -> tuple[dict[str, str], bytes | None]:
    """The headers and body of one planned request: the request id, the population's headers,
    the mix entry's headers (they win over the population's, names compared without case) and
    its JSON body (`content-type: application/json` unless a header says otherwise), filled
    in for `user`; then the user's token."""
    headers = {REQUEST_ID_HEADER: str(planned.index), **dict(user.population.headers)}
    body = None
    kind = planned.kind
    if kind is not None and (kind.headers or kind.body is not None):
        values = template_values(user, planned.index)
        names = {name.lower(): name for name in headers}
        for name, text in kind.headers:
            replaced = names.pop(name.lower(), None)
            if replaced is not None:
                del headers[replaced]
            headers[name] = text.render(values)
            names[name.lower()] = name
        if kind.body is not None:
            body = kind.body.render(values)
            if "content-type" not in names:
                headers["Content-Type"] = "application/json"
    if user.token is not None:
        headers["Authorization"] = f"Bearer {user.token}"
    return headers, body


async def send_one(
    session: aiohttp.ClientSession,
    proxy_url: str,
    target_url: str,
    planned: PlannedRequest,
    user: User,
    phase: int,
    served_by: ServedBy | None = None,
) -> RequestResult:
    """Send one request through the proxy and record what came back (never raises).
    `served_by`: how url upstreams say who answered (the scenario's)."""
    headers, data = request_parts(planned, user)
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
            planned.method, target_url + planned.path, headers=headers, data=data, proxy=proxy_url
        ) as response:
            body = await response.read()
            result.status = response.status
            result.answered_by = _upstream_of(response, body, served_by)
            if result.answered_by is None:
                result.reason = body[:120].decode("utf-8", "replace").strip() or None
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        # ValueError: aiohttp refuses a header value a claim filled with a line break.
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    result.latency_ms = (time.perf_counter() - clock) * 1000
    result.ended = time.time()
    return result


def make_plan(
    users: Sequence[User], traffic: Traffic
) -> tuple[list[PlannedRequest] | Iterator[PlannedRequest], int | None]:
    """The plan for `drive` and its size: the whole list for a count run; for a duration run
    an iterator made as it is sent (at most MAX_REQUESTS) and None."""
    if traffic.requests is not None:
        plan = plan_requests(users, traffic.mix, traffic.requests, traffic.seed)
        return plan, len(plan)
    return iter_plan(users, traffic.mix, traffic.seed, MAX_REQUESTS), None


# Called at a boundary: `run_steps(index)` in a count run, `run_steps(seconds, sent)` in a
# duration run; returns how many steps have run so far.
type StepRunner = Callable[..., Awaitable[int]]


class _Source:
    """An iterator of planned requests that remembers whether it ran dry."""

    def __init__(self, requests: Iterable[PlannedRequest]) -> None:
        self._requests = iter(requests)
        self.exhausted = False

    def __iter__(self) -> _Source:
        return self

    def __next__(self) -> PlannedRequest:
        try:
            return next(self._requests)
        except StopIteration:
            self.exhausted = True
            raise


async def drive(
    scenario: Scenario,
    users: list[User],
    plan: Sequence[PlannedRequest] | Iterator[PlannedRequest],
    *,
    proxy_url: str,
    target_url: str,
    run_steps: StepRunner,
    boundaries: Sequence[float],
    progress: ProgressReporter,
) -> TrafficRun:
    """Send the plan through the proxy; at each boundary wait for every request in flight,
    then run the steps due there.

    A count run (`traffic.requests`) gets the plan as a list and boundaries as request
    indices (`run_steps(index)`). A duration run gets it as an iterator (`iter_plan`) and
    boundaries as seconds of traffic time (`run_steps(seconds, sent)`); it sends until the
    duration is over, counted without the steps and the waits before them. Without
    `traffic.rate`, `concurrency` workers send back to back (closed loop); with it, requests
    leave on the `Pacer`'s schedule with at most `concurrency` in flight (open model).

    Stops sending when the time budget is spent (or a duration run's plan runs dry at its
    cap); the run is then marked incomplete. The budget and the duration are checked on the
    clock, so a proxy slower than the rate cannot stretch the run past either; the arrivals a
    paced duration run had no time left for are counted (`unsent_on_schedule`).
    """
    traffic = scenario.traffic
    duration = traffic.duration
    timed = duration is not None
    listed = plan if isinstance(plan, Sequence) else None  # a count run's whole plan
    if timed == (listed is not None):
        raise TypeError("a count run takes the plan as a list, a duration run as an iterator")
    deadline = time.monotonic() + traffic.time_budget
    results: list[RequestResult] = []
    started = time.time()
    incomplete: str | None = None
    pacer = Pacer(traffic.rate, traffic.concurrency) if traffic.rate is not None else None
    source = _Source(plan)  # a duration run's plan, shared by every stretch
    total = len(listed) if listed is not None else None
    end_mark = duration if duration is not None else total
    edges = sorted({0, *boundaries, end_mark})
    closed_time = 0.0  # traffic time of closed-loop stretches (the pacer keeps its own)
    clock = {"before": 0.0, "start": time.monotonic()}  # the current stretch, for progress

    def traffic_time() -> float:
        return pacer.stats.traffic_time if pacer is not None else closed_time

    def fraction() -> float | None:
        if duration is None:
            return None
        return (clock["before"] + time.monotonic() - clock["start"]) / duration

    async def send(planned: PlannedRequest, phase: int) -> None:
        result = await send_one(
            session,
            proxy_url,
            target_url,
            planned,
            users[planned.user],
            phase,
            served_by=scenario.served_by,
        )
        results.append(result)
        progress.advance(fraction())

    async def worker(requests: Iterator[PlannedRequest], phase: int, stop: float) -> None:
        # Check the clock before taking a request, so none is taken and left unsent.
        while time.monotonic() < stop:
            planned = next(requests, None)
            if planned is None:
                return
            await send(planned, phase)

    connector = aiohttp.TCPConnector(limit=traffic.concurrency)
    timeout = aiohttp.ClientTimeout(total=traffic.request_timeout)
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
                        phase = await (
                            run_steps(start, len(results)) if timed else run_steps(start)
                        )
                except TimeoutError:
                    incomplete = f"time budget of {traffic.time_budget:g}s spent during a step"
                    break
            if end is None:
                break
            if listed is None:
                requests: Iterator[PlannedRequest] = source
                length: float | None = end - start
            else:
                requests = iter(listed[int(start) : int(end)])
                length = None
            clock["before"], clock["start"] = traffic_time(), time.monotonic()
            if pacer is not None:
                await pacer.run(
                    requests,
                    lambda planned, phase=phase: send(planned, phase),
                    stop_after=length,
                    deadline=deadline,
                )
            else:
                stop = deadline if length is None else min(deadline, clock["start"] + length)
                count = traffic.concurrency if timed else min(traffic.concurrency, end - start)
                await asyncio.gather(*(worker(requests, phase, stop) for _ in range(int(count))))
                elapsed = time.monotonic() - clock["start"]
                closed_time += elapsed if length is None else min(elapsed, length)
            if timed and source.exhausted:
                incomplete = (
                    f"the request cap of {len(results):,} was reached after "
                    f"{traffic_time():.1f}s of the {traffic.duration:g}s duration"
                )
                break
            # The pacer says when the deadline stopped it (maybe just before the clock got
            # there: no arrival was due before it).
            budget_spent = time.monotonic() >= deadline or (pacer is not None and pacer.cut)
            if budget_spent and (timed or len(results) < end):
                done = (
                    f"{traffic_time():.1f}s of the {traffic.duration:g}s duration"
                    if timed
                    else f"{len(results)} of {total} requests"
                )
                incomplete = f"time budget of {traffic.time_budget:g}s spent after {done}"
                break
    results.sort(key=lambda r: r.index)
    stats = pacer.stats if pacer is not None else None
    return TrafficRun(
        results,
        total if total is not None else len(results),
        started,
        time.time(),
        incomplete,
        traffic_time=traffic_time(),
        target_rate=traffic.rate,
        delayed_by_cap=stats.delayed_by_cap if stats is not None else 0,
        max_lag=stats.max_lag if stats is not None else 0.0,
        unsent_on_schedule=stats.unsent_on_schedule if stats is not None else 0,
    )


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


def read_decisions(
    path: Path, since: int = 0, not_before: float | None = None
) -> list[dict[str, Any]]:
    """The addon's decision log (one JSON object per line); unreadable lines are skipped.

    `since`: a byte offset (the file's size when the run started: a log your own proxy wrote
    before holds older lines); a file now shorter than that was rotated and is read whole.
    `not_before`: drop records with an older `ts` (the same guard for a rotated file).
    """
    try:
        with path.open("rb") as file:
            size = file.seek(0, 2)
            file.seek(since if 0 <= since <= size else 0)
            lines = file.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(record, dict)
            and isinstance(record.get("ts"), int | float)
            and (not_before is None or record["ts"] >= not_before)
        ):
            out.append(record)
    return out


def attribute_routes(
    results: list[RequestResult],
    users: list[User],
    decisions: list[dict[str, Any]],
    upstream_urls: Mapping[str, str] | None = None,
    unseen: Collection[str] = (),
) -> int:
    """Give each request the route (and upstream) the addon logged for it; returns how many
    were matched.

    `upstream_urls` (URL -> name) turns the logged `upstream` URL into `decided` (an allowed
    decision without a route went where the request was addressed: its URL's origin).
    For upstreams in `unseen` (url upstreams: no records, maybe no word of their own) the
    decision counts as attribution when the answer named nobody (`RequestResult.source`).

    A decision that carries the request's id (`request_id`: the scenario sends its index in
    REQUEST_ID_HEADER and the world has the addon log it) is matched exactly; a request's
    second decision (a client retry of a killed flow) is dropped. Any other is matched by
    (method, path, sub) and by time: its timestamp must fall inside the request's send..answer
    window; requests with the same key at the same time take the same route (same user, same
    policy), so a swap is harmless. Which upstream served a request comes from the log only
    for `unseen` upstreams whose answer did not say (`RequestResult.source`).
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
    matched += _attribute_by_time(unmatched, users, loose)
    if upstream_urls is not None:
        _decide_upstreams(results, upstream_urls, set(unseen))
    return matched


def _is_index(value: Any) -> bool:
    return isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 12


def _attribute(result: RequestResult, record: dict[str, Any]) -> None:
    result.logged = True
    result.route = record.get("route")
    bucket = record.get("bucket")
    result.bucket = bucket if isinstance(bucket, int) else None
    result.decided = _forwarded_to(record)  # a URL here; _decide_upstreams names it


def _forwarded_to(record: dict[str, Any]) -> str | None:
    """Where the addon sent the request: the route's upstream, or (allowed without a route)
    where it was addressed; None when it refused it."""
    upstream = record.get("upstream")
    if isinstance(upstream, str) and upstream:
        return upstream
    if record.get("outcome") not in FORWARDED_OUTCOMES:
        return None
    parts = urlsplit(str(record.get("url", "")))
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def _decide_upstreams(
    results: list[RequestResult], upstream_urls: Mapping[str, str], unseen: set[str]
) -> None:
    """Turn each joined decision's URL into an upstream name (an unknown URL stays as it is);
    the decision counts for attribution where it names an `unseen` upstream."""
    names = name_by_url(upstream_urls)
    declared = set(upstream_urls.values())
    for result in results:
        if result.answered_by is not None and result.answered_by not in declared:
            # An answer naming no declared upstream is not credited to that name.
            result.undeclared, result.answered_by = result.answered_by, None
        if result.decided is None:
            continue
        key = url_key(result.decided)
        result.decided = names.get(key, result.decided) if key is not None else result.decided
        result.decision_counts = result.decided in unseen


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
