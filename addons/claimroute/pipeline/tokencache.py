"""A bounded LRU of verified tokens, so a token seen before costs no parsing and no crypto.

An entry is the token's `Identity` (its provider, its claims and what the policy concludes from
them), plus the `Policy` object and the `KeySet` object it was verified against. A lookup only
hits when both are still the very objects in use (compared by identity: `entry.policy is
policy` and `key_sources[provider].current() is entry.key_set`), so a policy reload or a key
refresh invalidates every entry at once, with none of the pitfalls of comparing ids or
fingerprints. Everything `verify_token` decides is a function of the token, the policy and the
key set, except the time checks; those are re-run on every hit with the function
`verify.check_time` uses (`time_window_failure`), so an entry dies at `exp + clock_skew` (and a
token is never served outside its `nbf`/lifetime window, even if the clock goes back). The
Identity is a function of the policy and the claims, so it is exactly as valid as the
verification it came with.

Only successes are cached: a refused token is verified (and refused) again every time, so junk
can never fill the cache. The size is bounded (least recently used entries go first); size 0
disables caching.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from claimroute.keys.keyset import KeySet
from claimroute.keys.source import KeySource
from claimroute.pipeline.identity import Identity
from claimroute.pipeline.verify import time_window_failure
from claimroute.policy.model import Policy

DEFAULT_CACHE_SIZE = 10_000


class _Entry:
    """One verified token and what it was verified against (plain slots: cheap to build)."""

    __slots__ = ("exp", "identity", "key_set", "max_lifetime", "nbf", "policy", "provider_name",
                 "skew")  # fmt: skip

    def __init__(
        self, identity: Identity, policy: Policy, key_set: KeySet, claims: Mapping[str, Any]
    ) -> None:
        provider = identity.provider
        assert provider is not None  # only verified tokens are cached
        exp = claims.get("exp")
        nbf = claims.get("nbf")
        self.identity = identity
        self.provider_name = provider.name
        self.policy = policy
        self.key_set = key_set
        # verify_token accepted them as numbers; check_time compares them as floats too.
        self.exp = float(exp) if exp is not None else None
        self.nbf = float(nbf) if nbf is not None else None
        self.skew = provider.clock_skew
        self.max_lifetime = provider.max_lifetime

    def valid_at(self, now: float) -> bool:
        """Whether the token is inside its time window: the very check verification made."""
        return time_window_failure(self.exp, self.nbf, self.skew, self.max_lifetime, now) is None


class TokenCache:
    """Verified tokens keyed by the token string, least recently used evicted first.

    Not thread-safe; it lives on the proxy's event loop like everything on the request path.
    """

    def __init__(self, max_size: int = DEFAULT_CACHE_SIZE) -> None:
        if max_size < 0:
            raise ValueError(f"cache size must be 0 (off) or positive, got {max_size}")
        self.max_size = max_size
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0  # dropped to respect the bound
        self.invalidations = 0  # dropped because policy, keys or time no longer fit

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, token: object) -> bool:
        return token in self._entries

    @property
    def enabled(self) -> bool:
        return self.max_size > 0

    def get(
        self, token: str, policy: Policy, key_sources: Mapping[str, KeySource], now: float
    ) -> Identity | None:
        """The cached identity of `token`, if still valid for this policy, keys and time."""
        entry = self._entries.get(token)
        if entry is None:
            self.misses += 1
            return None
        source = key_sources.get(entry.provider_name)
        if (
            entry.policy is not policy
            or source is None
            or source.current() is not entry.key_set
            or not entry.valid_at(now)
        ):
            del self._entries[token]
            self.invalidations += 1
            self.misses += 1
            return None
        self._entries.move_to_end(token)
        self.hits += 1
        return entry.identity

    def put(
        self,
        token: str,
        identity: Identity,
        policy: Policy,
        key_sources: Mapping[str, KeySource],
        now: float,
    ) -> bool:
        """Remember a successful verification (call right after `verify_token` returned, with
        the identity built for `policy` from its result).

        The key set recorded is the provider's current one, which is the set `verify_token` just
        used (both key sources return their current set from `keys_for_kid`). Returns whether
        the token was stored.
        """
        if self.max_size <= 0:
            return False
        provider = identity.provider
        if provider is None or identity.claims is None:
            return False  # an anonymous identity is never a cache entry
        source = key_sources.get(provider.name)
        key_set = source.current() if source is not None else None
        if key_set is None:
            return False
        entry = _Entry(identity, policy, key_set, identity.claims)
        if not entry.valid_at(now):
            return False
        entries = self._entries
        entries[token] = entry
        entries.move_to_end(token)
        while len(entries) > self.max_size:
            entries.popitem(last=False)
            self.evictions += 1
        return True

    def clear(self) -> None:
        """Forget every entry (the counters are kept)."""
        self._entries.clear()

    def stats(self) -> dict[str, int]:
        """Counters for logs, commands and the benchmark."""
        return {
            "size": len(self._entries),
            "max_size": self.max_size,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "invalidations": self.invalidations,
        }
