"""The verified-token cache: what it keeps, when it lets go, and that a hit changes nothing else."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import exceptions
from mitmproxy.http import Headers
from mitmproxy.test import taddons, tflow, tutils

from claimroute.errors import Rejection
from claimroute.keys.keyset import KeySet, key_set_from_text
from claimroute.keys.source import StaticKeySource
from claimroute.match.request import RequestView
from claimroute.mitm.addon import ClaimRoute
from claimroute.pipeline import decide as pipeline
from claimroute.pipeline.decide import decide
from claimroute.pipeline.identity import identity_of
from claimroute.pipeline.tokencache import DEFAULT_CACHE_SIZE, TokenCache, _Entry
from claimroute.pipeline.verify import check_time
from claimroute.policy.load import load_policy_text
from claimroute.policy.model import Policy
from claimroute_tools.lab import TestIssuer

NOW = 1_800_000_000.0
ISSUER = "https://cache.test"

POLICY = """\
version: 1
providers:
  corp:
    issuer: https://cache.test
    jwks: {file: cache.jwks.json}
    clock_skew: 60s
    claims_to_headers: [{claim: sub, header: x-user}, {claim: org, header: x-org}]
validation: VALIDATION
rbac:
  default_action: deny
  policies:
    - {name: no-internal, action: deny, permissions: {paths: [{prefix: /internal}]}}
    - {name: corp, action: allow, principals: [{provider: corp}]}
routes:
  - name: experiment
    match: {headers: {x-experiment: "on"}}
    upstream: http://experiment:8080
  - name: org
    match: {claims: {org: beta}}
    upstream: http://beta:8080
  - name: sticky
    match: {authenticated: true}
    split:
      salt: s
      to: [{upstream: "http://canary:8080", weight: 50}, {upstream: "http://primary:8080", weight: 50}]
