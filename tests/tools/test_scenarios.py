"""End to end: every library scenario passes through a real mitmdump (with less traffic), a
wrong expectation fails the run and says by how much, and the runner cleans up after itself.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from claimroute_tools.scenario import cli

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"

# Smaller traffic per scenario: at least one request per user where shares are checked, so
# the shares equal the cohorts' and stay seed-independent.
SMALL = {
    "employees-and-sticky-canary": 1100,
    "sticky-ten-percent": 1000,
    "gloo-jwt-access-control": 150,
    "gloo-claim-routing": 300,
    "hostile-mix": 200,
    "key-rotation": 300,
    "jwks-outage": 300,
    "policy-change": 1000,
    "canary-analysis-healthy": 1200,  # at least 200 requests on the 25% canary
}
# Library scenarios that show a failing experiment: they must exit 1, for the right reason.
FAILING = {"canary-analysis": 1200}


def run_cli(*args: str) -> int:
    return cli.main([*args, "--no-progress"])


def test_every_library_scenario_is_covered() -> None:
    assert sorted([*SMALL, *FAILING]) == sorted(p.stem for p in SCENARIOS.glob("*.yaml"))


@pytest.mark.e2e
def test_the_faulty_canary_fails_its_analysis_and_only_that(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """canary-analysis: the canary echo fails 5% with 503 and answers 50 ms slower; the run
    exits 1, every routing expectation holds, and the analysis finds both regressions."""
    code = run_cli("canary-analysis", "--out", str(tmp_path), "--requests", "1200")
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == 1, out
    failed = [e["expectation"] for e in report["expectations"] if not e["passed"]]
    assert len(failed) == 1 and "analysis" in failed[0], failed
    (comparison,) = report["analysis"]
    assert comparison["name"] == "canary-vs-primary"
    assert comparison["error_rate"]["verdict"] == "fail"
    assert comparison["latency"]["ratio_p95"] > 1.25  # the verdict also needs the test: JSON
    assert comparison["error_rate"]["difference_ci"][0] > 0.01
    assert "FAIL line" in out and "error rate" in out


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(SMALL))
def test_library_scenario_passes(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(name, "--out", str(tmp_path), "--requests", str(SMALL[name]))
    out = capsys.readouterr()
    report = json.loads((tmp_path / "report.json").read_text())
    failed = [e for e in report["expectations"] if not e["passed"]]
    assert code == 0, f"{failed}\n{out.out}\n{out.err}"
    assert report["result"] == {
        "passed": True,
        "expectations": len(report["expectations"]),
        "failed": 0,
    }
    assert report["run"]["requests_sent"] == SMALL[name]
    # The addon logs each request's id, and every decision it logged carries one of ours: each
    # request with a decision is joined to it (a retry's second decision is not counted twice).
    decisions = [
        json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()
    ]
    assert decisions and all(d.get("request_id", "").isdigit() for d in decisions)
    ids = {int(d["request_id"]) for d in decisions}
    assert ids <= set(range(SMALL[name]))
    assert report["run"]["requests_attributed_to_a_decision"] == len(ids)
    assert "PASS" in out.out and "report.html" in out.out
    svg = (tmp_path / "report.svg").read_text()
    assert svg.startswith("<?xml") and "</svg>" in svg
    page = (tmp_path / "report.html").read_text()
    assert "<svg" in page and "<script" not in page  # self-contained, no scripts
    assert (tmp_path / "mitmdump.log").read_text().count("claimroute ready") == 1


WRONG = """\
version: 1
name: wrong-on-purpose
issuers:
  corp: {alg: ES256, serve: file}
upstreams: [primary, canary]
policy:
  version: 1
  providers:
    corp:
      issuer: "${issuers.corp.issuer}"
      jwks: {file: "${issuers.corp.jwks_file}"}
  routes:
    - name: employees-to-canary
      match: {claims: {org: solo.io}}
      upstream: "${upstreams.canary.url}"
