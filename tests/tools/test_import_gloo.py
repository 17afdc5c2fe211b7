"""`claimroute import gloo`: the Gloo guides' VirtualServices become claimroute policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from claimroute.policy.load import load_policy_text
from claimroute_tools.importers import main, render, translate
from claimroute_tools.importers.common import ImportFailure

FIXTURES = Path(__file__).parent / "fixtures"
PETSTORE = {"petstore": "http://127.0.0.1:8081"}
SUBSETS = {
    "echoapp[stage=canary]": "http://127.0.0.1:8082",
    "echoapp[stage=primary]": "http://127.0.0.1:8081",
}


def imported(name: str, upstreams: dict[str, str]) -> tuple[dict, list[str]]:
    """The policy of a fixture (checked to load as `claimroute check` loads it) and the report."""
    files = [FIXTURES / name]
    policy, report = translate("gloo", files, upstreams)
    load_policy_text(render("gloo", files, policy), "imported.yaml", FIXTURES)
    return policy, [str(f) for f in report.findings]


def test_jwt_and_access_control_guide():
    policy, findings = imported("gloo-jwt-access-control.yaml", PETSTORE)
    kube = policy["providers"]["kube"]
    assert kube["issuer"] == "kubernetes/serviceaccount"
    assert kube["jwks"]["inline"].startswith("-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0B")
    assert kube["require_expiration"] is False
    assert "validation" not in policy  # Gloo requires the token: require_valid
    assert policy["rbac"] == {
        "default_action": "deny",
        "policies": [
            {
                "name": "viewer",
                "action": "allow",
                "principals": [
                    {"claims": {"sub": {"exact": "system:serviceaccount:default:svc-a"}}}
                ],
                "permissions": {"methods": ["GET"], "paths": [{"prefix": "/api/pets"}]},
            }
        ],
    }
    assert policy["routes"] == [{"name": "route-1", "upstream": "http://127.0.0.1:8081"}]
    assert findings == []


@pytest.mark.parametrize(
    ("name", "claims"),
    [
        ("gloo-nested-claims.yaml", {"metadata.auth.role": {"exact": "user"}}),
        ("gloo-boolean-claim.yaml", {"email_verified": {"exact": True}}),
        ("gloo-list-claim.yaml", {"roles": "super_user"}),
    ],
)
def test_access_control_examples_claim_matchers(name, claims):
    policy, findings = imported(name, PETSTORE)
    [viewer] = policy["rbac"]["policies"]
    assert viewer["principals"] == [{"claims": claims}]
    assert findings == []


def test_claim_based_routing_guide():
    policy, findings = imported("gloo-claim-routing.yaml", SUBSETS)
    solo = policy["providers"]["solo"]
    assert solo["token_source"] == {"headers": [{"name": "x-token"}], "query_params": ["token"]}
    assert solo["claims_to_headers"] == [{"claim": "org", "header": "x-company"}]
    # The header route on x-company (set from the org claim) matches the claim itself.
    assert policy["routes"] == [
        {
            "name": "route-1",
            "match": {"claims": {"org": {"exact": "solo.io"}}},
            "upstream": "http://127.0.0.1:8082",
        },
        {"name": "route-2", "upstream": "http://127.0.0.1:8081"},
    ]
    [note] = findings
    assert "gloo-claim-routing.yaml:4: note: Upstream 'echoapp'" in note


def test_a_referenced_upstream_without_url_is_an_error_naming_it(capsys):
    code = main(
        [
            "import",
            "gloo",
            str(FIXTURES / "gloo-claim-routing.yaml"),
            "--upstream",
            "echoapp[stage=canary]=http://127.0.0.1:8082",
            "--upstream",
            "unused=http://127.0.0.1:9",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "gloo-claim-routing.yaml:45" in err and "'echoapp[stage=primary]'" in err
    assert "Traceback" not in err


def test_out_writes_a_policy_that_check_accepts(tmp_path, capsys):
    from claimroute_tools import cli

    out = tmp_path / "policy.yaml"
    args = [
        "import",
        "gloo",
        str(FIXTURES / "gloo-jwt-access-control.yaml"),
        "--upstream",
        "petstore=http://127.0.0.1:8081",
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    assert out.read_text().startswith("# Imported by `claimroute import gloo`")
    capsys.readouterr()
    assert cli.main(["check", str(out)]) == 0


REMOTE = """\
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: vs, namespace: gloo-system}
spec:
  virtualHost:
    domains: [api.example.com]
    routes:
    - matchers:
      - prefix: /api
        methods: [GET]
        headers:
        - {name: x-debug, value: "1"}
        - {name: x-tier, regex: true, value: "gold|silver"}
        queryParameters: [{name: v, value: "2"}]
      routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
    - matchers: [{exact: /health}]
      routeAction: {single: {upstream: {name: api, namespace: gloo-system}}}
      options: {prefixRewrite: /}
    - matchers: [{prefix: /}]
      routeAction: {multi: {destinations: []}}
    options:
      waf: {}
      jwtStaged:
        beforeExtAuth:
          allowMissingOrFailedJwt: true
          providers:
            idp:
              issuer: https://idp.example
              audiences: [api]
              keepToken: true
              clockSkewSeconds: 30
              tokenSource: {headers: [{header: authorization, prefix: "Bearer "}]}
              claimsToHeaders:
              - {claim: tier, header: x-tier}
              - {claim: kubernetes.io/name, header: x-name, append: true}
              jwks:
                remote:
                  url: http://jwks/keys.json?v=1
                  upstreamRef: {name: jwks-server, namespace: gloo-system}
                  cacheDuration: 300s
      rbac:
        policies:
          admins:
            principals:
            - jwtPrincipal: {provider: idp, claims: {role: admin}}
            - {other: x}
          by-header:
            principals: [{jwtPrincipal: {claims: {a: b}}}]
            permissions: {headers: x}
