"""The benchmark upstream: a minimal aiohttp server in its own process.

It answers every request with the same small JSON body, so that its cost is tiny and constant.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import socket
from multiprocessing.connection import Connection

from aiohttp import web

BODY = b'{"ok":true,"upstream":"bench"}'


async def _handle(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


async def _serve(sock: socket.socket, stop: Connection, max_seconds: float) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_seconds
    # Bounded: stop on a message from the parent, when the parent goes away, or at the deadline.
    while loop.time() < deadline:
        if await asyncio.to_thread(stop.poll, 0.5):
            break
    await runner.cleanup()


def _main(sock: socket.socket, stop: Connection, max_seconds: float) -> None:
    with contextlib.suppress(EOFError, KeyboardInterrupt):
        asyncio.run(_serve(sock, stop, max_seconds))


class Upstream:
    """Start with `start()`, stop with `stop()`; `url` is `http://127.0.0.1:PORT`."""

    def __init__(self, max_seconds: float = 900) -> None:
        self.max_seconds = max_seconds
        self._process: mp.process.BaseProcess | None = None
        self._stop: Connection | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> Upstream:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        self.port = sock.getsockname()[1]
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._stop = parent
        self._process = ctx.Process(
            target=_main, args=(sock, child, self.max_seconds), name="bench-upstream", daemon=True
        )
        self._process.start()
        sock.close()
        child.close()
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        try:
            assert self._stop is not None
            self._stop.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        self._process = None

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