users:
  - {name: employees, count: 10, issuer: corp, claims: {org: solo.io}}
  - {name: customers, count: 30, issuer: corp, claims: {org: example.com}}
  - {name: anonymous, count: 5, token: none}
traffic: {requests: 180, concurrency: 8}
expect:
  - {users: employees, upstream: canary, status: 200}
  - {users: customers, upstream: canary, share: 0.5, tolerance: 0.05}
  - {users: anonymous, status: 200}
  - {sticky: true}
"""


@pytest.mark.e2e
def test_a_wrong_expectation_fails_and_says_by_how_much(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "wrong.yaml"
    scenario.write_text(WRONG)
    code = run_cli(str(scenario), "--out", str(tmp_path / "out"))
    out = capsys.readouterr().out
    assert code == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["result"] == {"passed": False, "expectations": 4, "failed": 2}
    by_line = {e["line"]: e for e in report["expectations"]}
    assert by_line[22]["passed"] and by_line[25]["passed"]
    share = by_line[23]
    assert not share["passed"] and share["value"] == 0.0
    assert share["expected"] == "50.0% ± 5.0% answered by canary"
    assert share["miss"] == "off by 50.00 points; 5.00 allowed"
    anonymous = by_line[24]
    assert not anonymous["passed"]
    assert anonymous["observed"].startswith("0.0% (0/20); the rest: none/401 (20)")
    assert anonymous["miss"] == "20 of 20 requests (100.0%)"
    # The terminal says the same: which line, and the miss.
    assert (
        "FAIL line 23: {users: customers, upstream: canary, share: 0.5, tolerance: 0.05}: "
        "expected 50.0% ± 5.0% answered by canary; observed 0.0% (0/120); the rest: "
        "primary/200 (120); missed by off by 50.00 points; 5.00 allowed"
    ) in out
    assert "FAIL line 24: {users: anonymous, status: 200}: " in out
    assert "FAIL: 2 of 4 expectations missed" in out
    assert "FAIL" in (tmp_path / "out" / "report.svg").read_text()


@pytest.mark.e2e
def test_mitmdump_failure_exits_3_with_its_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "mitmdump"
    fake.write_text("#!/bin/sh\necho 'fake mitmdump: cannot bind'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr("claimroute_tools.lab.mitmdump.MITMDUMP", fake)
    scenario = tmp_path / "wrong.yaml"
    scenario.write_text(WRONG)
    # The plain mitmdump profile runs MITMDUMP (the gateway's start errors: test_gateway_profile).
    args = ("--out", str(tmp_path / "out"), "--proxy-profile", "mitmdump")
    assert run_cli(str(scenario), *args) == 3
    err = capsys.readouterr().err
    assert "infrastructure failure" in err and "fake mitmdump: cannot bind" in err


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            proxy = b"mitmdump" in cmdline or b"claimroute_tools.proxy.gateway" in cmdline
            if text.encode() in cmdline and proxy:
                found.append(int(entry.name))
    return found


@pytest.mark.e2e
def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    out = tmp_path / "out"
    log = tmp_path / "runner.log"
    command = [
        sys.executable,
        "-m",
        "claimroute_tools.scenario.cli",
        "sticky-ten-percent",
        "--out",
        str(out),
        "--no-progress",
        "--requests",
        "20000",
    ]
    with log.open("w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        decisions = out / "decisions.jsonl"
        # Interrupt mid-traffic: once the addon has logged some decisions.
        while time.monotonic() < deadline and proc.poll() is None:
            if decisions.exists() and decisions.stat().st_size > 2000:
                break
            time.sleep(0.1)
        assert _processes_mentioning(str(out)), "mitmdump should be running mid-run"
        text = (out / "policy.yaml").read_text()
        ports = {int(port) for port in re.findall(r"127\.0\.0\.1:(\d+)", text)}
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert not _processes_mentioning(str(out))
    assert len(ports) == 3
    for port in ports:  # the JWKS server and both upstreams are closed too
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    assert "claimroute ready" in (out / "mitmdump.log").read_text()
