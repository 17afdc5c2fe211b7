"""`claimroute import istio`: the Istio tasks' RequestAuthentication and AuthorizationPolicy."""

from __future__ import annotations

from pathlib import Path

import pytest

from claimroute.policy.load import load_policy_text
from claimroute_tools.importers import main, render, translate

FIXTURES = Path(__file__).parent / "fixtures"
ISTIO_JWKS = (
    "https://raw.githubusercontent.com/istio/istio/master/security/tools/jwt/samples/jwks.json"
)
PROVIDER = {
    "issuer": "testing@secure.istio.io",
    "jwks": {"url": ISTIO_JWKS},
    "require_expiration": False,
}


def imported(path: Path) -> tuple[dict, list]:
    policy, report = translate("istio", [path])
    load_policy_text(render("istio", [path], policy), "imported.yaml", path.parent)
    return policy, report.findings


def test_authorization_jwt_task():
    policy, findings = imported(FIXTURES / "istio-authz-jwt.yaml")
    assert policy["providers"] == {"jwt-example": PROVIDER}
    assert policy["validation"] == "allow_missing"  # Istio lets requests without a token in
    assert policy["rbac"] == {
        "default_action": "deny",  # an ALLOW policy exists: what it does not allow is denied
        "policies": [
            {
                "name": "require-jwt",
                "action": "allow",
                "principals": [
                    {
                        "provider": "jwt-example",
                        "claims": {"sub": "testing@secure.istio.io", "groups": "group1"},
                    }
                ],
            }
        ],
    }
    assert [(f.loc.line, f.unsupported) for f in findings] == [(11, True), (24, True)]
    assert all("selector" in f.message for f in findings)


def test_authentication_task_require_a_valid_token():
    policy, _ = imported(FIXTURES / "istio-authn-require-token.yaml")
    assert policy["rbac"] == {
        "default_action": "allow",  # only DENY policies
        "policies": [
            {
                "name": "frontend-ingress",
                "action": "deny",
                "principals": [{"claims": {"iss": {"present": False}}}],
            }
        ],
    }


def test_authentication_task_per_path():
    policy, _ = imported(FIXTURES / "istio-authn-per-path.yaml")
    [deny] = policy["rbac"]["policies"]
    assert deny["permissions"] == {"paths": [{"exact": "/headers"}]}


RICH = """\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: idp}
spec:
  jwtRules:
  - issuer: https://idp.example.com
    audiences: [api]
    fromHeaders: [{name: X-Jwt, prefix: "Bearer "}]
    fromParams: [token]
    fromCookies: [session]
    forwardOriginalToken: true
    outputClaimToHeaders: [{header: X-Team, claim: team}]
    outputPayloadToHeader: X-Jwt-Payload
    timeout: 3s
  - issuer: https://other.example.com/realms/a
    jwks: '{"keys": [{"kty": "oct", "k": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: rules}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {requestPrincipals: ["https://idp.example.com/*"]}
    - source: {requestPrincipals: ["*/admin"], namespaces: [prod]}
    to:
    - operation: {methods: [get], paths: ["/api/*", "*.png", "/exact"]}
    - operation: {hosts: [api.example.com], ports: ["8080"]}
    when:
    - {key: "request.auth.claims[realm_access][roles]", values: [editor, "ops-*"]}
    - {key: request.auth.audiences, values: [api]}
    - {key: request.auth.presenter, notValues: [bad-client]}
  - when:
    - {key: "request.auth.claims[kubernetes.io][namespace]", values: ["*"]}
    - {key: source.ip, values: [10.0.0.0/8]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-bots}
spec:
  action: DENY
  rules:
  - from:
    - source:
        notRequestPrincipals: ["https://idp.example.com/user-*"]
        ipBlocks: [1.2.3.4]
    to: [{operation: {notPaths: [/public]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules: [{}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec: {hosts: ["*"]}
"""


