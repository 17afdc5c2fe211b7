"""The canary analysis (scenario/analysis.py) on synthetic results: the statistics against known
answers, seeded samples with and without a difference, too few requests, the expectation's
messages, the model's errors and the default comparisons of split routes. No mitmdump here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from claimroute.config.source import parse_yaml_text
from claimroute.errors import PolicyError
from claimroute.policy.load import load_policy_text
from claimroute_tools.scenario.analysis import (
    MAX_SAMPLES,
    TIME_BINS,
    Comparison,
    Limits,
    analyze,
    check_comparison_names,
    compare,
    newcombe_interval,
    resolve_comparisons,
    side_of,
)
from claimroute_tools.scenario.comparisons import baseline_index
from claimroute_tools.scenario.expect import RunData, check
from claimroute_tools.scenario.model import Scenario, parse_scenario
from claimroute_tools.scenario.render import to_dict
from claimroute_tools.scenario.summary import summarize
from claimroute_tools.scenario.traffic import RequestResult, TrafficRun, build_users

PRIMARY, CANARY, SHADOW = "http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003"
NAMES = {PRIMARY: "primary", CANARY: "canary", SHADOW: "shadow"}
T0 = 1_700_000_000.0
COMPARISON = Comparison("canary-vs-primary", "canary", "primary")

# -- synthetic results -------------------------------------------------------------------------


def result(
    index: int,
    upstream: str | None,
    status: int | None,
    latency_ms: float,
    started: float | None = None,
) -> RequestResult:
    """One request as traffic.send_one would record it."""
    return RequestResult(
        index=index,
        user=0,
        population="users",
        phase=0,
        method="GET",
        path="/",
        kid=None,
        started=T0 + (index * 0.01 if started is None else started),
        latency_ms=latency_ms,
        status=status,
        answered_by=upstream,
    )


def sample(
    seed: int,
    *,
    canary: int = 2000,
    baseline: int = 2000,
    canary_errors: float = 0.01,
    baseline_errors: float = 0.01,
    canary_slowdown: float = 1.0,
) -> list[RequestResult]:
    """Seeded traffic: log-normal latencies around 20 ms, errors as 503s (and a few timeouts)."""
    rng = np.random.default_rng(seed)
    out = []
    sides = ["canary"] * canary + ["primary"] * baseline
    rng.shuffle(sides)
    for index, side in enumerate(sides):
        is_canary = side == "canary"
        rate = canary_errors if is_canary else baseline_errors
        latency = float(rng.lognormal(np.log(20), 0.4)) * (canary_slowdown if is_canary else 1.0)
        draw = rng.random()
        status = (None if draw < rate / 4 else 503) if draw < rate else 200
        out.append(result(index, side, status, latency))
    return out


# -- the statistics against known answers ------------------------------------------------------


def test_error_rate_has_the_wilson_interval_and_fishers_one_sided_p() -> None:
    # 5 errors in 100 vs 0 in 100. Wilson 95% for 5/100 is (0.02154, 0.11175); Fisher's exact
    # one-sided p is P(all 5 errors on the canary) = C(100,5) / C(200,5) = 0.029691.
    results = [result(i, "canary", 500 if i < 5 else 200, 10.0) for i in range(100)]
    results += [result(100 + i, "primary", 200, 10.0) for i in range(100)]
    out = compare(results, COMPARISON, Limits(min_requests=10))
    assert out.canary.requests == 100 and out.canary.errors == 5
    assert out.canary.error_rate == 0.05
    assert out.canary.error_rate_ci == pytest.approx((0.02154, 0.11175), abs=1e-5)
    assert out.baseline.error_rate_ci is not None and out.baseline.error_rate_ci[0] == 0.0
    assert out.error_rate.difference == pytest.approx(0.05)
    assert out.error_rate.p_value == pytest.approx(0.029691, abs=1e-6)
    # Newcombe's interval from the two Wilson intervals (the upper end of 0/100's is
    # z^2 / (100 + z^2) = 0.036994): low = 0.05 - hypot(0.05 - 0.02154, 0.036994) = 0.00332,
    # high = 0.05 + (0.11175 - 0.05) = 0.11175. Worse than baseline (Fisher p = 0.03), but not
    # shown to be beyond the 1-point limit: inconclusive, not fail.
    assert out.error_rate.difference_ci == pytest.approx((0.00332, 0.11175), abs=1e-5)
    assert out.error_rate.verdict == "inconclusive"
    assert "+5.0 points over baseline is beyond the limit +1.0 points but not shown to be" in (
        out.error_rate.detail
    )
    assert "(95% interval of the difference +0.3..+11.2)" in out.error_rate.detail
    assert "more requests would tell" in out.error_rate.detail


def test_newcombe_interval_matches_the_published_example() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873-890, table II, example (a): 56/70 vs
    # 48/80, method 10 (hybrid score): 0.0524 to 0.3339.
    assert newcombe_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_error_rate_fails_only_when_the_interval_is_beyond_the_limit() -> None:
    # canary 8/500 (1.6%) vs baseline 6/1500 (0.4%): +1.2 points, limit +1.0. Fisher's p is
    # 0.010 (worse than baseline), but the interval of the difference starts at +0.28 points:
    # not shown to be beyond the limit. (Before: "fail" on Fisher's p alone.)
    canary = [result(i, "canary", 503 if i < 8 else 200, 20.0) for i in range(500)]
    base = [result(1000 + i, "primary", 503 if i < 6 else 200, 20.0) for i in range(1500)]
    out = compare(canary + base, COMPARISON, Limits(0.01, 1.25, 30))
    assert out.error_rate.p_value is not None and out.error_rate.p_value < 0.05
    assert out.error_rate.difference_ci is not None
    assert 0 < out.error_rate.difference_ci[0] < 0.01 < out.error_rate.difference_ci[1]
    assert out.error_rate.verdict == "inconclusive", out.error_rate.detail
    # The same rates, limit +0.5 points: inconclusive at these counts, "fail" with ten times
    # the requests (the interval narrows below +1.2 points until its low end passes +0.5).
    assert compare(canary + base, COMPARISON, Limits(0.005)).error_rate.verdict == "inconclusive"
    canary = [result(i, "canary", 503 if i < 80 else 200, 20.0) for i in range(5000)]
    base = [result(10_000 + i, "primary", 503 if i < 60 else 200, 20.0) for i in range(15_000)]
    out = compare(canary + base, COMPARISON, Limits(0.005))
    assert out.error_rate.difference_ci is not None and out.error_rate.difference_ci[0] > 0.005
    assert out.error_rate.verdict == "fail", out.error_rate.detail
    assert "is beyond the limit +0.5 points (95% interval of the difference +0.9..+1.6)" in (
        out.error_rate.detail
    )


def test_timeouts_and_connection_errors_count_as_errors_but_have_no_latency() -> None:
    results = [result(0, "canary", None, 10_000.0), result(1, "canary", 502, 5.0)]
    results += [result(2, "canary", 200, 7.0), result(3, "primary", 200, 7.0)]
    out = compare(results, COMPARISON, Limits(min_requests=1))
    assert (out.canary.requests, out.canary.errors, out.canary.answered) == (3, 2, 2)
    assert out.canary.samples_ms == (5.0, 7.0)  # the timeout has no answer, so no latency


def test_failures_without_an_answer_count_on_the_side_the_proxy_sent_them_to() -> None:
    # An echo canary that timed out: no answer, so `upstream` is "none"; the decision log
    # (`decided`) and the echo's records (`seen_by`) both say canary. They must count as the
    # canary's errors (before the fix they fell out of both sides: "canary has 0 requests").
    ok = [result(i, "canary", 200, 20.0) for i in range(100)]
    timed_out = []
    for i in range(100):
        r = result(100 + i, None, None, 1000.0)
        r.error, r.decided, r.seen_by = "TimeoutError: ", "canary", ("canary",)
        timed_out.append(r)
    primary = [result(200 + i, "primary", 200, 20.0) for i in range(200)]
    out = compare(ok + timed_out + primary, COMPARISON, Limits())
    assert (out.canary.requests, out.canary.errors, out.canary.answered) == (200, 100, 100)
    assert out.error_rate.verdict == "fail", out.error_rate.detail


def test_side_of_a_failed_request_reads_the_decision_log_then_a_single_echo_record() -> None:
    only_seen = result(0, None, None, 1.0)
    only_seen.seen_by = ("canary",)
    assert side_of(only_seen) == "canary"
    proxy_502 = result(1, None, 502, 1.0)  # the proxy's own 502: canary unreachable
    proxy_502.decided = "canary"
    assert side_of(proxy_502) == "canary"
    two_seen = result(2, None, None, 1.0)  # two records (a retry?): no side
    two_seen.seen_by = ("canary", "primary")
    assert side_of(two_seen) == "none"
    refused = result(3, None, 401, 1.0)  # the proxy's refusal: nobody was sent it
    refused.decided = "canary"  # (even if a log said so, a 4xx of the proxy is no failure)
    assert side_of(refused) == "none"
    assert side_of(result(4, "primary", None, 1.0)) == "primary"


def test_latency_fails_only_when_slower_than_baseline_times_the_limit() -> None:
    # Canary 1.3x the baseline (limit 1.25): beyond the limit as observed, and any-difference
    # is very significant, but canary / 1.25 against baseline is not: inconclusive.
    rng = np.random.default_rng(11)
    base = rng.lognormal(np.log(20), 0.3, 300)
    results = [result(i, "primary", 200, float(v)) for i, v in enumerate(base)]
    canary = rng.lognormal(np.log(20), 0.3, 300) * 1.3
    results += [result(1000 + i, "canary", 200, float(v)) for i, v in enumerate(canary)]
    out = compare(results, COMPARISON, Limits(0.01, 1.25, 30))
    assert out.latency.ratio_p95 is not None and out.latency.ratio_p95 > 1.25
    assert out.latency.p_value is not None and out.latency.p_value < 1e-6  # any difference
    assert out.latency.p_value_beyond_limit is not None
    assert out.latency.p_value_beyond_limit > 0.05
    assert out.latency.verdict == "inconclusive", out.latency.detail
    assert "more requests would tell" in out.latency.detail
    # Twice as slow: shown to be beyond 1.25.
    results = [r for r in results if r.upstream == "primary"]
    results += [result(1000 + i, "canary", 200, float(v) * 2) for i, v in enumerate(canary)]
    out = compare(results, COMPARISON, Limits(0.01, 1.25, 30))
    assert out.latency.p_value_beyond_limit is not None
    assert out.latency.p_value_beyond_limit < 1e-6
    assert out.latency.verdict == "fail", out.latency.detail


def test_latency_percentiles_are_nearest_rank_with_ratios_and_mann_whitney() -> None:
    results = [result(i, "primary", 200, float(i + 1)) for i in range(100)]  # 1..100 ms
    results += [result(100 + i, "canary", 200, 2.0 * (i + 1)) for i in range(100)]  # 2..200
    out = compare(results, COMPARISON, Limits(min_requests=10))
    assert (out.baseline.p50_ms, out.baseline.p95_ms, out.baseline.p99_ms) == (50, 95, 99)
    assert (out.canary.p50_ms, out.canary.p95_ms, out.canary.p99_ms) == (100, 190, 198)
    assert (out.latency.ratio_p50, out.latency.ratio_p95, out.latency.ratio_p99) == (2, 2, 2)
    assert out.latency.p_value is not None and out.latency.p_value < 1e-6
    assert out.latency.verdict == "fail"
    assert "p95 ratio 2.00 (limit 1.25): 190 ms vs 95 ms" in out.latency.detail


def test_mann_whitney_exact_small_sample() -> None:
    # Canary {4, 5, 6} above baseline {1, 2, 3}: U = 9, exact one-sided p = 1 / C(6, 3) = 0.05.
    results = [result(i, "primary", 200, float(i + 1)) for i in range(3)]
    results += [result(3 + i, "canary", 200, float(i + 4)) for i in range(3)]
    out = compare(results, COMPARISON, Limits(min_requests=1))
    assert out.latency.u_statistic == 9.0
    assert out.latency.p_value == pytest.approx(0.05)
    # A ratio of 2 beyond the limit, but p = 0.05 is not below alpha: inconclusive.
    assert out.latency.verdict == "inconclusive"
    assert "not significant at 0.05" in out.latency.detail


# -- seeded samples ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_known_difference_is_found(seed: int) -> None:
    results = sample(
        seed, canary_errors=0.05, baseline_errors=0.005, canary_slowdown=1.5, baseline=4000
    )
    out = compare(results, COMPARISON, Limits(0.01, 1.25, 200))
    assert out.error_rate.verdict == "fail"
    assert out.error_rate.difference == pytest.approx(0.045, abs=0.015)
    assert out.error_rate.p_value is not None and out.error_rate.p_value < 1e-6
    assert out.latency.verdict == "fail"
    assert out.latency.ratio_p95 == pytest.approx(1.5, abs=0.15)
    assert out.latency.p_value is not None and out.latency.p_value < 1e-6


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_no_difference_is_not_found(seed: int) -> None:
    out = compare(sample(seed), COMPARISON, Limits(0.01, 1.25, 200))
    assert out.too_few is None
    assert out.error_rate.verdict == "pass", out.error_rate.detail
    assert out.latency.verdict == "pass", out.latency.detail
    assert out.latency.ratio_p95 == pytest.approx(1.0, abs=0.1)


def test_a_difference_beyond_the_limit_that_the_test_does_not_find_is_inconclusive() -> None:
    # 2 of 50 vs 0 of 50: +4 points (limit +1), but Fisher's p = C(50,2)/C(100,2) = 0.2475.
    results = [result(i, "canary", 500 if i < 2 else 200, 10.0) for i in range(50)]
    results += [result(50 + i, "primary", 200, 10.0) for i in range(50)]
    out = compare(results, COMPARISON, Limits(min_requests=10))
    assert out.error_rate.p_value == pytest.approx(0.2475, abs=1e-4)
    assert out.error_rate.verdict == "inconclusive"


def test_too_few_requests_is_inconclusive_and_says_how_many() -> None:
    results = sample(1, canary=87, baseline=1000, canary_errors=0.2, canary_slowdown=3)
    out = compare(results, COMPARISON, Limits(0.01, 1.25, 200))
    assert out.too_few == "canary has 87 requests, fewer than 200"
    assert out.error_rate.verdict == "inconclusive"
    assert out.latency.verdict == "inconclusive"
    assert out.error_rate.detail.startswith("canary has 87 requests, fewer than 200")


def test_refused_requests_are_in_neither_side() -> None:
    results = [result(0, "canary", 200, 5.0), result(1, "primary", 200, 5.0)]
    results += [result(2, None, 401, 1.0), result(3, None, 403, 1.0), result(4, None, 502, 1.0)]
    out = compare(results, COMPARISON, Limits(min_requests=1))
    assert out.canary.requests + out.baseline.requests == 2
    assert out.canary.errors + out.baseline.errors == 0


def test_time_bins_span_the_run_and_count_requests_and_errors_per_side() -> None:
    # Ten seconds of traffic; the canary fails only in the last second.
    results = [
        result(i, "canary" if i % 2 else "primary", 503 if i >= 90 and i % 2 else 200, 5.0, i / 10)
        for i in range(100)
    ]
    out = compare(results, COMPARISON, Limits(min_requests=1))
    assert len(out.bin_edges_s) == TIME_BINS + 1
    assert out.bin_edges_s[0] == 0 and out.bin_edges_s[-1] == pytest.approx(9.9)
    assert out.started == T0
    assert sum(out.canary.requests_per_bin) == out.canary.requests == 50
    assert sum(out.baseline.requests_per_bin) == 50
    assert sum(out.canary.errors_per_bin) == 5 and sum(out.baseline.errors_per_bin) == 0
    assert out.canary.errors_per_bin[:-2] == (0,) * (TIME_BINS - 2)  # all in the last 10%


def test_many_latency_samples_are_thinned_evenly_for_the_charts() -> None:
    results = [result(i, "canary", 200, float(i)) for i in range(MAX_SAMPLES * 2)]
    results.append(result(MAX_SAMPLES * 2, "primary", 200, 1.0))
    out = compare(results, COMPARISON, Limits(min_requests=1))
    assert out.canary.answered == MAX_SAMPLES * 2
    assert len(out.canary.samples_ms) == MAX_SAMPLES
    assert out.canary.samples_ms == tuple(sorted(out.canary.samples_ms))
    assert out.canary.samples_ms[0] == 1.0 and out.canary.samples_ms[-1] == MAX_SAMPLES * 2 - 1


# -- scenarios, expectations and the summary ---------------------------------------------------

SCENARIO = """\
version: 1
name: canary-check
issuers:
  corp: {alg: ES256}
