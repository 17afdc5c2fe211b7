"""Traffic shapes (docs/traffic.md): request templates, the open-model rate, durations.

The pacer's arrival schedule is checked with a fake clock (no timing assertion). The e2e
tests run a real mitmdump with echo upstreams: what the upstream received is checked byte for
byte; the rate and duration runs check what the report says and bounds that hold by
construction (the traffic time of a duration run, the number of arrivals of a paced
stretch), never how fast anything was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import claimroute_tools.scenario as scenario_package
from claimroute.config.source import Loc
from claimroute.errors import PolicyError
from claimroute_tools.scenario import cli, run_scenario
from claimroute_tools.scenario.model import load_scenario
from claimroute_tools.scenario.pacing import Pacer, parse_rate
from claimroute_tools.scenario.render.html_report import render_html
from claimroute_tools.scenario.render.json_report import to_dict
from claimroute_tools.scenario.render.terminal import print_report
from claimroute_tools.scenario.templates import TemplateValues, parse_body, parse_text
from claimroute_tools.scenario.timeline import Timeline
from claimroute_tools.scenario.traffic import (
    ProgressReporter,
    build_users,
    iter_plan,
    make_plan,
    plan_requests,
    request_parts,
)
from claimroute_tools.scenario.world import World
from tests.tools.test_report import hand_summary

BASE = """\
version: 1
name: shapes
issuers:
  corp: {alg: ES256, serve: file}
upstreams: [primary]
policy:
  version: 1
  providers:
    corp:
      issuer: "${issuers.corp.issuer}"
      jwks: {file: "${issuers.corp.jwks_file}"}
users:
  - name: staff
    count: 3
    issuer: corp
    sub: "u {i}@corp"
    claims: {org: solo.io, level: 3, groups: [dev, ops]}
  - {name: guests, count: 2, token: none}
traffic:
  requests: 20
  concurrency: 4
  mix:
    - method: POST
      path: /api/users/{sub}/items
      headers: {x-org: "{claims.org}", x-request: "{request}"}
      body: {user: "{sub}", org: "{claims.org}", n: 3, text: '{"a": 1}'}
expect:
  - {users: staff, upstream: primary, status: 200}
