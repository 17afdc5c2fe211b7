"""RBAC: deny beats allow, default action, principals, permissions, dry-run, load errors."""

from __future__ import annotations

import pytest
from mitmproxy.http import Headers

from claimroute.config.source import parse_yaml_text
from claimroute.errors import PolicyError
from claimroute.match.paths import normalize_path
from claimroute.match.request import RequestView
from claimroute.policy.rbac import parse_rbac


def rbac_from(text: str, providers: tuple[str, ...] = ("kube", "corp")):
    value, loc = parse_yaml_text(text, "policy.yaml")
    return parse_rbac(value["rbac"], loc / "rbac", set(providers))


def req(method: str = "GET", path: str = "/api/pets", host: str = "pets.internal") -> RequestView:
    return RequestView(method, "http", host, 80, path, (), Headers(host=host))


GLOO_ACCESS_CONTROL = """
rbac:
  default_action: deny
  policies:
    - name: svc-a-reads-pets
      action: allow
      principals:
        - provider: kube
          claims: {sub: "system:serviceaccount:default:svc-a"}
      permissions: {methods: [GET], paths: [{prefix: /api/pets}]}
    - name: svc-b-writes-pets
      action: allow
      principals:
        - provider: kube
          claims: {sub: "system:serviceaccount:default:svc-b"}
      permissions: {methods: [POST, PUT], paths: [{prefix: /api/pets}]}
    - name: nobody-deletes
      action: deny
      permissions: {methods: [DELETE]}
"""

SVC_A = {"iss": "kube", "sub": "system:serviceaccount:default:svc-a"}
SVC_B = {"iss": "kube", "sub": "system:serviceaccount:default:svc-b"}


def test_gloo_access_control_guide():
    rbac = rbac_from(GLOO_ACCESS_CONTROL)
    assert rbac.evaluate(req("GET"), "kube", SVC_A).allowed
    assert rbac.evaluate(req("GET"), "kube", SVC_A).policy == "svc-a-reads-pets"
    assert not rbac.evaluate(req("POST"), "kube", SVC_A).allowed
    assert rbac.evaluate(req("POST"), "kube", SVC_B).allowed
    assert not rbac.evaluate(req("GET"), "kube", SVC_B).allowed
    assert not rbac.evaluate(req("GET", "/api/users"), "kube", SVC_A).allowed


def test_provider_pin_requires_that_provider():
    rbac = rbac_from(GLOO_ACCESS_CONTROL)
    assert not rbac.evaluate(req("GET"), "corp", SVC_A).allowed


def test_deny_beats_allow_whatever_the_order():
    text = """
rbac:
  default_action: allow
  policies:
    - {name: allow-all, action: allow}
    - {name: no-delete, action: deny, permissions: {methods: [DELETE]}}
"""
    rbac = rbac_from(text)
    result = rbac.evaluate(req("DELETE"), "corp", {"sub": "x"})
    assert (result.allowed, result.policy) == (False, "no-delete")
    assert rbac.evaluate(req("GET"), "corp", {"sub": "x"}).policy == "allow-all"


def test_default_action_when_nothing_matches():
    deny = rbac_from("rbac: {default_action: deny, policies: []}")
    allow = rbac_from("rbac: {default_action: allow, policies: []}")
    assert not deny.evaluate(req(), None, None).allowed
    assert deny.evaluate(req(), None, None).policy is None
    assert allow.evaluate(req(), None, None).allowed


def test_default_action_defaults_to_deny():
    assert not rbac_from("rbac: {policies: []}").evaluate(req(), "corp", {}).allowed


def test_anonymous_requests_have_no_claims():
    text = """
rbac:
  policies:
    - name: public-reads
      action: allow
      principals: [{claims: {sub: {present: false}}}]
      permissions: {methods: [GET]}
    - name: members
      action: allow
      principals: [{claims: {groups: members}}]
"""
    rbac = rbac_from(text)
    assert rbac.evaluate(req("GET"), None, None).allowed
    assert not rbac.evaluate(req("POST"), None, None).allowed
    assert rbac.evaluate(req("POST"), "corp", {"sub": "a", "groups": ["members"]}).allowed


