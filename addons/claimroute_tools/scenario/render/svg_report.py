"""report.svg: the report's charts, from the summary's figures (charts.py draws them).

Who answered and which statuses, per population (100% stacked bars), and the share answered by
each non-primary upstream and the share refused over the run (lines); then, per comparison of
the canary analysis, the two sides' latency distributions and their error rates over the run.
`report_charts` gives them one by one (report.html inlines each); `render_svg` stacks them under
a banner into one self-contained SVG document (no scripts, nothing fetched), the file a README
can show.

The colours are stable: an upstream keeps its colour by its place in the scenario's list, a
status class keeps its own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from claimroute_tools.scenario.analysis import ComparisonResult, Side
from claimroute_tools.scenario.model import NO_UPSTREAM
from claimroute_tools.scenario.render.charts import (
    Chart,
    Series,
    error_rate_over_time,
    header,
    latency_distributions,
    shares_over_time,
    stack,
    stacked_shares,
)
from claimroute_tools.scenario.summary import ReportSummary

UPSTREAM_COLORS = ("#4C78A8", "#F58518", "#54A24B", "#B279A2", "#72B7B2", "#EECA3B")
NONE_COLOR = "#9D9D9D"
STATUS_COLORS = {
    "2": "#54A24B",
    "3": "#72B7B2",
    "400": "#B279A2",
    "401": "#E45756",
    "403": "#9E1B32",
    "404": "#FF9DA6",
    "4": "#9D755D",
    "5": "#5B3A29",
}
ERROR_COLOR = "#333333"


def status_color(label: str) -> str:
    """A stable color per status class (401 and 403 get their own)."""
    if label == "error":
        return ERROR_COLOR
    return STATUS_COLORS.get(label) or STATUS_COLORS.get(label[:1], NONE_COLOR)


def status_order(label: str) -> tuple[int, str]:
    """Statuses in numeric order, "error" last."""
    return (int(label), label) if label.isdigit() else (1000, label)


def upstream_color(name: str, upstreams: Sequence[str]) -> str:
    """A stable color per upstream, grey for none."""
    if name == NO_UPSTREAM or name not in upstreams:
        return NONE_COLOR
    return UPSTREAM_COLORS[list(upstreams).index(name) % len(UPSTREAM_COLORS)]


def _upstream_order(upstreams: Sequence[str]) -> Callable[[str], tuple[int, str]]:
    """The scenario's upstreams in order, then "none", then anything else by name."""
    known = [*upstreams, NO_UPSTREAM]
    return lambda name: (known.index(name), name) if name in known else (len(known), name)


def who_answered(summary: ReportSummary) -> Chart:
    """Who answered, per population: each upstream's share and the share no upstream served."""
    upstreams = summary.upstreams
    return stacked_shares(
        "who-answered",
        "Who answered, per population",
        [(p.name, p.traffic.requests, p.traffic.upstreams) for p in summary.populations],
        lambda name: upstream_color(name, upstreams),
        _upstream_order(upstreams),
    )


def statuses(summary: ReportSummary) -> Chart:
    """Status codes, per population ("error": no HTTP answer at all)."""
    return stacked_shares(
        "statuses",
        "Status codes, per population",
        [(p.name, p.traffic.requests, p.traffic.statuses) for p in summary.populations],
        status_color,
        status_order,
    )


def over_the_run(summary: ReportSummary) -> Chart:
    """The share answered by each non-primary upstream (of the served requests) and the share
    refused (of all), per bin of the run, with the timeline's steps marked."""
    over = summary.over_time
    series = [
        Series(f"{name} (of served)", upstream_color(name, summary.upstreams), values)
        for name, values in over.share_of_served.items()
    ]
    series.append(Series("refused: no upstream (of all)", NONE_COLOR, over.refused_share, True))
    names = " / ".join(over.share_of_served)
    title = f"Share answered by {names} and share refused" if names else "Share refused"
    planned = max(1, summary.scenario.requests)
    at_index: dict[int, list[str]] = defaultdict(list)
    for step in summary.timeline:
        at_index[step.index].append(step.name)
    markers = [(index / planned, "+".join(names)) for index, names in at_index.items()]
    return shares_over_time(
        "over-the-run", f"{title}, per {100 // max(1, over.bins)}% of the run", series, markers
    )


