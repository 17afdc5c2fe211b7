"""The metrics-cost benchmark runs and reports its figures (tiny sizes; timings not checked)."""

from __future__ import annotations

import json

from claimroute_bench import metricscost
from claimroute_bench.scenario import make_setup


def test_metrics_cost_benchmark_reports_every_figure():
    results = metricscost.run(make_setup(4), tokens=4, repeats=1)
    assert results["record"]["median_us"] > 0
    assert results["hook_warm_on"]["median_us"] > 0 and results["hook_warm_off"]["median_us"] > 0
    assert set(results["summary"]) == {
        "record_us", "hook_warm_on_us", "hook_warm_off_us", "hook_added_us", "scrape_ms",
    }  # fmt: skip
    assert results["scrape_bytes"] > 0
    json.dumps(results)
