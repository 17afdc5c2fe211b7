"""The JSON Schemas in schemas/ (for editors) against the loaders, which remain the truth.

1. Both schemas are valid draft 2020-12 schemas.
2. Every policy and scenario in the repository validates (and loads).
3. A corpus of invalid files: the loader refuses each one AND the schema refuses it too, so an
   editor flags, as it is typed, what mitmdump or the scenario runner would refuse later.
4. A few valid but unusual files that both accept.

Files are parsed with claimroute's own YAML reader (`source.parse_yaml_text`), so the schema
sees exactly the values the loaders see.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from claimroute.config.source import parse_yaml_text
from claimroute.errors import PolicyError
from claimroute.policy.load import load_policy, parse_policy
from claimroute_tools.lab import TestIssuer
from claimroute_tools.scenario.model import Scenario, load_scenario, substitute

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
POLICY_SCHEMA = json.loads((SCHEMAS / "policy.schema.json").read_text())
SCENARIO_SCHEMA = json.loads((SCHEMAS / "scenario.schema.json").read_text())
# The scenario schema refers to its sibling file as `policy.schema.json` (as an editor resolves it).
REGISTRY = Registry().with_resource("policy.schema.json", Resource.from_contents(POLICY_SCHEMA))
POLICY = Draft202012Validator(POLICY_SCHEMA, registry=REGISTRY)
SCENARIO = Draft202012Validator(SCENARIO_SCHEMA, registry=REGISTRY)

# Every policy in the repository (cases files beside them are `claimroute test` tables).
POLICY_FILES = sorted(
    [*ROOT.glob("examples/**/policy*.yaml"), *ROOT.glob("scenarios/policies/*.yaml")]
)
SCENARIO_FILES = sorted(ROOT.glob("scenarios/*.yaml"))


def document(text: str, name: str = "<test>") -> Any:
    return parse_yaml_text(text, name)[0]


def schema_errors(validator: Draft202012Validator, doc: Any) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


@pytest.fixture(scope="session")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JWKS file for `${issuers.NAME.jwks_file}` when a scenario's policies are rendered."""
    path = tmp_path_factory.mktemp("keys") / "render.jwks.json"
    TestIssuer("render", "ES256").write_jwks(path)
    return path


def render_policies(scenario: Scenario, key_file: Path) -> None:
    """What the runner does before it starts anything: substitute `${...}` with real-looking
    values and validate every policy of the scenario with the addon's parser."""
    values: dict[str, str] = {}
    for name, spec in scenario.issuers.items():
        values[f"issuers.{name}.issuer"] = spec.issuer or f"https://{name}.test"
        values[f"issuers.{name}.jwks_url"] = f"http://127.0.0.1:9/{name}/jwks.json"
        values[f"issuers.{name}.jwks_file"] = str(key_file)
    for index, name in enumerate(scenario.upstreams):
        values[f"upstreams.{name}.url"] = f"http://127.0.0.1:{9100 + index}"
    sources = [scenario.policy, *(s.policy for s in scenario.steps if s.policy is not None)]
    for source in sources:
        rendered = substitute(source.document, source.loc, values, scenario.issuers)
        parse_policy(rendered, source.loc, base=source.base, fingerprint="-")


# -- 1. the schemas themselves ---------------------------------------------------------------


