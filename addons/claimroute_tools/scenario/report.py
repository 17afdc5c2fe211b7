"""The report of a run: its figures (summary.py) in four formats (render/), and the files.

`summarize` computes every figure once into a frozen `ReportSummary`; the renderers only
format it: `print_report` (terminal tables), `render_json` (report.json, whose document is
`to_dict(summary)`), `render_svg` (report.svg, the charts alone, for embedding in a README)
and `render_html` (report.html, self-contained: inline CSS and SVG, no scripts).
`write_reports` writes the three files.
"""

from __future__ import annotations

from pathlib import Path

from claimroute_tools.scenario.render import (
    print_report,
    render_html,
    render_json,
    render_svg,
    to_dict,
)
from claimroute_tools.scenario.summary import ReportSummary, percentile, summarize


def write_reports(summary: ReportSummary, out_dir: Path) -> dict[str, Path]:
    """Write report.json, report.html and report.svg into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "report.json",
        "html": out_dir / "report.html",
        "svg": out_dir / "report.svg",
    }
    paths["json"].write_text(render_json(summary))
    paths["html"].write_text(render_html(summary))
    paths["svg"].write_text(render_svg(summary))
    return paths


__all__ = [
    "ReportSummary",
    "percentile",
    "print_report",
    "render_html",
    "render_json",
    "render_svg",
    "summarize",
    "to_dict",
    "write_reports",
]
