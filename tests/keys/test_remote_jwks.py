"""RemoteKeySource against real loopback servers: startup, rotation, storms, outages, discovery.

Timing values are small so the suite runs in seconds. Elapsed-time assertions are behaviour
checks (does a call wait on the network or not), with generous margins, not benchmarks.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import secrets
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from joserfc.jwk import ECKey

from claimroute import errors as E
from claimroute.errors import Rejection
from claimroute.keys import remote as remote_jwks
from claimroute.keys.keyset import KeySet
from claimroute.keys.remote import FIRST_FETCH_WAIT, MAX_BODY_BYTES, MAX_KEYS, RemoteKeySource
from claimroute.pipeline.keysources import build_key_sources
from claimroute.pipeline.verify import verify_token
from claimroute.policy.load import load_policy_text
from claimroute.policy.model import RemoteJwks
from claimroute_tools.lab import JwksServer, LoopbackServer, TestIssuer

type MakeSource = Callable[..., RemoteKeySource]


# -- helpers ------------------------------------------------------------------------------------


class ScriptedServer(LoopbackServer):
    """Answers each path with a handler the test sets; for cases the lab server has no mode for."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {}
        self.hits: dict[str, int] = {}

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._dispatch)
        return app

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        handler = self.routes.get(request.path)
        if handler is None:
            raise web.HTTPNotFound()
        return await handler(request)

    def serve_json(self, path: str, document: Any) -> None:
        body = json.dumps(document).encode()

        async def handler(_: web.Request) -> web.Response:
            return web.Response(body=body, content_type="application/json")

        self.routes[path] = handler


async def wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll until `predicate()` holds; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def timed[T](call: Awaitable[T]) -> tuple[T, float]:
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


@pytest.fixture
async def make_source() -> AsyncIterator[MakeSource]:
    """Build (not start) sources with test-sized timings; every one is closed at teardown."""
    made: list[RemoteKeySource] = []

    def make(
        url: str | None,
        *,
        issuer: str = "https://corp.test",
        discovery: bool = False,
        cache_duration: float = 30.0,
        timeout: float = 1.0,
        min_refetch_interval: float = 0.1,
        **kwargs: Any,
    ) -> RemoteKeySource:
        config = RemoteJwks(url, discovery, issuer, cache_duration, timeout, None)
        source = RemoteKeySource(
            config, name="corp", min_refetch_interval=min_refetch_interval, **kwargs
        )
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()
    await asyncio.sleep(0)


@pytest.fixture
def corp() -> TestIssuer:
    return TestIssuer("corp", "ES256")


@pytest.fixture
async def server(corp: TestIssuer) -> AsyncIterator[JwksServer]:
    async with JwksServer(corp) as running:
        yield running


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    async with ScriptedServer() as running:
        yield running


async def started(source: RemoteKeySource) -> KeySet:
    """Start `source` and wait for its first good key set."""
    source.start()
    await wait_for(lambda: source.current() is not None)
    keys = source.current()
    assert keys is not None
    return keys


# -- startup ------------------------------------------------------------------------------------


async def test_prefetch_at_start_without_any_request(
    server: JwksServer, corp: TestIssuer, make_source: MakeSource
) -> None:
    source = make_source(server.jwks_url("corp"))
    assert source.current() is None  # __init__ does no I/O
    keys = await started(source)
    assert keys.kids == [corp.kid]
    assert server.hits("corp") == 1
    state = source.state()
    json.dumps(state)  # JSON-able
    assert state["remote"] is True and state["kids"] == [corp.kid]
    assert state["fetches"] == 1 and state["failures"] == 0 and state["refetches"] == 0
    assert state["source"] == server.jwks_url("corp") and state["age_seconds"] >= 0


async def test_cold_start_server_down_then_up(corp: TestIssuer, make_source: MakeSource) -> None:
    server = JwksServer(corp)
    await server.start()
    url = server.jwks_url("corp")
    await server.stop()  # connection refused from now on, same port later

    source = make_source(url, timeout=2.0)
    source.start()
    keys, elapsed = await timed(source.keys_for_kid(corp.kid))
    assert keys is None
    assert elapsed < 2.0 + 0.5  # never longer than min(timeout, 3s)
    assert source.state()["failures"] >= 1

    await server.start()
    try:
        # No restart of the source: its retries (or the next request's refetch) recover.
        async def recovered() -> KeySet | None:
            for _ in range(200):
                found = await source.keys_for_kid(corp.kid)
                if found is not None:
                    return found
                await asyncio.sleep(0.02)
            return None

        keys = await recovered()
        assert keys is not None and keys.has_kid(corp.kid)
    finally:
        await server.stop()