"""


def test_options_tokens_remote_keys_and_what_is_not_expressible(tmp_path):
    source = tmp_path / "vs.yaml"
    source.write_text(REMOTE)
    upstreams = {"api": "http://127.0.0.1:7000", "jwks-server": "http://127.0.0.1:7001"}
    policy, report = translate("gloo", [source], upstreams)
    load_policy_text(render("gloo", [source], policy), "x.yaml", tmp_path)
    idp = policy["providers"]["idp"]
    assert idp["jwks"] == {"url": "http://127.0.0.1:7001/keys.json?v=1", "cache_duration": "300s"}
    assert idp["token_source"] == {"headers": [{"name": "authorization", "prefix": "Bearer "}]}
    assert (idp["keep_token"], idp["clock_skew"], idp["audiences"]) == (True, "30s", ["api"])
    assert idp["claims_to_headers"][1] == {"claim": "[kubernetes.io/name]", "header": "x-name"}
    assert policy["validation"] == "allow_missing_or_failed"
    assert policy["rbac"]["policies"] == [
        {
            "name": "admins",
            "action": "allow",
            "principals": [{"provider": "idp", "claims": {"role": {"exact": "admin"}}}],
        },
    ]
    assert policy["routes"] == [
        {
            "name": "route-2",
            "match": {"paths": [{"exact": "/health"}]},
            "upstream": "http://127.0.0.1:7000",
        }
    ]
    lines = {str(f).split(": ", 1)[0].rsplit(":", 1)[1]: str(f) for f in report.findings}
    text = "\n".join(str(f) for f in report.findings)
    for expected in (
        "domains",
        "queryParameters",
        "prefixRewrite",
        "multi",
        "waf",
        "append: true",
        "['other']",
        "'headers'",
    ):
        assert expected in text, expected
    assert lines["6"].endswith("the policy applies to every host")
    assert all(f.unsupported for f in report.findings)


def test_strict_fails_when_something_is_not_translated(tmp_path, capsys):
    source = tmp_path / "vs.yaml"
    source.write_text(REMOTE)
    args = [
        "import",
        "gloo",
        str(source),
        "--upstream",
        "api=http://127.0.0.1:7000",
        "--upstream",
        "jwks-server=http://127.0.0.1:7001",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "version: 1" in captured.out and f"{source}:6: spec.virtualHost.domains" in captured.err
    assert main([*args, "--strict"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--strict" in captured.err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: VirtualService\napiVersion: gateway.solo.io/v1\nspec: [\n", "vs.yaml:3"),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
            "vs.yaml:1: unknown kind Deployment",
        ),
        (
            "apiVersion: gateway.solo.io/v1\nkind: VirtualService\nspec:\n  virtualHost:\n"
            "    routes: {a: 1}\n",
            "vs.yaml:5: spec.virtualHost.routes: this must be a list",
        ),
        ("- a\n- b\n", "vs.yaml:1: expected a Kubernetes resource"),
        (
            "---\n---\napiVersion: gateway.solo.io/v1\nkind: VirtualService\nspec:\n  virtualHost:\n"
            "    options: {jwt: {providers: {p: {issuer: x, jwks: {}}}}}\n",
            "vs.yaml:7: spec.virtualHost.options.jwt.providers.p.jwks: jwks needs",
        ),
    ],
)
def test_malformed_input_is_a_clear_error(tmp_path, capsys, text, expected):
    source = tmp_path / "vs.yaml"
    source.write_text(text)
    assert main(["import", "gloo", str(source)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_missing_file_and_bad_upstream_argument(tmp_path, capsys):
    assert main(["import", "gloo", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: cannot read file" in capsys.readouterr().err
    with pytest.raises(ImportFailure, match="http"):
        from claimroute_tools.importers.common import parse_upstreams

        parse_upstreams(["api=ftp://x"])
