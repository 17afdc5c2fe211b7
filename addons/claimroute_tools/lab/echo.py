"""Echo upstreams: aiohttp servers on loopback that report their own name and record requests.

Also home of `LoopbackServer`, the small aiohttp-on-127.0.0.1 base shared with `JwksServer`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from dataclasses import dataclass
from typing import Self

from aiohttp import web

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_BODY = 64 * 1024 * 1024
# A request carrying this header (the scenario runner's request id) gets its own misbehaviour
# draw, seeded by the id: the same request is slow or failing whatever order requests arrive in.
REQUEST_ID_HEADER = "x-claimroute-scenario-request"


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """How an echo upstream misbehaves on purpose: added latency, injected errors.

    Each request waits `latency_ms` plus a uniform draw in [-jitter_ms, +jitter_ms] (never
    below 0), then fails with `error_status` with probability `error_rate`.
    """

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.jitter_ms < 0:
            raise ValueError("latency_ms and jitter_ms must not be negative")
        if not 0 <= self.error_rate <= 1:
            raise ValueError("error_rate must be between 0 and 1")
        if not 100 <= self.error_status <= 599:
            raise ValueError("error_status must be an HTTP status (100..599)")

    @property
    def active(self) -> bool:
        """True when it changes anything."""
        return bool(self.latency_ms or self.jitter_ms or self.error_rate)


class LoopbackServer:
    """An aiohttp application bound to 127.0.0.1 on an ephemeral port.

    `start()` after `stop()` binds the SAME port again, so an outage (connection refused) and a
    recovery can be simulated. Usable as `async with`.
    """

    def __init__(self, port: int | None = None) -> None:
        self._port: int | None = port or None  # None: a free port is chosen at start()
        self._runner: web.AppRunner | None = None

    def build_app(self) -> web.Application:
        """Return the application to serve; subclasses override."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """True while the server accepts connections."""
        return self._runner is not None

    @property
    def port(self) -> int:
        """The bound port (kept across stop/start)."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} was never started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, `http://127.0.0.1:PORT` (no trailing slash)."""
        return f"http://{HOST}:{self.port}"

    async def start(self) -> Self:
        """Bind (port 0 the first time, the same port afterwards) and start serving."""
        if self._runner is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, self._port or 0))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        # handler_cancellation: stop() must not wait for a deliberately slow handler.
        runner = web.AppRunner(
            self.build_app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner
        log.debug("%s listening on %s", type(self).__name__, self.url)
        return self

    async def stop(self) -> None:
        """Close the listening socket and all connections; the port is remembered."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the upstream saw it."""

    method: str
    path: str  # decoded path
    raw_path: str  # path and query exactly as sent on the request line
    query: str  # raw query string, without "?"
    headers: list[tuple[str, str]]  # in order, duplicates preserved, names as sent
    body: bytes

    def header(self, name: str) -> str | None:
        """First value of header `name` (case-insensitive), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """All values of header `name` (case-insensitive), in order."""
        lowered = name.lower()
        return [v for k, v in self.headers if k.lower() == lowered]


class EchoUpstream(LoopbackServer):
    """Answers every method and path with 200 JSON describing the request, and records it.

    Response body: `{"upstream", "method", "path", "query", "headers"}` where `headers` maps
    lowercased names to values (repeated headers joined with ", "); header `x-upstream: NAME`.

    With `misbehave`, each request first waits the drawn latency, and a drawn share answers
    `error_status` instead, still saying who answered (`x-upstream` and the JSON `upstream`)
    and still recorded. The draws come from an RNG seeded with `seed` and the upstream's name,
    per request id (REQUEST_ID_HEADER) when the request has one, so a run is reproducible.
    `errors` counts the injected errors.
    """

    def __init__(
        self,
        name: str,
        *,
        port: int | None = None,
        misbehave: Misbehaviour | None = None,
        seed: int = 1,
    ) -> None:
        super().__init__(port)
        self.name = name
        self.received: list[ReceivedRequest] = []
        self.misbehave = misbehave or Misbehaviour()
        self.seed = seed
        self.errors = 0
        self._rng = random.Random(f"{seed}:{name}")  # for requests without an id

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"EchoUpstream({self.name!r}, {where}, received={len(self.received)})"

    def clear(self) -> None:
        """Forget the recorded requests."""
        self.received.clear()

    def build_app(self) -> web.Application:
        """The catch-all echo application."""
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def _draw(self, request_id: str | None) -> tuple[float, bool]:
        """(seconds to wait, whether to fail) for one request."""
        bad = self.misbehave
        rng = (
            self._rng
            if request_id is None
            else random.Random(f"{self.seed}:{self.name}:{request_id}")
        )
        jitter = rng.uniform(-bad.jitter_ms, bad.jitter_ms) if bad.jitter_ms else 0.0
        delay = max(0.0, bad.latency_ms + jitter) / 1000
        return delay, rng.random() < bad.error_rate

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        self.received.append(
            ReceivedRequest(
                method=request.method,
                path=request.path,
                raw_path=request.raw_path,
                query=request.query_string,
                headers=headers,
                body=body,
            )
        )
        merged: dict[str, str] = {}
        for k, v in headers:
            key = k.lower()
            merged[key] = f"{merged[key]}, {v}" if key in merged else v
        payload = {
            "upstream": self.name,
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": merged,
        }
        if self.misbehave.active:
            delay, fail = self._draw(request.headers.get(REQUEST_ID_HEADER))
            if delay:
                await asyncio.sleep(delay)
            if fail:
                self.errors += 1
                return web.json_response(
                    {**payload, "error": "injected by the scenario (error_rate)"},
                    status=self.misbehave.error_status,
                    headers={"x-upstream": self.name},
                )
        return web.json_response(payload, headers={"x-upstream": self.name})
