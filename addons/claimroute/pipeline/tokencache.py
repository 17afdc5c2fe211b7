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

No collector pauses at scale: an Identity is several objects the cyclic garbage collector
tracks, and a full collection walks every tracked object (about 30 ms with 10,000 cached
tokens, a third of a second with 100,000, during which no request moves). So only the
`live_size` most recently used tokens keep their Identity object (a hit on one of them costs
nothing more than before); the others are kept as a record (a flat tuple of atomic values
and the bytes of `identity.identity_record`, made when the token is stored), in plain dicts
whose keys and values are all untracked, so that the collector tracks neither the records nor
the dicts.
Policy and key set are referred to by a number (`_contexts`, one per pair in use, holding the
objects, so that the identity comparison above is unchanged). A hit on a record rebuilds the
Identity (`identity.identity_from_record`: equal in every field) and makes it live again; the
least recently used live token gives up its Identity. The LRU order over both is exact: every
live token is more recent than every record, and records are ordered by a counter
(`_order`, stamp -> token, read from a cursor, since a plain dict cannot be popped from the
front cheaply).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from claimroute.keys.keyset import KeySet
from claimroute.keys.source import KeySource
from claimroute.pipeline.identity import Identity, identity_from_record, identity_record
from claimroute.pipeline.verify import time_window_failure
from claimroute.policy.model import Policy

DEFAULT_CACHE_SIZE = 10_000
# Tokens whose Identity stays a live object: the hot set (a few thousand tracked objects, well
# under a millisecond of a full collection).
DEFAULT_LIVE_SIZE = 1_024


class _Entry:
    """One verified token and what it was verified against (plain slots: cheap to build)."""

    __slots__ = ("exp", "identity", "key_set", "max_lifetime", "nbf", "policy", "provider_name",
                 "record", "skew")  # fmt: skip

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
        # (context, exp, nbf, skew, max_lifetime, provider name, identity record), or None
        # when the identity cannot be kept as a record (then it is dropped instead).
        self.record: tuple[Any, ...] | None = None

    @classmethod
    def revived(
        cls, identity: Identity, policy: Policy, key_set: KeySet, record: tuple[Any, ...]
    ) -> _Entry:
        """The live entry of a record that was just hit (rebuilt `identity`)."""
        entry = cls.__new__(cls)
        entry.identity = identity
        entry.policy = policy
        entry.key_set = key_set
        _, entry.exp, entry.nbf, entry.skew, entry.max_lifetime, entry.provider_name, _ = record
        entry.record = record
        return entry

    def valid_at(self, now: float) -> bool:
        """Whether the token is inside its time window: the very check verification made."""
        return time_window_failure(self.exp, self.nbf, self.skew, self.max_lifetime, now) is None


