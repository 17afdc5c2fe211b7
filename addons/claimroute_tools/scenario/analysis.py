"""Canary analysis: is the canary worse than its baseline, and by how much (scipy.stats).

For each comparison (declared under `analysis:`, or by default one per split route's targets,
see comparisons.py) the requests of each side are compared. A request's side (`side_of`) is
`RequestResult.upstream` (its own word, else the decision log's for url upstreams); a request
that got no upstream's answer (a timeout, a connection error, or a 5xx the proxy made itself,
say a 502 for an unreachable upstream) goes to the upstream the decision log says the proxy
sent it to, else to the one echo upstream whose records hold it: those are the canary's
failures and must count against it. Requests nobody sent on (the proxy's refusals) are in
neither side.

- error rate (a 5xx, a timeout or a connection error) per side with its Wilson interval
  (`binomtest(...).proportion_ci`), the difference canary minus baseline with Newcombe's
  hybrid score interval built from the two Wilson intervals, and Fisher's exact test,
  one-sided ("any difference": the canary's error odds are higher);
- latency p50/p95/p99 per side (nearest rank, as the rest of the report), the canary/baseline
  ratios, and two one-sided Mann-Whitney U tests over requests that got an answer: canary
  latencies against the baseline's ("any difference"), and canary latencies divided by the
  limit ratio against the baseline's ("beyond the limit");
- a verdict per metric against a limit: `pass` when the observed degradation is within the
  limit; `fail` when the data show it is BEYOND the limit (error rate: the interval of the
  difference lies wholly above the limit; latency: the canary is significantly slower than
  baseline x limit at ALPHA); `inconclusive` when the observed value is beyond the limit but
  that is not shown (more requests would tell), or when a side has fewer requests than
  `min_requests`. The gate (expect.py) passes only on `pass`: inconclusive fails closed.

Everything here is a pure function of the results; the result dataclasses are frozen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from claimroute.errors import PolicyError
from claimroute.policy.model import Policy
from claimroute_tools.scenario.comparisons import (
    default_comparisons,
    referenced_upstream,
    split_routes,
)
from claimroute_tools.scenario.model import Expectation, PolicySource, Scenario
from claimroute_tools.scenario.traffic import RequestResult

type MetricVerdict = Literal["pass", "fail", "inconclusive"]

ALPHA = 0.05  # significance level of both one-sided tests
CONFIDENCE = 0.95  # of the Wilson intervals
TIME_BINS = 20  # error rate over time: the run's wall-clock span in 20 equal bins
MAX_SAMPLES = 5000  # latency samples kept per side for the charts (evenly spaced ranks beyond)
# Limits when no expectation names a comparison (and for a metric an expectation leaves out).
DEFAULT_MAX_ERROR_RATE_INCREASE = 0.01
DEFAULT_MAX_P95_RATIO = 1.25
DEFAULT_MIN_REQUESTS = 30
ERROR_RATE_TEST = (
    "Fisher's exact test, one-sided: canary error rate higher (any difference); the verdict "
    "reads Newcombe's 95% interval of the difference against the limit"
)
LATENCY_TEST = (
    "Mann-Whitney U test, one-sided: canary latencies larger (any difference); the verdict "
    "reads the same test of canary latencies / limit"
)


@dataclass(frozen=True, slots=True)
class Comparison:
    """A canary upstream against a baseline upstream."""

    name: str
    canary: str
    baseline: str
    route: str | None = None  # the split route of a default comparison
    line: int | None = None  # of a declared comparison


@dataclass(frozen=True, slots=True)
class Limits:
    """What a comparison is judged against."""

    max_error_rate_increase: float = DEFAULT_MAX_ERROR_RATE_INCREASE
    max_p95_ratio: float = DEFAULT_MAX_P95_RATIO
    min_requests: int = DEFAULT_MIN_REQUESTS

    @classmethod
    def of(cls, expectation: Expectation | None) -> Limits:
        """An expectation's limits, the defaults for those it leaves out."""
        if expectation is None:
            return cls()
        e = expectation
        return cls(
            e.max_error_rate_increase
            if e.max_error_rate_increase is not None
            else DEFAULT_MAX_ERROR_RATE_INCREASE,
            e.max_p95_ratio if e.max_p95_ratio is not None else DEFAULT_MAX_P95_RATIO,
            e.min_requests if e.min_requests is not None else DEFAULT_MIN_REQUESTS,
        )


