"""Policy loading: a complete file parses with the documented defaults, and every mistake is a
PolicyError naming the file, the exact key path and the line (docs/policy.md)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey

from claimroute.errors import PolicyError
from claimroute.policy.load import load_policy, load_policy_text
from claimroute.policy.model import DEFAULT_TOKEN_SOURCE, HeaderLocation, LocalJwks, RemoteJwks
from claimroute_tools.lab import TestIssuer, b64url

pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")

NAME = "policy.yaml"


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the `nth` line of `text` that contains `needle`."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    assert len(hits) >= nth, f"{needle!r} occurs {len(hits)} times"
    return hits[nth - 1]


def policy_error(text: str, base: Path, name: str = NAME) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, name, base=base)
    return info.value


def assert_located(exc: PolicyError, *, key_path: str, line: int | None, name: str = NAME) -> None:
    """The error names file, exact key path and line, in the attributes and the message."""
    assert (exc.file, exc.key_path, exc.line) == (name, key_path, line), str(exc)
    where = f"{name}:{line}" if line is not None else name
    assert str(exc).startswith(f"{where}: {key_path or '(top level)'}: "), str(exc)


@pytest.fixture(scope="module")
def corp(make_issuer: Any) -> TestIssuer:
    return make_issuer("corp", "RS256")


@pytest.fixture
def keydir(tmp_path: Path, corp: TestIssuer) -> Path:
    (tmp_path / "keys").mkdir()
    corp.write_jwks(tmp_path / "keys" / "corp.jwks.json")
    return tmp_path


def one_provider(extra: str = "", jwks: str = "file: keys/corp.jwks.json") -> str:
    """A valid single-provider policy; `extra` lines go inside the provider (4-space indent)."""
    body = textwrap.indent(textwrap.dedent(extra).strip("\n"), "    ") if extra else ""
    return (
        "version: 1\n"
        "providers:\n"
        "  corp:\n"
        "    issuer: https://idp.corp.example\n"
        "    jwks:\n"
        f"      {jwks}\n" + (body + "\n" if body else "")
    )


def write_keys(base: Path, name: str, document: Any) -> None:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    (base / "keys" / name).write_bytes(data)


def rsa_public_jwk(bits: int = 2048, **members: Any) -> dict[str, Any]:
    private = rsa.generate_private_key(65537, bits)
    return RSAKey.import_key(private.public_key()).as_dict(private=False) | members


# --------------------------------------------------------------------------- valid policies


COMPLETE = """\
version: 1

providers:
  corp:
    issuer: https://idp.corp.example
    audiences: [orders-api]
    jwks:
      file: keys/corp.jwks.json
    algorithms: [RS256, ES256]
    token_source:
      headers: [{name: authorization, prefix: "Bearer "}]
      query_params: [access_token]
      cookies: []
    keep_token: false
    clock_skew: 60s
    require_expiration: true
    max_lifetime: 24h
    claims_to_headers:
      - {claim: sub, header: x-user}
      - {claim: realm_access.roles, header: x-roles}
  kube:
    issuer: https://kube.example
    jwks: {file: keys/corp.jwks.json}
    token_source:
      headers: [{name: X-Kube-Token}]
      cookies: [kube_session]
    keep_token: true
    clock_skew: 5s
    require_expiration: false
    claims_to_headers:
      - {claim: '[kubernetes.io].namespace', header: X-Namespace}
  remote:
    issuer: https://remote.example
    jwks:
      url: http://127.0.0.1:9000/jwks.json
      cache_duration: 10m
      timeout: 2s

validation: allow_missing

rbac:
  mode: enforce
  default_action: deny
  policies:
    - name: pets-readers
      action: allow
      principals:
        - provider: kube
          claims:
            sub: system:serviceaccount:default:svc-a
            groups: {contains: pets-readers}
            email_verified: true
      permissions:
        methods: [GET, HEAD]
        paths: [{prefix: /api/pets}]
        hosts: [pets.internal]

