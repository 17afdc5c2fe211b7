"""Tokens from a real identity provider (docs/external-tokens.md).

1. The lab's token endpoint follows RFC 6749 (authlib's own client gets tokens with both client
   authentication methods; refusals are the RFC's errors).
2. The scenario syntax: what loads, and what is refused with key path and line.
3. End to end through a real mitmdump: an issuer found by OIDC discovery on a loopback token
   endpoint, a policy whose remote keys come from it, users with client credentials and
   password grants, tokens from a file and from a command; no token or secret in the output
   or in any file of the run directory.
4. Errors stop the run before traffic with exit 2 or 3 and say which: a closed port, a
   refusing endpoint, an unset variable, a failing command, a short token file.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.integrations.base_client import OAuthError
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt
from joserfc.jwk import KeySet

from claimroute.config.source import parse_yaml_text
from claimroute.errors import PolicyError
from claimroute_tools.lab import JwksServer, TestIssuer, TokenEndpoint
from claimroute_tools.scenario import cli
from claimroute_tools.scenario.model import parse_scenario
from claimroute_tools.scenario.tokens import Provider, TokenFetchFailed, resolve_provider
from tests.tools.test_schemas import SCENARIO

with warnings.catch_warnings():  # authlib says once that it found httpx rather than httpx2
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client

SECRET = "s3cret-client-value-9f2c"  # distinctive: grepped for in every output
PASSWORD = "pa55-user-value-71ad"


def make_endpoint() -> TokenEndpoint:
    endpoint = TokenEndpoint(TestIssuer("idp", "ES256"), audience="orders-api")
    endpoint.add_client("svc", SECRET, grant_types=("client_credentials",), claims={"kind": "svc"})
    endpoint.add_client("app", SECRET)
    endpoint.add_client("public-app", None, grant_types=("password",))
    for i in range(1, 5):
        org = "solo.io" if i <= 2 else "example.com"
        endpoint.add_user(f"employees-{i}", PASSWORD, {"org": org})
    return endpoint


# -- 1. the token endpoint -------------------------------------------------------------------


@pytest.fixture
async def endpoint() -> Any:
    server = make_endpoint()
    await server.start()
    yield server
    await server.stop()


def verified(endpoint: TokenEndpoint, token: str) -> dict[str, Any]:
    """The token's claims, verified independently (joserfc) against the served JWKS."""
    keys = KeySet.import_key_set(endpoint.signer.public_jwks())
    return jwt.decode(token, keys).claims


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_client_credentials_with_both_auth_methods(
    endpoint: TokenEndpoint, method: str
) -> None:
    async with AsyncOAuth2Client(
        "svc", SECRET, token_endpoint_auth_method=method, scope="orders:read"
    ) as client:
        token = await client.fetch_token(endpoint.token_url, grant_type="client_credentials")
    assert token["token_type"] == "Bearer" and token["expires_in"] == 600
    assert token["scope"] == "orders:read"
    claims = verified(endpoint, token["access_token"])
    assert claims["iss"] == endpoint.issuer and claims["sub"] == "svc"
    assert claims["aud"] == "orders-api" and claims["scope"] == "orders:read"
    assert claims["kind"] == "svc" and claims["client_id"] == "svc"


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", "none"])
async def test_password_grant(endpoint: TokenEndpoint, method: str) -> None:
    client_id, secret = ("public-app", None) if method == "none" else ("app", SECRET)
    async with AsyncOAuth2Client(client_id, secret, token_endpoint_auth_method=method) as client:
        token = await client.fetch_token(
            endpoint.token_url, grant_type="password", username="employees-1", password=PASSWORD
        )
    claims = verified(endpoint, token["access_token"])
    assert claims["sub"] == "employees-1" and claims["org"] == "solo.io"


async def test_token_responses_are_json_and_not_cached(endpoint: TokenEndpoint) -> None:
    async with httpx.AsyncClient() as http:
        good = await http.post(
            endpoint.token_url, data={"grant_type": "client_credentials"}, auth=("svc", SECRET)
        )
        bad = await http.post(
            endpoint.token_url, data={"grant_type": "client_credentials"}, auth=("svc", "nope")
        )
    for response in (good, bad):
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["pragma"] == "no-cache"
    assert good.status_code == 200 and good.json()["token_type"] == "Bearer"
    # RFC 6749 §5.2: a client that tried HTTP Basic gets 401 and a Basic challenge.
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    assert bad.headers["www-authenticate"].startswith("Basic ")