@dataclass(frozen=True, slots=True)
class Side:
    """One side's requests (rates to 6 places, ms to 0.01)."""

    upstream: str
    requests: int
    errors: int  # 5xx, timeouts and connection errors
    error_rate: float | None  # None: no requests
    error_rate_ci: tuple[float, float] | None  # Wilson, CONFIDENCE
    answered: int  # requests with an HTTP answer: the latency samples
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    # For the charts: the latency samples (ms, sorted; all of them up to MAX_SAMPLES, else
    # MAX_SAMPLES evenly spaced ranks of them), and requests and errors per time bin.
    samples_ms: tuple[float, ...]
    requests_per_bin: tuple[int, ...]
    errors_per_bin: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ErrorRateResult:
    """Canary error rate against the baseline's."""

    difference: float | None  # canary minus baseline
    p_value: float | None  # Fisher's exact test, one-sided: canary higher (any difference)
    limit: float  # max_error_rate_increase
    verdict: MetricVerdict
    detail: str  # what was found, with the numbers
    # Newcombe's hybrid score interval (CONFIDENCE) of the difference; "fail" needs its low
    # end beyond the limit.
    difference_ci: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class LatencyResult:
    """Canary latency against the baseline's."""

    ratio_p50: float | None  # canary / baseline
    ratio_p95: float | None
    ratio_p99: float | None
    u_statistic: float | None  # Mann-Whitney U of the canary sample
    p_value: float | None  # one-sided: canary latencies larger (any difference)
    limit: float  # max_p95_ratio
    verdict: MetricVerdict
    detail: str
    # One-sided: canary latencies / limit larger than the baseline's ("fail" needs < ALPHA).
    p_value_beyond_limit: float | None = None


@dataclass(frozen=True, slots=True)
class ComparisonResult:
    """Every figure of one comparison."""

    comparison: Comparison
    limits: Limits
    canary: Side
    baseline: Side
    error_rate: ErrorRateResult
    latency: LatencyResult
    too_few: str | None  # "canary has 87 requests, fewer than 200", else None
    bin_edges_s: tuple[float, ...]  # TIME_BINS + 1 edges, seconds since the first request
    started: float | None  # wall clock of the first request of the run (None: no requests)

    @property
    def name(self) -> str:
        """The comparison's name."""
        return self.comparison.name


# -- which comparisons -------------------------------------------------------------------------


def _sources(scenario: Scenario) -> list[tuple[int, PolicySource]]:
    """Each policy of the scenario with the phase it is live from (phase k: after k steps)."""
    out = [(0, scenario.policy)]
    for step in scenario.steps:
        if step.policy is not None:
            out.append((step.ordinal + 1, step.policy))
    return out


def resolve_comparisons(
    scenario: Scenario, phase_policies: Sequence[Policy], upstream_names: Mapping[str, str]
) -> tuple[Comparison, ...]:
    """The declared comparisons; when there are none, one per split route's non-baseline
    target (each policy of the run, a route counted where it first appears). A target's name
    is its `${upstreams.NAME.url}` reference, else the world's URL -> name map of the URL the
    parsed policy holds for it; a target that is no upstream of the scenario is left out."""
    if scenario.analysis:
        return tuple(
            Comparison(a.name, a.canary, a.baseline, line=a.line) for a in scenario.analysis
        )
    routes: dict[str, list[tuple[str | None, int]]] = {}
    for phase, source in _sources(scenario):
        policy = phase_policies[phase] if phase < len(phase_policies) else None
        for name, targets in split_routes(source.document).items():
            if name in routes:
                continue
            parsed = next((r for r in policy.routes if r.name == name), None) if policy else None
            urls = [t.url for t in parsed.split.targets] if parsed and parsed.split else []
            named: list[tuple[str | None, int]] = []
            for index, target in enumerate(targets):
                upstream = referenced_upstream(target.text)
                if upstream is None and len(urls) == len(targets):
                    upstream = upstream_names.get(urls[index])
                named.append((upstream, target.weight))
            routes[name] = named
    found, _ = default_comparisons(routes)
    return tuple(Comparison(c.name, c.canary, c.baseline, route=c.route) for c in found)


