"""The report: one summary dict, rendered as a terminal table, JSON, HTML and SVG.

`summarize` computes everything once (per population, per route, per phase, over time, the
expectations); the renderers only draw it. `report.html` is self-contained (inline CSS and
SVG, no scripts); `report.svg` holds the same charts alone, for embedding in a README.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from claimroute_tools.scenario.expect import Outcome, RunData, find_route, pct, predicted_target
from claimroute_tools.scenario.model import NO_UPSTREAM
from claimroute_tools.scenario.timeline import StepRecord
from claimroute_tools.scenario.traffic import RequestResult, TrafficRun

TIME_BINS = 20  # 5% of the run each
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


# -- the summary -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of `values` (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _latency(results: Sequence[RequestResult]) -> dict[str, float | None]:
    values = [r.latency_ms for r in results]
    return {
        name: (round(v, 2) if v is not None else None)
        for name, v in (
            ("p50", percentile(values, 50)),
            ("p95", percentile(values, 95)),
            ("p99", percentile(values, 99)),
            ("max", max(values, default=None)),
        )
    }


def _counts(values: Iterable[Any]) -> dict[str, int]:
    counter = Counter(str(v) for v in values)
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def _group(results: Sequence[RequestResult], upstream_order: Sequence[str]) -> dict[str, Any]:
    answered = Counter(r.upstream for r in results)
    upstreams = {name: answered[name] for name in [*upstream_order, NO_UPSTREAM] if answered[name]}
    return {
        "requests": len(results),
        "upstreams": upstreams,
        "statuses": _counts(r.status_label for r in results),
        "latency_ms": _latency(results),
    }


def _time_series(
    results: Sequence[RequestResult], planned: int, upstreams: Sequence[str]
) -> dict[str, Any]:
    """Per 5% of the planned requests: each non-primary upstream's share of the served
    requests, and the share of all requests that no upstream answered."""
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
        name: [round(h / s, 4) if s else None for h, s in zip(counts, served, strict=True)]
        for name, counts in hits.items()
    }
    refused = [round((n - s) / n, 4) if n else None for n, s in zip(sent, served, strict=True)]
    return {
        "bins": TIME_BINS,
        "sent": sent,
        "served": served,
        "share_of_served": series,
        "refused_share": refused,
    }


def _route_rows(data: RunData) -> list[dict[str, Any]]:
    by_route: dict[str, list[RequestResult]] = defaultdict(list)
    for result in data.results:
        if result.route is not None:
            by_route[result.route].append(result)
    rows = []
    for name, results in sorted(by_route.items()):
        row = {"name": name, **_group(results, data.scenario.upstreams)}
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
        row["formula_share"] = (
            {k: round(v / total, 4) for k, v in predicted.most_common()}
            if is_split and total
            else None
        )
        rows.append(row)
    return rows


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
    files: dict[str, str],
    proxy_url: str | None,
) -> dict[str, Any]:
    """Everything the renderers draw, as a JSON-able dict (this is report.json)."""
    scenario = data.scenario
    results = data.results
    upstreams = list(scenario.upstreams)
    populations = []
    for population in scenario.users:
        mine = [r for r in results if r.population == population.name]
        users = [u for u in data.users if u.population.name == population.name]
        populations.append(
            {
                "name": population.name,
                "users": population.count,
                "issuer": population.issuer,
                "tamper": population.tamper,
                "tokens_minted": sum(u.mints for u in users),
                **_group(mine, upstreams),
                "seen_without_answer": sum(1 for r in mine if r.answered_by is None and r.seen_by),
                "reasons": _counts(r.reason or r.error for r in mine if r.answered_by is None),
                "kids": _counts(r.kid for r in mine if r.kid is not None),
            }
        )
    phases = []
    for ordinal, name in enumerate(phase_names):
        mine = [r for r in results if r.phase == ordinal]
        if mine or ordinal == len(phase_names) - 1:  # phases between same-index steps are empty
            phases.append({"name": name, **_group(mine, upstreams)})
    failed = sum(1 for o in outcomes if not o.passed)
    duration = run.duration
    return {
        "scenario": {
            "name": scenario.name,
            "description": scenario.description,
            "file": str(scenario.path),
            "requests": scenario.traffic.requests,
            "concurrency": scenario.traffic.concurrency,
            "seed": scenario.traffic.seed,
        },
        "run": {
            "started": datetime.fromtimestamp(run.started, UTC).isoformat(timespec="seconds"),
            "duration_s": round(duration, 3),
            "requests_sent": len(results),
            "requests_per_s": round(len(results) / duration, 1) if duration > 0 else None,
            "tokens_minted": tokens_minted,
            "decisions_logged": decisions,
            "requests_attributed_to_a_decision": attributed,
            "incomplete": run.incomplete,
            "proxy": proxy_url,
        },
        "result": {"passed": failed == 0, "expectations": len(outcomes), "failed": failed},
        "upstreams": upstreams,
        "overall": _group(results, upstreams),
        "populations": populations,
        "routes": _route_rows(data),
        "phases": phases,
        "timeline": [
            {
                "name": s.name,
                "action": s.action,
                "at": s.at,
                "index": s.index,
                "duration_s": round(s.finished - s.started, 3),
                "detail": s.detail,
            }
            for s in steps
        ],
        "over_time": _time_series(results, run.planned, upstreams[1:]),
        "expectations": [
            {
                "expectation": o.text,
                "line": o.line,
                "passed": o.passed,
                "requests": o.requests,
                "expected": o.expected,
                "observed": o.observed,
                "miss": o.miss,
                "value": o.value,
            }
            for o in outcomes
        ],
        "files": files,
    }


# -- terminal --------------------------------------------------------------------------------


def _shares(counts: dict[str, int], total: int) -> str:
    if not total:
        return "-"
    return " · ".join(f"{k} {pct(v / total)}" for k, v in counts.items())


def _times(counts: dict[str, int]) -> str:
    return " · ".join(f"{k}: {v}" for k, v in counts.items()) or "-"


def _ms(latency: dict[str, float | None]) -> str:
    values = [latency.get(k) for k in ("p50", "p95", "p99")]
    if any(v is None for v in values):
        return "-"
    return "/".join(f"{v:.0f}" for v in values if v is not None)


def _row(table: Table, *cells: Any) -> None:
    """Add a row; plain text only (scenario text like `[a, b]` is not rich markup)."""
    table.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in cells))


def print_report(summary: dict[str, Any], console: Console) -> None:
    """The tables on the terminal."""
    s, run = summary["scenario"], summary["run"]
    console.print(
        f"[bold]{s['name']}[/bold]: {run['requests_sent']} requests in {run['duration_s']:.1f}s "
        f"({run['requests_per_s'] or 0:g}/s), concurrency {s['concurrency']}, seed {s['seed']}, "
        f"{run['tokens_minted']} tokens minted"
    )
    table = Table(title="Populations", title_justify="left")
    for column in ("population", "users", "requests", "answered by", "statuses", "p50/95/99 ms"):
        table.add_column(column, justify="right" if column in ("users", "requests") else "left")
    for p in summary["populations"]:
        _row(
            table,
            p["name"],
            p["users"],
            p["requests"],
            _shares(p["upstreams"], p["requests"]),
            _times(p["statuses"]),
            _ms(p["latency_ms"]),
        )
    console.print(table)
    if summary["routes"]:
        table = Table(
            title="Routes (attribution from the addon's decision log)", title_justify="left"
        )
        for column in ("route", "requests", "answered by", "bucket_of() predicts"):
            table.add_column(column)
        for r in summary["routes"]:
            formula = r["formula_share"]
            predicted = " · ".join(f"{k} {pct(v)}" for k, v in formula.items()) if formula else "-"
            _row(table, r["name"], r["requests"], _shares(r["upstreams"], r["requests"]), predicted)
        console.print(table)
    if summary["timeline"]:
        table = Table(title="Timeline", title_justify="left")
        for column in ("at", "step", "action", "what happened"):
            table.add_column(column)
        for step in summary["timeline"]:
            _row(table, f"{step['at']:.0%}", step["name"], step["action"], step["detail"])
        console.print(table)
        table = Table(title="Phases", title_justify="left")
        for column in ("phase", "requests", "answered by", "statuses"):
            table.add_column(column)
        for phase in summary["phases"]:
            _row(
                table,
                phase["name"],
                phase["requests"],
                _shares(phase["upstreams"], phase["requests"]),
                _times(phase["statuses"]),
            )
        console.print(table)
    table = Table(title="Expectations", title_justify="left")
    for column in ("", "expectation", "expected", "observed", "missed by"):
        table.add_column(column, overflow="fold")
    for e in summary["expectations"]:
        mark = Text("PASS", style="bold green") if e["passed"] else Text("FAIL", style="bold red")
        where = f"line {e['line']}: " if e["line"] else ""
        _row(table, mark, where + e["expectation"], e["expected"], e["observed"], e["miss"])
    console.print(table)
    result = summary["result"]
    if result["passed"]:
        console.print(f"[bold green]PASS[/]: all {result['expectations']} expectations hold")
    else:
        for e in summary["expectations"]:
            if not e["passed"]:  # one grep-able line per miss, never wrapped
                where = f"line {e['line']}: " if e["line"] else ""
                console.print(
                    Text(
                        f"FAIL {where}{e['expectation']}: expected {e['expected']}; observed "
                        f"{e['observed']}; missed by {e['miss']}",
                        style="red",
                    ),
                    soft_wrap=True,
                )
        console.print(
            f"[bold red]FAIL[/]: {result['failed']} of {result['expectations']} expectations missed"
        )


# -- SVG -------------------------------------------------------------------------------------


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


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


def _stacked_bars(
    title: str,
    rows: list[tuple[str, int, dict[str, int]]],
    color: Any,
    order: Any,
    y: int,
    width: int,
) -> tuple[list[str], int]:
    """100% stacked horizontal bars; returns SVG elements and the next free y."""
    label_w, bar_w, bar_h, gap = 190, width - 190 - 30, 22, 8
    out = [f'<text x="20" y="{y + 16}" class="h2">{_esc(title)}</text>']
    y += 28
    keys: list[str] = []
    for _, _, counts in rows:
        keys += [k for k in counts if k not in keys]
    keys.sort(key=order)
    x = 20
    for key in keys:  # legend
        out.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{color(key)}"/>')
        out.append(f'<text x="{x + 16}" y="{y + 10}" class="small">{_esc(key)}</text>')
        x += 26 + 7 * len(key)
    y += 22
    for label, total, counts in rows:
        out.append(
            f'<text x="{label_w + 10}" y="{y + 15}" text-anchor="end" class="label">'
            f'{_esc(label)} <tspan class="small">({total})</tspan></text>'
        )
        x = float(label_w + 20)
        if not total:
            out.append(f'<rect x="{x}" y="{y}" width="{bar_w}" height="{bar_h}" fill="#eee"/>')
        for key, n in sorted(counts.items(), key=lambda kv: order(kv[0])):
            w = bar_w * n / total if total else 0
            share = n / total if total else 0
            out.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                f'fill="{color(key)}"><title>{_esc(label)}: {_esc(key)} {n} '
                f"({pct(share)})</title></rect>"
            )
            if w > 46:
                out.append(
                    f'<text x="{x + w / 2:.1f}" y="{y + 15}" text-anchor="middle" '
                    f'class="onbar">{pct(share)}</text>'
                )
            x += w
        y += bar_h + gap
    return out, y + 6


def _line_chart(summary: dict[str, Any], y: int, width: int) -> tuple[list[str], int]:
    upstreams = summary["upstreams"]
    over = summary["over_time"]
    lines: list[tuple[str, str, list[float | None], bool]] = [
        (f"{name} (of served)", upstream_color(name, upstreams), values, False)
        for name, values in over["share_of_served"].items()
    ]
    lines.append(("refused: no upstream (of all)", NONE_COLOR, over["refused_share"], True))
    left, plot_w, plot_h = 70, width - 70 - 40, 190
    names = " / ".join(over["share_of_served"])
    title = f"Share answered by {names} and share refused" if names else "Share refused"
    out = [f'<text x="20" y="{y + 16}" class="h2">{_esc(title)}, per 5% of the run</text>']
    top = y + 46
    bottom = top + plot_h
    peak = max((v for _, _, values, _ in lines for v in values if v is not None), default=0)
    y_max = 1.0 if peak > 0.5 else 0.5 if peak > 0.25 else 0.25
    for i in range(6):  # grid and y labels
        value = y_max * i / 5
        gy = bottom - plot_h * value / y_max
        out.append(
            f'<line x1="{left}" y1="{gy:.1f}" x2="{left + plot_w}" y2="{gy:.1f}" class="grid"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{gy + 4:.1f}" text-anchor="end" class="small">'
            f"{value * 100:.0f}%</text>"
        )
    for i in range(0, 101, 25):  # x labels
        gx = left + plot_w * i / 100
        out.append(
            f'<text x="{gx:.1f}" y="{bottom + 16}" text-anchor="middle" class="small">{i}%</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2}" y="{bottom + 32}" text-anchor="middle" '
        'class="small">progress of the run (requests sent)</text>'
    )
    planned = max(1, summary["scenario"]["requests"])
    at_index: dict[int, list[str]] = defaultdict(list)
    for step in summary["timeline"]:
        at_index[step["index"]].append(step["name"])
    for index, step_names in at_index.items():
        sx = left + plot_w * index / planned
        out.append(f'<line x1="{sx:.1f}" y1="{top}" x2="{sx:.1f}" y2="{bottom}" class="step"/>')
        out.append(
            f'<text x="{sx + 3:.1f}" y="{top + 10}" class="small">'
            f"{_esc('+'.join(step_names))}</text>"
        )
    bins = over["bins"]
    for name, color, values, dashed in lines:
        segment: list[str] = []
        segments = []
        for i, value in enumerate(values):
            if value is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            px = left + plot_w * (i + 0.5) / bins
            py = bottom - plot_h * min(value, y_max) / y_max
            segment.append(f"{px:.1f},{py:.1f}")
            out.append(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}">'
                f"<title>{_esc(name)} {i * 5}-{i * 5 + 5}%: {pct(value)}</title>"
                "</circle>"
            )
        if segment:
            segments.append(segment)
        for points in segments:
            dash = ' stroke-dasharray="6 4"' if dashed else ""
            out.append(
                f'<polyline points="{" ".join(points)}" fill="none" stroke="{color}" '
                f'stroke-width="2"{dash}/>'
            )
    legend_x = left + plot_w + 20
    for name, color, _, _ in reversed(lines):
        legend_x -= 24 + 6 * len(name)
        out.append(f'<rect x="{legend_x}" y="{y + 24}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{legend_x + 16}" y="{y + 34}" class="small">{_esc(name)}</text>')
    return out, bottom + 44


SVG_STYLE = """
text { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; fill: #222; }
.h1 { font-size: 18px; font-weight: 600; } .h2 { font-size: 14px; font-weight: 600; }
.label { font-size: 12px; } .small { font-size: 11px; fill: #555; }
.onbar { font-size: 11px; fill: #fff; font-weight: 600; }
.pass { fill: #2e7d32; font-weight: 700; } .fail { fill: #c62828; font-weight: 700; }
.grid { stroke: #e4e4e4; stroke-width: 1; }
.step { stroke: #666; stroke-dasharray: 4 3; stroke-width: 1; }
"""


def render_svg(summary: dict[str, Any], *, standalone: bool = True) -> str:
    """The charts as one SVG document: upstream and status shares per population, and the
    non-primary share over the run."""
    width = 960
    upstreams = summary["upstreams"]
    result = summary["result"]
    s, run = summary["scenario"], summary["run"]
    verdict = "PASS" if result["passed"] else "FAIL"
    body = [
        f'<text x="20" y="28" class="h1">{_esc(s["name"])}</text>',
        f'<text x="{width - 20}" y="28" text-anchor="end" class="h1 '
        f'{"pass" if result["passed"] else "fail"}">{verdict} · '
        f"{result['expectations'] - result['failed']}/{result['expectations']} expectations"
        "</text>",
        f'<text x="20" y="48" class="small">{run["requests_sent"]} requests through mitmdump '
        f"in {run['duration_s']:.1f}s · seed {s['seed']} · concurrency {s['concurrency']} · "
        "upstream as reported by the upstream itself</text>",
    ]
    rows = [(p["name"], p["requests"], p["upstreams"]) for p in summary["populations"]]
    part, y = _stacked_bars(
        "Who answered, per population",
        rows,
        lambda k: upstream_color(k, upstreams),
        lambda k: [*upstreams, NO_UPSTREAM].index(k),
        64,
        width,
    )
    body += part
    rows = [(p["name"], p["requests"], p["statuses"]) for p in summary["populations"]]
    part, y = _stacked_bars(
        "Status codes, per population", rows, status_color, status_order, y, width
    )
    body += part
    part, y = _line_chart(summary, y, width)
    body += part
    height = y
    head = '<?xml version="1.0" encoding="UTF-8"?>\n' if standalone else ""
    return (
        f'{head}<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(s["name"])} report">'
        f'<style>{SVG_STYLE}</style><rect width="100%" height="100%" fill="#fff"/>'
        + "".join(body)
        + "</svg>\n"
    )


# -- HTML ------------------------------------------------------------------------------------


def _html_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], row_classes: Iterable[str] | None = None
) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    classes = list(row_classes) if row_classes is not None else None
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>")
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
.verdict-pass { color: #2e7d32; } .verdict-fail { color: #c62828; }
svg { max-width: 100%; height: auto; }
"""


def render_html(summary: dict[str, Any]) -> str:
    """A self-contained page: verdict, charts, tables."""
    s, run, result = summary["scenario"], summary["run"], summary["result"]
    verdict = "PASS" if result["passed"] else "FAIL"
    parts = [
        f"<h1>{_esc(s['name'])} <span class='verdict-{verdict.lower()}'>{verdict}</span></h1>",
        f"<p>{_esc(s['description'])}</p>",
        f"<p class='muted'>{_esc(s['file'])} · {run['requests_sent']} requests in "
        f"{run['duration_s']:.1f}s ({run['requests_per_s'] or 0:g}/s) · concurrency "
        f"{s['concurrency']} · seed {s['seed']} · {run['tokens_minted']} tokens minted · "
        f"started {_esc(run['started'])}</p>",
    ]
    if run["incomplete"]:
        parts.append(f"<p class='verdict-fail'>Incomplete: {_esc(run['incomplete'])}</p>")
    parts.append("<h2>Expectations</h2>")
    parts.append(
        _html_table(
            ["", "expectation", "expected", "observed", "missed by"],
            [
                [
                    "PASS" if e["passed"] else "FAIL",
                    (f"line {e['line']}: " if e["line"] else "") + e["expectation"],
                    e["expected"],
                    e["observed"],
                    e["miss"],
                ]
                for e in summary["expectations"]
            ],
            ["pass" if e["passed"] else "fail" for e in summary["expectations"]],
        )
    )
    parts.append("<h2>Charts</h2>")
    parts.append(render_svg(summary, standalone=False))
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
                    p["name"],
                    p["users"],
                    p["tokens_minted"],
                    p["requests"],
                    _shares(p["upstreams"], p["requests"]),
                    _times(p["statuses"]),
                    _times(p["reasons"]),
                    _ms(p["latency_ms"]),
                ]
                for p in summary["populations"]
            ],
        )
    )
    if summary["routes"]:
        parts.append(
            "<h2>Routes</h2><p class='muted'>Which route a request took comes from the "
            "addon's decision log; who answered comes from the upstream.</p>"
        )
        parts.append(
            _html_table(
                ["route", "requests", "answered by", "bucket_of() predicts"],
                [
                    [
                        r["name"],
                        r["requests"],
                        _shares(r["upstreams"], r["requests"]),
                        " · ".join(f"{k} {pct(v)}" for k, v in (r["formula_share"] or {}).items())
                        or "-",
                    ]
                    for r in summary["routes"]
                ],
            )
        )
    if summary["timeline"]:
        parts.append("<h2>Timeline</h2>")
        parts.append(
            _html_table(
                ["at", "step", "action", "what happened", "took"],
                [
                    [
                        f"{t['at']:.0%} (request {t['index']})",
                        t["name"],
                        t["action"],
                        t["detail"],
                        f"{t['duration_s']:.2f}s",
                    ]
                    for t in summary["timeline"]
                ],
            )
        )
        parts.append(
            _html_table(
                ["phase", "requests", "answered by", "statuses", "p50/p95/p99 ms"],
                [
                    [
                        p["name"],
                        p["requests"],
                        _shares(p["upstreams"], p["requests"]),
                        _times(p["statuses"]),
                        _ms(p["latency_ms"]),
                    ]
                    for p in summary["phases"]
                ],
            )
        )
    parts.append("<h2>Files</h2>")
    parts.append(_html_table(["file", "path"], sorted(summary["files"].items())))
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_esc(s['name'])}: {verdict}</title><style>{HTML_STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


def write_reports(summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.json, report.html and report.svg into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "report.json",
        "html": out_dir / "report.html",
        "svg": out_dir / "report.svg",
    }
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n")
    paths["html"].write_text(render_html(summary))
    paths["svg"].write_text(render_svg(summary))
    return paths
