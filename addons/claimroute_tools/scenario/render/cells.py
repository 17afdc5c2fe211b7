"""Cell texts the terminal tables and the HTML tables share."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from claimroute_tools.scenario.expect import Outcome, pct
from claimroute_tools.scenario.summary import Latency


def shares(counts: Mapping[str, int], total: int) -> str:
    """`primary 90.0% · canary 10.0%`; `-` for no requests."""
    if not total:
        return "-"
    return " · ".join(f"{k} {pct(v / total)}" for k, v in counts.items())


def times(counts: Mapping[str, int]) -> str:
    """`200: 9 · 401: 1`; `-` for none."""
    return " · ".join(f"{k}: {v}" for k, v in counts.items()) or "-"


def ms(latency: Latency) -> str:
    """`12/30/45` (p50/p95/p99, whole ms); `-` without requests."""
    values = (latency.p50, latency.p95, latency.p99)
    if any(v is None for v in values):
        return "-"
    return "/".join(f"{v:.0f}" for v in values if v is not None)


def predicted(formula_share: Mapping[str, float] | None) -> str:
    """What bucket_of() predicts for a split route (`canary 10.0% · primary 90.0%`), else `-`."""
    return " · ".join(f"{k} {pct(v)}" for k, v in (formula_share or {}).items()) or "-"


def where(outcome: Outcome) -> str:
    """`line 12: ` for an expectation from the file; nothing for the runner's own checks."""
    return f"line {outcome.line}: " if outcome.line else ""


def esc(text: Any) -> str:
    """Text for HTML and SVG, quotes included."""
    return html.escape(str(text), quote=True)