@pytest.mark.parametrize("schema", [POLICY_SCHEMA, SCENARIO_SCHEMA], ids=["policy", "scenario"])
def test_schema_is_valid_draft_2020_12(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


CONDITIONS = {"if", "then", "else", "oneOf", "anyOf", "allOf", "not", "contains"}


@pytest.mark.parametrize("schema", [POLICY_SCHEMA, SCENARIO_SCHEMA], ids=["policy", "scenario"])
def test_every_property_has_a_description(schema: dict[str, Any]) -> None:
    """Completion in an editor shows these; a property without one is a bare name.

    Properties under `if`/`then`/`oneOf`/... only restrict ones declared elsewhere."""
    missing: list[str] = []

    def visit(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                if isinstance(sub, dict) and "description" not in sub:
                    target = sub.get("$ref", "")
                    resolved = POLICY_SCHEMA if target == "policy.schema.json" else None
                    if target.startswith("#/$defs/"):
                        resolved = schema["$defs"][target.removeprefix("#/$defs/")]
                    if not (isinstance(resolved, dict) and "description" in resolved):
                        missing.append(f"{where}.{name}")
            for key, sub in node.items():
                if key not in CONDITIONS:  # restrictions there, declared elsewhere
                    visit(sub, f"{where}.{key}")
        elif isinstance(node, list):
            for index, sub in enumerate(node):
                visit(sub, f"{where}[{index}]")

    visit(schema, "$")
    assert not missing


# Editors run the YAML language server, which validates with draft-07 rules: keywords that only
# 2019-09/2020-12 validators know would be ignored there, so the schemas do without them.
NEWER_KEYWORDS = {
    "dependentRequired", "dependentSchemas", "unevaluatedProperties", "unevaluatedItems",
    "prefixItems", "$dynamicRef", "$dynamicAnchor", "$recursiveRef", "minContains", "maxContains",
}  # fmt: skip


@pytest.mark.parametrize("schema", [POLICY_SCHEMA, SCENARIO_SCHEMA], ids=["policy", "scenario"])
def test_no_keywords_an_editor_would_ignore(schema: dict[str, Any]) -> None:
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            found.update(NEWER_KEYWORDS & node.keys())
            for sub in node.values():
                visit(sub)
        elif isinstance(node, list):
            for sub in node:
                visit(sub)

    visit(schema)
    assert not found


# -- 2. every file in the repository ---------------------------------------------------------


def test_the_repository_has_files_to_check() -> None:
    assert len(POLICY_FILES) >= 6
    assert len(SCENARIO_FILES) >= 8


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_policy_files_validate(path: Path) -> None:
    assert schema_errors(POLICY, document(path.read_text(), str(path))) == []


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.name)
def test_scenario_files_validate(path: Path) -> None:
    doc = document(path.read_text(), str(path))
    assert schema_errors(SCENARIO, doc) == []
    # The inline policies (the scenario's own, and change_policy steps') on their own too.
    inline = [doc.get("policy"), *(step.get("policy") for step in doc.get("steps", []))]
    for policy in filter(None, inline):
        assert schema_errors(POLICY, policy) == []


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.name)
def test_scenario_files_load(path: Path, key_file: Path) -> None:
    """The same files through the loaders (the schema must not be the only one to like them)."""
    render_policies(load_scenario(path), key_file)