def unknown_comparison(scenario: Scenario, comparisons: Sequence[Comparison]) -> PolicyError | None:
    """The error for the first `analysis:` expectation naming none of `comparisons`, else None.

    The loader checks every name it can (model.py); a default name on a split route whose
    targets are not all written as `${upstreams.NAME.url}` is only known once the world has
    rendered the policies, so the runner checks it when the run starts (before traffic) and
    the expectation check fails on it as a last resort.
    """
    known = [c.name for c in comparisons]
    for index, expectation in enumerate(scenario.expectations):
        if expectation.kind != "analysis" or expectation.analysis in known:
            continue
        listed = ", ".join(repr(name) for name in known) or "none"
        return PolicyError(
            f"no comparison is called {expectation.analysis!r} (checked when the run started, "
            f"once the split routes' targets had upstream names; comparisons: {listed})",
            file=str(scenario.path),
            key_path=f"expect[{index}].analysis",
            line=expectation.line,
        )
    return None


def check_comparison_names(
    scenario: Scenario, phase_policies: Sequence[Policy], upstream_names: Mapping[str, str]
) -> None:
    """Raise PolicyError (file, key path, line) for an `analysis:` expectation naming no
    comparison of this run; call it when the world has rendered the policies."""
    error = unknown_comparison(
        scenario, resolve_comparisons(scenario, phase_policies, upstream_names)
    )
    if error is not None:
        raise error


# -- the statistics ----------------------------------------------------------------------------


def is_error(result: RequestResult) -> bool:
    """A 5xx answer, a timeout or a connection error."""
    return result.status is None or result.status >= 500


def _r(value: float | None, places: int) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), places)


def _p(value: float | None) -> float | None:
    """A p-value to 4 significant digits."""
    return None if value is None or math.isnan(value) else float(f"{float(value):.4g}")


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _points(x: float) -> str:
    return f"{x * 100:+.1f} points"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "p=n/a"
    return f"p={p:.2g}" if p < 0.001 else "p=" + f"{p:.4f}".rstrip("0").rstrip(".")


def _quantiles(samples: np.ndarray) -> tuple[float | None, float | None, float | None]:
    if not samples.size:
        return None, None, None
    # inverted_cdf is the nearest-rank percentile, as summary.percentile.
    q = np.percentile(samples, [50, 95, 99], method="inverted_cdf")
    return float(q[0]), float(q[1]), float(q[2])


def _display_samples(samples: np.ndarray) -> tuple[float, ...]:
    ordered = np.sort(samples)
    if ordered.size > MAX_SAMPLES:
        ranks = ((np.arange(MAX_SAMPLES) + 0.5) * ordered.size / MAX_SAMPLES).astype(int)
        ordered = ordered[ranks]
    return tuple(round(float(v), 2) for v in ordered)


def _side(
    upstream: str, mine: Sequence[RequestResult], edges: np.ndarray, t0: float
) -> tuple[Side, np.ndarray]:
    errors = sum(1 for r in mine if is_error(r))
    n = len(mine)
    ci = None
    if n:
        low, high = _wilson(errors, n)
        ci = (round(low, 6), round(high, 6))
    samples = np.array([r.latency_ms for r in mine if r.status is not None], dtype=float)
    p50, p95, p99 = _quantiles(samples)
    started = np.array([r.started - t0 for r in mine], dtype=float)
    failed = np.array([r.started - t0 for r in mine if is_error(r)], dtype=float)
    side = Side(
        upstream=upstream,
        requests=n,
        errors=errors,
        error_rate=round(errors / n, 6) if n else None,
        error_rate_ci=ci,
        answered=int(samples.size),
        p50_ms=_r(p50, 2),
        p95_ms=_r(p95, 2),
        p99_ms=_r(p99, 2),
        samples_ms=_display_samples(samples),
        requests_per_bin=tuple(int(c) for c in np.histogram(started, bins=edges)[0]),
        errors_per_bin=tuple(int(c) for c in np.histogram(failed, bins=edges)[0]),
    )
    return side, samples


def _wilson(errors: int, n: int) -> tuple[float, float]:
    interval = stats.binomtest(errors, n).proportion_ci(CONFIDENCE, method="wilson")
    return float(interval.low), float(interval.high)


