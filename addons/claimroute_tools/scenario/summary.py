"""The report's figures, computed once: `summarize(...)` -> a frozen `ReportSummary`.

Everything a report shows comes from here: per population, per route, per phase and overall
(who answered, which statuses, latency percentiles), the share answered by each non-primary
upstream over the run, the timeline, the expectations with their verdicts, the canary analysis
of each comparison (analysis.py: error rates, latency, tests, verdicts, the charts' samples and
time bins), and the run's metadata. `summarize` is pure (no I/O, no clock); the renderers in
`render/` only format it.

Figures are rounded here, once, to what report.json has always held (shares to 4 places,
milliseconds to 2, seconds to 3), so every format shows the same numbers.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from claimroute_tools.scenario.analysis import ComparisonResult, analyze, resolve_comparisons
from claimroute_tools.scenario.expect import Outcome, RunData, find_route, predicted_target
from claimroute_tools.scenario.model import NO_UPSTREAM
from claimroute_tools.scenario.timeline import StepRecord
from claimroute_tools.scenario.traffic import RequestResult, TrafficRun

TIME_BINS = 20  # 5% of the run each

# Mappings in the summary are plain dicts in a meaningful order (most frequent first, or the
# scenario's upstream order); treat them as read-only.


@dataclass(frozen=True, slots=True)
class Latency:
    """Nearest-rank latency percentiles in ms (None: no requests)."""

    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


@dataclass(frozen=True, slots=True)
class Breakdown:
    """What happened to a group of requests."""

    requests: int
    upstreams: Mapping[str, int]  # who answered: the scenario's order, then "none"; no zeros
    statuses: Mapping[str, int]  # "200", "401", "error": most frequent first
    latency_ms: Latency


@dataclass(frozen=True, slots=True)
class PopulationSummary:
    """One population of users and its requests."""

    name: str
    users: int
    issuer: str | None
    tamper: str | None
    tokens_minted: int
    traffic: Breakdown
    seen_without_answer: int  # no upstream answered, but one's records contain the request
    reasons: Mapping[str, int]  # why requests got no upstream answer (body or error)
    kids: Mapping[str, int]  # the kids of the tokens sent


@dataclass(frozen=True, slots=True)
class RouteSummary:
    """The requests the addon's decision log attributes to one route."""

    name: str
    traffic: Breakdown
    formula_share: Mapping[str, float] | None  # split routes: what bucket_of() predicts


@dataclass(frozen=True, slots=True)
class PhaseSummary:
    """The requests sent between two timeline steps."""

    name: str
    traffic: Breakdown


@dataclass(frozen=True, slots=True)
class StepSummary:
    """A timeline step that ran."""

    name: str
    action: str
    at: float  # the configured share of the requests
    index: int  # requests sent before it
    duration_s: float
    detail: str


@dataclass(frozen=True, slots=True)
class OverTime:
    """Per bin of the planned requests (5% each)."""

    bins: int
    sent: tuple[int, ...]
    served: tuple[int, ...]  # answered by an upstream
    share_of_served: Mapping[str, tuple[float | None, ...]]  # per non-primary upstream
    refused_share: tuple[float | None, ...]  # of all sent, answered by no upstream


@dataclass(frozen=True, slots=True)
class ScenarioInfo:
    """The scenario as run (after --requests/--concurrency/--seed)."""

    name: str
    description: str
    file: str
    requests: int  # planned
    concurrency: int
    seed: int


@dataclass(frozen=True, slots=True)
class RunInfo:
    """The run's metadata."""

    started: str  # ISO 8601, UTC, seconds
    duration_s: float
    requests_sent: int
    requests_per_s: float | None
    tokens_minted: int
    decisions_logged: int
    requests_attributed_to_a_decision: int
    incomplete: str | None  # why not every planned request was sent
    proxy: str | None
    # Who decided which upstream served each request (RequestResult.source): "upstream" (its
    # own answer), "decision log" (a url upstream whose answer did not say), "none". Empty
    # when the scenario has no url upstream.
    attribution: Mapping[str, int] = field(default_factory=dict)
    # Traffic shape (docs/traffic.md). The observed rate is requests per second of traffic
    # time (steps and the waits before them excluded), for every run; the target rate and
    # the requests that waited for the `concurrency` cap only for an open-model `rate:` run.
    target_rate_per_s: float | None = None
    observed_rate_per_s: float | None = None
    delayed_by_cap: int = 0  # open model: sent late because `concurrency` were in flight
    max_lag_ms: float | None = None  # open model: the most a request left behind schedule
    target_duration_s: float | None = None  # a duration run's `duration:`
    traffic_s: float | None = None  # seconds of traffic time
    # Open model, duration run: arrivals due within the duration that the clock ran out for
    # (the proxy, or the cap, could not keep the rate). The run is complete nonetheless.
    unsent_on_schedule: int = 0

    @property
    def shaped(self) -> bool:
        """A run with a rate or a duration (a count-based closed loop is not)."""
        return self.target_rate_per_s is not None or self.target_duration_s is not None

    def shape_text(self, cap: int) -> str | None:
        """The header's words for the traffic shape, e.g. "rate 200/s target, 196.4/s
        observed (12 requests delayed by the cap of 16, max lag 27 ms)" or "duration 60s";
        None for a count-based closed loop. `cap`: the scenario's concurrency."""
        parts = []
        if self.target_duration_s is not None:
            parts.append(f"duration {self.target_duration_s:g}s")
        if self.target_rate_per_s is not None:
            observed = self.observed_rate_per_s
            text = f"rate {self.target_rate_per_s:g}/s target, " + (
                f"{observed:g}/s observed" if observed is not None else "nothing sent"
            )
            notes = []
            if self.delayed_by_cap:
                notes.append(f"{_requests(self.delayed_by_cap)} delayed by the cap of {cap}")
            if self.max_lag_ms is not None:
                notes.append(f"max lag {self.max_lag_ms:.0f} ms")
            if self.unsent_on_schedule:
                unsent = _requests(self.unsent_on_schedule)
                notes.append(f"{unsent} due but not sent: the duration ended first")
            parts.append(f"{text} ({', '.join(notes)})" if notes else text)
        return ", ".join(parts) or None


