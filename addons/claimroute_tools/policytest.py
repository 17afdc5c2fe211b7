"""`claimroute test POLICY CASES.yaml`: a table of requests and what must come out of each.

    keys:                                   # private keys to mint tokens with (paths relative
      local: keys/private.jwk.json          # to the cases file), from `claimroute keygen`
    cases:
      - name: an employee reads orders
        request:
          method: GET                       # default GET
          path: /api/orders/1               # default /
          host: api.example.test            # default api.example.test
          headers: {x-trace: "1"}           # a mapping (or a list of [name, value])
          token:                            # minted now: iat = now, exp = now + ttl
            key: local
            claims: {iss: https://idp.local, sub: alice, aud: orders-api, org: solo.io}
            ttl: 300                        # default 300
          # or: token: <a compact JWT>; or: claims: {...} with provider: NAME (no token,
          # no signature check); or nothing: no token
        expect:                             # every field is optional
          outcome: forward                  # forward | refuse | allowed | anonymous | denied
          status: 403                       # the refusal status (a forwarded request has none)
          rbac_policy: orders-readers       # the RBAC policy that decided, or default
          route: employees-to-canary        # the route taken, or null for none
          upstream: http://127.0.0.1:9002   # the route's upstream (or the forwarded URL)
          headers: {x-user: alice, authorization: null}   # null: must be absent upstream

Each case runs through `explain` (the proxy's own code). Exit 0: every case passed; 1: a miss
(named by file and line, with the explanation); 2: bad input (named by file and line).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from claimroute.config import readers as schema
from claimroute.config.source import Loc, load_yaml_file
from claimroute.errors import PolicyError
from claimroute.policy.model import Policy

from .explain import Explanation, RequestSpec, UsageError, explain, render_text, token_problem

EXIT_OK, EXIT_MISS, EXIT_BAD = 0, 1, 2
OUTCOMES = ("forward", "refuse", "allowed", "anonymous", "denied")
EXPECT_FIELDS = ("outcome", "status", "rbac_policy", "route", "upstream", "headers")


@dataclass
class Case:
    name: str
    line: int | None
    spec: RequestSpec
    expect: dict[str, Any]
    expect_lines: dict[str, int | None] = field(default_factory=dict)


@dataclass
class Result:
    case: Case
    misses: list[tuple[int | None, str]]  # (line in the cases file, what differed)
    explanation: Explanation

    @property
    def passed(self) -> bool:
        return not self.misses


# --- reading the cases file ---------------------------------------------------------------------


def _mint(key_path: Path, claims: dict[str, Any], ttl: int, loc: Loc) -> str:
    from claimroute_tools.devtools import sign_with_jwk

    try:
        data = json.loads(key_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError) as exc:
        raise loc.error(f"cannot use the key {key_path}: {exc}") from None
    alg = data.get("alg") if isinstance(data, dict) else None
    if not isinstance(alg, str):
        raise loc.error(f"the key {key_path} has no alg")
    try:
        return sign_with_jwk(data, alg, claims, ttl)
    except Exception as exc:  # joserfc's errors for a key that cannot be imported or sign
        raise loc.error(f"cannot sign with the key {key_path}: {exc}") from None


def _headers(value: Any, loc: Loc) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [(schema.header_name(k, loc / k), _text(v, loc / k)) for k, v in value.items()]
    out = []
    for index, item in enumerate(schema.sequence(value, loc)):
        pair = schema.sequence(item, loc / index)
        if len(pair) != 2:
            raise (loc / index).error("expected [name, value]")
        out.append((schema.header_name(pair[0], loc / index / 0), _text(pair[1], loc / index / 1)))
    return out


def _text(value: Any, loc: Loc) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise loc.error(f"expected a string, got {schema.type_name(value)}")
    return str(value)


def _request(value: Any, loc: Loc, keys: dict[str, Path], policy: Policy) -> RequestSpec:
    spec = schema.mapping(value, loc, allowed=("method", "path", "host", "headers", "token",
                                               "claims", "provider"))  # fmt: skip
    request = RequestSpec()
    if "method" in spec:
        request.method = schema.string(spec["method"], loc / "method")
    if "path" in spec:
        request.path = schema.string(spec["path"], loc / "path")
        if not request.path.startswith("/"):
            raise (loc / "path").error("a path starts with /")
    if "host" in spec:
        request.host = schema.string(spec["host"], loc / "host")
    if "headers" in spec:
        request.headers = _headers(spec["headers"], loc / "headers")
    if "token" in spec and ("claims" in spec or "provider" in spec):
        raise loc.error("give either token or claims with provider, not both")
    if "token" in spec:
        token = spec["token"]
        tloc = loc / "token"
        if isinstance(token, str):
            problem = token_problem(token)
            if problem is not None:
                raise tloc.error(problem)
            request.token = token
        else:
            mint = schema.mapping(token, tloc, allowed=("key", "claims", "ttl"),
                                  required=("key", "claims"))  # fmt: skip
            name = schema.string(mint["key"], tloc / "key")
            if name not in keys:
                known = ", ".join(sorted(keys)) or "none: add a top-level keys mapping"
                raise (tloc / "key").error(f"no key named {name!r} (known: {known})")
            claims = mint["claims"]
            if not isinstance(claims, dict):
                raise (tloc / "claims").error("expected a mapping of claims")
            ttl = schema.integer(mint.get("ttl", 300), tloc / "ttl")
            request.token = _mint(keys[name], claims, ttl, tloc)
    if ("claims" in spec) != ("provider" in spec):
        raise loc.error("claims and provider go together")
    if "claims" in spec:
        if not isinstance(spec["claims"], dict):
            raise (loc / "claims").error("expected a mapping of claims")
        provider = schema.string(spec["provider"], loc / "provider")
        if provider not in policy.providers:
            known = ", ".join(sorted(policy.providers))
            raise (loc / "provider").error(f"no provider named {provider!r} (known: {known})")
        request.claims = spec["claims"]
        request.provider = provider
    return request


def load_cases(path: Path, policy: Policy) -> list[Case]:
    """Read the cases file (raises PolicyError naming file, key path and line)."""
    document, root = load_yaml_file(path)
    top = schema.mapping(document, root, allowed=("keys", "cases"), required=("cases",))
    keys: dict[str, Path] = {}
    for name, value in schema.mapping(top.get("keys", {}), root / "keys").items():
        keys[name] = path.parent / schema.string(value, root / "keys" / name)
    cases: list[Case] = []
    names: set[str] = set()
    for index, item in enumerate(schema.sequence(top["cases"], root / "cases", non_empty=True)):
        loc = root / "cases" / index
        entry = schema.mapping(item, loc, allowed=("name", "request", "expect"),
                               required=("name", "expect"))  # fmt: skip
        name = schema.string(entry["name"], loc / "name")
        if name in names:
            raise (loc / "name").error(f"case name {name!r} is used twice")
        names.add(name)
        spec = _request(entry.get("request", {}), loc / "request", keys, policy)
        eloc = loc / "expect"
        expect = schema.mapping(entry["expect"], eloc, allowed=EXPECT_FIELDS)
        if "outcome" in expect:
            schema.choice(expect["outcome"], eloc / "outcome", OUTCOMES)
        if "status" in expect:
            schema.integer(expect["status"], eloc / "status", minimum=100, maximum=599)
        if "headers" in expect:
            headers = schema.mapping(expect["headers"], eloc / "headers")
            for header, value in headers.items():
                if value is not None:
                    _text(value, eloc / "headers" / header)
        lines = {key: (eloc / key).line for key in expect}
        cases.append(Case(name, loc.line, spec, expect, lines))
    return cases


# --- running ------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def check(case: Case, ex: Explanation) -> list[tuple[int | None, str]]:
    """What came out differently from the case's `expect` (empty: the case passed), each
    with the line of the expectation."""
    misses: list[tuple[int | None, str]] = []
    expect = case.expect
    decision = ex.decision

    def miss(key: str, got: Any, want: Any | None = None) -> None:
        shown = expect.get(key) if want is None else want
        misses.append(
            (case.expect_lines.get(key), f"{key}: expected {_show(shown)}, got {_show(got)}")
        )

    if "outcome" in expect:
        want = expect["outcome"]
        got = ex.outcome if want in ("forward", "refuse") else decision.outcome
        if got != want:
            miss("outcome", got)
    if "status" in expect and ex.status != expect["status"]:
        miss("status", ex.status if ex.status is not None else "forwarded (no refusal)")
    if "rbac_policy" in expect:
        got_policy = None
        if decision.rbac is not None:
            got_policy = decision.rbac.policy or "default"
        want_policy = expect["rbac_policy"]
        if got_policy != want_policy:
            miss("rbac_policy", got_policy if decision.rbac is not None else "(rbac not reached)")
    if "route" in expect:
        got_route = decision.route.name if decision.route is not None else None
        if got_route != expect["route"]:
            miss("route", got_route)
    if "upstream" in expect:
        want_up = expect["upstream"]
        got_up = decision.route.upstream if decision.route is not None else None
        url = ex.upstream_url
        if want_up != got_up and want_up != url:
            miss("upstream", got_up if got_up is not None else url)
    if "headers" in expect:
        sent: dict[str, list[str]] = {}
        for name, value in ex.upstream_headers:
            sent.setdefault(name.lower(), []).append(value)
        for name, want in expect["headers"].items():
            values = sent.get(str(name).lower())
            got_value = ", ".join(values) if values else None
            if ex.response is not None:
                got_value = "(refused: nothing sent upstream)"
            if (want is None and values) or (want is not None and got_value != str(want)):
                text = f"headers.{name}: expected {_show(want)}, got {_show(got_value)}"
                misses.append((case.expect_lines.get("headers"), text))
    return misses


def run_cases(policy: Policy, cases: list[Case]) -> list[Result]:
    results = []
    for case in cases:
        ex = explain(policy, case.spec)
        results.append(Result(case, check(case, ex), ex))
    return results


def write_junit(path: Path, cases_file: str, results: list[Result], seconds: float) -> None:
    failures = sum(1 for r in results if not r.passed)
    suite = ET.Element("testsuite", name="claimroute test", tests=str(len(results)),
                       failures=str(failures), errors="0", time=f"{seconds:.3f}")  # fmt: skip
    for result in results:
        case = result.case
        element = ET.SubElement(suite, "testcase", name=case.name, classname=cases_file,
                                file=cases_file, line=str(case.line or 0))  # fmt: skip
        if not result.passed:
            message = "; ".join(f"{cases_file}:{line}: {text}" for line, text in result.misses)
            failure = ET.SubElement(element, "failure", message=message)
            failure.text = "\n".join(render_text(result.explanation.data))
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    path.write_text(ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")


def _summary(result: Result) -> str:
    ex = result.explanation
    if ex.response is not None:
        return f"refuse {ex.status} {ex.decision.reason}"
    route = ex.decision.route
    return f"forward {route.name if route else '(no route)'} -> {ex.upstream_url}"


def main(args: Any) -> int:
    """`claimroute test POLICY CASES.yaml [--junit FILE]`; returns the exit code."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .cli import load_policy_or_say

    policy = load_policy_or_say(args.policy)
    if policy is None:
        return EXIT_BAD
    cases_path = Path(args.cases)
    try:
        cases = load_cases(cases_path, policy)
    except PolicyError as exc:
        print(f"invalid cases file: {exc}", file=sys.stderr)
        return EXIT_BAD
    started = time.monotonic()
    try:
        results = run_cases(policy, cases)
    except UsageError as exc:
        print(f"invalid cases file: {cases_path}: {exc}", file=sys.stderr)
        return EXIT_BAD
    elapsed = time.monotonic() - started
    console = Console(highlight=False, soft_wrap=True)
    table = Table(title=f"{cases_path} against {policy.path}")
    table.add_column("line", justify="right")
    table.add_column("case")
    table.add_column("result")
    table.add_column("what came out", overflow="fold")
    for result in results:
        mark = "[green]pass[/]" if result.passed else "[red]MISS[/]"
        table.add_row(str(result.case.line or ""), Text(result.case.name), mark,
                      Text(_summary(result)))  # fmt: skip
    console.print(table)
    failed = [r for r in results if not r.passed]
    for result in failed:
        case = result.case
        console.print(f"\n{cases_path}:{case.line}: case {case.name!r} missed:", markup=False)
        for line, text in result.misses:
            console.print(f"  {cases_path}:{line or case.line}: {text}", markup=False)
        console.print("  explanation:", markup=False)
        for line in render_text(result.explanation.data):
            console.print(f"    {line}", markup=False)
    console.print(f"\n{len(results) - len(failed)} passed, {len(failed)} missed", markup=False)
    if args.junit:
        write_junit(Path(args.junit), str(cases_path), results, elapsed)
    return EXIT_MISS if failed else EXIT_OK