def newcombe_interval(errors_c: int, n_c: int, errors_b: int, n_b: int) -> tuple[float, float]:
    """The CONFIDENCE interval of the difference of two proportions (canary minus baseline).

    Newcombe's hybrid score interval ("method 10" of R. G. Newcombe, Interval estimation for
    the difference between independent proportions: comparison of eleven methods, Statistics
    in Medicine 17 (1998) 873-890): with p1, p2 the rates and (l1, u1), (l2, u2) their Wilson
    intervals, d = p1 - p2,
        low  = d - sqrt((p1 - l1)^2 + (u2 - p2)^2)
        high = d + sqrt((u1 - p1)^2 + (p2 - l2)^2).
    It keeps the Wilson interval's good coverage at small counts and rates near 0, where the
    normal (Wald) interval of a difference is far too narrow; scipy has no two-sample form.
    """
    p1, p2 = errors_c / n_c, errors_b / n_b
    l1, u1 = _wilson(errors_c, n_c)
    l2, u2 = _wilson(errors_b, n_b)
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def _interval(ci: tuple[float, float]) -> str:
    return f"{ci[0] * 100:+.1f}..{ci[1] * 100:+.1f}"


def _error_rate(canary: Side, baseline: Side, limit: float, too_few: str | None) -> ErrorRateResult:
    if not canary.requests or not baseline.requests:
        return ErrorRateResult(None, None, limit, "inconclusive", too_few or "no requests")
    rate_c, rate_b = canary.errors / canary.requests, baseline.errors / baseline.requests
    diff = rate_c - rate_b
    table = [
        [canary.errors, canary.requests - canary.errors],
        [baseline.errors, baseline.requests - baseline.errors],
    ]
    p = _p(float(stats.fisher_exact(table, alternative="greater").pvalue))
    low, high = newcombe_interval(
        canary.errors, canary.requests, baseline.errors, baseline.requests
    )
    ci = (round(low, 6), round(high, 6))
    where = f"95% interval of the difference {_interval((low, high))}"
    rates = f"{_pct(rate_c)} vs {_pct(rate_b)}; any difference: {_fmt_p(p)}"
    change = f"error rate {_points(diff)} {'over' if diff > 0 else 'vs'} baseline"
    verdict: MetricVerdict
    if too_few:
        verdict = "inconclusive"
        found = f"{too_few}; {change} (limit {_points(limit)}, {where}): {rates}"
    elif diff <= limit + 1e-12:
        verdict = "pass"
        found = f"{change} is within the limit {_points(limit)} ({where}): {rates}"
    elif low > limit:
        verdict = "fail"
        found = f"{change} is beyond the limit {_points(limit)} ({where}): {rates}"
    else:
        verdict = "inconclusive"
        found = (
            f"{change} is beyond the limit {_points(limit)} but not shown to be ({where}): "
            f"{rates}; more requests would tell"
        )
    return ErrorRateResult(_r(diff, 6), p, limit, verdict, found, ci)


def _latency(
    canary: Side, baseline: Side, c: np.ndarray, b: np.ndarray, limit: float, min_requests: int
) -> LatencyResult:
    def ratio(x: float | None, y: float | None) -> float | None:
        return x / y if x is not None and y else None

    # From the unrounded percentiles (the sides hold them rounded to 0.01 ms).
    r50, r95, r99 = (ratio(x, y) for x, y in zip(_quantiles(c), _quantiles(b), strict=True))
    u = p = p_beyond = raw_beyond = None
    if c.size and b.size:
        test = stats.mannwhitneyu(c, b, alternative="greater")
        u, p = float(test.statistic), _p(float(test.pvalue))
        # Beyond the limit: the canary's latencies scaled down by the limit ratio still tend
        # to be larger than the baseline's, i.e. the canary is slower than baseline x limit.
        raw_beyond = float(stats.mannwhitneyu(c / limit, b, alternative="greater").pvalue)
        p_beyond = _p(raw_beyond)  # rounded for the report; the verdict reads raw_beyond
    short = [s for s in (canary, baseline) if s.answered < min_requests]
    if r95 is None:
        found = "no p95 ratio: " + (
            "a side has no answered request" if not (c.size and b.size) else "baseline p95 is 0"
        )
        return LatencyResult(
            _r(r50, 4), None, _r(r99, 4), u, p, limit, "inconclusive", found, p_beyond
        )
    tests = f"slower than baseline x{limit:g}: {_fmt_p(p_beyond)}; any difference: {_fmt_p(p)}"
    found = (
        f"p95 ratio {r95:.2f} (limit {limit:g}): {canary.p95_ms:.0f} ms vs "
        f"{baseline.p95_ms:.0f} ms; {tests}"
    )
    verdict: MetricVerdict
    if short:
        s = short[0]
        verdict = "inconclusive"
        found = (
            f"{s.upstream} has {s.answered} answered requests, fewer than {min_requests}; {found}"
        )
    elif r95 <= limit + 1e-12:
        verdict = "pass"
    elif raw_beyond is not None and raw_beyond < ALPHA:
        verdict = "fail"
    else:
        verdict = "inconclusive"
        found += (
            f"; beyond the limit but not shown to be (not significant at {ALPHA:g}); "
            "more requests would tell"
        )
    return LatencyResult(_r(r50, 4), _r(r95, 4), _r(r99, 4), u, p, limit, verdict, found, p_beyond)


