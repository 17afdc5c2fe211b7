"""Experiments against your own services (docs/external-experiments.md), without mitmdump:
the file format (url upstreams, served_by, proxy, misbehaving echoes), reading who answered,
the decision-log fallback, the user's decision log, and the probe errors that stop a run
before any traffic. tests/tools/test_scenario_external_e2e.py runs the same through mitmdump.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlencode

import aiohttp
import pytest

from claimroute.config.source import load_yaml_file
from claimroute.errors import PolicyError
from claimroute_tools.lab.echo import EchoUpstream, Misbehaviour
from claimroute_tools.scenario import cli
from claimroute_tools.scenario.attribution import probe_upstreams, served_word, url_key
from claimroute_tools.scenario.expect import _check_outcome
from claimroute_tools.scenario.model import Expectation, ServedBy, load_scenario
from claimroute_tools.scenario.tokens import REDACTED, _bounded
from claimroute_tools.scenario.traffic import (
    REQUEST_ID_HEADER,
    RequestResult,
    attribute_routes,
    read_decisions,
)
from claimroute_tools.scenario.world import World
from tests.tools.external_servers import Service, closed_port, serving
from tests.tools.test_schemas import SCENARIO as SCENARIO_SCHEMA  # with the policy schema

BASE = """\
version: 1
issuers:
  corp: {alg: ES256, serve: file}
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
users:
  - {name: employees, count: 2, issuer: corp, claims: {org: solo.io}}
  - {name: customers, count: 2, issuer: corp, claims: {org: example.com}}
traffic: {requests: 8}
expect:
  - {users: employees, upstream: canary}