async def test_refusals_are_rfc_6749_errors(endpoint: TokenEndpoint) -> None:
    async def post(data: dict[str, str], auth: tuple[str, str] | None) -> httpx.Response:
        async with httpx.AsyncClient() as http:
            return await http.post(endpoint.token_url, data=data, auth=auth)

    cases = [
        ({"grant_type": "password", "username": "employees-1", "password": "x"},
         ("app", SECRET), 400, "invalid_grant"),
        ({"grant_type": "password", "username": "nobody", "password": PASSWORD},
         ("app", SECRET), 400, "invalid_grant"),
        ({"grant_type": "client_credentials"}, ("nobody", SECRET), 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, None, 401, "invalid_client"),
        ({"grant_type": "authorization_code", "code": "x"}, ("app", SECRET), 400,
         "unsupported_grant_type"),
        ({"grant_type": "password", "username": "employees-1", "password": PASSWORD},
         ("svc", SECRET), 400, "unauthorized_client"),
    ]  # fmt: skip
    for data, auth, status, error in cases:
        response = await post(data, auth)
        assert (response.status_code, response.json()["error"]) == (status, error), data
    async with httpx.AsyncClient() as http:
        response = await http.post(
            endpoint.token_url, json={"grant_type": "client_credentials"}, auth=("svc", SECRET)
        )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    async with httpx.AsyncClient() as http:
        twice = await http.post(
            endpoint.token_url,
            content="grant_type=client_credentials&scope=a&scope=b",
            headers={"content-type": "application/x-www-form-urlencoded"},
            auth=("svc", SECRET),
        )
        both = await http.post(
            endpoint.token_url,
            data={"grant_type": "client_credentials", "client_id": "svc", "client_secret": SECRET},
            auth=("svc", SECRET),
        )
    for response in (twice, both):
        assert response.status_code == 400 and response.json()["error"] == "invalid_request"


async def test_authlib_client_sees_the_refusal(endpoint: TokenEndpoint) -> None:
    async with AsyncOAuth2Client("svc", "wrong") as client:
        with pytest.raises(OAuthError) as caught:
            await client.fetch_token(endpoint.token_url, grant_type="client_credentials")
    assert caught.value.error == "invalid_client"


async def test_discovery_document_and_jwks(endpoint: TokenEndpoint) -> None:
    async with httpx.AsyncClient() as http:
        document = (await http.get(endpoint.discovery_url)).json()
        jwks = (await http.get(endpoint.jwks_url)).json()
    metadata = OpenIDProviderMetadata(document)
    checks = ["issuer", "jwks_uri", "token_endpoint", "grant_types_supported",
              "token_endpoint_auth_methods_supported"]  # fmt: skip
    for check in checks:
        getattr(metadata, f"validate_{check}")()
    assert document["issuer"] == endpoint.issuer
    assert document["token_endpoint"] == endpoint.token_url
    assert [k["kid"] for k in jwks["keys"]] == ["idp-1"] and "d" not in jwks["keys"][0]


async def test_discovery_resolves_the_provider(endpoint: TokenEndpoint) -> None:
    scenario = load(
        "  - {name: a, issuer: idp, token: {file: t.txt}}",
        issuers=f'  idp: {{external: {{discovery: "{endpoint.discovery_url}"}}}}',
    )
    provider = await resolve_provider(scenario.issuers["idp"])
    assert provider == Provider("idp", endpoint.issuer, endpoint.jwks_url, endpoint.token_url)


async def test_discovery_naming_another_issuer_is_refused() -> None:
    issuer = TestIssuer("other", "ES256")
    async with JwksServer() as server:
        server.add(issuer, discovery=True)
        server.set_issuer_override("other", "http://127.0.0.1:1/impostor")
        scenario = load(
            "  - {name: a, issuer: idp, token: {file: t.txt}}",
            issuers=f'  idp: {{external: {{discovery: "{server.discovery_url("other")}"}}}}',
        )
        with pytest.raises(TokenFetchFailed) as caught:
            await resolve_provider(scenario.issuers["idp"])
    assert "names issuer 'http://127.0.0.1:1/impostor'" in str(caught.value)