def _requests(n: int) -> str:
    return f"{n:,} request" + ("" if n == 1 else "s")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The expectations, counted."""

    passed: bool
    expectations: int
    failed: int


@dataclass(frozen=True, slots=True)
class ReportSummary:
    """Everything the report shows; rendered by `render/` (report.json is `to_dict` of it)."""

    scenario: ScenarioInfo
    run: RunInfo
    result: Verdict
    upstreams: tuple[str, ...]  # the scenario's order; the first is the primary
    overall: Breakdown
    populations: tuple[PopulationSummary, ...]
    routes: tuple[RouteSummary, ...]
    phases: tuple[PhaseSummary, ...]
    timeline: tuple[StepSummary, ...]
    over_time: OverTime
    expectations: tuple[Outcome, ...]  # each with its verdict, observation and miss
    files: Mapping[str, str]
    # The proxy's Prometheus metrics at the end of the run (`World.scrape_metrics`), if taken.
    proxy_metrics: Mapping[str, Any] | None = None
    # The canary analysis: one entry per comparison (declared, or one per split route's
    # non-baseline target), judged against the first analysis expectation naming it.
    analysis: tuple[ComparisonResult, ...] = ()


# -- the figures -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of `values` (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _rounded(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def latency(results: Sequence[RequestResult]) -> Latency:
    """The latency percentiles of `results`, rounded to 0.01 ms."""
    values = [r.latency_ms for r in results]
    return Latency(
        p50=_rounded(percentile(values, 50)),
        p95=_rounded(percentile(values, 95)),
        p99=_rounded(percentile(values, 99)),
        max=_rounded(max(values, default=None)),
    )


def counts(values: Iterable[Any]) -> dict[str, int]:
    """How often each value occurs (as text), most frequent first, ties by name."""
    counter = Counter(str(v) for v in values)
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def breakdown(results: Sequence[RequestResult], upstream_order: Sequence[str]) -> Breakdown:
    """Requests, who answered, statuses and latency of a group of requests."""
    answered = Counter(r.upstream for r in results)
    upstreams = {name: answered[name] for name in [*upstream_order, NO_UPSTREAM] if answered[name]}
    return Breakdown(
        requests=len(results),
        upstreams=upstreams,
        statuses=counts(r.status_label for r in results),
        latency_ms=latency(results),
    )


def over_time(results: Sequence[RequestResult], planned: int, upstreams: Sequence[str]) -> OverTime:
    """Per 5% of the planned requests: each of `upstreams`' share of the served requests, and
    the share of all requests that no upstream answered."""
    sent = [0] * TIME_BINS
    served = [0] * TIME_BINS
    hits: dict[str, list[int]] = {name: [0] * TIME_BINS for name in upstreams}
    for result in results:
        b = min(TIME_BINS - 1, result.index * TIME_BINS // max(1, planned))
        sent[b] += 1
        if result.answered_by is not None:
            served[b] += 1
            if result.answered_by in hits:
                hits[result.answered_by][b] += 1
    series = {
        name: tuple(round(h / s, 4) if s else None for h, s in zip(per_bin, served, strict=True))
        for name, per_bin in hits.items()
    }
    refused = tuple(round((n - s) / n, 4) if n else None for n, s in zip(sent, served, strict=True))
    return OverTime(TIME_BINS, tuple(sent), tuple(served), series, refused)


def _routes(data: RunData) -> tuple[RouteSummary, ...]:
    by_route: dict[str, list[RequestResult]] = defaultdict(list)
    for result in data.results:
        if result.route is not None:
            by_route[result.route].append(result)
    rows = []
    for name, results in sorted(by_route.items()):
        predicted: Counter[str] = Counter()
        is_split = False
        for result in results:
            route = find_route(data.phase_policies[result.phase], name)
            if route is None:
                continue
            is_split = is_split or route.split is not None
            url, _ = predicted_target(route, data.users[result.user].payload or None)
            predicted[data.upstream_names.get(url, url)] += 1
        total = sum(predicted.values())
        formula = (
            {k: round(v / total, 4) for k, v in predicted.most_common()}
            if is_split and total
            else None
        )
        rows.append(RouteSummary(name, breakdown(results, data.scenario.upstreams), formula))
    return tuple(rows)


def summarize(
    data: RunData,
    run: TrafficRun,
    outcomes: Sequence[Outcome],
    steps: Sequence[StepRecord],
    phase_names: Sequence[str],
    *,
    tokens_minted: int,
    attributed: int,
    decisions: int,
    files: Mapping[str, str],
    proxy_url: str | None,
    proxy_metrics: Mapping[str, Any] | None = None,
) -> ReportSummary:
    """Every figure of the report, from the run's results (pure: reads its arguments only)."""
    scenario = data.scenario
    results = data.results
    upstreams = tuple(scenario.upstreams)
    populations = []
    for population in scenario.users:
        mine = [r for r in results if r.population == population.name]
        users = [u for u in data.users if u.population.name == population.name]
        populations.append(
            PopulationSummary(
                name=population.name,
                users=population.count,
                issuer=population.issuer,
                tamper=population.tamper,
                tokens_minted=sum(u.mints for u in users),
                traffic=breakdown(mine, upstreams),
                seen_without_answer=sum(1 for r in mine if r.answered_by is None and r.seen_by),
                reasons=counts(r.reason or r.error for r in mine if r.answered_by is None),
                kids=counts(r.kid for r in mine if r.kid is not None),
            )
        )
    phases = []
    for ordinal, name in enumerate(phase_names):
        mine = [r for r in results if r.phase == ordinal]
        if mine or ordinal == len(phase_names) - 1:  # phases between same-index steps are empty
            phases.append(PhaseSummary(name, breakdown(mine, upstreams)))
    failed = sum(1 for o in outcomes if not o.passed)
    duration = run.duration
    return ReportSummary(
        scenario=ScenarioInfo(
            name=scenario.name,
            description=scenario.description,
            file=str(scenario.path),
            requests=run.planned,  # traffic.requests; a duration run: what it sent
            concurrency=scenario.traffic.concurrency,
            seed=scenario.traffic.seed,
        ),
        run=RunInfo(
            started=datetime.fromtimestamp(run.started, UTC).isoformat(timespec="seconds"),
            duration_s=round(duration, 3),
            requests_sent=len(results),
            requests_per_s=round(len(results) / duration, 1) if duration > 0 else None,
            tokens_minted=tokens_minted,
            decisions_logged=decisions,
            requests_attributed_to_a_decision=attributed,
            incomplete=run.incomplete,
            proxy=proxy_url,
            # Only where the log may decide (url upstreams): echo-only reports stay as they were.
            attribution=counts(r.source for r in results)
            if any(u.external for u in scenario.upstream_specs)
            else {},
            target_rate_per_s=run.target_rate,
            observed_rate_per_s=(
                round(run.observed_rate, 1) if run.observed_rate is not None else None
            ),
            delayed_by_cap=run.delayed_by_cap,
            max_lag_ms=round(run.max_lag * 1000, 2) if run.target_rate is not None else None,
            target_duration_s=scenario.traffic.duration,
            traffic_s=round(run.traffic_time, 3) if run.traffic_time > 0 else None,
            unsent_on_schedule=run.unsent_on_schedule,
        ),
        result=Verdict(passed=failed == 0, expectations=len(outcomes), failed=failed),
        upstreams=upstreams,
        overall=breakdown(results, upstreams),
        populations=tuple(populations),
        routes=_routes(data),
        phases=tuple(phases),
        timeline=tuple(
            StepSummary(
                name=s.name,
                action=s.action,
                at=s.at,
                index=s.index,
                duration_s=round(s.finished - s.started, 3),
                detail=s.detail,
            )
            for s in steps
        ),
        over_time=over_time(results, run.planned, upstreams[1:]),
        expectations=tuple(outcomes),
        files=dict(files),
        proxy_metrics=proxy_metrics,
        analysis=analyze(
            results,
            resolve_comparisons(scenario, data.phase_policies, data.upstream_names),
            scenario.expectations,
        ),
    )


__all__ = [
    "TIME_BINS",
    "Breakdown",
    "Latency",
    "OverTime",
    "PhaseSummary",
    "PopulationSummary",
    "ReportSummary",
    "RouteSummary",
    "RunInfo",
    "ScenarioInfo",
    "StepSummary",
    "Verdict",
    "breakdown",
    "counts",
    "latency",
    "over_time",
    "percentile",
    "summarize",
]