"""


def scenario_file(tmp_path: Path, head: str, base: str = BASE) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(textwrap.dedent(head) + base)
    return path


def error_for(tmp_path: Path, head: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_scenario(scenario_file(tmp_path, head))
    return info.value


# -- the file format -------------------------------------------------------------------------


def test_mapping_form_mixes_echo_and_url_upstreams(tmp_path: Path) -> None:
    scenario = load_scenario(
        scenario_file(
            tmp_path,
            """\
            upstreams:
              primary: {echo: {latency_ms: 40, jitter_ms: 10, error_rate: 5%, error_status: 502}}
              canary: {url: "http://localhost:8001/", probe: /healthz}
            served_by: {header: x-version, values: {v1: primary, v2: canary}}
            """,
        )
    )
    assert scenario.upstreams == ("primary", "canary")  # the names, as before
    primary, canary = scenario.upstream_specs
    assert not primary.external
    assert primary.echo == Misbehaviour(40, 10, 0.05, 502)
    assert canary.external and canary.url == "http://localhost:8001" and canary.probe == "/healthz"
    assert scenario.served_by == ServedBy("x-version", None, {"v1": "primary", "v2": "canary"})
    assert scenario.proxy is None
    # ${upstreams.canary.url} is the external URL (known before anything starts).
    world = World(scenario, tmp_path / "run")
    assert world.upstream_urls() == {"canary": "http://localhost:8001"}
    assert world.references()["upstreams.canary.url"] == "http://localhost:8001"


def test_list_form_keeps_plain_names_and_takes_misbehaving_echoes(tmp_path: Path) -> None:
    scenario = load_scenario(
        scenario_file(
            tmp_path,
            """\
            upstreams:
              - primary
              - {name: canary, echo: {latency_ms: 40, jitter_ms: 10, error_rate: 0.05}}
            """,
        )
    )
    assert scenario.upstreams == ("primary", "canary")
    assert scenario.upstream_spec("primary").echo == Misbehaviour()
    assert scenario.upstream_spec("canary").echo == Misbehaviour(40, 10, 0.05, 503)


@pytest.mark.parametrize(
    ("head", "key_path", "line", "words"),
    [
        (
            "upstreams: {primary: {url: 'http://127.0.0.1:1'}, canary: {url: 'http://127.0.0.1:2'}}\n"
            "served_by:\n  header: x-version\n  values: {v1: primary, v2: nobody}\n",
            "served_by.values.v2",
            4,
            "'v2' names no upstream: 'nobody'",
        ),
        (
            "upstreams: [primary, canary]\nserved_by: {header: x-version}\n",
            "served_by",
            2,
            "served_by is for url upstreams",
        ),
        (
            "upstreams: {primary: {url: 'http://127.0.0.1:1'}, canary: {json: x}}\n",
            "upstreams.canary.json",
            1,
            "unknown key 'json'",
        ),
        (
            "upstreams: {primary: {url: 'ftp://x'}, canary: {}}\n",
            "upstreams.primary.url",
            1,
            "expected http://host:port",
        ),
        (
            "upstreams: {primary: {url: 'http://127.0.0.1:1', echo: {}}, canary: {}}\n",
            "upstreams.primary",
            1,
            "not both",
        ),
        (
            "upstreams: [primary, {name: canary, echo: {error_rate: 2}}]\n",
            "upstreams[1].echo.error_rate",
            1,
            "between 0% and 100%",
        ),
        (
            "upstreams: {primary: {}, none: {}}\n",
            "upstreams.none",
            1,
            "'none' is reserved",
        ),
    ],
)
def test_bad_upstreams_and_served_by_name_key_path_and_line(
    tmp_path: Path, head: str, key_path: str, line: int, words: str
) -> None:
    error = error_for(tmp_path, head)
    assert (error.key_path, error.line) == (key_path, line), str(error)
    assert words in error.reason
    assert error.file.endswith("scenario.yaml")


PROXY_ONLY = BASE.replace(
    BASE[BASE.index("policy:") : BASE.index("users:")], ""
)  # no policy of its own: the proxy's policy_file is the policy


def test_proxy_section(tmp_path: Path) -> None:
    (tmp_path / "live.yaml").write_text("version: 1\nroutes: []\n")
    path = scenario_file(
        tmp_path,
        """\
        upstreams: [primary, canary]
        proxy: {url: "http://127.0.0.1:8080", decision_log: d.jsonl, policy_file: live.yaml}
        """,
        PROXY_ONLY.replace("  - {users: employees, upstream: canary}", "  - {status: 200}"),
    )
    scenario = load_scenario(path)
    assert scenario.proxy is not None
    assert scenario.proxy.url == "http://127.0.0.1:8080"
    assert scenario.proxy.decision_log == tmp_path / "d.jsonl"
    assert scenario.proxy.policy_file == tmp_path / "live.yaml"
    assert not scenario.proxy.install_policy  # its own policy: read, never rewritten at start
    assert scenario.proxy.reload_wait == 3.0
    assert scenario.policy.origin == str(tmp_path / "live.yaml")
    # With the scenario's own policy too, the runner installs it (and puts the file back).
    both = load_scenario(
        scenario_file(
            tmp_path,
            "upstreams: [primary, canary]\n"
            "proxy: {url: 'http://127.0.0.1:8080', policy_file: live.yaml, reload_wait: 1s}\n",
        )
    )
    assert both.proxy is not None and both.proxy.install_policy and both.proxy.reload_wait == 1


@pytest.mark.parametrize(
    ("head", "base", "key_path", "words"),
    [
        (
            "upstreams: [primary, canary]\nproxy: {url: 'http://127.0.0.1:8080'}\n",
            PROXY_ONLY,
            "proxy",
            "give proxy.policy_file",
        ),
        (
            "upstreams: [primary, canary]\nproxy: {url: 'http://127.0.0.1:8080'}\n",
            BASE + "  - {log: 'claimroute'}\n",
            "expect[1].log",
            "cannot see with your own proxy",
        ),
        (
            "upstreams: [primary, canary]\nproxy: {url: 'http://127.0.0.1:8080'}\n",
            BASE.replace(
                "expect:",
                "steps:\n  - {at: 50%, action: change_policy, policy: {version: 1}}\nexpect:",
            ),
            "steps[0].action",
            "change_policy needs proxy.policy_file",
        ),
        (
            "upstreams: [primary, canary]\nproxy: {url: 'http://127.0.0.1:8080', policy_file: x}\n",
            BASE,
            "proxy.policy_file",
            "no such file",
        ),
    ],
)
def test_what_your_own_proxy_cannot_do_is_a_load_error(
    tmp_path: Path, head: str, base: str, key_path: str, words: str
) -> None:
    with pytest.raises(PolicyError) as info:
        load_scenario(scenario_file(tmp_path, head, base))
    assert info.value.key_path == key_path, str(info.value)
    assert words in info.value.reason


# -- who answered ----------------------------------------------------------------------------

BY_HEADER = ServedBy("x-version", None, {"v1": "primary", "v2": "canary"})
BY_JSON = ServedBy(None, ("build", "version"), None)


def test_served_by_reads_a_header_or_a_json_field_before_x_upstream() -> None:
    assert served_word({"x-version": "v2"}, "text/plain", b"", BY_HEADER) == ("v2", "canary")
    # A value served_by does not map names nobody (the decision log may decide).
    assert served_word({"x-version": "v3"}, "text/plain", b"", BY_HEADER) == ("v3", None)
    body = json.dumps({"build": {"version": "canary"}}).encode()
    assert served_word({}, "application/json", body, BY_JSON) == ("canary", "canary")
    assert served_word({}, "application/json", b'{"build": {}}', BY_JSON) == (None, None)
    assert served_word({}, "application/json", b"not json", BY_JSON) == (None, None)
    # Echo upstreams keep saying their name, whatever served_by says.
    assert served_word({"x-upstream": "primary"}, "text/plain", b"", BY_HEADER)[1] == "primary"
    echo = json.dumps({"upstream": "canary"}).encode()
    assert served_word({}, "application/json", echo, None) == ("canary", "canary")
    assert served_word({}, "text/plain", b"refused", None) == (None, None)


def result(index: int, answered_by: str | None = None) -> RequestResult:
    return RequestResult(
        index, 0, "pop", 0, "GET", "/x", None, 100.0, ended=100.01, answered_by=answered_by
    )


def decision(index: int, **fields: object) -> dict[str, object]:
    return {"ts": 100.005, "method": "GET", "url": "http://127.0.0.1:8000/x", "sub": "ann",
            "request_id": str(index), **fields}  # fmt: skip


URLS = {"http://127.0.0.1:8000": "primary", "http://127.0.0.1:8001": "canary"}


def test_the_decision_log_decides_only_for_url_upstreams_whose_answer_said_nothing() -> None:
    results = [result(i) for i in range(6)]
    results[0].answered_by = "primary"  # said so itself: its word counts
    decisions = [
        decision(0, outcome="allowed", route="r", upstream="http://127.0.0.1:8001"),
        decision(1, outcome="allowed", route="r", upstream="http://localhost:8001/"),
        decision(2, outcome="allowed"),  # no route: went where it was addressed (primary)
        decision(3, outcome="denied", status=401),
        decision(4, outcome="allowed", route="r", upstream="http://10.0.0.9:80"),
        # request 5 has no decision at all
    ]
    users = [SimpleNamespace(sub="ann")]
    assert attribute_routes(results, users, decisions, URLS, unseen=("canary",)) == 5
    assert [r.decided for r in results] == [
        "canary", "canary", "primary", None, "http://10.0.0.9:80", None,
    ]  # fmt: skip
    assert [r.source for r in results] == [  # request 0: its word wins, the log said canary
        "upstream, decision log disagrees", "decision log", "none", "none", "none", "none",
    ]  # fmt: skip
    assert [r.upstream for r in results] == [
        "primary", "canary", "none", "none", "none", "none",
    ]  # fmt: skip
    # Echo scenarios (nothing unseen) never take the log's word for who served a request.
    again = [result(1)]
    attribute_routes(again, users, decisions[1:2], URLS)
    assert (again[0].decided, again[0].upstream, again[0].source) == ("canary", "none", "none")


def test_url_key_matches_the_forms_a_policy_and_the_log_write() -> None:
    assert url_key("http://localhost:8001/") == url_key("http://127.0.0.1:8001")
    assert url_key("http://example.test") == ("http", "example.test", 80)
    assert url_key("https://Example.test") == ("https", "example.test", 443)
    assert url_key("not a url") is None


def test_upstream_none_with_unseen_upstreams_says_how_it_was_judged() -> None:
    refused, routed = result(0), result(1)
    refused.status, routed.status = 401, 502
    refused.logged = True  # its decision-log record: refused, sent nowhere
    routed.decided, routed.decision_counts = "canary", True  # the proxy sent it there
    routed.logged = True
    expectation = Expectation("{upstream: none}", 3, "outcome", upstream="none")
    outcome = _check_outcome(expectation, [refused, routed], ("canary",))
    assert not outcome.passed and outcome.value == 0.5
    assert "records of canary not visible: judged from the proxy's answer and decision log" in (
        outcome.observed
    )
    assert "1 attributed by the decision log" in outcome.observed


def test_upstream_none_fails_for_answers_of_unknown_origin() -> None:
    # Url upstreams that do not name themselves, and no decision-log record joined (no log, a
    # log the proxy does not write, a failed join): a 200 from the service must not count as
    # "no upstream saw it" (before: it passed, "judged from the proxy's answer and decision
    # log" although there was no log).
    expectation = Expectation("{users: u, upstream: none}", 9, "outcome", upstream="none")
    served = [result(i) for i in range(10)]
    for r in served:
        r.status = 200
    outcome = _check_outcome(expectation, served, ("primary", "canary"))
    assert not outcome.passed and outcome.value == 0.0
    assert "the rest: unknown/200 (10)" in outcome.observed
    assert "10 of unknown origin" in outcome.observed
    assert "judged from the answers alone (no decision-log record)" in outcome.observed
    assert "decision log)" not in outcome.observed
    assert {r.source for r in served} == {"unknown"}
    # Echo upstreams only (nothing unseen): their records say nobody saw it.
    assert _check_outcome(expectation, served, ()).passed
    # A failed request (no answer) is not "unknown": nothing answered it.
    failed = result(10)
    failed.error = "TimeoutError: "
    assert _check_outcome(expectation, [failed], ("canary",)).passed


def test_the_log_and_the_upstream_disagreeing_and_undeclared_names_are_counted() -> None:
    results = [result(i) for i in range(4)]
    for r in results:
        r.status = 200
    results[0].answered_by = "primary"  # the log says canary: the word wins, counted
    results[1].answered_by = "primary"  # agrees
    results[2].answered_by = "staging"  # names no declared upstream
    decisions = [
        decision(0, outcome="allowed", route="r", upstream="http://127.0.0.1:8001"),
        decision(1, outcome="allowed", route="r", upstream="http://127.0.0.1:8000"),
        decision(2, outcome="allowed", route="r", upstream="http://127.0.0.1:8001"),
    ]
    users = [SimpleNamespace(sub="ann")]
    attribute_routes(results, users, decisions, URLS, unseen=("primary", "canary"))
    assert [r.source for r in results] == [
        "upstream, decision log disagrees", "upstream", "decision log", "unknown",
    ]  # fmt: skip
    assert results[0].upstream == "primary" and results[0].disagrees
    # "staging" is not credited; the log decides for it (a url upstream), the name is kept.
    assert results[2].upstream == "canary" and results[2].undeclared == "staging"
    # Without a log record, an undeclared name is counted as such, and serves nobody.
    alone = [result(0)]
    alone[0].status, alone[0].answered_by = 200, "staging"
    attribute_routes(alone, users, [], URLS, unseen=("primary", "canary"))
    assert (alone[0].source, alone[0].upstream) == ("undeclared name", "none")


def test_two_upstreams_at_one_address_are_a_load_error(tmp_path: Path) -> None:
    # The decision log names an upstream by address: with two at one, every request would be
    # credited to the last (before: loaded fine, the report said 100% canary).
    error = error_for(
        tmp_path,
        """        upstreams:
          primary: {url: "http://127.0.0.1:8000"}
          canary: {url: "http://localhost:8000/"}
        """,
    )
    assert (error.key_path, error.line) == ("upstreams.canary.url", 3), str(error)
    assert "same address as upstream 'primary'" in error.reason
    listed = error_for(
        tmp_path,
        """        upstreams:
          - {name: primary, url: "https://example.test"}
          - {name: canary, url: "https://EXAMPLE.test:443"}
        """,
    )
    assert (listed.key_path, listed.line) == ("upstreams[1].url", 3), str(listed)
    # Another port is another upstream.
    load_scenario(
        scenario_file(
            tmp_path,
            "upstreams: {primary: {url: 'http://127.0.0.1:8000'}, "
            "canary: {url: 'http://127.0.0.1:8001'}}\n",
        )
    )


@pytest.mark.parametrize(
    "metrics", ["http://admin:hunter2@127.0.0.1:9090/metrics", "http://admin@127.0.0.1:9/m"]
)
def test_credentials_in_the_metrics_url_are_a_load_error(tmp_path: Path, metrics: str) -> None:
    error = error_for(
        tmp_path,
        f"upstreams: [primary, canary]\nproxy: {{url: 'http://127.0.0.1:8080', metrics: '{metrics}'}}\n",
    )
    assert (error.key_path, error.line) == ("proxy.metrics", 2), str(error)
    assert "no credentials in the metrics URL" in error.reason
    assert "hunter2" not in str(error)


def test_a_token_endpoints_words_are_bounded_and_never_show_a_secret() -> None:
    # The endpoint echoes the form it got (URL-encoded) and the raw value.
    form = urlencode({"client_secret": "s3cr+t!?"})  # client_secret=s3cr%2Bt%21%3F
    echoed = f"bad {form} for s3cr+t!? \x1b[31m" + "x" * 500
    shown = _bounded(echoed, 200, ["s3cr+t!?", "pw"])
    assert "s3cr" not in shown and shown.count(REDACTED) == 2
    assert "\x1b" not in shown and "\\x1b" in shown  # escaped, not sent to the terminal
    assert len(shown) == 200


def test_reading_your_own_decision_log_skips_older_lines(tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    log.write_text(json.dumps({"ts": 1.0, "route": "old"}) + "\n")
    offset = log.stat().st_size
    with log.open("a") as file:
        file.write("garbage\n" + json.dumps({"ts": 100.0, "route": "new"}) + "\n")
    assert [d["route"] for d in read_decisions(log)] == ["old", "new"]
    assert [d["route"] for d in read_decisions(log, since=offset)] == ["new"]
    # Rotated (now shorter than the offset): read whole, but only from the run's start.
    log.write_text(json.dumps({"ts": 2.0, "route": "old"}) + "\n")
    assert [d["route"] for d in read_decisions(log, since=offset, not_before=50.0)] == []
    assert read_decisions(tmp_path / "missing.jsonl") == []


# -- misbehaving echo upstreams --------------------------------------------------------------


async def _hit(echo: EchoUpstream, count: int) -> list[tuple[int, str | None]]:
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> tuple[int, str | None]:
            headers = {REQUEST_ID_HEADER: str(i)}
            async with session.get(f"{echo.url}/x", headers=headers) as response:
                await response.read()
                return response.status, response.headers.get("x-upstream")

        return await asyncio.gather(*(one(i) for i in range(count)))


async def test_a_misbehaving_echo_fails_a_seeded_share_and_still_says_who_it_is() -> None:
    bad = Misbehaviour(error_rate=0.2, error_status=503)
    async with EchoUpstream("canary", misbehave=bad, seed=7) as first:
        answers = await _hit(first, 400)
    failed = [i for i, (status, _) in enumerate(answers) if status == 503]
    assert 40 <= len(failed) <= 120  # 20% of 400 is 80; a seeded draw, checked loosely
    assert {status for status, _ in answers} == {200, 503}
    assert all(name == "canary" for _, name in answers)  # errors still say who answered
    assert len(first.received) == 400 and first.errors == len(failed)  # and are recorded
    # The same seed fails the same requests, whatever order they arrive in.
    async with EchoUpstream("canary", misbehave=bad, seed=7) as second:
        again = await _hit(second, 400)
    assert [i for i, (s, _) in enumerate(again) if s == 503] == failed
    async with EchoUpstream("canary", misbehave=bad, seed=8) as other:
        different = await _hit(other, 400)
    assert [i for i, (s, _) in enumerate(different) if s == 503] != failed


async def test_a_slow_echo_is_at_least_as_slow_as_configured() -> None:
    # A lower bound only (sleeping never ends early); how much slower is not asserted.
    slow = Misbehaviour(latency_ms=60, jitter_ms=20)
    async with EchoUpstream("canary", misbehave=slow) as echo, aiohttp.ClientSession() as session:
        for i in range(5):
            started = time.perf_counter()
            async with session.get(echo.url, headers={REQUEST_ID_HEADER: str(i)}) as response:
                assert response.status == 200
            assert time.perf_counter() - started >= 0.035
    with pytest.raises(ValueError, match="error_rate"):
        Misbehaviour(error_rate=1.5)


# -- probes: errors before any traffic -------------------------------------------------------

EXTERNAL = """\
upstreams:
  primary: {{url: "{primary}"}}
  canary: {{url: "{canary}"}}