# -- 2. the scenario syntax ------------------------------------------------------------------

BASE = """\
version: 1
issuers:
  idp: {external: {discovery: "http://127.0.0.1:9/.well-known/openid-configuration"}}
  corp: {alg: ES256, serve: file}
upstreams: [primary]
policy:
  version: 1
  providers:
    idp: {issuer: "${issuers.idp.issuer}", jwks: {url: "${issuers.idp.jwks_url}"}}
users:
USERS
traffic: {requests: 10}
STEPS
expect:
  - {status: 200}
"""


def document(users: str, steps: str = "", issuers: str | None = None) -> Any:
    return parse_yaml_text(text_of(users, steps, issuers), "s.yaml")[0]


def load(users: str, steps: str = "", issuers: str | None = None) -> Any:
    document, root = parse_yaml_text(text_of(users, steps, issuers), "s.yaml")
    return parse_scenario(document, root, Path("s.yaml"))


def text_of(users: str, steps: str = "", issuers: str | None = None) -> str:
    text = BASE.replace("USERS", users).replace("STEPS", steps)
    if issuers is not None:
        text = text.replace(
            '  idp: {external: {discovery: "http://127.0.0.1:9/.well-known/openid-configuration"}}',
            issuers,
        )
    return text


CC = "{grant: client_credentials, client_id: svc, client_secret_env: SECRET_VAR}"


VALID_USERS = (
    f"  - {{name: a, count: 2, issuer: idp, token: {CC}}}\n"
    "  - {name: b, issuer: idp, token: {grant: password, client_id: app, "
    'username: "{name}-{i}", password_env: PW, auth_method: client_secret_post, '
    "client_secret_env: S}}\n"
    "  - {name: c, issuer: idp, token: {grant: password, client_id: pub, username: u, "
    "password_env: PW}}\n"
    "  - {name: d, issuer: idp, token: {file: tokens.txt}}\n"
    "  - {name: e, issuer: idp, token: {command: [gettoken, '{i}'], timeout: 5s}}\n"
    "  - {name: f, token: none}\n"
    "  - {name: g, issuer: corp}\n"
)


def test_every_token_source_loads() -> None:
    scenario = load(VALID_USERS)
    kinds = [p.token_source.kind if p.token_source else None for p in scenario.users]
    assert kinds == ["client_credentials", "password", "password", "file", "command", None, None]
    assert scenario.users[1].token_source.auth_method == "client_secret_post"
    assert scenario.users[4].token_source.command == ("gettoken", "{i}")
    assert scenario.users[5].anonymous and not scenario.users[6].anonymous
    assert scenario.issuers["idp"].external.discovery.endswith("openid-configuration")


# Loader-only (the schema cannot see across sections): which issuer is external or a test
# issuer, which has a token endpoint, which one a step names.
CROSS_REFERENCES = ("test issuer", "give the population a token", "needs a token endpoint",
                    "is external")  # fmt: skip