"""
# The guests use the traffic mix too unless given their own (they have no claims).
GUESTS_OWN_MIX = "  - {name: guests, count: 2, token: none, mix: [{path: '/public/{i}'}]}"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str) -> Any:
    return load_scenario(write(tmp_path, text))


def valid(text: str = BASE) -> str:
    return text.replace("  - {name: guests, count: 2, token: none}", GUESTS_OWN_MIX)


# -- templates ---------------------------------------------------------------------------------


def values(**kw: Any) -> TemplateValues:
    base: dict[str, Any] = {"sub": "u 1", "i": 1, "name": "staff", "request": 7, "claims": {}}
    return TemplateValues(**{**base, **kw})


def test_placeholders_are_filled_and_json_braces_stay() -> None:
    text = parse_text('{"id": "{sub}", "org": {claims.org}} {{sub} {not a field} {}', Loc("t"))
    claims = {"org": ["a", 1]}
    assert text.render(values(claims=claims)) == (
        '{"id": "u 1", "org": ["a",1]} {sub} {not a field} {}'
    )
    path = parse_text("/u/{sub}/{claims.org}/{request}", Loc("t"))
    assert path.render(values(claims={"org": "a/b"}), url=True) == "/u/u%201/a%2Fb/7"


def test_a_body_is_compact_json_with_its_strings_filled() -> None:
    body = parse_body({"u": "{sub}", "n": [1, True, None], "t": '{"a": 1}'}, Loc("t"))
    assert body.render(values()) == b'{"u":"u 1","n":[1,true,null],"t":"{\\"a\\": 1}"}'
    static = parse_body({"k": "{{literal}"}, Loc("t"))
    assert static.static == b'{"k":"{literal}"}' and not static.fields


def test_requests_are_filled_per_user(tmp_path: Path) -> None:
    scenario = load(tmp_path, valid())
    users = build_users(scenario.users)
    plan = plan_requests(users, scenario.traffic.mix, 10, seed=3)
    for planned in plan:
        user = users[planned.user]
        headers, body = request_parts(planned, user)
        if user.population.name == "guests":
            assert planned.path == f"/public/{user.index}" and body is None
            continue
        assert planned.path == f"/api/users/u%20{user.index}@corp/items"  # as yarl sends it
        assert headers["x-org"] == "solo.io"
        assert headers["x-request"] == str(planned.index)
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body or b"") == {
            "user": f"u {user.index}@corp",
            "org": "solo.io",
            "n": 3,
            "text": '{"a": 1}',
        }


def test_a_mix_header_replaces_the_populations_own_and_content_type_is_kept(
    tmp_path: Path,
) -> None:
    text = (
        valid()
        .replace(
            '    sub: "u {i}@corp"\n',
            "    sub: \"u {i}@corp\"\n    headers: {X-Org: population, x-keep: '1'}\n",
        )
        .replace('x-request: "{request}"}', 'x-request: "{request}", content-type: text/json}')
    )
    scenario = load(tmp_path, text)
    users = build_users(scenario.users)
    planned = plan_requests(users[:3], scenario.traffic.mix, 1, seed=1)[0]
    headers, _ = request_parts(planned, users[planned.user])
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["x-org"] == "solo.io" and lowered["x-keep"] == "1"
    assert lowered["content-type"] == "text/json"
    assert len(lowered) == len(headers)  # one x-org, one content-type


# -- load errors: key path and line ----------------------------------------------------------------

BAD = [
    ("/api/users/{sub}/items", "/api/users/{subb}/items", "traffic.mix[0].path", 24,
     "unknown placeholder {subb}"),
    ('user: "{sub}"', 'user: "{user}"', "traffic.mix[0].body.user", 26,
     "unknown placeholder {user}"),
    ("{claims.org}\", x-request", "{claims.team}\", x-request", "traffic.mix[0].headers.x-org",
     25, "population 'staff' (line 13) has no such claim"),
    ("x-request:", "Authorization:", "traffic.mix[0].headers.Authorization", 25,
     "set by the runner"),
    ("x-request:", "content-length:", "traffic.mix[0].headers.content-length", 25,
     "set by the HTTP client"),
    ("  requests: 20\n", "  requests: 20\n  duration: 5s\n", "traffic.duration", 21,
     "exactly one of requests"),
    ("  requests: 20\n", "", "traffic", 19, "exactly one of requests"),
    ("  requests: 20\n", "  requests: 20\n  rate: 200 per second\n", "traffic.rate", 21,
     "a rate such as 200/s"),
    ("  requests: 20\n", "  requests: 20\n  rate: 0/s\n", "traffic.rate", 21, "above 0"),
    ("  requests: 20\n", "  duration: 2m\n  time_budget: 90s\n", "traffic.time_budget", 21,
     "must be longer than the duration"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "key_path", "line", "words"), BAD)
def test_bad_traffic_names_key_path_and_line(
    tmp_path: Path, old: str, new: str, key_path: str, line: int, words: str
) -> None:
    text = valid()
    assert old in text
    with pytest.raises(PolicyError) as info:
        load(tmp_path, text.replace(old, new, 1))
    assert (info.value.key_path, info.value.line) == (key_path, line), str(info.value)
    assert words in str(info.value)


def test_an_anonymous_population_cannot_fill_claims_from_the_traffic_mix(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load(tmp_path, BASE)  # the guests use the traffic mix, which reads {claims.org}
    assert (info.value.key_path, info.value.line) == ("traffic.mix[0].headers.x-org", 25)
    assert "population 'guests' (line 18) is anonymous" in str(info.value)


def test_a_literal_brace_in_a_path_needs_doubling(tmp_path: Path) -> None:
    text = valid().replace("path: /api/users/{sub}/items", "path: '/a/{{x}'")
    scenario = load(tmp_path, text)
    users = build_users(scenario.users)
    assert plan_requests(users[:3], scenario.traffic.mix, 1, seed=1)[0].path == "/a/{x}"


# -- rate, duration, overrides --------------------------------------------------------------------


def test_rates_and_durations_load(tmp_path: Path) -> None:
    assert parse_rate("200/s", Loc("t")) == 200 and parse_rate("30 / m", Loc("t")) == 0.5
    text = valid().replace("  requests: 20\n", "  duration: 90s\n  rate: 120/m\n")
    traffic = load(tmp_path, text).traffic
    assert (traffic.requests, traffic.duration, traffic.rate) == (None, 90.0, 2.0)
    assert traffic.time_budget == 150.0  # the duration plus a minute, by default


def test_overrides_switch_between_requests_and_duration(tmp_path: Path) -> None:
    scenario = load(tmp_path, valid())
    timed = scenario.with_overrides(duration=300.0, rate=50.0)
    assert (timed.traffic.requests, timed.traffic.duration, timed.traffic.rate) == (None, 300, 50)
    assert timed.traffic.time_budget == 360.0
    counted = timed.with_overrides(requests=9)
    assert (counted.traffic.requests, counted.traffic.duration) == (9, None)
    short = load(
        tmp_path, valid().replace("  requests: 20\n", "  requests: 20\n  time_budget: 10s\n")
    )
    assert short.with_overrides(seed=2, rate=5.0).traffic.time_budget == 10  # no duration given
    with pytest.raises(ValueError, match="not both"):
        scenario.with_overrides(requests=5, duration=5.0)
    with pytest.raises(SystemExit):  # argparse: the two flags exclude each other
        cli.build_parser().parse_args(["x", "--requests", "5", "--duration", "5s"])
    args = cli.build_parser().parse_args(["x", "--duration", "1.5m", "--rate", "20/s"])
    assert (args.duration, args.rate) == (90.0, 20.0)


def test_a_duration_plan_is_lazy_deterministic_and_in_rounds(tmp_path: Path) -> None:
    scenario = load(tmp_path, valid().replace("  requests: 20\n", "  duration: 10s\n"))
    users = build_users(scenario.users)
    plan, total = make_plan(users, scenario.traffic)
    assert total is None and not isinstance(plan, list)
    first = [next(plan) for _ in range(12)]
    again = list(iter_plan(users, scenario.traffic.mix, scenario.traffic.seed, limit=12))
    assert first == again
    assert [p.index for p in first] == list(range(12))
    for start in range(0, 10, 5):  # every round uses every user once
        assert sorted(p.user for p in first[start : start + 5]) == [0, 1, 2, 3, 4]
    assert len(list(iter_plan(users, scenario.traffic.mix, 1, limit=7))) == 7


def test_steps_of_a_duration_run_are_at_a_share_of_the_traffic_time(tmp_path: Path) -> None:
    text = valid().replace("  requests: 20\n", "  duration: 8s\n") + (
        "steps:\n  - {at: 25%, action: pause, seconds: 1s}\n"
        "  - {at: 75%, action: pause, name: later, seconds: 1s}\n"
    )
    scenario = load(tmp_path, text)
    timeline = Timeline(scenario, None, None, None, print)  # type: ignore[arg-type]
    assert timeline.boundaries() == [2.0, 6.0]
    assert timeline.phase_names() == ["start", "after pause", "after later"]
    counted = Timeline(scenario.with_overrides(requests=40), None, None, 40, print)  # type: ignore[arg-type]
    assert counted.boundaries() == [10, 30]


# -- the pacer, on a fake clock ---------------------------------------------------------------------


class FakeClock:
    """Time that passes only when the pacer sleeps."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def test_the_pacer_sends_on_its_schedule() -> None:
    # Eager tasks start at once, so `send` sees the clock at the moment it was dispatched.
    asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
    clock = FakeClock()
    pacer = Pacer(100.0, cap=8, clock=clock, sleep=clock.sleep)
    sent_at: list[tuple[int, float]] = []

    async def send(item: int) -> None:
        sent_at.append((item, clock.now))

    assert await pacer.run(iter(range(50)), send) == 50
    assert [i for i, _ in sent_at] == list(range(50))
    assert [round(t - 100.0, 6) for _, t in sent_at] == [round(k / 100, 6) for k in range(50)]
    assert pacer.stats.delayed_by_cap == 0 and pacer.stats.max_lag == 0
    assert pacer.stats.traffic_time == pytest.approx(0.5)  # 50 arrivals at 100/s