@pytest.mark.parametrize(("timeout", "bound"), [(0.5, 0.5), (10.0, FIRST_FETCH_WAIT)])
async def test_wait_for_first_keys_is_bounded(
    server: JwksServer, corp: TestIssuer, make_source: MakeSource, timeout: float, bound: float
) -> None:
    server.set_mode("corp", "slow", slow_seconds=5)
    source = make_source(server.jwks_url("corp"), timeout=timeout)
    source.start()
    keys, elapsed = await timed(source.keys_for_kid(corp.kid))
    assert keys is None  # the caller fails closed (401)
    assert bound - 0.1 <= elapsed < bound + 0.5


# -- rotation and unknown kids ------------------------------------------------------------------


async def test_rotation_is_picked_up_by_the_first_token_with_the_new_kid(
    server: JwksServer, corp: TestIssuer, make_source: MakeSource
) -> None:
    source = make_source(server.jwks_url("corp"), min_refetch_interval=10.0)
    old = await started(source)
    old_kid = corp.kid
    new_kid = corp.rotate()
    hits = server.hits("corp")

    keys = await source.keys_for_kid(new_kid)
    assert keys is not None and keys.has_kid(new_kid) and not keys.has_kid(old_kid)
    assert source.current() is keys and keys is not old
    assert server.hits("corp") == hits + 1
    assert source.state()["refetches"] == 1


async def test_random_kid_flood_causes_at_most_one_fetch_per_interval(
    server: JwksServer, corp: TestIssuer, make_source: MakeSource
) -> None:
    source = make_source(server.jwks_url("corp"), min_refetch_interval=10.0)
    await started(source)
    server.reset_hits()

    for _ in range(2):  # the second wave falls inside the same interval: no fetch at all
        results = await asyncio.gather(
            *(source.keys_for_kid(secrets.token_hex(8)) for _ in range(1000))
        )
        assert all(result is not None and result.kids == [corp.kid] for result in results)
    assert server.hits("corp") == 1
    assert source.state()["refetches"] == 1


async def test_kid_refetch_is_allowed_again_after_the_interval(
    server: JwksServer, corp: TestIssuer, make_source: MakeSource
) -> None:
    source = make_source(server.jwks_url("corp"), min_refetch_interval=0.3)
    await started(source)
    server.reset_hits()
    await source.keys_for_kid("nope-1")
    await source.keys_for_kid("nope-2")
    assert server.hits("corp") == 1
    await asyncio.sleep(0.35)
    await source.keys_for_kid("nope-3")
    assert server.hits("corp") == 2


async def test_background_refresh_picks_up_rotation_without_requests(
    server: JwksServer, corp: TestIssuer, make_source: MakeSource
) -> None:
    source = make_source(server.jwks_url("corp"), cache_duration=0.5)
    await started(source)
    new_kid = corp.rotate()
    await wait_for(lambda: (keys := source.current()) is not None and keys.has_kid(new_kid), 3)
    assert source.state()["refetches"] == 0


# -- failures keep the last good set ------------------------------------------------------------


async def test_outage_after_a_good_fetch_keeps_serving_the_last_good_keys(
    server: JwksServer, corp: TestIssuer, make_source: MakeSource
) -> None:
    source = make_source(server.jwks_url("corp"), cache_duration=0.5, timeout=0.5)
    good = await started(source)
    await server.stop()
    await asyncio.sleep(1.2)  # several background refreshes fail meanwhile
    assert source.current() is good
    assert await source.keys_for_kid(corp.kid) is good
    assert await source.keys_for_kid("unknown") is good
    state = source.state()
    assert state["failures"] >= 1 and state["last_error"]
    assert state["kids"] == [corp.kid]


async def test_failed_fetches_back_off_instead_of_storming(
    server: JwksServer, make_source: MakeSource
) -> None:
    server.set_mode("corp", "error500")
    source = make_source(server.jwks_url("corp"))
    source.start()
    await asyncio.sleep(1.6)
    # Attempts near 0s, ~0.5s and ~1.5s (backoff 0.5s doubling, +-25% jitter).
    assert 2 <= server.hits("corp") <= 4
    assert source.current() is None


