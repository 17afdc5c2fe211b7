"""The report on its own: the summary from hand-built results, each renderer from a
hand-built summary, and the expectation checks with each kind of miss (no mitmdump here)."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from claimroute.config.source import parse_yaml_text
from claimroute.policy.load import load_policy_text
from claimroute_tools.scenario import report
from claimroute_tools.scenario.expect import Outcome, RunData, check, evaluate
from claimroute_tools.scenario.model import Expectation, ExpectKind, Scenario, parse_scenario
from claimroute_tools.scenario.render import (
    print_report,
    render_html,
    render_json,
    render_svg,
    to_dict,
)
from claimroute_tools.scenario.render.svg_report import report_charts, status_color, upstream_color
from claimroute_tools.scenario.summary import (
    Breakdown,
    Latency,
    OverTime,
    PhaseSummary,
    PopulationSummary,
    ReportSummary,
    RouteSummary,
    RunInfo,
    ScenarioInfo,
    StepSummary,
    Verdict,
    percentile,
    summarize,
)
from claimroute_tools.scenario.timeline import StepRecord
from claimroute_tools.scenario.traffic import RequestResult, TrafficRun, User, build_users

SVG_NS = "{http://www.w3.org/2000/svg}"

# -- a synthetic run ---------------------------------------------------------------------------

PRIMARY, CANARY = "http://127.0.0.1:9001", "http://127.0.0.1:9002"
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z

SCENARIO = """\
version: 1
name: synthetic
description: A hand-built run <with> "markup" & [brackets].
issuers:
  corp: {alg: ES256}
upstreams: [primary, canary]
policy:
  version: 1
  providers:
    corp:
      issuer: "${issuers.corp.issuer}"
      jwks: {url: "${issuers.corp.jwks_url}"}
  routes:
    - name: employees-to-canary
      match: {claims: {org: solo.io}}
      upstream: "${upstreams.canary.url}"
    - name: half-of-customers
      match: {authenticated: true}
      split:
        by: sub
        salt: s3
        to:
          - {upstream: "${upstreams.canary.url}", weight: 50}
          - {upstream: "${upstreams.primary.url}", weight: 50}
users:
  - {name: employees, count: 2, issuer: corp, claims: {org: solo.io}}
  - {name: customers, count: 4, issuer: corp, claims: {org: example.com}}
  - {name: anonymous, count: 2, token: none}
traffic: {requests: 20, concurrency: 4, seed: 7}
steps:
  - {at: 50%, action: pause, seconds: 0.1, name: breather}
expect:
  - {users: employees, upstream: canary, status: 200}
  - {users: customers, upstream: canary, share: 0.5, tolerance: 0.05}
  - {users: anonymous, status: 401}
  - {sticky: true}
  - {log: "policy reloaded"}
"""

# The policy as the world would have rendered it. With salt s3, bucket_of() puts customers-1,
# -3 and -4 (user ids 2, 4, 5) on the canary and customers-2 (user id 3) on the primary.
POLICY = f"""\
version: 1
providers:
  corp:
    issuer: https://corp.test
    jwks: {{url: "http://127.0.0.1:9000/jwks"}}
routes:
  - name: employees-to-canary
    match: {{claims: {{org: solo.io}}}}
    upstream: "{CANARY}"
  - name: half-of-customers
    match: {{authenticated: true}}
    split:
      by: sub
      salt: s3
      to:
        - {{upstream: "{CANARY}", weight: 50}}
        - {{upstream: "{PRIMARY}", weight: 50}}