async def test_a_paced_stretch_stops_at_its_length_or_the_deadline() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, cap=8, clock=clock, sleep=clock.sleep)

    async def send(item: int) -> None:
        return None

    assert await pacer.run(iter(range(1000)), send, stop_after=1.0) == 10  # t = 0.0 .. 0.9
    assert pacer.stats.traffic_time == pytest.approx(1.0)
    assert await pacer.run(iter(range(1000)), send, deadline=clock.now + 0.45) == 5
    assert pacer.stats.sent == 15


async def test_the_cap_delays_requests_and_says_so() -> None:
    clock = FakeClock()
    pacer = Pacer(1000.0, cap=2, clock=clock, sleep=clock.sleep)
    release = asyncio.Event()
    in_flight: list[int] = []
    peak = 0

    async def send(item: int) -> None:
        nonlocal peak
        in_flight.append(item)
        peak = max(peak, len(in_flight))
        await release.wait()
        in_flight.remove(item)

    async def release_when_blocked() -> None:
        for _ in range(10_000):
            if pacer.stats.delayed_by_cap:
                clock.now += 0.5  # the slots free up half a second late
                release.set()
                return
            await asyncio.sleep(0)

    helper = asyncio.create_task(release_when_blocked())
    assert await pacer.run(iter(range(6)), send) == 6
    await helper
    assert peak == 2
    # The third waited for a slot; so did some of the late ones catching up in a burst.
    assert pacer.stats.delayed_by_cap >= 1
    assert pacer.stats.max_lag == pytest.approx(0.5)  # sent at 0.502 s, due at 0.002 s
    assert pacer.stats.traffic_time == pytest.approx(0.502)  # late: longer than the 6 ms planned