async def _refetch_after(source: RemoteKeySource) -> KeySet | None:
    await asyncio.sleep(0.15)  # past the 0.1s refetch interval of make_source
    return await source.keys_for_kid("kid-that-forces-a-refetch")


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("error500", "HTTP 500"),
        ("garbage", "not valid JSON"),
        ("redirect_offsite", "another origin"),
        ("oct", "'oct'"),
    ],
)
async def test_bad_jwks_answers_are_failures_that_keep_the_last_good_set(
    server: JwksServer, make_source: MakeSource, mode: str, error: str
) -> None:
    source = make_source(server.jwks_url("corp"))
    good = await started(source)
    if mode == "oct":
        # Serve a JWKS holding an HMAC key: never acceptable from a remote set.
        server.control("corp").issuer = TestIssuer("corp", "HS256")
    else:
        server.set_mode("corp", mode)  # type: ignore[arg-type]
    hits = server.hits("corp")

    assert await _refetch_after(source) is good
    assert server.hits("corp") == hits + 1
    state = source.state()
    assert state["failures"] == 1 and error in state["last_error"]
    assert source.current() is good


def _chunked(body: bytes) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 64 * 1024):
            await response.write(body[start : start + 64 * 1024])
        await response.write_eof()
        return response

    return handler


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("oversized", "exceeds"),
        ("oversized_chunked", "exceeds"),
        ("no_keys", "no usable"),
        ("keys_not_a_list", "must be a list"),
        ("not_an_object", "not a JSON object"),
        ("duplicate_member", "duplicate"),
        ("too_many_redirects", "redirects"),
    ],
)
async def test_malformed_jwks_documents_are_failures_that_keep_the_last_good_set(
    scripted: ScriptedServer, corp: TestIssuer, make_source: MakeSource, case: str, error: str
) -> None:
    scripted.serve_json("/jwks.json", corp.public_jwks())
    source = make_source(f"{scripted.url}/jwks.json")
    good = await started(source)

    padded = json.dumps(corp.public_jwks() | {"pad": "x" * MAX_BODY_BYTES}).encode()
    match case:
        case "oversized":
            scripted.serve_json("/jwks.json", corp.public_jwks() | {"pad": "x" * MAX_BODY_BYTES})
        case "oversized_chunked":
            scripted.routes["/jwks.json"] = _chunked(padded)
        case "no_keys":
            scripted.serve_json("/jwks.json", {"keys": []})
        case "keys_not_a_list":
            scripted.serve_json("/jwks.json", {"keys": 123})
        case "not_an_object":
            scripted.serve_json("/jwks.json", [corp.public_jwks()])
        case "duplicate_member":
            raw = b'{"keys": [], "keys": ' + json.dumps(corp.public_jwks()["keys"]).encode() + b"}"

            async def duplicate(_: web.Request) -> web.Response:
                return web.Response(body=raw, content_type="application/json")

            scripted.routes["/jwks.json"] = duplicate
        case "too_many_redirects":

            async def loop(_: web.Request) -> web.Response:
                raise web.HTTPFound("/jwks.json")

            scripted.routes["/jwks.json"] = loop

    assert await _refetch_after(source) is good
    state = source.state()
    assert state["failures"] == 1 and error in state["last_error"], state


async def test_same_origin_redirect_is_followed(
    scripted: ScriptedServer, corp: TestIssuer, make_source: MakeSource
) -> None:
    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/keys/current.json")

    scripted.routes["/jwks.json"] = moved
    scripted.serve_json("/keys/current.json", corp.public_jwks())
    source = make_source(f"{scripted.url}/jwks.json")
    keys = await started(source)
    assert keys.kids == [corp.kid]
    assert scripted.hits == {"/jwks.json": 1, "/keys/current.json": 1}


async def test_slow_refetch_does_not_delay_cached_keys(
    server: JwksServer, corp: TestIssuer, make_source: MakeSource
) -> None:
    source = make_source(server.jwks_url("corp"), timeout=1.0)
    good = await started(source)
    server.set_mode("corp", "slow", slow_seconds=3)
    hits = server.hits("corp")
    pending = asyncio.create_task(_refetch_after(source))
    await wait_for(lambda: server.hits("corp") == hits + 1)  # the slow fetch is in flight

    started_at = time.monotonic()
    current = source.current()
    assert current is good and time.monotonic() - started_at < 0.1
    known, elapsed = await timed(source.keys_for_kid(corp.kid))
    assert known is good and elapsed < 0.1

    # The caller of the slow refetch waits at most `timeout`, then gets the last good set.
    result, elapsed = await timed(pending)
    assert result is good and elapsed < 1.0 + 0.5


