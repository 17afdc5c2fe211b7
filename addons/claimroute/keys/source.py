"""Where a provider's keys come from at request time.

Local keys (file, inline) are a fixed `KeySet`. Remote keys (JWKS URL, OIDC discovery) live in
`keys.remote.RemoteKeySource`, which fetches in the background; both meet this protocol so the
verifier does not care which it has.
"""

from __future__ import annotations

from typing import Any, Protocol

from claimroute.keys.keyset import KeySet


class KeySource(Protocol):
    """The keys of one provider."""

    def current(self) -> KeySet | None:
        """The keys available now, or None if none have been loaded yet."""
        ...

    async def keys_for_kid(self, kid: str | None) -> KeySet | None:
        """Keys to use for a token with this kid; remote sources may refetch (rate-limited)."""
        ...

    def state(self) -> dict[str, Any]:
        """A JSON-able description (kids, age, fetch counts) for logs and commands."""
        ...

    def start(self) -> None:
        """Begin any background work (fetching); called on the event loop, idempotent."""
        ...

    def close(self) -> None:
        """Stop any background work; the source is not used afterwards."""
        ...


class StaticKeySource:
    """Keys configured in the policy file: loaded once, never change until a reload."""

    def __init__(self, key_set: KeySet, origin: str) -> None:
        self._key_set = key_set
        self.origin = origin

    def current(self) -> KeySet:
        return self._key_set

    async def keys_for_kid(self, kid: str | None) -> KeySet:
        return self._key_set

    def state(self) -> dict[str, Any]:
        return {"source": self.origin, "kids": self._key_set.kids, "remote": False}

    def start(self) -> None:
        """Nothing to fetch."""

    def close(self) -> None:
        """Nothing to stop."""