upstreams: [primary, canary, shadow]
policy:
  version: 1
  providers:
    corp:
      issuer: "${issuers.corp.issuer}"
      jwks: {url: "${issuers.corp.jwks_url}"}
  routes:
    - name: ten-percent
      match: {authenticated: true}
      split:
        by: sub
        to:
          - {upstream: "${upstreams.canary.url}", weight: 10}
          - {upstream: "${upstreams.primary.url}", weight: 90}
users:
  - {name: users, count: 10, issuer: corp}
traffic: {requests: 4000}
EXTRA
expect:
EXPECT
"""


def policy_text(targets: list[tuple[str, int]]) -> str:
    to = "\n".join(f'        - {{upstream: "{url}", weight: {w}}}' for url, w in targets)
    return f"""\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {{url: "http://127.0.0.1:9000/jwks"}}
routes:
  - name: ten-percent
    match: {{authenticated: true}}
    split:
      by: sub
      to:
{to}
"""


def scenario(expect: str, extra: str = "", text: str = SCENARIO) -> Scenario:
    body = text.replace("EXTRA\n", extra).replace("EXPECT\n", expect)
    document, root = parse_yaml_text(body, "canary-check.yaml")
    return parse_scenario(document, root, Path("scenarios/canary-check.yaml"))


def load_error(expect: str, extra: str = "", text: str = SCENARIO) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        scenario(expect, extra, text)
    return info.value


def run_data(s: Scenario, results: list[RequestResult]) -> RunData:
    policy = load_policy_text(policy_text([(CANARY, 10), (PRIMARY, 90)]), "p.yaml", Path("."))
    return RunData(s, build_users(s.users), results, [policy], NAMES, "", [])


def test_the_expectation_says_by_how_much_it_missed() -> None:
    s = scenario(
        "  - {analysis: 'ten-percent: canary-vs-primary', max_error_rate_increase: 0.01,"
        " max_p95_ratio: 1.25, min_requests: 200}\n"
    )
    results = sample(7, canary_errors=0.05, baseline_errors=0.005, canary_slowdown=1.6)
    outcome = check(s.expectations[0], run_data(s, results))
    assert not outcome.passed
    assert outcome.expected == (
        "ten-percent: canary-vs-primary: ≥ 200 requests per side, error rate ≤ +1.0 points, "
        "p95 ratio ≤ 1.25"
    )
    assert "fail: error rate +" in outcome.miss
    assert "is beyond the limit +1.0 points (95% interval of the difference +" in outcome.miss
    assert "fail: p95 ratio 1." in outcome.miss and "(limit 1.25): " in outcome.miss
    assert "slower than baseline x1.25: p=" in outcome.miss and "any difference: p=" in (
        outcome.miss
    )
    assert outcome.requests == 4000
    assert outcome.value == pytest.approx(0.045, abs=0.015)  # the error-rate difference


def test_the_expectation_passes_without_a_difference_and_judges_only_its_limits() -> None:
    s = scenario("  - {analysis: 'ten-percent: canary-vs-primary', max_p95_ratio: 1.25}\n")
    results = sample(3, canary_errors=0.3)  # far worse errors, but only latency is judged
    outcome = check(s.expectations[0], run_data(s, results))
    assert outcome.passed, outcome.miss
    assert outcome.miss == ""


def test_the_expectation_fails_with_too_few_requests() -> None:
    s = scenario("  - {analysis: 'ten-percent: canary-vs-primary', min_requests: 200}\n")
    outcome = check(s.expectations[0], run_data(s, sample(1, canary=87)))
    assert not outcome.passed
    assert outcome.miss == "canary has 87 requests, fewer than 200"


def test_declared_comparisons_replace_the_defaults() -> None:
    extra = "analysis:\n  - {name: shadow-check, canary: shadow, baseline: primary}\n"
    s = scenario("  - {analysis: shadow-check, max_error_rate_increase: 1%}\n", extra)
    assert s.expectations[0].max_error_rate_increase == 0.01
    data = run_data(s, [])
    assert resolve_comparisons(s, data.phase_policies, NAMES) == (
        Comparison("shadow-check", "shadow", "primary", line=24),
    )
    assert "'ten-percent: canary-vs-primary'" in str(
        load_error("  - {analysis: 'ten-percent: canary-vs-primary', min_requests: 1}\n", extra)
    )


def test_the_summary_and_report_json_hold_every_figure() -> None:
    s = scenario("  - {analysis: 'ten-percent: canary-vs-primary', min_requests: 200}\n")
    data = run_data(s, sample(2, canary_errors=0.05, canary_slowdown=1.5))
    run = TrafficRun(data.results, 4000, T0, T0 + 40)
    summary = summarize(
        data,
        run,
        [],
        [],
        ["start"],
        tokens_minted=10,
        attributed=4000,
        decisions=4000,
        files={},
        proxy_url=None,
    )
    (only,) = summary.analysis
    assert only.name == "ten-percent: canary-vs-primary" and only.limits.min_requests == 200
    document = json.loads(json.dumps(to_dict(summary)))
    (entry,) = document["analysis"]
    assert entry["route"] == "ten-percent" and entry["limits"]["min_requests"] == 200
    assert entry["error_rate"]["verdict"] == "fail" and entry["latency"]["verdict"] == "fail"
    assert entry["error_rate"]["test"].startswith("Fisher's exact test")
    assert set(entry["sides"]) == {"canary", "baseline"}
    side = entry["sides"]["canary"]
    assert side["upstream"] == "canary" and len(side["error_rate_ci"]) == 2
    assert len(side["requests_per_bin"]) == len(entry["bin_edges_s"]) - 1 == TIME_BINS
    assert len(side["samples_ms"]) == side["answered"]


def test_analyze_uses_the_first_expectation_naming_a_comparison_and_defaults_else() -> None:
    s = scenario(
        "  - {analysis: 'ten-percent: canary-vs-primary', max_p95_ratio: 2}\n"
        "  - {analysis: 'ten-percent: canary-vs-primary', max_p95_ratio: 3}\n"
    )
    named = Comparison("ten-percent: canary-vs-primary", "canary", "primary")
    other = Comparison("other", "shadow", "primary")
    first, second = analyze([], [named, other], s.expectations)
    assert first.limits == Limits(max_p95_ratio=2)
    assert second.limits == Limits()


# -- load errors -------------------------------------------------------------------------------


def test_an_unknown_comparison_is_a_load_error_with_key_path_and_line() -> None:
    error = load_error(
        "  - {sticky: true}\n  - {analysis: canary-vs-primary, max_error_rate_increase: 0.01}\n"
    )
    assert error.key_path == "expect[1].analysis" and error.line == 25
    assert "no comparison is called 'canary-vs-primary'" in str(error)
    assert "'ten-percent: canary-vs-primary'" in str(error)  # the defaults are listed


@pytest.mark.parametrize(
    ("expect", "extra", "key_path", "words"),
    [
        ("  - {analysis: x}\n", "", "expect[0]", "needs at least one of"),
        ("  - {analysis: x, max_p95_ratio: 0}\n", "", "expect[0].max_p95_ratio", "above 0"),
        ("  - {analysis: x, min_requests: 0}\n", "", "expect[0].min_requests", ""),
        ("  - {analysis: x, max_error_rate_increase: 2}\n", "", "", "between 0% and 100%"),
        ("  - {analysis: x, min_requests: 1, users: users}\n", "", "expect[0]", "users"),
        ("  - {sticky: true}\n", "analysis:\n  - {canary: nope, baseline: primary}\n",
         "analysis[0].canary", "unknown upstream 'nope'"),
        ("  - {sticky: true}\n", "analysis:\n  - {canary: canary, baseline: canary}\n",
         "analysis[0].baseline", "the same upstream"),
        ("  - {sticky: true}\n",
         "analysis:\n  - {canary: canary, baseline: primary}\n"
         "  - {canary: canary, baseline: primary}\n",
         "analysis[1].name", "declared twice (line 24)"),
        ("  - {sticky: true}\n", "analysis: []\n", "analysis", ""),
    ],
)  # fmt: skip
def test_model_errors_name_the_key_path_and_line(
    expect: str, extra: str, key_path: str, words: str
) -> None:
    error = load_error(expect, extra)
    assert error.line is not None
    assert key_path in (error.key_path or "")
    assert words in str(error)


def test_a_default_name_of_a_target_without_a_reference_is_checked_at_run_time() -> None:
    text = SCENARIO.replace('"${upstreams.canary.url}"', "http://127.0.0.1:9002")
    s = scenario("  - {analysis: 'ten-percent: canary-vs-primary', min_requests: 1}\n", text=text)
    data = run_data(s, sample(1, canary=50, baseline=50))
    assert [c.name for c in resolve_comparisons(s, data.phase_policies, NAMES)] == [
        "ten-percent: canary-vs-primary"
    ]
    assert check(s.expectations[0], data).passed
    # A name the run cannot resolve fails the expectation, naming the file, key path and line.
    s = scenario("  - {analysis: 'ten-percent: shadow-vs-primary', min_requests: 1}\n", text=text)
    data = run_data(s, [])
    with pytest.raises(PolicyError) as info:  # what the runner calls when the run starts
        check_comparison_names(s, data.phase_policies, NAMES)
    assert (info.value.key_path, info.value.line) == ("expect[0].analysis", 24)
    assert "checked when the run started" in str(info.value)
    assert "comparisons: 'ten-percent: canary-vs-primary'" in str(info.value)
    outcome = check(s.expectations[0], data)  # the last resort: the expectation fails
    assert not outcome.passed
    assert outcome.miss.startswith("scenarios/canary-check.yaml:24: expect[0].analysis: ")
    assert "no comparison is called 'ten-percent: shadow-vs-primary'" in outcome.miss
    # A name on a route whose targets are all references is refused at load.
    assert "shadow-vs-primary" in str(
        load_error("  - {analysis: 'ten-percent: shadow-vs-primary', min_requests: 1}\n")
    )


# -- default comparisons -----------------------------------------------------------------------


def test_baseline_is_the_largest_weight_first_on_ties() -> None:
    assert baseline_index([10, 90]) == 1
    assert baseline_index([1, 1, 1]) == 0
    assert baseline_index([0, 5, 5]) == 1


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ([(CANARY, 10), (PRIMARY, 90)], ["ten-percent: canary-vs-primary"]),
        (  # 1/1/1: buckets 3333/3333/3334, but the weights tie, so the first is the baseline
            [(PRIMARY, 1), (CANARY, 1), (SHADOW, 1)],
            ["ten-percent: canary-vs-primary", "ten-percent: shadow-vs-primary"],
        ),
        ([(CANARY, 50), ("http://127.0.0.1:9999", 50)], []),  # the baseline is no upstream
        ([(PRIMARY, 80), (CANARY, 10), (PRIMARY, 10)], ["ten-percent: canary-vs-primary"]),
    ],
)
def test_default_comparisons_from_a_split_route(
    targets: list[tuple[str, int]], expected: list[str]
) -> None:
    def written(url: str) -> str:  # how the scenario's policy writes the target
        return "${upstreams." + NAMES[url] + ".url}" if url in NAMES else url

    lines = "\n".join(f'          - {{upstream: "{written(u)}", weight: {w}}}' for u, w in targets)
    text = SCENARIO.replace(
        '          - {upstream: "${upstreams.canary.url}", weight: 10}\n'
        '          - {upstream: "${upstreams.primary.url}", weight: 90}',
        lines,
    )
    s = scenario("  - {sticky: true}\n", text=text)
    policy = load_policy_text(policy_text(targets), "p.yaml", Path("."))
    found = resolve_comparisons(s, [policy], NAMES)
    assert [c.name for c in found] == expected
    assert all(c.route == "ten-percent" for c in found)


# -- the schema --------------------------------------------------------------------------------

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def validator() -> Draft202012Validator:
    policy = json.loads((SCHEMAS / "policy.schema.json").read_text())
    registry = Registry().with_resource("policy.schema.json", Resource.from_contents(policy))
    return Draft202012Validator(json.loads((SCHEMAS / "scenario.schema.json").read_text()),
                                registry=registry)  # fmt: skip


def schema_document(expect: str, extra: str = "") -> Any:
    body = SCENARIO.replace("EXTRA\n", extra).replace("EXPECT\n", expect)
    return parse_yaml_text(body, "x.yaml")[0]


def test_the_schema_accepts_analysis_and_refuses_what_the_loader_refuses() -> None:
    check_schema = validator()
    extra = "analysis:\n  - {name: c, canary: canary, baseline: primary}\n"
    good = schema_document(
        "  - {analysis: c, max_error_rate_increase: 1%, max_p95_ratio: 1.25, min_requests: 200}\n"
        "  - {log: x, at_least: 1}\n  - {users: users, status: 200}\n",
        extra,
    )
    assert list(check_schema.iter_errors(good)) == []
    scenario(
        "  - {analysis: c, max_error_rate_increase: 1%, max_p95_ratio: 1.25, min_requests: 200}\n",
        extra,
    )
    for bad in (
        "  - {analysis: c}\n",
        "  - {analysis: c, min_requests: 1, users: users}\n",
        "  - {analysis: c, max_p95_ratio: 0}\n",
        "  - {log: x, min_requests: 1}\n",
    ):
        assert list(check_schema.iter_errors(schema_document(bad, extra))), bad
        with pytest.raises(PolicyError):
            scenario(bad, extra)
    missing_baseline = schema_document("  - {sticky: true}\n", "analysis:\n  - {canary: canary}\n")
    assert list(check_schema.iter_errors(missing_baseline))