# -- OIDC discovery -----------------------------------------------------------------------------


@pytest.fixture
async def discovery_server() -> AsyncIterator[tuple[JwksServer, TestIssuer]]:
    issuer = TestIssuer("idp", "ES256")
    server = JwksServer()
    server.add(issuer, discovery=True)
    async with server:
        yield server, issuer


async def test_discovery_finds_the_jwks(
    discovery_server: tuple[JwksServer, TestIssuer], make_source: MakeSource
) -> None:
    server, idp = discovery_server
    source = make_source(None, issuer=idp.issuer, discovery=True)
    keys = await started(source)
    assert keys.kids == [idp.kid]
    assert server.hits("idp", "discovery") == 1 and server.hits("idp") == 1
    state = source.state()
    assert state["source"] == server.discovery_url("idp")
    assert state["jwks_url"] == server.jwks_url("idp")

    # A kid refetch reuses the discovered jwks_uri; discovery is not repeated for it.
    new_kid = idp.rotate()
    keys = await _refetch_after(source)
    assert keys is not None and keys.has_kid(new_kid)
    assert server.hits("idp", "discovery") == 1 and server.hits("idp") == 2


async def test_discovery_strips_one_trailing_slash_of_the_issuer(
    discovery_server: tuple[JwksServer, TestIssuer], make_source: MakeSource
) -> None:
    server, idp = discovery_server
    source = make_source(None, issuer=idp.issuer + "/", discovery=True)
    assert source.source_url == server.discovery_url("idp")


async def test_discovery_with_a_different_issuer_is_refused(
    discovery_server: tuple[JwksServer, TestIssuer], make_source: MakeSource
) -> None:
    server, idp = discovery_server
    server.set_issuer_override("idp", "https://evil.example")
    source = make_source(None, issuer=idp.issuer, discovery=True)
    source.start()
    assert await source.keys_for_kid(idp.kid) is None
    state = source.state()
    assert state["failures"] >= 1 and "differs" in state["last_error"]
    assert server.hits("idp") == 0  # the jwks_uri of a refused document is never fetched


async def test_discovery_failure_of_the_jwks_rediscovers(
    discovery_server: tuple[JwksServer, TestIssuer], make_source: MakeSource
) -> None:
    server, idp = discovery_server
    source = make_source(None, issuer=idp.issuer, discovery=True)
    good = await started(source)
    server.set_mode("idp", "error500", endpoint="jwks")
    assert await _refetch_after(source) is good
    server.set_mode("idp", "ok")
    discoveries = server.hits("idp", "discovery")
    await _refetch_after(source)
    assert server.hits("idp", "discovery") == discoveries + 1


# -- lifecycle ----------------------------------------------------------------------------------


async def test_close_stops_work_and_leaves_no_unclosed_session(
    server: JwksServer, corp: TestIssuer, make_source: MakeSource
) -> None:
    loop = asyncio.get_running_loop()
    contexts: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: contexts.append(context))
    try:
        source = make_source(server.jwks_url("corp"), cache_duration=0.3)
        good = await started(source)
        source.close()
        source.close()  # idempotent
        hits = server.hits("corp")
        await asyncio.sleep(0.5)  # a running refresh loop would have fetched again by now
        assert server.hits("corp") == hits
        assert source.current() is good  # keys stay readable
        assert await source.keys_for_kid("unknown") is good  # no fetch after close
        assert server.hits("corp") == hits
        del source
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
        assert not contexts
    finally:
        loop.set_exception_handler(None)


# -- through the verifier -----------------------------------------------------------------------


