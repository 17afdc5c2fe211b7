"""Istio RequestAuthentication + AuthorizationPolicy -> a claimroute policy.

RequestAuthentication `jwtRules` become providers (Istio lets requests without a token through,
so `validation: allow_missing`; a bad token is 401). AuthorizationPolicy ALLOW and DENY rules
become RBAC policies: DENY is checked first, and when any ALLOW policy exists a request that
matches none is denied (`default_action: deny`), else allowed. Istio's request principal is
`iss/sub`; a value (with Istio's `*` prefix/suffix wildcards) becomes, for every provider whose
issuer it can name, that provider and a matcher on `sub`.

What cannot be expressed is reported and approximated on the safe side: an ALLOW element that
cannot be expressed never matches (the rule or the alternative is left out), a DENY condition
that cannot be expressed is left out (so the DENY covers more).
"""

from __future__ import annotations

import re
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

GROUP = "security.istio.io"
ANONYMOUS: dict[str, Any] = {"claims": {"iss": {"present": False}}}  # no verified token

Principal = dict[str, Any]  # {provider?: name, claims?: {path: matcher}}


class IstioImporter:
    """Collects documents, then `policy()` builds the claimroute policy."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.providers: dict[str, dict[str, Any]] = {}
        self.issuers: dict[str, str] = {}  # issuer -> provider name
        self.authz: list[tuple[dict[str, Any], Loc, str]] = []

    # --- documents ---------------------------------------------------------------------------

    def add(self, doc: dict[str, Any], loc: Loc) -> None:
        group, kind, name = resource_kind(doc, loc)
        if group != GROUP:
            if group.endswith("istio.io"):
                self.report.unsupported(
                    loc,
                    f"{kind} ({doc.get('apiVersion')}) is not "
                    "translated: only RequestAuthentication and "
                    "AuthorizationPolicy are",
                )
                return
            raise ImportFailure(
                f"unknown kind {kind} ({doc.get('apiVersion')}): expected "
                "Istio RequestAuthentication or AuthorizationPolicy",
                loc,
            )
        if kind == "RequestAuthentication":
            self._request_authentication(doc, loc, name)
        elif kind == "AuthorizationPolicy":
            spec = mapping(doc.get("spec"), loc / "spec", "spec")
            self._scope(spec, loc / "spec", kind)
            self.authz.append((spec, loc / "spec", name))
        else:
            self.report.unsupported(
                loc,
                f"{kind} is not translated (only RequestAuthentication "
                "and AuthorizationPolicy are)",
            )

    def _scope(self, spec: dict[str, Any], loc: Loc, kind: str) -> None:
        for key in ("selector", "targetRef", "targetRefs"):
            if key in spec:
                self.report.unsupported(
                    loc / key,
                    f"{kind} workload selection ({key}): the "
                    "policy applies to every request through the proxy",
                )

    def _request_authentication(self, doc: dict[str, Any], loc: Loc, name: str) -> None:
        spec_loc = loc / "spec"
        spec = mapping(doc.get("spec"), spec_loc, "spec")
        self._scope(spec, spec_loc, "RequestAuthentication")
        for key in spec:
            if key not in ("selector", "targetRef", "targetRefs", "jwtRules"):
                self.report.unsupported(spec_loc / key, f"unknown field {key!r}")
        rules = sequence(spec.get("jwtRules"), spec_loc / "jwtRules", "jwtRules")
        for index, rule in enumerate(rules):
            rule_loc = spec_loc / "jwtRules" / index
            provider_name = name if len(rules) == 1 else f"{name}-{index + 1}"
            while provider_name in self.providers:
                provider_name += "-2"
            provider = self._jwt_rule(mapping(rule, rule_loc, "a jwtRules entry"), rule_loc)
            if provider is None:
                continue
            issuer = provider["issuer"]
            if issuer in self.issuers:
                self.report.unsupported(
                    rule_loc / "issuer",
                    f"issuer {issuer!r} is already "
                    f"configured by provider {self.issuers[issuer]!r}; "
                    "this rule is left out",
                )
                continue
            self.providers[provider_name] = provider
            self.issuers[issuer] = provider_name

    def _jwt_rule(self, rule: dict[str, Any], loc: Loc) -> dict[str, Any] | None:
        known = (
            "issuer",
            "audiences",
            "jwksUri",
            "jwks",
            "fromHeaders",
            "fromParams",
            "fromCookies",
            "forwardOriginalToken",
            "outputClaimToHeaders",
            "outputPayloadToHeader",
            "timeout",
        )
        for key in rule:
            if key not in known:
                self.report.unsupported(loc / key, f"jwtRules field {key!r} is not translated")
        issuer = string(rule.get("issuer"), loc / "issuer", "issuer")
        out: dict[str, Any] = {"issuer": issuer}
        audiences = string_list(rule.get("audiences"), loc / "audiences", "audiences")
        if audiences:
            out["audiences"] = audiences
        if "jwksUri" in rule and "jwks" in rule:
            self.report.note(loc / "jwks", "both jwksUri and jwks: Istio uses the inline jwks")
        if "jwks" in rule:
            out["jwks"] = {"inline": string(rule["jwks"], loc / "jwks", "jwks")}
        elif "jwksUri" in rule:
            out["jwks"] = {"url": string(rule["jwksUri"], loc / "jwksUri", "jwksUri")}
        else:
            if not re.match(r"https?://", issuer, re.I):
                self.report.unsupported(
                    loc / "issuer",
                    f"no jwksUri or jwks, and issuer "
                    f"{issuer!r} is not a URL for OIDC discovery; the rule "
                    "is left out",
                )
                return None
            out["jwks"] = {"discovery": True}
        if "timeout" in rule and "inline" in out["jwks"]:
            self.report.note(loc / "timeout", "timeout applies to fetched keys only")
        elif "timeout" in rule:
            out["jwks"]["timeout"] = duration(rule["timeout"], loc / "timeout")
        source: dict[str, Any] = {}
        headers = []
        for index, item in enumerate(sequence(rule.get("fromHeaders"), loc / "fromHeaders")):
            item_loc = loc / "fromHeaders" / index
            item = mapping(item, item_loc, "a fromHeaders entry")
            entry = {"name": string(item.get("name"), item_loc / "name", "name").lower()}
            if item.get("prefix"):
                entry["prefix"] = string(item["prefix"], item_loc / "prefix", "prefix")
            headers.append(entry)
        if headers:
            source["headers"] = headers
        params = string_list(rule.get("fromParams"), loc / "fromParams", "fromParams")
        if params:
            source["query_params"] = params
        cookies = string_list(rule.get("fromCookies"), loc / "fromCookies", "fromCookies")
        if cookies:
            source["cookies"] = cookies
        if source:
            out["token_source"] = source
        if "forwardOriginalToken" in rule:
            out["keep_token"] = rule["forwardOriginalToken"] is True
        out["require_expiration"] = False  # Istio (Envoy) accepts tokens without exp
        claim_headers = []
        for index, item in enumerate(
            sequence(rule.get("outputClaimToHeaders"), loc / "outputClaimToHeaders")
        ):
            item_loc = loc / "outputClaimToHeaders" / index
            item = mapping(item, item_loc, "an outputClaimToHeaders entry")
            claim = string(item.get("claim"), item_loc / "claim", "claim")
            header = string(item.get("header"), item_loc / "header", "header").lower()
            claim_headers.append({"claim": claim, "header": header})
        if claim_headers:
            out["claims_to_headers"] = claim_headers
        if rule.get("outputPayloadToHeader"):
            out["forward_payload_header"] = string(
                rule["outputPayloadToHeader"], loc / "outputPayloadToHeader"
            ).lower()
        return out

    # --- request principals ------------------------------------------------------------------

    def _principal_matchers(self, value: str) -> dict[str, Any]:
        """provider name -> matcher on `sub` (None: any sub) for one Istio principal value."""
        out: dict[str, Any] = {}
        for issuer, provider in self.issuers.items():
            head = issuer + "/"
            if value == "*":
                out[provider] = None
            elif value.startswith("*"):  # suffix of iss/sub
                tail = value[1:]
                options: list[Any] = [{"suffix": tail}] if tail else []
                for size in range(1, len(tail)):  # a sub shorter than the suffix
                    sub = tail[len(tail) - size :]
                    if head.endswith(tail[: len(tail) - size]):
                        options.append(sub)
                if not tail:
                    out[provider] = None
                elif options:
                    out[provider] = options[0] if len(options) == 1 else {"any_of": options}
            elif value.endswith("*"):  # prefix of iss/sub
                start = value[:-1]
                if head.startswith(start):
                    out[provider] = None
                elif start.startswith(head):
                    out[provider] = {"prefix": start[len(head) :]}
            elif value.startswith(head):
                out[provider] = value[len(head) :]
        return out

    def request_principals(self, values: list[str], loc: Loc) -> list[Principal]:
        """Principals (OR) for `requestPrincipals` values."""
        found: list[Principal] = []
        for index, value in enumerate(values):
            if "*" in value.strip("*") or (value.count("*") > 1 and value != "*"):
                self.report.unsupported(
                    loc / index,
                    f"principal {value!r}: only a leading or "
                    "trailing * is supported; it matches nothing here",
                )
                continue
            matchers = self._principal_matchers(value)
            if not matchers:
                self.report.note(
                    loc / index,
                    f"principal {value!r} names no configured issuer "
                    "(RequestAuthentication): it matches no request",
                )
            for provider, matcher in matchers.items():
                principal: Principal = {"provider": provider}
                if matcher is not None:
                    principal["claims"] = {"sub": matcher}
                if principal not in found:
                    found.append(principal)
        return found

    def not_request_principals(self, values: list[str], loc: Loc) -> list[Principal]:
        """Principals (OR) for `notRequestPrincipals`: anonymous, or a sub matching none."""
        per_provider: dict[str, list[Any]] = {p: [] for p in self.issuers.values()}
        covered: set[str] = set()
        for index, value in enumerate(values):
            if "*" in value.strip("*"):
                self.report.unsupported(
                    loc / index,
                    f"principal {value!r}: only a leading or "
                    "trailing * is supported; it is left out",
                )
                continue
            for provider, matcher in self._principal_matchers(value).items():
                if matcher is None:
                    covered.add(provider)
                else:
                    per_provider[provider].append(matcher)
        found: list[Principal] = [ANONYMOUS]
        for provider, matchers in per_provider.items():
            if provider in covered:
                continue
            if not matchers:
                found.append({"provider": provider})
            else:
                inner = matchers[0] if len(matchers) == 1 else {"any_of": matchers}
                found.append({"provider": provider, "claims": {"sub": {"not": _matcher(inner)}}})
        return found

    # --- authorization -----------------------------------------------------------------------

    def _source(self, source: dict[str, Any], loc: Loc, allow: bool) -> list[Principal] | None:
        """Principals (OR) for one `from.source`; None: cannot match (ALLOW, unsupported)."""
        result: list[Principal] = [{}]
        for key, value in source.items():
            key_loc = loc / key
            if key == "requestPrincipals":
                principals = self.request_principals(string_list(value, key_loc), key_loc)
            elif key == "notRequestPrincipals":
                principals = self.not_request_principals(string_list(value, key_loc), key_loc)
            else:
                self._lost(key_loc, f"source field {key!r} (not a JWT attribute)", allow)
                if allow:
                    return None
                continue
            result = _intersect(result, principals)
        return result

    def _operation(self, op: dict[str, Any], loc: Loc, allow: bool) -> dict[str, Any] | None:
        """Permissions for one `to.operation`; None: cannot match (ALLOW, unsupported)."""
        out: dict[str, Any] = {}
        for key, value in op.items():
            key_loc = loc / key
            if key == "methods":
                methods = [m.upper() for m in string_list(value, key_loc)]
                if "*" not in methods:
                    out["methods"] = methods
            elif key == "paths":
                paths = self._paths(string_list(value, key_loc), key_loc, allow)
                if paths is None:
                    if allow:
                        return None
                elif paths:
                    out["paths"] = paths
            elif key == "hosts":
                hosts = string_list(value, key_loc)
                if "*" in hosts:
                    continue
                odd = [h for h in hosts if "*" in h or re.search(r":[0-9]+$", h)]
                if odd:
                    self._lost(
                        key_loc, f"hosts {odd} (wildcards and ports are not supported)", allow
                    )
                    if allow:
                        hosts = [h for h in hosts if h not in odd]
                        if not hosts:
                            return None
                    else:
                        continue
                out["hosts"] = [h.lower() for h in hosts]
            else:
                self._lost(key_loc, f"operation field {key!r}", allow)
                if allow:
                    return None
        return out

    def _paths(self, values: list[str], loc: Loc, allow: bool) -> list[dict[str, str]] | None:
        """Path rules; [] = any path; None = an unsupported value in a DENY (left out)."""
        if not values:
            return []
        rules: list[dict[str, str]] = []
        for index, value in enumerate(values):
            if value == "*":
                return []
            if "{" in value or "*" in value.strip("*") or value.count("*") > 1:
                self._lost(
                    loc / index,
                    f"path {value!r} (templates and inner wildcards are not supported)",
                    allow,
                )
                if not allow:
                    return None
                continue
            if value.endswith("*"):
                rules.append({"prefix": value[:-1]})
            elif value.startswith("*"):
                rules.append({"regex": ".*" + re.escape(value[1:])})
            else:
                rules.append({"exact": value})
        return rules if rules else None

    def _condition(self, cond: dict[str, Any], loc: Loc, allow: bool) -> list[Principal] | None:
        """Principals (OR) for one `when` condition; None when it cannot be expressed."""
        key = string(cond.get("key"), loc / "key", "key")
        for extra in cond:
            if extra not in ("key", "values", "notValues"):
                self.report.unsupported(loc / extra, f"condition field {extra!r}")
        values = string_list(cond.get("values"), loc / "values", "values")
        not_values = string_list(cond.get("notValues"), loc / "notValues", "notValues")
        if key == "request.auth.principal":
            out: list[Principal] = [{}]
            if values:
                out = _intersect(out, self.request_principals(values, loc / "values"))
            if not_values:
                out = _intersect(out, self.not_request_principals(not_values, loc / "notValues"))
            return out
        if key == "request.auth.audiences":
            path = "aud"
        elif key == "request.auth.presenter":
            path = "azp"
        elif key.startswith("request.auth.claims[") and key.endswith("]"):
            segments = key[len("request.auth.claims[") : -1].split("][")
            try:
                path = claim_path(segments, loc / "key")
            except ImportFailure as exc:
                self._lost(loc / "key", exc.message, allow)
                return None
        else:
            self._lost(loc / "key", f"condition on {key!r} (not a JWT attribute)", allow)
            return None
        matchers: list[Any] = []
        if values:
            options = [_value(v) for v in values]
            matchers.append(options[0] if len(options) == 1 else {"any_of": options})
        if not_values:
            options = [_value(v) for v in not_values]
            matchers.append(
                {"not": _matcher(options[0] if len(options) == 1 else {"any_of": options})}
            )
        if not matchers:
            raise ImportFailure("a condition needs values or notValues", loc)
        matcher = matchers[0] if len(matchers) == 1 else {"all_of": [_matcher(m) for m in matchers]}
        return [{"claims": {path: matcher}}]

    def _lost(self, loc: Loc, what: str, allow: bool) -> None:
        consequence = (
            "this ALLOW alternative never matches" if allow else "this DENY holds without it"
        )
        self.report.unsupported(loc, f"{what} cannot be expressed; {consequence}")

    def _authorization(self, spec: dict[str, Any], loc: Loc, name: str) -> list[dict[str, Any]]:
        action = spec.get("action", "ALLOW")
        if action not in ("ALLOW", "DENY"):
            self.report.unsupported(
                loc / "action", f"action {action!r} is not translated (only ALLOW and DENY)"
            )
            return []
        allow = action == "ALLOW"
        for key in spec:
            if key not in ("selector", "targetRef", "targetRefs", "action", "rules", "provider"):
                self.report.unsupported(loc / key, f"unknown field {key!r}")
        policies: list[dict[str, Any]] = []
        rules = sequence(spec.get("rules"), loc / "rules", "rules")
        for r_index, rule in enumerate(rules):
            rule_loc = loc / "rules" / r_index
            rule = mapping(rule, rule_loc, "a rule")
            for key in rule:
                if key not in ("from", "to", "when"):
                    self.report.unsupported(rule_loc / key, f"unknown rule field {key!r}")
            principals: list[Principal] = [{}]
            if "from" in rule:
                sources: list[Principal] = []
                items = sequence(rule["from"], rule_loc / "from", "from")
                for f_index, item in enumerate(items):
                    item_loc = rule_loc / "from" / f_index
                    item = mapping(item, item_loc, "a from entry")
                    source = mapping(item.get("source"), item_loc / "source", "source")
                    found = self._source(source, item_loc / "source", allow)
                    if found is not None:
                        sources.extend(p for p in found if p not in sources)
                principals = sources
            for w_index, cond in enumerate(sequence(rule.get("when"), rule_loc / "when")):
                cond_loc = rule_loc / "when" / w_index
                found = self._condition(mapping(cond, cond_loc, "a condition"), cond_loc, allow)
                if found is None:
                    if allow:
                        principals = []
                    continue
                principals = _intersect(principals, found)
            operations: list[dict[str, Any]] = [{}]
            if "to" in rule:
                operations = []
                for t_index, item in enumerate(sequence(rule["to"], rule_loc / "to", "to")):
                    item_loc = rule_loc / "to" / t_index
                    item = mapping(item, item_loc, "a to entry")
                    op = mapping(item.get("operation"), item_loc / "operation", "operation")
                    permissions = self._operation(op, item_loc / "operation", allow)
                    if permissions is not None and permissions not in operations:
                        operations.append(permissions)
            if not principals or not operations:
                self.report.note(
                    rule_loc, f"{name} rule {r_index + 1} can match no request here and is left out"
                )
                continue
            for o_index, permissions in enumerate(operations):
                policy_name = name
                if len(rules) > 1:
                    policy_name += f".rule-{r_index + 1}"
                if len(operations) > 1:
                    policy_name += f".to-{o_index + 1}"
                policy: dict[str, Any] = {"name": policy_name, "action": action.lower()}
                if principals != [{}]:
                    policy["principals"] = principals
                if permissions:
                    policy["permissions"] = permissions
                policies.append(policy)
        return policies

    # --- result ------------------------------------------------------------------------------

    def policy(self) -> dict[str, Any]:
        if not self.providers:
            raise ImportFailure(
                "no RequestAuthentication jwtRules to translate: a claimroute "
                "policy needs at least one provider"
            )
        out: dict[str, Any] = {
            "version": 1,
            "providers": self.providers,
            "validation": "allow_missing",
        }
        if self.authz:
            allow_exists = any(spec.get("action", "ALLOW") == "ALLOW" for spec, _, _ in self.authz)
            policies: list[dict[str, Any]] = []
            names: set[str] = set()
            for spec, loc, name in self.authz:
                for policy in self._authorization(spec, loc, name):
                    while policy["name"] in names:
                        policy["name"] += "-2"
                    names.add(policy["name"])
                    policies.append(policy)
            # Istio: DENY first, then ALLOW; with any ALLOW policy the rest is denied.
            policies.sort(key=lambda p: p["action"] != "deny")
            out["rbac"] = {
                "default_action": "deny" if allow_exists else "allow",
                "policies": policies,
            }
            if not policies:
                del out["rbac"]["policies"]
        return out


def _value(value: str) -> Any:
    """An Istio condition value: exact, `prefix*`, `*suffix` or `*` (present)."""
    if value == "*":
        return {"present": True}
    if value.endswith("*"):
        return {"prefix": value[:-1]}
    if value.startswith("*"):
        return {"suffix": value[1:]}
    return value


def _matcher(value: Any) -> Any:
    """A matcher usable inside `not`/`all_of` (a bare value stays bare)."""
    return value


def _intersect(left: list[Principal], right: list[Principal]) -> list[Principal]:
    """AND of two OR-lists of principals (providers must agree; claims ANDed)."""
    out: list[Principal] = []
    for a in left:
        for b in right:
            provider_a, provider_b = a.get("provider"), b.get("provider")
            if provider_a and provider_b and provider_a != provider_b:
                continue
            merged: Principal = {}
            if provider_a or provider_b:
                merged["provider"] = provider_a or provider_b
            claims = dict(a.get("claims", {}))
            for path, matcher in b.get("claims", {}).items():
                if path in claims and claims[path] != matcher:
                    first = claims[path]
                    parts = (
                        first["all_of"]
                        if isinstance(first, dict) and "all_of" in first
                        else [first]
                    )
                    claims[path] = {"all_of": [*parts, matcher]}
                else:
                    claims[path] = matcher
            if claims:
                merged["claims"] = claims
            if merged not in out:
                out.append(merged)
    return out
