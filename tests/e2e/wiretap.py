"""A recording upstream for differential tests: what did the upstream really parse and receive?

Two layers on 127.0.0.1:

- `Wiretap` itself is a raw asyncio TCP server (the "tap", the address the proxy is pointed
  at). It records every byte each connection sends, then relays the bytes unchanged to
- an aiohttp application on its own loopback port, which answers every method and path with
  200 and a JSON description of what aiohttp parsed (method, path, raw_path, query, host,
  cookies, headers as pairs, body) and appends the same description to `served`.

So one test can compare three things: what the proxy decided, what went over the wire
(`raw`, `framed_requests()`), and how a real HTTP server framed and parsed it (`served`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from claimroute_tools.lab import LoopbackServer

HOST = "127.0.0.1"
MAX_BODY = 16 * 1024 * 1024

# A request line as an HTTP/1 server would read one: a token, one space, a target without
# whitespace, one space, the version. Anchored at a line start in `scan_request_lines`.
REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP/\d\.\d\r?$")


@dataclass
class Served:
    """One request as the aiohttp application parsed it."""

    method: str
    path: str  # decoded path (aiohttp's request.path)
    raw_path: str  # the request target as aiohttp kept it (request.raw_path)
    query: str  # raw query string
    host: str  # aiohttp's request.host (the Host header, else the server's name)
    cookies: dict[str, str]  # aiohttp's request.cookies
    headers: list[tuple[str, str]]  # as received, in order, duplicates kept
    body: bytes

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive)."""
        low = name.lower()
        return [v for k, v in self.headers if k.lower() == low]

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "raw_path": self.raw_path,
            "query": self.query,
            "host": self.host,
            "cookies": self.cookies,
            "headers": [list(pair) for pair in self.headers],
            "body": base64.b64encode(self.body).decode(),
        }


@dataclass
class FramedRequest:
    """One HTTP/1 request cut out of the raw bytes with the framing a strict server uses."""

    line: bytes  # the request line
    headers: list[tuple[bytes, bytes]]
    body: bytes
    framing: str  # "content-length", "chunked", "none" (no body), or "broken"


@dataclass
class Connection:
    """One TCP connection into the tap: every byte the client (the proxy) sent on it."""

    peer: tuple[str, int]
    data: bytearray = field(default_factory=bytearray)


class _App(LoopbackServer):
    """The aiohttp application behind the tap."""

    def __init__(self, served: list[Served]) -> None:
        super().__init__()
        self.served = served

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        seen = Served(
            method=request.method,
            path=request.path,
            raw_path=request.raw_path,
            query=request.query_string,
            host=request.host,
            cookies=dict(request.cookies),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body=body,
        )
        self.served.append(seen)
        return web.json_response(seen.as_json(), headers={"x-upstream": "wiretap"})


class Wiretap:
    """The recording upstream: `async with Wiretap() as tap`, then point the proxy at
    `tap.url` (`tap.port`). `served`, `raw`, `connections` and `framed_requests()` say what
    arrived; `reset()` forgets it (call it before each case)."""

    def __init__(self) -> None:
        self.served: list[Served] = []
        self.connections: list[Connection] = []
        self._app = _App(self.served)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._port: int | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("Wiretap not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def authority(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def app_port(self) -> int:
        """The aiohttp application's own port (behind the tap; tests should not use it)."""
        return self._app.port

    # -- what arrived ------------------------------------------------------------------------

    @property
    def raw(self) -> bytes:
        """Every byte received, all connections concatenated in accept order."""
        return b"".join(bytes(c.data) for c in self.connections)

    def reset(self) -> None:
        """Forget everything recorded so far (open relays keep running)."""
        self.served.clear()
        self.connections.clear()

    def request_line_count(self) -> int:
        """HTTP/1 requests a strict server would see in the raw bytes of every connection
        (framing-aware: a request line inside a properly framed body is not counted, one
        after an unframed body is, since that is where a server reads the next request)."""
        return sum(len(frame_requests(bytes(c.data))) for c in self.connections)

    def framed_requests(self) -> list[FramedRequest]:
        """The requests `request_line_count` counts, with their heads and bodies."""
        return [r for c in self.connections for r in frame_requests(bytes(c.data))]

    def scanned_request_lines(self) -> list[bytes]:
        """Every line of the raw bytes that looks like a request line, framing ignored (a
        smuggled request appears here even when a server would not read it)."""
        return [line for c in self.connections for line in scan_request_lines(bytes(c.data))]

    async def settle(self, seconds: float = 0.3) -> None:
        """Let in-flight relays and handlers finish before the test looks."""
        await asyncio.sleep(seconds)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> Self:
        await self._app.start()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))
        self._port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._app.stop()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the relay ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Connection(writer.get_extra_info("peername"))
        self.connections.append(conn)
        try:
            app_reader, app_writer = await asyncio.open_connection(HOST, self._app.port)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(
                _pump(reader, app_writer, conn.data), _pump(app_reader, writer, None)
            )
        finally:
            for w in (writer, app_writer):
                w.close()
            self._tasks.discard(task)


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray | None
) -> None:
    try:
        while data := await reader.read(65536):
            if record is not None:
                record += data
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


# ---------------------------------------------------------------------------------- parsing


def scan_request_lines(raw: bytes) -> list[bytes]:
    """Every line (split on LF) that matches an HTTP/1 request line, wherever it is."""
    return [line.rstrip(b"\r") for line in raw.split(b"\n") if REQUEST_LINE.fullmatch(line)]


def frame_requests(raw: bytes) -> list[FramedRequest]:
    """Cut `raw` into HTTP/1 requests as a strict server frames them: head up to CRLFCRLF,
    then a chunked body, a Content-Length body, or none; what follows is the next request.
    An incomplete or unparsable remainder ends the list with one "broken" entry when it
    starts with something that is not whitespace."""
    out: list[FramedRequest] = []
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\r\n\r\n", pos)
        if end < 0:
            rest = raw[pos:]
            if rest.strip():
                out.append(FramedRequest(rest.split(b"\r\n", 1)[0], [], b"", "broken"))
            break
        line, *lines = raw[pos:end].split(b"\r\n")
        headers = [(k.strip(), v.strip()) for k, _, v in (h.partition(b":") for h in lines)]
        names = {k.lower(): v for k, v in headers}
        pos = end + 4
        if b"chunked" in names.get(b"transfer-encoding", b"").lower():
            body = bytearray()
            while True:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    out.append(FramedRequest(line, headers, bytes(body), "broken"))
                    return out
                try:
                    size = int(raw[pos:eol].split(b";")[0], 16)
                except ValueError:
                    out.append(FramedRequest(line, headers, bytes(body), "broken"))
                    return out
                pos = eol + 2
                if size == 0:
                    trailer_end = raw.find(b"\r\n", pos)
                    while trailer_end > pos:  # skip trailer fields
                        pos = trailer_end + 2
                        trailer_end = raw.find(b"\r\n", pos)
                    pos = (trailer_end + 2) if trailer_end >= 0 else len(raw)
                    break
                body += raw[pos : pos + size]
                pos += size + 2
            out.append(FramedRequest(line, headers, bytes(body), "chunked"))
        elif b"content-length" in names:
            try:
                size = int(names[b"content-length"])
            except ValueError:
                out.append(FramedRequest(line, headers, b"", "broken"))
                return out
            out.append(FramedRequest(line, headers, raw[pos : pos + size], "content-length"))
            pos += size
        else:
            out.append(FramedRequest(line, headers, b"", "none"))
    return out