def side_label(result: ComparisonResult, side: Side) -> str:
    """`canary: NAME` or `baseline: NAME`, as the analysis charts name a comparison's sides."""
    return f"{'canary' if side is result.canary else 'baseline'}: {side.upstream}"


def comparison_charts(
    result: ComparisonResult, number: int, upstreams: Sequence[str]
) -> tuple[Chart, Chart]:
    """One comparison's latency distributions and error rate over time, baseline first (the
    sides keep their upstreams' colours). `number` keeps the charts' ids apart."""
    sides = (result.baseline, result.canary)
    labels = {side_label(result, side): side for side in sides}
    colors = {label: upstream_color(side.upstream, upstreams) for label, side in labels.items()}
    latency = latency_distributions(
        f"latency-{number}",
        f"{result.name}: latency of the answered requests",
        {label: side.samples_ms for label, side in labels.items()},
        colors,
        percentiles={label: (s.p50_ms, s.p95_ms, s.p99_ms) for label, s in labels.items()},
        counts={label: side.answered for label, side in labels.items()},
    )
    errors = error_rate_over_time(
        f"errors-{number}",
        f"{result.name}: error rate over the run (5xx, timeouts, connection errors)",
        result.bin_edges_s,
        {
            label: list(zip(side.requests_per_bin, side.errors_per_bin, strict=True))
            for label, side in labels.items()
        },
        colors,
        x_label="seconds since the run's first request",
    )
    return latency, errors


def canary_charts(summary: ReportSummary) -> tuple[tuple[ComparisonResult, Chart, Chart], ...]:
    """Per comparison of the canary analysis: its result and its two charts."""
    return tuple(
        (result, *comparison_charts(result, number, summary.upstreams))
        for number, result in enumerate(summary.analysis, 1)
    )


@dataclass(frozen=True, slots=True)
class ReportCharts:
    """Every chart of a report: the run's, then each comparison's (with its result)."""

    run: tuple[Chart, ...]
    comparisons: tuple[tuple[ComparisonResult, Chart, Chart], ...]

    def all(self) -> list[Chart]:
        """The charts in the order report.svg stacks them."""
        return [*self.run, *(chart for _, *pair in self.comparisons for chart in pair)]


# The last summary's charts: write_reports renders report.html and report.svg from the same
# summary, and drawing costs about a second. Keyed by identity (a summary is frozen and its
# mappings are read-only), one entry, holding the summary so its id cannot be reused.
_last: tuple[ReportSummary, ReportCharts] | None = None


def report_charts(summary: ReportSummary) -> ReportCharts:
    """The report's charts, drawn once per summary."""
    global _last
    cached = _last
    if cached is not None and cached[0] is summary:
        return cached[1]
    charts = ReportCharts(
        (who_answered(summary), statuses(summary), over_the_run(summary)),
        canary_charts(summary),
    )
    _last = (summary, charts)
    return charts


def banner(summary: ReportSummary) -> Chart:
    """The scenario's name, its verdict and one line about the run."""
    s, run, result = summary.scenario, summary.run, summary.result
    return header(
        s.name,
        f"{'PASS' if result.passed else 'FAIL'} · "
        f"{result.expectations - result.failed}/{result.expectations} expectations",
        result.passed,
        f"{run.requests_sent} requests through mitmdump in {run.duration_s:.1f}s · seed "
        f"{s.seed} · concurrency {s.concurrency} · upstream as reported by the upstream itself",
    )


def render_svg(summary: ReportSummary, *, standalone: bool = True) -> str:
    """The banner and every chart, stacked, as one SVG document (`standalone=False`: without
    the XML declaration)."""
    charts = [banner(summary), *report_charts(summary).all()]
    document = stack(charts, f"{summary.scenario.name} report")
    return document if standalone else document.split("\n", 1)[1]


__all__ = [
    "ReportCharts",
    "banner",
    "canary_charts",
    "comparison_charts",
    "over_the_run",
    "render_svg",
    "report_charts",
    "side_label",
    "status_color",
    "status_order",
    "statuses",
    "upstream_color",
    "who_answered",
]
