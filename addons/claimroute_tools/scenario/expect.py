"""Checking expectations against what happened, each with its observed value and its miss.

An expectation selects requests (`users`, `route`, `after_step`, `before_step`, `method`,
`path`) and asserts something about them:

- `upstream` and/or `status`: every selected request (or `share` ± `tolerance`, or at least
  `min_share`, or at most `max_share` of them) was answered by that upstream with that status.
  `upstream: none` means no upstream answered AND no upstream's records contain the request.
  With url upstreams, an answer that names no upstream and that no decision-log record was
  joined to is of unknown origin (`unknown`): a url upstream that does not name itself may
  have sent it, so it never counts as "none".
- `sticky: true`: no user was answered by two different upstreams.
- `formula: true` (with `route`): every request on the route reached the upstream that the
  published bucket formula gives its user, under the policy live then (computed by the addon's
  own `routes.split_target`).
- `log: REGEX`: mitmdump's output has `at_least` (default 1) / `at_most` matching lines.
- `analysis: NAME` with `max_error_rate_increase` / `max_p95_ratio` / `min_requests`: the canary
  analysis of that comparison (analysis.py) passes every limit given (docs/canary-analysis.md).

An expectation that selects no request fails: a check of nothing proves nothing.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from claimroute.policy.model import Policy
from claimroute.policy.routes import Route, split_target
from claimroute_tools.scenario.analysis import (
    Limits,
    compare,
    resolve_comparisons,
    unknown_comparison,
)
from claimroute_tools.scenario.model import NO_UPSTREAM, Expectation, Scenario
from claimroute_tools.scenario.traffic import RequestResult, User


@dataclass(slots=True)
class RunData:
    """Everything the checks and the report read."""

    scenario: Scenario
    users: list[User]
    results: list[RequestResult]
    phase_policies: list[Policy]  # phase k -> the policy live after k steps
    upstream_names: Mapping[str, str]  # upstream URL -> name
    output: str  # mitmdump's
    step_names: list[str]  # in timeline order (ordinal)
    incomplete: str | None = None
    # Url upstreams: the runner cannot see their records, so `upstream: none` is judged from
    # the proxy's answer and decision log alone (and the outcome says so).
    unseen_upstreams: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """The verdict on one expectation."""

    text: str
    line: int | None
    passed: bool
    requests: int  # how many requests the check looked at
    expected: str
    observed: str
    miss: str  # by how much it missed ("" when passed)
    value: float | None = None  # the observed number (share, count), for machines


def pct(value: float) -> str:
    """0.1234 -> `12.3%`."""
    return f"{value * 100:.1f}%"


def select(expectation: Expectation, data: RunData) -> list[RequestResult]:
    """The requests an expectation is about."""
    out = data.results
    if expectation.users is not None:
        wanted = set(expectation.users)
        out = [r for r in out if r.population in wanted]
    if expectation.route is not None:
        out = [r for r in out if r.route == expectation.route]
    if expectation.after_step is not None:
        ordinal = data.step_names.index(expectation.after_step)
        out = [r for r in out if r.phase > ordinal]
    if expectation.before_step is not None:
        ordinal = data.step_names.index(expectation.before_step)
        out = [r for r in out if r.phase <= ordinal]
    if expectation.method is not None:
        out = [r for r in out if r.method == expectation.method]
    if expectation.path is not None:
        out = [r for r in out if r.path.startswith(expectation.path)]
    return out


def _wanted(expectation: Expectation) -> str:
    parts = []
    if expectation.upstream is not None:
        parts.append(
            "no upstream saw it"
            if expectation.upstream == NO_UPSTREAM
            else f"answered by {expectation.upstream}"
        )
    if expectation.status is not None:
        parts.append("status " + "/".join(str(s) for s in expectation.status))
    return ", ".join(parts)


def unknown(result: RequestResult, unseen: Sequence[str]) -> bool:
    """True when nobody can say whether an upstream served `result`: there are url upstreams
    (`unseen`), it got an HTTP answer that names no upstream, and no decision-log record was
    joined to it (no log, a log the proxy does not write, or a failed join)."""
    return (
        bool(unseen)
        and result.status is not None
        and result.answered_by is None
        and not result.logged
        and not result.seen_by
    )


def _matches(result: RequestResult, expectation: Expectation, unseen: Sequence[str] = ()) -> bool:
    # `upstream` is the attributed name: the upstream's own word, else (url upstreams) the
    # decision log's; "none" when neither names one (and the origin is known: `unknown`).
    if expectation.upstream == NO_UPSTREAM:
        if result.upstream != NO_UPSTREAM or result.seen_by or unknown(result, unseen):
            return False
    elif expectation.upstream is not None and result.upstream != expectation.upstream:
        return False
    return expectation.status is None or result.status in expectation.status


def _describe(results: Sequence[RequestResult], limit: int = 3, unseen: Sequence[str] = ()) -> str:
    counts = Counter(
        (
            "unknown" if unknown(r, unseen) else r.upstream,
            r.status_label,
            "seen by " + "+".join(r.seen_by) if r.seen_by else "",
        )
        for r in results
    )
    parts = []
    for (upstream, status, seen), n in counts.most_common(limit):
        extra = f", {seen}" if seen and upstream == NO_UPSTREAM else ""
        parts.append(f"{upstream}/{status} ({n}{extra})")
    if len(counts) > limit:
        parts.append("…")
    return ", ".join(parts)


def _check_outcome(
    expectation: Expectation, selected: list[RequestResult], unseen: tuple[str, ...] = ()
) -> Outcome:
    e = expectation
    n = len(selected)
    hits = [r for r in selected if _matches(r, e, unseen)]
    misses = [r for r in selected if not _matches(r, e, unseen)]
    share = len(hits) / n if n else 0.0
    observed = f"{pct(share)} ({len(hits)}/{n})"
    wanted = _wanted(e)
    if e.share is not None and e.tolerance is not None:
        expected = f"{pct(e.share)} ± {pct(e.tolerance)} {wanted}"
        off = abs(share - e.share)
        passed = n > 0 and off <= e.tolerance + 1e-12
        miss = "" if passed else f"off by {off * 100:.2f} points; {e.tolerance * 100:.2f} allowed"
    elif e.min_share is not None or e.max_share is not None:
        bounds = []
        if e.min_share is not None:
            bounds.append(f"≥ {pct(e.min_share)}")
        if e.max_share is not None:
            bounds.append(f"≤ {pct(e.max_share)}")
        expected = f"{' and '.join(bounds)} {wanted}"
        below = (e.min_share - share) if e.min_share is not None else 0.0
        above = (share - e.max_share) if e.max_share is not None else 0.0
        passed = n > 0 and below <= 1e-12 and above <= 1e-12
        miss = "" if passed else f"{max(below, above) * 100:.2f} points beyond the bound"
    else:
        expected = f"all {wanted}"
        passed = n > 0 and not misses
        miss = "" if passed or not n else f"{len(misses)} of {n} requests ({pct(len(misses) / n)})"
    if n == 0:
        miss = "no request matched the selection"
    elif misses:
        observed += f"; the rest: {_describe(misses, unseen=unseen)}"
    if e.upstream == NO_UPSTREAM and unseen:
        logged = any(r.logged for r in selected)
        how = "the proxy's answer and decision log" if logged else "the answers alone (no "
        how += "" if logged else "decision-log record)"
        observed += f" (records of {', '.join(unseen)} not visible: judged from {how})"
        unknowns = sum(1 for r in selected if unknown(r, unseen))
        if unknowns:
            observed += (
                f"; {unknowns} of unknown origin: an answer naming no upstream and no "
                "decision-log record (is proxy.decision_log the file the proxy writes?)"
            )
    by_log = sum(1 for r in selected if r.source == "decision log")
    if by_log:
        observed += f"; {by_log} attributed by the decision log"
    return Outcome(e.text, e.line, passed, n, expected, observed, miss, share)


def _check_sticky(
    expectation: Expectation, selected: list[RequestResult], users: list[User]
) -> Outcome:
    reached: dict[int, set[str]] = defaultdict(set)
    for result in selected:
        if result.upstream != NO_UPSTREAM:
            reached[result.user].add(result.upstream)
    flappers = sorted(uid for uid, names in reached.items() if len(names) > 1)
    total = len(reached)
    repeat = sum(1 for n in Counter(r.user for r in selected).values() if n > 1)
    observed = f"{len(flappers)} of {total} users reached two upstreams ({repeat} users sent 2+)"
    passed = total > 0 and not flappers
    miss = ""
    if flappers:
        examples = ", ".join(
            f"{users[uid].label}: {'+'.join(sorted(reached[uid]))}" for uid in flappers[:3]
        )
        miss = f"{len(flappers)} users not sticky, e.g. {examples}"
    elif total == 0:
        miss = "no request was answered by an upstream"
    value = len(flappers) / total if total else None
    return Outcome(
        expectation.text,
        expectation.line,
        passed,
        len(selected),
        "every user reaches one upstream",
        observed,
        miss,
        value,
    )


def predicted_target(route: Route, payload: Mapping[str, Any] | None) -> tuple[str, int | None]:
    """The upstream URL (and bucket) the published formula gives for a user on `route`."""
    if route.split is None:
        assert route.upstream is not None
        return route.upstream.url, None
    split = route.split
    assert route.bucket_prefix is not None  # built at load for every split route
    # The addon's own code for the published formula (`by`, `fallback_by`, buckets), no copy.
    index, bucket = split_target(split, route.bucket_prefix, payload)
    return split.targets[index].url, bucket


def find_route(policy: Policy, name: str) -> Route | None:
    """The route called `name` in `policy`."""
    return next((route for route in policy.routes if route.name == name), None)


def _check_formula(
    expectation: Expectation, selected: list[RequestResult], data: RunData
) -> Outcome:
    assert expectation.route is not None
    wrong: list[str] = []
    bucket_mismatch = 0
    checked = 0
    for result in selected:
        route = find_route(data.phase_policies[result.phase], expectation.route)
        if route is None:
            continue
        user = data.users[result.user]
        url, bucket = predicted_target(route, user.payload or None)
        predicted = data.upstream_names.get(url, url)
        checked += 1
        if result.upstream != predicted:
            wrong.append(f"{user.label}: {result.upstream} instead of {predicted}")
        if bucket is not None and result.bucket is not None and bucket != result.bucket:
            bucket_mismatch += 1
    passed = checked > 0 and not wrong and not bucket_mismatch
    observed = (
        f"{checked - len(wrong)}/{checked} requests reached the predicted upstream; "
        f"{bucket_mismatch} bucket disagreements with the addon's log"
    )
    miss = ""
    if checked == 0:
        miss = "no request took this route"
    elif wrong or bucket_mismatch:
        miss = f"{len(wrong)} requests elsewhere" + (f", e.g. {wrong[0]}" if wrong else "")
    return Outcome(
        expectation.text,
        expectation.line,
        passed,
        checked,
        "each user on its bucket_of() cohort",
        observed,
        miss,
        (checked - len(wrong)) / checked if checked else None,
    )


def _check_log(expectation: Expectation, output: str) -> Outcome:
    assert expectation.log is not None
    regex = re.compile(expectation.log)
    count = sum(1 for line in output.splitlines() if regex.search(line))
    low, high = expectation.at_least, expectation.at_most
    passed = (low is None or count >= low) and (high is None or count <= high)
    bounds = []
    if low is not None:
        bounds.append(f"≥ {low}")
    if high is not None:
        bounds.append(f"≤ {high}")
    expected = f"{' and '.join(bounds)} mitmdump lines matching /{expectation.log}/"
    miss = ""
    if not passed:
        miss = (
            f"{low - count} too few"
            if low is not None and count < low
            else (f"{count - (high or 0)} too many")
        )
    return Outcome(
        expectation.text,
        expectation.line,
        passed,
        0,
        expected,
        f"{count} lines",
        miss,
        float(count),
    )


def _check_analysis(expectation: Expectation, data: RunData) -> Outcome:
    """The canary analysis of one comparison against the limits the expectation gives."""
    e = expectation
    comparisons = resolve_comparisons(data.scenario, data.phase_policies, data.upstream_names)
    comparison = next((c for c in comparisons if c.name == e.analysis), None)
    if comparison is None:  # a default name the loader could not check (see model.py)
        known = ", ".join(repr(c.name) for c in comparisons) or "none"
        error = unknown_comparison(data.scenario, comparisons)
        return Outcome(
            e.text,
            e.line,
            False,
            0,
            f"comparison {e.analysis!r}",
            f"comparisons: {known}",
            str(error) if error is not None else f"no comparison is called {e.analysis!r}",
        )
    result = compare(data.results, comparison, Limits.of(e))
    canary, baseline = result.canary, result.baseline
    expected, misses, passed = [], [], True
    if e.min_requests is not None or result.too_few:
        expected.append(f"≥ {result.limits.min_requests} requests per side")
        if result.too_few:
            passed = False
            misses.append(result.too_few)
    judged = []
    if e.max_error_rate_increase is not None:
        expected.append(f"error rate ≤ {e.max_error_rate_increase * 100:+.1f} points")
        judged.append(result.error_rate)
    if e.max_p95_ratio is not None:
        expected.append(f"p95 ratio ≤ {e.max_p95_ratio:g}")
        judged.append(result.latency)
    for metric in judged:
        if metric.verdict != "pass":
            passed = False
            if not result.too_few or metric.verdict == "fail":
                misses.append(f"{metric.verdict}: {metric.detail}")
    observed = (
        f"{canary.upstream} {canary.requests} requests, "
        f"{pct(canary.error_rate or 0)} errors, p95 {canary.p95_ms} ms; "
        f"{baseline.upstream} {baseline.requests} requests, "
        f"{pct(baseline.error_rate or 0)} errors, p95 {baseline.p95_ms} ms"
    )
    value = (
        result.error_rate.difference
        if e.max_error_rate_increase is not None
        else result.latency.ratio_p95
    )
    return Outcome(
        e.text,
        e.line,
        passed,
        canary.requests + baseline.requests,
        f"{comparison.name}: " + ", ".join(expected),
        observed,
        "; ".join(misses),
        value,
    )


def check(expectation: Expectation, data: RunData) -> Outcome:
    """Evaluate one expectation."""
    if expectation.kind == "log":
        return _check_log(expectation, data.output)
    if expectation.kind == "analysis":
        return _check_analysis(expectation, data)
    selected = select(expectation, data)
    if expectation.kind == "sticky":
        return _check_sticky(expectation, selected, data.users)
    if expectation.kind == "formula":
        return _check_formula(expectation, selected, data)
    return _check_outcome(expectation, selected, data.unseen_upstreams)


def evaluate(data: RunData) -> list[Outcome]:
    """Every expectation of the scenario, plus a failed check if the traffic was cut short."""
    outcomes = [check(expectation, data) for expectation in data.scenario.expectations]
    if data.incomplete:
        sent = len(data.results)
        planned = data.scenario.traffic.requests
        outcomes.append(
            Outcome(
                "(runner) every planned request was sent",
                None,
                False,
                sent,
                f"{planned} requests",
                f"{sent} requests",
                data.incomplete,
            )
        )
    return outcomes
