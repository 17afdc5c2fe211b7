"""`claimroute explain POLICY`: what the proxy would do with one request, stage by stage.

Nothing here evaluates a rule a second way: the request goes through the proxy's own code —
`mitm.hygiene` and `mitm.flowedit` on a real mitmproxy request, `pipeline.decide` with a
`Recorder` as its trace (`decide`, `Rbac.decide`, `route_for` and the caller's half tell it
what they evaluate), `mitm.flowedit.apply_decision` for what the upstream receives and
`mitm.responses.response_parts` for a refusal. With `--claims` and `--provider` the caller is
built by the pipeline's `identity_of` and the same `authorize_and_route` runs (no signature,
time or audience check: the explanation says so).

The one breakdown the code does not record itself is which of a rule's conditions failed:
`RequestConditions.matches` and `Principal.matches` stop at the first failing condition, so each
condition is asked alone, in their order, through the same objects (later ones: not evaluated),
and the breakdown is checked against the answer the traced evaluation gave.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http

from claimroute.errors import Rejection
from claimroute.keys.source import KeySource
from claimroute.match.conditions import RequestConditions
from claimroute.match.request import RequestView
from claimroute.mitm.addon import DRY_RUN_HEADER, request_view
from claimroute.mitm.flowedit import apply_decision, strip_headers, strip_key
from claimroute.mitm.hygiene import request_problem
from claimroute.mitm.responses import response_parts
from claimroute.pipeline.decide import Decision, authorize_and_route, decide
from claimroute.pipeline.extract import FoundToken
from claimroute.pipeline.identity import Identity, identity_of
from claimroute.pipeline.keysources import build_key_sources
from claimroute.pipeline.verify import VerifiedToken
from claimroute.policy.model import Policy, RemoteJwks
from claimroute.policy.rbac import Principal, RbacPolicy, RbacResult
from claimroute.policy.routes import (
    Route,
    RouteChoice,
    RouteMatch,
    by_value,
    format_split_by,
)

MATCHED, NOT_MATCHED, NOT_EVALUATED = "matched", "not matched", "not evaluated"
CLAIMS_ONLY = "claims given (--claims): signature, time and audience not checked"


class UsageError(Exception):
    """Bad input (a request, claims, a provider): exit 2 with this message, no traceback."""


@dataclass
class RequestSpec:
    """One request as `explain` and `test` take it."""

    method: str = "GET"
    path: str = "/"
    host: str = "api.example.test"
    headers: list[tuple[str, str]] = field(default_factory=list)
    scheme: str = "http"
    token: str | None = None  # sent as `Authorization: Bearer <token>`
    claims: dict[str, Any] | None = None  # with provider: no token, no verification
    provider: str | None = None


# --- the trace ----------------------------------------------------------------------------------


class Recorder:
    """A `DecisionTrace`: keeps what each stage reports, in order."""

    def __init__(self) -> None:
        self.found: list[FoundToken] | None = None
        self.preflight = False
        self.verified: VerifiedToken | None = None
        self.token_refusal: tuple[Rejection, bool] | None = None
        self.identity: Identity | None = None
        self.principals: dict[str, list[bool]] = {}
        self.rules: list[tuple[RbacPolicy, bool, bool | None]] = []
        self.rbac: tuple[RbacResult, bool] | None = None
        self.route_callers: dict[str, tuple[bool, RouteChoice | None]] = {}
        self.route_steps: list[tuple[Route, RouteChoice | None, bool | None]] = []
        self.route_done = False
        self.refusal: Decision | None = None

    def tokens_found(self, found: list[FoundToken]) -> None:
        self.found = list(found)

    def preflight_bypass(self) -> None:
        self.preflight = True

    def token_verified(self, verified: VerifiedToken) -> None:
        self.verified = verified

    def token_refused(self, rejection: Rejection, ignored: bool) -> None:
        self.token_refusal = (rejection, ignored)

    @property
    def location_refused(self) -> bool:
        """The token verified, then was refused for the place it was found in (`explain`
        passes no token cache, so a token that verified was always traced)."""
        return self.token_refusal is not None and self.verified is not None

    def caller(self, identity: Identity) -> None:
        self.identity = identity

    def rbac_principal(self, policy: RbacPolicy, index: int, matched: bool) -> None:
        self.principals.setdefault(policy.name, []).append(matched)

    def rbac_rule(self, policy: RbacPolicy, is_principal: bool, covered: bool | None) -> None:
        self.rules.append((policy, is_principal, covered))

    def rbac_result(self, result: RbacResult, by_default: bool) -> None:
        self.rbac = (result, by_default)

    def route_caller(self, route: Route, matched: bool, choice: RouteChoice | None) -> None:
        self.route_callers[route.name] = (matched, choice)

    def route_request(self, route: Route, choice: RouteChoice | None, matched: bool | None) -> None:
        self.route_steps.append((route, choice, matched))

    def route_result(self, choice: RouteChoice | None) -> None:
        self.route_done = True

    def refused(self, decision: Decision) -> None:
        self.refusal = decision


# --- the request --------------------------------------------------------------------------------


def parse_header(text: str) -> tuple[str, str]:
    """`'name: value'` -> (name, value)."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise UsageError(f"--header {text!r}: expected 'name: value'")
    return name.strip(), value.strip()