def test_every_translated_field_and_what_is_reported(tmp_path):
    source = tmp_path / "istio.yaml"
    source.write_text(RICH)
    policy, findings = imported(source)
    idp = policy["providers"]["idp-1"]
    assert idp == {
        "issuer": "https://idp.example.com",
        "audiences": ["api"],
        "jwks": {"discovery": True, "timeout": "3s"},
        "token_source": {
            "headers": [{"name": "x-jwt", "prefix": "Bearer "}],
            "query_params": ["token"],
            "cookies": ["session"],
        },
        "keep_token": True,
        "require_expiration": False,
        "claims_to_headers": [{"claim": "team", "header": "x-team"}],
        "forward_payload_header": "x-jwt-payload",
    }
    assert policy["providers"]["idp-2"]["jwks"]["inline"].startswith('{"keys"')
    deny, *allows = policy["rbac"]["policies"]
    # DENY first; the ipBlocks field is left out (the DENY covers more); notPaths likewise.
    assert deny == {
        "name": "no-bots",
        "action": "deny",
        "principals": [
            {"claims": {"iss": {"present": False}}},
            {"provider": "idp-1", "claims": {"sub": {"not": {"prefix": "user-"}}}},
            {"provider": "idp-2"},
        ],
    }
    when = {
        "realm_access.roles": {"any_of": ["editor", {"prefix": "ops-"}]},
        "aud": "api",
        "azp": {"not": "bad-client"},
    }
    # The namespaces source and the ports operation and the source.ip rule cannot match here.
    assert allows == [
        {
            "name": "rules.rule-1",
            "action": "allow",
            "principals": [{"provider": "idp-1", "claims": when}],
            "permissions": {
                "methods": ["GET"],
                "paths": [{"prefix": "/api/"}, {"regex": ".*\\.png"}, {"exact": "/exact"}],
            },
        }
    ]
    assert policy["rbac"]["default_action"] == "deny"
    report = "\n".join(str(f) for f in findings)
    for expected in (
        ":26: spec.rules[0].from[1].source.namespaces: not translated",
        ":29: spec.rules[0].to[1].operation.ports",
        ":36: spec.rules[1].when[1].key: not translated: condition on 'source.ip'",
        ":34: spec.rules[1]: note: rules rule 2 can match no request",
        ":47: spec.rules[0].from[0].source.ipBlocks",
        ":48: spec.rules[0].to[0].operation.notPaths",
        ":54: spec.action: not translated: action 'CUSTOM'",
        "istio.yaml:58: not translated: VirtualService",
    ):
        assert expected in report, expected


def test_principal_wildcards_follow_iss_slash_sub(tmp_path):
    from claimroute_tools.importers.common import Report
    from claimroute_tools.importers.istio import IstioImporter

    importer = IstioImporter(Report())
    importer.issuers = {"https://a.example/x": "a", "kube": "k"}
    loc = None
    assert importer.request_principals(["https://a.example/x/alice"], loc) == [
        {"provider": "a", "claims": {"sub": "alice"}}
    ]
    assert importer.request_principals(["*"], loc) == [{"provider": "a"}, {"provider": "k"}]
    assert importer.request_principals(["https://a.*"], loc) == [{"provider": "a"}]
    assert importer.request_principals(["*/bob"], loc) == [
        {"provider": "a", "claims": {"sub": {"any_of": [{"suffix": "/bob"}, "bob"]}}},
        {"provider": "k", "claims": {"sub": {"any_of": [{"suffix": "/bob"}, "bob"]}}},
    ]
    assert importer.request_principals(["kube/system:*"], loc) == [
        {"provider": "k", "claims": {"sub": {"prefix": "system:"}}}
    ]


def test_no_authorization_policy_means_no_rbac(tmp_path, capsys):
    source = tmp_path / "ra.yaml"
    source.write_text(RICH.split("---")[0])
    assert main(["import", "istio", str(source), "--strict"]) == 0
    out = capsys.readouterr().out
    assert "rbac" not in out and "validation: allow_missing" in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            RICH.split("---")[0] + "---\napiVersion: security.istio.io/v1\n"
            "kind: AuthorizationPolicy\nspec: {rules: 3}\n",
            "x.yaml:20: spec.rules: rules must be",
        ),
        ("apiVersion: v1\nkind: ConfigMap\n", "x.yaml:1: unknown kind ConfigMap"),
        (
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nspec:\n  jwtRules:\n"
            "  - {audiences: [a]}\n",
            "x.yaml:5: spec.jwtRules[0].issuer: issuer must be",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nspec: {}\n",
            "no RequestAuthentication jwtRules",
        ),
        ("a: [1\n", "x.yaml:"),
    ],
)
def test_malformed_input_is_a_clear_error(tmp_path, capsys, text, expected):
    source = tmp_path / "x.yaml"
    source.write_text(text)
    assert main(["import", "istio", str(source)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