"""


class SwitchableSource:
    """A key source whose current set can be replaced (as a JWKS refresh does)."""

    def __init__(self, key_set: KeySet) -> None:
        self.key_set = key_set

    def current(self) -> KeySet:
        return self.key_set

    async def keys_for_kid(self, kid: str | None) -> KeySet:
        return self.key_set

    def state(self) -> dict[str, Any]:
        return {}


@pytest.fixture(scope="module")
def issuer(make_issuer: Any) -> TestIssuer:
    return make_issuer("cache", "RS256", issuer=ISSUER)


@pytest.fixture
def folder(tmp_path: Path, issuer: TestIssuer) -> Path:
    issuer.write_jwks(tmp_path / "cache.jwks.json")
    return tmp_path


@pytest.fixture(scope="module")
def module_policy(tmp_path_factory: pytest.TempPathFactory, issuer: TestIssuer) -> Policy:
    folder = tmp_path_factory.mktemp("cache")
    issuer.write_jwks(folder / "cache.jwks.json")
    return make_policy(folder)


def make_policy(folder: Path, validation: str = "require_valid") -> Policy:
    text = POLICY.replace("VALIDATION", validation)
    return load_policy_text(text, str(folder / "policy.yaml"), folder)


def sources(policy: Policy) -> dict[str, Any]:
    return {"corp": SwitchableSource(policy.providers["corp"].jwks.key_set)}


def view(token: str | None, path: str = "/api/x", **headers: str) -> RequestView:
    fields = Headers(**{k.replace("_", "-"): v for k, v in headers.items()})
    if token is not None:
        fields["authorization"] = f"Bearer {token}"
    return RequestView("GET", "http", "api.test", 80, path, (), fields, ())


def mint(issuer: TestIssuer, sub: str = "alice", *, ttl: float = 600, **claims: Any) -> str:
    return issuer.mint(sub, {"org": "acme", **claims}, ttl=ttl, now=NOW)


@pytest.fixture
def count_verifies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = pipeline.verify_token

    async def counting(token: str, *args: Any) -> Any:
        calls.append(token)
        return await real(token, *args)

    monkeypatch.setattr(pipeline, "verify_token", counting)
    return calls


async def test_hit_after_success(folder, issuer, count_verifies):
    policy = make_policy(folder)
    keys = sources(policy)
    cache = TokenCache()
    token = mint(issuer)
    first = await decide(view(token), policy, keys, NOW, cache)
    second = await decide(view(token), policy, keys, NOW + 1, cache)
    assert (first.outcome, second.outcome) == ("allowed", "allowed")
    assert (first.record()["cache"], second.record()["cache"]) == ("miss", "hit")
    assert count_verifies == [token]
    assert second.claims == first.claims and second.sub == "alice"
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)


async def test_failures_are_not_cached(folder, issuer, count_verifies):
    policy = make_policy(folder)
    keys = sources(policy)
    cache = TokenCache()
    forged = issuer.mint("alice", tamper="signature", now=NOW)
    for _ in range(2):
        decision = await decide(view(forged), policy, keys, NOW, cache)
        assert decision.rejection is not None and decision.rejection.status == 401
        assert decision.record()["cache"] == "miss"
    assert count_verifies == [forged, forged]
    assert len(cache) == 0


async def test_failures_are_not_cached_when_failed_tokens_are_ignored(folder, issuer):
    policy = make_policy(folder, "allow_missing_or_failed")
    cache = TokenCache()
    expired = mint(issuer, ttl=-3600)
    decision = await decide(view(expired), policy, sources(policy), NOW, cache)
    assert decision.token_failure == "Jwt is expired"  # ignored (then refused by RBAC)
    assert decision.record()["cache"] == "miss"
    assert len(cache) == 0


async def test_entry_expires_at_exp_plus_skew(folder, issuer, count_verifies):
    policy = make_policy(folder)
    keys = sources(policy)
    cache = TokenCache()
    token = mint(issuer, ttl=100)  # exp = NOW + 100, clock_skew 60s
    assert (await decide(view(token), policy, keys, NOW, cache)).outcome == "allowed"
    late = await decide(view(token), policy, keys, NOW + 159.9, cache)
    assert late.record()["cache"] == "hit"
    expired = await decide(view(token), policy, keys, NOW + 160, cache)
    assert expired.rejection is not None and expired.reason == "Jwt is expired"
    assert expired.record()["cache"] == "miss"
    assert token not in cache
    assert len(count_verifies) == 2


async def test_not_before_is_checked_again_on_a_hit(folder, issuer):
    policy = make_policy(folder)
    keys = sources(policy)
    cache = TokenCache()
    token = mint(issuer, nbf=int(NOW))
    assert (await decide(view(token), policy, keys, NOW, cache)).outcome == "allowed"
    # The clock went back by more than the skew: the token is not valid yet, cache or not.
    early = await decide(view(token), policy, keys, NOW - 61, cache)
    assert early.reason == "Jwt not yet valid"


def test_max_lifetime_is_checked_again_on_a_hit(folder, issuer):
    text = POLICY.replace("VALIDATION", "require_valid").replace(
        "clock_skew: 60s", "clock_skew: 0s\n    max_lifetime: 1h"
    )
    policy = load_policy_text(text, str(folder / "policy.yaml"), folder)
    keys = sources(policy)
    identity = identity_of(policy, policy.providers["corp"], {"exp": NOW + 3600})
    cache = TokenCache()
    assert cache.put("t", identity, policy, keys, NOW)
    assert cache.get("t", policy, keys, NOW) is identity
    assert cache.get("t", policy, keys, NOW - 1) is None  # exp now more than 1h away


async def test_a_new_policy_object_invalidates(folder, issuer, count_verifies):
    policy = make_policy(folder)
    same_text = make_policy(folder)  # identical content, but another load
    assert policy.fingerprint == same_text.fingerprint
    keys = sources(policy)
    cache = TokenCache()
    token = mint(issuer)
    await decide(view(token), policy, keys, NOW, cache)
    again = await decide(view(token), same_text, keys, NOW, cache)
    assert again.record()["cache"] == "miss"
    assert len(count_verifies) == 2
    assert cache.invalidations == 1


async def test_a_new_key_set_invalidates(folder, issuer, count_verifies):
    policy = make_policy(folder)
    keys = sources(policy)
    cache = TokenCache()
    token = mint(issuer)
    await decide(view(token), policy, keys, NOW, cache)
    # A refresh that fetched the very same JWKS still yields a new KeySet object.
    keys["corp"].key_set = key_set_from_text(issuer.public_jwks_json(), "refetched")
    refreshed = await decide(view(token), policy, keys, NOW, cache)
    assert refreshed.outcome == "allowed" and refreshed.record()["cache"] == "miss"
    assert len(count_verifies) == 2
    hit = await decide(view(token), policy, keys, NOW, cache)
    assert hit.record()["cache"] == "hit"


async def test_a_source_without_keys_is_never_a_hit(folder, issuer):
    policy = make_policy(folder)
    keys = sources(policy)
    cache = TokenCache()
    token = mint(issuer)
    await decide(view(token), policy, keys, NOW, cache)
    keys["corp"].key_set = None
    assert cache.get(token, policy, keys, NOW) is None
    assert cache.get(token, policy, {}, NOW) is None


async def test_lru_bound(folder, issuer):
    policy = make_policy(folder)
    keys = sources(policy)
    cache = TokenCache(3)
    tokens = [mint(issuer, f"user{i}") for i in range(5)]
    for token in tokens[:3]:
        await decide(view(token), policy, keys, NOW, cache)
    await decide(view(tokens[0]), policy, keys, NOW, cache)  # 0 is now the most recent
    for token in tokens[3:]:
        await decide(view(token), policy, keys, NOW, cache)
    assert len(cache) == 3
    assert [t in cache for t in tokens] == [True, False, False, True, True]
    assert cache.evictions == 2


async def test_size_zero_disables(folder, issuer, count_verifies):
    policy = make_policy(folder)
    keys = sources(policy)
    cache = TokenCache(0)
    assert not cache.enabled
    token = mint(issuer)
    for _ in range(2):
        decision = await decide(view(token), policy, keys, NOW, cache)
        assert decision.outcome == "allowed" and decision.record()["cache"] == "miss"
    assert len(count_verifies) == 2 and len(cache) == 0
    with pytest.raises(ValueError):
        TokenCache(-1)


async def test_no_cache_means_no_cache_field(folder, issuer):
    policy = make_policy(folder)
    decision = await decide(view(mint(issuer)), policy, sources(policy), NOW)
    assert "cache" not in decision.record()


async def test_headers_rbac_and_routing_still_run_on_a_hit(folder, issuer):
    policy = make_policy(folder)
    keys = sources(policy)
    cache = TokenCache()
    token = mint(issuer, "bob", org="beta")
    cold = await decide(view(token), policy, keys, NOW, cache)
    assert cold.set_headers == (("x-user", "bob"), ("x-org", "beta"))
    assert cold.route is not None and cold.route.name == "org"

    # The same token on other requests: every stage after verification sees the new request.
    warm = await decide(view(token), policy, keys, NOW, cache)
    assert warm.record()["cache"] == "hit"
    assert warm.set_headers == cold.set_headers
    assert warm.route == cold.route and warm.rbac == cold.rbac

    header_routed = await decide(view(token, x_experiment="on"), policy, keys, NOW, cache)
    assert header_routed.record()["cache"] == "hit"
    assert header_routed.route is not None and header_routed.route.name == "experiment"

    refused = await decide(view(token, "/internal/admin"), policy, keys, NOW, cache)
    assert refused.record()["cache"] == "hit"
    assert refused.rejection is not None and refused.rejection.status == 403
    assert refused.rbac is not None and refused.rbac.policy == "no-internal"


async def test_sticky_split_is_the_same_on_hits(folder, issuer):
    policy = make_policy(folder)
    keys = sources(policy)
    cache = TokenCache()
    token = mint(issuer, "carol")
    uncached = await decide(view(token), policy, keys, NOW)
    cold = await decide(view(token), policy, keys, NOW, cache)
    warm = await decide(view(token), policy, keys, NOW, cache)
    assert uncached.route == cold.route == warm.route
    assert warm.route is not None and warm.route.bucket is not None


async def test_a_token_in_a_place_its_provider_does_not_list_is_refused_on_a_hit(folder, issuer):
    text = POLICY.replace("VALIDATION", "require_valid").replace(
        "    clock_skew: 60s\n",
        "    clock_skew: 60s\n    token_source: {headers: [{name: authorization, prefix: 'Bearer '}]}\n",
    )
    text = text.replace(
        "validation: require_valid",
        "  other:\n    issuer: https://other.test\n    jwks: {file: cache.jwks.json}\n"
        "    token_source: {query_params: [access_token]}\nvalidation: require_valid",
    )
    policy = load_policy_text(text, str(folder / "policy.yaml"), folder)
    keys = {name: StaticKeySource(p.jwks.key_set, "file") for name, p in policy.providers.items()}
    cache = TokenCache()
    token = mint(issuer)
    assert (await decide(view(token), policy, keys, NOW, cache)).outcome == "allowed"
    in_query = RequestView("GET", "http", "api.test", 80, "/api/x", (("access_token", token),),
                           Headers(), ())  # fmt: skip
    decision = await decide(in_query, policy, keys, NOW, cache)
    assert decision.record()["cache"] == "hit"
    assert decision.rejection is not None and decision.rejection.status == 401


# -- through the mitmproxy addon -----------------------------------------------------------------


def flow_with(token: str, **headers: str) -> Any:
    flow = tflow.tflow(req=tutils.treq(host="api.example", port=80, path="/api/pets"))
    flow.request.headers["host"] = "api.example"
    flow.request.headers["authorization"] = f"Bearer {token}"
    for name, value in headers.items():
        flow.request.headers[name.replace("_", "-")] = value
    return flow


async def test_addon_caches_and_still_rewrites_every_request(folder, issuer):
    policy_file = folder / "policy.yaml"
    policy_file.write_text(POLICY.replace("VALIDATION", "require_valid"))
    token = issuer.mint("dave", {"org": "beta"})
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file))
        assert addon.cache is not None and addon.cache.max_size == DEFAULT_CACHE_SIZE
        flows = [flow_with(token, x_user="mallory") for _ in range(2)]
        for flow in flows:
            await addon.requestheaders(flow)
        assert [f.metadata["claimroute"]["cache"] for f in flows] == ["miss", "hit"]
        for flow in flows:
            request = flow.request
            assert flow.response is None
            assert request.headers.get_all("x-user") == ["dave"]
            assert request.headers["x-org"] == "beta"
            assert "authorization" not in request.headers
            assert (request.host, request.port) == ("beta", 8080)
            assert request.headers["host"] == "beta:8080"

        # Installing a policy empties the cache.
        addon._install(make_policy(folder))
        assert len(addon.cache) == 0
        reloaded = flow_with(token)
        await addon.requestheaders(reloaded)
        assert reloaded.metadata["claimroute"]["cache"] == "miss"


async def test_addon_cache_size_option(folder, issuer):
    policy_file = folder / "policy.yaml"
    policy_file.write_text(POLICY.replace("VALIDATION", "require_valid"))
    addon = ClaimRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, claimroute=str(policy_file), claimroute_cache_size=2)
        assert addon.cache is not None and addon.cache.max_size == 2
        tctx.configure(addon, claimroute_cache_size=0)
        assert addon.cache is None
        flow = flow_with(issuer.mint("erin", {"org": "acme"}, now=time.time()))
        await addon.requestheaders(flow)
        assert flow.metadata["claimroute"]["outcome"] == "allowed"
        assert "cache" not in flow.metadata["claimroute"]
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(addon, claimroute_cache_size=-1)


@settings(max_examples=500, deadline=None)
@given(
    exp=st.one_of(st.none(), st.integers(0, 4000), st.floats(0, 4000)),
    nbf=st.one_of(st.none(), st.integers(0, 4000), st.floats(0, 4000)),
    skew=st.sampled_from([0.0, 0.5, 60.0]),
    max_lifetime=st.sampled_from([None, 0.0, 100.0, 3600.0]),
    now=st.one_of(st.integers(0, 4000), st.floats(0, 4000)),
)
def test_entry_validity_is_check_time(module_policy, exp, nbf, skew, max_lifetime, now):
    """Whatever the clock says, a cached entry is valid exactly when verification's time checks
    would pass (the other checks do not depend on time)."""
    base = module_policy
    provider = dataclasses.replace(
        base.providers["corp"], clock_skew=skew, max_lifetime=max_lifetime,
        require_expiration=False,
    )  # fmt: skip
    claims = {name: value for name, value in (("exp", exp), ("nbf", nbf)) if value is not None}
    entry = _Entry(identity_of(base, provider, claims), base, KeySet(()), claims)
    try:
        check_time(claims, provider, now)
        expected = True
    except Rejection:
        expected = False
    assert entry.valid_at(now) is expected


# -- what the collector sees ---------------------------------------------------------------------


def _tracked_reachable(root: object) -> list[object]:
    """Every object reachable from `root` (itself included) that the cyclic GC tracks."""
    import gc

    seen: set[int] = set()
    stack, tracked = [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if gc.is_tracked(obj):
            tracked.append(obj)
        stack.extend(gc.get_referents(obj))
    return tracked


async def test_a_record_adds_no_gc_tracked_objects(folder, issuer):
    """Past the live set, an entry is atomic values only, in containers the GC does not track,
    and a hit on it gives the same answers (then it is live again)."""
    import gc

    policy = make_policy(folder)
    keys = sources(policy)
    cache = TokenCache(10, live_size=1)
    tokens = [mint(issuer, f"user{i}", org="beta" if i % 2 else "acme", roles=["a", "b"])
              for i in range(4)]  # fmt: skip
    cold = [await decide(view(token), policy, keys, NOW, cache) for token in tokens]
    gc.collect()
    assert len(cache._records) == 3 and len(cache._live) == 1
    for container in (cache._records, cache._stamps, cache._order):
        assert not gc.is_tracked(container)
    for token in tokens[:3]:
        assert _tracked_reachable(cache._records[token]) == []
    warm = [await decide(view(token), policy, keys, NOW, cache) for token in tokens]
    assert [d.record()["cache"] for d in warm] == ["hit"] * 4
    for a, b in zip(cold, warm, strict=True):
        assert (a.claims, a.sub, a.set_headers, a.route, a.rbac) == (
            b.claims, b.sub, b.set_headers, b.route, b.rbac,
        )  # fmt: skip
        assert type(b.claims) is dict
    # The identity rebuilt from a record is equal, field by field, to the one first built.
    token = tokens[0]
    fresh = identity_of(policy, policy.providers["corp"], cold[0].claims, token.split(".")[1])
    await decide(view(tokens[1]), policy, keys, NOW, cache)  # tokens[0] is a record again
    revived = cache.get(token, policy, keys, NOW)
    assert revived is not None
    for name in ("provider", "provider_name", "claims", "sub", "keep_token", "set_headers",
                 "principals", "route_choices", "payload_b64"):  # fmt: skip
        assert getattr(revived, name) == getattr(fresh, name), name
    assert [c is None or c is r.fixed_choice or r.fixed_choice is None
            for c, r in zip(revived.route_choices, policy.routes, strict=True)] == [True] * 3  # fmt: skip


async def test_records_keep_the_lru_order_and_the_checks(folder, issuer, count_verifies):
    policy = make_policy(folder)
    keys = sources(policy)
    cache = TokenCache(3, live_size=1)
    tokens = [mint(issuer, f"user{i}") for i in range(5)]
    for token in tokens[:3]:
        await decide(view(token), policy, keys, NOW, cache)
    await decide(view(tokens[0]), policy, keys, NOW, cache)  # 0 is now the most recent
    for token in tokens[3:]:
        await decide(view(token), policy, keys, NOW, cache)
    assert len(cache) == 3
    assert [t in cache for t in tokens] == [True, False, False, True, True]
    assert cache.evictions == 2
    # A record of another policy is a miss, and lets its policy go.
    other = make_policy(folder)
    assert cache.get(tokens[0], other, keys, NOW) is None
    assert cache.invalidations == 1 and tokens[0] not in cache
    assert len(cache._contexts) == 1
    cache.clear()
    assert len(cache) == 0 and cache._contexts == {}
