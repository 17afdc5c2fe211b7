"""`--engine locust`: library scenarios run on Locust (a master and two local workers, as
subprocesses) reach the same verdicts as on the built-in engine, through a real mitmdump;
each request's outcome comes back with its status, upstream, latency and request id.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from claimroute_bench.procstat import descendants
from claimroute_tools.scenario import RunResult, cli, load_scenario, run_scenario
from claimroute_tools.scenario.engines import locust_engine
from claimroute_tools.scenario.engines.locust_engine import (
    LocustFailed,
    LocustOptions,
    LocustUnavailable,
    check_available,
)

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "scenarios"
JWT = re.compile(rb"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")
LOCUST = importlib.util.find_spec("locust") is not None and importlib.util.find_spec("gevent")
needs_locust = pytest.mark.skipif(not LOCUST, reason="locust (claimroute[locust]) not installed")


async def _both(path: Path, requests: int, out: Path) -> tuple[RunResult, RunResult]:
    scenario = load_scenario(path).with_overrides(requests=requests)
    builtin = await run_scenario(scenario, out / "builtin", progress=False)
    locust = await run_scenario(
        scenario, out / "locust", progress=False, engine="locust", locust=LocustOptions(workers=2)
    )
    return builtin, locust


def _verdicts(result: RunResult) -> list[tuple[str, bool, int]]:
    return [(o.text, o.passed, o.requests) for o in result.outcomes]


def _timeline(result: RunResult) -> list[tuple[str, int | str]]:
    """Each step with the request index it ran at, and each phase with its request count."""
    steps = [(step.name, step.index) for step in result.summary.timeline]
    phases = [(phase.name, phase.traffic.requests) for phase in result.summary.phases]
    return [*steps, *phases]


@pytest.mark.e2e
@needs_locust
async def test_a_timeline_scenario_gets_the_same_verdicts_on_both_engines(tmp_path: Path) -> None:
    # key-rotation: two re-mints and a pause at their boundaries, 200s and 401s: the steps must
    # run between Locust's requests exactly where the built-in engine runs them.
    builtin, locust = await _both(SCENARIOS / "key-rotation.yaml", 300, tmp_path)
    assert _verdicts(locust) == _verdicts(builtin)
    assert locust.passed
    assert _timeline(locust) == _timeline(builtin)

    # The per-request outcomes, as Locust's workers recorded them.
    lines = (tmp_path / "locust" / "locust" / "outcomes.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert sorted(r["index"] for r in records) == list(range(300))  # the request ids
    assert {r["status"] for r in records} == {200, 401}
    for record in records:
        assert record["latency_ms"] > 0
        assert record["ended"] >= record["started"]
        # The upstream by its own word: an answer from primary, nothing for the 401s.
        assert record["said"] == ("primary" if record["status"] == 200 else None)
    report = json.loads((tmp_path / "locust" / "report.json").read_text())
    assert report["run"]["requests_sent"] == 300


@pytest.mark.e2e
@needs_locust
async def test_a_failing_expectation_fails_on_both_engines(tmp_path: Path) -> None:
    # The library's sticky split plus one expectation that cannot hold: the verdicts (a FAIL
    # among PASSes) must come from what Locust's requests actually got.
    text = (SCENARIOS / "sticky-ten-percent.yaml").read_text()
    text += "  - {route: ten-percent-of-users, upstream: canary, share: 0.5, tolerance: 0.01}\n"
    path = tmp_path / "sticky-wrong.yaml"
    path.write_text(text)
    builtin, locust = await _both(path, 300, tmp_path)
    verdicts = _verdicts(locust)
    assert verdicts == _verdicts(builtin)
    assert [passed for _, passed, _ in verdicts] == [True, True, True, True, False]


def test_without_locust_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        locust_engine.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "locust" else real(name, *a),
    )
    with pytest.raises(LocustUnavailable, match=r"install claimroute\[locust\]"):
        check_available()
    code = cli.main(["sticky-ten-percent", "--engine", "locust", "--no-progress"])
    assert code == cli.EXIT_INFRA
    assert "install claimroute[locust]" in capsys.readouterr().err


@needs_locust
def test_workers_on_other_machines_need_a_fixed_master_port(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main(["sticky-ten-percent", "--engine", "locust", "--locust-remote-workers", "2"])
    assert code == cli.EXIT_BAD_SCENARIO
    assert "fixed port" in capsys.readouterr().err


@needs_locust
def test_an_open_model_rate_is_refused_before_anything_starts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = cli.main(["sticky-ten-percent", "--engine", "locust", "--rate", "100/s",
                     "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    assert code == cli.EXIT_BAD_SCENARIO
    assert "traffic.rate not supported with --engine locust" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


PARITY = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import locustfile  # in this subprocess only: Locust monkeypatches it with gevent
from geventhttpclient.header import Headers
from claimroute_tools.scenario.attribution import served_word
from claimroute_tools.scenario.model import ServedBy

cases = json.loads(sys.argv[2])
out = []
for headers, body, rule in cases:
    served_by = ServedBy(header=rule.get("header"), json=tuple(rule["json"]) if rule.get("json")
                         else None) if rule else None
    content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
    expected = served_word(headers, content_type, body.encode(), served_by)[0]
    word, _ = locustfile.said(Headers(headers), body.encode(), rule or None)
    out.append([expected, word])
print(json.dumps(out))
"""