def token_problem(token: str) -> str | None:
    """Why a token is not a JWT at all (bad input, not a request to explain), or None."""
    from claimroute.pipeline.verify import parse_token

    try:
        parse_token(token)
    except Rejection as exc:
        return f"not a parsable JWT: {exc.reason}"
    return None


def build_request(spec: RequestSpec) -> http.Request:
    """A mitmproxy request as a client would send it to the proxy."""
    if not spec.path.startswith("/"):
        raise UsageError(f"path {spec.path!r}: a path starts with /")
    if not spec.host or any(c in spec.host for c in "/ @?#"):
        raise UsageError(f"host {spec.host!r}: expected a host name, optionally with :port")
    try:
        request = http.Request.make(spec.method, f"{spec.scheme}://{spec.host}{spec.path}")
    except ValueError as exc:
        raise UsageError(f"request {spec.method} {spec.host}{spec.path}: {exc}") from None
    fields = [
        (b"host", spec.host.encode("idna") if not spec.host.isascii() else spec.host.encode())
    ]
    if any(name.lower() == "host" for name, _ in spec.headers):
        fields = []
    if spec.token is not None:
        fields.append((b"authorization", f"Bearer {spec.token}".encode()))
    for name, value in spec.headers:
        fields.append((name.encode("utf-8", "surrogateescape"),
                       value.encode("utf-8", "surrogateescape")))  # fmt: skip
    request.headers.fields = tuple(fields)
    return request


# --- running it ----------------------------------------------------------------------------------


@dataclass
class Explanation:
    """Everything `explain` found: the trace, the decision and what leaves the proxy."""

    policy: Policy
    spec: RequestSpec
    trace: Recorder
    decision: Decision
    view: RequestView
    stripped: list[str]  # client copies of identity headers removed first
    hygiene: Rejection | None  # refused before any decision (mitm.hygiene)
    keys_notes: list[str]
    upstream_url: str | None = None
    upstream_headers: list[tuple[str, str]] = field(default_factory=list)
    response: tuple[int, bytes, dict[str, str]] | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> int | None:
        return self.response[0] if self.response is not None else None

    @property
    def outcome(self) -> str:
        """forward | refuse."""
        return "refuse" if self.response is not None else "forward"


async def _prefetch(policy: Policy, sources: Mapping[str, KeySource]) -> list[str]:
    """Fetch every remote key set once; what could not be fetched, in words."""
    notes: list[str] = []
    for name, provider in policy.providers.items():
        if not isinstance(provider.jwks, RemoteJwks):
            continue
        source = sources[name]
        await source.keys_for_kid(None)
        state = source.state()
        where = state.get("jwks_url") or state.get("source")
        if source.current() is None:
            error = state.get("last_error") or "no answer in time"
            notes.append(f"provider {name}: keys could not be fetched from {where}: {error}")
        else:
            notes.append(f"provider {name}: keys fetched from {where} (kids {state.get('kids')})")
    return notes


