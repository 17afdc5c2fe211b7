"""Remote key sources: a JWKS URL or OIDC discovery, fetched in the background.

The request path never waits on the network for keys it already has. A background task
prefetches at start and refreshes at 80% of `cache_duration`; a failed refresh keeps the last
good set and retries with capped exponential backoff and jitter, so a dead IdP sees no storm.
A request waits (briefly, bounded) only when there are no keys yet or its kid is unknown; an
unknown kid triggers at most one refetch per `min_refetch_interval`, shared by every caller
(single flight), so a flood of random kids costs at most one fetch per interval.

With `max_stale`, keys whose last successful fetch is older than that are dropped: the source
then behaves as before its first fetch (requests wait briefly for a fetch, then get None, so
`401 Jwks remote fetch is failed`) until a fetch succeeds again. The age is checked whenever
the keys are read, so they are never used past the bound, whatever the refresh loop is doing.

Fetch rules (conformance §4, K1-K6): a total timeout per HTTP request, a 512 KiB body cap read
incrementally, status 200 only, strict JSON, at most `MAX_KEYS` JWKs, no `oct` keys, unusable
keys skipped (one bad key never costs the others), and an empty result counts as a failure.
Parsing the body and importing the keys run in a worker thread (`asyncio.to_thread`), so a
large set (or a refetch any client can trigger with an unknown kid) never stalls the event loop
that serves requests. Redirects: at most two, and only within the same origin (scheme,
host, port); a redirect elsewhere is a failed fetch, because the key URL must come from the
configuration and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from authlib.oidc.discovery import OpenIDProviderMetadata
from yarl import URL

from claimroute.config.jsonstrict import StrictJSONError, loads_strict
from claimroute.errors import log_safe
from claimroute.keys.keyset import KeyMaterialError, KeySet, key_set_from_jwks

if TYPE_CHECKING:  # the policy's configuration of this source: a type only
    from claimroute.policy.model import RemoteJwks

log = logging.getLogger("claimroute.jwks")

MAX_BODY_BYTES = 512 * 1024
# Most JWKs a remote set may list. Real providers publish a handful (current, next, previous,
# per-algorithm keys); a set over this is refused as a whole, like other malformed sets, and
# the last good keys stay in use.
MAX_KEYS = 100
MAX_REDIRECTS = 2
REFRESH_FRACTION = 0.8  # refresh before the cache lifetime ends, so keys never lapse
FIRST_FETCH_WAIT = 3.0  # longest a request waits for keys that are not there yet
DEFAULT_MIN_REFETCH_INTERVAL = 10.0
COLD_REFETCH_INTERVAL = 1.0  # request-driven fetches while no keys exist at all
BACKOFF_START = 0.5
BACKOFF_CAP = 30.0
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_READ_CHUNK = 16 * 1024

# Tasks closing sessions after a synchronous close(): referenced here so they are not
# garbage-collected half-way (asyncio keeps only weak references to tasks).
_closing: set[asyncio.Task[None]] = set()


class FetchError(Exception):
    """A fetch or discovery step failed; the message is safe to log and to show in state()."""


class RemoteKeySource:
    """Keys of one provider from a remote JWKS (or OIDC discovery), refreshed in the background.

    Implements the `KeySource` protocol. Nothing here raises into the request path: a request
    gets a `KeySet` or None, and None makes the verifier fail closed (401).
    """

    def __init__(
        self,
        config: RemoteJwks,
        *,
        name: str,
        clock: Callable[[], float] = time.monotonic,
        min_refetch_interval: float = DEFAULT_MIN_REFETCH_INTERVAL,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.config = config
        self.name = name
        self._clock = clock
        self._min_refetch_interval = min_refetch_interval
        self._max_body_bytes = max_body_bytes
        self._max_keys = max_keys
        # Never wait longer than one fetch may take, nor longer than FIRST_FETCH_WAIT.
        self._request_wait = min(config.timeout, FIRST_FETCH_WAIT)
        self._backoff_cap = min(BACKOFF_CAP, config.cache_duration)
        self._keys: KeySet | None = None
        self._fetched_at: float | None = None  # clock() of the last success
        self.stale_drops = 0  # how many times keys were dropped for being older than max_stale
        self._jwks_url: str | None = config.url  # with discovery: the last discovered jwks_uri
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._last_refetch = -math.inf  # clock() of the last kid-driven refetch
        self._last_cold_refetch = -math.inf  # clock() of the last request-driven cold fetch
        self._consecutive_failures = 0
        self._closed = False
        self.fetches = 0
        self.successes = 0
        self.failures = 0
        self.refetches = 0
        self.last_error: str | None = None
        self.last_success: float | None = None  # wall-clock time, for humans

    @property
    def source_url(self) -> str:
        """The configured JWKS URL, or the discovery document URL."""
        return self.config.url or self._discovery_url()

    # -- KeySource protocol -----------------------------------------------------------------

    def current(self) -> KeySet | None:
        """The last good key set, or None if no fetch has succeeded yet (or, with `max_stale`,
        none has for that long). Never blocks."""
        if self.config.max_stale is not None and self._keys is not None:
            self._drop_if_stale()
        return self._keys

    async def keys_for_kid(self, kid: str | None) -> KeySet | None:
        """Keys for a token with `kid`: waits (bounded) for a first fetch or a kid refetch.

        With no keys yet, or a kid that the current set lacks, this joins the fetch in flight
        or starts one if the rate limit allows, waits at most `min(timeout, 3s)`, then returns
        whatever set exists by then (possibly None, possibly still without the kid).
        """
        try:
            if self._closed:
                return self.current()
            self.start()  # harmless if running; covers a source used before start()
            keys = self.current()
            if keys is not None and (kid is None or keys.has_kid(kid)):
                return keys
            task = self._inflight if self._fetch_in_flight() else self._try_refetch(kid)
            if task is not None:
                # asyncio.wait neither raises the task's outcome nor cancels it on timeout:
                # the fetch goes on for later requests even if this one stops waiting.
                await asyncio.wait({task}, timeout=self._request_wait)
        except Exception:  # the request path must only ever see a key set or None
            log.exception("%s: unexpected error while waiting for keys", self.name)
        return self.current()

    def state(self) -> dict[str, Any]:
        """A JSON-able summary for `claimroute.keys.keyset` and logs."""
        keys = self.current()
        age = None if self._fetched_at is None else round(self._clock() - self._fetched_at, 3)
        return {
            "source": self.source_url,
            "jwks_url": self._jwks_url,
            "remote": True,
            "discovery": self.config.discovery,
            "kids": keys.kids if keys is not None else [],
            "age_seconds": age,
            "fetches": self.fetches,
            "successes": self.successes,
            "failures": self.failures,
            "refetches": self.refetches,
            "last_error": self.last_error,
            "last_success": self.last_success,
            "max_stale": self.config.max_stale,
            # True while the keys are dropped because no fetch has succeeded for max_stale.
            "stale": keys is None and self.stale_drops > 0,
            "stale_drops": self.stale_drops,
        }

    def _drop_if_stale(self) -> None:
        """Drop the keys once the last successful fetch is older than `max_stale`."""
        assert self.config.max_stale is not None and self._fetched_at is not None
        age = self._clock() - self._fetched_at
        if age <= self.config.max_stale:
            return
        self._keys = None
        self.stale_drops += 1
        log.warning(
            "%s: no successful JWKS fetch from %s for %.1fs (max_stale %gs): keys dropped, "
            "tokens are refused until a fetch succeeds%s",
            self.name,
            log_safe(self.source_url),
            age,
            self.config.max_stale,
            f" (last error: {log_safe(self.last_error)})" if self.last_error else "",
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background prefetch/refresh task. Idempotent; needs a running loop."""
        if self._closed or (self._task is not None and not self._task.done()):
            return
        loop = asyncio.get_running_loop()
        if self._keys is None:
            # Kick the first fetch now, so that a request arriving before the refresh loop
            # has run joins it instead of starting a refetch of its own.
            self._fetch_task(rediscover=True)
        self._task = loop.create_task(self._run(), name=f"claimroute-jwks-{self.name}")

    def close(self) -> None:
        """Stop background work and close the HTTP session. Synchronous and idempotent."""
        self._closed = True
        for task in (self._task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
        self._task = self._inflight = None
        session, self._session = self._session, None
        if session is not None and not session.closed and self._session_loop is not None:
            _close_session(session, self._session_loop)

    # -- background refresh -----------------------------------------------------------------

    async def _run(self) -> None:
        """Prefetch now, refresh at 80% of the cache lifetime, back off after failures."""
        while True:
            try:
                self.current()  # drops stale keys (and logs it) even while no request comes
                if self._needs_refresh():
                    # Background refreshes re-discover (the IdP may have moved its jwks_uri).
                    await asyncio.wait({self._fetch_task(rediscover=True)})
                delay = self._next_delay()
            except Exception:  # a bug here must not end refreshing for good
                log.exception("%s: unexpected error in the JWKS refresh loop", self.name)
                delay = self._backoff_cap
            await asyncio.sleep(delay)

    def _needs_refresh(self) -> bool:
        if self._fetched_at is None or self._consecutive_failures:
            return True
        return self._clock() >= self._fetched_at + REFRESH_FRACTION * self.config.cache_duration

    def _next_delay(self) -> float:
        # After a failure: back off. Otherwise wait until the refresh is due; a kid refetch
        # that succeeded in the meantime resets the failures and so moves the refresh out.
        if self._consecutive_failures or self._fetched_at is None:
            return self._backoff_delay()
        due = self._fetched_at + REFRESH_FRACTION * self.config.cache_duration
        return max(0.05, due - self._clock())

    def _backoff_delay(self) -> float:
        exponent = max(0, self._consecutive_failures - 1)
        base = min(self._backoff_cap, BACKOFF_START * 2 ** min(exponent, 16))
        # Jitter spreads the retries of many proxies (or providers) against one IdP.
        return base * random.uniform(0.75, 1.25)

    # -- single-flight fetching -------------------------------------------------------------

    def _fetch_in_flight(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    def _fetch_task(self, *, rediscover: bool) -> asyncio.Task[bool]:
        """The fetch in flight, or a new one: never two fetches at once for one source."""
        if self._inflight is None or self._inflight.done():
            loop = asyncio.get_running_loop()
            self._inflight = loop.create_task(
                self._fetch(rediscover=rediscover), name=f"claimroute-jwks-fetch-{self.name}"
            )
        return self._inflight

    def _try_refetch(self, kid: str | None) -> asyncio.Task[bool] | None:
        """Start a request-driven refetch unless one ran less than the interval ago."""
        now = self._clock()
        # Cold-start fetches (no keys at all) have their own, shorter limit, so that recovering
        # from an outage does not use up the unknown-kid budget a rotation right after needs.
        cold = self._keys is None
        interval = (
            min(COLD_REFETCH_INTERVAL, self._min_refetch_interval)
            if cold
            else (self._min_refetch_interval)
        )
        last = self._last_cold_refetch if cold else self._last_refetch
        if now - last < interval:
            return None
        if cold:
            self._last_cold_refetch = now
        else:
            self._last_refetch = now
        self.refetches += 1
        reason = "no keys yet" if self._keys is None else f"unknown kid {kid!r}"
        log.info("%s: refetching %s (%s)", self.name, log_safe(self.source_url), log_safe(reason))
        return self._fetch_task(rediscover=False)

    async def _fetch(self, *, rediscover: bool) -> bool:
        """One fetch attempt; True on success. Failures are counted and logged, never raised."""
        self.fetches += 1
        try:
            key_set = await self._fetch_key_set(rediscover=rediscover)
        except Exception as exc:  # CancelledError is not an Exception: close() still works
            self._record_failure(exc)
            return False
        previous = self._keys
        self._keys = key_set
        self._fetched_at = self._clock()
        self.last_success = time.time()
        self.successes += 1
        self._consecutive_failures = 0
        if previous is None or previous.kids != key_set.kids:
            log.info(
                "%s: loaded keys %s from %s",
                self.name,
                log_safe(key_set.kids),
                log_safe(self._jwks_url),
            )
        else:
            log.debug("%s: refreshed keys from %s", self.name, log_safe(self._jwks_url))
        return True

    def _record_failure(self, exc: Exception) -> None:
        self.failures += 1
        self._consecutive_failures += 1
        self.last_error = _describe(exc)
        if self.config.discovery:
            self._jwks_url = None  # re-discover next time: the jwks_uri may have moved
        if self.current() is not None:
            kept = "keeping the last good keys"
        else:
            kept = "no keys (dropped: older than max_stale)" if self.stale_drops else "no keys yet"
        log.warning(
            "%s: JWKS fetch from %s failed (%s); %s",
            self.name,
            log_safe(self.source_url),
            log_safe(self.last_error),
            kept,
        )

    async def _fetch_key_set(self, *, rediscover: bool) -> KeySet:
        url = self._jwks_url
        if self.config.discovery and (rediscover or url is None):
            url = self._jwks_url = await self._discover()
        if url is None:  # cannot happen: a url config has one and discovery just set it
            raise FetchError("no JWKS URL")
        body = await self._get_capped_body(url)
        # Parse and import off the event loop: requests keep being served meanwhile.
        return await asyncio.to_thread(self._key_set_from_body, body, url)

    def _key_set_from_body(self, body: bytes, url: str) -> KeySet:
        """Parse a JWKS body and import its keys (runs in a worker thread; no shared state)."""
        document = _parse_json(body, url)
        if not isinstance(document, dict):
            raise FetchError("the JWKS is not a JSON object")
        return key_set_from_jwks(
            document,
            url,
            allow_oct=False,
            allowed_algorithms=self.config.allowed_algorithms,
            strict=False,
            max_keys=self._max_keys,
        )

    # -- OIDC discovery -----------------------------------------------------------------------

    def _discovery_url(self) -> str:
        issuer = self.config.issuer
        base = issuer[:-1] if issuer.endswith("/") else issuer
        return f"{base}/.well-known/openid-configuration"

    async def _discover(self) -> str:
        """Fetch and check the discovery document; return its `jwks_uri`."""
        document = await self._get_json(self._discovery_url())
        if not isinstance(document, dict):
            raise FetchError("the discovery document is not a JSON object")
        issuer, jwks_uri = document.get("issuer"), document.get("jwks_uri")
        if not isinstance(issuer, str) or not isinstance(jwks_uri, str):
            raise FetchError("the discovery document needs string 'issuer' and 'jwks_uri'")
        # Only issuer and jwks_uri matter here; full validate() would demand endpoints (e.g.
        # authorization_endpoint) that a token verifier never uses.
        metadata = OpenIDProviderMetadata(document)
        try:
            metadata.validate_issuer()
            metadata.validate_jwks_uri()
        except ValueError as exc:
            raise FetchError(f"discovery document refused: {exc}") from None
        # OIDC Discovery §4.3: the issuer must be exactly the one we asked about, or a
        # document served elsewhere could hand us someone else's keys.
        if issuer != self.config.issuer:
            raise FetchError(
                f"discovery issuer {issuer!r} differs from the configured {self.config.issuer!r}"
            )
        return jwks_uri

    # -- HTTP -----------------------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session_loop = asyncio.get_running_loop()
            self._session = aiohttp.ClientSession(
                # No keep-alive: fetches are minutes apart, and with no idle connections the
                # synchronous close() has nothing left to wait for.
                connector=aiohttp.TCPConnector(force_close=True, limit=4),
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                headers={"Accept": "application/json, application/jwk-set+json"},
                cookie_jar=aiohttp.DummyCookieJar(),  # no state carried between fetches
                trust_env=False,  # key URLs come from the policy, not from proxy env vars
            )
        return self._session

    async def _get_json(self, url: str) -> Any:
        """GET `url` (same-origin redirects only), cap the body, parse it strictly (in a
        worker thread: a body of up to the cap is parsed off the event loop)."""
        body = await self._get_capped_body(url)
        return await asyncio.to_thread(_parse_json, body, url)

    async def _get_capped_body(self, url: str) -> bytes:
        """GET `url` within the total timeout; the body, at most `max_body_bytes`."""
        async with asyncio.timeout(self.config.timeout):
            return await self._get_body(URL(url))

    async def _get_body(self, url: URL) -> bytes:
        session = self._get_session()
        origin = url.origin()
        for _ in range(MAX_REDIRECTS + 1):
            async with session.get(url, allow_redirects=False) as response:
                if response.status in _REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchError(f"{url}: redirect without Location")
                    target = url.join(URL(location))
                    if not target.absolute or target.origin() != origin:
                        raise FetchError(f"{url}: redirect to another origin ({target}) refused")
                    url = target
                    continue
                if response.status != 200:
                    raise FetchError(f"{url}: HTTP {response.status}")
                return await self._read_capped(response, url)
        raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")

    async def _read_capped(self, response: aiohttp.ClientResponse, url: URL) -> bytes:
        limit = self._max_body_bytes
        if response.content_length is not None and response.content_length > limit:
            raise FetchError(f"{url}: body of {response.content_length} bytes exceeds {limit}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_READ_CHUNK):
            size += len(chunk)
            if size > limit:  # stop reading: a giant body must not fill memory
                raise FetchError(f"{url}: body exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _parse_json(body: bytes, url: str) -> Any:
    try:
        return loads_strict(body)
    except StrictJSONError as exc:
        raise FetchError(f"{url}: not valid JSON ({exc})") from None


def _describe(exc: Exception) -> str:
    """A short, log-safe description of a fetch failure."""
    if isinstance(exc, FetchError | KeyMaterialError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def _close_session(session: aiohttp.ClientSession, owner: asyncio.AbstractEventLoop) -> None:
    """Close an aiohttp session from synchronous code without 'unclosed session' warnings."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        # eager_start runs the close at once up to its first real wait (usually to the end).
        task = asyncio.Task(session.close(), loop=loop, eager_start=True)
        if not task.done():
            _closing.add(task)
            task.add_done_callback(_closing.discard)
        return
    if not owner.is_closed() and not owner.is_running():
        owner.run_until_complete(session.close())
    else:
        # No way to await here: detaching marks the session closed; idle connections are
        # dropped with the connector.
        session.detach()
