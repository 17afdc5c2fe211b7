"""The report's charts on their own, from synthetic data: what each draws (text stays text, so
labels and figures can be read back), its colours, and that the SVG is deterministic,
well-formed, self-contained and leaves matplotlib's global settings as they were."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET

import pytest

from claimroute_tools.scenario.render import charts
from claimroute_tools.scenario.render.charts import Chart, Series
from claimroute_tools.scenario.summary import percentile

BLUE, ORANGE = "#4C78A8", "#F58518"
SVG = "{http://www.w3.org/2000/svg}"


def texts(chart: Chart) -> list[str]:
    """Every text element's content (svg.fonttype none writes text as text)."""
    root = ET.fromstring(chart.svg)
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def fills(svg: str) -> set[str]:
    return {c.lower() for c in re.findall(r"(?:fill|stroke): (#[0-9a-fA-F]{6})", svg)}


def samples(seed: int = 3) -> dict[str, list[float]]:
    r = random.Random(seed)
    return {
        "baseline": [round(r.lognormvariate(2.3, 0.3), 2) for _ in range(800)],
        "canary": [round(r.lognormvariate(2.7, 0.5), 2) for _ in range(120)],
    }


def test_latency_distributions_marks_each_sides_percentiles() -> None:
    data = samples()
    chart = charts.latency_distributions(
        "lat", "Latency: canary vs baseline", data, {"baseline": BLUE, "canary": ORANGE}
    )
    words = texts(chart)
    assert "Latency: canary vs baseline" in words
    for side, values in data.items():
        p50, p95, p99 = (percentile(values, q) for q in (50, 95, 99))
        # The tick label holds the side, its sample count and its nearest-rank percentiles (two
        # lines: matplotlib writes a text element per line).
        assert f"{side} ({len(values)})" in words
        assert f"p50/95/99 {p50:.1f}/{p95:.1f}/{p99:.1f} ms" in words
    assert words.count("p95") == 2 and words.count("p99") == 2  # one marker each per side
    assert {"baseline", "canary"} <= set(words)  # the ECDF's legend
    assert {BLUE.lower(), ORANGE.lower()} <= fills(chart.svg)


def test_latency_distributions_names_a_side_without_samples() -> None:
    chart = charts.latency_distributions("lat", "t", {"baseline": [5.0, 6.0, 7.0], "canary": []})
    words = texts(chart)
    assert words.count("no requests") == 2  # under its name, and in its row
    assert {"canary", "baseline (3)", "p50/95/99 6.0/7.0/7.0 ms"} <= set(words)


def test_charts_of_a_comparison_without_any_request_still_draw() -> None:
    nothing = charts.latency_distributions("lat", "t", {"baseline": [], "canary": []})
    assert texts(nothing).count("no requests") == 4
    idle = charts.error_rate_over_time("err", "t", [0.0, 0.5, 1.0], {"a": [(0, 0), (0, 0)]})
    assert "a: errors" in texts(idle)


def test_latency_over_a_wide_range_uses_a_log_axis() -> None:
    wide = charts.latency_distributions("lat", "t", {"a": [1.0, 2.0, 500.0], "b": [0.0, 3.0]})
    narrow = charts.latency_distributions("lat", "t", {"a": [10.0, 12.0, 15.0]})
    # Decades on a log axis, labelled as plain numbers (TeX is off, so no "$...$" text).
    assert {"1", "10", "100"} <= set(texts(wide))
    assert not any("$" in w for w in texts(wide))
    assert "100" not in texts(narrow)


def test_error_rate_over_time_draws_a_rate_per_side_with_gaps() -> None:
    edges = [0.0, 2.0, 4.0, 6.0]
    counts = {"baseline": [(100, 1), (100, 0), (100, 2)], "canary": [(10, 5), (0, 0), (10, 1)]}
    chart = charts.error_rate_over_time(
        "err", "Errors: canary vs baseline", edges, counts, {"canary": ORANGE, "baseline": BLUE}
    )
    words = texts(chart)
    assert "Errors: canary vs baseline" in words
    for label in ("baseline: errors", "canary: errors", "baseline: requests", "canary: requests"):
        assert label in words
    assert "seconds into the run" in words and "error rate" in words
    assert "50%" in words  # the canary's 5/10 puts the axis at 100%
    assert {BLUE.lower(), ORANGE.lower()} <= fills(chart.svg)
    with pytest.raises(ValueError, match="canary: 2 bins of counts for 3 bins of time"):
        charts.error_rate_over_time("err", "t", edges, {"canary": [(1, 0), (1, 0)]})


