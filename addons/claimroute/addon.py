"""The mitmproxy layer: options, policy (re)loading, and applying decisions to flows.

It stays thin: the stages live in `pipeline`. Two rules shape it. A hook that raises lets
the request through (mitmproxy's safecall is fail-open), so `requestheaders` catches
everything and refuses. And streamed bodies skip the `request` hook, so the decision is
made in `requestheaders`, where a streamed request can still be killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import IO, Any

from mitmproxy import command, ctx, exceptions, http

from . import errors as E
from .errors import PolicyError, Rejection
from .keyring import build_key_sources, retired_sources
from .keysource import KeySource
from .pipeline import Decision, decide
from .policy import Policy, load_policy
from .request import RequestView
from .responses import response_parts

log = logging.getLogger("claimroute")

POLICY_POLL_SECONDS = 1.0
DRY_RUN_HEADER = "x-claimroute-rbac"
METADATA_KEY = "claimroute"


def request_view(request: http.Request) -> RequestView:
    """The stage-facing view of a mitmproxy request."""
    return RequestView(
        method=request.method,
        scheme=request.scheme,
        host=request.pretty_host if request.host == "" else request.host,
        port=request.port,
        path=request.path.split("?", 1)[0],
        query=tuple(request.query.items(multi=True)) if "?" in request.path else (),
        headers=request.headers,
        cookies=tuple(request.cookies.items(multi=True)) if "cookie" in request.headers else (),
    )


def _remove_token(request: http.Request, decision: Decision) -> None:
    token = decision.token
    if token is None:
        return
    if token.kind == "header":
        wanted = token.prefix.lower() + token.token
        kept = [v for v in request.headers.get_all(token.name) if v.lower() != wanted.lower()]
        request.headers.set_all(token.name, kept)
    elif token.kind == "query":
        request.query = [(k, v) for k, v in request.query.items(multi=True) if k != token.name]
    else:
        request.cookies = [(k, v) for k, v in request.cookies.items(multi=True) if k != token.name]


def _comment(decision: Decision) -> str:
    parts = [f"claimroute: {decision.outcome}"]
    if decision.provider:
        parts.append(f"{decision.provider}/{decision.sub or '-'}")
    if decision.rejection is not None:
        parts.append(f"{decision.rejection.status} {decision.reason}")
    if decision.rbac is not None and decision.rbac.dry_run and not decision.rbac.allowed:
        parts.append("(rbac dry-run: would deny)")
    if decision.route is not None:
        parts.append(f"-> {decision.route.name} {decision.route.upstream}")
    return " ".join(parts)


class ClaimRoute:
    """Verify JWTs, authorize on claims and route on claims, per the policy file."""

    def __init__(self) -> None:
        self.policy: Policy | None = None
        self.key_sources: dict[str, KeySource] = {}
        self._policy_path: Path | None = None
        self._policy_stamp: tuple[float, int] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._log_file: IO[str] | None = None
        self._debug_headers = False

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

    def configure(self, updated: set[str]) -> None:
        if "claimroute_debug_headers" in updated:
            self._debug_headers = ctx.options.claimroute_debug_headers
        if "claimroute_log" in updated:
            self._open_log(ctx.options.claimroute_log)
        if "claimroute" in updated and ctx.options.claimroute:
            path = Path(ctx.options.claimroute)
            try:
                self._install(load_policy(path))
            except PolicyError as exc:
                raise exceptions.OptionsError(f"claimroute: {exc}") from None
            self._policy_path = path
            self._policy_stamp = self._stamp(path)
            self._start_background()

    def running(self) -> None:
        if self.policy is None:
            # Logged at error level during startup, so mitmdump exits 1 instead of running open.
            log.error("claimroute: no policy file; start with --set claimroute=POLICY.yaml")
            return
        self._start_background()
        address = "?"
        with contextlib.suppress(Exception):
            addrs = ctx.master.addons.get("proxyserver").listen_addrs()
            if addrs:
                address = f"{addrs[0][0]}:{addrs[0][1]}"
        log.info("claimroute ready: listening on %s, policy %s", address, self.policy.path)

    def done(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        for source in self.key_sources.values():
            close = getattr(source, "close", None)
            if close is not None:
                close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # -- the request hook -------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        try:
            await self._handle(flow)
        except Exception:
            log.exception("claimroute: internal error; refusing the request")
            self._refuse(flow, Rejection(500, E.INTERNAL_ERROR, None, challenge=False))
            flow.metadata[METADATA_KEY] = {"outcome": "denied", "reason": E.INTERNAL_ERROR,
                                           "status": 500}  # fmt: skip

    async def _handle(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        policy = self.policy
        if policy is None:
            self._refuse(flow, Rejection(503, "claimroute has no policy loaded", None, False))
            return
        # Client copies of identity headers are stripped first, whatever happens next.
        for name in policy.identity_headers:
            if name in request.headers:
                del request.headers[name]
        view = request_view(request)
        decision = await decide(view, policy, self.key_sources, time.time())
        self._record(flow, decision)
        if decision.rejection is not None:
            self._refuse(flow, decision.rejection, view.realm)
            return
        if not decision.keep_token:
            _remove_token(request, decision)
        for name, value in decision.set_headers:
            request.headers[name] = value
        route = decision.route
        if route is not None:
            original_host = request.host_header
            request.scheme = route.scheme  # scheme first: the host/port setters use it
            request.host = route.host
            request.port = route.port
            if route.preserve_host and original_host is not None:
                request.host_header = original_host
        if self._debug_headers and decision.rbac is not None and decision.rbac.dry_run:
            flow.metadata["claimroute_dry_run_header"] = decision.rbac.summary()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        summary = flow.metadata.get("claimroute_dry_run_header")
        if summary and flow.response is not None:
            flow.response.headers[DRY_RUN_HEADER] = summary

    def _refuse(self, flow: http.HTTPFlow, rejection: Rejection, realm: str = "") -> None:
        if flow.request.stream:
            # A streamed request cannot get a response from here; killing it is the only way
            # to make sure the upstream sees nothing (mitmproxy-addon-notes §4.3).
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

    def _record(self, flow: http.HTTPFlow, decision: Decision) -> None:
        record = decision.record()
        flow.metadata[METADATA_KEY] = record
        flow.comment = _comment(decision)
        if self._log_file is not None:
            line = {"ts": round(time.time(), 3), "method": flow.request.method,
                    "url": flow.request.pretty_url.split("?", 1)[0], **record}  # fmt: skip
            self._log_file.write(json.dumps(line) + "\n")

    # -- policy and keys --------------------------------------------------------------------

    def _install(self, policy: Policy) -> None:
        old = self.key_sources
        self.key_sources = build_key_sources(policy, old)
        self.policy = policy
        for source in retired_sources(old, self.key_sources):
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def _open_log(self, path: str | None) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if path:
            try:
                self._log_file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise exceptions.OptionsError(
                    f"claimroute_log: cannot open {path}: {exc}"
                ) from None

    @staticmethod
    def _stamp(path: Path) -> tuple[float, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    def _start_background(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet (unit tests): running() starts them
        for source in self.key_sources.values():
            start = getattr(source, "start", None)
            if start is not None:
                start()
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch_policy())

    async def _watch_policy(self) -> None:
        """Poll the policy file; a valid change takes effect, an invalid one is logged."""
        while True:
            await asyncio.sleep(POLICY_POLL_SECONDS)
            path = self._policy_path
            if path is None:
                continue
            stamp = self._stamp(path)
            if stamp is None or stamp == self._policy_stamp:
                continue
            self._policy_stamp = stamp
            try:
                policy = await asyncio.to_thread(load_policy, path)
            except PolicyError as exc:
                log.error("claimroute: policy change rejected, keeping the last good one: %s", exc)
                continue
            except Exception:
                log.exception("claimroute: policy reload failed, keeping the last good one")
                continue
            if self.policy is not None and policy.fingerprint == self.policy.fingerprint:
                continue
            self._install(policy)
            self._start_background()
            log.info("claimroute: policy reloaded from %s", path)

    # -- commands ---------------------------------------------------------------------------

    @command.command("claimroute.keys")
    def keys_state(self) -> str:
        """The key sets in use, per provider: kids, age and fetch counters (JSON)."""
        return json.dumps({name: src.state() for name, src in self.key_sources.items()})
