"""Loading a policy: YAML in, validated immutable objects out.

Parsing happens once per load; every mistake is a `PolicyError` naming the file, the key path
and the line. Nothing downstream reads YAML. The contract is docs/policy.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from claimroute.config import readers as schema
from claimroute.config.source import (
    Loc,
    parse_yaml_bytes,
    parse_yaml_text,
    read_document_file,
    read_file,
)
from claimroute.keys.keyset import SUPPORTED_ALGORITHMS, KeyMaterialError, key_set_from_text
from claimroute.match.claimpath import parse_claim_path
from claimroute.pipeline.identity import identity_of
from claimroute.policy.model import (
    CORS_PREFLIGHT_MODES,
    DEFAULT_CACHE_DURATION,
    DEFAULT_CLOCK_SKEW,
    DEFAULT_FETCH_TIMEOUT,
    DEFAULT_TOKEN_SOURCE,
    RESERVED_HEADERS,
    VALIDATION_MODES,
    ClaimHeader,
    HeaderLocation,
    LocalJwks,
    Policy,
    Provider,
    RemoteJwks,
    TokenSource,
)
from claimroute.policy.rbac import parse_rbac
from claimroute.policy.routes import BAGGAGE_HEADER, Route, parse_routes

_PROVIDER_KEYS = (
    "issuer", "audiences", "jwks", "algorithms", "token_source", "keep_token", "clock_skew",
    "require_expiration", "max_lifetime", "claims_to_headers", "forward_payload_header",
)  # fmt: skip
_JWKS_KEYS = ("file", "inline", "url", "discovery", "cache_duration", "timeout", "max_stale")


def _parse_algorithms(value: Any, loc: Loc) -> frozenset[str]:
    names = schema.string_list(value, loc, non_empty=True)
    for index, name in enumerate(names):
        if name.strip().lower() == "none":
            raise (loc / index).error("alg 'none' is never accepted")
        if name not in SUPPORTED_ALGORITHMS:
            known = ", ".join(sorted(SUPPORTED_ALGORITHMS))
            raise (loc / index).error(f"unknown algorithm {name!r} (supported: {known})")
    return frozenset(names)


def _parse_jwks(
    value: Any, loc: Loc, *, base: Path, issuer: str, algorithms: frozenset[str] | None
) -> LocalJwks | RemoteJwks:
    spec = schema.mapping(value, loc, allowed=_JWKS_KEYS)
    sources = [key for key in ("file", "inline", "url") if key in spec]
    if spec.get("discovery") is not None and schema.boolean(spec["discovery"], loc / "discovery"):
        sources.append("discovery")
    if len(sources) != 1:
        found = ", ".join(sources) or "none"
        raise loc.error(f"give exactly one of file, inline, url, discovery: true (found: {found})")
    kind = sources[0]
    if kind in ("file", "inline"):
        for remote_only in ("cache_duration", "timeout", "max_stale"):
            if remote_only in spec:
                raise (loc / remote_only).error("only applies to a remote JWKS (url or discovery)")
        try:
            if kind == "file":
                name = schema.string(spec["file"], loc / "file")
                path = (base / name).resolve()
                try:
                    data, stamp = read_file(path)
                except OSError as exc:
                    raise (loc / "file").error(f"cannot read {path}: {exc.strerror}") from None
                key_set = key_set_from_text(data, str(path), allowed_algorithms=algorithms)
                digest = hashlib.sha256(data).hexdigest()
                return LocalJwks(key_set, str(path), str(path), digest, stamp)
            inline = spec["inline"]
            text = json.dumps(inline) if isinstance(inline, dict) else inline
            text = schema.string(text, loc / "inline")
            key_set = key_set_from_text(text, "inline key", allowed_algorithms=algorithms)
            return LocalJwks(key_set, "inline")
        except KeyMaterialError as exc:
            raise (loc / kind).error(str(exc)) from None
    cache = schema.duration(
        spec.get("cache_duration", DEFAULT_CACHE_DURATION), loc / "cache_duration"
    )
    timeout = schema.duration(spec.get("timeout", DEFAULT_FETCH_TIMEOUT), loc / "timeout")
    if cache < 1:
        raise (loc / "cache_duration").error("must be at least 1s")
    if not 0 < timeout <= 60:
        raise (loc / "timeout").error("must be between 0 and 60s")
    max_stale = None
    if spec.get("max_stale") is not None:
        max_stale = schema.duration(spec["max_stale"], loc / "max_stale")
        if max_stale <= 0:
            raise (loc / "max_stale").error("must be more than 0 (leave it out for no bound)")
        # Shorter than the cache lifetime, keys would be dropped before their refresh is due.
        if max_stale < cache:
            raise (loc / "max_stale").error(
                f"must be at least cache_duration ({cache:g}s): keys are refreshed at 80% of it"
            )
    if algorithms is not None and any(alg.startswith("HS") for alg in algorithms):
        raise loc.error("HMAC algorithms (HS*) need a key from file or inline, never a remote set")
    url = None
    if kind == "url":
        url = schema.string(spec["url"], loc / "url")
        if not url.startswith(("http://", "https://")):
            raise (loc / "url").error("must be an http:// or https:// URL")
    elif not issuer.startswith(("http://", "https://")):
        raise (loc / "discovery").error("discovery needs an issuer that is an http(s) URL")
    return RemoteJwks(url, kind == "discovery", issuer, cache, timeout, algorithms, max_stale)


def _parse_token_source(value: Any, loc: Loc) -> TokenSource:
    spec = schema.mapping(value, loc, allowed=("headers", "query_params", "cookies"))
    headers = []
    for index, item in enumerate(schema.sequence(spec.get("headers", []), loc / "headers")):
        item_loc = loc / "headers" / index
        entry = schema.mapping(item, item_loc, allowed=("name", "prefix"), required=("name",))
        name = schema.header_name(entry["name"], item_loc / "name")
        prefix = schema.string(entry.get("prefix", ""), item_loc / "prefix", non_empty=False)
        headers.append(HeaderLocation(name, prefix))
    params = schema.string_list(spec.get("query_params", []), loc / "query_params")
    cookies = schema.string_list(spec.get("cookies", []), loc / "cookies")
    if not (headers or params or cookies):
        raise loc.error("lists no location at all; the provider could never see a token")
    return TokenSource(tuple(headers), params, cookies)


def _settable_header(header: str, loc: Loc, what: str) -> str:
    """`header` (lower-case), which the proxy is to set: never a reserved one."""
    if header in RESERVED_HEADERS or header.startswith(":"):
        raise loc.error(f"header {header!r} cannot carry {what}")
    return header


def _identity_header(value: Any, loc: Loc, what: str) -> str:
    """A header the proxy sets from a verified token (lower-cased; never a reserved one)."""
    return _settable_header(schema.header_name(value, loc), loc, what)


def _parse_claims_to_headers(value: Any, loc: Loc) -> tuple[ClaimHeader, ...]:
    out = []
    seen: set[str] = set()
    for index, item in enumerate(schema.sequence(value, loc)):
        item_loc = loc / index
        entry = schema.mapping(item, item_loc, allowed=("claim", "header"),
                               required=("claim", "header"))  # fmt: skip
        header = _identity_header(entry["header"], item_loc / "header", "a claim")
        if header in seen:
            raise (item_loc / "header").error(f"header {header!r} is set twice")
        seen.add(header)
        out.append(ClaimHeader(parse_claim_path(entry["claim"], item_loc / "claim"), header))
    return tuple(out)


def _parse_provider(name: str, value: Any, loc: Loc, base: Path) -> Provider:
    spec = schema.mapping(value, loc, allowed=_PROVIDER_KEYS, required=("issuer", "jwks"))
    issuer = schema.string(spec["issuer"], loc / "issuer")
    audiences = None
    if "audiences" in spec:
        audiences = frozenset(
            schema.string_list(spec["audiences"], loc / "audiences", non_empty=True)
        )
    algorithms = None
    if "algorithms" in spec:
        algorithms = _parse_algorithms(spec["algorithms"], loc / "algorithms")
    jwks = _parse_jwks(spec["jwks"], loc / "jwks", base=base, issuer=issuer, algorithms=algorithms)
    token_source = DEFAULT_TOKEN_SOURCE
    if "token_source" in spec:
        token_source = _parse_token_source(spec["token_source"], loc / "token_source")
    max_lifetime = None
    if spec.get("max_lifetime") is not None:
        max_lifetime = schema.duration(spec["max_lifetime"], loc / "max_lifetime")
    claims_to_headers = _parse_claims_to_headers(
        spec.get("claims_to_headers", []), loc / "claims_to_headers"
    )
    payload_header = None
    if spec.get("forward_payload_header") is not None:
        payload_loc = loc / "forward_payload_header"
        payload_header = _identity_header(spec["forward_payload_header"], payload_loc, "a payload")
        if any(entry.header == payload_header for entry in claims_to_headers):
            raise payload_loc.error(f"header {payload_header!r} is also set from a claim")
    return Provider(
        name=name,
        issuer=issuer,
        audiences=audiences,
        jwks=jwks,
        algorithms=algorithms,
        token_source=token_source,
        keep_token=schema.boolean(spec.get("keep_token", False), loc / "keep_token"),
        clock_skew=schema.duration(spec.get("clock_skew", DEFAULT_CLOCK_SKEW), loc / "clock_skew"),
        require_expiration=schema.boolean(
            spec.get("require_expiration", True), loc / "require_expiration"
        ),
        max_lifetime=max_lifetime,
        claims_to_headers=claims_to_headers,
        forward_payload_header=payload_header,
    )


def _check_cohort_headers(
    routes: tuple[Route, ...], loc: Loc, token_headers: set[str], claim_headers: frozenset[str]
) -> frozenset[str]:
    """The routes' `cohort_header`s, each checked: never reserved, never a token location,
    never set from a claim too; and no `baggage: true` while baggage is set from a claim."""
    names: set[str] = set()
    for index, route in enumerate(routes):
        header = route.cohort_header
        if header is not None:
            header_loc = loc / index / "cohort_header"
            _settable_header(header, header_loc, "the cohort")
            if header in token_headers:
                raise header_loc.error(f"{header!r} carries tokens; the cohort cannot go there")
            if header in claim_headers:
                raise header_loc.error(f"header {header!r} is also set from a token")
            names.add(header)
        if route.baggage and BAGGAGE_HEADER in claim_headers:
            raise (loc / index / "baggage").error(
                "'baggage' is set from a token (claims_to_headers or forward_payload_header)"
            )
    return frozenset(names)


def _union_locations(providers: Mapping[str, Provider]) -> TokenSource:
    headers: dict[tuple[str, str], HeaderLocation] = {}
    params: dict[str, None] = {}
    cookies: dict[str, None] = {}
    for provider in providers.values():
        source = provider.token_source
        for header in source.headers:
            headers[(header.name, header.prefix.lower())] = header
        params.update(dict.fromkeys(source.query_params))
        cookies.update(dict.fromkeys(source.cookies))
    return TokenSource(tuple(headers.values()), tuple(params), tuple(cookies))


def parse_policy(document: Any, root: Loc, *, base: Path, fingerprint: str) -> Policy:
    """Validate a parsed policy document into a `Policy` (raises PolicyError)."""
    spec = schema.mapping(
        document, root,
        allowed=("version", "providers", "validation", "cors_preflight", "rbac", "routes"),
        required=("version", "providers"),
    )  # fmt: skip
    version = spec["version"]
    if version != 1 or isinstance(version, bool):
        raise (root / "version").error(f"unsupported policy version {version!r}; expected 1")
    providers_loc = root / "providers"
    provider_specs = schema.mapping(spec["providers"], providers_loc)
    if not provider_specs:
        raise providers_loc.error("needs at least one provider")
    providers: dict[str, Provider] = {}
    by_issuer: dict[str, Provider] = {}
    for name, value in provider_specs.items():
        provider = _parse_provider(name, value, providers_loc / name, base)
        if provider.issuer in by_issuer:
            other = by_issuer[provider.issuer].name
            raise (providers_loc / name / "issuer").error(
                f"issuer {provider.issuer!r} is already used by provider {other!r}"
            )
        providers[name] = provider
        by_issuer[provider.issuer] = provider
    token_headers = {h.name for p in providers.values() for h in p.token_source.headers}
    for name, provider in providers.items():
        for index, entry in enumerate(provider.claims_to_headers):
            if entry.header in token_headers:
                loc = providers_loc / name / "claims_to_headers" / index / "header"
                raise loc.error(f"{entry.header!r} carries tokens; a claim cannot be copied there")
        if provider.forward_payload_header in token_headers:
            loc = providers_loc / name / "forward_payload_header"
            raise loc.error(
                f"{provider.forward_payload_header!r} carries tokens; the payload cannot go there"
            )
    validation = schema.choice(
        spec.get("validation", "require_valid"), root / "validation", VALIDATION_MODES
    )
    cors_preflight = schema.choice(
        spec.get("cors_preflight", "verify"), root / "cors_preflight", CORS_PREFLIGHT_MODES
    )
    rbac = parse_rbac(spec["rbac"], root / "rbac", set(providers)) if "rbac" in spec else None
    routes = parse_routes(spec["routes"], root / "routes") if "routes" in spec else ()
    # Every header the proxy sets from a token, for any provider: always stripped from clients.
    token_set = frozenset(
        [h.header for p in providers.values() for h in p.claims_to_headers]
        + [p.forward_payload_header for p in providers.values() if p.forward_payload_header]
    )
    # Routes' cohort headers are set by the proxy too: stripped from clients likewise.
    cohort_headers = _check_cohort_headers(routes, root / "routes", token_headers, token_set)
    identity = token_set | cohort_headers
    policy = Policy(
        path=root.file,
        providers=providers,
        by_issuer=by_issuer,
        validation=validation,
        rbac=rbac,
        routes=routes,
        identity_headers=identity,
        token_locations=_union_locations(providers),
        fingerprint=fingerprint,
        cors_preflight_bypass=cors_preflight == "bypass",
    )
    # What the policy concludes about an anonymous caller, once (it reads RBAC and routes).
    return dataclasses.replace(policy, anonymous=identity_of(policy, None, None))


def load_policy(path: str | Path) -> Policy:
    """Read, parse and validate a policy file. Raises PolicyError naming file, key path, line.

    Each file is read once: the policy is parsed from, and fingerprinted on, the same bytes
    (key files likewise), and `file_stamps` holds each file's stamp from before its read.
    """
    path = Path(path)
    name = str(path)
    data, stamp = read_document_file(path)
    document, root = parse_yaml_bytes(data, name)
    policy = parse_policy(document, root, base=path.resolve().parent, fingerprint="")
    digest = hashlib.sha256(data)
    for key_digest in policy.key_file_digests:
        digest.update(bytes.fromhex(key_digest))
    return dataclasses.replace(
        policy,
        fingerprint=digest.hexdigest()[:16],
        file_stamps=((name, stamp), *policy.key_file_stamps),
    )


def load_policy_text(text: str, name: str, base: Path) -> Policy:
    """Parse a policy from text (tests, scenarios); relative key files resolve against `base`."""
    document, root = parse_yaml_text(text, name)
    fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
    return parse_policy(document, root, base=base, fingerprint=fingerprint)


__all__ = ["load_policy", "load_policy_text", "parse_policy"]