routes:
  - name: employees-to-canary
    match:
      claims: {org: solo.io}
    upstream: http://127.0.0.1:8082
  - name: ten-percent-of-users
    match: {authenticated: true}
    split:
      by: sub
      salt: experiment-7
      to:
        - {upstream: http://127.0.0.1:8082, weight: 10}
        - {upstream: http://127.0.0.1:8081, weight: 90}
    preserve_host: false
"""


def test_complete_policy_parses(keydir: Path, corp: TestIssuer) -> None:
    policy = load_policy_text(COMPLETE, NAME, base=keydir)
    assert list(policy.providers) == ["corp", "kube", "remote"]
    assert policy.validation == "allow_missing"
    assert policy.path == NAME

    p = policy.providers["corp"]
    assert p.issuer == "https://idp.corp.example"
    assert p.audiences == frozenset({"orders-api"})
    assert p.algorithms == frozenset({"RS256", "ES256"})
    assert isinstance(p.jwks, LocalJwks)
    assert p.jwks.origin == str((keydir / "keys" / "corp.jwks.json").resolve())
    assert p.jwks.key_set.kids == [corp.kid]
    # the JWK says RS256, the allowlist says RS256|ES256: the key verifies RS256 only
    assert p.jwks.key_set.algorithms == frozenset({"RS256"})
    assert p.clock_skew == 60.0
    assert p.max_lifetime == 24 * 3600
    assert p.require_expiration is True
    assert p.keep_token is False
    assert [(c.claim, c.header) for c in p.claims_to_headers] == [
        (("sub",), "x-user"),
        (("realm_access", "roles"), "x-roles"),
    ]

    k = policy.providers["kube"]
    assert k.keep_token is True
    assert k.clock_skew == 5.0
    assert k.require_expiration is False
    assert k.max_lifetime is None
    assert k.token_source.headers == (HeaderLocation("x-kube-token", ""),)
    assert k.token_source.query_params == ()  # off when token_source is given without it
    assert k.token_source.cookies == ("kube_session",)
    assert [(c.claim, c.header) for c in k.claims_to_headers] == [
        (("kubernetes.io", "namespace"), "x-namespace")
    ]

    r = policy.providers["remote"]
    assert isinstance(r.jwks, RemoteJwks)
    assert r.jwks.url == "http://127.0.0.1:9000/jwks.json"
    assert (r.jwks.cache_duration, r.jwks.timeout) == (600.0, 2.0)

    assert set(policy.by_issuer) == {
        "https://idp.corp.example",
        "https://kube.example",
        "https://remote.example",
    }
    assert policy.identity_headers == frozenset({"x-user", "x-roles", "x-namespace"})
    assert policy.rbac is not None
    assert [route.name for route in policy.routes] == [
        "employees-to-canary",
        "ten-percent-of-users",
    ]


def test_defaults(keydir: Path) -> None:
    policy = load_policy_text(one_provider(), NAME, base=keydir)
    p = policy.providers["corp"]
    assert p.clock_skew == 60.0
    assert p.require_expiration is True
    assert p.keep_token is False
    assert p.token_source == DEFAULT_TOKEN_SOURCE
    assert p.token_source.headers == (HeaderLocation("authorization", "Bearer "),)
    assert p.token_source.query_params == ("access_token",)
    assert p.token_source.cookies == ()
    assert p.audiences is None
    assert p.algorithms is None
    assert p.max_lifetime is None
    assert p.claims_to_headers == ()
    assert policy.validation == "require_valid"
    assert policy.rbac is None
    assert policy.routes == ()


def test_remote_jwks_defaults(tmp_path: Path) -> None:
    text = one_provider(jwks="url: https://idp.corp.example/jwks.json")
    jwks = load_policy_text(text, NAME, base=tmp_path).providers["corp"].jwks
    assert isinstance(jwks, RemoteJwks)
    assert (jwks.cache_duration, jwks.timeout, jwks.discovery) == (300.0, 5.0, False)


def test_inline_jwks_mapping_and_string(corp: TestIssuer, tmp_path: Path) -> None:
    as_json = json.dumps(corp.public_jwks())
    for inline in (as_json, "'" + as_json + "'"):
        text = one_provider(jwks=f"inline: {inline}")
        jwks = load_policy_text(text, NAME, base=tmp_path).providers["corp"].jwks
        assert isinstance(jwks, LocalJwks)
        assert jwks.key_set.kids == [corp.kid]


def test_pem_file(tmp_path: Path, corp: TestIssuer) -> None:
    (tmp_path / "corp.pem").write_bytes(corp.public_pem())
    jwks = load_policy_text(one_provider(jwks="file: corp.pem"), NAME, base=tmp_path)
    key_set = jwks.providers["corp"].jwks.key_set  # type: ignore[union-attr]
    assert key_set.kids == ["-"]
    assert "PS512" in key_set.algorithms


def test_load_policy_from_file_relative_keys(keydir: Path) -> None:
    path = keydir / "p.yaml"
    path.write_text(one_provider())
    policy = load_policy(path)
    assert policy.path == str(path)
    assert "corp" in policy.providers
    # a change in content changes the fingerprint
    path.write_text(one_provider("clock_skew: 5s"))
    assert load_policy(path).fingerprint != policy.fingerprint


def test_load_policy_errors_name_the_real_path(keydir: Path) -> None:
    path = keydir / "broken.yaml"
    text = one_provider("keep_token: maybe")
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert_located(
        info.value,
        key_path="providers.corp.keep_token",
        line=line_of(text, "keep_token"),
        name=str(path),
    )


def test_missing_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.file == str(path)
    assert "cannot read" in info.value.reason


# --------------------------------------------------------------------------- schema errors


@pytest.mark.parametrize(
    ("extra", "key_path", "needle", "words"),
    [
        ("jwks_uri: https://x", "providers.corp.jwks_uri", "jwks_uri", "unknown key 'jwks_uri'"),
        ("keep_token: 'yes'", "providers.corp.keep_token", "keep_token", "expected true or false"),
        ("audiences: orders-api", "providers.corp.audiences", "audiences", "expected a list"),
        ("audiences: [1]", "providers.corp.audiences[0]", "audiences", "expected a string"),
        (
            "require_expiration: 1",
            "providers.corp.require_expiration",
            "require_expiration",
            "expected true or false",
        ),
        ("clock_skew: 5 minutes", "providers.corp.clock_skew", "clock_skew", "duration"),
        ("clock_skew: 10x", "providers.corp.clock_skew", "clock_skew", "duration"),
        ("clock_skew: -5", "providers.corp.clock_skew", "clock_skew", "negative"),
        ("max_lifetime: '-1h'", "providers.corp.max_lifetime", "max_lifetime", "duration"),
        ("max_lifetime: true", "providers.corp.max_lifetime", "max_lifetime", "duration"),
        ("clock_skew: .nan", "providers.corp.clock_skew", "clock_skew", "finite duration"),
        ("clock_skew: .inf", "providers.corp.clock_skew", "clock_skew", "finite duration"),
        ("max_lifetime: .inf", "providers.corp.max_lifetime", "max_lifetime", "finite"),
        ("max_lifetime: .NaN", "providers.corp.max_lifetime", "max_lifetime", "finite"),
        (
            "token_source: {headers: [{prefix: x}]}",
            "providers.corp.token_source.headers[0]",
            "token_source",
            "missing required key 'name'",
        ),
        (
            "token_source: {}",
            "providers.corp.token_source",
            "token_source",
            "no location",
        ),
        (
            "claims_to_headers:\n  - {claim: sub, header: host}",
            "providers.corp.claims_to_headers[0].header",
            "claim: sub",
            "cannot carry a claim",
        ),
        (
            "claims_to_headers:\n  - {claim: sub, header: 'x user'}",
            "providers.corp.claims_to_headers[0].header",
            "claim: sub",
            "not a valid header name",
        ),
        (
            "forward_payload_header: 'x-jwt:payload'",
            "providers.corp.forward_payload_header",
            "forward_payload_header",
            "not a valid header name",
        ),
        (
            'token_source: {headers: [{name: "x-tok\\r\\nx-admin"}]}',
            "providers.corp.token_source.headers[0].name",
            "token_source",
            "not a valid header name",
        ),
        (
            "forward_payload_header: Content-Length",
            "providers.corp.forward_payload_header",
            "forward_payload_header",
            "cannot carry a payload",
        ),
        (
            "forward_payload_header: [x-payload]",
            "providers.corp.forward_payload_header",
            "forward_payload_header",
            "expected a string",
        ),
        (
            "claims_to_headers: [{claim: sub, header: x-jwt}]\nforward_payload_header: X-JWT",
            "providers.corp.forward_payload_header",
            "forward_payload_header",
            "also set from a claim",
        ),
        (
            "forward_payload_header: Authorization",
            "providers.corp.forward_payload_header",
            "forward_payload_header",
            "carries tokens",
        ),
    ],
)
def test_provider_field_errors(
    keydir: Path, extra: str, key_path: str, needle: str, words: str
) -> None:
    text = one_provider(extra)
    exc = policy_error(text, keydir)
    assert_located(exc, key_path=key_path, line=line_of(text, needle))
    assert words in exc.reason


def test_unknown_top_level_key(keydir: Path) -> None:
    text = one_provider() + "valdation: require_valid\n"
    exc = policy_error(text, keydir)
    assert_located(exc, key_path="valdation", line=line_of(text, "valdation"))
    assert "unknown key 'valdation'" in exc.reason


def test_unknown_jwks_key(keydir: Path) -> None:
    text = one_provider(jwks="file: keys/corp.jwks.json\n      path: x")
    exc = policy_error(text, keydir)
    assert_located(exc, key_path="providers.corp.jwks.path", line=line_of(text, "path: x"))


def test_wrong_validation_mode(keydir: Path) -> None:
    text = one_provider() + "validation: sometimes\n"
    exc = policy_error(text, keydir)
    assert_located(exc, key_path="validation", line=line_of(text, "validation"))
    assert "must be one of" in exc.reason


def test_wrong_version(keydir: Path) -> None:
    text = one_provider().replace("version: 1", "version: 2")
    exc = policy_error(text, keydir)
    assert_located(exc, key_path="version", line=1)


def test_version_true_is_not_one(keydir: Path) -> None:
    exc = policy_error(one_provider().replace("version: 1", "version: true"), keydir)
    assert exc.key_path == "version"


def test_missing_issuer(keydir: Path) -> None:
    text = one_provider().replace("    issuer: https://idp.corp.example\n", "")
    exc = policy_error(text, keydir)
    assert_located(exc, key_path="providers.corp", line=line_of(text, "corp:"))
    assert "missing required key 'issuer'" in exc.reason


def test_two_sources_for_jwks(keydir: Path) -> None:
    text = one_provider(jwks="file: keys/corp.jwks.json\n      url: https://x/jwks")
    exc = policy_error(text, keydir)
    assert_located(exc, key_path="providers.corp.jwks", line=line_of(text, "jwks:"))
    assert "exactly one" in exc.reason


def test_cache_duration_with_local_file(keydir: Path) -> None:
    text = one_provider(jwks="file: keys/corp.jwks.json\n      cache_duration: 5m")
    exc = policy_error(text, keydir)
    assert_located(
        exc, key_path="providers.corp.jwks.cache_duration", line=line_of(text, "cache_duration")
    )


def test_hmac_algorithm_with_remote_jwks(tmp_path: Path) -> None:
    text = one_provider("algorithms: [HS256]", jwks="url: https://idp/jwks")
    exc = policy_error(text, tmp_path)
    assert_located(exc, key_path="providers.corp.jwks", line=line_of(text, "jwks:"))


def test_two_providers_with_one_issuer(keydir: Path) -> None:
    text = textwrap.dedent("""\
        version: 1
        providers:
          first:
            issuer: https://same.example
            jwks: {file: keys/corp.jwks.json}
          second:
            jwks: {file: keys/corp.jwks.json}
            issuer: https://same.example
        """)
    exc = policy_error(text, keydir)
    assert_located(exc, key_path="providers.second.issuer", line=line_of(text, "issuer:", nth=2))
    assert "already used by provider 'first'" in exc.reason


def test_no_providers(tmp_path: Path) -> None:
    text = "version: 1\nproviders: {}\n"
    exc = policy_error(text, tmp_path)
    assert_located(exc, key_path="providers", line=2)


# --------------------------------------------------------------------------- algorithms


@pytest.mark.parametrize("spelling", ["none", "None", "NONE", "nOnE"])
def test_alg_none_in_algorithms(keydir: Path, spelling: str) -> None:
    text = one_provider(f"algorithms:\n  - RS256\n  - {spelling}")
    exc = policy_error(text, keydir)
    assert_located(
        exc, key_path="providers.corp.algorithms[1]", line=line_of(text, f"- {spelling}")
    )
    assert "'none' is never accepted" in exc.reason


@pytest.mark.parametrize("name", ["RS257", "ES256K", "rs256", "HS1024", "RSA-OAEP"])
def test_unknown_algorithm(keydir: Path, name: str) -> None:
    text = one_provider(f"algorithms: [RS256, {name}]")
    exc = policy_error(text, keydir)
    assert_located(exc, key_path="providers.corp.algorithms[1]", line=line_of(text, "algorithms"))
    assert f"unknown algorithm {name!r}" in exc.reason


def test_empty_algorithms(keydir: Path) -> None:
    text = one_provider("algorithms: []")
    exc = policy_error(text, keydir)
    assert_located(exc, key_path="providers.corp.algorithms", line=line_of(text, "algorithms"))


# --------------------------------------------------------------------------- key files


def key_file_error(base: Path, name: str, document: Any) -> PolicyError:
    write_keys(base, name, document)
    text = one_provider(jwks=f"file: keys/{name}")
    exc = policy_error(text, base)
    assert_located(exc, key_path="providers.corp.jwks.file", line=line_of(text, "file:"))
    return exc


def test_jwks_file_missing(keydir: Path) -> None:
    text = one_provider(jwks="file: keys/nope.json")
    exc = policy_error(text, keydir)
    assert_located(exc, key_path="providers.corp.jwks.file", line=line_of(text, "file:"))
    assert "cannot read" in exc.reason
    assert "nope.json" in exc.reason


def test_jwks_file_without_usable_key(keydir: Path) -> None:
    exc = key_file_error(keydir, "enc.json", {"keys": [rsa_public_jwk(use="enc", kid="e")]})
    assert "no usable verification key" in exc.reason


def test_jwks_file_empty_key_list(keydir: Path) -> None:
    exc = key_file_error(keydir, "empty.json", {"keys": []})
    assert "no usable verification key" in exc.reason


def test_jwks_file_keys_all_outside_allowlist(keydir: Path) -> None:
    write_keys(keydir, "rsa.json", {"keys": [rsa_public_jwk(kid="r")]})
    text = one_provider("algorithms: [ES256]", jwks="file: keys/rsa.json")
    exc = policy_error(text, keydir)
    assert_located(exc, key_path="providers.corp.jwks.file", line=line_of(text, "file:"))
    assert "no usable verification key" in exc.reason


def test_jwks_file_not_json(keydir: Path) -> None:
    exc = key_file_error(keydir, "junk.json", b"this is not a key")
    assert "neither PEM nor valid JSON" in exc.reason


@pytest.mark.parametrize("size", [1, 16, 31])
@pytest.mark.parametrize("alg", ["HS256", None])
def test_hmac_key_shorter_than_hash(keydir: Path, size: int, alg: str | None) -> None:
    jwk = {"kty": "oct", "k": b64url(b"s" * size), "kid": "h", "alg": alg}
    exc = key_file_error(keydir, "hmac.json", {"keys": [{k: v for k, v in jwk.items() if v}]})
    assert f"HMAC key is {size} bytes" in exc.reason


def test_empty_hmac_key(keydir: Path) -> None:
    jwk = {"kty": "oct", "k": "", "kid": "h", "alg": "HS256"}
    exc = key_file_error(keydir, "hmac.json", {"keys": [jwk]})
    assert "empty" in exc.reason or "0 bytes" in exc.reason


def test_hmac_key_too_short_for_its_declared_alg(keydir: Path) -> None:
    # 40 bytes are enough for HS256 but not for HS384 (48 bytes)
    jwk = {"kty": "oct", "k": b64url(b"s" * 40), "kid": "h", "alg": "HS384"}
    exc = key_file_error(keydir, "hmac.json", {"keys": [jwk]})
    assert "HS384" in exc.reason


def test_hmac_key_of_hash_length_is_fine(keydir: Path) -> None:
    jwk = {"kty": "oct", "k": b64url(b"s" * 32), "kid": "h", "alg": "HS256"}
    write_keys(keydir, "hmac.json", {"keys": [jwk]})
    policy = load_policy_text(one_provider(jwks="file: keys/hmac.json"), NAME, base=keydir)
    assert policy.providers["corp"].jwks.key_set.algorithms == {"HS256"}  # type: ignore[union-attr]


def test_rsa_key_under_2048_bits_jwk(keydir: Path) -> None:
    exc = key_file_error(keydir, "weak.json", {"keys": [rsa_public_jwk(1024, kid="weak")]})
    assert "RSA key is 1024 bits" in exc.reason


def test_rsa_key_under_2048_bits_pem(keydir: Path) -> None:
    public = rsa.generate_private_key(65537, 1024).public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    exc = key_file_error(keydir, "weak.pem", pem)
    assert "RSA key is 1024 bits" in exc.reason


def test_private_jwk(keydir: Path, corp: TestIssuer) -> None:
    private = corp.key.as_dict(private=True)
    assert "d" in private
    exc = key_file_error(keydir, "private.json", {"keys": [private]})
    assert "private key material" in exc.reason


def test_private_pem(keydir: Path, corp: TestIssuer) -> None:
    pem = corp.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    exc = key_file_error(keydir, "private.pem", pem)
    assert "private key" in exc.reason


def test_private_key_inline(tmp_path: Path, corp: TestIssuer) -> None:
    inline = json.dumps(corp.key.as_dict(private=True))
    text = one_provider(jwks=f"inline: '{inline}'")
    exc = policy_error(text, tmp_path)
    assert_located(exc, key_path="providers.corp.jwks.inline", line=line_of(text, "inline:"))
    assert "private key material" in exc.reason


def test_oct_mixed_with_rsa(keydir: Path) -> None:
    oct_key = {"kty": "oct", "k": b64url(b"s" * 32), "kid": "h"}
    exc = key_file_error(keydir, "mixed.json", {"keys": [rsa_public_jwk(kid="r"), oct_key]})
    assert "mixes HMAC" in exc.reason


def test_duplicate_kid(keydir: Path) -> None:
    keys = [rsa_public_jwk(kid="same"), rsa_public_jwk(kid="same")]
    exc = key_file_error(keydir, "dup.json", {"keys": keys})
    assert "two keys share this kid" in exc.reason
    assert "'same'" in exc.reason


def test_duplicate_json_member_in_key_file(keydir: Path) -> None:
    raw = b'{"keys": [], "keys": []}'
    exc = key_file_error(keydir, "dupmember.json", raw)
    assert "duplicate member" in exc.reason


# --------------------------------------------------------------------------- YAML errors


def test_bad_yaml_syntax(tmp_path: Path) -> None:
    text = "version: 1\nproviders:\n  corp:\n    issuer: a: b\n"
    exc = policy_error(text, tmp_path)
    assert_located(exc, key_path="", line=4)
    assert exc.reason.startswith("invalid YAML")


def test_bad_yaml_unclosed_flow(tmp_path: Path) -> None:
    text = "version: 1\nproviders: [1, 2\nvalidation: x\n"
    exc = policy_error(text, tmp_path)
    assert_located(exc, key_path="", line=3)


def test_duplicate_yaml_key(keydir: Path) -> None:
    text = one_provider("issuer: https://other.example")
    exc = policy_error(text, keydir)
    assert_located(exc, key_path="", line=line_of(text, "issuer:", nth=2))
    assert "duplicate key" in exc.reason


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    exc = policy_error("- just\n- a list\n", tmp_path)
    assert_located(exc, key_path="", line=None)
    assert "expected a mapping" in exc.reason


@pytest.mark.parametrize("field", ["cache_duration", "timeout"])
@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_remote_durations_must_be_finite(tmp_path: Path, field: str, value: str) -> None:
    text = one_provider(jwks=f"url: https://idp/jwks\n      {field}: {value}")
    exc = policy_error(text, tmp_path)
    assert_located(exc, key_path=f"providers.corp.jwks.{field}", line=line_of(text, field))


def test_claim_cannot_be_copied_into_a_token_header(keydir: Path) -> None:
    text = one_provider("    claims_to_headers:\n      - {claim: sub, header: Authorization}\n")
    exc = policy_error(text, keydir)
    assert_located(
        exc,
        key_path="providers.corp.claims_to_headers[0].header",
        line=line_of(text, "header: Authorization"),
    )
    assert "carries tokens" in str(exc)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_durations_are_refused(keydir: Path, value: str) -> None:
    text = one_provider(f"    clock_skew: {value}\n")
    assert_located(
        policy_error(text, keydir),
        key_path="providers.corp.clock_skew",
        line=line_of(text, "clock_skew"),
    )


def test_forward_payload_header_is_an_identity_header(keydir: Path) -> None:
    policy = load_policy_text(
        one_provider("forward_payload_header: X-Jwt-Payload"), "policy.yaml", keydir
    )
    assert policy.providers["corp"].forward_payload_header == "x-jwt-payload"
    assert "x-jwt-payload" in policy.identity_headers  # client copies are always stripped


# --- regular expressions: RE2, refused constructs located (docs/policy.md) --------------------

REGEX_POLICY = """\
rbac:
  policies:
    - name: files
      action: allow
      principals:
        - claims: {{email: {{regex: '{claim}'}}}}
      permissions:
        paths: [{{prefix: /pub}}, {{regex: '{path}'}}]
routes:
  - name: mail
    match: {{headers: {{x-email: {{regex: '{header}'}}}}}}
    upstream: http://127.0.0.1:8082
"""
GOOD = {"claim": "[a-z.]+@corp[.]test", "path": "/files/([a-z0-9]+/?)+", "header": "(?i).+@x"}


def regex_policy(**patterns: str) -> str:
    return one_provider() + REGEX_POLICY.format(**{**GOOD, **patterns})


@pytest.mark.parametrize(
    ("where", "pattern", "key_path", "needle"),
    [
        ("path", "/files/(a)\\1", "rbac.policies[0].permissions.paths[1].regex", "paths:"),
        ("path", "/(?=admin).*", "rbac.policies[0].permissions.paths[1].regex", "paths:"),
        ("path", "/files/[a-z]{,8}", "rbac.policies[0].permissions.paths[1].regex", "paths:"),
        ("claim", "(?<!x)@corp", "rbac.policies[0].principals[0].claims.email.regex", "email"),
        ("claim", "[a-z]++@corp", "rbac.policies[0].principals[0].claims.email.regex", "email"),
        ("header", "(?>a|ab)c", "routes[0].match.headers.x-email.regex", "x-email"),
        ("header", "a\\Z", "routes[0].match.headers.x-email.regex", "x-email"),
    ],
)
def test_regex_that_re2_cannot_run_is_located(
    keydir: Path, where: str, pattern: str, key_path: str, needle: str
) -> None:
    text = regex_policy(**{where: pattern})
    exc = policy_error(text, keydir)
    assert_located(exc, key_path=key_path, line=line_of(text, needle))
    assert f"invalid regular expression {pattern!r}" in exc.reason


def test_policy_regexes_are_linear_and_full_matches(keydir: Path) -> None:
    import time

    policy = load_policy_text(regex_policy(), NAME, base=keydir)
    assert policy.rbac is not None
    [files] = policy.rbac.allow
    assert files.permissions is not None and files.permissions.paths is not None
    paths = files.permissions.paths
    [principal] = files.principals or ()
    assert principal.claims is not None
    started = time.perf_counter()
    # `re` took over 10 s on 28 letters, twice as long with every one more; RE2 is linear
    assert not paths.matches("/files/" + "a" * 50_000 + "!")
    assert not principal.claims.matches({"email": "a" * 50_000 + "!"})
    assert time.perf_counter() - started < 1.0
    assert paths.matches("/files/a1/b2/")
    assert not paths.matches("/x/files/a1")  # a full match, not a search
    assert paths.matches("/pub/anything")
    assert principal.claims.matches({"email": "ann.lee@corp.test"})
    assert not principal.claims.matches({"email": "ann.lee@corp.test.evil"})


# -- cors_preflight and max_stale ---------------------------------------------------------------


def test_cors_preflight_defaults_to_verify_and_takes_bypass(keydir: Path) -> None:
    assert load_policy_text(one_provider(), NAME, base=keydir).cors_preflight_bypass is False
    verify = one_provider() + "cors_preflight: verify\n"
    assert load_policy_text(verify, NAME, base=keydir).cors_preflight_bypass is False
    bypass = one_provider() + "cors_preflight: bypass\n"
    assert load_policy_text(bypass, NAME, base=keydir).cors_preflight_bypass is True


@pytest.mark.parametrize("value", ["true", "allow", "Bypass", "''", "[bypass]"])
def test_cors_preflight_wrong_value_is_located(keydir: Path, value: str) -> None:
    text = one_provider() + f"cors_preflight: {value}\n"
    exc = policy_error(text, keydir)
    assert_located(exc, key_path="cors_preflight", line=line_of(text, "cors_preflight"))


def test_max_stale_is_parsed_and_defaults_to_no_bound(tmp_path: Path) -> None:
    plain = one_provider(jwks="url: https://idp/jwks")
    jwks = load_policy_text(plain, NAME, base=tmp_path).providers["corp"].jwks
    assert isinstance(jwks, RemoteJwks) and jwks.max_stale is None
    text = one_provider(jwks="url: https://idp/jwks\n      cache_duration: 1m\n      max_stale: 1h")
    jwks = load_policy_text(text, NAME, base=tmp_path).providers["corp"].jwks
    assert isinstance(jwks, RemoteJwks) and jwks.max_stale == 3600.0
    equal = one_provider(jwks="url: https://idp/jwks\n      cache_duration: 2s\n      max_stale: 2")
    jwks = load_policy_text(equal, NAME, base=tmp_path).providers["corp"].jwks
    assert isinstance(jwks, RemoteJwks) and jwks.max_stale == 2.0
    discovery = one_provider(jwks="discovery: true\n      max_stale: 1d")
    jwks = load_policy_text(discovery, NAME, base=tmp_path).providers["corp"].jwks
    assert isinstance(jwks, RemoteJwks) and jwks.max_stale == 86400.0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("0", "must be more than 0"),
        ("0s", "must be more than 0"),
        ("-5m", "expected a duration"),
        ("-1", "cannot be negative"),
        ("4m", "must be at least cache_duration (300s)"),
        ("299.5", "must be at least cache_duration (300s)"),
        (".inf", "finite"),
        ("soon", "expected a duration"),
    ],
)
def test_max_stale_bad_values_are_located(tmp_path: Path, value: str, reason: str) -> None:
    text = one_provider(jwks=f"url: https://idp/jwks\n      max_stale: {value}")
    exc = policy_error(text, tmp_path)
    assert_located(exc, key_path="providers.corp.jwks.max_stale", line=line_of(text, "max_stale"))
    assert reason in exc.reason


def test_max_stale_with_local_keys_is_located(keydir: Path) -> None:
    text = one_provider(jwks="file: keys/corp.jwks.json\n      max_stale: 1h")
    exc = policy_error(text, keydir)
    assert_located(exc, key_path="providers.corp.jwks.max_stale", line=line_of(text, "max_stale"))
    assert "only applies to a remote JWKS" in exc.reason
