"""`claimroute check POLICY`: validate a policy and summarise it on one screen."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from claimroute.match.claimpath import format_claim_path
from claimroute.match.conditions import RequestConditions
from claimroute.policy.model import LocalJwks, Policy, Provider
from claimroute.policy.routes import format_split_by


def _keys(provider: Provider) -> str:
    jwks = provider.jwks
    if isinstance(jwks, LocalJwks):
        kids = [key.kid or "-" for key in jwks.key_set.keys]
        return f"{jwks.origin}: {len(kids)} key(s) {', '.join(kids)}"
    if jwks.discovery:
        return f"discovery from {jwks.issuer}"
    return f"{jwks.url} (refresh {jwks.cache_duration:g}s)"


def print_summary(policy: Policy, console: Console) -> None:
    """Providers, RBAC policies and routes, each as a table."""
    console.print(f"[green]valid[/]: {policy.path} (validation: {policy.validation})")
    providers = Table(title="providers", title_justify="left")
    for column in ("name", "issuer", "audiences", "keys", "claim headers"):
        providers.add_column(column)
    for name, provider in policy.providers.items():
        audiences = ", ".join(sorted(provider.audiences)) if provider.audiences else "(any)"
        headers = ", ".join(
            f"{format_claim_path(h.claim)} -> {h.header}" for h in provider.claims_to_headers
        )
        providers.add_row(name, provider.issuer, audiences, _keys(provider), headers or "-")
    console.print(providers)
    rbac = policy.rbac
    if rbac is None:
        console.print("rbac: none (every verified or allowed request passes)")
    else:
        table = Table(
            title=f"rbac ({'dry run' if rbac.dry_run else 'enforced'}; default "
            f"{'allow' if rbac.default_allow else 'deny'}; deny rules first)",
            title_justify="left",
        )
        for column in ("#", "name", "action", "who", "what"):
            table.add_column(column)
        for index, rule in enumerate((*rbac.deny, *rbac.allow), 1):
            who = "anyone" if rule.principals is None else f"{len(rule.principals)} principal(s)"
            what = "any request" if rule.permissions is None else _conditions(rule.permissions)
            table.add_row(str(index), rule.name, rule.action, who, what)
        console.print(table)
    if not policy.routes:
        console.print("routes: none (requests go where they were addressed)")
        return
    routes = Table(title="routes (first match wins)", title_justify="left")
    for column in ("#", "name", "to"):
        routes.add_column(column)
    for index, route in enumerate(policy.routes, 1):
        if route.split is not None:
            targets = ", ".join(target.url for target in route.split.targets)
            to = f"split by {format_split_by(route.split.by)}: {targets}"
        else:
            to = route.upstream.url if route.upstream is not None else "-"
        routes.add_row(str(index), route.name, to)
    console.print(routes)


def _conditions(conditions: RequestConditions) -> str:
    parts = []
    if conditions.methods is not None:
        parts.append("methods " + ",".join(sorted(conditions.methods)))
    if conditions.paths is not None:
        paths = conditions.paths
        shown = [*sorted(paths.exact), *(p + "*" for p in paths.prefixes)]
        shown += ["regex"] * len(paths.patterns)
        parts.append("paths " + ",".join(shown))
    if conditions.hosts is not None:
        parts.append("hosts " + ",".join(sorted(conditions.hosts)))
    if conditions.headers is not None:
        parts.append("headers")
    return "; ".join(parts) or "any request"