async def test_the_pacer_stops_at_the_deadline_when_the_proxy_cannot_keep_the_rate() -> None:
    """Regression (review 14, M2): the deadline was compared with the *scheduled* arrival, not
    the clock, so a proxy slower than the rate kept the run going long past its time budget
    (4000 requests at 4000/s with a 3 s budget ran 8.6 s and sent all 4000)."""
    clock = FakeClock()
    pacer = Pacer(100.0, 1, clock=clock, sleep=clock.sleep)

    async def send(_: int) -> None:
        await clock.sleep(1.0)  # the proxy answers once a second

    deadline = clock.now + 5.0
    sent = await pacer.run(iter(range(1000)), send, deadline=deadline)
    # Stopped once the clock passed the deadline; the one request in flight then answered.
    assert clock.now <= deadline + 2.0, f"sent {sent} requests, stopped at t={clock.now:.0f}s"
    assert pacer.cut and sent < 10
    assert pacer.stats.unsent_on_schedule == 0  # a count run's shortfall is "incomplete"


async def test_a_paced_duration_stops_on_the_clock_and_counts_what_it_could_not_send() -> None:
    """Regression (review 14, M2): 2 s at 2000/s through a slow proxy ran 11.9 s."""
    clock = FakeClock()
    pacer = Pacer(100.0, 2, clock=clock, sleep=clock.sleep)

    async def send(_: int) -> None:
        await clock.sleep(0.5)  # two in flight, half a second each: 4/s, not 100/s

    start = clock.now
    sent = await pacer.run(iter(range(1000)), send, stop_after=2.0)
    assert clock.now - start <= 2.0 + 1.0  # the duration, then the answers in flight
    assert not pacer.cut
    assert pacer.stats.unsent_on_schedule == 200 - sent > 0  # 200 due in 2 s at 100/s
    assert pacer.stats.traffic_time == pytest.approx(2.0)  # traffic time is the duration


def test_the_progress_says_100_percent_of_the_duration_once() -> None:
    console = Console(record=True, width=100)
    reporter = ProgressReporter(None, console, enabled=False)
    for fraction in (0.1, 0.3, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 2.0, 3.0):  # answers after the end
        reporter.advance(fraction)
    lines = console.export_text().splitlines()
    assert lines == [
        "traffic: 2 requests (30% of the duration)",
        "traffic: 3 requests (60% of the duration)",
        "traffic: 4 requests (80% of the duration)",
        "traffic: 5 requests (100% of the duration)",
    ]


def test_report_json_has_the_observed_and_target_rate() -> None:
    """Regression (review 14, M1): RunInfo had the rate figures, but no report showed them."""
    summary = hand_summary()
    assert not summary.run.shaped  # a count-based closed loop: its report is unchanged
    assert "observed_rate_per_s" not in to_dict(summary)["run"]
    run = dataclasses.replace(
        summary.run,
        target_rate_per_s=4000.0,
        observed_rate_per_s=462.8,
        delayed_by_cap=3900,
        max_lag_ms=7600.0,
        traffic_s=8.6,
    )
    shaped = dataclasses.replace(summary, run=run)
    document = to_dict(shaped)
    for key in ("target_rate_per_s", "observed_rate_per_s", "delayed_by_cap", "traffic_s"):
        assert key in document["run"], key
    assert document["run"]["observed_rate_per_s"] == 462.8
    assert document["run"]["target_duration_s"] is None
    header = (
        "rate 4000/s target, 462.8/s observed (3,900 requests delayed by the cap of "
        f"{summary.scenario.concurrency}, max lag 7600 ms)"
    )
    console = Console(record=True, width=300)
    print_report(shaped, console)
    assert header in console.export_text()
    assert f"· {header} ·" in render_html(shaped)
    timed = dataclasses.replace(run, target_rate_per_s=None, target_duration_s=60.0)
    assert timed.shape_text(8) == "duration 60s"
    assert to_dict(dataclasses.replace(summary, run=timed))["run"]["target_duration_s"] == 60.0


