"""End to end: experiments against services the runner does not start, and through a proxy it
did not start (docs/external-experiments.md), each through a real mitmdump with the addon.

The "builds" are plain aiohttp services (tests/tools/external_servers.py) that say their version
in a header, in a JSON field, or not at all; the user's proxy is a mitmdump the test starts
itself with its own options, as a user would.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from claimroute_tools.lab import MitmdumpProcess, TestIssuer
from claimroute_tools.scenario import cli
from claimroute_tools.scenario.traffic import REQUEST_ID_HEADER
from tests.tools.external_servers import Service, serving

pytestmark = pytest.mark.e2e

POLICY = """\
policy:
  version: 1
  providers:
    corp:
      issuer: "${issuers.corp.issuer}"
      jwks: {file: "${issuers.corp.jwks_file}"}
  routes:
    - name: employees
      match: {claims: {org: solo.io}}
      upstream: "${upstreams.canary.url}"
"""

USERS = """\
issuers:
  corp: {alg: ES256, serve: file}
users:
  - {name: employees, count: 4, issuer: corp, claims: {org: solo.io}}
  - {name: customers, count: 12, issuer: corp, claims: {org: example.com}}
  - {name: anonymous, count: 4, token: none}
traffic: {requests: 200, concurrency: 8, request_timeout: 20s, time_budget: 300s}
"""


def write_scenario(tmp_path: Path, *parts: str) -> Path:
    """A scenario file from parts, each dedented on its own."""
    path = tmp_path / "experiment.yaml"
    path.write_text("version: 1\nname: external\n" + "".join(map(textwrap.dedent, parts)))
    return path


def run(path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    code = cli.main([str(path), "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    report_file = out / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return code, report, " ".join((captured.out + captured.err).split())  # rich wraps lines


def failed(report: dict) -> list[dict]:
    return [e for e in report.get("expectations", []) if not e["passed"]]


def test_two_builds_that_say_their_version_in_a_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serving(Service("v1"), Service("v2")) as (primary, canary):
        path = write_scenario(
            tmp_path,
            f"""\
            upstreams: {{primary: {{url: "{primary.url}"}}, canary: {{url: "{canary.url}"}}}}
            served_by: {{header: x-version, values: {{v1: primary, v2: canary}}}}
            """,
            USERS,
            POLICY,
            """\
            expect:
              - {users: employees, upstream: canary, status: 200}
              - {users: customers, upstream: primary, status: 200}
              - {users: anonymous, upstream: none, status: 401}
              - {sticky: true}
            """,
        )
        code, report, out = run(path, tmp_path / "out", capsys)
    assert code == 0, f"{failed(report)}\n{out}"
    # Every request was attributed by the upstream's own word, or was refused by the proxy.
    assert report["run"]["attribution"] == {"upstream": 160, "none": 40}
    assert report["overall"]["upstreams"] == {"primary": 120, "canary": 40, "none": 40}
    assert primary.requests == 120 and canary.requests == 40  # what the builds really got
    none = next(e for e in report["expectations"] if "upstream: none" in e["expectation"])
    assert "judged from the proxy's answer and decision log" in none["observed"]
    assert "attribution: primary: its own answer (header x-version: v1)" in out


def test_a_json_field_and_a_build_that_cannot_say_fall_back_to_the_decision_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serving(Service("primary", says="json"), Service("v2", says="nothing")) as (
        primary,
        canary,
    ):
        path = write_scenario(
            tmp_path,
            f"""\
            upstreams:
              primary: {{url: "{primary.url}"}}
              canary: {{url: "{canary.url}"}}
            served_by: {{json: build.version}}
            """,
            USERS,
            POLICY,
            """\
            expect:
              - {users: employees, upstream: canary, status: 200}
              - {users: customers, upstream: primary, status: 200}
              - {users: anonymous, upstream: none, status: 401}
            """,
        )
        code, report, out = run(path, tmp_path / "out", capsys)
    assert code == 0, f"{failed(report)}\n{out}"
    # The report counts, per request, which source decided the upstream.
    assert report["run"]["attribution"] == {"upstream": 120, "decision log": 40, "none": 40}
    employees = next(e for e in report["expectations"] if "employees" in e["expectation"])
    assert "40 attributed by the decision log" in employees["observed"]
    assert canary.requests == 40
    assert "attribution: canary: its answers do not say who it is" in out
    assert "attribution: requests by who decided: upstream 120, decision log 40, none 40" in out


def test_a_misbehaving_echo_shows_its_errors_and_latency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_scenario(
        tmp_path,
        """\
        upstreams:
          - primary
          - {name: canary, echo: {latency_ms: 40, jitter_ms: 10, error_rate: 0.2, error_status: 503}}
        """,
        USERS,
        POLICY,
        """\
        expect:
          - {users: employees, upstream: canary, status: 503, share: 0.2, tolerance: 0.12}
          - {users: employees, upstream: canary, status: [200, 503]}
          - {users: customers, upstream: primary, status: 200}
        """,
    )
    code, report, out = run(path, tmp_path / "out", capsys)
    assert code == 0, f"{failed(report)}\n{out}"
    employees = next(p for p in report["populations"] if p["name"] == "employees")
    customers = next(p for p in report["populations"] if p["name"] == "customers")
    assert employees["upstreams"] == {"canary": 40}  # errors still say who answered
    assert 2 <= employees["statuses"].get("503", 0) <= 16  # 20% of 40, seeded, loosely
    assert customers["statuses"] == {"200": 120}
    # Sleeping never ends early: each canary answer took at least latency_ms - jitter_ms.
    assert employees["latency_ms"]["p50"] >= 30
    # Echo-only scenarios report as before (no attribution counts).
    assert "attribution" not in report["run"]
    # Reproducible: the same seed fails the same requests.
    code2, report2, _ = run(path, tmp_path / "again", capsys)
    assert code2 == 0
    again = next(p for p in report2["populations"] if p["name"] == "employees")
    assert again["statuses"] == employees["statuses"]


PLACEHOLDER = """\
# the user's own policy, put back after the run
version: 1
providers:
  own:
    issuer: https://own.test
    jwks: {file: own.jwks.json}
