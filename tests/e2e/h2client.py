"""A minimal HTTP/2 client for attacks: nothing is validated or normalised on the way out.

Built on `h2` with outbound validation and normalisation off, so a test can send any
pseudo-header (`:path` of `http://host/admin` or `/admin#x`), any header (including
`transfer-encoding`, or no `content-length` for a body) and any body in DATA frames.

Two ways in, both TLS with ALPN "h2" and the mitmdump CA trusted:

- `via_connect`: regular proxy mode, `CONNECT host:port` in clear, then TLS inside the tunnel
  (server_hostname = the CONNECT host, so mitmproxy mints a certificate for it);
- `direct`: a mitmdump in reverse mode, TLS straight to its port (mitmproxy recognises the
  ClientHello and terminates TLS itself).

The socket work is blocking and runs in a worker thread (`asyncio.to_thread`); every read has
a short timeout so a case can never hang a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions

TIMEOUT = 5.0

type HeaderList = Sequence[tuple[str | bytes, str | bytes]]


@dataclass
class H2Reply:
    """What came back on the stream: a response, or how the stream or connection ended."""

    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    error: str | None = None  # "reset <code>", "goaway <code>", "closed", "timeout", ...

    def header(self, name: str) -> str | None:
        low = name.lower()
        return next((v for k, v in self.headers if k.lower() == low), None)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _context(ca_cert: Path | str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
    if ca_cert is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _connect_tunnel(sock: socket.socket, authority: str) -> None:
    """Send `CONNECT authority` and read the proxy's answer up to the blank line."""
    sock.sendall(
        f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode("ascii", "strict")
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"proxy closed the CONNECT: {buf!r}")
        buf += chunk
        if len(buf) > 65536:
            raise ConnectionError("CONNECT answer too long")
    status_line = buf.split(b"\r\n", 1)[0]
    if b" 200" not in status_line:
        raise ConnectionError(f"CONNECT refused: {status_line!r}")


def _send_body(conn: h2.connection.H2Connection, stream_id: int, data: bytes) -> bytes | None:
    """Send what flow control allows of `data`; END_STREAM when all is sent. Returns the rest,
    or None when the stream is ended (then WINDOW_UPDATEs bring no more work)."""
    while data:
        window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
        if window <= 0:
            return data
        chunk, data = data[:window], data[window:]
        conn.send_data(stream_id, chunk)
    conn.end_stream(stream_id)
    return None


def _exchange(
    tls: ssl.SSLSocket, headers: HeaderList, body: bytes | None, timeout: float
) -> H2Reply:
    if tls.selected_alpn_protocol() != "h2":
        return H2Reply(error=f"alpn {tls.selected_alpn_protocol()!r}")
    config = h2.config.H2Configuration(
        client_side=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
        header_encoding=None,
    )
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    stream_id = conn.get_next_available_stream_id()
    encoded = [(_b(k), _b(v)) for k, v in headers]
    conn.send_headers(stream_id, encoded, end_stream=body is None)
    tls.sendall(conn.data_to_send())
    to_send = body  # None once END_STREAM is sent

    reply = H2Reply()
    body_parts: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        if to_send is not None:
            try:
                to_send = _send_body(conn, stream_id, to_send)
                tls.sendall(conn.data_to_send())
            except (h2.exceptions.H2Error, OSError) as exc:
                reply.error = f"send failed ({type(exc).__name__}: {exc})"
                break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reply.error = "timeout"
            break
        tls.settimeout(remaining)
        try:
            data = tls.recv(65536)
        except TimeoutError:
            reply.error = "timeout"
            break
        except (ssl.SSLError, OSError) as exc:
            reply.error = f"closed ({type(exc).__name__})"
            break
        if not data:
            reply.error = reply.error or "closed"
            break
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            reply.error = f"protocol error {exc}"
            break
        done = False
        for event in events:
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                for k, v in event.headers:
                    name, value = _b(k).decode("latin-1"), _b(v).decode("latin-1")
                    if name == ":status":
                        reply.status = int(value)
                    else:
                        reply.headers.append((name, value))
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                body_parts.append(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                done = True
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                reply.error = f"reset {event.error_code!r}"
                done = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                reply.error = f"goaway {event.error_code!r}"
                done = True
        pending = conn.data_to_send()
        if pending:
            with contextlib.suppress(OSError):
                tls.sendall(pending)
        if done:
            break
    reply.body = b"".join(body_parts)
    return reply


def _run(
    host: str,
    port: int,
    *,
    tunnel: str | None,
    server_hostname: str,
    ca_cert: Path | str | None,
    headers: HeaderList,
    body: bytes | None,
    timeout: float,
) -> H2Reply:
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return H2Reply(error=f"connect failed ({exc})")
    try:
        raw.settimeout(timeout)
        if tunnel is not None:
            _connect_tunnel(raw, tunnel)
        tls = _context(ca_cert).wrap_socket(raw, server_hostname=server_hostname)
        try:
            return _exchange(tls, headers, body, timeout)
        finally:
            tls.close()
    except (OSError, ssl.SSLError, ConnectionError) as exc:
        return H2Reply(error=f"{type(exc).__name__}: {exc}")
    finally:
        raw.close()


def request_headers(
    method: str, authority: str, path: str, *extra: tuple[str, str], scheme: str = "https"
) -> list[tuple[str, str]]:
    """Pseudo-headers in the usual order, then `extra` exactly as given."""
    return [(":method", method), (":scheme", scheme), (":authority", authority),
            (":path", path), *extra]  # fmt: skip


async def via_connect(
    proxy_port: int,
    target: str,
    headers: HeaderList,
    body: bytes | None = None,
    *,
    ca_cert: Path | str | None,
    timeout: float = TIMEOUT,
) -> H2Reply:
    """One h2 request through a regular-mode proxy: CONNECT `target` (host:port), TLS with
    SNI the target host, then the stream."""
    server_hostname = target.rsplit(":", 1)[0].strip("[]")
    return await asyncio.to_thread(
        _run, "127.0.0.1", proxy_port, tunnel=target, server_hostname=server_hostname,
        ca_cert=ca_cert, headers=headers, body=body, timeout=timeout,
    )  # fmt: skip


async def direct(
    port: int,
    headers: HeaderList,
    body: bytes | None = None,
    *,
    server_hostname: str = "localhost",
    ca_cert: Path | str | None,
    timeout: float = TIMEOUT,
) -> H2Reply:
    """One h2 request straight to a TLS listener (mitmdump in reverse mode)."""
    return await asyncio.to_thread(
        _run, "127.0.0.1", port, tunnel=None, server_hostname=server_hostname,
        ca_cert=ca_cert, headers=headers, body=body, timeout=timeout,
    )  # fmt: skip
