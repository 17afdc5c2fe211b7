"""Prometheus metrics: what the addon decided, where it routed, and the state of keys and cache.

Every label value comes from the policy (provider, RBAC policy, route names and upstream URLs)
or from a fixed set (outcomes, statuses, actions, modes, the refusal reasons of `errors.py`,
`hygiene.py` and the verifier), never from a token or a request: no `sub`, no path, no host. A
reason that quotes the token (`Jwt payload is not valid JSON: ...`) is reduced to its fixed
prefix, and a reason outside the known set is counted as `other`. So the number of series is
bounded by the policies loaded.

Cost on the request path (performance rules): the counts are plain integers in dicts, touched
only on the event loop, without locks; the request-time histogram is a list of bucket counts
found with `bisect`. Nothing is formatted per request. A scrape (the HTTP endpoint's thread, or
the `claimroute.metrics` command) copies them (`dict.copy()` and `list()` run in C under the
GIL, so each copy is consistent) and builds the metric families with prometheus_client's custom
collector API. The key sources' `state()` and `TokenCache.stats()` are read at scrape time, on
the event loop (they belong to it: a scrape thread hands the read to the loop and waits for it,
at most `LOOP_READ_TIMEOUT`).

Each addon instance has its own `CollectorRegistry` (never the global one), so a hot reload of
the script never registers a metric twice. The endpoint (`MetricsEndpoint`) is a WSGI server
from the standard library running prometheus_client's app in a daemon thread; it binds at once
(a busy port is an option error) and stops cleanly in `close()`.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import logging
import re
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer

from claimroute import errors as E
from claimroute.keys.source import KeySource
from claimroute.mitm import hygiene
from claimroute.pipeline import decide
from claimroute.pipeline.decide import Decision
from claimroute.pipeline.tokencache import TokenCache

log = logging.getLogger("claimroute")

T = TypeVar("T")

METRICS_PATH = "/metrics"
DEFAULT_METRICS_HOST = "127.0.0.1"
OTHER_REASON = "other"
NO_POLICY = "claimroute has no policy loaded"
DEFAULT_RBAC_POLICY = "(default)"  # the RBAC default action decided
LOOP_READ_TIMEOUT = 2.0  # longest a scrape waits for the event loop to read key and cache state
# The time the addon spends on one request (requestheaders), in seconds: from tens of µs (a
# cached token) to the few seconds a request may wait for remote keys.
REQUEST_SECONDS_BUCKETS: tuple[float, ...] = (
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


# -- reasons: a fixed set -----------------------------------------------------------------------


def _constants(module: object) -> set[str]:
    """A module's public upper-case string constants (its reasons)."""
    return {
        value
        for name, value in vars(module).items()
        if name.isupper() and not name.startswith("_") and isinstance(value, str)
    }


def _verifier_reasons() -> set[str]:
    """The reasons `pipeline/verify.py` builds from a template with a fixed set of values."""
    out = {
        "Jwt header is not a JSON object",
        "Jwt header has no alg",
        "Jwt header kid is not a string",
        "Jwt payload is not a JSON object",
        "Jwt aud is not a string or a list of strings",
        "Jwt has no exp and the provider requires one",
    }
    out.update(f"Jwt {part} is not valid base64url" for part in ("header", "payload", "signature"))
    out.update(f"Jwt header member {member!r} is not supported" for member in ("b64", "crit"))
    for name in ("exp", "nbf", "iat"):
        out.update((f"Jwt {name} is not a number", f"Jwt {name} is out of range"))
    out.update(f"Jwt {name} is not a string" for name in ("sub", "jti"))
    return out


# Reasons that are label values as they are: the constants of errors.py, hygiene.py and
# decide.py, the verifier's fixed messages, and the reasons of decisions that let the request
# through.
FIXED_REASONS: frozenset[str] = frozenset(
    _constants(E)
    | _constants(hygiene)
    | _constants(decide)
    | _verifier_reasons()
    | {"verified", "no token", "token ignored", NO_POLICY}
)
# Reasons that quote the token after a fixed prefix: only the prefix is a label value.
REASON_PREFIXES: tuple[str, ...] = ("Jwt header is not valid JSON", "Jwt payload is not valid JSON")
_PREFIX_RE = re.compile("|".join(re.escape(p) for p in REASON_PREFIXES))


