"""report.html: verdict, expectations, the charts (each the same SVG as in report.svg, inline)
and the tables, in one self-contained page (inline CSS, no scripts, nothing fetched)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from claimroute_tools.scenario.analysis import ALPHA, ComparisonResult, Side
from claimroute_tools.scenario.render.cells import esc, ms, predicted, shares, times, where
from claimroute_tools.scenario.render.charts import Chart
from claimroute_tools.scenario.render.svg_report import report_charts, side_label
from claimroute_tools.scenario.summary import Latency, ReportSummary


def _html_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], row_classes: Iterable[str] | None = None
) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    classes = list(row_classes) if row_classes is not None else None
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


HTML_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1000px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } .muted { color: #666; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; width: 100%; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 4px 8px; text-align: left;
         vertical-align: top; }
th { background: #f6f6f6; } tr.pass td:first-child { color: #2e7d32; font-weight: 700; }
tr.fail td:first-child { color: #c62828; font-weight: 700; } tr.fail { background: #fff3f3; }
tr.inconclusive td:first-child { color: #a15c00; font-weight: 700; }
.verdict-pass { color: #2e7d32; } .verdict-fail { color: #c62828; }
figure { margin: 0 0 1em; } svg { max-width: 100%; height: auto; display: block; }
"""


def _figure(chart: Chart) -> str:
    return f"<figure>{chart.svg}</figure>"


def _rate(side: Side) -> str:
    """`1.2% (3/250; 0.4-3.5%)`: the error rate, its counts and its Wilson interval."""
    if side.error_rate is None:
        return "no requests"
    ci = side.error_rate_ci
    interval = f"; {ci[0] * 100:.1f}-{ci[1] * 100:.1f}%" if ci else ""
    return f"{side.error_rate * 100:.1f}% ({side.errors}/{side.requests}{interval})"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}" if value < 0.001 else f"{value:.4f}"


def _difference_ci(ci: tuple[float, float] | None) -> str:
    if ci is None:
        return "-"
    return f"95% CI of the difference {ci[0] * 100:+.2f}..{ci[1] * 100:+.2f} points"


def canary_section(comparisons: Sequence[tuple[ComparisonResult, Chart, Chart]]) -> str:
    """The canary analysis: per comparison, its verdict table and its two charts."""
    parts = [
        "<h2>Canary analysis</h2><p class='muted'>Each canary against its baseline, over the "
        "requests each upstream answered. A metric passes within its limit; it fails when the "
        "data show it beyond the limit (error rate: the low end of the 95% interval of the "
        f"difference; latency: canary latencies divided by the limit still slower at {ALPHA:g}), "
        "and is inconclusive otherwise (or with too few requests). Only pass passes.</p>"
    ]
    for result, latency, errors in comparisons:
        c, b = result.canary, result.baseline
        e, lat = result.error_rate, result.latency
        ratio = f"p95 x {lat.ratio_p95:.2f}" if lat.ratio_p95 is not None else "-"
        diff = f"{e.difference * 100:+.2f} points" if e.difference is not None else "-"
        parts.append(f"<h3>{esc(result.name)}</h3>")
        parts.append(
            f"<p class='muted'>{esc(side_label(result, c))} ({c.requests} requests) against "
            f"{esc(side_label(result, b))} ({b.requests} requests)"
            + (f" · {esc(result.too_few)}" if result.too_few else "")
            + "</p>"
        )
        parts.append(
            _html_table(
                [
                    "verdict",
                    "metric",
                    side_label(result, c),
                    side_label(result, b),
                    "canary vs baseline",
                    "limit",
                    "evidence",
                    "found",
                ],
                [
                    [
                        e.verdict.upper(),
                        "error rate",
                        _rate(c),
                        _rate(b),
                        diff,
                        f"{e.limit * 100:+.2f} points",
                        _difference_ci(e.difference_ci),
                        e.detail,
                    ],
                    [
                        lat.verdict.upper(),
                        "latency p50/p95/p99 ms",
                        ms(Latency(c.p50_ms, c.p95_ms, c.p99_ms, None)),
                        ms(Latency(b.p50_ms, b.p95_ms, b.p99_ms, None)),
                        ratio,
                        f"p95 x {lat.limit:g}",
                        f"p beyond limit {_p(lat.p_value_beyond_limit)}",
                        lat.detail,
                    ],
                ],
                [e.verdict, lat.verdict],
            )
        )
        parts += [_figure(latency), _figure(errors)]
    return "".join(parts)