async def test_verify_token_fails_closed_when_the_source_has_no_keys(
    corp: TestIssuer, tmp_path: Path
) -> None:
    server = JwksServer(corp)
    await server.start()
    await server.stop()  # down: the source can get no keys
    policy = load_policy_text(
        f"""
version: 1
providers:
  corp:
    issuer: {corp.issuer}
    jwks: {{url: "{server.jwks_url("corp")}", timeout: 1s}}
""",
        "policy.yaml",
        tmp_path,
    )
    sources = build_key_sources(policy)
    source = sources["corp"]
    assert isinstance(source, RemoteKeySource)
    try:
        source.start()
        token = corp.mint("alice")
        with pytest.raises(Rejection) as caught:
            await verify_token(token, policy, sources, time.time())
        assert caught.value.status == 401
        assert caught.value.reason == E.JWKS_FETCH_FAILED
        assert caught.value.error == "invalid_token"

        # Same source, no restart: once the JWKS is reachable, the same token verifies.
        await server.start()
        await wait_for(lambda: source.current() is not None)
        verified = await verify_token(token, policy, sources, time.time())
        assert verified.claims["sub"] == "alice"
    finally:
        source.close()
        await server.stop()


# -- a hostile or careless provider: bounded key work, unusable keys ---------------------------


def ec_jwks(count: int, prefix: str = "bulk") -> list[dict[str, Any]]:
    return [
        ECKey.generate_key("P-256").as_dict(private=False) | {"kid": f"{prefix}-{i}"}
        for i in range(count)
    ]


async def test_a_set_over_max_keys_is_a_failure_that_keeps_the_last_good_set(
    scripted: ScriptedServer, corp: TestIssuer, make_source: MakeSource
) -> None:
    assert MAX_KEYS == 100  # documented in docs/policy.md and docs/security.md
    at_cap = [*corp.public_jwks()["keys"], *ec_jwks(MAX_KEYS - 1)]
    scripted.serve_json("/jwks.json", {"keys": at_cap})
    source = make_source(f"{scripted.url}/jwks.json")
    good = await started(source)
    assert len(good.kids) == MAX_KEYS

    scripted.serve_json("/jwks.json", {"keys": [*at_cap, *ec_jwks(1, "extra")]})
    assert await _refetch_after(source) is good
    state = source.state()
    assert state["failures"] == 1
    assert f"lists {MAX_KEYS + 1} keys; at most {MAX_KEYS} are accepted" in state["last_error"]


async def test_a_first_fetch_over_max_keys_gives_no_keys(
    scripted: ScriptedServer, corp: TestIssuer, make_source: MakeSource
) -> None:
    scripted.serve_json("/jwks.json", {"keys": [*corp.public_jwks()["keys"], *ec_jwks(MAX_KEYS)]})
    source = make_source(f"{scripted.url}/jwks.json")
    source.start()
    await wait_for(lambda: source.failures >= 1)
    assert source.current() is None
    assert "at most" in (source.last_error or "")


UNKNOWN_CURVES = [("EC", "BP-256"), ("EC", "P-192"), ("EC", "brainpoolP256r1"), ("OKP", "Ed9999")]


@pytest.mark.parametrize(("kty", "crv"), UNKNOWN_CURVES)
async def test_a_key_on_an_unknown_curve_is_skipped_and_tokens_of_the_good_key_verify(
    scripted: ScriptedServer,
    corp: TestIssuer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    kty: str,
    crv: str,
) -> None:
    borrowed = ECKey.generate_key("P-256").as_dict(private=False)
    members = {"x": borrowed["x"]} if kty == "OKP" else {"x": borrowed["x"], "y": borrowed["y"]}
    odd = {"kty": kty, "crv": crv, "kid": "odd"} | members
    scripted.serve_json("/jwks.json", {"keys": [odd, *corp.public_jwks()["keys"]]})
    url = f"{scripted.url}/jwks.json"
    policy = load_policy_text(
        f"version: 1\nproviders:\n  corp:\n    issuer: {corp.issuer}\n"
        f'    jwks: {{url: "{url}", timeout: 1s}}\n',
        "policy.yaml",
        tmp_path,
    )
    sources = build_key_sources(policy)
    source = sources["corp"]
    assert isinstance(source, RemoteKeySource)
    try:
        with caplog.at_level(logging.WARNING, logger="claimroute"):
            keys = await started(source)
        assert keys.kids == [corp.kid]
        assert source.failures == 0
        verified = await verify_token(corp.mint("alice"), policy, sources, time.time())
        assert verified.claims["sub"] == "alice"
        skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
        assert skipped == [
            f"{url} key 'odd': {kty} curve {crv!r} is not supported "
            f"({'P-256, P-384, P-521' if kty == 'EC' else 'Ed25519, Ed448'}); the key is skipped"
        ]
    finally:
        source.close()


