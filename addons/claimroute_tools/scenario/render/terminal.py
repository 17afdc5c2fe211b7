"""The report on the terminal: rich tables, then one grep-able line per missed expectation."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from claimroute_tools.scenario.analysis import ComparisonResult, Side
from claimroute_tools.scenario.render.cells import ms, predicted, shares, times, where
from claimroute_tools.scenario.summary import ReportSummary

_VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "inconclusive": "bold yellow"}


def _row(table: Table, *cells: Any) -> None:
    """Add a row; plain text only (scenario text like `[a, b]` is not rich markup)."""
    table.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in cells))


def _rate(side: Side) -> str:
    if side.error_rate is None or side.error_rate_ci is None:
        return "-"
    low, high = side.error_rate_ci
    return f"{side.error_rate * 100:.2f}% [{low * 100:.2f}, {high * 100:.2f}]"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _p(value: float | None) -> str:
    return "-" if value is None else f"p={value:.2g}"


def _difference_ci(ci: tuple[float, float] | None) -> str:
    """The 95% interval of the error-rate difference, in points (what "fail" reads)."""
    if ci is None:
        return "-"
    return f"[{ci[0] * 100:+.2f}, {ci[1] * 100:+.2f}]"


def _comparison_table(c: ComparisonResult) -> Table:
    """One comparison: each side, the difference or ratio, the evidence a "fail" reads (the
    95% interval of the error-rate difference; the p-value of "slower than baseline x limit")
    and the verdict."""
    title = f"Canary analysis: {c.name}"
    if c.too_few:
        title += f" ({c.too_few})"
    table = Table(title=title, title_justify="left")
    canary, baseline = (
        name if name == role else f"{name} ({role})"
        for name, role in ((c.canary.upstream, "canary"), (c.baseline.upstream, "baseline"))
    )
    for column in ("", canary, baseline, "canary vs baseline", "evidence"):
        table.add_column(column, justify="left" if not column else "right")
    table.add_column("verdict")
    e, lat = c.error_rate, c.latency
    _row(table, "requests", c.canary.requests, c.baseline.requests, "", "", "")
    _row(
        table,
        "error rate [95% CI]",
        _rate(c.canary),
        _rate(c.baseline),
        "-" if e.difference is None else f"{e.difference * 100:+.2f} points",
        _difference_ci(e.difference_ci),
        Text(e.verdict, style=_VERDICT_STYLE[e.verdict]),
    )
    for q in ("p50", "p95", "p99"):
        ratio = getattr(lat, f"ratio_{q}")
        judged = q == "p95"
        _row(
            table,
            f"latency {q} ms",
            _num(getattr(c.canary, f"{q}_ms"), ".1f"),
            _num(getattr(c.baseline, f"{q}_ms"), ".1f"),
            "-" if ratio is None else f"x{ratio:.2f}",
            _p(lat.p_value_beyond_limit) if judged else "",
            Text(lat.verdict, style=_VERDICT_STYLE[lat.verdict]) if judged else "",
        )
    return table


def print_report(summary: ReportSummary, console: Console) -> None:
    """The tables on the terminal."""
    s, run = summary.scenario, summary.run
    console.print(
        f"[bold]{s.name}[/bold]: {run.requests_sent} requests in {run.duration_s:.1f}s "
        f"({run.requests_per_s or 0:g}/s), concurrency {s.concurrency}, seed {s.seed}, "
        f"{run.tokens_minted} tokens minted"
    )
    shape = run.shape_text(s.concurrency)
    if shape is not None:
        console.print(f"  {shape}")  # under the header: the rate kept, or the duration
    table = Table(title="Populations", title_justify="left")
    for column in ("population", "users", "requests", "answered by", "statuses", "p50/95/99 ms"):
        table.add_column(column, justify="right" if column in ("users", "requests") else "left")
    for p in summary.populations:
        t = p.traffic
        _row(
            table,
            p.name,
            p.users,
            t.requests,
            shares(t.upstreams, t.requests),
            times(t.statuses),
            ms(t.latency_ms),
        )
    console.print(table)
    if summary.routes:
        table = Table(
            title="Routes (attribution from the addon's decision log)", title_justify="left"
        )
        for column in ("route", "requests", "answered by", "bucket_of() predicts"):
            table.add_column(column)
        for r in summary.routes:
            t = r.traffic
            _row(
                table,
                r.name,
                t.requests,
                shares(t.upstreams, t.requests),
                predicted(r.formula_share),
            )
        console.print(table)
    if summary.timeline:
        table = Table(title="Timeline", title_justify="left")
        for column in ("at", "step", "action", "what happened"):
            table.add_column(column)
        for step in summary.timeline:
            _row(table, f"{step.at:.0%}", step.name, step.action, step.detail)
        console.print(table)
        table = Table(title="Phases", title_justify="left")
        for column in ("phase", "requests", "answered by", "statuses"):
            table.add_column(column)
        for phase in summary.phases:
            t = phase.traffic
            _row(table, phase.name, t.requests, shares(t.upstreams, t.requests), times(t.statuses))
        console.print(table)
    for comparison in summary.analysis:
        console.print(_comparison_table(comparison))
    table = Table(title="Expectations", title_justify="left")
    for column in ("", "expectation", "expected", "observed", "missed by"):
        table.add_column(column, overflow="fold")
    for e in summary.expectations:
        mark = Text("PASS", style="bold green") if e.passed else Text("FAIL", style="bold red")
        _row(table, mark, where(e) + e.text, e.expected, e.observed, e.miss)
    console.print(table)
    result = summary.result
    if result.passed:
        console.print(f"[bold green]PASS[/]: all {result.expectations} expectations hold")
    else:
        for e in summary.expectations:
            if not e.passed:  # one grep-able line per miss, never wrapped
                console.print(
                    Text(
                        f"FAIL {where(e)}{e.text}: expected {e.expected}; observed "
                        f"{e.observed}; missed by {e.miss}",
                        style="red",
                    ),
                    soft_wrap=True,
                )
        console.print(
            f"[bold red]FAIL[/]: {result.failed} of {result.expectations} expectations missed"
        )


__all__ = ["print_report"]