def test_principals_are_or_and_claims_are_and():
    text = """
rbac:
  policies:
    - name: p
      action: allow
      principals:
        - claims: {org: solo.io, email_verified: true}
        - claims: {role: admin}
"""
    rbac = rbac_from(text)
    assert rbac.evaluate(req(), "corp", {"org": "solo.io", "email_verified": True}).allowed
    assert not rbac.evaluate(req(), "corp", {"org": "solo.io", "email_verified": "true"}).allowed
    assert not rbac.evaluate(req(), "corp", {"org": "solo.io"}).allowed
    assert rbac.evaluate(req(), "corp", {"role": "admin"}).allowed


def test_hosts_and_path_rules():
    text = """
rbac:
  policies:
    - name: p
      action: allow
      permissions:
        hosts: [Pets.Internal]
        paths: [{exact: /health}, {regex: "/api/v[0-9]+/pets"}]
"""
    rbac = rbac_from(text)
    assert rbac.evaluate(req(path="/health"), None, None).allowed
    assert rbac.evaluate(req(path="/api/v2/pets"), None, None).allowed
    assert not rbac.evaluate(req(path="/api/v2/pets/1"), None, None).allowed
    assert not rbac.evaluate(req(path="/health", host="other"), None, None).allowed


def test_host_rules_fail_closed_when_a_request_names_several_hosts():
    text = """
rbac:
  default_action: allow
  policies:
    - {name: no-admin, action: deny, permissions: {hosts: [admin.internal.]}}
"""
    deny = rbac_from(text)

    def view(target: str, *host_values: str) -> RequestView:
        return RequestView("GET", "http", target, 80, "/", (),
                           Headers([(b"host", v.encode()) for v in host_values]))  # fmt: skip

    # The final dot, a port, letter case: one name.
    for host in ("admin.internal", "ADMIN.internal.", "admin.internal:8080"):
        assert not deny.evaluate(view("x", host), None, None).allowed, host
    # Several Host values, or a client-chosen target that differs from Host: any name denies.
    assert not deny.evaluate(view("x", "public", "admin.internal"), None, None).allowed
    assert not deny.evaluate(view("x", "public, admin.internal"), None, None).allowed
    assert not deny.evaluate(view("admin.internal", "public"), None, None).allowed
    assert deny.evaluate(view("public", "public"), None, None).allowed
    # Numeric spellings of one address are one name, in rules and in requests.
    numeric = rbac_from(text.replace("admin.internal.", "127.0.0.1"))
    for spelling in ("127.1", "2130706433", "0x7f000001", "0177.0.0.1", "[::ffff:127.0.0.1]"):
        assert not numeric.evaluate(view("public", spelling), None, None).allowed, spelling
        assert not numeric.evaluate(view(spelling, "public"), None, None).allowed, spelling
    assert numeric.evaluate(view("public", "127.0.0.2"), None, None).allowed

    allow = rbac_from(text.replace("default_action: allow", "default_action: deny")
                      .replace("no-admin, action: deny", "only-pets, action: allow")
                      .replace("admin.internal.", "pets.internal"))  # fmt: skip
    assert allow.evaluate(view("pets.internal", "pets.internal."), None, None).allowed
    assert allow.evaluate(view("pets.internal"), None, None).allowed  # no Host: the target
    # An allow rule covers a request only when every name is one of its hosts: a target the
    # client chose (regular mode) that differs from Host is one of them.
    assert not allow.evaluate(view("10.0.0.1", "pets.internal."), None, None).allowed
    assert not allow.evaluate(view("x", "pets.internal", "admin.internal"), None, None).allowed
    assert not allow.evaluate(view("x", "pets.internal, admin"), None, None).allowed