def side_of(result: RequestResult) -> str:
    """The upstream whose side `result` counts on ("none": neither; module docstring).

    An upstream's answer names it (`RequestResult.upstream`). A request without one that
    failed (no answer, or a 5xx the proxy made) goes where the proxy sent it: the decision
    log's `decided`, else the single echo upstream that recorded it.
    """
    if result.answered_by is None and (result.status is None or result.status >= 500):
        if result.decided is not None:
            return result.decided
        if len(result.seen_by) == 1:
            return result.seen_by[0]
    return result.upstream


def compare(
    results: Sequence[RequestResult], comparison: Comparison, limits: Limits
) -> ComparisonResult:
    """Every figure of one comparison over a run's results (time bins span the whole run)."""
    t0 = min((r.started for r in results), default=None)
    span = max((r.started for r in results), default=0.0) - (t0 or 0.0)
    edges = np.linspace(0.0, span if span > 0 else 1.0, TIME_BINS + 1)
    base = t0 or 0.0
    sides = [side_of(r) for r in results]
    canary, c = _side(
        comparison.canary,
        [r for r, s in zip(results, sides, strict=True) if s == comparison.canary],
        edges,
        base,
    )
    baseline, b = _side(
        comparison.baseline,
        [r for r, s in zip(results, sides, strict=True) if s == comparison.baseline],
        edges,
        base,
    )
    too_few = None
    for side in (canary, baseline):
        if side.requests < limits.min_requests:
            too_few = (
                f"{side.upstream} has {side.requests} requests, fewer than {limits.min_requests}"
            )
            break
    return ComparisonResult(
        comparison=comparison,
        limits=limits,
        canary=canary,
        baseline=baseline,
        error_rate=_error_rate(canary, baseline, limits.max_error_rate_increase, too_few),
        latency=_latency(canary, baseline, c, b, limits.max_p95_ratio, limits.min_requests),
        too_few=too_few,
        bin_edges_s=tuple(round(float(e), 3) for e in edges),
        started=t0,
    )


def analyze(
    results: Sequence[RequestResult],
    comparisons: Sequence[Comparison],
    expectations: Sequence[Expectation] = (),
) -> tuple[ComparisonResult, ...]:
    """Every comparison, each judged against the limits of the first expectation that names it
    (the defaults for a comparison no expectation names, and for limits it leaves out)."""
    first: dict[str, Expectation] = {}
    for expectation in expectations:
        if expectation.kind == "analysis" and expectation.analysis is not None:
            first.setdefault(expectation.analysis, expectation)
    return tuple(compare(results, c, Limits.of(first.get(c.name))) for c in comparisons)


__all__ = [
    "ALPHA",
    "CONFIDENCE",
    "ERROR_RATE_TEST",
    "LATENCY_TEST",
    "MAX_SAMPLES",
    "TIME_BINS",
    "Comparison",
    "ComparisonResult",
    "ErrorRateResult",
    "LatencyResult",
    "Limits",
    "Side",
    "analyze",
    "check_comparison_names",
    "compare",
    "is_error",
    "newcombe_interval",
    "resolve_comparisons",
    "side_of",
    "unknown_comparison",
]