def test_quickstart_policy_loads(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    TestIssuer("local", "ES256").write_jwks(tmp_path / "keys" / "jwks.json")
    policy = tmp_path / "policy.yaml"
    policy.write_text((ROOT / "examples/quickstart/policy.yaml").read_text())
    load_policy(policy)


# -- 3. invalid files: the loader refuses them, and so does the schema ----------------------

URL = "'http://127.0.0.1:9/jwks.json'"
CORP = "corp: {issuer: https://corp.test, jwks: {url: " + URL + "}}"


def pol(*, providers: str | None = None, **sections: str) -> str:
    """A policy: one remote-key provider `corp` unless `providers` is given; each keyword is a
    top-level section, written after `key: `."""
    text = f"version: 1\nproviders: {providers if providers is not None else '{' + CORP + '}'}\n"
    return text + "".join(f"{key}: {value}\n" for key, value in sections.items())


def prov(fields: str, issuer: str = "https://corp.test") -> str:
    """The `providers` section with one provider `corp` made of `fields` (flow style)."""
    return f"{{corp: {{issuer: {issuer}, {fields}}}}}"


def remote(fields: str) -> str:
    """The provider `corp` with remote keys and `fields`."""
    return prov(f"jwks: {{url: {URL}}}, {fields}")


def jwks(fields: str) -> str:
    return prov(f"jwks: {{{fields}}}")


def route(fields: str) -> str:
    return f"[{{name: r, {fields}}}]"


def claims(matcher: str) -> str:
    return route(f"match: {{claims: {{org: {matcher}}}}}, upstream: http://127.0.0.1:9001")


def rbac_policy(fields: str) -> str:
    return f"{{policies: [{{name: p, {fields}}}]}}"


# (name, policy text)
INVALID_POLICIES: list[tuple[str, str]] = [
    ("unknown top-level key", pol(tenant="acme")),
    ("version 2", pol().replace("version: 1", "version: 2")),
    ("version true", pol().replace("version: 1", "version: true")),
    ("version as a string", pol().replace("version: 1", "version: '1'")),
    ("no providers", "version: 1\nroutes: []\n"),
    ("empty providers", pol(providers="{}")),
    ("provider is a list", pol(providers="{corp: [https://corp.test]}")),
    ("unknown provider key", pol(providers=remote("audience: api"))),
    ("provider without jwks", pol(providers="{corp: {issuer: https://corp.test}}")),
    ("provider without issuer", pol(providers=f"{{corp: {{jwks: {{url: {URL}}}}}}}")),
    ("empty issuer", pol(providers=prov(f"jwks: {{url: {URL}}}", issuer="''"))),
    ("empty audiences", pol(providers=remote("audiences: []"))),
    ("audiences as a string", pol(providers=remote("audiences: api"))),
    ("alg none", pol(providers=remote("algorithms: [none]"))),
    ("unknown algorithm", pol(providers=remote("algorithms: [RS1]"))),
    ("lower-case algorithm", pol(providers=remote("algorithms: [rs256]"))),
    ("empty algorithms", pol(providers=remote("algorithms: []"))),
    ("HS256 with a remote jwks", pol(providers=remote("algorithms: [HS256]"))),
    ("jwks with two sources", pol(providers=jwks(f"url: {URL}, file: keys.json"))),
    ("jwks with no source", pol(providers=jwks("discovery: false"))),
    ("jwks empty", pol(providers=jwks(""))),
    ("unknown jwks key", pol(providers=jwks(f"uri: {URL}"))),
    ("jwks url not http", pol(providers=jwks("url: 'ftp://idp/jwks.json'"))),
    ("discovery is a string", pol(providers=jwks("discovery: 'yes'"))),
    ("discovery with a non-URL issuer", pol(providers=prov("jwks: {discovery: true}", "corp"))),
    ("cache_duration with a file", pol(providers=jwks("file: keys.json, cache_duration: 5m"))),
    ("timeout with inline keys", pol(providers=jwks("inline: '{}', timeout: 5s"))),
    ("empty inline keys", pol(providers=jwks("inline: ''"))),
    ("inline keys as a list", pol(providers=jwks("inline: [a, b]"))),
    ("duration in words", pol(providers=jwks(f"url: {URL}, cache_duration: 5 minutes"))),
    ("duration with unknown unit", pol(providers=jwks(f"url: {URL}, cache_duration: 5w"))),
    ("cache_duration under 1s", pol(providers=jwks(f"url: {URL}, cache_duration: 0.5"))),
    ("timeout 0", pol(providers=jwks(f"url: {URL}, timeout: 0"))),
    ("timeout over 60s", pol(providers=jwks(f"url: {URL}, timeout: 90"))),
    ("negative clock_skew", pol(providers=remote("clock_skew: -1"))),
    ("duration as a boolean", pol(providers=remote("max_lifetime: true"))),
    ("keep_token as a string", pol(providers=remote("keep_token: 'no'"))),
    (
        "require_expiration as 0",
        pol(providers=remote("require_expiration: 0")),
    ),
    (
        "token_source with no location",
        pol(providers=remote("token_source: {}")),
    ),
    (
        "token_source with empty lists",
        pol(providers=remote("token_source: {headers: [], cookies: []}")),
    ),
    (
        "token header name with a space",
        pol(providers=remote("token_source: {headers: [{name: x token}]}")),
    ),
    (
        "unknown token header key",
        pol(providers=remote("token_source: {headers: [{name: x-t, scheme: Bearer}]}")),
    ),
    (
        "token_source query_params as a string",
        pol(providers=remote("token_source: {query_params: token}")),
    ),
    (
        "claim header is Host",
        pol(providers=remote("claims_to_headers: [{claim: sub, header: Host}]")),
    ),
    (
        "claim header is a pseudo-header",
        pol(providers=remote("claims_to_headers: [{claim: sub, header: ':authority'}]")),
    ),
    (
        "claims_to_headers without claim",
        pol(providers=remote("claims_to_headers: [{header: x-user}]")),
    ),
    (
        "claim path with an empty segment",
        pol(providers=remote("claims_to_headers: [{claim: a..b, header: x-a}]")),
    ),
    (
        "claim path as an empty list",
        pol(providers=remote("claims_to_headers: [{claim: [], header: x-a}]")),
    ),
    (
        "forward_payload_header is Content-Length",
        pol(providers=remote("forward_payload_header: Content-Length")),
    ),
    ("unknown validation mode", pol(validation="optional")),
    ("rbac as a list", pol(rbac="[]")),
    ("unknown rbac key", pol(rbac="{default: deny}")),
    ("unknown rbac mode", pol(rbac="{mode: audit}")),
    ("unknown default_action", pol(rbac="{default_action: maybe}")),
    ("rbac policy without action", pol(rbac="{policies: [{name: p}]}")),
    ("rbac policy without name", pol(rbac="{policies: [{action: allow}]}")),
    ("unknown rbac action", pol(rbac=rbac_policy("action: permit"))),
    ("empty principals", pol(rbac=rbac_policy("action: allow, principals: []"))),
    ("unknown principal key", pol(rbac=rbac_policy("action: allow, principals: [{issuer: corp}]"))),
    (
        "headers in permissions",
        pol(rbac=rbac_policy("action: deny, permissions: {headers: {a: b}}")),
    ),
    ("empty methods", pol(rbac=rbac_policy("action: deny, permissions: {methods: []}"))),
    ("methods as a string", pol(rbac=rbac_policy("action: deny, permissions: {methods: GET}"))),
    ("empty hosts", pol(rbac=rbac_policy("action: deny, permissions: {hosts: []}"))),
    ("a bare path", pol(rbac=rbac_policy("action: deny, permissions: {paths: [/admin]}"))),
    (
        "a path rule with two kinds",
        pol(rbac=rbac_policy("action: deny, permissions: {paths: [{exact: /a, prefix: /b}]}")),
    ),
    ("an empty path rule", pol(rbac=rbac_policy("action: deny, permissions: {paths: [{}]}"))),
    (
        "a prefix without a leading /",
        pol(rbac=rbac_policy("action: deny, permissions: {paths: [{prefix: admin}]}")),
    ),
    (
        "an empty path regex",
        pol(rbac=rbac_policy("action: deny, permissions: {paths: [{regex: ''}]}")),
    ),
    ("unknown matcher operator", pol(routes=claims("{equals: solo.io}"))),
    ("empty matcher", pol(routes=claims("{}"))),
    ("a bare list as matcher", pol(routes=claims("[solo.io, example.com]"))),
    ("empty one_of", pol(routes=claims("{one_of: []}"))),
    ("one_of with a mapping", pol(routes=claims("{one_of: [{a: 1}]}"))),
    ("present as a string", pol(routes=claims("{present: 'yes'}"))),
    ("gt with a string", pol(routes=claims("{gt: '5'}"))),
    ("prefix with a number", pol(routes=claims("{prefix: 5}"))),
    ("empty any_of", pol(routes=claims("{any_of: []}"))),
    ("not with an empty matcher", pol(routes=claims("{not: {}}"))),
    ("two operators, one unknown", pol(routes=claims("{prefix: solo, ends_with: .io}"))),
    (
        "claim key with a trailing dot",
        pol(routes=route("match: {claims: {'org.': x}}, upstream: http://h")),
    ),
    (
        "numeric comparison on a header",
        pol(routes=route("match: {headers: {x-n: {gt: 1}}}, upstream: http://h")),
    ),
    ("null header value", pol(routes=route("match: {headers: {x-n: null}}, upstream: http://h"))),
    (
        "header exact with a list",
        pol(routes=route("match: {headers: {x-n: {exact: [a]}}}, upstream: http://h")),
    ),
    (
        "invalid header name in a match",
        pol(routes=route("match: {headers: {'x n': a}}, upstream: http://h")),
    ),
    ("hosts in a route match", pol(routes=route("match: {hosts: [a.test]}, upstream: http://h"))),
    (
        "authenticated as a string",
        pol(routes=route("match: {authenticated: 'true'}, upstream: http://h")),
    ),
    ("route without name", pol(routes="[{upstream: 'http://127.0.0.1:9001'}]")),
    ("route with neither upstream nor split", pol(routes=route("preserve_host: true"))),
    (
        "route with upstream and split",
        pol(routes=route("upstream: http://a, split: {to: [{upstream: http://b, weight: 1}]}")),
    ),
    ("unknown route key", pol(routes=route("upstream: http://a, priority: 1"))),
    ("preserve_host as 1", pol(routes=route("upstream: http://a, preserve_host: 1"))),
    ("upstream with a path", pol(routes=route("upstream: 'http://127.0.0.1:9001/api'"))),
    ("upstream with a query", pol(routes=route("upstream: 'http://127.0.0.1:9001?a=1'"))),
    ("upstream with credentials", pol(routes=route("upstream: 'http://u@127.0.0.1:9001'"))),
    ("upstream not http", pol(routes=route("upstream: 'ftp://127.0.0.1'"))),
    ("upstream port out of range", pol(routes=route("upstream: 'http://127.0.0.1:99999'"))),
    ("upstream without a host", pol(routes=route("upstream: 'http://:80'"))),
    (
        "split weights add up to 0",
        pol(routes=route("split: {to: [{upstream: http://a, weight: 0}]}")),
    ),
    (
        "negative split weight",
        pol(
            routes=route(
                "split: {to: [{upstream: http://a, weight: -1}, {upstream: http://b, weight: 2}]}"
            )
        ),
    ),
    (
        "fractional split weight",
        pol(routes=route("split: {to: [{upstream: http://a, weight: 2.5}]}")),
    ),
    ("split target without weight", pol(routes=route("split: {to: [{upstream: http://a}]}"))),
    ("empty split targets", pol(routes=route("split: {to: []}"))),
    (
        "unknown split key",
        pol(routes=route("split: {seed: 1, to: [{upstream: http://a, weight: 1}]}")),
    ),
    (
        "split salt as a number",
        pol(routes=route("split: {salt: 7, to: [{upstream: http://a, weight: 1}]}")),
    ),
    (
        "split by an empty path",
        pol(routes=route("split: {by: '', to: [{upstream: http://a, weight: 1}]}")),
    ),
    ("routes as a mapping", pol(routes="{r: {upstream: 'http://a'}}")),
]

# has_word, splits by several claims, the cohort header and baggage
SPLIT_TO = "to: [{upstream: http://a, weight: 1}]"
INVALID_POLICIES += [
    ("has_word empty", pol(routes=claims("{has_word: ''}"))),
    ("has_word with a space", pol(routes=claims("{has_word: 'read admin'}"))),
    ("has_word a number", pol(routes=claims("{has_word: 3}"))),
    ("split by an empty list", pol(routes=route(f"split: {{by: [], {SPLIT_TO}}}"))),
    ("split by a claim twice", pol(routes=route(f"split: {{by: [sub, sub], {SPLIT_TO}}}"))),
    (
        "split by a bad path in a list",
        pol(routes=route(f"split: {{by: [sub, 'a..b'], {SPLIT_TO}}}")),
    ),
    ("fallback_by an empty path", pol(routes=route(f"split: {{fallback_by: '', {SPLIT_TO}}}"))),
    ("cohort_header not a name", pol(routes=route("upstream: http://a, cohort_header: 'x y'"))),
    ("cohort_header host", pol(routes=route("upstream: http://a, cohort_header: Host"))),
    ("cohort_header baggage", pol(routes=route("upstream: http://a, cohort_header: baggage"))),
    ("baggage as a string", pol(routes=route("upstream: http://a, baggage: 'yes'"))),
]

SCENARIO_POLICY = """
  version: 1
  providers:
    corp: {issuer: "${issuers.corp.issuer}", jwks: {url: "${issuers.corp.jwks_url}"}}
  routes:
    - {name: canary, upstream: "${upstreams.canary.url}"}"""

SCENARIO_SECTIONS = {
    "version": "1",
    "issuers": "{corp: {alg: ES256}}",
    "upstreams": "[primary, canary]",
    "policy": SCENARIO_POLICY,
    "users": "[{name: staff, count: 2, issuer: corp}, {name: guests, token: none}]",
    "traffic": "{requests: 10}",
    "steps": None,
    "expect": "[{users: staff, status: 200}]",
}


def scn(**sections: str | None) -> str:
    """A scenario: SCENARIO_SECTIONS with some replaced (None leaves a section out)."""
    merged = {**SCENARIO_SECTIONS, **sections}
    return "".join(f"{key}: {value}\n" for key, value in merged.items() if value is not None)


def step(fields: str) -> str:
    return f"[{{at: 50%, {fields}}}]"


def expect(fields: str) -> str:
    return f"[{{{fields}}}]"


# (name, scenario text); a scenario is refused by `load_scenario`, or (for its policies) by the
# runner's check before it starts anything (`render_policies`).
INVALID_SCENARIOS: list[tuple[str, str]] = [
    ("unknown top-level key", scn(owner="me")),
    ("version 2", scn(version="2")),
    ("missing expect", scn(expect=None)),
    ("empty expect", scn(expect="[]")),
    ("policy and policy_file", scn(policy_file="policies/x.yaml")),
    ("neither policy nor policy_file", scn(policy=None)),
    ("bad scenario name", scn(name="'-demo'")),
    ("description as a list", scn(description="[a]")),
    ("no issuers", scn(issuers="{}")),
    ("issuer name with a space", scn(issuers="{'my corp': {alg: ES256}}")),
    ("unknown issuer key", scn(issuers="{corp: {alg: ES256, kid: k1}}")),
    ("unknown issuer alg", scn(issuers="{corp: {alg: none}}")),
    ("issuer serve ftp", scn(issuers="{corp: {serve: ftp}}")),
    ("HS256 served over http", scn(issuers="{corp: {alg: HS256}}")),
    ("empty issuer audience list", scn(issuers="{corp: {audience: []}}")),
    ("no upstreams", scn(upstreams="[]")),
    ("upstream named none", scn(upstreams="[primary, none]")),
    ("upstream listed twice", scn(upstreams="[primary, canary, primary]")),
    ("bad upstream name", scn(upstreams="[primary, canary, 'a b']")),
    ("no users", scn(users="[]")),
    ("population without name", scn(users="[{count: 2, issuer: corp}]")),
    ("unknown population key", scn(users="[{name: staff, issuer: corp, role: admin}]")),
    ("population count 0", scn(users="[{name: staff, count: 0, issuer: corp}]")),
    ("population count too large", scn(users="[{name: staff, count: 200000, issuer: corp}]")),
    ("population without issuer or token", scn(users="[{name: staff}]")),
    ("anonymous population with issuer", scn(users="[{name: staff, token: none, issuer: corp}]")),
    ("anonymous population with claims", scn(users="[{name: staff, token: none, claims: {a: 1}}]")),
    ("token other than none", scn(users="[{name: staff, token: 'yes'}]")),
    ("unknown tamper", scn(users="[{name: staff, issuer: corp, tamper: wrong_kid}]")),
    ("claims as a list", scn(users="[{name: staff, issuer: corp, claims: [a]}]")),
    (
        "header set by the runner",
        scn(users="[{name: staff, issuer: corp, headers: {Authorization: x}}]"),
    ),
    ("header value as a number", scn(users="[{name: staff, issuer: corp, headers: {x-n: 1}}]")),
    ("empty population mix", scn(users="[{name: staff, issuer: corp, mix: []}]")),
    ("mix path without /", scn(traffic="{requests: 10, mix: [{path: api}]}")),
    ("mix weight 0", scn(traffic="{requests: 10, mix: [{path: /, weight: 0}]}")),
    ("mix method with a space", scn(traffic="{requests: 10, mix: [{method: GET /x, path: /}]}")),
    ("unknown mix key", scn(traffic="{requests: 10, mix: [{path: /, data: x}]}")),
    (
        "mix header the runner sets",
        scn(traffic="{requests: 10, mix: [{path: /, headers: {Host: x}}]}"),
    ),
    ("traffic with requests and duration", scn(traffic="{requests: 10, duration: 5s}")),
    ("rate without a unit", scn(traffic="{duration: 5s, rate: '200'}")),
    ("traffic without requests", scn(traffic="{concurrency: 2}")),
    ("traffic requests 0", scn(traffic="{requests: 0}")),
    ("traffic requests as a string", scn(traffic="{requests: '10'}")),
    ("concurrency too high", scn(traffic="{requests: 10, concurrency: 1000}")),
    ("unknown traffic key", scn(traffic="{requests: 10, rate: 5}")),
    ("time_budget over 1h", scn(traffic="{requests: 10, time_budget: 7200}")),
    ("request_timeout not a duration", scn(traffic="{requests: 10, request_timeout: fast}")),
    ("request_timeout under 100ms", scn(traffic="{requests: 10, request_timeout: 0.05}")),
    ("steps as a mapping", scn(steps="{at: 50%, action: pause, seconds: 1}")),
    ("unknown step action", scn(steps=step("action: reboot"))),
    ("step without at", scn(steps="[{action: pause, seconds: 1}]")),
    ("step at 150%", scn(steps=step("action: pause, seconds: 1").replace("50%", "150%"))),
    ("step at 1.5", scn(steps=step("action: pause, seconds: 1").replace("50%", "1.5"))),
    ("step at in words", scn(steps=step("action: pause, seconds: 1").replace("50%", "half"))),
    ("key of another action", scn(steps=step("action: rotate_keys, issuer: corp, mode: ok"))),
    ("unknown step key", scn(steps=step("action: pause, seconds: 1, why: x"))),
    ("rotate_keys without issuer", scn(steps=step("action: rotate_keys"))),
    ("remint as a string", scn(steps=step("action: rotate_keys, issuer: corp, remint: staff"))),
    ("keep_old as a string", scn(steps=step("action: rotate_keys, issuer: corp, keep_old: 'no'"))),
    ("jwks_mode without mode", scn(steps=step("action: jwks_mode, issuer: corp"))),
    ("unknown jwks_mode mode", scn(steps=step("action: jwks_mode, issuer: corp, mode: flaky"))),
    ("pause without seconds", scn(steps=step("action: pause"))),
    ("pause over 300s", scn(steps=step("action: pause, seconds: 600"))),
    ("change_policy without a policy", scn(steps=step("action: change_policy"))),
    ("bad step name", scn(steps=step("action: pause, seconds: 1, name: '.x'"))),
    ("unknown expectation key", scn(expect=expect("users: staff, status: 200, latency: 5"))),
    ("expectation asserts nothing", scn(expect=expect("users: staff"))),
    ("share without tolerance", scn(expect=expect("upstream: canary, share: 0.5"))),
    ("tolerance without share", scn(expect=expect("upstream: canary, tolerance: 0.1"))),
    (
        "share with min_share",
        scn(expect=expect("upstream: canary, share: 0.5, tolerance: 0.1, min_share: 0.4")),
    ),
    ("share over 1", scn(expect=expect("upstream: canary, share: 2, tolerance: 0.1"))),
    ("status 42", scn(expect=expect("users: staff, status: 42"))),
    ("empty status list", scn(expect=expect("users: staff, status: []"))),
    ("status as text", scn(expect=expect("users: staff, status: ok"))),
    ("empty users list", scn(expect=expect("users: [], status: 200"))),
    ("sticky false", scn(expect=expect("sticky: false"))),
    ("sticky with a status", scn(expect=expect("sticky: true, status: 200"))),
    ("formula without route", scn(expect=expect("formula: true"))),
    ("log with a users filter", scn(expect=expect("log: reloaded, users: staff"))),
    ("log at_least negative", scn(expect=expect("log: reloaded, at_least: -1"))),
    ("empty log pattern", scn(expect=expect("log: ''"))),
    # Refused by the runner's check of the inline policy, before anything starts.
    ("inline policy: unknown key", scn(policy=SCENARIO_POLICY + "\n  tenant: acme")),
    ("inline policy: bad validation", scn(policy=SCENARIO_POLICY + "\n  validation: lenient")),
    (
        "inline policy: upstream with a path",
        scn(policy=SCENARIO_POLICY.replace('url}"', 'url}/api"')),
    ),
    ("inline policy: as a list", scn(policy="[version, providers]")),
    (
        "change_policy: bad inline policy",
        scn(steps=step("action: change_policy, policy: {version: 1, providers: {}}")),
    ),
]


def policy_refused(text: str, tmp_path: Path) -> PolicyError | None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    try:
        load_policy(path)
    except PolicyError as exc:
        return exc
    return None


def scenario_refused(text: str, tmp_path: Path, key_file: Path) -> PolicyError | None:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    try:
        render_policies(load_scenario(path), key_file)
    except PolicyError as exc:
        return exc
    return None


def test_corpus_is_big_enough() -> None:
    assert len(INVALID_POLICIES) + len(INVALID_SCENARIOS) >= 40
    for corpus in (INVALID_POLICIES, INVALID_SCENARIOS):
        names = [name for name, _ in corpus]
        assert len(names) == len(set(names))


@pytest.mark.parametrize(("name", "text"), INVALID_POLICIES, ids=[n for n, _ in INVALID_POLICIES])
def test_invalid_policy_refused_by_loader_and_schema(name: str, text: str, tmp_path: Path) -> None:
    assert policy_refused(text, tmp_path) is not None, f"the loader accepts {name!r}"
    assert not POLICY.is_valid(document(text)), f"the schema accepts {name!r}"


@pytest.mark.parametrize(("name", "text"), INVALID_SCENARIOS, ids=[n for n, _ in INVALID_SCENARIOS])
def test_invalid_scenario_refused_by_loader_and_schema(
    name: str, text: str, tmp_path: Path, key_file: Path
) -> None:
    assert scenario_refused(text, tmp_path, key_file) is not None, f"the loader accepts {name!r}"
    assert not SCENARIO.is_valid(document(text)), f"the schema accepts {name!r}"


def test_the_bases_of_the_corpus_are_valid(tmp_path: Path, key_file: Path) -> None:
    """Each invalid row differs from a valid file by the one thing it names."""
    assert policy_refused(pol(), tmp_path) is None
    assert schema_errors(POLICY, document(pol())) == []
    assert scenario_refused(scn(), tmp_path, key_file) is None
    assert schema_errors(SCENARIO, document(scn())) == []


# -- 4. valid but unusual: both accept -------------------------------------------------------

UNUSUAL_POLICIES: list[tuple[str, str]] = [
    (
        "matchers: several operators ANDed, nesting, null, typed scalars",
        pol(
            routes=route(
                "match: {claims: {"
                "org: {prefix: solo, suffix: .io, not: {exact: solo.evil.io}}, "
                "'[kubernetes.io].namespace': {any_of: [{one_of: [default, 1, true, null]}, "
                "{all_of: [{present: true}, {regex: 'team-(?i)[a-z]+'}]}]}, "
                "age: {gte: 18, lt: 65.5}, deleted: null, roles: {contains: {a: 1}}, "
                "profile: {exact: {tier: [1, 2]}}}}, "
                "upstream: 'HTTPS://[::1]:8443/'"
            )
        ),
    ),
    (
        "headers matched with numbers and booleans; every request form",
        pol(
            routes=route(
                "match: {headers: {X-Debug: 1, x-flag: true, x-v: {one_of: [1, '2', false]}, "
                "x-gone: {present: false}, x-a: {not: {contains: 7}}}, methods: [get, PURGE], "
                "paths: [{exact: /}, {prefix: /api/}, {regex: '/v[0-9]+/.*'}], authenticated: false}, "
                "upstream: 'http://localhost:'"
            )
        ),
    ),
    (
        "durations as numbers and strings; discovery; extras of a provider",
        pol(
            providers=prov(
                "jwks: {discovery: true, cache_duration: 1, timeout: ' 60 s '}, clock_skew: 0, "
                "max_lifetime: null, forward_payload_header: null, algorithms: [EdDSA, Ed448, PS512], "
                "audiences: [a, b], keep_token: true, require_expiration: false, "
                "token_source: {cookies: [session]}, "
                "claims_to_headers: [{claim: [kubernetes.io, name], header: X-Name}, "
                "{claim: '[a.b].c', header: x-c}]"
            )
        ),
    ),
    (
        "a url jwks with discovery false, token header without prefix, empty sections",
        pol(
            providers=prov(
                f"jwks: {{url: {URL}, discovery: false, cache_duration: 1000ms}}, "
                "token_source: {headers: [{name: X-Token}, {name: authorization, prefix: ''}], "
                "query_params: [], cookies: []}"
            ),
            validation="allow_missing_or_failed",
            rbac="{}",
            routes="[]",
        ),
    ),
    (
        "rbac: every field, a drained split target and an empty salt",
        pol(
            rbac="{mode: dry_run, default_action: allow, policies: ["
            "{name: d, action: deny, permissions: {hosts: ['127.1', 'Admin.Example.:8080']}}, "
            "{name: a, action: allow, principals: [{}, {provider: corp, claims: {}}]}]}",
            routes=route(
                "split: {by: [a.b, c], salt: '', to: [{upstream: 'http://a:1', weight: 0}, "
                "{upstream: 'https://b', weight: 3}]}, preserve_host: true"
            ),
        ),
    ),
]

UNUSUAL_POLICIES += [
    (
        "has_word, a split by several claims with fallback_by, cohort header and baggage",
        pol(
            routes="[{name: r, match: {claims: {scope: {has_word: 'pets:write'}}}, "
            "cohort_header: X-Cohort, baggage: true, split: {by: [tenant, "
            "[kubernetes.io, namespace]], fallback_by: [sub], "
            "to: [{upstream: 'http://a:1', weight: 1}]}}, "
            "{name: s, cohort_header: x-cohort, baggage: false, upstream: 'http://b:1', "
            "match: {headers: {x-scopes: {has_word: admin}}}}]"
        ),
    ),
]

UNUSUAL_SCENARIOS: list[tuple[str, str]] = [
    (
        "issuer null, HS256 from a file, anonymous token: null, percent shares",
        scn(
            name="odd.Name_1",
            description="''",
            issuers="{corp: , file: {alg: HS256, serve: file, issuer: urn:x, audience: [a, b]}}",
            users="[{name: staff, issuer: corp, tamper: null, sub: 'u-{i}', "
            "headers: {x-empty: ''}, mix: [{method: patch, path: /x?y=1}]}, "
            "{name: guests, count: 100000, token: null}]",
            traffic="{requests: 1000000, concurrency: 512, seed: -3, time_budget: 1, "
            "request_timeout: 100ms}",
            expect="[{users: [staff, guests], status: [200, 401], share: '12.5 %', "
            "tolerance: 0.05}, {upstream: none, min_share: 0%, max_share: 100%}, "
            "{log: x, at_least: null, at_most: 0}, {sticky: true, method: get, path: /}]",
        ),
    ),
    (
        "every step action, change_policy inline, at 0 and 1",
        scn(
            steps="[{at: 0, action: rotate_keys, issuer: corp, remint: []}, "
            "{at: 0, action: rotate_keys, name: again, issuer: corp, remint: false, keep_old: true}, "
            "{at: 10%, action: jwks_mode, issuer: corp, mode: redirect_offsite}, "
            "{at: 20%, action: stop_jwks, issuer: corp}, {at: .3, action: start_jwks, issuer: corp}, "
            "{at: 1, action: pause, seconds: 300}, "
            "{at: 100%, action: change_policy, wait: 1.5m, policy: {version: 1, providers: "
            '{corp: {issuer: "${issuers.corp.issuer}", jwks: {url: "${issuers.corp.jwks_url}"}}}, '
            'routes: [{name: widened, split: {to: [{upstream: "${upstreams.canary.url}", weight: 1}]}}]}}]',
            expect="[{route: widened, formula: true, after_step: change_policy}, "
            "{route: canary, before_step: again, upstream: canary}]",
        ),
    ),
]


@pytest.mark.parametrize(("name", "text"), UNUSUAL_POLICIES, ids=[n for n, _ in UNUSUAL_POLICIES])
def test_unusual_policy_accepted_by_loader_and_schema(name: str, text: str, tmp_path: Path) -> None:
    error = policy_refused(text, tmp_path)
    assert error is None, f"the loader refuses {name!r}: {error}"
    assert schema_errors(POLICY, document(text)) == []


@pytest.mark.parametrize(("name", "text"), UNUSUAL_SCENARIOS, ids=[n for n, _ in UNUSUAL_SCENARIOS])
def test_unusual_scenario_accepted_by_loader_and_schema(
    name: str, text: str, tmp_path: Path, key_file: Path
) -> None:
    error = scenario_refused(text, tmp_path, key_file)
    assert error is None, f"the loader refuses {name!r}: {error}"
    assert schema_errors(SCENARIO, document(text)) == []


def test_inline_jwks_mapping_accepted(tmp_path: Path) -> None:
    """`inline:` may be a mapping (a JWKS or a single JWK), not only a string."""
    issuer = TestIssuer("corp", "ES256")
    keys = json.dumps(issuer.public_jwks())
    single = json.dumps(issuer.public_jwks()["keys"][0])
    for inline in (keys, single, repr(keys)):
        text = pol(providers=jwks(f"inline: {inline}"))
        assert policy_refused(text, tmp_path) is None, inline
        assert schema_errors(POLICY, document(text)) == []
