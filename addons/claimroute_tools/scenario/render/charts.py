"""The report's charts, drawn by matplotlib from plain data (no summary types here).

Each function takes names, numbers and colours and returns a `Chart`: one `<svg>` element
(no XML declaration), ready to inline into HTML; `stack` puts several into one SVG document.

Matplotlib is imported on first use only, so the proxy and `claimroute check` never pay for
it. Figures are `matplotlib.figure.Figure` objects (never pyplot, whose figure registry is
global). The style and the SVG writer's options are rcParams, which matplotlib reads while it
draws and saves; they are applied with `rc_context` for the duration of one chart, under a
lock, so concurrent renders cannot see each other's settings and nothing is left behind.
Output is deterministic: no date in the metadata, a fixed hash salt for the ids matplotlib
derives from content, and ids prefixed per chart so charts inlined into one page never clash.
"""

from __future__ import annotations

import html
import io
import itertools
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from claimroute_tools.scenario.summary import percentile

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WIDTH_IN = 10.0  # 720 pt = 960 CSS px, the width of the page's column
TEXT = "#222222"
MUTED = "#555555"
GRID = "#e4e4e4"
EMPTY = "#eeeeee"
PASS_COLOR = "#2e7d32"
FAIL_COLOR = "#c62828"
# Colours for series that are not an upstream (e.g. a comparison's sides named otherwise).
SERIES_COLORS = ("#4C78A8", "#F58518", "#54A24B", "#B279A2", "#72B7B2", "#EECA3B")
PERCENTILES = (50, 95, 99)

STYLE: dict[str, Any] = {
    "svg.fonttype": "none",  # text stays text: searchable, selectable, small
    "svg.hashsalt": "claimroute-report",
    "svg.id": None,
    "text.parse_math": False,  # a `$` in a population's name is not TeX
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial", "Liberation Sans"],
    "font.size": 9.0,
    "text.color": TEXT,
    "axes.edgecolor": "#999999",
    "axes.labelcolor": MUTED,
    "axes.titlesize": 11.0,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titlepad": 10.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "grid.color": GRID,
    "grid.linewidth": 0.8,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}
_LOCK = threading.Lock()  # rcParams are process-wide: one chart at a time


@dataclass(frozen=True, slots=True)
class Chart:
    """One drawn chart: an `<svg>` element sized in points (1 pt = 4/3 CSS px)."""

    slug: str  # prefix of every id inside, and the element's own id
    title: str
    svg: str
    width: float  # pt
    height: float  # pt


@dataclass(frozen=True, slots=True)
class Series:
    """One line of a chart over the run: a value per bin, None where there is none."""

    label: str
    color: str
    values: Sequence[float | None]
    dashed: bool = False


# -- drawing ------------------------------------------------------------------------------------


@contextmanager
def _figure(height_in: float) -> Iterator[Figure]:
    """A fresh Figure with the report's style in force while it is drawn and saved."""
    import matplotlib
    from matplotlib.figure import Figure

    with _LOCK, matplotlib.rc_context(STYLE):
        yield Figure(figsize=(WIDTH_IN, height_in), layout="constrained")


_ROOT = re.compile(r"<svg\b[^>]*>")
_VIEWBOX = re.compile(r'viewBox="0 0 ([\d.]+) ([\d.]+)"')


