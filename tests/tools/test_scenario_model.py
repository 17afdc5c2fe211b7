"""Scenario files: validation errors (file, key path, line), substitution, the request plan.

Nothing here starts mitmdump; the CLI tests stop before it (exit code 2) or replace it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from claimroute.config.source import parse_yaml_text
from claimroute.errors import PolicyError
from claimroute_tools.scenario import cli
from claimroute_tools.scenario.model import (
    IssuerSpec,
    RequestKind,
    load_scenario,
    reference_names,
    substitute,
)
from claimroute_tools.scenario.traffic import build_users, plan_requests

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
LIBRARY = sorted(p.stem for p in SCENARIOS.glob("*.yaml"))

VALID = """\
version: 1
name: small
issuers:
  corp: {alg: ES256}
  kube: {alg: RS256, serve: file, issuer: kubernetes/serviceaccount}
upstreams: [primary, canary]
policy:
  version: 1
  providers:
    corp:
      issuer: "${issuers.corp.issuer}"
      jwks: {url: "${issuers.corp.jwks_url}"}
  routes:
    - name: employees
      match: {claims: {org: solo.io}}
      upstream: "${upstreams.canary.url}"
users:
  - {name: employees, count: 3, issuer: corp, claims: {org: solo.io}}
  - {name: anonymous, count: 2, token: none}
traffic:
  requests: 20
steps:
  - {at: 50%, action: rotate_keys, issuer: corp}
expect:
  - {users: employees, upstream: canary, status: 200}
  - {users: anonymous, status: 401, upstream: none, after_step: rotate_keys}
