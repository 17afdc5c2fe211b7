"""Shared fixtures for the unit tests.

Key generation (RSA above all) is slow, so test issuers are cached for the whole session:
`make_issuer(name, alg)` returns the same `TestIssuer` for the same arguments. Tests must not
mutate a cached issuer (`rotate()`, reassigning `issuer`); build a private one for that.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from claimroute_tools.lab import TestIssuer


@pytest.fixture(scope="session")
def make_issuer() -> Callable[..., TestIssuer]:
    """`make_issuer(name, alg="RS256", issuer=None, audience=None)`, cached per session."""
    cache: dict[tuple[object, ...], TestIssuer] = {}

    def get(
        name: str,
        alg: str = "RS256",
        *,
        issuer: str | None = None,
        audience: str | list[str] | None = None,
    ) -> TestIssuer:
        key = (name, alg, issuer, repr(audience))
        if key not in cache:
            cache[key] = TestIssuer(name, alg, issuer=issuer, audience=audience)
        return cache[key]

    return get
