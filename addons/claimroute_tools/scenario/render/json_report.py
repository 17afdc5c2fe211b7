"""report.json: the summary as plain JSON (keys, order and values as the report always had).

Groups of requests are flattened into their row (`requests`, `upstreams`, `statuses`,
`latency_ms` next to `name`), and each expectation is `expectation` (its text), `line`,
`passed`, `requests`, `expected`, `observed`, `miss`, `value`. `analysis` (last, when there is
a comparison) holds every figure of the canary analysis, one object per comparison
(docs/canary-analysis.md).
"""

from __future__ import annotations

import json
from typing import Any

from claimroute_tools.scenario.analysis import (
    ALPHA,
    CONFIDENCE,
    ERROR_RATE_TEST,
    LATENCY_TEST,
    ComparisonResult,
    Side,
)
from claimroute_tools.scenario.expect import Outcome
from claimroute_tools.scenario.summary import (
    Breakdown,
    Latency,
    OverTime,
    ReportSummary,
    RunInfo,
)


def _latency(latency: Latency) -> dict[str, float | None]:
    return {"p50": latency.p50, "p95": latency.p95, "p99": latency.p99, "max": latency.max}


def _breakdown(b: Breakdown) -> dict[str, Any]:
    return {
        "requests": b.requests,
        "upstreams": dict(b.upstreams),
        "statuses": dict(b.statuses),
        "latency_ms": _latency(b.latency_ms),
    }


def _over_time(over: OverTime) -> dict[str, Any]:
    return {
        "bins": over.bins,
        "sent": list(over.sent),
        "served": list(over.served),
        "share_of_served": {name: list(v) for name, v in over.share_of_served.items()},
        "refused_share": list(over.refused_share),
    }


def _expectation(o: Outcome) -> dict[str, Any]:
    return {
        "expectation": o.text,
        "line": o.line,
        "passed": o.passed,
        "requests": o.requests,
        "expected": o.expected,
        "observed": o.observed,
        "miss": o.miss,
        "value": o.value,
    }


def _side(side: Side) -> dict[str, Any]:
    return {
        "upstream": side.upstream,
        "requests": side.requests,
        "errors": side.errors,
        "error_rate": side.error_rate,
        "error_rate_ci": list(side.error_rate_ci) if side.error_rate_ci is not None else None,
        "answered": side.answered,
        "latency_ms": {"p50": side.p50_ms, "p95": side.p95_ms, "p99": side.p99_ms},
        "requests_per_bin": list(side.requests_per_bin),
        "errors_per_bin": list(side.errors_per_bin),
        "samples_ms": list(side.samples_ms),
    }


def _comparison(c: ComparisonResult) -> dict[str, Any]:
    e, lat, limits = c.error_rate, c.latency, c.limits
    return {
        "name": c.name,
        "canary": c.comparison.canary,
        "baseline": c.comparison.baseline,
        "route": c.comparison.route,
        "line": c.comparison.line,
        "limits": {
            "max_error_rate_increase": limits.max_error_rate_increase,
            "max_p95_ratio": limits.max_p95_ratio,
            "min_requests": limits.min_requests,
        },
        "alpha": ALPHA,
        "confidence": CONFIDENCE,
        "too_few": c.too_few,
        "error_rate": {
            "canary": c.canary.error_rate,
            "baseline": c.baseline.error_rate,
            "difference": e.difference,
            # Newcombe's interval of the difference: "fail" needs its low end beyond the limit.
            "difference_ci": list(e.difference_ci) if e.difference_ci is not None else None,
            "test": ERROR_RATE_TEST,
            "p_value": e.p_value,
            "limit": e.limit,
            "verdict": e.verdict,
            "detail": e.detail,
        },
        "latency": {
            "ratio_p50": lat.ratio_p50,
            "ratio_p95": lat.ratio_p95,
            "ratio_p99": lat.ratio_p99,
            "test": LATENCY_TEST,
            "u_statistic": lat.u_statistic,
            "p_value": lat.p_value,
            # canary / limit against baseline: "fail" needs it below alpha.
            "p_value_beyond_limit": lat.p_value_beyond_limit,
            "limit": lat.limit,
            "verdict": lat.verdict,
            "detail": lat.detail,
        },
        "started": round(c.started, 3) if c.started is not None else None,
        "bin_edges_s": list(c.bin_edges_s),
        "sides": {"canary": _side(c.canary), "baseline": _side(c.baseline)},
    }