"""

# Request index -> (user id, answered by, status, kid). Latency is (index + 1) * 1.5 ms, so
# over all 20 requests p50 is the 10th value (15.0), p95 the 19th (28.5), p99 the 20th (30.0).
# Employees: all canary. Customers: the formula's side, except request 19 (customers#4, user
# 5, a canary user) answered by the primary: a sticky violation. Anonymous: three 401s and a
# timeout the primary saw but never answered.
TRAFFIC: dict[int, tuple[int, str | None, int | None, str | None]] = {
    0: (0, "canary", 200, "k1"),
    1: (2, "canary", 200, "k1"),
    2: (3, "primary", 200, "k1"),
    3: (1, "canary", 200, "k1"),
    4: (4, "canary", 200, "k1"),
    5: (6, None, 401, None),
    6: (5, "canary", 200, "k2"),
    7: (7, None, 401, None),
    8: (0, "canary", 200, "k1"),
    9: (2, "canary", 200, "k1"),
    10: (3, "primary", 200, "k1"),
    11: (1, "canary", 200, "k1"),
    12: (4, "canary", 200, "k1"),
    13: (6, None, 401, None),
    14: (5, "canary", 200, "k2"),
    15: (0, "canary", 200, "k1"),
    16: (2, "canary", 200, "k1"),
    17: (7, None, None, None),  # ReadTimeout, seen by the primary
    18: (1, "canary", 200, "k1"),
    19: (5, "primary", 200, "k2"),
}
POPULATION = {0: "employees", 1: "employees", 6: "anonymous", 7: "anonymous"}
ROUTE = {"employees": "employees-to-canary", "customers": "half-of-customers"}


def parse(text: str = SCENARIO) -> Scenario:
    document, root = parse_yaml_text(text, "synthetic.yaml")
    return parse_scenario(document, root, Path("scenarios/synthetic.yaml"))


def make_results() -> list[RequestResult]:
    out = []
    for index, (user, upstream, status, kid) in TRAFFIC.items():
        population = POPULATION.get(user, "customers")
        latency = (index + 1) * 1.5
        started = T0 + index * 0.1
        result = RequestResult(
            index,
            user,
            population,
            0 if index < 10 else 1,
            "GET",
            "/api",
            kid,
            started,
            ended=started + latency / 1000,
            latency_ms=latency,
            status=status,
            answered_by=upstream,
            seen_by=(upstream,) if upstream else (),
            route=ROUTE.get(population),
        )
        if population == "anonymous":
            if status is None:
                result.error, result.seen_by = "ReadTimeout", ("primary",)
            else:
                result.reason = "no token" if index == 13 else "missing token"
        out.append(result)
    return out


def make_users(scenario: Scenario) -> list[User]:
    users = build_users(scenario.users)
    for user in users:
        if user.population.issuer is not None:
            user.payload, user.mints, user.kid = {"sub": user.sub, **user.claims}, 1, "k1"
    return users


def make_data(
    results: list[RequestResult] | None = None,
    *,
    output: str = "claimroute ready\n",
    incomplete: str | None = None,
) -> RunData:
    scenario = parse()
    policy = load_policy_text(POLICY, "policy.yaml", Path("."))
    return RunData(
        scenario=scenario,
        users=make_users(scenario),
        results=make_results() if results is None else results,
        phase_policies=[policy, policy],
        upstream_names={PRIMARY: "primary", CANARY: "canary"},
        output=output,
        step_names=[step.name for step in scenario.steps],
        incomplete=incomplete,
    )


def make_summary(
    results: list[RequestResult] | None = None,
    *,
    duration: float = 2.5,
    incomplete: str | None = None,
) -> ReportSummary:
    data = make_data(results, incomplete=incomplete)
    run = TrafficRun(data.results, 20, T0, T0 + duration, incomplete)
    steps = [StepRecord(0, "breather", "pause", 10, 0.5, T0 + 1.0, T0 + 1.1234, "paused 0.1s")]
    return summarize(
        data,
        run,
        evaluate(data),
        steps,
        ["start", "after breather"],
        tokens_minted=6,
        attributed=16,
        decisions=17,
        files={"policy": "/tmp/out/policy.yaml", "decision log": "/tmp/out/decisions.jsonl"},
        proxy_url="http://127.0.0.1:8080",
    )


# report.json for the synthetic run, exactly as the report module wrote it before the summary
# became typed (captured from that code): keys, order and values must not change.
# fmt: off
OLD_REPORT_JSON = (
    {'scenario': {'name': 'synthetic',
                  'description': 'A hand-built run <with> "markup" & [brackets].',
                  'file': 'scenarios/synthetic.yaml',
                  'requests': 20,
                  'concurrency': 4,
                  'seed': 7},
     'run': {'started': '2023-11-14T22:13:20+00:00',
             'duration_s': 2.5,
             'requests_sent': 20,
             'requests_per_s': 8.0,
             'tokens_minted': 6,
             'decisions_logged': 17,
             'requests_attributed_to_a_decision': 16,
             'incomplete': None,
             'proxy': 'http://127.0.0.1:8080'},
     'result': {'passed': False, 'expectations': 5, 'failed': 4},
     'upstreams': ['primary', 'canary'],
     'overall': {'requests': 20,
                 'upstreams': {'primary': 3, 'canary': 13, 'none': 4},
                 'statuses': {'200': 16, '401': 3, 'error': 1},
                 'latency_ms': {'p50': 15.0, 'p95': 28.5, 'p99': 30.0, 'max': 30.0}},
     'populations': [{'name': 'employees',
                      'users': 2,
                      'issuer': 'corp',
                      'tamper': None,
                      'tokens_minted': 2,
                      'requests': 6,
                      'upstreams': {'canary': 6},
                      'statuses': {'200': 6},
                      'latency_ms': {'p50': 13.5, 'p95': 28.5, 'p99': 28.5, 'max': 28.5},
                      'seen_without_answer': 0,
                      'reasons': {},
                      'kids': {'k1': 6}},
                     {'name': 'customers',
                      'users': 4,
                      'issuer': 'corp',
                      'tamper': None,
                      'tokens_minted': 4,
                      'requests': 10,
                      'upstreams': {'primary': 3, 'canary': 7},
                      'statuses': {'200': 10},
                      'latency_ms': {'p50': 15.0, 'p95': 30.0, 'p99': 30.0, 'max': 30.0},
                      'seen_without_answer': 0,
                      'reasons': {},
                      'kids': {'k1': 7, 'k2': 3}},
                     {'name': 'anonymous',
                      'users': 2,
                      'issuer': None,
                      'tamper': None,
                      'tokens_minted': 0,
                      'requests': 4,
                      'upstreams': {'none': 4},
                      'statuses': {'401': 3, 'error': 1},
                      'latency_ms': {'p50': 12.0, 'p95': 27.0, 'p99': 27.0, 'max': 27.0},
                      'seen_without_answer': 1,
                      'reasons': {'missing token': 2, 'ReadTimeout': 1, 'no token': 1},
                      'kids': {}}],
     'routes': [{'name': 'employees-to-canary',
                 'requests': 6,
                 'upstreams': {'canary': 6},
                 'statuses': {'200': 6},
                 'latency_ms': {'p50': 13.5, 'p95': 28.5, 'p99': 28.5, 'max': 28.5},
                 'formula_share': None},
                {'name': 'half-of-customers',
                 'requests': 10,
                 'upstreams': {'primary': 3, 'canary': 7},
                 'statuses': {'200': 10},
                 'latency_ms': {'p50': 15.0, 'p95': 30.0, 'p99': 30.0, 'max': 30.0},
                 'formula_share': {'canary': 0.8, 'primary': 0.2}}],
     'phases': [{'name': 'start',
                 'requests': 10,
                 'upstreams': {'primary': 1, 'canary': 7, 'none': 2},
                 'statuses': {'200': 8, '401': 2},
                 'latency_ms': {'p50': 7.5, 'p95': 15.0, 'p99': 15.0, 'max': 15.0}},
                {'name': 'after breather',
                 'requests': 10,
                 'upstreams': {'primary': 2, 'canary': 6, 'none': 2},
                 'statuses': {'200': 8, '401': 1, 'error': 1},
                 'latency_ms': {'p50': 22.5, 'p95': 30.0, 'p99': 30.0, 'max': 30.0}}],
     'timeline': [{'name': 'breather',
                   'action': 'pause',
                   'at': 0.5,
                   'index': 10,
                   'duration_s': 0.123,
                   'detail': 'paused 0.1s'}],
     'over_time': {'bins': 20,
                   'sent': [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                   'served': [1, 1, 1, 1, 1, 0, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1],
                   'share_of_served': {'canary': [1.0, 1.0, 0.0, 1.0, 1.0, None, 1.0, None, 1.0,
                                                  1.0, 0.0, 1.0, 1.0, None, 1.0, 1.0, 1.0, None,
                                                  1.0, 0.0]},
                   'refused_share': [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0,
                                     0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]},
     'expectations': [{'expectation': '{users: employees, upstream: canary, status: 200}',
                       'line': 33,
                       'passed': True,
                       'requests': 6,
                       'expected': 'all answered by canary, status 200',
                       'observed': '100.0% (6/6)',
                       'miss': '',
                       'value': 1.0},
                      {'expectation': '{users: customers, upstream: canary, share: 0.5, '
                                      'tolerance: 0.05}',
                       'line': 34,
                       'passed': False,
                       'requests': 10,
                       'expected': '50.0% ± 5.0% answered by canary',
                       'observed': '70.0% (7/10); the rest: primary/200 (3)',
                       'miss': 'off by 20.00 points; 5.00 allowed',
                       'value': 0.7},
                      {'expectation': '{users: anonymous, status: 401}',
                       'line': 35,
                       'passed': False,
                       'requests': 4,
                       'expected': 'all status 401',
                       'observed': '75.0% (3/4); the rest: none/error (1, seen by primary)',
                       'miss': '1 of 4 requests (25.0%)',
                       'value': 0.75},
                      {'expectation': '{sticky: true}',
                       'line': 36,
                       'passed': False,
                       'requests': 20,
                       'expected': 'every user reaches one upstream',
                       'observed': '1 of 6 users reached two upstreams (8 users sent 2+)',
                       'miss': '1 users not sticky, e.g. customers#4: canary+primary',
                       'value': 0.16666666666666666},
                      {'expectation': '{log: policy reloaded}',
                       'line': 37,
                       'passed': False,
                       'requests': 0,
                       'expected': '≥ 1 mitmdump lines matching /policy reloaded/',
                       'observed': '0 lines',
                       'miss': '1 too few',
                       'value': 0.0}],
     'files': {'policy': '/tmp/out/policy.yaml', 'decision log': '/tmp/out/decisions.jsonl'}}
)
# fmt: on


def test_report_json_is_byte_for_byte_what_the_old_report_wrote(tmp_path: Path) -> None:
    summary = make_summary()
    # The canary analysis (its own tests: test_analysis.py) came after everything else; what
    # was there before it is unchanged, byte for byte.
    document = json.loads(render_json(summary))
    assert list(document)[-1] == "analysis"
    del document["analysis"]
    assert json.dumps(document, indent=2) == json.dumps(OLD_REPORT_JSON, indent=2)
    assert render_json(summary).startswith(json.dumps(OLD_REPORT_JSON, indent=2)[:-2])
    paths = report.write_reports(summary, tmp_path / "out")
    assert sorted(paths) == ["html", "json", "svg"]
    assert paths["json"].read_text() == render_json(summary)
    assert paths["svg"].read_text() == render_svg(summary)
    assert paths["html"].read_text() == render_html(summary)


# -- the summary -------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(20, 0, -1)]  # order does not matter
    assert percentile(values, 50) == 10.0  # ceil(0.5 * 20) = 10th
    assert percentile(values, 95) == 19.0
    assert percentile(values, 99) == 20.0
    assert percentile(values, 0) == 1.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    assert report.percentile is percentile  # claimroute_bench imports it from report


def test_summary_counts_upstreams_statuses_and_latency() -> None:
    s = make_summary()
    assert s.overall == Breakdown(
        requests=20,
        upstreams={"primary": 3, "canary": 13, "none": 4},
        statuses={"200": 16, "401": 3, "error": 1},
        latency_ms=Latency(p50=15.0, p95=28.5, p99=30.0, max=30.0),
    )
    # Upstreams in the scenario's order then "none"; statuses most frequent first.
    assert list(s.overall.upstreams) == ["primary", "canary", "none"]
    assert list(s.overall.statuses) == ["200", "401", "error"]
    employees, customers, anonymous = s.populations
    assert (employees.name, employees.users, employees.tokens_minted) == ("employees", 2, 2)
    assert employees.traffic.upstreams == {"canary": 6}
    # Employees' latencies: 1.5 * (1, 4, 9, 12, 16, 19); p50 is the 3rd of 6.
    assert employees.traffic.latency_ms == Latency(13.5, 28.5, 28.5, 28.5)
    assert customers.traffic.upstreams == {"primary": 3, "canary": 7}
    assert customers.kids == {"k1": 7, "k2": 3}
    assert (anonymous.issuer, anonymous.tokens_minted) == (None, 0)
    assert anonymous.traffic.statuses == {"401": 3, "error": 1}
    assert anonymous.seen_without_answer == 1
    assert anonymous.reasons == {"missing token": 2, "ReadTimeout": 1, "no token": 1}
    assert anonymous.kids == {}


def test_summary_routes_phases_timeline_and_over_time() -> None:
    s = make_summary()
    fixed, split = s.routes
    assert (fixed.name, fixed.traffic.requests, fixed.formula_share) == (
        "employees-to-canary",
        6,
        None,
    )
    # bucket_of() puts 8 of the 10 customer requests on the canary (users 2, 4, 5).
    assert split.formula_share == {"canary": 0.8, "primary": 0.2}
    assert [(p.name, p.traffic.requests) for p in s.phases] == [
        ("start", 10),
        ("after breather", 10),
    ]
    assert s.phases[1].traffic.statuses == {"200": 8, "401": 1, "error": 1}
    assert s.timeline == (StepSummary("breather", "pause", 0.5, 10, 0.123, "paused 0.1s"),)
    over = s.over_time
    assert over.bins == 20 and over.sent == (1,) * 20
    assert list(over.share_of_served) == ["canary"]  # the non-primary upstreams
    assert over.share_of_served["canary"][:3] == (1.0, 1.0, 0.0)
    assert over.share_of_served["canary"][5] is None  # nothing served in that bin
    assert over.refused_share[5] == 1.0 and over.refused_share[0] == 0.0


def test_summary_run_metadata_and_verdict() -> None:
    s = make_summary()
    assert s.scenario == ScenarioInfo(
        "synthetic",
        'A hand-built run <with> "markup" & [brackets].',
        "scenarios/synthetic.yaml",
        20,
        4,
        7,
    )
    assert s.run == RunInfo(
        started="2023-11-14T22:13:20+00:00",
        duration_s=2.5,
        requests_sent=20,
        requests_per_s=8.0,
        tokens_minted=6,
        decisions_logged=17,
        requests_attributed_to_a_decision=16,
        incomplete=None,
        proxy="http://127.0.0.1:8080",
    )
    assert s.result == Verdict(passed=False, expectations=5, failed=4)
    assert [e.passed for e in s.expectations] == [True, False, False, False, False]
    assert s.upstreams == ("primary", "canary")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.result = Verdict(True, 5, 0)  # type: ignore[misc]


def test_summary_of_a_cut_short_run_and_of_no_requests() -> None:
    s = make_summary(duration=0.0, incomplete="time budget of 5s spent")
    assert s.run.requests_per_s is None and s.run.incomplete == "time budget of 5s spent"
    runner = s.expectations[-1]
    assert runner.text == "(runner) every planned request was sent" and not runner.passed
    assert s.result == Verdict(passed=False, expectations=6, failed=5)
    empty = summarize(
        make_data([]),
        TrafficRun([], 20, T0, T0 + 1.0),
        [],
        [],
        ["start"],
        tokens_minted=0,
        attributed=0,
        decisions=0,
        files={},
        proxy_url=None,
    )
    assert empty.overall == Breakdown(0, {}, {}, Latency(None, None, None, None))
    assert empty.routes == () and empty.timeline == ()
    assert [p.name for p in empty.phases] == ["start"]  # the last phase is always listed
    assert empty.over_time.refused_share == (None,) * 20
    assert empty.result == Verdict(passed=True, expectations=0, failed=0)


# -- the renderers, from a hand-built summary ---------------------------------------------------


def hand_summary(*, incomplete: str | None = None) -> ReportSummary:
    staff = Breakdown(
        requests=8,
        upstreams={"primary": 6, "canary": 2},
        statuses={"200": 7, "401": 1},
        latency_ms=Latency(12.0, 40.0, 80.0, 95.5),
    )
    bots = Breakdown(
        requests=2,
        upstreams={"none": 2},
        statuses={"403": 2},
        latency_ms=Latency(3.0, 4.0, 4.0, 4.0),
    )
    return ReportSummary(
        scenario=ScenarioInfo("hand <made>", "Built by hand & checked.", "hand.yaml", 10, 3, 42),
        run=RunInfo("2024-01-02T03:04:05+00:00", 2.5, 10, 4.0, 9, 10, 8, incomplete, None),
        result=Verdict(passed=False, expectations=2, failed=1),
        upstreams=("primary", "canary"),
        overall=Breakdown(
            10,
            {"primary": 6, "canary": 2, "none": 2},
            {"200": 7, "403": 2, "401": 1},
            Latency(10.0, 80.0, 95.5, 95.5),
        ),
        populations=(
            PopulationSummary("staff", 4, "corp", None, 4, staff, 0, {"expired": 1}, {"k1": 8}),
            PopulationSummary("bots", 2, "corp", "bad_sig", 2, bots, 0, {"forbidden": 2}, {}),
        ),
        routes=(RouteSummary("quarter", staff, {"primary": 0.75, "canary": 0.25}),),
        phases=(PhaseSummary("start", bots), PhaseSummary("after widen", staff)),
        timeline=(StepSummary("widen", "change_policy", 0.5, 5, 1.25, "policy live after 1.2s"),),
        over_time=OverTime(
            bins=20,
            sent=(1,) * 10 + (0,) * 10,
            served=(1,) * 10 + (0,) * 10,
            share_of_served={"canary": (0.0,) * 5 + (0.4,) * 5 + (None,) * 10},
            refused_share=(0.0,) * 10 + (None,) * 10,
        ),
        expectations=(
            Outcome(
                "{users: staff, status: 200}",
                12,
                True,
                8,
                "all status 200",
                "100.0% (8/8)",
                "",
                1.0,
            ),
            Outcome(
                "{users: staff, upstream: canary, share: 0.5, tolerance: 0.05}",
                13,
                False,
                8,
                "50.0% ± 5.0% answered by canary",
                "25.0% (2/8); the rest: primary/200 (6)",
                "off by 25.00 points; 5.00 allowed",
                0.25,
            ),
        ),
        files={"policy": "/out/policy.yaml"},
    )


def test_terminal_shows_the_tables_and_one_line_per_miss() -> None:
    console = Console(record=True, width=200)
    print_report(hand_summary(), console)
    text = console.export_text()
    assert "hand <made>: 10 requests in 2.5s (4/s), concurrency 3, seed 42, 9 tokens minted" in text
    assert "primary 75.0% · canary 25.0%" in text  # staff, and the route
    assert "200: 7 · 401: 1" in text
    assert "12/40/80" in text and "3/4/4" in text  # p50/p95/p99, whole ms
    assert "none 100.0%" in text
    assert "Routes (attribution" in text and "Timeline" in text and "Phases" in text
    assert "50%" in text and "policy live after 1.2s" in text
    assert (
        "FAIL line 13: {users: staff, upstream: canary, share: 0.5, tolerance: 0.05}: expected "
        "50.0% ± 5.0% answered by canary; observed 25.0% (2/8); the rest: primary/200 (6); "
        "missed by off by 25.00 points; 5.00 allowed"
    ) in text
    assert "FAIL: 1 of 2 expectations missed" in text
    passing = dataclasses.replace(
        hand_summary(), result=Verdict(True, 1, 0), expectations=hand_summary().expectations[:1]
    )
    console = Console(record=True, width=200)
    print_report(passing, console)
    assert "PASS: all 1 expectations hold" in console.export_text()


def test_terminal_leaves_out_routes_and_timeline_when_there_are_none() -> None:
    summary = dataclasses.replace(hand_summary(), routes=(), timeline=())
    console = Console(record=True, width=200)
    print_report(summary, console)
    text = console.export_text()
    assert "Populations" in text and "Expectations" in text
    assert "Routes" not in text and "Timeline" not in text and "Phases" not in text


def test_json_holds_the_summary_flattened() -> None:
    summary = hand_summary()
    document = json.loads(render_json(summary))
    assert document == to_dict(summary)
    assert list(document) == [
        "scenario", "run", "result", "upstreams", "overall", "populations", "routes",
        "phases", "timeline", "over_time", "expectations", "files",
    ]  # fmt: skip
    staff = document["populations"][0]
    assert list(staff) == [
        "name", "users", "issuer", "tamper", "tokens_minted", "requests", "upstreams",
        "statuses", "latency_ms", "seen_without_answer", "reasons", "kids",
    ]  # fmt: skip
    assert staff["upstreams"] == {"primary": 6, "canary": 2}
    assert staff["latency_ms"] == {"p50": 12.0, "p95": 40.0, "p99": 80.0, "max": 95.5}
    assert document["routes"][0]["formula_share"] == {"primary": 0.75, "canary": 0.25}
    assert document["phases"][1] == {"name": "after widen", **{k: staff[k] for k in ("requests", "upstreams", "statuses", "latency_ms")}}  # fmt: skip
    assert document["over_time"]["share_of_served"]["canary"][5] == 0.4
    assert document["result"] == {"passed": False, "expectations": 2, "failed": 1}
    miss = document["expectations"][1]
    assert miss["expectation"].startswith("{users: staff, upstream: canary")
    assert (miss["line"], miss["passed"], miss["value"]) == (13, False, 0.25)
    assert miss["miss"] == "off by 25.00 points; 5.00 allowed"
    assert document["run"]["proxy"] is None


def svg_texts(svg: str) -> list[str]:
    """The text of every text element (the charts keep text as text)."""
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG_NS}text")]


def test_svg_draws_the_same_figures_and_escapes_text() -> None:
    svg = render_svg(hand_summary())
    assert svg.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<svg ')
    assert svg.endswith("</svg>\n") and "<script" not in svg
    assert "hand &lt;made&gt;" in svg and "hand <made>" not in svg
    root = ET.fromstring(svg.split("\n", 1)[1])
    # The banner, then the charts, one nested <svg> each.
    assert [n.get("id") for n in root.findall(f"{SVG_NS}svg")] == [
        "header", "who-answered", "statuses", "over-the-run",
    ]  # fmt: skip
    words = svg_texts(svg)
    assert {"hand <made>", "FAIL · 1/2 expectations"} <= set(words)
    assert (
        "10 requests through mitmdump in 2.5s · seed 42 · concurrency 3 · upstream as reported "
        "by the upstream itself"
    ) in words
    # The bars: rows with their totals, the upstreams and statuses in the legends, shares on
    # the bars and in each segment's tooltip.
    assert {"staff (8)", "bots (2)", "primary", "canary", "none", "200", "401", "403"} <= set(words)  # fmt: skip
    assert {"75.0%", "25.0%", "87.5%", "12.5%", "100.0%"} <= set(words)
    for tip in (
        "staff: primary 6 (75.0%)",
        "staff: canary 2 (25.0%)",
        "bots: none 2 (100.0%)",
        "staff: 401 1 (12.5%)",
        "bots: 403 2 (100.0%)",
    ):
        assert f"<title>{tip}</title>" in svg
    # The lines over the run, and the timeline step's marker.
    assert "Share answered by canary and share refused, per 5% of the run" in words
    assert {"canary (of served)", "refused: no upstream (of all)", "widen"} <= set(words)
    # Colours stay those of the upstream and the status wherever they are drawn.
    colours = {c.lower() for c in re.findall(r"(?:fill|stroke): (#[0-9a-fA-F]{6})", svg)}
    assert {upstream_color("primary", ("primary", "canary")).lower(), "#4c78a8"} <= colours
    assert {"#f58518", "#9d9d9d", "#54a24b", "#e45756", "#9e1b32"} <= colours
    assert upstream_color("canary", ("primary", "canary")) == "#F58518"
    assert status_color("401") == "#E45756" and status_color("error") == "#333333"
    inline = render_svg(hand_summary(), standalone=False)
    assert inline.startswith("<svg ") and inline == svg.split("\n", 1)[1]
    assert render_svg(hand_summary()) == svg  # deterministic: same summary, same bytes


def test_html_is_self_contained_with_the_same_figures() -> None:
    summary = hand_summary(incomplete="time budget of 5s spent")
    page = render_html(summary)
    assert page.startswith("<!doctype html>") and "<title>hand &lt;made&gt;: FAIL</title>" in page
    for absent in ("<script", "<link", "src=", "@import"):
        assert absent not in page
    charts = report_charts(summary)
    assert [c.slug for c in charts.all()] == ["who-answered", "statuses", "over-the-run"]
    assert "Canary analysis" not in page  # the hand-made summary has no comparison
    for chart in charts.all():  # each the same drawing as in report.svg
        assert f"<figure>{chart.svg}</figure>" in page
        assert chart.svg.split(">", 1)[1] in render_svg(summary)
    assert "<p>Built by hand &amp; checked.</p>" in page
    assert "10 requests in 2.5s (4/s) · concurrency 3 · seed 42 · 9 tokens minted" in page
    assert "Incomplete: time budget of 5s spent" in page
    assert (
        "<tr><td>staff</td><td>4</td><td>4</td><td>8</td><td>primary 75.0% · canary 25.0%</td>"
        "<td>200: 7 · 401: 1</td><td>expired: 1</td><td>12/40/80</td></tr>"
    ) in page
    assert (
        '<tr class="fail"><td>FAIL</td><td>line 13: {users: staff, upstream: canary, share: '
        "0.5, tolerance: 0.05}</td><td>50.0% ± 5.0% answered by canary</td><td>25.0% (2/8); "
        "the rest: primary/200 (6)</td><td>off by 25.00 points; 5.00 allowed</td></tr>"
    ) in page
    assert "<td>quarter</td><td>8</td><td>primary 75.0% · canary 25.0%</td><td>primary 75.0% · canary 25.0%</td>" in page  # fmt: skip
    assert "<td>50% (request 5)</td><td>widen</td><td>change_policy</td>" in page
    assert "<td>1.25s</td>" in page
    assert "<td>policy</td><td>/out/policy.yaml</td>" in page
    assert "Incomplete" not in render_html(hand_summary())


def test_the_canary_analysis_has_its_verdicts_and_charts_in_html_and_svg() -> None:
    summary = make_summary()  # one split route: one default comparison
    (result,) = summary.analysis
    page = render_html(summary)
    assert "<h2>Canary analysis</h2>" in page and f"<h3>{result.name}</h3>" in page
    assert result.name == "half-of-customers: primary-vs-canary"
    # The verdict table: a row per metric, its verdict first (classed for colour), each side's
    # figures under its own label, the limit, the p-value and what the analysis found.
    assert (
        "<th>verdict</th><th>metric</th><th>canary: primary</th><th>baseline: canary</th>"
    ) in page
    # Request 17 timed out with no answer; the primary's records hold it: its error.
    assert (
        '<tr class="inconclusive"><td>INCONCLUSIVE</td><td>error rate</td>'
        f"<td>25.0% (1/4; {result.canary.error_rate_ci[0] * 100:.1f}-"  # type: ignore[index]
        f"{result.canary.error_rate_ci[1] * 100:.1f}%)</td>"  # type: ignore[index]
    ) in page
    assert f"<td>{html.escape(result.latency.detail)}</td>" in page
    assert "<td>p95 x 1.25</td>" in page
    assert "primary has 3 answered requests, fewer than 30" in page
    charts = report_charts(summary)
    (_, latency, errors), *_ = charts.comparisons
    assert (latency.slug, errors.slug) == ("latency-1", "errors-1")
    assert f"<figure>{latency.svg}</figure><figure>{errors.svg}</figure>" in page
    words = svg_texts(latency.svg) + svg_texts(errors.svg)
    # The sides by role and upstream, the answered counts and the analysis' own percentiles.
    c, b = result.canary, result.baseline
    assert f"canary: primary ({c.answered})" in words and f"baseline: canary ({b.answered})" in words  # fmt: skip
    assert f"p50/95/99 {c.p50_ms:.1f}/{c.p95_ms:.1f}/{c.p99_ms:.1f} ms" in words
    assert {"canary: primary: errors", "baseline: canary: requests"} <= set(words)
    assert "seconds since the run's first request" in words
    # Each side in its upstream's colour: primary blue, canary orange.
    for chart in (latency, errors):
        colours = {x.lower() for x in re.findall(r"(?:fill|stroke): (#[0-9a-fA-F]{6})", chart.svg)}
        assert {"#4c78a8", "#f58518"} <= colours
    svg = render_svg(summary)
    nested = [n.get("id") for n in ET.fromstring(svg.split("\n", 1)[1]).findall(f"{SVG_NS}svg")]
    assert nested == ["header", "who-answered", "statuses", "over-the-run", "latency-1", "errors-1"]


# -- the expectation checks ---------------------------------------------------------------------


def expect(kind: ExpectKind = "outcome", **fields: Any) -> Expectation:
    """An expectation as the scenario loader builds it (line 9 of some file)."""
    return Expectation(text="{...}", line=9, kind=kind, **fields)


def test_all_requests_as_expected_passes_with_the_share_as_value() -> None:
    outcome = check(expect(users=("employees",), upstream="canary", status=(200,)), make_data())
    assert outcome.passed and outcome.miss == ""
    assert (outcome.requests, outcome.observed, outcome.value) == (6, "100.0% (6/6)", 1.0)
    assert outcome.expected == "all answered by canary, status 200"


def test_a_status_mismatch_says_how_many_requests_missed_and_what_they_got() -> None:
    outcome = check(expect(users=("anonymous",), status=(401,)), make_data())
    assert not outcome.passed
    assert outcome.expected == "all status 401"
    assert outcome.observed == "75.0% (3/4); the rest: none/error (1, seen by primary)"
    assert outcome.miss == "1 of 4 requests (25.0%)"
    assert outcome.value == 0.75


def test_upstream_none_also_needs_no_upstream_to_have_seen_it() -> None:
    outcome = check(expect(users=("anonymous",), upstream="none"), make_data())
    assert not outcome.passed and outcome.expected == "all no upstream saw it"
    assert outcome.miss == "1 of 4 requests (25.0%)"  # the timeout the primary saw


def test_a_share_out_of_tolerance_says_by_how_many_points() -> None:
    e = expect(users=("customers",), upstream="canary", share=0.5, tolerance=0.05)
    outcome = check(e, make_data())
    assert not outcome.passed and outcome.value == 0.7
    assert outcome.expected == "50.0% ± 5.0% answered by canary"
    assert outcome.observed == "70.0% (7/10); the rest: primary/200 (3)"
    assert outcome.miss == "off by 20.00 points; 5.00 allowed"
    inside = check(dataclasses.replace(e, share=0.7, tolerance=0.0), make_data())
    assert inside.passed and inside.miss == ""


def test_a_share_beyond_a_bound_says_by_how_many_points() -> None:
    data = make_data()
    low = check(expect(users=("customers",), upstream="canary", min_share=0.9), data)
    assert not low.passed and low.expected == "≥ 90.0% answered by canary"
    assert low.miss == "20.00 points beyond the bound"
    high = check(expect(users=("customers",), upstream="canary", max_share=0.6), data)
    assert not high.passed and high.expected == "≤ 60.0% answered by canary"
    assert high.miss == "10.00 points beyond the bound"
    both = check(expect(users=("customers",), upstream="canary", min_share=0.6, max_share=0.8), data)  # fmt: skip
    assert both.passed and both.expected == "≥ 60.0% and ≤ 80.0% answered by canary"


def test_a_sticky_violation_names_the_user_and_both_upstreams() -> None:
    outcome = check(expect("sticky"), make_data())
    assert not outcome.passed
    assert outcome.observed == "1 of 6 users reached two upstreams (8 users sent 2+)"
    assert outcome.miss == "1 users not sticky, e.g. customers#4: canary+primary"
    assert outcome.value == pytest.approx(1 / 6)
    sticky = check(expect("sticky", users=("employees",)), make_data())
    assert sticky.passed and sticky.miss == "" and sticky.value == 0.0


def test_formula_checks_each_request_against_bucket_of() -> None:
    data = make_data()
    outcome = check(expect("formula", route="half-of-customers"), data)
    # Request 19 (customers#4) went to the primary; bucket_of() says canary.
    assert not outcome.passed and outcome.requests == 10
    assert outcome.observed.startswith("9/10 requests reached the predicted upstream; 0 bucket")
    assert outcome.miss == "1 requests elsewhere, e.g. customers#4: primary instead of canary"
    assert outcome.value == 0.9
    for result in data.results:
        if result.index == 19:
            result.answered_by = "canary"
        if result.index == 1:
            result.bucket = 1  # the addon logged another bucket than bucket_of() gives
    outcome = check(expect("formula", route="half-of-customers"), data)
    assert not outcome.passed
    assert "1 bucket disagreements with the addon's log" in outcome.observed
    assert outcome.miss == "0 requests elsewhere"


def test_log_counts_matching_lines_and_says_how_many_too_few_or_too_many() -> None:
    data = make_data(output="claimroute: policy reloaded\nother\nclaimroute: policy reloaded\n")
    ok = check(expect("log", log="policy reloaded", at_least=1), data)
    assert ok.passed and ok.observed == "2 lines" and ok.value == 2.0
    few = check(expect("log", log="policy reloaded", at_least=3), data)
    assert not few.passed and few.miss == "1 too few"
    many = check(expect("log", log="policy reloaded", at_most=0), data)
    assert not many.passed and many.miss == "2 too many"
    assert many.expected == "≤ 0 mitmdump lines matching /policy reloaded/"


def test_a_check_of_nothing_fails_and_says_so() -> None:
    data = make_data([])
    every = check(expect(users=("employees",), status=(200,)), data)
    assert not every.passed and every.miss == "no request matched the selection"
    share = check(expect(upstream="canary", share=0.5, tolerance=0.1), data)
    assert not share.passed and share.miss == "no request matched the selection"
    bound = check(expect(upstream="canary", min_share=0.1), data)
    assert not bound.passed and bound.miss == "no request matched the selection"
    sticky = check(expect("sticky"), data)
    assert not sticky.passed and sticky.miss == "no request was answered by an upstream"
    formula = check(expect("formula", route="half-of-customers"), data)
    assert not formula.passed and formula.miss == "no request took this route"


def test_selection_filters_by_step_method_and_path() -> None:
    data = make_data()
    before = check(expect(before_step="breather", status=(200,)), data)
    after = check(expect(after_step="breather", status=(200,)), data)
    assert (before.requests, after.requests) == (10, 10)
    assert check(expect(method="POST"), data).miss == "no request matched the selection"
    assert check(expect(path="/api", status=(200, 401)), data).miss == "1 of 20 requests (5.0%)"


def test_a_cut_short_run_adds_a_failed_runner_check() -> None:
    outcomes = evaluate(make_data(incomplete="time budget of 5s spent"))
    assert len(outcomes) == 6
    runner = outcomes[-1]
    assert runner == Outcome(
        "(runner) every planned request was sent",
        None,
        False,
        20,
        "20 requests",
        "20 requests",
        "time budget of 5s spent",
    )