def _to_chart(
    figure: Figure, slug: str, title: str, tips: Mapping[str, str] | None = None
) -> Chart:
    """Save `figure` as SVG (called inside `_figure`, so the style and options apply).

    `tips` maps an artist's gid to a tooltip: the group matplotlib writes for that artist gets
    a `<title>`, which browsers show on hover.
    """
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    root = _ROOT.search(text)
    box = _VIEWBOX.search(text)
    if root is None or box is None:  # pragma: no cover - matplotlib's SVG always has both
        raise ValueError("matplotlib wrote an SVG without a root element or viewBox")
    width, height = float(box.group(1)), float(box.group(2))
    body = text[root.end() :]
    # Prefix every id (and every reference to one) so that charts side by side in one page or
    # one document never point at each other's clip paths or markers. Only inside tags: text
    # is data (matplotlib escapes `<`, `>` and quotes in attribute values, so a tag ends at `>`).
    body = _TAG.sub(lambda tag: _prefix_ids(tag.group(0), slug), body)
    for gid, tip in (tips or {}).items():
        group = f'<g id="{slug}-{gid}">'
        body = body.replace(group, f"{group}<title>{_attr(tip)}</title>", 1)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'id="{slug}" class="chart" width="{width:g}pt" height="{height:g}pt" '
        f'viewBox="0 0 {width:g} {height:g}" version="1.1" role="img" '
        f'aria-label="{_attr(title)}"><title>{_attr(title)}</title>'
    )
    return Chart(slug, title, head + body.rstrip() + "\n", width, height)


_TAG = re.compile(r"<[^>]+>")


def _prefix_ids(tag: str, slug: str) -> str:
    """`tag` with its id and the ids it references (`url(#...)`, `href="#..."`) prefixed."""
    tag = re.sub(r'\bid="([^"]+)"', rf'id="{slug}-\1"', tag)
    tag = re.sub(r"url\(#([^)]+)\)", rf"url(#{slug}-\1)", tag)
    return re.sub(r'href="#([^"]+)"', rf'href="#{slug}-\1"', tag)


def _attr(text: str) -> str:
    return html.escape(text, quote=True)


def _percent_axis(axis: Any) -> None:
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def _title(figure: Figure, title: str) -> None:
    """The chart's title, left-aligned above everything (a legend may sit under it)."""
    figure.suptitle(title, x=0.01, ha="left", fontsize=11, fontweight="bold")


def _legend_above(ax: Axes, count: int) -> None:
    """The legend in one row under the title, left-aligned (nothing to hide behind)."""
    if count:
        ax.legend(
            loc="lower left",
            bbox_to_anchor=(0.0, 1.0),
            ncols=min(count, 8),
            handlelength=1.2,
            borderaxespad=0.2,
            columnspacing=1.4,
        )


def header(title: str, verdict: str, passed: bool, subtitle: str) -> Chart:
    """The report.svg banner: the scenario's name, its verdict and one line about the run."""
    with _figure(0.75) as figure:
        figure.text(0.02, 0.62, title, fontsize=14, fontweight="bold", va="center")
        figure.text(
            0.98,
            0.62,
            verdict,
            fontsize=14,
            fontweight="bold",
            ha="right",
            va="center",
            color=PASS_COLOR if passed else FAIL_COLOR,
        )
        figure.text(0.02, 0.2, subtitle, fontsize=8.5, color=MUTED, va="center")
        return _to_chart(figure, "header", title)


def stacked_shares(
    slug: str,
    title: str,
    rows: Sequence[tuple[str, int, Mapping[str, int]]],
    color: Callable[[str], str],
    order: Callable[[str], Any],
) -> Chart:
    """100% stacked horizontal bars: per row (label, total, counts per key), each key's share.

    Keys are drawn in `order` with `color`; a share wide enough gets its percentage on the bar.
    A row without requests is an empty grey bar.
    """
    keys = sorted({key for _, _, counts in rows for key in counts}, key=order)
    with _figure(0.9 + 0.34 * max(1, len(rows))) as figure:
        _title(figure, title)
        ax = figure.add_subplot()
        labels = [f"{label} ({total})" for label, total, _ in rows]
        positions = list(range(len(rows)))
        ax.barh(positions, [1.0] * len(rows), height=0.72, color=EMPTY, zorder=0)
        left = [0.0] * len(rows)
        tips: dict[str, str] = {}
        for key in keys:
            shares = [counts.get(key, 0) / total if total else 0.0 for _, total, counts in rows]
            bars = ax.barh(
                positions, shares, left=left, height=0.72, color=color(key), label=key, zorder=1
            )
            for row, (bar, (label, _, counts)) in enumerate(zip(bars, rows, strict=True)):
                if counts.get(key):
                    gid = f"tip-{len(tips)}"
                    bar.set_gid(gid)
                    tips[gid] = f"{label}: {key} {counts[key]} ({shares[row] * 100:.1f}%)"
            ax.bar_label(
                bars,
                labels=[f"{s * 100:.1f}%" if s >= 0.06 else "" for s in shares],
                label_type="center",
                color="white",
                fontsize=8,
                fontweight="bold",
            )
            left = [a + b for a, b in zip(left, shares, strict=True)]
        ax.set_yticks(positions, labels)
        ax.tick_params(axis="y", length=0, labelsize=9, labelcolor=TEXT)
        ax.invert_yaxis()  # the first row on top
        ax.set_xlim(0, 1)
        _percent_axis(ax.xaxis)
        ax.spines[["left", "bottom"]].set_visible(False)
        ax.tick_params(axis="x", length=0, labelsize=7.5)
        _legend_above(ax, len(keys))
        return _to_chart(figure, slug, title, tips)


