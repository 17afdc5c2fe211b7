"""The report on the terminal: rich tables, then one grep-able line per missed expectation."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from claimroute_tools.scenario.render.cells import ms, predicted, shares, times, where
from claimroute_tools.scenario.summary import ReportSummary


def _row(table: Table, *cells: Any) -> None:
    """Add a row; plain text only (scenario text like `[a, b]` is not rich markup)."""
    table.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in cells))


def print_report(summary: ReportSummary, console: Console) -> None:
    """The tables on the terminal."""
    s, run = summary.scenario, summary.run
    console.print(
        f"[bold]{s.name}[/bold]: {run.requests_sent} requests in {run.duration_s:.1f}s "
        f"({run.requests_per_s or 0:g}/s), concurrency {s.concurrency}, seed {s.seed}, "
        f"{run.tokens_minted} tokens minted"
    )
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