"""


def test_through_your_own_proxy_with_a_policy_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = tmp_path / "live-policy.yaml"
    live.write_text(PLACEHOLDER)
    TestIssuer("own").write_jwks(tmp_path / "own.jwks.json")
    log = tmp_path / "your-decisions.jsonl"
    # An older run's line: same request id as this run's first request, from long ago.
    log.write_text(json.dumps({"ts": 1.0, "request_id": "0", "route": "stale"}) + "\n")
    after = tmp_path / "after.yaml"
    after.write_text(
        textwrap.dedent(
            """\
            version: 1
            providers:
              corp:
                issuer: "${issuers.corp.issuer}"
                jwks: {file: "${issuers.corp.jwks_file}"}
            routes:
              - name: everyone-with-a-token
                match: {authenticated: true}
                upstream: "${upstreams.canary.url}"
            """
        )
    )
    proxy = MitmdumpProcess(
        live,
        options={"claimroute_log": str(log), "claimroute_request_id_header": REQUEST_ID_HEADER},
    )
    with serving(Service("v1"), Service("v2")) as (primary, canary), proxy:
        path = write_scenario(
            tmp_path,
            f"""\
            upstreams: {{primary: {{url: "{primary.url}"}}, canary: {{url: "{canary.url}"}}}}
            served_by: {{header: x-version, values: {{v1: primary, v2: canary}}}}
            proxy:
              url: "{proxy.proxy_url}"
              decision_log: {log.name}
              policy_file: {live.name}
              reload_wait: 5s
            steps:
              - {{at: 50%, action: change_policy, policy_file: {after.name}}}
            """,
            USERS,
            POLICY,
            """\
            expect:
              - {users: employees, upstream: canary, status: 200}
              - {users: customers, upstream: primary, status: 200, before_step: change_policy}
              - {users: customers, upstream: canary, status: 200, after_step: change_policy}
              - {users: anonymous, upstream: none, status: 401}
            """,
        )
        code, report, out = run(path, tmp_path / "out", capsys)
        proxy_output = proxy.output
    assert code == 0, f"{failed(report)}\n{out}\n{proxy_output}"
    assert report["run"]["proxy"] == proxy.proxy_url
    # Only this run's decisions were read: not the old line, not the start-up probe.
    assert report["run"]["decisions_logged"] == 200
    assert report["run"]["requests_attributed_to_a_decision"] == 200
    assert report["run"]["attribution"] == {"upstream": 160, "none": 40}
    assert primary.requests == 60 and canary.requests == 100
    assert proxy_output.count("claimroute: policy reloaded") >= 2  # installed, then changed
    # The user's policy file is theirs again; the run kept copies of what it wrote.
    assert live.read_text() == PLACEHOLDER
    assert (tmp_path / "out" / "policy.change_policy.yaml").is_file()
    assert "mitmdump output" not in report["files"]


def test_a_decision_log_your_proxy_does_not_write_is_exit_3_before_any_traffic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # proxy.decision_log names a file the proxy does not write (a typo, another proxy's):
    # attribution would join nothing and every silent upstream's answer would look like
    # nobody's. The probe request is logged by any claimroute proxy, so the log must grow.
    live = tmp_path / "live-policy.yaml"
    live.write_text(PLACEHOLDER)
    TestIssuer("own").write_jwks(tmp_path / "own.jwks.json")
    written = tmp_path / "decisions.jsonl"
    proxy = MitmdumpProcess(live, options={"claimroute_log": str(written)})
    with serving(Service("v1"), Service("v2", says="nothing")) as (primary, canary), proxy:
        path = write_scenario(
            tmp_path,
            f"""\
            upstreams: {{primary: {{url: "{primary.url}"}}, canary: {{url: "{canary.url}"}}}}
            served_by: {{header: x-version, values: {{v1: primary, v2: canary}}}}
            proxy: {{url: "{proxy.proxy_url}", decision_log: decisions.jsonI}}
            """,
            USERS,
            POLICY,
            "expect:\n  - {users: anonymous, upstream: none}\n",
        )
        code, report, out = run(path, tmp_path / "out", capsys)
    assert code == 3, out
    assert "did not record the probe request" in out
    assert "is claimroute_log set to this file?" in out
    assert (primary.requests, canary.requests) == (0, 0) and report == {}
    assert written.stat().st_size > 0  # the proxy did log the probe, in its own file