def shares_over_time(
    slug: str,
    title: str,
    series: Sequence[Series],
    markers: Sequence[tuple[float, str]] = (),
    x_label: str = "progress of the run (requests sent)",
) -> Chart:
    """Lines of shares (0..1) per equal bin of the run (x from 0 to 100%), with a vertical
    marker at each (position 0..1, label), e.g. a timeline step. None values leave gaps."""
    with _figure(3.3) as figure:
        _title(figure, title)
        ax = figure.add_subplot()
        peak = 0.0
        for line in series:
            bins = len(line.values)
            xs = [(i + 0.5) / bins for i in range(bins)]
            ys = [math.nan if v is None else v for v in line.values]
            peak = max([peak, *(v for v in line.values if v is not None)])
            ax.plot(
                xs,
                ys,
                color=line.color,
                linestyle=(0, (6, 4)) if line.dashed else "-",
                linewidth=1.8,
                marker="o",
                markersize=3.5,
                label=line.label,
            )
        top = 1.0 if peak > 0.5 else 0.5 if peak > 0.25 else 0.25
        ax.set_ylim(0, top * 1.04)
        ax.set_xlim(0, 1)
        for at, label in markers:
            ax.axvline(at, color="#666666", linestyle=(0, (4, 3)), linewidth=1)
            ax.annotate(
                label,
                (at, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -2),
                textcoords="offset points",
                va="top",
                fontsize=8,
                color=MUTED,
            )
        _percent_axis(ax.xaxis)
        _percent_axis(ax.yaxis)
        ax.grid(axis="y")
        ax.set_axisbelow(True)
        ax.set_xlabel(x_label)
        _legend_above(ax, len(series))
        return _to_chart(figure, slug, title)


def _side_colors(sides: Sequence[str], colors: Mapping[str, str] | None) -> dict[str, str]:
    given = colors or {}
    return {
        side: given.get(side) or SERIES_COLORS[i % len(SERIES_COLORS)]
        for i, side in enumerate(sides)
    }


