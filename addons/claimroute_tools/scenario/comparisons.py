"""Which canary analyses a scenario gets when it declares none: one per split route's targets.

Read from the policy documents as written (before `${...}` substitution), so the loader can
name most default comparisons at load, and the analysis can name all of them once the world
knows each upstream's URL. The baseline of a split route is the target with the largest weight
(the first on ties); every other target is compared against it, as `ROUTE: CANARY-vs-BASELINE`.
Weights are read from the document, not from the parsed bucket boundaries: the boundaries are
rounded (weights 1/1/1 give 3333/3333/3334 buckets), which would break the tie rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# A split target written as exactly one upstream reference names its upstream at load.
_UPSTREAM_REFERENCE = re.compile(r"^\$\{\s*upstreams\.(.+)\.url\s*\}$")


@dataclass(frozen=True, slots=True)
class SplitTarget:
    """One `to:` entry of a split route, as written."""

    text: str  # the upstream as written (a `${upstreams.NAME.url}` reference, or a URL)
    weight: int


def split_routes(document: Any) -> dict[str, tuple[SplitTarget, ...]]:
    """The split routes of a policy document and their targets, in order (best effort: the
    policy loader reports malformed routes; anything unreadable is left out here)."""
    routes = document.get("routes") if isinstance(document, dict) else None
    out: dict[str, tuple[SplitTarget, ...]] = {}
    for route in routes if isinstance(routes, list) else []:
        if not isinstance(route, dict) or not isinstance(route.get("name"), str):
            continue
        split = route.get("split")
        to = split.get("to") if isinstance(split, dict) else None
        if not isinstance(to, list):
            continue
        targets = []
        for entry in to:
            if not isinstance(entry, dict):
                break
            text, weight = entry.get("upstream"), entry.get("weight")
            if not isinstance(text, str) or not isinstance(weight, int) or isinstance(weight, bool):
                break
            targets.append(SplitTarget(text, weight))
        else:
            if targets:
                out.setdefault(route["name"], tuple(targets))
    return out


def referenced_upstream(text: str) -> str | None:
    """NAME for a target written as `${upstreams.NAME.url}`, else None."""
    match = _UPSTREAM_REFERENCE.match(text.strip())
    return match.group(1).strip() if match else None


def baseline_index(weights: Sequence[int]) -> int:
    """The index of the largest weight, the first on ties."""
    return max(range(len(weights)), key=lambda i: (weights[i], -i))


def default_name(route: str, canary: str, baseline: str) -> str:
    """The name of a default comparison: `ROUTE: CANARY-vs-BASELINE`."""
    return f"{route}: {canary}-vs-{baseline}"


@dataclass(frozen=True, slots=True)
class DefaultComparison:
    """A comparison derived from a split route."""

    name: str
    route: str
    canary: str
    baseline: str


def default_comparisons(
    routes: Mapping[str, Sequence[tuple[str | None, int]]],
) -> tuple[tuple[DefaultComparison, ...], tuple[str, ...]]:
    """The default comparisons of split routes given as (upstream name or None, weight) per
    target, and the routes with a target whose name is not known (yet).

    A pair whose two sides are the same upstream is no comparison and is left out.
    """
    found: list[DefaultComparison] = []
    pending: list[str] = []
    for route, targets in routes.items():
        if any(name is None for name, _ in targets):
            pending.append(route)
        base = baseline_index([weight for _, weight in targets])
        baseline = targets[base][0]
        if baseline is None:
            continue
        seen: set[str] = {baseline}
        for index, (canary, _) in enumerate(targets):
            if index == base or canary is None or canary in seen:
                continue
            seen.add(canary)
            found.append(
                DefaultComparison(default_name(route, canary, baseline), route, canary, baseline)
            )
    return tuple(found), tuple(pending)


__all__ = [
    "DefaultComparison",
    "SplitTarget",
    "baseline_index",
    "default_comparisons",
    "default_name",
    "referenced_upstream",
    "split_routes",
]
