"""report.json: the summary as plain JSON (keys, order and values as the report always had).

Groups of requests are flattened into their row (`requests`, `upstreams`, `statuses`,
`latency_ms` next to `name`), and each expectation is `expectation` (its text), `line`,
`passed`, `requests`, `expected`, `observed`, `miss`, `value`.
"""

from __future__ import annotations

import json
from typing import Any

from claimroute_tools.scenario.expect import Outcome
from claimroute_tools.scenario.summary import Breakdown, Latency, OverTime, ReportSummary


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
    return document


def render_json(summary: ReportSummary) -> str:
    """report.json's text."""
    return json.dumps(to_dict(summary), indent=2) + "\n"


__all__ = ["render_json", "to_dict"]