def latency_distributions(
    slug: str,
    title: str,
    samples: Mapping[str, Sequence[float]],
    colors: Mapping[str, str] | None = None,
    *,
    percentiles: Mapping[str, Sequence[float | None]] | None = None,
    counts: Mapping[str, int] | None = None,
) -> Chart:
    """Each side's latency samples (ms) side by side: a violin per side with p50/p95/p99
    marked and labelled (left), and the sides' cumulative distributions overlaid (right).

    The percentiles are the samples' own (nearest rank) unless `percentiles` gives a side's
    p50/p95/p99, and the count shown is the number of samples unless `counts` gives it: for
    samples thinned out of a larger set, the figures of the whole set. The x axis is
    logarithmic when the samples span more than a factor of 20. A side without samples is
    listed with "no requests".
    """
    sides = list(samples)
    palette = _side_colors(sides, colors)
    present = [s for s in sides if samples[s]]
    values = [v for s in present for v in samples[s]]
    positive = [v for v in values if v > 0]
    log = bool(positive) and max(positive) / min(positive) > 20
    with _figure(1.5 + 0.55 * max(2, len(sides))) as figure:
        left, right = figure.subplots(1, 2, width_ratios=(3, 2))
        _title(figure, title)
        positions = list(range(len(sides)))
        drawn = [(i, s) for i, s in enumerate(sides) if len(samples[s]) >= 2]
        if drawn:
            data = [_clip_positive(samples[s], log) for _, s in drawn]
            parts = left.violinplot(
                data,
                positions=[i for i, _ in drawn],
                orientation="horizontal",
                widths=0.8,
                showextrema=False,
            )
            for body, (_, side) in zip(parts["bodies"], drawn, strict=True):
                body.set_facecolor(palette[side])
                body.set_edgecolor(palette[side])
                body.set_alpha(0.45)
        ticks = []
        for i, side in enumerate(sides):
            points = samples[side]
            if not points:
                left.text(
                    0.5,
                    i,
                    "no requests",
                    transform=left.get_yaxis_transform(),
                    ha="center",
                    va="center",
                    color=MUTED,
                )
                ticks.append(f"{side}\nno requests")
                continue
            given = (percentiles or {}).get(side)
            marks = [
                (q, (given[k] if given and given[k] is not None else percentile(points, q)) or 0.0)
                for k, q in enumerate(PERCENTILES)
            ]
            # p95 labelled above the violin, p50 and p99 below: neighbours never share a side.
            for (q, value), above in zip(marks, (False, True, False), strict=True):
                left.plot([value, value], [i - 0.32, i + 0.32], color=palette[side], lw=2)
                left.annotate(
                    f"p{q}",
                    (value, i - 0.32 if above else i + 0.32),
                    xytext=(0, 1 if above else -1),
                    textcoords="offset points",
                    ha="center",
                    va="bottom" if above else "top",
                    fontsize=7,
                    color=TEXT,
                )
            figures = "/".join(f"{value:.1f}" for _, value in marks)
            total = (counts or {}).get(side, len(points))
            ticks.append(f"{side} ({total})\np50/95/99 {figures} ms")
        left.set_yticks(positions, ticks)
        left.tick_params(axis="y", length=0, labelsize=9, labelcolor=TEXT)
        left.set_ylim(len(sides) - 0.35, -0.65)
        left.set_xlabel("latency (ms)")
        left.grid(axis="x")
        left.set_axisbelow(True)
        for side in present:
            ordered = sorted(_clip_positive(samples[side], log))
            ranks = _ecdf_ranks(len(ordered))
            right.step(
                [ordered[k] for k in ranks],
                [(k + 1) / len(ordered) for k in ranks],
                where="post",
                color=palette[side],
                lw=1.6,
                label=side,
            )
        right.set_ylim(0, 1.02)
        _percent_axis(right.yaxis)
        right.set_xlabel("latency (ms)")
        right.set_ylabel("requests at most this slow")
        right.grid(True)
        right.set_axisbelow(True)
        if present:
            right.legend(loc="lower right")
        if log:
            from matplotlib.ticker import FuncFormatter, NullFormatter

            for axes in (left, right):
                axes.set_xscale("log")
                # Plain numbers: the default labels are TeX ("10^2"), and TeX is off.
                axes.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axes.xaxis.set_minor_formatter(NullFormatter())
        return _to_chart(figure, slug, title)


ECDF_POINTS = 200  # steps drawn per side: the curve's shape, not one vertex per request


def _ecdf_ranks(n: int) -> list[int]:
    """The ranks of an n-sample ECDF to draw: all up to ECDF_POINTS, else evenly spaced ones
    (the first and last included)."""
    if n <= ECDF_POINTS:
        return list(range(n))
    return sorted({round(i * (n - 1) / (ECDF_POINTS - 1)) for i in range(ECDF_POINTS)})


def _clip_positive(values: Sequence[float], log: bool) -> list[float]:
    """On a log axis a 0 ms sample (a clock's resolution) is drawn at 0.01 ms."""
    return [max(v, 0.01) for v in values] if log else list(values)