def test_dot_segments_cannot_dodge_a_deny():
    text = """
rbac:
  default_action: allow
  policies:
    - {name: no-admin, action: deny, permissions: {paths: [{prefix: /admin}]}}
"""
    rbac = rbac_from(text)
    assert not rbac.evaluate(req(path="/api/../admin/users"), None, None).allowed
    assert not rbac.evaluate(req(path="//admin"), None, None).allowed
    # Escaped forms an upstream decodes to the same path: unreserved characters, %2F, %5C, "\".
    for dodge in (
        "/%61dmin",
        "/%61%64min/x",
        "/api/%2e%2e/admin",
        "/api/..%2fadmin",
        "/api/..%5Cadmin",
        "/api/..\\admin",
    ):
        assert not rbac.evaluate(req(path=dodge), None, None).allowed, dodge
    assert rbac.evaluate(req(path="/api/admin"), None, None).allowed
    assert rbac.evaluate(req(path="/api/%2561dmin"), None, None).allowed  # %25 is not decoded


@pytest.mark.parametrize(
    ("path", "normal"),
    [("/a/b", "/a/b"), ("/a/./b", "/a/b"), ("/a/../b", "/b"), ("/../../b", "/b"),
     ("//a//b/", "/a/b/"), ("/a/b/..", "/a/"), ("/", "/"), ("/%7euser/%41", "/~user/A"),
     ("/a%2Fb%5cc", "/a/b/c"), ("/a\\b", "/a/b"), ("/%2e%2E/x", "/x"), ("/a%20b%2a", "/a%20b%2A"),
     ("/%2561", "/%2561"), ("/%zz", "/%zz")],
)  # fmt: skip
def test_normalize_path(path, normal):
    assert normalize_path(path) == normal


def test_dry_run_decides_but_is_marked():
    rbac = rbac_from("rbac: {mode: dry_run, default_action: deny, policies: []}")
    result = rbac.evaluate(req(), "corp", {"sub": "a"})
    assert result.dry_run and not result.allowed
    assert result.record() == {"decision": "deny", "policy": None, "mode": "dry_run"}
    assert result.summary() == "deny; policy=(default)"


@pytest.mark.parametrize(
    ("text", "key_path", "line"),
    [
        ("rbac:\n  mode: shadow\n", "rbac.mode", 2),
        ("rbac:\n  policies:\n    - {name: a, action: permit}\n", "rbac.policies[0].action", 3),
        ("rbac:\n  policies:\n    - name: a\n      action: allow\n      principals:\n"
         "        - provider: nobody\n", "rbac.policies[0].principals[0].provider", 6),
        ("rbac:\n  policies:\n    - name: a\n      action: allow\n      principals:\n"
         "        - claims:\n            groups: {regex: '(unclosed'}\n",
         "rbac.policies[0].principals[0].claims.groups.regex", 7),
        ("rbac:\n  policies:\n    - {name: a, action: allow}\n    - {name: a, action: deny}\n",
         "rbac.policies[1].name", 4),
        ("rbac:\n  policies:\n    - name: a\n      action: allow\n      permissions:\n"
         "        paths: [/api]\n", "rbac.policies[0].permissions.paths[0]", 6),
        ("rbac:\n  policies:\n    - name: a\n      action: allow\n      permissions:\n"
         "        verbs: [GET]\n", "rbac.policies[0].permissions.verbs", 6),
    ],
)  # fmt: skip
def test_load_errors_name_key_path_and_line(text, key_path, line):
    with pytest.raises(PolicyError) as info:
        rbac_from(text)
    assert info.value.key_path == key_path
    assert info.value.line == line
    assert str(info.value).startswith(f"policy.yaml:{line}: {key_path}: ")


def test_a_method_rule_on_get_covers_head():
    """HEAD is a GET without the body and most frameworks answer it with the GET handler: a
    deny on GET must not be dodged with HEAD (and an allow on GET admits HEAD)."""
    text = """
rbac:
  default_action: allow
  policies:
    - {name: no-get, action: deny, permissions: {methods: [get], paths: [{exact: /secret}]}}
"""
    rbac = rbac_from(text)
    assert not rbac.evaluate(req(method="HEAD", path="/secret"), None, None).allowed
    assert not rbac.evaluate(req(method="GET", path="/secret"), None, None).allowed
    assert rbac.evaluate(req(method="POST", path="/secret"), None, None).allowed
