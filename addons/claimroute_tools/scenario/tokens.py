"""Tokens from a real identity provider, obtained before traffic (docs/external-tokens.md).

Three steps, each with its own exit code when it fails:

1. `prepare(scenario)` before anything starts: reads every secret from the environment and
   every token file, and checks each command exists. A variable that is not set, a file that
   is missing, too short or holds something that is not a JWT: PolicyError naming file, key
   path and line (exit 2: the scenario or its environment is wrong).
2. `resolve_provider(spec)` when the world starts: OIDC discovery (validated with authlib's
   metadata model, and the issuer checked against the discovery URL as OIDC Discovery §4.3
   requires), or the values given. Unreachable or invalid: `TokenFetchFailed` (exit 3).
3. `obtain(users, ...)` after the world is up: the OAuth 2.0 grants with authlib's httpx client
   and the commands, at most `FETCH_CONCURRENCY` at a time. An endpoint that cannot be reached
   or refuses (its RFC 6749 error code is shown), a command that fails: `TokenFetchFailed`
   (exit 3: the provider, not the file, said no).

Tokens and secrets are never logged, printed or put in a report: messages name the population,
the user, the endpoint and the variable, never a value. A command's output is never shown (it
may hold a token). Each user's `sub`, `payload` and `kid` are read from its own token.

Client credentials: the request is the same for every user of a population (one client, one
scope), so the endpoint would answer the same subject; one token is fetched per population and
shared by its users (they are instances of one service). The password grant fetches one token
per user (`username` is a template), commands run once per user, files give one line per user.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import warnings
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

import httpx
from authlib.integrations.base_client import OAuthError
from authlib.oidc.discovery import OpenIDProviderMetadata, get_well_known_url

from claimroute.errors import log_safe
from claimroute_tools.lab.issuer import split_compact
from claimroute_tools.scenario.model import IssuerSpec, Population, Scenario
from claimroute_tools.scenario.tokenspec import TokenSource, resolve_file

with warnings.catch_warnings():
    # authlib warns, once per process, that it found httpx rather than its fork httpx2.
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client

if TYPE_CHECKING:
    from claimroute_tools.scenario.traffic import User

FETCH_CONCURRENCY = 8  # token requests or commands at once
MAX_TOKEN_BYTES = 64 * 1024


class TokenFetchFailed(RuntimeError):
    """A provider or a token command failed before traffic (exit code 3). The message names
    who and where, never a token or a secret."""


@dataclass(frozen=True, slots=True)
class Provider:
    """An external issuer, resolved: what the policy's `${issuers.NAME.*}` and the grants use."""

    name: str
    issuer: str
    jwks_url: str
    token_endpoint: str | None


@dataclass(slots=True)
class Prepared:
    """What `prepare` read: secret values by variable, file tokens by population. Its repr
    shows names only."""

    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    files: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"Prepared(variables={sorted(self.secrets)}, files={sorted(self.files)})"


REDACTED = "[redacted]"


def _bounded(text: object, limit: int = 200, secrets: Collection[str] = ()) -> str:
    """A provider's words, escaped and cut (they end up on a terminal): every `secrets` value
    in them (as is, or URL-encoded as a form would carry it) replaced by REDACTED first, so an
    endpoint that echoes the request cannot make the runner print a client secret or a
    password."""
    words = str(text)
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        for form in dict.fromkeys((secret, quote(secret, safe=""), quote_plus(secret))):
            words = words.replace(form, REDACTED)
    return log_safe(words, limit)[:limit]


def _fill(template: str, population: Population, index: int) -> str:
    return template.replace("{name}", population.name).replace("{i}", str(index))