def render_html(summary: ReportSummary) -> str:
    """A self-contained page: verdict, charts, tables."""
    s, run, result = summary.scenario, summary.run, summary.result
    verdict = "PASS" if result.passed else "FAIL"
    parts = [
        f"<h1>{esc(s.name)} <span class='verdict-{verdict.lower()}'>{verdict}</span></h1>",
        f"<p>{esc(s.description)}</p>",
        f"<p class='muted'>{esc(s.file)} · {run.requests_sent} requests in "
        f"{run.duration_s:.1f}s ({run.requests_per_s or 0:g}/s) · concurrency "
        f"{s.concurrency} · seed {s.seed} · {run.tokens_minted} tokens minted · "
        f"{esc(shape) + ' · ' if (shape := run.shape_text(s.concurrency)) else ''}"
        f"started {esc(run.started)}</p>",
    ]
    if run.incomplete:
        parts.append(f"<p class='verdict-fail'>Incomplete: {esc(run.incomplete)}</p>")
    parts.append("<h2>Expectations</h2>")
    parts.append(
        _html_table(
            ["", "expectation", "expected", "observed", "missed by"],
            [
                ["PASS" if e.passed else "FAIL", where(e) + e.text, e.expected, e.observed, e.miss]
                for e in summary.expectations
            ],
            ["pass" if e.passed else "fail" for e in summary.expectations],
        )
    )
    charts = report_charts(summary)
    parts.append("<h2>Charts</h2>")
    parts.extend(_figure(chart) for chart in charts.run)
    if charts.comparisons:
        parts.append(canary_section(charts.comparisons))
    parts.append("<h2>Populations</h2>")
    parts.append(
        _html_table(
            [
                "population",
                "users",
                "tokens",
                "requests",
                "answered by",
                "statuses",
                "refusals",
                "p50/p95/p99 ms",
            ],
            [
                [
                    p.name,
                    p.users,
                    p.tokens_minted,
                    p.traffic.requests,
                    shares(p.traffic.upstreams, p.traffic.requests),
                    times(p.traffic.statuses),
                    times(p.reasons),
                    ms(p.traffic.latency_ms),
                ]
                for p in summary.populations
            ],
        )
    )
    if summary.routes:
        parts.append(
            "<h2>Routes</h2><p class='muted'>Which route a request took comes from the "
            "addon's decision log; who answered comes from the upstream.</p>"
        )
        parts.append(
            _html_table(
                ["route", "requests", "answered by", "bucket_of() predicts"],
                [
                    [
                        r.name,
                        r.traffic.requests,
                        shares(r.traffic.upstreams, r.traffic.requests),
                        predicted(r.formula_share),
                    ]
                    for r in summary.routes
                ],
            )
        )
    if summary.timeline:
        parts.append("<h2>Timeline</h2>")
        parts.append(
            _html_table(
                ["at", "step", "action", "what happened", "took"],
                [
                    [
                        f"{t.at:.0%} (request {t.index})",
                        t.name,
                        t.action,
                        t.detail,
                        f"{t.duration_s:.2f}s",
                    ]
                    for t in summary.timeline
                ],
            )
        )
        parts.append(
            _html_table(
                ["phase", "requests", "answered by", "statuses", "p50/p95/p99 ms"],
                [
                    [
                        p.name,
                        p.traffic.requests,
                        shares(p.traffic.upstreams, p.traffic.requests),
                        times(p.traffic.statuses),
                        ms(p.traffic.latency_ms),
                    ]
                    for p in summary.phases
                ],
            )
        )
    parts.append("<h2>Files</h2>")
    parts.append(_html_table(["file", "path"], sorted(summary.files.items())))
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(s.name)}: {verdict}</title><style>{HTML_STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


__all__ = ["render_html"]
