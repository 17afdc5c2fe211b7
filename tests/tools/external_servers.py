"""Plain aiohttp services for the external-experiment tests: "your own builds" of a service.

They are not the lab's EchoUpstream: they know nothing of the runner, say their version the way
a real service might (a header, a JSON field, or nothing at all), and run on their own event
loop in a thread, so a test can drive the runner through its command line (`asyncio.run`).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

PROBE_HEADER = "x-claimroute-scenario-probe"


class Service:
    """An HTTP service on 127.0.0.1 answering every path with 200 and its version.

    `says`: "header" (x-version: VERSION), "json" ({"build": {"version": VERSION}}), or
    "nothing" (a plain body that names nobody). Counts the requests it got, probes apart.
    """

    def __init__(self, version: str, says: str = "header") -> None:
        self.version = version
        self.says = says
        self.requests = 0  # not counting the runner's start-up probes
        self.probes = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get(PROBE_HEADER):
            self.probes += 1
        else:
            self.requests += 1
        if self.says == "header":
            return web.Response(text="ok", headers={"x-version": self.version})
        if self.says == "json":
            return web.json_response({"build": {"version": self.version}, "path": request.path})
        return web.Response(text="hello from a service that does not say its version")


@contextmanager
def serving(*services: Service) -> Iterator[tuple[Service, ...]]:
    """Run the services on one event loop in a background thread until the block ends."""
    loop = asyncio.new_event_loop()
    runners: list[web.AppRunner] = []
    started = threading.Event()

    async def start() -> None:
        for service in services:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", service.handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            service.port = sock.getsockname()[1]
            await web.SockSite(runner, sock).start()
            runners.append(runner)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="external-services", daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("the services did not start")
    try:
        yield services
    finally:

        async def stop() -> None:
            for runner in runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