def _jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(header, payload) of a compact JWS, or None when it is not one."""
    if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        return None
    try:
        header, payload, _ = split_compact(token)
    except ValueError:  # bad base64, bad JSON (JSONDecodeError is a ValueError)
        return None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        return None
    return header, payload


# -- 1. before anything starts ---------------------------------------------------------------


def prepare(scenario: Scenario) -> Prepared:
    """Read secrets and token files, check commands. PolicyError (exit 2) names the variable,
    file or command with the population, key path and line."""
    prepared = Prepared()
    for population in scenario.users:
        source = population.token_source
        if source is None:
            continue
        for key, variable in source.variables():
            value = os.environ.get(variable)
            if not value:
                state = "is empty" if value == "" else "is not set"
                raise (source.loc / key).error(
                    f"environment variable {variable} {state} (population {population.name!r} "
                    "reads its secret from it)"
                )
            prepared.secrets[variable] = value
        if source.kind == "file":
            prepared.files[population.name] = _read_token_file(population, source, scenario.path)
        if source.kind == "command":
            program = source.command[0]
            if "{" not in program and shutil.which(program) is None:
                raise (source.loc / "command" / 0).error(
                    f"command {program!r} not found (population {population.name!r})"
                )
    return prepared


def _read_token_file(population: Population, source: TokenSource, scenario: Path) -> list[str]:
    path = resolve_file(source, scenario)
    where = source.loc / "file"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise where.error(f"cannot read {path}: {type(exc).__name__}") from None
    tokens = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if _jwt_parts(text) is None:
            # Never quote the line: it may be a secret of another kind.
            raise where.error(f"{path} line {number} is not a compact JWT (header.payload.sig)")
        tokens.append(text)
    if len(tokens) < population.count:
        raise where.error(
            f"{path} has {len(tokens)} token(s); population {population.name!r} has "
            f"{population.count} users (one line per user, in user order)"
        )
    return tokens[: population.count]


# -- 2. when the world starts ----------------------------------------------------------------


async def resolve_provider(spec: IssuerSpec) -> Provider:
    """An external issuer's issuer, JWKS URL and token endpoint (discovery or as given)."""
    external = spec.external
    assert external is not None
    if external.discovery is None:
        assert external.issuer is not None and external.jwks_url is not None
        return Provider(spec.name, external.issuer, external.jwks_url, external.token_endpoint)
    url = external.discovery
    what = f"issuer {spec.name}: discovery document {url}"
    try:
        async with httpx.AsyncClient(timeout=external.timeout, trust_env=False) as client:
            response = await client.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise TokenFetchFailed(f"{what} unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise TokenFetchFailed(f"{what} answered HTTP {response.status_code}")
    try:
        document = response.json()
    except ValueError:
        raise TokenFetchFailed(f"{what} is not JSON") from None
    if not isinstance(document, dict):
        raise TokenFetchFailed(f"{what} is not a JSON object")
    metadata = OpenIDProviderMetadata(document)
    try:
        # Only what the runner and the policy use; a full validate() would demand endpoints
        # (authorization, response types) that a client-credentials-only server need not have.
        metadata.validate_issuer()
        metadata.validate_jwks_uri()
        if document.get("token_endpoint") is not None:
            metadata.validate_token_endpoint()
    except ValueError as exc:
        raise TokenFetchFailed(f"{what} refused: {_bounded(exc)}") from None
    issuer, jwks_uri = document.get("issuer"), document.get("jwks_uri")
    if not isinstance(issuer, str) or not isinstance(jwks_uri, str):
        raise TokenFetchFailed(f"{what} needs string issuer and jwks_uri")
    # OIDC Discovery §4.3: the issuer must be the URL the document was fetched under.
    if get_well_known_url(issuer, external=True) != url:
        raise TokenFetchFailed(
            f"{what} names issuer {_bounded(issuer)!r}, whose discovery URL is not {url}"
        )
    endpoint = document.get("token_endpoint")
    return Provider(spec.name, issuer, jwks_uri, endpoint if isinstance(endpoint, str) else None)


# -- 3. after the world is up ----------------------------------------------------------------


def adopt(user: User, token: str, *, counted: bool = True) -> None:
    """Give `user` its token; `sub`, `payload` and `kid` come from the token itself."""
    parts = _jwt_parts(token)
    if parts is None:  # callers check first; a bug otherwise
        raise ValueError("not a compact JWT")
    header, payload = parts
    user.token, user.payload = token, payload
    sub = payload.get("sub")
    user.sub = sub if isinstance(sub, str) else None
    kid = header.get("kid")
    user.kid = kid if isinstance(kid, str) else None
    user.claims = {}
    if counted:
        user.mints += 1


async def obtain(
    users: list[User],
    providers: dict[str, Provider],
    prepared: Prepared,
    *,
    concurrency: int = FETCH_CONCURRENCY,
) -> int:
    """Give every user of a token-source population its token; returns how many tokens were
    obtained (a shared client-credentials token counts once). Raises TokenFetchFailed."""
    limit = asyncio.Semaphore(concurrency)
    by_population: dict[str, list[User]] = {}
    for user in users:
        if user.population.token_source is not None:
            by_population.setdefault(user.population.name, []).append(user)
    obtained = 0

    async def one(fetch: Callable[[], Awaitable[None]]) -> None:
        nonlocal obtained
        async with limit:
            await fetch()
        obtained += 1

    clients: list[AsyncOAuth2Client] = []
    try:
        async with asyncio.TaskGroup() as group:
            for name, members in by_population.items():
                population = members[0].population
                source = population.token_source
                assert source is not None
                if source.kind == "file":
                    for user, token in zip(members, prepared.files[name], strict=True):
                        adopt(user, token)
                        obtained += 1
                elif source.kind == "command":
                    for user in members:
                        group.create_task(one(partial(_by_command, user, source)))
                elif source.kind == "client_credentials":
                    provider = providers[population.issuer or ""]
                    group.create_task(one(partial(_shared, members, provider, prepared)))
                else:  # password: one client per population, one request per user
                    provider = providers[population.issuer or ""]
                    client = _client(source, prepared)
                    clients.append(client)
                    for user in members:
                        fetch = partial(_by_password, client, user, provider, prepared)
                        group.create_task(one(fetch))
    except* TokenFetchFailed as failures:
        raise failures.exceptions[0] from None
    finally:
        for client in clients:
            await client.aclose()
    return obtained


def _client(source: TokenSource, prepared: Prepared) -> AsyncOAuth2Client:
    secret = prepared.secrets.get(source.client_secret_env or "")
    return AsyncOAuth2Client(
        client_id=source.client_id,
        client_secret=secret,
        token_endpoint_auth_method=source.auth_method if secret is not None else "none",
        scope=source.scope,
        timeout=source.timeout,
        trust_env=False,  # like the runner's traffic: no proxy from the environment
        follow_redirects=False,
    )


async def _shared(members: list[User], provider: Provider, prepared: Prepared) -> None:
    source = members[0].population.token_source
    assert source is not None
    async with _client(source, prepared) as client:
        token = await _fetch(client, provider, members[0], {"grant_type": "client_credentials"})
    for position, user in enumerate(members):
        adopt(user, token, counted=position == 0)


async def _by_password(
    client: AsyncOAuth2Client, user: User, provider: Provider, prepared: Prepared
) -> None:
    source = user.population.token_source
    assert source is not None and source.username is not None and source.password_env
    username = _fill(source.username, user.population, user.index)
    params = {
        "grant_type": "password",
        "username": username,
        "password": prepared.secrets[source.password_env],
    }
    adopt(user, await _fetch(client, provider, user, params, username=username))


async def _fetch(
    client: AsyncOAuth2Client,
    provider: Provider,
    user: User,
    params: dict[str, str],
    *,
    username: str | None = None,
) -> str:
    """One token request; the access token, or TokenFetchFailed saying who and why."""
    source = user.population.token_source
    assert source is not None
    url = provider.token_endpoint
    who = f"population {user.population.name!r}"
    if username is not None:
        who += f", user {user.label} (username {username!r})"
    if url is None:
        raise TokenFetchFailed(
            f"{who}: issuer {provider.name}'s discovery document has no token_endpoint"
        )
    if source.audience is not None:
        params["audience"] = source.audience
    secrets = [v for v in (client.client_secret, params.get("password")) if isinstance(v, str)]
    try:
        token = await client.fetch_token(url, **params)
    except OAuthError as exc:
        error = _bounded(exc.error, 60, secrets)
        described = _bounded(exc.description, 200, secrets) if exc.description else ""
        raise TokenFetchFailed(
            f"{who}: token endpoint {url} refused the request: {error} "
            f"(RFC 6749 §5.2){': ' + described if described else ''}"
        ) from None
    except httpx.HTTPStatusError as exc:
        raise TokenFetchFailed(
            f"{who}: token endpoint {url} answered HTTP {exc.response.status_code} "
            "without an RFC 6749 error"
        ) from None
    except httpx.HTTPError as exc:
        raise TokenFetchFailed(
            f"{who}: token endpoint {url} unreachable: {type(exc).__name__}: "
            f"{_bounded(exc, secrets=secrets)}"
        ) from None
    access = token.get("access_token")
    token_type = token.get("token_type")
    if not isinstance(access, str) or not access:
        raise TokenFetchFailed(f"{who}: token endpoint {url} answered no access_token")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenFetchFailed(
            f"{who}: token endpoint {url} answered token_type {_bounded(token_type, 40)!r}, "
            "not Bearer"
        )
    if _jwt_parts(access) is None:
        raise TokenFetchFailed(
            f"{who}: token endpoint {url} answered an access token that is not a JWT "
            "(claimroute verifies JWTs; opaque tokens need introspection)"
        )
    return access


async def _by_command(user: User, source: TokenSource) -> None:
    argv = [_fill(arg, user.population, user.index) for arg in source.command]
    who = f"population {user.population.name!r}, user {user.label}: token command {argv[0]!r}"
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise TokenFetchFailed(f"{who} did not start: {type(exc).__name__}") from None
    try:
        async with asyncio.timeout(source.timeout):
            out, err = await process.communicate()
    except TimeoutError:
        raise TokenFetchFailed(f"{who} did not finish within {source.timeout:g}s") from None
    finally:
        if process.returncode is None:  # timed out or cancelled: leave nothing behind
            process.kill()
            await process.wait()
    # The output is never shown: it may hold a token or a secret.
    hidden = f"its output ({len(out)} bytes, stderr {len(err)} bytes) is not shown"
    if process.returncode != 0:
        raise TokenFetchFailed(
            f"{who} exited with code {process.returncode}; {hidden}: run it by hand to see why"
        )
    token = out.decode("utf-8", "replace").strip()
    if _jwt_parts(token) is None:
        raise TokenFetchFailed(f"{who} printed something that is not one compact JWT; {hidden}")
    adopt(user, token)


__all__ = [
    "FETCH_CONCURRENCY",
    "Prepared",
    "Provider",
    "TokenFetchFailed",
    "adopt",
    "obtain",
    "prepare",
    "resolve_provider",
]
