"""The report's renderers: each takes a `ReportSummary` (summary.py) and only formats it.

- `print_report` (terminal.py): the tables, on a rich Console.
- `render_json` / `to_dict` (json_report.py): report.json.
- `render_svg` (svg_report.py): the charts alone, one SVG document.
- `render_html` (html_report.py): a self-contained page (inline CSS and SVG, no scripts).

The charts are drawn by matplotlib (charts.py: plain data in, SVG out, matplotlib imported on
first use); svg_report.py turns the summary's figures into them.
"""

from __future__ import annotations

from claimroute_tools.scenario.render.html_report import render_html
from claimroute_tools.scenario.render.json_report import render_json, to_dict
from claimroute_tools.scenario.render.svg_report import render_svg
from claimroute_tools.scenario.render.terminal import print_report

__all__ = ["print_report", "render_html", "render_json", "render_svg", "to_dict"]