async def test_parse_and_import_run_in_a_worker_thread(
    scripted: ScriptedServer,
    corp: TestIssuer,
    make_source: MakeSource,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: dict[str, set[int]] = {"parse": set(), "import": set()}
    real_parse, real_import = remote_jwks.loads_strict, remote_jwks.key_set_from_jwks

    def parse(*args: Any, **kwargs: Any) -> Any:
        threads["parse"].add(threading.get_ident())
        return real_parse(*args, **kwargs)

    def import_keys(*args: Any, **kwargs: Any) -> KeySet:
        threads["import"].add(threading.get_ident())
        return real_import(*args, **kwargs)

    monkeypatch.setattr(remote_jwks, "loads_strict", parse)
    monkeypatch.setattr(remote_jwks, "key_set_from_jwks", import_keys)
    scripted.serve_json("/jwks.json", corp.public_jwks())
    await started(make_source(f"{scripted.url}/jwks.json"))
    loop_thread = threading.get_ident()
    assert threads["parse"] and threads["import"]
    assert loop_thread not in threads["parse"] | threads["import"]


async def _loop_gaps_while(work: Awaitable[Any]) -> tuple[Any, float]:
    """Run `work` while a ticker measures the longest the event loop went without a turn."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    try:
        result = await work
    finally:
        stop.set()
        await ticking
    return result, max(gaps)


async def test_a_slow_key_import_does_not_hold_the_event_loop(
    scripted: ScriptedServer,
    corp: TestIssuer,
    make_source: MakeSource,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scripted.serve_json("/jwks.json", corp.public_jwks())
    source = make_source(f"{scripted.url}/jwks.json", timeout=2.0)
    good = await started(source)
    real_import = remote_jwks.key_set_from_jwks

    def slow_import(*args: Any, **kwargs: Any) -> KeySet:
        time.sleep(0.5)  # stands for a big import; on the loop it would stall every request
        return real_import(*args, **kwargs)

    monkeypatch.setattr(remote_jwks, "key_set_from_jwks", slow_import)
    corp.rotate(keep_old=True)
    scripted.serve_json("/jwks.json", corp.public_jwks())
    await asyncio.sleep(0.15)  # past the refetch interval

    async def refetch_and_serve() -> tuple[KeySet | None, float]:
        pending = asyncio.create_task(source.keys_for_kid(corp.kid))  # triggers the refetch
        await asyncio.sleep(0.05)
        cached, elapsed = await timed(source.keys_for_kid(good.kids[0]))
        assert cached is good and elapsed < 0.05  # served from the last good set meanwhile
        return await pending, elapsed

    (fresh, _), longest_gap = await _loop_gaps_while(refetch_and_serve())
    assert fresh is not None and corp.kid in fresh.kids
    assert longest_gap < 0.25, longest_gap


async def test_a_refetch_of_thousands_of_keys_does_not_hold_the_event_loop(
    scripted: ScriptedServer, corp: TestIssuer, make_source: MakeSource
) -> None:
    # With the cap raised, the import of the reported 2,834-key set really happens: in a
    # worker thread the loop keeps its turns (on the loop it went ~150-300 ms without one).
    scripted.serve_json("/jwks.json", corp.public_jwks())
    source = make_source(f"{scripted.url}/jwks.json", timeout=5.0, max_keys=5000)
    await started(source)
    scripted.serve_json("/jwks.json", {"keys": [*corp.public_jwks()["keys"], *ec_jwks(2833)]})
    await asyncio.sleep(0.15)
    fresh, longest_gap = await _loop_gaps_while(source.keys_for_kid("bulk-7"))
    assert fresh is not None and len(fresh.kids) == 2834
    assert longest_gap < 0.1, longest_gap


# -- max_stale: a bound on how long keys outlive the last good fetch ---------------------------


class FakeClock:
    """A monotonic clock the test moves; the source reads it for ages and schedules."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_keys_older_than_max_stale_are_dropped_until_a_fetch_succeeds(
    corp: TestIssuer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = JwksServer(corp)
    await server.start()
    policy = load_policy_text(
        f"version: 1\nproviders:\n  corp:\n    issuer: {corp.issuer}\n"
        f'    jwks: {{url: "{server.jwks_url("corp")}", timeout: 1s, cache_duration: 10s,'
        " max_stale: 30s}\n",
        "policy.yaml",
        tmp_path,
    )
    config = policy.providers["corp"].jwks
    assert isinstance(config, RemoteJwks) and config.max_stale == 30.0
    clock = FakeClock()
    source = RemoteKeySource(config, name="corp", clock=clock, min_refetch_interval=0.1)
    sources: dict[str, Any] = {"corp": source}
    token = corp.mint("alice")
    try:
        good = await started(source)
        state = source.state()
        assert (state["max_stale"], state["stale"], state["stale_drops"]) == (30.0, False, 0)
        await server.stop()  # the identity provider goes away

        clock.now += 30.0  # exactly max_stale: still in use
        assert source.current() is good
        assert (await verify_token(token, policy, sources, time.time())).claims["sub"] == "alice"

        clock.now += 0.5  # past it: dropped, and tokens are refused as with no keys at all
        with caplog.at_level(logging.WARNING, logger="claimroute.jwks"):
            assert source.current() is None
        assert "corp: no successful JWKS fetch from" in caplog.text
        assert "for 30.5s (max_stale 30s): keys dropped" in caplog.text
        with pytest.raises(Rejection) as caught:
            await verify_token(token, policy, sources, time.time())
        assert (caught.value.status, caught.value.reason) == (401, E.JWKS_FETCH_FAILED)
        state = source.state()
        assert (state["kids"], state["stale"], state["stale_drops"]) == ([], True, 1)
        assert state["failures"] >= 1 and state["last_error"]

        # Back up: the next request's fetch (or the background retry) brings the keys back.
        await server.start()
        keys = None
        for _ in range(100):
            clock.now += 0.25  # time passes (request-driven fetches are rate-limited on it)
            keys = await source.keys_for_kid(corp.kid)
            if keys is not None:
                break
            await asyncio.sleep(0.05)
        assert keys is not None and keys.kids == [corp.kid]
        assert (await verify_token(token, policy, sources, time.time())).claims["sub"] == "alice"
        state = source.state()
        assert (state["stale"], state["stale_drops"]) == (False, 1)
        assert state["age_seconds"] is not None and state["age_seconds"] < 1
    finally:
        source.close()
        await server.stop()


async def test_without_max_stale_keys_are_kept_however_old(
    server: JwksServer, make_source: MakeSource
) -> None:
    clock = FakeClock()
    source = make_source(server.jwks_url("corp"), clock=clock)
    good = await started(source)
    await server.stop()
    clock.now += 10 * 365 * 86400.0
    assert source.current() is good
    assert source.state()["max_stale"] is None and source.state()["stale"] is False


# -- a map of kid to X.509 certificate at a URL --------------------------------------------------


def certificate_pem(private: Any, *, days_from: float = -1, days_to: float = 14) -> str:
    """A self-signed certificate of `private`'s public key (valid now+days_from..now+days_to)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.test")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days_from))
        .not_valid_after(now + datetime.timedelta(days=days_to))
        .sign(private, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


async def test_a_certificate_map_at_a_url_is_read_and_an_expired_certificate_skipped(
    scripted: ScriptedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corp = TestIssuer("corp", "RS256")
    old = TestIssuer("corp", "RS256")  # the same issuer's previous key, its certificate expired
    document = {
        corp.kid: certificate_pem(corp.private_key),
        "expired": certificate_pem(old.private_key, days_from=-30, days_to=-1),
    }
    scripted.serve_json("/x509", document)
    url = f"{scripted.url}/x509"
    policy = load_policy_text(
        f"version: 1\nproviders:\n  corp:\n    issuer: {corp.issuer}\n"
        f'    jwks: {{url: "{url}", timeout: 1s}}\n',
        "policy.yaml",
        tmp_path,
    )
    sources = build_key_sources(policy)
    source = sources["corp"]
    assert isinstance(source, RemoteKeySource)
    try:
        with caplog.at_level(logging.WARNING, logger="claimroute"):
            keys = await started(source)
        assert keys.kids == [corp.kid] and source.failures == 0
        assert f"{url} certificate 'expired': the certificate expired at" in caplog.text
        verified = await verify_token(corp.mint("alice"), policy, sources, time.time())
        assert verified.claims["sub"] == "alice"
        refused = old.mint("mallory", header={"kid": "expired"})
        with pytest.raises(Rejection) as caught:
            await verify_token(refused, policy, sources, time.time())
        assert (caught.value.status, caught.value.reason) == (401, E.JWT_KID_NOT_FOUND)
    finally:
        source.close()
