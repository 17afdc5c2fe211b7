"""report.svg: who answered and which statuses, per population (100% stacked bars), and the
share answered by each non-primary upstream and the share refused over the run (lines).
Self-contained (inline style, no scripts); `render_html` embeds the same drawing."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from claimroute_tools.scenario.expect import pct
from claimroute_tools.scenario.model import NO_UPSTREAM
from claimroute_tools.scenario.render.cells import esc
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
WIDTH = 960


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
    rows: list[tuple[str, int, Mapping[str, int]]],
    color: Callable[[str], str],
    order: Callable[[str], Any],
    y: int,
    width: int,
) -> tuple[list[str], int]:
    """100% stacked horizontal bars; returns SVG elements and the next free y."""
    label_w, bar_w, bar_h, gap = 190, width - 190 - 30, 22, 8
    out = [f'<text x="20" y="{y + 16}" class="h2">{esc(title)}</text>']
    y += 28
    keys: list[str] = []
    for _, _, counts in rows:
        keys += [k for k in counts if k not in keys]
    keys.sort(key=order)
    x = 20
    for key in keys:  # legend
        out.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{color(key)}"/>')
        out.append(f'<text x="{x + 16}" y="{y + 10}" class="small">{esc(key)}</text>')
        x += 26 + 7 * len(key)
    y += 22
    for label, total, counts in rows:
        out.append(
            f'<text x="{label_w + 10}" y="{y + 15}" text-anchor="end" class="label">'
            f'{esc(label)} <tspan class="small">({total})</tspan></text>'
        )
        x = float(label_w + 20)
        if not total:
            out.append(f'<rect x="{x}" y="{y}" width="{bar_w}" height="{bar_h}" fill="#eee"/>')
        for key, n in sorted(counts.items(), key=lambda kv: order(kv[0])):
            w = bar_w * n / total if total else 0
            share = n / total if total else 0
            out.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                f'fill="{color(key)}"><title>{esc(label)}: {esc(key)} {n} '
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


def _line_chart(summary: ReportSummary, y: int, width: int) -> tuple[list[str], int]:
    upstreams = summary.upstreams
    over = summary.over_time
    lines: list[tuple[str, str, Sequence[float | None], bool]] = [
        (f"{name} (of served)", upstream_color(name, upstreams), values, False)
        for name, values in over.share_of_served.items()
    ]
    lines.append(("refused: no upstream (of all)", NONE_COLOR, over.refused_share, True))
    left, plot_w, plot_h = 70, width - 70 - 40, 190
    names = " / ".join(over.share_of_served)
    title = f"Share answered by {names} and share refused" if names else "Share refused"
    out = [f'<text x="20" y="{y + 16}" class="h2">{esc(title)}, per 5% of the run</text>']
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
    planned = max(1, summary.scenario.requests)
    at_index: dict[int, list[str]] = defaultdict(list)
    for step in summary.timeline:
        at_index[step.index].append(step.name)
    for index, step_names in at_index.items():
        sx = left + plot_w * index / planned
        out.append(f'<line x1="{sx:.1f}" y1="{top}" x2="{sx:.1f}" y2="{bottom}" class="step"/>')
        out.append(
            f'<text x="{sx + 3:.1f}" y="{top + 10}" class="small">'
            f"{esc('+'.join(step_names))}</text>"
        )
    bins = over.bins
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
                f"<title>{esc(name)} {i * 5}-{i * 5 + 5}%: {pct(value)}</title>"
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
        out.append(f'<text x="{legend_x + 16}" y="{y + 34}" class="small">{esc(name)}</text>')
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


def render_svg(summary: ReportSummary, *, standalone: bool = True) -> str:
    """The charts as one SVG document (`standalone=False`: without the XML declaration, for
    inlining into HTML)."""
    width = WIDTH
    upstreams = summary.upstreams
    result = summary.result
    s, run = summary.scenario, summary.run
    verdict = "PASS" if result.passed else "FAIL"
    body = [
        f'<text x="20" y="28" class="h1">{esc(s.name)}</text>',
        f'<text x="{width - 20}" y="28" text-anchor="end" class="h1 '
        f'{"pass" if result.passed else "fail"}">{verdict} · '
        f"{result.expectations - result.failed}/{result.expectations} expectations"
        "</text>",
        f'<text x="20" y="48" class="small">{run.requests_sent} requests through mitmdump '
        f"in {run.duration_s:.1f}s · seed {s.seed} · concurrency {s.concurrency} · "
        "upstream as reported by the upstream itself</text>",
    ]
    rows = [(p.name, p.traffic.requests, p.traffic.upstreams) for p in summary.populations]
    part, y = _stacked_bars(
        "Who answered, per population",
        rows,
        lambda k: upstream_color(k, upstreams),
        lambda k: [*upstreams, NO_UPSTREAM].index(k),
        64,
        width,
    )
    body += part
    rows = [(p.name, p.traffic.requests, p.traffic.statuses) for p in summary.populations]
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
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(s.name)} report">'
        f'<style>{SVG_STYLE}</style><rect width="100%" height="100%" fill="#fff"/>'
        + "".join(body)
        + "</svg>\n"
    )


__all__ = ["render_svg", "status_color", "status_order", "upstream_color"]
