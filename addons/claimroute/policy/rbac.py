"""Stage 3: authorize on claims (docs/policy.md `rbac`).

Deny policies beat allow policies; when nothing matches, `default_action` decides. In
`dry_run` mode the decision is made and recorded but never blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from claimroute.config import readers as schema
from claimroute.config.source import Loc
from claimroute.match.conditions import RequestConditions, parse_request_conditions
from claimroute.match.matchers import ClaimsMatcher, compile_claims
from claimroute.match.request import RequestView


class RbacTrace(Protocol):
    """What RBAC evaluation tells an observer (`claimroute explain`); see `pipeline.decide`."""

    def rbac_principal(self, policy: RbacPolicy, index: int, matched: bool) -> None:
        """`policy`'s principal number `index` was tested on the caller."""

    def rbac_rule(self, policy: RbacPolicy, is_principal: bool, covered: bool | None) -> None:
        """`policy` was reached in evaluation order: whether the caller is one of its
        principals and, if so, whether its permissions cover the request."""

    def rbac_result(self, result: RbacResult, by_default: bool) -> None:
        """The answer (`by_default`: no policy matched, the default action decided)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who: an optional provider pin AND all claim matchers."""

    provider: str | None
    claims: ClaimsMatcher | None

    def matches(self, provider: str | None, claims: Mapping[str, Any] | None) -> bool:
        if self.provider is not None and provider != self.provider:
            return False
        return self.claims is None or self.claims.matches(claims)


@dataclass(frozen=True, slots=True)
class RbacPolicy:
    """A named allow or deny rule: any principal AND the permissions."""

    name: str
    action: str  # "allow" | "deny"
    principals: tuple[Principal, ...] | None
    permissions: RequestConditions | None  # what: methods, paths, hosts

    def is_principal(
        self,
        provider: str | None,
        claims: Mapping[str, Any] | None,
        trace: RbacTrace | None = None,
    ) -> bool:
        """Whether the caller is one of the principals (no `principals` list: everyone is)."""
        if self.principals is None:
            return True
        if trace is not None:
            for index, principal in enumerate(self.principals):
                matched = principal.matches(provider, claims)
                trace.rbac_principal(self, index, matched)
                if matched:
                    return True
            return False
        for principal in self.principals:  # noqa: SIM110 (performance rules)
            if principal.matches(provider, claims):
                return True
        return False


@dataclass(frozen=True, slots=True)
class RbacResult:
    """The authorization outcome: allowed or not, which policy decided, and the mode."""

    allowed: bool
    policy: str | None  # None = the default action decided
    dry_run: bool

    def record(self) -> dict[str, Any]:
        return {
            "decision": "allow" if self.allowed else "deny",
            "policy": self.policy,
            "mode": "dry_run" if self.dry_run else "enforce",
        }

    def summary(self) -> str:
        """`deny; policy=NAME` style text for the dry-run debug header."""
        return f"{'allow' if self.allowed else 'deny'}; policy={self.policy or '(default)'}"


