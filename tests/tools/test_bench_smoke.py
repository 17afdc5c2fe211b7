"""The benchmark runs and writes the JSON it promises (tiny sizes; timings are not checked)."""

from __future__ import annotations

import json

from claimroute_bench import __main__ as bench
from claimroute_bench import micro
from claimroute_bench.loopmon import LINE
from claimroute_bench.scenario import make_setup
from claimroute_bench.stalls import _summary, _windows


def test_micro_benchmark_runs_and_reports_every_path():
    setup = make_setup(4)
    results = micro.run(setup, tokens=4, repeats=1)
    for key in ("raw_verify", "verify_token", "decide_uncached", "decide_cold", "decide_warm",
                "hook_warm"):  # fmt: skip
        assert results[key]["median_us"] > 0
    assert results["warm_hit_ratio"] == 1.0
    assert set(results["summary"]) >= {"raw_us", "cold_us", "warm_us", "cold_over_raw"}
    json.dumps(results)


def test_cli_writes_json_for_micro_and_memory(tmp_path):
    out = tmp_path / "bench.json"
    code = bench.main([
        "--only", "micro", "--only", "memory", "--quick", "--users", "3",
        "--memory-tokens", "120", "--cache-size", "50", "--json", str(out),
    ])  # fmt: skip
    assert code == 0
    results = json.loads(out.read_text())
    assert {"command", "date", "versions", "micro", "memory", "targets"} <= set(results)
    memory = results["memory"]
    assert memory["tokens"] == 120 and memory["allowed"] == 120
    assert memory["cache_size_end"] == 50 == memory["cache_bound"]
    assert "rss_growth_after_full_mib" in memory
    assert {row["name"] for row in results["targets"]} >= {"warm decision path", "memory bounded"}


def test_loop_monitor_lines_parse():
    values = (1700000000.1, 1.25, 1.2, 0.4, 0.3, 1, 3, 20.0, 5, 1,
              "task:ConnectionHandler.handle_connection", "ClaimRoute._watch_policy",
              "task:ConnectionHandler.hook_task")  # fmt: skip
    line = "[12:00:00.000] " + LINE % values + "\n"
    [window] = _windows([line, "unrelated\n"])
    assert window["cb_max_ms"] == 1.25 and window["addon_max"] == "ClaimRoute._watch_policy"
    summary = _summary([window])
    assert summary["max_block_ms"] == 1.25
    assert summary["addon_task_max_block_ms"] == 0.4
    assert summary["over_5ms_by"] == ["task:ConnectionHandler.hook_task"]