BAD = [
    (f"  - {{name: a, issuer: idp, token: {CC}, claims: {{org: x}}}}", "", None,
     "users[0].claims", "shapes tokens the runner mints"),
    (f"  - {{name: a, issuer: idp, token: {CC}, tamper: expired}}", "", None,
     "users[0].tamper", "external"),
    (f"  - {{name: a, issuer: idp, token: {CC}, sub: x}}", "", None, "users[0].sub",
     "read from each token"),
    ("  - {name: a, issuer: idp}", "", None, "users[0].issuer", "give the population a token"),
    (f"  - {{name: a, issuer: corp, token: {CC}}}", "", None, "users[0].token",
     "test issuer"),
    ("  - {name: a, issuer: idp, token: {grant: client_credentials, client_id: svc, "
     "client_secret: hunter2}}", "", None, "users[0].token.client_secret",
     "never goes in the scenario file"),
    ("  - {name: a, issuer: idp, token: {grant: client_credentials, client_id: svc, "
     "client_secret_env: 'not a var'}}", "", None,
     "users[0].token.client_secret_env", "environment variable name"),
    ("  - {name: a, issuer: idp, token: {grant: implicit, client_id: svc}}", "", None,
     "users[0].token.grant", "client_credentials, password"),
    ("  - {name: a, issuer: idp, token: {file: t.txt, command: [x]}}", "", None,
     "users[0].token", "exactly one of grant"),
    ("  - {name: a, issuer: idp, token: {grant: password, client_id: pub, username: u, "
     "password_env: PW, auth_method: client_secret_post}}", "", None,
     "users[0].token.auth_method", "has none"),
    ("  - {name: a, issuer: idp, token: {file: t.txt}}",
     "steps:\n  - {at: 50%, action: rotate_keys, issuer: idp}", None, "steps[0].issuer",
     "is external"),
    ("  - {name: a, issuer: idp, token: {file: t.txt}}",
     "steps:\n  - {at: 50%, action: stop_jwks, issuer: idp}", None, "steps[0].issuer",
     "is external"),
    ("  - {name: a, issuer: idp, token: {file: t.txt}}", "",
     "  idp: {alg: ES256, external: {discovery: "
     '"http://127.0.0.1:9/.well-known/openid-configuration"}}',
     "issuers.idp.alg", "external issuer has no alg"),
    ("  - {name: a, issuer: idp, token: {file: t.txt}}", "",
     '  idp: {external: {discovery: "http://127.0.0.1:9/x", issuer: "https://i"}}',
     "issuers.idp.external.issuer", "comes from the discovery document"),
    ("  - {name: a, issuer: idp, token: {file: t.txt}}", "",
     '  idp: {external: {discovery: "http://127.0.0.1:9/x"}}',
     "issuers.idp.external.discovery", "/.well-known/openid-configuration"),
    ("  - {name: a, issuer: idp, token: {file: t.txt}}", "",
     '  idp: {external: {issuer: "https://i"}}', "issuers.idp.external", "jwks_url"),
    (f"  - {{name: a, issuer: idp, token: {CC}}}", "",
     '  idp: {external: {issuer: "https://i", jwks_url: "http://127.0.0.1:9/j"}}',
     "users[0].token.grant", "needs a token endpoint"),
    (f"  - {{name: a, issuer: idp, token: {CC}}}", "",
     '  idp: {external: {issuer: "https://i", jwks_url: "http://127.0.0.1:9/j", '
     'token_endpoint: "http://idp.example.com/token"}}',
     "issuers.idp.external.token_endpoint", "use https (http only on loopback)"),
    ("  - {name: a, issuer: idp, token: {file: t.txt}}", "",
     '  idp: {external: {issuer: "https://i", jwks_url: "http://u:p@127.0.0.1:9/j"}}',
     "issuers.idp.external.jwks_url", "credentials do not go in a URL"),
    ("  - {name: a, issuer: idp, token: secret}", "", None, "users[0].token",
     "token: none"),
    ]  # fmt: skip


@pytest.mark.parametrize(("users", "steps", "issuers", "where", "says"), BAD)
def test_bad_token_settings_are_load_errors(
    users: str, steps: str, issuers: str | None, where: str, says: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        load(users, steps, issuers)
    assert caught.value.key_path == where, str(caught.value)
    assert says in caught.value.reason
    assert caught.value.line is not None and caught.value.file == "s.yaml"


@pytest.mark.parametrize(
    ("users", "steps", "issuers", "where", "says"),
    [case for case in BAD if case[4] not in CROSS_REFERENCES],
)
def test_the_schema_refuses_what_the_loader_refuses(
    users: str, steps: str, issuers: str | None, where: str, says: str
) -> None:
    assert list(SCENARIO.iter_errors(document(users, steps, issuers)))


def test_the_schema_accepts_every_token_source() -> None:
    errors = [e.message for e in SCENARIO.iter_errors(document(VALID_USERS))]
    assert not errors


def test_an_external_issuer_has_no_jwks_file() -> None:
    text = (
        BASE.replace("USERS", "  - {name: a, issuer: idp, token: {file: t.txt}}")
        .replace("STEPS", "")
        .replace(
            'jwks: {url: "${issuers.idp.jwks_url}"}', 'jwks: {file: "${issuers.idp.jwks_file}"}'
        )
    )
    document, root = parse_yaml_text(text, "s.yaml")
    with pytest.raises(PolicyError) as caught:
        parse_scenario(document, root, Path("s.yaml"))
    assert "is external; its keys are at jwks_url" in str(caught.value)


# -- 3. end to end through a real mitmdump ---------------------------------------------------


class ThreadedEndpoint:
    """A TokenEndpoint on its own event loop in a thread (cli.main runs asyncio.run)."""

    def __init__(self, endpoint: TokenEndpoint) -> None:
        self.endpoint = endpoint
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> TokenEndpoint:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.endpoint.start(), self.loop).result(30)
        return self.endpoint

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.endpoint.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def idp() -> Iterator[TokenEndpoint]:
    with ThreadedEndpoint(make_endpoint()) as endpoint:
        yield endpoint