"""


def write(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_for(tmp_path: Path, text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_scenario(write(tmp_path, text))
    return info.value


def test_valid_scenario_loads(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, VALID))
    assert scenario.name == "small"
    assert scenario.upstreams == ("primary", "canary")
    assert scenario.issuers["kube"] == IssuerSpec(
        "kube", "RS256", "file", "kubernetes/serviceaccount", None
    )
    assert [p.name for p in scenario.users] == ["employees", "anonymous"]
    assert scenario.users[1].anonymous and scenario.users[1].issuer is None
    assert scenario.traffic.mix == (RequestKind("GET", "/", 1),)
    (step,) = scenario.steps
    assert (step.name, step.at, step.index(20), step.remint) == ("rotate_keys", 0.5, 10, True)
    first, second = scenario.expectations
    assert first.kind == "outcome" and first.upstream == "canary" and first.status == (200,)
    assert first.line == 25 and second.after_step == "rotate_keys"


@pytest.mark.parametrize("name", LIBRARY)
def test_library_scenarios_load(name: str) -> None:
    scenario = load_scenario(SCENARIOS / f"{name}.yaml")
    assert scenario.name == name
    assert scenario.expectations


def test_overrides_keep_the_rest(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, VALID))
    changed = scenario.with_overrides(requests=7, seed=9)
    assert (changed.traffic.requests, changed.traffic.seed) == (7, 9)
    assert changed.traffic.concurrency == scenario.traffic.concurrency
    assert changed.users == scenario.users


BAD = [
    ("  requests: 20", "  requests: 20\n  rps: 5", "traffic.rps", 22, "unknown key 'rps'"),
    ("  requests: 20", "  requests: -1", "traffic.requests", 21, "at least 1"),
    (
        "count: 3, issuer: corp,",
        "count: 3, issuer: corpp,",
        "users[0].issuer",
        18,
        "unknown issuer 'corpp'",
    ),
    (
        "{name: anonymous, count: 2, token: none}",
        "{name: anonymous, count: 2, token: none, tamper: expired}",
        "users[1].tamper",
        19,
        "anonymous population",
    ),
    (
        "issuer: corp, claims",
        "issuer: corp, tamper: forged, claims",
        "users[0].tamper",
        18,
        "must be one of expired",
    ),
    ("- {name: anonymous", "- {name: employees", "users[1].name", 19, "declared twice"),
    ("at: 50%", "at: 150%", "steps[0].at", 23, "between 0% and 100%"),
    ("at: 50%", "at: soon", "steps[0].at", 23, "such as 50%"),
    ("action: rotate_keys", "action: explode", "steps[0].action", 23, "must be one of"),
    (
        "{users: employees, upstream: canary, status: 200}",
        "{users: staff, upstream: canary, status: 200}",
        "expect[0].users",
        25,
        "unknown population 'staff'",
    ),
    (
        "{users: employees, upstream: canary, status: 200}",
        "{users: employees, upstream: blue}",
        "expect[0].upstream",
        25,
        "unknown upstream",
    ),
    (
        "{users: employees, upstream: canary, status: 200}",
        "{users: employees, upstream: canary, share: 0.5}",
        "expect[0]",
        25,
        "needs a tolerance",
    ),
    (
        "{users: employees, upstream: canary, status: 200}",
        "{users: employees}",
        "expect[0]",
        25,
        "needs upstream and/or status",
    ),
    (
        "{users: employees, upstream: canary, status: 200}",
        "{route: nowhere, upstream: canary}",
        "expect[0].route",
        25,
        "no policy of this scenario has a route 'nowhere'",
    ),
    (
        "{users: employees, upstream: canary, status: 200}",
        "{sticky: true, upstream: canary}",
        "expect[0].upstream",
        25,
        "unknown key 'upstream'",
    ),
    (
        "{users: employees, upstream: canary, status: 200}",
        "{formula: true}",
        "expect[0]",
        25,
        "needs a `route:`",
    ),
    (
        "after_step: rotate_keys",
        "after_step: rotate",
        "expect[1].after_step",
        26,
        "no step is called 'rotate'",
    ),
    (
        "{users: employees, upstream: canary, status: 200}",
        "{log: '(unclosed'}",
        "expect[0].log",
        25,
        "invalid regular expression",
    ),
    ("corp: {alg: ES256}", "corp: {alg: HS256}", "issuers.corp.serve", 4, "never served over HTTP"),
    ("corp: {alg: ES256}", "corp: {alg: XS256}", "issuers.corp.alg", 4, "must be one of"),
    ("upstreams: [primary, canary]", "upstreams: [primary, none]", "upstreams[1]", 6, "reserved"),
    ("version: 1\nname", "version: 2\nname", "version", 1, "unsupported scenario version"),
]


@pytest.mark.parametrize(("old", "new", "key_path", "line", "words"), BAD)
def test_bad_scenario_names_key_path_and_line(
    tmp_path: Path, old: str, new: str, key_path: str, line: int, words: str
) -> None:
    assert old in VALID
    exc = error_for(tmp_path, VALID.replace(old, new, 1))
    assert exc.key_path == key_path
    assert exc.line == line
    assert words in str(exc)
    assert str(exc).startswith(f"{tmp_path / 'scenario.yaml'}:{line}: {key_path}: ")


def test_missing_sections(tmp_path: Path) -> None:
    exc = error_for(tmp_path, "version: 1\nissuers: {corp: {}}\n")
    assert exc.key_path == "" and "missing required key 'upstreams'" in str(exc)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    exc = error_for(tmp_path, VALID.replace("  requests: 20", "  requests: [20"))
    assert exc.line is not None and "invalid YAML" in str(exc)


def test_unknown_reference_is_named(tmp_path: Path) -> None:
    exc = error_for(tmp_path, VALID.replace("${issuers.corp.jwks_url}", "${issuers.corp.jwks}"))
    assert exc.key_path == "policy.providers.corp.jwks.url"
    assert exc.line == 12
    assert "unknown reference ${issuers.corp.jwks}" in str(exc)
    assert "${issuers.corp.jwks_url}" in str(exc)  # the known ones are listed


def test_reference_of_the_wrong_serve_mode_gets_a_hint(tmp_path: Path) -> None:
    text = VALID.replace("${issuers.corp.jwks_url}", "${issuers.kube.jwks_url}")
    exc = error_for(tmp_path, text)
    assert "unknown reference ${issuers.kube.jwks_url}" in str(exc)
    assert "serve: file; use jwks_file" in str(exc)


FILE_POLICY = """\
version: 1
issuers: {corp: {alg: ES256}}
upstreams: [primary]
policy_file: policies/p.yaml
users: [{name: u, issuer: corp}]
traffic: {requests: 5}
expect: [{users: u, status: 200}]
"""


def test_errors_in_a_policy_file_point_at_that_file(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(
        "version: 1\nproviders:\n  corp:\n    issuer: x\n    jwks: {url: '${upstream.x.url}'}\n"
    )
    exc = error_for(tmp_path, FILE_POLICY)
    assert exc.file == str((policies / "p.yaml").resolve())
    assert (exc.key_path, exc.line) == ("providers.corp.jwks.url", 5)
    assert "unknown reference ${upstream.x.url}" in str(exc)


def test_missing_policy_file(tmp_path: Path) -> None:
    exc = error_for(tmp_path, FILE_POLICY)
    assert (exc.key_path, exc.line) == ("policy_file", 4)
    assert "no such file" in str(exc)


def test_policy_and_policy_file_are_exclusive(tmp_path: Path) -> None:
    exc = error_for(tmp_path, FILE_POLICY + "policy: {version: 1}\n")
    assert "exactly one of policy (inline) or policy_file" in str(exc)


def test_same_action_twice_needs_names(tmp_path: Path) -> None:
    text = VALID.replace(
        "  - {at: 50%, action: rotate_keys, issuer: corp}",
        "  - {at: 50%, action: rotate_keys, issuer: corp}\n"
        "  - {at: 60%, action: rotate_keys, issuer: corp}",
    )
    exc = error_for(tmp_path, text)
    assert exc.key_path == "steps[1].name" and "already used" in str(exc)


def test_http_only_steps_refuse_file_issuers(tmp_path: Path) -> None:
    text = VALID.replace("action: rotate_keys, issuer: corp", "action: stop_jwks, issuer: kube")
    exc = error_for(tmp_path, text.replace("after_step: rotate_keys", "after_step: stop_jwks"))
    assert exc.key_path == "steps[0].issuer" and "serve: http" in str(exc)


# -- substitution ------------------------------------------------------------------------------


def test_substitute_replaces_everywhere_but_keys() -> None:
    document, loc = parse_yaml_text(
        "a: ${x.y}\nb: ['pre-${x.y}-post', 3]\n'${x.y}': {c: '$${literal}'}\n", "p.yaml"
    )
    out = substitute(document, loc, {"x.y": "V"})
    assert out == {"a": "V", "b": ["pre-V-post", 3], "${x.y}": {"c": "${literal}"}}


def test_substitute_errors_carry_key_path_and_line() -> None:
    document, loc = parse_yaml_text("a:\n  b: [ok, '${nope}']\n", "p.yaml")
    with pytest.raises(PolicyError) as info:
        substitute(document, loc, {"x": "1"})
    assert (info.value.key_path, info.value.line) == ("a.b[1]", 2)
    assert "unknown reference ${nope}; known: ${x}" in str(info.value)
    document, loc = parse_yaml_text("a: '${open'\n", "p.yaml")
    with pytest.raises(PolicyError, match="unterminated reference"):
        substitute(document, loc, {})


def test_reference_names_follow_serve_mode(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, VALID))
    assert reference_names(scenario.issuers, scenario.upstreams) == [
        "issuers.corp.issuer",
        "issuers.corp.jwks_url",
        "issuers.kube.issuer",
        "issuers.kube.jwks_file",
        "upstreams.primary.url",
        "upstreams.canary.url",
    ]


# -- users and the plan ------------------------------------------------------------------------


def test_users_fill_templates(tmp_path: Path) -> None:
    text = VALID.replace(
        "claims: {org: solo.io}}", 'sub: "sa:{name}:{i}", claims: {org: solo.io, mail: "{sub}@x"}}'
    )
    users = build_users(load_scenario(write(tmp_path, text)).users)
    assert [u.sub for u in users] == [
        "sa:employees:1",
        "sa:employees:2",
        "sa:employees:3",
        None,
        None,
    ]
    assert users[1].claims == {"org": "solo.io", "mail": "sa:employees:2@x"}
    assert users[3].label == "anonymous#1"


def test_plan_is_deterministic_and_spread_in_rounds(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, VALID))
    users = build_users(scenario.users)
    mix = (RequestKind("GET", "/a", 3), RequestKind("POST", "/b", 1))
    plan = plan_requests(users, mix, 23, seed=4)
    assert plan == plan_requests(users, mix, 23, seed=4)
    assert plan != plan_requests(users, mix, 23, seed=5)
    for start in range(0, 20, 5):  # every round uses every user exactly once
        assert sorted(p.user for p in plan[start : start + 5]) == [0, 1, 2, 3, 4]
    assert {(p.method, p.path) for p in plan} == {("GET", "/a"), ("POST", "/b")}
    assert [p.index for p in plan] == list(range(23))


# -- the command line before mitmdump ------------------------------------------------------------


def test_cli_bad_scenario_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, VALID.replace("count: 3,", "count: three,"))
    assert cli.main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "invalid scenario" in err
    assert f"{path}:18: users[0].count: expected an integer" in " ".join(err.split())


def test_cli_unknown_name_lists_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["no-such-scenario"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no scenario file" in err and "employees-and-sticky-canary" in err


def test_cli_resolves_names_to_the_library() -> None:
    assert cli.resolve("hostile-mix") == SCENARIOS / "hostile-mix.yaml"
    assert cli.resolve("x/y.yaml") == Path("x/y.yaml")


def test_cli_policy_that_fails_once_substituted_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Valid YAML and references, but the policy itself is wrong: found while rendering it,
    # before mitmdump starts, and reported at the scenario's own line.
    text = VALID.replace("      jwks: {url: ", "      audiences: []\n      jwks: {url: ")
    path = write(tmp_path, text)
    assert cli.main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{path}:12: policy.providers.corp.audiences: must not be an empty list" in err


def test_public_key_tamper_needs_an_issuer_with_a_public_key(tmp_path: Path) -> None:
    text = VALID.replace("kube: {alg: RS256,", "kube: {alg: HS256,").replace(
        "  - {name: anonymous, count: 2, token: none}",
        "  - {name: anonymous, count: 2, token: none}\n"
        "  - {name: forger, issuer: kube, tamper: hs256_public_key}",
    )
    exc = error_for(tmp_path, text)
    assert exc.key_path == "users[2].tamper"
    assert "'kube' (HS256) has none" in str(exc)


def test_overrides_keep_the_files_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = load_scenario(write(tmp_path, VALID))
    for overrides in ({"requests": 1_000_001}, {"concurrency": 513}, {"requests": 0}):
        with pytest.raises(ValueError, match="must be between 1 and"):
            scenario.with_overrides(**overrides)
    path = write(tmp_path, VALID)
    for flag, value in (("--requests", "1000000000"), ("--concurrency", "513")):
        with pytest.raises(SystemExit) as info:  # argparse: usage error, exit 2
            cli.main([str(path), flag, value])
        assert info.value.code == 2
        assert "must be between 1 and" in capsys.readouterr().err
