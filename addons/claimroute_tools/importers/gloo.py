"""Gloo Edge VirtualService (JWT, RBAC, claim-header routes) -> a claimroute policy.

`options.jwt` / `options.jwtStaged` providers become providers (Gloo, like Envoy, accepts
tokens without `exp`: `require_expiration: false`); `allowMissingOrFailedJwt` becomes
`validation: allow_missing_or_failed`. `options.rbac` policies (all ALLOW in Gloo; a request no
policy allows is denied) become RBAC policies with `default_action: deny`. Routes become routes:
a header matcher on a header that a provider sets from a claim (`claimsToHeaders`) matches the
claim itself; destinations (Gloo upstreams, subsets, Kubernetes services) become URLs through
`--upstream NAME=URL`.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from claimroute.config.source import Loc
from claimroute_tools.importers.common import (
    ImportFailure,
    Report,
    claim_path,
    duration,
    mapping,
    resource_kind,
    sequence,
    string,
    string_list,
)

GROUPS = ("gateway.solo.io", "gloo.solo.io")


class GlooImporter:
    """Collects documents, then `policy()` builds the claimroute policy."""

    def __init__(self, report: Report, upstreams: dict[str, str]) -> None:
        self.report = report
        self.upstreams = upstreams
        self.providers: dict[str, dict[str, Any]] = {}
        self.provider_locs: dict[str, Loc] = {}
        self.claim_headers: dict[str, str] = {}  # header -> claim path
        self.validation = "require_valid"
        self.rbac_policies: list[dict[str, Any]] = []
        self.rbac_seen = False
        self.routes: list[dict[str, Any]] = []
        self.pending_routes: list[tuple[dict[str, Any], Loc]] = []
        self.virtual_services = 0

    # --- documents ---------------------------------------------------------------------------

    def add(self, doc: dict[str, Any], loc: Loc) -> None:
        group, kind, name = resource_kind(doc, loc)
        if group not in GROUPS:
            if group.endswith("solo.io"):
                self.report.unsupported(
                    loc,
                    f"{kind} ({doc.get('apiVersion')}) is not translated: only VirtualService is",
                )
                return
            raise ImportFailure(
                f"unknown kind {kind} ({doc.get('apiVersion')}): expected a "
                "Gloo VirtualService (gateway.solo.io/v1)",
                loc,
            )
        if kind == "Upstream":
            self.report.note(
                loc,
                f"Upstream {name!r}: its address comes from "
                f"--upstream {name}=URL (or {name}[key=value]=URL for a subset)",
            )
            return
        if kind != "VirtualService":
            self.report.unsupported(loc, f"{kind} is not translated (only VirtualService is)")
            return
        self.virtual_services += 1
        if self.virtual_services == 2:
            self.report.unsupported(
                loc,
                "several VirtualServices are merged into one policy: "
                "their domains are not told apart",
            )
        spec_loc = loc / "spec"
        spec = mapping(doc.get("spec"), spec_loc, "spec")
        for key in spec:
            if key != "virtualHost":
                self.report.unsupported(spec_loc / key, f"VirtualService field {key!r}")
        vh_loc = spec_loc / "virtualHost"
        vhost = mapping(spec.get("virtualHost"), vh_loc, "virtualHost")
        for key in vhost:
            if key not in ("domains", "routes", "options"):
                self.report.unsupported(vh_loc / key, f"virtualHost field {key!r}")
        domains = string_list(vhost.get("domains"), vh_loc / "domains", "domains")
        if domains and domains != ["*"]:
            self.report.unsupported(
                vh_loc / "domains", f"domains {domains}: the policy applies to every host"
            )
        options_loc = vh_loc / "options"
        options = mapping(vhost.get("options"), options_loc, "options")
        for key, value in options.items():
            if key == "jwt":
                self._vhost_jwt(value, options_loc / key)
            elif key == "jwtStaged":
                staged = mapping(value, options_loc / key, "jwtStaged")
                for stage, ext in staged.items():
                    if stage in ("beforeExtAuth", "afterExtAuth"):
                        self._vhost_jwt(ext, options_loc / key / stage)
                    else:
                        self.report.unsupported(options_loc / key / stage, f"stage {stage!r}")
            elif key == "rbac":
                self._rbac(value, options_loc / key)
            else:
                self.report.unsupported(options_loc / key, f"virtual host option {key!r}")
        # Routes read claim headers: translate them once every provider is known.
        for index, route in enumerate(sequence(vhost.get("routes"), vh_loc / "routes")):
            route_loc = vh_loc / "routes" / index
            self.pending_routes.append((mapping(route, route_loc, "a route"), route_loc))

    # --- JWT ---------------------------------------------------------------------------------

    def _vhost_jwt(self, value: Any, loc: Loc) -> None:
        ext = mapping(value, loc, "jwt")
        legacy = {
            k: ext[k]
            for k in ("issuer", "jwks", "audiences", "keepToken", "claimsToHeaders", "tokenSource")
            if k in ext
        }
        for key in ext:
            if key not in ("providers", "allowMissingOrFailedJwt", "disable", *legacy):
                self.report.unsupported(loc / key, f"jwt field {key!r}")
        if ext.get("disable") is True:
            self.report.unsupported(loc / "disable", "jwt disable: true")
        if ext.get("allowMissingOrFailedJwt") is True:
            self.validation = "allow_missing_or_failed"
        if legacy:  # the old single-provider form
            self._provider("default", legacy, loc)
        providers = mapping(ext.get("providers"), loc / "providers", "providers")
        for name, spec in providers.items():
            self._provider(name, spec, loc / "providers" / name)

    def _provider(self, name: str, value: Any, loc: Loc) -> None:
        spec = mapping(value, loc, "a provider")
        known = (
            "issuer",
            "audiences",
            "jwks",
            "keepToken",
            "claimsToHeaders",
            "tokenSource",
            "clockSkewSeconds",
        )
        for key in spec:
            if key not in known:
                self.report.unsupported(loc / key, f"provider field {key!r}")
        if "issuer" not in spec:
            self.report.unsupported(
                loc,
                f"provider {name!r} has no issuer (Gloo accepts any); "
                "claimroute matches providers by issuer: left out",
            )
            return
        if name in self.providers:
            raise ImportFailure(
                f"provider {name!r} is defined twice (first at "
                f"line {self.provider_locs[name].line})",
                loc,
            )
        out: dict[str, Any] = {"issuer": string(spec["issuer"], loc / "issuer", "issuer")}
        audiences = string_list(spec.get("audiences"), loc / "audiences", "audiences")
        if audiences:
            out["audiences"] = audiences
        out["jwks"] = self._jwks(spec.get("jwks"), loc / "jwks")
        source = mapping(spec.get("tokenSource"), loc / "tokenSource", "tokenSource")
        token_source: dict[str, Any] = {}
        for key in source:
            if key not in ("headers", "queryParams"):
                self.report.unsupported(loc / "tokenSource" / key, f"tokenSource field {key!r}")
        headers = []
        for index, item in enumerate(
            sequence(source.get("headers"), loc / "tokenSource" / "headers")
        ):
            item_loc = loc / "tokenSource" / "headers" / index
            item = mapping(item, item_loc, "a tokenSource header")
            entry = {"name": string(item.get("header"), item_loc / "header", "header").lower()}
            if item.get("prefix"):
                entry["prefix"] = string(item["prefix"], item_loc / "prefix", "prefix")
            headers.append(entry)
        if headers:
            token_source["headers"] = headers
        params = string_list(source.get("queryParams"), loc / "tokenSource" / "queryParams")
        if params:
            token_source["query_params"] = params
        if token_source:
            out["token_source"] = token_source
        if "keepToken" in spec:
            out["keep_token"] = spec["keepToken"] is True
        if "clockSkewSeconds" in spec:
            out["clock_skew"] = duration(spec["clockSkewSeconds"], loc / "clockSkewSeconds")
        out["require_expiration"] = False  # Gloo (Envoy) accepts tokens without exp
        claim_headers = []
        for index, item in enumerate(
            sequence(spec.get("claimsToHeaders"), loc / "claimsToHeaders")
        ):
            item_loc = loc / "claimsToHeaders" / index
            item = mapping(item, item_loc, "a claimsToHeaders entry")
            claim = claim_path(
                [string(item.get("claim"), item_loc / "claim", "claim")], item_loc / "claim"
            )
            header = string(item.get("header"), item_loc / "header", "header").lower()
            if item.get("append") is True:
                self.report.unsupported(
                    item_loc / "append",
                    "append: true (claimroute replaces "
                    "the header; client copies are always removed)",
                )
            claim_headers.append({"claim": claim, "header": header})
            self.claim_headers.setdefault(header, claim)
        if claim_headers:
            out["claims_to_headers"] = claim_headers
        self.providers[name] = out
        self.provider_locs[name] = loc

    def _jwks(self, value: Any, loc: Loc) -> dict[str, Any]:
        jwks = mapping(value, loc, "jwks")
        if "local" in jwks:
            local = mapping(jwks["local"], loc / "local", "local")
            return {"inline": string(local.get("key"), loc / "local" / "key", "key")}
        if "remote" in jwks:
            remote_loc = loc / "remote"
            remote = mapping(jwks["remote"], remote_loc, "remote")
            for key in remote:
                if key not in ("url", "upstreamRef", "cacheDuration", "asyncFetch"):
                    self.report.unsupported(remote_loc / key, f"remote jwks field {key!r}")
            url = string(remote.get("url"), remote_loc / "url", "url")
            parsed = urllib.parse.urlsplit(url)
            if "upstreamRef" in remote:
                ref_loc = remote_loc / "upstreamRef"
                ref = mapping(remote["upstreamRef"], ref_loc, "upstreamRef")
                base = self._upstream_url(
                    [string(ref.get("name"), ref_loc / "name", "name")], ref_loc
                )
                path = parsed.path or "/"
                url = base + path + (f"?{parsed.query}" if parsed.query else "")
            elif parsed.scheme not in ("http", "https"):
                raise ImportFailure(f"remote jwks url {url!r} is not http(s)", remote_loc / "url")
            out: dict[str, Any] = {"url": url}
            if "cacheDuration" in remote:
                out["cache_duration"] = duration(
                    remote["cacheDuration"], remote_loc / "cacheDuration"
                )
            if "asyncFetch" in remote:
                self.report.note(
                    remote_loc / "asyncFetch", "claimroute always fetches keys in the background"
                )
            return out
        raise ImportFailure("jwks needs local.key or remote.url", loc)

    # --- RBAC --------------------------------------------------------------------------------

    def _rbac(self, value: Any, loc: Loc) -> None:
        rbac = mapping(value, loc, "rbac")
        for key in rbac:
            if key not in ("policies", "disable"):
                self.report.unsupported(loc / key, f"rbac field {key!r}")
        if rbac.get("disable") is True:
            return
        policies = mapping(rbac.get("policies"), loc / "policies", "policies")
        self.rbac_seen = True
        for name, spec in policies.items():
            policy = self._rbac_policy(
                name, mapping(spec, loc / "policies" / name, "a policy"), loc / "policies" / name
            )
            if policy is not None:
                self.rbac_policies.append(policy)

    def _rbac_policy(self, name: str, spec: dict[str, Any], loc: Loc) -> dict[str, Any] | None:
        for key in spec:
            if key not in ("principals", "permissions", "nestedClaimDelimiter"):
                self.report.unsupported(loc / key, f"policy field {key!r}")
        delimiter = spec.get("nestedClaimDelimiter")
        out: dict[str, Any] = {"name": name, "action": "allow"}
        if "principals" in spec:
            principals = []
            items = sequence(spec["principals"], loc / "principals", "principals")
            for index, item in enumerate(items):
                item_loc = loc / "principals" / index
                item = mapping(item, item_loc, "a principal")
                principal = self._principal(item, item_loc, delimiter)
                if principal is not None:
                    principals.append(principal)
            if not principals:
                self.report.unsupported(
                    loc,
                    f"policy {name!r} has no principal that can be "
                    "expressed: left out (it allows nothing here)",
                )
                return None
            out["principals"] = principals
        permissions = mapping(spec.get("permissions"), loc / "permissions", "permissions")
        perms: dict[str, Any] = {}
        for key, value in permissions.items():
            key_loc = loc / "permissions" / key
            if key == "pathPrefix":
                perms["paths"] = [{"prefix": string(value, key_loc, "pathPrefix")}]
            elif key == "methods":
                perms["methods"] = [m.upper() for m in string_list(value, key_loc, "methods")]
            else:
                self.report.unsupported(
                    key_loc,
                    f"permission {key!r} cannot be expressed: "
                    f"policy {name!r} is left out (it allows nothing here)",
                )
                return None
        if perms:
            out["permissions"] = perms
        return out

    def _principal(self, item: dict[str, Any], loc: Loc, delimiter: Any) -> dict[str, Any] | None:
        if set(item) != {"jwtPrincipal"}:
            self.report.unsupported(
                loc,
                f"principal {sorted(item)} (only jwtPrincipal is "
                "translated): this alternative never matches here",
            )
            return None
        jwt_loc = loc / "jwtPrincipal"
        jwt = mapping(item["jwtPrincipal"], jwt_loc, "jwtPrincipal")
        for key in jwt:
            if key not in ("claims", "provider", "matcher"):
                self.report.unsupported(jwt_loc / key, f"jwtPrincipal field {key!r}")
        kind = jwt.get("matcher", "EXACT_STRING")
        if kind not in ("EXACT_STRING", "BOOLEAN", "LIST_CONTAINS"):
            raise ImportFailure(
                f"unknown matcher {kind!r} (EXACT_STRING, BOOLEAN or LIST_CONTAINS)",
                jwt_loc / "matcher",
            )
        out: dict[str, Any] = {}
        if "provider" in jwt:
            provider = string(jwt["provider"], jwt_loc / "provider", "provider")
            out["provider"] = provider
        claims: dict[str, Any] = {}
        for claim, expected in mapping(jwt.get("claims"), jwt_loc / "claims", "claims").items():
            claim_loc = jwt_loc / "claims" / claim
            segments = (
                claim.split(delimiter) if isinstance(delimiter, str) and delimiter else [claim]
            )
            path = claim_path(segments, claim_loc)
            claims[path] = _claim_matcher(kind, expected, claim_loc)
        if not claims:
            claims["iss"] = {"present": True}  # a jwtPrincipal needs a verified token
        out["claims"] = claims
        return out

    # --- routes ------------------------------------------------------------------------------

    def _upstream_url(self, names: list[str], loc: Loc) -> str:
        for name in names:
            if name in self.upstreams:
                return self.upstreams[name]
        raise ImportFailure(
            f"no URL for upstream {names[0]!r}: give --upstream {names[0]}=http://host:port", loc
        )

    def _destination(self, action: dict[str, Any], loc: Loc) -> str | None:
        if set(action) != {"single"}:
            self.report.unsupported(
                loc,
                f"routeAction {sorted(action)} (only a single "
                "destination is translated): route left out",
            )
            return None
        single_loc = loc / "single"
        single = mapping(action["single"], single_loc, "single")
        names: list[str]
        if "upstream" in single:
            ref = mapping(single["upstream"], single_loc / "upstream", "upstream")
            name = string(ref.get("name"), single_loc / "upstream" / "name", "name")
            names = [name]
        elif "kube" in single:
            kube = mapping(single["kube"], single_loc / "kube", "kube")
            ref = mapping(kube.get("ref"), single_loc / "kube" / "ref", "ref")
            name = string(ref.get("name"), single_loc / "kube" / "ref" / "name", "name")
            names = [name]
        else:
            self.report.unsupported(
                single_loc,
                f"destination {sorted(single)} (only upstream "
                "and kube are translated): route left out",
            )
            return None
        for key in single:
            if key not in ("upstream", "kube", "subset"):
                self.report.unsupported(single_loc / key, f"destination field {key!r}")
        if "subset" in single:
            subset = mapping(
                mapping(single["subset"], single_loc / "subset").get("values"),
                single_loc / "subset" / "values",
                "values",
            )
            label = ",".join(f"{k}={v}" for k, v in sorted(subset.items()))
            names = [f"{names[0]}[{label}]"]
        return self._upstream_url(names, single_loc)

    def _route(self, route: dict[str, Any], loc: Loc, index: int) -> list[dict[str, Any]]:
        for key in route:
            if key not in ("matchers", "routeAction", "name", "options"):
                self.report.unsupported(loc / key, f"route field {key!r}: route left out")
                return []
        if "options" in route:
            for key in mapping(route["options"], loc / "options", "options"):
                self.report.unsupported(loc / "options" / key, f"route option {key!r}")
        if "routeAction" not in route:
            raise ImportFailure("a route needs an action", loc)
        upstream = self._destination(
            mapping(route["routeAction"], loc / "routeAction"), loc / "routeAction"
        )
        if upstream is None:
            return []
        base = route.get("name") or f"route-{index + 1}"
        matchers = sequence(route.get("matchers"), loc / "matchers", "matchers") or [{}]
        out = []
        for m_index, matcher in enumerate(matchers):
            m_loc = loc / "matchers" / m_index
            match = self._match(mapping(matcher, m_loc, "a matcher"), m_loc)
            if match is None:
                continue
            entry: dict[str, Any] = {
                "name": base if len(matchers) == 1 else f"{base}.{m_index + 1}"
            }
            if match:
                entry["match"] = match
            entry["upstream"] = upstream
            out.append(entry)
        return out

    def _match(self, matcher: dict[str, Any], loc: Loc) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for key, value in matcher.items():
            key_loc = loc / key
            if key in ("prefix", "exact", "regex"):
                text = string(value, key_loc, key)
                if key == "prefix" and text == "/":
                    continue
                out["paths"] = [{key: text}]
            elif key == "methods":
                out["methods"] = [m.upper() for m in string_list(value, key_loc, "methods")]
            elif key == "headers":
                for h_index, header in enumerate(sequence(value, key_loc, "headers")):
                    h_loc = key_loc / h_index
                    self._header(mapping(header, h_loc, "a header matcher"), h_loc, out)
            elif key == "caseSensitive" and value is True:
                continue
            else:
                self.report.unsupported(key_loc, f"matcher field {key!r}: this matcher is left out")
                return None
        return out

    def _header(self, header: dict[str, Any], loc: Loc, out: dict[str, Any]) -> None:
        name = string(header.get("name"), loc / "name", "name").lower()
        for key in header:
            if key not in ("name", "value", "regex", "invertMatch"):
                raise ImportFailure(f"unknown header matcher field {key!r}", loc / key)
        if "value" in header and header["value"] not in (None, ""):
            text = header["value"]
            text = text if isinstance(text, str) else str(text).lower()
            matcher: Any = {"regex": text} if header.get("regex") is True else {"exact": text}
        else:
            matcher = {"present": True}
        if header.get("invertMatch") is True:
            matcher = {"not": matcher}
        if name in self.claim_headers:  # set from a claim: match the claim itself
            out.setdefault("claims", {})[self.claim_headers[name]] = matcher
        else:
            out.setdefault("headers", {})[name] = matcher

    # --- result ------------------------------------------------------------------------------

    def policy(self) -> dict[str, Any]:
        if not self.virtual_services:
            raise ImportFailure("no VirtualService to translate")
        if not self.providers:
            raise ImportFailure(
                "no JWT provider (options.jwt) to translate: a claimroute policy "
                "needs at least one provider"
            )
        for index, (route, loc) in enumerate(self.pending_routes):
            self.routes.extend(self._route(route, loc, index))
        self.pending_routes = []
        out: dict[str, Any] = {"version": 1, "providers": self.providers}
        if self.validation != "require_valid":
            out["validation"] = self.validation
        if self.rbac_seen:
            out["rbac"] = {"default_action": "deny"}
            if self.rbac_policies:
                out["rbac"]["policies"] = self.rbac_policies
        if self.routes:
            names: set[str] = set()
            for route in self.routes:
                while route["name"] in names:
                    route["name"] += "-2"
                names.add(route["name"])
            out["routes"] = self.routes
        return out


def _claim_matcher(kind: str, expected: Any, loc: Loc) -> Any:
    if kind == "BOOLEAN":
        if expected in (True, "true"):
            return {"exact": True}
        if expected in (False, "false"):
            return {"exact": False}
        raise ImportFailure(f"BOOLEAN matcher needs true or false, got {expected!r}", loc)
    if isinstance(expected, bool):
        text = "true" if expected else "false"
    elif isinstance(expected, int | float | str):
        text = str(expected)
    else:
        raise ImportFailure(f"a claim value must be a string, got {expected!r}", loc)
    if kind == "LIST_CONTAINS":
        return text  # a bare value: membership in a list claim (or a string claim equal to it)
    return {"exact": text}