def scenario_text(discovery: str, users: str, expect: str) -> str:
    return f"""\
version: 1
name: external-idp
issuers:
  idp: {{external: {{discovery: "{discovery}"}}}}
upstreams: [primary, canary]
policy:
  version: 1
  providers:
    idp:
      issuer: "${{issuers.idp.issuer}}"
      audiences: [orders-api]
      jwks: {{url: "${{issuers.idp.jwks_url}}"}}
  routes:
    - name: employees-to-canary
      match: {{claims: {{org: solo.io}}}}
      upstream: "${{upstreams.canary.url}}"
users:
{users}
traffic: {{requests: 60, concurrency: 4}}
expect:
{expect}
"""


CC_USERS = (
    "  - {name: services, count: 3, issuer: idp, token: {grant: client_credentials, "
    "client_id: svc, client_secret_env: CR_TEST_SECRET, scope: orders:read}}"
)
PW_USERS = (
    "  - {name: employees, count: 4, issuer: idp, token: {grant: password, client_id: app, "
    'client_secret_env: CR_TEST_SECRET, auth_method: client_secret_post, username: "{name}-{i}", '
    "password_env: CR_TEST_PASSWORD}}"
)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages on one line each (rich wraps at 80 columns off a terminal)."""
    monkeypatch.setenv("COLUMNS", "400")


def run_cli(*args: str) -> int:
    return cli.main([*args, "--no-progress"])


def assert_no_secret_anywhere(texts: list[str], run_dir: Path, tokens: list[str]) -> None:
    # A token's first segment and dot: even a cut-off token would show it.
    secrets = [SECRET, PASSWORD, *tokens, *{token.split(".")[0] + "." for token in tokens}]
    for text in texts:
        for secret in secrets:
            assert secret not in text
    for path in run_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in content, f"{path} holds a secret or a token"


@pytest.mark.e2e
def test_grants_end_to_end(
    idp: TokenEndpoint,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CR_TEST_SECRET", SECRET)
    monkeypatch.setenv("CR_TEST_PASSWORD", PASSWORD)
    path = tmp_path / "external.yaml"
    path.write_text(
        scenario_text(
            idp.discovery_url,
            f"{CC_USERS}\n{PW_USERS}\n  - {{name: anonymous, count: 2, token: none}}",
            "  - {users: employees, route: employees-to-canary, upstream: canary, status: 200}\n"
            "  - {users: services, upstream: primary, status: 200}\n"
            "  - {users: anonymous, status: 401}\n"
            "  - {sticky: true}\n"
            "  - {route: employees-to-canary, formula: true}",
        )
    )
    out_dir = tmp_path / "run"
    code = run_cli(str(path), "--out", str(out_dir))
    out = capsys.readouterr()
    report = json.loads((out_dir / "report.json").read_text())
    assert code == 0, f"{out.out}\n{out.err}"
    assert report["result"]["passed"] is True
    # One client-credentials token for the population; one password-grant token per user.
    assert idp.issued == 1 + 4
    populations = {p["name"]: p for p in report["populations"]}
    assert populations["services"]["tokens_minted"] == 1
    assert populations["employees"]["tokens_minted"] == 4
    assert populations["employees"]["kids"] and set(populations["employees"]["kids"]) == {"idp-1"}
    # Employees 1 and 2 are solo.io (the endpoint's claims, not the scenario's): half of them.
    decisions = [
        json.loads(line) for line in (out_dir / "decisions.jsonl").read_text().splitlines()
    ]
    subs = {d.get("sub") for d in decisions}
    assert {"svc", "employees-1", "employees-4"} <= subs
    assert len(idp.issued_tokens) == 5
    assert_no_secret_anywhere([out.out, out.err], out_dir, idp.issued_tokens)


@pytest.mark.e2e
def test_tokens_from_a_file_and_a_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signer = TestIssuer("idp", "ES256")
    with ThreadedEndpoint(TokenEndpoint(signer, audience="orders-api")) as idp:
        file_tokens = [
            signer.mint(
                f"file-user-{i}", {"org": "solo.io" if i == 1 else "x", "aud": "orders-api"}
            )
            for i in (1, 2, 3)
        ]
        (tmp_path / "tokens.txt").write_text("# one per user\n" + "\n".join(file_tokens) + "\n")
        # The command mints with the same key: a stand-in for a provider's CLI login.
        key_path = tmp_path / "key.json"
        key_path.write_text(json.dumps(signer.key.as_dict(private=True)))
        script = (
            "import sys, json; from joserfc import jwt; from joserfc.jwk import ECKey; "
            f"k = ECKey.import_key(json.load(open({str(key_path)!r}))); "
            "import time; now = int(time.time()); "
            f"print(jwt.encode({{'alg': 'ES256', 'kid': 'idp-1'}}, {{'iss': {idp.issuer!r}, "
            "'sub': 'cmd-' + sys.argv[1] + '-' + sys.argv[2], 'aud': 'orders-api', "
            "'org': 'solo.io', 'iat': now, 'exp': now + 600}, k))"
        )
        users = (
            "  - {name: filed, count: 3, issuer: idp, token: {file: tokens.txt}}\n"
            f"  - {{name: scripted, count: 2, issuer: idp, token: {{command: "
            f"[{sys.executable!r}, -c, {json.dumps(script)}, '{{name}}', '{{i}}']}}}}"
        )
        path = tmp_path / "sources.yaml"
        path.write_text(
            scenario_text(
                idp.discovery_url,
                users,
                "  - {users: scripted, upstream: canary, status: 200}\n"
                "  - {users: filed, status: 200}\n"
                "  - {sticky: true}",
            )
        )
        out_dir = tmp_path / "run"
        code = run_cli(str(path), "--out", str(out_dir))
    out = capsys.readouterr()
    assert code == 0, f"{out.out}\n{out.err}"
    decisions = [
        json.loads(line) for line in (out_dir / "decisions.jsonl").read_text().splitlines()
    ]
    subs = {d.get("sub") for d in decisions}
    assert {"file-user-1", "file-user-3", "cmd-scripted-1", "cmd-scripted-2"} <= subs
    routed = {d.get("sub"): d.get("route") for d in decisions}
    assert routed["file-user-1"] == "employees-to-canary" and routed["file-user-2"] is None
    report = json.loads((out_dir / "report.json").read_text())
    populations = {p["name"]: p for p in report["populations"]}
    assert populations["filed"]["tokens_minted"] == 3
    assert populations["scripted"]["tokens_minted"] == 2
    assert_no_secret_anywhere([out.out, out.err], out_dir, file_tokens)


# -- 4. errors before traffic ----------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_bad(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code = run_cli(str(path), "--out", str(tmp_path / "run"))
    out = capsys.readouterr()
    assert not (tmp_path / "run" / "report.json").exists()  # stopped before traffic
    return code, out.out + out.err


def given(token_endpoint: str, issuer: str = "https://idp.test") -> str:
    """An external issuer without discovery, as a scenario line."""
    return (
        f'  idp: {{external: {{issuer: "{issuer}", jwks_url: "http://127.0.0.1:9/jwks.json", '
        f'token_endpoint: "{token_endpoint}"}}}}'
    )


@pytest.mark.e2e
def test_unreachable_token_endpoint_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CR_TEST_SECRET", SECRET)
    url = f"http://127.0.0.1:{closed_port()}/token"
    text = scenario_text("http://x/.well-known/openid-configuration", CC_USERS, "  - {status: 200}")
    text = text.replace(
        '  idp: {external: {discovery: "http://x/.well-known/openid-configuration"}}', given(url)
    )
    code, output = run_bad(tmp_path, text, capsys)
    assert code == 3
    assert "infrastructure failure" in output and url in output and "unreachable" in output
    assert "services" in output and SECRET not in output


@pytest.mark.e2e
def test_unreachable_discovery_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CR_TEST_SECRET", SECRET)
    url = f"http://127.0.0.1:{closed_port()}/.well-known/openid-configuration"
    code, output = run_bad(tmp_path, scenario_text(url, CC_USERS, "  - {status: 200}"), capsys)
    assert code == 3 and "discovery document" in output and "unreachable" in output


@pytest.mark.e2e
def test_refusing_endpoint_is_exit_3_with_the_rfc_error(
    idp: TokenEndpoint,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CR_TEST_SECRET", "not-the-secret-4c1e")
    monkeypatch.setenv("CR_TEST_PASSWORD", PASSWORD)
    code, output = run_bad(
        tmp_path, scenario_text(idp.discovery_url, CC_USERS, "  - {status: 200}"), capsys
    )
    assert code == 3
    assert "refused" in output and "invalid_client" in output and "RFC 6749" in output
    assert "services" in output and "not-the-secret-4c1e" not in output
    monkeypatch.setenv("CR_TEST_SECRET", SECRET)
    monkeypatch.setenv("CR_TEST_PASSWORD", "wrong-password-77")
    code, output = run_bad(
        tmp_path, scenario_text(idp.discovery_url, PW_USERS, "  - {status: 200}"), capsys
    )
    assert code == 3 and "invalid_grant" in output and "employees#" in output
    assert "wrong-password-77" not in output


def test_unset_secret_variable_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CR_TEST_SECRET", raising=False)
    url = f"http://127.0.0.1:{closed_port()}/.well-known/openid-configuration"
    code, output = run_bad(tmp_path, scenario_text(url, CC_USERS, "  - {status: 200}"), capsys)
    assert code == 2
    assert "CR_TEST_SECRET is not set" in output and "'services'" in output
    assert "users[0].token.client_secret_env" in output and "bad.yaml:" in output


def test_short_token_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = TestIssuer("idp", "ES256").mint("only-one")
    (tmp_path / "tokens.txt").write_text(token + "\n")
    url = f"http://127.0.0.1:{closed_port()}/.well-known/openid-configuration"
    users = "  - {name: filed, count: 2, issuer: idp, token: {file: tokens.txt}}"
    code, output = run_bad(tmp_path, scenario_text(url, users, "  - {status: 200}"), capsys)
    assert code == 2 and "has 1 token(s)" in output and "2 users" in output
    (tmp_path / "tokens.txt").write_text(token + "\nnot-a-token-secret\n")
    code, output = run_bad(tmp_path, scenario_text(url, users, "  - {status: 200}"), capsys)
    assert code == 2 and "line 2 is not a compact JWT" in output
    assert "not-a-token-secret" not in output and token not in output


def test_missing_token_file_or_command_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/.well-known/openid-configuration"
    users = "  - {name: filed, count: 2, issuer: idp, token: {file: nowhere.txt}}"
    code, output = run_bad(tmp_path, scenario_text(url, users, "  - {status: 200}"), capsys)
    assert code == 2 and "nowhere.txt" in output and "users[0].token.file" in output
    users = "  - {name: cli, issuer: idp, token: {command: [no-such-login-tool-x, '{i}']}}"
    code, output = run_bad(tmp_path, scenario_text(url, users, "  - {status: 200}"), capsys)
    assert code == 2 and "'no-such-login-tool-x' not found" in output


@pytest.mark.e2e
def test_failing_command_is_exit_3_and_its_output_is_not_shown(
    idp: TokenEndpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = "import sys; print('leaked-output-5e3a'); sys.exit(4)"
    users = (
        "  - {name: scripted, count: 2, issuer: idp, token: {command: "
        f"[{sys.executable!r}, -c, {json.dumps(script)}]}}}}"
    )
    code, output = run_bad(
        tmp_path, scenario_text(idp.discovery_url, users, "  - {status: 200}"), capsys
    )
    assert code == 3 and "exited with code 4" in output and "scripted#" in output
    assert "leaked-output-5e3a" not in output