served_by: {{header: x-version, values: {{v1: primary, v2: canary}}}}
"""


def run_cli(path: Path, tmp_path: Path) -> int:
    return cli.main([str(path), "--out", str(tmp_path / "out"), "--no-progress"])


def test_an_upstream_naming_another_is_exit_2_before_any_traffic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serving(Service("v1"), Service("v1")) as (primary, canary):
        head = EXTERNAL.format(primary=primary.url, canary=canary.url)  # canary runs v1 too
        code = run_cli(scenario_file(tmp_path, head), tmp_path)
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert code == 2, err
    assert "scenario.yaml:3: upstreams.canary:" in err
    assert "answered with header x-version: v1, which names primary" in err
    assert (primary.probes, canary.probes) == (1, 1)
    assert (primary.requests, canary.requests) == (0, 0)  # no traffic
    assert not (tmp_path / "out" / "report.json").exists()


def test_an_unreachable_upstream_is_exit_3_before_any_traffic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serving(Service("v1")) as (primary,):
        dead = f"http://127.0.0.1:{closed_port()}"
        code = run_cli(
            scenario_file(tmp_path, EXTERNAL.format(primary=primary.url, canary=dead)), tmp_path
        )
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert code == 3, err
    assert f"upstream canary ({dead}) does not answer" in err
    assert primary.requests == 0


def test_an_unreachable_proxy_is_exit_3_before_any_traffic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy = f"http://127.0.0.1:{closed_port()}"
    with serving(Service("v1"), Service("v2")) as (primary, canary):
        head = (
            EXTERNAL.format(primary=primary.url, canary=canary.url) + f"proxy: {{url: '{proxy}'}}\n"
        )
        code = run_cli(scenario_file(tmp_path, head), tmp_path)
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert code == 3, err
    assert f"the proxy at {proxy} does not answer" in err
    assert (primary.requests, canary.requests) == (0, 0)


def test_your_proxy_without_a_decision_log_is_exit_2_when_an_upstream_cannot_say(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without the log, every answer of the silent canary would look like nobody's: refused
    # before any traffic (and before the proxy is even asked: its port is closed here).
    proxy = f"http://127.0.0.1:{closed_port()}"
    with serving(Service("v1"), Service("v2", says="nothing")) as (primary, canary):
        head = EXTERNAL.format(primary=primary.url, canary=canary.url)
        code = run_cli(scenario_file(tmp_path, head + f"proxy: {{url: '{proxy}'}}\n"), tmp_path)
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert code == 2, err
    assert "scenario.yaml:5: proxy: give proxy.decision_log" in err
    assert "the answers of canary do not say who served them" in err
    assert (primary.requests, canary.requests) == (0, 0)
    # Upstreams that say who they are need no log.
    with serving(Service("v1"), Service("v2")) as (primary, canary):
        head = EXTERNAL.format(primary=primary.url, canary=canary.url)
        code = run_cli(scenario_file(tmp_path, head + f"proxy: {{url: '{proxy}'}}\n"), tmp_path)
    assert code == 3  # on to the proxy, which does not answer


async def test_probe_results_tell_which_upstreams_say_who_they_are(tmp_path: Path) -> None:
    with serving(Service("v1"), Service("v2", says="nothing")) as (primary, canary):
        scenario = load_scenario(
            scenario_file(tmp_path, EXTERNAL.format(primary=primary.url, canary=canary.url))
        )
        world = World(scenario, tmp_path / "run")
        probes = await probe_upstreams(
            scenario.upstream_specs, world.upstream_urls(), scenario.served_by
        )
    assert probes["primary"].self_naming and probes["primary"].said == "v1"
    assert not probes["canary"].self_naming and probes["canary"].said is None
    world.probes = probes
    notes = world.attribution_notes()
    assert notes["primary"].startswith("its own answer (header x-version: v1)")
    assert notes["canary"].startswith("its answers do not say who it is: the decision log decides")


# -- the JSON schema agrees with the loader ---------------------------------------------------

SCHEMA_VALID = {
    "mapping form": "upstreams: {primary: {echo: {latency_ms: 5}}, canary: {url: 'http://127.0.0.1:9'}}\n",
    "list form, echo": "upstreams: [primary, {name: canary, echo: {error_rate: 5%}}]\n",
    "served_by json": "upstreams: {primary: {url: 'http://127.0.0.1:9'}, canary: null}\n"
    "served_by: {json: build.version}\n",
    "proxy": "upstreams: [primary, canary]\nproxy: {url: 'http://127.0.0.1:8080', reload_wait: 2s}\n",
}
SCHEMA_INVALID = {
    "echo and url": "upstreams: {primary: {url: 'http://127.0.0.1:9', echo: {}}, canary: {}}\n",
    "served_by header and json": "upstreams: {primary: {url: 'http://127.0.0.1:9'}, canary: {}}\n"
    "served_by: {header: x-version, json: version}\n",
    "unknown echo knob": "upstreams: [primary, {name: canary, echo: {latency: 5}}]\n",
    "proxy without url": "upstreams: [primary, canary]\nproxy: {decision_log: d.jsonl}\n",
    "upstream none": "upstreams: {primary: {}, none: {}}\n",
}


@pytest.mark.parametrize("name", sorted(SCHEMA_VALID))
def test_schema_accepts_what_the_loader_accepts(name: str, tmp_path: Path) -> None:
    path = scenario_file(tmp_path, SCHEMA_VALID[name])
    load_scenario(path)
    document, _ = load_yaml_file(path)
    errors = [e.message for e in SCENARIO_SCHEMA.iter_errors(document)]
    assert not errors


@pytest.mark.parametrize("name", sorted(SCHEMA_INVALID))
def test_schema_refuses_what_the_loader_refuses(name: str, tmp_path: Path) -> None:
    path = scenario_file(tmp_path, SCHEMA_INVALID[name])
    with pytest.raises(PolicyError):
        load_scenario(path)
    document, _ = load_yaml_file(path)
    assert not SCENARIO_SCHEMA.is_valid(document)