@dataclass(frozen=True, slots=True)
class Rbac:
    """All RBAC policies, split by action once at load."""

    dry_run: bool
    default_allow: bool
    deny: tuple[RbacPolicy, ...]
    allow: tuple[RbacPolicy, ...]
    # Every policy in evaluation order (deny first) with the result it gives when it matches,
    # and the default action's result: results are immutable, so they are built once here.
    _rules: tuple[tuple[RbacPolicy, RbacResult], ...] = field(init=False, repr=False, compare=False)
    _default: RbacResult = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rules = tuple((p, RbacResult(False, p.name, self.dry_run)) for p in self.deny) + tuple(
            (p, RbacResult(True, p.name, self.dry_run)) for p in self.allow
        )
        object.__setattr__(self, "_rules", rules)
        object.__setattr__(self, "_default", RbacResult(self.default_allow, None, self.dry_run))

    def principal_hits(
        self,
        provider: str | None,
        claims: Mapping[str, Any] | None,
        trace: RbacTrace | None = None,
    ) -> tuple[bool, ...]:
        """Per policy, in evaluation order: whether this caller is one of its principals.

        It reads only the caller, so it is worked out once per verified token (see
        `identity.Identity`) and `decide` only checks the permissions per request.
        """
        return tuple([policy.is_principal(provider, claims, trace) for policy, _ in self._rules])

    def evaluate(
        self, request: RequestView, provider: str | None, claims: Mapping[str, Any] | None
    ) -> RbacResult:
        """Decide for one request (anonymous requests pass provider=None, claims=None)."""
        return self.decide(request, self.principal_hits(provider, claims))

    def decide(
        self, request: RequestView, principals: tuple[bool, ...], trace: RbacTrace | None = None
    ) -> RbacResult:
        """Decide for one request, given `principal_hits` for its caller."""
        # The deny policies, then the allow policies; the first whose principals include the
        # caller and whose permissions cover the request decides.
        for (policy, result), is_principal in zip(self._rules, principals, strict=True):
            if is_principal:
                permissions = policy.permissions
                if permissions is None or permissions.matches(request, deny=not result.allowed):
                    if trace is not None:
                        trace.rbac_rule(policy, True, True)
                        trace.rbac_result(result, False)
                    return result
                if trace is not None:
                    trace.rbac_rule(policy, True, False)
            elif trace is not None:
                trace.rbac_rule(policy, False, None)
        if trace is not None:
            trace.rbac_result(self._default, True)
        return self._default


def _parse_principal(value: Any, loc: Loc, providers: set[str]) -> Principal:
    spec = schema.mapping(value, loc, allowed=("provider", "claims"))
    provider = None
    if "provider" in spec:
        provider = schema.string(spec["provider"], loc / "provider")
        if provider not in providers:
            known = ", ".join(sorted(providers))
            raise (loc / "provider").error(f"no provider named {provider!r} (known: {known})")
    claims = compile_claims(spec["claims"], loc / "claims") if "claims" in spec else None
    return Principal(provider, claims)


def _parse_permissions(value: Any, loc: Loc) -> RequestConditions:
    spec = schema.mapping(value, loc, allowed=("methods", "paths", "hosts"))
    return parse_request_conditions(spec, loc)


def parse_rbac(value: Any, loc: Loc, providers: set[str]) -> Rbac:
    """Validate the `rbac` section (raises PolicyError with key path and line)."""
    spec = schema.mapping(value, loc, allowed=("mode", "default_action", "policies"))
    mode = schema.choice(spec.get("mode", "enforce"), loc / "mode", ("enforce", "dry_run"))
    default = schema.choice(
        spec.get("default_action", "deny"), loc / "default_action", ("allow", "deny")
    )
    policies: list[RbacPolicy] = []
    names: set[str] = set()
    for index, item in enumerate(schema.sequence(spec.get("policies", []), loc / "policies")):
        item_loc = loc / "policies" / index
        entry = schema.mapping(
            item, item_loc, allowed=("name", "action", "principals", "permissions"),
            required=("name", "action"),
        )  # fmt: skip
        name = schema.string(entry["name"], item_loc / "name")
        if name in names:
            raise (item_loc / "name").error(f"policy name {name!r} is used twice")
        names.add(name)
        action = schema.choice(entry["action"], item_loc / "action", ("allow", "deny"))
        principals = None
        if "principals" in entry:
            items = schema.sequence(entry["principals"], item_loc / "principals", non_empty=True)
            principals = tuple(
                _parse_principal(p, item_loc / "principals" / i, providers)
                for i, p in enumerate(items)
            )
        permissions = None
        if "permissions" in entry:
            permissions = _parse_permissions(entry["permissions"], item_loc / "permissions")
        policies.append(RbacPolicy(name, action, principals, permissions))
    return Rbac(
        dry_run=mode == "dry_run",
        default_allow=default == "allow",
        deny=tuple(p for p in policies if p.action == "deny"),
        allow=tuple(p for p in policies if p.action == "allow"),
    )