class TokenCache:
    """Verified tokens keyed by the token string, least recently used evicted first.

    Not thread-safe; it lives on the proxy's event loop like everything on the request path.
    """

    def __init__(
        self, max_size: int = DEFAULT_CACHE_SIZE, live_size: int = DEFAULT_LIVE_SIZE
    ) -> None:
        if max_size < 0:
            raise ValueError(f"cache size must be 0 (off) or positive, got {max_size}")
        if live_size < 0:
            raise ValueError(f"live size must be 0 or positive, got {live_size}")
        self.max_size = max_size
        self.live_size = min(live_size, max_size)
        # The most recently used tokens, with their Identity (least recent first).
        self._live: OrderedDict[str, _Entry] = OrderedDict()
        # The others: token -> record, and their LRU order (token -> stamp, stamp -> token).
        # Plain dicts of untracked values, which CPython does not track either.
        self._records: dict[str, tuple[Any, ...]] = {}
        self._stamps: dict[str, int] = {}
        self._order: dict[int, str] = {}
        self._clock = 0
        self._oldest = 0  # no stamp in _order is lower
        # context number -> [policy, key set, records using it], and (id, id) -> number (the
        # ids are unique while the objects are held here).
        self._contexts: dict[int, list[Any]] = {}
        self._context_ids: dict[tuple[int, int], int] = {}
        self._next_context = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0  # dropped to respect the bound
        self.invalidations = 0  # dropped because policy, keys or time no longer fit

    def __len__(self) -> int:
        return len(self._live) + len(self._records)

    def __contains__(self, token: object) -> bool:
        return token in self._live or token in self._records

    @property
    def enabled(self) -> bool:
        return self.max_size > 0

    def get(
        self, token: str, policy: Policy, key_sources: Mapping[str, KeySource], now: float
    ) -> Identity | None:
        """The cached identity of `token`, if still valid for this policy, keys and time."""
        entry = self._live.get(token)
        if entry is None:
            record = self._records.get(token)
            if record is None:
                self.misses += 1
                return None
            return self._revive(token, record, policy, key_sources, now)
        source = key_sources.get(entry.provider_name)
        if (
            entry.policy is not policy
            or source is None
            or source.current() is not entry.key_set
            or time_window_failure(entry.exp, entry.nbf, entry.skew, entry.max_lifetime, now)
            is not None
        ):
            del self._live[token]
            self._release(entry.record)
            self.invalidations += 1
            self.misses += 1
            return None
        self._live.move_to_end(token)
        self.hits += 1
        return entry.identity

    def _revive(
        self,
        token: str,
        record: tuple[Any, ...],
        policy: Policy,
        key_sources: Mapping[str, KeySource],
        now: float,
    ) -> Identity | None:
        # A hit on a record: the same checks as a live entry's, then the Identity is rebuilt
        # and the token is live again.
        context, exp, nbf, skew, max_lifetime, provider_name, form = record
        held = self._contexts[context]
        source = key_sources.get(provider_name)
        key_set = source.current() if source is not None else None
        self._unlink(token)
        if (
            held[0] is not policy
            or key_set is None
            or key_set is not held[1]
            or time_window_failure(exp, nbf, skew, max_lifetime, now) is not None
        ):
            self._release(record)
            self.invalidations += 1
            self.misses += 1
            return None
        identity = identity_from_record(form, policy, token)
        self._live[token] = _Entry.revived(identity, policy, key_set, record)
        self._settle()
        self.hits += 1
        return identity

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
        self._discard(token)
        # The record is made now, so that by the time the token leaves the live set the
        # collector has seen it (and stopped tracking it).
        form = identity_record(identity, policy, token)
        if form is not None:
            entry.record = (self._context(policy, key_set), entry.exp, entry.nbf, entry.skew,
                            entry.max_lifetime, entry.provider_name, form)  # fmt: skip
        self._live[token] = entry
        self._settle()
        return True

    def _settle(self) -> None:
        """Turn the least recently used live entries into records, then respect the bound."""
        live = self._live
        while len(live) > self.live_size:
            token, entry = live.popitem(last=False)
            if entry.record is None:
                self.evictions += 1  # cannot be kept as a record
                continue
            self._records[token] = entry.record
            stamp = self._clock = self._clock + 1
            self._stamps[token] = stamp
            self._order[stamp] = token
        records = self._records
        while len(live) + len(records) > self.max_size:
            if records:
                order = self._order
                oldest = self._oldest
                while oldest not in order:
                    oldest += 1
                token = order.pop(oldest)
                self._oldest = oldest + 1
                del self._stamps[token]
                self._release(records.pop(token))
            else:
                self._release(live.popitem(last=False)[1].record)
            self.evictions += 1

    def _unlink(self, token: str) -> None:
        """Take `token`'s record out of the records (its context is still counted)."""
        del self._records[token]
        del self._order[self._stamps.pop(token)]

    def _discard(self, token: str) -> None:
        """Forget `token`, wherever it is (a put replacing it)."""
        entry = self._live.pop(token, None)
        if entry is not None:
            self._release(entry.record)
        elif token in self._records:
            record = self._records[token]
            self._unlink(token)
            self._release(record)

    def _context(self, policy: Policy, key_set: KeySet) -> int:
        """The number of the (policy, key set) pair, counting one more record using it."""
        key = (id(policy), id(key_set))
        number = self._context_ids.get(key)
        if number is None:
            number = self._next_context
            self._next_context += 1
            self._context_ids[key] = number
            self._contexts[number] = [policy, key_set, 0]
        self._contexts[number][2] += 1
        return number

    def _release(self, record: tuple[Any, ...] | None) -> None:
        """A record is gone: its context is let go with its last record."""
        if record is None:
            return
        held = self._contexts[record[0]]
        held[2] -= 1
        if held[2] == 0:
            del self._contexts[record[0]]
            del self._context_ids[(id(held[0]), id(held[1]))]

    def clear(self) -> None:
        """Forget every entry (the counters are kept)."""
        self._live.clear()
        self._records.clear()
        self._stamps.clear()
        self._order.clear()
        self._contexts.clear()
        self._context_ids.clear()
        self._oldest = self._clock + 1

    def stats(self) -> dict[str, int]:
        """Counters for logs, commands and the benchmark."""
        return {
            "size": len(self),
            "max_size": self.max_size,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "invalidations": self.invalidations,
        }