def error_rate_over_time(
    slug: str,
    title: str,
    edges: Sequence[float],
    counts: Mapping[str, Sequence[tuple[int, int]]],
    colors: Mapping[str, str] | None = None,
    x_label: str = "seconds into the run",
) -> Chart:
    """Per side, the share of its requests that failed in each time bin (a line; a gap where a
    side sent nothing), over faint bars of how many requests each side sent per bin.

    `edges` are the bins' n + 1 boundaries; `counts[side]` holds n (requests, errors) pairs.
    """
    sides = list(counts)
    palette = _side_colors(sides, colors)
    bins = len(edges) - 1
    for side, pairs in counts.items():
        if len(pairs) != bins:
            raise ValueError(f"{side}: {len(pairs)} bins of counts for {bins} bins of time")
    centers = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
    widths = [b - a for a, b in itertools.pairwise(edges)]
    with _figure(3.0) as figure:
        _title(figure, title)
        ax = figure.add_subplot()
        volume = ax.twinx()
        volume.set_zorder(0)
        ax.set_zorder(1)
        ax.patch.set_visible(False)  # the rate's axes drawn over the volume's bars
        step = 1.0 / max(1, len(sides))
        peak = 0.0
        for k, side in enumerate(sides):
            pairs = counts[side]
            rates = [errors / requests if requests else math.nan for requests, errors in pairs]
            peak = max([peak, *(r for r in rates if not math.isnan(r))])
            ax.plot(
                centers,
                rates,
                color=palette[side],
                lw=1.8,
                marker="o",
                markersize=3.5,
                label=f"{side}: errors",
            )
            volume.bar(
                [c - w / 2 + w * step * (k + 0.5) for c, w in zip(centers, widths, strict=True)],
                [requests for requests, _ in pairs],
                width=[w * step * 0.9 for w in widths],
                color=palette[side],
                alpha=0.18,
                label=f"{side}: requests",
            )
        top = 1.0 if peak > 0.5 else 0.5 if peak > 0.2 else 0.2 if peak > 0.05 else 0.05
        ax.set_ylim(0, top * 1.04)
        _percent_axis(ax.yaxis)
        ax.set_ylabel("error rate")
        volume.set_ylabel("requests per bin")
        volume.spines["right"].set_visible(True)
        volume.tick_params(axis="y", labelsize=7.5)
        if edges:
            ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel(x_label)
        ax.grid(axis="y")
        handles, labels = ax.get_legend_handles_labels()
        more, more_labels = volume.get_legend_handles_labels()
        if handles:
            ax.legend(
                handles + more,
                labels + more_labels,
                loc="lower left",
                bbox_to_anchor=(0.0, 1.0),
                ncols=min(4, len(handles) * 2),
                handlelength=1.2,
                borderaxespad=0.2,
            )
        return _to_chart(figure, slug, title)


# -- one document --------------------------------------------------------------------------------


def stack(charts: Sequence[Chart], label: str) -> str:
    """The charts one under the other in one self-contained SVG document."""
    width = max((c.width for c in charts), default=0.0)
    height = sum(c.height for c in charts)
    parts = []
    y = 0.0
    for chart in charts:
        # Nested <svg> elements keep each chart's own viewBox; sizes in user units (pt).
        inner = _ROOT.sub(
            lambda m, c=chart, at=y: (
                f'<svg id="{c.slug}" x="0" y="{at:g}" width="{c.width:g}" '
                f'height="{c.height:g}" viewBox="0 0 {c.width:g} {c.height:g}">'
            ),
            chart.svg,
            count=1,
        )
        parts.append(inner)
        y += chart.height
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'width="{width:g}pt" height="{height:g}pt" viewBox="0 0 {width:g} {height:g}" '
        f'version="1.1" role="img" aria-label="{_attr(label)}">'
        f'<rect width="100%" height="100%" fill="#ffffff"/>' + "".join(parts) + "</svg>\n"
    )


__all__ = [
    "Chart",
    "Series",
    "error_rate_over_time",
    "header",
    "latency_distributions",
    "shares_over_time",
    "stack",
    "stacked_shares",
]