async def explain_async(policy: Policy, spec: RequestSpec, now: float | None = None) -> Explanation:
    """Run the request through the proxy's code with a trace."""
    now = time.time() if now is None else now
    if spec.claims is not None or spec.provider is not None:
        if spec.claims is None or spec.provider is None:
            raise UsageError("--claims and --provider go together")
        if spec.token is not None:
            raise UsageError("give either --token or --claims with --provider, not both")
        if spec.provider not in policy.providers:
            known = ", ".join(sorted(policy.providers))
            raise UsageError(f"--provider {spec.provider!r}: no such provider (known: {known})")
    bad_token = None if spec.token is None else token_problem(spec.token)
    if bad_token is not None:
        raise UsageError(f"--token: {bad_token}")
    request = build_request(spec)
    # What the addon does first: strip client copies of identity headers, then hygiene.
    before = [name.decode("utf-8", "surrogateescape") for name, _ in request.headers.fields]
    keys = frozenset(strip_key(name) for name in policy.identity_headers)
    if keys:
        strip_headers(request, keys)
    after = [name.decode("utf-8", "surrogateescape") for name, _ in request.headers.fields]
    stripped = _removed(before, after)
    locations = policy.token_locations
    problem = request_problem(request, locations.cookies, bool(locations.query_params),
                              [name for name, _ in locations.header_prefixes])  # fmt: skip
    view = request_view(request, reads_query=bool(locations.query_params),
                        reads_cookies=bool(locations.cookies))  # fmt: skip
    trace = Recorder()
    notes: list[str] = []
    if problem is not None:
        decision = Decision("denied", problem.reason, problem)
    elif spec.claims is not None and spec.provider is not None:
        provider = policy.providers[spec.provider]
        identity = identity_of(policy, provider, spec.claims)
        decision = Decision(
            "allowed", CLAIMS_ONLY, None, identity.provider_name, identity.sub,
            identity.claims, None, identity.keep_token, identity.set_headers,
        )  # fmt: skip
        decision = authorize_and_route(view, policy, identity, decision, trace)
    else:
        sources = build_key_sources(policy)
        try:
            if spec.token is not None or view.headers.get_all("authorization"):
                notes = await _prefetch(policy, sources)
            decision = await decide(view, policy, sources, now, None, trace)
        finally:
            for source in sources.values():
                source.close()
            await asyncio.sleep(0)  # let closed sessions finish
    result = Explanation(policy, spec, trace, decision, view, stripped, problem, notes)
    rejection = decision.rejection
    if rejection is not None:
        status, body, headers = response_parts(rejection, view.realm)
        if spec.method == "HEAD":
            headers = {**headers, "content-length": str(len(body))}
            body = b""
        result.response = (status, body, headers)
    else:
        apply_decision(request, decision)
        result.upstream_url = request.url
        result.upstream_headers = [
            (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for k, v in request.headers.fields
        ]
    result.data = to_data(result)
    return result


def explain(policy: Policy, spec: RequestSpec, now: float | None = None) -> Explanation:
    return asyncio.run(explain_async(policy, spec, now))


def _removed(before: list[str], after: list[str]) -> list[str]:
    """The names of `before` that `after` (the same list with some removed) lacks."""
    rest = list(after)
    out = []
    for name in before:
        if rest and rest[0] == name:
            rest.pop(0)
        else:
            out.append(name)
    return out


# --- breakdowns (the same condition objects, one condition at a time) ---------------------------

_CONDITION_FIELDS = ("methods", "paths", "hosts", "headers")


def _show_condition(name: str, value: Any) -> str:
    if name in ("methods", "hosts"):
        return f"{name} {sorted(value)}"
    if name == "paths":
        rules = [f"exact {p}" for p in sorted(value.exact)] + [
            f"prefix {p}" for p in value.prefixes
        ]
        rules += [f"regex {p!r}" for p in value.patterns]
        return f"paths [{', '.join(rules)}]"
    return repr(value)


def conditions_breakdown(
    conditions: RequestConditions | None, request: RequestView, deny: bool, answer: bool | None
) -> list[dict[str, str]]:
    """Each request condition with matched / not matched / not evaluated, in the order
    `RequestConditions.matches` tests them (it stops at the first that fails)."""
    if conditions is None:
        return []
    out: list[dict[str, str]] = []
    failed = answer is None  # the conditions were not evaluated at all
    for name in _CONDITION_FIELDS:
        value = getattr(conditions, name)
        if value is None:
            continue
        if failed:
            state = NOT_EVALUATED
        else:
            ok = RequestConditions(**{name: value}).matches(request, deny=deny)
            state = MATCHED if ok else NOT_MATCHED
            failed = not ok
        out.append({"condition": _show_condition(name, value), "result": state})
    if answer is not None and (not failed) != answer:  # never: the same objects answer
        out.append({"condition": "(breakdown disagrees with the evaluation)", "result": "?"})
    return out


def _principal_text(principal: Principal) -> str:
    parts = []
    if principal.provider is not None:
        parts.append(f"provider {principal.provider}")
    if principal.claims is not None:
        parts.append(repr(principal.claims))
    return " and ".join(parts) or "anyone"


def _choice_data(route: Route, choice: RouteChoice, claims: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"upstream": choice.upstream}
    split = route.split
    if split is not None:
        value = by_value(claims, split.by)
        used = format_split_by(split.by)
        if value is None and split.fallback_by:
            value = by_value(claims, split.fallback_by)
            used = format_split_by(split.fallback_by)
        data["split"] = {
            "by": used,
            "value": value,
            "bucket": choice.bucket,
            "target": [t.url for t in split.targets].index(choice.upstream),
        }
    return data


# --- the document -------------------------------------------------------------------------------


def _token_data(ex: Explanation) -> dict[str, Any]:
    t = ex.trace
    spec = ex.spec
    if spec.claims is not None:
        return {"found": None, "note": "no token: the caller comes from --claims"}
    found = [
        {"kind": f.kind, "name": f.name, "prefix": f.prefix, "length": len(f.token)}
        for f in (t.found or [])
    ]
    return {"found": found}


def _verification_data(ex: Explanation) -> dict[str, Any]:
    t, spec = ex.trace, ex.spec
    if spec.claims is not None:
        return {"result": "skipped", "provider": spec.provider, "note": CLAIMS_ONLY}
    if t.preflight:
        return {"result": "skipped", "note": "CORS preflight under cors_preflight: bypass"}
    out: dict[str, Any] = {"keys": ex.keys_notes}
    if t.verified is not None:
        v = t.verified
        provider = v.provider
        checks = [
            ("size and shape", "ok"),
            ("header", f"alg {v.header.get('alg')}, kid {v.header.get('kid')}"),
            ("payload", "a JSON object"),
            ("issuer", f"{provider.issuer} -> provider {provider.name}"),
            ("algorithm", f"{v.header.get('alg')} allowed"),
            ("time", _time_text(v.claims)),
            ("signature", "verifies"),
            ("audience", "no audience required" if provider.audiences is None
             else f"{v.claims.get('aud')!r} in {sorted(provider.audiences)}"),
        ]  # fmt: skip
        out["provider"] = provider.name
        out["checks"] = [{"check": c, "result": "passed", "detail": d} for c, d in checks]
    if t.token_refusal is not None:
        rejection, ignored = t.token_refusal
        out["refused"] = {
            "stage": "token location" if t.location_refused else "verification",
            "status": rejection.status,
            "reason": rejection.reason,
            "ignored": ignored,
        }
        if t.location_refused:
            out["refused"]["detail"] = "the provider does not list the place the token was found"
        out["result"] = "ignored (request goes on as anonymous)" if ignored else "refused"
    elif t.verified is not None:
        out["result"] = "verified"
    else:
        out["result"] = "no token"
    return out


def _time_text(claims: Mapping[str, Any]) -> str:
    parts = []
    for name in ("exp", "nbf", "iat"):
        if name in claims:
            parts.append(f"{name} {claims[name]}")
    return ", ".join(parts) or "no time claims"


def _rbac_data(ex: Explanation) -> dict[str, Any] | None:
    rbac = ex.policy.rbac
    t = ex.trace
    if rbac is None:
        return None
    if t.identity is None:
        return {"evaluated": False, "note": "not reached"}
    reached = {policy.name: (is_p, covered) for policy, is_p, covered in t.rules}
    policies = []
    for policy, result in rbac._rules:
        entry: dict[str, Any] = {"name": policy.name, "action": policy.action}
        if policy.name not in reached:
            entry["result"] = NOT_EVALUATED
            policies.append(entry)
            continue
        is_principal, covered = reached[policy.name]
        if policy.principals is None:
            entry["principals"] = [{"principal": "everyone (no principals)", "result": MATCHED}]
        else:
            seen = t.principals.get(policy.name, [])
            entry["principals"] = [
                {"principal": _principal_text(p),
                 "result": NOT_EVALUATED if i >= len(seen) else MATCHED if seen[i] else NOT_MATCHED}
                for i, p in enumerate(policy.principals)
            ]  # fmt: skip
        entry["permissions"] = conditions_breakdown(
            policy.permissions, ex.view, not result.allowed, covered
        )
        if not is_principal:
            entry["result"] = "caller is not a principal"
        else:
            entry["result"] = "decides" if covered else "permissions do not cover the request"
        policies.append(entry)
    answer = ex.decision.rbac
    out: dict[str, Any] = {
        "mode": "dry_run" if rbac.dry_run else "enforce",
        "default_action": "allow" if rbac.default_allow else "deny",
        "policies": policies,
    }
    if answer is not None:
        out["answer"] = answer.record()
        out["decided_by"] = answer.policy or "(default action)"
        if answer.dry_run:
            out["dry_run"] = (
                f"would {'allow' if answer.allowed else 'deny'}; enforced: allowed "
                f"(the response gets `{DRY_RUN_HEADER}: {answer.summary()}` with debug headers)"
            )
    return out


def _routes_data(ex: Explanation) -> dict[str, Any]:
    t = ex.trace
    claims = t.identity.claims if t.identity is not None else None
    steps = {route.name: (choice, matched) for route, choice, matched in t.route_steps}
    routes = []
    for route in ex.policy.routes:
        entry: dict[str, Any] = {"name": route.name}
        if not t.route_done and t.identity is None:
            entry["result"] = NOT_EVALUATED
        elif route.name not in steps:
            entry["result"] = NOT_EVALUATED
            if t.route_done:
                entry["why"] = "an earlier route was taken"
            else:
                entry["why"] = "the request was refused before routing"
                entry["caller"] = _caller_breakdown(route, claims)
        else:
            choice, matched = steps[route.name]
            entry["caller"] = _caller_breakdown(route, claims)
            if matched is None:
                entry["result"] = NOT_MATCHED
                entry["why"] = "conditions on the caller fail"
            else:
                entry["request"] = conditions_breakdown(route.match.request, ex.view, False,
                                                        matched)  # fmt: skip
                entry["result"] = MATCHED if matched else NOT_MATCHED
                entry["why"] = "taken" if matched else "conditions on the request fail"
            if choice is not None:
                entry["choice"] = _choice_data(route, choice, claims)
        routes.append(entry)
    chosen = ex.decision.route
    out: dict[str, Any] = {"routes": routes, "taken": chosen.name if chosen else None}
    if chosen is not None:
        out["upstream"] = chosen.upstream
        out["bucket"] = chosen.bucket
    return out


def _caller_breakdown(route: Route, claims: Any) -> list[dict[str, str]]:
    """Each condition on the caller, in the order `RouteMatch.identity_matches` tests them,
    asked alone through it (it stops at the first that fails)."""
    match = route.match
    out = []
    failed = False
    if match.authenticated is not None:
        failed = not RouteMatch(authenticated=match.authenticated).identity_matches(claims)
        out.append({"condition": f"authenticated {str(match.authenticated).lower()}",
                    "result": NOT_MATCHED if failed else MATCHED})  # fmt: skip
    if match.claims is not None:
        if failed:
            state = NOT_EVALUATED
        else:
            ok = RouteMatch(claims=match.claims).identity_matches(claims)
            state = MATCHED if ok else NOT_MATCHED
        out.append({"condition": repr(match.claims), "result": state})
    return out


def to_data(ex: Explanation) -> dict[str, Any]:
    """The explanation as one JSON-able document."""
    spec = ex.spec
    data: dict[str, Any] = {
        "policy": ex.policy.path,
        "request": {
            "method": spec.method,
            "url": f"{spec.scheme}://{spec.host}{spec.path}",
            "headers": [list(h) for h in spec.headers],
            "token": spec.token is not None,
        },
        "stripped_headers": ex.stripped,
    }
    if ex.hygiene is not None:
        data["hygiene"] = {"status": ex.hygiene.status, "reason": ex.hygiene.reason}
    else:
        data["token"] = _token_data(ex)
        data["verification"] = _verification_data(ex)
        identity = ex.trace.identity
        if identity is not None:
            data["caller"] = {"provider": identity.provider_name, "sub": identity.sub,
                              "anonymous": identity.provider is None}  # fmt: skip
        data["rbac"] = _rbac_data(ex)
        data["routes"] = _routes_data(ex)
    data["decision"] = ex.decision.record()
    if ex.response is not None:
        status, body, headers = ex.response
        data["outcome"] = {"action": "refuse", "status": status,
                           "body": body.decode("utf-8", "replace"), "headers": headers,
                           "www_authenticate": headers.get("www-authenticate")}  # fmt: skip
    else:
        token = ex.decision.token
        data["outcome"] = {
            "action": "forward",
            "url": ex.upstream_url,
            "headers": [list(h) for h in ex.upstream_headers],
            "claim_headers": [list(h) for h in ex.decision.set_headers],
            "token": None if token is None else ("kept" if ex.decision.keep_token else "removed"),
        }
    return data


# --- text ---------------------------------------------------------------------------------------


def render_text(data: Mapping[str, Any]) -> list[str]:
    """The explanation as lines of text, stage by stage."""
    lines: list[str] = []
    add = lines.append
    req = data["request"]
    add(f"request: {req['method']} {req['url']}")
    if data["stripped_headers"]:
        add(f"  client copies of identity headers removed: {', '.join(data['stripped_headers'])}")
    if "hygiene" in data:
        h = data["hygiene"]
        add(f"refused before any decision (request hygiene): {h['status']} {h['reason']}")
    else:
        token = data["token"]
        add("1. token")
        if token["found"] is None:
            add(f"  {token['note']}")
        elif not token["found"]:
            add("  none found")
        for f in token["found"] or []:
            where = f"header {f['name']}" + (f" (prefix {f['prefix']!r})" if f["prefix"] else "")
            if f["kind"] != "header":
                where = f"{f['kind']} {f['name']}"
            add(f"  found in {where}, {f['length']} characters")
        if token["found"] and len(token["found"]) > 1:
            add("  more than one token: refused (RFC 6750 §2)")
        v = data["verification"]
        add("2. verification")
        for note in v.get("keys", []):
            add(f"  keys: {note}")
        if v.get("note"):
            add(f"  {v['note']}")
        if v.get("provider"):
            add(f"  provider: {v['provider']}")
        for check in v.get("checks", []):
            add(f"  {check['check']}: {check['result']} ({check['detail']})")
        if "refused" in v:
            r = v["refused"]
            add(f"  refused at {r['stage']}: {r['status']} {r['reason']}")
            if r.get("detail"):
                add(f"    {r['detail']}")
        add(f"  result: {v['result']}")
        caller = data.get("caller")
        if caller is not None:
            who = "anonymous" if caller["anonymous"] else f"{caller['provider']}/{caller['sub']}"
            add(f"  caller: {who}")
        rbac = data["rbac"]
        add("3. rbac")
        if rbac is None:
            add("  no rbac section: everything allowed")
        elif "policies" not in rbac:
            add(f"  {rbac['note']}")
        else:
            add(f"  mode {rbac['mode']}, default action {rbac['default_action']}")
            for p in rbac["policies"]:
                add(f"  [{p['action']}] {p['name']}: {p['result']}")
                for pr in p.get("principals", []):
                    add(f"      principal {pr['principal']}: {pr['result']}")
                for c in p.get("permissions", []):
                    add(f"      permission {c['condition']}: {c['result']}")
            if "answer" in rbac:
                a = rbac["answer"]
                add(f"  answer: {a['decision']} by {rbac['decided_by']} ({a['mode']})")
            if "dry_run" in rbac:
                add(f"  dry run: {rbac['dry_run']}")
        routes = data["routes"]
        add("4. routes")
        if not routes["routes"]:
            add("  no routes")
        for r in routes["routes"]:
            why = f" ({r['why']})" if r.get("why") else ""
            add(f"  {r['name']}: {r['result']}{why}")
            for c in r.get("caller", []):
                add(f"      caller {c['condition']}: {c['result']}")
            for c in r.get("request", []):
                add(f"      request {c['condition']}: {c['result']}")
            choice = r.get("choice")
            if choice and r["result"] == MATCHED:
                split = choice.get("split")
                if split is not None:
                    if split["bucket"] is None:
                        add(f"      split by {split['by']}: no value, first target with weight")
                    else:
                        add(f"      split by {split['by']} = {split['value']!r}: bucket "
                            f"{split['bucket']:04d} -> target {split['target']}")  # fmt: skip
                add(f"      upstream {choice['upstream']}")
        add(f"  route taken: {routes['taken'] or '(none: destination unchanged)'}")
    out = data["outcome"]
    add("5. outcome")
    if out["action"] == "forward":
        add(f"  forward to {out['url']}")
        if out["token"] is not None:
            add(f"  token {out['token']}")
        for name, value in out["claim_headers"]:
            add(f"  sets {name}: {value}")
        add("  upstream request headers:")
        for name, value in out["headers"]:
            add(f"    {name}: {value}")
    else:
        add(f"  refuse: {out['status']} {out['body']!r}")
        for name, value in out["headers"].items():
            add(f"    {name}: {value}")
    return lines


# --- command line -------------------------------------------------------------------------------


def parse_claims(text: str) -> dict[str, Any]:
    try:
        claims = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--claims: not valid JSON: {exc}") from None
    if not isinstance(claims, dict):
        raise UsageError("--claims: expected a JSON object")
    return claims


def main(args: Any) -> int:
    """`claimroute explain` (argparse namespace from cli.py); returns the exit code."""
    import sys

    from .cli import load_policy_or_say

    policy = load_policy_or_say(args.policy)
    if policy is None:
        return 2
    try:
        headers: Sequence[tuple[str, str]] = [parse_header(h) for h in args.header or []]
        spec = RequestSpec(
            method=args.method, path=args.path, host=args.host, headers=list(headers),
            token=args.token, provider=args.provider,
            claims=parse_claims(args.claims) if args.claims is not None else None,
        )  # fmt: skip
        ex = explain(policy, spec)
    except UsageError as exc:
        print(f"claimroute explain: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(ex.data, indent=2, ensure_ascii=False))
    else:
        print("\n".join(render_text(ex.data)))
    return 0
