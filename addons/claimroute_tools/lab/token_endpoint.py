"""A standards-following OAuth 2.0 token endpoint on loopback, issuing signed JWT access tokens.

`TokenEndpoint` serves, on 127.0.0.1 and a port the OS picks:

- `POST /token`: RFC 6749 client credentials (§4.4) and resource owner password credentials
  (§4.3) grants, form-encoded, with client authentication by `client_secret_basic` or
  `client_secret_post` (§2.3.1), or none for a public client of the password grant. Answers are
  JSON with `Cache-Control: no-store` (§5.1); errors are §5.2's (`invalid_client` is 401 with
  `WWW-Authenticate: Basic ...`, a wrong username or password `invalid_grant`, an unknown grant
  `unsupported_grant_type`). authlib's `AuthorizationServer` and grant classes do the protocol;
  this module is the aiohttp adapter, the client and user registry and the token generator.
- `GET /.well-known/openid-configuration` (and RFC 8414's
  `/.well-known/oauth-authorization-server`): `issuer` is the server's own URL, so discovery's
  issuer check holds.
- `GET /jwks.json`: the signing key's JWK Set.

Access tokens are JWTs signed by a `TestIssuer` (RFC 9068 profile: iss, sub, aud, exp, iat,
jti, client_id, scope), plus the claims configured for the client and, in the password grant,
for the user. `sub` is the client id (client credentials) or the username (password grant).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, InvalidGrantError, OAuth2Request, grants
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload

from claimroute_tools.lab.echo import LoopbackServer
from claimroute_tools.lab.issuer import TestIssuer

GRANTS = ("client_credentials", "password")
AUTH_METHODS = ("client_secret_basic", "client_secret_post")


@dataclass(slots=True)
class OAuthClient(ClientMixin):
    """A registered client. `client_secret` None: a public client (password grant only)."""

    client_id: str
    client_secret: str | None
    grant_types: tuple[str, ...] = GRANTS
    claims: dict[str, Any] = field(default_factory=dict)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        # Constant-time comparison, as a real server must.
        return self.client_secret is not None and secrets.compare_digest(
            self.client_secret.encode(), client_secret.encode()
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.client_secret is None:
            return method == "none"
        return method in AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass(slots=True)
class ResourceOwner:
    """A user of the password grant."""

    username: str
    password: str
    claims: dict[str, Any] = field(default_factory=dict)


class _FormRequest(OAuth2Request):
    """An OAuth2Request over an already-read form (authlib's payload system)."""

    def __init__(self, method: str, uri: str, headers: Mapping[str, str], form: dict[str, str]):
        super().__init__(method, uri, headers=headers)
        self._form = form
        self.payload = BasicOAuth2Payload(form)

    @property
    def args(self) -> dict[str, str]:
        return {}

    @property
    def form(self) -> dict[str, str]:
        return self._form


class _ClientCredentials(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class _Password(grants.ResourceOwnerPasswordCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def authenticate_user(self, username: str, password: str) -> ResourceOwner:
        # RFC 6749 §5.2: invalid resource owner credentials are `invalid_grant` (authlib's
        # default answers invalid_request).
        server: _Server = self.server
        user = server.endpoint.users.get(username)
        if user is None or not secrets.compare_digest(user.password.encode(), password.encode()):
            raise InvalidGrantError("invalid username or password")
        return user


class _Server(AuthorizationServer):
    """authlib's authorization server, fed by `TokenEndpoint`'s registry."""

    def __init__(self, endpoint: TokenEndpoint) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.register_grant(_ClientCredentials)
        self.register_grant(_Password)
        self.register_token_generator("default", endpoint.generate_token)

    def query_client(self, client_id: str) -> OAuthClient | None:
        return self.endpoint.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        self.endpoint.issued += 1
        self.endpoint.issued_tokens.append(token["access_token"])

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request  # built by the aiohttp handler

    def handle_response(
        self, status: int, body: Any, headers: list[tuple[str, str]]
    ) -> web.Response:
        response = web.Response(status=status, body=json.dumps(body).encode())
        for name, value in headers:
            response.headers[name] = value
        # RFC 6749 §5.1: no caching of token responses (authlib's error headers carry it too).
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        response.headers["Content-Type"] = "application/json"
        return response


class TokenEndpoint(LoopbackServer):
    """An OAuth 2.0 authorization server's token endpoint, discovery document and JWKS.

    Register clients with `add_client` and users with `add_user` (before or while running).
    `issued` counts the tokens issued, `token_requests` the requests to /token, and
    `issued_tokens` keeps every access token handed out (tests check none leaks anywhere).
    """

    def __init__(
        self,
        issuer: TestIssuer | None = None,
        *,
        audience: str | list[str] | None = None,
        ttl: int = 600,
    ) -> None:
        super().__init__()
        self.signer = issuer if issuer is not None else TestIssuer("idp", "RS256")
        self.audience = audience
        self.ttl = ttl
        self.clients: dict[str, OAuthClient] = {}
        self.users: dict[str, ResourceOwner] = {}
        self.issued = 0
        self.issued_tokens: list[str] = []
        self.token_requests = 0
        self._server = _Server(self)

    def add_client(
        self,
        client_id: str,
        client_secret: str | None,
        *,
        grant_types: tuple[str, ...] = GRANTS,
        claims: dict[str, Any] | None = None,
    ) -> OAuthClient:
        """Register a client; `client_secret` None makes it public (password grant only)."""
        client = OAuthClient(client_id, client_secret, grant_types, dict(claims or {}))
        self.clients[client_id] = client
        return client

    def add_user(
        self, username: str, password: str, claims: dict[str, Any] | None = None
    ) -> ResourceOwner:
        """Register a resource owner for the password grant."""
        user = ResourceOwner(username, password, dict(claims or {}))
        self.users[username] = user
        return user

    async def start(self) -> TokenEndpoint:
        """Start serving; the signer's `iss` becomes this server's URL (discovery needs it)."""
        await super().start()
        self.signer.issuer = self.issuer
        return self

    # -- URLs ---------------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        """The issuer identifier: `http://127.0.0.1:PORT`."""
        return self.url

    @property
    def token_url(self) -> str:
        """`<issuer>/token`."""
        return f"{self.url}/token"

    @property
    def jwks_url(self) -> str:
        """`<issuer>/jwks.json`."""
        return f"{self.url}/jwks.json"

    @property
    def discovery_url(self) -> str:
        """`<issuer>/.well-known/openid-configuration`."""
        return f"{self.url}/.well-known/openid-configuration"

    def metadata(self) -> dict[str, Any]:
        """The discovery document: the RFC 8414 members that are true of this server. It has
        no authorization endpoint and issues no ID tokens, so it lists no response types and
        no ID token algorithms (OIDC's rules for those do not apply)."""
        return {
            "issuer": self.issuer,
            "token_endpoint": self.token_url,
            "jwks_uri": self.jwks_url,
            "grant_types_supported": list(GRANTS),
            "token_endpoint_auth_methods_supported": [*AUTH_METHODS, "none"],
        }

    # -- tokens -------------------------------------------------------------------------------

    def generate_token(
        self,
        grant_type: str,
        client: OAuthClient,
        user: ResourceOwner | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        """authlib's token generator: a signed JWT access token (no refresh token)."""
        ttl = expires_in or self.ttl
        claims: dict[str, Any] = {
            "client_id": client.client_id,
            "jti": secrets.token_urlsafe(12),
            **client.claims,
        }
        if scope:
            claims["scope"] = scope
        if self.audience is not None:
            claims["aud"] = self.audience
        if user is not None:
            claims.update(user.claims)
        sub = user.username if user is not None else client.client_id
        access_token = self.signer.mint(sub, claims, ttl=ttl, now=time.time())
        token = {"access_token": access_token, "token_type": "Bearer", "expires_in": ttl}
        if scope:
            token["scope"] = scope
        return token

    # -- HTTP ---------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """Routes: /token, discovery (OIDC and RFC 8414 names), /jwks.json."""
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/.well-known/oauth-authorization-server", self._discovery)
        app.router.add_get("/jwks.json", self._jwks)
        return app

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        if request.content_type != "application/x-www-form-urlencoded":
            problem = "the body must be application/x-www-form-urlencoded"
            body = {"error": "invalid_request", "error_description": problem}
            return self._server.handle_response(400, body, [])
        pairs = parse_qsl(await request.text(), keep_blank_values=True)
        # RFC 6749 §3.2: parameters sent without a value are treated as omitted, and none may
        # be sent twice; §2.3: a client uses one authentication method per request.
        values = {k: v for k, v in pairs if v != ""}
        names = [k for k, _ in pairs]
        repeated = sorted({k for k in names if names.count(k) > 1})
        problem = f"repeated parameter(s): {', '.join(repeated)}" if repeated else None
        if "Authorization" in request.headers and "client_secret" in values:
            problem = "more than one client authentication method (Basic and client_secret)"
        if problem is not None:
            body = {"error": "invalid_request", "error_description": problem}
            return self._server.handle_response(400, body, [])
        # The headers stay case-insensitive: authlib looks up "Authorization" by that spelling.
        oauth_request = _FormRequest("POST", str(request.url), request.headers, values)
        return self._server.create_token_response(oauth_request)

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(self.metadata())

    async def _jwks(self, request: web.Request) -> web.Response:
        return web.json_response(self.signer.public_jwks())