def _shape(run: RunInfo) -> dict[str, Any]:
    return {
        "target_rate_per_s": run.target_rate_per_s,
        "observed_rate_per_s": run.observed_rate_per_s,
        "delayed_by_cap": run.delayed_by_cap,
        "max_lag_ms": run.max_lag_ms,
        "unsent_on_schedule": run.unsent_on_schedule,
        "target_duration_s": run.target_duration_s,
        "traffic_s": run.traffic_s,
    }


def to_dict(summary: ReportSummary) -> dict[str, Any]:
    """The summary as report.json's document."""
    s, run, result = summary.scenario, summary.run, summary.result
    document: dict[str, Any] = {
        "scenario": {
            "name": s.name,
            "description": s.description,
            "file": s.file,
            "requests": s.requests,
            "concurrency": s.concurrency,
            "seed": s.seed,
        },
        "run": {
            "started": run.started,
            "duration_s": run.duration_s,
            "requests_sent": run.requests_sent,
            "requests_per_s": run.requests_per_s,
            "tokens_minted": run.tokens_minted,
            "decisions_logged": run.decisions_logged,
            "requests_attributed_to_a_decision": run.requests_attributed_to_a_decision,
            "incomplete": run.incomplete,
            "proxy": run.proxy,
            # Which source decided the upstream, per request count (url upstreams only).
            **({"attribution": dict(run.attribution)} if run.attribution else {}),
            # The traffic shape (docs/traffic.md), for a run with a rate or a duration only:
            # a count-based closed loop's report stays as it always was.
            **(_shape(run) if run.shaped else {}),
        },
        "result": {
            "passed": result.passed,
            "expectations": result.expectations,
            "failed": result.failed,
        },
        "upstreams": list(summary.upstreams),
        "overall": _breakdown(summary.overall),
        "populations": [
            {
                "name": p.name,
                "users": p.users,
                "issuer": p.issuer,
                "tamper": p.tamper,
                "tokens_minted": p.tokens_minted,
                **_breakdown(p.traffic),
                "seen_without_answer": p.seen_without_answer,
                "reasons": dict(p.reasons),
                "kids": dict(p.kids),
            }
            for p in summary.populations
        ],
        "routes": [
            {
                "name": r.name,
                **_breakdown(r.traffic),
                "formula_share": dict(r.formula_share) if r.formula_share is not None else None,
            }
            for r in summary.routes
        ],
        "phases": [{"name": p.name, **_breakdown(p.traffic)} for p in summary.phases],
        "timeline": [
            {
                "name": t.name,
                "action": t.action,
                "at": t.at,
                "index": t.index,
                "duration_s": t.duration_s,
                "detail": t.detail,
            }
            for t in summary.timeline
        ],
        "over_time": _over_time(summary.over_time),
        "expectations": [_expectation(o) for o in summary.expectations],
        "files": dict(summary.files),
    }
    if summary.proxy_metrics is not None:  # a run through mitmdump: its metrics at the end
        document["proxy_metrics"] = dict(summary.proxy_metrics)
    if summary.analysis:  # the canary analysis: declared comparisons, or split routes' defaults
        document["analysis"] = [_comparison(c) for c in summary.analysis]
    return document


def render_json(summary: ReportSummary) -> str:
    """report.json's text."""
    return json.dumps(to_dict(summary), indent=2) + "\n"


__all__ = ["render_json", "to_dict"]