@needs_locust
def test_the_workers_read_who_served_an_answer_as_the_runner_does() -> None:
    # The locustfile cannot import claimroute (remote workers may not have it), so it has its
    # own copy of attribution.served_word's order; both must agree.
    echo = '{"upstream": "canary", "build": {"version": "v2"}}'
    cases = [
        [{"x-upstream": "primary"}, "", None],
        [{"content-type": "application/json"}, echo, None],
        [{"content-type": "application/json; charset=utf-8"}, echo, None],
        [{"content-type": "text/plain"}, echo, None],
        [{"x-version": "v1", "x-upstream": "primary"}, "", {"header": "x-version"}],
        [{"x-upstream": "primary"}, "", {"header": "x-version"}],
        [{"content-type": "application/json"}, echo, {"json": ["build", "version"]}],
        [{"content-type": "application/problem+json"}, echo, {"json": ["build", "version"]}],
        [{"content-type": "application/json"}, "not json", {"json": ["build"]}],
        [{}, "", None],
    ]
    folder = Path(locust_engine.LOCUSTFILE).parent
    done = subprocess.run(
        [sys.executable, "-c", PARITY, str(folder), json.dumps(cases)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    pairs = json.loads(done.stdout.strip().splitlines()[-1])
    assert [expected for expected, _ in pairs] == [
        "primary", "canary", "canary", None, "v1", "primary", "v2", "v2", None, None,
    ]  # fmt: skip
    assert [word for _, word in pairs] == [expected for expected, _ in pairs]


# -- tokens stay off the disk (review 17) ---------------------------------------------------


def _token_files(folder: Path) -> list[str]:
    """Files under `folder` holding a JWT, with their modes."""
    leaks = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and JWT.search(path.read_bytes()):
            leaks.append(f"{path} ({oct(stat.S_IMODE(path.stat().st_mode))})")
    return leaks


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary directory `mkdtemp` uses, for this test only (to see what is left)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.e2e
@needs_locust
async def test_no_token_is_left_on_disk_after_a_run(tmp_path: Path, private_tmp: Path) -> None:
    # The segment files carry every request's headers, the bearer token included: they must
    # not land in the run directory (which one shares), nor stay in the temporary one.
    scenario = load_scenario(SCENARIOS / "key-rotation.yaml").with_overrides(requests=30)
    out = tmp_path / "run"
    result = await run_scenario(scenario, out, progress=False, engine="locust",
                                locust=LocustOptions(workers=1))  # fmt: skip
    assert result.summary is not None and result.passed
    assert (out / "locust" / "outcomes.jsonl").exists()  # what the report needs is kept
    assert (out / "locust" / "master.log").exists()
    assert not _token_files(out), "bearer tokens left in the run directory"
    assert not list(private_tmp.iterdir()), "the private plan folder was not removed"


@pytest.mark.e2e
@needs_locust
async def test_the_plan_folder_is_private_and_removed_when_the_run_fails(
    tmp_path: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, list[int]]] = []

    async def fail(done: Path, *_args: Any) -> bool:
        # The first segment is written; Locust (really started) then "stops".
        folder = done.parent
        modes = [stat.S_IMODE(p.stat().st_mode) for p in folder.glob("segment-*.json")]
        seen.append((stat.S_IMODE(folder.stat().st_mode), modes))
        raise LocustFailed("the Locust master exited (code 1)")

    monkeypatch.setattr(locust_engine, "_drain", fail)
    scenario = load_scenario(SCENARIOS / "key-rotation.yaml").with_overrides(requests=30)
    with pytest.raises(LocustFailed):
        await run_scenario(scenario, tmp_path / "run", progress=False, engine="locust",
                           locust=LocustOptions(workers=1))  # fmt: skip
    assert seen, "the engine never reached its first segment"
    folder_mode, file_modes = seen[0]
    assert folder_mode == 0o700
    assert all(mode == 0o600 for mode in file_modes)  # if the master has not read it yet
    assert not list(private_tmp.iterdir()), "the private plan folder was not removed"
    assert not _token_files(tmp_path / "run")


# -- Locust dies with the runner (review 17) ------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.e2e
@needs_locust
def test_locust_processes_die_with_a_killed_runner(tmp_path: Path) -> None:
    # Locust runs in its own session (Ctrl-C reaches the runner only); a SIGKILLed runner
    # (OOM killer, CI timeout) cannot stop it, so the kernel must (PR_SET_PDEATHSIG).
    out = tmp_path / "run"
    runner = subprocess.Popen(
        [sys.executable, "-m", "claimroute_tools.cli", "scenario", "key-rotation", "--engine",
         "locust", "--locust-workers", "1", "--requests", "20000", "--no-progress",
         "--out", str(out)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    kids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out / "locust" / "outcomes.jsonl").exists():
            assert runner.poll() is None, "the runner ended before Locust sent traffic"
            time.sleep(0.3)
        kids = descendants(runner.pid)
        assert kids, "no Locust process found"
        # While it runs: no token on a command line (/proc/PID/cmdline is world-readable).
        for pid in kids:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                assert not JWT.search(handle.read()), f"a token on process {pid}'s command line"
    finally:
        runner.kill()
        runner.wait(30)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in kids):
            time.sleep(0.3)
        left = [p for p in kids if _alive(p)]
        assert not left, f"still running 20 s after the runner was killed: {left}"
    finally:
        for pid in kids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
