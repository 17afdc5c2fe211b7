"""The mitmproxy layer: options, policy (re)loading, and applying decisions to flows.

It stays thin: the stages live in `pipeline`. Two rules shape it. A hook that raises lets
the request through (mitmproxy's safecall is fail-open), so `requestheaders` catches
everything and refuses. And streamed bodies skip the `request` hook, so the decision is
made in `requestheaders`, where a streamed request can still be killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from pathlib import Path
from typing import Any

from mitmproxy import command, ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ReverseMode

from claimroute import errors as E
from claimroute.errors import PolicyError, Rejection, log_safe
from claimroute.keys.source import KeySource
from claimroute.match.request import RequestView
from claimroute.mitm.decisionlog import DEFAULT_REQUEST_ID_HEADER, DecisionLog, comment
from claimroute.mitm.flowedit import HeaderSnapshot, apply_decision, strip_headers, strip_key
from claimroute.mitm.hygiene import (
    body_length_unknown,
    frame_body,
    host_names,
    mark_streamable_body,
    request_problem,
    trailers_problem,
)
from claimroute.mitm.metrics import ClaimRouteMetrics, MetricsAddressError, MetricsEndpoint
from claimroute.mitm.reload import PolicyReloader
from claimroute.mitm.responses import response_parts
from claimroute.pipeline.decide import Decision, decide
from claimroute.pipeline.keysources import build_key_sources, retired_sources
from claimroute.pipeline.tokencache import DEFAULT_CACHE_SIZE, TokenCache
from claimroute.policy.load import load_policy
from claimroute.policy.model import Policy

log = logging.getLogger("claimroute")

DRY_RUN_HEADER = "x-claimroute-rbac"
METADATA_KEY = "claimroute"
REFUSED_MARK = ":no_entry:"  # flow.marked on every refused flow (mitmweb: `~marker no_entry`)
_KEY_FAILURES = frozenset({E.JWKS_FETCH_FAILED, E.JWT_KID_NOT_FOUND})


def request_view(
    request: http.Request,
    *,
    reads_query: bool = True,
    reads_cookies: bool = True,
    client_chose_target: bool = True,
    headers: HeaderSnapshot | None = None,
    host_values: list[str] | None = None,
) -> RequestView:
    """The stage-facing view of a mitmproxy request (`headers`: its snapshot, when taken).

    The query and the cookies are parsed only when the policy reads them (a token location):
    a client can send megabytes of either, which would otherwise be parsed on every request.
    """
    path = request.path
    host = request.host
    if headers is None:
        headers = HeaderSnapshot(request.headers.fields)
    if host_values is None:
        host_values = headers.get_all("host")
    return RequestView(  # positional: cheaper than keywords, in the field order
        request.method,
        request.scheme,
        request.pretty_host if host == "" else host,  # host
        request.port,
        path.split("?", 1)[0],  # path
        tuple(request.query.items(multi=True)) if reads_query and "?" in path else (),
        headers,
        tuple(request.cookies.items(multi=True)) if reads_cookies and "cookie" in headers else (),
        host_names(request, client_chose_target=client_chose_target, values=host_values),
    )


def _client_chose_target(flow: http.HTTPFlow) -> bool:
    """Whether the client chose where mitmproxy connects (every mode but reverse)."""
    return not isinstance(flow.client_conn.proxy_mode, ReverseMode)


def _last_resort(flow: http.HTTPFlow) -> None:
    """Refuse with nothing that can fail: kill the flow, or a fixed 500."""
    if flow.killable:
        flow.kill()
    else:
        flow.response = http.Response.make(500, b"", {"content-length": "0"})


_frozen = False


def _freeze_startup_objects() -> None:
    """Move everything allocated at startup (mitmproxy, the addon's libraries, the policy) out
    of the garbage collector's reach, once per process.

    A full collection otherwise walks all of it and blocks the loop for tens of ms; after
    this, it only walks what was allocated since (flows, cache entries).
    """
    global _frozen
    if not _frozen:
        _frozen = True
        gc.freeze()


class ClaimRoute:
    """Verify JWTs, authorize on claims and route on claims, per the policy file."""

    def __init__(self) -> None:
        self.policy: Policy | None = None
        self.key_sources: dict[str, KeySource] = {}
        self._policy_path: Path | None = None
        self._reloader: PolicyReloader | None = None  # watches the policy and its key files
        self._watcher: asyncio.Task[None] | None = None
        self._decision_log = DecisionLog()
        self._debug_headers = False
        self._may_stream = False  # whether mitmproxy may stream request bodies
        self._request_id_header: str | None = DEFAULT_REQUEST_ID_HEADER
        self.cache: TokenCache | None = TokenCache(DEFAULT_CACHE_SIZE)
        # The policy's identity headers as lower-case bytes, computed once per policy.
        self._strip_keys: frozenset[bytes] = frozenset()
        self.metrics = ClaimRouteMetrics(lambda: self.key_sources, lambda: self.cache)
        self._metrics_endpoint = MetricsEndpoint(self.metrics.registry)

    # -- lifecycle (all synchronous: async lifecycle hooks break mitmproxy's hot reload) ------

    def load(self, loader: Any) -> None:
        loader.add_option("claimroute", str | None, None, "Path of the claimroute policy file.")
        loader.add_option(
            "claimroute_log", str | None, None,
            "Append one JSON line per decision to this file.",
        )  # fmt: skip
        loader.add_option(
            "claimroute_debug_headers", bool, False,
            f"Add the {DRY_RUN_HEADER} response header with RBAC dry-run decisions.",
        )  # fmt: skip
        loader.add_option(
            "claimroute_request_id_header", str, DEFAULT_REQUEST_ID_HEADER,
            "Request header whose value the decision log records as request_id "
            "(empty: none).",
        )  # fmt: skip
        loader.add_option(
            "claimroute_cache_size", int, DEFAULT_CACHE_SIZE,
            "How many verified tokens to remember (LRU); 0 disables the cache.",
        )  # fmt: skip
        loader.add_option(
            "claimroute_metrics", str | None, None,
            "Serve Prometheus metrics at http://HOST:PORT/metrics (PORT alone: 127.0.0.1).",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        if "validate_inbound_headers" in updated and not ctx.options.validate_inbound_headers:
            # mitmproxy's framing checks (Content-Length with Transfer-Encoding, ...) are what
            # keeps a second request from hiding in a body: without them nothing is decided.
            raise exceptions.OptionsError(
                "claimroute: validate_inbound_headers=false lets requests with ambiguous "
                "framing through (request smuggling); keep it on"
            )
        for passthrough in ("ignore_hosts", "allow_hosts"):
            if passthrough in updated and getattr(ctx.options, passthrough):
                # Connections mitmproxy does not intercept never reach any hook: unverified.
                raise exceptions.OptionsError(
                    f"claimroute: {passthrough} makes mitmproxy pass connections through "
                    "without interception, so no token would be checked on them; remove it"
                )
        if "stream_large_bodies" in updated:
            self._may_stream = bool(ctx.options.stream_large_bodies)
        if "claimroute_debug_headers" in updated:
            self._debug_headers = ctx.options.claimroute_debug_headers
        if "claimroute_request_id_header" in updated:
            self._request_id_header = ctx.options.claimroute_request_id_header.strip() or None
        if "claimroute_log" in updated:
            self._open_log(ctx.options.claimroute_log)
        if "claimroute_cache_size" in updated:
            size = ctx.options.claimroute_cache_size
            if size < 0:
                raise exceptions.OptionsError(
                    f"claimroute_cache_size: must be 0 (off) or positive, got {size}"
                )
            self.cache = TokenCache(size) if size > 0 else None
        if "claimroute" in updated and ctx.options.claimroute:
            path = Path(ctx.options.claimroute)
            try:
                self._install(load_policy(path))
            except PolicyError as exc:
                raise exceptions.OptionsError(f"claimroute: {exc}") from None
            self._policy_path = path
            self._watch_files()
            self._start_background()
        if "claimroute_metrics" in updated:
            self._listen_metrics(ctx.options.claimroute_metrics)

    def running(self) -> None:
        if self.policy is None:
            # Logged at error level during startup, so mitmdump exits 1 instead of running open.
            log.error("claimroute: no policy file; start with --set claimroute=POLICY.yaml")
            return
        self._start_background()
        _freeze_startup_objects()
        address = "?"
        with contextlib.suppress(Exception):
            addrs = ctx.master.addons.get("proxyserver").listen_addrs()
            if addrs:
                address = f"{addrs[0][0]}:{addrs[0][1]}"
        log.info("claimroute ready: listening on %s, policy %s", address, self.policy.path)

    def done(self) -> None:
        if self.cache is not None and self.policy is not None:
            log.info("claimroute: token cache at exit: %s", self.cache_state())
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        for source in self.key_sources.values():
            source.close()
        self._decision_log.close()
        self._metrics_endpoint.close()

    # -- the request hook -------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        started = time.perf_counter()
        try:
            await self._handle(flow)
        except Exception:
            self._refuse_internal_error(flow)
        self.metrics.observe_request(time.perf_counter() - started)

    def _refuse_internal_error(self, flow: http.HTTPFlow) -> None:
        """A bug on the request path: refuse with 500 (mitmproxy would forward the request)."""
        log.exception("claimroute: internal error; refusing the request")
        flow.metadata[METADATA_KEY] = {"outcome": "denied", "reason": E.INTERNAL_ERROR,
                                       "status": 500}  # fmt: skip
        internal = Rejection(500, E.INTERNAL_ERROR, None, challenge=False)
        try:
            self._refuse(flow, internal)
            self.metrics.record(Decision("denied", E.INTERNAL_ERROR, internal))
        except Exception:
            # Even building the refusal failed: a constant answer, or no answer at all.
            log.exception("claimroute: could not build the refusal; closing the request")
            _last_resort(flow)

    async def _handle(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        policy = self.policy
        if policy is None:
            self._refuse(flow, Rejection(503, "claimroute has no policy loaded", None, False))
            return
        # Client copies of identity headers are stripped first, whatever happens next.
        if self._strip_keys:
            strip_headers(request, self._strip_keys)
        locations = policy.token_locations
        headers = HeaderSnapshot(request.headers.fields)  # after stripping: what stages read
        hosts = headers.get_all("host")
        problem = request_problem(
            request, locations.cookies, bool(locations.query_params), locations.header_names, hosts
        )
        if problem is not None:
            # A request the upstream could read otherwise than the proxy: no decision on it.
            self._record(flow, Decision("denied", problem.reason, problem), policy)
            realm = request_view(request, reads_query=False, reads_cookies=False).realm
            self._refuse(flow, problem, realm)
            return
        view = request_view(
            request,
            reads_query=bool(locations.query_params),
            reads_cookies=bool(locations.cookies),
            client_chose_target=_client_chose_target(flow),
            headers=headers,
            host_values=hosts,
        )
        decision = await decide(view, policy, self.key_sources, time.time(), self.cache)
        self._record(flow, decision, policy)
        if decision.rejection is not None:
            self._refuse(flow, decision.rejection, view.realm)
            return
        apply_decision(request, decision)
        if self._may_stream:
            mark_streamable_body(request)
        if self._debug_headers and decision.rbac is not None and decision.rbac.dry_run:
            flow.metadata["claimroute_dry_run_header"] = decision.rbac.summary()

    # -- traffic that is not HTTP ---------------------------------------------------------
    # mitmproxy relays bytes it does not recognise as HTTP (e.g. "\r\nGET / ..." inside a
    # CONNECT tunnel, or hosts listed in tcp_hosts/udp_hosts) as raw TCP/UDP, past every HTTP
    # hook. Many HTTP servers accept such a request, so without this it would reach the
    # upstream unverified. Nothing the client sends that way is forwarded, and nothing comes
    # back. (Killing the flow does not stop mitmproxy's raw relay; emptying each message does.)

    def tcp_start(self, flow: Any) -> None:
        log.warning("claimroute: refusing raw TCP to %s: only verified HTTP passes",
                    log_safe(flow.server_conn.address))  # fmt: skip
        if flow.server_conn.timestamp_start is None:
            flow.server_conn.error = "claimroute: raw TCP is not forwarded"
        flow.metadata[METADATA_KEY] = {"outcome": "denied", "reason": "not HTTP"}

    def tcp_message(self, flow: Any) -> None:
        flow.messages[-1].content = b""

    def udp_start(self, flow: Any) -> None:
        self.tcp_start(flow)

    def udp_message(self, flow: Any) -> None:
        flow.messages[-1].content = b""

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        summary = flow.metadata.get("claimroute_dry_run_header")
        if summary and flow.response is not None:
            flow.response.headers[DRY_RUN_HEADER] = summary

    def request(self, flow: http.HTTPFlow) -> None:
        """The body has arrived (or, streamed, has been sent): refuse trailers and give an
        HTTP/2 or HTTP/3 body its length before it leaves (`hygiene.frame_body`)."""
        if flow.response is not None or flow.error is not None:
            return
        try:
            request = flow.request
            problem = trailers_problem(request)
            if problem is not None:
                if self.policy is not None:
                    self._record(flow, Decision("denied", problem.reason, problem), self.policy)
                self._refuse(flow, problem)
            elif not request.stream:
                frame_body(request)
        except Exception:
            self._refuse_internal_error(flow)

    def _refuse(self, flow: http.HTTPFlow, rejection: Rejection, realm: str = "") -> None:
        flow.marked = REFUSED_MARK
        if flow.request.stream or (self._may_stream and body_length_unknown(flow.request)):
            # A streamed request cannot get a response from here; killing it is the only way
            # to make sure the upstream sees nothing. And a body of unknown length may still
            # make mitmproxy start streaming after an answer is set, which it cannot do with
            # one (the client would wait forever): such a request is closed too.
            if flow.killable:
                flow.kill()
            return
        status, body, headers = response_parts(rejection, realm)
        if flow.request.method == "HEAD":
            # A HEAD response has no body, but announces the length a GET would have had.
            flow.response = http.Response.make(status, b"", headers)
            flow.response.headers["content-length"] = str(len(body))
        else:
            flow.response = http.Response.make(status, body, headers)

    def _record(self, flow: http.HTTPFlow, decision: Decision, policy: Policy) -> None:
        record = decision.record()
        if decision.reason in _KEY_FAILURES:
            # Key trouble: say what the proxy holds (kids, age, fetch errors) next to the refusal.
            record["keys"] = {name: src.state() for name, src in self.key_sources.items()}
        flow.metadata[METADATA_KEY] = record
        flow.comment = comment(decision)
        self.metrics.record(decision)
        self._decision_log.write(flow, record, policy, self._request_id_header)

    # -- policy and keys --------------------------------------------------------------------

    def _install(self, policy: Policy) -> None:
        old = self.key_sources
        self.key_sources = build_key_sources(policy, old)
        self._strip_keys = frozenset(strip_key(name) for name in policy.identity_headers)
        self.policy = policy
        if self.cache is not None:
            # Entries would miss anyway (they hold the old policy); dropping them frees memory.
            self.cache.clear()
        for source in retired_sources(old, self.key_sources):
            source.close()

    def _listen_metrics(self, spec: str | None) -> None:
        self.metrics.bind_loop()  # configure runs on the proxy's loop (when it has one)
        try:
            self._metrics_endpoint.listen(spec)
        except MetricsAddressError as exc:
            raise exceptions.OptionsError(f"claimroute_metrics: {exc}") from None
        if self._metrics_endpoint.url is not None:
            log.info("claimroute: metrics at %s", self._metrics_endpoint.url)

    def _open_log(self, path: str | None) -> None:
        try:
            self._decision_log.open(path)
        except OSError as exc:
            raise exceptions.OptionsError(f"claimroute_log: cannot open {path}: {exc}") from None

    def _watch_files(self) -> None:
        """Watch the files the current policy came from (stamped before they were read)."""
        assert self._policy_path is not None and self.policy is not None
        if self._reloader is None:
            self._reloader = PolicyReloader(self._policy_path, self.policy)
        else:
            self._reloader.watch(self._policy_path, self.policy)

    def _start_background(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet (unit tests): running() starts them
        for source in self.key_sources.values():
            source.start()
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch_policy())

    async def _watch_policy(self) -> None:
        """Install each valid policy change (`reload.PolicyReloader`: settle, read once, load in
        a thread); an invalid one is logged there and the last good policy stays."""
        reloader = self._reloader
        if reloader is None:
            return
        async for policy in reloader.changes():
            self._install(policy)
            self._start_background()
            log.info("claimroute: policy reloaded from %s", log_safe(reloader.path))

    # -- commands ---------------------------------------------------------------------------

    @command.command("claimroute.keys")
    def keys_state(self) -> str:
        """The key sets in use, per provider: kids, age and fetch counters (JSON)."""
        return json.dumps({name: src.state() for name, src in self.key_sources.items()})

    @command.command("claimroute.metrics")
    def metrics_text(self) -> str:
        """Every metric in the Prometheus text format (what `claimroute_metrics` serves)."""
        return self.metrics.text()

    @command.command("claimroute.cache")
    def cache_state(self) -> str:
        """The verified-token cache: size, max_size, hits, misses, evictions, invalidations
        (JSON)."""
        if self.cache is None:
            return json.dumps({"enabled": False})
        return json.dumps({"enabled": True, **self.cache.stats()})