# -- end to end through a real mitmdump --------------------------------------------------------------


class RecordingWorld(World):
    """The runner's World, kept after the run so the echo servers' records can be read."""

    last: World | None = None

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        RecordingWorld.last = self


def run(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, RecordingWorld]:
    monkeypatch.setattr(scenario_package, "World", RecordingWorld)
    scenario = load(tmp_path, text)
    result = asyncio.run(run_scenario(scenario, tmp_path / "out", progress=False))
    world = RecordingWorld.last
    assert isinstance(world, RecordingWorld)
    return result, world


@pytest.mark.e2e
def test_templates_reach_the_upstream_filled_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, world = run(tmp_path, valid(), monkeypatch)
    assert result.passed, [o for o in result.outcomes if not o.passed]
    records = world.upstreams["primary"].received
    staff = [r for r in records if r.method == "POST"]
    (summary,) = [p for p in result.summary.populations if p.name == "staff"]
    assert staff and len(staff) == summary.traffic.requests  # every staff request arrived
    for record in staff:
        index = int(record.header("x-claimroute-scenario-request") or "-1")
        i = int(record.raw_path.split("/")[3].removeprefix("u%20").removesuffix("@corp"))
        assert record.raw_path == f"/api/users/u%20{i}@corp/items"
        assert record.header("x-org") == "solo.io"
        assert record.header("x-request") == str(index)
        assert record.header("content-type") == "application/json"
        expected = {"user": f"u {i}@corp", "org": "solo.io", "n": 3, "text": '{"a": 1}'}
        assert record.body == json.dumps(expected, separators=(",", ":")).encode()
    guests = [r for r in records if r.path.startswith("/public/")]  # (GET / is the probe)
    assert not guests  # anonymous: refused by the proxy (401), never upstream


@pytest.mark.e2e
def test_a_paced_duration_run_reports_its_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = valid().replace("  requests: 20\n", "  duration: 2s\n  rate: 25/s\n") + (
        "steps:\n  - {at: 50%, action: pause, seconds: 0.5s}\n"
    )
    result, _ = run(tmp_path, text, monkeypatch)
    info = result.summary.run
    assert info.incomplete is None
    # By construction: 25 arrivals per second of traffic time, steps not counted.
    assert info.requests_sent == 50
    assert info.target_rate_per_s == 25 and info.target_duration_s == 2
    assert info.traffic_s is not None and info.traffic_s >= 2.0
    assert info.observed_rate_per_s is not None and info.observed_rate_per_s > 0  # reported
    assert info.delayed_by_cap >= 0 and info.max_lag_ms is not None
    (step,) = result.summary.timeline
    assert step.index == 25  # the first second's arrivals were sent before the pause
    assert [p.traffic.requests for p in result.summary.phases] == [25, 25]


@pytest.mark.e2e
def test_a_closed_loop_duration_run_stops_by_its_duration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = valid().replace("  requests: 20\n", "  duration: 1.5s\n") + (
        "steps:\n  - {at: 0.333333, action: pause, seconds: 0.5s}\n"
    )
    result, _ = run(tmp_path, text, monkeypatch)
    info = result.summary.run
    assert info.incomplete is None and info.target_rate_per_s is None
    assert info.traffic_s == pytest.approx(1.5, abs=1e-3)  # each stretch is cut at its length
    assert info.duration_s >= 2.0  # traffic plus the pause, whatever the speed
    (step,) = result.summary.timeline
    phases = result.summary.phases
    assert phases[0].traffic.requests == step.index > 0
    total = sum(p.traffic.requests for p in phases)
    assert total == info.requests_sent == result.summary.scenario.requests
