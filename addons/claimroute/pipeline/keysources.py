"""One key source per provider, rebuilt on every policy load.

Remote sources are reused across reloads when their configuration did not change, so that a
policy edit does not throw away fetched keys or cause a fetch storm.
"""

from __future__ import annotations

from claimroute.keys.source import KeySource, StaticKeySource
from claimroute.policy.model import LocalJwks, Policy


def build_key_sources(
    policy: Policy, previous: dict[str, KeySource] | None = None
) -> dict[str, KeySource]:
    """Key sources for every provider of `policy`, reusing unchanged remote ones."""
    reusable = {
        source.config.identity: source
        for source in (previous or {}).values()
        if not isinstance(source, StaticKeySource)
    }
    sources: dict[str, KeySource] = {}
    for name, provider in policy.providers.items():
        if isinstance(provider.jwks, LocalJwks):
            sources[name] = StaticKeySource(provider.jwks.key_set, provider.jwks.origin)
            continue
        from claimroute.keys.remote import RemoteKeySource

        existing = reusable.pop(provider.jwks.identity, None)
        if existing is not None and existing.config == provider.jwks:
            sources[name] = existing  # same remote config: keep its fetched keys
        else:
            sources[name] = RemoteKeySource(provider.jwks, name=name)
    return sources


def retired_sources(old: dict[str, KeySource], new: dict[str, KeySource]) -> list[KeySource]:
    """Sources in `old` that `new` no longer uses (their background tasks should stop)."""
    kept = {id(source) for source in new.values()}
    return [source for source in old.values() if id(source) not in kept]