def test_stacked_shares_labels_bars_and_gives_each_segment_a_tooltip() -> None:
    colors = {"primary": BLUE, "canary": ORANGE}
    chart = charts.stacked_shares(
        "who",
        "Who answered",
        [("customers", 200, {"primary": 180, "canary": 20}), ("idle", 0, {})],
        lambda k: colors.get(k, "#9D9D9D"),
        ["primary", "canary"].index,
    )
    words = texts(chart)
    assert {"customers (200)", "idle (0)", "90.0%", "10.0%", "primary", "canary"} <= set(words)
    assert "<title>customers: primary 180 (90.0%)</title>" in chart.svg
    assert "<title>customers: canary 20 (10.0%)</title>" in chart.svg
    assert {BLUE.lower(), ORANGE.lower()} <= fills(chart.svg)


def test_shares_over_time_marks_steps_and_leaves_gaps() -> None:
    chart = charts.shares_over_time(
        "over",
        "Share answered by canary",
        [
            Series("canary (of served)", ORANGE, [0.1, None, 0.2]),
            Series("refused", "#9D9D9D", [0.0, 0.0, 0.0], True),
        ],
        [(0.5, "widen")],
    )
    words = texts(chart)
    assert {"canary (of served)", "refused", "widen", "25%"} <= set(words)
    assert "progress of the run (requests sent)" in words


def one_of_each() -> list[Chart]:
    return [
        charts.header("demo <&>", "PASS · 2/2 expectations", True, "10 requests"),
        charts.stacked_shares("who", "Who", [("a", 2, {"x": 1, "y": 1})], lambda k: BLUE, str),
        charts.latency_distributions("lat", "Latency", samples()),
        charts.error_rate_over_time("err", "Errors", [0, 1, 2], {"a": [(4, 1), (4, 0)]}),
    ]


def test_text_that_looks_like_a_reference_is_left_as_written() -> None:
    chart = charts.stacked_shares(
        "who", 'url(#p1) id="x"', [('href="#m"', 1, {"a": 1})], lambda k: BLUE, str
    )
    assert {'url(#p1) id="x"', 'href="#m" (1)'} <= set(texts(chart))


def test_charts_are_deterministic_and_their_ids_are_their_own() -> None:
    first, again = one_of_each(), one_of_each()
    assert [c.svg for c in first] == [c.svg for c in again]
    for chart in first:
        ids = re.findall(r'\bid="([^"]+)"', chart.svg)
        assert ids[0] == chart.slug and all(i.startswith(f"{chart.slug}-") for i in ids[1:])
        references = re.findall(r'url\(#([^)]+)\)|href="#([^"]+)"', chart.svg)
        assert {a or b for a, b in references} <= set(ids)  # every reference resolves inside
        assert "Date" not in chart.svg and "<script" not in chart.svg
        assert not re.search(r'(?:href|src)="(?!#)', chart.svg)  # nothing fetched


def test_stack_nests_each_chart_in_one_well_formed_document() -> None:
    parts = one_of_each()
    document = charts.stack(parts, "demo <&> report")
    assert document.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<svg ')
    root = ET.fromstring(document.split("\n", 1)[1])
    nested = root.findall(f"{SVG}svg")
    assert [n.get("id") for n in nested] == ["header", "who", "lat", "err"]
    assert [float(n.get("y", "")) for n in nested] == [
        sum(c.height for c in parts[:i]) for i in range(len(parts))
    ]
    assert root.get("viewBox") == f"0 0 720 {sum(c.height for c in parts):g}"
    assert root.get("aria-label") == "demo <&> report"  # escaped in the file, read back here
    assert "demo &lt;&amp;&gt;" in document


def test_rendering_leaves_matplotlibs_settings_alone_and_is_thread_safe() -> None:
    import matplotlib

    before = dict(matplotlib.rcParams)
    expected = [c.svg for c in one_of_each()]
    results: list[list[str]] = []

    def render() -> None:
        results.append([c.svg for c in one_of_each()])

    threads = [threading.Thread(target=render) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results == [expected] * 3
    assert dict(matplotlib.rcParams) == before


def test_the_proxy_and_the_cli_do_not_import_matplotlib() -> None:
    code = (
        "import sys, claimroute_tools.cli, claimroute_tools.scenario.report, "
        "claimroute_tools.scenario.render.charts; print('matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