def reason_label(reason: str) -> str:
    """The label value for a decision's reason: itself when it is one of the fixed reasons,
    its fixed prefix when it quotes a token, else `other`."""
    if reason in FIXED_REASONS:
        return reason
    match = _PREFIX_RE.match(reason)
    return match.group() if match is not None else OTHER_REASON


# -- the counts -----------------------------------------------------------------------------------


class ClaimRouteMetrics:
    """The addon's counts and the registry that exposes them (one per addon instance).

    `key_sources` and `cache` are read at scrape time (they change on reload and on
    `claimroute_cache_size`), through the callables given.
    """

    def __init__(
        self,
        key_sources: Callable[[], Mapping[str, KeySource]] = dict,
        cache: Callable[[], TokenCache | None] = lambda: None,
    ) -> None:
        self._key_sources = key_sources
        self._cache = cache
        # (outcome, status or 0, reason label) -> count. A lookup uses the raw reason: it hits
        # only when the reason is its own label, and a new key is always stored vetted.
        self.decisions: dict[tuple[str, int, str], int] = {}
        self.providers: dict[tuple[str, str], int] = {}  # (provider or "", outcome)
        self.rbac: dict[tuple[str | None, bool, bool], int] = {}  # (policy, allowed, dry_run)
        self.would_deny: dict[str | None, int] = {}  # dry-run denials, by RBAC policy
        self.routes: dict[tuple[str, str], int] = {}  # (route, upstream); ("", "") no route
        self.request_buckets: list[int] = [0] * (len(REQUEST_SECONDS_BUCKETS) + 1)
        self.request_seconds_sum = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None  # where key and cache state live
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def bind_loop(self) -> None:
        """Read key and cache state on the running event loop from now on (call on it)."""
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None  # no loop (unit tests): state is read where the scrape runs

    def _on_loop(self, read: Callable[[], T]) -> T:
        """`read()` on the event loop: at once when called on it (or without one), else handed
        to it from this (scrape) thread; raises TimeoutError if the loop is too busy."""
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return read()
        try:
            if asyncio.get_running_loop() is loop:
                return read()
        except RuntimeError:
            pass  # another thread: the endpoint's
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(read())
            except Exception as exc:
                result.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return result.result(timeout=LOOP_READ_TIMEOUT)

    # -- recording (the request path) ---------------------------------------------------------

    def record(self, decision: Decision) -> None:
        """Count one decision: outcome/status/reason, provider, RBAC and route."""
        rejection = decision.rejection
        outcome = decision.outcome
        key = (outcome, rejection.status if rejection is not None else 0, decision.reason)
        decisions = self.decisions
        if key in decisions:
            decisions[key] += 1
        else:
            vetted = (key[0], key[1], reason_label(key[2]))
            decisions[vetted] = decisions.get(vetted, 0) + 1
        pkey = (decision.provider or "", outcome)
        providers = self.providers
        providers[pkey] = providers.get(pkey, 0) + 1
        rbac = decision.rbac
        if rbac is not None:
            rkey = (rbac.policy, rbac.allowed, rbac.dry_run)
            self.rbac[rkey] = self.rbac.get(rkey, 0) + 1
            if rbac.dry_run and not rbac.allowed:
                self.would_deny[rbac.policy] = self.would_deny.get(rbac.policy, 0) + 1
        if rejection is None:
            route = decision.route
            tkey = (route.name, route.upstream) if route is not None else ("", "")
            self.routes[tkey] = self.routes.get(tkey, 0) + 1

    def observe_request(self, seconds: float) -> None:
        """Count the time the addon spent on one request (requestheaders)."""
        self.request_buckets[bisect.bisect_left(REQUEST_SECONDS_BUCKETS, seconds)] += 1
        self.request_seconds_sum += seconds

    # -- reading --------------------------------------------------------------------------------

    def text(self) -> str:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry).decode("utf-8")

    def families(self) -> Iterator[Metric]:
        """Every metric family, built from a copy of the counts (safe from another thread)."""
        decisions = CounterMetricFamily(
            "claimroute_decisions", "Decisions by outcome, refusal status and reason.",
            labels=("outcome", "status", "reason"),
        )  # fmt: skip
        for (outcome, status, reason), n in self.decisions.copy().items():
            decisions.add_metric((outcome, str(status) if status else "", reason), n)
        yield decisions
        providers = CounterMetricFamily(
            "claimroute_decisions_by_provider",
            "Decisions by the provider that verified the token (empty: none) and outcome.",
            labels=("provider", "outcome"),
        )
        for labels, n in self.providers.copy().items():
            providers.add_metric(labels, n)
        yield providers
        rbac = CounterMetricFamily(
            "claimroute_rbac_decisions",
            "RBAC decisions by deciding policy ((default): the default action), action and mode.",
            labels=("policy", "action", "mode"),
        )
        for (policy, allowed, dry_run), n in self.rbac.copy().items():
            rbac.add_metric((policy or DEFAULT_RBAC_POLICY, "allow" if allowed else "deny",
                             "dry_run" if dry_run else "enforce"), n)  # fmt: skip
        yield rbac
        would_deny = CounterMetricFamily(
            "claimroute_rbac_dry_run_would_deny",
            "Requests RBAC would have refused in dry-run mode (let through), by policy.",
            labels=("policy",),
        )
        for policy, n in self.would_deny.copy().items():
            would_deny.add_metric((policy or DEFAULT_RBAC_POLICY,), n)
        yield would_deny
        routes = CounterMetricFamily(
            "claimroute_routes",
            "Requests let through, by route and the upstream chosen (a split's target); "
            "empty: no route matched.",
            labels=("route", "upstream"),
        )
        for labels, n in self.routes.copy().items():
            routes.add_metric(labels, n)
        yield routes
        buckets = list(self.request_buckets)  # one copy: count and buckets agree
        cumulative, running = [], 0
        for bound, n in zip((*REQUEST_SECONDS_BUCKETS, float("inf")), buckets, strict=True):
            running += n
            cumulative.append((_le(bound), running))
        yield HistogramMetricFamily(
            "claimroute_request_duration_seconds",
            "Time the addon spent per request in the requestheaders hook (waits for remote "
            "keys included).",
            buckets=cumulative, sum_value=self.request_seconds_sum,
        )  # fmt: skip
        yield from self._key_families()
        yield from self._cache_families()

    def _key_families(self) -> Iterator[Metric]:
        held = GaugeMetricFamily("claimroute_keys", "Keys held, by provider.",
                                 labels=("provider",))  # fmt: skip
        fetches = CounterMetricFamily(
            "claimroute_jwks_fetches", "Remote key fetches by provider and result (ok, failed).",
            labels=("provider", "result"),
        )  # fmt: skip
        refetches = CounterMetricFamily(
            "claimroute_jwks_refetches",
            "Fetches started by a request (unknown kid, or no keys yet), by provider.",
            labels=("provider",),
        )
        age = GaugeMetricFamily(
            "claimroute_jwks_seconds_since_success",
            "Seconds since the last good fetch of remote keys, by provider (absent before one).",
            labels=("provider",),
        )
        stale = GaugeMetricFamily(
            "claimroute_jwks_stale",
            "1 while a provider's keys are dropped for being older than max_stale, else 0.",
            labels=("provider",),
        )
        try:
            states = self._on_loop(self._key_states)
        except TimeoutError:
            log.warning("claimroute: metrics: the event loop did not answer; no key figures")
            states = {}
        for name, state in states.items():
            held.add_metric((name,), len(state.get("kids") or ()))
            if not state.get("remote"):
                continue
            fetches.add_metric((name, "ok"), state.get("successes", 0))
            fetches.add_metric((name, "failed"), state.get("failures", 0))
            refetches.add_metric((name,), state.get("refetches", 0))
            if state.get("age_seconds") is not None:
                age.add_metric((name,), state["age_seconds"])
            if "stale" in state:
                stale.add_metric((name,), 1 if state["stale"] else 0)
        yield from (held, fetches, refetches, age, stale)

    def _key_states(self) -> dict[str, dict[str, Any]]:
        states = {}
        for name, source in list(self._key_sources().items()):
            try:
                states[name] = source.state()
            except Exception:  # a scrape must never fail on one source
                log.exception("claimroute: metrics: no key state for %s", name)
        return states

    def _cache_stats(self) -> dict[str, int]:
        cache = self._cache()
        return cache.stats() if cache is not None else {}

    def _cache_families(self) -> Iterator[Metric]:
        try:
            stats = self._on_loop(self._cache_stats)
        except TimeoutError:
            return  # no figures rather than zeros (which would read as a counter reset)
        for key, help_text in (
            ("hits", "Token cache lookups that found a valid entry."),
            ("misses", "Token cache lookups that did not (the token was verified)."),
            ("evictions", "Token cache entries dropped to respect the size bound."),
            ("invalidations", "Token cache entries dropped: policy, keys or time changed."),
        ):
            family = CounterMetricFamily(f"claimroute_token_cache_{key}", help_text)
            family.add_metric((), stats.get(key, 0))
            yield family
        yield GaugeMetricFamily("claimroute_token_cache_entries", "Tokens in the cache.",
                                value=stats.get("size", 0))  # fmt: skip
        yield GaugeMetricFamily("claimroute_token_cache_max_entries",
                                "The cache's bound (0: the cache is off).",
                                value=stats.get("max_size", 0))  # fmt: skip


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class _Collector:
    """prometheus_client's custom collector protocol, over `ClaimRouteMetrics`."""

    def __init__(self, metrics: ClaimRouteMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()


# -- the HTTP endpoint --------------------------------------------------------------------------


class MetricsAddressError(ValueError):
    """`claimroute_metrics` is not HOST:PORT, or nothing can listen there."""


def parse_address(spec: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT`, `:PORT` or `PORT` (loopback) -> (host, port).

    Only a host the user writes is ever used: without one, the endpoint listens on 127.0.0.1.
    Port 0 picks a free port (logged at start).
    """
    text = spec.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep or not host:
            raise MetricsAddressError(f"expected [IPv6]:PORT, got {spec!r}")
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise MetricsAddressError(f"write an IPv6 address in brackets ([::1]:PORT): {spec!r}")
        host = host or DEFAULT_METRICS_HOST
    else:
        host, port_text = DEFAULT_METRICS_HOST, text
    if not port_text.isascii() or not port_text.isdigit():
        raise MetricsAddressError(f"expected HOST:PORT with a numeric port, got {spec!r}")
    port = int(port_text)
    if port > 65535:
        raise MetricsAddressError(f"port {port} is out of range (0-65535)")
    if not host or any(ch.isspace() or ch in "/?#@" for ch in host):
        raise MetricsAddressError(f"invalid host in {spec!r}")
    return host, port


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on mitmproxy's terminal."""


class _Server(ThreadingWSGIServer):
    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the name up (getfqdn, reverse DNS): not needed.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


def _only_metrics_path(app: Callable[..., Any]) -> Callable[..., Any]:
    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"metrics are at {METRICS_PATH}\n".encode()]
        return app(environ, start_response)

    return serve


class MetricsEndpoint:
    """`GET /metrics` on HOST:PORT, served in a daemon thread; `close()` stops it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._app = _only_metrics_path(make_wsgi_app(registry))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    @property
    def url(self) -> str | None:
        """`http://HOST:PORT/metrics` while listening."""
        if self.address is None:
            return None
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}{METRICS_PATH}"

    def listen(self, spec: str | None) -> None:
        """Serve on `spec` (see `parse_address`) instead of wherever it served; None or empty:
        stop. Raises `MetricsAddressError` (nothing is listening then)."""
        self.close()
        if spec is None or not spec.strip():
            return
        host, port = parse_address(spec)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)  # fmt: skip
            family, *_, sockaddr = infos[0]
            server_class = type("_MetricsServer", (_Server,), {"address_family": family})
            server = make_server(sockaddr[0], port, self._app, server_class, _QuietHandler)
        except OSError as exc:
            raise MetricsAddressError(f"cannot listen on {spec.strip()}: {exc}") from None
        self._server = server
        self.address = (str(server.server_address[0]), int(server.server_address[1]))
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1},
            name="claimroute-metrics", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def close(self) -> None:
        """Stop serving and free the port (synchronous, idempotent)."""
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        self.address = None
        if server is not None:
            server.shutdown()  # returns once serve_forever has stopped (within poll_interval)
            server.server_close()
        if thread is not None:
            thread.join(2)
